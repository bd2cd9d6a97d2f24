//! Graceful restart: SIGTERM a `--data-dir` server under load, start it again on the same port and data
//! directory, and the clients (`client --reconnect`) come back by themselves and resume their replicas
//! from their ticks, caught up with deltas from the ticks the restarted server replayed from its log; at the
//! end nothing failed and every replica matches the restarted server's canvas.
//! Then: a second SIGTERM while the first is being handled ends the server at once (exit status 130).
//! And a deliberate hand-over: a second server started with `--take-over` on the same port and data
//! directory stops the first (SIGTERM, its graceful stop) and serves its canvas; the clients come back to it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{bin, client_args, free_port, scratch, wait_bounded, Server};

const CLIENTS: u64 = 30;

fn start(listen: &str, data: &std::path::Path) -> Server {
    Server::start(
        &["-w", "1", "--listen", listen, "--data-dir", data.to_str().unwrap()],
        Duration::from_secs(30),
    )
}

/// Run `script` in one shell (so the gaps between its commands are the shell's), which must succeed.
fn sh(script: &str) {
    let st = Command::new("bash").args(["-c", script]).status().expect("bash");
    assert!(st.success(), "{script}");
}

/// `CLIENTS` writing canvas/1 clients on `listen` for 12 s that reconnect (`--reconnect 20`) when they lose
/// their connection.
fn resuming_clients(listen: &str, id: &str, summary: &std::path::Path) -> std::process::Child {
    let mut args = client_args(&format!("https://{listen}"), id, "canvas1", CLIENTS, 12, summary);
    args.extend(["--reconnect", "20", "--progress", "lines"].map(str::to_owned));
    Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client")
}

#[test]
fn clients_reconnect_and_resume_across_a_graceful_restart() {
    let dir = scratch("restart");
    let data = dir.join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let server = start(&listen, &data);
    let summary = dir.join("summary.json");
    let mut client = resuming_clients(&listen, "resume", &summary);
    std::thread::sleep(Duration::from_secs(4));
    let t0 = Instant::now();
    assert_eq!(server.stop(Duration::from_secs(20)), 0, "graceful stop");
    let server = start(&listen, &data);
    eprintln!("restarted in {:.2?}", t0.elapsed());
    assert_eq!(wait_bounded(&mut client, Duration::from_secs(120), "client"), 0, "client exit code");
    let s = e2e::all_resumed(&summary, CLIENTS);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {s}"));
    // The restarted server replayed the ticks after its last snapshot from the log: the resumed replicas
    // were caught up with deltas, not snapshots (one snapshot each: the one at the first join).
    assert_eq!(n("snapshots"), CLIENTS, "resumed with a delta, not a second snapshot");
    assert_eq!(
        n("pixels_applied") + n("pixels_rejected") + n("writes_unknown"),
        n("pixels_sent"),
        "every write answered, or in flight when its connection closed"
    );

    // A second signal while the first is handled forces the exit. Clients are connected, so the graceful
    // stop drains for at least three PTOs (quiche's closing period, > 75 ms) when the second one comes.
    // (SIGTERM then SIGINT: the same signal twice within 50 ms counts once, as wrappers like `timeout`
    // deliver one signal twice.)
    let summary2 = dir.join("summary2.json");
    let args = client_args(&format!("https://{listen}"), "second", "canvas1", 10, 10, &summary2);
    let mut client = Command::new(bin("client")).args(&args).stdout(Stdio::null()).spawn().expect("client");
    std::thread::sleep(Duration::from_secs(3));
    sh(&format!("kill -TERM {0}; sleep 0.01; kill -INT {0}", server.pid()));
    let code = server.stop_wait(Duration::from_secs(10));
    assert_eq!(code, 130, "the second signal exits at once");
    let _ = client.kill();
    let _ = client.wait();
    // One signal delivered twice at once (what `timeout` does: to the child, then to its process group)
    // is one request: a graceful stop.
    let server = start(&listen, &data);
    sh(&format!("kill -TERM {0}; kill -TERM {0}", server.pid()));
    assert_eq!(server.stop_wait(Duration::from_secs(20)), 0, "a duplicated signal stops gracefully");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn take_over_hands_the_port_and_the_canvas_to_the_new_server() {
    let dir = scratch("take-over");
    let data = dir.join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let old = start(&listen, &data);
    let summary = dir.join("summary.json");
    let mut client = resuming_clients(&listen, "handover", &summary);
    std::thread::sleep(Duration::from_secs(4));
    let t0 = Instant::now();
    let new = Server::start(
        &["-w", "1", "--listen", &listen, "--data-dir", data.to_str().unwrap(), "--take-over"],
        Duration::from_secs(60),
    );
    eprintln!("taken over in {:.2?}", t0.elapsed());
    // The old server was stopped gracefully by the new one (exit 0), not killed.
    let old_pid = old.pid();
    assert_eq!(old.stop_wait(Duration::from_secs(5)), 0, "the old server stopped gracefully");
    assert!(
        new.startup.iter().any(|l| l.contains(&format!("sent SIGTERM to pid {old_pid} (server)"))),
        "the new server says whom it stopped: {:?}",
        new.startup
    );
    assert_eq!(wait_bounded(&mut client, Duration::from_secs(120), "client"), 0, "client exit code");
    e2e::all_resumed(&summary, CLIENTS);
    assert_eq!(new.stop(Duration::from_secs(20)), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
