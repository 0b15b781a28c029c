//! Persistent reservations (SPC-4 §5.13, PERSISTENT RESERVE IN §6.15 / OUT §6.16) and their
//! interplay with SPC-2 RESERVE / RELEASE (SPC-4 §5.13.3).
//!
//! # Shape
//!
//! * `state` — the data ([`PrState`]: registrations, reservation, PRGENERATION, APTPL) and the
//!   read-only rules: who is registered, who holds the reservation, which command conflicts
//!   (the conflict class of each opcode table entry is a [`Class`]).
//! * `engine` — PERSISTENT RESERVE OUT as one pure function from (state, sending I_T nexus,
//!   decoded request) to a new state plus effects (unit attentions to establish, I_T nexuses
//!   whose tasks to abort). No locks, no I/O, no clock: tested on its own and against a
//!   reference model (`model`, tests only).
//! * `codec` — CDB and parameter list decoding, PERSISTENT RESERVE IN data, TransportIDs.
//! * `store` — [`PrStore`]: where APTPL state survives restarts ([`FilePrStore`],
//!   [`MemPrStore`]; an etcd store later).
//! * this file — the glue to the logical unit: the command handlers, the conflict check and
//!   in-flight tracking used by dispatch, and the operator's view.
//!
//! # Decisions
//!
//! * An I_T nexus is (initiator name, ISID, relative target port identifier). A registration
//!   can stand for several I_T nexuses at once — ALL_TG_PT (every target port), a TransportID
//!   without ISID (every ISID), or the per-LU option `pr_match_initiator_name_only` (every ISID,
//!   for initiators that pick a new ISID on every login). Such a registration acts as one:
//!   changing its key or unregistering through any of its I_T nexuses affects all of them, and
//!   READ KEYS lists it once (READ FULL STATUS shows ALL_TG_PT / format 00b TransportIDs).
//!   Registrations never overlap: registering an I_T nexus another registration already names
//!   is refused with INVALID FIELD IN PARAMETER LIST.
//! * A PERSISTENT RESERVE OUT computes the new state on a copy, saves it (when APTPL is or was
//!   set), and only then commits it, establishes unit attentions and reports GOOD; a failed
//!   save changes nothing and ends the command with INTERNAL TARGET FAILURE.
//! * PREEMPT AND ABORT: the transport aborts the preempted I_T nexuses' tasks through the
//!   [`TaskAborter`]; the device server then waits until none of their commands that passed
//!   the reservation check before the preemption is still running, so when GOOD goes back no
//!   write from a fenced node can still reach the medium.
//! * Logical unit reset, hard reset (TARGET WARM/COLD RESET) and I_T nexus loss leave
//!   persistent reservations alone (SPC-4 §5.13.1: only a power loss without APTPL clears
//!   them; a TMF any initiator can send must not lift a fence). They do release SPC-2
//!   reservations.
//! * PRGENERATION restarts at zero with the daemon (SPC-4 §6.15.2: "set to zero by a power
//!   on"), whatever APTPL says; registrations and the reservation are restored exactly.

mod codec;
mod engine;
mod state;
mod store;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar};

use crate::cdb::{bad_cdb, clip, Bytes, CmdResult, Fail};
use crate::lu::{LogicalUnit, LuState};
use crate::sense::SenseReason;
use crate::server::Cmd;
use crate::{Nexus, ScsiStatus};

pub use engine::Rules;
pub use state::{Access, Class, PrState, PrType, Registration, Reservation, Who};
pub use store::{FilePrStore, MemPrStore, PrStore};

/// Registrations one logical unit keeps at most (more: INSUFFICIENT REGISTRATION RESOURCES).
pub const MAX_REGISTRATIONS: usize = 512;

/// The transport's side of PREEMPT AND ABORT (SPC-4 §5.13.11.2.5): abort every task of the
/// given I_T nexuses for one logical unit, on every connection of their sessions, without a
/// response (as ABORT TASK SET would, SAM-5 §7.2).
pub trait TaskAborter: Send + Sync {
    /// `lu` is the logical unit (the same object every view that maps it holds, so compare
    /// with `std::ptr::eq`); `lun` is the 8-byte LUN field (SAM-5 §4.7 encoding, like
    /// `ScsiRequest::lun`) through which the PREEMPT AND ABORT arrived — another I_T nexus may
    /// reach the same logical unit under another LUN when LUN maps differ.
    fn abort_tasks(&self, lu: &LogicalUnit, lun: u64, nexuses: &[Nexus]);
}

/// Persistent reservation state of one logical unit, kept in its `LuState` (under the same lock
/// as unit attentions and the SPC-2 reservation).
#[derive(Default)]
pub(crate) struct PrLu {
    pub state: PrState,
    store: Option<Arc<dyn PrStore>>,
    /// Commands that may change the medium and have passed the reservation check, per I_T
    /// nexus, until they complete.
    inflight: HashMap<Nexus, u32>,
    /// Signalled whenever an in-flight count drops.
    drained: Arc<Condvar>,
}

impl fmt::Debug for PrLu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrLu")
            .field("state", &self.state)
            .field("store", &self.store.as_ref().map(|s| s.describe()))
            .field("inflight", &self.inflight.len())
            .finish()
    }
}

impl PrLu {
    /// Make `next` the state: saved first when APTPL is set now, or was (then the saved state
    /// must go away).
    fn commit(&mut self, next: PrState) -> io::Result<()> {
        if next.aptpl || self.state.aptpl {
            if let Some(store) = &self.store {
                store.save(&next)?;
            }
        }
        self.state = next;
        Ok(())
    }
}

fn rules(lu: &LogicalUnit, pr: &PrLu) -> Rules {
    Rules {
        name_only: lu.config().pr_match_initiator_name_only,
        max_registrations: MAX_REGISTRATIONS,
        ptpl_capable: pr.store.is_some(),
    }
}

fn conflict() -> Fail {
    Fail::Status(ScsiStatus::RESERVATION_CONFLICT)
}

/// Marks one admitted command that may change the medium; dropping it ends the mark.
pub(crate) struct Inflight<'a> {
    lu: &'a LogicalUnit,
    nexus: &'a Nexus,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut st = self.lu.state();
        if let Some(n) = st.pr.inflight.get_mut(self.nexus) {
            *n -= 1;
            if *n == 0 {
                st.pr.inflight.remove(self.nexus);
            }
        }
        st.pr.drained.notify_all();
    }
}

/// Dispatch's reservation check (SPC-4 §5.13.1 and SBC-4: commands allowed in the presence of various reservations), done under the
/// logical unit's state lock: RESERVATION CONFLICT, or admission — and for a command that may
/// change the medium, a mark held until it completes (PREEMPT AND ABORT waits for it).
pub(crate) fn admit<'a>(
    st: &mut LuState,
    lu: &'a LogicalUnit,
    nexus: &'a Nexus,
    class: Class,
    cdb: Bytes,
) -> Result<Option<Inflight<'a>>, Fail> {
    let access = class.access(cdb);
    let name_only = lu.config().pr_match_initiator_name_only;
    if st.pr.state.conflicts(nexus, access, name_only) {
        tracing::debug!(initiator = %nexus.initiator_name, ?access, "persistent reservation conflict");
        return Err(conflict());
    }
    if access != Access::Write {
        return Ok(None);
    }
    match st.pr.inflight.get_mut(nexus) {
        Some(n) => *n += 1,
        None => {
            st.pr.inflight.insert(nexus.clone(), 1);
        }
    }
    Ok(Some(Inflight { lu, nexus }))
}

/// What RESERVE(6)/(10) and RELEASE(6)/(10) do while persistent reservations exist (SPC-4
/// §5.13.3, the CRH = 1 behaviour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spc2 {
    /// No registrations: SPC-2 rules apply.
    Proceed,
    /// GOOD without establishing or releasing anything: the I_T nexus holds the persistent
    /// reservation, or is registered while a Registrants Only / All Registrants one exists.
    NoOp,
    /// RESERVATION CONFLICT: persistent reservations are in use.
    Conflict,
}

pub(crate) fn spc2_exception(st: &LuState, lu: &LogicalUnit, nexus: &Nexus) -> Spc2 {
    let pr = &st.pr.state;
    let name_only = lu.config().pr_match_initiator_name_only;
    if pr.registrations.is_empty() && pr.reservation.is_none() {
        return Spc2::Proceed;
    }
    match &pr.reservation {
        Some(res)
            if pr.is_holder(nexus, name_only)
                || (!matches!(res.ty(), PrType::WriteExclusive | PrType::ExclusiveAccess)
                    && pr.find(nexus, name_only).is_some()) =>
        {
            Spc2::NoOp
        }
        // SPC-4 §5.13.3 / SPC-3 §5.6.1: while any I_T nexus is registered, every other RESERVE
        // and RELEASE conflicts.
        _ => Spc2::Conflict,
    }
}

/// PERSISTENT RESERVE IN (SPC-4 §6.15).
pub fn persistent_reserve_in(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let sa = cmd.cdb.u8(1) & 0x1F;
    let alloc = usize::from(cmd.cdb.be16(7));
    let st = lu.state();
    // SPC-4 §5.13.1 (SPC-3 §5.6.1): while an SPC-2 reservation exists, every PERSISTENT
    // RESERVE IN and OUT conflicts, whoever sends it.
    if st.reservation.is_some() {
        return Err(conflict());
    }
    let name_only = lu.config().pr_match_initiator_name_only;
    let pr = &st.pr.state;
    let data = match sa {
        codec::in_sa::READ_KEYS => codec::read_keys(pr),
        codec::in_sa::READ_RESERVATION => codec::read_reservation(pr, name_only),
        codec::in_sa::REPORT_CAPABILITIES => codec::report_capabilities(pr, st.pr.store.is_some()),
        codec::in_sa::READ_FULL_STATUS => codec::read_full_status(pr, name_only),
        _ => return Err(bad_cdb(1, Some(4))),
    };
    Ok(clip(data, alloc))
}

/// PERSISTENT RESERVE OUT (SPC-4 §6.16).
pub fn persistent_reserve_out(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    cmd.expect_out(u64::from(cmd.cdb.be32(5)));
    let from = cmd.nexus();
    let mut st = lu.state();
    if st.reservation.is_some() {
        // SPC-2 reservation present (see persistent_reserve_in).
        return Err(conflict());
    }
    let req = codec::parse_out(cmd.cdb, cmd.data_out)?;
    let rules = rules(lu, &st.pr);
    let mut next = st.pr.state.clone();
    let fx = engine::apply(&mut next, &rules, from, &req)?;
    if fx.changed {
        tracing::info!(
            initiator = %from.initiator_name,
            isid = format_args!("{:012x}", from.isid),
            port = from.target_port.relative_port_id,
            action = ?req.action,
            generation = next.generation,
            registrations = next.registrations.len(),
            reservation = ?next.reservation.as_ref().map(|r| r.ty().name()),
            aptpl = next.aptpl,
            "persistent reservation changed"
        );
        if let Err(e) = st.pr.commit(next) {
            tracing::error!(error = %e, "saving persistent reservation state failed; command refused");
            return Err(SenseReason::InternalTargetFailure.into());
        }
    }
    deliver(&mut st, &fx.ua, from, rules.name_only);
    if fx.abort.is_empty() {
        return Ok(Vec::new());
    }
    // PREEMPT AND ABORT: the transport aborts what it has queued for the preempted I_T
    // nexuses; then wait for what already runs here.
    let victims: Vec<Nexus> = known(&st)
        .filter(|n| n != from && fx.abort.iter().any(|w| w.matches(n, rules.name_only)))
        .collect();
    drop(st);
    if !victims.is_empty() {
        cmd.server.abort_tasks(lu, cmd.req.lun, &victims);
    }
    drain(lu, &fx.abort, from, rules.name_only);
    Ok(Vec::new())
}

/// Every I_T nexus this logical unit knows: those with unit attention state (every nexus that
/// sent it a command) and those with commands in flight.
fn known(st: &LuState) -> impl Iterator<Item = Nexus> + '_ {
    let mut all: Vec<Nexus> = st.ua.nexuses().cloned().collect();
    for n in st.pr.inflight.keys() {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    all.into_iter()
}

/// Establish the unit attentions of `ua` for every known I_T nexus they name, except `from`.
fn deliver(st: &mut LuState, ua: &[(Who, SenseReason)], from: &Nexus, name_only: bool) {
    if ua.is_empty() {
        return;
    }
    let targets: Vec<(Nexus, SenseReason)> = st
        .ua
        .every_nexus()
        .filter(|n| *n != from)
        .flat_map(|n| {
            ua.iter()
                .filter(|(w, _)| w.matches(n, name_only))
                .map(|(_, r)| (n.clone(), *r))
        })
        .collect();
    for (n, r) in targets {
        st.ua.establish(&n, r);
    }
}

/// Wait until no command admitted for an I_T nexus in `victims` (other than `from`) is still
/// running.
fn drain(lu: &LogicalUnit, victims: &[Who], from: &Nexus, name_only: bool) {
    let mut st = lu.state();
    loop {
        let busy = st
            .pr
            .inflight
            .keys()
            .any(|n| n != from && victims.iter().any(|w| w.matches(n, name_only)));
        if !busy {
            return;
        }
        tracing::debug!("PREEMPT AND ABORT: waiting for the preempted I_T nexuses' commands");
        let cv = st.pr.drained.clone();
        st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
    }
}

/// The operator's view and controls.
impl LogicalUnit {
    /// Attach the store persistent reservations are kept in, and restore what it holds
    /// (APTPL state saved before a restart). Call before the logical unit serves anyone. A
    /// store that cannot be read, or holds damaged state, is an error: starting without the
    /// saved registrations could unfence a fenced node.
    pub fn set_pr_store(&self, store: Arc<dyn PrStore>) -> io::Result<()> {
        let loaded = store.load()?;
        let mut st = self.state();
        if let Some(mut saved) = loaded.filter(|s| s.aptpl) {
            let name_only = self.config().pr_match_initiator_name_only;
            saved.check(name_only, MAX_REGISTRATIONS).map_err(|m| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {m}", store.describe()),
                )
            })?;
            // SPC-4 §6.15.2: PRGENERATION is zero after power on.
            saved.generation = 0;
            tracing::info!(
                store = %store.describe(),
                registrations = saved.registrations.len(),
                reservation = ?saved.reservation.as_ref().map(|r| r.ty().name()),
                "restored persistent reservations (APTPL)"
            );
            st.pr.state = saved;
        }
        st.pr.store = Some(store);
        Ok(())
    }

    /// A copy of the persistent reservation state (registrations, reservation and holder,
    /// PRGENERATION, APTPL); serializable for the admin API.
    pub fn pr_state(&self) -> PrState {
        self.state().pr.state.clone()
    }

    /// Drop every registration and the reservation, as PERSISTENT RESERVE OUT CLEAR would
    /// (every registered I_T nexus gets RESERVATIONS PREEMPTED), and save that.
    pub fn pr_clear(&self) -> io::Result<()> {
        let mut st = self.state();
        let mut next = st.pr.state.clone();
        let ua: Vec<(Who, SenseReason)> = next
            .registrations
            .drain(..)
            .map(|r| (r.who, SenseReason::ReservationsPreempted))
            .collect();
        next.reservation = None;
        next.generation = next.generation.wrapping_add(1);
        st.pr.commit(next)?;
        let name_only = self.config().pr_match_initiator_name_only;
        let targets: Vec<Nexus> = st
            .ua
            .nexuses()
            .filter(|n| ua.iter().any(|(w, _)| w.matches(n, name_only)))
            .cloned()
            .collect();
        for n in targets {
            st.ua.establish(&n, SenseReason::ReservationsPreempted);
        }
        tracing::warn!("persistent reservations cleared by the operator");
        Ok(())
    }
}
