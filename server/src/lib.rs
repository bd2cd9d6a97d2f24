//! The canvas server above the packet I/O of the `datapath` crate: a per-worker quiche endpoint written once
//! against [`datapath::seam::Datapath`], the master/worker split around the single-writer canvas, what the
//! master publishes per tick, the worker loop, the QUIC configuration, the in-memory simulator, and the
//! operations layer (`ops`: `server doctor`, live metrics), which depends on the core and is never imported
//! by it.

pub mod endpoint;
pub mod link;
pub mod master;
pub mod ops;
pub mod publish;
pub mod quic;
pub mod sim;
pub mod worker;
