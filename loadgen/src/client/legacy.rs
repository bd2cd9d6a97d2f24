//! A legacy (`h3`) client: 5-byte write datagrams out, diff/RLE-snapshot datagrams into a
//! [`LegacyReplica`].
//!
//! There are no acks: a write counts as applied when a diff entry for its pixel index arrives after it was
//! sent (an overwrite by another client counts too). Every 60th tick the server sends the whole canvas
//! *instead of* that tick's diff, so a write applied in such a tick shows up only in the snapshot: when a
//! snapshot completes, outstanding writes whose pixel now has their color count as observed. A write of
//! the color the replica already shows cannot produce a diff entry, so it is counted as a no-op instead of
//! waiting forever; writes not observed within [`OBSERVE_TIMEOUT`] are dropped from tracking and counted
//! as unobserved.
//!
//! A light client (beyond `--replicas`) keeps no replica: it scans diff entries and snapshot runs for the
//! pixels of its own outstanding writes only (it cannot tell no-op writes, so they end as unobserved).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canvas::legacy::{self, LegacyReplica, LegacyStats};
use rand::rngs::SmallRng;
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use super::{micros, next_phase, random_pixel, recv_datagrams, Ctx, Failure, Phase, ReplicaSlot, Slot};
/// A write not seen in any diff by then is no longer tracked (10 full-snapshot periods of 6 s would be
/// too long to keep state for; 100 ticks is plenty for a diff).
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outstanding-write map is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

enum Ev {
    Phase(Phase),
    Datagrams,
    WriteTimer,
}

/// Outstanding writes: pixel index -> (sent at, color).
type Outstanding = FxHashMap<u32, (Instant, u8)>;

/// A light client's reading of legacy broadcasts: no pixels kept, only the writes it waits for.
#[derive(Debug, Default)]
struct LightScan {
    /// Position reached in the snapshot being received.
    snap_pos: Option<usize>,
    /// Whole snapshots seen.
    snapshots: u64,
    /// Unusable datagrams (as [`LegacyReplica`] counts them).
    errors: u64,
    /// Scratch: outstanding writes sorted by index while a snapshot datagram is scanned.
    sorted: Vec<(u32, u8)>,
}

impl LightScan {
    /// Scan one datagram; `seen(sent_at)` for every outstanding write it shows.
    fn scan(&mut self, d: &[u8], total: usize, out: &mut Outstanding, mut seen: impl FnMut(Instant)) {
        match legacy::classify(d) {
            legacy::Kind::Diff => {
                if self.snap_pos.take().is_some() {
                    self.errors += 1; // interrupted snapshot
                }
                if !out.is_empty() {
                    for (i, _) in legacy::diff_entries(d) {
                        if let Some((sent, _)) = out.remove(&i) {
                            seen(sent);
                        }
                    }
                }
            }
            legacy::Kind::Snapshot => {
                let mut pos = self.snap_pos.take().unwrap_or(0);
                let start = pos;
                // Walk the runs and the sorted outstanding writes together: O(runs + writes).
                self.sorted.clear();
                self.sorted.extend(out.iter().map(|(&i, &(_, c))| (i, c)));
                self.sorted.sort_unstable();
                let mut k = self.sorted.partition_point(|&(i, _)| (i as usize) < start);
                for pair in d.chunks_exact(2) {
                    let (count, color) = (usize::from(pair[0]), pair[1]);
                    while k < self.sorted.len() && (self.sorted[k].0 as usize) < pos + count {
                        let (i, c) = self.sorted[k];
                        if c == color {
                            if let Some((sent, _)) = out.remove(&i) {
                                seen(sent);
                            }
                        }
                        k += 1;
                    }
                    pos += count;
                }
                match pos.cmp(&total) {
                    std::cmp::Ordering::Less => self.snap_pos = Some(pos),
                    std::cmp::Ordering::Equal => self.snapshots += 1,
                    std::cmp::Ordering::Greater => self.errors += 1,
                }
            }
            legacy::Kind::Invalid => self.errors += 1,
        }
    }
}

/// Run the protocol on an established connection until the phase says `Close` (Ok) or it fails.
pub async fn drive(
    ctx: &Ctx,
    slot: &Slot,
    conn: &quinn::Connection,
    rng: &mut SmallRng,
    phase: &mut watch::Receiver<Phase>,
    full: bool,
) -> Result<(), Failure> {
    let dims = ctx.legacy_dims;
    if full {
        *slot.replica() = ReplicaSlot::Legacy(Box::new(LegacyReplica::new(dims)));
    }
    let mut light = LightScan::default();
    let c = &ctx.counters;
    // Pixel index -> (sent at, color) of this client's writes not yet seen in a broadcast.
    let mut outstanding = Outstanding::default();
    let mut seen = LegacyStats::default();
    let mut lat: Vec<u64> = Vec::new();
    let mut dgrams: Vec<Bytes> = Vec::new();
    let mut writing = *phase.borrow() == Phase::Run;
    let start = Instant::now();
    let mut next_prune = start + PRUNE_EVERY;
    let write_sleep = tokio::time::sleep_until(ctx.next_write_at(rng, start));
    tokio::pin!(write_sleep);
    loop {
        let ev = tokio::select! {
            biased;
            p = next_phase(phase) => match p {
                Some(p) => Ev::Phase(p),
                None => return Ok(()),
            },
            () = &mut write_sleep, if writing => Ev::WriteTimer,
            // Last: under overload datagrams are always ready, and must not starve the writes.
            r = recv_datagrams(conn, &mut dgrams, c) => r.map(|()| Ev::Datagrams)?,
        };
        let now = Instant::now();
        match ev {
            Ev::Phase(p) => writing &= p == Phase::Run,
            Ev::WriteTimer => {
                let pixel = random_pixel(rng, dims);
                let index = dims.index(pixel.x, pixel.y).expect("in bounds");
                conn.send_datagram(Bytes::copy_from_slice(&legacy::encode_write(pixel))).map_err(
                    |e| match e {
                        quinn::SendDatagramError::ConnectionLost(e) => Failure::conn(&e),
                        other => Failure::protocol(format!("sending a write: {other}")),
                    },
                )?;
                c.pixels_sent.fetch_add(1, Relaxed);
                let noop = match &*slot.replica() {
                    ReplicaSlot::Legacy(r) => r.synced() && r.pixels()[index as usize] == pixel.color,
                    _ => false,
                };
                if noop {
                    c.legacy_noop_writes.fetch_add(1, Relaxed);
                } else {
                    outstanding.entry(index).or_insert((now, pixel.color));
                }
                write_sleep.as_mut().reset(ctx.next_write_at(rng, now));
            }
            Ev::Datagrams => {
                let mut observed = 0u64;
                let mut saw = |sent: Instant| {
                    lat.push(micros(sent, now));
                    observed += 1;
                };
                // Only full clients take the replica lock.
                let mut rep = full.then(|| slot.replica());
                let st = if let Some(ReplicaSlot::Legacy(r)) = rep.as_deref_mut() {
                    for d in &dgrams {
                        let snapshots_before = r.stats().snapshots;
                        r.on_datagram(d, |i, _| {
                            if outstanding.is_empty() {
                                return;
                            }
                            if let Some((sent, _)) = outstanding.remove(&i) {
                                saw(sent);
                            }
                        });
                        if r.stats().snapshots > snapshots_before && !outstanding.is_empty() {
                            // A full snapshot replaced a tick's diff: writes it shows are observed.
                            let px = r.pixels();
                            outstanding.retain(|&i, &mut (sent, color)| {
                                let shown = px[i as usize] == color;
                                if shown {
                                    saw(sent);
                                }
                                !shown
                            });
                        }
                    }
                    r.stats()
                } else {
                    for d in &dgrams {
                        light.scan(d, dims.len(), &mut outstanding, &mut saw);
                    }
                    LegacyStats { snapshots: light.snapshots, diffs: 0, errors: light.errors }
                };
                drop(rep);
                c.applied.fetch_add(observed, Relaxed);
                c.snapshots.fetch_add(st.snapshots - seen.snapshots, Relaxed);
                c.legacy_errors.fetch_add(st.errors - seen.errors, Relaxed);
                seen = st;
                dgrams.clear();
            }
        }
        if now >= next_prune {
            next_prune = now + PRUNE_EVERY;
            let before = outstanding.len();
            outstanding.retain(|_, (sent, _)| now.saturating_duration_since(*sent) < OBSERVE_TIMEOUT);
            c.legacy_unobserved.fetch_add((before - outstanding.len()) as u64, Relaxed);
        }
        slot.unresolved.store(outstanding.len() as u32, Relaxed);
        ctx.latency.record(&mut lat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canvas::Datagrams;

    #[test]
    fn light_scan_sees_diffs_and_snapshot_runs() {
        let t = Instant::now();
        let mut out = Outstanding::default();
        out.insert(7, (t, 3));
        out.insert(50, (t, 9)); // overwritten by someone else: snapshot shows another color
        out.insert(90, (t, 1));
        let mut px = vec![0u8; 100];
        px[7] = 3;
        px[50] = 2;
        px[90] = 1;
        let mut snap = Datagrams::new();
        legacy::encode_snapshot(&px, 6, &mut snap); // several datagrams, runs split across them
        assert!(snap.len() > 1);
        let mut l = LightScan::default();
        let mut n = 0;
        for d in snap.iter() {
            l.scan(d, px.len(), &mut out, |_| n += 1);
        }
        assert_eq!((l.snapshots, l.errors, n), (1, 0, 2));
        assert!(out.contains_key(&50));
        let mut diff = Datagrams::new();
        legacy::encode_diff(&[(50, 4)], 1200, &mut diff);
        l.scan(diff.get(0).unwrap(), px.len(), &mut out, |_| n += 1);
        assert_eq!((n, out.len()), (3, 0), "a diff entry for the pixel counts whatever its color");
    }
}
