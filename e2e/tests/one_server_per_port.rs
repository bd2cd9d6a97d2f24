//! `server --mode uring` on a port another server serves is refused, naming that server's pid: the workers'
//! `SO_REUSEPORT` would otherwise let it share the port and split the clients between two canvases. (xdp
//! mode: `e2e/tests/testbed.rs`.)

use std::process::Command;
use std::time::Duration;

use e2e::{bin, free_port, Server};

#[test]
fn a_second_uring_server_on_the_port_is_refused_with_the_first_ones_pid() {
    let listen = format!("127.0.0.1:{}", free_port());
    let first = Server::start(&["-w", "2", "--listen", &listen], Duration::from_secs(30));
    let out =
        Command::new(bin("server")).args(["-w", "2", "--listen", &listen]).output().expect("second server");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("in use by pid {} (server)", first.pid())), "{err}");
    // [::] overlaps 127.0.0.1 on the same port (dual stack): refused too.
    let port = listen.rsplit(':').next().unwrap();
    let out = Command::new(bin("server"))
        .args(["--listen", &format!("[::]:{port}")])
        .output()
        .expect("third server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert_eq!(first.stop(Duration::from_secs(20)), 0);
}

/// `--take-over` signals only canvas servers: a port held by another program is an error naming it, and
/// that program is left alone.
#[test]
fn take_over_never_signals_a_port_holder_that_is_not_a_canvas_server() {
    let held = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let listen = held.local_addr().unwrap().to_string();
    let out = Command::new(bin("server"))
        .args(["-w", "1", "--listen", &listen, "--take-over", "--take-over-timeout-secs", "2"])
        .output()
        .expect("server");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("held by pid {} (", std::process::id())), "{err}");
    assert!(err.contains("not a canvas server"), "{err}");
    // This process was not signalled (it would have died of SIGTERM) and still holds its socket.
    assert_eq!(held.local_addr().unwrap().to_string(), listen);
    // Nothing holds a free port: --take-over has nothing to do and the server starts.
    let free = format!("127.0.0.1:{}", free_port());
    let s = Server::start(&["-w", "1", "--listen", &free, "--take-over"], Duration::from_secs(30));
    assert_eq!(s.stop(Duration::from_secs(20)), 0);
}

/// Past `--max-connections-per-worker` a client is told why (application close 0x103, "server full: ..."),
/// instead of timing out its handshake.
#[test]
fn past_the_connection_cap_clients_are_told_the_server_is_full() {
    let dir = e2e::scratch("full");
    let listen = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        &["-w", "1", "--listen", &listen, "--max-connections-per-worker", "5"],
        Duration::from_secs(30),
    );
    let summary = dir.join("summary.json");
    let mut args = e2e::client_args(&format!("https://{listen}"), "full", "canvas1", 8, 3, &summary);
    args.extend(["--verify-timeout", "2"].map(str::to_owned));
    assert_eq!(e2e::run_client(&args, Duration::from_secs(60)), 0, "client exit code");
    assert_eq!(server.stop(Duration::from_secs(20)), 0);
    let s = e2e::json(&summary);
    eprintln!("{s}");
    assert_eq!(s["connected"], 5);
    assert_eq!(s["failed_by_kind"]["closed_by_server"], 3, "{s}");
    assert_eq!(s["failed_by_kind"]["handshake_timeout"], 0, "{s}");
    assert!(s["first_error"].as_str().unwrap().contains("server full: 5 connections on this worker"), "{s}");
}
