//! Target portal groups and node ACLs on the wire: SendTargets lists every portal with its group
//! tag (IPv6 in brackets) and hides disabled groups when `tpg_enabled_sendtargets` is on; logins
//! through a disabled group or a portal the target is not behind are refused with the exact
//! status; sessions are per initiator port *and* portal group (RFC 7143 §4.4.3); an initiator
//! without an ACL is refused and discovers nothing, and each ACL's LUN map decides what
//! REPORT LUNS shows and which logical unit each LUN number reaches.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::initiator::{LoginError, LoginOpts, Session};
use common::tpg::{
    admin_json, admin_ok, alive, closed_within, discover_ok, login_status, ls_luns, sa, st, LIMIT,
};
use common::{run, Daemon, Opts, Rng, IQN, SECOND_IP};

const OTHER: &str = "iqn.2026-11.io.ferrite:other";
const INIT: &str = "iqn.2026-11.io.ferrite:test-initiator";
const INIT_A: &str = "iqn.2026-11.io.ferrite:init-a";
const INIT_B: &str = "iqn.2026-11.io.ferrite:init-b";
const INIT_C: &str = "iqn.2026-11.io.ferrite:init-c";
const STRANGER: &str = "iqn.2026-11.io.ferrite:stranger";

// RFC 7143 §11.13.5 status classes and details.
const AUTHORIZATION_FAILURE: Option<(u8, u8)> = Some((0x02, 0x02));
const NOT_FOUND: Option<(u8, u8)> = Some((0x02, 0x03));
const SESSION_DOES_NOT_EXIST: Option<(u8, u8)> = Some((0x02, 0x0a));
const SERVICE_UNAVAILABLE: Option<(u8, u8)> = Some((0x03, 0x01));

/// Target IQN with group 1 on 127.0.0.1 and [::1] and group 2 (enabled or not) on 127.0.0.2
/// and 127.0.0.3; target OTHER with group 1 on 127.0.0.4 only.
fn two_groups(group2_enabled: bool) -> Daemon {
    let config = r#"
        [settings]
        tpg_enabled_sendtargets = true

        [[target]]
        name = "iqn.2026-11.io.ferrite:itest"
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{port}", "[::1]:{xport0}"]
        [[target.portal_group]]
        tag = 2
        portals = ["127.0.0.2:{port2}", "127.0.0.3:{xport1}"]
        enabled = ENABLED
        [[target.lun]]
        id = 0
        backstore = "ram:16M"

        [[target]]
        name = "iqn.2026-11.io.ferrite:other"
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.4:{xport2}"]
        [[target.lun]]
        id = 0
        backstore = "ram:8M"
    "#
    .replace("ENABLED", if group2_enabled { "true" } else { "false" });
    Daemon::start(Opts {
        config: Some(config),
        second_portal: true,
        extra_portals: vec!["::1".into(), "127.0.0.3".into(), "127.0.0.4".into()],
        ..Opts::default()
    })
}

/// The four portals of IQN and the one of OTHER, as (group 1, group 2, other).
fn portals(d: &Daemon) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        vec![
            format!("127.0.0.1:{},1", d.port),
            format!("[::1]:{},1", d.extra_ports[0]),
        ],
        vec![
            format!("{SECOND_IP}:{},2", d.port2),
            format!("127.0.0.3:{},2", d.extra_ports[1]),
        ],
        vec![format!("127.0.0.4:{},1", d.extra_ports[2])],
    )
}

fn opts(initiator: &'static str, target: &'static str) -> LoginOpts<'static> {
    LoginOpts {
        initiator,
        target,
        ..LoginOpts::default()
    }
}

#[test]
fn send_targets_lists_every_group_with_its_tag_and_hides_disabled_ones() {
    let d = two_groups(false);
    let (g1, g2, other) = portals(&d);
    let v6 = sa("::1", d.extra_ports[0]);
    // tpg_enabled_sendtargets on: group 2 is left out, through either portal of group 1 (and
    // IPv6 addresses come in brackets, RFC 7143 §13.8).
    let want = st(&[(IQN, &g1), (OTHER, &other)]);
    assert_eq!(discover_ok(d.addr(), INIT), want);
    assert_eq!(discover_ok(v6, INIT), want);
    // libiscsi agrees (one URL per portal).
    let urls = |via: &str| {
        let out = run("iscsi-ls", &["--url", &format!("iscsi://{via}")], LIMIT).ok();
        let mut v: Vec<String> = out.stdout.lines().map(|l| l.trim().to_string()).collect();
        v.sort();
        v
    };
    let mut want_urls = vec![
        format!("iscsi://127.0.0.1:{}/{IQN}/0", d.port),
        format!("iscsi://[::1]:{}/{IQN}/0", d.extra_ports[0]),
        format!("iscsi://127.0.0.4:{}/{OTHER}/0", d.extra_ports[2]),
    ];
    want_urls.sort();
    assert_eq!(urls(&format!("[::1]:{}", d.extra_ports[0])), want_urls);

    // Off: the disabled group is listed too, each portal with its own tag.
    admin_ok(&d, &["set-discovery", "sendtargets_enabled_only=no"]);
    let all: Vec<String> = g1.iter().chain(&g2).cloned().collect();
    let want = st(&[(IQN, &all), (OTHER, &other)]);
    assert_eq!(discover_ok(d.addr(), INIT), want);
    assert_eq!(discover_ok(v6, INIT), want);
    let mut want_urls: Vec<String> = want_urls
        .into_iter()
        .chain([
            format!("iscsi://{SECOND_IP}:{}/{IQN}/0", d.port2),
            format!("iscsi://127.0.0.3:{}/{IQN}/0", d.extra_ports[1]),
        ])
        .collect();
    want_urls.sort();
    assert_eq!(urls(&d.portal()), want_urls);

    // And on again.
    admin_ok(&d, &["set-discovery", "sendtargets_enabled_only=yes"]);
    assert_eq!(
        discover_ok(d.addr(), INIT),
        st(&[(IQN, &g1), (OTHER, &other)])
    );
}

#[test]
fn logins_are_refused_through_a_disabled_group_or_a_foreign_portal() {
    let d = two_groups(false);
    let g2a = sa(SECOND_IP, d.port2);
    let g2b = sa("127.0.0.3", d.extra_ports[1]);
    let v6 = sa("::1", d.extra_ports[0]);
    // Group 2 is disabled: Service Unavailable (0301) through both its portals.
    assert_eq!(login_status(g2a, &opts(INIT, IQN)), SERVICE_UNAVAILABLE);
    assert_eq!(login_status(g2b, &opts(INIT, IQN)), SERVICE_UNAVAILABLE);
    // OTHER is not behind group 1's portals, and no target has this name: Not Found (0203).
    assert_eq!(login_status(d.addr(), &opts(INIT, OTHER)), NOT_FOUND);
    assert_eq!(login_status(v6, &opts(INIT, OTHER)), NOT_FOUND);
    assert_eq!(
        login_status(d.addr(), &opts(INIT, "iqn.2026-11.io.ferrite:nosuch")),
        NOT_FOUND
    );
    // IQN is not behind OTHER's portal either.
    let other = sa("127.0.0.4", d.extra_ports[2]);
    assert_eq!(login_status(other, &opts(INIT, IQN)), NOT_FOUND);
    assert_eq!(login_status(other, &opts(INIT, OTHER)), None);
    // libiscsi is refused too.
    let out = run(
        "iscsi-inq",
        &[&format!("iscsi://{SECOND_IP}:{}/{IQN}/0", d.port2)],
        LIMIT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("Service unavailable") || out.stdout.contains("Service unavailable"),
        "{}",
        out.describe()
    );
    // Group 1 takes logins through both portals, and says which group it is (RFC 7143 §13.9).
    for addr in [d.addr(), v6] {
        let s = Session::connect(addr, &opts(INIT, IQN)).unwrap();
        assert!(
            s.login_keys
                .contains(&("TargetPortalGroupTag".into(), "1".into())),
            "{:?}",
            s.login_keys
        );
        s.logout().unwrap();
    }
    // Enabled, group 2 takes logins with its own tag.
    admin_ok(&d, &["enable-group", IQN, "2"]);
    for addr in [g2a, g2b] {
        let s = Session::connect(addr, &opts(INIT, IQN)).unwrap();
        assert!(
            s.login_keys
                .contains(&("TargetPortalGroupTag".into(), "2".into())),
            "{:?}",
            s.login_keys
        );
        s.logout().unwrap();
    }
}

#[test]
fn sessions_are_per_initiator_port_and_portal_group() {
    let d = two_groups(true);
    let v6 = sa("::1", d.extra_ports[0]);
    let g2 = sa("127.0.0.3", d.extra_ports[1]);
    let o = LoginOpts {
        isid: [0x80, 0, 0, 0, 0x5e, 0x55],
        ..LoginOpts::default()
    };
    // Same initiator port, same group (another portal of it): the first session is reinstated.
    let mut first = Session::login(d.addr(), &o).unwrap();
    let mut g1 = Session::login(v6, &o).unwrap();
    assert!(
        closed_within(&mut first, Duration::from_secs(10)),
        "the session in group 1 was not reinstated"
    );
    // Same initiator port, the other group: a second session; both stay.
    let mut g2s = Session::login(g2, &o).unwrap();
    assert!(alive(&mut g1), "group 1's session ended");
    assert!(alive(&mut g2s), "group 2's session ended");
    assert_ne!(g1.tsih, g2s.tsih);
    let mut data = vec![0u8; 4096];
    Rng::new(7).fill(&mut data);
    g1.write10(40, &data, 512).unwrap();
    assert_eq!(g2s.read10(40, 8, 512).unwrap(), data);

    // The admin API lists both, with the same initiator port and their own groups.
    let sessions = admin_json(&d, &["sessions"]);
    let mut seen: Vec<(u64, u64, SocketAddr)> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["initiator"], INIT, "{s:#}");
            assert_eq!(s["target"], IQN, "{s:#}");
            assert_eq!(s["isid"], "800000005e55", "{s:#}");
            (
                s["tsih"].as_u64().unwrap(),
                s["tpg_tag"].as_u64().unwrap(),
                s["peer"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (u64::from(g1.tsih), 1, g1.stream.local_addr().unwrap()),
        (u64::from(g2s.tsih), 2, g2s.stream.local_addr().unwrap()),
    ];
    want.sort();
    assert_eq!(seen, want, "{sessions:#}");

    // A connection that tries to join group 1's session through group 2: Session Does Not
    // Exist (020a), whichever portal of group 2 it uses.
    for addr in [g2, sa(SECOND_IP, d.port2)] {
        let join = LoginOpts {
            tsih: g1.tsih,
            cid: 1,
            ..o.clone()
        };
        assert_eq!(
            Session::connect(addr, &join).err(),
            Some(LoginError::Refused {
                class: 0x02,
                detail: 0x0a
            }),
            "joining TSIH {} through {addr}",
            g1.tsih
        );
    }
    // Nor may it join a TSIH that no session has.
    let nosuch = LoginOpts {
        tsih: 0x7777,
        cid: 1,
        ..o.clone()
    };
    assert_eq!(login_status(d.addr(), &nosuch), SESSION_DOES_NOT_EXIST);
    // Through the session's own group, a second connection (another CID) is refused with
    // Too Many Connections (0206): MaxConnections is 1, and the live session must survive.
    let second = LoginOpts {
        tsih: g1.tsih,
        cid: 1,
        ..o.clone()
    };
    assert_eq!(login_status(d.addr(), &second), Some((0x02, 0x06)));
    // The refused joins hurt neither session.
    assert!(alive(&mut g1));
    assert!(alive(&mut g2s));
    g1.logout().unwrap();
    g2s.logout().unwrap();
}

/// Target IQN (three LUNs of 16, 32 and 8 MiB) with three ACLs and demo mode off; target OTHER,
/// open to anyone, on the same portal.
fn acl_daemon() -> Daemon {
    let config = r#"
        [[target]]
        name = "iqn.2026-11.io.ferrite:itest"
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{port}"]
        [[target.lun]]
        id = 0
        backstore = "ram:16M"
        [[target.lun]]
        id = 1
        backstore = "ram:32M"
        [[target.lun]]
        id = 2
        backstore = "ram:8M"
        [[target.acl]]
        initiator = "iqn.2026-11.io.ferrite:init-a"
        luns = [{ mapped = 0, lun = 1 }]
        [[target.acl]]
        initiator = "iqn.2026-11.io.ferrite:init-b"
        luns = [{ mapped = 0, lun = 0 }, { mapped = 5, lun = 1 }, { mapped = 6, lun = 2, read_only = true }]
        [[target.acl]]
        initiator = "iqn.2026-11.io.ferrite:init-c"

        [[target]]
        name = "iqn.2026-11.io.ferrite:other"
        [[target.portal_group]]
        tag = 3
        portals = ["127.0.0.1:{port}"]
        [[target.lun]]
        id = 0
        backstore = "ram:8M"
    "#;
    Daemon::start(Opts {
        config: Some(config.into()),
        ..Opts::default()
    })
}

#[test]
fn an_initiator_without_an_acl_is_refused_and_discovers_nothing() {
    let d = acl_daemon();
    let p = format!("127.0.0.1:{}", d.port);
    assert_eq!(
        login_status(d.addr(), &opts(STRANGER, IQN)),
        AUTHORIZATION_FAILURE
    );
    // The open target still takes the stranger.
    assert_eq!(login_status(d.addr(), &opts(STRANGER, OTHER)), None);
    assert_eq!(
        discover_ok(d.addr(), STRANGER),
        st(&[(OTHER, &[format!("{p},3")])])
    );
    for i in [INIT_A, INIT_B, INIT_C] {
        assert_eq!(login_status(d.addr(), &opts(i, IQN)), None, "{i}");
        assert_eq!(
            discover_ok(d.addr(), i),
            st(&[(IQN, &[format!("{p},1")]), (OTHER, &[format!("{p},3")])]),
            "{i}"
        );
    }
    // libiscsi: the stranger's iscsi-ls shows only OTHER, and iscsi-inq is refused.
    let out = run(
        "iscsi-ls",
        &[
            "--initiator-name",
            STRANGER,
            "--url",
            &format!("iscsi://{p}"),
        ],
        LIMIT,
    )
    .ok();
    assert_eq!(
        out.stdout.lines().map(str::trim).collect::<Vec<_>>(),
        vec![format!("iscsi://{p}/{OTHER}/0")],
        "{}",
        out.describe()
    );
    let out = run(
        "iscsi-inq",
        &["-i", STRANGER, &format!("iscsi://{p}/{IQN}/0")],
        LIMIT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        (out.stderr.clone() + &out.stdout).contains("Authorization failure"),
        "{}",
        out.describe()
    );
}

#[test]
fn each_initiator_sees_exactly_its_mapped_luns() {
    let d = acl_daemon();
    let p = format!("127.0.0.1:{}", d.port);
    let login = |i: &'static str, lun: u64| {
        let mut s = Session::connect(d.addr(), &opts(i, IQN)).unwrap();
        s.lun = lun;
        s.clear_unit_attentions()
            .unwrap_or_else(|e| panic!("{i} LUN {lun}: {e}"));
        s
    };
    let mut a = login(INIT_A, 0);
    let mut b = login(INIT_B, 0);
    let mut c = login(INIT_C, 0);
    assert_eq!(a.report_luns().unwrap(), vec![0]);
    assert_eq!(b.report_luns().unwrap(), vec![0, 5, 6]);
    // No LUN map: every LUN under its own number.
    assert_eq!(c.report_luns().unwrap(), vec![0, 1, 2]);

    // A's LUN 0 is target LUN 1, which B sees as LUN 5 and C as LUN 1.
    let mut data = vec![0u8; 8192];
    Rng::new(0xac1).fill(&mut data);
    a.write10(100, &data, 512).unwrap();
    b.lun = 5;
    c.lun = 1;
    for s in [&mut b, &mut c] {
        s.clear_unit_attentions().unwrap();
        assert_eq!(s.read10(100, 16, 512).unwrap(), data);
    }
    // Target LUN 0 (B's and C's LUN 0) was not touched.
    for s in [&mut b, &mut c] {
        s.lun = 0;
        assert_eq!(s.read10(100, 16, 512).unwrap(), vec![0u8; 8192]);
    }
    // A has no LUN 5: LOGICAL UNIT NOT SUPPORTED (ILLEGAL REQUEST, 25h/00h).
    a.lun = 5;
    let r = a.command(&[0u8; 6], 0).unwrap();
    assert_eq!(r.status, 0x02);
    assert_eq!(r.sense_key(), Some(0x05), "{:02x?}", r.sense);
    assert_eq!(r.asc(), Some((0x25, 0x00)), "{:02x?}", r.sense);

    // libiscsi sees the same, with each LU's size behind each number.
    let ls = |i: &str| {
        let out = run(
            "iscsi-ls",
            &["-s", "--initiator-name", i, &format!("iscsi://{p}")],
            LIMIT,
        )
        .ok();
        let mut l = ls_luns(
            out.stdout
                .split("Target:")
                .find(|t| t.starts_with(IQN))
                .unwrap_or_else(|| panic!("{IQN} missing: {}", out.describe())),
        );
        l.sort();
        l
    };
    let l = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
        v.iter().map(|(n, s)| (*n, s.to_string())).collect()
    };
    assert_eq!(ls(INIT_A), l(&[(0, "31M")]));
    assert_eq!(ls(INIT_B), l(&[(0, "15M"), (5, "31M"), (6, "7M")]));
    assert_eq!(ls(INIT_C), l(&[(0, "15M"), (1, "31M"), (2, "7M")]));
    let cap = run(
        "iscsi-readcapacity16",
        &["-s", "-i", INIT_A, &format!("iscsi://{p}/{IQN}/0")],
        LIMIT,
    )
    .ok();
    assert_eq!(cap.stdout.trim(), (32u64 << 20).to_string());
    for s in [a, b, c] {
        s.logout().unwrap();
    }
    // The admin API reports the same maps.
    let t = admin_json(&d, &["targets"]);
    let acls = &t["targets"][0]["acls"];
    assert_eq!(acls[0]["luns"], serde_json::json!([0]));
    assert_eq!(acls[1]["luns"], serde_json::json!([0, 5, 6]));
    assert_eq!(acls[2]["luns"], serde_json::json!([0, 1, 2]));
}

#[test]
fn a_read_only_mapping_refuses_writes() {
    let d = acl_daemon();
    let mut b = Session::connect(d.addr(), &opts(INIT_B, IQN)).unwrap();
    b.lun = 6;
    b.clear_unit_attentions().unwrap();
    let r = b.write10_result(0, &[0xee; 512], 512).unwrap();
    // SBC-4 §4.11: DATA PROTECT, WRITE PROTECTED (27h/00h).
    assert_eq!(
        r.status, 0x02,
        "a write through a read-only mapping succeeded"
    );
    assert_eq!(r.sense_key(), Some(0x07), "{:02x?}", r.sense);
    // The same LU through C's read-write mapping takes writes.
    let mut c = Session::connect(d.addr(), &opts(INIT_C, IQN)).unwrap();
    c.lun = 2;
    c.clear_unit_attentions().unwrap();
    c.write10(0, &[0xee; 512], 512).unwrap();
}
