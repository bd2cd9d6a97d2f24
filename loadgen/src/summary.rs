//! The end-of-run summary: JSON for machines (`--summary-json`), a table for people (stdout).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::Protocol;
use crate::net::SocketReport;
use crate::stats::LatencyMs;
use crate::sys::Usage;
use crate::verify::Verdict;

/// Everything a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// `--id`.
    pub id: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// `--target` as given.
    pub target: String,
    /// The resolved server address.
    pub server_addr: String,
    /// `--clients`.
    pub clients: usize,
    /// Clients that connected and never failed.
    pub connected: usize,
    /// Clients whose connection failed (connect, handshake, closed by the server, protocol error...).
    pub failed: u64,
    /// `failed` by cause.
    pub failed_by_kind: BTreeMap<&'static str, u64>,
    /// Clients that never started connecting (the run ended during their jitter).
    pub never_started: usize,
    /// Handshakes that completed (including clients that failed later, and `--observe` observers).
    pub handshakes: u64,
    /// Writes sent.
    pub pixels_sent: u64,
    /// canvas/1: writes ACKed. Legacy: writes observed in a later broadcast (see `applied_is_observed`).
    pub pixels_applied: u64,
    /// canvas/1 writes REJECTed (always 0 for legacy).
    pub pixels_rejected: u64,
    /// REJECTs by reason.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// True for legacy: it has no acks, so "applied" means "seen in a diff".
    pub applied_is_observed: bool,
    /// Writes of connected clients without ACK/REJECT (legacy: not yet observed) when verification began.
    pub unresolved_writes: u64,
    /// canvas/1 writes ACKed at a tick their replica had not reached when verification began.
    pub acked_not_visible: u64,
    /// Connections re-established after a lost one (`--reconnect`).
    pub reconnects: u64,
    /// Times an endpoint moved to a new socket, a new source port (`--rebind-every`), its connections
    /// kept.
    pub rebinds: u64,
    /// Writes in flight (no ACK or REJECT) when their connection was lost: outcome unknown.
    pub writes_unknown: u64,
    /// ACKed writes not yet visible when their connection was lost (their visibility is not followed).
    pub acked_unfollowed: u64,
    /// Legacy writes of the color the replica already showed (nothing to observe).
    pub legacy_noop_writes: u64,
    /// Legacy writes never observed within the observation timeout.
    pub legacy_unobserved: u64,
    /// Legacy datagrams the replica could not use.
    pub legacy_datagram_errors: u64,
    /// Clients keeping a full replica (`--replicas`); the others measured latency only.
    pub replicas: usize,
    /// Clients still connected with a whole replica at verification.
    pub replicas_checked: usize,
    /// Those whose replica equalled the server's canvas.
    pub replicas_matching: usize,
    /// Verification details.
    pub verify: Verdict,
    /// Write → visible latency (canvas/1: until the replica reached the ACKed tick; legacy: until the
    /// first diff entry for the pixel).
    pub latency_ms: LatencyMs,
    /// Write → ACK latency (canvas/1; no samples for legacy, which has no acknowledgements): how long
    /// ingest takes, measured apart from the broadcast.
    pub ack_latency_ms: LatencyMs,
    /// Joins of the full replicas (canvas/1): first connection attempt → join snapshot installed. Fewer
    /// samples than `replicas`: some never joined (or joined only after a lost connection).
    pub join_ms: LatencyMs,
    /// Write → visible on other servers (`--observe`).
    pub cross_node: Option<CrossNode>,
    /// Length of the write phase.
    pub duration_s: f64,
    /// Wall time of the whole run (connect, write, drain, verify, close).
    pub elapsed_s: f64,
    /// Datagrams received (`--observe` observers' included).
    pub rx_datagrams: u64,
    /// Datagram payload bytes received.
    pub rx_bytes: u64,
    /// Repair SYNCs sent (not counting the hello).
    pub syncs: u64,
    /// SYNCs by reason (canvas/1): gap (a loss), lag (behind an ACKed or announced tick with no progress),
    /// overfull (too many ticks buffered), fresh (no usable state).
    pub sync_reasons: SyncReasons,
    /// Snapshots installed in replicas (`--observe` observers' included).
    pub snapshots: u64,
    /// Replica hash mismatches.
    pub hash_mismatches: u64,
    /// Run stopped by Ctrl-C.
    pub interrupted: bool,
    /// Connections still in their closing/draining period when the process exited (quinn's
    /// `open_connections` after `wait_idle` timed out).
    pub still_closing_at_exit: usize,
    /// `--endpoints` actually used.
    pub endpoints: usize,
    /// `--threads`.
    pub threads: usize,
    /// `--seed`.
    pub seed: u64,
    /// Socket buffers as granted by the kernel.
    pub socket: SocketReport,
    /// CPU and memory of this process over the run.
    pub usage: Usage,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Write → visible across servers (`--observe`, see [`crate::cross`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrossNode {
    /// The observed servers.
    pub observe: Vec<String>,
    /// Observers connected at the end (of `observe.len()`).
    pub connected: usize,
    /// Observers whose connection failed for good (their server died); not counted in `failed`.
    pub failed: u64,
    /// Observers whose replica equalled their own server's canvas at the end.
    pub replicas_matching: usize,
    /// Why an observer's check failed, if one did.
    pub errors: Vec<String>,
    /// From a write's send by this process's clients until an observer's replica reached its ACKed tick
    /// (one sample per write and observer).
    pub latency_ms: LatencyMs,
    /// ACKed writes an observer still connected had not seen when verification began.
    pub not_seen: u64,
}

impl Summary {
    /// A table for stdout: a title line, then one row per figure in three aligned columns (what,
    /// the main figure right-aligned, details).
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String, String)> = Vec::new();
        let mut row = |k: &'static str, v: String, d: String| rows.push((k, v, d));
        let secs = self.duration_s.max(1e-9);
        let elapsed = self.elapsed_s.max(1e-9);
        let nonzero = |m: &BTreeMap<&'static str, u64>| {
            m.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        row(
            "duration",
            format!("{:.1} s", self.duration_s),
            format!(
                "write phase; {:.1} s in total{}",
                self.elapsed_s,
                if self.interrupted { " (interrupted)" } else { "" }
            ),
        );
        row(
            "clients",
            self.clients.to_string(),
            format!(
                "connected {}, failed {}, never started {}",
                self.connected, self.failed, self.never_started
            ),
        );
        if self.failed > 0 {
            row("failures", self.failed.to_string(), nonzero(&self.failed_by_kind));
        }
        row("pixels sent", self.pixels_sent.to_string(), format!("{:.0}/s", self.pixels_sent as f64 / secs));
        if self.applied_is_observed {
            row(
                "pixels observed",
                self.pixels_applied.to_string(),
                format!("no-op {}, unobserved {}", self.legacy_noop_writes, self.legacy_unobserved),
            );
        } else {
            row("pixels applied", self.pixels_applied.to_string(), "acked by the server".into());
            row("pixels rejected", self.pixels_rejected.to_string(), nonzero(&self.rejected_by_reason));
        }
        row(
            "unsettled at end",
            (self.unresolved_writes + self.acked_not_visible).to_string(),
            format!("{} unresolved, {} acked-not-visible", self.unresolved_writes, self.acked_not_visible),
        );
        let l = &self.latency_ms;
        row("latency p50", format!("{:.1} ms", l.p50), format!("write -> visible, {} samples", l.samples));
        row("latency p99", format!("{:.1} ms", l.p99), format!("max {:.1} ms", l.max));
        let a = &self.ack_latency_ms;
        if a.samples > 0 {
            row("ack p50", format!("{:.1} ms", a.p50), format!("write -> ACK, {} samples", a.samples));
            row("ack p99", format!("{:.1} ms", a.p99), format!("max {:.1} ms", a.max));
        }
        let j = &self.join_ms;
        if j.samples > 0 {
            row(
                "join p50",
                format!("{:.1} ms", j.p50),
                format!("connect -> join snapshot installed, {} of {} replicas", j.samples, self.replicas),
            );
            row("join p99", format!("{:.1} ms", j.p99), format!("max {:.1} ms", j.max));
        }
        if let Some(x) = &self.cross_node {
            let l = &x.latency_ms;
            row(
                "other node p50",
                format!("{:.1} ms", l.p50),
                format!("write -> visible on {}, {} samples", x.observe.join(" "), l.samples),
            );
            row(
                "other node p99",
                format!("{:.1} ms", l.p99),
                format!(
                    "max {:.1} ms; observers {}/{} connected ({} failed), {} matching, {} acked writes not seen",
                    l.max,
                    x.connected,
                    x.observe.len(),
                    x.failed,
                    x.replicas_matching,
                    x.not_seen
                ),
            );
        }
        row(
            "rx datagrams",
            self.rx_datagrams.to_string(),
            format!(
                "{:.1} MB, {:.2} Mbit/s",
                self.rx_bytes as f64 / 1e6,
                self.rx_bytes as f64 * 8.0 / 1e6 / elapsed
            ),
        );
        row(
            "hash mismatches",
            self.hash_mismatches.to_string(),
            format!(
                "replica repair: syncs {} (gap {}, lag {}, overfull {}, fresh {}, resume {}), snapshots {}{}{}",
                self.syncs,
                self.sync_reasons.gap,
                self.sync_reasons.lag,
                self.sync_reasons.overfull,
                self.sync_reasons.fresh,
                self.sync_reasons.resume,
                self.snapshots,
                if self.reconnects > 0 {
                    format!(
                        "; {} reconnects, {} writes in flight lost with their connection",
                        self.reconnects, self.writes_unknown
                    )
                } else {
                    String::new()
                },
                if self.rebinds > 0 { format!("; {} endpoint rebinds", self.rebinds) } else { String::new() }
            ),
        );
        match (&self.verify.error, self.verify.snapshot_tick) {
            (Some(e), None) => {
                row("replicas matching", "-".into(), format!("could not fetch the canvas: {e}"))
            }
            (_, t) => row(
                "replicas matching",
                format!("{}/{}", self.replicas_matching, self.replicas_checked),
                format!(
                    "of {} full replicas; canvas tick {}, {} fetches{}",
                    self.replicas,
                    t.map_or("-".into(), |t| t.to_string()),
                    self.verify.fetches,
                    if self.verify.snapshot_hash_ok == Some(false) { ", SNAPSHOT HASH WRONG" } else { "" }
                ),
            ),
        }
        let cpu = self.usage.user_s + self.usage.sys_s;
        row(
            "process cpu",
            format!("{cpu:.1} s"),
            format!(
                "{:.1} s user + {:.1} s sys ({:.0}% of one core), peak RSS {:.0} MiB",
                self.usage.user_s,
                self.usage.sys_s,
                100.0 * cpu / elapsed,
                self.usage.max_rss_mib
            ),
        );
        if self.still_closing_at_exit > 0 {
            row(
                "still closing at exit",
                self.still_closing_at_exit.to_string(),
                "connections in their closing period".into(),
            );
        }
        if let Some(e) = &self.first_error {
            row("first error", String::new(), e.clone());
        }

        let kw = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        let vw = rows.iter().map(|(_, v, _)| v.chars().count()).max().unwrap_or(0);
        let mut s = format!(
            "summary of {} ({}), target {} ({})\n",
            self.id,
            self.protocol.name(),
            self.target,
            self.server_addr
        );
        for (k, v, d) in &rows {
            let line = format!("  {k:<kw$}  {v:>vw$}  {d}");
            let _ = writeln!(s, "{}", line.trim_end());
        }
        s
    }
}

/// Why replicas sent SYNC (see `canvas::replica::ReplicaStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReasons {
    /// A pending tick stayed incomplete or unchained (loss).
    pub gap: u64,
    /// Behind a tick the server named, without progress.
    pub lag: u64,
    /// Too many ticks buffered.
    pub overfull: u64,
    /// No usable state (hash mismatch).
    pub fresh: u64,
    /// A new connection resumed the replica from its tick (`--reconnect`).
    pub resume: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(protocol: Protocol) -> Summary {
        Summary {
            id: "t".into(),
            protocol,
            target: "https://127.0.0.1:4499".into(),
            server_addr: "127.0.0.1:4499".into(),
            clients: 50,
            connected: 48,
            failed: 2,
            failed_by_kind: [("handshake_timeout", 2), ("protocol", 0)].into_iter().collect(),
            never_started: 0,
            handshakes: 48,
            pixels_sent: 1234,
            pixels_applied: 1200,
            pixels_rejected: 34,
            rejected_by_reason: [("busy", 34), ("cooldown", 0)].into_iter().collect(),
            applied_is_observed: protocol == Protocol::Legacy,
            unresolved_writes: 1,
            acked_not_visible: 2,
            reconnects: 0,
            rebinds: 0,
            writes_unknown: 0,
            acked_unfollowed: 0,
            legacy_noop_writes: 7,
            legacy_unobserved: 3,
            legacy_datagram_errors: 0,
            replicas: 50,
            replicas_checked: 48,
            replicas_matching: 47,
            verify: Verdict {
                checked: 48,
                matching: 47,
                snapshot_tick: Some(91),
                fetches: 2,
                ..Default::default()
            },
            latency_ms: LatencyMs { p50: 45.12, p99: 98.25, max: 120.5, samples: 1200 },
            ack_latency_ms: LatencyMs { p50: 2.5, p99: 9.75, max: 20.0, samples: 1300 },
            join_ms: LatencyMs { p50: 31.5, p99: 1004.25, max: 3001.0, samples: 48 },
            cross_node: None,
            duration_s: 5.0,
            elapsed_s: 7.25,
            rx_datagrams: 98765,
            rx_bytes: 12_345_678,
            syncs: 11,
            sync_reasons: SyncReasons { gap: 6, lag: 3, overfull: 1, fresh: 1, resume: 0 },
            snapshots: 52,
            hash_mismatches: 3,
            interrupted: false,
            still_closing_at_exit: 0,
            endpoints: 8,
            threads: 1,
            seed: 1,
            socket: SocketReport::default(),
            usage: Usage { user_s: 1.25, sys_s: 0.5, max_rss_mib: 80.0 },
            first_error: Some("client 3: handshake_timeout: no handshake after 10s".into()),
        }
    }

    #[test]
    fn table_is_aligned_and_keeps_every_figure() {
        let t = sample(Protocol::Canvas1).table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("summary of t (canvas1), target https://127.0.0.1:4499 (127.0.0.1:4499)")
        );
        // The value column is right-aligned: it ends at the same column on every row that has a value.
        let cpu = lines.iter().find(|l| l.contains("process cpu")).unwrap();
        let end = cpu.find("1.8 s").unwrap() + "1.8 s".len();
        for l in &lines[1..lines.len() - 1] {
            assert!(l.len() > end && &l[end - 1..end] != " " && &l[end..end + 2] == "  ", "{l:?} in\n{t}");
        }
        assert!(lines.last().unwrap().starts_with("  first error"), "{t}");
        for needle in [
            "5.0 s",
            "7.2 s in total",
            "connected 48, failed 2, never started 0",
            "handshake_timeout=2",
            "1234",
            "247/s",
            "1200",
            "busy=34",
            "1 unresolved, 2 acked-not-visible",
            "45.1 ms",
            "98.2 ms",
            "max 120.5 ms",
            "1200 samples",
            "31.5 ms",
            "48 of 50 replicas",
            "1004.2 ms",
            "max 3001.0 ms",
            "98765",
            "12.3 MB",
            "13.62 Mbit/s",
            "syncs 11 (gap 6, lag 3, overfull 1, fresh 1, resume 0), snapshots 52",
            "47/48",
            "canvas tick 91, 2 fetches",
            "1.2 s user + 0.5 s sys (24% of one core), peak RSS 80 MiB",
            "first error",
        ] {
            assert!(t.contains(needle), "{needle:?} missing in\n{t}");
        }
        assert!(!t.contains("protocol=0"), "{t}");
        assert!(!t.ends_with("\n\n"));
        let legacy = sample(Protocol::Legacy).table();
        assert!(legacy.contains("pixels observed") && legacy.contains("no-op 7, unobserved 3"), "{legacy}");
        assert!(!legacy.contains("pixels rejected"), "{legacy}");
    }
}
