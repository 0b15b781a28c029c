//! Serial number arithmetic for CmdSN/StatSN/DataSN (RFC 7143 §4.2.2.1 → RFC 1982, SERIAL_BITS 32).

/// `a < b` in 32-bit serial arithmetic.
pub fn lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `a <= b` in 32-bit serial arithmetic.
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// `lo <= x <= hi` in serial arithmetic (RFC 7143 §4.2.2.1 command window).
pub fn in_window(x: u32, lo: u32, hi: u32) -> bool {
    le(lo, x) && le(x, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn wraps() {
        assert!(lt(1, 2));
        assert!(lt(0xffff_fff0, 5));
        assert!(!lt(5, 0xffff_fff0));
        assert!(le(7, 7));
        assert!(in_window(0, 0xffff_ffff, 10));
        assert!(!in_window(11, 0xffff_ffff, 10));
    }
}
