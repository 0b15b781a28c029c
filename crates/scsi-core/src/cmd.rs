//! One command in flight as its handler sees it ([`Cmd`]), the sense helper handlers share,
//! and the [`Effect`]s a handler leaves to the device server.
//!
//! A handler works on its logical unit and answers with data or a failure; what reaches beyond
//! the logical unit (the transport's tasks) it does not do itself: it records an effect with
//! [`Cmd::then`], and the device server carries it out once the handler has returned, before
//! the command's status goes back.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::alua::AccessState;
use crate::cdb::{Bytes, Fail};
use crate::device::TargetDevice;
use crate::lu::LogicalUnit;
use crate::luns::LunMap;
use crate::pr::Who;
use crate::sense::{Sense, SenseReason};
use crate::{Nexus, ScsiRequest};

/// One command in flight, as handlers see it.
pub struct Cmd<'a> {
    pub req: &'a ScsiRequest<'a>,
    pub cdb: Bytes<'a>,
    pub data_out: Bytes<'a>,
    /// The logical units of the device server the command arrived through (REPORT LUNS,
    /// EXTENDED COPY targets).
    pub luns: &'a LunMap,
    /// The addressed logical unit, if it exists (shared: an operation that outlives the
    /// command keeps it).
    pub lu: Option<&'a Arc<LogicalUnit>>,
    /// The LU is mapped read-only for this view (DATA PROTECT on writes).
    pub read_only: bool,
    /// The target device the view is of (none in tests of a bare LUN map).
    pub device: Option<&'a TargetDevice>,
    out_len: Cell<u32>,
    effects: RefCell<Vec<Effect>>,
}

impl<'a> Cmd<'a> {
    pub(crate) fn new(
        req: &'a ScsiRequest<'a>,
        luns: &'a LunMap,
        lu: Option<&'a Arc<LogicalUnit>>,
        read_only: bool,
        device: Option<&'a TargetDevice>,
    ) -> Self {
        Self {
            req,
            cdb: Bytes(req.cdb),
            data_out: Bytes(req.data_out),
            luns,
            lu,
            read_only,
            device,
            out_len: Cell::new(0),
            effects: RefCell::new(Vec::new()),
        }
    }

    /// Record how many data-out bytes the CDB asks for (for the transport's residual).
    pub fn expect_out(&self, bytes: u64) {
        self.out_len.set(u32::try_from(bytes).unwrap_or(u32::MAX));
    }

    /// The data-out bytes the CDB asked for (see [`Cmd::expect_out`]).
    pub(crate) fn out_len(&self) -> u32 {
        self.out_len.get()
    }

    pub fn nexus(&self) -> &Nexus {
        self.req.nexus
    }

    /// The relative target port identifier of the port the command came through.
    pub fn port_id(&self) -> u16 {
        self.req.nexus.target_port.relative_port_id
    }

    /// The ALUA access state of the port the command came through (SPC-4 §5.16).
    pub fn access_state(&self) -> AccessState {
        self.device.map_or(AccessState::ActiveOptimized, |d| {
            d.alua().state_of(self.port_id())
        })
    }

    /// The target port group of the port the command came through.
    pub fn port_group(&self) -> u16 {
        self.device.map_or(1, |d| d.alua().group_of(self.port_id()))
    }

    /// The transport has aborted this task.
    pub fn cancelled(&self) -> bool {
        self.req.cancel.is_some_and(|c| c.load(Ordering::Acquire))
    }

    /// Leave `effect` to the device server: it is carried out after the handler returns,
    /// before the command completes.
    pub(crate) fn then(&self, effect: Effect) {
        self.effects.borrow_mut().push(effect);
    }

    /// The effects the handler left, in the order it left them.
    pub(crate) fn take_effects(&self) -> Vec<Effect> {
        self.effects.take()
    }
}

/// What a handler asks of the device server beyond its logical unit.
#[derive(Debug)]
pub(crate) enum Effect {
    /// PREEMPT AND ABORT (SPC-4 §5.13.11.2.5): have the transport abort every task of
    /// `nexuses` for the addressed logical unit, then wait until no command of an I_T nexus
    /// that `preempted` names (other than the sender's) that passed the reservation check
    /// before the preemption is still running.
    AbortTasks {
        nexuses: Vec<Nexus>,
        preempted: Vec<Who>,
    },
}

/// Sense helper for handlers: a backstore error, logged, mapped to a medium error.
pub(crate) fn io_fail(what: &str, reason: SenseReason, e: &std::io::Error) -> Fail {
    tracing::error!(error = %e, "backstore {what} failed");
    Fail::Check(Sense::new(reason))
}
