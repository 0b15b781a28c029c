//! Operation-sequence fuzzing of the sans-IO connection engine (`iscsi_proto::Connection`).
//!
//! The input is a login choice and a list of [`Op`]s. Most inputs start with a scripted, valid
//! login (so the full feature phase gets explored); the rest feed raw PDUs from the first one.
//! The harness acts as the driver: after every op it drains `poll_event` and `poll_transmit`,
//! answers `LoginComplete` with `accept_login`, collects `Execute` tasks and completes them
//! when a later op says so. Structured ops (`Command`, `DataOut`, `Text`, ...) build valid-ish
//! PDUs with the current CmdSN and outstanding R2Ts so that deep states are reachable; `Pdu`
//! sends a raw header.
//!
//! Invariants checked (beyond "never panics"):
//! - every `OutPdu` frames with its digest settings and decodes back to the same BHS and data;
//! - the target never sends an initiator opcode;
//! - StatSN advances by exactly one per status-carrying PDU; R2T and pings carry it unchanged;
//! - ExpCmdSN never goes back and MaxCmdSN never falls below ExpCmdSN - 1 (RFC 7143 §4.2.2.1);
//! - Data-In and Text Response data segments fit the initiator's MaxRecvDataSegmentLength;
//! - the Data-In PDUs of one task have consecutive offsets from 0, increasing DataSN, stay
//!   within the Expected Data Transfer Length and add up to what the device returned;
//! - once `Close` was seen, the engine produces no further events or PDUs.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use iscsi_proto::conn::ConnConfig;
use iscsi_proto::{serial, ConnEvent, Connection, LoginResult, OutPdu, TaskId};
use iscsi_proto::{SessionKind, TaskOutcome};
use iscsi_wire::frame::{self, Decoder, RawPdu};
use iscsi_wire::header::*;
use iscsi_wire::{ahs, text, Opcode, Stage, BHS_LEN, MAX_DATA_SEGMENT, RESERVED_TAG};
use libfuzzer_sys::fuzz_target;
use testkit::engine::{Dir, TARGET};
use testkit::pdu;

const MAX_OPS: usize = 256;

/// `FERRITE_FUZZ_TRACE=1` prints every op, PDU and event (for reading a crash or a seed).
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FERRITE_FUZZ_TRACE").is_some())
}

/// The target, with an alias, and another one SendTargets lists but no login may name.
fn directory() -> Dir {
    Dir::new(TARGET)
        .with_alias("fuzz")
        .listing("iqn.2026-11.io.ferrite:u", "[::1]:3260,1")
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Start,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Start {
    /// Below 224: a scripted valid login first. Otherwise raw ops from the first PDU on.
    mode: u8,
    initial_stat_sn: u32,
    cmd_sn: u32,
    discovery: bool,
    header_digest: bool,
    data_digest: bool,
    immediate_data: bool,
    initial_r2t: bool,
    /// Added to the RFC minimum of 512 (small limits give many PDUs per task).
    mrdsl: u16,
    max_burst: u16,
    first_burst: u16,
    max_outstanding_r2t: u8,
    /// Pass through the security stage before the operational one.
    security_first: bool,
    /// Leave `LoginComplete` unanswered until a `LoginOk` op.
    defer_accept: bool,
}

/// How a request's CmdSN is chosen: below 200 the next expected one; 200-249 ahead of it (the
/// engine queues it); 250-255 behind it (stale or duplicate).
type Sn = u8;

#[derive(Arbitrary, Debug)]
enum Data {
    Empty,
    Fill {
        len: u16,
        byte: u8,
    },
    /// A text made of the dictionary entries whose bits are set.
    Text(u16),
    Bytes([u8; 12]),
    /// `n` distinct unknown keys: their NotUnderstood answers outgrow one PDU.
    Keys(u8),
}

const TEXT_DICT: [&[u8]; 16] = [
    b"SendTargets=All",
    b"SendTargets=",
    b"SendTargets=iqn.2026-11.io.ferrite:t",
    b"MaxBurstLength=512",
    b"X-com.example.fuzz=1",
    b"novalue",
    b"HeaderDigest=CRC32C",
    b"\xff=bad",
    b"InitiatorName=iqn.2026-11.test:fuzz",
    b"TargetName=iqn.2026-11.io.ferrite:t",
    b"SessionType=Discovery",
    b"AuthMethod=None",
    b"AuthMethod=CHAP",
    b"ImmediateData=Yes",
    b"MaxRecvDataSegmentLength=512",
    b"CHAP_A=5",
];

impl Data {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Empty => Vec::new(),
            Data::Fill { len, byte } => vec![*byte; *len as usize],
            Data::Text(mask) => {
                let mut v = Vec::new();
                for (i, e) in TEXT_DICT.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        v.extend_from_slice(e);
                        v.push(0);
                    }
                }
                v
            }
            Data::Bytes(b) => b.to_vec(),
            Data::Keys(n) => (0..*n)
                .flat_map(|i| format!("X-com.example.k{i}=v\0").into_bytes())
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum AhsChoice {
    None,
    /// An extended-CDB AHS carrying `len` more CDB bytes.
    ExtCdb {
        len: u8,
    },
    BidiReadLength(u32),
    Raw([u8; 8]),
}

impl AhsChoice {
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        match self {
            AhsChoice::None => {}
            AhsChoice::ExtCdb { len } => {
                let tail: Vec<u8> = (0..*len).collect();
                ahs::encode_extended_cdb(&tail, &mut v);
            }
            AhsChoice::BidiReadLength(n) => ahs::encode_bidi_read_length(*n, &mut v),
            AhsChoice::Raw(b) => v.extend_from_slice(b),
        }
        v
    }
}

#[derive(Arbitrary, Debug)]
enum OutLen {
    Expected,
    DataLen,
    Raw(u16),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A raw BHS; its length fields are set to match `ahs` and `data` (as the decoder
    /// guarantees). With `set_sn`, bytes 24-27 get a CmdSN chosen by `sn`.
    Pdu {
        bhs: [u8; 48],
        ahs: AhsChoice,
        data: Data,
        set_sn: bool,
        sn: Sn,
    },
    Command {
        itt: u8,
        lun: u8,
        cdb0: u8,
        read: bool,
        write: bool,
        edtl: u16,
        /// Scale EDTL by 1024 (past `max_write_len` for the largest values).
        big: bool,
        final_bit: bool,
        immediate: bool,
        /// Immediate data bytes (clamped to EDTL unless `over`).
        imm: u16,
        over: bool,
        ext_cdb: AhsChoice,
        sn: Sn,
    },
    /// Data-Out for an outstanding R2T, or unsolicited data for a write when none is.
    DataOut {
        pick: u8,
        len: u16,
        final_bit: bool,
        /// 240 and above: break one field (DataSN, offset, TTT or length).
        skew: u8,
    },
    Text {
        itt: u8,
        cont: bool,
        /// Ask for the next piece of a long answer (our last Text Response's TTT).
        follow: bool,
        data: Data,
        immediate: bool,
        sn: Sn,
    },
    Nop {
        itt: u8,
        /// Answer the target's last ping (ITT 0xffffffff, its TTT).
        answer_ping: bool,
        data: Data,
        immediate: bool,
        sn: Sn,
    },
    Tmf {
        function: u8,
        itt: u8,
        ref_itt: u8,
        lun: u8,
        ref_sn: u8,
        immediate: bool,
        sn: Sn,
    },
    Logout {
        itt: u8,
        reason: u8,
        immediate: bool,
        sn: Sn,
    },
    /// Accept a deferred login.
    LoginOk,
    /// The device server finishes the `pick`-th collected task.
    Complete {
        pick: u8,
        status: u8,
        data_len: u16,
        sense_len: u8,
        out_len: OutLen,
    },
    Tick(u8),
    /// Jump to the engine's next deadline.
    ToDeadline,
    /// The decoder reported a data digest error on a PDU with this opcode byte.
    DigestError(u8),
}

#[derive(Debug)]
struct R2tTrack {
    itt: u32,
    ttt: u32,
    offset: u32,
    len: u32,
    sent: u32,
    data_sn: u32,
}

#[derive(Debug)]
struct UnsolTrack {
    itt: u32,
    edtl: u32,
    sent: u32,
    data_sn: u32,
}

#[derive(Debug, Clone)]
struct Executing {
    id: TaskId,
    itt: u32,
    read: bool,
    expected_len: u32,
}

/// Data-In seen so far for the task being completed.
#[derive(Debug, Default)]
struct DataInTrack {
    next_offset: u32,
    last_sn: Option<u32>,
    status_seen: bool,
}

struct Driver {
    c: Connection,
    dir: Dir,
    now: Instant,
    defer_accept: bool,
    pending_login: Option<LoginResult>,
    logged_in: bool,
    kind: Option<SessionKind>,
    /// The decoder's data segment limit: 8192 during login (as the daemon starts it), then
    /// what `Framing` says.
    max_recv: u32,
    close_seen: bool,
    /// The CmdSN the engine expects next, as far as the driver can tell.
    next_sn: u32,
    /// Next StatSN the target must use (once known).
    stat_sn: Option<u32>,
    exp_cmd_sn: Option<u32>,
    executing: Vec<Executing>,
    r2ts: Vec<R2tTrack>,
    writes: Vec<UnsolTrack>,
    ping_ttt: Option<u32>,
    text_ttt: Option<(u32, u32)>,
    /// Set while `complete_task` runs: the task and what its Data-In must add up to.
    completing: Option<(Executing, usize)>,
    data_in: DataInTrack,
    /// TMF actions handed out and not yet reported done (`tmf_done`).
    tmf_owed: usize,
}

impl Driver {
    fn sn(&self, sn: Sn) -> u32 {
        match sn {
            0..=199 => self.next_sn,
            200..=249 => self.next_sn.wrapping_add(u32::from(sn - 199)),
            _ => self.next_sn.wrapping_sub(u32::from(sn - 249)),
        }
    }

    /// The engine advances ExpCmdSN for an in-order, non-immediate request.
    fn sent_sn(&mut self, sn: Sn, immediate: bool) {
        if sn < 200 && !immediate {
            self.next_sn = self.next_sn.wrapping_add(1);
        }
    }

    fn send(&mut self, bhs: [u8; BHS_LEN], ahs: Vec<u8>, data: Vec<u8>) {
        if data.len() > self.max_recv as usize {
            // The driver's decoder refuses it (FrameError::DataTooLong) and drops the
            // connection; the engine never sees such a PDU.
            return;
        }
        let mut bhs = bhs;
        assert!(ahs.len().is_multiple_of(4) && ahs.len() / 4 <= 255);
        frame::encode_bhs_lengths(&mut bhs, ahs.len(), data.len());
        let pdu = RawPdu { bhs, ahs, data };
        self.c.handle_pdu(self.now, pdu, &self.dir);
    }

    fn send_header(&mut self, h: Header, data: Vec<u8>) {
        self.send(h.emit(), Vec::new(), data);
    }

    fn login(&mut self, s: &Start) {
        let yn = |b: bool| if b { "Yes" } else { "No" };
        let digest = |b: bool| if b { "CRC32C,None" } else { "None" };
        let mrdsl = (512 + u32::from(s.mrdsl) % 16384).to_string();
        let burst = (512 + u32::from(s.max_burst) % 32768).to_string();
        let first = (512 + u32::from(s.first_burst) % 32768).to_string();
        let r2t = (1 + u32::from(s.max_outstanding_r2t) % 4).to_string();
        let mut names: Vec<(&str, &str)> = vec![("InitiatorName", "iqn.2026-11.test:fuzz")];
        if s.discovery {
            names.push(("SessionType", "Discovery"));
        } else {
            names.push(("SessionType", "Normal"));
            names.push(("TargetName", TARGET));
        }
        let ops: Vec<(&str, &str)> = vec![
            ("HeaderDigest", digest(s.header_digest)),
            ("DataDigest", digest(s.data_digest)),
            ("ImmediateData", yn(s.immediate_data)),
            ("InitialR2T", yn(s.initial_r2t)),
            ("MaxRecvDataSegmentLength", &mrdsl),
            ("MaxBurstLength", &burst),
            ("FirstBurstLength", &first),
            ("MaxOutstandingR2T", &r2t),
        ];
        let req = |csg, nsg| LoginRequest {
            cmd_sn: s.cmd_sn,
            exp_stat_sn: s.initial_stat_sn,
            ..pdu::login_request(csg, nsg)
        };
        if s.security_first {
            let mut keys = names.clone();
            keys.push(("AuthMethod", "None"));
            let h = Header::LoginRequest(req(Stage::Security, Stage::Operational));
            self.send_header(h, text::encode(&keys));
            self.drain();
            let h = Header::LoginRequest(req(Stage::Operational, Stage::FullFeature));
            self.send_header(h, text::encode(&ops));
        } else {
            let mut keys = names;
            keys.extend(ops);
            let h = Header::LoginRequest(req(Stage::Operational, Stage::FullFeature));
            self.send_header(h, text::encode(&keys));
        }
    }

    fn accept(&mut self, r: LoginResult) {
        self.kind = Some(r.kind);
        self.next_sn = r.exp_cmd_sn;
        self.c.accept_login(&r, 1);
        self.logged_in = true;
    }

    /// Drain events and PDUs until both queues are empty, checking each.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(o) = self.c.poll_transmit() {
                progressed = true;
                if trace() {
                    eprintln!("  <- {:?} +{} bytes", o.header, o.data.len());
                }
                assert!(!self.close_seen, "PDU queued after Close was seen: {o:?}");
                self.check_out(&o);
            }
            while let Some(e) = self.c.poll_event() {
                progressed = true;
                if trace() {
                    eprintln!("  event {e:?}");
                }
                assert!(!self.close_seen, "event after Close: {e:?}");
                match e {
                    ConnEvent::LoginComplete(r) => {
                        assert!(!self.logged_in, "second LoginComplete");
                        if self.defer_accept {
                            self.pending_login = Some(r);
                        } else {
                            self.accept(r);
                        }
                    }
                    ConnEvent::Framing { max_recv, .. } => {
                        assert!(self.logged_in);
                        assert!((512..=MAX_DATA_SEGMENT).contains(&max_recv));
                        self.max_recv = max_recv;
                    }
                    ConnEvent::Execute(t) => {
                        assert!(self.logged_in);
                        // RFC 7143 §4.3: a discovery session carries only Text and Logout.
                        assert_ne!(self.kind, Some(SessionKind::Discovery));
                        assert!(t.cdb.len() >= 16);
                        if t.write {
                            assert_eq!(t.data_out.len() as u64, u64::from(t.expected_len));
                        } else {
                            assert!(t.data_out.is_empty());
                        }
                        self.writes.retain(|w| w.itt != t.itt);
                        self.r2ts.retain(|r| r.itt != t.itt);
                        self.executing.push(Executing {
                            id: t.id,
                            itt: t.itt,
                            read: t.read,
                            expected_len: t.expected_len,
                        });
                    }
                    ConnEvent::Tmf(_) => {
                        assert!(self.logged_in);
                        self.tmf_owed += 1;
                    }
                    ConnEvent::Cancel(id) => {
                        // Only a task the device server holds can be cancelled.
                        assert!(self.executing.iter().any(|x| x.id == id), "cancel {id:?}");
                    }
                    ConnEvent::Close { .. } => {
                        assert!(self.c.is_closed());
                        assert!(!self.c.is_full_feature());
                        assert_eq!(self.c.poll_timeout(), None);
                        self.close_seen = true;
                    }
                }
            }
            // The daemon carries out a TMF's action and then says so.
            if self.tmf_owed > 0 {
                self.tmf_owed -= 1;
                self.c.tmf_done();
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    /// Invariants of one PDU the target sends.
    fn check_out(&mut self, o: &OutPdu) {
        let h = &o.header;
        assert!(!h.opcode().is_initiator(), "target sent {:?}", h.opcode());

        // It frames, and decodes back to the same BHS and data.
        let mut buf = Vec::new();
        o.encode(&mut buf);
        let dec = Decoder {
            header_digest: o.header_digest,
            data_digest: o.data_digest,
            max_data: MAX_DATA_SEGMENT,
        };
        let (raw, used) = dec
            .decode(&buf)
            .expect("an OutPdu decodes")
            .expect("an OutPdu is complete");
        assert_eq!(used, buf.len());
        assert_eq!(raw.data, o.data.as_slice());
        let back = raw.header().expect("an emitted BHS parses");
        assert_eq!(back.emit(), h.emit(), "OutPdu BHS changed through the wire");

        let full = self.logged_in && !matches!(h, Header::LoginResponse(_));
        if full {
            if let Some(p) = self.c.params() {
                if matches!(h, Header::DataIn(_) | Header::TextResponse(_)) {
                    // RFC 7143 §13.12: never more than the initiator's MaxRecvDataSegmentLength.
                    assert!(
                        o.data.len() <= p.initiator_mrdsl as usize,
                        "{} bytes > MRDSL {}",
                        o.data.len(),
                        p.initiator_mrdsl
                    );
                }
            }
        }

        // StatSN: one per status; R2T and target pings carry the next one unchanged.
        let (stat_sn, advances) = match h {
            Header::LoginResponse(l) => (Some(l.stat_sn), true),
            Header::ScsiResponse(r) => (Some(r.stat_sn), true),
            Header::TaskMgmtResponse(r) => (Some(r.stat_sn), true),
            Header::TextResponse(r) => (Some(r.stat_sn), true),
            Header::LogoutResponse(r) => (Some(r.stat_sn), true),
            Header::Reject(r) if self.logged_in => (Some(r.stat_sn), true),
            Header::NopIn(n) => (Some(n.stat_sn), n.itt != RESERVED_TAG),
            Header::DataIn(d) if d.has_status => (Some(d.stat_sn), true),
            Header::R2t(r) => (Some(r.stat_sn), false),
            _ => (None, false),
        };
        if let Some(sn) = stat_sn {
            if let Some(want) = self.stat_sn {
                assert_eq!(sn, want, "StatSN out of sequence in {h:?}");
            }
            self.stat_sn = Some(if advances { sn.wrapping_add(1) } else { sn });
        }

        // The command window (RFC 7143 §4.2.2.1).
        let window = match h {
            Header::ScsiResponse(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::TaskMgmtResponse(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::TextResponse(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::LogoutResponse(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::NopIn(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::DataIn(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::R2t(r) => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            Header::Reject(r) if self.logged_in => Some((r.exp_cmd_sn, r.max_cmd_sn)),
            _ => None,
        };
        if let (true, Some((exp, max))) = (full, window) {
            assert!(
                serial::le(exp.wrapping_sub(1), max),
                "MaxCmdSN {max} < ExpCmdSN {exp} - 1"
            );
            if let Some(prev) = self.exp_cmd_sn {
                assert!(serial::le(prev, exp), "ExpCmdSN went back: {prev} → {exp}");
            }
            self.exp_cmd_sn = Some(exp);
            self.next_sn = exp;
        }

        match h {
            Header::DataIn(d) => {
                let (task, total) = self
                    .completing
                    .as_ref()
                    .expect("Data-In outside complete_task");
                assert_eq!(d.itt, task.itt, "Data-In for another task");
                assert!(task.read, "Data-In for a task without R");
                let t = &mut self.data_in;
                assert!(!t.status_seen, "Data-In after the status");
                assert_eq!(
                    d.buffer_offset, t.next_offset,
                    "Data-In offsets not contiguous"
                );
                if let Some(last) = t.last_sn {
                    assert!(serial::lt(last, d.data_sn), "DataSN not increasing");
                }
                t.last_sn = Some(d.data_sn);
                t.next_offset += o.data.len() as u32;
                assert!(t.next_offset <= task.expected_len, "Data-In past EDTL");
                assert!(
                    t.next_offset as usize <= *total,
                    "Data-In past the device's data"
                );
                if d.has_status {
                    t.status_seen = true;
                    assert!(d.final_bit);
                }
            }
            Header::ScsiResponse(r) => {
                if let Some((task, _)) = &self.completing {
                    if r.itt == task.itt {
                        assert!(!self.data_in.status_seen, "two statuses for one task");
                        self.data_in.status_seen = true;
                    }
                }
            }
            Header::R2t(r) => {
                assert_ne!(r.ttt, RESERVED_TAG);
                assert!(r.desired_len > 0);
                if let Some(p) = self.c.params() {
                    assert!(r.desired_len <= p.max_burst_length);
                }
                self.r2ts.push(R2tTrack {
                    itt: r.itt,
                    ttt: r.ttt,
                    offset: r.buffer_offset,
                    len: r.desired_len,
                    sent: 0,
                    data_sn: 0,
                });
            }
            Header::NopIn(n) if n.itt == RESERVED_TAG => {
                assert_ne!(n.ttt, RESERVED_TAG, "ping without a TTT");
                self.ping_ttt = Some(n.ttt);
            }
            Header::TextResponse(t) => {
                self.text_ttt = (t.ttt != RESERVED_TAG).then_some((t.itt, t.ttt));
            }
            _ => {}
        }
    }

    fn complete(&mut self, pick: u8, status: u8, data_len: u16, sense_len: u8, out_len: &OutLen) {
        if self.executing.is_empty() {
            return;
        }
        let task = self.executing.remove(pick as usize % self.executing.len());
        let status = [0, 0, 0, 0, 0x02, 0x08, 0x18, 0x28][status as usize % 8];
        let sense = if status == 0x02 {
            vec![0x70; (sense_len % 64) as usize]
        } else {
            Vec::new()
        };
        let data_in = vec![0xa5; data_len as usize];
        let data_out_len = match out_len {
            OutLen::Expected => task.expected_len,
            OutLen::DataLen => u32::from(data_len),
            OutLen::Raw(n) => u32::from(*n),
        };
        let expect_in = if task.read {
            data_in.len().min(task.expected_len as usize)
        } else {
            0
        };
        self.completing = Some((task.clone(), expect_in));
        self.data_in = DataInTrack::default();
        let was_closed = self.close_seen;
        self.c.complete_task(
            task.id,
            TaskOutcome {
                status,
                sense,
                data_in,
                data_out_len,
            },
        );
        // Data-In and the response are queued now; check them while the task is known.
        self.drain();
        if !was_closed && self.data_in.status_seen {
            assert_eq!(
                self.data_in.next_offset as usize, expect_in,
                "Data-In does not add up to the data returned"
            );
        }
        self.completing = None;
    }

    fn run(&mut self, op: &Op) {
        if trace() {
            eprintln!("-> {op:?}");
        }
        match op {
            Op::Pdu {
                bhs,
                ahs,
                data,
                set_sn,
                sn,
            } => {
                let mut b = *bhs;
                if *set_sn {
                    b[24..28].copy_from_slice(&self.sn(*sn).to_be_bytes());
                }
                let immediate = b[0] & 0x40 != 0;
                let carries_sn = matches!(
                    Opcode(b[0] & 0x3f),
                    Opcode::NOP_OUT
                        | Opcode::SCSI_COMMAND
                        | Opcode::TASK_MGMT_REQUEST
                        | Opcode::TEXT_REQUEST
                        | Opcode::LOGOUT_REQUEST
                );
                self.send(b, ahs.bytes(), data.bytes());
                if *set_sn && carries_sn {
                    self.sent_sn(*sn, immediate);
                }
            }
            Op::Command {
                itt,
                lun,
                cdb0,
                read,
                write,
                edtl,
                big,
                final_bit,
                immediate,
                imm,
                over,
                ext_cdb,
                sn,
            } => {
                let itt = if *itt == 0xff {
                    RESERVED_TAG
                } else {
                    u32::from(*itt)
                };
                let edtl = u32::from(*edtl) * if *big { 1024 } else { 1 };
                let mut imm = u32::from(*imm);
                if !*over {
                    imm = imm.min(edtl);
                }
                let mut cdb = [0u8; 16];
                cdb[0] = *cdb0;
                cdb[7..9].copy_from_slice(&((edtl / 512) as u16).to_be_bytes());
                let h = Header::ScsiCommand(ScsiCommand {
                    immediate: *immediate,
                    final_bit: *final_bit,
                    read: *read,
                    write: *write,
                    attr: 1,
                    lun: u64::from(*lun) << 48,
                    itt,
                    expected_len: edtl,
                    cmd_sn: self.sn(*sn),
                    exp_stat_sn: self.stat_sn.unwrap_or(0),
                    cdb,
                });
                if *write && edtl > 0 {
                    self.writes.retain(|w| w.itt != itt);
                    self.writes.push(UnsolTrack {
                        itt,
                        edtl,
                        sent: imm.min(edtl),
                        data_sn: 0,
                    });
                }
                let data: Vec<u8> = (0..imm).map(|i| i as u8).collect();
                self.send(h.emit(), ext_cdb.bytes(), data);
                self.sent_sn(*sn, *immediate);
            }
            Op::DataOut {
                pick,
                len,
                final_bit,
                skew,
            } => self.data_out(*pick, *len, *final_bit, *skew),
            Op::Text {
                itt,
                cont,
                follow,
                data,
                immediate,
                sn,
            } => {
                let (itt, ttt) = match (follow, self.text_ttt) {
                    (true, Some((itt, ttt))) => (itt, ttt),
                    _ => (u32::from(*itt), RESERVED_TAG),
                };
                let h = Header::TextRequest(TextRequest {
                    immediate: *immediate,
                    final_bit: !*cont,
                    cont: *cont,
                    lun: 0,
                    itt,
                    ttt,
                    cmd_sn: self.sn(*sn),
                    exp_stat_sn: self.stat_sn.unwrap_or(0),
                });
                let data = if *follow { Vec::new() } else { data.bytes() };
                self.send_header(h, data);
                self.sent_sn(*sn, *immediate);
            }
            Op::Nop {
                itt,
                answer_ping,
                data,
                immediate,
                sn,
            } => {
                let (itt, ttt) = match (answer_ping, self.ping_ttt) {
                    (true, Some(ttt)) => (RESERVED_TAG, ttt),
                    _ => (u32::from(*itt), RESERVED_TAG),
                };
                // RFC 7143 §11.18: a NOP-Out with the reserved ITT is immediate.
                let immediate = *immediate || itt == RESERVED_TAG;
                let h = Header::NopOut(NopOut {
                    immediate,
                    lun: 0,
                    itt,
                    ttt,
                    cmd_sn: self.sn(*sn),
                    exp_stat_sn: self.stat_sn.unwrap_or(0),
                });
                let data = if itt == RESERVED_TAG {
                    Vec::new()
                } else {
                    data.bytes()
                };
                self.send_header(h, data);
                self.sent_sn(*sn, immediate);
            }
            Op::Tmf {
                function,
                itt,
                ref_itt,
                lun,
                ref_sn,
                immediate,
                sn,
            } => {
                let cmd_sn = self.sn(*sn);
                let h = Header::TaskMgmtRequest(TaskMgmtRequest {
                    immediate: *immediate,
                    function: function % 10,
                    lun: u64::from(*lun) << 48,
                    itt: 0x1000 | u32::from(*itt),
                    referenced_tag: u32::from(*ref_itt),
                    cmd_sn,
                    exp_stat_sn: self.stat_sn.unwrap_or(0),
                    ref_cmd_sn: cmd_sn.wrapping_sub(u32::from(*ref_sn)),
                    exp_data_sn: 0,
                });
                self.send_header(h, Vec::new());
                self.sent_sn(*sn, *immediate);
            }
            Op::Logout {
                itt,
                reason,
                immediate,
                sn,
            } => {
                let h = Header::LogoutRequest(LogoutRequest {
                    immediate: *immediate,
                    reason: iscsi_wire::LogoutReason(reason % 4),
                    itt: 0x2000 | u32::from(*itt),
                    cid: 0,
                    cmd_sn: self.sn(*sn),
                    exp_stat_sn: self.stat_sn.unwrap_or(0),
                });
                self.send_header(h, Vec::new());
                self.sent_sn(*sn, *immediate);
            }
            Op::LoginOk => {
                if let Some(r) = self.pending_login.take() {
                    self.accept(r);
                }
            }
            Op::Complete {
                pick,
                status,
                data_len,
                sense_len,
                out_len,
            } => self.complete(*pick, *status, *data_len, *sense_len, out_len),
            Op::Tick(secs) => {
                self.now += Duration::from_secs(u64::from(*secs));
                self.c.handle_timeout(self.now);
            }
            Op::ToDeadline => {
                if let Some(t) = self.c.poll_timeout() {
                    self.now = self.now.max(t);
                    self.c.handle_timeout(self.now);
                }
            }
            Op::DigestError(op) => {
                let mut bhs = [0u8; BHS_LEN];
                bhs[0] = *op;
                bhs[1] = 0x80;
                bhs[16..20].copy_from_slice(&0x3000u32.to_be_bytes());
                self.c.handle_digest_error(&bhs);
            }
        }
    }

    fn data_out(&mut self, pick: u8, len: u16, final_bit: bool, skew: u8) {
        // A Data-Out carries at most what the target accepts per PDU (the decoder enforces
        // it); `len` 0 means "the rest, up to that".
        let max = self.c.params().map_or(8192, |p| p.target_mrdsl).min(65536);
        let len = match u32::from(len) {
            0 => max,
            n => n.min(max),
        };
        let (mut h, mut n) = if !self.r2ts.is_empty() {
            let i = pick as usize % self.r2ts.len();
            let r = &mut self.r2ts[i];
            let n = len.min(r.len - r.sent);
            let h = DataOut {
                final_bit: final_bit || r.sent + n == r.len,
                lun: 0,
                itt: r.itt,
                ttt: r.ttt,
                exp_stat_sn: 0,
                data_sn: r.data_sn,
                buffer_offset: r.offset + r.sent,
            };
            r.sent += n;
            r.data_sn += 1;
            if r.sent == r.len {
                self.r2ts.remove(i);
            }
            (h, n)
        } else if !self.writes.is_empty() {
            let i = pick as usize % self.writes.len();
            let w = &mut self.writes[i];
            let n = len.min(w.edtl - w.sent);
            let h = DataOut {
                final_bit: final_bit || w.sent + n == w.edtl,
                lun: 0,
                itt: w.itt,
                ttt: RESERVED_TAG,
                exp_stat_sn: 0,
                data_sn: w.data_sn,
                buffer_offset: w.sent,
            };
            w.sent += n;
            w.data_sn += 1;
            if h.final_bit {
                self.writes.remove(i);
            }
            (h, n)
        } else {
            return;
        };
        if skew >= 240 {
            match skew % 4 {
                0 => h.data_sn = h.data_sn.wrapping_add(1),
                1 => h.buffer_offset = h.buffer_offset.wrapping_add(4),
                2 => h.ttt ^= 1,
                _ => n += 1,
            }
        }
        h.exp_stat_sn = self.stat_sn.unwrap_or(0);
        let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
        self.send_header(Header::DataOut(h), data);
    }
}

fuzz_target!(|input: Input| {
    let s = &input.start;
    let now = Instant::now();
    let mut d = Driver {
        c: Connection::new(ConnConfig::default(), now, s.initial_stat_sn),
        dir: directory(),
        now,
        defer_accept: s.defer_accept,
        pending_login: None,
        logged_in: false,
        kind: None,
        max_recv: 8192,
        close_seen: false,
        next_sn: s.cmd_sn,
        stat_sn: Some(s.initial_stat_sn),
        exp_cmd_sn: None,
        executing: Vec::new(),
        r2ts: Vec::new(),
        writes: Vec::new(),
        ping_ttt: None,
        text_ttt: None,
        completing: None,
        data_in: DataInTrack::default(),
        tmf_owed: 0,
    };
    if s.mode < 224 {
        d.login(s);
        d.drain();
    }
    for op in input.ops.iter().take(MAX_OPS) {
        d.run(op);
        d.drain();
    }
});
