//! A byte stream → `frame::Decoder::decode`, repeatedly, as the connection driver does. The
//! first input byte chooses the digest settings and the data segment limit. Every decoded PDU
//! whose BHS parses is re-encoded with `frame::encode` and must decode to the same header, AHS
//! and data; every strict prefix of a frame must ask for more bytes.
#![no_main]

use iscsi_wire::frame::{self, Decoder, FrameError};
use iscsi_wire::{Header, BHS_LEN, MAX_DATA_SEGMENT};
use libfuzzer_sys::fuzz_target;

const LIMITS: [u32; 5] = [0, 4, 512, 8192, MAX_DATA_SEGMENT];

fuzz_target!(|input: &[u8]| {
    let Some((&flags, mut buf)) = input.split_first() else {
        return;
    };
    let dec = Decoder {
        header_digest: flags & 1 != 0,
        data_digest: flags & 2 != 0,
        max_data: LIMITS[(flags >> 2) as usize % LIMITS.len()],
    };
    // Bounded: each round consumes at least one BHS.
    while !buf.is_empty() {
        match dec.decode(buf) {
            Ok(None) => {
                if let Some(bhs) = buf.get(..BHS_LEN) {
                    let total = dec.frame_len(bhs.try_into().unwrap()).unwrap();
                    assert!(total > buf.len(), "Ok(None) although the frame is complete");
                }
                break;
            }
            Ok(Some((pdu, used))) => {
                assert!(used >= BHS_LEN && used <= buf.len());
                assert_eq!(used % 4, 0);
                assert!(pdu.data.len() <= dec.max_data as usize);
                assert_eq!(pdu.ahs.len() % 4, 0);
                // A strict prefix of a frame is never a frame.
                assert_eq!(dec.decode(&buf[..used - 1]), Ok(None));
                if let Ok(h) = Header::parse(&pdu.bhs) {
                    let mut out = Vec::new();
                    frame::encode(
                        &h,
                        &pdu.ahs,
                        &pdu.data,
                        dec.header_digest,
                        dec.data_digest,
                        &mut out,
                    );
                    let (again, n) = dec
                        .decode(&out)
                        .expect("re-encoded PDU decodes")
                        .expect("re-encoded PDU is complete");
                    assert_eq!(n, out.len());
                    assert_eq!(again.header(), Ok(h), "re-encoded header differs");
                    assert_eq!(again.ahs, pdu.ahs);
                    assert_eq!(again.data, pdu.data);
                }
                buf = &buf[used..];
            }
            Err(FrameError::DataDigest { consumed, .. }) => {
                // The PDU is consumed and the stream goes on (RFC 7143 §7.8).
                assert!(dec.data_digest);
                assert!(consumed >= BHS_LEN && consumed <= buf.len());
                buf = &buf[consumed..];
            }
            Err(FrameError::HeaderDigest { .. }) => {
                assert!(dec.header_digest);
                break;
            }
            Err(FrameError::DataTooLong { len, max }) => {
                assert!(len > max);
                break;
            }
        }
    }
});
