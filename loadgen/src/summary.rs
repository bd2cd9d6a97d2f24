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
    /// Handshakes that completed (including clients that failed later).
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
    /// Length of the write phase.
    pub duration_s: f64,
    /// Wall time of the whole run (connect, write, drain, verify, close).
    pub elapsed_s: f64,
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Datagram payload bytes received.
    pub rx_bytes: u64,
    /// Repair SYNCs sent (not counting the hello).
    pub syncs: u64,
    /// Snapshots installed in replicas.
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

impl Summary {
    /// A fixed-width table for stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<22} {v}");
        };
        row("id / protocol", format!("{} / {}", self.id, self.protocol.name()));
        row("target", format!("{} ({})", self.target, self.server_addr));
        row(
            "duration",
            format!(
                "{:.1} s write phase, {:.1} s total{}",
                self.duration_s,
                self.elapsed_s,
                if self.interrupted { " (interrupted)" } else { "" }
            ),
        );
        row(
            "clients",
            format!(
                "{} connected {} failed {} never started {}",
                self.clients, self.connected, self.failed, self.never_started
            ),
        );
        if self.failed > 0 {
            let kinds: Vec<String> = self
                .failed_by_kind
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            row("failures", kinds.join(" "));
        }
        let secs = self.duration_s.max(1e-9);
        row("pixels sent", format!("{} ({:.0}/s)", self.pixels_sent, self.pixels_sent as f64 / secs));
        if self.applied_is_observed {
            row(
                "pixels observed",
                format!(
                    "{} (no-op {}, unobserved {})",
                    self.pixels_applied, self.legacy_noop_writes, self.legacy_unobserved
                ),
            );
        } else {
            row("pixels applied", self.pixels_applied.to_string());
            let reasons: Vec<String> = self
                .rejected_by_reason
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            row("pixels rejected", format!("{} {}", self.pixels_rejected, reasons.join(" ")));
        }
        row(
            "unsettled at end",
            format!("{} unresolved, {} acked-not-visible", self.unresolved_writes, self.acked_not_visible),
        );
        row(
            "latency ms",
            format!(
                "p50 {:.1}  p99 {:.1}  max {:.1}  ({} samples)",
                self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.max, self.latency_ms.samples
            ),
        );
        row(
            "rx",
            format!(
                "{} datagrams, {:.1} MB, {:.2} Mbit/s",
                self.rx_datagrams,
                self.rx_bytes as f64 / 1e6,
                self.rx_bytes as f64 * 8.0 / 1e6 / self.elapsed_s.max(1e-9)
            ),
        );
        row(
            "replica repair",
            format!(
                "syncs {} snapshots {} hash mismatches {}",
                self.syncs, self.snapshots, self.hash_mismatches
            ),
        );
        let verdict = match (&self.verify.error, self.verify.snapshot_tick) {
            (Some(e), None) => format!("could not fetch the canvas: {e}"),
            (_, t) => format!(
                "{}/{} replicas match (canvas tick {}, {} fetches{})",
                self.replicas_matching,
                self.replicas_checked,
                t.map_or("-".into(), |t| t.to_string()),
                self.verify.fetches,
                if self.verify.snapshot_hash_ok == Some(false) { ", SNAPSHOT HASH WRONG" } else { "" }
            ),
        };
        row("verification", verdict);
        row(
            "process",
            format!(
                "cpu {:.1} s user + {:.1} s sys ({:.0}% of one core), peak RSS {:.0} MiB",
                self.usage.user_s,
                self.usage.sys_s,
                100.0 * (self.usage.user_s + self.usage.sys_s) / self.elapsed_s.max(1e-9),
                self.usage.max_rss_mib
            ),
        );
        if self.still_closing_at_exit > 0 {
            row("still closing at exit", self.still_closing_at_exit.to_string());
        }
        if let Some(e) = &self.first_error {
            row("first error", e.clone());
        }
        s
    }
}
