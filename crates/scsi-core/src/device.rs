//! The SCSI target device (SAM-5 §4.6.1): what one iSCSI target is to SCSI. It owns its target
//! ports (one per portal group), its logical units (each with its one task set, see
//! `task_set`) and the transport's hook for aborting tasks; what an initiator sees of it is a
//! LUN map onto it (a `DeviceServer` made with `DeviceServer::on`, a layer above this one).
//!
//! Target-wide effects go through the device, not through one initiator's map: a TARGET WARM
//! or COLD RESET resets every logical unit (SAM-5 §7.6, §7.7), an I_T nexus loss releases what
//! the nexus held on every logical unit (even one unmapped from its view meanwhile), and
//! PREEMPT AND ABORT reaches the transport through the device's aborter.
//!
//! The device also owns its ALUA target port groups (`alua`, SPC-4 §5.16): every change of a
//! group's state or membership establishes ASYMMETRIC ACCESS STATE CHANGED for every I_T nexus
//! of every logical unit (but the one whose SET TARGET PORT GROUPS made it), and a change an
//! initiator made is reported to the daemon's [`AluaObserver`] so that it is saved.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::alua::{Alua, AluaGroup, Change, SetError};
use crate::lu::LogicalUnit;
use crate::sense::SenseReason;
use crate::{Nexus, TargetPort};

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

/// The daemon's side of explicit ALUA transitions: an initiator changed target port group
/// states with SET TARGET PORT GROUPS (SPC-4 §6.45), and the new states should outlive a
/// restart.
pub trait AluaObserver: Send + Sync {
    fn explicit_change(&self, device: &TargetDevice);
}

/// One SCSI target device (see the module docs).
pub struct TargetDevice {
    name: String,
    /// By relative target port identifier (SPC-4 §7.8.6.x: unique within the device).
    ports: RwLock<BTreeMap<u16, Arc<TargetPort>>>,
    /// By the target's own LUN id (what LUN maps map to).
    lus: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
    aborter: RwLock<Option<Arc<dyn TaskAborter>>>,
    alua: Alua,
    alua_observer: RwLock<Option<Arc<dyn AluaObserver>>>,
}

impl fmt::Debug for TargetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetDevice")
            .field("name", &self.name)
            .field("ports", &self.ports.read().map(|p| p.len()).unwrap_or(0))
            .field("lus", &self.lu_ids())
            .finish()
    }
}

impl TargetDevice {
    pub fn new(name: &str) -> Arc<TargetDevice> {
        Arc::new(TargetDevice {
            name: name.to_string(),
            ports: RwLock::new(BTreeMap::new()),
            lus: RwLock::new(BTreeMap::new()),
            aborter: RwLock::new(None),
            alua: Alua::new(),
            alua_observer: RwLock::new(None),
        })
    }

    /// The iSCSI target name.
    pub fn name(&self) -> &str {
        &self.name
    }

    // ---- target ports ---------------------------------------------------------------------

    /// The target port with relative port identifier `id`, made if it is new: the same object
    /// for as long as the port exists, so every nexus through it names the same port.
    pub fn port(&self, id: u16, tpg_tag: u16) -> Arc<TargetPort> {
        let mut g = self.ports.write().unwrap_or_else(|e| e.into_inner());
        g.entry(id)
            .or_insert_with(|| {
                Arc::new(TargetPort {
                    target_name: self.name.clone(),
                    tpg_tag,
                    relative_port_id: id,
                })
            })
            .clone()
    }

    /// Every target port, by relative port identifier.
    pub fn ports(&self) -> Vec<Arc<TargetPort>> {
        let g = self.ports.read().unwrap_or_else(|e| e.into_inner());
        g.values().cloned().collect()
    }

    /// Keep only the ports with these relative port identifiers.
    pub fn retain_ports(&self, ids: &[u16]) {
        let mut g = self.ports.write().unwrap_or_else(|e| e.into_inner());
        g.retain(|id, _| ids.contains(id));
    }

    // ---- logical units --------------------------------------------------------------------

    pub fn lu(&self, id: u64) -> Option<Arc<LogicalUnit>> {
        let g = self.lus.read().unwrap_or_else(|e| e.into_inner());
        g.get(&id).cloned()
    }

    /// The device's LUN ids, in order.
    pub fn lu_ids(&self) -> Vec<u64> {
        let g = self.lus.read().unwrap_or_else(|e| e.into_inner());
        g.keys().copied().collect()
    }

    /// Every logical unit with its id.
    pub fn lus(&self) -> Vec<(u64, Arc<LogicalUnit>)> {
        let g = self.lus.read().unwrap_or_else(|e| e.into_inner());
        g.iter().map(|(&id, lu)| (id, lu.clone())).collect()
    }

    /// The target LUN id of `lu`, if it is one of the device's.
    pub fn id_of(&self, lu: &LogicalUnit) -> Option<u64> {
        let g = self.lus.read().unwrap_or_else(|e| e.into_inner());
        g.iter()
            .find(|(_, l)| std::ptr::eq(l.as_ref(), lu))
            .map(|(&id, _)| id)
    }

    /// Make the device hold exactly `lus` (by id): logical units not among them leave it.
    pub fn set_lus(&self, lus: BTreeMap<u64, Arc<LogicalUnit>>) {
        *self.lus.write().unwrap_or_else(|e| e.into_inner()) = lus;
    }

    // ---- ALUA target port groups (SPC-4 §5.16) ---------------------------------------------

    /// The target port groups, for reading.
    pub fn alua(&self) -> &Alua {
        &self.alua
    }

    /// Set the target port groups as configured (an implicit transition, see
    /// [`Alua::configure`]); if anything changed, every I_T nexus hears of it. When the result
    /// says `transitioning`, call [`TargetDevice::finish_alua_transition`] after the transition
    /// time.
    pub fn configure_alua(&self, groups: Vec<AluaGroup>, transition_secs: u8) -> Change {
        let change = self.alua.configure(groups, transition_secs);
        if change.changed {
            self.alua_changed(None);
        }
        change
    }

    /// End the implicit transition begun at `generation` (false if superseded meanwhile).
    pub fn finish_alua_transition(&self, generation: u64) -> bool {
        let done = self.alua.finish(generation);
        if done {
            self.alua_changed(None);
        }
        done
    }

    /// SET TARGET PORT GROUPS from `from` (SPC-4 §6.45): an explicit transition.
    pub(crate) fn set_target_port_groups(&self, from: &Nexus, list: &[u8]) -> Result<(), SetError> {
        if self.alua.set_explicit(list)? {
            // SPC-4 §5.16.2.6: every I_T nexus but the one the command came through.
            self.alua_changed(Some(from));
            let observer = self
                .alua_observer
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(o) = observer {
                o.explicit_change(self);
            }
        }
        Ok(())
    }

    /// Install the daemon's hook for explicit transitions.
    pub fn set_alua_observer(&self, observer: Arc<dyn AluaObserver>) {
        *self
            .alua_observer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// ASYMMETRIC ACCESS STATE CHANGED for every I_T nexus of every logical unit (SPC-4
    /// §5.16.2.6), but `except`.
    fn alua_changed(&self, except: Option<&Nexus>) {
        for (_, lu) in self.lus() {
            lu.state()
                .ua
                .establish_all(SenseReason::AsymmetricAccessStateChanged, except);
        }
    }

    // ---- target-wide effects --------------------------------------------------------------

    /// TARGET WARM RESET or COLD RESET (SAM-5 §7.6, §7.7): every logical unit is reset (its
    /// unit attention for every I_T nexus, its mode pages and reservations as a hard reset
    /// leaves them). The transport ends the tasks.
    pub fn reset(&self) {
        for (_, lu) in self.lus() {
            lu.hard_reset();
        }
    }

    /// I_T nexus loss (SAM-5 §6.3.4): what the nexus held on any logical unit goes.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for (_, lu) in self.lus() {
            lu.nexus_lost(nexus);
        }
    }

    /// Install the transport's hook that PREEMPT AND ABORT uses (SPC-4 §5.13.11.2.5).
    pub fn set_task_aborter(&self, aborter: Arc<dyn TaskAborter>) {
        *self.aborter.write().unwrap_or_else(|e| e.into_inner()) = Some(aborter);
    }

    pub(crate) fn task_aborter(&self) -> Option<Arc<dyn TaskAborter>> {
        self.aborter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
