//! ALUA states shared by two clustered nodes over a real etcd (started here): node 1 serves
//! portal group 1 in ALUA group 1 (active/optimized), node 2 portal group 2 in ALUA group 2
//! (standby). REPORT TARGET PORT GROUPS is byte for byte the same through both nodes; an
//! operator's change on one node shows on the other, with ASYMMETRIC ACCESS STATE CHANGED;
//! when node 1 dies (SIGKILL), its group becomes unavailable and node 2's active/optimized once
//! its lease has ended, and when it is back both return to the configured states; SET TARGET
//! PORT GROUPS through one node holds on the other.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, ScsiResult, Session};
use common::pr::kill9;
use common::tpg::admin_ok;
use common::{Daemon, Opts, TempDir, IQN};
use testkit::etcd::Etcd;

const LEASE: u64 = 3;
const AO: u8 = 0;
const AN: u8 = 1;
const STANDBY: u8 = 2;
const UNAVAILABLE: u8 = 3;

/// Node `n`'s configuration: both portal groups (the other node's disabled: it is not this
/// node's to serve), both ALUA groups with their nodes.
fn node_config(etcd: &Etcd, n: u16, lun: &std::path::Path) -> String {
    let group = |tag: u16| {
        if tag == n {
            format!("tag = {tag}\nportals = [\"127.0.0.1:{{port}}\"]")
        } else {
            // Disabled: it listens, but refuses logins.
            let spare = common::free_port("127.0.0.1");
            format!("tag = {tag}\nportals = [\"127.0.0.1:{spare}\"]\nenabled = false")
        }
    };
    let head = common::cluster_head(&etcd.endpoint, &format!("node-{n}"), LEASE);
    format!(
        r#"{head}
        [[target]]
        name = "{IQN}"
        alua_transition_secs = 1
        [[target.portal_group]]
        {}
        [[target.portal_group]]
        {}
        [[target.lun]]
        id = 0
        backstore = "file:{}:16M"
        [[target.alua_group]]
        id = 1
        portal_groups = [1]
        state = "active/optimized"
        node = "node-1"
        [[target.alua_group]]
        id = 2
        portal_groups = [2]
        state = "standby"
        node = "node-2"
        "#,
        group(1),
        group(2),
        lun.display()
    )
}

fn login(addr: SocketAddr) -> Session {
    let o = LoginOpts {
        initiator: "iqn.2026-11.io.example:alua-host",
        ..LoginOpts::default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Session::connect(addr, &o) {
            Ok(mut s) => {
                take_uas(&mut s);
                return s;
            }
            Err(e) if Instant::now() > deadline => panic!("login through {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn tur(s: &mut Session) -> ScsiResult {
    s.command(&[0u8; 6], 0).unwrap()
}

/// Every pending unit attention: their (ASC, ASCQ).
fn take_uas(s: &mut Session) -> Vec<(u8, u8)> {
    let mut v = Vec::new();
    loop {
        let r = tur(s);
        if r.status == 2 && r.sense_key() == Some(6) {
            v.push(r.asc().unwrap());
        } else {
            return v;
        }
    }
}

thread_local! {
    /// Unit attentions REPORT TARGET PORT GROUPS ran into (it is not exempt from them).
    static SEEN: std::cell::RefCell<Vec<(u8, u8)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// REPORT TARGET PORT GROUPS, extended format (past any unit attention, remembered in SEEN).
fn rtpg(s: &mut Session) -> Vec<u8> {
    let cdb = [0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    loop {
        let r = s.command(&cdb, 1024).unwrap();
        if r.status == 2 && r.sense_key() == Some(6) {
            SEEN.with(|v| v.borrow_mut().push(r.asc().unwrap()));
            continue;
        }
        assert_eq!(r.status, 0, "REPORT TARGET PORT GROUPS: {:02x?}", r.sense);
        return r.data;
    }
}

/// Unit attentions pending or met since the last call.
fn uas(s: &mut Session) -> Vec<(u8, u8)> {
    let mut v = SEEN.with(|v| std::mem::take(&mut *v.borrow_mut()));
    v.extend(take_uas(s));
    v
}

/// (group id, state) per descriptor.
fn states(s: &mut Session) -> Vec<(u16, u8)> {
    let d = rtpg(s);
    let mut v = Vec::new();
    let mut o = 8;
    while o + 8 <= d.len() {
        v.push((u16::from_be_bytes([d[o + 2], d[o + 3]]), d[o] & 0x0F));
        o += 8 + 4 * usize::from(d[o + 7]);
    }
    v
}

/// Poll until `s` reports `want`; how long it took.
fn until_states(s: &mut Session, want: &[(u16, u8)], limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let now = states(s);
        if now == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "still {now:?} after {limit:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn alua_states_are_the_cluster_s_and_follow_its_members() {
    let etcd = Etcd::start();
    let keep = TempDir::new("cluster-alua");
    let lun = keep.path().join("lun0.img");
    let mut nodes: Vec<Daemon> = (1..=2)
        .map(|n| {
            Daemon::start(Opts {
                config: Some(node_config(&etcd, n, &lun)),
                ..Opts::default()
            })
        })
        .collect();
    let mut s1 = login(nodes[0].addr());
    let mut s2 = login(nodes[1].addr());
    let configured = [(1, AO), (2, STANDBY)];
    until_states(&mut s2, &configured, Duration::from_secs(5));
    until_states(&mut s1, &configured, Duration::from_secs(5));
    assert_eq!(
        rtpg(&mut s1),
        rtpg(&mut s2),
        "the same report through both nodes"
    );
    uas(&mut s1);
    uas(&mut s2);

    // The operator changes group 2 on node 2: node 1 follows (standby -> active/non-optimized
    // passes through transitioning) and tells its initiator.
    admin_ok(&nodes[1], &["set-alua", IQN, "2=active/non-optimized"]);
    let took = until_states(&mut s1, &[(1, AO), (2, AN)], Duration::from_secs(5));
    println!("operator's change on node 2 seen through node 1 after {took:?}");
    assert!(uas(&mut s1).contains(&(0x2A, 0x06)));
    assert_eq!(rtpg(&mut s1), rtpg(&mut s2));
    // And back, from node 1 this time.
    admin_ok(&nodes[0], &["set-alua", IQN, "2=standby"]);
    until_states(&mut s2, &configured, Duration::from_secs(5));
    until_states(&mut s1, &configured, Duration::from_secs(5));
    uas(&mut s1);
    uas(&mut s2);

    // Node 1 dies. Once its lease has ended, node 2 makes group 1 unavailable and its own
    // group 2 active/optimized (both through transitioning).
    let killed = Instant::now();
    drop(s1);
    kill9(&mut nodes[0]);
    let mut saw_transitioning = false;
    loop {
        let now = states(&mut s2);
        saw_transitioning |= now.iter().any(|&(_, st)| st == 0x0F);
        if now == [(1, UNAVAILABLE), (2, AO)] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE + 6),
            "node 2 still reports {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "node 1 killed: node 2's group active/optimized after {:?} (lease {LEASE} s, transition 1 s)",
        killed.elapsed()
    );
    assert!(saw_transitioning, "the change went through transitioning");
    assert!(uas(&mut s2).contains(&(0x2A, 0x06)));
    // Node 2's path serves I/O now.
    assert_eq!(tur(&mut s2).status, 0);

    // Node 1 is back: both return to the configured states, the same through both nodes.
    let cfg = nodes[0].config_path();
    nodes[0].restart(&cfg);
    let mut s1 = login(nodes[0].addr());
    until_states(&mut s2, &configured, Duration::from_secs(5));
    until_states(&mut s1, &configured, Duration::from_secs(5));
    assert_eq!(rtpg(&mut s1), rtpg(&mut s2));

    // SET TARGET PORT GROUPS through node 1 (group 1 to active/non-optimized, an initiator's
    // choice among active states) holds on node 2 as well.
    let mut list = vec![0u8; 8];
    list[4] = AN;
    list[6..8].copy_from_slice(&1u16.to_be_bytes());
    let mut cdb = [0u8; 12];
    cdb[0] = 0xA4;
    cdb[1] = 0x0A;
    cdb[6..10].copy_from_slice(&(list.len() as u32).to_be_bytes());
    take_uas(&mut s1);
    let r = s1.write_command(&cdb, &list).unwrap();
    assert_eq!(r.status, 0, "SET TARGET PORT GROUPS: {:02x?}", r.sense);
    until_states(&mut s2, &[(1, AN), (2, STANDBY)], Duration::from_secs(5));
    assert_eq!(states(&mut s1), [(1, AN), (2, STANDBY)]);
}
