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
use iscsi_proto::{ConnEvent, Connection, Directory, Payload, TaskOutcome};
use iscsi_wire::frame::{encode_bhs_lengths, RawPdu};
use iscsi_wire::header::{Header, LoginRequest, ScsiCommand};
use iscsi_wire::{text, Stage};

const TARGET: &str = "iqn.2026-11.io.ferrite:bench";
const READ_LEN: usize = 1 << 20;

/// One target, reachable by anyone.
struct Dir;
impl Directory for Dir {
    fn tpg_tag(&self) -> u16 {
        1
    }
    fn target(&self, name: &str, _initiator: &str) -> Option<Option<String>> {
        (name == TARGET).then_some(None)
    }
    fn send_targets(&self, _i: &str, _f: Option<&str>) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
}

fn raw(h: &Header, data: &[u8]) -> RawPdu {
    let mut bhs = h.emit();
    encode_bhs_lengths(&mut bhs, 0, data.len());
    RawPdu {
        bhs,
        ahs: Vec::new(),
        data: data.to_vec(),
    }
}

/// A connection in full feature phase, plus the initiator-side counters.
struct Session {
    conn: Connection,
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
        let mrdsl = mrdsl.to_string();
        let keys = [
            ("InitiatorName", "iqn.2026-11.io.ferrite:micro"),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
            ("HeaderDigest", digest),
            ("DataDigest", digest),
            ("MaxRecvDataSegmentLength", mrdsl.as_str()),
            ("MaxBurstLength", "1048576"),
        ];
        let req = Header::LoginRequest(LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: 0x8000_0000_0001,
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        });
        conn.handle_pdu(now, raw(&req, &text::encode(&keys)), &Dir);
        let result = loop {
            match conn.poll_event() {
                Some(ConnEvent::LoginComplete(r)) => break r,
                Some(_) => {}
                None => panic!("login did not complete"),
            }
        };
        conn.accept_login(&result, 1);
        while conn.poll_transmit().is_some() {}
        while conn.poll_event().is_some() {}
        assert!(conn.is_full_feature(), "login failed");
        Session {
            conn,
            now,
            cmd_sn: result.exp_cmd_sn,
            itt: 0x100,
            spare: Some(vec![0x5a; READ_LEN]),
            batch: Vec::with_capacity(READ_LEN + (64 << 10)),
        }
    }

    /// One READ(10) of 1 MiB from command to the last Data-In; returns the PDUs sent.
    fn read_1mib(&mut self, encode: bool) -> usize {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x28;
        cdb[7..9].copy_from_slice(&((READ_LEN / 512) as u16).to_be_bytes());
        let cmd = Header::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: true,
            read: true,
            write: false,
            attr: 1,
            lun: 0,
            itt: self.itt,
            expected_len: READ_LEN as u32,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            cdb,
        });
        self.itt = self.itt.wrapping_add(1) & 0x7fff_ffff;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.conn.handle_pdu(self.now, raw(&cmd, &[]), &Dir);
        let id = match self.conn.poll_event() {
            Some(ConnEvent::Execute(task)) => task.id,
            other => panic!("expected Execute, got {other:?}"),
        };
        let data_in = self
            .spare
            .take()
            .unwrap_or_else(|| vec![0x5a; READ_LEN]);
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
            self.spare = Arc::try_unwrap(buf).ok().map(iscsi_proto::budget::SharedBuf::into_inner);
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
