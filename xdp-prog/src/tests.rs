//! Unit tests of the loader: config checks, a missing interface, kernel versions, the verifier log, counters.

use super::*;

#[test]
fn config_is_validated() {
    let ok = Config { port: 4433, vlan: Some(4000), mode: AttachMode::Auto, allow: Vec::new() };
    assert!(ok.validate().is_ok());
    assert!(Config { port: 0, ..ok.clone() }.validate().is_err());
    assert!(Config { vlan: Some(0), ..ok.clone() }.validate().is_err());
    assert!(Config { vlan: Some(4095), ..ok.clone() }.validate().is_err());
    assert!(Config { vlan: None, ..ok.clone() }.validate().is_ok());
    let v4: std::net::IpAddr = "10.0.1.0".parse().unwrap();
    let v6: std::net::IpAddr = "fd00::".parse().unwrap();
    assert!(Config { allow: vec![(v4, 24), (v6, 64)], ..ok.clone() }.validate().is_ok());
    assert!(Config { allow: vec![(v4, 33)], ..ok.clone() }.validate().is_err());
    assert!(Config { allow: vec![(v6, 129)], ..ok.clone() }.validate().is_err());
    assert!(Config { allow: vec![(v4, 32); MAX_ALLOW + 1], ..ok.clone() }.validate().is_err());
}

#[test]
fn missing_interface_is_reported_by_name() {
    let err = XdpProgram::attach(
        "nosuchif0",
        Config { port: 4433, vlan: None, mode: AttachMode::Auto, allow: Vec::new() },
    )
    .expect_err("no such interface");
    assert!(matches!(err, Error::InterfaceNotFound { .. }), "{err}");
    assert!(err.to_string().contains("nosuchif0"), "{err}");
}

#[test]
fn kernel_versions() {
    assert_eq!(kernel_version("6.1.0-28-amd64"), Some((6, 1)));
    assert_eq!(kernel_version("6.18.44-fc-v1300"), Some((6, 18)));
    assert_eq!(kernel_version("7.3.4+bpo-amd64\n"), Some((7, 3)));
    assert_eq!(kernel_version("5.10.0-28-amd64\n"), Some((5, 10)));
    assert_eq!(kernel_version("6.8"), Some((6, 8)));
    assert_eq!(kernel_version("garbage"), None);
    assert_eq!(kernel_version(""), None);
    assert!(kernel_version("6.1.0").unwrap() < DEV_BOUND_MIN);
    assert!(kernel_version("6.12.95").unwrap() >= VLAN_KFUNC_MIN);
}

#[test]
fn verifier_log_tail_is_the_log_body() {
    let lines: Vec<String> = [
        "libbpf: prog 'canvas_xdp': BPF program load failed: Invalid argument",
        "libbpf: prog 'canvas_xdp': -- BEGIN PROG LOAD LOG --",
        "0: R1=ctx() R10=fp0",
        "; tot_len = bpf_ntohs(ip->tot_len);",
        "27: (0f) r3 += r2",
        "math between pkt pointer and register with unbounded min value is not allowed",
        "processed 31 insns (limit 1000000) max_states_per_insn 0",
        "-- END PROG LOAD LOG --",
        "libbpf: prog 'canvas_xdp': failed to load: -22",
    ]
    .map(String::from)
    .to_vec();
    let tail = verifier::verifier_tail(&lines, 2);
    assert_eq!(
        tail,
        [
            "27: (0f) r3 += r2",
            "math between pkt pointer and register with unbounded min value is not allowed"
        ]
    );
    assert_eq!(verifier::verifier_tail(&lines, 100).len(), 4);
    assert!(verifier::verifier_tail(&lines[..1], 5).is_empty());
}

#[test]
fn counters_arithmetic() {
    let mut a = Counters::default();
    a.values[Counter::Redirected as usize] = 5;
    a.values[Counter::RedirectFailed as usize] = 2;
    a.values[Counter::VlanFromMetadata as usize] = 7;
    a.values[Counter::PassedNotIp as usize] = 1;
    assert_eq!(a.redirect_attempts(), 7);
    assert_eq!(a.frames(), 8);
    let mut b = a;
    b.values[Counter::Redirected as usize] = 9;
    assert_eq!(b.since(&a).get(Counter::Redirected), 4);
    assert!(a.to_string().starts_with("redirected=5 redirect_failed=2"), "{a}");
}
