//! The placement log: what makes the canvas survive a crash, a restart or a power cut.
//!
//! The master commits every closed tick here before it publishes the tick (and so before any write in it is
//! ACKed): the tick's net change set (`(pixel index, final color)`, in the master's order), which is all a
//! canvas needs to be rebuilt exactly at that tick. Periodic snapshots bound the work of a restart; the log
//! itself keeps the whole history, so [`local::Reader`] can rebuild the canvas at any tick.
//!
//! [`PlacementLog`] is the seam: the master sees only it. [`local::LocalLog`] is the embedded
//! implementation (one append-only file and snapshot files in a data directory); a distributed log goes
//! behind the same trait.
//!
//! Tick numbers are never reused across restarts: the log records how far ahead tick numbers may have
//! been published (a reservation written before the published tick passes the previous one), and a
//! restarted server starts after it. A client that saw tick Q before the restart can therefore never be
//! mistaken for one that has the restarted server's tick Q.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

pub mod format;
pub mod local;

/// One closed tick's changes, as the log holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickBatch {
    /// The tick.
    pub tick: u64,
    /// `(pixel index, final color)` of every pixel that changed in the tick, in the master's order.
    pub changes: Vec<(u32, u8)>,
}

/// A changing tick read back from the log, chained to the changing tick before it: what a restarted server
/// hands its workers so that a client returning with an older tick gets a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedTick {
    /// The tick.
    pub tick: u64,
    /// The changing tick before it (0: none).
    pub base: u64,
    /// The canvas hash after it.
    pub hash: u64,
    /// Its net change set.
    pub changes: Vec<(u32, u8)>,
}

/// The master's side of the log.
pub trait PlacementLog: Send + fmt::Debug {
    /// Commit tick `tick` (called for every tick, in order, empty ones included): its changes are
    /// durable, as far as the log's [`SyncPolicy`] promises, when this returns. The tick must not be
    /// published (its writes ACKed) before.
    fn commit(&mut self, tick: u64, changes: &[(u32, u8)]) -> Result<(), LogError>;

    /// Store the whole canvas at `tick` (already committed), with its hash: where a restart begins.
    fn snapshot(&mut self, tick: u64, hash: u64, pixels: &[u8]) -> Result<(), LogError>;

    /// Every committed tick batch after tick `after`, in order.
    fn read_after(&self, after: u64) -> Result<Vec<TickBatch>, LogError>;

    /// Make everything committed durable, whatever the policy (at shutdown).
    fn sync(&mut self) -> Result<(), LogError>;
}

/// When committed ticks reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every tick that changed something, before it is published: every ACKed write
    /// survives a crash, a `kill -9` and a power cut.
    EveryTick,
    /// Written (to the page cache) before the tick is published, synced by the kernel when it likes and at
    /// shutdown: every ACKed write survives a crash or `kill -9` of the server; a power cut or kernel crash
    /// can lose the last seconds.
    Os,
}

/// What went wrong, with what to do about it.
#[derive(Debug)]
pub enum LogError {
    /// An I/O call failed.
    Io {
        /// What was being done.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// A file does not hold what it should (a bit flip, a foreign file, a bug): never loaded.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record or field.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The data directory belongs to another canvas or is in use.
    Refused(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io { what, path, err } => write!(f, "{what} {}: {err}", path.display()),
            LogError::Corrupt { path, offset, what } => write!(
                f,
                "{} is corrupt at byte {offset}: {what}. Nothing was loaded. Keep a copy of the file; \
                 to start from the records before it, truncate it there (`truncate -s {offset} {}`)",
                path.display(),
                path.display()
            ),
            LogError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LogError {}

impl LogError {
    pub(crate) fn io(what: &str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        LogError::Io { what: what.to_string(), path: path.into(), err }
    }
}
