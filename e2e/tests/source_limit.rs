//! `--source-writes-per-sec`: 20 clients on one source address (loopback) writing ~270 times a second in
//! all, against a limit of 50 a second for that address: the address gets its 50 a second (plus one
//! second's burst), the rest is REJECTed with the wait (reason cooldown), every write is answered, and every
//! replica still matches.

use std::time::Duration;

use e2e::{client_args, free_port, json, run_client, scratch, Server};

const LIMIT: f64 = 50.0;

#[test]
fn one_source_gets_its_rate_and_the_rest_is_rejected() {
    let dir = scratch("source-limit");
    let listen = format!("127.0.0.1:{}", free_port());
    let stats = dir.join("server.json");
    let server = Server::start(
        &[
            "-w",
            "1",
            "--listen",
            &listen,
            "--source-writes-per-sec",
            "50",
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let summary = dir.join("summary.json");
    let mut args = client_args(&format!("https://{listen}"), "one-source", "canvas1", 20, 6, &summary);
    for (flag, v) in [("--min-pixel-wait", "50"), ("--max-pixel-wait", "100")] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = v.to_string();
    }
    assert_eq!(run_client(&args, Duration::from_secs(90)), 0);
    assert_eq!(server.stop(Duration::from_secs(20)), 0);
    let s = json(&summary);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
    let secs = s["duration_s"].as_f64().unwrap();
    let (sent, applied, rejected) = (n("pixels_sent"), n("pixels_applied"), n("pixels_rejected"));
    eprintln!(
        "{sent} sent in {secs:.1} s, {applied} applied, {rejected} rejected ({})",
        s["rejected_by_reason"]
    );
    assert_eq!(n("failed"), 0);
    assert_eq!(applied + rejected, sent, "every write answered");
    assert_eq!(
        s["rejected_by_reason"]["cooldown"].as_u64(),
        Some(rejected),
        "rejected for the rate, with a wait"
    );
    assert!(applied as f64 <= LIMIT * (secs + 1.0) + LIMIT, "{applied} applied: over the limit");
    assert!(applied as f64 >= LIMIT * (secs - 1.0), "{applied} applied: the source did not get its rate");
    assert_eq!(n("replicas_matching"), 20);
    let st = json(&stats);
    let e = &st["per_worker"][0]["endpoint"];
    assert_eq!(e["source_rate_limited"].as_u64(), Some(rejected), "{e}");
}
