//! The io_uring mode's reuseport program (`src/bpf/steer.bpf.c`): steers each short-header QUIC packet
//! to the socket of the worker its connection id names, so a client whose address changes keeps reaching
//! the worker that holds its connection. See the C source for the rule; [`Steering::attach`] loads it,
//! puts each worker's socket in its slot and attaches it to the group.
//!
//! The program belongs to the reuseport group, not to this value: it stays attached while any socket of
//! the group is open and goes with the last one, so a crash leaves nothing behind. Dropping a
//! [`Steering`] only closes the loader's handles.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::{sys, verifier, Error, VERIFIER_LOG_LINES};

#[allow(
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    unused_imports,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
}

use skel::types::steer_counter as C;

/// Sockets the program can steer to (`STEER_MAX_WORKERS` in the C source).
pub const MAX_WORKERS: usize = 1024;

/// What the program did with the datagrams it saw, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerCounters {
    /// Short-header packets sent to the worker their connection id names.
    pub by_cid: u64,
    /// Of `by_cid`, those the kernel's 4-tuple hash would have given to another worker (clients whose
    /// address changed, and a share of every client's packets for a group of several sockets).
    pub moved: u64,
    /// Long-header packets (handshakes) left to the 4-tuple hash.
    pub hash_long_header: u64,
    /// Short-header packets whose id names no worker's socket, left to the hash.
    pub hash_unknown_cid: u64,
    /// Datagrams too short to read, left to the hash.
    pub hash_short: u64,
}

impl SteerCounters {
    /// (name, value) pairs, for reports and metrics.
    pub fn iter(&self) -> [(&'static str, u64); 5] {
        [
            ("by_cid", self.by_cid),
            ("moved", self.moved),
            ("hash_long_header", self.hash_long_header),
            ("hash_unknown_cid", self.hash_unknown_cid),
            ("hash_short", self.hash_short),
        ]
    }
}

/// The loaded program, its socket map and counters.
#[derive(Debug)]
pub struct Steering {
    _prog: OwnedFd,
    _sockets: OwnedFd,
    counters: OwnedFd,
    nr_cpus: usize,
}

impl Steering {
    /// Load the program for `sockets` (worker `i`'s socket at index `i`, all bound to the same address
    /// with `SO_REUSEPORT` and nothing else in their group), fill its map and attach it to the group.
    pub fn attach(sockets: &[BorrowedFd<'_>]) -> Result<Self, Error> {
        use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
        if sockets.is_empty() || sockets.len() > MAX_WORKERS {
            return Err(Error::InvalidConfig(format!(
                "the reuseport program steers 1..={MAX_WORKERS} sockets, not {}",
                sockets.len()
            )));
        }
        let load_error = |source: libbpf_rs::Error, log: &verifier::Capture| match source.kind() {
            libbpf_rs::ErrorKind::PermissionDenied => Error::PermissionDenied {
                operation: "loading the BPF object steer (reuseport program)".into(),
                source: io::Error::from_raw_os_error(libc::EPERM),
            },
            _ => Error::Load {
                object: "steer",
                source,
                kernel: sys::kernel_release(),
                verifier_log: log.verifier_tail(VERIFIER_LOG_LINES),
            },
        };
        let log = verifier::Capture::start();
        let mut storage = MaybeUninit::uninit();
        let mut open =
            skel::SteerSkelBuilder::default().open(&mut storage).map_err(|e| load_error(e, &log))?;
        let rodata = open.maps.rodata_data.as_deref_mut().expect("the object has a .rodata map");
        rodata.cfg.workers = sockets.len() as u32;
        let skel = open.load().map_err(|e| load_error(e, &log))?;
        drop(log);
        let io = |operation: String| move |source| Error::Io { operation, source };
        for (i, s) in sockets.iter().enumerate() {
            sys::map_update_u32(skel.maps.workers.as_fd(), i as u32, s.as_raw_fd() as u32)
                .map_err(io(format!("putting worker {i}'s socket in the reuseport map")))?;
        }
        sys::attach_reuseport_prog(sockets[0], skel.progs.canvas_steer.as_fd())
            .map_err(io("attaching the reuseport program (SO_ATTACH_REUSEPORT_EBPF)".into()))?;
        let dup = |fd: BorrowedFd<'_>, what: &str| {
            fd.try_clone_to_owned()
                .map_err(|source| Error::Io { operation: format!("duplicating the {what} fd"), source })
        };
        let nr_cpus = sys::possible_cpus()
            .map_err(|source| Error::Io { operation: "reading the possible CPUs".into(), source })?;
        Ok(Self {
            _prog: dup(skel.progs.canvas_steer.as_fd(), "program")?,
            _sockets: dup(skel.maps.workers.as_fd(), "workers map")?,
            counters: dup(skel.maps.counters.as_fd(), "counters map")?,
            nr_cpus,
        })
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<SteerCounters, Error> {
        let mut per_cpu = vec![0u64; self.nr_cpus];
        let mut read = |c: C| -> Result<u64, Error> {
            sys::percpu_lookup_u64(self.counters.as_fd(), c.0, &mut per_cpu).map_err(|source| Error::Io {
                operation: format!("reading steering counter {}", c.0),
                source,
            })?;
            Ok(per_cpu.iter().sum())
        };
        Ok(SteerCounters {
            by_cid: read(C::STEER_BY_CID)?,
            moved: read(C::STEER_MOVED)?,
            hash_long_header: read(C::STEER_HASH_LONG_HEADER)?,
            hash_unknown_cid: read(C::STEER_HASH_UNKNOWN_CID)?,
            hash_short: read(C::STEER_HASH_SHORT)?,
        })
    }
}

const _: () = assert!(C::STEER_COUNTER_MAX.0 == 5, "a steering counter is missing in Rust");
