//! A `canvas/1` client: one control stream (hello SYNC, WRITEs, repair SYNCs out; WELCOME, SNAPSHOT, DIFF,
//! SYNCED, ACK, REJECT in) and DIFF_PART datagrams into a [`Replica`].
//!
//! One `select!` loop per client multiplexes the phase, the stream, datagrams, the buffered stream output,
//! the write timer and the sync timer; every branch future is cancel-safe (quinn documents `read_chunk`,
//! `read_datagram` and `write` as such; `next_phase` and `recv_datagrams` await nothing after them), so
//! nothing is lost when another branch wins.
//!
//! A light client (beyond `--replicas`) keeps no replica: it follows the highest tick announced by
//! SNAPSHOT, DIFF, SYNCED, DIFF_PART or HEAD, never SYNCs, and counts a write visible once that tick reaches
//! the ACKed one (a lost part goes unnoticed: an approximation that costs no memory).
//!
//! Latency: a write is visible once the replica reaches the tick its ACK names. The ACKed tick is passed
//! to [`Replica::note_tick`], so a replica that stays behind it (the tick changed nothing, or its diff was
//! lost and nothing followed) is caught up by HEAD datagrams, SYNCED or its own SYNC.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canvas::proto::{self, ClientMsg, FrameReader, ServerMsg, NO_TICK};
use canvas::replica::ReplicaStats;
use canvas::{Dims, Replica};
use rand::rngs::SmallRng;
use tokio::sync::watch;

use super::{micros, next_phase, random_pixel, recv_datagrams, Ctx, Failure, Phase, ReplicaSlot, Slot};

/// Largest chunk taken from the control stream at once.
const READ_CHUNK: usize = 64 << 10;
/// How often a quiet client re-checks its replica for gaps (the replica's grace is 250 ms).
const SYNC_POLL: Duration = Duration::from_millis(50);
/// Stop generating writes while this much control-stream output is queued (flow control is pushing back).
const MAX_OUT_QUEUED: usize = 64 << 10;
/// After a frame this large (a snapshot) the frame reader's buffer is released once empty.
const BIG_FRAME: usize = 64 << 10;

/// Writes in flight by id (ids are consecutive, so a deque indexed from the oldest unresolved one).
#[derive(Debug, Default)]
struct Writes {
    first_id: u32,
    next_id: u32,
    sent: VecDeque<Option<Instant>>,
    outstanding: usize,
}

impl Writes {
    fn send(&mut self, now: Instant) -> u32 {
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        self.sent.push_back(Some(now));
        self.outstanding += 1;
        id
    }

    fn resolve(&mut self, id: u32) -> Option<Instant> {
        let i = id.wrapping_sub(self.first_id) as usize;
        let t = self.sent.get_mut(i)?.take()?;
        self.outstanding -= 1;
        while self.sent.front().is_some_and(Option::is_none) {
            self.sent.pop_front();
            self.first_id = self.first_id.wrapping_add(1);
        }
        Some(t)
    }
}

/// Per-connection protocol state outside the replica.
struct Session<'a> {
    ctx: &'a Ctx,
    slot: &'a Slot,
    dims: Option<Dims>,
    writes: Writes,
    /// ACKed writes whose tick the replica has not reached: (tick, sent at).
    acked: Vec<(u64, Instant)>,
    /// No replica: follow announced ticks only.
    light: bool,
    /// Light clients: the highest tick the server announced.
    light_tick: Option<u64>,
    /// The replica wants `poll_sync` called even if nothing arrives (`Replica::needs_poll`: ticks buffered,
    /// or a tick an ACK or HEAD named that it lacks).
    replica_polls: bool,
    seen: ReplicaStats,
    lat: Vec<u64>,
    ack_lat: Vec<u64>,
    /// This connection's number in `--write-log`.
    session: u64,
    /// An observer (`--observe`): its index; it never writes.
    observer: Option<usize>,
}

fn replica(rep: &mut ReplicaSlot) -> Option<&mut Replica> {
    match rep {
        ReplicaSlot::Canvas1(r) => Some(r),
        _ => None,
    }
}

fn bad<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Failure {
    move |e| Failure::protocol(format!("{what}: {e}"))
}

impl<'a> Session<'a> {
    fn new(ctx: &'a Ctx, slot: &'a Slot, light: bool, observer: Option<usize>) -> Self {
        Self {
            ctx,
            slot,
            dims: None,
            writes: Writes::default(),
            acked: Vec::new(),
            light,
            light_tick: None,
            replica_polls: false,
            seen: ReplicaStats::default(),
            lat: Vec::new(),
            ack_lat: Vec::new(),
            session: ctx.write_log.as_ref().map_or(0, |l| l.session()),
            observer,
        }
    }

    /// Handle every complete frame; returns whether the WELCOME was among them, and whether one was
    /// larger than [`BIG_FRAME`].
    fn on_stream(
        &mut self,
        fr: &mut FrameReader,
        rep: &mut ReplicaSlot,
        now: Instant,
    ) -> Result<(bool, bool), Failure> {
        let (mut welcomed, mut big) = (false, false);
        while let Some(frame) = fr.pop().map_err(bad("control stream"))? {
            big |= frame.len() > BIG_FRAME;
            let m = proto::decode_server(frame).map_err(bad("control message"))?;
            if let ServerMsg::Welcome(w) = m {
                if self.dims.is_some() {
                    return Err(Failure::protocol("second WELCOME"));
                }
                if w.dims.is_empty() || w.dims.len() > canvas::grid::MAX_PIXELS {
                    return Err(Failure::protocol(format!("WELCOME with unusable dimensions {:?}", w.dims)));
                }
                self.dims = Some(w.dims);
                // A resumed replica of the same canvas is kept (its SYNC asked from its tick).
                let resumed = matches!(rep, ReplicaSlot::Canvas1(r) if r.len() == w.dims.len());
                if !self.light && !resumed {
                    *rep = ReplicaSlot::Canvas1(Box::new(Replica::new(w.dims)));
                }
                welcomed = true;
                continue;
            }
            if self.dims.is_none() {
                return Err(Failure::protocol("message before WELCOME"));
            }
            let mut r = replica(rep);
            match m {
                ServerMsg::Ack { id, tick } => {
                    let sent = self
                        .writes
                        .resolve(id)
                        .ok_or_else(|| Failure::protocol(format!("ACK for unknown write {id}")))?;
                    self.ctx.counters.applied.fetch_add(1, Relaxed);
                    if let Some(l) = &self.ctx.write_log {
                        l.acked(self.session, id, tick);
                    }
                    self.ack_lat.push(micros(sent, now));
                    if let Some(x) = &self.ctx.cross {
                        x.acked(tick, sent);
                    }
                    if self.visible_tick(r.as_deref()).is_some_and(|t| t >= tick) {
                        self.lat.push(micros(sent, now));
                    } else {
                        if let Some(r) = r.as_mut() {
                            r.note_tick(tick, now);
                        }
                        self.acked.push((tick, sent));
                    }
                }
                ServerMsg::Reject { id, reason, .. } => {
                    self.writes
                        .resolve(id)
                        .ok_or_else(|| Failure::protocol(format!("REJECT for unknown write {id}")))?;
                    self.ctx.counters.reject(reason);
                }
                _ => match r {
                    Some(r) => r.on_message(&m, now).map_err(bad("SNAPSHOT/DIFF/SYNCED"))?,
                    None => {
                        let tick = match m {
                            ServerMsg::Snapshot { tick, .. } => {
                                self.ctx.counters.snapshots.fetch_add(1, Relaxed);
                                tick
                            }
                            ServerMsg::Diff(d) => d.tick,
                            ServerMsg::Synced { tick } => tick,
                            _ => continue,
                        };
                        self.light_tick = self.light_tick.max(Some(tick));
                    }
                },
            }
        }
        Ok((welcomed, big))
    }

    /// Add what the replica counted since last time to the shared counters.
    fn count_syncs(&mut self, r: &Replica) {
        let c = &self.ctx.counters;
        let st = r.stats();
        if st != self.seen {
            let d = |new: u64, old: u64| new.saturating_sub(old);
            c.syncs.fetch_add(d(st.syncs, self.seen.syncs), Relaxed);
            c.syncs_gap.fetch_add(d(st.syncs_gap, self.seen.syncs_gap), Relaxed);
            c.syncs_lag.fetch_add(d(st.syncs_lag, self.seen.syncs_lag), Relaxed);
            c.syncs_overfull.fetch_add(d(st.syncs_overfull, self.seen.syncs_overfull), Relaxed);
            c.syncs_fresh.fetch_add(d(st.syncs_fresh, self.seen.syncs_fresh), Relaxed);
            c.syncs_resume.fetch_add(d(st.syncs_resume, self.seen.syncs_resume), Relaxed);
            c.snapshots.fetch_add(d(st.snapshots, self.seen.snapshots), Relaxed);
            c.hash_mismatches.fetch_add(d(st.hash_mismatches, self.seen.hash_mismatches), Relaxed);
            self.seen = st;
        }
    }

    /// The tick the client has seen: its replica's, or (light) the highest one announced.
    fn visible_tick(&self, r: Option<&Replica>) -> Option<u64> {
        r.map_or(self.light_tick, Replica::tick)
    }

    /// A light client's view of a datagram: the tick it announces.
    fn on_light_datagram(&mut self, d: &[u8]) -> Result<(), Failure> {
        let tick = match proto::decode_datagram(d).map_err(bad("datagram"))? {
            proto::ServerDatagram::DiffPart(p) => p.diff.tick,
            proto::ServerDatagram::Head { tick, .. } => tick,
        };
        self.light_tick = self.light_tick.max(Some(tick));
        Ok(())
    }

    /// After any event: settle visible writes, ask for repairs, publish counters.
    fn settle(&mut self, mut r: Option<&mut Replica>, now: Instant, out: &mut Vec<u8>) {
        if let Some(v) = self.visible_tick(r.as_deref()) {
            let lat = &mut self.lat;
            self.acked.retain(|&(tick, sent)| {
                let seen = tick <= v;
                if seen {
                    lat.push(micros(sent, now));
                }
                !seen
            });
        }
        if let Some(r) = r.as_mut() {
            if let Some(have_tick) = r.poll_sync(now) {
                proto::encode_client(&ClientMsg::Sync { have_tick, flags: self.ctx.sync_flags }, out);
            }
            self.count_syncs(r);
            self.replica_polls = r.needs_poll();
        }
        self.slot.unresolved.store(self.writes.outstanding as u32, Relaxed);
        self.slot.invisible.store(self.acked.len() as u32, Relaxed);
        // An observer: tell the other clients' ACKed writes how far its server has shown the canvas.
        if let (Some(i), Some(x), Some(v)) = (self.observer, &self.ctx.cross, self.visible_tick(r.as_deref()))
        {
            x.reached(i, v, now);
        }
    }

    /// Whether a quiet client must wake up to let the replica re-check for gaps (buffered ticks, or a tick
    /// an ACK or HEAD named that it lacks: an ACKed write not visible yet is one, see `note_tick` above).
    /// Light clients never sync.
    fn needs_poll(&self) -> bool {
        !self.light && self.replica_polls
    }
}

enum Ev {
    Phase(Phase),
    Chunk(Bytes),
    Datagrams,
    Wrote,
    WriteTimer,
    SyncTimer,
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 86_400)
}

/// Run the protocol on an established connection until the phase says `Close` (Ok) or it fails.
/// `join_from`: when the client's first connection attempt began (its first connection only), to record
/// its join once the replica holds a whole canvas.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    ctx: &Ctx,
    slot: &Slot,
    conn: &quinn::Connection,
    rng: &mut SmallRng,
    phase: &mut watch::Receiver<Phase>,
    full: bool,
    observer: Option<usize>,
    mut join_from: Option<Instant>,
) -> Result<(), Failure> {
    let (mut send, mut recv) = match tokio::time::timeout(ctx.handshake_timeout, conn.open_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::conn(&e)),
        Err(_) => {
            return Err(Failure::protocol("cannot open the control stream (server allows no bidi stream?)"))
        }
    };
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut out_pos = 0usize;
    let mut s = Session::new(ctx, slot, !full, observer);
    // A replica from a connection that was lost resumes from its tick (`--reconnect`).
    let have_tick = match &mut *slot.replica() {
        ReplicaSlot::Canvas1(r) => {
            s.seen = r.stats();
            let have = r.resume();
            s.count_syncs(r);
            have
        }
        _ => NO_TICK,
    };
    proto::encode_client(&ClientMsg::Sync { have_tick, flags: ctx.sync_flags }, &mut out);
    let mut fr = FrameReader::new();
    let mut writing = false;
    let write_sleep = tokio::time::sleep_until(far_future());
    let sync_sleep = tokio::time::sleep_until(far_future());
    tokio::pin!(write_sleep, sync_sleep);
    let mut sync_armed = false;
    let mut dgrams: Vec<Bytes> = Vec::new();
    let c = &ctx.counters;
    loop {
        let ev = tokio::select! {
            biased;
            p = next_phase(phase) => match p {
                Some(p) => Ev::Phase(p),
                None => return Ok(()),
            },
            r = recv.read_chunk(READ_CHUNK, true) => match r {
                Ok(Some(chunk)) => Ev::Chunk(chunk.bytes),
                Ok(None) => return Err(Failure::protocol("server finished the control stream")),
                Err(e) => return Err(Failure::read(&e)),
            },
            r = send.write(&out[out_pos..]), if out_pos < out.len() => match r {
                Ok(n) => {
                    out_pos += n;
                    Ev::Wrote
                }
                Err(e) => return Err(Failure::write(&e)),
            },
            () = &mut write_sleep, if writing && out.len() - out_pos < MAX_OUT_QUEUED => Ev::WriteTimer,
            () = &mut sync_sleep, if sync_armed => Ev::SyncTimer,
            // Last: under overload datagrams are always ready, and must not starve the rest.
            r = recv_datagrams(conn, &mut dgrams, c) => r.map(|()| Ev::Datagrams)?,
        };
        let now = Instant::now();
        match ev {
            Ev::Phase(p) => writing &= p == Phase::Run,
            Ev::Wrote => {
                if out_pos == out.len() {
                    out.clear();
                    out_pos = 0;
                } else if out_pos >= 4096 {
                    out.drain(..out_pos);
                    out_pos = 0;
                }
                continue;
            }
            _ => {}
        }
        {
            let mut rep = slot.replica();
            match ev {
                Ev::Chunk(bytes) => {
                    fr.push(&bytes);
                    let (welcomed, big) = s.on_stream(&mut fr, &mut rep, now)?;
                    if let (Some(t), Some(r)) = (join_from, replica(&mut rep)) {
                        if r.tick().is_some() {
                            ctx.join_latency.record(&mut vec![super::micros(t, now)]);
                            join_from = None;
                        }
                    }
                    if big && fr.buffered() == 0 {
                        fr = FrameReader::new(); // give the snapshot-sized buffer back
                    }
                    if welcomed && observer.is_none() && *phase.borrow() == Phase::Run {
                        writing = true;
                        write_sleep.as_mut().reset(ctx.next_write_at(rng, now));
                    }
                }
                Ev::Datagrams => {
                    if let Some(r) = replica(&mut rep) {
                        for d in &dgrams {
                            r.on_datagram(d, now).map_err(bad("datagram"))?;
                        }
                    } else if s.light && s.dims.is_some() {
                        for d in &dgrams {
                            s.on_light_datagram(d)?;
                        }
                    }
                    dgrams.clear();
                }
                Ev::WriteTimer => {
                    if let Some(dims) = s.dims {
                        let pixel = random_pixel(rng, dims);
                        let id = s.writes.send(now);
                        if let Some(l) = &ctx.write_log {
                            l.sent(s.session, id, pixel);
                        }
                        proto::encode_client(&ClientMsg::Write { id, pixel }, &mut out);
                        c.pixels_sent.fetch_add(1, Relaxed);
                    }
                    write_sleep.as_mut().reset(ctx.next_write_at(rng, now));
                }
                Ev::SyncTimer => sync_armed = false,
                Ev::Phase(_) | Ev::Wrote => {}
            }
            if s.dims.is_some() {
                if let Some(r) = replica(&mut rep) {
                    r.observe_rtt(conn.rtt());
                }
                s.settle(replica(&mut rep), now, &mut out);
            }
        }
        if !sync_armed && s.needs_poll() {
            sync_sleep.as_mut().reset((now + SYNC_POLL).into());
            sync_armed = true;
        }
        ctx.latency.record(&mut s.lat);
        ctx.ack_latency.record(&mut s.ack_lat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_resolve_in_any_order() {
        let t = Instant::now();
        let mut w = Writes::default();
        let ids: Vec<u32> = (0..5).map(|_| w.send(t)).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
        assert!(w.resolve(2).is_some());
        assert!(w.resolve(2).is_none(), "twice");
        assert!(w.resolve(9).is_none(), "never sent");
        assert!(w.resolve(0).is_some());
        assert_eq!(w.first_id, 1);
        assert!(w.resolve(1).is_some());
        assert_eq!(w.first_id, 3);
        assert_eq!(w.outstanding, 2);
        assert!(w.resolve(4).is_some() && w.resolve(3).is_some());
        assert_eq!((w.outstanding, w.sent.len(), w.first_id), (0, 0, 5));
    }
}
