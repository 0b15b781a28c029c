//! Inputs the `connection` fuzzer in `fuzz/` found, replayed through the public API. Each
//! one's raw fuzzer input is kept in `fuzz/regressions/connection-<name>`
//! (`FERRITE_FUZZ_STRICT=1 cargo +nightly fuzz run connection <file>` replays it).

use std::time::{Duration, Instant};

use iscsi_proto::conn::ConnConfig;
use iscsi_proto::{ConnEvent, Connection, Directory, LoginResult, SessionKind};
use iscsi_wire::frame::{encode_bhs_lengths, RawPdu};
use iscsi_wire::{text, Header, LoginRequest, ScsiCommand, Stage};

const TARGET: &str = "iqn.2026-11.io.ferrite:t";

struct Dir;
impl Directory for Dir {
    fn tpg_tag(&self) -> u16 {
        1
    }
    fn target(&self, name: &str, _initiator: &str) -> Option<Option<String>> {
        (name == TARGET).then_some(None)
    }
    fn send_targets(&self, _initiator: &str, _filter: Option<&str>) -> Vec<(String, Vec<String>)> {
        vec![(TARGET.into(), vec!["127.0.0.1:3260,1".into()])]
    }
}

fn raw(h: Header, data: &[u8]) -> RawPdu {
    let mut bhs = h.emit();
    encode_bhs_lengths(&mut bhs, 0, data.len());
    RawPdu {
        bhs,
        ahs: Vec::new(),
        data: data.to_vec(),
    }
}

/// One Login Request going straight from the operational stage to full feature phase.
fn login(c: &mut Connection, now: Instant, discovery: bool) -> LoginResult {
    let mut keys = vec![("InitiatorName", "iqn.2026-11.test:fuzz")];
    if discovery {
        keys.push(("SessionType", "Discovery"));
    } else {
        keys.push(("TargetName", TARGET));
    }
    login_with(c, now, 0, 0, &keys)
}

/// A Login Request with `keys` for session `tsih` (0: a new one) and connection `cid`, from
/// the operational stage straight to full feature phase; the `LoginComplete` it leads to.
fn login_with(
    c: &mut Connection,
    now: Instant,
    tsih: u16,
    cid: u16,
    keys: &[(&str, &str)],
) -> LoginResult {
    let h = Header::LoginRequest(LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: 0x8000_0000_0001,
        tsih,
        itt: 1,
        cid,
        cmd_sn: 100,
        exp_stat_sn: 0,
    });
    c.handle_pdu(now, raw(h, &text::encode(keys)), &Dir);
    while c.poll_transmit().is_some() {}
    match c.poll_event() {
        Some(ConnEvent::LoginComplete(r)) => r,
        other => panic!("expected LoginComplete, got {other:?}"),
    }
}

fn drain(c: &mut Connection) -> (usize, Vec<ConnEvent>) {
    let pdus = std::iter::from_fn(|| c.poll_transmit()).count();
    (pdus, std::iter::from_fn(|| c.poll_event()).collect())
}

/// Closes the connection the way the fuzzer did: the login timer runs out while the driver
/// still holds the `LoginComplete`.
fn closed_by_login_timeout(c: &mut Connection, now: Instant) {
    c.handle_timeout(now + ConnConfig::default().login_timeout + Duration::from_secs(1));
    let (_, ev) = drain(c);
    assert!(matches!(ev.as_slice(), [ConnEvent::Close { .. }]), "{ev:?}");
    assert!(c.is_closed());
}

/// fuzz/regressions/connection-digest-error-after-close: once the engine has asked for the
/// connection to close, a late `handle_digest_error` still queues a Reject (with StatSN 0,
/// as the connection never reached full feature phase). Late calls must be no-ops
/// (`handle_pdu`, `complete_task` and `handle_timeout` return early when closed).
#[test]
fn digest_error_after_close_queues_nothing() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 50);
    let _pending = login(&mut c, now, false);
    closed_by_login_timeout(&mut c, now);
    let mut bhs = [0u8; 48];
    bhs[1] = 0x80; // a NOP-Out
    c.handle_digest_error(&bhs);
    let (pdus, ev) = drain(&mut c);
    assert_eq!(
        (pdus, ev),
        (0, vec![]),
        "late handle_digest_error produced output"
    );
}

/// fuzz/regressions/connection-accept-login-after-close: the driver answers a
/// `LoginComplete` after the login timer already closed the connection; `accept_login`
/// queues a successful final Login Response and a `Framing` event after `Close`.
/// (`refuse_login` takes the same path and queues a Login Response too.)
#[test]
fn accept_login_after_close_queues_nothing() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 50);
    let pending = login(&mut c, now, false);
    closed_by_login_timeout(&mut c, now);
    c.accept_login(&pending, 1);
    let (pdus, ev) = drain(&mut c);
    assert_eq!((pdus, ev), (0, vec![]), "late accept_login produced output");
}

/// fuzz/regressions/connection-discovery-queued-scsi-executes: in a discovery session a SCSI
/// Command whose CmdSN is ahead of ExpCmdSN (inside the window) is registered and queued by
/// `handle_ffp` without the discovery check `dispatch` makes; when the gap is filled it is
/// handed to the driver as `Execute`. RFC 7143 §4.3: a discovery session carries only Text
/// and Logout, so it must be rejected like an in-order one.
#[test]
fn discovery_session_never_executes_scsi() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 50);
    let r = login(&mut c, now, true);
    assert_eq!(r.kind, SessionKind::Discovery);
    c.accept_login(&r, 1);
    drain(&mut c);
    let cmd = |itt: u32, cmd_sn: u32| {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x28; // READ(10)
        cdb[8] = 1;
        Header::ScsiCommand(ScsiCommand {
            final_bit: true,
            read: true,
            attr: 1,
            itt,
            expected_len: 512,
            cmd_sn,
            cdb,
            ..Default::default()
        })
    };
    // CmdSN 101 first (one ahead, queued), then 100 fills the gap.
    c.handle_pdu(now, raw(cmd(6, r.exp_cmd_sn + 1), &[]), &Dir);
    c.handle_pdu(now, raw(cmd(7, r.exp_cmd_sn), &[]), &Dir);
    let (_, ev) = drain(&mut c);
    assert!(
        !ev.iter().any(|e| matches!(e, ConnEvent::Execute(_))),
        "discovery session executed a SCSI command: {ev:?}"
    );
}

/// fuzz/regressions/connection-event-after-close: a LOGICAL UNIT RESET queued behind a gap in
/// CmdSN, then a TARGET COLD RESET that fills the gap. The cold reset closes the connection
/// (RFC 7143 §11.5.1) and `drain_queued` went on to dispatch the queued LUN reset, handing the
/// driver `Tmf(LunReset)` after `Close`. Nothing queued behind a closing request may run.
#[test]
fn nothing_queued_runs_after_a_cold_reset_closes() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 50);
    let r = login(&mut c, now, false);
    c.accept_login(&r, 1);
    drain(&mut c);
    let tmf = |function: u8, itt: u32, cmd_sn: u32| {
        Header::TaskMgmtRequest(iscsi_wire::TaskMgmtRequest {
            immediate: false,
            function,
            lun: 0,
            itt,
            referenced_tag: 0xffff_ffff,
            cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        })
    };
    // LOGICAL UNIT RESET one ahead of ExpCmdSN (queued), then TARGET COLD RESET in order.
    c.handle_pdu(now, raw(tmf(5, 10, r.exp_cmd_sn + 1), &[]), &Dir);
    c.handle_pdu(now, raw(tmf(7, 11, r.exp_cmd_sn), &[]), &Dir);
    let (pdus, ev) = drain(&mut c);
    assert_eq!(pdus, 0, "the response waits for the driver");
    assert!(
        matches!(
            ev.as_slice(),
            [ConnEvent::Tmf(iscsi_proto::TmfAction::TargetColdReset)]
        ),
        "{ev:?}"
    );
    c.tmf_done();
    let (pdus, ev) = drain(&mut c);
    assert_eq!(pdus, 1, "only the cold reset's response goes out");
    assert!(matches!(ev.as_slice(), [ConnEvent::Close { .. }]), "{ev:?}");
}

/// A login of connection `cid` to session `tsih` (0: a new session with MaxConnections=2).
fn login_cid(c: &mut Connection, now: Instant, tsih: u16, cid: u16) -> LoginResult {
    let mut keys = vec![
        ("InitiatorName", "iqn.2026-11.test:fuzz"),
        ("TargetName", TARGET),
    ];
    if tsih == 0 {
        keys.push(("MaxConnections", "2"));
    }
    login_with(c, now, tsih, cid, &keys)
}

/// fuzz/regressions/session-completion-after-connection-replaced: a task of connection 1 is
/// with the device server when a login with CID 1 replaces that connection. The task is
/// aborted, and the session waits for it to come back (a session logout answers only then);
/// the completion arrives through the old connection's handle, which is no longer current.
/// It was dropped, so the session waited for ever.
#[test]
fn a_completion_through_a_replaced_connection_still_reaches_the_session() {
    let now = Instant::now();
    let cfg = || {
        let mut c = ConnConfig::default();
        c.offer.max_connections = 2;
        c
    };
    let mut c0 = Connection::new(cfg(), now, 50);
    let r = login_cid(&mut c0, now, 0, 0);
    c0.accept_login(&r, 1);
    let session = c0.session().expect("a session");
    drain(&mut c0);
    let mut c1 = Connection::new(cfg(), now, 500);
    let r = login_cid(&mut c1, now, 1, 1);
    c1.accept_join(&r, 1, &session);
    drain(&mut c1);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x28;
    let read = Header::ScsiCommand(ScsiCommand {
        final_bit: true,
        read: true,
        attr: 1,
        itt: 9,
        expected_len: 512,
        cmd_sn: 100,
        cdb,
        ..Default::default()
    });
    c1.handle_pdu(now, raw(read, &[]), &Dir);
    let (_, ev) = drain(&mut c1);
    let Some(ConnEvent::Execute(task)) = ev.into_iter().next() else {
        panic!("the read was not handed out")
    };
    // CID 1 logs in again: the old connection is replaced and its task aborted.
    let mut c1b = Connection::new(cfg(), now, 900);
    let r = login_cid(&mut c1b, now, 1, 1);
    c1b.accept_join(&r, 1, &session);
    drain(&mut c1b);
    assert!(c1.is_closed() && !c1.is_current());
    // A session logout on CID 0 waits for the aborted task...
    let logout = Header::LogoutRequest(iscsi_wire::LogoutRequest {
        immediate: true,
        reason: iscsi_wire::LogoutReason::CLOSE_SESSION,
        itt: 77,
        cid: 0,
        cmd_sn: 101,
        exp_stat_sn: 0,
    });
    c0.handle_pdu(now, raw(logout, &[]), &Dir);
    assert_eq!(drain(&mut c0).0, 0, "the logout waits for the running task");
    // ...which comes back through the replaced connection's handle.
    c1.complete_task(task.id, iscsi_proto::TaskOutcome::default());
    let (pdus, ev) = drain(&mut c0);
    assert_eq!(pdus, 1, "the logout response");
    assert!(matches!(ev.as_slice(), [ConnEvent::Close { .. }]), "{ev:?}");
}
