//! Framing outgoing PDUs for vectored writes: headers, padding and digests are laid out in one
//! small buffer, while large data segments (Data-In payloads pointing into the device server's
//! buffer) are written straight from where they are — the socket write is the only copy.

use std::io::{self, IoSlice};
use std::ops::Range;

use iscsi_proto::{OutPdu, Payload};
use iscsi_wire::{digest, frame, pad4};
use tokio::io::AsyncWriteExt;

/// Data segments below this size are copied into the small buffer (fewer iovecs).
const COPY_BELOW: usize = 4096;
/// Linux's IOV_MAX is 1024; stay well under it per writev.
const MAX_IOV: usize = 256;

enum Part {
    Small(Range<usize>),
    Data(Payload),
}

impl Part {
    fn bytes<'a>(&'a self, small: &'a [u8]) -> &'a [u8] {
        match self {
            Part::Small(r) => &small[r.clone()],
            Part::Data(p) => p.as_slice(),
        }
    }
}

/// A batch of framed PDUs.
#[derive(Default)]
pub struct Frames {
    small: Vec<u8>,
    parts: Vec<Part>,
}

impl Frames {
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn small(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.small.len();
        f(&mut self.small);
        let end = self.small.len();
        // Extend the previous small part when contiguous.
        if let Some(Part::Small(r)) = self.parts.last_mut() {
            if r.end == start {
                r.end = end;
                return;
            }
        }
        if end > start {
            self.parts.push(Part::Small(start..end));
        }
    }

    /// Frame one PDU (RFC 7143 §11.1: BHS, header digest, data, padding, data digest).
    pub fn push(&mut self, pdu: &OutPdu) {
        let data = pdu.data.as_slice();
        let mut bhs = pdu.header.emit();
        frame::encode_bhs_lengths(&mut bhs, 0, data.len());
        self.small(|b| {
            b.extend_from_slice(&bhs);
            if pdu.header_digest {
                b.extend_from_slice(&digest::to_wire(digest::crc32c(&bhs)));
            }
        });
        if data.is_empty() {
            return;
        }
        let pad = &[0u8; 3][..pad4(data.len()) - data.len()];
        if data.len() < COPY_BELOW {
            self.small(|b| b.extend_from_slice(data));
        } else {
            self.parts.push(Part::Data(pdu.data.clone()));
        }
        self.small(|b| {
            b.extend_from_slice(pad);
            if pdu.data_digest {
                let d = digest::crc32c_append(digest::crc32c(data), pad);
                b.extend_from_slice(&digest::to_wire(d));
            }
        });
    }

    /// Write the whole batch.
    pub async fn write_to<W: tokio::io::AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<()> {
        let mut idx = 0usize; // first part not fully written
        let mut off = 0usize; // bytes of parts[idx] already written
        while idx < self.parts.len() {
            let slices: Vec<IoSlice<'_>> = self.parts[idx..]
                .iter()
                .take(MAX_IOV)
                .enumerate()
                .map(|(i, p)| {
                    let b = p.bytes(&self.small);
                    IoSlice::new(if i == 0 { &b[off..] } else { b })
                })
                .collect();
            let mut n = w.write_vectored(&slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Advance past what was written.
            while n > 0 {
                let left = self.parts[idx].bytes(&self.small).len() - off;
                if n >= left {
                    n -= left;
                    idx += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi_wire::frame::Decoder;
    use iscsi_wire::{DataIn, Header};
    use std::sync::Arc;

    /// A writer that accepts at most `chunk` bytes per call, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
    }
    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn vectored_frames_equal_the_reference_encoding() {
        let data = (0..200_000u32).map(|i| i as u8).collect::<Vec<u8>>();
        let buf = Arc::new(iscsi_proto::budget::SharedBuf::new(data, None));
        let mut pdus = Vec::new();
        for (i, (start, len)) in [(0usize, 100_001usize), (100_001, 7), (100_008, 99_992)]
            .into_iter()
            .enumerate()
        {
            for (hd, dd) in [(false, false), (true, true), (true, false)] {
                pdus.push(OutPdu {
                    header: Header::DataIn(DataIn {
                        itt: i as u32,
                        data_sn: i as u32,
                        buffer_offset: start as u32,
                        ..Default::default()
                    }),
                    data: Payload::Shared {
                        buf: buf.clone(),
                        start,
                        len,
                    },
                    header_digest: hd,
                    data_digest: dd,
                });
            }
        }
        let mut frames = Frames::default();
        let mut reference = Vec::new();
        for p in &pdus {
            frames.push(p);
            p.encode(&mut reference);
        }
        for chunk in [1usize, 7, 4096, 1 << 20] {
            let mut w = Trickle {
                out: Vec::new(),
                chunk,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(frames.write_to(&mut w)).unwrap();
            assert_eq!(w.out, reference, "chunk {chunk}");
        }
        // And it decodes.
        let mut at = 0;
        for p in &pdus {
            let dec = Decoder {
                header_digest: p.header_digest,
                data_digest: p.data_digest,
                max_data: 1 << 20,
            };
            let (raw, used) = dec.decode(&reference[at..]).unwrap().unwrap();
            assert_eq!(raw.data, p.data.as_slice());
            at += used;
        }
    }
}
