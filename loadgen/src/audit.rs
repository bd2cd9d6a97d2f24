//! `--write-log`: every canvas/1 write sent and every ACK received, to check a server's durability
//! promise against the canvas it restores (e.g. after `kill -9`).
//!
//! One line each, CSV: `W,session,id,x,y,color` when a write is sent, `A,session,id,tick` when it is ACKed.
//! `session` numbers connections (write ids restart on each). Lines are buffered and written in the order
//! they happen, so a `W` line always precedes its `A` line; the file is flushed at the end of the run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use canvas::Pixel;

/// The log.
#[derive(Debug)]
pub struct WriteLog {
    out: Mutex<BufWriter<File>>,
    sessions: AtomicU64,
}

impl WriteLog {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self { out: Mutex::new(BufWriter::new(File::create(path)?)), sessions: AtomicU64::new(0) })
    }

    /// A new session (connection) number.
    pub fn session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed)
    }

    fn line(&self, args: std::fmt::Arguments<'_>) {
        let mut w = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk loses the audit, not the run: reported at flush.
        let _ = w.write_fmt(args);
    }

    /// Write `id` of `session` was sent.
    pub fn sent(&self, session: u64, id: u32, p: Pixel) {
        self.line(format_args!("W,{session},{id},{},{},{}\n", p.x, p.y, p.color));
    }

    /// Write `id` of `session` was ACKed at `tick`.
    pub fn acked(&self, session: u64, id: u32, tick: u64) {
        self.line(format_args!("A,{session},{id},{tick}\n"));
    }

    /// Flush to the file.
    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}
