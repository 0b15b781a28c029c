//! libiscsi's conformance suite (iscsi-test-cu, every test of family ALL) against a file LUN,
//! run and scored by the repository (`common::conformance`) and held to two committed files at
//! the repository root:
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
//! Environment: `FERRITE_CONFORMANCE_TESTS` passes iscsi-test-cu `-t` patterns for a partial
//! run, which skips the floor check. The suite's own log and the daemon log stay in
//! `target/tmp/conformance/` for reading afterwards.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::conformance::{read_list, repo_root, run_suite};
use common::{require_tool, Daemon, Opts};

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
    let suite_log = out_dir.join("iscsi-test-cu.log");

    let d = Daemon::start(Opts {
        luns: vec!["file:{dir}/lun0.img:128M".into()],
        block_size: 512,
        second_portal: true,
        ..Opts::default()
    });
    let (url, url2) = (d.url(0), d.url2(0));
    let t0 = Instant::now();
    let tests = filter.as_deref().unwrap_or(ALL_BUT_SANITIZE_RESET);
    let scored = run_suite(tests, &[&url, &url2], Duration::from_secs(1800), &suite_log);
    let took = t0.elapsed();
    let _ = fs::copy(d.log_path(), out_dir.join("ferrite.log"));
    let mut results: BTreeMap<String, Verdict> = BTreeMap::new();
    for v in scored {
        results.insert(
            v.name,
            Verdict {
                status: v.status.to_string(),
                why: v.why,
            },
        );
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
        "the suite ran no test (log: {})",
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

#[test]
fn the_scorer_reads_cunit_verdicts_and_skips() {
    let log = "\
Suite: Sanitize
  Test: Reservations ...    [SKIPPED] not implemented.
passed    [FAILED] PRIN command: failed with sense. RESERVATION CONFLICT
  Test: BlockErase ...    This is a HDD device
passed
  Test: Residuals ...passed    [FAILED] teardown noise
Suite: iSCSIdatasn
  Test: Invalid ...    [FAILED] WRITE10 failed
    [FAILED] WRITE10 failed again
FAILED
    1. test_x.c:12  - CU_ASSERT_EQUAL(ret,0)
  Test: SkipThenFail ...    [SKIPPED] maybe
    [FAILED] but then this
passed
  Test: Crashed ...
";
    let v = common::conformance::classify(log);
    let got: Vec<(&str, &str)> = v.iter().map(|v| (v.name.as_str(), v.status)).collect();
    assert_eq!(
        got,
        [
            ("Sanitize.Reservations", "skipped"),
            ("Sanitize.BlockErase", "passed"),
            ("Sanitize.Residuals", "passed"),
            ("iSCSIdatasn.Invalid", "failed"),
            ("iSCSIdatasn.SkipThenFail", "passed"),
            ("iSCSIdatasn.Crashed", "failed"),
        ]
    );
    assert_eq!(v[0].why, "[SKIPPED] not implemented.");
    assert_eq!(v[3].why, "[FAILED] WRITE10 failed again");
    assert_eq!(v[5].why, "no verdict (crash or hang?)");
}
