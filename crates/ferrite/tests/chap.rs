//! CHAP on the wire (RFC 7143 §12.1.3): libiscsi logs in with `user%secret@` credentials and
//! checks the target's answer for mutual CHAP (`target_user` / `target_password` URL
//! parameters); the tests' own initiator checks the exact refusal (Authentication Failure,
//! 0201) and the target's CHAP_N / CHAP_R, computed here from the configured secret. Credentials
//! come from the portal group (demo mode) or from each initiator's ACL; discovery sessions have
//! credentials of their own (`settings.discovery_chap`).

mod common;

use std::net::SocketAddr;

use common::initiator::{Chap, LoginError, LoginOpts, Session};
use common::tpg::{discover, login_status, sa, st, LIMIT};
use common::{run, Daemon, Opts, Output, IQN, SECOND_IP};

const AUTHENTICATION_FAILURE: Option<(u8, u8)> = Some((0x02, 0x01));
const INIT_A: &str = "iqn.2026-11.io.ferrite:init-a";
const INIT_B: &str = "iqn.2026-11.io.ferrite:init-b";
const INIT_C: &str = "iqn.2026-11.io.ferrite:init-c";

/// IQN, open to any initiator (demo mode) but only with the group's CHAP credentials.
fn group_chap_daemon() -> Daemon {
    Daemon::start(Opts {
        config: Some(
            r#"
            [[target]]
            name = "iqn.2026-11.io.ferrite:itest"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:{port}"]
            authentication = true
            chap = { user = "alice", secret = "alice-secret-12", mutual_user = "tgt-name", mutual_secret = "target-secret-34" }
            [[target.lun]]
            id = 0
            backstore = "ram:16M"
            "#
            .into(),
        ),
        ..Opts::default()
    })
}

/// `iscsi-inq` of LUN 0 through `url_prefix` (`iscsi://[creds@]host:port`) with `query`.
fn inq(url_prefix: &str, query: &str, initiator: Option<&str>) -> Output {
    let url = format!("{url_prefix}/{IQN}/0{query}");
    let mut args = Vec::new();
    if let Some(i) = initiator {
        args.extend(["-i", i]);
    }
    args.push(&url);
    run("iscsi-inq", &args, LIMIT)
}

fn assert_inq_ok(out: Output) {
    let out = out.ok();
    assert!(
        out.stdout.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{}",
        out.describe()
    );
}

fn assert_inq_fails(out: &Output, why: &str) {
    assert!(!out.status.success(), "{why}: {}", out.describe());
    assert!(
        !out.stdout.contains("Peripheral Device Type"),
        "{why}: {}",
        out.describe()
    );
}

fn chap_opts(initiator: &'static str, chap: Option<Chap>) -> LoginOpts<'static> {
    LoginOpts {
        initiator,
        chap,
        ..LoginOpts::default()
    }
}

#[test]
fn libiscsi_one_way_and_mutual_chap() {
    let d = group_chap_daemon();
    let port = d.port;
    let good = format!("iscsi://alice%alice-secret-12@127.0.0.1:{port}");
    assert_inq_ok(inq(&good, "", None));
    // A wrong secret, a wrong user, no credentials at all: Authentication Failure.
    for (creds, why) in [
        ("alice%wrong-secret-12@", "wrong secret"),
        ("mallory%alice-secret-12@", "wrong user"),
        ("", "no credentials"),
    ] {
        let out = inq(&format!("iscsi://{creds}127.0.0.1:{port}"), "", None);
        assert_inq_fails(&out, why);
        assert!(
            out.stderr.contains("Authentication failure"),
            "{why}: {}",
            out.describe()
        );
    }
    // Mutual CHAP: libiscsi checks the target's CHAP_N and CHAP_R.
    assert_inq_ok(inq(
        &good,
        "?target_user=tgt-name&target_password=target-secret-34",
        None,
    ));
    let out = inq(
        &good,
        "?target_user=tgt-name&target_password=target-secret-99",
        None,
    );
    assert_inq_fails(&out, "wrong target secret");
    assert!(
        out.stderr.contains("Invalid CHAP_R"),
        "libiscsi should refuse the target's CHAP_R: {}",
        out.describe()
    );
    let out = inq(
        &good,
        "?target_user=someone-else&target_password=target-secret-34",
        None,
    );
    assert_inq_fails(&out, "wrong target name");
    assert!(
        out.stderr.contains("Wrong CHAP targetname"),
        "{}",
        out.describe()
    );
}

#[test]
fn raw_chap_outcomes_and_the_targets_mutual_answer() {
    let d = group_chap_daemon();
    let a = d.addr();
    let init = "iqn.2026-11.io.ferrite:test-initiator";
    // One way.
    assert_eq!(
        login_status(
            a,
            &chap_opts(init, Some(Chap::new("alice", "alice-secret-12")))
        ),
        None
    );
    // Wrong secret, wrong user, AuthMethod=None where CHAP is required: 0201.
    for chap in [
        Some(Chap::new("alice", "alice-secret-99")),
        Some(Chap::new("mallory", "alice-secret-12")),
        None,
    ] {
        assert_eq!(
            login_status(a, &chap_opts(init, chap.clone())),
            AUTHENTICATION_FAILURE,
            "{chap:?}"
        );
    }
    // Mutual: the target's CHAP_N is the configured mutual user and its CHAP_R is
    // MD5(our CHAP_I, mutual secret, our CHAP_C) (checked inside connect).
    let mutual = Chap::mutual("alice", "alice-secret-12", "tgt-name", "target-secret-34");
    let mut s = Session::connect(a, &chap_opts(init, Some(mutual))).unwrap();
    assert!(s
        .login_keys
        .contains(&("CHAP_N".to_string(), "tgt-name".to_string())));
    s.clear_unit_attentions().unwrap();
    s.write10(0, &[0x11; 512], 512).unwrap();
    s.logout().unwrap();
    // The check has teeth: expecting another secret fails on our side.
    let wrong = Chap::mutual("alice", "alice-secret-12", "tgt-name", "target-secret-35");
    match Session::connect(a, &chap_opts(init, Some(wrong))) {
        Err(LoginError::Other(m)) => assert!(m.contains("CHAP_R"), "{m}"),
        other => panic!("expected our CHAP_R check to fail: {:?}", other.err()),
    }
    // Reflection: handing the target its own challenge back is refused (RFC 7143 §12.1.3).
    let reflect = Chap {
        reflect: true,
        ..Chap::new("alice", "alice-secret-12")
    };
    assert_eq!(
        login_status(a, &chap_opts(init, Some(reflect))),
        AUTHENTICATION_FAILURE
    );
    // The failures hurt nothing: a good login still works.
    assert_eq!(
        login_status(
            a,
            &chap_opts(init, Some(Chap::new("alice", "alice-secret-12")))
        ),
        None
    );
}

/// IQN with ACLs: A with one-way CHAP, B with mutual CHAP, C with none. Group 1 (127.0.0.1)
/// requires CHAP, group 2 (127.0.0.2) does not.
fn acl_chap_daemon() -> Daemon {
    Daemon::start(Opts {
        config: Some(
            r#"
            [[target]]
            name = "iqn.2026-11.io.ferrite:itest"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:{port}"]
            authentication = true
            [[target.portal_group]]
            tag = 2
            portals = ["127.0.0.2:{port2}"]
            [[target.lun]]
            id = 0
            backstore = "ram:16M"
            [[target.acl]]
            initiator = "iqn.2026-11.io.ferrite:init-a"
            chap = { user = "a-user", secret = "a-secret-1234" }
            [[target.acl]]
            initiator = "iqn.2026-11.io.ferrite:init-b"
            chap = { user = "b-user", secret = "b-secret-1234", mutual_user = "tgt-b", mutual_secret = "tgt-b-secret-99" }
            [[target.acl]]
            initiator = "iqn.2026-11.io.ferrite:init-c"
            "#
            .into(),
        ),
        second_portal: true,
        ..Opts::default()
    })
}

#[test]
fn each_acl_has_its_own_credentials() {
    let d = acl_chap_daemon();
    let g1 = d.addr();
    let g2: SocketAddr = sa(SECOND_IP, d.port2);
    let a_chap = || Some(Chap::new("a-user", "a-secret-1234"));
    let b_chap = || Some(Chap::new("b-user", "b-secret-1234"));
    // Each initiator with its own credentials; not with another's.
    assert_eq!(login_status(g1, &chap_opts(INIT_A, a_chap())), None);
    assert_eq!(login_status(g1, &chap_opts(INIT_B, b_chap())), None);
    assert_eq!(
        login_status(g1, &chap_opts(INIT_A, b_chap())),
        AUTHENTICATION_FAILURE
    );
    assert_eq!(
        login_status(g1, &chap_opts(INIT_B, a_chap())),
        AUTHENTICATION_FAILURE
    );
    // C has no credentials, and group 1 requires CHAP: it cannot log in there at all.
    assert_eq!(
        login_status(g1, &chap_opts(INIT_C, None)),
        AUTHENTICATION_FAILURE
    );
    assert_eq!(
        login_status(g1, &chap_opts(INIT_C, a_chap())),
        AUTHENTICATION_FAILURE
    );
    assert_eq!(
        login_status(g1, &chap_opts(INIT_A, None)),
        AUTHENTICATION_FAILURE
    );
    // Group 2 does not require CHAP: C gets in without, A with or without its credentials.
    assert_eq!(login_status(g2, &chap_opts(INIT_C, None)), None);
    assert_eq!(login_status(g2, &chap_opts(INIT_A, None)), None);
    assert_eq!(login_status(g2, &chap_opts(INIT_A, a_chap())), None);
    // B's mutual credentials, checked by our initiator and by libiscsi.
    let mutual = Chap::mutual("b-user", "b-secret-1234", "tgt-b", "tgt-b-secret-99");
    assert_eq!(login_status(g1, &chap_opts(INIT_B, Some(mutual))), None);
    let p = d.port;
    assert_inq_ok(inq(
        &format!("iscsi://b-user%b-secret-1234@127.0.0.1:{p}"),
        "?target_user=tgt-b&target_password=tgt-b-secret-99",
        Some(INIT_B),
    ));
    let out = inq(
        &format!("iscsi://b-user%b-secret-1234@127.0.0.1:{p}"),
        "?target_user=tgt-b&target_password=tgt-b-secret-00",
        Some(INIT_B),
    );
    assert_inq_fails(&out, "wrong target secret for B");
    // libiscsi with A's credentials as A, and as B (refused).
    assert_inq_ok(inq(
        &format!("iscsi://a-user%a-secret-1234@127.0.0.1:{p}"),
        "",
        Some(INIT_A),
    ));
    let out = inq(
        &format!("iscsi://a-user%a-secret-1234@127.0.0.1:{p}"),
        "",
        Some(INIT_B),
    );
    assert_inq_fails(&out, "A's credentials for B");
    // A target with ACL CHAP but a group that asks for none: no mutual answer is owed, but
    // B may still ask for one.
    let mutual = Chap::mutual("b-user", "b-secret-1234", "tgt-b", "tgt-b-secret-99");
    assert_eq!(login_status(g2, &chap_opts(INIT_B, Some(mutual))), None);
}

#[test]
fn discovery_sessions_need_the_discovery_credentials() {
    let d = Daemon::start(Opts {
        config: Some(
            r#"
            [settings]
            discovery_chap = { user = "disco", secret = "disco-secret-12", mutual_user = "disco-tgt", mutual_secret = "disco-tgt-secret" }

            [[target]]
            name = "iqn.2026-11.io.ferrite:itest"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:{port}"]
            [[target.lun]]
            id = 0
            backstore = "ram:16M"
            "#
            .into(),
        ),
        ..Opts::default()
    });
    let a = d.addr();
    let init = "iqn.2026-11.io.ferrite:test-initiator";
    let want = st(&[(IQN, &[format!("127.0.0.1:{},1", d.port)])]);
    let disco = |chap: Option<Chap>| {
        discover(
            a,
            &LoginOpts {
                initiator: init,
                chap,
                ..LoginOpts::default()
            },
        )
    };
    assert_eq!(
        disco(None),
        Err(LoginError::Refused {
            class: 0x02,
            detail: 0x01
        })
    );
    assert_eq!(
        disco(Some(Chap::new("disco", "disco-secret-99"))),
        Err(LoginError::Refused {
            class: 0x02,
            detail: 0x01
        })
    );
    assert_eq!(
        disco(Some(Chap::new("disco", "disco-secret-12"))),
        Ok(want.clone())
    );
    assert_eq!(
        disco(Some(Chap::mutual(
            "disco",
            "disco-secret-12",
            "disco-tgt",
            "disco-tgt-secret"
        ))),
        Ok(want)
    );
    // Normal sessions are not affected (the group asks for no authentication).
    assert_eq!(login_status(a, &chap_opts(init, None)), None);
    // libiscsi: iscsi-ls needs the credentials.
    let out = run(
        "iscsi-ls",
        &["--url", &format!("iscsi://{}", d.portal())],
        LIMIT,
    );
    assert!(!out.status.success(), "{}", out.describe());
    let out = run(
        "iscsi-ls",
        &[
            "--url",
            &format!(
                "iscsi://disco%disco-secret-12@{}?target_user=disco-tgt&target_password=disco-tgt-secret",
                d.portal()
            ),
        ],
        LIMIT,
    )
    .ok();
    assert_eq!(
        out.stdout.trim(),
        format!("iscsi://127.0.0.1:{}/{IQN}/0", d.port),
        "{}",
        out.describe()
    );
}
