//! Operator input the server refuses before it touches anything: every flag with a meaningless value names
//! its valid range, and `--cert`/`--key` that do not exist are an error naming the path (nothing is
//! created there); a combination of flags that cannot work is refused naming both.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run the server with `args`; it must refuse them and exit. One that is still running after 20 s (it
/// accepted them and is serving) is killed and reported as exit code -1.
fn server(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run server");
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for server") {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().expect("piped").read_to_string(&mut err).expect("read stderr");
    (code, err)
}

#[test]
fn meaningless_values_are_refused_with_their_range() {
    for (flag, value, range) in [
        ("--master-batch-drain", "0", "1..=67108864"),
        ("--broadcast-interval-ms", "0", "1..=60000"),
        ("--spsc-capacity", "0", "1..=67108864"),
        ("--max-connections-per-worker", "0", "1..=4194304"),
        ("--full-broadcast-interval", "0", "1..=1000000"),
        ("--workers", "0", "1..=1024"),
        ("--width", "0", "1.."),
        ("--history-ticks", "0", "1..=1048576"),
        ("--send-budget", "0", "1..=65536"),
        ("--rx-batch", "0", "1..=65536"),
        ("--dgram-queue", "0", "1..=65536"),
        ("--max-udp-payload", "1199", "1200..=65527"),
        ("--idle-wait-us", "0", "1..=1000000"),
        ("--master-idle-us", "0", "1..=1000000"),
        ("--socket-recv-buf", "10", "4096..="),
        ("--io-uring-sq-depth", "0", "1..=32768"),
    ] {
        let (code, err) = server(&[flag, value, "--listen", "127.0.0.1:1"]);
        assert_eq!(code, 2, "{flag} {value}: exit code; stderr:\n{err}");
        assert!(err.contains(flag) && err.contains(range), "{flag} {value}: no range {range} in:\n{err}");
    }
}

#[test]
fn missing_cert_and_key_are_an_error_and_nothing_is_created() {
    let dir = std::env::temp_dir().join(format!("cli-cert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("typo.pem"), dir.join("typo.key"));
    let (code, err) = server(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("--cert {}", cert.display())), "{err}");
    assert!(!cert.exists() && !key.exists(), "a file was created at an operator's path");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_retry_trigger_above_the_half_open_cap_is_refused() {
    let (code, err) = server(&["--listen", "127.0.0.1:0", "--max-half-open", "100", "--retry-above", "200"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--retry-above 200 is above --max-half-open 100") && err.contains("at most 100"),
        "{err}"
    );
}
