//! `server doctor`: is this box ready to run the server with this configuration?
//!
//! [`run`] reads the system (kernel release, capabilities, the interface by ioctl, the XDP program slot,
//! a live XDP attach and AF_XDP bind, IRQs, huge pages, sysctls, rlimits, netfilter, the UDP port), turns
//! each fact into a [`Finding`] (`Ok`, `Warn` or `Blocker`, with the command that fixes it), prints them as
//! a table or JSON, and exits 1 when anything blocks. The decisions are pure functions over values already
//! read (`*_finding`), unit-tested in `tests.rs`; [`collect()`] is the thin layer that reads and calls them.
//!
//! The live probes leave nothing behind: the XDP program is attached through a BPF link and detached when
//! it is dropped (or when the process dies), the AF_XDP socket is closed at once (the kernel may hold the
//! queue for ~0.5 s, which the server's bind waits out), the UDP socket is closed. Nothing is attached when
//! another XDP program already holds the interface. On some NIC drivers attaching a native XDP program
//! reconfigures the queues (a short traffic blip), exactly as starting the server would: `--no-probe` skips
//! the live probes.

use std::net::SocketAddr;
use std::process::ExitCode;

use datapath::backend::xdp;

mod collect;
mod network;
mod render;
mod system;
#[cfg(test)]
mod tests;

pub use collect::*;
pub use network::*;
pub use render::*;
pub use system::*;

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
