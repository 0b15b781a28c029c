//! QEMU's iSCSI block driver (libiscsi underneath) as the initiator: copy a 256 MiB random image
//! onto a LUN of exactly that size with `qemu-img convert`, then `qemu-img compare` the two.
//!
//! The driver negotiates HeaderDigest as asked (`header-digest=crc32c|none`); libiscsi always
//! offers DataDigest=None, so data digests are covered by `digests.rs`'s own initiator instead.

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use common::{require_qemu_iscsi, run, Daemon, Opts, Rng, IQN};

const SIZE: u64 = 256 << 20;
const LIMIT: Duration = Duration::from_secs(600);

fn random_image(path: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..SIZE / buf.len() as u64 {
        rng.fill(&mut buf);
        w.write_all(&buf).unwrap();
    }
    w.into_inner().unwrap().sync_all().unwrap();
}

fn round_trip(header_digest: &str, seed: u64) {
    require_qemu_iscsi();
    let d = Daemon::start(Opts {
        luns: vec!["ram:256M".into()],
        ..Opts::default()
    });
    let img = d.dir.path().join("image.raw");
    random_image(&img, seed);
    let img_s = img.display().to_string();
    let lun = format!(
        "driver=iscsi,transport=tcp,portal={},target={IQN},lun=0,header-digest={header_digest}",
        d.portal()
    );
    let local = format!("driver=file,filename={img_s}");

    // --target-image-opts takes the target as an option string (and excludes -O); -n: the LUN exists.
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
        LIMIT,
    )
    .ok();
    let cmp = run(
        "qemu-img",
        &["compare", "--image-opts", &local, &lun],
        LIMIT,
    )
    .ok();
    assert!(
        cmp.stdout.contains("Images are identical"),
        "{}",
        cmp.describe()
    );

    // The compare is not vacuous: flip one byte near the end and it must notice.
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(SIZE - 4097)).unwrap();
        let mut rng = Rng::new(seed ^ 0x5a5a);
        let mut b = [0u8; 1];
        rng.fill(&mut b);
        // Any byte the image does not already hold there; xor with a non-zero value guarantees it.
        let mut cur = [0u8; 1];
        {
            use std::io::Read;
            let mut r = File::open(&img).unwrap();
            r.seek(SeekFrom::Start(SIZE - 4097)).unwrap();
            r.read_exact(&mut cur).unwrap();
        }
        f.write_all(&[cur[0] ^ (b[0] | 1)]).unwrap();
        f.sync_all().unwrap();
    }
    let cmp = run(
        "qemu-img",
        &["compare", "--image-opts", &local, &lun],
        LIMIT,
    );
    assert_eq!(
        cmp.status.code(),
        Some(1),
        "a changed byte went unnoticed: {}",
        cmp.describe()
    );
    assert!(
        cmp.stdout.contains("Content mismatch"),
        "{}",
        cmp.describe()
    );

    // The daemon's login line names what was negotiated; when it does, it must match the request.
    let log = d.log_text();
    let want = if header_digest == "crc32c" {
        "header_digest=true"
    } else {
        "header_digest=false"
    };
    let other = if header_digest == "crc32c" {
        "header_digest=false"
    } else {
        "header_digest=true"
    };
    if log.contains("header_digest=") {
        assert!(
            log.contains(want) && !log.contains(other),
            "asked for header-digest={header_digest}, log:\n{log}"
        );
    }
}

#[test]
fn convert_and_compare_with_header_digest() {
    round_trip("crc32c", 0x00f3_7713);
}

#[test]
fn convert_and_compare_without_digests() {
    round_trip("none", 0x0bad_cafe);
}
