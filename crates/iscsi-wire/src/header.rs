//! Typed Basic Header Segments (RFC 7143 §11.2-§11.18).
//!
//! [`Header::parse`] takes exactly [`BHS_LEN`] bytes, so every field read is in bounds; it checks
//! only what the wire format itself fixes (opcode known, reserved stage value). Session-level
//! rules (sequence numbers, tags) belong to `iscsi-proto`. [`Header::emit`] writes the fields
//! back; TotalAHSLength and DataSegmentLength are framing fields written by
//! [`crate::frame::encode`].

use crate::codes::*;
use crate::BHS_LEN;

fn be16(b: &[u8; BHS_LEN], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8; BHS_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8; BHS_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn put16(b: &mut [u8; BHS_LEN], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8; BHS_LEN], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8; BHS_LEN], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
/// ISID is 6 bytes (RFC 7143 §11.12.5); held in the low 48 bits of a u64.
fn isid_at(b: &[u8; BHS_LEN]) -> u64 {
    b[8..14].iter().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}
fn put_isid(b: &mut [u8; BHS_LEN], v: u64) {
    b[8..14].copy_from_slice(&v.to_be_bytes()[2..8]);
}

/// Fields common to every BHS (RFC 7143 §11.2.1), read without interpreting the opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub immediate: bool,
    pub opcode: Opcode,
    pub final_bit: bool,
    /// TotalAHSLength in 4-byte words.
    pub ahs_words: u8,
    pub data_len: u32,
    pub itt: u32,
}

impl Common {
    pub fn read(b: &[u8; BHS_LEN]) -> Common {
        Common {
            immediate: b[0] & 0x40 != 0,
            opcode: Opcode(b[0] & 0x3f),
            final_bit: b[1] & 0x80 != 0,
            ahs_words: b[4],
            data_len: u32::from_be_bytes([0, b[5], b[6], b[7]]),
            itt: be32(b, 16),
        }
    }
}

/// Why a BHS could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Opcode not defined by RFC 7143 (answer: Reject, Command Not Supported).
    UnknownOpcode(Opcode),
    /// A field holds a value the RFC reserves (answer: Reject, Protocol Error / login error).
    Reserved(&'static str),
}

/// NOP-Out (RFC 7143 §11.18).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Command (RFC 7143 §11.3).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute (RFC 7143 §11.3.1): 0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA.
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// Task Management Function Request (RFC 7143 §11.5).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (RFC 7143 §11.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: u64,
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request (RFC 7143 §11.10).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out (RFC 7143 §11.7).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout Request (RFC 7143 §11.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (RFC 7143 §11.16).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub snack_type: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (RFC 7143 §11.19).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Response (RFC 7143 §11.4).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

/// Task Management Function Response (RFC 7143 §11.6).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Response (RFC 7143 §11.13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: u64,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status: LoginStatus,
}

/// Text Response (RFC 7143 §11.11).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-In (RFC 7143 §11.7).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_bit: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit: this PDU carries the command's status.
    pub has_status: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

/// Logout Response (RFC 7143 §11.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: LogoutResponseCode,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (RFC 7143 §11.8).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// Asynchronous Message (RFC 7143 §11.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: AsyncEvent,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

/// Reject (RFC 7143 §11.17). The data segment carries the rejected BHS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// A parsed BHS of any PDU type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

impl Header {
    /// Parse a BHS. Never panics: the input is exactly 48 bytes.
    pub fn parse(b: &[u8; BHS_LEN]) -> Result<Header, HeaderError> {
        let c = Common::read(b);
        let lun = be64(b, 8);
        let f = b[1];
        Ok(match c.opcode {
            Opcode::NOP_OUT => Header::NopOut(NopOut {
                immediate: c.immediate,
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Header::ScsiCommand(ScsiCommand {
                    immediate: c.immediate,
                    final_bit: c.final_bit,
                    read: f & 0x40 != 0,
                    write: f & 0x20 != 0,
                    attr: f & 0x07,
                    lun,
                    itt: c.itt,
                    expected_len: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    cdb,
                })
            }
            Opcode::TASK_MGMT_REQUEST => Header::TaskMgmtRequest(TaskMgmtRequest {
                immediate: c.immediate,
                function: f & 0x7f,
                lun,
                itt: c.itt,
                referenced_tag: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                ref_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
            }),
            Opcode::LOGIN_REQUEST => Header::LoginRequest(LoginRequest {
                transit: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                csg: Stage::from_bits(f >> 2),
                nsg: Stage::from_bits(f),
                version_max: b[2],
                version_min: b[3],
                isid: isid_at(b),
                tsih: be16(b, 14),
                itt: c.itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::TEXT_REQUEST => Header::TextRequest(TextRequest {
                immediate: c.immediate,
                final_bit: c.final_bit,
                cont: f & 0x40 != 0,
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::DATA_OUT => Header::DataOut(DataOut {
                final_bit: c.final_bit,
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            Opcode::LOGOUT_REQUEST => Header::LogoutRequest(LogoutRequest {
                immediate: c.immediate,
                reason: LogoutReason(f & 0x7f),
                itt: c.itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::SNACK_REQUEST => Header::SnackRequest(SnackRequest {
                snack_type: f & 0x0f,
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            Opcode::NOP_IN => Header::NopIn(NopIn {
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::SCSI_RESPONSE => Header::ScsiResponse(ScsiResponse {
                bidi_overflow: f & 0x10 != 0,
                bidi_underflow: f & 0x08 != 0,
                overflow: f & 0x04 != 0,
                underflow: f & 0x02 != 0,
                response: b[2],
                status: b[3],
                itt: c.itt,
                snack_tag: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
                bidi_residual: be32(b, 40),
                residual: be32(b, 44),
            }),
            Opcode::TASK_MGMT_RESPONSE => Header::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt: c.itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::LOGIN_RESPONSE => Header::LoginResponse(LoginResponse {
                transit: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                csg: Stage::from_bits(f >> 2),
                nsg: Stage::from_bits(f),
                version_max: b[2],
                version_active: b[3],
                isid: isid_at(b),
                tsih: be16(b, 14),
                itt: c.itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                status: LoginStatus(b[36], b[37]),
            }),
            Opcode::TEXT_RESPONSE => Header::TextResponse(TextResponse {
                final_bit: c.final_bit,
                cont: f & 0x40 != 0,
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::DATA_IN => Header::DataIn(DataIn {
                final_bit: c.final_bit,
                ack: f & 0x40 != 0,
                overflow: f & 0x04 != 0,
                underflow: f & 0x02 != 0,
                has_status: f & 0x01 != 0,
                // RFC 7143 §11.7.4: Status is reserved unless S is set.
                status: if f & 0x01 != 0 { b[3] } else { 0 },
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual: be32(b, 44),
            }),
            Opcode::LOGOUT_RESPONSE => Header::LogoutResponse(LogoutResponse {
                response: LogoutResponseCode(b[2]),
                itt: c.itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            }),
            Opcode::R2T => Header::R2t(R2t {
                lun,
                itt: c.itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                r2t_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_len: be32(b, 44),
            }),
            Opcode::ASYNC_MESSAGE => Header::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                event: AsyncEvent(b[36]),
                vcode: b[37],
                param1: be16(b, 38),
                param2: be16(b, 40),
                param3: be16(b, 42),
            }),
            Opcode::REJECT => Header::Reject(Reject {
                reason: RejectReason(b[2]),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
            }),
            other => return Err(HeaderError::UnknownOpcode(other)),
        })
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Header::NopOut(_) => Opcode::NOP_OUT,
            Header::ScsiCommand(_) => Opcode::SCSI_COMMAND,
            Header::TaskMgmtRequest(_) => Opcode::TASK_MGMT_REQUEST,
            Header::LoginRequest(_) => Opcode::LOGIN_REQUEST,
            Header::TextRequest(_) => Opcode::TEXT_REQUEST,
            Header::DataOut(_) => Opcode::DATA_OUT,
            Header::LogoutRequest(_) => Opcode::LOGOUT_REQUEST,
            Header::SnackRequest(_) => Opcode::SNACK_REQUEST,
            Header::NopIn(_) => Opcode::NOP_IN,
            Header::ScsiResponse(_) => Opcode::SCSI_RESPONSE,
            Header::TaskMgmtResponse(_) => Opcode::TASK_MGMT_RESPONSE,
            Header::LoginResponse(_) => Opcode::LOGIN_RESPONSE,
            Header::TextResponse(_) => Opcode::TEXT_RESPONSE,
            Header::DataIn(_) => Opcode::DATA_IN,
            Header::LogoutResponse(_) => Opcode::LOGOUT_RESPONSE,
            Header::R2t(_) => Opcode::R2T,
            Header::AsyncMessage(_) => Opcode::ASYNC_MESSAGE,
            Header::Reject(_) => Opcode::REJECT,
        }
    }

    /// Write the BHS. Length fields (bytes 4-7) are left zero for the framer to fill.
    pub fn emit(&self) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b[0] = self.opcode().0;
        let imm = |b: &mut [u8; BHS_LEN], i: bool| {
            if i {
                b[0] |= 0x40
            }
        };
        let fl = |x: bool, bit: u8| if x { bit } else { 0 };
        match self {
            Header::NopOut(h) => {
                imm(&mut b, h.immediate);
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::ScsiCommand(h) => {
                imm(&mut b, h.immediate);
                b[1] = fl(h.final_bit, 0x80) | fl(h.read, 0x40) | fl(h.write, 0x20) | (h.attr & 7);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.expected_len);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
                b[32..48].copy_from_slice(&h.cdb);
            }
            Header::TaskMgmtRequest(h) => {
                imm(&mut b, h.immediate);
                b[1] = 0x80 | (h.function & 0x7f);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.referenced_tag);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 32, h.ref_cmd_sn);
                put32(&mut b, 36, h.exp_data_sn);
            }
            Header::LoginRequest(h) => {
                b[0] |= 0x40; // RFC 7143 §11.12: the I bit is always 1 on Login Requests.
                b[1] = fl(h.transit, 0x80) | fl(h.cont, 0x40) | (h.csg as u8) << 2 | h.nsg as u8;
                b[2] = h.version_max;
                b[3] = h.version_min;
                put_isid(&mut b, h.isid);
                put16(&mut b, 14, h.tsih);
                put32(&mut b, 16, h.itt);
                put16(&mut b, 20, h.cid);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::TextRequest(h) => {
                imm(&mut b, h.immediate);
                b[1] = fl(h.final_bit, 0x80) | fl(h.cont, 0x40);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::DataOut(h) => {
                b[1] = fl(h.final_bit, 0x80);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 36, h.data_sn);
                put32(&mut b, 40, h.buffer_offset);
            }
            Header::LogoutRequest(h) => {
                imm(&mut b, h.immediate);
                b[1] = 0x80 | (h.reason.0 & 0x7f);
                put32(&mut b, 16, h.itt);
                put16(&mut b, 20, h.cid);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::SnackRequest(h) => {
                b[1] = 0x80 | (h.snack_type & 0x0f);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 40, h.beg_run);
                put32(&mut b, 44, h.run_length);
            }
            Header::NopIn(h) => {
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::ScsiResponse(h) => {
                b[1] = 0x80
                    | fl(h.bidi_overflow, 0x10)
                    | fl(h.bidi_underflow, 0x08)
                    | fl(h.overflow, 0x04)
                    | fl(h.underflow, 0x02);
                b[2] = h.response;
                b[3] = h.status;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.snack_tag);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.exp_data_sn);
                put32(&mut b, 40, h.bidi_residual);
                put32(&mut b, 44, h.residual);
            }
            Header::TaskMgmtResponse(h) => {
                b[1] = 0x80;
                b[2] = h.response;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::LoginResponse(h) => {
                b[1] = fl(h.transit, 0x80) | fl(h.cont, 0x40) | (h.csg as u8) << 2 | h.nsg as u8;
                b[2] = h.version_max;
                b[3] = h.version_active;
                put_isid(&mut b, h.isid);
                put16(&mut b, 14, h.tsih);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                b[36] = h.status.0;
                b[37] = h.status.1;
            }
            Header::TextResponse(h) => {
                b[1] = fl(h.final_bit, 0x80) | fl(h.cont, 0x40);
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::DataIn(h) => {
                b[1] = fl(h.final_bit, 0x80)
                    | fl(h.ack, 0x40)
                    | fl(h.overflow, 0x04)
                    | fl(h.underflow, 0x02)
                    | fl(h.has_status, 0x01);
                b[3] = if h.has_status { h.status } else { 0 };
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.data_sn);
                put32(&mut b, 40, h.buffer_offset);
                put32(&mut b, 44, h.residual);
            }
            Header::LogoutResponse(h) => {
                b[1] = 0x80;
                b[2] = h.response.0;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put16(&mut b, 40, h.time2wait);
                put16(&mut b, 42, h.time2retain);
            }
            Header::R2t(h) => {
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.r2t_sn);
                put32(&mut b, 40, h.buffer_offset);
                put32(&mut b, 44, h.desired_len);
            }
            Header::AsyncMessage(h) => {
                b[1] = 0x80;
                put64(&mut b, 8, h.lun);
                put32(&mut b, 16, crate::RESERVED_TAG);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                b[36] = h.event.0;
                b[37] = h.vcode;
                put16(&mut b, 38, h.param1);
                put16(&mut b, 40, h.param2);
                put16(&mut b, 42, h.param3);
            }
            Header::Reject(h) => {
                b[1] = 0x80;
                b[2] = h.reason.0;
                put32(&mut b, 16, crate::RESERVED_TAG);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.data_sn);
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SCSI Command BHS as open-iscsi sends a READ(10) of 8 blocks at LBA 0x1234.
    const READ10: [u8; 48] = [
        0x01, 0xc1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // op, F|R|simple, AHS 0, DSL 0
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN 1
        0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x10, 0x00, // ITT 0x2a, EDTL 4096
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x03, // CmdSN 7, ExpStatSN 3
        0x28, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ];

    #[test]
    fn scsi_command_vector() {
        let h = Header::parse(&READ10).unwrap();
        let Header::ScsiCommand(c) = &h else {
            panic!("{h:?}")
        };
        assert!(c.final_bit && c.read && !c.write && !c.immediate);
        assert_eq!(c.attr, 1);
        assert_eq!(c.lun, 0x0001_0000_0000_0000);
        assert_eq!(
            (c.itt, c.expected_len, c.cmd_sn, c.exp_stat_sn),
            (0x2a, 4096, 7, 3)
        );
        assert_eq!(&c.cdb[..10], &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        assert_eq!(h.emit(), READ10);
    }

    #[test]
    fn login_request_vector() {
        let mut b = [0u8; 48];
        b[0] = 0x43;
        b[1] = 0x87; // T, CSG=1, NSG=3
        b[8..14].copy_from_slice(&[0x40, 0x00, 0x01, 0x37, 0x00, 0x00]);
        b[14..16].copy_from_slice(&[0, 0]);
        b[16..20].copy_from_slice(&[0, 0, 0, 1]);
        b[20..22].copy_from_slice(&[0, 2]);
        let h = Header::parse(&b).unwrap();
        let Header::LoginRequest(l) = &h else {
            panic!()
        };
        assert!(l.transit && !l.cont);
        assert_eq!((l.csg, l.nsg), (Stage::Operational, Stage::FullFeature));
        assert_eq!(l.isid, 0x4000_0137_0000);
        assert_eq!((l.itt, l.cid), (1, 2));
        assert_eq!(h.emit(), b);
    }

    #[test]
    fn unknown_opcode_is_error_not_panic() {
        let mut b = [0u8; 48];
        b[0] = 0x1c;
        assert_eq!(
            Header::parse(&b),
            Err(HeaderError::UnknownOpcode(Opcode(0x1c)))
        );
    }

    #[test]
    fn every_type_round_trips() {
        // Emit a header of every type with distinctive values, parse it back, compare.
        let hs = vec![
            Header::NopOut(NopOut {
                immediate: true,
                lun: 5,
                itt: 1,
                ttt: 2,
                cmd_sn: 3,
                exp_stat_sn: 4,
            }),
            Header::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: 1,
                lun: 9,
                itt: 1,
                referenced_tag: 2,
                cmd_sn: 3,
                exp_stat_sn: 4,
                ref_cmd_sn: 5,
                exp_data_sn: 6,
            }),
            Header::TextRequest(TextRequest {
                immediate: false,
                final_bit: true,
                cont: false,
                lun: 0,
                itt: 9,
                ttt: RESERVED,
                cmd_sn: 1,
                exp_stat_sn: 2,
            }),
            Header::DataOut(DataOut {
                final_bit: true,
                lun: 1,
                itt: 2,
                ttt: 3,
                exp_stat_sn: 4,
                data_sn: 5,
                buffer_offset: 6,
            }),
            Header::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: LogoutReason::CLOSE_CONNECTION,
                itt: 1,
                cid: 2,
                cmd_sn: 3,
                exp_stat_sn: 4,
            }),
            Header::SnackRequest(SnackRequest {
                snack_type: 1,
                lun: 2,
                itt: 3,
                ttt: 4,
                exp_stat_sn: 5,
                beg_run: 6,
                run_length: 7,
            }),
            Header::NopIn(NopIn {
                lun: 1,
                itt: 2,
                ttt: 3,
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
            }),
            Header::ScsiResponse(ScsiResponse {
                bidi_overflow: true,
                bidi_underflow: false,
                overflow: false,
                underflow: true,
                response: 0,
                status: 2,
                itt: 1,
                snack_tag: 0,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
                exp_data_sn: 6,
                bidi_residual: 7,
                residual: 8,
            }),
            Header::TaskMgmtResponse(TaskMgmtResponse {
                response: 1,
                itt: 2,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
            }),
            Header::LoginResponse(LoginResponse {
                transit: true,
                cont: false,
                csg: Stage::Security,
                nsg: Stage::Operational,
                version_max: 0,
                version_active: 0,
                isid: 0x8000_0000_0001,
                tsih: 7,
                itt: 1,
                stat_sn: 2,
                exp_cmd_sn: 3,
                max_cmd_sn: 4,
                status: LoginStatus::NOT_FOUND,
            }),
            Header::TextResponse(TextResponse {
                final_bit: false,
                cont: true,
                lun: 0,
                itt: 1,
                ttt: 2,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
            }),
            Header::DataIn(DataIn {
                final_bit: true,
                ack: false,
                overflow: false,
                underflow: true,
                has_status: true,
                status: 0,
                lun: 1,
                itt: 2,
                ttt: RESERVED,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
                data_sn: 6,
                buffer_offset: 7,
                residual: 8,
            }),
            Header::LogoutResponse(LogoutResponse {
                response: LogoutResponseCode::CLOSED,
                itt: 1,
                stat_sn: 2,
                exp_cmd_sn: 3,
                max_cmd_sn: 4,
                time2wait: 2,
                time2retain: 20,
            }),
            Header::R2t(R2t {
                lun: 1,
                itt: 2,
                ttt: 3,
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
                r2t_sn: 7,
                buffer_offset: 8,
                desired_len: 9,
            }),
            Header::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                event: AsyncEvent::LOGOUT_REQUEST,
                vcode: 0,
                param1: 0,
                param2: 2,
                param3: 20,
            }),
            Header::Reject(Reject {
                reason: RejectReason::PROTOCOL_ERROR,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn: 0,
            }),
        ];
        for h in hs {
            let b = h.emit();
            assert_eq!(Header::parse(&b).unwrap(), h, "{:?}", h.opcode());
        }
    }

    const RESERVED: u32 = crate::RESERVED_TAG;

    #[test]
    fn parse_never_panics_on_any_first_bytes() {
        let mut b = [0xffu8; 48];
        for op in 0..=255u8 {
            b[0] = op;
            for f in [0u8, 0xff, 0x8f] {
                b[1] = f;
                let _ = Header::parse(&b);
            }
        }
    }
}
