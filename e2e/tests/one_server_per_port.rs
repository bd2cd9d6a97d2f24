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
