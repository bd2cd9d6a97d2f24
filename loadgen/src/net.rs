//! UDP sockets with large buffers, wrapped into quinn endpoints (one per source port).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::set_force;

/// What a socket actually got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketReport {
    /// SO_RCVBUF as read back (Linux reports twice the requested value).
    pub rcvbuf: usize,
    /// SO_SNDBUF as read back.
    pub sndbuf: usize,
    /// Whether the FORCE variants worked (root / CAP_NET_ADMIN).
    pub forced: bool,
}

/// A non-blocking UDP socket bound to an ephemeral port of `family`'s wildcard address, with
/// SO_RCVBUF/SO_SNDBUF of `buffer` bytes (FORCE variants first, then the capped plain ones).
pub fn udp_socket(peer: SocketAddr, buffer: usize) -> std::io::Result<(std::net::UdpSocket, SocketReport)> {
    let bind: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(target_os = "linux")]
    let (rf, sf) =
        (set_force(&sock, libc::SO_RCVBUFFORCE, buffer), set_force(&sock, libc::SO_SNDBUFFORCE, buffer));
    #[cfg(not(target_os = "linux"))]
    let (rf, sf) = (false, false);
    if !rf {
        let _ = sock.set_recv_buffer_size(buffer);
    }
    if !sf {
        let _ = sock.set_send_buffer_size(buffer);
    }
    sock.bind(&bind.into())?;
    sock.set_nonblocking(true)?;
    let report = SocketReport {
        rcvbuf: sock.recv_buffer_size().unwrap_or(0),
        sndbuf: sock.send_buffer_size().unwrap_or(0),
        forced: rf && sf,
    };
    Ok((sock.into(), report))
}

/// `n` client endpoints, each on its own socket. Must be called inside a tokio runtime.
pub fn endpoints(
    n: usize,
    peer: SocketAddr,
    buffer: usize,
) -> Result<(Vec<quinn::Endpoint>, SocketReport), String> {
    let mut out = Vec::with_capacity(n);
    let mut report = SocketReport::default();
    for i in 0..n {
        let (sock, r) = udp_socket(peer, buffer).map_err(|e| format!("UDP socket {i}: {e}"))?;
        report = r;
        let ep =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, Arc::new(quinn::TokioRuntime))
                .map_err(|e| format!("quinn endpoint {i}: {e}"))?;
        out.push(ep);
    }
    Ok((out, report))
}
