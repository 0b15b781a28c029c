//! Unit attention conditions, kept per I_T nexus for one logical unit (SPC-4 §5.14 / SAM-5 §5.14).
//!
//! A nexus the logical unit has never seen starts with POWER ON, RESET, OR BUS DEVICE RESET
//! OCCURRED pending (when the logical unit is configured to report it): from its point of view
//! the logical unit has just powered on. Reporting a unit attention clears it (the control mode
//! page UA_INTLCK_CTRL field is 00b).
//!
//! I_T nexus loss (SAM-5: the device server reports I_T NEXUS LOSS OCCURRED, 29h/07h): the nexus is set aside
//! with what it had pending plus I_T NEXUS LOSS OCCURRED, and unit attentions established for
//! it while it is away (a PREEMPT that took its registration, a reset) are kept for it. When the
//! initiator port logs in again it is the same I_T nexus and gets them, instead of the power-on
//! UA of a nexus never seen. The set of lost nexuses is bounded ([`MAX_LOST`], oldest dropped):
//! a dropped one is simply new again when it returns.
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

/// Lost I_T nexuses remembered for when they return.
const MAX_LOST: usize = 1024;

#[derive(Debug, Default)]
pub struct UnitAttentions {
    nexuses: HashMap<Nexus, VecDeque<SenseReason>>,
    /// Nexuses lost, oldest first, with what they will find when they return.
    lost: VecDeque<(Nexus, VecDeque<SenseReason>)>,
}

impl UnitAttentions {
    /// Register a nexus not currently known: a lost one that returns gets back what was kept
    /// for it; one never seen starts with the power-on UA if `power_on`.
    fn insert_new(&mut self, nexus: &Nexus, power_on: bool) -> &mut VecDeque<SenseReason> {
        let kept = self
            .lost
            .iter()
            .position(|(n, _)| n == nexus)
            .and_then(|i| self.lost.remove(i))
            .map(|(_, q)| q);
        self.nexuses.entry(nexus.clone()).or_insert_with(|| {
            kept.unwrap_or_else(|| {
                let mut q = VecDeque::new();
                if power_on {
                    q.push_back(SenseReason::PowerOnOrReset);
                }
                q
            })
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

    /// Queue `reason` for every known nexus except `except`, lost ones included.
    pub fn establish_all(&mut self, reason: SenseReason, except: Option<&Nexus>) {
        let live = self.nexuses.iter_mut();
        let lost = self.lost.iter_mut().map(|(n, q)| (&*n, q));
        for (n, q) in live.chain(lost) {
            if Some(n) == except {
                continue;
            }
            push(q, reason);
        }
    }

    /// A reset: every known nexus, lost ones included, loses whatever was pending and sees
    /// `reason` instead.
    pub fn reset_all(&mut self, reason: SenseReason) {
        let lost = self.lost.iter_mut().map(|(_, q)| q);
        for q in self.nexuses.values_mut().chain(lost) {
            q.clear();
            q.push_back(reason);
        }
    }

    /// Queue `reason` for one known nexus, live or lost (persistent reservation unit
    /// attentions: a registrant preempted while it was away learns it when it returns).
    pub fn establish(&mut self, nexus: &Nexus, reason: SenseReason) {
        if let Some(q) = self.nexuses.get_mut(nexus) {
            push(q, reason);
        } else if let Some((_, q)) = self.lost.iter_mut().find(|(n, _)| n == nexus) {
            push(q, reason);
        }
    }

    /// Every nexus this logical unit knows and that is not lost.
    pub fn nexuses(&self) -> impl Iterator<Item = &Nexus> {
        self.nexuses.keys()
    }

    /// Every nexus this logical unit knows, lost ones (still remembered) included: who a
    /// unit attention can be established for.
    pub fn every_nexus(&self) -> impl Iterator<Item = &Nexus> {
        self.nexuses.keys().chain(self.lost.iter().map(|(n, _)| n))
    }

    /// I_T nexus loss: set `nexus` aside with what it had pending, plus I_T NEXUS LOSS
    /// OCCURRED first if `report` (the LU reports such lifecycle unit attentions).
    pub fn lose(&mut self, nexus: &Nexus, report: bool) {
        let Some(mut q) = self.nexuses.remove(nexus) else {
            return;
        };
        if report {
            q.retain(|r| *r != SenseReason::PowerOnOrReset);
            q.push_front(SenseReason::ItNexusLoss);
            q.truncate(MAX_PENDING);
        }
        if self.lost.len() >= MAX_LOST {
            self.lost.pop_front();
        }
        self.lost.push_back((nexus.clone(), q));
    }

    #[cfg(test)]
    pub fn pending(&self, nexus: &Nexus) -> Vec<SenseReason> {
        self.nexuses
            .get(nexus)
            .or_else(|| self.lost.iter().find(|(n, _)| n == nexus).map(|(_, q)| q))
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
        // Nexus loss: the nexus returns with I_T NEXUS LOSS OCCURRED, then what was pending.
        ua.lose(&a, true);
        assert_eq!(ua.take(&a, true), Some(SenseReason::ItNexusLoss));
        assert_eq!(ua.take(&a, true), Some(SenseReason::BusDeviceResetFunction));
        assert_eq!(ua.take(&a, true), None);
    }

    #[test]
    fn a_lost_nexus_keeps_what_is_established_for_it_meanwhile() {
        let mut ua = UnitAttentions::default();
        let (a, b) = (nexus(1), nexus(2));
        ua.touch(&a, false);
        ua.touch(&b, false);
        ua.lose(&a, true);
        // A PREEMPT from b takes a's registration while a is away.
        ua.establish(&a, SenseReason::RegistrationsPreempted);
        ua.establish_all(SenseReason::ModeParametersChanged, Some(&b));
        assert_eq!(ua.nexuses().count(), 1, "a lost nexus is not a live one");
        assert_eq!(ua.take(&a, true), Some(SenseReason::ItNexusLoss));
        assert_eq!(ua.take(&a, true), Some(SenseReason::RegistrationsPreempted));
        assert_eq!(ua.take(&a, true), Some(SenseReason::ModeParametersChanged));
        assert_eq!(ua.take(&a, true), None);
        // Without lifecycle reports (report = false) only the kept ones come back.
        ua.lose(&b, false);
        ua.establish(&b, SenseReason::ReservationsReleased);
        assert_eq!(ua.take(&b, true), Some(SenseReason::ReservationsReleased));
        assert_eq!(ua.take(&b, true), None);
    }

    #[test]
    fn the_lost_set_is_bounded() {
        let mut ua = UnitAttentions::default();
        for i in 0..(MAX_LOST as u64 + 10) {
            let n = nexus(1000 + i);
            ua.touch(&n, false);
            ua.lose(&n, true);
        }
        assert_eq!(ua.lost.len(), MAX_LOST);
        // The oldest went: it is new again (power-on UA), a recent one is remembered.
        assert_eq!(
            ua.take(&nexus(1000), true),
            Some(SenseReason::PowerOnOrReset)
        );
        assert_eq!(
            ua.take(&nexus(1000 + MAX_LOST as u64 + 9), true),
            Some(SenseReason::ItNexusLoss)
        );
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
