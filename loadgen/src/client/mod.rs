//! One simulated client: a tokio task that waits its jitter, connects, and drives one protocol
//! ([`canvas1`] or [`legacy`]) until the run's [`Phase`] says stop.
//!
//! What the orchestrator needs from a client (its status, whether its writes are settled, its replica for
//! verification) lives in a [`Slot`] shared with it. The replica sits behind a mutex that the client takes
//! once per event (uncontended on a current-thread runtime) and the verifier takes at the end.

pub mod canvas1;
pub mod legacy;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use canvas::legacy::LegacyReplica;
use canvas::{Dims, Pixel, Replica};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::config::Protocol;
use crate::stats::{Counters, FailKind, Latency};

/// Phases of a run, broadcast to every client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connect and write.
    Run,
    /// Stop writing; keep receiving so replicas settle and get verified.
    Drain,
    /// Close the connection and exit.
    Close,
}

/// Where a client is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Waiting for its connect jitter (or never started because the run ended).
    Waiting = 0,
    /// Handshaking.
    Connecting = 1,
    /// Connected and healthy.
    Open = 2,
    /// Closed by us at the end of the run.
    Closed = 3,
    /// Failed (see [`FailKind`]).
    Failed = 4,
}

/// A client's replica, whichever protocol it speaks.
#[derive(Debug, Default)]
pub enum ReplicaSlot {
    /// Not created yet (before WELCOME / connect).
    #[default]
    None,
    /// canvas/1 replica.
    Canvas1(Box<Replica>),
    /// Legacy replica.
    Legacy(Box<LegacyReplica>),
}

impl ReplicaSlot {
    /// The pixels, once the replica holds a whole canvas (canvas/1: has a tick; legacy: got a snapshot).
    pub fn synced_pixels(&self) -> Option<&[u8]> {
        match self {
            Self::None => None,
            Self::Canvas1(r) => r.tick().map(|_| r.pixels()),
            Self::Legacy(r) => r.synced().then(|| r.pixels()),
        }
    }

    /// The canvas/1 replica's tick.
    pub fn tick(&self) -> Option<u64> {
        self.canvas1().and_then(Replica::tick)
    }

    /// The canvas/1 replica, if this is one.
    pub fn canvas1(&self) -> Option<&Replica> {
        match self {
            Self::Canvas1(r) => Some(r),
            _ => None,
        }
    }
}

/// State of one client shared with the orchestrator.
#[derive(Debug, Default)]
pub struct Slot {
    status: AtomicU8,
    /// Writes sent and neither ACKed nor REJECTed (canvas/1) / not yet observed (legacy).
    pub unresolved: AtomicU32,
    /// canvas/1 writes ACKed at a tick the replica has not reached yet.
    pub invisible: AtomicU32,
    /// The replica (see [`Slot::replica`]).
    replica: Mutex<ReplicaSlot>,
}

impl Slot {
    /// Current status.
    pub fn status(&self) -> Status {
        match self.status.load(Relaxed) {
            0 => Status::Waiting,
            1 => Status::Connecting,
            2 => Status::Open,
            3 => Status::Closed,
            _ => Status::Failed,
        }
    }

    fn set_status(&self, s: Status) {
        self.status.store(s as u8, Relaxed);
    }

    /// Lock the replica.
    pub fn replica(&self) -> MutexGuard<'_, ReplicaSlot> {
        self.replica.lock().expect("replica lock")
    }

    /// True when every write of this client is settled (canvas/1: acked or rejected, and visible in the
    /// replica; legacy: observed in a diff).
    pub fn settled(&self) -> bool {
        self.unresolved.load(Relaxed) == 0 && self.invisible.load(Relaxed) == 0
    }
}

/// Everything the clients of one process share.
#[derive(Debug)]
pub struct Ctx {
    /// Wire protocol.
    pub protocol: Protocol,
    /// `--seed`.
    pub seed: u64,
    /// `--id`.
    pub id: String,
    /// `--max-conn-jitter`.
    pub max_conn_jitter_ms: u64,
    /// `--min-pixel-wait`.
    pub min_wait_ms: u64,
    /// `--max-pixel-wait`.
    pub max_wait_ms: u64,
    /// `--handshake-timeout`.
    pub handshake_timeout: Duration,
    /// Server addresses with their TLS server names: `--target`, then `--failover`.
    pub targets: Vec<(SocketAddr, String)>,
    /// Clients `0..writers` write; client `writers + j` is the observer of `observe_targets[j]`.
    pub writers: usize,
    /// `--observe` servers.
    pub observe_targets: Vec<(SocketAddr, String)>,
    /// Write → visible on the `--observe` servers (None without observers).
    pub cross: Option<crate::cross::Cross>,
    /// quinn client config for `protocol`.
    pub client_config: quinn::ClientConfig,
    /// Canvas size for legacy (canvas/1 learns it from WELCOME).
    pub legacy_dims: Dims,
    /// Clients `0..full_replicas` keep a full replica; the others are light (see `--replicas`).
    pub full_replicas: usize,
    /// Shared counters.
    pub counters: Counters,
    /// Shared latency histograms: write → visible.
    pub latency: Latency,
    /// Write → ACK (canvas/1).
    pub ack_latency: Latency,
    /// A full replica's join: its first connection attempt → its join snapshot installed (canvas/1).
    pub join_latency: Latency,
    /// `--write-log`.
    pub write_log: Option<crate::audit::WriteLog>,
    /// `--reconnect`.
    pub reconnect: Option<Duration>,
    /// The flags of every SYNC (`proto::SYNC_ZSTD` unless `--plain-snapshots`).
    pub sync_flags: u8,
    /// The first failure message (printed when nothing could connect).
    pub first_error: Mutex<Option<String>>,
    /// Failure messages printed so far (the first few are, the rest only counted).
    pub errors_printed: AtomicU64,
}

/// How many failure messages are printed to stderr per process.
const MAX_PRINTED_ERRORS: u64 = 10;

/// Why a client stopped early.
#[derive(Debug)]
pub struct Failure {
    /// Category.
    pub kind: FailKind,
    /// Details.
    pub msg: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailKind, msg: impl Into<String>) -> Self {
        Self { kind, msg: msg.into() }
    }

    /// The server broke the protocol.
    pub fn protocol(msg: impl Into<String>) -> Self {
        Self::new(FailKind::Protocol, msg)
    }

    /// From a connection error. A server that predates the SYNC flags closes a connection whose SYNC
    /// carries them as malformed (0x101 "BadLength"; this client's only other message, WRITE, has a fixed
    /// length): the message says so and what to do.
    pub fn conn(e: &quinn::ConnectionError) -> Self {
        let old_server = matches!(e, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(0x101) && &c.reason[..] == b"BadLength");
        let mut msg = e.to_string();
        if old_server {
            msg.push_str(
                " (a server older than the canvas/1 SYNC flags refuses this client's SYNC: run the client with \
                 --plain-snapshots, or upgrade the server)",
            );
        }
        Self::new(FailKind::of(e), msg)
    }

    /// From a stream read error.
    pub fn read(e: &quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => Self::conn(c),
            other => Self::protocol(format!("control stream: {other}")),
        }
    }

    /// From a stream write error.
    pub fn write(e: &quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Self::conn(c),
            other => Self::protocol(format!("control stream: {other}")),
        }
    }
}

impl Ctx {
    fn fail(&self, idx: usize, slot: &Slot, f: Failure) {
        slot.set_status(Status::Failed);
        // An observer's loss (its server died) is the cross-node figures', not a client failure.
        let msg = match (idx.checked_sub(self.writers), &self.cross) {
            (Some(j), Some(x)) => {
                x.observer_failed();
                format!("observer of {}: {}: {}", self.observe_targets[j].0, f.kind.name(), f.msg)
            }
            _ => {
                self.counters.fail(f.kind);
                format!("client {idx}: {}: {}", f.kind.name(), f.msg)
            }
        };
        if self.errors_printed.fetch_add(1, Relaxed) < MAX_PRINTED_ERRORS {
            crate::progress::note(format!("[{}] {msg}", self.id));
        }
        let mut first = self.first_error.lock().expect("error lock");
        if first.is_none() {
            *first = Some(msg);
        }
    }

    /// Uniform random wait before the next write.
    pub fn pixel_wait(&self, rng: &mut SmallRng) -> Duration {
        Duration::from_millis(rng.random_range(self.min_wait_ms..=self.max_wait_ms))
    }

    /// When the write after one at `now` is due (for the write timer).
    fn next_write_at(&self, rng: &mut SmallRng, now: Instant) -> tokio::time::Instant {
        (now + self.pixel_wait(rng)).into()
    }
}

/// A uniformly random write on a canvas of `dims`.
fn random_pixel(rng: &mut SmallRng, dims: Dims) -> Pixel {
    Pixel { x: rng.random_range(0..dims.width), y: rng.random_range(0..dims.height), color: rng.random() }
}

/// FNV-1a, to fold the process id into seeds (stable across Rust versions, unlike `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// splitmix64 step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG of client `idx` of process `id` in a run seeded with `seed`.
pub fn client_rng(seed: u64, id: &str, idx: usize) -> SmallRng {
    SmallRng::seed_from_u64(mix(mix(seed) ^ fnv1a(id)) ^ mix(idx as u64))
}

/// Poll a future once without a real waker: `Some` when it is ready now.
pub(crate) fn now_or_never<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// The next phase a driving client acts on: `None` when it must stop (`Close`, or the orchestrator is
/// gone). Cancel-safe: nothing is awaited after `changed`.
async fn next_phase(phase: &mut watch::Receiver<Phase>) -> Option<Phase> {
    phase.changed().await.ok()?;
    let p = *phase.borrow_and_update();
    (p != Phase::Close).then_some(p)
}

/// Datagrams taken per wakeup before a client's loop looks at its other inputs.
const DATAGRAM_BATCH: usize = 64;

/// Wait for a datagram, then move it and those already queued behind it (up to [`DATAGRAM_BATCH`] in all)
/// into `batch`, counting them as received. Cancel-safe: nothing is awaited after the first datagram.
async fn recv_datagrams(
    conn: &quinn::Connection,
    batch: &mut Vec<Bytes>,
    c: &Counters,
) -> Result<(), Failure> {
    batch.push(conn.read_datagram().await.map_err(|e| Failure::conn(&e))?);
    while batch.len() < DATAGRAM_BATCH {
        match now_or_never(conn.read_datagram()) {
            Some(Ok(d)) => batch.push(d),
            _ => break,
        }
    }
    c.rx_datagrams.fetch_add(batch.len() as u64, Relaxed);
    c.rx_bytes.fetch_add(batch.iter().map(|d| d.len() as u64).sum(), Relaxed);
    Ok(())
}

/// Wait until the phase leaves `Run` (or the orchestrator is gone).
async fn run_ended(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Run).await;
}

/// Elapsed microseconds from `from` to `to`, at least 1.
pub(crate) fn micros(from: Instant, to: Instant) -> u64 {
    (to.saturating_duration_since(from).as_micros() as u64).max(1)
}

/// One client, from jitter to close.
pub async fn run(
    ctx: Arc<Ctx>,
    idx: usize,
    slot: Arc<Slot>,
    endpoint: quinn::Endpoint,
    mut phase: watch::Receiver<Phase>,
) {
    let mut rng = client_rng(ctx.seed, &ctx.id, idx);
    let jitter = Duration::from_millis(rng.random_range(0..=ctx.max_conn_jitter_ms));
    tokio::select! {
        () = tokio::time::sleep(jitter) => {}
        () = run_ended(&mut phase) => return,
    }
    slot.set_status(Status::Connecting);
    // An observer (`--observe`) goes to its own server, and back to it after a lost connection.
    let observer = idx.checked_sub(ctx.writers);
    let targets = match observer {
        Some(j) => std::slice::from_ref(&ctx.observe_targets[j]),
        None => &ctx.targets[..],
    };
    let mut join_from = Some(Instant::now());
    let mut conn = match connect(&ctx, &endpoint, &mut phase, &targets[0]).await {
        Ok(c) => c,
        Err(f) => return ctx.fail(idx, &slot, f),
    };
    ctx.counters.handshakes.fetch_add(1, Relaxed);
    let full = observer.is_some() || idx < ctx.full_replicas;
    loop {
        ctx.counters.active.fetch_add(1, Relaxed);
        slot.set_status(Status::Open);
        let r = match ctx.protocol {
            Protocol::Canvas1 => {
                let join = join_from.take();
                canvas1::drive(&ctx, &slot, &conn, &mut rng, &mut phase, full, observer, join).await
            }
            Protocol::Legacy => legacy::drive(&ctx, &slot, &conn, &mut rng, &mut phase, full).await,
        };
        ctx.counters.active.fetch_sub(1, Relaxed);
        let f = match r {
            Ok(()) => {
                conn.close(0u32.into(), b"done");
                slot.set_status(Status::Closed);
                return;
            }
            Err(f) => f,
        };
        conn.close(1u32.into(), b"client error");
        let lost = matches!(f.kind, FailKind::ClosedByServer | FailKind::IdleTimeout | FailKind::Other);
        let window = ctx.reconnect.filter(|_| lost && *phase.borrow() != Phase::Close);
        let Some(window) = window else { return ctx.fail(idx, &slot, f) };
        // What the lost connection left open is no longer followed: writes without an answer (their
        // outcome is the server's; the resumed replica shows it) and ACKed writes not visible yet.
        let c = &ctx.counters;
        c.writes_unknown.fetch_add(u64::from(slot.unresolved.swap(0, Relaxed)), Relaxed);
        c.acked_unfollowed.fetch_add(u64::from(slot.invisible.swap(0, Relaxed)), Relaxed);
        slot.set_status(Status::Connecting);
        match reconnect(&ctx, &endpoint, &mut phase, targets, window).await {
            Some(new) => {
                conn = new;
                c.reconnects.fetch_add(1, Relaxed);
                c.handshakes.fetch_add(1, Relaxed);
            }
            None => return ctx.fail(idx, &slot, f),
        }
    }
}

/// Connect again after a lost connection, retrying (100 ms, doubling to 1 s between attempts) for up to
/// `window` or until the run closes; the attempts go round `targets` from the second (with `--failover`:
/// the other servers first, then `--target`).
async fn reconnect(
    ctx: &Ctx,
    endpoint: &quinn::Endpoint,
    phase: &mut watch::Receiver<Phase>,
    targets: &[(SocketAddr, String)],
    window: Duration,
) -> Option<quinn::Connection> {
    let deadline = tokio::time::Instant::now() + window;
    let mut pause = Duration::from_millis(100);
    let mut next = 1 % targets.len();
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = phase.wait_for(|p| *p == Phase::Close) => return None,
        }
        let attempt = tokio::select! {
            r = connect(ctx, endpoint, phase, &targets[next]) => r.ok(),
            () = tokio::time::sleep_until(deadline) => return None,
        };
        if attempt.is_some() {
            return attempt;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        pause = (pause * 2).min(Duration::from_secs(1));
        next = (next + 1) % targets.len();
    }
}

async fn connect(
    ctx: &Ctx,
    endpoint: &quinn::Endpoint,
    phase: &mut watch::Receiver<Phase>,
    (addr, name): &(SocketAddr, String),
) -> Result<quinn::Connection, Failure> {
    let connecting = endpoint
        .connect_with(ctx.client_config.clone(), *addr, name)
        .map_err(|e| Failure::new(FailKind::Connect, e.to_string()))?;
    tokio::select! {
        r = tokio::time::timeout(ctx.handshake_timeout, connecting) => match r {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(Failure::new(FailKind::Handshake, e.to_string())),
            Err(_) => Err(Failure::new(FailKind::HandshakeTimeout, format!("no handshake after {:?}", ctx.handshake_timeout))),
        },
        _ = phase.wait_for(|p| *p == Phase::Close) => {
            Err(Failure::new(FailKind::HandshakeTimeout, "handshake unfinished at the end of the run"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A close for a malformed SYNC (what a server from before the SYNC flags sends) names the way out;
    /// other closes do not.
    #[test]
    fn an_old_servers_refusal_of_the_sync_flags_says_what_to_do() {
        let close = |code: u32, reason: &'static str| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::from_static(reason.as_bytes()),
            })
        };
        let f = Failure::conn(&close(0x101, "BadLength"));
        assert_eq!(f.kind, FailKind::ClosedByServer);
        assert!(f.msg.contains("--plain-snapshots"), "{}", f.msg);
        for other in [close(0x101, "BadVersion(2)"), close(0, "server shutdown")] {
            assert!(!Failure::conn(&other).msg.contains("--plain-snapshots"));
        }
    }

    #[test]
    fn rng_is_deterministic_and_distinct() {
        let draw = |s, id, i| client_rng(s, id, i).random::<u64>();
        assert_eq!(draw(1, "a", 0), draw(1, "a", 0));
        assert_ne!(draw(1, "a", 0), draw(1, "a", 1));
        assert_ne!(draw(1, "a", 0), draw(1, "b", 0));
        assert_ne!(draw(1, "a", 0), draw(2, "a", 0));
    }

    #[test]
    fn now_or_never_polls_once() {
        assert_eq!(now_or_never(async { 5 }), Some(5));
        assert_eq!(now_or_never(std::future::pending::<()>()), None);
    }
}
