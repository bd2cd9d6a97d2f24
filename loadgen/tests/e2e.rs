//! End to end: the built `client` binary against the in-process fake server, in both protocols.

mod fake_server;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fake_server::{FakeServer, Options};
use serde_json::Value;

/// The runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Hard bound on one `client` process.
const PROCESS_BOUND: Duration = Duration::from_secs(90);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Run the client with `args`, killing it after [`PROCESS_BOUND`]. Its pipes are drained while it runs
/// (a full stderr pipe would block it).
fn client(args: &[String]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > PROCESS_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().expect("stderr reader");
            panic!("client ran longer than {PROCESS_BOUND:?}; stderr:\n{}", String::from_utf8_lossy(&stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// Pacing of the end-to-end runs: quick connects, frequent writes, 4 s of writing.
const E2E_PACING: [&str; 12] = [
    "--max-conn-jitter",
    "300",
    "--min-pixel-wait",
    "50",
    "--max-pixel-wait",
    "200",
    "--duration",
    "4",
    "--endpoints",
    "8",
    "--verify-timeout",
    "20",
];

/// `protocol` with the end-to-end pacing and `extra` flags, named `e2e-{protocol}`.
fn run_protocol(
    protocol: &str,
    clients: usize,
    server: &FakeServer,
    dir: &Path,
    extra: &[&str],
) -> (Value, Output) {
    let flags: Vec<&str> = E2E_PACING.iter().chain(extra).copied().collect();
    run_client(server, protocol, clients, &format!("e2e-{protocol}"), dir, &flags)
}

/// Run `clients` clients of `protocol` named `id` against `server` with `flags`, the CSV and the summary
/// going to `dir`; the client must succeed. The summary and the output.
fn run_client(
    server: &FakeServer,
    protocol: &str,
    clients: usize,
    id: &str,
    dir: &Path,
    flags: &[&str],
) -> (Value, Output) {
    let summary = dir.join("summary.json");
    let args: Vec<String> = [
        "--target",
        &format!("https://{}", server.addr),
        "--clients",
        &clients.to_string(),
        "--id",
        id,
        "--protocol",
        protocol,
        "--metrics-dir",
        dir.to_str().expect("utf-8 path"),
        "--summary-json",
        summary.to_str().expect("utf-8 path"),
    ]
    .iter()
    .chain(flags)
    .map(|s| s.to_string())
    .collect();
    let out = client(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {:?}\nstderr:\n{stderr}", out.status);
    // Shown with --nocapture: the human summary and the progress lines.
    println!("{}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written")).expect("JSON");
    (json, out)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

fn check_csv(dir: &Path, id: &str) {
    let csv = std::fs::read_to_string(dir.join(format!("{id}.csv"))).expect("CSV written");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps,acked,rejected,syncs,snapshots,\
             lat_p50_ms,lat_p99_ms,hash_mismatches,ack_p50_ms,ack_p99_ms"
        )
    );
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 3, "only {} rows:\n{csv}", rows.len());
    assert!(rows.iter().all(|r| r.split(',').count() == 16), "{csv}");
}

#[test]
fn canvas1_end_to_end() {
    canvas1(Options { reject_every: Some(10), ..Options::default() }, "canvas1", &[]);
}

/// Lost DIFF_PARTs (including the last ticks of the run) are repaired by SYNC, and every write still
/// becomes visible.
#[test]
fn canvas1_repairs_lost_datagrams() {
    // Also the multi-threaded runtime.
    let s =
        canvas1(Options { drop_every: Some(7), ..Options::default() }, "canvas1-lossy", &["--threads", "2"]);
    assert_eq!(s["threads"], 2);
    assert!(u(&s, "syncs") > 0, "{s:#}");
}

/// One run of 50 clients of `protocol` against a fake server with `opts`, and the checks common to both
/// protocols: everyone connected and none failed, writes flowed, every replica matched, the CSV is whole.
struct Run {
    summary: Value,
    out: Output,
    server: FakeServer,
    dir: PathBuf,
    /// The summary and stderr, for assertion messages.
    ctx: String,
}

const CLIENTS: u64 = 50;

impl Run {
    fn new(protocol: &str, opts: Options, name: &str, extra: &[&str]) -> Self {
        let server = FakeServer::start(opts);
        let dir = scratch(name);
        let (s, out) = run_protocol(protocol, CLIENTS as usize, &server, &dir, extra);
        let ctx = format!("{s:#}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(s["protocol"], protocol);
        assert_eq!(u(&s, "clients"), CLIENTS);
        assert_eq!(u(&s, "connected"), CLIENTS, "{ctx}");
        assert_eq!(u(&s, "failed"), 0, "{ctx}");
        assert!(u(&s, "pixels_sent") > 100, "{ctx}");
        let replicas = u(&s, "replicas");
        assert_eq!(u(&s, "replicas_checked"), replicas, "{ctx}");
        assert_eq!(u(&s, "replicas_matching"), replicas, "{ctx}");
        assert!(u(&s, "snapshots") >= CLIENTS, "{ctx}");
        check_csv(&dir, &format!("e2e-{protocol}"));
        Self { summary: s, out, server, dir, ctx }
    }

    fn server(&self, counter: impl Fn(&fake_server::Stats) -> &AtomicU64) -> u64 {
        counter(&self.server.stats).load(Relaxed)
    }
}

impl Drop for Run {
    /// Removes the scratch directory, unless a check failed (it is left for inspection).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn canvas1(opts: Options, name: &str, extra: &[&str]) -> Value {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (reject, lossy) = (opts.reject_every.is_some(), opts.drop_every.is_some());
    let run = Run::new("canvas1", opts, name, extra);
    let (s, ctx) = (&run.summary, &run.ctx);
    let (sent, applied, rejected) = (u(s, "pixels_sent"), u(s, "pixels_applied"), u(s, "pixels_rejected"));
    assert_eq!(applied + rejected, sent, "{ctx}");
    if reject {
        assert!(rejected > 0, "{ctx}");
    }
    assert_eq!(u(&s["rejected_by_reason"], "busy"), rejected, "{ctx}");
    if lossy {
        assert!(run.server(|s| &s.dropped) > 0);
    }
    assert_eq!(applied, run.server(|s| &s.acked), "{ctx}");
    assert_eq!(u(s, "hash_mismatches"), 0, "{ctx}");
    assert_eq!(u(s, "unresolved_writes") + u(s, "acked_not_visible"), 0, "{ctx}");
    assert!(u(s, "rx_datagrams") > 0, "{ctx}");
    assert_eq!(s["applied_is_observed"], false);
    let lat = &s["latency_ms"];
    assert_eq!(u(lat, "samples"), applied, "every applied write becomes visible: {ctx}");
    // Milliseconds, ordered, and no write took longer to show than the whole run lasted.
    let ms = |k: &str| lat[k].as_f64().unwrap_or_else(|| panic!("latency_ms.{k} missing: {ctx}"));
    let run_ms = s["elapsed_s"].as_f64().expect("elapsed_s") * 1e3;
    assert!(
        0.0 < ms("p50") && ms("p50") <= ms("p99") && ms("p99") <= ms("max") && ms("max") <= run_ms,
        "{ctx}"
    );
    assert_eq!(s["verify"]["snapshot_hash_ok"], true, "{ctx}");
    // stderr is a pipe: the per-second text lines, not the live bar.
    let stderr = String::from_utf8_lossy(&run.out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("[e2e-canvas1] t=")
            && l.contains(" active=")
            && l.contains(" acked=")
            && l.contains(" p99=")),
        "{ctx}"
    );
    assert!(!stderr.contains('\r'), "{ctx}");
    run.summary.clone()
}

#[test]
fn legacy_end_to_end() {
    let s = legacy(Options::default(), "legacy", &[]);
    assert_eq!(u(&s["verify"], "fetches"), 1, "no loss: replicas match at once");
}

/// Lost legacy diffs leave replicas wrong until the next full snapshot (60 ticks): verification re-fetches
/// the canvas every 500 ms until they match.
#[test]
fn legacy_repairs_at_full_snapshot() {
    let s = legacy(Options { drop_every: Some(5), ..Options::default() }, "legacy-lossy", &[]);
    assert!(u(&s["verify"], "fetches") > 1, "{s:#}");
}

fn legacy(opts: Options, name: &str, extra: &[&str]) -> Value {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lossless = opts.drop_every.is_none();
    let run = Run::new("legacy", opts, name, extra);
    let (s, ctx) = (&run.summary, &run.ctx);
    let sent = u(s, "pixels_sent");
    assert_eq!(sent, run.server(|s| &s.legacy_writes), "{ctx}");
    assert_eq!(s["applied_is_observed"], true);
    assert_eq!(u(s, "pixels_rejected"), 0);
    if lossless {
        // Every write is observed unless it was a no-op (same color) or overwritten back within its tick.
        let observed = u(s, "pixels_applied") + u(s, "legacy_noop_writes");
        assert!(observed * 100 >= sent * 95, "{ctx}");
    }
    run.summary.clone()
}

/// `--replicas 10`: 40 of the 50 clients keep no replica but still measure every write; only the 10 are
/// verified.
#[test]
fn light_clients_measure_without_replicas() {
    let s = canvas1(Options::default(), "canvas1-light", &["--replicas", "10"]);
    assert_eq!(u(&s, "replicas"), 10);
    let s = legacy(Options::default(), "legacy-light", &["--replicas", "10"]);
    assert_eq!(u(&s, "replicas"), 10);
}

#[test]
fn no_server_fails_fast_with_a_reason() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A bound UDP socket that never answers: handshakes time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let args: Vec<String> = [
        "--target",
        &format!("https://{}", silent.local_addr().expect("addr")),
        "--clients",
        "3",
        "--max-conn-jitter",
        "0",
        "--handshake-timeout",
        "1",
        "--duration",
        "30",
        "--verify-timeout",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = client(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no client could connect"), "{stderr}");
    assert!(stderr.contains("handshake_timeout"), "{stderr}");
    assert!(stderr.contains("no answer from") && stderr.contains("firewall"), "says what to check: {stderr}");
    // Ends early (not after --duration 30) once every client failed.
    assert!(stderr.contains("every client failed: ending the run early"), "{stderr}");
}

#[test]
fn bad_usage_exits_2() {
    let out = client(&[
        "--target".into(),
        "https://127.0.0.1:1".into(),
        "--min-pixel-wait".into(),
        "9".into(),
        "--max-pixel-wait".into(),
        "1".into(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--min-pixel-wait"));
}

/// Output paths that cannot be written are refused before any client starts, saying which flag is wrong.
#[test]
fn unwritable_outputs_are_reported_up_front() {
    let dir = scratch("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "").expect("write");
    let below_file = file.join("sub");
    let below_file = below_file.to_str().expect("utf-8 path");
    let run = |flag: &str| {
        let out = client(&["--target", "https://127.0.0.1:1", flag, below_file].map(String::from));
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run("--metrics-dir");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--metrics-dir") && stderr.contains("writable directory"), "{stderr}");
    let (code, stderr) = run("--summary-json");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--summary-json") && stderr.contains("does not exist"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Many clients on one thread (run with `cargo test --release -p client --test e2e -- --ignored
/// --nocapture`; `LOADGEN_SCALE_CLIENTS` sets the count, default 5000). The fake server shares the box,
/// so this measures that the client keeps up, not the server.
#[test]
#[ignore = "minutes of CPU and ~6 GB of replicas; run by hand in release"]
fn scale_one_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let clients: usize =
        std::env::var("LOADGEN_SCALE_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let secs = std::env::var("LOADGEN_SCALE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(20)
        .to_string();
    let protocol = std::env::var("LOADGEN_SCALE_PROTOCOL").unwrap_or_else(|_| "canvas1".into());
    let server = FakeServer::start(Options::default());
    let dir = scratch("scale");
    let pacing = [
        "--max-conn-jitter",
        "5000",
        "--min-pixel-wait",
        "1000",
        "--max-pixel-wait",
        "3000",
        "--duration",
        &secs,
    ];
    let (s, _) = run_client(&server, &protocol, clients, "scale", &dir, &pacing);
    // No hard bar on `connected`: on a small box the in-process quinn server (one endpoint, one core) is
    // what saturates first; read the printed summary (its `process` line is the client's own CPU).
    assert!(u(&s, "connected") > 0, "{s:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
