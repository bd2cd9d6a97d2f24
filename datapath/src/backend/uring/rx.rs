//! Receive bookkeeping: the multishot recvmsg's state and the decoding of what the kernel wrote into a
//! provided buffer (peer address and payload range).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use io_uring::types;

use super::bufring::BufRing;

/// Receive state: the multishot recvmsg and the completions not yet handed to the caller.
pub(super) struct Rx {
    pub(super) bufs: BufRing,
    /// The header the multishot recvmsg was armed with (only `msg_namelen`/`msg_controllen` matter); the
    /// kernel reads it at submission and `RecvMsgOut::parse` needs the same one.
    pub(super) msghdr: Box<libc::msghdr>,
    /// Receive completions `(result, flags)` reaped from the CQ but not processed yet.
    pub(super) pending: VecDeque<(i32, u32)>,
    /// A multishot receive is in the kernel (its final CQE, without `F_MORE`, has not been reaped).
    pub(super) armed: bool,
    /// Arm on the next chance: set at start and when a final CQE has been processed.
    pub(super) want_arm: bool,
    /// Times the receive was armed again after ending.
    pub(super) rearms: u64,
}

/// The datagram in a multishot recvmsg buffer: peer and payload range, or None if anything was truncated.
pub(super) fn parse_datagram(buf: &[u8], msghdr: &libc::msghdr) -> Option<(SocketAddr, usize, usize)> {
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
