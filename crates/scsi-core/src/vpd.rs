//! Standard INQUIRY data and vital product data pages (SPC-4 §6.6.2, §7.8; SBC-4 §6.6).

use crate::cdb::{bad_cdb, Fail};
use crate::lu::{limits, LogicalUnit, LuConfig};
use crate::TargetPort;

/// VPD page codes we implement.
pub mod page {
    pub const SUPPORTED: u8 = 0x00;
    pub const UNIT_SERIAL: u8 = 0x80;
    pub const DEVICE_ID: u8 = 0x83;
    pub const BLOCK_LIMITS: u8 = 0xB0;
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
}

/// Version descriptors (SPC-4 §6.6.2 table 146): SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
/// SBC-3 rather than SBC-4: initiators (libiscsi among them) key SBC-3 features on 04C0h.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960];

/// PERIPHERAL QUALIFIER 000b, PERIPHERAL DEVICE TYPE 00h (direct access block device).
pub const PERIPHERAL_DISK: u8 = 0x00;
/// PERIPHERAL QUALIFIER 011b, type 1Fh: no logical unit at this LUN (SPC-4 §6.6.2).
pub const PERIPHERAL_NONE: u8 = 0x7F;

/// Copy `s` into `dst`, padding with spaces (SPC-4 §4.3.1 ASCII fields are left-aligned).
fn put_ascii(dst: &mut [u8], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

/// Standard INQUIRY data, 96 bytes (SPC-4 §6.6.2).
pub fn standard(byte0: u8, cfg: &LuConfig) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    let lu_here = byte0 == PERIPHERAL_DISK;
    d[0] = byte0;
    // RMB: removable medium (SBC-4 §4.x, START STOP UNIT loads and ejects it).
    d[1] = if lu_here && cfg.removable { 0x80 } else { 0x00 };
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x12; // HISUP (bit 4) + RESPONSE DATA FORMAT 2
    d[4] = (d.len() - 5) as u8; // ADDITIONAL LENGTH
                                // SCCS ACC PROTECT=0; TPGS = 11b: asymmetric logical unit access, implicit and explicit
                                // (SPC-4 §5.16, REPORT / SET TARGET PORT GROUPS); 3PC: this LU has a copy manager
                                // (EXTENDED COPY, SPC-4 §6.4).
    d[5] = if lu_here { 0x30 | 0x08 } else { 0x00 };
    d[6] = 0x00; // ENCSERV MULTIP
    d[7] = 0x02; // CMDQUE
    put_ascii(&mut d[8..16], &cfg.vendor);
    put_ascii(&mut d[16..32], &cfg.product);
    put_ascii(&mut d[32..36], &cfg.revision);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// The VPD pages this LU offers, ascending (SPC-4 §7.8.16).
fn supported_pages(lu: &LogicalUnit) -> Vec<u8> {
    let mut p = vec![
        page::SUPPORTED,
        page::UNIT_SERIAL,
        page::DEVICE_ID,
        page::BLOCK_LIMITS,
        page::BLOCK_DEVICE_CHARACTERISTICS,
    ];
    if lu.thin() {
        p.push(page::LOGICAL_BLOCK_PROVISIONING);
    }
    p
}

/// One designation descriptor (SPC-4 §7.8.6.1).
fn designator(out: &mut Vec<u8>, proto_code_set: u8, piv_assoc_type: u8, id: &[u8]) {
    out.push(proto_code_set);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

/// SCSI name string (SPC-4 §7.8.6.11): UTF-8, null terminated, padded with nulls to a multiple
/// of four bytes, at most 256 bytes.
fn name_string(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.as_bytes().iter().copied().take(252).collect();
    v.push(0);
    while v.len() & 3 != 0 {
        v.push(0);
    }
    v
}

/// The iSCSI target port name: "<target name>,t,0x<TPGT>" (RFC 7143 §4.2.7.1 / SPC-4 §7.8.6.11).
pub fn target_port_name(port: &TargetPort) -> String {
    format!("{},t,0x{:04x}", port.target_name, port.tpg_tag)
}

/// Device Identification page body (SPC-4 §7.8.6); `group` is the ALUA target port group of
/// `port`.
fn device_id(lu: &LogicalUnit, port: &TargetPort, group: u16) -> Vec<u8> {
    const ISCSI: u8 = 0x5 << 4;
    const BINARY: u8 = 0x1;
    const ASCII: u8 = 0x2;
    const UTF8: u8 = 0x3;
    const PIV: u8 = 0x80;
    const ASSOC_LU: u8 = 0x00;
    const ASSOC_PORT: u8 = 0x10;
    const ASSOC_DEVICE: u8 = 0x20;
    let mut d = Vec::new();
    // Logical unit: NAA IEEE Registered.
    designator(
        &mut d,
        BINARY,
        ASSOC_LU | 0x3,
        &lu.config().naa_id.to_be_bytes(),
    );
    // Logical unit: T10 vendor ID based (vendor padded to 8, then the unit serial number).
    let mut t10 = vec![b' '; 8];
    put_ascii(&mut t10, &lu.config().vendor);
    t10.extend(lu.serial().bytes().take(247));
    designator(&mut d, ASCII, ASSOC_LU | 0x1, &t10);
    // Target port: relative target port identifier.
    let mut rtpi = vec![0, 0];
    rtpi.extend_from_slice(&port.relative_port_id.to_be_bytes());
    designator(&mut d, ISCSI | BINARY, PIV | ASSOC_PORT | 0x4, &rtpi);
    // Target port group (SPC-4 §7.8.6.7, type 5): the ALUA group the port belongs to.
    let mut tpg = vec![0, 0];
    tpg.extend_from_slice(&group.to_be_bytes());
    designator(&mut d, ISCSI | BINARY, PIV | ASSOC_PORT | 0x5, &tpg);
    // Target port: SCSI name string.
    designator(
        &mut d,
        ISCSI | UTF8,
        PIV | ASSOC_PORT | 0x8,
        &name_string(&target_port_name(port)),
    );
    // Target device: SCSI name string (the iSCSI target name).
    designator(
        &mut d,
        ISCSI | UTF8,
        PIV | ASSOC_DEVICE | 0x8,
        &name_string(&port.target_name),
    );
    d
}

/// Block Limits page body (SBC-4 §6.6.4), 60 bytes.
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    let bs = lu.block_size();
    // Offsets below are relative to byte 4 of the page.
    b[0] = 0x00; // WSNZ = 0: WRITE SAME with 0 blocks means "to the end"
    b[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS;
    // One physical block, and at least a 4 KiB page (the granule of file holes).
    let granularity = (4096 / bs).max(lu.lbppb()) as u16;
    b[2..4].copy_from_slice(&granularity.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
    b[4..8].copy_from_slice(&lu.max_transfer_blocks().to_be_bytes()); // MAXIMUM TRANSFER LENGTH
    if lu.thin() {
        b[16..20].copy_from_slice(&limits::MAX_UNMAP_LBA_COUNT.to_be_bytes());
        b[20..24].copy_from_slice(&limits::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        // OPTIMAL UNMAP GRANULARITY: one 4 KiB page.
        b[24..28].copy_from_slice(&u32::from(granularity).to_be_bytes());
    }
    b[32..40].copy_from_slice(&limits::MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    // SBC-4 §4.29 / §6.6.4: MAXIMUM ATOMIC TRANSFER LENGTH; ATOMIC ALIGNMENT 0 and ATOMIC
    // TRANSFER LENGTH GRANULARITY 0 (no restrictions); no atomic boundaries.
    b[40..44].copy_from_slice(&lu.max_atomic_blocks().to_be_bytes());
    b
}

/// Block Device Characteristics page body (SBC-4 §6.6.2), 60 bytes.
fn block_device_characteristics(lu: &LogicalUnit) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    // MEDIUM ROTATION RATE 1: non-rotating.
    b[0..2].copy_from_slice(&1u16.to_be_bytes());
    // WABEREQ 01b: reads after SANITIZE BLOCK ERASE succeed (offered on thin LUs only).
    if lu.thin() {
        b[3] |= 0x40;
    }
    // WACEREQ 01b: reads after SANITIZE CRYPTO ERASE succeed, returning what the old blocks
    // decrypt to under the new key (offered on encrypted LUs only; 00b elsewhere, SBC-4
    // §6.6.2: crypto erase not supported).
    if lu.encrypted() {
        b[3] |= 0x10;
    }
    b
}

/// Logical Block Provisioning page body (SBC-4 §6.6.5), 4 bytes. Only offered when thin.
fn logical_block_provisioning(lu: &LogicalUnit) -> Vec<u8> {
    // THRESHOLD EXPONENT (the log page's unit); LBPU, LBPWS, LBPWS10, LBPRZ = 001b
    // (deallocated blocks read as zero), ANC_SUP = 1 (UNMAP and WRITE SAME take ANCHOR),
    // DP = 0; PROVISIONING TYPE 010b: thin.
    vec![
        lu.threshold_exponent(),
        0x80 | 0x40 | 0x20 | 0x04 | 0x02,
        0x02,
        0x00,
    ]
}

/// The full VPD page `code` (header included), or INVALID FIELD IN CDB for a page we lack.
pub fn page(lu: &LogicalUnit, port: &TargetPort, group: u16, code: u8) -> Result<Vec<u8>, Fail> {
    let body = match code {
        page::SUPPORTED => supported_pages(lu),
        page::UNIT_SERIAL => lu.serial().as_bytes().to_vec(),
        page::DEVICE_ID => device_id(lu, port, group),
        page::BLOCK_LIMITS => block_limits(lu),
        page::BLOCK_DEVICE_CHARACTERISTICS => block_device_characteristics(lu),
        page::LOGICAL_BLOCK_PROVISIONING if lu.thin() => logical_block_provisioning(lu),
        // SPC-4 §6.6.1: a VPD page that is not supported is an invalid field (PAGE CODE).
        _ => return Err(bad_cdb(2, None)),
    };
    let mut out = vec![PERIPHERAL_DISK, code];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_inquiry_layout() {
        let d = standard(PERIPHERAL_DISK, &LuConfig::default());
        assert_eq!(d.len(), 96);
        assert_eq!(usize::from(d[4]) + 5, d.len());
        assert_eq!(&d[8..16], b"FERRITE ");
        assert_eq!(d[2], 6);
        assert_eq!(d[3] & 0x0F, 2);
        assert_eq!(&d[58..60], &[0x00, 0xA0]);
        assert_eq!(&d[62..64], &[0x04, 0xC0]);
    }

    #[test]
    fn name_strings_are_padded() {
        assert_eq!(name_string("abc"), b"abc\0".to_vec());
        assert_eq!(name_string("abcd"), b"abcd\0\0\0\0".to_vec());
        assert_eq!(name_string(&"x".repeat(400)).len(), 256);
        let port = TargetPort {
            target_name: "iqn.x:y".into(),
            tpg_tag: 0x1a,
            relative_port_id: 1,
        };
        assert_eq!(target_port_name(&port), "iqn.x:y,t,0x001a");
    }
}
