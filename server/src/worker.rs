//! The worker loop: receive a batch, exchange hand-offs with the other workers, take publications, fire
//! timers, flush, and sleep adaptively.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;
use datapath::seam::Datapath;

/// Worker loop tuning.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// Datagrams taken from the backend per receive call.
    pub rx_batch: usize,
    /// Never sleep: spin on the rings (for dedicated cores on bare metal).
    pub busy_poll: bool,
    /// After the last activity keep polling this long before sleeping.
    pub spin: Duration,
    /// Longest sleep when idle (bounds how late a publication is noticed).
    pub idle_wait: Duration,
    /// After shutdown is requested, how long closing connections may take.
    pub drain: Duration,
}

/// Receive batches taken per loop iteration at most (when full batches keep coming).
pub const RX_BATCHES_PER_LOOP: usize = 8;

/// Idle wait of a worker that has no connections.
pub const NO_CONN_WAIT: Duration = Duration::from_millis(50);

/// How often [`run_reporting`] reports (the live metrics' refresh period).
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Default loop tuning.
pub const DEFAULT_LOOP: LoopConfig = LoopConfig {
    rx_batch: 256,
    busy_poll: false,
    spin: Duration::from_micros(50),
    idle_wait: Duration::from_millis(1),
    drain: Duration::from_secs(2),
};

/// Run one worker until `stop` is set and its connections are closed (or the drain time passes).
pub fn run<B: Datapath>(
    ep: &mut Endpoint,
    backend: &mut B,
    cfg: &LoopConfig,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    run_reporting(ep, backend, cfg, stop, |_, _| {})
}

/// [`run`], calling `report` with the endpoint and backend at most every [`REPORT_EVERY`] (for
/// live metrics; it runs on this worker's thread between batches).
pub fn run_reporting<B: Datapath, R: FnMut(&Endpoint, &B)>(
    ep: &mut Endpoint,
    backend: &mut B,
    cfg: &LoopConfig,
    stop: &AtomicBool,
    mut report: R,
) -> std::io::Result<()> {
    let mut last_activity = Instant::now();
    let mut drain_until: Option<Instant> = None;
    let mut last_report = Instant::now();
    // The start of the previous iteration if it did work (`EndpointStats::rx_gap`).
    let mut busy_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(t) = busy_since.replace(now) {
            ep.record_rx_gap(now.saturating_duration_since(t));
        }
        if now.duration_since(last_report) >= REPORT_EVERY {
            report(ep, backend);
            last_report = now;
        }
        // Drain what has arrived (up to RX_BATCHES_PER_LOOP batches) before the next slice of fan-out: client
        // ACKs and writes arrive at a rate proportional to what is sent, and a socket left to fill drops them.
        let mut n = 0;
        for _ in 0..RX_BATCHES_PER_LOOP {
            let got = backend.recv(cfg.rx_batch, |addrs, pkt| ep.on_datagram(now, addrs, pkt))?;
            n += got;
            if got < cfg.rx_batch {
                break;
            }
        }
        // Datagrams of other workers' connections go to their owners; theirs for ours come in (clients
        // whose address changed: see `Endpoint::on_datagram`). An owner that sleeps sees them within
        // `idle_wait`.
        ep.pass_handoffs(backend);
        n += ep.take_handoffs(now, backend, cfg.rx_batch);
        ep.poll_publications(now);
        ep.on_timers(now);
        ep.flush(now, backend);
        backend.flush()?;
        if drain_until.is_none() && stop.load(Ordering::Acquire) {
            ep.close_all();
            drain_until = Some(now + cfg.drain);
            continue;
        }
        if let Some(until) = drain_until {
            if ep.conn_count() == 0 || now >= until {
                ep.flush(now, backend);
                backend.flush()?;
                return Ok(());
            }
        }
        if n > 0 || ep.has_work() {
            last_activity = now;
            continue;
        }
        // Nothing was done: the next iteration's start is not a gap a packet waited through.
        busy_since = None;
        if cfg.busy_poll || now.duration_since(last_activity) < cfg.spin {
            continue;
        }
        // With no connections there is no publication to notice promptly: an arriving packet completes the
        // wait anyway, so sleep longer.
        let mut wait = if ep.conn_count() == 0 { cfg.idle_wait.max(NO_CONN_WAIT) } else { cfg.idle_wait };
        if let Some(t) = ep.next_timeout() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        backend.wait(wait)?;
    }
}
