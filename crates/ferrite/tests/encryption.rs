//! Encrypted LUNs end to end (`encryption = { key_file = ... }`): a pattern written through
//! iSCSI leaves no trace in the backing file, a daemon restarted with the same key file reads
//! it back, SANITIZE CRYPTO ERASE makes it unreadable for good (also after a restart), and a
//! wrong or loosely protected key file stops the daemon at start instead of serving noise.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use common::initiator::{LoginOpts, Session};
use common::sbc::data_out_cmd;
use common::{Daemon, Opts};

const BLOCK: usize = 512;
const LBA: u32 = 4096;

fn config(dir: &Path, port: u16, key: &str) -> String {
    format!(
        "[settings]\nnop_interval_secs = 0\nstate_dir = \"{}/state\"\n\n[[target]]\nname = \"{}\"\n\n\
         [[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:{port}\"]\n\n\
         [[target.lun]]\nid = 0\nbackstore = \"file:{}/lun0.img:16M\"\n\
         encryption = {{ key_file = \"{}/{key}\" }}\n",
        dir.display(),
        common::IQN,
        dir.display(),
        dir.display()
    )
}

fn write_key(path: &Path, byte: u8, mode: u32) {
    let _ = fs::remove_file(path);
    fs::write(path, [byte; 32]).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn session(d: &Daemon) -> Session {
    let mut s = Session::login(d.addr(), &LoginOpts::default()).expect("login");
    s.clear_unit_attentions().unwrap();
    s
}

fn pattern() -> Vec<u8> {
    b"ENCRYPTED-LUN-PATTERN:"
        .iter()
        .copied()
        .cycle()
        .take(64 * BLOCK)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The daemon with the configuration in `cfg` must refuse to start; its output.
fn refused(cfg: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["serve", "--admin-socket", "none", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {}", cfg.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pattern_hidden_survives_restart_and_crypto_erase_is_for_good() {
    // Key, image, state and configurations in a directory that outlives the daemon.
    let scratch = common::TempDir::new("encryption");
    let dir = scratch.path().to_path_buf();
    let d0 = Daemon::start(Opts::default());
    let port = d0.port;
    let key = dir.join("lun0.key");
    write_key(&key, 0x3c, 0o600);
    let cfg = dir.join("encrypted.toml");
    fs::write(&cfg, config(&dir, port, "lun0.key")).unwrap();
    let mut d = d0;
    d.restart(&cfg);

    let p = pattern();
    let mut s = session(&d);
    s.write10(LBA, &p, BLOCK).unwrap();
    assert_eq!(s.read10(LBA, 64, BLOCK).unwrap(), p);
    // Never written: zeroes, not decrypted noise.
    assert_eq!(s.read10(0, 8, BLOCK).unwrap(), vec![0; 8 * BLOCK]);
    // SYNCHRONIZE CACHE, then look at the file itself.
    data_out_cmd(&mut s, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
    let raw = fs::read(dir.join("lun0.img")).unwrap();
    assert!(
        !contains(&raw, b"ENCRYPTED-LUN"),
        "plaintext in the backing file"
    );
    let log = d.log_text();
    assert!(
        !log.contains("3c3c3c3c") && !log.contains("<<<<"),
        "key in the log"
    );
    drop(s);

    // A restart with the same key file reads the pattern back.
    d.restart(&cfg);
    let mut s = session(&d);
    assert_eq!(s.read10(LBA, 64, BLOCK).unwrap(), p);

    // REPORT SUPPORTED OPERATION CODES offers CRYPTO ERASE here.
    let r = s
        .command(&[0xA3, 0x0C, 0x02, 0x48, 0, 0x03, 0, 0, 2, 0, 0, 0], 512)
        .unwrap();
    assert_eq!(r.data[1] & 0x07, 0x03, "{:02x?}", r.data);

    // SANITIZE CRYPTO ERASE (IMMED = 0: answers when the key is changed).
    let st = data_out_cmd(&mut s, &[0x48, 0x03, 0, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
    assert!(st.good(), "{st:?}");
    s.clear_unit_attentions().unwrap();
    let after = s.read10(LBA, 64, BLOCK).unwrap();
    assert_ne!(after, p);
    assert!(!contains(&after, b"ENCRYPTED-LUN"));
    assert_eq!(s.read10(0, 8, BLOCK).unwrap(), vec![0; 8 * BLOCK]);
    drop(s);

    // Gone for good: a restart with the same key file does not bring it back.
    d.restart(&cfg);
    let mut s = session(&d);
    let again = s.read10(LBA, 64, BLOCK).unwrap();
    assert!(!contains(&again, b"ENCRYPTED-LUN"));
    assert_eq!(again, after, "the new key is the one saved");
    drop(s);
    drop(d);

    // A wrong key file, or one others may read, stops the start.
    write_key(&dir.join("wrong.key"), 0x77, 0o600);
    let wrong = dir.join("wrong.toml");
    fs::write(&wrong, config(&dir, port, "wrong.key")).unwrap();
    let err = refused(&wrong);
    assert!(err.contains("does not unwrap"), "{err}");
    assert!(!err.contains("7777") && !err.contains("3c3c"), "{err}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(&cfg);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(dir.join("state").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with("_lun0.dek")));
}
