//! The findings as a table (`[ OK ]`/`[WARN]`/`[FAIL]` with the fixing command) or JSON, and the exit code.

use std::fmt::Write as _;

use super::{Finding, Status};

/// (ok, warnings, blockers).
pub fn counts(findings: &[Finding]) -> (usize, usize, usize) {
    let n = |s| findings.iter().filter(|f| f.status == s).count();
    (n(Status::Ok), n(Status::Warn), n(Status::Blocker))
}

/// 0 without blockers, 1 with.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.status == Status::Blocker))
}

/// The table: `[ OK ] check: detail`, `[WARN] …`, `[FAIL] …`, each fix on the next line, then the counts.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.status {
            Status::Ok => "[ OK ]",
            Status::Warn => "[WARN]",
            Status::Blocker => "[FAIL]",
        };
        let _ = writeln!(s, "{tag} {}: {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(s, "       fix: {fix}");
        }
    }
    let (ok, warn, fail) = counts(findings);
    let _ = writeln!(
        s,
        "{ok} ok, {warn} warning(s), {fail} blocker(s): {}",
        if fail == 0 { "ready" } else { "not ready" }
    );
    s
}

/// The JSON report.
pub fn render_json(findings: &[Finding]) -> String {
    #[derive(serde::Serialize)]
    struct Report<'a> {
        ready: bool,
        ok: usize,
        warnings: usize,
        blockers: usize,
        findings: &'a [Finding],
    }
    let (ok, warnings, blockers) = counts(findings);
    let r = Report { ready: blockers == 0, ok, warnings, blockers, findings };
    serde_json::to_string_pretty(&r).expect("findings serialise")
}
