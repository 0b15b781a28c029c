//! A LUN whose backstore grows or shrinks while it is served (the operator ran `truncate`,
//! `lvextend` or `rbd resize`): the daemon notices within seconds, every initiator gets the unit
//! attention CAPACITY DATA HAS CHANGED (2Ah/09h), READ CAPACITY(16) answers the new size, and
//! the new blocks can be written and read; an encrypted LUN follows its store the same way.
//! (RBD images: `tests/rbd.rs`.)

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use common::initiator::{LoginOpts, Session};
use common::{Daemon, Opts};

const BLOCK: usize = 512;

/// A session of its own initiator port (ISID `n`).
fn session(d: &Daemon, n: u8) -> Session {
    let opts = LoginOpts {
        isid: [0x80, 0, 0, 0, 0x5e, n],
        ..LoginOpts::default()
    };
    let mut s = Session::login(d.addr(), &opts).expect("login");
    s.clear_unit_attentions().unwrap();
    s
}

/// READ CAPACITY(16): the number of logical blocks.
fn blocks(s: &mut Session) -> Result<u64, (u8, Option<(u8, u8)>)> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let r = s.command(&cdb, 32).expect("READ CAPACITY(16)");
    if r.status != 0 {
        return Err((r.status, r.asc()));
    }
    let last = u64::from_be_bytes(r.data[..8].try_into().unwrap());
    Ok(last + 1)
}

/// Waits for the unit attention on a TEST UNIT READY, then READ CAPACITY gives `want`.
fn sees_new_capacity(s: &mut Session, want: u64) {
    let t0 = Instant::now();
    loop {
        let r = s.command(&[0; 6], 0).expect("TEST UNIT READY");
        if r.status == 2 {
            assert_eq!(r.sense_key(), Some(6), "UNIT ATTENTION: {:?}", r.sense);
            assert_eq!(r.asc(), Some((0x2a, 0x09)), "CAPACITY DATA HAS CHANGED");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no unit attention after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(blocks(s), Ok(want));
}

fn grows_and_shrinks(lun: &str, path_of: impl Fn(&Daemon) -> std::path::PathBuf) {
    let d = Daemon::start(Opts {
        config: Some(format!(
            "[settings]\nnop_interval_secs = 0\n\n[[target]]\nname = \"{}\"\n\n\
             [[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:{{port}}\"]\n\n\
             [[target.lun]]\nid = 0\n{lun}\n",
            common::IQN
        )),
        ..Opts::default()
    });
    let mut s = session(&d, 1);
    let mut other = session(&d, 2);
    assert_eq!(blocks(&mut s), Ok(16 << 11));
    let path = path_of(&d);
    // Grown to 24 MiB: both sessions are told, the new blocks work.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    sees_new_capacity(&mut s, 24 << 11);
    sees_new_capacity(&mut other, 24 << 11);
    let last = (24 << 11) - 8;
    let data: Vec<u8> = (0..8 * BLOCK).map(|i| (i % 251) as u8).collect();
    s.write10(last, &data, BLOCK).unwrap();
    assert_eq!(other.read10(last, 8, BLOCK).unwrap(), data);
    // Shrunk back: the blocks past the end are out of range again.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    sees_new_capacity(&mut s, 16 << 11);
    let r = s
        .command(
            &{
                let mut c = [0u8; 10];
                c[0] = 0x28;
                c[2..6].copy_from_slice(&last.to_be_bytes());
                c[8] = 8;
                c
            },
            (8 * BLOCK) as u32,
        )
        .unwrap();
    assert_eq!(
        (r.status, r.asc()),
        (2, Some((0x21, 0x00))),
        "LBA OUT OF RANGE"
    );
}

#[test]
fn a_file_lun_follows_its_file() {
    grows_and_shrinks("backstore = \"file:{dir}/lun0.img:16M\"", |d| {
        d.dir.path().join("lun0.img")
    });
}

#[test]
fn an_encrypted_file_lun_follows_its_file() {
    let keys = common::TempDir::new("capacity-key");
    let key = keys.path().join("k");
    fs::write(&key, [7u8; 32]).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    grows_and_shrinks(
        &format!(
            "backstore = \"file:{{dir}}/lun0.img:16M\"\nencryption = {{ key_file = \"{}\" }}",
            key.display()
        ),
        |d| d.dir.path().join("lun0.img"),
    );
}
