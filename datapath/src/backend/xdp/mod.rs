//! AF_XDP backend: one XSK per NIC queue over its own UMEM, raw Ethernet frames in and out.
//!
//! Layers, bottom up: xsk-rs (UMEM registration, the four rings, socket lifetime) → frame ownership
//! (`Frames`: every UMEM frame is in exactly one place, checked on every move) → header parse/build
//! ([`crate::frame`]) → [`XdpSocket`] (the [`Datapath`] seam). Files: `frames.rs` (ownership states and
//! the audit), `bind.rs` (UMEM, zero-copy probe, bind), `rings.rs` (descriptor moves between the free pool
//! and the rings), `sockopt.rs`; this file: the configuration, the socket and its [`Datapath`] impl.
//!
//! # Where a frame can be
//! `FREE` (ours, unused) → `FILL` (on the fill ring or the RX ring: the kernel's) → back to `FILL` as soon
//! as the receive callback returns (a received frame is recycled straight onto the fill ring, or to `FREE`
//! when the ring is already full). While received frames wait in the RX ring during a long flush pass, the
//! fill ring is topped up from the free pool (up to a fill ring plus an RX ring of frames receiving, `ring` frames
//! always kept for transmit), so a tick's broadcast pass does not stop reception. `FREE` → `SLOT` (handed out by
//! [`Datapath::tx_slot`]) → `PENDING` (committed, waiting for [`Datapath::flush`]) → `TX` (on the TX ring or in
//! the driver) → `FREE` (reaped from the completion ring). A descriptor the kernel returns for a frame
//! that is not in the state it should be is counted in [`XdpSockStats::frame_errors`] and not reused; the
//! `frame_audit` test drives traffic through a socket and checks that the per-state counts add up to the
//! UMEM and that every frame comes home.
//!
//! # Receive
//! The frame is parsed in UMEM ([`crate::frame::parse`]); quiche decrypts the UDP payload in place there.
//! The peer's MAC and the MAC it used for us are learned per peer IP from the frame (a neighbour table:
//! the path's layer 2 is whatever the last frame from that address said, so a router's MAC is learned for
//! routed peers and each host's MAC on a flat network).
//!
//! # Transmit
//! [`Datapath::tx_slot`] hands out the payload area of a free frame after room for Ethernet [+ 802.1Q] +
//! IP + UDP headers of this socket's address family; quiche writes the packet there; `tx_commit` writes
//! the headers and both checksums in front of it. `flush` moves committed frames to the TX ring and kicks
//! the kernel when the ring asks for it (need_wakeup; in copy mode it always does, and one `sendto`
//! transmits at most 32 frames, so the kick repeats while the kernel answers EAGAIN).
//!
//! # Zero-copy
//! [`ZeroCopy::Auto`] first probes a zero-copy bind with a small UMEM on ordinary pages and binds the real
//! UMEM in zero-copy mode if the probe worked, else in copy mode. (Retrying the real UMEM is not possible:
//! libxdp has registered rings on its socket; and a fresh hugetlb UMEM could fail because the kernel frees
//! a refused UMEM's pinned pages asynchronously.) [`ZeroCopy::On`] fails with an error naming the driver. What the kernel granted is read
//! back with `XDP_OPTIONS` ([`XdpSocket::zero_copy`]).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::frame::{self, L2};
use crate::seam::{Addrs, BackendStats, Datapath, LinkHint};

mod bind;
mod frames;
mod rings;
mod sockopt;

pub use bind::{probe_zero_copy, BindError};
pub use frames::FrameAudit;
use frames::{Frames, FILL, FREE, PENDING, SLOT, TX};

/// UMEM frame size: a power of two (xsk-rs finds a frame's start by masking) holding the 256-byte XDP
/// headroom and a 1518-byte tagged Ethernet frame.
pub const FRAME_SIZE: u32 = 2048;
/// The kernel's XDP_PACKET_HEADROOM in front of each frame's data.
const XDP_HEADROOM: usize = 256;
/// Default ring size (fill, completion and TX; RX is [`RX_RING_FACTOR`] times it): at 2048 a tick's
/// broadcast pass over 1,000 connections on this box let more than a fill ring of frames arrive unserved
/// (kernel `fill_ring_empty` drops); the io_uring path buffers 4096 datagrams plus its socket buffer.
pub const DEFAULT_RING: u32 = 4096;
/// The RX ring is this many times the other rings: it is the receive buffer while the worker is busy
/// flushing (the io_uring path has a 32 MiB socket buffer for that). At saturation on the testbed a 4096-entry
/// RX ring overflowed (`kernel_rx_ring_full`) where the socket path did not.
pub const RX_RING_FACTOR: u32 = 4;
/// Default UMEM frames per socket: up to a fill ring plus an RX ring receiving, the rest for transmit.
/// 32768 × 2 KiB = 64 MiB, thirty-two 2 MiB huge pages.
pub const DEFAULT_FRAMES: u32 = 32768;
/// Most neighbour entries kept before the table is cleared (and relearned from the next frames).
const MAX_NEIGHBOURS: usize = 1 << 20;
/// How long binding retries while the kernel still holds a just-closed socket's queue (EBUSY, ~0.5 s).
const EBUSY_RETRY: Duration = Duration::from_millis(1500);

/// `--zero-copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Zero-copy when the driver has it, else copy mode.
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode.
    Off,
}

/// Where the UMEM memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UmemPages {
    /// 2 MiB hugetlb pages when reserved, else 4 KiB pages.
    Auto,
    /// 2 MiB hugetlb pages or fail.
    HugeTlb,
    /// 4 KiB pages.
    Small,
}

/// Configuration of one socket.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// Interface to bind.
    pub iface: String,
    /// Its receive queue.
    pub queue: u32,
    /// The address served: its port is matched on receive. `[::]` serves IPv4 and IPv6 peers (dual stack, like
    /// a kernel socket bound to `[::]`), `0.0.0.0` every IPv4 destination, a specific address only itself.
    pub listen: SocketAddr,
    /// Tag transmitted frames with this VLAN (the socket is on the VLAN's parent interface).
    pub vlan: Option<u16>,
    /// Zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// UMEM pages.
    pub pages: UmemPages,
    /// UMEM frames (a multiple of 1024 keeps the UMEM a whole number of 2 MiB pages).
    pub frames: u32,
    /// Entries of the fill, completion and TX rings (a power of two); the RX ring has
    /// [`RX_RING_FACTOR`] times as many.
    pub ring: u32,
    /// Largest UDP payload sent (also capped by the interface MTU).
    pub max_payload: usize,
}

impl XdpConfig {
    /// Defaults for `iface` queue `queue` serving `listen`.
    pub fn new(iface: &str, queue: u32, listen: SocketAddr) -> XdpConfig {
        XdpConfig {
            iface: iface.to_string(),
            queue,
            listen,
            vlan: None,
            zero_copy: ZeroCopy::Auto,
            pages: UmemPages::Auto,
            frames: DEFAULT_FRAMES,
            ring: DEFAULT_RING,
            max_payload: crate::backend::uring::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// AF_XDP-specific counters of one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpSockStats {
    /// Frames that were not UDP over IP (the XDP program should not have sent them).
    pub rx_malformed: u64,
    /// UDP frames to another address or port (or family) than the one served.
    pub rx_not_ours: u64,
    /// Datagrams dropped on transmit because no frame from the peer's address was ever seen.
    pub tx_no_neighbour: u64,
    /// `sendto` kicks of the TX ring.
    pub tx_kicks: u64,
    /// Descriptors the kernel returned for frames not in the state they should be in (must stay 0).
    pub frame_errors: u64,
    /// Times the transmit pool was empty when a slot was asked for.
    pub tx_pool_empty: u64,
    /// Times the fill ring was topped up from the free pool during a flush pass.
    pub fill_top_ups: u64,
    /// Kernel `XDP_STATISTICS`: frames dropped for lack of RX ring room or other reasons.
    pub kernel_rx_dropped: u64,
    /// Kernel `XDP_STATISTICS`: RX ring full.
    pub kernel_rx_ring_full: u64,
    /// Kernel `XDP_STATISTICS`: fill ring empty when a frame arrived.
    pub kernel_fill_ring_empty: u64,
    /// Kernel `XDP_STATISTICS`: invalid RX descriptors.
    pub kernel_rx_invalid: u64,
    /// Kernel `XDP_STATISTICS`: invalid TX descriptors.
    pub kernel_tx_invalid: u64,
}

/// Peer IP → (peer MAC, the MAC the peer addressed us with); looked up once per transmitted packet, so
/// with FxHash rather than SipHash (no untrusted key can grow it beyond [`MAX_NEIGHBOURS`]).
type Neighbours = HashMap<IpAddr, ([u8; 6], [u8; 6]), rustc_hash::FxBuildHasher>;

/// One AF_XDP socket on one queue, as a [`Datapath`].
pub struct XdpSocket {
    cfg: XdpConfig,
    // Field order is drop order: the queues (which hold the socket) go before the UMEM.
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    /// Base of the UMEM mapping and its length.
    base: *mut u8,
    umem_len: usize,
    /// One canonical descriptor per frame (address = frame start + XDP headroom).
    descs: Vec<FrameDesc>,
    frames: Frames,
    free: Vec<u32>,
    /// Scratch for RX / completion batches.
    scratch: Vec<FrameDesc>,
    /// Frames to give back to the fill ring.
    refill: Vec<FrameDesc>,
    /// Committed frames, in order, not yet on the TX ring.
    pending: Vec<FrameDesc>,
    slot: Option<u32>,
    /// Frames put on the TX ring that the kernel may not have taken yet (copy mode needs a kick).
    unkicked: bool,
    neighbours: Neighbours,
    hdr_len: usize,
    max_payload: usize,
    ip_id: u16,
    zero_copy: bool,
    hugetlb: bool,
    stats: BackendStats,
    xstats: XdpSockStats,
    notes: Vec<String>,
}

// SAFETY: `base` points into the UMEM mapping this value owns (through `umem`); nothing else holds it, so
// moving the socket to another thread moves the only user of the pointer along with the mapping.
unsafe impl Send for XdpSocket {}

impl fmt::Debug for XdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpSocket")
            .field("iface", &self.cfg.iface)
            .field("queue", &self.cfg.queue)
            .field("zero_copy", &self.zero_copy)
            .field("hugetlb", &self.hugetlb)
            .field("frames", &self.frames.audit())
            .finish()
    }
}

impl XdpSocket {
    /// The socket's fd, for the XDP program's `xsks` map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to the socket held by `self.rx`, open for as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }

    /// The queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.cfg.queue
    }

    /// True when the kernel granted zero-copy.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// True when the UMEM is on 2 MiB hugetlb pages.
    pub fn hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// What binding decided and why (UMEM pages, zero-copy, MTU caps).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Where every frame is.
    pub fn frame_audit(&self) -> FrameAudit {
        self.frames.audit()
    }

    /// AF_XDP counters, including the kernel's `XDP_STATISTICS` for this socket.
    pub fn xdp_stats(&self) -> XdpSockStats {
        let mut s = self.xstats;
        if let Ok(k) = self.rx.fd().xdp_statistics() {
            s.kernel_rx_dropped = k.rx_dropped();
            s.kernel_rx_ring_full = k.rx_ring_full();
            s.kernel_fill_ring_empty = k.rx_fill_ring_empty_descs();
            s.kernel_rx_invalid = k.rx_invalid_descs();
            s.kernel_tx_invalid = k.tx_invalid_descs();
        }
        s
    }

    /// Flush and reap completions until nothing is in flight on the TX side or `timeout` passes; returns
    /// true when everything came home.
    pub fn quiesce(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let _ = self.flush();
            self.reap();
            if self.frames.count[TX as usize] == 0 && self.pending.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn learn(&mut self, peer: IpAddr, peer_mac: [u8; 6], our_mac: [u8; 6]) {
        if let Some(e) = self.neighbours.get_mut(&peer) {
            *e = (peer_mac, our_mac);
            return;
        }
        if self.neighbours.len() >= MAX_NEIGHBOURS {
            self.neighbours.clear();
        }
        self.neighbours.insert(peer, (peer_mac, our_mac));
    }

    #[inline]
    fn accepts(&self, dst: SocketAddr) -> bool {
        accepts(self.cfg.listen, dst)
    }
}

/// Whether a socket serving `listen` takes a datagram to `dst`: the port, and the address (an unspecified
/// IPv6 address serves both families, an unspecified IPv4 address all of IPv4, a specific one itself).
#[inline]
fn accepts(listen: SocketAddr, dst: SocketAddr) -> bool {
    dst.port() == listen.port()
        && match listen.ip() {
            IpAddr::V6(l) if l.is_unspecified() => true,
            IpAddr::V4(l) if l.is_unspecified() => dst.is_ipv4(),
            l => dst.ip() == l,
        }
}

/// The frame a UMEM address falls in (frames are `FRAME_SIZE`-aligned, the kernel's addresses point into them).
#[inline]
fn frame_index(addr: usize) -> usize {
    addr / FRAME_SIZE as usize
}

impl Datapath for XdpSocket {
    fn recv<F: FnMut(Addrs, &mut [u8])>(&mut self, max: usize, mut f: F) -> io::Result<usize> {
        self.reap();
        let want = max.min(self.scratch.len());
        // SAFETY: the RX ring belongs to this UMEM; the descriptors are written, not dereferenced.
        let n = unsafe { self.rx.consume(&mut self.scratch[..want]) };
        let mut delivered = 0;
        for k in 0..n {
            let d = self.scratch[k];
            let (addr, len) = (d.addr(), d.lengths().data());
            let i = frame_index(addr);
            if i >= self.descs.len() || self.frames.state[i] != FILL || addr + len > self.umem_len {
                self.xstats.frame_errors += 1;
                continue;
            }
            // SAFETY: frame `i` was on the RX ring and is now ours until it goes back on the fill ring
            // below; `addr + len` lies inside the mapping (checked above), and no other reference to
            // this frame exists while `buf` lives.
            let buf = unsafe { std::slice::from_raw_parts_mut(self.base.add(addr), len) };
            match frame::parse(buf) {
                Ok(p) if self.accepts(p.dst) => {
                    self.learn(p.src.ip(), p.src_mac, p.dst_mac);
                    let addrs = Addrs { local: p.dst, peer: p.src };
                    self.stats.rx_datagrams += 1;
                    self.stats.rx_bytes += p.payload.len() as u64;
                    delivered += 1;
                    f(addrs, &mut buf[p.payload]);
                }
                Ok(_) => {
                    self.xstats.rx_not_ours += 1;
                    self.stats.rx_dropped += 1;
                }
                Err(_) => {
                    self.xstats.rx_malformed += 1;
                    self.stats.rx_dropped += 1;
                }
            }
            // Straight back to the kernel, at the canonical address of the frame.
            self.refill.push(self.descs[i]);
        }
        if n > 0 {
            self.push_fill();
            self.top_up_fill();
        }
        Ok(delivered)
    }

    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        let i = match self.slot {
            Some(i) => i,
            None => {
                if self.free.is_empty() {
                    self.reap();
                }
                let Some(i) = self.free.pop() else {
                    self.xstats.tx_pool_empty += 1;
                    return None;
                };
                self.frames.moved(i as usize, FREE, SLOT);
                self.slot = Some(i);
                i
            }
        };
        let start = self.descs[i as usize].addr() + self.hdr_len;
        debug_assert!(start + self.max_payload <= self.umem_len);
        // SAFETY: frame `i` is in state SLOT: ours, on no ring, and only reachable through this borrow of
        // `self`; the range lies inside its frame (hdr_len + max_payload <= frame room, checked in bind).
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(start), self.max_payload) })
    }

    fn tx_commit(&mut self, len: usize, addrs: Addrs) {
        let Some(i) = self.slot.take() else {
            debug_assert!(false, "tx_commit without tx_slot");
            return;
        };
        let iu = i as usize;
        let hdr = frame::header_len(self.cfg.vlan.is_some(), addrs.peer.is_ipv6());
        let macs = if addrs.peer.is_ipv6() != addrs.local.is_ipv6()
            || len > self.max_payload
            || hdr > self.hdr_len
        {
            None
        } else {
            let m = self.neighbours.get(&addrs.peer.ip()).copied();
            self.xstats.tx_no_neighbour += u64::from(m.is_none());
            m
        };
        let Some((peer_mac, our_mac)) = macs else {
            self.stats.tx_dropped += 1;
            self.frames.moved(iu, SLOT, FREE);
            self.free.push(i);
            return;
        };
        let l2 = L2 { src: our_mac, dst: peer_mac, vlan: self.cfg.vlan };
        let mut d = self.descs[iu];
        // SAFETY: frame `i` is ours (state SLOT → PENDING here); the range is inside the frame.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.base.add(d.addr()), self.hdr_len + len) };
        if hdr < self.hdr_len {
            // An IPv4 peer of a dual-stack socket: the payload sits after room for an IPv6 header. The
            // descriptor must start at the frame (xsk-rs's TX descriptors do), so the payload moves down.
            buf.copy_within(self.hdr_len..self.hdr_len + len, hdr);
        }
        let flen = hdr + len;
        let buf = &mut buf[..flen];
        self.ip_id = self.ip_id.wrapping_add(1);
        let n = frame::build(buf, &l2, addrs.local, addrs.peer, len, self.ip_id);
        debug_assert_eq!(n, flen);
        // SAFETY: `d` is this UMEM's descriptor of frame `i`; only its length field is set here.
        unsafe { self.umem.data_mut(&mut d) }.cursor().set_pos(flen);
        self.frames.moved(iu, SLOT, PENDING);
        self.pending.push(d);
        self.stats.tx_datagrams += 1;
        self.stats.tx_bytes += len as u64;
        if self.pending.len() >= 64 {
            // Keep the ring fed during a long flush pass; the kick comes with `flush`.
            self.produce_tx();
            self.top_up_fill();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() && !self.unkicked {
            return Ok(());
        }
        let mut tries = 4;
        loop {
            let all = self.produce_tx();
            self.kick()?;
            self.reap();
            if all || tries == 0 {
                break;
            }
            tries -= 1;
        }
        self.stats.tx_batches += 1;
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if timeout.is_zero() {
            return Ok(());
        }
        let mut pfd = libc::pollfd { fd: self.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("poll on AF_XDP socket {} queue {}: {e}", self.cfg.iface, self.cfg.queue),
                ));
            }
        }
        Ok(())
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn stats(&self) -> BackendStats {
        self.stats
    }

    fn link_hint(&self, peer: IpAddr) -> Option<LinkHint> {
        let (p, o) = self.neighbours.get(&peer)?;
        let mut h = [0; 12];
        h[..6].copy_from_slice(p);
        h[6..].copy_from_slice(o);
        Some(LinkHint(h))
    }

    fn learn_link(&mut self, peer: IpAddr, hint: LinkHint) {
        let (mut p, mut o) = ([0; 6], [0; 6]);
        p.copy_from_slice(&hint.0[..6]);
        o.copy_from_slice(&hint.0[6..]);
        self.learn(peer, p, o);
    }
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn dual_stack_acceptance() {
        let any6 = "[::]:4433".parse().unwrap();
        let any4 = "0.0.0.0:4433".parse().unwrap();
        let one4 = "10.0.1.10:4433".parse().unwrap();
        let one6 = "[fd00:4000::10]:4433".parse().unwrap();
        let v4 = "10.0.1.10:4433".parse().unwrap();
        let v4other = "10.0.1.11:4433".parse().unwrap();
        let v6 = "[fd00:4000::10]:4433".parse().unwrap();
        let v4port = "10.0.1.10:4434".parse().unwrap();
        assert!(accepts(any6, v4) && accepts(any6, v6), "[::] serves both families");
        assert!(accepts(any4, v4) && !accepts(any4, v6), "0.0.0.0 serves IPv4 only");
        assert!(accepts(one4, v4) && !accepts(one4, v4other) && !accepts(one4, v6));
        assert!(accepts(one6, v6) && !accepts(one6, v4));
        assert!(!accepts(any6, v4port), "the port always matters");
    }
}
