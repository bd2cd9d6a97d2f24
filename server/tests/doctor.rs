//! Root tests of `server doctor`: the real binary, run with `ip netns exec` inside namespaces this test
//! creates (a one-queue veth pair `xr`/`xs`), against a ready interface, too many workers, a missing
//! interface, a taken UDP port and an interface that already has another XDP program. Each time: the exit
//! code, the findings that matter, and that doctor left no XDP program behind.

#[path = "../../xdp-prog/tests/support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use support::*;
use xdp_prog::{AttachMode, Config, XdpProgram};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `server doctor ARGS` inside `ns`; returns (exit code, stdout, stderr).
fn doctor(ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_server"), "doctor"])
        .args(args)
        .output()
        .expect("run ip netns exec server doctor");
    let code = out.status.code().expect("doctor exited (not killed by a signal)");
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report line of `check` (`[ OK ] check: …`), panicking with the whole report when absent.
fn line<'a>(report: &'a str, check: &str) -> &'a str {
    let tag = format!("] {check}: ");
    report.lines().find(|l| l.contains(&tag)).unwrap_or_else(|| panic!("no `{check}` finding in:\n{report}"))
}

fn assert_no_xdp(t: &Topology) {
    let link = t.link_details(&t.r, R_IF);
    assert!(!link.contains("prog/xdp"), "doctor left an XDP program on {R_IF}:\n{link}");
}

#[test]
fn ready_veth_one_worker() {
    if !require_root("ready_veth_one_worker") {
        return;
    }
    let t = Topology::new("dok");
    let r = t.r.clone();
    bounded(LIMIT, move || {
        let (code, out, err) = doctor(&r, &["--iface", R_IF, "-w", "1", "--listen", "10.0.1.10:4433"]);
        eprintln!("{out}{err}");
        assert_eq!(code, 0, "a ready veth with one worker:\n{out}{err}");
        assert!(line(&out, "interface").contains("driver veth"), "{out}");
        assert!(line(&out, "queues").starts_with("[ OK ]"), "{out}");
        let xdp = line(&out, "xdp program");
        assert!(xdp.starts_with("[ OK ]") && xdp.contains("native XDP supported"), "{out}");
        let zc = line(&out, "zero-copy");
        assert!(
            zc.starts_with("[WARN]") && zc.contains("zero-copy refused") && zc.contains("copy mode"),
            "{out}"
        );
        assert!(line(&out, "port").starts_with("[ OK ]"), "{out}");
        assert!(out.lines().last().unwrap().ends_with("0 blocker(s): ready"), "{out}");
        // Every warning carries its fix on the next line.
        let lines: Vec<&str> = out.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.starts_with("[WARN]") || l.starts_with("[FAIL]") {
                assert!(lines.get(i + 1).is_some_and(|n| n.trim_start().starts_with("fix: ")), "{l}");
            }
        }

        // The same as JSON.
        let (code, out, err) = doctor(&r, &["--iface", R_IF, "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
        assert_eq!(v["ready"], true, "{v}");
        assert_eq!(v["blockers"], 0, "{v}");
        let findings = v["findings"].as_array().expect("findings");
        let zc = findings.iter().find(|f| f["check"] == "zero-copy").expect("zero-copy finding");
        assert_eq!(zc["status"], "warn", "{zc}");
        assert!(zc["fix"].as_str().unwrap().contains("--zero-copy auto"), "{zc}");
    });
    assert_no_xdp(&t);
}

#[test]
fn more_workers_than_queues_blocks() {
    if !require_root("more_workers_than_queues_blocks") {
        return;
    }
    let t = Topology::new("dwq");
    let r = t.r.clone();
    bounded(LIMIT, move || {
        let (code, out, err) = doctor(&r, &["--iface", R_IF, "-w", "4"]);
        assert_eq!(code, 1, "-w 4 on a one-queue veth:\n{out}{err}");
        let q = line(&out, "queues");
        assert!(q.starts_with("[FAIL]") && q.contains("1 receive queue"), "{out}");
        assert!(out.contains("fix: ethtool -L xr combined 4"), "{out}");
        assert!(out.lines().last().unwrap().ends_with("not ready"), "{out}");
    });
    assert_no_xdp(&t);
}

#[test]
fn missing_interface_blocks() {
    if !require_root("missing_interface_blocks") {
        return;
    }
    let t = Topology::new("dmi");
    let r = t.r.clone();
    bounded(LIMIT, move || {
        let (code, out, err) = doctor(&r, &["--iface", "nosuchif0"]);
        assert_eq!(code, 1, "{out}{err}");
        let l = line(&out, "interface");
        assert!(l.starts_with("[FAIL]") && l.contains("nosuchif0"), "{out}");
        // Nothing that needs the interface was tried.
        assert!(!out.contains("] xdp program: ") && !out.contains("] zero-copy: "), "{out}");
        // And xdp mode without --iface is a configuration blocker.
        let (code, out, err) = doctor(&r, &[]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(line(&out, "config").contains("needs --iface"), "{out}");
    });
}

#[test]
fn taken_port_blocks() {
    if !require_root("taken_port_blocks") {
        return;
    }
    let t = Topology::new("dpt");
    let r = t.r.clone();
    bounded(LIMIT, move || {
        let _holder = udp_socket(&r, SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)));
        let (code, out, err) = doctor(&r, &["--iface", R_IF, "--listen", &format!("0.0.0.0:{PORT}")]);
        assert_eq!(code, 1, "the port is taken:\n{out}{err}");
        assert!(line(&out, "port").starts_with("[FAIL]"), "{out}");
        assert!(out.contains(&format!("ss -ulpn sport = :{PORT}")), "{out}");
        // Only the port blocks.
        assert_eq!(out.matches("[FAIL]").count(), 1, "{out}");
        // uring mode sees it too.
        let (code, out, err) = doctor(&r, &["--mode", "uring", "--listen", &format!("0.0.0.0:{PORT}")]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(line(&out, "port").starts_with("[FAIL]"), "{out}");
    });
    assert_no_xdp(&t);
}

#[test]
fn foreign_xdp_program_blocks_and_is_left_alone() {
    if !require_root("foreign_xdp_program_blocks_and_is_left_alone") {
        return;
    }
    let t = Topology::new("dfp");
    let r = t.r.clone();
    let details = {
        let t_r = t.r.clone();
        move || {
            Command::new("ip")
                .args(["-n", &t_r, "-d", "link", "show", "dev", R_IF])
                .output()
                .expect("ip")
                .stdout
        }
    };
    bounded(LIMIT, move || {
        let prog = in_netns(&r, || {
            XdpProgram::attach(
                R_IF,
                Config { port: 9999, vlan: None, mode: AttachMode::Generic, allow: Vec::new() },
            )
        })
        .expect("attach the other program");
        let id = prog.prog_id();
        let (code, out, err) = doctor(&r, &["--iface", R_IF]);
        assert_eq!(code, 1, "another program is attached:\n{out}{err}");
        let l = line(&out, "xdp program");
        assert!(l.starts_with("[FAIL]") && l.contains(&format!("prog id {id}")), "{out}");
        assert!(out.contains("fix: ip link set dev xr xdpgeneric off"), "{out}");
        // Nothing was attached or bound next to it, and it is still there, untouched.
        assert!(line(&out, "zero-copy").contains("not probed"), "{out}");
        let link = String::from_utf8_lossy(&details()).into_owned();
        assert!(link.contains(&format!("prog/xdp id {id}")), "{link}");
        prog.detach().expect("detach");
    });
    assert_no_xdp(&t);
}
