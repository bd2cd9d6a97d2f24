//! `server`: the canvas server. Master on the main thread, one worker per `-w`, io_uring sockets
//! (`--mode uring`) or AF_XDP (`--mode xdp`, next milestone).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canvas::{Canvas, Cooldown, Dims, Rules};
use clap::{Parser, ValueEnum};
use datapath::backend::uring::{UringConfig, UringSocket};
use datapath::endpoint::{Endpoint, EndpointConfig, EndpointStats};
use datapath::master::{Master, MasterConfig, MasterStats, Shared, WorkerLink};
use datapath::quic::{self, QuicConfig, DEFAULT_QUIC};
use datapath::seam::{BackendStats, Datapath};
use datapath::worker::{self, LoopConfig, DEFAULT_LOOP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// io_uring UDP sockets (SO_REUSEPORT, multishot recvmsg, GSO sends).
    Uring,
    /// AF_XDP raw frames.
    Xdp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HugePolicy {
    /// 2 MiB hugetlb, else THP, else 4 KiB pages.
    Auto,
    /// Require reserved 2 MiB hugetlb pages.
    On,
    /// Plain 4 KiB pages.
    Off,
}

/// Every default below is the predecessor's constant (const_settings.rs) unless said otherwise.
#[derive(Debug, Parser)]
#[command(
    name = "server",
    version,
    about = "QUIC canvas server (r/place style): io_uring or AF_XDP datapath, quiche, one master writing the canvas"
)]
struct Args {
    /// Worker threads (one socket / NIC queue each).
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    workers: usize,
    /// Datapath.
    #[arg(long, value_enum, default_value_t = Mode::Uring)]
    mode: Mode,
    /// UDP address to serve on.
    #[arg(long, default_value = "0.0.0.0:4433")]
    listen: SocketAddr,
    /// TLS certificate (PEM). Generated self-signed when the file does not exist.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM). Generated with the certificate when absent.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Write final counters (JSON) here on SIGINT/SIGTERM.
    #[arg(long)]
    stats_json: Option<PathBuf>,

    /// Connections per worker (MAX_CONNECTIONS_PER_WORKER).
    #[arg(long, default_value_t = 65_536)]
    max_connections_per_worker: usize,
    /// SO_RCVBUF per socket in bytes (SOCKET_RECV_BUF_SIZE, 32 MiB).
    #[arg(long, default_value_t = 32 << 20)]
    socket_recv_buf: usize,
    /// SO_SNDBUF per socket in bytes (SOCKET_SEND_BUF_SIZE, 32 MiB).
    #[arg(long, default_value_t = 32 << 20)]
    socket_send_buf: usize,
    /// Capacity of each worker→master write queue (SPSC_CAPACITY).
    #[arg(long, default_value_t = 65_536)]
    spsc_capacity: usize,
    /// Writes the master drains per worker per loop (MASTER_BATCH_DRAIN).
    #[arg(long, default_value_t = 4096)]
    master_batch_drain: usize,
    /// Broadcast interval in ms (BROADCAST_INTERVAL_MS).
    #[arg(long, default_value_t = 100)]
    broadcast_interval_ms: u64,
    /// Legacy clients get the whole canvas every N ticks (FULL_BROADCAST_INTERVAL).
    #[arg(long, default_value_t = 60)]
    full_broadcast_interval: u64,
    /// io_uring submission queue entries (IO_URING_SQ_DEPTH; clamped to what the kernel allows).
    #[arg(long, default_value_t = 32_768)]
    io_uring_sq_depth: u32,
    /// Provided receive buffers per io_uring (power of two).
    #[arg(long, default_value_t = 4096)]
    provided_buffers: u16,
    /// Disable UDP GSO on sends.
    #[arg(long)]
    no_gso: bool,

    /// Canvas width.
    #[arg(long, default_value_t = canvas::grid::DEFAULT_WIDTH)]
    width: u16,
    /// Canvas height.
    #[arg(long, default_value_t = canvas::grid::DEFAULT_HEIGHT)]
    height: u16,
    /// Palette size: colors >= this are rejected.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=256))]
    palette: u16,
    /// Per-connection write cooldown in seconds (0 = off, the benchmarking default).
    #[arg(long, default_value_t = 0)]
    cooldown_secs: u64,
    /// The r/place rule: one pixel per connection per 300 s (same as --cooldown-secs 300).
    #[arg(long, conflicts_with = "cooldown_secs")]
    rplace_cooldown: bool,
    /// Where the canvas memory comes from.
    #[arg(long, value_enum, default_value_t = HugePolicy::Auto)]
    hugepages: HugePolicy,

    /// QUIC idle timeout in ms (quiche's default 0 = never; 30 s after RFC 9308 §3.2).
    #[arg(long, default_value_t = DEFAULT_QUIC.idle_timeout.as_millis() as u64)]
    idle_timeout_ms: u64,
    /// Largest UDP payload (1350 fits a 1400-byte MTU).
    #[arg(long, default_value_t = DEFAULT_QUIC.max_udp_payload)]
    max_udp_payload: usize,
    /// Largest broadcast datagram payload (the predecessor's 1200).
    #[arg(long, default_value_t = canvas::legacy::MAX_DATAGRAM)]
    max_datagram: usize,
    /// quiche DATAGRAM send-queue entries per connection.
    #[arg(long, default_value_t = DEFAULT_QUIC.dgram_queue)]
    dgram_queue: usize,
    /// Ticks of broadcast backlog per connection before it is dropped (clients then resync).
    #[arg(long, default_value_t = 64)]
    outbox_ticks: usize,
    /// Changing ticks kept per worker for catch-up (older gaps get a snapshot).
    #[arg(long, default_value_t = 128)]
    history_ticks: usize,
    /// Packets per connection per flush pass.
    #[arg(long, default_value_t = 64)]
    send_budget: usize,
    /// Validate client addresses with a stateless Retry before accepting.
    #[arg(long)]
    retry: bool,

    /// Datagrams taken per receive call.
    #[arg(long, default_value_t = DEFAULT_LOOP.rx_batch)]
    rx_batch: usize,
    /// Never sleep (dedicated cores on bare metal).
    #[arg(long)]
    busy_poll: bool,
    /// Keep polling this long after activity before sleeping, in µs.
    #[arg(long, default_value_t = DEFAULT_LOOP.spin.as_micros() as u64)]
    spin_us: u64,
    /// Longest idle sleep in µs (bounds publication latency when idle).
    #[arg(long, default_value_t = DEFAULT_LOOP.idle_wait.as_micros() as u64)]
    idle_wait_us: u64,
    /// Master's sleep when a drain found no writes, in µs (bounds how long a write waits in its queue; a
    /// full queue of --spsc-capacity writes at 1 M writes/s lasts 65 ms).
    #[arg(long, default_value_t = 1000)]
    master_idle_us: u64,
}

/// Estimated quiche state per connection, measured on this kind of machine (DESIGN.md: ~25 KB idle).
const CONN_STATE_BYTES: usize = 25 * 1024;

#[derive(serde::Serialize)]
struct WorkerReport {
    worker: usize,
    endpoint: EndpointStats,
    backend: BackendStats,
    rearms: u64,
}

#[derive(serde::Serialize)]
struct Report {
    mode: &'static str,
    workers: usize,
    master: MasterStats,
    canvas_hash: String,
    totals: Totals,
    per_worker: Vec<WorkerReport>,
}

#[derive(Default, serde::Serialize)]
struct Totals {
    accepted: u64,
    closed: u64,
    pixels_received: u64,
    pixels_applied: u64,
    pixels_rejected: u64,
    ticks: u64,
    datagrams_in: u64,
    bytes_in: u64,
    datagrams_out: u64,
    bytes_out: u64,
    broadcast_datagrams: u64,
}

fn read_sysctl(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/"))).ok()?.trim().parse().ok()
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.mode == Mode::Xdp {
        return Err(
            "--mode xdp is not built yet (AF_XDP datapath is the next milestone): use --mode uring".into()
        );
    }
    if a.workers == 0 {
        return Err("-w/--workers must be at least 1".into());
    }
    if !a.provided_buffers.is_power_of_two() {
        return Err(format!("--provided-buffers must be a power of two, got {}", a.provided_buffers).into());
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
    if a.max_datagram + 64 > a.max_udp_payload {
        return Err(format!(
            "--max-datagram {} does not fit --max-udp-payload {} with QUIC overhead (~64 bytes): lower one or raise the other",
            a.max_datagram, a.max_udp_payload
        )
        .into());
    }
    let (cert, key) = quic::ensure_cert(a.cert.as_deref(), a.key.as_deref(), Some(a.listen.ip()))?;

    // Canvas memory.
    let policy = match a.hugepages {
        HugePolicy::Auto => hugepages::Policy::Auto,
        HugePolicy::On => hugepages::Policy::HugeTlbOnly,
        HugePolicy::Off => hugepages::Policy::Small,
    };
    let mem = hugepages::Mapping::new(dims.len(), policy).map_err(|e| {
        format!("canvas memory: {e} (`--hugepages auto` falls back to THP, then 4 KiB pages)")
    })?;
    eprintln!("server: canvas {}x{}: {}", dims.width, dims.height, mem.report());
    let canvas = Canvas::new(dims, mem)?;

    // Sockets first, so a bad address fails before anything starts.
    let ucfg = UringConfig {
        listen: a.listen,
        recv_buf: a.socket_recv_buf,
        send_buf: a.socket_send_buf,
        sq_depth: a.io_uring_sq_depth,
        buf_count: a.provided_buffers,
        gso: !a.no_gso,
        max_payload: a.max_udp_payload,
        ..UringConfig::default()
    };
    let mut sockets = Vec::with_capacity(a.workers);
    for _ in 0..a.workers {
        sockets.push(UringSocket::bind(&ucfg)?);
    }
    let listen = sockets[0].local_addr();

    // Memory budget and sysctl checks.
    let (eff_r, eff_s) = sockets[0].effective_bufs();
    let per_worker_io =
        ucfg.buf_count as usize * ucfg.buf_size + ucfg.tx_batches * ucfg.max_payload * ucfg.max_segments;
    let per_worker_conns = a.max_connections_per_worker * CONN_STATE_BYTES;
    let queues = a.workers * a.spsc_capacity * std::mem::size_of::<datapath::publish::PixelWrite>();
    let sock = a.workers * (a.socket_recv_buf + a.socket_send_buf);
    eprintln!(
        "server: memory budget: canvas {} + socket buffers {} ({} workers x ({} rx + {} tx)) + io buffers {} + write queues {} + connection state up to {} ({} conns x ~{} KiB) = {}",
        mib(dims.len()),
        mib(sock),
        a.workers,
        mib(a.socket_recv_buf),
        mib(a.socket_send_buf),
        mib(a.workers * per_worker_io),
        mib(queues),
        mib(a.workers * per_worker_conns),
        a.workers * a.max_connections_per_worker,
        CONN_STATE_BYTES / 1024,
        mib(dims.len() + sock + a.workers * per_worker_io + queues + a.workers * per_worker_conns),
    );
    for (name, want, got) in
        [("net.core.rmem_max", a.socket_recv_buf, eff_r), ("net.core.wmem_max", a.socket_send_buf, eff_s)]
    {
        let max = read_sysctl(name).unwrap_or(0);
        // The kernel reports double the requested size when it granted it.
        if got < want {
            eprintln!(
                "server: warning: {name} is {max} and the socket got {got} of the {want} bytes asked; \
                 fix with `sysctl -w {name}={want}` (or run as root so SO_*BUFFORCE applies)"
            );
        }
    }

    let links = (0..a.workers).map(|_| WorkerLink::new(a.spsc_capacity, 1024)).collect();
    let shared =
        Arc::new(Shared { links, snapshot_wanted: AtomicBool::new(false), shutdown: AtomicBool::new(false) });
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let mcfg = MasterConfig {
        batch_drain: a.master_batch_drain,
        tick,
        full_interval: a.full_broadcast_interval.max(1),
        max_dgram: a.max_datagram,
    };
    let mut master = Master::new(canvas, mcfg, shared.clone());
    let lcfg = LoopConfig {
        rx_batch: a.rx_batch,
        busy_poll: a.busy_poll,
        spin: Duration::from_micros(a.spin_us),
        idle_wait: Duration::from_micros(a.idle_wait_us),
        ..DEFAULT_LOOP
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for (w, mut sock) in sockets.into_iter().enumerate() {
        let ecfg = EndpointConfig {
            worker: w,
            rules,
            cooldown,
            max_conns: a.max_connections_per_worker,
            retry: a.retry,
            tick_ms: tick.as_millis() as u32,
            full_interval: mcfg.full_interval,
            dgram_queue: a.dgram_queue,
            outbox_ticks: a.outbox_ticks,
            history_ticks: a.history_ticks,
            send_budget: a.send_budget,
        };
        let qcfg = quic::server_config(&qc, &cert, &key)?;
        let (shared, stop, reports) = (shared.clone(), stop.clone(), reports.clone());
        threads.push(std::thread::Builder::new().name(format!("worker-{w}")).spawn(move || {
            let mut ep = Endpoint::new(ecfg, qcfg, shared.clone(), std::time::Instant::now());
            let res = worker::run(&mut ep, &mut sock, &lcfg, &stop);
            if let Err(e) = &res {
                eprintln!("server: worker {w}: {e}");
                stop.store(true, Ordering::Release);
            }
            reports.lock().expect("reports").push(WorkerReport {
                worker: w,
                endpoint: ep.stats(),
                backend: sock.stats(),
                rearms: sock.rearms(),
            });
            res
        })?);
    }
    eprintln!(
        "server: listening on udp {listen} ({} workers, io_uring, GSO {}), ALPN canvas/1 and h3, cert {}",
        a.workers,
        if ucfg.gso { "on" } else { "off" },
        cert.display()
    );

    // The master runs here until a signal; it watches `stop` through `shared.shutdown`.
    let watcher = {
        let (stop, shared) = (stop.clone(), shared.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            shared.shutdown.store(true, Ordering::Release);
        })
    };
    master.run(Duration::from_micros(a.master_idle_us));
    let _ = watcher.join();
    let mut failed = false;
    for t in threads {
        failed |= !matches!(t.join(), Ok(Ok(())));
    }
    let mut per_worker = std::mem::take(&mut *reports.lock().expect("reports"));
    per_worker.sort_by_key(|r| r.worker);
    let ms = master.stats();
    let mut t = Totals { ticks: ms.ticks, pixels_applied: ms.pixels_applied, ..Default::default() };
    for r in &per_worker {
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
    let report = Report {
        mode: "uring",
        workers: a.workers,
        master: ms,
        canvas_hash: format!("{:016x}", master.canvas().hash()),
        totals: t,
        per_worker,
    };
    if let Some(p) = &a.stats_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if failed {
        return Err("a worker failed (see above)".into());
    }
    Ok(())
}
