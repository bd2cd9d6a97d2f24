//! Connection migration across workers, uring mode on loopback: 60 clients on 30 sockets, every socket
//! moved to a new source port every 3 s of a 12 s run (a NAT rebinding, `client --rebind-every`), against
//! `server -w 2`. Each new 4-tuple hashes to either worker; the connections must carry on, every write
//! answered and every replica matching, with no reconnect.
//! - `--steer cid`: the reuseport program sends each packet to the worker its connection id names; it
//!   counts the packets the 4-tuple hash would have given to the other worker (`moved`), and no worker
//!   has to hand anything over.
//! - `--steer hash`: the kernel's hash decides, and the worker a packet reached hands it to the owner.
//!
//! The xdp mode's cross-queue hand-off is tested on the testbed (`testbed.rs`).

use std::time::Duration;

use e2e::load::check_summary;
use e2e::{client_args, free_port, json, run_client, scratch, Server};

const CLIENTS: u64 = 60;
const ENDPOINTS: u64 = 30;
const SECS: u32 = 12;

fn sum(st: &serde_json::Value, k: &str) -> u64 {
    st["per_worker"].as_array().unwrap().iter().map(|w| w["endpoint"][k].as_u64().unwrap()).sum()
}

/// One run with `--steer steer`: the client's summary checked, the server's stats returned.
fn run(steer: &str) -> serde_json::Value {
    let dir = scratch(&format!("migration-{steer}"));
    let listen = format!("127.0.0.1:{}", free_port());
    let stats = dir.join("server.json");
    let server = Server::start(
        &["-w", "2", "--listen", &listen, "--steer", steer, "--stats-json", stats.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let summary = dir.join("summary.json");
    let mut args = client_args(&format!("https://{listen}"), steer, "canvas1", CLIENTS, SECS, &summary);
    args.extend(["--endpoints", &ENDPOINTS.to_string(), "--rebind-every", "3"].map(str::to_owned));
    assert_eq!(run_client(&args, Duration::from_secs(120)), 0, "client exit code");
    assert_eq!(server.stop(Duration::from_secs(20)), 0, "server exit code");
    let s = json(&summary);
    check_summary(&s, steer, "canvas1", CLIENTS);
    let rebinds = s["rebinds"].as_u64().unwrap();
    assert_eq!(s["reconnects"], 0, "no connection was re-established: {s}");
    assert!(
        rebinds >= 2 * ENDPOINTS && rebinds.is_multiple_of(ENDPOINTS),
        "every socket moved at least twice: {s}"
    );
    let st = json(&stats);
    eprintln!("--steer {steer}: {} rebinds; server: {}", rebinds, st["per_worker"]);
    // Every connection wrote after every move: it was seen at each new address.
    let rounds = rebinds / ENDPOINTS;
    assert!(
        sum(&st, "migrations") >= CLIENTS * rounds,
        "migrations {} < {}",
        sum(&st, "migrations"),
        CLIENTS * rounds
    );
    assert_eq!(sum(&st, "handoff_dropped"), 0);
    assert_eq!(sum(&st, "handed_in"), sum(&st, "handed_off"), "every hand-off arrived");
    st
}

#[test]
fn rebinding_clients_keep_their_connections_across_workers() {
    // The reuseport program needs CAP_BPF (root here).
    if e2e::netns::root_or_skip("migration with --steer cid", "loading the reuseport BPF program") {
        let st = run("cid");
        let steer = &st["steering"];
        assert_eq!(steer["mode"], "cid", "{steer}");
        let moved = steer["counters"]["moved"].as_u64().unwrap();
        assert!(moved > 0, "no packet went to another worker than its 4-tuple hash picks: {steer}");
        assert_eq!(sum(&st, "handed_off"), 0, "the program put every packet on its owner's socket");
    }
    let st = run("hash");
    assert_eq!(st["steering"]["mode"], "hash");
    assert!(sum(&st, "handed_off") > 0, "rebinding moved no client to the other worker");
}
