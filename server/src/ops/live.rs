//! Live observability (`--metrics-addr`): Prometheus text metrics, the canvas as a PNG, and a small page that
//! shows both, served by one HTTP thread.
//!
//! Nothing here is on the packet path. Workers copy their counters into their slot of [`Live`] every
//! [`REPORT_EVERY`](crate::worker::REPORT_EVERY) (a mutex no one else holds for longer than a copy); the master records each tick's
//! duration and copies the canvas into [`Live`] once a second; the HTTP thread reads those copies, the
//! per-worker queue depths (lock-free lengths of the bounded queues) and, in xdp mode, the XDP program's
//! per-CPU counters.
//!
//! Routes: `/metrics` (Prometheus text exposition 0.0.4), `/metrics.json` (the page's counters),
//! `/canvas.png` (palette indices mapped to colours), `/` (the page).

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canvas::Dims;

use crate::endpoint::{EndpointStats, WaitHistogram, WAIT_BUCKETS_MS};
use crate::link::Shared;
use crate::master::{MasterStats, TickObserver};
use datapath::backend::xdp::XdpSockStats;
use datapath::seam::BackendStats;

/// How often a worker publishes its counters.
/// How often the master copies the canvas for `/canvas.png`.
pub const CANVAS_EVERY: Duration = Duration::from_secs(1);
/// Tick duration histogram bucket bounds, microseconds.
pub const TICK_BUCKETS_US: [u64; 11] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// One worker's latest counters.
#[derive(Clone, Debug, Default)]
pub struct WorkerLive {
    /// Endpoint counters.
    pub endpoint: EndpointStats,
    /// Backend counters.
    pub backend: BackendStats,
    /// AF_XDP counters (xdp mode).
    pub xdp: Option<XdpSockStats>,
    /// Open connections.
    pub conns: usize,
}

/// The master's latest counters, tick durations and canvas copy.
#[derive(Debug)]
pub struct MasterLive {
    /// Counters.
    pub stats: MasterStats,
    /// Tick durations: counts per bucket of [`TICK_BUCKETS_US`] plus +Inf.
    pub tick_buckets: [u64; TICK_BUCKETS_US.len() + 1],
    /// Sum of tick durations, microseconds.
    pub tick_sum_us: u64,
    /// The canvas (palette indices), copied at most once per [`CANVAS_EVERY`].
    pub canvas: Vec<u8>,
    /// The tick the copy was taken at.
    pub canvas_tick: u64,
    /// When it was taken.
    pub canvas_at: Option<Instant>,
    /// The newest tick.
    pub tick: u64,
    /// The canvas hash at `tick` (compare across restarts and nodes).
    pub hash: u64,
}

/// Everything the HTTP thread serves.
#[derive(Debug)]
pub struct Live {
    /// One slot per worker.
    pub workers: Vec<Mutex<WorkerLive>>,
    /// The master's.
    pub master: Mutex<MasterLive>,
    /// Canvas size.
    pub dims: Dims,
    /// "uring" or "xdp".
    pub mode: &'static str,
    /// Server start.
    pub started: Instant,
}

impl Live {
    /// Empty slots for `workers` workers and a canvas of `dims`.
    pub fn new(workers: usize, dims: Dims, mode: &'static str) -> Live {
        Live {
            workers: (0..workers).map(|_| Mutex::new(WorkerLive::default())).collect(),
            master: Mutex::new(MasterLive {
                stats: MasterStats::default(),
                tick_buckets: [0; TICK_BUCKETS_US.len() + 1],
                tick_sum_us: 0,
                canvas: vec![0; dims.len()],
                canvas_tick: 0,
                canvas_at: None,
                tick: 0,
                hash: 0,
            }),
            dims,
            mode,
            started: Instant::now(),
        }
    }

    /// Record a worker's counters.
    pub fn report_worker(&self, w: usize, v: WorkerLive) {
        if let Some(slot) = self.workers.get(w) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = v;
        }
    }
}

impl TickObserver for Live {
    /// Record one tick (its duration and the master's counters); `pixels` are copied when the last copy is
    /// older than [`CANVAS_EVERY`].
    fn record_tick(&self, stats: MasterStats, tick_us: u64, tick: u64, hash: u64, pixels: &[u8]) {
        let mut m = self.master.lock().unwrap_or_else(|e| e.into_inner());
        m.stats = stats;
        m.tick = tick;
        m.hash = hash;
        let b = TICK_BUCKETS_US.iter().position(|&ub| tick_us <= ub).unwrap_or(TICK_BUCKETS_US.len());
        m.tick_buckets[b] += 1;
        m.tick_sum_us += tick_us;
        if m.canvas_at.is_none_or(|t| t.elapsed() >= CANVAS_EVERY) {
            m.canvas.copy_from_slice(pixels);
            m.canvas_tick = tick;
            m.canvas_at = Some(Instant::now());
        }
    }
}

/// Reads the XDP program's outcome counters as (name, value).
pub type CounterFn = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// Extra sources the HTTP thread reads.
pub struct Sources {
    /// The worker queues (depths).
    pub shared: Arc<Shared>,
    /// XDP program counters, when in xdp mode.
    pub xdp_counters: Option<CounterFn>,
    /// The io_uring mode's reuseport steering program's counters (when it is attached).
    pub steer_counters: Option<CounterFn>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("xdp_counters", &self.xdp_counters.is_some())
            .field("steer_counters", &self.steer_counters.is_some())
            .finish()
    }
}

/// The r/place 2022 palette for indices 0..32; other indices get distinct generated colours.
pub fn color(i: u8) -> [u8; 3] {
    const P: [u32; 32] = [
        0xFFFFFF, 0x6D001A, 0xBE0039, 0xFF4500, 0xFFA800, 0xFFD635, 0xFFF8B8, 0x00A368, 0x00CC78, 0x7EED56,
        0x00756F, 0x009EAA, 0x00CCC0, 0x2450A4, 0x3690EA, 0x51E9F4, 0x493AC1, 0x6A5CFF, 0x94B3FF, 0x811E9F,
        0xB44AC0, 0xE4ABFF, 0xDE107F, 0xFF3881, 0xFF99AA, 0x6D482F, 0x9C6926, 0xFFB470, 0x000000, 0x515252,
        0x898D90, 0xD4D7D9,
    ];
    if (i as usize) < P.len() {
        let c = P[i as usize];
        return [(c >> 16) as u8, (c >> 8) as u8, c as u8];
    }
    // Golden-ratio hue walk at fixed saturation/value.
    let h = (f64::from(i) * 0.618_033_988_75).fract() * 6.0;
    let x = (1.0 - ((h % 2.0) - 1.0).abs()) * 200.0;
    let (r, g, b) = match h as u32 {
        0 => (200.0, x, 40.0),
        1 => (x, 200.0, 40.0),
        2 => (40.0, 200.0, x),
        3 => (40.0, x, 200.0),
        4 => (x, 40.0, 200.0),
        _ => (200.0, 40.0, x),
    };
    [r as u8, g as u8, b as u8]
}

/// A PNG encoder for a canvas of `dims` as palette indices (8-bit indexed, this palette, fast compression):
/// the live page's image and `server replay`'s frames.
pub fn canvas_encoder<W: io::Write>(w: W, dims: Dims) -> png::Encoder<'static, W> {
    let mut e = png::Encoder::new(w, u32::from(dims.width), u32::from(dims.height));
    e.set_color(png::ColorType::Indexed);
    e.set_depth(png::BitDepth::Eight);
    e.set_palette((0..=255u8).flat_map(color).collect::<Vec<u8>>());
    e.set_compression(png::Compression::Fast);
    e
}

/// Encode palette indices as an indexed PNG.
pub fn canvas_png(dims: Dims, pixels: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(pixels.len() / 4);
    {
        let mut w = canvas_encoder(&mut out, dims).write_header().map_err(io::Error::other)?;
        w.write_image_data(pixels).map_err(io::Error::other)?;
    }
    Ok(out)
}

/// The newest tick and the canvas hash at it.
fn state(live: &Live) -> (u64, u64) {
    let m = live.master.lock().unwrap_or_else(|e| e.into_inner());
    (m.tick, m.hash)
}

fn workers(live: &Live) -> Vec<WorkerLive> {
    live.workers.iter().map(|w| w.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
}

/// The master's counters without its canvas copy: (stats, tick buckets, tick sum µs, canvas tick).
fn master(live: &Live) -> (MasterStats, [u64; TICK_BUCKETS_US.len() + 1], u64, u64) {
    let m = live.master.lock().unwrap_or_else(|e| e.into_inner());
    (m.stats, m.tick_buckets, m.tick_sum_us, m.canvas_tick)
}

/// Workers' endpoint and backend counters summed.
fn sum_workers(ws: &[WorkerLive]) -> (EndpointStats, BackendStats) {
    let mut e = EndpointStats::default();
    let mut b = BackendStats::default();
    for w in ws {
        e.accepted += w.endpoint.accepted;
        e.closed += w.endpoint.closed;
        e.pixels_received += w.endpoint.pixels_received;
        e.pixels_applied += w.endpoint.pixels_applied;
        e.broadcast_dgrams += w.endpoint.broadcast_dgrams;
        for (sum, h) in [
            (&mut e.ack_applied, &w.endpoint.ack_applied),
            (&mut e.ack_handed, &w.endpoint.ack_handed),
            (&mut e.rx_gap, &w.endpoint.rx_gap),
        ] {
            sum.merge(h);
        }
        b.rx_datagrams += w.backend.rx_datagrams;
        b.tx_datagrams += w.backend.tx_datagrams;
        b.rx_bytes += w.backend.rx_bytes;
        b.tx_bytes += w.backend.tx_bytes;
    }
    (e, b)
}

/// One Prometheus histogram family of [`WaitHistogram`]s, one series per label set (`""` for none).
fn wait_family(s: &mut String, name: &str, help: &str, series: &[(&str, WaitHistogram)]) {
    let _ = writeln!(s, "# HELP canvas_{name} {help}\n# TYPE canvas_{name} histogram");
    for (labels, h) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, ub) in WAIT_BUCKETS_MS.iter().enumerate() {
            cum += h.buckets[i];
            let _ = writeln!(s, "canvas_{name}_bucket{{{labels}{sep}le=\"{}\"}} {cum}", *ub as f64 / 1e3);
        }
        cum += h.buckets[WAIT_BUCKETS_MS.len()];
        let _ = writeln!(s, "canvas_{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{l}}}") };
        let _ = writeln!(s, "canvas_{name}_sum{} {}", braces(labels), h.sum_us as f64 / 1e6);
        let _ = writeln!(s, "canvas_{name}_count{} {cum}", braces(labels));
    }
}

/// The Prometheus text exposition.
pub fn prometheus(live: &Live, src: &Sources) -> String {
    let ws = workers(live);
    let (stats, tick_buckets, tick_sum_us, _) = master(live);
    let (summed, _) = sum_workers(&ws);
    let (ack_applied, ack_handed) = (summed.ack_applied, summed.ack_handed);
    let mut s = String::with_capacity(8192);
    let mut family = |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, u64)>| {
        let _ = writeln!(s, "# HELP canvas_{name} {help}\n# TYPE canvas_{name} {kind}");
        for (labels, v) in values {
            let _ = writeln!(s, "canvas_{name}{labels} {v}");
        }
    };
    let per = |f: fn(&WorkerLive) -> u64| -> Vec<(String, u64)> {
        ws.iter().enumerate().map(|(i, w)| (format!("{{worker=\"{i}\"}}"), f(w))).collect()
    };
    family(
        "up_seconds",
        "gauge",
        "Seconds since the server started.",
        &mut std::iter::once((String::new(), live.started.elapsed().as_secs())),
    );
    family("connections", "gauge", "Open connections.", &mut per(|w| w.conns as u64).into_iter());
    family(
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        &mut per(|w| w.endpoint.accepted).into_iter(),
    );
    family(
        "connections_closed_total",
        "counter",
        "Connections closed.",
        &mut per(|w| w.endpoint.closed).into_iter(),
    );
    family(
        "early_1rtt_held_total",
        "counter",
        "1-RTT packets that arrived before their connection's handshake completed (the client's Finished lost or overtaken), held for it.",
        &mut per(|w| w.endpoint.early_held).into_iter(),
    );
    family(
        "early_1rtt_dropped_total",
        "counter",
        "1-RTT packets that arrived before their handshake completed and could not be held (4 per connection, 1,024 or 1 MiB per worker).",
        &mut per(|w| w.endpoint.early_dropped).into_iter(),
    );
    family(
        "connection_migrations_total",
        "counter",
        "Packets of open connections from a new client address (NAT rebinding).",
        &mut per(|w| w.endpoint.migrations).into_iter(),
    );
    family(
        "handoffs_total",
        "counter",
        "Datagrams that arrived at this worker for another worker's connection, handed to it.",
        &mut per(|w| w.endpoint.handed_off).into_iter(),
    );
    family(
        "handoffs_dropped_total",
        "counter",
        "Of those, dropped because the owner's queue was full.",
        &mut per(|w| w.endpoint.handoff_dropped).into_iter(),
    );
    family(
        "packets_received_total",
        "counter",
        "UDP datagrams received.",
        &mut per(|w| w.backend.rx_datagrams).into_iter(),
    );
    family(
        "packets_sent_total",
        "counter",
        "UDP datagrams sent.",
        &mut per(|w| w.backend.tx_datagrams).into_iter(),
    );
    family(
        "bytes_received_total",
        "counter",
        "UDP payload bytes received.",
        &mut per(|w| w.backend.rx_bytes).into_iter(),
    );
    family(
        "bytes_sent_total",
        "counter",
        "UDP payload bytes sent.",
        &mut per(|w| w.backend.tx_bytes).into_iter(),
    );
    family(
        "packets_dropped_total",
        "counter",
        "Datagrams the backend dropped.",
        &mut per(|w| w.backend.rx_dropped + w.backend.tx_dropped).into_iter(),
    );
    family(
        "packets_not_allowed_total",
        "counter",
        "Datagrams from sources outside --allow, dropped before the endpoint (uring mode; xdp mode: \
         xdp_frames_total{outcome=\"dropped_not_allowed\"}).",
        &mut per(|w| w.backend.rx_not_allowed).into_iter(),
    );
    family(
        "pixels_received_total",
        "counter",
        "Pixel writes received.",
        &mut per(|w| w.endpoint.pixels_received).into_iter(),
    );
    family(
        "pixels_applied_total",
        "counter",
        "Pixel writes acknowledged as applied.",
        &mut per(|w| w.endpoint.pixels_applied).into_iter(),
    );
    family(
        "pixels_rejected_total",
        "counter",
        "Pixel writes rejected (any reason).",
        &mut per(|w| w.endpoint.rejected()).into_iter(),
    );
    family(
        "broadcast_datagrams_total",
        "counter",
        "Broadcast DATAGRAM frames queued.",
        &mut per(|w| w.endpoint.broadcast_dgrams).into_iter(),
    );
    family(
        "broadcast_waves_total",
        "counter",
        "Broadcast waves (fewer than publications when a fan-out pass takes longer than a tick).",
        &mut per(|w| w.endpoint.waves).into_iter(),
    );
    family(
        "publications_total",
        "counter",
        "Publications (ticks) received from the master.",
        &mut per(|w| w.endpoint.publications).into_iter(),
    );
    family(
        "broadcast_catchups_total",
        "counter",
        "Broadcast pulls that took a coalesced delta of several ticks.",
        &mut per(|w| w.endpoint.catchups).into_iter(),
    );
    family(
        "broadcast_catchup_lost_total",
        "counter",
        "Broadcast pulls from a tick the history no longer reaches.",
        &mut per(|w| w.endpoint.catchup_lost).into_iter(),
    );
    family(
        "broadcast_catchup_shared_total",
        "counter",
        "Broadcast pulls past --catchup-budget-mib that shared a coalesced delta already alive.",
        &mut per(|w| w.endpoint.catchup_shared).into_iter(),
    );
    family(
        "broadcast_catchup_deferred_total",
        "counter",
        "Broadcast pulls past --catchup-budget-mib that waited a tick (no live delta covered them).",
        &mut per(|w| w.endpoint.catchup_deferred).into_iter(),
    );
    family(
        "broadcast_window_held_total",
        "counter",
        "Times feeding a connection's broadcast stopped at a window below --broadcast-inflight-kib (see --broadcast-queue-ms).",
        &mut per(|w| w.endpoint.window_held).into_iter(),
    );
    family(
        "broadcast_window_cuts_total",
        "counter",
        "Broadcast windows halved because the connection's path queued more than --broadcast-queue-ms.",
        &mut per(|w| w.endpoint.window_cuts).into_iter(),
    );
    let depths: Vec<(String, u64)> = src
        .shared
        .links
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            [
                (format!("{{worker=\"{i}\",queue=\"writes\"}}"), l.writes.len() as u64),
                (format!("{{worker=\"{i}\",queue=\"publications\"}}"), l.publications.len() as u64),
            ]
        })
        .collect();
    family("queue_depth", "gauge", "Entries waiting in the worker/master queues.", &mut depths.into_iter());
    let dropped: Vec<(String, u64)> = src
        .shared
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("{{worker=\"{i}\"}}"), l.publications_dropped.load(Ordering::Relaxed)))
        .collect();
    family(
        "publications_dropped_total",
        "counter",
        "Ticks a worker was too far behind to receive.",
        &mut dropped.into_iter(),
    );
    if ws.iter().any(|w| w.xdp.is_some()) {
        let x = |f: fn(&XdpSockStats) -> u64| -> Vec<(String, u64)> {
            ws.iter()
                .enumerate()
                .filter_map(|(i, w)| w.xdp.map(|x| (format!("{{worker=\"{i}\"}}"), f(&x))))
                .collect()
        };
        family(
            "xsk_rx_dropped_total",
            "counter",
            "AF_XDP kernel drops (no fill frame and others).",
            &mut x(|x| x.kernel_rx_dropped).into_iter(),
        );
        family(
            "xsk_rx_ring_full_total",
            "counter",
            "AF_XDP RX ring full.",
            &mut x(|x| x.kernel_rx_ring_full).into_iter(),
        );
        family(
            "xsk_fill_ring_empty_total",
            "counter",
            "AF_XDP fill ring empty.",
            &mut x(|x| x.kernel_fill_ring_empty).into_iter(),
        );
        family(
            "xsk_tx_no_neighbour_total",
            "counter",
            "Datagrams for peers never heard from.",
            &mut x(|x| x.tx_no_neighbour).into_iter(),
        );
        family(
            "xsk_tx_pool_empty_total",
            "counter",
            "Times no UMEM frame was free to send.",
            &mut x(|x| x.tx_pool_empty).into_iter(),
        );
    }
    if let Some(f) = &src.xdp_counters {
        let v: Vec<(String, u64)> =
            f().into_iter().map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v)).collect();
        family("xdp_frames_total", "counter", "XDP program outcomes, summed over CPUs.", &mut v.into_iter());
    }
    if let Some(f) = &src.steer_counters {
        let v: Vec<(String, u64)> =
            f().into_iter().map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v)).collect();
        family(
            "steer_packets_total",
            "counter",
            "Reuseport steering program (uring mode): by_cid, moved (steered where the 4-tuple hash would \
             not have), hash_*.",
            &mut v.into_iter(),
        );
    }
    family("ticks_total", "counter", "Ticks published.", &mut std::iter::once((String::new(), stats.ticks)));
    let (tick, hash) = state(live);
    family("canvas_tick", "gauge", "Newest tick (its number).", &mut std::iter::once((String::new(), tick)));
    // A 64-bit hash does not fit a float sample exactly: two exact 32-bit halves.
    family(
        "canvas_hash_high32",
        "gauge",
        "Canvas hash at canvas_tick, high 32 bits.",
        &mut std::iter::once((String::new(), hash >> 32)),
    );
    family(
        "canvas_hash_low32",
        "gauge",
        "Canvas hash at canvas_tick, low 32 bits.",
        &mut std::iter::once((String::new(), hash & 0xffff_ffff)),
    );
    family(
        "log_snapshots_total",
        "counter",
        "Snapshots written to the placement log (--data-dir).",
        &mut std::iter::once((String::new(), stats.log_snapshots)),
    );
    family(
        "master_pixels_applied_total",
        "counter",
        "Writes the master applied.",
        &mut std::iter::once((String::new(), stats.pixels_applied)),
    );
    family(
        "pixels_changed_total",
        "counter",
        "Pixels whose colour changed.",
        &mut std::iter::once((String::new(), stats.pixels_changed)),
    );
    let _ = writeln!(s, "# HELP canvas_tick_duration_seconds Time to close and encode one tick.\n# TYPE canvas_tick_duration_seconds histogram");
    let mut cum = 0;
    for (i, ub) in TICK_BUCKETS_US.iter().enumerate() {
        cum += tick_buckets[i];
        let _ = writeln!(s, "canvas_tick_duration_seconds_bucket{{le=\"{}\"}} {cum}", *ub as f64 / 1e6);
    }
    cum += tick_buckets[TICK_BUCKETS_US.len()];
    let _ = writeln!(s, "canvas_tick_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
    let _ = writeln!(s, "canvas_tick_duration_seconds_sum {}", tick_sum_us as f64 / 1e6);
    let _ = writeln!(s, "canvas_tick_duration_seconds_count {cum}");
    wait_family(
        &mut s,
        "write_ack_wait_seconds",
        "Write received -> its ACK encoded (stage applied) and handed to quiche (stage handed, per batch of \
         answers, from its oldest write).",
        &[("stage=\"applied\"", ack_applied), ("stage=\"handed\"", ack_handed)],
    );
    wait_family(
        &mut s,
        "worker_rx_gap_seconds",
        "Busy worker loop iterations, receive to receive: how long arrivals wait in the socket or RX ring.",
        &[("", summed.rx_gap)],
    );
    s
}

fn json(live: &Live) -> String {
    let ws = workers(live);
    let (e, b) = sum_workers(&ws);
    let (stats, _, _, canvas_tick) = master(live);
    let (tick, hash) = state(live);
    serde_json::json!({
        "tick": tick,
        "canvas_hash": format!("{hash:016x}"),
        "mode": live.mode,
        "uptime_s": live.started.elapsed().as_secs_f64(),
        "connections": ws.iter().map(|w| w.conns).sum::<usize>(),
        "accepted": e.accepted,
        "pixels_received": e.pixels_received,
        "pixels_applied": stats.pixels_applied,
        "pixels_changed": stats.pixels_changed,
        "ticks": stats.ticks,
        "canvas_tick": canvas_tick,
        "cluster_seq": stats.cluster_seq,
        "cluster_snapshots_offered": stats.cluster_snapshots_offered,
        "datagrams_in": b.rx_datagrams,
        "datagrams_out": b.tx_datagrams,
        "bytes_out": b.tx_bytes,
        "broadcast_datagrams": e.broadcast_dgrams,
        "workers": ws.len(),
    })
    .to_string()
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>canvas server</title>
<style>body{font-family:sans-serif;margin:1em;background:#222;color:#eee}
table{border-collapse:collapse}td{padding:2px 10px;border-bottom:1px solid #444}
td.v{text-align:right;font-family:monospace}#c{image-rendering:pixelated;border:1px solid #555;max-width:90vmin}</style>
</head><body>
<h1>canvas server <span id="mode"></span></h1>
<div style="display:flex;gap:2em;align-items:flex-start">
<canvas id="c" width="1" height="1"></canvas>
<table id="counters"></table>
</div>
<p>canvas checksum <span id="canvas-sum">-</span> (non-white pixels <span id="canvas-set">-</span>, tick <span id="canvas-tick">-</span>), updated <span id="updated">never</span></p>
<script>
const names = ["connections","accepted","pixels_received","pixels_applied","pixels_changed","ticks",
  "datagrams_in","datagrams_out","bytes_out","broadcast_datagrams","uptime_s"];
async function refresh() {
  const m = await (await fetch("metrics.json", {cache: "no-store"})).json();
  document.getElementById("mode").textContent = "(" + m.mode + ", " + m.workers + " workers)";
  const t = document.getElementById("counters");
  t.innerHTML = names.map(n => `<tr><td>${n}</td><td class="v" id="m-${n}">${typeof m[n] === "number" && !Number.isInteger(m[n]) ? m[n].toFixed(1) : m[n]}</td></tr>`).join("");
  document.getElementById("canvas-tick").textContent = m.canvas_tick;
  const img = new Image();
  img.src = "canvas.png?t=" + Date.now();
  await img.decode();
  const c = document.getElementById("c");
  c.width = img.width; c.height = img.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, set = 0;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i] * 65536 + d[i + 1] * 256 + d[i + 2];
    if (v !== 0xFFFFFF) { set++; sum = (sum + v * ((i >> 2) % 65521 + 1)) % 4294967291; }
  }
  document.getElementById("canvas-sum").textContent = sum;
  document.getElementById("canvas-set").textContent = set;
  document.getElementById("updated").textContent = new Date().toISOString();
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"#;

/// Serve on `addr` until `stop`; returns the bound address and the thread.
pub fn serve(
    addr: SocketAddr,
    live: Arc<Live>,
    src: Sources,
    stop: Arc<AtomicBool>,
) -> io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        io::Error::new(io::ErrorKind::AddrInUse, format!("--metrics-addr {addr}: cannot listen: {e}"))
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let h = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            let req = match server.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(_) => break,
            };
            let path = req.url().split('?').next().unwrap_or("/").to_string();
            let hdr = |v: &str| tiny_http::Header::from_bytes("Content-Type", v).expect("valid header");
            let resp = match path.as_str() {
                "/metrics" => tiny_http::Response::from_string(prometheus(&live, &src))
                    .with_header(hdr("text/plain; version=0.0.4; charset=utf-8")),
                "/metrics.json" => {
                    tiny_http::Response::from_string(json(&live)).with_header(hdr("application/json"))
                }
                "/canvas.png" => {
                    let pixels = live.master.lock().unwrap_or_else(|e| e.into_inner()).canvas.clone();
                    match canvas_png(live.dims, &pixels) {
                        Ok(png) => tiny_http::Response::from_data(png).with_header(hdr("image/png")),
                        Err(e) => tiny_http::Response::from_string(e.to_string()).with_status_code(500),
                    }
                }
                "/" | "/index.html" => {
                    tiny_http::Response::from_string(PAGE).with_header(hdr("text/html; charset=utf-8"))
                }
                _ => tiny_http::Response::from_string("not found").with_status_code(404),
            };
            let _ = req.respond(resp.with_header(hdr_cache()));
        }
    })?;
    Ok((bound, h))
}

fn hdr_cache() -> tiny_http::Header {
    tiny_http::Header::from_bytes("Cache-Control", "no-store").expect("valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_dimensions_and_palette() {
        let dims = Dims { width: 7, height: 3 };
        let px: Vec<u8> = (0..21).map(|i| (i * 13) as u8).collect();
        let png = canvas_png(dims, &px).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 3));
        assert_eq!(&buf[..21], &px[..], "indexed pixels survive");
        assert_eq!(color(0), [255, 255, 255]);
        assert_eq!(color(28), [0, 0, 0]);
    }

    #[test]
    fn tick_histogram_is_cumulative() {
        let live = Live::new(1, Dims { width: 2, height: 2 }, "uring");
        for us in [10, 60, 60, 3_000, 1_000_000] {
            live.record_tick(MasterStats::default(), us, 1, 7, &[1; 4]);
        }
        let shared = Arc::new(Shared {
            links: vec![crate::link::WorkerLink::new(4, 4)],
            snapshot_wanted: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let text = prometheus(&live, &Sources { shared, xdp_counters: None, steer_counters: None });
        assert!(text.contains("canvas_tick_duration_seconds_bucket{le=\"0.00005\"} 1"), "{text}");
        assert!(text.contains("canvas_tick_duration_seconds_bucket{le=\"0.0001\"} 3"), "{text}");
        assert!(text.contains("canvas_tick_duration_seconds_bucket{le=\"+Inf\"} 5"), "{text}");
        assert!(text.contains("canvas_tick_duration_seconds_count 5"), "{text}");
        assert!(text.contains("canvas_hash_low32 7\n") && text.contains("canvas_hash_high32 0\n"), "{text}");
        assert!(text.contains("canvas_tick 1\n"), "{text}");
        let j: serde_json::Value = serde_json::from_str(&json(&live)).unwrap();
        assert_eq!((j["tick"].as_u64(), j["canvas_hash"].as_str()), (Some(1), Some("0000000000000007")));
        assert!(text.contains("canvas_queue_depth{worker=\"0\",queue=\"writes\"} 0"), "{text}");
        assert_eq!(live.master.lock().unwrap().canvas, vec![1; 4], "canvas copied on the first tick");
    }
}
