//! Data-In segmentation: the connection engine turning one completed 1 MiB READ into Data-In
//! PDUs (RFC 7143 §11.7), as the daemon drives it — a SCSI Command in, `Execute` out, the device
//! server's buffer back through `complete_task`, then `poll_transmit` until empty. The `encode`
//! variants also frame every PDU into one batch buffer, which is what the daemon's connection
//! task hands to its writer.
//!
//! The engine's work depends on the initiator's MaxRecvDataSegmentLength (the PDU size) and on
//! digests, so each is measured: 8 KiB (the RFC 7143 default, 128 PDUs per MiB) and 256 KiB
//! (libiscsi's and Linux open-iscsi's usual value, 4 PDUs per MiB).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iscsi_proto::conn::ConnConfig;
use iscsi_proto::{ConnEvent, Connection, Payload, TaskOutcome};
use testkit::engine::{self, Dir, LoginOpts};
use testkit::pdu::{self, Request};

const READ_LEN: usize = 1 << 20;

/// A connection in full feature phase, plus the initiator-side counters.
struct Session {
    conn: Connection,
    dir: Dir,
    now: Instant,
    cmd_sn: u32,
    itt: u32,
    /// A 1 MiB device-server buffer, recovered from the last Data-In after each read so the
    /// measurement is not an allocator benchmark.
    spare: Option<Vec<u8>>,
    batch: Vec<u8>,
}

impl Session {
    /// Log in with a single Login Request (operational stage straight to full feature phase).
    fn login(mrdsl: u32, digests: bool) -> Session {
        let now = Instant::now();
        let mut conn = Connection::new(ConnConfig::default(), now, 1);
        let digest = if digests { "CRC32C" } else { "None" };
        let opts = LoginOpts::default()
            .key("SessionType", "Normal")
            .key("HeaderDigest", digest)
            .key("DataDigest", digest)
            .key("MaxRecvDataSegmentLength", &mrdsl.to_string())
            .key("MaxBurstLength", "1048576");
        let dir = Dir::new(engine::TARGET);
        let result = engine::login(&mut conn, now, &dir, &opts, 1);
        Session {
            conn,
            dir,
            now,
            cmd_sn: result.exp_cmd_sn,
            itt: 0x100,
            spare: Some(vec![0x5a; READ_LEN]),
            batch: Vec::with_capacity(READ_LEN + (64 << 10)),
        }
    }

    /// One READ(10) of 1 MiB from command to the last Data-In; returns the PDUs sent.
    fn read_1mib(&mut self, encode: bool) -> usize {
        let blocks = (READ_LEN / 512) as u16;
        let cmd = pdu::read10(self.itt, self.cmd_sn, 0, blocks, 512);
        self.itt = self.itt.wrapping_add(1) & 0x7fff_ffff;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.conn.handle_pdu(self.now, cmd.raw(&[]), &self.dir);
        let id = match self.conn.poll_event() {
            Some(ConnEvent::Execute(task)) => task.id,
            other => panic!("expected Execute, got {other:?}"),
        };
        let data_in = self.spare.take().unwrap_or_else(|| vec![0x5a; READ_LEN]);
        self.conn.complete_task(
            id,
            TaskOutcome {
                status: 0,
                sense: Vec::new(),
                data_in,
                data_out_len: 0,
            },
        );
        self.batch.clear();
        let mut pdus = 0;
        let mut last = None;
        while let Some(pdu) = self.conn.poll_transmit() {
            pdus += 1;
            if encode {
                pdu.encode(&mut self.batch);
            }
            last = Some(pdu);
        }
        // Every other Data-In is gone, so the last one holds the only reference to the buffer.
        if let Some(Payload::Shared { buf, .. }) = last.map(|p| p.data) {
            self.spare = Arc::try_unwrap(buf)
                .ok()
                .map(iscsi_proto::budget::SharedBuf::into_inner);
        }
        pdus
    }
}

fn segmentation(c: &mut Criterion) {
    let mut g = c.benchmark_group("datain_1mib");
    for (mrdsl, digests, encode) in [
        (8192, false, false),
        (262144, false, false),
        (8192, false, true),
        (262144, false, true),
        (262144, true, true),
    ] {
        let mut s = Session::login(mrdsl, digests);
        let pdus = s.read_1mib(encode);
        let name = format!(
            "{}/mrdsl_{}k{}",
            if encode { "segment+encode" } else { "segment" },
            mrdsl / 1024,
            if digests { "/crc32c" } else { "" }
        );
        eprintln!("datain_1mib/{name}: {pdus} PDUs per 1 MiB READ");
        // Segmenting costs per PDU; framing costs per byte (it copies the data).
        g.throughput(if encode {
            Throughput::Bytes(READ_LEN as u64)
        } else {
            Throughput::Elements(pdus as u64)
        });
        g.bench_function(name, |b| b.iter(|| black_box(s.read_1mib(encode))));
    }
    g.finish();
}

criterion_group!(benches, segmentation);
criterion_main!(benches);
