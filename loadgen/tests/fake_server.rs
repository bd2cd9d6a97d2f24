//! A small in-process canvas server (quinn) implementing the contract the `client` expects, for both
//! ALPNs, over a real `canvas::Canvas`: it stands in for the quiche server in end-to-end tests.
//!
//! - `canvas/1`: the client's first SYNC gets WELCOME, SNAPSHOT, SYNCED; later SYNCs get the missing DIFFs
//!   (or a SNAPSHOT when history no longer covers them) then SYNCED; WRITEs are applied at once and ACKed
//!   with the tick being built (so the ACK precedes the diff), or REJECTed (invalid, or every Nth one with
//!   `Busy` when `reject_every` is set). Every changing tick's diff goes out as DIFF_PART datagrams, and a
//!   quiet tick Q sends a HEAD when `Q - last_change` is 1, 2, 4, …, 64 (the real server's rule).
//! - legacy (`h3`): 5-byte write datagrams are applied; every tick sends the diff, or on the connection's
//!   first tick and every 60th the RLE snapshot.
#![allow(dead_code)] // shared by several test crates, each using part of it

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use canvas::proto::{self, ClientMsg, FrameReader, NO_TICK};
use canvas::{legacy, Canvas, Datagrams, Dims, RejectReason, Rules};

/// Largest broadcast datagram (the real server's limit).
pub const MAX_DATAGRAM: usize = 1200;
/// Ticks of diff history kept for SYNC replies.
const HISTORY: usize = 600;
/// Legacy full-snapshot period in ticks (the predecessor's FULL_BROADCAST_INTERVAL).
const FULL_EVERY: u64 = 60;

/// Server knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Canvas size.
    pub dims: Dims,
    /// Tick interval.
    pub tick: Duration,
    /// Reject every Nth canvas/1 write with `Busy` (not applied).
    pub reject_every: Option<u64>,
    /// Drop every Nth diff datagram (canvas/1 DIFF_PART and legacy diff; never legacy snapshot parts).
    pub drop_every: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self { dims: Dims::default(), tick: Duration::from_millis(100), reject_every: None, drop_every: None }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// canvas/1 writes ACKed.
    pub acked: AtomicU64,
    /// canvas/1 writes REJECTed.
    pub rejected: AtomicU64,
    /// Legacy writes applied.
    pub legacy_writes: AtomicU64,
    /// SYNCs after the hello.
    pub syncs: AtomicU64,
    /// Datagrams that could not be sent (too large, ...).
    pub send_errors: AtomicU64,
    /// Diff datagrams dropped on purpose (`drop_every`).
    pub dropped: AtomicU64,
    /// Diff datagrams offered for sending (before `drop_every`).
    pub diff_datagrams: AtomicU64,
}

struct Hist {
    tick: u64,
    base: u64,
    hash: u64,
    entries: Vec<(u32, u8)>,
}

struct State {
    canvas: Canvas<Vec<u8>>,
    rules: Rules,
    tick: u64,
    last_change: u64,
    history: VecDeque<Hist>,
    /// Highest tick whose diff was dropped from history: SYNCs from before it need a snapshot.
    dropped_upto: u64,
    writes: u64,
}

struct Peer {
    conn: quinn::Connection,
    legacy: bool,
    ticks: u64,
}

struct Shared {
    opts: Options,
    state: Mutex<State>,
    peers: Mutex<Vec<Peer>>,
    stats: Arc<Stats>,
}

/// A running server; dropped = shut down.
#[derive(Debug)]
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<Stats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Start on 127.0.0.1 (ephemeral port) on a runtime of its own thread.
    pub fn start(opts: Options) -> Self {
        let stats = Arc::new(Stats::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let st = stats.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(opts, st, addr_tx, shutdown_rx));
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("fake server started");
        Self { addr, stats, shutdown: Some(shutdown), thread: Some(thread) }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_config() -> quinn::ServerConfig {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key.into())
            .expect("cert and key");
    tls.alpn_protocols = vec![proto::ALPN.to_vec(), legacy::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS");
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("idle")))
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // 1200-byte datagrams do not fit quinn's default 1200-byte initial MTU (loopback has room).
        .initial_mtu(1400)
        .datagram_send_buffer_size(8 << 20);
    cfg.transport_config(Arc::new(t));
    cfg
}

async fn serve(
    opts: Options,
    stats: Arc<Stats>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let endpoint =
        quinn::Endpoint::server(server_config(), "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    addr_tx.send(endpoint.local_addr().expect("local addr")).expect("report addr");
    let dims = opts.dims;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            canvas: Canvas::new(dims, vec![0; dims.len()]).expect("canvas"),
            rules: Rules { dims, palette: 256 },
            tick: 0,
            last_change: 0,
            history: VecDeque::new(),
            dropped_upto: 0,
            writes: 0,
        }),
        peers: Mutex::new(Vec::new()),
        stats,
        opts,
    });
    let ticker = tokio::spawn(ticker(shared.clone()));
    loop {
        tokio::select! {
            inc = endpoint.accept() => match inc {
                Some(inc) => { tokio::spawn(handle(inc, shared.clone())); }
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    ticker.abort();
    endpoint.close(0u32.into(), b"server shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

fn send_all(sh: &Shared, conn: &quinn::Connection, d: &Datagrams, lossy: bool) {
    for g in d.iter() {
        if lossy {
            let n = sh.stats.diff_datagrams.fetch_add(1, Relaxed) + 1;
            if sh.opts.drop_every.is_some_and(|k| n.is_multiple_of(k)) {
                sh.stats.dropped.fetch_add(1, Relaxed);
                continue;
            }
        }
        if let Err(e) = conn.send_datagram(Bytes::copy_from_slice(g)) {
            if !matches!(e, quinn::SendDatagramError::ConnectionLost(_)) {
                sh.stats.send_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

async fn ticker(sh: Arc<Shared>) {
    let mut every = tokio::time::interval(sh.opts.tick);
    let mut entries = Vec::new();
    loop {
        every.tick().await;
        let mut st = sh.state.lock().expect("state");
        entries.clear();
        st.canvas.end_tick(&mut entries);
        st.tick += 1;
        let tick = st.tick;
        let (mut parts, mut ldiff) = (Datagrams::new(), Datagrams::new());
        let quiet = tick - st.last_change;
        if entries.is_empty() && st.last_change > 0 && quiet <= 64 && quiet.is_power_of_two() {
            parts.begin();
            parts.extend(&proto::encode_head(tick, st.last_change, st.canvas.hash()));
        }
        if !entries.is_empty() {
            let (base, hash) = (st.last_change, st.canvas.hash());
            proto::encode_diff_parts(tick, base, hash, &entries, MAX_DATAGRAM, &mut parts);
            legacy::encode_diff(&entries, MAX_DATAGRAM, &mut ldiff);
            st.history.push_back(Hist { tick, base, hash, entries: entries.clone() });
            st.last_change = tick;
            while st.history.len() > HISTORY {
                let old = st.history.pop_front().expect("non-empty");
                st.dropped_upto = old.tick;
            }
        }
        let mut peers = sh.peers.lock().expect("peers");
        peers.retain(|p| p.conn.close_reason().is_none());
        let mut snap: Option<Datagrams> = None;
        for p in peers.iter_mut() {
            if !p.legacy {
                send_all(&sh, &p.conn, &parts, true);
                continue;
            }
            if p.ticks.is_multiple_of(FULL_EVERY) {
                let s = snap.get_or_insert_with(|| {
                    let mut d = Datagrams::new();
                    legacy::encode_snapshot(st.canvas.pixels(), MAX_DATAGRAM, &mut d);
                    d
                });
                send_all(&sh, &p.conn, s, false);
            } else {
                send_all(&sh, &p.conn, &ldiff, true);
            }
            p.ticks += 1;
        }
    }
}

async fn handle(inc: quinn::Incoming, sh: Arc<Shared>) {
    let Ok(conn) = inc.await else { return };
    sh.stats.connections.fetch_add(1, Relaxed);
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() == Some(legacy::ALPN) {
        legacy_conn(conn, sh).await;
    } else {
        canvas1_conn(conn, sh).await;
    }
}

async fn legacy_conn(conn: quinn::Connection, sh: Arc<Shared>) {
    {
        let _st = sh.state.lock().expect("state"); // lock order: state, then peers
        sh.peers.lock().expect("peers").push(Peer { conn: conn.clone(), legacy: true, ticks: 0 });
    }
    while let Ok(d) = conn.read_datagram().await {
        let Some(p) = legacy::decode_write(&d) else { continue };
        let mut st = sh.state.lock().expect("state");
        if let Ok(i) = st.rules.validate(p) {
            st.canvas.apply(i, p.color);
            sh.stats.legacy_writes.fetch_add(1, Relaxed);
        }
    }
}

async fn canvas1_conn(conn: quinn::Connection, sh: Arc<Shared>) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let mut fr = FrameReader::new();
    let mut out = Vec::new();
    let mut hello = false;
    while let Ok(Some(chunk)) = recv.read_chunk(64 << 10, true).await {
        fr.push(&chunk.bytes);
        {
            let mut st = sh.state.lock().expect("state");
            loop {
                let frame = match fr.pop() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => return conn.close(2u32.into(), b"bad frame"),
                };
                let Ok(msg) = proto::decode_client(frame) else {
                    return conn.close(2u32.into(), b"bad message");
                };
                match msg {
                    ClientMsg::Sync { have_tick, .. } => {
                        let dims = st.canvas.dims();
                        if !hello {
                            hello = true;
                            let w = proto::Welcome {
                                dims,
                                palette: 256,
                                tick_ms: 100,
                                cooldown_ms: 0,
                                tick: st.tick,
                            };
                            proto::encode_welcome(&w, &mut out);
                            sh.peers.lock().expect("peers").push(Peer {
                                conn: conn.clone(),
                                legacy: false,
                                ticks: 0,
                            });
                        } else {
                            sh.stats.syncs.fetch_add(1, Relaxed);
                        }
                        if have_tick == NO_TICK || have_tick < st.dropped_upto {
                            proto::encode_snapshot(
                                st.tick,
                                st.canvas.hash(),
                                dims,
                                st.canvas.pixels(),
                                &mut out,
                            );
                        } else {
                            for h in st.history.iter().filter(|h| h.tick > have_tick) {
                                proto::encode_diff(h.tick, h.base, h.hash, &h.entries, &mut out);
                            }
                        }
                        proto::encode_synced(st.tick, &mut out);
                    }
                    ClientMsg::Write { id, pixel } => {
                        st.writes += 1;
                        let busy = sh.opts.reject_every.is_some_and(|n| st.writes.is_multiple_of(n));
                        let r = if busy { Err(RejectReason::Busy) } else { st.rules.validate(pixel) };
                        match r {
                            Ok(i) => {
                                st.canvas.apply(i, pixel.color);
                                proto::encode_ack(id, st.tick + 1, &mut out);
                                sh.stats.acked.fetch_add(1, Relaxed);
                            }
                            Err(reason) => {
                                proto::encode_reject(id, reason, 100, &mut out);
                                sh.stats.rejected.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
