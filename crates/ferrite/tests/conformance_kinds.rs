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
//! A fifth, `encrypted`, runs every test the full run does on a thin file LUN that encrypts
//! its blocks (`encryption = { key_file }`): the only kind that offers SANITIZE CRYPTO ERASE
//! (SBC-4 §4.11.4), so `Sanitize.CryptoErase`, and the CRYPTO ERASE halves of
//! `Sanitize.Readonly` and `Sanitize.Reservations`, pass there; and encryption must change
//! nothing else.
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
    /// `[[target.lun]]` body; `{dir}` is the daemon's scratch directory, `{key}` a key file
    /// (32 random bytes, mode 0600) made for the run.
    lun: &'static str,
    /// iscsi-test-cu `-t` patterns (fnmatch, comma separated).
    tests: &'static str,
    /// Tests that must pass on this kind (skipped is not enough).
    must_pass: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind {
        name: "thick",
        lun: "backstore = \"ram:128M\"\nthin = false",
        tests: "ALL.CompareAndWrite.*,ALL.ExtendedCopy.*,ALL.ReceiveCopyResults.*,\
                ALL.GetLBAStatus.*,ALL.Inquiry.*,ALL.OrWrite.*,ALL.ReadCapacity16.*,\
                ALL.Sanitize.[!R]*,ALL.Unmap.*,ALL.WriteAtomic16.*,ALL.WriteSame10.*,\
                ALL.WriteSame16.*,ALL.Write10.*,ALL.Read10.*,ALL.MultipathIO.*",
        must_pass: &[],
    },
    Kind {
        name: "read-only",
        lun: "backstore = \"file:{dir}/ro.img:64M\"\nread_only = true",
        tests: "ALL.ReadOnly.*,ALL.Read6.*,ALL.Read10.*,ALL.Read12.*,ALL.Read16.*,\
                ALL.ReadCapacity10.*,ALL.ReadCapacity16.*,ALL.ReadDefectData10.*,\
                ALL.ReadDefectData12.*,ALL.Inquiry.*,ALL.Mandatory.*,ALL.ModeSense6.*,\
                ALL.Prefetch10.*,ALL.Prefetch16.*,ALL.ReportSupportedOpcodes.*,\
                ALL.TestUnitReady.*,ALL.Verify10.*,ALL.Verify12.*,ALL.Verify16.*",
        must_pass: &[],
    },
    Kind {
        name: "removable",
        lun: "backstore = \"ram:128M\"\nremovable = true\nphysical_block_size = 4096",
        tests: "ALL.PreventAllow.*,ALL.StartStopUnit.*,ALL.NoMedia.*,ALL.CompareAndWrite.*,\
                ALL.WriteSame10.*,ALL.WriteSame16.*,ALL.Unmap.*,ALL.ReadCapacity16.*",
        must_pass: &[],
    },
    Kind {
        // SBC-4 §4.11.2: a sanitize outlives ABORT TASK, resets and a re-login. The test expects
        // it still running some 4 s after it began; at 16 MiB/s the 128 MiB overwrite takes 8 s.
        // Its own LUN and sessions, since in the full run the test before it leaves a RESERVE(6)
        // behind (see conformance.rs).
        name: "sanitize-reset",
        lun: "backstore = \"file:{dir}/sanitize.img:128M\"\nsanitize_rate = \"16M\"",
        tests: "ALL.Sanitize.Reset",
        must_pass: &[],
    },
    Kind {
        name: "encrypted",
        lun: "backstore = \"file:{dir}/encrypted.img:128M\"\nencryption = { key_file = \"{key}\" }",
        // Family ALL but Sanitize.Reset, as conformance.rs runs it.
        tests: "ALL.[!S]*,ALL.S[!a]*,ALL.Sanitize.[!R]*,ALL.Sanitize.Rea*,ALL.Sanitize.Reser*",
        must_pass: &[
            "Sanitize.CryptoErase",
            "Sanitize.Readonly",
            "Sanitize.Reservations",
        ],
    },
];

struct Outcome {
    passed: usize,
    failed: usize,
    skipped: usize,
    unexpected: Vec<String>,
    /// `must_pass` tests that did not pass, with their status.
    missing: Vec<String>,
}

fn run_kind(kind: &Kind, known: &BTreeMap<String, String>) -> Outcome {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("conformance-kinds")
        .join(kind.name);
    fs::create_dir_all(&out_dir).unwrap();
    let suite_log = out_dir.join("iscsi-test-cu.log");
    let key = out_dir.join("lun.key");
    let _ = fs::remove_file(&key);
    let mut random = [0u8; 32];
    common::Rng::new(u64::from(std::process::id())).fill(&mut random);
    fs::write(&key, random).unwrap();
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = format!(
        "[settings]\nnop_interval_secs = 0\n\n[[target]]\nname = \"{}\"\n\n\
         [[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:{{port}}\", \"{}:{{port2}}\"]\n\n\
         [[target.lun]]\nid = 0\n{}\n",
        common::IQN,
        common::SECOND_IP,
        kind.lun.replace("{key}", &key.display().to_string())
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
        missing: kind
            .must_pass
            .iter()
            .map(|t| format!("{t} (not run)"))
            .collect(),
    };
    for v in scored {
        let (name, why) = (v.name, v.why);
        if kind.must_pass.contains(&name.as_str()) {
            o.missing.retain(|m| !m.starts_with(&format!("{name} ")));
            if v.status != "passed" {
                o.missing.push(format!("{name} ({}: {why})", v.status));
            }
        }
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
        for m in &o.missing {
            problems.push(format!("{}: must pass: {m}", kind.name));
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
