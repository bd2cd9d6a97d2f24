//! Test harness for the root tests: network namespaces joined by a veth pair, threads that enter
//! them, frame crafting and injection (AF_PACKET), ICMP echo, a minimal copy-mode AF_XDP socket,
//! and a 5-instruction tc program that pushes a VLAN tag into skb metadata.
//!
//! Every kernel object a test creates lives inside the namespaces a [`Topology`] creates, whose
//! names are unique per process and test; dropping the `Topology` (also when a test panics or
//! times out) deletes them, which destroys their interfaces, programs and qdiscs. Nothing is
//! created in the root namespace.
//!
//! Why one file of ~700 lines: it is the single harness that the root tests of three crates include by
//! `#[path]` (xdp-prog's `tests/xdp.rs`, datapath's `tests/xdp_backend.rs`, server's `tests/doctor.rs`);
//! kept whole, each includes exactly one file and none depends on how the harness is laid out inside.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Port the program steers in the tests.
pub const PORT: u16 = 4433;
/// Another port, which must be passed.
pub const OTHER_PORT: u16 = 4434;
/// Receiver (program side) addresses, inside the receiver namespace only.
pub const R_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const R_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
/// Sender addresses, inside the sender namespace only.
pub const S_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 21);
pub const S_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x21);
/// Interface names (they only exist inside the test namespaces).
pub const R_IF: &str = "xr";
pub const S_IF: &str = "xs";

/// Whether the privileged tests can run. Not root: fails when `CI=true` (a CI run must not
/// silently skip them), otherwise prints why and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root (network namespaces, XDP) and CI=true forbids skipping it"
    );
    eprintln!("{test}: skipped, not root (needs network namespaces and XDP; runs in CI as root)");
    false
}

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`. The caller
/// keeps its [`Topology`], so cleanup happens on the caller's thread even after a timeout.
pub fn bounded<F: FnOnce() + Send + 'static>(limit: Duration, body: F) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let _ = tx.send(result);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => {
            handle.join().expect("test thread");
        }
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("test body did not finish within {limit:?}"),
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure; returns stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ARGS`, returning (success, stdout + stderr).
pub fn ip_try(args: &[&str]) -> (bool, String) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, receiver `r` and sender `s`, joined by the veth pair `xr` (in `r`) — `xs` (in
/// `s`), one queue each, addresses 10.0.1.10/.21 and fd00::10/::21, up. Drop deletes both.
#[derive(Debug)]
pub struct Topology {
    pub r: String,
    pub s: String,
}

impl Topology {
    pub fn new(tag: &str) -> Topology {
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let base = format!("xdpt{}{tag}{serial}", std::process::id());
        // Drop deletes whatever exists, also when setup panics half-way.
        let t = Topology { r: format!("{base}r"), s: format!("{base}s") };
        ip(&["netns", "add", &t.r]);
        ip(&["netns", "add", &t.s]);
        // Created directly in r with its peer in s: the pair never exists in the root namespace.
        ip(&[
            "-n",
            &t.r,
            "link",
            "add",
            R_IF,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            S_IF,
            "netns",
            &t.s,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        for (ns, dev, v4, v6) in [(&t.r, R_IF, R_V4, R_V6), (&t.s, S_IF, S_V4, S_V6)] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        t
    }

    /// `ip -n NS -d link show DEV`.
    pub fn link_details(&self, ns: &str, dev: &str) -> String {
        ip(&["-n", ns, "-d", "link", "show", "dev", dev])
    }

    /// The MAC address of `dev` in `ns`.
    pub fn mac(&self, ns: &str, dev: &str) -> [u8; 6] {
        let text = ip(&["-n", ns, "-br", "link", "show", "dev", dev]);
        let field = text.split_whitespace().nth(2).expect("brief link line has a MAC");
        let mut mac = [0u8; 6];
        for (byte, hex) in mac.iter_mut().zip(field.split(':')) {
            *byte = u8::from_str_radix(hex, 16).expect("hex MAC");
        }
        mac
    }

    /// A frame crafter from the sender's `S_IF` to the receiver's `R_IF`.
    pub fn frames(&self) -> Frames {
        Frames { dst_mac: self.mac(&self.r, R_IF), src_mac: self.mac(&self.s, S_IF) }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.s, &self.r] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns` (setns affects only the
/// calling thread); returns its result, re-raising its panic. Sockets and fds created inside keep
/// belonging to `ns` wherever they are used later.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: `file` is an open namespace file for the duration of the call.
        let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A UDP socket bound in `ns` to `addr`, with a read timeout.
pub fn udp_socket(ns: &str, addr: SocketAddr) -> UdpSocket {
    in_netns(ns, move || {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        sock
    })
}

/// Receives datagrams until `n` arrived or `limit` passed; returns how many arrived. `sock` needs a
/// read timeout (as [`udp_socket`] sets), which bounds each wait and may stretch `limit` by as much.
pub fn recv_count(sock: &UdpSocket, n: usize, limit: Duration) -> usize {
    assert!(
        matches!(sock.read_timeout(), Ok(Some(_))),
        "recv_count needs a socket with a read timeout, or it could block forever"
    );
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n && Instant::now() < deadline {
        if sock.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

/// Polls `f` every 10 ms until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// ICMP echo from inside `ns` to `dst` over a raw socket; true if the reply came within 2 s.
pub fn ping(ns: &str, dst: Ipv4Addr) -> bool {
    in_netns(ns, move || {
        // SAFETY: plain socket(2) call.
        let fd =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw ICMP socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO, its size is passed.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as u32,
            )
        };
        // Without the timeout a lost reply would block recv below forever.
        assert_eq!(ret, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        let id = (std::process::id() & 0xffff) as u16;
        let mut echo = vec![8u8, 0, 0, 0];
        echo.extend_from_slice(&id.to_be_bytes());
        echo.extend_from_slice(&1u16.to_be_bytes());
        echo.extend_from_slice(b"xdp-prog ping");
        let sum = checksum(&[&echo]);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = sockaddr_in(dst);
        // SAFETY: `echo` and `to` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(sent, echo.len() as isize, "send echo: {}", io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 20 {
                continue;
            }
            // An IPv4 header (IHL words), then ICMP: an echo reply (type 0) carrying our id.
            let ihl = usize::from(buf[0] & 0xf) * 4;
            let Some(icmp) = buf[..n as usize].get(ihl..) else { continue };
            if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                return true;
            }
        }
        false
    })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    }
}

/// The Internet checksum over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in part.iter() {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(high) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame crafter: Ethernet (+ optional 802.1Q tag) over IPv4/IPv6/UDP, or anything raw.
#[derive(Debug, Clone, Copy)]
pub struct Frames {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

impl Frames {
    /// Ethernet header, optional tag (tpid, vid), then `ethertype` and `payload`.
    pub fn eth(&self, vlan: Option<(u16, u16)>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(18 + payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some((tpid, vid)) = vlan {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// IPv4 header (checksummed) + `l4`, with the given protocol and fragment field.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, frag_field: u16, l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes());
        h.extend_from_slice(&frag_field.to_be_bytes());
        h.extend_from_slice(&[64, protocol, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    /// IPv6 fixed header + `rest`, with the given next header.
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next_header, 64]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(rest);
        h
    }

    /// A UDP header + payload (checksum 0: allowed for IPv4; the XDP program never checks it).
    pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::with_capacity(8 + payload.len());
        u.extend_from_slice(&src_port.to_be_bytes());
        u.extend_from_slice(&dst_port.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// A complete IPv4 UDP frame from the sender to the receiver.
    pub fn udp4(&self, vlan: Option<(u16, u16)>, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let ip = Self::ipv4(S_V4, R_V4, 17, 0, &Self::udp(40000, dst_port, payload));
        self.eth(vlan, 0x0800, &ip)
    }
}

/// An AF_PACKET socket that sends raw frames out of one interface (the frames go through the
/// interface's qdisc and tc egress, as the kernel's own would).
#[derive(Debug)]
pub struct Injector {
    fd: OwnedFd,
    ifindex: i32,
}

impl Injector {
    /// Opens it in `ns` on `dev`.
    pub fn new(ns: &str, dev: &'static str) -> Injector {
        in_netns(ns, move || {
            // Protocol 0: send only, never receive.
            // SAFETY: plain socket(2) call.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = CString::new(dev).expect("no NUL");
            // SAFETY: `name` is NUL-terminated and outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            assert!(ifindex > 0, "no {dev}");
            Injector { fd, ifindex }
        })
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain old data; all-zeroes is valid.
        let mut to: libc::sockaddr_ll = unsafe { mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        // SAFETY: `frame` and `to` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "inject {} bytes: {}",
            frame.len(),
            io::Error::last_os_error()
        );
    }
}

/// A tc egress program on `dev` in `ns` that pushes VLAN tag `vid` into skb metadata
/// (`bpf_skb_vlan_push` sets the hardware-accelerated tag, which veth carries out of band), as a
/// VLAN sub-interface on a tag-offloading NIC would. This kernel has no 802.1Q module, so a real
/// `dev.4000` cannot be created. Lives until the namespace is deleted.
pub fn push_vlan_on_egress(ns: &str, dev: &'static str, vid: u16) {
    in_netns(ns, move || {
        use libbpf_rs::libbpf_sys as sys;
        let insn = |code: u8, dst: u8, imm: i32| -> u64 {
            u64::from(code) | (u64::from(dst) << 8) | (u64::from(imm as u32) << 32)
        };
        let prog: [u64; 5] = [
            insn(0xb7, 2, 0x8100u16.to_be() as i32), // r2 = htons(ETH_P_8021Q)
            insn(0xb7, 3, i32::from(vid)),           // r3 = vid
            insn(0x85, 0, sys::BPF_FUNC_skb_vlan_push as i32), // call bpf_skb_vlan_push(r1 = skb)
            insn(0xb7, 0, 0),                        // r0 = TC_ACT_OK
            insn(0x95, 0, 0),                        // exit
        ];
        let license = CString::new("GPL").expect("no NUL");
        let name = CString::new("vlan_push").expect("no NUL");
        // SAFETY: `prog` holds 5 encoded bpf_insn (8 bytes each, same layout); the strings are
        // NUL-terminated; null opts means defaults.
        let fd = unsafe {
            sys::bpf_prog_load(
                sys::BPF_PROG_TYPE_SCHED_CLS,
                name.as_ptr(),
                license.as_ptr(),
                prog.as_ptr().cast::<sys::bpf_insn>(),
                prog.len() as _,
                ptr::null_mut(),
            )
        };
        assert!(fd >= 0, "load tc vlan_push: {}", io::Error::from_raw_os_error(-fd));
        // SAFETY: bpf_prog_load returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifname = CString::new(dev).expect("no NUL");
        // SAFETY: `ifname` is NUL-terminated and outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) } as i32;
        let mut hook = libbpf_rs::TcHookBuilder::new(fd.as_fd())
            .ifindex(ifindex)
            .replace(true)
            .handle(1)
            .priority(1)
            .hook(libbpf_rs::TC_EGRESS);
        hook.create().expect("clsact qdisc");
        hook.attach().expect("attach tc egress");
        // The filter holds its own reference to the program; `fd` may close.
    });
}

/// Drops every effective capability of the calling thread (root stays uid 0 but loses its powers).
pub fn drop_effective_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header { version: 0x2008_0522, pid: 0 }; // _LINUX_CAPABILITY_VERSION_3
    let mut data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: version 3 capget takes a header and two Data slots, both valid and writable.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", io::Error::last_os_error());
    for d in &mut data {
        d.effective = 0;
    }
    // SAFETY: as above; capset only reads them, and only changes the calling thread.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    assert_eq!(ret, 0, "capset: {}", io::Error::last_os_error());
}

const AF_XDP: i32 = 44;
const FRAMES: u32 = 16;
const FRAME_SIZE: u32 = 4096;

/// A minimal copy-mode AF_XDP socket: a 16-frame UMEM, all frames on the fill ring, an RX ring.
/// Enough to prove the redirect delivers; the real datapath lives elsewhere.
#[derive(Debug)]
pub struct XskRx {
    fd: OwnedFd,
    umem: *mut u8,
    fill: *mut u8,
    fill_len: usize,
    rx: *mut u8,
    rx_len: usize,
    offsets: libc::xdp_mmap_offsets,
    consumed: u32,
}

// SAFETY: the mappings are owned by this value alone and only touched through &mut self.
unsafe impl Send for XskRx {}

impl XskRx {
    /// Creates it in `ns` and binds it to `dev` queue `queue` (copy mode).
    pub fn bind(ns: &str, dev: &'static str, queue: u32) -> XskRx {
        in_netns(ns, move || Self::bind_here(dev, queue))
    }

    fn setsockopt<T>(fd: BorrowedFd<'_>, opt: i32, value: &T) {
        // SAFETY: `value` is a valid T for the size passed.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                opt,
                (value as *const T).cast(),
                mem::size_of::<T>() as u32,
            )
        };
        assert_eq!(ret, 0, "setsockopt SOL_XDP {opt}: {}", io::Error::last_os_error());
    }

    fn map(fd: BorrowedFd<'_>, len: usize, offset: u64) -> *mut u8 {
        // SAFETY: maps a ring of the socket; the kernel validates offset and length.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset as i64,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap ring: {}", io::Error::last_os_error());
        p.cast()
    }

    fn bind_here(dev: &str, queue: u32) -> XskRx {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "AF_XDP socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let umem_len = (FRAMES * FRAME_SIZE) as usize;
        // SAFETY: anonymous private mapping, no aliasing.
        let umem = unsafe {
            libc::mmap(
                ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(umem, libc::MAP_FAILED, "mmap umem");
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        Self::setsockopt(fd.as_fd(), libc::XDP_UMEM_REG, &reg);
        Self::setsockopt(fd.as_fd(), libc::XDP_UMEM_FILL_RING, &FRAMES);
        Self::setsockopt(fd.as_fd(), libc::XDP_UMEM_COMPLETION_RING, &FRAMES);
        Self::setsockopt(fd.as_fd(), libc::XDP_RX_RING, &FRAMES);
        // SAFETY: xdp_mmap_offsets is plain old data; all-zeroes is valid.
        let mut offsets: libc::xdp_mmap_offsets = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::xdp_mmap_offsets>() as u32;
        // SAFETY: `offsets` is writable for `len` bytes.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut offsets as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        assert_eq!(ret, 0, "XDP_MMAP_OFFSETS: {}", io::Error::last_os_error());
        let fill_len = offsets.fr.desc as usize + FRAMES as usize * 8;
        let fill = Self::map(fd.as_fd(), fill_len, libc::XDP_UMEM_PGOFF_FILL_RING);
        let rx_len = offsets.rx.desc as usize + FRAMES as usize * mem::size_of::<libc::xdp_desc>();
        let rx = Self::map(fd.as_fd(), rx_len, libc::XDP_PGOFF_RX_RING as u64);
        let xsk = XskRx { fd, umem: umem.cast(), fill, fill_len, rx, rx_len, offsets, consumed: 0 };
        // Every frame goes on the fill ring once; the test receives fewer than FRAMES frames.
        for i in 0..FRAMES {
            // SAFETY: slot i of the fill ring's u64 array, inside the mapping.
            unsafe {
                xsk.fill
                    .add(offsets.fr.desc as usize + i as usize * 8)
                    .cast::<u64>()
                    .write(u64::from(i * FRAME_SIZE))
            };
        }
        xsk.ring_u32(xsk.fill, offsets.fr.producer).store(FRAMES, Ordering::Release);
        let name = CString::new(dev).expect("no NUL");
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let addr = libc::sockaddr_xdp {
            sxdp_family: AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp for the size passed.
        let ret = unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                mem::size_of::<libc::sockaddr_xdp>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind AF_XDP to {dev} queue {queue}: {}", io::Error::last_os_error());
        xsk
    }

    fn ring_u32(&self, base: *mut u8, offset: u64) -> &AtomicU32 {
        // SAFETY: producer/consumer words are 4-byte aligned u32s inside the ring mapping, shared
        // with the kernel, which lives as long as &self.
        unsafe { &*base.add(offset as usize).cast::<AtomicU32>() }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Frames received so far (RX producer), without consuming them.
    pub fn received(&self) -> u32 {
        self.ring_u32(self.rx, self.offsets.rx.producer).load(Ordering::Acquire)
    }

    /// Takes the next received frame's bytes, if any.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.consumed == self.received() {
            return None;
        }
        let slot = (self.consumed % FRAMES) as usize;
        // SAFETY: slot < FRAMES of the RX ring's descriptor array, inside the mapping, published
        // by the producer store we acquired.
        let desc = unsafe {
            self.rx
                .add(self.offsets.rx.desc as usize + slot * mem::size_of::<libc::xdp_desc>())
                .cast::<libc::xdp_desc>()
                .read()
        };
        assert!(desc.addr + u64::from(desc.len) <= u64::from(FRAMES * FRAME_SIZE), "descriptor inside UMEM");
        // SAFETY: the kernel wrote desc.len bytes at desc.addr inside the UMEM (checked above).
        let bytes =
            unsafe { std::slice::from_raw_parts(self.umem.add(desc.addr as usize), desc.len as usize) }
                .to_vec();
        self.consumed += 1;
        self.ring_u32(self.rx, self.offsets.rx.consumer).store(self.consumed, Ordering::Release);
        Some(bytes)
    }
}

impl Drop for XskRx {
    fn drop(&mut self) {
        // SAFETY: each pointer is a live mapping of the given length, created in bind_here and
        // unmapped only here.
        unsafe {
            libc::munmap(self.rx.cast(), self.rx_len);
            libc::munmap(self.fill.cast(), self.fill_len);
            libc::munmap(self.umem.cast(), (FRAMES * FRAME_SIZE) as usize);
        }
    }
}
