//! The AF_XDP backend's per-packet work outside quiche: the Internet checksum, building Ethernet + 802.1Q +
//! IPv4/IPv6 + UDP headers (both checksums included) in front of a payload, and parsing a received frame.
//!
//! `checksum/*` compares `frame::checksum` (64-bit words with end-around carry) with the textbook RFC 1071
//! loop (16-bit words into a 32-bit sum) on the same bytes, so the gain is a ratio within one run.
//! Sizes: 64 B (an ACK), 460 B (a typical DIFF_PART packet), 1350 B (a full packet).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput};
use datapath::frame::{self, L2};

fn rfc1071(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
        s = s.wrapping_add(u32::from(w));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 + 7) as u8).collect()
}

fn checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for n in [64usize, 460, 1350] {
        let d = payload(n);
        assert_eq!(frame::checksum(&d), rfc1071(&d));
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("words64/{n}"), |b| b.iter(|| frame::checksum(black_box(&d))));
        g.bench_function(format!("rfc1071_u16/{n}"), |b| b.iter(|| rfc1071(black_box(&d))));
    }
    g.finish();
}

fn build_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    let l2 = L2 { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2], vlan: Some(4000) };
    let cases: [(&str, SocketAddr, SocketAddr); 2] = [
        ("v4", "10.0.1.10:4433".parse().unwrap(), "10.0.1.21:50000".parse().unwrap()),
        ("v6", "[fd00::10]:4433".parse().unwrap(), "[fd00::21]:50000".parse().unwrap()),
    ];
    for (fam, src, dst) in cases {
        for n in [64usize, 1350] {
            let hlen = frame::header_len(true, src.is_ipv6());
            let mut f = vec![0u8; hlen + n];
            f[hlen..].copy_from_slice(&payload(n));
            g.bench_function(format!("build_{fam}_vlan/{n}"), |b| {
                b.iter(|| frame::build(black_box(&mut f), &l2, src, dst, n, 7))
            });
            let len = frame::build(&mut f, &l2, src, dst, n, 7);
            g.bench_function(format!("parse_{fam}_vlan/{n}"), |b| {
                b.iter(|| frame::parse(black_box(&f[..len])).expect("valid"))
            });
        }
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    checksums(&mut c);
    build_parse(&mut c);
    c.final_summary();
}
