//! The canvas server's datapath: a per-worker quiche endpoint written once over a batched Rx/Tx seam
//! ([`seam::Datapath`]), its backends (io_uring sockets, in-memory), and the master/worker split around the
//! single-writer canvas.

pub mod backend;
pub mod doctor;
pub mod endpoint;
pub mod frame;
pub mod live;
pub mod master;
pub mod netdev;
pub mod pin;
pub mod publish;
pub mod quic;
pub mod seam;
pub mod sim;
pub mod worker;
