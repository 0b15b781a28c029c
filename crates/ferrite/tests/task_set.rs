//! One task set per logical unit (SAM-5 §4.6.2, TST = 000b in the Control mode page): task
//! management from one session ends another session's tasks where SAM-5 says so, with no
//! status for them, their data never written, and the unit attention SAM-5 names.

mod common;

use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, R2t, Session, OP_R2T, OP_SCSI_RSP};
use common::{Daemon, Opts};

const BLOCK: usize = 512;
const LEN: usize = 64 * 1024;

const CLEAR_TASK_SET: u8 = 4;
const ABORT_TASK_SET: u8 = 2;
const LOGICAL_UNIT_RESET: u8 = 5;
const TARGET_WARM_RESET: u8 = 6;

fn login(d: &Daemon, name: &str) -> Session {
    Session::login(
        d.addr(),
        &LoginOpts {
            initiator: name,
            ..LoginOpts::default()
        },
    )
    .unwrap()
}

/// Start a 64 KiB WRITE(10) at `lba` and stop at its R2T (InitialR2T=Yes: no data sent yet).
fn pending_write(s: &mut Session, lba: u32) -> (u32, R2t) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((LEN / BLOCK) as u16).to_be_bytes());
    let (b, itt) = s.scsi_cmd_bhs(&cdb, false, true, LEN as u32);
    s.send(&b, &[]).unwrap();
    let p = s.recv().unwrap();
    assert_eq!(p.opcode(), OP_R2T, "{:02x?}", &p.bhs[..8]);
    let r = R2t::of(&p);
    assert_eq!((r.itt, r.offset, r.len as usize), (itt, 0, LEN));
    (itt, r)
}

/// Session B ends session A's pending write with `function`; A then sends the data anyway.
/// A's next command must meet `ua` (sense key UNIT ATTENTION, ASC/ASCQ) and nothing for the
/// write may ever arrive; the blocks stay as they were.
fn other_session_ends_the_write(function: u8, ua: (u8, u8), lba: u32) {
    let d = Daemon::start(Opts::default());
    let mut a = login(&d, "iqn.2026-11.io.ferrite:node-a");
    let mut b = login(&d, "iqn.2026-11.io.ferrite:node-b");
    let (_, r2t) = pending_write(&mut a, lba);
    assert_eq!(
        b.tmf(function, 0xffff_ffff, 0).unwrap(),
        0,
        "FUNCTION COMPLETE"
    );
    // The data arrives after the function completed: it belongs to no task any more.
    a.answer_r2t(&r2t, &[0xee; LEN], false).unwrap();
    // `command` fails on a response for any other ITT, so the write's response would show.
    let r = a.command(&[0u8; 6], 0).unwrap();
    assert_eq!(
        (r.status, r.sense_key(), r.asc()),
        (0x02, Some(0x06), Some(ua)),
        "session A's next command after function {function}: sense {:02x?}",
        r.sense
    );
    a.clear_unit_attentions().unwrap();
    b.clear_unit_attentions().unwrap();
    assert_eq!(
        b.read10(lba, (LEN / BLOCK) as u16, BLOCK).unwrap(),
        vec![0u8; LEN],
        "the aborted write reached the medium"
    );
    // Both sessions carry on.
    a.write10(lba, &[0x11; LEN], BLOCK).unwrap();
    assert_eq!(
        b.read10(lba, (LEN / BLOCK) as u16, BLOCK).unwrap(),
        vec![0x11; LEN]
    );
    a.logout().unwrap();
    b.logout().unwrap();
}

#[test]
fn lun_reset_from_another_session_aborts_its_write() {
    // SAM-5 §7.7: BUS DEVICE RESET FUNCTION OCCURRED.
    other_session_ends_the_write(LOGICAL_UNIT_RESET, (0x29, 0x03), 100);
}

#[test]
fn target_warm_reset_from_another_session_aborts_its_write() {
    // SAM-5 §6.3.2: a hard reset; POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    other_session_ends_the_write(TARGET_WARM_RESET, (0x29, 0x00), 200);
}

#[test]
fn clear_task_set_from_another_session_aborts_its_write() {
    // SAM-5 §5.6 with TAS = 0: COMMANDS CLEARED BY ANOTHER INITIATOR.
    other_session_ends_the_write(CLEAR_TASK_SET, (0x2f, 0x00), 300);
}

#[test]
fn abort_task_set_from_another_session_leaves_its_write_alone() {
    // SAM-5 §7.2: ABORT TASK SET ends the caller's tasks only.
    let d = Daemon::start(Opts::default());
    let mut a = login(&d, "iqn.2026-11.io.ferrite:node-a");
    let mut b = login(&d, "iqn.2026-11.io.ferrite:node-b");
    let (itt, r2t) = pending_write(&mut a, 400);
    assert_eq!(b.tmf(ABORT_TASK_SET, 0xffff_ffff, 0).unwrap(), 0);
    a.answer_r2t(&r2t, &[0x77; LEN], false).unwrap();
    let p = a.recv().unwrap();
    assert_eq!((p.opcode(), p.itt()), (OP_SCSI_RSP, itt));
    assert_eq!((p.bhs[2], p.bhs[3]), (0, 0), "the write ends GOOD");
    assert_eq!(
        b.read10(400, (LEN / BLOCK) as u16, BLOCK).unwrap(),
        vec![0x77; LEN]
    );
    let r = a.command(&[0u8; 6], 0).unwrap();
    assert_eq!(r.status, 0, "no unit attention for A: {:02x?}", r.sense);
}

#[test]
fn two_sessions_resetting_the_same_lun_at_once_both_complete() {
    // Each reset waits for the other session's tasks to end; neither may wait on the other's
    // reset in turn.
    let d = Daemon::start(Opts::default());
    let mut a = login(&d, "iqn.2026-11.io.ferrite:node-a");
    let mut b = login(&d, "iqn.2026-11.io.ferrite:node-b");
    let (_, _) = pending_write(&mut a, 500);
    let (_, _) = pending_write(&mut b, 600);
    let t = Instant::now();
    let other = std::thread::spawn(move || {
        let code = b.tmf(LOGICAL_UNIT_RESET, 0xffff_ffff, 0);
        (b, code)
    });
    assert_eq!(a.tmf(LOGICAL_UNIT_RESET, 0xffff_ffff, 0).unwrap(), 0);
    let (mut b, code) = other.join().unwrap();
    assert_eq!(code.unwrap(), 0);
    // Below the 10 s the daemon waits at most for another session's tasks: neither reset
    // waited for the other.
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    a.clear_unit_attentions().unwrap();
    b.clear_unit_attentions().unwrap();
    assert_eq!(
        a.read10(500, (2 * LEN / BLOCK) as u16, BLOCK).unwrap(),
        vec![0u8; 2 * LEN]
    );
}

#[test]
fn a_read_behind_an_ordered_write_sees_the_new_data() {
    // SAM-5 §8.6.3: a SIMPLE task does not start before an older ORDERED task has completed.
    // The read is sent before the write's data; it must still return what the write stores.
    let d = Daemon::start(Opts::default());
    let mut s = login(&d, "iqn.2026-11.io.ferrite:node-a");
    let lba = 700u32;
    let blocks = (LEN / BLOCK) as u16;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let (mut w, write_itt) = s.scsi_cmd_bhs(&cdb, false, true, LEN as u32);
    w[1] = (w[1] & !0x07) | 2; // ORDERED
    s.send(&w, &[]).unwrap();
    cdb[0] = 0x28;
    let (r, read_itt) = s.scsi_cmd_bhs(&cdb, true, false, LEN as u32);
    s.send(&r, &[]).unwrap();
    let p = s.recv().unwrap();
    assert_eq!(p.opcode(), OP_R2T, "{:02x?}", &p.bhs[..8]);
    let r2t = R2t::of(&p);
    assert_eq!(r2t.itt, write_itt);
    // Give the read every chance to run early, had it not been held back.
    std::thread::sleep(Duration::from_millis(200));
    s.answer_r2t(&r2t, &[0x3c; LEN], false).unwrap();
    let mut got = Vec::new();
    let mut write_done = false;
    loop {
        let p = s.recv().unwrap();
        match (p.opcode(), p.itt()) {
            (OP_SCSI_RSP, i) if i == write_itt => {
                assert_eq!(p.bhs[3], 0, "the write ends GOOD");
                write_done = true;
            }
            (0x25, i) if i == read_itt => {
                assert!(write_done, "read data before the ORDERED write completed");
                got.extend_from_slice(&p.data);
                if p.bhs[1] & 0x01 != 0 {
                    break; // status in the last Data-In
                }
            }
            (op, i) => panic!("unexpected opcode {op:#04x} ITT {i:#x}"),
        }
    }
    assert_eq!(got, vec![0x3c; LEN]);
}

/// READ(10) of the 64 KiB at `lba` with task attribute `attr` (1 SIMPLE, 2 ORDERED, 3 HEAD OF
/// QUEUE), sent without waiting; its ITT.
fn send_read(s: &mut Session, lba: u32, attr: u8) -> u32 {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((LEN / BLOCK) as u16).to_be_bytes());
    let (mut b, itt) = s.scsi_cmd_bhs(&cdb, true, false, LEN as u32);
    b[1] = (b[1] & !0x07) | attr;
    s.send(&b, &[]).unwrap();
    itt
}

/// The data and status of read `itt` (the connection carries nothing else meanwhile), or
/// `None` if nothing arrives within `wait`.
fn read_result(s: &mut Session, itt: u32, wait: Duration) -> Option<Vec<u8>> {
    s.stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    loop {
        let p = match s.recv() {
            Ok(p) => p,
            Err(_) if got.is_empty() => {
                s.stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                return None;
            }
            Err(e) => panic!("{e}"),
        };
        s.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(p.itt(), itt);
        match p.opcode() {
            0x25 => {
                got.extend_from_slice(&p.data);
                if p.bhs[1] & 0x01 != 0 {
                    assert_eq!(p.bhs[3], 0);
                    return Some(got);
                }
            }
            OP_SCSI_RSP => {
                assert_eq!(p.bhs[3], 0, "GOOD");
                return Some(got);
            }
            op => panic!("unexpected opcode {op:#04x}"),
        }
    }
}

/// Session A's write (SIMPLE or ORDERED) waits for its data at its R2T; session B's read of the
/// same blocks with attribute `attr` is sent. Whether B's read must wait for A's write, SAM-5
/// §8.6 decides across I_T nexuses too: the logical unit has one task set.
fn read_behind_other_sessions_write(write_attr: u8, read_attr: u8) -> (bool, Vec<u8>) {
    let d = Daemon::start(Opts::default());
    let mut a = login(&d, "iqn.2026-11.io.ferrite:node-a");
    let mut b = login(&d, "iqn.2026-11.io.ferrite:node-b");
    let lba = 900u32;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((LEN / BLOCK) as u16).to_be_bytes());
    let (mut w, write_itt) = a.scsi_cmd_bhs(&cdb, false, true, LEN as u32);
    w[1] = (w[1] & !0x07) | write_attr;
    a.send(&w, &[]).unwrap();
    let r2t = R2t::of(&a.recv().unwrap());
    assert_eq!(r2t.itt, write_itt);
    let read_itt = send_read(&mut b, lba, read_attr);
    let early = read_result(&mut b, read_itt, Duration::from_millis(300));
    let waited = early.is_none();
    a.answer_r2t(&r2t, &[0x5a; LEN], false).unwrap();
    let rsp = a.recv().unwrap();
    assert_eq!(
        (rsp.opcode(), rsp.itt(), rsp.bhs[3]),
        (OP_SCSI_RSP, write_itt, 0)
    );
    let data = match early {
        Some(d) => d,
        None => read_result(&mut b, read_itt, Duration::from_secs(10)).expect("the read ran"),
    };
    (waited, data)
}

#[test]
fn another_sessions_ordered_write_holds_back_a_simple_read() {
    let (waited, data) = read_behind_other_sessions_write(2, 1);
    assert!(
        waited,
        "the read ran before the older ORDERED write completed"
    );
    assert_eq!(data, vec![0x5a; LEN], "and it sees the write's data");
}

#[test]
fn an_ordered_read_waits_for_another_sessions_simple_write() {
    let (waited, data) = read_behind_other_sessions_write(1, 2);
    assert!(
        waited,
        "the ORDERED read ran before an older task completed"
    );
    assert_eq!(data, vec![0x5a; LEN]);
}

#[test]
fn simple_and_head_of_queue_reads_do_not_wait_for_another_sessions_simple_write() {
    let (waited, data) = read_behind_other_sessions_write(1, 1);
    assert!(!waited, "SIMPLE tasks of two sessions run side by side");
    assert_eq!(
        data,
        vec![0u8; LEN],
        "the read ran before the write's data came"
    );
    let (waited, _) = read_behind_other_sessions_write(2, 3);
    assert!(
        !waited,
        "HEAD OF QUEUE runs at once, even behind an ORDERED task"
    );
}
