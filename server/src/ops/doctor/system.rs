//! Decisions about the box: kernel release, privileges, huge pages, socket buffers and backlog, file
//! limits, memlock. Pure functions over values already read.

use datapath::backend::xdp;

use super::{
    cap_name, has_cap, mib, DoctorMode, Finding, BASE_FDS, CAP_BPF, CAP_IPC_LOCK, CAP_NET_ADMIN, CAP_NET_RAW,
    CAP_SYS_ADMIN, FDS_PER_WORKER, HUGE_PAGE, MIN_BACKLOG, RECOMMENDED_BACKLOG,
};

/// The kernel features each mode relies on.
pub fn kernel_findings(release: &str, mode: DoctorMode, vlan: Option<u16>) -> Vec<Finding> {
    let Some(v) = xdp_prog::kernel_version(release) else {
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
