//! AF_XDP backend: one XSK per NIC queue over its own UMEM, raw Ethernet frames in and out.
//!
//! Layers, bottom up: xsk-rs (UMEM registration, the four rings, socket lifetime) → frame ownership
//! (`Frames`: every UMEM frame is in exactly one place, checked on every move) → header parse/build
//! ([`crate::frame`]) → [`XdpSocket`] (the [`Datapath`] seam).
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
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::frame::{self, L2};
use crate::netdev;
use crate::seam::{Addrs, BackendStats, Datapath};

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

/// Where every frame is, by count (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameAudit {
    /// Frames in the UMEM.
    pub total: u32,
    /// Unused, ours.
    pub free: u32,
    /// On the fill or RX ring (the kernel's).
    pub fill: u32,
    /// Handed out by `tx_slot`, not committed.
    pub slot: u32,
    /// Committed, not yet on the TX ring.
    pub pending: u32,
    /// On the TX ring or in the driver, until the completion ring returns it.
    pub tx: u32,
    /// True when the per-state array agrees with the counts and the counts add up to `total`.
    pub consistent: bool,
}

const FREE: u8 = 0;
const FILL: u8 = 1;
const SLOT: u8 = 2;
const PENDING: u8 = 3;
const TX: u8 = 4;

/// Per-frame state with a count per state: every move checks where the frame was.
#[derive(Debug)]
struct Frames {
    state: Vec<u8>,
    count: [u32; 5],
}

impl Frames {
    fn new(n: usize) -> Frames {
        Frames { state: vec![FREE; n], count: [n as u32, 0, 0, 0, 0] }
    }

    /// Move frame `i` from `from` to `to`; false (and nothing moved) if it was elsewhere.
    #[inline]
    fn moved(&mut self, i: usize, from: u8, to: u8) -> bool {
        match self.state.get_mut(i) {
            Some(s) if *s == from => {
                *s = to;
                self.count[from as usize] -= 1;
                self.count[to as usize] += 1;
                true
            }
            _ => false,
        }
    }

    fn audit(&self) -> FrameAudit {
        let mut recount = [0u32; 5];
        for &s in &self.state {
            recount[s as usize] += 1;
        }
        let total = self.state.len() as u32;
        FrameAudit {
            total,
            free: self.count[FREE as usize],
            fill: self.count[FILL as usize],
            slot: self.count[SLOT as usize],
            pending: self.count[PENDING as usize],
            tx: self.count[TX as usize],
            consistent: recount == self.count && self.count.iter().sum::<u32>() == total,
        }
    }
}

/// Peer IP → (peer MAC, the MAC the peer addressed us with); looked up once per transmitted packet, so
/// with FxHash rather than SipHash (no untrusted key can grow it beyond [`MAX_NEIGHBOURS`]).
type Neighbours = HashMap<IpAddr, ([u8; 6], [u8; 6]), rustc_hash::FxBuildHasher>;

/// An error binding a socket, with what to do about it.
#[derive(Debug)]
pub struct BindError {
    msg: String,
    source: Option<io::Error>,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if let Some(e) = &self.source {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        io::Error::other(e.to_string())
    }
}

impl BindError {
    fn errno(&self) -> Option<i32> {
        self.source.as_ref().and_then(|e| e.raw_os_error())
    }

    /// The kernel's error when there is one, else the message.
    pub fn reason(&self) -> String {
        self.source.as_ref().map(|e| e.to_string()).unwrap_or_else(|| self.msg.clone())
    }

    /// The driver or device does not do what was asked (as opposed to permissions, a busy queue, …).
    pub fn is_unsupported(&self) -> bool {
        matches!(self.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT))
    }
}

/// Whether `iface` queue `queue` grants a zero-copy AF_XDP socket: binds one on a small UMEM on ordinary
/// pages and closes it. A refused bind must not cost a real UMEM: the kernel releases a registered UMEM's
/// pinned pages asynchronously, so its huge pages would not yet be free for the copy-mode bind that
/// follows. `Err` with [`BindError::is_unsupported`] means "no zero-copy here"; any other error would also
/// stop a copy-mode socket.
pub fn probe_zero_copy(iface: &str, queue: u32, listen: SocketAddr) -> Result<(), BindError> {
    let probe =
        XdpConfig { pages: UmemPages::Small, frames: 128, ring: 64, ..XdpConfig::new(iface, queue, listen) };
    XdpSocket::try_bind(&probe, true, &mut Vec::new()).map(drop)
}

fn bind_err(msg: impl Into<String>, source: Option<io::Error>) -> BindError {
    BindError { msg: msg.into(), source }
}

/// The error inside an xsk-rs error, if it carries one.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(|e| e.raw_os_error())
        .map(io::Error::from_raw_os_error)
}

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

type Parts = (TxQueue, RxQueue, FillQueue, CompQueue, Umem, Vec<FrameDesc>, bool, bool);

impl XdpSocket {
    /// Create the UMEM, bind an AF_XDP socket to `cfg.iface` queue `cfg.queue`, and fill the fill ring.
    /// The socket receives nothing until its fd is put in the XDP program's `xsks` map at `cfg.queue`.
    pub fn bind(cfg: &XdpConfig) -> Result<XdpSocket, BindError> {
        let mut notes = Vec::new();
        if !cfg.ring.is_power_of_two() || cfg.ring < 64 {
            return Err(bind_err(format!("ring size {} must be a power of two >= 64", cfg.ring), None));
        }
        if cfg.frames < 2 * cfg.ring {
            return Err(bind_err(
                format!(
                    "{} UMEM frames cannot fill a {}-entry fill ring and still transmit: use at least {}",
                    cfg.frames,
                    cfg.ring,
                    2 * cfg.ring
                ),
                None,
            ));
        }
        let (queues, _) = netdev::rx_queues(&cfg.iface).map_err(|e| bind_err(e.to_string(), None))?;
        if cfg.queue >= queues {
            return Err(bind_err(
                format!(
                    "{} has {queues} receive queue(s), so there is no queue {}: use fewer workers (-w {queues}) or more queues (`ethtool -L {} combined N`)",
                    cfg.iface, cfg.queue, cfg.iface
                ),
                None,
            ));
        }
        let mtu = netdev::mtu(&cfg.iface).map_err(|e| bind_err(e.to_string(), None))? as usize;
        // Room for the largest header served: an IPv6 one when IPv6 peers are served (dual stack: IPv4
        // frames then move their payload down by 20 bytes in `tx_commit`).
        let v6 = serves_ipv6(cfg.listen);
        let ip_hdr = if v6 { frame::IPV6_HLEN } else { frame::IPV4_HLEN };
        let hdr_len = frame::header_len(cfg.vlan.is_some(), v6);
        let frame_room = FRAME_SIZE as usize - XDP_HEADROOM;
        let max_payload =
            cfg.max_payload.min(mtu.saturating_sub(ip_hdr + frame::UDP_HLEN)).min(frame_room - hdr_len);
        if max_payload < 1200 {
            return Err(bind_err(
                format!(
                    "{} has MTU {mtu}: a {}-byte UDP payload leaves less than QUIC's 1200 bytes; raise the MTU (`ip link set dev {} mtu 1400`)",
                    cfg.iface, max_payload, cfg.iface
                ),
                None,
            ));
        }
        if max_payload < cfg.max_payload {
            notes.push(format!(
                "UDP payload capped at {max_payload} bytes by the MTU of {} ({mtu})",
                cfg.iface
            ));
        }

        let (tx, rx, fq, cq, umem, descs, zero_copy, hugetlb) = Self::bind_parts(cfg, &mut notes)?;
        let n = descs.len();
        // SAFETY: `descs[0]` came from this UMEM; `data` only forms a slice over its frame.
        let data0 = unsafe { umem.data(&descs[0]) };
        let base = data0.contents().as_ptr().wrapping_sub(descs[0].addr()) as *mut u8;
        let mut s = XdpSocket {
            cfg: cfg.clone(),
            rx,
            tx,
            fq,
            cq,
            umem,
            base,
            umem_len: n * FRAME_SIZE as usize,
            descs,
            frames: Frames::new(n),
            free: (0..n as u32).rev().collect(),
            scratch: vec![FrameDesc::default(); cfg.ring as usize],
            refill: Vec::with_capacity(cfg.ring as usize),
            pending: Vec::with_capacity(cfg.ring as usize),
            slot: None,
            unkicked: false,
            neighbours: Neighbours::default(),
            hdr_len,
            max_payload,
            ip_id: 0,
            zero_copy,
            hugetlb,
            stats: BackendStats::default(),
            xstats: XdpSockStats::default(),
            notes,
        };
        // Give the kernel a full fill ring.
        for _ in 0..cfg.ring {
            let i = s.free.pop().expect("frames >= 2 * ring");
            s.frames.moved(i as usize, FREE, FILL);
            s.refill.push(s.descs[i as usize]);
        }
        s.push_fill();
        if s.frames.count[FILL as usize] != cfg.ring {
            return Err(bind_err(
                format!("the fill ring of {} queue {} took only part of its frames", cfg.iface, cfg.queue),
                None,
            ));
        }
        Ok(s)
    }

    fn bind_parts(cfg: &XdpConfig, notes: &mut Vec<String>) -> Result<Parts, BindError> {
        let zc = match cfg.zero_copy {
            ZeroCopy::Off => false,
            ZeroCopy::Auto | ZeroCopy::On => match probe_zero_copy(&cfg.iface, cfg.queue, cfg.listen) {
                Ok(()) => true,
                Err(e) if !e.is_unsupported() => return Err(e),
                Err(e) if cfg.zero_copy == ZeroCopy::On => {
                    return Err(bind_err(
                        format!(
                            "--zero-copy on: the {} driver of {} refused a zero-copy AF_XDP socket on queue {} ({}); \
                             use --zero-copy auto to fall back to copy mode, or a NIC whose driver supports AF_XDP zero-copy",
                            netdev::driver(&cfg.iface),
                            cfg.iface,
                            cfg.queue,
                            e.reason()
                        ),
                        None,
                    ))
                }
                Err(e) => {
                    let driver = netdev::driver(&cfg.iface);
                    notes.push(format!(
                        "zero-copy refused by the {driver} driver of {} ({}): using copy mode; {}",
                        cfg.iface,
                        e.reason(),
                        netdev::zero_copy_hint(&driver, &netdev::kernel_release())
                    ));
                    false
                }
            },
        };
        // After a successful probe the kernel may hold the queue for ~0.5 s: `try_bind` retries EBUSY.
        Self::try_bind(cfg, zc, notes)
    }

    fn make_umem(
        cfg: &XdpConfig,
        notes: &mut Vec<String>,
    ) -> Result<(Umem, Vec<FrameDesc>, bool), BindError> {
        let ucfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("valid frame size"))
            .fill_queue_size(QueueSize::new(cfg.ring).map_err(|e| bind_err(e.to_string(), None))?)
            .comp_queue_size(QueueSize::new(cfg.ring).map_err(|e| bind_err(e.to_string(), None))?)
            .frame_headroom(0)
            .build()
            .map_err(|e| bind_err(e.to_string(), None))?;
        let count = NonZeroU32::new(cfg.frames).ok_or_else(|| bind_err("--xdp-frames must be > 0", None))?;
        let bytes = cfg.frames as usize * FRAME_SIZE as usize;
        let huge_ok = bytes.is_multiple_of(2 << 20);
        if cfg.pages != UmemPages::Small {
            if !huge_ok {
                if cfg.pages == UmemPages::HugeTlb {
                    return Err(bind_err(format!("a UMEM of {} frames is not a whole number of 2 MiB pages: use a multiple of 1024", cfg.frames), None));
                }
            } else {
                match Umem::new(ucfg, count, true) {
                    Ok((u, d)) => {
                        notes.push(format!("UMEM on 2 MiB hugetlb pages ({} MiB)", bytes >> 20));
                        return Ok((u, d, true));
                    }
                    Err(e) if cfg.pages == UmemPages::HugeTlb => {
                        return Err(bind_err(
                            format!(
                                "UMEM of {} MiB on 2 MiB hugetlb pages failed: reserve them first \
                                 (`echo $(( $(cat /proc/sys/vm/nr_hugepages) + {} )) > /proc/sys/vm/nr_hugepages`) or use --hugepages auto",
                                bytes >> 20,
                                bytes >> 21
                            ),
                            os_error(&e),
                        ))
                    }
                    Err(e) => notes.push(format!(
                        "UMEM on 4 KiB pages: no {} free 2 MiB hugetlb pages ({}); reserve them with `echo N > /proc/sys/vm/nr_hugepages`",
                        bytes >> 21,
                        os_error(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
                    )),
                }
            }
        }
        let (u, d) = Umem::new(ucfg, count, false).map_err(|e| {
            let src = os_error(&e);
            bind_err(format!("cannot create a {} MiB UMEM: {e} (is RLIMIT_MEMLOCK too low? run as root or `ulimit -l unlimited`)", bytes >> 20), src)
        })?;
        if cfg.pages == UmemPages::Small {
            notes.push(format!("UMEM on 4 KiB pages ({} MiB)", bytes >> 20));
        }
        Ok((u, d, false))
    }

    fn try_bind(cfg: &XdpConfig, zc: bool, notes: &mut Vec<String>) -> Result<Parts, BindError> {
        let deadline = Instant::now() + EBUSY_RETRY;
        loop {
            match Self::try_bind_once(cfg, zc, notes) {
                // A just-closed socket on this queue is released asynchronously (~0.5 s).
                Err(e) if e.errno() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.errno() == Some(libc::EBUSY) => {
                    return Err(bind_err(
                        format!(
                            "{} queue {} already has an AF_XDP socket (another server running?)",
                            cfg.iface, cfg.queue
                        ),
                        e.source,
                    ))
                }
                r => return r,
            }
        }
    }

    fn try_bind_once(cfg: &XdpConfig, zc: bool, notes: &mut Vec<String>) -> Result<Parts, BindError> {
        let mut umem_notes = Vec::new();
        let (umem, descs, hugetlb) = Self::make_umem(cfg, &mut umem_notes)?;
        let mut flags = BindFlags::XDP_USE_NEED_WAKEUP;
        flags |= if zc { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
        let scfg = SocketConfig::builder()
            .rx_queue_size(
                QueueSize::new(cfg.ring * RX_RING_FACTOR).map_err(|e| bind_err(e.to_string(), None))?,
            )
            .tx_queue_size(QueueSize::new(cfg.ring).map_err(|e| bind_err(e.to_string(), None))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .xdp_flags(XdpFlags::empty())
            .bind_flags(flags)
            .build();
        let ifname: Interface =
            cfg.iface.parse().map_err(|_| bind_err(format!("bad interface name {:?}", cfg.iface), None))?;
        // SAFETY: the UMEM is not shared (each socket makes its own), so the shared-UMEM double-free caveat
        // of `Socket::new` does not apply; INHIBIT_PROG_LOAD is set anyway.
        match unsafe { xsk_rs::Socket::new(scfg, &umem, &ifname, cfg.queue) } {
            Ok((tx, rx, Some((fq, cq)))) => {
                let granted = xdp_zero_copy(rx.fd().as_raw_fd()).unwrap_or(zc);
                if !granted {
                    // Copy mode transmits at most 32 frames per `sendto` unless told otherwise (Linux 6.17+).
                    match set_tx_budget(rx.fd().as_raw_fd(), cfg.ring) {
                        Ok(()) => {
                            umem_notes.push(format!("copy-mode transmit budget {} frames per kick", cfg.ring))
                        }
                        Err(e) => umem_notes.push(format!(
                            "copy-mode transmit budget stays at 32 frames per kick: Linux {} has no \
                             XDP_MAX_TX_SKB_BUDGET (6.17+) ({e}); transmit kicks repeat instead",
                            netdev::kernel_release()
                        )),
                    }
                }
                notes.extend(umem_notes);
                notes.push(format!(
                    "AF_XDP socket on {} queue {} in {} mode",
                    cfg.iface,
                    cfg.queue,
                    if granted { "zero-copy" } else { "copy" }
                ));
                Ok((tx, rx, fq, cq, umem, descs, granted, hugetlb))
            }
            Ok(_) => Err(bind_err("libxdp returned no fill/completion rings for a fresh UMEM", None)),
            Err(e) => {
                let os = os_error(&e);
                let msg = match os.as_ref().and_then(|e| e.raw_os_error()) {
                    Some(libc::EPERM | libc::EACCES) => {
                        "AF_XDP needs root (or CAP_NET_RAW + CAP_NET_ADMIN + CAP_BPF)".to_string()
                    }
                    Some(libc::ENODEV | libc::ENXIO) => {
                        format!("no interface `{}` in this network namespace", cfg.iface)
                    }
                    _ => format!(
                        "cannot bind an AF_XDP socket ({} mode) to {} queue {}: {e}",
                        if zc { "zero-copy" } else { "copy" },
                        cfg.iface,
                        cfg.queue
                    ),
                };
                Err(bind_err(msg, os))
            }
        }
    }

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

    /// Frames back from the completion ring to the free pool.
    fn reap(&mut self) {
        loop {
            let want = self.scratch.len();
            // SAFETY: the completion ring belongs to this UMEM; the descriptors only carry addresses.
            let n = unsafe { self.cq.consume(&mut self.scratch[..want]) };
            for k in 0..n {
                let i = frame_index(self.scratch[k].addr());
                if self.frames.moved(i, TX, FREE) {
                    self.free.push(i as u32);
                } else {
                    self.xstats.frame_errors += 1;
                }
            }
            if n < want {
                return;
            }
        }
    }

    /// Put `self.refill` on the fill ring; what does not fit (the ring was topped up meanwhile) goes back to
    /// the free pool.
    fn push_fill(&mut self) {
        let mut done = 0;
        while done < self.refill.len() {
            let room = self.fq.nb_free((self.refill.len() - done) as u32) as usize;
            let take = room.min(self.refill.len() - done);
            if take == 0 {
                break;
            }
            // SAFETY: every descriptor in `refill` is a frame of this UMEM in state FILL, not on any ring.
            let n = unsafe { self.fq.produce(&self.refill[done..done + take]) };
            if n == 0 {
                break;
            }
            done += n;
        }
        if done < self.refill.len() {
            // The fill ring is full (topped up from the free pool while these frames were in the RX ring):
            // they go back to the pool.
            for d in self.refill.drain(done..) {
                let i = frame_index(d.addr());
                if self.frames.moved(i, FILL, FREE) {
                    self.free.push(i as u32);
                }
            }
        }
        self.refill.clear();
        if self.fq.needs_wakeup() {
            // Zero-copy drivers sleep when the fill ring ran dry; poll wakes them.
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// Keep the fill ring full from the free pool while received frames wait in the RX ring, so the kernel
    /// can go on receiving during a long flush pass (up to a fill ring plus an RX ring of frames, instead of
    /// one fill ring). `ring` frames always stay for transmit.
    fn top_up_fill(&mut self) {
        let ring = self.cfg.ring as usize;
        let fill = self.frames.count[FILL as usize] as usize;
        let spare = self.free.len().saturating_sub(ring);
        let want = ((1 + RX_RING_FACTOR as usize) * ring).saturating_sub(fill).min(spare);
        if want < 64 {
            return;
        }
        // The fill ring holds at most `ring`: asking for more would make libxdp re-read the kernel's index.
        let take = (self.fq.nb_free(want.min(ring) as u32) as usize).min(want);
        if take < 64 {
            return;
        }
        for _ in 0..take {
            let i = self.free.pop().expect("spare counted");
            self.frames.moved(i as usize, FREE, FILL);
            self.refill.push(self.descs[i as usize]);
        }
        self.push_fill();
        self.xstats.fill_top_ups += 1;
    }

    /// Move committed frames to the TX ring; true if all of them went.
    fn produce_tx(&mut self) -> bool {
        let mut done = 0;
        while done < self.pending.len() {
            // libxdp reserves all or nothing: ask for no more than the ring has room for.
            let room = self.tx.nb_free((self.pending.len() - done) as u32) as usize;
            let take = room.min(self.pending.len() - done);
            if take == 0 {
                break;
            }
            // SAFETY: every descriptor in `pending` is a frame of this UMEM in state PENDING, not on a ring.
            let n = unsafe { self.tx.produce(&self.pending[done..done + take]) };
            if n == 0 {
                break;
            }
            for d in &self.pending[done..done + n] {
                let i = frame_index(d.addr());
                self.frames.moved(i, PENDING, TX);
            }
            done += n;
            self.unkicked = true;
        }
        self.pending.drain(..done);
        self.pending.is_empty()
    }

    /// Ask the kernel to transmit what is on the TX ring.
    fn kick(&mut self) -> io::Result<()> {
        if !self.unkicked {
            return Ok(());
        }
        if !self.tx.needs_wakeup() {
            self.unkicked = false;
            return Ok(());
        }
        let fd = self.tx.fd().as_raw_fd();
        // Copy mode transmits at most its budget (32 frames before Linux 6.17 or without
        // XDP_MAX_TX_SKB_BUDGET) per call and says EAGAIN when more are queued.
        let mut rounds = self.cfg.ring / 32 + 2;
        loop {
            self.xstats.tx_kicks += 1;
            // SAFETY: a zero-length sendto on our own AF_XDP fd with no buffer and no address.
            let r = unsafe { libc::sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            if r >= 0 {
                self.unkicked = false;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) if rounds > 0 => rounds -= 1,
                // Ring still full of unsent frames (driver busy, no skb memory): the next flush retries.
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => return Ok(()),
                _ => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("AF_XDP transmit kick on {} queue {}: {e}", self.cfg.iface, self.cfg.queue),
                    ))
                }
            }
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

/// Whether `listen` serves IPv6 peers (and so needs room for IPv6 headers).
fn serves_ipv6(listen: SocketAddr) -> bool {
    listen.is_ipv6()
}

/// The frame a UMEM address falls in (frames are `FRAME_SIZE`-aligned, the kernel's addresses point into them).
#[inline]
fn frame_index(addr: usize) -> usize {
    addr / FRAME_SIZE as usize
}

/// `SOL_XDP` socket option level.
const SOL_XDP: libc::c_int = 283;

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17+): frames one copy-mode `sendto` may transmit, 32..=TX ring size.
fn set_tx_budget(fd: i32, budget: u32) -> io::Result<()> {
    const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
    // SAFETY: a u32 option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `XDP_OPTIONS` → zero-copy bit.
fn xdp_zero_copy(fd: i32) -> Option<bool> {
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut opts: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `opts` and `len` are valid for writes of the sizes given.
    let r = unsafe { libc::getsockopt(fd, SOL_XDP, XDP_OPTIONS, (&mut opts as *mut u32).cast(), &mut len) };
    (r == 0).then_some(opts & XDP_OPTIONS_ZEROCOPY != 0)
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
