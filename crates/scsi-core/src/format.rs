//! FORMAT UNIT (SBC-4 §5.4).
//!
//! A Ferrite LU has no defects to manage and no protection information, so a format
//! initializes the medium: a thin LU deallocates every block (they read as zeroes, LBPRZ = 1),
//! a thick LU writes zeroes, and an initialization pattern (IP = 1, pattern type 01h) is written
//! over every block of either. The block length stays what the configuration says. The format
//! runs as a long medium operation (`medium.rs`): IMMED = 1 in the parameter list header
//! returns at once, FORMAT IN PROGRESS with a progress indication answers other commands
//! meanwhile, and a format that fails leaves the medium format corrupt (MEDIUM FORMAT
//! CORRUPTED) until one succeeds.
//!
//! What is refused, with the field it is in: FMTPINFO ≠ 0 (PROTECT = 0 in the standard INQUIRY
//! data), a DEFECT LIST FORMAT without a parameter list, PROTECTION FIELD USAGE ≠ 0, DPRY /
//! DCRT / STPF / IP with FOV = 0, a defect list (there is no defect list to add it to), an IP
//! MODIFIER (no LBA is written into the pattern), a reserved pattern type, and a pattern longer
//! than a logical block. FFMT (fast format) is refused by the opcode table.

use crate::cdb::{bad_cdb, bad_param, CmdResult};
use crate::cmd::Cmd;
use crate::lu::{Failure, LogicalUnit, OpKind};
use crate::medium::{launch, Operation, Overwrite, Work};
use crate::sbc::check_writable;
use crate::sense::SenseReason;

/// INITIALIZATION PATTERN TYPE (SBC-4 §5.4.4).
const PATTERN_DEFAULT: u8 = 0x00;
const PATTERN_REPEAT: u8 = 0x01;

/// FORMAT UNIT.
pub fn format_unit(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let fmtpinfo = c.u8(1) >> 6;
    let longlist = c.bit(1, 5);
    let fmtdata = c.bit(1, 4);
    let dlf = c.u8(1) & 0x07;
    // SBC-4 §5.4.1: FMTPINFO ≠ 0 asks for protection information, which PROTECT = 0 says this
    // LU does not have.
    if fmtpinfo != 0 {
        return Err(bad_cdb(1, Some(7)));
    }
    // Without a parameter list there is no defect list for DEFECT LIST FORMAT to describe.
    if !fmtdata && dlf != 0 {
        return Err(bad_cdb(1, Some(2)));
    }
    if !lu.medium_loaded() {
        return Err(SenseReason::MediumNotPresent.into());
    }
    // A failed sanitize is only left by a sanitize (SBC-4 §4.11.5); format corruption is what
    // a format repairs.
    if let Some(Failure::Sanitize { .. }) = lu.failure() {
        return Err(SenseReason::SanitizeFailed.into());
    }
    let (immed, pattern) = if fmtdata {
        parse_list(cmd, lu, longlist)?
    } else {
        (false, None)
    };
    check_writable(cmd, lu)?;
    let work = match pattern {
        Some(block) => Work::Overwrite(Overwrite {
            invert: false,
            passes: 1,
            block,
        }),
        None if lu.thin() => Work::Deallocate,
        None => Work::Overwrite(Overwrite {
            invert: false,
            passes: 1,
            block: vec![0; lu.block_size() as usize],
        }),
    };
    let op = Operation {
        kind: OpKind::Format,
        work,
        ause: false,
    };
    launch(cmd, lu, op, immed)
}

/// Parse the parameter list (SBC-4 §5.4.2–§5.4.4): IMMED and the initialization pattern, one
/// logical block of it, if one is given.
fn parse_list(
    cmd: &Cmd,
    lu: &LogicalUnit,
    longlist: bool,
) -> Result<(bool, Option<Vec<u8>>), crate::cdb::Fail> {
    let list = cmd.data_out;
    let header_len = if longlist { 8 } else { 4 };
    if list.len() < header_len {
        cmd.expect_out(header_len as u64);
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let b1 = list.u8(1);
    let (fov, ip, immed) = (b1 & 0x80 != 0, b1 & 0x08 != 0, b1 & 0x02 != 0);
    // PROTECTION FIELD USAGE: only 000b without protection information.
    if list.u8(0) & 0x07 != 0 {
        return Err(bad_param(0, Some(2)));
    }
    // SBC-4 §5.4.2: with FOV = 0 the DPRY, DCRT, STPF and IP bits must be zero.
    if !fov && b1 & 0x78 != 0 {
        return Err(bad_param(1, Some(6)));
    }
    if longlist && list.u8(3) != 0 {
        // P_I_INFORMATION and PROTECTION INTERVAL EXPONENT: no protection information.
        return Err(bad_param(3, None));
    }
    let defects = if longlist {
        u64::from(list.be32(4))
    } else {
        u64::from(list.be16(2))
    };
    let mut need = header_len as u64;
    let mut pattern = None;
    if ip {
        // Initialization pattern descriptor (SBC-4 §5.4.4), right after the header.
        let at = header_len;
        if list.len() < at + 4 {
            cmd.expect_out(at as u64 + 4);
            return Err(SenseReason::ParameterListLengthError.into());
        }
        let modifier = list.u8(at) >> 6;
        if modifier != 0 {
            return Err(bad_param(at as u16, Some(7)));
        }
        let kind = list.u8(at + 1);
        let len = usize::from(list.be16(at + 2));
        need = (at + 4 + len) as u64;
        let bs = lu.block_size() as usize;
        match kind {
            PATTERN_DEFAULT if len == 0 => {}
            PATTERN_REPEAT if len > 0 && len <= bs => {
                if list.len() < at + 4 + len {
                    cmd.expect_out(need + defects);
                    return Err(SenseReason::ParameterListLengthError.into());
                }
                let p = list.slice(at + 4, len);
                pattern = Some(p.iter().copied().cycle().take(bs).collect());
            }
            PATTERN_DEFAULT | PATTERN_REPEAT => return Err(bad_param(at as u16 + 2, None)),
            _ => return Err(bad_param(at as u16 + 1, None)),
        }
    }
    cmd.expect_out(need + defects);
    // There is no defect list to add to: only an empty one is accepted.
    if defects != 0 {
        return Err(bad_param(if longlist { 4 } else { 2 }, None));
    }
    Ok((immed, pattern))
}
