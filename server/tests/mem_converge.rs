//! Hundreds of quiche clients through a lossy, reordering in-memory network: every write is answered and
//! every replica converges to the master's canvas.

use std::time::Duration;

use canvas::proto::SnapshotEncoding;
use canvas::{proto, Cooldown, Dims, Pixel, Rules};
use datapath::backend::mem::NetConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server::endpoint::EndpointConfig;
use server::master::MasterConfig;
use server::quic::{self, DEFAULT_QUIC};
use server::sim::{Sim, SimConfig};

fn config(clients: usize, loss: f64, reorder: f64, seed: u64) -> SimConfig {
    let dims = Dims { width: 200, height: 100 };
    SimConfig {
        workers: 2,
        clients,
        net: NetConfig { loss, reorder, seed },
        rounds_per_tick: 5,
        endpoint: EndpointConfig {
            worker: 0,
            rules: Rules { dims, palette: 32 },
            cooldown: Cooldown::default(),
            max_conns: 65536,
            retry: false,
            tick_ms: 100,
            dgram_queue: 64,
            broadcast_inflight: server::endpoint::DEFAULT_BROADCAST_INFLIGHT,
            broadcast_queue: server::endpoint::DEFAULT_BROADCAST_QUEUE,
            catchup_budget: server::endpoint::DEFAULT_CATCHUP_BUDGET,
            max_datagram: canvas::legacy::MAX_DATAGRAM,
            history_ticks: 16,
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
            full_interval: 60,
            max_dgram: 1200,
        },
        quic: DEFAULT_QUIC,
        write_queue: 65536,
    }
}

/// The system of `cfg`, every client through its handshake and initial snapshot (bounded by 60 s).
fn ready_sim(cfg: SimConfig) -> Sim {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut sim = Sim::new(cfg, &tls.cert, &tls.key);
    assert!(sim.run_until(Duration::from_secs(60), Sim::all_ready), "handshakes and initial snapshots");
    sim
}

fn run(clients: usize, loss: f64, reorder: f64, seed: u64) {
    let cfg = config(clients, loss, reorder, seed);
    let dims = cfg.endpoint.rules.dims;
    let mut sim = ready_sim(cfg);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut bad = 0;
    for _ in 0..300 {
        for c in sim.clients.iter_mut() {
            if rng.random_ratio(1, 30) {
                // One write in 50 is invalid (out of bounds or bad color) and must be rejected.
                let (x, color) = if rng.random_ratio(1, 50) {
                    bad += 1;
                    if rng.random_bool(0.5) {
                        (dims.width, 0)
                    } else {
                        (0, 200)
                    }
                } else {
                    (rng.random_range(0..dims.width), rng.random_range(0..32))
                };
                c.write(Pixel { x, y: rng.random_range(0..dims.height), color });
            }
        }
        sim.round();
    }
    let converged = sim.run_until(Duration::from_secs(90), Sim::converged);
    let sent: u64 = sim.clients.iter().map(|c| c.sent).sum();
    let acked: u64 = sim.clients.iter().map(|c| c.acked).sum();
    let rejected: u64 = sim.clients.iter().map(|c| c.rejected).sum();
    let syncs: u64 = sim.clients.iter().map(|c| c.replica.stats().syncs).sum();
    let mism: u64 = sim.clients.iter().map(|c| c.replica.stats().hash_mismatches).sum();
    let net = sim.net.stats();
    let (resent, coalesced, snapshots) = sim.workers.iter().fold((0, 0, 0), |a, (e, _)| {
        let s = e.stats();
        (a.0 + s.diffs_resent, a.1 + s.deltas_coalesced, a.2 + s.snapshots_sent)
    });
    eprintln!(
        "clients={clients} loss={loss} reorder={reorder} rounds={} sent={sent} acked={acked} rejected={rejected} \
         invalid={bad} syncs={syncs} hash_mismatches={mism} diffs_resent={resent} (coalesced {coalesced}) \
         snapshots={snapshots} net={net:?}",
        sim.rounds()
    );
    assert!(converged, "replicas converge and every write is answered");
    assert_eq!(acked + rejected, sent);
    assert!(rejected >= bad, "every invalid write is rejected");
    assert_eq!(mism, 0);
    assert!(sent > 500);
    for (e, _) in &sim.workers {
        // Every flush ends by purging superseded entries once they exceed this bound (server/src/endpoint/send.rs).
        let bound = 2 * e.conn_count() + server::endpoint::TIMER_PURGE_SLACK;
        assert!(e.timer_entries() <= bound, "timer heap bounded: {} > {bound}", e.timer_entries());
    }
    let applied: u64 = sim.workers.iter().map(|(e, _)| e.stats().pixels_applied).sum();
    assert_eq!(applied, acked);
    if loss > 0.0 {
        assert!(net.dropped > 0 && net.reordered > 0);
    }
}

#[test]
fn lossless_network_converges() {
    run(100, 0.0, 0.0, 1);
}

#[test]
fn three_hundred_clients_converge_through_loss_and_reordering() {
    run(300, 0.01, 0.02, 7);
}

#[test]
fn heavy_loss_forces_resyncs_and_still_converges() {
    run(200, 0.05, 0.05, 11);
}

/// `rounds` rounds in which every client but the first writes `per_client(rng)` random pixels, each in the
/// `w`×`h` corner of the canvas (small, so that later writes supersede earlier ones).
fn busy_rounds(
    sim: &mut Sim,
    rng: &mut SmallRng,
    rounds: u64,
    (w, h): (u16, u16),
    mut per_client: impl FnMut(&mut SmallRng) -> usize,
) {
    for _ in 0..rounds {
        for c in sim.clients.iter_mut().skip(1) {
            for _ in 0..per_client(rng) {
                c.write(Pixel {
                    x: rng.random_range(0..w),
                    y: rng.random_range(0..h),
                    color: rng.random_range(0..32),
                });
            }
        }
        sim.round();
    }
}

/// A client whose downstream link loses everything for ten busy ticks falls behind; when the link returns it
/// sees the gap, sends SYNC{have}, and gets one DIFF coalescing every tick since `have` (later writes to a
/// pixel superseding earlier ones): no per-tick re-send, no snapshot.
/// A client that sets `SYNC_ZSTD` gets zstd snapshots, one that does not (a client written before the flag)
/// gets the plain encoding of the same canvas; both converge through the same writes.
#[test]
fn snapshots_are_zstd_only_for_clients_that_asked() {
    let cfg = config(6, 0.0, 0.0, 13);
    let dims = cfg.endpoint.rules.dims;
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut sim = Sim::new(cfg, &tls.cert, &tls.key);
    for c in sim.clients.iter_mut().skip(3) {
        c.sync_flags = 0;
    }
    assert!(sim.run_until(Duration::from_secs(60), Sim::all_ready), "handshakes and initial snapshots");
    let got: Vec<_> = sim.clients.iter().map(|c| c.last_snapshot).collect();
    assert_eq!(got[..3], [Some(SnapshotEncoding::Zstd); 3], "{got:?}");
    assert_eq!(got[3..], [Some(SnapshotEncoding::Rle); 3], "{got:?}");
    let mut rng = SmallRng::seed_from_u64(13);
    for _ in 0..100 {
        for c in sim.clients.iter_mut() {
            if rng.random_ratio(1, 5) {
                c.write(Pixel {
                    x: rng.random_range(0..dims.width),
                    y: rng.random_range(0..dims.height),
                    color: 3,
                });
            }
        }
        sim.round();
    }
    assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "both kinds converge");
}

#[test]
fn a_client_that_fell_behind_catches_up_with_one_coalesced_delta() {
    let cfg = config(20, 0.0, 0.0, 3);
    let history = cfg.endpoint.history_ticks as u64;
    let rounds_per_tick = cfg.rounds_per_tick;
    let mut sim = ready_sim(cfg);
    let stats = |sim: &Sim| {
        sim.workers.iter().fold((0, 0, 0, 0), |a, (e, _)| {
            let s = e.stats();
            (a.0 + s.snapshots_sent, a.1 + s.deltas_coalesced, a.2 + s.delta_ticks, a.3 + s.delta_entries)
        })
    };
    let (snapshots_at_join, ..) = stats(&sim);
    let tick_before = sim.master.tick();
    sim.clients[0].deaf = true;
    let mut rng = SmallRng::seed_from_u64(3);
    // Ten ticks, every one changing pixels (fewer than the worker's history holds).
    busy_rounds(&mut sim, &mut rng, 10 * rounds_per_tick, (8, 4), |r| usize::from(r.random_ratio(1, 2)));
    let behind = sim.master.tick() - tick_before;
    assert!(behind >= 10 && behind < history, "{behind} ticks behind, within the history of {history}");
    sim.clients[0].deaf = false;
    assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "the deaf client converges");
    let (snapshots, coalesced, ticks, entries) = stats(&sim);
    let syncs = sim.clients[0].replica.stats().syncs;
    eprintln!(
        "behind={behind} syncs={syncs} coalesced deltas={coalesced} spanning {ticks} ticks with {entries} entries, \
         snapshots after join={}",
        snapshots - snapshots_at_join
    );
    assert!(syncs >= 1, "the client saw the gap and asked");
    assert!(coalesced >= 1, "the reply was one coalesced DIFF");
    assert!(ticks >= 2 * coalesced, "each spanned several ticks");
    assert!(
        entries <= 8 * 4 * coalesced,
        "later writes superseded earlier ones: at most the 32 pixels written"
    );
    assert_eq!(snapshots, snapshots_at_join, "no snapshot after the join");
    assert_eq!(sim.clients[0].replica.pixels(), sim.master.canvas().pixels());
}

/// A client that stops reading for ten busy ticks (nothing lost: its path is just stalled) blocks its
/// connection's congestion window; when it resumes, the server does not replay the ticks it missed one by
/// one: the connection pulls one coalesced delta from the tick it was sent up to, which chains onto the
/// client's replica with no SYNC and no snapshot.
#[test]
fn a_stalled_client_pulls_one_coalesced_delta_instead_of_a_backlog() {
    let mut cfg = config(20, 0.0, 0.0, 5);
    cfg.workers = 1;
    cfg.endpoint.dgram_queue = 8;
    // A small allowance, below the congestion window (13,482 bytes reached the stalled client without one).
    let inflight = 4 * 1024;
    cfg.endpoint.broadcast_inflight = inflight;
    let rounds_per_tick = cfg.rounds_per_tick;
    let mut sim = ready_sim(cfg);
    assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "settled before the stall");
    let stats = |sim: &Sim| {
        let s = sim.workers[0].0.stats();
        (s.snapshots_sent, s.catchups, s.catchup_deltas, s.catchup_ticks, s.catchup_entries)
    };
    let (snapshots_before, catchups_before, deltas_before, ticks_before, entries_before) = stats(&sim);
    let syncs_before = sim.clients[0].replica.stats().syncs;
    sim.clients[0].stalled = true;
    let mut rng = SmallRng::seed_from_u64(5);
    let tick_before = sim.master.tick();
    // Ten ticks of a few thousand writes each over a 60×40 area: several datagrams per tick, more than an
    // initial congestion window in all, and later writes supersede earlier ones.
    busy_rounds(&mut sim, &mut rng, 10 * rounds_per_tick, (60, 40), |_| 40);
    assert!(sim.master.tick() - tick_before >= 10);
    // What the server sent the stalled client is bounded by the broadcast's in-flight allowance (plus the
    // datagram that crossed it and packet overhead), not by its congestion window.
    let held = sim.net.inbox_bytes(sim.clients[0].addr);
    eprintln!("bytes waiting for the stalled client: {held} (allowance {inflight})");
    assert!(held <= inflight + 2 * 1350, "{held} bytes sent past an allowance of {inflight}");
    sim.clients[0].stalled = false;
    assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "the stalled client converges");
    let (snapshots, catchups, deltas, ticks, entries) = stats(&sim);
    let syncs = sim.clients[0].replica.stats().syncs - syncs_before;
    let (deltas, ticks, entries) = (deltas - deltas_before, ticks - ticks_before, entries - entries_before);
    eprintln!(
        "catch-up pulls={} deltas built={deltas} spanning {ticks} ticks with {entries} entries, syncs={syncs}, \
         snapshots={}",
        catchups - catchups_before,
        snapshots - snapshots_before
    );
    assert!(deltas >= 1, "the stalled connection pulled a coalesced delta");
    assert!(ticks >= 2 * deltas, "each spanned several ticks");
    assert!(entries <= 60 * 40 * deltas, "later writes superseded earlier ones: at most the area per delta");
    assert_eq!(syncs, 0, "the delta chained onto the replica: no SYNC");
    assert_eq!(snapshots, snapshots_before, "no snapshot");
    assert_eq!(sim.clients[0].replica.pixels(), sim.master.canvas().pixels());
}

/// A client whose path queues: it reads its packets once per cycle, after 50 ms, so every RTT sample the
/// server takes of it is ~50 ms while its path's minimum (taken before) is well under a millisecond. Its
/// broadcast window halves while quiche's smoothed RTT is more than `broadcast_queue` (here 25 ms) above
/// the minimum, down to two datagrams: what waits for it at a read is then about two datagrams, where the
/// in-flight allowance alone lets a tick's worth (about ten) queue. It still converges, with coalesced
/// deltas.
#[test]
fn a_client_whose_path_queues_gets_a_window_of_two_datagrams() {
    let waiting = |target: Duration| {
        let mut cfg = config(12, 0.0, 0.0, 13);
        cfg.workers = 1;
        cfg.endpoint.dgram_queue = 8;
        cfg.endpoint.broadcast_queue = target;
        let rounds_per_tick = cfg.rounds_per_tick;
        let mut sim = ready_sim(cfg);
        assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "settled before the slow reads");
        let mut rng = SmallRng::seed_from_u64(13);
        let slow = sim.clients[0].addr;
        let mut inbox = Vec::new();
        for _ in 0..30 {
            sim.clients[0].stalled = true;
            // One tick: 2,750 writes over the 200×100 canvas, about ten full datagrams of changes.
            busy_rounds(&mut sim, &mut rng, rounds_per_tick, (200, 100), |_| 50);
            std::thread::sleep(Duration::from_millis(50));
            inbox.push(sim.net.inbox_bytes(slow));
            sim.clients[0].stalled = false;
            sim.round();
        }
        assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "the slow client converges");
        let cuts = sim.workers[0].0.stats().window_cuts;
        // The smoothed RTT takes a few samples to rise and the window halves once per RTT: judge the
        // last ten cycles.
        let last = inbox[20..].iter().copied().max().unwrap_or(0);
        eprintln!("broadcast_queue {target:?}: bytes waiting at each read {inbox:?}, window cuts {cuts}");
        (last, cuts)
    };
    let (windowed, cuts) = waiting(Duration::from_millis(25));
    let (allowance_only, cuts_off) = waiting(Duration::ZERO);
    assert!(cuts > 0, "the slow client's window was cut");
    assert_eq!(cuts_off, 0, "no window without a target");
    // Two full datagrams in flight, plus a short one (less than two were in flight) and ACK-only packets.
    assert!(windowed <= 3 * 1350 + 200, "{windowed} bytes waited for a client whose path queues");
    assert!(allowance_only >= 6 * 1350, "without the window a tick's datagrams queue: {allowance_only}");
}

/// Twelve clients stall one tick apart while the others write (their connections stop at different ticks,
/// so they need different deltas), with a catch-up budget of one byte: past it a pull shares a delta that
/// is already alive or waits for the next tick, so at most one coalesced delta is alive at a time. When
/// they resume, every replica still converges, chaining onto shared deltas: no SYNC, no snapshot.
#[test]
fn a_catch_up_budget_bounds_live_deltas_and_every_stalled_client_still_converges() {
    let mut cfg = config(24, 0.0, 0.0, 9);
    cfg.workers = 1;
    cfg.endpoint.catchup_budget = 1;
    cfg.endpoint.broadcast_inflight = 4 * 1024;
    let rounds_per_tick = cfg.rounds_per_tick;
    let mut sim = ready_sim(cfg);
    assert!(sim.run_until(Duration::from_secs(60), Sim::converged), "settled before the stalls");
    let before = sim.workers[0].0.stats();
    let syncs_before: u64 = sim.clients.iter().map(|c| c.replica.stats().syncs).sum();
    let mut rng = SmallRng::seed_from_u64(9);
    for k in 12..24 {
        sim.clients[k].stalled = true;
        busy_rounds(&mut sim, &mut rng, rounds_per_tick, (60, 40), |_| 20);
    }
    for c in &mut sim.clients {
        c.stalled = false;
    }
    assert!(sim.run_until(Duration::from_secs(120), Sim::converged), "every stalled client converges");
    let s = sim.workers[0].0.stats();
    let syncs: u64 = sim.clients.iter().map(|c| c.replica.stats().syncs).sum::<u64>() - syncs_before;
    eprintln!(
        "deltas built {}, pulls that shared a live delta {}, waited {}, live peak {} bytes, syncs {syncs}",
        s.catchup_deltas - before.catchup_deltas,
        s.catchup_shared,
        s.catchup_deferred,
        s.catchup_live_peak
    );
    assert!(s.catchup_shared + s.catchup_deferred > 0, "the budget was reached");
    // One delta alive at a time: at most the 60×40 area once, 5 bytes an entry, plus each part's header.
    let one = 60 * 40 * proto::ENTRY_LEN;
    let parts = one.div_ceil(proto::entries_per_part(canvas::legacy::MAX_DATAGRAM) * proto::ENTRY_LEN);
    assert!(s.catchup_live_peak as usize <= one + parts * proto::DIFF_PART_HEADER, "{}", s.catchup_live_peak);
    assert_eq!(syncs, 0, "shared deltas chain onto the replicas: no SYNC");
    assert_eq!(s.snapshots_sent, before.snapshots_sent, "no snapshot");
    for c in &sim.clients {
        assert_eq!(c.replica.pixels(), sim.master.canvas().pixels());
    }
}

/// Stateless Retry on every new connection, and the r/place cooldown: one write per connection is applied,
/// the rest are refused with REJECT{cooldown} and a retry time.
#[test]
fn retry_and_cooldown_through_the_endpoint() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let (cert, key) = (&tls.cert, &tls.key);
    let mut cfg = config(50, 0.0, 0.0, 3);
    cfg.endpoint.retry = true;
    cfg.endpoint.cooldown = Cooldown::new(canvas::cooldown::RPLACE_PERIOD);
    let mut sim = Sim::new(cfg, cert, key);
    assert!(sim.run_until(Duration::from_secs(30), Sim::all_ready));
    for (i, c) in sim.clients.iter_mut().enumerate() {
        for k in 0..3u16 {
            c.write(Pixel { x: i as u16, y: k, color: 1 });
        }
    }
    assert!(sim.run_until(Duration::from_secs(30), Sim::converged));
    let stats: Vec<_> = sim.workers.iter().map(|(e, _)| e.stats()).collect();
    let retries: u64 = stats.iter().map(|s| s.retries).sum();
    let accepted: u64 = stats.iter().map(|s| s.accepted).sum();
    let cooldown: u64 = stats.iter().map(|s| s.rejected_cooldown).sum();
    assert_eq!(accepted, 50);
    assert!(retries >= 50, "every connection was sent a Retry first ({retries})");
    assert_eq!(stats.iter().map(|s| s.bad_tokens).sum::<u64>(), 0);
    assert_eq!(cooldown, 100, "two of three writes per connection refused");
    for c in &sim.clients {
        assert_eq!((c.acked, c.rejected), (1, 2));
    }
    let px = sim.master.canvas().pixels();
    assert_eq!(px.iter().filter(|&&p| p == 1).count(), 50, "only the first write of each client landed");
}

/// Initials in datagrams under 1200 bytes are dropped unanswered (RFC 9000 §14.1) and an Initial quiche
/// refuses leaves no connection behind; the genuine Initial is then accepted.
#[test]
fn small_or_garbage_initials_leave_no_state() {
    use datapath::seam::{Addrs, Datapath};
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let (cert, key) = (&tls.cert, &tls.key);
    let mut sim = Sim::new(config(1, 0.0, 0.0, 5), cert, key);
    let mut buf = vec![0u8; 1500];
    let (n, info) = sim.clients[0].q.send(&mut buf).expect("client Initial");
    assert!(n >= 1200);
    let addrs = Addrs { local: info.to, peer: info.from };
    let now = std::time::Instant::now();
    let (ep, sock) = &mut sim.workers[0];
    let mut short = buf[..1100].to_vec();
    ep.on_datagram(now, addrs, &mut short);
    assert_eq!((ep.conn_count(), ep.stats().dropped_packets), (0, 1));
    let mut garbage = buf[..n].to_vec();
    for b in garbage[64..].iter_mut() {
        *b ^= 0x5a;
    }
    ep.on_datagram(now, addrs, &mut garbage);
    assert_eq!(ep.conn_count(), 0, "a refused Initial keeps no state");
    ep.flush(now, sock);
    assert_eq!(sock.tx_pending(), 0, "nothing is sent in reply to either");
    assert_eq!(sock.stats().tx_datagrams, 0);
    ep.on_datagram(now, addrs, &mut buf[..n]);
    assert_eq!(ep.conn_count(), 1);
    ep.flush(now, sock);
    assert!(sock.tx_pending() > 0, "the server answers a genuine Initial");
}

/// A client writing one pixel per packet between ticks is not answered with an ACK-only packet per one or
/// two of its packets (quiche acknowledges on every `send()` after an ack-eliciting packet): the server
/// holds the acknowledgement until it sends anyway (the tick's ACK frames and broadcast), up to
/// `ACK_EVERY` packets or `ACK_DELAY`, unless the packet acknowledged something of the server's. Counted
/// over 60 rounds of one write each, 12 ticks, on a clock that stands still, so that no held ACK times out
/// however slowly the rounds run (33 server packets; 70 when every packet woke the connection).
#[test]
fn acknowledgements_ride_on_the_ticks_packets() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let (cert, key) = (&tls.cert, &tls.key);
    let mut cfg = config(1, 0.0, 0.0, 7);
    cfg.workers = 1;
    let mut sim = Sim::new(cfg, cert, key);
    assert!(sim.run_until(Duration::from_secs(30), Sim::all_ready));
    assert!(sim.run_until(Duration::from_secs(30), Sim::converged));
    let out_before = sim.workers[0].0.stats().packets_out;
    let client_before = sim.clients[0].q.stats().sent;
    let frozen = std::time::Instant::now();
    for i in 0..60u16 {
        sim.clients[0].write(Pixel { x: i, y: 0, color: 3 });
        sim.round_at(frozen);
    }
    let server = sim.workers[0].0.stats().packets_out - out_before;
    let client = (sim.clients[0].q.stats().sent - client_before) as u64;
    eprintln!("client sent {client} packets, server {server}");
    assert!(client >= 60, "one packet per write");
    assert!(
        3 * server <= 2 * client,
        "at most two server packets per three client packets ({server} for {client})"
    );
    assert!(sim.run_until(Duration::from_secs(30), Sim::converged), "every write still answered and visible");
}
