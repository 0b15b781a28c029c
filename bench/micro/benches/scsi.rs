//! The device server's per-command work through its public API: CDB decode and dispatch through
//! the opcode table, the LBA range checks and locks, and the copy out of (or into) a RAM
//! backstore. (The CDB views of `scsi-core` are private, so decode is measured as
//! `DeviceServer::execute`; TEST UNIT READY is the dispatch-only floor.)

use std::hint::black_box;
use std::sync::Arc;

use backstore::{Backstore, RamBackstore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scsi_core::{
    lun_to_wire, DeviceServer, LogicalUnit, LuConfig, Nexus, ScsiRequest, ScsiStatus, TargetPort,
    TaskAttr,
};

const BLOCK: u32 = 512;
/// 64 MiB: large enough that the random LBAs spread over many RAM chunks.
const LU_BYTES: u64 = 64 << 20;

fn server() -> DeviceServer {
    let ram = RamBackstore::new(LU_BYTES);
    // Fill it with data: a sparse RAM disk reads unallocated chunks as zeroes without a copy.
    let chunk = vec![0xa5u8; 1 << 20];
    for off in (0..LU_BYTES).step_by(chunk.len()) {
        ram.write_at(&chunk, off).expect("fill RAM backstore");
    }
    let cfg = LuConfig {
        block_size: BLOCK,
        // No POWER ON unit attention: every command here should take the data path.
        report_power_on_ua: false,
        ..LuConfig::default()
    };
    let lu = LogicalUnit::new(cfg, Arc::new(ram)).expect("logical unit");
    let ds = DeviceServer::new();
    ds.add_lun(0, Arc::new(lu)).expect("add LUN 0");
    ds
}

fn nexus() -> Nexus {
    Nexus {
        initiator_name: "iqn.2026-11.io.ferrite:micro".into(),
        isid: 0x8000_0000_0001,
        target_port: Arc::new(TargetPort {
            target_name: "iqn.2026-11.io.ferrite:bench".into(),
            tpg_tag: 1,
            relative_port_id: 1,
        }),
    }
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = op;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// A cheap deterministic LBA sequence (an LCG), aligned to the transfer size.
struct Lbas {
    state: u64,
    slots: u64,
    blocks: u32,
}
impl Lbas {
    fn new(len: u32) -> Lbas {
        Lbas {
            state: 0x9e37_79b9_7f4a_7c15,
            slots: LU_BYTES / u64::from(len),
            blocks: len / BLOCK,
        }
    }
    fn next(&mut self) -> u32 {
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.state >> 33) % self.slots) as u32 * self.blocks
    }
}

fn execute(c: &mut Criterion) {
    let ds = server();
    let nexus = nexus();
    let lun = lun_to_wire(0);
    let run = |cdb: &[u8], data_out: &[u8], expected_in: u32| {
        let r = ds.execute(&ScsiRequest {
            nexus: &nexus,
            lun,
            cdb,
            data_out,
            expected_data_in: expected_in,
            attr: TaskAttr::Simple,
            cancel: None,
        });
        debug_assert_eq!(r.status, ScsiStatus::GOOD, "{r:?}");
        r
    };
    // The first command of a nexus may carry a unit attention; make sure none is pending.
    let first = run(&[0u8; 6], &[], 0);
    assert_eq!(first.status, ScsiStatus::GOOD, "{first:?}");

    let mut g = c.benchmark_group("execute");
    g.throughput(Throughput::Elements(1));
    g.bench_function("test_unit_ready", |b| {
        b.iter(|| run(black_box(&[0u8; 6]), &[], 0))
    });

    for len in [4096u32, 128 << 10] {
        let mut lbas = Lbas::new(len);
        let r = run(&rw10(0x28, lbas.next(), (len / BLOCK) as u16), &[], len);
        assert_eq!((r.status, r.data_in.len()), (ScsiStatus::GOOD, len as usize));
        g.throughput(Throughput::Bytes(u64::from(len)));
        g.bench_function(format!("read10_{}k", len / 1024), |b| {
            b.iter(|| {
                let cdb = rw10(0x28, lbas.next(), (len / BLOCK) as u16);
                run(black_box(&cdb), &[], len)
            })
        });

        let data = vec![0x3cu8; len as usize];
        let r = run(&rw10(0x2a, lbas.next(), (len / BLOCK) as u16), &data, 0);
        assert_eq!(r.status, ScsiStatus::GOOD, "{r:?}");
        g.bench_function(format!("write10_{}k", len / 1024), |b| {
            b.iter(|| {
                let cdb = rw10(0x2a, lbas.next(), (len / BLOCK) as u16);
                run(black_box(&cdb), black_box(&data), 0)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, execute);
criterion_main!(benches);
