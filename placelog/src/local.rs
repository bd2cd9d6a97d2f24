//! The embedded placement log: one append-only file and snapshot files in a data directory.
//!
//! - `placements.log`: every committed tick's changes and the tick reservations ([`crate::format`]),
//!   appended once per tick (group commit: one `write` and, with [`SyncPolicy::EveryTick`], one
//!   `fdatasync` for all of a tick's writes). Kept whole: it is the canvas's history.
//! - `snapshot-<tick>.bin`: the canvas at a tick, written to a temporary file, synced and renamed into
//!   place; the newest [`KEEP_SNAPSHOTS`] are kept.
//! - `LOCK`: held (`flock`) by the server using the directory, holding its pid.
//!
//! Restore ([`LocalLog::open`]): the newest snapshot that checks out, then every later tick of the log.
//! A record cut short at the very end of the log (a crash in the middle of a `write`) is reported and cut
//! off: with `EveryTick` no tick in it was published, so no ACKed write is lost. Any other damage stops the
//! restore with the file, the offset and what to do; nothing damaged is ever loaded.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use canvas::Dims;

use crate::format::{self, Next, Record};
use crate::{LogError, PlacementLog, ReplayedTick, SyncPolicy, TickBatch};

/// The log file's name in the data directory.
pub const LOG_FILE: &str = "placements.log";
/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Tick numbers reserved at a time (one reservation record per this many ticks: a minute at 100 ms).
pub const RESERVE_AHEAD: u64 = 600;
/// Snapshots kept.
pub const KEEP_SNAPSHOTS: usize = 2;
/// Replayed ticks kept in [`Restored::tail`], at most.
pub const TAIL_MAX: usize = 512;

/// What a restore found.
#[derive(Debug)]
pub struct Restored {
    /// The canvas.
    pub pixels: Vec<u8>,
    /// Newest tick whose changes are in `pixels` (0: empty history).
    pub tick: u64,
    /// First tick number the restarted server may publish: after every tick that may have been
    /// published before.
    pub next_tick: u64,
    /// Tick of the snapshot the restore started from.
    pub snapshot_tick: Option<u64>,
    /// Newest tick that changed something (0: none).
    pub last_change: u64,
    /// The ticks replayed on top of the snapshot, oldest first (at most [`TAIL_MAX`], the newest), each
    /// chained to the changing tick before it and with the canvas hash after it: what a restarted server
    /// can still send as deltas to a client that returns with a tick from before the restart.
    pub tail: Vec<ReplayedTick>,
    /// Tick batches replayed on top of it.
    pub replayed: u64,
    /// Changes (pixels) in them.
    pub replayed_changes: u64,
    /// What an operator should know (a cut-off tail, a skipped snapshot).
    pub notes: Vec<String>,
}

/// The embedded log.
#[derive(Debug)]
pub struct LocalLog {
    dir: PathBuf,
    dims: Dims,
    sync: SyncPolicy,
    file: File,
    _lock: File,
    /// Tick numbers up to this one may be published without a new reservation.
    reserved: u64,
    last_tick: u64,
    buf: Vec<u8>,
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

fn snapshot_name(tick: u64) -> String {
    format!("snapshot-{tick:020}.bin")
}

fn snapshot_tick(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot-")?.strip_suffix(".bin")?.parse().ok()
}

/// Snapshot files in `dir`, newest first.
fn snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| LogError::io("cannot list", dir, e))? {
        let e = e.map_err(|e| LogError::io("cannot list", dir, e))?;
        if let Some(t) = e.file_name().to_str().and_then(snapshot_tick) {
            v.push((t, e.path()));
        }
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io("cannot sync directory", dir, e))
}

/// Where a scan of the log stopped.
#[derive(Debug)]
struct ScanEnd {
    /// Bytes of whole, valid records (header included).
    good: u64,
    /// Bytes after them: an incomplete last record.
    torn: u64,
}

/// Read the log at `path` (header first), calling `f` with each record in order. An incomplete record at
/// the very end is reported in `ScanEnd::torn`; any other damage, or change ticks out of order, is an error.
fn scan(path: &Path, dims: Option<Dims>, mut f: impl FnMut(Record)) -> Result<(Dims, ScanEnd), LogError> {
    let file = File::open(path).map_err(|e| LogError::io("cannot open", path, e))?;
    let len = file.metadata().map_err(|e| LogError::io("cannot stat", path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; format::LOG_HEADER];
    let got = read_full(&mut r, &mut header).map_err(|e| LogError::io("cannot read", path, e))?;
    let corrupt = |offset: u64, what: String| LogError::Corrupt { path: path.to_path_buf(), offset, what };
    if got < format::LOG_HEADER {
        // A crash between creating the file and syncing its header: nothing was ever logged.
        return match dims {
            Some(d) if len < format::LOG_HEADER as u64 => Ok((d, ScanEnd { good: 0, torn: len })),
            _ => Err(corrupt(0, format!("{len} bytes, shorter than the log header"))),
        };
    }
    let found = format::parse_log_header(&header).map_err(|w| corrupt(0, w))?;
    if let Some(d) = dims.filter(|&d| d != found) {
        return Err(LogError::Refused(format!(
            "{} holds a {}x{} canvas, not {}x{}: start with --width {} --height {}, or use another --data-dir",
            path.display(),
            found.width,
            found.height,
            d.width,
            d.height,
            found.width,
            found.height
        )));
    }
    let mut off = format::LOG_HEADER as u64;
    let mut rec = Vec::new();
    let mut last = 0u64;
    loop {
        rec.clear();
        rec.resize(format::FRAME, 0);
        let got = read_full(&mut r, &mut rec).map_err(|e| LogError::io("cannot read", path, e))?;
        if got == 0 {
            return Ok((found, ScanEnd { good: off, torn: 0 }));
        }
        if got < format::FRAME {
            return Ok((found, ScanEnd { good: off, torn: len - off }));
        }
        let body = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes")) as u64;
        if off + format::FRAME as u64 + body > len {
            return Ok((found, ScanEnd { good: off, torn: len - off }));
        }
        let Ok(body) = usize::try_from(body) else {
            return Err(corrupt(off, format!("record length {body}")));
        };
        rec.resize(format::FRAME + body, 0);
        read_full(&mut r, &mut rec[format::FRAME..]).map_err(|e| LogError::io("cannot read", path, e))?;
        match format::next_record(&rec, found) {
            Next::Record(record, n) => {
                if let Record::Changes(b) = &record {
                    if b.tick <= last {
                        return Err(corrupt(off, format!("tick {} after tick {last}", b.tick)));
                    }
                    last = b.tick;
                }
                f(record);
                off += n as u64;
            }
            Next::BadCrc(n) if off + n as u64 == len => {
                // The last record, its bytes not all on disk: a write cut short.
                return Ok((found, ScanEnd { good: off, torn: len - off }));
            }
            Next::BadCrc(_) => return Err(corrupt(off, "record checksum mismatch".into())),
            Next::Invalid(w) => return Err(corrupt(off, w)),
            Next::Short | Next::End => unreachable!("the whole record was read"),
        }
    }
}

/// `read_exact` that reports how much it got before the end of the file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl LocalLog {
    /// Open (or create) the log in `dir` for a `dims` canvas, lock the directory, and restore the canvas
    /// it holds. The log is left ready to append after the last good record.
    pub fn open(dir: &Path, dims: Dims, sync: SyncPolicy) -> Result<(Self, Restored), LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io("cannot create data directory", dir, e))?;
        let lock = lock(dir)?;
        // Leftovers of a snapshot write cut short.
        for e in fs::read_dir(dir).map_err(|e| LogError::io("cannot list", dir, e))?.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with("snapshot-") && n.ends_with(".tmp")) {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut restored = Restored {
            pixels: vec![0; dims.len()],
            tick: 0,
            next_tick: 1,
            snapshot_tick: None,
            last_change: 0,
            tail: Vec::new(),
            replayed: 0,
            replayed_changes: 0,
            notes: Vec::new(),
        };
        for (t, path) in snapshots(dir)? {
            let bytes = fs::read(&path).map_err(|e| LogError::io("cannot read", &path, e))?;
            match format::decode_snapshot(&bytes, dims) {
                Ok(s) if s.tick == t => {
                    restored.pixels = s.pixels;
                    restored.tick = t;
                    restored.snapshot_tick = Some(t);
                    break;
                }
                Ok(s) => restored.notes.push(format!(
                    "{} holds tick {}, not the tick its name says: skipped (the log rebuilds what it held)",
                    path.display(),
                    s.tick
                )),
                Err((off, what)) => restored.notes.push(format!(
                    "{} is damaged at byte {off} ({what}): skipped (the log rebuilds what it held)",
                    path.display()
                )),
            }
        }
        let path = log_path(dir);
        let mut reserved = 0;
        let mut last_tick = 0;
        if path.exists() {
            let base = restored.tick;
            let mut hash = canvas::hash::full(&restored.pixels);
            let mut tail: std::collections::VecDeque<ReplayedTick> = std::collections::VecDeque::new();
            let (_, end) = scan(&path, Some(dims), |r| match r {
                Record::Reserve(t) => reserved = reserved.max(t),
                Record::Changes(b) => {
                    let prev = last_tick;
                    last_tick = b.tick;
                    if b.tick > base {
                        for &(i, c) in &b.changes {
                            let px = &mut restored.pixels[i as usize];
                            hash = canvas::hash::update(hash, i, *px, c);
                            *px = c;
                        }
                        restored.replayed += 1;
                        restored.replayed_changes += b.changes.len() as u64;
                        restored.tick = b.tick;
                        if tail.len() == TAIL_MAX {
                            tail.pop_front();
                        }
                        tail.push_back(ReplayedTick { tick: b.tick, base: prev, hash, changes: b.changes });
                    }
                }
            })?;
            restored.last_change = last_tick;
            restored.tail = tail.into();
            if end.torn > 0 {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| LogError::io("cannot open", &path, e))?;
                // To the last whole record (0 when not even the header is whole: the file starts over).
                f.set_len(end.good).map_err(|e| LogError::io("cannot truncate", &path, e))?;
                f.sync_all().map_err(|e| LogError::io("cannot sync", &path, e))?;
                restored.notes.push(format!(
                    "{}: cut off {} bytes of an incomplete last record at byte {} (a write cut short by a crash; \
                     no tick in it was published)",
                    path.display(),
                    end.torn,
                    end.good
                ));
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| LogError::io("cannot open", &path, e))?;
        if file.metadata().map_err(|e| LogError::io("cannot stat", &path, e))?.len() == 0 {
            file.write_all(&format::log_header(dims)).map_err(|e| LogError::io("cannot write", &path, e))?;
            file.sync_all().map_err(|e| LogError::io("cannot sync", &path, e))?;
            sync_dir(dir)?;
        }
        restored.next_tick = restored.tick.max(reserved).max(last_tick) + 1;
        let log = LocalLog {
            dir: dir.to_path_buf(),
            dims,
            sync,
            file,
            _lock: lock,
            reserved: 0,
            last_tick: restored.next_tick - 1,
            buf: Vec::new(),
        };
        Ok((log, restored))
    }

    fn write_buf(&mut self) -> Result<(), LogError> {
        let path = log_path(&self.dir);
        self.file.write_all(&self.buf).map_err(|e| LogError::io("cannot append to", &path, e))?;
        if self.sync == SyncPolicy::EveryTick {
            self.file.sync_data().map_err(|e| LogError::io("cannot sync", &path, e))?;
        }
        Ok(())
    }
}

/// Take the directory's lock, or say who holds it.
fn lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io("cannot open", &path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { "another process".to_string() } else { format!("pid {holder}") };
            return Err(LogError::Refused(format!(
                "data directory {} is in use by {who}: stop that server, or give this one another --data-dir",
                dir.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(LogError::io("cannot lock", &path, e)),
    }
    f.set_len(0).map_err(|e| LogError::io("cannot write", &path, e))?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(|e| LogError::io("cannot write", &path, e))?;
    Ok(f)
}

impl PlacementLog for LocalLog {
    fn commit(&mut self, tick: u64, changes: &[(u32, u8)]) -> Result<(), LogError> {
        if tick <= self.last_tick {
            return Err(LogError::Refused(format!("tick {tick} committed after tick {}", self.last_tick)));
        }
        self.last_tick = tick;
        self.buf.clear();
        if tick > self.reserved {
            self.reserved = tick + RESERVE_AHEAD;
            format::encode_reserve(self.reserved, &mut self.buf);
        }
        if !changes.is_empty() {
            format::encode_changes(tick, changes, &mut self.buf);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write_buf()
    }

    fn snapshot(&mut self, tick: u64, hash: u64, pixels: &[u8]) -> Result<(), LogError> {
        let name = snapshot_name(tick);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        let bytes = format::encode_snapshot(tick, hash, self.dims, pixels);
        let mut f = File::create(&tmp).map_err(|e| LogError::io("cannot create", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| LogError::io("cannot write", &tmp, e))?;
        f.sync_all().map_err(|e| LogError::io("cannot sync", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| LogError::io("cannot rename into place", &path, e))?;
        sync_dir(&self.dir)?;
        for (_, old) in snapshots(&self.dir)?.into_iter().skip(KEEP_SNAPSHOTS) {
            let _ = fs::remove_file(old);
        }
        Ok(())
    }

    fn read_after(&self, after: u64) -> Result<Vec<TickBatch>, LogError> {
        Reader { dir: self.dir.clone() }.batches_after(after)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.file.sync_all().map_err(|e| LogError::io("cannot sync", log_path(&self.dir), e))
    }
}

/// Read-only access to a data directory (for `replay`; safe beside a running server: a record still being
/// written is simply the end).
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
}

impl Reader {
    /// A reader of the log in `dir`.
    pub fn new(dir: &Path) -> Self {
        Reader { dir: dir.to_path_buf() }
    }

    /// The canvas dimensions the log was written for.
    pub fn dims(&self) -> Result<Dims, LogError> {
        let path = log_path(&self.dir);
        let mut h = [0u8; format::LOG_HEADER];
        let mut f = File::open(&path).map_err(|e| LogError::io("cannot open", &path, e))?;
        let n = read_full(&mut f, &mut h).map_err(|e| LogError::io("cannot read", &path, e))?;
        format::parse_log_header(&h[..n]).map_err(|what| LogError::Corrupt {
            path: path.clone(),
            offset: 0,
            what,
        })
    }

    /// Call `f` with every tick batch in order; returns the bytes of an incomplete last record (0 if none).
    pub fn for_each(&self, mut f: impl FnMut(TickBatch)) -> Result<u64, LogError> {
        let (_, end) = scan(&log_path(&self.dir), None, |r| {
            if let Record::Changes(b) = r {
                f(b);
            }
        })?;
        Ok(end.torn)
    }

    /// Every tick batch after tick `after`.
    pub fn batches_after(&self, after: u64) -> Result<Vec<TickBatch>, LogError> {
        let mut v = Vec::new();
        self.for_each(|b| {
            if b.tick > after {
                v.push(b);
            }
        })?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
