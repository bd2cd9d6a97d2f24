//! `--data-dir`: the promise "every ACKed write is on disk" (`--log-sync every-tick`), end to end.
//!
//! 1. `kill -9` of a server under load (40 clients writing every 5-20 ms, each write and ACK recorded with
//!    `client --write-log`); the restarted server holds every write that was ACKed: for each pixel, its
//!    colour is one of the writes ACKed at the pixel's newest ACKed tick or a write never ACKed (applied
//!    later, or in flight), never an older colour.
//! 2. The same again, then the log's last record cut short (a power cut during the `write`): the restart
//!    reports the cut and holds every write ACKed before that tick (the cut tick was never published under
//!    the promise, since the ACK follows the sync).
//! 3. The restarted server serves: a fresh load run's replicas match, and `server replay` rebuilds the
//!    canvas the server serves, byte for byte.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{
    bin, client_args, free_port, free_tcp_port, http_body, json, run_client, scratch, signal, wait_bounded,
    Server,
};

/// Palette indices of an indexed PNG.
fn png_pixels(png_bytes: &[u8]) -> Vec<u8> {
    let mut r = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().expect("png");
    let mut buf = vec![0; r.output_buffer_size().expect("size")];
    let info = r.next_frame(&mut buf).expect("frame");
    buf.truncate(info.buffer_size());
    buf
}

fn start(listen: &str, data: &Path, mport: u16) -> Server {
    Server::start(
        &[
            "-w",
            "1",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{mport}"),
        ],
        Duration::from_secs(30),
    )
}

/// Run a writing load (random pixels from `seed`) against `listen`, `kill -9` the server after 5 s, stop the
/// load and return.
fn load_and_kill(server: Server, listen: &str, log: &Path, dir: &Path, seed: u64) {
    let seed = seed.to_string();
    let summary = dir.join("killed-summary.json");
    let target = format!("https://{listen}");
    let args: Vec<String> = [
        "--target",
        &target,
        "--clients",
        "40",
        "--id",
        "killed",
        "--duration",
        "30",
        "--max-conn-jitter",
        "500",
        "--summary-json",
        summary.to_str().unwrap(),
        "--seed",
        &seed,
        "--min-pixel-wait",
        "5",
        "--max-pixel-wait",
        "20",
        "--write-log",
        log.to_str().unwrap(),
        "--verify-timeout",
        "3",
        "--close-timeout",
        "1",
        "--progress",
        "lines",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut client = Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client");
    std::thread::sleep(Duration::from_millis(500));
    assert!(client.try_wait().expect("wait").is_none(), "client exited early (bad arguments?)");
    std::thread::sleep(Duration::from_secs(5));
    signal(server.pid(), libc::SIGKILL);
    drop(server);
    // Stop the writes, then skip the verification (there is no server to verify against).
    std::thread::sleep(Duration::from_millis(300));
    signal(client.id(), libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-INT", &client.id().to_string()]).status();
    wait_bounded(&mut client, Duration::from_secs(60), "client after the server's kill -9");
}

/// Writes sent per pixel: (color, ACK tick if ACKed).
type Writes = HashMap<u32, Vec<(u8, Option<u64>)>>;

fn read_write_log(path: &Path, width: u32, into: &mut Writes) -> (u64, u64) {
    let text = std::fs::read_to_string(path).expect("write log");
    let mut sent: HashMap<(u64, u32), (u32, u8)> = HashMap::new();
    let mut acked: HashMap<(u64, u32), u64> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("{line}: {e}"));
        match f[0] {
            "W" => {
                sent.insert((n(1), n(2) as u32), (n(4) as u32 * width + n(3) as u32, n(5) as u8));
            }
            "A" => {
                acked.insert((n(1), n(2) as u32), n(3));
            }
            _ => panic!("bad write-log line {line}"),
        }
    }
    let n_acked = acked.len() as u64;
    for (k, (px, color)) in &sent {
        let tick = acked.remove(k);
        into.entry(*px).or_default().push((*color, tick));
    }
    assert!(acked.is_empty(), "ACKs for writes never sent: {}", acked.len());
    (sent.len() as u64, n_acked)
}

/// Pixels whose colour contradicts an ACKed write (excluding ACKs at ticks >= `exclude_from`).
fn violations(canvas: &[u8], writes: &Writes, exclude_from: u64) -> (usize, usize) {
    let (mut checked, mut bad) = (0, 0);
    for (px, ws) in writes {
        let newest = ws.iter().filter_map(|w| w.1).filter(|&t| t < exclude_from).max();
        let Some(newest) = newest else { continue };
        checked += 1;
        let ok = ws.iter().any(|&(c, t)| c == canvas[*px as usize] && t.is_none_or(|t| t >= newest));
        if !ok {
            bad += 1;
            if bad <= 5 {
                eprintln!(
                    "pixel {px}: colour {} but writes {ws:?} (newest ACK tick {newest})",
                    canvas[*px as usize]
                );
            }
        }
    }
    (checked, bad)
}

#[test]
fn acked_writes_survive_kill_9_and_a_torn_log_tail() {
    let dir = scratch("durability");
    let data = dir.join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mport = free_tcp_port();
    let width = 1000;
    let mut writes = Writes::new();

    // 1. kill -9 under load.
    let log1 = dir.join("writes-1.csv");
    load_and_kill(start(&listen, &data, mport), &listen, &log1, &dir, 1);
    let (sent1, acked1) = read_write_log(&log1, width, &mut writes);
    eprintln!("run 1: {sent1} writes sent, {acked1} ACKed before the kill -9");
    assert!(acked1 > 2_000, "the load was real");
    let server = start(&listen, &data, mport);
    // The live copy of the canvas is taken at the first tick, then once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let canvas = png_pixels(&http_body(mport, "/canvas.png"));
    let (checked, bad) = violations(&canvas, &writes, u64::MAX);
    eprintln!("after kill -9: {checked} pixels with ACKed writes checked, {bad} contradict an ACK");
    assert!(checked > 1_000);
    assert_eq!(bad, 0, "ACKed writes lost across kill -9");

    // 2. Again, then the last record cut short, as a power cut during its write would leave it.
    let log2 = dir.join("writes-2.csv");
    load_and_kill(server, &listen, &log2, &dir, 2);
    let (sent2, acked2) = read_write_log(&log2, width, &mut writes);
    eprintln!("run 2: {sent2} writes sent, {acked2} ACKed before the kill -9");
    let path = data.join("placements.log");
    let mut ticks = Vec::new();
    placelog::local::Reader::new(&data)
        .for_each(|b| ticks.push((b.tick, b.changes.len())))
        .expect("log reads");
    let (cut_tick, n) = *ticks.last().expect("the log has ticks");
    let before_cut = ticks.len().checked_sub(2).map(|i| ticks[i].0);
    let bytes = std::fs::read(&path).unwrap();
    let rec = 8 + 13 + 5 * n;
    let start_at = bytes.len() - rec;
    assert_eq!(
        u32::from_le_bytes(bytes[start_at..start_at + 4].try_into().unwrap()) as usize,
        rec - 8,
        "the log ends with tick {cut_tick}'s record"
    );
    std::fs::write(&path, &bytes[..bytes.len() - rec / 2]).unwrap();
    let server = start(&listen, &data, mport);
    // The restart cut the incomplete record off (and said so on stderr, echoed above).
    let mut kept = None;
    placelog::local::Reader::new(&data)
        .for_each(|b| {
            if b.tick <= cut_tick {
                kept = Some(b.tick);
            }
        })
        .expect("the log reads after the restart");
    assert_eq!(kept, before_cut, "tick {cut_tick} is gone from the log, every tick before it is kept");
    std::thread::sleep(Duration::from_millis(1500));
    let canvas = png_pixels(&http_body(mport, "/canvas.png"));
    let (checked, bad) = violations(&canvas, &writes, cut_tick);
    eprintln!("after the torn tail (tick {cut_tick} cut): {checked} pixels checked, {bad} contradict an ACK");
    assert!(checked > 1_000);
    assert_eq!(bad, 0, "ACKed writes before the cut tick lost");

    // 3. It serves: a fresh load's replicas match; replay rebuilds what it serves.
    let summary = dir.join("after-summary.json");
    let args = client_args(&format!("https://{listen}"), "after", "canvas1", 20, 3, &summary);
    assert_eq!(run_client(&args, Duration::from_secs(90)), 0, "client after the restart");
    let s = json(&summary);
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["replicas_matching"], s["replicas_checked"], "{s}");
    // The live copy of the canvas is refreshed once a second: let it catch up with the last write.
    std::thread::sleep(Duration::from_millis(1500));
    let served_png = png_pixels(&http_body(mport, "/canvas.png"));
    let served = http_body(mport, "/metrics.json");
    let served: serde_json::Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(server.stop(Duration::from_secs(20)), 0, "server exit code after SIGINT");
    let out = Command::new(bin("server"))
        .args([
            "replay",
            "--data-dir",
            data.to_str().unwrap(),
            "--png",
            dir.join("replay.png").to_str().unwrap(),
        ])
        .output()
        .expect("server replay");
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    // No write arrived after the load ended: the canvas the server served last is the log's newest.
    let hash = served["canvas_hash"].as_str().unwrap().to_string();
    assert!(text.contains(&format!("hash {hash}")), "replay's canvas is not the served one ({hash}): {text}");
    let replayed = png_pixels(&std::fs::read(dir.join("replay.png")).unwrap());
    assert!(replayed == served_png, "replay's PNG differs from the served canvas");
    let _ = std::fs::remove_dir_all(&dir);
}
