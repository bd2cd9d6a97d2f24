//! Three canvas servers, one canvas (`--cluster`): a 3-node NATS JetStream cluster on loopback
//! (`e2e::nats::Nats`), three servers on loopback ports joined to it, and one loadgen per server writing
//! through it. Every node ends on the same canvas (hash) at the same stream position, every client's
//! replica matches its node, every write was ACKed and every ACKed write is visible, on its own node and
//! (observers, `client --observe`) on the other two; one NATS server killed
//! mid-run loses nothing and fails no client. Then: a node started later loads the newest snapshot from
//! the cluster's bucket and applies the stream after it before it serves, and `--cluster` with no NATS answering is a clear error. And: a canvas server killed mid-run
//! (SIGKILL): its clients (`client --reconnect --failover`) resume on another node from their ticks, with
//! deltas, and converge.
//!
//! Needs `nats-server` (scripts/setup.sh). Without it the test says why and passes, unless CI=true.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::nats::Nats;
use e2e::{bin, client_args, free_port, free_tcp_port, json, scratch, wait_bounded, Server};

const CLIENTS: u64 = 30;
const SECS: u32 = 10;

struct Node {
    server: Server,
    listen: String,
    metrics: u16,
    stats: std::path::PathBuf,
}

fn start_node(nats: &Nats, dir: &std::path::Path, name: &str) -> Node {
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = free_tcp_port();
    let stats = dir.join(format!("stats-{name}.json"));
    let server = Server::start(
        &[
            "-w",
            "1",
            "--listen",
            &listen,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--cluster",
            &nats.cluster_arg(),
            "--cluster-node",
            name,
            "--cluster-snapshot-secs",
            "2",
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    Node { server, listen, metrics, stats }
}

fn metrics(n: &Node) -> serde_json::Value {
    serde_json::from_slice(&e2e::http_body(n.metrics, "/metrics.json")).expect("metrics.json")
}

/// (canvas_hash, cluster_seq) of a node's /metrics.json.
fn state(n: &Node) -> (String, u64) {
    let m = metrics(n);
    (m["canvas_hash"].as_str().unwrap().to_string(), m["cluster_seq"].as_u64().unwrap())
}

fn applied(n: &Node) -> u64 {
    metrics(n)["pixels_applied"].as_u64().unwrap()
}

/// Wait (bounded) until every node reports the same canvas at the same stream position; returns it.
fn converged(nodes: &[&Node]) -> (String, u64) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s: Vec<_> = nodes.iter().map(|n| state(n)).collect();
        if s.windows(2).all(|w| w[0] == w[1]) {
            return s[0].clone();
        }
        assert!(Instant::now() < end, "nodes did not converge within 30 s: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_servers_share_one_canvas_through_jetstream() {
    let Some(mut nats) = Nats::start("cluster") else { return };
    let dir = scratch("cluster");
    // The first node creates the stream (R=3): allow the cluster its leader election.
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| start_node(&nats, &dir, n)).collect();
    let mut clients: Vec<(Child, std::path::PathBuf)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let summary = dir.join(format!("summary-{i}.json"));
        let mut args = client_args(
            &format!("https://{}", n.listen),
            &format!("c{i}"),
            "canvas1",
            CLIENTS,
            SECS,
            &summary,
        );
        args.extend(["--replicas", &CLIENTS.to_string()].map(str::to_owned));
        // An observer on each other node: write -> visible across nodes.
        let others: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| format!("https://{}", o.listen))
            .collect();
        args.extend(["--observe".to_string(), others.join(",")]);
        let c = Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client");
        clients.push((c, summary));
    }
    // One NATS server of three killed mid-run: R=3 keeps a quorum; clients connected through it fail over.
    std::thread::sleep(Duration::from_secs(5));
    nats.kill(0);
    let mut sent = 0;
    for (c, summary) in &mut clients {
        assert_eq!(wait_bounded(c, Duration::from_secs(120), "client"), 0, "client exit code");
        let s = json(summary);
        eprintln!("summary: {s}");
        let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
        assert_eq!((n("connected"), n("failed")), (CLIENTS, 0), "{s}");
        assert_eq!(n("replicas_matching"), CLIENTS, "every replica matches its node: {s}");
        assert_eq!(n("pixels_applied"), n("pixels_sent"), "every write ACKed: {s}");
        assert_eq!(n("unresolved_writes") + n("acked_not_visible"), 0, "{s}");
        assert_eq!(n("snapshots"), CLIENTS + 2, "one snapshot per client and observer, at the join: {s}");
        let x = &s["cross_node"];
        let xn = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("cross_node.{k} missing: {s}"));
        assert_eq!(
            (xn("connected"), xn("replicas_matching")),
            (2, 2),
            "both observers match their nodes: {x}"
        );
        assert_eq!(xn("not_seen"), 0, "every ACKed write visible on the other nodes: {x}");
        assert_eq!(x["latency_ms"]["samples"].as_u64(), Some(2 * n("pixels_applied")), "{x}");
        eprintln!("write -> visible on the other nodes: {}", x["latency_ms"]);
        sent += n("pixels_sent");
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let (hash, seq) = converged(&refs);
    eprintln!("3 nodes: canvas {hash} at stream position {seq} ({sent} writes sent)");
    for n in &nodes {
        assert_eq!(applied(n), sent, "every node applied every node's writes");
    }
    // A node joining now loads the newest snapshot (the nodes offered one every 2 s) and applies the
    // stream after it before it serves: the same canvas at its first tick.
    let d = start_node(&nats, &dir, "d");
    assert_eq!(converged(&[&nodes[0], &d]), (hash.clone(), seq), "caught up before serving");
    assert_eq!(applied(&d), 0, "the catch-up is not counted as applied writes");
    let mut stored = 0;
    let mut joined = serde_json::Value::Null;
    for n in nodes.into_iter().chain([d]) {
        let stats = n.stats.clone();
        assert_eq!(n.server.stop(Duration::from_secs(20)), 0);
        let c = json(&stats)["cluster"].clone();
        eprintln!("node: {c}");
        stored += c["snapshots_stored"].as_u64().unwrap();
        assert_eq!(c["missing"].as_u64(), Some(0), "{c}");
        joined = c;
    }
    let from = joined["started_from_snapshot"].as_u64().unwrap();
    assert!(stored > 0, "the nodes stored snapshots");
    assert!(from > 0 && from <= seq, "node d started from a snapshot: {joined}");
    assert_eq!(
        joined["caught_up_messages"].as_u64(),
        Some(seq - from),
        "and applied only the stream after it: {joined}"
    );
    eprintln!("node d: snapshot at {from} of {seq}, {} messages applied after it", seq - from);
    drop(nats);
    // No NATS: a clear error naming the URL and what to do.
    let url = format!("nats://127.0.0.1:{}", free_tcp_port());
    let out = Command::new(bin("server"))
        .args(["-w", "1", "--listen", &format!("127.0.0.1:{}", free_port()), "--cluster", &url])
        .output()
        .expect("server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&url[7..]) && err.contains("--cluster"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A canvas server killed mid-run (SIGKILL): its clients (`--reconnect --failover`) go to another node and
/// resume their replicas from their ticks there (a tick names the same canvas on every node), and converge.
#[test]
fn a_killed_server_nodes_clients_resume_on_another_node() {
    let Some(nats) = Nats::start("failover") else { return };
    let dir = scratch("cluster-failover");
    let a = start_node(&nats, &dir, "a");
    let b = start_node(&nats, &dir, "b");
    let summary = dir.join("summary.json");
    let mut args = client_args(&format!("https://{}", a.listen), "moving", "canvas1", CLIENTS, 12, &summary);
    args.extend(
        [
            "--replicas",
            &CLIENTS.to_string(),
            "--reconnect",
            "20",
            "--failover",
            &format!("https://{}", b.listen),
            // A killed server sends nothing: the clients notice its silence after 3 s.
            "--keep-alive",
            "1000",
            "--idle-timeout",
            "3000",
        ]
        .map(str::to_owned),
    );
    let mut client = Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client");
    std::thread::sleep(Duration::from_secs(5));
    e2e::signal(a.server.pid(), libc::SIGKILL);
    assert_eq!(wait_bounded(&mut client, Duration::from_secs(120), "client"), 0, "client exit code");
    // Every client moved to the other node once and resumed there from its tick.
    let s = e2e::all_resumed(&summary, CLIENTS);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    // A tick names the same canvas on both nodes: node b answered each resume with a delta from the
    // client's tick on node a (the only snapshots are the joins').
    assert_eq!(n("snapshots"), CLIENTS, "resumed with deltas, not snapshots: {s}");
    assert_eq!(
        n("pixels_applied") + n("writes_unknown"),
        n("pixels_sent"),
        "every write ACKed, or in flight on node a when it died: {s}"
    );
    eprintln!(
        "failover: {} snapshots for {CLIENTS} clients ({} at the join), {} writes in flight lost with node a",
        n("snapshots"),
        CLIENTS,
        n("writes_unknown")
    );
    assert_eq!(b.server.stop(Duration::from_secs(20)), 0);
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every NATS server down at once while clients write (all three SIGKILLed 4 s in, started again on their
/// stores 6 s later): the node applies, so ACKs, nothing it cannot order meanwhile and says so; its
/// clients' writes wait (or are answered REJECT busy when the queues fill), none fails; when NATS returns
/// what waited is published and ACKed, every write ends ACKed or rejected (none unresolved), every replica
/// matches. A node started afterwards rebuilds the same canvas from the cluster: every ACKed write was
/// ordered.
#[test]
fn every_nats_server_down_at_once_stops_acks_and_loses_nothing() {
    let Some(mut nats) = Nats::start("outage") else { return };
    let dir = scratch("cluster-outage");
    let a = start_node(&nats, &dir, "a");
    let summary = dir.join("summary.json");
    let mut args = client_args(&format!("https://{}", a.listen), "outage", "canvas1", CLIENTS, 16, &summary);
    args.extend(["--replicas", &CLIENTS.to_string(), "--verify-timeout", "60"].map(str::to_owned));
    let mut client = Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client");
    std::thread::sleep(Duration::from_secs(4));
    for i in 0..3 {
        nats.kill(i);
    }
    // What was in flight when NATS died drains within a second; then nothing is applied (so ACKed).
    std::thread::sleep(Duration::from_secs(1));
    let during = applied(&a);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(applied(&a), during, "nothing applied (so nothing ACKed) while no NATS server runs");
    for i in 0..3 {
        nats.restart(i);
    }
    assert_eq!(wait_bounded(&mut client, Duration::from_secs(150), "client"), 0, "client exit code");
    let s = json(&summary);
    eprintln!("summary: {s}");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    assert_eq!((n("connected"), n("failed")), (CLIENTS, 0), "{s}");
    assert_eq!(
        n("pixels_applied") + n("pixels_rejected"),
        n("pixels_sent"),
        "every write ACKed or rejected: {s}"
    );
    assert_eq!(n("unresolved_writes") + n("acked_not_visible"), 0, "{s}");
    assert_eq!(n("replicas_matching"), CLIENTS, "{s}");
    assert!(applied(&a) > during, "writes ACKed after NATS returned");
    // A node started now holds the same canvas at the same position: the ACKed writes are in the stream.
    let b = start_node(&nats, &dir, "b");
    let (hash, seq) = converged(&[&a, &b]);
    eprintln!(
        "outage: {} of {} writes ACKed, {} rejected ({:?}); write->ACK p50 {} ms, max {} ms; both nodes {hash} at {seq}",
        n("pixels_applied"),
        n("pixels_sent"),
        n("pixels_rejected"),
        s["rejected_by_reason"],
        s["ack_latency_ms"]["p50"],
        s["ack_latency_ms"]["max"],
    );
    let said: Vec<String> = a.server.log.try_iter().collect();
    assert!(
        said.iter().any(|l| l.contains("lost the NATS connection")),
        "the node said it lost NATS: {said:#?}"
    );
    assert!(said.iter().any(|l| l.contains("NATS connection back")), "and that it is back: {said:#?}");
    assert_eq!(a.server.stop(Duration::from_secs(20)), 0);
    let c = json(&a.stats)["cluster"].clone();
    eprintln!("node a: {c}");
    assert!(c["publish_failures"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(b.server.stop(Duration::from_secs(20)), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
