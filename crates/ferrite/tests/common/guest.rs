//! The Linux kernel iSCSI initiator (open-iscsi, dm-multipath, sg3-utils, fio) in a QEMU guest,
//! for tests that need the real thing: the host has no iSCSI initiator in its kernel.
//!
//! The guest is a small Debian system built once by `tests/guest/build-image.sh` (cached under
//! `/var/cache/ferrite-guest`, keyed by that script's content; about a minute the first time,
//! instant after) and booted per test by `tests/guest/run-guest.sh` under TCG (about 12 s to the
//! script). Each run gets a fresh copy of the disk and a share directory under the test's
//! scratch space that the guest sees as `/share`: the test's script goes in, its output, exit
//! status, console log, markers and result files come out. The guest reaches the host's
//! `127.0.0.1:PORT` as `10.0.2.2:PORT` ([`HOST_FROM_GUEST`]), so a daemon started by
//! [`Daemon::start`](super::Daemon::start) on loopback is reachable as is.
//!
//! The scripts live under `crates/ferrite/tests/guest/` rather than a top-level `tests/`:
//! the only users are this crate's whole-system tests, which find them through
//! `CARGO_MANIFEST_DIR`.
//!
//! # The host side
//!
//! ```ignore
//! let mut g = Guest::start_with(SCRIPT, GuestOpts::default()
//!     .env("PORTAL", &format!("{HOST_FROM_GUEST}:{}", d.port))
//!     .multipath_conf(CONF)
//!     .unique_initiator());
//! let ll = g.wait_marker("two-paths", STEP);   // the text the script gave `mark`
//! admin_ok(&d, &["disable-group", IQN, "2"]);  // change the target while the guest waits
//! g.signal("flipped");                         // the script's `wait_for flipped` returns
//! let out = g.finish(STEP).success();          // panics with output and console unless 0
//! let paths = out.file("paths-2");              // what `save paths-2 ...` wrote
//! ```
//!
//! - [`Guest::start`] / [`Guest::start_with`] build the image if needed (a missing
//!   `qemu-system-x86_64` or a failed build fails the test naming the Debian package), write
//!   the share and boot QEMU in the background. [`GuestOpts`] sets environment variables for
//!   the script, `/etc/multipath.conf`, the InitiatorName (a fixed default, a given one, or a
//!   unique one per run), the hard time limit (600 s) and the memory (1 GiB).
//! - [`Guest::wait_marker`] waits for the script's `mark NAME [TEXT]` and returns TEXT;
//!   [`Guest::marker`] looks without waiting.
//! - [`Guest::signal`] / [`Guest::signal_with`] release the script's `wait_for NAME`.
//! - [`Guest::file`] reads a file the script saved in its working directory (`$OUT`), e.g.
//!   with `save NAME CMD...`; [`Guest::output`] is the script's output so far.
//! - [`Guest::finish`] waits for the guest to power off and returns a [`GuestOutcome`]
//!   (status, output, console; [`GuestOutcome::success`], [`GuestOutcome::file`]).
//! - Every failure (timeout, guest gone before a marker, non-zero status) panics with the
//!   script's output, the tail of the kernel console and the runner's log; the share directory
//!   is then kept and its path printed. Dropping a [`Guest`] stops QEMU (its process group
//!   gets SIGTERM, then SIGKILL); the runner's own hard timeout stops it even if the test
//!   process is killed.
//!
//! # The guest side
//!
//! The script runs as root under bash with `set -Eeuo pipefail` (a failing command ends it and
//! its line is printed), after udevd and iscsid are up and `iscsi_tcp`, `dm_multipath` (with
//! the round-robin, service-time and queue-length selectors), the `scsi_dh_*` device handlers
//! (alua included, loaded before any disk appears) and `sg` are loaded; multipathd is left to
//! the script. `tests/guest/lib.sh` gives it: `log`, `mark NAME [TEXT]`, `wait_for NAME [S]`,
//! `wait_until S CMD...`, `save NAME CMD...`, `iscsi_login IQN PORTAL`, `iscsi_logout IQN
//! PORTAL`, `session_disk IQN PORTAL`, `disk_portal DEV`, `start_multipathd`, `map_paths MAP`,
//! `map_active_paths MAP` and `active_group_paths MAP` (see that file). SendTargets answers the
//! target's own `127.0.0.1`, which the guest cannot use: `iscsi_login` makes the node record for
//! `10.0.2.2:PORT` itself.
//!
//! An ALUA test, for instance, marks a step after each `save ll-N multipath -ll`, `save
//! paths-N multipathd show paths format "%d %t %T %p"`, `save rtpg-N sg_rtpg -d DEV`, runs
//! fio in the background (`fio ... & pid=$!`), waits for the host's `signal("flipped")` after
//! a `ferrite admin` state change, and `wait "$pid"` at the end.
use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{require_tool, run, TempDir};

/// The host's `127.0.0.1` as the guest sees it (QEMU user networking).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// The guest's InitiatorName unless [`GuestOpts::initiator`] says otherwise.
pub const DEFAULT_INITIATOR: &str = "iqn.2026-11.io.ferrite.guest:default";

/// The hard limit on one boot-run-poweroff unless [`GuestOpts::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long building the image may take (about 70 s here; the builder also waits for another
/// process's build of the same cache).
const BUILD_LIMIT: Duration = Duration::from_secs(1800);

/// Where the guest scripts live.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest")
}

/// An InitiatorName no other run uses.
pub fn unique_initiator() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "iqn.2026-11.io.ferrite.guest:run-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// How to start a guest.
#[derive(Clone, Debug)]
pub struct GuestOpts {
    /// The InitiatorName; `None`: [`DEFAULT_INITIATOR`].
    pub initiator: Option<String>,
    /// Installed as `/etc/multipath.conf` before udevd starts; `None`: no such file (the
    /// script may write one itself before it starts multipathd).
    pub multipath_conf: Option<String>,
    /// Exported to the script.
    pub env: Vec<(String, String)>,
    /// Hard limit on the whole run, enforced by the runner (QEMU is stopped then).
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Run QEMU inside this network namespace (`ip netns exec`): the guest's user-mode network
    /// then reaches what that namespace reaches (`testkit::netns` hosts).
    pub netns: Option<String>,
}

impl Default for GuestOpts {
    fn default() -> Self {
        GuestOpts {
            initiator: None,
            multipath_conf: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            mem_mib: 1024,
            netns: None,
        }
    }
}

impl GuestOpts {
    /// Export `key=value` to the script.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "not a shell variable name: {key:?}"
        );
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn multipath_conf(mut self, conf: &str) -> Self {
        self.multipath_conf = Some(conf.into());
        self
    }
    pub fn initiator(mut self, name: &str) -> Self {
        self.initiator = Some(name.into());
        self
    }
    /// A fresh InitiatorName for this run ([`unique_initiator`]); [`Guest::initiator`] tells it.
    pub fn unique_initiator(self) -> Self {
        let name = unique_initiator();
        self.initiator(&name)
    }
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }
}

/// The image directory `build-image.sh` printed (built on first use, once per test process).
/// Panics, naming the package, when it cannot be built.
pub fn image() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let builder = scripts_dir().join("build-image.sh");
            let t0 = Instant::now();
            let out = run("bash", &[builder.to_str().unwrap()], BUILD_LIMIT);
            if !out.status.success() {
                return Err(format!(
                    "the guest image builder failed (it needs root, mmdebstrap and e2fsprogs: \
                     install Debian packages mmdebstrap and e2fsprogs; `.ci/run` does): {}",
                    out.describe()
                ));
            }
            let dir = PathBuf::from(out.stdout.trim());
            if t0.elapsed() > Duration::from_secs(5) {
                println!(
                    "guest: image built in {:.0?}: {}",
                    t0.elapsed(),
                    dir.display()
                );
            }
            Ok(dir)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A booted (or booting) guest running one script. Stopped on drop.
pub struct Guest {
    child: Child,
    /// `None` once kept for a post-mortem.
    share: Option<TempDir>,
    initiator: String,
    started: Instant,
}

impl Guest {
    /// Boot a guest running `script` with the default options.
    pub fn start(script: &str) -> Guest {
        Guest::start_with(script, GuestOpts::default())
    }

    /// Boot a guest running `script` (bash; see the module docs for what it finds).
    pub fn start_with(script: &str, opts: GuestOpts) -> Guest {
        require_tool("qemu-system-x86_64");
        let image = image();
        let share = TempDir::new("guest");
        let p = share.path();
        for d in ["markers", "signals", "out"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        fs::write(p.join("script.sh"), script).unwrap();
        let mut env = String::new();
        for (k, v) in &opts.env {
            // Single quotes keep everything literal; a quote is closed, escaped and reopened.
            writeln!(env, "export {k}='{}'", v.replace('\'', r"'\''")).unwrap();
        }
        fs::write(p.join("env.sh"), env).unwrap();
        let initiator = opts
            .initiator
            .clone()
            .unwrap_or_else(|| DEFAULT_INITIATOR.into());
        fs::write(p.join("initiator-name"), format!("{initiator}\n")).unwrap();
        if let Some(conf) = &opts.multipath_conf {
            fs::write(p.join("multipath.conf"), conf).unwrap();
        }
        let log = fs::File::create(p.join("runner.log")).unwrap();
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "bash"]);
                c
            }
            None => Command::new("bash"),
        };
        let child = cmd
            .arg(scripts_dir().join("run-guest.sh"))
            .arg(p)
            .env("FERRITE_GUEST_IMAGE", &image)
            .env(
                "FERRITE_GUEST_TIMEOUT",
                opts.timeout.as_secs().max(1).to_string(),
            )
            .env("FERRITE_GUEST_MEM", opts.mem_mib.to_string())
            // Its own process group: QEMU (kept in it by `timeout --foreground`) goes with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn run-guest.sh: {e}"));
        Guest {
            child,
            share: Some(share),
            initiator,
            started: Instant::now(),
        }
    }

    /// The share directory (the guest's `/share`).
    pub fn share(&self) -> &Path {
        self.share
            .as_ref()
            .expect("share kept after a failure")
            .path()
    }

    /// The guest's InitiatorName.
    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The text of the script's `mark NAME [TEXT]`, if it has got there.
    pub fn marker(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.share().join("markers").join(name)).ok()
    }

    /// Wait until the script has done `mark NAME [TEXT]`; TEXT. Panics with the guest's output
    /// and console if the guest ends first or `limit` passes.
    pub fn wait_marker(&mut self, name: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(text) = self.marker(name) {
                return text;
            }
            if !self.running() {
                // The marker may have been written just before the guest powered off.
                if let Some(text) = self.marker(name) {
                    return text;
                }
                self.fail(&format!(
                    "the guest ended before it reached marker `{name}`"
                ));
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no marker `{name}` from the guest after {limit:?}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Release the script's `wait_for NAME`.
    pub fn signal(&self, name: &str) {
        self.signal_with(name, "");
    }

    /// Release the script's `wait_for NAME`; `/share/signals/NAME` holds `text`.
    pub fn signal_with(&self, name: &str, text: &str) {
        let dir = self.share().join("signals");
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, dir.join(name)).unwrap();
    }

    /// The script's output so far.
    pub fn output(&self) -> String {
        read_lossy(&self.share().join("output.log"))
    }

    /// The guest's serial console so far (kernel messages, the init's steps).
    pub fn console(&self) -> String {
        read_lossy(&self.share().join("console.log"))
    }

    /// A file the script wrote into its working directory (`$OUT/NAME`). Panics with the
    /// guest's output if there is none.
    pub fn file(&self, name: &str) -> String {
        match fs::read(self.share().join("out").join(name)) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => self.fail(&format!("no result file `{name}` from the guest: {e}")),
        }
    }

    /// Wait (at most `limit`) for the guest to power off.
    pub fn finish(mut self, limit: Duration) -> GuestOutcome {
        let deadline = Instant::now() + limit;
        while self.running() {
            if Instant::now() > deadline {
                self.fail(&format!("the guest was still running after {limit:?}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
        let share = self.share.take().expect("share");
        let status = fs::read_to_string(share.path().join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let elapsed = self.started.elapsed();
        println!("guest: booted, ran its script and powered off in {elapsed:.1?}");
        GuestOutcome {
            status,
            output: read_lossy(&share.path().join("output.log")),
            console: read_lossy(&share.path().join("console.log")),
            runner: read_lossy(&share.path().join("runner.log")),
            elapsed,
            share: Some(share),
        }
    }

    /// The script's output, the console's tail and the runner's log, for a failure message.
    pub fn describe(&self) -> String {
        let p = self.share();
        describe(
            read_lossy(&p.join("status")).trim(),
            &read_lossy(&p.join("output.log")),
            &read_lossy(&p.join("console.log")),
            &read_lossy(&p.join("runner.log")),
            p,
        )
    }

    /// Stop the guest and panic with `what` and everything it said.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "guest: {what} ({:.0?} after start)\n{}",
            self.started.elapsed(),
            self.describe()
        );
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        let pgid = self.child.id();
        kill_group("TERM", pgid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        kill_group("KILL", pgid);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
        keep_on_panic(&mut self.share);
    }
}

/// How a guest run ended.
pub struct GuestOutcome {
    /// The script's exit status; `None` if it never finished (timeout, crash).
    pub status: Option<i32>,
    /// The script's stdout and stderr.
    pub output: String,
    /// The serial console: kernel messages and the init's steps.
    pub console: String,
    /// What run-guest.sh said (and QEMU, when the guest ended without a status).
    pub runner: String,
    /// From start to power-off, boot included.
    pub elapsed: Duration,
    share: Option<TempDir>,
}

impl GuestOutcome {
    /// Panics with everything the guest said unless the script exited 0.
    pub fn success(self) -> GuestOutcome {
        if self.status != Some(0) {
            panic!(
                "guest: the script ended with status {:?}\n{}",
                self.status,
                self.describe()
            );
        }
        self
    }

    /// A file the script wrote into its working directory (`$OUT/NAME`).
    /// The rounds of verified writes the guest's fio ran (`fio-rounds`, `fio-N.json`, each
    /// `bytes` of random writes read back and checked): every round without error, all of its
    /// writes verified. Returns each round's job (fio JSON) for figures.
    pub fn verified_fio_rounds(&self, bytes: u64) -> Vec<serde_json::Value> {
        let rounds: u32 = self.file("fio-rounds").trim().parse().unwrap();
        assert!(rounds >= 1, "no fio round finished");
        (1..=rounds)
            .map(|r| {
                let text = self.file(&format!("fio-{r}.json"));
                let v: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("fio-{r}.json is not fio JSON ({e}):\n{text}"));
                let job = v["jobs"][0].clone();
                assert_eq!(job["error"], 0, "fio round {r}: {text}");
                assert_eq!(job["write"]["io_bytes"], bytes, "fio round {r}");
                assert!(
                    job["read"]["io_bytes"].as_u64().unwrap_or(0) >= bytes,
                    "fio round {r}: not every write was read back"
                );
                job
            })
            .collect()
    }

    pub fn file(&self, name: &str) -> String {
        let p = self.share.as_ref().expect("share").path();
        match fs::read(p.join("out").join(name)) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => panic!("guest: no result file `{name}`: {e}\n{}", self.describe()),
        }
    }

    pub fn describe(&self) -> String {
        let status = self.status.map(|s| s.to_string()).unwrap_or_default();
        let p = self.share.as_ref().map(|s| s.path().to_path_buf());
        describe(
            &status,
            &self.output,
            &self.console,
            &self.runner,
            p.as_deref().unwrap_or(Path::new("?")),
        )
    }
}

impl Drop for GuestOutcome {
    fn drop(&mut self) {
        keep_on_panic(&mut self.share);
    }
}

/// A failing test keeps the guest's share directory (console, output, result files).
fn keep_on_panic(share: &mut Option<TempDir>) {
    if thread::panicking() {
        if let Some(s) = share.take() {
            eprintln!("guest: share directory kept: {}", s.path().display());
            std::mem::forget(s);
        }
    }
}

fn describe(status: &str, output: &str, console: &str, runner: &str, share: &Path) -> String {
    format!(
        "---- guest script status: {}\n---- guest script output (last 150 lines)\n{}\n\
         ---- guest console (last 40 lines)\n{}\n---- run-guest.sh\n{}\n---- share: {}",
        if status.is_empty() { "none" } else { status },
        tail(output, 150),
        tail(console, 40),
        tail(runner, 40),
        share.display()
    )
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `kill -SIG -- -PGID`: the runner, `timeout` and QEMU together.
fn kill_group(sig: &str, pgid: u32) {
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("kill");
    let _ = Command::new(kill)
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
