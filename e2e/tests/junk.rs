//! Junk at a serving `server --mode uring -w 2` on loopback: 60,000 datagrams an attacker would try (tiny,
//! Initial-sized random bytes, QUIC v1 long headers with random bodies, short headers, unknown versions,
//! up to 64 KB) from 64 source ports while 100 canvas/1 clients write. The server keeps serving (every
//! replica matches), no junk datagram leaves a connection behind (accepted == the real connections) and the
//! junk is counted. Bounded: the junk is a fixed count, sent in under a few seconds.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::load::check_summary;
use e2e::{bin, client_args, free_port, json, scratch, wait_bounded, Server};
use rand::{Rng, SeedableRng};

const CLIENTS: u64 = 100;
const JUNK: u32 = 60_000;

/// A datagram with a QUIC long header of `version` and packet type `ty`, random everything else.
fn long_header(rng: &mut impl Rng, version: u32, ty: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0xc0 | (ty << 4) | rng.random_range(0..4u8)];
    p.extend_from_slice(&version.to_be_bytes());
    for _ in 0..2 {
        let n = rng.random_range(0..=20usize);
        p.push(n as u8);
        p.extend((0..n).map(|_| rng.random::<u8>()));
    }
    if ty == 0 {
        p.push(0);
    }
    let rest = len.saturating_sub(p.len() + 2).min(16383);
    p.extend_from_slice(&(0x4000u16 | rest as u16).to_be_bytes());
    while p.len() < len {
        p.push(rng.random());
    }
    p
}

fn random(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).collect()
}

fn junk(rng: &mut impl Rng, i: u32) -> Vec<u8> {
    let (tiny, short, big) =
        (rng.random_range(1..40), rng.random_range(20..1400), rng.random_range(1500..65_000));
    match i % 6 {
        0 => random(rng, tiny),
        1 => random(rng, 1200),
        2 => {
            let len = rng.random_range(1200..=1500);
            long_header(rng, 1, 0, len)
        }
        3 => {
            let mut p = random(rng, short);
            p[0] = 0x40 | (p[0] & 0x3f);
            p
        }
        4 => {
            let v = rng.random();
            long_header(rng, v, 0, 1200)
        }
        _ => random(rng, big),
    }
}

#[test]
fn junk_leaves_no_connection_state_and_the_server_keeps_serving() {
    let dir = scratch("junk");
    let listen = format!("127.0.0.1:{}", free_port());
    let stats = dir.join("server.json");
    let server = Server::start(
        &["-w", "2", "--mode", "uring", "--listen", &listen, "--stats-json", stats.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let summary = dir.join("summary.json");
    let args = client_args(&format!("https://{listen}"), "real", "canvas1", CLIENTS, 10, &summary);
    let mut client = Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client");
    std::thread::sleep(Duration::from_secs(3));
    let socks: Vec<UdpSocket> = (0..64).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut sent = 0u64;
    for i in 0..JUNK {
        let d = junk(&mut rng, i);
        if socks[i as usize % socks.len()].send_to(&d, &listen).is_ok() {
            sent += 1;
        }
        if i % 2000 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("{sent} junk datagrams sent");
    assert_eq!(wait_bounded(&mut client, Duration::from_secs(120), "client"), 0, "client exit code");
    check_summary(&json(&summary), "junk", "canvas1", CLIENTS);
    assert_eq!(server.stop(Duration::from_secs(20)), 0);
    let st = json(&stats);
    let sum = |k: &str| -> u64 {
        st["per_worker"].as_array().unwrap().iter().map(|w| w["endpoint"][k].as_u64().unwrap()).sum()
    };
    eprintln!(
        "accepted {} dropped {} junk_initials {} version_negotiations {} recv_errors {}",
        sum("accepted"),
        sum("dropped_packets"),
        sum("junk_initials"),
        sum("version_negotiations"),
        sum("recv_errors")
    );
    // Every real connection and the verification connection; no junk one.
    assert_eq!(sum("accepted"), CLIENTS + 1, "junk left connection state behind");
    assert!(sum("junk_initials") > 0 && sum("dropped_packets") > 0, "the junk is counted");
}
