//! Discovery with libiscsi's `iscsi-ls`: a SendTargets discovery session, then a normal session
//! per target for REPORT LUNS (`-s`).

mod common;

use std::time::Duration;

use common::{run, Daemon, Opts, IQN};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn iscsi_ls_lists_target_and_lun() {
    let d = Daemon::start(Opts::default());
    // At start the daemon says how to connect.
    let log = d.log_text();
    let portal = d.portal();
    assert!(
        log.contains(&format!(
            "connect: iscsiadm -m discovery -t sendtargets -p {portal} && iscsiadm -m node -T {} -p {portal} --login",
            common::IQN
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("connect: iscsi://{portal}/{}/0", common::IQN)),
        "{log}"
    );
    let out = run(
        "iscsi-ls",
        &["-s", &format!("iscsi://{}", d.portal())],
        LIMIT,
    )
    .ok();
    // e.g. "Target:iqn.… Portal:127.0.0.1:PORT,1" then "Lun:0    Type:DIRECT_ACCESS (Size:63M)"
    assert!(
        out.stdout.contains(&format!("Target:{IQN}")),
        "target name missing: {}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("Portal:{},1", d.portal())),
        "portal,tag missing: {}",
        out.describe()
    );
    let lun0 = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("Lun:0"))
        .unwrap_or_else(|| {
            panic!("Lun:0 missing: {}", out.describe());
        });
    assert!(
        lun0.contains("DIRECT_ACCESS"),
        "LUN 0 is not a disk: {lun0}"
    );
}

#[test]
fn iscsi_ls_lists_every_lun() {
    let d = Daemon::start(Opts {
        luns: vec!["ram:16M".into(), "ram:32M".into()],
        ..Opts::default()
    });
    let out = run(
        "iscsi-ls",
        &["-s", &format!("iscsi://{}", d.portal())],
        LIMIT,
    )
    .ok();
    for lun in ["Lun:0", "Lun:1"] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(lun)),
            "{lun} missing: {}",
            out.describe()
        );
    }
    assert!(
        !out.stdout.contains("Lun:2"),
        "a LUN too many: {}",
        out.describe()
    );
}

#[test]
fn send_targets_reports_every_portal_of_the_group() {
    let d = Daemon::start(Opts {
        second_portal: true,
        ..Opts::default()
    });
    // Discovery through either portal returns both portals of the group (RFC 7143 §C: every
    // TargetAddress the initiator may use); --url prints one iscsi://PORTAL/IQN/0 per portal.
    for via in [d.portal(), format!("{}:{}", common::SECOND_IP, d.port2)] {
        let out = run("iscsi-ls", &["--url", &format!("iscsi://{via}")], LIMIT).ok();
        for url in [d.url(0), d.url2(0)] {
            assert!(
                out.stdout.lines().any(|l| l.trim() == url),
                "{url} missing (discovery via {via}): {}",
                out.describe()
            );
        }
    }
}
