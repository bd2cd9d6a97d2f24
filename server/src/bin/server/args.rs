//! The server's command line: every tuning constant of the predecessor is a flag with that constant as its
//! default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use datapath::backend::xdp;
use datapath::pin::PinPolicy;
use server::quic::DEFAULT_QUIC;
use server::worker::DEFAULT_LOOP;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// io_uring UDP sockets (SO_REUSEPORT, multishot recvmsg, GSO sends).
    Uring,
    /// AF_XDP raw frames.
    Xdp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Steer {
    /// cid when the program loads, else hash (with a warning).
    Auto,
    /// The reuseport program, or fail.
    Cid,
    /// The kernel's 4-tuple hash; packets of other workers' connections are handed over.
    Hash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum XdpAttach {
    /// Native (driver) mode, else generic.
    Auto,
    /// Native only (needed for zero-copy).
    Native,
    /// Generic (skb) mode only: any interface, VLAN devices included.
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ZeroCopyArg {
    /// Zero-copy when the driver has it, else copy mode.
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogSync {
    /// fdatasync each tick that changed something before it is published: every ACKed write survives a
    /// crash, kill -9 and a power cut.
    EveryTick,
    /// Written before the tick is published, synced by the kernel: every ACKed write survives a crash or
    /// kill -9 of the server; a power cut can lose the last seconds.
    Os,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum HugePolicy {
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
    about = "QUIC canvas server (r/place style): io_uring or AF_XDP datapath, quiche, one master writing the canvas",
    after_help = "Subcommand: `server doctor [--mode uring|xdp] [--iface IF] [--vlan ID] [-w N] [--listen ADDR] [--json] ...` \
                  checks whether this box is ready to run the server with those options and prints the command that \
                  fixes each finding (exit 1 on a blocker); see `server doctor --help`. \
                  `server replay --data-dir DIR [--at TICK] [--png F] [--frames DIR] [--apng F] [--every N]` rebuilds \
                  the canvas at any tick from the placement log and renders its history; see `server replay --help`."
)]
pub(crate) struct Args {
    /// Worker threads, one socket each (uring: default 1; xdp: one per NIC queue by default, each serving
    /// the queue of its index).
    #[arg(short = 'w', long = "workers", value_parser = usize_in(1, 1024))]
    pub(crate) workers: Option<usize>,
    /// Datapath.
    #[arg(long, value_enum, default_value_t = Mode::Uring)]
    pub(crate) mode: Mode,
    /// UDP address to serve on.
    #[arg(long, default_value = "0.0.0.0:4433")]
    pub(crate) listen: SocketAddr,
    /// TLS certificate (PEM). Generated self-signed when the file does not exist.
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// TLS private key (PEM). Generated with the certificate when absent.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Write final counters (JSON) here on SIGINT/SIGTERM.
    #[arg(long)]
    pub(crate) stats_json: Option<PathBuf>,

    /// Connections per worker (MAX_CONNECTIONS_PER_WORKER).
    #[arg(long, default_value_t = 65_536, value_parser = usize_in(1, 1 << 22))]
    pub(crate) max_connections_per_worker: usize,
    /// SO_RCVBUF per socket in bytes (SOCKET_RECV_BUF_SIZE, 32 MiB).
    #[arg(long, default_value_t = 32 << 20, value_parser = usize_in(4096, i32::MAX as usize))]
    pub(crate) socket_recv_buf: usize,
    /// SO_SNDBUF per socket in bytes (SOCKET_SEND_BUF_SIZE, 32 MiB).
    #[arg(long, default_value_t = 32 << 20, value_parser = usize_in(4096, i32::MAX as usize))]
    pub(crate) socket_send_buf: usize,
    /// Capacity of each worker→master write queue (SPSC_CAPACITY).
    #[arg(long, default_value_t = 65_536, value_parser = usize_in(1, 1 << 26))]
    pub(crate) spsc_capacity: usize,
    /// Writes the master drains per worker per loop (MASTER_BATCH_DRAIN).
    #[arg(long, default_value_t = 4096, value_parser = usize_in(1, 1 << 26))]
    pub(crate) master_batch_drain: usize,
    /// Broadcast interval in ms (BROADCAST_INTERVAL_MS).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub(crate) broadcast_interval_ms: u64,
    /// Legacy clients get the whole canvas every N ticks (FULL_BROADCAST_INTERVAL).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) full_broadcast_interval: u64,
    /// io_uring submission queue entries (IO_URING_SQ_DEPTH; clamped to what the kernel allows).
    #[arg(long, default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(1..=32_768))]
    pub(crate) io_uring_sq_depth: u32,
    /// Provided receive buffers per io_uring (power of two).
    #[arg(long, default_value_t = 4096)]
    pub(crate) provided_buffers: u16,
    /// Disable UDP GSO on sends.
    #[arg(long)]
    pub(crate) no_gso: bool,
    /// uring: how datagrams find their worker's socket. cid: a reuseport BPF program sends each
    /// short-header packet to the worker its connection id names (a client whose address changes stays
    /// on its worker); hash: the kernel's 4-tuple hash, and a worker hands a packet that reached it for
    /// another worker's connection over (a queue hop). auto: cid, else hash with a warning (no BPF
    /// privilege, kernel refused).
    #[arg(long, value_enum, default_value_t = Steer::Auto)]
    pub(crate) steer: Steer,

    /// Canvas width.
    #[arg(long, default_value_t = canvas::grid::DEFAULT_WIDTH, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) width: u16,
    /// Canvas height.
    #[arg(long, default_value_t = canvas::grid::DEFAULT_HEIGHT, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) height: u16,
    /// Palette size: colors >= this are rejected.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) palette: u16,
    /// Writes per second one source address may make through one worker, over all its connections (a
    /// token bucket holding one second's worth): past it, writes get REJECT (cooldown, with the wait).
    /// Stops a client from getting around --cooldown-secs with many connections. 0 = no limit.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub(crate) source_writes_per_sec: u32,
    /// Per-connection write cooldown in seconds (0 = off, the benchmarking default).
    #[arg(long, default_value_t = 0)]
    pub(crate) cooldown_secs: u64,
    /// The r/place rule: one pixel per connection per 300 s (same as --cooldown-secs 300).
    #[arg(long, conflicts_with = "cooldown_secs")]
    pub(crate) rplace_cooldown: bool,
    /// Where the canvas (and, in xdp mode, UMEM) memory comes from.
    #[arg(long, value_enum, default_value_t = HugePolicy::Auto)]
    pub(crate) hugepages: HugePolicy,

    /// xdp: the interface to serve on (e.g. `eth1.4000` for generic XDP on the VLAN device, or `eth1` with
    /// `--vlan 4000` for native XDP on the parent).
    #[arg(long)]
    pub(crate) iface: Option<String>,
    /// xdp: the VLAN carried on `--iface` (the program matches it, in the frame or in RX metadata; sent
    /// frames are tagged with it). Leave unset on a VLAN device or an untagged network.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    pub(crate) vlan: Option<u16>,
    /// xdp: how to attach the XDP program.
    #[arg(long, value_enum, default_value_t = XdpAttach::Auto)]
    pub(crate) xdp_attach: XdpAttach,
    /// xdp: AF_XDP zero-copy.
    #[arg(long, value_enum, default_value_t = ZeroCopyArg::Auto)]
    pub(crate) zero_copy: ZeroCopyArg,
    /// Pin each worker next to its NIC queue's IRQ core (irq), on that core's SMT sibling (sibling), or not
    /// at all (none). Default: irq in xdp mode, none in uring mode (sockets have no queue).
    #[arg(long, value_enum)]
    pub(crate) pin: Option<PinPolicy>,
    /// xdp: UMEM frames (2 KiB each) per socket.
    #[arg(long, default_value_t = xdp::DEFAULT_FRAMES, value_parser = clap::value_parser!(u32).range(64..=(1 << 24)))]
    pub(crate) xdp_frames: u32,
    /// xdp: entries of each AF_XDP ring (fill, completion, RX, TX).
    #[arg(long, default_value_t = xdp::DEFAULT_RING)]
    pub(crate) xdp_ring: u32,

    /// Keep the canvas here: every tick is committed to a placement log before it is published (so before
    /// any write in it is ACKed) and the canvas is restored from it at start. Without it the canvas lives
    /// only in memory.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// With --data-dir: when a committed tick reaches the disk.
    #[arg(long, value_enum, default_value_t = LogSync::EveryTick, requires = "data_dir")]
    pub(crate) log_sync: LogSync,
    /// With --data-dir: snapshot the canvas every this many ticks (bounds the replay at restart; 0: never).
    #[arg(long, default_value_t = 600, requires = "data_dir")]
    pub(crate) snapshot_every_ticks: u64,

    /// Serve live metrics here (HTTP): Prometheus text at /metrics, the canvas at /canvas.png, a live page
    /// at /. E.g. `127.0.0.1:9100` (port 0 picks a free one; the address is printed).
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,

    /// QUIC idle timeout in ms (quiche's default 0 = never; 30 s after RFC 9308 §3.2).
    #[arg(long, default_value_t = DEFAULT_QUIC.idle_timeout.as_millis() as u64)]
    pub(crate) idle_timeout_ms: u64,
    /// Largest UDP payload (1350 fits a 1400-byte MTU).
    #[arg(long, default_value_t = DEFAULT_QUIC.max_udp_payload, value_parser = usize_in(1200, 65_527))]
    pub(crate) max_udp_payload: usize,
    /// Largest broadcast datagram payload (the predecessor's 1200).
    #[arg(long, default_value_t = canvas::legacy::MAX_DATAGRAM, value_parser = usize_in(16, 65_463))]
    pub(crate) max_datagram: usize,
    /// Broadcast bytes (KiB) a connection may have unacknowledged before it pulls more: past it a slow
    /// client gets coalesced deltas later instead of a queue of stale ticks.
    #[arg(long, default_value_t = server::endpoint::DEFAULT_BROADCAST_INFLIGHT / 1024)]
    pub(crate) broadcast_inflight_kib: usize,
    /// Queueing delay (ms; smoothed RTT above the path's minimum) that each connection's broadcast
    /// window steers by: it starts at two datagrams, halves (not below two) while the path queues more,
    /// grows up to --broadcast-inflight-kib while it does not. 0: no window, --broadcast-inflight-kib
    /// only.
    #[arg(long, default_value_t = server::endpoint::DEFAULT_BROADCAST_QUEUE.as_millis() as u64)]
    pub(crate) broadcast_queue_ms: u64,
    /// Coalesced catch-up deltas (MiB per worker) that connections behind the broadcast may hold at once:
    /// past it a pull shares a delta already alive or waits a tick, so memory under overload stays bounded.
    #[arg(long, default_value_t = server::endpoint::DEFAULT_CATCHUP_BUDGET >> 20, value_parser = usize_in(1, 1 << 20))]
    pub(crate) catchup_budget_mib: usize,
    /// quiche DATAGRAM send-queue entries per connection.
    #[arg(long, default_value_t = DEFAULT_QUIC.dgram_queue, value_parser = usize_in(1, 65_536))]
    pub(crate) dgram_queue: usize,
    /// Changing ticks kept per worker for catch-up, at most (also bounded to as many entries as the canvas
    /// has pixels); a connection or SYNC older than that gets a snapshot.
    #[arg(long, default_value_t = 1024, value_parser = usize_in(1, 1 << 20))]
    pub(crate) history_ticks: usize,
    /// Packets per connection per flush pass.
    #[arg(long, default_value_t = 64, value_parser = usize_in(1, 65_536))]
    pub(crate) send_budget: usize,
    /// Handshakes in progress per worker, at most: further Initials are dropped until some complete (the
    /// clients retransmit), so a flood of spoofed Initials cannot fill the connection table.
    #[arg(long, default_value_t = server::endpoint::DEFAULT_MAX_HALF_OPEN, value_parser = usize_in(1, 1 << 22))]
    pub(crate) max_half_open: usize,
    /// A handshake not complete this long (ms) after the client's first Initial is abandoned.
    #[arg(long, default_value_t = server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub(crate) handshake_timeout_ms: u64,
    /// Only these sources may reach the port (repeatable; IPv4 or IPv6 CIDR, e.g. `10.0.1.0/24`,
    /// `2001:db8::/32`, or a bare address): everything else is dropped and counted, in the XDP program in
    /// xdp mode (`dropped_not_allowed`; XDP runs before netfilter, so host firewall rules do not protect
    /// the port there) and before quiche in uring mode (`rx_not_allowed`). Default: every source.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) allow: Vec<ipnet::IpNet>,
    /// Join a cluster: several servers share one canvas through one NATS JetStream stream
    /// (`nats://HOST:PORT`, comma-separated or repeated). Every write is ordered by the stream and ACKed
    /// once it came back from it and was applied; a node that cannot reach NATS stops taking writes
    /// (REJECT busy) until it can. Not with --data-dir (the stream is the log).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub(crate) cluster: Vec<String>,
    /// With --cluster: this node's name (default: the host name and --listen).
    #[arg(long)]
    pub(crate) cluster_node: Option<String>,
    /// With --cluster: the stream's replicas when this node creates it (JetStream needs that many servers).
    #[arg(long, default_value_t = 3, value_parser = usize_in(1, 5))]
    pub(crate) cluster_replicas: usize,
    /// With --cluster: the stream's name (one stream per canvas).
    #[arg(long, default_value = "CANVAS")]
    pub(crate) cluster_stream: String,
    /// With --cluster: how long to wait at start to catch up with the stream before serving, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) cluster_catch_up_secs: u64,
    /// With --cluster: offer a snapshot of the canvas to the cluster's snapshot bucket (a JetStream object
    /// store, `<stream>_SNAPSHOTS`) every this many seconds, so that a node joining later loads it and
    /// applies only the stream after it; a node skips its turn when the bucket's snapshot is younger than
    /// half this (nodes take turns). 0: never store one (joining nodes still load what is there).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub(crate) cluster_snapshot_secs: u64,
    /// Hand the port over deliberately: when another canvas server holds --listen's port, send it SIGTERM
    /// (its graceful stop: CONNECTION_CLOSE to its clients, its log flushed, XDP detached), wait for it
    /// to exit, then start (with the same --data-dir it resumes the canvas; `client --reconnect` clients
    /// come back and resume from their ticks). Refused when a process holding the port is not a canvas
    /// server. Without it a port in use is an error naming the pid that holds it.
    #[arg(long)]
    pub(crate) take_over: bool,
    /// With --take-over: how long to wait for the old server to exit after SIGTERM, in seconds (it is
    /// never killed: past this the new server gives up and the old one keeps the port).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) take_over_timeout_secs: u64,
    /// Validate client addresses with a stateless Retry before accepting.
    #[arg(long)]
    pub(crate) retry: bool,
    /// Without --retry: switch stateless Retry on by itself while more than this many handshakes are in
    /// progress on a worker, and off again below half of it (0: never). Default: half of --max-half-open
    /// (8192); at most --max-half-open.
    #[arg(long, value_parser = usize_in(0, 1 << 22))]
    pub(crate) retry_above: Option<usize>,
    /// Without --retry: also switch stateless Retry on by itself while new handshakes arrive at more than
    /// this many per second on a worker (one-second windows), and off again below half of it (0: never).
    #[arg(long, default_value_t = server::endpoint::DEFAULT_RETRY_ABOVE_RATE,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub(crate) retry_above_rate: u32,

    /// Datagrams taken per receive call.
    #[arg(long, default_value_t = DEFAULT_LOOP.rx_batch, value_parser = usize_in(1, 65_536))]
    pub(crate) rx_batch: usize,
    /// Never sleep (dedicated cores on bare metal).
    #[arg(long)]
    pub(crate) busy_poll: bool,
    /// Keep polling this long after activity before sleeping, in µs.
    #[arg(long, default_value_t = DEFAULT_LOOP.spin.as_micros() as u64)]
    pub(crate) spin_us: u64,
    /// Longest idle sleep in µs (bounds publication latency when idle).
    #[arg(long, default_value_t = DEFAULT_LOOP.idle_wait.as_micros() as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) idle_wait_us: u64,
    /// Master's sleep when a drain found no writes, in µs (bounds how long a write waits in its queue; a
    /// full queue of --spsc-capacity writes at 1 M writes/s lasts 65 ms).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) master_idle_us: u64,
}

/// A CIDR (`10.0.1.0/24`) or a bare address (a /32 or /128).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>().or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(
        |_| format!("{s:?} is not an IPv4 or IPv6 address or CIDR (e.g. 10.0.1.0/24, 2001:db8::/32)"),
    )
}

/// A clap parser for a usize in `lo..=hi` whose error states the range.
fn usize_in(lo: usize, hi: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| match s.parse::<usize>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in {lo}..={hi}")),
        Err(e) => Err(format!("{e}; expected a whole number in {lo}..={hi}")),
    }
}

impl Args {
    pub(crate) fn workers_socket_bytes(&self, workers: usize) -> usize {
        workers * (self.socket_recv_buf + self.socket_send_buf)
    }
}
