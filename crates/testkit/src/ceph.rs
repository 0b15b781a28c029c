//! A throw-away single-node Ceph cluster for tests (Debian `ceph-mon`, `ceph-osd`,
//! `ceph-common`; `.ci/run` installs them): one monitor and one OSD that keeps its objects in
//! memory (`memstore`), cephx keys made with `ceph-authtool`, a pool `rbd` of size 1, every file
//! in a scratch directory (nothing in `/etc/ceph`), on free loopback ports. Up in about 2 s;
//! killed and removed on drop.
//!
//! Without the Ceph binaries [`Ceph::start`] returns `None` after printing why, so that a
//! developer's `cargo test` passes on a machine without Ceph; under CI (`CI` set in the
//! environment, to anything but empty, `false` or `0`) missing binaries are a failure instead, so the tests cannot silently stop
//! running there.
//!
//! Keep images small: a MemStore OSD holds about 2.7 times the bytes written in memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::free_port;

const TOOLS: &[&str] = &[
    "ceph-mon",
    "ceph-osd",
    "ceph",
    "ceph-authtool",
    "monmaptool",
    "rbd",
];

/// One monitor and one MemStore OSD.
pub struct Ceph {
    children: Vec<Child>,
    pub dir: PathBuf,
    /// `[v2:127.0.0.1:P,v1:127.0.0.1:P+1]`.
    pub mon_host: String,
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Ceph tools that are missing (empty: all there).
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS.iter().copied().filter(|t| !have(t)).collect()
}

/// Whether Ceph tests can run here; prints why not, and panics instead under CI.
pub fn available() -> bool {
    let missing = missing_tools();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "Ceph is not installed ({} missing): install the Debian packages ceph-mon ceph-osd \
         ceph-common (.ci/run does)",
        missing.join(", ")
    );
    assert!(!crate::in_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Ceph {
    /// Start a cluster, or `None` (after a printed message) where Ceph is not installed and
    /// this is not CI.
    pub fn start() -> Option<Ceph> {
        if !available() {
            return None;
        }
        let t0 = Instant::now();
        let port = loop {
            let p = free_port();
            // msgr1 listens on the next port.
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let dir = std::env::temp_dir().join(format!("ferrite-ceph-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["run", "log", "mon/a", "osd/0"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let mon_host = format!("[v2:127.0.0.1:{port},v1:127.0.0.1:{}]", port + 1);
        let mut ceph = Ceph {
            children: Vec::new(),
            dir,
            mon_host,
        };
        ceph.bootstrap();
        eprintln!(
            "ceph: mon and osd up, pool rbd ready in {:.1?} ({})",
            t0.elapsed(),
            ceph.dir.display()
        );
        Some(ceph)
    }

    fn bootstrap(&mut self) {
        let d = self.dir.clone();
        let fsid = uuid();
        let conf = format!(
            "[global]\n\
             fsid = {fsid}\n\
             mon host = {mh}\n\
             public addr = 127.0.0.1\n\
             cluster addr = 127.0.0.1\n\
             ms bind ipv6 = false\n\
             auth cluster required = cephx\n\
             auth service required = cephx\n\
             auth client required = cephx\n\
             keyring = {d}/keyring\n\
             run dir = {d}/run\n\
             admin socket = {d}/run/$name.asok\n\
             pid file = {d}/run/$name.pid\n\
             log file = {d}/log/$name.log\n\
             osd pool default size = 1\n\
             osd pool default min size = 1\n\
             mon allow pool size one = true\n\
             osd crush chooseleaf type = 0\n\
             osd pool default pg autoscale mode = off\n\
             mon warn on pool no redundancy = false\n\
             mon warn on insecure global id reclaim allowed = false\n\
             mon data avail warn = 2\n\
             mon data avail crit = 1\n\
             [mon]\n\
             mon data = {d}/mon/$id\n\
             mon allow pool delete = true\n\
             paxos propose interval = 0.05\n\
             paxos min wait = 0.01\n\
             [osd]\n\
             osd data = {d}/osd/$id\n\
             keyring = {d}/osd/$id/keyring\n\
             osd objectstore = memstore\n\
             memstore device bytes = {bytes}\n\
             osd class dir = /usr/lib/x86_64-linux-gnu/rados-classes\n",
            mh = self.mon_host,
            d = d.display(),
            bytes = 3u64 << 30,
        );
        std::fs::write(d.join("ceph.conf"), conf).unwrap();
        let authtool = |args: &[&str]| {
            run(Command::new("ceph-authtool").args(args), "ceph-authtool");
        };
        let p = |f: &str| d.join(f).display().to_string();
        authtool(&[
            &p("mon.keyring"),
            "--create-keyring",
            "--gen-key",
            "-n",
            "mon.",
            "--cap",
            "mon",
            "allow *",
        ]);
        authtool(&[
            &p("keyring"),
            "--create-keyring",
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ]);
        authtool(&[&p("mon.keyring"), "--import-keyring", &p("keyring")]);
        let mon_addr = self.mon_host.clone();
        run(
            Command::new("monmaptool").args([
                "--create",
                "--fsid",
                &fsid,
                "--addv",
                "a",
                &mon_addr,
                &p("monmap"),
            ]),
            "monmaptool",
        );
        let conf = p("ceph.conf");
        run(
            Command::new("ceph-mon").args([
                "-c",
                &conf,
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &p("monmap"),
                "--keyring",
                &p("mon.keyring"),
            ]),
            "ceph-mon --mkfs",
        );
        self.spawn("ceph-mon", &["-c", &conf, "-i", "a", "-f"], "mon.a.out");
        self.wait_for("the monitor", || self.ceph(&["mon", "stat"]).is_ok());

        let osd_uuid = uuid();
        let osd_keyring = p("osd/0/keyring");
        authtool(&[&osd_keyring, "--create-keyring", "--gen-key", "-n", "osd.0"]);
        let secret = run(
            Command::new("ceph-authtool").args([&osd_keyring, "-p", "-n", "osd.0"]),
            "ceph-authtool -p",
        );
        std::fs::write(
            d.join("osd-secret.json"),
            format!("{{\"cephx_secret\": \"{}\"}}", secret.trim()),
        )
        .unwrap();
        let id = self
            .ceph(&["osd", "new", &osd_uuid, "-i", &p("osd-secret.json")])
            .unwrap_or_else(|e| panic!("ceph osd new: {e}"));
        assert_eq!(id.trim(), "0", "unexpected OSD id");
        run(
            Command::new("ceph-osd").args([
                "-c",
                &conf,
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                &osd_uuid,
                "--keyring",
                &osd_keyring,
            ]),
            "ceph-osd --mkfs",
        );
        self.spawn("ceph-osd", &["-c", &conf, "-i", "0", "-f"], "osd.0.out");
        self.wait_for("osd.0 to come up", || {
            self.ceph(&["osd", "dump"])
                .is_ok_and(|o| o.lines().any(|l| l.starts_with("osd.0 up")))
        });
        self.ceph(&["osd", "pool", "create", "rbd", "8", "8"])
            .unwrap();
        self.ceph(&["osd", "pool", "application", "enable", "rbd", "rbd"])
            .unwrap();
        self.rbd(&["pool", "init", "rbd"]).unwrap();
    }

    fn spawn(&mut self, prog: &str, args: &[&str], log: &str) {
        let out = std::fs::File::create(self.dir.join("log").join(log)).unwrap();
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
        self.children.push(child);
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; logs in {}",
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster's configuration file (it names the admin keyring): what `CEPH_CONF` or a
    /// LUN's `conf` setting points at.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// The `client.admin` keyring.
    pub fn keyring(&self) -> PathBuf {
        self.dir.join("keyring")
    }

    fn tool(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(prog)
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{prog}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{prog} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Run `ceph -c CONF ARGS...` (20 s connect timeout); its standard output.
    pub fn ceph(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["--connect-timeout", "20"];
        a.extend_from_slice(args);
        self.tool("ceph", &a)
    }

    /// Run `rbd -c CONF ARGS...`; its standard output.
    pub fn rbd(&self, args: &[&str]) -> Result<String, String> {
        self.tool("rbd", args)
    }

    /// Create `rbd/NAME` of `bytes` with only the layering feature (no exclusive lock, so two
    /// nodes can write at once) and objects of 2^`order` bytes (22: 4 MiB, the default).
    pub fn create_image(&self, name: &str, bytes: u64, order: u8) {
        let size = format!("{bytes}B");
        let order = order.to_string();
        self.rbd(&[
            "create",
            "--size",
            &size,
            "--image-feature",
            "layering",
            "--order",
            &order,
            &format!("rbd/{name}"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stop (SIGSTOP) or resume (SIGCONT) the OSD: a disk server that stops answering, as its
    /// clients see it.
    pub fn pause_osd(&self, paused: bool) {
        let sig = if paused { "-STOP" } else { "-CONT" };
        // The monitor was started first, the OSD second.
        let pid = self.children[1].id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    /// The logs of the monitor and the OSD so far (for failure messages).
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

impl Drop for Ceph {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
