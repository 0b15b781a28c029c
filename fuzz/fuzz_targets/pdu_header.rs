//! Any 48 bytes → `Header::parse`; a parsed header survives emit → parse unchanged.
//!
//! `emit` leaves TotalAHSLength/DataSegmentLength (bytes 4-7) zero and does not write reserved
//! bits, so the comparison is between parsed values, never raw bytes.
#![no_main]

use iscsi_wire::{Common, Header, BHS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bhs) = data.get(..BHS_LEN) else {
        return;
    };
    let bhs: &[u8; BHS_LEN] = bhs.try_into().unwrap();
    let Ok(h) = Header::parse(bhs) else {
        return;
    };
    let emitted = h.emit();
    let again = Header::parse(&emitted).expect("an emitted header parses");
    assert_eq!(again, h, "decode → encode → decode changed the header");
    // Emit is a fixpoint, and the common fields agree with what was parsed.
    assert_eq!(again.emit(), emitted);
    let c = Common::read(&emitted);
    assert_eq!(c.opcode, h.opcode());
    assert_eq!((c.ahs_words, c.data_len), (0, 0));
});
