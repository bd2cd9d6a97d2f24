//! The production commands on the testbed (`scripts/testbed.sh`): `server -w 2 --mode uring --listen
//! 10.0.1.10:4433` in the server namespace, one `client` per client namespace (250 connections each,
//! canvas/1 from client1 and legacy from client2, concurrently) over VLAN 4000 / `eth1.4000`. Needs root
//! (network namespaces): without it the tests say why and pass, unless CI=true, where they fail.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::netns::{
    dev_counters, is_root, netns_with_prefix, run_client_in, start_server_in, testbed_sh, Testbed,
};
use e2e::{bin, json, scratch};

/// Both tests use the box's two cores and the testbed script: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const CLIENTS: u64 = 250;

/// True when the test can run; false (after saying why) when it should be skipped.
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let why = format!("{test}: needs root (network namespaces, veth, tc); not running as root");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why} and CI=true: failing instead of skipping");
    eprintln!("SKIPPED {why}");
    false
}

fn client_args<'a>(protocol: &'a str, id: &'a str, summary: &'a str) -> Vec<&'a str> {
    vec![
        "--target",
        "https://10.0.1.10:4433",
        "--clients",
        "250",
        "--id",
        id,
        "--protocol",
        protocol,
        "--duration",
        "12",
        "--max-conn-jitter",
        "2000",
        "--min-pixel-wait",
        "100",
        "--max-pixel-wait",
        "400",
        "--summary-json",
        summary,
    ]
}

#[test]
fn testbed_uring_500_clients_from_two_namespaces() {
    if !root_or_skip("testbed_uring_500_clients_from_two_namespaces") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let prefix = format!("cvt{}", std::process::id());
    let dir = scratch("testbed-uring");
    let stats = dir.join("server.json");
    let sum1 = dir.join("client1.json");
    let sum2 = dir.join("client2.json");
    {
        let tb = Testbed::up(&prefix, 2, Duration::from_secs(90));
        let t_up = t0.elapsed();
        let server = start_server_in(
            &tb.ns("server"),
            &[
                "-w",
                "2",
                "--mode",
                "uring",
                "--listen",
                "10.0.1.10:4433",
                "--stats-json",
                stats.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        // `ip netns exec` execs: the child we hold is the server process itself.
        let exe = std::fs::read_link(format!("/proc/{}/exe", server.pid())).expect("server exe");
        assert_eq!(exe, bin("server"), "the pid of `ip netns exec` is the server's");
        let eth0 = dev_counters(&tb.ns("server"), "eth1");

        let t_clients = Instant::now();
        let (s1, s2) = (sum1.to_str().unwrap(), sum2.to_str().unwrap());
        let (c1, c2) = std::thread::scope(|s| {
            let (ns1, ns2) = (tb.ns("client1"), tb.ns("client2"));
            let a = s.spawn(move || {
                run_client_in(&ns1, &client_args("canvas1", "client1", s1), Duration::from_secs(150))
            });
            let b = s.spawn(move || {
                run_client_in(&ns2, &client_args("legacy", "client2", s2), Duration::from_secs(150))
            });
            (a.join().expect("client1 thread"), b.join().expect("client2 thread"))
        });
        let t_clients = t_clients.elapsed();
        assert_eq!(c1, 0, "client1 (canvas1) exit code");
        assert_eq!(c2, 0, "client2 (legacy) exit code");

        let mut sent = 0;
        let mut applied = 0;
        let mut rejected = 0;
        for (path, protocol) in [(&sum1, "canvas1"), (&sum2, "legacy")] {
            let s = json(path);
            eprintln!("{protocol} summary: {s}");
            let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("summary.{k} missing: {s}"));
            assert_eq!(n("clients"), CLIENTS, "{protocol}");
            assert_eq!(n("connected"), CLIENTS, "{protocol}: all connected");
            assert_eq!(n("failed"), 0, "{protocol}: none failed");
            assert_eq!(n("replicas_checked"), CLIENTS, "{protocol}");
            assert_eq!(n("replicas_matching"), CLIENTS, "{protocol}: every replica matches a fresh snapshot");
            assert!(n("pixels_sent") > 2_000, "{protocol}: the load was real");
            sent += n("pixels_sent");
            if protocol == "canvas1" {
                assert_eq!(
                    n("pixels_applied") + n("pixels_rejected"),
                    n("pixels_sent"),
                    "canvas1: applied + rejected == sent"
                );
                applied += n("pixels_applied");
                rejected += n("pixels_rejected");
            } else {
                applied += n("pixels_sent");
            }
        }

        let t_stop = Instant::now();
        let code = server.stop(Duration::from_secs(20));
        let t_stop = t_stop.elapsed();
        assert_eq!(code, 0, "server exit code after SIGINT");
        let st = json(&stats);
        eprintln!("server totals: {}", st["totals"]);
        let t = |k: &str| st["totals"][k].as_u64().unwrap_or_else(|| panic!("totals.{k} missing: {st}"));
        // 2 x 250 clients + one verification connection per client process.
        assert!(t("accepted") >= 2 * CLIENTS + 2, "accepted {} < 502", t("accepted"));
        assert_eq!(t("closed"), t("accepted"), "every connection closed by the end");
        assert_eq!(t("pixels_received"), sent, "the server saw every write both clients sent");
        assert_eq!(t("pixels_applied"), applied, "canvas1 applied + every legacy write");
        assert_eq!(t("pixels_rejected"), rejected);
        let workers = st["per_worker"].as_array().expect("per_worker");
        assert_eq!(workers.len(), 2);
        let per: Vec<u64> = workers.iter().map(|w| w["endpoint"]["accepted"].as_u64().unwrap()).collect();
        assert!(per.iter().all(|&a| a > 0), "SO_REUSEPORT spread connections over both workers: {per:?}");
        // The traffic crossed the server's veth "wire" (eth1, VLAN 4000), not loopback. Packets can be
        // GSO batches (one skb, many datagrams), so compare bytes: every UDP payload the server read
        // arrived on eth1 inside a frame.
        let eth1 = dev_counters(&tb.ns("server"), "eth1");
        let (rx_bytes, rx_packets) = (eth1.rx_bytes - eth0.rx_bytes, eth1.rx_packets - eth0.rx_packets);
        let (bin_, din) = (t("bytes_in"), t("datagrams_in"));
        assert!(rx_bytes >= bin_, "server eth1 received {rx_bytes} bytes, fewer than the {bin_} read");
        eprintln!(
            "timings: testbed up {t_up:.2?}, clients {t_clients:.2?}, server stop {t_stop:.2?}; \
             accepted per worker {per:?}; server eth1: {rx_packets} packets / {rx_bytes} bytes received \
             for {din} datagrams / {bin_} bytes read"
        );
    } // Testbed dropped: `testbed.sh down`.
    let left = netns_with_prefix(&prefix);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!("total {:.2?}", t0.elapsed());
}

#[test]
fn testbed_script_is_idempotent_and_dry_run_prints() {
    if !root_or_skip("testbed_script_is_idempotent_and_dry_run_prints") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let prefix = format!("cvs{}", std::process::id());
    let dry = format!("cvd{}", std::process::id());
    let long = Duration::from_secs(90);
    let mac = |ns: &str| {
        let o = e2e::netns::run_bounded(
            std::process::Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", "eth1"]),
            Duration::from_secs(10),
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        o.stdout.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("mac").to_owned()
    };
    {
        let tb = Testbed::up(&prefix, 2, long);
        let before = mac(&tb.ns("server"));
        let again = testbed_sh(&["up", "--prefix", &prefix], long);
        assert_eq!(again.code, 0, "second up: {}{}", again.stdout, again.stderr);
        assert!(again.stderr.contains("already up"), "second up is a no-op: {}", again.stderr);
        assert_eq!(mac(&tb.ns("server")), before, "second up did not rebuild eth1");

        let st = testbed_sh(&["status", "--prefix", &prefix], long);
        assert_eq!(st.code, 0, "status: {}{}", st.stdout, st.stderr);
        assert!(st.stdout.contains("complete"), "{}", st.stdout);
        for want in
            ["10.0.1.10/24", "10.0.1.21/24", "10.0.1.22/24", "eth1.4000", "numtxqueues 2 numrxqueues 2"]
        {
            assert!(st.stdout.contains(want), "status shows {want}: {}", st.stdout);
        }

        let d = testbed_sh(&["--dry-run", "up", "--prefix", &dry], long);
        assert_eq!(d.code, 0, "dry run: {}{}", d.stdout, d.stderr);
        let ip_lines = d.stdout.lines().filter(|l| l.starts_with("ip ")).count();
        assert!(ip_lines >= 20, "dry run prints the ip commands ({ip_lines}): {}", d.stdout);
        assert!(d.stdout.contains(&format!("ip netns add {dry}-server")), "{}", d.stdout);
        assert!(netns_with_prefix(&dry).is_empty(), "dry run created nothing");

        let down1 = testbed_sh(&["down", "--prefix", tb.prefix()], long);
        assert_eq!(down1.code, 0, "down: {}", down1.stderr);
        assert!(netns_with_prefix(&prefix).is_empty(), "down removed every namespace");
        let down2 = testbed_sh(&["down", "--prefix", tb.prefix()], long);
        assert_eq!(down2.code, 0, "second down succeeds with nothing to remove: {}", down2.stderr);
        let gone = testbed_sh(&["status", "--prefix", &prefix], long);
        assert_ne!(gone.code, 0, "status of a missing testbed fails: {}", gone.stdout);
    } // the guard's own `down` (a third one) must succeed quietly too
    assert!(netns_with_prefix(&prefix).is_empty());
    eprintln!("total {:.2?}", t0.elapsed());
}
