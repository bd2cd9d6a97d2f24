//! The master: the single writer of the canvas. It drains every worker's bounded write queue in batches,
//! applies the writes in that one global order, and every broadcast interval closes a tick and publishes it.

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

    /// Drain up to `batch_drain` writes from each worker; returns how many were applied.
    pub fn drain(&mut self) -> usize {
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

    /// Close the current tick, commit it to the log (if any) and publish it to every worker. When the log
    /// refuses it, nothing is published from then on and the server is told to stop: a write is never
    /// ACKed unless its tick is in the log.
    pub fn end_tick(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let t0 = Instant::now();
        self.tick += 1;
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
        let snapshot = if self.tick.is_multiple_of(self.cfg.full_interval) || wanted {
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
        let p = Publication::encode(
            self.tick,
            base,
            hash,
            &self.entries,
            self.cfg.max_dgram,
            self.applied.clone(),
            snapshot,
        );
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

    fn master(start: u64, fail_at: u64) -> (Master<Vec<u8>>, Arc<Shared>, Committed) {
        let shared = Arc::new(Shared {
            links: vec![WorkerLink::new(64, 64)],
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
        let mut m = Master::starting_at(Canvas::new(dims, vec![0; 16]).unwrap(), cfg, shared.clone(), start);
        let committed = Arc::new(Mutex::new(Vec::new()));
        m.set_log(Box::new(TestLog { committed: committed.clone(), fail_at }), 0);
        (m, shared, committed)
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
