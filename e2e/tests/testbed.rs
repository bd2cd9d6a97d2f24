//! The production commands on the testbed (`scripts/testbed.sh`): `server` in the server namespace in each
//! datapath (AF_XDP generic on `eth1.4000`, AF_XDP native on `eth1` with `--vlan 4000`, io_uring), one
//! `client` per client namespace (250 connections each, canvas/1 and legacy concurrently) over VLAN 4000.
//! Needs root (network namespaces, XDP): without it the tests say why and pass, unless CI=true, where they
//! fail.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use e2e::load::{self, ClientSpec, LoadRun};
use e2e::netns::{
    command_in, dev_counters, exec_in, netns_with_prefix, run_bounded, start_server_in, testbed_sh, Testbed,
};
use e2e::{free_hugepages, json, nr_hugepages, scratch, words};

/// Both tests use the box's two cores and the testbed script: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// `None` when the test is skipped, else its lock on [`SERIAL`].
fn root_test(test: &str) -> Option<MutexGuard<'static, ()>> {
    e2e::netns::root_test(test, "network namespaces, veth, tc, XDP", &SERIAL)
}

const CLIENTS: u64 = 250;
const SECS: u32 = 12;

/// Restores `nr_hugepages` on drop (also when the test panics).
struct HugePages(u64);

impl HugePages {
    fn reserve(extra: u64) -> HugePages {
        // The guard exists before the pool grows: a partial reservation is given back too.
        let guard = HugePages(nr_hugepages());
        let want = guard.0 + extra;
        std::fs::write("/proc/sys/vm/nr_hugepages", want.to_string()).expect("reserve hugepages");
        assert_eq!(nr_hugepages(), want, "could not reserve {extra} hugepages");
        guard
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", self.0.to_string());
    }
}

/// No XDP program on any interface of the server namespace.
fn assert_no_xdp(tb: &Testbed) {
    let links = exec_in(&tb.ns("server"), &["ip", "-d", "link", "show"]);
    assert!(!links.contains("prog/xdp"), "an XDP program is still attached:\n{links}");
}

/// The AF_XDP checks every xdp run must pass.
fn assert_xdp(r: &LoadRun, attach: &str, workers: usize) {
    let x = &r.server["xdp"];
    eprintln!("xdp: {x}");
    assert_eq!(r.server["mode"], "xdp");
    assert_eq!(x["attach"], attach, "{x}");
    let redirected = x["counters"]["redirected"].as_u64().expect("redirected");
    assert!(redirected > 0, "the program redirected nothing: {x}");
    let kernel_drops: u64 = r.server["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = &w["xdp"]["stats"];
            s["kernel_rx_dropped"].as_u64().unwrap() + s["kernel_rx_ring_full"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        redirected,
        r.total("datagrams_in") + per_worker_sum(r, "rx_dropped") + kernel_drops,
        "every redirected frame reached a worker or was counted as dropped"
    );
    assert_eq!(x["tripwire_packets"], 0, "datagrams bypassed AF_XDP: {x}");
    assert_eq!(x["counters"]["redirect_failed"], 0, "{x}");
    let w = r.server["per_worker"].as_array().expect("per_worker");
    assert_eq!(w.len(), workers);
    for w in w {
        let f = &w["xdp"]["frames"];
        assert_eq!(f["consistent"], true, "frame accounting: {w}");
        assert_eq!(
            (f["pending"].as_u64(), f["tx"].as_u64()),
            (Some(0), Some(0)),
            "frames home after shutdown: {f}"
        );
        assert_eq!(w["xdp"]["stats"]["frame_errors"], 0, "{w}");
        assert_eq!(w["xdp"]["zero_copy"], false, "veth has no zero-copy: {w}");
        assert!(
            w["backend"]["rx_datagrams"].as_u64().unwrap() > 0,
            "queue {} saw no traffic: {w}",
            w["xdp"]["queue"]
        );
        assert!(
            w["endpoint"]["accepted"].as_u64().unwrap() > 0,
            "worker {} accepted nothing: {w}",
            w["worker"]
        );
    }
}

fn per_worker_sum(r: &LoadRun, k: &str) -> u64 {
    r.server["per_worker"].as_array().unwrap().iter().map(|w| w["backend"][k].as_u64().unwrap()).sum()
}

fn both(first: &'static str, second: &'static str) -> [ClientSpec; 2] {
    [
        ClientSpec { host: "client1", protocol: first, clients: CLIENTS, ipv6: false, extra: &[] },
        ClientSpec { host: "client2", protocol: second, clients: CLIENTS, ipv6: false, extra: &[] },
    ]
}

/// The three datapaths on one testbed (2 server queues), 250 + 250 clients each, both protocols in every
/// run: AF_XDP generic on the VLAN device, AF_XDP native on the parent with the VLAN matched in the
/// program (2 queues, 2 workers, UMEM on hugetlb pages), io_uring. Also: `--zero-copy on` fails clearly
/// and leaves nothing attached; datagrams on a queue without a worker trip the tripwire.
#[test]
fn testbed_xdp_generic_native_vlan_and_uring() {
    let Some(_g) = root_test("testbed_xdp_generic_native_vlan_and_uring") else { return };
    let t0 = Instant::now();
    let prefix = format!("cvt{}", std::process::id());
    let dir = scratch("testbed");
    let pages_before = nr_hugepages();
    let mut cpu = Vec::new();
    {
        let tb = Testbed::up(&prefix, 2, Duration::from_secs(90));
        let server_ns = tb.ns("server");

        // --zero-copy on: veth has none; a clear error, and the program attached first is gone again.
        let mut c = command_in(&server_ns, "server");
        c.args(words("--mode xdp --iface eth1 --vlan 4000 --zero-copy on --listen 10.0.1.10:4433"));
        let o = run_bounded(&mut c, Duration::from_secs(30));
        eprintln!("--zero-copy on: exit {} stderr:\n{}", o.code, o.stderr);
        assert_ne!(o.code, 0);
        assert!(
            o.stderr.contains("--zero-copy on")
                && o.stderr.contains("veth")
                && o.stderr.contains("--zero-copy auto"),
            "{}",
            o.stderr
        );
        assert_no_xdp(&tb);

        // 1. Generic XDP on the VLAN device (one queue: one worker).
        let r = load::run(
            &tb,
            &dir,
            &words("--mode xdp --iface eth1.4000 --xdp-attach generic --listen 10.0.1.10:4433"),
            &both("canvas1", "legacy"),
            SECS,
        );
        assert_xdp(&r, "generic", 1);
        assert_no_xdp(&tb);
        cpu.push(("xdp generic, eth1.4000", r.cpu_us_per_datagram(), r.server_cpu_s, r.datagrams()));

        // 2. Native XDP on the parent, VLAN 4000 in the program, two queues, UMEM and canvas on hugetlb.
        {
            let _pages = HugePages::reserve(2 * 32 + 1);
            let r = load::run(
                &tb,
                &dir,
                &words(
                    "--mode xdp --iface eth1 --vlan 4000 --xdp-attach native -w 2 --hugepages on \
                     --listen 10.0.1.10:4433",
                ),
                &both("legacy", "canvas1"),
                SECS,
            );
            assert_xdp(&r, "native", 2);
            let x = &r.server["xdp"];
            assert_eq!(x["vlan"], 4000);
            assert!(
                x["counters"]["vlan_from_metadata"].as_u64().unwrap() > 0,
                "veth strips the tag into metadata: {x}"
            );
            for w in r.server["per_worker"].as_array().unwrap() {
                assert_eq!(w["xdp"]["umem_hugetlb"], true, "{w}");
            }
            assert_no_xdp(&tb);
            assert_eq!(free_hugepages(), nr_hugepages(), "the server gave every huge page back");
            cpu.push(("xdp native, eth1 + VLAN", r.cpu_us_per_datagram(), r.server_cpu_s, r.datagrams()));
        }
        assert_eq!(nr_hugepages(), pages_before, "reservation returned");

        // 2b. Dual stack on one port: `--listen [::]:4433`, client1 over IPv6, client2 over IPv4, at once.
        let dual = [
            ClientSpec { host: "client1", protocol: "canvas1", clients: CLIENTS / 2, ipv6: true, extra: &[] },
            ClientSpec {
                host: "client2",
                protocol: "canvas1",
                clients: CLIENTS / 2,
                ipv6: false,
                extra: &[],
            },
        ];
        let r = load::run(
            &tb,
            &dir,
            &words("--mode xdp --iface eth1 --vlan 4000 --xdp-attach native -w 2 --listen [::]:4433"),
            &dual,
            SECS / 2,
        );
        assert_xdp(&r, "native", 2);
        assert_no_xdp(&tb);
        let r = load::run(&tb, &dir, &words("--mode uring -w 2 --listen [::]:4433"), &dual, SECS / 2);
        assert_eq!(r.server["mode"], "uring");

        // 3. io_uring on the same testbed.
        let eth1 = dev_counters(&server_ns, "eth1");
        let r = load::run(
            &tb,
            &dir,
            &["-w", "2", "--mode", "uring", "--listen", "10.0.1.10:4433"],
            &both("canvas1", "legacy"),
            SECS,
        );
        let workers = r.server["per_worker"].as_array().expect("per_worker");
        assert_eq!(workers.len(), 2);
        let per: Vec<u64> = workers.iter().map(|w| w["endpoint"]["accepted"].as_u64().unwrap()).collect();
        assert!(per.iter().all(|&a| a > 0), "SO_REUSEPORT spread connections over both workers: {per:?}");
        // The traffic crossed the server's veth "wire" (eth1, VLAN 4000), not loopback: every UDP payload
        // byte the server read arrived on eth1 inside a frame.
        let after = dev_counters(&server_ns, "eth1");
        assert!(after.rx_bytes - eth1.rx_bytes >= r.total("bytes_in"), "eth1 carried the traffic");
        cpu.push(("uring, eth1.4000 sockets", r.cpu_us_per_datagram(), r.server_cpu_s, r.datagrams()));

        // Tripwire: one worker on a two-queue parent leaves queue 1 without a socket; what the veth
        // spreads there falls back to the kernel and reaches the plain UDP socket, which counts it.
        let stats = dir.join("tripwire.json");
        let server = start_server_in(
            &server_ns,
            &[
                &words("--mode xdp --iface eth1 --vlan 4000 -w 1 --listen 10.0.1.10:4433")[..],
                &["--stats-json", stats.to_str().unwrap()],
            ]
            .concat(),
            Duration::from_secs(30),
        );
        // One server per port, in both modes: a second one is refused, naming the running one's pid (the
        // tripwire socket holds the port without SO_REUSEPORT; the uring workers' probe bind finds it).
        for second in [
            "--mode uring -w 1 --listen 10.0.1.10:4433",
            "--mode xdp --iface eth1.4000 --xdp-attach generic --listen 10.0.1.10:4433",
        ] {
            let mut c = command_in(&server_ns, "server");
            c.args(words(second));
            let o = run_bounded(&mut c, Duration::from_secs(30));
            eprintln!("second server ({second}): exit {} stderr:\n{}", o.code, o.stderr);
            assert_eq!(o.code, 1, "{second}");
            assert!(o.stderr.contains(&format!("in use by pid {}", server.pid())), "{second}: {}", o.stderr);
        }
        // 64 datagrams from 64 source ports (a new socket per redirection): the switch's veth picks its
        // transmit queue, and so the server's receive queue, by flow hash.
        exec_in(
            &tb.ns("client1"),
            &["bash", "-c", "for i in $(seq 64); do echo tripwire > /dev/udp/10.0.1.10/4433; done"],
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(server.stop(Duration::from_secs(20)), 0);
        let st = json(&stats);
        let x = &st["xdp"];
        eprintln!("tripwire run: {x}");
        let trip = x["tripwire_packets"].as_u64().unwrap();
        let failed = x["counters"]["redirect_failed"].as_u64().unwrap();
        assert!(trip > 0 && failed > 0, "queue 1 had no socket: its datagrams must reach the tripwire: {x}");
        assert_eq!(trip, failed, "every datagram the program could not redirect reached the tripwire");
        assert_eq!(trip + x["counters"]["redirected"].as_u64().unwrap(), 64, "{x}");
        assert_no_xdp(&tb);

        // --allow: in both modes, datagrams to the port from outside the allowlist never reach a worker
        // (xdp: dropped in the program; uring: dropped by the backend before the endpoint), and are counted.
        for mode in ["--mode xdp --iface eth1 --vlan 4000 -w 2", "--mode uring -w 2"] {
            let stats = dir.join("allow.json");
            let server = start_server_in(
                &server_ns,
                &[
                    &words(mode)[..],
                    &words("--listen 10.0.1.10:4433 --allow 10.0.1.21/32 --allow fd00:db8::/64"),
                    &["--stats-json", stats.to_str().unwrap()],
                ]
                .concat(),
                Duration::from_secs(30),
            );
            for host in ["client1", "client2"] {
                exec_in(
                    &tb.ns(host),
                    &["bash", "-c", "for i in $(seq 20); do echo allow > /dev/udp/10.0.1.10/4433; done"],
                );
            }
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(server.stop(Duration::from_secs(20)), 0);
            let st = json(&stats);
            let workers = st["per_worker"].as_array().unwrap();
            let rx: u64 = workers.iter().map(|w| w["backend"]["rx_datagrams"].as_u64().unwrap()).sum();
            let not_allowed: u64 =
                workers.iter().map(|w| w["backend"]["rx_not_allowed"].as_u64().unwrap()).sum();
            eprintln!(
                "--allow ({mode}): workers received {rx}, backend dropped {not_allowed}, xdp {}",
                st["xdp"]
            );
            assert_eq!(rx, 20, "{mode}: only client1's datagrams reached the workers");
            if mode.contains("xdp") {
                let c = &st["xdp"]["counters"];
                assert_eq!(c["dropped_not_allowed"].as_u64(), Some(20), "{mode}: {c}");
                assert_eq!(not_allowed, 0);
                assert_no_xdp(&tb);
            } else {
                assert_eq!(not_allowed, 20, "{mode}");
            }
        }
    } // Testbed dropped: `testbed.sh down`.
    let left = netns_with_prefix(&prefix);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(nr_hugepages(), pages_before);
    eprintln!(
        "server CPU per datagram moved (in + out), same offered load (2 x {CLIENTS} clients, {SECS} s):"
    );
    for (mode, us, s, n) in &cpu {
        eprintln!("  {mode:<26} {us:6.2} us/datagram  ({s:.2} s CPU, {n} datagrams)");
    }
    eprintln!(
        "  ratio xdp native / uring: {:.2}, xdp generic / uring: {:.2}",
        cpu[1].1 / cpu[2].1,
        cpu[0].1 / cpu[2].1
    );
    eprintln!("total {:.2?}", t0.elapsed());
}

#[test]
fn testbed_script_is_idempotent_and_dry_run_prints() {
    let Some(_g) = root_test("testbed_script_is_idempotent_and_dry_run_prints") else { return };
    let t0 = Instant::now();
    let prefix = format!("cvs{}", std::process::id());
    let dry = format!("cvd{}", std::process::id());
    let long = Duration::from_secs(90);
    let mac = |ns: &str| {
        let link = exec_in(ns, &["ip", "-o", "link", "show", "dev", "eth1"]);
        link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("mac").to_owned()
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
        for want in [
            "10.0.1.10/24",
            "10.0.1.21/24",
            "10.0.1.22/24",
            "fd00:4000::10/64",
            "eth1.4000",
            "numtxqueues 2 numrxqueues 2",
        ] {
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

/// A tc direct-action program that drops `PERMILLE`/1000 of the frames at random (this host kernel has no
/// `sch_netem`; see DESIGN.md).
const LOSS_BPF: &str = r#"
typedef unsigned int __u32;
struct __sk_buff;
#define SEC(n) __attribute__((section(n), used))
static __u32 (*get_prandom_u32)(void) = (void *)7; /* BPF_FUNC_get_prandom_u32 */
/* TC_ACT_SHOT, or TC_ACT_UNSPEC: the port's other filters (the VLAN check) still run. */
SEC("tc/loss") int loss(struct __sk_buff *s) { return get_prandom_u32() % 1000 < PERMILLE ? 2 : -1; }
char _license[] SEC("license") = "GPL";
"#;

/// Dropped-packet count of the clsact qdisc on `dev` in `ns` (what the loss program shot).
fn qdisc_drops(ns: &str, dev: &str) -> u64 {
    let out = exec_in(ns, &["tc", "-s", "qdisc", "show", "dev", dev]);
    let clsact =
        out.split("qdisc ").find(|q| q.starts_with("clsact")).unwrap_or_else(|| panic!("no clsact:\n{out}"));
    let at = clsact.find("dropped ").unwrap_or_else(|| panic!("no drop count:\n{out}")) + "dropped ".len();
    clsact[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// 1 % loss each way on the switch (a random drop on the server's port and on client1's, both directions),
/// 250 canvas/1 clients for 12 s, in xdp native and uring mode: everything connects, nothing fails, every
/// write is answered and every replica converges on the server's canvas. (Reordering needs `sch_netem`,
/// which only the VM rig's guest kernels have; `server/tests/mem_converge.rs` covers it in simulation.)
#[test]
fn testbed_one_percent_loss_converges() {
    let Some(_g) = root_test("testbed_one_percent_loss_converges") else { return };
    let prefix = format!("cvl{}", std::process::id());
    let dir = scratch("loss");
    {
        let tb = Testbed::up(&prefix, 2, Duration::from_secs(90));
        let src = dir.join("loss.c");
        let obj = dir.join("loss.o");
        std::fs::write(&src, LOSS_BPF).unwrap();
        let o = run_bounded(
            std::process::Command::new("clang").args([
                "-O2",
                "-target",
                "bpf",
                "-DPERMILLE=10",
                "-c",
                src.to_str().unwrap(),
                "-o",
                obj.to_str().unwrap(),
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(o.code, 0, "clang: {}", o.stderr);
        let sw = tb.ns("switch");
        let tc = |args: &[&str]| {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &sw, "tc"]).args(args);
            run_bounded(&mut c, Duration::from_secs(10))
        };
        for port in ["s-srv", "s-c1"] {
            // The ports may have a clsact already (the testbed's VLAN filters in --vlan bpf mode).
            let _ = tc(&["qdisc", "add", "dev", port, "clsact"]);
            for dir in ["ingress", "egress"] {
                let o = tc(&[
                    "filter",
                    "add",
                    "dev",
                    port,
                    dir,
                    "pref",
                    "1",
                    "bpf",
                    "da",
                    "obj",
                    obj.to_str().unwrap(),
                    "sec",
                    "tc/loss",
                ]);
                assert_eq!(o.code, 0, "tc filter on {port} {dir}: {}", o.stderr);
            }
        }
        let spec =
            [ClientSpec { host: "client1", protocol: "canvas1", clients: CLIENTS, ipv6: false, extra: &[] }];
        for mode in ["--mode xdp --iface eth1 --vlan 4000 -w 2", "--mode uring -w 2"] {
            let before: u64 = ["s-srv", "s-c1"].iter().map(|p| qdisc_drops(&sw, p)).sum();
            let r = load::run(
                &tb,
                &dir,
                &[&words(mode)[..], &words("--listen 10.0.1.10:4433")].concat(),
                &spec,
                SECS,
            );
            let dropped = ["s-srv", "s-c1"].iter().map(|p| qdisc_drops(&sw, p)).sum::<u64>() - before;
            let s = &r.summaries[0];
            eprintln!(
                "1 % loss ({mode}): {dropped} frames dropped on the switch, replicas {}/{}, syncs {} ({}), \
                 write->visible p50 {} ms p99 {} ms, join p50 {} ms p99 {} ms max {} ms ({} joins), \
                 server: {} 1-RTT packets held for their handshake, {} replayed",
                s["replicas_matching"],
                s["replicas_checked"],
                s["syncs"],
                s["sync_reasons"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p99"],
                s["join_ms"]["p50"],
                s["join_ms"]["p99"],
                s["join_ms"]["max"],
                s["join_ms"]["samples"],
                r.endpoint_total("early_held"),
                r.endpoint_total("early_replayed"),
            );
            assert!(dropped > 100, "{mode}: the loss was real ({dropped} frames dropped)");
            assert_no_xdp(&tb);
        }
    }
    let left = netns_with_prefix(&prefix);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Connection migration across queues and workers: 100 canvas/1 clients on 50 sockets in client1, every
/// socket moved to a new source port every 3 s (`client --rebind-every 3`, a NAT rebinding), against a
/// 2-queue server. In xdp mode the new 4-tuple lands on either receive queue (the switch's veth picks the
/// queue from the flow hash) and the worker that receives another worker's packet hands it over, with
/// the peer's MACs; in uring mode the reuseport program steers by connection id. Either way every
/// connection carries on: nothing fails, no reconnect, every write answered, every replica matches.
#[test]
fn testbed_rebinding_clients_keep_their_connections() {
    let Some(_g) = root_test("testbed_rebinding_clients_keep_their_connections") else { return };
    let prefix = format!("cvm{}", std::process::id());
    let dir = scratch("rebind");
    {
        let tb = Testbed::up(&prefix, 2, Duration::from_secs(90));
        let spec = [ClientSpec {
            host: "client1",
            protocol: "canvas1",
            clients: 100,
            ipv6: false,
            extra: &["--endpoints", "50", "--rebind-every", "3"],
        }];
        for mode in ["--mode xdp --iface eth1 --vlan 4000 --xdp-attach native -w 2", "--mode uring -w 2"] {
            let r = load::run(
                &tb,
                &dir,
                &[&words(mode)[..], &words("--listen 10.0.1.10:4433")].concat(),
                &spec,
                SECS,
            );
            let s = &r.summaries[0];
            let rebinds = s["rebinds"].as_u64().unwrap();
            assert_eq!(s["reconnects"], 0, "{mode}: {s}");
            assert!(
                rebinds >= 100 && rebinds.is_multiple_of(50),
                "{mode}: every socket moved at least twice: {s}"
            );
            let sum = |k: &str| -> u64 {
                r.server["per_worker"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w["endpoint"][k].as_u64().unwrap())
                    .sum()
            };
            eprintln!(
                "rebinding ({mode}): {rebinds} rebinds, migrations {}, handed off {}, steering {}",
                sum("migrations"),
                sum("handed_off"),
                r.server["steering"]
            );
            assert!(
                sum("migrations") >= 100 * (rebinds / 50),
                "{mode}: every connection seen at each address"
            );
            assert_eq!(sum("handoff_dropped"), 0, "{mode}");
            assert_eq!(sum("handed_in"), sum("handed_off"), "{mode}: every hand-off arrived");
            if mode.contains("xdp") {
                assert_xdp(&r, "native", 2);
                assert!(sum("handed_off") > 0, "no rebinding client moved to the other queue");
            } else {
                let steer = &r.server["steering"];
                assert_eq!(steer["mode"], "cid", "{steer}");
                assert!(steer["counters"]["moved"].as_u64().unwrap() > 0, "{steer}");
                assert_eq!(
                    sum("handed_off"),
                    0,
                    "the reuseport program put every packet on its owner's socket"
                );
            }
            assert_no_xdp(&tb);
        }
    }
    let left = netns_with_prefix(&prefix);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Raw frames written from the switch straight onto the server's wire (AF_PACKET on `s-srv`, so no switch
/// filter stands between them and the XDP program), N of each kind; prints `kind count` lines.
const INJECT_PY: &str = r#"
import random, socket, struct, sys
ifname, dst, n = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
src = bytes.fromhex("02aabbccdd01")
SRC4, DST4 = socket.inet_aton("10.0.1.99"), socket.inet_aton("10.0.1.10")
rnd = random.Random(7)
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def eth(payload, etype=0x0800, vid=4000):
    return dst + src + struct.pack("!HHH", 0x8100, vid, etype) + payload
def ip4(payload, proto=17, ihl=5, tot=None, frag=0, opts=b""):
    tot = 4 * ihl + len(payload) if tot is None else tot
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, rnd.randrange(65536), frag, 64, proto, 0, SRC4, DST4) + opts
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload
def udp(payload, dport=4433, ulen=None):
    return struct.pack("!HHHH", 40000 + rnd.randrange(1000), dport, 8 + len(payload) if ulen is None else ulen, 0) + payload
def junk(lo, hi): return bytes(rnd.randrange(256) for _ in range(rnd.randint(lo, hi)))
def ip6_hop_by_hop(payload):
    hbh = struct.pack("!BB", 17, 0) + b"\x01\x04\0\0\0\0"  # next header UDP, PadN
    body = hbh + payload
    return struct.pack("!IHBB", 0x60000000, len(body), 0, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x10" + body
kinds = {
    # the program: each kind lands in its counter and goes to the kernel (XDP_PASS), never to a worker
    "malformed_eth": lambda: dst + src + b"\x81\x00\x0f",                       # VLAN tag announced, cut
    "malformed_ip": lambda: eth(struct.pack("!BB", 0x43, 0) + junk(18, 40)),   # IHL 3
    "malformed_ip_len": lambda: eth(ip4(udp(junk(20, 60)), tot=1400)),         # total length past the frame
    "malformed_udp": lambda: eth(ip4(udp(b"", ulen=4))),                       # UDP length < 8
    "ip_fragment": lambda: eth(ip4(udp(junk(50, 200)), frag=0x2000)),          # first fragment (MF)
    "passed_other_vlan": lambda: eth(ip4(udp(junk(50, 200))), vid=4001),       # wrong VLAN
    "passed_not_udp_ipv6_ext": lambda: eth(ip6_hop_by_hop(udp(junk(20, 60))), etype=0x86DD),
    "passed_not_udp_tcp": lambda: eth(ip4(junk(20, 60), proto=6)),
    # to the port, well formed for the program: the worker drops them
    "udp_len_past_ip": lambda: eth(ip4(udp(junk(20, 60), ulen=1000))),          # rx_malformed
    "ip_options": lambda: eth(ip4(udp(junk(30, 200)), ihl=6, opts=b"\x01\x01\x01\x00")),
    "quic_short_random": lambda: eth(ip4(udp(bytes([0x40 | rnd.randrange(64)]) + junk(30, 1300)))),
    "quic_initial_junk": lambda: eth(ip4(udp(b"\xc3\x00\x00\x00\x01\x10" + junk(1200, 1300)))),
    "oversized": lambda: eth(ip4(udp(junk(1450, 1450)))),                       # a full 1,500-byte MTU
}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
for k, make in kinds.items():
    sent = 0
    for _ in range(n):
        try:
            s.send(make()); sent += 1
        except OSError as e:
            print("send", k, e, file=sys.stderr)
    print(k, sent, flush=True)
"#;

/// Malformed and hostile frames at a serving xdp server (native on `eth1`, VLAN 4000, 2 queues): truncated
/// Ethernet/IP/UDP, bad lengths, IPv4 options, fragments, a wrong VLAN, IPv6 extension headers, TCP, random
/// QUIC bytes, a junk Initial, full-MTU datagrams; 300 of each, written from the switch while 100 clients
/// write. Each kind is counted where it is dropped (the program's counters, the workers' `rx_malformed`, the
/// endpoint's drops), and the clients see nothing of it: 0 failed, every write answered, every replica
/// matches.
#[test]
fn testbed_malformed_frames_are_counted_while_serving() {
    const N: u64 = 300;
    let Some(_g) = root_test("testbed_malformed_frames_are_counted_while_serving") else { return };
    let prefix = format!("cvj{}", std::process::id());
    let dir = scratch("inject");
    let script = dir.join("inject.py");
    std::fs::write(&script, INJECT_PY).unwrap();
    {
        let tb = Testbed::up(&prefix, 2, Duration::from_secs(90));
        let mac = exec_in(&tb.ns("server"), &["cat", "/sys/class/net/eth1/address"]).trim().to_string();
        let spec =
            [ClientSpec { host: "client1", protocol: "canvas1", clients: 100, ipv6: false, extra: &[] }];
        let (r, injected) = std::thread::scope(|sc| {
            let inj = sc.spawn(|| {
                std::thread::sleep(Duration::from_secs(4));
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", &tb.ns("switch"), "python3"]).arg(&script).args([
                    "s-srv",
                    &mac,
                    &N.to_string(),
                ]);
                run_bounded(&mut c, Duration::from_secs(60))
            });
            let r = load::run(
                &tb,
                &dir,
                &words(
                    "--mode xdp --iface eth1 --vlan 4000 --xdp-attach native -w 2 --listen 10.0.1.10:4433",
                ),
                &spec,
                SECS,
            );
            (r, inj.join().expect("injector thread"))
        });
        eprintln!("injector (exit {}):\n{}{}", injected.code, injected.stdout, injected.stderr);
        assert_eq!(injected.code, 0, "injector failed: {}", injected.stderr);
        for line in injected.stdout.lines() {
            assert!(line.ends_with(&format!(" {N}")), "not every frame was written: {line}");
        }
        assert_xdp(&r, "native", 2);
        let c = &r.server["xdp"]["counters"];
        eprintln!("program counters: {c}");
        let at_least = |k: &str, n: u64| {
            let v = c[k].as_u64().unwrap_or_else(|| panic!("counter {k} missing: {c}"));
            assert!(v >= n, "{k} = {v}, expected at least {n} injected: {c}");
        };
        at_least("malformed_eth", N);
        at_least("malformed_ip", 2 * N);
        at_least("malformed_udp", N);
        at_least("ip_fragment", N);
        at_least("passed_other_vlan", N);
        at_least("passed_not_udp", 2 * N);
        let w = |k: &str| -> u64 {
            r.server["per_worker"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["xdp"]["stats"][k].as_u64().unwrap())
                .sum()
        };
        let e = |k: &str| -> u64 {
            r.server["per_worker"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["endpoint"][k].as_u64().unwrap())
                .sum()
        };
        eprintln!(
            "workers: rx_malformed {}, endpoint dropped_packets {}, junk_initials {}, version_negotiations {}, \
             accepted {}",
            w("rx_malformed"),
            e("dropped_packets"),
            e("junk_initials"),
            e("version_negotiations"),
            e("accepted")
        );
        assert!(w("rx_malformed") >= N, "UDP length past the IP payload: the worker's parser drops it");
        // Random short headers, junk Initials, IPv4-option and full-MTU datagrams reach the endpoints and
        // leave no connection: every accepted connection is a client's or a verification connection.
        assert_eq!(e("accepted"), 101, "junk left connection state behind");
        assert!(e("dropped_packets") + e("junk_initials") >= 3 * N, "the junk the workers got is counted");
        assert_no_xdp(&tb);
    }
    let left = netns_with_prefix(&prefix);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
