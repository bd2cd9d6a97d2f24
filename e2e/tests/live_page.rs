//! `--metrics-addr`: during a load run, the live page rendered by headless Chromium (Debian's `chromium`)
//! shows the canvas and the counters changing, and `/metrics` serves the Prometheus families. The page draws
//! `/canvas.png` into a `<canvas>`, reads the pixels back and prints a checksum and the number of non-white
//! pixels, so a changing checksum proves the browser saw the canvas change, not just a counter.
//! Without Chromium the test says why and passes, unless CI=true, where it fails (scripts/setup.sh installs
//! it).

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::netns::run_bounded;
use e2e::{bin, free_port, free_tcp_port, http_get, wait_bounded, Server};

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|c| e2e::on_path(c))
}

/// Render the page in headless Chromium (its scripts run before the DOM is dumped) and return the DOM.
fn dump_dom(chrome: &str, port: u16) -> String {
    let mut c = Command::new(chrome);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=3000",
        "--dump-dom",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    // Killed (and the test failed) when it takes over 60 s.
    let out = run_bounded(&mut c, Duration::from_secs(60));
    assert_eq!(out.code, 0, "chromium exit code; stderr:\n{}", out.stderr);
    out.stdout
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let key = format!("id=\"{id}\">");
    let at = dom.find(&key).unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}")) + key.len();
    dom[at..].split('<').next().unwrap_or("").trim().to_string()
}

fn num(dom: &str, id: &str) -> u64 {
    let t = text_of(dom, id);
    t.parse().unwrap_or_else(|_| panic!("#{id} is {t:?}, not a number"))
}

#[test]
fn live_page_shows_the_canvas_and_counters_changing() {
    let Some(chrome) = chromium() else {
        e2e::skip_unless_ci("live page: chromium is not installed (scripts/setup.sh installs it)");
        return;
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let mport = free_tcp_port();
    let maddr = format!("127.0.0.1:{mport}");
    let server = Server::start(
        &["-w", "2", "--mode", "uring", "--listen", &listen, "--metrics-addr", &maddr],
        Duration::from_secs(30),
    );
    let target = format!("https://{listen}");
    let mut client = Command::new(bin("client"))
        .args([
            "--target",
            &target,
            "--clients",
            "100",
            "--id",
            "live",
            "--max-conn-jitter",
            "1000",
            "--min-pixel-wait",
            "50",
            "--max-pixel-wait",
            "200",
            // An upper bound only: the client is stopped by SIGINT once both renders are done, so the
            // renders fall inside the write phase however long Chromium takes to start (CI on 97831ef:
            // the second render came after a 14 s run had ended and showed 0 connections).
            "--duration",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");

    std::thread::sleep(Duration::from_secs(4));
    let first = dump_dom(&chrome, mport);
    std::thread::sleep(Duration::from_secs(4));
    let second = dump_dom(&chrome, mport);
    let metrics = String::from_utf8(http_get(mport, "/metrics")).expect("utf-8 metrics");
    let png = http_get(mport, "/canvas.png");

    // SIGINT: the client stops writing, drains, verifies its replicas and exits 0 if they match.
    e2e::signal(client.id(), libc::SIGINT);
    let code = wait_bounded(&mut client, Duration::from_secs(90), "client");
    assert_eq!(server.stop(Duration::from_secs(20)), 0, "server exit code");
    assert_eq!(code, 0, "client exit code");

    let (set1, set2) = (num(&first, "canvas-set"), num(&second, "canvas-set"));
    let (sum1, sum2) = (num(&first, "canvas-sum"), num(&second, "canvas-sum"));
    let (ap1, ap2) = (num(&first, "m-pixels_applied"), num(&second, "m-pixels_applied"));
    let (t1, t2) = (num(&first, "m-ticks"), num(&second, "m-ticks"));
    eprintln!(
        "page 1: {set1} pixels set, checksum {sum1}, applied {ap1}, tick {t1}; page 2: {set2}, {sum2}, {ap2}, {t2}"
    );
    assert!(set1 > 0, "the browser saw painted pixels in the first render");
    assert!(set2 > set1, "more pixels painted 4 s later ({set1} -> {set2})");
    assert_ne!(sum1, sum2, "the canvas the browser drew changed");
    assert!(ap2 > ap1 && ap1 > 0, "pixels_applied counter moved ({ap1} -> {ap2})");
    assert!(t2 > t1, "ticks moved ({t1} -> {t2})");
    assert_eq!(num(&second, "m-connections"), 100, "all connections shown");

    assert!(metrics.starts_with("HTTP/1.") && metrics.contains(" 200 "), "{metrics}");
    for family in [
        "# TYPE canvas_connections gauge",
        "canvas_connections{worker=\"1\"}",
        "canvas_pixels_applied_total{worker=\"0\"}",
        "canvas_queue_depth{worker=\"0\",queue=\"writes\"}",
        "# TYPE canvas_tick_duration_seconds histogram",
        "canvas_tick_duration_seconds_bucket{le=\"+Inf\"}",
        "canvas_packets_received_total{worker=\"0\"}",
        "# TYPE canvas_write_ack_wait_seconds histogram",
    ] {
        assert!(metrics.contains(family), "/metrics lacks {family}:\n{metrics}");
    }
    // The writes so far were timed inside the server, to their ACKs' encoding and hand-over to quiche.
    // And the worker loop's busy iterations, receive to receive.
    let keys = ["applied", "handed"]
        .map(|stage| format!("canvas_write_ack_wait_seconds_count{{stage=\"{stage}\"}} "));
    for key in keys.iter().map(String::as_str).chain(["canvas_worker_rx_gap_seconds_count "]) {
        let line =
            metrics.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}:\n{metrics}"));
        let n: u64 = line[key.len()..].trim().parse().expect("a count");
        assert!(n > 0, "{line}");
    }
    let head = String::from_utf8_lossy(&png[..png.len().min(512)]).to_ascii_lowercase();
    assert!(head.contains("content-type: image/png"), "canvas.png content type: {head}");
    assert!(png.windows(8).any(|w| w == b"\x89PNG\r\n\x1a\n"), "a PNG body");
}
