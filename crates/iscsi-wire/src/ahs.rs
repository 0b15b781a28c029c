//! Additional Header Segments (RFC 7143 §11.2.2).

/// AHS type codes (RFC 7143 §11.2.2.3).
pub const AHS_EXTENDED_CDB: u8 = 1;
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

/// One parsed AHS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ahs<'a> {
    /// Bytes 16.. of a CDB longer than 16 bytes (RFC 7143 §11.2.2.3.1).
    ExtendedCdb(&'a [u8]),
    /// Expected Bidirectional Read Data Length (RFC 7143 §11.2.2.3.2).
    BidiReadLength(u32),
    Other {
        ahs_type: u8,
        data: &'a [u8],
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AhsError {
    /// An AHSLength runs past the end of the TotalAHSLength area.
    Truncated,
    /// A bidirectional-read AHS whose length is not 5.
    BadLength,
}

/// Iterate the AHSs in `buf` (the whole TotalAHSLength area). Bounded by `buf`.
pub fn parse(buf: &[u8]) -> Result<Vec<Ahs<'_>>, AhsError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        if buf.len() - at < 4 {
            return Err(AhsError::Truncated);
        }
        let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
        let ty = buf[at + 2];
        // AHSLength counts the bytes from the type-specific byte on (RFC 7143 §11.2.2.2).
        let body_start = at + 3;
        let body_end = body_start.checked_add(len).ok_or(AhsError::Truncated)?;
        if body_end > buf.len() {
            return Err(AhsError::Truncated);
        }
        let body = &buf[body_start..body_end];
        out.push(match ty {
            AHS_EXTENDED_CDB => ExtendedCdbBody::cdb(body),
            AHS_BIDI_READ_LENGTH => {
                if len != 5 {
                    return Err(AhsError::BadLength);
                }
                Ahs::BidiReadLength(u32::from_be_bytes([body[1], body[2], body[3], body[4]]))
            }
            _ => Ahs::Other {
                ahs_type: ty,
                data: body,
            },
        });
        at = crate::pad4(body_end);
    }
    Ok(out)
}

struct ExtendedCdbBody;
impl ExtendedCdbBody {
    /// The first body byte is reserved; the CDB continuation follows.
    fn cdb(body: &[u8]) -> Ahs<'_> {
        Ahs::ExtendedCdb(body.get(1..).unwrap_or(&[]))
    }
}

/// Encode an extended-CDB AHS for the bytes of `cdb` beyond the first 16.
pub fn encode_extended_cdb(cdb_tail: &[u8], out: &mut Vec<u8>) {
    let len = (cdb_tail.len() + 1) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(AHS_EXTENDED_CDB);
    out.push(0);
    out.extend_from_slice(cdb_tail);
    out.resize(crate::pad4(out.len()), 0);
}

/// Encode a bidirectional read length AHS.
pub fn encode_bidi_read_length(len: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&5u16.to_be_bytes());
    out.push(AHS_BIDI_READ_LENGTH);
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_extended_cdb(
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            &mut buf,
        );
        encode_bidi_read_length(4096, &mut buf);
        assert_eq!(buf.len() % 4, 0);
        let v = parse(&buf).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            Ahs::ExtendedCdb(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
        );
        assert_eq!(v[1], Ahs::BidiReadLength(4096));
    }

    #[test]
    fn truncated() {
        assert_eq!(parse(&[0, 9, 1, 0, 1, 2, 3, 4]), Err(AhsError::Truncated));
        assert_eq!(parse(&[0, 9, 1]), Err(AhsError::Truncated));
        assert_eq!(parse(&[0xff, 0xff, 1, 0]), Err(AhsError::Truncated));
        assert_eq!(parse(&[0, 3, 2, 0, 0, 0, 0, 0]), Err(AhsError::BadLength));
    }
}
