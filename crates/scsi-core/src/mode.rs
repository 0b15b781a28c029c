//! MODE SENSE / MODE SELECT (SPC-4 §6.11–§6.14, §7.5) and the mode pages of a disk LU
//! (SBC-4 §6.5).
//!
//! Pages are built from [`ModeState`] by one function per page for each page control value
//! (current / default / changeable); MODE SELECT is validated against the changeable mask of the
//! same pages, so what MODE SENSE shows as changeable is exactly what MODE SELECT accepts.
//! Only the caching page WCE bit and the control page SWP bit are changeable. Saved pages are not
//! supported. Mode parameters are shared by all I_T nexuses.

use crate::cdb::{bad_cdb, bad_param, clip, Bytes, CmdResult};
use crate::cmd::Cmd;
use crate::lu::{LogicalUnit, ModeState};
use crate::sense::SenseReason;

/// Page codes (SPC-4 §7.5.2 table 434, SBC-4 §6.5.1).
pub mod page {
    pub const READ_WRITE_ERROR_RECOVERY: u8 = 0x01;
    pub const CACHING: u8 = 0x08;
    pub const CONTROL: u8 = 0x0A;
    pub const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
    pub const ALL: u8 = 0x3F;
}

/// The pages we implement, in ascending order (the order "all pages" returns them).
const PAGES: [u8; 4] = [
    page::READ_WRITE_ERROR_RECOVERY,
    page::CACHING,
    page::CONTROL,
    page::INFORMATIONAL_EXCEPTIONS,
];

/// PAGE CONTROL field (SPC-4 §6.11.1 table 162).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

/// Device-specific parameter for direct-access devices (SBC-4 §6.5.1): WP, DPOFUA.
fn device_specific(cmd: &Cmd, lu: &LogicalUnit) -> u8 {
    let mut b = 0x10; // DPOFUA: DPO and FUA are supported
    if cmd.read_only || lu.write_protection().is_some() {
        b |= 0x80; // WP
    }
    b
}

/// The bytes of mode page `code` (page_0 format), or `None` if we do not have it.
pub fn page_bytes(code: u8, pc: PageControl, st: &ModeState) -> Option<Vec<u8>> {
    let cur = match pc {
        PageControl::Current => *st,
        PageControl::Default => ModeState::default(),
        PageControl::Changeable => ModeState {
            wce: true,
            swp: true,
        },
    };
    let changeable = pc == PageControl::Changeable;
    let p = match code {
        page::READ_WRITE_ERROR_RECOVERY => {
            // SBC-4 §6.5.8: nothing to recover in software, every field zero and fixed.
            let mut p = vec![0u8; 12];
            p[0] = code;
            p[1] = 0x0A;
            p
        }
        page::CACHING => {
            // SBC-4 §6.5.5. Byte 2: WCE (bit 2); RCD (bit 0) = 0, reads are cached.
            let mut p = vec![0u8; 20];
            p[0] = code;
            p[1] = 0x12;
            if cur.wce {
                p[2] |= 0x04;
            }
            p
        }
        page::CONTROL => {
            // SPC-4 §7.5.8.
            let mut p = vec![0u8; 12];
            p[0] = code;
            p[1] = 0x0A;
            if !changeable {
                // TST 000b (one task set for all nexuses), D_SENSE 0 (fixed format),
                // GLTSD 1 (no log parameters are saved).
                p[2] = 0x02;
                // QUEUE ALGORITHM MODIFIER 1h: unrestricted reordering of SIMPLE tasks;
                // QERR 00b.
                p[3] = 0x10;
                // BUSY TIMEOUT PERIOD FFFFh: unlimited.
                p[8] = 0xFF;
                p[9] = 0xFF;
            }
            if cur.swp {
                p[4] |= 0x08; // SWP
            }
            p
        }
        page::INFORMATIONAL_EXCEPTIONS => {
            // SPC-4 §7.5.13: DEXCPT = 1, informational exceptions are not reported.
            let mut p = vec![0u8; 12];
            p[0] = code;
            p[1] = 0x0A;
            if !changeable {
                p[2] = 0x08;
            }
            p
        }
        _ => return None,
    };
    Some(p)
}

/// MODE SENSE(6) (`ten == false`) and MODE SENSE(10).
pub fn mode_sense(cmd: &Cmd, lu: &LogicalUnit, ten: bool) -> CmdResult {
    let c = cmd.cdb;
    let dbd = c.bit(1, 3);
    let llbaa = ten && c.bit(1, 4);
    let pc = match c.u8(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        // SPC-4 §6.11.1: saved values requested but not supported.
        _ => return Err(SenseReason::SavingParametersNotSupported.into()),
    };
    let code = c.u8(2) & 0x3F;
    let subpage = c.u8(3);
    let alloc = if ten {
        usize::from(c.be16(7))
    } else {
        usize::from(c.u8(4))
    };

    // We have no subpages: subpage 00h, or FFh ("all subpages") which adds nothing.
    if subpage != 0x00 && subpage != 0xFF {
        return Err(bad_cdb(3, None));
    }
    let st = lu.mode();
    let mut pages = Vec::new();
    if code == page::ALL {
        for p in PAGES {
            pages.extend(page_bytes(p, pc, &st).unwrap_or_default());
        }
    } else {
        match page_bytes(code, pc, &st) {
            Some(p) => pages.extend(p),
            // SPC-4 §6.11.1: a page we do not implement is an invalid field in the CDB.
            None => return Err(bad_cdb(2, Some(5))),
        }
    }

    let mut bd = Vec::new();
    if !dbd {
        let blocks = if pc == PageControl::Changeable {
            0
        } else {
            lu.num_blocks()
        };
        let bs = if pc == PageControl::Changeable {
            0
        } else {
            lu.block_size()
        };
        if llbaa {
            // SBC-4 §6.5.2.3 long LBA block descriptor.
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&bs.to_be_bytes());
        } else {
            // SBC-4 §6.5.2.2 short LBA block descriptor: a capacity that does not fit is
            // reported as FFFFFFFFh.
            let n = u32::try_from(blocks).unwrap_or(u32::MAX);
            bd.extend_from_slice(&n.to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&bs.to_be_bytes()[1..]);
        }
    }

    let dsp = device_specific(cmd, lu);
    let mut out = Vec::with_capacity(8 + bd.len() + pages.len());
    if ten {
        // SPC-4 §7.5.5 mode parameter header(10).
        let total = 8 + bd.len() + pages.len();
        out.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        out.push(0); // MEDIUM TYPE
        out.push(dsp);
        out.push(u8::from(llbaa && !dbd)); // LONGLBA
        out.push(0);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        // Mode parameter header(6). The largest answer (4 + 8 + 56) fits the one-byte length.
        let total = 4 + bd.len() + pages.len();
        out.push((total - 1) as u8);
        out.push(0);
        out.push(dsp);
        out.push(bd.len() as u8);
    }
    out.extend(bd);
    out.extend(pages);
    Ok(clip(out, alloc))
}

/// MODE SELECT(6) (`ten == false`) and MODE SELECT(10).
pub fn mode_select(cmd: &Cmd, lu: &LogicalUnit, ten: bool) -> CmdResult {
    let c = cmd.cdb;
    let pf = c.bit(1, 4);
    let sp = c.bit(1, 0);
    let len = if ten {
        usize::from(c.be16(7))
    } else {
        usize::from(c.u8(4))
    };
    cmd.expect_out(len as u64);
    // SPC-4 §6.13: SP = 1 asks us to save the pages, which we cannot.
    if sp {
        return Err(bad_cdb(1, Some(0)));
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    // SPC-4 §6.13: PF = 0 means vendor-specific (SCSI-1) page format; we only speak SPC pages.
    if !pf {
        return Err(bad_cdb(1, Some(4)));
    }
    let list = Bytes(cmd.data_out.slice(0, len));
    let hdr = if ten { 8 } else { 4 };
    if list.len() < hdr {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let (bdl, bdl_off, longlba) = if ten {
        (usize::from(list.be16(6)), 6, list.bit(4, 0))
    } else {
        (usize::from(list.u8(3)), 3, false)
    };
    let bd_size = if longlba { 16 } else { 8 };
    if bdl != 0 && bdl != bd_size {
        return Err(bad_param(bdl_off, None));
    }
    if hdr + bdl > list.len() {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    if bdl != 0 {
        // The block length cannot change (no FORMAT UNIT); 0 means "unchanged".
        let bl_off = if longlba { hdr + 12 } else { hdr + 5 };
        let bl = if longlba {
            list.be32(bl_off)
        } else {
            list.be24(bl_off)
        };
        if bl != 0 && bl != lu.block_size() {
            return Err(bad_param(bl_off as u16, None));
        }
    }

    let mut guard = lu.mode_lock();
    let mut new = *guard;
    let mut off = hdr + bdl;
    while off < list.len() {
        if off + 2 > list.len() {
            return Err(SenseReason::ParameterListLengthError.into());
        }
        let b0 = list.u8(off);
        if b0 & 0x40 != 0 {
            // SPF: sub_page format; we have no subpages.
            return Err(bad_param(off as u16, Some(6)));
        }
        let code = b0 & 0x3F;
        let plen = usize::from(list.u8(off + 1));
        if off + 2 + plen > list.len() {
            return Err(SenseReason::ParameterListLengthError.into());
        }
        let (Some(cur), Some(mask)) = (
            page_bytes(code, PageControl::Current, &new),
            page_bytes(code, PageControl::Changeable, &new),
        ) else {
            return Err(bad_param(off as u16, Some(5)));
        };
        if plen + 2 != cur.len() {
            return Err(bad_param((off + 1) as u16, None));
        }
        // SPC-4 §6.13: changing a field that is not changeable is an invalid field in the
        // parameter list. Byte 0 (PS is reserved here) and byte 1 were checked above.
        for i in 2..cur.len() {
            let diff = (list.u8(off + i) ^ cur[i]) & !mask[i];
            if diff != 0 {
                return Err(bad_param(
                    (off + i) as u16,
                    Some(7 - diff.leading_zeros() as u8),
                ));
            }
        }
        match code {
            page::CACHING => new.wce = list.bit(off + 2, 2),
            page::CONTROL => new.swp = list.bit(off + 4, 3),
            _ => {}
        }
        off += 2 + plen;
    }
    if new != *guard {
        *guard = new;
        drop(guard);
        // SPC-4 §5.14 / §6.13: other I_T nexuses learn of the change through a unit attention.
        lu.state()
            .ua
            .establish_all(SenseReason::ModeParametersChanged, Some(cmd.req.nexus));
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_lengths_match_page_length_byte() {
        for code in PAGES {
            for pc in [
                PageControl::Current,
                PageControl::Changeable,
                PageControl::Default,
            ] {
                let p = page_bytes(code, pc, &ModeState::default()).unwrap();
                assert_eq!(p[0], code);
                assert_eq!(usize::from(p[1]) + 2, p.len());
            }
        }
        assert!(page_bytes(0x02, PageControl::Current, &ModeState::default()).is_none());
    }

    #[test]
    fn changeable_masks() {
        let st = ModeState::default();
        let cache = page_bytes(page::CACHING, PageControl::Changeable, &st).unwrap();
        assert_eq!(cache[2], 0x04);
        let ctl = page_bytes(page::CONTROL, PageControl::Changeable, &st).unwrap();
        assert_eq!(ctl[4], 0x08);
        assert!(ctl[2..].iter().enumerate().all(|(i, &b)| i == 2 || b == 0));
        let cur = page_bytes(
            page::CONTROL,
            PageControl::Current,
            &ModeState {
                wce: true,
                swp: true,
            },
        )
        .unwrap();
        assert_eq!(cur[4] & 0x08, 0x08);
    }
}
