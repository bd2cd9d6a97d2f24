//! `server`: the canvas server. Master on the main thread, one worker per `-w`, io_uring sockets
//! (`--mode uring`) or one AF_XDP socket per NIC queue (`--mode xdp`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canvas::{Canvas, Cooldown, Dims, Rules};
use clap::Parser;
use datapath::backend::uring::{UringConfig, UringSocket};
use datapath::backend::xdp::{self, UmemPages, XdpConfig, XdpSockStats, XdpSocket, ZeroCopy};
use datapath::pin::{self, PinPolicy};
use datapath::seam::{BackendStats, Datapath};
use server::endpoint::{Endpoint, EndpointConfig};
use server::link::{Shared, WorkerLink};
use server::master::{Master, MasterConfig};
use server::quic::{self, QuicConfig, DEFAULT_QUIC};
use server::worker::{self, LoopConfig, DEFAULT_LOOP};

mod args;
mod replay;
mod report;

use args::{Args, HugePolicy, LogSync, Mode, Steer, XdpAttach, ZeroCopyArg};
use report::{
    ClusterReport, PinReport, Report, SteerReport, Totals, WorkerReport, XdpReport, XdpWorkerReport,
};

/// A signal repeated within this long counts once (see the signal thread in `run`).
const DUPLICATE_SIGNAL: Duration = Duration::from_millis(50);

/// Estimated quiche state per connection, measured on this kind of machine (DESIGN.md: ~25 KB idle).
const CONN_STATE_BYTES: usize = 25 * 1024;

/// One worker's packet backend.
enum Backend {
    Uring(Box<UringSocket>),
    Xdp(Box<XdpSocket>),
}

fn read_sysctl(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/"))).ok()?.trim().parse().ok()
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn main() -> ExitCode {
    // `server doctor [options]`: its own parser, so the flat `Args` stays as it is.
    if std::env::args_os().nth(1).is_some_and(|a| a == "doctor") {
        let rest = std::env::args_os().skip(2);
        let d =
            server::ops::doctor::DoctorArgs::parse_from(std::iter::once("server doctor".into()).chain(rest));
        return server::ops::doctor::run(d);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "replay") {
        return replay::main(std::env::args_os().skip(2));
    }
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tripwire: a plain UDP socket on the served port. In xdp mode every datagram for the port should be
/// steered to an AF_XDP socket, so one arriving here means the program is not steering (detached, wrong
/// VLAN, a queue without a socket): count it and say so.
fn tripwire(
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<AtomicU64>, std::thread::JoinHandle<()>), String> {
    let bind = || -> std::io::Result<std::net::UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(listen), Type::DGRAM, Some(Protocol::UDP))?;
        datapath::backend::uring::dual_stack(&sock, listen)?;
        sock.bind(&listen.into())?;
        Ok(sock.into())
    };
    let sock = bind()
        .map_err(|e| format!("the tripwire socket: {}", datapath::backend::uring::bind_error(e, listen)))?;
    sock.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let h = std::thread::Builder::new()
        .name("tripwire".into())
        .spawn(move || {
            let mut buf = [0u8; 2048];
            let mut warned_at = 0u64;
            let mut last_warn = std::time::Instant::now() - Duration::from_secs(60);
            while !stop.load(Ordering::Acquire) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let n = c.fetch_add(1, Ordering::Relaxed) + 1;
                    if last_warn.elapsed() >= Duration::from_secs(5) {
                        eprintln!(
                            "server: warning: tripwire: {} datagram(s) for {listen} reached the kernel UDP socket (latest from {from}): the XDP program is not steering them to AF_XDP (wrong --vlan? a queue without a worker? program detached?)",
                            n - warned_at
                        );
                        warned_at = n;
                        last_warn = std::time::Instant::now();
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok((count, h))
}

/// Apply the stream to `canvas` (which holds it up to `from`) until `head` (the stream's last sequence when
/// this node joined), bounded by `within`; returns the sequence reached and the invalid writes skipped.
fn catch_up<S: AsRef<[u8]> + AsMut<[u8]>>(
    seq: &cluster::Sequencer,
    canvas: &mut Canvas<S>,
    palette: u16,
    from: u64,
    head: u64,
    within: Duration,
) -> Result<(u64, u64), String> {
    let t0 = std::time::Instant::now();
    let (mut at, mut invalid, mut said) = (from, 0u64, t0);
    let mut msgs = Vec::new();
    while at < head {
        if t0.elapsed() > within {
            return Err(format!(
                "cluster: caught up to {at} of {head} in {within:?} ({}): raise --cluster-catch-up-secs, or check NATS",
                seq.status().last_error().unwrap_or_else(|| "no error reported".into())
            ));
        }
        msgs.clear();
        if seq.poll(4096, &mut msgs) == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for o in &msgs {
            at = o.seq;
            match &o.batch {
                Ok(b) => invalid += server::master::apply_stream_writes(canvas, palette, &b.writes),
                Err(_) => invalid += 1,
            }
        }
        if said.elapsed() >= Duration::from_secs(2) {
            said = std::time::Instant::now();
            eprintln!("server: cluster: catching up: at {at} of {head}");
        }
    }
    Ok((at, invalid))
}

/// Says on stderr what the cluster connection does while serving: NATS lost and back, and the latest
/// problem (publish retries, reader restarts, snapshot failures), at most every 5 s.
struct ClusterWatch {
    st: Arc<cluster::Status>,
    connected: bool,
    troubles: u64,
    said: Option<std::time::Instant>,
}

impl ClusterWatch {
    fn new(st: Arc<cluster::Status>) -> Self {
        Self { connected: true, troubles: 0, said: None, st }
    }

    fn troubles(&self) -> u64 {
        let st = &self.st;
        [&st.publish_failures, &st.reader_restarts, &st.snapshot_failures, &st.missing]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn check(&mut self) {
        let connected = self.st.connected.load(Ordering::Acquire);
        if connected != self.connected {
            self.connected = connected;
            if connected {
                eprintln!("server: cluster: NATS connection back: the writes that waited are published, and ACKed once ordered");
            } else {
                eprintln!(
                    "server: cluster: warning: lost the NATS connection (reconnecting): no write is ACKed until the stream has ordered it; writes wait, and are answered REJECT busy once the queues fill"
                );
            }
        }
        let troubles = self.troubles();
        if troubles > self.troubles && self.said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            self.troubles = troubles;
            self.said = Some(std::time::Instant::now());
            if let Some(e) = self.st.last_error() {
                eprintln!("server: cluster: warning: {e}");
            }
        }
    }
}

/// `--take-over`: stop the canvas server(s) holding `listen`'s port with SIGTERM and wait (bounded by
/// `timeout`) until they have exited, before this one opens its data directory and binds. A holder that is
/// not a canvas server (another command name) is never signalled: that is an error. Nothing holding the
/// port: nothing to do.
fn take_over(listen: SocketAddr, timeout: Duration) -> Result<(), String> {
    let me = std::fs::read_to_string("/proc/self/comm").unwrap_or_default().trim().to_string();
    let holders = datapath::backend::uring::port_holders(listen);
    if holders.is_empty() {
        eprintln!("server: --take-over: no process holds UDP {listen}: nothing to take over");
        return Ok(());
    }
    if let Some(h) = holders.iter().find(|h| h.comm != me || h.pid == std::process::id()) {
        return Err(format!(
            "--take-over: UDP {listen} is held by {h}, which is not a canvas server ({me}): it is not \
             signalled; stop it yourself or pick another --listen"
        ));
    }
    for h in &holders {
        // SAFETY: kill(2) with a pid read from /proc and a valid signal number has no memory effects.
        if unsafe { libc::kill(h.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("--take-over: cannot signal {h} holding UDP {listen}: {e}"));
        }
        eprintln!(
            "server: --take-over: sent SIGTERM to {h} (serving UDP {listen}); waiting up to {} s for it to stop",
            timeout.as_secs()
        );
    }
    let t0 = std::time::Instant::now();
    // Gone: no /proc entry, or a zombie (it has exited; its parent has not reaped it yet).
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    loop {
        let left: Vec<_> = holders.iter().filter(|h| running(h.pid)).collect();
        if left.is_empty() {
            break;
        }
        if t0.elapsed() >= timeout {
            let names: Vec<_> = left.iter().map(ToString::to_string).collect();
            return Err(format!(
                "--take-over: {} still running {} s after SIGTERM: not taken over (it may still be draining; \
                 a second signal forces its exit, or raise --take-over-timeout-secs)",
                names.join(", "),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let names: Vec<_> = holders.iter().map(ToString::to_string).collect();
    eprintln!(
        "server: --take-over: {} stopped after {:.2} s; taking over UDP {listen}",
        names.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.mode == Mode::Uring && (a.iface.is_some() || a.vlan.is_some()) {
        return Err("--iface and --vlan belong to --mode xdp (the uring mode serves every interface through --listen)".into());
    }
    if !a.provided_buffers.is_power_of_two() {
        return Err(format!("--provided-buffers must be a power of two, got {}", a.provided_buffers).into());
    }
    if !a.cluster.is_empty() && a.data_dir.is_some() {
        return Err("--cluster with --data-dir: in a cluster the stream is the log and its snapshots are in the cluster's bucket: drop --data-dir".into());
    }
    if a.take_over {
        take_over(a.listen, Duration::from_secs(a.take_over_timeout_secs))?;
    }
    let dims = Dims { width: a.width, height: a.height };
    let rules = Rules { dims, palette: a.palette };
    let cooldown = Cooldown::new(Duration::from_secs(if a.rplace_cooldown { 300 } else { a.cooldown_secs }));
    let tick = Duration::from_millis(a.broadcast_interval_ms.max(1));
    let qc = QuicConfig {
        idle_timeout: Duration::from_millis(a.idle_timeout_ms),
        max_udp_payload: a.max_udp_payload,
        dgram_queue: a.dgram_queue,
        ..DEFAULT_QUIC
    };
    if a.broadcast_inflight_kib.saturating_mul(1024) < a.max_datagram {
        return Err(format!(
            "--broadcast-inflight-kib {} is less than one broadcast datagram (--max-datagram {}): nothing could be sent",
            a.broadcast_inflight_kib, a.max_datagram
        )
        .into());
    }
    // Half of the half-open cap by default, so that lowering --max-half-open keeps the count trigger below
    // it (past the cap Initials are dropped, and Retry by count would never switch on).
    let retry_above = a.retry_above.unwrap_or(a.max_half_open / 2);
    if retry_above > a.max_half_open {
        return Err(format!(
            "--retry-above {retry_above} is above --max-half-open {}: Initials past the cap are dropped before Retry \
             by count could switch on; use at most {} (or 0 for never)",
            a.max_half_open, a.max_half_open
        )
        .into());
    }
    if a.max_datagram + 64 > a.max_udp_payload {
        return Err(format!(
            "--max-datagram {} does not fit --max-udp-payload {} with QUIC overhead (~64 bytes): lower one or raise the other",
            a.max_datagram, a.max_udp_payload
        )
        .into());
    }
    let mut tls =
        quic::ensure_cert(a.cert.as_deref(), a.key.as_deref(), a.data_dir.as_deref(), Some(a.listen.ip()))?;
    for n in &tls.notes {
        eprintln!("server: tls: {n}");
    }
    let (cert, key) = (tls.cert.clone(), tls.key.clone());

    // Canvas memory.
    let policy = match a.hugepages {
        HugePolicy::Auto => hugepages::Policy::Auto,
        HugePolicy::On => hugepages::Policy::HugeTlbOnly,
        HugePolicy::Off => hugepages::Policy::Small,
    };
    let mut mem = hugepages::Mapping::new(dims.len(), policy).map_err(|e| {
        format!("canvas memory: {e} (`--hugepages auto` falls back to THP, then 4 KiB pages)")
    })?;
    eprintln!("server: canvas {}x{}: {}", dims.width, dims.height, mem.report());
    // The placement log: restore what it holds into the canvas memory before anything serves it.
    let mut log = None;
    let mut resume = server::master::Resume::default();
    if let Some(dir) = &a.data_dir {
        let sync = match a.log_sync {
            LogSync::EveryTick => placelog::SyncPolicy::EveryTick,
            LogSync::Os => placelog::SyncPolicy::Os,
        };
        let t0 = std::time::Instant::now();
        let (l, r) = placelog::local::LocalLog::open(dir, dims, sync)
            .map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
        mem.as_mut()[..dims.len()].copy_from_slice(&r.pixels);
        for n in &r.notes {
            eprintln!("server: placement log: {n}");
        }
        eprintln!(
            "server: placement log {}: restored tick {} ({}, {} ticks / {} changes replayed) in {:.1} ms; serving from tick {} ({:?})",
            dir.display(),
            r.tick,
            r.snapshot_tick.map_or("no snapshot".to_string(), |t| format!("snapshot at tick {t}")),
            r.replayed,
            r.replayed_changes,
            t0.elapsed().as_secs_f64() * 1e3,
            r.next_tick,
            a.log_sync,
        );
        // The ticks replayed after the snapshot go to the workers with the first publication.
        resume = server::master::Resume { start: r.next_tick, last_change: r.last_change, history: r.tail };
        log = Some(l);
    }
    // The cluster: join the stream, load the newest snapshot into the canvas memory and apply the stream
    // after it up to its head before serving.
    let mut joined = None;
    let mut cluster_from = 0;
    if !a.cluster.is_empty() {
        let node = a.cluster_node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), a.listen)
        });
        let mut cfg = cluster::Config::new(a.cluster.clone(), node.clone());
        cfg.replicas = a.cluster_replicas;
        cfg.stream = a.cluster_stream.clone();
        cfg.snapshot_min_gap = Duration::from_secs(a.cluster_snapshot_secs) / 2;
        let mut seq = cluster::Sequencer::start(cfg)?;
        let head = seq.head_at_start();
        eprintln!(
            "server: cluster: node {node} ({:016x}) joined stream {} (R={}, head {head}) on {}",
            seq.incarnation(),
            a.cluster_stream,
            seq.replicas(),
            a.cluster.join(",")
        );
        if let Some(why) = seq.snapshot_note() {
            eprintln!("server: cluster: {why}");
        }
        let t0 = std::time::Instant::now();
        if let Some(snap) = seq.take_snapshot() {
            match placelog::format::decode_snapshot(&snap.bytes, dims) {
                Ok(d) if d.tick == snap.seq => {
                    mem.as_mut()[..dims.len()].copy_from_slice(&d.pixels);
                    cluster_from = snap.seq;
                    eprintln!(
                        "server: cluster: loaded the snapshot at stream position {} ({} bytes) in {:.1} ms",
                        snap.seq,
                        snap.bytes.len(),
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                }
                Ok(d) => eprintln!(
                    "server: cluster: warning: the stored snapshot says position {} in its metadata and {} inside: not used; applying the whole stream",
                    snap.seq, d.tick
                ),
                Err((placelog::format::SNAP_DIMS_AT, e)) => {
                    return Err(format!(
                        "cluster: the cluster's snapshot is of {e}: every node of a cluster needs the same --width/--height"
                    )
                    .into())
                }
                Err((at, e)) => eprintln!(
                    "server: cluster: warning: the stored snapshot at {} is damaged (byte {at}: {e}): not used; applying the whole stream",
                    snap.seq
                ),
            }
        }
        let first = seq.first_at_start();
        if first > cluster_from + 1 {
            return Err(format!(
                "cluster: stream {} starts at message {first} (older ones were removed) and no usable snapshot covers what came before: \
                 this node cannot rebuild the canvas (restore the {} bucket, or start a new stream with --cluster-stream)",
                a.cluster_stream,
                cluster::snapshots::bucket_name(&a.cluster_stream)
            )
            .into());
        }
        seq.read_after(cluster_from);
        joined = Some((seq, head, node, t0));
    }
    let mut canvas = Canvas::new(dims, mem)?;
    if let Some((seq, head, node, t0)) = joined.take() {
        let (at, invalid) = catch_up(
            &seq,
            &mut canvas,
            a.palette,
            cluster_from,
            head,
            Duration::from_secs(a.cluster_catch_up_secs),
        )?;
        let mut scratch = Vec::new();
        canvas.end_tick(&mut scratch);
        eprintln!(
            "server: cluster: at stream position {at} after {} messages applied after position {cluster_from}, in {:.1} ms ({invalid} invalid writes skipped); serving from tick {}",
            at - cluster_from,
            t0.elapsed().as_secs_f64() * 1e3,
            at << server::master::CLUSTER_TICK_SHIFT
        );
        let start = at << server::master::CLUSTER_TICK_SHIFT;
        resume = server::master::Resume { start, last_change: start, history: Vec::new() };
        joined = Some((seq, at, node, t0));
    }

    let stop = Arc::new(AtomicBool::new(false));
    // The first SIGINT/SIGTERM stops gracefully (no new connections, CONNECTION_CLOSE "server shutdown" to
    // every client, the last tick committed and the log synced, XDP detached, huge pages given back); a
    // second one while that runs exits at once with status 130 (every committed tick is already in the
    // log; the kernel drops the XDP link and the mappings with the process). The same signal again within
    // DUPLICATE_SIGNAL is one signal delivered twice, not a second request: `timeout` and other wrappers
    // send it to the child and then to the child's process group.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    {
        let stop = stop.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            let mut first: Option<(i32, std::time::Instant)> = None;
            for sig in signals.forever() {
                match first {
                    None => {
                        first = Some((sig, std::time::Instant::now()));
                        stop.store(true, Ordering::Release);
                    }
                    Some((s, at)) if s == sig && at.elapsed() < DUPLICATE_SIGNAL => {}
                    Some(_) => {
                        eprintln!("server: second signal while stopping: exiting now");
                        std::process::exit(130);
                    }
                }
            }
        })?;
    }

    let allow: Vec<(std::net::IpAddr, u8)> = a.allow.iter().map(|n| (n.network(), n.prefix_len())).collect();
    for v4 in [true, false] {
        let n = allow.iter().filter(|(ip, _)| ip.is_ipv4() == v4).count();
        if n > xdp_prog::MAX_ALLOW {
            let family = if v4 { "IPv4" } else { "IPv6" };
            return Err(format!("{n} {family} --allow prefixes: at most {}", xdp_prog::MAX_ALLOW).into());
        }
    }
    if !allow.is_empty() {
        let list: Vec<String> = a.allow.iter().map(|n| n.trunc().to_string()).collect();
        eprintln!(
            "server: allow: only {} may reach the port; the rest is dropped and counted",
            list.join(", ")
        );
    }
    // Backends first, so a bad address or interface fails before anything starts.
    let mut backends: Vec<Backend> = Vec::new();
    let mut program: Option<Arc<xdp_prog::XdpProgram>> = None;
    let mut xdp_queues = 0;
    let mut xdp_notes = Vec::new();
    let mut trip: Option<(Arc<AtomicU64>, std::thread::JoinHandle<()>)> = None;
    let workers;
    let listen;
    let pin_policy = a.pin.unwrap_or(if a.mode == Mode::Xdp { PinPolicy::Irq } else { PinPolicy::None });
    let mut pin_iface = "lo".to_string();
    let mut steering: Option<Arc<xdp_prog::steer::Steering>> = None;
    let mut steer_note: Option<String> = None;
    match a.mode {
        Mode::Uring => {
            workers = a.workers.unwrap_or(1);
            let ucfg = UringConfig {
                listen: a.listen,
                recv_buf: a.socket_recv_buf,
                send_buf: a.socket_send_buf,
                sq_depth: a.io_uring_sq_depth,
                buf_count: a.provided_buffers,
                gso: !a.no_gso,
                max_payload: a.max_udp_payload,
                allow: datapath::seam::Allowlist::new(allow.clone()),
                ..UringConfig::default()
            };
            datapath::backend::uring::claim_port(a.listen)?;
            for _ in 0..workers {
                backends.push(Backend::Uring(Box::new(UringSocket::bind(&ucfg)?)));
            }
            let fds: Vec<_> = backends
                .iter()
                .map(|b| match b {
                    Backend::Uring(s) => s.fd(),
                    Backend::Xdp(_) => unreachable!("uring mode"),
                })
                .collect();
            (steering, steer_note) = match a.steer {
                Steer::Hash => (None, Some("--steer hash".to_string())),
                Steer::Cid => (
                    Some(Arc::new(xdp_prog::steer::Steering::attach(&fds).map_err(|e| {
                        format!("--steer cid: {e} (use --steer hash to run without the program)")
                    })?)),
                    None,
                ),
                Steer::Auto => match xdp_prog::steer::Steering::attach(&fds) {
                    Ok(s) => (Some(Arc::new(s)), None),
                    Err(e) => {
                        eprintln!(
                            "server: warning: no reuseport steering ({e}): datagrams of a client whose address \
                             changes reach its worker through a hand-off queue"
                        );
                        (None, Some(e.to_string()))
                    }
                },
            };
            if steering.is_some() {
                eprintln!(
                    "server: reuseport program steers short-header packets to their connection's worker"
                );
            }
            let Backend::Uring(first) = &backends[0] else { unreachable!() };
            listen = first.local_addr();
            let (eff_r, eff_s) = first.effective_bufs();
            let per_worker_io = ucfg.buf_count as usize * ucfg.buf_size
                + ucfg.tx_batches * ucfg.max_payload * ucfg.max_segments;
            print_budget(
                &a,
                dims.len(),
                workers,
                a.workers_socket_bytes(workers),
                per_worker_io,
                "io buffers",
            );
            for (name, want, got) in [
                ("net.core.rmem_max", a.socket_recv_buf, eff_r),
                ("net.core.wmem_max", a.socket_send_buf, eff_s),
            ] {
                let max = read_sysctl(name).unwrap_or(0);
                // The kernel reports double the requested size when it granted it.
                if got < want {
                    eprintln!(
                        "server: warning: {name} is {max} and the socket got {got} of the {want} bytes asked; \
                         fix with `sysctl -w {name}={want}` (or run as root so SO_*BUFFORCE applies)"
                    );
                }
            }
        }
        Mode::Xdp => {
            let iface = a.iface.clone().ok_or(
                "--mode xdp needs --iface (e.g. `--iface eth1.4000`, or `--iface eth1 --vlan 4000` for native XDP on the parent)",
            )?;
            if a.listen.port() == 0 {
                return Err("--mode xdp needs a fixed --listen port (the XDP program matches it)".into());
            }
            listen = a.listen;
            let (queues, how) = datapath::netdev::rx_queues(&iface)?;
            xdp_queues = queues;
            workers = a.workers.unwrap_or(queues as usize);
            if workers > queues as usize {
                return Err(format!(
                    "{iface} has {queues} receive queue(s) ({how}) and AF_XDP needs one per worker: use -w {queues} or add queues (`ethtool -L {iface} combined {workers}`)"
                )
                .into());
            }
            if workers < queues as usize {
                eprintln!(
                    "server: warning: {iface} has {queues} receive queues and only {workers} worker(s): datagrams arriving on queues {workers}..{} fall back to the kernel (the tripwire will count them); use -w {queues}",
                    queues - 1
                );
            }
            // The tripwire holds the port first: a second server on the same port fails here, before it
            // could attach anything.
            trip = Some(tripwire(listen, stop.clone())?);
            let mode = match a.xdp_attach {
                XdpAttach::Auto => xdp_prog::AttachMode::Auto,
                XdpAttach::Native => xdp_prog::AttachMode::Native,
                XdpAttach::Generic => xdp_prog::AttachMode::Generic,
            };
            let prog = xdp_prog::XdpProgram::attach(
                iface.as_str(),
                xdp_prog::Config { port: listen.port(), vlan: a.vlan, mode, allow: allow.clone() },
            )?;
            xdp_notes.extend(prog.notes().iter().cloned());
            eprintln!(
                "server: XDP program {} attached to {iface} in {} mode{}",
                prog.prog_id(),
                prog.mode(),
                match a.vlan {
                    Some(v) if prog.vlan_metadata() =>
                        format!(", VLAN {v} matched in the frame or RX metadata"),
                    Some(v) => format!(", VLAN {v} matched in the frame"),
                    None => String::new(),
                }
            );
            for n in prog.notes() {
                eprintln!("server: xdp: {n}");
            }
            for q in 0..workers as u32 {
                let cfg = XdpConfig {
                    vlan: a.vlan,
                    zero_copy: match a.zero_copy {
                        ZeroCopyArg::Auto => ZeroCopy::Auto,
                        ZeroCopyArg::On => ZeroCopy::On,
                        ZeroCopyArg::Off => ZeroCopy::Off,
                    },
                    pages: match a.hugepages {
                        HugePolicy::Auto => UmemPages::Auto,
                        HugePolicy::On => UmemPages::HugeTlb,
                        HugePolicy::Off => UmemPages::Small,
                    },
                    frames: a.xdp_frames,
                    ring: a.xdp_ring,
                    max_payload: a.max_udp_payload,
                    ..XdpConfig::new(&iface, q, listen)
                };
                let sock = XdpSocket::bind(&cfg)?;
                for n in sock.notes() {
                    eprintln!("server: xdp: {n}");
                }
                xdp_notes.extend(sock.notes().iter().cloned());
                prog.insert_socket(q, sock.fd())?;
                backends.push(Backend::Xdp(Box::new(sock)));
            }
            let umem = a.xdp_frames as usize * xdp::FRAME_SIZE as usize;
            print_budget(&a, dims.len(), workers, 0, umem, "UMEM");
            pin_iface = iface;
            program = Some(Arc::new(prog));
        }
    }

    // Pinning: planned before any thread pins itself (the plan reads this thread's allowed CPUs).
    let plan = pin::plan(&pin_iface, workers, pin_policy)?;
    for n in &plan.notes {
        eprintln!("server: pin: {n}");
    }

    let links = (0..workers).map(|_| WorkerLink::new(a.spsc_capacity, 1024)).collect();
    let shared =
        Arc::new(Shared { links, snapshot_wanted: AtomicBool::new(false), shutdown: AtomicBool::new(false) });

    let mcfg = MasterConfig {
        batch_drain: a.master_batch_drain,
        tick,
        full_interval: a.full_broadcast_interval.max(1),
        max_dgram: a.max_datagram,
    };
    let mut master = Master::resume(canvas, mcfg, shared.clone(), resume);
    if let Some(l) = log {
        master.set_log(Box::new(l), a.snapshot_every_ticks);
    }
    let mut cluster_report = None;
    let mut caught_up = 0;
    if let Some((seq, at, node, _)) = joined {
        caught_up = at - cluster_from;
        cluster_report = Some((seq.status().clone(), node, seq.incarnation(), seq.replicas()));
        let every = (a.cluster_snapshot_secs > 0).then(|| Duration::from_secs(a.cluster_snapshot_secs));
        master.set_cluster(Box::new(seq), at, a.palette, every);
    }
    let mode_name = match a.mode {
        Mode::Uring => "uring",
        Mode::Xdp => "xdp",
    };
    let live = a.metrics_addr.map(|_| Arc::new(server::ops::live::Live::new(workers, dims, mode_name)));
    let mut metrics_thread = None;
    if let (Some(addr), Some(live)) = (a.metrics_addr, &live) {
        master.set_live(live.clone());
        let xdp_counters =
            program.clone().map(|p| Box::new(move || program_counters(&p)) as server::ops::live::CounterFn);
        let steer_counters =
            steering.clone().map(|s| Box::new(move || steer_counters(&s)) as server::ops::live::CounterFn);
        let src = server::ops::live::Sources { shared: shared.clone(), xdp_counters, steer_counters };
        let (bound, h) = server::ops::live::serve(addr, live.clone(), src, stop.clone())?;
        eprintln!("server: metrics on http://{bound}/ (/metrics, /canvas.png)");
        metrics_thread = Some(h);
    }
    let lcfg = LoopConfig {
        rx_batch: a.rx_batch,
        busy_poll: a.busy_poll,
        spin: Duration::from_micros(a.spin_us),
        idle_wait: Duration::from_micros(a.idle_wait_us),
        ..DEFAULT_LOOP
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for (w, backend) in backends.into_iter().enumerate() {
        let ecfg = EndpointConfig {
            worker: w,
            rules,
            cooldown,
            max_conns: a.max_connections_per_worker,
            retry: a.retry,
            tick_ms: tick.as_millis() as u32,
            dgram_queue: a.dgram_queue,
            broadcast_inflight: a.broadcast_inflight_kib.saturating_mul(1024),
            broadcast_queue: Duration::from_millis(a.broadcast_queue_ms),
            catchup_budget: a.catchup_budget_mib << 20,
            max_datagram: a.max_datagram,
            history_ticks: a.history_ticks,
            send_budget: a.send_budget,
            max_half_open: a.max_half_open,
            handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
            retry_above,
            retry_above_rate: a.retry_above_rate,
            source_writes_per_sec: a.source_writes_per_sec,
        };
        let qcfg = quic::server_config(&qc, &cert, &key)?;
        let (shared, stop, reports, live) = (shared.clone(), stop.clone(), reports.clone(), live.clone());
        let cpu = plan.workers.get(w).copied().flatten();
        threads.push(std::thread::Builder::new().name(format!("worker-{w}")).spawn(move || {
            if let Some(c) = cpu {
                if let Err(e) = pin::pin_current_thread(c) {
                    eprintln!("server: warning: worker {w}: {e}");
                }
            }
            let mut ep = Endpoint::new(ecfg, qcfg, shared.clone(), std::time::Instant::now());
            let (res, backend_stats, rearms, xdp) = match backend {
                Backend::Uring(mut sock) => {
                    let res = worker::run_reporting(&mut ep, sock.as_mut(), &lcfg, &stop, |ep, b| {
                        report_live(live.as_deref(), w, ep, b.stats(), None)
                    });
                    (res, sock.stats(), Some(sock.rearms()), None)
                }
                Backend::Xdp(mut sock) => {
                    let res = worker::run_reporting(&mut ep, sock.as_mut(), &lcfg, &stop, |ep, b| {
                        report_live(live.as_deref(), w, ep, b.stats(), Some(b.xdp_stats()))
                    });
                    // Let the last CONNECTION_CLOSEs leave and their frames come home.
                    sock.quiesce(Duration::from_millis(200));
                    let x = XdpWorkerReport {
                        queue: sock.queue(),
                        zero_copy: sock.zero_copy(),
                        umem_hugetlb: sock.hugetlb(),
                        stats: sock.xdp_stats(),
                        frames: sock.frame_audit(),
                    };
                    (res, sock.stats(), None, Some(x))
                }
            };
            if let Err(e) = &res {
                eprintln!("server: worker {w}: {e}");
                stop.store(true, Ordering::Release);
            }
            reports.lock().expect("reports").push(WorkerReport {
                worker: w,
                cpu,
                endpoint: ep.stats(),
                backend: backend_stats,
                rearms,
                xdp,
            });
            res
        })?);
    }
    if let Some(c) = plan.master {
        if let Err(e) = pin::pin_current_thread(c) {
            eprintln!("server: warning: master: {e}");
        }
    }
    // Every worker's quiche config has loaded the pair: a generated one is removed now, so no private key
    // outlives this process however it ends.
    let cert_shown = if tls.is_temporary() {
        "self-signed, generated for this run".to_string()
    } else {
        cert.display().to_string()
    };
    tls.forget_temporary();
    eprintln!(
        "server: listening on udp {listen} ({workers} workers, {}), ALPN canvas/1 and h3, cert {cert_shown}",
        match &program {
            Some(p) => format!("AF_XDP on {} queues 0..{} ({} XDP)", p.interface(), workers, p.mode()),
            None => format!("io_uring, GSO {}", if a.no_gso { "off" } else { "on" }),
        },
    );

    // The master runs here until a signal; it watches `stop` through `shared.shutdown`. The same thread
    // says what the cluster connection does.
    let watcher = {
        let (stop, shared) = (stop.clone(), shared.clone());
        let mut cluster_watch = cluster_report.as_ref().map(|(st, ..)| ClusterWatch::new(st.clone()));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
                n += 1;
                if n.is_multiple_of(25) {
                    if let Some(w) = &mut cluster_watch {
                        w.check();
                    }
                }
            }
            shared.shutdown.store(true, Ordering::Release);
        })
    };
    master.run(Duration::from_micros(a.master_idle_us));
    if let Some(f) = master.failure() {
        // The log refused a tick: the workers close every connection (nothing more is ACKed).
        eprintln!("server: {f}");
        stop.store(true, Ordering::Release);
    }
    let _ = watcher.join();
    let mut failed = false;
    for t in threads {
        failed |= !matches!(t.join(), Ok(Ok(())));
    }
    if let Some(h) = metrics_thread.take() {
        let _ = h.join();
    }
    // Workers have stopped: read the program's counters, then detach it (errors reported).
    let xdp_report = match program.take() {
        Some(p) => {
            let counters = program_counters(&p).into_iter().collect();
            let tripwire_packets = trip.as_ref().map(|(c, _)| c.load(Ordering::Relaxed)).unwrap_or(0);
            let r = XdpReport {
                interface: p.interface().to_string(),
                vlan: a.vlan,
                attach: p.mode().to_string(),
                vlan_from_metadata_program: p.vlan_metadata(),
                queues: xdp_queues,
                counters,
                tripwire_packets,
                notes: xdp_notes,
            };
            // The metrics thread (the only other holder) has been joined.
            match Arc::try_unwrap(p) {
                Ok(p) => {
                    if let Err(e) = p.detach() {
                        eprintln!("server: warning: {e}");
                    }
                }
                Err(p) => drop(p),
            }
            eprintln!(
                "server: xdp: redirected {} frames to AF_XDP, tripwire saw {} datagram(s)",
                r.counters.get("redirected").copied().unwrap_or(0),
                r.tripwire_packets
            );
            Some(r)
        }
        None => None,
    };
    if let Some((_, h)) = trip.take() {
        let _ = h.join();
    }
    let mut per_worker = std::mem::take(&mut *reports.lock().expect("reports"));
    per_worker.sort_by_key(|r| r.worker);
    let ms = master.stats();
    let mut t = Totals { ticks: ms.ticks, pixels_applied: ms.pixels_applied, ..Default::default() };
    let (mut applied, mut handed, mut gap) = (
        server::endpoint::WaitHistogram::default(),
        server::endpoint::WaitHistogram::default(),
        server::endpoint::WaitHistogram::default(),
    );
    for r in &per_worker {
        applied.merge(&r.endpoint.ack_applied);
        handed.merge(&r.endpoint.ack_handed);
        gap.merge(&r.endpoint.rx_gap);
        t.accepted += r.endpoint.accepted;
        t.closed += r.endpoint.closed;
        t.pixels_received += r.endpoint.pixels_received;
        t.pixels_rejected += r.endpoint.rejected();
        t.datagrams_in += r.backend.rx_datagrams;
        t.bytes_in += r.backend.rx_bytes;
        t.datagrams_out += r.backend.tx_datagrams;
        t.bytes_out += r.backend.tx_bytes;
        t.broadcast_datagrams += r.endpoint.broadcast_dgrams;
    }
    eprintln!(
        "server: stopped: {} connections accepted, {} closed, {} pixels applied, {} rejected, {} ticks, {} datagrams in / {} out",
        t.accepted, t.closed, t.pixels_applied, t.pixels_rejected, t.ticks, t.datagrams_in, t.datagrams_out
    );
    if handed.count() > 0 {
        eprintln!(
            "server: write -> ACK inside the server: applied p50 {} p99 {}, handed to quiche p50 {} p99 {} (a client's \
             write -> ACK adds quiche's sending, the network and the client)",
            applied.quantile_label(0.5),
            applied.quantile_label(0.99),
            handed.quantile_label(0.5),
            handed.quantile_label(0.99)
        );
    }
    if gap.count() > 0 {
        eprintln!(
            "server: busy worker loop, receive to receive: p50 {} p99 {} max {} ({} iterations; arrivals wait this \
             long in the socket or the RX ring)",
            gap.quantile_label(0.5),
            gap.quantile_label(0.99),
            gap.quantile_label(1.0),
            gap.count()
        );
    }
    let report = Report {
        mode: mode_name,
        kernel: datapath::netdev::kernel_release(),
        workers,
        pin: PinReport {
            policy: format!("{pin_policy:?}").to_lowercase(),
            interface: pin_iface.clone(),
            master: plan.master,
            queue_irqs: plan.queue_irqs.clone(),
            notes: plan.notes.clone(),
        },
        xdp: xdp_report,
        steering: (a.mode == Mode::Uring).then(|| SteerReport {
            mode: if steering.is_some() { "cid" } else { "hash" },
            note: steer_note,
            counters: steering.as_deref().map(steer_counters).unwrap_or_default().into_iter().collect(),
        }),
        master: ms,
        cluster: cluster_report.map(|(st, node, inc, replicas)| ClusterReport {
            node,
            incarnation: format!("{inc:016x}"),
            stream: a.cluster_stream.clone(),
            replicas,
            seq: ms.cluster_seq,
            published: st.published.load(Ordering::Relaxed),
            duplicates: st.duplicates.load(Ordering::Relaxed),
            publish_failures: st.publish_failures.load(Ordering::Relaxed),
            delivered: st.delivered.load(Ordering::Relaxed),
            corrupt: st.corrupt.load(Ordering::Relaxed),
            reader_restarts: st.reader_restarts.load(Ordering::Relaxed),
            direct_reads: st.direct_reads.load(Ordering::Relaxed),
            missing: st.missing.load(Ordering::Relaxed),
            started_from_snapshot: cluster_from,
            caught_up_messages: caught_up,
            snapshots_offered: ms.cluster_snapshots_offered,
            snapshots_stored: st.snapshots_stored.load(Ordering::Relaxed),
            snapshots_skipped: st.snapshots_skipped.load(Ordering::Relaxed),
            snapshot_failures: st.snapshot_failures.load(Ordering::Relaxed),
            snapshot_seq: st.snapshot_seq.load(Ordering::Relaxed),
            last_error: st.last_error(),
        }),
        canvas_hash: format!("{:016x}", master.canvas().hash()),
        totals: t,
        per_worker,
    };
    if let Some(p) = &a.stats_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(f) = master.failure() {
        return Err(f.to_string().into());
    }
    if failed {
        return Err("a worker failed (see above)".into());
    }
    Ok(())
}

/// The XDP program's outcome counters by short name (`redirected`, `passed_not_ip`, …); empty if unreadable.
fn steer_counters(s: &xdp_prog::steer::Steering) -> Vec<(String, u64)> {
    s.counters().map(|c| c.iter().into_iter().map(|(k, v)| (k.to_string(), v)).collect()).unwrap_or_default()
}

fn program_counters(p: &xdp_prog::XdpProgram) -> Vec<(String, u64)> {
    p.counters().map(|c| c.iter().map(|(k, v)| (k.name(), v)).collect()).unwrap_or_default()
}

/// A worker's periodic report into the live metrics (when `--metrics-addr` is on).
fn report_live(
    live: Option<&server::ops::live::Live>,
    w: usize,
    ep: &Endpoint,
    backend: BackendStats,
    xdp: Option<XdpSockStats>,
) {
    if let Some(l) = live {
        let v = server::ops::live::WorkerLive { endpoint: ep.stats(), backend, xdp, conns: ep.conn_count() };
        l.report_worker(w, v);
    }
}

/// Print what the configuration implies for memory.
fn print_budget(a: &Args, canvas: usize, workers: usize, sock: usize, per_worker_io: usize, io_name: &str) {
    let per_worker_conns = a.max_connections_per_worker * CONN_STATE_BYTES;
    let queues = workers * a.spsc_capacity * std::mem::size_of::<server::publish::PixelWrite>();
    // Beyond the budget each worker may hold one more delta (at most the canvas, 5 bytes a pixel).
    let catchup = workers * ((a.catchup_budget_mib << 20) + canvas * canvas::proto::ENTRY_LEN);
    eprintln!(
        "server: memory budget: canvas {} + socket buffers {} + {io_name} {} ({workers} x {}) + write queues {} + catch-up deltas up to {} + connection state up to {} ({} conns x ~{} KiB) = {}",
        mib(canvas),
        mib(sock),
        mib(workers * per_worker_io),
        mib(per_worker_io),
        mib(queues),
        mib(catchup),
        mib(workers * per_worker_conns),
        workers * a.max_connections_per_worker,
        CONN_STATE_BYTES / 1024,
        mib(canvas + sock + workers * per_worker_io + queues + catchup + workers * per_worker_conns),
    );
}
