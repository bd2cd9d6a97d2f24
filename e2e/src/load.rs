//! One bounded load run on the testbed: a `server` in the server namespace, one `client` per client
//! namespace (concurrently), then SIGINT, with every invariant both sides can prove checked on the way:
//! all connected, none failed, every canvas/1 write applied or rejected, every replica equal to a fresh
//! snapshot, and the server's own counters equal to the clients'.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{run_client_in, start_server_in, Testbed};
use crate::{client_args, json};

/// The server's address on the testbed.
const TARGET: &str = "https://10.0.1.10:4433";
/// The server's IPv6 address on the testbed (the VLAN is dual-stack).
const TARGET6: &str = "https://[fd00:4000::10]:4433";

/// What one client namespace runs.
#[derive(Clone, Copy, Debug)]
pub struct ClientSpec {
    /// `client1` or `client2`.
    pub host: &'static str,
    /// `canvas1` or `legacy`.
    pub protocol: &'static str,
    /// Connections.
    pub clients: u64,
    /// Connect over IPv6 (fd00:4000::10) instead of IPv4 (10.0.1.10).
    pub ipv6: bool,
    /// More `client` flags.
    pub extra: &'static [&'static str],
}

/// The outcome of [`run`].
#[derive(Debug)]
pub struct LoadRun {
    /// The server's `--stats-json`.
    pub server: serde_json::Value,
    /// Each client's `--summary-json`, in the order of the specs.
    pub summaries: Vec<serde_json::Value>,
    /// Server process CPU (user + system) in seconds over its whole life, from /proc/PID/stat.
    pub server_cpu_s: f64,
}

impl LoadRun {
    /// A server total.
    pub fn total(&self, k: &str) -> u64 {
        self.server["totals"][k].as_u64().unwrap_or_else(|| panic!("totals.{k} missing: {}", self.server))
    }

    /// An endpoint counter summed over the workers.
    pub fn endpoint_total(&self, k: &str) -> u64 {
        let workers = self.server["per_worker"].as_array().expect("per_worker");
        workers
            .iter()
            .map(|w| w["endpoint"][k].as_u64().unwrap_or_else(|| panic!("endpoint.{k} missing: {w}")))
            .sum()
    }

    /// Datagrams the server moved (in + out).
    pub fn datagrams(&self) -> u64 {
        self.total("datagrams_in") + self.total("datagrams_out")
    }

    /// Server CPU per datagram moved (in + out), in microseconds.
    pub fn cpu_us_per_datagram(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.datagrams() as f64
    }
}

/// Writes the clients sent, and what the server must have applied and rejected of them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// `pixels_sent`.
    pub sent: u64,
    /// canvas/1 `pixels_applied` + every legacy write.
    pub applied: u64,
    /// canvas/1 `pixels_rejected`.
    pub rejected: u64,
}

/// Check one client's `--summary-json` (`what` names it): all `clients` connected, none failed, every
/// replica matches a fresh snapshot, the load was real, and in canvas/1 every write was applied or
/// rejected. Returns its writes.
pub fn check_summary(s: &serde_json::Value, what: &str, protocol: &str, clients: u64) -> Tally {
    eprintln!("{what} summary: {s}");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("summary.{k} missing: {s}"));
    assert_eq!(n("clients"), clients, "{what}");
    assert_eq!(n("connected"), clients, "{what}: all connected");
    assert_eq!(n("failed"), 0, "{what}: none failed");
    assert_eq!(n("replicas_checked"), clients, "{what}");
    assert_eq!(n("replicas_matching"), clients, "{what}: every replica matches a fresh snapshot");
    assert!(n("pixels_sent") > clients * 4, "{what}: the load was real");
    if protocol == "canvas1" {
        assert_eq!(
            n("pixels_applied") + n("pixels_rejected"),
            n("pixels_sent"),
            "{what}: applied + rejected == sent"
        );
        Tally { sent: n("pixels_sent"), applied: n("pixels_applied"), rejected: n("pixels_rejected") }
    } else {
        // The legacy protocol has no acknowledgements: every write is valid and applied.
        Tally { sent: n("pixels_sent"), applied: n("pixels_sent"), rejected: 0 }
    }
}

/// Check the server's `--stats-json` totals against what `processes` client processes with `clients`
/// connections in all wrote (`t`): every connection accepted and closed, every write received, applied or
/// rejected as the clients saw it.
pub fn check_totals(server: &serde_json::Value, clients: u64, processes: u64, t: Tally) {
    let total =
        |k: &str| server["totals"][k].as_u64().unwrap_or_else(|| panic!("totals.{k} missing: {server}"));
    // Every client connection + one verification connection per client process.
    assert!(
        total("accepted") >= clients + processes,
        "accepted {} < {}",
        total("accepted"),
        clients + processes
    );
    assert_eq!(total("closed"), total("accepted"), "every connection closed by the end");
    assert_eq!(total("pixels_received"), t.sent, "the server saw every write the clients sent");
    assert_eq!(total("pixels_applied"), t.applied, "canvas1 applied + every legacy write");
    assert_eq!(total("pixels_rejected"), t.rejected);
}

/// utime + stime of `pid` in seconds.
pub fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // /proc reports clock ticks of USER_HZ, which the kernel ABI fixes at 100 (sysconf(_SC_CLK_TCK)).
    let hz = 100.0;
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / hz
}

/// Run the server with `server_args` (plus `--stats-json`) and the clients for `secs` seconds, check the
/// invariants, stop the server, check its counters against the clients', and return everything.
pub fn run(tb: &Testbed, dir: &Path, server_args: &[&str], specs: &[ClientSpec], secs: u32) -> LoadRun {
    let stats = dir.join("server.json");
    let _ = std::fs::remove_file(&stats);
    let mut args: Vec<&str> = server_args.to_vec();
    let stats_s = stats.to_str().unwrap().to_owned();
    args.extend(["--stats-json", &stats_s]);
    let server = start_server_in(&tb.ns("server"), &args, Duration::from_secs(30));
    let pid = server.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("server exe");
    assert_eq!(exe, crate::bin("server"), "the pid of `ip netns exec` is the server's");

    let paths: Vec<PathBuf> = specs
        .iter()
        .map(|s| {
            let p = dir.join(format!("{}.json", s.host));
            let _ = std::fs::remove_file(&p);
            p
        })
        .collect();
    let t = Instant::now();
    let codes: Vec<i32> = std::thread::scope(|sc| {
        let hs: Vec<_> = specs
            .iter()
            .zip(&paths)
            .map(|(spec, path)| {
                let ns = tb.ns(spec.host);
                let target = if spec.ipv6 { TARGET6 } else { TARGET };
                let mut args = client_args(target, spec.host, spec.protocol, spec.clients, secs, path);
                args.extend(spec.extra.iter().map(|a| a.to_string()));
                sc.spawn(move || run_client_in(&ns, &args, Duration::from_secs(u64::from(secs) + 120)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    eprintln!("clients ran {:.2?}", t.elapsed());
    for (spec, code) in specs.iter().zip(&codes) {
        assert_eq!(*code, 0, "{} ({}) exit code", spec.host, spec.protocol);
    }

    let mut writes = Tally::default();
    let mut summaries = Vec::new();
    for (spec, path) in specs.iter().zip(&paths) {
        let s = json(path);
        let t = check_summary(&s, &format!("{} ({})", spec.host, spec.protocol), spec.protocol, spec.clients);
        writes.sent += t.sent;
        writes.applied += t.applied;
        writes.rejected += t.rejected;
        summaries.push(s);
    }

    let server_cpu_s = process_cpu_s(pid);
    let code = server.stop(Duration::from_secs(20));
    assert_eq!(code, 0, "server exit code after SIGINT");
    let st = json(&stats);
    eprintln!("server totals: {}", st["totals"]);
    let clients: u64 = specs.iter().map(|s| s.clients).sum();
    check_totals(&st, clients, specs.len() as u64, writes);
    LoadRun { server: st, summaries, server_cpu_s }
}
