//! Command-level tests for GET LBA STATUS from holes, ORWRITE, WRITE ATOMIC, COMPARE AND WRITE
//! and WRITE SAME data-out rules, EXTENDED COPY / RECEIVE COPY RESULTS, removable media and
//! SANITIZE.

use std::sync::Arc;

use backstore::{Backstore, RamBackstore};

use super::*;
use crate::lu::{Failure, OpKind, OpOutcome};

const MIB: usize = 1 << 20;

/// A thin RAM-backed LU (the RAM backstore reports its 1 MiB chunks as extents).
pub(super) fn setup_ram(cfg: LuConfig, size: usize) -> (T, Arc<RamBackstore>) {
    let ram = Arc::new(RamBackstore::new(size as u64));
    let lu = LogicalUnit::new(cfg, ram.clone()).unwrap();
    (serve_lu(Arc::new(lu)), ram)
}

fn thin_cfg() -> LuConfig {
    LuConfig {
        thin: true,
        ..cfg_quiet()
    }
}

fn get_lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = cdb16(0x9E, 0x12, lba, alloc);
    c[14] = 0;
    c
}

/// (LBA, blocks, status) descriptors of GET LBA STATUS parameter data.
fn lba_descriptors(d: &[u8]) -> Vec<(u64, u32, u8)> {
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len + 4, d.len());
    d[8..]
        .chunks(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[0..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12] & 0x0F,
            )
        })
        .collect()
}

#[test]
fn get_lba_status_reports_holes_and_data() {
    let (t, ram) = setup_ram(thin_cfg(), 4 * MIB);
    let per_mib = (MIB / BS) as u64;
    ram.write_at(&[1; 16], MIB as u64).unwrap();
    let d = lba_descriptors(&t.ok(&get_lba_status(0, 1024), &[]));
    assert_eq!(
        d,
        vec![
            (0, per_mib as u32, 1),
            (per_mib, per_mib as u32, 0),
            (2 * per_mib, 2 * per_mib as u32, 1)
        ]
    );
    // From the middle of a run; and an allocation length with room for one descriptor.
    let d = lba_descriptors(&t.ok(&get_lba_status(per_mib + 5, 24), &[]));
    assert_eq!(d, vec![(per_mib + 5, per_mib as u32 - 5, 0)]);
    // UNMAP of the mapped chunk makes it deallocated again: one run for the whole LU.
    t.ok(&unmap_cdb(24), &unmap_list(&[(per_mib, per_mib as u32)]));
    let d = lba_descriptors(&t.ok(&get_lba_status(0, 1024), &[]));
    assert_eq!(d, vec![(0, 4 * per_mib as u32, 1)]);
    assert_sense(
        &t.run(&get_lba_status(4 * per_mib, 24), &[]),
        0x05,
        0x21,
        0x00,
    );
}

#[test]
fn get_lba_status_unknown_extents_are_mapped() {
    let t = setup_thin();
    let d = lba_descriptors(&t.ok(&get_lba_status(10, 1024), &[]));
    assert_eq!(d, vec![(10, BLOCKS as u32 - 10, 0)]);
}

#[test]
fn read_capacity16_reports_physical_block_exponent() {
    let t = setup_with(
        LuConfig {
            physical_block_size: 4096,
            ..thin_cfg()
        },
        true,
    );
    let d = t.ok(&cdb16(0x9E, 0x10, 0, 32), &[]);
    assert_eq!(d[13] & 0x0F, 3, "4096 / 512 = 2^3");
    assert_eq!(d[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let bad = LuConfig {
        physical_block_size: 1536,
        ..cfg_quiet()
    };
    assert!(LogicalUnit::new(bad, MemStore::new(BLOCKS * BS, false)).is_err());
}

#[test]
fn orwrite_ors_into_the_blocks() {
    let t = setup();
    t.store.fill(0, 2 * BS, 0x0F);
    let data = vec![0xA0u8; 2 * BS];
    t.ok(&cdb16(0x8B, 0x18, 0, 2), &data);
    assert!(t.store.bytes(0, 2 * BS).iter().all(|&b| b == 0xAF));
    // ORPROTECT is refused (no protection information); zero blocks is fine; range checked.
    assert_invalid_cdb(&t.run(&cdb16(0x8B, 0x20, 0, 1), &data[..BS]), 1, Some(5));
    t.ok(&cdb16(0x8B, 0, 0, 0), &[]);
    assert_sense(
        &t.run(&cdb16(0x8B, 0, BLOCKS as u64, 1), &data[..BS]),
        0x05,
        0x21,
        0x00,
    );
}

fn write_atomic(lba: u64, boundary: u16, len: u16) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9C;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..12].copy_from_slice(&boundary.to_be_bytes());
    c[12..14].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn write_atomic_limits() {
    let t = setup();
    let data = pattern(4 * BS, 9);
    t.ok(&write_atomic(8, 0, 4), &data);
    assert_eq!(t.store.bytes(8 * BS, 4 * BS), data);
    assert_invalid_cdb(&t.run(&write_atomic(8, 1, 4), &data), 10, None);
    let max = (limits::MAX_ATOMIC_TRANSFER_BYTES as usize / BS) as u16;
    let (big, _) = setup_ram(cfg_quiet(), 4 * MIB);
    assert_invalid_cdb(&big.run(&write_atomic(0, 0, max + 1), &[]), 12, None);
    // Part of the data is not an atomic write.
    assert_sense(
        &t.run(&write_atomic(0, 0, 4), &data[..BS]),
        0x05,
        0x0E,
        0x03,
    );
    assert_sense(&t.run(&write_atomic(u64::MAX, 0, 0), &[]), 0x05, 0x21, 0x00);
    // The Block Limits page advertises the limit.
    let bl = t.ok(&inquiry(true, 0xB0, 64), &[]);
    assert_eq!(
        u32::from_be_bytes(bl[44..48].try_into().unwrap()),
        u32::from(max)
    );
}

#[test]
fn compare_and_write_needs_exactly_two_instances() {
    let t = setup();
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[13] = 1;
    let both = vec![0u8; 2 * BS];
    t.ok(&c, &both);
    assert_sense(&t.run(&c, &vec![0u8; 4 * BS]), 0x05, 0x0E, 0x03);
    assert_sense(&t.run(&c, &both[..BS]), 0x05, 0x0E, 0x03);
}

#[test]
fn write_same_takes_exactly_one_block() {
    let t = setup_thin();
    let c = cdb10(0x41, 0x08, 0, 1);
    assert_sense(&t.run(&c, &vec![0u8; BS / 2]), 0x05, 0x0E, 0x03);
    assert_sense(&t.run(&c, &vec![0u8; 2 * BS]), 0x05, 0x0E, 0x03);
    t.ok(&c, &vec![0u8; BS]);
}

// ---------------------------------------------------------------------------------------------
// EXTENDED COPY / RECEIVE COPY RESULTS
// ---------------------------------------------------------------------------------------------

fn xcopy_cdb(len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn target_descriptor(naa: u64, bs: u32) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4] = 0x01; // binary
    d[5] = 0x03; // LU association, NAA
    d[7] = 8;
    d[8..16].copy_from_slice(&naa.to_be_bytes());
    d[29..32].copy_from_slice(&bs.to_be_bytes()[1..]);
    d
}

fn b2b_segment(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[2..4].copy_from_slice(&24u16.to_be_bytes());
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

fn xcopy_list<T: AsRef<[u8]>, S: AsRef<[u8]>>(
    list_id: u8,
    targets: &[T],
    segments: &[S],
) -> Vec<u8> {
    let t: Vec<u8> = targets.iter().flat_map(|d| d.as_ref().to_vec()).collect();
    let s: Vec<u8> = segments.iter().flat_map(|d| d.as_ref().to_vec()).collect();
    let mut l = vec![0u8; 16];
    l[0] = list_id;
    l[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    l[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    l.extend(t);
    l.extend(s);
    l
}

fn copy_status(list_id: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[2] = list_id;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    c
}

#[test]
fn extended_copy_within_and_across_luns() {
    let t = setup();
    let naa0 = cfg_quiet().naa_id;
    let naa1 = naa_from_name("second");
    let store1 = MemStore::new(BLOCKS * BS, false);
    let lu1 = LogicalUnit::new(
        LuConfig {
            naa_id: naa1,
            ..cfg_quiet()
        },
        store1.clone(),
    )
    .unwrap();
    t.srv.add_lun(1, Arc::new(lu1)).unwrap();
    let data = pattern(16 * BS, 3);
    t.ok(&cdb10(0x2A, 0, 0, 16), &data);

    // Within LU 0: blocks 0..16 to 100..116; and from LU 0 to LU 1 at 7.
    let list = xcopy_list(
        5,
        &[target_descriptor(naa0, 512), target_descriptor(naa1, 512)],
        &[b2b_segment(0, 0, 16, 0, 100), b2b_segment(0, 1, 16, 0, 7)],
    );
    t.ok(&xcopy_cdb(list.len() as u32), &list);
    assert_eq!(t.store.bytes(100 * BS, 16 * BS), data);
    assert_eq!(store1.bytes(7 * BS, 16 * BS), data);

    // The held status, once.
    let st = t.ok(&copy_status(5), &[]);
    assert_eq!(st[4], 0x01, "completed without errors");
    assert_eq!(u16::from_be_bytes([st[5], st[6]]), 2);
    assert_eq!(
        u32::from_be_bytes(st[8..12].try_into().unwrap()),
        32 * BS as u32
    );
    assert_invalid_cdb(&t.run(&copy_status(5), &[]), 2, None);
    // Another nexus has no results of its own.
    t.ok(&xcopy_cdb(list.len() as u32), &list);
    assert_invalid_cdb(&t.run2(&copy_status(5), &[]), 2, None);
}

#[test]
fn an_aborted_extended_copy_stops_between_chunks() {
    let t = setup();
    let naa0 = cfg_quiet().naa_id;
    t.ok(&cdb10(0x2A, 0, 0, 16), &pattern(16 * BS, 9));
    let list = xcopy_list(
        6,
        &[target_descriptor(naa0, 512)],
        &[b2b_segment(0, 0, 16, 0, 200)],
    );
    // The transport has aborted the task before the first chunk: nothing is copied.
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let r = t.srv.execute(&ScsiRequest {
        nexus: &t.n,
        lun: lun_to_wire(0),
        cdb: &xcopy_cdb(list.len() as u32),
        data_out: &list,
        expected_data_in: 0,
        attr: TaskAttr::Simple,
        cancel: Some(&cancel),
    });
    assert_eq!(r.status, ScsiStatus::TASK_ABORTED);
    assert_eq!(t.store.bytes(200 * BS, 16 * BS), vec![0; 16 * BS]);
    let st = t.ok(&copy_status(6), &[]);
    assert_eq!(st[4], 0x02, "not completed without errors");
    assert_eq!(u16::from_be_bytes([st[5], st[6]]), 0);
}

#[test]
fn extended_copy_list_errors() {
    let t = setup();
    let naa0 = cfg_quiet().naa_id;
    let td = target_descriptor(naa0, 512);
    let seg = b2b_segment(0, 0, 1, 0, 1);
    // PARAMETER LIST LENGTH 0: nothing to do.
    t.ok(&xcopy_cdb(0), &[]);
    // Truncated list.
    let list = xcopy_list(1, &[&td], &[&seg]);
    assert_sense(&t.run(&xcopy_cdb(40), &list[..40]), 0x05, 0x1A, 0x00);
    // Too many target descriptors; too many segment descriptors.
    let many_t = vec![td.clone(); 9];
    let list = xcopy_list(1, &many_t, &[&seg]);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x05,
        0x26,
        0x06,
    );
    let many_s = vec![seg.clone(); 65];
    let list = xcopy_list(1, &[&td], &many_s);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x05,
        0x26,
        0x08,
    );
    // Unsupported descriptor codes.
    let mut fc = td.clone();
    fc[0] = 0xE0;
    let list = xcopy_list(1, &[fc], &[&seg]);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x05,
        0x26,
        0x07,
    );
    let mut s2s = seg.clone();
    s2s[0] = 0x03;
    let list = xcopy_list(1, &[&td], &[s2s]);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x05,
        0x26,
        0x09,
    );
    // A segment naming an absent target descriptor; an unknown designator; past the end.
    let list = xcopy_list(1, &[&td], &[b2b_segment(0, 1, 1, 0, 1)]);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x0A,
        0x08,
        0x04,
    );
    let list = xcopy_list(1, &[target_descriptor(1, 512)], &[&seg]);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x0A,
        0x0D,
        0x02,
    );
    let list = xcopy_list(1, &[td], &[b2b_segment(0, 0, 2, 0, BLOCKS as u64 - 1)]);
    assert_sense(
        &t.run(&xcopy_cdb(list.len() as u32), &list),
        0x0A,
        0x00,
        0x00,
    );
}

#[test]
fn receive_copy_results_operating_parameters() {
    let t = setup();
    let mut c = copy_status(0);
    c[1] = 0x03;
    let d = t.ok(&c, &[]);
    assert_eq!(u16::from_be_bytes([d[8], d[9]]), 8);
    assert_eq!(u16::from_be_bytes([d[10], d[11]]), 64);
    // RECEIVE DATA (01h) is not offered.
    c[1] = 0x01;
    assert_invalid_cdb(&t.run(&c, &[]), 1, Some(4));
}

// ---------------------------------------------------------------------------------------------
// Removable medium
// ---------------------------------------------------------------------------------------------

fn start_stop(loej: bool, start: bool) -> Vec<u8> {
    vec![0x1B, 0, 0, 0, (u8::from(loej) << 1) | u8::from(start), 0]
}

fn prevent(p: u8) -> Vec<u8> {
    vec![0x1E, 0, 0, 0, p, 0]
}

#[test]
fn removable_medium_eject_load_and_prevent() {
    let t = setup_with(
        LuConfig {
            removable: true,
            ..cfg_quiet()
        },
        false,
    );
    let tur = [0u8; 6];
    assert_eq!(t.ok(&inquiry(false, 0, 96), &[])[1] & 0x80, 0x80, "RMB");
    t.ok(&tur, &[]);
    t.run2(&tur, &[]); // the second nexus is known to the LU
    t.ok(&start_stop(true, false), &[]);
    assert_sense(&t.run(&tur, &[]), 0x02, 0x3A, 0x00);
    assert_sense(&t.run(&cdb10(0x28, 0, 0, 1), &[]), 0x02, 0x3A, 0x00);
    assert_sense(&t.run(&cdb10(0x25, 0, 0, 0), &[]), 0x02, 0x3A, 0x00);
    // INQUIRY and PREVENT ALLOW work without a medium.
    t.ok(&inquiry(false, 0, 96), &[]);
    t.ok(&prevent(1), &[]);
    assert_sense(&t.run(&start_stop(true, true), &[]), 0x05, 0x53, 0x02);
    // Another nexus cannot eject what this one prevents either; ALLOW lifts it.
    assert_sense(&t.run2(&start_stop(true, true), &[]), 0x05, 0x53, 0x02);
    t.ok(&prevent(0), &[]);
    t.ok(&start_stop(true, true), &[]);
    t.ok(&tur, &[]);
    // The other nexus learns the medium may have changed.
    assert_sense(&t.run2(&tur, &[]), 0x06, 0x28, 0x00);
    // Prevention ends with the nexus.
    t.ok(&prevent(1), &[]);
    t.srv.nexus_lost(&t.n);
    t.run(&tur, &[]);
    t.ok(&start_stop(true, false), &[]);
    // And with a LUN reset.
    t.ok(&start_stop(true, true), &[]);
    t.ok(&prevent(1), &[]);
    t.srv.lun_reset(lun_to_wire(0));
    t.run(&tur, &[]);
    t.ok(&start_stop(true, false), &[]);
    assert_invalid_cdb(&t.run(&prevent(2), &[]), 4, Some(1));
}

#[test]
fn fixed_medium_ignores_loej() {
    let t = setup();
    t.ok(&start_stop(true, false), &[]);
    t.ok(&[0u8; 6], &[]);
    assert_eq!(t.ok(&inquiry(false, 0, 96), &[])[1] & 0x80, 0);
}

// ---------------------------------------------------------------------------------------------
// SANITIZE
// ---------------------------------------------------------------------------------------------

fn sanitize(sa: u8, len: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = 0x48;
    c[1] = sa;
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn sanitize_overwrite_and_block_erase() {
    let (t, ram) = setup_ram(thin_cfg(), 2 * MIB);
    ram.write_at(&[7; 4096], 0).unwrap();
    let mut list = vec![0x01, 0, 0, 2];
    list.extend_from_slice(b"ab");
    t.ok(&sanitize(0x01, list.len() as u16), &list);
    let back = t.ok(&cdb10(0x28, 0, 0, 2), &[]);
    assert!(back.chunks(2).all(|c| c == b"ab"));
    assert_eq!(ram.allocated_bytes(), 2 * MIB as u64);
    // BLOCK ERASE deallocates everything.
    t.ok(&sanitize(0x02, 0), &[]);
    assert_eq!(ram.allocated_bytes(), 0);
    assert_invalid_cdb(&t.run(&sanitize(0x02, 8), &[0; 8]), 7, None);
    // Unknown service actions and a bad pattern list.
    assert_invalid_cdb(&t.run(&sanitize(0x03, 0), &[]), 1, Some(4));
    assert_invalid_cdb(&t.run(&sanitize(0x01, 4), &list[..4]), 7, None);
    t.ok(&sanitize(0x1F, 0), &[]);
    // IMMED = 1 returns at once; the overwrite goes on in the background.
    let lu = t.srv.lu(0).unwrap();
    let mut list = vec![0x01, 0, 0, 1];
    list.push(0x5C);
    t.ok(&sanitize(0x81, list.len() as u16), &list);
    lu.wait_operation(3, || false);
    assert!(lu.busy().is_none());
    let back = t.ok(&cdb10(0x28, 0, 0, 4), &[]);
    assert!(back.iter().all(|&b| b == 0x5C));
}

#[test]
fn sanitize_block_erase_needs_thin_provisioning() {
    let t = setup();
    assert_invalid_cdb(&t.run(&sanitize(0x02, 0), &[]), 1, Some(4));
    // Write protection is checked before anything is erased.
    let ro = setup_with(
        LuConfig {
            read_only: true,
            ..cfg_quiet()
        },
        false,
    );
    let list = [0x01, 0, 0, 1, 0xAA];
    assert_sense(&ro.run(&sanitize(0x01, 5), &list), 0x07, 0x27, 0x00);
}

/// Start an IMMED = 1 OVERWRITE that cannot get going while `t`'s test holds a range lock.
fn held_sanitize(t: &T) -> Arc<LogicalUnit> {
    let lu = t.srv.lu(0).unwrap();
    let list = [0x01, 0, 0, 1, 0xA5];
    t.ok(&sanitize(0x81, 5), &list);
    assert!(lu.busy().is_some());
    lu
}

#[test]
fn sanitizing_lu_refuses_other_commands() {
    let t = setup();
    let lu = t.srv.lu(0).unwrap();
    // A read in flight: the sanitize waits for it (SBC-4 §4.11.2), so it stays "in progress".
    let read = lu.lock_range(0, 1, false).unwrap();
    held_sanitize(&t);
    // TEST UNIT READY and media access: NOT READY, SANITIZE IN PROGRESS, with SKSV and a
    // progress indication (SPC-4 §4.5.2.4.4); nothing written yet, so 0.
    let r = t.run(&[0u8; 6], &[]);
    assert_sense(&r, 0x02, 0x04, 0x1B);
    assert_eq!(r.sense[15..18], [0x80, 0, 0]);
    assert_sense(&t.run(&cdb16(0x88, 0, 0, 1), &[]), 0x02, 0x04, 0x1B);
    // A second SANITIZE is refused the same way.
    assert_sense(
        &t.run(&sanitize(0x81, 5), &[0x01, 0, 0, 1, 0]),
        0x02,
        0x04,
        0x1B,
    );
    t.ok(&inquiry(false, 0, 96), &[]);
    let rs = t.ok(&[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(
        (rs[2] & 0x0F, rs[12], rs[13], rs[15]),
        (0x02, 0x04, 0x1B, 0x80)
    );
    // A command admitted just before the sanitize began, now queued behind it, does not wait
    // for the whole operation: it ends as if it had come a moment later.
    while lu.range_requests() < 2 {
        std::thread::yield_now(); // the sanitize thread queues its whole-LU lock
    }
    match lu.lock_range(100, 1, true) {
        Err(crate::cdb::Fail::Check(s)) => assert_eq!(s.reason, SenseReason::SanitizeInProgress),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a range behind the sanitize's whole-LU lock was granted"),
    }
    // LUN and target resets do not stop it (SBC-4 §4.11.2).
    t.srv.lun_reset(lun_to_wire(0));
    t.srv.target_reset();
    t.srv.nexus_lost(&t.n);
    assert!(lu.busy().is_some());
    drop(read);
    assert_eq!(lu.wait_operation(1, || false), Some(OpOutcome::Done));
    assert_eq!(lu.progress(), 65535);
    // Ready again, once the returning nexus has collected what the resets left for it.
    let first = t.run(&[0u8; 6], &[]);
    assert_sense(&first, 0x06, 0x29, 0x00);
    t.ok(&[0u8; 6], &[]);
    assert!(t.ok(&cdb16(0x88, 0, 0, 8), &[]).iter().all(|&b| b == 0xA5));
}

#[test]
fn an_aborted_sanitize_command_leaves_the_operation_running() {
    let t = setup();
    let lu = t.srv.lu(0).unwrap();
    let read = lu.lock_range(0, 1, false).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // IMMED = 0: the command waits for the operation...
        let waiter = s.spawn(|| {
            t.srv.execute(&ScsiRequest {
                nexus: &t.n,
                lun: lun_to_wire(0),
                cdb: &sanitize(0x01, 5),
                data_out: &[0x01, 0, 0, 1, 0x3C],
                expected_data_in: 0,
                attr: TaskAttr::Simple,
                cancel: Some(&cancel),
            })
        });
        while lu.busy().is_none() {
            std::thread::yield_now();
        }
        // ...until the transport aborts the task (ABORT TASK): it ends, the operation does not.
        cancel.store(true, std::sync::atomic::Ordering::Release);
        let r = waiter.join().unwrap();
        assert_eq!(r.status, ScsiStatus::TASK_ABORTED);
    });
    assert!(lu.busy().is_some());
    drop(read);
    assert_eq!(lu.wait_operation(1, || false), Some(OpOutcome::Done));
    assert!(t.ok(&cdb16(0x88, 0, 0, 8), &[]).iter().all(|&b| b == 0x3C));
}

#[test]
fn a_failed_sanitize_is_left_as_its_ause_bit_allows() {
    let t = setup();
    let lu = t.srv.lu(0).unwrap();
    // Restricted completion mode (AUSE = 0): only a sanitize that succeeds ends the failure
    // (SBC-4 §4.11.5); EXIT FAILURE MODE is an invalid field (SBC-4 §5.30.1).
    let job = lu.begin_operation(OpKind::Sanitize).unwrap();
    lu.end_operation(job, OpOutcome::Failed(Failure::Sanitize { ause: false }));
    assert_sense(&t.run(&cdb16(0x88, 0, 0, 1), &[]), 0x03, 0x31, 0x03);
    assert_sense(&t.run(&[0u8; 6], &[]), 0x03, 0x31, 0x03);
    assert_invalid_cdb(&t.run(&sanitize(0x1F, 0), &[]), 1, Some(4));
    t.ok(&sanitize(0x01, 5), &[0x01, 0, 0, 1, 0]);
    t.ok(&cdb16(0x88, 0, 0, 1), &[]);
    // Unrestricted (AUSE = 1): EXIT FAILURE MODE ends it.
    let job = lu.begin_operation(OpKind::Sanitize).unwrap();
    lu.end_operation(job, OpOutcome::Failed(Failure::Sanitize { ause: true }));
    assert_sense(&t.run(&cdb16(0x88, 0, 0, 1), &[]), 0x03, 0x31, 0x03);
    t.ok(&sanitize(0x1F, 0), &[]);
    t.ok(&cdb16(0x88, 0, 0, 1), &[]);
    // A thread that cannot be started changes nothing.
    let job = lu.begin_operation(OpKind::Sanitize).unwrap();
    lu.end_operation(job, OpOutcome::Failed(Failure::Sanitize { ause: false }));
    let job = lu.begin_operation(OpKind::Sanitize).unwrap();
    lu.end_operation(job, OpOutcome::NotStarted);
    assert_sense(&t.run(&cdb16(0x88, 0, 0, 1), &[]), 0x03, 0x31, 0x03);
}

#[test]
fn a_paced_overwrite_keeps_to_its_rate() {
    // 1 MiB at 4 MiB/s: no sooner than 250 ms (a lower bound only, so not a timing test).
    let (t, _ram) = setup_ram(
        LuConfig {
            sanitize_rate: 4 << 20,
            ..cfg_quiet()
        },
        MIB,
    );
    let start = std::time::Instant::now();
    t.ok(&sanitize(0x01, 5), &[0x01, 0, 0, 1, 0x11]);
    assert!(start.elapsed() >= std::time::Duration::from_millis(250));
}

#[test]
fn new_commands_are_reported_with_usage_data() {
    let t = setup_thin();
    for (op, sa, len) in [
        (0x8B, None, 16),
        (0x9C, None, 16),
        (0x83, Some(0u16), 16),
        (0x84, Some(3), 16),
        (0x48, Some(2), 10),
    ] {
        let d = match sa {
            Some(sa) => t.ok(&rsoc(0x02, op, sa, 512), &[]),
            None => t.ok(&rsoc(0x01, op, 0, 512), &[]),
        };
        assert_eq!(d[1] & 0x07, 0x03, "opcode {op:#x} supported");
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), len);
        assert_eq!(d[4], op);
    }
    // DPO/FUA usage bits for ORWRITE and WRITE ATOMIC (what MODE SENSE DPOFUA promises).
    assert_eq!(t.ok(&rsoc(0x01, 0x8B, 0, 512), &[])[5] & 0x18, 0x18);
    assert_eq!(t.ok(&rsoc(0x01, 0x9C, 0, 512), &[])[5] & 0x18, 0x18);
    // Standard INQUIRY says there is a copy manager (3PC).
    assert_eq!(t.ok(&inquiry(false, 0, 96), &[])[5] & 0x08, 0x08);
}

/// A sanitize journal in memory: what a restart would find.
#[derive(Debug, Default)]
struct MemJournal(std::sync::Mutex<Option<String>>);

impl crate::OpJournal for MemJournal {
    fn load(&self) -> std::io::Result<Option<String>> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn save(&self, rec: Option<&str>) -> std::io::Result<()> {
        *self.0.lock().unwrap() = rec.map(str::to_string);
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A new LU over `ram` with `journal` attached, as after a restart.
fn restarted(ram: &Arc<RamBackstore>, journal: &Arc<MemJournal>) -> (T, crate::Resume) {
    let lu = Arc::new(LogicalUnit::new(cfg_quiet(), ram.clone()).unwrap());
    let resumed = lu.set_journal(journal.clone()).unwrap();
    (serve_lu(lu), resumed)
}

#[test]
fn a_sanitize_cut_short_by_a_restart_runs_again() {
    let ram = Arc::new(RamBackstore::new(MIB as u64));
    ram.write_at(&[0x42; 4096], 0).unwrap();
    let journal = Arc::new(MemJournal::default());
    let (t, r) = restarted(&ram, &journal);
    assert_eq!(r, crate::Resume::Nothing);
    let lu = t.srv.lu(0).unwrap();
    // Held before it writes anything; the journal already knows.
    let read = lu.lock_range(0, 1, false).unwrap();
    t.ok(&sanitize(0x81, 5), &[0x01, 0, 0, 1, 0x99]);
    let rec = journal
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("recorded while running");
    assert!(rec.contains("running sanitize overwrite"), "{rec}");
    // "Power loss": this LU never finishes (its thread waits on the lock we hold); a new
    // one over the same medium finds the record and runs the overwrite again.
    let (t2, r) = restarted(&ram, &journal);
    assert_eq!(r, crate::Resume::Restarted);
    let lu2 = t2.srv.lu(0).unwrap();
    assert_eq!(lu2.wait_operation(1, || false), Some(OpOutcome::Done));
    assert_eq!(
        *journal.0.lock().unwrap(),
        None,
        "a finished sanitize leaves no record"
    );
    assert!(t2.ok(&cdb10(0x28, 0, 0, 8), &[]).iter().all(|&b| b == 0x99));
    drop(read);
    lu.wait_operation(1, || false);
}

#[test]
fn a_failed_sanitize_is_still_failed_after_a_restart() {
    let ram = Arc::new(RamBackstore::new(MIB as u64));
    let journal = Arc::new(MemJournal::default());
    let (t, _) = restarted(&ram, &journal);
    let lu = t.srv.lu(0).unwrap();
    let job = lu.begin_operation(OpKind::Sanitize).unwrap();
    // As the sanitize thread records a failure.
    crate::medium::tests_support::record(
        &lu,
        &crate::medium::Record::Failed(Failure::Sanitize { ause: true }),
    );
    lu.end_operation(job, OpOutcome::Failed(Failure::Sanitize { ause: true }));
    let (t2, r) = restarted(&ram, &journal);
    assert_eq!(r, crate::Resume::Failed);
    assert_sense(&t2.run(&cdb16(0x88, 0, 0, 1), &[]), 0x03, 0x31, 0x03);
    // EXIT FAILURE MODE (AUSE was 1) ends it, and the record with it.
    t2.ok(&sanitize(0x1F, 0), &[]);
    assert_eq!(*journal.0.lock().unwrap(), None);
    t2.ok(&cdb16(0x88, 0, 0, 1), &[]);
    // A damaged journal stops the LU from starting.
    *journal.0.lock().unwrap() = Some("ferrite-medium-op 1\nrunning\n".into());
    let lu = Arc::new(LogicalUnit::new(cfg_quiet(), ram.clone()).unwrap());
    assert!(lu.set_journal(journal.clone()).is_err());
}

#[test]
fn an_inverting_overwrite_ends_with_the_pattern_itself() {
    // SBC-4 §5.30.2.2: with INVERT, an even OVERWRITE COUNT starts inverted, an odd one starts
    // plain; either way the last pass leaves the initialization pattern on the medium.
    for passes in [1u8, 2, 3, 4] {
        let (t, _ram) = setup_ram(cfg_quiet(), MIB);
        t.ok(&sanitize(0x01, 5), &[0x80 | passes, 0, 0, 1, 0x0F]);
        let back = t.ok(&cdb10(0x28, 0, 0, 8), &[]);
        assert!(back.iter().all(|&b| b == 0x0F), "{passes} passes");
    }
}

/// A thin LU on an encrypted RAM store (a key of its own, no state file).
fn setup_encrypted() -> (T, Arc<RamBackstore>, Arc<dyn Backstore>) {
    let ram = Arc::new(RamBackstore::new(2 * MIB as u64));
    let (enc, _) = backstore::EncryptedBackstore::open(
        ram.clone(),
        512,
        backstore::KeyFileKey::from_bytes([9; 32]),
        None,
    )
    .unwrap();
    let enc: Arc<dyn Backstore> = Arc::new(enc);
    let lu = LogicalUnit::new(thin_cfg(), enc.clone()).unwrap();
    (serve_lu(Arc::new(lu)), ram, enc)
}

#[test]
fn crypto_erase_is_offered_and_changes_the_key_on_encrypted_lus_only() {
    let plain = setup_thin();
    assert_eq!(plain.ok(&rsoc(0x02, 0x48, 3, 512), &[]), vec![0, 1, 0, 0]);
    assert_invalid_cdb(&plain.run(&sanitize(0x03, 0), &[]), 1, Some(4));
    // Block Device Characteristics: WABEREQ 01b, WACEREQ 00b (no crypto erase).
    assert_eq!(plain.ok(&inquiry(true, 0xB1, 64), &[])[7] & 0xF0, 0x40);

    let (t, ram, _) = setup_encrypted();
    let d = t.ok(&rsoc(0x02, 0x48, 3, 512), &[]);
    assert_eq!(d[1] & 0x07, 0x03);
    assert_eq!(&d[4..6], &[0x48, 0xA3]);
    // WACEREQ 01b: reads after a crypto erase succeed.
    assert_eq!(t.ok(&inquiry(true, 0xB1, 64), &[])[7] & 0xF0, 0x50);
    t.ok(&cdb10(0x2A, 0, 0, 8), &[b'a'; 4096]);
    assert_eq!(t.ok(&cdb10(0x28, 0, 0, 8), &[]), vec![b'a'; 4096]);
    assert_ne!(
        ram.read_vec(4096, 0).unwrap(),
        vec![b'a'; 4096],
        "stored encrypted"
    );
    // SBC-4 §5.30.2.4: PARAMETER LIST LENGTH must be zero.
    assert_invalid_cdb(&t.run(&sanitize(0x03, 8), &[0; 8]), 7, None);
    t.ok(&sanitize(0x03, 0), &[]);
    let after = t.ok(&cdb10(0x28, 0, 0, 8), &[]);
    assert_ne!(after, vec![b'a'; 4096]);
    assert_ne!(after, vec![0; 4096]);
    // Never written: still zeroes (LBPRZ).
    assert_eq!(t.ok(&cdb10(0x28, 0, 64, 8), &[]), vec![0; 4096]);
    // New data under the new key.
    t.ok(&cdb10(0x2A, 0, 0, 8), &[b'b'; 4096]);
    assert_eq!(t.ok(&cdb10(0x28, 0, 0, 8), &[]), vec![b'b'; 4096]);
}

#[test]
fn a_crypto_erase_cut_short_by_a_restart_runs_again() {
    let (t, _ram, enc) = setup_encrypted();
    t.ok(&cdb10(0x2A, 0, 0, 1), &[b'z'; 512]);
    let journal = Arc::new(MemJournal::default());
    let rec = crate::medium::encode(
        &crate::medium::Record::Running(crate::medium::Operation {
            kind: OpKind::Sanitize,
            work: crate::medium::Work::CryptoErase,
            ause: false,
        }),
        crate::medium::Geometry {
            blocks: (2 * MIB / 512) as u64,
            block_size: 512,
        },
    );
    *journal.0.lock().unwrap() = Some(rec);
    let lu = Arc::new(LogicalUnit::new(thin_cfg(), enc).unwrap());
    assert_eq!(
        lu.set_journal(journal.clone()).unwrap(),
        crate::Resume::Restarted
    );
    assert_eq!(lu.wait_operation(1, || false), Some(OpOutcome::Done));
    assert_eq!(*journal.0.lock().unwrap(), None);
    let t2 = serve_lu(lu);
    assert_ne!(t2.ok(&cdb10(0x28, 0, 0, 1), &[]), vec![b'z'; 512]);
    drop(t);
}
