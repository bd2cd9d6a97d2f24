//! The batched Rx/Tx seam between the quiche-driving endpoint and a packet backend.
//!
//! A backend moves UDP payloads; it knows nothing of QUIC. Receive hands out a batch of
//! `(addresses, &mut payload)` in backend-owned memory (quiche decrypts in place there). Transmit hands out a
//! slot in backend-owned memory; the endpoint lets quiche write the packet straight into it and commits it
//! with its addresses, so no backend needs a copy (an AF_XDP backend hands out UMEM frames after header
//! room, io_uring hands out a slice of a GSO batch buffer). `flush` pushes committed packets out; `wait`
//! blocks until packets may be ready or the timeout passes. Nothing above this trait knows which backend
//! it runs on.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The two ends of one UDP datagram, from this endpoint's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addrs {
    /// Our address (the one the packet was sent to / is sent from).
    pub local: SocketAddr,
    /// The remote address.
    pub peer: SocketAddr,
}

/// What a backend learned about how to reach a peer below IP (the AF_XDP backend: the peer's MAC and
/// the MAC it sent to), carried with a datagram one worker hands to another (a connection's packets
/// that arrive on a worker that does not own it, after the peer's address changed), so the owner can
/// answer at once. Opaque above the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkHint(pub [u8; 12]);

/// Source prefixes allowed to reach the served port (`server --allow`); empty: every source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    nets: Vec<(IpAddr, u8)>,
}

impl Allowlist {
    /// From (network address, prefix length) pairs; the host bits of each address are ignored.
    pub fn new(nets: Vec<(IpAddr, u8)>) -> Self {
        Allowlist { nets }
    }

    /// The prefixes.
    pub fn nets(&self) -> &[(IpAddr, u8)] {
        &self.nets
    }

    /// Whether `ip` may reach the port: no list, or inside one prefix. An IPv4-mapped IPv6 address (a
    /// dual-stack socket's view of an IPv4 peer) is matched as the IPv4 address it carries.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

/// Counters every backend keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackendStats {
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// Datagrams handed to the kernel or wire.
    pub tx_datagrams: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// Send system calls / ring submissions carrying datagrams (tx_datagrams / tx_batches = batching factor).
    pub tx_batches: u64,
    /// Datagrams the backend had to drop on send (errors, full queues).
    pub tx_dropped: u64,
    /// Datagrams the backend dropped on receive (truncated, no buffer).
    pub rx_dropped: u64,
    /// Datagrams from sources outside the allowlist, dropped before the endpoint saw them (uring mode; in
    /// xdp mode the program drops them, `dropped_not_allowed`).
    pub rx_not_allowed: u64,
}

/// A packet backend.
pub trait Datapath {
    /// Deliver up to `max` received datagrams to `f`, without blocking; returns how many were delivered.
    fn recv<F: FnMut(Addrs, &mut [u8])>(&mut self, max: usize, f: F) -> io::Result<usize>;

    /// A buffer to build the next outgoing datagram in (at least [`Datapath::max_payload`] bytes), or `None`
    /// when the transmit side is full (call [`Datapath::flush`] and retry later). Calling it again without
    /// a commit returns the same slot.
    fn tx_slot(&mut self) -> Option<&mut [u8]>;

    /// Commit the first `len` bytes of the current slot as a datagram to `addrs.peer`.
    fn tx_commit(&mut self, len: usize, addrs: Addrs);

    /// Push every committed datagram out.
    fn flush(&mut self) -> io::Result<()>;

    /// Block until received datagrams may be ready or `timeout` passes (zero: return at once).
    fn wait(&mut self, timeout: Duration) -> io::Result<()>;

    /// Largest UDP payload a transmit slot holds.
    fn max_payload(&self) -> usize;

    /// Counters.
    fn stats(&self) -> BackendStats;

    /// What this backend knows about reaching `peer` below IP (see [`LinkHint`]); `None` for backends
    /// that leave that to the kernel.
    fn link_hint(&self, _peer: IpAddr) -> Option<LinkHint> {
        None
    }

    /// Learn `hint` (from another worker's backend) for `peer`.
    fn learn_link(&mut self, _peer: IpAddr, _hint: LinkHint) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_prefixes_of_both_families() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(Allowlist::default().allows(ip("192.0.2.1")));
        let a = Allowlist::new(vec![(ip("10.0.1.0"), 24), (ip("fd00::"), 64), (ip("192.0.2.7"), 32)]);
        assert!(a.allows(ip("10.0.1.21")) && a.allows(ip("10.0.1.255")));
        assert!(!a.allows(ip("10.0.2.1")));
        assert!(a.allows(ip("::ffff:10.0.1.22")), "an IPv4 peer on a dual-stack socket");
        assert!(a.allows(ip("fd00::1:2")) && !a.allows(ip("fd00:0:0:1::1")));
        assert!(a.allows(ip("192.0.2.7")) && !a.allows(ip("192.0.2.8")));
        let all = Allowlist::new(vec![(ip("0.0.0.0"), 0)]);
        assert!(all.allows(ip("203.0.113.9")) && !all.allows(ip("2001:db8::1")));
    }
}
