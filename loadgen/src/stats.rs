//! Shared counters (atomics), the latency histograms, and the per-second CSV / progress reporter.
//!
//! CSV columns: the predecessor's `timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps` (unix
//! seconds, open connections, cumulative failures, cumulative pixels sent, pixels sent in that second,
//! datagrams received in that second, Mbit/s of received datagram payload), then ours:
//! `acked,rejected,syncs,snapshots` (cumulative; for legacy `acked` counts writes observed in a broadcast),
//! `lat_p50_ms,lat_p99_ms` over that second's write→visible samples (empty when there were none) and
//! `hash_mismatches` (cumulative replica hash mismatches), then `ack_p50_ms,ack_p99_ms` over that second's
//! write→ACK samples (canvas/1; empty for legacy, which has no acknowledgements).
//!
//! Progress goes to stderr: one text line per second, or a live bar on a terminal ([`Progress`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use canvas::RejectReason;
use hdrhistogram::Histogram;

use crate::progress::{self, Progress};

/// CSV header (predecessor's seven columns first; new columns are only ever appended).
pub const CSV_HEADER: &str = concat!(
    "timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps,",
    "acked,rejected,syncs,snapshots,lat_p50_ms,lat_p99_ms,hash_mismatches,ack_p50_ms,ack_p99_ms"
);

/// Highest latency tracked: one hour in microseconds (larger samples saturate).
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// A report interval this long (s) means the runtime could not run the reporter on time.
const LATE_REPORT_S: f64 = 1.25;
/// Significant figures of the latency histograms.
const LATENCY_SIGFIG: u8 = 3;

/// Why a client's connection counts as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// `Endpoint::connect` refused (bad address, endpoint closed, ...).
    Connect,
    /// The handshake did not finish within `--handshake-timeout`.
    HandshakeTimeout,
    /// The handshake failed (TLS error, refused, ALPN mismatch, ...).
    Handshake,
    /// The server closed the connection (CONNECTION_CLOSE or stateless reset) before the end.
    ClosedByServer,
    /// The idle timeout fired.
    IdleTimeout,
    /// The server broke the protocol (bad frame, unexpected message, stream finished).
    Protocol,
    /// Any other local error (e.g. sending failed).
    Other,
}

impl FailKind {
    /// Every kind, in counter order.
    pub const ALL: [FailKind; 7] = [
        Self::Connect,
        Self::HandshakeTimeout,
        Self::Handshake,
        Self::ClosedByServer,
        Self::IdleTimeout,
        Self::Protocol,
        Self::Other,
    ];

    /// Name for the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Handshake => "handshake",
            Self::ClosedByServer => "closed_by_server",
            Self::IdleTimeout => "idle_timeout",
            Self::Protocol => "protocol",
            Self::Other => "other",
        }
    }

    /// Classify a connection error seen after the handshake.
    pub fn of(e: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::TimedOut => Self::IdleTimeout,
            E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::Reset => Self::ClosedByServer,
            E::TransportError(_) | E::VersionMismatch => Self::Protocol,
            E::LocallyClosed | E::CidsExhausted => Self::Other,
        }
    }
}

/// Process-wide counters, updated by every client with relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Handshakes that completed.
    pub handshakes: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Clients whose connection failed (any [`FailKind`]).
    pub failed: AtomicU64,
    /// Failures by kind ([`FailKind::ALL`] order).
    pub fail_kinds: [AtomicU64; FailKind::ALL.len()],
    /// Writes sent.
    pub pixels_sent: AtomicU64,
    /// canvas/1 writes ACKed; legacy writes observed in a later broadcast.
    pub applied: AtomicU64,
    /// canvas/1 REJECTs by reason ([`RejectReason::ALL`] order).
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Datagrams received.
    pub rx_datagrams: AtomicU64,
    /// Datagram payload bytes received.
    pub rx_bytes: AtomicU64,
    /// SYNC requests sent to repair replicas (not counting the hello).
    pub syncs: AtomicU64,
    /// SYNCs for a gap (a loss), see `canvas::replica::ReplicaStats`.
    pub syncs_gap: AtomicU64,
    /// SYNCs for a lag (behind a named tick without progress).
    pub syncs_lag: AtomicU64,
    /// SYNCs for too many buffered ticks.
    pub syncs_overfull: AtomicU64,
    /// SYNCs without usable state (a hash mismatch).
    pub syncs_fresh: AtomicU64,
    /// SYNCs from the replica's tick on a new connection after `--reconnect`.
    pub syncs_resume: AtomicU64,
    /// Connections re-established after a lost one (`--reconnect`).
    pub reconnects: AtomicU64,
    /// Writes without an ACK or REJECT when their connection was lost: their outcome is unknown (applied
    /// or not, the server decided; the resynced replica shows which).
    pub writes_unknown: AtomicU64,
    /// ACKed writes not visible yet when their connection was lost (no longer followed).
    pub acked_unfollowed: AtomicU64,
    /// Snapshots installed in replicas.
    pub snapshots: AtomicU64,
    /// Replica hash mismatches after applying a diff or snapshot.
    pub hash_mismatches: AtomicU64,
    /// Legacy datagrams the replica could not use (malformed, interrupted snapshot).
    pub legacy_errors: AtomicU64,
    /// Legacy writes of the color the replica already showed (they produce no diff entry to observe).
    pub legacy_noop_writes: AtomicU64,
    /// Legacy writes never observed in a diff within the observation timeout.
    pub legacy_unobserved: AtomicU64,
}

impl Counters {
    /// Record a failure.
    pub fn fail(&self, kind: FailKind) {
        self.failed.fetch_add(1, Relaxed);
        let i = FailKind::ALL.iter().position(|k| *k == kind).expect("listed");
        self.fail_kinds[i].fetch_add(1, Relaxed);
    }

    /// Record a REJECT.
    pub fn reject(&self, reason: RejectReason) {
        let i = RejectReason::ALL.iter().position(|r| *r == reason).expect("listed");
        self.rejected[i].fetch_add(1, Relaxed);
    }

    /// Total REJECTs.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|r| r.load(Relaxed)).sum()
    }
}

/// Latency histograms (microseconds): the whole run and the current second.
#[derive(Debug)]
pub struct Latency {
    inner: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Default for Latency {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).expect("valid bounds");
        Self { inner: Mutex::new((h(), h())) }
    }
}

/// Percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub samples: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LatencyMs {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

impl Latency {
    /// Record a batch of samples (microseconds) and clear it: one lock per batch.
    pub fn record(&self, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let mut g = self.inner.lock().expect("latency lock");
        for &us in batch.iter() {
            g.0.saturating_record(us);
            g.1.saturating_record(us);
        }
        batch.clear();
    }

    /// Percentiles of the current second (None without samples), and start a new second.
    pub fn take_second(&self) -> Option<LatencyMs> {
        let mut g = self.inner.lock().expect("latency lock");
        let r = (!g.1.is_empty()).then(|| LatencyMs::of(&g.1));
        g.1.reset();
        r
    }

    /// Percentiles over the whole run.
    pub fn total(&self) -> LatencyMs {
        LatencyMs::of(&self.inner.lock().expect("latency lock").0)
    }
}

/// The cumulative counters the rates are derived from, as of the previous row.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    pixels: u64,
    datagrams: u64,
    bytes: u64,
}

/// Writes one CSV row and one stderr progress line (or bar update) per call.
#[derive(Debug)]
pub struct Reporter {
    id: String,
    applied_label: &'static str,
    csv: Option<BufWriter<File>>,
    progress: Progress,
    start: Instant,
    last_at: Instant,
    last: Seen,
}

impl Reporter {
    /// A reporter writing `{dir}/{id}.csv` when `dir` is given (the directory is created) and per-second
    /// progress lines to stderr; the progress line calls applied writes `applied_label` ("acked", or
    /// "observed" for legacy).
    pub fn new(dir: Option<&Path>, id: &str, applied_label: &'static str) -> Result<Self, String> {
        let csv = match dir {
            None => None,
            Some(dir) => {
                let path = dir.join(format!("{id}.csv"));
                let unwritable = |e: std::io::Error| {
                    format!("--metrics-dir: cannot write {}: {e} (give a writable directory)", path.display())
                };
                std::fs::create_dir_all(dir).map_err(|e| {
                    format!("--metrics-dir: cannot create {}: {e} (give a writable directory)", dir.display())
                })?;
                let mut w = BufWriter::new(File::create(&path).map_err(unwritable)?);
                writeln!(w, "{CSV_HEADER}").and_then(|_| w.flush()).map_err(unwritable)?;
                Some(w)
            }
        };
        let now = Instant::now();
        Ok(Self {
            id: id.to_string(),
            applied_label,
            csv,
            progress: Progress::lines(),
            start: now,
            last_at: now,
            last: Seen::default(),
        })
    }

    /// Show progress in `progress` (a live bar replaces the per-second lines; the CSV is unchanged).
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Emit the row for the interval since the previous call.
    pub fn row(&mut self, c: &Counters, lat: &Latency, ack: &Latency) {
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        self.last_at = now;
        let cur = Seen {
            pixels: c.pixels_sent.load(Relaxed),
            datagrams: c.rx_datagrams.load(Relaxed),
            bytes: c.rx_bytes.load(Relaxed),
        };
        let last = std::mem::replace(&mut self.last, cur);
        // Rates are per second over the interval since the previous row (1 s unless the runtime was
        // too busy to run the reporter on time, which the progress line then says).
        let per_s = |d: u64| (d as f64 / secs).round() as u64;
        let tx_pps = per_s(cur.pixels - last.pixels);
        let rx_dgram = per_s(cur.datagrams - last.datagrams);
        let rx_mbps = (cur.bytes - last.bytes) as f64 * 8.0 / 1e6 / secs;
        let active = c.active.load(Relaxed);
        let failed = c.failed.load(Relaxed);
        let acked = c.applied.load(Relaxed);
        let rejected = c.rejected_total();
        let syncs = c.syncs.load(Relaxed);
        let snapshots = c.snapshots.load(Relaxed);
        let mismatches = c.hash_mismatches.load(Relaxed);
        let l = lat.take_second();
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        let (p50, p99) = (fmt(l.map(|l| l.p50)), fmt(l.map(|l| l.p99)));
        let a = ack.take_second();
        let (ack50, ack99) = (fmt(a.map(|l| l.p50)), fmt(a.map(|l| l.p99)));
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if let Some(w) = self.csv.as_mut() {
            let r = writeln!(
                w,
                "{ts},{active},{failed},{},{tx_pps},{rx_dgram},{rx_mbps:.3},{acked},{rejected},{syncs},{snapshots},\
                 {p50},{p99},{mismatches},{ack50},{ack99}",
                cur.pixels
            )
            .and_then(|_| w.flush());
            if let Err(e) = r {
                progress::note(format!("[{}] metrics CSV write failed, disabling it: {e}", self.id));
                self.csv = None;
            }
        }
        let elapsed = now.duration_since(self.start).as_secs_f64();
        if self.progress.is_bar() {
            // Latency over the whole run so far (the lines show the last second's).
            let total = lat.total();
            let lat = if total.samples == 0 {
                "p50 - p99 -".to_string()
            } else {
                format!("p50 {} p99 {} ms", short_ms(total.p50), short_ms(total.p99))
            };
            let late = if secs > LATE_REPORT_S {
                format!("  [report {:.0} ms late: saturated]", (secs - 1.0) * 1e3)
            } else {
                String::new()
            };
            let mismatches =
                if mismatches > 0 { format!("  hash mismatches {mismatches}") } else { String::new() };
            self.progress.update(
                elapsed as u64,
                format!(
                    "active {active}  failed {failed}  tx {tx_pps} px/s  rx {rx_dgram} dg/s  lat {lat}  {} \
                     {acked}{mismatches}{late}",
                    self.applied_label
                ),
            );
            return;
        }
        let late = if secs > LATE_REPORT_S {
            format!(
                " [report {:.0} ms late: the client is saturated, add processes or --threads]",
                (secs - 1.0) * 1e3
            )
        } else {
            String::new()
        };
        let ackl =
            if ack99.is_empty() { String::new() } else { format!(" ack_p50={ack50}ms ack_p99={ack99}ms") };
        eprintln!(
            "[{}] t={:>4.0}s active={active} failed={failed} tx={} ({tx_pps}/s) rx={rx_dgram} dg/s {rx_mbps:.2} Mbit/s \
             {}={acked} rejected={rejected} syncs={syncs} snapshots={snapshots} p50={}ms p99={}ms{ackl}{late}",
            self.id,
            elapsed,
            cur.pixels,
            self.applied_label,
            if p50.is_empty() { "-" } else { &p50 },
            if p99.is_empty() { "-" } else { &p99 },
        );
    }
}

/// Milliseconds with about three significant figures (`0.84`, `45.1`, `982`, `2604`).
fn short_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_second_and_total() {
        let l = Latency::default();
        assert_eq!(l.take_second(), None);
        let mut b = vec![1000, 2000, 3000, 100_000];
        l.record(&mut b);
        assert!(b.is_empty());
        let s = l.take_second().unwrap();
        assert_eq!(s.samples, 4);
        assert!((s.p50 - 2.0).abs() < 0.01, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(l.take_second(), None);
        assert_eq!(l.total().samples, 4);
    }

    #[test]
    fn csv_has_header_and_rows() {
        let dir = std::env::temp_dir().join(format!("loadgen-stats-{}", std::process::id()));
        let c = Counters::default();
        let l = Latency::default();
        let a = Latency::default();
        let mut r = Reporter::new(Some(&dir), "t", "acked").unwrap();
        c.pixels_sent.store(10, Relaxed);
        r.row(&c, &l, &a);
        c.hash_mismatches.store(2, Relaxed);
        let mut b = vec![1500];
        l.record(&mut b);
        let mut b = vec![250];
        a.record(&mut b);
        r.row(&c, &l, &a);
        let text = std::fs::read_to_string(dir.join("t.csv")).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert!(CSV_HEADER.starts_with("timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps,"));
        assert!(!CSV_HEADER.contains(' '));
        assert_eq!(lines.len(), 3);
        let cols: Vec<_> = CSV_HEADER.split(',').collect();
        for row in &lines[1..] {
            assert_eq!(row.split(',').count(), cols.len(), "{row}");
        }
        let cell = |row: &str, name: &str| {
            let i = cols.iter().position(|c| *c == name).unwrap();
            row.split(',').nth(i).unwrap().to_string()
        };
        assert_eq!(cell(lines[1], "tx_pixels"), "10");
        assert_eq!(cell(lines[1], "lat_p50_ms"), "");
        assert_eq!(cell(lines[1], "hash_mismatches"), "0");
        assert_eq!(cell(lines[2], "lat_p50_ms"), "1.500");
        assert_eq!(cell(lines[2], "hash_mismatches"), "2");
        assert_eq!(cell(lines[1], "ack_p99_ms"), "");
        assert_eq!(cell(lines[2], "ack_p50_ms"), "0.250");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_ms_keeps_three_figures() {
        assert_eq!(short_ms(0.8412), "0.84");
        assert_eq!(short_ms(45.12), "45.1");
        assert_eq!(short_ms(982.4), "982");
        assert_eq!(short_ms(2604.0), "2604");
    }
}
