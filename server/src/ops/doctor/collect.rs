//! Reading the system (files, rlimits, commands, the live XDP attach and AF_XDP probe) and calling the
//! decisions: the thin layer [`collect`] the module doc describes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::process::Command;

use datapath::backend::xdp::{self, UmemPages, XdpConfig, XdpSocket, ZeroCopy};
use datapath::pin::{self, PinPolicy};

use super::{
    attach_finding, backlog_finding, buffer_finding, config_findings, conntrack_finding, file_max_finding,
    foreign_program_finding, has_cap, hugepage_finding, hugepages_needed, irqbalance_finding,
    kernel_findings, memlock_finding, mtu_finding, nofile_finding, parse_cap_eff, parse_euid, pin_finding,
    port_finding, privilege_finding, queue_finding, zero_copy_finding, DoctorArgs, DoctorMode, Finding,
    Status, CAP_IPC_LOCK, CAP_NET_ADMIN,
};

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
    let prog = xdp_prog::XdpProgram::attach(iface, xdp_prog::Config { port, vlan, mode, allow: Vec::new() })?;
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
    let release = datapath::netdev::kernel_release();
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
