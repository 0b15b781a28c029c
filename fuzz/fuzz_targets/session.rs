//! Operation-sequence fuzzing of a session of several connections (MC/S): `Connection`s that
//! share one `SessionHandle`, joined and dropped, with commands, Data-Out, task management,
//! logouts by CID, completions and aborts from outside, in any order.
//!
//! Invariants checked (beyond "never panics"):
//! - every `OutPdu` frames and decodes back to the same BHS and data;
//! - each connection's StatSN advances by exactly one per status-carrying PDU (RFC 7143
//!   §4.2.2.2: StatSN is per connection), R2Ts and pings carry it unchanged;
//! - ExpCmdSN never goes back, on any connection (one command order for the session);
//! - a task's R2Ts, Data-In and status go out on the connection its command came on;
//! - once a connection's `Close` was seen, it produces no further events or PDUs;
//! - a connection replaced by another with its CID reports itself closed;
//! - (format 2) what a SNACK brings again is what was sent before: a numbered response with
//!   its old StatSN, equal to the original but for ExpCmdSN/MaxCmdSN (and, after an R-Data
//!   SNACK, its SNACK Tag and ExpDataSN), and Data-In only of tasks answered on that connection.
//!
//! Two input formats. An input that starts with [`FORMAT_2`] is an [`InputV2`]: its login
//! offers an ErrorRecoveryLevel, and its ops include those added since the first format
//! ([`Recovery`]: SNACK, acknowledging StatSN, a Data-Out with a bad data digest). Any other input
//! is an [`InputV1`], decoded exactly as before format 2 existed, so existing corpora and
//! `fuzz/regressions/session-*` keep their meaning. (A variant appended to `Op` would not do
//! that: `arbitrary` picks a variant from a u32 scaled by the variant count, so every existing
//! input would decode differently.)
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use iscsi_proto::conn::ConnConfig;
use iscsi_proto::{serial, ConnEvent, Connection, OutPdu, TaskId, TaskOutcome};
use iscsi_wire::frame::Decoder;
use iscsi_wire::header::*;
use iscsi_wire::{LogoutReason, TmfFunction, RESERVED_TAG};
use libfuzzer_sys::fuzz_target;
use testkit::engine::{self, Dir, LoginOpts, TARGET};
use testkit::pdu::{self, Request};

const MAX_OPS: usize = 256;
const MAX_CONNS: usize = 4;

/// `FERRITE_FUZZ_TRACE=1` prints every op, PDU and event (for reading a crash or a seed).
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FERRITE_FUZZ_TRACE").is_some())
}

/// `h` without the fields a retransmission may change (RFC 7143 §11.16: ExpCmdSN and
/// MaxCmdSN; an R-Data SNACK also gives the SCSI Response its SNACK Tag and a new ExpDataSN).
fn without_window(h: &Header) -> Header {
    let mut h = h.clone();
    match &mut h {
        Header::ScsiResponse(r) => {
            (r.exp_cmd_sn, r.max_cmd_sn, r.snack_tag, r.exp_data_sn) = (0, 0, 0, 0);
        }
        Header::DataIn(d) => (d.exp_cmd_sn, d.max_cmd_sn) = (0, 0),
        Header::NopIn(n) => (n.exp_cmd_sn, n.max_cmd_sn) = (0, 0),
        Header::TaskMgmtResponse(t) => (t.exp_cmd_sn, t.max_cmd_sn) = (0, 0),
        Header::LogoutResponse(l) => (l.exp_cmd_sn, l.max_cmd_sn) = (0, 0),
        Header::TextResponse(t) => (t.exp_cmd_sn, t.max_cmd_sn) = (0, 0),
        Header::Reject(r) => (r.exp_cmd_sn, r.max_cmd_sn) = (0, 0),
        Header::AsyncMessage(a) => (a.exp_cmd_sn, a.max_cmd_sn) = (0, 0),
        _ => {}
    }
    h
}

/// How a request's CmdSN is chosen: below 200 the next expected one; 200-249 ahead of it;
/// 250-255 behind it.
type Sn = u8;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Log a connection in with this CID (the first one leads; the others join by TSIH).
    Join {
        cid: u8,
    },
    Command {
        conn: u8,
        itt: u8,
        write: bool,
        read: bool,
        blocks: u8,
        attr: u8,
        immediate: bool,
        sn: Sn,
    },
    /// Answer an R2T the connection got (all of it, or all but the last byte).
    DataOut {
        conn: u8,
        pick: u8,
        short: bool,
    },
    /// A Data-Out for a task on the wrong connection (allegiance).
    StrayDataOut {
        conn: u8,
        pick: u8,
    },
    Complete {
        pick: u8,
        data_len: u16,
    },
    Tmf {
        conn: u8,
        function: u8,
        ref_itt: u8,
        sn: Sn,
    },
    TmfDone {
        conn: u8,
    },
    Logout {
        conn: u8,
        reason: u8,
        cid: u8,
        sn: Sn,
    },
    Nop {
        conn: u8,
        itt: u8,
        sn: Sn,
    },
    /// Another I_T nexus's task management or PREEMPT AND ABORT.
    AbortOutside {
        wait: bool,
    },
    Shutdown {
        conn: u8,
    },
    BudgetReady {
        conn: u8,
    },
    Tick {
        conn: u8,
        secs: u8,
    },
}

/// The first input format (the only one before format 2): keep it as it is.
#[derive(Arbitrary, Debug)]
struct InputV1 {
    max_connections: u8,
    ops: Vec<Op>,
}

/// The bytes a format-2 input starts with.
const FORMAT_2: &[u8; 4] = b"FzS2";

/// Format 2: a login that offers ErrorRecoveryLevel `erl % 3` (the target offers up to 2), and
/// ops that may be [`Recovery`] ops.
#[derive(Arbitrary, Debug)]
struct InputV2 {
    max_connections: u8,
    erl: u8,
    ops: Vec<Step>,
}

#[derive(Debug)]
enum Input {
    V1(InputV1),
    V2(InputV2),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.peek_bytes(FORMAT_2.len()) == Some(FORMAT_2) {
            u.bytes(FORMAT_2.len())?;
            return Ok(Input::V2(u.arbitrary()?));
        }
        Ok(Input::V1(u.arbitrary()?))
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.peek_bytes(FORMAT_2.len()) == Some(FORMAT_2) {
            u.bytes(FORMAT_2.len())?;
            return Ok(Input::V2(InputV2::arbitrary_take_rest(u)?));
        }
        Ok(Input::V1(InputV1::arbitrary_take_rest(u)?))
    }

    /// That of the first format, so libFuzzer skips the same too-short inputs as before.
    fn size_hint(depth: usize) -> (usize, Option<usize>) {
        InputV1::size_hint(depth)
    }
}

/// A format-2 op: one byte below 0xd0 picks an [`Op`] (about four in five), else a
/// [`Recovery`] op.
#[derive(Debug)]
enum Step {
    Op(Op),
    Recovery(Recovery),
}

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.arbitrary::<u8>()? < 0xd0 {
            Step::Op(u.arbitrary()?)
        } else {
            Step::Recovery(u.arbitrary()?)
        })
    }
}

/// Format-2 ops: error recovery within a connection (RFC 7143 §7.1-§7.3, ErrorRecoveryLevel 1).
#[derive(Arbitrary, Debug)]
enum Recovery {
    /// A SNACK Request (§11.16) on a connection: type `kind % 5` (Data/R2T, Status, DataACK,
    /// R-Data; 4 is undefined), for a task the connection answered or has R2Ts out for
    /// (`pick`), BegRun near the responses sent (Status) or near 0 (the others), RunLength
    /// `run % 4` (0: all).
    Snack {
        conn: u8,
        kind: u8,
        pick: u8,
        beg: u8,
        run: u8,
    },
    /// Acknowledge the connection's responses up to `lag % 4` before the last one (ExpStatSN),
    /// on an immediate NOP-Out that asks for no answer; later PDUs on it carry it too.
    Ack {
        conn: u8,
        lag: u8,
    },
    /// The Data-Out that answers an R2T the connection got arrives with a bad data digest.
    DigestError {
        conn: u8,
        pick: u8,
    },
    /// The connection is lost without a logout, as the daemon reports it: the session ends
    /// below ErrorRecoveryLevel 2; at 2 only this connection, its tasks kept for reassignment.
    ConnectionLost {
        conn: u8,
    },
    /// `secs` pass and the session's Time2Retain is looked at (the daemon's timer).
    Expire {
        secs: u8,
    },
    /// The operator's Asynchronous Messages (RFC 7143 §11.9): ask for a logout within
    /// `within` seconds; drop connection `cid % 6`; drop them all.
    RequestLogout {
        within: u8,
    },
    DropConnection {
        cid: u8,
    },
    DropAll,
}

struct Conn {
    c: Connection,
    cid: u16,
    close_seen: bool,
    stat_sn: Option<u32>,
    exp_cmd_sn: Option<u32>,
    /// (ITT, TTT, offset, length) of R2Ts seen here.
    r2ts: Vec<(u32, u32, u32, u32)>,
    /// ITTs of the tasks whose status went out here, most recent last (for SNACKs to name).
    answered: Vec<u32>,
    /// (format 2) Every numbered response sent here, by StatSN, for checking retransmissions.
    numbered: HashMap<u32, Header>,
    /// (format 2) The ExpStatSN this connection's PDUs carry.
    acked: u32,
}

struct Driver {
    dir: Dir,
    /// Format 2 (`Some`): the ErrorRecoveryLevel a leading login offers (`% 3`); PDUs carry
    /// their connection's ExpStatSN, and what SNACKs bring is checked.
    erl: Option<u8>,
    /// The connection a SNACK was just sent on, while its answers are checked.
    snack_on: Option<usize>,
    conns: Vec<Conn>,
    session: Option<iscsi_proto::SessionHandle>,
    tsih: u16,
    max_connections: u32,
    now: Instant,
    next_sn: u32,
    /// Tasks with the "device server".
    executing: Vec<(TaskId, u32)>,
    /// ITT -> the CIDs commands with it were sent on and not yet answered (a task's PDUs must
    /// go out on one of them; aborted tasks and refused duplicates leave stale entries).
    itt_cid: HashMap<u32, Vec<u16>>,
}

impl Driver {
    fn sn(&self, sn: Sn) -> u32 {
        match sn {
            0..=199 => self.next_sn,
            200..=249 => self.next_sn.wrapping_add(u32::from(sn - 199)),
            _ => self.next_sn.wrapping_sub(u32::from(sn - 249)),
        }
    }

    fn sent_sn(&mut self, sn: Sn, immediate: bool) {
        if sn < 200 && !immediate {
            self.next_sn = self.next_sn.wrapping_add(1);
        }
    }

    fn join(&mut self, cid: u16) {
        if self.conns.len() >= MAX_CONNS {
            return;
        }
        let leading = self.session.is_none();
        let cfg = ConnConfig {
            offer: iscsi_proto::TargetOffer {
                max_connections: self.max_connections,
                ..Default::default()
            },
            cmd_window: 16,
            ..ConnConfig::default()
        };
        let mut c = Connection::new(cfg, self.now, 0x100 * (cid as u32 + 1));
        let mut opts = LoginOpts {
            tsih: if leading { 0 } else { self.tsih },
            cid,
            cmd_sn: self.next_sn,
            ..LoginOpts::normal(TARGET)
        }
        .key("MaxRecvDataSegmentLength", "4096");
        if leading {
            opts = opts
                .key("MaxConnections", &self.max_connections.to_string())
                .key("MaxBurstLength", "8192")
                .key("InitialR2T", "Yes");
            if let Some(erl) = self.erl {
                opts = opts.key("ErrorRecoveryLevel", &(erl % 3).to_string());
            }
        }
        let Some(r) = engine::try_request_login(&mut c, self.now, &self.dir, &opts) else {
            if trace() {
                eprintln!("   CID {cid}: login did not complete");
            }
            return;
        };
        if leading {
            self.tsih = 1;
            self.next_sn = r.exp_cmd_sn;
            c.accept_login(&r, self.tsih);
            self.session = c.session();
        } else if let Some(s) = self.session.clone() {
            c.accept_join(&r, self.tsih, &s);
        }
        // A CID in use: the old connection is replaced and must say so.
        for o in self.conns.iter_mut().filter(|o| o.cid == cid) {
            if c.session().is_some() {
                assert!(o.c.is_closed() || !o.c.is_current());
            }
        }
        self.conns.push(Conn {
            c,
            cid,
            close_seen: false,
            stat_sn: None,
            exp_cmd_sn: None,
            r2ts: Vec::new(),
            answered: Vec::new(),
            numbered: HashMap::new(),
            acked: 0,
        });
        self.drain();
    }

    fn pick(&self, conn: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| conn as usize % self.conns.len())
    }

    fn send(&mut self, i: usize, h: impl Request, data: &[u8]) {
        let now = self.now;
        let mut pdu = h.raw(data);
        if self.erl.is_some() {
            // Every initiator request carries ExpStatSN in bytes 28-31 (RFC 7143 §11).
            pdu.bhs[28..32].copy_from_slice(&self.conns[i].acked.to_be_bytes());
        }
        self.conns[i].c.handle_pdu(now, pdu, &self.dir);
        self.drain();
    }

    /// Drain every connection's events and PDUs, checking them.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.conns.len() {
                while let Some(o) = self.conns[i].c.poll_transmit() {
                    progressed = true;
                    if trace() {
                        eprintln!(
                            "   CID {} <- {:?} +{}",
                            self.conns[i].cid,
                            o.header,
                            o.data.len()
                        );
                    }
                    assert!(!self.conns[i].close_seen, "PDU after Close: {o:?}");
                    self.check_out(i, &o);
                }
                while let Some(e) = self.conns[i].c.poll_event() {
                    progressed = true;
                    if trace() {
                        eprintln!("   CID {} event {e:?}", self.conns[i].cid);
                    }
                    assert!(!self.conns[i].close_seen, "event after Close: {e:?}");
                    match e {
                        ConnEvent::Execute(t) => {
                            let on = self.conns[i].cid;
                            let sent = self.itt_cid.get(&t.itt);
                            assert!(
                                sent.is_some_and(|v| v.contains(&on)),
                                "task {:#x} run on CID {on}, sent on {sent:?}",
                                t.itt
                            );
                            self.executing.push((t.id, t.itt));
                        }
                        ConnEvent::Close { .. } => self.conns[i].close_seen = true,
                        ConnEvent::Cancel(id) => {
                            assert!(self.executing.iter().any(|(x, _)| *x == id));
                        }
                        ConnEvent::Tmf(_) | ConnEvent::Framing { .. } => {}
                        ConnEvent::LoginComplete(_) => {
                            panic!("LoginComplete in full feature phase")
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn check_out(&mut self, i: usize, o: &OutPdu) {
        let mut buf = Vec::new();
        o.encode(&mut buf);
        let mut d = Decoder::new(iscsi_wire::MAX_DATA_SEGMENT);
        d.header_digest = o.header_digest;
        d.data_digest = o.data_digest;
        let (pdu, used) = d.decode(&buf).expect("own PDU decodes").expect("whole");
        assert_eq!(used, buf.len());
        assert_eq!(pdu.data.as_slice(), o.data.as_slice());
        let h = &o.header;
        let cid = self.conns[i].cid;
        if self.snack_on == Some(i) && self.retransmitted(i, h) {
            return;
        }
        let (stat_sn, exp, advances) = match h {
            Header::ScsiResponse(r) => (Some(r.stat_sn), Some(r.exp_cmd_sn), true),
            Header::DataIn(d) => (
                d.has_status.then_some(d.stat_sn),
                Some(d.exp_cmd_sn),
                d.has_status,
            ),
            Header::R2t(r) => (Some(r.stat_sn), Some(r.exp_cmd_sn), false),
            Header::NopIn(n) => (Some(n.stat_sn), Some(n.exp_cmd_sn), n.itt != RESERVED_TAG),
            Header::TaskMgmtResponse(t) => (Some(t.stat_sn), Some(t.exp_cmd_sn), true),
            Header::LogoutResponse(l) => (Some(l.stat_sn), Some(l.exp_cmd_sn), true),
            Header::TextResponse(t) => (Some(t.stat_sn), Some(t.exp_cmd_sn), true),
            Header::Reject(r) => (Some(r.stat_sn), Some(r.exp_cmd_sn), true),
            Header::AsyncMessage(a) => (Some(a.stat_sn), Some(a.exp_cmd_sn), true),
            Header::LoginResponse(_) => (None, None, false),
            other => panic!("target sent {other:?}"),
        };
        // Task PDUs go out on the task's own connection.
        let task_itt = match h {
            Header::ScsiResponse(r) => Some(r.itt),
            Header::DataIn(d) => Some(d.itt),
            Header::R2t(r) => Some(r.itt),
            _ => None,
        };
        if let Some(itt) = task_itt {
            if let Some(sent) = self.itt_cid.get(&itt) {
                assert!(
                    sent.contains(&cid),
                    "PDU for ITT {itt:#x} on CID {cid}, sent on {sent:?}"
                );
            }
            if let Header::R2t(r) = h {
                self.conns[i]
                    .r2ts
                    .push((r.itt, r.ttt, r.buffer_offset, r.desired_len));
            }
            if matches!(h, Header::ScsiResponse(_))
                || matches!(h, Header::DataIn(d) if d.has_status)
            {
                self.itt_cid.remove(&itt);
                let c = &mut self.conns[i];
                c.r2ts.retain(|r| r.0 != itt);
                c.answered.retain(|&a| a != itt);
                c.answered.push(itt);
                if c.answered.len() > 1024 {
                    c.answered.remove(0);
                }
            }
        }
        if let Some(s) = stat_sn {
            let c = &mut self.conns[i];
            if let Some(expected) = c.stat_sn {
                assert_eq!(s, expected, "StatSN on CID {cid}");
            }
            c.stat_sn = Some(if advances { s.wrapping_add(1) } else { s });
            if advances && self.erl.is_some() {
                c.numbered.insert(s, h.clone());
            }
        }
        if let Some(e) = exp {
            let c = &mut self.conns[i];
            if let Some(prev) = c.exp_cmd_sn {
                assert!(
                    !serial::lt(e, prev),
                    "ExpCmdSN went back on CID {cid}: {prev} -> {e}"
                );
            }
            c.exp_cmd_sn = Some(e);
        }
    }

    /// Whether `h`, sent on connection `i` in answer to a SNACK, is a retransmission (and so
    /// exempt from the StatSN and allegiance rules); checks it is a faithful one.
    fn retransmitted(&mut self, i: usize, h: &Header) -> bool {
        let c = &self.conns[i];
        let numbered = match h {
            Header::DataIn(d) if !d.has_status => {
                // RFC 7143 §11.16: Data-In again, only of a task answered here.
                assert!(
                    c.answered.contains(&d.itt),
                    "Data-In for ITT {:#x} again on CID {}, not answered there",
                    d.itt,
                    c.cid
                );
                return true;
            }
            Header::ScsiResponse(r) => r.stat_sn,
            Header::DataIn(d) => d.stat_sn,
            Header::NopIn(n) if n.itt != RESERVED_TAG => n.stat_sn,
            Header::TaskMgmtResponse(t) => t.stat_sn,
            Header::LogoutResponse(l) => l.stat_sn,
            Header::TextResponse(t) => t.stat_sn,
            Header::Reject(r) => r.stat_sn,
            Header::AsyncMessage(a) => a.stat_sn,
            _ => return false,
        };
        if !c.stat_sn.is_some_and(|next| serial::lt(numbered, next)) {
            return false; // a new response
        }
        let original = c.numbered.get(&numbered);
        assert!(
            original.map(without_window) == Some(without_window(h)),
            "StatSN {numbered} again on CID {} as {h:?}, first sent as {original:?}",
            c.cid
        );
        true
    }

    fn recovery(&mut self, op: &Recovery) {
        match *op {
            Recovery::Snack {
                conn,
                kind,
                pick,
                beg,
                run,
            } => {
                let Some(i) = self.pick(conn) else { return };
                let c = &self.conns[i];
                let snack_type = kind % 5;
                let tasks: Vec<u32> = c
                    .answered
                    .iter()
                    .copied()
                    .chain(c.r2ts.iter().map(|r| r.0))
                    .collect();
                let itt = match pick {
                    _ if snack_type == pdu::SNACK_STATUS => RESERVED_TAG,
                    0xf8.. => RESERVED_TAG,
                    _ if pick >= 0xf0 || tasks.is_empty() => 0x10 + u32::from(pick & 7),
                    _ => tasks[pick as usize % tasks.len()],
                };
                let beg_run = if snack_type == pdu::SNACK_STATUS {
                    let next = c.stat_sn.unwrap_or(0);
                    next.wrapping_add(4).wrapping_sub(u32::from(beg % 16))
                } else {
                    u32::from(beg % 16).saturating_sub(8)
                };
                let mut h = pdu::snack(snack_type, itt, beg_run, u32::from(run % 4));
                if snack_type == pdu::SNACK_R_DATA {
                    h.ttt = 0x5000 + u32::from(pick); // the SNACK Tag
                }
                self.snack_on = Some(i);
                self.send(i, h, &[]);
                self.snack_on = None;
            }
            Recovery::Ack { conn, lag } => {
                let Some(i) = self.pick(conn) else { return };
                let c = &mut self.conns[i];
                c.acked = c.stat_sn.unwrap_or(0).wrapping_sub(u32::from(lag % 4));
                // RFC 7143 §11.18: ITT and TTT reserved, immediate: no answer.
                let h = NopOut {
                    immediate: true,
                    ..pdu::nop_out(RESERVED_TAG, self.next_sn)
                };
                self.send(i, h, &[]);
            }
            Recovery::DigestError { conn, pick } => {
                let Some(i) = self.pick(conn) else { return };
                if self.conns[i].r2ts.is_empty() {
                    return;
                }
                let k = pick as usize % self.conns[i].r2ts.len();
                let (itt, ttt, offset, len) = self.conns[i].r2ts.remove(k);
                let mut bhs = pdu::data_out(itt, ttt, 0, offset, true)
                    .into_header()
                    .emit();
                iscsi_wire::frame::encode_bhs_lengths(&mut bhs, 0, len as usize);
                bhs[28..32].copy_from_slice(&self.conns[i].acked.to_be_bytes());
                self.conns[i].c.handle_digest_error(&bhs);
                self.drain();
            }
            Recovery::ConnectionLost { conn } => {
                let Some(i) = self.pick(conn) else { return };
                let now = self.now;
                self.conns[i].c.connection_lost(now, "fuzz");
                self.drain();
            }
            Recovery::Expire { secs } => {
                self.now += Duration::from_secs(u64::from(secs));
                if let Some(s) = &self.session {
                    s.expire(self.now);
                }
                self.drain();
            }
            Recovery::RequestLogout { within } => {
                if let Some(s) = &self.session {
                    s.request_logout(u16::from(within));
                }
                self.drain();
            }
            Recovery::DropConnection { cid } => {
                if let Some(s) = &self.session {
                    s.drop_connection(u16::from(cid % 6), self.now);
                }
                self.drain();
            }
            Recovery::DropAll => {
                if let Some(s) = &self.session {
                    s.drop_all("fuzz");
                }
                self.drain();
            }
        }
    }

    fn run(&mut self, op: &Op) {
        if trace() {
            eprintln!("-> {op:?}");
        }
        match *op {
            Op::Join { cid } => self.join(u16::from(cid % 6)),
            Op::Command {
                conn,
                itt,
                write,
                read,
                blocks,
                attr,
                immediate,
                sn,
            } => {
                let Some(i) = self.pick(conn) else { return };
                let itt = u32::from(itt) + 0x10;
                let len = u32::from(blocks % 32) * 512;
                let opcode = if write { 0x2a } else { 0x28 };
                let h = ScsiCommand {
                    immediate,
                    read,
                    write,
                    attr: attr % 5,
                    expected_len: len,
                    ..pdu::scsi_command(itt, self.sn(sn), &[opcode])
                };
                let cid = self.conns[i].cid;
                self.itt_cid.entry(itt).or_default().push(cid);
                self.sent_sn(sn, immediate);
                self.send(i, h, &[]);
            }
            Op::DataOut { conn, pick, short } => {
                let Some(i) = self.pick(conn) else { return };
                if self.conns[i].r2ts.is_empty() {
                    return;
                }
                let k = pick as usize % self.conns[i].r2ts.len();
                let (itt, ttt, offset, len) = self.conns[i].r2ts.remove(k);
                let len = if short { len.saturating_sub(1) } else { len };
                let h = pdu::data_out(itt, ttt, 0, offset, true);
                self.send(i, h, &vec![0xa5; len as usize]);
            }
            Op::StrayDataOut { conn, pick } => {
                let Some(i) = self.pick(conn) else { return };
                let all: Vec<(u32, u32, u32, u32)> =
                    self.conns.iter().flat_map(|c| c.r2ts.clone()).collect();
                if all.is_empty() {
                    return;
                }
                let (itt, ttt, offset, len) = all[pick as usize % all.len()];
                let h = pdu::data_out(itt, ttt, 0, offset, true);
                self.send(i, h, &vec![0x5a; len as usize]);
            }
            Op::Complete { pick, data_len } => {
                if self.executing.is_empty() {
                    return;
                }
                let (id, _) = self.executing.remove(pick as usize % self.executing.len());
                let outcome = TaskOutcome {
                    data_in: vec![0x11; usize::from(data_len % 20_000)],
                    data_out_len: u32::from(data_len),
                    ..Default::default()
                };
                // The device server answers through any connection's handle.
                if let Some(c) = self.conns.first_mut() {
                    c.c.complete_task(id, outcome);
                }
                self.drain();
            }
            Op::Tmf {
                conn,
                function,
                ref_itt,
                sn,
            } => {
                let Some(i) = self.pick(conn) else { return };
                if 1 + function % 8 == TmfFunction::TASK_REASSIGN.0 {
                    // At ErrorRecoveryLevel 2 the task may move here (RFC 7143 §6.2.2): its
                    // PDUs may come on this connection from now on.
                    let cid = self.conns[i].cid;
                    self.itt_cid
                        .entry(u32::from(ref_itt) + 0x10)
                        .or_default()
                        .push(cid);
                }
                let h = pdu::tmf(
                    TmfFunction(1 + function % 8),
                    0x4000 + u32::from(ref_itt),
                    u32::from(ref_itt) + 0x10,
                    self.sn(sn),
                );
                self.send(i, h, &[]);
            }
            Op::TmfDone { conn } => {
                let Some(i) = self.pick(conn) else { return };
                self.conns[i].c.tmf_done();
                self.drain();
            }
            Op::Logout {
                conn,
                reason,
                cid,
                sn,
            } => {
                let Some(i) = self.pick(conn) else { return };
                let h = pdu::logout(
                    LogoutReason(reason % 4),
                    0x7000 + u32::from(cid),
                    u16::from(cid % 6),
                    self.sn(sn),
                );
                self.send(i, h, &[]);
            }
            Op::Nop { conn, itt, sn } => {
                let Some(i) = self.pick(conn) else { return };
                let h = pdu::nop_out(0x6000 + u32::from(itt), self.sn(sn));
                self.sent_sn(sn, false);
                self.send(i, h, &[]);
            }
            Op::AbortOutside { wait } => {
                if let Some(s) = self.session.clone() {
                    let done: Option<Box<dyn FnOnce(usize) + Send>> =
                        wait.then(|| Box::new(|_| {}) as Box<dyn FnOnce(usize) + Send>);
                    s.abort_tasks_for(|_| true, done);
                }
                self.drain();
            }
            Op::Shutdown { conn } => {
                let Some(i) = self.pick(conn) else { return };
                self.conns[i].c.shutdown("fuzz");
                self.drain();
            }
            Op::BudgetReady { conn } => {
                let Some(i) = self.pick(conn) else { return };
                self.conns[i].c.budget_ready();
                self.drain();
            }
            Op::Tick { conn, secs } => {
                let Some(i) = self.pick(conn) else { return };
                self.now += Duration::from_secs(u64::from(secs));
                let now = self.now;
                self.conns[i].c.handle_timeout(now);
                self.drain();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let (max_connections, erl) = match &input {
        Input::V1(i) => (i.max_connections, None),
        Input::V2(i) => (i.max_connections, Some(i.erl)),
    };
    let mut d = Driver {
        dir: Dir::new(TARGET),
        erl,
        snack_on: None,
        conns: Vec::new(),
        session: None,
        tsih: 0,
        max_connections: u32::from(max_connections % 5).max(1),
        now: Instant::now(),
        next_sn: 0,
        executing: Vec::new(),
        itt_cid: HashMap::new(),
    };
    d.join(0);
    match &input {
        Input::V1(i) => {
            for op in i.ops.iter().take(MAX_OPS) {
                d.run(op);
            }
        }
        Input::V2(i) => {
            for step in i.ops.iter().take(MAX_OPS) {
                match step {
                    Step::Op(op) => d.run(op),
                    Step::Recovery(op) => {
                        if trace() {
                            eprintln!("-> {op:?}");
                        }
                        d.recovery(op)
                    }
                }
            }
        }
    }
});
