//! Unit tests of the doctor's decisions and rendering.

use std::io;

use clap::Parser;
use datapath::pin::PinPlan;

use super::*;

fn args(extra: &[&str]) -> DoctorArgs {
    DoctorArgs::parse_from(std::iter::once("server doctor").chain(extra.iter().copied()))
}

#[test]
fn defaults_match_the_server() {
    let a = args(&[]);
    assert_eq!(a.mode, DoctorMode::Xdp);
    assert_eq!(a.listen, "0.0.0.0:4433".parse().unwrap());
    assert_eq!((a.socket_recv_buf, a.socket_send_buf), (32 << 20, 32 << 20));
    assert_eq!(a.xdp_frames, xdp::DEFAULT_FRAMES);
    assert_eq!(a.max_connections_per_worker, 65_536);
    assert!(!a.json && a.workers.is_none() && a.iface.is_none());
    let a = args(&["--mode", "uring", "-w", "4", "--json", "--vlan", "4000", "--iface", "eth1"]);
    assert_eq!((a.mode, a.workers, a.vlan, a.json), (DoctorMode::Uring, Some(4), Some(4000), true));
    assert!(DoctorArgs::try_parse_from(["server doctor", "--vlan", "4095"]).is_err());
}

fn statuses(f: &[Finding]) -> Vec<(&str, Status)> {
    f.iter().map(|f| (f.check.as_str(), f.status)).collect()
}

#[test]
fn kernel_thresholds() {
    use Status::*;
    let f = kernel_findings("6.18.44", DoctorMode::Xdp, Some(4000));
    assert_eq!(statuses(&f), [("kernel", Ok), ("vlan metadata", Ok), ("tx budget", Ok)]);
    let f = kernel_findings("6.8.0", DoctorMode::Xdp, Some(4000));
    assert_eq!(statuses(&f), [("kernel", Ok), ("vlan metadata", Ok), ("tx budget", Warn)]);
    let f = kernel_findings("6.1.0", DoctorMode::Xdp, Some(4000));
    assert_eq!(statuses(&f), [("kernel", Ok), ("vlan metadata", Warn), ("tx budget", Warn)]);
    let f = kernel_findings("6.1.0", DoctorMode::Xdp, None);
    assert_eq!(statuses(&f), [("kernel", Ok), ("tx budget", Warn)]);
    let f = kernel_findings("5.8.0", DoctorMode::Xdp, None);
    assert_eq!(f[0].status, Blocker);
    assert!(f[0].detail.contains("5.9"), "{f:?}");
    assert_eq!(statuses(&kernel_findings("5.19.0", DoctorMode::Uring, None)), [("kernel", Blocker)]);
    assert_eq!(statuses(&kernel_findings("6.0.0", DoctorMode::Uring, None)), [("kernel", Ok)]);
    assert_eq!(kernel_findings("???", DoctorMode::Xdp, None)[0].status, Warn);
}

const STATUS: &str = "Name:\tserver\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n\
                          CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";

#[test]
fn status_parsing() {
    assert_eq!(parse_euid(STATUS), Some(0));
    assert_eq!(parse_cap_eff(STATUS), Some(0x1ff_ffff_ffff));
    assert_eq!(parse_cap_eff("CapEffX:\t1\n"), None);
    assert_eq!(parse_cap_eff(""), None);
}

#[test]
fn privileges() {
    let all = 0x1ff_ffff_ffffu64;
    assert_eq!(privilege_finding(Some(0), Some(all), DoctorMode::Xdp, "s").status, Status::Ok);
    // No CAP_BPF, but CAP_SYS_ADMIN: fine.
    let no_bpf = all & !(1 << CAP_BPF);
    assert_eq!(privilege_finding(Some(0), Some(no_bpf), DoctorMode::Xdp, "s").status, Status::Ok);
    let f = privilege_finding(Some(1000), Some(0), DoctorMode::Xdp, "/bin/server");
    assert_eq!(f.status, Status::Blocker);
    assert!(f.detail.contains("CAP_NET_ADMIN") && f.detail.contains("uid 1000"), "{f:?}");
    assert!(f
        .fix
        .as_deref()
        .unwrap()
        .contains("setcap cap_net_admin,cap_net_raw,cap_bpf,cap_ipc_lock+ep /bin/server"));
    let only_lock_missing = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) | (1 << CAP_BPF);
    assert_eq!(
        privilege_finding(Some(1000), Some(only_lock_missing), DoctorMode::Xdp, "s").status,
        Status::Warn
    );
    assert_eq!(privilege_finding(Some(1000), Some(0), DoctorMode::Uring, "s").status, Status::Warn);
    assert_eq!(privilege_finding(None, None, DoctorMode::Uring, "s").status, Status::Warn);
}

#[test]
fn mtu_thresholds() {
    assert_eq!(mtu_finding("x", 1227, false, 1350).status, Status::Blocker);
    assert_eq!(mtu_finding("x", 1228, false, 1350).status, Status::Warn);
    assert_eq!(mtu_finding("x", 1247, true, 1350).status, Status::Blocker);
    assert_eq!(mtu_finding("x", 1378, false, 1350).status, Status::Ok);
    assert_eq!(mtu_finding("x", 1378, true, 1350).status, Status::Warn);
    assert_eq!(mtu_finding("x", 1500, true, 1350).status, Status::Ok);
    let f = mtu_finding("eth9", 1000, false, 1350);
    assert_eq!(f.fix.as_deref(), Some("ip link set dev eth9 mtu 1400"));
}

#[test]
fn queues_vs_workers() {
    let f = queue_finding("xr", 1, "ethtool channels", Some(4));
    assert_eq!(f.status, Status::Blocker);
    assert!(f.fix.as_deref().unwrap().contains("ethtool -L xr combined 4"), "{f:?}");
    let f = queue_finding("xr", 4, "sysfs", Some(2));
    assert_eq!(f.status, Status::Warn);
    assert!(f.detail.contains("datagrams on queues 2-3 reach"), "{f:?}");
    assert!(queue_finding("xr", 2, "sysfs", Some(1)).detail.contains("on queue 1 reach"));
    assert_eq!(queue_finding("xr", 4, "sysfs", Some(4)).status, Status::Ok);
    assert_eq!(queue_finding("xr", 4, "sysfs", None).status, Status::Ok);
    assert_eq!(queue_finding("xr", 128, "sysfs", Some(65)).status, Status::Blocker);
}

#[test]
fn pinning_plan() {
    let plan = PinPlan {
        workers: vec![Some(0), Some(1)],
        master: Some(1),
        queue_irqs: vec![Some(40), None],
        notes: vec!["a note".into()],
    };
    let f = pin_finding("eth1", &plan);
    assert_eq!(f.status, Status::Ok);
    assert_eq!(f.detail, "worker 0 on CPU 0 (queue IRQ 40), worker 1 on CPU 1; master on CPU 1; a note");
    let plan =
        PinPlan { workers: vec![Some(0), Some(1), Some(0)], master: None, queue_irqs: vec![], notes: vec![] };
    let f = pin_finding("eth1", &plan);
    assert_eq!(f.status, Status::Warn);
    assert!(f.detail.starts_with("workers 0 and 2 share CPU 0"), "{f:?}");
    assert_eq!(irqbalance_finding(true).status, Status::Warn);
    assert_eq!(
        irqbalance_finding(true).fix.as_deref(),
        Some("systemctl stop irqbalance && systemctl disable irqbalance")
    );
    assert_eq!(irqbalance_finding(false).status, Status::Ok);
}

#[test]
fn hugepage_arithmetic() {
    // 16384 frames x 2 KiB = 32 MiB = 16 pages per worker; the default canvas fits one page.
    assert_eq!(hugepages_needed(DoctorMode::Xdp, 2, 16384, 1_000_000), (32, 1));
    assert_eq!(hugepages_needed(DoctorMode::Xdp, 2, 1000, 1_000_000), (0, 1));
    assert_eq!(hugepages_needed(DoctorMode::Uring, 8, 16384, 1_000_000), (0, 1));
    assert_eq!(hugepages_needed(DoctorMode::Uring, 1, 16384, 5 << 20), (0, 3));
    assert_eq!(hugepage_finding(Some(40), Some(33), 32, 1).status, Status::Ok);
    let f = hugepage_finding(Some(10), Some(4), 32, 1);
    assert_eq!(f.status, Status::Warn);
    // 6 in use by someone else + 33 needed.
    assert_eq!(f.fix.as_deref(), Some("echo 39 > /proc/sys/vm/nr_hugepages"));
    assert_eq!(
        hugepage_finding(Some(0), Some(0), 0, 1).fix.as_deref(),
        Some("echo 1 > /proc/sys/vm/nr_hugepages")
    );
    assert_eq!(hugepage_finding(None, None, 0, 1).status, Status::Warn);
}

#[test]
fn sysctls_and_limits() {
    let f = buffer_finding("net.core.rmem_max", Some(212_992), 32 << 20, "--socket-recv-buf", true);
    assert_eq!(f.status, Status::Warn);
    assert_eq!(f.fix.as_deref(), Some("sysctl -w net.core.rmem_max=33554432"));
    assert_eq!(buffer_finding("net.core.wmem_max", Some(64 << 20), 32 << 20, "x", false).status, Status::Ok);
    assert_eq!(backlog_finding(Some(1000)).status, Status::Warn);
    assert_eq!(backlog_finding(Some(300_000)).status, Status::Ok);
    assert_eq!(backlog_finding(None).status, Status::Ok);
    assert_eq!(fds_needed(2), 80);
    assert_eq!(nofile_finding(Some((1024, 1_048_576)), 2, 131_072).status, Status::Ok);
    let f = nofile_finding(Some((50, 4096)), 2, 131_072);
    assert_eq!(f.status, Status::Blocker);
    assert!(f.fix.as_deref().unwrap().starts_with("ulimit -n 4096"), "{f:?}");
    assert_eq!(file_max_finding(Some(10), 2).status, Status::Blocker);
    assert_eq!(file_max_finding(Some(1 << 20), 2).status, Status::Ok);
    assert_eq!(memlock_finding(true, Some(0), 64 << 20).status, Status::Ok);
    assert_eq!(memlock_finding(false, Some(libc::RLIM_INFINITY), 64 << 20).status, Status::Ok);
    assert_eq!(memlock_finding(false, Some(8 << 20), 64 << 20).status, Status::Blocker);
    assert_eq!(memlock_finding(false, Some(64 << 20), 64 << 20).status, Status::Ok);
}

#[test]
fn notrack_detection() {
    let nft =
        "table inet raw {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\
                   \t\tudp dport 4433 notrack\n\t}\n}\n";
    assert!(notrack_covers(nft, 4433));
    assert!(!notrack_covers(nft, 443));
    assert!(!notrack_covers(nft, 44));
    assert!(notrack_covers("-A PREROUTING -p udp -m udp --dport 4433 -j NOTRACK\n", 4433));
    assert!(notrack_covers("-A PREROUTING -p udp -m udp --dport 4433 -j CT --notrack\n", 4433));
    assert!(notrack_covers("udp dport { 443, 4433 } notrack", 4433));
    assert!(!notrack_covers("-A PREROUTING -p udp --dport 4433 -j ACCEPT\n-A OUTPUT -j NOTRACK\n", 4433));
    let none: &[(&str, Option<String>)] = &[("nft list ruleset", None), ("iptables -t raw -S", None)];
    assert_eq!(conntrack_finding(DoctorMode::Uring, false, none, 4433).status, Status::Ok);
    assert_eq!(conntrack_finding(DoctorMode::Xdp, true, none, 4433).status, Status::Ok);
    let f = conntrack_finding(DoctorMode::Uring, true, none, 4433);
    assert_eq!(f.status, Status::Warn);
    assert!(f.fix.as_deref().unwrap().contains("udp dport 4433 notrack"), "{f:?}");
    let with = [("nft list ruleset", Some(nft.to_string())), ("iptables -t raw -S", None)];
    assert_eq!(conntrack_finding(DoctorMode::Uring, true, &with, 4433).status, Status::Ok);
    let f = conntrack_finding(DoctorMode::Uring, true, &with, 9999);
    assert_eq!(f.status, Status::Warn);
    assert!(f.detail.contains("in nft list ruleset"), "{f:?}");
}

#[test]
fn port_outcomes() {
    let l: SocketAddr = "0.0.0.0:4433".parse().unwrap();
    assert_eq!(port_finding(l, &Ok(())).status, Status::Ok);
    let f = port_finding(l, &Err(io::Error::from_raw_os_error(libc::EADDRINUSE)));
    assert_eq!(f.status, Status::Blocker);
    assert!(f.fix.as_deref().unwrap().contains("ss -ulpn sport = :4433"), "{f:?}");
    let f = port_finding(l, &Err(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)));
    assert!(f.detail.contains("not an address"), "{f:?}");
    assert_eq!(port_finding(l, &Err(io::Error::from_raw_os_error(libc::EACCES))).status, Status::Blocker);
}

#[test]
fn verifier_refusal_is_named_with_its_log() {
    let e = xdp_prog::Error::Load {
        object: "canvas",
        source: libbpf_rs::Error::from_raw_os_error(libc::EINVAL),
        kernel: "6.1.0-57-amd64".into(),
        verifier_log: vec![
            "27: (0f) r3 += r2".into(),
            "math between pkt pointer and register with unbounded min value is not allowed".into(),
        ],
    };
    let f = verifier_finding(&e);
    assert_eq!(f.status, Status::Blocker);
    assert!(f.detail.contains("verifier of Linux 6.1.0-57-amd64 refused"), "{}", f.detail);
    assert!(f.detail.contains("unbounded min value"), "the verifier's last lines: {}", f.detail);
    assert!(!f.detail.contains("needs BPF and AF_XDP support"), "not blamed on the kernel: {}", f.detail);
    assert!(f.fix.as_deref().unwrap().contains("--mode uring"));
    // Refused before verification (no log): that one is about the kernel's support.
    let e = xdp_prog::Error::Load {
        object: "canvas",
        source: libbpf_rs::Error::from_raw_os_error(libc::EINVAL),
        kernel: "5.4.0".into(),
        verifier_log: vec![],
    };
    assert!(e.verifier_log().is_none());
    assert!(e.to_string().contains("before verification"), "{e}");
}

#[test]
fn xdp_outcomes() {
    let f = foreign_program_finding("eth1", 42, xdp_prog::Mode::Generic);
    assert_eq!(f.status, Status::Blocker);
    assert!(f.detail.contains("prog id 42"), "{f:?}");
    assert!(f.fix.as_deref().unwrap().starts_with("ip link set dev eth1 xdpgeneric off"), "{f:?}");
    assert_eq!(attach_finding("x", Ok("ok".into()), None).status, Status::Ok);
    assert_eq!(attach_finding("x", Err("n".into()), Some(Ok("g".into()))).status, Status::Warn);
    assert_eq!(attach_finding("x", Err("n".into()), Some(Err("g".into()))).status, Status::Blocker);
    assert_eq!(attach_finding("x", Err("n".into()), None).status, Status::Blocker);
    assert_eq!(zero_copy_finding("x", "mlx5_core", Ok(()), None).status, Status::Ok);
    let f = zero_copy_finding("x", "veth", Err("EOPNOTSUPP".into()), Some(Ok(())));
    assert_eq!(f.status, Status::Warn);
    assert!(f.detail.contains("zero-copy refused") && f.detail.contains("copy mode works"), "{f:?}");
    assert!(f.fix.as_deref().unwrap().contains("--zero-copy auto"));
    assert_eq!(
        zero_copy_finding("x", "veth", Err("z".into()), Some(Err("c".into()))).status,
        Status::Blocker
    );
}

#[test]
fn config_coherence() {
    assert!(config_findings(&args(&["--iface", "eth1"])).is_empty());
    assert_eq!(config_findings(&args(&[])).len(), 1, "xdp needs --iface");
    assert_eq!(config_findings(&args(&["--mode", "uring", "--iface", "eth1"])).len(), 1);
    assert!(config_findings(&args(&["--mode", "uring"])).is_empty());
    assert_eq!(config_findings(&args(&["--iface", "e", "-w", "0"])).len(), 1);
    assert_eq!(config_findings(&args(&["--iface", "e", "--listen", "0.0.0.0:0"])).len(), 1);
}

#[test]
fn table_and_json() {
    let f = vec![
        Finding::ok("kernel", "6.18"),
        Finding::warn("zero-copy", "refused", "--zero-copy auto"),
        Finding::blocker("port", "in use", "ss -ulpn sport = :4433"),
    ];
    let t = render(&f);
    assert_eq!(
            t,
            "[ OK ] kernel: 6.18\n[WARN] zero-copy: refused\n       fix: --zero-copy auto\n\
             [FAIL] port: in use\n       fix: ss -ulpn sport = :4433\n1 ok, 1 warning(s), 1 blocker(s): not ready\n"
        );
    assert_eq!(exit_code(&f), 1);
    assert_eq!(exit_code(&f[..2]), 0);
    let v: serde_json::Value = serde_json::from_str(&render_json(&f)).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["blockers"], 1);
    assert_eq!(v["findings"][1]["status"], "warn");
    assert_eq!(v["findings"][2]["status"], "blocker");
    assert_eq!(v["findings"][0]["fix"], serde_json::Value::Null);
}
