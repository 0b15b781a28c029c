//! The copy manager: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 §6.4, §6.18).
//!
//! Scope (what VMware's XCOPY offload and the libiscsi suite use): identification descriptor
//! target descriptors (E4h) naming a logical unit of this target by its NAA designator, and
//! block device to block device segment descriptors (02h), within one LU or across LUs of the
//! target. No inline data, no held data, no stream devices.
//!
//! Order of checks, so that nothing is copied unless the whole list is valid:
//! 1. parameter list header and lengths (PARAMETER LIST LENGTH ERROR, SPC-4 §6.4.3.1);
//! 2. MAXIMUM DESCRIPTOR LIST LENGTH, then the descriptor counts (TOO MANY TARGET / SEGMENT
//!    DESCRIPTORS) — the limits come from [`OPERATING`], which RECEIVE COPY RESULTS reports;
//! 3. each target descriptor: type code (UNSUPPORTED TARGET DESCRIPTOR TYPE CODE), then the LU
//!    it names (COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE);
//! 4. each segment descriptor: type code (UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE), its
//!    target indexes (COPY ABORTED, UNREACHABLE COPY TARGET), its LBA ranges (COPY ABORTED);
//! 5. the copy, segment by segment, a chunk at a time: the source range locked shared while it
//!    is read, the destination range exclusive while it is written, never both at once (so two
//!    copies in opposite directions cannot deadlock; see `locks`).
//!
//! Copy status is held per (I_T nexus, LIST IDENTIFIER) when LIST ID USAGE is 00b, and handed
//! out once by RECEIVE COPY RESULTS (COPY STATUS); it is dropped on I_T nexus loss and reset.

use std::sync::Arc;

use crate::cdb::{bad_cdb, bad_param, clip, Bytes, CmdResult, Fail};
use crate::cmd::Cmd;
use crate::lu::{CopyStatus, LogicalUnit};
use crate::sbc::{check_lu_writable, check_range, flush_if, read_blocks, write_blocks};
use crate::sense::SenseReason;

/// Copy manager limits (RECEIVE COPY RESULTS operating parameters, SPC-4 §6.18.4).
pub struct OperatingParameters {
    pub max_target_descriptors: u16,
    pub max_segment_descriptors: u16,
    pub max_descriptor_list_length: u32,
    /// Bytes one segment may move.
    pub max_segment_length: u32,
}

pub const OPERATING: OperatingParameters = OperatingParameters {
    max_target_descriptors: 8,
    max_segment_descriptors: 64,
    max_descriptor_list_length: 8 * TARGET_DESCRIPTOR_LEN as u32
        + 64 * B2B_SEGMENT_DESCRIPTOR_LEN as u32,
    max_segment_length: 64 << 20,
};

/// Target and segment descriptor type codes (SPC-4 §6.4.5, §6.4.6).
const IDENTIFICATION_DESCRIPTOR: u8 = 0xE4;
const BLOCK_TO_BLOCK: u8 = 0x02;
/// Every target descriptor with a code of E0h or more is 32 bytes (SPC-4 §6.4.5.1).
const TARGET_DESCRIPTOR_LEN: usize = 32;
const B2B_SEGMENT_DESCRIPTOR_LEN: usize = 28;
const HEADER_LEN: usize = 16;
/// Bytes moved per read/write step of a segment.
const CHUNK_BYTES: u64 = 1 << 20;

/// COPY MANAGER STATUS values (SPC-4 §6.18.3).
const COPY_COMPLETED_OK: u8 = 0x01;
const COPY_COMPLETED_WITH_ERRORS: u8 = 0x02;

impl CopyStatus {
    /// COPY STATUS parameter data (SPC-4 §6.18.3), transfer count in KiB when bytes overflow.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 12];
        out[0..4].copy_from_slice(&8u32.to_be_bytes());
        out[4] = if self.ok {
            COPY_COMPLETED_OK
        } else {
            COPY_COMPLETED_WITH_ERRORS
        };
        out[5..7].copy_from_slice(&self.segments_processed.to_be_bytes());
        let (units, count) = match u32::try_from(self.bytes) {
            Ok(b) => (0x00, b),                                                    // bytes
            Err(_) => (0x01, u32::try_from(self.bytes >> 10).unwrap_or(u32::MAX)), // KiB
        };
        out[7] = units;
        out[8..12].copy_from_slice(&count.to_be_bytes());
        out
    }
}

/// One validated block-to-block segment.
#[derive(Debug)]
struct Segment {
    src: usize,
    dst: usize,
    src_lba: u64,
    dst_lba: u64,
    /// Bytes to copy (a whole number of blocks of both copy targets).
    bytes: u64,
}

fn copy_aborted(reason: SenseReason) -> Fail {
    reason.into()
}

/// Resolve an identification descriptor target descriptor (SPC-4 §6.4.5) to a logical unit
/// of this target. LU ID TYPE and RELATIVE INITIATOR PORT IDENTIFIER are ignored (the copy
/// manager addresses its own LUs directly; SPC-4 makes LU ID TYPE informative only).
fn resolve_target(cmd: &Cmd, d: Bytes, off: usize) -> Result<Arc<LogicalUnit>, Fail> {
    let code_set = d.u8(4) & 0x0F;
    let assoc = (d.u8(5) >> 4) & 0x03;
    let dtype = d.u8(5) & 0x0F;
    let dlen = usize::from(d.u8(7));
    // PERIPHERAL DEVICE TYPE: only block devices (00h) are copy targets here.
    if d.u8(1) & 0x1F != 0 {
        return Err(bad_param((off + 1) as u16, Some(4)));
    }
    if dlen > 20 {
        return Err(bad_param((off + 7) as u16, None));
    }
    // A binary NAA designator of a logical unit (SPC-4 §7.8.6.6) is what we can look up.
    if code_set != 0x1 || assoc != 0 || dtype != 0x3 || dlen != 8 {
        return Err(copy_aborted(SenseReason::CopyTargetNotReachable));
    }
    let naa = d.be64(8);
    let luns = cmd.luns;
    let lu = luns
        .luns()
        .into_iter()
        .filter_map(|l| luns.get(l))
        .find(|lu| lu.config().naa_id == naa)
        .ok_or_else(|| copy_aborted(SenseReason::CopyTargetNotReachable))?;
    // DISK BLOCK LENGTH (device type specific parameters) must be the LU's block length.
    let disk_block = d.be24(29);
    if disk_block != lu.block_size() {
        return Err(bad_param((off + 29) as u16, None));
    }
    // The copy target must be able to take the copy (SPC-4 §6.4.1: errors of a copy target
    // are reported as COPY ABORTED).
    if !lu.medium_loaded() || lu.busy().is_some() {
        return Err(copy_aborted(SenseReason::CopyTargetNotReachable));
    }
    Ok(lu)
}

/// EXTENDED COPY (LID1) (SPC-4 §6.4).
pub fn extended_copy(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let len = cmd.cdb.be32(10) as usize;
    cmd.expect_out(len as u64);
    // SPC-4 §6.4.1: PARAMETER LIST LENGTH 0 is not an error; nothing is copied.
    if len == 0 {
        return Ok(Vec::new());
    }
    let list = Bytes(cmd.data_out.slice(0, len));
    if list.len() < HEADER_LEN || list.len() < len {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let list_id = list.u8(0);
    let usage = (list.u8(1) >> 3) & 0x03;
    // LIST ID USAGE 01b is reserved.
    if usage == 0b01 {
        return Err(bad_param(1, Some(4)));
    }
    let tgt_len = usize::from(list.be16(2));
    let seg_len = list.be32(8) as usize;
    let inline_len = list.be32(12) as usize;
    // No inline data (MAXIMUM INLINE DATA LENGTH 0).
    if inline_len != 0 {
        return Err(bad_param(12, None));
    }
    // SPC-4 §6.4.3.1: the descriptor lists must lie within the parameter list.
    let body = tgt_len
        .checked_add(seg_len)
        .and_then(|b| b.checked_add(HEADER_LEN));
    if !matches!(body, Some(b) if b <= len) {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    if tgt_len + seg_len > OPERATING.max_descriptor_list_length as usize {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    if tgt_len % TARGET_DESCRIPTOR_LEN != 0 {
        return Err(bad_param(2, None));
    }
    let n_targets = tgt_len / TARGET_DESCRIPTOR_LEN;
    if n_targets > usize::from(OPERATING.max_target_descriptors) {
        return Err(SenseReason::TooManyTargetDescriptors.into());
    }

    // Segment descriptors are variable length: walk them to count and check type codes.
    let mut seg_offsets = Vec::new();
    let mut off = HEADER_LEN + tgt_len;
    let seg_end = off + seg_len;
    while off < seg_end {
        if off + 4 > seg_end {
            return Err(SenseReason::ParameterListLengthError.into());
        }
        let dlen = 4 + usize::from(list.be16(off + 2));
        if off + dlen > seg_end {
            return Err(SenseReason::ParameterListLengthError.into());
        }
        seg_offsets.push(off);
        if seg_offsets.len() > usize::from(OPERATING.max_segment_descriptors) {
            return Err(SenseReason::TooManySegmentDescriptors.into());
        }
        off += dlen;
    }

    let mut targets = Vec::with_capacity(n_targets);
    for i in 0..n_targets {
        let o = HEADER_LEN + i * TARGET_DESCRIPTOR_LEN;
        let d = Bytes(list.slice(o, TARGET_DESCRIPTOR_LEN));
        if d.u8(0) != IDENTIFICATION_DESCRIPTOR {
            return Err(SenseReason::UnsupportedTargetDescriptorType.into());
        }
        targets.push(resolve_target(cmd, d, o)?);
    }

    let mut segments = Vec::with_capacity(seg_offsets.len());
    for &o in &seg_offsets {
        let d = Bytes(list.slice(o, B2B_SEGMENT_DESCRIPTOR_LEN));
        if d.u8(0) != BLOCK_TO_BLOCK {
            return Err(SenseReason::UnsupportedSegmentDescriptorType.into());
        }
        if usize::from(d.be16(2)) != B2B_SEGMENT_DESCRIPTOR_LEN - 4 {
            return Err(bad_param((o + 2) as u16, None));
        }
        let (si, di) = (usize::from(d.be16(4)), usize::from(d.be16(6)));
        // SPC-4 §6.4.6.1: a target descriptor index with no target descriptor.
        let (Some(src), Some(dst)) = (targets.get(si), targets.get(di)) else {
            return Err(copy_aborted(SenseReason::UnreachableCopyTarget));
        };
        let dc = d.bit(1, 1);
        let blocks = u64::from(d.be16(10));
        let unit = u64::from(if dc {
            dst.block_size()
        } else {
            src.block_size()
        });
        let bytes = blocks * unit;
        let (sbs, dbs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
        if bytes % sbs != 0 || bytes % dbs != 0 {
            return Err(bad_param((o + 10) as u16, None));
        }
        if bytes > u64::from(OPERATING.max_segment_length) {
            return Err(bad_param((o + 10) as u16, None));
        }
        let seg = Segment {
            src: si,
            dst: di,
            src_lba: d.be64(12),
            dst_lba: d.be64(20),
            bytes,
        };
        // SPC-4 §6.4.1: a segment the copy target cannot process (outside its capacity) ends
        // the copy with COPY ABORTED before any block moves.
        if check_range(src, seg.src_lba, bytes / sbs).is_err()
            || check_range(dst, seg.dst_lba, bytes / dbs).is_err()
        {
            return Err(copy_aborted(SenseReason::CopyAborted));
        }
        segments.push(seg);
    }
    // Every destination must take writes.
    for s in &segments {
        let dst = &targets[s.dst];
        check_lu_writable(dst)?;
        // A destination this view maps read-only is protected for this initiator.
        let luns = cmd.luns;
        let read_only_here = luns.luns().into_iter().any(|l| {
            luns.is_read_only(l) && luns.get(l).is_some_and(|x| std::ptr::eq(&*x, &**dst))
        });
        if read_only_here {
            return Err(SenseReason::WriteProtected.into());
        }
    }

    let mut status = CopyStatus {
        ok: true,
        segments_processed: 0,
        bytes: 0,
    };
    let mut result = Ok(());
    for s in &segments {
        match copy_segment(&targets[s.src], &targets[s.dst], s, &|| cmd.cancelled()) {
            Ok(()) => {
                status.segments_processed += 1;
                status.bytes += s.bytes;
            }
            Err(e) => {
                status.ok = false;
                result = Err(e);
                break;
            }
        }
    }
    // SPC-4 §6.4.3.2: LIST ID USAGE 00b asks the copy manager to hold the copy status.
    if usage == 0b00 {
        lu.hold_copy_status(cmd.nexus(), list_id, status);
    }
    result.map(|()| Vec::new())
}

/// Copy one segment, a chunk at a time. An aborted task (ABORT TASK, LUN reset, a preempting
/// PREEMPT AND ABORT) stops between chunks: a copy of gigabytes does not hold the task
/// management function that ended it (SAM-5: an aborted command's writes may be partial).
fn copy_segment(
    src: &LogicalUnit,
    dst: &LogicalUnit,
    s: &Segment,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), Fail> {
    let (sbs, dbs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
    // A chunk is a whole number of both block sizes (both are 512 or 4096).
    let chunk = CHUNK_BYTES - CHUNK_BYTES % sbs.max(dbs);
    let mut done = 0;
    while done < s.bytes {
        if cancelled() {
            return Err(Fail::Status(crate::ScsiStatus::TASK_ABORTED));
        }
        let n = chunk.min(s.bytes - done);
        let data = {
            let lba = s.src_lba + done / sbs;
            let _r = src.lock_range(lba, n / sbs, false)?;
            read_blocks(src, lba, n / sbs)?
        };
        {
            let lba = s.dst_lba + done / dbs;
            let _w = dst.lock_range(lba, n / dbs, true)?;
            write_blocks(dst, lba, &data)?;
        }
        done += n;
    }
    flush_if(dst, false)
}

/// RECEIVE COPY RESULTS service actions (SPC-4 §6.18.1).
pub mod sa {
    pub const COPY_STATUS: u8 = 0x00;
    pub const OPERATING_PARAMETERS: u8 = 0x03;
}

/// RECEIVE COPY RESULTS (SPC-4 §6.18): COPY STATUS and OPERATING PARAMETERS.
pub fn receive_copy_results(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let list_id = c.u8(2);
    let alloc = c.be32(10) as usize;
    let out = match c.u8(1) & 0x1F {
        sa::COPY_STATUS => match lu.take_copy_status(cmd.nexus(), list_id) {
            Some(st) => st.encode(),
            // SPC-4 §6.18.3: no copy with this LIST IDENTIFIER → INVALID FIELD IN CDB.
            None => return Err(bad_cdb(2, None)),
        },
        sa::OPERATING_PARAMETERS => operating_parameters(),
        _ => return Err(bad_cdb(1, Some(4))),
    };
    Ok(clip(out, alloc))
}

/// OPERATING PARAMETERS parameter data (SPC-4 §6.18.4).
fn operating_parameters() -> Vec<u8> {
    let implemented = [BLOCK_TO_BLOCK, IDENTIFICATION_DESCRIPTOR];
    let mut out = vec![0u8; 44];
    out[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
    out[8..10].copy_from_slice(&OPERATING.max_target_descriptors.to_be_bytes());
    out[10..12].copy_from_slice(&OPERATING.max_segment_descriptors.to_be_bytes());
    out[12..16].copy_from_slice(&OPERATING.max_descriptor_list_length.to_be_bytes());
    out[16..20].copy_from_slice(&OPERATING.max_segment_length.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH 0, HELD DATA LIMIT 0, MAXIMUM STREAM DEVICE TRANSFER SIZE 0.
    // TOTAL CONCURRENT COPIES / MAXIMUM CONCURRENT COPIES: copies run as their commands do.
    out[34..36].copy_from_slice(&1u16.to_be_bytes());
    out[36] = 1;
    // DATA SEGMENT GRANULARITY: one 512-byte block (log2).
    out[37] = 9;
    out[43] = implemented.len() as u8;
    out.extend_from_slice(&implemented);
    let avail = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&avail.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_status_layout() {
        let s = CopyStatus {
            ok: true,
            segments_processed: 3,
            bytes: 4096,
        };
        assert_eq!(s.encode(), [0, 0, 0, 8, 1, 0, 3, 0, 0, 0, 0x10, 0]);
        let big = CopyStatus {
            ok: false,
            segments_processed: 1,
            bytes: 8 << 30,
        };
        let e = big.encode();
        assert_eq!((e[4], e[7]), (2, 1));
        assert_eq!(&e[8..12], &(8u32 << 20).to_be_bytes());
    }

    #[test]
    fn operating_parameters_layout() {
        let p = operating_parameters();
        assert_eq!(p.len(), 46);
        assert_eq!(
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
            p.len() - 4
        );
        assert_eq!(u16::from_be_bytes([p[8], p[9]]), 8);
        assert_eq!(u16::from_be_bytes([p[10], p[11]]), 64);
        assert_eq!(&p[43..], &[2, 0x02, 0xE4]);
        assert_eq!(OPERATING.max_descriptor_list_length, 8 * 32 + 64 * 28);
    }
}
