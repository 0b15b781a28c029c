//! The encrypting backstore (AES-256-XTS per logical block, `backstore::EncryptedBackstore`)
//! over a RAM backstore, against the RAM backstore alone: what encryption costs per byte on a
//! 4 KiB and a 128 KiB transfer, read and write. (The cipher itself is private; the RAM copy
//! is the same on both sides, so the difference is the cipher.)

use std::hint::black_box;
use std::sync::Arc;

use backstore::{Backstore, EncryptedBackstore, KeyFileKey, RamBackstore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BYTES: u64 = 16 << 20;

fn stores() -> (Arc<dyn Backstore>, Arc<dyn Backstore>) {
    let plain: Arc<dyn Backstore> = Arc::new(RamBackstore::new(BYTES));
    let under: Arc<dyn Backstore> = Arc::new(RamBackstore::new(BYTES));
    let (enc, _) = EncryptedBackstore::open(under, 512, KeyFileKey::from_bytes([7; 32]), None)
        .expect("encrypted store");
    let enc: Arc<dyn Backstore> = Arc::new(enc);
    // Written once, so that reads decrypt real data (all-zero blocks read as zeroes unseen).
    let fill = vec![0x5au8; 1 << 20];
    for off in (0..BYTES).step_by(fill.len()) {
        plain.write_at(&fill, off).unwrap();
        enc.write_at(&fill, off).unwrap();
    }
    (plain, enc)
}

fn bench(c: &mut Criterion) {
    let (plain, enc) = stores();
    for len in [4usize << 10, 128 << 10] {
        let mut g = c.benchmark_group(format!("crypt_{}k", len >> 10));
        g.throughput(Throughput::Bytes(len as u64));
        let data = vec![0xc3u8; len];
        for (name, store) in [("plain", &plain), ("encrypted", &enc)] {
            let mut off = 0u64;
            g.bench_function(format!("{name}_write"), |b| {
                b.iter(|| {
                    off = (off + len as u64) % (BYTES - len as u64);
                    store.write_at(black_box(&data), off).unwrap();
                })
            });
            g.bench_function(format!("{name}_read"), |b| {
                b.iter(|| {
                    off = (off + len as u64) % (BYTES - len as u64);
                    black_box(store.read_vec(len, off).unwrap());
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
