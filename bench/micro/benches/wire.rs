//! The wire format's per-PDU work: BHS parse and emit, CRC32C digests, and framing (decode of
//! received bytes, encode of outgoing PDUs).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iscsi_wire::frame::{self, Decoder};
use iscsi_wire::header::{DataIn, DataOut, Header, ScsiCommand, ScsiResponse};
use iscsi_wire::{digest, BHS_LEN, RESERVED_TAG};

/// A READ(10) of 8 blocks at LBA 0x1234, as an initiator sends it.
fn read10_command() -> Header {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&0x1234u32.to_be_bytes());
    cdb[7..9].copy_from_slice(&8u16.to_be_bytes());
    Header::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read: true,
        write: false,
        attr: 1,
        lun: 0,
        itt: 0x10,
        expected_len: 4096,
        cmd_sn: 77,
        exp_stat_sn: 12,
        cdb,
    })
}

/// The last Data-In of a read, carrying status (phase collapse).
fn data_in() -> Header {
    Header::DataIn(DataIn {
        final_bit: true,
        has_status: true,
        lun: 0,
        itt: 0x10,
        ttt: RESERVED_TAG,
        stat_sn: 12,
        exp_cmd_sn: 78,
        max_cmd_sn: 205,
        data_sn: 0,
        buffer_offset: 0,
        ..DataIn::default()
    })
}

fn scsi_response() -> Header {
    Header::ScsiResponse(ScsiResponse {
        itt: 0x11,
        stat_sn: 13,
        exp_cmd_sn: 79,
        max_cmd_sn: 206,
        ..ScsiResponse::default()
    })
}

fn data_out() -> Header {
    Header::DataOut(DataOut {
        final_bit: true,
        lun: 0,
        itt: 0x12,
        ttt: 3,
        exp_stat_sn: 13,
        data_sn: 0,
        buffer_offset: 0,
    })
}

fn header(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    for (name, h) in [
        ("scsi_command", read10_command()),
        ("data_in", data_in()),
        ("scsi_response", scsi_response()),
    ] {
        let bhs: [u8; BHS_LEN] = h.emit();
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Header::parse(black_box(&bhs)))
        });
        g.bench_function(format!("emit/{name}"), |b| b.iter(|| black_box(&h).emit()));
    }
    g.finish();
}

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for len in [BHS_LEN, 8 << 10, 256 << 10] {
        let buf: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("{len}B"), |b| {
            b.iter(|| digest::crc32c(black_box(&buf)))
        });
    }
    g.finish();
}

/// Bytes of one framed PDU as they arrive from the socket.
fn framed(h: &Header, data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(h, &[], data, hd, dd, &mut out);
    out
}

fn decoder(hd: bool, dd: bool) -> Decoder {
    Decoder {
        header_digest: hd,
        data_digest: dd,
        max_data: 256 << 10,
    }
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let cmd = read10_command();
    let payload: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    for (hd, dd) in [(false, false), (true, true)] {
        let tag = if hd { "crc32c" } else { "nodigest" };

        // A command PDU without data: the common case for reads.
        let bytes = framed(&cmd, &[], hd, dd);
        let dec = decoder(hd, dd);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("decode/scsi_command/{tag}"), |b| {
            b.iter(|| dec.decode(black_box(&bytes)))
        });

        // A Data-Out with 8 KiB of data (the decoder copies the segment out). The copy's cost
        // can depend on addresses: on the AMD EPYC this was first run on (glibc 2.36), memcpy's
        // `rep movsb` took ~30x longer when the destination lay 1-31 bytes past the source
        // modulo 4 KiB, which is where the allocator happened to put the `nodigest` case.
        let bytes = framed(&data_out(), &payload, hd, dd);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("decode/data_out_8k/{tag}"), |b| {
            b.iter(|| dec.decode(black_box(&bytes)))
        });

        // The daemon's writer path: encode one Data-In with 8 KiB into a reused batch buffer.
        let h = data_in();
        let mut out = Vec::with_capacity(16 << 10);
        g.bench_function(format!("encode/data_in_8k/{tag}"), |b| {
            b.iter(|| {
                out.clear();
                frame::encode(black_box(&h), &[], black_box(&payload), hd, dd, &mut out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, header, crc32c, framing);
criterion_main!(benches);
