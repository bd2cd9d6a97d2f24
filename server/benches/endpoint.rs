//! The endpoint's hot path over the in-memory backend, with real quiche clients (`server::sim`).
//!
//! Groups (each builds its own simulated system when it first runs, outside every timed region, and gets
//! every client through its handshake and initial snapshot before measuring):
//!
//! - `ingest`: N clients each queue one WRITE, and `Sim::round` runs (master tick every round) until every
//!   write is ACKed. Wall time per write, including the clients' quiche work and the network model.
//! - `server_cpu_per_pixel`: the same workload, driven by a round loop of our own that times only the
//!   server half of the round (`Sim::serve`): socket exchange, `Endpoint::on_datagram` through
//!   `MemSocket::recv`, the master's drain and tick, `poll_publications`, `on_timers` and the flush loop.
//!   The master ticks in a round where it drained writes (never on idle rounds), so each iteration is one
//!   tick whose diff is broadcast to every client; the per-pixel cost includes that fan-out.
//! - `server_cpu_per_broadcast_datagram`: ~100 ready clients; per iteration the master applies 1000
//!   changed pixels (pushed straight into the worker's write queue, drained and ticked outside the timed
//!   region), then the timed region is the worker's `poll_publications` + `on_timers` + flush until
//!   `!has_work` (`sim::pump`), i.e. queueing 5 DIFF_PARTs per client and sealing them into packets. The clients then
//!   consume everything (untimed) so flow and congestion control never stall the next iteration.
//!
//! At the end one line per group gives ns per element from the bench's own totals (warm-up included), so
//! the figures are visible with `--quick` too. The summary also shows the broadcast cost including the
//! server's processing of the clients' ACK packets (untimed in the criterion figure).
//!
//! The client side is driven here, not by `SimClient` (its `process` is private): after the sim is ready we
//! speak canvas/1 on each client's quiche connection directly (control stream 0, DATAGRAMs into the replica).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use canvas::proto::{self, ClientMsg, FrameReader, ServerMsg};
use canvas::{Cooldown, Dims, Pixel, Rules};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use datapath::backend::mem::NetConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server::endpoint::{EndpointConfig, DEFAULT_BROADCAST_INFLIGHT};
use server::master::MasterConfig;
use server::publish::PixelWrite;
use server::quic::{self, DEFAULT_QUIC};
use server::sim::{self, Sim, SimConfig};

const DIMS: Dims = Dims { width: 1000, height: 1000 };
/// Clients in every group.
const CLIENTS: usize = 100;
/// Changed pixels per broadcast iteration: 5 DIFF_PARTs of at most 1200 bytes.
const BROADCAST_PIXELS: usize = 1000;
/// Bound on rounds waiting for one iteration's effects (a stuck bench fails instead of hanging).
const MAX_ROUNDS: u64 = 200_000;

/// Periodic snapshots off: in the bench a tick is a round, not 100 ms, so a 1 MB snapshot every 60 ticks
/// would be charged to a handful of writes. Snapshots are benchmarked in the canvas bench.
const NO_PERIODIC_SNAPSHOT: u64 = u64::MAX;

fn config(rounds_per_tick: u64) -> SimConfig {
    SimConfig {
        workers: 1,
        clients: CLIENTS,
        net: NetConfig { loss: 0.0, reorder: 0.0, seed: 1 },
        rounds_per_tick,
        endpoint: EndpointConfig {
            worker: 0,
            rules: Rules { dims: DIMS, palette: 256 },
            cooldown: Cooldown::default(),
            max_conns: 65536,
            retry: false,
            tick_ms: 100,
            dgram_queue: DEFAULT_QUIC.dgram_queue,
            broadcast_inflight: DEFAULT_BROADCAST_INFLIGHT,
            // The broadcast window runs (its `path_stats()` per visit is part of what is measured) but
            // never sees a queue: under callgrind or on a loaded box a pass takes long enough to read as
            // one, which would cut windows and make the timed pass ACK-clocked.
            broadcast_queue: Duration::from_secs(3600),
            catchup_budget: server::endpoint::DEFAULT_CATCHUP_BUDGET,
            max_datagram: canvas::legacy::MAX_DATAGRAM,
            history_ticks: 128,
            send_budget: 64,
            max_half_open: server::endpoint::DEFAULT_MAX_HALF_OPEN,
            handshake_timeout: server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT,
            retry_above: server::endpoint::DEFAULT_RETRY_ABOVE,
            retry_above_rate: server::endpoint::DEFAULT_RETRY_ABOVE_RATE,
            source_writes_per_sec: 0,
        },
        master: MasterConfig {
            batch_drain: 4096,
            tick: Duration::from_millis(100),
            full_interval: NO_PERIODIC_SNAPSHOT,
            max_dgram: canvas::legacy::MAX_DATAGRAM,
        },
        quic: DEFAULT_QUIC,
        write_queue: 65536,
    }
}

fn cert() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static CERT: OnceLock<(std::path::PathBuf, std::path::PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let tls = quic::ensure_cert(None, None, None, None).expect("self-signed certificate");
        let pair = (tls.cert.clone(), tls.key.clone());
        // Every bench iteration loads it: kept (a static is never dropped anyway) in its 0700 directory.
        std::mem::forget(tls);
        pair
    })
}

/// A sim whose clients are all established, hold a snapshot, and have processed the SYNC reply up to its
/// SYNCED (so their control streams are frame-aligned), with nothing in flight.
fn ready_sim(rounds_per_tick: u64) -> Sim {
    let (c, k) = cert();
    let mut sim = Sim::new(config(rounds_per_tick), c, k);
    assert!(sim.run_until(Duration::from_secs(60), Sim::all_ready), "handshakes and initial snapshots");
    let quiet = |s: &Sim| {
        s.clients.iter().all(|c| !c.replica.sync_outstanding())
            && s.net.in_flight() == 0
            && s.workers.iter().all(|(e, _)| !e.has_work())
    };
    assert!(sim.run_until(Duration::from_secs(30), quiet), "SYNC replies complete");
    assert_eq!(sim.workers[0].0.conn_count(), CLIENTS);
    sim
}

fn random_pixel(r: &mut SmallRng) -> Pixel {
    Pixel { x: r.random_range(0..DIMS.width), y: r.random_range(0..DIMS.height), color: r.random() }
}

/// Our own totals, for the summary line per group.
#[derive(Default)]
struct Tally {
    time: Duration,
    elements: u64,
    iterations: u64,
    rounds: u64,
}

impl Tally {
    fn ns_per(&self) -> f64 {
        self.time.as_nanos() as f64 / self.elements.max(1) as f64
    }
}

#[derive(Default)]
struct Summary {
    ingest: Tally,
    per_pixel: Tally,
    broadcast: Tally,
    /// Server time of the broadcast iterations' consume rounds (the clients' ACK packets, timers).
    broadcast_acks: Duration,
    broadcast_packets: u64,
    broadcast_paced: u64,
    per_pixel_broadcast_dgrams: u64,
    /// AES-128-GCM seal samples: (packet bytes, time, iterations).
    aead: Vec<(usize, Duration, u64)>,
}

/// A ready sim driven round by round, with the server side timed and the clients driven directly.
struct Driver {
    sim: Sim,
    readers: Vec<FrameReader>,
    /// Control-stream bytes each client still has to hand to quiche.
    out: Vec<Vec<u8>>,
    acked: u64,
    sent: u64,
    next_id: u32,
    buf: Vec<u8>,
    rng: SmallRng,
}

impl Driver {
    fn new(rounds_per_tick: u64) -> Self {
        let sim = ready_sim(rounds_per_tick);
        let n = sim.clients.len();
        Self {
            sim,
            readers: (0..n).map(|_| FrameReader::new()).collect(),
            out: vec![Vec::new(); n],
            acked: 0,
            sent: 0,
            next_id: 0,
            buf: vec![0; 64 * 1024],
            rng: SmallRng::seed_from_u64(42),
        }
    }

    /// Queue one WRITE of a random pixel on every client.
    fn write_all(&mut self) {
        for out in &mut self.out {
            let pixel = random_pixel(&mut self.rng);
            proto::encode_client(&ClientMsg::Write { id: self.next_id, pixel }, out);
            self.next_id = self.next_id.wrapping_add(1);
            self.sent += 1;
        }
    }

    /// The server half of `Sim::round` ([`Sim::serve`]); returns the time spent in it. The master ticks when `tick` says so
    /// given the number of writes it just drained.
    fn server(&mut self, tick: impl FnOnce(usize) -> bool) -> Duration {
        self.sim.net.step();
        let t0 = Instant::now();
        self.sim.serve(t0, tick);
        t0.elapsed()
    }

    /// The client half: receive, read DATAGRAMs into the replica and control messages off stream 0, send
    /// queued WRITEs, transmit. Untimed.
    fn clients(&mut self) {
        let Self { sim, readers, out, acked, buf, .. } = self;
        sim.net.step();
        let now = Instant::now();
        for ((c, reader), out) in sim.clients.iter_mut().zip(readers).zip(out) {
            while let Some(mut p) = sim.net.take(c.addr) {
                let _ = c.q.recv(&mut p.data, quiche::RecvInfo { from: p.from, to: c.addr });
            }
            if c.q.timeout_instant().is_some_and(|t| t <= now) {
                c.q.on_timeout();
            }
            while let Ok(n) = c.q.dgram_recv(buf) {
                c.replica.on_datagram(&buf[..n], now).expect("valid server datagram");
            }
            while let Ok((n, _)) = c.q.stream_recv(0, buf) {
                reader.push(&buf[..n]);
            }
            while let Some(f) = reader.pop().expect("framing") {
                match proto::decode_server(f).expect("valid server message") {
                    ServerMsg::Ack { tick, .. } => {
                        *acked += 1;
                        c.replica.note_tick(tick, now);
                    }
                    ServerMsg::Reject { reason, .. } => panic!("write rejected: {reason:?}"),
                    m => c.replica.on_message(&m, now).expect("replica accepts server message"),
                }
            }
            if !out.is_empty() {
                if let Ok(n) = c.q.stream_send(0, out, false) {
                    out.drain(..n);
                }
            }
            while let Ok((n, info)) = c.q.send(buf) {
                sim.net.send(c.addr, info.to, buf[..n].to_vec());
            }
        }
    }

    fn replicas_at_master_tick(&self) -> bool {
        let t = self.sim.master.tick();
        self.sim.clients.iter().all(|c| c.replica.tick() == Some(t))
    }
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g
}

/// a. Wall time of the whole system per write, through `Sim::round` (tick every round).
fn ingest(c: &mut Criterion, s: &mut Summary) {
    let mut sim: Option<(Sim, SmallRng)> = None;
    let mut g = configure(c, "ingest");
    g.throughput(Throughput::Elements(CLIENTS as u64));
    g.bench_function("sim_round_write_to_ack", |b| {
        let (sim, rng) = sim.get_or_insert_with(|| (ready_sim(1), SmallRng::seed_from_u64(7)));
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                for c in sim.clients.iter_mut() {
                    c.write(random_pixel(rng));
                }
                let mut rounds = 0;
                while sim.clients.iter().any(|c| c.acked + c.rejected < c.sent) {
                    sim.round();
                    rounds += 1;
                    assert!(rounds < MAX_ROUNDS, "writes not acknowledged");
                }
                s.ingest.rounds += rounds;
            }
            let el = t0.elapsed();
            s.ingest.time += el;
            s.ingest.elements += iters * CLIENTS as u64;
            s.ingest.iterations += iters;
            el
        })
    });
    g.finish();
    if let Some((sim, _)) = sim {
        assert!(sim.clients.iter().all(|c| c.rejected == 0), "no write was refused");
    }
}

/// a'. Server CPU per write: the same workload, with only the server side timed.
fn server_cpu_per_pixel(c: &mut Criterion, s: &mut Summary) {
    let mut d: Option<Driver> = None;
    let mut g = configure(c, "server_cpu_per_pixel");
    g.throughput(Throughput::Elements(CLIENTS as u64));
    g.bench_function("write_recv_apply_tick_ack_broadcast", |b| {
        let d = d.get_or_insert_with(|| Driver::new(u64::MAX));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let before = d.sim.workers[0].0.stats();
            for _ in 0..iters {
                d.write_all();
                let mut rounds = 0;
                while d.acked < d.sent {
                    total += d.server(|drained| drained > 0);
                    d.clients();
                    rounds += 1;
                    assert!(rounds < MAX_ROUNDS, "writes not acknowledged");
                }
                s.per_pixel.rounds += rounds;
            }
            let after = d.sim.workers[0].0.stats();
            assert_eq!(after.pixels_applied - before.pixels_applied, iters * CLIENTS as u64);
            s.per_pixel_broadcast_dgrams += after.broadcast_dgrams - before.broadcast_dgrams;
            s.per_pixel.time += total;
            s.per_pixel.elements += iters * CLIENTS as u64;
            s.per_pixel.iterations += iters;
            total
        })
    });
    g.finish();
}

/// One broadcast tick of [`BROADCAST_PIXELS`] distinct pixels: the server's fan-out pass (timed, returned
/// with the datagrams it queued and the packets it produced, paced ones apart), then, untimed, the clients
/// take it all in and acknowledge and the server processes their packets (returns those rounds' server
/// time as well).
struct BroadcastTick {
    pass: Duration,
    dgrams: u64,
    packets: u64,
    paced: u64,
    acks: Duration,
    rounds: u64,
}

fn broadcast_tick(d: &mut Driver) -> BroadcastTick {
    // The tick: 1000 distinct pixels, each set to a color it does not have.
    let px = d.sim.master.canvas().pixels();
    let idx = rand::seq::index::sample(&mut d.rng, DIMS.len(), BROADCAST_PIXELS);
    let writes: Vec<PixelWrite> = idx
        .into_iter()
        .map(|i| PixelWrite { index: i as u32, color: px[i].wrapping_add(d.rng.random_range(1..=255)) })
        .collect();
    for w in writes {
        d.sim.shared.links[0].writes.push(w).expect("write queue has room");
    }
    assert_eq!(d.sim.master.drain(), BROADCAST_PIXELS);
    d.sim.master.end_tick();
    let (ep, sock) = &mut d.sim.workers[0];
    let before = ep.stats();
    let t0 = Instant::now();
    sim::pump(ep, sock, t0);
    let pass = t0.elapsed();
    let after = ep.stats();
    sock.exchange(&mut d.sim.net);
    // Untimed: the clients take it all in and acknowledge; the server processes their packets.
    d.clients();
    let mut rounds = 1;
    let mut acks = Duration::ZERO;
    while !d.replicas_at_master_tick() || d.sim.net.in_flight() > 0 {
        acks += d.server(|_| false);
        d.clients();
        rounds += 1;
        assert!(rounds < MAX_ROUNDS, "clients did not receive the tick");
    }
    BroadcastTick {
        pass,
        dgrams: after.broadcast_dgrams - before.broadcast_dgrams,
        packets: after.packets_out - before.packets_out,
        paced: after.paced_holds - before.paced_holds,
        acks,
        rounds,
    }
}

/// b. Server CPU per broadcast DATAGRAM: publication fan-out and packet sealing for a 1000-pixel tick.
fn server_cpu_per_broadcast_datagram(c: &mut Criterion, s: &mut Summary) {
    let parts = BROADCAST_PIXELS.div_ceil(proto::entries_per_part(canvas::legacy::MAX_DATAGRAM));
    let per_iter = (CLIENTS * parts) as u64;
    let mut d: Option<Driver> = None;
    let mut g = configure(c, "server_cpu_per_broadcast_datagram");
    g.throughput(Throughput::Elements(per_iter));
    g.bench_function(format!("{BROADCAST_PIXELS}px_tick_{parts}_parts_x_{CLIENTS}_clients"), |b| {
        let d = d.get_or_insert_with(|| {
            // Untimed: a connection's broadcast window starts at two datagrams and opens as its ACKs come
            // back on a path that does not queue (`EndpointConfig::broadcast_queue`); a few ticks open it
            // to the whole tick, as on a server that has been running.
            let mut d = Driver::new(u64::MAX);
            let opened = (0..16).any(|_| broadcast_tick(&mut d).dgrams == per_iter);
            assert!(opened, "the broadcast windows opened to a whole tick within 16 ticks");
            d
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = broadcast_tick(d);
                assert!(t.dgrams > 0, "the tick was broadcast");
                assert_eq!(t.dgrams, per_iter, "every client got every part in the timed pass");
                total += t.pass;
                s.broadcast.elements += t.dgrams;
                s.broadcast_packets += t.packets;
                s.broadcast_paced += t.paced;
                s.broadcast_acks += t.acks;
                s.broadcast.rounds += t.rounds;
            }
            s.broadcast.time += total;
            s.broadcast.iterations += iters;
            total
        })
    });
    g.finish();
    if let Some(d) = d {
        let px = d.sim.master.canvas().pixels();
        assert!(d.sim.clients.iter().all(|c| c.replica.pixels() == px), "replicas converged");
    }
}

/// The AEAD floor: sealing one packet-sized payload with the cipher quiche negotiates with quinn here
/// (TLS_AES_128_GCM_SHA256), via ring on the same CPU. A broadcast datagram costs at least this (plus header
/// protection, one AES block) however good the rest of the path gets.
fn aead_floor(c: &mut Criterion, s: &mut Summary) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, CHACHA20_POLY1305};
    let mut g = c.benchmark_group("aead_floor");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    // Sizes of a typical broadcast DIFF_PART packet here (~460 B) and a full 1350-byte packet.
    for (name, alg) in [("aes128gcm", &AES_128_GCM), ("chacha20poly1305", &CHACHA20_POLY1305)] {
        let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32][..alg.key_len()]).expect("key"));
        for len in [460usize, 1350] {
            let mut buf = vec![0x5au8; len];
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{name}_seal_{len}B"), |b| {
                let mut pn = 0u64;
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        pn += 1;
                        let mut nonce = [0u8; 12];
                        nonce[4..].copy_from_slice(&pn.to_be_bytes());
                        let tag = key
                            .seal_in_place_separate_tag(
                                Nonce::assume_unique_for_key(nonce),
                                Aad::from(&[0u8; 20]),
                                &mut buf,
                            )
                            .expect("seal");
                        let _ = std::hint::black_box(tag);
                    }
                    let el = t0.elapsed();
                    if name == "aes128gcm" {
                        s.aead.push((len, el, iters));
                    }
                    el
                })
            });
        }
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut s = Summary::default();
    ingest(&mut c, &mut s);
    server_cpu_per_pixel(&mut c, &mut s);
    server_cpu_per_broadcast_datagram(&mut c, &mut s);
    aead_floor(&mut c, &mut s);
    c.final_summary();

    println!("\nsummary ({CLIENTS} clients, 1 worker, mem backend, own totals incl. warm-up):");
    let line = |name: &str, t: &Tally, what: &str| {
        if t.elements == 0 {
            println!("  {name:<36} not run");
        } else {
            println!(
                "  {name:<36} {:>9.1} ns/{what}  ({} {what}s, {} iterations, {:.1} rounds/iteration)",
                t.ns_per(),
                t.elements,
                t.iterations,
                t.rounds as f64 / t.iterations.max(1) as f64
            );
        }
    };
    line("ingest (wall, clients included)", &s.ingest, "write");
    line("server_cpu_per_pixel", &s.per_pixel, "write");
    if s.per_pixel.elements > 0 {
        println!(
            "  {:<36} {:>9.2} broadcast datagrams per write",
            "",
            s.per_pixel_broadcast_dgrams as f64 / s.per_pixel.elements as f64
        );
    }
    line("server_cpu_per_broadcast_datagram", &s.broadcast, "datagram");
    if s.broadcast.elements > 0 {
        let with_acks = (s.broadcast.time + s.broadcast_acks).as_nanos() as f64 / s.broadcast.elements as f64;
        println!(
            "  {:<36} {:>9.1} ns/datagram incl. the server's processing of the clients' ACK packets",
            "", with_acks
        );
        println!(
            "  {:<36} {:>9.2} packets (sent + held for pacing) per datagram in the timed pass, {} held",
            "",
            (s.broadcast_packets + s.broadcast_paced) as f64 / s.broadcast.elements as f64,
            s.broadcast_paced
        );
    }
    for len in [460usize, 1350] {
        let (t, n) = s
            .aead
            .iter()
            .filter(|a| a.0 == len)
            .fold((Duration::ZERO, 0u64), |acc, a| (acc.0 + a.1, acc.1 + a.2));
        if n > 0 {
            println!(
                "  {:<36} {:>9.1} ns/packet (AES-128-GCM seal, ring)",
                format!("aead floor {len} B"),
                t.as_nanos() as f64 / n as f64
            );
        }
    }
}
