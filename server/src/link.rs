//! What the master and the workers share: per worker a pair of bounded queues to and from the master and
//! a queue of datagrams handed over by the other workers; and two flags. A leaf module (it knows only
//! what travels: [`crate::publish`] and the datapath's addresses), so the endpoint and the master both
//! depend on it and not on each other.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use datapath::seam::{Addrs, LinkHint};

use crate::publish::{PixelWrite, Publication};

/// Datagrams of one worker's connections that arrived at another worker, queued at most (past it they
/// are dropped and counted, like a full socket buffer; QUIC retransmits).
pub const HANDOFF_CAPACITY: usize = 1024;

/// A datagram handed from the worker it arrived at to the worker that owns its connection (see
/// `Endpoint::on_datagram`): a client whose address changed (NAT rebinding) hashes to another socket or
/// receive queue.
#[derive(Debug)]
pub struct Handoff {
    /// Its addresses, as received.
    pub addrs: Addrs,
    /// What the receiving backend knew about reaching the peer below IP.
    pub link: Option<LinkHint>,
    /// The UDP payload.
    pub pkt: Box<[u8]>,
}

/// Channels between the master and one worker.
#[derive(Debug)]
pub struct WorkerLink {
    /// Worker → master pixel writes (predecessor: SPSC_CAPACITY = 65536).
    pub writes: ArrayQueue<PixelWrite>,
    /// Master → worker publications.
    pub publications: ArrayQueue<Arc<Publication>>,
    /// Publications the master could not hand over because the worker was too far behind.
    pub publications_dropped: AtomicU64,
    /// Other workers → this one: datagrams of this worker's connections that arrived elsewhere.
    pub handoff: ArrayQueue<Handoff>,
}

impl WorkerLink {
    /// A link with the given queue capacities.
    pub fn new(write_capacity: usize, publication_capacity: usize) -> Self {
        Self {
            writes: ArrayQueue::new(write_capacity.max(1)),
            publications: ArrayQueue::new(publication_capacity.max(1)),
            publications_dropped: AtomicU64::new(0),
            handoff: ArrayQueue::new(HANDOFF_CAPACITY),
        }
    }
}

/// State shared by the master and all workers.
#[derive(Debug)]
pub struct Shared {
    /// One link per worker.
    pub links: Vec<WorkerLink>,
    /// Set by a worker that needs a fresh snapshot (a connection joined whose catch-up history is gone).
    pub snapshot_wanted: AtomicBool,
    /// Set to stop everything.
    pub shutdown: AtomicBool,
}
