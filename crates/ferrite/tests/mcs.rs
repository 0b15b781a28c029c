//! Sessions of several connections (MC/S, RFC 7143 §4.4, §6.3.4): the repo's own initiator
//! opens a session, joins connections to it by TSIH and CID, and spreads commands over them
//! in one CmdSN order.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::initiator::{
    LoginError, LoginOpts, Pdu, R2t, Session, OP_DATA_IN, OP_R2T, OP_SCSI_RSP,
};
use common::{Daemon, Opts, Rng};

const BLOCK: usize = 512;
const IO: usize = 4096;
const INITIATOR: &str = "iqn.2026-11.io.ferrite:mcs";

/// One session of `n` connections (CIDs 0..n), MaxConnections `n`.
struct Mcs {
    conns: Vec<Session>,
    /// The session's CmdSN (RFC 7143 §4.2.2.1: one order over every connection).
    cmd_sn: u32,
}

fn opts(tsih: u16, cid: u16, max: u32) -> LoginOpts<'static> {
    LoginOpts {
        initiator: INITIATOR,
        tsih,
        cid,
        max_connections: max,
        ..LoginOpts::default()
    }
}

impl Mcs {
    fn open(d: &Daemon, n: u16) -> Mcs {
        let lead = Session::login(d.addr(), &opts(0, 0, u32::from(n))).unwrap();
        assert_eq!(
            lead.negotiated.get("MaxConnections").map(String::as_str),
            Some(n.to_string().as_str())
        );
        let tsih = lead.tsih;
        let cmd_sn = lead.cmd_sn();
        let mut m = Mcs {
            conns: vec![lead],
            cmd_sn,
        };
        for cid in 1..n {
            let mut c = Session::connect(d.addr(), &opts(tsih, cid, 0)).unwrap();
            assert_eq!(c.tsih, tsih, "joined the session");
            c.set_cmd_sn(m.cmd_sn);
            // ITTs are the session's: each connection draws from a range of its own.
            c.set_next_itt(u32::from(cid) << 24);
            m.conns.push(c);
        }
        m
    }

    /// A SCSI command BHS for connection `i` with the session's next CmdSN.
    fn cmd(&mut self, i: usize, cdb: &[u8], read: bool, write: bool, len: u32) -> ([u8; 48], u32) {
        let c = &mut self.conns[i];
        c.set_cmd_sn(self.cmd_sn);
        let r = c.scsi_cmd_bhs(cdb, read, write, len);
        self.cmd_sn = c.cmd_sn();
        r
    }

    fn send_read(&mut self, i: usize, lba: u32, len: usize) -> u32 {
        let (b, itt) = self.cmd(i, &rw10(0x28, lba, len), true, false, len as u32);
        self.conns[i].send(&b, &[]).unwrap();
        itt
    }

    fn send_write(&mut self, i: usize, lba: u32, len: usize, attr: u8) -> u32 {
        let (mut b, itt) = self.cmd(i, &rw10(0x2a, lba, len), false, true, len as u32);
        b[1] = (b[1] & !0x07) | attr;
        self.conns[i].send(&b, &[]).unwrap();
        itt
    }
}

fn rw10(op: u8, lba: u32, len: usize) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = op;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((len / BLOCK) as u16).to_be_bytes());
    cdb
}

/// The R2T, then the data, then GOOD, all on the write's own connection.
fn finish_write(c: &mut Session, itt: u32, data: &[u8]) {
    let p = c.recv().unwrap();
    assert_eq!((p.opcode(), p.itt()), (OP_R2T, itt), "{:02x?}", &p.bhs[..8]);
    let r = R2t::of(&p);
    assert_eq!((r.offset as usize, r.len as usize), (0, data.len()));
    c.answer_r2t(&r, data, false).unwrap();
    let p = c.recv().unwrap();
    assert_status_good(&p, itt);
}

fn assert_status_good(p: &Pdu, itt: u32) {
    assert_eq!(
        (p.opcode(), p.itt()),
        (OP_SCSI_RSP, itt),
        "{:02x?}",
        &p.bhs[..8]
    );
    assert_eq!((p.bhs[2], p.bhs[3]), (0, 0), "status: {:02x?}", p.data);
}

/// Data-In until the status (phase collapse or a SCSI Response).
fn finish_read(c: &mut Session, itt: u32, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    loop {
        let p = c.recv().unwrap();
        match p.opcode() {
            OP_DATA_IN => {
                assert_eq!(p.itt(), itt);
                let off = u32::from_be_bytes(p.bhs[40..44].try_into().unwrap()) as usize;
                data[off..off + p.data.len()].copy_from_slice(&p.data);
                if p.bhs[1] & 0x01 != 0 {
                    assert_eq!(p.bhs[3], 0, "read status");
                    return data;
                }
            }
            OP_SCSI_RSP => {
                assert_status_good(&p, itt);
                return data;
            }
            op => panic!("read ITT {itt:#x}: opcode {op:#04x}"),
        }
    }
}

/// The target closes this connection (EOF or reset) within `limit`.
fn closed_by_target(c: &mut Session, limit: Duration) -> bool {
    c.stream.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    let t = Instant::now();
    loop {
        match c.stream.read(&mut b) {
            Ok(0) | Err(_) if t.elapsed() < limit => return true,
            Ok(_) if t.elapsed() < limit => continue,
            _ => return false,
        }
    }
}

#[test]
fn four_connections_carry_ten_thousand_checked_ios_in_one_command_order() {
    let d = Daemon::start(Opts::default());
    let mut m = Mcs::open(&d, 4);
    // The operator sees one session of four connections.
    let sessions = common::tpg::admin_json(&d, &["sessions"]);
    assert_eq!(
        sessions[0]["connections"],
        serde_json::json!([0, 1, 2, 3]),
        "{sessions}"
    );
    // Each connection owns 256 slots of 4 KiB, so the four commands of a round never overlap;
    // the model is what every block must hold.
    let slots = 256usize;
    let mut model = vec![0u8; 4 * slots * IO];
    let mut rng = Rng::new(4);
    let mut ios = 0;
    let t = Instant::now();
    while ios < 10_000 {
        // One round: a command on every connection, all in flight at once...
        let mut round = Vec::new();
        for i in 0..4 {
            let slot = i * slots + (rng.next_u64() as usize % slots);
            let lba = (slot * IO / BLOCK) as u32;
            if rng.next_u64().is_multiple_of(2) {
                let mut data = vec![0u8; IO];
                rng.fill(&mut data);
                let itt = m.send_write(i, lba, IO, 1);
                round.push((i, slot, itt, Some(data)));
            } else {
                let itt = m.send_read(i, lba, IO);
                round.push((i, slot, itt, None));
            }
        }
        // ...then each finished on its own connection and checked.
        for (i, slot, itt, data) in round {
            let range = slot * IO..(slot + 1) * IO;
            match data {
                Some(data) => {
                    finish_write(&mut m.conns[i], itt, &data);
                    model[range].copy_from_slice(&data);
                }
                None => {
                    let got = finish_read(&mut m.conns[i], itt, IO);
                    assert!(
                        got == model[range],
                        "connection {i} read stale data at slot {slot}"
                    );
                }
            }
            ios += 1;
        }
    }
    eprintln!("{ios} I/Os over 4 connections in {:?}", t.elapsed());
    // Everything written reads back through one connection.
    let all = 4 * slots * IO;
    for chunk in 0..all / (64 * 1024) {
        let lba = (chunk * 64 * 1024 / BLOCK) as u32;
        let itt = m.send_read(chunk % 4, lba, 64 * 1024);
        let got = finish_read(&mut m.conns[chunk % 4], itt, 64 * 1024);
        assert!(got == model[chunk * 64 * 1024..(chunk + 1) * 64 * 1024]);
    }
    assert_eq!(
        m.conns[0].logout_request(0, 0).unwrap(),
        0,
        "session logout"
    );
    for c in &mut m.conns[1..] {
        assert!(
            closed_by_target(c, Duration::from_secs(10)),
            "every connection closes"
        );
    }
}

#[test]
fn a_read_on_one_connection_behind_an_ordered_write_on_another_sees_the_new_data() {
    // SAM-5 §8.6.3 across connections: the task set is the session's, not a connection's.
    let d = Daemon::start(Opts::default());
    let mut m = Mcs::open(&d, 2);
    let (lba, len) = (2048u32, 64 * 1024);
    let w = m.send_write(0, lba, len, 2); // ORDERED
    let r = m.send_read(1, lba, len);
    let p = m.conns[0].recv().unwrap();
    assert_eq!((p.opcode(), p.itt()), (OP_R2T, w));
    // Give the read every chance to run early, had it not been held back.
    std::thread::sleep(Duration::from_millis(200));
    m.conns[0]
        .answer_r2t(&R2t::of(&p), &vec![0x42; len], false)
        .unwrap();
    assert_status_good(&m.conns[0].recv().unwrap(), w);
    assert_eq!(finish_read(&mut m.conns[1], r, len), vec![0x42; len]);
}

#[test]
fn a_connection_logged_out_by_cid_from_another_closes_while_the_rest_carry_on() {
    let d = Daemon::start(Opts::default());
    let mut m = Mcs::open(&d, 4);
    // RFC 7143 §11.14: Logout with reason "close the connection" naming CID 2, sent on CID 0.
    m.conns[0].set_cmd_sn(m.cmd_sn);
    assert_eq!(
        m.conns[0].logout_request(1, 2).unwrap(),
        0,
        "connection closed"
    );
    assert!(closed_by_target(&mut m.conns[2], Duration::from_secs(10)));
    // A CID that is not the session's: "CID not found".
    assert_eq!(m.conns[0].logout_request(1, 9).unwrap(), 1);
    for i in [0, 1, 3] {
        let data = vec![i as u8 + 1; IO];
        let lba = (i * 64) as u32;
        let itt = m.send_write(i, lba, IO, 1);
        finish_write(&mut m.conns[i], itt, &data);
        let itt = m.send_read(i, lba, IO);
        assert_eq!(finish_read(&mut m.conns[i], itt, IO), data);
    }
    // CID 2 can join again.
    let tsih = m.conns[0].tsih;
    let mut c = Session::connect(d.addr(), &opts(tsih, 2, 0)).unwrap();
    c.set_cmd_sn(m.cmd_sn);
    c.set_next_itt(0x2f << 24);
    m.conns[2] = c;
    let itt = m.send_read(2, 0, IO);
    assert_eq!(finish_read(&mut m.conns[2], itt, IO), vec![1u8; IO]);
}

#[test]
fn max_connections_and_connection_reinstatement() {
    let d = Daemon::start(Opts::default());
    let mut m = Mcs::open(&d, 2);
    let tsih = m.conns[0].tsih;
    // RFC 7143 §11.13.5: a third connection to a session of MaxConnections 2 (0206).
    match Session::connect(d.addr(), &opts(tsih, 7, 0)) {
        Err(LoginError::Refused { class, detail }) => assert_eq!((class, detail), (0x02, 0x06)),
        other => panic!("third connection: {:?}", other.map(|_| ())),
    }
    // The same CID again (connection reinstatement, RFC 7143 §6.3.4): the old connection is
    // closed, the session goes on with the new one.
    let mut again = Session::connect(d.addr(), &opts(tsih, 1, 0)).unwrap();
    assert!(closed_by_target(&mut m.conns[1], Duration::from_secs(10)));
    again.set_cmd_sn(m.cmd_sn);
    again.set_next_itt(0x1f << 24);
    m.conns[1] = again;
    let data = vec![0x5e; IO];
    let itt = m.send_write(1, 8, IO, 1);
    finish_write(&mut m.conns[1], itt, &data);
    let itt = m.send_read(0, 8, IO);
    assert_eq!(finish_read(&mut m.conns[0], itt, IO), data);
}

#[test]
fn at_error_recovery_level_0_a_lost_connection_ends_the_session() {
    let d = Daemon::start(Opts::default());
    let mut m = Mcs::open(&d, 3);
    let tsih = m.conns[0].tsih;
    // The initiator's side of connection 2 goes away without a logout.
    let lost = m.conns.remove(2);
    drop(lost);
    for c in &mut m.conns {
        assert!(
            closed_by_target(c, Duration::from_secs(10)),
            "the session ended"
        );
    }
    // Nothing is left to join.
    match Session::connect(d.addr(), &opts(tsih, 1, 0)) {
        Err(LoginError::Refused { class, detail }) => assert_eq!((class, detail), (0x02, 0x0a)),
        other => panic!("join after the session ended: {:?}", other.map(|_| ())),
    }
    // A new session from the same initiator port is served.
    let mut s = Session::login(d.addr(), &opts(0, 0, 1)).unwrap();
    s.read10(0, 8, BLOCK).unwrap();
}
