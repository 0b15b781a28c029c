//! The SCSI device server against arbitrary CDBs and data-out: never panics, answers every
//! command with a well-formed status (fixed-format sense exactly with CHECK CONDITION), keeps
//! data-in within the allocation limits, and leaves no long operation (SANITIZE, FORMAT UNIT)
//! running forever. Input: byte 0 picks the LUN (0 is encrypted, 3 does not exist), byte 1 the CDB
//! length, then the CDB and the data-out bytes. A fresh target per input keeps runs
//! reproducible. The target device has two ALUA groups (the command arrives through the first),
//! so SET TARGET PORT GROUPS in the first round changes what the second round may do.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstore::RamBackstore;
use libfuzzer_sys::fuzz_target;
use scsi_core::{
    lun_to_wire, AccessState, AluaGroup, DeviceServer, LogicalUnit, LuConfig, Nexus, ScsiRequest,
    ScsiStatus, TargetDevice, TaskAttr, ALUA_ALL_SUPPORTED,
};

fn lu(cfg: LuConfig) -> Arc<LogicalUnit> {
    let store = Arc::new(RamBackstore::new(256 << 10));
    Arc::new(LogicalUnit::new(cfg, store).expect("LU config"))
}

/// An encrypted RAM LU (AES-256-XTS, a data key of its own): SANITIZE CRYPTO ERASE applies.
fn encrypted_lu(cfg: LuConfig) -> Arc<LogicalUnit> {
    let ram: Arc<dyn backstore::Backstore> = Arc::new(RamBackstore::new(256 << 10));
    let key = backstore::KeyFileKey::from_bytes([0x5c; 32]);
    let (enc, _) = backstore::EncryptedBackstore::open(ram, cfg.block_size, key, None)
        .expect("encrypted store");
    Arc::new(LogicalUnit::new(cfg, Arc::new(enc)).expect("LU config"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let device = TargetDevice::new("iqn.2026-11.io.ferrite:t");
    let port = device.port(1, 1);
    device.port(2, 2);
    let srv = DeviceServer::on(device.clone());
    let lus = [
        encrypted_lu(LuConfig {
            thin: true,
            ..LuConfig::default()
        }),
        lu(LuConfig {
            block_size: 4096,
            removable: true,
            ..LuConfig::default()
        }),
        lu(LuConfig {
            thin: true,
            read_only: true,
            physical_block_size: 4096,
            ..LuConfig::default()
        }),
    ];
    for (i, l) in lus.iter().enumerate() {
        srv.add_lun(i as u64, l.clone()).unwrap();
    }
    device.set_lus(lus.iter().cloned().enumerate().map(|(i, l)| (i as u64, l)).collect());
    let group = |id: u16, state| AluaGroup {
        id,
        state,
        preferred: id == 1,
        supported: ALUA_ALL_SUPPORTED,
        ports: vec![id],
    };
    device.configure_alua(
        vec![
            group(1, AccessState::ActiveOptimized),
            group(2, AccessState::ActiveNonOptimized),
        ],
        0,
    );
    let nexus = Nexus {
        initiator_name: "iqn.2026-11.io.ferrite:fuzz".into(),
        isid: 0x23d0_0000_0001,
        target_port: port,
    };
    let lun = u64::from(data[0] % 4);
    let rest = &data[2..];
    let cdb_len = [6usize, 10, 12, 16, 32][usize::from(data[1]) % 5].min(rest.len());
    let (cdb, data_out) = rest.split_at(cdb_len);
    let expected_data_in = if data[1] & 0x80 != 0 { 1 << 16 } else { 512 };
    // Twice: the second time after whatever state the first left (unit attention cleared,
    // reservation taken, medium ejected, ...).
    for _ in 0..2 {
        let r = srv.execute(&ScsiRequest {
            nexus: &nexus,
            lun: lun_to_wire(lun),
            cdb,
            data_out,
            expected_data_in,
            attr: TaskAttr::Simple,
            cancel: None,
        });
        match r.status {
            ScsiStatus::CHECK_CONDITION => {
                assert_eq!(r.sense.len(), 18, "{:02x?}", r.sense);
                assert_eq!(r.sense[0] & 0x7F, 0x70);
                assert!(r.data_in.is_empty());
            }
            ScsiStatus::GOOD
            | ScsiStatus::CONDITION_MET
            | ScsiStatus::RESERVATION_CONFLICT
            | ScsiStatus::TASK_ABORTED => assert!(r.sense.is_empty()),
            other => panic!("unexpected status {other:?}"),
        }
        // No CDB allocation length reaches past 16 MiB (READ of the largest transfer).
        assert!(
            r.data_in.len() <= 16 << 20,
            "{} bytes of data-in",
            r.data_in.len()
        );
        // A sanitize or format started with IMMED = 1 runs in the background: it must end
        // (and its thread be gone before the leak check).
        let start = Instant::now();
        for l in &lus {
            while l.busy().is_some() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "a medium operation never ended"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            l.wait_idle();
        }
    }
});
