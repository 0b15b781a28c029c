//! SCSI block commands over the raw initiator (`initiator::Session`): any command with data-out
//! (answered through R2T), its status and sense, and CDB builders for the SBC tests.

use super::initiator::{Session, OP_DATA_OUT, OP_R2T, OP_SCSI_RSP};

/// Data-Out segment size; 8 KiB is within every MaxRecvDataSegmentLength a target may declare
/// (RFC 7143 §13.12 allows 512 and up, Ferrite declares more).
const SEGMENT: usize = 8192;

/// A command's outcome: SCSI status and sense data (empty unless CHECK CONDITION).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub status: u8,
    pub sense: Vec<u8>,
}

impl Status {
    pub fn good(&self) -> bool {
        self.status == 0
    }

    /// (sense key, ASC, ASCQ) of fixed-format sense data.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        (s.len() >= 14).then(|| (s[2] & 0x0f, s[12], s[13]))
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Send `cdb` with `data` as its data-out and wait for the response.
pub fn data_out_cmd(s: &mut Session, cdb: &[u8], data: &[u8]) -> Result<Status, String> {
    let (b, itt) = s.scsi_cmd_bhs(cdb, false, !data.is_empty(), data.len() as u32);
    s.send(&b, &[]).map_err(|e| format!("send: {e}"))?;
    loop {
        let p = s.recv().map_err(|e| format!("recv: {e}"))?;
        match p.opcode() {
            OP_R2T => {
                let ttt = be32(&p.bhs, 20);
                let off = be32(&p.bhs, 40) as usize;
                let len = be32(&p.bhs, 44) as usize;
                if off + len > data.len() {
                    return Err(format!("R2T for {off}+{len} beyond {} bytes", data.len()));
                }
                let (mut sent, mut data_sn) = (0usize, 0u32);
                while sent < len {
                    let n = (len - sent).min(SEGMENT);
                    let mut d = [0u8; 48];
                    d[0] = OP_DATA_OUT;
                    d[1] = if sent + n == len { 0x80 } else { 0 };
                    d[16..20].copy_from_slice(&itt.to_be_bytes());
                    d[20..24].copy_from_slice(&ttt.to_be_bytes());
                    d[36..40].copy_from_slice(&data_sn.to_be_bytes());
                    d[40..44].copy_from_slice(&((off + sent) as u32).to_be_bytes());
                    s.send(&d, &data[off + sent..off + sent + n])
                        .map_err(|e| format!("Data-Out: {e}"))?;
                    sent += n;
                    data_sn += 1;
                }
            }
            OP_SCSI_RSP if p.itt() == itt => {
                // The data segment of a SCSI Response is SenseLength (2 bytes) + sense data.
                let sense = if p.data.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                    p.data[2..(2 + n).min(p.data.len())].to_vec()
                } else {
                    Vec::new()
                };
                return Ok(Status {
                    status: p.bhs[3],
                    sense,
                });
            }
            op => return Err(format!("unexpected opcode {op:#04x}: {:02x?}", &p.bhs[..8])),
        }
    }
}

/// COMPARE AND WRITE (SBC-4 §5.3) of `nlb` blocks at `lba`: `verify` then `write`.
pub fn compare_and_write(
    s: &mut Session,
    lba: u64,
    verify: &[u8],
    write: &[u8],
    block: usize,
) -> Result<Status, String> {
    assert_eq!(verify.len(), write.len());
    let nlb = (verify.len() / block) as u8;
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = nlb;
    let mut data = verify.to_vec();
    data.extend_from_slice(write);
    data_out_cmd(s, &cdb, &data)
}

/// UNMAP (SBC-4 §5.32) of the given (LBA, blocks) ranges.
pub fn unmap(s: &mut Session, ranges: &[(u64, u32)]) -> Result<Status, String> {
    let mut list = vec![0u8; 8];
    for &(lba, n) in ranges {
        list.extend_from_slice(&lba.to_be_bytes());
        list.extend_from_slice(&n.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
    }
    let data_len = (list.len() - 2) as u16;
    let bd_len = (list.len() - 8) as u16;
    list[0..2].copy_from_slice(&data_len.to_be_bytes());
    list[2..4].copy_from_slice(&bd_len.to_be_bytes());
    let mut cdb = [0u8; 10];
    cdb[0] = 0x42;
    cdb[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
    data_out_cmd(s, &cdb, &list)
}
