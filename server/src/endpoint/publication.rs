//! Taking the master's publications: ACKs for applied writes, the catch-up history, and the tick's shared
//! broadcast queued on every ready connection.

use std::sync::Arc;
use std::time::Instant;

use canvas::proto::{self, NO_TICK};

use super::{Endpoint, Out, Proto};
use crate::publish::Publication;

impl Endpoint {
    /// Take every publication the master has queued for this worker: ACK applied writes, remember the
    /// history, and queue the tick's shared broadcast on every ready connection.
    pub fn poll_publications(&mut self, now: Instant) {
        let shared = self.ctx.shared.clone();
        let link = &shared.links[self.ctx.cfg.worker];
        while let Some(p) = link.publications.pop() {
            self.on_publication(now, p);
        }
    }

    /// Apply one publication (public so deterministic tests can drive it).
    pub fn on_publication(&mut self, _now: Instant, p: Arc<Publication>) {
        let ctx = &mut self.ctx;
        ctx.stats.publications += 1;
        if ctx.snapshot.is_some() && p.tick != ctx.tick + 1 {
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
                Some(Some((key, gen, id))) => {
                    if let Some(c) = self.conns.get_mut(key).filter(|c| c.gen == gen) {
                        proto::encode_ack(id, p.tick, c.small());
                        Self::mark_dirty(&mut self.dirty, key, c);
                    }
                }
                Some(None) => {}
                None => break,
            }
        }
        if !p.is_empty() {
            ctx.history.push_back(p.clone());
            while ctx.history.len() > ctx.cfg.history_ticks.max(1) {
                let old = ctx.history.pop_front().expect("non-empty");
                ctx.lost_change = ctx.lost_change.max(old.tick);
            }
        }
        let full = p.tick.is_multiple_of(ctx.cfg.full_interval) && p.snapshot.is_some();
        let head = p.sends_head();
        if p.is_empty() && !full && !head && !self.conns.iter().any(|(_, c)| c.awaiting) {
            return;
        }
        for (key, c) in self.conns.iter_mut() {
            if c.awaiting {
                match c.proto {
                    Proto::Canvas1 => ctx.sync(c, NO_TICK),
                    Proto::Legacy => ctx.start_legacy(c),
                    Proto::Pending => {}
                }
                if !c.awaiting {
                    Self::mark_dirty(&mut self.dirty, key, c);
                }
                continue;
            }
            if !c.ready {
                continue;
            }
            let queued = match c.proto {
                Proto::Canvas1 if !p.is_empty() => {
                    c.outbox.push_back(Out::Parts(p.clone(), 0));
                    true
                }
                Proto::Canvas1 if head => {
                    c.outbox.push_back(Out::Head(p.clone(), 0));
                    true
                }
                Proto::Legacy if full => {
                    let s = p.snapshot.clone().expect("full tick has a snapshot");
                    c.outbox.push_back(Out::LegacySnap(s, 0));
                    ctx.stats.snapshots_sent += 1;
                    true
                }
                Proto::Legacy if !p.is_empty() => {
                    c.outbox.push_back(Out::Legacy(p.clone(), 0));
                    true
                }
                _ => false,
            };
            if queued {
                if c.outbox.len() > ctx.cfg.outbox_ticks {
                    c.outbox.clear();
                    ctx.stats.outbox_overflows += 1;
                }
                Self::mark_dirty(&mut self.dirty, key, c);
            }
        }
    }
}
