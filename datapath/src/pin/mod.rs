//! IRQ-aware CPU pinning for the AF_XDP server.
//!
//! With AF_XDP the kernel runs the NIC's NAPI poll (and the XDP program) on the CPU that takes the queue's
//! interrupt, so the worker that serves queue `q` wants to sit on that CPU (`--pin irq`) or on its SMT
//! sibling (`--pin sibling`: same L1/L2, no fight with softirq for one hardware thread). `--pin none` leaves
//! the scheduler alone. [`plan`] reads the real system and returns a [`PinPlan`]; the caller pins each
//! thread with [`pin_current_thread`]. Call [`plan`] before pinning any thread: [`allowed_cpus`] is the
//! calling thread's mask.
//!
//! # What is read
//!
//! `/sys/class/net/IFACE/device` (absent = virtual device: veth, macvlan, lo, …), the device's
//! `msi_irqs/` (on the device itself when it is a PCI function, else on its PCI parent, as for
//! `virtio_net` where the netdev's device is `virtioN` under the PCI function), `/proc/interrupts`,
//! `/proc/irq/N/effective_affinity_list` (used when present and non-empty) else `smp_affinity_list`,
//! `/sys/devices/system/cpu/online`, `/sys/devices/system/cpu/cpuN/topology/thread_siblings_list`, and
//! `sched_getaffinity`. The parsing is in pure functions over the file contents; [`plan`] is a thin layer
//! that reads the files into a `SysView` and calls the pure `plan_from`.
//!
//! # Finding queue `q`'s IRQ
//!
//! 1. By action name in `/proc/interrupts`. A name is split on whitespace and commas; a token matches
//!    queue `q` when it contains, at a boundary (start of token or after `-`, `_`, `:`, `@`),
//!    - the interface name followed by `-N`, `-TxRx-N`, `-Tx-Rx-N`, `-rxtx-N`, `-rx-N`, `-fp-N`, … (ixgbe,
//!      igb, i40e/ice/iavf with their `i40e-` prefix, bnxt, ena, nfp, sfc's `enp1s0f0-3`, …), or
//!    - the device's own name followed by such a suffix (`virtio2-input.3`), or
//!    - `<driver>_compN@pci:<our PCI address>` / `<driver>-N@<our PCI address>` (mlx5, mlx4).
//!
//!    A TX-only vector (`-tx-N`, `output.N`) never matches, nor one whose label names a misc vector
//!    (async, mailbox, config, ctrl, …). Several matches for one queue: a label naming RX (`TxRx`, `rx`,
//!    `input`, `comp`) beats a bare index, then the lowest IRQ number wins.
//! 2. Only when step 1 finds nothing: the device's `msi_irqs` present in `/proc/interrupts`, in IRQ number
//!    order, minus vectors recognisable as misc (a misc keyword, a TX-only name, or named exactly as the
//!    interface, like ixgbe's link vector); queue `q` gets the `q`-th remaining one.
//!
//! # Rules
//!
//! Let `A` be the allowed CPUs (`sched_getaffinity` ∩ online), ascending, and `W` the number of workers.
//!
//! - **Fallback (round-robin)**, used for every worker of a virtual device and for each queue whose IRQ
//!   was not found (or whose IRQ affinity lies wholly outside `A`): when `|A| > W` the last CPU of `A` is
//!   kept for the master and worker `q` gets `A[q]`; otherwise worker `q` gets `A[q mod |A|]`. With
//!   `--pin sibling` a fallback worker gets the same CPU (there is no IRQ core to be a sibling of).
//! - **`irq`**: worker `q` gets the first CPU of its IRQ's affinity ∩ `A`.
//! - **`sibling`**: worker `q` gets the first entry of that CPU's `thread_siblings_list` other than the
//!   CPU itself and inside `A`; with no such sibling, the IRQ CPU itself (noted).
//! - **Master**: the CPU of `A` minimising (workers on it, queue IRQs served on it, then highest CPU
//!   number). So: a CPU with neither a worker nor a queue IRQ if there is one (the highest such, which is
//!   the reserved one in the fallback); else one that only serves queue IRQs; else it shares the CPU with
//!   the fewest workers, the highest-numbered on a tie: with 2 CPUs and 2 workers of a virtual device the
//!   master shares CPU 1 with worker 1.
//! - No CPU outside `A` is ever returned. `none` returns no CPUs and the single note "pinning disabled".

use std::io;

mod irq;
mod sys;
#[cfg(test)]
mod tests;

use irq::{find_queue_irqs, parse_interrupts, Method};
pub use sys::{allowed_cpus, parse_cpu_list, pin_current_thread};
use sys::{read_sys, SysView};

/// Highest CPU count the affinity masks here handle (Linux's NR_CPUS tops out at 8192).
const MAX_CPUS: usize = 1 << 16;

/// Substrings (lowercase) of a vector name that mark it as not a queue vector.
const MISC_WORDS: &[&str] = &[
    "async", "config", "mailbox", "mbox", "mbx", "misc", "ctrl", "ctl", "cmd", "adminq", "mgmt", "mgmnt",
    "event", "link", "other", "err", "fdir",
];

/// How workers are pinned (`--pin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PinPolicy {
    /// Worker q on the CPU that serves queue q's IRQ.
    Irq,
    /// Worker q on the SMT sibling of the CPU that serves queue q's IRQ.
    Sibling,
    /// No pinning.
    None,
}

/// Where each thread goes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPlan {
    /// CPU for worker i (index = queue), None = not pinned.
    pub workers: Vec<Option<usize>>,
    /// CPU for the master, None = not pinned.
    pub master: Option<usize>,
    /// Per queue: the IRQ number found for it, if any.
    pub queue_irqs: Vec<Option<u32>>,
    /// Human-readable findings, one line each (e.g. "eth1 is a virtual device (no IRQs): workers pinned
    /// round-robin over allowed CPUs 0-1; master shares CPU 1 with worker 1").
    pub notes: Vec<String>,
}

/// Plan pinning for `queues` workers serving queues 0..queues of `iface`.
///
/// Errors: `iface` is not a network interface, or a file needed for a device with IRQs
/// (`/proc/interrupts`) or `sched_getaffinity` cannot be read. `PinPolicy::None` reads nothing.
pub fn plan(iface: &str, queues: usize, policy: PinPolicy) -> io::Result<PinPlan> {
    if policy == PinPolicy::None {
        return Ok(plan_from(&SysView::default(), iface, queues, policy));
    }
    let sys = read_sys(iface)?;
    Ok(plan_from(&sys, iface, queues, policy))
}

/// "0-3,8,10-11" from an ascending list.
fn fmt_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j == i { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// "worker 1" / "workers 1, 3".
fn fmt_workers(ws: &[usize]) -> String {
    let list = ws.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", ");
    if ws.len() == 1 {
        format!("worker {list}")
    } else {
        format!("workers {list}")
    }
}

// ---------------------------------------------------------------------------------------------------------
// The plan.

fn sibling_of(sys: &SysView, cpu: usize, allowed: &[usize]) -> Option<usize> {
    sys.siblings.get(&cpu)?.iter().copied().find(|&s| s != cpu && allowed.contains(&s))
}

fn plan_from(sys: &SysView, iface: &str, queues: usize, policy: PinPolicy) -> PinPlan {
    let mut plan = PinPlan {
        workers: vec![None; queues],
        master: None,
        queue_irqs: vec![None; queues],
        notes: Vec::new(),
    };
    if policy == PinPolicy::None {
        plan.notes.push("pinning disabled".to_owned());
        return plan;
    }
    let mut allowed: Vec<usize> = sys.allowed.clone();
    allowed.sort_unstable();
    allowed.dedup();
    if let Some(online) = &sys.online {
        let on: Vec<usize> = allowed.iter().copied().filter(|c| online.contains(c)).collect();
        if !on.is_empty() {
            allowed = on;
        }
    }
    if allowed.is_empty() {
        plan.notes.push("no allowed CPUs known: nothing pinned".to_owned());
        return plan;
    }
    // Fallback: keep the last allowed CPU for the master when there are more CPUs than workers.
    let reserve = allowed.len() > queues;
    let pool = if reserve { &allowed[..allowed.len() - 1] } else { &allowed[..] };
    let fallback = |q: usize| pool[q % pool.len()];
    let pool_desc = if reserve {
        format!("{} (CPU {} kept for the master)", fmt_list(pool), allowed[allowed.len() - 1])
    } else {
        fmt_list(pool)
    };

    let mut irq_cpu: Vec<Option<usize>> = vec![None; queues];
    let mut virtual_note = None;
    if sys.is_virtual {
        for (q, w) in plan.workers.iter_mut().enumerate() {
            *w = Some(fallback(q));
        }
        let mut n = format!(
            "{iface} is a virtual device (no IRQs): workers pinned round-robin over allowed CPUs {pool_desc}"
        );
        if policy == PinPolicy::Sibling {
            n.push_str(" (no IRQ core to be a sibling of, so --pin sibling pins the same way)");
        }
        virtual_note = Some(n);
    } else {
        let lines = parse_interrupts(&sys.interrupts);
        let (found, method) = find_queue_irqs(
            &lines,
            iface,
            sys.dev_name.as_deref(),
            sys.pci_addr.as_deref(),
            &sys.msi_irqs,
            queues,
        );
        let dev = sys.dev_name.as_deref().unwrap_or("?");
        match method {
            Method::Name => {
                plan.notes.push(format!("{iface} (device {dev}): queue IRQs found by action name"))
            }
            Method::MsiOrder => plan.notes.push(format!(
                "{iface} (device {dev}): no IRQ names recognised; queue q gets the q-th of the device's MSI \
                 vectors in IRQ order (misc vectors skipped)"
            )),
            Method::NotFound => plan
                .notes
                .push(format!("{iface} (device {dev}): no queue IRQs found in /proc/interrupts or msi_irqs")),
        }
        let mut missing = Vec::new();
        for (q, f) in found.iter().enumerate() {
            let Some(qi) = f else {
                missing.push(q);
                plan.workers[q] = Some(fallback(q));
                continue;
            };
            plan.queue_irqs[q] = Some(qi.irq);
            let aff = sys.irq_affinity.get(&qi.irq).cloned().unwrap_or_default();
            let (cpus, src) = aff.cpus();
            let Some(&c) = cpus.iter().find(|c| allowed.contains(c)) else {
                let w = fallback(q);
                plan.workers[q] = Some(w);
                plan.notes.push(format!(
                    "queue {q}: IRQ {} ({}) {src} [{}] has no allowed CPU (allowed {}): worker {q} on CPU {w} \
                     (round-robin fallback)",
                    qi.irq,
                    qi.name,
                    fmt_list(cpus),
                    fmt_list(&allowed)
                ));
                continue;
            };
            irq_cpu[q] = Some(c);
            let spread = if cpus.len() > 1 {
                format!(" (spans {} CPUs; the IRQ may fire on any of them)", cpus.len())
            } else {
                String::new()
            };
            let head = format!("queue {q}: IRQ {} ({}) {src} {}{spread}", qi.irq, qi.name, fmt_list(cpus));
            match policy {
                PinPolicy::Sibling => match sibling_of(sys, c, &allowed) {
                    Some(s) => {
                        plan.workers[q] = Some(s);
                        plan.notes.push(format!("{head} → worker {q} on CPU {s} (SMT sibling of CPU {c})"));
                    }
                    None => {
                        plan.workers[q] = Some(c);
                        plan.notes.push(format!(
                            "{head} → worker {q} on CPU {c} itself: CPU {c} has no allowed SMT sibling"
                        ));
                    }
                },
                _ => {
                    plan.workers[q] = Some(c);
                    plan.notes.push(format!("{head} → worker {q} on CPU {c}"));
                }
            }
        }
        if !missing.is_empty() {
            let placed = missing
                .iter()
                .map(|&q| format!("worker {q} on CPU {}", fallback(q)))
                .collect::<Vec<_>>()
                .join(", ");
            let sib = if policy == PinPolicy::Sibling { " (no IRQ core, so no sibling)" } else { "" };
            plan.notes.push(format!(
                "no IRQ found for queue(s) {} of {iface}: round-robin over allowed CPUs {pool_desc}{sib}: {placed}",
                fmt_list(&missing)
            ));
        }
    }

    // Master: fewest workers, then fewest queue IRQs, then the highest CPU.
    let workers_on = |c: usize| -> Vec<usize> {
        plan.workers.iter().enumerate().filter(|(_, w)| **w == Some(c)).map(|(q, _)| q).collect()
    };
    let irqs_on = |c: usize| irq_cpu.iter().filter(|i| **i == Some(c)).count();
    let m = allowed
        .iter()
        .copied()
        .min_by_key(|&c| (workers_on(c).len(), irqs_on(c), std::cmp::Reverse(c)))
        .expect("allowed is not empty");
    let (mw, mi) = (workers_on(m), irqs_on(m));
    let master_desc = if !mw.is_empty() {
        format!("master shares CPU {m} with {}", fmt_workers(&mw))
    } else if mi > 0 {
        format!("master on CPU {m}, which serves {mi} queue IRQ(s) (every allowed CPU without a worker serves one)")
    } else if sys.is_virtual {
        format!("master on CPU {m}")
    } else {
        format!("master on CPU {m} (no worker and no queue IRQ there)")
    };
    plan.master = Some(m);
    match virtual_note {
        Some(n) => plan.notes.push(format!("{n}; {master_desc}")),
        None => plan.notes.push(master_desc),
    }
    for &c in &allowed {
        let ws = workers_on(c);
        if ws.len() > 1 {
            plan.notes.push(format!("{} share CPU {c}", fmt_workers(&ws)));
        }
    }
    plan
}
