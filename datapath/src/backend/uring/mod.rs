//! io_uring UDP backend: one `SO_REUSEPORT` socket and one ring per worker; a multishot `RecvMsg` into a
//! provided-buffer ring on receive, GSO-batched `SendMsg`s out of a pool of batch buffers on transmit.
//!
//! Layers, bottom up (STYLE 4): `Mmap` (an anonymous mapping, unmapped on drop) → `BufRing` (the
//! kernel's provided-buffer ring over two mappings) → `Rx` / `Tx` (packet bookkeeping) →
//! [`UringSocket`] (the [`Datapath`] seam). Files: `bufring.rs` (`Mmap`, `BufRing`), `rx.rs`, `tx.rs`,
//! `socket.rs` (socket and ring setup, SQE submission); this file: the configuration, the socket and its
//! [`Datapath`] impl.
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
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};
use socket2::Socket;

use crate::seam::{Addrs, BackendStats, Datapath};

mod bufring;
mod rx;
mod socket;
mod tx;

use bufring::BufRing;
use rx::{parse_datagram, Rx};
pub use socket::{bind_error, claim_port, dual_stack, port_holders, PortHolder};
use socket::{context, open_socket, push_sqe, setup_ring, submit};
use tx::{peer_for, send_done, Tx, TxMsg};

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
    /// Sources allowed to reach the endpoint (empty: all); others are dropped in `recv` and counted.
    pub allow: crate::seam::Allowlist,
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
            allow: crate::seam::Allowlist::default(),
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
    allow: crate::seam::Allowlist,
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
            allow: cfg.allow.clone(),
        })
    }

    /// The socket (to put it in a reuseport steering program's map).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.socket.as_fd()
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
                Some((peer, _, _)) if !self.allow.allows(peer.ip()) => self.stats.rx_not_allowed += 1,
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
