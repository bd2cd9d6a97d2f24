//! The deployment scripts of `scripts/ops/` (tune_server.sh and tune_client.sh, wrappers of tune.sh
//! --role; pin_irqs.sh, verify_network.sh, monitor.sh, hugepages.sh; all sourcing lib.sh) run inside the
//! testbed's namespaces (`scripts/testbed.sh`):
//! each first with `--dry-run` (exit 0, prints its commands, changes nothing: the namespace's and the
//! machine's sysctls, nftables rules, links, channels, IRQ affinities and huge pages are compared before
//! and after), then for real, then a second time for real (idempotent: nothing left to change). Whatever
//! is machine-wide (fs.file-max, vm.max_map_count, nr_hugepages, the remembered-reservation file) is put
//! back at the end by a guard, also when an assertion fails.
//!
//! Needs root (network namespaces, sysctls, XDP): without it the testbed test says why and passes, unless
//! CI=true, where it fails. The syntax/usage test needs no root; with CI=true it needs shellcheck.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::netns::{exec_in, netns_with_prefix, root_test, run_bounded, start_server_in, Output, Testbed};
use e2e::{nr_hugepages, scratch, serial, words};

/// The tests share the testbed script, the machine's sysctls and its huge page pool: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SCRIPTS: &[&str] = &[
    "tune.sh",
    "tune_server.sh",
    "tune_client.sh",
    "pin_irqs.sh",
    "verify_network.sh",
    "monitor.sh",
    "hugepages.sh",
];

/// The wrappers among [`SCRIPTS`]: `exec "$(dirname "$0")/tune.sh" --role ROLE "$@"`.
const TUNE_WRAPPERS: &[(&str, &str)] = &[("tune_server.sh", "server"), ("tune_client.sh", "client")];

/// The helpers every other script sources (not run on its own).
const LIB: &str = "lib.sh";

fn ops_dir() -> PathBuf {
    e2e::script("ops")
}

fn script(name: &str) -> PathBuf {
    e2e::script(&format!("ops/{name}"))
}

fn show(what: &str, o: &Output) {
    eprintln!("---- {what}: exit {}\n{}{}", o.code, o.stdout, o.stderr);
}

/// `bash scripts/ops/NAME ARGS` inside network namespace `ns` (bounded).
fn ops_in(ns: &str, name: &str, args: &[&str]) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "bash"]).arg(script(name)).args(args);
    let o = run_bounded(&mut c, Duration::from_secs(60));
    show(&format!("[{ns}] {name} {}", args.join(" ")), &o);
    o
}

/// `bash scripts/ops/NAME ARGS` in this (the root) network namespace (bounded).
fn ops_root(name: &str, args: &[&str]) -> Output {
    let o = run_bounded(Command::new("bash").arg(script(name)).args(args), Duration::from_secs(300));
    show(&format!("[root] {name} {}", args.join(" ")), &o);
    o
}

/// Lines of `o.stdout` starting with `+ ` (the commands a script runs or would run).
fn commands(o: &Output) -> Vec<&str> {
    o.stdout.lines().filter(|l| l.starts_with("+ ")).collect()
}

fn assert_ok(o: &Output, what: &str) {
    assert_eq!(o.code, 0, "{what}: exit {}\n{}{}", o.code, o.stdout, o.stderr);
}

/// Everything the scripts could change, as one comparable text: sysctls (per-namespace ones and the
/// machine's), nftables rules, huge pages, the remembered reservation, every IRQ's affinity, and in a
/// namespace (argument `ns`) its links (txqueuelen) and eth1's channels. The root namespace's links are
/// left out: other tests may create and delete interfaces there meanwhile.
const STATE_SH: &str = r#"
for f in fs/file-max vm/max_map_count vm/nr_hugepages net/core/rmem_max net/core/wmem_max \
  net/core/rmem_default net/core/wmem_default net/core/optmem_max net/core/netdev_max_backlog \
  net/core/somaxconn net/core/busy_poll net/core/busy_read net/ipv4/udp_rmem_min net/ipv4/udp_wmem_min \
  net/ipv4/udp_mem net/ipv4/ip_local_port_range net/netfilter/nf_conntrack_max; do
  printf '%s=%s\n' "$f" "$(cat /proc/sys/$f 2>/dev/null || echo -)"
done
nft list ruleset 2>/dev/null || true
if [ "$1" = ns ]; then ip -o link show; ethtool -l eth1 2>/dev/null || true; fi
ls /run/canvas-hugepages.prev 2>/dev/null || true
for f in /proc/irq/*/smp_affinity_list; do printf '%s=%s\n' "$f" "$(cat "$f" 2>/dev/null)"; done
"#;

/// [`STATE_SH`] in `ns` (None: the root namespace).
fn state(ns: Option<&str>) -> String {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "bash", "-c", STATE_SH, "state", "ns"]);
            c
        }
        None => {
            let mut c = Command::new("bash");
            c.args(["-c", STATE_SH, "state", "root"]);
            c
        }
    };
    let o = run_bounded(&mut c, Duration::from_secs(20));
    assert_eq!(o.code, 0, "state: {}", o.stderr);
    o.stdout
}

/// Namespace and machine state together.
fn both_states(ns: &str) -> (String, String) {
    (state(Some(ns)), state(None))
}

fn assert_same_state(before: &(String, String), after: &(String, String), what: &str) {
    for (b, a, w) in [(&before.0, &after.0, "namespace"), (&before.1, &after.1, "root namespace")] {
        if b != a {
            let diff: Vec<String> = b
                .lines()
                .zip(a.lines())
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("  - {x}\n  + {y}"))
                .collect();
            panic!("{what} changed the {w}:\n{}", diff.join("\n"));
        }
    }
}

fn sysctl_in(ns: &str, path: &str) -> String {
    exec_in(ns, &["cat", &format!("/proc/sys/{path}")]).split_whitespace().collect::<Vec<_>>().join(" ")
}

const PREV_FILE: &str = "/run/canvas-hugepages.prev";

/// The machine-wide state the scripts may change (they set fs.* and vm.* even from inside a namespace,
/// hugepages.sh sets the pool and remembers it in /run), written back on drop: also on panic.
struct MachineGuard {
    sysctls: Vec<(PathBuf, String)>,
    nr_hugepages: String,
    prev_file_existed: bool,
}

/// Root-namespace sysctls the scripts touch when run there or (fs.*, vm.*) from anywhere.
const MACHINE_SYSCTLS: &[&str] = &[
    "fs/file-max",
    "vm/max_map_count",
    "net/core/rmem_max",
    "net/core/wmem_max",
    "net/core/rmem_default",
    "net/core/wmem_default",
    "net/core/optmem_max",
    "net/core/netdev_max_backlog",
    "net/core/somaxconn",
    "net/core/busy_poll",
    "net/core/busy_read",
    "net/ipv4/udp_rmem_min",
    "net/ipv4/udp_wmem_min",
    "net/ipv4/udp_mem",
    "net/ipv4/ip_local_port_range",
    "net/netfilter/nf_conntrack_max",
];

impl MachineGuard {
    fn take() -> MachineGuard {
        let sysctls = MACHINE_SYSCTLS
            .iter()
            .map(|p| Path::new("/proc/sys").join(p))
            .filter_map(|p| std::fs::read_to_string(&p).ok().map(|v| (p, v)))
            .collect();
        MachineGuard {
            sysctls,
            nr_hugepages: std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap(),
            prev_file_existed: Path::new(PREV_FILE).exists(),
        }
    }

    /// Write back whatever differs; returns what had to be restored.
    fn restore(&self) -> Vec<String> {
        let mut restored = Vec::new();
        for (p, v) in &self.sysctls {
            let now = std::fs::read_to_string(p).unwrap_or_default();
            if now.split_whitespace().ne(v.split_whitespace()) {
                let r = std::fs::write(p, v.trim());
                restored.push(format!("{}: {} -> {} ({r:?})", p.display(), now.trim(), v.trim()));
            }
        }
        let now = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap_or_default();
        if now != self.nr_hugepages {
            let r = std::fs::write("/proc/sys/vm/nr_hugepages", self.nr_hugepages.trim());
            restored.push(format!("nr_hugepages: {} -> {} ({r:?})", now.trim(), self.nr_hugepages.trim()));
        }
        if !self.prev_file_existed && Path::new(PREV_FILE).exists() {
            let r = std::fs::remove_file(PREV_FILE);
            restored.push(format!("removed {PREV_FILE} ({r:?})"));
        }
        restored
    }
}

impl Drop for MachineGuard {
    fn drop(&mut self) {
        for r in self.restore() {
            eprintln!("restored {r}");
        }
    }
}

/// The scripts outside scripts/ops (testbed, demo, bench, soak, test, setup, the VM rig and its guest side)
/// parse and pass shellcheck, following what they source; the rig answers --help and refuses a bad flag.
#[test]
fn other_scripts_parse_and_pass_shellcheck() {
    let mut all: Vec<PathBuf> = Vec::new();
    for dir in ["", "vm"] {
        let d = e2e::script(dir);
        for e in std::fs::read_dir(&d).expect("read scripts dir") {
            let p = e.expect("dir entry").path();
            if p.extension().is_some_and(|x| x == "sh") {
                all.push(p);
            }
        }
    }
    assert!(all.len() >= 10, "found the scripts: {all:?}");
    let shellcheck = e2e::on_path("shellcheck").is_some();
    if !shellcheck {
        e2e::skip_unless_ci(
            "the shellcheck part: shellcheck is not installed (scripts/setup.sh installs it)",
        );
    }
    for p in &all {
        let o = run_bounded(Command::new("bash").arg("-n").arg(p), Duration::from_secs(10));
        assert_ok(&o, &format!("bash -n {}", p.display()));
        if shellcheck {
            let o = run_bounded(
                Command::new("shellcheck").arg("-x").arg(p).current_dir(p.parent().unwrap()),
                Duration::from_secs(60),
            );
            assert_ok(&o, &format!("shellcheck -x {}", p.display()));
        }
    }
    let vm = e2e::script("vm.sh");
    let o = run_bounded(Command::new("bash").arg(&vm).arg("--help"), Duration::from_secs(10));
    assert_ok(&o, "vm.sh --help");
    assert!(o.stdout.contains("matrix"), "{}", o.stdout);
    let o = run_bounded(Command::new("bash").arg(&vm).arg("--no-such-flag"), Duration::from_secs(10));
    assert_eq!(o.code, 2, "vm.sh refuses an unknown flag: {}{}", o.stdout, o.stderr);
}

/// Every script and lib.sh parse and pass shellcheck (when it is installed; CI=true requires it); every
/// script has --help (exit 0) and rejects an unknown flag with exit 2; tune_server.sh and tune_client.sh are
/// tune.sh with a role; the netplan example is the reference network.
#[test]
fn ops_scripts_parse_and_have_usage() {
    let _g = serial(&SERIAL);
    let shellcheck = e2e::on_path("shellcheck").is_some();
    if !shellcheck {
        e2e::skip_unless_ci(
            "the shellcheck part: shellcheck is not installed (scripts/setup.sh installs it)",
        );
    }
    for s in SCRIPTS.iter().chain(&[LIB]) {
        let p = script(s);
        let o = run_bounded(Command::new("bash").arg("-n").arg(&p), Duration::from_secs(10));
        assert_ok(&o, &format!("bash -n {s}"));
        if shellcheck {
            let o = run_bounded(Command::new("shellcheck").arg(&p), Duration::from_secs(60));
            assert_ok(&o, &format!("shellcheck {s}"));
        }
    }
    for s in SCRIPTS {
        let p = script(s);
        let o = run_bounded(Command::new("bash").arg(&p).arg("--help"), Duration::from_secs(10));
        assert_ok(&o, &format!("{s} --help"));
        assert!(o.stdout.contains("Usage:") && o.stdout.contains("--dry-run"), "{s} --help:\n{}", o.stdout);
        let o = run_bounded(Command::new("bash").arg(&p).arg("--no-such-flag"), Duration::from_secs(10));
        assert_eq!(o.code, 2, "{s} --no-such-flag: exit {}\n{}{}", o.code, o.stdout, o.stderr);
        assert!(o.stderr.contains("unknown argument"), "{s}: {}", o.stderr);
        let text = std::fs::read_to_string(&p).unwrap();
        if !TUNE_WRAPPERS.iter().any(|(w, _)| w == s) {
            assert!(text.contains("set -euo pipefail"), "{s}: no set -euo pipefail");
            assert!(
                text.contains(r#". "$(dirname "${BASH_SOURCE[0]}")/lib.sh""#),
                "{s}: does not source lib.sh"
            );
        }
    }
    // Usage errors.
    for (s, args) in [
        ("pin_irqs.sh", &["--queues", "2"][..]),
        ("pin_irqs.sh", &["--iface", "eth1", "--queues", "0"][..]),
        ("hugepages.sh", &[][..]),
        ("hugepages.sh", &["reserve", "x"][..]),
        ("monitor.sh", &["--count", "0"][..]),
        ("monitor.sh", &["--interval", "-1"][..]),
        ("verify_network.sh", &["--peer", "10.0.1"][..]),
        ("tune_server.sh", &["--port", "70000"][..]),
        ("tune_server.sh", &["--server", "10.0.1.10"][..]),
        ("tune.sh", &[][..]),
        ("tune.sh", &["--role", "both"][..]),
    ] {
        let o = run_bounded(Command::new("bash").arg(script(s)).args(args), Duration::from_secs(10));
        assert_eq!(o.code, 2, "{s} {args:?}: exit {}\n{}{}", o.code, o.stdout, o.stderr);
    }
    // The two tuning scripts are one script with a role: wrappers of tune.sh, with its usage for the role.
    for (w, role) in TUNE_WRAPPERS {
        let text = std::fs::read_to_string(script(w)).unwrap();
        let exec = format!(r#"exec "$(dirname "$0")/tune.sh" --role {role} "$@""#);
        assert!(
            text.lines().count() <= 3 && text.lines().any(|l| l == exec),
            "{w} is not a wrapper of tune.sh --role {role}:\n{text}"
        );
        let o = run_bounded(Command::new("bash").arg(script(w)).arg("--help"), Duration::from_secs(10));
        let of_tune = run_bounded(
            Command::new("bash").arg(script("tune.sh")).args(["--role", role, "--help"]),
            Duration::from_secs(10),
        );
        assert_eq!(o.stdout, of_tune.stdout, "{w} --help is not tune.sh --role {role} --help");
        assert!(o.stdout.contains(&format!("Usage: {w}")), "{w} --help:\n{}", o.stdout);
    }
    let netplan = std::fs::read_to_string(ops_dir().join("netplan-example.yaml")).unwrap();
    for want in
        ["eth1.4000:", "id: 4000", "link: eth1", "mtu: 1400", "- 10.0.1.10/24", "10.0.1.21", "10.0.1.22"]
    {
        assert!(netplan.contains(want), "netplan-example.yaml lacks {want:?}");
    }
}

/// Each script in the testbed: dry run, real run, second real run; see the module documentation.
#[test]
fn ops_scripts_on_the_testbed() {
    let needs = "network namespaces, sysctls, nftables, XDP";
    let Some(_g) = root_test("ops_scripts_on_the_testbed", needs, &SERIAL) else { return };
    let t0 = Instant::now();
    assert!(
        !Path::new(PREV_FILE).exists(),
        "{PREV_FILE} exists: a hugepages.sh reservation is active on this machine; release it first"
    );
    // The packages the scripts use, installed from the root namespace (the testbed has no way out).
    for s in ["tune_server.sh", "pin_irqs.sh", "verify_network.sh", "monitor.sh"] {
        assert_ok(&ops_root(s, &["--install-deps"]), &format!("{s} --install-deps"));
    }
    let dir = scratch("ops");
    let machine = MachineGuard::take();
    let root_before = state(None);
    let prefix = format!("cvo{}", std::process::id());
    {
        let tb = Testbed::up(&prefix, 2, Duration::from_secs(90));
        let srv = tb.ns("server");
        let cl1 = tb.ns("client1");

        // ---------------------------------------------------------------- tune_server.sh
        let limits = dir.join("limits-server.conf");
        let lim = limits.to_str().unwrap();
        let args = ["--iface", "eth1", "--limits-file", lim];
        let before = both_states(&srv);
        let o = ops_in(&srv, "tune_server.sh", &[&args[..], &["--dry-run"]].concat());
        assert_ok(&o, "tune_server.sh --dry-run");
        let cmds = commands(&o);
        for want in
            ["+ sysctl -q -w net.ipv4.udp_rmem_min=65536", "+ nft -f -", "+ ip link set dev eth1 txqueuelen"]
        {
            assert!(cmds.iter().any(|c| c.starts_with(want)), "dry run did not print {want:?}: {cmds:?}");
        }
        assert!(o.stdout.contains("global: set in the root namespace"), "globals not reported");
        assert!(o.stdout.contains("nothing was changed"));
        assert_same_state(&before, &both_states(&srv), "tune_server.sh --dry-run");
        assert!(!limits.exists(), "--dry-run wrote {lim}");
        // --strict: the global settings cannot be set from a child namespace, so it fails.
        let o = ops_in(&srv, "tune_server.sh", &[&args[..], &["--dry-run", "--strict"]].concat());
        assert_eq!(o.code, 1, "--strict in a child namespace must fail");
        assert!(o.stdout.contains("FAILED (--strict)"));

        let o = ops_in(&srv, "tune_server.sh", &args);
        assert_ok(&o, "tune_server.sh");
        assert!(o.stdout.contains("change(s) applied"), "first run changed nothing");
        assert!(
            o.stdout.contains("net.core.rmem_max") && o.stdout.contains("global: set in the root namespace")
        );
        assert_eq!(sysctl_in(&srv, "net/ipv4/udp_rmem_min"), "65536");
        assert_eq!(sysctl_in(&srv, "net/ipv4/udp_wmem_min"), "65536");
        assert_eq!(sysctl_in(&srv, "net/core/somaxconn"), "65535");
        let rules = exec_in(&srv, &["nft", "list", "table", "inet", "canvas_notrack"]);
        assert!(
            rules.contains("udp dport 4433 notrack") && rules.contains("udp sport 4433 notrack"),
            "NOTRACK rules: {rules}"
        );
        assert!(exec_in(&srv, &["ip", "-o", "link", "show", "dev", "eth1"]).contains("qlen 10000"));
        let l = std::fs::read_to_string(&limits).expect("limits file written");
        assert!(l.contains("root hard nofile   1048576") && l.contains("memlock  unlimited"), "{l}");
        // The global ones were not set from the namespace.
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap(),
            machine.sysctls.iter().find(|(p, _)| p.ends_with("net/core/rmem_max")).unwrap().1
        );
        let after_first = both_states(&srv);
        let o = ops_in(&srv, "tune_server.sh", &args);
        assert_ok(&o, "tune_server.sh (second run)");
        assert!(o.stdout.contains("nothing to change"), "second run is not idempotent");
        assert!(commands(&o).is_empty(), "second run ran commands: {:?}", commands(&o));
        assert_same_state(&after_first, &both_states(&srv), "tune_server.sh (second run)");

        // ---------------------------------------------------------------- tune_client.sh (client 1)
        let limits_c = dir.join("limits-client.conf");
        let args = ["--limits-file", limits_c.to_str().unwrap()];
        let before = both_states(&cl1);
        let o = ops_in(&cl1, "tune_client.sh", &[&args[..], &["--dry-run"]].concat());
        assert_ok(&o, "tune_client.sh --dry-run");
        assert!(commands(&o).iter().any(|c| c.contains("net.ipv4.ip_local_port_range=1024 65535")));
        assert!(o.stdout.contains("ip daddr 10.0.1.10 udp dport 4433 notrack"), "client NOTRACK rule");
        assert_same_state(&before, &both_states(&cl1), "tune_client.sh --dry-run");
        assert!(!limits_c.exists());
        assert_ok(&ops_in(&cl1, "tune_client.sh", &args), "tune_client.sh");
        assert_eq!(sysctl_in(&cl1, "net/ipv4/ip_local_port_range"), "1024 65535");
        let rules = exec_in(&cl1, &["nft", "list", "table", "inet", "canvas_notrack"]);
        assert!(rules.contains("ip daddr 10.0.1.10 udp dport 4433 notrack"), "{rules}");
        let after_first = both_states(&cl1);
        let o = ops_in(&cl1, "tune_client.sh", &args);
        assert_ok(&o, "tune_client.sh (second run)");
        assert!(o.stdout.contains("nothing to change") && commands(&o).is_empty(), "not idempotent");
        assert_same_state(&after_first, &both_states(&cl1), "tune_client.sh (second run)");

        // ---------------------------------------------------------------- pin_irqs.sh (veth: no IRQs)
        let args = ["--iface", "eth1", "--queues", "2"];
        let before = both_states(&srv);
        let o = ops_in(&srv, "pin_irqs.sh", &[&args[..], &["--dry-run"]].concat());
        assert_ok(&o, "pin_irqs.sh --dry-run");
        assert!(o.stdout.contains("virtual device (no IRQs)"), "veth not reported as without IRQs");
        assert_same_state(&before, &both_states(&srv), "pin_irqs.sh --dry-run");
        for run in ["first", "second"] {
            let o = ops_in(&srv, "pin_irqs.sh", &args);
            assert_ok(&o, &format!("pin_irqs.sh ({run} run)"));
            assert!(o.stdout.contains("virtual device (no IRQs)"));
            assert!(o.stdout.contains("queue 1 -> IRQ - (none) -> CPU"), "no map printed");
            assert!(o.stdout.contains("nothing to change"), "2 queues on a 2-queue veth changed something");
        }
        assert_same_state(&before, &both_states(&srv), "pin_irqs.sh");
        // The channel count: veth has separate rx/tx channels; 1 queue prints the change, then does it.
        let o = ops_in(&srv, "pin_irqs.sh", &["--iface", "eth1", "--queues", "1", "--dry-run"]);
        assert_ok(&o, "pin_irqs.sh --queues 1 --dry-run");
        assert!(commands(&o).contains(&"+ ethtool -L eth1 rx 1 tx 1"), "{:?}", commands(&o));
        assert_same_state(&before, &both_states(&srv), "pin_irqs.sh --queues 1 --dry-run");
        let o = ops_in(&srv, "pin_irqs.sh", &["--iface", "eth1", "--queues", "1"]);
        assert_ok(&o, "pin_irqs.sh --queues 1");
        assert!(o.stdout.contains("1 change(s) applied"));
        assert!(exec_in(&srv, &["ethtool", "-l", "eth1"]).contains("Current hardware settings:\nRX:\t\t1"));
        let o = ops_in(&srv, "pin_irqs.sh", &args);
        assert!(o.code == 0 && o.stdout.contains("1 change(s) applied"), "back to 2 queues");
        assert_same_state(&before, &both_states(&srv), "pin_irqs.sh back to 2 queues");
        let o = ops_in(&srv, "pin_irqs.sh", &["--iface", "eth1", "--queues", "3"]);
        assert_eq!(o.code, 1, "3 queues on a 2-queue veth must fail");
        // A device with IRQs, when the machine has one: the dry run finds the queue IRQ and changes nothing.
        let with_irqs = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| Path::new("/sys/class/net").join(n).join("device").exists())
            .min();
        if let Some(dev) = with_irqs {
            let before = state(None);
            let o = ops_root("pin_irqs.sh", &["--iface", &dev, "--queues", "1", "--dry-run"]);
            assert_ok(&o, &format!("pin_irqs.sh --iface {dev} --dry-run"));
            assert!(o.stdout.contains("queue 0 -> IRQ"), "no map for {dev}");
            assert_eq!(before, state(None), "pin_irqs.sh --dry-run on {dev} changed the machine");
        }

        // ---------------------------------------------------------------- verify_network.sh
        let args = ["--iface", "eth1.4000", "--peer", "10.0.1.21"];
        let before = both_states(&srv);
        let o = ops_in(&srv, "verify_network.sh", &[&args[..], &["--dry-run"]].concat());
        assert_ok(&o, "verify_network.sh --dry-run");
        assert!(commands(&o).iter().any(|c| c.starts_with("+ ping") && c.contains("10.0.1.21")));
        for run in ["first", "second"] {
            let o = ops_in(&srv, "verify_network.sh", &args);
            assert_ok(&o, &format!("verify_network.sh ({run} run)"));
            for want in [
                "PASS interface: eth1.4000 is up",
                "PASS address: eth1.4000 has 10.0.1.10/24",
                "PASS mtu: eth1.4000 MTU 1400",
                "PASS vlan:",
                "PASS reach: 10.0.1.21 answers",
                "PASS path mtu: a DF packet of 1400 bytes",
                "PASS conntrack: NOTRACK rule for UDP 4433 present",
            ] {
                assert!(o.stdout.contains(want), "verify_network.sh: no {want:?}");
            }
            assert!(!o.stdout.lines().any(|l| l.starts_with("FAIL")), "a check failed");
            assert!(o.stdout.contains("nothing changed"));
        }
        assert_same_state(&before, &both_states(&srv), "verify_network.sh");
        let o = ops_in(&srv, "verify_network.sh", &["--iface", "eth1.4000", "--peer", "10.0.1.99"]);
        assert_eq!(o.code, 1, "an unreachable peer must fail");
        assert!(o.stdout.contains("FAIL reach: 10.0.1.99"));

        // ---------------------------------------------------------------- monitor.sh (server running)
        let server = start_server_in(
            &srv,
            &words("--mode xdp --iface eth1 --vlan 4000 --listen 10.0.1.10:4433 --hugepages off"),
            Duration::from_secs(30),
        );
        let pid = server.pid().to_string();
        let csv = dir.join("monitor.csv");
        let args = ["--interval", "1", "--count", "3", "--pid", &pid, "--iface", "eth1", "--output"];
        let o = ops_in(&srv, "monitor.sh", &[&args[..], &[csv.to_str().unwrap(), "--dry-run"]].concat());
        assert_ok(&o, "monitor.sh --dry-run");
        let cmds = commands(&o);
        for want in ["+ cat /proc/net/snmp", "+ bpftool map dump id ", "+ cat /proc/"] {
            assert!(cmds.iter().any(|c| c.starts_with(want)), "dry run did not print {want:?}: {cmds:?}");
        }
        assert!(!csv.exists(), "--dry-run wrote the CSV");
        // Traffic the program counts (ICMP: passed, not UDP).
        exec_in(&cl1, &["ping", "-c", "2", "-i", "0.2", "-q", "10.0.1.10"]);
        let o = ops_in(&srv, "monitor.sh", &[&args[..], &[csv.to_str().unwrap()]].concat());
        assert_ok(&o, "monitor.sh");
        let text = std::fs::read_to_string(&csv).expect("monitor CSV");
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 4, "header + 3 rows:\n{text}");
        let header = &rows[0];
        assert_eq!(header[0], "timestamp");
        for col in [
            "udp_in_datagrams",
            "udp_out_datagrams",
            "udp_rcvbuf_errors",
            "udp_sndbuf_errors",
            "udp_in_errors",
            "udp_no_ports",
            "udp_in_csum_errors",
            "xdp_redirected",
            "xdp_passed_not_udp",
            "rss_kb",
            "threads",
            "connections",
        ] {
            assert!(header.contains(&col), "no column {col}: {header:?}");
        }
        let at = |name: &str| header.iter().position(|c| *c == name).unwrap();
        for r in &rows[1..] {
            assert_eq!(r.len(), header.len(), "row width: {r:?}");
            assert!(r[0].parse::<f64>().is_ok(), "timestamp {r:?}");
            assert!(r[at("udp_in_datagrams")].parse::<u64>().is_ok(), "{r:?}");
            assert!(r[at("xdp_redirected")].parse::<u64>().is_ok(), "xdp counters not read: {r:?}");
            assert!(r[at("xdp_passed_not_udp")].parse::<u64>().unwrap() >= 2, "pings not counted: {r:?}");
            assert!(r[at("rss_kb")].parse::<u64>().unwrap() > 0, "{r:?}");
            assert!(r[at("threads")].parse::<u64>().unwrap() >= 3, "{r:?}");
        }
        // A second run replaces the file (a recording, not a change of the system).
        let o = ops_in(
            &srv,
            "monitor.sh",
            &["--interval", "0.2", "--count", "2", "--output", csv.to_str().unwrap()],
        );
        assert_ok(&o, "monitor.sh (second run)");
        assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3, "header + 2 rows");
        // verify_network.sh recognises the running server's program.
        let o = ops_in(&srv, "verify_network.sh", &["--iface", "eth1.4000", "--peer", "10.0.1.21"]);
        assert_ok(&o, "verify_network.sh (server running)");
        assert!(o.stdout.contains("PASS xdp: eth1 has the server's program (canvas_xdp"), "program not seen");
        assert!(o.stdout.contains("PASS udp port: 4433 is bound by the server"));
        let code = server.stop(Duration::from_secs(20));
        assert_eq!(code, 0, "server exit code");

        // ---------------------------------------------------------------- hugepages.sh
        let pool = nr_hugepages();
        assert_ok(&ops_in(&srv, "hugepages.sh", &["status"]), "hugepages.sh status");
        let before = both_states(&srv);
        let o = ops_in(&srv, "hugepages.sh", &["reserve", "4", "--dry-run"]);
        assert_ok(&o, "hugepages.sh reserve 4 --dry-run");
        assert!(commands(&o).iter().any(|c| c.contains(&format!("echo {} > ", pool + 4))));
        assert_same_state(&before, &both_states(&srv), "hugepages.sh reserve --dry-run");
        assert!(!Path::new(PREV_FILE).exists());
        let o = ops_in(&srv, "hugepages.sh", &["reserve", "4"]);
        assert_ok(&o, "hugepages.sh reserve 4");
        assert_eq!(nr_hugepages(), pool + 4);
        assert_eq!(std::fs::read_to_string(PREV_FILE).unwrap().trim(), pool.to_string());
        let o = ops_in(&srv, "hugepages.sh", &["reserve", "4"]);
        assert_ok(&o, "hugepages.sh reserve 4 (second run)");
        assert!(o.stdout.contains("nothing to change") && commands(&o).is_empty());
        assert_eq!(nr_hugepages(), pool + 4, "reserve twice reserved twice");
        let o = ops_in(&srv, "hugepages.sh", &["status"]);
        assert!(
            o.stdout.contains(&format!("total {}", pool + 4))
                && o.stdout.contains("4 page(s) reserved by it")
        );
        let o = ops_in(&srv, "hugepages.sh", &["release", "--dry-run"]);
        assert_ok(&o, "hugepages.sh release --dry-run");
        assert_eq!(nr_hugepages(), pool + 4);
        assert!(Path::new(PREV_FILE).exists());
        assert_ok(&ops_in(&srv, "hugepages.sh", &["release"]), "hugepages.sh release");
        assert_eq!(nr_hugepages(), pool);
        assert!(!Path::new(PREV_FILE).exists());
        let o = ops_in(&srv, "hugepages.sh", &["release"]);
        assert_ok(&o, "hugepages.sh release (second run)");
        assert!(o.stdout.contains("nothing to change") && commands(&o).is_empty());
    }
    assert!(netns_with_prefix(&prefix).is_empty(), "namespaces left: {:?}", netns_with_prefix(&prefix));
    // What the scripts changed machine-wide from inside the namespaces (fs.file-max, vm.max_map_count) goes
    // back; after that the machine is as before.
    let restored = machine.restore();
    eprintln!("machine-wide settings restored: {restored:?}");
    assert!(
        restored.iter().all(|r| r.contains("file-max") || r.contains("max_map_count")),
        "the scripts changed more than fs.file-max and vm.max_map_count machine-wide: {restored:?}"
    );
    assert_eq!(state(None), root_before, "the root namespace is not as before");
    drop(machine);
    eprintln!("ops scripts test: {:.1} s", t0.elapsed().as_secs_f64());
}
