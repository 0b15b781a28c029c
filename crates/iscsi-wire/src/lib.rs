//! iSCSI wire format (RFC 7143 §11): typed PDU headers with checked parsing and encoders, the
//! additional header segments, the `key=value` text codec, CRC32C digests and PDU framing.
//!
//! Design (see `docs/design.md`): peer bytes only enter through [`Header::parse`] (exactly 48
//! bytes, so no accessor can run off the end) and [`frame::Decoder`] (bounded lengths). Wire codes
//! are open newtypes ([`Opcode`], [`RejectReason`], ...) so an unknown value stays representable
//! and becomes a Reject or a login error upstream, never a panic.

pub mod ahs;
pub mod codes;
pub mod digest;
pub mod frame;
pub mod header;
pub mod text;

pub use codes::*;
pub use frame::{Decoder, FrameError, RawPdu};
pub use header::*;

/// Length of the Basic Header Segment (RFC 7143 §11.2.1).
pub const BHS_LEN: usize = 48;
/// Largest data segment the 24-bit DataSegmentLength field can carry.
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;
/// The reserved Initiator Task Tag value (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Round `n` up to the next multiple of 4 (segments are padded to 4 bytes, RFC 7143 §11.1).
pub const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}
