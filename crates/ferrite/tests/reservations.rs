//! Persistent reservations as a cluster fences a node with them (the fence_scsi recipe): two
//! initiators register, one reserves Write Exclusive – Registrants Only, the other PREEMPT AND
//! ABORTs it. The fenced node's writes then get RESERVATION CONFLICT while its reads still
//! work, and its in-flight write never lands. Then the daemon is killed with SIGKILL and
//! restarted: the APTPL state is what it was. Also: a damaged state file stops the daemon from
//! starting, `ferrite pr show|clear` reads and removes it, and killing the daemon while
//! registrations change never loses an acknowledged one.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, Session};
use common::pr::*;
use common::{Daemon, Opts, TempDir, IQN};

const NODE_A: &str = "iqn.2026-11.io.example:node-a";
const NODE_B: &str = "iqn.2026-11.io.example:node-b";
const KEY_A: u64 = 0xA1A1_0000_0000_00A1;
const KEY_B: u64 = 0xB2B2_0000_0000_00B2;
const BS: usize = 512;

/// A daemon with a file LUN and a state directory, both in `keep` (which outlives restarts).
fn config(keep: &Path) -> String {
    format!(
        r#"
[settings]
state_dir = "{state}"
nop_interval_secs = 0

[[target]]
name = "{IQN}"

[[target.portal_group]]
tag = 1
portals = ["127.0.0.1:{{port}}"]

[[target.lun]]
id = 0
backstore = "file:{lun}:16M"
"#,
        state = keep.join("state").display(),
        lun = keep.join("lun0.img").display(),
    )
}

fn login(d: &Daemon, initiator: &str, isid_tail: u8) -> Session {
    let o = LoginOpts {
        initiator,
        isid: [0x80, 0, 0, 0, 0, isid_tail],
        ..LoginOpts::default()
    };
    Session::login(d.addr(), &o).unwrap_or_else(|e| panic!("login {initiator}: {e}"))
}

fn write_status(s: &mut Session, lba: u32, byte: u8) -> u8 {
    s.write10_result(lba, &vec![byte; BS], BS)
        .expect("WRITE(10)")
        .status
}

#[test]
fn fence_with_preempt_and_abort_then_survive_sigkill() {
    let keep = TempDir::new("pr-fence");
    let mut d = Daemon::start(Opts {
        config: Some(config(keep.path())),
        ..Opts::default()
    });
    let mut a = login(&d, NODE_A, 1);
    let mut b = login(&d, NODE_B, 2);

    // Both nodes register with APTPL; A takes the reservation.
    prout_ok(&mut a, REGISTER_AND_IGNORE, 0, 0, KEY_A, APTPL);
    prout_ok(&mut b, REGISTER_AND_IGNORE, 0, 0, KEY_B, APTPL);
    prout_ok(&mut a, RESERVE, WE_RO, KEY_A, 0, 0);
    assert_eq!(read_reservation(&mut b), Some((KEY_A, WE_RO)));
    // Registrants may write under Write Exclusive – Registrants Only.
    a.write10(10, &[0xAA; BS], BS).unwrap();
    b.write10(11, &[0xBB; BS], BS).unwrap();

    // A has a write in flight: the target has its command and waits for the data.
    let (itt, ttt) = start_write(&mut a, 12, BS).unwrap();

    // B fences A.
    prout_ok(&mut b, PREEMPT_AND_ABORT, WE_RO, KEY_B, KEY_A, 0);
    assert_eq!(read_keys(&mut b).1, vec![KEY_B]);
    assert_eq!(read_reservation(&mut b), Some((KEY_B, WE_RO)));

    // SPC-4 §5.13.11.2.5: A's in-flight write is aborted by the transport (the daemon routes
    // the device server's PREEMPT AND ABORT to A's session): it gets no response at all.
    finish_write(&mut a, itt, ttt, &[0xEE; BS]).unwrap();
    let ((tur_status, tur_sense), write) = tur_collecting(&mut a, itt).unwrap();
    assert!(
        write.is_none(),
        "A's in-flight write was answered instead of aborted: {write:?}"
    );
    // The unit attention is still pending for A's next command.
    let registrations_preempted = Some((0x06, 0x2A, 0x05));
    assert_eq!(tur_status, STATUS_CHECK_CONDITION);
    assert_eq!(sense_code(&tur_sense), registrations_preempted);
    a.clear_unit_attentions().unwrap();
    assert_eq!(
        b.read10(12, 1, BS).unwrap(),
        vec![0u8; BS],
        "the fenced write reached the medium"
    );

    // Fenced: writes conflict, reads work (Write Exclusive – Registrants Only, A unregistered).
    assert_eq!(write_status(&mut a, 13, 0xEE), STATUS_RESERVATION_CONFLICT);
    assert_eq!(a.read10(10, 1, BS).unwrap(), vec![0xAA; BS]);
    // A cannot take its registration back with its old key, nor reserve.
    let r = prout(&mut a, RESERVE, WE_RO, KEY_A, 0, 0).unwrap();
    assert_eq!(r.status, STATUS_RESERVATION_CONFLICT);
    b.write10(13, &[0xBB; BS], BS).unwrap();

    let keys_before = read_keys(&mut b);
    let resv_before = read_reservation(&mut b);
    let full_before = full_status_body(&mut b);
    let caps = prin(&mut b, REPORT_CAPABILITIES).data;
    assert_eq!(caps[2] & 0x01, 0x01, "PTPL_C");
    assert_eq!(caps[3] & 0x01, 0x01, "PTPL_A");

    // kill -9 and start again: the saved state is restored before anyone logs in.
    drop(a);
    drop(b);
    let cfg = d.config_path();
    kill9_and_restart(&mut d, &cfg);
    let mut a = login(&d, NODE_A, 1);
    let mut b = login(&d, NODE_B, 2);
    let keys_after = read_keys(&mut b);
    // SPC-4 §6.15.2: PRGENERATION is zero after power on; the rest is exactly as it was.
    assert_eq!(keys_after, (0, keys_before.1.clone()));
    assert_eq!(read_reservation(&mut b), resv_before);
    assert_eq!(full_status_body(&mut b), full_before);
    assert_eq!(prin(&mut b, REPORT_CAPABILITIES).data[3] & 0x01, 0x01);
    // Still fenced.
    assert_eq!(write_status(&mut a, 14, 0xEE), STATUS_RESERVATION_CONFLICT);
    assert_eq!(a.read10(13, 1, BS).unwrap(), vec![0xBB; BS]);
    b.write10(14, &[0xBB; BS], BS).unwrap();

    // The operator's offline view of the same state.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["pr", "show", "--state-dir"])
        .arg(keep.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{IQN}_lun0.pr")), "{text}");
    assert!(text.contains(NODE_B) && !text.contains(NODE_A), "{text}");
    assert!(
        text.contains("Write Exclusive - Registrants Only"),
        "{text}"
    );

    // B lets A back in: A registers again and is a registrant.
    prout_ok(&mut a, REGISTER_AND_IGNORE, 0, 0, KEY_A, APTPL);
    a.write10(15, &[0xAA; BS], BS).unwrap();
    a.logout().unwrap();
    b.logout().unwrap();
}

/// Start the daemon binary directly and expect it to refuse to start; returns its stderr.
fn start_fails(cfg_path: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["serve", "--admin-socket", "none", "--config"])
        .arg(cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!st.success(), "ferrite started with a damaged state file");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferrite kept running with a damaged state file");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn damaged_state_file_refuses_to_start_until_cleared() {
    let keep = TempDir::new("pr-damaged");
    let mut d = Daemon::start(Opts {
        config: Some(config(keep.path())),
        ..Opts::default()
    });
    let mut a = login(&d, NODE_A, 1);
    prout_ok(&mut a, REGISTER_AND_IGNORE, 0, 0, KEY_A, APTPL);
    drop(a);
    let saved_cfg = d.config_path();
    kill9(&mut d);

    let file = keep.path().join("state").join(format!("{IQN}_lun0.pr"));
    let mut bytes = fs::read(&file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    fs::write(&file, &bytes).unwrap();
    let err = start_fails(&saved_cfg);
    assert!(
        err.contains("_lun0.pr") && err.contains("checksum"),
        "{err}"
    );

    // `ferrite pr show` says what is wrong; `ferrite pr clear` removes it.
    let state = keep.path().join("state");
    let show = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["pr", "show", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("DAMAGED"));
    let clear = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["pr", "clear", "--state-dir"])
        .arg(&state)
        .args(["--lun-file", &format!("{IQN}_lun0.pr")])
        .output()
        .unwrap();
    assert!(
        clear.status.success(),
        "{}",
        String::from_utf8_lossy(&clear.stderr)
    );
    assert!(!file.exists());

    d.restart(&saved_cfg);
    let mut a = login(&d, NODE_A, 1);
    assert_eq!(read_keys(&mut a), (0, vec![]));
    a.logout().unwrap();
}

/// Kill the daemon at arbitrary moments while one initiator keeps changing its registration
/// key (APTPL = 1): after every restart the saved key is the last one acknowledged or the one
/// in flight when the daemon died — never older, never damaged.
#[test]
fn sigkill_while_registrations_change_never_loses_an_acknowledged_one() {
    let keep = TempDir::new("pr-kill");
    let mut d = Daemon::start(Opts {
        config: Some(config(keep.path())),
        ..Opts::default()
    });
    let cfg = d.config_path();
    let mut rng = common::Rng::new(0x51_6E_41_4C);
    let mut next_key = 1u64;
    for round in 0..6 {
        let acked = Arc::new(AtomicU64::new(0));
        let port = d.addr();
        let acked2 = acked.clone();
        let start_key = next_key;
        let worker = thread::spawn(move || {
            let o = LoginOpts {
                initiator: NODE_A,
                isid: [0x80, 0, 0, 0, 0, 1],
                ..LoginOpts::default()
            };
            let Ok(mut s) = Session::login(port, &o) else {
                return;
            };
            let mut k = start_key;
            loop {
                match prout(&mut s, REGISTER_AND_IGNORE, 0, 0, k, APTPL) {
                    Ok(r) if r.good() => acked2.store(k, Ordering::SeqCst),
                    _ => return, // the daemon died
                }
                k += 1;
            }
        });
        // Let some registrations happen, then kill at a random moment.
        while acked.load(Ordering::SeqCst) < start_key {
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(rng.next_u64() % 40));
        kill9(&mut d);
        worker.join().unwrap();
        let last = acked.load(Ordering::SeqCst);
        d.restart(&cfg);
        let mut probe = login(&d, NODE_B, 9);
        let (_, keys) = read_keys(&mut probe);
        assert_eq!(keys.len(), 1, "round {round}: {keys:?}");
        assert!(
            keys[0] == last || keys[0] == last + 1,
            "round {round}: saved key {} but {last} was acknowledged",
            keys[0]
        );
        eprintln!(
            "round {round}: killed after key {last} was acknowledged; saved {}",
            keys[0]
        );
        next_key = keys[0] + 1;
        probe.logout().unwrap();
    }
}

/// The operator sees the reservation state of the running daemon and can clear it
/// (`ferrite admin pr-show` / `pr-clear`); the initiators see the clear as RESERVATIONS
/// PREEMPTED.
#[test]
fn operator_sees_and_clears_reservations_live() {
    use common::tpg::{admin_json, admin_ok};
    let keep = TempDir::new("pr-admin");
    let d = Daemon::start(Opts {
        config: Some(config(keep.path())),
        ..Opts::default()
    });
    let mut a = login(&d, NODE_A, 1);
    prout_ok(&mut a, REGISTER_AND_IGNORE, 0, 0, KEY_A, 0);
    prout_ok(&mut a, RESERVE, WE_RO, KEY_A, 0, 0);
    let v = admin_json(&d, &["pr-show", IQN, "0"]);
    let st = &v["luns"][0]["state"];
    assert_eq!(
        st["registrations"].as_array().map(|r| r.len()),
        Some(1),
        "{v}"
    );
    assert!(st["reservation"].is_object(), "{v}");
    admin_ok(&d, &["pr-clear", IQN, "0"]);
    let v = admin_json(&d, &["pr-show", IQN]);
    let st = &v["luns"][0]["state"];
    assert_eq!(
        st["registrations"].as_array().map(|r| r.len()),
        Some(0),
        "{v}"
    );
    assert!(st["reservation"].is_null(), "{v}");
    // A is told its reservation went away.
    let ((status, sense), _) = tur_collecting(&mut a, u32::MAX).expect("TEST UNIT READY");
    assert_eq!(status, 0x02);
    assert_eq!(sense_code(&sense), Some((0x06, 0x2A, 0x03)));
    assert_eq!(read_keys(&mut a).1, Vec::<u64>::new());
}

/// The Linux kernel's `IOC_PR_REGISTER` always sets APTPL: on a RAM LUN with no state
/// directory configured (the zero-config demo) the registration is kept in the default state
/// directory and is there after a restart.
#[test]
fn a_ram_lun_keeps_aptpl_registrations_in_the_default_state_directory() {
    let cfg = format!(
        "[[target]]\nname = \"{IQN}\"\n[[target.portal_group]]\ntag = 1\n\
         portals = [\"127.0.0.1:{{port}}\"]\n[[target.lun]]\nid = 0\nbackstore = \"ram:16M\"\n"
    );
    let mut d = Daemon::start(Opts {
        config: Some(cfg),
        ..Opts::default()
    });
    let mut s = login(&d, "iqn.2026-11.io.ferrite:pr-ram", 1);
    // REGISTER with APTPL (PERSISTENT RESERVE OUT byte 20 bit 0).
    prout_ok(&mut s, 0x00, 0, 0, 0xabc, 0x01);
    assert_eq!(read_keys(&mut s).1, vec![0xabc]);
    drop(s);
    let path = d.config_path();
    d.restart(&path);
    let mut s = login(&d, "iqn.2026-11.io.ferrite:pr-ram", 1);
    assert_eq!(
        read_keys(&mut s).1,
        vec![0xabc],
        "APTPL kept it over the restart"
    );
}
