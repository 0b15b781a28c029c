//! libiscsi's conformance suite against the LUN kinds that `conformance.rs` (a thin file LUN,
//! every test) does not cover: a thick RAM LUN, a read-only LUN and a removable LUN. Each kind
//! runs the test families that make sense for it (a read-only LUN cannot pass WRITE tests; the
//! removable LUN's 4 KiB physical blocks are what the LBPPB > 1 tests need, and SBC-4 §5.8.2
//! makes GET LBA STATUS answer from the starting LBA, which `GetLBAStatus.UnmapSingle` does not
//! expect with LBPPB > 1, so that family stays on the thin file LUN).
//!
//! A fourth kind, `sanitize-reset`, runs the one test the full run cannot (`Sanitize.Reset`)
//! against a thin file LUN whose sanitize is paced (`sanitize_rate`), so that it is still running
//! when the test looks.
//!
//! Every kind is held to `conformance/known-failures.txt` (a failure not listed fails the test)
//! and to its floor in `conformance/kinds-min-passed.txt` (`kind passed`, one per line).
//! `FERRITE_CONFORMANCE_KINDS=thick,removable` runs only some kinds (and skips their floors).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::conformance::{read_list, repo_root, run_suite};
use common::{require_tool, Daemon, Opts};

struct Kind {
    name: &'static str,
    /// `[[target.lun]]` body; `{dir}` is the daemon's scratch directory.
    lun: &'static str,
    /// iscsi-test-cu `-t` patterns (fnmatch, comma separated).
    tests: &'static str,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "thick",
        lun: "backstore = \"ram:128M\"\nthin = false",
        tests: "ALL.CompareAndWrite.*,ALL.ExtendedCopy.*,ALL.ReceiveCopyResults.*,\
                ALL.GetLBAStatus.*,ALL.Inquiry.*,ALL.OrWrite.*,ALL.ReadCapacity16.*,\
                ALL.Sanitize.[!R]*,ALL.Unmap.*,ALL.WriteAtomic16.*,ALL.WriteSame10.*,\
                ALL.WriteSame16.*,ALL.Write10.*,ALL.Read10.*,ALL.MultipathIO.*",
    },
    Kind {
        name: "read-only",
        lun: "backstore = \"file:{dir}/ro.img:64M\"\nread_only = true",
        tests: "ALL.ReadOnly.*,ALL.Read6.*,ALL.Read10.*,ALL.Read12.*,ALL.Read16.*,\
                ALL.ReadCapacity10.*,ALL.ReadCapacity16.*,ALL.ReadDefectData10.*,\
                ALL.ReadDefectData12.*,ALL.Inquiry.*,ALL.Mandatory.*,ALL.ModeSense6.*,\
                ALL.Prefetch10.*,ALL.Prefetch16.*,ALL.ReportSupportedOpcodes.*,\
                ALL.TestUnitReady.*,ALL.Verify10.*,ALL.Verify12.*,ALL.Verify16.*",
    },
    Kind {
        name: "removable",
        lun: "backstore = \"ram:128M\"\nremovable = true\nphysical_block_size = 4096",
        tests: "ALL.PreventAllow.*,ALL.StartStopUnit.*,ALL.NoMedia.*,ALL.CompareAndWrite.*,\
                ALL.WriteSame10.*,ALL.WriteSame16.*,ALL.Unmap.*,ALL.ReadCapacity16.*",
    },
    Kind {
        // SBC-4 §4.11.2: a sanitize outlives ABORT TASK, resets and a re-login. The test expects
        // it still running some 4 s after it began; at 16 MiB/s the 128 MiB overwrite takes 8 s.
        // Its own LUN and sessions, since in the full run the test before it leaves a RESERVE(6)
        // behind (see conformance.rs).
        name: "sanitize-reset",
        lun: "backstore = \"file:{dir}/sanitize.img:128M\"\nsanitize_rate = \"16M\"",
        tests: "ALL.Sanitize.Reset",
    },
];

struct Outcome {
    passed: usize,
    failed: usize,
    skipped: usize,
    unexpected: Vec<String>,
}

fn run_kind(kind: &Kind, known: &BTreeMap<String, String>) -> Outcome {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("conformance-kinds")
        .join(kind.name);
    fs::create_dir_all(&out_dir).unwrap();
    let suite_log = out_dir.join("iscsi-test-cu.log");
    let config = format!(
        "[settings]\nnop_interval_secs = 0\n\n[[target]]\nname = \"{}\"\n\n\
         [[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:{{port}}\", \"{}:{{port2}}\"]\n\n\
         [[target.lun]]\nid = 0\n{}\n",
        common::IQN,
        common::SECOND_IP,
        kind.lun
    );
    let d = Daemon::start(Opts {
        second_portal: true,
        config: Some(config),
        ..Opts::default()
    });
    let (url, url2) = (d.url(0), d.url2(0));
    let t0 = Instant::now();
    let scored = run_suite(
        kind.tests,
        &[&url, &url2],
        Duration::from_secs(900),
        &suite_log,
    );
    let _ = fs::copy(d.log_path(), out_dir.join("ferrite.log"));
    let mut o = Outcome {
        passed: 0,
        failed: 0,
        skipped: 0,
        unexpected: Vec::new(),
    };
    for v in scored {
        let (name, why) = (v.name, v.why);
        match v.status {
            "passed" => o.passed += 1,
            "skipped" => o.skipped += 1,
            _ => {
                o.failed += 1;
                if !known.contains_key(&name) {
                    o.unexpected.push(format!("{name}  {why}"));
                }
            }
        }
    }
    eprintln!(
        "conformance[{}]: passed {}, failed {}, skipped {} in {:.0?} (artifacts in {})",
        kind.name,
        o.passed,
        o.failed,
        o.skipped,
        t0.elapsed(),
        out_dir.display()
    );
    o
}

#[test]
fn libiscsi_conformance_per_lun_kind() {
    require_tool("iscsi-test-cu");
    let known = read_list(&repo_root().join("conformance/known-failures.txt"));
    let floors = read_list(&repo_root().join("conformance/kinds-min-passed.txt"));
    let only: Option<Vec<String>> = std::env::var("FERRITE_CONFORMANCE_KINDS")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_string).collect());

    let mut problems = Vec::new();
    for kind in KINDS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|k| k == kind.name))
        {
            continue;
        }
        let o = run_kind(kind, &known);
        for u in &o.unexpected {
            problems.push(format!(
                "{}: FAILED, not in known-failures.txt: {u}",
                kind.name
            ));
        }
        if o.passed + o.failed + o.skipped == 0 {
            problems.push(format!("{}: the suite ran no test", kind.name));
        }
        if only.is_none() {
            let floor: usize = floors
                .get(kind.name)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no floor for {} in kinds-min-passed.txt", kind.name));
            if o.passed < floor {
                problems.push(format!(
                    "{}: only {} passed; kinds-min-passed.txt requires {floor}",
                    kind.name, o.passed
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
