//! libiscsi's conformance suite (iscsi-test-cu, every test of family ALL) against a file LUN,
//! scored by `shared/tools/conformance` and held to two committed files at the repository root:
//!
//! - `conformance/known-failures.txt`: one `Suite.Test  reason` per line (`#` comments). A failure
//!   not on the list fails this test; a listed test that now passes is reported so the list can
//!   shrink.
//! - `conformance/min-passed.txt`: the least number of tests that must pass.
//!
//! The daemon listens on two portals (127.0.0.1 and 127.0.0.2) of one portal group, so the
//! suite's multipath tests get their second URL. iscsi-test-cu logs in as two initiators
//! (`…:iscsi-test` and `…:iscsi-test-2`) for its multi-initiator tests; the quick-flag
//! configuration has no ACL, so both are admitted.
//!
//! Every test but `Sanitize.Reset` runs here: with a multipath URL, the test before it
//! (`Sanitize.Reservations`) leaves its second session holding a RESERVE(6) it never releases,
//! so in this run the SANITIZE of `Sanitize.Reset` could only meet RESERVATION CONFLICT (SPC-2
//! §5.5.1). `conformance_kinds.rs` runs it on a LUN of its own (kind `sanitize-reset`).
//!
//! Environment: `FERRITE_SHARED_DIR` overrides where `shared/` is (default: beside the repo);
//! `FERRITE_CONFORMANCE_TESTS` passes a test regex (`--tests`) for a partial run, which skips the
//! floor check. The suite's own log, the JSON and the daemon log stay in
//! `target/tmp/conformance/` for reading afterwards.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::conformance::{read_list, repo_root, shared_dir, verdicts};
use common::{require_tool, run, Daemon, Opts};

/// iscsi-test-cu `-t` patterns (fnmatch, comma separated) for family ALL without
/// `Sanitize.Reset` (see above).
const ALL_BUT_SANITIZE_RESET: &str =
    "ALL.[!S]*,ALL.S[!a]*,ALL.Sanitize.[!R]*,ALL.Sanitize.Rea*,ALL.Sanitize.Reser*";

struct Verdict {
    status: String,
    why: String,
}

#[test]
fn libiscsi_conformance() {
    require_tool("iscsi-test-cu");
    require_tool("python3");
    let script = shared_dir().join("tools/conformance");
    assert!(
        script.is_file(),
        "conformance script not found at {} (shared/ belongs beside the repository; or set FERRITE_SHARED_DIR)",
        script.display()
    );
    let known = read_list(&repo_root().join("conformance/known-failures.txt"));
    let floor_path = repo_root().join("conformance/min-passed.txt");
    let floor: usize = fs::read_to_string(&floor_path)
        .unwrap_or_else(|e| panic!("{}: {e}", floor_path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: not a number: {e}", floor_path.display()));
    let filter = std::env::var("FERRITE_CONFORMANCE_TESTS")
        .ok()
        .filter(|s| !s.is_empty());

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    fs::create_dir_all(&out_dir).unwrap();
    let json = out_dir.join("results.json");
    let suite_log = out_dir.join("iscsi-test-cu.log");
    let _ = fs::remove_file(&json);

    let d = Daemon::start(Opts {
        luns: vec!["file:{dir}/lun0.img:128M".into()],
        block_size: 512,
        second_portal: true,
        ..Opts::default()
    });
    let (url, url2) = (d.url(0), d.url2(0));
    let script_s = script.display().to_string();
    let (json_s, log_s) = (json.display().to_string(), suite_log.display().to_string());
    let mut args = vec![
        script_s.as_str(),
        "--json",
        &json_s,
        "--log",
        &log_s,
        "--timeout",
        "1800",
    ];
    args.extend([
        "--tests",
        filter.as_deref().unwrap_or(ALL_BUT_SANITIZE_RESET),
    ]);
    args.extend([url.as_str(), url2.as_str()]);
    let t0 = Instant::now();
    let out = run("python3", &args, Duration::from_secs(2100));
    let took = t0.elapsed();
    let _ = fs::copy(d.log_path(), out_dir.join("ferrite.log"));
    // The script exits 1 when any test failed; that is judged below against the known list.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "conformance script broke: {}",
        out.describe()
    );
    assert!(
        json.is_file(),
        "no {} written: {}",
        json.display(),
        out.describe()
    );

    let mut results: BTreeMap<String, Verdict> = BTreeMap::new();
    for (status, name, why) in verdicts(&json) {
        results.insert(name, Verdict { status, why });
    }
    let count = |s: &str| results.values().filter(|v| v.status == s).count();
    let (passed, failed, skipped) = (count("passed"), count("failed"), count("skipped"));

    let unexpected: Vec<_> = results
        .iter()
        .filter(|(n, v)| v.status == "failed" && !known.contains_key(*n))
        .collect();
    let fixed: Vec<_> = known
        .keys()
        .filter(|n| results.get(*n).is_some_and(|v| v.status == "passed"))
        .collect();
    let gone: Vec<_> = known.keys().filter(|n| !results.contains_key(*n)).collect();

    // Written straight to stderr, past the test harness's capture, so CI logs show it on success.
    let mut report = String::new();
    {
        use std::fmt::Write as _;
        let r = &mut report;
        let _ = writeln!(
            r,
            "conformance: {url} + {url2}, {:.0?}; artifacts in {}",
            took,
            out_dir.display()
        );
        let _ = writeln!(
            r,
            "conformance: passed {passed}, failed {failed}, skipped {skipped} of {} tests; floor {floor}; {} listed as known failures",
            results.len(),
            known.len()
        );
        if !fixed.is_empty() {
            let _ = writeln!(
                r,
                "conformance: listed in known-failures.txt but now PASS ({}), remove them:",
                fixed.len()
            );
            for n in &fixed {
                let _ = writeln!(r, "  {n}");
            }
        }
        if filter.is_none() && !gone.is_empty() {
            let _ = writeln!(
                r,
                "conformance: listed in known-failures.txt but not run ({}):",
                gone.len()
            );
            for n in &gone {
                let _ = writeln!(r, "  {n}");
            }
        }
        if !unexpected.is_empty() {
            let _ = writeln!(
                r,
                "conformance: FAILED and not in known-failures.txt ({}):",
                unexpected.len()
            );
            for (n, v) in &unexpected {
                let _ = writeln!(r, "  {n}  {}", v.why);
            }
        }
    }
    {
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(report.as_bytes());
    }

    assert!(
        !results.is_empty(),
        "the suite ran no test: {}\n(log: {})",
        out.describe(),
        suite_log.display()
    );
    assert!(
        unexpected.is_empty(),
        "{} conformance test(s) failed that are not in conformance/known-failures.txt:\n{}\n(suite log: {}; daemon log: {})",
        unexpected.len(),
        unexpected.iter().map(|(n, v)| format!("  {n}  {}", v.why)).collect::<Vec<_>>().join("\n"),
        suite_log.display(),
        out_dir.join("ferrite.log").display()
    );
    if filter.is_none() {
        assert!(
            passed >= floor,
            "only {passed} conformance tests passed; conformance/min-passed.txt requires {floor}"
        );
    }
}
