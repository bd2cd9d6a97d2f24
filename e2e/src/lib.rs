//! Helpers for end-to-end tests: locate the workspace binaries, run the server as a child process with a
//! bounded lifetime, stop it by its pid with SIGINT, and read the JSON both sides write.
#![forbid(unsafe_code)]

pub mod load;
pub mod nats;
pub mod netns;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A file under the workspace's `scripts/` (`testbed.sh`, `ops/tune.sh`, `vm.sh`, ...).
///
/// # Panics
/// When it does not exist.
pub fn script(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(rel);
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// Whether this run is CI's (`CI=true`), where tests must fail rather than skip.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A test that cannot run here (`why` says what is missing and how to get it): it says so and is skipped,
/// except when CI=true, where it fails (a CI run must not silently skip the tests it is meant to run).
pub fn skip_unless_ci(why: &str) {
    assert!(!ci(), "{why} and CI=true: failing instead of skipping");
    eprintln!("SKIPPED {why}");
}

/// The path of `cmd` when it is on PATH.
pub fn on_path(cmd: &str) -> Option<String> {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A workspace binary (`server`, `client`) next to the running test's profile directory.
///
/// # Panics
/// When the binary has not been built (`cargo test --workspace` builds it).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release --workspace` (or cargo test --workspace)",
        p.display()
    );
    p
}

/// A running server, stopped with SIGINT on drop if still alive.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Stderr lines after the one that said it was listening.
    pub log: mpsc::Receiver<String>,
    /// Stderr lines up to and including the one that said it was listening.
    pub startup: Vec<String>,
}

impl Server {
    /// Start `server` with `args` and wait until it prints that it is listening (bounded by `timeout`).
    pub fn start(args: &[&str], timeout: Duration) -> Server {
        let mut cmd = Command::new(bin("server"));
        cmd.args(args);
        Server::spawn(cmd, "server", timeout)
    }

    /// Spawn `cmd` (a server command line), echo its stderr prefixed with `[tag]`, and wait until it prints
    /// that it is listening (bounded by `timeout`).
    pub fn spawn(mut cmd: Command, tag: &str, timeout: Duration) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let tag = format!("[{tag}]");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{tag} {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut startup = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match rx.recv_timeout(left) {
                Ok(l) => {
                    let done = l.contains("listening on");
                    startup.push(l);
                    if done {
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => format!("did not start listening within {timeout:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    "exited before listening (see its stderr above)".into()
                }
            };
            let _ = child.kill();
            let _ = child.wait();
            panic!("server {why}");
        }
        Server { child, log: rx, startup }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGINT to the server's pid and wait (bounded) for it to exit; returns its exit status code.
    pub fn stop(mut self, timeout: Duration) -> i32 {
        signal(self.child.id(), libc::SIGINT);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {timeout:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Server {
    /// Wait (bounded) for the server to exit by itself; returns its exit code (-1 when killed by a signal).
    pub fn stop_wait(mut self, timeout: Duration) -> i32 {
        wait_bounded(&mut self.child, timeout, "server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill -SIG PID`, which must succeed.
pub fn signal(pid: u32, sig: i32) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Run the `client` binary to completion (bounded by `timeout`), returning its exit code.
pub fn run_client<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> i32 {
    let mut child =
        Command::new(bin("client")).args(args).stdout(Stdio::inherit()).spawn().expect("spawn client");
    wait_bounded(&mut child, timeout, "client")
}

/// Wait for `child` (polling), killing it and panicking after `timeout`; returns its exit code.
pub fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A `client --reconnect` summary (at `path`) after the server its `clients` clients were on went away once
/// (restarted, or killed with `--failover` elsewhere): every client came back once and resumed from its
/// tick, none failed, every replica matches the server now serving, nothing left unresolved. Returns it.
///
/// # Panics
/// When any of that does not hold.
pub fn all_resumed(path: &Path, clients: u64) -> serde_json::Value {
    let s = json(path);
    eprintln!("summary: {s}");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    assert_eq!(n("failed"), 0, "{s}");
    assert_eq!(n("reconnects"), clients, "every client came back once: {s}");
    assert_eq!(s["sync_reasons"]["resume"].as_u64(), Some(clients), "and resumed from its tick: {s}");
    assert_eq!(n("replicas_matching"), clients, "every replica matches the server now serving: {s}");
    assert_eq!(n("unresolved_writes") + n("acked_not_visible"), 0, "{s}");
    s
}

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let d = exe.parent().expect("deps").join(format!("e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The `client` arguments of every bounded load run here: `clients` connections to `target` for `secs`
/// seconds, arriving over 2 s, each writing a pixel every 100-400 ms, the summary written to `summary`.
pub fn client_args(
    target: &str,
    id: &str,
    protocol: &str,
    clients: u64,
    secs: u32,
    summary: &Path,
) -> Vec<String> {
    let summary = summary.to_str().expect("UTF-8 path");
    let (clients, secs) = (clients.to_string(), secs.to_string());
    [
        "--target",
        target,
        "--clients",
        &clients,
        "--id",
        id,
        "--protocol",
        protocol,
        "--duration",
        &secs,
        "--max-conn-jitter",
        "2000",
        "--min-pixel-wait",
        "100",
        "--max-pixel-wait",
        "400",
        "--summary-json",
        summary,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The words of `s`: a command line without quoting, e.g. `words("--mode xdp --iface eth1")`.
pub fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// Lock `serial` (a test binary's lock for tests that must not overlap), also when a test that held it
/// panicked.
pub fn serial(serial: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    serial.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_u64(path: &str) -> u64 {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    s.trim().parse().unwrap_or_else(|e| panic!("{path}: {s:?}: {e}"))
}

/// The machine's 2 MiB huge page pool (`vm.nr_hugepages`).
pub fn nr_hugepages() -> u64 {
    read_u64("/proc/sys/vm/nr_hugepages")
}

/// The free pages of that pool.
pub fn free_hugepages() -> u64 {
    read_u64("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
}

/// A TCP port that was free a moment ago on 127.0.0.1 (for `--metrics-addr`).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `GET path` from the HTTP server on 127.0.0.1:`port` (the live metrics): the whole response, headers
/// included.
pub fn http_get(port: u16, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics-addr");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send the request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    out
}

/// [`http_get`]'s body alone.
pub fn http_body(port: u16, path: &str) -> Vec<u8> {
    let mut out = http_get(port, path);
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end") + 4;
    out.split_off(at)
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
