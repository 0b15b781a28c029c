//! Inputs the fuzzers in `fuzz/` found, as plain tests of the public API. Each one's raw bytes
//! are also kept as a fixture in `fuzz/regressions/<target>-<name>`.

use iscsi_wire::{Header, BHS_LEN};

/// fuzz/regressions/pdu_header-datain-status-without-s: a Data-In with S=0 and a non-zero
/// byte 3. RFC 7143 §11.7.4: the Status field is reserved unless S=1, so it must not survive
/// as `status`; `Header::parse` kept it while `emit` writes 0, so decode → encode → decode
/// changed the header.
#[test]
fn data_in_status_is_reserved_without_s_bit() {
    let mut b = [0u8; BHS_LEN];
    b[0] = 0x25; // Data-In
    b[3] = 0x01; // Status byte, S bit (byte 1, 0x01) clear
    let h = Header::parse(&b).unwrap();
    let again = Header::parse(&h.emit()).unwrap();
    assert_eq!(again, h, "decode → encode → decode changed the header");
}
