//! The device server of one SCSI target: LUN inventory, command dispatch, resets.
//!
//! Every command goes through [`DeviceServer::execute`], which applies the checks that SAM-5 and
//! SPC-4 put in front of every command, in this order:
//! 1. LUN exists (else LOGICAL UNIT NOT SUPPORTED; INQUIRY, REPORT LUNS and REQUEST SENSE still
//!    answer, SPC-4 §6.6.1 / §6.33 / §6.39);
//! 2. pending unit attention for this I_T nexus (SPC-4 §5.14);
//! 3. opcode / service action known (INVALID COMMAND OPERATION CODE / INVALID FIELD IN CDB);
//! 4. SPC-2 reservation held by another I_T nexus (RESERVATION CONFLICT, SPC-2 §5.5.1), then
//!    the persistent reservation conflict tables by the entry's conflict class (SPC-4 §5.13.1,
//!    see `pr`);
//! 5. CDB length and reserved bits against the opcode table's usage data;
//! 6. the command's own handler.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::cdb::{bad_cdb, Bytes, CmdResult, Fail};
use crate::lu::LogicalUnit;
use crate::opcodes::{self, flag, Handler, Lookup, OpDesc};
use crate::sense::{Sense, SenseReason};
use crate::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus};

/// Largest LUN [`lun_to_wire`] encodes with single-level flat space addressing (SAM-5 §4.7.7).
pub const MAX_FLAT_LUN: u64 = 0x3FFF;
/// Largest LUN this device server accepts (extended flat space addressing, 24 bits).
pub const MAX_LUN: u64 = 0xFF_FFFF;

/// Encode a LUN for the 8-byte LUN field (SAM-5 §4.7): peripheral device addressing (00b) below
/// 256, flat space addressing (01b) up to 16383, extended flat space addressing (11b, length
/// 01b, extended address method 2h) up to 2^24-1. The result is the 8 bytes read big-endian.
/// LUNs above [`MAX_LUN`] are masked to 24 bits (`DeviceServer::add_lun` refuses them).
pub fn lun_to_wire(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else if lun <= MAX_FLAT_LUN {
        (0x4000 | lun) << 48
    } else {
        (0xD2u64 << 56) | ((lun & MAX_LUN) << 32)
    }
}

/// Decode the 8-byte LUN field; `None` for address methods and hierarchies we do not use
/// (every LUN we expose is single level, so the remaining levels must be zero).
pub fn lun_from_wire(wire: u64) -> Option<u64> {
    let b = wire.to_be_bytes();
    match b[0] >> 6 {
        // Peripheral device addressing, bus identifier 0.
        0b00 if b[0] == 0 && wire & 0x0000_FFFF_FFFF_FFFF == 0 => Some(u64::from(b[1])),
        // Flat space addressing.
        0b01 if wire & 0x0000_FFFF_FFFF_FFFF == 0 => {
            Some((u64::from(b[0] & 0x3F) << 8) | u64::from(b[1]))
        }
        // Extended flat space addressing: length 01b (4 bytes), extended address method 2h.
        0b11 if b[0] == 0xD2 && wire & 0x0000_0000_FFFF_FFFF == 0 => Some((wire >> 32) & MAX_LUN),
        _ => None,
    }
}

/// Why `add_lun` refused a LUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddLunError {
    /// Above [`MAX_LUN`].
    OutOfRange(u64),
    /// The LUN is already in use.
    Exists(u64),
}

impl fmt::Display for AddLunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddLunError::OutOfRange(l) => write!(f, "LUN {l} is above {MAX_LUN}"),
            AddLunError::Exists(l) => write!(f, "LUN {l} already exists"),
        }
    }
}

impl std::error::Error for AddLunError {}

/// One command in flight, as handlers see it.
pub struct Cmd<'a> {
    pub req: &'a ScsiRequest<'a>,
    pub cdb: Bytes<'a>,
    pub data_out: Bytes<'a>,
    pub server: &'a DeviceServer,
    /// The addressed logical unit, if it exists.
    pub lu: Option<&'a LogicalUnit>,
    /// The LU is mapped read-only for this view (DATA PROTECT on writes).
    pub read_only: bool,
    out_len: Cell<u32>,
}

impl Cmd<'_> {
    /// Record how many data-out bytes the CDB asks for (for the transport's residual).
    pub fn expect_out(&self, bytes: u64) {
        self.out_len.set(u32::try_from(bytes).unwrap_or(u32::MAX));
    }

    pub fn nexus(&self) -> &Nexus {
        self.req.nexus
    }

    /// The transport has aborted this task.
    pub fn cancelled(&self) -> bool {
        self.req
            .cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// The device server of one target: a set of logical units addressed by LUN.
#[derive(Default)]
pub struct DeviceServer {
    luns: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
    /// LUNs this view exposes read-only (an ACL's read-only mapping of a writable LU).
    read_only: RwLock<std::collections::HashSet<u64>>,
    /// The transport's hook for PREEMPT AND ABORT.
    aborter: RwLock<Option<Arc<dyn crate::pr::TaskAborter>>>,
}

impl fmt::Debug for DeviceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceServer")
            .field("luns", &self.luns())
            .finish()
    }
}

impl DeviceServer {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<LogicalUnit>>> {
        self.luns.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a logical unit. Other logical units report REPORTED LUNS DATA HAS CHANGED to the
    /// I_T nexuses they know (SPC-4 §6.33).
    pub fn add_lun(&self, lun: u64, lu: Arc<LogicalUnit>) -> Result<(), AddLunError> {
        if lun > MAX_LUN {
            return Err(AddLunError::OutOfRange(lun));
        }
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&lun) {
            return Err(AddLunError::Exists(lun));
        }
        for other in map.values() {
            other
                .state()
                .ua
                .establish_all(SenseReason::ReportedLunsDataChanged, None);
        }
        map.insert(lun, lu);
        Ok(())
    }

    /// Expose `lun` read-only through this device server (or writable again). The logical
    /// unit itself is untouched: other views may write it.
    pub fn set_read_only(&self, lun: u64, read_only: bool) {
        let mut ro = self.read_only.write().unwrap_or_else(|e| e.into_inner());
        if read_only {
            ro.insert(lun);
        } else {
            ro.remove(&lun);
        }
    }

    /// Whether `lun` is exposed read-only through this device server.
    pub fn is_read_only(&self, lun: u64) -> bool {
        self.read_only
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&lun)
    }

    /// Remove a logical unit; the others report REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        let lu = map.remove(&lun)?;
        for other in map.values() {
            other
                .state()
                .ua
                .establish_all(SenseReason::ReportedLunsDataChanged, None);
        }
        Some(lu)
    }

    /// The configured LUNs, ascending.
    pub fn luns(&self) -> Vec<u64> {
        self.map().keys().copied().collect()
    }

    pub fn lu(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.map().get(&lun).cloned()
    }

    /// Whether `execute` of this command finishes in microseconds without sleeping, so the
    /// transport may run it on its own thread instead of handing it to a blocking pool (the
    /// hand-off costs more than the command). True for small READ/WRITE without FUA on RAM and
    /// file backstores (page cache), and for commands that touch no medium; false for flushes,
    /// large transfers, block devices and everything that may wait (COMPARE AND WRITE, XCOPY,
    /// SANITIZE, UNMAP, reservations with APTPL writes...).
    pub fn is_quick(&self, lun_wire: u64, cdb: &[u8]) -> bool {
        const QUICK_BYTES: u64 = 128 * 1024;
        let Some(&op) = cdb.first() else { return true };
        let Some(lu) = lun_from_wire(lun_wire).and_then(|l| self.lu(l)) else {
            return true; // answered without touching any LU
        };
        let b = Bytes(cdb);
        // (transfer length in blocks, FUA) for the READ/WRITE family (SBC-4 §5.x CDB layouts).
        let xfer = match op {
            0x08 | 0x0a => Some((u64::from(b.u8(4)).max(1), false)),
            0x28 | 0x2a => Some((u64::from(b.be16(7)), b.bit(1, 3))),
            0xa8 | 0xaa => Some((u64::from(b.be32(6)), b.bit(1, 3))),
            0x88 | 0x8a => Some((u64::from(b.be32(10)), b.bit(1, 3))),
            _ => None,
        };
        match xfer {
            Some((blocks, fua)) => {
                let medium = matches!(lu.backstore().kind(), "ram" | "file");
                medium && !fua && blocks * u64::from(lu.block_size()) <= QUICK_BYTES
            }
            // INQUIRY, TEST UNIT READY, REPORT LUNS, READ CAPACITY 10/16, REQUEST SENSE,
            // MODE SENSE 6/10: answered from memory.
            None => {
                matches!(op, 0x12 | 0x00 | 0xa0 | 0x25 | 0x03 | 0x1a | 0x5a)
                    || (op == 0x9e && b.u8(1) & 0x1f == 0x10)
            }
        }
    }

    /// Execute one command. Callable from many threads at once.
    pub fn execute(&self, req: &ScsiRequest) -> ScsiResponse {
        let lun = lun_from_wire(req.lun);
        let lu = lun.and_then(|l| self.lu(l));
        let read_only = lun.is_some_and(|l| {
            self.read_only
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&l)
        });
        let cmd = Cmd {
            req,
            cdb: Bytes(req.cdb),
            data_out: Bytes(req.data_out),
            server: self,
            lu: lu.as_deref(),
            read_only,
            out_len: Cell::new(0),
        };
        let result = self.dispatch(&cmd);
        let data_out_len = cmd.out_len.get();
        match result {
            Ok(data_in) => ScsiResponse {
                status: ScsiStatus::GOOD,
                sense: Vec::new(),
                data_in,
                data_out_len,
            },
            Err(Fail::Check(sense)) => {
                tracing::debug!(
                    opcode = req.cdb.first().copied().unwrap_or(0),
                    reason = ?sense.reason,
                    "check condition"
                );
                ScsiResponse {
                    status: ScsiStatus::CHECK_CONDITION,
                    sense: sense.to_fixed(),
                    data_in: Vec::new(),
                    data_out_len,
                }
            }
            Err(Fail::Status(status)) => ScsiResponse {
                status,
                sense: Vec::new(),
                data_in: Vec::new(),
                data_out_len,
            },
        }
    }

    fn dispatch(&self, cmd: &Cmd) -> CmdResult {
        let Some(&opcode) = cmd.req.cdb.first() else {
            return Err(SenseReason::InvalidCommandOperationCode.into());
        };
        let lookup = opcodes::lookup(opcode, cmd.cdb.u8(1));
        let exempt = matches!(lookup, Lookup::Found(d) if d.has(flag::UA_EXEMPT));

        // A command that may change the medium stays marked from its reservation check until
        // it completes (PREEMPT AND ABORT waits for such marks to go).
        let mut _inflight = None;
        if let Some(lu) = cmd.lu {
            let power_on = lu.config().report_power_on_ua;
            let mut st = lu.state();
            if exempt {
                st.ua.touch(cmd.nexus(), power_on);
            } else if let Some(ua) = st.ua.take(cmd.nexus(), power_on) {
                // SPC-4 §5.14: report (and clear) the unit attention instead of running the
                // command.
                return Err(ua.into());
            }
            if let Lookup::Found(d) = lookup {
                // SPC-2 §5.5.1: another nexus's reservation blocks everything but the few
                // commands marked RESV_OK.
                if let Some(holder) = &st.reservation {
                    if holder != cmd.nexus() && !d.has(flag::RESV_OK) {
                        return Err(Fail::Status(ScsiStatus::RESERVATION_CONFLICT));
                    }
                }
                // SPC-4 §5.13.1 and SBC-4: persistent reservation conflicts.
                _inflight = crate::pr::admit(&mut st, lu, cmd.nexus(), d.pr, cmd.cdb)?;
            }
            // SBC-4 §4.11.2, §5.4.1: while a sanitize or a format runs, only INQUIRY, REPORT
            // LUNS and REQUEST SENSE (exactly the UA-exempt commands) are processed.
            if let Some(busy) = lu.busy().filter(|_| !exempt) {
                return Err(Fail::Check(busy));
            }
        } else if !exempt {
            return Err(SenseReason::LunNotSupported.into());
        }

        let desc = match lookup {
            Lookup::Found(d) => d,
            Lookup::UnknownOpcode => {
                tracing::debug!(opcode, "unsupported opcode");
                return Err(SenseReason::InvalidCommandOperationCode.into());
            }
            // SPC-4 §4.2.5.1: the SERVICE ACTION field is bits 4..0 of byte 1.
            Lookup::UnknownServiceAction => return Err(bad_cdb(1, Some(4))),
        };
        tracing::trace!(cmd = desc.name, "dispatch");
        if let Some(lu) = cmd.lu {
            if !desc.available(lu) {
                // A service action this LU lacks, of an opcode it has, is a bad SERVICE ACTION
                // field (SPC-4 §4.2.5.1), not an unknown opcode.
                let opcode_offered = desc.sa.is_some()
                    && opcodes::TABLE
                        .iter()
                        .any(|d| d.opcode == desc.opcode && d.available(lu));
                return Err(if opcode_offered {
                    bad_cdb(1, Some(4))
                } else {
                    SenseReason::InvalidCommandOperationCode.into()
                });
            }
        }
        check_cdb(desc, cmd.cdb)?;
        match desc.handler {
            Handler::Target(f) => f(cmd),
            Handler::Lu(f) => match cmd.lu {
                Some(lu) => f(cmd, lu),
                None => Err(SenseReason::LunNotSupported.into()),
            },
        }
    }

    /// LOGICAL UNIT RESET (SAM-5 §7.7): the addressed LU releases its SPC-2 reservation,
    /// restores mode parameters and reports BUS DEVICE RESET FUNCTION OCCURRED to every I_T
    /// nexus. Aborting tasks is the transport's job. Returns false if the LUN does not exist.
    pub fn lun_reset(&self, lun_wire: u64) -> bool {
        match lun_from_wire(lun_wire).and_then(|l| self.lu(l)) {
            Some(lu) => {
                lu.logical_unit_reset();
                true
            }
            None => false,
        }
    }

    /// Target (warm or cold) reset, a hard reset for every LU (SAM-5 §6.3.2): as a LUN reset,
    /// but with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub fn target_reset(&self) {
        for lu in self.map().values() {
            lu.hard_reset();
        }
    }

    /// Install the transport's hook that PREEMPT AND ABORT uses to abort the preempted I_T
    /// nexuses' tasks (SPC-4 §5.13.11.2.5). Without one, their queued commands still run into
    /// RESERVATION CONFLICT when they arrive here.
    pub fn set_task_aborter(&self, aborter: Arc<dyn crate::pr::TaskAborter>) {
        *self.aborter.write().unwrap_or_else(|e| e.into_inner()) = Some(aborter);
    }

    /// Ask the transport to abort every task of `nexuses` for the logical unit `lu` (addressed
    /// as `lun_wire` by the command that asks).
    pub(crate) fn abort_tasks(&self, lu: &LogicalUnit, lun_wire: u64, nexuses: &[Nexus]) {
        let aborter = self
            .aborter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match aborter {
            Some(a) => a.abort_tasks(lu, lun_wire, nexuses),
            None => tracing::debug!(
                count = nexuses.len(),
                "PREEMPT AND ABORT: no task aborter installed"
            ),
        }
    }

    /// I_T nexus loss (session gone): release SPC-2 reservations it held and forget its unit
    /// attentions; if it logs in again it is a new nexus (and sees the power-on UA).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for lu in self.map().values() {
            lu.nexus_lost(nexus);
        }
    }
}

/// CDB length and reserved bits, from the table's usage data (SPC-4 §4.2.5 / §6.35.3).
fn check_cdb(desc: &OpDesc, cdb: Bytes) -> Result<(), Fail> {
    let len = desc.cdb_len();
    if cdb.len() < len {
        // The CDB ends before the fields its operation code defines.
        return Err(bad_cdb(cdb.len() as u16, None));
    }
    for i in 1..len - 1 {
        let extra = cdb.u8(i) & !desc.accepted_bits(i);
        if extra != 0 {
            let bit = 7 - extra.leading_zeros() as u8;
            return Err(bad_cdb(i as u16, Some(bit)));
        }
    }
    // SAM-5 §5.2: NACA = 1 while the control mode page says NormACA is not supported.
    let control = len - 1;
    if cdb.bit(control, 2) {
        return Err(bad_cdb(control as u16, Some(2)));
    }
    Ok(())
}

/// Sense helper for handlers: a backstore error, logged, mapped to a medium error.
pub(crate) fn io_fail(what: &str, reason: SenseReason, e: &std::io::Error) -> Fail {
    tracing::error!(error = %e, "backstore {what} failed");
    Fail::Check(Sense::new(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [
            0,
            1,
            7,
            255,
            256,
            1000,
            MAX_FLAT_LUN,
            MAX_FLAT_LUN + 1,
            MAX_LUN,
        ] {
            assert_eq!(lun_from_wire(lun_to_wire(lun)), Some(lun), "lun {lun}");
        }
        assert_eq!(lun_to_wire(0), 0);
        assert_eq!(lun_to_wire(1), 0x0001_0000_0000_0000);
        assert_eq!(lun_to_wire(256), 0x4100_0000_0000_0000);
        assert_eq!(lun_to_wire(0x3FFF), 0x7FFF_0000_0000_0000);
        assert_eq!(lun_to_wire(0x12345), 0xD201_2345_0000_0000);
    }

    #[test]
    fn lun_decoding_rejects_other_forms() {
        // Flat space addressing of a small LUN is accepted too.
        assert_eq!(lun_from_wire(0x4005_0000_0000_0000), Some(5));
        // Second level present.
        assert_eq!(lun_from_wire(0x0001_0001_0000_0000), None);
        // Peripheral with a bus identifier.
        assert_eq!(lun_from_wire(0x0101_0000_0000_0000), None);
        // Logical unit addressing (10b).
        assert_eq!(lun_from_wire(0x8001_0000_0000_0000), None);
        // Well-known LU (C1h).
        assert_eq!(lun_from_wire(0xC101_0000_0000_0000), None);
    }
}
