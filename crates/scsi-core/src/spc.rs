//! SPC-4 primary commands: TEST UNIT READY, INQUIRY, REQUEST SENSE, REPORT LUNS, REPORT
//! SUPPORTED TASK MANAGEMENT FUNCTIONS, RESERVE / RELEASE (SPC-2), SEND DIAGNOSTIC and RECEIVE
//! DIAGNOSTIC RESULTS. (REPORT SUPPORTED OPERATION CODES is answered by `opcodes`, from its
//! table; START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL are in `media`.)

use crate::cdb::{bad_cdb, bad_param, clip, CmdResult, Fail};
use crate::cmd::Cmd;
use crate::lu::{LogicalUnit, LuConfig};
use crate::luns::lun_to_wire;
use crate::reservations::{self, Spc2};
use crate::sense::{Sense, SenseReason};
use crate::{vpd, ScsiStatus};

/// TEST UNIT READY (SPC-4 §6.47): ready unless a removable medium is out or a failed sanitize
/// is pending (`LogicalUnit::check_ready`; a running sanitize is reported by dispatch).
pub fn test_unit_ready(_cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    lu.check_ready()?;
    Ok(Vec::new())
}

/// Diagnostic page codes (SPC-4 §7.2).
const DIAG_SUPPORTED_PAGES: u8 = 0x00;

/// SEND DIAGNOSTIC (SPC-4 §6.42). SELFTEST = 1 runs the default self-test: the backstore is
/// read at the first and the last block, and an error there is HARDWARE ERROR, LOGICAL UNIT
/// FAILED SELF-TEST. With PF = 1 the only diagnostic page accepted is Supported Diagnostic
/// Pages (00h). The self-test codes (short and extended, background and foreground) need a
/// self-test results log page, which Ferrite does not keep: INVALID FIELD IN CDB.
pub fn send_diagnostic(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let code = c.u8(1) >> 5;
    let pf = c.bit(1, 4);
    let selftest = c.bit(1, 2);
    let len = usize::from(c.be16(3));
    cmd.expect_out(len as u64);
    if code != 0 {
        return Err(bad_cdb(1, Some(7)));
    }
    if selftest {
        // SPC-4 §6.42: with SELFTEST = 1 the PARAMETER LIST LENGTH shall be zero.
        if len != 0 {
            return Err(bad_cdb(3, None));
        }
        lu.check_ready()?;
        let last = lu.num_blocks().saturating_sub(1);
        for lba in [0, last] {
            let _r = lu.lock_range(lba, 1, false)?;
            if let Err(Fail::Check(s)) = crate::sbc::read_blocks(lu, lba, 1) {
                tracing::warn!(lba, reason = ?s.reason, "self-test read failed");
                return Err(SenseReason::SelfTestFailed.into());
            }
        }
        return Ok(Vec::new());
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    // Vendor-specific parameter data (PF = 0): none is defined here.
    if !pf {
        return Err(bad_cdb(1, Some(4)));
    }
    let list = crate::cdb::Bytes(cmd.data_out.slice(0, len));
    if list.len() < len || len < 4 {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    // One page: Supported Diagnostic Pages, which carries no parameters (SPC-4 §7.2.2).
    if list.u8(0) != DIAG_SUPPORTED_PAGES {
        return Err(bad_param(0, None));
    }
    if usize::from(list.be16(2)) != 0 || len != 4 {
        return Err(bad_param(2, None));
    }
    Ok(Vec::new())
}

/// RECEIVE DIAGNOSTIC RESULTS (SPC-4 §6.32): the Supported Diagnostic Pages page, the one
/// page there is (so also the answer with PCV = 0).
pub fn receive_diagnostic_results(cmd: &Cmd, _lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let pcv = c.bit(1, 0);
    let alloc = usize::from(c.be16(3));
    if pcv && c.u8(2) != DIAG_SUPPORTED_PAGES {
        return Err(bad_cdb(2, None));
    }
    // PAGE CODE 00h, PAGE LENGTH 1, the list: 00h.
    Ok(clip(
        vec![DIAG_SUPPORTED_PAGES, 0, 0, 1, DIAG_SUPPORTED_PAGES],
        alloc,
    ))
}

/// INQUIRY (SPC-4 §6.6).
pub fn inquiry(cmd: &Cmd) -> CmdResult {
    let c = cmd.cdb;
    let evpd = c.bit(1, 0);
    let page = c.u8(2);
    let alloc = usize::from(c.be16(3));
    // SPC-4 §6.6.1: PAGE CODE with EVPD = 0 is an invalid field. (CMDDT, obsolete, is refused
    // by the opcode table's usage data.)
    if !evpd && page != 0 {
        return Err(bad_cdb(2, None));
    }
    let data = match (cmd.lu, evpd) {
        (Some(lu), false) => {
            let mut d = vpd::standard(vpd::PERIPHERAL_DISK, lu.config());
            // MULTIP (SPC-4 §6.6.2): the target device has more than one target port.
            if cmd.device.is_some_and(|dev| dev.ports().len() > 1) {
                d[6] |= 0x10;
            }
            d
        }
        (Some(lu), true) => vpd::page(lu, &cmd.nexus().target_port, cmd.port_group(), page)?,
        // SPC-4 §6.6.2: no logical unit here: PERIPHERAL QUALIFIER 011b, type 1Fh.
        (None, false) => vpd::standard(vpd::PERIPHERAL_NONE, &LuConfig::default()),
        (None, true) => return Err(SenseReason::LunNotSupported.into()),
    };
    Ok(clip(data, alloc))
}

/// REQUEST SENSE (SPC-4 §6.39): returns (and clears) a pending unit attention, LOGICAL UNIT NOT
/// SUPPORTED for a LUN that does not exist, or NO SENSE. Autosense carries every other error.
pub fn request_sense(cmd: &Cmd) -> CmdResult {
    let desc = cmd.cdb.bit(1, 0);
    let alloc = usize::from(cmd.cdb.u8(4));
    let sense = match cmd.lu {
        None => Sense::new(SenseReason::LunNotSupported),
        // SBC-4 §4.11.2, §5.4.1: during a sanitize or a format REQUEST SENSE reports it, with
        // its progress.
        Some(lu) => lu.busy().unwrap_or_else(|| {
            let power_on = lu.config().report_power_on_ua;
            let ua = lu.state().ua.take(cmd.nexus(), power_on);
            // SPC-4 §6.39: with nothing else to report, why the logical unit cannot be
            // accessed through this port (its ALUA state, §5.16.2.4).
            let why = ua.or_else(|| cmd.access_state().refusal());
            Sense::new(why.unwrap_or(SenseReason::NoSense))
        }),
    };
    let data = if desc {
        sense.to_descriptor()
    } else {
        sense.to_fixed()
    };
    Ok(clip(data, alloc))
}

/// REPORT LUNS (SPC-4 §6.33).
pub fn report_luns(cmd: &Cmd) -> CmdResult {
    let select = cmd.cdb.u8(2);
    let alloc = cmd.cdb.be32(6) as usize;
    // SPC-4 §6.33: an ALLOCATION LENGTH below 16 is an invalid field.
    if alloc < 16 {
        return Err(bad_cdb(6, None));
    }
    let luns = match select {
        // 00h: all logical units except well-known ones; 02h: all. We have no well-known LUs.
        0x00 | 0x02 => {
            let l = cmd.luns.luns();
            // SAM-5 §4.7.2: LUN 0 is always reported, even if nothing is configured there.
            if l.is_empty() {
                vec![0]
            } else {
                l
            }
        }
        // 01h: well-known logical units only.
        0x01 => Vec::new(),
        _ => return Err(bad_cdb(2, None)),
    };
    let mut out = Vec::with_capacity(8 + 8 * luns.len());
    out.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    for l in luns {
        out.extend_from_slice(&lun_to_wire(l).to_be_bytes());
    }
    Ok(clip(out, alloc))
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.36): the TMFs the iSCSI layer
/// implements: ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
pub fn report_supported_tmfs(cmd: &Cmd, _lu: &LogicalUnit) -> CmdResult {
    let repd = cmd.cdb.bit(2, 7);
    let alloc = cmd.cdb.be32(6) as usize;
    // ATS | ATSS | CTSS | LURS | TRS.
    let mut out = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0x00, 0x00, 0x00];
    if repd {
        out[3] = 0x0C; // ADDITIONAL DATA LENGTH of the extended format
        out.resize(16, 0);
    }
    Ok(clip(out, alloc))
}

/// RESERVE(6) / RESERVE(10) (SPC-2 §7.21 / §7.22): logical unit reservation for this nexus.
/// Third-party and extent reservations are refused by the opcode table. While persistent
/// reservations are in use, SPC-4 §5.13.3 (CRH = 1) decides instead.
pub fn reserve(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    if cmd.cdb.u8(0) == 0x56 {
        cmd.expect_out(u64::from(cmd.cdb.be16(7)));
    }
    let mut st = lu.state();
    match reservations::spc2_exception(&st, lu, cmd.nexus()) {
        Spc2::Proceed => {}
        Spc2::NoOp => return Ok(Vec::new()),
        Spc2::Conflict => return Err(Fail::Status(ScsiStatus::RESERVATION_CONFLICT)),
    }
    match &st.reservation {
        Some(holder) if holder != cmd.nexus() => {
            Err(Fail::Status(ScsiStatus::RESERVATION_CONFLICT))
        }
        _ => {
            st.reservation = Some(cmd.nexus().clone());
            Ok(Vec::new())
        }
    }
}

/// RELEASE(6) / RELEASE(10) (SPC-2 §7.16 / §7.17): releasing a reservation we do not hold is
/// not an error and changes nothing. While persistent reservations are in use, SPC-4 §5.13.3
/// (CRH = 1) decides instead.
pub fn release(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let mut st = lu.state();
    match reservations::spc2_exception(&st, lu, cmd.nexus()) {
        Spc2::Proceed => {}
        Spc2::NoOp => return Ok(Vec::new()),
        Spc2::Conflict => return Err(Fail::Status(ScsiStatus::RESERVATION_CONFLICT)),
    }
    if st.reservation.as_ref() == Some(cmd.nexus()) {
        st.reservation = None;
    }
    Ok(Vec::new())
}
