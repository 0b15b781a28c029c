//! The encrypted backstore over a file: nothing of the plaintext reaches the file, the same key
//! file reads it back after a reopen, a wrong or loose key file is refused, holes read as
//! zeroes, and CRYPTO ERASE makes the old blocks unreadable for good (the old wrapped key
//! overwritten where it lay, a crash in between recovered).

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstore::{Backstore, EncryptedBackstore, FileBackstore, KeyFileKey, KeyOrigin};

const SIZE: u64 = 4 << 20;
const BS: u32 = 512;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-crypt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn key_file(dir: &Path, name: &str, byte: u8, mode: u32) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, [byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn open(dir: &Path, key: &Path) -> io::Result<(EncryptedBackstore, KeyOrigin)> {
    let file: Arc<dyn Backstore> = Arc::new(FileBackstore::open(dir.join("lun.img"), Some(SIZE))?);
    EncryptedBackstore::open(file, BS, KeyFileKey::load(key)?, Some(dir.join("lun.dek")))
}

fn pattern() -> Vec<u8> {
    b"FERRITE-SECRET-PATTERN-"
        .iter()
        .copied()
        .cycle()
        .take(64 << 10)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_trace_reopen_wrong_key_and_crypto_erase() {
    let dir = scratch("cycle");
    let key = key_file(&dir, "lun.key", 0x11, 0o600);
    let p = pattern();
    {
        let (b, origin) = open(&dir, &key).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        assert!(b.encrypted());
        b.write_at(&p, 1 << 20).unwrap();
        b.flush().unwrap();
        assert_eq!(b.read_vec(p.len(), 1 << 20).unwrap(), p);
        // Never written, and unmapped after writing: zeroes, not decrypted noise.
        assert_eq!(b.read_vec(4096, 0).unwrap(), vec![0; 4096]);
        b.write_at(&p[..8192], 2 << 20).unwrap();
        b.unmap(2 << 20, 8192).unwrap();
        assert_eq!(b.read_vec(8192, 2 << 20).unwrap(), vec![0; 8192]);
    }
    let raw = std::fs::read(dir.join("lun.img")).unwrap();
    assert!(
        !contains(&raw, b"FERRITE-SECRET"),
        "plaintext in the backing file"
    );
    let state = std::fs::read_to_string(dir.join("lun.dek")).unwrap();
    assert!(!state.contains("1111111111"), "{state}");

    // The same key file reads it back.
    let (b, origin) = open(&dir, &key).unwrap();
    assert_eq!(origin, KeyOrigin::Loaded);
    assert_eq!(b.read_vec(p.len(), 1 << 20).unwrap(), p);
    drop(b);

    // Another key is refused at open, naming the file, never showing a key.
    let wrong = key_file(&dir, "wrong.key", 0x22, 0o400);
    let e = open(&dir, &wrong).unwrap_err().to_string();
    assert!(e.contains("does not unwrap"), "{e}");
    assert!(!e.contains("2222") && !e.contains("1111"), "{e}");

    // Crypto erase: the pattern is gone, and stays gone with the same key file.
    let (b, _) = open(&dir, &key).unwrap();
    let before = std::fs::read_to_string(dir.join("lun.dek")).unwrap();
    b.crypto_erase().unwrap();
    assert_ne!(
        std::fs::read_to_string(dir.join("lun.dek")).unwrap(),
        before
    );
    let after = b.read_vec(p.len(), 1 << 20).unwrap();
    assert_ne!(after, p);
    assert!(!contains(&after, b"FERRITE-SECRET"));
    // New writes work under the new key; holes still read as zeroes.
    b.write_at(&p[..4096], 0).unwrap();
    drop(b);
    let (b, origin) = open(&dir, &key).unwrap();
    assert_eq!(origin, KeyOrigin::Loaded);
    assert_eq!(b.read_vec(4096, 0).unwrap(), p[..4096]);
    assert!(!contains(
        &b.read_vec(p.len(), 1 << 20).unwrap(),
        b"FERRITE-SECRET"
    ));
    assert_eq!(b.read_vec(4096, 3 << 20).unwrap(), vec![0; 4096]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loose_key_files_and_lost_state_are_refused() {
    let dir = scratch("refuse");
    for mode in [0o640, 0o604, 0o644, 0o660] {
        let k = key_file(&dir, "loose.key", 1, mode);
        let e = KeyFileKey::load(&k).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{mode:o}");
    }
    let short = dir.join("short.key");
    std::fs::write(&short, [1; 31]).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(KeyFileKey::load(&short).is_err());
    let hex = dir.join("hex.key");
    std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&hex, std::fs::Permissions::from_mode(0o600)).unwrap();
    let k = KeyFileKey::load(&hex).unwrap();
    assert!(!format!("{k:?}").contains("abab"), "{k:?}");
    drop(k);

    // Data in the file but no state file: the key is lost, and the LUN is not served as noise.
    let (b, _) = open(&dir, &hex).unwrap();
    b.write_at(&[7; 512], 0).unwrap();
    drop(b);
    std::fs::remove_file(dir.join("lun.dek")).unwrap();
    let e = open(&dir, &hex).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn crypto_erase_overwrites_the_old_wrapped_key_and_recovers_from_a_crash_in_between() {
    let dir = scratch("scrub");
    let key = key_file(&dir, "lun.key", 0x33, 0o600);
    let p = pattern();
    let state = dir.join("lun.dek");
    {
        let (b, _) = open(&dir, &key).unwrap();
        b.write_at(&p, 0).unwrap();
    }
    // A second name for the state file's inode: what stays on the disk's old blocks after the
    // rename unlinks the old file.
    let old_text = std::fs::read_to_string(&state).unwrap();
    let old_inode = dir.join("old-inode");
    std::fs::hard_link(&state, &old_inode).unwrap();
    let (b, _) = open(&dir, &key).unwrap();
    b.crypto_erase().unwrap();
    drop(b);
    let left = std::fs::read(&old_inode).unwrap();
    assert_eq!(left.len(), old_text.len());
    let wrapped = old_text
        .lines()
        .find(|l| l.starts_with("wrapped "))
        .unwrap();
    assert!(
        !contains(&left, &wrapped.as_bytes()[8..24]),
        "the old wrapped key is still in the old file's blocks"
    );
    assert!(!contains(&left, b"ferrite-lun-key"));

    // A crash after the overwrite and before the rename: noise where the state was, the new
    // wrapped key staged beside it. The open finishes the erase with the staged key.
    let (b, _) = open(&dir, &key).unwrap();
    b.write_at(&p, 0).unwrap();
    drop(b);
    let current = std::fs::read(&state).unwrap();
    // Noise that is not text, and noise that is.
    for noise in [0xa5u8, b'x'] {
        std::fs::write(backstore::durable::tmp_path(&state), &current).unwrap();
        std::fs::write(&state, vec![noise; current.len()]).unwrap();
        let (b, origin) = open(&dir, &key).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(b.read_vec(p.len(), 0).unwrap(), p);
        assert_eq!(std::fs::read(&state).unwrap(), current);
        assert!(!backstore::durable::tmp_path(&state).exists());
    }
    // Noise and nothing staged: refused, not served as garbage.
    std::fs::write(&state, vec![0xa5; current.len()]).unwrap();
    assert!(open(&dir, &key).is_err());
    // A staged file under another key file does not count either.
    let other = key_file(&dir, "other.key", 0x44, 0o600);
    assert!(open(&dir, &other).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
