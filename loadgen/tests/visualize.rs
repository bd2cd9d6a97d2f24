//! `visualize_load.py` renders a report from a mix of current (14-column), older (13-column) and
//! predecessor (7-column) CSVs, with and without `--summary-json` files.

use std::path::Path;
use std::process::Command;

/// Set (or CI=true, as in every CI run) to require the Python test; otherwise a missing matplotlib is
/// reported and the test passes.
const REQUIRE_ENV: &str = "LOADGEN_REQUIRE_PYTHON";

#[test]
fn visualize_load_renders_png() {
    let have = Command::new("python3").args(["-c", "import matplotlib"]).status().is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none() && std::env::var("CI").as_deref() != Ok("true"),
            "python3 with matplotlib is missing and {REQUIRE_ENV} or CI=true requires it (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED visualize_load_renders_png: python3 with matplotlib not found (set {REQUIRE_ENV} to require)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("loadgen-visualize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut new = String::from(
        "timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps,acked,rejected,syncs,snapshots,lat_p50_ms,lat_p99_ms\n",
    );
    let mut old = String::from("timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps\n");
    let mut cur = format!("{}\n", client::stats::CSV_HEADER);
    assert!(cur.ends_with(",lat_p50_ms,lat_p99_ms,hash_mismatches,ack_p50_ms,ack_p99_ms\n"), "{cur}");
    for i in 0..10u64 {
        let ts = 1_700_000_000 + i;
        let lat = if i == 0 { ",".to_string() } else { format!("{}.5,{}.25", 40 + i, 90 + i) };
        new.push_str(&format!(
            "{ts},{},0,{},100,{},1.5,{},{},0,{},{lat}\n",
            50 + i,
            100 * i,
            500 + i,
            90 * i,
            10 * i,
            50
        ));
        let lat = if i < 2 { ",".to_string() } else { format!("{}.5,{}", 200 - 15 * i, 2000 - 150 * i) };
        cur.push_str(&format!(
            "{ts},40,1,{},60,700,2.5,{},0,{},{},{lat},{},{}.5,{}\n",
            60 * i,
            55 * i,
            i / 2,
            40 + i / 5,
            i / 3,
            2 + i,
            9 + i
        ));
        if i % 3 != 1 {
            // The predecessor's file skips some seconds.
            old.push_str(&format!("{ts},{},{},{},80,300,0.9\n", 20 + i, i / 4, 80 * i));
        }
    }
    std::fs::write(dir.join("a.csv"), new).unwrap();
    std::fs::write(dir.join("b.csv"), old).unwrap();
    std::fs::write(dir.join("c.csv"), cur).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("visualize_load.py");
    let render = |extra: &[&Path], png: &Path| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .arg("-o")
            .arg(png)
            .args(extra.iter().flat_map(|p| [Path::new("--summary"), p]))
            .output()
            .expect("run python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(png).expect("PNG written");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{} bytes", bytes.len());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // CSVs only.
    let stdout = render(&[], &dir.join("report.png"));
    assert!(stdout.contains("3 CSV files, 0 summaries"), "{stdout}");
    // Summaries: found in the metrics directory (other JSON files are ignored), or named with --summary.
    let summary = |id: &str, matching: u64| {
        format!(
            r#"{{"id": "{id}", "protocol": "canvas1", "replicas": 50, "replicas_checked": 48,
                "replicas_matching": {matching}, "hash_mismatches": 2, "syncs": 7,
                "latency_ms": {{"p50": 41.5, "p99": 120.25, "max": 300.0, "samples": 900}},
                "verify": {{"checked": 48, "matching": {matching}, "snapshot_tick": 90, "snapshot_hash_ok": true,
                            "fetches": 1, "error": null, "mismatches": []}}}}"#
        )
    };
    std::fs::write(dir.join("a.json"), summary("a", 48)).unwrap();
    std::fs::write(dir.join("other.json"), r#"{"not": "a summary"}"#).unwrap();
    let stdout = render(&[], &dir.join("report2.png"));
    assert!(stdout.contains("3 CSV files, 1 summaries"), "{stdout}");
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("c.json"), summary("c", 46)).unwrap();
    let stdout = render(&[&dir.join("a.json"), &elsewhere], &dir.join("report3.png"));
    assert!(stdout.contains("3 CSV files, 2 summaries"), "{stdout}");
    // A named file that is not a summary is an error with a message.
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .arg("-o")
        .arg(dir.join("x.png"))
        .arg("--summary")
        .arg(dir.join("other.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loadgen --summary-json file"));
    // So is an output that cannot be written.
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .arg("-o")
        .arg(dir.join("missing").join("x.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write"), "{out:?}");
    // An empty directory is an error with a message, not a traceback.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out =
        Command::new("python3").arg(&script).arg(&empty).arg("-o").arg(dir.join("x.png")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.csv"));
    let _ = std::fs::remove_dir_all(&dir);
}
