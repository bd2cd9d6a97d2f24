//! A whole system in one thread over the in-memory backend: the master, N worker endpoints and many quiche
//! clients speaking canvas/1, joined by the seeded lossy [`Net`]. Used by the convergence tests and the
//! endpoint benchmarks.
//!
//! What is deterministic: the network's decisions (seeded per datagram), the tick schedule (every
//! `rounds_per_tick` rounds), the writes. What is not: quiche 0.30 reads `Instant::now()` inside
//! `recv`/`send`/`on_timeout` and cannot be given a clock, so the harness passes the monotonic time to every
//! component of ours and, when nothing is in flight, sleeps until quiche's next timer.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canvas::proto::{self, ClientMsg, FrameReader, ServerMsg, SnapshotEncoding, NO_TICK};
use canvas::{Canvas, Pixel, Replica};

use crate::endpoint::{Endpoint, EndpointConfig};
use crate::link::{Shared, WorkerLink};
use crate::master::{Master, MasterConfig};
use crate::quic::{self, QuicConfig};
use datapath::backend::mem::{MemSocket, Net, NetConfig};
use datapath::seam::Datapath;

/// Simulation parameters.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Worker endpoints (each at its own server address; clients are spread round-robin).
    pub workers: usize,
    /// Clients.
    pub clients: usize,
    /// Network model.
    pub net: NetConfig,
    /// Rounds between master ticks.
    pub rounds_per_tick: u64,
    /// Endpoint template (`worker` is set per worker).
    pub endpoint: EndpointConfig,
    /// Master template.
    pub master: MasterConfig,
    /// QUIC knobs.
    pub quic: QuicConfig,
    /// Write queue capacity per worker.
    pub write_queue: usize,
}

/// A quiche client speaking canvas/1.
pub struct SimClient {
    /// The connection.
    pub q: quiche::Connection,
    /// Its address.
    pub addr: SocketAddr,
    /// The replica.
    pub replica: Replica,
    reader: FrameReader,
    out: Vec<u8>,
    out_off: usize,
    hello: bool,
    next_id: u32,
    /// WRITEs sent.
    pub sent: u64,
    /// ACKs received.
    pub acked: u64,
    /// REJECTs received.
    pub rejected: u64,
    /// Highest tick in an ACK.
    pub max_acked_tick: u64,
    /// Drop everything that reaches this client (a link that loses every downstream packet) while set.
    pub deaf: bool,
    /// The client neither reads nor sends while set; what reaches it waits in its inbox (a client, or a
    /// path, that stops for a while without losing anything).
    pub stalled: bool,
    /// The flags of its SYNCs (`proto::SYNC_ZSTD` by default, as the load generator's).
    pub sync_flags: u8,
    /// The encoding of the last SNAPSHOT it received.
    pub last_snapshot: Option<SnapshotEncoding>,
}

impl std::fmt::Debug for SimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimClient")
            .field("addr", &self.addr)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl SimClient {
    fn process(&mut self, now: Instant, buf: &mut [u8]) {
        if self.q.is_established() && !self.hello {
            self.hello = true;
            let mut hello = Vec::new();
            proto::encode_client(&ClientMsg::Sync { have_tick: NO_TICK, flags: self.sync_flags }, &mut hello);
            self.out.splice(self.out_off..self.out_off, hello);
        }
        while let Ok(n) = self.q.dgram_recv(buf) {
            self.replica.on_datagram(&buf[..n], now).expect("valid DIFF_PART");
        }
        loop {
            const CHUNK: usize = 16 * 1024;
            match self.q.stream_recv(0, self.reader.spare(CHUNK)) {
                Ok((n, _)) => self.reader.commit(n, CHUNK),
                Err(_) => {
                    self.reader.commit(0, CHUNK);
                    break;
                }
            }
        }
        while let Some(f) = self.reader.pop().expect("framing") {
            let m = proto::decode_server(f).expect("valid server message");
            if let ServerMsg::Snapshot { encoding, .. } = m {
                self.last_snapshot = Some(encoding);
            }
            match m {
                ServerMsg::Ack { tick, .. } => {
                    self.replica.note_tick(tick, now);
                    self.acked += 1;
                    self.max_acked_tick = self.max_acked_tick.max(tick);
                }
                ServerMsg::Reject { .. } => self.rejected += 1,
                _ => self.replica.on_message(&m, now).expect("replica accepts server message"),
            }
        }
        if let Some(t) = self.replica.poll_sync(now) {
            proto::encode_client(&ClientMsg::Sync { have_tick: t, flags: self.sync_flags }, &mut self.out);
        }
        if self.hello && self.out_off < self.out.len() {
            if let Ok(n) = self.q.stream_send(0, &self.out[self.out_off..], false) {
                self.out_off += n;
                if self.out_off == self.out.len() {
                    self.out.clear();
                    self.out_off = 0;
                }
            }
        }
    }

    /// Queue a WRITE.
    pub fn write(&mut self, pixel: Pixel) {
        proto::encode_client(&ClientMsg::Write { id: self.next_id, pixel }, &mut self.out);
        self.next_id += 1;
        self.sent += 1;
    }
}

/// The simulated system.
#[derive(Debug)]
pub struct Sim {
    /// The network.
    pub net: Net,
    /// The master.
    pub master: Master<Vec<u8>>,
    /// Queues between master and workers.
    pub shared: Arc<Shared>,
    /// Worker endpoints and their sockets.
    pub workers: Vec<(Endpoint, MemSocket)>,
    /// Clients.
    pub clients: Vec<SimClient>,
    rounds_per_tick: u64,
    round: u64,
    buf: Vec<u8>,
}

/// One worker's send side: take the master's publications, fire timers, and flush until the endpoint has
/// nothing left to send (the in-memory socket never refuses a slot).
pub fn pump(ep: &mut Endpoint, sock: &mut MemSocket, now: Instant) {
    ep.poll_publications(now);
    ep.on_timers(now);
    while {
        ep.flush(now, sock);
        ep.has_work()
    } {}
}

/// The address of worker `w`.
pub fn server_addr(w: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 4433 + w as u16))
}

impl Sim {
    /// Build the system; clients start their handshakes at once.
    pub fn new(cfg: SimConfig, cert: &Path, key: &Path) -> Self {
        let links = (0..cfg.workers).map(|_| WorkerLink::new(cfg.write_queue, 4096)).collect();
        let shared = Arc::new(Shared {
            links,
            snapshot_wanted: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let dims = cfg.endpoint.rules.dims;
        let canvas = Canvas::new(dims, vec![0u8; dims.len()]).expect("canvas");
        let master = Master::new(canvas, cfg.master, shared.clone());
        let now = Instant::now();
        let workers = (0..cfg.workers)
            .map(|w| {
                let qcfg = quic::server_config(&cfg.quic, cert, key).expect("server config");
                let ep =
                    Endpoint::new(EndpointConfig { worker: w, ..cfg.endpoint }, qcfg, shared.clone(), now);
                (ep, MemSocket::new(server_addr(w), cfg.quic.max_udp_payload))
            })
            .collect();
        let mut ccfg = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("client config");
        ccfg.verify_peer(false);
        ccfg.set_application_protos(&[proto::ALPN]).expect("alpn");
        ccfg.set_max_idle_timeout(cfg.quic.idle_timeout.as_millis() as u64);
        ccfg.set_max_recv_udp_payload_size(cfg.quic.max_udp_payload);
        ccfg.set_max_send_udp_payload_size(cfg.quic.max_udp_payload);
        ccfg.set_initial_max_data(64 << 20);
        ccfg.set_initial_max_stream_data_bidi_local(16 << 20);
        ccfg.set_initial_max_stream_data_bidi_remote(1 << 20);
        ccfg.set_initial_max_streams_bidi(4);
        ccfg.enable_dgram(true, 4096, 64);
        let clients = (0..cfg.clients)
            .map(|i| {
                let addr = SocketAddr::from((
                    Ipv4Addr::new(127, 0, 1 + (i / 60000) as u8, 1),
                    1024 + (i % 60000) as u16,
                ));
                let mut scid = [0u8; 16];
                scid[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                scid[8..].copy_from_slice(&cfg.net.seed.to_le_bytes());
                let server = server_addr(i % cfg.workers);
                let q =
                    quiche::connect(None, &quiche::ConnectionId::from_ref(&scid), addr, server, &mut ccfg)
                        .expect("connect");
                SimClient {
                    q,
                    addr,
                    replica: Replica::new(dims),
                    reader: FrameReader::new(),
                    out: Vec::new(),
                    out_off: 0,
                    hello: false,
                    next_id: 0,
                    sent: 0,
                    acked: 0,
                    rejected: 0,
                    max_acked_tick: 0,
                    deaf: false,
                    stalled: false,
                    sync_flags: proto::SYNC_ZSTD,
                    last_snapshot: None,
                }
            })
            .collect();
        Self {
            net: Net::new(cfg.net),
            master,
            shared,
            workers,
            clients,
            rounds_per_tick: cfg.rounds_per_tick.max(1),
            round: 0,
            buf: vec![0; 64 * 1024],
        }
    }

    /// The server half of a round (after the network step): every worker takes in what arrived, the master
    /// drains the writes and closes a tick when `tick(writes drained)` says so, and every worker sends.
    pub fn serve(&mut self, now: Instant, tick: impl FnOnce(usize) -> bool) {
        for (ep, sock) in &mut self.workers {
            sock.exchange(&mut self.net);
            while sock.recv(usize::MAX, |a, p| ep.on_datagram(now, a, p)).expect("mem recv") > 0 {}
        }
        let drained = self.master.drain();
        if tick(drained) {
            self.master.end_tick();
        }
        for (ep, sock) in &mut self.workers {
            pump(ep, sock, now);
            sock.exchange(&mut self.net);
        }
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// One round: deliver, run the servers (master ticks every `rounds_per_tick`), run the clients.
    pub fn round(&mut self) {
        self.round_at(Instant::now());
    }

    /// One round with the endpoints' and clients' timers read against `now` (a test that must not depend on
    /// how fast rounds run passes the same instant to every round: no timer of ours fires).
    pub fn round_at(&mut self, now: Instant) {
        self.net.step();
        let tick = self.round.is_multiple_of(self.rounds_per_tick);
        self.serve(now, |_| tick);
        for c in &mut self.clients {
            if c.stalled {
                continue;
            }
            while let Some(mut p) = self.net.take(c.addr) {
                if !c.deaf {
                    let _ = c.q.recv(&mut p.data, quiche::RecvInfo { from: p.from, to: c.addr });
                }
            }
            if c.q.timeout_instant().is_some_and(|t| t <= now) {
                c.q.on_timeout();
            }
            c.process(now, &mut self.buf);
            while let Ok((n, info)) = c.q.send(&mut self.buf) {
                self.net.send(c.addr, info.to, self.buf[..n].to_vec());
            }
        }
        self.round += 1;
    }

    /// Run rounds until `done(self)` or `limit` of real time passes; returns whether `done` became true.
    /// When nothing is in flight it sleeps until the earliest quiche timer (at most 5 ms).
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(self) {
                return true;
            }
            self.round();
            if self.net.in_flight() == 0 {
                let now = Instant::now();
                let next = self
                    .clients
                    .iter()
                    .filter_map(|c| c.q.timeout_instant())
                    .chain(self.workers.iter().filter_map(|(e, _)| e.next_timeout()))
                    .min();
                let wait = next.map_or(Duration::from_millis(1), |t| t.saturating_duration_since(now));
                std::thread::sleep(wait.min(Duration::from_millis(5)));
            }
        }
        done(self)
    }

    /// Every client has completed its handshake and installed a snapshot.
    pub fn all_ready(&self) -> bool {
        self.clients.iter().all(|c| c.q.is_established() && c.replica.tick().is_some())
    }

    /// Every write has been answered and every replica equals the master's canvas.
    pub fn converged(&self) -> bool {
        let px = self.master.canvas().pixels();
        self.clients.iter().all(|c| c.acked + c.rejected == c.sent && c.replica.pixels() == px)
    }
}
