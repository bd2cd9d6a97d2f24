//! The testbed (`scripts/testbed.sh`): network namespaces standing for the reference network's server,
//! two clients and the vSwitch (VLAN 4000, `eth1.4000`, MTU 1400, 10.0.1.10/.21/.22). Helpers to bring it
//! up and down with a guard, and to run the workspace binaries inside its namespaces with `ip netns exec`
//! (which execs: the child's pid is the binary's pid, so SIGINT by pid reaches the server itself).
//! Every wait here is bounded.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{bin, wait_bounded, Server};

/// `scripts/testbed.sh` of this workspace.
pub fn script() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed.sh");
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`: no unsafe here).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// True when a root test can run; false (after saying why) when it should be skipped. Fails instead of
/// skipping when CI=true (a CI run must not silently skip the tests it is meant to run). `needs` says what
/// root is needed for.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if is_root() {
        return true;
    }
    let why = format!("{test}: needs root ({needs}); not running as root");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why} and CI=true: failing instead of skipping");
    eprintln!("SKIPPED {why}");
    false
}

/// Named network namespaces (`ip netns list`, first column).
pub fn netns_list() -> Vec<String> {
    let out = run_bounded(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10));
    assert_eq!(out.code, 0, "ip netns list: {}", out.stderr);
    out.stdout.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

/// Namespaces whose name starts with `{prefix}-`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let p = format!("{prefix}-");
    netns_list().into_iter().filter(|n| n.starts_with(&p)).collect()
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// Run `cmd` to completion with stdout and stderr captured, killing it after `timeout`.
///
/// # Panics
/// When it cannot be spawned or does not finish within `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let code = wait_bounded(&mut child, timeout, &what);
    Output { code, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Run `scripts/testbed.sh ARGS` (bounded).
pub fn testbed_sh(args: &[&str], timeout: Duration) -> Output {
    run_bounded(Command::new("bash").arg(script()).args(args), timeout)
}

/// A testbed brought up by [`Testbed::up`] and torn down (`testbed.sh down`) on drop, panicking or not.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
}

impl Testbed {
    /// `testbed.sh up --prefix PREFIX --queues QUEUES`, which also verifies it with pings.
    ///
    /// # Panics
    /// When the script fails or takes longer than `timeout` (the partial testbed is removed first).
    pub fn up(prefix: &str, queues: u32, timeout: Duration) -> Testbed {
        // The guard exists before the script runs: whatever it leaves behind is removed.
        let tb = Testbed { prefix: prefix.to_owned() };
        let q = queues.to_string();
        let out = testbed_sh(&["up", "--prefix", prefix, "--queues", &q], timeout);
        eprint!("{}", out.stderr);
        assert_eq!(out.code, 0, "testbed.sh up --prefix {prefix} failed:\n{}{}", out.stdout, out.stderr);
        tb
    }

    /// The prefix of the namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of `host` (`server`, `client1`, `client2`, `switch`).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let out = testbed_sh(&["down", "--prefix", &self.prefix], Duration::from_secs(60));
        eprint!("{}", out.stderr);
        if out.code != 0 {
            eprintln!("testbed.sh down --prefix {} failed ({}): {}", self.prefix, out.code, out.stdout);
        }
    }
}

/// A `Command` running workspace binary `name` inside namespace `ns`: `ip netns exec NS BIN`.
pub fn command_in(ns: &str, name: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(bin(name));
    c
}

/// Start `server ARGS` inside `ns` and wait (bounded) until it prints that it is listening. The returned
/// [`Server`] is the `ip netns exec` child, which is the server process itself (ip execs it).
pub fn start_server_in(ns: &str, args: &[&str], timeout: Duration) -> Server {
    let mut cmd = command_in(ns, "server");
    cmd.args(args);
    Server::spawn(cmd, &format!("{ns} server"), timeout)
}

impl Server {
    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Run `client ARGS` inside `ns` to completion (bounded), its output prefixed with the namespace.
/// Returns the exit code.
pub fn run_client_in(ns: &str, args: &[&str], timeout: Duration) -> i32 {
    let mut child = command_in(ns, "client")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec client");
    let tag = format!("[{ns} client]");
    let pipe = |r: Box<dyn Read + Send>, tag: String| {
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                eprintln!("{tag} {line}");
            }
        })
    };
    let a = pipe(Box::new(child.stdout.take().expect("stdout")), tag.clone());
    let b = pipe(Box::new(child.stderr.take().expect("stderr")), tag);
    let code = wait_bounded(&mut child, timeout, &format!("client in {ns}"));
    let _ = a.join();
    let _ = b.join();
    code
}

/// Counters of one interface, from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevCounters {
    /// Bytes received (a GSO/GRO packet counts all its bytes once).
    pub rx_bytes: u64,
    /// Packets received (a GSO/GRO packet counts once).
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Interface counters of `dev` inside `ns` (`/proc/net/dev` read there).
pub fn dev_counters(ns: &str, dev: &str) -> DevCounters {
    let out = run_bounded(
        Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/dev"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 0, "read /proc/net/dev in {ns}: {}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .unwrap_or_else(|| panic!("{dev} not in /proc/net/dev of {ns}:\n{}", out.stdout));
    let f: Vec<u64> =
        line.split_once(':').expect("colon").1.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    assert!(f.len() >= 16, "short /proc/net/dev line: {line}");
    DevCounters { rx_bytes: f[0], rx_packets: f[1], tx_bytes: f[8], tx_packets: f[9] }
}
