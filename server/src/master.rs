//! The master: the single writer of the canvas. It drains every worker's bounded write queue in batches,
//! applies the writes in that one global order, and every broadcast interval closes a tick and publishes it.
//! In cluster mode ([`Master::set_cluster`]) the global order is a stream's that every node applies: the
//! master proposes its workers' writes there and applies what comes back, every node's.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canvas::Canvas;
use placelog::PlacementLog;

use crate::link::Shared;
use crate::publish::{Publication, Snapshot};

/// Master tuning.
#[derive(Clone, Copy, Debug)]
pub struct MasterConfig {
    /// Writes drained from one worker's queue per loop (predecessor: MASTER_BATCH_DRAIN = 4096).
    pub batch_drain: usize,
    /// Broadcast interval (predecessor: BROADCAST_INTERVAL_MS = 100).
    pub tick: Duration,
    /// Snapshot every this many ticks (predecessor: FULL_BROADCAST_INTERVAL = 60).
    pub full_interval: u64,
    /// Largest broadcast datagram payload.
    pub max_dgram: usize,
}

/// Master counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MasterStats {
    /// Ticks published.
    pub ticks: u64,
    /// Writes applied (including writes that did not change the color).
    pub pixels_applied: u64,
    /// Pixels whose color changed, summed over tick diffs.
    pub pixels_changed: u64,
    /// Snapshots encoded.
    pub snapshots: u64,
    /// Longest time spent closing and encoding one tick, in microseconds (the log commit included).
    pub max_tick_us: u64,
    /// Snapshots written to the placement log.
    pub log_snapshots: u64,
    /// Snapshots the placement log failed to write (the log itself still holds every tick).
    pub log_snapshot_errors: u64,
    /// Cluster mode: batches of this node's writes proposed to the stream.
    pub cluster_proposed: u64,
    /// Cluster mode: stream messages applied (every node's).
    pub cluster_applied_msgs: u64,
    /// Cluster mode: the stream sequence number the canvas is at.
    pub cluster_seq: u64,
    /// Cluster mode: writes in stream messages that were not valid for this canvas (skipped by every node
    /// alike), and messages that did not decode.
    pub cluster_invalid: u64,
    /// Cluster mode: loops the master did not drain its workers because too many of its batches were
    /// waiting for the stream (NATS away or slow): the workers' queues fill and they answer REJECT busy.
    pub cluster_stalls: u64,
    /// Cluster mode: snapshots of the canvas offered for the cluster's snapshot bucket.
    pub cluster_snapshots_offered: u64,
}

/// Where a cluster node's writes get their global order: [`cluster::Sequencer`] (tests use an in-memory
/// one). Every node's messages come back from [`GlobalOrder::poll`] in the one order, this node's own
/// included.
pub trait GlobalOrder: Send + std::fmt::Debug {
    /// This node's id in the messages it publishes.
    fn incarnation(&self) -> u64;
    /// Queue a batch of this node's writes; gives it back when the queue is full.
    fn propose(&self, p: cluster::Proposal) -> Result<(), cluster::Proposal>;
    /// Take up to `max` messages in the global order.
    fn poll(&self, max: usize, out: &mut Vec<cluster::Ordered>) -> usize;
    /// At shutdown: give what is queued up to `drain` to be published, then stop.
    fn close(&mut self, _drain: Duration) {}
    /// A snapshot of the canvas at a stream position, for nodes that join later (may be dropped).
    fn offer_snapshot(&self, _snap: cluster::Snapshot) {}
}

impl GlobalOrder for cluster::Sequencer {
    fn incarnation(&self) -> u64 {
        cluster::Sequencer::incarnation(self)
    }
    fn propose(&self, p: cluster::Proposal) -> Result<(), cluster::Proposal> {
        cluster::Sequencer::propose(self, p)
    }
    fn poll(&self, max: usize, out: &mut Vec<cluster::Ordered>) -> usize {
        cluster::Sequencer::poll(self, max, out)
    }
    fn close(&mut self, drain: Duration) {
        self.shutdown(drain);
    }
    fn offer_snapshot(&self, snap: cluster::Snapshot) {
        cluster::Sequencer::offer_snapshot(self, snap);
    }
}

/// Apply one stream message's writes to `canvas` (the same on every node: a write outside the canvas or the
/// palette, which no node's validation lets through, is skipped); returns how many were skipped.
pub fn apply_stream_writes<S: AsRef<[u8]> + AsMut<[u8]>>(
    canvas: &mut Canvas<S>,
    palette: u16,
    writes: &[(u32, u8)],
) -> u64 {
    let len = canvas.dims().len();
    let mut skipped = 0;
    for &(i, c) in writes {
        if (i as usize) < len && u16::from(c) < palette {
            canvas.apply(i, c);
        } else {
            skipped += 1;
        }
    }
    skipped
}

/// This node's batches waiting to come back from the stream, at most: past it the master stops draining its
/// workers (about this many ticks of writes are in flight; then clients get REJECT busy, never an ACK for a
/// write that could not be ordered).
pub const CLUSTER_MAX_PENDING: usize = 64;

/// Ticks in cluster mode are `stream sequence << CLUSTER_TICK_SHIFT | quiet ticks since it`: a tick
/// names the same canvas on every node.
pub const CLUSTER_TICK_SHIFT: u32 = 16;

/// The master's cluster state.
#[derive(Debug)]
struct ClusterState {
    order: Box<dyn GlobalOrder>,
    incarnation: u64,
    palette: u16,
    /// Writes drained and not proposed yet, and how many of them came from each worker.
    outgoing: Vec<(u32, u8)>,
    out_counts: Vec<u64>,
    /// The batch ready to propose that the queue refused (retried first).
    refused: Option<cluster::Proposal>,
    next_batch: u64,
    /// This node's proposed batches, oldest first: (batch number, writes per worker).
    pending: VecDeque<(u64, Vec<u64>)>,
    /// The stream sequence number applied last.
    seq: u64,
    /// The tick's sequence number when the last tick was closed.
    seq_at_tick: u64,
    polled: Vec<cluster::Ordered>,
    /// Offer a snapshot this often (None: never), next at `next_snapshot`, unless the canvas is still at
    /// `snapshot_seq` (the last one offered).
    snapshot_every: Option<Duration>,
    next_snapshot: Instant,
    snapshot_seq: u64,
}

/// What a master restored from a placement log starts from (see [`Master::resume`]).
#[derive(Debug, Default)]
pub struct Resume {
    /// The first tick to publish (the snapshot every worker starts from).
    pub start: u64,
    /// The newest tick that changed something before the restart.
    pub last_change: u64,
    /// Changing ticks before the restart, oldest first, each chained to the one before (`base`).
    pub history: Vec<placelog::ReplayedTick>,
}

/// Where the master reports each closed tick: its counters, how long closing it took, its number and the
/// canvas (the live metrics implement it for `--metrics-addr`; defined here so that the master depends on
/// no observer).
pub trait TickObserver: Send + Sync + std::fmt::Debug {
    /// Called once per tick, right after it was published, on the master's thread, with the canvas and
    /// its hash at that tick.
    fn record_tick(&self, stats: MasterStats, tick_us: u64, tick: u64, hash: u64, pixels: &[u8]);
}

/// The master.
#[derive(Debug)]
pub struct Master<S> {
    canvas: Canvas<S>,
    cfg: MasterConfig,
    shared: Arc<Shared>,
    applied: Vec<u64>,
    tick: u64,
    last_change: u64,
    latest_snapshot: Arc<Snapshot>,
    entries: Vec<(u32, u8)>,
    stats: MasterStats,
    live: Option<Arc<dyn TickObserver>>,
    /// Where every tick is committed before it is published (`--data-dir`), and every how many ticks the
    /// canvas is snapshotted there.
    log: Option<(Box<dyn PlacementLog>, u64)>,
    /// The log refused a tick: nothing more is published (so nothing more is ACKed) and the server stops.
    failed: Option<String>,
    /// Cluster mode (`--cluster`): writes are ordered by the stream, not by this master.
    cluster: Option<ClusterState>,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> Master<S> {
    /// A master over `canvas`; publishes tick 0 (the initial snapshot) to every worker.
    pub fn new(canvas: Canvas<S>, cfg: MasterConfig, shared: Arc<Shared>) -> Self {
        Self::starting_at(canvas, cfg, shared, 0)
    }

    /// A master over `canvas` whose first publication, the snapshot every worker starts from, is tick
    /// `start`, knowing nothing of the ticks before it: workers answer a SYNC from an older tick with a
    /// snapshot.
    pub fn starting_at(canvas: Canvas<S>, cfg: MasterConfig, shared: Arc<Shared>, start: u64) -> Self {
        Self::resume(canvas, cfg, shared, Resume { start, last_change: start, history: Vec::new() })
    }

    /// [`Master::starting_at`] `r.start`, with what the log holds of the ticks before: the newest changing
    /// tick (the first publication's base: a client that has it has everything up to `start`) and the
    /// changing ticks replayed after the log's snapshot, handed to every worker with the first publication
    /// so that a client returning with a tick they cover is caught up with a delta.
    pub fn resume(canvas: Canvas<S>, cfg: MasterConfig, shared: Arc<Shared>, r: Resume) -> Self {
        let start = r.start;
        let snap =
            Arc::new(Snapshot::encode(start, canvas.hash(), canvas.dims(), canvas.pixels(), cfg.max_dgram));
        let n = shared.links.len();
        let m = Self {
            canvas,
            cfg,
            shared,
            applied: vec![0; n],
            tick: start,
            last_change: r.last_change.min(start),
            latest_snapshot: snap.clone(),
            entries: Vec::new(),
            stats: MasterStats { snapshots: 1, ..Default::default() },
            live: None,
            log: None,
            failed: None,
            cluster: None,
        };
        let mut p0 = Publication::encode(
            start,
            m.last_change,
            m.canvas.hash(),
            &[],
            cfg.max_dgram,
            vec![0; n],
            Some(snap),
        );
        p0.history = r
            .history
            .into_iter()
            .map(|h| {
                Arc::new(Publication::encode(
                    h.tick,
                    h.base,
                    h.hash,
                    &h.changes,
                    cfg.max_dgram,
                    vec![0; n],
                    None,
                ))
            })
            .collect();
        p0.full = start.is_multiple_of(cfg.full_interval);
        let p0 = Arc::new(p0);
        m.publish(p0);
        m
    }

    /// Report every tick (duration, counters) and a canvas copy once a second to `live` (`--metrics-addr`).
    pub fn set_live(&mut self, live: Arc<dyn TickObserver>) {
        self.live = Some(live);
    }

    /// Commit every tick to `log` before publishing it, and snapshot the canvas there every
    /// `snapshot_every` ticks (0: never).
    pub fn set_log(&mut self, log: Box<dyn PlacementLog>, snapshot_every: u64) {
        self.log = Some((log, snapshot_every));
    }

    /// Cluster mode: drain writes into batches proposed to `order` instead of applying them, and apply
    /// what `order` hands back in the global order (this node's writes are credited, so ACKed, only
    /// then). `seq` is the stream sequence number the canvas already holds (the master's start tick must
    /// be `seq << CLUSTER_TICK_SHIFT`); `palette` bounds the colors applied. Every `snapshot_every` (the
    /// first after a random part of it, so that nodes started together take turns) the canvas is offered
    /// to `order` as a snapshot at the position it is at, if that moved since the last one.
    pub fn set_cluster(
        &mut self,
        order: Box<dyn GlobalOrder>,
        seq: u64,
        palette: u16,
        snapshot_every: Option<Duration>,
    ) {
        let n = self.shared.links.len();
        self.stats.cluster_seq = seq;
        let incarnation = order.incarnation();
        self.cluster = Some(ClusterState {
            incarnation,
            order,
            palette,
            outgoing: Vec::new(),
            out_counts: vec![0; n],
            refused: None,
            next_batch: 1,
            pending: VecDeque::new(),
            seq,
            seq_at_tick: seq,
            polled: Vec::new(),
            snapshot_every,
            // The node's random incarnation picks the phase.
            next_snapshot: Instant::now()
                + snapshot_every
                    .map_or(Duration::ZERO, |d| d.mul_f64(0.5 + (incarnation % 1000) as f64 / 2000.0)),
            snapshot_seq: seq,
        });
    }

    /// Why the master stopped publishing (the log refused a tick), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The canvas.
    pub fn canvas(&self) -> &Canvas<S> {
        &self.canvas
    }

    /// The last published tick.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Counters.
    pub fn stats(&self) -> MasterStats {
        self.stats
    }

    /// Drain up to `batch_drain` writes from each worker; returns how many were applied (in cluster mode:
    /// taken into the next batch, plus the stream messages applied).
    pub fn drain(&mut self) -> usize {
        if self.cluster.is_some() {
            return self.drain_cluster();
        }
        let mut total = 0;
        for (w, link) in self.shared.links.iter().enumerate() {
            let mut n = 0;
            while n < self.cfg.batch_drain {
                let Some(px) = link.writes.pop() else { break };
                self.canvas.apply(px.index, px.color);
                n += 1;
            }
            self.applied[w] += n as u64;
            total += n;
        }
        self.stats.pixels_applied += total as u64;
        total
    }

    /// Cluster mode's drain: apply what the stream delivered, then take the workers' writes into the next
    /// batch (not while too many batches wait for the stream).
    fn drain_cluster(&mut self) -> usize {
        let c = self.cluster.as_mut().expect("cluster mode");
        let mut done = 0;
        // The global order first: apply every message delivered, crediting this node's own batches.
        c.polled.clear();
        c.order.poll(usize::MAX, &mut c.polled);
        for o in c.polled.drain(..) {
            c.seq = o.seq;
            self.stats.cluster_applied_msgs += 1;
            let b = match o.batch {
                Ok(b) => b,
                Err(_) => {
                    self.stats.cluster_invalid += 1;
                    continue;
                }
            };
            self.stats.cluster_invalid += apply_stream_writes(&mut self.canvas, c.palette, &b.writes);
            self.stats.pixels_applied += b.writes.len() as u64;
            done += b.writes.len();
            if b.incarnation == c.incarnation {
                while c.pending.front().is_some_and(|(n, _)| *n <= b.last) {
                    let (_, counts) = c.pending.pop_front().expect("front");
                    for (w, k) in counts.into_iter().enumerate() {
                        self.applied[w] += k;
                    }
                }
            }
        }
        self.stats.cluster_seq = c.seq;
        if let Some(every) = c.snapshot_every {
            let now = (c.seq > c.snapshot_seq).then(Instant::now);
            if let Some(now) = now.filter(|&now| now >= c.next_snapshot) {
                c.next_snapshot = now + every;
                c.snapshot_seq = c.seq;
                // The canvas holds exactly the messages up to `c.seq` (this node's writes count only once
                // they came back from the stream).
                let bytes = placelog::format::encode_snapshot(
                    c.seq,
                    self.canvas.hash(),
                    self.canvas.dims(),
                    self.canvas.pixels(),
                );
                c.order.offer_snapshot(cluster::Snapshot { seq: c.seq, bytes });
                self.stats.cluster_snapshots_offered += 1;
            }
        }
        // Then this node's writes, unless the stream is not keeping up.
        if c.pending.len() >= CLUSTER_MAX_PENDING || c.refused.is_some() {
            self.stats.cluster_stalls += 1;
            Self::propose(c, &mut self.stats);
            return done;
        }
        for (w, link) in self.shared.links.iter().enumerate() {
            let mut n = 0;
            while n < self.cfg.batch_drain && c.outgoing.len() < cluster::MAX_WRITES_PER_PROPOSAL {
                let Some(px) = link.writes.pop() else { break };
                c.outgoing.push((px.index, px.color));
                n += 1;
            }
            c.out_counts[w] += n as u64;
            done += n;
        }
        if c.outgoing.len() >= cluster::MAX_WRITES_PER_PROPOSAL {
            Self::propose(c, &mut self.stats);
        }
        done
    }

    /// Propose the writes taken since the last proposal (or retry the one the queue refused).
    fn propose(c: &mut ClusterState, stats: &mut MasterStats) {
        let p = match c.refused.take() {
            Some(p) => p,
            None if c.outgoing.is_empty() => return,
            None => {
                let batch = c.next_batch;
                c.next_batch += 1;
                let zero = vec![0; c.out_counts.len()];
                let counts = std::mem::replace(&mut c.out_counts, zero);
                c.pending.push_back((batch, counts));
                cluster::Proposal { batch, writes: std::mem::take(&mut c.outgoing) }
            }
        };
        match c.order.propose(p) {
            Ok(()) => stats.cluster_proposed += 1,
            Err(p) => c.refused = Some(p),
        }
    }

    /// The next tick's number: in cluster mode the stream position it is at (see [`CLUSTER_TICK_SHIFT`]),
    /// None when a quiet tick cannot be numbered (65,535 quiet ticks at one position: skipped).
    fn next_tick(&mut self) -> Option<u64> {
        let Some(c) = &mut self.cluster else { return Some(self.tick + 1) };
        if c.seq != c.seq_at_tick || self.tick >> CLUSTER_TICK_SHIFT < c.seq {
            c.seq_at_tick = c.seq;
            return Some(c.seq << CLUSTER_TICK_SHIFT);
        }
        let next = self.tick + 1;
        (next >> CLUSTER_TICK_SHIFT == c.seq).then_some(next)
    }

    /// Close the current tick, commit it to the log (if any) and publish it to every worker. When the log
    /// refuses it, nothing is published from then on and the server is told to stop: a write is never
    /// ACKed unless its tick is in the log.
    pub fn end_tick(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Some(c) = &mut self.cluster {
            Self::propose(c, &mut self.stats);
        }
        let Some(tick) = self.next_tick() else { return };
        let t0 = Instant::now();
        let prev = self.tick;
        self.tick = tick;
        self.entries.clear();
        self.canvas.end_tick(&mut self.entries);
        let hash = self.canvas.hash();
        let base = self.last_change;
        if !self.entries.is_empty() {
            self.last_change = self.tick;
            self.stats.pixels_changed += self.entries.len() as u64;
        }
        if let Some((log, _)) = &mut self.log {
            if let Err(e) = log.commit(self.tick, &self.entries) {
                self.failed = Some(format!(
                    "placement log: {e}. Stopping: tick {} and the writes in it are not acknowledged",
                    self.tick
                ));
                self.shared.shutdown.store(true, Ordering::Release);
                return;
            }
        }
        let wanted = self.shared.snapshot_wanted.swap(false, Ordering::AcqRel);
        // Every `full_interval` ticks (cluster mode: published ticks, since tick numbers jump there).
        let nth = if self.cluster.is_some() { self.stats.ticks + 1 } else { self.tick };
        let snapshot = if nth.is_multiple_of(self.cfg.full_interval) || wanted {
            if self.latest_snapshot.hash != hash || self.latest_snapshot.tick < self.last_change || wanted {
                let s = Snapshot::encode(
                    self.tick,
                    hash,
                    self.canvas.dims(),
                    self.canvas.pixels(),
                    self.cfg.max_dgram,
                );
                self.latest_snapshot = Arc::new(s);
                self.stats.snapshots += 1;
            }
            Some(self.latest_snapshot.clone())
        } else {
            None
        };
        let full = nth.is_multiple_of(self.cfg.full_interval);
        let mut p = Publication::encode(
            self.tick,
            base,
            hash,
            &self.entries,
            self.cfg.max_dgram,
            self.applied.clone(),
            snapshot,
        );
        p.prev = prev;
        p.full = full;
        self.publish(Arc::new(p));
        self.stats.ticks += 1;
        if let Some((log, every)) = &mut self.log {
            if *every > 0 && self.tick.is_multiple_of(*every) {
                match log.snapshot(self.tick, hash, self.canvas.pixels()) {
                    Ok(()) => self.stats.log_snapshots += 1,
                    // Not fatal: the log still holds every tick; the restart replays more of it.
                    Err(e) => {
                        self.stats.log_snapshot_errors += 1;
                        eprintln!("server: placement log: snapshot at tick {} failed: {e}", self.tick);
                    }
                }
            }
        }
        let us = t0.elapsed().as_micros() as u64;
        self.stats.max_tick_us = self.stats.max_tick_us.max(us);
        if let Some(live) = &self.live {
            live.record_tick(self.stats, us, self.tick, hash, self.canvas.pixels());
        }
    }

    fn publish(&self, p: Arc<Publication>) {
        for link in &self.shared.links {
            if link.publications.push(p.clone()).is_err() {
                link.publications_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Run until `shared.shutdown`: drain continuously, tick every interval, sleep briefly when idle.
    pub fn run(&mut self, idle_sleep: Duration) {
        let mut next = Instant::now() + self.cfg.tick;
        while !self.shared.shutdown.load(Ordering::Acquire) {
            let n = self.drain();
            let now = Instant::now();
            if now >= next {
                self.end_tick();
                next += self.cfg.tick;
                if next < now {
                    next = now + self.cfg.tick; // fell behind: do not burst ticks
                }
            } else if n == 0 {
                std::thread::sleep(idle_sleep.min(next - now));
            }
        }
        self.drain();
        self.end_tick();
        if let Some(c) = &mut self.cluster {
            c.order.close(Duration::from_secs(1));
        }
        if let Some((log, _)) = &mut self.log {
            if let Err(e) = log.sync() {
                self.failed.get_or_insert(format!("placement log: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use canvas::Dims;
    use placelog::{LogError, TickBatch};

    use super::*;
    use crate::link::WorkerLink;
    use crate::publish::PixelWrite;

    type Committed = Arc<Mutex<Vec<TickBatch>>>;

    /// Records what was committed; refuses ticks from `fail_at` on.
    #[derive(Debug)]
    struct TestLog {
        committed: Committed,
        fail_at: u64,
    }

    impl PlacementLog for TestLog {
        fn commit(&mut self, tick: u64, changes: &[(u32, u8)]) -> Result<(), LogError> {
            if tick >= self.fail_at {
                return Err(LogError::Refused("disk full".into()));
            }
            self.committed.lock().unwrap().push(TickBatch { tick, changes: changes.to_vec() });
            Ok(())
        }
        fn snapshot(&mut self, _: u64, _: u64, _: &[u8]) -> Result<(), LogError> {
            Ok(())
        }
        fn read_after(&self, _: u64) -> Result<Vec<TickBatch>, LogError> {
            Ok(Vec::new())
        }
        fn sync(&mut self) -> Result<(), LogError> {
            Ok(())
        }
    }

    /// A master over a 4×4 canvas with one worker whose write queue holds `writes`, starting at `start`.
    fn bare(writes: usize, start: u64) -> (Master<Vec<u8>>, Arc<Shared>) {
        let shared = Arc::new(Shared {
            links: vec![WorkerLink::new(writes, 64)],
            snapshot_wanted: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let dims = Dims { width: 4, height: 4 };
        let cfg = MasterConfig {
            batch_drain: 64,
            tick: Duration::from_millis(100),
            full_interval: 60,
            max_dgram: 1200,
        };
        (Master::starting_at(Canvas::new(dims, vec![0; 16]).unwrap(), cfg, shared.clone(), start), shared)
    }

    fn master(start: u64, fail_at: u64) -> (Master<Vec<u8>>, Arc<Shared>, Committed) {
        let (mut m, shared) = bare(64, start);
        let committed = Arc::new(Mutex::new(Vec::new()));
        m.set_log(Box::new(TestLog { committed: committed.clone(), fail_at }), 0);
        (m, shared, committed)
    }

    /// An in-memory stream: proposals are ordered as they arrive (unless `down`), every node reads it all.
    #[derive(Debug, Default)]
    struct MemStream {
        log: Mutex<Vec<cluster::Ordered>>,
        down: AtomicBool,
    }

    #[derive(Debug)]
    struct MemNode {
        stream: Arc<MemStream>,
        inc: u64,
        cursor: Mutex<usize>,
        offered: Arc<Mutex<Vec<cluster::Snapshot>>>,
    }

    impl GlobalOrder for MemNode {
        fn incarnation(&self) -> u64 {
            self.inc
        }
        fn propose(&self, p: cluster::Proposal) -> Result<(), cluster::Proposal> {
            if self.stream.down.load(Ordering::Acquire) {
                return Err(p);
            }
            let mut log = self.stream.log.lock().unwrap();
            let seq = log.len() as u64 + 1;
            let batch = Ok(cluster::wire::Batch {
                incarnation: self.inc,
                first: p.batch,
                last: p.batch,
                writes: p.writes,
            });
            log.push(cluster::Ordered { seq, batch });
            Ok(())
        }
        fn poll(&self, max: usize, out: &mut Vec<cluster::Ordered>) -> usize {
            let log = self.stream.log.lock().unwrap();
            let mut c = self.cursor.lock().unwrap();
            let n = (log.len() - *c).min(max);
            out.extend_from_slice(&log[*c..*c + n]);
            *c += n;
            n
        }
        fn offer_snapshot(&self, snap: cluster::Snapshot) {
            self.offered.lock().unwrap().push(snap);
        }
    }

    fn cluster_node(stream: &Arc<MemStream>, inc: u64) -> (Master<Vec<u8>>, Arc<Shared>) {
        let (mut m, shared) = bare(256, 0);
        let node =
            MemNode { stream: stream.clone(), inc, cursor: Mutex::new(0), offered: Default::default() };
        m.set_cluster(Box::new(node), 0, 32, None);
        (m, shared)
    }

    /// (tick, ACKed writes of worker 0) of every publication since the last call.
    fn published(shared: &Shared) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| shared.links[0].publications.pop()).map(|p| (p.tick, p.applied[0])).collect()
    }

    #[test]
    fn cluster_nodes_apply_one_order_and_ack_only_what_came_back() {
        let stream = Arc::new(MemStream::default());
        let (mut a, sa) = cluster_node(&stream, 0xa);
        let (mut b, sb) = cluster_node(&stream, 0xb);
        published(&sa);
        published(&sb);
        // Both nodes write pixel 0 (and one each of their own); A's batch reaches the stream first.
        sa.links[0].writes.push(PixelWrite { index: 0, color: 1 }).unwrap();
        sa.links[0].writes.push(PixelWrite { index: 1, color: 2 }).unwrap();
        sb.links[0].writes.push(PixelWrite { index: 0, color: 3 }).unwrap();
        sb.links[0].writes.push(PixelWrite { index: 2, color: 4 }).unwrap();
        a.drain();
        a.end_tick(); // proposes A's batch (seq 1); nothing came back yet: tick 0 + 1, nothing ACKed
        assert_eq!(published(&sa), vec![(1, 0)]);
        b.drain(); // applies A's batch (seq 1): B's tick is at position 1
        b.end_tick(); // proposes B's batch (seq 2)
        assert_eq!(published(&sb), vec![(1 << CLUSTER_TICK_SHIFT, 0)]);
        for m in [&mut a, &mut b] {
            m.drain();
            m.end_tick();
        }
        // Both applied seq 1 then 2: B's color wins pixel 0 on both; each ACKs its own two writes.
        assert_eq!(published(&sa), vec![(2 << CLUSTER_TICK_SHIFT, 2)]);
        assert_eq!(published(&sb), vec![(2 << CLUSTER_TICK_SHIFT, 2)]);
        assert_eq!(a.canvas().pixels()[..3], [3, 2, 4]);
        assert_eq!(a.canvas().hash(), b.canvas().hash());
        // A quiet tick at the same position counts up from it.
        a.drain();
        a.end_tick();
        assert_eq!(published(&sa), vec![((2 << CLUSTER_TICK_SHIFT) + 1, 2)]);
        assert_eq!(a.stats().cluster_seq, 2);
    }

    #[test]
    fn a_cluster_node_offers_snapshots_of_the_canvas_at_its_stream_position() {
        let stream = Arc::new(MemStream::default());
        let offered = Arc::new(Mutex::new(Vec::new()));
        let (mut m, shared) = bare(256, 0);
        let node =
            MemNode { stream: stream.clone(), inc: 0xa, cursor: Mutex::new(0), offered: offered.clone() };
        // Every 0 s: whenever the position moved.
        m.set_cluster(Box::new(node), 0, 32, Some(Duration::ZERO));
        let dims = m.canvas().dims();
        for round in 1..=3u8 {
            shared.links[0].writes.push(PixelWrite { index: u32::from(round), color: round }).unwrap();
            m.drain(); // proposes at the end of the tick ...
            m.end_tick();
            m.drain(); // ... and applies it here, then offers the canvas at that position
            m.end_tick();
            m.drain(); // the position did not move: nothing offered
        }
        let offered = offered.lock().unwrap();
        assert_eq!(offered.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        for s in offered.iter() {
            let d = placelog::format::decode_snapshot(&s.bytes, dims).expect("a valid snapshot");
            assert_eq!(d.tick, s.seq, "at the position it names");
            let want: Vec<u8> =
                (0..16u8).map(|i| if (1..=s.seq as u8).contains(&i) { i } else { 0 }).collect();
            assert_eq!(d.pixels, want, "the canvas holding exactly messages 1..={}", s.seq);
        }
        assert_eq!(m.stats().cluster_snapshots_offered, 3);
    }

    #[test]
    fn a_cluster_node_that_cannot_order_stops_taking_writes_and_catches_up() {
        let stream = Arc::new(MemStream::default());
        let (mut a, sa) = cluster_node(&stream, 0xa);
        published(&sa);
        stream.down.store(true, Ordering::Release);
        for i in 0..10u32 {
            sa.links[0].writes.push(PixelWrite { index: i, color: 1 }).unwrap();
            a.drain();
            a.end_tick();
        }
        // The first batch was refused and is held: nothing more was drained, nothing ACKed.
        assert_eq!(
            sa.links[0].writes.len(),
            9,
            "writes left in the worker's queue (it answers busy when full)"
        );
        assert!(published(&sa).iter().all(|&(_, acked)| acked == 0));
        assert!(a.stats().cluster_stalls > 0);
        stream.down.store(false, Ordering::Release);
        for _ in 0..4 {
            a.drain();
            a.end_tick();
        }
        let p = published(&sa);
        assert_eq!(p.last().unwrap().1, 10, "every write ACKed once ordered: {p:?}");
        assert!(a.canvas().pixels()[..10].iter().all(|&c| c == 1));
        assert_eq!(a.stats().cluster_invalid, 0);
    }

    #[test]
    fn every_published_tick_was_committed_first_and_a_refusal_stops_publishing() {
        let (mut m, shared, committed) = master(700, 703);
        let link = &shared.links[0];
        assert_eq!(link.publications.pop().unwrap().tick, 700, "the restored start tick");
        for t in 0..5u32 {
            link.writes.push(PixelWrite { index: t, color: 1 + t as u8 }).unwrap();
            m.drain();
            m.end_tick();
        }
        // Ticks 701 and 702 were committed, then published with their ACK counts; 703 was refused.
        let ticks: Vec<u64> = committed.lock().unwrap().iter().map(|b| b.tick).collect();
        assert_eq!(ticks, vec![701, 702]);
        let published: Vec<(u64, u64)> =
            std::iter::from_fn(|| link.publications.pop()).map(|p| (p.tick, p.applied[0])).collect();
        assert_eq!(
            published,
            vec![(701, 1), (702, 2)],
            "nothing after the refused tick is published or ACKed"
        );
        assert!(shared.shutdown.load(Ordering::Acquire), "the server is told to stop");
        assert!(m.failure().unwrap().contains("disk full"), "{:?}", m.failure());
    }
}
