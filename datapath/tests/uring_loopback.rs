//! The io_uring backend over real UDP sockets on 127.0.0.1: reuseport receive, GSO transmit, buffer
//! exhaustion and re-arm, bind errors. Every loop is bounded by a deadline.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use datapath::backend::uring::{UringConfig, UringSocket};
use datapath::seam::{Addrs, Datapath};

const DEADLINE: Duration = Duration::from_secs(10);

/// A config on 127.0.0.1 with an ephemeral port and modest sizes, so tests stay light.
fn local_cfg() -> UringConfig {
    UringConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sq_depth: 1024,
        buf_count: 1024,
        tx_batches: 16,
        ..UringConfig::default()
    }
}

/// A std UDP socket on 127.0.0.1 with a large receive buffer and a read timeout.
fn peer_socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_recv_buffer_size(8 << 20).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s
}

/// Payload of datagram `i`: its index, then a pattern derived from it; sizes vary from 4 to 1403.
fn payload(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 37) % 1400;
    let mut p = i.to_le_bytes().to_vec();
    p.extend((4..len).map(|j| (j as u32).wrapping_mul(31).wrapping_add(i) as u8));
    p
}

/// Datagrams received, by index: every copy's (peer, payload, index of the receiving socket).
type Received = HashMap<u32, Vec<(SocketAddr, Vec<u8>, usize)>>;

/// Receive everything the sockets have into `got` (index → (peer, payload, receiving socket)) until
/// `want` have arrived or `idle` passes with nothing new.
fn drain(socks: &mut [UringSocket], got: &mut Received, want: usize, idle: Duration) {
    let start = Instant::now();
    let mut last_progress = Instant::now();
    while got.values().map(Vec::len).sum::<usize>() < want && start.elapsed() < DEADLINE {
        let mut n = 0;
        for (k, s) in socks.iter_mut().enumerate() {
            n += s
                .recv(64, |addrs: Addrs, p: &mut [u8]| {
                    let i = u32::from_le_bytes(p[..4].try_into().unwrap());
                    got.entry(i).or_default().push((addrs.peer, p.to_vec(), k));
                })
                .unwrap();
            s.wait(Duration::ZERO).unwrap();
        }
        if n > 0 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > idle {
            break;
        } else {
            socks[0].wait(Duration::from_millis(2)).unwrap();
        }
    }
}

#[test]
fn reuseport_pair_receives_every_datagram_once() {
    let a = UringSocket::bind(&local_cfg()).unwrap();
    let addr = a.local_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    let b = UringSocket::bind(&UringConfig { listen: addr, ..local_cfg() }).unwrap();
    assert_eq!(b.local_addr(), addr);
    let (rcv, snd) = a.effective_bufs();
    assert!(rcv > 0 && snd > 0, "effective buffers {rcv}/{snd}");
    let mut socks = vec![a, b];
    for s in &mut socks {
        assert_eq!(s.recv(1, |_, _| {}).unwrap(), 0); // arms the receive
    }

    let clients: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut sent_from = HashMap::new();
    let mut got = HashMap::new();
    for i in 0..1000u32 {
        let c = &clients[i as usize % clients.len()];
        c.send_to(&payload(i), addr).unwrap();
        sent_from.insert(i, c.local_addr().unwrap());
        if i % 100 == 99 {
            drain(&mut socks, &mut got, i as usize + 1, Duration::from_millis(500));
        }
    }
    drain(&mut socks, &mut got, 1000, Duration::from_millis(500));

    assert_eq!(got.len(), 1000, "distinct datagrams received");
    let mut per_socket = [0usize; 2];
    for (i, copies) in &got {
        assert_eq!(copies.len(), 1, "datagram {i} received {} times", copies.len());
        let (peer, data, k) = &copies[0];
        assert_eq!(*peer, sent_from[i], "peer of datagram {i}");
        assert_eq!(*data, payload(*i), "payload of datagram {i}");
        per_socket[*k] += 1;
    }
    println!("datagrams per socket: {per_socket:?}");
    let total: u64 = socks.iter().map(|s| s.stats().rx_datagrams).sum();
    assert_eq!(total, 1000);
    let bytes: u64 = socks.iter().map(|s| s.stats().rx_bytes).sum();
    assert_eq!(bytes, (0..1000).map(|i| payload(i).len() as u64).sum::<u64>());
    assert!(socks.iter().all(|s| s.stats().rx_dropped == 0));
}

/// Commit `sizes` datagrams to `peer`, each filled with a pattern of its index; returns the payloads.
fn commit_all(s: &mut UringSocket, peer: SocketAddr, sizes: &[usize]) -> Vec<Vec<u8>> {
    let local = s.local_addr();
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
        let slot = s.tx_slot().expect("free transmit slot");
        assert!(slot.len() >= len);
        slot[..len].copy_from_slice(&data);
        s.tx_commit(len, Addrs { local, peer });
        sent.push(data);
    }
    sent
}

/// Flush, then reap until `datagrams` sends completed.
fn flush_until_sent(s: &mut UringSocket, datagrams: u64) {
    s.flush().unwrap();
    let start = Instant::now();
    while s.stats().tx_datagrams + s.stats().tx_dropped < datagrams && start.elapsed() < DEADLINE {
        s.wait(Duration::from_millis(5)).unwrap();
        s.recv(16, |_, _| {}).unwrap();
        s.flush().unwrap();
    }
}

/// Read up to `n` datagrams from `peer`.
fn read_n(peer: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while out.len() < n {
        match peer.recv_from(&mut buf) {
            Ok((len, _)) => out.push(buf[..len].to_vec()),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn gso_batches_one_peer() {
    let mut s = UringSocket::bind(&local_cfg()).unwrap();
    let peer = peer_socket();
    let mut sizes = vec![1200; 50];
    sizes.push(300);
    let sent = commit_all(&mut s, peer.local_addr().unwrap(), &sizes);
    flush_until_sent(&mut s, 51);
    let got = read_n(&peer, 51);
    assert_eq!(got.len(), 51);
    for (i, (g, w)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(g.len(), w.len(), "size of datagram {i}");
        assert_eq!(g, w, "content of datagram {i}");
    }
    let st = s.stats();
    println!("{st:?} gso={}", s.gso());
    assert_eq!(st.tx_datagrams, 51);
    assert_eq!(st.tx_bytes, 50 * 1200 + 300);
    assert_eq!(st.tx_dropped, 0);
    assert!(s.gso(), "GSO was turned off on loopback");
    assert!(st.tx_batches < st.tx_datagrams, "{st:?}");
    assert_eq!(st.tx_batches, 1, "50 x 1200 + 300 fits one GSO send");
}

#[test]
fn gso_respects_64k_and_peer_changes() {
    let mut s = UringSocket::bind(&local_cfg()).unwrap();
    let (p1, p2) = (peer_socket(), peer_socket());
    let (a1, a2) = (p1.local_addr().unwrap(), p2.local_addr().unwrap());
    // 60 full-size datagrams to p1: at most 65507 / 1350 = 48 per GSO send.
    let sent1 = commit_all(&mut s, a1, &[1350; 60]);
    // Alternating peers: every datagram its own send, nothing copied or lost.
    let mut sent2 = Vec::new();
    let mut sent1b = Vec::new();
    for i in 0..10 {
        sent2.extend(commit_all(&mut s, a2, &[100 + i]));
        sent1b.extend(commit_all(&mut s, a1, &[200 + i]));
    }
    flush_until_sent(&mut s, 80);
    let got1 = read_n(&p1, 70);
    let got2 = read_n(&p2, 10);
    let want1: Vec<Vec<u8>> = sent1.into_iter().chain(sent1b).collect();
    assert_eq!(got1, want1);
    assert_eq!(got2, sent2);
    let st = s.stats();
    println!("{st:?}");
    assert_eq!(st.tx_datagrams, 80);
    assert_eq!(st.tx_batches, 2 + 20, "two GSO sends for the 60, one send per alternating datagram");
}

#[test]
fn tx_pool_exhaustion_returns_none_then_recovers() {
    let cfg = UringConfig { tx_batches: 2, max_segments: 4, ..local_cfg() };
    let mut s = UringSocket::bind(&cfg).unwrap();
    let peer = peer_socket();
    let addrs = Addrs { local: s.local_addr(), peer: peer.local_addr().unwrap() };
    for _ in 0..8 {
        let slot = s.tx_slot().expect("slot");
        slot[..10].fill(1);
        s.tx_commit(10, addrs);
    }
    assert!(s.tx_slot().is_none(), "both batch buffers are full and unflushed");
    flush_until_sent(&mut s, 8);
    assert!(s.tx_slot().is_some(), "buffers come back after completion");
    assert_eq!(read_n(&peer, 8).len(), 8);
}

#[test]
fn buffer_exhaustion_rearms_and_keeps_receiving() {
    let cfg = UringConfig { buf_count: 16, ..local_cfg() };
    let mut socks = vec![UringSocket::bind(&cfg).unwrap()];
    let addr = socks[0].local_addr();
    assert_eq!(socks[0].recv(1, |_, _| {}).unwrap(), 0); // arms the receive
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        client.send_to(&payload(i % 40), addr).unwrap();
    }
    let mut got = HashMap::new();
    drain(&mut socks, &mut got, usize::MAX, Duration::from_millis(300));
    let first: usize = got.values().map(Vec::len).sum();
    let rearms = socks[0].rearms();
    println!("first phase: {first} of 200 received, {rearms} re-arms");
    assert!(first >= 16, "at least one ring of buffers delivered");
    assert!(rearms >= 1, "the receive ran out of buffers and was re-armed");

    // After exhaustion the socket keeps delivering.
    let mut got = HashMap::new();
    for i in 1000..1050u32 {
        client.send_to(&payload(i), addr).unwrap();
    }
    drain(&mut socks, &mut got, usize::MAX, Duration::from_millis(300));
    let fresh = (1000..1050u32).filter(|i| got.contains_key(i)).count();
    println!("second phase: {fresh} of 50 received, {} re-arms", socks[0].rearms());
    assert!(fresh > 0, "nothing received after buffer exhaustion");
    assert_eq!(socks[0].stats().rx_dropped, 0);
}

#[test]
fn recv_respects_max_and_keeps_the_rest() {
    let mut s = UringSocket::bind(&local_cfg()).unwrap();
    let addr = s.local_addr();
    assert_eq!(s.recv(1, |_, _| {}).unwrap(), 0);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..10u32 {
        client.send_to(&payload(i), addr).unwrap();
    }
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < 10 && start.elapsed() < DEADLINE {
        let n =
            s.recv(3, |_, p: &mut [u8]| seen.push(u32::from_le_bytes(p[..4].try_into().unwrap()))).unwrap();
        assert!(n <= 3);
        if n == 0 {
            s.wait(Duration::from_millis(5)).unwrap();
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>(), "in order, each once");
}

#[test]
fn bind_to_port_in_use_names_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = UringSocket::bind(&UringConfig { listen: addr, ..local_cfg() }).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(msg.contains(&addr.to_string()), "message {msg:?} lacks {addr}");
}

#[test]
fn invalid_config_is_rejected() {
    let err = UringSocket::bind(&UringConfig { buf_count: 1000, ..local_cfg() }).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("power of two"));
}

#[test]
fn refused_gso_send_is_resent_datagram_by_datagram() {
    // 256 segments is more than the kernel's UDP_MAX_SEGMENTS (64, or 128 since 6.9): EINVAL.
    let cfg = UringConfig { max_segments: 256, max_payload: 64, ..local_cfg() };
    let mut s = UringSocket::bind(&cfg).unwrap();
    let peer = peer_socket();
    let sent = commit_all(&mut s, peer.local_addr().unwrap(), &[50; 256]);
    flush_until_sent(&mut s, 256);
    let st = s.stats();
    println!("{st:?} gso={}", s.gso());
    assert!(!s.gso(), "GSO turned off after the refusal");
    assert_eq!(st.tx_dropped, 0);
    assert_eq!(st.tx_datagrams, 256);
    assert_eq!(st.tx_batches, 256);
    assert_eq!(read_n(&peer, 256), sent);
}

#[test]
fn ipv6_echo() {
    let mut s =
        UringSocket::bind(&UringConfig { listen: "[::1]:0".parse().unwrap(), ..local_cfg() }).unwrap();
    let addr = s.local_addr();
    assert!(addr.is_ipv6());
    assert_eq!(s.recv(1, |_, _| {}).unwrap(), 0);
    let client = UdpSocket::bind("[::1]:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    client.send_to(b"ping over v6", addr).unwrap();
    let mut from = None;
    let start = Instant::now();
    while from.is_none() && start.elapsed() < DEADLINE {
        s.recv(8, |a: Addrs, p: &mut [u8]| {
            assert_eq!(p, b"ping over v6");
            assert_eq!(a.local, addr);
            from = Some(a);
        })
        .unwrap();
        if from.is_none() {
            s.wait(Duration::from_millis(5)).unwrap();
        }
    }
    let from = from.expect("datagram received");
    assert_eq!(from.peer, client.local_addr().unwrap());
    let slot = s.tx_slot().unwrap();
    slot[..4].copy_from_slice(b"pong");
    s.tx_commit(4, from);
    flush_until_sent(&mut s, 1);
    let mut buf = [0u8; 16];
    let (n, src) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(src, addr);
}

#[test]
fn default_config_binds_with_full_depth() {
    let cfg = UringConfig { listen: "127.0.0.1:0".parse().unwrap(), ..UringConfig::default() };
    let s = UringSocket::bind(&cfg).unwrap();
    let (rcv, snd) = s.effective_bufs();
    println!("sq_depth {} effective bufs {rcv}/{snd} {s:?}", s.sq_depth());
    assert!(s.sq_depth() >= 4096);
    assert!(rcv > 0 && snd > 0);
    assert_eq!(s.max_payload(), 1350);
}

#[test]
fn truncated_datagrams_are_dropped_and_counted() {
    let cfg = UringConfig { buf_size: 128, ..local_cfg() }; // 80 bytes of payload room
    let mut s = UringSocket::bind(&cfg).unwrap();
    let addr = s.local_addr();
    assert_eq!(s.recv(1, |_, _| {}).unwrap(), 0);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(&[7u8; 200], addr).unwrap();
    client.send_to(&[9u8; 80], addr).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.is_empty() && start.elapsed() < DEADLINE {
        s.recv(8, |_, p: &mut [u8]| got.push(p.to_vec())).unwrap();
        if got.is_empty() {
            s.wait(Duration::from_millis(5)).unwrap();
        }
    }
    assert_eq!(got, vec![vec![9u8; 80]]);
    assert_eq!(s.stats().rx_dropped, 1);
    assert_eq!(s.stats().rx_datagrams, 1);
}
