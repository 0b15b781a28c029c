//! The persistent reservation commands and checks on a logical unit: PERSISTENT RESERVE IN
//! (SPC-4 §6.15) and OUT (§6.16), the conflict check and in-flight tracking dispatch applies
//! to every command (§5.13.1), what SPC-2 RESERVE / RELEASE do while persistent reservations
//! exist (§5.13.3), and the operator's view. The rules, wire formats and stores they use are
//! in `pr`; the state is the logical unit's (`PrLu` in its `LuState`).
//!
//! PREEMPT AND ABORT does not reach the transport from here: PERSISTENT RESERVE OUT leaves an
//! [`Effect::AbortTasks`] that the device server carries out (the transport's
//! `TaskAborter`, then [`drain`]).

use std::io;
use std::sync::Arc;

use crate::cdb::{bad_cdb, clip, Bytes, CmdResult, Fail};
use crate::cmd::{Cmd, Effect};
use crate::lu::{LogicalUnit, LuState};
use crate::pr::{
    codec, engine, Access, Class, PrChange, PrLu, PrState, PrStore, PrType, Publish, Rules,
    SharedPr, Who, MAX_REGISTRATIONS,
};
use crate::sense::SenseReason;
use crate::{Nexus, ScsiStatus};

fn rules(lu: &LogicalUnit, pr: &PrLu) -> Rules {
    Rules {
        name_only: lu.config().pr_match_initiator_name_only,
        max_registrations: MAX_REGISTRATIONS,
        ptpl_capable: pr.has_store(),
    }
}

fn conflict() -> Fail {
    Fail::Status(ScsiStatus::RESERVATION_CONFLICT)
}

/// A clustered logical unit whose copy of the shared state is in doubt (`pr::shared`): the
/// command is not decided from it. BUSY (SAM-5 §5.3.1) makes initiators retry later.
fn in_doubt() -> Fail {
    Fail::Status(ScsiStatus::BUSY)
}

/// Marks one admitted command that may change the medium; dropping it ends the mark.
pub(crate) struct Inflight<'a> {
    lu: &'a LogicalUnit,
    nexus: &'a Nexus,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.lu.state().pr.leave(self.nexus);
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
    if access != Access::Allowed && st.pr.in_doubt() {
        return Err(in_doubt());
    }
    if st.pr.state.conflicts(nexus, access, name_only) {
        tracing::debug!(initiator = %nexus.initiator_name, ?access, "persistent reservation conflict");
        return Err(conflict());
    }
    if access != Access::Write {
        return Ok(None);
    }
    st.pr.enter(nexus);
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
    if st.pr.in_doubt() {
        return Err(in_doubt());
    }
    let name_only = lu.config().pr_match_initiator_name_only;
    let pr = &st.pr.state;
    let data = match sa {
        codec::in_sa::READ_KEYS => codec::read_keys(pr),
        codec::in_sa::READ_RESERVATION => codec::read_reservation(pr, name_only),
        codec::in_sa::REPORT_CAPABILITIES => codec::report_capabilities(pr, st.pr.has_store()),
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
    if let Some(shared) = st.pr.shared() {
        drop(st);
        return shared_reserve_out(cmd, lu, &*shared, &req);
    }
    let rules = rules(lu, &st.pr);
    let mut next = st.pr.state.clone();
    let fx = engine::apply(&mut next, &rules, from, &req)?;
    if fx.changed {
        log_change(from, &req, &next);
        if let Err(e) = st.pr.commit(next) {
            tracing::error!(error = %e, "saving persistent reservation state failed; command refused");
            return Err(SenseReason::InternalTargetFailure.into());
        }
    }
    deliver(&mut st, &fx.ua, Some(&Who::exact(from)), rules.name_only);
    if fx.abort.is_empty() {
        return Ok(Vec::new());
    }
    // PREEMPT AND ABORT: the transport aborts what it has queued for the preempted I_T
    // nexuses; then the command waits for what already runs here (both done by the device
    // server, see `drain`).
    let victims = victims(&st, &fx.abort, Some(&Who::exact(from)), rules.name_only);
    cmd.then(Effect::AbortTasks {
        nexuses: victims,
        preempted: fx.abort,
    });
    Ok(Vec::new())
}

fn log_change(from: &Nexus, req: &codec::OutRequest, next: &PrState) {
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
}

/// Attempts at a clustered PERSISTENT RESERVE OUT that lose the race to other nodes' changes
/// before it answers BUSY.
const SHARED_ATTEMPTS: usize = 8;

/// PERSISTENT RESERVE OUT on a clustered logical unit (`pr::shared`): computed on the copy like
/// on one node, then published with a compare-and-swap on the copy's revision; the unit
/// attentions and aborts happen on every node as each applies the change, before `publish`
/// returns.
fn shared_reserve_out(
    cmd: &Cmd,
    lu: &LogicalUnit,
    shared: &dyn SharedPr,
    req: &codec::OutRequest,
) -> CmdResult {
    let from = cmd.nexus();
    for _ in 0..SHARED_ATTEMPTS {
        let st = lu.state();
        if st.reservation.is_some() {
            return Err(conflict());
        }
        if st.pr.in_doubt() {
            return Err(in_doubt());
        }
        let base = st.pr.revision;
        let rules = rules(lu, &st.pr);
        let mut next = st.pr.state.clone();
        let fx = engine::apply(&mut next, &rules, from, req)?;
        drop(st);
        if !fx.changed {
            return Ok(Vec::new());
        }
        let change = PrChange {
            id: change_id(from),
            state: next,
            from: Some(Who::exact(from)),
            ua: fx.ua,
            abort: fx.abort,
        };
        match shared.publish(base, &change, &|| lu.pr_revision(), &|| cmd.cancelled()) {
            Ok(()) => {
                log_change(from, req, &change.state);
                return Ok(Vec::new());
            }
            Err(Publish::Stale) => continue,
            Err(Publish::Unavailable(m)) => {
                tracing::warn!(store = %shared.describe(), "persistent reservation change not made: {m}");
                return Err(in_doubt());
            }
        }
    }
    tracing::warn!("persistent reservation change lost the race {SHARED_ATTEMPTS} times; BUSY");
    Err(in_doubt())
}

/// An identifier no other change is likely to have: the clock, a process-wide counter and the
/// sender, hashed.
fn change_id(from: &Nexus) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!(
        "{now}/{n}/{}/{}/{}/{}",
        std::process::id(),
        from.initiator_name,
        from.isid,
        from.target_port.relative_port_id
    );
    crate::lu::fnv1a64(seed.as_bytes()) | 1
}

/// The I_T nexuses this logical unit knows that `abort` names, except `except`.
fn victims(st: &LuState, abort: &[Who], except: Option<&Who>, name_only: bool) -> Vec<Nexus> {
    if abort.is_empty() {
        return Vec::new();
    }
    known(st)
        .filter(|n| !except.is_some_and(|e| e.matches(n, false)))
        .filter(|n| abort.iter().any(|w| w.matches(n, name_only)))
        .collect()
}

/// Every I_T nexus this logical unit knows: those with unit attention state (every nexus that
/// sent it a command) and those with commands in flight.
fn known(st: &LuState) -> impl Iterator<Item = Nexus> + '_ {
    let mut all: Vec<Nexus> = st.ua.nexuses().cloned().collect();
    for n in st.pr.in_flight() {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    all.into_iter()
}

/// Establish the unit attentions of `ua` for every known I_T nexus they name, except the one
/// `except` names exactly (the sender).
fn deliver(st: &mut LuState, ua: &[(Who, SenseReason)], except: Option<&Who>, name_only: bool) {
    if ua.is_empty() {
        return;
    }
    let targets: Vec<(Nexus, SenseReason)> = st
        .ua
        .every_nexus()
        .filter(|n| !except.is_some_and(|e| e.matches(n, false)))
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

/// The end of PREEMPT AND ABORT, once the transport has aborted the preempted tasks: wait until
/// no command admitted for an I_T nexus in `victims` (other than the one `except` names) is
/// still running.
pub(crate) fn drain(lu: &LogicalUnit, victims: &[Who], except: Option<&Who>) {
    let name_only = lu.config().pr_match_initiator_name_only;
    let mut st = lu.state();
    loop {
        let busy = st.pr.in_flight().any(|n| {
            !except.is_some_and(|e| e.matches(n, false))
                && victims.iter().any(|w| w.matches(n, name_only))
        });
        if !busy {
            return;
        }
        tracing::debug!("PREEMPT AND ABORT: waiting for the preempted I_T nexuses' commands");
        let cv = st.pr.drained();
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
        st.pr.set_store(store);
        Ok(())
    }

    /// A copy of the persistent reservation state (registrations, reservation and holder,
    /// PRGENERATION, APTPL); serializable for the admin API.
    pub fn pr_state(&self) -> PrState {
        self.state().pr.state.clone()
    }

    /// Drop every registration and the reservation, as PERSISTENT RESERVE OUT CLEAR would
    /// (every registered I_T nexus gets RESERVATIONS PREEMPTED), and save that. On a clustered
    /// logical unit the change is published to every node (blocks until they applied it).
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
        if let Some(shared) = st.pr.shared() {
            let base = st.pr.revision;
            drop(st);
            let change = PrChange {
                id: crate::lu::fnv1a64(
                    format!("clear/{base}/{:?}", std::time::SystemTime::now()).as_bytes(),
                ) | 1,
                state: next,
                from: None,
                ua,
                abort: Vec::new(),
            };
            return match shared.publish(base, &change, &|| self.pr_revision(), &|| false) {
                Ok(()) => {
                    tracing::warn!(
                        "persistent reservations cleared by the operator (cluster-wide)"
                    );
                    Ok(())
                }
                Err(Publish::Stale) => Err(io::Error::other(
                    "another node changed the reservations meanwhile; look again and retry",
                )),
                Err(Publish::Unavailable(m)) => Err(io::Error::other(m)),
            };
        }
        st.pr.commit(next)?;
        let name_only = self.config().pr_match_initiator_name_only;
        deliver(&mut st, &ua, None, name_only);
        tracing::warn!("persistent reservations cleared by the operator");
        Ok(())
    }

    /// Share this logical unit's persistent reservation state with the other nodes of a
    /// cluster (`pr::shared`). The copy is in doubt — commands it decides get BUSY — until the
    /// first [`apply_shared_pr`](Self::apply_shared_pr) with `resync`.
    pub fn set_shared_pr(&self, shared: Arc<dyn SharedPr>) {
        self.state().pr.set_shared(shared);
    }

    /// The cluster store's revision of the change the copy holds (0: none).
    pub fn pr_revision(&self) -> u64 {
        self.state().pr.revision
    }

    /// The copy may be behind (the change feed broke): answer BUSY until the next resync.
    pub fn pr_in_doubt(&self) {
        self.state().pr.trusted = false;
    }

    /// Apply a change of the shared state stored at revision `revision` (its `mod_revision`),
    /// or with `None` the absence of any (known at store revision `revision`; empty state, copy
    /// revision 0 — the revision a compare-and-swap then expects). Establishes the change's unit
    /// attentions for this node's I_T nexuses (not the sender's) and returns the I_T nexuses
    /// whose tasks the transport must abort before [`drain_preempted`](Self::drain_preempted).
    /// A change at or below the copy's revision is ignored. With `resync` (the state read
    /// again in full) the copy is trusted afterwards; the effects of a change this node had not
    /// seen are still applied.
    pub fn apply_shared_pr(
        &self,
        revision: u64,
        change: Option<&PrChange>,
        resync: bool,
    ) -> Vec<Nexus> {
        let name_only = self.config().pr_match_initiator_name_only;
        let mut st = self.state();
        if resync {
            st.pr.trusted = true;
        }
        if revision <= st.pr.revision {
            return Vec::new();
        }
        let Some(c) = change else {
            st.pr.state = PrState::default();
            st.pr.revision = 0;
            return Vec::new();
        };
        st.pr.revision = revision;
        if let Err(m) = c.state.check(name_only, MAX_REGISTRATIONS) {
            // Another node wrote a state this one cannot enforce (a different
            // pr_match_initiator_name_only, or a newer version): keep nothing stale.
            tracing::error!("shared persistent reservation state refused ({m}); copy in doubt");
            st.pr.trusted = false;
            return Vec::new();
        }
        st.pr.state = c.state.clone();
        deliver(&mut st, &c.ua, c.from.as_ref(), name_only);
        victims(&st, &c.abort, c.from.as_ref(), name_only)
    }

    /// Wait until no command of the I_T nexuses `change` preempted and aborted is still
    /// running here (the end of PREEMPT AND ABORT on this node).
    pub fn drain_preempted(&self, change: &PrChange) {
        if !change.abort.is_empty() {
            drain(self, &change.abort, change.from.as_ref());
        }
    }
}
