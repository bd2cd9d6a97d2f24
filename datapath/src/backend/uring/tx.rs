//! Transmit bookkeeping: the pool of GSO batch buffers, the message header slots built in them (with
//! their `UDP_SEGMENT` cmsg and sockaddr), and the accounting of each send's completion.
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};

use super::bufring::Mmap;
use super::{UringConfig, GSO_MAX_BYTES};
use crate::seam::BackendStats;

/// Room for a `sockaddr_in` or `sockaddr_in6`, as `msg_name` of a send.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union SockaddrBuf {
    pub(super) v4: libc::sockaddr_in,
    pub(super) v6: libc::sockaddr_in6,
}

/// The one control message a GSO send carries: `cmsghdr` then `UDP_SEGMENT`'s u16, `CMSG_SPACE(2)` long.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct GsoCmsg {
    pub(super) hdr: libc::cmsghdr,
    pub(super) segment: u16,
    pub(super) _pad: [u8; 6],
}

// SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic (unsafe only by libc's declaration).
const GSO_CMSG_LEN: usize = unsafe { libc::CMSG_LEN(2) } as usize;
// SAFETY: as above.
const GSO_CMSG_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
const _: () = assert!(std::mem::size_of::<GsoCmsg>() == GSO_CMSG_SPACE);
const _: () = assert!(std::mem::offset_of!(GsoCmsg, segment) == GSO_CMSG_LEN - 2);

/// One `sendmsg` being built or in flight, and what to count when it completes. The kernel reads `hdr`
/// and, through it, `iov`, `name` and `cmsg` until the completion is reaped, so slots never move.
pub(super) struct TxMsg {
    pub(super) hdr: libc::msghdr,
    pub(super) iov: libc::iovec,
    pub(super) name: SockaddrBuf,
    pub(super) cmsg: GsoCmsg,
    pub(super) peer: SocketAddr,
    /// Offset of the first datagram in the transmit memory.
    pub(super) off: usize,
    /// Bytes of all datagrams.
    pub(super) len: usize,
    /// Size of every datagram but the last (the GSO segment size).
    pub(super) seg_size: usize,
    /// Datagrams.
    pub(super) segs: usize,
}

impl TxMsg {
    /// An unused slot.
    pub(super) fn empty() -> TxMsg {
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
    pub(super) fn prepare(&mut self, base: *mut u8, len: usize, gso_segment: Option<u16>) {
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
pub(super) struct TxBuf {
    /// Bytes filled.
    pub(super) used: usize,
    /// Datagrams filled (the next message starts at slot `segs`).
    pub(super) segs: usize,
    /// Messages committed from this buffer and not completed yet.
    pub(super) refs: usize,
}

/// Transmit state: the batch buffer pool and the messages built in it.
pub(super) struct Tx {
    /// `batches * buf_cap` bytes.
    pub(super) mem: Mmap,
    /// Bytes per batch buffer (`max_payload * max_segments`).
    pub(super) buf_cap: usize,
    pub(super) max_payload: usize,
    pub(super) max_segments: usize,
    pub(super) bufs: Box<[TxBuf]>,
    /// `batches * max_segments` message slots; slot `b * max_segments + i` belongs to datagram `i` of
    /// buffer `b`. A boxed slice never reallocates, so the kernel may hold pointers into it.
    pub(super) msgs: Box<[TxMsg]>,
    /// Buffers with nothing committed or in flight.
    pub(super) free: Vec<usize>,
    /// The buffer `tx_slot` hands out from.
    pub(super) current: Option<usize>,
    /// The message still accepting GSO segments (in `current`).
    pub(super) open: Option<usize>,
    /// Messages committed and not submitted.
    pub(super) ready: Vec<usize>,
    /// Failed GSO messages to re-send datagram by datagram.
    pub(super) retry: Vec<usize>,
    /// Messages submitted and not completed.
    pub(super) in_flight: usize,
    pub(super) gso: bool,
}

impl Tx {
    /// Map the pool.
    pub(super) fn new(cfg: &UringConfig) -> io::Result<Tx> {
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
    pub(super) fn ptr(&self, off: usize) -> *mut u8 {
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
    pub(super) fn close_open(&mut self) {
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
    pub(super) fn commit(&mut self, len: usize, peer: SocketAddr) -> bool {
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

/// Account the completion of send slot `m` with result `res`.
pub(super) fn send_done(tx: &mut Tx, stats: &mut BackendStats, m: usize, res: i32, local: SocketAddr) {
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
pub(super) fn peer_for(local: SocketAddr, peer: SocketAddr) -> SocketAddr {
    match (local, peer) {
        (SocketAddr::V6(_), SocketAddr::V4(p)) => {
            SocketAddr::V6(SocketAddrV6::new(p.ip().to_ipv6_mapped(), p.port(), 0, 0))
        }
        _ => peer,
    }
}
