//! `scripts/many_conns.sh` (root: a private network namespace): 2,000 connections arriving over 5 s, each
//! writing one pixel every 1–11 s for 10 s, 20 full replicas per load generator: every connection
//! connected, none failed, every write ACKed and visible, every replica matching (`conns.json`, `pass`),
//! and the namespace gone afterwards. The script is the harness of the 100,000-idle and 50,000-writing
//! figures in the README; this keeps it working. Bounded (about a minute here).
//!
//! Needs root. Without root it says why and passes, unless CI=true.

use std::process::Command;
use std::time::Duration;

use e2e::netns::{root_or_skip, run_bounded};
use e2e::{json, scratch};

#[test]
fn many_conns_script_holds_and_checks_its_connections() {
    if !root_or_skip("many_conns", "a network namespace") {
        return;
    }
    let out = scratch("many-conns");
    let mut cmd = Command::new("timeout");
    cmd.args(["--signal=TERM", "--kill-after=20", "240", "bash"])
        .arg(e2e::script("many_conns.sh"))
        .args([
            "--conns",
            "2000",
            "--arrive",
            "5",
            "--hold",
            "10",
            "--write-every",
            "6",
            "--replicas",
            "20",
            "--out",
        ])
        .arg(&out);
    let o = run_bounded(&mut cmd, Duration::from_secs(300));
    println!("{}", o.stdout);
    eprintln!("{}", o.stderr);
    let r = json(&out.join("conns.json"));
    assert_eq!(r["pass"], true, "{r:#}");
    assert_eq!((r["connected"].as_u64(), r["failed"].as_u64()), (Some(2000), Some(0)), "{r:#}");
    assert_eq!(r["unsettled"].as_u64(), Some(0), "every ACKed write visible: {r:#}");
    assert!(
        r["writes_acked"].as_u64().is_some_and(|n| n > 0) && r["writes_acked"] == r["writes_sent"],
        "{r:#}"
    );
    assert_eq!(o.code, 0, "many_conns.sh exit code");
    let ns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
    let name = r["namespace"].as_str().expect("namespace in conns.json");
    assert!(
        !String::from_utf8_lossy(&ns.stdout).lines().any(|l| l.split_whitespace().next() == Some(name)),
        "{name} removed"
    );
    let _ = std::fs::remove_dir_all(&out);
}
