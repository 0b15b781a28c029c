//! LOG SENSE (SPC-4 §6.6) and the log pages a Ferrite LU keeps:
//!
//! * 00h Supported Log Pages, and subpage FFh, Supported Log Pages and Subpages (SPC-4 §7.3.18,
//!   §7.3.19);
//! * 0Ch Logical Block Provisioning (SBC-4 §6.4.4), on thin LUs whose backstore can tell how
//!   much it holds: AVAILABLE and USED LBA MAPPING RESOURCE COUNT, in units of
//!   2^THRESHOLD EXPONENT logical blocks (the exponent of VPD page B2h), so a thin pool that
//!   runs low is visible to the initiator;
//! * 2Fh Informational Exceptions (SPC-4 §7.3.8): no exception to report.
//!
//! There are no thresholds and nothing to save: every PAGE CONTROL value returns the current
//! values, SP = 1 is refused by the opcode table, LOG SELECT is not offered.

use crate::cdb::{bad_cdb, clip, CmdResult};
use crate::cmd::{io_fail, Cmd};
use crate::lu::LogicalUnit;
use crate::sense::SenseReason;

const SUPPORTED: u8 = 0x00;
const LOGICAL_BLOCK_PROVISIONING: u8 = 0x0C;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x2F;
const ALL_SUBPAGES: u8 = 0xFF;

/// One log parameter: code, control byte, value.
struct Param {
    code: u16,
    value: Vec<u8>,
}

/// Control byte of every parameter here: FORMAT AND LINKING 11b (binary list), no DU, TSD or
/// ETC.
const CONTROL: u8 = 0x03;

fn pages(lu: &LogicalUnit) -> Vec<u8> {
    let mut p = vec![SUPPORTED];
    if provisioning_offered(lu) {
        p.push(LOGICAL_BLOCK_PROVISIONING);
    }
    p.push(INFORMATIONAL_EXCEPTIONS);
    p
}

fn provisioning_offered(lu: &LogicalUnit) -> bool {
    lu.thin() && matches!(lu.backstore().space(), Ok(Some(_)))
}

/// LOG SENSE.
pub fn log_sense(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let page = c.u8(2) & 0x3F;
    let subpage = c.u8(3);
    let pointer = c.be16(5);
    let alloc = usize::from(c.be16(7));
    let offered = pages(lu);
    if !offered.contains(&page) {
        return Err(bad_cdb(2, Some(5)));
    }
    let out = match (page, subpage) {
        (SUPPORTED, 0) => page_bytes(SUPPORTED, None, offered.clone()),
        (SUPPORTED, ALL_SUBPAGES) => {
            let mut list = Vec::new();
            for &p in &offered {
                list.extend_from_slice(&[p, 0]);
                if p == SUPPORTED {
                    list.extend_from_slice(&[SUPPORTED, ALL_SUBPAGES]);
                }
            }
            page_bytes(SUPPORTED, Some(ALL_SUBPAGES), list)
        }
        (LOGICAL_BLOCK_PROVISIONING, 0) => params_page(page, pointer, &provisioning_params(lu)?)?,
        (INFORMATIONAL_EXCEPTIONS, 0) => {
            // ASC and ASCQ 00h: no exception; MOST RECENT TEMPERATURE READING FFh: none.
            let general = Param {
                code: 0x0000,
                value: vec![0x00, 0x00, 0xFF],
            };
            params_page(page, pointer, &[general])?
        }
        _ => return Err(bad_cdb(3, None)),
    };
    Ok(clip(out, alloc))
}

/// A page: header (with SPF and the subpage when there is one) and `body`.
fn page_bytes(code: u8, subpage: Option<u8>, body: Vec<u8>) -> Vec<u8> {
    let mut out = match subpage {
        Some(s) => vec![code | 0x40, s],
        None => vec![code, 0],
    };
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

/// A page of parameters from PARAMETER POINTER on (SPC-4 §6.6: a pointer past the last
/// parameter code is an invalid field).
fn params_page(code: u8, pointer: u16, params: &[Param]) -> CmdResult {
    if params.last().is_some_and(|p| pointer > p.code) {
        return Err(bad_cdb(5, None));
    }
    let mut body = Vec::new();
    for p in params.iter().filter(|p| p.code >= pointer) {
        body.extend_from_slice(&p.code.to_be_bytes());
        body.push(CONTROL);
        body.push(p.value.len() as u8);
        body.extend_from_slice(&p.value);
    }
    Ok(page_bytes(code, None, body))
}

/// AVAILABLE (0001h) and USED (0002h) LBA MAPPING RESOURCE COUNT (SBC-4 §6.4.4): 4-byte count,
/// then SCOPE (01b: dedicated to this LU, 10b: shared with others).
fn provisioning_params(lu: &LogicalUnit) -> Result<Vec<Param>, crate::cdb::Fail> {
    let space = lu
        .backstore()
        .space()
        .map_err(|e| io_fail("space", SenseReason::InternalTargetFailure, &e))?
        .ok_or(SenseReason::InternalTargetFailure)?;
    let unit = u64::from(lu.block_size()) << lu.threshold_exponent();
    let count = |bytes: u64| u32::try_from(bytes / unit).unwrap_or(u32::MAX);
    let param = |code: u16, bytes: u64, scope: u8| {
        let mut v = count(bytes).to_be_bytes().to_vec();
        v.extend_from_slice(&[scope, 0, 0, 0]);
        Param { code, value: v }
    };
    Ok(vec![
        param(
            0x0001,
            space.available,
            if space.shared { 0b10 } else { 0b01 },
        ),
        param(0x0002, space.used, 0b01),
    ])
}
