//! The admin API through its client, `ferrite admin`, against a running daemon: every command of
//! `ferrite admin --help`, each checked on the wire — new portals listen at once and removed ones
//! stop, LUNs and ACLs change what initiators see at once, changes that take access away end the
//! sessions that had it — and the saved configuration brings the same model back after a restart.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use common::initiator::{Chap, LoginOpts, Session};
use common::tpg::{
    admin_err, admin_json, admin_ok, alive, closed_within, discover, discover_ok, listening,
    login_status, ls_luns, sa, st, wait_until, LIMIT,
};
use common::{free_port, run, Daemon, Opts, IQN, SECOND_IP};

const IQN2: &str = "iqn.2026-11.io.ferrite:second";
const INIT: &str = "iqn.2026-11.io.ferrite:test-initiator";
const INIT_A: &str = "iqn.2026-11.io.ferrite:init-a";
const INIT_B: &str = "iqn.2026-11.io.ferrite:init-b";

const AUTHENTICATION_FAILURE: Option<(u8, u8)> = Some((0x02, 0x01));
const AUTHORIZATION_FAILURE: Option<(u8, u8)> = Some((0x02, 0x02));
const NOT_FOUND: Option<(u8, u8)> = Some((0x02, 0x03));
const SERVICE_UNAVAILABLE: Option<(u8, u8)> = Some((0x03, 0x01));
const GONE: Duration = Duration::from_secs(10);

/// IQN with group 1 on 127.0.0.1 and group 2 on 127.0.0.2, LUN 0 a 16 MiB RAM disk.
fn daemon() -> Daemon {
    Daemon::start(Opts {
        config: Some(
            r#"
            [[target]]
            name = "iqn.2026-11.io.ferrite:itest"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:{port}"]
            [[target.portal_group]]
            tag = 2
            portals = ["127.0.0.2:{port2}"]
            [[target.lun]]
            id = 0
            backstore = "ram:16M"
            "#
            .into(),
        ),
        second_portal: true,
        ..Opts::default()
    })
}

fn lo(initiator: &'static str, target: &'static str) -> LoginOpts<'static> {
    LoginOpts {
        initiator,
        target,
        ..LoginOpts::default()
    }
}

/// A session on `lun` whose unit attentions are collected.
fn session(addr: SocketAddr, o: &LoginOpts, lun: u64) -> Session {
    let mut s = Session::connect(addr, o).unwrap_or_else(|e| panic!("login: {e}"));
    s.lun = lun;
    s.clear_unit_attentions().unwrap();
    s
}

/// The next command on the session reports REPORTED LUNS DATA HAS CHANGED (06h/3Fh/0Eh).
fn assert_luns_changed_ua(s: &mut Session) {
    let r = s.command(&[0u8; 6], 0).unwrap();
    assert_eq!(r.status, 0x02, "no unit attention");
    assert_eq!(r.sense_key(), Some(0x06), "{:02x?}", r.sense);
    assert_eq!(r.asc(), Some((0x3f, 0x0e)), "{:02x?}", r.sense);
}

#[test]
fn targets_sessions_and_drop_session() {
    let d = daemon();
    let (p1, p2) = (d.portal(), format!("{SECOND_IP}:{}", d.port2));
    assert_eq!(
        admin_ok(&d, &["targets"]),
        format!(
            "target {IQN}\n\
             \x20 group 1 enabled demo-mode portals [\"{p1}\"]\n\
             \x20 group 2 enabled demo-mode portals [\"{p2}\"]\n\
             \x20 lun 0 ram:16M 16777216 bytes\n\
             \x20 alua group 1 active/optimized portal groups [1,2] (set by configuration)\n"
        )
    );
    assert_eq!(
        admin_json(&d, &["targets"]),
        json!({ "targets": [{
            "name": IQN,
            "alias": null,
            "portal_groups": [
                { "tag": 1, "enabled": true, "demo_mode": true, "authentication": false,
                  "portals": [p1], "relative_port_id": 1 },
                { "tag": 2, "enabled": true, "demo_mode": true, "authentication": false,
                  "portals": [p2], "relative_port_id": 2 },
            ],
            "luns": [{ "id": 0, "backstore": "ram:16M", "size": 16u64 << 20, "block_size": 512,
                       "read_only": false, "encrypted": false, "medium": "ready" }],
            "alua_transition_secs": 1,
            "alua_groups": [{ "id": 1, "state": "active/optimized", "transition_to": null,
                              "preferred": false, "portal_groups": [1, 2],
                              "changed_by": "configuration" }],
            "acls": [],
        }]})
    );
    assert_eq!(admin_ok(&d, &["sessions"]), "no sessions\n");
    assert_eq!(admin_json(&d, &["sessions"]), json!([]));

    let mut s = Session::login(
        d.addr(),
        &LoginOpts {
            header_digest: true,
            isid: [0x80, 0, 0, 0, 0xad, 0x01],
            ..LoginOpts::default()
        },
    )
    .unwrap();
    // The parameters are the ones negotiated: what we offered, and for the two the target
    // decides, what it declared to us during login.
    let declared = |k: &str| -> u64 { s.negotiated[k].parse().unwrap() };
    let local = s.stream.local_addr().unwrap().to_string();
    // Its I/O counters (checked in stats_show_what_the_sessions_do): only the TEST UNIT READYs
    // of the login so far.
    let mut sessions = admin_json(&d, &["sessions"]);
    let io = sessions[0]
        .as_object_mut()
        .unwrap()
        .remove("io")
        .expect("io counters");
    assert_eq!((&io["reads"], &io["writes"]), (&json!(0), &json!(0)));
    assert_eq!(
        sessions,
        json!([{
            "tsih": s.tsih,
            "initiator": INIT,
            "isid": "80000000ad01",
            "target": IQN,
            "tpg_tag": 1,
            "peer": local,
            "luns": [0],
            "connections": [0],
            "params": {
                "HeaderDigest": "CRC32C",
                "DataDigest": "None",
                "InitialR2T": true,
                "ImmediateData": false,
                "MaxRecvDataSegmentLength": declared("MaxRecvDataSegmentLength"),
                "InitiatorMaxRecvDataSegmentLength": 65536,
                "MaxBurstLength": 262144,
                "FirstBurstLength": 65536,
                "MaxOutstandingR2T": 1,
                "MaxConnections": 1,
                "ErrorRecoveryLevel": 0,
                "DefaultTime2Wait": declared("DefaultTime2Wait"),
                "DefaultTime2Retain": 0,
            },
        }]),
    );
    let text = admin_ok(&d, &["sessions"]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!(
            "TSIH {} {INIT} isid 80000000ad01 -> {IQN} tpgt 1 from {local} LUNs [0] CIDs [0]",
            s.tsih
        )
    );
    let params = lines.next().unwrap();
    for kv in [
        "HeaderDigest=CRC32C",
        "DataDigest=None",
        "MaxConnections=1",
        "InitialR2T=true",
    ] {
        assert!(params.split_whitespace().any(|x| x == kv), "{kv}: {text}");
    }

    let tsih = s.tsih.to_string();
    assert_eq!(
        admin_json(&d, &["drop-session", &tsih]),
        json!({ "dropped": s.tsih })
    );
    assert!(closed_within(&mut s, GONE), "drop-session left it open");
    assert!(wait_until(GONE, || admin_json(&d, &["sessions"]) == json!([])));
    assert!(admin_err(&d, &["drop-session", &tsih]).contains("no session with TSIH"));
    // Bad requests are refused with a message, and change nothing.
    assert!(admin_err(&d, &["frobnicate"]).contains("unrecognized subcommand"));
    assert!(admin_err(&d, &["drop-session"]).contains("required arguments were not provided"));
    assert!(admin_err(&d, &["drop-session", "x"]).contains("is not a number"));
    assert!(
        admin_err(&d, &["remove-target", "iqn.2026-11.io.ferrite:nosuch"]).contains("no target")
    );
}

/// The Asynchronous Message a connection receives next (RFC 7143 §11.9): (AsyncEvent,
/// Parameter1, Parameter2, Parameter3).
fn async_event(s: &mut Session) -> (u8, u16, u16, u16) {
    let p = s.recv().unwrap();
    assert_eq!(
        p.opcode(),
        0x32,
        "Asynchronous Message, got {:02x?}",
        &p.bhs[..8]
    );
    let w = |at: usize| u16::from_be_bytes([p.bhs[at], p.bhs[at + 1]]);
    (p.bhs[36], w(38), w(40), w(42))
}

#[test]
fn operator_drops_one_connection_then_asks_the_session_to_log_out() {
    let d = daemon();
    let o = LoginOpts {
        max_connections: 2,
        ..lo(INIT, IQN)
    };
    let mut c0 = session(d.addr(), &o, 0);
    let tsih = c0.tsih;
    let mut c1 = Session::connect(
        d.addr(),
        &LoginOpts {
            tsih,
            cid: 1,
            ..o.clone()
        },
    )
    .unwrap();
    c1.set_cmd_sn(c0.cmd_sn());
    let t = tsih.to_string();
    assert_eq!(
        admin_json(&d, &["drop-connection", &t, "1"]),
        json!({ "dropped": { "tsih": tsih, "cid": 1 } })
    );
    // Connection 1 is told (AsyncEvent 2, its CID, Time2Wait, Time2Retain), then closed.
    let (event, cid, _, _) = async_event(&mut c1);
    assert_eq!((event, cid), (2, 1));
    assert!(closed_within(&mut c1, GONE), "drop-connection left it open");
    assert!(admin_err(&d, &["drop-connection", &t, "1"]).contains("no open connection"));
    // The session goes on through connection 0.
    assert_eq!(c0.read10(0, 1, 512).unwrap().len(), 512);
    // Asked to log out within 30 s (AsyncEvent 1, Parameter3), the initiator does.
    assert_eq!(
        admin_json(&d, &["logout-session", &t, "30"]),
        json!({ "asked": { "tsih": tsih, "connections": 1, "within": 30 } })
    );
    let (event, _, _, within) = async_event(&mut c0);
    assert_eq!((event, within), (1, 30));
    c0.logout().unwrap();
    assert!(wait_until(GONE, || admin_json(&d, &["sessions"]) == json!([])));
    // One that does not log out is dropped when its time is up.
    let mut s = session(d.addr(), &lo(INIT, IQN), 0);
    let t = s.tsih.to_string();
    admin_ok(&d, &["logout-session", &t, "1"]);
    assert_eq!(async_event(&mut s).0, 1);
    // AsyncEvent 3 (all connections dropped) then the close.
    assert_eq!(async_event(&mut s).0, 3);
    assert!(closed_within(&mut s, GONE));
    assert!(admin_err(&d, &["logout-session", "999"]).contains("no session"));
}

#[test]
fn stats_show_what_the_sessions_do() {
    let d = daemon();
    let mut s = session(d.addr(), &lo(INIT, IQN), 0);
    s.write10(0, &[7u8; 64 * 1024], 512).unwrap();
    for _ in 0..4 {
        s.read10(0, 128, 512).unwrap();
    }
    // The counters since start: exactly what the session moved.
    let v = admin_json(&d, &["stats"]);
    let lun = &v["luns"].as_array().unwrap()[0];
    assert_eq!(
        (lun["target"].as_str(), lun["lun"].as_u64()),
        (Some(IQN), Some(0))
    );
    assert_eq!(lun["io"]["read_bytes"], json!(4 * 64 * 1024));
    assert_eq!(lun["io"]["written_bytes"], json!(64 * 1024));
    assert_eq!(
        (&lun["io"]["reads"], &lun["io"]["writes"]),
        (&json!(4), &json!(1))
    );
    let sess = &v["sessions"].as_array().unwrap()[0];
    assert_eq!(sess["tsih"], json!(s.tsih));
    assert_eq!(sess["io"]["read_bytes"], json!(4 * 64 * 1024));
    // The live table: rates over the interval while the session reads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.read10(0, 8, 512).unwrap();
            }
        })
    };
    let table = admin_ok(&d, &["stats", "0.5", "1"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(IQN))
        .unwrap_or_else(|| panic!("no LUN row:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let reads_per_sec: f64 = cols[2].parse().unwrap();
    let read_mib: f64 = cols[5].parse().unwrap();
    assert!(reads_per_sec > 10.0 && read_mib > 0.0, "{table}");
    assert!(table.contains("SESSION (TSIH INITIATOR)"), "{table}");
}

#[test]
fn groups_and_portals_change_live() {
    let d = daemon();
    let new_port = free_port("127.0.0.5");
    let new_portal = format!("127.0.0.5:{new_port}");
    let new_addr = sa("127.0.0.5", new_port);
    let g2 = sa(SECOND_IP, d.port2);
    assert!(!listening(new_addr));

    // A new group with a new portal: it listens as soon as the command returns.
    admin_ok(&d, &["add-group", IQN, "3"]);
    admin_ok(&d, &["add-portal", IQN, "3", &new_portal]);
    assert!(listening(new_addr), "the new portal does not listen");
    let s = Session::connect(new_addr, &lo(INIT, IQN)).unwrap();
    assert!(s
        .login_keys
        .contains(&("TargetPortalGroupTag".into(), "3".into())));
    s.logout().unwrap();
    assert_eq!(
        discover_ok(d.addr(), INIT),
        st(&[(
            IQN,
            &[
                format!("{},1", d.portal()),
                format!("{SECOND_IP}:{},2", d.port2),
                format!("{new_portal},3"),
            ]
        )])
    );
    // A portal is in one group of a target only; bad portals are refused.
    assert!(admin_err(&d, &["add-portal", IQN, "3", &new_portal]).contains("already"));
    assert!(admin_err(&d, &["add-portal", IQN, "1", &new_portal]).contains("two groups"));
    assert!(admin_err(&d, &["add-portal", IQN, "3", "nonsense"]).contains("nonsense"));
    assert!(admin_err(&d, &["add-group", IQN, "1"]).contains("twice"));
    // 65539 is not tag 3.
    assert!(admin_err(&d, &["add-group", IQN, "65539"]).contains("out of range"));

    // Demo mode off (no ACLs): nobody may log in through group 3; on again: anyone.
    admin_ok(&d, &["set-group", IQN, "3", "demo_mode=no"]);
    assert_eq!(
        login_status(new_addr, &lo(INIT, IQN)),
        AUTHORIZATION_FAILURE
    );
    admin_ok(&d, &["set-group", IQN, "3", "demo_mode=yes"]);
    assert_eq!(login_status(new_addr, &lo(INIT, IQN)), None);

    // Authentication in demo mode needs the group's credentials first.
    assert!(admin_err(&d, &["set-group", IQN, "3", "authentication=yes"]).contains("chap"));
    admin_ok(
        &d,
        &[
            "set-group-chap",
            IQN,
            "3",
            "alice",
            "alice-secret-12",
            "tgt-3",
            "tgt-3-secret-99",
        ],
    );
    admin_ok(&d, &["set-group", IQN, "3", "authentication=yes"]);
    let t = admin_json(&d, &["targets"]);
    assert_eq!(
        t["targets"][0]["portal_groups"][2],
        json!({ "tag": 3, "enabled": true, "demo_mode": true, "authentication": true,
                "portals": [new_portal], "relative_port_id": 3 })
    );
    assert_eq!(
        login_status(new_addr, &lo(INIT, IQN)),
        AUTHENTICATION_FAILURE
    );
    let chap = LoginOpts {
        chap: Some(Chap::mutual(
            "alice",
            "alice-secret-12",
            "tgt-3",
            "tgt-3-secret-99",
        )),
        ..lo(INIT, IQN)
    };
    assert_eq!(login_status(new_addr, &chap), None);
    let out = run(
        "iscsi-inq",
        &[&format!(
            "iscsi://alice%alice-secret-12@{new_portal}/{IQN}/0"
        )],
        LIMIT,
    );
    assert!(out.status.success(), "{}", out.describe());
    // Group 1 did not change.
    assert_eq!(login_status(d.addr(), &lo(INIT, IQN)), None);

    // Disabling a group ends its sessions and refuses logins; SendTargets hides it.
    let mut in_g2 = session(g2, &lo(INIT, IQN), 0);
    let mut in_g1 = Session::login(
        d.addr(),
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 0x61],
            ..lo(INIT, IQN)
        },
    )
    .unwrap();
    admin_ok(&d, &["disable-group", IQN, "2"]);
    assert!(
        closed_within(&mut in_g2, GONE),
        "group 2's session survived"
    );
    assert!(alive(&mut in_g1), "group 1's session ended");
    assert_eq!(login_status(g2, &lo(INIT, IQN)), SERVICE_UNAVAILABLE);
    assert!(!discover_ok(d.addr(), INIT)
        .iter()
        .any(|(_, v)| v.ends_with(",2")));
    admin_ok(&d, &["enable-group", IQN, "2"]);
    assert_eq!(login_status(g2, &lo(INIT, IQN)), None);

    // Removing the portal stops the listener; removing the group forgets it.
    admin_ok(&d, &["remove-portal", IQN, "3", &new_portal]);
    assert!(
        wait_until(GONE, || !listening(new_addr)),
        "the removed portal still listens"
    );
    assert!(admin_err(&d, &["remove-portal", IQN, "3", &new_portal]).contains("not in the group"));
    admin_ok(&d, &["remove-group", IQN, "3"]);
    let t = admin_json(&d, &["targets"]);
    let tags: Vec<u64> = t["targets"][0]["portal_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["tag"].as_u64().unwrap())
        .collect();
    assert_eq!(tags, vec![1, 2]);
    assert!(admin_err(&d, &["remove-group", IQN, "3"]).contains("no portal group 3"));
    assert!(alive(&mut in_g1));
    in_g1.logout().unwrap();
}

#[test]
fn targets_luns_and_acls_change_live() {
    let d = daemon();
    let p = d.portal();
    // A new target on the same portal, group 1, open to anyone (no ACLs yet).
    admin_ok(&d, &["add-target", IQN2, &p]);
    assert_eq!(
        discover_ok(d.addr(), INIT),
        st(&[
            (
                IQN,
                &[format!("{p},1"), format!("{SECOND_IP}:{},2", d.port2)]
            ),
            (IQN2, &[format!("{p},1")]),
        ])
    );
    assert!(admin_err(&d, &["add-target", IQN2, &p]).contains("exists"));
    // LUNs appear at once, to libiscsi and to a session that is already open.
    admin_ok(&d, &["add-lun", IQN2, "ram:8M"]);
    let mut open = session(d.addr(), &lo(INIT, IQN2), 0);
    admin_ok(&d, &["add-lun", IQN2, "ram:4M", "lun=3", "read_only=yes"]);
    let ls = || {
        let out = run("iscsi-ls", &["-s", &format!("iscsi://{p}")], LIMIT).ok();
        let section = out
            .stdout
            .split("Target:")
            .find(|t| t.starts_with(IQN2))
            .unwrap_or_else(|| panic!("{IQN2} missing: {}", out.describe()))
            .to_string();
        ls_luns(&section)
    };
    assert_eq!(ls(), vec![(0, "7M".to_string()), (3, "3M".to_string())]);
    assert_luns_changed_ua(&mut open);
    assert_eq!(open.report_luns().unwrap(), vec![0, 3]);
    let t = admin_json(&d, &["targets"]);
    assert_eq!(
        t["targets"][1]["luns"],
        json!([
            { "id": 0, "backstore": "ram:8M", "size": 8u64 << 20, "block_size": 512, "read_only": false,
              "encrypted": false, "medium": "ready" },
            { "id": 3, "backstore": "ram:4M", "size": 4u64 << 20, "block_size": 512, "read_only": true,
              "encrypted": false, "medium": "ready" },
        ])
    );
    admin_ok(&d, &["remove-lun", IQN2, "3"]);
    assert_eq!(ls(), vec![(0, "7M".to_string())]);
    assert_luns_changed_ua(&mut open);
    assert_eq!(open.report_luns().unwrap(), vec![0]);
    assert!(admin_err(&d, &["remove-lun", IQN2, "3"]).contains("no LUN 3"));

    // The first ACL turns demo mode off: the open session (no ACL of its own) ends.
    admin_ok(&d, &["add-acl", IQN2, INIT_A, "map=0:0"]);
    assert!(
        closed_within(&mut open, GONE),
        "the demo-mode session survived"
    );
    assert_eq!(
        login_status(d.addr(), &lo(INIT, IQN2)),
        AUTHORIZATION_FAILURE
    );
    admin_ok(&d, &["add-acl", IQN2, INIT_B, "map=7:0:ro"]);
    assert!(admin_err(&d, &["add-acl", IQN2, INIT_B]).contains("exists"));
    assert!(admin_err(&d, &["add-acl", IQN2, "iqn.2026-11.x:y", "map=1:9"]).contains("LUN 9"));
    let mut a = session(d.addr(), &lo(INIT_A, IQN2), 0);
    let mut b = session(d.addr(), &lo(INIT_B, IQN2), 7);
    assert_eq!(a.report_luns().unwrap(), vec![0]);
    assert_eq!(b.report_luns().unwrap(), vec![7]);
    // Target LUN 0, written as A's LUN 0, read as B's LUN 7.
    a.write10(3, &[0x3c; 1024], 512).unwrap();
    assert_eq!(b.read10(3, 2, 512).unwrap(), vec![0x3c; 1024]);
    let t = admin_json(&d, &["targets"]);
    assert_eq!(
        t["targets"][1]["acls"],
        json!([
            { "initiator": INIT_A, "chap": false, "luns": [0] },
            { "initiator": INIT_B, "chap": false, "luns": [7] },
        ])
    );

    // Per-ACL CHAP: optional while the group does not require authentication, then required.
    admin_ok(&d, &["set-chap", IQN2, INIT_A, "a-user", "a-secret-1234"]);
    let a_chap = |secret: &str| LoginOpts {
        chap: Some(Chap::new("a-user", secret)),
        isid: [0x80, 0, 0, 0, 0, 0xa2],
        ..lo(INIT_A, IQN2)
    };
    assert_eq!(login_status(d.addr(), &a_chap("a-secret-1234")), None);
    assert_eq!(
        login_status(d.addr(), &a_chap("a-secret-9999")),
        AUTHENTICATION_FAILURE
    );
    admin_ok(&d, &["set-group", IQN2, "1", "authentication=yes"]);
    assert_eq!(
        login_status(
            d.addr(),
            &LoginOpts {
                isid: [0x80, 0, 0, 0, 0, 0xa3],
                ..lo(INIT_A, IQN2)
            }
        ),
        AUTHENTICATION_FAILURE
    );
    assert_eq!(login_status(d.addr(), &a_chap("a-secret-1234")), None);
    assert_eq!(
        login_status(d.addr(), &lo(INIT_B, IQN2)),
        AUTHENTICATION_FAILURE,
        "B has no credentials and the group requires CHAP"
    );
    assert_eq!(
        admin_json(&d, &["targets"])["targets"][1]["acls"][0]["chap"],
        true
    );
    // USER '-' clears the credentials; B gets mutual ones.
    admin_ok(&d, &["set-chap", IQN2, INIT_A, "-"]);
    assert_eq!(
        admin_json(&d, &["targets"])["targets"][1]["acls"][0]["chap"],
        false
    );
    admin_ok(
        &d,
        &[
            "set-chap",
            IQN2,
            INIT_B,
            "b-user",
            "b-secret-1234",
            "tgt-b",
            "tgt-b-secret-99",
        ],
    );
    let b_mutual = LoginOpts {
        chap: Some(Chap::mutual(
            "b-user",
            "b-secret-1234",
            "tgt-b",
            "tgt-b-secret-99",
        )),
        isid: [0x80, 0, 0, 0, 0, 0xb2],
        ..lo(INIT_B, IQN2)
    };
    assert_eq!(login_status(d.addr(), &b_mutual), None);
    admin_ok(&d, &["set-group", IQN2, "1", "authentication=no"]);

    // Removing an ACL ends the sessions that used it; the others stay.
    admin_ok(&d, &["remove-acl", IQN2, INIT_A]);
    assert!(closed_within(&mut a, GONE), "A's session survived its ACL");
    assert!(alive(&mut b), "B's session ended with A's ACL");
    assert_eq!(
        login_status(d.addr(), &lo(INIT_A, IQN2)),
        AUTHORIZATION_FAILURE
    );
    assert!(admin_err(&d, &["remove-acl", IQN2, INIT_A]).contains("no such ACL"));

    // Removing the target ends its sessions and forgets it.
    admin_ok(&d, &["remove-target", IQN2]);
    assert!(
        closed_within(&mut b, GONE),
        "B's session survived its target"
    );
    assert_eq!(login_status(d.addr(), &lo(INIT_B, IQN2)), NOT_FOUND);
    assert_eq!(
        discover_ok(d.addr(), INIT),
        st(&[(
            IQN,
            &[format!("{p},1"), format!("{SECOND_IP}:{},2", d.port2)]
        )])
    );
    assert_eq!(
        admin_json(&d, &["targets"])["targets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn discovery_settings_export_save_and_restart() {
    let mut d = daemon();
    let p = d.portal();
    // Discovery CHAP on and off.
    admin_ok(&d, &["set-discovery", "chap=disco:disco-secret-12"]);
    let disco = |chap: Option<Chap>| {
        discover(
            d.addr(),
            &LoginOpts {
                chap,
                ..LoginOpts::default()
            },
        )
    };
    assert_eq!(
        disco(None).err(),
        Some(common::initiator::LoginError::Refused {
            class: 0x02,
            detail: 0x01
        })
    );
    assert!(disco(Some(Chap::new("disco", "disco-secret-12"))).is_ok());
    let out = run("iscsi-ls", &["--url", &format!("iscsi://{p}")], LIMIT);
    assert!(!out.status.success(), "{}", out.describe());
    let out = run(
        "iscsi-ls",
        &["--url", &format!("iscsi://disco%disco-secret-12@{p}")],
        LIMIT,
    )
    .ok();
    assert!(out.stdout.contains(IQN), "{}", out.describe());
    assert!(admin_err(&d, &["set-discovery", "chap=disco:short"]).contains("shorter"));
    admin_ok(&d, &["set-discovery", "chap=none"]);
    assert!(disco(None).is_ok());

    // A model with a bit of everything.
    admin_ok(&d, &["set-discovery", "sendtargets_enabled_only=no"]);
    admin_ok(&d, &["disable-group", IQN, "2"]);
    let file = format!("file:{}/lun1.img:8M", d.dir.path().display());
    admin_ok(&d, &["add-lun", IQN, &file, "block_size=4096"]);
    admin_ok(&d, &["add-target", IQN2, &p]);
    admin_ok(&d, &["add-lun", IQN2, "ram:8M", "lun=2"]);
    admin_ok(&d, &["add-acl", IQN2, INIT_A, "map=0:2"]);
    admin_ok(&d, &["set-chap", IQN2, INIT_A, "a-user", "a-secret-1234"]);
    admin_ok(&d, &["add-acl", IQN2, INIT_B]);
    admin_ok(&d, &["set-group-chap", IQN2, "1", "grp", "grp-secret-1234"]);

    // export is the configuration in force, and every change was saved to the --config file.
    let exported = admin_json(&d, &["export"])["toml"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(admin_ok(&d, &["export"]), exported);
    assert_eq!(fs::read_to_string(d.config_path()).unwrap(), exported);
    let v: toml::Value = toml::from_str(&exported).unwrap();
    assert_eq!(
        v["settings"]["tpg_enabled_sendtargets"].as_bool(),
        Some(false)
    );
    assert_eq!(
        v["target"][0]["portal_group"][1]["enabled"].as_bool(),
        Some(false)
    );
    assert_eq!(
        v["target"][0]["lun"][1]["block_size"].as_integer(),
        Some(4096)
    );
    assert_eq!(v["target"][1]["name"].as_str(), Some(IQN2));
    assert_eq!(
        v["target"][1]["acl"][0]["luns"][0]["lun"].as_integer(),
        Some(2)
    );
    assert_eq!(
        v["target"][1]["acl"][0]["chap"]["user"].as_str(),
        Some("a-user")
    );
    // save: to the --config file by default, or anywhere.
    let copy = d.dir.path().join("copy.toml");
    assert_eq!(
        admin_json(&d, &["save"]),
        json!({ "saved": d.config_path() })
    );
    admin_ok(&d, &["save", &copy.display().to_string()]);
    assert_eq!(fs::read_to_string(&copy).unwrap(), exported);
    // A relative path is relative to the client's directory, not the daemon's.
    let script = format!(
        "cd '{}' && exec '{}' admin --socket '{}' save relative.toml",
        d.dir.path().display(),
        env!("CARGO_BIN_EXE_ferrite"),
        d.admin_socket().display()
    );
    run("sh", &["-c", &script], LIMIT).ok();
    assert_eq!(
        fs::read_to_string(d.dir.path().join("relative.toml")).unwrap(),
        exported
    );
    assert_eq!(fs::read_to_string(d.config_path()).unwrap(), exported);

    // Restarted from the saved file, the daemon has the same model.
    let mut a = session(
        d.addr(),
        &LoginOpts {
            chap: Some(Chap::new("a-user", "a-secret-1234")),
            ..lo(INIT_A, IQN2)
        },
        0,
    );
    a.write10(9, &[0x9a; 512], 512).unwrap();
    let before = admin_json(&d, &["targets"]);
    d.restart(&copy);
    assert_eq!(admin_json(&d, &["targets"]), before);
    assert_eq!(admin_json(&d, &["sessions"]), json!([]));
    assert_eq!(
        admin_json(&d, &["export"])["toml"].as_str(),
        Some(exported.as_str())
    );
    // And behaves the same: A's map and credentials, the hidden-or-not setting, group 2 off.
    let mut a = session(
        d.addr(),
        &LoginOpts {
            chap: Some(Chap::new("a-user", "a-secret-1234")),
            ..lo(INIT_A, IQN2)
        },
        0,
    );
    assert_eq!(a.report_luns().unwrap(), vec![0]);
    a.logout().unwrap();
    assert_eq!(
        login_status(sa(SECOND_IP, d.port2), &lo(INIT, IQN)),
        SERVICE_UNAVAILABLE
    );
    let listed = discover_ok(d.addr(), INIT_A);
    assert!(listed.contains(&("TargetAddress".into(), format!("{SECOND_IP}:{},2", d.port2))));
}

#[test]
fn relative_port_ids_survive_a_restart() {
    let mut d = daemon();
    admin_ok(&d, &["add-target", IQN2, &d.portal()]);
    admin_ok(&d, &["remove-group", IQN, "1"]);
    let ids = |d: &Daemon| -> Vec<(String, u64, u64)> {
        let t = admin_json(d, &["targets"]);
        t["targets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| {
                t["portal_groups"].as_array().unwrap().iter().map(|g| {
                    (
                        t["name"].as_str().unwrap().to_string(),
                        g["tag"].as_u64().unwrap(),
                        g["relative_port_id"].as_u64().unwrap(),
                    )
                })
            })
            .collect()
    };
    let before = ids(&d);
    // The relative target port identifier is the group's tag: unique within each target
    // (SPC-4 §7.8.6) and independent of configuration order.
    assert_eq!(
        before,
        vec![(IQN.to_string(), 2, 2), (IQN2.to_string(), 1, 1)]
    );
    let path = d.config_path();
    d.restart(&path);
    assert_eq!(
        ids(&d),
        before,
        "(target, tag, relative port id) after the restart"
    );
}

#[test]
fn admin_help_lists_every_command_exercised_here() {
    let out = run(env!("CARGO_BIN_EXE_ferrite"), &["admin", "--help"], LIMIT).ok();
    let commands: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line starts two spaces in; wrapped help text further in.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|c| c.split_whitespace().next())
        .collect();
    let tested = [
        "targets",
        "sessions",
        "stats",
        "drop-session",
        "drop-connection",
        "logout-session",
        "add-target",
        "remove-target",
        "add-group",
        "remove-group",
        "enable-group",
        "disable-group",
        "set-group",
        "add-portal",
        "remove-portal",
        "add-lun",
        "remove-lun",
        "add-acl",
        "remove-acl",
        "set-chap",
        "set-group-chap",
        "set-discovery",
        "export",
        "save",
        // Exercised in reservations.rs (operator_sees_and_clears_reservations_live).
        "pr-show",
        "pr-clear",
        // Exercised in cluster.rs.
        "cluster",
        // Exercised in alua.rs.
        "alua",
        "set-alua",
        "add-alua-group",
        "set-alua-group",
        "remove-alua-group",
        "set-alua-transition",
    ];
    let mut listed: Vec<&str> = commands.clone();
    listed.sort();
    let mut want = tested.to_vec();
    want.sort();
    assert_eq!(listed, want, "ferrite admin --help:\n{}", out.stdout);
}
