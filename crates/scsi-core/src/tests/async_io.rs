//! The asynchronous READ/WRITE path (`DeviceServer::execute_async`) against a store whose
//! operations complete on other threads: the same answers as `execute`, byte for byte, for
//! data, for every check that comes before the data moves, and for FUA.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use backstore::{AsyncBackstore, Backstore, Done, RamBackstore};

use super::{cdb10, cdb16, nexus_on, pattern, port};
use crate::*;

/// A RAM store whose asynchronous operations complete on a thread of their own.
#[derive(Debug)]
struct Threaded {
    ram: RamBackstore,
    reads: AtomicUsize,
    writes: AtomicUsize,
    flushes: AtomicUsize,
}

impl Backstore for Threaded {
    fn kind(&self) -> &'static str {
        "ram"
    }
    fn size(&self) -> u64 {
        self.ram.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.ram.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.ram.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.ram.unmap(offset, len)
    }
    fn supports_unmap(&self) -> bool {
        true
    }
    fn as_async(&self) -> Option<&dyn AsyncBackstore> {
        Some(self)
    }
}

impl AsyncBackstore for Threaded {
    fn read_async(&self, offset: u64, len: usize, done: Done<Vec<u8>>) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let r = self.ram.read_vec(len, offset);
        std::thread::spawn(move || done(r));
    }
    fn write_async(&self, data: Vec<u8>, offset: u64, done: Done<Vec<u8>>) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let r = self.ram.write_at(&data, offset).map(|()| data);
        std::thread::spawn(move || done(r));
    }
    fn flush_async(&self, done: Done<()>) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || done(Ok(())));
    }
}

/// The smallest executor: poll, park until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn setup() -> (DeviceServer, Arc<Threaded>, Nexus, Nexus) {
    let store = Arc::new(Threaded {
        ram: RamBackstore::new(2048 * 512),
        reads: AtomicUsize::new(0),
        writes: AtomicUsize::new(0),
        flushes: AtomicUsize::new(0),
    });
    let cfg = LuConfig {
        report_power_on_ua: false,
        ..LuConfig::default()
    };
    let srv = DeviceServer::new();
    srv.add_lun(0, Arc::new(LogicalUnit::new(cfg, store.clone()).unwrap()))
        .unwrap();
    let p = port();
    (srv, store, nexus_on(&p, 1), nexus_on(&p, 2))
}

fn req<'a>(n: &'a Nexus, cdb: &'a [u8], data: &'a [u8]) -> ScsiRequest<'a> {
    ScsiRequest {
        nexus: n,
        lun: lun_to_wire(0),
        cdb,
        data_out: data,
        expected_data_in: 1 << 20,
        attr: TaskAttr::Simple,
        cancel: None,
    }
}

#[test]
fn reads_and_writes_move_through_the_asynchronous_interface() {
    let (srv, store, n, _) = setup();
    let data = pattern(8 * 512, 7);
    let w = cdb10(0x2a, 0, 100, 8);
    assert!(srv.is_async(lun_to_wire(0), &w));
    let r = block_on(srv.execute_async(&req(&n, &w, &data)));
    assert_eq!(r.status, ScsiStatus::GOOD, "{:02x?}", r.sense);
    assert_eq!(r.data_out_len, 8 * 512);
    let rd = cdb16(0x88, 0, 100, 8);
    let r = block_on(srv.execute_async(&req(&n, &rd, &[])));
    assert_eq!(r.data_in, data);
    assert_eq!(srv.execute(&req(&n, &rd, &[])).data_in, data);
    assert_eq!(store.reads.load(Ordering::SeqCst), 1);
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);
    // WCE = 1 by default: no flush without FUA; FUA flushes (SBC-4 §5.43).
    assert_eq!(store.flushes.load(Ordering::SeqCst), 0);
    let fua = cdb10(0x2a, 0x08, 0, 8);
    let r = block_on(srv.execute_async(&req(&n, &fua, &data)));
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(store.flushes.load(Ordering::SeqCst), 1);
    // SYNCHRONIZE CACHE(10) and (16) flush asynchronously; out of range is refused first.
    for cdb in [cdb10(0x35, 0, 0, 0), cdb16(0x91, 0, 0, 0)] {
        assert!(srv.is_async(lun_to_wire(0), &cdb));
        let r = block_on(srv.execute_async(&req(&n, &cdb, &[])));
        assert_eq!(r.status, ScsiStatus::GOOD);
    }
    assert_eq!(store.flushes.load(Ordering::SeqCst), 3);
    let past = cdb10(0x35, 0, 2048, 1);
    let r = block_on(srv.execute_async(&req(&n, &past, &[])));
    assert_eq!(r, srv.execute(&req(&n, &past, &[])));
    assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(store.flushes.load(Ordering::SeqCst), 3);
    // Other commands are not asynchronous, and run synchronously inside the future.
    let tur = [0u8; 6];
    assert!(!srv.is_async(lun_to_wire(0), &tur));
    let r = block_on(srv.execute_async(&req(&n, &tur, &[])));
    assert_eq!(r.status, ScsiStatus::GOOD);
}

#[test]
fn the_checks_before_the_transfer_answer_as_the_synchronous_path_does() {
    let (srv, store, n, n2) = setup();
    let data = pattern(8 * 512, 1);
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (cdb10(0x28, 0, 2047, 2), vec![]), // LBA out of range
        (cdb10(0x2a, 0, 2047, 2), data[..1024].to_vec()), // write out of range
        (cdb10(0x28, 0, 0, 0), vec![]),    // nothing to transfer
        (cdb10(0x2a, 0, 0, 1), data[..100].to_vec()), // a partial block of data-out
        (cdb10(0x28, 0x01, 0, 1), vec![]), // reserved bit
        (cdb16(0x88, 0, 0, 1 << 24), vec![]), // above MAXIMUM TRANSFER LENGTH
        (vec![0x28, 0, 0, 0], vec![]),     // CDB too short
    ];
    for (cdb, out) in &cases {
        let sync = srv.execute(&req(&n, cdb, out));
        let asy = block_on(srv.execute_async(&req(&n, cdb, out)));
        assert_eq!(asy, sync, "cdb {cdb:02x?}");
    }
    assert_eq!(store.writes.load(Ordering::SeqCst), 0);
    // Another nexus's SPC-2 reservation: RESERVATION CONFLICT before anything moves.
    let reserve = [0x16u8, 0, 0, 0, 0, 0];
    assert_eq!(
        srv.execute(&req(&n2, &reserve, &[])).status,
        ScsiStatus::GOOD
    );
    let w = cdb10(0x2a, 0, 0, 8);
    let r = block_on(srv.execute_async(&req(&n, &w, &data)));
    assert_eq!(r.status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(store.writes.load(Ordering::SeqCst), 0);
    // A read-only view: DATA PROTECT.
    let release = [0x17u8, 0, 0, 0, 0, 0];
    srv.execute(&req(&n2, &release, &[]));
    srv.set_read_only(0, true);
    let sync = srv.execute(&req(&n, &w, &data));
    assert_eq!(block_on(srv.execute_async(&req(&n, &w, &data))), sync);
    assert_eq!(sync.status, ScsiStatus::CHECK_CONDITION);
}

#[test]
fn overlapping_async_writes_wait_for_each_other() {
    let (srv, _store, n, _) = setup();
    let srv = Arc::new(srv);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let srv = srv.clone();
            let n = n.clone();
            s.spawn(move || {
                for _ in 0..50 {
                    let data = vec![t + 1; 64 * 512];
                    let w = cdb10(0x2a, 0, 0, 64);
                    let r = block_on(srv.execute_async(&req(&n, &w, &data)));
                    assert_eq!(r.status, ScsiStatus::GOOD);
                    let rd = cdb10(0x28, 0, 0, 64);
                    let got = block_on(srv.execute_async(&req(&n, &rd, &[]))).data_in;
                    // Never torn: one writer's bytes throughout.
                    assert!(got.iter().all(|&b| b == got[0]), "torn read");
                }
            });
        }
    });
}

/// Random READ/WRITE/SYNCHRONIZE CACHE CDBs (random bytes after the opcode, data-out of random
/// length) through `execute` on one device server and `execute_async` on another: every answer
/// and the final medium are the same.
#[test]
fn random_transfers_answer_alike_on_both_paths() {
    let (sync_srv, sync_store, n, _) = setup();
    let (async_srv, async_store, _, _) = setup();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ops = [0x08u8, 0x28, 0xa8, 0x88, 0x0a, 0x2a, 0xaa, 0x8a, 0x35, 0x91];
    for round in 0..3000 {
        let op = ops[(next() % ops.len() as u64) as usize];
        let len = match op >> 5 {
            0 => 6,
            1 => 10,
            5 => 12,
            _ => 16,
        };
        let mut cdb = vec![0u8; len];
        cdb[0] = op;
        for b in &mut cdb[1..] {
            // Mostly zero bytes, so that many commands pass the checks and move data.
            let r = next();
            *b = if r % 4 == 0 { r as u8 } else { 0 };
        }
        // Keep most LBAs and lengths inside the 2048-block LU.
        if next() % 2 == 0 && len >= 10 {
            let lba_at = if len == 16 { 9 } else { 5 };
            cdb[lba_at] = (next() % 256) as u8;
            let len_at = len - 2;
            cdb[len_at] = (next() % 16) as u8;
        }
        let data_len = match next() % 4 {
            0 => 0,
            1 => (next() % 16) as usize * 512,
            2 => (next() % 8192) as usize,
            _ => u32::from(cdb[len - 2]) as usize * 512,
        };
        let data: Vec<u8> = (0..data_len).map(|i| (i as u8) ^ (round as u8)).collect();
        let a = sync_srv.execute(&req(&n, &cdb, &data));
        let b = block_on(async_srv.execute_async(&req(&n, &cdb, &data)));
        assert_eq!(a, b, "round {round}: cdb {cdb:02x?}, {data_len} bytes out");
    }
    let size = sync_store.size() as usize;
    assert_eq!(
        sync_store.read_vec(size, 0).unwrap(),
        async_store.read_vec(size, 0).unwrap()
    );
    assert!(async_store.writes.load(Ordering::SeqCst) > 0);
    assert!(async_store.reads.load(Ordering::SeqCst) > 0);
}
