//! What quiche delivered on a connection: protocol negotiation (`canvas/1` or legacy `h3`), control
//! messages, pixel writes (validated, cooled down, queued to the master or rejected), welcome and SYNC.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canvas::proto::{self, ClientMsg, ProtoError, NO_TICK};
use canvas::{legacy, Pixel, RejectReason};

use super::{Chunk, Conn, Ctx, Out, Proto, APP_ERR_PROTOCOL};
use crate::publish::PixelWrite;

impl Ctx {
    /// React to what quiche delivered on `c`: negotiate the protocol, read writes and control messages.
    pub(super) fn process_app(&mut self, key: usize, c: &mut Conn, now: Instant, buf: &mut [u8]) {
        if c.proto == Proto::Pending && c.q.is_established() {
            if c.q.application_proto() == legacy::ALPN {
                c.proto = Proto::Legacy;
                self.stats.conns_legacy += 1;
                self.start_legacy(c);
            } else {
                c.proto = Proto::Canvas1;
                self.stats.conns_canvas1 += 1;
            }
        }
        match c.proto {
            Proto::Pending => {}
            Proto::Legacy => {
                while let Ok(n) = c.q.dgram_recv(buf) {
                    match legacy::decode_write(&buf[..n]) {
                        Some(px) => self.write(key, c, None, px, now),
                        None => self.stats.legacy_ignored += 1,
                    }
                }
                // The legacy protocol has no streams: read and discard whatever a client sends on one, so
                // it does not sit in quiche's buffers up to the flow-control window.
                for s in c.q.readable() {
                    while c.q.stream_recv(s, buf).is_ok() {}
                }
            }
            Proto::Canvas1 => {
                // canvas/1 clients send nothing as datagrams; drain and ignore.
                while c.q.dgram_recv(buf).is_ok() {}
                // `readable()` returns an owned list of ids: no borrow of `c.q` is held while reading.
                for s in c.q.readable() {
                    if c.ctl.is_none() && s % 4 == 0 {
                        c.ctl = Some(s);
                    }
                    if c.ctl != Some(s) {
                        while c.q.stream_recv(s, buf).is_ok() {}
                        continue;
                    }
                    // Read through the endpoint's scratch buffer and keep only the bytes received: a receive
                    // area per connection (it was 16–32 KiB) stayed allocated on every idle connection.
                    while let Ok((n, _fin)) = c.q.stream_recv(s, buf) {
                        c.reader.push(&buf[..n]);
                    }
                    if let Err(e) = self.handle_frames(key, c, now) {
                        let _ = c.q.close(true, APP_ERR_PROTOCOL, format!("{e}").as_bytes());
                    }
                    c.reader.release_if_drained();
                }
            }
        }
    }

    fn handle_frames(&mut self, key: usize, c: &mut Conn, now: Instant) -> Result<(), ProtoError> {
        let mut reader = std::mem::take(&mut c.reader);
        let res = (|| {
            while let Some(f) = reader.pop()? {
                match proto::decode_client(f) {
                    Ok(ClientMsg::Write { id, pixel }) => self.write(key, c, Some(id), pixel, now),
                    Ok(ClientMsg::Sync { have_tick, flags }) => {
                        c.zstd = flags & proto::SYNC_ZSTD != 0;
                        self.sync(c, have_tick)
                    }
                    Err(ProtoError::UnknownType(_)) => self.stats.reject(RejectReason::Malformed),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })();
        c.reader = reader;
        res
    }

    /// Validate a write, apply the cooldown, and queue it to the master, or refuse it.
    pub(super) fn write(&mut self, key: usize, c: &mut Conn, id: Option<u32>, pixel: Pixel, now: Instant) {
        self.stats.pixels_received += 1;
        let mut slot = c.cooldown;
        let source_wait = self.source_wait(c.peer.ip(), now);
        let mut source_limited = false;
        let result = self.cfg.rules.validate(pixel).map_err(|r| (r, Duration::ZERO)).and_then(|index| {
            self.cfg.cooldown.try_take(&mut slot, now).map_err(|wait| (RejectReason::Cooldown, wait))?;
            if let Some(wait) = source_wait {
                source_limited = true;
                return Err((RejectReason::Cooldown, wait));
            }
            let link = &self.shared.links[self.cfg.worker];
            link.writes
                .push(PixelWrite { index, color: pixel.color })
                .map_err(|_| (RejectReason::Busy, Duration::from_millis(u64::from(self.cfg.tick_ms))))
        });
        if source_limited {
            self.stats.source_rate_limited += 1;
        }
        match result {
            Ok(()) => {
                if let Some(b) = self.source_buckets.get_mut(&c.peer.ip()) {
                    b.0 -= 1.0;
                }
                c.cooldown = slot;
                self.stats.pixels_queued += 1;
                self.acks.push_back(id.map(|id| (key, c.gen, id, now)));
            }
            Err((reason, wait)) => {
                self.stats.reject(reason);
                if let Some(id) = id {
                    proto::encode_reject(
                        id,
                        reason,
                        wait.as_millis().min(u128::from(u32::MAX)) as u32,
                        c.answers(),
                    );
                }
            }
        }
    }

    /// How long `ip` must wait for its next write under `source_writes_per_sec`, or None when it may write
    /// now (the bucket is refilled here; the token is taken when the write is queued).
    fn source_wait(&mut self, ip: std::net::IpAddr, now: Instant) -> Option<Duration> {
        let rate = f64::from(self.cfg.source_writes_per_sec);
        if rate == 0.0 {
            return None;
        }
        if self.source_buckets.len() >= self.source_prune_at {
            self.source_buckets.retain(|_, b| now.saturating_duration_since(b.1) < super::SOURCE_IDLE);
            self.source_prune_at = (2 * self.source_buckets.len()).max(super::SOURCE_PRUNE_MIN);
        }
        let b = self.source_buckets.entry(ip).or_insert((rate, now));
        b.0 = (b.0 + rate * now.saturating_duration_since(b.1).as_secs_f64()).min(rate);
        b.1 = now;
        (b.0 < 1.0).then(|| Duration::from_secs_f64((1.0 - b.0) / rate))
    }

    fn welcome(&mut self, c: &mut Conn) {
        if !c.welcomed {
            c.welcomed = true;
            let w = proto::Welcome {
                dims: self.cfg.rules.dims,
                palette: self.cfg.rules.palette,
                tick_ms: self.cfg.tick_ms,
                cooldown_ms: self.cfg.cooldown.period().as_millis().min(u128::from(u32::MAX)) as u32,
                tick: self.tick,
            };
            proto::encode_welcome(&w, c.small());
        }
    }

    /// Answer SYNC{have}: one coalesced delta from `have` to the newest changing tick if this worker still
    /// holds every diff after `have` and the delta is no larger than a newer snapshot; else a snapshot and
    /// the coalesced delta after it; then SYNCED. Without a usable snapshot, ask the master and answer later.
    /// A client far behind costs O(pixels changed since its tick), never a re-send of every tick's diff.
    pub(super) fn sync(&mut self, c: &mut Conn, have: u64) {
        self.welcome(c);
        let snapshot = self.snapshot.as_ref().filter(|s| s.tick >= self.lost_change).cloned();
        let covered = have != NO_TICK && have <= self.tick && have >= self.lost_change;
        // From `have` when the history reaches it, unless a snapshot newer than `have` is smaller than the
        // delta (an entry is 5 bytes on the wire).
        let to = self.last_change;
        let from_have = covered.then(|| self.delta(have, to)).filter(|d| match (d, &snapshot) {
            (Some(d), Some(s)) => s.tick <= have || d.publication.len() * 5 <= s.frame(c.zstd).len(),
            _ => true,
        });
        let delta = match (from_have, snapshot) {
            (Some(d), _) => d,
            (None, Some(s)) => {
                let d = self.delta(s.tick, to);
                c.stream_out.push_back(Chunk::Snap(s, c.zstd, 0));
                self.stats.snapshots_sent += 1;
                d
            }
            (None, None) => {
                c.awaiting = true;
                self.shared.snapshot_wanted.store(true, Ordering::Release);
                return;
            }
        };
        if let Some(d) = delta {
            let p = &d.publication;
            self.stats.diffs_resent += 1;
            if d.ticks > 1 {
                self.stats.deltas_coalesced += 1;
                self.stats.delta_ticks += d.ticks as u64;
                self.stats.delta_entries += p.len() as u64;
            }
            c.stream_out.push_back(Chunk::Diff(d.publication, 0));
        }
        proto::encode_synced(self.tick, c.small());
        self.stats.syncs += 1;
        c.awaiting = false;
        // Broadcast datagrams resume after the tick the reply covers (the next pull chains onto it).
        // Anything queued before is superseded by the reply.
        c.outbox.clear();
        c.sent = self.tick;
        c.ready = true;
    }

    /// First broadcast to a legacy connection: the snapshot (the diffs after it are pulled once it is
    /// handed to quiche).
    pub(super) fn start_legacy(&mut self, c: &mut Conn) {
        let Some(s) = self.snapshot.as_ref().filter(|s| s.tick >= self.lost_change) else {
            c.awaiting = true;
            self.shared.snapshot_wanted.store(true, Ordering::Release);
            return;
        };
        c.outbox.push_back(Out::LegacySnap(s.clone(), 0));
        c.sent = s.tick;
        self.stats.snapshots_sent += 1;
        c.awaiting = false;
        c.ready = true;
    }
}
