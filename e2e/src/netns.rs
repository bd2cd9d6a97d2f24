//! The testbed (`scripts/testbed.sh`): network namespaces standing for the reference network's server,
//! two clients and the vSwitch (VLAN 4000, `eth1.4000`, MTU 1400, 10.0.1.10/.21/.22). Helpers to bring it
//! up and down with a guard, and to run the workspace binaries inside its namespaces with `ip netns exec`
//! (which execs: the child's pid is the binary's pid, so SIGINT by pid reaches the server itself).
//! Every wait here is bounded.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{bin, serial, wait_bounded, Server};

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
    crate::skip_unless_ci(&format!("{test}: needs root ({needs}); not running as root"));
    false
}

/// The start of a root test: `None` when it is skipped ([`root_or_skip`]), else the lock on `lock`, held
/// for the test (root tests share the testbed script, the box's cores and machine-wide settings).
pub fn root_test(test: &str, needs: &str, lock: &'static Mutex<()>) -> Option<MutexGuard<'static, ()>> {
    root_or_skip(test, needs).then(|| serial(lock))
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
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let code = wait_bounded(&mut child, timeout, &what);
    Output { code, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Run `scripts/SCRIPT ARGS --out OUT` under `timeout`: SIGTERM at `limit` (the script's traps then tear
/// down what it started: namespaces, guests, processes by pid), SIGKILL 30 s later if that hangs (exit 124
/// or 137 then); stdout and stderr captured, the whole bounded by `limit` + 60 s.
///
/// # Panics
/// When it cannot be spawned or outlives that bound.
pub fn run_script(script: &str, args: &[&str], out: &std::path::Path, limit: Duration) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["--signal=TERM", "--kill-after=30", &limit.as_secs().to_string(), "bash"])
        .arg(crate::script(script))
        .args(args)
        .arg("--out")
        .arg(out);
    run_bounded(&mut cmd, limit + Duration::from_secs(60))
}

/// Read `r` to the end on a thread of its own.
fn drain<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Run `ARGS` inside namespace `ns` (`ip netns exec`, bounded) and return its stdout.
///
/// # Panics
/// When it fails.
pub fn exec_in(ns: &str, args: &[&str]) -> String {
    let o = run_bounded(Command::new("ip").args(["netns", "exec", ns]).args(args), Duration::from_secs(20));
    assert_eq!(o.code, 0, "{args:?} in {ns}: {}", o.stderr);
    o.stdout
}

/// Run `scripts/testbed.sh ARGS` (bounded).
pub fn testbed_sh(args: &[&str], timeout: Duration) -> Output {
    run_bounded(Command::new("bash").arg(crate::script("testbed.sh")).args(args), timeout)
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

/// Run `client ARGS` inside `ns` to completion (bounded), its output prefixed with the namespace.
/// Returns the exit code.
pub fn run_client_in<S: AsRef<OsStr>>(ns: &str, args: &[S], timeout: Duration) -> i32 {
    let mut child = command_in(ns, "client")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec client");
    let tag = format!("[{ns} client]");
    let a = echo(child.stdout.take().expect("stdout"), tag.clone());
    let b = echo(child.stderr.take().expect("stderr"), tag);
    let code = wait_bounded(&mut child, timeout, &format!("client in {ns}"));
    let _ = a.join();
    let _ = b.join();
    code
}

/// Echo the lines of `r` to stderr, prefixed with `tag`, on a thread of its own.
fn echo<R: Read + Send + 'static>(r: R, tag: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            eprintln!("{tag} {line}");
        }
    })
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
    let out = exec_in(ns, &["cat", "/proc/net/dev"]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .unwrap_or_else(|| panic!("{dev} not in /proc/net/dev of {ns}:\n{out}"));
    let f: Vec<u64> =
        line.split_once(':').expect("colon").1.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    assert!(f.len() >= 16, "short /proc/net/dev line: {line}");
    DevCounters { rx_bytes: f[0], rx_packets: f[1], tx_bytes: f[8], tx_packets: f[9] }
}
