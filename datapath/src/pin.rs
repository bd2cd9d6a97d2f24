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

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

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

/// Pin the calling thread to `cpu` (sched_setaffinity via libc, which is a dependency). Error says which
/// CPU and why.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pin thread to CPU {cpu}: beyond the {MAX_CPUS} CPUs this code handles"),
        ));
    }
    let bits = libc::c_ulong::BITS as usize;
    let mut mask: Vec<libc::c_ulong> = vec![0; cpu / bits + 1];
    mask[cpu / bits] |= 1 << (cpu % bits);
    let bytes = std::mem::size_of_val(mask.as_slice());
    let this_thread: libc::c_long = 0;
    // SAFETY: `mask` is a live buffer of exactly `bytes` bytes; the kernel only reads `bytes` bytes from it
    // and keeps no reference. pid 0 means the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setaffinity, this_thread, bytes, mask.as_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        let hint = match allowed_cpus() {
            Ok(a) if !a.contains(&cpu) => {
                format!(" (CPU {cpu} is not among the allowed CPUs {})", fmt_list(&a))
            }
            _ => String::new(),
        };
        return Err(io::Error::new(
            e.kind(),
            format!("pin thread to CPU {cpu}: sched_setaffinity: {e}{hint}"),
        ));
    }
    Ok(())
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
///
/// This is the calling thread's mask, which is the process's until some thread pins itself.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let word = std::mem::size_of::<libc::c_ulong>();
    let bits = libc::c_ulong::BITS as usize;
    let mut words = 1024 / bits;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        let bytes = words * word;
        let this_thread: libc::c_long = 0;
        // SAFETY: `mask` is a live, writable buffer of exactly `bytes` bytes; the kernel writes at most
        // `bytes` bytes into it and keeps no reference. pid 0 means the calling thread.
        let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, this_thread, bytes, mask.as_mut_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the kernel's mask is larger than ours.
            if e.raw_os_error() == Some(libc::EINVAL) && words * bits < MAX_CPUS {
                words *= 2;
                continue;
            }
            return Err(io::Error::new(e.kind(), format!("sched_getaffinity: {e}")));
        }
        // The syscall returns the number of bytes it wrote.
        let written = (r as usize).min(bytes) / word;
        let cpus = mask[..written]
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..bits).filter(move |b| w >> b & 1 == 1).map(move |b| i * bits + b))
            .collect();
        return Ok(cpus);
    }
}

/// Parse a Linux cpu list such as "0-3,8,10-11".
///
/// Surrounding whitespace is ignored and an empty list is `Some(vec![])` (an IRQ's effective affinity can
/// be empty). The result is ascending without duplicates. `None` for anything malformed, a reversed range,
/// or a CPU number of 65536 or more.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    let mut out = BTreeSet::new();
    if s.is_empty() {
        return Some(Vec::new());
    }
    for part in s.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
            None => {
                let c = parse_cpu(part)?;
                (c, c)
            }
        };
        if lo > hi {
            return None;
        }
        out.extend(lo..=hi);
    }
    Some(out.into_iter().collect())
}

fn parse_cpu(s: &str) -> Option<usize> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&c| c < MAX_CPUS)
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
// The system as read.

/// One IRQ's affinity files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IrqAffinity {
    /// `/proc/irq/N/effective_affinity_list`, when present and parsable.
    effective: Option<Vec<usize>>,
    /// `/proc/irq/N/smp_affinity_list`, when present and parsable.
    smp: Option<Vec<usize>>,
}

impl IrqAffinity {
    /// The effective affinity when known and non-empty, else smp_affinity_list; with its source's name.
    /// An effective affinity outside smp_affinity_list is a move still pending (an MSI's new affinity takes
    /// effect at its next interrupt, e.g. right after `pin_irqs.sh`): smp_affinity_list is where it goes.
    fn cpus(&self) -> (&[usize], &'static str) {
        match (&self.effective, &self.smp) {
            (Some(e), Some(s)) if !e.is_empty() && !s.is_empty() && !e.iter().all(|c| s.contains(c)) => {
                (s, "smp_affinity_list (move pending)")
            }
            (Some(e), _) if !e.is_empty() => (e, "effective affinity"),
            (_, Some(s)) => (s, "smp_affinity_list"),
            _ => (&[], "affinity"),
        }
    }
}

/// Everything [`plan_from`] looks at, already read.
#[derive(Clone, Debug, Default)]
struct SysView {
    /// `/proc/interrupts`.
    interrupts: String,
    /// Per IRQ number: its affinity files.
    irq_affinity: BTreeMap<u32, IrqAffinity>,
    /// The device's `msi_irqs` (empty when unknown).
    msi_irqs: BTreeSet<u32>,
    /// No `/sys/class/net/IFACE/device`: no IRQs of its own.
    is_virtual: bool,
    /// Basename of the device directory, e.g. "0000:3b:00.0" or "virtio2".
    dev_name: Option<String>,
    /// PCI address of the device or of its PCI parent.
    pci_addr: Option<String>,
    /// Per CPU: its `thread_siblings_list` (including itself).
    siblings: BTreeMap<usize, Vec<usize>>,
    /// `/sys/devices/system/cpu/online`.
    online: Option<Vec<usize>>,
    /// `sched_getaffinity`.
    allowed: Vec<usize>,
}

fn with_ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    std::fs::read_to_string(path).ok().and_then(|s| parse_cpu_list(&s))
}

fn is_pci_addr(s: &str) -> bool {
    // dddd:bb:dd.f (the domain may be longer on some platforms).
    let hex = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((rest, func)) = s.rsplit_once('.') else { return false };
    let parts: Vec<&str> = rest.split(':').collect();
    hex(func) && parts.len() == 3 && parts.iter().all(|p| hex(p))
}

fn read_msi(dir: &Path) -> BTreeSet<u32> {
    std::fs::read_dir(dir.join("msi_irqs"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Read everything about `iface` and this machine that [`plan_from`] needs.
fn read_sys(iface: &str) -> io::Result<SysView> {
    if iface.is_empty() || iface == "." || iface == ".." || iface.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
    }
    let net = Path::new("/sys/class/net").join(iface);
    if !net.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface {iface} ({} is missing)", net.display()),
        ));
    }
    let mut sys = SysView { allowed: allowed_cpus()?, ..SysView::default() };
    let cpu_dir = Path::new("/sys/devices/system/cpu");
    sys.online = read_list(&cpu_dir.join("online"));
    for &c in &sys.allowed {
        if let Some(s) = read_list(&cpu_dir.join(format!("cpu{c}/topology/thread_siblings_list"))) {
            sys.siblings.insert(c, s);
        }
    }
    let dev_link = net.join("device");
    if !dev_link.exists() {
        sys.is_virtual = true;
        return Ok(sys);
    }
    let dev = std::fs::canonicalize(&dev_link).map_err(|e| with_ctx(e, dev_link.display()))?;
    let name = dev.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    if name.as_deref().is_some_and(is_pci_addr) {
        sys.pci_addr = name.clone();
        sys.msi_irqs = read_msi(&dev);
    } else if let Some(parent) = dev.parent() {
        let pname = parent.file_name().and_then(|n| n.to_str());
        if pname.is_some_and(is_pci_addr) {
            sys.pci_addr = pname.map(str::to_owned);
            sys.msi_irqs = read_msi(parent);
        }
    }
    sys.dev_name = name;
    sys.interrupts =
        std::fs::read_to_string("/proc/interrupts").map_err(|e| with_ctx(e, "read /proc/interrupts"))?;
    for line in parse_interrupts(&sys.interrupts) {
        let dir = Path::new("/proc/irq").join(line.irq.to_string());
        let aff = IrqAffinity {
            effective: read_list(&dir.join("effective_affinity_list")),
            smp: read_list(&dir.join("smp_affinity_list")),
        };
        sys.irq_affinity.insert(line.irq, aff);
    }
    Ok(sys)
}

// ---------------------------------------------------------------------------------------------------------
// /proc/interrupts.

/// One numbered line of `/proc/interrupts`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IrqLine {
    irq: u32,
    /// Everything after the per-CPU counts (chip, hwirq, action names), split on whitespace and commas.
    tokens: Vec<String>,
}

impl IrqLine {
    /// The action name as best known: the last token.
    fn name(&self) -> &str {
        self.tokens.last().map_or("", String::as_str)
    }
}

fn parse_interrupts(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines().peekable();
    let ncpu = match lines.peek() {
        Some(h) if h.split_whitespace().next().is_some_and(|t| t.starts_with("CPU")) => {
            let n = h.split_whitespace().filter(|t| t.starts_with("CPU")).count();
            lines.next();
            n
        }
        _ => usize::MAX,
    };
    let mut out = Vec::new();
    for line in lines {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let Ok(irq) = key.trim().parse::<u32>() else { continue };
        let mut toks = rest.split_whitespace().peekable();
        let mut skipped = 0;
        while skipped < ncpu && toks.peek().is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit())) {
            toks.next();
            skipped += 1;
        }
        let tokens = toks.flat_map(|t| t.split(',')).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        out.push(IrqLine { irq, tokens });
    }
    out
}

/// Classify the label between a name and a queue index: `Some(0)` names RX, `Some(1)` bare or other,
/// `None` TX-only or misc.
fn classify_label(label: &str) -> Option<u8> {
    let l = label.to_ascii_lowercase();
    if l.is_empty() {
        return Some(1);
    }
    if MISC_WORDS.iter().any(|w| l.contains(w)) {
        return None;
    }
    if l.contains("rx") || l == "input" || l.contains("comp") {
        return Some(0);
    }
    if l.contains("tx") || l == "output" {
        return None;
    }
    Some(1)
}

/// `rest` is what follows a name: "-TxRx-3", "-rx-3", "-3", "-input.3", "_comp3". Returns (rank, queue).
fn queue_suffix(rest: &str) -> Option<(u8, usize)> {
    let body = rest.strip_prefix(['-', '_', '.'])?;
    let start = body.rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let digits = &body[start..];
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    let q = digits.parse().ok()?;
    let label = body[..start].trim_end_matches(['-', '_', '.']);
    if !label.chars().all(|c| c.is_ascii_alphabetic() || c == '-' || c == '_') {
        return None;
    }
    classify_label(label).map(|rank| (rank, q))
}

/// `name` inside `token` at a boundary, followed by a queue suffix.
fn match_after(token: &str, name: &str) -> Option<(u8, usize)> {
    if name.is_empty() {
        return None;
    }
    token.match_indices(name).find_map(|(i, _)| {
        let boundary = token[..i].chars().next_back().is_none_or(|c| matches!(c, '-' | '_' | ':' | '@'));
        if boundary {
            queue_suffix(&token[i + name.len()..])
        } else {
            None
        }
    })
}

/// Which queue (and how surely) an action-name token names for this device.
fn token_queue(token: &str, iface: &str, dev_name: Option<&str>, pci: Option<&str>) -> Option<(u8, usize)> {
    if let Some(m) = match_after(token, iface) {
        return Some(m);
    }
    if let Some(m) = dev_name.and_then(|d| match_after(token, d)) {
        return Some(m);
    }
    // mlx5_comp3@pci:0000:3b:00.0, mlx4-3@0000:03:00.0
    let pci = pci?;
    let (left, right) = token.split_once('@')?;
    if right.strip_prefix("pci:").unwrap_or(right) != pci {
        return None;
    }
    queue_suffix(&left[left.find(['-', '_'])?..])
}

fn is_misc_vector(line: &IrqLine, iface: &str) -> bool {
    line.tokens.iter().any(|t| {
        let l = t.to_ascii_lowercase();
        t == iface
            || MISC_WORDS.iter().any(|w| l.contains(w))
            || l.contains("output")
            || ((l.contains("-tx") || l.contains("_tx")) && !l.contains("rx"))
    })
}

/// One queue's IRQ and the name it was found by.
#[derive(Clone, Debug, PartialEq, Eq)]
struct QueueIrq {
    irq: u32,
    name: String,
}

/// How [`find_queue_irqs`] found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Name,
    MsiOrder,
    NotFound,
}

fn find_queue_irqs(
    lines: &[IrqLine],
    iface: &str,
    dev_name: Option<&str>,
    pci: Option<&str>,
    msi: &BTreeSet<u32>,
    queues: usize,
) -> (Vec<Option<QueueIrq>>, Method) {
    let mut best: Vec<Option<(u8, u32, &str)>> = vec![None; queues];
    for line in lines {
        for t in &line.tokens {
            let Some((rank, q)) = token_queue(t, iface, dev_name, pci) else { continue };
            if q >= queues {
                continue;
            }
            let cand = (rank, line.irq, t.as_str());
            if best[q].is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                best[q] = Some(cand);
            }
        }
    }
    let mut found_any = best.iter().any(Option::is_some);
    if !found_any {
        // Any queue-named vector at all (a queue beyond `queues` still proves names work).
        found_any =
            lines.iter().any(|l| l.tokens.iter().any(|t| token_queue(t, iface, dev_name, pci).is_some()));
    }
    if found_any {
        let v = best.into_iter().map(|b| b.map(|(_, irq, name)| QueueIrq { irq, name: name.to_owned() }));
        return (v.collect(), Method::Name);
    }
    let mut vecs: Vec<&IrqLine> =
        lines.iter().filter(|l| msi.contains(&l.irq) && !is_misc_vector(l, iface)).collect();
    vecs.sort_by_key(|l| l.irq);
    if vecs.is_empty() {
        return (vec![None; queues], Method::NotFound);
    }
    let v = (0..queues).map(|q| vecs.get(q).map(|l| QueueIrq { irq: l.irq, name: l.name().to_owned() }));
    (v.collect(), Method::MsiOrder)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-CPU VM with no NIC IRQs (virtio balloon, console, block only).
    const TWO_CPU_NO_NIC: &str = "           CPU0       CPU1       
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 26:          0         13  IO-APIC   4-edge      ttyS0
 28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
 31:          0       2261 PCI-MSIX-0000:00:01.0   3-edge      virtio0-stats
 35:          0          1 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0     178858 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
NMI:          0          0   Non-maskable interrupts
LOC:   10471177    9060667   Local timer interrupts
ERR:          0
MIS:          0
";

    /// virtio_net with 2 queue pairs: netdev device is virtio2 under PCI 0000:00:03.0.
    const VIRTIO: &str = "           CPU0       CPU1       CPU2       CPU3       
 26:          0         13          0          0  IO-APIC   4-edge      ttyS0
 35:          0          1          0          0 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0     178858          0          0 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 37:          0          0          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0       4754          0          0 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       3816          0          0          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 40:          0          0       5120          0 PCI-MSIX-0000:00:03.0   3-edge      virtio2-input.1
 41:          0          0          0       4001 PCI-MSIX-0000:00:03.0   4-edge      virtio2-output.1
 42:          0          0          0          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-input.0
NMI:          0          0          0          0   Non-maskable interrupts
";

    /// ConnectX (mlx5), two ports, 4 channels each.
    const MLX5: &str = "            CPU0       CPU1       CPU2       CPU3       
   0:         36          0          0          0   IO-APIC   2-edge      timer
   9:          0          0          0          0   IO-APIC   9-fasteoi   acpi
 104:          0          0          0          0  IR-PCI-MSI 31981568-edge      mlx5_async0@pci:0000:3b:00.0
 105:      10233          0          0          0  IR-PCI-MSI 31981569-edge      mlx5_comp0@pci:0000:3b:00.0
 106:          0       9944          0          0  IR-PCI-MSI 31981570-edge      mlx5_comp1@pci:0000:3b:00.0
 107:          0          0       9321          0  IR-PCI-MSI 31981571-edge      mlx5_comp2@pci:0000:3b:00.0
 108:          0          0          0       8812  IR-PCI-MSI 31981572-edge      mlx5_comp3@pci:0000:3b:00.0
 109:          0          0          0          0  IR-PCI-MSI 31983616-edge      mlx5_async0@pci:0000:3b:00.1
 110:          7          0          0          0  IR-PCI-MSI 31983617-edge      mlx5_comp0@pci:0000:3b:00.1
 111:          0          7          0          0  IR-PCI-MSI 31983618-edge      mlx5_comp1@pci:0000:3b:00.1
 112:          0          0          7          0  IR-PCI-MSI 31983619-edge      mlx5_comp2@pci:0000:3b:00.1
 113:          0          0          0          7  IR-PCI-MSI 31983620-edge      mlx5_comp3@pci:0000:3b:00.1
NMI:          0          0          0          0   Non-maskable interrupts
";

    /// Intel: ixgbe/igb style (eth1, plus an eth10 to confuse a substring match, plus igb-style split
    /// vectors on eth2), i40e/ice/iavf style with the driver prefix and a misc vector, sfc-style bare index.
    const INTEL: &str = "            CPU0       CPU1       CPU2       CPU3       
  60:        100          0          0          0  IR-PCI-MSI 1048576-edge      eth10-TxRx-0
  61:          0        100          0          0  IR-PCI-MSI 1048577-edge      eth1-TxRx-0
  62:          0          0        100          0  IR-PCI-MSI 1048578-edge      eth1-TxRx-1
  63:          0          0          0        100  IR-PCI-MSI 1048579-edge      eth1-TxRx-2
  64:        100          0          0          0  IR-PCI-MSI 1048580-edge      eth1-TxRx-3
  65:          1          0          0          0  IR-PCI-MSI 1048581-edge      eth1
  70:          1          0          0          0  IR-PCI-MSI 2097152-edge      i40e-0000:3b:00.0:misc
  71:         10          0          0          0  IR-PCI-MSI 2097153-edge      i40e-ens1f0-TxRx-0
  72:          0         10          0          0  IR-PCI-MSI 2097154-edge      i40e-ens1f0-TxRx-1
  80:          1          0          0          0  IR-PCI-MSI 3145728-edge      ice-0000:5e:00.0:misc
  81:         10          0          0          0  IR-PCI-MSI 3145729-edge      ice-ens2f0-TxRx-0
  82:          0         10          0          0  IR-PCI-MSI 3145730-edge      ice-ens2f0-TxRx-1
  90:          1          0          0          0  IR-PCI-MSI 4194304-edge      iavf-0000:00:05.0:mbx
  91:         10          0          0          0  IR-PCI-MSI 4194305-edge      iavf-eth3-TxRx-0
  92:          0         10          0          0  IR-PCI-MSI 4194306-edge      iavf-eth3-TxRx-1
 100:          0          0         10          0  IR-PCI-MSI 5242880-edge      eth2-tx-0
 101:          0          0          0         10  IR-PCI-MSI 5242881-edge      eth2-rx-0
 102:         10          0          0          0  IR-PCI-MSI 5242882-edge      eth2-tx-1
 103:          0         10          0          0  IR-PCI-MSI 5242883-edge      eth2-rx-1
 110:          0          0         10          0  IR-PCI-MSI 6291456-edge      enp1s0f0-0
 111:          0          0          0         10  IR-PCI-MSI 6291457-edge      enp1s0f0-1
 112:          0          0          0         10  IR-PCI-MSI 6291458-edge      enp1s0f0np1-0
 120:          0          0          0         10  PCI-MSI-edge      ixgbe: eth4-TxRx-3
NMI:          0          0          0          0   Non-maskable interrupts
";

    fn irqs(text: &str, iface: &str, dev: Option<&str>, pci: Option<&str>, q: usize) -> Vec<Option<u32>> {
        let (v, m) = find_queue_irqs(&parse_interrupts(text), iface, dev, pci, &BTreeSet::new(), q);
        assert_eq!(m, Method::Name, "{iface}");
        v.into_iter().map(|x| x.map(|x| x.irq)).collect()
    }

    fn aff(pairs: &[(u32, &str)]) -> BTreeMap<u32, IrqAffinity> {
        pairs
            .iter()
            .map(|&(irq, l)| (irq, IrqAffinity { effective: parse_cpu_list(l), smp: parse_cpu_list("0-3") }))
            .collect()
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(" 3,1,1-2 "), Some(vec![1, 2, 3]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("1,,2"), None);
        assert_eq!(parse_cpu_list("-1"), None);
        assert_eq!(parse_cpu_list("0-99999999"), None);
        assert_eq!(fmt_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(fmt_list(&[]), "");
    }

    #[test]
    fn interrupts_parse() {
        let l = parse_interrupts(TWO_CPU_NO_NIC);
        assert_eq!(l.iter().map(|l| l.irq).collect::<Vec<_>>(), vec![24, 26, 28, 31, 35, 36]);
        assert_eq!(l[5].tokens, vec!["PCI-MSIX-0000:00:02.0", "1-edge", "virtio1-req.0"]);
        assert_eq!(l[0].name(), "ACPI:Ged");
    }

    #[test]
    fn mlx5_names() {
        let p0 = irqs(MLX5, "ens1f0np0", Some("0000:3b:00.0"), Some("0000:3b:00.0"), 4);
        assert_eq!(p0, vec![Some(105), Some(106), Some(107), Some(108)]);
        let p1 = irqs(MLX5, "ens1f1np1", Some("0000:3b:00.1"), Some("0000:3b:00.1"), 5);
        assert_eq!(p1, vec![Some(110), Some(111), Some(112), Some(113), None]);
    }

    #[test]
    fn intel_names() {
        assert_eq!(irqs(INTEL, "eth1", None, None, 4), vec![Some(61), Some(62), Some(63), Some(64)]);
        assert_eq!(irqs(INTEL, "eth10", None, None, 2), vec![Some(60), None]);
        assert_eq!(
            irqs(INTEL, "ens1f0", Some("0000:3b:00.0"), Some("0000:3b:00.0"), 2),
            vec![Some(71), Some(72)]
        );
        assert_eq!(
            irqs(INTEL, "ens2f0", Some("0000:5e:00.0"), Some("0000:5e:00.0"), 2),
            vec![Some(81), Some(82)]
        );
        assert_eq!(
            irqs(INTEL, "eth3", Some("0000:00:05.0"), Some("0000:00:05.0"), 2),
            vec![Some(91), Some(92)]
        );
        // igb-style split vectors: the RX one, never the TX one.
        assert_eq!(irqs(INTEL, "eth2", None, None, 2), vec![Some(101), Some(103)]);
        // Bare index; enp1s0f0np1 is another interface.
        assert_eq!(irqs(INTEL, "enp1s0f0", None, None, 2), vec![Some(110), Some(111)]);
        assert_eq!(irqs(INTEL, "eth4", None, None, 4), vec![None, None, None, Some(120)]);
    }

    #[test]
    fn virtio_names() {
        assert_eq!(irqs(VIRTIO, "eth0", Some("virtio2"), Some("0000:00:03.0"), 2), vec![Some(38), Some(40)]);
        assert_eq!(irqs(VIRTIO, "eth1", Some("virtio3"), Some("0000:00:04.0"), 1), vec![Some(42)]);
        // The no-NIC machine: virtio1-req.0 is a block device, virtio0 the balloon.
        let (v, m) = find_queue_irqs(
            &parse_interrupts(TWO_CPU_NO_NIC),
            "eth0",
            Some("virtio2"),
            None,
            &BTreeSet::new(),
            1,
        );
        assert_eq!((v, m), (vec![None], Method::NotFound));
    }

    #[test]
    fn msi_order_fallback() {
        let text = "            CPU0       CPU1
  50:          0          0  IR-PCI-MSI 1-edge      xnic-mailbox
  52:          0          0  IR-PCI-MSI 3-edge      xnic-q
  51:          0          0  IR-PCI-MSI 2-edge      xnic-q
  53:          0          0  IR-PCI-MSI 4-edge      xnic-q
  54:          0          0  IR-PCI-MSI 4-edge      other-q
";
        let msi: BTreeSet<u32> = [50, 51, 52, 53].into();
        let (v, m) = find_queue_irqs(&parse_interrupts(text), "eth9", Some("0000:01:00.0"), None, &msi, 4);
        assert_eq!(m, Method::MsiOrder);
        assert_eq!(
            v.iter().map(|x| x.as_ref().map(|x| x.irq)).collect::<Vec<_>>(),
            vec![Some(51), Some(52), Some(53), None]
        );
    }

    fn four_cpu(text: &str, dev: &str, pci: &str) -> SysView {
        SysView {
            interrupts: text.to_owned(),
            dev_name: Some(dev.to_owned()),
            pci_addr: Some(pci.to_owned()),
            allowed: vec![0, 1, 2, 3],
            online: Some(vec![0, 1, 2, 3]),
            // SMT pairs (0,2) and (1,3).
            siblings: [(0, vec![0, 2]), (1, vec![1, 3]), (2, vec![0, 2]), (3, vec![1, 3])].into(),
            ..SysView::default()
        }
    }

    #[test]
    fn irq_policy_mlx5() {
        let mut sys = four_cpu(MLX5, "0000:3b:00.0", "0000:3b:00.0");
        sys.irq_affinity = aff(&[(105, "0"), (106, "1"), (107, "2"), (108, "3")]);
        let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(0), Some(1)]);
        assert_eq!(p.queue_irqs, vec![Some(105), Some(106)]);
        assert_eq!(p.master, Some(3), "{:?}", p.notes);
        // 4 queues: every CPU has a worker; master shares the highest one.
        let p = plan_from(&sys, "ens1f0np0", 4, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(p.master, Some(3));
        assert!(p.notes.iter().any(|n| n == "master shares CPU 3 with worker 3"), "{:?}", p.notes);
        // 6 queues: queues 4 and 5 have no IRQ and fall back round-robin.
        let p = plan_from(&sys, "ens1f0np0", 6, PinPolicy::Irq);
        assert_eq!(p.workers[4..], [Some(0), Some(1)]);
        assert_eq!(p.queue_irqs[4..], [None, None]);
        assert!(p.notes.iter().any(|n| n.starts_with("no IRQ found for queue(s) 4-5")), "{:?}", p.notes);
    }

    #[test]
    fn sibling_policy() {
        let mut sys = four_cpu(MLX5, "0000:3b:00.0", "0000:3b:00.0");
        sys.irq_affinity = aff(&[(105, "0"), (106, "1")]);
        let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Sibling);
        assert_eq!(p.workers, vec![Some(2), Some(3)], "{:?}", p.notes);
        // CPUs 0 and 1 serve the IRQs, 2 and 3 run workers: master on the highest IRQ CPU.
        assert_eq!(p.master, Some(1));
        // No SMT: the IRQ CPU itself, noted.
        sys.siblings = (0..4).map(|c| (c, vec![c])).collect();
        let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Sibling);
        assert_eq!(p.workers, vec![Some(0), Some(1)]);
        assert!(p.notes.iter().any(|n| n.contains("no allowed SMT sibling")), "{:?}", p.notes);
        // Sibling outside the allowed set.
        sys.siblings = [(0, vec![0, 2]), (1, vec![1, 3])].into();
        sys.allowed = vec![0, 1, 3];
        let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Sibling);
        assert_eq!(p.workers, vec![Some(0), Some(3)]);
    }

    #[test]
    fn virtio_plan_uses_effective_affinity_and_allowed() {
        let mut sys = four_cpu(VIRTIO, "virtio2", "0000:00:03.0");
        sys.irq_affinity = aff(&[(38, "1"), (40, "2")]);
        let p = plan_from(&sys, "eth0", 2, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(1), Some(2)]);
        assert_eq!(p.master, Some(3));
        // Empty effective affinity: smp_affinity_list (0-3) ∩ allowed.
        sys.irq_affinity.get_mut(&40).unwrap().effective = Some(vec![]);
        sys.allowed = vec![1, 3];
        let p = plan_from(&sys, "eth0", 2, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(1), Some(1)]);
        assert_eq!(p.master, Some(3));
        assert!(p.notes.iter().any(|n| n.contains("smp_affinity_list")), "{:?}", p.notes);
        // Affinity wholly outside the allowed set: fallback.
        sys.allowed = vec![0, 3];
        let p = plan_from(&sys, "eth0", 1, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(0)], "{:?}", p.notes);
        assert!(p.notes.iter().any(|n| n.contains("has no allowed CPU")));
    }

    #[test]
    fn pending_affinity_move_follows_smp_affinity() {
        // pin_irqs.sh just moved queue 1's IRQ to CPU 2; no interrupt since, so effective still says 0.
        let mut sys = four_cpu(VIRTIO, "virtio2", "0000:00:03.0");
        sys.irq_affinity = aff(&[(38, "0"), (40, "0")]);
        sys.irq_affinity.get_mut(&38).unwrap().smp = parse_cpu_list("0");
        sys.irq_affinity.get_mut(&40).unwrap().smp = parse_cpu_list("2");
        let p = plan_from(&sys, "eth0", 2, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(0), Some(2)], "{:?}", p.notes);
        assert!(p.notes.iter().any(|n| n.contains("move pending")), "{:?}", p.notes);
    }

    #[test]
    fn nic_without_irqs_falls_back() {
        let sys = SysView {
            interrupts: TWO_CPU_NO_NIC.to_owned(),
            dev_name: Some("virtio2".to_owned()),
            allowed: vec![0, 1],
            ..SysView::default()
        };
        let p = plan_from(&sys, "eth0", 1, PinPolicy::Irq);
        assert_eq!((p.workers, p.master), (vec![Some(0)], Some(1)));
        assert!(p.notes[0].contains("no queue IRQs found"), "{:?}", p.notes);
    }

    fn virtual_2cpu() -> SysView {
        SysView {
            is_virtual: true,
            allowed: vec![0, 1],
            online: Some(vec![0, 1]),
            interrupts: TWO_CPU_NO_NIC.to_owned(),
            ..SysView::default()
        }
    }

    #[test]
    fn virtual_two_cpus_two_workers() {
        let p = plan_from(&virtual_2cpu(), "veth0", 2, PinPolicy::Irq);
        assert_eq!(p.workers, vec![Some(0), Some(1)]);
        assert_eq!(p.master, Some(1));
        assert_eq!(p.queue_irqs, vec![None, None]);
        assert_eq!(p.notes, vec![
            "veth0 is a virtual device (no IRQs): workers pinned round-robin over allowed CPUs 0-1; master shares \
             CPU 1 with worker 1"
        ]);
    }

    #[test]
    fn virtual_two_cpus_one_worker() {
        let p = plan_from(&virtual_2cpu(), "veth0", 1, PinPolicy::Sibling);
        assert_eq!((p.workers.clone(), p.master), (vec![Some(0)], Some(1)));
        assert!(p.notes[0].starts_with("veth0 is a virtual device"), "{:?}", p.notes);
        assert!(p.notes[0].contains("CPU 1 kept for the master"));
        // Three workers on two CPUs: round-robin, master with the fewest (then highest).
        let p = plan_from(&virtual_2cpu(), "veth0", 3, PinPolicy::Irq);
        assert_eq!((p.workers.clone(), p.master), (vec![Some(0), Some(1), Some(0)], Some(1)));
    }

    #[test]
    fn none_policy() {
        let p = plan_from(&virtual_2cpu(), "veth0", 2, PinPolicy::None);
        assert_eq!(
            p,
            PinPlan {
                workers: vec![None, None],
                master: None,
                queue_irqs: vec![None, None],
                notes: vec!["pinning disabled".to_owned()]
            }
        );
        assert_eq!(plan("does-not-exist0", 2, PinPolicy::None).unwrap(), p);
    }

    #[test]
    fn real_loopback() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let p = plan("lo", 1, PinPolicy::Irq).unwrap();
        assert_eq!(p.workers.len(), 1);
        for c in p.workers.iter().chain([&p.master]) {
            let c = c.expect("pinned");
            assert!(allowed.contains(&c), "{c} not in {allowed:?}");
        }
        assert!(p.notes.iter().any(|n| n.contains("virtual")), "{:?}", p.notes);
    }

    #[test]
    fn real_errors_and_pinning() {
        let e = plan("no-such-if0", 1, PinPolicy::Irq).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(plan("../x", 1, PinPolicy::Irq).is_err());
        let allowed = allowed_cpus().unwrap();
        let last = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![last]);
            let e = pin_current_thread(60_000).unwrap_err();
            assert!(e.to_string().contains("CPU 60000"), "{e}");
            assert!(pin_current_thread(MAX_CPUS).unwrap_err().to_string().contains("CPU 65536"));
        })
        .join()
        .unwrap();
    }
}
