//! Error recovery above level 0 (RFC 7143 §7), with the repo's own initiator against the
//! daemon: digest errors that do not end the session, recovery R2Ts and SNACK (ERL 1).

mod common;

use common::initiator::{
    be32, put32, LoginOpts, Pdu, R2t, Session, OP_DATA_IN, OP_DATA_OUT, OP_NOP_OUT, OP_R2T,
    OP_REJECT, OP_SCSI_RSP,
};
use common::{Daemon, Opts, Rng};

const BLOCK: usize = 512;
const OP_SNACK: u8 = 0x10;

fn erl(level: u32, digests: bool) -> LoginOpts<'static> {
    LoginOpts {
        initiator: "iqn.2026-11.io.ferrite:erl",
        header_digest: digests,
        data_digest: digests,
        error_recovery_level: level,
        ..LoginOpts::default()
    }
}

fn login(d: &Daemon, o: &LoginOpts) -> Session {
    let s = Session::login(d.addr(), o).unwrap();
    assert_eq!(
        s.negotiated.get("ErrorRecoveryLevel").map(String::as_str),
        Some(o.error_recovery_level.to_string().as_str())
    );
    s
}

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill(&mut v);
    v
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// One Data-Out PDU's BHS.
fn data_out(s: &Session, r: &R2t, data_sn: u32, offset: u32, final_bit: bool) -> [u8; 48] {
    let mut d = [0u8; 48];
    d[0] = OP_DATA_OUT;
    d[1] = if final_bit { 0x80 } else { 0 };
    put32(&mut d, 16, r.itt);
    put32(&mut d, 20, r.ttt);
    put32(&mut d, 28, s.exp_stat_sn());
    put32(&mut d, 36, data_sn);
    put32(&mut d, 40, offset);
    d
}

fn recv_op(s: &mut Session, op: u8) -> Pdu {
    let p = s.recv().unwrap();
    assert_eq!(p.opcode(), op, "{:02x?}", &p.bhs[..8]);
    p
}

fn status_of(s: &mut Session, p: &Pdu) -> u8 {
    s.set_exp_stat_sn(be32(&p.bhs, 24).wrapping_add(1));
    p.bhs[3]
}

#[test]
fn a_corrupted_data_out_is_asked_for_again_and_the_write_lands_whole() {
    let d = Daemon::start(Opts::default());
    let mut s = login(&d, &erl(1, true));
    let data = bytes(0xe41, 64 * 1024);
    let (b, itt) = s.scsi_cmd_bhs(&cdb10(0x2a, 100, 128), false, true, data.len() as u32);
    s.send(&b, &[]).unwrap();
    let r = R2t::of(&recv_op(&mut s, OP_R2T));
    assert_eq!((r.itt, r.offset, r.len), (itt, 0, 65536));
    // Eight PDUs of 8 KiB; the second one's data digest is corrupted on the way.
    for i in 0..8u32 {
        let off = i * 8192;
        let bhs = data_out(&s, &r, i, off, i == 7);
        let mut wire = s.encode(&bhs, &data[off as usize..off as usize + 8192]);
        if i == 1 {
            let n = wire.len();
            wire[n - 10] ^= 0x40;
        }
        std::io::Write::write_all(&mut s.stream, &wire).unwrap();
    }
    // RFC 7143 §7.8: Reject (data digest error), then a recovery R2T for what is missing.
    let rej = recv_op(&mut s, OP_REJECT);
    assert_eq!(rej.bhs[2], 0x02, "Data-Digest-Error");
    assert_eq!(
        be32(&rej.data, 16),
        itt,
        "the Reject carries the bad PDU's header"
    );
    let rec = R2t::of(&recv_op(&mut s, OP_R2T));
    assert_eq!((rec.itt, rec.offset, rec.len), (itt, 8192, 65536 - 8192));
    assert_ne!(rec.ttt, r.ttt);
    s.answer_r2t(&rec, &data[8192..], false).unwrap();
    let rsp = recv_op(&mut s, OP_SCSI_RSP);
    assert_eq!(status_of(&mut s, &rsp), 0, "GOOD");
    assert_eq!(s.read10(100, 128, BLOCK).unwrap(), data);
}

/// READ(10) of `blocks` at `lba`: every Data-In (DataSN → payload) and the SCSI Response.
fn read_all(s: &mut Session, lba: u32, blocks: u16) -> (u32, Vec<Pdu>, Pdu) {
    let len = u32::from(blocks) * BLOCK as u32;
    let (b, itt) = s.scsi_cmd_bhs(&cdb10(0x28, lba, blocks), true, false, len);
    s.send(&b, &[]).unwrap();
    let mut data_in = Vec::new();
    loop {
        let p = s.recv().unwrap();
        match p.opcode() {
            OP_DATA_IN => {
                assert_eq!(p.bhs[1] & 0x01, 0, "no status on Data-In at ERL 1");
                data_in.push(p);
            }
            OP_SCSI_RSP => return (itt, data_in, p),
            op => panic!("unexpected opcode {op:#04x}"),
        }
    }
}

fn snack(s: &mut Session, kind: u8, itt: u32, beg: u32, run: u32) {
    let mut b = [0u8; 48];
    b[0] = OP_SNACK;
    b[1] = 0x80 | kind;
    put32(&mut b, 16, itt);
    put32(&mut b, 20, 0xffff_ffff);
    put32(&mut b, 28, s.exp_stat_sn());
    put32(&mut b, 40, beg);
    put32(&mut b, 44, run);
    s.send(&b, &[]).unwrap();
}

#[test]
fn a_lost_data_in_and_a_lost_status_come_again_on_snack() {
    let d = Daemon::start(Opts::default());
    let mut s = login(&d, &erl(1, false));
    let data = bytes(0x5ac, 256 * 1024);
    s.write10(0, &data, BLOCK).unwrap();
    // 256 KiB in Data-In of the initiator's MaxRecvDataSegmentLength (64 KiB): DataSN 0-3.
    let (itt, data_in, rsp) = read_all(&mut s, 0, 512);
    assert_eq!(data_in.len(), 4);
    assert_eq!(be32(&rsp.bhs, 36), 4, "ExpDataSN");
    // Say DataSN 2 never arrived: ask for it (the status is not acknowledged yet).
    snack(&mut s, 0, itt, 2, 1);
    let again = recv_op(&mut s, OP_DATA_IN);
    assert_eq!(be32(&again.bhs, 36), 2);
    assert_eq!(
        be32(&again.bhs, 40),
        be32(&data_in[2].bhs, 40),
        "same offset"
    );
    assert_eq!(again.data, data_in[2].data);
    let mut whole = Vec::new();
    for (i, p) in data_in.iter().enumerate() {
        whole.extend_from_slice(if i == 2 { &again.data } else { &p.data });
    }
    assert_eq!(whole, data);
    // Say the status was lost too: a Status SNACK brings the same response (same StatSN).
    let stat_sn = be32(&rsp.bhs, 24);
    snack(&mut s, 1, 0xffff_ffff, stat_sn, 1);
    let st = recv_op(&mut s, OP_SCSI_RSP);
    assert_eq!(
        (be32(&st.bhs, 16), be32(&st.bhs, 24), st.bhs[3]),
        (itt, stat_sn, 0)
    );
    // Acknowledged now: asking again is a protocol error (RFC 7143 §11.16).
    assert_eq!(status_of(&mut s, &st), 0);
    snack(&mut s, 0, itt, 2, 1);
    let rej = recv_op(&mut s, OP_REJECT);
    assert_eq!(rej.bhs[2], 0x04, "Protocol Error");
    s.set_exp_stat_sn(be32(&rej.bhs, 24).wrapping_add(1));
    // The session goes on.
    assert_eq!(s.read10(0, 8, BLOCK).unwrap(), data[..4096]);
}

fn nop_out(s: &Session) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = 0x40 | OP_NOP_OUT;
    b[1] = 0x80;
    put32(&mut b, 16, 0x4242);
    put32(&mut b, 20, 0xffff_ffff);
    put32(&mut b, 24, s.cmd_sn());
    put32(&mut b, 28, s.exp_stat_sn());
    b
}

#[test]
fn a_pdu_with_a_bad_header_digest_is_dropped_and_two_in_a_row_close_the_connection() {
    let d = Daemon::start(Opts::default());
    let mut s = login(&d, &erl(1, true));
    // A NOP-Out whose header digest is wrong: dropped unseen, the connection stays.
    let mut wire = s.encode(&nop_out(&s), b"ping");
    wire[48] ^= 1;
    std::io::Write::write_all(&mut s.stream, &wire).unwrap();
    assert_eq!(s.read10(0, 1, BLOCK).unwrap().len(), BLOCK);
    assert!(d.log_text().contains("header digest error: PDU dropped"));
    // Two in a row: the boundary cannot be trusted any more.
    let mut two = wire.clone();
    two.extend_from_slice(&wire);
    std::io::Write::write_all(&mut s.stream, &two).unwrap();
    let mut b = [0u8; 1];
    let n = std::io::Read::read(&mut s.stream, &mut b).unwrap_or(0);
    assert_eq!(n, 0, "the target closed the connection");
}

#[test]
fn at_erl_0_a_bad_header_digest_still_closes_the_connection() {
    let d = Daemon::start(Opts::default());
    let mut s = login(&d, &erl(0, true));
    let mut wire = s.encode(&nop_out(&s), b"ping");
    wire[48] ^= 1;
    std::io::Write::write_all(&mut s.stream, &wire).unwrap();
    let mut b = [0u8; 1];
    let n = std::io::Read::read(&mut s.stream, &mut b).unwrap_or(0);
    assert_eq!(n, 0, "the target closed the connection");
}

fn erl2(tsih: u16, cid: u16, retain: u32) -> LoginOpts<'static> {
    LoginOpts {
        tsih,
        cid,
        max_connections: 2,
        time2retain: retain,
        ..erl(2, false)
    }
}

#[test]
fn at_erl_2_a_write_cut_off_with_its_connection_is_reassigned_and_lands_whole() {
    let d = Daemon::start(Opts::default());
    let mut c0 = login(&d, &erl2(0, 0, 20));
    let tsih = c0.tsih;
    let data = bytes(0xe42, 64 * 1024);
    let (b, itt) = c0.scsi_cmd_bhs(&cdb10(0x2a, 200, 128), false, true, data.len() as u32);
    c0.send(&b, &[]).unwrap();
    let r = R2t::of(&recv_op(&mut c0, OP_R2T));
    assert_eq!((r.offset, r.len), (0, 65536));
    // Half the data goes out, then the connection dies.
    for i in 0..4u32 {
        let off = i * 8192;
        let bhs = data_out(&c0, &r, i, off, false);
        c0.send(&bhs, &data[off as usize..off as usize + 8192])
            .unwrap();
    }
    let cmd_sn = c0.cmd_sn();
    c0.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c0);
    // A new connection joins the session, removes the dead one for recovery and takes the
    // task over (RFC 7143 §6.2.2).
    let mut c1 = Session::connect(d.addr(), &erl2(tsih, 1, 0)).unwrap();
    assert_eq!(c1.tsih, tsih);
    c1.set_cmd_sn(cmd_sn);
    c1.set_next_itt(0x0100_0000);
    // The old connection's end may take a moment to be noticed.
    let mut code = 1;
    for _ in 0..50 {
        code = c1.logout_request(2, 0).unwrap();
        if code == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(code, 0, "logout for recovery of CID 0");
    assert_eq!(
        c1.tmf(8, itt, 0).unwrap(),
        0,
        "TASK REASSIGN: function complete"
    );
    let rec = R2t::of(&recv_op(&mut c1, OP_R2T));
    assert_eq!((rec.itt, rec.offset, rec.len), (itt, 32768, 32768));
    c1.answer_r2t(&rec, &data[32768..], false).unwrap();
    let rsp = recv_op(&mut c1, OP_SCSI_RSP);
    assert_eq!(be32(&rsp.bhs, 16), itt);
    assert_eq!(status_of(&mut c1, &rsp), 0, "GOOD");
    assert_eq!(c1.read10(200, 128, BLOCK).unwrap(), data);
}

#[test]
fn at_erl_2_a_read_lost_with_its_connection_is_sent_again_on_the_reinstated_one() {
    let d = Daemon::start(Opts::default());
    let mut c0 = login(&d, &erl2(0, 0, 20));
    let tsih = c0.tsih;
    let data = bytes(0xe43, 128 * 1024);
    c0.write10(300, &data, BLOCK).unwrap();
    // The read is answered, but the connection dies before the initiator has it all.
    let (b, itt) = c0.scsi_cmd_bhs(&cdb10(0x28, 300, 256), true, false, data.len() as u32);
    c0.send(&b, &[]).unwrap();
    let first = recv_op(&mut c0, OP_DATA_IN);
    assert_eq!(be32(&first.bhs, 36), 0);
    let cmd_sn = c0.cmd_sn();
    c0.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c0);
    // The same CID logs in again (connection reinstatement: an implicit logout for recovery)
    // and asks for the task from DataSN 1 on.
    let mut c = None;
    for _ in 0..50 {
        match Session::connect(d.addr(), &erl2(tsih, 0, 0)) {
            Ok(s) => {
                c = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    let mut c1 = c.expect("reinstated connection");
    c1.set_cmd_sn(cmd_sn);
    c1.set_next_itt(0x0200_0000);
    let mut b = [0u8; 48];
    b[0] = 0x40 | 0x02;
    b[1] = 0x80 | 8;
    put32(&mut b, 16, 0x0200_0000);
    put32(&mut b, 20, itt);
    put32(&mut b, 24, c1.cmd_sn());
    put32(&mut b, 28, c1.exp_stat_sn());
    put32(&mut b, 36, 1); // ExpDataSN: DataSN 0 arrived
    c1.send(&b, &[]).unwrap();
    let tmf = c1.recv().unwrap();
    assert_eq!(
        (tmf.opcode(), tmf.bhs[2]),
        (0x22, 0),
        "TASK REASSIGN complete"
    );
    let mut got = first.data.clone();
    loop {
        let p = c1.recv().unwrap();
        match p.opcode() {
            OP_DATA_IN => {
                assert_eq!(
                    be32(&p.bhs, 40) as usize,
                    got.len(),
                    "in order from DataSN 1"
                );
                got.extend_from_slice(&p.data);
            }
            OP_SCSI_RSP => {
                assert_eq!(be32(&p.bhs, 16), itt);
                assert_eq!(status_of(&mut c1, &p), 0);
                break;
            }
            op => panic!("unexpected opcode {op:#04x}"),
        }
    }
    assert_eq!(got, data);
}

#[test]
fn at_erl_2_a_session_whose_connection_is_not_recovered_ends_after_time2retain() {
    let d = Daemon::start(Opts::default());
    let c0 = login(&d, &erl2(0, 0, 1));
    let tsih = c0.tsih;
    c0.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c0);
    // Time2Wait 2 s (the target's) + Time2Retain 1 s: the session is gone after that.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    match Session::connect(d.addr(), &erl2(tsih, 1, 0)) {
        Err(common::initiator::LoginError::Refused { class, detail }) => {
            assert_eq!((class, detail), (2, 0x0a), "session does not exist")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("joined a session that should be gone"),
    }
    // And a new session from the same initiator port works.
    login(&d, &erl2(0, 0, 1));
}
