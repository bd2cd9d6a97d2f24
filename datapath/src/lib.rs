//! Packet I/O for the canvas server, and nothing of QUIC or the canvas: the batched Rx/Tx seam
//! ([`seam::Datapath`]) and its backends (io_uring sockets, AF_XDP sockets, an in-memory network), raw
//! Ethernet/VLAN/IP/UDP frames (`frame`), interface facts by ioctl (`netdev`) and IRQ-aware CPU pinning
//! (`pin`). The `server` crate drives quiche over it.

pub mod backend;
pub mod frame;
pub mod netdev;
pub mod pin;
pub mod seam;
