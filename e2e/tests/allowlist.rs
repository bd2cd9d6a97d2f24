//! `--allow` in uring mode on loopback: datagrams from outside the list are dropped before the endpoint and
//! counted; a listed source connects and writes as usual. (xdp mode and a second host: testbed.rs.)

use std::net::UdpSocket;
use std::time::Duration;

use e2e::load::check_summary;
use e2e::{client_args, free_port, json, run_client, scratch, Server};

fn run(allow: &str) -> serde_json::Value {
    let dir = scratch(&format!("allow-{}", allow.replace(['/', ':', '.'], "_")));
    let listen = format!("127.0.0.1:{}", free_port());
    let stats = dir.join("server.json");
    let server = Server::start(
        &["--listen", &listen, "--allow", allow, "--stats-json", stats.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..50 {
        s.send_to(&[0u8; 1200], &listen).unwrap();
    }
    if allow.starts_with("127.") {
        let summary = dir.join("summary.json");
        let args = client_args(&format!("https://{listen}"), "allowed", "canvas1", 10, 3, &summary);
        assert_eq!(run_client(&args, Duration::from_secs(60)), 0);
        check_summary(&json(&summary), "allowed", "canvas1", 10);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.stop(Duration::from_secs(20)), 0);
    json(&stats)
}

#[test]
fn sources_outside_the_allowlist_never_reach_the_endpoint() {
    let st = run("192.0.2.0/24");
    let b = &st["per_worker"][0]["backend"];
    assert_eq!(b["rx_not_allowed"].as_u64(), Some(50), "{b}");
    assert_eq!(b["rx_datagrams"].as_u64(), Some(0), "{b}");
    assert_eq!(st["per_worker"][0]["endpoint"]["dropped_packets"].as_u64(), Some(0));

    let st = run("127.0.0.0/8");
    let b = &st["per_worker"][0]["backend"];
    assert_eq!(b["rx_not_allowed"].as_u64(), Some(0), "{b}");
    assert!(b["rx_datagrams"].as_u64().unwrap() >= 50, "{b}");
}
