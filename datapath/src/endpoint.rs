//! The per-worker QUIC endpoint: accepts connections (stateless retry optional), routes packets by
//! connection id, runs quiche's timers from a heap, speaks both wire protocols, forwards pixel writes to the
//! master, and fans each tick's shared, pre-encoded broadcast out to its connections. It is written once
//! against [`crate::seam::Datapath`]; time is always passed in by the caller.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canvas::proto::{self, ClientMsg, FrameReader, ProtoError, NO_TICK};
use canvas::{legacy, Cooldown, Datagrams, Pixel, RejectReason, Rules};
use ring::hmac;
use slab::Slab;

use crate::master::Shared;
use crate::publish::{PixelWrite, Publication, Snapshot};
use crate::seam::{Addrs, Datapath};

/// Length of the connection ids this server issues.
pub const LOCAL_CID_LEN: usize = 16;
/// A packet whose pacing release time is less than this ahead is sent at once (Linux fq's granularity is
/// of the same order; holding packets for less would cost more wake-ups than it saves burstiness).
pub const PACING_SLACK: Duration = Duration::from_millis(1);
/// Superseded timer entries tolerated beyond two per connection before the heap is purged.
pub const TIMER_PURGE_SLACK: usize = 64;
/// Smallest datagram that may carry a client Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// Retry tokens older than this are refused.
pub const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(10);
/// Application error code sent when a client breaks the canvas/1 framing.
pub const APP_ERR_PROTOCOL: u64 = 0x101;
/// Application error code sent on graceful shutdown.
pub const APP_ERR_SHUTDOWN: u64 = 0x0;
/// Application error code sent to a client that does not read its control stream: more than this many
/// control chunks (ACKs, REJECTs, diffs) are queued for it.
pub const APP_ERR_NOT_READING: u64 = 0x102;
/// Control chunks queued per connection before it is closed with [`APP_ERR_NOT_READING`].
pub const MAX_STREAM_CHUNKS: usize = 4096;

/// Endpoint tuning; the server fills it from its flags.
#[derive(Clone, Copy, Debug)]
pub struct EndpointConfig {
    /// This worker's index (its slot in the master's per-worker tables).
    pub worker: usize,
    /// Canvas validation rules.
    pub rules: Rules,
    /// Write cooldown.
    pub cooldown: Cooldown,
    /// Connections this worker accepts at most (predecessor: MAX_CONNECTIONS_PER_WORKER = 65536).
    pub max_conns: usize,
    /// Demand address validation with a stateless Retry before accepting.
    pub retry: bool,
    /// Broadcast interval, told to canvas/1 clients.
    pub tick_ms: u32,
    /// Legacy clients get the whole canvas every this many ticks.
    pub full_interval: u64,
    /// Entries of quiche's per-connection DATAGRAM send queue we keep filled.
    pub dgram_queue: usize,
    /// Ticks of broadcast backlog a connection may have before the backlog is dropped (bounded, never
    /// unbounded: a canvas/1 client then repairs with SYNC, a legacy one at the next full snapshot).
    pub outbox_ticks: usize,
    /// Non-empty ticks kept for catch-up; older ones are answered with a snapshot.
    pub history_ticks: usize,
    /// Packets one connection may send per flush pass before the next connection's turn.
    pub send_budget: usize,
}

/// Endpoint counters (per worker), written to `--stats-json`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EndpointStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed and removed.
    pub closed: u64,
    /// Connection attempts refused at max_conns.
    pub refused: u64,
    /// Connections that negotiated canvas/1.
    pub conns_canvas1: u64,
    /// Connections that negotiated the legacy protocol.
    pub conns_legacy: u64,
    /// Retry packets sent.
    pub retries: u64,
    /// Initial packets with an invalid retry token.
    pub bad_tokens: u64,
    /// Version negotiation packets sent.
    pub version_negotiations: u64,
    /// Packets dropped: unparsable header or unknown connection id on a non-Initial packet.
    pub dropped_packets: u64,
    /// Packets quiche refused.
    pub recv_errors: u64,
    /// Pixel writes received.
    pub pixels_received: u64,
    /// Writes handed to the master.
    pub pixels_queued: u64,
    /// Writes acknowledged as applied (canvas/1 ACKs plus legacy writes the master applied).
    pub pixels_applied: u64,
    /// Writes refused, by reason.
    pub rejected_out_of_bounds: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_bad_color: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_cooldown: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_busy: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_malformed: u64,
    /// Legacy datagrams ignored for not being 5 bytes (the predecessor ignored them too).
    pub legacy_ignored: u64,
    /// SYNC requests served.
    pub syncs: u64,
    /// Snapshots sent (canvas/1 stream and legacy RLE).
    pub snapshots_sent: u64,
    /// Tick diffs re-sent on the stream in SYNC replies.
    pub diffs_resent: u64,
    /// Broadcast DATAGRAMs handed to quiche.
    pub broadcast_dgrams: u64,
    /// Their payload bytes.
    pub broadcast_bytes: u64,
    /// Connection backlogs dropped for exceeding outbox_ticks.
    pub outbox_overflows: u64,
    /// Publications received from the master.
    pub publications: u64,
    /// Publications missed (the worker fell behind the master's queue).
    pub publication_gaps: u64,
    /// Packets held back to honour quiche's pacing.
    pub paced_holds: u64,
    /// Packets quiche produced and handed to the backend.
    pub packets_out: u64,
    /// Broadcast datagrams larger than the peer accepts (skipped).
    pub dgram_too_big: u64,
    /// Connections closed for not reading their control stream.
    pub closed_not_reading: u64,
    /// quiche timeouts fired.
    pub timeouts: u64,
}

impl EndpointStats {
    fn reject(&mut self, r: RejectReason) {
        *match r {
            RejectReason::OutOfBounds => &mut self.rejected_out_of_bounds,
            RejectReason::BadColor => &mut self.rejected_bad_color,
            RejectReason::Cooldown => &mut self.rejected_cooldown,
            RejectReason::Busy => &mut self.rejected_busy,
            RejectReason::Malformed => &mut self.rejected_malformed,
        } += 1;
    }

    /// All rejected writes.
    pub fn rejected(&self) -> u64 {
        self.rejected_out_of_bounds
            + self.rejected_bad_color
            + self.rejected_cooldown
            + self.rejected_busy
            + self.rejected_malformed
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Pending,
    Legacy,
    Canvas1,
}

/// A run of shared datagrams still to hand to quiche.
#[derive(Debug)]
enum Out {
    Head(Arc<Publication>, usize),
    Legacy(Arc<Publication>, usize),
    Parts(Arc<Publication>, usize),
    LegacySnap(Arc<Snapshot>, usize),
}

impl Out {
    fn cursor(&mut self) -> (&Datagrams, &mut usize) {
        match self {
            Out::Head(p, i) => (&p.head, i),
            Out::Legacy(p, i) => (&p.legacy, i),
            Out::Parts(p, i) => (&p.parts, i),
            Out::LegacySnap(s, i) => (&s.legacy, i),
        }
    }
}

/// Control-stream bytes still to hand to quiche (shared frames are not copied until quiche takes them).
#[derive(Debug)]
enum Chunk {
    Bytes(Vec<u8>, usize),
    Diff(Arc<Publication>, usize),
    Snap(Arc<Snapshot>, usize),
}

impl Chunk {
    fn cursor(&mut self) -> (&[u8], &mut usize) {
        match self {
            Chunk::Bytes(b, i) => (b, i),
            Chunk::Diff(p, i) => (&p.diff_frame, i),
            Chunk::Snap(s, i) => (&s.frame, i),
        }
    }
}

#[derive(Debug)]
struct Paced {
    at: Instant,
    buf: Vec<u8>,
    addrs: Addrs,
}

struct Conn {
    q: quiche::Connection,
    gen: u32,
    scid: [u8; LOCAL_CID_LEN],
    proto: Proto,
    cooldown: Option<Instant>,
    timer: Option<Instant>,
    outbox: VecDeque<Out>,
    ctl: Option<u64>,
    reader: FrameReader,
    stream_out: VecDeque<Chunk>,
    welcomed: bool,
    /// Broadcasts flow to this connection (it has a snapshot or is being sent one).
    ready: bool,
    /// Waiting for a snapshot new enough to catch it up (canvas/1: a SYNC; legacy: its first snapshot).
    awaiting: bool,
    dirty: bool,
    paced: Option<Paced>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("gen", &self.gen).field("proto", &self.proto).finish_non_exhaustive()
    }
}

impl Conn {
    /// The Vec to append small control messages to.
    fn small(&mut self) -> &mut Vec<u8> {
        let reuse = matches!(self.stream_out.back(), Some(Chunk::Bytes(b, 0)) if b.len() < 16 * 1024);
        if !reuse {
            self.stream_out.push_back(Chunk::Bytes(Vec::with_capacity(256), 0));
        }
        match self.stream_out.back_mut() {
            Some(Chunk::Bytes(b, _)) => b,
            _ => unreachable!("just pushed"),
        }
    }
}

/// Everything but the connection table, so handlers can borrow both.
struct Ctx {
    cfg: EndpointConfig,
    shared: Arc<Shared>,
    key: hmac::Key,
    epoch: Instant,
    stats: EndpointStats,
    /// One entry per write handed to the master, in order: who to ACK when the master reports it applied.
    acks: VecDeque<Option<(usize, u32, u32)>>,
    applied: u64,
    history: VecDeque<Arc<Publication>>,
    /// Newest tick whose diff this worker no longer holds: catch-up from before it needs a snapshot.
    lost_change: u64,
    snapshot: Option<Arc<Snapshot>>,
    tick: u64,
    tx_now: Vec<(Addrs, Vec<u8>)>,
}

/// The endpoint.
pub struct Endpoint {
    qcfg: quiche::Config,
    conns: Slab<Conn>,
    ids: HashMap<[u8; LOCAL_CID_LEN], usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    dirty: Vec<usize>,
    /// The other half of `dirty`'s double buffer (empty between passes; see `flush`).
    dirty_spare: Vec<usize>,
    next_gen: u32,
    buf: Vec<u8>,
    closing: bool,
    ctx: Ctx,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("conns", &self.conns.len()).field("tick", &self.ctx.tick).finish()
    }
}

impl Endpoint {
    /// An endpoint for worker `cfg.worker`, using `qcfg` (see [`crate::quic::server_config`]) and the
    /// queues in `shared`. `now` anchors retry-token ages.
    pub fn new(cfg: EndpointConfig, qcfg: quiche::Config, shared: Arc<Shared>, now: Instant) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("system RNG available");
        Self {
            qcfg,
            conns: Slab::new(),
            ids: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            next_gen: 0,
            buf: vec![0; 64 * 1024],
            closing: false,
            ctx: Ctx {
                cfg,
                shared,
                key,
                epoch: now,
                stats: EndpointStats::default(),
                acks: VecDeque::new(),
                applied: 0,
                history: VecDeque::new(),
                lost_change: 0,
                snapshot: None,
                tick: 0,
                tx_now: Vec::new(),
            },
        }
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.ctx.stats
    }

    /// Open connections.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// The newest tick this worker has seen.
    pub fn tick(&self) -> u64 {
        self.ctx.tick
    }

    /// True when the endpoint has sends pending (the caller should not sleep).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.ctx.tx_now.is_empty()
    }

    /// Entries in the timer heap (live and superseded), for tests and stats.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Earliest timer (quiche timeout or pacing release).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    fn derive_cid(&self, dcid: &[u8]) -> [u8; LOCAL_CID_LEN] {
        let tag = hmac::sign(&self.ctx.key, dcid);
        tag.as_ref()[..LOCAL_CID_LEN].try_into().expect("SHA-256 tag is 32 bytes")
    }

    fn mark_dirty(dirty: &mut Vec<usize>, key: usize, c: &mut Conn) {
        if !c.dirty {
            c.dirty = true;
            dirty.push(key);
        }
    }

    /// Handle one received datagram. `pkt` is decrypted in place.
    pub fn on_datagram(&mut self, now: Instant, addrs: Addrs, pkt: &mut [u8]) {
        let hdr = match quiche::Header::from_slice(pkt, LOCAL_CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                self.ctx.stats.dropped_packets += 1;
                return;
            }
        };
        let mut key =
            <[u8; LOCAL_CID_LEN]>::try_from(&hdr.dcid[..]).ok().and_then(|k| self.ids.get(&k).copied());
        if key.is_none() && hdr.ty == quiche::Type::Initial {
            key = self.ids.get(&self.derive_cid(&hdr.dcid)).copied();
        }
        let (key, new) = match key {
            Some(k) => (k, false),
            None => match self.accept(now, addrs, &hdr, pkt.len()) {
                Some(k) => (k, true),
                None => return,
            },
        };
        let c = &mut self.conns[key];
        let info = quiche::RecvInfo { from: addrs.peer, to: addrs.local };
        if c.q.recv(pkt, info).is_err() {
            self.ctx.stats.recv_errors += 1;
            if new {
                // An Initial quiche refused: no state is kept for it.
                self.remove(key);
                return;
            }
        }
        self.ctx.process_app(key, c, now, &mut self.buf);
        Self::mark_dirty(&mut self.dirty, key, c);
    }

    fn accept(&mut self, now: Instant, addrs: Addrs, hdr: &quiche::Header<'_>, len: usize) -> Option<usize> {
        let stats = &mut self.ctx.stats;
        // RFC 9000 §14.1: a server discards Initial packets in datagrams smaller than 1200 bytes, and sends
        // nothing (not even Version Negotiation) in reply to them: no amplification from small packets.
        if hdr.ty != quiche::Type::Initial || self.closing || len < MIN_INITIAL_DATAGRAM {
            stats.dropped_packets += 1;
            return None;
        }
        if !quiche::version_is_supported(hdr.version) {
            let mut out = vec![0; 1350];
            if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                out.truncate(n);
                self.ctx.tx_now.push((addrs, out));
                stats.version_negotiations += 1;
            }
            return None;
        }
        if self.conns.len() >= self.ctx.cfg.max_conns {
            stats.refused += 1;
            return None;
        }
        let (scid, odcid) = if self.ctx.cfg.retry {
            let token = hdr.token.as_deref().unwrap_or(&[]);
            if token.is_empty() {
                let new_scid = self.derive_cid(&hdr.dcid);
                let token = self.ctx.mint_token(now, addrs.peer, &hdr.dcid);
                let mut out = vec![0; 1350];
                let scid = quiche::ConnectionId::from_ref(&new_scid);
                if let Ok(n) = quiche::retry(&hdr.scid, &hdr.dcid, &scid, &token, hdr.version, &mut out) {
                    out.truncate(n);
                    self.ctx.tx_now.push((addrs, out));
                    self.ctx.stats.retries += 1;
                }
                return None;
            }
            let Some(odcid) = self.ctx.check_token(now, addrs.peer, token) else {
                self.ctx.stats.bad_tokens += 1;
                return None;
            };
            let Ok(scid) = <[u8; LOCAL_CID_LEN]>::try_from(&hdr.dcid[..]) else {
                self.ctx.stats.bad_tokens += 1;
                return None;
            };
            (scid, Some(odcid))
        } else {
            (self.derive_cid(&hdr.dcid), None)
        };
        let odcid = odcid.map(quiche::ConnectionId::from_vec);
        let q = match quiche::accept(
            &quiche::ConnectionId::from_ref(&scid),
            odcid.as_ref(),
            addrs.local,
            addrs.peer,
            &mut self.qcfg,
        ) {
            Ok(q) => q,
            Err(_) => {
                self.ctx.stats.recv_errors += 1;
                return None;
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let key = self.conns.insert(Conn {
            q,
            gen: self.next_gen,
            scid,
            proto: Proto::Pending,
            cooldown: None,
            timer: None,
            outbox: VecDeque::new(),
            ctl: None,
            reader: FrameReader::with_max(proto::MAX_CLIENT_FRAME),
            stream_out: VecDeque::new(),
            welcomed: false,
            ready: false,
            awaiting: false,
            dirty: false,
            paced: None,
        });
        self.ids.insert(scid, key);
        self.ctx.stats.accepted += 1;
        Some(key)
    }

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

    /// Fire expired quiche timers and pacing releases.
    pub fn on_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, key, gen))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(key).filter(|c| c.gen == gen) else {
                continue;
            };
            if c.timer != Some(t) {
                continue; // superseded by an earlier deadline
            }
            c.timer = None;
            // The armed deadline may be earlier than quiche's current one (it only ever moves the armed
            // entry earlier, see `flush`): fire quiche only when its own deadline has passed.
            if c.q.timeout_instant().is_some_and(|q| q <= now) {
                c.q.on_timeout();
                self.ctx.stats.timeouts += 1;
            }
            Self::mark_dirty(&mut self.dirty, key, c);
        }
    }

    /// Close every connection (CONNECTION_CLOSE with application code 0) and accept no new ones.
    pub fn close_all(&mut self) {
        self.closing = true;
        for (key, c) in self.conns.iter_mut() {
            let _ = c.q.close(true, APP_ERR_SHUTDOWN, b"server shutdown");
            Self::mark_dirty(&mut self.dirty, key, c);
        }
    }

    /// Produce packets for every connection with something to send, into `tx`. Connections that could not
    /// finish (transmit side full, send budget used) stay queued for the next call.
    pub fn flush<B: Datapath>(&mut self, now: Instant, tx: &mut B) {
        while let Some((addrs, pkt)) = self.ctx.tx_now.pop() {
            let Some(slot) = tx.tx_slot() else {
                self.ctx.tx_now.push((addrs, pkt));
                return;
            };
            slot[..pkt.len()].copy_from_slice(&pkt);
            tx.tx_commit(pkt.len(), addrs);
        }
        // The pass walks last pass's list while connections that stay queued go onto `self.dirty`; the two
        // vectors swap roles every pass, so the steady state allocates nothing.
        let mut pending = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.dirty_spare));
        let mut blocked = false;
        for &key in &pending {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if blocked {
                c.dirty = true;
                self.dirty.push(key);
                continue;
            }
            let (more, full) = self.ctx.flush_conn(c, now, tx);
            blocked = full;
            if c.q.is_closed() {
                self.remove(key);
                continue;
            }
            // Arm the timer (quiche timeout or pacing release). Only an earlier deadline pushes a heap entry:
            // quiche moves its idle deadline on every packet, and pushing each move would grow the heap by
            // one stale entry per packet. A later deadline is picked up when the armed entry fires.
            let t = match &c.paced {
                Some(p) => Some(c.q.timeout_instant().map_or(p.at, |q| q.min(p.at))),
                None => c.q.timeout_instant(),
            };
            if let Some(t) = t {
                if c.timer.is_none_or(|armed| t < armed) {
                    c.timer = Some(t);
                    self.timers.push(Reverse((t, key, c.gen)));
                }
            }
            if more || full {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
        pending.clear();
        self.dirty_spare = pending;
        // Superseded heap entries are skipped when they fire; purge them once they outnumber live ones.
        if self.timers.len() > TIMER_PURGE_SLACK + 2 * self.conns.len() {
            let conns = &self.conns;
            self.timers.retain(|Reverse((t, k, g))| {
                conns.get(*k).is_some_and(|c| c.gen == *g && c.timer == Some(*t))
            });
        }
    }

    fn remove(&mut self, key: usize) {
        let c = self.conns.remove(key);
        self.ids.remove(&c.scid);
        self.ctx.stats.closed += 1;
    }
}

impl Ctx {
    fn mint_token(&self, now: Instant, peer: SocketAddr, odcid: &[u8]) -> Vec<u8> {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut t = Vec::with_capacity(8 + 1 + odcid.len() + 16);
        t.extend_from_slice(&ms.to_le_bytes());
        t.push(odcid.len() as u8);
        t.extend_from_slice(odcid);
        let tag = hmac::sign(&self.key, &token_msg(&t, peer));
        t.extend_from_slice(&tag.as_ref()[..16]);
        t
    }

    fn check_token(&self, now: Instant, peer: SocketAddr, token: &[u8]) -> Option<Vec<u8>> {
        let (body, tag) = token.split_at_checked(token.len().checked_sub(16)?)?;
        let expect = hmac::sign(&self.key, &token_msg(body, peer));
        if !ring_eq(&expect.as_ref()[..16], tag) {
            return None;
        }
        let ms = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        let age = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if age.saturating_sub(ms) > RETRY_TOKEN_LIFETIME.as_millis() as u64 {
            return None;
        }
        let n = usize::from(*body.get(8)?);
        body.get(9..9 + n).map(<[u8]>::to_vec)
    }

    /// React to what quiche delivered on `c`: negotiate the protocol, read writes and control messages.
    fn process_app(&mut self, key: usize, c: &mut Conn, now: Instant, buf: &mut [u8]) {
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
                    loop {
                        const CHUNK: usize = 16 * 1024;
                        let spare = c.reader.spare(CHUNK);
                        match c.q.stream_recv(s, spare) {
                            Ok((n, _fin)) => c.reader.commit(n, CHUNK),
                            Err(_) => {
                                c.reader.commit(0, CHUNK);
                                break;
                            }
                        }
                    }
                    if let Err(e) = self.handle_frames(key, c, now) {
                        let _ = c.q.close(true, APP_ERR_PROTOCOL, format!("{e}").as_bytes());
                    }
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
                    Ok(ClientMsg::Sync { have_tick }) => self.sync(c, have_tick),
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
    fn write(&mut self, key: usize, c: &mut Conn, id: Option<u32>, pixel: Pixel, now: Instant) {
        self.stats.pixels_received += 1;
        let mut slot = c.cooldown;
        let result = self.cfg.rules.validate(pixel).map_err(|r| (r, Duration::ZERO)).and_then(|index| {
            self.cfg.cooldown.try_take(&mut slot, now).map_err(|wait| (RejectReason::Cooldown, wait))?;
            let link = &self.shared.links[self.cfg.worker];
            link.writes
                .push(PixelWrite { index, color: pixel.color })
                .map_err(|_| (RejectReason::Busy, Duration::from_millis(u64::from(self.cfg.tick_ms))))
        });
        match result {
            Ok(()) => {
                c.cooldown = slot;
                self.stats.pixels_queued += 1;
                self.acks.push_back(id.map(|id| (key, c.gen, id)));
            }
            Err((reason, wait)) => {
                self.stats.reject(reason);
                if let Some(id) = id {
                    proto::encode_reject(
                        id,
                        reason,
                        wait.as_millis().min(u128::from(u32::MAX)) as u32,
                        c.small(),
                    );
                }
            }
        }
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

    /// Answer SYNC{have}: the diffs after `have` if this worker still holds them all, else a snapshot and
    /// the diffs after it; then SYNCED. Without a usable snapshot, ask the master and answer later.
    fn sync(&mut self, c: &mut Conn, have: u64) {
        self.welcome(c);
        let from = if have != NO_TICK && have <= self.tick && have >= self.lost_change {
            have
        } else {
            match self.snapshot.as_ref().filter(|s| s.tick >= self.lost_change) {
                Some(s) => {
                    c.stream_out.push_back(Chunk::Snap(s.clone(), 0));
                    self.stats.snapshots_sent += 1;
                    s.tick
                }
                None => {
                    c.awaiting = true;
                    self.shared.snapshot_wanted.store(true, Ordering::Release);
                    return;
                }
            }
        };
        for p in self.history.iter().filter(|p| p.tick > from) {
            c.stream_out.push_back(Chunk::Diff(p.clone(), 0));
            self.stats.diffs_resent += 1;
        }
        proto::encode_synced(self.tick, c.small());
        self.stats.syncs += 1;
        c.awaiting = false;
        // Broadcast datagrams resume with the next tick, which chains onto what was just sent. Anything
        // queued before is superseded by the reply.
        c.outbox.clear();
        c.ready = true;
    }

    /// First broadcast to a legacy connection: the snapshot and the diffs after it.
    fn start_legacy(&mut self, c: &mut Conn) {
        let Some(s) = self.snapshot.as_ref().filter(|s| s.tick >= self.lost_change) else {
            c.awaiting = true;
            self.shared.snapshot_wanted.store(true, Ordering::Release);
            return;
        };
        c.outbox.push_back(Out::LegacySnap(s.clone(), 0));
        self.stats.snapshots_sent += 1;
        for p in self.history.iter().filter(|p| p.tick > s.tick) {
            c.outbox.push_back(Out::Legacy(p.clone(), 0));
        }
        c.awaiting = false;
        c.ready = true;
    }

    /// Hand queued control bytes to quiche, as far as the stream's flow control allows. Returns bytes taken.
    fn feed_stream(&mut self, c: &mut Conn) -> usize {
        let Some(ctl) = c.ctl else { return 0 };
        let mut total = 0;
        while let Some(ch) = c.stream_out.front_mut() {
            let (bytes, off) = ch.cursor();
            match c.q.stream_send(ctl, &bytes[*off..], false) {
                Ok(n) => {
                    *off += n;
                    total += n;
                    if *off < bytes.len() {
                        break;
                    }
                    c.stream_out.pop_front();
                }
                Err(quiche::Error::Done) => break,
                Err(_) => {
                    c.stream_out.clear();
                    break;
                }
            }
        }
        total
    }

    /// Keep quiche's DATAGRAM queue topped up from the shared broadcast backlog. Returns datagrams queued.
    fn feed_dgrams(&mut self, c: &mut Conn) -> usize {
        let mut n = 0;
        while c.q.dgram_send_queue_len() < self.cfg.dgram_queue {
            let Some(o) = c.outbox.front_mut() else { break };
            let (d, i) = o.cursor();
            let Some(g) = d.get(*i) else {
                c.outbox.pop_front();
                continue;
            };
            match c.q.dgram_send(g) {
                Ok(()) => {
                    *i += 1;
                    n += 1;
                    self.stats.broadcast_dgrams += 1;
                    self.stats.broadcast_bytes += g.len() as u64;
                }
                Err(quiche::Error::Done) => break,
                Err(quiche::Error::BufferTooShort) => {
                    // Larger than the peer accepts: skip this one; a canvas/1 client repairs with SYNC.
                    *i += 1;
                    self.stats.dgram_too_big += 1;
                }
                Err(_) => {
                    // Peer without DATAGRAM support.
                    c.outbox.clear();
                    break;
                }
            }
        }
        n
    }

    /// Send what `c` has, up to the send budget. Returns (has more to send, transmit side full).
    fn flush_conn<B: Datapath>(&mut self, c: &mut Conn, now: Instant, tx: &mut B) -> (bool, bool) {
        // quiche stamps `SendInfo.at` from its own reading of the monotonic clock (with its default
        // recovery, `at` is simply quiche's "now"), so release times are compared with a fresh reading, once
        // per connection: the loop's `now` can be tens of milliseconds old by the end of a flush pass over
        // thousands of connections, and comparing against it would hold nearly every packet.
        let now = now.max(Instant::now());
        if let Some(p) = &c.paced {
            if p.at > now {
                return (false, false);
            }
            let Some(slot) = tx.tx_slot() else {
                return (true, true);
            };
            let p = c.paced.take().expect("checked");
            slot[..p.buf.len()].copy_from_slice(&p.buf);
            tx.tx_commit(p.buf.len(), p.addrs);
            self.stats.packets_out += 1;
        }
        self.feed_stream(c);
        if c.stream_out.len() > MAX_STREAM_CHUNKS && !c.q.is_closed() {
            let _ = c.q.close(true, APP_ERR_NOT_READING, b"control stream not read");
            c.stream_out.clear();
            self.stats.closed_not_reading += 1;
        }
        self.feed_dgrams(c);
        let mut sent = 0;
        loop {
            if sent >= self.cfg.send_budget {
                return (true, false);
            }
            let Some(slot) = tx.tx_slot() else {
                return (true, true);
            };
            match c.q.send(slot) {
                Ok((len, info)) => {
                    let addrs = Addrs { local: info.from, peer: info.to };
                    if info.at > now + PACING_SLACK {
                        c.paced = Some(Paced { at: info.at, buf: slot[..len].to_vec(), addrs });
                        self.stats.paced_holds += 1;
                        return (false, false);
                    }
                    tx.tx_commit(len, addrs);
                    sent += 1;
                    self.stats.packets_out += 1;
                }
                Err(quiche::Error::Done) => {
                    // quiche may have room again for control bytes or datagrams.
                    if self.feed_stream(c) + self.feed_dgrams(c) == 0 {
                        break;
                    }
                }
                Err(_) => {
                    let _ = c.q.close(false, 0x1, b"internal error");
                    break;
                }
            }
        }
        (false, false)
    }
}

fn token_msg(body: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut m = body.to_vec();
    match peer {
        SocketAddr::V4(a) => m.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => m.extend_from_slice(&a.ip().octets()),
    }
    m.extend_from_slice(&peer.port().to_le_bytes());
    m
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
