//! Decisions about the interface and the port: MTU, queues vs workers, the IRQ pinning plan, irqbalance,
//! conntrack NOTRACK, the UDP port, another XDP program, the live attach and the zero-copy probe. Pure
//! functions over values already read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;

use datapath::pin::PinPlan;

use super::{DoctorMode, Finding, IPV4_UDP_HDRS, IPV6_UDP_HDRS, QUIC_MIN_PAYLOAD};

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
            mode.ip_link_word()
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
