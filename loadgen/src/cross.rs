//! Write → visible across servers (`--observe`): observers are full replicas connected to other servers
//! of the same canvas (other `--cluster` nodes) that never write. A write sent by one of this process's
//! clients and ACKed at tick T is visible on an observer's server once the observer's replica reached T
//! (a tick names the same canvas on every node of a cluster); the sample is that moment minus the moment
//! the write was sent, so it includes the writer's round trip to its own server, the stream, and the other
//! server's broadcast.
//!
//! The ACK and the observer's progress arrive in either order: each observer keeps the ticks it reached
//! with when (a write ACKed at a tick the observer already passed takes the time it passed it) and the
//! writes ACKed at ticks it has not reached yet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::micros;
use crate::stats::Latency;

/// How long an observer remembers when it reached a tick (ACKs arrive well within this).
const REMEMBER: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct Observer {
    /// The newest tick the observer's replica reached.
    tick: Option<u64>,
    /// (tick, when reached), ticks increasing.
    reached: VecDeque<(u64, Instant)>,
    /// ACKed writes at ticks not reached yet: tick → send times.
    waiting: BTreeMap<u64, Vec<Instant>>,
    waiting_len: usize,
}

/// The observers of one process and their latency samples.
#[derive(Debug)]
pub struct Cross {
    observers: Vec<Mutex<Observer>>,
    /// Write → visible on another server.
    pub latency: Latency,
    /// Observers whose connection failed for good (their server died).
    pub failed: std::sync::atomic::AtomicU64,
}

impl Cross {
    /// `n` observers.
    pub fn new(n: usize) -> Self {
        Self {
            observers: (0..n).map(|_| Mutex::default()).collect(),
            latency: Latency::default(),
            failed: Default::default(),
        }
    }

    /// An observer's connection failed for good.
    pub fn observer_failed(&self) {
        self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A write sent at `sent` was ACKed at `tick` (by the writer's server).
    pub fn acked(&self, tick: u64, sent: Instant) {
        let mut samples = Vec::new();
        for o in &self.observers {
            let mut o = o.lock().expect("observer lock");
            if o.tick.is_some_and(|t| t >= tick) {
                // Reached already: when it first reached `tick` or later (the oldest remembered, if that
                // is already forgotten).
                let i = o.reached.partition_point(|&(t, _)| t < tick);
                let at = o.reached.get(i).or(o.reached.front()).map_or(sent, |&(_, at)| at);
                samples.push(micros(sent, at));
            } else {
                o.waiting.entry(tick).or_default().push(sent);
                o.waiting_len += 1;
            }
        }
        self.latency.record(&mut samples);
    }

    /// Observer `i`'s replica is at `tick` (`now`).
    pub fn reached(&self, i: usize, tick: u64, now: Instant) {
        let mut samples = Vec::new();
        {
            let mut o = self.observers[i].lock().expect("observer lock");
            if o.tick.is_none_or(|t| tick > t) {
                o.tick = Some(tick);
                o.reached.push_back((tick, now));
                while o.reached.front().is_some_and(|&(_, at)| now.duration_since(at) > REMEMBER) {
                    o.reached.pop_front();
                }
                let later = o.waiting.split_off(&(tick + 1));
                for sent in std::mem::replace(&mut o.waiting, later).into_values().flatten() {
                    samples.push(micros(sent, now));
                    o.waiting_len -= 1;
                }
            }
        }
        self.latency.record(&mut samples);
    }

    /// ACKed writes observer `i` has not seen.
    pub fn not_seen(&self, i: usize) -> usize {
        self.observers[i].lock().expect("observer lock").waiting_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_progress_in_either_order() {
        let x = Cross::new(2);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Observer 0 reaches 10 at 5 ms; a write sent at 0 is ACKed at 10 later: 5 ms.
        x.reached(0, 10, ms(5));
        x.acked(10, t0);
        // Observer 1 has not: it waits, and counts when reached (at 30 ms), and not twice.
        assert_eq!(x.not_seen(1), 1);
        x.reached(1, 12, ms(30));
        x.reached(1, 12, ms(40));
        assert_eq!(x.not_seen(1), 0);
        // A write ACKed at 20 sent at 10 ms: observer 0 reaches 25 at 50 ms (40 ms); observer 1 is at 12.
        x.acked(20, ms(10));
        x.reached(0, 25, ms(50));
        assert_eq!(x.not_seen(0), 0);
        assert_eq!(x.not_seen(1), 1);
        let l = x.latency.total();
        assert_eq!(l.samples, 3);
        assert!((l.max - 40.0).abs() < 0.1, "{l:?}");
        // A tick already passed, between two remembered ones: the time the later one was reached.
        x.acked(15, ms(20));
        let l = x.latency.total();
        assert_eq!(l.samples, 4);
        assert_eq!(x.not_seen(1), 2);
    }
}
