//! CRC32C header and data digests (RFC 7143 §13.1), driven by the tests' own initiator because
//! libiscsi (and so QEMU) never offers DataDigest=CRC32C: every combination moves data intact,
//! and a corrupted digest from the initiator does not take the daemon down.

mod common;

use std::time::Duration;

use common::initiator::{crc32c, LoginOpts, Session, OP_DATA_OUT, OP_R2T};
use common::{field, run, Daemon, Opts, Rng};

#[test]
fn crc32c_check_value() {
    // The standard check value of CRC-32C, so the tests' digests are right independently.
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}

fn round_trip(d: &Daemon, header_digest: bool, data_digest: bool, seed: u64) {
    let mut s = Session::login(
        d.addr(),
        &LoginOpts {
            header_digest,
            data_digest,
            ..LoginOpts::default()
        },
    )
    .unwrap_or_else(|e| panic!("login hd={header_digest} dd={data_digest}: {e}"));
    assert_eq!(
        s.header_digest, header_digest,
        "HeaderDigest not as asked: {:?}",
        s.negotiated
    );
    assert_eq!(
        s.data_digest, data_digest,
        "DataDigest not as asked: {:?}",
        s.negotiated
    );
    let mut data = vec![0u8; 1 << 20];
    Rng::new(seed).fill(&mut data);
    let lba = (seed % 1000) as u32 * 8;
    s.write10(lba, &data, 512)
        .unwrap_or_else(|e| panic!("write hd={header_digest} dd={data_digest}: {e}"));
    let back = s
        .read10(lba, 2048, 512)
        .unwrap_or_else(|e| panic!("read hd={header_digest} dd={data_digest}: {e}"));
    assert!(
        back == data,
        "data differs with hd={header_digest} dd={data_digest}"
    );
    s.logout().unwrap_or_else(|e| panic!("logout: {e}"));
}

#[test]
fn every_digest_combination_moves_data_intact() {
    let d = Daemon::start(Opts {
        luns: vec!["ram:64M".into()],
        ..Opts::default()
    });
    round_trip(&d, false, false, 11);
    round_trip(&d, true, false, 12);
    round_trip(&d, false, true, 13);
    round_trip(&d, true, true, 14);
}

#[test]
fn corrupt_data_digest_does_not_kill_the_daemon() {
    let mut d = Daemon::start(Opts {
        luns: vec!["ram:64M".into()],
        ..Opts::default()
    });
    let mut s = Session::login(
        d.addr(),
        &LoginOpts {
            header_digest: true,
            data_digest: true,
            ..LoginOpts::default()
        },
    )
    .expect("login");
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[7..9].copy_from_slice(&16u16.to_be_bytes());
    let (bhs, itt) = s.scsi_cmd_bhs(&cdb, false, true, 8192);
    s.send(&bhs, &[]).unwrap();
    let r2t = s.recv().expect("R2T");
    assert_eq!(r2t.opcode(), OP_R2T);
    let mut dout = [0u8; 48];
    dout[0] = OP_DATA_OUT;
    dout[1] = 0x80;
    dout[16..20].copy_from_slice(&itt.to_be_bytes());
    dout[20..24].copy_from_slice(&r2t.bhs[20..24]);
    let mut pdu = s.encode(&dout, &[0x5a; 8192]);
    let n = pdu.len();
    pdu[n - 1] ^= 0xff; // the data digest's last byte
    use std::io::Write;
    s.stream.write_all(&pdu).unwrap();
    // RFC 7143 §7.8: the target discards the PDU (Reject / recovery R2T) or, at ERL 0, may drop
    // the connection. Either way nothing else may suffer.
    s.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = s.recv();
    drop(s);
    d.assert_alive();
    let out = run("iscsi-inq", &[&d.url(0)], Duration::from_secs(60)).ok();
    assert_eq!(
        field(&out.stdout, "Vendor:"),
        Some("FERRITE"),
        "{}",
        out.describe()
    );
    round_trip(&d, true, true, 21);
}
