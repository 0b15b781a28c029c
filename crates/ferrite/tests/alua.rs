//! ALUA on the wire (SPC-4 §5.16): two portal groups in two target port groups, seen through
//! the tests' own initiator; operator changes with `ferrite admin` (through transitioning, with
//! unit attentions, saved and restored at restart); explicit changes with SET TARGET PORT
//! GROUPS, saved too; the configuration's rules; several ISIDs into one portal group (the
//! Microsoft initiator's MPIO) each with its group's view.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, ScsiResult, Session};
use common::tpg::{admin_err, admin_json, admin_ok};
use common::{Daemon, Opts, IQN, SECOND_IP};

const INIT: &str = "iqn.2026-11.io.ferrite:alua-host";

/// Portal group 1 on 127.0.0.1 in ALUA group 10 (active/optimized, preferred), portal group 2
/// on 127.0.0.2 in ALUA group 20 (active/non-optimized), one RAM LUN, a 1 s transition.
fn daemon() -> Daemon {
    let config = r#"
        [[target]]
        name = "iqn.2026-11.io.ferrite:itest"
        alua_transition_secs = 1
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{port}"]
        [[target.portal_group]]
        tag = 2
        portals = ["127.0.0.2:{port2}"]
        [[target.lun]]
        id = 0
        backstore = "ram:16M"
        [[target.alua_group]]
        id = 10
        portal_groups = [1]
        state = "active/optimized"
        preferred = true
        [[target.alua_group]]
        id = 20
        portal_groups = [2]
        state = "active/non-optimized"
    "#;
    Daemon::start(Opts {
        config: Some(config.into()),
        second_portal: true,
        ..Opts::default()
    })
}

fn addr2(d: &Daemon) -> SocketAddr {
    format!("{SECOND_IP}:{}", d.port2).parse().unwrap()
}

fn login(addr: SocketAddr, isid: u64) -> Session {
    let o = LoginOpts {
        initiator: INIT,
        isid: {
            let b = isid.to_be_bytes();
            [0x40, b[3], b[4], b[5], b[6], b[7]]
        },
        ..LoginOpts::default()
    };
    let mut s = Session::connect(addr, &o).unwrap_or_else(|e| panic!("login through {addr}: {e}"));
    // The new I_T nexus's power-on unit attention (TEST UNIT READY may be refused afterwards:
    // the path may be standby).
    for _ in 0..8 {
        let r = tur(&mut s);
        if !(r.status == 2 && r.sense_key() == Some(6)) {
            break;
        }
    }
    s
}

fn rtpg(s: &mut Session) -> Vec<u8> {
    let cdb = [0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let r = s.command(&cdb, 1024).unwrap();
    assert_eq!(r.status, 0, "REPORT TARGET PORT GROUPS: {:02x?}", r.sense);
    r.data
}

/// (group id, state code, PREF, status code, relative port ids) per descriptor.
fn groups(d: &[u8]) -> Vec<(u16, u8, bool, u8, Vec<u16>)> {
    let mut v = Vec::new();
    let mut o = 8;
    while o + 8 <= d.len() {
        let n = usize::from(d[o + 7]);
        let ports = (0..n)
            .map(|i| u16::from_be_bytes([d[o + 8 + 4 * i + 2], d[o + 8 + 4 * i + 3]]))
            .collect();
        v.push((
            u16::from_be_bytes([d[o + 2], d[o + 3]]),
            d[o] & 0x0F,
            d[o] & 0x80 != 0,
            d[o + 5],
            ports,
        ));
        o += 8 + 4 * n;
    }
    v
}

fn states(s: &mut Session) -> Vec<(u16, u8)> {
    groups(&rtpg(s))
        .into_iter()
        .map(|(id, st, ..)| (id, st))
        .collect()
}

fn tur(s: &mut Session) -> ScsiResult {
    s.command(&[0u8; 6], 0).unwrap()
}

fn sense(r: &ScsiResult) -> (u8, u8, u8) {
    assert_eq!(r.status, 2, "expected CHECK CONDITION");
    let (asc, ascq) = r.asc().unwrap();
    (r.sense_key().unwrap(), asc, ascq)
}

/// Take every pending unit attention (TEST UNIT READY until it stops saying UNIT ATTENTION);
/// how many there were.
fn take_uas(s: &mut Session) -> usize {
    let mut n = 0;
    loop {
        let r = tur(s);
        if r.status == 2 && r.sense_key() == Some(6) {
            assert_eq!(
                r.asc(),
                Some((0x2A, 0x06)),
                "ASYMMETRIC ACCESS STATE CHANGED"
            );
            n += 1;
        } else {
            return n;
        }
    }
}

#[test]
fn both_paths_report_the_groups_and_their_own() {
    let d = daemon();
    let mut s1 = login(d.addr(), 1);
    let mut s2 = login(addr2(&d), 1);
    for s in [&mut s1, &mut s2] {
        let g = groups(&rtpg(s));
        assert_eq!(
            g,
            vec![(10, 0x0, true, 0, vec![1]), (20, 0x1, false, 0, vec![2])]
        );
        let d = rtpg(s);
        assert_eq!((d[4], d[5]), (0x10, 1), "extended header, 1 s transition");
        let inq = s.command(&[0x12, 0, 0, 0, 96, 0], 96).unwrap().data;
        assert_eq!(inq[5] & 0x30, 0x30, "TPGS = 11b");
        assert_eq!(inq[6] & 0x10, 0x10, "MULTIP");
    }
    // VPD 83h: each path names its port and group.
    for (s, port, group) in [(&mut s1, 1u16, 10u16), (&mut s2, 2, 20)] {
        let v = s.command(&[0x12, 1, 0x83, 1, 0, 0], 256).unwrap().data;
        let mut o = 4;
        let mut seen = (None, None);
        while o + 4 <= v.len() {
            let len = usize::from(v[o + 3]);
            let id = u16::from_be_bytes([v[o + 6], v[o + 7]]);
            match v[o + 1] & 0x3F {
                0x14 => seen.0 = Some(id),
                0x15 => seen.1 = Some(id),
                _ => {}
            }
            o += 4 + len;
        }
        assert_eq!(seen, (Some(port), Some(group)));
    }
    // Both paths carry I/O (active/optimized and active/non-optimized).
    assert_eq!(tur(&mut s1).status, 0);
    assert_eq!(tur(&mut s2).status, 0);
    s2.write10(8, &[0x5A; 512], 512).unwrap();
    assert_eq!(s1.read10(8, 1, 512).unwrap(), vec![0x5A; 512]);
}

#[test]
fn the_operator_swaps_states_through_transitioning_and_they_survive_a_restart() {
    let mut d = daemon();
    let mut s1 = login(d.addr(), 1);
    let mut s2 = login(addr2(&d), 1);
    // A swap of the two active states is immediate: both paths serve I/O before and after.
    let t0 = Instant::now();
    let out = admin_ok(
        &d,
        &[
            "set-alua",
            IQN,
            "10=active/non-optimized",
            "20=active/optimized",
        ],
    );
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        out.contains("alua group 10 active/non-optimized")
            && out.contains("alua group 20 active/optimized"),
        "{out}"
    );
    assert_eq!(take_uas(&mut s1), 1);
    assert_eq!(take_uas(&mut s2), 1);
    assert_eq!(tur(&mut s1).status, 0);
    let g = groups(&rtpg(&mut s2));
    assert_eq!(
        g.iter().map(|x| (x.0, x.1, x.3)).collect::<Vec<_>>(),
        vec![(10, 0x1, 0x02), (20, 0x0, 0x02)],
        "states, set implicitly"
    );
    // Into standby: through transitioning, in the background; meanwhile path 1 sees it.
    let sock = d.admin_socket();
    let admin = thread::spawn(move || {
        let t0 = Instant::now();
        let out = common::run(
            env!("CARGO_BIN_EXE_ferrite"),
            &[
                "admin",
                "--socket",
                sock.to_str().unwrap(),
                "set-alua",
                IQN,
                "10=standby",
            ],
            Duration::from_secs(30),
        )
        .ok();
        (out.stdout, t0.elapsed())
    });
    // ASYMMETRIC ACCESS STATE CHANGED, then NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC
    // ACCESS STATE TRANSITION while it lasts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_transition = false;
    while Instant::now() < deadline && !saw_transition && !admin.is_finished() {
        let r = tur(&mut s1);
        saw_transition = r.status == 2 && sense(&r) == (0x02, 0x04, 0x0A);
    }
    let (out, took) = admin.join().unwrap();
    assert!(saw_transition, "no transitioning state seen");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(out.contains("alua group 10 standby"), "{out}");
    // The end of the transition is a change too.
    take_uas(&mut s1);
    assert_eq!(sense(&tur(&mut s1)), (0x02, 0x04, 0x0B));
    assert!(take_uas(&mut s2) >= 1);
    assert_eq!(tur(&mut s2).status, 0);
    // Standby, then unavailable: path 2 refuses I/O with the state's sense, path 1 carries it.
    admin_ok(&d, &["set-alua", IQN, "20=standby", "10=active/optimized"]);
    take_uas(&mut s1);
    take_uas(&mut s2);
    assert_eq!(sense(&tur(&mut s2)), (0x02, 0x04, 0x0B));
    assert_eq!(
        s2.command(&[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8)
            .unwrap()
            .status,
        0
    );
    s1.write10(0, &[1; 512], 512).unwrap();
    admin_ok(&d, &["set-alua", IQN, "20=unavailable"]);
    assert!(take_uas(&mut s1) >= 1, "every I_T nexus hears of a change");
    take_uas(&mut s2);
    assert_eq!(sense(&tur(&mut s2)), (0x02, 0x04, 0x0C));
    let r = s2.read10(0, 1, 512);
    assert!(r.is_err(), "a read through an unavailable port: {r:?}");
    assert_eq!(s1.read10(0, 1, 512).unwrap(), vec![1; 512]);
    // Saved: the file has the states; a restart brings them back.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    assert!(text.contains("state = \"unavailable\""), "{text}");
    drop((s1, s2));
    let path = d.config_path();
    d.restart(&path);
    let mut s2 = login(addr2(&d), 1);
    assert_eq!(states(&mut s2), vec![(10, 0x0), (20, 0x3)]);
    assert_eq!(sense(&tur(&mut s2)), (0x02, 0x04, 0x0C));
}

#[test]
fn set_target_port_groups_from_an_initiator_is_saved() {
    let mut d = daemon();
    let mut s2 = login(addr2(&d), 1);
    let mut s1 = login(d.addr(), 1);
    // Through path 2: make group 20 active/optimized and group 10 standby.
    let list = [0, 0, 0, 0, 0x00, 0, 0, 20, 0x02, 0, 0, 10];
    let cdb = [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0];
    let r = s2.write_command(&cdb, &list).unwrap();
    assert_eq!(r.status, 0, "SET TARGET PORT GROUPS: {:02x?}", r.sense);
    assert_eq!(take_uas(&mut s2), 0, "the sender hears nothing");
    assert_eq!(take_uas(&mut s1), 1, "the other path hears of it");
    assert_eq!(
        sense(&tur(&mut s1)),
        (0x02, 0x04, 0x0B),
        "and is standby now"
    );
    let g = groups(&rtpg(&mut s2));
    assert_eq!(
        (g[0].1, g[0].3),
        (0x2, 0x01),
        "status: by SET TARGET PORT GROUPS"
    );
    // The daemon saves it (shortly) and shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(d.config_path()).unwrap();
        if text.contains("state = \"standby\"") {
            break;
        }
        assert!(Instant::now() < deadline, "not saved:\n{text}");
        thread::sleep(Duration::from_millis(50));
    }
    let v = admin_json(&d, &["targets"]);
    let alua = &v["targets"][0]["alua_groups"];
    assert_eq!(alua[0]["state"], "standby");
    assert_eq!(alua[0]["changed_by"], "initiator");
    // An unrelated change keeps the initiator's states (it works on the configuration as it
    // stands, not as it was).
    admin_ok(&d, &["add-lun", IQN, "ram:4M"]);
    let r = tur(&mut s2);
    assert_eq!(
        sense(&r),
        (0x06, 0x3F, 0x0E),
        "REPORTED LUNS DATA HAS CHANGED"
    );
    assert_eq!(states(&mut s2), vec![(10, 0x2), (20, 0x0)]);
    drop((s1, s2));
    let path = d.config_path();
    d.restart(&path);
    let mut s2 = login(addr2(&d), 1);
    assert_eq!(states(&mut s2), vec![(10, 0x2), (20, 0x0)]);
}

#[test]
fn several_isids_into_one_group_each_see_its_state() {
    let d = daemon();
    admin_ok(&d, &["set-alua", IQN, "10=standby"]);
    // The Microsoft initiator's MPIO: one name, several ISIDs, one portal group.
    let mut a = login(d.addr(), 0x400001);
    let mut b = login(d.addr(), 0x400002);
    let mut c = login(addr2(&d), 0x400003);
    for s in [&mut a, &mut b] {
        assert_eq!(sense(&tur(s)), (0x02, 0x04, 0x0B));
        assert_eq!(states(s), vec![(10, 0x2), (20, 0x1)]);
    }
    assert_eq!(tur(&mut c).status, 0);
}

#[test]
fn configuration_and_admin_refuse_what_alua_cannot_be() {
    let d = daemon();
    let e = admin_err(&d, &["set-alua", IQN, "10=sideways"]);
    assert!(e.contains("unknown ALUA state"), "{e}");
    let e = admin_err(&d, &["set-alua", IQN, "10=transitioning"]);
    assert!(e.contains("unknown ALUA state"), "{e}");
    let e = admin_err(&d, &["set-alua", IQN, "30=standby"]);
    assert!(e.contains("no ALUA group 30"), "{e}");
    // A new portal group must say which ALUA group it joins.
    let e = admin_err(&d, &["add-group", IQN, "3"]);
    assert!(e.contains("portal group 3 is in no alua_group"), "{e}");
    admin_ok(&d, &["add-group", IQN, "3", "alua_group=20"]);
    // Moving portal group 3 into a new ALUA group of its own.
    let out = admin_ok(
        &d,
        &[
            "add-alua-group",
            IQN,
            "30",
            "portal_groups=3",
            "state=standby",
        ],
    );
    assert!(
        out.contains("alua group 30 standby portal groups [3]"),
        "{out}"
    );
    let out = admin_ok(&d, &["targets"]);
    assert!(
        out.contains("alua group 20 active/non-optimized portal groups [2]"),
        "{out}"
    );
    let e = admin_err(&d, &["remove-alua-group", IQN, "30"]);
    assert!(e.contains("portal group 3 is in no alua_group"), "{e}");
    admin_ok(&d, &["remove-group", IQN, "3"]);
    admin_ok(&d, &["remove-alua-group", IQN, "30"]);
    admin_ok(&d, &["set-alua-transition", IQN, "0"]);
    // PREF moves with set-alua-group; `alua` shows the groups.
    admin_ok(&d, &["set-alua-group", IQN, "10", "preferred=no"]);
    let out = admin_ok(&d, &["set-alua-group", IQN, "20", "preferred=yes"]);
    assert!(
        out.contains("alua group 20 active/non-optimized preferred"),
        "{out}"
    );
    let out = admin_ok(&d, &["alua"]);
    assert!(
        out.contains("alua group 10 active/optimized portal groups [1]"),
        "{out}"
    );
    let mut s = login(d.addr(), 1);
    let g = groups(&rtpg(&mut s));
    assert_eq!((g[0].2, g[1].2), (false, true), "PREF bits");
    let v = admin_json(&d, &["targets"]);
    assert_eq!(v["targets"][0]["alua_transition_secs"], 0);
    // With no transition time, a change is immediate.
    let t0 = Instant::now();
    admin_ok(&d, &["set-alua", IQN, "20=standby"]);
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_target_without_alua_configuration_has_one_active_group() {
    let d = Daemon::start(Opts {
        second_portal: true,
        ..Opts::default()
    });
    let mut s = login(d.addr(), 1);
    let g = groups(&rtpg(&mut s));
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].0, g[0].1), (1, 0x0));
    assert!(!g[0].4.is_empty());
    // It can still be changed from the admin API (the default group is written out).
    admin_ok(&d, &["set-alua-transition", IQN, "0"]);
    admin_ok(&d, &["set-alua", IQN, "1=active/non-optimized"]);
    take_uas(&mut s);
    assert_eq!(states(&mut s), vec![(1, 0x1)]);
}
