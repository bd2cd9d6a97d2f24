//! `server --mode uring -w 2` and the `client` binary on loopback: 500 connections for ~15 s of random
//! pixels, once per protocol. Everything connects, nothing fails, every canvas/1 write is applied or
//! explicitly rejected, every replica matches a fresh snapshot, and the server's own counters agree.

use std::sync::Mutex;
use std::time::Duration;

use e2e::{free_port, json, run_client, scratch, Server};

/// The two runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(protocol: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let target = format!("https://{listen}");
    let code = run_client(
        &[
            "--target",
            &target,
            "--clients",
            "500",
            "--id",
            protocol,
            "--protocol",
            protocol,
            "--max-conn-jitter",
            "2000",
            "--min-pixel-wait",
            "100",
            "--max-pixel-wait",
            "400",
            "--duration",
            "15",
            "--endpoints",
            "16",
            "--metrics-dir",
            metrics.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "client exit code");
    let s = json(&summary);
    eprintln!("{protocol} summary: {s}");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("summary.{k} missing: {s}"));
    assert_eq!(n("clients"), 500);
    assert_eq!(n("connected"), 500, "all connected");
    assert_eq!(n("failed"), 0, "none failed");
    assert!(n("pixels_sent") > 10_000, "the load was real");
    assert_eq!(n("replicas_checked"), 500);
    assert_eq!(n("replicas_matching"), 500, "every replica matches a fresh snapshot");
    let server_code = server.stop(Duration::from_secs(20));
    assert_eq!(server_code, 0, "server exit code after SIGINT");
    let st = json(&stats);
    eprintln!("{protocol} server totals: {}", st["totals"]);
    let t = |k: &str| st["totals"][k].as_u64().unwrap_or_else(|| panic!("totals.{k} missing"));
    assert!(t("accepted") >= 501, "500 clients + the verification connection");
    assert_eq!(t("closed"), t("accepted"), "every connection closed by the end");
    assert_eq!(t("pixels_received"), n("pixels_sent"), "the server saw every write the client sent");
    if protocol == "canvas1" {
        assert_eq!(
            n("pixels_applied") + n("pixels_rejected"),
            n("pixels_sent"),
            "applied + rejected == sent"
        );
        assert_eq!(t("pixels_applied"), n("pixels_applied"), "server and client agree on applied writes");
        assert_eq!(t("pixels_rejected"), n("pixels_rejected"));
    } else {
        assert_eq!(t("pixels_applied"), n("pixels_sent"), "every legacy write was applied");
    }
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
