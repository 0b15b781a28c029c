//! PDU framing (RFC 7143 §11.1): BHS, AHS, optional header digest, data segment padded to 4
//! bytes, optional data digest. The decoder is sans-IO: hand it the bytes received so far.

use crate::digest;
use crate::header::{Common, Header, HeaderError};
use crate::{pad4, BHS_LEN};

/// A framed PDU whose digests (if enabled) have been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPdu {
    pub bhs: [u8; BHS_LEN],
    /// The TotalAHSLength area (multiple of 4 bytes).
    pub ahs: Vec<u8>,
    /// The data segment without padding.
    pub data: Vec<u8>,
}

impl RawPdu {
    pub fn common(&self) -> Common {
        Common::read(&self.bhs)
    }
    pub fn header(&self) -> Result<Header, HeaderError> {
        Header::parse(&self.bhs)
    }
}

/// Framing failures. `DataTooLong` leaves the byte stream unusable: the connection must be
/// dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header digest did not match: the BHS may be wrong, its lengths too. `consumed` is
    /// the length the (untrusted) BHS gives the PDU; at ErrorRecoveryLevel 0 the connection
    /// is dropped, above it the caller may skip that many bytes and trust the boundary again
    /// only if the next header checks out (RFC 7143 §7.8).
    HeaderDigest {
        expected: u32,
        received: u32,
        consumed: usize,
    },
    /// The data digest did not match. The PDU has been consumed (`consumed` bytes); answer with
    /// Reject / Data Digest Error and carry on (RFC 7143 §7.8).
    DataDigest { bhs: [u8; BHS_LEN], consumed: usize },
    /// DataSegmentLength above what we accept (RFC 7143 §13.12 MaxRecvDataSegmentLength).
    DataTooLong { len: u32, max: u32 },
}

/// Decoder settings; digests switch on after login negotiates them.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment accepted.
    pub max_data: u32,
}

impl Decoder {
    pub fn new(max_data: u32) -> Self {
        Decoder {
            header_digest: false,
            data_digest: false,
            max_data,
        }
    }

    /// Total bytes of the PDU whose BHS starts `buf`, once 48 bytes are present.
    pub fn frame_len(&self, bhs: &[u8; BHS_LEN]) -> Result<usize, FrameError> {
        let c = Common::read(bhs);
        if c.data_len > self.max_data {
            return Err(FrameError::DataTooLong {
                len: c.data_len,
                max: self.max_data,
            });
        }
        let mut n = BHS_LEN + c.ahs_words as usize * 4;
        if self.header_digest {
            n += 4;
        }
        n += pad4(c.data_len as usize);
        if self.data_digest && c.data_len > 0 {
            n += 4;
        }
        Ok(n)
    }

    /// Decode one PDU from the front of `buf`. `Ok(None)` means more bytes are needed.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(RawPdu, usize)>, FrameError> {
        let Some(head) = buf.get(..BHS_LEN) else {
            return Ok(None);
        };
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(head);
        let total = self.frame_len(&bhs)?;
        if buf.len() < total {
            return Ok(None);
        }
        let c = Common::read(&bhs);
        let ahs_end = BHS_LEN + c.ahs_words as usize * 4;
        let mut at = ahs_end;
        if self.header_digest {
            let expected = digest::crc32c(&buf[..ahs_end]);
            let received = digest::from_wire([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            if expected != received {
                return Err(FrameError::HeaderDigest {
                    expected,
                    received,
                    consumed: total,
                });
            }
            at += 4;
        }
        let dlen = c.data_len as usize;
        let padded = pad4(dlen);
        let data_start = at;
        at += padded;
        if self.data_digest && dlen > 0 {
            let expected = digest::crc32c(&buf[data_start..data_start + padded]);
            let received = digest::from_wire([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            at += 4;
            if expected != received {
                return Err(FrameError::DataDigest { bhs, consumed: at });
            }
        }
        debug_assert_eq!(at, total);
        let pdu = RawPdu {
            bhs,
            ahs: buf[BHS_LEN..ahs_end].to_vec(),
            data: buf[data_start..data_start + dlen].to_vec(),
        };
        Ok(Some((pdu, total)))
    }
}

/// Append the wire form of a PDU to `out`. `ahs` must be a multiple of 4 bytes (as the
/// encoders in [`crate::ahs`] produce); `data` is padded here.
pub fn encode(
    header: &Header,
    ahs: &[u8],
    data: &[u8],
    header_digest: bool,
    data_digest: bool,
    out: &mut Vec<u8>,
) {
    let mut bhs = header.emit();
    encode_bhs_lengths(&mut bhs, ahs.len(), data.len());
    let start = out.len();
    out.extend_from_slice(&bhs);
    out.extend_from_slice(ahs);
    if header_digest {
        let d = digest::crc32c(&out[start..]);
        out.extend_from_slice(&digest::to_wire(d));
    }
    if !data.is_empty() {
        let pad = pad4(data.len()) - data.len();
        out.extend_from_slice(data);
        out.extend_from_slice(&[0u8; 3][..pad]);
        if data_digest {
            let d = digest::crc32c(&out[out.len() - data.len() - pad..]);
            out.extend_from_slice(&digest::to_wire(d));
        }
    }
}

/// Write TotalAHSLength and DataSegmentLength into a BHS.
pub fn encode_bhs_lengths(bhs: &mut [u8; BHS_LEN], ahs_len: usize, data_len: usize) {
    debug_assert!(ahs_len.is_multiple_of(4) && ahs_len / 4 <= 255);
    debug_assert!(data_len <= crate::MAX_DATA_SEGMENT as usize);
    bhs[4] = (ahs_len / 4) as u8;
    let d = (data_len as u32).to_be_bytes();
    bhs[5..8].copy_from_slice(&d[1..4]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::*;

    fn nop(data_len: usize) -> (Header, Vec<u8>) {
        let h = Header::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 9,
            ttt: crate::RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 1,
        });
        (h, (0..data_len).map(|i| i as u8).collect())
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            for n in [0usize, 1, 3, 4, 5, 100] {
                let (h, data) = nop(n);
                let mut out = Vec::new();
                encode(&h, &[], &data, hd, dd, &mut out);
                let dec = Decoder {
                    header_digest: hd,
                    data_digest: dd,
                    max_data: 8192,
                };
                // Every strict prefix asks for more bytes.
                for cut in 0..out.len() {
                    assert_eq!(dec.decode(&out[..cut]), Ok(None));
                }
                let (pdu, used) = dec.decode(&out).unwrap().unwrap();
                assert_eq!(used, out.len());
                assert_eq!(pdu.data, data);
                assert_eq!(pdu.header().unwrap(), h);
            }
        }
    }

    #[test]
    fn digest_errors() {
        let (h, data) = nop(10);
        let mut out = Vec::new();
        encode(&h, &[], &data, true, true, &mut out);
        let dec = Decoder {
            header_digest: true,
            data_digest: true,
            max_data: 8192,
        };
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert!(matches!(
            dec.decode(&bad),
            Err(FrameError::HeaderDigest { .. })
        ));
        let mut bad = out.clone();
        bad[53] ^= 1;
        assert!(matches!(
            dec.decode(&bad),
            Err(FrameError::DataDigest { consumed, .. }) if consumed == out.len()
        ));
    }

    #[test]
    fn too_long() {
        let (h, data) = nop(100);
        let mut out = Vec::new();
        encode(&h, &[], &data, false, false, &mut out);
        let dec = Decoder::new(64);
        assert_eq!(
            dec.decode(&out),
            Err(FrameError::DataTooLong { len: 100, max: 64 })
        );
    }
}
