//! REPORT TARGET PORT GROUPS and SET TARGET PORT GROUPS (SPC-4 §6.37, §6.45): the commands of
//! asymmetric logical unit access. The groups themselves belong to the target device (`alua`,
//! `device`).

use crate::alua::SetError;
use crate::cdb::{bad_cdb, bad_param, clip, CmdResult};
use crate::cmd::Cmd;
use crate::lu::LogicalUnit;
use crate::sense::SenseReason;

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0Ah; SPC-4 §6.37).
pub fn report_target_port_groups(cmd: &Cmd, _lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    // PARAMETER DATA FORMAT (byte 1, bits 7..5): 000b length only, 001b extended header.
    let extended = match c.u8(1) >> 5 {
        0 => false,
        1 => true,
        _ => return Err(bad_cdb(1, Some(7))),
    };
    let alloc = c.be32(6) as usize;
    let data = match cmd.device {
        Some(d) => {
            let ports: Vec<u16> = d.ports().iter().map(|p| p.relative_port_id).collect();
            d.alua().report(extended, &ports)
        }
        None => crate::alua::Alua::new().report(extended, &[cmd.port_id()]),
    };
    Ok(clip(data, alloc))
}

/// SET TARGET PORT GROUPS (MAINTENANCE OUT, service action 0Ah; SPC-4 §6.45): an explicit
/// transition of the named groups, done when the command completes.
pub fn set_target_port_groups(cmd: &Cmd, _lu: &LogicalUnit) -> CmdResult {
    let len = cmd.cdb.be32(6) as usize;
    cmd.expect_out(len as u64);
    // SPC-4 §6.45: a PARAMETER LIST LENGTH of zero is not an error; nothing changes.
    if len == 0 {
        return Ok(Vec::new());
    }
    if cmd.data_out.len() < len {
        return Err(SenseReason::InvalidFieldInInformationUnit.into());
    }
    let list = cmd.data_out.slice(0, len);
    let result = match cmd.device {
        Some(d) => d.set_target_port_groups(cmd.nexus(), list),
        // No device, no groups to name (only the implied default one, which cannot change).
        None => crate::alua::Alua::new().set_explicit(list).map(|_| ()),
    };
    match result {
        Ok(()) => Ok(Vec::new()),
        Err(SetError::Length) => Err(SenseReason::ParameterListLengthError.into()),
        Err(SetError::Field(byte)) => Err(bad_param(byte, None)),
        // SPC-4 §6.45: an explicit transition to a supported state that is not made.
        Err(SetError::Refused) => Err(SenseReason::SetTargetPortGroupsFailed.into()),
    }
}
