//! SANITIZE (SBC-4 §4.11 sanitize operations, §5.30 SANITIZE command).
//!
//! What a Ferrite LU can honour:
//! * OVERWRITE (01h): every block is overwritten with the initialization pattern, as many
//!   passes as OVERWRITE COUNT asks, the pattern inverted between passes when INVERT is set,
//!   each pass flushed to the backstore.
//! * BLOCK ERASE (02h): only on thin LUs (LBPME = 1): every block is deallocated, so the
//!   backing file really gives its space back and every block reads as zero (LBPRZ = 1). The
//!   Block Device Characteristics page says WABEREQ = 01b: reads after it succeed.
//! * EXIT FAILURE MODE (1Fh): leaves the state a failed sanitize started with AUSE = 1 left.
//! * CRYPTO ERASE (03h): only on LUs whose backstore encrypts every block (an encrypted LUN):
//!   the data key is replaced by a new one and the old one forgotten (SBC-4 §4.11.4), which
//!   takes a moment whatever the size. Blocks written before read as noise, deallocated ones
//!   still as zeroes; the Block Device Characteristics page says WACEREQ = 01b. Elsewhere it
//!   is an unknown service action (INVALID FIELD IN CDB), and REPORT SUPPORTED OPERATION CODES
//!   does not list it.
//!
//! The operation itself — in the background, outliving its command, journaled across
//! restarts — is `medium.rs`'s.

use crate::cdb::{bad_cdb, bad_param, Bytes, CmdResult, Fail};
use crate::cmd::Cmd;
use crate::lu::{LogicalUnit, OpKind};
use crate::medium::{journal_state, launch, Operation, Overwrite, Work};
use crate::sbc::check_writable;
use crate::sense::SenseReason;

/// SANITIZE service actions (SBC-4 §5.30.1 table).
pub mod sa {
    pub const OVERWRITE: u8 = 0x01;
    pub const BLOCK_ERASE: u8 = 0x02;
    pub const CRYPTO_ERASE: u8 = 0x03;
    pub const EXIT_FAILURE_MODE: u8 = 0x1F;
}

/// Parse the OVERWRITE parameter list (SBC-4 §5.30.2.2) of `len` bytes for blocks of `bs`
/// bytes.
fn parse_overwrite(list: Bytes, len: usize, bs: usize) -> Result<Overwrite, Fail> {
    // SBC-4 §5.30.2.1: PARAMETER LIST LENGTH must be more than 4 and at most the logical
    // block length plus 4.
    if len < 5 || len > bs + 4 {
        return Err(bad_cdb(7, None));
    }
    if list.len() < len {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let b0 = list.u8(0);
    let invert = b0 & 0x80 != 0;
    // TEST field: 00b is the only value without vendor-specific meaning.
    if b0 & 0x60 != 0 {
        return Err(bad_param(0, Some(6)));
    }
    let passes = b0 & 0x1F;
    // SBC-4 §5.30.2.2: OVERWRITE COUNT 0 is an invalid field.
    if passes == 0 {
        return Err(bad_param(0, Some(4)));
    }
    let plen = usize::from(list.be16(2));
    // INITIALIZATION PATTERN LENGTH: 1 .. logical block length, and inside the list.
    if plen == 0 || plen > bs {
        return Err(bad_param(2, None));
    }
    if 4 + plen > len {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let pattern = list.slice(4, plen);
    let block = pattern.iter().copied().cycle().take(bs).collect();
    Ok(Overwrite {
        invert,
        passes,
        block,
    })
}

/// SANITIZE. Service actions are split in the opcode table; one handler serves them all.
pub fn sanitize(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let immed = c.bit(1, 7);
    let ause = c.bit(1, 5);
    let action = c.u8(1) & 0x1F;
    let len = usize::from(c.be16(7));
    cmd.expect_out(len as u64);
    // A failed sanitize must be repeatable, so only the medium itself is checked here.
    if !lu.medium_loaded() {
        return Err(SenseReason::MediumNotPresent.into());
    }
    let bs = lu.block_size() as usize;
    let work = match action {
        sa::EXIT_FAILURE_MODE => {
            // SBC-4 §5.30.2.5: PARAMETER LIST LENGTH must be zero.
            if len != 0 {
                return Err(bad_cdb(7, None));
            }
            // SBC-4 §5.30.1: a sanitize that failed with AUSE = 0 is only left by another
            // sanitize; EXIT FAILURE MODE then is an invalid field.
            if !lu.exit_sanitize_failure() {
                return Err(bad_cdb(1, Some(4)));
            }
            journal_state(lu);
            return Ok(Vec::new());
        }
        sa::BLOCK_ERASE => {
            // SBC-4 §5.30.2.3: PARAMETER LIST LENGTH must be zero.
            if len != 0 {
                return Err(bad_cdb(7, None));
            }
            // Only a thin LU can erase by deallocating (the table hides it elsewhere).
            if !lu.thin() {
                return Err(bad_cdb(1, Some(4)));
            }
            Work::Deallocate
        }
        sa::CRYPTO_ERASE => {
            // SBC-4 §5.30.2.4: PARAMETER LIST LENGTH must be zero.
            if len != 0 {
                return Err(bad_cdb(7, None));
            }
            // Only an encrypted LU has a key to change (the table hides it elsewhere).
            if !lu.encrypted() {
                return Err(bad_cdb(1, Some(4)));
            }
            Work::CryptoErase
        }
        sa::OVERWRITE => {
            Work::Overwrite(parse_overwrite(Bytes(cmd.data_out.slice(0, len)), len, bs)?)
        }
        _ => return Err(bad_cdb(1, Some(4))),
    };
    check_writable(cmd, lu)?;
    let op = Operation {
        kind: OpKind::Sanitize,
        work,
        ause,
    };
    launch(cmd, lu, op, immed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(b0: u8, plen: u16, pattern: &[u8]) -> Vec<u8> {
        let mut v = vec![b0, 0];
        v.extend_from_slice(&plen.to_be_bytes());
        v.extend_from_slice(pattern);
        v
    }

    #[test]
    fn overwrite_list_rules() {
        let l = list(0x01, 4, b"abcd");
        let o = parse_overwrite(Bytes(&l), l.len(), 8).unwrap();
        assert_eq!(o.block, b"abcdabcd");
        assert_eq!((o.invert, o.passes), (false, 1));
        let l = list(0x83, 3, b"xyz");
        let o = parse_overwrite(Bytes(&l), l.len(), 8).unwrap();
        assert_eq!(o.block, b"xyzxyzxy");
        assert_eq!((o.invert, o.passes), (true, 3));
        // Length bounds are CDB errors; pattern errors are parameter list errors.
        for len in 0..5 {
            assert_eq!(parse_overwrite(Bytes(&l), len, 8), Err(bad_cdb(7, None)));
        }
        assert_eq!(parse_overwrite(Bytes(&l), 13, 8), Err(bad_cdb(7, None)));
        let zero_count = list(0x00, 4, b"abcd");
        assert_eq!(
            parse_overwrite(Bytes(&zero_count), 8, 8),
            Err(bad_param(0, Some(4)))
        );
        let long = list(0x01, 9, b"abcdefghi");
        assert_eq!(parse_overwrite(Bytes(&long), 13, 8), Err(bad_cdb(7, None)));
        let long = list(0x01, 9, b"abcdefgh");
        assert_eq!(
            parse_overwrite(Bytes(&long), 12, 8),
            Err(bad_param(2, None))
        );
        let none = list(0x01, 0, b"abcd");
        assert_eq!(parse_overwrite(Bytes(&none), 8, 8), Err(bad_param(2, None)));
        let test = list(0x21, 4, b"abcd");
        assert_eq!(
            parse_overwrite(Bytes(&test), 8, 8),
            Err(bad_param(0, Some(6)))
        );
        // Shorter data-out than the list length claims.
        assert_eq!(
            parse_overwrite(Bytes(&l[..5]), 7, 8),
            Err(SenseReason::ParameterListLengthError.into())
        );
    }
}
