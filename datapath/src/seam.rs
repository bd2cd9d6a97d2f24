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
use std::net::SocketAddr;
use std::time::Duration;

/// The two ends of one UDP datagram, from this endpoint's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addrs {
    /// Our address (the one the packet was sent to / is sent from).
    pub local: SocketAddr,
    /// The remote address.
    pub peer: SocketAddr,
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
}
