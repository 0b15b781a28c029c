//! Prometheus metrics (`settings.metrics_listen`): scraped over HTTP while the repo's initiator
//! moves a known number of bytes, logs in wrongly, meets errors and resets a LUN; every counter
//! must move by exactly what happened.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::initiator::{LoginError, LoginOpts, Session};
use common::{Daemon, Opts, IQN};

const ALLOWED: &str = "iqn.2026-11.io.ferrite:metrics-allowed";

fn daemon() -> (Daemon, SocketAddr) {
    let cfg = format!(
        r#"
        [settings]
        metrics_listen = "127.0.0.3:{{xport0}}"
        [[target]]
        name = "{IQN}"
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{{port}}"]
        [[target.lun]]
        id = 0
        backstore = "ram:16M"
        [[target.acl]]
        initiator = "{ALLOWED}"
        "#
    );
    let d = Daemon::start(Opts {
        config: Some(cfg),
        extra_portals: vec!["127.0.0.3".into()],
        ..Opts::default()
    });
    let addr = SocketAddr::new("127.0.0.3".parse().unwrap(), d.extra_ports[0]);
    (d, addr)
}

/// One scrape: every sample line as `name{labels}` → value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ferrite\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

fn lun(name: &str, extra: &str) -> String {
    format!("ferrite_{name}{{target=\"{IQN}\",lun=\"0\"{extra}}}")
}

fn port(name: &str, extra: &str) -> String {
    format!("ferrite_{name}{{target=\"{IQN}\",tpgt=\"1\"{extra}}}")
}

#[test]
fn counters_move_by_exactly_what_happened() {
    let (d, maddr) = daemon();
    let before = scrape(maddr);
    assert!(get(&before, "process_resident_memory_bytes") > 1e6);
    assert_eq!(get(&before, &port("sessions", "")), 0.0);
    // The default ALUA group, as a state set.
    let alua = |m: &HashMap<String, f64>, state: &str| {
        get(
            m,
            &format!("ferrite_alua_group_state{{target=\"{IQN}\",group=\"1\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(alua(&before, "active/optimized"), 1.0);
    assert_eq!(alua(&before, "standby"), 0.0);
    assert!(before.contains_key(&format!(
        "ferrite_alua_group_state{{target=\"{IQN}\",group=\"1\",state=\"standby\"}}"
    )));

    let opts = LoginOpts {
        initiator: ALLOWED,
        ..LoginOpts::default()
    };
    let mut s = Session::login(d.addr(), &opts).unwrap();
    let data = vec![0x42u8; 96 * 1024];
    s.write10(10, &data, 512).unwrap();
    assert_eq!(s.read10(10, 192, 512).unwrap(), data);
    assert_eq!(s.read10(10, 64, 512).unwrap(), data[..32 * 1024]);
    // Past the end of the 16 MiB LU: CHECK CONDITION, ILLEGAL REQUEST.
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&(40_000u32).to_be_bytes());
    cdb[8] = 1;
    let r = s.command(&cdb, 512).unwrap();
    assert_eq!(r.sense_key(), Some(0x05));
    // LOGICAL UNIT RESET, then the unit attention it leaves.
    assert_eq!(s.tmf(5, 0xffff_ffff, 0).unwrap(), 0);
    s.clear_unit_attentions().unwrap();

    // Logins that fail, each for its reason.
    let wrong_target = LoginOpts {
        initiator: ALLOWED,
        target: "iqn.2026-11.io.ferrite:nosuch",
        ..LoginOpts::default()
    };
    assert!(matches!(
        Session::connect(d.addr(), &wrong_target),
        Err(LoginError::Refused {
            class: 2,
            detail: 3
        })
    ));
    let stranger = LoginOpts {
        initiator: "iqn.2026-11.io.ferrite:stranger",
        ..LoginOpts::default()
    };
    assert!(matches!(
        Session::connect(d.addr(), &stranger),
        Err(LoginError::Refused {
            class: 2,
            detail: 2
        })
    ));

    let during = scrape(maddr);
    let delta = |k: &str| get(&during, k) - get(&before, k);
    assert_eq!(delta(&lun("lun_written_bytes_total", "")), 96.0 * 1024.0);
    assert_eq!(delta(&lun("lun_read_bytes_total", "")), 128.0 * 1024.0);
    assert_eq!(delta(&lun("lun_commands_total", ",kind=\"write\"")), 1.0);
    assert_eq!(delta(&lun("lun_commands_total", ",kind=\"read\"")), 3.0);
    assert_eq!(
        delta(&lun("lun_command_duration_seconds_count", ",kind=\"read\"")),
        3.0
    );
    assert_eq!(
        delta(&lun(
            "lun_check_conditions_total",
            ",sense_key=\"illegal_request\""
        )),
        1.0
    );
    assert!(
        delta(&lun(
            "lun_check_conditions_total",
            ",sense_key=\"unit_attention\""
        )) >= 1.0
    );
    // The backstore's own time: at least one timed write and one timed read.
    for op in ["read", "write"] {
        let k = lun("backstore_duration_seconds_count", &format!(",op=\"{op}\""));
        assert!(delta(&k) >= 1.0, "{k}: {}", delta(&k));
    }
    assert_eq!(get(&during, &port("sessions", "")), 1.0);
    assert_eq!(get(&during, &port("connections", "")), 1.0);
    assert_eq!(delta(&port("logins_total", ",outcome=\"success\"")), 1.0);
    assert_eq!(
        delta(&port("logins_total", ",outcome=\"authorization_failure\"")),
        1.0
    );
    assert_eq!(
        delta(
            "ferrite_logins_total{target=\"iqn.2026-11.io.ferrite:nosuch\",tpgt=\"1\",outcome=\"target_not_found\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&port(
            "task_management_total",
            ",function=\"logical_unit_reset\",response=\"function_complete\""
        )),
        1.0
    );

    // A reservation conflict: another I_T nexus of the initiator meets a RESERVE(6).
    let mut other = Session::login(
        d.addr(),
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 7],
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(s.command(&[0x16, 0, 0, 0, 0, 0], 0).unwrap().status, 0);
    assert_eq!(
        other.write10_result(0, &[1u8; 512], 512).unwrap().status,
        0x18
    );
    assert_eq!(s.command(&[0x17, 0, 0, 0, 0, 0], 0).unwrap().status, 0);
    // A data digest error (on a NOP-Out: answered with a Reject).
    let mut dd = Session::login(
        d.addr(),
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 8],
            data_digest: true,
            ..opts.clone()
        },
    )
    .unwrap();
    let mut nop = [0u8; 48];
    nop[0] = 0x40;
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&7u32.to_be_bytes());
    nop[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    let mut wire = dd.encode(&nop, b"ping");
    let n = wire.len();
    wire[n - 1] ^= 1;
    dd.stream.write_all(&wire).unwrap();
    assert_eq!(dd.recv().unwrap().opcode(), 0x3f, "Reject");
    drop(dd);
    let mut m = scrape(maddr);
    for _ in 0..50 {
        if get(&m, &port("digest_errors_total", "")) >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        m = scrape(maddr);
    }
    assert_eq!(get(&m, &port("digest_errors_total", "")), 1.0);
    assert_eq!(get(&m, &lun("lun_reservation_conflicts_total", "")), 1.0);
    the_dashboard_names_only_metrics_that_exist(maddr);
    drop(other);

    s.logout().unwrap();
    let mut after = scrape(maddr);
    for _ in 0..50 {
        if get(&after, &port("sessions", "")) == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        after = scrape(maddr);
    }
    assert_eq!(get(&after, &port("sessions", "")), 0.0);
    assert_eq!(get(&after, &port("connections", "")), 0.0);
}

#[test]
fn other_paths_and_methods_are_refused() {
    let (_d, maddr) = daemon();
    let mut s = TcpStream::connect(maddr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: ferrite\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}

/// Every metric the Grafana dashboard (`ops/grafana-dashboard.json`) queries exists (families
/// with no sample yet are not exported: call this once every kind of event happened).
fn the_dashboard_names_only_metrics_that_exist(maddr: SocketAddr) {
    let mut s = TcpStream::connect(maddr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ferrite\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let path = common::conformance::repo_root().join("ops/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for q in dash["templating"]["list"].as_array().unwrap() {
        if let Some(e) = q["query"].as_str() {
            exprs.push(e.to_string());
        }
    }
    let mut checked = 0;
    for e in &exprs {
        let words = e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for w in words.filter(|w| w.starts_with("ferrite_") || w.starts_with("process_")) {
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w);
            assert!(
                families.contains(&base) || families.contains(&w),
                "the dashboard queries {w}, which is not exported: {families:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} metric references found");
}

#[test]
fn alua_states_are_exported_as_a_state_set() {
    let (d, maddr) = daemon();
    common::tpg::admin_ok(&d, &["set-alua-transition", IQN, "0"]);
    common::tpg::admin_ok(&d, &["set-alua", IQN, "1=standby"]);
    let m = scrape(maddr);
    let key = |state: &str| {
        format!("ferrite_alua_group_state{{target=\"{IQN}\",group=\"1\",state=\"{state}\"}}")
    };
    assert_eq!(get(&m, &key("standby")), 1.0);
    for other in [
        "active/optimized",
        "active/non-optimized",
        "unavailable",
        "offline",
        "transitioning",
    ] {
        assert_eq!(m.get(&key(other)).copied(), Some(0.0), "{other}");
    }
}
