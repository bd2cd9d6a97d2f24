//! The master: the single writer of the canvas. It drains every worker's bounded write queue in batches,
//! applies the writes in that one global order, and every broadcast interval closes a tick and publishes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canvas::Canvas;

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
    /// Longest time spent closing and encoding one tick, in microseconds.
    pub max_tick_us: u64,
}

/// Where the master reports each closed tick: its counters, how long closing it took, its number and the
/// canvas (the live metrics implement it for `--metrics-addr`; defined here so that the master depends on
/// no observer).
pub trait TickObserver: Send + Sync + std::fmt::Debug {
    /// Called once per tick, right after it was published, on the master's thread.
    fn record_tick(&self, stats: MasterStats, tick_us: u64, tick: u64, pixels: &[u8]);
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
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> Master<S> {
    /// A master over `canvas`; publishes tick 0 (the initial snapshot) to every worker.
    pub fn new(canvas: Canvas<S>, cfg: MasterConfig, shared: Arc<Shared>) -> Self {
        let snap =
            Arc::new(Snapshot::encode(0, canvas.hash(), canvas.dims(), canvas.pixels(), cfg.max_dgram));
        let n = shared.links.len();
        let m = Self {
            canvas,
            cfg,
            shared,
            applied: vec![0; n],
            tick: 0,
            last_change: 0,
            latest_snapshot: snap.clone(),
            entries: Vec::new(),
            stats: MasterStats { snapshots: 1, ..Default::default() },
            live: None,
        };
        let p0 =
            Arc::new(Publication::encode(0, 0, m.canvas.hash(), &[], cfg.max_dgram, vec![0; n], Some(snap)));
        m.publish(p0);
        m
    }

    /// Report every tick (duration, counters) and a canvas copy once a second to `live` (`--metrics-addr`).
    pub fn set_live(&mut self, live: Arc<dyn TickObserver>) {
        self.live = Some(live);
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

    /// Close the current tick and publish it to every worker.
    pub fn end_tick(&mut self) {
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
        let us = t0.elapsed().as_micros() as u64;
        self.stats.max_tick_us = self.stats.max_tick_us.max(us);
        if let Some(live) = &self.live {
            live.record_tick(self.stats, us, self.tick, self.canvas.pixels());
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
    }
}
