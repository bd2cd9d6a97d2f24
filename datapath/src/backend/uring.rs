//! io_uring UDP backend: one `SO_REUSEPORT` socket and one ring per worker; a multishot `RecvMsg` into a
//! provided-buffer ring on receive, GSO-batched `SendMsg`s out of a pool of batch buffers on transmit.
//!
//! Layers, bottom up (STYLE 4): `Mmap` (an anonymous mapping, unmapped on drop) → `BufRing` (the
//! kernel's provided-buffer ring over two mappings) → `Rx` / `Tx` (packet bookkeeping) →
//! [`UringSocket`] (the [`Datapath`] seam).
//!
//! Ownership (STYLE 10): every buffer, `msghdr`, `iovec`, cmsg and sockaddr handed to the kernel lives in
//! memory this socket owns, at an address that does not move, until its completion has been reaped. Drop
//! cancels what is in flight and waits for those completions before anything is unmapped.
//!
//! Transmit layout: a batch buffer holds up to `max_segments` datagrams back to back. Consecutive commits
//! to one peer with equal sizes become one GSO `sendmsg`; a commit to another peer starts a new `sendmsg`
//! in the same buffer right where its bytes already are, so nothing is ever copied. Each datagram position
//! in a buffer has its own message header slot, so a GSO send the kernel refuses can be re-sent datagram by
//! datagram without losing anything.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, Socket, Type};

use crate::seam::{Addrs, BackendStats, Datapath};

/// Socket receive buffer: the predecessor's `SOCKET_RECV_BUF_SIZE` (32 MiB), room for a handshake burst
/// from tens of thousands of clients while the worker is busy. The kernel doubles what it is given and caps
/// the plain option at `net.core.rmem_max` (see [`UringSocket::effective_bufs`]).
pub const DEFAULT_RECV_BUF: usize = 32 << 20;
/// Socket send buffer: the predecessor's `SOCKET_SEND_BUF_SIZE` (32 MiB); capped at `net.core.wmem_max`.
pub const DEFAULT_SEND_BUF: usize = 32 << 20;
/// Submission queue depth: the predecessor's `IO_URING_SQ_DEPTH` (32768, also the kernel's
/// `IORING_MAX_ENTRIES`). Larger values are clamped by the kernel; when it cannot allocate a ring this big
/// [`UringSocket::bind`] retries with [`FALLBACK_SQ_DEPTH`] (see [`UringSocket::sq_depth`]).
pub const DEFAULT_SQ_DEPTH: u32 = 32768;
/// The depth [`UringSocket::bind`] falls back to when the kernel refuses the configured one.
pub const FALLBACK_SQ_DEPTH: u32 = 4096;
/// Provided receive buffers per socket (a power of two, at most 32768): one full ring of datagrams can wait
/// for the worker without the multishot receive running dry.
pub const DEFAULT_BUF_COUNT: u16 = 4096;
/// Bytes per provided receive buffer: the 48-byte io_uring recvmsg header and peer name, plus a datagram
/// bigger than any path MTU we serve (1500-byte Ethernet).
pub const DEFAULT_BUF_SIZE: usize = 2048;
/// Largest UDP payload we send: the reference VLAN's 1400-byte MTU minus the IPv6 (40) and UDP (8)
/// headers is 1352; 1350 keeps clear of it for IPv4 and IPv6 alike.
pub const DEFAULT_MAX_PAYLOAD: usize = 1350;
/// GSO segments per send: the kernel's `UDP_MAX_SEGMENTS` before Linux 6.9 (64). Sends are also kept under
/// the 64 KiB IP datagram limit, so at 1350 bytes a batch holds at most 48.
pub const DEFAULT_MAX_SEGMENTS: usize = 64;
/// Batch buffers per socket: 256 × 64 × 1350 B ≈ 22 MB of send memory, touched only as it is used.
pub const DEFAULT_TX_BATCHES: usize = 256;

/// Largest UDP payload of one GSO send: the IPv4 total-length limit minus IPv4 and UDP headers.
const GSO_MAX_BYTES: usize = u16::MAX as usize - 20 - 8;
/// Largest UDP payload at all.
const UDP_MAX_PAYLOAD: usize = GSO_MAX_BYTES;
/// Bytes reserved for the peer address in each receive buffer (`sockaddr_in6` is 28; 32 keeps the payload
/// 16-byte aligned behind the 16-byte `io_uring_recvmsg_out` header).
const RX_NAME_LEN: usize = 32;
/// Bytes in front of the payload in every receive buffer.
const RX_HEADER_LEN: usize = 16 + RX_NAME_LEN;
/// The kernel's limit on provided-buffer ring entries.
const MAX_BUF_COUNT: u16 = 32768;
/// Buffer group id of the receive buffers (each socket has its own ring, so one group suffices).
const RX_BGID: u16 = 0;
/// `user_data` of the multishot receive.
const RECV_UD: u64 = 0;
/// `user_data` bit marking a send; the low bits are the message slot.
const SEND_TAG: u64 = 1 << 63;
/// How long Drop waits for in-flight operations before leaking their memory instead of unmapping it.
const DROP_DRAIN: Duration = Duration::from_secs(2);

/// Settings of one io_uring socket; every knob is meant to be a server flag with these defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Address to bind (every worker binds the same one with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Requested `SO_RCVBUF` ([`DEFAULT_RECV_BUF`]).
    pub recv_buf: usize,
    /// Requested `SO_SNDBUF` ([`DEFAULT_SEND_BUF`]).
    pub send_buf: usize,
    /// Submission queue entries ([`DEFAULT_SQ_DEPTH`]).
    pub sq_depth: u32,
    /// Provided receive buffers, a power of two up to 32768 ([`DEFAULT_BUF_COUNT`]).
    pub buf_count: u16,
    /// Bytes per provided receive buffer, including a 48-byte header ([`DEFAULT_BUF_SIZE`]).
    pub buf_size: usize,
    /// Use UDP GSO (`UDP_SEGMENT`) for consecutive datagrams to one peer; turned off at run time if the
    /// kernel or device refuses it.
    pub gso: bool,
    /// Bytes per transmit slot ([`DEFAULT_MAX_PAYLOAD`]).
    pub max_payload: usize,
    /// Datagrams per batch buffer and GSO send ([`DEFAULT_MAX_SEGMENTS`]).
    pub max_segments: usize,
    /// Batch buffers in the transmit pool ([`DEFAULT_TX_BATCHES`]).
    pub tx_batches: usize,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4433)),
            recv_buf: DEFAULT_RECV_BUF,
            send_buf: DEFAULT_SEND_BUF,
            sq_depth: DEFAULT_SQ_DEPTH,
            buf_count: DEFAULT_BUF_COUNT,
            buf_size: DEFAULT_BUF_SIZE,
            gso: true,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_segments: DEFAULT_MAX_SEGMENTS,
            tx_batches: DEFAULT_TX_BATCHES,
        }
    }
}

impl UringConfig {
    /// Reject settings the kernel ABI or our index encoding cannot represent.
    fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.buf_count == 0 || !self.buf_count.is_power_of_two() || self.buf_count > MAX_BUF_COUNT {
            return bad(format!("buf_count {} must be a power of two in 1..=32768", self.buf_count));
        }
        if self.buf_size < RX_HEADER_LEN + 64 || u32::try_from(self.buf_size).is_err() {
            return bad(format!("buf_size {} must be at least {}", self.buf_size, RX_HEADER_LEN + 64));
        }
        if self.max_payload == 0 || self.max_payload > UDP_MAX_PAYLOAD {
            return bad(format!("max_payload {} must be in 1..={UDP_MAX_PAYLOAD}", self.max_payload));
        }
        if self.max_segments == 0 || self.max_segments > 1024 {
            return bad(format!("max_segments {} must be in 1..=1024", self.max_segments));
        }
        if self.tx_batches == 0 || self.tx_batches > u32::MAX as usize {
            return bad(format!("tx_batches {} must be at least 1", self.tx_batches));
        }
        if self.sq_depth == 0 {
            return bad("sq_depth must be at least 1".into());
        }
        Ok(())
    }
}

/// An anonymous private read/write mapping, page-aligned, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// Map `len` zeroed bytes (`len` > 0).
    fn new(len: usize, what: &str) -> io::Result<Mmap> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no existing
        // memory; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mmap {len} bytes for {what}: {e}")));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other(format!("mmap for {what} returned null")))?;
        Ok(Mmap { ptr, len })
    }

    /// Base address.
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Give the mapping up without unmapping it (used when the kernel might still write to it).
    fn leak(&mut self) {
        self.len = 0;
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are exactly what mmap returned, and the owner guarantees the kernel no
            // longer uses the memory (see `UringSocket::drop`). An error here would only leak the range.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// One entry of a provided-buffer ring: the kernel's `struct io_uring_buf`. Entry 0's `resv` is the tail.
#[repr(C)]
struct BufDesc {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<BufDesc>() == 16);
/// Byte offset of the ring tail (`io_uring_buf_ring.tail` overlays entry 0's `resv`).
const BUF_RING_TAIL_OFFSET: usize = std::mem::offset_of!(BufDesc, resv);

/// The kernel's provided-buffer ring (`IORING_REGISTER_PBUF_RING`) and the receive buffers it hands out.
/// Each buffer is always either in the ring (the kernel's) or being handed to the callback (ours).
struct BufRing {
    /// The ring of [`BufDesc`]; page aligned, as the kernel requires.
    ring: Mmap,
    /// `count * size` bytes of buffers.
    mem: Mmap,
    count: u16,
    size: usize,
    /// Our copy of the tail; the kernel's copy is published with a release store.
    tail: u16,
}

impl BufRing {
    /// Map the ring and buffers and put every buffer in the ring.
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let ring = Mmap::new(usize::from(count) * std::mem::size_of::<BufDesc>(), "buffer ring")?;
        let mem_len = usize::from(count)
            .checked_mul(size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large"))?;
        let mem = Mmap::new(mem_len, "receive buffers")?;
        let mut bufs = BufRing { ring, mem, count, size, tail: 0 };
        for bid in 0..count {
            bufs.push(bid);
        }
        Ok(bufs)
    }

    /// Register the ring with `ring` as buffer group `bgid`.
    fn register(&self, ring: &IoUring, bgid: u16) -> io::Result<()> {
        // SAFETY: the ring mapping is page aligned, holds `count` entries and outlives the registration:
        // `UringSocket` drops the io_uring (ending the registration) before this mapping.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.count, bgid, 0)
        }
    }

    /// The whole buffer `bid`.
    fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        assert!(bid < self.count, "buffer id {bid} out of range");
        // SAFETY: `bid < count`, so the range lies inside `mem`; the kernel handed this buffer to us in a
        // completion and gets it back only through `push`, so nothing else accesses it meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(self.mem.as_ptr().add(usize::from(bid) * self.size), self.size)
        }
    }

    /// Give buffer `bid` back to the kernel: write its descriptor at the tail, then publish the tail.
    fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: `idx < count`, so the entry is inside the ring mapping. The kernel reads only entries
        // between its head and the published tail, and this one is past the tail until the store below.
        // Fields are written one by one so entry 0's `resv` (the live tail) is never overwritten.
        unsafe {
            let desc = self.ring.as_ptr().cast::<BufDesc>().add(idx);
            std::ptr::addr_of_mut!((*desc).addr)
                .write(self.mem.as_ptr().add(usize::from(bid) * self.size) as u64);
            std::ptr::addr_of_mut!((*desc).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*desc).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is a naturally aligned u16 inside the ring mapping, which lives as long as
        // `self`; the kernel reads it with an acquire load, so it is only ever accessed atomically.
        let tail = unsafe { AtomicU16::from_ptr(self.ring.as_ptr().add(BUF_RING_TAIL_OFFSET).cast()) };
        tail.store(self.tail, Ordering::Release);
    }
}

/// Receive state: the multishot recvmsg and the completions not yet handed to the caller.
struct Rx {
    bufs: BufRing,
    /// The header the multishot recvmsg was armed with (only `msg_namelen`/`msg_controllen` matter); the
    /// kernel reads it at submission and `RecvMsgOut::parse` needs the same one.
    msghdr: Box<libc::msghdr>,
    /// Receive completions `(result, flags)` reaped from the CQ but not processed yet.
    pending: VecDeque<(i32, u32)>,
    /// A multishot receive is in the kernel (its final CQE, without `F_MORE`, has not been reaped).
    armed: bool,
    /// Arm on the next chance: set at start and when a final CQE has been processed.
    want_arm: bool,
    /// Times the receive was armed again after ending.
    rearms: u64,
}

/// Room for a `sockaddr_in` or `sockaddr_in6`, as `msg_name` of a send.
#[repr(C)]
#[derive(Clone, Copy)]
union SockaddrBuf {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// The one control message a GSO send carries: `cmsghdr` then `UDP_SEGMENT`'s u16, `CMSG_SPACE(2)` long.
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

// SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic (unsafe only by libc's declaration).
const GSO_CMSG_LEN: usize = unsafe { libc::CMSG_LEN(2) } as usize;
// SAFETY: as above.
const GSO_CMSG_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
const _: () = assert!(std::mem::size_of::<GsoCmsg>() == GSO_CMSG_SPACE);
const _: () = assert!(std::mem::offset_of!(GsoCmsg, segment) == GSO_CMSG_LEN - 2);

/// One `sendmsg` being built or in flight, and what to count when it completes. The kernel reads `hdr`
/// and, through it, `iov`, `name` and `cmsg` until the completion is reaped, so slots never move.
struct TxMsg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: SockaddrBuf,
    cmsg: GsoCmsg,
    peer: SocketAddr,
    /// Offset of the first datagram in the transmit memory.
    off: usize,
    /// Bytes of all datagrams.
    len: usize,
    /// Size of every datagram but the last (the GSO segment size).
    seg_size: usize,
    /// Datagrams.
    segs: usize,
}

impl TxMsg {
    /// An unused slot.
    fn empty() -> TxMsg {
        // SAFETY: msghdr, iovec, the sockaddr union and cmsghdr are plain C structs of integers and raw
        // pointers, for which all-zero bytes are valid (null pointers, zero lengths).
        let (hdr, iov, name, cmsg_hdr) = unsafe { std::mem::zeroed() };
        TxMsg {
            hdr,
            iov,
            name,
            cmsg: GsoCmsg { hdr: cmsg_hdr, segment: 0, _pad: [0; 6] },
            peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            off: 0,
            len: 0,
            seg_size: 0,
            segs: 0,
        }
    }

    /// Point `hdr` at this slot's own iovec/name/cmsg for `len` bytes at `base`, with a `UDP_SEGMENT`
    /// cmsg when `gso_segment` is given.
    fn prepare(&mut self, base: *mut u8, len: usize, gso_segment: Option<u16>) {
        self.iov = libc::iovec { iov_base: base.cast(), iov_len: len };
        let name_len = write_sockaddr(self.peer, &mut self.name);
        self.hdr.msg_name = std::ptr::addr_of_mut!(self.name).cast();
        self.hdr.msg_namelen = name_len;
        self.hdr.msg_iov = std::ptr::addr_of_mut!(self.iov);
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_flags = 0;
        match gso_segment {
            Some(segment) => {
                self.cmsg.hdr.cmsg_len = GSO_CMSG_LEN as _;
                self.cmsg.hdr.cmsg_level = libc::SOL_UDP;
                self.cmsg.hdr.cmsg_type = libc::UDP_SEGMENT;
                self.cmsg.segment = segment;
                self.hdr.msg_control = std::ptr::addr_of_mut!(self.cmsg).cast();
                self.hdr.msg_controllen = GSO_CMSG_SPACE as _;
            }
            None => {
                self.hdr.msg_control = std::ptr::null_mut();
                self.hdr.msg_controllen = 0;
            }
        }
    }
}

/// Bookkeeping of one batch buffer.
#[derive(Clone, Copy, Default)]
struct TxBuf {
    /// Bytes filled.
    used: usize,
    /// Datagrams filled (the next message starts at slot `segs`).
    segs: usize,
    /// Messages committed from this buffer and not completed yet.
    refs: usize,
}

/// Transmit state: the batch buffer pool and the messages built in it.
struct Tx {
    /// `batches * buf_cap` bytes.
    mem: Mmap,
    /// Bytes per batch buffer (`max_payload * max_segments`).
    buf_cap: usize,
    max_payload: usize,
    max_segments: usize,
    bufs: Box<[TxBuf]>,
    /// `batches * max_segments` message slots; slot `b * max_segments + i` belongs to datagram `i` of
    /// buffer `b`. A boxed slice never reallocates, so the kernel may hold pointers into it.
    msgs: Box<[TxMsg]>,
    /// Buffers with nothing committed or in flight.
    free: Vec<usize>,
    /// The buffer `tx_slot` hands out from.
    current: Option<usize>,
    /// The message still accepting GSO segments (in `current`).
    open: Option<usize>,
    /// Messages committed and not submitted.
    ready: Vec<usize>,
    /// Failed GSO messages to re-send datagram by datagram.
    retry: Vec<usize>,
    /// Messages submitted and not completed.
    in_flight: usize,
    gso: bool,
}

impl Tx {
    /// Map the pool.
    fn new(cfg: &UringConfig) -> io::Result<Tx> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "transmit pool size overflows");
        let buf_cap = cfg.max_payload.checked_mul(cfg.max_segments).ok_or_else(too_big)?;
        let mem_len = buf_cap.checked_mul(cfg.tx_batches).ok_or_else(too_big)?;
        let slots = cfg.tx_batches.checked_mul(cfg.max_segments).ok_or_else(too_big)?;
        Ok(Tx {
            mem: Mmap::new(mem_len, "transmit batches")?,
            buf_cap,
            max_payload: cfg.max_payload,
            max_segments: cfg.max_segments,
            bufs: vec![TxBuf::default(); cfg.tx_batches].into_boxed_slice(),
            msgs: (0..slots).map(|_| TxMsg::empty()).collect(),
            free: (0..cfg.tx_batches).rev().collect(),
            current: None,
            open: None,
            ready: Vec::with_capacity(slots),
            retry: Vec::new(),
            in_flight: 0,
            gso: cfg.gso,
        })
    }

    /// Pointer to byte `off` of the transmit memory.
    fn ptr(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.mem.len);
        // SAFETY: callers pass offsets inside the mapping (slot and message offsets are bounded by
        // construction: buffer index < batches, offset in buffer + length <= buf_cap).
        unsafe { self.mem.as_ptr().add(off) }
    }

    /// Most datagrams of `seg_size` bytes one GSO send may carry.
    fn segment_limit(&self, seg_size: usize) -> usize {
        if seg_size == 0 {
            return 1;
        }
        self.max_segments.min(GSO_MAX_BYTES / seg_size).max(1)
    }

    /// Stop appending to the open message; it waits in `ready` for the next flush.
    fn close_open(&mut self) {
        if let Some(m) = self.open.take() {
            self.ready.push(m);
        }
    }

    /// Return buffer `b` to the pool if nothing in it is pending and it is not being filled.
    fn release_if_idle(&mut self, b: usize) {
        if self.bufs[b].refs == 0 && self.current != Some(b) {
            self.bufs[b].used = 0;
            self.bufs[b].segs = 0;
            self.free.push(b);
        }
    }

    /// Record datagram(s) `len` bytes long just written at the current slot, for `peer`.
    fn commit(&mut self, len: usize, peer: SocketAddr) -> bool {
        let Some(b) = self.current else { return false };
        if len > self.max_payload {
            return false;
        }
        if let Some(m) = self.open {
            let msg = &self.msgs[m];
            let fits = msg.peer == peer
                && len <= msg.seg_size
                && msg.segs < self.segment_limit(msg.seg_size)
                && self.gso;
            if fits {
                let msg = &mut self.msgs[m];
                msg.segs += 1;
                msg.len += len;
                let short = len < msg.seg_size;
                self.bufs[b].used += len;
                self.bufs[b].segs += 1;
                if short {
                    self.close_open();
                }
                self.retire_if_full(b);
                return true;
            }
            self.close_open();
        }
        let buf = &mut self.bufs[b];
        let m = b * self.max_segments + buf.segs;
        let msg = &mut self.msgs[m];
        msg.peer = peer;
        msg.off = b * self.buf_cap + buf.used;
        msg.len = len;
        msg.seg_size = len;
        msg.segs = 1;
        buf.used += len;
        buf.segs += 1;
        buf.refs += 1;
        if self.gso && len > 0 {
            self.open = Some(m);
        } else {
            self.ready.push(m);
        }
        self.retire_if_full(b);
        true
    }

    /// When buffer `b` has no slot left, close its open message and stop filling it.
    fn retire_if_full(&mut self, b: usize) {
        if self.bufs[b].segs == self.max_segments {
            self.close_open();
            self.current = None;
            self.release_if_idle(b);
        }
    }
}

/// A UDP socket driven by its own io_uring: the io_uring backend of [`Datapath`].
///
/// Drive it from the worker thread that owns it: io_uring runs completion work on the thread that
/// submitted, and the receive is armed by the first [`Datapath::recv`] or [`Datapath::wait`], so binding on
/// another thread and moving the socket over is fine.
pub struct UringSocket {
    // Field order is drop order: the ring (and with it the buffer-ring registration) goes first.
    ring: IoUring,
    socket: Socket,
    local: SocketAddr,
    effective_bufs: (usize, usize),
    rx: Rx,
    tx: Tx,
    stats: BackendStats,
}

// SAFETY: the raw pointers inside (mappings, msghdrs) point only into memory this value owns exclusively,
// and the ring is used from one thread at a time through `&mut self`; moving it to another thread moves
// that ownership with it.
unsafe impl Send for UringSocket {}

impl fmt::Debug for UringSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringSocket")
            .field("local", &self.local)
            .field("sq_depth", &self.sq_depth())
            .field("gso", &self.tx.gso)
            .field("rearms", &self.rx.rearms)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl UringSocket {
    /// Bind a UDP socket on `cfg.listen` (with `SO_REUSEPORT`, so every worker binds the same address),
    /// set up its ring and buffers. The receive is armed on first use.
    pub fn bind(cfg: &UringConfig) -> io::Result<UringSocket> {
        cfg.validate()?;
        let socket = open_socket(cfg)?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other(format!("UDP {}: bound address is not IP", cfg.listen)))?;
        let effective_bufs = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
        let ring = setup_ring(cfg)?;
        let bufs = BufRing::new(cfg.buf_count, cfg.buf_size)?;
        bufs.register(&ring, RX_BGID).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the io_uring provided-buffer ring (Linux >= 5.19): {e}"),
            )
        })?;
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = RX_NAME_LEN as libc::socklen_t;
        let rx = Rx {
            bufs,
            msghdr,
            pending: VecDeque::with_capacity(usize::from(cfg.buf_count) + 16),
            armed: false,
            want_arm: true,
            rearms: 0,
        };
        Ok(UringSocket {
            ring,
            socket,
            local,
            effective_bufs,
            rx,
            tx: Tx::new(cfg)?,
            stats: BackendStats::default(),
        })
    }

    /// The bound address (with the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// `(SO_RCVBUF, SO_SNDBUF)` as the kernel reports them (twice what was granted); less than twice the
    /// configured sizes means `net.core.rmem_max`/`wmem_max` capped them.
    pub fn effective_bufs(&self) -> (usize, usize) {
        self.effective_bufs
    }

    /// Submission queue entries the kernel gave us (may be less than configured).
    pub fn sq_depth(&self) -> u32 {
        self.ring.params().sq_entries()
    }

    /// Times the multishot receive ended (e.g. `ENOBUFS` with every buffer in use) and was armed again.
    pub fn rearms(&self) -> u64 {
        self.rx.rearms
    }

    /// Whether sends still use GSO (it is turned off when the kernel refuses a GSO send).
    pub fn gso(&self) -> bool {
        self.tx.gso
    }

    /// Arm the multishot receive if it is not in the kernel and should be, and submit.
    fn arm_if_needed(&mut self) -> io::Result<()> {
        if self.rx.armed || !self.rx.want_arm {
            return Ok(());
        }
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            &*self.rx.msghdr as *const libc::msghdr,
            RX_BGID,
        )
        .build()
        .user_data(RECV_UD);
        push_sqe(&mut self.ring, &entry)?;
        self.rx.armed = true;
        self.rx.want_arm = false;
        submit(&self.ring).map_err(|e| context(e, format!("arming io_uring recvmsg on {}", self.local)))
    }

    /// Take every completion out of the CQ: sends are accounted at once, receives queued in `rx.pending`.
    fn reap(&mut self) {
        if self.ring.completion().is_empty() {
            let sq = self.ring.submission();
            // Completions may wait in the kernel (deferred task work, CQ overflow); entering flushes them.
            if sq.taskrun() || sq.cq_overflow() {
                drop(sq);
                let _ = submit(&self.ring);
            }
        }
        for cqe in self.ring.completion() {
            let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if ud & SEND_TAG != 0 {
                send_done(&mut self.tx, &mut self.stats, (ud & !SEND_TAG) as usize, res, self.local);
            } else {
                if !cqueue::more(flags) {
                    self.rx.armed = false;
                }
                self.rx.pending.push_back((res, flags));
            }
        }
    }

    /// Queue a send of message slot `m` (split into one send per datagram when GSO is off).
    fn submit_msg(&mut self, m: usize) -> io::Result<()> {
        let msg = &self.tx.msgs[m];
        let (off, len, seg_size, segs, peer) = (msg.off, msg.len, msg.seg_size, msg.segs, msg.peer);
        if segs == 1 || self.tx.gso {
            let gso_segment = (segs > 1).then_some(seg_size as u16);
            let base = self.tx.ptr(off);
            self.tx.msgs[m].prepare(base, len, gso_segment);
            return self.push_send(m);
        }
        // Split: datagram i goes out of slot m + i, which no other message uses (a message of `segs`
        // datagrams starting at slot m covers slots m..m+segs of its buffer).
        let b = m / self.tx.max_segments;
        self.tx.bufs[b].refs += segs - 1;
        for i in 0..segs {
            let seg_off = off + i * seg_size;
            let seg_len = if i + 1 == segs { len - i * seg_size } else { seg_size };
            let base = self.tx.ptr(seg_off);
            let slot = &mut self.tx.msgs[m + i];
            slot.peer = peer;
            slot.off = seg_off;
            slot.len = seg_len;
            slot.seg_size = seg_len;
            slot.segs = 1;
            slot.prepare(base, seg_len, None);
            self.push_send(m + i)?;
        }
        Ok(())
    }

    /// Push the SendMsg SQE of prepared slot `m`.
    fn push_send(&mut self, m: usize) -> io::Result<()> {
        let hdr = std::ptr::addr_of!(self.tx.msgs[m].hdr);
        let entry = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), hdr)
            .build()
            .user_data(SEND_TAG | m as u64);
        push_sqe(&mut self.ring, &entry)?;
        self.tx.in_flight += 1;
        Ok(())
    }

    /// Cancel everything in flight and wait for the completions; false if some did not arrive in time.
    fn quiesce(&mut self) -> bool {
        let _ = submit(&self.ring);
        if !self.rx.armed && self.tx.in_flight == 0 {
            return true;
        }
        let timeout = types::Timespec::new().sec(1);
        let _ = self.ring.submitter().register_sync_cancel(Some(timeout), types::CancelBuilder::any());
        let deadline = Instant::now() + DROP_DRAIN;
        loop {
            self.reap();
            self.rx.pending.clear();
            if !self.rx.armed && self.tx.in_flight == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
        }
    }
}

impl Drop for UringSocket {
    fn drop(&mut self) {
        if self.quiesce() {
            let _ = self.ring.submitter().unregister_buf_ring(RX_BGID);
        } else {
            eprintln!(
                "uring {}: operations still in flight at close; leaking their buffers instead of unmapping",
                self.local
            );
            self.rx.bufs.ring.leak();
            self.rx.bufs.mem.leak();
            self.tx.mem.leak();
            std::mem::forget(std::mem::take(&mut self.tx.msgs));
            let msghdr = std::mem::replace(&mut self.rx.msghdr, Box::new(TxMsg::empty().hdr));
            std::mem::forget(msghdr);
        }
    }
}

impl Datapath for UringSocket {
    fn recv<F: FnMut(Addrs, &mut [u8])>(&mut self, max: usize, mut f: F) -> io::Result<usize> {
        self.arm_if_needed()?;
        self.reap();
        let mut delivered = 0;
        let mut failure = None;
        while delivered < max {
            let Some((res, flags)) = self.rx.pending.pop_front() else {
                break;
            };
            if !cqueue::more(flags) {
                self.rx.want_arm = true;
                self.rx.rearms += 1;
            }
            let bid = cqueue::buffer_select(flags);
            if res < 0 {
                if let Some(bid) = bid {
                    self.rx.bufs.push(bid);
                }
                match -res {
                    libc::ENOBUFS | libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ENOMEM => {}
                    errno => {
                        let e = io::Error::from_raw_os_error(errno);
                        let hint = if errno == libc::EINVAL {
                            " (multishot recvmsg needs Linux >= 6.0)"
                        } else {
                            ""
                        };
                        failure = Some(context(e, format!("io_uring recvmsg on {}{hint}", self.local)));
                        break;
                    }
                }
                continue;
            }
            let Some(bid) = bid else {
                self.stats.rx_dropped += 1;
                continue;
            };
            let len = (res as usize).min(self.rx.bufs.size);
            let parsed = parse_datagram(&self.rx.bufs.buf_mut(bid)[..len], &self.rx.msghdr);
            match parsed {
                Some((peer, start, end)) => {
                    let payload = &mut self.rx.bufs.buf_mut(bid)[start..end];
                    self.stats.rx_datagrams += 1;
                    self.stats.rx_bytes += payload.len() as u64;
                    f(Addrs { local: self.local, peer }, payload);
                    delivered += 1;
                }
                None => self.stats.rx_dropped += 1,
            }
            self.rx.bufs.push(bid);
        }
        self.arm_if_needed()?;
        match failure {
            Some(e) => Err(e),
            None => Ok(delivered),
        }
    }

    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        if self.tx.current.is_none() {
            if self.tx.free.is_empty() {
                self.reap();
            }
            self.tx.current = Some(self.tx.free.pop()?);
        }
        let b = self.tx.current?;
        if self.tx.bufs[b].refs == 0 {
            // Nothing committed from this buffer is pending: fill it from the start again.
            self.tx.bufs[b].used = 0;
            self.tx.bufs[b].segs = 0;
        }
        let off = b * self.tx.buf_cap + self.tx.bufs[b].used;
        debug_assert!(self.tx.bufs[b].used + self.tx.max_payload <= self.tx.buf_cap);
        // SAFETY: the slot lies inside batch buffer `b` (used + max_payload <= buf_cap because the buffer
        // is retired once all `max_segments` slots are filled), no message covers bytes past `used`, and
        // the returned borrow of `self` keeps anything else from touching the memory meanwhile.
        Some(unsafe { std::slice::from_raw_parts_mut(self.tx.ptr(off), self.tx.max_payload) })
    }

    fn tx_commit(&mut self, len: usize, addrs: Addrs) {
        let peer = peer_for(self.local, addrs.peer);
        if !self.tx.commit(len, peer) {
            self.stats.tx_dropped += 1;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tx.close_open();
        let mut queued = std::mem::take(&mut self.tx.retry);
        queued.append(&mut self.tx.ready);
        let pushed = !queued.is_empty();
        let mut result = Ok(());
        for (i, &m) in queued.iter().enumerate() {
            if let Err(e) = self.submit_msg(m) {
                // Keep what could not be queued for the next flush.
                self.tx.ready.extend_from_slice(&queued[i + 1..]);
                result = Err(e);
                break;
            }
        }
        queued.clear();
        self.tx.retry = queued;
        if pushed {
            submit(&self.ring).map_err(|e| context(e, format!("io_uring submit on {}", self.local)))?;
        }
        self.reap();
        result
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.arm_if_needed()?;
        if timeout.is_zero() || !self.rx.pending.is_empty() {
            return submit(&self.ring).map_err(|e| context(e, format!("io_uring submit on {}", self.local)));
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(context(e, format!("io_uring wait on {}", self.local))),
        }
    }

    fn max_payload(&self) -> usize {
        self.tx.max_payload
    }

    fn stats(&self) -> BackendStats {
        self.stats
    }
}

/// Account the completion of send slot `m` with result `res`.
fn send_done(tx: &mut Tx, stats: &mut BackendStats, m: usize, res: i32, local: SocketAddr) {
    tx.in_flight -= 1;
    let msg = &tx.msgs[m];
    if res >= 0 {
        stats.tx_datagrams += msg.segs as u64;
        stats.tx_bytes += msg.len as u64;
        stats.tx_batches += 1;
    } else if msg.segs > 1 && (res == -libc::EIO || res == -libc::EINVAL) {
        // The kernel or device refused GSO: stop using it and re-send this one datagram by datagram.
        if tx.gso {
            tx.gso = false;
            eprintln!(
                "uring {local}: GSO send refused ({}); sending one datagram per sendmsg from now on",
                io::Error::from_raw_os_error(-res)
            );
        }
        tx.retry.push(m);
        return;
    } else {
        stats.tx_dropped += msg.segs as u64;
    }
    let b = m / tx.max_segments;
    tx.bufs[b].refs -= 1;
    tx.release_if_idle(b);
}

/// The datagram in a multishot recvmsg buffer: peer and payload range, or None if anything was truncated.
fn parse_datagram(buf: &[u8], msghdr: &libc::msghdr) -> Option<(SocketAddr, usize, usize)> {
    let out = types::RecvMsgOut::parse(buf, msghdr).ok()?;
    if out.is_payload_truncated() || out.is_name_data_truncated() {
        return None;
    }
    let peer = read_sockaddr(out.name_data())?;
    let payload = out.payload_data();
    let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
    Some((peer, start, start + payload.len()))
}

/// Decode a `sockaddr_in`/`sockaddr_in6` the kernel wrote.
fn read_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        libc::AF_INET if b.len() >= std::mem::size_of::<libc::sockaddr_in>() => {
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if b.len() >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let flowinfo = u32::from_be_bytes(b[4..8].try_into().ok()?);
            let ip: [u8; 16] = b[8..24].try_into().ok()?;
            let scope_id = u32::from_ne_bytes(b[24..28].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id)))
        }
        _ => None,
    }
}

/// Encode `addr` as the kernel's sockaddr into `out`; returns its length.
fn write_sockaddr(addr: SocketAddr, out: &mut SockaddrBuf) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            out.v4 = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            out.v6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The destination as the socket's family needs it (IPv4 peers become v4-mapped on an IPv6 socket).
fn peer_for(local: SocketAddr, peer: SocketAddr) -> SocketAddr {
    match (local, peer) {
        (SocketAddr::V6(_), SocketAddr::V4(p)) => {
            SocketAddr::V6(SocketAddrV6::new(p.ip().to_ipv6_mapped(), p.port(), 0, 0))
        }
        _ => peer,
    }
}

/// A socket about to bind `[::]` serves IPv4 peers too (as v4-mapped addresses), whatever
/// `net.ipv6.bindv6only` says: the server serves both families on one port in every mode.
pub fn dual_stack(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false).map_err(|e| context(e, format!("IPV6_V6ONLY off on UDP {addr}")))?;
    }
    Ok(())
}

/// Create, tune and bind the worker's UDP socket.
fn open_socket(cfg: &UringConfig) -> io::Result<Socket> {
    let addr = cfg.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| context(e, format!("creating UDP socket for {addr}")))?;
    dual_stack(&socket, addr)?;
    let fd = socket.as_raw_fd();
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
        .map_err(|e| context(e, format!("SO_REUSEPORT on UDP {addr}")))?;
    set_buf_size(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, cfg.recv_buf)
        .map_err(|e| context(e, format!("SO_RCVBUF {} on UDP {addr}", cfg.recv_buf)))?;
    set_buf_size(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, cfg.send_buf)
        .map_err(|e| context(e, format!("SO_SNDBUF {} on UDP {addr}", cfg.send_buf)))?;
    socket.set_nonblocking(true).map_err(|e| context(e, format!("O_NONBLOCK on UDP {addr}")))?;
    socket.bind(&addr.into()).map_err(|e| bind_error(e, addr))?;
    Ok(socket)
}

/// A bind error that says what to do about it.
fn bind_error(e: io::Error, addr: SocketAddr) -> io::Error {
    let msg = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            format!("UDP {addr} is already in use: stop the other server or pick --listen")
        }
        Some(libc::EADDRNOTAVAIL) => {
            format!("UDP {addr}: no such local address on this host: pick --listen")
        }
        Some(libc::EACCES) => {
            format!("UDP {addr}: permission denied (ports below 1024 need privileges)")
        }
        _ => format!("binding UDP {addr}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// Set a socket buffer size, trying the privileged `*FORCE` option (beyond `net.core.*mem_max`) first.
fn set_buf_size(fd: RawFd, force: libc::c_int, plain: libc::c_int, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX / 2);
    set_int_opt(fd, libc::SOL_SOCKET, force, size).or_else(|_| set_int_opt(fd, libc::SOL_SOCKET, plain, size))
}

/// `setsockopt` of an int option.
fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Build the ring: the configured depth with cooperative task running, then without it, then at
/// [`FALLBACK_SQ_DEPTH`]; the CQ holds every send and receive that can be in flight.
fn setup_ring(cfg: &UringConfig) -> io::Result<IoUring> {
    let in_flight = cfg.tx_batches.saturating_mul(cfg.max_segments) + usize::from(cfg.buf_count) + 64;
    let mut depths = vec![cfg.sq_depth];
    if cfg.sq_depth > FALLBACK_SQ_DEPTH {
        depths.push(FALLBACK_SQ_DEPTH);
    }
    let mut last = None;
    for depth in depths {
        let cq = (depth as usize * 2).max(in_flight).min(u32::MAX as usize) as u32;
        for coop in [true, false] {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq).setup_clamp();
            if coop {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            match builder.build(depth) {
                Ok(ring) => return Ok(ring),
                Err(e) => last = Some(e),
            }
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no ring depth to try"));
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (io_uring is disabled or filtered: check `sysctl kernel.io_uring_disabled` (0 allows it) and \
             the container's seccomp profile, or use --mode xdp)"
        }
        Some(libc::ENOSYS) => " (this kernel has no io_uring: use --mode xdp)",
        Some(libc::ENOMEM) => " (raise the locked-memory limit, `ulimit -l`, or lower --io-uring-sq-depth)",
        _ => "",
    };
    Err(context(e, format!("io_uring_setup with {} entries for UDP {}{hint}", cfg.sq_depth, cfg.listen)))
}

/// Push one SQE, submitting first if the queue is full.
fn push_sqe(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every SQE built here points only at memory owned by the `UringSocket` that owns `ring`
    // (msghdrs in boxed slots, mapped buffers), which stays put until the completion is reaped or the
    // ring is gone (see `UringSocket::drop`).
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    submit(ring).map_err(|e| context(e, "io_uring submit with a full SQ".into()))?;
    // SAFETY: as above.
    unsafe { ring.submission().push(entry) }
        .map_err(|_| io::Error::new(io::ErrorKind::WouldBlock, "io_uring submission queue full"))
}

/// Submit queued SQEs; a busy kernel (`EBUSY`/`EAGAIN`/`EINTR`) leaves them for the next try.
fn submit(ring: &IoUring) -> io::Result<()> {
    match ring.submit() {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `e` with a description of what failed, keeping its kind.
fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
