//! Root tests of the AF_XDP backend on a veth pair between two namespaces this test creates: datagrams
//! from a kernel UDP socket reach the backend through the XDP program, the backend echoes them with
//! headers and checksums it built (the sender's kernel verifies both, so an echo that arrives is a
//! correct frame), and every UMEM frame is accounted for at every step and comes home at the end.
//! Also: zero-copy selection on veth, transmit-pool exhaustion, unknown peers, hugetlb UMEM and its
//! fallback.

#[path = "../../xdp-prog/tests/support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use datapath::backend::xdp::{UmemPages, XdpConfig, XdpSocket, ZeroCopy};
use datapath::seam::{Addrs, Datapath};
use support::*;
use xdp_prog::{AttachMode, Config, Counter, XdpProgram};

const LIMIT: Duration = Duration::from_secs(60);

fn listen() -> SocketAddr {
    SocketAddr::from((R_V4, PORT))
}

fn bind_in(ns: &str, cfg: XdpConfig) -> Result<XdpSocket, String> {
    in_netns(ns, move || XdpSocket::bind(&cfg).map_err(|e| e.to_string()))
}

fn assert_consistent(s: &XdpSocket, when: &str) {
    let a = s.frame_audit();
    assert!(a.consistent, "{when}: frame accounting inconsistent: {a:?}");
    assert_eq!(a.free + a.fill + a.slot + a.pending + a.tx, a.total, "{when}: {a:?}");
    assert_eq!(s.xdp_stats().frame_errors, 0, "{when}: {:?}", s.xdp_stats());
}

/// Receive for up to `limit`, echoing every datagram to its sender; returns how many were echoed.
fn echo(s: &mut XdpSocket, want: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut got: Vec<(Addrs, Vec<u8>)> = Vec::new();
    let mut echoed = 0;
    while echoed < want && Instant::now() < deadline {
        s.recv(64, |a, p| got.push((a, p.to_vec()))).expect("recv");
        for (a, p) in got.drain(..) {
            let slot = s.tx_slot().expect("a free frame");
            slot[..p.len()].copy_from_slice(&p);
            s.tx_commit(p.len(), Addrs { local: a.local, peer: a.peer });
            echoed += 1;
        }
        s.flush().expect("flush");
        assert_consistent(s, "while echoing");
        if echoed < want {
            s.wait(Duration::from_millis(5)).expect("wait");
        }
    }
    echoed
}

#[test]
fn echo_through_xdp_and_no_frame_leaks() {
    if !require_root("echo_through_xdp_and_no_frame_leaks") {
        return;
    }
    let t = Topology::new("be");
    let (r, s) = (t.r.clone(), t.s.clone());
    bounded(LIMIT, move || {
        let prog = in_netns(&r, || {
            XdpProgram::attach(
                R_IF,
                Config { port: PORT, vlan: None, mode: AttachMode::Native, allow: Vec::new() },
            )
        })
        .expect("attach");
        let mut cfg = XdpConfig::new(R_IF, 0, listen());
        cfg.pages = UmemPages::Small;
        cfg.frames = 1024;
        cfg.ring = 256;
        let mut xs = bind_in(&r, cfg.clone()).expect("bind (auto zero-copy)");
        // veth has no zero-copy: auto fell back to copy mode and said so.
        assert!(!xs.zero_copy());
        assert!(
            xs.notes().iter().any(|n| n.contains("zero-copy refused") && n.contains("copy mode")),
            "{:?}",
            xs.notes()
        );
        eprintln!("notes: {:?}", xs.notes());
        let a = xs.frame_audit();
        assert_eq!((a.total, a.fill, a.free), (1024, 256, 768), "{a:?}");
        prog.insert_socket(0, xs.fd()).expect("insert");

        let tx = udp_socket(&s, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        tx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // 40 bursts of 50 datagrams of varied sizes (odd and even lengths exercise the checksum tail),
        // each burst echoed before the next: 2000 datagrams, more than the 1024 frames of the UMEM, so every
        // frame is recycled through both the receive and the transmit side several times.
        let mut buf = [0u8; 2048];
        let mut sent = 0usize;
        let mut back = 0usize;
        for burst in 0..40 {
            for k in 0..50 {
                let len = 1 + (burst * 50 + k) * 7 % 1300;
                let msg: Vec<u8> = (0..len).map(|i| (i + k) as u8).collect();
                tx.send_to(&msg, listen()).expect("send");
                sent += 1;
            }
            assert_eq!(
                echo(&mut xs, 50, Duration::from_secs(5)),
                50,
                "burst {burst}: all 50 reached the backend"
            );
            let mut this = 0;
            while this < 50 {
                match tx.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        assert_eq!(from, listen(), "echo comes from the served address");
                        let k = buf[0] as usize;
                        assert!(
                            buf[..n].iter().enumerate().all(|(i, &b)| b == (i + k) as u8),
                            "payload intact"
                        );
                        this += 1;
                    }
                    Err(e) => panic!("burst {burst}: {this} of 50 echoes arrived ({e})"),
                }
            }
            back += this;
        }
        assert_eq!((sent, back), (2000, 2000));
        let st = xs.stats();
        assert_eq!((st.rx_datagrams, st.tx_datagrams, st.tx_dropped), (2000, 2000, 0), "{st:?}");
        let c = prog.counters().expect("counters");
        assert!(c.get(Counter::Redirected) >= 2000, "{c}");

        // A peer never heard from: no MAC to send to, the datagram is dropped and its frame returned.
        let slot = xs.tx_slot().expect("slot");
        slot[..4].copy_from_slice(b"lost");
        let stranger = SocketAddr::from((Ipv4Addr::new(10, 0, 1, 99), 9));
        xs.tx_commit(4, Addrs { local: listen(), peer: stranger });
        assert_eq!(xs.xdp_stats().tx_no_neighbour, 1);
        assert_consistent(&xs, "after an unknown peer");

        // Exhaust the transmit pool without flushing: tx_slot says None, never hands out a frame twice,
        // and after a flush every frame comes home.
        let sender = tx.local_addr().unwrap();
        let sender = SocketAddr::from((S_V4, sender.port()));
        let mut committed = 0;
        while let Some(slot) = xs.tx_slot() {
            slot[..8].copy_from_slice(&(committed as u64).to_be_bytes());
            xs.tx_commit(8, Addrs { local: listen(), peer: sender });
            committed += 1;
            assert!(committed <= 1024, "tx_slot handed out more frames than the UMEM has");
        }
        let a = xs.frame_audit();
        assert!(a.consistent, "{a:?}");
        assert_eq!(a.fill, 256, "the receive side keeps its frames: {a:?}");
        assert_eq!(a.free, 0, "{a:?}");
        eprintln!("pool exhausted after {committed} commits: {a:?}");
        assert!(
            xs.quiesce(Duration::from_secs(5)),
            "every transmitted frame completes: {:?}",
            xs.frame_audit()
        );
        let mut drained = 0;
        while tx.recv_from(&mut buf).is_ok() {
            drained += 1;
        }
        eprintln!("{drained} of {committed} pool-exhaustion datagrams reached the sender");
        assert!(drained > 0);

        let a = xs.frame_audit();
        assert!(a.consistent, "{a:?}");
        assert_eq!((a.slot, a.pending, a.tx, a.fill, a.free), (0, 0, 0, 256, 768), "all frames home: {a:?}");
        assert_eq!(xs.xdp_stats().frame_errors, 0);
        eprintln!("final: {:?} {:?}", xs.stats(), xs.xdp_stats());

        // zero-copy on: a clear error on veth.
        prog.remove_socket(0).expect("remove");
        drop(xs);
        let mut on = cfg.clone();
        on.zero_copy = ZeroCopy::On;
        let err = bind_in(&r, on).expect_err("veth has no zero-copy");
        eprintln!("--zero-copy on: {err}");
        assert!(
            err.contains("--zero-copy on") && err.contains("veth") && err.contains("--zero-copy auto"),
            "{err}"
        );
        let mut off = cfg.clone();
        off.zero_copy = ZeroCopy::Off;
        let xs = bind_in(&r, off).expect("copy mode");
        assert!(!xs.zero_copy());
        // A queue the device does not have.
        let mut q = cfg.clone();
        q.queue = 3;
        let err = bind_in(&r, q).expect_err("no queue 3");
        assert!(err.contains("no queue 3"), "{err}");
        drop(xs);
        drop(prog);
    });
}

fn nr_hugepages() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap().trim().parse().unwrap()
}

fn set_hugepages(n: u64) {
    std::fs::write("/proc/sys/vm/nr_hugepages", n.to_string()).expect("write nr_hugepages");
}

#[test]
fn umem_on_hugetlb_pages_and_fallback() {
    if !require_root("umem_on_hugetlb_pages_and_fallback") {
        return;
    }
    let t = Topology::new("hp");
    let r = t.r.clone();
    bounded(LIMIT, move || {
        let before = nr_hugepages();
        let mut cfg = XdpConfig::new(R_IF, 0, listen());
        cfg.frames = 1024; // 2 MiB: one huge page
        cfg.ring = 256;
        cfg.zero_copy = ZeroCopy::Off;
        // Without spare reserved pages, `on` fails saying how to reserve them, `auto` falls back.
        let free: u64 = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if free == 0 {
            let mut on = cfg.clone();
            on.pages = UmemPages::HugeTlb;
            let err = bind_in(&r, on).expect_err("no hugetlb pages reserved");
            assert!(err.contains("nr_hugepages"), "{err}");
            let xs = bind_in(&r, cfg.clone()).expect("auto falls back");
            assert!(!xs.hugetlb());
            assert!(xs.notes().iter().any(|n| n.contains("4 KiB pages")), "{:?}", xs.notes());
        }
        set_hugepages(before + 1);
        let res = std::panic::catch_unwind(|| {
            let mut on = cfg.clone();
            on.pages = UmemPages::HugeTlb;
            let xs = bind_in(&r, on).expect("UMEM on the reserved page");
            assert!(xs.hugetlb(), "{:?}", xs.notes());
            eprintln!("notes: {:?}", xs.notes());
            drop(xs);
        });
        set_hugepages(before);
        assert_eq!(nr_hugepages(), before, "hugepages given back");
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    });
}
