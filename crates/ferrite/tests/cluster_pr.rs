//! Persistent reservations shared by three clustered nodes over a real etcd (started here):
//! the fence_scsi sequence of `tests/reservations.rs`, with every step through a different
//! node. Two hosts register (the one to be fenced through two nodes), one reserves Write
//! Exclusive – Registrants Only, the other PREEMPT AND ABORTs it through a third node. The
//! fenced host's in-flight write on another node is aborted and never lands, its writes
//! conflict on every node while its reads are served, READ FULL STATUS is byte for byte the same
//! through every node, and the state survives SIGKILL of the whole cluster.

mod common;

use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, Session};
use common::pr::*;
use common::{Daemon, Opts, TempDir, IQN};
use testkit::etcd::Etcd;

const HOST_1: &str = "iqn.2026-11.io.example:host-1";
const HOST_2: &str = "iqn.2026-11.io.example:host-2";
const KEY_1: u64 = 0x1111_0000_0000_0011;
const KEY_2: u64 = 0x2222_0000_0000_0022;
const BS: usize = 512;
const LEASE: u64 = 3;

/// Node `n` (1..=3) serves portal group `n` of the target; the LUN is one "device" (a file
/// opened as a block device, which clustered nodes do with O_DIRECT) all three open.
fn node_config(etcd: &Etcd, n: u16, lun: &std::path::Path) -> String {
    let head = common::cluster_head(&etcd.endpoint, &format!("node-{n}"), LEASE);
    format!(
        r#"{head}
        [[target]]
        name = "{IQN}"
        [[target.portal_group]]
        tag = {n}
        portals = ["127.0.0.1:{{port}}"]
        [[target.lun]]
        id = 0
        backstore = "block:{}"
        "#,
        lun.display()
    )
}

fn login(d: &Daemon, initiator: &str, isid_tail: u8) -> Session {
    let o = LoginOpts {
        initiator,
        isid: [0x80, 0, 0, 0, 0, isid_tail],
        ..LoginOpts::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Session::login(d.addr(), &o) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("login {initiator}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn write_status(s: &mut Session, lba: u32, byte: u8) -> u8 {
    s.write10_result(lba, &vec![byte; BS], BS)
        .expect("WRITE(10)")
        .status
}

/// Whether process `pid` holds `path` open with O_DIRECT (from /proc/PID/fdinfo).
fn opened_direct(pid: u32, path: &std::path::Path) -> bool {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir).unwrap().flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|p| p == path) && {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|f| f & libc::O_DIRECT as u32 != 0)
        }
    })
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let v = f();
    println!("{what}: {:?}", t0.elapsed());
    v
}

#[test]
fn fence_scsi_across_three_nodes_behaves_as_on_one() {
    let etcd = Etcd::start();
    let keep = TempDir::new("cluster-pr");
    let lun = keep.path().join("lun0.img");
    std::fs::File::create(&lun)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut nodes: Vec<Daemon> = (1..=3)
        .map(|n| {
            Daemon::start(Opts {
                config: Some(node_config(&etcd, n, &lun)),
                ..Opts::default()
            })
        })
        .collect();

    // Every node reads and writes the shared device past its page cache.
    for d in &nodes {
        assert!(opened_direct(d.pid(), &lun), "O_DIRECT");
    }

    // Host 1 through nodes 1 and 3, host 2 through node 2.
    let mut h1a = login(&nodes[0], HOST_1, 1);
    let mut h1c = login(&nodes[2], HOST_1, 1);
    let mut h2 = login(&nodes[1], HOST_2, 2);
    for s in [&mut h1a, &mut h1c, &mut h2] {
        s.clear_unit_attentions().unwrap();
    }

    // fence_scsi: every path registers (APTPL), the first host reserves WE_RO.
    timed("REGISTER through node 1", || {
        prout_ok(&mut h1a, REGISTER_AND_IGNORE, 0, 0, KEY_1, APTPL)
    });
    prout_ok(&mut h1c, REGISTER_AND_IGNORE, 0, 0, KEY_1, APTPL);
    prout_ok(&mut h2, REGISTER_AND_IGNORE, 0, 0, KEY_2, APTPL);
    prout_ok(&mut h1a, RESERVE, WE_RO, KEY_1, 0, 0);
    // What node 1 did is what node 2 reports, with no delay: the command completed only once
    // every node applied it.
    assert_eq!(read_reservation(&mut h2), Some((KEY_1, WE_RO)));
    assert_eq!(read_keys(&mut h2), (3, vec![KEY_1, KEY_1, KEY_2]));
    h1a.write10(10, &[0xAA; BS], BS).unwrap();
    h1c.write10(11, &[0xAC; BS], BS).unwrap();
    h2.write10(12, &[0xBB; BS], BS).unwrap();

    // Host 1 has a write in flight on node 3: the target has its command and waits for data.
    let (itt, ttt) = start_write(&mut h1c, 13, BS).unwrap();

    // Host 2 fences host 1 through node 2.
    timed("PREEMPT AND ABORT through node 2", || {
        prout_ok(&mut h2, PREEMPT_AND_ABORT, WE_RO, KEY_2, KEY_1, 0)
    });
    assert_eq!(read_keys(&mut h2).1, vec![KEY_2]);
    assert_eq!(read_reservation(&mut h2), Some((KEY_2, WE_RO)));

    // SPC-4 §5.13.11.2.5 on node 3: host 1's in-flight write was aborted there (no response),
    // and REGISTRATIONS PREEMPTED waits for its next command; the same on node 1.
    finish_write(&mut h1c, itt, ttt, &[0xEE; BS]).unwrap();
    let ((status, sense), write) = tur_collecting(&mut h1c, itt).unwrap();
    assert!(
        write.is_none(),
        "the in-flight write on node 3 was answered: {write:?}"
    );
    assert_eq!(status, STATUS_CHECK_CONDITION);
    assert_eq!(sense_code(&sense), Some((0x06, 0x2A, 0x05)));
    let r = h1a.command(&[0; 6], 0).unwrap();
    assert_eq!(sense_code(&r.sense), Some((0x06, 0x2A, 0x05)), "node 1");
    h1a.clear_unit_attentions().unwrap();
    h1c.clear_unit_attentions().unwrap();
    assert!(
        h2.command(&[0; 6], 0).unwrap().sense.is_empty(),
        "no unit attention for the sender"
    );
    assert_eq!(
        h2.read10(13, 1, BS).unwrap(),
        vec![0u8; BS],
        "the fenced write reached the medium"
    );

    // Fenced on every node: writes conflict, reads are served.
    assert_eq!(
        write_status(&mut h1a, 14, 0xEE),
        STATUS_RESERVATION_CONFLICT
    );
    assert_eq!(
        write_status(&mut h1c, 14, 0xEE),
        STATUS_RESERVATION_CONFLICT
    );
    assert_eq!(h1a.read10(10, 1, BS).unwrap(), vec![0xAA; BS]);
    assert_eq!(h1c.read10(12, 1, BS).unwrap(), vec![0xBB; BS]);
    let r = prout(&mut h1c, RESERVE, WE_RO, KEY_1, 0, 0).unwrap();
    assert_eq!(r.status, STATUS_RESERVATION_CONFLICT);
    h2.write10(14, &[0xBB; BS], BS).unwrap();

    // READ FULL STATUS, PRGENERATION included, is the same through every node.
    let full = |s: &mut Session| prin(s, READ_FULL_STATUS).data;
    let f2 = full(&mut h2);
    assert_eq!(full(&mut h1a), f2, "node 1");
    assert_eq!(full(&mut h1c), f2, "node 3");
    let keys_before = read_keys(&mut h2);
    let caps = prin(&mut h2, REPORT_CAPABILITIES).data;
    assert_eq!(caps[2] & 0x01, 0x01, "PTPL_C");
    assert_eq!(caps[3] & 0x01, 0x01, "PTPL_A");

    // The whole cluster dies (SIGKILL) and comes back: the state is the cluster's (APTPL).
    drop((h1a, h1c, h2));
    for d in &mut nodes {
        kill9(d);
    }
    for d in &mut nodes {
        let cfg = d.config_path();
        d.restart(&cfg);
    }
    let mut h1a = login(&nodes[0], HOST_1, 1);
    let mut h2 = login(&nodes[1], HOST_2, 2);
    let mut h1c = login(&nodes[2], HOST_1, 1);
    for s in [&mut h1a, &mut h1c, &mut h2] {
        s.clear_unit_attentions().unwrap();
    }
    assert_eq!(read_keys(&mut h1c), keys_before);
    assert_eq!(full(&mut h1a), f2);
    assert_eq!(
        write_status(&mut h1a, 15, 0xEE),
        STATUS_RESERVATION_CONFLICT
    );
    h2.write10(15, &[0xBB; BS], BS).unwrap();

    // Host 2 lets host 1 back in through node 3; node 1 sees it at once.
    prout_ok(&mut h1c, REGISTER_AND_IGNORE, 0, 0, KEY_1, APTPL);
    prout_ok(&mut h1a, REGISTER_AND_IGNORE, 0, 0, KEY_1, APTPL);
    h1a.write10(16, &[0xAA; BS], BS).unwrap();

    // The operator clears everything through node 1's admin API: every node's registrants
    // hear RESERVATIONS PREEMPTED.
    let out = common::tpg::admin_ok(&nodes[0], &["pr-clear", IQN, "0"]);
    assert!(out.contains("lun"), "{out}");
    let r = h2.command(&[0; 6], 0).unwrap();
    assert_eq!(sense_code(&r.sense), Some((0x06, 0x2A, 0x03)));
    h2.clear_unit_attentions().unwrap();
    assert_eq!(read_keys(&mut h2).1, Vec::<u64>::new());
    for s in [h1a, h1c, h2] {
        s.logout().unwrap();
    }
}

/// PERSISTENT RESERVE OUT through three nodes at once: every change lands exactly once (the
/// compare-and-swap makes the losers compute again on the newer state), and of six hosts
/// reserving at the same moment exactly one holds the reservation. With etcd stopped, a
/// change is refused with BUSY rather than guessed.
#[test]
fn concurrent_changes_through_three_nodes_serialize() {
    let etcd = Etcd::start();
    let keep = TempDir::new("cluster-pr-race");
    let lun = keep.path().join("lun0.img");
    std::fs::File::create(&lun)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let nodes: Vec<Daemon> = (1..=3)
        .map(|n| {
            Daemon::start(Opts {
                config: Some(node_config(&etcd, n, &lun)),
                ..Opts::default()
            })
        })
        .collect();
    let hosts: Vec<(usize, String, u64)> = (0..6)
        .map(|i| {
            (
                i % 3,
                format!("iqn.2026-11.io.example:racer-{i}"),
                0x5500 + i as u64,
            )
        })
        .collect();
    let mut sessions: Vec<Session> = hosts
        .iter()
        .map(|(n, name, _)| {
            let mut s = login(&nodes[*n], name, 9);
            s.clear_unit_attentions().unwrap();
            s
        })
        .collect();

    // PERSISTENT RESERVE OUT until it is not BUSY (what an initiator does).
    fn settle(s: &mut Session, sa: u8, ty: u8, key: u64, sark: u64) -> u8 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = prout(s, sa, ty, key, sark, 0).unwrap();
            if r.status != 0x08 || Instant::now() > deadline {
                return r.status;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    let statuses: Vec<u8> = std::thread::scope(|sc| {
        let ts: Vec<_> = sessions
            .iter_mut()
            .zip(&hosts)
            .map(|(s, (_, _, key))| sc.spawn(move || settle(s, REGISTER, 0, 0, *key)))
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![STATUS_GOOD; 6]);
    let (generation, mut keys) = read_keys(&mut sessions[0]);
    keys.sort();
    assert_eq!(generation, 6, "one PRGENERATION step per registration");
    assert_eq!(keys, (0..6).map(|i| 0x5500 + i).collect::<Vec<u64>>());

    // Exclusive Access, everybody at once: one winner, five conflicts.
    let statuses: Vec<u8> = std::thread::scope(|sc| {
        let ts: Vec<_> = sessions
            .iter_mut()
            .zip(&hosts)
            .map(|(s, (_, _, key))| sc.spawn(move || settle(s, RESERVE, 3, *key, 0)))
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..6).filter(|&i| statuses[i] == STATUS_GOOD).collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|&s| s == STATUS_GOOD || s == STATUS_RESERVATION_CONFLICT),
        "{statuses:?}"
    );
    let w = winners[0];
    for (i, s) in sessions.iter_mut().enumerate() {
        if i != w {
            assert_eq!(read_reservation(s), Some((hosts[w].2, 3)));
        }
    }

    // etcd stopped: the change cannot be confirmed, so it is not answered (never BUSY for a
    // change that may land later): the node fences itself within its lease and drops the
    // session. Once etcd is back, every node reports the same keys, with or without it.
    etcd.pause(true);
    let t0 = Instant::now();
    let (i, key) = ((w + 1) % 6, hosts[(w + 1) % 6].2);
    let r = prout(&mut sessions[i], REGISTER, 0, key, 0x77, 0);
    println!("answer with etcd stopped after {:?}: {r:?}", t0.elapsed());
    assert!(r.is_err(), "answered while etcd was away: {r:?}");
    etcd.pause(false);
    let keys: Vec<Vec<u64>> = nodes
        .iter()
        .map(|d| {
            let mut s = login(d, "iqn.2026-11.io.example:observer", 7);
            s.clear_unit_attentions().unwrap();
            let mut k = read_keys(&mut s).1;
            k.sort();
            k
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    assert_eq!(keys[0].len(), 6);
    assert!(
        keys[0].contains(&key) != keys[0].contains(&0x77),
        "{keys:?}"
    );
}
