//! One conformance suite that every backstore passes (STYLE.md item 11). Each `check_*` function
//! takes a fresh `&dyn Backstore` of `SIZE` bytes; the `conformance!` macro runs every check
//! over every implementation, so a new backstore gets the whole suite by adding one line.
//! File-specific behaviour (sparseness, hole punching, reopening) is tested at the end.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use backstore::{Backstore, BlockBackstore, FileBackstore, RamBackstore};

const MIB: u64 = 1 << 20;
/// Odd on purpose: three RAM chunks plus a short fourth, not a multiple of any block size.
const SIZE: u64 = 3 * MIB + 12345;

/// A scratch directory removed on drop (no tempfile crate: one less dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferrite-backstore-{}-{}-{}",
            std::process::id(),
            name,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ram() -> (Option<TempDir>, Box<dyn Backstore>) {
    (None, Box::new(RamBackstore::new(SIZE)))
}

fn file() -> (Option<TempDir>, Box<dyn Backstore>) {
    let dir = TempDir::new("file");
    let b = FileBackstore::open(dir.path("lun.img"), Some(SIZE)).unwrap();
    (Some(dir), Box::new(b))
}

fn block_on_file() -> (Option<TempDir>, Box<dyn Backstore>) {
    let dir = TempDir::new("block");
    let path = dir.path("disk.img");
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    let b = BlockBackstore::open(&path).unwrap();
    (Some(dir), Box::new(b))
}

/// The same on a file opened with O_DIRECT (what a clustered node does with a shared device).
fn block_direct_on_file() -> (Option<TempDir>, Box<dyn Backstore>) {
    let dir = TempDir::new("block-direct");
    let path = dir.path("disk.img");
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    let b = BlockBackstore::open_direct(&path).unwrap();
    assert!(b.is_direct());
    (Some(dir), Box::new(b))
}

/// A byte pattern that differs per position and per `seed`, never all zero.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn read(b: &dyn Backstore, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0xEE; len as usize];
    b.read_at(&mut buf, offset).unwrap();
    buf
}

fn assert_zero(b: &dyn Backstore, offset: u64, len: u64) {
    let data = read(b, offset, len);
    if let Some(i) = data.iter().position(|&x| x != 0) {
        panic!(
            "{}: byte {} should be zero, is {:#x}",
            b.kind(),
            offset + i as u64,
            data[i]
        );
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: io::Result<T>, what: &str) {
    match r {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

fn check_size(b: &dyn Backstore) {
    let size = b.size();
    assert!(size > 3 * MIB, "the suite needs a store of more than 3 MiB");
    assert!(["ram", "file", "block", "rbd"].contains(&b.kind()));
    assert!(!format!("{b:?}").is_empty());
    // The last byte is inside the store.
    b.write_at(&[9], size - 1).unwrap();
    assert_eq!(read(b, size - 1, 1), [9]);
}

fn check_initially_zero(b: &dyn Backstore) {
    let size = b.size();
    assert_zero(b, 0, size);
}

fn check_round_trip(b: &dyn Backstore) {
    let size = b.size();
    let c = RamBackstore::CHUNK_SIZE as u64;
    // (offset, len): aligned, unaligned, straddling one chunk boundary, spanning three chunks,
    // ending exactly at the end of the store.
    let cases: &[(u64, u64)] = &[
        (0, 512),
        (1, 1),
        (4097, 3000),
        (c - 3, 7),
        (2 * c - 1, c + 2),
        (size - 7, 7),
    ];
    for (seed, &(offset, len)) in cases.iter().enumerate() {
        let data = pattern(len as usize, seed as u8);
        b.write_at(&data, offset).unwrap();
        assert_eq!(read(b, offset, len), data, "{} at {offset}+{len}", b.kind());
    }
    // Later writes did not disturb earlier ones that do not overlap them.
    assert_eq!(read(b, 0, 1), pattern(512, 0)[..1]);
    assert_eq!(read(b, 1, 1), pattern(1, 1));
    assert_eq!(read(b, 4097, 3000), pattern(3000, 2));
    // Bytes around a write are untouched.
    assert_zero(b, 4097 + 3000, 100);
    assert_zero(b, 4000, 97);
    // Empty transfers are fine anywhere inside the store, including at its end.
    b.write_at(&[], size).unwrap();
    b.read_at(&mut [], size).unwrap();
    b.read_at(&mut [], 0).unwrap();
}

/// `read_vec` returns exactly what `read_at` fills, across chunk boundaries and holes, and
/// refuses the same out-of-range requests.
fn check_read_vec(b: &dyn Backstore) {
    let size = b.size();
    let c = RamBackstore::CHUNK_SIZE as u64;
    b.write_at(&pattern(5000, 9), c - 2500).unwrap();
    for &(offset, len) in &[
        (0u64, 0u64),
        (0, 512),
        (c - 3000, 6000),
        (c - 1, 2 * c + 1),
        (size - 7, 7),
    ] {
        let v = b.read_vec(len as usize, offset).unwrap();
        assert_eq!(v, read(b, offset, len), "{} at {offset}+{len}", b.kind());
    }
    for &(offset, len) in &[(size - 7, 8u64), (size, 1), (u64::MAX - 2, 4)] {
        let e = b.read_vec(len as usize, offset).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::InvalidInput,
            "{} at {offset}+{len}",
            b.kind()
        );
    }
}

fn check_overwrite(b: &dyn Backstore) {
    b.write_at(&pattern(10_000, 1), 100).unwrap();
    b.write_at(&pattern(10, 9), 5000).unwrap();
    let got = read(b, 100, 10_000);
    let mut want = pattern(10_000, 1);
    want[4900..4910].copy_from_slice(&pattern(10, 9));
    assert_eq!(got, want);
}

fn check_out_of_range(b: &dyn Backstore) {
    let size = b.size();
    let mut one = [0u8; 1];
    let mut four = [0u8; 4];
    assert_invalid(b.read_at(&mut one, size), "read at size");
    assert_invalid(b.read_at(&mut four, size - 2), "read across end");
    assert_invalid(b.read_at(&mut [], size + 1), "empty read past end");
    assert_invalid(b.read_at(&mut one, u64::MAX), "read at u64::MAX");
    assert_invalid(b.read_at(&mut four, u64::MAX - 1), "read wrapping u64");
    assert_invalid(b.read_at(&mut [], u64::MAX), "empty read at u64::MAX");
    assert_invalid(b.write_at(&[1], size), "write at size");
    assert_invalid(b.write_at(&[1, 2, 3, 4], size - 2), "write across end");
    assert_invalid(b.write_at(&[1], u64::MAX), "write at u64::MAX");
    assert_invalid(
        b.write_at(&[1, 2, 3, 4], u64::MAX - 1),
        "write wrapping u64",
    );
    assert_invalid(b.unmap(size, 1), "unmap at size");
    assert_invalid(b.unmap(size - 2, 4), "unmap across end");
    assert_invalid(b.unmap(1, u64::MAX), "unmap wrapping u64");
    assert_invalid(b.unmap(u64::MAX, u64::MAX), "unmap at u64::MAX");
    // A rejected write changed nothing, not even its in-range part.
    assert_zero(b, size - 2, 2);
}

fn check_unmap(b: &dyn Backstore) {
    let size = b.size();
    let c = RamBackstore::CHUNK_SIZE as u64;
    let fill = pattern(size as usize, 0x40);
    b.write_at(&fill, 0).unwrap();
    // Partial chunk, unaligned; a whole aligned chunk; across a chunk boundary; the short tail.
    let holes: &[(u64, u64)] = &[(100, 4900), (c, c), (2 * c + c - 100, 200), (3 * c + 5, 10)];
    for &(offset, len) in holes {
        b.unmap(offset, len).unwrap();
    }
    b.unmap(7, 0).unwrap();
    let got = read(b, 0, size);
    for (i, (&g, &f)) in got.iter().zip(&fill).enumerate() {
        let i = i as u64;
        let in_hole = holes.iter().any(|&(o, l)| i >= o && i < o + l);
        let want = if in_hole { 0 } else { f };
        assert_eq!(g, want, "{}: byte {i} after unmap", b.kind());
    }
    // Unmapped ranges can be written again.
    b.write_at(&pattern(3, 5), c + 10).unwrap();
    assert_eq!(read(b, c + 9, 5), [&[0][..], &pattern(3, 5), &[0]].concat());
}

/// An anchored range reads as zeroes and stays (or becomes) allocated: never a hole.
fn check_anchor(b: &dyn Backstore) {
    let c = RamBackstore::CHUNK_SIZE as u64;
    b.write_at(&pattern(4096, 9), 0).unwrap();
    // Over written data (unaligned), and over a range that was never written.
    b.anchor(100, 1000).unwrap();
    b.anchor(2 * c, c).unwrap();
    b.anchor(5, 0).unwrap();
    assert_eq!(read(b, 0, 100), pattern(4096, 9)[..100]);
    assert_zero(b, 100, 1000);
    assert_eq!(read(b, 1100, 10), pattern(4096, 9)[1100..1110]);
    assert_zero(b, 2 * c, c);
    if let Some(e) = b.extent_at(2 * c).unwrap() {
        assert!(
            e.mapped,
            "{}: an anchored range reported as a hole: {e:?}",
            b.kind()
        );
    }
    assert_invalid(b.anchor(SIZE - 1, 2), "anchor past the end");
}

/// Stores that report their space count what writes allocate and unmaps give back.
fn check_space(b: &dyn Backstore) {
    let Some(before) = b.space().unwrap() else {
        return;
    };
    b.write_at(&pattern(MIB as usize, 4), MIB).unwrap();
    b.flush().unwrap();
    let after = b.space().unwrap().unwrap();
    assert!(
        after.used >= before.used + MIB,
        "{}: {before:?} -> {after:?}",
        b.kind()
    );
    if b.supports_unmap() {
        b.unmap(MIB, MIB).unwrap();
        let freed = b.space().unwrap().unwrap();
        assert!(
            freed.used + MIB <= after.used,
            "{}: {after:?} -> {freed:?}",
            b.kind()
        );
    }
}

fn check_flush(b: &dyn Backstore) {
    b.write_at(&[1, 2, 3], 77).unwrap();
    b.flush().unwrap();
    assert_eq!(read(b, 77, 3), [1, 2, 3]);
}

fn check_concurrent_writers(b: &dyn Backstore) {
    let size = b.size();
    // Each thread owns every THREADS-th stripe; stripes are odd-sized so they straddle chunks
    // and pages, and neighbouring threads write into the same chunk at the same time.
    const THREADS: u64 = 4;
    const STRIPE: u64 = 40_961;
    let stripes = size / STRIPE;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for k in (t..stripes).step_by(THREADS as usize) {
                    let data = pattern(STRIPE as usize, k as u8);
                    b.write_at(&data, k * STRIPE).unwrap();
                    assert_eq!(read(b, k * STRIPE, STRIPE), data);
                }
            });
        }
    });
    for k in 0..stripes {
        assert_eq!(
            read(b, k * STRIPE, STRIPE),
            pattern(STRIPE as usize, k as u8),
            "{}: stripe {k}",
            b.kind()
        );
    }
    assert_zero(b, stripes * STRIPE, size - stripes * STRIPE);
}

fn check_concurrent_unmap_and_write(b: &dyn Backstore) {
    let size = b.size();
    // Unmapping one half while writing the other must not lose either.
    let half = size / 2;
    b.write_at(&pattern(half as usize, 3), 0).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..8 {
                b.unmap(0, half).unwrap();
            }
        });
        s.spawn(|| {
            for _ in 0..8 {
                b.write_at(&pattern((size - half) as usize, 4), half)
                    .unwrap();
            }
        });
    });
    assert_zero(b, 0, half);
    assert_eq!(
        read(b, half, size - half),
        pattern((size - half) as usize, 4)
    );
}

/// `extent_at` through the trait: `None` (unknown) or a run inside the store that starts at the
/// offset asked for; unmapped runs read as zeroes; past the end is an error.
fn check_extents(b: &dyn Backstore) {
    b.write_at(&pattern(4096, 3), MIB).unwrap();
    b.unmap(2 * MIB, MIB).unwrap();
    for off in [0, MIB, MIB + 4095, 2 * MIB, SIZE - 1] {
        if let Some(e) = b.extent_at(off).unwrap() {
            assert_eq!(e.offset, off);
            assert!(e.len >= 1 && off + e.len <= SIZE, "{e:?}");
            if !e.mapped {
                assert_zero(b, off, e.len.min(64 * 1024));
            }
        }
    }
    if let Some(e) = b.extent_at(MIB).unwrap() {
        assert!(e.mapped, "written data reported unmapped: {e:?}");
    }
    assert_invalid(b.extent_at(SIZE), "extent past the end");
}

/// Runs every check over every backend: one test per (backend, check) pair, named
/// `<backend>::<check>`; also lists the checks in `CHECKS` for stores opened at run time.
macro_rules! conformance {
    (backends: [$($backend:ident),*], checks: $checks:tt) => {
        $(backend_tests!($backend, $checks);)*
        check_table!($checks);
    };
}

macro_rules! check_table {
    ([$($check:ident),*]) => {
        type Check = fn(&dyn Backstore);
        const CHECKS: &[(&str, Check)] = &[$((stringify!($check), $check as Check)),*];
    };
}

macro_rules! backend_tests {
    ($backend:ident, [$($check:ident),*]) => {
        mod $backend {
            $(
                #[test]
                fn $check() {
                    let (_dir, b) = super::$backend();
                    super::$check(&*b);
                }
            )*
        }
    };
}

conformance!(
    backends: [ram, file, block_on_file, block_direct_on_file],
    checks: [
        check_size,
        check_initially_zero,
        check_round_trip,
        check_overwrite,
        check_out_of_range,
        check_unmap,
        check_anchor,
        check_space,
        check_flush,
        check_concurrent_writers,
        check_concurrent_unmap_and_write,
        check_extents,
        check_read_vec
    ]
);

#[test]
fn fixtures_have_the_requested_size() {
    for fixture in [ram, file, block_on_file, block_direct_on_file] {
        let (_dir, b) = fixture();
        assert_eq!(b.size(), SIZE, "{}", b.kind());
    }
}

/// The whole suite against a real block device, when one is named in
/// `FERRITE_TEST_BLOCK_DEVICE` (for example a 16 MiB loop device). DESTRUCTIVE: everything on
/// the device is overwritten. Without the variable the test passes without doing anything.
#[test]
fn real_block_device() {
    let Some(path) = std::env::var_os("FERRITE_TEST_BLOCK_DEVICE") else {
        return;
    };
    let b = BlockBackstore::open(&path).unwrap();
    assert!(
        b.size() <= 256 * MIB,
        "use a small scratch device; the suite reads and writes all of it"
    );
    eprintln!(
        "{}: {} bytes, logical block {}, supports_unmap {}",
        b.path().display(),
        b.size(),
        b.logical_block_size(),
        b.supports_unmap()
    );
    // O_EXCL claimed the device: a second LUN (or a mount) cannot open it.
    assert!(BlockBackstore::open(&path).is_err());
    let deallocated = b.unmap(0, b.size()).unwrap();
    assert_eq!(deallocated, b.supports_unmap());
    for (name, check) in CHECKS {
        // A real device starts with old data; the unmap contract makes it read as zeroes.
        b.unmap(0, b.size()).unwrap();
        eprintln!("{name}");
        check(&b);
    }
}

/// The whole suite against Ceph RBD images in a throw-away single-node cluster
/// (`testkit::ceph`), one fresh image per check, 1 MiB objects so that the suite's ranges
/// cross objects. Skipped with a message where Ceph is not installed, unless under CI.
#[test]
fn rbd_image() {
    let Some(ceph) = testkit::ceph::Ceph::start() else {
        return;
    };
    let open = |name: &str| {
        let mut o = backstore::RbdOptions::new("rbd", name);
        o.conf = Some(ceph.conf());
        o.timeout_secs = Some(20);
        backstore::RbdBackstore::open(&o).unwrap()
    };
    for (i, (name, check)) in CHECKS.iter().enumerate() {
        let image = format!("conformance{i}");
        ceph.create_image(&image, SIZE, 20);
        let b = open(&image);
        assert_eq!(b.size(), SIZE);
        eprintln!("rbd: {name}");
        check(&b);
    }
    // What is particular to RBD: COMPARE AND WRITE within one sector (librbd's) and across
    // sectors (under the RADOS lock), matching and not.
    ceph.create_image("caw", SIZE, 20);
    let b = open("caw");
    for (offset, len) in [
        (512u64, 512usize),
        (4096, 4096),
        (MIB - 1024, 3072),
        (100, 10),
    ] {
        let old = pattern(len, 1);
        let new = pattern(len, 2);
        b.write_at(&old, offset).unwrap();
        let mut wrong = old.clone();
        wrong[len / 2] ^= 0xff;
        assert_eq!(
            b.compare_and_write(offset, &wrong, &new).unwrap(),
            Some(len as u64 / 2),
            "miscompare at {offset}+{len}"
        );
        assert_eq!(read(&b, offset, len as u64), old);
        assert_eq!(b.compare_and_write(offset, &old, &new).unwrap(), None);
        assert_eq!(read(&b, offset, len as u64), new);
    }
    // Never written: compares equal to zeroes.
    let zero = vec![0u8; 512];
    assert_eq!(
        b.compare_and_write(2 * MIB, &zero, &pattern(512, 3))
            .unwrap(),
        None
    );
    assert_eq!(read(&b, 2 * MIB, 512), pattern(512, 3));
    assert_invalid(
        b.compare_and_write(SIZE - 1, &[0, 0], &[1, 1]),
        "caw past the end",
    );
    // What atomicity across nodes costs: one sector (the OSD compares) against eight (under
    // the RADOS lock), and a plain write, one at a time.
    for (what, len) in [("write 512", 0usize), ("caw 512", 512), ("caw 4096", 4096)] {
        let n = 100;
        let t0 = std::time::Instant::now();
        for i in 0..n {
            let off = 3 * MIB - 8192;
            if len == 0 {
                b.write_at(&[i as u8; 512], off).unwrap();
            } else {
                let cur = read(&b, off, len as u64);
                let next = vec![i as u8 ^ 0x5a; len];
                assert_eq!(b.compare_and_write(off, &cur, &next).unwrap(), None);
            }
        }
        eprintln!("rbd: {what}: {:.0?} each", t0.elapsed() / n);
    }
    // Allocation as GET LBA STATUS sees it, at object granularity (1 MiB objects here).
    ceph.create_image("extents", SIZE, 20);
    let b = open("extents");
    let hole = b.extent_at(0).unwrap().unwrap();
    assert_eq!((hole.len, hole.mapped), (SIZE, false), "{hole:?}");
    b.write_at(&pattern(4096, 5), MIB + 8192).unwrap();
    let e = b.extent_at(0).unwrap().unwrap();
    assert!(!e.mapped && e.len <= MIB + 8192 && e.len >= MIB, "{e:?}");
    let e = b.extent_at(MIB + 8192).unwrap().unwrap();
    assert!(e.mapped && e.len >= 4096, "{e:?}");
    let e = b.extent_at(2 * MIB).unwrap().unwrap();
    assert_eq!((e.len, e.mapped), (SIZE - 2 * MIB, false), "{e:?}");
    // A whole object discarded is a hole again.
    b.unmap(MIB, MIB).unwrap();
    let e = b.extent_at(0).unwrap().unwrap();
    assert_eq!((e.len, e.mapped), (SIZE, false), "{e:?}");
    assert_zero(&b, MIB, MIB);
    // Missing images and pools are errors at open, saying which.
    let mut o = backstore::RbdOptions::new("rbd", "nonexistent");
    o.conf = Some(ceph.conf());
    let e = backstore::RbdBackstore::open(&o).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("image nonexistent"), "{e}");
    let mut o = backstore::RbdOptions::new("nopool", "x");
    o.conf = Some(ceph.conf());
    let e = backstore::RbdBackstore::open(&o).unwrap_err();
    assert!(e.to_string().contains("pool nopool"), "{e}");
}

/// An unreachable cluster is an error within the timeout, not a hang.
#[test]
fn rbd_unreachable_cluster_is_an_error() {
    if !testkit::ceph::available() {
        return;
    }
    let dir = TempDir::new("rbd-unreachable");
    let port = testkit::etcd::free_port();
    let conf = dir.path("ceph.conf");
    std::fs::write(
        &conf,
        format!("[global]\nmon host = 127.0.0.1:{port}\nauth client required = none\n"),
    )
    .unwrap();
    let mut o = backstore::RbdOptions::new("rbd", "x");
    o.conf = Some(conf);
    o.timeout_secs = Some(3);
    let t0 = std::time::Instant::now();
    let e = backstore::RbdBackstore::open(&o).unwrap_err();
    eprintln!(
        "rbd: unreachable cluster refused after {:.1?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        t0.elapsed()
    );
    assert!(e.to_string().contains("connecting"), "{e}");
}

// ---- File-specific behaviour -------------------------------------------------------------

/// 512-byte units allocated to the file at `path`.
fn blocks(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks()
}

#[test]
fn file_created_with_size_is_sparse() {
    let dir = TempDir::new("sparse");
    let path = dir.path("big.img");
    let b = FileBackstore::open(&path, Some(1 << 30)).unwrap();
    assert_eq!(b.size(), 1 << 30);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 30);
    assert!(blocks(&path) <= 8, "{} blocks allocated", blocks(&path));
    assert!(!b.is_mapped(0).unwrap());
}

#[test]
fn file_unmap_returns_space() {
    let dir = TempDir::new("punch");
    let path = dir.path("thin.img");
    let b = FileBackstore::open(&path, Some(16 * MIB)).unwrap();
    b.write_at(&pattern(8 * MIB as usize, 7), MIB).unwrap();
    b.flush().unwrap();
    let written = blocks(&path);
    assert!(
        written >= 8 * MIB / 512,
        "{written} blocks after writing 8 MiB"
    );
    assert!(b.is_mapped(MIB).unwrap());
    let deallocated = b.unmap(MIB, 8 * MIB).unwrap();
    assert_zero(&b, 0, 16 * MIB);
    if !b.supports_unmap() {
        eprintln!("file system cannot punch holes; skipping the allocation check");
        return;
    }
    assert!(deallocated);
    b.flush().unwrap();
    let after = blocks(&path);
    assert!(
        after < written / 8,
        "{after} blocks after unmap, {written} before"
    );
    assert!(!b.is_mapped(MIB).unwrap());
}

#[test]
fn block_on_file_unmap_returns_space() {
    let dir = TempDir::new("blockpunch");
    let path = dir.path("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let b = BlockBackstore::open(&path).unwrap();
    assert_eq!(b.logical_block_size(), 512);
    assert_eq!(b.path(), path);
    b.write_at(&pattern(8 * MIB as usize, 7), 0).unwrap();
    b.flush().unwrap();
    let written = blocks(&path);
    assert!(b.unmap(0, 8 * MIB).unwrap() || !b.supports_unmap());
    if b.supports_unmap() {
        assert!(blocks(&path) < written / 8);
    }
    assert_zero(&b, 0, 16 * MIB);
}

#[test]
fn file_extents_follow_holes() {
    let dir = TempDir::new("extents");
    let b = FileBackstore::open(dir.path("x.img"), Some(8 * MIB)).unwrap();
    b.write_at(&pattern(MIB as usize, 1), 2 * MIB).unwrap();
    let hole = b.extent_at(0).unwrap();
    assert!(!hole.mapped);
    assert_eq!((hole.offset, hole.len), (0, 2 * MIB));
    let data = b.extent_at(2 * MIB + 5).unwrap();
    assert!(data.mapped);
    assert_eq!(data.len, MIB - 5);
    let tail = b.extent_at(3 * MIB).unwrap();
    assert_eq!((tail.mapped, tail.len), (false, 5 * MIB));
    assert_invalid(b.extent_at(8 * MIB), "extent at size");
    assert_invalid(b.is_mapped(u64::MAX), "is_mapped at u64::MAX");
}

#[test]
fn file_open_rules() {
    let dir = TempDir::new("open");
    let path = dir.path("lun.img");
    // Missing without a size.
    let err = FileBackstore::open(&path, None).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(!path.exists());
    // Created with a size; data survives reopening.
    let b = FileBackstore::open(&path, Some(MIB)).unwrap();
    b.write_at(b"ferrite", 1000).unwrap();
    b.flush().unwrap();
    drop(b);
    let b = FileBackstore::open(&path, None).unwrap();
    assert_eq!(b.size(), MIB);
    assert_eq!(read(&b, 1000, 7), b"ferrite");
    assert_eq!(b.path(), path);
    drop(b);
    // A larger size extends, keeping the data; a smaller one never truncates.
    let b = FileBackstore::open(&path, Some(2 * MIB)).unwrap();
    assert_eq!(b.size(), 2 * MIB);
    assert_eq!(read(&b, 1000, 7), b"ferrite");
    assert_zero(&b, MIB, MIB);
    drop(b);
    let b = FileBackstore::open(&path, Some(10)).unwrap();
    assert_eq!(b.size(), 2 * MIB);
    drop(b);
    // Not a regular file.
    assert!(FileBackstore::open(&dir.0, None).is_err(), "directory");
    assert_invalid(FileBackstore::open("/dev/null", None), "character device");
    // An absurd size is an error, not a panic.
    assert!(FileBackstore::open(dir.path("huge.img"), Some(u64::MAX)).is_err());
}

#[test]
fn block_open_rules() {
    let dir = TempDir::new("blockopen");
    let err = BlockBackstore::open(dir.path("missing")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(BlockBackstore::open(&dir.0).is_err(), "directory");
    assert_invalid(BlockBackstore::open("/dev/null"), "character device");
}

/// A store follows its file's length when asked (`refresh_size`): grown, the new bytes can be
/// written and read; shrunk, they are out of range again. A RAM disk's size never changes.
#[test]
fn stores_follow_their_files_length() {
    for (name, make) in [
        (
            "file",
            file as fn() -> (Option<TempDir>, Box<dyn Backstore>),
        ),
        ("block", block_on_file),
    ] {
        let (dir, b) = make();
        let dir = dir.unwrap();
        let path = std::fs::read_dir(&dir.0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(b.refresh_size().unwrap(), SIZE, "{name}: unchanged");
        let grown = SIZE + 2 * MIB;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(grown)
            .unwrap();
        assert_eq!(b.size(), SIZE, "{name}: only refresh_size looks");
        assert_eq!(b.refresh_size().unwrap(), grown, "{name}");
        assert_eq!(b.size(), grown, "{name}");
        let at = grown - 8192;
        b.write_at(&[0x33; 8192], at).unwrap();
        assert_eq!(b.read_vec(8192, at).unwrap(), vec![0x33; 8192], "{name}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        assert_eq!(b.refresh_size().unwrap(), SIZE, "{name}");
        let e = b.read_vec(8192, at).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{name}");
    }
    let (_, ram) = ram();
    assert_eq!(ram.refresh_size().unwrap(), SIZE);
}
