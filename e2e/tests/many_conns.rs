//! `scripts/many_conns.sh` (root: a private network namespace): 2,000 connections arriving over 5 s, each
//! writing one pixel every 1–11 s for 10 s, 20 full replicas per load generator: every connection
//! connected, none failed, every write ACKed and visible, every replica matching (`conns.json`, `pass`),
//! and the namespace gone afterwards. The script is the harness of the 100,000-idle and 50,000-writing
//! figures in the README; this keeps it working. Bounded (about a minute here).
//!
//! Needs root. Without root it says why and passes, unless CI=true.

use std::time::Duration;

use e2e::netns::{netns_list, root_or_skip, run_script};
use e2e::{json, scratch};

#[test]
fn many_conns_script_holds_and_checks_its_connections() {
    if !root_or_skip("many_conns", "a network namespace") {
        return;
    }
    let out = scratch("many-conns");
    let args = ["--conns", "2000", "--arrive", "5", "--hold", "10", "--write-every", "6", "--replicas", "20"];
    let o = run_script("many_conns.sh", &args, &out, Duration::from_secs(240));
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
    let name = r["namespace"].as_str().expect("namespace in conns.json");
    assert!(!netns_list().iter().any(|n| n == name), "{name} removed");
    let _ = std::fs::remove_dir_all(&out);
}
