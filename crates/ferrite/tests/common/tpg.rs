//! Helpers for the portal group, ACL, CHAP and admin tests: the `ferrite admin` client, discovery
//! and login outcomes through the tests' own initiator, and waiting for the daemon to act.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::initiator::{LoginError, LoginOpts, Session};
use super::{run, Daemon, Output};

/// How long one external command (libiscsi tool, admin client) may take.
pub const LIMIT: Duration = Duration::from_secs(60);

/// `ferrite admin --socket <the daemon's socket> ARGS...`, whatever its exit status. The
/// daemon's portals may accept connections a moment before its admin socket does: until it
/// does (at most 10 s), the command is tried again.
pub fn admin(d: &Daemon, args: &[&str]) -> Output {
    let sock = d.admin_socket().display().to_string();
    let mut all = vec!["admin", "--socket", sock.as_str()];
    all.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(env!("CARGO_BIN_EXE_ferrite"), &all, LIMIT);
        if out.status.success()
            || !out.stderr.contains("cannot reach the daemon")
            || Instant::now() > deadline
        {
            return out;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `ferrite admin ARGS...`, which must succeed; its stdout.
pub fn admin_ok(d: &Daemon, args: &[&str]) -> String {
    admin(d, args).ok().stdout
}

/// `ferrite admin --json ARGS...`, which must succeed; its answer.
pub fn admin_json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = admin(d, &all).ok();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("admin output is not JSON ({e}): {}", out.describe()))
}

/// `ferrite admin ARGS...`, which must fail; its stderr.
pub fn admin_err(d: &Daemon, args: &[&str]) -> String {
    let out = admin(d, args);
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        out.describe()
    );
    out.stderr
}

/// A discovery session through `addr`: log in, `SendTargets=All`, log out.
pub fn discover(addr: SocketAddr, o: &LoginOpts) -> Result<Vec<(String, String)>, LoginError> {
    let o = LoginOpts {
        discovery: true,
        initiator: o.initiator,
        chap: o.chap.clone(),
        isid: o.isid,
        ..LoginOpts::default()
    };
    let mut s = Session::connect(addr, &o)?;
    let keys = s.send_targets("All").map_err(LoginError::Other)?;
    s.logout().map_err(LoginError::Other)?;
    Ok(keys)
}

/// `discover` that must succeed.
pub fn discover_ok(addr: SocketAddr, initiator: &str) -> Vec<(String, String)> {
    discover(
        addr,
        &LoginOpts {
            initiator,
            ..LoginOpts::default()
        },
    )
    .unwrap_or_else(|e| panic!("discovery through {addr} as {initiator}: {e}"))
}

/// `TargetName=...` then its `TargetAddress=...` lines, as SendTargets answers.
pub fn st(entries: &[(&str, &[String])]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (name, addrs) in entries {
        v.push(("TargetName".to_string(), name.to_string()));
        for a in *addrs {
            v.push(("TargetAddress".to_string(), a.clone()));
        }
    }
    v
}

/// The status (class, detail) a normal login gets: `None` when it succeeds (the session is
/// logged out again), the status bytes when the target refuses. Other failures panic.
pub fn login_status(addr: SocketAddr, o: &LoginOpts) -> Option<(u8, u8)> {
    match Session::connect(addr, o) {
        Ok(s) => {
            s.logout().unwrap();
            None
        }
        Err(LoginError::Refused { class, detail }) => Some((class, detail)),
        Err(LoginError::Other(m)) => panic!("login through {addr}: {m}"),
    }
}

/// Whether the daemon closes the session's connection (EOF or reset) within `limit`.
pub fn closed_within(s: &mut Session, limit: Duration) -> bool {
    s.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Whether the session is still open: a command gets an answer.
pub fn alive(s: &mut Session) -> bool {
    s.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    s.clear_unit_attentions().is_ok()
}

/// Poll `f` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something accepts TCP connections on `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// `ip:port` as a socket address (IPv6 without brackets is fine).
pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The LUN lines (`Lun:N ...`) of `iscsi-ls -s` output, as (LUN, size text) pairs.
pub fn ls_luns(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Lun:")?;
            let n: u64 = rest.split_whitespace().next()?.parse().ok()?;
            let size = l
                .split("(Size:")
                .nth(1)
                .map(|x| x.trim_end_matches(')').to_string())
                .unwrap_or_default();
            Some((n, size))
        })
        .collect()
}
