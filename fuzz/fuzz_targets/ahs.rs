//! Any bytes → `ahs::parse` (the TotalAHSLength area of a PDU). Lists made only of the AHS
//! types we can encode are re-encoded and must parse back to the same list.
#![no_main]

use iscsi_wire::ahs::{self, Ahs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = ahs::parse(data) else {
        return;
    };
    let mut out = Vec::new();
    for a in &list {
        match a {
            Ahs::ExtendedCdb(tail) => {
                if tail.len() + 1 > u16::MAX as usize {
                    return;
                }
                ahs::encode_extended_cdb(tail, &mut out)
            }
            Ahs::BidiReadLength(n) => ahs::encode_bidi_read_length(*n, &mut out),
            Ahs::Other { .. } => return,
        }
    }
    assert_eq!(out.len() % 4, 0);
    assert_eq!(
        ahs::parse(&out).as_ref(),
        Ok(&list),
        "AHS encode → parse changed the list"
    );
});
