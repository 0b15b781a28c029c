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
//!   [`MemPrStore`]).
//! * `shared` — [`SharedPr`]: the state several nodes of a cluster share (its module
//!   documentation has the model).
//! * this file — [`PrLu`], the persistent reservation state a logical unit keeps.
//!
//! The glue to the logical unit — the command handlers, the conflict check and in-flight
//! tracking used by dispatch, and the operator's view — is the `reservations` module, a layer
//! above the logical unit (this module is below it: it knows nothing of logical units).
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
//!   `TaskAborter` the device server holds; the device server then waits until none of their
//!   commands that passed the reservation check before the preemption is still running, so
//!   when GOOD goes back no write from a fenced node can still reach the medium.
//! * Logical unit reset, hard reset (TARGET WARM/COLD RESET) and I_T nexus loss leave
//!   persistent reservations alone (SPC-4 §5.13.1: only a power loss without APTPL clears
//!   them; a TMF any initiator can send must not lift a fence). They do release SPC-2
//!   reservations.
//! * PRGENERATION restarts at zero with the daemon (SPC-4 §6.15.2: "set to zero by a power
//!   on"), whatever APTPL says; registrations and the reservation are restored exactly.

pub(crate) mod codec;
pub(crate) mod engine;
mod shared;
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

use crate::Nexus;

pub use engine::Rules;
pub use shared::{decode_change, encode_change, PrChange, Publish, SharedPr};
pub use state::{Access, Class, PrState, PrType, Registration, Reservation, Who};
pub use store::{FilePrStore, MemPrStore, PrStore};

/// Registrations one logical unit keeps at most (more: INSUFFICIENT REGISTRATION RESOURCES).
pub const MAX_REGISTRATIONS: usize = 512;

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
    /// A cluster's shared state: `state` is then a copy, read at `revision`.
    shared: Option<Arc<dyn SharedPr>>,
    /// The cluster store's revision (`mod_revision`) of the change `state` holds (0: none).
    pub revision: u64,
    /// Whether the copy can be trusted (it is being read again after the store's change feed
    /// broke, or was never read).
    pub trusted: bool,
}

impl fmt::Debug for PrLu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrLu")
            .field("state", &self.state)
            .field("store", &self.store.as_ref().map(|s| s.describe()))
            .field("inflight", &self.inflight.len())
            .field("shared", &self.shared.as_ref().map(|s| s.describe()))
            .field("revision", &self.revision)
            .field("trusted", &self.trusted)
            .finish()
    }
}

impl PrLu {
    /// Make `next` the state: saved first when APTPL is set now, or was (then the saved state
    /// must go away).
    pub(crate) fn commit(&mut self, next: PrState) -> io::Result<()> {
        if next.aptpl || self.state.aptpl {
            if let Some(store) = &self.store {
                store.save(&next)?;
            }
        }
        self.state = next;
        Ok(())
    }

    /// Whether a store keeps the state across restarts (PTPL_C): a local store, or the
    /// cluster's.
    pub(crate) fn has_store(&self) -> bool {
        self.store.is_some() || self.shared.is_some()
    }

    pub(crate) fn shared(&self) -> Option<Arc<dyn SharedPr>> {
        self.shared.clone()
    }

    pub(crate) fn set_shared(&mut self, shared: Arc<dyn SharedPr>) {
        self.shared = Some(shared);
        self.trusted = false;
    }

    /// Whether commands must not be decided from this copy (see `shared`).
    pub(crate) fn in_doubt(&self) -> bool {
        self.shared.is_some() && !self.trusted
    }

    pub(crate) fn set_store(&mut self, store: Arc<dyn PrStore>) {
        self.store = Some(store);
    }

    /// A command of `nexus` that may change the medium passed the reservation check.
    pub(crate) fn enter(&mut self, nexus: &Nexus) {
        match self.inflight.get_mut(nexus) {
            Some(n) => *n += 1,
            None => {
                self.inflight.insert(nexus.clone(), 1);
            }
        }
    }

    /// A command counted by [`PrLu::enter`] completed.
    pub(crate) fn leave(&mut self, nexus: &Nexus) {
        if let Some(n) = self.inflight.get_mut(nexus) {
            *n -= 1;
            if *n == 0 {
                self.inflight.remove(nexus);
            }
        }
        self.drained.notify_all();
    }

    /// The I_T nexuses with such commands running.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &Nexus> {
        self.inflight.keys()
    }

    /// Signalled whenever an in-flight count drops (wait on it with the `LuState` lock).
    pub(crate) fn drained(&self) -> Arc<Condvar> {
        self.drained.clone()
    }
}
