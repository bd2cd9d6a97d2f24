//! `server doctor`: is this box ready to run the server with this configuration?
//!
//! [`run`] reads the system (kernel release, capabilities, the interface by ioctl, the XDP program slot,
//! a live XDP attach and AF_XDP bind, IRQs, huge pages, sysctls, rlimits, netfilter, the UDP port), turns
//! each fact into a [`Finding`] (`Ok`, `Warn` or `Blocker`, with the command that fixes it), prints them as
//! a table or JSON, and exits 1 when anything blocks. The decisions are pure functions over values already
//! read (`*_finding`), unit-tested below; [`collect`] is the thin layer that reads and calls them.
//!
//! The live probes leave nothing behind: the XDP program is attached through a BPF link and detached when
//! it is dropped (or when the process dies), the AF_XDP socket is closed at once (the kernel may hold the
//! queue for ~0.5 s, which the server's bind waits out), the UDP socket is closed. Nothing is attached when
//! another XDP program already holds the interface. On some NIC drivers attaching a native XDP program
//! reconfigures the queues (a short traffic blip), exactly as starting the server would: `--no-probe` skips
//! the live probes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, ExitCode};

use datapath::backend::xdp::{self, UmemPages, XdpConfig, XdpSocket, ZeroCopy};
use datapath::pin::{self, PinPlan, PinPolicy};

/// The datapath to check for (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DoctorMode {
    /// io_uring UDP sockets.
    Uring,
    /// AF_XDP on `--iface`.
    Xdp,
}

/// `server doctor [options]`: the server's options that decide what the box must provide.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "server doctor",
    about = "Check whether this box is ready to run `server` with these options: kernel, privileges, interface, \
             XDP and AF_XDP support, queues, IRQ affinity, huge pages, sysctls, limits, conntrack, the port. \
             Prints each finding with the command that fixes it; exits 1 when something blocks.",
    after_help = "Run it where the server will run (inside `ip netns exec NS` for a namespace). In xdp mode it \
                  attaches the XDP program for a moment and binds an AF_XDP socket on queue 0 (both removed at \
                  once); `--no-probe` skips that."
)]
pub struct DoctorArgs {
    /// Datapath to check for.
    #[arg(long, value_enum, default_value_t = DoctorMode::Xdp)]
    pub mode: DoctorMode,
    /// xdp: the interface to serve on.
    #[arg(long)]
    pub iface: Option<String>,
    /// xdp: the VLAN carried on `--iface` (matched by the program, natively from RX metadata).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    pub vlan: Option<u16>,
    /// Worker threads (xdp default: one per receive queue; uring default: 1).
    #[arg(short = 'w', long = "workers")]
    pub workers: Option<usize>,
    /// UDP address to serve on.
    #[arg(long, default_value = "0.0.0.0:4433")]
    pub listen: SocketAddr,
    /// SO_RCVBUF per socket in bytes (the server's default, 32 MiB).
    #[arg(long, default_value_t = 32 << 20)]
    pub socket_recv_buf: u64,
    /// SO_SNDBUF per socket in bytes (the server's default, 32 MiB).
    #[arg(long, default_value_t = 32 << 20)]
    pub socket_send_buf: u64,
    /// xdp: UMEM frames (2 KiB each) per socket.
    #[arg(long, default_value_t = xdp::DEFAULT_FRAMES)]
    pub xdp_frames: u32,
    /// Connections per worker.
    #[arg(long, default_value_t = 65_536)]
    pub max_connections_per_worker: u64,
    /// Print the findings as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the live probes (XDP attach, AF_XDP bind).
    #[arg(long)]
    pub no_probe: bool,
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Ready.
    Ok,
    /// Works, but slower, or falls back, or needs attention.
    Warn,
    /// The server will not start (or not work) like this.
    Blocker,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// What was checked (`kernel`, `xdp program`, …).
    pub check: String,
    /// Verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The command (or change) that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Finding {
        Finding { check: check.to_string(), status, detail: detail.into(), fix }
    }
    fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding::new(check, Status::Ok, detail, None)
    }
    fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding::new(check, Status::Warn, detail, Some(fix.into()))
    }
    fn blocker(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding::new(check, Status::Blocker, detail, Some(fix.into()))
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// A 2 MiB huge page.
const HUGE_PAGE: u64 = 2 * MIB;
/// The smallest UDP payload QUIC allows (RFC 9000 §14).
const QUIC_MIN_PAYLOAD: u64 = 1200;
const IPV4_UDP_HDRS: u64 = 20 + 8;
const IPV6_UDP_HDRS: u64 = 40 + 8;
/// Below this many queued packets per CPU a 10 ms stall at 1 Mpps already drops (the kernel's default is
/// 1000); the reference tuning (`tune_server.sh`) uses [`RECOMMENDED_BACKLOG`].
const MIN_BACKLOG: u64 = 10_000;
const RECOMMENDED_BACKLOG: u64 = 300_000;
/// Descriptors the server holds besides its workers' (stdio, certificate files, the tripwire socket, the
/// XDP program, its maps and link, io_uring or epoll fds, slack for libraries).
const BASE_FDS: u64 = 64;
/// Descriptors per worker (a UDP socket and its io_uring, or an AF_XDP socket and its UMEM). QUIC
/// connections share their worker's socket: they hold no descriptor of their own.
const FDS_PER_WORKER: u64 = 8;

// Capability bits (linux/capability.h).
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

fn cap_name(bit: u32) -> &'static str {
    match bit {
        CAP_NET_BIND_SERVICE => "CAP_NET_BIND_SERVICE",
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_NET_RAW => "CAP_NET_RAW",
        CAP_IPC_LOCK => "CAP_IPC_LOCK",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

fn has_cap(caps: u64, bit: u32) -> bool {
    caps >> bit & 1 == 1
}

fn mib(b: u64) -> String {
    if b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pure decisions.
// ---------------------------------------------------------------------------------------------------------

/// `(major, minor)` of a kernel release such as `6.18.44-fc-v669` or `5.10.0-28-amd64`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel features each mode relies on.
pub fn kernel_findings(release: &str, mode: DoctorMode, vlan: Option<u16>) -> Vec<Finding> {
    let Some(v) = parse_kernel_release(release) else {
        return vec![Finding::warn(
            "kernel",
            format!("cannot parse the kernel release {release:?}"),
            "check `uname -r`: xdp mode needs Linux >= 5.9, uring mode >= 6.0",
        )];
    };
    let rel = release.trim();
    let mut out = Vec::new();
    match mode {
        DoctorMode::Xdp if v < (5, 9) => out.push(Finding::blocker(
            "kernel",
            format!("{rel}: the XDP program is attached through a BPF link, which needs Linux >= 5.9"),
            "upgrade the kernel to >= 5.9 (>= 6.8 for VLAN tags in RX metadata, >= 6.17 for the copy-mode TX budget)",
        )),
        DoctorMode::Xdp => out.push(Finding::ok("kernel", format!("{rel}: BPF links for XDP (>= 5.9)"))),
        DoctorMode::Uring if v < (6, 0) => out.push(Finding::blocker(
            "kernel",
            format!("{rel}: the io_uring backend needs multishot recvmsg (Linux >= 6.0)"),
            "upgrade the kernel to >= 6.0",
        )),
        DoctorMode::Uring => out.push(Finding::ok(
            "kernel",
            format!("{rel}: io_uring provided-buffer rings and multishot recvmsg (>= 6.0)"),
        )),
    }
    if mode == DoctorMode::Xdp {
        if let Some(id) = vlan {
            out.push(if v < (6, 8) {
                Finding::warn(
                    "vlan metadata",
                    format!(
                        "{rel} has no bpf_xdp_metadata_rx_vlan_tag (Linux >= 6.8): with --vlan {id} only in-band tags \
                         match, and drivers that strip the tag (veth, most NICs) hide it from the program"
                    ),
                    "use generic XDP on the VLAN device instead (`--iface IF.VLAN` without --vlan), or a kernel >= 6.8",
                )
            } else {
                Finding::ok(
                    "vlan metadata",
                    format!("{rel}: VLAN {id} can be read from RX metadata (kfunc, >= 6.8) in native mode"),
                )
            });
        }
        out.push(if v < (6, 17) {
            Finding::warn(
                "tx budget",
                format!(
                    "{rel} has no XDP_MAX_TX_SKB_BUDGET (Linux >= 6.17): a copy-mode AF_XDP socket sends at most 32 \
                     frames per kick"
                ),
                "a kernel >= 6.17, or a NIC with AF_XDP zero-copy (no budget applies)",
            )
        } else {
            Finding::ok("tx budget", format!("{rel}: copy-mode TX budget settable (XDP_MAX_TX_SKB_BUDGET, >= 6.17)"))
        });
    }
    out
}

/// A `Name:\tvalue` field of `/proc/self/status`.
pub fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// `CapEff` of `/proc/self/status`, as a bit mask.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, "CapEff")?, 16).ok()
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`).
pub fn parse_euid(status: &str) -> Option<u32> {
    status_field(status, "Uid")?.split_whitespace().nth(1)?.parse().ok()
}

/// Root and the capabilities the mode needs. `exe` is the server binary (for the `setcap` fix).
pub fn privilege_finding(euid: Option<u32>, cap_eff: Option<u64>, mode: DoctorMode, exe: &str) -> Finding {
    let who = match euid {
        Some(0) => "root".to_string(),
        Some(u) => format!("uid {u}"),
        None => "unknown uid".to_string(),
    };
    let Some(caps) = cap_eff else {
        return Finding::warn(
            "privileges",
            format!("{who}; CapEff unreadable in /proc/self/status"),
            "run as root",
        );
    };
    let wanted: &[u32] = match mode {
        DoctorMode::Xdp => &[CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_IPC_LOCK],
        DoctorMode::Uring => &[CAP_NET_ADMIN],
    };
    // CAP_SYS_ADMIN also allows what CAP_BPF does.
    let held = |bit: u32| has_cap(caps, bit) || (bit == CAP_BPF && has_cap(caps, CAP_SYS_ADMIN));
    let missing: Vec<u32> = wanted.iter().copied().filter(|&b| !held(b)).collect();
    let names = |bits: &[u32]| bits.iter().map(|&b| cap_name(b)).collect::<Vec<_>>().join(" ");
    let setcap = format!(
        "run as root, or `setcap {}+ep {exe}`",
        wanted.iter().map(|&b| cap_name(b).to_ascii_lowercase()).collect::<Vec<_>>().join(",")
    );
    if missing.is_empty() {
        return Finding::ok("privileges", format!("{who}, CapEff has {}", names(wanted)));
    }
    let hard: Vec<u32> =
        missing.iter().copied().filter(|&b| mode == DoctorMode::Xdp && b != CAP_IPC_LOCK).collect();
    if !hard.is_empty() {
        return Finding::blocker(
            "privileges",
            format!(
                "{who} lacks {}: attaching XDP needs CAP_NET_ADMIN + CAP_BPF, AF_XDP sockets CAP_NET_RAW",
                names(&missing)
            ),
            setcap,
        );
    }
    let why = match mode {
        DoctorMode::Xdp => "UMEM pages count against RLIMIT_MEMLOCK (see memlock)",
        DoctorMode::Uring => {
            "socket buffers cannot be forced past net.core.rmem_max/wmem_max (SO_RCVBUFFORCE needs it)"
        }
    };
    Finding::warn("privileges", format!("{who} lacks {}: {why}", names(&missing)), setcap)
}

/// The UDP payload a `mtu`-byte interface leaves (IPv4 or IPv6).
pub fn udp_payload(mtu: u32, ipv6: bool) -> u64 {
    u64::from(mtu).saturating_sub(if ipv6 { IPV6_UDP_HDRS } else { IPV4_UDP_HDRS })
}

/// MTU against QUIC's 1200-byte minimum and the server's `max_payload`.
pub fn mtu_finding(iface: &str, mtu: u32, ipv6: bool, max_payload: u64) -> Finding {
    let payload = udp_payload(mtu, ipv6);
    let hdrs = if ipv6 { IPV6_UDP_HDRS } else { IPV4_UDP_HDRS };
    let fix = format!("ip link set dev {iface} mtu {}", (max_payload + hdrs).max(1400));
    if payload < QUIC_MIN_PAYLOAD {
        Finding::blocker(
            "mtu",
            format!(
                "{iface} MTU {mtu} leaves a {payload}-byte UDP payload, below QUIC's {QUIC_MIN_PAYLOAD} (needs MTU >= {})",
                QUIC_MIN_PAYLOAD + hdrs
            ),
            fix,
        )
    } else if payload < max_payload {
        Finding::warn(
            "mtu",
            format!(
                "{iface} MTU {mtu}: UDP payloads are capped at {payload} bytes (the server's --max-udp-payload is {max_payload})"
            ),
            fix,
        )
    } else {
        Finding::ok("mtu", format!("{iface} MTU {mtu}: {payload}-byte UDP payloads (>= {max_payload})"))
    }
}

/// Receive queues against workers (one AF_XDP socket per queue).
pub fn queue_finding(iface: &str, queues: u32, how: &str, workers: Option<usize>) -> Finding {
    let q = queues as usize;
    let w = workers.unwrap_or(q);
    let max = xdp_prog::XSKS_MAX_ENTRIES as usize;
    if w > max {
        return Finding::blocker(
            "queues",
            format!("{w} workers: the program's socket map holds queues 0..{max}"),
            format!("-w {max} (and `ethtool -L {iface} combined {max}`)"),
        );
    }
    if w > q {
        return Finding::blocker(
            "queues",
            format!(
                "{iface} has {queues} receive queue(s) ({how}) and AF_XDP needs one per worker: {w} workers"
            ),
            format!("ethtool -L {iface} combined {w}   (or run with -w {queues})"),
        );
    }
    if w < q {
        return Finding::warn(
            "queues",
            format!(
                "{iface} has {queues} receive queues ({how}) and {w} worker(s): datagrams on {} reach the kernel \
                 instead (the tripwire counts them)",
                if w + 1 == q { format!("queue {w}") } else { format!("queues {w}-{}", q - 1) }
            ),
            format!("-w {queues}   (or `ethtool -L {iface} combined {w}`)"),
        );
    }
    let who = if workers.is_some() { "" } else { " (the default: one per queue)" };
    Finding::ok("queues", format!("{iface} has {queues} receive queue(s) ({how}), {w} worker(s){who}"))
}

/// The pinning plan, and whether two workers share a CPU.
pub fn pin_finding(iface: &str, plan: &PinPlan) -> Finding {
    let mut text = String::new();
    let mut on_cpu: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (w, cpu) in plan.workers.iter().enumerate() {
        if w > 0 {
            text.push_str(", ");
        }
        match cpu {
            Some(c) => {
                let _ = write!(text, "worker {w} on CPU {c}");
                on_cpu.entry(*c).or_default().push(w);
            }
            None => {
                let _ = write!(text, "worker {w} unpinned");
            }
        }
        if let Some(irq) = plan.queue_irqs.get(w).copied().flatten() {
            let _ = write!(text, " (queue IRQ {irq})");
        }
    }
    match plan.master {
        Some(c) => {
            let _ = write!(text, "; master on CPU {c}");
        }
        None => text.push_str("; master unpinned"),
    }
    for n in &plan.notes {
        let _ = write!(text, "; {n}");
    }
    let shared: Vec<String> = on_cpu
        .iter()
        .filter(|(_, ws)| ws.len() > 1)
        .map(|(c, ws)| {
            format!(
                "workers {} share CPU {c}",
                ws.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(" and ")
            )
        })
        .collect();
    if shared.is_empty() {
        Finding::ok("irq affinity", text)
    } else {
        Finding::warn(
            "irq affinity",
            format!("{}: {text}", shared.join(", ")),
            format!(
                "spread {iface}'s queue IRQs over distinct CPUs (`echo CPU > /proc/irq/N/smp_affinity_list`), or use \
                 fewer workers and queues (`ethtool -L {iface} combined N`, -w N)"
            ),
        )
    }
}

/// irqbalance moves IRQs behind the pinning plan's back.
pub fn irqbalance_finding(running: bool) -> Finding {
    if running {
        Finding::warn(
            "irqbalance",
            "irqbalance is running: it moves queue IRQs away from the CPUs the workers are pinned next to",
            "systemctl stop irqbalance && systemctl disable irqbalance",
        )
    } else {
        Finding::ok("irqbalance", "not running")
    }
}

/// 2 MiB pages the configuration can use: (UMEM pages, canvas pages). A UMEM that is not a whole number
/// of 2 MiB pages (frames not a multiple of 1024) lives on 4 KiB pages.
pub fn hugepages_needed(mode: DoctorMode, workers: usize, frames: u32, canvas_bytes: u64) -> (u64, u64) {
    let canvas = hugepages::pages_needed(canvas_bytes as usize).max(1);
    let umem = u64::from(frames) * u64::from(xdp::FRAME_SIZE);
    let umem_pages = match mode {
        DoctorMode::Xdp if umem.is_multiple_of(HUGE_PAGE) => workers as u64 * (umem / HUGE_PAGE),
        _ => 0,
    };
    (umem_pages, canvas)
}

/// Reserved and free 2 MiB pages against what the UMEMs and the canvas would use.
pub fn hugepage_finding(nr: Option<u64>, free: Option<u64>, umem_pages: u64, canvas_pages: u64) -> Finding {
    let needed = umem_pages + canvas_pages;
    let what = if umem_pages > 0 {
        format!("{needed} needed ({umem_pages} for the UMEMs + {canvas_pages} for the canvas)")
    } else {
        format!("{needed} needed for the canvas")
    };
    let (Some(nr), Some(free)) = (nr, free) else {
        return Finding::warn(
            "hugepages",
            format!("no 2 MiB hugetlb pool (/sys/kernel/mm/hugepages/hugepages-2048kB); {what}: the server uses THP or 4 KiB pages"),
            "a kernel with CONFIG_HUGETLBFS, then `echo N > /proc/sys/vm/nr_hugepages`",
        );
    };
    if free >= needed {
        return Finding::ok("hugepages", format!("{free} of {nr} 2 MiB pages free, {what}"));
    }
    let target = nr - free.min(nr) + needed;
    Finding::warn(
        "hugepages",
        format!("{free} of {nr} 2 MiB pages free, {what}: the server falls back to THP / 4 KiB pages (slower, TLB misses)"),
        format!("echo {target} > /proc/sys/vm/nr_hugepages"),
    )
}

/// `net.core.rmem_max` / `wmem_max` against the configured socket buffer (uring mode).
pub fn buffer_finding(sysctl: &str, max: Option<u64>, want: u64, flag: &str, can_force: bool) -> Finding {
    let fix = format!("sysctl -w {sysctl}={want}");
    let Some(max) = max else {
        return Finding::warn(sysctl, format!("unreadable (/proc/sys/{})", sysctl.replace('.', "/")), fix);
    };
    if max >= want {
        return Finding::ok(sysctl, format!("{max} >= {flag} {want}"));
    }
    let then = if can_force {
        "the server forces its buffers as root (SO_*BUFFORCE), but other sockets and non-root runs are capped"
    } else {
        "the server's sockets get at most this much (no CAP_NET_ADMIN to force it)"
    };
    Finding::warn(sysctl, format!("{max} < {flag} {want}: {then}"), fix)
}

/// `net.core.netdev_max_backlog` (absent in child network namespaces: it is global).
pub fn backlog_finding(value: Option<u64>) -> Finding {
    const NAME: &str = "net.core.netdev_max_backlog";
    match value {
        None => Finding::ok(
            NAME,
            "not visible in this network namespace (it is global: `sysctl net.core.netdev_max_backlog` in the root namespace)",
        ),
        Some(v) if v < MIN_BACKLOG => Finding::warn(
            NAME,
            format!("{v} packets per CPU (< {MIN_BACKLOG}): bursts queued for the stack (generic XDP, veth, RPS, sockets) are dropped"),
            format!("sysctl -w {NAME}={RECOMMENDED_BACKLOG}"),
        ),
        Some(v) => Finding::ok(NAME, format!("{v} packets per CPU")),
    }
}

/// Descriptors the server holds with `workers` workers.
pub fn fds_needed(workers: usize) -> u64 {
    BASE_FDS + FDS_PER_WORKER * workers as u64
}

/// RLIMIT_NOFILE (soft, hard) against what the server opens. Connections hold no descriptor (they share
/// their worker's socket), so the limit matters for the handful the server opens, not for connections.
pub fn nofile_finding(limit: Option<(u64, u64)>, workers: usize, connections: u64) -> Finding {
    let need = fds_needed(workers);
    let Some((soft, hard)) = limit else {
        return Finding::warn("nofile", "getrlimit(RLIMIT_NOFILE) failed", "ulimit -n 65536");
    };
    let fmt = |v: u64| if v == libc::RLIM_INFINITY { "unlimited".to_string() } else { v.to_string() };
    if soft < need {
        return Finding::blocker(
            "nofile",
            format!("RLIMIT_NOFILE soft {} < {need} descriptors for {workers} worker(s)", fmt(soft)),
            format!(
                "ulimit -n {}   (permanently: `* soft nofile {}` in /etc/security/limits.conf)",
                need.max(65536).min(hard),
                need.max(65536)
            ),
        );
    }
    Finding::ok(
        "nofile",
        format!(
            "RLIMIT_NOFILE soft {} hard {} >= {need} descriptors for {workers} worker(s) (the {connections} connections share their worker's socket)",
            fmt(soft),
            fmt(hard)
        ),
    )
}

/// `fs.file-max` against what the server opens.
pub fn file_max_finding(value: Option<u64>, workers: usize) -> Finding {
    let need = fds_needed(workers);
    match value {
        Some(v) if v < need => Finding::blocker(
            "fs.file-max",
            format!("{v} system-wide descriptors < {need} the server opens"),
            "sysctl -w fs.file-max=4194304",
        ),
        Some(v) => Finding::ok("fs.file-max", format!("{v}")),
        None => Finding::ok("fs.file-max", "unreadable (assumed large)"),
    }
}

/// RLIMIT_MEMLOCK (soft) against the UMEM bytes pinned, unless CAP_IPC_LOCK exempts the process.
pub fn memlock_finding(cap_ipc_lock: bool, soft: Option<u64>, umem_bytes: u64) -> Finding {
    if cap_ipc_lock {
        return Finding::ok(
            "memlock",
            format!("CAP_IPC_LOCK: the {} of UMEM are not counted against RLIMIT_MEMLOCK", mib(umem_bytes)),
        );
    }
    match soft {
        Some(v) if v == libc::RLIM_INFINITY => Finding::ok("memlock", "RLIMIT_MEMLOCK unlimited"),
        Some(v) if v >= umem_bytes => {
            Finding::ok("memlock", format!("RLIMIT_MEMLOCK {} >= {} of UMEM", mib(v), mib(umem_bytes)))
        }
        Some(v) => Finding::blocker(
            "memlock",
            format!("RLIMIT_MEMLOCK {} < {} of UMEM the AF_XDP sockets pin (and no CAP_IPC_LOCK)", mib(v), mib(umem_bytes)),
            "ulimit -l unlimited   (permanently: `* - memlock unlimited` in /etc/security/limits.conf), or run as root",
        ),
        None => Finding::warn("memlock", "getrlimit(RLIMIT_MEMLOCK) failed", "ulimit -l unlimited"),
    }
}

/// Whether a netfilter rule listing (`nft list ruleset`, `iptables -t raw -S`) has a NOTRACK rule naming
/// `port` (nft `notrack`, iptables `-j NOTRACK` or `-j CT --notrack`): one line with both.
pub fn notrack_covers(ruleset: &str, port: u16) -> bool {
    let p = port.to_string();
    ruleset.lines().any(|l| {
        l.to_ascii_lowercase().contains("notrack") && l.split(|c: char| !c.is_ascii_digit()).any(|t| t == p)
    })
}

/// The nft commands that take the port's UDP traffic out of conntrack.
pub fn notrack_fix(port: u16) -> String {
    format!(
        "nft 'add table inet canvas_raw; add chain inet canvas_raw pre {{ type filter hook prerouting priority raw; }}; \
         add rule inet canvas_raw pre udp dport {port} notrack; add chain inet canvas_raw out {{ type filter hook output \
         priority raw; }}; add rule inet canvas_raw out udp sport {port} notrack'"
    )
}

/// Connection tracking of the served port. `rulesets` are the listings read (`nft list ruleset`,
/// `iptables -t raw -S`), `None` where the tool is missing or failed.
pub fn conntrack_finding(
    mode: DoctorMode,
    loaded: bool,
    rulesets: &[(&str, Option<String>)],
    port: u16,
) -> Finding {
    if !loaded {
        return Finding::ok("conntrack", "nf_conntrack not loaded");
    }
    if mode == DoctorMode::Xdp {
        return Finding::ok(
            "conntrack",
            format!("nf_conntrack loaded, but frames to UDP {port} are redirected by XDP before netfilter sees them"),
        );
    }
    let read: Vec<&str> = rulesets.iter().filter(|(_, r)| r.is_some()).map(|(n, _)| *n).collect();
    if let Some((tool, _)) =
        rulesets.iter().find(|(_, r)| r.as_deref().is_some_and(|r| notrack_covers(r, port)))
    {
        return Finding::ok("conntrack", format!("nf_conntrack loaded; UDP {port} is NOTRACK ({tool})"));
    }
    let looked = if read.is_empty() {
        "neither nft nor iptables could list the rules".to_string()
    } else {
        format!("no NOTRACK rule for UDP {port} in {}", read.join(", "))
    };
    Finding::warn(
        "conntrack",
        format!("nf_conntrack is loaded and {looked}: every client becomes a conntrack entry (the table fills and drops)"),
        notrack_fix(port),
    )
}

/// The served UDP port, from the result of binding it.
pub fn port_finding(listen: SocketAddr, bind: &io::Result<()>) -> Finding {
    let port = listen.port();
    match bind {
        Ok(()) => Finding::ok("port", format!("udp {listen} is free")),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Finding::blocker(
            "port",
            format!("udp {listen} is in use (another server?)"),
            format!("find it with `ss -ulpn sport = :{port}`, stop it, or serve another --listen port"),
        ),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Finding::blocker(
            "port",
            format!("udp {listen}: {} is not an address of this host (in this namespace)", listen.ip()),
            "use an address from `ip -br addr`, or 0.0.0.0",
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Finding::blocker(
            "port",
            format!("udp {listen}: {e} (ports below 1024 need CAP_NET_BIND_SERVICE)"),
            "serve a port >= 1024, or run as root",
        ),
        Err(e) => Finding::blocker("port", format!("cannot bind udp {listen}: {e}"), "check --listen"),
    }
}

/// The `ip link` word that removes a program in `mode`.
fn ip_link_word(mode: xdp_prog::Mode) -> &'static str {
    match mode {
        xdp_prog::Mode::Native => "xdp",
        xdp_prog::Mode::Generic => "xdpgeneric",
        xdp_prog::Mode::Offload => "xdpoffload",
    }
}

/// Another XDP program on the interface (the server never replaces one).
pub fn foreign_program_finding(iface: &str, prog_id: u32, mode: xdp_prog::Mode) -> Finding {
    Finding::blocker(
        "xdp program",
        format!(
            "{iface} already has an XDP program (prog id {prog_id}, {mode} mode); the server never replaces it \
             (`bpftool prog show id {prog_id}` says what it is)"
        ),
        format!(
            "ip link set dev {iface} {} off   (if a BPF link holds it, stop the process that owns it: another server?)",
            ip_link_word(mode)
        ),
    )
}

/// The outcome of attaching the program natively, then (if that failed) generically.
pub fn attach_finding(
    iface: &str,
    native: Result<String, String>,
    generic: Option<Result<String, String>>,
) -> Finding {
    match (native, generic) {
        (Ok(detail), _) => Finding::ok("xdp program", format!("native XDP supported on {iface}: {detail}")),
        (Err(n), Some(Ok(detail))) => Finding::warn(
            "xdp program",
            format!("native XDP refused on {iface} ({n}); generic XDP works: {detail} (slower, copy-mode AF_XDP only)"),
            format!(
                "the server falls back to generic mode by itself (--xdp-attach auto); for native: see `dmesg`, \
                 `ethtool -K {iface} lro off`, an MTU <= 3498 on veth, or a driver with XDP support"
            ),
        ),
        (Err(n), Some(Err(g))) => Finding::blocker(
            "xdp program",
            format!("XDP cannot be attached to {iface}: native: {n}; generic: {g}"),
            "see the errors above and `dmesg`",
        ),
        (Err(n), None) => Finding::blocker("xdp program", format!("XDP cannot be attached to {iface}: {n}"), "see the error and `dmesg`"),
    }
}

/// The outcome of binding an AF_XDP socket in zero-copy mode, then (if refused) in copy mode.
pub fn zero_copy_finding(
    iface: &str,
    driver: &str,
    zero_copy: Result<(), String>,
    copy: Option<Result<(), String>>,
) -> Finding {
    match (zero_copy, copy) {
        (Ok(()), _) => Finding::ok("zero-copy", format!("granted by the {driver} driver of {iface} (queue 0)")),
        (Err(z), Some(Ok(()))) => Finding::warn(
            "zero-copy",
            format!("zero-copy refused by the {driver} driver of {iface} ({z}); copy mode works (every frame is copied)"),
            format!(
                "--zero-copy auto (the default) uses copy mode; {}",
                datapath::netdev::zero_copy_hint(driver, &datapath::netdev::kernel_release())
            ),
        ),
        (Err(z), Some(Err(c))) => Finding::blocker(
            "zero-copy",
            format!("no AF_XDP socket on {iface} queue 0: zero-copy: {z}; copy mode: {c}"),
            "see the errors (another AF_XDP user on the queue shows in `ss --xdp -p`)",
        ),
        (Err(z), None) => Finding::blocker(
            "zero-copy",
            format!("no AF_XDP socket on {iface} queue 0: {z}"),
            "see the error (another AF_XDP user on the queue shows in `ss --xdp -p`)",
        ),
    }
}

/// Whether the configuration is coherent the way the server checks it.
pub fn config_findings(a: &DoctorArgs) -> Vec<Finding> {
    let mut out = Vec::new();
    if a.workers == Some(0) {
        out.push(Finding::blocker("config", "-w/--workers must be at least 1", "-w 1"));
    }
    match a.mode {
        DoctorMode::Uring if a.iface.is_some() || a.vlan.is_some() => out.push(Finding::blocker(
            "config",
            "--iface and --vlan belong to --mode xdp (uring serves every interface through --listen)",
            "drop --iface/--vlan, or use --mode xdp",
        )),
        DoctorMode::Xdp if a.iface.is_none() => out.push(Finding::blocker(
            "config",
            "--mode xdp needs --iface",
            "--iface eth1 (or --iface eth1 --vlan 4000 for native XDP on the VLAN's parent)",
        )),
        DoctorMode::Xdp if a.listen.port() == 0 => out.push(Finding::blocker(
            "config",
            "--mode xdp needs a fixed --listen port (the XDP program matches it)",
            "--listen 0.0.0.0:4433",
        )),
        _ => {}
    }
    out
}

/// (ok, warnings, blockers).
pub fn counts(findings: &[Finding]) -> (usize, usize, usize) {
    let n = |s| findings.iter().filter(|f| f.status == s).count();
    (n(Status::Ok), n(Status::Warn), n(Status::Blocker))
}

/// 0 without blockers, 1 with.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.status == Status::Blocker))
}

/// The table: `[ OK ] check: detail`, `[WARN] …`, `[FAIL] …`, each fix on the next line, then the counts.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.status {
            Status::Ok => "[ OK ]",
            Status::Warn => "[WARN]",
            Status::Blocker => "[FAIL]",
        };
        let _ = writeln!(s, "{tag} {}: {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(s, "       fix: {fix}");
        }
    }
    let (ok, warn, fail) = counts(findings);
    let _ = writeln!(
        s,
        "{ok} ok, {warn} warning(s), {fail} blocker(s): {}",
        if fail == 0 { "ready" } else { "not ready" }
    );
    s
}

/// The JSON report.
pub fn render_json(findings: &[Finding]) -> String {
    #[derive(serde::Serialize)]
    struct Report<'a> {
        ready: bool,
        ok: usize,
        warnings: usize,
        blockers: usize,
        findings: &'a [Finding],
    }
    let (ok, warnings, blockers) = counts(findings);
    let r = Report { ready: blockers == 0, ok, warnings, blockers, findings };
    serde_json::to_string_pretty(&r).expect("findings serialise")
}

// ---------------------------------------------------------------------------------------------------------
// Reading the system.
// ---------------------------------------------------------------------------------------------------------

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_u64(path: &str) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

fn sysctl(name: &str) -> Option<u64> {
    read_u64(&format!("/proc/sys/{}", name.replace('.', "/")))
}

#[derive(Clone, Copy)]
enum Limit {
    NoFile,
    MemLock,
}

/// (soft, hard) of a resource limit.
fn rlimit(which: Limit) -> Option<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    let resource = match which {
        Limit::NoFile => libc::RLIMIT_NOFILE,
        Limit::MemLock => libc::RLIMIT_MEMLOCK,
    };
    // SAFETY: getrlimit writes one `struct rlimit` into `r`, which is valid and writable for the call.
    let rc = unsafe { libc::getrlimit(resource, &mut r) };
    (rc == 0).then_some((r.rlim_cur, r.rlim_max))
}

fn irqbalance_running() -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else { return false };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "irqbalance"))
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Attach the real program in `mode` and drop it at once (the BPF link goes with it).
fn try_attach(
    iface: &str,
    port: u16,
    vlan: Option<u16>,
    mode: xdp_prog::AttachMode,
) -> Result<String, xdp_prog::Error> {
    let prog = xdp_prog::XdpProgram::attach(iface, xdp_prog::Config { port, vlan, mode })?;
    let mut detail = format!("attached as prog {} in {} mode and detached", prog.prog_id(), prog.mode());
    if let Some(v) = vlan {
        let _ = write!(
            detail,
            "; VLAN {v} matched {}",
            if prog.vlan_metadata() { "in the frame or RX metadata" } else { "in the frame only" }
        );
    }
    for n in prog.notes() {
        let _ = write!(detail, "; {n}");
    }
    prog.detach()?;
    Ok(detail)
}

/// The kernel's verifier refused the XDP program: a bug of the program on this kernel, not a missing feature.
pub fn verifier_finding(e: &xdp_prog::Error) -> Finding {
    Finding::blocker(
        "xdp program",
        e.to_string(),
        "update the server (the program must load on every supported kernel: `scripts/vm.sh matrix` tests 6.1, 6.12 \
         and the newest backports kernel), or serve with `--mode uring` meanwhile",
    )
}

/// Bind (and close) a small copy-mode AF_XDP socket on queue 0.
fn try_copy_xsk(iface: &str, listen: SocketAddr) -> Result<(), String> {
    let cfg = XdpConfig {
        zero_copy: ZeroCopy::Off,
        pages: UmemPages::Small,
        frames: 128,
        ring: 64,
        ..XdpConfig::new(iface, 0, listen)
    };
    XdpSocket::bind(&cfg).map(drop).map_err(|e| e.to_string())
}

/// Checks in xdp mode that need the interface to exist; returns the number of workers.
/// `privileged`: the privilege check did not block (without privileges the probes would only repeat it).
fn interface_checks(a: &DoctorArgs, iface: &str, privileged: bool, out: &mut Vec<Finding>) -> Option<usize> {
    let idx = match datapath::netdev::ifindex(iface) {
        Ok(i) => i,
        Err(e) => {
            out.push(Finding::blocker(
                "interface",
                e.to_string(),
                "pick one from `ip -br link` (inside a namespace: `ip netns exec NS server doctor ...`)",
            ));
            return None;
        }
    };
    let driver = datapath::netdev::driver(iface);
    let mtu = datapath::netdev::mtu(iface);
    out.push(Finding::ok(
        "interface",
        format!(
            "{iface}: ifindex {idx}, driver {driver}, MTU {}",
            mtu.as_ref().map(|m| m.to_string()).unwrap_or_else(|e| format!("unknown ({e})"))
        ),
    ));
    if let Ok(m) = mtu {
        out.push(mtu_finding(
            iface,
            m,
            a.listen.is_ipv6(),
            datapath::backend::uring::DEFAULT_MAX_PAYLOAD as u64,
        ));
    }
    let workers = match datapath::netdev::rx_queues(iface) {
        Ok((q, how)) => {
            out.push(queue_finding(iface, q, how, a.workers));
            a.workers.unwrap_or(q as usize)
        }
        Err(e) => {
            out.push(Finding::warn(
                "queues",
                format!("cannot count {iface}'s queues: {e}"),
                "check `ethtool -l IF`",
            ));
            a.workers.unwrap_or(1)
        }
    };

    // The XDP slot, then the live probes.
    let port = if a.listen.port() == 0 { 4433 } else { a.listen.port() };
    match xdp_prog::query(iface) {
        Ok(Some((id, mode))) => {
            out.push(foreign_program_finding(iface, id, mode));
            out.push(Finding::warn(
                "zero-copy",
                format!("not probed: binding an AF_XDP socket could disturb the queues of {iface}'s current XDP user"),
                "remove the other program, then run doctor again",
            ));
        }
        Err(e) => {
            out.push(Finding::blocker("xdp program", format!("cannot query {iface}: {e}"), "run as root"))
        }
        Ok(None) if a.no_probe || !privileged => {
            let why = if a.no_probe { "--no-probe" } else { "missing privileges, see above" };
            out.push(Finding::ok(
                "xdp program",
                format!("{iface} has no XDP program (attach not probed: {why})"),
            ));
            out.push(Finding::ok("zero-copy", format!("not probed ({why})")));
        }
        Ok(None) => {
            let native = try_attach(iface, port, a.vlan, xdp_prog::AttachMode::Native);
            match native {
                // The same object would be refused in generic mode too: name the refusal once.
                Err(e) if e.verifier_log().is_some() => out.push(verifier_finding(&e)),
                native => {
                    let native = native.map_err(|e| e.to_string());
                    let generic = native.is_err().then(|| {
                        try_attach(iface, port, a.vlan, xdp_prog::AttachMode::Generic)
                            .map_err(|e| e.to_string())
                    });
                    out.push(attach_finding(iface, native, generic));
                }
            }
            let zc = xdp::probe_zero_copy(iface, 0, a.listen).map_err(|e| e.reason());
            let copy = zc.is_err().then(|| try_copy_xsk(iface, a.listen));
            out.push(zero_copy_finding(iface, &driver, zc, copy));
        }
    }

    match pin::plan(iface, workers.max(1), PinPolicy::Irq) {
        Ok(plan) => out.push(pin_finding(iface, &plan)),
        Err(e) => out.push(Finding::warn(
            "irq affinity",
            format!("no pinning plan: {e}"),
            "the server needs /proc/interrupts and sched_getaffinity; or run it with --pin none",
        )),
    }
    Some(workers)
}

/// Read the system and decide every check.
pub fn collect(a: &DoctorArgs) -> Vec<Finding> {
    let mut out = config_findings(a);
    let release = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    out.extend(kernel_findings(&release, a.mode, a.vlan));

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = parse_cap_eff(&status);
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "server".into());
    let privileges = privilege_finding(parse_euid(&status), cap_eff, a.mode, &exe);
    let privileged = privileges.status != Status::Blocker;
    out.push(privileges);

    let mut workers = a.workers.unwrap_or(1).max(1);
    if a.mode == DoctorMode::Xdp {
        if let Some(iface) = &a.iface {
            if let Some(w) = interface_checks(a, iface, privileged, &mut out) {
                workers = w.max(1);
            }
        }
    }
    out.push(irqbalance_finding(irqbalance_running()));

    let canvas_bytes = u64::from(canvas::grid::DEFAULT_WIDTH) * u64::from(canvas::grid::DEFAULT_HEIGHT);
    let (umem_pages, canvas_pages) = hugepages_needed(a.mode, workers, a.xdp_frames, canvas_bytes);
    let hp = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    out.push(hugepage_finding(
        read_u64(&format!("{hp}/nr_hugepages")),
        read_u64(&format!("{hp}/free_hugepages")),
        umem_pages,
        canvas_pages,
    ));

    let caps = cap_eff.unwrap_or(0);
    if a.mode == DoctorMode::Xdp {
        let umem = workers as u64 * u64::from(a.xdp_frames) * u64::from(xdp::FRAME_SIZE);
        out.push(memlock_finding(has_cap(caps, CAP_IPC_LOCK), rlimit(Limit::MemLock).map(|l| l.0), umem));
    }
    if a.mode == DoctorMode::Uring {
        let force = has_cap(caps, CAP_NET_ADMIN);
        out.push(buffer_finding(
            "net.core.rmem_max",
            sysctl("net.core.rmem_max"),
            a.socket_recv_buf,
            "--socket-recv-buf",
            force,
        ));
        out.push(buffer_finding(
            "net.core.wmem_max",
            sysctl("net.core.wmem_max"),
            a.socket_send_buf,
            "--socket-send-buf",
            force,
        ));
    }
    out.push(backlog_finding(sysctl("net.core.netdev_max_backlog")));
    out.push(file_max_finding(sysctl("fs.file-max"), workers));
    out.push(nofile_finding(rlimit(Limit::NoFile), workers, workers as u64 * a.max_connections_per_worker));

    let conntrack = std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_count").exists()
        || std::path::Path::new("/proc/net/nf_conntrack").exists();
    let rulesets: Vec<(&str, Option<String>)> = if conntrack && a.mode == DoctorMode::Uring {
        vec![
            ("nft list ruleset", command_output("nft", &["list", "ruleset"])),
            ("iptables -t raw -S", command_output("iptables", &["-t", "raw", "-S"])),
        ]
    } else {
        Vec::new()
    };
    out.push(conntrack_finding(a.mode, conntrack, &rulesets, a.listen.port()));

    let bind = UdpSocket::bind(a.listen).map(drop);
    out.push(port_finding(a.listen, &bind));
    out
}

/// `server doctor`: collect, print, exit 1 on a blocker.
pub fn run(a: DoctorArgs) -> ExitCode {
    let findings = collect(&a);
    if a.json {
        println!("{}", render_json(&findings));
    } else {
        let workers = a.workers.map(|w| w.to_string()).unwrap_or_else(|| "default".into());
        println!(
            "server doctor: mode {}, {}listen {}, workers {workers}",
            match a.mode {
                DoctorMode::Uring => "uring",
                DoctorMode::Xdp => "xdp",
            },
            match (&a.iface, a.vlan) {
                (Some(i), Some(v)) => format!("interface {i} VLAN {v}, "),
                (Some(i), None) => format!("interface {i}, "),
                _ => String::new(),
            },
            a.listen
        );
        print!("{}", render(&findings));
    }
    ExitCode::from(exit_code(&findings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> DoctorArgs {
        DoctorArgs::parse_from(std::iter::once("server doctor").chain(extra.iter().copied()))
    }

    #[test]
    fn defaults_match_the_server() {
        let a = args(&[]);
        assert_eq!(a.mode, DoctorMode::Xdp);
        assert_eq!(a.listen, "0.0.0.0:4433".parse().unwrap());
        assert_eq!((a.socket_recv_buf, a.socket_send_buf), (32 << 20, 32 << 20));
        assert_eq!(a.xdp_frames, xdp::DEFAULT_FRAMES);
        assert_eq!(a.max_connections_per_worker, 65_536);
        assert!(!a.json && a.workers.is_none() && a.iface.is_none());
        let a = args(&["--mode", "uring", "-w", "4", "--json", "--vlan", "4000", "--iface", "eth1"]);
        assert_eq!((a.mode, a.workers, a.vlan, a.json), (DoctorMode::Uring, Some(4), Some(4000), true));
        assert!(DoctorArgs::try_parse_from(["server doctor", "--vlan", "4095"]).is_err());
    }

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.10.0-28-amd64\n"), Some((5, 10)));
        assert_eq!(parse_kernel_release("6.8"), Some((6, 8)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert_eq!(parse_kernel_release(""), None);
    }

    fn statuses(f: &[Finding]) -> Vec<(&str, Status)> {
        f.iter().map(|f| (f.check.as_str(), f.status)).collect()
    }

    #[test]
    fn kernel_thresholds() {
        use Status::*;
        let f = kernel_findings("6.18.44", DoctorMode::Xdp, Some(4000));
        assert_eq!(statuses(&f), [("kernel", Ok), ("vlan metadata", Ok), ("tx budget", Ok)]);
        let f = kernel_findings("6.8.0", DoctorMode::Xdp, Some(4000));
        assert_eq!(statuses(&f), [("kernel", Ok), ("vlan metadata", Ok), ("tx budget", Warn)]);
        let f = kernel_findings("6.1.0", DoctorMode::Xdp, Some(4000));
        assert_eq!(statuses(&f), [("kernel", Ok), ("vlan metadata", Warn), ("tx budget", Warn)]);
        let f = kernel_findings("6.1.0", DoctorMode::Xdp, None);
        assert_eq!(statuses(&f), [("kernel", Ok), ("tx budget", Warn)]);
        let f = kernel_findings("5.8.0", DoctorMode::Xdp, None);
        assert_eq!(f[0].status, Blocker);
        assert!(f[0].detail.contains("5.9"), "{f:?}");
        assert_eq!(statuses(&kernel_findings("5.19.0", DoctorMode::Uring, None)), [("kernel", Blocker)]);
        assert_eq!(statuses(&kernel_findings("6.0.0", DoctorMode::Uring, None)), [("kernel", Ok)]);
        assert_eq!(kernel_findings("???", DoctorMode::Xdp, None)[0].status, Warn);
    }

    const STATUS: &str = "Name:\tserver\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n\
                          CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn status_parsing() {
        assert_eq!(parse_euid(STATUS), Some(0));
        assert_eq!(parse_cap_eff(STATUS), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapEffX:\t1\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }

    #[test]
    fn privileges() {
        let all = 0x1ff_ffff_ffffu64;
        assert_eq!(privilege_finding(Some(0), Some(all), DoctorMode::Xdp, "s").status, Status::Ok);
        // No CAP_BPF, but CAP_SYS_ADMIN: fine.
        let no_bpf = all & !(1 << CAP_BPF);
        assert_eq!(privilege_finding(Some(0), Some(no_bpf), DoctorMode::Xdp, "s").status, Status::Ok);
        let f = privilege_finding(Some(1000), Some(0), DoctorMode::Xdp, "/bin/server");
        assert_eq!(f.status, Status::Blocker);
        assert!(f.detail.contains("CAP_NET_ADMIN") && f.detail.contains("uid 1000"), "{f:?}");
        assert!(f
            .fix
            .as_deref()
            .unwrap()
            .contains("setcap cap_net_admin,cap_net_raw,cap_bpf,cap_ipc_lock+ep /bin/server"));
        let only_lock_missing = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) | (1 << CAP_BPF);
        assert_eq!(
            privilege_finding(Some(1000), Some(only_lock_missing), DoctorMode::Xdp, "s").status,
            Status::Warn
        );
        assert_eq!(privilege_finding(Some(1000), Some(0), DoctorMode::Uring, "s").status, Status::Warn);
        assert_eq!(privilege_finding(None, None, DoctorMode::Uring, "s").status, Status::Warn);
    }

    #[test]
    fn mtu_thresholds() {
        assert_eq!(mtu_finding("x", 1227, false, 1350).status, Status::Blocker);
        assert_eq!(mtu_finding("x", 1228, false, 1350).status, Status::Warn);
        assert_eq!(mtu_finding("x", 1247, true, 1350).status, Status::Blocker);
        assert_eq!(mtu_finding("x", 1378, false, 1350).status, Status::Ok);
        assert_eq!(mtu_finding("x", 1378, true, 1350).status, Status::Warn);
        assert_eq!(mtu_finding("x", 1500, true, 1350).status, Status::Ok);
        let f = mtu_finding("eth9", 1000, false, 1350);
        assert_eq!(f.fix.as_deref(), Some("ip link set dev eth9 mtu 1400"));
    }

    #[test]
    fn queues_vs_workers() {
        let f = queue_finding("xr", 1, "ethtool channels", Some(4));
        assert_eq!(f.status, Status::Blocker);
        assert!(f.fix.as_deref().unwrap().contains("ethtool -L xr combined 4"), "{f:?}");
        let f = queue_finding("xr", 4, "sysfs", Some(2));
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("datagrams on queues 2-3 reach"), "{f:?}");
        assert!(queue_finding("xr", 2, "sysfs", Some(1)).detail.contains("on queue 1 reach"));
        assert_eq!(queue_finding("xr", 4, "sysfs", Some(4)).status, Status::Ok);
        assert_eq!(queue_finding("xr", 4, "sysfs", None).status, Status::Ok);
        assert_eq!(queue_finding("xr", 128, "sysfs", Some(65)).status, Status::Blocker);
    }

    #[test]
    fn pinning_plan() {
        let plan = PinPlan {
            workers: vec![Some(0), Some(1)],
            master: Some(1),
            queue_irqs: vec![Some(40), None],
            notes: vec!["a note".into()],
        };
        let f = pin_finding("eth1", &plan);
        assert_eq!(f.status, Status::Ok);
        assert_eq!(f.detail, "worker 0 on CPU 0 (queue IRQ 40), worker 1 on CPU 1; master on CPU 1; a note");
        let plan = PinPlan {
            workers: vec![Some(0), Some(1), Some(0)],
            master: None,
            queue_irqs: vec![],
            notes: vec![],
        };
        let f = pin_finding("eth1", &plan);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.starts_with("workers 0 and 2 share CPU 0"), "{f:?}");
        assert_eq!(irqbalance_finding(true).status, Status::Warn);
        assert_eq!(
            irqbalance_finding(true).fix.as_deref(),
            Some("systemctl stop irqbalance && systemctl disable irqbalance")
        );
        assert_eq!(irqbalance_finding(false).status, Status::Ok);
    }

    #[test]
    fn hugepage_arithmetic() {
        // 16384 frames x 2 KiB = 32 MiB = 16 pages per worker; the default canvas fits one page.
        assert_eq!(hugepages_needed(DoctorMode::Xdp, 2, 16384, 1_000_000), (32, 1));
        assert_eq!(hugepages_needed(DoctorMode::Xdp, 2, 1000, 1_000_000), (0, 1));
        assert_eq!(hugepages_needed(DoctorMode::Uring, 8, 16384, 1_000_000), (0, 1));
        assert_eq!(hugepages_needed(DoctorMode::Uring, 1, 16384, 5 << 20), (0, 3));
        assert_eq!(hugepage_finding(Some(40), Some(33), 32, 1).status, Status::Ok);
        let f = hugepage_finding(Some(10), Some(4), 32, 1);
        assert_eq!(f.status, Status::Warn);
        // 6 in use by someone else + 33 needed.
        assert_eq!(f.fix.as_deref(), Some("echo 39 > /proc/sys/vm/nr_hugepages"));
        assert_eq!(
            hugepage_finding(Some(0), Some(0), 0, 1).fix.as_deref(),
            Some("echo 1 > /proc/sys/vm/nr_hugepages")
        );
        assert_eq!(hugepage_finding(None, None, 0, 1).status, Status::Warn);
    }

    #[test]
    fn sysctls_and_limits() {
        let f = buffer_finding("net.core.rmem_max", Some(212_992), 32 << 20, "--socket-recv-buf", true);
        assert_eq!(f.status, Status::Warn);
        assert_eq!(f.fix.as_deref(), Some("sysctl -w net.core.rmem_max=33554432"));
        assert_eq!(
            buffer_finding("net.core.wmem_max", Some(64 << 20), 32 << 20, "x", false).status,
            Status::Ok
        );
        assert_eq!(backlog_finding(Some(1000)).status, Status::Warn);
        assert_eq!(backlog_finding(Some(300_000)).status, Status::Ok);
        assert_eq!(backlog_finding(None).status, Status::Ok);
        assert_eq!(fds_needed(2), 80);
        assert_eq!(nofile_finding(Some((1024, 1_048_576)), 2, 131_072).status, Status::Ok);
        let f = nofile_finding(Some((50, 4096)), 2, 131_072);
        assert_eq!(f.status, Status::Blocker);
        assert!(f.fix.as_deref().unwrap().starts_with("ulimit -n 4096"), "{f:?}");
        assert_eq!(file_max_finding(Some(10), 2).status, Status::Blocker);
        assert_eq!(file_max_finding(Some(1 << 20), 2).status, Status::Ok);
        assert_eq!(memlock_finding(true, Some(0), 64 << 20).status, Status::Ok);
        assert_eq!(memlock_finding(false, Some(libc::RLIM_INFINITY), 64 << 20).status, Status::Ok);
        assert_eq!(memlock_finding(false, Some(8 << 20), 64 << 20).status, Status::Blocker);
        assert_eq!(memlock_finding(false, Some(64 << 20), 64 << 20).status, Status::Ok);
    }

    #[test]
    fn notrack_detection() {
        let nft =
            "table inet raw {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\
                   \t\tudp dport 4433 notrack\n\t}\n}\n";
        assert!(notrack_covers(nft, 4433));
        assert!(!notrack_covers(nft, 443));
        assert!(!notrack_covers(nft, 44));
        assert!(notrack_covers("-A PREROUTING -p udp -m udp --dport 4433 -j NOTRACK\n", 4433));
        assert!(notrack_covers("-A PREROUTING -p udp -m udp --dport 4433 -j CT --notrack\n", 4433));
        assert!(notrack_covers("udp dport { 443, 4433 } notrack", 4433));
        assert!(!notrack_covers("-A PREROUTING -p udp --dport 4433 -j ACCEPT\n-A OUTPUT -j NOTRACK\n", 4433));
        let none: &[(&str, Option<String>)] = &[("nft list ruleset", None), ("iptables -t raw -S", None)];
        assert_eq!(conntrack_finding(DoctorMode::Uring, false, none, 4433).status, Status::Ok);
        assert_eq!(conntrack_finding(DoctorMode::Xdp, true, none, 4433).status, Status::Ok);
        let f = conntrack_finding(DoctorMode::Uring, true, none, 4433);
        assert_eq!(f.status, Status::Warn);
        assert!(f.fix.as_deref().unwrap().contains("udp dport 4433 notrack"), "{f:?}");
        let with = [("nft list ruleset", Some(nft.to_string())), ("iptables -t raw -S", None)];
        assert_eq!(conntrack_finding(DoctorMode::Uring, true, &with, 4433).status, Status::Ok);
        let f = conntrack_finding(DoctorMode::Uring, true, &with, 9999);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("in nft list ruleset"), "{f:?}");
    }

    #[test]
    fn port_outcomes() {
        let l: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        assert_eq!(port_finding(l, &Ok(())).status, Status::Ok);
        let f = port_finding(l, &Err(io::Error::from_raw_os_error(libc::EADDRINUSE)));
        assert_eq!(f.status, Status::Blocker);
        assert!(f.fix.as_deref().unwrap().contains("ss -ulpn sport = :4433"), "{f:?}");
        let f = port_finding(l, &Err(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)));
        assert!(f.detail.contains("not an address"), "{f:?}");
        assert_eq!(port_finding(l, &Err(io::Error::from_raw_os_error(libc::EACCES))).status, Status::Blocker);
    }

    #[test]
    fn xdp_outcomes() {
        let f = foreign_program_finding("eth1", 42, xdp_prog::Mode::Generic);
        assert_eq!(f.status, Status::Blocker);
        assert!(f.detail.contains("prog id 42"), "{f:?}");
        assert!(f.fix.as_deref().unwrap().starts_with("ip link set dev eth1 xdpgeneric off"), "{f:?}");
        assert_eq!(attach_finding("x", Ok("ok".into()), None).status, Status::Ok);
        assert_eq!(attach_finding("x", Err("n".into()), Some(Ok("g".into()))).status, Status::Warn);
        assert_eq!(attach_finding("x", Err("n".into()), Some(Err("g".into()))).status, Status::Blocker);
        assert_eq!(attach_finding("x", Err("n".into()), None).status, Status::Blocker);
        assert_eq!(zero_copy_finding("x", "mlx5_core", Ok(()), None).status, Status::Ok);
        let f = zero_copy_finding("x", "veth", Err("EOPNOTSUPP".into()), Some(Ok(())));
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("zero-copy refused") && f.detail.contains("copy mode works"), "{f:?}");
        assert!(f.fix.as_deref().unwrap().contains("--zero-copy auto"));
        assert_eq!(
            zero_copy_finding("x", "veth", Err("z".into()), Some(Err("c".into()))).status,
            Status::Blocker
        );
    }

    #[test]
    fn config_coherence() {
        assert!(config_findings(&args(&["--iface", "eth1"])).is_empty());
        assert_eq!(config_findings(&args(&[])).len(), 1, "xdp needs --iface");
        assert_eq!(config_findings(&args(&["--mode", "uring", "--iface", "eth1"])).len(), 1);
        assert!(config_findings(&args(&["--mode", "uring"])).is_empty());
        assert_eq!(config_findings(&args(&["--iface", "e", "-w", "0"])).len(), 1);
        assert_eq!(config_findings(&args(&["--iface", "e", "--listen", "0.0.0.0:0"])).len(), 1);
    }

    #[test]
    fn table_and_json() {
        let f = vec![
            Finding::ok("kernel", "6.18"),
            Finding::warn("zero-copy", "refused", "--zero-copy auto"),
            Finding::blocker("port", "in use", "ss -ulpn sport = :4433"),
        ];
        let t = render(&f);
        assert_eq!(
            t,
            "[ OK ] kernel: 6.18\n[WARN] zero-copy: refused\n       fix: --zero-copy auto\n\
             [FAIL] port: in use\n       fix: ss -ulpn sport = :4433\n1 ok, 1 warning(s), 1 blocker(s): not ready\n"
        );
        assert_eq!(exit_code(&f), 1);
        assert_eq!(exit_code(&f[..2]), 0);
        let v: serde_json::Value = serde_json::from_str(&render_json(&f)).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["blockers"], 1);
        assert_eq!(v["findings"][1]["status"], "warn");
        assert_eq!(v["findings"][2]["status"], "blocker");
        assert_eq!(v["findings"][0]["fix"], serde_json::Value::Null);
    }
}
