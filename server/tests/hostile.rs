//! Junk at the endpoint: no datagram that does not authenticate as a QUIC Initial leaves connection state
//! behind (a spoofed flood of them would otherwise exhaust the connection table).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canvas::{Cooldown, Dims, Rules};
use datapath::seam::Addrs;
use rand::{Rng, SeedableRng};
use server::endpoint::{Endpoint, EndpointConfig};
use server::link::{Shared, WorkerLink};
use server::quic::{self, DEFAULT_QUIC};

fn endpoint(tls: &quic::CertPair) -> Endpoint {
    endpoint_with(tls, server::endpoint::DEFAULT_MAX_HALF_OPEN, server::endpoint::DEFAULT_RETRY_ABOVE)
}

fn endpoint_with(tls: &quic::CertPair, max_half_open: usize, retry_above: usize) -> Endpoint {
    endpoint_full(tls, max_half_open, retry_above, 0, 65536)
}

fn endpoint_full(
    tls: &quic::CertPair,
    max_half_open: usize,
    retry_above: usize,
    retry_above_rate: u32,
    max_conns: usize,
) -> Endpoint {
    let cfg = EndpointConfig {
        worker: 0,
        rules: Rules { dims: Dims { width: 100, height: 100 }, palette: 32 },
        cooldown: Cooldown::default(),
        max_conns,
        retry: false,
        tick_ms: 100,
        dgram_queue: 8,
        broadcast_inflight: server::endpoint::DEFAULT_BROADCAST_INFLIGHT,
        broadcast_queue: server::endpoint::DEFAULT_BROADCAST_QUEUE,
        catchup_budget: server::endpoint::DEFAULT_CATCHUP_BUDGET,
        max_datagram: canvas::legacy::MAX_DATAGRAM,
        history_ticks: 16,
        send_budget: 64,
        max_half_open,
        handshake_timeout: server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT,
        retry_above,
        retry_above_rate,
        source_writes_per_sec: 0,
    };
    let shared = Arc::new(Shared {
        links: vec![WorkerLink::new(64, 64)],
        snapshot_wanted: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
    });
    let qcfg = quic::server_config(&DEFAULT_QUIC, &tls.cert, &tls.key).unwrap();
    Endpoint::new(cfg, qcfg, shared, Instant::now())
}

/// A datagram with a well-formed QUIC v1 long header of packet type `ty` (0 = Initial) and random
/// everything else, `len` bytes.
fn long_header(rng: &mut impl Rng, ty: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0xc0 | (ty << 4) | rng.random_range(0..4u8), 0, 0, 0, 1];
    let dcid = rng.random_range(0..=20usize);
    p.push(dcid as u8);
    p.extend((0..dcid).map(|_| rng.random::<u8>()));
    let scid = rng.random_range(0..=20usize);
    p.push(scid as u8);
    p.extend((0..scid).map(|_| rng.random::<u8>()));
    if ty == 0 {
        p.push(0); // no token
    }
    // Length: the rest of the datagram (2-byte varint), or a random one.
    let rest = len.saturating_sub(p.len() + 2);
    let l = if rng.random_bool(0.7) { rest.min(16383) } else { rng.random_range(0..16384) };
    p.extend_from_slice(&(0x4000u16 | l as u16).to_be_bytes());
    while p.len() < len {
        p.push(rng.random());
    }
    p
}

#[test]
fn junk_never_leaves_connection_state() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut ep = endpoint(&tls);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let local: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    for i in 0..20_000u32 {
        let peer: SocketAddr =
            format!("10.{}.{}.{}:{}", i % 200, (i / 200) % 250, 1 + i % 250, 1024 + i % 60000)
                .parse()
                .unwrap();
        let (len, ty) = (rng.random_range(1200..=1500), rng.random_range(1..4));
        let mut pkt = match i % 5 {
            0 | 1 => long_header(&mut rng, 0, len),
            2 => long_header(&mut rng, ty, 1200),
            3 => (0..rng.random_range(1200..=1500)).map(|_| rng.random()).collect(),
            _ => (0..rng.random_range(1..64)).map(|_| rng.random()).collect(),
        };
        ep.on_datagram(Instant::now(), Addrs { local, peer }, &mut pkt);
        assert_eq!(ep.conn_count(), 0, "datagram {i} left a connection: {pkt:02x?}");
    }
    let st = ep.stats();
    assert_eq!(st.accepted, 0);
    eprintln!(
        "20000 junk datagrams: dropped {}, unauthenticated initials {}, recv errors {}",
        st.dropped_packets, st.junk_initials, st.recv_errors
    );
    assert!(st.junk_initials > 0);
}

/// A fresh quiche client at `peer` (canvas/1, not verifying the server) connecting to `local`.
fn quiche_client(peer: SocketAddr, local: SocketAddr) -> quiche::Connection {
    let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    cfg.set_application_protos(&[b"canvas/1"]).unwrap();
    cfg.verify_peer(false);
    // Room for what the server sends on the client's control stream.
    cfg.set_initial_max_data(1 << 20);
    cfg.set_initial_max_stream_data_bidi_local(1 << 20);
    let scid: [u8; 16] = rand::random();
    quiche::connect(Some("localhost"), &quiche::ConnectionId::from_ref(&scid), peer, local, &mut cfg).unwrap()
}

/// The first flight (one padded Initial) of a fresh quiche client from `peer`.
fn client_initial(peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = vec![0; 1500];
    let (n, _) = quiche_client(peer, local).send(&mut out).unwrap();
    out.truncate(n);
    out
}

/// Feed `n` fresh client Initials, from 10.0.`net`.1, .2, …, to `ep` at `now`.
fn initials(ep: &mut Endpoint, now: Instant, net: u8, n: u8) {
    let local: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    for i in 0..n {
        let peer = SocketAddr::from(([10, 0, net, i + 1], 5000 + u16::from(i)));
        let mut pkt = client_initial(peer, local);
        ep.on_datagram(now, Addrs { local, peer }, &mut pkt);
    }
}

#[test]
fn half_open_connections_are_capped_and_time_out() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut ep = endpoint_with(&tls, 5, 0);
    let t0 = Instant::now();
    initials(&mut ep, t0, 0, 8);
    // Five handshakes in progress (never completed: nobody answers the server), three Initials refused.
    assert_eq!(ep.conn_count(), 5);
    assert_eq!((ep.stats().accepted, ep.stats().refused_half_open), (5, 3));
    ep.on_timers(t0 + server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT - std::time::Duration::from_millis(1));
    assert_eq!(ep.conn_count(), 5, "not before the deadline");
    ep.on_timers(t0 + server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(ep.conn_count(), 0, "abandoned at the deadline");
    assert_eq!(ep.stats().handshake_timeouts, 5);
    // Room again.
    initials(&mut ep, Instant::now(), 1, 1);
    assert_eq!(ep.conn_count(), 1);
}

#[test]
fn retry_switches_on_past_the_threshold_and_off_again() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut ep = endpoint_with(&tls, 1000, 2);
    let t0 = Instant::now();
    initials(&mut ep, t0, 2, 6);
    // Three handshakes in progress (more than 2): from the fourth Initial on, a Retry and no state.
    let st = ep.stats();
    assert_eq!((ep.conn_count(), st.accepted, st.retries, st.retry_switched_on), (3, 3, 3, 1));
    // The half-open ones time out; below half the threshold Retry is off again.
    ep.on_timers(t0 + server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(ep.conn_count(), 0);
    initials(&mut ep, Instant::now(), 3, 1);
    assert_eq!((ep.conn_count(), ep.stats().retries), (1, 3), "accepted without a Retry");
}

#[test]
fn retry_switches_on_past_the_handshake_rate_and_off_again() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    // No half-open trigger, at most 4 new handshakes per second.
    let mut ep = endpoint_full(&tls, 1000, 0, 4, 65536);
    let t0 = Instant::now();
    initials(&mut ep, t0, 2, 7);
    // Four handshakes in this second are within the rate; from the fifth on, a Retry and no state.
    let st = ep.stats();
    assert_eq!((ep.conn_count(), st.accepted, st.retries), (4, 4, 3));
    assert_eq!((st.retry_switched_on, st.retry_switched_on_rate), (1, 1));
    // 1.5 s later the window that ended held 7 Initials in 1.5 s (4/s: not below half the threshold),
    // so Retry stays on.
    initials(&mut ep, t0 + Duration::from_millis(1500), 3, 1);
    assert_eq!((ep.conn_count(), ep.stats().retries), (4, 4), "still on");
    // 6 s after that, the last window's rate is 1 in 6 s: below half the threshold, Retry is off again.
    initials(&mut ep, t0 + Duration::from_millis(7500), 4, 1);
    assert_eq!((ep.conn_count(), ep.stats().retries), (5, 4), "accepted without a Retry");
    assert_eq!(ep.stats().retry_switched_on, 1);
}

#[test]
fn past_the_connection_cap_the_client_is_told_why() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut ep = endpoint_full(&tls, 1000, 0, 0, 0);
    let local: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    let peer: SocketAddr = "10.0.4.1:9000".parse().unwrap();
    let mut client = quiche_client(peer, local);
    let mut sock = datapath::backend::mem::MemSocket::new(local, 1500);
    let mut buf = vec![0; 1500];
    for _ in 0..10 {
        while let Ok((n, _)) = client.send(&mut buf) {
            ep.on_datagram(Instant::now(), Addrs { local, peer }, &mut buf[..n]);
        }
        ep.flush(Instant::now(), &mut sock);
        for (a, mut d) in sock.take_tx() {
            assert_eq!(a.peer, peer);
            let _ = client.recv(&mut d, quiche::RecvInfo { from: local, to: peer });
        }
        if client.peer_error().is_some() {
            break;
        }
    }
    let e = client.peer_error().expect("the client got a CONNECTION_CLOSE");
    assert!(e.is_app && e.error_code == server::endpoint::APP_ERR_FULL, "{e:?}");
    assert!(String::from_utf8_lossy(&e.reason).contains("server full"), "{e:?}");
    assert_eq!(ep.stats().accepted, 0);
}

/// The QUIC packets in one datagram: (long header, bytes) for each; a short-header packet is always last
/// and runs to the end (RFC 9000 §12.2).
fn packets(d: &[u8]) -> Vec<(bool, Vec<u8>)> {
    fn varint(b: &[u8], at: &mut usize) -> usize {
        let len = 1 << (b[*at] >> 6);
        let mut v = usize::from(b[*at] & 0x3f);
        for i in 1..len {
            v = v << 8 | usize::from(b[*at + i]);
        }
        *at += len;
        v
    }
    let mut out = Vec::new();
    let mut rest = d;
    while !rest.is_empty() {
        if rest[0] & 0x80 == 0 {
            out.push((false, rest.to_vec()));
            break;
        }
        let mut at = 5; // first byte, version
        at += 1 + usize::from(rest[at]); // DCID
        at += 1 + usize::from(rest[at]); // SCID
        if (rest[0] >> 4) & 3 == 0 {
            let token = varint(rest, &mut at); // Initial: token
            at += token;
        }
        let len = varint(rest, &mut at);
        out.push((true, rest[..at + len].to_vec()));
        rest = &rest[at + len..];
    }
    out
}

/// A client whose handshake the server's flight completed, and that then wrote a SYNC: its next flight
/// (Initial ACK, Handshake with the Finished, 1-RTT with the SYNC) split into long- and short-header
/// packets, none of them given to `ep` yet.
struct Overtaken {
    client: quiche::Connection,
    addrs: Addrs,
    sock: datapath::backend::mem::MemSocket,
    long: Vec<Vec<u8>>,
    short: Vec<Vec<u8>>,
}

fn overtaken(ep: &mut Endpoint, peer: SocketAddr) -> Overtaken {
    use canvas::proto::{self, ClientMsg};
    let local: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    let addrs = Addrs { local, peer };
    let mut client = quiche_client(peer, local);
    let mut sock = datapath::backend::mem::MemSocket::new(local, 1500);
    let mut buf = vec![0; 1500];
    // Until the server's flight (a few round trips: the amplification limit) completes the client's handshake.
    for _ in 0..10 {
        while let Ok((n, _)) = client.send(&mut buf) {
            ep.on_datagram(Instant::now(), addrs, &mut buf[..n]);
        }
        ep.flush(Instant::now(), &mut sock);
        for (_, mut d) in sock.take_tx() {
            client.recv(&mut d, quiche::RecvInfo { from: local, to: peer }).unwrap();
        }
        if client.is_established() {
            break;
        }
    }
    assert!(client.is_established(), "the server's flight completed the client's handshake");
    let mut sync = Vec::new();
    proto::encode_client(&ClientMsg::Sync { have_tick: proto::NO_TICK, flags: 0 }, &mut sync);
    client.stream_send(0, &sync, false).unwrap();
    let (mut long, mut short) = (Vec::new(), Vec::new());
    while let Ok((n, _)) = client.send(&mut buf) {
        for (is_long, p) in packets(&buf[..n]) {
            if is_long {
                long.push(p)
            } else {
                short.push(p)
            }
        }
    }
    assert!(!long.is_empty() && !short.is_empty(), "long {} short {}", long.len(), short.len());
    Overtaken { client, addrs, sock, long, short }
}

/// The client's Finished is lost (or overtaken) and its first 1-RTT packet, with the SYNC, reaches the
/// server before the handshake completes there: quiche has no key to open it yet. The endpoint holds it
/// and gives it to quiche when the Finished arrives, so the SYNC is answered at once, without waiting for
/// the client to resend it (a client arms no timer for 1-RTT data until HANDSHAKE_DONE: at 1-3 % loss this
/// made joins take 5 to more than 10 s).
#[test]
fn a_sync_that_overtakes_the_clients_finished_is_answered_when_the_handshake_completes() {
    use canvas::proto::{self, FrameReader, ServerMsg};
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut ep = endpoint(&tls);
    let Overtaken { mut client, addrs, mut sock, mut long, mut short } =
        overtaken(&mut ep, "10.0.5.1:9000".parse().unwrap());
    for p in &mut short {
        ep.on_datagram(Instant::now(), addrs, p);
    }
    let held = short.len() as u64;
    assert_eq!((ep.stats().early_held, ep.stats().early_replayed), (held, 0));
    ep.flush(Instant::now(), &mut sock);
    assert_eq!(sock.tx_pending(), 0, "nothing to say before the handshake completes");
    for p in &mut long {
        ep.on_datagram(Instant::now(), addrs, p);
    }
    assert_eq!(ep.stats().early_replayed, held, "given to quiche when the Finished arrived");
    assert_eq!(ep.early_bytes(), 0);
    ep.flush(Instant::now(), &mut sock);
    for (_, mut d) in sock.take_tx() {
        client.recv(&mut d, quiche::RecvInfo { from: addrs.local, to: addrs.peer }).unwrap();
    }
    let mut got = vec![0; 1 << 16];
    let (n, _) =
        client.stream_recv(0, &mut got).expect("the server answered the SYNC in its first 1-RTT flight");
    let mut fr = FrameReader::new();
    fr.push(&got[..n]);
    let first = fr.pop().unwrap().expect("a whole frame");
    assert!(matches!(proto::decode_server(first).unwrap(), ServerMsg::Welcome(_)), "WELCOME first");
}

/// What is held for a handshake in progress is bounded (4 packets per connection) and goes with a
/// connection that never completes its handshake.
#[test]
fn held_1rtt_packets_are_bounded_and_go_with_their_connection() {
    let tls = quic::ensure_cert(None, None, None, None).unwrap();
    let mut ep = endpoint(&tls);
    let o = overtaken(&mut ep, "10.0.5.2:9000".parse().unwrap());
    for _ in 0..6 {
        ep.on_datagram(Instant::now(), o.addrs, &mut o.short[0].clone());
    }
    assert_eq!((ep.stats().early_held, ep.stats().early_dropped), (4, 2));
    assert_eq!(ep.early_bytes(), 4 * o.short[0].len());
    // The Finished never comes: the handshake is abandoned at its deadline, and what it held with it.
    ep.on_timers(Instant::now() + server::endpoint::DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!((ep.conn_count(), ep.stats().handshake_timeouts), (0, 1));
    assert_eq!((ep.early_bytes(), ep.stats().early_replayed), (0, 0));
}
