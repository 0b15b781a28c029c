//! SBC-4 block commands.
//!
//! Common order of checks for a command that moves blocks (SBC-4 §4.5, §5.x):
//! CDB fields (the opcode table refuses reserved bits, RDPROTECT/WRPROTECT/VRPROTECT and
//! unsupported options) → medium present / not failed (NOT READY, `LogicalUnit::check_ready`)
//! → MAXIMUM TRANSFER LENGTH → LBA range (`checked_add`, LOGICAL BLOCK ADDRESS OUT OF RANGE) →
//! write protection (DATA PROTECT) → data-out → LBA range lock → backstore.
//!
//! Range locks (`locks`): reads hold their blocks shared, everything that writes holds them
//! exclusive, so COMPARE AND WRITE, ORWRITE and WRITE ATOMIC are indivisible with respect to
//! every other command on those blocks (SBC-4 §5.3, §4.29) and no read sees a torn block.
//!
//! Data-out shorter than the CDB asks for (the initiator's Expected Data Transfer Length was
//! smaller than TRANSFER LENGTH × block size): whole blocks received are written and the command
//! completes with GOOD, the transport reporting the residual overflow (RFC 7143 §11.4.5.1;
//! libiscsi test-tool `test_write10_residuals` checks exactly this: only the EDTL amount is
//! written). A trailing partial block is never written; such a command ends with INVALID FIELD
//! IN COMMAND INFORMATION UNIT (05/0E/03) and writes nothing.

use crate::cdb::{bad_cdb, bad_param, clip, Bytes, CmdResult, Fail};
use crate::cmd::{io_fail, Cmd};
use crate::lu::{limits, LogicalUnit};
use crate::sense::{Sense, SenseReason};

/// Buffer size for WRITE SAME and zero-fill loops.
const CHUNK_BYTES: u64 = 1 << 20;

/// LBA / length fields of a READ / WRITE / VERIFY / WRITE AND VERIFY CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Xfer {
    lba: u64,
    /// Logical blocks.
    len: u64,
    /// Offset of the TRANSFER LENGTH field, for field pointers.
    len_off: u16,
    fua: bool,
}

/// Decode by CDB group (SPC-4 §4.2.5.1): 6-byte (READ(6)/WRITE(6) only), 10, 12 or 16 bytes.
fn decode(c: Bytes) -> Xfer {
    match c.u8(0) >> 5 {
        // SBC-4 §5.15 / §5.41: 21-bit LBA; TRANSFER LENGTH 0 means 256 blocks; no DPO/FUA.
        0 => {
            let len = match c.u8(4) {
                0 => 256,
                n => u64::from(n),
            };
            Xfer {
                lba: u64::from(c.be24(1) & 0x1F_FFFF),
                len,
                len_off: 4,
                fua: false,
            }
        }
        1 | 2 => Xfer {
            lba: u64::from(c.be32(2)),
            len: u64::from(c.be16(7)),
            len_off: 7,
            fua: c.bit(1, 3),
        },
        5 => Xfer {
            lba: u64::from(c.be32(2)),
            len: u64::from(c.be32(6)),
            len_off: 6,
            fua: c.bit(1, 3),
        },
        _ => Xfer {
            lba: c.be64(2),
            len: u64::from(c.be32(10)),
            len_off: 10,
            fua: c.bit(1, 3),
        },
    }
}

/// SBC-4 §4.5: the range [lba, lba + len) must lie within the capacity.
pub(crate) fn check_range(lu: &LogicalUnit, lba: u64, len: u64) -> Result<(), Fail> {
    match lba.checked_add(len) {
        Some(end) if end <= lu.num_blocks() => Ok(()),
        _ => Err(SenseReason::LbaOutOfRange.into()),
    }
}

/// SBC-4 §6.6.4: a transfer above MAXIMUM TRANSFER LENGTH is an invalid field.
fn check_max_transfer(lu: &LogicalUnit, x: &Xfer) -> Result<(), Fail> {
    if x.len > u64::from(lu.max_transfer_blocks()) {
        return Err(bad_cdb(x.len_off, None));
    }
    Ok(())
}

/// DATA PROTECT if the LU does not take writes now (SBC-4 §4.11).
/// A read-only mapping of the LU in the addressing view (an ACL option) protects it too.
pub(crate) fn check_writable(cmd: &Cmd, lu: &LogicalUnit) -> Result<(), Fail> {
    if cmd.read_only {
        return Err(SenseReason::WriteProtected.into());
    }
    check_lu_writable(lu)
}

/// DATA PROTECT if the LU itself does not take writes now (SBC-4 §4.11).
pub(crate) fn check_lu_writable(lu: &LogicalUnit) -> Result<(), Fail> {
    match lu.write_protection() {
        Some(reason) => Err(reason.into()),
        None => Ok(()),
    }
}

/// The whole blocks of data-out for a transfer of `blocks` (see the module comment).
fn data_blocks<'a>(cmd: &Cmd<'a>, blocks: u64, bs: u64) -> Result<&'a [u8], Fail> {
    let need = blocks.saturating_mul(bs);
    let have = cmd.data_out.len() as u64;
    if have >= need {
        Ok(cmd.data_out.slice(0, need as usize))
    } else if have.checked_rem(bs) == Some(0) {
        Ok(cmd.data_out.0)
    } else {
        Err(SenseReason::InvalidFieldInInformationUnit.into())
    }
}

pub(crate) fn read_blocks(lu: &LogicalUnit, lba: u64, blocks: u64) -> Result<Vec<u8>, Fail> {
    let bs = u64::from(lu.block_size());
    lu.backstore()
        .read_vec((blocks * bs) as usize, lba * bs)
        .map_err(|e| io_fail("read", SenseReason::UnrecoveredReadError, &e))
}

fn flush(lu: &LogicalUnit) -> Result<(), Fail> {
    lu.backstore()
        .flush()
        .map_err(|e| io_fail("flush", SenseReason::WriteError, &e))
}

/// Make completed writes durable when FUA asks for it or the write cache is off (caching mode
/// page WCE = 0, SBC-4 §6.5.5).
pub(crate) fn flush_if(lu: &LogicalUnit, fua: bool) -> Result<(), Fail> {
    if fua || !lu.mode().wce {
        flush(lu)?;
    }
    Ok(())
}

/// Write `data` (whole blocks) at `lba`. The caller holds the range exclusively.
pub(crate) fn write_blocks(lu: &LogicalUnit, lba: u64, data: &[u8]) -> Result<(), Fail> {
    let bs = u64::from(lu.block_size());
    lu.backstore()
        .write_at(data, lba * bs)
        .map_err(|e| io_fail("write", SenseReason::WriteError, &e))
}

/// Write `block` to each of `count` blocks from `lba`, a chunk at a time.
pub(crate) fn write_pattern(
    lu: &LogicalUnit,
    lba: u64,
    count: u64,
    block: &[u8],
) -> Result<(), Fail> {
    let bs = block.len() as u64;
    let per_chunk = (CHUNK_BYTES / bs).clamp(1, count.max(1));
    let chunk = block.repeat(per_chunk as usize);
    let mut done = 0;
    while done < count {
        let n = per_chunk.min(count - done);
        write_blocks(lu, lba + done, &chunk[..(n * bs) as usize])?;
        done += n;
    }
    Ok(())
}

/// Deallocate `count` blocks from `lba`; where the backstore cannot, write zeroes so that the
/// blocks read back as zero, as LBPRZ = 1 promises (SBC-4 §4.7.4.5).
pub(crate) fn deallocate(lu: &LogicalUnit, lba: u64, count: u64) -> Result<(), Fail> {
    let bs = u64::from(lu.block_size());
    match lu.backstore().unmap(lba * bs, count * bs) {
        Ok(true) => Ok(()),
        Ok(false) => write_pattern(lu, lba, count, &vec![0u8; bs as usize]),
        Err(e) => Err(io_fail("unmap", SenseReason::WriteError, &e)),
    }
}

/// Anchor `count` blocks from `lba` (SBC-4 §4.7.2: anchored LBAs keep their physical
/// resources and read back as zeroes, LBPRZ = 1). GET LBA STATUS then reports them "mapped or
/// unknown" (provisioning status 0h), which SBC-4 §5.8.2 allows for any LBA.
pub(crate) fn anchor(lu: &LogicalUnit, lba: u64, count: u64) -> Result<(), Fail> {
    let bs = u64::from(lu.block_size());
    lu.backstore()
        .anchor(lba * bs, count * bs)
        .map_err(|e| io_fail("anchor", SenseReason::WriteError, &e))
}

/// First differing byte, as the INFORMATION field of a miscompare wants it.
fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn miscompare(offset: usize) -> Fail {
    Fail::Check(Sense::new(SenseReason::MiscompareDuringVerify).with_information(offset as u64))
}

/// READ(6/10/12/16) (SBC-4 §5.15–§5.18). DPO and FUA are accepted (there is no cache above the
/// backstore to bypass); RDPROTECT ≠ 0 is refused by the opcode table.
pub fn read(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let x = decode(cmd.cdb);
    lu.check_ready()?;
    check_max_transfer(lu, &x)?;
    check_range(lu, x.lba, x.len)?;
    if x.len == 0 {
        // SBC-4 §5.16: TRANSFER LENGTH 0 is not an error and transfers nothing.
        return Ok(Vec::new());
    }
    let _r = lu.lock_range(x.lba, x.len, false)?;
    read_blocks(lu, x.lba, x.len)
}

/// A READ, WRITE or SYNCHRONIZE CACHE that passed every check and waits only for its data to
/// move: what the device server's asynchronous path ([`crate::DeviceServer::execute_async`])
/// hands to an asynchronous backstore. The checks are exactly those of [`read`], [`write`] and
/// [`synchronize_cache`].
pub(crate) enum Transfer<'a> {
    /// SYNCHRONIZE CACHE: make every completed write durable (SBC-4 §5.26, §5.27).
    Flush,
    /// Nothing to move: TRANSFER LENGTH 0, or no whole block of data-out.
    Nothing,
    Read {
        lba: u64,
        blocks: u64,
    },
    Write {
        lba: u64,
        data: &'a [u8],
        fua: bool,
    },
}

/// The checks of READ(6/10/12/16), WRITE(6/10/12/16) or SYNCHRONIZE CACHE(10/16), in the
/// same order as [`read`], [`write`] and [`synchronize_cache`] make them (see the module
/// documentation), without moving data.
pub(crate) fn plan_transfer<'a>(cmd: &Cmd<'a>, lu: &LogicalUnit) -> Result<Transfer<'a>, Fail> {
    if is_flush_opcode(cmd.cdb.u8(0)) {
        let (lba, count) = lba_count(cmd.cdb);
        lu.check_ready()?;
        check_range(lu, lba, count)?;
        return Ok(Transfer::Flush);
    }
    let x = decode(cmd.cdb);
    let bs = u64::from(lu.block_size());
    if is_write_opcode(cmd.cdb.u8(0)) {
        cmd.expect_out(x.len * bs);
        let data = checked_write_data(cmd, lu, &x, bs)?;
        if data.is_empty() {
            return Ok(Transfer::Nothing);
        }
        return Ok(Transfer::Write {
            lba: x.lba,
            data,
            fua: x.fua,
        });
    }
    lu.check_ready()?;
    check_max_transfer(lu, &x)?;
    check_range(lu, x.lba, x.len)?;
    if x.len == 0 {
        // SBC-4 §5.16: TRANSFER LENGTH 0 is not an error and transfers nothing.
        return Ok(Transfer::Nothing);
    }
    Ok(Transfer::Read {
        lba: x.lba,
        blocks: x.len,
    })
}

/// READ(6/10/12/16), WRITE(6/10/12/16) and SYNCHRONIZE CACHE(10/16): the commands the
/// asynchronous path takes.
pub(crate) fn is_transfer_opcode(op: u8) -> bool {
    matches!(op, 0x08 | 0x28 | 0xa8 | 0x88) || is_write_opcode(op) || is_flush_opcode(op)
}

fn is_flush_opcode(op: u8) -> bool {
    matches!(op, 0x35 | 0x91)
}

fn is_write_opcode(op: u8) -> bool {
    matches!(op, 0x0a | 0x2a | 0xaa | 0x8a)
}

/// Move a planned transfer's data through the LU's asynchronous backstore, under the same
/// range lock and with the same flush rule (FUA or WCE = 0, SBC-4 §6.5.5) as [`read`] and
/// [`write`]. A backstore without an asynchronous interface is used synchronously.
pub(crate) async fn transfer(lu: &LogicalUnit, t: Transfer<'_>) -> CmdResult {
    let bs = u64::from(lu.block_size());
    let Some(aio) = lu.backstore().as_async() else {
        return match t {
            Transfer::Nothing => Ok(Vec::new()),
            Transfer::Read { lba, blocks } => {
                let _r = lu.lock_range(lba, blocks, false)?;
                read_blocks(lu, lba, blocks)
            }
            Transfer::Write { lba, data, fua } => {
                let _w = lu.lock_range(lba, data.len() as u64 / bs, true)?;
                write_blocks(lu, lba, data)?;
                flush_if(lu, fua)?;
                Ok(Vec::new())
            }
            Transfer::Flush => flush(lu).map(|()| Vec::new()),
        };
    };
    match t {
        Transfer::Nothing => Ok(Vec::new()),
        Transfer::Read { lba, blocks } => {
            let _r = lu.lock_range_async(lba, blocks, false).await?;
            backstore::aio::read(aio, lba * bs, (blocks * bs) as usize)
                .await
                .map_err(|e| io_fail("read", SenseReason::UnrecoveredReadError, &e))
        }
        Transfer::Write { lba, data, fua } => {
            let _w = lu
                .lock_range_async(lba, data.len() as u64 / bs, true)
                .await?;
            backstore::aio::write(aio, data.to_vec(), lba * bs)
                .await
                .map_err(|e| io_fail("write", SenseReason::WriteError, &e))?;
            if fua || !lu.mode().wce {
                backstore::aio::flush(aio)
                    .await
                    .map_err(|e| io_fail("flush", SenseReason::WriteError, &e))?;
            }
            Ok(Vec::new())
        }
        Transfer::Flush => backstore::aio::flush(aio)
            .await
            .map(|()| Vec::new())
            .map_err(|e| io_fail("flush", SenseReason::WriteError, &e)),
    }
}

/// The checks every write of TRANSFER LENGTH blocks makes, in the order SBC-4 gives them
/// (medium ready, transfer limit, LBA range, write protection), then the whole blocks of
/// data-out that arrived.
fn checked_write_data<'a>(
    cmd: &Cmd<'a>,
    lu: &LogicalUnit,
    x: &Xfer,
    bs: u64,
) -> Result<&'a [u8], Fail> {
    lu.check_ready()?;
    check_max_transfer(lu, x)?;
    check_range(lu, x.lba, x.len)?;
    check_writable(cmd, lu)?;
    data_blocks(cmd, x.len, bs)
}

/// WRITE(6/10/12/16) (SBC-4 §5.41–§5.44).
pub fn write(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let x = decode(cmd.cdb);
    let bs = u64::from(lu.block_size());
    cmd.expect_out(x.len * bs);
    let data = checked_write_data(cmd, lu, &x, bs)?;
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let _w = lu.lock_range(x.lba, data.len() as u64 / bs, true)?;
    write_blocks(lu, x.lba, data)?;
    flush_if(lu, x.fua)?;
    Ok(Vec::new())
}

/// VERIFY(10/12/16) (SBC-4 §5.34–§5.36). BYTCHK 00b: the medium is always readable, nothing to
/// do beyond the range check; 01b: compare TRANSFER LENGTH blocks of data-out; 11b: compare one
/// data-out block with each block.
pub fn verify(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let x = decode(cmd.cdb);
    let bs = u64::from(lu.block_size());
    let bytchk = (cmd.cdb.u8(1) >> 1) & 0x03;
    match bytchk {
        0 => {}
        1 => cmd.expect_out(x.len * bs),
        3 => cmd.expect_out(bs),
        // 10b is reserved.
        _ => return Err(bad_cdb(1, Some(2))),
    }
    lu.check_ready()?;
    if bytchk != 0 {
        check_max_transfer(lu, &x)?;
    }
    check_range(lu, x.lba, x.len)?;
    if x.len == 0 || bytchk == 0 {
        return Ok(Vec::new());
    }
    let _r = lu.lock_range(x.lba, x.len, false)?;
    if bytchk == 1 {
        let data = data_blocks(cmd, x.len, bs)?;
        let medium = read_blocks(lu, x.lba, data.len() as u64 / bs)?;
        if let Some(off) = first_mismatch(data, &medium) {
            return Err(miscompare(off));
        }
    } else {
        let pattern = cmd.data_out.slice(0, bs as usize);
        if (pattern.len() as u64) < bs {
            return Err(SenseReason::InvalidFieldInInformationUnit.into());
        }
        let medium = read_blocks(lu, x.lba, x.len)?;
        for (i, blk) in medium.chunks(bs as usize).enumerate() {
            if let Some(off) = first_mismatch(pattern, blk) {
                return Err(miscompare(i * bs as usize + off));
            }
        }
    }
    Ok(Vec::new())
}

/// WRITE AND VERIFY(10/12/16) (SBC-4 §5.37–§5.39): write, read back, and with BYTCHK 01b
/// compare.
pub fn write_and_verify(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let x = decode(cmd.cdb);
    let bs = u64::from(lu.block_size());
    let bytchk = (cmd.cdb.u8(1) >> 1) & 0x03;
    cmd.expect_out(x.len * bs);
    // SBC-4 §5.37: BYTCHK 10b and 11b are reserved for WRITE AND VERIFY.
    if bytchk > 1 {
        return Err(bad_cdb(1, Some(2)));
    }
    let data = checked_write_data(cmd, lu, &x, bs)?;
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let _w = lu.lock_range(x.lba, data.len() as u64 / bs, true)?;
    write_blocks(lu, x.lba, data)?;
    flush_if(lu, false)?;
    let back = read_blocks(lu, x.lba, data.len() as u64 / bs)?;
    if bytchk == 1 {
        if let Some(off) = first_mismatch(data, &back) {
            return Err(miscompare(off));
        }
    }
    Ok(Vec::new())
}

/// LBA and block count of SYNCHRONIZE CACHE / PRE-FETCH (10 and 16).
fn lba_count(c: Bytes) -> (u64, u64) {
    if c.u8(0) >> 5 == 4 {
        (c.be64(2), u64::from(c.be32(10)))
    } else {
        (u64::from(c.be32(2)), u64::from(c.be16(7)))
    }
}

/// SYNCHRONIZE CACHE(10/16) (SBC-4 §5.26, §5.27). Zero blocks means "to the end"; the whole
/// backstore is flushed either way.
pub fn synchronize_cache(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let (lba, count) = lba_count(cmd.cdb);
    lu.check_ready()?;
    check_range(lu, lba, count)?;
    flush(lu)?;
    Ok(Vec::new())
}

/// PRE-FETCH(10/16) (SBC-4 §5.11, §5.12): nothing to stage; GOOD (not CONDITION MET, which
/// would promise the blocks are now cached).
pub fn pre_fetch(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let (lba, count) = lba_count(cmd.cdb);
    lu.check_ready()?;
    check_range(lu, lba, count)?;
    Ok(Vec::new())
}

/// READ CAPACITY(10) (SBC-4 §5.20).
pub fn read_capacity10(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    // SBC-3 §5.15: with PMI = 0 the LOGICAL BLOCK ADDRESS must be zero (both obsolete in SBC-4).
    if !cmd.cdb.bit(8, 0) && cmd.cdb.be32(2) != 0 {
        return Err(bad_cdb(2, None));
    }
    lu.check_ready()?;
    let last = lu.num_blocks().saturating_sub(1);
    // SBC-4 §5.20.2: a last LBA that does not fit is reported as FFFFFFFFh (use the 16-byte
    // command).
    let last = u32::try_from(last)
        .ok()
        .filter(|&v| v != u32::MAX)
        .unwrap_or(u32::MAX);
    let mut out = last.to_be_bytes().to_vec();
    out.extend_from_slice(&lu.block_size().to_be_bytes());
    Ok(out)
}

/// READ CAPACITY(16) (SBC-4 §5.21).
pub fn read_capacity16(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    if !cmd.cdb.bit(14, 0) && cmd.cdb.be64(2) != 0 {
        return Err(bad_cdb(2, None));
    }
    lu.check_ready()?;
    let alloc = cmd.cdb.be32(10) as usize;
    let mut out = vec![0u8; 32];
    out[0..8].copy_from_slice(&lu.num_blocks().saturating_sub(1).to_be_bytes());
    out[8..12].copy_from_slice(&lu.block_size().to_be_bytes());
    // Byte 12: no protection information. Byte 13: P_I_EXPONENT 0, LOGICAL BLOCKS PER
    // PHYSICAL BLOCK EXPONENT (SBC-4 §5.21.2). Byte 14: LBPME, LBPRZ; LOWEST ALIGNED LBA 0.
    out[13] = lu.lbppb_exponent() & 0x0F;
    if lu.thin() {
        out[14] = 0x80 | 0x40;
    }
    Ok(clip(out, alloc))
}

/// PROVISIONING STATUS values (SBC-4 §5.8.2 table): 0h mapped (or unknown), 1h deallocated.
const LBA_MAPPED: u8 = 0;
const LBA_DEALLOCATED: u8 = 1;
/// Descriptors one GET LBA STATUS returns at most (bounds the backstore queries one command
/// makes).
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// The blocks from `lba` that share one provisioning status: (end LBA, status). A block that is
/// only partly deallocated (a hole smaller than a logical block) counts as mapped.
fn lba_run(lu: &LogicalUnit, lba: u64) -> Result<(u64, u8), Fail> {
    let bs = u64::from(lu.block_size());
    let num = lu.num_blocks();
    let ext = lu
        .backstore()
        .extent_at(lba * bs)
        .map_err(|e| io_fail("extent query", SenseReason::UnrecoveredReadError, &e))?;
    let Some(e) = ext else {
        // The backstore cannot tell: "mapped or unknown" is always a true answer.
        return Ok((num, LBA_MAPPED));
    };
    let end_byte = e.offset.saturating_add(e.len);
    let run = if e.mapped {
        (end_byte.div_ceil(bs), LBA_MAPPED)
    } else if end_byte / bs > lba {
        (end_byte / bs, LBA_DEALLOCATED)
    } else {
        (lba + 1, LBA_MAPPED)
    };
    Ok((run.0.clamp(lba + 1, num), run.1))
}

/// GET LBA STATUS (SBC-4 §5.8), answered from the backstore's holes and data (`extent_at`):
/// descriptors from STARTING LOGICAL BLOCK ADDRESS on, adjacent runs of one status merged, as
/// many as the ALLOCATION LENGTH holds (at least one, at most 64).
pub fn get_lba_status(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let lba = cmd.cdb.be64(2);
    let alloc = cmd.cdb.be32(10) as usize;
    lu.check_ready()?;
    let num = lu.num_blocks();
    // SBC-4 §5.8.1: a STARTING LOGICAL BLOCK ADDRESS beyond the last LBA is out of range.
    if lba >= num {
        return Err(SenseReason::LbaOutOfRange.into());
    }
    let room = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut descs: Vec<(u64, u64, u8)> = Vec::new();
    let mut cur = lba;
    while cur < num {
        let (end, status) = lba_run(lu, cur)?;
        let full = descs.len() == room;
        match descs.last_mut() {
            // NUMBER OF LOGICAL BLOCKS is 32 bits: a longer run takes several descriptors.
            Some(last) if last.2 == status && last.1 + (end - cur) <= u64::from(u32::MAX) => {
                last.1 += end - cur;
                cur = end;
            }
            _ if full => break,
            _ => {
                let n = (end - cur).min(u64::from(u32::MAX));
                descs.push((cur, n, status));
                cur += n;
            }
        }
    }
    let mut out = Vec::with_capacity(8 + 16 * descs.len());
    out.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes()); // PARAMETER DATA LENGTH
    out.extend_from_slice(&[0; 4]);
    for (l, n, status) in descs {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.extend_from_slice(&[status, 0, 0, 0]);
    }
    Ok(clip(out, alloc))
}

/// READ DEFECT DATA(10/12) (SBC-4 §5.19, §5.20): the defect lists are empty.
pub fn read_defect_data(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    lu.check_ready()?;
    if c.u8(0) == 0x37 {
        let alloc = usize::from(c.be16(7));
        // PLISTV / GLISTV echo what was asked for (the lists exist, empty); same format.
        Ok(clip(vec![0, c.u8(2) & 0x1F, 0, 0], alloc))
    } else {
        let alloc = c.be32(6) as usize;
        Ok(clip(vec![0, c.u8(1) & 0x1F, 0, 0, 0, 0, 0, 0], alloc))
    }
}

/// WRITE SAME(10/16) (SBC-4 §5.47, §5.48). With UNMAP on a thin LU the range is deallocated
/// whatever the data block holds (it then reads back as zeroes, LBPRZ = 1): SBC-4 §4.7.3.3 lets
/// the device server deallocate instead of writing, and initiators (libiscsi's
/// `test_writesame10_unmap_until_end` sends an FFh block with UNMAP = 1) expect it to. With
/// ANCHOR as well the range is anchored instead (ANC_SUP = 1 on thin LUs). PBDATA and LBDATA
/// are refused by the opcode table.
pub fn write_same(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let sixteen = c.u8(0) == 0x93;
    let (lba, nlb, nlb_off) = if sixteen {
        (c.be64(2), u64::from(c.be32(10)), 10)
    } else {
        (u64::from(c.be32(2)), u64::from(c.be16(7)), 7)
    };
    let unmap = c.bit(1, 3);
    let anchor_bit = c.bit(1, 4);
    let ndob = sixteen && c.bit(1, 0);
    let bs = u64::from(lu.block_size());
    cmd.expect_out(if ndob { 0 } else { bs });
    lu.check_ready()?;

    let count = if nlb == 0 {
        // SBC-4 §5.47 with WSNZ = 0: NUMBER OF LOGICAL BLOCKS 0 means through the last LBA.
        let num = lu.num_blocks();
        if lba > num {
            return Err(SenseReason::LbaOutOfRange.into());
        }
        num - lba
    } else {
        check_range(lu, lba, nlb)?;
        nlb
    };
    // SBC-4 §6.6.4: more than MAXIMUM WRITE SAME LENGTH is an invalid field.
    if count > limits::MAX_WRITE_SAME_BLOCKS {
        return Err(bad_cdb(nlb_off, None));
    }
    check_writable(cmd, lu)?;
    // SBC-4 §4.7.3.3: UNMAP only where logical block provisioning is on (LBPWS/LBPWS10 = 1).
    if unmap && !lu.thin() {
        return Err(bad_cdb(1, Some(3)));
    }
    // SBC-4 §5.48: ANCHOR needs ANC_SUP = 1 (thin LUs here) and UNMAP = 1.
    if anchor_bit && (!lu.thin() || !unmap) {
        return Err(bad_cdb(1, Some(4)));
    }
    // SBC-4 §5.47: the Data-Out Buffer holds exactly one logical block (none with NDOB). With
    // any other amount the initiator and the CDB disagree on the layout: refuse rather than
    // guess.
    let sent = cmd.data_out.len() as u64;
    if (!ndob && sent != bs) || (ndob && sent != 0) {
        return Err(SenseReason::InvalidFieldInInformationUnit.into());
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let block = if ndob {
        vec![0u8; bs as usize]
    } else {
        cmd.data_out.slice(0, bs as usize).to_vec()
    };
    let _w = lu.lock_range(lba, count, true)?;
    if anchor_bit {
        anchor(lu, lba, count)?;
    } else if unmap {
        deallocate(lu, lba, count)?;
    } else {
        write_pattern(lu, lba, count, &block)?;
    }
    flush_if(lu, false)?;
    Ok(Vec::new())
}

/// UNMAP (SBC-4 §5.32). Every descriptor is validated before anything is deallocated.
pub fn unmap(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let len = usize::from(cmd.cdb.be16(7));
    // SBC-4 §5.32.1: ANCHOR anchors the ranges instead of deallocating them (ANC_SUP = 1).
    let anchored = cmd.cdb.bit(1, 0);
    cmd.expect_out(len as u64);
    lu.check_ready()?;
    check_writable(cmd, lu)?;
    // SBC-4 §5.32.1: PARAMETER LIST LENGTH 0 is not an error.
    if len == 0 {
        return Ok(Vec::new());
    }
    let list = Bytes(cmd.data_out.slice(0, len));
    // SBC-4 §5.32.1: too short to hold the 8-byte header.
    if list.len() < 8 {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let data_len = usize::from(list.be16(0));
    let bd_len = usize::from(list.be16(2));
    // SBC-4 §5.32.2: the header's lengths must describe data that was transferred.
    if data_len + 2 > list.len() || bd_len + 8 > list.len() {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    // A trailing partial descriptor is ignored (SBC-4 §5.32.2).
    let n = bd_len / 16;
    if n > limits::MAX_UNMAP_DESCRIPTORS as usize {
        return Err(bad_param(2, None));
    }
    let mut ranges = Vec::with_capacity(n);
    let mut total: u64 = 0;
    for i in 0..n {
        let o = 8 + 16 * i;
        let lba = list.be64(o);
        let count = u64::from(list.be32(o + 8));
        check_range(lu, lba, count)?;
        total += count;
        if total > u64::from(limits::MAX_UNMAP_LBA_COUNT) {
            return Err(bad_param((o + 8) as u16, None));
        }
        if count > 0 {
            ranges.push((lba, count));
        }
    }
    for (lba, count) in ranges {
        let _w = lu.lock_range(lba, count, true)?;
        if anchored {
            anchor(lu, lba, count)?;
        } else {
            deallocate(lu, lba, count)?;
        }
    }
    Ok(Vec::new())
}

/// COMPARE AND WRITE (SBC-4 §5.3): under the LU's exclusive write lock, compare NUMBER OF
/// LOGICAL BLOCKS blocks with the first half of data-out and, if equal, write the second half.
pub fn compare_and_write(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let lba = c.be64(2);
    let nlb = u64::from(c.u8(13));
    let fua = c.bit(1, 3);
    let bs = u64::from(lu.block_size());
    let need = 2 * nlb * bs;
    cmd.expect_out(need);
    lu.check_ready()?;
    if nlb > u64::from(limits::MAX_COMPARE_AND_WRITE_BLOCKS) {
        return Err(bad_cdb(13, None));
    }
    if nlb == 0 {
        // SBC-4 §5.3: zero blocks is not an error — but data-out sent along with it means the
        // initiator's idea of the length (e.g. 256 blocks wrapped to 0 in the one-byte field)
        // differs from the CDB's; refuse rather than silently drop it.
        if !cmd.data_out.is_empty() {
            return Err(bad_cdb(13, None));
        }
        return Ok(Vec::new());
    }
    check_range(lu, lba, nlb)?;
    check_writable(cmd, lu)?;
    // SBC-4 §5.3: the Data-Out Buffer is the verify instance followed by the write instance,
    // each NUMBER OF LOGICAL BLOCKS long. Any other length leaves the split ambiguous.
    if cmd.data_out.len() as u64 != need {
        return Err(SenseReason::InvalidFieldInInformationUnit.into());
    }
    let half = (nlb * bs) as usize;
    let verify = cmd.data_out.slice(0, half);
    let data = cmd.data_out.slice(half, half);
    // The range lock makes it indivisible against this node's commands; the backstore makes
    // it so against other nodes sharing the medium (an RBD image: see backstore's rbd.rs).
    let _w = lu.lock_range(lba, nlb, true)?;
    match lu.backstore().compare_and_write(lba * bs, verify, data) {
        // SBC-4 §5.3: INFORMATION = offset of the first byte that did not match.
        Ok(Some(off)) => return Err(miscompare(off as usize)),
        Ok(None) => {}
        Err(e) => return Err(io_fail("compare and write", SenseReason::WriteError, &e)),
    }
    flush_if(lu, fua)?;
    Ok(Vec::new())
}

/// ORWRITE(16) (SBC-4 §5.9): OR the data-out into the blocks, as one indivisible
/// read-modify-write under the range's exclusive lock. ORPROTECT ≠ 0 (no protection
/// information) is refused by the opcode table; DPO and FUA are honoured as for WRITE.
pub fn orwrite(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let x = decode(cmd.cdb);
    let bs = u64::from(lu.block_size());
    cmd.expect_out(x.len * bs);
    let data = checked_write_data(cmd, lu, &x, bs)?;
    if data.is_empty() {
        // SBC-4 §5.9: TRANSFER LENGTH 0 is not an error.
        return Ok(Vec::new());
    }
    let blocks = data.len() as u64 / bs;
    let _w = lu.lock_range(x.lba, blocks, true)?;
    let mut medium = read_blocks(lu, x.lba, blocks)?;
    for (m, d) in medium.iter_mut().zip(data) {
        *m |= d;
    }
    write_blocks(lu, x.lba, &medium)?;
    flush_if(lu, x.fua)?;
    Ok(Vec::new())
}

/// WRITE ATOMIC(16) (SBC-4 §4.29, §5.48): the blocks are written as one unit: no command
/// reading or writing any of them sees a mix of old and new data (the range is held
/// exclusively for the whole write). Limits from the Block Limits VPD page: MAXIMUM ATOMIC
/// TRANSFER LENGTH; no alignment, granularity or boundary restrictions (ATOMIC BOUNDARY must be
/// zero, as MAXIMUM ATOMIC BOUNDARY SIZE is zero).
pub fn write_atomic(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let lba = c.be64(2);
    let boundary = c.be16(10);
    let len = u64::from(c.be16(12));
    let fua = c.bit(1, 3);
    let bs = u64::from(lu.block_size());
    cmd.expect_out(len * bs);
    lu.check_ready()?;
    check_range(lu, lba, len)?;
    // SBC-4 §4.29.2: a non-zero ATOMIC BOUNDARY needs MAXIMUM ATOMIC BOUNDARY SIZE > 0.
    if boundary != 0 {
        return Err(bad_cdb(10, None));
    }
    // SBC-4 §4.29.2: more than MAXIMUM ATOMIC TRANSFER LENGTH is an invalid field.
    if len > u64::from(lu.max_atomic_blocks()) {
        return Err(bad_cdb(12, None));
    }
    check_writable(cmd, lu)?;
    // An atomic write of part of its blocks is no atomic write: all the data or nothing.
    let need = len * bs;
    if (cmd.data_out.len() as u64) < need {
        return Err(SenseReason::InvalidFieldInInformationUnit.into());
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let _w = lu.lock_range(lba, len, true)?;
    write_blocks(lu, lba, cmd.data_out.slice(0, need as usize))?;
    flush_if(lu, fua)?;
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_layouts() {
        let r6 = [0x08, 0x1F, 0xFF, 0xFE, 0x00, 0x00];
        assert_eq!(
            decode(Bytes(&r6)),
            Xfer {
                lba: 0x1F_FFFE,
                len: 256,
                len_off: 4,
                fua: false
            }
        );
        let r10 = [0x28, 0x08, 0, 0, 0x12, 0x34, 0, 0x00, 0x10, 0];
        assert_eq!(
            decode(Bytes(&r10)),
            Xfer {
                lba: 0x1234,
                len: 16,
                len_off: 7,
                fua: true
            }
        );
        let r12 = [0xA8, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0];
        assert_eq!(
            decode(Bytes(&r12)),
            Xfer {
                lba: 1,
                len: 256,
                len_off: 6,
                fua: false
            }
        );
        let mut r16 = [0u8; 16];
        r16[0] = 0x88;
        r16[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        r16[10..14].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(Bytes(&r16)),
            Xfer {
                lba: u64::MAX,
                len: 7,
                len_off: 10,
                fua: false
            }
        );
    }

    #[test]
    fn mismatch_offsets() {
        assert_eq!(first_mismatch(b"abc", b"abc"), None);
        assert_eq!(first_mismatch(b"abc", b"abd"), Some(2));
    }
}
