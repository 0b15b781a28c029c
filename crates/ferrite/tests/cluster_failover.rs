//! Portal takeover between two nodes, on a network lab (`testkit::netns`, needs root): etcd in
//! a namespace of its own (TLS, as off-host endpoints must be), nodes `a` and `b` in theirs
//! sharing one file LUN, and an initiator namespace. The floating portal address belongs to `a`
//! by preference, `b` takes it over.
//!
//! - `sigkill_failover_keeps_every_acknowledged_write`: the initiator writes sequence-numbered
//!   blocks through the floating address without a pause, reconnecting and retrying the write
//!   that was not acknowledged; `a` is killed (SIGKILL) ten times and restarted in between
//!   (failback auto brings the address home each time). Every acknowledged write reads back;
//!   the longest I/O pause per kill is printed (min/median/max). Last, a clean stop (SIGTERM)
//!   hands the address over at once.
//! - `linux_initiator_carries_on_through_failover`: the Linux kernel initiator (open-iscsi in a
//!   QEMU guest whose QEMU runs in the initiator's namespace) writes and verifies with fio
//!   through the floating address while `a` is killed twice (failback auto brings the address
//!   home in between): fio reports no I/O error and every block it wrote verifies.
//! - `a_node_cut_off_from_etcd_stops_before_the_other_takes_over`: `a` loses etcd (a blackhole
//!   route) but not the initiator; from both daemons' logs and the initiator's
//!   acknowledgements, `a` had fenced itself (no write under way, none accepted after) before
//!   `b` owned the address. Then a planned move back to `a`, a drain of `a`, and `b`'s
//!   address hook.
//!
//! - `an_ipv6_portal_is_announced_to_the_initiators_neighbour_cache`: an IPv6 floating portal;
//!   after a SIGKILL of `a` (whose kernel keeps the address), `b` brings it up without duplicate
//!   address detection and its unsolicited neighbour advertisements move the initiator's
//!   neighbour entry to `b`'s MAC while the initiator sends nothing; a login over IPv6 reaches
//!   `b`.
//! - `release_portals_takes_a_dead_daemons_addresses_down`: `ferrite release-portals` (the
//!   unit's ExecStopPost) against the addresses a killed daemon left.
//!
//! `FERRITE_FAILOVER_LEASE=SECS` measures another lease than the default 4 s.

mod common;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::guest::{Guest, GuestOpts};
use common::initiator::{LoginOpts, Session};
use common::{TempDir, IQN};
use testkit::etcd::Etcd;
use testkit::netns::Lab;

const BLOCK: usize = 512;
/// The ring of blocks the writer goes round (sequence number modulo this).
const BLOCKS: u64 = 256;
const PORT: u16 = 3260;

struct Node {
    name: &'static str,
    child: Option<Child>,
    dir: PathBuf,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self, lab: &Lab) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = lab
            .command(self.name, env!("CARGO_BIN_EXE_ferrite"))
            .args(["serve", "--log", "info", "--admin-socket"])
            .arg(self.dir.join(format!("{}.sock", self.name)))
            .arg("--config")
            .arg(self.dir.join(format!("{}.toml", self.name)))
            .env(
                "XDG_STATE_HOME",
                self.dir.join(format!("{}-state", self.name)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrite");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the exit (a clean stop).
    fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .arg("admin")
            .arg("--socket")
            .arg(self.dir.join(format!("{}.sock", self.name)))
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
struct Ack {
    seq: u64,
    at: Instant,
}

struct Writer {
    stop: Arc<AtomicBool>,
    /// What the writer does now (for failure messages).
    phase: Arc<Mutex<String>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    /// The blocks as read back at the end (LBA order).
    handle: thread::JoinHandle<Vec<u64>>,
}

fn block_of(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(seq ^ ((i as u64) << 56)).to_le_bytes());
    }
    b
}

fn seq_in(b: &[u8]) -> Option<u64> {
    let s = u64::from_le_bytes(b[..8].try_into().unwrap());
    (b == block_of(s)).then_some(s)
}

/// Log in through `addr` (short connect timeout: a dead address is tried again at once).
fn session(addr: SocketAddr, phase: &Mutex<String>) -> Option<Session> {
    *phase.lock().unwrap() = format!("connecting at {:?}", Instant::now());
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    // A login or write whose answer takes longer is given up and tried again on a new
    // connection.
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    *phase.lock().unwrap() = format!(
        "logging in at {:?} from {:?}",
        Instant::now(),
        stream.local_addr()
    );
    Session::login_on(stream, &LoginOpts::default()).ok()
}

/// The initiator, on a thread inside the initiator's namespace.
fn start_writer(lab: &Lab, addr: SocketAddr) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let phase = Arc::new(Mutex::new(String::new()));
    let (st, ac, ph) = (stop.clone(), acks.clone(), phase.clone());
    let handle = lab.in_host("ini", move || {
        let mut s: Option<Session> = None;
        let mut seq = 1u64;
        while !st.load(Ordering::SeqCst) {
            let Some(sess) = s.as_mut() else {
                s = session(addr, &ph);
                if s.is_none() {
                    thread::sleep(Duration::from_millis(20));
                }
                continue;
            };
            *ph.lock().unwrap() = format!("writing {seq} at {:?}", Instant::now());
            match sess.write10((seq % BLOCKS) as u32, &block_of(seq), BLOCK) {
                Ok(()) => {
                    ac.lock().unwrap().push(Ack {
                        seq,
                        at: Instant::now(),
                    });
                    seq += 1;
                }
                // Not acknowledged: again, on a new connection.
                Err(_) => s = None,
            }
        }
        // Read the ring back.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "cannot read back");
            let Some(mut sess) = s.take().or_else(|| session(addr, &ph)) else {
                thread::sleep(Duration::from_millis(50));
                continue;
            };
            let mut out = Vec::new();
            let mut ok = true;
            for lba in 0..BLOCKS {
                match sess.read10(lba as u32, 1, BLOCK) {
                    Ok(b) => out.push(seq_in(&b).unwrap_or(u64::MAX)),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return out;
            }
        }
    });
    Writer {
        stop,
        phase,
        acks,
        handle,
    }
}

impl Writer {
    fn acked_after(&self, t: Instant) -> Option<Ack> {
        self.acks.lock().unwrap().iter().find(|a| a.at > t).copied()
    }

    fn wait_acked_after(
        &self,
        t: Instant,
        limit: Duration,
        what: &str,
        logs: &dyn Fn() -> String,
    ) -> Ack {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(a) = self.acked_after(t) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no write acknowledged; the initiator is {} (now {:?})\n{}",
                self.phase.lock().unwrap(),
                Instant::now(),
                logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The longest gap between acknowledgements around `[from, to]` (the last one before
    /// `from` counts).
    fn pause(&self, from: Instant, to: Instant) -> Duration {
        let acks = self.acks.lock().unwrap();
        let start = acks.iter().rposition(|a| a.at <= from).unwrap_or(0);
        let mut worst = Duration::ZERO;
        for w in acks[start..].windows(2) {
            if w[0].at > to {
                break;
            }
            worst = worst.max(w[1].at - w[0].at);
        }
        worst
    }

    /// Stop writing; check that every block holds its last acknowledged write (or a later
    /// attempt at that block); the number of acknowledged writes.
    fn finish_and_check(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let blocks = self.handle.join().expect("writer");
        let acks = self.acks.lock().unwrap();
        let last_seq = acks.last().map_or(0, |a| a.seq);
        for a in acks.iter().rev().take(BLOCKS as usize) {
            let lba = a.seq % BLOCKS;
            let have = blocks[lba as usize];
            // The write after the last acknowledged one may have landed unacknowledged.
            assert!(
                have == a.seq || have == last_seq + 1 && have % BLOCKS == lba,
                "block {lba}: holds {have:?}, the last acknowledged write there was {}",
                a.seq
            );
        }
        acks.len()
    }
}

struct Cluster {
    // Dropped in this order: nodes, then etcd, then the lab (which kills the rest).
    nodes: Vec<Node>,
    etcd: Etcd,
    lab: Lab,
    vip: Ipv4Addr,
    dir: TempDir,
}

impl Cluster {
    /// Two nodes with `failback`; with `hook`, node b brings addresses up and down through an
    /// `address_hook` script that logs its calls to `hook.log`.
    fn new(failback: &str, hook: bool) -> Option<Cluster> {
        if !Lab::usable() {
            return None;
        }
        common::require_tool("arping");
        let lab = Lab::new(&["etcd", "a", "b", "ini"]);
        let etcd = Etcd::start_in(&lab, "etcd", true);
        let vip = lab.spare_addr(100);
        let dir = TempDir::new("failover");
        let lun = dir.path().join("shared.img");
        std::fs::File::create(&lun)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mut nodes = Vec::new();
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "echo \"$*\" >> {log}\n\
                 if [ \"$1\" = add ]; then\n\
                 \x20 ip addr add \"$2\" dev \"$3\" || exit 1\n\
                 \x20 arping -q -U -c 1 -I \"$3\" \"${{2%/*}}\" >/dev/null 2>&1 &\n\
                 else\n\
                 \x20 ip addr del \"$2\" dev \"$3\" 2>/dev/null\n\
                 fi\n\
                 exit 0\n",
                log = dir.path().join("hook.log").display()
            ),
        )
        .unwrap();
        for name in ["a", "b"] {
            let hook_line = if hook && name == "b" {
                format!("address_hook = [\"/bin/sh\", \"{}\"]", script.display())
            } else {
                String::new()
            };
            let config = node_config(
                name,
                &etcd,
                &format!("failback = \"{failback}\"\n{hook_line}"),
                &format!("{vip}:{PORT}"),
                24,
                &lun,
            );
            let mut f = std::fs::File::create(dir.path().join(format!("{name}.toml"))).unwrap();
            f.write_all(config.as_bytes()).unwrap();
            nodes.push(Node {
                name,
                child: None,
                dir: dir.path().to_path_buf(),
            });
        }
        Some(Cluster {
            nodes,
            etcd,
            lab,
            vip,
            dir,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.vip, PORT))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!("---- {} ----\n{}\n", n.name, n.log()));
        }
        s.push_str(&format!("---- etcd ----\n{}\n", tail(&self.etcd.log(), 30)));
        for h in ["a", "b", "ini"] {
            let out = self.lab.command(h, "ip").args(["-s", "neigh"]).output();
            let link = self.lab.command(h, "ip").args(["-br", "link"]).output();
            s.push_str(&format!(
                "---- {h}: {:?}, neighbours:\n{}{}\n",
                self.lab.addrs(h),
                out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default(),
                link.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default(),
            ));
        }
        s
    }

    fn holds(&self, node: &str) -> bool {
        self.lab
            .addrs(node)
            .iter()
            .any(|a| a.starts_with(&format!("{}/", self.vip)))
    }

    /// Wait until `node` has the floating address up and nobody else has (but a killed node's
    /// host: its kernel keeps the address until the node starts again and takes it down).
    fn wait_holder(&self, node: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let other = if node == "a" { "b" } else { "a" };
        let dead = |n: &str| self.nodes.iter().any(|x| x.name == n && x.child.is_none());
        while !(self.holds(node) && (dead(other) || !self.holds(other))) {
            assert!(
                Instant::now() < deadline,
                "{node} does not hold {} after {limit:?}\n{}",
                self.vip,
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The nodes' lease: the default (4 s) unless `FERRITE_FAILOVER_LEASE` says otherwise (to
/// measure other leases by hand).
fn lease_secs() -> u64 {
    std::env::var("FERRITE_FAILOVER_LEASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// Node `name`'s configuration: the lab's etcd over TLS, `extra` lines in `[cluster]`, one
/// floating portal at `portal` (`prefix_len`) preferring a then b, and LUN 0 on the shared
/// file `lun` behind portal group 7 of that portal.
fn node_config(
    name: &str,
    etcd: &Etcd,
    extra: &str,
    portal: &str,
    prefix_len: u8,
    lun: &std::path::Path,
) -> String {
    let (tls, _) = etcd.tls.clone().unwrap();
    format!(
        r#"
        [cluster]
        node = "{name}"
        endpoints = ["{endpoint}"]
        ca = "{ca}"
        cert = "{cert}"
        key = "{key}"
        {extra}
        lease_secs = {lease}
        [[cluster.portal]]
        address = "{portal}"
        interface = "eth0"
        prefix_len = {prefix_len}
        nodes = ["a", "b"]
        [[target]]
        name = "{IQN}"
        [[target.portal_group]]
        tag = 7
        portals = ["{portal}"]
        [[target.lun]]
        id = 0
        backstore = "file:{lun}"
        "#,
        lease = lease_secs(),
        endpoint = etcd.endpoint,
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        lun = lun.display(),
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Seconds of the day of a log line's timestamp (`2026-11-30T12:05:01.123456Z ...`, UTC; both
/// daemons run on this machine's clock).
fn stamp(line: &str) -> f64 {
    let t = line.split('T').nth(1).expect("timestamp");
    let t = t.split('Z').next().unwrap();
    let mut p = t.split(':');
    let h: f64 = p.next().unwrap().parse().unwrap();
    let m: f64 = p.next().unwrap().parse().unwrap();
    let s: f64 = p.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

/// Seconds of the UTC day of `t` (to compare with [`stamp`]).
fn day_seconds(t: std::time::SystemTime) -> f64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    (d.as_secs() % 86400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// The first line of `log` after its first `skip` bytes that contains `what`.
fn line_with<'a>(log: &'a str, skip: usize, what: &str) -> Option<&'a str> {
    log.get(skip..)?.lines().find(|l| l.contains(what))
}

fn stats(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn sigkill_failover_keeps_every_acknowledged_write() {
    let Some(mut c) = Cluster::new("auto", false) else {
        return;
    };
    c.nodes[0].start(&c.lab);
    c.wait_holder("a", Duration::from_secs(30));
    c.nodes[1].start(&c.lab);
    let w = start_writer(&c.lab, c.addr());
    let logs = || String::new();
    w.wait_acked_after(Instant::now(), Duration::from_secs(30), "start", &logs);
    // b is a member before the first kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.nodes[0].admin(&["cluster"]).contains("member b ") {
        assert!(Instant::now() < deadline, "b never joined\n{}", c.logs());
        thread::sleep(Duration::from_millis(100));
    }
    println!("{}", c.nodes[0].admin(&["cluster"]));

    const KILLS: usize = 10;
    let mut failover = Vec::new();
    let mut failback = Vec::new();
    for i in 0..KILLS {
        thread::sleep(Duration::from_millis(1500));
        // At different moments of a's renewal period (one renewal every third of the lease).
        thread::sleep(Duration::from_millis((i as u64 * 577) % 1700));
        let killed = Instant::now();
        c.nodes[0].kill();
        c.wait_holder("b", Duration::from_secs(20));
        let b_holds = Instant::now();
        let all = c.logs();
        let first = w.wait_acked_after(b_holds, Duration::from_secs(20), "after the kill", &|| {
            all.clone()
        });
        let p = w.pause(killed, first.at);
        println!(
            "kill {}: b holds the address {:.2} s after the kill; I/O pause {:.2} s",
            i + 1,
            (b_holds - killed).as_secs_f64(),
            p.as_secs_f64(),
        );
        failover.push(p);
        // a comes back and takes its address home (failback auto).
        let restarted = Instant::now();
        c.nodes[0].start(&c.lab);
        c.wait_holder("a", Duration::from_secs(30));
        let home = Instant::now();
        let all = c.logs();
        let first = w.wait_acked_after(home, Duration::from_secs(20), "after failback", &|| {
            all.clone()
        });
        let p = w.pause(restarted, first.at);
        println!(
            "  a back: holds the address {:.2} s after its start; failback pause {:.2} s",
            (home - restarted).as_secs_f64(),
            p.as_secs_f64()
        );
        failback.push(p);
    }
    println!("{}", c.nodes[0].admin(&["cluster"]));
    // A clean stop hands over at once (lease revoked after the address went down).
    thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    c.nodes[0].term();
    c.wait_holder("b", Duration::from_secs(10));
    let b_holds = Instant::now();
    assert!(!c.holds("a"), "a stopped cleanly: its address is down");
    let all = c.logs();
    let first = w.wait_acked_after(b_holds, Duration::from_secs(20), "after SIGTERM", &|| {
        all.clone()
    });
    let clean = w.pause(stopped, first.at);
    println!(
        "SIGTERM: b holds the address {:.2} s after the signal; I/O pause {:.2} s",
        (b_holds - stopped).as_secs_f64(),
        clean.as_secs_f64()
    );
    assert!(
        clean < Duration::from_secs(3),
        "a clean stop paused I/O for {clean:?}"
    );
    let n = w.finish_and_check();
    let (lo, med, hi) = stats(&mut failover);
    println!(
        "SIGKILL failover over {KILLS} kills (lease {} s): I/O pause min {:.2} s, median {:.2} s, max {:.2} s; \
         {n} writes acknowledged, every one read back",
        lease_secs(),
        lo.as_secs_f64(),
        med.as_secs_f64(),
        hi.as_secs_f64()
    );
    let (flo, fmed, fhi) = stats(&mut failback);
    println!(
        "failback (auto) pause: min {:.2} s, median {:.2} s, max {:.2} s",
        flo.as_secs_f64(),
        fmed.as_secs_f64(),
        fhi.as_secs_f64()
    );
    // The lease ends at most its TTL after the kill (the last renewal may have come just
    // before), plus etcd's expiry check (every 0.5 s); the takeover itself takes ~50 ms.
    let bound = Duration::from_secs(lease_secs()) + Duration::from_millis(1500);
    assert!(hi < bound, "a failover took {hi:?}");
}

#[test]
fn a_node_cut_off_from_etcd_stops_before_the_other_takes_over() {
    let Some(mut c) = Cluster::new("manual", true) else {
        return;
    };
    c.nodes[0].start(&c.lab);
    c.wait_holder("a", Duration::from_secs(30));
    c.nodes[1].start(&c.lab);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.nodes[0].admin(&["cluster"]).contains("member b ") {
        assert!(Instant::now() < deadline, "b never joined\n{}", c.logs());
        thread::sleep(Duration::from_millis(100));
    }
    let w = start_writer(&c.lab, c.addr());
    w.wait_acked_after(Instant::now(), Duration::from_secs(30), "start", &|| {
        String::new()
    });
    thread::sleep(Duration::from_secs(1));
    let (a_skip, b_skip) = (c.nodes[0].log().len(), c.nodes[1].log().len());
    // a loses etcd, not the initiator.
    let etcd_ip = c.lab.addr("etcd");
    let cut = Instant::now();
    let cut_wall = day_seconds(std::time::SystemTime::now());
    c.lab.blackhole("a", etcd_ip);
    c.wait_holder("b", Duration::from_secs(20));
    let b_holds = Instant::now();
    let all = c.logs();
    let first = w.wait_acked_after(
        b_holds,
        Duration::from_secs(20),
        "after the partition",
        &|| all.clone(),
    );
    let pause = w.pause(cut, first.at);
    let (a_log, b_log) = (c.nodes[0].log(), c.nodes[1].log());
    let need = |log: &str, skip: usize, what: &str| {
        line_with(log, skip, what)
            .map(|l| (stamp(l), l.to_string()))
            .unwrap_or_else(|| panic!("no {what:?} in the log\n{}", c.logs()))
    };
    let (doubt, _) = need(&a_log, a_skip, "lease in doubt");
    let (fenced, fenced_line) = need(&a_log, a_skip, "cluster: fenced (");
    let (released, _) = need(&a_log, a_skip, "portal released");
    let (owned, owned_line) = need(&b_log, b_skip, "portal owned");
    let (listening, _) = need(&b_log, b_skip, "portal taken");
    let (b_login, _) = need(&b_log, b_skip, "login complete");
    // The initiator's side, on the logs' clock: the first write b acknowledged is the first
    // acknowledged after b's first login on the address (b's connection logs the login before
    // it reads the next command), and the one before it is a's last. (Not the first one after
    // the test saw b hold the address: under load that sighting can come after b's first
    // acknowledgements.)
    let wall = |t: Instant| cut_wall + (t - cut).as_secs_f64();
    let (last_a, first_b) = {
        let acks = w.acks.lock().unwrap();
        let i = acks
            .iter()
            .position(|a| a.at > cut && wall(a.at) >= b_login)
            .expect("a write acknowledged after b's login");
        (acks[i - 1], acks[i])
    };
    assert!(
        first_b.at <= first.at,
        "b's first acknowledgement comes first"
    );
    println!(
        "partition: cut from etcd at {cut_wall:.3}; the initiator's last write acknowledged by a \
         (seq {}) at {:.3}, its first by b (seq {}) at {:.3}",
        last_a.seq,
        wall(last_a.at),
        first_b.seq,
        wall(first_b.at)
    );
    println!("           b's first login on the address at {b_login:.3}");
    println!("partition: a fencing at {doubt:.3}, fenced (no write under way, none accepted after) at {fenced:.3}, address down at {released:.3}");
    println!("           b owns the address at {owned:.3}, listening at {listening:.3}: {:.3} s after a stopped", owned - fenced);
    println!("           I/O pause {:.2} s", pause.as_secs_f64());
    assert!(
        fenced < owned && released < owned,
        "a stopped after b took over:\n{fenced_line}\n{owned_line}"
    );
    assert!(
        wall(last_a.at) < owned && first_b.seq == last_a.seq + 1,
        "a acknowledged a write after b owned the address"
    );
    // a, healed, joins again and leaves the address with b (failback manual).
    c.lab.unblackhole("a", etcd_ip);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.nodes[1].admin(&["cluster"]).contains("member a ") {
        assert!(
            Instant::now() < deadline,
            "a never joined again\n{}",
            c.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(2));
    assert!(c.holds("b") && !c.holds("a"));
    let shown = c.nodes[1].admin(&["cluster"]);
    assert!(
        shown.contains(&format!("portal {}:{PORT} tag 7 owner b", c.vip)),
        "{shown}"
    );
    // A planned move: a takes it, b lets it go.
    let moved = Instant::now();
    let out = c.nodes[1].admin(&["cluster", "move-portal", &format!("{}:{PORT}", c.vip), "a"]);
    assert!(out.contains("moved by hand to a"), "{out}");
    c.wait_holder("a", Duration::from_secs(10));
    let all = c.logs();
    let first = w.wait_acked_after(
        Instant::now(),
        Duration::from_secs(20),
        "after the move",
        &|| all.clone(),
    );
    println!(
        "planned move to a: I/O pause {:.2} s",
        w.pause(moved, first.at).as_secs_f64()
    );
    // Drained, a lets it go to b, though a is first for it (the move is forgotten first).
    let addr = format!("{}:{PORT}", c.vip);
    c.nodes[1].admin(&["cluster", "move-portal", &addr, "-"]);
    let drained = Instant::now();
    let out = c.nodes[1].admin(&["cluster", "drain", "a"]);
    assert!(
        out.contains("member a ") && out.contains(" drained"),
        "{out}"
    );
    c.wait_holder("b", Duration::from_secs(10));
    let all = c.logs();
    let first = w.wait_acked_after(
        Instant::now(),
        Duration::from_secs(20),
        "after the drain",
        &|| all.clone(),
    );
    println!(
        "drain a: b holds the address; I/O pause {:.2} s",
        w.pause(drained, first.at).as_secs_f64()
    );
    // Undrained, a is first again, but failback is manual: b keeps it.
    c.nodes[1].admin(&["cluster", "undrain", "a"]);
    thread::sleep(Duration::from_secs(2));
    assert!(c.holds("b") && !c.holds("a"), "{}", c.logs());
    let n = w.finish_and_check();
    println!("{n} writes acknowledged, every one read back");
    // b went through its hook: down at its start, up when it took over.
    let hook = std::fs::read_to_string(c.dir.path().join("hook.log")).unwrap_or_default();
    let cidr = format!("{}/24 eth0", c.vip);
    assert!(
        hook.starts_with(&format!("del {cidr}\n")) && hook.contains(&format!("add {cidr}\n")),
        "hook calls:\n{hook}"
    );
}

#[test]
fn linux_initiator_carries_on_through_failover() {
    let Some(mut c) = Cluster::new("auto", false) else {
        return;
    };
    c.nodes[0].start(&c.lab);
    c.wait_holder("a", Duration::from_secs(30));
    c.nodes[1].start(&c.lab);
    let mut guest = Guest::start_with(
        include_str!("guest/failover.sh"),
        GuestOpts::default()
            .netns(&c.lab.ns("ini"))
            .env("IQN", IQN)
            .env("PORTAL", &c.addr().to_string())
            .unique_initiator()
            .timeout(Duration::from_secs(900)),
    );
    let dev = guest.wait_marker("ready", Duration::from_secs(300));
    println!("guest logged in through {}: {dev}", c.addr());
    guest.wait_marker("io-running", Duration::from_secs(60));
    let mut pauses = Vec::new();
    for kill in 1..=2 {
        // I/O through a for a while, then a dies; b takes the address.
        thread::sleep(Duration::from_secs(8));
        let t0 = Instant::now();
        c.nodes[0].kill();
        c.wait_holder("b", Duration::from_secs(20));
        let took = t0.elapsed();
        pauses.push(took);
        println!(
            "kill {kill}: b holds the address {:.2} s after the kill",
            took.as_secs_f64()
        );
        thread::sleep(Duration::from_secs(8));
        // a is back: the address goes home (failback auto).
        c.nodes[0].start(&c.lab);
        c.wait_holder("a", Duration::from_secs(30));
        assert!(guest.running(), "the guest died:\n{}", guest.describe());
    }
    thread::sleep(Duration::from_secs(8));
    guest.signal("stop-io");
    guest.wait_marker("io-done", Duration::from_secs(600));
    let out = guest.finish(Duration::from_secs(120)).success();
    // The shared LUN is 16 MiB: each round writes all of it, then reads it back.
    let rounds = out.verified_fio_rounds(16 << 20);
    // The longest write completion the application saw: the I/O pause of a failover.
    let worst_ms = rounds
        .iter()
        .filter_map(|j| j["write"]["clat_ns"]["max"].as_f64())
        .fold(0.0f64, f64::max)
        / 1e6;
    println!(
        "fio: {} verified rounds of 16 MiB, no I/O error; longest write completion {worst_ms:.0} ms \
         (address taken over {:?} after each kill)",
        rounds.len(),
        pauses
    );
    // Below the SCSI command timeout (30 s): the kernel never had to abort a command.
    assert!(worst_ms < 30_000.0, "a write took {worst_ms} ms");
    let kernel = out.file("kernel");
    assert!(
        !kernel.contains("I/O error"),
        "the kernel reported I/O errors:\n{kernel}"
    );
}

/// `host`'s IPv6 addresses on `eth0` and its neighbour entry for `ip` (`ip -6 ...`).
fn v6(lab: &Lab, host: &str, what: &[&str]) -> String {
    let out = lab
        .command(host, "ip")
        .arg("-6")
        .args(what)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip -6 {what:?} in {host}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac(lab: &Lab, host: &str) -> String {
    let out = lab
        .command(host, "ip")
        .args(["link", "show", "eth0"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC")
        .to_string()
}

/// A floating IPv6 portal. The holder brings the address up at once (no duplicate address
/// detection, which would fail anyway while a crashed holder's kernel still has it) and
/// announces it with unsolicited neighbour advertisements: the initiator's neighbour entry,
/// still on the old holder's MAC after a SIGKILL, moves to the new holder's without the
/// initiator sending anything, and a login over IPv6 reaches it.
#[test]
fn an_ipv6_portal_is_announced_to_the_initiators_neighbour_cache() {
    if !Lab::usable() {
        return;
    }
    let lab = Lab::new(&["etcd", "a", "b", "ini"]);
    let etcd = Etcd::start_in(&lab, "etcd", true);
    let dir = TempDir::new("failover6");
    let lun = dir.path().join("shared.img");
    std::fs::File::create(&lun)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    for (h, own) in [("a", "fd00:f::a"), ("b", "fd00:f::b"), ("ini", "fd00:f::1")] {
        v6(
            &lab,
            h,
            &["addr", "add", &format!("{own}/64"), "dev", "eth0", "nodad"],
        );
    }
    let vip = "fd00:f::100";
    let portal = format!("[{vip}]:{PORT}");
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let config = node_config(name, &etcd, "", &portal, 64, &lun);
        std::fs::write(dir.path().join(format!("{name}.toml")), config).unwrap();
        nodes.push(Node {
            name,
            child: None,
            dir: dir.path().to_path_buf(),
        });
    }
    let logs = |nodes: &[Node]| {
        nodes
            .iter()
            .map(|n| format!("---- {} ----\n{}\n", n.name, n.log()))
            .collect::<String>()
            + &format!("---- ini ----\n{}", v6(&lab, "ini", &["neigh"]))
    };
    let holds =
        |h: &str| v6(&lab, h, &["addr", "show", "dev", "eth0"]).contains(&format!("{vip}/64"));
    let wait = |what: &str, nodes: &[Node], ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}\n{}", logs(nodes));
            thread::sleep(Duration::from_millis(10));
        }
    };
    let addr: SocketAddr = portal.parse().unwrap();
    let login = move |lab: &Lab| {
        lab.in_host("ini", move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                    .ok()
                    .and_then(|t| Session::login_on(t, &LoginOpts::default()).ok());
                match s {
                    Some(mut s) => return s.read10(0, 1, BLOCK).map(|b| b.len()),
                    None if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                    None => return Err("no login over IPv6".to_string()),
                }
            }
        })
        .join()
        .unwrap()
    };

    nodes[0].start(&lab);
    wait("a never held the IPv6 portal", &nodes, &|| holds("a"));
    assert_eq!(login(&lab), Ok(BLOCK), "{}", logs(&nodes));
    let (mac_a, mac_b) = (mac(&lab, "a"), mac(&lab, "b"));
    let entry = || v6(&lab, "ini", &["neigh", "show", vip, "dev", "eth0"]);
    assert!(entry().contains(&mac_a), "{}", entry());

    nodes[1].start(&lab);
    wait("b never joined", &nodes, &|| {
        nodes[0].admin(&["cluster"]).contains("member b ")
    });
    nodes[0].kill();
    // a's kernel keeps the address (nobody took it down), as after a real crash.
    wait("b never held the IPv6 portal", &nodes, &|| holds("b"));
    let b_holds = Instant::now();
    wait("the initiator's entry never moved to b", &nodes, &|| {
        entry().contains(&mac_b)
    });
    // The initiator sent nothing meanwhile: without the advertisement its entry would have
    // stayed on a's MAC (STALE) until its next packet, then taken NUD's probes to move.
    println!(
        "IPv6 portal: the initiator's neighbour entry moved to b {:?} after b held the address",
        b_holds.elapsed()
    );
    assert_eq!(login(&lab), Ok(BLOCK), "{}", logs(&nodes));
    assert!(logs(&nodes).contains("portal taken"), "{}", logs(&nodes));
}

/// `ferrite release-portals` (the unit's ExecStopPost): the floating addresses a dead daemon
/// left on the host go down, IPv4 and IPv6, and again is no error; refused while the daemon's
/// admin socket answers.
#[test]
fn release_portals_takes_a_dead_daemons_addresses_down() {
    if !Lab::usable() {
        return;
    }
    let lab = Lab::new(&["a"]);
    let dir = TempDir::new("release");
    let vip = lab.spare_addr(100);
    let vip6 = "fd00:f::100";
    let socket = dir.path().join("admin.sock");
    let config = format!(
        r#"
        [settings]
        admin_socket = "{socket}"
        [cluster]
        node = "a"
        endpoints = ["127.0.0.1:2379"]
        [[cluster.portal]]
        address = "{vip}:{PORT}"
        interface = "eth0"
        prefix_len = 24
        nodes = ["a"]
        [[cluster.portal]]
        address = "[{vip6}]:{PORT}"
        interface = "eth0"
        prefix_len = 64
        nodes = ["a"]
        [[target]]
        name = "{IQN}"
        [[target.portal_group]]
        tag = 1
        portals = ["{vip}:{PORT}", "[{vip6}]:{PORT}"]
        [[target.lun]]
        id = 0
        backstore = "ram:16M"
        "#,
        socket = socket.display()
    );
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, config).unwrap();
    // What a daemon killed while holding both leaves behind.
    let ip = |args: &[&str]| {
        let out = lab.command("a", "ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ip(&["addr", "add", &format!("{vip}/24"), "dev", "eth0"]);
    ip(&[
        "-6",
        "addr",
        "add",
        &format!("{vip6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    let up = || {
        let a = ip(&["addr", "show", "dev", "eth0"]);
        (
            a.contains(&format!("{vip}/24")),
            a.contains(&format!("{vip6}/64")),
        )
    };
    assert_eq!(up(), (true, true));
    let release = || {
        lab.command("a", env!("CARGO_BIN_EXE_ferrite"))
            .args(["release-portals", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    // A daemon that answers on its admin socket keeps its addresses.
    let listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = release();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("running"),
        "{out:?}"
    );
    assert_eq!(up(), (true, true));
    drop(listening);
    // The socket file a dead daemon leaves does not answer.
    for _ in 0..2 {
        let out = release();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(up(), (false, false));
    }
}
