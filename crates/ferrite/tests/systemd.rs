//! Running under systemd: the unit file passes `systemd-analyze verify`, alone and with the
//! floating-portals drop-in; the daemon tells the service manager READY=1 only once its portals
//! listen and STOPPING=1 when it stops (a fake `$NOTIFY_SOCKET`); SIGHUP re-reads the
//! configuration file and applies it live.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, Session};
use common::{free_port, require_tool, run, TempDir, IQN};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn the_unit_file_verifies() {
    require_tool("systemd-analyze");
    let dir = TempDir::new("unit");
    let unit =
        std::fs::read_to_string(common::conformance::repo_root().join("ops/ferrite.service"))
            .unwrap()
            .replace("/usr/bin/ferrite", env!("CARGO_BIN_EXE_ferrite"));
    let path = dir.path().join("ferrite.service");
    std::fs::write(&path, unit).unwrap();
    let out = run(
        "systemd-analyze",
        &["verify", path.to_str().unwrap()],
        LIMIT,
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stderr.trim().is_empty(), "{}", out.describe());
}

/// `ops/floating-portals.conf` as a drop-in of the unit: systemd reads it (a key it does not
/// know, added on purpose, is reported from that file) and finds nothing wrong with the real one.
#[test]
fn the_floating_portals_drop_in_verifies_with_the_unit() {
    require_tool("systemd-analyze");
    let root = common::conformance::repo_root();
    let dir = TempDir::new("drop-in");
    let unit = std::fs::read_to_string(root.join("ops/ferrite.service"))
        .unwrap()
        .replace("/usr/bin/ferrite", env!("CARGO_BIN_EXE_ferrite"));
    std::fs::write(dir.path().join("ferrite.service"), unit).unwrap();
    let drop_in = std::fs::read_to_string(root.join("ops/floating-portals.conf")).unwrap();
    assert!(drop_in.contains("CAP_NET_ADMIN") && drop_in.contains("AF_PACKET"));
    let d = dir.path().join("ferrite.service.d");
    std::fs::create_dir(&d).unwrap();
    let conf = d.join("floating-portals.conf");
    let verify = || {
        let out = Command::new("systemd-analyze")
            .args(["verify", "ferrite.service"])
            // This directory first, then the usual search path (the trailing colon).
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), err)
    };
    std::fs::write(&conf, format!("{drop_in}NotAKeySystemdKnows=1\n")).unwrap();
    let (_, err) = verify();
    assert!(
        err.contains("floating-portals.conf") && err.contains("NotAKeySystemdKnows"),
        "the drop-in was not read:\n{err}"
    );
    std::fs::write(&conf, &drop_in).unwrap();
    let (ok, err) = verify();
    assert!(ok && err.trim().is_empty(), "{err}");
}

/// The daemon with `$NOTIFY_SOCKET` on a datagram socket of ours.
struct Notified {
    child: Child,
    sock: UnixDatagram,
    _dir: TempDir,
}

impl Notified {
    fn start(dir: TempDir, args: &[&str]) -> Notified {
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .arg("serve")
            .args(["--admin-socket", "none"])
            .args(args)
            .env("NOTIFY_SOCKET", &path)
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("ferrite.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Notified {
            child,
            sock,
            _dir: dir,
        }
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ready_once_the_portals_listen_and_stopping_at_the_end() {
    let port = free_port("127.0.0.1");
    let portal = format!("127.0.0.1:{port}");
    let d = Notified::start(
        TempDir::new("notify"),
        &["--portal", &portal, "--lun", "ram:16M"],
    );
    let msg = d.next();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means listening: the portal takes a connection at once.
    let addr: SocketAddr = portal.parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("the portal listens");
    d.signal(libc::SIGTERM);
    let msg = d.next();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
}

fn config(port: u16, luns: &[u64]) -> String {
    let mut c = format!(
        "[[target]]\nname = \"{IQN}\"\n[[target.portal_group]]\ntag = 1\n\
         portals = [\"127.0.0.1:{port}\"]\n"
    );
    for l in luns {
        c.push_str(&format!(
            "[[target.lun]]\nid = {l}\nbackstore = \"ram:8M\"\n"
        ));
    }
    c
}

fn luns_seen(addr: SocketAddr) -> Vec<u64> {
    let mut s = Session::login(addr, &LoginOpts::default()).unwrap();
    s.report_luns().unwrap()
}

#[test]
fn sighup_applies_the_changed_configuration_file_live() {
    let port = free_port("127.0.0.1");
    let dir = TempDir::new("reload");
    let cfg = dir.path().join("ferrite.toml");
    std::fs::write(&cfg, config(port, &[0])).unwrap();
    let cfg_s = cfg.display().to_string();
    let d = Notified::start(dir, &["--config", &cfg_s]);
    assert!(d.next().lines().any(|l| l == "READY=1"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(luns_seen(addr), vec![0]);
    // A session that stays across the reload (its own initiator port: the logins of
    // `luns_seen` would reinstate it otherwise).
    let mut kept = Session::login(
        addr,
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 0x42],
            ..LoginOpts::default()
        },
    )
    .unwrap();
    std::fs::write(&cfg, config(port, &[0, 3])).unwrap();
    d.signal(libc::SIGHUP);
    let msg = d.next();
    assert!(msg.lines().any(|l| l == "RELOADING=1"), "{msg:?}");
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{msg:?}"
    );
    assert!(d.next().lines().any(|l| l == "READY=1"));
    assert_eq!(luns_seen(addr), vec![0, 3]);
    // A file that does not load changes nothing, and the daemon goes on.
    std::fs::write(&cfg, "this is not toml [").unwrap();
    d.signal(libc::SIGHUP);
    assert!(d.next().lines().any(|l| l == "RELOADING=1"));
    assert!(d.next().lines().any(|l| l == "READY=1"));
    assert_eq!(luns_seen(addr), vec![0, 3]);
    // The kept session sees REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh) once, then reads.
    let r = kept.command(&[0; 6], 0).unwrap();
    assert_eq!((r.sense_key(), r.asc()), (Some(0x06), Some((0x3f, 0x0e))));
    let deadline = Instant::now() + LIMIT;
    while kept.read10(0, 1, 512).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Path::new(&cfg_s).exists());
}

/// The command line (clap): `--version` names the commit; completions know every admin
/// command; no command prints the help.
#[test]
fn version_help_and_completions() {
    let bin = env!("CARGO_BIN_EXE_ferrite");
    let v = run(bin, &["--version"], LIMIT).ok().stdout;
    assert!(v.starts_with("ferrite ") && v.contains("(commit "), "{v}");
    let help = run(bin, &[], LIMIT).ok().stdout;
    for c in ["serve", "admin", "pr", "completions"] {
        assert!(help.contains(c), "{help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = run(bin, &["completions", shell], LIMIT).ok().stdout;
        for c in ["drop-connection", "logout-session", "add-lun", "metrics"] {
            assert!(script.contains(c), "{shell} completions lack {c}");
        }
    }
    let bad = run(bin, &["serve", "--no-such-flag"], LIMIT);
    assert_eq!(bad.status.code(), Some(2), "{}", bad.describe());
}

/// The man page (`ops/ferrite.8`, written by hand) names every flag of `ferrite serve` and
/// every subcommand, so it cannot fall behind the command line unnoticed.
#[test]
fn the_man_page_covers_the_command_line() {
    let bin = env!("CARGO_BIN_EXE_ferrite");
    let page = std::fs::read_to_string(common::conformance::repo_root().join("ops/ferrite.8"))
        .unwrap()
        .replace("\\-", "-");
    let help = run(bin, &["serve", "--help"], LIMIT).ok().stdout;
    let flags: Vec<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2 && *w != "--help")
        .collect();
    assert!(flags.len() >= 9, "{help}");
    for f in flags {
        assert!(page.contains(f), "ferrite.8 does not mention {f}");
    }
    for c in [
        "serve",
        "admin",
        "pr",
        "release-portals",
        "completions",
        "--version",
    ] {
        assert!(page.contains(c), "ferrite.8 does not mention {c}");
    }
}
