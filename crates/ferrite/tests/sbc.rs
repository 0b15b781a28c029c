//! Block-device behaviour that needs the whole system: the VMware-style ATS race (two sessions
//! hammering COMPARE AND WRITE on one block) and thin provisioning giving space back to the file
//! system.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Barrier};
use std::thread;

use common::initiator::{LoginOpts, Session};
use common::sbc::{compare_and_write, unmap};
use common::{Daemon, Opts, Rng};

const BLOCK: usize = 512;

fn session(d: &Daemon, initiator: &str, isid_last: u8) -> Session {
    let mut s = Session::login(
        d.addr(),
        &LoginOpts {
            initiator,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, isid_last],
            ..LoginOpts::default()
        },
    )
    .unwrap_or_else(|e| panic!("login {initiator}: {e}"));
    s.clear_unit_attentions().unwrap();
    s
}

/// The heartbeat block content written by `writer` in `round`: every byte tells who and when,
/// so a block mixing two writes (a torn block) is recognisable.
fn heartbeat(round: u32, writer: u8) -> Vec<u8> {
    let mut b = vec![writer; BLOCK];
    for chunk in b.chunks_mut(8) {
        chunk[..4].copy_from_slice(&round.to_be_bytes());
    }
    b
}

fn parse_heartbeat(b: &[u8]) -> Option<(u32, u8)> {
    let round = u32::from_be_bytes(b[..4].try_into().unwrap());
    let writer = b[4];
    (b == heartbeat(round, writer).as_slice()).then_some((round, writer))
}

/// SBC-4 §5.3: COMPARE AND WRITE is atomic against every other writer. Two sessions race for one
/// block round after round, each expecting the block as it last saw it: exactly one wins each
/// round (GOOD), the other gets MISCOMPARE, and the block always holds one whole heartbeat.
#[test]
fn ats_race_has_one_winner_per_round_and_no_torn_block() {
    const ROUNDS: u32 = 300;
    const LBA: u64 = 2048;
    let d = Daemon::start(Opts {
        luns: vec!["file:{dir}/lun0.img:64M".into()],
        ..Opts::default()
    });
    let mut s0 = session(&d, "iqn.2026-11.io.ferrite:ats-host-a", 1);
    let s1 = session(&d, "iqn.2026-11.io.ferrite:ats-host-b", 2);
    // Round 0: the block starts as writer 0's heartbeat.
    s0.write10(LBA as u32, &heartbeat(0, 0), BLOCK).unwrap();

    let barrier = Arc::new(Barrier::new(2));
    let host = |mut s: Session, me: u8, barrier: Arc<Barrier>| {
        thread::spawn(move || {
            let mut wins = Vec::new();
            for round in 1..=ROUNDS {
                // Both hosts look at the block, then race to replace what they saw.
                let seen = s.read10(LBA as u32, 1, BLOCK).unwrap();
                let (r, _) = parse_heartbeat(&seen)
                    .unwrap_or_else(|| panic!("torn heartbeat block in round {round}"));
                assert_eq!(r, round - 1, "host {me} saw a stale round");
                barrier.wait();
                let st =
                    compare_and_write(&mut s, LBA, &seen, &heartbeat(round, me), BLOCK).unwrap();
                if st.good() {
                    wins.push(round);
                } else {
                    assert_eq!(
                        st.sense_code(),
                        Some((0x0E, 0x1D, 0x00)),
                        "host {me} round {round}: not a miscompare: {st:?}"
                    );
                }
                // Nobody reads the next round's block before both have finished this one.
                barrier.wait();
            }
            wins
        })
    };
    let a = host(s0, 1, barrier.clone());
    let b = host(s1, 2, barrier);
    let (wa, wb) = (a.join().unwrap(), b.join().unwrap());
    let mut all: Vec<u32> = wa.iter().chain(&wb).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "each round must have exactly one winner (a: {} wins, b: {} wins)",
        wa.len(),
        wb.len()
    );
    eprintln!(
        "ATS race: {ROUNDS} rounds, host a won {}, host b won {}",
        wa.len(),
        wb.len()
    );
}

/// Thin provisioning really returns space: after UNMAP the backing file occupies less disk
/// (`du`), and the unmapped blocks read back as zeroes (LBPRZ = 1).
#[test]
fn unmap_punches_holes_in_the_backing_file() {
    const MIB: usize = 1 << 20;
    let d = Daemon::start(Opts {
        luns: vec!["file:{dir}/lun0.img:64M".into()],
        ..Opts::default()
    });
    let file = d.dir.path().join("lun0.img");
    let used = || std::fs::metadata(&file).unwrap().blocks() * 512;
    let mut s = session(&d, "iqn.2026-11.io.ferrite:thin-test", 3);
    let before = used();
    let mut data = vec![0u8; MIB];
    let mut rng = Rng::new(7);
    for i in 0..16u32 {
        rng.fill(&mut data);
        s.write10(i * (MIB / BLOCK) as u32, &data, BLOCK).unwrap();
    }
    let written = used();
    assert!(
        written >= before + 16 * MIB as u64,
        "16 MiB written but the file grew from {before} to {written} bytes"
    );
    let blocks = (16 * MIB / BLOCK) as u32;
    let st = unmap(&mut s, &[(0, blocks)]).unwrap();
    assert!(st.good(), "UNMAP: {st:?}");
    let after = used();
    assert!(
        after + 15 * MIB as u64 <= written,
        "UNMAP of 16 MiB gave back only {} bytes ({written} -> {after})",
        written.saturating_sub(after)
    );
    let back = s.read10(0, 64, BLOCK).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "unmapped blocks must read as zeroes"
    );
    eprintln!("thin: file used {before} -> {written} after writing -> {after} after UNMAP");
}

/// SBC-4 §4.11.2, §5.30: a sanitize is an operation of the LU, not of the command that started
/// it. ABORT TASK ends a SANITIZE (IMMED = 0) that waits for its operation — at once, not when
/// the overwrite is done — and the overwrite carries on; meanwhile TEST UNIT READY and
/// REQUEST SENSE report NOT READY, SANITIZE IN PROGRESS with a progress indication. A
/// 16 MiB LUN paced at 8 MiB/s keeps the overwrite busy for 2 s.
#[test]
fn sanitize_outlives_abort_task_and_reports_progress() {
    let d = Daemon::start(Opts {
        config: Some(format!(
            "[settings]\nnop_interval_secs = 0\n\n[[target]]\nname = \"{}\"\n\n\
             [[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:{{port}}\"]\n\n\
             [[target.lun]]\nid = 0\nbackstore = \"ram:16M\"\nsanitize_rate = \"8M\"\n",
            common::IQN
        )),
        ..Opts::default()
    });
    let mut s = session(&d, "iqn.2026-11.io.ferrite:sanitizer", 1);
    // OVERWRITE, one pass, pattern 0x6B; IMMED = 0.
    let cdb = [0x48, 0x01, 0, 0, 0, 0, 0, 0, 5, 0];
    let sn = s.cmd_sn();
    let itt = s.start_write_command(&cdb, &[0x01, 0, 0, 1, 0x6B]).unwrap();
    // The TMF answers FUNCTION COMPLETE (0) without waiting 2 s for the overwrite; the
    // aborted SANITIZE gets no response (the next PDU is the TMF response itself).
    assert_eq!(s.abort_task(itt, sn).unwrap(), 0);
    let tur = s.command(&[0u8; 6], 0).unwrap();
    assert_eq!(tur.status, 2, "TEST UNIT READY during the sanitize");
    assert_eq!(tur.sense_key(), Some(0x02));
    assert_eq!(tur.asc(), Some((0x04, 0x1B)));
    assert_eq!(tur.sense[15] & 0x80, 0x80, "SKSV: a progress indication");
    let rs = s.command(&[0x03, 0, 0, 0, 18, 0], 18).unwrap();
    assert_eq!(rs.status, 0);
    assert_eq!(
        (rs.data[2] & 0x0F, rs.data[12], rs.data[13]),
        (0x02, 0x04, 0x1B)
    );
    // Operators see it: `ferrite admin targets` shows the LUN's medium state.
    let t = common::tpg::admin_json(&d, &["targets"]);
    let medium = t["targets"][0]["luns"][0]["medium"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(medium.starts_with("sanitize "), "{medium}");
    // A second sanitize is turned away while the first runs.
    let again = s.write_command(&cdb, &[0x01, 0, 0, 1, 0]).unwrap();
    assert_eq!(
        (again.sense_key(), again.asc()),
        (Some(0x02), Some((0x04, 0x1B)))
    );
    // Wait for the end (TEST UNIT READY turns GOOD), then every block holds the pattern.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = s.command(&[0u8; 6], 0).unwrap();
        if r.status == 0 {
            break;
        }
        assert_eq!(r.asc(), Some((0x04, 0x1B)), "{:02x?}", r.sense);
        assert!(std::time::Instant::now() < deadline, "sanitize never ended");
        thread::sleep(std::time::Duration::from_millis(100));
    }
    for lba in [0u32, 16_000, 32_767] {
        let b = s.read10(lba, 1, BLOCK).unwrap();
        assert!(b.iter().all(|&x| x == 0x6B), "LBA {lba}");
    }
    s.logout().unwrap();
}

/// A drive's sanitize survives a power cycle (SBC-4 §4.11); Ferrite's survives kill -9: the
/// journal in the state directory records it before the first block changes, and the restarted
/// daemon runs it again before any initiator can log in — so no block of the old data is ever
/// served after the initiator asked for it to be destroyed.
#[test]
fn a_sanitize_survives_kill_9() {
    let mut d = Daemon::start(Opts {
        config: Some(format!(
            "[settings]\nnop_interval_secs = 0\n\n[[target]]\nname = \"{}\"\n\n\
             [[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:{{port}}\"]\n\n\
             [[target.lun]]\nid = 0\nbackstore = \"file:{{dir}}/lun0.img:16M\"\n\
             sanitize_rate = \"4M\"\n",
            common::IQN
        )),
        ..Opts::default()
    });
    let mut s = session(&d, "iqn.2026-11.io.ferrite:sanitizer", 2);
    s.write10(100, &[0x33; 4 * BLOCK], BLOCK).unwrap();
    // OVERWRITE with IMMED = 1: GOOD at once, then NOT READY, SANITIZE IN PROGRESS.
    let r = s
        .write_command(
            &[0x48, 0x81, 0, 0, 0, 0, 0, 0, 5, 0],
            &[0x01, 0, 0, 1, 0xC4],
        )
        .unwrap();
    assert_eq!(r.status, 0, "{:02x?}", r.sense);
    let tur = s.command(&[0u8; 6], 0).unwrap();
    assert_eq!(tur.asc(), Some((0x04, 0x1B)));
    drop(s);
    let cfg = d.config_path();
    common::pr::kill9_and_restart(&mut d, &cfg);
    assert!(d.log_text().contains("started again"), "{}", d.log_text());
    let mut s = Session::connect(
        d.addr(),
        &LoginOpts {
            initiator: "iqn.2026-11.io.ferrite:sanitizer",
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 3],
            ..LoginOpts::default()
        },
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut saw_progress = false;
    loop {
        let r = s.command(&[0u8; 6], 0).unwrap();
        if r.status == 0 {
            break;
        }
        match r.asc() {
            Some((0x04, 0x1B)) => saw_progress = true,
            Some((0x29, _)) => {} // the new I_T nexus's unit attention
            other => panic!(
                "TEST UNIT READY after the restart: {other:02x?} {:02x?}",
                r.sense
            ),
        }
        assert!(std::time::Instant::now() < deadline, "sanitize never ended");
        thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        saw_progress,
        "the restarted daemon did not resume the sanitize"
    );
    for lba in [0u32, 100, 103, 20_000, 32_767] {
        let b = s.read10(lba, 1, BLOCK).unwrap();
        assert!(b.iter().all(|&x| x == 0xC4), "LBA {lba}: {:02x?}", &b[..8]);
    }
    s.logout().unwrap();
}

/// Over the wire on a thin file LUN: the Logical Block Provisioning log page (SBC-4 §6.4.4)
/// counts what the file really holds; FORMAT UNIT (SBC-4 §5.4) deallocates it all, so the file
/// gives its space back and every block reads as zero; SEND DIAGNOSTIC's default self-test
/// passes.
#[test]
fn format_unit_and_the_provisioning_log_page_on_a_file_lun() {
    const MIB: usize = 1 << 20;
    let d = Daemon::start(Opts {
        luns: vec!["file:{dir}/lun0.img:32M".into()],
        ..Opts::default()
    });
    let file = d.dir.path().join("lun0.img");
    let used = || std::fs::metadata(&file).unwrap().blocks() * 512;
    let mut s = session(&d, "iqn.2026-11.io.ferrite:format-test", 4);
    let mut data = vec![0u8; MIB];
    Rng::new(11).fill(&mut data);
    for i in 0..8u32 {
        s.write10(i * (MIB / BLOCK) as u32, &data, BLOCK).unwrap();
    }
    // LOG SENSE, page 0Ch: USED LBA MAPPING RESOURCE COUNT (parameter 0002h) in blocks
    // (THRESHOLD EXPONENT 0 for a LUN this small).
    let log_used = |s: &mut Session| {
        let r = s
            .command(&[0x4D, 0, 0x40 | 0x0C, 0, 0, 0, 0, 0, 64, 0], 64)
            .unwrap();
        assert_eq!(r.status, 0, "LOG SENSE: {:02x?}", r.sense);
        assert_eq!(&r.data[16..18], &[0, 2], "{:02x?}", r.data);
        u64::from(u32::from_be_bytes(r.data[20..24].try_into().unwrap())) * BLOCK as u64
    };
    // The two agree (up to what a file system may preallocate or trim meanwhile).
    let near = |a: u64, b: u64| a.abs_diff(b) <= MIB as u64;
    let before = log_used(&mut s);
    assert!(
        near(before, used()),
        "log page {before}, st_blocks {}",
        used()
    );
    assert!(before >= 8 * MIB as u64);
    // FORMAT UNIT, no parameter list: waits for the end (no IMMED).
    let r = s.command(&[0x04, 0, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(r.status, 0, "FORMAT UNIT: {:02x?}", r.sense);
    assert!(used() < MIB as u64, "the file still holds {} bytes", used());
    let after = log_used(&mut s);
    assert!(
        near(after, used()),
        "log page {after}, st_blocks {}",
        used()
    );
    let back = s.read10(0, 64, BLOCK).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    let r = s.command(&[0x1D, 0x04, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(r.status, 0, "SEND DIAGNOSTIC: {:02x?}", r.sense);
    s.logout().unwrap();
}
