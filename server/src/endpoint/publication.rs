//! Taking the master's publications: ACKs for applied writes, the catch-up history, and the broadcast.
//!
//! The broadcast is pulled, not pushed: a connection's whole broadcast state is the tick it was sent up to
//! (`Conn::sent`). When its queue into quiche has room and nothing is in flight, it takes everything that
//! changed since: the newest tick's own shared datagrams when that is all it lacks, else one coalesced delta
//! from its tick to the newest (built once per starting tick and shared by every connection starting there).
//! A connection that cannot keep up (its congestion window, or this worker's CPU) therefore gets fewer,
//! larger deltas instead of a growing backlog: the per-client broadcast rate is what its path sustains, and
//! nothing per connection grows with the overload.

use std::sync::Arc;
use std::time::Instant;

use canvas::proto::{self, NO_TICK};

use super::{Conn, Ctx, Endpoint, Out, Proto};
use crate::publish::{self, Publication};

impl Endpoint {
    /// Take every publication the master has queued for this worker: ACK applied writes, remember the
    /// history, and wake every connection that has something new to pull.
    pub fn poll_publications(&mut self, now: Instant) {
        let shared = self.ctx.shared.clone();
        let link = &shared.links[self.ctx.cfg.worker];
        while let Some(p) = link.publications.pop() {
            self.on_publication(now, p);
        }
    }

    /// Apply one publication (public so deterministic tests can drive it).
    pub fn on_publication(&mut self, now: Instant, p: Arc<Publication>) {
        let ctx = &mut self.ctx;
        ctx.stats.publications += 1;
        if ctx.snapshot.is_none() {
            // The first publication: the snapshot this worker starts from. A client that has its base (the
            // newest changing tick before it) has everything; after a restart the changing ticks replayed
            // from the log come with it, and a client at a tick they cover gets a delta.
            ctx.lost_change = p.history.first().map_or(p.base, |h| h.base);
            for h in &p.history {
                ctx.remember(h.clone());
            }
        } else if p.prev != ctx.tick {
            ctx.stats.publication_gaps += 1;
            ctx.lost_change = ctx.lost_change.max(p.tick.saturating_sub(1));
        }
        ctx.tick = p.tick;
        if let Some(s) = &p.snapshot {
            ctx.snapshot = Some(s.clone());
        }
        // ACKs: every write counted in `applied` is in this tick or an earlier one.
        let applied = p.applied.get(ctx.cfg.worker).copied().unwrap_or(0);
        while ctx.applied < applied {
            ctx.applied += 1;
            ctx.stats.pixels_applied += 1;
            match ctx.acks.pop_front() {
                Some(Some((key, gen, id, received))) => {
                    ctx.stats.ack_applied.record(now.saturating_duration_since(received));
                    if let Some(c) = self.conns.get_mut(key).filter(|c| c.gen == gen) {
                        proto::encode_ack(id, p.tick, c.answers_for(Some(received)));
                        Self::mark_urgent(&mut self.urgent, &mut self.dirty, key, c);
                    }
                }
                Some(None) => {}
                None => break,
            }
        }
        let full = p.full && p.snapshot.is_some();
        if full {
            ctx.full = p.snapshot.clone();
        }
        if !p.is_empty() {
            ctx.remember(p.clone());
        }
        for (key, c) in self.conns.iter_mut().filter(|(_, c)| c.awaiting) {
            match c.proto {
                Proto::Canvas1 => ctx.sync(c, NO_TICK),
                Proto::Legacy => ctx.start_legacy(c),
                Proto::Pending => {}
            }
            if !c.awaiting {
                Self::mark_dirty(&mut self.dirty, key, c);
            }
        }
        if p.sends_head() {
            // Caught-up canvas/1 connections learn that nothing changed since: idle ones now, busy ones when
            // they next pull (`pull` sends the newest HEAD to a connection that has every change before it).
            self.ctx.head = Some(p.clone());
            let ctx = &self.ctx;
            for (key, c) in self.conns.iter_mut() {
                if c.proto == Proto::Canvas1 && c.ready && c.outbox.is_empty() && c.sent >= ctx.last_change {
                    Self::mark_dirty(&mut self.dirty, key, c);
                }
            }
        }
        if self.wave_left == 0 {
            self.advance_frontier();
        }
        if std::mem::take(&mut self.ctx.starved) {
            // Pulls that waited for the catch-up budget try again (deltas may have been dropped since).
            self.wake_behind();
        }
    }

    /// Offer everything up to the newest changing tick (and the newest full snapshot, to legacy
    /// connections) to pulls, and wake every idle connection that lacks some of it. Called when the
    /// previous wave has reached every connection it woke: while one is in progress, newer ticks wait in
    /// the history and the next wave carries them coalesced, so the effective broadcast interval
    /// stretches to the time one fan-out pass takes (never shorter than a tick).
    pub(super) fn advance_frontier(&mut self) {
        let ctx = &mut self.ctx;
        let full_tick = ctx.full.as_ref().map_or(0, |f| f.tick);
        if ctx.frontier >= ctx.last_change && ctx.full_frontier >= full_tick {
            return;
        }
        ctx.frontier = ctx.last_change;
        ctx.full_frontier = full_tick;
        let frontier = ctx.frontier;
        if ctx.wave_frontiers.len() == WAVES_KEPT {
            ctx.wave_frontiers.pop_front();
        }
        ctx.wave_frontiers.push_back(frontier);
        ctx.catchup.retain(|d| d.last >= frontier);
        ctx.stats.waves += 1;
        self.wake_behind();
        self.wave_left = self.dirty.len();
    }

    /// Wake every idle connection that lacks something offered (up to the frontier; legacy: also the
    /// newest full snapshot). A connection still handing a run to quiche pulls the rest when that run is
    /// drained.
    fn wake_behind(&mut self) {
        let (frontier, full_tick) = (self.ctx.frontier, self.ctx.full_frontier);
        for (key, c) in self.conns.iter_mut() {
            if !c.ready || !c.outbox.is_empty() {
                continue;
            }
            let wake = match c.proto {
                Proto::Canvas1 => c.sent < frontier,
                Proto::Legacy => c.sent < frontier || full_tick > c.sent,
                Proto::Pending => false,
            };
            if wake {
                Self::mark_dirty(&mut self.dirty, key, c);
            }
        }
    }
}

impl Ctx {
    /// Keep a changing tick for catch-up. The history is bounded by `--history-ticks` and by its entries: a
    /// delta from before more changes than the canvas has pixels is no smaller than a snapshot, and memory
    /// stays O(canvas) per worker however far behind a connection is.
    pub(super) fn remember(&mut self, p: Arc<Publication>) {
        self.last_change = p.tick;
        self.history_entries += p.len();
        self.history.push_back(p);
        let budget = self.cfg.rules.dims.len();
        while self.history.len() > self.cfg.history_ticks.max(1)
            || (self.history.len() > 1 && self.history_entries > budget)
        {
            let old = self.history.pop_front().expect("non-empty");
            self.history_entries -= old.len();
            self.lost_change = self.lost_change.max(old.tick);
        }
    }

    /// Queue on `c` (whose outbox is drained) what it was not sent yet. Returns whether anything was queued.
    pub(super) fn pull(&mut self, c: &mut Conn) -> bool {
        if !c.ready || !c.outbox.is_empty() {
            return false;
        }
        if c.proto == Proto::Legacy {
            // The legacy rule: the whole canvas at every full-broadcast tick (`Publication::full`: every
            // `--full-broadcast-interval`-th), instead of the diffs before it.
            if let Some(f) = self.full.as_ref().filter(|f| f.tick > c.sent && f.tick <= self.full_frontier) {
                c.outbox.push_back(Out::LegacySnap(f.clone(), 0));
                c.sent = f.tick;
                self.stats.snapshots_sent += 1;
            }
        }
        if c.sent < self.frontier && c.sent < self.lost_change {
            // The history no longer reaches this connection's tick. canvas/1: skip ahead; the client sees
            // the gap at the next diff or HEAD and repairs with SYNC (snapshot or delta, whichever is
            // smaller). Legacy: the newest usable snapshot at once (it has no other repair).
            self.stats.catchup_lost += 1;
            let snap = self.snapshot.as_ref().filter(|s| s.tick >= self.lost_change && s.tick > c.sent);
            match (c.proto, snap) {
                (Proto::Legacy, Some(s)) => {
                    c.outbox.push_back(Out::LegacySnap(s.clone(), 0));
                    c.sent = s.tick;
                    self.stats.snapshots_sent += 1;
                }
                _ => c.sent = self.frontier,
            }
        }
        if c.sent < self.frontier {
            match self.catchup_for(c.sent) {
                Some(d) => {
                    if d.ticks > 1 {
                        self.stats.catchups += 1;
                    }
                    // The frontier, or less for a shared live delta (the next pull goes on from there).
                    c.sent = d.publication.tick;
                    c.outbox.push_back(match c.proto {
                        Proto::Legacy => Out::Legacy(d.publication, 0),
                        _ => Out::Parts(d.publication, 0),
                    });
                }
                None => {
                    self.stats.catchup_deferred += 1;
                    self.starved = true;
                }
            }
        }
        if c.proto == Proto::Canvas1 && c.outbox.is_empty() {
            // HEAD(Q, L) tells a connection that has every change up to L that nothing changed in (L, Q]:
            // it then has everything up to Q.
            if let Some(h) = self.head.as_ref().filter(|h| h.base <= c.sent && c.sent < h.tick) {
                c.outbox.push_back(Out::Head(h.clone(), 0));
                c.sent = h.tick;
            }
        }
        !c.outbox.is_empty()
    }

    /// Where a pull from tick `sent` starts: the newest of the frontiers 1, 2, 4, … 64 waves back that is
    /// ≤ `sent` and still in the history, else `sent` itself. Connections that keep up start exactly where
    /// they are; the others, whose ticks spread over many waves when their paths drain at different speeds,
    /// share one of a few deltas (at most ~7 built per wave instead of one per distinct tick) at the price of
    /// re-sending at most about as many changes as they lack. The delta's base is ≤ the anchor ≤ `sent`, so
    /// it still chains.
    fn anchor(&self, sent: u64) -> u64 {
        let n = self.wave_frontiers.len();
        let mut back = 1;
        while back <= n {
            let f = self.wave_frontiers[n - back];
            if f <= sent {
                return if f >= self.lost_change { f } else { sent };
            }
            back *= 2;
        }
        sent
    }

    /// What a pull from tick `sent` (< the frontier) takes: the delta from its anchor to the frontier when
    /// that is one tick, already built, or fits `catchup_budget` beside the deltas connections still hold
    /// (or none is held: one is always allowed); past the budget, the live delta that covers `sent` and
    /// reaches furthest (it moves the connection part of the way, at no new memory); else None, and the
    /// connection pulls again at the next publication. So the bytes of catch-up deltas alive on a worker
    /// stay within the budget plus one delta (a heap profile under overload had found them growing with
    /// the backlog: 144 of 309 MB at 2,000 clients, twice the knee, 20 s), and what a connection holds is
    /// still only a reference to a shared delta.
    fn catchup_for(&mut self, sent: u64) -> Option<Delta> {
        let from = self.anchor(sent);
        let (i, j) = self.span(from, self.frontier)?;
        if let Some(d) = self.existing(i, j) {
            return Some(d);
        }
        // At most this many bytes: each changed pixel once, as a 5-byte entry.
        let bound = self.history.range(i..j).map(|p| p.len()).sum::<usize>().min(self.cfg.rules.dims.len())
            * proto::ENTRY_LEN;
        let live = self.live_bytes();
        if live == 0 || live + bound <= self.cfg.catchup_budget {
            return Some(self.build(from, i, j));
        }
        let (ticks, publication) = self
            .live
            .iter()
            .filter(|d| d.from <= sent && sent < d.last)
            .max_by_key(|d| d.last)
            .and_then(|d| Some((d.ticks, d.publication.upgrade()?)))?;
        self.stats.catchup_shared += 1;
        Some(Delta { ticks, publication })
    }

    /// Everything that changed after tick `from` up to changing tick `to`, from the history (which must
    /// reach back to `from`); None when nothing did. One tick alone is that tick's own publication; several
    /// are coalesced into one (base: the base of the first of them, which is ≤ `from`, so it chains onto a
    /// replica at `from`), built once and shared through `catchup` by every connection and SYNC reply that
    /// asks for the same span.
    pub(super) fn delta(&mut self, from: u64, to: u64) -> Option<Delta> {
        let (i, j) = self.span(from, to)?;
        Some(self.existing(i, j).unwrap_or_else(|| self.build(from, i, j)))
    }

    /// The history indexes `i..j` of the changing ticks in (`from`, `to`]; None when there is none.
    fn span(&self, from: u64, to: u64) -> Option<(usize, usize)> {
        let i = self.history.partition_point(|p| p.tick <= from);
        let j = self.history.partition_point(|p| p.tick <= to);
        (i < j).then_some((i, j))
    }

    /// The delta for history `i..j` when it costs nothing new: one tick's own publication, or a coalesced
    /// delta already cached for that span.
    fn existing(&self, i: usize, j: usize) -> Option<Delta> {
        if j - i == 1 {
            return Some(Delta { ticks: 1, publication: self.history[i].clone() });
        }
        let (first, last) = (self.history[i].tick, self.history[j - 1].tick);
        let d = self.catchup.iter().find(|d| d.first == first && d.last == last)?;
        Some(Delta { ticks: j - i, publication: d.publication.clone() })
    }

    /// Coalesce history `i..j` (the ticks after `from`) into a new shared delta: cached for the same span,
    /// and registered as live for the catch-up budget.
    fn build(&mut self, from: u64, i: usize, j: usize) -> Delta {
        let sets: Vec<_> = self.history.range(i..j).map(|p| p.change_set()).collect();
        let entries = publish::coalesce(sets.iter().map(|s| &s[..]));
        self.stats.catchup_deltas += 1;
        self.stats.catchup_ticks += (j - i) as u64;
        self.stats.catchup_entries += entries.len() as u64;
        let (first, l) = (self.history[i].tick, &self.history[j - 1]);
        let last = l.tick;
        let publication = Arc::new(Publication::coalesced(
            last,
            self.history[i].base,
            l.hash,
            &entries,
            self.cfg.max_datagram,
        ));
        if self.catchup.len() >= MAX_CATCHUP_CACHE {
            self.catchup.pop_front();
        }
        self.catchup.push_back(CatchUp { first, last, publication: publication.clone() });
        let bytes = publication.parts.bytes();
        let live = self.live_bytes() + bytes;
        self.live.push(LiveDelta {
            from,
            last,
            ticks: j - i,
            bytes,
            publication: Arc::downgrade(&publication),
        });
        self.stats.catchup_live_peak = self.stats.catchup_live_peak.max(live as u64);
        Delta { ticks: j - i, publication }
    }

    /// Bytes of the coalesced deltas still alive (held by a connection or the cache); dead ones forgotten.
    fn live_bytes(&mut self) -> usize {
        self.live.retain(|d| d.publication.strong_count() > 0);
        self.live.iter().map(|d| d.bytes).sum()
    }
}

/// Wave frontiers remembered as pull anchors.
pub(super) const WAVES_KEPT: usize = 65;

/// Coalesced deltas kept for sharing at most (those ending before the frontier are dropped when it moves).
const MAX_CATCHUP_CACHE: usize = 32;

/// A coalesced delta spanning changing ticks `first..=last`, shared by whoever asks for that span.
#[derive(Debug)]
pub(super) struct CatchUp {
    first: u64,
    last: u64,
    publication: Arc<Publication>,
}

/// A coalesced delta some connection may still hold: it covers every change in (`from`, `last`].
#[derive(Debug)]
pub(super) struct LiveDelta {
    from: u64,
    last: u64,
    ticks: usize,
    /// Its encoded parts.
    bytes: usize,
    publication: std::sync::Weak<Publication>,
}

/// What [`Ctx::delta`] found.
pub(super) struct Delta {
    /// Changing ticks it spans.
    pub(super) ticks: usize,
    /// The tick's own publication, or the shared coalesced one.
    pub(super) publication: Arc<Publication>,
}
