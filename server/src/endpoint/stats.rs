//! The endpoint's counters (per worker), written to `--stats-json` and read by the live metrics.

use canvas::RejectReason;

/// Endpoint counters (per worker), written to `--stats-json`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EndpointStats {
    /// Connections accepted: their first datagram authenticated as a QUIC Initial.
    pub accepted: u64,
    /// Connections closed and removed.
    pub closed: u64,
    /// Connection attempts refused at max_conns.
    pub refused: u64,
    /// Initials dropped because `max_half_open` handshakes were in progress.
    pub refused_half_open: u64,
    /// Handshakes abandoned at `handshake_timeout` (their state dropped).
    pub handshake_timeouts: u64,
    /// Connections that negotiated canvas/1.
    pub conns_canvas1: u64,
    /// Connections that negotiated the legacy protocol.
    pub conns_legacy: u64,
    /// Retry packets sent.
    pub retries: u64,
    /// Times stateless Retry switched on by itself (`--retry-above`, `--retry-above-rate`).
    pub retry_switched_on: u64,
    /// Of those, times the handshake rate alone switched it on (`--retry-above-rate`).
    pub retry_switched_on_rate: u64,
    /// Initial packets with an invalid retry token.
    pub bad_tokens: u64,
    /// Version negotiation packets sent.
    pub version_negotiations: u64,
    /// Packets dropped: unparsable header or unknown connection id on a non-Initial packet.
    pub dropped_packets: u64,
    /// Packets quiche refused.
    pub recv_errors: u64,
    /// First datagrams of would-be connections that did not authenticate as an Initial (junk, a wrong
    /// key): dropped with no state kept.
    pub junk_initials: u64,
    /// 1-RTT packets that arrived before their connection's handshake completed here (the client's
    /// Finished lost or overtaken) and were held for it.
    pub early_held: u64,
    /// Of those, given to quiche once the handshake completed (the rest went with a connection that
    /// never completed it).
    pub early_replayed: u64,
    /// Such packets dropped: their connection already held 4, or the worker 1,024 or 1 MiB of them.
    pub early_dropped: u64,
    /// Pixel writes received.
    pub pixels_received: u64,
    /// Writes handed to the master.
    pub pixels_queued: u64,
    /// Writes acknowledged as applied (canvas/1 ACKs plus legacy writes the master applied).
    pub pixels_applied: u64,
    /// Writes refused, by reason.
    pub rejected_out_of_bounds: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_bad_color: u64,
    /// See `rejected_out_of_bounds` (the per-source limit's REJECTs included).
    pub rejected_cooldown: u64,
    /// Writes REJECTed by `--source-writes-per-sec` (counted in `rejected_cooldown` too).
    pub source_rate_limited: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_busy: u64,
    /// See `rejected_out_of_bounds`.
    pub rejected_malformed: u64,
    /// Legacy datagrams ignored for not being 5 bytes (the predecessor ignored them too).
    pub legacy_ignored: u64,
    /// SYNC requests served.
    pub syncs: u64,
    /// Snapshots sent (canvas/1 stream and legacy RLE).
    pub snapshots_sent: u64,
    /// Tick diffs re-sent on the stream in SYNC replies.
    pub diffs_resent: u64,
    /// SYNC replies that coalesced two or more ticks into one DIFF (counted in `diffs_resent` too).
    pub deltas_coalesced: u64,
    /// Ticks those coalesced DIFFs spanned.
    pub delta_ticks: u64,
    /// Entries (pixels) those coalesced DIFFs carried.
    pub delta_entries: u64,
    /// Broadcast DATAGRAMs handed to quiche.
    pub broadcast_dgrams: u64,
    /// Their payload bytes.
    pub broadcast_bytes: u64,
    /// Broadcast waves: times the newest changes were offered to every connection (at most one per
    /// publication; fewer when a fan-out pass takes longer than a tick).
    pub waves: u64,
    /// Broadcast pulls that took a coalesced delta (the connection lacked two or more changing ticks).
    pub catchups: u64,
    /// Coalesced deltas built, for pulls and SYNC replies (each shared by all that ask for the same span).
    pub catchup_deltas: u64,
    /// Ticks those deltas spanned.
    pub catchup_ticks: u64,
    /// Entries (pixels) those deltas carried.
    pub catchup_entries: u64,
    /// Pulls from a tick the history no longer reaches (canvas/1 clients then repair with SYNC; legacy
    /// connections get the newest snapshot).
    pub catchup_lost: u64,
    /// Pulls that would have built a coalesced delta past `--catchup-budget-mib` and took one already
    /// alive that covers their tick instead (it moves them part of the way).
    pub catchup_shared: u64,
    /// Pulls that waited for the next tick: past the budget and no live delta covered their tick.
    pub catchup_deferred: u64,
    /// Times feeding a connection's broadcast stopped at its window while the window was below
    /// `broadcast_inflight` (up to twice a visit; see `EndpointConfig::broadcast_queue`).
    pub window_held: u64,
    /// Broadcast windows halved because the connection's path queued (smoothed RTT more than
    /// `broadcast_queue` above its minimum).
    pub window_cuts: u64,
    /// The most bytes of coalesced deltas alive at once (held by connections or cached), as seen when one
    /// was built.
    pub catchup_live_peak: u64,
    /// Publications received from the master.
    pub publications: u64,
    /// Publications missed (the worker fell behind the master's queue).
    pub publication_gaps: u64,
    /// Packets held back to honour quiche's pacing.
    pub paced_holds: u64,
    /// Packets quiche produced and handed to the backend.
    pub packets_out: u64,
    /// Broadcast datagrams larger than the peer accepts (skipped).
    pub dgram_too_big: u64,
    /// Connections closed for not reading their control stream.
    pub closed_not_reading: u64,
    /// quiche timeouts fired.
    pub timeouts: u64,
    /// Packets of an open connection that came from a new client address (NAT rebinding, a new network).
    pub migrations: u64,
    /// Datagrams that arrived here for another worker's connection and were handed to it.
    pub handed_off: u64,
    /// Of those, dropped because the owner's hand-off queue was full.
    pub handoff_dropped: u64,
    /// Datagrams of this worker's connections handed over by other workers.
    pub handed_in: u64,
    /// Write received → its ACK encoded (the master applied it and its tick came back), per ACKed write.
    pub ack_applied: WaitHistogram,
    /// Write received → its ACK handed to quiche (written onto the control stream; quiche then sends it as
    /// its congestion window allows), per batch of answers, timed from the oldest write in the batch. The
    /// rest of a client's write→ACK time is quiche, the network and the client.
    pub ack_handed: WaitHistogram,
    /// Time between two receives of the worker loop while it is busy (one loop iteration: receive, timers,
    /// publications, a slice of sending), per iteration that did not sleep: how long an arriving packet can
    /// wait in the socket or the AF_XDP RX ring. Preemption of the worker's thread counts too.
    pub rx_gap: WaitHistogram,
}

/// Upper bounds (ms) of the [`WaitHistogram`] buckets; the last bucket counts everything above.
pub const WAIT_BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// Counts of waits per bucket of [`WAIT_BUCKETS_MS`] (plus one above), and their sum.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct WaitHistogram {
    /// Counts per bucket: `buckets[i]` counts waits ≤ `WAIT_BUCKETS_MS[i]` and above the bound before.
    pub buckets: [u64; WAIT_BUCKETS_MS.len() + 1],
    /// Sum of the waits, microseconds.
    pub sum_us: u64,
}

impl WaitHistogram {
    /// Count one wait.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = d.as_micros();
        let b = WAIT_BUCKETS_MS
            .iter()
            .position(|&ub| us <= u128::from(ub) * 1000)
            .unwrap_or(WAIT_BUCKETS_MS.len());
        self.buckets[b] += 1;
        self.sum_us += d.as_micros() as u64;
    }

    /// Add another histogram's counts (another worker's).
    pub fn merge(&mut self, other: &WaitHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// Waits counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The bucket bound (ms) under which at least `q` of the waits fall; None above the last bound or when
    /// nothing was counted.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let want = (q * n as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return WAIT_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }

    /// [`WaitHistogram::quantile_ms`] for people: "≤ 250 ms", or "> 10000 ms" above the last bound.
    pub fn quantile_label(&self, q: f64) -> String {
        match self.quantile_ms(q) {
            Some(ms) => format!("≤ {ms} ms"),
            None => format!("> {} ms", WAIT_BUCKETS_MS[WAIT_BUCKETS_MS.len() - 1]),
        }
    }
}

impl EndpointStats {
    pub(super) fn reject(&mut self, r: RejectReason) {
        *match r {
            RejectReason::OutOfBounds => &mut self.rejected_out_of_bounds,
            RejectReason::BadColor => &mut self.rejected_bad_color,
            RejectReason::Cooldown => &mut self.rejected_cooldown,
            RejectReason::Busy => &mut self.rejected_busy,
            RejectReason::Malformed => &mut self.rejected_malformed,
        } += 1;
    }

    /// All rejected writes.
    pub fn rejected(&self) -> u64 {
        self.rejected_out_of_bounds
            + self.rejected_bad_color
            + self.rejected_cooldown
            + self.rejected_busy
            + self.rejected_malformed
    }
}

#[cfg(test)]
mod tests {
    use super::{WaitHistogram, WAIT_BUCKETS_MS};
    use std::time::Duration;

    #[test]
    fn wait_histogram_buckets_quantiles_and_merge() {
        let mut h = WaitHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None, "nothing counted");
        // 98 waits of 3 ms, one of exactly 100 ms, one of 20 s.
        for _ in 0..98 {
            h.record(Duration::from_millis(3));
        }
        h.record(Duration::from_millis(100));
        h.record(Duration::from_secs(20));
        assert_eq!(h.count(), 100);
        assert_eq!(h.buckets[1], 98, "3 ms falls in (1, 5]");
        assert_eq!(h.buckets[5], 1, "100 ms is in the bucket bounded by 100");
        assert_eq!(h.buckets[WAIT_BUCKETS_MS.len()], 1, "20 s is above the last bound");
        assert_eq!(h.quantile_ms(0.5), Some(5));
        assert_eq!(h.quantile_ms(0.99), Some(100));
        assert_eq!(h.quantile_ms(1.0), None, "the slowest is above every bound");
        assert_eq!(
            (h.quantile_label(0.99).as_str(), h.quantile_label(1.0).as_str()),
            ("≤ 100 ms", "> 10000 ms")
        );
        assert_eq!(h.sum_us, 98 * 3_000 + 100_000 + 20_000_000);
        let mut sum = WaitHistogram::default();
        sum.merge(&h);
        sum.merge(&h);
        assert_eq!((sum.count(), sum.buckets[1], sum.sum_us), (200, 196, 2 * h.sum_us));
    }
}
