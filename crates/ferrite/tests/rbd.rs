//! RBD LUNs end to end, on a throw-away single-node Ceph cluster each test starts
//! (`testkit::ceph`; skipped with a message where Ceph is not installed, unless under CI):
//!
//! * libiscsi's conformance suite on an RBD LUN, held to `conformance/known-failures.txt` and
//!   `conformance/known-failures-rbd.txt` and to the floor `rbd` in
//!   `conformance/kinds-min-passed.txt`;
//! * a `qemu-img convert` round trip of a random image onto an RBD LUN and back;
//! * two Ferrite processes exporting one image: what one writes the other reads, and COMPARE
//!   AND WRITE through either sees the other's data;
//! * a missing image or an unreachable cluster stops the start with a message saying which;
//! * an encrypted RBD LUN: what it stores in the image is ciphertext, and a restarted daemon
//!   reads the data back;
//! * an image resized while served: the LU follows.

mod common;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::conformance::{read_list, repo_root, run_suite};
use common::initiator::{LoginOpts, Session};
use common::sbc::compare_and_write;
use common::{require_qemu_iscsi, require_tool, run, Daemon, Opts, Rng, IQN};
use testkit::ceph::Ceph;

/// A configuration with one portal and LUN 0 on `rbd/IMAGE` of the cluster `conf`.
fn config(conf: &Path, image: &str, second_portal: bool) -> String {
    config_with_timeout(conf, image, second_portal, 10)
}

fn config_with_timeout(conf: &Path, image: &str, second_portal: bool, timeout: u32) -> String {
    let portals = if second_portal {
        format!(
            "\"127.0.0.1:{{port}}\", \"{}:{{port2}}\"",
            common::SECOND_IP
        )
    } else {
        "\"127.0.0.1:{port}\"".into()
    };
    format!(
        "[settings]\nnop_interval_secs = 0\n\n[[target]]\nname = \"{IQN}\"\n\n\
         [[target.portal_group]]\ntag = 1\nportals = [{portals}]\n\n\
         [[target.lun]]\nid = 0\nbackstore = \"rbd:rbd/{image}\"\n\
         ceph = {{ conf = \"{}\", timeout_secs = {timeout} }}\n",
        conf.display()
    )
}

fn daemon(ceph: &Ceph, image: &str, second_portal: bool) -> Daemon {
    Daemon::start(Opts {
        second_portal,
        config: Some(config(&ceph.conf(), image, second_portal)),
        ..Opts::default()
    })
}

fn session(d: &Daemon) -> Session {
    let mut s = Session::login(d.addr(), &LoginOpts::default()).expect("login");
    s.clear_unit_attentions().unwrap();
    s
}

#[test]
fn libiscsi_conformance_on_an_rbd_lun() {
    require_tool("iscsi-test-cu");
    let Some(ceph) = Ceph::start() else { return };
    ceph.create_image("conformance", 128 << 20, 22);
    let mut known = read_list(&repo_root().join("conformance/known-failures.txt"));
    known.extend(read_list(
        &repo_root().join("conformance/known-failures-rbd.txt"),
    ));
    let floors = read_list(&repo_root().join("conformance/kinds-min-passed.txt"));
    let floor: usize = floors
        .get("rbd")
        .and_then(|v| v.parse().ok())
        .expect("a floor for rbd in kinds-min-passed.txt");
    let filter = std::env::var("FERRITE_CONFORMANCE_TESTS")
        .ok()
        .filter(|s| !s.is_empty());
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-rbd");
    fs::create_dir_all(&out_dir).unwrap();
    let d = daemon(&ceph, "conformance", true);
    let t0 = Instant::now();
    // Every test but Sanitize.Reset, as conformance.rs runs them on a thin file LUN.
    let tests = filter
        .as_deref()
        .unwrap_or("ALL.[!S]*,ALL.S[!a]*,ALL.Sanitize.[!R]*,ALL.Sanitize.Rea*,ALL.Sanitize.Reser*");
    let scored = run_suite(
        tests,
        &[&d.url(0), &d.url2(0)],
        Duration::from_secs(1800),
        &out_dir.join("iscsi-test-cu.log"),
    );
    let _ = fs::copy(d.log_path(), out_dir.join("ferrite.log"));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut problems = Vec::new();
    let mut skipped_names = Vec::new();
    for v in scored {
        if v.status == "passed" && known.contains_key(&v.name) {
            eprintln!(
                "conformance[rbd]: {} passes now: take it off the known-failures lists",
                v.name
            );
        }
        match v.status {
            "passed" => passed += 1,
            "skipped" => {
                skipped += 1;
                skipped_names.push(v.name);
            }
            _ => {
                failed += 1;
                if !known.contains_key(&v.name) {
                    problems.push(format!(
                        "FAILED, not in the known-failures lists: {}  {}",
                        v.name, v.why
                    ));
                }
            }
        }
    }
    eprintln!(
        "conformance[rbd]: passed {passed}, failed {failed}, skipped {skipped} in {:.0?} \
         (artifacts in {})\nskipped: {}",
        t0.elapsed(),
        out_dir.display(),
        skipped_names.join(" ")
    );
    if filter.is_none() && passed < floor {
        problems.push(format!(
            "only {passed} passed; kinds-min-passed.txt requires {floor} for rbd"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn qemu_img_round_trip() {
    require_qemu_iscsi();
    let Some(ceph) = Ceph::start() else { return };
    const SIZE: u64 = 64 << 20;
    ceph.create_image("qemu", SIZE, 22);
    let d = daemon(&ceph, "qemu", false);
    let img = d.dir.path().join("image.raw");
    {
        let mut rng = Rng::new(0x7bd);
        let mut w = BufWriter::new(File::create(&img).unwrap());
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..SIZE >> 20 {
            rng.fill(&mut buf);
            w.write_all(&buf).unwrap();
        }
        w.into_inner().unwrap().sync_all().unwrap();
    }
    let img_s = img.display().to_string();
    let lun = format!(
        "driver=iscsi,transport=tcp,portal={},target={IQN},lun=0",
        d.portal()
    );
    let limit = Duration::from_secs(300);
    let t0 = Instant::now();
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            &img_s,
            "--target-image-opts",
            &lun,
        ],
        limit,
    )
    .ok();
    let back = d.dir.path().join("back.raw");
    let back_s = back.display().to_string();
    run(
        "qemu-img",
        &["convert", "--image-opts", &lun, "-O", "raw", &back_s],
        limit,
    )
    .ok();
    eprintln!(
        "qemu-img: 64 MiB onto the RBD LUN and back in {:.1?}",
        t0.elapsed()
    );
    assert!(
        fs::read(&img).unwrap() == fs::read(&back).unwrap(),
        "the image read back differs"
    );
    // And what is in the image is what `rbd export` finds there: the data went to Ceph.
    let exported = d.dir.path().join("exported.raw");
    ceph.rbd(&["export", "rbd/qemu", &exported.display().to_string()])
        .unwrap();
    assert!(fs::read(&img).unwrap() == fs::read(&exported).unwrap());
}

#[test]
fn an_encrypted_rbd_lun_stores_ciphertext_and_reads_back_after_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(ceph) = Ceph::start() else { return };
    ceph.create_image("enc", 16 << 20, 22);
    let keys = common::TempDir::new("rbd-key");
    let key = keys.path().join("lun0.key");
    fs::write(&key, [0x5e; 32]).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = format!(
        "{}encryption = {{ key_file = \"{}\" }}\n",
        config(&ceph.conf(), "enc", false),
        key.display()
    );
    let mut d = Daemon::start(Opts {
        config: Some(cfg),
        ..Opts::default()
    });
    // 128 KiB: one transfer, through the asynchronous path where librbd completes it.
    const LBA: u32 = 2048;
    let p: Vec<u8> = b"RBD-ENCRYPTED-PATTERN:"
        .iter()
        .copied()
        .cycle()
        .take(256 * 512)
        .collect();
    let mut s = session(&d);
    s.write10(LBA, &p, 512).unwrap();
    assert!(s.read10(LBA, 256, 512).unwrap() == p, "read back");
    assert_eq!(
        s.read10(0, 8, 512).unwrap(),
        vec![0; 8 * 512],
        "never written"
    );
    common::sbc::data_out_cmd(&mut s, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
    drop(s);
    let exported = d.dir.path().join("exported.raw");
    ceph.rbd(&["export", "rbd/enc", &exported.display().to_string()])
        .unwrap();
    let raw = fs::read(&exported).unwrap();
    let at = LBA as usize * 512;
    assert!(
        !raw.windows(22).any(|w| w == &p[..22]),
        "the pattern is in the image"
    );
    assert!(
        raw[at..at + p.len()].iter().any(|&b| b != 0),
        "nothing stored"
    );
    // The wrapped data key is in the state directory: a restart reads the data back.
    d.restart(&d.config_path());
    let mut s = session(&d);
    assert!(
        s.read10(LBA, 256, 512).unwrap() == p,
        "read back after the restart"
    );
}

/// `rbd resize` while the image is served: the LU follows (CAPACITY DATA HAS CHANGED, READ
/// CAPACITY(16) gives the new size, the new blocks work).
#[test]
fn an_image_resized_while_served_is_followed() {
    let Some(ceph) = Ceph::start() else { return };
    ceph.create_image("grow", 16 << 20, 22);
    let d = daemon(&ceph, "grow", false);
    let mut s = session(&d);
    ceph.rbd(&["resize", "--size", "24M", "rbd/grow"]).unwrap();
    let t0 = Instant::now();
    loop {
        let r = s.command(&[0; 6], 0).expect("TEST UNIT READY");
        if r.status == 2 {
            assert_eq!(r.asc(), Some((0x2a, 0x09)), "CAPACITY DATA HAS CHANGED");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let r = s.command(&cdb, 32).unwrap();
    assert_eq!(r.status, 0);
    let last = u64::from_be_bytes(r.data[..8].try_into().unwrap());
    assert_eq!(last + 1, 24 << 11);
    let lba = (24u32 << 11) - 8;
    let data = vec![0x6bu8; 8 * 512];
    s.write10(lba, &data, 512).unwrap();
    assert_eq!(s.read10(lba, 8, 512).unwrap(), data);
}

#[test]
fn two_daemons_share_an_image() {
    let Some(ceph) = Ceph::start() else { return };
    ceph.create_image("shared", 16 << 20, 22);
    let a = daemon(&ceph, "shared", false);
    let b = daemon(&ceph, "shared", false);
    let (mut sa, mut sb) = (session(&a), session(&b));
    const BS: usize = 512;
    let mut data = vec![0u8; 64 * BS];
    Rng::new(11).fill(&mut data);
    sa.write10(2048, &data, BS).unwrap();
    assert_eq!(sb.read10(2048, 64, BS).unwrap(), data, "B reads A's write");
    let mut again = vec![0u8; 8 * BS];
    Rng::new(12).fill(&mut again);
    sb.write10(2048, &again, BS).unwrap();
    assert_eq!(sa.read10(2048, 8, BS).unwrap(), again, "A reads B's write");

    // COMPARE AND WRITE through A against what B wrote: one sector (librbd's own) and eight
    // (under the RADOS lock); a stale compare through B then miscompares.
    for nlb in [1usize, 8] {
        let cur = sa.read10(2048, nlb as u16, BS).unwrap();
        let mut new = vec![0u8; nlb * BS];
        Rng::new(13 + nlb as u64).fill(&mut new);
        let st = compare_and_write(&mut sa, 2048, &cur, &new, BS).unwrap();
        assert!(st.good(), "{st:?}");
        assert_eq!(sb.read10(2048, nlb as u16, BS).unwrap(), new);
        let st = compare_and_write(&mut sb, 2048, &cur, &new, BS).unwrap();
        assert_eq!(
            st.sense_code().map(|c| c.0),
            Some(0x0E),
            "MISCOMPARE: {st:?}"
        );
    }

    // Two nodes racing COMPARE AND WRITE on one 8-block range, each swapping in its own
    // token only if it finds the previous one: no swap is lost (every success is seen).
    let token = |who: u8, n: u32| -> Vec<u8> {
        let mut v = vec![who; 8 * BS];
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    };
    let start = token(0, 0);
    sa.write10(4096, &start, BS).unwrap();
    let counter = std::sync::Mutex::new(0u32);
    let wins = std::thread::scope(|s| {
        let race = |d: &Daemon, who: u8| {
            let counter = &counter;
            let addr = d.addr();
            s.spawn(move || {
                // An ISID of its own: the same one would reinstate the main session.
                let o = LoginOpts {
                    isid: [0x80, 0, 0, 0, 0x42, who],
                    ..LoginOpts::default()
                };
                let mut ses = Session::login(addr, &o).unwrap();
                ses.clear_unit_attentions().unwrap();
                let mut wins = 0;
                for _ in 0..40 {
                    let cur = ses.read10(4096, 8, BS).unwrap();
                    let n = u32::from_be_bytes(cur[..4].try_into().unwrap());
                    let st =
                        compare_and_write(&mut ses, 4096, &cur, &token(who, n + 1), BS).unwrap();
                    if st.good() {
                        wins += 1;
                        *counter.lock().unwrap() += 1;
                    } else {
                        assert_eq!(st.sense_code().map(|c| c.0), Some(0x0E), "{st:?}");
                    }
                }
                wins
            })
        };
        let ha = race(&a, 1);
        let hb = race(&b, 2);
        ha.join().unwrap() + hb.join().unwrap()
    });
    let end = sa.read10(4096, 8, BS).unwrap();
    let n = u32::from_be_bytes(end[..4].try_into().unwrap());
    eprintln!("COMPARE AND WRITE race: {wins} swaps of 80 won, counter at {n}");
    assert_eq!(
        n, wins,
        "a swap was lost: the counter is not the number of wins"
    );
    assert!(wins > 0);
}

#[test]
fn missing_image_or_cluster_stops_the_start() {
    let Some(ceph) = Ceph::start() else { return };
    let dir = common::TempDir::new("rbd-refused");
    let refused = |cfg: String| {
        let p = dir.path().join("ferrite.toml");
        fs::write(
            &p,
            cfg.replace("{port}", &common::free_port("127.0.0.1").to_string()),
        )
        .unwrap();
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["serve", "--admin-socket", "none", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success());
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            t0.elapsed(),
        )
    };
    let (err, _) = refused(config(&ceph.conf(), "nosuchimage", false));
    assert!(err.contains("image nosuchimage"), "{err}");
    // A cluster nobody answers for: refused within the timeout (10 s), not a hang.
    let dead = dir.path().join("dead.conf");
    fs::write(
        &dead,
        format!(
            "[global]\nmon host = 127.0.0.1:{}\nkeyring = {}\n",
            common::free_port("127.0.0.1"),
            ceph.keyring().display()
        ),
    )
    .unwrap();
    let (err, took) = refused(config(&dead, "x", false));
    assert!(err.contains("connecting to the Ceph cluster"), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    // At run time, through the admin API: a missing image is refused with the reason and
    // changes nothing; an existing one becomes LUN 1.
    ceph.create_image("first", 8 << 20, 22);
    ceph.create_image("second", 8 << 20, 22);
    let d = daemon(&ceph, "first", false);
    let conf = format!("ceph_conf={}", ceph.conf().display());
    let err = common::tpg::admin_err(&d, &["add-lun", IQN, "rbd:rbd/nosuchimage", &conf]);
    assert!(err.contains("image nosuchimage"), "{err}");
    common::tpg::admin_ok(&d, &["add-lun", IQN, "rbd:rbd/second", "lun=1", &conf]);
    let targets = common::tpg::admin_json(&d, &["targets"]).to_string();
    assert!(targets.contains("rbd:rbd/second"), "{targets}");
    assert!(!targets.contains("nosuchimage"), "{targets}");
}

/// An OSD that stops answering (SIGSTOP) turns I/O into an error after the LUN's timeout, not
/// a command stuck for ever; once it answers again, I/O works.
#[test]
fn a_stalled_osd_is_an_error_not_a_hang() {
    let Some(ceph) = Ceph::start() else { return };
    ceph.create_image("stall", 8 << 20, 22);
    let d = Daemon::start(Opts {
        config: Some(config_with_timeout(&ceph.conf(), "stall", false, 3)),
        ..Opts::default()
    });
    let mut s = session(&d);
    s.write10(0, &[7u8; 4096], 512).unwrap();
    ceph.pause_osd(true);
    let t0 = Instant::now();
    // READ(10) of 8 blocks at LBA 0.
    let r = s.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], 4096);
    let took = t0.elapsed();
    ceph.pause_osd(false);
    let r = r.unwrap();
    eprintln!(
        "stalled OSD: status {:#x}, sense key {:?} after {took:.1?}",
        r.status,
        r.sense_key()
    );
    assert_eq!(r.status, 2, "CHECK CONDITION");
    assert_eq!(r.sense_key(), Some(3), "MEDIUM ERROR");
    assert!(took < Duration::from_secs(20), "{took:?}");
    // Back: the data is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s.read10(0, 8, 512) {
            Ok(v) => {
                assert_eq!(v, vec![7u8; 4096]);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("after the OSD resumed: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
