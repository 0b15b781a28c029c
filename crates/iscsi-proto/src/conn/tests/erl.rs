//! ErrorRecoveryLevel 1 (RFC 7143 §7.3, §11.16): SNACK and recovery R2Ts, through the engine.

use super::*;

/// A session at ErrorRecoveryLevel 1 (the target offers up to 2).
fn erl1(extra: &[(&str, &str)]) -> Harness {
    let mut cfg = ConnConfig::default();
    cfg.offer.error_recovery_level = 2;
    let mut keys = vec![("ErrorRecoveryLevel", "1")];
    keys.extend_from_slice(extra);
    let h = Harness::with(cfg, &keys);
    assert_eq!(h.c.params().unwrap().error_recovery_level, 1);
    h
}

fn snack(h: &mut Harness, kind: u8, itt: u32, ttt: u32, beg: u32, run: u32, exp_stat_sn: u32) {
    let p = Header::SnackRequest(SnackRequest {
        snack_type: kind,
        lun: 0,
        itt,
        ttt,
        exp_stat_sn,
        beg_run: beg,
        run_length: run,
    });
    h.c.handle_pdu(h.now, raw(p, &[]), &Dir);
}

fn nop_ack(h: &mut Harness, exp_stat_sn: u32) {
    let p = Header::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: RESERVED_TAG,
        ttt: RESERVED_TAG,
        cmd_sn: h.cmd_sn,
        exp_stat_sn,
    });
    h.c.handle_pdu(h.now, raw(p, &[]), &Dir);
}

/// A header with ExpCmdSN / MaxCmdSN cleared (the fields a retransmission updates).
fn without_window(h: &Header) -> Header {
    let mut h = h.clone();
    match &mut h {
        Header::DataIn(d) => (d.exp_cmd_sn, d.max_cmd_sn) = (0, 0),
        Header::ScsiResponse(r) => (r.exp_cmd_sn, r.max_cmd_sn) = (0, 0),
        _ => {}
    }
    h
}

fn reject_reason(o: &OutPdu) -> Option<RejectReason> {
    match &o.header {
        Header::Reject(r) => Some(r.reason),
        _ => None,
    }
}

/// A 10,000-byte read answered in three Data-In (MRDSL 4096) and a separate SCSI Response.
fn answered_read(h: &mut Harness, itt: u32) -> Vec<OutPdu> {
    h.cmd(itt, 0x28, true, false, 10000, true, &[]);
    let t = h.executed();
    let data: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: data,
            ..Default::default()
        },
    );
    outputs(&mut h.c)
}

#[test]
fn status_rides_alone_and_a_status_snack_sends_it_again_until_acknowledged() {
    let mut h = erl1(&[("MaxRecvDataSegmentLength", "4096")]);
    let out = answered_read(&mut h, 0x10);
    assert_eq!(out.len(), 4, "no phase collapse at ERL 1");
    assert!(out[..3]
        .iter()
        .all(|o| matches!(&o.header, Header::DataIn(d) if !d.has_status)));
    let Header::ScsiResponse(r) = &out[3].header else {
        panic!("{:?}", out[3].header)
    };
    assert_eq!((r.stat_sn, r.exp_data_sn, r.status), (51, 3, 0));
    // The response was lost: ask for it again (StatSN 51, one PDU).
    snack(&mut h, 1, RESERVED_TAG, 0, 51, 1, 51);
    let again = outputs(&mut h.c);
    assert_eq!(again.len(), 1);
    assert_eq!(
        without_window(&again[0].header),
        without_window(&out[3].header)
    );
    // RunLength 0: everything from BegRun.
    snack(&mut h, 1, RESERVED_TAG, 0, 51, 0, 51);
    assert_eq!(outputs(&mut h.c).len(), 1);
    // Never sent: Protocol Error.
    snack(&mut h, 1, RESERVED_TAG, 0, 52, 1, 51);
    let r = outputs(&mut h.c);
    assert_eq!(reject_reason(&r[0]), Some(RejectReason::PROTOCOL_ERROR));
    // The Reject took StatSN 52; the initiator acknowledges everything: nothing is kept.
    nop_ack(&mut h, 53);
    snack(&mut h, 1, RESERVED_TAG, 0, 51, 1, 53);
    let r = outputs(&mut h.c);
    assert_eq!(reject_reason(&r[0]), Some(RejectReason::PROTOCOL_ERROR));
    // And the Data SNACK for the acknowledged read is refused too.
    snack(&mut h, 0, 0x10, RESERVED_TAG, 0, 0, 54);
    let r = outputs(&mut h.c);
    assert_eq!(reject_reason(&r[0]), Some(RejectReason::PROTOCOL_ERROR));
}

#[test]
fn a_data_snack_sends_exact_copies_of_the_data_in_asked_for() {
    let mut h = erl1(&[("MaxRecvDataSegmentLength", "4096")]);
    let out = answered_read(&mut h, 0x11);
    snack(&mut h, 0, 0x11, RESERVED_TAG, 1, 1, 50);
    let again = outputs(&mut h.c);
    assert_eq!(again.len(), 1);
    assert_eq!(
        without_window(&again[0].header),
        without_window(&out[1].header)
    );
    assert_eq!(again[0].data.as_slice(), out[1].data.as_slice());
    // RunLength 0 from DataSN 1: DataSN 1 and 2.
    snack(&mut h, 0, 0x11, RESERVED_TAG, 1, 0, 50);
    let again = outputs(&mut h.c);
    let sns: Vec<u32> = again
        .iter()
        .map(|o| match &o.header {
            Header::DataIn(d) => d.data_sn,
            _ => u32::MAX,
        })
        .collect();
    assert_eq!(sns, vec![1, 2]);
    // Past the last DataSN: Protocol Error.
    snack(&mut h, 0, 0x11, RESERVED_TAG, 3, 1, 50);
    assert_eq!(
        reject_reason(&outputs(&mut h.c)[0]),
        Some(RejectReason::PROTOCOL_ERROR)
    );
}

#[test]
fn an_r_data_snack_cuts_the_data_again_and_tags_the_status() {
    let mut h = erl1(&[("MaxRecvDataSegmentLength", "4096")]);
    let out = answered_read(&mut h, 0x12);
    snack(&mut h, 3, 0x12, 0x77, 0, 0, 50);
    let again = outputs(&mut h.c);
    assert_eq!(again.len(), 4);
    let mut bytes = Vec::new();
    for o in &again[..3] {
        bytes.extend_from_slice(o.data.as_slice());
    }
    let orig: Vec<u8> = out[..3]
        .iter()
        .flat_map(|o| o.data.as_slice().to_vec())
        .collect();
    assert_eq!(bytes, orig);
    let Header::ScsiResponse(r) = &again[3].header else {
        panic!()
    };
    assert_eq!((r.snack_tag, r.stat_sn, r.exp_data_sn), (0x77, 51, 3));
}

#[test]
fn an_r2t_snack_sends_the_outstanding_r2t_again() {
    let mut h = erl1(&[("InitialR2T", "Yes")]);
    h.cmd(0x20, 0x2a, false, true, 8192, true, &[]);
    let r2ts = r2ts_of(&outputs(&mut h.c));
    assert_eq!(r2ts.len(), 1);
    snack(&mut h, 0, 0x20, RESERVED_TAG, r2ts[0].r2t_sn, 1, 50);
    let again = r2ts_of(&outputs(&mut h.c));
    assert_eq!(again, r2ts);
    // An R2TSN never sent: Protocol Error.
    snack(&mut h, 0, 0x20, RESERVED_TAG, 5, 1, 50);
    assert_eq!(
        reject_reason(&outputs(&mut h.c)[0]),
        Some(RejectReason::PROTOCOL_ERROR)
    );
    answer(&mut h, &r2ts[0]);
    assert_eq!(h.executed().data_out, vec![0xa5u8; 8192]);
}

/// The Data-Out BHS as the framing layer hands it over with a data digest error.
fn data_out_bhs(
    itt: u32,
    ttt: u32,
    data_sn: u32,
    offset: u32,
    final_bit: bool,
    len: usize,
) -> [u8; 48] {
    let h = Header::DataOut(DataOut {
        final_bit,
        lun: 0,
        itt,
        ttt,
        exp_stat_sn: 50,
        data_sn,
        buffer_offset: offset,
    });
    let mut bhs = h.emit();
    iscsi_wire::frame::encode_bhs_lengths(&mut bhs, 0, len);
    bhs
}

#[test]
fn a_data_out_with_a_bad_digest_is_asked_for_again_with_a_recovery_r2t() {
    let mut h = erl1(&[("InitialR2T", "Yes")]);
    h.cmd(0x30, 0x2a, false, true, 12288, true, &[]);
    let r2t = r2ts_of(&outputs(&mut h.c)).remove(0);
    let payload: Vec<u8> = (0..12288u32).map(|i| (i % 253) as u8).collect();
    // PDU 0 arrives; PDU 1 fails its data digest; PDU 2 (F) comes after the gap.
    h.data_out(0x30, r2t.ttt, 0, 0, false, &payload[..4096]);
    h.c.handle_digest_error(&data_out_bhs(0x30, r2t.ttt, 1, 4096, false, 4096));
    h.data_out(0x30, r2t.ttt, 2, 8192, true, &payload[8192..]);
    let out = outputs(&mut h.c);
    assert_eq!(
        reject_reason(&out[0]),
        Some(RejectReason::DATA_DIGEST_ERROR)
    );
    let rec = r2ts_of(&out);
    assert_eq!(rec.len(), 1, "{out:?}");
    assert_eq!((rec[0].buffer_offset, rec[0].desired_len), (4096, 8192));
    assert_eq!(rec[0].r2t_sn, r2t.r2t_sn + 1);
    assert_ne!(rec[0].ttt, r2t.ttt);
    assert!(events(&mut h.c).is_empty(), "the task waits for its data");
    // The initiator sends the rest again for the recovery R2T.
    h.data_out(0x30, rec[0].ttt, 0, 4096, false, &payload[4096..8192]);
    h.data_out(0x30, rec[0].ttt, 1, 8192, true, &payload[8192..]);
    assert_eq!(h.executed().data_out, payload);
}

#[test]
fn lost_unsolicited_data_is_asked_for_by_r2t() {
    let mut h = erl1(&[("InitialR2T", "No"), ("ImmediateData", "No")]);
    h.cmd(0x31, 0x2a, false, true, 8192, false, &[]);
    let payload: Vec<u8> = (0..8192u32).map(|i| (i % 249) as u8).collect();
    // Unsolicited PDU 0 is lost (header digest: dropped unseen); PDU 1 (F) shows the gap.
    h.data_out(0x31, RESERVED_TAG, 1, 4096, true, &payload[4096..]);
    let r2ts = r2ts_of(&outputs(&mut h.c));
    assert_eq!(r2ts.len(), 1);
    assert_eq!((r2ts[0].buffer_offset, r2ts[0].desired_len), (0, 8192));
    answer_with(&mut h, &r2ts[0], &payload);
    assert_eq!(h.executed().data_out, payload);
}

fn answer_with(h: &mut Harness, r: &R2t, payload: &[u8]) {
    let (o, n) = (r.buffer_offset as usize, r.desired_len as usize);
    h.data_out(r.itt, r.ttt, 0, r.buffer_offset, true, &payload[o..o + n]);
}

#[test]
fn a_task_that_keeps_losing_data_ends_with_protocol_service_crc_error() {
    let mut h = erl1(&[("InitialR2T", "Yes")]);
    h.cmd(0x32, 0x2a, false, true, 4096, true, &[]);
    let mut r = r2ts_of(&outputs(&mut h.c)).remove(0);
    for _ in 0..16 {
        h.c.handle_digest_error(&data_out_bhs(0x32, r.ttt, 0, 0, true, 4096));
        r = r2ts_of(&outputs(&mut h.c)).remove(0);
    }
    h.c.handle_digest_error(&data_out_bhs(0x32, r.ttt, 0, 0, true, 4096));
    let out = outputs(&mut h.c);
    let resp = out
        .iter()
        .find_map(|o| match &o.header {
            Header::ScsiResponse(r) => Some((r.status, o.data.as_slice().to_vec())),
            _ => None,
        })
        .expect("a SCSI Response");
    assert_eq!(resp.0, 0x02);
    assert_eq!(
        (resp.1[2 + 2], resp.1[2 + 12], resp.1[2 + 13]),
        (0x0b, 0x47, 0x05)
    );
    assert!(h.c.is_full_feature());
}

#[test]
fn a_command_with_a_bad_digest_is_dropped_and_its_retry_runs() {
    let mut h = erl1(&[]);
    let mut bad = Header::ScsiCommand(ScsiCommand {
        final_bit: true,
        read: true,
        attr: 1,
        itt: 0x40,
        expected_len: 512,
        cmd_sn: h.cmd_sn,
        cdb: [0x28; 16],
        ..Default::default()
    })
    .emit();
    iscsi_wire::frame::encode_bhs_lengths(&mut bad, 0, 16);
    h.c.handle_digest_error(&bad);
    let out = outputs(&mut h.c);
    assert_eq!(
        reject_reason(&out[0]),
        Some(RejectReason::DATA_DIGEST_ERROR)
    );
    assert!(h.c.is_full_feature(), "ERL 1 keeps the session");
    assert!(events(&mut h.c).is_empty());
    // The retry (same ITT and CmdSN) runs.
    h.cmd(0x40, 0x28, true, false, 512, true, &[]);
    assert_eq!(h.executed().itt, 0x40);
}

#[test]
fn snack_at_erl_0_is_a_protocol_error() {
    let mut h = Harness::new(&[]);
    snack(&mut h, 1, RESERVED_TAG, 0, 50, 0, 50);
    assert_eq!(
        reject_reason(&outputs(&mut h.c)[0]),
        Some(RejectReason::PROTOCOL_ERROR)
    );
}

// ---- ErrorRecoveryLevel 2: connection recovery, TASK REASSIGN -------------------------------

/// A session at ErrorRecoveryLevel 2 with MaxConnections 2 and Time2Retain 20 s.
fn erl2() -> Harness {
    let mut keys = vec![
        ("ErrorRecoveryLevel", "2"),
        ("MaxConnections", "2"),
        ("DefaultTime2Retain", "20"),
        ("DefaultTime2Wait", "2"),
        ("InitialR2T", "Yes"),
    ];
    keys.extend_from_slice(&[]);
    let mut cfg = ConnConfig::default();
    cfg.offer.error_recovery_level = 2;
    cfg.offer.max_connections = 2;
    let h = Harness::with(cfg, &keys);
    assert_eq!(h.c.params().unwrap().error_recovery_level, 2);
    h
}

/// A connection joining the harness's session (TSIH 9) with `cid`.
fn join(h: &Harness, cid: u16) -> Connection {
    let mut cfg = ConnConfig::default();
    cfg.offer.error_recovery_level = 2;
    cfg.offer.max_connections = 2;
    let mut c = Connection::new(cfg, h.now, 700);
    let req = Header::LoginRequest(LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: 0x8000_0000_0001,
        tsih: 9,
        itt: 1,
        cid,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
    });
    let keys = [
        ("InitiatorName", "iqn.2026-11.test:init"),
        ("TargetName", "iqn.2026-11.io.ferrite:t"),
    ];
    c.handle_pdu(h.now, raw(req, &text::encode(&keys)), &Dir);
    let ev = events(&mut c);
    let Some(ConnEvent::LoginComplete(r)) = ev.first() else {
        panic!("{ev:?}")
    };
    c.accept_join(&r.clone(), 9, &h.c.session().unwrap());
    assert!(c.is_full_feature());
    outputs(&mut c);
    events(&mut c);
    c
}

/// TASK REASSIGN of `rtt` sent on `c`; the PDUs that answer it.
fn reassign(c: &mut Connection, h: &mut Harness, rtt: u32, exp_data_sn: u32) -> Vec<OutPdu> {
    let p = Header::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::TASK_REASSIGN.0,
        lun: 0,
        itt: 0x900 + rtt,
        referenced_tag: rtt,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn: 0,
        exp_data_sn,
    });
    c.handle_pdu(h.now, raw(p, &[]), &Dir);
    outputs(c)
}

fn tmf_response(o: &OutPdu) -> Option<TmfResponse> {
    match &o.header {
        Header::TaskMgmtResponse(r) => Some(TmfResponse(r.response)),
        _ => None,
    }
}

#[test]
fn a_write_whose_connection_died_is_reassigned_and_asks_for_the_missing_data() {
    let mut h = erl2();
    h.cmd(0x50, 0x2a, false, true, 8192, true, &[]);
    let r2t = r2ts_of(&outputs(&mut h.c)).remove(0);
    let payload: Vec<u8> = (0..8192u32).map(|i| (i % 241) as u8).collect();
    h.data_out(0x50, r2t.ttt, 0, 0, false, &payload[..4096]);
    // The connection dies mid-write: the session and its task stay.
    let until =
        h.c.connection_lost(h.now, "peer gone")
            .expect("tasks retained");
    assert_eq!(until, h.now + Duration::from_secs(22));
    let session = h.c.session().unwrap();
    assert!(!session.is_over());
    // A new connection takes the connection's place (same CID: an implicit logout for
    // recovery), and reassigns the task.
    let mut c2 = join(&h, 0);
    let out = reassign(&mut c2, &mut h, 0x50, 0);
    assert_eq!(
        tmf_response(&out[0]),
        Some(TmfResponse::COMPLETE),
        "{out:?}"
    );
    let r2ts = r2ts_of(&out[1..]);
    assert_eq!(r2ts.len(), 1);
    assert_eq!((r2ts[0].buffer_offset, r2ts[0].desired_len), (4096, 4096));
    let d = Header::DataOut(DataOut {
        final_bit: true,
        itt: 0x50,
        ttt: r2ts[0].ttt,
        buffer_offset: 4096,
        ..Default::default()
    });
    c2.handle_pdu(h.now, raw(d, &payload[4096..]), &Dir);
    let ev = events(&mut c2);
    let [ConnEvent::Execute(t)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(t.data_out, payload);
    c2.complete_task(t.id, TaskOutcome::default());
    let out = outputs(&mut c2);
    assert!(matches!(&out[0].header, Header::ScsiResponse(r) if r.itt == 0x50 && r.status == 0));
}

#[test]
fn a_read_that_finished_while_its_connection_was_down_is_answered_after_reassignment() {
    let mut h = erl2();
    h.cmd(0x51, 0x28, true, false, 4096, true, &[]);
    let t = h.executed();
    h.c.connection_lost(h.now, "peer gone").expect("retained");
    let session = h.c.session().unwrap();
    // It finishes with nobody to answer to: kept.
    session.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![0x3c; 4096],
            ..Default::default()
        },
    );
    // A new connection (another CID) reassigns it.
    let mut c2 = join(&h, 1);
    let out = reassign(&mut c2, &mut h, 0x51, 0);
    assert_eq!(tmf_response(&out[0]), Some(TmfResponse::COMPLETE));
    let Header::DataIn(d) = &out[1].header else {
        panic!("{out:?}")
    };
    assert_eq!((d.itt, d.data_sn, d.buffer_offset), (0x51, 0, 0));
    assert_eq!(out[1].data.as_slice(), &[0x3c; 4096][..]);
    assert!(
        matches!(&out[2].header, Header::ScsiResponse(r) if r.itt == 0x51 && r.exp_data_sn == 1)
    );
}

#[test]
fn an_answered_read_lost_with_its_connection_is_sent_again_from_exp_data_sn() {
    let mut h = erl2();
    h.cmd(0x52, 0x28, true, false, 200_000, true, &[]);
    let t = h.executed();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: data.clone(),
            ..Default::default()
        },
    );
    // Sent (MRDSL 8192 by default: 25 Data-In) but lost with the connection before the
    // initiator acknowledged the status; it got DataSN 0-9.
    assert_eq!(outputs(&mut h.c).len(), 26);
    h.c.connection_lost(h.now, "peer gone").expect("retained");
    let mut c2 = join(&h, 1);
    let out = reassign(&mut c2, &mut h, 0x52, 10);
    assert_eq!(tmf_response(&out[0]), Some(TmfResponse::COMPLETE));
    let mut got = Vec::new();
    for (i, o) in out[1..16].iter().enumerate() {
        let Header::DataIn(d) = &o.header else {
            panic!("{:?}", o.header)
        };
        assert_eq!(d.data_sn, 10 + i as u32);
        got.extend_from_slice(o.data.as_slice());
    }
    assert_eq!(got, data[10 * 8192..]);
    assert!(matches!(&out[16].header, Header::ScsiResponse(r) if r.exp_data_sn == 25));
}

#[test]
fn reassignment_refusals() {
    // A task whose connection is up is still allegiant to it.
    let mut h = erl2();
    h.cmd(0x53, 0x28, true, false, 512, true, &[]);
    h.executed();
    let mut c2 = join(&h, 1);
    let out = reassign(&mut c2, &mut h, 0x53, 0);
    assert_eq!(
        tmf_response(&out[0]),
        Some(TmfResponse::TASK_STILL_ALLEGIANT)
    );
    let out = reassign(&mut c2, &mut h, 0x99, 0);
    assert_eq!(
        tmf_response(&out[0]),
        Some(TmfResponse::TASK_DOES_NOT_EXIST)
    );
    // Below ErrorRecoveryLevel 2 there is no reassignment.
    let mut h1 = erl1(&[]);
    h1.cmd(0x54, 0x28, true, false, 512, true, &[]);
    let p = Header::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::TASK_REASSIGN.0,
        itt: 0x901,
        referenced_tag: 0x54,
        ..Default::default()
    });
    h1.c.handle_pdu(h1.now, raw(p, &[]), &Dir);
    let out = outputs(&mut h1.c);
    assert_eq!(
        tmf_response(&out[0]),
        Some(TmfResponse::REASSIGNMENT_NOT_SUPPORTED)
    );
}

#[test]
fn tasks_of_a_failed_connection_end_when_time2retain_is_up() {
    let mut h = erl2();
    h.cmd(0x55, 0x2a, false, true, 4096, true, &[]);
    outputs(&mut h.c);
    h.cmd(0x56, 0x28, true, false, 512, true, &[]);
    let t = h.executed();
    let until = h.c.connection_lost(h.now, "peer gone").unwrap();
    let session = h.c.session().unwrap();
    session.expire(until - Duration::from_secs(1));
    assert!(!session.is_over());
    session.expire(until);
    // Nothing left: the session is over, and the running task's result is dropped.
    assert!(session.is_over());
    session.complete_task(t.id, TaskOutcome::default());
    assert!(session.is_over());
}

#[test]
fn a_logout_for_recovery_from_another_connection_keeps_its_tasks() {
    let mut h = erl2();
    h.cmd(0x57, 0x28, true, false, 512, true, &[]);
    let t = h.executed();
    let mut c2 = join(&h, 1);
    let p = Header::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: LogoutReason::REMOVE_FOR_RECOVERY,
        itt: 0x777,
        cid: 0,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
    });
    c2.handle_pdu(h.now, raw(p, &[]), &Dir);
    let out = outputs(&mut c2);
    let Header::LogoutResponse(r) = &out[0].header else {
        panic!("{out:?}")
    };
    assert_eq!(
        (r.response, r.time2wait, r.time2retain),
        (LogoutResponseCode::CLOSED, 2, 20)
    );
    // Connection 0 closes; its task carries on and is answered after reassignment.
    assert!(matches!(
        events(&mut h.c).as_slice(),
        [ConnEvent::Close { .. }]
    ));
    c2.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![1; 512],
            ..Default::default()
        },
    );
    assert!(outputs(&mut c2).is_empty(), "not before reassignment");
    let out = reassign(&mut c2, &mut h, 0x57, 0);
    assert_eq!(tmf_response(&out[0]), Some(TmfResponse::COMPLETE));
    assert_eq!(out.len(), 3);
}

#[test]
fn snacks_wait_for_their_copies_to_go_out() {
    let mut h = erl1(&[("MaxRecvDataSegmentLength", "512")]);
    h.cmd(0x60, 0x28, true, false, 65536, true, &[]);
    let t = h.executed();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![9; 65536],
            ..Default::default()
        },
    );
    outputs(&mut h.c);
    // One SNACK asking for all 128 Data-In again, then more before anything is sent: the
    // queue stops taking SNACKs once it holds 256 PDUs.
    for _ in 0..4 {
        snack(&mut h, 0, 0x60, RESERVED_TAG, 0, 0, 51);
    }
    let out = outputs(&mut h.c);
    assert_eq!(out.len(), 256 + 2, "two SNACKs served, two refused");
    let refused: Vec<_> = out.iter().filter_map(reject_reason).collect();
    assert_eq!(refused, vec![RejectReason::SNACK_REJECT; 2]);
    // Once they are out, SNACKs are served again.
    snack(&mut h, 0, 0x60, RESERVED_TAG, 127, 1, 51);
    assert_eq!(outputs(&mut h.c).len(), 1);
}
