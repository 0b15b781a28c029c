//! FORMAT UNIT (SBC-4 §5.4) and SEND / RECEIVE DIAGNOSTIC (SPC-4 §6.42, §6.32).

use std::sync::Arc;

use backstore::{Backstore, RamBackstore};

use super::*;
use crate::lu::{Failure, OpKind, OpOutcome};

const MIB: usize = 1 << 20;

fn ram_lu(cfg: LuConfig) -> (T, Arc<RamBackstore>) {
    super::offload::setup_ram(cfg, MIB)
}

fn format_cdb(byte1: u8) -> [u8; 6] {
    [0x04, byte1, 0, 0, 0, 0]
}

/// A short parameter list header with `b1` (FOV, DPRY, DCRT, STPF, IP, IMMED) and no defects.
fn header(b1: u8) -> Vec<u8> {
    vec![0, b1, 0, 0]
}

fn read_all(t: &T) -> Vec<u8> {
    t.ok(&cdb10(0x28, 0, 0, (MIB / BS) as u16), &[])
}

#[test]
fn format_initializes_thin_and_thick_lus() {
    // Thin: every block deallocated, so the RAM disk gives its memory back.
    let (t, ram) = ram_lu(LuConfig {
        thin: true,
        ..cfg_quiet()
    });
    ram.write_at(&[0xEE; 8192], 4096).unwrap();
    t.ok(&format_cdb(0), &[]);
    assert_eq!(ram.allocated_bytes(), 0);
    assert!(read_all(&t).iter().all(|&b| b == 0));
    // Thick: zeroes written.
    let (t, ram) = ram_lu(cfg_quiet());
    ram.write_at(&[0xEE; 8192], 4096).unwrap();
    t.ok(&format_cdb(0), &[]);
    assert!(read_all(&t).iter().all(|&b| b == 0));
}

#[test]
fn format_with_an_initialization_pattern() {
    let (t, _ram) = ram_lu(LuConfig {
        thin: true,
        ..cfg_quiet()
    });
    // FMTDATA, short list: FOV + IP, pattern type 01h "AB".
    let mut list = header(0x88);
    list.extend_from_slice(&[0x00, 0x01, 0x00, 0x02, b'A', b'B']);
    let r = t.run(&format_cdb(0x10), &list);
    assert_eq!(
        (r.status, r.data_out_len),
        (ScsiStatus::GOOD, list.len() as u32)
    );
    assert!(read_all(&t).chunks(2).all(|c| c == b"AB"));
    // The long header (LONGLIST) works the same; an empty default pattern means zeroes.
    let mut list = vec![0, 0x88, 0, 0, 0, 0, 0, 0];
    list.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    t.ok(&format_cdb(0x30), &list);
    assert!(read_all(&t).iter().all(|&b| b == 0));
}

#[test]
fn format_refuses_what_it_cannot_honour() {
    let (t, _ram) = ram_lu(cfg_quiet());
    // Protection information; a defect list format without a list.
    assert_invalid_cdb(&t.run(&format_cdb(0x40), &[]), 1, Some(7));
    assert_invalid_cdb(&t.run(&format_cdb(0x01), &[]), 1, Some(2));
    // FFMT (fast format) and the vendor-specific byte, by the opcode table.
    assert_invalid_cdb(&t.run(&[0x04, 0, 0, 0, 0x01, 0], &[]), 4, Some(0));
    let bad_param = |list: &[u8]| {
        let r = t.run(&format_cdb(0x10), list);
        assert_sense(&r, 0x05, 0x26, 0x00);
        field_pointer(&r)
    };
    // PROTECTION FIELD USAGE; DCRT without FOV; a defect list; an IP MODIFIER; a reserved
    // pattern type; a pattern longer than a block; a repeat pattern of length 0.
    assert_eq!(bad_param(&[0x01, 0, 0, 0]), (false, 0, Some(2)));
    assert_eq!(bad_param(&header(0x20)), (false, 1, Some(6)));
    assert_eq!(
        bad_param(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
        (false, 2, None)
    );
    assert_eq!(
        bad_param(&[0, 0x88, 0, 0, 0x40, 1, 0, 1, 7]),
        (false, 4, Some(7))
    );
    assert_eq!(bad_param(&[0, 0x88, 0, 0, 0, 2, 0, 1, 7]), (false, 5, None));
    let mut long = vec![0, 0x88, 0, 0, 0, 1, 0x02, 0x01];
    long.extend(vec![1; 513]);
    assert_eq!(bad_param(&long), (false, 6, None));
    assert_eq!(bad_param(&[0, 0x88, 0, 0, 0, 1, 0, 0]), (false, 6, None));
    // A list shorter than its header says.
    assert_sense(&t.run(&format_cdb(0x10), &[0, 0]), 0x05, 0x1A, 0x00);
    assert_sense(
        &t.run(&format_cdb(0x10), &[0, 0x88, 0, 0, 0, 1, 0, 4, 1]),
        0x05,
        0x1A,
        0x00,
    );
    // Write protection.
    let (ro, _ram) = ram_lu(LuConfig {
        read_only: true,
        ..cfg_quiet()
    });
    assert_sense(&ro.run(&format_cdb(0), &[]), 0x07, 0x27, 0x00);
}

#[test]
fn a_format_in_progress_is_reported_with_its_progress() {
    let (t, _ram) = ram_lu(cfg_quiet());
    let lu = t.srv.lu(0).unwrap();
    let read = lu.lock_range(0, 1, false).unwrap();
    assert_eq!(lu.medium_status(), "ready");
    // IMMED in the parameter list header: GOOD at once.
    t.ok(&format_cdb(0x10), &header(0x02));
    assert_eq!(lu.medium_status(), "format 0%");
    let r = t.run(&[0u8; 6], &[]);
    assert_sense(&r, 0x02, 0x04, 0x04);
    assert_eq!(r.sense[15], 0x80, "a progress indication");
    let rs = t.ok(&[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!((rs[2] & 0x0F, rs[12], rs[13]), (0x02, 0x04, 0x04));
    t.ok(&inquiry(false, 0, 96), &[]);
    // Neither a second format nor a sanitize can start meanwhile.
    assert_sense(&t.run(&format_cdb(0), &[]), 0x02, 0x04, 0x04);
    assert_sense(
        &t.run(&[0x48, 0x01, 0, 0, 0, 0, 0, 0, 5, 0], &[1, 0, 0, 1, 0]),
        0x02,
        0x04,
        0x04,
    );
    drop(read);
    assert_eq!(lu.wait_operation(1, || false), Some(OpOutcome::Done));
    t.ok(&[0u8; 6], &[]);
}

#[test]
fn a_failed_format_leaves_the_medium_format_corrupt_until_a_format_succeeds() {
    let (t, _ram) = ram_lu(cfg_quiet());
    let lu = t.srv.lu(0).unwrap();
    let job = lu.begin_operation(OpKind::Format).unwrap();
    lu.end_operation(job, OpOutcome::Failed(Failure::Format));
    assert_eq!(lu.medium_status(), "format corrupt");
    assert_sense(&t.run(&cdb10(0x28, 0, 0, 1), &[]), 0x03, 0x31, 0x00);
    assert_sense(&t.run(&[0u8; 6], &[]), 0x03, 0x31, 0x00);
    // EXIT FAILURE MODE is about sanitize failures: the medium stays format corrupt.
    t.ok(&[0x48, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_sense(&t.run(&cdb10(0x28, 0, 0, 1), &[]), 0x03, 0x31, 0x00);
    t.ok(&format_cdb(0), &[]);
    t.ok(&cdb10(0x28, 0, 0, 1), &[]);
    // After a failed sanitize, FORMAT UNIT is not a way out (SBC-4 §4.11.5).
    let job = lu.begin_operation(OpKind::Sanitize).unwrap();
    lu.end_operation(job, OpOutcome::Failed(Failure::Sanitize { ause: false }));
    assert_sense(&t.run(&format_cdb(0), &[]), 0x03, 0x31, 0x03);
}

#[test]
fn send_diagnostic_self_test_and_pages() {
    let (t, _ram) = ram_lu(cfg_quiet());
    // The default self-test (SELFTEST = 1), with and without UNITOFFL / DEVOFFL.
    t.ok(&[0x1D, 0x04, 0, 0, 0, 0], &[]);
    t.ok(&[0x1D, 0x07, 0, 0, 0, 0], &[]);
    // SELFTEST = 1 takes no parameter list; self-test codes are not offered.
    assert_invalid_cdb(&t.run(&[0x1D, 0x04, 0, 0, 4, 0], &[0; 4]), 3, None);
    assert_invalid_cdb(&t.run(&[0x1D, 0x20, 0, 0, 0, 0], &[]), 1, Some(7));
    // PF = 1 with the Supported Diagnostic Pages page; an unknown page; vendor data (PF = 0).
    t.ok(&[0x1D, 0x10, 0, 0, 4, 0], &[0, 0, 0, 0]);
    t.ok(&[0x1D, 0x10, 0, 0, 0, 0], &[]);
    let r = t.run(&[0x1D, 0x10, 0, 0, 4, 0], &[0x40, 0, 0, 0]);
    assert_sense(&r, 0x05, 0x26, 0x00);
    assert_invalid_cdb(&t.run(&[0x1D, 0x00, 0, 0, 4, 0], &[0; 4]), 1, Some(4));
    assert_sense(&t.run(&[0x1D, 0x10, 0, 0, 4, 0], &[0, 0]), 0x05, 0x1A, 0x00);
    // RECEIVE DIAGNOSTIC RESULTS: the one page, asked for or not.
    let page = [0x00, 0x00, 0x00, 0x01, 0x00];
    assert_eq!(t.ok(&[0x1C, 0x01, 0x00, 0, 64, 0], &[]), page);
    assert_eq!(t.ok(&[0x1C, 0x00, 0x00, 0, 64, 0], &[]), page);
    assert_eq!(t.ok(&[0x1C, 0x01, 0x00, 0, 2, 0], &[]), page[..2]);
    assert_invalid_cdb(&t.run(&[0x1C, 0x01, 0x80, 0, 64, 0], &[]), 2, None);
}

#[test]
fn a_self_test_fails_when_the_medium_cannot_be_read() {
    let t = setup();
    t.store.fail.store(true, Ordering::SeqCst);
    assert_sense(&t.run(&[0x1D, 0x04, 0, 0, 0, 0], &[]), 0x04, 0x3E, 0x03);
}

#[test]
fn a_format_that_hits_an_io_error_corrupts_the_medium_until_redone() {
    let t = setup();
    t.store.fail.store(true, Ordering::SeqCst);
    assert_sense(&t.run(&format_cdb(0), &[]), 0x03, 0x31, 0x00);
    t.store.fail.store(false, Ordering::SeqCst);
    assert_sense(&t.run(&cdb10(0x28, 0, 0, 1), &[]), 0x03, 0x31, 0x00);
    t.ok(&format_cdb(0), &[]);
    t.ok(&cdb10(0x28, 0, 0, 1), &[]);
    // The same for a sanitize: SANITIZE COMMAND FAILED, from the command and afterwards.
    t.store.fail.store(true, Ordering::SeqCst);
    let r = t.run(&[0x48, 0x21, 0, 0, 0, 0, 0, 0, 5, 0], &[1, 0, 0, 1, 0]);
    assert_sense(&r, 0x03, 0x31, 0x03);
    t.store.fail.store(false, Ordering::SeqCst);
    assert_sense(&t.run(&cdb10(0x28, 0, 0, 1), &[]), 0x03, 0x31, 0x03);
    // AUSE was 1: EXIT FAILURE MODE ends it.
    t.ok(&[0x48, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    t.ok(&cdb10(0x28, 0, 0, 1), &[]);
}

fn log_sense(page: u8, subpage: u8, pointer: u16, alloc: u16) -> [u8; 10] {
    let [p0, p1] = pointer.to_be_bytes();
    let [a0, a1] = alloc.to_be_bytes();
    [0x4D, 0, 0x40 | page, subpage, 0, p0, p1, a0, a1, 0]
}

#[test]
fn log_sense_pages() {
    let (t, ram) = ram_lu(LuConfig {
        thin: true,
        ..cfg_quiet()
    });
    // Supported pages, and pages with subpages.
    assert_eq!(
        t.ok(&log_sense(0x00, 0, 0, 64), &[]),
        [0, 0, 0, 3, 0x00, 0x0C, 0x2F]
    );
    assert_eq!(
        t.ok(&log_sense(0x00, 0xFF, 0, 64), &[]),
        [0x40, 0xFF, 0, 8, 0x00, 0x00, 0x00, 0xFF, 0x0C, 0x00, 0x2F, 0x00]
    );
    // Logical Block Provisioning: 1 MiB = 2048 blocks; 2 written chunks' worth used.
    let lbp = t.ok(&log_sense(0x0C, 0, 0, 64), &[]);
    assert_eq!(&lbp[..4], &[0x0C, 0, 0, 24]);
    assert_eq!(&lbp[4..8], &[0, 1, 0x03, 8]);
    assert_eq!(u32::from_be_bytes(lbp[8..12].try_into().unwrap()), 2048);
    assert_eq!(lbp[12] & 0x03, 0b01, "RAM: dedicated");
    assert_eq!(&lbp[16..20], &[0, 2, 0x03, 8]);
    assert_eq!(u32::from_be_bytes(lbp[20..24].try_into().unwrap()), 0);
    t.ok(&cdb10(0x2A, 0, 0, 1), &[1; BS]);
    let lbp = t.ok(&log_sense(0x0C, 0, 0, 64), &[]);
    assert_eq!(
        u64::from(u32::from_be_bytes(lbp[20..24].try_into().unwrap())) * BS as u64,
        ram.allocated_bytes()
    );
    // PARAMETER POINTER: from 0002h on; past the last code is an invalid field.
    assert_eq!(t.ok(&log_sense(0x0C, 0, 2, 64), &[]).len(), 4 + 12);
    assert_invalid_cdb(&t.run(&log_sense(0x0C, 0, 3, 64), &[]), 5, None);
    // Informational Exceptions: nothing to report.
    assert_eq!(
        t.ok(&log_sense(0x2F, 0, 0, 64), &[]),
        [0x2F, 0, 0, 7, 0, 0, 0x03, 3, 0, 0, 0xFF]
    );
    // Unknown page, unknown subpage, SP = 1; the allocation length cuts.
    assert_invalid_cdb(&t.run(&log_sense(0x0D, 0, 0, 64), &[]), 2, Some(5));
    assert_invalid_cdb(&t.run(&log_sense(0x2F, 1, 0, 64), &[]), 3, None);
    let mut sp = log_sense(0x00, 0, 0, 64);
    sp[1] = 1;
    assert_invalid_cdb(&t.run(&sp, &[]), 1, Some(0));
    assert_eq!(t.ok(&log_sense(0x00, 0, 0, 5), &[]).len(), 5);
    // A thick LU has no provisioning page.
    let (thick, _) = ram_lu(cfg_quiet());
    assert_eq!(
        thick.ok(&log_sense(0x00, 0, 0, 64), &[]),
        [0, 0, 0, 2, 0x00, 0x2F]
    );
}
