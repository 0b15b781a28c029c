//! Checked byte views over peer-controlled input (CDBs and parameter lists) and the result
//! types every command handler returns.
//!
//! [`Bytes`] never panics: a read past the end yields zeroes. Dispatch checks the CDB length
//! against the opcode table once, so handlers read fields at fixed offsets without a chance of
//! panicking even if a table entry were wrong.

use crate::sense::{Sense, SenseReason};
use crate::ScsiStatus;

/// A read-only view that answers zero beyond its end.
#[derive(Clone, Copy, Debug)]
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// Bit `bit` of byte `i`.
    pub fn bit(&self, i: usize, bit: u8) -> bool {
        self.u8(i) & (1 << bit) != 0
    }

    /// Big-endian unsigned integer of `n` bytes (n ≤ 8) starting at `i`.
    pub fn be(&self, i: usize, n: usize) -> u64 {
        (0..n.min(8)).fold(0u64, |acc, k| {
            (acc << 8) | u64::from(self.u8(i.saturating_add(k)))
        })
    }

    pub fn be16(&self, i: usize) -> u16 {
        self.be(i, 2) as u16
    }

    pub fn be24(&self, i: usize) -> u32 {
        self.be(i, 3) as u32
    }

    pub fn be32(&self, i: usize) -> u32 {
        self.be(i, 4) as u32
    }

    pub fn be64(&self, i: usize) -> u64 {
        self.be(i, 8)
    }

    /// The sub-slice `[start, start+len)`, clipped to what exists.
    pub fn slice(&self, start: usize, len: usize) -> &'a [u8] {
        let s = start.min(self.0.len());
        let e = start.saturating_add(len).min(self.0.len());
        &self.0[s..e]
    }
}

/// How a command that did not complete with GOOD ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// CHECK CONDITION with this sense data.
    Check(Sense),
    /// A status without sense data (RESERVATION CONFLICT, BUSY, ...).
    Status(ScsiStatus),
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s)
    }
}

impl From<SenseReason> for Fail {
    fn from(r: SenseReason) -> Self {
        Fail::Check(Sense::new(r))
    }
}

/// What a handler returns: the data-in bytes on GOOD.
pub type CmdResult = Result<Vec<u8>, Fail>;

/// INVALID FIELD IN CDB at `byte` / `bit`.
pub fn bad_cdb(byte: u16, bit: Option<u8>) -> Fail {
    Fail::Check(Sense::invalid_cdb(byte, bit))
}

/// INVALID FIELD IN PARAMETER LIST at `byte` / `bit`.
pub fn bad_param(byte: u16, bit: Option<u8>) -> Fail {
    Fail::Check(Sense::invalid_param(byte, bit))
}

/// Cut `data` to the CDB's ALLOCATION LENGTH (SPC-4 §4.2.5.6: the device server transfers
/// no more than the allocation length and that is not an error).
pub fn clip(mut data: Vec<u8>, alloc_len: usize) -> Vec<u8> {
    data.truncate(alloc_len);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_end_are_zero() {
        let b = Bytes(&[0x12, 0x34, 0x56]);
        assert_eq!(b.u8(0), 0x12);
        assert_eq!(b.u8(3), 0);
        assert_eq!(b.be16(1), 0x3456);
        assert_eq!(b.be16(2), 0x5600);
        assert_eq!(b.be32(0), 0x1234_5600);
        assert_eq!(b.be24(0), 0x12_3456);
        assert_eq!(b.be64(usize::MAX), 0);
        assert!(b.bit(0, 1));
        assert!(!b.bit(0, 0));
        assert_eq!(b.slice(1, 10), &[0x34, 0x56]);
        assert_eq!(b.slice(usize::MAX, usize::MAX), &[] as &[u8]);
    }

    #[test]
    fn be64_full() {
        let b = Bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(b.be64(0), 0x0102_0304_0506_0708);
        assert_eq!(b.be64(1), 0x0203_0405_0607_0809);
    }

    #[test]
    fn clip_to_allocation_length() {
        assert_eq!(clip(vec![1, 2, 3], 2), vec![1, 2]);
        assert_eq!(clip(vec![1, 2, 3], 10), vec![1, 2, 3]);
        assert_eq!(clip(vec![1, 2, 3], 0), Vec::<u8>::new());
    }
}
