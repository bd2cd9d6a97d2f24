//! Root tests of the XDP program and its loader on a veth pair between two network namespaces.
//!
//! Not root: each test fails when `CI=true`, else prints why and returns. Each test builds its own
//! [`Topology`] (deleted on drop, panics and timeouts included) and bounds its body in time: see
//! [`root_test`].

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use support::*;
use xdp_prog::{query, AttachMode, Config, Counter, Counters, Error, Mode, XdpProgram};

const LIMIT: Duration = Duration::from_secs(30);

/// What a root test's body gets: the receiver (`r`, where the program runs) and sender (`s`)
/// namespaces of its [`Topology`], and a frame crafter addressed from `s` to `r`.
struct Net {
    r: String,
    s: String,
    frames: Frames,
}

/// The frame of every root test: `require_root(test)` (not root: fails when `CI=true`, else
/// returns), a fresh [`Topology`] tagged `tag`, then `body` bounded by [`LIMIT`]. The topology stays
/// on this thread and is deleted when this returns or unwinds, timeouts included.
fn root_test(test: &str, tag: &str, body: impl FnOnce(Net) + Send + 'static) {
    if !require_root(test) {
        return;
    }
    let t = Topology::new(tag);
    let net = Net { r: t.r.clone(), s: t.s.clone(), frames: t.frames() };
    bounded(LIMIT, move || body(net));
}

fn attach(ns: &str, config: Config) -> Result<XdpProgram, Error> {
    in_netns(ns, move || XdpProgram::attach(R_IF, config))
}

fn attached(ns: &str) -> Option<(u32, Mode)> {
    in_netns(ns, || query(R_IF).expect("query"))
}

fn config(vlan: Option<u16>, mode: AttachMode) -> Config {
    Config { port: PORT, vlan, mode, allow: Vec::new() }
}

fn counters(p: &XdpProgram) -> Counters {
    p.counters().expect("read counters")
}

/// Sends `n` datagrams from `tx` to `to`, expects all of them on `rx`.
fn send_and_receive(tx: &UdpSocket, rx: &UdpSocket, to: SocketAddr, n: usize) {
    for i in 0..n {
        tx.send_to(format!("datagram {i}").as_bytes(), to).expect("send");
    }
    assert_eq!(recv_count(rx, n, Duration::from_secs(5)), n, "datagrams to {to} reached the kernel socket");
}

/// (a)/(b): attach in `mode`; datagrams to the port with no AF_XDP socket fall back to the
/// kernel (REDIRECT_FAILED) and arrive, other ports are passed, ARP, ping and IPv6 work; with an
/// AF_XDP socket in the slot they are redirected into it instead.
fn exercise(test: &str, mode: AttachMode, expected: Mode) {
    let tag = if expected == Mode::Native { "na" } else { "ge" };
    root_test(test, tag, move |Net { r, s, .. }| {
        let p = attach(&r, config(None, mode)).expect("attach");
        assert_eq!(p.mode(), expected);
        assert_eq!(attached(&r), Some((p.prog_id(), expected)));
        let details = ip(&["-n", &r, "-d", "link", "show", "dev", R_IF]);
        let word = if expected == Mode::Native { " xdp " } else { " xdpgeneric " };
        assert!(details.contains(word), "{details}");
        assert!(details.contains(&format!("prog/xdp id {} name canvas_xdp", p.prog_id())), "{details}");

        let rx = udp_socket(&r, SocketAddr::from((R_V4, PORT)));
        let rx_other = udp_socket(&r, SocketAddr::from((R_V4, OTHER_PORT)));
        let rx6 = udp_socket(&r, SocketAddr::from((R_V6, PORT)));
        let tx = udp_socket(&s, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let tx6 = udp_socket(&s, SocketAddr::from((S_V6, 0)));

        let before = counters(&p);
        send_and_receive(&tx, &rx, SocketAddr::from((R_V4, PORT)), 10);
        send_and_receive(&tx, &rx_other, SocketAddr::from((R_V4, OTHER_PORT)), 5);
        send_and_receive(&tx6, &rx6, SocketAddr::from((R_V6, PORT)), 4);
        assert!(ping(&s, R_V4), "ping through the program");
        let d = counters(&p).since(&before);
        eprintln!("{expected} mode, no AF_XDP socket: {d}");
        assert_eq!(d.get(Counter::RedirectFailed), 14, "{d}");
        assert_eq!(d.get(Counter::Redirected), 0, "{d}");
        assert_eq!(d.get(Counter::PassedNotUdpPort), 5, "{d}");
        assert!(d.get(Counter::PassedNotUdp) >= 1, "ICMP echo and ICMPv6 ND: {d}");
        assert!(d.get(Counter::PassedNotIp) >= 1, "ARP: {d}");
        for c in [Counter::PassedOtherVlan, Counter::IpFragment, Counter::MalformedEth, Counter::MalformedIp]
        {
            assert_eq!(d.get(c), 0, "{c:?}: {d}");
        }
        let neigh = ip(&["-n", &s, "neigh", "show", &R_V4.to_string()]);
        assert!(neigh.contains("lladdr"), "ARP resolved through the program: {neigh}");

        // An AF_XDP socket in slot 0 (one queue): the same datagrams now go to it, not the kernel.
        let mut xsk = XskRx::bind(&r, R_IF, 0);
        p.insert_socket(0, xsk.fd()).expect("insert AF_XDP socket");
        let before = counters(&p);
        for i in 0..5 {
            tx.send_to(format!("xsk {i}").as_bytes(), (R_V4, PORT)).expect("send");
        }
        assert!(eventually(Duration::from_secs(5), || xsk.received() >= 5), "got {}", xsk.received());
        for i in 0..5 {
            let frame = xsk.next_frame().expect("frame");
            let payload = format!("xsk {i}");
            assert!(frame.ends_with(payload.as_bytes()), "frame {i} carries {payload:?}: {frame:02x?}");
            assert_eq!(&frame[12..14], &[0x08, 0x00], "a whole Ethernet frame");
        }
        assert_eq!(
            recv_count(&rx, 1, Duration::from_millis(300)),
            0,
            "redirected datagrams bypass the kernel"
        );
        let d = counters(&p).since(&before);
        assert_eq!((d.get(Counter::Redirected), d.get(Counter::RedirectFailed)), (5, 0), "{d}");

        // Out of the slot: back to the kernel.
        p.remove_socket(0).expect("remove");
        p.remove_socket(0).expect("removing from an empty slot is fine");
        let before = counters(&p);
        send_and_receive(&tx, &rx, SocketAddr::from((R_V4, PORT)), 3);
        let d = counters(&p).since(&before);
        assert_eq!((d.get(Counter::Redirected), d.get(Counter::RedirectFailed)), (0, 3), "{d}");

        // Errors of the socket API.
        assert!(matches!(p.insert_socket(64, xsk.fd()), Err(Error::QueueOutOfRange { queue: 64 })));
        let err = p.insert_socket(0, tx.as_fd()).expect_err("a UDP socket is not an AF_XDP socket");
        assert!(err.to_string().contains("AF_XDP"), "{err}");
        eprintln!("inserting a UDP socket: {err}");
    });
}

#[test]
fn native_attach_counts_passes_and_redirects() {
    exercise("native_attach_counts_passes_and_redirects", AttachMode::Native, Mode::Native);
}

#[test]
fn generic_attach_counts_passes_and_redirects() {
    exercise("generic_attach_counts_passes_and_redirects", AttachMode::Generic, Mode::Generic);
}

/// (c): a second attach is refused with the program id and how to remove it; a BPF-link
/// attachment cannot be removed with `ip link`; a foreign netlink-attached program is refused too
/// and the hint's command does remove it.
#[test]
fn second_attach_is_refused() {
    root_test("second_attach_is_refused", "sa", |Net { r, .. }| {
        let first = attach(&r, config(None, AttachMode::Auto)).expect("first attach");
        for mode in [AttachMode::Auto, AttachMode::Native, AttachMode::Generic] {
            let err = attach(&r, config(Some(4000), mode)).expect_err("second attach");
            match &err {
                Error::AlreadyAttached { prog_id, mode, interface } => {
                    assert_eq!((*prog_id, *mode, interface.as_str()), (first.prog_id(), Mode::Native, R_IF));
                }
                other => panic!("expected AlreadyAttached, got {other}"),
            }
            let text = err.to_string();
            assert!(text.contains(&format!("prog id {}", first.prog_id())), "{text}");
            assert!(text.contains(&format!("ip link set dev {R_IF} xdp off")), "{text}");
        }
        eprintln!("{}", attach(&r, config(None, AttachMode::Auto)).expect_err("refused"));

        // The link protects the server's program from `ip link ... xdp off`.
        let (ok, out) = ip_try(&["-n", &r, "link", "set", "dev", R_IF, "xdp", "off"]);
        assert!(!ok, "ip link xdp off must not remove a link-attached program: {out}");
        eprintln!("`ip link set dev {R_IF} xdp off` on the link-attached program: {}", out.trim());
        assert_eq!(attached(&r), Some((first.prog_id(), Mode::Native)));
        drop(first);
        assert_eq!(attached(&r), None);

        // A program someone attached through netlink (iproute2) is refused as well...
        let obj = concat!(env!("OUT_DIR"), "/canvas.bpf.o");
        ip(&["-n", &r, "link", "set", "dev", R_IF, "xdpgeneric", "obj", obj, "sec", "xdp"]);
        let (foreign, foreign_mode) = attached(&r).expect("iproute2 attached a program");
        assert_eq!(foreign_mode, Mode::Generic);
        let err = attach(&r, config(None, AttachMode::Auto)).expect_err("foreign program");
        assert!(
            matches!(err, Error::AlreadyAttached { prog_id, mode: Mode::Generic, .. } if prog_id == foreign),
            "{err}"
        );
        assert!(err.to_string().contains("xdpgeneric off"), "{err}");
        // ...and the hinted command removes it, after which attaching works.
        ip(&["-n", &r, "link", "set", "dev", R_IF, "xdpgeneric", "off"]);
        let p = attach(&r, config(None, AttachMode::Auto)).expect("attach after removal");
        assert_eq!(p.mode(), Mode::Native);
    });
}

/// (d): drop and detach() leave no program attached, and the kernel frees the program.
#[test]
fn drop_and_detach_leave_nothing_attached() {
    root_test("drop_and_detach_leave_nothing_attached", "dd", |Net { r, .. }| {
        for explicit in [false, true] {
            let p = attach(&r, config(None, AttachMode::Auto)).expect("attach");
            assert_eq!(p.mode(), Mode::Native, "Auto gets native mode on veth");
            let id = p.prog_id();
            assert_eq!(attached(&r), Some((id, Mode::Native)));
            if explicit {
                p.detach().expect("detach");
            } else {
                drop(p);
            }
            assert_eq!(attached(&r), None, "explicit detach: {explicit}");
            let details = ip(&["-n", &r, "-d", "link", "show", "dev", R_IF]);
            assert!(!details.contains("prog/xdp") && !details.contains(" xdp "), "{details}");
            assert!(eventually(Duration::from_secs(5), || !prog_exists(id)), "program {id} freed");
        }

        // By index; the interface disappears under the program; detach() still succeeds.
        let ifindex: u32 = ip(&["-n", &r, "-o", "link", "show", "dev", R_IF])
            .split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .expect("ifindex");
        let p = in_netns(&r, move || XdpProgram::attach(ifindex, config(None, AttachMode::Generic)))
            .expect("attach by index");
        assert_eq!((p.interface(), p.ifindex(), p.mode()), (R_IF, ifindex, Mode::Generic));
        let id = p.prog_id();
        ip(&["-n", &r, "link", "del", "dev", R_IF]);
        p.detach().expect("detach after the interface went away");
        assert!(eventually(Duration::from_secs(5), || !prog_exists(id)), "program {id} freed");
    });
}

/// Whether a BPF program with this id still exists in the kernel.
fn prog_exists(id: u32) -> bool {
    // SAFETY: no pointers; returns a new fd or -errno.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd >= 0 {
        // SAFETY: `fd` is the new fd just returned, closed once.
        unsafe { libc::close(fd) };
    }
    fd >= 0
}

/// (e): VLAN matching on the parent interface, with the tag in the frame (802.1Q and 802.1ad)
/// and with the tag in skb metadata (how a VLAN sub-interface over a tag-offloading veth sends;
/// emulated with a tc `bpf_skb_vlan_push` since this kernel lacks the 802.1Q module).
#[test]
fn vlan_in_band_and_in_metadata() {
    root_test("vlan_in_band_and_in_metadata", "vl", |Net { r, s, frames }| {
        let inject = Injector::new(&s, S_IF);
        // Attaches, injects `sends`, detaches; returns the program's report and the counter deltas.
        let run = |vlan: Option<u16>, mode: AttachMode, sends: &[Vec<u8>]| -> (Report, Counters) {
            let p = attach(&r, config(vlan, mode)).expect("attach");
            let before = counters(&p);
            for frame in sends {
                inject.send(frame);
            }
            // Every injected frame is UDP and ends under one of these; waiting on them (not on all
            // frames) keeps the receiver's background ARP/ND from ending the wait early.
            const UDP: [Counter; 4] = [
                Counter::Redirected,
                Counter::RedirectFailed,
                Counter::PassedNotUdpPort,
                Counter::PassedOtherVlan,
            ];
            let seen = || {
                let d = counters(&p).since(&before);
                UDP.iter().map(|&c| d.get(c)).sum::<u64>()
            };
            let n = sends.len() as u64;
            assert!(
                eventually(Duration::from_secs(5), || seen() >= n),
                "{n} frames: {}",
                counters(&p).since(&before)
            );
            let d = counters(&p).since(&before);
            (Report { mode: p.mode(), vlan_metadata: p.vlan_metadata(), notes: p.notes().to_vec() }, d)
        };
        let q = |vid| Some((0x8100, vid));
        let tagged_4000: Vec<Vec<u8>> = (0..4).map(|_| frames.udp4(q(4000), PORT, b"in-band 4000")).collect();
        let qinq_outer = frames.udp4(Some((0x88a8, 4000)), PORT, b"802.1ad 4000");
        let mut mixed = tagged_4000.clone();
        mixed.push(qinq_outer);
        mixed.extend((0..2).map(|_| frames.udp4(q(4001), PORT, b"in-band 4001")));
        mixed.extend((0..2).map(|_| frames.udp4(None, PORT, b"untagged")));
        mixed.push(frames.udp4(q(4001), OTHER_PORT, b"other port"));

        for mode in [AttachMode::Native, AttachMode::Generic] {
            let (p, d) = run(Some(4000), mode, &mixed);
            eprintln!("in-band, vlan 4000, {}: {d}", p.mode);
            assert_eq!(d.redirect_attempts(), 5, "4 x 802.1Q 4000 + 1 x 802.1ad 4000: {d}");
            assert_eq!(d.get(Counter::PassedOtherVlan), 4, "2 x 4001 + 2 untagged: {d}");
            assert_eq!(d.get(Counter::PassedNotUdpPort), 1, "{d}");
            assert_eq!(d.get(Counter::VlanFromMetadata), 0, "{d}");
        }
        let (_p, d) = run(Some(4001), AttachMode::Native, &tagged_4000);
        assert_eq!((d.redirect_attempts(), d.get(Counter::PassedOtherVlan)), (0, 4), "vlan 4001: {d}");
        let (_p, d) = run(None, AttachMode::Native, &tagged_4000);
        assert_eq!(d.redirect_attempts(), 4, "no VLAN configured: tags are not looked at: {d}");

        // The tag in metadata: untagged frames out of xs get a hardware-accelerated tag 4000.
        push_vlan_on_egress(&s, S_IF, 4000);
        let plain: Vec<Vec<u8>> = (0..3).map(|_| frames.udp4(None, PORT, b"tag in metadata")).collect();
        let (p, d) = run(Some(4000), AttachMode::Native, &plain);
        eprintln!("metadata, vlan 4000, native: vlan_metadata={} {d}", p.vlan_metadata);
        assert!(p.vlan_metadata, "native + VLAN loads the device-bound kfunc object: {:?}", p.notes);
        assert_eq!((d.redirect_attempts(), d.get(Counter::VlanFromMetadata)), (3, 3), "{d}");
        let (_p, d) = run(Some(4001), AttachMode::Native, &plain);
        assert_eq!((d.get(Counter::PassedOtherVlan), d.get(Counter::VlanFromMetadata)), (3, 3), "{d}");
        // Generic mode cannot see a stripped tag: the frames look untagged (documented limit).
        let (p, d) = run(Some(4000), AttachMode::Generic, &plain);
        eprintln!("metadata, vlan 4000, generic: notes {:?} {d}", p.notes);
        assert!(p.mode == Mode::Generic && !p.vlan_metadata && !p.notes.is_empty());
        assert_eq!(d.get(Counter::PassedOtherVlan), 3, "{d}");
    });
}

/// What an attach reported, kept after the program is dropped.
#[derive(Debug)]
struct Report {
    mode: Mode,
    vlan_metadata: bool,
    notes: Vec<String>,
}

/// Fragments, non-UDP, non-IP and malformed frames are passed and counted under their names.
#[test]
fn malformed_fragments_and_other_protocols_are_passed() {
    root_test("malformed_fragments_and_other_protocols_are_passed", "mf", |Net { r, s, frames: f }| {
        // The receiver answers some frames (ICMP unreachable, TCP RST): permanent neighbours keep
        // its ARP/ND exchanges from adding frames to the counts.
        let s_mac = f.src_mac.map(|b| format!("{b:02x}")).join(":");
        for addr in [S_V4.to_string(), S_V6.to_string()] {
            ip(&["-n", &r, "neigh", "replace", &addr, "lladdr", &s_mac, "dev", R_IF, "nud", "permanent"]);
        }
        let p = attach(&r, config(None, AttachMode::Native)).expect("attach");
        let inject = Injector::new(&s, S_IF);
        let udp = Frames::udp(40000, PORT, b"payload");
        let v4 = |proto, frag, l4: &[u8]| f.eth(None, 0x0800, &Frames::ipv4(S_V4, R_V4, proto, frag, l4));
        let v6 = |next, rest: &[u8]| f.eth(None, 0x86dd, &Frames::ipv6(S_V6, R_V6, next, rest));
        let mut ihl4 = Frames::ipv4(S_V4, R_V4, 17, 0, &udp);
        ihl4[0] = 0x44;
        let mut too_long = Frames::ipv4(S_V4, R_V4, 17, 0, &udp);
        too_long[2..4].copy_from_slice(&1000u16.to_be_bytes());
        let mut udp_len_4 = udp.clone();
        udp_len_4[4..6].copy_from_slice(&4u16.to_be_bytes());
        let cases: Vec<(Counter, Vec<u8>)> = vec![
            (Counter::MalformedEth, f.eth(None, 0x8100, &[])), // announces a tag, ends there
            (Counter::MalformedIp, f.eth(None, 0x0800, &[0x45; 10])),
            (Counter::MalformedIp, f.eth(None, 0x0800, &ihl4)),
            (Counter::MalformedIp, f.eth(None, 0x0800, &too_long)),
            (Counter::MalformedIp, f.eth(None, 0x86dd, &[0x60; 20])),
            (Counter::MalformedUdp, v4(17, 0, &udp[..4])),
            (Counter::MalformedUdp, v4(17, 0, &udp_len_4)),
            (Counter::IpFragment, v4(17, 0x2000, &udp)), // MF
            (Counter::IpFragment, v4(17, 0x0010, &udp)), // offset 128
            (Counter::IpFragment, v6(44, &[17, 0, 0, 0, 0, 0, 0, 1])),
            (Counter::PassedNotUdp, v4(6, 0, &[0; 20])), // TCP
            (Counter::PassedNotUdp, v6(0, &[17, 0, 1, 4, 0, 0, 0, 0])), // hop-by-hop, not walked
            (Counter::PassedNotIp, f.eth(None, 0x88cc, &[0; 46])), // LLDP
            (Counter::PassedNotUdpPort, v4(17, 0, &Frames::udp(40000, OTHER_PORT, b"x"))),
            (Counter::RedirectFailed, v6(17, &udp)),
            (Counter::RedirectFailed, v4(17, 0, &udp)),
        ];
        for (expected, frame) in &cases {
            let before = counters(&p);
            inject.send(frame);
            assert!(
                eventually(Duration::from_secs(5), || counters(&p).since(&before).get(*expected) >= 1),
                "{expected:?} for {frame:02x?}: {}",
                counters(&p).since(&before)
            );
            let d = counters(&p).since(&before);
            // Background IPv6 traffic (MLD, ND) can only add to PassedNotUdp, so that one counter
            // is not exact; every other frame seen must be this one.
            let not_background = d.frames() - d.get(Counter::PassedNotUdp);
            if *expected == Counter::PassedNotUdp {
                assert_eq!(not_background, 0, "{expected:?}: {d}");
            } else {
                assert_eq!((d.get(*expected), not_background), (1, 1), "{expected:?}: {d}");
            }
        }
    });
}

/// Without CAP_BPF/CAP_NET_ADMIN (root with its effective capabilities dropped) the loader says
/// so, and nothing is attached.
#[test]
fn without_capabilities_attach_is_permission_denied() {
    root_test("without_capabilities_attach_is_permission_denied", "pd", |Net { r, .. }| {
        let err = in_netns(&r, || {
            drop_effective_capabilities();
            XdpProgram::attach(R_IF, config(None, AttachMode::Auto)).expect_err("no capabilities")
        });
        eprintln!("{err}");
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
        assert!(err.to_string().contains("CAP_BPF"), "{err}");
        assert_eq!(attached(&r), None);
    });
}
