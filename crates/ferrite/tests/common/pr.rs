//! Persistent reservations over the raw initiator: PERSISTENT RESERVE OUT / IN builders and
//! decoders (SPC-4 §6.15, §6.16), and killing the daemon with SIGKILL.

use std::path::Path;
use std::time::Duration;

use super::initiator::{ScsiResult, Session, OP_DATA_OUT, OP_R2T, OP_REJECT, OP_SCSI_RSP};
use super::sbc::{data_out_cmd, Status};
use super::Daemon;

pub const REGISTER: u8 = 0x00;
pub const RESERVE: u8 = 0x01;
pub const RELEASE: u8 = 0x02;
pub const CLEAR: u8 = 0x03;
pub const PREEMPT: u8 = 0x04;
pub const PREEMPT_AND_ABORT: u8 = 0x05;
pub const REGISTER_AND_IGNORE: u8 = 0x06;

pub const READ_KEYS: u8 = 0x00;
pub const READ_RESERVATION: u8 = 0x01;
pub const REPORT_CAPABILITIES: u8 = 0x02;
pub const READ_FULL_STATUS: u8 = 0x03;

/// Write Exclusive – Registrants Only, what fence_scsi uses.
pub const WE_RO: u8 = 0x05;

/// Parameter list byte 20: APTPL.
pub const APTPL: u8 = 0x01;

pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
pub const STATUS_RESERVATION_CONFLICT: u8 = 0x18;

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
pub fn prout(
    s: &mut Session,
    sa: u8,
    ty: u8,
    key: u64,
    sark: u64,
    flags: u8,
) -> Result<Status, String> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = sa;
    cdb[2] = ty;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    data_out_cmd(s, &cdb, &p)
}

/// PERSISTENT RESERVE OUT that must end GOOD.
pub fn prout_ok(s: &mut Session, sa: u8, ty: u8, key: u64, sark: u64, flags: u8) {
    let r = prout(s, sa, ty, key, sark, flags).expect("PERSISTENT RESERVE OUT");
    assert!(r.good(), "PERSISTENT RESERVE OUT sa {sa}: {r:?}");
}

/// PERSISTENT RESERVE IN.
pub fn prin(s: &mut Session, sa: u8) -> ScsiResult {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5E;
    cdb[1] = sa;
    cdb[7..9].copy_from_slice(&8192u16.to_be_bytes());
    let r = s.command(&cdb, 8192).expect("PERSISTENT RESERVE IN");
    assert_eq!(
        r.status, STATUS_GOOD,
        "PERSISTENT RESERVE IN sa {sa}: {r:?}"
    );
    r
}

/// (PRGENERATION, keys).
pub fn read_keys(s: &mut Session) -> (u32, Vec<u64>) {
    let d = prin(s, READ_KEYS).data;
    let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let keys = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (gen, keys)
}

/// (key, type) of the persistent reservation.
pub fn read_reservation(s: &mut Session) -> Option<(u64, u8)> {
    let d = prin(s, READ_RESERVATION).data;
    if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
        return None;
    }
    Some((
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        d[21] & 0x0F,
    ))
}

/// READ FULL STATUS without its PRGENERATION (which restarts at zero with the daemon).
pub fn full_status_body(s: &mut Session) -> Vec<u8> {
    prin(s, READ_FULL_STATUS).data[4..].to_vec()
}

/// A WRITE(10) of one block whose data has not been sent yet: the command PDU goes out and the
/// target answers with an R2T (InitialR2T = Yes, no immediate data). Returns (ITT, TTT).
pub fn start_write(s: &mut Session, lba: u32, block: usize) -> Result<(u32, u32), String> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2A;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&1u16.to_be_bytes());
    let (b, itt) = s.scsi_cmd_bhs(&cdb, false, true, block as u32);
    s.send(&b, &[])
        .map_err(|e| format!("send WRITE(10): {e}"))?;
    let p = s.recv().map_err(|e| format!("WRITE(10): {e}"))?;
    if p.opcode() != OP_R2T || p.itt() != itt {
        return Err(format!(
            "expected an R2T for the write, got {:02x?}",
            &p.bhs[..20]
        ));
    }
    Ok((itt, u32::from_be_bytes(p.bhs[20..24].try_into().unwrap())))
}

/// Send the Data-Out of a write started with [`start_write`].
pub fn finish_write(s: &mut Session, itt: u32, ttt: u32, data: &[u8]) -> Result<(), String> {
    let mut d = [0u8; 48];
    d[0] = OP_DATA_OUT;
    d[1] = 0x80;
    d[16..20].copy_from_slice(&itt.to_be_bytes());
    d[20..24].copy_from_slice(&ttt.to_be_bytes());
    s.send(&d, data).map_err(|e| format!("Data-Out: {e}"))
}

/// Send TEST UNIT READY and read until its response, collecting the SCSI responses that arrive
/// for `other_itt` on the way (Reject PDUs are skipped). Returns (TUR status and sense, status
/// and sense of `other_itt` if it answered).
#[allow(clippy::type_complexity)]
pub fn tur_collecting(
    s: &mut Session,
    other_itt: u32,
) -> Result<((u8, Vec<u8>), Option<(u8, Vec<u8>)>), String> {
    let (b, itt) = s.scsi_cmd_bhs(&[0u8; 6], false, false, 0);
    s.send(&b, &[]).map_err(|e| format!("send TUR: {e}"))?;
    s.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut other = None;
    loop {
        let p = s.recv().map_err(|e| format!("TUR: {e}"))?;
        let sense = |p: &super::initiator::Pdu| {
            if p.data.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                p.data[2..(2 + n).min(p.data.len())].to_vec()
            } else {
                Vec::new()
            }
        };
        match p.opcode() {
            OP_SCSI_RSP if p.itt() == itt => return Ok(((p.bhs[3], sense(&p)), other)),
            OP_SCSI_RSP if p.itt() == other_itt => other = Some((p.bhs[3], sense(&p))),
            OP_REJECT => {}
            op => return Err(format!("unexpected opcode {op:#04x}: {:02x?}", &p.bhs[..8])),
        }
    }
}

/// (sense key, ASC, ASCQ) of fixed-format sense data.
pub fn sense_code(sense: &[u8]) -> Option<(u8, u8, u8)> {
    (sense.len() >= 14).then(|| (sense[2] & 0x0F, sense[12], sense[13]))
}

/// SIGKILL the daemon (no flush, no clean shutdown) and start it again from `config`, with the
/// same scratch directory and ports.
pub fn kill9_and_restart(d: &mut Daemon, config: &Path) {
    let _ = d.child.kill(); // SIGKILL
    let _ = d.child.wait();
    d.restart(config);
}

/// SIGKILL the daemon and leave it dead.
pub fn kill9(d: &mut Daemon) {
    let _ = d.child.kill();
    let _ = d.child.wait();
}
