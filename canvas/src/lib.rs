//! Canvas core: storage over memory it is handed, pixel validation and application in one global order,
//! per-tick change tracking, wire encodings for both protocols (`h3` legacy and `canvas/1`), the client
//! replica state machine, and cooldown bookkeeping.
//!
//! No I/O and no unsafe: time and buffers come from the caller, so everything here is deterministic.
#![forbid(unsafe_code)]

pub mod cooldown;
pub mod datagrams;
pub mod grid;
pub mod hash;
pub mod legacy;
pub mod proto;
pub mod replica;
pub mod rle;

pub use cooldown::Cooldown;
pub use datagrams::Datagrams;
pub use grid::{Canvas, Dims, Pixel, RejectReason, Rules};
pub use replica::Replica;
