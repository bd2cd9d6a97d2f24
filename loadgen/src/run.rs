//! The run: set up endpoints and clients, write for `--duration`, drain, verify replicas, close, report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canvas::{proto, Dims, RejectReason};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{self, Ctx, Phase, Slot, Status};
use crate::config::{parse_target, Args, Protocol};
use crate::progress::{note, Progress, Stage};
use crate::stats::{FailKind, Latency, Reporter};
use crate::summary::Summary;
use crate::{net, tls, verify};

/// Legacy has no acks to wait for: give in-flight writes a few ticks to show up in a diff.
const LEGACY_DRAIN: Duration = Duration::from_secs(1);
/// How often the orchestrator looks at the clients while draining.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Build the runtime, run, print and write the summary; the process exit code.
pub fn main(args: Args) -> ExitCode {
    let rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(&args));
    rt.shutdown_timeout(Duration::from_secs(1));
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("client: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary.table());
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!(
                "client: cannot write --summary-json {}: {e} (the table above has the figures; give a path in \
                 a writable directory)",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    if summary.handshakes == 0 {
        eprintln!(
            "client: no client could connect to {} ({}): {}",
            summary.target,
            summary.server_addr,
            summary.first_error.as_deref().unwrap_or("no connection was attempted")
        );
        eprintln!("client: {}", connect_hint(&summary));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// What to check when no client could connect, after the most common failure.
fn connect_hint(s: &Summary) -> String {
    let most = s.failed_by_kind.iter().max_by_key(|(_, n)| **n).filter(|(_, n)| **n > 0).map(|(k, _)| *k);
    match most {
        Some("handshake_timeout") => format!(
            "no answer from {}: check that the server is running and listening on that UDP address (--target), \
             and that no firewall drops UDP to it; a loaded server may need a longer --handshake-timeout",
            s.server_addr
        ),
        Some("handshake") => format!(
            "the server answered but refused the handshake: check that it speaks --protocol {} (ALPN {:?})",
            s.protocol.name(),
            String::from_utf8_lossy(s.protocol.alpn())
        ),
        _ => "check --target and that the server is running".to_string(),
    }
}

/// The servers named by `flag` (`--failover`, `--observe`), resolved; each must be of `addr`'s address
/// family (the endpoints are bound for it).
async fn more_targets(
    flag: &str,
    urls: &[String],
    addr: SocketAddr,
) -> Result<Vec<(SocketAddr, String)>, String> {
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let t = parse_target(u).map_err(|e| e.replace("--target", flag))?;
        let a = t.resolve().await.map_err(|e| e.replace("--target", flag))?;
        if a.is_ipv4() != addr.is_ipv4() {
            return Err(format!("{flag} {u}: {a} is not of --target's address family ({addr})"));
        }
        out.push((a, t.host));
    }
    Ok(out)
}

/// One whole run.
pub async fn run(args: &Args) -> Result<Summary, String> {
    let t0 = Instant::now();
    let target = parse_target(&args.target)?;
    let addr = target.resolve().await?;
    let mut targets = vec![(addr, target.host.clone())];
    targets.extend(more_targets("--failover", &args.failover, addr).await?);
    let observe_targets = more_targets("--observe", &args.observe, addr).await?;
    let observers = observe_targets.len();
    let transport = Arc::new(tls::transport(args)?);
    let client_config = tls::client_config(args.protocol.alpn(), transport.clone())?;
    let verify_config = tls::client_config(proto::ALPN, transport)?;
    let n_ep = args.endpoints.min(args.clients).max(1);
    let (endpoints, socket) = net::endpoints(n_ep, addr, args.socket_buffer)?;
    if socket.rcvbuf < args.socket_buffer {
        eprintln!(
            "[{}] warning: socket buffers are {} B (asked {} B); run as root or raise net.core.rmem_max",
            args.id, socket.rcvbuf, args.socket_buffer
        );
    }
    let ctx = Arc::new(Ctx {
        protocol: args.protocol,
        seed: args.seed,
        id: args.id.clone(),
        max_conn_jitter_ms: args.max_conn_jitter,
        min_wait_ms: args.min_pixel_wait,
        max_wait_ms: args.max_pixel_wait,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        targets: targets.clone(),
        writers: args.clients,
        observe_targets: observe_targets.clone(),
        cross: (observers > 0).then(|| crate::cross::Cross::new(observers)),
        client_config,
        legacy_dims: Dims { width: args.width, height: args.height },
        full_replicas: args.replicas.unwrap_or(args.clients).min(args.clients),
        counters: Default::default(),
        latency: Latency::default(),
        ack_latency: Latency::default(),
        join_latency: Latency::default(),
        reconnect: args.reconnect.map(Duration::from_secs_f64),
        sync_flags: if args.plain_snapshots { 0 } else { proto::SYNC_ZSTD },
        write_log: match &args.write_log {
            Some(p) => Some(
                crate::audit::WriteLog::create(p).map_err(|e| format!("--write-log {}: {e}", p.display()))?,
            ),
            None => None,
        },
        first_error: Mutex::new(None),
        errors_printed: Default::default(),
    });
    let applied_label = match args.protocol {
        Protocol::Canvas1 => "acked",
        Protocol::Legacy => "observed",
    };
    let reporter = Reporter::new(args.metrics_dir.as_deref(), &args.id, applied_label)?;
    eprintln!(
        "[{}] {} clients, protocol {}, {} endpoints, target {} ({addr}), {}",
        args.id,
        args.clients,
        args.protocol.name(),
        n_ep,
        args.target,
        args.duration.map_or("until Ctrl-C".to_string(), |d| format!("{d} s"))
    );
    // From here on, stderr messages go through `note` (above the bar, when there is one).
    let progress = Progress::new(args.progress, &args.id, args.duration());
    let mut reporter = reporter.with_progress(progress.clone());

    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    // The writers, then one observer per --observe server.
    let slots: Vec<Arc<Slot>> = (0..args.clients + observers).map(|_| Arc::default()).collect();
    let mut tasks = JoinSet::new();
    for (i, slot) in slots.iter().enumerate() {
        tasks.spawn(client::run(ctx.clone(), i, slot.clone(), endpoints[i % n_ep].clone(), phase_rx.clone()));
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let rctx = ctx.clone();
    let reporter_task = tokio::spawn(async move {
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => reporter.row(&rctx.counters, &rctx.latency, &rctx.ack_latency),
                _ = stop_rx.changed() => break,
            }
        }
    });

    // Write phase.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let run_start = Instant::now();
    let end = args.duration().map(|d| run_start + d);
    let mut interrupted = false;
    let rebind_every = args.rebind_every.map(Duration::from_secs_f64);
    let mut next_rebind = rebind_every.map(|d| run_start + d);
    let mut rebinds = 0u64;
    loop {
        if let (Some(at), Some(every)) = (next_rebind, rebind_every) {
            if Instant::now() >= at {
                for (i, ep) in endpoints.iter().enumerate() {
                    let moved = net::udp_socket(addr, args.socket_buffer).and_then(|(s, _)| ep.rebind(s));
                    match moved {
                        Ok(()) => rebinds += 1,
                        Err(e) => note(format!("[{}] endpoint {i}: rebinding failed: {e}", args.id)),
                    }
                }
                next_rebind = Some(at + every);
            }
        }
        let poll = Instant::now() + Duration::from_millis(200);
        let wake = end.map_or(poll, |e| e.min(poll));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            _ = &mut ctrl_c => {
                note(format!("[{}] interrupted: stopping writes, verifying (Ctrl-C again to skip)", args.id));
                interrupted = true;
                break;
            }
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        if ctx.counters.failed.load(Relaxed) as usize >= args.clients {
            note(format!("[{}] every client failed: ending the run early", args.id));
            break;
        }
    }
    let duration_s = run_start.elapsed().as_secs_f64();
    phase_tx.send_replace(Phase::Drain);
    progress.stage(&args.id, Stage::Verify);

    // Drain, then verify (a second Ctrl-C skips both).
    let verify_timeout = Duration::from_secs(args.verify_timeout);
    let settle = async {
        let budget = match args.protocol {
            Protocol::Canvas1 => verify_timeout,
            Protocol::Legacy => LEGACY_DRAIN.min(verify_timeout),
        };
        let deadline = Instant::now() + budget;
        // Every writer's writes ACKed and visible on its server, and on every observer's.
        let settled = || {
            let (writers, watchers) = slots.split_at(args.clients);
            writers.iter().all(|s| s.status() != Status::Open || s.settled())
                && watchers.iter().enumerate().all(|(j, s)| {
                    s.status() != Status::Open || ctx.cross.as_ref().is_none_or(|x| x.not_seen(j) == 0)
                })
        };
        while Instant::now() < deadline && !settled() {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let (writers, watchers) = slots.split_at(args.clients);
        let open = || writers.iter().filter(|s| s.status() == Status::Open);
        let unresolved: u64 = open().map(|s| u64::from(s.unresolved.load(Relaxed))).sum();
        let invisible: u64 = open().map(|s| u64::from(s.invisible.load(Relaxed))).sum();
        // Of the observers still connected (one whose server died sees nothing more).
        let not_seen: u64 = ctx.cross.as_ref().map_or(0, |x| {
            let open = watchers.iter().enumerate().filter(|(_, s)| s.status() == Status::Open);
            open.map(|(j, _)| x.not_seen(j) as u64).sum()
        });
        let deadline = Instant::now() + verify_timeout;
        let verdict = if ctx.counters.handshakes.load(Relaxed) == 0 {
            verify::Verdict { error: Some("no client connected".into()), ..Default::default() }
        } else {
            verify::verify(writers, &endpoints[0], &verify_config, &targets, deadline, ctx.sync_flags).await
        };
        // Each observer against its own server.
        let mut watched = Vec::new();
        for (slot, t) in watchers.iter().zip(&observe_targets) {
            let one = std::slice::from_ref(slot);
            watched.push(
                verify::verify(
                    one,
                    &endpoints[0],
                    &verify_config,
                    std::slice::from_ref(t),
                    deadline,
                    ctx.sync_flags,
                )
                .await,
            );
        }
        (unresolved, invisible, verdict, not_seen, watched)
    };
    let (unresolved, invisible, verdict, not_seen, watched) = tokio::select! {
        r = settle => r,
        _ = tokio::signal::ctrl_c() => {
            note(format!("[{}] interrupted again: skipping verification", args.id));
            let skipped = verify::Verdict { error: Some("skipped (interrupted)".into()), ..Default::default() };
            (0, 0, skipped, 0, Vec::new())
        }
    };

    // Close: clients send CONNECTION_CLOSE, then the endpoints get a bounded chance to deliver it.
    // (Dropping an aborted client's connection closes it too: quinn closes on the last handle's drop.)
    phase_tx.send_replace(Phase::Close);
    progress.stage(&args.id, Stage::Close);
    let close_bound = Duration::from_secs_f64(args.close_timeout);
    let closed =
        tokio::time::timeout(close_bound, async { while tasks.join_next().await.is_some() {} }).await;
    if closed.is_err() {
        tasks.abort_all();
    }
    let idle_by = tokio::time::Instant::now() + close_bound;
    for ep in &endpoints {
        ep.close(0u32.into(), b"done");
    }
    for ep in &endpoints {
        let _ = tokio::time::timeout_at(idle_by, ep.wait_idle()).await;
    }
    let still_closing: usize = endpoints.iter().map(|e| e.open_connections()).sum();
    if still_closing > 0 {
        note(format!(
            "[{}] note: {still_closing} connections still in their closing period after --close-timeout {} s \
             (CONNECTION_CLOSE was queued; draining lasts 3 PTOs, long when RTT estimates are inflated)",
            args.id, args.close_timeout
        ));
    }
    let _ = stop_tx.send(true);
    let _ = reporter_task.await;
    progress.finish();
    if let (Some(l), Some(p)) = (&ctx.write_log, &args.write_log) {
        l.flush().map_err(|e| format!("--write-log {}: {e}", p.display()))?;
    }

    let c = &ctx.counters;
    let count = |st: Status| slots[..args.clients].iter().filter(|s| s.status() == st).count();
    let cross_node = ctx.cross.as_ref().map(|x| crate::summary::CrossNode {
        observe: args.observe.clone(),
        connected: slots[args.clients..]
            .iter()
            .filter(|s| matches!(s.status(), Status::Open | Status::Closed))
            .count(),
        failed: x.failed.load(Relaxed),
        replicas_matching: watched.iter().map(|v| v.matching).sum(),
        errors: watched.iter().filter_map(|v| v.error.clone()).collect(),
        latency_ms: x.latency.total(),
        not_seen,
    });
    let failed_by_kind: BTreeMap<&'static str, u64> =
        FailKind::ALL.iter().zip(&c.fail_kinds).map(|(k, v)| (k.name(), v.load(Relaxed))).collect();
    let rejected_by_reason: BTreeMap<&'static str, u64> =
        RejectReason::ALL.iter().zip(&c.rejected).map(|(r, v)| (r.name(), v.load(Relaxed))).collect();
    let first_error = ctx.first_error.lock().expect("error lock").clone();
    Ok(Summary {
        id: args.id.clone(),
        protocol: args.protocol,
        target: args.target.clone(),
        server_addr: addr.to_string(),
        clients: args.clients,
        connected: count(Status::Closed) + count(Status::Open),
        failed: c.failed.load(Relaxed),
        failed_by_kind,
        never_started: count(Status::Waiting),
        handshakes: c.handshakes.load(Relaxed),
        pixels_sent: c.pixels_sent.load(Relaxed),
        pixels_applied: c.applied.load(Relaxed),
        pixels_rejected: c.rejected_total(),
        rejected_by_reason,
        applied_is_observed: args.protocol == Protocol::Legacy,
        unresolved_writes: unresolved,
        acked_not_visible: invisible,
        legacy_noop_writes: c.legacy_noop_writes.load(Relaxed),
        legacy_unobserved: c.legacy_unobserved.load(Relaxed),
        legacy_datagram_errors: c.legacy_errors.load(Relaxed),
        replicas: ctx.full_replicas,
        replicas_checked: verdict.checked,
        replicas_matching: verdict.matching,
        verify: verdict,
        latency_ms: ctx.latency.total(),
        ack_latency_ms: ctx.ack_latency.total(),
        join_ms: ctx.join_latency.total(),
        cross_node,
        duration_s,
        elapsed_s: t0.elapsed().as_secs_f64(),
        rx_datagrams: c.rx_datagrams.load(Relaxed),
        rx_bytes: c.rx_bytes.load(Relaxed),
        syncs: c.syncs.load(Relaxed),
        sync_reasons: crate::summary::SyncReasons {
            gap: c.syncs_gap.load(Relaxed),
            lag: c.syncs_lag.load(Relaxed),
            overfull: c.syncs_overfull.load(Relaxed),
            fresh: c.syncs_fresh.load(Relaxed),
            resume: c.syncs_resume.load(Relaxed),
        },
        reconnects: c.reconnects.load(Relaxed),
        rebinds,
        writes_unknown: c.writes_unknown.load(Relaxed),
        acked_unfollowed: c.acked_unfollowed.load(Relaxed),
        snapshots: c.snapshots.load(Relaxed),
        hash_mismatches: c.hash_mismatches.load(Relaxed),
        interrupted,
        still_closing_at_exit: still_closing,
        endpoints: n_ep,
        threads: args.threads,
        seed: args.seed,
        socket,
        usage: crate::sys::usage(),
        first_error,
    })
}
