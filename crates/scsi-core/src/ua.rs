//! Unit attention conditions, kept per I_T nexus for one logical unit (SPC-4 §5.14 / SAM-5 §5.14).
//!
//! A nexus the logical unit has never seen starts with POWER ON, RESET, OR BUS DEVICE RESET
//! OCCURRED pending (when the logical unit is configured to report it): from its point of view
//! the logical unit has just powered on. Reporting a unit attention clears it (the control mode
//! page UA_INTLCK_CTRL field is 00b).
//!
//! Why the power-on UA is safe with real initiators: Linux, ESXi and Windows retry on a UA, and
//! libiscsi's login path (`iscsi_full_connect_sync`) sends TEST UNIT READY until it stops
//! returning UNIT ATTENTION (up to 10 times) before handing the session to the caller.

use std::collections::{HashMap, VecDeque};

use crate::sense::SenseReason;
use crate::Nexus;

/// SPC-4 §5.14: a device server may queue more than one unit attention; we bound the queue so
/// a nexus that never sends a command cannot grow it without limit.
const MAX_PENDING: usize = 8;

#[derive(Debug, Default)]
pub struct UnitAttentions {
    nexuses: HashMap<Nexus, VecDeque<SenseReason>>,
}

impl UnitAttentions {
    /// Register a nexus seen for the first time; it starts with the power-on UA if `power_on`.
    fn insert_new(&mut self, nexus: &Nexus, power_on: bool) -> &mut VecDeque<SenseReason> {
        self.nexuses.entry(nexus.clone()).or_insert_with(|| {
            let mut q = VecDeque::new();
            if power_on {
                q.push_back(SenseReason::PowerOnOrReset);
            }
            q
        })
    }

    /// Take the oldest pending unit attention for `nexus` (registering the nexus on first sight).
    pub fn take(&mut self, nexus: &Nexus, power_on: bool) -> Option<SenseReason> {
        if let Some(q) = self.nexuses.get_mut(nexus) {
            return q.pop_front();
        }
        self.insert_new(nexus, power_on).pop_front()
    }

    /// Register `nexus` without consuming anything (INQUIRY / REPORT LUNS also count as seeing
    /// the nexus).
    pub fn touch(&mut self, nexus: &Nexus, power_on: bool) {
        if !self.nexuses.contains_key(nexus) {
            self.insert_new(nexus, power_on);
        }
    }

    /// Queue `reason` for every known nexus except `except`.
    pub fn establish_all(&mut self, reason: SenseReason, except: Option<&Nexus>) {
        for (n, q) in self.nexuses.iter_mut() {
            if Some(n) == except {
                continue;
            }
            push(q, reason);
        }
    }

    /// A reset: every known nexus loses whatever was pending and sees `reason` instead.
    pub fn reset_all(&mut self, reason: SenseReason) {
        for q in self.nexuses.values_mut() {
            q.clear();
            q.push_back(reason);
        }
    }

    /// Queue `reason` for one known nexus (persistent reservation unit attentions).
    pub fn establish(&mut self, nexus: &Nexus, reason: SenseReason) {
        if let Some(q) = self.nexuses.get_mut(nexus) {
            push(q, reason);
        }
    }

    /// Every nexus this logical unit has seen.
    pub fn nexuses(&self) -> impl Iterator<Item = &Nexus> {
        self.nexuses.keys()
    }

    /// Forget `nexus` (I_T nexus loss). If it comes back it is a new nexus again.
    pub fn forget(&mut self, nexus: &Nexus) {
        self.nexuses.remove(nexus);
    }

    #[cfg(test)]
    pub fn pending(&self, nexus: &Nexus) -> Vec<SenseReason> {
        self.nexuses
            .get(nexus)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn push(q: &mut VecDeque<SenseReason>, reason: SenseReason) {
    if q.contains(&reason) {
        return;
    }
    if q.len() >= MAX_PENDING {
        q.pop_back();
    }
    q.push_back(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetPort;
    use std::sync::Arc;

    fn nexus(isid: u64) -> Nexus {
        Nexus {
            initiator_name: "iqn.2024-01.test:init".into(),
            isid,
            target_port: Arc::new(TargetPort {
                target_name: "iqn.2024-01.test:tgt".into(),
                tpg_tag: 1,
                relative_port_id: 1,
            }),
        }
    }

    #[test]
    fn power_on_once_per_nexus() {
        let mut ua = UnitAttentions::default();
        let a = nexus(1);
        assert_eq!(ua.take(&a, true), Some(SenseReason::PowerOnOrReset));
        assert_eq!(ua.take(&a, true), None);
        let b = nexus(2);
        assert_eq!(ua.take(&b, false), None);
        assert_eq!(ua.take(&b, true), None);
    }

    #[test]
    fn establish_and_reset() {
        let mut ua = UnitAttentions::default();
        let (a, b) = (nexus(1), nexus(2));
        ua.touch(&a, false);
        ua.touch(&b, false);
        ua.establish_all(SenseReason::ModeParametersChanged, Some(&a));
        assert_eq!(ua.pending(&a), vec![]);
        assert_eq!(ua.pending(&b), vec![SenseReason::ModeParametersChanged]);
        ua.establish_all(SenseReason::ModeParametersChanged, Some(&a));
        assert_eq!(ua.pending(&b).len(), 1, "duplicates are not queued twice");
        ua.reset_all(SenseReason::BusDeviceResetFunction);
        assert_eq!(ua.pending(&a), vec![SenseReason::BusDeviceResetFunction]);
        assert_eq!(ua.pending(&b), vec![SenseReason::BusDeviceResetFunction]);
        ua.forget(&a);
        assert_eq!(ua.take(&a, true), Some(SenseReason::PowerOnOrReset));
    }

    #[test]
    fn queue_is_bounded() {
        let mut ua = UnitAttentions::default();
        let a = nexus(1);
        ua.touch(&a, false);
        for r in [
            SenseReason::ModeParametersChanged,
            SenseReason::CapacityDataChanged,
            SenseReason::ReportedLunsDataChanged,
            SenseReason::ReservationsPreempted,
            SenseReason::ItNexusLoss,
            SenseReason::PowerOnOrReset,
            SenseReason::BusDeviceResetFunction,
            SenseReason::NotReady,
            SenseReason::MediumNotPresent,
            SenseReason::WriteError,
        ] {
            ua.establish_all(r, None);
        }
        assert_eq!(ua.pending(&a).len(), MAX_PENDING);
    }
}
