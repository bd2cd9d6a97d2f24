//! The `client` load generator for the canvas server: thousands of QUIC clients per process (quinn +
//! tokio), speaking `canvas/1` or the legacy `h3` datagram protocol, each keeping a replica of the canvas,
//! with per-second CSV metrics, write→visible latency, and an end-of-run check that every replica equals
//! the server's canvas.
//!
//! Layout: [`config`] (flags) → [`tls`] and [`net`] (QUIC config, sockets, endpoints) → [`client`] (one
//! task per client, per protocol) → [`verify`] (replicas vs the server's canvas) → [`run`] (phases) →
//! [`stats`], [`progress`] and [`summary`] (CSV, progress lines or bar, JSON, table); [`cross`] measures
//! write → visible across servers (`--observe`). [`sys`] holds the
//! only unsafe code (two libc calls).
#![deny(unsafe_code)]

pub mod audit;
pub mod client;
pub mod config;
pub mod cross;
pub mod net;
pub mod progress;
pub mod run;
pub mod stats;
pub mod summary;
pub mod sys;
pub mod tls;
pub mod verify;
