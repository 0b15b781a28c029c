//! Command-level tests: byte-exact CDBs in, status / sense / data out, through a Vec-backed
//! test backstore.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backstore::Backstore;

use crate::*;

/// Thin provisioning from holes, offloads, removable media, sanitize (in `tests/offload.rs`).
mod alua;
mod async_io;
mod format;
mod offload;

// ---------------------------------------------------------------------------------------------
// Test backstores
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct MemStore {
    data: Mutex<Vec<u8>>,
    thin: bool,
    flushes: AtomicUsize,
    unmaps: AtomicUsize,
    fail: AtomicBool,
}

impl MemStore {
    fn new(size: usize, thin: bool) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![0; size]),
            thin,
            flushes: AtomicUsize::new(0),
            unmaps: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        })
    }

    fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        self.data.lock().unwrap()[off..off + len].to_vec()
    }

    fn fill(&self, off: usize, len: usize, v: u8) {
        self.data.lock().unwrap()[off..off + len].fill(v);
    }

    fn check(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
}

impl Backstore for MemStore {
    fn kind(&self) -> &'static str {
        "test-mem"
    }
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        if o + buf.len() > d.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check()?;
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        if o + buf.len() > d.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.check()?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.check()?;
        if !self.thin {
            return Ok(false);
        }
        self.unmaps.fetch_add(1, Ordering::SeqCst);
        self.data.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        Ok(true)
    }
    fn supports_unmap(&self) -> bool {
        self.thin
    }
}

/// A huge, all-zero, read-only-by-nature store for capacity edge cases (nothing is allocated).
#[derive(Debug)]
struct HugeStore(u64);

impl Backstore for HugeStore {
    fn kind(&self) -> &'static str {
        "test-huge"
    }
    fn size(&self) -> u64 {
        self.0
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn unmap(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(true)
    }
    fn supports_unmap(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const BS: usize = 512;
const BLOCKS: usize = 2048; // 1 MiB LU

fn port() -> Arc<TargetPort> {
    Arc::new(TargetPort {
        target_name: "iqn.2024-01.org.ferrite:test".into(),
        tpg_tag: 1,
        relative_port_id: 1,
    })
}

fn nexus_on(port: &Arc<TargetPort>, isid: u64) -> Nexus {
    Nexus {
        initiator_name: "iqn.2024-01.org.ferrite:init".into(),
        isid,
        target_port: port.clone(),
    }
}

struct T {
    srv: DeviceServer,
    store: Arc<MemStore>,
    n: Nexus,
    n2: Nexus,
}

fn cfg_quiet() -> LuConfig {
    LuConfig {
        report_power_on_ua: false,
        serial: "SER123".into(),
        ..LuConfig::default()
    }
}

fn setup_with(cfg: LuConfig, thin_store: bool) -> T {
    let store = MemStore::new(BLOCKS * cfg.block_size as usize, thin_store);
    let lu = LogicalUnit::new(cfg, store.clone()).unwrap();
    let srv = DeviceServer::new();
    srv.add_lun(0, Arc::new(lu)).unwrap();
    let p = port();
    T {
        srv,
        store,
        n: nexus_on(&p, 1),
        n2: nexus_on(&p, 2),
    }
}

/// A device server with `lu` as LUN 0 (its `store` field unused), two nexuses on one port.
fn serve_lu(lu: Arc<LogicalUnit>) -> T {
    let srv = DeviceServer::new();
    srv.add_lun(0, lu).unwrap();
    let p = port();
    T {
        srv,
        store: MemStore::new(0, false),
        n: nexus_on(&p, 1),
        n2: nexus_on(&p, 2),
    }
}

fn setup() -> T {
    setup_with(cfg_quiet(), false)
}

fn setup_thin() -> T {
    setup_with(
        LuConfig {
            thin: true,
            ..cfg_quiet()
        },
        true,
    )
}

fn exec(srv: &DeviceServer, n: &Nexus, lun: u64, cdb: &[u8], data: &[u8]) -> ScsiResponse {
    srv.execute(&ScsiRequest {
        nexus: n,
        lun: lun_to_wire(lun),
        cdb,
        data_out: data,
        expected_data_in: 0,
        attr: TaskAttr::Simple,
        cancel: None,
    })
}

impl T {
    fn run(&self, cdb: &[u8], data: &[u8]) -> ScsiResponse {
        exec(&self.srv, &self.n, 0, cdb, data)
    }
    fn run2(&self, cdb: &[u8], data: &[u8]) -> ScsiResponse {
        exec(&self.srv, &self.n2, 0, cdb, data)
    }
    fn ok(&self, cdb: &[u8], data: &[u8]) -> Vec<u8> {
        let r = self.run(cdb, data);
        assert_eq!(
            r.status,
            ScsiStatus::GOOD,
            "cdb {cdb:02x?}: sense {:02x?}",
            r.sense
        );
        r.data_in
    }
}

#[track_caller]
fn assert_sense(r: &ScsiResponse, key: u8, asc: u8, ascq: u8) {
    assert_eq!(
        r.status,
        ScsiStatus::CHECK_CONDITION,
        "expected CHECK CONDITION"
    );
    assert_eq!(r.sense.len(), 18);
    assert_eq!(
        (r.sense[2] & 0x0F, r.sense[12], r.sense[13]),
        (key, asc, ascq),
        "sense {:02x?}",
        r.sense
    );
    assert!(r.data_in.is_empty());
}

/// (C/D, byte, bit) of a sense-key specific field pointer.
#[track_caller]
fn field_pointer(r: &ScsiResponse) -> (bool, u16, Option<u8>) {
    let s = &r.sense;
    assert_ne!(s[15] & 0x80, 0, "SKSV not set: {s:02x?}");
    let bit = if s[15] & 0x08 != 0 {
        Some(s[15] & 7)
    } else {
        None
    };
    (s[15] & 0x40 != 0, u16::from_be_bytes([s[16], s[17]]), bit)
}

#[track_caller]
fn assert_invalid_cdb(r: &ScsiResponse, byte: u16, bit: Option<u8>) {
    assert_sense(r, 0x05, 0x24, 0x00);
    assert_eq!(field_pointer(r), (true, byte, bit));
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(op: u8, b1: u8, lba: u32, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb6(op: u8, lba: u32, len: u8) -> Vec<u8> {
    vec![
        op,
        ((lba >> 16) & 0x1F) as u8,
        (lba >> 8) as u8,
        lba as u8,
        len,
        0,
    ]
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, u8::from(evpd), page, a[0], a[1], 0]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Dispatch, unit attentions, LUN handling
// ---------------------------------------------------------------------------------------------

#[test]
fn server_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DeviceServer>();
    check::<LogicalUnit>();
}

#[test]
fn test_unit_ready() {
    let t = setup();
    assert!(t.ok(&[0, 0, 0, 0, 0, 0], &[]).is_empty());
}

#[test]
fn power_on_unit_attention_once_per_nexus() {
    let t = setup_with(
        LuConfig {
            report_power_on_ua: true,
            ..cfg_quiet()
        },
        false,
    );
    // INQUIRY and REPORT LUNS neither report nor clear it.
    t.ok(&inquiry(false, 0, 96), &[]);
    t.ok(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    let r = t.run(&[0, 0, 0, 0, 0, 0], &[]);
    assert_sense(&r, 0x06, 0x29, 0x00);
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
    // The other nexus has its own.
    assert_sense(&t.run2(&[0, 0, 0, 0, 0, 0], &[]), 0x06, 0x29, 0x00);
    // I_T nexus loss: the same initiator port, logging in again, is told so (SAM-5).
    t.srv.nexus_lost(&t.n);
    assert_sense(&t.run(&[0, 0, 0, 0, 0, 0], &[]), 0x06, 0x29, 0x07);
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
}

/// The store grew, then shrank: each change is told to every I_T nexus once, as CAPACITY DATA
/// HAS CHANGED, and READ CAPACITY(16) and the range checks follow; no change, no attention.
#[test]
fn capacity_changes_are_told_to_every_nexus() {
    let t = setup();
    let lu = t.srv.lu(0).unwrap();
    let capacity = |t: &T| {
        let d = t.ok(&cdb16(0x9e, 0x10, 0, 32), &[]);
        u64::from_be_bytes(d[..8].try_into().unwrap()) + 1
    };
    assert_eq!(lu.refresh_capacity().unwrap(), None);
    // Both nexuses are known to the LU (they have sent a command).
    t.ok(&[0; 6], &[]);
    t.run2(&[0; 6], &[]);
    t.store.data.lock().unwrap().resize(3 * BLOCKS * 512, 0);
    let grown = (3 * BLOCKS) as u64;
    assert_eq!(lu.refresh_capacity().unwrap(), Some((BLOCKS as u64, grown)));
    assert_eq!(lu.refresh_capacity().unwrap(), None, "told once");
    for run in [T::run, T::run2] {
        assert_sense(&run(&t, &[0; 6], &[]), 0x06, 0x2a, 0x09);
        assert_eq!(run(&t, &[0; 6], &[]).status, ScsiStatus::GOOD);
    }
    assert_eq!(capacity(&t), grown);
    let last = (grown - 1) as u32;
    t.ok(&cdb10(0x2a, 0, last, 1), &pattern(512, 3));
    assert_eq!(t.ok(&cdb10(0x28, 0, last, 1), &[]), pattern(512, 3));
    t.store.data.lock().unwrap().truncate(BLOCKS * 512);
    assert_eq!(lu.refresh_capacity().unwrap(), Some((grown, BLOCKS as u64)));
    assert_sense(&t.run(&[0; 6], &[]), 0x06, 0x2a, 0x09);
    assert_eq!(capacity(&t), BLOCKS as u64);
    assert_sense(&t.run(&cdb10(0x28, 0, last, 1), &[]), 0x05, 0x21, 0x00);
}

#[test]
fn request_sense_reports_and_clears_unit_attention() {
    let t = setup_with(
        LuConfig {
            report_power_on_ua: true,
            ..cfg_quiet()
        },
        false,
    );
    let d = t.ok(&[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!(d.len(), 18);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0x06, 0x29, 0x00));
    let d = t.ok(&[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    // Descriptor format.
    let d = t.ok(&[0x03, 1, 0, 0, 252, 0], &[]);
    assert_eq!(d, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    // Allocation length cuts.
    assert_eq!(t.ok(&[0x03, 0, 0, 0, 4, 0], &[]).len(), 4);
}

#[test]
fn missing_lun() {
    let t = setup();
    let r = exec(&t.srv, &t.n, 5, &[0, 0, 0, 0, 0, 0], &[]);
    assert_sense(&r, 0x05, 0x25, 0x00);
    // Unknown opcodes too: the LUN check comes first.
    assert_sense(
        &exec(&t.srv, &t.n, 5, &[0xFF, 0, 0, 0, 0, 0], &[]),
        0x05,
        0x25,
        0x00,
    );
    let d = exec(&t.srv, &t.n, 5, &inquiry(false, 0, 96), &[]).data_in;
    assert_eq!(d[0], 0x7F);
    assert_sense(
        &exec(&t.srv, &t.n, 5, &inquiry(true, 0, 96), &[]),
        0x05,
        0x25,
        0x00,
    );
    let r = exec(
        &t.srv,
        &t.n,
        5,
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert_eq!(r.status, ScsiStatus::GOOD);
    let r = exec(&t.srv, &t.n, 5, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!((r.data_in[2], r.data_in[12]), (0x05, 0x25));
    // An undecodable LUN field behaves like a missing LUN.
    let r = t.srv.execute(&ScsiRequest {
        nexus: &t.n,
        lun: 0x8001_0000_0000_0000,
        cdb: &[0, 0, 0, 0, 0, 0],
        data_out: &[],
        expected_data_in: 0,
        attr: TaskAttr::Simple,
        cancel: None,
    });
    assert_sense(&r, 0x05, 0x25, 0x00);
}

#[test]
fn invalid_opcode_and_service_action() {
    let t = setup();
    assert_sense(&t.run(&[0xFF, 0, 0, 0, 0, 0], &[]), 0x05, 0x20, 0x00);
    assert_sense(
        &t.run(&[0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
        0x05,
        0x20,
        0x00,
    );
    // SERVICE ACTION IN(16) with an unknown service action: field pointer byte 1, bit 4.
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x11;
    assert_invalid_cdb(&t.run(&c, &[]), 1, Some(4));
}

#[test]
fn short_and_empty_cdbs_do_not_panic() {
    let t = setup();
    assert_sense(&t.run(&[], &[]), 0x05, 0x20, 0x00);
    let r = t.run(&[0x28, 0, 0], &[]);
    assert_invalid_cdb(&r, 3, None);
    let r = t.run(&[0x12], &[]);
    assert_invalid_cdb(&r, 1, None);
}

#[test]
fn reserved_bits_and_naca_are_refused() {
    let t = setup();
    // READ(10) with RDPROTECT = 1 (no protection information).
    assert_invalid_cdb(&t.run(&cdb10(0x28, 0x20, 0, 1), &[]), 1, Some(5));
    // WRITE(16) with WRPROTECT = 7.
    assert_invalid_cdb(&t.run(&cdb16(0x8A, 0xE0, 0, 1), &[0; BS]), 1, Some(7));
    // NACA in the control byte.
    let mut c = cdb10(0x28, 0, 0, 1);
    c[9] = 0x04;
    assert_invalid_cdb(&t.run(&c, &[]), 9, Some(2));
    // Vendor bits of the control byte are ignored.
    c[9] = 0xC0;
    t.ok(&c, &[]);
    // Group number bits are accepted, the reserved bits above them are not.
    let mut c = cdb10(0x28, 0, 0, 1);
    c[6] = 0x1F;
    t.ok(&c, &[]);
    c[6] = 0x20;
    assert_invalid_cdb(&t.run(&c, &[]), 6, Some(5));
}

#[test]
fn lun_management() {
    let t = setup();
    let lu = Arc::new(LogicalUnit::new(cfg_quiet(), MemStore::new(BLOCKS * BS, false)).unwrap());
    assert_eq!(t.srv.add_lun(0, lu.clone()), Err(AddLunError::Exists(0)));
    assert_eq!(
        t.srv.add_lun(MAX_LUN + 1, lu.clone()),
        Err(AddLunError::OutOfRange(MAX_LUN + 1))
    );
    // A nexus LUN 0 already knows hears about the new LUN.
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
    t.srv.add_lun(300, lu).unwrap();
    assert_eq!(t.srv.luns(), vec![0, 300]);
    assert_sense(&t.run(&[0, 0, 0, 0, 0, 0], &[]), 0x06, 0x3F, 0x0E);
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(
        exec(&t.srv, &t.n, 300, &[0, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::GOOD
    );
    assert!(t.srv.remove_lun(300).is_some());
    assert_eq!(t.srv.luns(), vec![0]);
    assert!(t.srv.remove_lun(300).is_none());
}

#[test]
fn config_validation() {
    let s = MemStore::new(4096, false);
    let bad = |cfg: LuConfig| LogicalUnit::new(cfg, s.clone()).unwrap_err();
    assert_eq!(
        bad(LuConfig {
            block_size: 1024,
            ..LuConfig::default()
        }),
        ConfigError::BlockSize(1024)
    );
    assert!(matches!(
        bad(LuConfig {
            vendor: "123456789".into(),
            ..LuConfig::default()
        }),
        ConfigError::Text { .. }
    ));
    assert!(matches!(
        LogicalUnit::new(
            LuConfig {
                block_size: 4096,
                ..LuConfig::default()
            },
            MemStore::new(100, false)
        ),
        Err(ConfigError::TooSmall { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// INQUIRY and VPD
// ---------------------------------------------------------------------------------------------

#[test]
fn standard_inquiry() {
    let t = setup();
    let d = t.ok(&inquiry(false, 0, 255), &[]);
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0x00);
    assert_eq!(d[2], 0x06);
    assert_eq!(d[3], 0x12);
    assert_eq!(d[7], 0x02);
    assert_eq!(&d[8..16], b"FERRITE ");
    assert_eq!(&d[16..32], b"Virtual Disk    ");
    for n in [0usize, 5, 36, 95] {
        assert_eq!(t.ok(&inquiry(false, 0, n as u16), &[]), d[..n].to_vec());
    }
    // EVPD = 0 with a page code; CMDDT.
    assert_invalid_cdb(&t.run(&inquiry(false, 1, 255), &[]), 2, None);
    assert_invalid_cdb(&t.run(&[0x12, 0x02, 0, 0, 255, 0], &[]), 1, Some(1));
}

#[test]
fn vpd_pages() {
    let t = setup();
    let sup = t.ok(&inquiry(true, 0x00, 255), &[]);
    assert_eq!(&sup[..4], &[0, 0, 0, 5]);
    assert_eq!(&sup[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1]);
    for &p in &sup[4..] {
        let d = t.ok(&inquiry(true, p, 255), &[]);
        assert_eq!(d[1], p);
        assert_eq!(
            usize::from(u16::from_be_bytes([d[2], d[3]])) + 4,
            d.len(),
            "page {p:02x}"
        );
    }
    assert_eq!(
        t.ok(&inquiry(true, 0x80, 255), &[]),
        b"\0\x80\0\x06SER123".to_vec()
    );
    assert_invalid_cdb(&t.run(&inquiry(true, 0xB2, 255), &[]), 2, None);
    assert_invalid_cdb(&t.run(&inquiry(true, 0x86, 255), &[]), 2, None);
    // Block limits.
    let b0 = t.ok(&inquiry(true, 0xB0, 255), &[]);
    assert_eq!(b0.len(), 64);
    assert_eq!(b0[3], 0x3C);
    assert_eq!(b0[5], 255);
    assert_eq!(
        u32::from_be_bytes(b0[8..12].try_into().unwrap()),
        (8 << 20) / 512
    );
    assert_eq!(
        u32::from_be_bytes(b0[20..24].try_into().unwrap()),
        0,
        "no UNMAP when not thin"
    );
    assert_eq!(u64::from_be_bytes(b0[36..44].try_into().unwrap()), 0xFFFF);
    let b1 = t.ok(&inquiry(true, 0xB1, 255), &[]);
    assert_eq!(&b1[4..6], &[0, 1]);
}

#[test]
fn device_identification() {
    let t = setup();
    let d = t.ok(&inquiry(true, 0x83, 1024), &[]);
    let mut descs = Vec::new();
    let mut o = 4;
    while o < d.len() {
        let len = usize::from(d[o + 3]);
        descs.push((d[o], d[o + 1], d[o + 4..o + 4 + len].to_vec()));
        o += 4 + len;
    }
    assert_eq!(o, d.len());
    let naa = LuConfig::default().naa_id.to_be_bytes().to_vec();
    assert_eq!(descs[0], (0x01, 0x03, naa));
    assert_eq!(descs[1], (0x02, 0x01, b"FERRITE SER123".to_vec()));
    assert_eq!(descs[2], (0x51, 0x94, vec![0, 0, 0, 1]));
    // Target port group (type 5): the default group, 1.
    assert_eq!(descs[3], (0x51, 0x95, vec![0, 0, 0, 1]));
    let name = b"iqn.2024-01.org.ferrite:test,t,0x0001\0\0\0".to_vec();
    assert_eq!(descs[4], (0x53, 0x98, name));
    assert_eq!(descs[5].1, 0xA8);
    assert_eq!(&descs[5].2[..28], b"iqn.2024-01.org.ferrite:test");
    assert_eq!(descs[5].2.len() % 4, 0);
}

#[test]
fn thin_provisioning_pages() {
    let t = setup_thin();
    let sup = t.ok(&inquiry(true, 0x00, 255), &[]);
    assert_eq!(sup.last(), Some(&0xB2));
    let b2 = t.ok(&inquiry(true, 0xB2, 255), &[]);
    assert_eq!(b2, vec![0, 0xB2, 0, 4, 0, 0xE6, 0x02, 0]);
    let b0 = t.ok(&inquiry(true, 0xB0, 255), &[]);
    assert_eq!(u32::from_be_bytes(b0[20..24].try_into().unwrap()), 1 << 20);
    assert_eq!(u32::from_be_bytes(b0[24..28].try_into().unwrap()), 256);
    let rc = t.ok(&cdb16(0x9E, 0x10, 0, 32), &[]);
    assert_eq!(rc[14], 0xC0);
    // thin requested but the backstore cannot deallocate: not thin.
    let t = setup_with(
        LuConfig {
            thin: true,
            ..cfg_quiet()
        },
        false,
    );
    assert_eq!(t.ok(&cdb16(0x9E, 0x10, 0, 32), &[])[14], 0);
}

// ---------------------------------------------------------------------------------------------
// REPORT LUNS, capacity, defect data
// ---------------------------------------------------------------------------------------------

fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA0, 0, select, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn report_luns_cmd() {
    let t = setup();
    let lu = Arc::new(LogicalUnit::new(cfg_quiet(), MemStore::new(BLOCKS * BS, false)).unwrap());
    t.srv.add_lun(1000, lu).unwrap();
    let d = t.ok(&report_luns(0, 1024), &[]);
    assert_eq!(d.len(), 24);
    assert_eq!(&d[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
    assert_eq!(&d[8..16], &[0; 8]);
    assert_eq!(&d[16..24], &[0x43, 0xE8, 0, 0, 0, 0, 0, 0]);
    assert_eq!(t.ok(&report_luns(2, 1024), &[]), d);
    assert_eq!(t.ok(&report_luns(1, 1024), &[]), vec![0; 8]);
    assert_eq!(t.ok(&report_luns(0, 16), &[]), d[..16].to_vec());
    assert_invalid_cdb(&t.run(&report_luns(3, 1024), &[]), 2, None);
    assert_invalid_cdb(&t.run(&report_luns(0, 15), &[]), 6, None);
    // Empty target: LUN 0 is reported anyway.
    let srv = DeviceServer::new();
    let r = exec(&srv, &t.n, 0, &report_luns(0, 64), &[]);
    assert_eq!(
        r.data_in,
        vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn read_capacity() {
    let t = setup();
    let d = t.ok(&cdb10(0x25, 0, 0, 0), &[]);
    assert_eq!(
        d,
        [(BLOCKS as u32 - 1).to_be_bytes(), 512u32.to_be_bytes()].concat()
    );
    // PMI = 0 with an LBA.
    assert_invalid_cdb(&t.run(&cdb10(0x25, 0, 5, 0), &[]), 2, None);
    let d = t.ok(&cdb16(0x9E, 0x10, 0, 32), &[]);
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &(BLOCKS as u64 - 1).to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(&d[12..], &[0; 20]);
    for alloc in 0..16 {
        assert_eq!(
            t.ok(&cdb16(0x9E, 0x10, 0, alloc), &[]).len(),
            alloc as usize
        );
    }
}

#[test]
fn read_capacity_of_a_huge_lu() {
    let lu = LogicalUnit::new(
        LuConfig {
            block_size: 4096,
            ..cfg_quiet()
        },
        Arc::new(HugeStore(1 << 50)),
    )
    .unwrap();
    let srv = DeviceServer::new();
    srv.add_lun(0, Arc::new(lu)).unwrap();
    let n = nexus_on(&port(), 1);
    let d = exec(&srv, &n, 0, &cdb10(0x25, 0, 0, 0), &[]).data_in;
    assert_eq!(&d[..4], &[0xFF; 4]);
    assert_eq!(&d[4..], &4096u32.to_be_bytes());
    let d = exec(&srv, &n, 0, &cdb16(0x9E, 0x10, 0, 32), &[]).data_in;
    assert_eq!(&d[..8], &((1u64 << 38) - 1).to_be_bytes());
    // MODE SENSE(6) short block descriptor: FFFFFFFFh.
    let d = exec(&srv, &n, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).data_in;
    assert_eq!(&d[4..8], &[0xFF; 4]);
    // WRITE SAME with 0 blocks from LBA 0 exceeds MAXIMUM WRITE SAME LENGTH.
    let r = exec(&srv, &n, 0, &cdb16(0x93, 0, 0, 0), &[0; 4096]);
    assert_invalid_cdb(&r, 10, None);
    // READ(16) near the top of the LBA space.
    let r = exec(&srv, &n, 0, &cdb16(0x88, 0, (1 << 38) - 1, 1), &[]);
    assert_eq!(r.status, ScsiStatus::GOOD);
    let r = exec(&srv, &n, 0, &cdb16(0x88, 0, 1 << 38, 1), &[]);
    assert_sense(&r, 0x05, 0x21, 0x00);
}

#[test]
fn read_defect_data() {
    let t = setup();
    let d = t.ok(&[0x37, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 32, 0], &[]);
    assert_eq!(d, vec![0, 0x1D, 0, 0]);
    let d = t.ok(&[0xB7, 0x10, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]);
    assert_eq!(d, vec![0, 0x10, 0, 0, 0, 0, 0, 0]);
}

// ---------------------------------------------------------------------------------------------
// READ / WRITE
// ---------------------------------------------------------------------------------------------

#[test]
fn read_write_round_trip_all_sizes() {
    let t = setup();
    let data = pattern(4 * BS, 7);
    // WRITE(6) at LBA 3.
    let r = t.run(&cdb6(0x0A, 3, 4), &data);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(r.data_out_len, (4 * BS) as u32);
    assert_eq!(t.store.bytes(3 * BS, 4 * BS), data);
    assert_eq!(t.ok(&cdb6(0x08, 3, 4), &[]), data);
    // 10 / 12 / 16.
    let d10 = pattern(2 * BS, 1);
    t.ok(&cdb10(0x2A, 0, 100, 2), &d10);
    assert_eq!(t.ok(&cdb10(0x28, 0, 100, 2), &[]), d10);
    let d12 = pattern(3 * BS, 2);
    t.ok(&cdb12(0xAA, 0, 200, 3), &d12);
    assert_eq!(t.ok(&cdb12(0xA8, 0, 200, 3), &[]), d12);
    let d16 = pattern(BS, 3);
    t.ok(&cdb16(0x8A, 0, BLOCKS as u64 - 1, 1), &d16);
    assert_eq!(t.ok(&cdb16(0x88, 0, BLOCKS as u64 - 1, 1), &[]), d16);
    assert_eq!(t.store.bytes((BLOCKS - 1) * BS, BS), d16);
}

#[test]
fn six_byte_transfer_length_zero_is_256_blocks() {
    let t = setup();
    assert_eq!(t.ok(&cdb6(0x08, 0, 0), &[]).len(), 256 * BS);
    let r = t.run(&cdb6(0x0A, 0, 0), &vec![9; 256 * BS]);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(r.data_out_len, (256 * BS) as u32);
    assert_eq!(t.store.bytes(255 * BS, BS), vec![9; BS]);
}

#[test]
fn zero_length_transfers() {
    let t = setup();
    assert!(t.ok(&cdb10(0x28, 0, 0, 0), &[]).is_empty());
    let r = t.run(&cdb10(0x2A, 0, 0, 0), &[]);
    assert_eq!((r.status, r.data_out_len), (ScsiStatus::GOOD, 0));
    // Still range checked.
    assert_sense(
        &t.run(&cdb10(0x28, 0, BLOCKS as u32 + 1, 0), &[]),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(
        &t.run(&cdb10(0x2A, 0, 0x8000_0000, 0), &[]),
        0x05,
        0x21,
        0x00,
    );
    // Ending exactly at the capacity is fine.
    t.ok(&cdb10(0x28, 0, BLOCKS as u32, 0), &[]);
}

#[test]
fn lba_out_of_range() {
    let t = setup();
    let n = BLOCKS as u32;
    for (lba, len) in [(n, 1u16), (n - 1, 2), (u32::MAX, 1), (0, n as u16 + 1)] {
        assert_sense(&t.run(&cdb10(0x28, 0, lba, len), &[]), 0x05, 0x21, 0x00);
        assert_sense(
            &t.run(&cdb10(0x2A, 0, lba, len), &vec![0; len as usize * BS]),
            0x05,
            0x21,
            0x00,
        );
    }
    // u64 wrap-around.
    assert_sense(&t.run(&cdb16(0x88, 0, u64::MAX, 2), &[]), 0x05, 0x21, 0x00);
    assert_sense(
        &t.run(&cdb16(0x8A, 0, u64::MAX - 1, 2), &[0; 2 * BS]),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(&t.run(&cdb6(0x08, 0x1F_FFFF, 1), &[]), 0x05, 0x21, 0x00);
}

#[test]
fn maximum_transfer_length() {
    let lu = LogicalUnit::new(cfg_quiet(), Arc::new(HugeStore(1 << 40))).unwrap();
    let srv = DeviceServer::new();
    srv.add_lun(0, Arc::new(lu)).unwrap();
    let n = nexus_on(&port(), 1);
    let max = (8u32 << 20) / 512;
    assert_eq!(
        exec(&srv, &n, 0, &cdb16(0x88, 0, 0, max), &[])
            .data_in
            .len(),
        8 << 20
    );
    assert_invalid_cdb(
        &exec(&srv, &n, 0, &cdb16(0x88, 0, 0, max + 1), &[]),
        10,
        None,
    );
    assert_invalid_cdb(
        &exec(&srv, &n, 0, &cdb12(0xAA, 0, 0, u32::MAX), &[]),
        6,
        None,
    );
}

#[test]
fn dpo_fua_accepted_and_fua_flushes() {
    let t = setup();
    let before = t.store.flushes.load(Ordering::SeqCst);
    t.ok(&cdb10(0x2A, 0x10, 0, 1), &[1; BS]); // DPO
    assert_eq!(t.store.flushes.load(Ordering::SeqCst), before);
    t.ok(&cdb10(0x2A, 0x08, 0, 1), &[1; BS]); // FUA
    assert_eq!(t.store.flushes.load(Ordering::SeqCst), before + 1);
    t.ok(&cdb16(0x88, 0x18, 0, 1), &[]);
    t.ok(&cdb12(0xA8, 0x18, 0, 1), &[]);
}

#[test]
fn write_protected_lu() {
    let t = setup_with(
        LuConfig {
            read_only: true,
            ..cfg_quiet()
        },
        true,
    );
    assert_sense(&t.run(&cdb10(0x2A, 0, 0, 1), &[0; BS]), 0x07, 0x27, 0x00);
    assert_sense(&t.run(&cdb16(0x8A, 0, 0, 1), &[0; BS]), 0x07, 0x27, 0x00);
    assert_sense(&t.run(&cdb10(0x2E, 0x02, 0, 1), &[0; BS]), 0x07, 0x27, 0x00);
    // WRITE SAME with UNMAP and no data at all is still a write-protect error.
    assert_sense(&t.run(&cdb10(0x41, 0x08, 0, 1), &[]), 0x07, 0x27, 0x00);
    assert_sense(&t.run(&cdb16(0x93, 0x08, 0, 1), &[]), 0x07, 0x27, 0x00);
    let mut caw = cdb16(0x89, 0, 0, 0);
    caw[13] = 1;
    assert_sense(&t.run(&caw, &[0; 2 * BS]), 0x07, 0x27, 0x00);
    // Field and range errors come first.
    assert_invalid_cdb(&t.run(&cdb10(0x2A, 0x20, 0, 1), &[0; BS]), 1, Some(5));
    assert_sense(
        &t.run(&cdb10(0x2A, 0, BLOCKS as u32, 1), &[0; BS]),
        0x05,
        0x21,
        0x00,
    );
    // Reads work; MODE SENSE shows WP.
    t.ok(&cdb10(0x28, 0, 0, 1), &[]);
    assert_eq!(t.ok(&[0x1A, 0, 0x3F, 0, 255, 0], &[])[2] & 0x80, 0x80);
}

#[test]
fn write_with_short_data_out() {
    let t = setup();
    t.store.fill(0, 2 * BS, b'a');
    // TRANSFER LENGTH 2, one block received: only that block is written.
    let r = t.run(&cdb10(0x2A, 0, 0, 2), &[b'b'; BS]);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(r.data_out_len, (2 * BS) as u32);
    assert_eq!(t.store.bytes(0, BS), vec![b'b'; BS]);
    assert_eq!(t.store.bytes(BS, BS), vec![b'a'; BS]);
    // Nothing received: nothing written, GOOD.
    let r = t.run(&cdb10(0x2A, 0, 1, 1), &[]);
    assert_eq!((r.status, r.data_out_len), (ScsiStatus::GOOD, BS as u32));
    assert_eq!(t.store.bytes(BS, BS), vec![b'a'; BS]);
    // A partial block: refused, nothing written.
    let r = t.run(&cdb10(0x2A, 0, 1, 1), &[b'c'; 200]);
    assert_sense(&r, 0x05, 0x0E, 0x03);
    assert_eq!(r.data_out_len, BS as u32);
    assert_eq!(t.store.bytes(BS, BS), vec![b'a'; BS]);
    // More data than the CDB asks for: only TRANSFER LENGTH blocks are written.
    t.ok(&cdb10(0x2A, 0, 0, 1), &[b'd'; 2 * BS]);
    assert_eq!(
        t.store.bytes(0, 2 * BS),
        [vec![b'd'; BS], vec![b'a'; BS]].concat()
    );
}

#[test]
fn backstore_errors_become_medium_errors() {
    let t = setup();
    t.store.fail.store(true, Ordering::SeqCst);
    assert_sense(&t.run(&cdb10(0x28, 0, 0, 1), &[]), 0x03, 0x11, 0x00);
    assert_sense(&t.run(&cdb10(0x2A, 0, 0, 1), &[0; BS]), 0x03, 0x0C, 0x00);
    assert_sense(&t.run(&cdb10(0x35, 0, 0, 0), &[]), 0x03, 0x0C, 0x00);
}

// ---------------------------------------------------------------------------------------------
// VERIFY, WRITE AND VERIFY, SYNCHRONIZE CACHE, PRE-FETCH
// ---------------------------------------------------------------------------------------------

#[test]
fn verify_cmd() {
    let t = setup();
    let data = pattern(3 * BS, 5);
    t.ok(&cdb10(0x2A, 0, 10, 3), &data);
    // BYTCHK 0: range check only.
    t.ok(&cdb10(0x2F, 0, 10, 3), &[]);
    t.ok(&cdb10(0x2F, 0x10, 10, 3), &[]); // DPO
    assert_sense(
        &t.run(&cdb10(0x2F, 0, BLOCKS as u32 + 1, 0), &[]),
        0x05,
        0x21,
        0x00,
    );
    // BYTCHK 1.
    let r = t.run(&cdb10(0x2F, 0x02, 10, 3), &data);
    assert_eq!(
        (r.status, r.data_out_len),
        (ScsiStatus::GOOD, (3 * BS) as u32)
    );
    let mut bad = data.clone();
    bad[BS + 17] ^= b'X';
    let r = t.run(&cdb12(0xAF, 0x02, 10, 3), &bad);
    assert_sense(&r, 0x0E, 0x1D, 0x00);
    assert_eq!(r.sense[0], 0xF0, "VALID");
    assert_eq!(&r.sense[3..7], &((BS + 17) as u32).to_be_bytes());
    // BYTCHK 0 ignores the (mismatching) data.
    t.ok(&cdb16(0x8F, 0, 10, 3), &bad);
    // BYTCHK 11b: one block against each.
    t.store.fill(20 * BS, 4 * BS, 0x5A);
    t.ok(&cdb16(0x8F, 0x06, 20, 4), &[0x5A; BS]);
    t.store.fill(22 * BS + 3, 1, 0);
    let r = t.run(&cdb16(0x8F, 0x06, 20, 4), &[0x5A; BS]);
    assert_sense(&r, 0x0E, 0x1D, 0x00);
    assert_eq!(&r.sense[3..7], &((2 * BS + 3) as u32).to_be_bytes());
    // BYTCHK 10b reserved; VRPROTECT refused.
    assert_invalid_cdb(&t.run(&cdb10(0x2F, 0x04, 10, 1), &[]), 1, Some(2));
    assert_invalid_cdb(&t.run(&cdb10(0x2F, 0x22, 10, 1), &data[..BS]), 1, Some(5));
}

#[test]
fn write_and_verify_cmd() {
    let t = setup();
    let data = pattern(2 * BS, 9);
    for c in [
        cdb10(0x2E, 0x02, 30, 2),
        cdb12(0xAE, 0, 40, 2),
        cdb16(0x8E, 0x12, 50, 2),
    ] {
        let lba = if c[0] == 0x8E { c[9] } else { c[5] } as usize;
        let r = t.run(&c, &data);
        assert_eq!(
            (r.status, r.data_out_len),
            (ScsiStatus::GOOD, (2 * BS) as u32)
        );
        assert_eq!(t.store.bytes(lba * BS, 2 * BS), data);
    }
    t.ok(&cdb10(0x2E, 0, 0, 0), &[]);
    assert_invalid_cdb(&t.run(&cdb10(0x2E, 0x06, 0, 1), &data), 1, Some(2));
    assert_sense(
        &t.run(&cdb10(0x2E, 0, u32::MAX, 1), &data),
        0x05,
        0x21,
        0x00,
    );
}

#[test]
fn synchronize_cache_and_prefetch() {
    let t = setup();
    let before = t.store.flushes.load(Ordering::SeqCst);
    t.ok(&cdb10(0x35, 0x02, 0, 0), &[]);
    t.ok(&cdb16(0x91, 0, 5, 10), &[]);
    assert_eq!(t.store.flushes.load(Ordering::SeqCst), before + 2);
    assert_sense(
        &t.run(&cdb10(0x35, 0, BLOCKS as u32, 1), &[]),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(&t.run(&cdb16(0x91, 0, u64::MAX, 1), &[]), 0x05, 0x21, 0x00);
    t.ok(&cdb10(0x34, 0x02, 0, 16), &[]);
    t.ok(&cdb16(0x90, 0, BLOCKS as u64 - 1, 1), &[]);
    assert_sense(
        &t.run(&cdb10(0x34, 0, BLOCKS as u32 + 1, 0), &[]),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(
        &t.run(&cdb16(0x90, 0, BLOCKS as u64 - 1, 2), &[]),
        0x05,
        0x21,
        0x00,
    );
}

// ---------------------------------------------------------------------------------------------
// WRITE SAME, UNMAP, GET LBA STATUS
// ---------------------------------------------------------------------------------------------

#[test]
fn write_same_writes_the_block() {
    let t = setup();
    let block = pattern(BS, 3);
    let r = t.run(&cdb10(0x41, 0, 7, 5), &block);
    assert_eq!((r.status, r.data_out_len), (ScsiStatus::GOOD, BS as u32));
    for i in 7..12 {
        assert_eq!(t.store.bytes(i * BS, BS), block);
    }
    assert_eq!(t.store.bytes(12 * BS, BS), vec![0; BS]);
    // Zero blocks: through the end of the LU.
    t.ok(&cdb16(0x93, 0, BLOCKS as u64 - 3, 0), &[0xEE; BS]);
    assert_eq!(t.store.bytes((BLOCKS - 3) * BS, 3 * BS), vec![0xEE; 3 * BS]);
    t.ok(&cdb16(0x93, 0, BLOCKS as u64, 0), &[0xEE; BS]);
    assert_sense(
        &t.run(&cdb16(0x93, 0, BLOCKS as u64 + 1, 0), &[0; BS]),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(
        &t.run(&cdb10(0x41, 0, BLOCKS as u32 - 1, 2), &[0; BS]),
        0x05,
        0x21,
        0x00,
    );
    // NDOB writes zeroes and takes no data.
    let r = t.run(&cdb16(0x93, 0x01, 7, 2), &[]);
    assert_eq!((r.status, r.data_out_len), (ScsiStatus::GOOD, 0));
    assert_eq!(t.store.bytes(7 * BS, 2 * BS), vec![0; 2 * BS]);
    // Missing data block.
    assert_sense(&t.run(&cdb10(0x41, 0, 0, 1), &[1; 100]), 0x05, 0x0E, 0x03);
}

#[test]
fn write_same_flags() {
    let t = setup();
    // UNMAP without thin provisioning.
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x08, 0, 1), &[0; BS]), 1, Some(3));
    // ANCHOR without thin provisioning (ANC_SUP = 0), alone or with UNMAP; PBDATA; LBDATA;
    // WRPROTECT.
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x10, 0, 1), &[0; BS]), 1, Some(4));
    assert_invalid_cdb(&t.run(&cdb16(0x93, 0x18, 0, 1), &[0; BS]), 1, Some(3));
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x04, 0, 1), &[0; BS]), 1, Some(2));
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x02, 0, 1), &[0; BS]), 1, Some(1));
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x40, 0, 1), &[0; BS]), 1, Some(6));
    // NDOB does not exist in WRITE SAME(10).
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x01, 0, 1), &[0; BS]), 1, Some(0));
}

#[test]
fn write_same_unmap_on_thin_lu() {
    let t = setup_thin();
    t.store.fill(0, 300 * BS, 0xFF);
    t.ok(&cdb10(0x41, 0x08, 0, 256), &[0; BS]);
    assert_eq!(t.store.unmaps.load(Ordering::SeqCst), 1);
    assert_eq!(t.store.bytes(0, 256 * BS), vec![0; 256 * BS]);
    assert_eq!(t.store.bytes(256 * BS, BS), vec![0xFF; BS]);
    // With UNMAP the data block does not matter: the range is deallocated and reads as zero.
    t.store.fill(0, 2 * BS, 0xFF);
    t.ok(&cdb16(0x93, 0x08, 0, 2), &[7; BS]);
    assert_eq!(t.store.unmaps.load(Ordering::SeqCst), 2);
    assert_eq!(t.store.bytes(0, 2 * BS), vec![0; 2 * BS]);
    // NDOB + UNMAP deallocates; zero blocks with UNMAP runs to the end of the LU.
    t.ok(&cdb16(0x93, 0x09, 0, 2), &[]);
    assert_eq!(t.store.unmaps.load(Ordering::SeqCst), 3);
    t.store.fill((BLOCKS - 4) * BS, 4 * BS, 0xFF);
    t.ok(&cdb10(0x41, 0x08, BLOCKS as u32 - 4, 0), &[0xFF; BS]);
    assert_eq!(t.store.bytes((BLOCKS - 4) * BS, 4 * BS), vec![0; 4 * BS]);
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    for &(lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[test]
fn unmap_cmd() {
    let t = setup_thin();
    t.store.fill(0, 64 * BS, 0xAB);
    let p = unmap_list(&[(0, 4), (10, 2), (20, 0)]);
    let r = t.run(&unmap_cdb(p.len()), &p);
    assert_eq!(
        (r.status, r.data_out_len),
        (ScsiStatus::GOOD, p.len() as u32)
    );
    assert_eq!(t.store.bytes(0, 4 * BS), vec![0; 4 * BS]);
    assert_eq!(t.store.bytes(4 * BS, BS), vec![0xAB; BS]);
    assert_eq!(t.store.bytes(10 * BS, 2 * BS), vec![0; 2 * BS]);
    assert_eq!(t.store.unmaps.load(Ordering::SeqCst), 2);
    // Empty lists and zero-length descriptors at the very end.
    t.ok(&unmap_cdb(0), &[]);
    let p = unmap_list(&[]);
    t.ok(&unmap_cdb(p.len()), &p);
    let p = unmap_list(&[(BLOCKS as u64, 0)]);
    t.ok(&unmap_cdb(p.len()), &p);
}

#[test]
fn unmap_parameter_list_errors() {
    let t = setup_thin();
    t.store.fill(0, 8 * BS, 0xAB);
    // Shorter than the header.
    assert_sense(&t.run(&unmap_cdb(4), &[0, 6, 0, 0]), 0x05, 0x1A, 0x00);
    // Header claims more than was sent.
    let mut p = unmap_list(&[(0, 1)]);
    p[3] = 32;
    assert_sense(&t.run(&unmap_cdb(p.len()), &p), 0x05, 0x1A, 0x00);
    let mut p = unmap_list(&[(0, 1)]);
    p[1] = 40;
    assert_sense(&t.run(&unmap_cdb(p.len()), &p), 0x05, 0x1A, 0x00);
    // Parameter list length larger than the data actually received.
    let p = unmap_list(&[(0, 1)]);
    assert_sense(&t.run(&unmap_cdb(p.len()), &p[..20]), 0x05, 0x1A, 0x00);
    // Out of range in the second descriptor: nothing is unmapped.
    let p = unmap_list(&[(0, 1), (BLOCKS as u64 - 1, 2)]);
    assert_sense(&t.run(&unmap_cdb(p.len()), &p), 0x05, 0x21, 0x00);
    assert_eq!(t.store.bytes(0, BS), vec![0xAB; BS]);
    let p = unmap_list(&[(u64::MAX, 1)]);
    assert_sense(&t.run(&unmap_cdb(p.len()), &p), 0x05, 0x21, 0x00);
    // Too many descriptors.
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    let p = unmap_list(&many);
    let r = t.run(&unmap_cdb(p.len()), &p);
    assert_sense(&r, 0x05, 0x26, 0x00);
    assert_eq!(field_pointer(&r), (false, 2, None));
    // ANCHOR (ANC_SUP = 1): the ranges read as zeroes but are not deallocated.
    t.store.fill(0, 4 * BS, 0x77);
    let before = t.store.unmaps.load(Ordering::SeqCst);
    let p = unmap_list(&[(1, 2)]);
    let mut cdb = unmap_cdb(p.len());
    cdb[1] = 0x01;
    t.ok(&cdb, &p);
    assert_eq!(t.store.unmaps.load(Ordering::SeqCst), before);
    assert_eq!(t.store.bytes(0, BS), vec![0x77; BS]);
    assert_eq!(t.store.bytes(BS, 2 * BS), vec![0; 2 * BS]);
    assert_eq!(t.store.bytes(3 * BS, BS), vec![0x77; BS]);
}

#[test]
fn write_same_anchor_on_thin_lu() {
    let t = setup_thin();
    t.store.fill(0, 8 * BS, 0x55);
    // ANCHOR needs UNMAP (SBC-4 §5.48).
    assert_invalid_cdb(&t.run(&cdb10(0x41, 0x10, 0, 4), &[0; BS]), 1, Some(4));
    t.ok(&cdb10(0x41, 0x18, 2, 4), &[0xEE; BS]);
    t.ok(&cdb16(0x93, 0x19, 6, 1), &[]);
    assert_eq!(
        t.store.unmaps.load(Ordering::SeqCst),
        0,
        "anchored, not deallocated"
    );
    assert_eq!(t.store.bytes(0, 2 * BS), vec![0x55; 2 * BS]);
    assert_eq!(t.store.bytes(2 * BS, 5 * BS), vec![0; 5 * BS]);
    assert_eq!(t.store.bytes(7 * BS, BS), vec![0x55; BS]);
    // The Logical Block Provisioning VPD page says so: ANC_SUP.
    let d = t.ok(&inquiry(true, 0xB2, 64), &[]);
    assert_eq!(d[5] & 0x02, 0x02);
}

#[test]
fn unmap_needs_thin_provisioning() {
    let t = setup();
    let p = unmap_list(&[(0, 1)]);
    assert_sense(&t.run(&unmap_cdb(p.len()), &p), 0x05, 0x20, 0x00);
}

#[test]
fn get_lba_status() {
    let t = setup_thin();
    let d = t.ok(&cdb16(0x9E, 0x12, 5, 24), &[]);
    let mut want = vec![0, 0, 0, 20, 0, 0, 0, 0];
    want.extend_from_slice(&5u64.to_be_bytes());
    want.extend_from_slice(&(BLOCKS as u32 - 5).to_be_bytes());
    want.extend_from_slice(&[0; 4]);
    assert_eq!(d, want);
    assert_eq!(t.ok(&cdb16(0x9E, 0x12, 5, 8), &[]).len(), 8);
    assert_sense(
        &t.run(&cdb16(0x9E, 0x12, BLOCKS as u64, 24), &[]),
        0x05,
        0x21,
        0x00,
    );
    assert_sense(
        &t.run(&cdb16(0x9E, 0x12, u64::MAX, 24), &[]),
        0x05,
        0x21,
        0x00,
    );
}

// ---------------------------------------------------------------------------------------------
// COMPARE AND WRITE
// ---------------------------------------------------------------------------------------------

fn caw(lba: u64, nlb: u8, b1: u8) -> Vec<u8> {
    let mut c = cdb16(0x89, b1, lba, 0);
    c[13] = nlb;
    c
}

#[test]
fn compare_and_write() {
    let t = setup();
    t.store.fill(4 * BS, 2 * BS, b'A');
    let mut data = vec![b'A'; 2 * BS];
    data.extend(vec![b'B'; 2 * BS]);
    let r = t.run(&caw(4, 2, 0x08), &data);
    assert_eq!(
        (r.status, r.data_out_len),
        (ScsiStatus::GOOD, (4 * BS) as u32)
    );
    assert_eq!(t.store.bytes(4 * BS, 2 * BS), vec![b'B'; 2 * BS]);
    // Miscompare: nothing written, INFORMATION = offset.
    let mut data = vec![b'B'; 2 * BS];
    data[2 * BS - 27] = b'C';
    data.extend(vec![b'Z'; 2 * BS]);
    let r = t.run(&caw(4, 2, 0), &data);
    assert_sense(&r, 0x0E, 0x1D, 0x00);
    assert_eq!(&r.sense[3..7], &((2 * BS - 27) as u32).to_be_bytes());
    assert_eq!(t.store.bytes(4 * BS, 2 * BS), vec![b'B'; 2 * BS]);
    // Zero blocks.
    t.ok(&caw(0, 0, 0), &[]);
    assert_invalid_cdb(&t.run(&caw(0, 0, 0), &vec![0; 512 * BS]), 13, None);
    // Short data, range, WRPROTECT.
    assert_sense(&t.run(&caw(4, 2, 0), &vec![b'B'; 3 * BS]), 0x05, 0x0E, 0x03);
    assert_sense(
        &t.run(&caw(BLOCKS as u64 - 1, 2, 0), &vec![0; 4 * BS]),
        0x05,
        0x21,
        0x00,
    );
    assert_invalid_cdb(&t.run(&caw(0, 1, 0x20), &[0; 2 * BS]), 1, Some(5));
}

#[test]
fn compare_and_write_is_atomic() {
    // Several threads increment a counter kept in block 0 with read + COMPARE AND WRITE,
    // retrying on miscompare; no increment may be lost.
    let t = Arc::new(setup());
    let threads = 4;
    let per_thread = 50;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                let n = nexus_on(&port(), 100 + i);
                let mut done = 0;
                while done < per_thread {
                    let cur = exec(&t.srv, &n, 0, &cdb10(0x28, 0, 0, 1), &[]).data_in;
                    let v = u64::from_be_bytes(cur[..8].try_into().unwrap());
                    let mut next = cur.clone();
                    next[..8].copy_from_slice(&(v + 1).to_be_bytes());
                    let mut data = cur;
                    data.extend(next);
                    // Plain writes elsewhere interleave with the CAWs.
                    exec(
                        &t.srv,
                        &n,
                        0,
                        &cdb10(0x2A, 0, 1 + i as u32, 1),
                        &[i as u8; BS],
                    );
                    let r = exec(&t.srv, &n, 0, &caw(0, 1, 0), &data);
                    if r.status == ScsiStatus::GOOD {
                        done += 1;
                    } else {
                        assert_eq!(r.sense[2], 0x0E);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let v = u64::from_be_bytes(t.store.bytes(0, 8).try_into().unwrap());
    assert_eq!(v, threads * per_thread);
}

// ---------------------------------------------------------------------------------------------
// MODE SENSE / MODE SELECT
// ---------------------------------------------------------------------------------------------

fn mode_sense6(dbd: bool, pc: u8, page: u8, sub: u8, alloc: u8) -> Vec<u8> {
    vec![
        0x1A,
        if dbd { 0x08 } else { 0 },
        (pc << 6) | page,
        sub,
        alloc,
        0,
    ]
}

fn mode_sense10(b1: u8, pc: u8, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5A, b1, (pc << 6) | page, 0, 0, 0, 0, a[0], a[1], 0]
}

/// Split mode pages (page_0 format) out of a MODE SENSE answer.
fn pages(d: &[u8], ten: bool) -> Vec<Vec<u8>> {
    let (hdr, bdl) = if ten {
        (8, usize::from(u16::from_be_bytes([d[6], d[7]])))
    } else {
        (4, usize::from(d[3]))
    };
    let mut o = hdr + bdl;
    let mut out = Vec::new();
    while o < d.len() {
        let len = usize::from(d[o + 1]) + 2;
        out.push(d[o..o + len].to_vec());
        o += len;
    }
    out
}

#[test]
fn mode_sense_all_pages() {
    let t = setup();
    let d = t.ok(&mode_sense6(false, 0, 0x3F, 0, 255), &[]);
    assert_eq!(usize::from(d[0]) + 1, d.len());
    assert_eq!(d[2], 0x10, "DPOFUA, not WP");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &(BLOCKS as u32).to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0]);
    let p = pages(&d, false);
    let codes: Vec<u8> = p.iter().map(|p| p[0]).collect();
    assert_eq!(codes, vec![0x01, 0x08, 0x0A, 0x1C]);
    assert_eq!(p[1][2] & 0x04, 0x04, "WCE");
    // All subpages too.
    assert_eq!(t.ok(&mode_sense6(false, 0, 0x3F, 0xFF, 255), &[]), d);
    // DBD.
    let d2 = t.ok(&mode_sense6(true, 0, 0x3F, 0, 255), &[]);
    assert_eq!(d2[3], 0);
    assert_eq!(pages(&d2, false), p);
    // Truncation.
    assert_eq!(
        t.ok(&mode_sense6(false, 0, 0x3F, 0, 4), &[]),
        d[..4].to_vec()
    );
}

#[test]
fn mode_sense_ten_and_long_lba() {
    let t = setup();
    let d = t.ok(&mode_sense10(0x10, 0, 0x0A, 512), &[]);
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
    assert_eq!(d[4], 1, "LONGLBA");
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
    assert_eq!(&d[8..16], &(BLOCKS as u64).to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    let p = pages(&d, true);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0][..4], [0x0A, 0x0A, 0x02, 0x10]);
    let d = t.ok(&mode_sense10(0x00, 0, 0x08, 512), &[]);
    assert_eq!(d[4], 0);
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 8);
}

#[test]
fn mode_sense_page_control_and_errors() {
    let t = setup();
    let ch = t.ok(&mode_sense6(true, 1, 0x0A, 0, 255), &[]);
    assert_eq!(pages(&ch, false)[0][4], 0x08, "SWP changeable");
    let ch = t.ok(&mode_sense6(false, 1, 0x08, 0, 255), &[]);
    assert_eq!(&ch[4..12], &[0; 8], "block descriptor not changeable");
    assert_eq!(pages(&ch, false)[0][2], 0x04);
    let def = t.ok(&mode_sense6(true, 2, 0x3F, 0, 255), &[]);
    assert_eq!(pages(&def, false).len(), 4);
    assert_sense(
        &t.run(&mode_sense6(true, 3, 0x3F, 0, 255), &[]),
        0x05,
        0x39,
        0x00,
    );
    assert_invalid_cdb(&t.run(&mode_sense6(true, 0, 0x19, 0, 255), &[]), 2, Some(5));
    assert_invalid_cdb(&t.run(&mode_sense6(true, 0, 0x0A, 1, 255), &[]), 3, None);
}

fn mode_select6(len: u8, sp: bool) -> Vec<u8> {
    vec![0x15, 0x10 | u8::from(sp), 0, 0, len, 0]
}

fn mode_select10(len: u16) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

/// A MODE SELECT(6) parameter list carrying `page` (as read from MODE SENSE, PS cleared).
fn select_list(page: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0];
    let mut pg = page.to_vec();
    pg[0] &= 0x7F;
    p.extend(pg);
    p
}

#[test]
fn mode_select_write_cache() {
    let t = setup();
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
    t.run2(&[0, 0, 0, 0, 0, 0], &[]);
    let cur = t.ok(&mode_sense6(true, 0, 0x08, 0, 255), &[]);
    let mut page = pages(&cur, false)[0].clone();
    page[2] &= !0x04; // WCE off
    let list = select_list(&page);
    let r = t.run(&mode_select6(list.len() as u8, false), &list);
    assert_eq!(
        (r.status, r.data_out_len),
        (ScsiStatus::GOOD, list.len() as u32)
    );
    let now = t.ok(&mode_sense6(true, 0, 0x08, 0, 255), &[]);
    assert_eq!(pages(&now, false)[0][2] & 0x04, 0);
    // The other nexus is told.
    assert_sense(&t.run2(&[0, 0, 0, 0, 0, 0], &[]), 0x06, 0x2A, 0x01);
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
    // Write-through: every write flushes.
    let before = t.store.flushes.load(Ordering::SeqCst);
    t.ok(&cdb10(0x2A, 0, 0, 1), &[0; BS]);
    assert_eq!(t.store.flushes.load(Ordering::SeqCst), before + 1);
    // MODE SELECT(10) with a long block descriptor turns it back on.
    page[2] |= 0x04;
    let mut list = vec![0, 0, 0, 0, 1, 0, 0, 16];
    list.extend_from_slice(&(BLOCKS as u64).to_be_bytes());
    list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 0]);
    list.extend(page);
    t.ok(&mode_select10(list.len() as u16), &list);
    assert_eq!(
        pages(&t.ok(&mode_sense6(true, 0, 0x08, 0, 255), &[]), false)[0][2] & 0x04,
        0x04
    );
}

#[test]
fn mode_select_software_write_protect() {
    let t = setup();
    let cur = t.ok(&mode_sense6(true, 0, 0x0A, 0, 255), &[]);
    let mut page = pages(&cur, false)[0].clone();
    page[4] |= 0x08;
    let list = select_list(&page);
    t.ok(&mode_select6(list.len() as u8, false), &list);
    assert_sense(&t.run(&cdb10(0x2A, 0, 0, 1), &[0; BS]), 0x07, 0x27, 0x02);
    assert_eq!(
        t.ok(&mode_sense6(true, 0, 0x3F, 0, 255), &[])[2] & 0x80,
        0x80
    );
    t.ok(&cdb10(0x28, 0, 0, 1), &[]);
    // A LUN reset restores the default (SWP off).
    assert!(t.srv.lun_reset(lun_to_wire(0)));
    assert_sense(&t.run(&[0, 0, 0, 0, 0, 0], &[]), 0x06, 0x29, 0x03);
    t.ok(&cdb10(0x2A, 0, 0, 1), &[0; BS]);
}

#[test]
fn mode_select_errors() {
    let t = setup();
    let cur = t.ok(&mode_sense6(true, 0, 0x0A, 0, 255), &[]);
    let page = pages(&cur, false)[0].clone();
    // SP = 1, PF = 0.
    let list = select_list(&page);
    assert_invalid_cdb(
        &t.run(&mode_select6(list.len() as u8, true), &list),
        1,
        Some(0),
    );
    assert_invalid_cdb(
        &t.run(&[0x15, 0, 0, 0, list.len() as u8, 0], &list),
        1,
        Some(4),
    );
    // Length 0 is a no-op.
    t.ok(&mode_select6(0, false), &[]);
    // Changing a field that is not changeable (D_SENSE).
    let mut bad = page.clone();
    bad[2] |= 0x04;
    let list = select_list(&bad);
    let r = t.run(&mode_select6(list.len() as u8, false), &list);
    assert_sense(&r, 0x05, 0x26, 0x00);
    assert_eq!(field_pointer(&r), (false, 6, Some(2)));
    // Wrong page length.
    let mut bad = page.clone();
    bad[1] = 0x08;
    bad.truncate(10);
    let list = select_list(&bad);
    let r = t.run(&mode_select6(list.len() as u8, false), &list);
    assert_eq!(field_pointer(&r), (false, 5, None));
    // Unknown page, subpage format.
    let list = select_list(&[0x19, 2, 0, 0]);
    assert_sense(
        &t.run(&mode_select6(list.len() as u8, false), &list),
        0x05,
        0x26,
        0x00,
    );
    let list = select_list(&[0x4A, 0x01, 0, 10]);
    assert_sense(
        &t.run(&mode_select6(list.len() as u8, false), &list),
        0x05,
        0x26,
        0x00,
    );
    // Truncated page and truncated header.
    let list = select_list(&page);
    assert_sense(
        &t.run(&mode_select6(list.len() as u8 - 1, false), &list),
        0x05,
        0x1A,
        0x00,
    );
    assert_sense(&t.run(&mode_select6(3, false), &list), 0x05, 0x1A, 0x00);
    // Block descriptor with another block length.
    let mut list = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
    list.extend(&page);
    let r = t.run(&mode_select6(list.len() as u8, false), &list);
    assert_eq!(field_pointer(&r), (false, 9, None));
    // Nothing changed along the way.
    assert_eq!(t.ok(&mode_sense6(true, 0, 0x0A, 0, 255), &[]), cur);
}

// ---------------------------------------------------------------------------------------------
// REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS
// ---------------------------------------------------------------------------------------------

fn rsoc(b2: u8, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, 0x0C, b2, op, 0, 0, 0, 0, 0, 0, 0, 0];
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn parse_all(d: &[u8], rctd: bool) -> Vec<(u8, u16, bool, u16)> {
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, d.len());
    let step = if rctd { 20 } else { 8 };
    d[4..]
        .chunks(step)
        .map(|c| {
            assert_eq!(c[5] & 0x02 != 0, rctd, "CTDP");
            if rctd {
                assert_eq!(&c[8..10], &[0, 0x0A]);
            }
            (
                c[0],
                u16::from_be_bytes([c[2], c[3]]),
                c[5] & 1 != 0,
                u16::from_be_bytes([c[6], c[7]]),
            )
        })
        .collect()
}

#[test]
fn rsoc_all_commands() {
    let t = setup();
    let all = parse_all(&t.ok(&rsoc(0, 0, 0, 65535), &[]), false);
    assert!(all.contains(&(0x28, 0, false, 10)));
    assert!(all.contains(&(0x9E, 0x10, true, 16)));
    assert!(all.contains(&(0xA3, 0x0C, true, 12)));
    assert!(!all.iter().any(|d| d.0 == 0x42), "no UNMAP when not thin");
    for d in &all {
        assert!(d.2 || d.1 == 0);
    }
    let thin = setup_thin();
    let all_thin = parse_all(&thin.ok(&rsoc(0, 0, 0, 65535), &[]), false);
    // UNMAP and SANITIZE BLOCK ERASE are offered on thin LUs only.
    assert_eq!(all_thin.len(), all.len() + 2);
    let with_timeouts = parse_all(&t.ok(&rsoc(0x80, 0, 0, 65535), &[]), true);
    assert_eq!(with_timeouts.len(), all.len());
    assert_eq!(t.ok(&rsoc(0, 0, 0, 100), &[]).len(), 100);
}

#[test]
fn rsoc_one_command() {
    let t = setup();
    let d = t.ok(&rsoc(0x01, 0x28, 0, 65535), &[]);
    assert_eq!(&d[..4], &[0, 0x03, 0, 10]);
    assert_eq!(
        &d[4..],
        &[0x28, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07]
    );
    assert_eq!(d[5] & 0x18, 0x18, "DPO and FUA usable");
    let d = t.ok(&rsoc(0x81, 0x2A, 0, 65535), &[]);
    assert_eq!(d[1], 0x83);
    assert_eq!(d.len(), 4 + 10 + 12);
    // Unsupported: SUPPORT 001b.
    assert_eq!(t.ok(&rsoc(0x01, 0xEE, 0, 65535), &[]), vec![0, 1, 0, 0]);
    assert_eq!(t.ok(&rsoc(0x01, 0x42, 0, 65535), &[]), vec![0, 1, 0, 0]);
    // Service actions: 010b.
    let d = t.ok(&rsoc(0x02, 0x9E, 0x10, 65535), &[]);
    assert_eq!(&d[..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
    assert_eq!(t.ok(&rsoc(0x02, 0x9E, 0x1F, 65535), &[]), vec![0, 1, 0, 0]);
    // 011b works either way.
    assert_eq!(
        t.ok(&rsoc(0x03, 0x9E, 0x12, 65535), &[])[4..6],
        [0x9E, 0x12]
    );
    assert_eq!(t.ok(&rsoc(0x03, 0x28, 0x12, 65535), &[])[4], 0x28);
    // Wrong option for the opcode: invalid field, pointer at REPORTING OPTIONS (not byte 1,
    // which initiators read as "service action not supported").
    assert_invalid_cdb(&t.run(&rsoc(0x01, 0x9E, 0, 65535), &[]), 2, Some(2));
    assert_invalid_cdb(&t.run(&rsoc(0x02, 0x28, 0, 65535), &[]), 2, Some(2));
    assert_invalid_cdb(&t.run(&rsoc(0x04, 0x28, 0, 65535), &[]), 2, Some(2));
}

#[test]
fn rsoc_every_entry_round_trips() {
    let t = setup_thin();
    let all = parse_all(&t.ok(&rsoc(0, 0, 0, 65535), &[]), false);
    for (op, sa, servactv, len) in all {
        let opt = if servactv { 0x02 } else { 0x01 };
        let d = t.ok(&rsoc(opt, op, sa, 65535), &[]);
        assert_eq!(d[1] & 0x07, 0x03);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), len);
        assert_eq!(d[4], op);
        assert_eq!(d.len(), 4 + usize::from(len));
    }
}

#[test]
fn report_supported_tmfs() {
    let t = setup();
    let d = t.ok(&[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[]);
    assert_eq!(d, vec![0xDA, 0, 0, 0]);
    let d = t.ok(&[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]);
    assert_eq!(d.len(), 16);
    assert_eq!(d[3], 0x0C);
}

// ---------------------------------------------------------------------------------------------
// Reservations and resets
// ---------------------------------------------------------------------------------------------

#[test]
fn reserve_release() {
    let t = setup();
    let tur = [0u8, 0, 0, 0, 0, 0];
    t.ok(&[0x16, 0, 0, 0, 0, 0], &[]);
    t.ok(&[0x16, 0, 0, 0, 0, 0], &[]); // again, same nexus
    let r = t.run2(&[0x16, 0, 0, 0, 0, 0], &[]);
    assert_eq!(
        (r.status, r.sense.len()),
        (ScsiStatus::RESERVATION_CONFLICT, 0)
    );
    assert_eq!(t.run2(&tur, &[]).status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(
        t.run2(&mode_sense6(false, 0, 0x3F, 0, 255), &[]).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    assert_eq!(
        t.run2(&cdb10(0x2A, 0, 0, 1), &[0; BS]).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    // Allowed: INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE (a no-op).
    assert_eq!(t.run2(&inquiry(false, 0, 96), &[]).status, ScsiStatus::GOOD);
    assert_eq!(t.run2(&report_luns(0, 64), &[]).status, ScsiStatus::GOOD);
    assert_eq!(
        t.run2(&[0x03, 0, 0, 0, 18, 0], &[]).status,
        ScsiStatus::GOOD
    );
    assert_eq!(t.run2(&[0x17, 0, 0, 0, 0, 0], &[]).status, ScsiStatus::GOOD);
    assert_eq!(t.run2(&tur, &[]).status, ScsiStatus::RESERVATION_CONFLICT);
    // The holder is unaffected.
    t.ok(&mode_sense6(false, 0, 0x3F, 0, 255), &[]);
    t.ok(&[0x17, 0, 0, 0, 0, 0], &[]);
    assert_eq!(t.run2(&tur, &[]).status, ScsiStatus::GOOD);
    // RESERVE(10) / RELEASE(10).
    t.ok(&[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(
        t.run2(&[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    t.ok(&[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    // Third party / extents are refused.
    assert_invalid_cdb(&t.run(&[0x16, 0x10, 0, 0, 0, 0], &[]), 1, Some(4));
    assert_invalid_cdb(
        &t.run(&[0x56, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
        1,
        Some(1),
    );
}

#[test]
fn reservation_released_by_nexus_loss_and_resets() {
    let t = setup();
    let tur = [0u8, 0, 0, 0, 0, 0];
    t.ok(&[0x16, 0, 0, 0, 0, 0], &[]);
    t.srv.nexus_lost(&t.n);
    assert_eq!(t.run2(&tur, &[]).status, ScsiStatus::GOOD);

    t.ok(&[0x16, 0, 0, 0, 0, 0], &[]);
    assert!(t.srv.lun_reset(lun_to_wire(0)));
    assert!(!t.srv.lun_reset(lun_to_wire(9)));
    // Both nexuses see BUS DEVICE RESET FUNCTION OCCURRED, then the reservation is gone.
    assert_sense(&t.run2(&tur, &[]), 0x06, 0x29, 0x03);
    assert_sense(&t.run(&tur, &[]), 0x06, 0x29, 0x03);
    assert_eq!(t.run2(&[0x16, 0, 0, 0, 0, 0], &[]).status, ScsiStatus::GOOD);

    t.srv.target_reset();
    assert_sense(&t.run(&tur, &[]), 0x06, 0x29, 0x00);
    assert_eq!(t.run(&[0x16, 0, 0, 0, 0, 0], &[]).status, ScsiStatus::GOOD);
}

#[test]
fn start_stop_and_prevent_allow() {
    let t = setup();
    t.ok(&[0x1B, 0x01, 0, 0, 0x01, 0], &[]);
    t.ok(&[0x1B, 0, 0, 0, 0x02, 0], &[]);
    t.ok(&[0x1E, 0, 0, 0, 1, 0], &[]);
    t.ok(&[0x1E, 0, 0, 0, 0, 0], &[]);
    assert_invalid_cdb(&t.run(&[0x1E, 0, 0, 0, 4, 0], &[]), 4, Some(2));
}

// ---------------------------------------------------------------------------------------------
// Robustness: arbitrary CDBs and data never panic
// ---------------------------------------------------------------------------------------------

#[test]
fn arbitrary_cdbs_never_panic() {
    let t = setup_thin();
    let mut seed: u64 = 0x1234_5678_9abc_def0;
    let mut next = move || {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let opcodes: Vec<u8> = crate::opcodes::TABLE.iter().map(|d| d.opcode).collect();
    for i in 0..20_000 {
        let len = (next() % 20) as usize;
        let mut cdb: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if !cdb.is_empty() && i % 4 != 0 {
            cdb[0] = opcodes[(next() as usize) % opcodes.len()];
            // Keep lengths small enough not to allocate much, most of the time.
            if i % 3 == 0 {
                for b in cdb.iter_mut().skip(2) {
                    *b &= 0x03;
                }
            }
        }
        let dlen = (next() % 1200) as usize;
        let data: Vec<u8> = (0..dlen).map(|_| next() as u8).collect();
        let r = t.run(&cdb, &data);
        match r.status {
            ScsiStatus::GOOD => assert!(r.sense.is_empty()),
            ScsiStatus::CHECK_CONDITION => assert_eq!(r.sense.len(), 18),
            ScsiStatus::RESERVATION_CONFLICT => {}
            s => panic!("unexpected status {s:?}"),
        }
    }
}

#[test]
fn quick_commands_are_small_page_cache_io_and_memory_answers() {
    let ram = Arc::new(backstore::RamBackstore::new(1 << 20));
    let srv = DeviceServer::new();
    srv.add_lun(0, Arc::new(LogicalUnit::new(cfg_quiet(), ram).unwrap()))
        .unwrap();
    let l0 = lun_to_wire(0);
    // 4 KiB READ(10)/WRITE(16) on RAM: quick. FUA, 1 MiB, flushes and UNMAP: not.
    assert!(srv.is_quick(l0, &cdb10(0x28, 0, 0, 8)));
    assert!(srv.is_quick(l0, &cdb16(0x8a, 0, 0, 8)));
    assert!(!srv.is_quick(l0, &cdb10(0x2a, 0x08, 0, 8)));
    assert!(!srv.is_quick(l0, &cdb10(0x28, 0, 0, 2048)));
    assert!(!srv.is_quick(l0, &cdb10(0x35, 0, 0, 0)));
    assert!(!srv.is_quick(l0, &cdb10(0x42, 0, 0, 24)));
    assert!(srv.is_quick(l0, &inquiry(false, 0, 96)));
    // A LUN that does not exist is answered from memory; an empty CDB too.
    assert!(srv.is_quick(lun_to_wire(9), &cdb10(0x28, 0, 0, 8)));
    assert!(srv.is_quick(l0, &[]));
    // A backstore that is neither RAM nor a file: I/O always goes to the blocking pool.
    let t = setup();
    assert!(!t.srv.is_quick(l0, &cdb10(0x28, 0, 0, 8)));
}

/// The target device (SAM-5 §4.6.1): two initiators see different LUN maps of it; a target
/// reset through one reaches the logical unit only the other sees, and the device keeps its
/// ports and knows each LU's id.
#[test]
fn target_wide_effects_reach_every_logical_unit_of_the_device() {
    let device = crate::TargetDevice::new("iqn.2024-01.org.ferrite:test");
    let p = device.port(1, 1);
    assert!(Arc::ptr_eq(&p, &device.port(1, 1)), "one object per port");
    let mk = || {
        Arc::new(
            LogicalUnit::new(
                LuConfig {
                    serial: "S".into(),
                    ..LuConfig::default()
                },
                MemStore::new(BLOCKS * BS, false),
            )
            .unwrap(),
        )
    };
    let (lu0, lu1) = (mk(), mk());
    device.set_lus([(0, lu0.clone()), (1, lu1.clone())].into_iter().collect());
    assert_eq!(device.id_of(&lu1), Some(1));
    // A sees target LUN 0 as its LUN 0; B sees target LUN 1 as its LUN 0.
    let a = DeviceServer::on(device.clone());
    a.add_lun(0, lu0).unwrap();
    let b = DeviceServer::on(device.clone());
    b.add_lun(0, lu1).unwrap();
    let (na, nb) = (nexus_on(&p, 1), nexus_on(&p, 2));
    // Both collect their power-on unit attention.
    for (srv, n) in [(&a, &na), (&b, &nb)] {
        let r = exec(srv, n, 0, &[0; 6], &[]);
        assert_sense(&r, 0x06, 0x29, 0x00);
        assert_eq!(exec(srv, n, 0, &[0; 6], &[]).status, ScsiStatus::GOOD);
    }
    // B's target reset reaches A's logical unit, which B's map does not show.
    b.target_reset();
    let r = exec(&a, &na, 0, &[0; 6], &[]);
    assert_sense(&r, 0x06, 0x29, 0x00);
    // SPC-2 RESERVE by A, then A's nexus is lost through B's map: the reservation goes.
    assert_eq!(
        exec(&a, &na, 0, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::GOOD
    );
    let nb2 = nexus_on(&p, 3);
    let _ = exec(&a, &nb2, 0, &[0; 6], &[]);
    let r = exec(&a, &nb2, 0, &cdb10(0x28, 0, 0, 1), &[]);
    assert_eq!(r.status, ScsiStatus::RESERVATION_CONFLICT);
    b.nexus_lost(&na);
    assert_eq!(
        exec(&a, &nb2, 0, &cdb10(0x28, 0, 0, 1), &[]).status,
        ScsiStatus::GOOD
    );
    // Ports the configuration no longer has go.
    device.port(2, 2);
    device.retain_ports(&[2]);
    assert_eq!(device.ports().len(), 1);
    assert_eq!(device.ports()[0].relative_port_id, 2);
}
