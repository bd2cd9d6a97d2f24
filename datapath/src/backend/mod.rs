//! Packet backends behind [`crate::seam::Datapath`].

pub mod mem;
pub mod uring;
pub mod xdp;
