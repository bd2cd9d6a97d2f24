//! `server --mode uring -w 2` and the `client` binary on loopback: 500 connections for ~15 s of random
//! pixels, once per protocol. Everything connects, nothing fails, every canvas/1 write is applied or
//! explicitly rejected, every replica matches a fresh snapshot, and the server's own counters agree.

use std::sync::Mutex;
use std::time::Duration;

use e2e::load::{check_summary, check_totals};
use e2e::{client_args, free_port, json, run_client, scratch, serial, Server};

/// The two runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const CLIENTS: u64 = 500;

fn run(protocol: &str) {
    let _g = serial(&SERIAL);
    let dir = scratch(protocol);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let stats = dir.join("server.json");
    let server = Server::start(
        &["-w", "2", "--mode", "uring", "--listen", &listen, "--stats-json", stats.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let summary = dir.join("summary.json");
    let metrics = dir.join("metrics");
    let mut args = client_args(&format!("https://{listen}"), protocol, protocol, CLIENTS, 15, &summary);
    args.extend(["--endpoints", "16", "--metrics-dir", metrics.to_str().unwrap()].map(str::to_owned));
    let code = run_client(&args, Duration::from_secs(120));
    assert_eq!(code, 0, "client exit code");
    let s = json(&summary);
    let writes = check_summary(&s, protocol, protocol, CLIENTS);
    assert!(writes.sent > 10_000, "the load was real");
    let server_code = server.stop(Duration::from_secs(20));
    assert_eq!(server_code, 0, "server exit code after SIGINT");
    let st = json(&stats);
    eprintln!("{protocol} server totals: {}", st["totals"]);
    // 500 clients + the verification connection; the server's counters agree with the client's.
    check_totals(&st, CLIENTS, 1, writes);
    let workers = st["per_worker"].as_array().expect("per_worker");
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(w["endpoint"]["accepted"].as_u64().unwrap() > 0, "both workers took connections: {w}");
    }
    let csv = std::fs::read_to_string(metrics.join(format!("{protocol}.csv"))).expect("metrics csv");
    assert!(csv.starts_with("timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps"));
    assert!(csv.lines().count() >= 10);
}

#[test]
fn uring_canvas1_500_clients() {
    run("canvas1");
}

#[test]
fn uring_legacy_500_clients() {
    run("legacy");
}
