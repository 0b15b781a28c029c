//! Shared harness for the whole-system tests: start the built `ferrite` binary on a free loopback
//! port with its own scratch directory, wait until it accepts connections, run external initiators
//! (libiscsi's tools, qemu-img, the conformance script) with a timeout, and stop the daemon when the
//! test ends. A missing external tool fails the test with a message naming the Debian package;
//! `.ci/run` installs them.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod conformance;
pub mod guest;
pub mod pr;
pub mod sbc;
pub mod tpg;

/// The raw TCP test initiator (`Session`, `LoginOpts`, PDU helpers) lives in the `testkit` crate;
/// the tests name it `common::initiator`.
pub use testkit::initiator;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The daemons' target name; `initiator::LoginOpts::default()` logs in to the same one
/// (`testkit::initiator::TARGET`).
pub const IQN: &str = "iqn.2026-11.io.ferrite:itest";

/// A scratch directory under cargo's per-target temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A port on `ip` that nothing listens on right now (the kernel's pick for port 0).
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    l.local_addr().unwrap().port()
}

/// How to start one daemon. In `luns` and `config`, `{dir}` stands for the daemon's scratch
/// directory, `{port}` for the first portal's port, `{port2}` for the second portal's and
/// `{xportN}` for the port picked on `extra_portals[N]`.
#[derive(Clone, Debug)]
pub struct Opts {
    pub luns: Vec<String>,
    pub block_size: u32,
    /// Also listen on 127.0.0.2:{port2} (same target, same portal group).
    pub second_portal: bool,
    /// A whole TOML config instead of the quick flags.
    pub config: Option<String>,
    pub log_filter: String,
    /// Loopback addresses (e.g. `127.0.0.3`, `::1`) on which a free port is picked for each, as
    /// `{xport0}`, `{xport1}`, ... in `config`. The config must make every one of them a portal:
    /// the daemon counts as started once all of them accept connections.
    pub extra_portals: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            luns: vec!["ram:64M".into()],
            block_size: 512,
            second_portal: false,
            config: None,
            log_filter: "info".into(),
            extra_portals: Vec::new(),
        }
    }
}

pub const SECOND_IP: &str = "127.0.0.2";

/// A running `ferrite serve`, killed on drop. Its stderr goes to `<dir>/ferrite.log`, which is
/// printed when the test panics (or always, with `FERRITE_TEST_SHOW_LOG=1`).
pub struct Daemon {
    child: Child,
    pub port: u16,
    pub port2: u16,
    /// The ports picked for `Opts::extra_portals`, in order.
    pub extra_ports: Vec<u16>,
    /// The addresses `wait_ready` checks.
    extra_addrs: Vec<SocketAddr>,
    pub dir: TempDir,
    log: PathBuf,
    /// `serve` and the options every (re)start of this daemon shares (log filter, admin socket).
    base_args: Vec<OsString>,
}

impl Daemon {
    pub fn start(opts: Opts) -> Daemon {
        // The kernel's free port can be taken again before the daemon binds it: retry then.
        let mut attempt = 0;
        loop {
            let dir = TempDir::new("ferrite");
            let port = free_port("127.0.0.1");
            let port2 = if opts.second_portal {
                free_port(SECOND_IP)
            } else {
                0
            };
            let extra_ports: Vec<u16> = opts.extra_portals.iter().map(|ip| free_port(ip)).collect();
            let extra_addrs: Vec<SocketAddr> = opts
                .extra_portals
                .iter()
                .zip(&extra_ports)
                .map(|(ip, &p)| SocketAddr::new(ip.parse().expect("extra portal IP"), p))
                .collect();
            let subst = |s: &str| {
                let mut s = s
                    .replace("{dir}", &dir.path().display().to_string())
                    .replace("{port2}", &port2.to_string())
                    .replace("{port}", &port.to_string());
                for (i, p) in extra_ports.iter().enumerate() {
                    s = s.replace(&format!("{{xport{i}}}"), &p.to_string());
                }
                s
            };
            let log = dir.path().join("ferrite.log");
            // The admin API on a socket of this daemon's own (not the system-wide default).
            let base_args: Vec<OsString> = vec![
                "serve".into(),
                "--log".into(),
                opts.log_filter.clone().into(),
                "--admin-socket".into(),
                dir.path().join("admin.sock").into(),
            ];
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
            cmd.args(&base_args);
            // Default state directory (reservation files, sanitize journals of file LUNs) in
            // this daemon's own scratch space, not the user's: no test sees another's state.
            cmd.env("XDG_STATE_HOME", dir.path().join("state"));
            if let Some(cfg) = &opts.config {
                let p = dir.path().join("ferrite.toml");
                fs::write(&p, subst(cfg)).unwrap();
                cmd.arg("--config").arg(p);
            } else {
                cmd.args(["--target", IQN, "--portal", &format!("127.0.0.1:{port}")]);
                if opts.second_portal {
                    cmd.args(["--portal", &format!("{SECOND_IP}:{port2}")]);
                }
                for l in &opts.luns {
                    cmd.args(["--lun", &subst(l)]);
                }
                cmd.args(["--block-size", &opts.block_size.to_string()]);
            }
            let logf = fs::File::create(&log).unwrap();
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_ferrite")));
            let mut d = Daemon {
                child,
                port,
                port2,
                extra_ports,
                extra_addrs,
                dir,
                log,
                base_args,
            };
            match d.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return d,
                Err(text) if text.contains("in use") && attempt < 4 => {
                    eprintln!("ferrite: port clash, retrying:\n{text}");
                    attempt += 1;
                }
                Err(text) => panic!("ferrite did not come up:\n{text}"),
            }
        }
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut addrs: Vec<SocketAddr> = vec![format!("127.0.0.1:{}", self.port).parse().unwrap()];
        if self.port2 != 0 {
            addrs.push(format!("{SECOND_IP}:{}", self.port2).parse().unwrap());
        }
        addrs.extend(self.extra_addrs.iter().copied());
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "ferrite exited early ({st}); log:\n{}",
                    self.log_text()
                ));
            }
            if addrs
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
            {
                // Someone accepts; make sure it is our daemon and not another process that held
                // the port while ours failed to bind it.
                thread::sleep(Duration::from_millis(100));
                if let Ok(Some(st)) = self.child.try_wait() {
                    return Err(format!(
                        "ferrite exited early ({st}); log:\n{}",
                        self.log_text()
                    ));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ferrite not listening after {limit:?}; log:\n{}",
                    self.log_text()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident set size in bytes (VmRSS of /proc/PID/status).
    pub fn rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = field(&status, "VmRSS:")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        self.portal().parse().unwrap()
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`
    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/{lun}", self.port)
    }

    /// The same LUN through the second portal.
    pub fn url2(&self, lun: u32) -> String {
        assert!(self.port2 != 0, "daemon started without a second portal");
        format!("iscsi://{SECOND_IP}:{}/{IQN}/{lun}", self.port2)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("ferrite died ({st}); log:\n{}", self.log_text());
        }
    }

    /// The admin API socket (`ferrite admin --socket PATH`).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The configuration file the daemon was started from, when it was started with `config`
    /// (the admin API saves changes back into it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ferrite.toml")
    }

    /// Stop the daemon (SIGTERM) and start it again from the configuration file `config`, with
    /// the same scratch directory, admin socket and ports (the file must use them). Its log
    /// goes on in the same file.
    pub fn restart(&mut self, config: &Path) {
        self.stop();
        let logf = fs::OpenOptions::new().append(true).open(&self.log).unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(&self.base_args)
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_ferrite")));
        if let Err(text) = self.wait_ready(Duration::from_secs(60)) {
            panic!("ferrite did not come up again:\n{text}");
        }
    }

    /// SIGTERM, then SIGKILL if it lingers; waits for the process.
    fn stop(&mut self) {
        let alive = matches!(self.child.try_wait(), Ok(None));
        if alive {
            // SIGTERM first so the daemon flushes; SIGKILL if it lingers.
            sigterm(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() || std::env::var_os("FERRITE_TEST_SHOW_LOG").is_some() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(200);
            eprintln!(
                "---- ferrite log ({}), last {} lines ----",
                self.log.display(),
                lines.len() - from
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
            eprintln!("---- end of ferrite log ----");
        }
    }
}

/// Send SIGTERM without a libc dependency: `kill -TERM PID` (SIGKILL follows if this fails).
fn sigterm(pid: u32) {
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("kill");
    let _ = Command::new(kill)
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The Debian package that brings `tool`.
fn package_of(tool: &str) -> &'static str {
    match tool {
        t if t.starts_with("iscsi-") => "libiscsi-bin",
        "qemu-img" => "qemu-utils (and qemu-block-extra from bookworm-backports for iscsi://)",
        "python3" => "python3",
        "systemd-analyze" => "systemd",
        "dpkg" | "dpkg-deb" => "dpkg",
        "gzip" => "gzip",
        "qemu-system-x86_64" => {
            "qemu-system-x86 from bookworm-backports (the suite qemu-utils came from; the plain \
             suite's conflicts with it)"
        }
        _ => "?",
    }
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Fail the test unless `tool` is on PATH.
pub fn require_tool(tool: &str) {
    if !in_path(tool) {
        panic!(
            "required external tool `{tool}` not found on PATH: install Debian package {} \
             (`.ci/run` installs every prerequisite)",
            package_of(tool)
        );
    }
}

/// Fail the test unless qemu-img is present and its iscsi:// driver loads.
pub fn require_qemu_iscsi() {
    require_tool("qemu-img");
    // `qemu-img --help` lists iscsi even without the module, so ask the driver: against a closed
    // loopback port it fails to connect when loaded, and says "Unknown driver" when not.
    let out = Command::new("qemu-img")
        .args([
            "info",
            "--image-opts",
            "driver=iscsi,transport=tcp,portal=127.0.0.1:1,target=iqn.2026-11.io.ferrite:probe,lun=0",
        ])
        .output()
        .expect("run qemu-img info");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if [
        "Unknown driver",
        "Unable to load module",
        "Unknown protocol",
    ]
    .iter()
    .any(|m| text.contains(m))
    {
        panic!(
            "qemu-img has no iscsi driver: install Debian package qemu-block-extra from bookworm-backports \
             (the suite qemu-utils came from; `.ci/run` does this). qemu-img said: {}",
            text.trim()
        );
    }
}

/// What a finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl Output {
    /// Panics with the whole output unless the command exited 0.
    pub fn ok(self) -> Output {
        if !self.status.success() {
            panic!(
                "`{}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                self.cmdline, self.status, self.stdout, self.stderr
            );
        }
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "`{}` ({}):\n--- stdout\n{}\n--- stderr\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// Run `prog args…` to completion, killing it after `limit`. The tool must exist.
pub fn run(prog: &str, args: &[&str], limit: Duration) -> Output {
    require_tool(prog);
    let cmdline = std::iter::once(prog)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{cmdline}`: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let te = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&to.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&te.join().unwrap_or_default()).into_owned();
            panic!("`{cmdline}` still running after {limit:?}, killed:\n--- stdout\n{out}\n--- stderr\n{err}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: String::from_utf8_lossy(&to.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&te.join().unwrap_or_default()).into_owned(),
        cmdline,
    }
}

/// The value after `key` on the first line of `text` that starts with it (e.g. `Vendor:`).
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .map(str::trim)
}

/// A small deterministic PRNG (xorshift64*) for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The start of a clustered node's configuration: no NOP-Ins (the tests' initiators do not
/// answer them), and `[cluster]` with `node`, one etcd endpoint (loopback: no TLS) and the
/// lease. The target sections follow.
#[allow(dead_code)]
pub fn cluster_head(endpoint: &str, node: &str, lease_secs: u64) -> String {
    format!(
        "[settings]\nnop_interval_secs = 0\n[cluster]\nnode = \"{node}\"\n\
         endpoints = [\"{endpoint}\"]\nlease_secs = {lease_secs}\n"
    )
}
