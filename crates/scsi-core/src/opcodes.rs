//! The opcode table: the single source for dispatch, CDB validation and REPORT SUPPORTED
//! OPERATION CODES (answered here, from the table).
//!
//! Each entry carries the CDB usage data of SPC-4 §6.35.3: byte 0 is the operation code, byte 1
//! holds the service action (for commands that have one) in its low five bits, and every other
//! byte has a bit set for each CDB bit the device server looks at. A bit that is clear there and
//! set in a received CDB is refused with INVALID FIELD IN CDB pointing at it, so unsupported
//! options (RDPROTECT/WRPROTECT without protection information, obsolete PBDATA/LBDATA,
//! INQUIRY CMDDT, third-party RESERVE, ...) are rejected in one place. The last byte (CONTROL)
//! is reported as 07h; of it only NACA is checked (SAM-5 §5.2: NACA = 1 without NormACA support
//! is an invalid field).

use crate::alua::Allowed;
use crate::cdb::{bad_cdb, clip, CmdResult};
use crate::cmd::Cmd;
use crate::lu::LogicalUnit;
use crate::pr::Class;
use crate::{format, log, media, mode, reservations, sanitize, sbc, spc, tpgs, xcopy};

/// A handler that needs a configured logical unit.
pub type LuHandler = fn(&Cmd, &LogicalUnit) -> CmdResult;
/// A handler that also answers for LUNs that do not exist (INQUIRY, REPORT LUNS, REQUEST SENSE).
pub type TargetHandler = fn(&Cmd) -> CmdResult;

#[derive(Clone, Copy)]
pub enum Handler {
    Lu(LuHandler),
    Target(TargetHandler),
}

/// Entry flags.
pub mod flag {
    /// SPC-4 §5.14: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor (except REQUEST
    /// SENSE) clear unit attentions, and they work on LUNs that do not exist.
    pub const UA_EXEMPT: u8 = 1 << 0;
    /// SPC-2 §5.5.1: allowed from an I_T nexus that does not hold the RESERVE(6)/(10)
    /// reservation.
    pub const RESV_OK: u8 = 1 << 1;
    /// Only offered on thin-provisioned LUs (LBPME = 1); elsewhere it is an invalid opcode.
    pub const THIN: u8 = 1 << 2;
    /// Allowed through a target port in the ALUA standby state (SPC-4 §5.16.2.4.4).
    pub const SB: u8 = 1 << 3;
    /// Allowed through a target port in the unavailable (SPC-4 §5.16.2.4.5) or offline
    /// (§5.16.2.4.6) state.
    pub const UN: u8 = 1 << 4;
    /// Allowed through a target port group that is transitioning (SPC-4 §5.16.2.5).
    pub const TR: u8 = 1 << 5;
    /// Allowed in every ALUA access state.
    pub const ALUA_ANY: u8 = SB | UN | TR;
    /// Only offered on LUs whose backstore encrypts every block (SBC-4 §4.11.4: crypto erase
    /// needs a key to change); elsewhere it is an invalid service action.
    pub const CRYPT: u8 = 1 << 6;
}

pub struct OpDesc {
    pub opcode: u8,
    /// Service action (byte 1, bits 4..0) for opcodes that have them.
    pub sa: Option<u8>,
    pub name: &'static str,
    /// CDB usage data; its length is the CDB length.
    pub usage: &'static [u8],
    pub handler: Handler,
    pub flags: u8,
    /// Persistent reservation conflict class (SPC-4 §5.13.1 and SBC-4 tables of commands
    /// allowed in the presence of various reservations): what the command may do while another
    /// I_T nexus holds a persistent reservation.
    /// Entries that do not name one are `Write` (refused unless registered with a Registrants
    /// Only / All Registrants reservation), the safe side for anything that can change data.
    pub pr: Class,
}

impl OpDesc {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Whether the command is offered on this logical unit.
    pub fn available(&self, lu: &LogicalUnit) -> bool {
        (!self.has(flag::THIN) || lu.thin()) && (!self.has(flag::CRYPT) || lu.encrypted())
    }

    /// The ALUA access states other than the active ones that allow this command.
    pub fn alua_allowed(&self) -> Allowed {
        Allowed {
            standby: self.has(flag::SB),
            unavailable: self.has(flag::UN),
            transitioning: self.has(flag::TR),
        }
    }

    /// The bits of CDB byte `i` a received CDB may have set.
    pub fn accepted_bits(&self, i: usize) -> u8 {
        let u = self.usage.get(i).copied().unwrap_or(0);
        if i == 1 && self.sa.is_some() {
            (u & 0xE0) | 0x1F
        } else {
            u
        }
    }
}

/// Control byte usage as reported.
const C: u8 = 0x07;

use flag::*;
use Handler::{Lu, Target};

macro_rules! op {
    ($op:expr, $sa:expr, $name:expr, [$($u:expr),* $(,)?], $h:expr, $flags:expr) => {
        op!($op, $sa, $name, [$($u),*], $h, $flags, Class::Write)
    };
    ($op:expr, $sa:expr, $name:expr, [$($u:expr),* $(,)?], $h:expr, $flags:expr, $pr:expr) => {
        OpDesc { opcode: $op, sa: $sa, name: $name, usage: &[$($u),*], handler: $h, flags: $flags, pr: $pr }
    };
}

/// Every command the device server implements, sorted by (opcode, service action).
#[rustfmt::skip]
pub static TABLE: &[OpDesc] = &[
    op!(0x00, None, "TEST UNIT READY", [0x00, 0, 0, 0, 0, C], Lu(spc::test_unit_ready), 0, Class::Allowed),
    op!(0x03, None, "REQUEST SENSE", [0x03, 0x01, 0, 0, 0xFF, C], Target(spc::request_sense), UA_EXEMPT | RESV_OK | ALUA_ANY, Class::Allowed),
    op!(0x04, None, "FORMAT UNIT", [0x04, 0xFF, 0, 0, 0, C], Lu(format::format_unit), 0),
    op!(0x08, None, "READ(6)", [0x08, 0x1F, 0xFF, 0xFF, 0xFF, C], Lu(sbc::read), 0, Class::Read),
    op!(0x0A, None, "WRITE(6)", [0x0A, 0x1F, 0xFF, 0xFF, 0xFF, C], Lu(sbc::write), 0),
    op!(0x12, None, "INQUIRY", [0x12, 0x01, 0xFF, 0xFF, 0xFF, C], Target(spc::inquiry), UA_EXEMPT | RESV_OK | ALUA_ANY, Class::Allowed),
    op!(0x15, None, "MODE SELECT(6)", [0x15, 0x11, 0, 0, 0xFF, C], Lu(|c, l| mode::mode_select(c, l, false)), SB),
    op!(0x16, None, "RESERVE(6)", [0x16, 0, 0, 0, 0, C], Lu(spc::reserve), 0, Class::Own),
    op!(0x17, None, "RELEASE(6)", [0x17, 0, 0, 0, 0, C], Lu(spc::release), RESV_OK, Class::Own),
    op!(0x1A, None, "MODE SENSE(6)", [0x1A, 0x08, 0xFF, 0xFF, 0xFF, C], Lu(|c, l| mode::mode_sense(c, l, false)), SB, Class::Read),
    op!(0x1B, None, "START STOP UNIT", [0x1B, 0x01, 0, 0x0F, 0xF7, C], Lu(media::start_stop_unit), 0, Class::StartStop),
    op!(0x1C, None, "RECEIVE DIAGNOSTIC RESULTS", [0x1C, 0x01, 0xFF, 0xFF, 0xFF, C], Lu(spc::receive_diagnostic_results), SB),
    op!(0x1D, None, "SEND DIAGNOSTIC", [0x1D, 0xF7, 0, 0xFF, 0xFF, C], Lu(spc::send_diagnostic), SB),
    op!(0x1E, None, "PREVENT ALLOW MEDIUM REMOVAL", [0x1E, 0, 0, 0, 0x03, C], Lu(media::prevent_allow), RESV_OK, Class::PreventAllow),
    op!(0x25, None, "READ CAPACITY(10)", [0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, C], Lu(sbc::read_capacity10), SB, Class::Allowed),
    op!(0x28, None, "READ(10)", [0x28, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::read), 0, Class::Read),
    op!(0x2A, None, "WRITE(10)", [0x2A, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::write), 0),
    op!(0x2E, None, "WRITE AND VERIFY(10)", [0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::write_and_verify), 0),
    op!(0x2F, None, "VERIFY(10)", [0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::verify), 0, Class::Read),
    op!(0x34, None, "PRE-FETCH(10)", [0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::pre_fetch), 0, Class::Read),
    op!(0x35, None, "SYNCHRONIZE CACHE(10)", [0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::synchronize_cache), 0),
    op!(0x37, None, "READ DEFECT DATA(10)", [0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(sbc::read_defect_data), 0, Class::Read),
    op!(0x41, None, "WRITE SAME(10)", [0x41, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, C], Lu(sbc::write_same), 0),
    op!(0x42, None, "UNMAP", [0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, C], Lu(sbc::unmap), THIN),
    op!(0x48, Some(0x01), "SANITIZE OVERWRITE", [0x48, 0xA1, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(sanitize::sanitize), 0),
    op!(0x48, Some(0x02), "SANITIZE BLOCK ERASE", [0x48, 0xA2, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(sanitize::sanitize), THIN),
    op!(0x48, Some(0x03), "SANITIZE CRYPTO ERASE", [0x48, 0xA3, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(sanitize::sanitize), CRYPT),
    op!(0x48, Some(0x1F), "SANITIZE EXIT FAILURE MODE", [0x48, 0xBF, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(sanitize::sanitize), 0),
    op!(0x4D, None, "LOG SENSE", [0x4D, 0, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(log::log_sense), SB, Class::Allowed),
    op!(0x55, None, "MODE SELECT(10)", [0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(|c, l| mode::mode_select(c, l, true)), SB),
    op!(0x56, None, "RESERVE(10)", [0x56, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(spc::reserve), 0, Class::Own),
    op!(0x57, None, "RELEASE(10)", [0x57, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(spc::release), RESV_OK, Class::Own),
    op!(0x5A, None, "MODE SENSE(10)", [0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, C], Lu(|c, l| mode::mode_sense(c, l, true)), SB, Class::Read),
    op!(0x5E, Some(0x00), "PERSISTENT RESERVE IN (READ KEYS)", [0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_in), SB, Class::Allowed),
    op!(0x5E, Some(0x01), "PERSISTENT RESERVE IN (READ RESERVATION)", [0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_in), SB, Class::Allowed),
    op!(0x5E, Some(0x02), "PERSISTENT RESERVE IN (REPORT CAPABILITIES)", [0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_in), SB, Class::Allowed),
    op!(0x5E, Some(0x03), "PERSISTENT RESERVE IN (READ FULL STATUS)", [0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_in), SB, Class::Allowed),
    op!(0x5F, Some(0x00), "PERSISTENT RESERVE OUT (REGISTER)", [0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x01), "PERSISTENT RESERVE OUT (RESERVE)", [0x5F, 0x01, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x02), "PERSISTENT RESERVE OUT (RELEASE)", [0x5F, 0x02, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x03), "PERSISTENT RESERVE OUT (CLEAR)", [0x5F, 0x03, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x04), "PERSISTENT RESERVE OUT (PREEMPT)", [0x5F, 0x04, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x05), "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)", [0x5F, 0x05, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x06), "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)", [0x5F, 0x06, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x5F, Some(0x07), "PERSISTENT RESERVE OUT (REGISTER AND MOVE)", [0x5F, 0x07, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], Lu(reservations::persistent_reserve_out), SB, Class::Own),
    op!(0x83, Some(0x00), "EXTENDED COPY(LID1)", [0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(xcopy::extended_copy), 0),
    op!(0x84, Some(0x00), "RECEIVE COPY RESULTS (COPY STATUS)", [0x84, 0x00, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(xcopy::receive_copy_results), 0),
    op!(0x84, Some(0x03), "RECEIVE COPY RESULTS (OPERATING PARAMETERS)", [0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(xcopy::receive_copy_results), 0),
    op!(0x88, None, "READ(16)", [0x88, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::read), 0, Class::Read),
    op!(0x89, None, "COMPARE AND WRITE", [0x89, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, C], Lu(sbc::compare_and_write), 0),
    op!(0x8A, None, "WRITE(16)", [0x8A, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::write), 0),
    op!(0x8B, None, "ORWRITE(16)", [0x8B, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::orwrite), 0),
    op!(0x8E, None, "WRITE AND VERIFY(16)", [0x8E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::write_and_verify), 0),
    op!(0x8F, None, "VERIFY(16)", [0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::verify), 0, Class::Read),
    op!(0x90, None, "PRE-FETCH(16)", [0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::pre_fetch), 0, Class::Read),
    op!(0x91, None, "SYNCHRONIZE CACHE(16)", [0x91, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::synchronize_cache), 0),
    op!(0x93, None, "WRITE SAME(16)", [0x93, 0x19, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::write_same), 0),
    op!(0x9C, None, "WRITE ATOMIC(16)", [0x9C, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::write_atomic), 0),
    op!(0x9E, Some(0x10), "READ CAPACITY(16)", [0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, C], Lu(sbc::read_capacity16), SB, Class::Allowed),
    op!(0x9E, Some(0x12), "GET LBA STATUS", [0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x03, C], Lu(sbc::get_lba_status), 0, Class::Read),
    op!(0xA0, None, "REPORT LUNS", [0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Target(spc::report_luns), UA_EXEMPT | RESV_OK | ALUA_ANY, Class::Allowed),
    op!(0xA3, Some(0x0A), "REPORT TARGET PORT GROUPS", [0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(tpgs::report_target_port_groups), RESV_OK | ALUA_ANY, Class::Allowed),
    op!(0xA3, Some(0x0C), "REPORT SUPPORTED OPERATION CODES", [0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(report_supported_opcodes), RESV_OK, Class::Read),
    op!(0xA3, Some(0x0D), "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", [0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(spc::report_supported_tmfs), RESV_OK, Class::Read),
    op!(0xA4, Some(0x0A), "SET TARGET PORT GROUPS", [0xA4, 0x0A, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(tpgs::set_target_port_groups), SB | UN),
    op!(0xA8, None, "READ(12)", [0xA8, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::read), 0, Class::Read),
    op!(0xAA, None, "WRITE(12)", [0xAA, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::write), 0),
    op!(0xAE, None, "WRITE AND VERIFY(12)", [0xAE, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::write_and_verify), 0),
    op!(0xAF, None, "VERIFY(12)", [0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C], Lu(sbc::verify), 0, Class::Read),
    op!(0xB7, None, "READ DEFECT DATA(12)", [0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], Lu(sbc::read_defect_data), 0, Class::Read),
];

/// Result of looking a CDB up in the table.
pub enum Lookup {
    Found(&'static OpDesc),
    /// No command with this operation code.
    UnknownOpcode,
    /// The operation code takes service actions, but not this one.
    UnknownServiceAction,
}

/// Whether `opcode` is one that carries a service action in byte 1.
pub fn has_service_actions(opcode: u8) -> bool {
    TABLE.iter().any(|d| d.opcode == opcode && d.sa.is_some())
}

/// Find the entry for a CDB starting with `opcode` whose byte 1 is `byte1`.
pub fn lookup(opcode: u8, byte1: u8) -> Lookup {
    let mut seen = false;
    for d in TABLE.iter().filter(|d| d.opcode == opcode) {
        seen = true;
        match d.sa {
            None => return Lookup::Found(d),
            Some(sa) if sa == byte1 & 0x1F => return Lookup::Found(d),
            Some(_) => {}
        }
    }
    if seen {
        Lookup::UnknownServiceAction
    } else {
        Lookup::UnknownOpcode
    }
}

/// Find the entry for (opcode, service action) as REPORT SUPPORTED OPERATION CODES asks.
pub fn find(opcode: u8, sa: Option<u16>) -> Option<&'static OpDesc> {
    TABLE
        .iter()
        .find(|d| d.opcode == opcode && d.sa.map(u16::from) == sa)
}

/// Command timeouts descriptor (SPC-4 §6.35.4): we state no nominal time and recommend 30 s.
fn timeouts_descriptor(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x00, 0x0A, 0x00, 0x00]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&30u32.to_be_bytes());
}

/// One-command parameter data (SPC-4 §6.35.3).
fn one_command(desc: Option<&OpDesc>, rctd: bool) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0, 0];
    match desc {
        Some(d) => {
            out[1] = 0x03; // SUPPORT 011b: supported as the standard says
            out[2..4].copy_from_slice(&(d.cdb_len() as u16).to_be_bytes());
            out.extend_from_slice(d.usage);
            if rctd {
                out[1] |= 0x80; // CTDP
                timeouts_descriptor(&mut out);
            }
        }
        None => out[1] = 0x01, // SUPPORT 001b: not supported
    }
    out
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35), answered from the opcode table.
pub fn report_supported_opcodes(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let rctd = c.bit(2, 7);
    let options = c.u8(2) & 0x07;
    let op = c.u8(3);
    let sa = c.be16(4);
    let alloc = c.be32(6) as usize;
    let avail = |d: &'static OpDesc| if d.available(lu) { Some(d) } else { None };
    let out = match options {
        0b000 => {
            let mut list = Vec::new();
            for d in TABLE.iter().filter(|d| d.available(lu)) {
                list.push(d.opcode);
                list.push(0);
                list.extend_from_slice(&u16::from(d.sa.unwrap_or(0)).to_be_bytes());
                list.push(0);
                list.push((u8::from(rctd) << 1) | u8::from(d.sa.is_some())); // CTDP, SERVACTV
                list.extend_from_slice(&(d.cdb_len() as u16).to_be_bytes());
                if rctd {
                    timeouts_descriptor(&mut list);
                }
            }
            let mut out = (list.len() as u32).to_be_bytes().to_vec();
            out.extend(list);
            out
        }
        // 001b: by operation code; an opcode with service actions needs 010b (SPC-4 §6.35.1).
        0b001 if has_service_actions(op) => return Err(bad_cdb(2, Some(2))),
        0b001 => one_command(find(op, None).and_then(avail), rctd),
        // 010b: by operation code and service action; the opcode must have service actions.
        0b010 if !has_service_actions(op) => return Err(bad_cdb(2, Some(2))),
        0b010 => one_command(find(op, Some(sa)).and_then(avail), rctd),
        // 011b: service action used only if the opcode has them.
        0b011 => {
            let sa = if has_service_actions(op) {
                Some(sa)
            } else {
                None
            };
            one_command(find(op, sa).and_then(avail), rctd)
        }
        _ => return Err(bad_cdb(2, Some(2))),
    };
    Ok(clip(out, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for w in TABLE.windows(2) {
            let a = (w[0].opcode, w[0].sa);
            let b = (w[1].opcode, w[1].sa);
            assert!(a < b, "{} before {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn usage_data_shape() {
        for d in TABLE {
            assert_eq!(d.usage[0], d.opcode, "{}", d.name);
            // SPC-4 §4.2: the group code (top three bits) fixes the CDB length.
            let expect = match d.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(d.cdb_len(), expect, "{}", d.name);
            if let Some(sa) = d.sa {
                assert_eq!(d.usage[1] & 0x1F, sa, "{}", d.name);
            }
            assert_eq!(*d.usage.last().unwrap(), C, "{}", d.name);
        }
    }

    #[test]
    fn lookups() {
        assert!(matches!(lookup(0x28, 0), Lookup::Found(d) if d.name == "READ(10)"));
        assert!(matches!(lookup(0x9E, 0x10), Lookup::Found(d) if d.name == "READ CAPACITY(16)"));
        assert!(matches!(lookup(0x9E, 0xF2), Lookup::Found(d) if d.name == "GET LBA STATUS"));
        assert!(matches!(lookup(0x9E, 0x11), Lookup::UnknownServiceAction));
        assert!(matches!(lookup(0xFF, 0), Lookup::UnknownOpcode));
        assert!(has_service_actions(0xA3));
        assert!(!has_service_actions(0x28));
        assert!(find(0xA3, Some(0x0C)).is_some());
        assert!(find(0xA3, None).is_none());
        assert!(find(0x28, None).is_some());
    }

    #[test]
    fn accepted_bits_for_service_action_byte() {
        let Lookup::Found(d) = lookup(0x9E, 0x10) else {
            panic!()
        };
        assert_eq!(d.accepted_bits(1), 0x1F);
        let Lookup::Found(r) = lookup(0x28, 0) else {
            panic!()
        };
        assert_eq!(r.accepted_bits(1), 0x1E);
        assert_eq!(r.accepted_bits(99), 0);
    }
}
