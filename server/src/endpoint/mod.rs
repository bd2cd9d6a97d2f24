//! The per-worker QUIC endpoint: accepts connections (stateless retry optional), routes packets by
//! connection id, runs quiche's timers from a heap, speaks both wire protocols, forwards pixel writes to the
//! master, and fans each tick's shared, pre-encoded broadcast out to its connections. It is written once
//! against [`datapath::seam::Datapath`]; time is always passed in by the caller.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canvas::proto::FrameReader;
use canvas::{Cooldown, Datagrams, Rules};
use ring::hmac;
use slab::Slab;

use crate::link::{Handoff, Shared};
use crate::publish::{Publication, Snapshot};
use datapath::seam::{Addrs, Datapath};

mod accept;
mod app;
mod bufs;
mod early;
mod publication;
mod send;
mod stats;

pub use stats::{EndpointStats, WaitHistogram, WAIT_BUCKETS_MS};

/// Length of the connection ids this server issues: the owning worker's index (2 bytes, big-endian, see
/// [`cid_owner`]), then 14 bytes of an HMAC of the client's first DCID under the worker's key.
pub const LOCAL_CID_LEN: usize = 16;

/// The worker a connection id of ours names: the first two bytes of a [`LOCAL_CID_LEN`]-byte id,
/// big-endian. The reuseport steering program (`xdp-prog/src/bpf/steer.bpf.c`) reads the same bytes.
pub fn cid_owner(dcid: &[u8]) -> Option<usize> {
    match dcid {
        [hi, lo, ..] if dcid.len() == LOCAL_CID_LEN => Some(usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}
/// A packet whose pacing release time is less than this ahead is sent at once (Linux fq's granularity is
/// of the same order; holding packets for less would cost more wake-ups than it saves burstiness).
pub const PACING_SLACK: Duration = Duration::from_millis(1);
/// Packets one [`Endpoint::flush`] call produces at most before it returns to the worker loop (≈ 2–5 ms
/// of sealing at 2–5 µs a packet): receiving and acknowledging writes interleave with a long fan-out.
pub const FLUSH_BUDGET: u64 = 1024;
/// Packets a connection with answers (ACK, REJECT) to send may produce in its visit ahead of the fan-out
/// pass (quiche alternates stream and DATAGRAM frames, so the answers leave in the first one or two).
pub const URGENT_BUDGET: usize = 4;
/// A packet that leaves a connection with nothing to send but an acknowledgement does not wake it at once:
/// its ACK goes out with the next packet the connection sends anyway, or once this many packets have
/// arrived unacknowledged, or [`ACK_DELAY`] after the first of them. quiche itself acknowledges on every
/// `send()` call after an ack-eliciting packet, which for clients that write in small packets meant an
/// ACK-only packet per one to three of theirs (0.88 per write at 200 clients × 667 writes/s).
/// RFC 9000 §13.2.2 lets a receiver acknowledge less often than every second packet.
pub const ACK_EVERY: u8 = 10;
/// Longest an acknowledgement is held back (below quiche's advertised `max_ack_delay`, 25 ms, so the
/// peer's probe timeout, which includes it, never fires for a held ACK). Deadlines fall on a grid of half
/// of it (5–10 ms after the packet) so that held ACKs share wake-ups. At light load holding gains nothing
/// (nothing else is sent within the delay) and costs wake-ups: 500 clients writing every 100–400 ms cost
/// 3.75–3.99 s of server CPU with the grid (3.96–3.97 s with one deadline per ACK: the grid is no clear
/// gain), 3.2–3.4 s without holding; at 200 clients writing every 1–2 ms holding saves 10–15 % (9.0–9.7
/// vs 10.8 µs per write).
pub const ACK_DELAY: Duration = Duration::from_millis(10);
/// Default of [`EndpointConfig::broadcast_inflight`]: 32 KiB, about 24 full datagrams. At 100 ms of
/// round trip that is still ~320 KB/s per client, three times the fan-out of 20,000 writes/s to every
/// client (5 bytes each); below that rate nothing changes, above it the client gets coalesced deltas.
pub const DEFAULT_BROADCAST_INFLIGHT: usize = 32 * 1024;
/// Default of [`EndpointConfig::broadcast_queue`]: 100 ms, one default tick. Below it a connection's
/// broadcast window grows to `broadcast_inflight`; a client behind a queue longer than a tick gets each
/// wave more than a tick late.
pub const DEFAULT_BROADCAST_QUEUE: Duration = Duration::from_millis(100);
/// A connection's broadcast window when it starts, in datagrams (see [`EndpointConfig::broadcast_queue`]).
/// Small, so that thousands of connections that begin to receive at once (the first writes after a quiet
/// spell, a server restart) do not each put a whole allowance into a receive queue before the first RTT
/// sample shows it growing; on a path that does not queue it doubles about every round trip.
pub const INITIAL_BROADCAST_WINDOW: u64 = 2;
/// The smallest broadcast window, in datagrams: two, because a receiver acknowledges every second
/// ack-eliciting packet at once (RFC 9000 §13.2.2) but may hold the ACK of a lone one for its
/// `max_ack_delay` (25 ms by default): a window of one datagram costs both ends an ACK packet per
/// datagram and caps the connection at one datagram per round trip plus that delay.
pub const MIN_BROADCAST_WINDOW: u64 = 2;
/// Default of [`EndpointConfig::catchup_budget`]: 32 MiB per worker, six coalesced deltas of the whole
/// 1000 x 1000 canvas (5 MB each), or ~30 of the ≤ 1 MB a client 10 s behind 20,000 writes/s lacks.
pub const DEFAULT_CATCHUP_BUDGET: usize = 32 << 20;
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
/// Application error code sent to a client past `max_conns` (reason "server full: N connections on this
/// worker"), right after its handshake.
pub const APP_ERR_FULL: u64 = 0x103;
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
    /// Entries of quiche's per-connection DATAGRAM send queue we keep filled.
    pub dgram_queue: usize,
    /// Broadcast bytes a connection may have sent and not yet acknowledged before it pulls more (see
    /// `Conn::inflight`): past it the client waits and later gets one coalesced delta, instead of queueing
    /// stale ticks in its receive buffer and holding a congestion window's worth of sent-packet records
    /// in quiche.
    pub broadcast_inflight: usize,
    /// Queueing delay that a connection's broadcast window (`Conn::window`) steers by. The window starts
    /// at [`INITIAL_BROADCAST_WINDOW`] datagrams and is looked at on every visit with a datagram in
    /// flight: while quiche's smoothed RTT of the path exceeds its minimum by more than this, it is
    /// halved (to half of what is in flight, at most once per smoothed RTT, never below
    /// [`MIN_BROADCAST_WINDOW`] datagrams); otherwise it grows by one datagram each time feeding finds it
    /// full (up to `broadcast_inflight`). A client whose path queues (a receiver that cannot keep up, one shared
    /// by thousands of connections, a deep buffer anywhere) then holds about this much broadcast in that
    /// queue, not a window of stale ticks ahead of its ACKs, handshakes and control stream, and gets the
    /// changes coalesced. Zero: no window, `broadcast_inflight` only.
    pub broadcast_queue: Duration,
    /// Bytes of coalesced catch-up deltas that connections may hold at once on this worker before a pull
    /// that would build another one shares one already alive, or waits for the next tick (see
    /// `Ctx::catchup_for`). One delta is always allowed, so every connection still makes progress.
    pub catchup_budget: usize,
    /// Largest broadcast datagram payload (coalesced catch-up deltas are cut into datagrams of this size).
    pub max_datagram: usize,
    /// Changing ticks kept for catch-up at most (also bounded by their entries: at most as many as the canvas has pixels);
    /// a connection or SYNC older than the history is answered with a snapshot.
    pub history_ticks: usize,
    /// Packets one connection may send per flush pass before the next connection's turn.
    pub send_budget: usize,
    /// Connections with a handshake in progress, at most: a new Initial past it is dropped (the client
    /// retransmits it), so a flood of spoofed Initials cannot fill the connection table.
    pub max_half_open: usize,
    /// A handshake not complete this long after the first Initial is abandoned (its state dropped).
    pub handshake_timeout: Duration,
    /// Writes per second one source address may make through this worker, over all its connections (a
    /// token bucket of one second's worth); past it writes are REJECTed (reason cooldown, with the wait).
    /// 0: no limit. The per-connection limit is `cooldown`.
    pub source_writes_per_sec: u32,
    /// Stateless Retry switches on by itself while more than this many handshakes are in progress (and off
    /// again below half of it): a flood of spoofed Initials then costs one Retry packet each and no state.
    /// 0: never by itself (`retry` still forces it always).
    pub retry_above: usize,
    /// Stateless Retry also switches on by itself while new handshakes (Initials without a token) arrive
    /// at more than this many per second on this worker, measured over one-second windows, and off again
    /// once a window's rate and the current window's count are below half of it (and the half-open count
    /// is below half of `retry_above`). 0: never by the rate.
    pub retry_above_rate: u32,
}

/// Source buckets kept before idle ones are pruned (idle: not refilled for [`SOURCE_IDLE`]).
const SOURCE_PRUNE_MIN: usize = 4096;
/// A source bucket unused this long is full again and can go.
const SOURCE_IDLE: Duration = Duration::from_secs(10);

/// quiche errors on received packets printed per worker (the rest are only counted in `recv_errors`).
const MAX_PRINTED_RECV_ERRORS: u64 = 10;

/// Connections past `max_conns` kept at once only to send their CONNECTION_CLOSE; beyond, Initials are dropped.
const MAX_REFUSING: usize = 256;

/// Default of [`EndpointConfig::retry_above`]: half of [`DEFAULT_MAX_HALF_OPEN`]. The count trigger is for
/// a spoofed flood slower than `retry_above_rate` that would still fill the table; clients behind slow
/// paths raise the count too (250 handshakes/s per worker that take 4 s each are 1,000 in progress), and
/// Retry then adds a round trip to every handshake exactly when round trips are longest. At 1,024, 50,000
/// connections arriving over 100 s with writes (`scripts/many_conns.sh`, one box) switched Retry on five
/// times and 1,085 handshakes failed; at 8,192, none did (issue-10 note, 2026-12-08).
pub const DEFAULT_RETRY_ABOVE: usize = DEFAULT_MAX_HALF_OPEN / 2;

/// Default of [`EndpointConfig::retry_above_rate`]: eight times the fastest ramp the suite's benchmarks
/// make on one worker (500 handshakes/s), half the bench's handshake flood (10,000 over 2 s).
pub const DEFAULT_RETRY_ABOVE_RATE: u32 = 4_000;

/// Default of [`EndpointConfig::max_half_open`].
pub const DEFAULT_MAX_HALF_OPEN: usize = 16_384;
/// Default of [`EndpointConfig::handshake_timeout`]: what the loadgen waits for a handshake too.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Pending,
    Legacy,
    Canvas1,
}

/// A run of shared datagrams still to hand to quiche (a clone, with the index of one of them, is how a
/// datagram waits in quiche's queue: see [`bufs`]).
#[derive(Clone, Debug)]
enum Out {
    Head(Arc<Publication>, usize),
    Legacy(Arc<Publication>, usize),
    Parts(Arc<Publication>, usize),
    LegacySnap(Arc<Snapshot>, usize),
}

impl Out {
    /// The datagram at the run's index (None past the end).
    fn current(&self) -> Option<&[u8]> {
        let (d, i): (&Datagrams, _) = match self {
            Out::Head(p, i) => (&p.head, i),
            Out::Legacy(p, i) => (p.legacy(), i),
            Out::Parts(p, i) => (&p.parts, i),
            Out::LegacySnap(s, i) => (s.legacy(), i),
        };
        d.get(*i)
    }

    /// Move to the run's next datagram.
    fn advance(&mut self) {
        let (Out::Head(_, i) | Out::Legacy(_, i) | Out::Parts(_, i) | Out::LegacySnap(_, i)) = self;
        *i += 1;
    }
}

/// Control-stream bytes still to hand to quiche (shared frames are not copied until quiche takes them).
#[derive(Debug)]
enum Chunk {
    /// Small control frames in order (WELCOME, SYNCED).
    Bytes(Vec<u8>, usize),
    /// ACK and REJECT frames: they go ahead of any reply not yet started (see [`Conn::answers`]); with when
    /// the oldest write ACKed in it was received (for `EndpointStats::ack_handed`).
    Answers(Vec<u8>, usize, Option<Instant>),
    /// A shared SNAPSHOT frame (zstd-encoded when the client set `SYNC_ZSTD`).
    Snap(Arc<Snapshot>, bool, usize),
    /// A shared DIFF frame (a SYNC reply's delta, encoded once per span).
    Diff(Arc<Publication>, usize),
}

impl Chunk {
    fn cursor(&mut self) -> (&[u8], &mut usize) {
        match self {
            Chunk::Bytes(b, i) | Chunk::Answers(b, i, _) => (b, i),
            Chunk::Snap(s, zstd, i) => (s.frame(*zstd), i),
            Chunk::Diff(p, i) => (p.diff_frame(), i),
        }
    }

    /// quiche has taken part of it: what follows must wait until it is whole on the stream.
    fn started(&self) -> bool {
        match self {
            Chunk::Bytes(_, i) | Chunk::Answers(_, i, _) | Chunk::Snap(_, _, i) | Chunk::Diff(_, i) => *i > 0,
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
    q: quiche::Connection<bufs::Bufs>,
    gen: u32,
    scid: [u8; LOCAL_CID_LEN],
    proto: Proto,
    cooldown: Option<Instant>,
    timer: Option<Instant>,
    /// The shared runs being handed to quiche: at most a legacy snapshot and one delta (never a backlog of
    /// ticks; the next run is pulled when these are drained, see `Ctx::pull`).
    outbox: VecDeque<Out>,
    /// Newest tick whose changes are in what this connection was sent (queued in `outbox` or handed to
    /// quiche): the connection's whole broadcast state.
    sent: u64,
    ctl: Option<u64>,
    reader: FrameReader,
    stream_out: VecDeque<Chunk>,
    welcomed: bool,
    /// The client decodes zstd snapshots (its latest SYNC set `SYNC_ZSTD`).
    zstd: bool,
    /// Broadcasts flow to this connection (it has a snapshot or is being sent one).
    ready: bool,
    /// Waiting for a snapshot new enough to catch it up (canvas/1: a SYNC; legacy: its first snapshot).
    awaiting: bool,
    dirty: bool,
    /// Queued in `Endpoint::urgent` (it has answers to send).
    urgent: bool,
    paced: Option<Paced>,
    /// Packets received since the connection last sent, whose acknowledgement is held back (see
    /// [`ACK_EVERY`]).
    rx_unacked: u8,
    /// Estimate of the bytes handed to quiche (DATAGRAMs and control-stream bytes) and not yet
    /// acknowledged or declared lost: what was handed, less quiche's `acked_bytes + lost_bytes` since,
    /// floored at 0. Packet overhead makes it read a little low, never high.
    inflight: u64,
    /// quiche's `acked_bytes + lost_bytes` when `inflight` was last updated.
    settled: u64,
    /// Broadcast bytes this connection may have unacknowledged (≤ `broadcast_inflight`), steered by
    /// its path's queueing delay (see [`EndpointConfig::broadcast_queue`]).
    window: u64,
    /// When `window` was last halved.
    window_cut: Instant,
    /// Accepted, handshake not complete (counted in `Endpoint::half_open_count`).
    half_open: bool,
    /// Created only to tell the client the worker is full (counted in `Endpoint::refusing`).
    refused: bool,
    /// The address the connection's newest packet came from (for `source_writes_per_sec`, and to count
    /// migrations).
    peer: std::net::SocketAddr,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("gen", &self.gen).field("proto", &self.proto).finish_non_exhaustive()
    }
}

impl Conn {
    /// The Vec to append ACK and REJECT frames to: a chunk right after the one quiche is taking, ahead of
    /// queued replies not yet started (a SYNC reply may be a megabyte of SNAPSHOT and DIFF; an answer to a
    /// write must not wait behind it). Answers stay in order among themselves; each is a whole frame.
    fn answers(&mut self) -> &mut Vec<u8> {
        self.answers_for(None)
    }

    /// [`Conn::answers`] for the ACK of a write received at `received` (the chunk remembers its oldest).
    fn answers_for(&mut self, received: Option<Instant>) -> &mut Vec<u8> {
        let at = usize::from(self.stream_out.front().is_some_and(Chunk::started));
        let reuse = matches!(self.stream_out.get(at), Some(Chunk::Answers(b, 0, _)) if b.len() < 16 * 1024);
        if !reuse {
            self.stream_out.insert(at, Chunk::Answers(Vec::with_capacity(64), 0, None));
        }
        match self.stream_out.get_mut(at) {
            Some(Chunk::Answers(b, _, oldest)) => {
                if let Some(t) = received {
                    *oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
                b
            }
            _ => unreachable!("just inserted"),
        }
    }

    /// ACK or REJECT bytes wait to be handed to quiche (they sit at the front, see [`Conn::answers`]).
    fn has_answers(&self) -> bool {
        self.stream_out.iter().take(2).any(|ch| matches!(ch, Chunk::Answers(b, i, _) if *i < b.len()))
    }

    /// Bring `inflight` up to date with what quiche has seen acknowledged or lost. Returns whether
    /// anything was.
    fn settle_inflight(&mut self) -> bool {
        let st = self.q.stats();
        let settled = st.acked_bytes + st.lost_bytes;
        let moved = settled != self.settled;
        self.inflight = self.inflight.saturating_sub(settled.saturating_sub(self.settled));
        self.settled = settled;
        moved
    }

    /// The active path's smoothed RTT and whether it exceeds the path's minimum by more than `target`
    /// (false before the first RTT sample).
    fn path_queue(&self, target: Duration) -> (Duration, bool) {
        self.q
            .path_stats()
            .find(|p| p.active)
            .map_or((Duration::ZERO, false), |p| (p.rtt, p.min_rtt.is_some_and(|m| p.rtt > m + target)))
    }

    /// Whether a packet just received by an established connection must be answered by a visit now,
    /// rather than only acknowledged within [`ACK_DELAY`]: it is closing, or it has something of its own to
    /// send (control bytes, a broadcast run, DATAGRAMs quiche holds for lack of congestion window, a paced
    /// packet). A packet that acknowledged something of ours also wakes it (see `on_datagram`); one during
    /// the handshake always does, ahead of the fan-out pass.
    fn needs_visit(&self) -> bool {
        self.q.is_closed()
            || self.q.is_draining()
            || self.proto == Proto::Pending
            || !self.stream_out.is_empty()
            || !self.outbox.is_empty()
            || self.q.dgram_send_queue_len() > 0
            || self.paced.is_some()
    }

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
    /// One entry per write handed to the master, in order: who to ACK when the master reports it applied
    /// (connection key and generation, request id) and when the write was received; None for a write that
    /// asked for no ACK.
    acks: VecDeque<Option<(usize, u32, u32, Instant)>>,
    applied: u64,
    history: VecDeque<Arc<Publication>>,
    /// Entries (pixels) summed over `history`.
    history_entries: usize,
    /// Newest tick whose diff this worker no longer holds: catch-up from before it needs a snapshot.
    lost_change: u64,
    /// Newest changing tick this worker has seen (0: none).
    last_change: u64,
    /// Newest changing tick offered to broadcast pulls (≤ `last_change`; moves once per wave, see
    /// `Endpoint::advance_frontier`).
    frontier: u64,
    /// Tick of the newest full snapshot offered to legacy pulls.
    full_frontier: u64,
    /// The frontier of each of the last [`publication::WAVES_KEPT`] waves, oldest first: the anchors pulls
    /// start from (see `Ctx::anchor`).
    wave_frontiers: VecDeque<u64>,
    /// Coalesced deltas, shared by every pull and SYNC reply asking for the same span.
    catchup: VecDeque<publication::CatchUp>,
    /// Every coalesced delta built and perhaps still held by a connection (weakly: the connections own
    /// them), for `catchup_budget`.
    live: Vec<publication::LiveDelta>,
    /// A pull waited for the catch-up budget: wake such connections at the next publication.
    starved: bool,
    snapshot: Option<Arc<Snapshot>>,
    /// Per source address: (tokens, when last refilled), for `source_writes_per_sec`.
    source_buckets: HashMap<std::net::IpAddr, (f64, Instant)>,
    /// Prune idle buckets when the map grows past this.
    source_prune_at: usize,
    /// The newest full-broadcast snapshot (legacy connections get it instead of the diffs before it).
    full: Option<Arc<Snapshot>>,
    /// The newest quiet tick that sends a HEAD (`Publication::sends_head`).
    head: Option<Arc<Publication>>,
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
    /// Connections with answers (ACK, REJECT) to send or a handshake in progress, visited ahead of the fan-out pass.
    urgent: Vec<usize>,
    /// Entries at the front of `dirty` that the current broadcast wave has not reached yet (0: no wave in
    /// progress, the next publication is offered at once).
    wave_left: usize,
    next_gen: u32,
    buf: Vec<u8>,
    closing: bool,
    /// Connections accepted and not established yet, oldest first (entries of connections that completed
    /// or went are skipped when they reach the front): the handshake deadline and the half-open cap.
    half_open: VecDeque<(Instant, usize, u32)>,
    /// Connections with `Conn::half_open` set.
    half_open_count: usize,
    /// Connections with `Conn::refused` set (closing, past `max_conns`).
    refusing: usize,
    /// Stateless Retry is on because of `retry_above` or `retry_above_rate` (see
    /// [`EndpointConfig::retry_above`]).
    auto_retry: bool,
    /// New handshakes per second: the window's start, the Initials without a token seen in it, and the
    /// rate of the last window that ended (see [`EndpointConfig::retry_above_rate`]).
    hs_window: Instant,
    hs_in_window: u32,
    hs_rate: u32,
    /// Datagrams received in this batch for other workers' connections: (owner, addresses, payload).
    handoff_out: Vec<(usize, Addrs, Box<[u8]>)>,
    /// 1-RTT packets that arrived before their connection's handshake completed here (see [`early`]).
    early: early::Early,
    ctx: Ctx,
}

impl Ctx {
    /// When an acknowledgement held back at `now` goes: the next point of a grid of `ACK_DELAY / 2` (from
    /// `epoch`) at least `ACK_DELAY / 2` ahead.
    fn ack_slot(&self, now: Instant) -> Instant {
        let step = ACK_DELAY / 2;
        let step_ns = step.as_nanos();
        let to_grid = step_ns - now.saturating_duration_since(self.epoch).as_nanos() % step_ns;
        now + step + Duration::from_nanos(to_grid as u64)
    }
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
            urgent: Vec::new(),
            wave_left: 0,
            next_gen: 0,
            buf: vec![0; 64 * 1024],
            closing: false,
            half_open: VecDeque::new(),
            half_open_count: 0,
            refusing: 0,
            auto_retry: false,
            hs_window: now,
            hs_in_window: 0,
            hs_rate: 0,
            handoff_out: Vec::new(),
            early: early::Early::default(),
            ctx: Ctx {
                cfg,
                shared,
                key,
                epoch: now,
                stats: EndpointStats::default(),
                acks: VecDeque::new(),
                applied: 0,
                history: VecDeque::new(),
                history_entries: 0,
                lost_change: 0,
                last_change: 0,
                frontier: 0,
                full_frontier: 0,
                wave_frontiers: VecDeque::new(),
                catchup: VecDeque::new(),
                live: Vec::new(),
                starved: false,
                source_buckets: HashMap::new(),
                source_prune_at: SOURCE_PRUNE_MIN,
                snapshot: None,
                full: None,
                head: None,
                tick: 0,
                tx_now: Vec::new(),
            },
        }
    }

    /// Count one busy loop iteration's length (see `EndpointStats::rx_gap`).
    pub fn record_rx_gap(&mut self, d: std::time::Duration) {
        self.ctx.stats.rx_gap.record(d);
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.ctx.stats
    }

    /// Open connections.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Bytes of 1-RTT packets held for connections whose handshake has not completed (the client's Finished
    /// lost or overtaken; given to quiche when it completes).
    pub fn early_bytes(&self) -> usize {
        self.early.bytes()
    }

    /// The newest tick this worker has seen.
    pub fn tick(&self) -> u64 {
        self.ctx.tick
    }

    /// True when the endpoint has sends pending (the caller should not sleep).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.urgent.is_empty() || !self.ctx.tx_now.is_empty()
    }

    /// Entries in the timer heap (live and superseded), for tests and stats.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Earliest timer (quiche timeout or pacing release).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Our connection id for a client whose first DCID was `dcid`: this worker's index, then an HMAC of
    /// `dcid` (the same id for every retransmission of the client's first Initial).
    fn derive_cid(&self, dcid: &[u8]) -> [u8; LOCAL_CID_LEN] {
        let tag = hmac::sign(&self.ctx.key, dcid);
        let mut cid = [0; LOCAL_CID_LEN];
        cid[..2].copy_from_slice(&(self.ctx.cfg.worker as u16).to_be_bytes());
        cid[2..].copy_from_slice(&tag.as_ref()[..LOCAL_CID_LEN - 2]);
        cid
    }

    /// The other worker that owns a short-header packet's connection, if its DCID names one.
    fn foreign_owner(&self, hdr: &quiche::Header<'_>) -> Option<usize> {
        if hdr.ty != quiche::Type::Short {
            // Long headers (handshakes) follow the 4-tuple, which has not changed during them.
            return None;
        }
        cid_owner(&hdr.dcid).filter(|&w| w != self.ctx.cfg.worker && w < self.ctx.shared.links.len())
    }

    /// Pass the datagrams that arrived here for other workers' connections to their owners, with what
    /// `backend` knows about reaching each peer (call after each receive batch).
    pub fn pass_handoffs<B: Datapath>(&mut self, backend: &B) {
        for (owner, addrs, pkt) in self.handoff_out.drain(..) {
            let h = Handoff { addrs, link: backend.link_hint(addrs.peer.ip()), pkt };
            match self.ctx.shared.links[owner].handoff.push(h) {
                Ok(()) => self.ctx.stats.handed_off += 1,
                Err(_) => self.ctx.stats.handoff_dropped += 1,
            }
        }
    }

    /// Take the datagrams other workers handed to this one (at most `max`); returns how many.
    pub fn take_handoffs<B: Datapath>(&mut self, now: Instant, backend: &mut B, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut h) = self.ctx.shared.links[self.ctx.cfg.worker].handoff.pop() else {
                break;
            };
            if let Some(link) = h.link {
                backend.learn_link(h.addrs.peer.ip(), link);
            }
            self.ctx.stats.handed_in += 1;
            self.on_datagram(now, h.addrs, &mut h.pkt);
            n += 1;
        }
        n
    }

    /// Queue `c` for a visit ahead of the fan-out pass (it has answers to send, or a handshake in progress), and for the pass too.
    fn mark_urgent(urgent: &mut Vec<usize>, dirty: &mut Vec<usize>, key: usize, c: &mut Conn) {
        if !c.urgent {
            c.urgent = true;
            urgent.push(key);
        }
        Self::mark_dirty(dirty, key, c);
    }

    /// Arm `c`'s timer for `t` unless an earlier deadline is armed. Only an earlier deadline pushes a heap
    /// entry: quiche moves its idle deadline on every packet, and pushing each move would grow the heap by
    /// one stale entry per packet. A later deadline is picked up when the armed entry fires.
    fn arm(timers: &mut BinaryHeap<Reverse<(Instant, usize, u32)>>, key: usize, c: &mut Conn, t: Instant) {
        if c.timer.is_none_or(|armed| t < armed) {
            c.timer = Some(t);
            timers.push(Reverse((t, key, c.gen)));
        }
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
        let short = hdr.ty == quiche::Type::Short;
        if let Some(owner) = self.foreign_owner(&hdr) {
            // Another worker's connection whose client's address changed: the kernel's reuseport hash or
            // the NIC's RSS put it here. Handed over after this receive batch (`pass_handoffs`).
            self.handoff_out.push((owner, addrs, pkt.into()));
            return;
        }
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
        if short && !c.q.is_established() {
            // 1-RTT before this side completed the handshake: quiche could not open it yet.
            if self.early.hold(key, addrs, pkt) {
                self.ctx.stats.early_held += 1;
            } else {
                self.ctx.stats.early_dropped += 1;
            }
            return;
        }
        let info = quiche::RecvInfo { from: addrs.peer, to: addrs.local };
        let recv = c.q.recv(pkt, info);
        // The packet acknowledged (or declared lost) something of ours: the congestion window (and the
        // broadcast's in-flight allowance) may have opened for what quiche holds or what we would pull, or
        // there is a retransmission to make. Either way there may be more than an ACK to send.
        let acked = c.settle_inflight();
        if new && (recv.is_err() || c.q.stats().recv == 0) {
            // The first datagram did not authenticate (quiche refused it, or dropped every packet in it
            // without an error): no state is kept for it.
            self.ctx.stats.junk_initials += 1;
            self.take(key);
            return;
        }
        if c.refused {
            // Over `max_conns`: the client is told why instead of timing out. The handshake completes
            // first, so that the close travels in packets every client can read (a close sent during the
            // handshake may be in a packet number space the client has no keys for yet), then
            // CONNECTION_CLOSE with APP_ERR_FULL and a reason; nothing of the client's is processed. The
            // state goes once the close has been sent and drained.
            if new {
                self.ctx.stats.refused += 1;
            }
            if c.q.is_established() && !c.q.is_closed() && !c.q.is_draining() {
                let reason = format!("server full: {} connections on this worker", self.ctx.cfg.max_conns);
                let _ = c.q.close(true, APP_ERR_FULL, reason.as_bytes());
            }
            Self::mark_urgent(&mut self.urgent, &mut self.dirty, key, c);
            return;
        }
        if new {
            self.ctx.stats.accepted += 1;
            c.half_open = true;
            self.half_open_count += 1;
            self.half_open.push_back((now, key, c.gen));
        }
        if c.half_open && c.q.is_established() {
            c.half_open = false;
            self.half_open_count -= 1;
            for (a, mut p) in self.early.take(key) {
                match c.q.recv(&mut p, quiche::RecvInfo { from: a.peer, to: a.local }) {
                    Ok(_) => self.ctx.stats.early_replayed += 1,
                    Err(_) => self.ctx.stats.recv_errors += 1,
                }
            }
        }
        if let Err(e) = &recv {
            self.ctx.stats.recv_errors += 1;
            // quiche closes the connection on any error but Done (a transport error to the client): say
            // which, the first few times, so that a lost connection can be traced to its cause.
            if self.ctx.stats.recv_errors <= MAX_PRINTED_RECV_ERRORS {
                eprintln!(
                    "server: worker {}: quiche refused a packet from {} (connection's address {}; {} migration(s) \
                     on this worker): {e:?}; the connection is {}",
                    self.ctx.cfg.worker,
                    addrs.peer,
                    c.peer,
                    self.ctx.stats.migrations,
                    if c.q.is_closed() || c.q.local_error().is_some() { "closed by quiche" } else { "still open" }
                );
            }
        } else if addrs.peer != c.peer {
            // The client's address changed (NAT rebinding or a new network): quiche validates the new path
            // and moves the connection to it.
            self.ctx.stats.migrations += 1;
            c.peer = addrs.peer;
        }
        self.ctx.process_app(key, c, now, &mut self.buf);
        if c.has_answers() || !c.q.is_established() {
            // Answers to writes, and handshakes: neither should wait behind a fan-out pass over tens of
            // thousands of connections (a client gives up on a handshake after seconds).
            Self::mark_urgent(&mut self.urgent, &mut self.dirty, key, c);
        } else if c.dirty || acked || c.needs_visit() {
            Self::mark_dirty(&mut self.dirty, key, c);
        } else {
            // Only an acknowledgement to send: hold it (see `ACK_EVERY`).
            c.rx_unacked = c.rx_unacked.saturating_add(1);
            if c.rx_unacked >= ACK_EVERY {
                Self::mark_dirty(&mut self.dirty, key, c);
            } else {
                // Also quiche's own deadline: this packet may have moved it earlier (a loss timer).
                let t = self.ctx.ack_slot(now);
                Self::arm(&mut self.timers, key, c, c.q.timeout_instant().map_or(t, |q| q.min(t)));
            }
        }
    }

    /// Fire expired quiche timers and pacing releases.
    pub fn on_timers(&mut self, now: Instant) {
        // Handshakes past their deadline: dropped (a client that is still there starts over).
        while let Some(&(t, key, gen)) = self.half_open.front() {
            if t + self.ctx.cfg.handshake_timeout > now {
                break;
            }
            self.half_open.pop_front();
            if self.conns.get(key).is_some_and(|c| c.gen == gen && c.half_open) {
                self.ctx.stats.handshake_timeouts += 1;
                self.remove(key);
            }
        }
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
            if c.q.is_established() {
                Self::mark_dirty(&mut self.dirty, key, c);
            } else {
                // A handshake retransmission: ahead of the fan-out pass, like the first flight.
                Self::mark_urgent(&mut self.urgent, &mut self.dirty, key, c);
            }
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

    /// Take `key` out of the tables and the counts it is in.
    fn take(&mut self, key: usize) -> Conn {
        let c = self.conns.remove(key);
        self.early.take(key);
        self.ids.remove(&c.scid);
        self.half_open_count -= usize::from(c.half_open);
        self.refusing -= usize::from(c.refused);
        c
    }

    /// Drop a connection; one that was accepted counts as closed.
    fn remove(&mut self, key: usize) {
        if !self.take(key).refused {
            self.ctx.stats.closed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_id_names_its_worker_in_its_first_two_bytes() {
        let mut cid = [0xabu8; LOCAL_CID_LEN];
        cid[..2].copy_from_slice(&0x0102u16.to_be_bytes());
        assert_eq!(cid_owner(&cid), Some(0x0102));
        // Only ids of our length are ours: a client's 8- or 20-byte id names no worker.
        assert_eq!(cid_owner(&cid[..8]), None);
        assert_eq!(cid_owner(&[0; 20]), None);
        assert_eq!(cid_owner(&[]), None);
    }
}
