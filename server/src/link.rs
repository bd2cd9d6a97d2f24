//! What the master and the workers share: one pair of bounded queues per worker and two flags. A leaf
//! module (it knows only what travels: [`crate::publish`]), so the endpoint and the master both depend on it
//! and not on each other.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::publish::{PixelWrite, Publication};

/// Channels between the master and one worker.
#[derive(Debug)]
pub struct WorkerLink {
    /// Worker → master pixel writes (predecessor: SPSC_CAPACITY = 65536).
    pub writes: ArrayQueue<PixelWrite>,
    /// Master → worker publications.
    pub publications: ArrayQueue<Arc<Publication>>,
    /// Publications the master could not hand over because the worker was too far behind.
    pub publications_dropped: AtomicU64,
}

impl WorkerLink {
    /// A link with the given queue capacities.
    pub fn new(write_capacity: usize, publication_capacity: usize) -> Self {
        Self {
            writes: ArrayQueue::new(write_capacity.max(1)),
            publications: ArrayQueue::new(publication_capacity.max(1)),
            publications_dropped: AtomicU64::new(0),
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
