//! Any bytes → `text::parse`; parsed pairs survive encode → parse. The same bytes, cut into
//! chunks with pseudo-random C bits, go through `text::Accumulator` (which must hand back
//! exactly what was pushed since the last final chunk) and through `text::Splitter`.
#![no_main]

use iscsi_wire::text::{self, Accumulator, Splitter, MAX_TEXT_LEN};
use libfuzzer_sys::fuzz_target;

/// Small deterministic generator for chunk sizes and C bits, seeded from the input.
struct Lcg(u32);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.0 >> 8
    }
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes steer chunking; the whole input is still the text.
    let seed = match data {
        [a, b, ..] => u32::from(*a) | u32::from(*b) << 8,
        _ => 0,
    };

    if let Ok(pairs) = text::parse(data) {
        let enc = text::encode(&pairs);
        assert_eq!(
            text::parse(&enc).as_ref(),
            Ok(&pairs),
            "encode → parse changed the pairs"
        );
        for (k, v) in &pairs {
            assert!(!k.is_empty() && k.len() <= text::MAX_KEY_LEN && !k.contains('='));
            assert!(v.len() <= text::MAX_VALUE_LEN && !v.contains('\0'));
        }
    }

    // Accumulator: feed chunks; a chunk with C=0 completes the text gathered so far.
    let mut rng = Lcg(seed);
    let mut acc = Accumulator::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = (rng.next() as usize % 64 + 1).min(data.len() - at);
        let chunk = &data[at..at + n];
        at += n;
        let cont = at < data.len() && !rng.next().is_multiple_of(8);
        let res = acc.push(chunk, cont);
        if pending.len() + chunk.len() > MAX_TEXT_LEN {
            assert_eq!(res, Err(text::TextError::TooLong));
            assert!(acc.is_empty());
            pending.clear();
            continue;
        }
        pending.extend_from_slice(chunk);
        match res {
            Ok(Some(whole)) => {
                assert!(!cont);
                assert_eq!(whole, pending);
                assert!(acc.is_empty());
                pending.clear();
                // Whatever was gathered must parse without panicking.
                let _ = text::parse(&whole);
            }
            Ok(None) => assert!(cont),
            Err(e) => panic!("unexpected {e:?} below the bound"),
        }
    }

    // Splitter: pieces of at most `max` bytes, C set on all but the last, join to the input.
    let max = (rng.next() as usize % 600).max(1);
    let mut sp = Splitter::new(data.to_vec());
    let mut joined = Vec::new();
    loop {
        let (piece, more) = sp.next_piece(max);
        assert!(piece.len() <= max);
        assert_eq!(more, sp.has_more());
        joined.extend_from_slice(&piece);
        if !more {
            break;
        }
        assert!(!piece.is_empty());
    }
    assert_eq!(joined, data);
});
