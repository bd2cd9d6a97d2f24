//! Several canvas servers, one canvas: the global order of writes is a NATS JetStream stream's.
//!
//! Every node's master proposes its batches of validated writes ([`Sequencer::propose`]); a thread of this
//! crate publishes them, in the node's order, one message at a time (proposals queued while a publish is in
//! flight are merged into the next message), each with a message id so that a retry after a lost
//! acknowledgement is dropped by the stream's duplicate window instead of being applied twice. The same
//! thread reads the whole stream back in stream order through an ordered consumer and hands every message,
//! this node's own included, to the master ([`Sequencer::poll`]), which applies them in that order. A node
//! ACKs a write only once its batch has come back from the stream and been applied: so every node's canvas
//! is the same fold over the same log, and a write a client saw ACKed is in the stream (replicated R times).
//!
//! When NATS is unreachable, proposals wait in a bounded queue (the master stops taking writes it cannot
//! order when the queue is full, and says so) and the reader waits; both resume from their positions when
//! NATS returns. Nothing here blocks the master: the queues between them are lock-free and bounded.
//!
//! Snapshots of the canvas go to a JetStream object store bucket beside the stream ([`snapshots`]): a node
//! that joins loads the newest one the stream can continue from and reads the stream only after it.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use crossbeam_queue::ArrayQueue;
use futures_util::StreamExt;
use tokio::sync::Notify;

pub mod snapshots;
pub mod wire;

pub use snapshots::Snapshot;

/// Writes in one proposal at most (a message stays well below NATS's default 1 MiB payload limit: 5 bytes a
/// write). The master splits larger batches.
pub const MAX_WRITES_PER_PROPOSAL: usize = 100_000;

/// JetStream API request timeout (see `Sequencer::start`).
const API_TIMEOUT: Duration = Duration::from_secs(1);

/// A reader idle this long checks whether the stream has moved past it (a consumer whose server died can
/// go quiet without an error).
const STALL_CHECK: Duration = Duration::from_secs(1);

/// What the node needs to join a cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// NATS servers (`nats://HOST:PORT`); the client connects to one and fails over to the others.
    pub urls: Vec<String>,
    /// This node's name (in NATS's connection list and in messages: for people, not for the order).
    pub node: String,
    /// The stream's name.
    pub stream: String,
    /// The subject the stream holds.
    pub subject: String,
    /// Replicas of the stream when this node creates it (JetStream needs at least that many servers).
    pub replicas: usize,
    /// Read the stream from the message after this sequence number at once (`Some(0)`: from the start);
    /// `None`: only once [`Sequencer::read_after`] says where (after the node has loaded a snapshot).
    pub start_after: Option<u64>,
    /// Use the snapshot bucket: load the newest snapshot at start, store the ones offered.
    pub snapshots: bool,
    /// A node does not store a snapshot when the bucket's is younger than this (nodes take turns).
    pub snapshot_min_gap: Duration,
    /// How long starting may take to reach NATS and to find or create the stream (a cluster that has just
    /// started needs a few seconds to elect its JetStream leader).
    pub connect_timeout: Duration,
    /// How long one publish waits for the stream's acknowledgement before it is retried.
    pub publish_timeout: Duration,
    /// Proposals waiting to be published, at most (then [`Sequencer::propose`] refuses).
    pub max_proposals: usize,
    /// Messages read and not yet taken by the master, at most (then the reader waits).
    pub max_ordered: usize,
}

impl Config {
    /// Defaults for a cluster reached at `urls`, this node called `node`.
    pub fn new(urls: Vec<String>, node: impl Into<String>) -> Self {
        Self {
            urls,
            node: node.into(),
            stream: "CANVAS".into(),
            subject: "canvas.writes".into(),
            replicas: 3,
            start_after: None,
            snapshots: true,
            snapshot_min_gap: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(1),
            max_proposals: 4096,
            max_ordered: 4096,
        }
    }
}

/// A batch of this node's validated writes, numbered by the node (1, 2, 3, ... in proposal order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The node's batch number.
    pub batch: u64,
    /// `(pixel index, color)`, in the node's order; at most [`MAX_WRITES_PER_PROPOSAL`].
    pub writes: Vec<(u32, u8)>,
}

/// One message of the stream, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ordered {
    /// Its stream sequence number (the global order).
    pub seq: u64,
    /// The batch, or why it did not decode (every node skips the same damaged message, counted).
    pub batch: Result<wire::Batch, wire::DecodeError>,
}

/// Counters and state, readable from any thread.
#[derive(Debug, Default)]
pub struct Status {
    /// The client is connected to a NATS server.
    pub connected: AtomicBool,
    /// Messages the stream acknowledged. Each is exactly one message in the stream: a publish is retried
    /// (same payload, same message id) only until its first acknowledgement.
    pub published: AtomicU64,
    /// Of those, acknowledged as duplicates: a retry of a message an earlier attempt had stored without its
    /// acknowledgement reaching us (still one message in the stream, counted once in `published`).
    pub duplicates: AtomicU64,
    /// The newest of this node's batches the stream has acknowledged (batches are acknowledged in order;
    /// [`Sequencer::backlog`] empty only means none is waiting to be sent, one may still be in flight).
    pub acked_batch: AtomicU64,
    /// Publish attempts that failed or timed out (each is retried).
    pub publish_failures: AtomicU64,
    /// The newest stream sequence number handed to the master.
    pub delivered: AtomicU64,
    /// Messages that did not decode (skipped by every node alike).
    pub corrupt: AtomicU64,
    /// Times the reader started over from its position after an error.
    pub reader_restarts: AtomicU64,
    /// Messages read by direct get (from any replica) while the reader had no working consumer.
    pub direct_reads: AtomicU64,
    /// Stream sequence numbers the reader found missing (messages removed from the stream): never, unless
    /// someone deleted or purged messages; the canvas lacks their writes.
    pub missing: AtomicU64,
    /// Snapshots this node stored in the bucket.
    pub snapshots_stored: AtomicU64,
    /// Snapshots offered but not stored (the bucket's was as new, or recent).
    pub snapshots_skipped: AtomicU64,
    /// Snapshots that could not be stored (NATS error; the next offer tries again).
    pub snapshot_failures: AtomicU64,
    /// The stream position of the newest snapshot known to be in the bucket (0: none).
    pub snapshot_seq: AtomicU64,
    /// The latest problem, for people.
    pub last_error: Mutex<Option<String>>,
}

impl Status {
    fn problem(&self, what: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }

    /// The latest problem, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why joining the cluster failed, with what to do.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// A node's connection to the cluster's stream (see the crate docs).
#[derive(Debug)]
pub struct Sequencer {
    incarnation: u64,
    head_at_start: u64,
    first_at_start: u64,
    replicas: usize,
    snapshot: Option<Snapshot>,
    snapshot_note: Option<String>,
    read_from: Option<tokio::sync::oneshot::Sender<u64>>,
    offered: Arc<Mutex<Option<Snapshot>>>,
    proposals: Arc<ArrayQueue<Proposal>>,
    ordered: Arc<ArrayQueue<Ordered>>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    thread: Option<JoinHandle<()>>,
}

impl Sequencer {
    /// Connect to `cfg.urls`, find the stream (or create it with `cfg.replicas` replicas) and start
    /// publishing and reading. Fails, saying why, when no server answers within `cfg.connect_timeout` or
    /// the stream cannot be had.
    pub fn start(cfg: Config) -> Result<Self, ClusterError> {
        if cfg.urls.is_empty() {
            return Err(ClusterError("--cluster needs at least one nats://HOST:PORT".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError(format!("cluster: tokio runtime: {e}")))?;
        let status = Arc::new(Status::default());
        let Joined { js, head, first, replicas, stream_id, store, snapshot, snapshot_note } =
            rt.block_on(join(&cfg, &status))?;
        let incarnation = incarnation();
        let proposals = Arc::new(ArrayQueue::new(cfg.max_proposals.max(1)));
        let ordered = Arc::new(ArrayQueue::new(cfg.max_ordered.max(1)));
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let offered = Arc::new(Mutex::new(None));
        let (read_tx, read_rx) = tokio::sync::oneshot::channel();
        let read_from = match cfg.start_after {
            Some(n) => {
                let _ = read_tx.send(n);
                None
            }
            None => Some(read_tx),
        };
        let io = Io {
            cfg: cfg.clone(),
            js,
            store,
            stream_id,
            offered: offered.clone(),
            incarnation,
            proposals: proposals.clone(),
            ordered: ordered.clone(),
            wake: wake.clone(),
            stop: stop.clone(),
            status: status.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let io = Arc::new(io);
                rt.block_on(async {
                    let (a, b, c) = (io.clone(), io.clone(), io.clone());
                    tokio::join!(a.publisher(), b.reader(read_rx), c.snapshotter());
                });
            })
            .map_err(|e| ClusterError(format!("cluster: thread: {e}")))?;
        Ok(Self {
            incarnation,
            head_at_start: head,
            first_at_start: first,
            replicas,
            snapshot,
            snapshot_note,
            read_from,
            offered,
            proposals,
            ordered,
            wake,
            stop,
            status,
            thread: Some(thread),
        })
    }

    /// This node's id for this run (in every message it publishes).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The stream's last sequence number when this node started: what it must have applied before its
    /// canvas is the cluster's.
    pub fn head_at_start(&self) -> u64 {
        self.head_at_start
    }

    /// The stream's first sequence number when this node started (1, or the first message kept after
    /// older ones were removed; 0 for an empty stream).
    pub fn first_at_start(&self) -> u64 {
        self.first_at_start
    }

    /// The stream's replica count.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The newest snapshot the stream continues from, as loaded at start (taken once).
    pub fn take_snapshot(&mut self) -> Option<Snapshot> {
        self.snapshot.take()
    }

    /// Why a stored snapshot was not loaded, if one was there but unusable.
    pub fn snapshot_note(&self) -> Option<&str> {
        self.snapshot_note.as_deref()
    }

    /// Start reading the stream from the message after `seq` (when `Config::start_after` was `None`);
    /// later calls do nothing.
    pub fn read_after(&mut self, seq: u64) {
        if let Some(tx) = self.read_from.take() {
            let _ = tx.send(seq);
        }
    }

    /// Offer a snapshot of the canvas at stream position `snap.seq` for the bucket; it replaces one
    /// offered earlier and not stored yet. Stored unless the bucket's is as new or recent (see
    /// `Config::snapshot_min_gap`).
    pub fn offer_snapshot(&self, snap: Snapshot) {
        *self.offered.lock().unwrap_or_else(|e| e.into_inner()) = Some(snap);
        self.wake.notify_one();
    }

    /// Queue a batch for publication; gives it back when the queue is full (NATS unreachable or slow).
    pub fn propose(&self, p: Proposal) -> Result<(), Proposal> {
        debug_assert!(p.writes.len() <= MAX_WRITES_PER_PROPOSAL);
        self.proposals.push(p)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Proposals not yet published.
    pub fn backlog(&self) -> usize {
        self.proposals.len()
    }

    /// Take up to `max` messages in stream order.
    pub fn poll(&self, max: usize, out: &mut Vec<Ordered>) -> usize {
        let mut n = 0;
        while n < max {
            let Some(o) = self.ordered.pop() else { break };
            out.push(o);
            n += 1;
        }
        n
    }

    /// Counters and state.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Stop: queued proposals get up to `drain` to be published, then the thread ends.
    pub fn stop(mut self, drain: Duration) {
        self.shutdown(drain);
    }

    /// [`Sequencer::stop`] in place (for an owner that holds it behind a reference); later calls do nothing.
    pub fn shutdown(&mut self, drain: Duration) {
        let end = Instant::now() + drain;
        while !self.proposals.is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// What joining the cluster found (see [`join`]).
struct Joined {
    js: jetstream::Context,
    head: u64,
    first: u64,
    replicas: usize,
    stream_id: String,
    store: Option<async_nats::jetstream::object_store::ObjectStore>,
    snapshot: Option<Snapshot>,
    snapshot_note: Option<String>,
}

/// `attempt` until it succeeds, every 250 ms, until `deadline`; the last error when it never did (a
/// cluster that has just started elects its JetStream leaders first; a NATS server that has just died may
/// still lead a stream).
async fn retry_until<T, F, Fut>(deadline: tokio::time::Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        let e = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => "no answer".to_string(),
        };
        if tokio::time::Instant::now() + Duration::from_millis(250) >= deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Connect to NATS, find or create the stream, and (with `cfg.snapshots`) open the snapshot bucket and
/// load the newest snapshot the stream continues from; all within `cfg.connect_timeout`.
async fn join(cfg: &Config, status: &Arc<Status>) -> Result<Joined, ClusterError> {
    let urls = cfg.urls.join(",");
    let st = status.clone();
    let client = async_nats::ConnectOptions::new()
        .name(format!("canvas node {}", cfg.node))
        .connection_timeout(cfg.connect_timeout)
        .event_callback(move |ev| {
            let st = st.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => st.connected.store(true, Ordering::Release),
                    async_nats::Event::Disconnected => {
                        st.connected.store(false, Ordering::Release);
                        st.problem("disconnected from NATS (reconnecting)".into());
                    }
                    other => st.problem(format!("NATS: {other}")),
                }
            }
        })
        .connect(cfg.urls.clone());
    let client = tokio::time::timeout(cfg.connect_timeout, client)
        .await
        .map_err(|_| {
            ClusterError(format!(
                "cluster: no NATS server at {urls} answered within {:?}: start the cluster (scripts/cluster.sh up) or fix --cluster",
                cfg.connect_timeout
            ))
        })?
        .map_err(|e| ClusterError(format!("cluster: cannot connect to NATS at {urls}: {e}: start it or fix --cluster")))?;
    status.connected.store(true, Ordering::Release);
    let mut js = jetstream::new(client);
    // JetStream API requests (consumer creation, stream info) time out after this: when a NATS server dies
    // with the stream's leader or this node's consumer on it, the requests sent to it until the cluster
    // notices fail fast and are retried, instead of waiting 5 s each.
    js.set_timeout(API_TIMEOUT);
    let want = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject.clone()],
        num_replicas: cfg.replicas,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        // Direct gets are answered by any replica: the reader's way on while its consumer is being
        // replaced (see `Io::read_direct`).
        allow_direct: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let s = retry_until(deadline, || async { js.get_or_create_stream(want.clone()).await.map_err(|e| e.to_string()) })
        .await
        .map_err(|e| {
            ClusterError(format!(
                "cluster: stream {} on {urls} not available within {:?}: {e} (JetStream on? {} servers up for R={}?)",
                cfg.stream, cfg.connect_timeout, cfg.replicas, cfg.replicas
            ))
        })?;
    // The stream's configuration and state as the create-or-get answer carried them: no second request (on
    // a cluster that has just elected its leader, one more request could time out).
    let info = s.cached_info();
    if info.config.subjects != [cfg.subject.clone()] {
        return Err(ClusterError(format!(
            "cluster: stream {} holds subjects {:?}, not {}: another application's stream? pick another name",
            cfg.stream, info.config.subjects, cfg.subject
        )));
    }
    if !info.config.allow_direct {
        // A stream created by an earlier version: allow direct gets (a config update, harmless).
        let mut c = info.config.clone();
        c.allow_direct = true;
        if let Err(e) = js.update_stream(&c).await {
            status.problem(format!(
                "stream {}: could not allow direct gets ({e}): a reader whose consumer is lost waits for a new one",
                c.name
            ));
        }
    }
    let head = info.state.last_sequence;
    let stream_id = snapshots::stream_id(info);
    let (mut store, mut snapshot, mut snapshot_note) = (None, None, None);
    if cfg.snapshots {
        let bucket = retry_until(deadline, || snapshots::open_bucket(&js, &cfg.stream, cfg.replicas))
            .await
            .map_err(|e| ClusterError(format!("cluster: {e} (within {:?})", cfg.connect_timeout)))?;
        // A snapshot that cannot be had is not fatal: the stream holds every message.
        (snapshot, snapshot_note) =
            match retry_until(deadline, || snapshots::load(&bucket, &cfg.stream, &stream_id, head)).await {
                Ok(loaded) => loaded,
                Err(e) => (
                    None,
                    Some(format!(
                        "warning: could not load the snapshot within {:?} ({e}): applying the whole stream",
                        cfg.connect_timeout
                    )),
                ),
            };
        if let Some(sn) = &snapshot {
            status.snapshot_seq.store(sn.seq, Ordering::Relaxed);
        }
        store = Some(bucket);
    }
    Ok(Joined {
        head,
        first: info.state.first_sequence,
        replicas: info.config.num_replicas,
        stream_id,
        store,
        snapshot,
        snapshot_note,
        js,
    })
}

/// A random id for this run of this node.
fn incarnation() -> u64 {
    rand::random()
}

/// The thread's side.
struct Io {
    cfg: Config,
    js: jetstream::Context,
    store: Option<async_nats::jetstream::object_store::ObjectStore>,
    stream_id: String,
    offered: Arc<Mutex<Option<Snapshot>>>,
    incarnation: u64,
    proposals: Arc<ArrayQueue<Proposal>>,
    ordered: Arc<ArrayQueue<Ordered>>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
}

impl Io {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Publish the proposals in order, one message at a time, each retried until the stream has it.
    async fn publisher(&self) {
        let mut buf = Vec::new();
        let mut backoff = Duration::from_millis(50);
        loop {
            // Merge what is queued into one message.
            let (mut first, mut last, mut writes) = (None, 0, Vec::new());
            while writes.len() < MAX_WRITES_PER_PROPOSAL {
                let Some(p) = self.proposals.pop() else { break };
                first.get_or_insert(p.batch);
                last = p.batch;
                writes.extend_from_slice(&p.writes);
            }
            let Some(first) = first else {
                if self.stopping() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), self.wake.notified()).await;
                continue;
            };
            buf.clear();
            wire::encode(self.incarnation, first, last, &writes, &mut buf);
            let payload = bytes::Bytes::copy_from_slice(&buf);
            let id = format!("{:016x}-{first}", self.incarnation);
            loop {
                let publish = async {
                    let msg = jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(id.as_str());
                    self.js.send_publish(self.cfg.subject.clone(), msg).await?.await.map_err(Into::into)
                };
                let r: Result<_, async_nats::Error> =
                    match tokio::time::timeout(self.cfg.publish_timeout, publish).await {
                        Ok(r) => r,
                        Err(_) => {
                            Err(format!("no acknowledgement within {:?}", self.cfg.publish_timeout).into())
                        }
                    };
                match r {
                    Ok(ack) => {
                        self.status.published.fetch_add(1, Ordering::Relaxed);
                        if ack.duplicate {
                            self.status.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        self.status.acked_batch.store(last, Ordering::Release);
                        backoff = Duration::from_millis(50);
                        break;
                    }
                    Err(e) => {
                        self.status.publish_failures.fetch_add(1, Ordering::Relaxed);
                        self.status.problem(format!("publishing batches {first}..={last}: {e} (retrying)"));
                        if self.stopping() {
                            return; // never ACKed: the writes in it were not acknowledged to anyone
                        }
                        // At most 250 ms between attempts: a stream without a leader (its NATS server
                        // died) gets one within seconds, and the first attempt after that succeeds.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(250));
                    }
                }
            }
        }
    }

    /// Store what [`Sequencer::offer_snapshot`] offered, one at a time.
    async fn snapshotter(&self) {
        let Some(store) = &self.store else { return };
        while !self.stopping() {
            let offer = self.offered.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(snap) = offer else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let put = snapshots::store(
                store,
                &self.cfg.stream,
                &self.stream_id,
                &self.cfg.node,
                &snap,
                self.cfg.snapshot_min_gap,
            );
            let s = &self.status;
            match tokio::time::timeout(Duration::from_secs(30), put).await {
                Ok(Ok(Ok(seq))) => {
                    s.snapshots_stored.fetch_add(1, Ordering::Relaxed);
                    s.snapshot_seq.fetch_max(seq, Ordering::Relaxed);
                }
                Ok(Ok(Err(skipped))) => {
                    s.snapshots_skipped.fetch_add(1, Ordering::Relaxed);
                    if let snapshots::Skipped::Newer(seq) = skipped {
                        s.snapshot_seq.fetch_max(seq, Ordering::Relaxed);
                    }
                }
                Ok(Err(e)) => {
                    s.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                    s.problem(format!("{e} (the next offer tries again)"));
                }
                Err(_) => {
                    s.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                    s.problem(format!("storing snapshot at {}: no answer within 30 s", snap.seq));
                }
            }
        }
    }

    /// Read the stream in order from the position `start` gives (+ 1) and hand every message to the master;
    /// start over from the position reached after any error.
    async fn reader(&self, start: tokio::sync::oneshot::Receiver<u64>) {
        let after = tokio::select! {
            r = start => match r {
                Ok(n) => n,
                Err(_) => return, // the Sequencer is gone
            },
            () = async { while !self.stopping() { tokio::time::sleep(Duration::from_millis(20)).await } } => return,
        };
        let mut next = after + 1;
        let mut backoff = Duration::from_millis(50);
        // A handle (no request): consumers and direct gets without asking the leader for the stream's info.
        let direct = match self.js.get_stream_no_info(&self.cfg.stream).await {
            Ok(d) => d,
            Err(e) => {
                self.status.problem(format!("stream {}: {e}", self.cfg.stream));
                return;
            }
        };
        while !self.stopping() {
            match self.read_from(next, &direct).await {
                Ok(n) => next = n,
                Err((n, e)) => {
                    next = n;
                    self.status.reader_restarts.fetch_add(1, Ordering::Relaxed);
                    self.status.problem(format!("reading the stream from {next}: {e} (starting over)"));
                    // Until a new consumer can be had (creating one needs the stream's leader and the
                    // cluster's meta leader, which a dead NATS server may have been), read what the
                    // stream holds from any replica.
                    let before = next;
                    next = self.read_direct(&direct, next).await;
                    if next > before {
                        backoff = Duration::from_millis(50);
                        continue;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Hand the messages from `next` on to the master by direct gets of exact sequence numbers (one
    /// request each, answered by any replica that has the message) until one is not there (the head, a
    /// replica still catching up, or a removed message: the consumer deals with those) or fails; returns
    /// the next sequence wanted. By exact number, not "the next one from": a replica that is catching up
    /// after a restart can hold later messages without the earlier ones.
    async fn read_direct(&self, s: &stream::Stream<()>, mut next: u64) -> u64 {
        while !self.stopping() {
            let get = s.direct_get(next);
            let m = match tokio::time::timeout(API_TIMEOUT, get).await {
                Ok(Ok(m)) => m,
                _ => break,
            };
            if m.sequence != next || m.subject.as_str() != self.cfg.subject {
                break; // not what was asked: leave it to a consumer
            }
            self.status.direct_reads.fetch_add(1, Ordering::Relaxed);
            if !self.deliver(m.sequence, &m.payload, next).await {
                break;
            }
            next = m.sequence + 1;
        }
        next
    }

    /// Hand message `seq` to the master (waiting while its queue is full); `next` is the sequence that was
    /// expected (a larger `seq` means messages were removed). False when stopping first.
    async fn deliver(&self, seq: u64, payload: &[u8], next: u64) -> bool {
        if seq > next {
            self.status.missing.fetch_add(seq - next, Ordering::Relaxed);
            self.status.problem(format!(
                "stream messages {next}..{seq} are gone (deleted or purged): their writes are missing from this node's canvas"
            ));
        }
        let batch = wire::decode(payload);
        if let Err(e) = &batch {
            self.status.corrupt.fetch_add(1, Ordering::Relaxed);
            self.status.problem(format!("stream message {seq}: {e} (skipped)"));
        }
        let mut o = Ordered { seq, batch };
        // Backpressure: the master is behind; wait for room (the stream keeps the rest).
        while let Err(back) = self.ordered.push(o) {
            if self.stopping() {
                return false;
            }
            o = back;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.status.delivered.store(seq, Ordering::Release);
        true
    }

    /// One ordered consumer from `next`; returns the next sequence wanted.
    async fn read_from(
        &self,
        mut next: u64,
        s: &stream::Stream<()>,
    ) -> Result<u64, (u64, async_nats::Error)> {
        let deliver_policy = if next <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: next }
        };
        let c = s
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.cfg.subject.clone(),
                deliver_policy,
                max_expires: Duration::from_secs(1),
                ..Default::default()
            })
            .await
            .map_err(|e| (next, e.into()))?;
        let mut msgs = c.messages().await.map_err(|e| (next, e.into()))?;
        let mut progress = Instant::now();
        while !self.stopping() {
            let m = match tokio::time::timeout(Duration::from_millis(100), msgs.next()).await {
                Err(_) => {
                    // Idle for a second: if the stream has moved past us, this consumer is stuck (its
                    // server died with it, and no error reached us): start over from `next`.
                    if progress.elapsed() >= STALL_CHECK {
                        progress = Instant::now();
                        // Asked of any replica (a direct get); a stream that does not allow those is
                        // asked through its leader.
                        let get = s.direct_get(next);
                        let ahead = match tokio::time::timeout(API_TIMEOUT, get).await {
                            Ok(Ok(m)) => m.sequence >= next,
                            Ok(Err(e)) if e.kind() == stream::DirectGetErrorKind::NotFound => false,
                            _ => {
                                let info = self
                                    .js
                                    .get_stream(&self.cfg.stream)
                                    .await
                                    .map_err(|e| (next, e.into()))?;
                                info.cached_info().state.last_sequence >= next
                            }
                        };
                        if ahead {
                            return Err((
                                next,
                                format!(
                                    "consumer stalled: the stream has {next}, delivered up to {}",
                                    next - 1
                                )
                                .into(),
                            ));
                        }
                    }
                    continue;
                }
                Ok(None) => return Ok(next),
                Ok(Some(Err(e))) => return Err((next, e.into())),
                Ok(Some(Ok(m))) => m,
            };
            let seq = m.info().map_err(|e| (next, e))?.stream_sequence;
            if seq < next {
                continue;
            }
            if !self.deliver(seq, &m.payload, next).await {
                return Ok(next);
            }
            next = seq + 1;
            progress = Instant::now();
        }
        Ok(next)
    }
}
