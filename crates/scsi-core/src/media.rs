//! Removable medium: START STOP UNIT (SBC-4 §5.25) and PREVENT ALLOW MEDIUM REMOVAL (SBC-4
//! §5.13).
//!
//! A removable LU (RMB = 1 in standard INQUIRY data) starts with its medium loaded. Ejecting it
//! (LOEJ = 1, START = 0) makes every command that needs the medium fail with NOT READY, MEDIUM
//! NOT PRESENT (`LogicalUnit::check_ready`); loading it again tells the other I_T nexuses
//! NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED. The backing store does not change: the
//! "medium" is the backstore, taken out of service and put back.
//!
//! Prevention is kept per I_T nexus; the medium cannot be loaded or ejected while any nexus
//! prevents removal. A nexus's prevention ends with ALLOW, its I_T nexus loss, a logical unit
//! reset or a hard reset (SBC-4 §5.13); see `LogicalUnit::reset` / `nexus_lost`.

use crate::cdb::{bad_cdb, CmdResult};
use crate::cmd::{io_fail, Cmd};
use crate::lu::LogicalUnit;
use crate::sense::SenseReason;

/// START STOP UNIT (SBC-4 §5.25). Nothing spins, so power conditions and START without LOEJ
/// are accepted and change nothing. With a POWER CONDITION other than 0h, START and LOEJ are
/// ignored (SBC-4 §5.25). LOEJ = 1 on a removable LU ejects (START = 0) or loads (START = 1) the
/// medium, unless removal is prevented; on a fixed LU there is nothing to eject. IMMED and
/// NO_FLUSH are accepted: the eject flushes unless NO_FLUSH asks it not to, and completes before
/// status either way.
pub fn start_stop_unit(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let power_condition = c.u8(4) >> 4;
    let no_flush = c.bit(4, 2);
    let loej = c.bit(4, 1);
    let start = c.bit(4, 0);
    if power_condition != 0 || !loej || !lu.removable() {
        return Ok(Vec::new());
    }
    // SBC-4 §5.13 / §5.25: while any I_T nexus prevents removal, LOEJ is refused.
    if lu.removal_prevented() {
        return Err(SenseReason::MediumRemovalPrevented.into());
    }
    if !start && lu.medium_loaded() && !no_flush {
        lu.backstore()
            .flush()
            .map_err(|e| io_fail("flush before eject", SenseReason::WriteError, &e))?;
    }
    lu.set_loaded(start, cmd.nexus());
    Ok(Vec::new())
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-4 §5.13): PREVENT 00b allows and 01b prevents removal for
/// this I_T nexus; 10b and 11b (obsolete medium changer values) are refused. Works with or
/// without a medium loaded. On a fixed LU the state is kept but changes nothing.
pub fn prevent_allow(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    match cmd.cdb.u8(4) & 0x03 {
        0 => lu.set_prevent(cmd.nexus(), false),
        1 => lu.set_prevent(cmd.nexus(), true),
        _ => return Err(bad_cdb(4, Some(1))),
    }
    Ok(Vec::new())
}
