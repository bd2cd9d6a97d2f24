//! A `canvas/1` client's copy of the canvas, and the rules that make it converge.
//!
//! The replica is at a tick `t` (its content equals the server canvas after tick `t`). A diff
//! `(tick T, base B, hash H)` applies when `B <= t < T` — no tick in `(B, T)` changed anything — and after it
//! the replica must hash to `H`. Diff parts arrive as datagrams in any order and may be lost: parts are
//! buffered per tick (bounded), and when a gap persists (a missing tick, a missing part, too much buffered,
//! or a hash mismatch) [`Replica::poll_sync`] tells the caller to send `SYNC{have_tick}`; the server answers
//! on the reliable stream with the missing diffs or a snapshot, then SYNCED. One SYNC is in flight at a
//! time. Time is passed in by the caller.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::grid::Dims;
use crate::hash;
use crate::proto::{self, DiffView, ProtoError, ServerDatagram, ServerMsg, SnapshotEncoding, NO_TICK};
use std::sync::Arc;

/// How long a gap may persist before it is repaired by a SYNC (covers datagram reordering).
pub const DEFAULT_GAP_GRACE: Duration = Duration::from_millis(250);
/// Most ticks buffered ahead of the replica before it gives up waiting and syncs.
pub const DEFAULT_MAX_PENDING: usize = 64;
/// The patience ([`Replica::patience`]) is at most this many gap graces (10 s at the default 250 ms): a
/// loss under a broadcast that slow is repaired that late, and only then.
pub const MAX_PATIENCE_GRACES: u32 = 40;

#[derive(Debug)]
struct Pending {
    base: u64,
    hash: u64,
    have: Vec<bool>,
    missing: usize,
    entries: Vec<u8>,
    /// When the tick was first seen or last got a new part: a diff whose parts keep arriving (a large
    /// catch-up delta through a slow path) is making progress, not stuck.
    progress_at: Instant,
}

/// Counters of a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Snapshots installed.
    pub snapshots: u64,
    /// Tick diffs applied.
    pub diffs_applied: u64,
    /// DIFF_PART datagrams received.
    pub parts: u64,
    /// Parts received twice or for ticks already applied.
    pub stale_parts: u64,
    /// SYNCs requested (the hello excluded), and why: ...
    pub syncs: u64,
    /// ... the lowest pending tick stayed incomplete or unchained for the patience (a loss),
    pub syncs_gap: u64,
    /// ... the replica stayed behind a tick the server named (ACK, HEAD) without progress for the patience,
    pub syncs_lag: u64,
    /// ... more than `max_pending` ticks were buffered,
    pub syncs_overfull: u64,
    /// ... or it had no usable state (diverged: a hash mismatch),
    pub syncs_fresh: u64,
    /// ... or a new connection resumed it from its tick ([`Replica::resume`]).
    pub syncs_resume: u64,
    /// Hash mismatches after applying a diff (each forces a snapshot).
    pub hash_mismatches: u64,
}

/// The replica.
#[derive(Debug)]
pub struct Replica {
    /// Empty until the first snapshot (a joining client allocates nothing before it has content).
    pixels: Vec<u8>,
    len: usize,
    prefix: Option<Arc<hash::PrefixTable>>,
    hash: u64,
    tick: Option<u64>,
    pending: BTreeMap<u64, Pending>,
    sync_outstanding: bool,
    diverged: bool,
    /// A tick the server says exists (HEAD or ACK) that the replica has not reached, and since when.
    behind: Option<(u64, Instant)>,
    grace: Duration,
    /// When the replica last moved forward, and the smoothed interval between such moves: the pace the
    /// broadcast actually arrives at (one tick interval normally; longer when the server or the path is
    /// past its capacity and sends fewer, larger deltas).
    last_advance: Option<Instant>,
    advance_gap: Duration,
    /// When the first message of the SYNC reply in flight arrived.
    reply_started: Option<Instant>,
    /// The transport's smoothed round-trip time, when the caller reports it ([`Replica::observe_rtt`]).
    rtt: Duration,
    max_pending: usize,
    stats: ReplicaStats,
}

impl Replica {
    /// A replica with no state yet. The client's first message is `SYNC{NO_TICK}` (its hello), which the
    /// server answers with WELCOME, SNAPSHOT, DIFF*, SYNCED: that SYNC counts as already outstanding.
    pub fn new(dims: Dims) -> Self {
        Self::with_limits(dims, DEFAULT_GAP_GRACE, DEFAULT_MAX_PENDING)
    }

    /// A replica with explicit gap grace and pending bound.
    pub fn with_limits(dims: Dims, grace: Duration, max_pending: usize) -> Self {
        Self {
            hash: 0,
            pixels: Vec::new(),
            len: dims.len(),
            prefix: None,
            tick: None,
            pending: BTreeMap::new(),
            sync_outstanding: true,
            diverged: false,
            behind: None,
            grace,
            last_advance: None,
            advance_gap: Duration::ZERO,
            reply_started: None,
            rtt: Duration::ZERO,
            max_pending: max_pending.max(1),
            stats: ReplicaStats::default(),
        }
    }

    /// The tick the replica is at (`None` before the first snapshot).
    pub fn tick(&self) -> Option<u64> {
        self.tick
    }

    /// The replica's pixels (empty before the first snapshot).
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Hash of the replica's pixels.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// True when a SYNC reply is awaited.
    pub fn sync_outstanding(&self) -> bool {
        self.sync_outstanding
    }

    /// Ticks buffered ahead of the replica.
    pub fn pending_ticks(&self) -> usize {
        self.pending.len()
    }

    /// The newest tick the server is known to have that the replica lacks (from a HEAD or an ACK), if any.
    pub fn behind_target(&self) -> Option<u64> {
        self.behind.map(|(t, _)| t)
    }

    /// Whether [`Replica::poll_sync`] may yet ask for a repair without anything more arriving: ticks are
    /// buffered ahead of the replica, or it knows of a tick it lacks. A client must keep calling
    /// `poll_sync` (every ~100 ms) while this holds, also when the connection has gone quiet: the last
    /// HEAD of a burst may be the only sign of a lost tail, and nothing else will wake it.
    pub fn needs_poll(&self) -> bool {
        !self.pending.is_empty() || self.behind.is_some()
    }

    /// The server has a tick `tick` whose changes the replica must eventually hold (from a HEAD datagram or
    /// an ACK). If the replica stays behind it longer than the grace period, [`Replica::poll_sync`] syncs.
    pub fn note_tick(&mut self, tick: u64, now: Instant) {
        if self.tick.is_some_and(|t| t >= tick) {
            return;
        }
        self.behind = match self.behind {
            Some((t, since)) => Some((t.max(tick), since)),
            None => Some((tick, now)),
        };
    }

    /// Consume a server datagram (DIFF_PART or HEAD).
    pub fn on_datagram(&mut self, d: &[u8], now: Instant) -> Result<(), ProtoError> {
        let p = match proto::decode_datagram(d)? {
            ServerDatagram::DiffPart(p) => p,
            ServerDatagram::Head { tick, last_change, hash } => {
                match self.tick.filter(|_| !self.diverged) {
                    // Newer than this (reordered) HEAD: nothing to learn.
                    Some(t) if t > tick => {}
                    // Current: nothing changed in (last_change, tick], so the replica is at `tick` too,
                    // and its hash must be the server's.
                    Some(t) if t >= last_change => {
                        if self.sync_ok_at(hash) {
                            // `advance` drops what is buffered for ticks up to `tick`.
                            self.tick = Some(tick);
                            self.advance(now)?;
                        }
                    }
                    _ => self.note_tick(last_change, now),
                }
                return Ok(());
            }
        };
        self.stats.parts += 1;
        if self.tick.is_some_and(|t| p.diff.tick <= t) {
            self.stats.stale_parts += 1;
            return Ok(());
        }
        let parts = usize::from(p.parts);
        let e = self.pending.entry(p.diff.tick).or_insert_with(|| Pending {
            base: p.diff.base,
            hash: p.diff.hash,
            have: vec![false; parts],
            missing: parts,
            entries: Vec::new(),
            progress_at: now,
        });
        if e.missing == 0 && e.hash == p.diff.hash && (e.have.len() != parts || e.base != p.diff.base) {
            // The tick is already whole from the control stream (a SYNC reply's DIFF, which may start from
            // another base): the same canvas at the same tick, so its datagram parts add nothing.
            self.stats.stale_parts += 1;
            return Ok(());
        }
        if e.have.len() != parts || e.base != p.diff.base || e.hash != p.diff.hash {
            return Err(ProtoError::BadPart);
        }
        let slot = &mut e.have[usize::from(p.part)];
        if *slot {
            self.stats.stale_parts += 1;
            return Ok(());
        }
        *slot = true;
        e.missing -= 1;
        e.progress_at = now;
        e.entries.extend_from_slice(p.diff.entries);
        // A new part is progress towards a tick the server named, too: a large delta arriving part by part
        // through a slow path is late, not lost (a SYNC would only send the same changes again).
        self.progressed(now);
        self.advance(now)
    }

    /// A HEAD's hash must match when the replica claims to be current; a mismatch means divergence.
    fn sync_ok_at(&mut self, hash: u64) -> bool {
        if self.hash != hash {
            self.stats.hash_mismatches += 1;
            self.diverged = true;
            return false;
        }
        true
    }

    /// Consume a control-stream message (SNAPSHOT, DIFF and SYNCED matter; others are ignored).
    pub fn on_message(&mut self, m: &ServerMsg<'_>, now: Instant) -> Result<(), ProtoError> {
        if self.sync_outstanding && self.reply_started.is_none() {
            self.reply_started = Some(now);
        }
        match *m {
            ServerMsg::Snapshot { tick, hash, dims, encoding, data } => {
                if dims.len() != self.len {
                    return Err(ProtoError::BadSnapshot);
                }
                if !self.diverged && self.tick.is_some_and(|t| t >= tick) {
                    return Ok(()); // already newer
                }
                if self.pixels.len() != self.len {
                    self.pixels = vec![0; self.len];
                }
                proto::decode_snapshot_body(encoding, data, &mut self.pixels)?;
                // With the shared prefix table: O(runs) for RLE, a `mix` per painted pixel only for the others.
                let prefix = self.prefix.get_or_insert_with(|| hash::PrefixTable::for_len(self.len));
                self.hash = match encoding {
                    SnapshotEncoding::Rle => prefix.of_rle(data),
                    SnapshotEncoding::Raw | SnapshotEncoding::Zstd => prefix.of_pixels(&self.pixels),
                };
                self.tick = Some(tick);
                self.diverged = self.hash != hash;
                if self.diverged {
                    self.stats.hash_mismatches += 1;
                }
                self.stats.snapshots += 1;
                self.advance(now)
            }
            ServerMsg::Diff(d) => {
                if self.tick.is_some_and(|t| d.tick <= t) {
                    return Ok(());
                }
                let have = vec![true];
                self.pending.insert(
                    d.tick,
                    Pending {
                        base: d.base,
                        hash: d.hash,
                        have,
                        missing: 0,
                        entries: d.entries.to_vec(),
                        progress_at: now,
                    },
                );
                self.advance(now)
            }
            ServerMsg::Synced { tick } => {
                self.sync_outstanding = false;
                // How long the reply took to arrive is the pace of this path right now (a join under
                // overload can take seconds): the broadcast that follows will not be faster, so the
                // patience starts from it rather than from the 250 ms grace.
                if let Some(started) = self.reply_started.take() {
                    self.advance_gap = self.advance_gap.max(now.saturating_duration_since(started));
                    self.last_advance = Some(now);
                }
                // The reply carried every change up to `tick`: once applied, the replica is at `tick`.
                if let Some(t) = self.tick.filter(|_| !self.diverged) {
                    if self.pending.first_key_value().is_none_or(|(&k, _)| k > tick) || t >= tick {
                        self.tick = Some(t.max(tick));
                    }
                }
                if let Some((t, _)) = self.behind {
                    self.behind = Some((t, now));
                }
                // Whatever is still buffered gets a fresh grace period before it can trigger another SYNC.
                for p in self.pending.values_mut() {
                    p.progress_at = now;
                }
                self.advance(now)
            }
            _ => Ok(()),
        }
    }

    /// Apply every buffered tick that chains onto the replica. Still behind a tick the server named, but
    /// moved forward: the broadcast is late (a path or a server past its capacity delivers fewer, larger
    /// deltas), not lost, so the grace period starts again; only a replica that stops advancing syncs.
    fn advance(&mut self, now: Instant) -> Result<(), ProtoError> {
        let before = self.tick;
        let res = self.advance_inner();
        if before.is_some() && self.tick > before {
            if let Some(prev) = self.last_advance {
                // EWMA with weight 1/4: a few slow waves raise the patience, a few fast ones lower it.
                self.advance_gap = (self.advance_gap * 3 + now.saturating_duration_since(prev)) / 4;
            }
            self.last_advance = Some(now);
            self.progressed(now);
        }
        if self.behind.is_some_and(|(target, _)| self.tick.is_some_and(|t| t >= target)) {
            self.behind = None;
        }
        res
    }

    /// The replica moved towards the tick it is behind (a new part, or an applied diff): the lag's
    /// patience starts again.
    fn progressed(&mut self, now: Instant) {
        if let Some((target, _)) = self.behind {
            self.behind = Some((target, now));
        }
    }

    fn advance_inner(&mut self) -> Result<(), ProtoError> {
        let Some(mut t) = self.tick else {
            return Ok(());
        };
        if self.diverged {
            return Ok(());
        }
        while let Some((&first, p)) = self.pending.first_key_value() {
            if first <= t {
                self.pending.remove(&first);
                continue;
            }
            let tick = if p.missing > 0 || p.base > t {
                // The next tick is incomplete or does not chain, but a later complete diff may start at or
                // before t (a SYNC reply's coalesced DIFF, base = the tick the client had): it applies
                // (B <= t < T) and makes everything buffered before it stale.
                match self.pending.iter().rev().find(|(_, q)| q.missing == 0 && q.base <= t) {
                    Some((&k, _)) => k,
                    None => break,
                }
            } else {
                first
            };
            let p = self.pending.remove(&tick).expect("a pending tick");
            let view = DiffView { tick, base: p.base, hash: p.hash, entries: &p.entries };
            for (i, c) in view.entries() {
                let px = self.pixels.get_mut(i as usize).ok_or(ProtoError::IndexOutOfRange(i))?;
                self.hash = hash::update(self.hash, i, *px, c);
                *px = c;
            }
            t = tick;
            self.tick = Some(t);
            self.stats.diffs_applied += 1;
            if self.hash != p.hash {
                self.stats.hash_mismatches += 1;
                self.diverged = true;
                break;
            }
        }
        Ok(())
    }

    /// How long a gap or a lag may last before it counts as a loss: the configured grace, or four RTTs, or
    /// twice the pace at which the replica has been advancing, whichever is longest (a broadcast stretched
    /// by overload is late, not lost), at most [`MAX_PATIENCE_GRACES`] graces.
    pub fn patience(&self) -> Duration {
        (self.advance_gap * 2).max(self.rtt * 4).clamp(self.grace, self.grace * MAX_PATIENCE_GRACES)
    }

    /// Report the connection's smoothed RTT: the patience is at least four of them. Parts of one tick
    /// that a congestion window spreads over several round trips (a loaded server's RTT is its fan-out
    /// pass, hundreds of milliseconds) are late, not lost; QUIC's own loss detection waits for RTTs too.
    pub fn observe_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt;
    }

    /// Pixels of the canvas it replicates.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the canvas it replicates has no pixel (never: dimensions come from a WELCOME).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A new connection replaces the one that fed this replica (the old one was lost, or its server
    /// restarted): what was buffered from the old one is dropped, and the caller sends `SYNC{have_tick}`
    /// with the tick returned as the new connection's first message, so that the replica resumes from its
    /// tick instead of from zero (a server that still holds the history answers with a delta; one that
    /// does not, with a snapshot). Counted in `syncs_resume` ([`NO_TICK`], counted as `syncs_fresh`, when
    /// the replica has no usable state).
    pub fn resume(&mut self) -> u64 {
        self.pending.clear();
        self.behind = None;
        self.sync_outstanding = true;
        self.reply_started = None;
        self.stats.syncs += 1;
        match self.tick {
            Some(t) if !self.diverged => {
                self.stats.syncs_resume += 1;
                t
            }
            _ => {
                self.stats.syncs_fresh += 1;
                NO_TICK
            }
        }
    }

    /// When the caller must send `SYNC{have_tick}` now, returns the tick (and counts the SYNC as sent).
    pub fn poll_sync(&mut self, now: Instant) -> Option<u64> {
        if self.sync_outstanding {
            return None;
        }
        let patience = self.patience();
        let have = match self.tick {
            Some(t) if !self.diverged => {
                let overfull = self.pending.len() > self.max_pending;
                let stuck = self.pending.values().next().is_some_and(|p| {
                    now.saturating_duration_since(p.progress_at) >= patience && (p.missing > 0 || p.base > t)
                });
                let lagging = self.behind.is_some_and(|(target, since)| {
                    t < target && now.saturating_duration_since(since) >= patience
                });
                if !(overfull || stuck || lagging) {
                    return None;
                }
                *if overfull {
                    &mut self.stats.syncs_overfull
                } else if stuck {
                    &mut self.stats.syncs_gap
                } else {
                    &mut self.stats.syncs_lag
                } += 1;
                t
            }
            _ => {
                self.stats.syncs_fresh += 1;
                NO_TICK
            }
        };
        // Keep the newest ticks: they are the ones that will chain after the SYNC reply.
        while self.pending.len() > self.max_pending {
            self.pending.pop_first();
        }
        self.sync_outstanding = true;
        self.stats.syncs += 1;
        Some(have)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagrams::Datagrams;
    use crate::proto::{encode_diff, encode_diff_parts, encode_snapshot, encode_synced, FrameReader};
    use crate::Canvas;

    const DIMS: Dims = Dims { width: 64, height: 32 };

    /// (tick, base, hash, entries) of one changing tick.
    type Tick = (u64, u64, u64, Vec<(u32, u8)>);

    /// A server canvas producing ticks the way the master does.
    struct Server {
        canvas: Canvas<Vec<u8>>,
        tick: u64,
        last_change: u64,
        history: Vec<Tick>,
    }

    impl Server {
        fn new() -> Self {
            Self {
                canvas: Canvas::new(DIMS, vec![0; DIMS.len()]).unwrap(),
                tick: 0,
                last_change: 0,
                history: vec![],
            }
        }
        fn tick(&mut self, writes: &[(u32, u8)]) -> Datagrams {
            for &(i, c) in writes {
                self.canvas.apply(i, c);
            }
            self.tick += 1;
            let mut e = Vec::new();
            self.canvas.end_tick(&mut e);
            let mut d = Datagrams::new();
            if !e.is_empty() {
                encode_diff_parts(self.tick, self.last_change, self.canvas.hash(), &e, 200, &mut d);
                self.history.push((self.tick, self.last_change, self.canvas.hash(), e));
                self.last_change = self.tick;
            }
            d
        }
        /// The server side of SYNC: diffs after `have` if retained, else a snapshot.
        fn sync_reply(&self, have: u64) -> Vec<u8> {
            let mut out = Vec::new();
            if have == NO_TICK {
                encode_snapshot(self.tick, self.canvas.hash(), DIMS, self.canvas.pixels(), &mut out);
            } else {
                for (t, b, h, e) in &self.history {
                    if *t > have {
                        encode_diff(*t, *b, *h, e, &mut out);
                    }
                }
            }
            encode_synced(self.tick, &mut out);
            out
        }
    }

    impl Server {
        /// The server side of SYNC as it answers now: one DIFF with the net change of every tick after
        /// `have` (each pixel once, its last color, ascending index), base `have`.
        fn coalesced_reply(&self, have: u64) -> Vec<u8> {
            let mut net = std::collections::BTreeMap::new();
            let mut last = None;
            for (t, _, h, e) in self.history.iter().filter(|(t, ..)| *t > have) {
                net.extend(e.iter().copied());
                last = Some((*t, *h));
            }
            let mut out = Vec::new();
            if let Some((t, h)) = last {
                let entries: Vec<(u32, u8)> = net.into_iter().collect();
                encode_diff(t, have, h, &entries, &mut out);
            }
            encode_synced(self.tick, &mut out);
            out
        }
    }

    /// A server at tick 0 and a replica that has installed its snapshot.
    fn joined() -> (Instant, Server, Replica) {
        let t0 = Instant::now();
        let s = Server::new();
        let mut r = Replica::new(DIMS);
        feed_stream(&mut r, &s.sync_reply(NO_TICK), t0);
        (t0, s, r)
    }

    /// Feed every part of `d` but the last, one every `step` after `t0`, checking that none of them leaves
    /// the replica wanting a SYNC; returns when the last was fed.
    fn trickle_all_but_last(r: &mut Replica, d: &Datagrams, t0: Instant, step: Duration) -> Instant {
        let mut now = t0;
        for part in d.iter().take(d.len() - 1) {
            now += step;
            r.on_datagram(part, now).unwrap();
            assert_eq!(r.poll_sync(now), None, "parts keep arriving at {:?}", now - t0);
        }
        now
    }

    fn feed_stream(r: &mut Replica, bytes: &[u8], now: Instant) {
        let mut fr = FrameReader::new();
        fr.push(bytes);
        while let Some(f) = fr.pop().unwrap() {
            r.on_message(&proto::decode_server(f).unwrap(), now).unwrap();
        }
    }

    #[test]
    fn resume_on_a_new_connection_asks_from_its_tick_and_takes_a_delta() {
        let now = Instant::now();
        let mut s = Server::new();
        s.tick(&[(1, 1)]);
        let mut r = Replica::new(DIMS);
        feed_stream(&mut r, &s.sync_reply(NO_TICK), now);
        // Ticks 2 and 3 are lost with the connection; part of tick 3 had arrived.
        s.tick(&[(2, 2)]);
        let d = s.tick(&[(3, 3); 1]);
        r.on_datagram(d.iter().next().unwrap(), now).unwrap();
        assert_eq!(r.resume(), 1, "from its tick, not from zero");
        assert!(
            r.sync_outstanding() && r.pending_ticks() == 0,
            "what the old connection buffered is dropped"
        );
        feed_stream(&mut r, &s.coalesced_reply(1), now);
        assert_eq!((r.tick(), r.pixels()), (Some(3), s.canvas.pixels()));
        assert!(!r.sync_outstanding());
        assert_eq!((r.stats().syncs_resume, r.stats().snapshots), (1, 1), "a delta, no second snapshot");
        // Without usable state it starts over.
        assert_eq!(Replica::new(DIMS).resume(), NO_TICK);
    }

    #[test]
    fn snapshot_then_diffs_with_reordered_parts() {
        let now = Instant::now();
        let mut s = Server::new();
        s.tick(&[(1, 1)]);
        let mut r = Replica::new(DIMS);
        assert_eq!(r.poll_sync(now), None, "initial snapshot is pushed by the server");
        feed_stream(&mut r, &s.sync_reply(NO_TICK), now);
        assert_eq!(r.tick(), Some(1));
        s.tick(&[]); // empty tick: nothing sent
        let writes: Vec<(u32, u8)> =
            (0..200).map(|i| (i * 7 % DIMS.len() as u32, (i % 9) as u8 + 1)).collect();
        let d = s.tick(&writes);
        assert!(d.len() > 2);
        for g in d.iter().rev() {
            r.on_datagram(g, now).unwrap();
        }
        assert_eq!(r.tick(), Some(3));
        assert_eq!(r.pixels(), s.canvas.pixels());
        assert_eq!(r.poll_sync(now + Duration::from_secs(10)), None);
    }

    #[test]
    fn coalesced_sync_reply_jumps_over_buffered_ticks() {
        let (t0, mut s, mut r) = joined();
        // Tick 1 is lost entirely; ticks 2 and 3 arrive whole and wait in the buffer (base 1 and 2 > t = 0).
        let _lost = s.tick(&[(1, 1), (2, 2)]);
        for w in [[(2u32, 5u8), (3, 3)], [(1, 7), (4, 4)]] {
            for g in s.tick(&w).iter() {
                r.on_datagram(g, t0).unwrap();
            }
        }
        assert_eq!(r.tick(), Some(0));
        let have = r.poll_sync(t0 + DEFAULT_GAP_GRACE).expect("gap detected");
        assert_eq!(have, 0);
        // One DIFF (base 0, tick 3) with the net change: it applies although ticks 2 and 3 are buffered.
        feed_stream(&mut r, &s.coalesced_reply(have), t0);
        assert_eq!(r.tick(), Some(3));
        assert_eq!(r.pixels(), s.canvas.pixels());
        assert_eq!(r.hash(), s.canvas.hash());
        assert_eq!(r.stats().hash_mismatches, 0);
        assert_eq!(r.poll_sync(t0 + 10 * DEFAULT_GAP_GRACE), None, "nothing left to repair");
    }

    #[test]
    fn parts_of_a_tick_already_whole_from_the_stream_are_redundant() {
        let (t0, mut s, mut r) = joined();
        let _lost = s.tick(&[(1, 1)]);
        let d2 = s.tick(&(0..100).map(|i| (i, 2)).collect::<Vec<_>>());
        assert!(d2.len() > 1, "several parts");
        // Tick 1 is lost; tick 2 arrives whole on the stream but cannot apply yet (its base 1 > t = 0), and
        // then tick 2's parts arrive as datagrams: several parts against the stream's one whole entry.
        let mut out = Vec::new();
        let (t, b, h, e) = s.history[1].clone();
        encode_diff(t, b, h, &e, &mut out);
        feed_stream(&mut r, &out, t0);
        assert_eq!(r.tick(), Some(0), "tick 1 is still missing");
        for g in d2.iter() {
            r.on_datagram(g, t0).expect("a part of a tick already whole is redundant, not an error");
        }
        // A part whose hash differs is still an error.
        let mut bad = Datagrams::new();
        encode_diff_parts(t, b, h ^ 1, &e, 200, &mut bad);
        assert_eq!(r.on_datagram(bad.get(0).unwrap(), t0), Err(ProtoError::BadPart));
    }

    #[test]
    fn lost_part_triggers_sync_and_converges() {
        let (t0, mut s, mut r) = joined();
        assert_eq!(r.tick(), Some(0));
        let d1 = s.tick(&(0..100).map(|i| (i, 3)).collect::<Vec<_>>());
        for g in d1.iter().skip(1) {
            r.on_datagram(g, t0).unwrap(); // part 0 lost
        }
        let d2 = s.tick(&[(500, 4)]);
        r.on_datagram(d2.get(0).unwrap(), t0).unwrap();
        assert_eq!(r.tick(), Some(0));
        assert_eq!(r.poll_sync(t0), None, "within grace: may be reordering");
        let have = r.poll_sync(t0 + DEFAULT_GAP_GRACE).expect("gap detected");
        assert_eq!(have, 0);
        assert_eq!(r.poll_sync(t0 + DEFAULT_GAP_GRACE), None, "one SYNC in flight");
        feed_stream(&mut r, &s.sync_reply(have), t0);
        assert_eq!(r.tick(), Some(2));
        assert_eq!(r.pixels(), s.canvas.pixels());
        assert_eq!(r.hash(), s.canvas.hash());
    }

    /// A zstd snapshot installs like the others: its pixels, its tick, its hash checked against the
    /// pixels (a wrong hash is found), then diffs chain onto it.
    #[test]
    fn a_zstd_snapshot_installs_and_is_checked() {
        let now = Instant::now();
        let mut s = Server::new();
        let paint: Vec<(u32, u8)> =
            (0..DIMS.len() as u32).step_by(3).map(|i| (i, (i % 31) as u8 + 1)).collect();
        s.tick(&paint);
        let mut z = Vec::new();
        proto::encode_snapshot_zstd(s.tick, s.canvas.hash(), DIMS, s.canvas.pixels(), &mut z);
        assert!(matches!(
            proto::decode_server(&z[4..]).unwrap(),
            ServerMsg::Snapshot { encoding: SnapshotEncoding::Zstd, .. }
        ));
        let mut r = Replica::new(DIMS);
        feed_stream(&mut r, &z, now);
        assert_eq!((r.tick(), r.pixels(), r.hash()), (Some(1), s.canvas.pixels(), s.canvas.hash()));
        assert_eq!(r.stats().hash_mismatches, 0);
        let d = s.tick(&[(5, 7)]);
        for g in d.iter() {
            r.on_datagram(g, now).unwrap();
        }
        assert_eq!((r.tick(), r.pixels()), (Some(2), s.canvas.pixels()));
        // The same body under a wrong hash: diverged, a snapshot is asked for.
        let mut bad = Vec::new();
        proto::encode_snapshot_zstd(3, s.canvas.hash() ^ 1, DIMS, s.canvas.pixels(), &mut bad);
        encode_synced(3, &mut bad);
        let mut r = Replica::new(DIMS);
        feed_stream(&mut r, &bad, now);
        assert_eq!(r.stats().hash_mismatches, 1);
        assert_eq!(r.poll_sync(now), Some(NO_TICK));
    }

    #[test]
    fn hash_mismatch_forces_snapshot() {
        let (t0, mut s, mut r) = joined();
        let mut d = Datagrams::new();
        // A diff whose hash does not match what applying it gives.
        encode_diff_parts(1, 0, 12345, &[(3, 3)], 1200, &mut d);
        r.on_datagram(d.get(0).unwrap(), t0).unwrap();
        assert_eq!(r.stats().hash_mismatches, 1);
        assert_eq!(r.poll_sync(t0), Some(NO_TICK));
        s.tick(&[(9, 9)]);
        feed_stream(&mut r, &s.sync_reply(NO_TICK), t0);
        assert_eq!(r.pixels(), s.canvas.pixels());
        assert_eq!(r.poll_sync(t0), None);
    }

    #[test]
    fn lost_tail_is_found_by_head() {
        let (t0, mut s, mut r) = joined();
        s.tick(&[(1, 1)]); // every part lost, and nothing changes afterwards
        s.tick(&[]);
        assert!(!r.needs_poll(), "current, nothing pending");
        r.on_datagram(&proto::encode_head(2, 1, s.canvas.hash()), t0).unwrap();
        // Nothing is buffered, yet the HEAD is the only sign of the lost tick: the client must keep polling.
        assert_eq!(r.pending_ticks(), 0);
        assert!(r.needs_poll(), "a HEAD named a tick the replica lacks");
        assert_eq!(r.poll_sync(t0), None, "within grace");
        assert_eq!(r.poll_sync(t0 + DEFAULT_GAP_GRACE), Some(0));
        feed_stream(&mut r, &s.sync_reply(0), t0);
        assert_eq!(r.pixels(), s.canvas.pixels());
        assert!(!r.needs_poll(), "repaired");
        // An ACK for a tick the replica already has does nothing.
        r.note_tick(1, t0);
        assert_eq!(r.poll_sync(t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn quiet_ticks_advance_a_current_replica() {
        let (t0, mut s, mut r) = joined();
        let mut r2 = Replica::new(DIMS);
        feed_stream(&mut r2, &s.sync_reply(NO_TICK), t0);
        let d = s.tick(&[(4, 4)]);
        r.on_datagram(d.get(0).unwrap(), t0).unwrap();
        r2.on_datagram(d.get(0).unwrap(), t0).unwrap();
        // A write acked at tick 3 that changed nothing (same color): tick 3 has no diff.
        s.tick(&[(4, 4)]);
        s.tick(&[]);
        r.note_tick(3, t0);
        r.on_datagram(&proto::encode_head(3, 1, s.canvas.hash()), t0).unwrap();
        assert_eq!(r.tick(), Some(3));
        assert_eq!(r.poll_sync(t0 + Duration::from_secs(5)), None, "no SYNC storm for empty acked ticks");
        // A SYNC reply brings the replica to the reply's tick even when that tick changed nothing.
        r2.note_tick(3, t0);
        feed_stream(&mut r2, &s.sync_reply(1), t0);
        assert_eq!(r2.tick(), Some(3));
        assert_eq!(r2.pixels(), s.canvas.pixels());
        assert_eq!(r2.poll_sync(t0 + Duration::from_secs(5)), None);
        r2.on_datagram(&proto::encode_head(3, 1, 12345), t0).unwrap();
        assert_eq!(r2.stats().hash_mismatches, 1, "a HEAD hash that disagrees with a current replica");
    }

    #[test]
    fn pending_is_bounded() {
        let t0 = Instant::now();
        let mut s = Server::new();
        let mut r = Replica::with_limits(DIMS, Duration::from_secs(3600), 4);
        feed_stream(&mut r, &s.sync_reply(NO_TICK), t0);
        s.tick(&[(1, 1)]); // lost entirely
        for k in 0..10u32 {
            let d = s.tick(&[(k + 10, 2)]);
            r.on_datagram(d.get(0).unwrap(), t0).unwrap();
        }
        assert_eq!(r.poll_sync(t0), Some(0));
        assert!(r.pending_ticks() <= 4);
        feed_stream(&mut r, &s.sync_reply(0), t0);
        assert_eq!(r.pixels(), s.canvas.pixels());
    }

    /// Past its capacity the server delivers the broadcast late, in fewer and larger deltas, while ACKs
    /// name newer ticks at once: a replica that keeps advancing is not lost and must not SYNC (that was the
    /// overload spiral); one that stops advancing for the grace period does.
    #[test]
    fn a_late_but_advancing_broadcast_does_not_sync() {
        let (t0, mut s, mut r) = joined();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut diffs: Vec<Datagrams> = (0..8u32).map(|i| s.tick(&[(i, 1 + i as u8)])).collect();
        r.note_tick(8, ms(0)); // an ACK names tick 8 while the broadcast is still at tick 0
        for (i, d) in diffs.drain(..6).enumerate() {
            // One tick every 200 ms: the replica stays behind tick 8 for a second, but never stalls.
            let now = ms(200 * (i as u64 + 1));
            for part in d.iter() {
                r.on_datagram(part, now).unwrap();
            }
            assert_eq!(r.poll_sync(now), None, "advancing at {now:?}");
        }
        assert_eq!(r.tick(), Some(6));
        assert_eq!(r.poll_sync(ms(1200) + DEFAULT_GAP_GRACE / 2), None);
        // Then nothing for the patience (about the grace at this pace): the replica syncs from where it is.
        assert!(r.patience() < 2 * DEFAULT_GAP_GRACE, "{:?}", r.patience());
        assert_eq!(r.poll_sync(ms(1200) + r.patience()), Some(6));
    }

    /// A large diff whose parts keep arriving, each within the grace period of the previous one, is
    /// making progress; a tick whose parts stop arriving is stuck.
    #[test]
    fn a_diff_whose_parts_keep_arriving_is_not_stuck() {
        let (t0, mut s, mut r) = joined();
        let writes: Vec<(u32, u8)> = (0..200u32).map(|i| (i * 7 % DIMS.len() as u32, 3)).collect();
        let d = s.tick(&writes);
        assert!(d.len() >= 4, "{} parts", d.len());
        let step = DEFAULT_GAP_GRACE * 3 / 4;
        let now = trickle_all_but_last(&mut r, &d, t0, step);
        assert_eq!(r.poll_sync(now + step), None, "less than the grace since the last part");
        assert_eq!(r.poll_sync(now + DEFAULT_GAP_GRACE), Some(0), "stuck once parts stop");
    }

    /// The patience follows the pace the replica advances at: waves one second apart tolerate a lag of
    /// more than the 250 ms grace (no SYNC between waves), but a replica that stops advancing still syncs
    /// after the patience, and the patience never exceeds its bound.
    #[test]
    fn patience_follows_the_pace_of_the_broadcast() {
        let (t0, mut s, mut r) = joined();
        assert_eq!(r.patience(), DEFAULT_GAP_GRACE);
        let mut now = t0;
        for i in 0..12u32 {
            now += Duration::from_secs(1);
            for part in s.tick(&[(i, 2)]).iter() {
                r.on_datagram(part, now).unwrap();
            }
        }
        let p = r.patience();
        assert!(p > 6 * DEFAULT_GAP_GRACE && p <= MAX_PATIENCE_GRACES * DEFAULT_GAP_GRACE, "{p:?}");
        r.note_tick(s.tick + 1, now); // an ACK names a tick the next wave will bring
        assert_eq!(r.poll_sync(now + Duration::from_secs(1)), None, "between two waves");
        assert_eq!(r.poll_sync(now + p), Some(12), "stopped advancing");
    }

    /// A replica behind an ACKed tick while the delta that brings it arrives part by part over longer than
    /// the patience does not SYNC (the reply would send the same changes again); once parts stop, it does.
    #[test]
    fn parts_arriving_for_a_named_tick_are_progress() {
        let (t0, mut s, mut r) = joined();
        let writes: Vec<(u32, u8)> = (0..200u32).map(|i| (i * 5 % DIMS.len() as u32, 4)).collect();
        let d = s.tick(&writes);
        r.note_tick(s.tick, t0); // the ACK arrived first
        let now = trickle_all_but_last(&mut r, &d, t0, DEFAULT_GAP_GRACE * 3 / 4);
        assert!(now - t0 > 2 * DEFAULT_GAP_GRACE);
        assert_eq!(r.poll_sync(now + r.patience()), Some(0), "parts stopped");
    }

    /// A SYNC reply that took a second to arrive (a join on a loaded path) sets the patience from that
    /// pace at once, before any broadcast has advanced the replica; a quick reply leaves it at the grace.
    #[test]
    fn a_slow_reply_sets_the_patience() {
        let t0 = Instant::now();
        let s = Server::new();
        let mut quick = Replica::new(DIMS);
        feed_stream(&mut quick, &s.sync_reply(NO_TICK), t0);
        assert_eq!(quick.patience(), DEFAULT_GAP_GRACE);
        let reply = s.sync_reply(NO_TICK);
        let (snapshot, synced) = reply.split_at(reply.len() - 14); // SYNCED is the last 14 bytes
        let mut slow = Replica::new(DIMS);
        feed_stream(&mut slow, snapshot, t0);
        feed_stream(&mut slow, synced, t0 + Duration::from_secs(1));
        assert_eq!(slow.patience(), Duration::from_secs(2));
        slow.note_tick(3, t0 + Duration::from_secs(1));
        assert_eq!(slow.poll_sync(t0 + Duration::from_millis(2500)), None);
        assert_eq!(slow.poll_sync(t0 + Duration::from_secs(3)), Some(0));
    }

    /// The patience is at least four round trips of the transport: parts a congestion window spreads over
    /// a few RTTs are not a gap.
    #[test]
    fn patience_is_at_least_four_round_trips() {
        let (_, _, mut r) = joined();
        r.observe_rtt(Duration::from_millis(1));
        assert_eq!(r.patience(), DEFAULT_GAP_GRACE);
        r.observe_rtt(Duration::from_millis(300));
        assert_eq!(r.patience(), Duration::from_millis(1200));
        r.observe_rtt(Duration::from_secs(60));
        assert_eq!(r.patience(), DEFAULT_GAP_GRACE * MAX_PATIENCE_GRACES);
    }
}
