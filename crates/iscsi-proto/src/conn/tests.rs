//! Scripted-initiator tests of the connection engine: PDUs in, PDUs and events out.

use super::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use iscsi_wire::{text, LogoutReason, LogoutResponseCode, RejectReason, Stage, BHS_LEN};
use iscsi_wire::{TmfFunction, TmfResponse, RESERVED_TAG};

struct Dir;
impl Directory for Dir {
    fn tpg_tag(&self) -> u16 {
        7
    }
    fn target(&self, name: &str, _i: &str) -> Option<Option<String>> {
        (name == "iqn.2026-11.io.ferrite:t").then(|| Some("alias".into()))
    }
    fn send_targets(&self, _i: &str, filter: Option<&str>) -> Vec<(String, Vec<String>)> {
        let all = vec![
            (
                "iqn.2026-11.io.ferrite:t".to_string(),
                vec!["127.0.0.1:3260,7".to_string()],
            ),
            (
                "iqn.2026-11.io.ferrite:u".to_string(),
                vec!["[::1]:3260,8".to_string()],
            ),
        ];
        all.into_iter()
            .filter(|(n, _)| filter.is_none_or(|f| f == n))
            .collect()
    }
}

fn raw(h: Header, data: &[u8]) -> RawPdu {
    let mut bhs = h.emit();
    iscsi_wire::frame::encode_bhs_lengths(&mut bhs, 0, data.len());
    RawPdu {
        bhs,
        ahs: Vec::new(),
        data: data.to_vec(),
    }
}

fn login_req(csg: Stage, nsg: Stage, transit: bool, keys: &[(&str, &str)]) -> RawPdu {
    let h = Header::LoginRequest(LoginRequest {
        transit,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: 0x8000_0000_0001,
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 100,
        exp_stat_sn: 0,
    });
    raw(h, &text::encode(keys))
}

struct Harness {
    c: Connection,
    now: Instant,
    cmd_sn: u32,
}

fn outputs(c: &mut Connection) -> Vec<OutPdu> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}
fn events(c: &mut Connection) -> Vec<ConnEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

const BASE_KEYS: &[(&str, &str)] = &[
    ("InitiatorName", "iqn.2026-11.test:init"),
    ("TargetName", "iqn.2026-11.io.ferrite:t"),
    ("SessionType", "Normal"),
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
];

#[allow(clippy::too_many_arguments)]
impl Harness {
    fn with(cfg: ConnConfig, extra: &[(&str, &str)]) -> Harness {
        let now = Instant::now();
        let mut c = Connection::new(cfg, now, 50);
        let mut keys = BASE_KEYS.to_vec();
        keys.extend_from_slice(extra);
        c.handle_pdu(
            now,
            login_req(Stage::Operational, Stage::FullFeature, true, &keys),
            &Dir,
        );
        let ev = events(&mut c);
        let Some(ConnEvent::LoginComplete(r)) = ev.first() else {
            panic!("{ev:?}")
        };
        let r = r.clone();
        c.accept_login(&r, 9);
        let out = outputs(&mut c);
        assert_eq!(out.len(), 1);
        let Header::LoginResponse(l) = &out[0].header else {
            panic!()
        };
        assert!(l.transit && l.status.is_success());
        assert_eq!((l.tsih, l.nsg, l.stat_sn), (9, Stage::FullFeature, 50));
        assert!(c.is_full_feature());
        events(&mut c);
        Harness {
            c,
            now,
            cmd_sn: 100,
        }
    }

    fn new(extra: &[(&str, &str)]) -> Harness {
        Harness::with(ConnConfig::default(), extra)
    }

    fn cmd(
        &mut self,
        itt: u32,
        cdb0: u8,
        read: bool,
        write: bool,
        edtl: u32,
        final_bit: bool,
        data: &[u8],
    ) {
        let mut cdb = [0u8; 16];
        cdb[0] = cdb0;
        let h = Header::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit,
            read,
            write,
            attr: 1,
            lun: 0,
            itt,
            expected_len: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb,
        });
        self.cmd_sn += 1;
        self.c.handle_pdu(self.now, raw(h, data), &Dir);
    }

    /// A command without data: `cdb0` on `lun` (the raw LUN field) with task attribute `attr`.
    fn cmd_attr(&mut self, itt: u32, cdb0: u8, lun: u64, attr: u8) {
        let mut cdb = [0u8; 16];
        cdb[0] = cdb0;
        let h = Header::ScsiCommand(ScsiCommand {
            final_bit: true,
            attr,
            lun,
            itt,
            cmd_sn: self.cmd_sn,
            cdb,
            ..Default::default()
        });
        self.cmd_sn += 1;
        self.c.handle_pdu(self.now, raw(h, &[]), &Dir);
    }

    /// ITTs of the tasks handed to the device server since the last look.
    fn executed_itts(&mut self) -> Vec<u32> {
        events(&mut self.c)
            .into_iter()
            .filter_map(|e| match e {
                ConnEvent::Execute(t) => Some(t.itt),
                _ => None,
            })
            .collect()
    }

    fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        final_bit: bool,
        data: &[u8],
    ) {
        let h = Header::DataOut(DataOut {
            final_bit,
            lun: 0,
            itt,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: offset,
        });
        self.c.handle_pdu(self.now, raw(h, data), &Dir);
    }

    fn executed(&mut self) -> ScsiTask {
        let ev = events(&mut self.c);
        match ev.as_slice() {
            [ConnEvent::Execute(t)] => t.clone(),
            other => panic!("expected one Execute, got {other:?}"),
        }
    }
}

#[test]
fn login_negotiates_and_declares() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 1);
    let keys = [
        ("InitiatorName", "iqn.2026-11.test:init"),
        ("TargetName", "iqn.2026-11.io.ferrite:t"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("HeaderDigest", "None,CRC32C"),
        ("X-vendor.key", "1"),
    ];
    c.handle_pdu(
        now,
        login_req(Stage::Operational, Stage::FullFeature, true, &keys),
        &Dir,
    );
    let Some(ConnEvent::LoginComplete(r)) = c.poll_event() else {
        panic!()
    };
    assert_eq!(r.initiator_name, "iqn.2026-11.test:init");
    assert_eq!(r.isid, 0x8000_0000_0001);
    assert!(!r.params.initial_r2t && r.params.immediate_data);
    assert_eq!(r.params.initiator_mrdsl, 65536);
    c.accept_login(&r, 3);
    let out = outputs(&mut c);
    let pairs = text::parse(out[0].data.as_slice()).unwrap();
    let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    assert_eq!(get("HeaderDigest").as_deref(), Some("None"));
    assert_eq!(get("InitialR2T").as_deref(), Some("No"));
    assert_eq!(get("X-vendor.key").as_deref(), Some("NotUnderstood"));
    assert_eq!(get("TargetPortalGroupTag").as_deref(), Some("7"));
    assert_eq!(get("TargetAlias").as_deref(), Some("alias"));
    assert_eq!(get("MaxRecvDataSegmentLength").as_deref(), Some("262144"));
    assert_eq!(get("MaxBurstLength").as_deref(), Some("262144"));
}

fn login_status(keys: &[(&str, &str)], csg: Stage, nsg: Stage, version_min: u8) -> LoginStatus {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 1);
    let mut p = login_req(csg, nsg, true, keys);
    p.bhs[3] = version_min;
    c.handle_pdu(now, p, &Dir);
    let out = outputs(&mut c);
    let Header::LoginResponse(l) = &out[0].header else {
        panic!()
    };
    let ev = events(&mut c);
    if !l.status.is_success() {
        assert!(matches!(ev.as_slice(), [ConnEvent::Close { .. }]), "{ev:?}");
    }
    l.status
}

#[test]
fn login_refusals_carry_the_right_status() {
    let op = Stage::Operational;
    let ff = Stage::FullFeature;
    assert_eq!(
        login_status(&[("TargetName", "iqn.2026-11.io.ferrite:t")], op, ff, 0),
        LoginStatus::MISSING_PARAMETER
    );
    assert_eq!(
        login_status(&[("InitiatorName", "iqn.x:i")], op, ff, 0),
        LoginStatus::MISSING_PARAMETER
    );
    assert_eq!(
        login_status(
            &[("InitiatorName", "iqn.x:i"), ("TargetName", "iqn.nope:x")],
            op,
            ff,
            0
        ),
        LoginStatus::NOT_FOUND
    );
    assert_eq!(
        login_status(BASE_KEYS, op, ff, 1),
        LoginStatus::UNSUPPORTED_VERSION
    );
    assert_eq!(
        login_status(BASE_KEYS, ff, ff, 0),
        LoginStatus::INITIATOR_ERROR
    );
    assert_eq!(
        login_status(BASE_KEYS, op, Stage::Security, 0),
        LoginStatus::INITIATOR_ERROR
    );
    assert_eq!(
        login_status(
            &[("InitiatorName", "iqn.x:i"), ("SessionType", "Bogus")],
            op,
            ff,
            0
        ),
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED
    );
    let mut dup = BASE_KEYS.to_vec();
    dup.push(("InitialR2T", "Yes"));
    dup.push(("InitialR2T", "No"));
    assert_eq!(login_status(&dup, op, ff, 0), LoginStatus::INITIATOR_ERROR);
    // Only CHAP offered, and no CHAP configured: refused on leaving the security stage.
    let mut chap = BASE_KEYS.to_vec();
    chap.push(("AuthMethod", "CHAP"));
    assert_eq!(
        login_status(&chap, Stage::Security, op, 0),
        LoginStatus::AUTHENTICATION_FAILURE
    );
}

#[test]
fn security_then_operational_stage() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 1);
    let mut keys = BASE_KEYS.to_vec();
    keys.push(("AuthMethod", "CHAP,None"));
    c.handle_pdu(
        now,
        login_req(Stage::Security, Stage::Operational, true, &keys),
        &Dir,
    );
    let out = outputs(&mut c);
    let Header::LoginResponse(l) = &out[0].header else {
        panic!()
    };
    assert!(l.transit && l.nsg == Stage::Operational && l.status.is_success());
    assert!(text::parse(out[0].data.as_slice())
        .unwrap()
        .contains(&("AuthMethod".into(), "None".into())));
    // Operational stage without transit: target answers and declares, stays.
    let mut p = login_req(
        Stage::Operational,
        Stage::FullFeature,
        false,
        &[("MaxOutstandingR2T", "4")],
    );
    p.bhs[24..28].copy_from_slice(&100u32.to_be_bytes());
    c.handle_pdu(now, p, &Dir);
    let out = outputs(&mut c);
    let Header::LoginResponse(l) = &out[0].header else {
        panic!()
    };
    assert!(!l.transit);
    assert_eq!(l.stat_sn, 2);
    c.handle_pdu(
        now,
        login_req(Stage::Operational, Stage::FullFeature, true, &[]),
        &Dir,
    );
    assert!(
        matches!(c.poll_event(), Some(ConnEvent::LoginComplete(r)) if r.params.max_outstanding_r2t == 4)
    );
}

#[test]
fn read_is_split_by_mrdsl_with_status_in_last_data_in() {
    let mut h = Harness::new(&[("MaxRecvDataSegmentLength", "4096")]);
    h.cmd(0x10, 0x28, true, false, 10000, true, &[]);
    let t = h.executed();
    assert_eq!((t.itt, t.read, t.expected_len), (0x10, true, 10000));
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![7u8; 10000],
            ..Default::default()
        },
    );
    let out = outputs(&mut h.c);
    assert_eq!(out.len(), 3);
    let mut off = 0;
    for (i, o) in out.iter().enumerate() {
        let Header::DataIn(d) = &o.header else {
            panic!()
        };
        assert_eq!((d.data_sn, d.buffer_offset), (i as u32, off));
        off += o.data.len() as u32;
        assert_eq!(d.has_status, i == 2);
    }
    assert_eq!(out[2].data.len(), 10000 - 8192);
    let Header::DataIn(last) = &out[2].header else {
        panic!()
    };
    assert!(last.final_bit && !last.underflow && !last.overflow && last.stat_sn == 51);
}

#[test]
fn read_residuals() {
    let mut h = Harness::new(&[]);
    // Device produced 512 bytes but the initiator expected 10000: underflow.
    h.cmd(1, 0x28, true, false, 10000, true, &[]);
    let t = h.executed();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![1; 512],
            ..Default::default()
        },
    );
    let out = outputs(&mut h.c);
    let Header::DataIn(d) = &out[0].header else {
        panic!()
    };
    assert!(d.has_status && d.underflow && d.residual == 10000 - 512);
    // Expected 200 of 512: 200 bytes sent, overflow 312.
    h.cmd(2, 0x28, true, false, 200, true, &[]);
    let t = h.executed();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![1; 512],
            ..Default::default()
        },
    );
    let out = outputs(&mut h.c);
    assert_eq!(out[0].data.len(), 200);
    let Header::DataIn(d) = &out[0].header else {
        panic!()
    };
    assert!(d.overflow && d.residual == 312);
    // Expected 0: no data, SCSI Response with overflow.
    h.cmd(3, 0x28, true, false, 0, true, &[]);
    let t = h.executed();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![1; 512],
            ..Default::default()
        },
    );
    let out = outputs(&mut h.c);
    let Header::ScsiResponse(r) = &out[0].header else {
        panic!()
    };
    assert!(r.overflow && r.residual == 512 && out.len() == 1);
}

#[test]
fn check_condition_goes_in_scsi_response_with_sense_length() {
    let mut h = Harness::new(&[]);
    h.cmd(5, 0x28, true, false, 512, true, &[]);
    let t = h.executed();
    let sense = vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0];
    h.c.complete_task(
        t.id,
        TaskOutcome {
            status: 2,
            sense: sense.clone(),
            data_in: vec![],
            data_out_len: 0,
        },
    );
    let out = outputs(&mut h.c);
    let Header::ScsiResponse(r) = &out[0].header else {
        panic!()
    };
    assert_eq!(r.status, 2);
    assert_eq!(&out[0].data.as_slice()[..2], &[0, 18]);
    assert_eq!(&out[0].data.as_slice()[2..], &sense[..]);
}

#[test]
fn write_with_immediate_unsolicited_and_r2t() {
    // FirstBurst 8192, MaxBurst 16384, InitialR2T=No, 4 R2Ts outstanding.
    let mut cfg = ConnConfig::default();
    cfg.offer.max_outstanding_r2t = 4;
    let mut h = Harness::with(
        cfg,
        &[
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("FirstBurstLength", "8192"),
            ("MaxBurstLength", "16384"),
            ("MaxOutstandingR2T", "2"),
        ],
    );
    let edtl = 8192 + 16384 * 2 + 100;
    let data: Vec<u8> = (0..edtl).map(|i| (i % 251) as u8).collect();
    h.cmd(0x20, 0x2a, false, true, edtl, false, &data[..4096]);
    assert!(outputs(&mut h.c).is_empty());
    h.data_out(0x20, RESERVED_TAG, 0, 4096, true, &data[4096..8192]);
    let out = outputs(&mut h.c);
    assert_eq!(out.len(), 2, "two R2Ts (MaxOutstandingR2T=2)");
    let r2ts: Vec<R2t> = out
        .iter()
        .map(|o| match &o.header {
            Header::R2t(r) => r.clone(),
            x => panic!("{x:?}"),
        })
        .collect();
    assert_eq!(
        (r2ts[0].buffer_offset, r2ts[0].desired_len, r2ts[0].r2t_sn),
        (8192, 16384, 0)
    );
    assert_eq!(
        (r2ts[1].buffer_offset, r2ts[1].desired_len, r2ts[1].r2t_sn),
        (8192 + 16384, 16384, 1)
    );
    // First R2T answered in two PDUs.
    h.data_out(0x20, r2ts[0].ttt, 0, 8192, false, &data[8192..16384]);
    h.data_out(0x20, r2ts[0].ttt, 1, 16384, true, &data[16384..24576]);
    let out = outputs(&mut h.c);
    let Header::R2t(r3) = &out[0].header else {
        panic!()
    };
    assert_eq!(
        (r3.buffer_offset, r3.desired_len, r3.r2t_sn),
        (40960, 100, 2)
    );
    h.data_out(0x20, r2ts[1].ttt, 0, 24576, true, &data[24576..40960]);
    assert!(events(&mut h.c).is_empty());
    h.data_out(0x20, r3.ttt, 0, 40960, true, &data[40960..]);
    let t = h.executed();
    assert_eq!(t.data_out, data);
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_out_len: edtl,
            ..Default::default()
        },
    );
    let out = outputs(&mut h.c);
    let Header::ScsiResponse(r) = &out[0].header else {
        panic!()
    };
    assert!(!r.overflow && !r.underflow && r.status == 0 && r.exp_data_sn == 3);
}

#[test]
fn bad_data_sn_fails_the_task_and_keeps_the_connection() {
    let mut h = Harness::new(&[("InitialR2T", "No"), ("FirstBurstLength", "65536")]);
    h.cmd(0x30, 0x2a, false, true, 1024, false, &[]);
    h.data_out(0x30, RESERVED_TAG, 1, 0, false, &[0u8; 512]);
    let out = outputs(&mut h.c);
    let Header::ScsiResponse(r) = &out[0].header else {
        panic!("{out:?}")
    };
    assert_eq!((r.itt, r.status), (0x30, 2));
    // Sense: ABORTED COMMAND, DATA PHASE ERROR.
    let sense = &out[0].data.as_slice()[2..];
    assert_eq!((sense[2], sense[12], sense[13]), (0x0b, 0x4b, 0x00));
    // The rest of the task's data is dropped silently; the connection carries on.
    h.data_out(0x30, RESERVED_TAG, 0, 512, true, &[0u8; 512]);
    assert!(outputs(&mut h.c).is_empty());
    assert!(events(&mut h.c).is_empty());
    assert!(!h.c.is_closed());
    h.cmd(0x31, 0x00, false, false, 0, true, &[]);
    assert_eq!(h.executed().itt, 0x31);
}

#[test]
fn write_overflow_residual_from_device() {
    let mut h = Harness::new(&[]);
    h.cmd(0x40, 0x2a, false, true, 512, true, &[9u8; 512]);
    let t = h.executed();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_out_len: 1024,
            ..Default::default()
        },
    );
    let out = outputs(&mut h.c);
    let Header::ScsiResponse(r) = &out[0].header else {
        panic!()
    };
    assert!(r.overflow && r.residual == 512);
}

#[test]
fn cmd_sn_window() {
    let mut h = Harness::new(&[]);
    // Too high (beyond MaxCmdSN) and too low: silently dropped.
    let saved = h.cmd_sn;
    h.cmd_sn = saved + 1000;
    h.cmd(1, 0, false, false, 0, true, &[]);
    h.cmd_sn = saved - 1;
    h.cmd(2, 0, false, false, 0, true, &[]);
    assert!(events(&mut h.c).is_empty() && outputs(&mut h.c).is_empty());
    // Out of order inside the window: held until the gap is filled.
    h.cmd_sn = saved + 1;
    h.cmd(3, 0, false, false, 0, true, &[]);
    assert!(events(&mut h.c).is_empty());
    h.cmd_sn = saved;
    h.cmd(4, 0, false, false, 0, true, &[]);
    let ev = events(&mut h.c);
    let itts: Vec<u32> = ev
        .iter()
        .map(|e| match e {
            ConnEvent::Execute(t) => t.itt,
            x => panic!("{x:?}"),
        })
        .collect();
    assert_eq!(itts, vec![4, 3]);
}

#[test]
fn nop_ping_echo_and_target_keepalive() {
    let cfg = ConnConfig {
        nop_interval: Some(Duration::from_secs(5)),
        nop_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut h = Harness::with(cfg, &[]);
    let nop = Header::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: 77,
        ttt: RESERVED_TAG,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
    });
    h.c.handle_pdu(h.now, raw(nop, b"ping"), &Dir);
    let out = outputs(&mut h.c);
    let Header::NopIn(n) = &out[0].header else {
        panic!()
    };
    assert_eq!((n.itt, n.ttt), (77, RESERVED_TAG));
    assert_eq!(out[0].data.as_slice(), b"ping");
    // Idle: the target pings, the initiator answers, no close.
    let t1 = h.now + Duration::from_secs(6);
    assert!(h.c.poll_timeout().unwrap() <= t1);
    h.c.handle_timeout(t1);
    let out = outputs(&mut h.c);
    let Header::NopIn(p) = &out[0].header else {
        panic!()
    };
    assert_eq!(p.itt, RESERVED_TAG);
    let answer = Header::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: RESERVED_TAG,
        ttt: p.ttt,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
    });
    h.c.handle_pdu(t1, raw(answer, &[]), &Dir);
    h.c.handle_timeout(t1 + Duration::from_secs(4));
    assert!(!h.c.is_closed());
    // Next ping goes unanswered: closed.
    h.c.handle_timeout(t1 + Duration::from_secs(6));
    outputs(&mut h.c);
    h.c.handle_timeout(t1 + Duration::from_secs(12));
    assert!(h.c.is_closed());
}

fn tmf(h: &mut Harness, func: TmfFunction, rtt: u32, ref_cmd_sn: u32) {
    let t = Header::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: func.0,
        lun: 0,
        itt: 0x99,
        referenced_tag: rtt,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn,
        exp_data_sn: 0,
    });
    h.c.handle_pdu(h.now, raw(t, &[]), &Dir);
}

#[test]
fn abort_task_waits_for_the_running_task_and_suppresses_its_response() {
    let mut h = Harness::new(&[]);
    let sn = h.cmd_sn;
    h.cmd(0x50, 0x2a, false, true, 512, true, &[1u8; 512]);
    let t = h.executed();
    tmf(&mut h, TmfFunction::ABORT_TASK, 0x50, sn);
    assert!(
        outputs(&mut h.c).is_empty(),
        "TMF answered only after the task stopped"
    );
    // The driver is asked to stop it, if it can.
    assert_eq!(events(&mut h.c), vec![ConnEvent::Cancel(t.id)]);
    h.c.complete_task(t.id, TaskOutcome::default());
    let out = outputs(&mut h.c);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0].header, Header::TaskMgmtResponse(r) if r.response == TmfResponse::COMPLETE.0)
    );
    // Aborting a task that already completed: does not exist.
    let sn = h.cmd_sn;
    h.cmd(0x51, 0x00, false, false, 0, true, &[]);
    let t = h.executed();
    h.c.complete_task(t.id, TaskOutcome::default());
    outputs(&mut h.c);
    tmf(&mut h, TmfFunction::ABORT_TASK, 0x51, sn);
    let out = outputs(&mut h.c);
    assert!(
        matches!(&out[0].header, Header::TaskMgmtResponse(r) if r.response == TmfResponse::TASK_DOES_NOT_EXIST.0)
    );
}

#[test]
fn lun_reset_aborts_and_reports_action() {
    let mut h = Harness::new(&[]);
    h.cmd(0x60, 0x28, true, false, 512, true, &[]);
    let t = h.executed();
    tmf(&mut h, TmfFunction::LOGICAL_UNIT_RESET, RESERVED_TAG, 0);
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![0; 512],
            ..Default::default()
        },
    );
    assert!(
        outputs(&mut h.c).is_empty(),
        "no Data-In for the aborted read, and no response before the driver is done"
    );
    assert_eq!(
        events(&mut h.c),
        vec![
            ConnEvent::Cancel(t.id),
            ConnEvent::Tmf(TmfAction::LunReset { lun: 0 })
        ]
    );
    // A NOP-Out meanwhile is answered; the TMF waits for the driver (other sessions' tasks).
    h.c.tmf_done();
    let out = outputs(&mut h.c);
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0].header, Header::TaskMgmtResponse(r) if r.response == 0));
    h.c.tmf_done(); // nothing more to answer
    assert!(outputs(&mut h.c).is_empty());
}

#[test]
fn logout_closes_after_response() {
    let mut h = Harness::new(&[]);
    let l = Header::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: LogoutReason::CLOSE_SESSION,
        itt: 0x70,
        cid: 0,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: 0,
    });
    h.c.handle_pdu(h.now, raw(l, &[]), &Dir);
    let out = outputs(&mut h.c);
    assert!(
        matches!(&out[0].header, Header::LogoutResponse(r) if r.response == LogoutResponseCode::CLOSED && r.itt == 0x70)
    );
    assert!(h.c.is_closed());
}

#[test]
fn discovery_send_targets_with_continuation() {
    let now = Instant::now();
    let mut c = Connection::new(ConnConfig::default(), now, 1);
    let keys = [
        ("InitiatorName", "iqn.x:i"),
        ("SessionType", "Discovery"),
        ("MaxRecvDataSegmentLength", "512"),
    ];
    c.handle_pdu(
        now,
        login_req(Stage::Operational, Stage::FullFeature, true, &keys),
        &Dir,
    );
    let Some(ConnEvent::LoginComplete(r)) = c.poll_event() else {
        panic!()
    };
    c.accept_login(&r, 1);
    outputs(&mut c);
    let req = Header::TextRequest(TextRequest {
        immediate: true,
        final_bit: true,
        cont: false,
        lun: 0,
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: 100,
        exp_stat_sn: 0,
    });
    c.handle_pdu(now, raw(req, b"SendTargets=All\0"), &Dir);
    let out = outputs(&mut c);
    let Header::TextResponse(t) = &out[0].header else {
        panic!()
    };
    assert!(t.final_bit && t.ttt == RESERVED_TAG);
    let pairs = text::parse(out[0].data.as_slice()).unwrap();
    assert_eq!(
        pairs,
        vec![
            ("TargetName".into(), "iqn.2026-11.io.ferrite:t".into()),
            ("TargetAddress".into(), "127.0.0.1:3260,7".into()),
            ("TargetName".into(), "iqn.2026-11.io.ferrite:u".into()),
            ("TargetAddress".into(), "[::1]:3260,8".into()),
        ]
    );
    // SCSI commands are not allowed in a discovery session.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x12;
    let sc = Header::ScsiCommand(ScsiCommand {
        final_bit: true,
        itt: 6,
        cmd_sn: 100,
        cdb,
        ..Default::default()
    });
    c.handle_pdu(now, raw(sc, &[]), &Dir);
    assert!(matches!(&outputs(&mut c)[0].header, Header::Reject(_)));
}

#[test]
fn garbage_in_full_feature_is_rejected_not_fatal() {
    let mut h = Harness::new(&[]);
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x1c; // undefined initiator opcode
    h.c.handle_pdu(
        h.now,
        RawPdu {
            bhs,
            ahs: vec![],
            data: vec![],
        },
        &Dir,
    );
    let out = outputs(&mut h.c);
    assert!(
        matches!(&out[0].header, Header::Reject(r) if r.reason == RejectReason::COMMAND_NOT_SUPPORTED)
    );
    assert!(!h.c.is_closed());
    // Data-Out for an unknown task.
    h.data_out(0x1234, 5, 0, 0, true, &[0; 16]);
    assert!(matches!(&outputs(&mut h.c)[0].header, Header::Reject(_)));
}

mod chap_login {
    use super::*;
    use crate::chap::{decode_binary, encode_hex, Algorithm, Secret};
    use crate::login::{Access, AuthPolicy};

    struct ChapDir {
        mutual: bool,
    }
    impl Directory for ChapDir {
        fn tpg_tag(&self) -> u16 {
            1
        }
        fn target(&self, _n: &str, _i: &str) -> Option<Option<String>> {
            Some(None)
        }
        fn send_targets(&self, _i: &str, _f: Option<&str>) -> Vec<(String, Vec<String>)> {
            vec![]
        }
        fn access(&self, _t: &str, initiator: &str) -> Access {
            if initiator == "iqn.2026-11.test:stranger" {
                Access::Denied
            } else {
                Access::Allowed { alias: None }
            }
        }
        fn auth(&self, _i: &str, _t: Option<&str>) -> AuthPolicy {
            AuthPolicy {
                required: true,
                initiator: Some(Secret {
                    user: "alice".into(),
                    secret: b"initiator-secret-1".to_vec(),
                }),
                target: self.mutual.then(|| Secret {
                    user: "tgt".into(),
                    secret: b"target-secret-22".to_vec(),
                }),
            }
        }
    }

    fn step(
        c: &mut Connection,
        dir: &ChapDir,
        csg: Stage,
        nsg: Stage,
        transit: bool,
        keys: &[(&str, &str)],
    ) -> (LoginResponse, Vec<(String, String)>) {
        c.handle_pdu(Instant::now(), login_req(csg, nsg, transit, keys), dir);
        let out = outputs(c);
        let Header::LoginResponse(l) = &out[0].header else {
            panic!()
        };
        (l.clone(), text::parse(out[0].data.as_slice()).unwrap())
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        p.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {p:?}"))
    }

    /// Runs the exchange up to the challenge; returns (connection, algorithm, id, challenge).
    fn challenged(dir: &ChapDir, algs: &str) -> (Connection, Algorithm, u8, Vec<u8>) {
        let mut c = Connection::with_random(ConnConfig::default(), Instant::now(), 1, [3; 33]);
        let keys = [
            ("InitiatorName", "iqn.2026-11.test:init"),
            ("TargetName", "iqn.2026-11.io.ferrite:t"),
            ("AuthMethod", "None,CHAP"),
        ];
        let (l, p) = step(
            &mut c,
            dir,
            Stage::Security,
            Stage::Operational,
            false,
            &keys,
        );
        assert!(l.status.is_success() && !l.transit);
        assert_eq!(
            get(&p, "AuthMethod"),
            "CHAP",
            "None is refused when CHAP is required"
        );
        let (_, p) = step(
            &mut c,
            dir,
            Stage::Security,
            Stage::Operational,
            false,
            &[("CHAP_A", algs)],
        );
        let alg = Algorithm::from_code(get(&p, "CHAP_A")).unwrap();
        let id: u8 = get(&p, "CHAP_I").parse().unwrap();
        let ch = decode_binary(get(&p, "CHAP_C")).unwrap();
        assert_eq!(ch, vec![3u8; 32]);
        (c, alg, id, ch)
    }

    #[test]
    fn one_way_chap_with_each_algorithm() {
        let dir = ChapDir { mutual: false };
        for (offer, want) in [
            ("5", Algorithm::Md5),
            ("7,5", Algorithm::Sha256),
            ("8", Algorithm::Sha3_256),
            ("99,6", Algorithm::Sha1),
        ] {
            let (mut c, alg, id, ch) = challenged(&dir, offer);
            assert_eq!(alg, want);
            let r = encode_hex(&alg.response(id, b"initiator-secret-1", &ch));
            let (l, _) = step(
                &mut c,
                &dir,
                Stage::Security,
                Stage::Operational,
                true,
                &[("CHAP_N", "alice"), ("CHAP_R", &r)],
            );
            assert!(l.status.is_success() && l.transit, "{offer}: {l:?}");
        }
    }

    #[test]
    fn wrong_secret_or_name_is_authentication_failure() {
        let dir = ChapDir { mutual: false };
        let (mut c, alg, id, ch) = challenged(&dir, "5");
        let r = encode_hex(&alg.response(id, b"not-the-secret", &ch));
        let (l, _) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &r)],
        );
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
        let (mut c, alg, id, ch) = challenged(&dir, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret-1", &ch));
        let (l, _) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &[("CHAP_N", "mallory"), ("CHAP_R", &r)],
        );
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn mutual_chap_and_reflection() {
        let dir = ChapDir { mutual: true };
        let (mut c, alg, id, ch) = challenged(&dir, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret-1", &ch));
        let my_c = [9u8; 16];
        let (l, p) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "77"),
                ("CHAP_C", &encode_hex(&my_c)),
            ],
        );
        assert!(l.status.is_success() && l.transit);
        assert_eq!(get(&p, "CHAP_N"), "tgt");
        let expect = alg.response(77, b"target-secret-22", &my_c);
        assert_eq!(decode_binary(get(&p, "CHAP_R")).unwrap(), expect);
        // Reflection: the initiator hands our own challenge back.
        let (mut c, alg, id, ch) = challenged(&dir, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret-1", &ch));
        let (l, _) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "1"),
                ("CHAP_C", &encode_hex(&ch)),
            ],
        );
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn mutual_request_without_target_secret_fails() {
        let dir = ChapDir { mutual: false };
        let (mut c, alg, id, ch) = challenged(&dir, "5");
        let r = encode_hex(&alg.response(id, b"initiator-secret-1", &ch));
        let (l, _) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x0102030405"),
            ],
        );
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn skipping_authentication_or_none_only_is_refused() {
        let dir = ChapDir { mutual: false };
        let mut c = Connection::new(ConnConfig::default(), Instant::now(), 1);
        let (l, _) = step(
            &mut c,
            &dir,
            Stage::Operational,
            Stage::FullFeature,
            true,
            BASE_KEYS,
        );
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
        let mut c = Connection::new(ConnConfig::default(), Instant::now(), 1);
        let mut keys = BASE_KEYS.to_vec();
        keys.push(("AuthMethod", "None"));
        let (l, p) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &keys,
        );
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
        assert!(p.is_empty(), "a failed login response carries no keys");
    }

    #[test]
    fn initiator_without_acl_is_authorization_failure() {
        let dir = ChapDir { mutual: false };
        let mut c = Connection::new(ConnConfig::default(), Instant::now(), 1);
        let keys = [
            ("InitiatorName", "iqn.2026-11.test:stranger"),
            ("TargetName", "iqn.2026-11.io.ferrite:t"),
        ];
        let (l, _) = step(
            &mut c,
            &dir,
            Stage::Security,
            Stage::Operational,
            true,
            &keys,
        );
        assert_eq!(l.status, LoginStatus::AUTHORIZATION_FAILURE);
    }
}

#[test]
fn text_request_continued_by_the_initiator() {
    let mut h = Harness::new(&[]);
    let req = |ttt: u32, cont: bool| {
        Header::TextRequest(TextRequest {
            immediate: true,
            final_bit: !cont,
            cont,
            lun: 0,
            itt: 0x44,
            ttt,
            cmd_sn: 100,
            exp_stat_sn: 0,
        })
    };
    h.c.handle_pdu(h.now, raw(req(RESERVED_TAG, true), b"SendTar"), &Dir);
    let out = outputs(&mut h.c);
    let Header::TextResponse(r) = &out[0].header else {
        panic!()
    };
    assert!(r.ttt != RESERVED_TAG && out[0].data.is_empty());
    // RFC 7143 §11.10.4: the next request carries the TTT the target gave.
    h.c.handle_pdu(
        h.now,
        raw(req(r.ttt, false), b"gets=iqn.2026-11.io.ferrite:u\0"),
        &Dir,
    );
    let out = outputs(&mut h.c);
    let Header::TextResponse(r) = &out[0].header else {
        panic!("{out:?}")
    };
    assert!(r.final_bit && r.ttt == RESERVED_TAG);
    let pairs = text::parse(out[0].data.as_slice()).unwrap();
    assert_eq!(
        pairs[0],
        ("TargetName".into(), "iqn.2026-11.io.ferrite:u".into())
    );
}

#[test]
fn abort_tasks_for_a_lun_drops_their_responses() {
    let mut h = Harness::new(&[]);
    h.cmd(0x80, 0x28, true, false, 512, true, &[]);
    let t = h.executed();
    // A write still gathering data for the same LUN.
    h.cmd(0x81, 0x2a, false, true, 4096, false, &[0u8; 512]);
    assert!(events(&mut h.c).is_empty());
    outputs(&mut h.c); // its R2T
    h.c.abort_tasks_for(|lun| lun == 0);
    // Only the running one needs telling: the other never reached the device server.
    assert_eq!(events(&mut h.c), vec![ConnEvent::Cancel(t.id)]);
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![0; 512],
            ..Default::default()
        },
    );
    assert!(
        outputs(&mut h.c).is_empty(),
        "no response for aborted tasks"
    );
    assert_eq!(h.c.task_count(), 0);
    // The session goes on.
    h.cmd(0x82, 0x00, false, false, 0, true, &[]);
    assert_eq!(h.executed().itt, 0x82);
}

#[test]
fn lun_scoped_tmf_on_an_unknown_lun() {
    let mut h = Harness::new(&[]);
    h.c.set_lun_filter(|lun| lun == 0);
    let mut t = TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::LOGICAL_UNIT_RESET.0,
        lun: 5 << 48,
        itt: 0x90,
        referenced_tag: RESERVED_TAG,
        cmd_sn: h.cmd_sn,
        ..Default::default()
    };
    h.c.handle_pdu(h.now, raw(Header::TaskMgmtRequest(t.clone()), &[]), &Dir);
    let out = outputs(&mut h.c);
    assert!(
        matches!(&out[0].header, Header::TaskMgmtResponse(r) if r.response == TmfResponse::LUN_DOES_NOT_EXIST.0)
    );
    assert!(
        events(&mut h.c).is_empty(),
        "no device action for a missing LUN"
    );
    t.lun = 0;
    t.itt = 0x91;
    h.c.handle_pdu(h.now, raw(Header::TaskMgmtRequest(t), &[]), &Dir);
    assert_eq!(
        events(&mut h.c),
        vec![ConnEvent::Tmf(TmfAction::LunReset { lun: 0 })]
    );
    h.c.tmf_done();
    let out = outputs(&mut h.c);
    assert!(matches!(&out[0].header, Header::TaskMgmtResponse(r) if r.response == 0));
}

fn r2ts_of(out: &[OutPdu]) -> Vec<R2t> {
    out.iter()
        .filter_map(|o| match &o.header {
            Header::R2t(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// A waker that counts its calls.
fn counting_waker() -> (crate::budget::Waker, Arc<std::sync::atomic::AtomicUsize>) {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let m = n.clone();
    (
        Arc::new(move || {
            m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }),
        n,
    )
}

/// Send the data one R2T asks for, in one Data-Out.
fn answer(h: &mut Harness, r: &R2t) {
    let data = vec![0xa5u8; r.desired_len as usize];
    h.data_out(r.itt, r.ttt, 0, r.buffer_offset, true, &data);
}

#[test]
fn r2ts_wait_for_write_budget_and_go_out_when_it_comes_back() {
    use crate::budget::BufferBudget;
    // Room for two 64 KiB writes and a small read in the whole target; each session may hold
    // all of it.
    let budget = BufferBudget::new(132 * 1024, 132 * 1024, 64 * 1024);
    let mut a = Harness::new(&[("MaxBurstLength", "65536")]);
    let mut b = Harness::new(&[("MaxBurstLength", "65536")]);
    let (wa, _) = counting_waker();
    let (wb, woken_b) = counting_waker();
    a.c.set_budget(budget.account(wa));
    b.c.set_budget(budget.account(wb));
    a.cmd(1, 0x2a, false, true, 65536, true, &[]);
    a.cmd(2, 0x2a, false, true, 65536, true, &[]);
    assert_eq!(r2ts_of(&outputs(&mut a.c)).len(), 2);
    assert_eq!(budget.used(), 128 * 1024);
    // Session B's small read fits the 4 KiB left: it runs, and its grant stays with the
    // data-in buffer until the Data-In PDU pointing into it is gone.
    b.cmd(8, 0x28, true, false, 512, true, &[]);
    let t = b.executed();
    assert_eq!(t.itt, 8);
    assert_eq!(budget.used(), 128 * 1024 + 512);
    b.c.complete_task(
        t.id,
        TaskOutcome {
            data_in: vec![0; 512],
            ..Default::default()
        },
    );
    assert_eq!(
        budget.used(),
        128 * 1024 + 512,
        "the Data-In is not sent yet"
    );
    let out = outputs(&mut b.c);
    assert!(matches!(out[0].header, Header::DataIn(_)));
    drop(out);
    assert_eq!(budget.used(), 128 * 1024);
    // B's write gets no R2T while A holds everything.
    b.cmd(7, 0x2a, false, true, 65536, true, &[]);
    assert!(outputs(&mut b.c).is_empty(), "no R2T without budget");
    // A's first write fails: its 64 KiB come back and B is woken.
    a.data_out(1, 0, 0, 0, true, &[]); // a bad Data-Out (wrong TTT) fails task 1...
    let out = outputs(&mut a.c);
    assert!(matches!(out.as_slice(), [o] if matches!(o.header, Header::ScsiResponse(_))));
    // ...and returns its budget at once.
    assert_eq!(woken_b.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(budget.used(), 64 * 1024);
    b.c.budget_ready();
    let r = r2ts_of(&outputs(&mut b.c));
    assert_eq!((r.len(), r[0].itt, r[0].desired_len), (1, 7, 65536));
    answer(&mut b, &r[0]);
    let t = b.executed();
    assert_eq!(t.data_out.len(), 65536);
    assert_eq!(
        budget.used(),
        128 * 1024,
        "held until the device server is done"
    );
    b.c.complete_task(
        t.id,
        TaskOutcome {
            data_out_len: 65536,
            ..Default::default()
        },
    );
    assert_eq!(budget.used(), 64 * 1024);
    // Logging out (dropping the connection) gives back the rest.
    drop(a);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_session_at_its_share_stops_widening_its_window() {
    use crate::budget::BufferBudget;
    let budget = BufferBudget::new(1 << 30, 128 * 1024, 64 * 1024);
    let mut h = Harness::new(&[("MaxBurstLength", "65536")]);
    let (w, _) = counting_waker();
    h.c.set_budget(budget.account(w));
    h.cmd(1, 0x2a, false, true, 65536, true, &[]);
    let max_before = r2ts_of(&outputs(&mut h.c))[0].max_cmd_sn;
    h.cmd(2, 0x2a, false, true, 65536, true, &[]);
    let r = r2ts_of(&outputs(&mut h.c));
    assert_eq!(r.len(), 1, "the second write fits the share");
    // At its share: a third write waits for the session's own writes, and MaxCmdSN stays.
    h.cmd(3, 0x2a, false, true, 65536, true, &[]);
    assert!(outputs(&mut h.c).is_empty());
    h.cmd(4, 0x00, false, false, 0, true, &[]); // TEST UNIT READY
    let t = h.executed();
    h.c.complete_task(t.id, TaskOutcome::default());
    let out = outputs(&mut h.c);
    let Header::ScsiResponse(resp) = &out[0].header else {
        panic!("{out:?}")
    };
    assert_eq!(
        resp.max_cmd_sn, max_before,
        "window not widened at the share"
    );
    // Write 2 finishes: write 3 gets its R2T.
    answer(&mut h, &r[0]);
    let t = h.executed();
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_out_len: 65536,
            ..Default::default()
        },
    );
    let r3 = r2ts_of(&outputs(&mut h.c));
    assert_eq!((r3.len(), r3[0].itt), (1, 3));
}

#[test]
fn reads_wait_for_buffer_budget_in_order() {
    use crate::budget::BufferBudget;
    let budget = BufferBudget::new(64 * 1024, 64 * 1024, 64 * 1024);
    let mut h = Harness::new(&[]);
    let (w, _) = counting_waker();
    h.c.set_budget(budget.account(w));
    h.cmd(1, 0x28, true, false, 48 * 1024, true, &[]);
    let first = h.executed();
    // 32 KiB more do not fit: the read waits, and so does a small one behind it (in order).
    h.cmd(2, 0x28, true, false, 32 * 1024, true, &[]);
    h.cmd(3, 0x28, true, false, 512, true, &[]);
    assert!(events(&mut h.c).is_empty());
    // Commands without data are not held back.
    h.cmd(4, 0x00, false, false, 0, true, &[]);
    assert_eq!(h.executed().itt, 4);
    h.c.complete_task(
        first.id,
        TaskOutcome {
            data_in: vec![1; 48 * 1024],
            ..Default::default()
        },
    );
    // Still held by the Data-In waiting to be sent.
    assert!(events(&mut h.c).is_empty());
    let out = outputs(&mut h.c);
    assert!(out.iter().any(|o| matches!(o.header, Header::DataIn(_))));
    drop(out);
    h.c.budget_ready();
    assert_eq!(h.executed_itts(), vec![2, 3]);
}

/// SAM-5 §8.6: task attributes decide when a task may run.
#[test]
fn ordered_and_head_of_queue_tasks_run_in_the_order_sam_5_gives() {
    const SIMPLE: u8 = 1;
    const ORDERED: u8 = 2;
    const HEAD_OF_QUEUE: u8 = 3;
    let lun1 = 0x0001_0000_0000_0000;
    let mut h = Harness::new(&[]);
    let done = |h: &mut Harness, id: TaskId| h.c.complete_task(id, TaskOutcome::default());
    let mut ids = HashMap::new();
    let mut run = |h: &mut Harness| {
        let ev = events(&mut h.c);
        let mut itts = Vec::new();
        for e in ev {
            if let ConnEvent::Execute(t) = e {
                ids.insert(t.itt, t.id);
                itts.push(t.itt);
            }
        }
        (itts, ids.clone())
    };
    h.cmd_attr(1, 0x00, 0, SIMPLE);
    h.cmd_attr(2, 0x00, 0, ORDERED);
    h.cmd_attr(3, 0x00, 0, SIMPLE);
    h.cmd_attr(5, 0x00, lun1, SIMPLE);
    // 1 runs; the ORDERED task waits for it, the SIMPLE behind waits for the ORDERED; another
    // LUN's task set is not held back.
    assert_eq!(run(&mut h).0, vec![1, 5]);
    h.cmd_attr(4, 0x00, 0, HEAD_OF_QUEUE);
    assert_eq!(run(&mut h).0, vec![4], "HEAD OF QUEUE runs at once");
    let (_, ids) = run(&mut h);
    done(&mut h, ids[&1]);
    assert_eq!(
        run(&mut h).0,
        Vec::<u32>::new(),
        "the ORDERED task waits for HEAD OF QUEUE too"
    );
    done(&mut h, ids[&4]);
    assert_eq!(run(&mut h).0, vec![2]);
    let (_, ids) = run(&mut h);
    done(&mut h, ids[&2]);
    assert_eq!(run(&mut h).0, vec![3]);
    // ABORT TASK of an ORDERED task that waits lets what is behind it run.
    h.cmd_attr(6, 0x00, 0, ORDERED);
    h.cmd_attr(7, 0x00, 0, SIMPLE);
    assert!(run(&mut h).0.is_empty(), "6 waits for 3, 7 for 6");
    let sn = h.cmd_sn;
    tmf(&mut h, TmfFunction::ABORT_TASK, 6, sn - 2);
    assert_eq!(run(&mut h).0, vec![7]);
}

#[test]
fn unanswered_r2ts_end_the_connection_after_the_data_out_timeout() {
    let cfg = ConnConfig {
        nop_interval: None,
        data_out_timeout: Some(Duration::from_secs(10)),
        ..ConnConfig::default()
    };
    let mut h = Harness::with(cfg, &[("MaxBurstLength", "65536")]);
    assert_eq!(h.c.poll_timeout(), None, "nothing to wait for");
    h.cmd(1, 0x2a, false, true, 2 * 65536, true, &[]);
    let r = r2ts_of(&outputs(&mut h.c));
    assert_eq!(r.len(), 1, "MaxOutstandingR2T 1");
    let t0 = h.now;
    assert_eq!(h.c.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    // Data for the first R2T 8 s later restarts the clock, and the second R2T goes out...
    h.now = t0 + Duration::from_secs(8);
    answer(&mut h, &r[0]);
    assert_eq!(r2ts_of(&outputs(&mut h.c)).len(), 1);
    assert_eq!(h.c.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    h.c.handle_timeout(t0 + Duration::from_secs(17));
    assert!(!h.c.is_closed());
    // ...and 10 s without any closes the connection (ERL 0: no recovery R2T).
    h.c.handle_timeout(t0 + Duration::from_secs(18));
    assert!(h.c.is_closed());
    assert!(matches!(
        events(&mut h.c).last(),
        Some(ConnEvent::Close { .. })
    ));
}

#[test]
fn the_data_out_clock_stops_when_no_r2t_is_out() {
    let cfg = ConnConfig {
        nop_interval: None,
        data_out_timeout: Some(Duration::from_secs(10)),
        ..ConnConfig::default()
    };
    let mut h = Harness::with(cfg, &[("MaxBurstLength", "65536")]);
    h.cmd(1, 0x2a, false, true, 65536, true, &[]);
    let r = r2ts_of(&outputs(&mut h.c));
    answer(&mut h, &r[0]);
    let t = h.executed();
    assert_eq!(h.c.poll_timeout(), None, "all data in: no deadline");
    h.c.handle_timeout(h.now + Duration::from_secs(60));
    assert!(!h.c.is_closed());
    h.c.complete_task(
        t.id,
        TaskOutcome {
            data_out_len: 65536,
            ..Default::default()
        },
    );
    outputs(&mut h.c);
    // An R2T that goes out without a clock reading (after budget came back, say) asks for a
    // call at once to start its clock.
    let (w, _) = counting_waker();
    let budget = crate::budget::BufferBudget::new(65536, 65536, 65536);
    let mut hog = budget.account(Arc::new(|| {}));
    assert!(hog.try_take(65536));
    h.c.set_budget(budget.account(w));
    h.cmd(2, 0x2a, false, true, 65536, true, &[]);
    assert!(outputs(&mut h.c).is_empty());
    drop(hog);
    h.c.budget_ready();
    assert_eq!(r2ts_of(&outputs(&mut h.c)).len(), 1);
    let due = h.c.poll_timeout().unwrap();
    assert!(due <= h.now, "an unstarted clock is due at once");
    let later = h.now + Duration::from_secs(5);
    h.c.handle_timeout(later);
    assert_eq!(h.c.poll_timeout(), Some(later + Duration::from_secs(10)));
}

#[test]
fn a_dormant_write_gets_no_r2t_until_it_is_enabled() {
    // SAM-5 §8.5: a dormant task transfers no data.
    let mut h = Harness::new(&[("InitialR2T", "Yes")]);
    let w = |h: &mut Harness, itt: u32, attr: u8| {
        let h2 = Header::ScsiCommand(ScsiCommand {
            final_bit: true,
            write: true,
            attr,
            itt,
            expected_len: 4096,
            cmd_sn: h.cmd_sn,
            cdb: [0x2a; 16],
            ..Default::default()
        });
        h.cmd_sn += 1;
        h.c.handle_pdu(h.now, raw(h2, &[]), &Dir);
    };
    w(&mut h, 0x70, 2); // ORDERED
    w(&mut h, 0x71, 1); // SIMPLE, behind it
    let r2ts = r2ts_of(&outputs(&mut h.c));
    assert_eq!(r2ts.len(), 1, "only the ORDERED write is asked for data");
    assert_eq!(r2ts[0].itt, 0x70);
    answer(&mut h, &r2ts[0]);
    let t = h.executed();
    h.c.complete_task(t.id, TaskOutcome::default());
    let r2ts = r2ts_of(&outputs(&mut h.c));
    assert_eq!(r2ts.len(), 1);
    assert_eq!(r2ts[0].itt, 0x71, "then the SIMPLE one");
}

mod erl;
