//! Inputs the `connection` fuzzer in `fuzz/` found, replayed through the public API. Each
//! one's raw fuzzer input is kept in `fuzz/regressions/connection-<name>`
//! (`FERRITE_FUZZ_STRICT=1 cargo +nightly fuzz run connection <file>` replays it).

use std::time::{Duration, Instant};

use iscsi_proto::conn::ConnConfig;
use iscsi_proto::{ConnEvent, Connection, LoginResult, SessionKind};
use iscsi_wire::{LogoutReason, ScsiCommand, TaskMgmtRequest, TmfFunction, RESERVED_TAG};
use testkit::engine::{self, drain, Dir, LoginOpts, TARGET};
use testkit::pdu::{self, Request};

/// One Login Request (InitiatorName, then TargetName or SessionType=Discovery) going straight
/// from the operational stage to full feature phase; the `LoginComplete` it leads to.
fn login(c: &mut Connection, now: Instant, discovery: bool) -> LoginResult {
    let opts = if discovery {
        LoginOpts::discovery()
    } else {
        LoginOpts::default()
    };
    engine::request_login(c, now, &Dir::new(TARGET), &opts)
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
    let (out, ev) = drain(&mut c);
    assert_eq!(
        (out.len(), ev),
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
    let (out, ev) = drain(&mut c);
    assert_eq!(
        (out.len(), ev),
        (0, vec![]),
        "late accept_login produced output"
    );
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
    // READ(10) of one 512-byte block.
    let cmd = |itt: u32, cmd_sn: u32| pdu::read10(itt, cmd_sn, 0, 1, 512).raw(&[]);
    let dir = Dir::new(TARGET);
    // CmdSN 101 first (one ahead, queued), then 100 fills the gap.
    c.handle_pdu(now, cmd(6, r.exp_cmd_sn + 1), &dir);
    c.handle_pdu(now, cmd(7, r.exp_cmd_sn), &dir);
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
    let tmf = |function: TmfFunction, itt: u32, cmd_sn: u32| {
        TaskMgmtRequest {
            immediate: false,
            ref_cmd_sn: 0,
            ..pdu::tmf(function, itt, RESERVED_TAG, cmd_sn)
        }
        .raw(&[])
    };
    let dir = Dir::new(TARGET);
    // LOGICAL UNIT RESET one ahead of ExpCmdSN (queued), then TARGET COLD RESET in order.
    let lun_reset = tmf(TmfFunction::LOGICAL_UNIT_RESET, 10, r.exp_cmd_sn + 1);
    c.handle_pdu(now, lun_reset, &dir);
    let cold_reset = tmf(TmfFunction::TARGET_COLD_RESET, 11, r.exp_cmd_sn);
    c.handle_pdu(now, cold_reset, &dir);
    let (out, ev) = drain(&mut c);
    assert_eq!(out.len(), 0, "the response waits for the driver");
    assert!(
        matches!(
            ev.as_slice(),
            [ConnEvent::Tmf(iscsi_proto::TmfAction::TargetColdReset)]
        ),
        "{ev:?}"
    );
    c.tmf_done();
    let (out, ev) = drain(&mut c);
    assert_eq!(out.len(), 1, "only the cold reset's response goes out");
    assert!(matches!(ev.as_slice(), [ConnEvent::Close { .. }]), "{ev:?}");
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
    let dir = Dir::new(TARGET);
    let mut c0 = Connection::new(cfg(), now, 50);
    // A new session with MaxConnections=2, TSIH 1.
    let leading = LoginOpts::default().key("MaxConnections", "2");
    engine::login(&mut c0, now, &dir, &leading, 1);
    let session = c0.session().expect("a session");
    let mut c1 = Connection::new(cfg(), now, 500);
    let cid1 = LoginOpts::default().join(1, 1);
    engine::login_join(&mut c1, now, &dir, &cid1, &session);
    let read = ScsiCommand {
        read: true,
        expected_len: 512,
        ..pdu::scsi_command(9, 100, &[0x28])
    };
    c1.handle_pdu(now, read.raw(&[]), &dir);
    let (_, ev) = drain(&mut c1);
    let Some(ConnEvent::Execute(task)) = ev.into_iter().next() else {
        panic!("the read was not handed out")
    };
    // CID 1 logs in again: the old connection is replaced and its task aborted.
    let mut c1b = Connection::new(cfg(), now, 900);
    engine::login_join(&mut c1b, now, &dir, &cid1, &session);
    assert!(c1.is_closed() && !c1.is_current());
    // A session logout on CID 0 waits for the aborted task...
    let logout = pdu::logout(LogoutReason::CLOSE_SESSION, 77, 0, 101);
    c0.handle_pdu(now, logout.raw(&[]), &dir);
    assert_eq!(
        drain(&mut c0).0.len(),
        0,
        "the logout waits for the running task"
    );
    // ...which comes back through the replaced connection's handle.
    c1.complete_task(task.id, iscsi_proto::TaskOutcome::default());
    let (out, ev) = drain(&mut c0);
    assert_eq!(out.len(), 1, "the logout response");
    assert!(matches!(ev.as_slice(), [ConnEvent::Close { .. }]), "{ev:?}");
}

/// fuzz/regressions/session-async-message-resent (a finding of the session harness, whose
/// check did not know Asynchronous Messages): an operator's logout request (AsyncEvent 1)
/// takes a StatSN, so at ErrorRecoveryLevel 1 a Status SNACK brings it again, the same but
/// for ExpCmdSN / MaxCmdSN (RFC 7143 §11.16).
#[test]
fn an_async_message_comes_again_on_a_status_snack() {
    let now = Instant::now();
    let mut cfg = ConnConfig::default();
    cfg.offer.error_recovery_level = 1;
    let mut c = Connection::new(cfg, now, 50);
    let opts = LoginOpts::default().key("ErrorRecoveryLevel", "1");
    let r = engine::request_login(&mut c, now, &Dir::new(TARGET), &opts);
    c.accept_login(&r, 1);
    drain(&mut c);
    let session = c.session().expect("a session");
    assert_eq!(session.request_logout(30), 1);
    let (out, _) = drain(&mut c);
    let iscsi_wire::Header::AsyncMessage(first) = out[0].header.clone() else {
        panic!("{out:?}")
    };
    assert_eq!(
        (first.event, first.param3),
        (iscsi_wire::AsyncEvent::LOGOUT_REQUEST, 30)
    );
    let snack = pdu::snack(pdu::SNACK_STATUS, RESERVED_TAG, first.stat_sn, 1);
    c.handle_pdu(now, snack.raw(&[]), &Dir::new(TARGET));
    let (out, _) = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header, iscsi_wire::Header::AsyncMessage(first));
}

/// fuzz/regressions/session-tmf-answered-on-replacement: task management functions queued
/// behind a LOGICAL UNIT RESET (whose action the driver was running) on a connection that a
/// login with its CID then replaced were answered on the replacement once the reset was done
/// (at ErrorRecoveryLevel 2, a TASK REASSIGN among them even moved a task there). A function
/// is answered on the very connection it came on, or not at all.
#[test]
fn functions_of_a_replaced_connection_are_not_answered_on_its_successor() {
    let now = Instant::now();
    let dir = Dir::new(TARGET);
    let mut cfg = ConnConfig::default();
    cfg.offer.max_connections = 2;
    let mut c0 = Connection::new(cfg.clone(), now, 50);
    let opts = LoginOpts::default().key("MaxConnections", "2");
    engine::login(&mut c0, now, &dir, &opts, 1);
    let session = c0.session().expect("a session");
    // LUN RESET (the driver runs its action), then ABORT TASK queued behind it.
    let reset = pdu::tmf(TmfFunction::LOGICAL_UNIT_RESET, 0x40, RESERVED_TAG, 100);
    c0.handle_pdu(now, reset.raw(&[]), &dir);
    let (_, ev) = drain(&mut c0);
    assert!(matches!(ev.as_slice(), [ConnEvent::Tmf(_)]), "{ev:?}");
    let abort = pdu::tmf(TmfFunction::ABORT_TASK, 0x41, 0x99, 100);
    c0.handle_pdu(now, abort.raw(&[]), &dir);
    assert!(drain(&mut c0).0.is_empty(), "waits behind the reset");
    // A login with CID 0 replaces the connection; then the reset's action is done.
    let mut c1 = Connection::new(cfg, now, 500);
    engine::login_join(&mut c1, now, &dir, &opts.clone().join(1, 0), &session);
    c0.tmf_done();
    let (out, _) = drain(&mut c1);
    assert!(
        !out.iter()
            .any(|o| matches!(o.header, iscsi_wire::Header::TaskMgmtResponse(_))),
        "the old connection's functions answered on the new one: {out:?}"
    );
    // The new connection's own functions are answered as usual.
    let own = pdu::tmf(TmfFunction::ABORT_TASK, 0x42, 0x98, 100);
    c1.handle_pdu(now, own.raw(&[]), &dir);
    let (out, _) = drain(&mut c1);
    assert!(
        matches!(&out[..], [o] if matches!(&o.header, iscsi_wire::Header::TaskMgmtResponse(r) if r.itt == 0x42)),
        "{out:?}"
    );
}

/// fuzz/regressions/session-task-reassigned-twice: two TASK REASSIGNs of one task, queued
/// behind a LOGICAL UNIT RESET, were both judged when they arrived (the task's connection had
/// failed: both fine) and both carried out, so the read's Data-In and status went out twice.
/// A queued TASK REASSIGN is judged again when its turn comes: the second finds the task
/// allegiant to its new connection already.
#[test]
fn a_task_is_reassigned_once_even_when_asked_twice() {
    let now = Instant::now();
    let dir = Dir::new(TARGET);
    let mut cfg = ConnConfig::default();
    cfg.offer.max_connections = 2;
    cfg.offer.error_recovery_level = 2;
    let opts = LoginOpts::default()
        .key("MaxConnections", "2")
        .key("ErrorRecoveryLevel", "2")
        .key("DefaultTime2Retain", "20");
    let mut c0 = Connection::new(cfg.clone(), now, 50);
    engine::login(&mut c0, now, &dir, &opts, 1);
    let session = c0.session().expect("a session");
    let mut c1 = Connection::new(cfg, now, 500);
    engine::login_join(&mut c1, now, &dir, &opts.clone().join(1, 1), &session);
    // A read runs on connection 0, which then fails: the task waits for reassignment.
    let read = pdu::read10(0x20, 100, 0, 1, 512);
    c0.handle_pdu(now, read.raw(&[]), &dir);
    let (_, ev) = drain(&mut c0);
    let Some(ConnEvent::Execute(t)) = ev.into_iter().next() else {
        panic!("no Execute")
    };
    assert!(c0.connection_lost(now, "peer gone").is_some());
    // On connection 1: a LUN RESET of another LUN (its action with the driver), then TASK
    // REASSIGN twice.
    let reset = TaskMgmtRequest {
        lun: 1 << 48,
        ..pdu::tmf(TmfFunction::LOGICAL_UNIT_RESET, 0x40, RESERVED_TAG, 101)
    };
    c1.handle_pdu(now, reset.raw(&[]), &dir);
    drain(&mut c1);
    for itt in [0x41, 0x42] {
        let r = pdu::tmf(TmfFunction::TASK_REASSIGN, itt, 0x20, 101);
        c1.handle_pdu(now, r.raw(&[]), &dir);
    }
    session.complete_task(
        t.id,
        iscsi_proto::TaskOutcome {
            data_in: vec![5; 512],
            ..Default::default()
        },
    );
    c1.tmf_done();
    let (out, _) = drain(&mut c1);
    let statuses = out
        .iter()
        .filter(|o| matches!(&o.header, iscsi_wire::Header::ScsiResponse(r) if r.itt == 0x20))
        .count();
    assert_eq!(statuses, 1, "{out:?}");
    let tmf: Vec<(u32, u8)> = out
        .iter()
        .filter_map(|o| match &o.header {
            iscsi_wire::Header::TaskMgmtResponse(r) => Some((r.itt, r.response)),
            _ => None,
        })
        .collect();
    // LUN RESET and the first reassignment complete; the second finds the task allegiant.
    assert_eq!(tmf, vec![(0x40, 0), (0x41, 0), (0x42, 3)]);
}
