//! Memory a peer controls stays bounded: sessions that fill their command window with
//! maximum-length writes and never send the last Data-Out of any of them, or with
//! maximum-length reads whose data they never read, hold at most their share of the buffer
//! budget, another session's I/O goes on meanwhile, and the daemon's resident memory comes back
//! near idle once they are gone.

mod common;

use std::io::ErrorKind;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, R2t, Session, OP_R2T};
use common::{Daemon, Opts, Rng};

const MIB: u64 = 1 << 20;
/// MAXIMUM TRANSFER LENGTH of a Ferrite LU (VPD B0h): 8 MiB.
const MAX_WRITE: u32 = 8 << 20;
const BLOCK: u32 = 512;
const ATTACKERS: usize = 6;
/// The command window the daemon grants by default (`settings.queue_depth`).
const WINDOW: usize = 128;

/// A session of initiator `iqn.2026-11.io.ferrite:<name>`, its unit attentions cleared.
fn login_as(addr: std::net::SocketAddr, name: &str) -> Session {
    let name = format!("iqn.2026-11.io.ferrite:{name}");
    Session::login(
        addr,
        &LoginOpts {
            initiator: &name,
            ..LoginOpts::default()
        },
    )
    .unwrap()
}

fn write10_cdb(lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// Fill the window with 8 MiB writes, answer every R2T the target sends but keep back the last
/// Data-Out of each write, until the target asks for nothing more for a while. Returns how
/// many bytes the target asked for.
fn hog(s: &mut Session) -> u64 {
    // WRITE(10) carries at most 65535 blocks; 8 MiB of 512-byte blocks is 16384.
    let blocks = (MAX_WRITE / BLOCK) as u16;
    for i in 0..WINDOW as u32 {
        let cdb = write10_cdb((i % 16) * u32::from(blocks), blocks);
        let (b, _) = s.scsi_cmd_bhs(&cdb, false, true, MAX_WRITE);
        s.send(&b, &[]).expect("send WRITE(10)");
    }
    let data = vec![0x5au8; MAX_WRITE as usize];
    s.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut asked = 0u64;
    loop {
        let p = match s.recv() {
            Ok(p) => p,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("hog: {e}"),
        };
        assert_eq!(
            p.opcode(),
            OP_R2T,
            "hog expected only R2Ts: {:02x?}",
            &p.bhs[..8]
        );
        let r = R2t::of(&p);
        asked += u64::from(r.len);
        let last = r.offset + r.len == MAX_WRITE;
        let range = r.offset as usize..(r.offset + r.len) as usize;
        s.answer_r2t(&r, &data[range], last).expect("Data-Out");
    }
    s.stream.set_read_timeout(None).unwrap();
    asked
}

/// A daemon with a file LUN (its data lives in the page cache, not in the daemon's resident
/// memory) and a session that has done some I/O, with the daemon's RSS after it.
fn daemon_with_a_busy_session() -> (Daemon, Session, Rng, u64) {
    let d = Daemon::start(Opts {
        luns: vec!["file:{dir}/lun0.img:256M".into()],
        ..Opts::default()
    });
    let mut good = login_as(d.addr(), "good");
    // Warm up the allocator the way normal I/O does before taking the idle figure.
    let mut rng = Rng::new(14);
    let mut data = vec![0u8; 4 << 20];
    rng.fill(&mut data);
    good.write10(0, &data, BLOCK as usize).unwrap();
    assert_eq!(good.read10(0, 8192, BLOCK as usize).unwrap(), data);
    let idle = d.rss();
    (d, good, rng, idle)
}

/// The good session writes and reads 4 MiB beside the hogs.
fn io_goes_on(good: &mut Session, rng: &mut Rng) {
    let t = Instant::now();
    let mut data = vec![0u8; 4 << 20];
    rng.fill(&mut data);
    good.write10(16384, &data, BLOCK as usize).unwrap();
    assert_eq!(good.read10(16384, 8192, BLOCK as usize).unwrap(), data);
    eprintln!("a 4 MiB write and read beside them took {:?}", t.elapsed());
}

/// RSS comes back within 64 MiB of `idle` (the daemon trims its heap as sessions end).
fn rss_returns(d: &Daemon, idle: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = d.rss();
        if now <= idle + 64 * MIB || Instant::now() > deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!("RSS after the hogs left: {} MiB", after / MIB);
    if after > idle + 64 * MIB {
        // Where the memory is: open descriptors (connections not torn down) and the largest
        // resident mappings (glibc arenas keep 64 MiB-aligned heaps).
        let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count();
        eprintln!("daemon holds {fds} descriptors; mappings over 4 MiB resident:");
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", d.pid())).unwrap();
        let mut mapping = "";
        for l in smaps.lines() {
            match l.strip_prefix("Rss:") {
                Some(v) => {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    if kib > 4096 {
                        eprintln!("  {kib} KiB {mapping}");
                    }
                }
                None if !l.starts_with(|c: char| c.is_ascii_uppercase()) => mapping = l,
                None => {}
            }
        }
    }
    assert!(
        after <= idle + 64 * MIB,
        "RSS {} MiB after the hogs left, idle was {} MiB",
        after / MIB,
        idle / MIB
    );
}

/// RSS with the hogs in place, checked against the budget.
fn rss_held(d: &Daemon, idle: u64, what: &str) {
    let held = d.rss();
    let growth = held.saturating_sub(idle);
    eprintln!(
        "RSS idle {} MiB, with {ATTACKERS} {what} {} MiB (+{} MiB)",
        idle / MIB,
        held / MIB,
        growth / MIB,
    );
    // The default budget is the smaller of 1 GiB and an eighth of memory.
    assert!(
        growth < 1024 * MIB,
        "RSS grew by {} MiB with {what}",
        growth / MIB
    );
}

#[test]
fn stalled_writes_stay_within_the_budget_and_memory_returns_after_logout() {
    let (d, mut good, mut rng, idle) = daemon_with_a_busy_session();
    let addr = d.addr();

    // Six sessions that never finish a write.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut quit = Vec::new();
    let mut hogs = Vec::new();
    for i in 0..ATTACKERS {
        let (quit_tx, quit_rx) = mpsc::channel::<()>();
        quit.push(quit_tx);
        let ready = ready_tx.clone();
        hogs.push(thread::spawn(move || {
            let mut s = login_as(addr, &format!("hog{i}"));
            let asked = hog(&mut s);
            ready.send(asked).unwrap();
            let _ = quit_rx.recv();
            s.logout().unwrap();
        }));
    }
    let asked: Vec<u64> = (0..ATTACKERS)
        .map(|_| ready_rx.recv_timeout(Duration::from_secs(120)).unwrap())
        .collect();
    eprintln!(
        "asked per session (MiB): {:?}",
        asked.iter().map(|a| a / MIB).collect::<Vec<_>>()
    );
    rss_held(&d, idle, "sessions with stalled writes");
    // One session holds at most an eighth of the budget.
    let share = 128 * MIB;
    for a in &asked {
        assert!(
            *a <= share,
            "a session was asked for {a} bytes, above its share"
        );
    }
    // Meanwhile another session's reads and writes go on.
    io_goes_on(&mut good, &mut rng);

    for q in quit {
        q.send(()).unwrap();
    }
    for h in hogs {
        h.join().unwrap();
    }
    rss_returns(&d, idle);
    good.logout().unwrap();
}

#[test]
fn sessions_that_stop_reading_stay_within_the_budget() {
    let (d, mut good, mut rng, idle) = daemon_with_a_busy_session();
    let blocks = (MAX_WRITE / BLOCK) as u16;
    let mut hogs = Vec::new();
    for i in 0..ATTACKERS {
        let mut s = login_as(d.addr(), &format!("reader{i}"));
        // A window of 8 MiB reads, and never a byte read back.
        for j in 0..WINDOW as u32 {
            let mut cdb = write10_cdb((j % 16) * u32::from(blocks), blocks);
            cdb[0] = 0x28; // READ(10)
            let (b, _) = s.scsi_cmd_bhs(&cdb, true, false, MAX_WRITE);
            s.send(&b, &[]).expect("send READ(10)");
        }
        hogs.push(s);
    }
    // Let the daemon run what the budget allows and fill the sockets.
    thread::sleep(Duration::from_secs(3));
    rss_held(&d, idle, "sessions that stopped reading");
    io_goes_on(&mut good, &mut rng);
    // They go away without reading (their connections drop).
    drop(hogs);
    rss_returns(&d, idle);
    good.logout().unwrap();
}

#[test]
fn more_stalled_sessions_than_the_budget_holds_cannot_starve_a_writer() {
    // A 64 MiB budget: one session holds at most 8 MiB (one largest write), so nine sessions
    // that never finish a write want more than there is. The Data-Out timeout (2 s here) ends
    // their connections; the writer waiting first in line is served then.
    let d = Daemon::start(Opts {
        config: Some(
            r#"
            [settings]
            buffer_budget = "64M"
            data_out_timeout_secs = 2
            [[target]]
            name = "iqn.2026-11.io.ferrite:itest"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:{port}"]
            [[target.lun]]
            id = 0
            backstore = "file:{dir}/lun0.img:256M"
            "#
            .into(),
        ),
        ..Opts::default()
    });
    let blocks = (MAX_WRITE / BLOCK) as u16;
    let mut hogs = Vec::new();
    for i in 0..9u32 {
        let mut s = login_as(d.addr(), &format!("staller{i}"));
        let (b, _) = s.scsi_cmd_bhs(
            &write10_cdb(i * u32::from(blocks), blocks),
            false,
            true,
            MAX_WRITE,
        );
        s.send(&b, &[]).unwrap();
        hogs.push(s);
    }
    let mut good = login_as(d.addr(), "good");
    let t = Instant::now();
    let data = vec![0x6bu8; 1 << 20];
    good.write10(200_000, &data, BLOCK as usize).unwrap();
    eprintln!(
        "the write waited {:?} behind nine stalled sessions",
        t.elapsed()
    );
    assert_eq!(good.read10(200_000, 2048, BLOCK as usize).unwrap(), data);
    // The stalled sessions were dropped by the target.
    let log = d.log_text();
    assert!(
        log.matches("no Data-Out within data_out_timeout").count() >= 1,
        "no connection was dropped for unanswered R2Ts:\n{log}"
    );
    drop(hogs);
    good.logout().unwrap();
}
