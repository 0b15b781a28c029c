//! The device server of one SCSI target: LUN inventory, command dispatch, resets.
//!
//! Every command goes through [`DeviceServer::execute`], which applies the checks that SAM-5 and
//! SPC-4 put in front of every command, in this order:
//! 1. LUN exists (else LOGICAL UNIT NOT SUPPORTED; INQUIRY, REPORT LUNS and REQUEST SENSE still
//!    answer, SPC-4 §6.6.1 / §6.33 / §6.39);
//! 2. pending unit attention for this I_T nexus (SPC-4 §5.14);
//! 3. the ALUA access state of the target port the command came through (SPC-4 §5.16.2.4,
//!    §5.16.2.5): through a standby, unavailable, offline or transitioning port only the
//!    commands that state allows run; the rest end in NOT READY, LOGICAL UNIT NOT ACCESSIBLE
//!    (never LOGICAL UNIT NOT SUPPORTED: the logical unit is there);
//! 4. opcode / service action known (INVALID COMMAND OPERATION CODE / INVALID FIELD IN CDB);
//! 5. SPC-2 reservation held by another I_T nexus (RESERVATION CONFLICT, SPC-2 §5.5.1), then
//!    the persistent reservation conflict tables by the entry's conflict class (SPC-4 §5.13.1,
//!    see `pr`);
//! 6. CDB length and reserved bits against the opcode table's usage data;
//! 7. the command's own handler, then the effects it left to the device server (`cmd::Effect`).

use std::fmt;
use std::sync::{Arc, RwLock};

use crate::cdb::{bad_cdb, Bytes, CmdResult, Fail};
use crate::cmd::{Cmd, Effect};
use crate::device::{TargetDevice, TaskAborter};
use crate::lu::LogicalUnit;
use crate::luns::{lun_from_wire, AddLunError, LunMap};
use crate::opcodes::{self, flag, Handler, Lookup, OpDesc};
use crate::pr::Who;
use crate::reservations;
use crate::sbc;
use crate::sense::SenseReason;
use crate::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus};

/// The device server as one initiator sees a target: a LUN map onto the target device's
/// logical units (see `device`). Without a device (tests), the map is all there is.
#[derive(Default)]
pub struct DeviceServer {
    /// The logical units, and the LUNs this view exposes read-only.
    luns: LunMap,
    /// The target device the map is of.
    device: Option<Arc<TargetDevice>>,
    /// The transport's hook for PREEMPT AND ABORT, when there is no device (tests).
    aborter: RwLock<Option<Arc<dyn TaskAborter>>>,
}

impl fmt::Debug for DeviceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceServer")
            .field("luns", &self.luns())
            .finish()
    }
}

impl DeviceServer {
    /// A LUN map of its own, with no target device behind it (tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty LUN map onto `device`: what one initiator (or demo mode) sees of it.
    pub fn on(device: Arc<TargetDevice>) -> Self {
        DeviceServer {
            device: Some(device),
            ..Self::default()
        }
    }

    /// The target device this map is of.
    pub fn device(&self) -> Option<&Arc<TargetDevice>> {
        self.device.as_ref()
    }

    /// Add a logical unit. Other logical units report REPORTED LUNS DATA HAS CHANGED to the
    /// I_T nexuses they know (SPC-4 §6.33).
    pub fn add_lun(&self, lun: u64, lu: Arc<LogicalUnit>) -> Result<(), AddLunError> {
        self.luns.add(lun, lu)
    }

    /// Expose `lun` read-only through this device server (or writable again). The logical
    /// unit itself is untouched: other views may write it.
    pub fn set_read_only(&self, lun: u64, read_only: bool) {
        self.luns.set_read_only(lun, read_only);
    }

    /// Whether `lun` is exposed read-only through this device server.
    pub fn is_read_only(&self, lun: u64) -> bool {
        self.luns.is_read_only(lun)
    }

    /// Remove a logical unit; the others report REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.remove(lun)
    }

    /// The configured LUNs, ascending.
    pub fn luns(&self) -> Vec<u64> {
        self.luns.luns()
    }

    pub fn lu(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.get(lun)
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

    /// Whether [`DeviceServer::execute_async`] moves this command's data without blocking a
    /// thread: READ and WRITE (6/10/12/16) and SYNCHRONIZE CACHE (10/16) to a logical unit
    /// whose backstore has an asynchronous interface (an RBD image). The transport runs everything else through
    /// [`DeviceServer::execute`] (on a thread that may block).
    pub fn is_async(&self, lun_wire: u64, cdb: &[u8]) -> bool {
        cdb.first().is_some_and(|&op| sbc::is_transfer_opcode(op))
            && lun_from_wire(lun_wire)
                .and_then(|l| self.lu(l))
                .is_some_and(|lu| lu.backstore().as_async().is_some())
    }

    /// Execute one command as [`DeviceServer::execute`] does, the same checks in the same
    /// order, but wait for a READ's, WRITE's or flush's backstore operation without blocking the thread (see
    /// [`DeviceServer::is_async`]); other commands run synchronously inside the future. Still
    /// sans-IO: the future only waits for the backstore's completion, whatever executor polls
    /// it.
    pub async fn execute_async(&self, req: &ScsiRequest<'_>) -> ScsiResponse {
        let lun = lun_from_wire(req.lun);
        let lu = match lun.and_then(|l| self.luns.get(l)) {
            Some(lu)
                if req
                    .cdb
                    .first()
                    .is_some_and(|&op| sbc::is_transfer_opcode(op)) =>
            {
                lu
            }
            _ => return self.execute(req),
        };
        let read_only = lun.is_some_and(|l| self.luns.is_read_only(l));
        let (planned, data_out_len) = self.plan_transfer(req, &lu, read_only);
        let result = match planned {
            // The in-flight mark (reservations) stays until the transfer is done.
            Ok((t, _inflight)) => sbc::transfer(&lu, t).await,
            Err(f) => Err(f),
        };
        respond(req, result, data_out_len)
    }

    /// The synchronous half of [`DeviceServer::execute_async`]: admission and the command's
    /// checks (no `Cmd` lives across an await).
    #[allow(clippy::type_complexity)]
    fn plan_transfer<'a>(
        &'a self,
        req: &'a ScsiRequest<'a>,
        lu: &'a Arc<LogicalUnit>,
        read_only: bool,
    ) -> (
        Result<(sbc::Transfer<'a>, Option<reservations::Inflight<'a>>), Fail>,
        u32,
    ) {
        let cmd = Cmd::new(req, &self.luns, Some(lu), read_only, self.device.as_deref());
        let planned = self
            .admit(&cmd)
            .and_then(|(_desc, inflight)| sbc::plan_transfer(&cmd, lu).map(|t| (t, inflight)));
        // READ and WRITE leave no effects; nothing to carry out.
        (planned, cmd.out_len())
    }

    /// Execute one command. Callable from many threads at once.
    pub fn execute(&self, req: &ScsiRequest) -> ScsiResponse {
        let lun = lun_from_wire(req.lun);
        let lu = lun.and_then(|l| self.luns.get(l));
        let read_only = lun.is_some_and(|l| self.luns.is_read_only(l));
        let cmd = Cmd::new(
            req,
            &self.luns,
            lu.as_ref(),
            read_only,
            self.device.as_deref(),
        );
        let result = self.dispatch(&cmd);
        respond(req, result, cmd.out_len())
    }

    fn dispatch(&self, cmd: &Cmd) -> CmdResult {
        // A command that may change the medium stays marked from its reservation check until
        // it completes (PREEMPT AND ABORT waits for such marks to go).
        let (desc, _inflight) = self.admit(cmd)?;
        let result = match desc.handler {
            Handler::Target(f) => f(cmd),
            Handler::Lu(f) => match cmd.lu {
                Some(lu) => f(cmd, lu),
                None => Err(SenseReason::LunNotSupported.into()),
            },
        };
        self.carry_out(cmd);
        result
    }

    /// The checks in front of every command (steps 1 to 6 of the module documentation): the
    /// command's table entry, and the in-flight mark of a command that may change the medium.
    fn admit<'a>(
        &self,
        cmd: &Cmd<'a>,
    ) -> Result<(&'static OpDesc, Option<reservations::Inflight<'a>>), Fail> {
        let Some(&opcode) = cmd.req.cdb.first() else {
            return Err(SenseReason::InvalidCommandOperationCode.into());
        };
        let lookup = opcodes::lookup(opcode, cmd.cdb.u8(1));
        let exempt = matches!(lookup, Lookup::Found(d) if d.has(flag::UA_EXEMPT));

        let mut inflight = None;
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
            // SPC-4 §5.16.2.4 - §5.16.2.5: what the port's access state allows. An unknown
            // opcode through an inaccessible port hears about the port first.
            let state = cmd.access_state();
            if let Some(refusal) = state.refusal() {
                let allowed = matches!(lookup, Lookup::Found(d) if d.alua_allowed().allows(state));
                if !allowed {
                    return Err(refusal.into());
                }
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
                inflight = reservations::admit(&mut st, lu, cmd.req.nexus, d.pr, cmd.cdb)?;
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
        Ok((desc, inflight))
    }

    /// Carry out what the handler left to the device server (see `cmd`), before the command
    /// completes (and before its in-flight mark goes).
    fn carry_out(&self, cmd: &Cmd) {
        for effect in cmd.take_effects() {
            match effect {
                Effect::AbortTasks { nexuses, preempted } => {
                    let Some(lu) = cmd.lu else { continue };
                    if !nexuses.is_empty() {
                        self.abort_tasks(lu, cmd.req.lun, &nexuses);
                    }
                    reservations::drain(lu, &preempted, Some(&Who::exact(cmd.nexus())));
                }
            }
        }
    }

    /// LOGICAL UNIT RESET (SAM-5 §7.7): the addressed LU releases its SPC-2 reservation,
    /// restores mode parameters and reports BUS DEVICE RESET FUNCTION OCCURRED to every I_T
    /// nexus. Aborting tasks is the transport's job. Returns false if the LUN does not exist.
    pub fn lun_reset(&self, lun_wire: u64) -> bool {
        match lun_from_wire(lun_wire).and_then(|l| self.luns.get(l)) {
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
        match &self.device {
            Some(d) => d.reset(),
            None => self.luns.each(|lu| lu.hard_reset()),
        }
    }

    /// Install the transport's hook that PREEMPT AND ABORT uses to abort the preempted I_T
    /// nexuses' tasks (SPC-4 §5.13.11.2.5). Without one, their queued commands still run into
    /// RESERVATION CONFLICT when they arrive here.
    pub fn set_task_aborter(&self, aborter: Arc<dyn TaskAborter>) {
        match &self.device {
            Some(d) => d.set_task_aborter(aborter),
            None => *self.aborter.write().unwrap_or_else(|e| e.into_inner()) = Some(aborter),
        }
    }

    /// Ask the transport to abort every task of `nexuses` for the logical unit `lu` (addressed
    /// as `lun_wire` by the command that asks).
    fn abort_tasks(&self, lu: &LogicalUnit, lun_wire: u64, nexuses: &[Nexus]) {
        let aborter = match &self.device {
            Some(d) => d.task_aborter(),
            None => self
                .aborter
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
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
        match &self.device {
            Some(d) => d.nexus_lost(nexus),
            None => self.luns.each(|lu| lu.nexus_lost(nexus)),
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

/// The answer to a command that ended with `result`.
fn respond(req: &ScsiRequest, result: CmdResult, data_out_len: u32) -> ScsiResponse {
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
