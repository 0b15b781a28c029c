//! CRC32C header and data digests (RFC 7143 §13.1; the polynomial of RFC 3385). The `crc32c`
//! crate uses the SSE4.2 / ARMv8 CRC32 instructions when the CPU has them.

/// The digest of `bytes` as it is compared and sent: the CRC32C value, transmitted
/// least-significant byte first (the byte order every initiator uses on the wire).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continue a digest over more bytes (for data segment plus padding).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Digest bytes as they appear on the wire.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Read a digest off the wire.
pub fn from_wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // RFC 3720 appendix B.4 / the standard CRC32C check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        // RFC 3720 B.4: 32 bytes of zeroes -> aa 36 91 8a on the wire.
        assert_eq!(to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        // 32 bytes of 0xff -> 43 ab a8 62.
        assert_eq!(to_wire(crc32c(&[0xffu8; 32])), [0x43, 0xab, 0xa8, 0x62]);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(to_wire(crc32c(&inc)), [0x4e, 0x79, 0xdd, 0x46]);
    }

    #[test]
    fn append_matches_whole() {
        let a = b"hello ";
        let b = b"world";
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(b"hello world"));
    }
}
