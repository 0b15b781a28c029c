//! libiscsi's conformance suite (`iscsi-test-cu`, Debian package libiscsi-bin), run and scored
//! by the repository itself, and the lists the results are held to.
//!
//! Scoring: CUnit's own verdict (`passed` / `FAILED` after a test's name) decides, except that
//! a test which printed `[SKIPPED]` before its verdict did not really run (the target lacks
//! what it needs) and counts as skipped, which CUnit counts as passed. A test with no verdict
//! (the suite crashed or was stopped) failed. A `[FAILED]` line printed after the verdict comes
//! from the next test's setup or this one's teardown and changes nothing.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `name value…` list file with `#` comments (known failures: `Suite.Test  reason`; floors:
/// `kind passed`).
pub fn read_list(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((name, rest)) => (name.to_string(), rest.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// One scored test: `status` is `passed`, `skipped` or `failed`; `name` is `Suite.Test`; `why`
/// the first `[SKIPPED]` / last `[FAILED]` message before the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub name: String,
    pub why: String,
}

/// Score the verbose output of `iscsi-test-cu` (see the module docs).
pub fn classify(log: &str) -> Vec<Verdict> {
    struct Open {
        name: String,
        why: String,
        skipped: bool,
        status: Option<&'static str>,
    }
    let mut suite = String::new();
    let mut all: Vec<Open> = Vec::new();
    for line in log.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim().to_string();
            continue;
        }
        let mut rest = line;
        if let Some(t) = line.trim_start().strip_prefix("Test: ") {
            if let Some((name, after)) = t.split_once(" ...") {
                all.push(Open {
                    name: format!("{suite}.{}", name.trim()),
                    why: String::new(),
                    skipped: false,
                    status: None,
                });
                rest = after;
            }
        }
        let Some(cur) = all.last_mut().filter(|c| c.status.is_none()) else {
            continue;
        };
        let word = rest.trim_start();
        if word.starts_with("passed") {
            cur.status = Some(if cur.skipped { "skipped" } else { "passed" });
        } else if word.starts_with("FAILED") {
            cur.status = Some("failed");
        } else if rest.contains("[FAILED]") {
            // A failure after a skip notice: the test did run into trouble.
            cur.why = rest.trim().to_string();
            cur.skipped = false;
        } else if rest.contains("[SKIPPED]") && cur.why.is_empty() {
            cur.why = rest.trim().to_string();
            cur.skipped = true;
        }
    }
    all.into_iter()
        .map(|o| Verdict {
            status: o.status.unwrap_or("failed"),
            why: match o.status {
                None if o.why.is_empty() => "no verdict (crash or hang?)".to_string(),
                _ => o.why.split_whitespace().collect::<Vec<_>>().join(" "),
            },
            name: o.name,
        })
        .collect()
}

/// Run `iscsi-test-cu` (every test matching `tests`, destructive and SANITIZE ones allowed)
/// against `urls` (a scratch LUN, and the same LUN through a second path for the multipath
/// tests), stopping it after `limit`; its output goes to `log`. The scored tests.
pub fn run_suite(tests: &str, urls: &[&str], limit: Duration, log: &Path) -> Vec<Verdict> {
    let mut cmd = Command::new("iscsi-test-cu");
    cmd.args(["-d", "-S", "-v", "-t", tests])
        .args(urls)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn iscsi-test-cu: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err.join().unwrap_or_default()));
    if timed_out {
        text.push_str(&format!(
            "\n[FAILED] iscsi-test-cu stopped after {limit:?}\n"
        ));
    }
    let _ = fs::write(log, &text);
    classify(&text)
}
