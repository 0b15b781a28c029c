//! Asymmetric logical unit access (SPC-4 §5.16): the target port groups of one SCSI target
//! device, their access states, and what each state lets a command do.
//!
//! A target port group holds target ports (by relative target port identifier; an iSCSI
//! portal group is one target port) and has one primary access state for every logical unit of
//! the device. The table here is the model only: no clock, no I/O. Who changes it:
//! - the operator (configuration, `ferrite admin`): an implicit transition (SPC-4 §5.16.2.5),
//!   which passes through *transitioning* when the group supports it, the device's transition
//!   time is not zero and the change is not just between the two active states — the caller
//!   finishes it with [`Alua::finish`] when the time is up;
//! - an initiator with SET TARGET PORT GROUPS: an explicit transition, done at once, among
//!   the active states or towards inaccessible ones (it cannot make a group the target side
//!   took out of service active again, see [`Alua::set_explicit`]).
//!
//! Unit attentions for a change (ASYMMETRIC ACCESS STATE CHANGED) are the device's job, as is
//! telling the daemon so that it can save the new states (`device`).

use std::sync::RwLock;

use crate::sense::SenseReason;

/// A primary target port asymmetric access state (SPC-4 §5.16.2.4, the ASYMMETRIC ACCESS STATE
/// field of REPORT TARGET PORT GROUPS, §6.37). Logical block dependent (4h) is not offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessState {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Offline,
    Transitioning,
}

impl AccessState {
    /// Every state, in the order of their codes.
    pub const ALL: [AccessState; 6] = [
        AccessState::ActiveOptimized,
        AccessState::ActiveNonOptimized,
        AccessState::Standby,
        AccessState::Unavailable,
        AccessState::Offline,
        AccessState::Transitioning,
    ];

    /// The ASYMMETRIC ACCESS STATE code (SPC-4 §6.37, table 300 in r37).
    pub const fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Offline => 0xE,
            AccessState::Transitioning => 0xF,
        }
    }

    pub fn from_code(code: u8) -> Option<AccessState> {
        AccessState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The state's bit among the *_SUP bits of a target port group descriptor (SPC-4 §6.37):
    /// T_SUP 80h, O_SUP 40h, U_SUP 08h, S_SUP 04h, AN_SUP 02h, AO_SUP 01h.
    pub const fn sup_bit(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x01,
            AccessState::ActiveNonOptimized => 0x02,
            AccessState::Standby => 0x04,
            AccessState::Unavailable => 0x08,
            AccessState::Offline => 0x40,
            AccessState::Transitioning => 0x80,
        }
    }

    /// The name the configuration and `ferrite admin` use.
    pub const fn name(self) -> &'static str {
        match self {
            AccessState::ActiveOptimized => "active/optimized",
            AccessState::ActiveNonOptimized => "active/non-optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
            AccessState::Offline => "offline",
            AccessState::Transitioning => "transitioning",
        }
    }

    /// A state by name: the names of [`AccessState::name`], with `-` or `_` for `/`, and the
    /// short forms `ao`, `an`, `s`, `u`, `o`, `t`.
    pub fn parse(s: &str) -> Option<AccessState> {
        let n = s.trim().to_ascii_lowercase().replace(['-', '_'], "/");
        let st = match n.as_str() {
            "active/optimized" | "optimized" | "ao" => AccessState::ActiveOptimized,
            "active/non/optimized" | "active/nonoptimized" | "non/optimized" | "an" => {
                AccessState::ActiveNonOptimized
            }
            "standby" | "s" => AccessState::Standby,
            "unavailable" | "u" => AccessState::Unavailable,
            "offline" | "o" => AccessState::Offline,
            "transitioning" | "t" => AccessState::Transitioning,
            _ => return None,
        };
        Some(st)
    }

    /// Whether every command may run through a port in this state.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized
        )
    }

    /// What a command this state does not allow ends with (SPC-4 §5.16.2.4.4 - §5.16.2.6):
    /// NOT READY, LOGICAL UNIT NOT ACCESSIBLE with the state's qualifier. Never ILLEGAL
    /// REQUEST, LOGICAL UNIT NOT SUPPORTED: the logical unit exists, and initiators (ESXi
    /// among them) take that answer for a device that is gone for good.
    pub const fn refusal(self) -> Option<SenseReason> {
        match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => None,
            AccessState::Standby => Some(SenseReason::AluaStandby),
            AccessState::Unavailable => Some(SenseReason::AluaUnavailable),
            AccessState::Offline => Some(SenseReason::AluaOffline),
            AccessState::Transitioning => Some(SenseReason::AluaTransitioning),
        }
    }

    /// States SET TARGET PORT GROUPS may ask for (SPC-4 §6.45: not transitioning, and not
    /// logical block dependent, which we do not offer).
    pub const fn settable(self) -> bool {
        !matches!(self, AccessState::Transitioning)
    }
}

/// Which commands an access state allows, as the opcode table marks them (SPC-4 §5.16.2.4.4
/// standby, §5.16.2.4.5 unavailable, §5.16.2.5 transitioning; offline, §5.16.2.4.6, as
/// unavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub standby: bool,
    pub unavailable: bool,
    pub transitioning: bool,
}

impl Allowed {
    pub fn allows(self, state: AccessState) -> bool {
        match state {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => true,
            AccessState::Standby => self.standby,
            AccessState::Unavailable | AccessState::Offline => self.unavailable,
            AccessState::Transitioning => self.transitioning,
        }
    }
}

/// Every state a group can be reported in.
pub const ALL_SUPPORTED: u8 = 0x80 | 0x40 | 0x08 | 0x04 | 0x02 | 0x01;

/// STATUS CODE of a target port group descriptor (SPC-4 §6.37): why its state last changed.
pub mod status {
    pub const NONE: u8 = 0x00;
    pub const BY_SET_TARGET_PORT_GROUPS: u8 = 0x01;
    pub const BY_IMPLICIT_BEHAVIOR: u8 = 0x02;
}

/// One target port group as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AluaGroup {
    /// TARGET PORT GROUP (1..65535 here; 0 is never used so that "no group" stays clear).
    pub id: u16,
    pub state: AccessState,
    /// PREF: this group is a preferred path (SPC-4 §6.37).
    pub preferred: bool,
    /// The *_SUP bits: states the group can be in ([`ALL_SUPPORTED`] by default).
    pub supported: u8,
    /// Relative target port identifiers of its target ports.
    pub ports: Vec<u16>,
}

impl AluaGroup {
    /// The group one target gets when nothing is configured: every port, active/optimized.
    pub fn default_for(ports: Vec<u16>) -> AluaGroup {
        AluaGroup {
            id: 1,
            state: AccessState::ActiveOptimized,
            preferred: false,
            supported: ALL_SUPPORTED,
            ports,
        }
    }
}

/// A group's state as the device has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: AluaGroup,
    /// While transitioning, the state the transition ends in.
    pub target: Option<AccessState>,
    /// STATUS CODE ([`status`]).
    pub status: u8,
}

#[derive(Debug, Default)]
struct Table {
    groups: Vec<GroupStatus>,
    /// IMPLICIT TRANSITION TIME in seconds (the extended header of REPORT TARGET PORT GROUPS).
    transition_secs: u8,
    /// Bumped by every change; an implicit transition finishes only if nothing changed since.
    generation: u64,
}

/// What [`Alua::configure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Some group's state, membership or PREF bit changed (unit attentions are due).
    pub changed: bool,
    /// Groups are transitioning: call [`Alua::finish`] with `generation` after the transition
    /// time.
    pub transitioning: bool,
    pub generation: u64,
}

/// A device's target port groups (see the module docs).
#[derive(Debug, Default)]
pub struct Alua {
    table: RwLock<Table>,
}

/// Why SET TARGET PORT GROUPS was refused: the byte of the parameter list at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    /// The parameter list is not a 4-byte header plus whole 4-byte descriptors.
    Length,
    /// INVALID FIELD IN PARAMETER LIST at this byte.
    Field(u16),
    /// The transition is one the target does not make on an initiator's request (SET TARGET
    /// PORT GROUPS COMMAND FAILED).
    Refused,
}

impl Alua {
    pub fn new() -> Alua {
        Alua::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The access state through target port `port`. A port in no group (nothing configured)
    /// is active/optimized: without ALUA every path is equal.
    pub fn state_of(&self, port: u16) -> AccessState {
        let t = self.read();
        t.groups
            .iter()
            .find(|g| g.group.ports.contains(&port))
            .map_or(AccessState::ActiveOptimized, |g| g.group.state)
    }

    /// The target port group of `port` (1, the default group, when nothing is configured).
    pub fn group_of(&self, port: u16) -> u16 {
        let t = self.read();
        t.groups
            .iter()
            .find(|g| g.group.ports.contains(&port))
            .map_or(1, |g| g.group.id)
    }

    /// Every group as it is now, by id.
    pub fn groups(&self) -> Vec<GroupStatus> {
        self.read().groups.clone()
    }

    /// The implicit transition time in seconds.
    pub fn transition_secs(&self) -> u8 {
        self.read().transition_secs
    }

    /// Make the table hold `groups` (the operator's wish, an implicit transition). A group whose
    /// state changes goes through transitioning first if it supports it and `transition_secs`
    /// is not zero; the others change at once. A group already transitioning keeps doing so
    /// towards its new target.
    pub fn configure(&self, mut groups: Vec<AluaGroup>, transition_secs: u8) -> Change {
        groups.sort_by_key(|g| g.id);
        let mut t = self.write();
        t.transition_secs = transition_secs;
        let mut changed = false;
        let mut next = Vec::with_capacity(groups.len());
        for want in groups {
            let old = t.groups.iter().find(|g| g.group.id == want.id);
            let fresh = old.is_none();
            // What the group is heading for now (its target while transitioning).
            let current = old.map(|o| o.target.unwrap_or(o.group.state));
            let mut status = old.map_or(status::NONE, |o| o.status);
            let mut group = want.clone();
            let mut target = None;
            if let Some(o) = old {
                if current != Some(want.state) {
                    status = status::BY_IMPLICIT_BEHAVIOR;
                    // Between the two active states there is nothing to wait for: the port
                    // serves I/O before and after, and a transitioning phase would only fail
                    // the initiators' I/O on both paths at once (seen with Linux: the failed
                    // paths make dm-multipath switch path groups, and scsi_dh_alua then sends
                    // SET TARGET PORT GROUPS of its own). Changes into or out of an
                    // inaccessible state pass through transitioning.
                    let both_active =
                        current.is_some_and(AccessState::is_active) && want.state.is_active();
                    let through = transition_secs > 0
                        && !both_active
                        && want.supported & AccessState::Transitioning.sup_bit() != 0
                        && want.state != AccessState::Transitioning;
                    if through {
                        group.state = AccessState::Transitioning;
                        target = Some(want.state);
                    }
                } else if o.target.is_some() {
                    // Still on its way to the same state.
                    group.state = AccessState::Transitioning;
                    target = o.target;
                }
                changed |= o.group != group;
            }
            changed |= fresh;
            next.push(GroupStatus {
                group,
                target,
                status,
            });
        }
        changed |= t
            .groups
            .iter()
            .any(|o| next.iter().all(|g| g.group.id != o.group.id));
        t.groups = next;
        if changed {
            t.generation += 1;
        }
        Change {
            changed,
            transitioning: t.groups.iter().any(|g| g.target.is_some()),
            generation: t.generation,
        }
    }

    /// Set the STATUS CODE of the groups named (by id) without changing their states: a
    /// cluster derives it from what every node knows, so that every node reports the same.
    pub fn set_status(&self, statuses: &[(u16, u8)]) {
        let mut t = self.write();
        for g in &mut t.groups {
            if let Some(&(_, st)) = statuses.iter().find(|(id, _)| *id == g.group.id) {
                g.status = st;
            }
        }
    }

    /// End the implicit transitions begun at `generation`: their groups take their target
    /// states. Nothing happens (false) if the table changed since.
    pub fn finish(&self, generation: u64) -> bool {
        let mut t = self.write();
        if t.generation != generation || t.groups.iter().all(|g| g.target.is_none()) {
            return false;
        }
        for g in &mut t.groups {
            if let Some(s) = g.target.take() {
                g.group.state = s;
            }
        }
        t.generation += 1;
        true
    }

    /// SET TARGET PORT GROUPS (SPC-4 §6.45): apply the parameter list's descriptors, all or
    /// none. An explicit transition is done when the command completes. Returns whether any
    /// state changed.
    pub fn set_explicit(&self, list: &[u8]) -> Result<bool, SetError> {
        if list.len() < 4 || !(list.len() - 4).is_multiple_of(4) {
            return Err(SetError::Length);
        }
        let mut t = self.write();
        let mut wanted: Vec<(usize, AccessState)> = Vec::new();
        for (i, d) in list[4..].chunks_exact(4).enumerate() {
            let at = (4 + 4 * i) as u16;
            let id = u16::from_be_bytes([d[2], d[3]]);
            let Some(idx) = t.groups.iter().position(|g| g.group.id == id) else {
                return Err(SetError::Field(at + 2));
            };
            let state = AccessState::from_code(d[0] & 0x0F)
                .filter(|s| s.settable() && t.groups[idx].group.supported & s.sup_bit() != 0)
                .ok_or(SetError::Field(at))?;
            // A group named twice is ambiguous.
            if wanted.iter().any(|&(j, _)| j == idx) {
                return Err(SetError::Field(at + 2));
            }
            wanted.push((idx, state));
        }
        // Every port can serve I/O; what keeps a group out of the active states is the
        // operator's (or, later, the cluster's) decision: a drained port, a node going away. An
        // initiator may choose among the active groups and demote groups, but only the target
        // side makes an inaccessible group active again. Linux asks for exactly that whenever
        // dm-multipath falls back to a standby path group; refused, it bypasses the group.
        for &(idx, state) in &wanted {
            let g = &t.groups[idx];
            let now = g.target.unwrap_or(g.group.state);
            if state.is_active() && !now.is_active() {
                return Err(SetError::Refused);
            }
        }
        let mut changed = false;
        for (idx, state) in wanted {
            let g = &mut t.groups[idx];
            if g.group.state != state || g.target.is_some() {
                g.group.state = state;
                g.target = None;
                changed = true;
            }
            g.status = status::BY_SET_TARGET_PORT_GROUPS;
        }
        if changed {
            t.generation += 1;
        }
        Ok(changed)
    }

    /// REPORT TARGET PORT GROUPS parameter data (SPC-4 §6.37), whole: length-only header, or
    /// the extended header with the implicit transition time. With nothing configured, one
    /// active/optimized group (id 1) holding `ports`.
    pub fn report(&self, extended: bool, ports: &[u16]) -> Vec<u8> {
        let t = self.read();
        let default;
        let groups: Vec<(&AluaGroup, u8)> = if t.groups.is_empty() {
            default = AluaGroup::default_for(ports.to_vec());
            vec![(&default, status::NONE)]
        } else {
            t.groups.iter().map(|g| (&g.group, g.status)).collect()
        };
        let mut out = vec![0u8; if extended { 8 } else { 4 }];
        if extended {
            out[4] = 0x10; // FORMAT TYPE 001b
            out[5] = t.transition_secs;
        }
        for (g, status) in groups {
            out.push(if g.preferred { 0x80 } else { 0 } | g.state.code());
            out.push(g.supported);
            out.extend_from_slice(&g.id.to_be_bytes());
            out.push(0);
            out.push(status);
            out.push(0);
            // TARGET PORT COUNT is one byte: a group lists at most 255 ports (configuration
            // keeps to that).
            let ports = &g.ports[..g.ports.len().min(255)];
            out.push(ports.len() as u8);
            for p in ports {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessState::*;

    fn two() -> Vec<AluaGroup> {
        vec![
            AluaGroup {
                id: 10,
                state: ActiveOptimized,
                preferred: true,
                supported: ALL_SUPPORTED,
                ports: vec![1],
            },
            AluaGroup {
                id: 20,
                state: ActiveNonOptimized,
                preferred: false,
                supported: ALL_SUPPORTED,
                ports: vec![2, 3],
            },
        ]
    }

    #[test]
    fn codes_names_and_bits() {
        for s in AccessState::ALL {
            assert_eq!(AccessState::from_code(s.code()), Some(s));
            assert_eq!(AccessState::parse(s.name()), Some(s));
            assert_eq!(ALL_SUPPORTED & s.sup_bit(), s.sup_bit());
            assert_eq!(s.is_active(), s.refusal().is_none());
        }
        assert_eq!(AccessState::from_code(4), None);
        assert_eq!(
            AccessState::parse("active-non-optimized"),
            Some(ActiveNonOptimized)
        );
        assert_eq!(
            AccessState::parse("Active_Optimized"),
            Some(ActiveOptimized)
        );
        assert_eq!(AccessState::parse("ao"), Some(ActiveOptimized));
        assert_eq!(AccessState::parse("bogus"), None);
        assert_eq!(
            AccessState::ALL
                .map(|s| s.sup_bit())
                .iter()
                .fold(0, |a, b| a | b),
            ALL_SUPPORTED
        );
    }

    #[test]
    fn unconfigured_is_one_active_group() {
        let a = Alua::new();
        assert_eq!(a.state_of(7), ActiveOptimized);
        assert_eq!(a.group_of(7), 1);
        let r = a.report(false, &[7, 9]);
        assert_eq!(
            r,
            vec![
                0,
                0,
                0,
                16,
                0x00,
                ALL_SUPPORTED,
                0,
                1,
                0,
                0,
                0,
                2,
                0,
                0,
                0,
                7,
                0,
                0,
                0,
                9
            ]
        );
    }

    #[test]
    fn report_layout() {
        let a = Alua::new();
        a.configure(two(), 3);
        let r = a.report(true, &[]);
        // Header: length, FORMAT TYPE 1, transition time 3.
        assert_eq!(&r[..8], &[0, 0, 0, (r.len() - 4) as u8, 0x10, 3, 0, 0]);
        // Group 10: PREF, AO, all *_SUP, status none, one port.
        assert_eq!(&r[8..16], &[0x80, 0xCF, 0, 10, 0, 0, 0, 1]);
        assert_eq!(&r[16..20], &[0, 0, 0, 1]);
        // Group 20: AN, two ports.
        assert_eq!(&r[20..28], &[0x01, 0xCF, 0, 20, 0, 0, 0, 2]);
        assert_eq!(&r[28..36], &[0, 0, 0, 2, 0, 0, 0, 3]);
        assert_eq!(r.len(), 36);
        let short = a.report(false, &[]);
        assert_eq!(&short[4..], &r[8..]);
        assert_eq!(u32::from_be_bytes(short[..4].try_into().unwrap()), 28);
    }

    #[test]
    fn implicit_transition_goes_through_transitioning() {
        let a = Alua::new();
        let c = a.configure(two(), 2);
        assert!(c.changed && !c.transitioning);
        // Swapping the two active states is immediate.
        let mut g = two();
        g[0].state = ActiveNonOptimized;
        g[1].state = ActiveOptimized;
        let c = a.configure(g.clone(), 2);
        assert!(c.changed && !c.transitioning);
        assert_eq!(a.state_of(1), ActiveNonOptimized);
        assert_eq!(a.state_of(3), ActiveOptimized);
        // Out of an active state into an inaccessible one (and back): through transitioning.
        g[0].state = Standby;
        g[1].state = Unavailable;
        let c = a.configure(g.clone(), 2);
        assert!(c.changed && c.transitioning);
        assert_eq!(a.state_of(1), Transitioning);
        assert_eq!(a.state_of(3), Transitioning);
        assert_eq!(a.groups()[0].status, status::BY_IMPLICIT_BEHAVIOR);
        // The same wish again keeps the transition (and its generation).
        let again = a.configure(g.clone(), 2);
        assert!(!again.changed && again.transitioning);
        assert_eq!(again.generation, c.generation);
        // A stale finish does nothing; the right one lands.
        assert!(!a.finish(c.generation - 1));
        assert!(a.finish(c.generation));
        assert_eq!(a.state_of(1), Standby);
        assert_eq!(a.state_of(2), Unavailable);
        assert!(!a.finish(c.generation));
        // Without a transition time, or without T_SUP, the change is immediate.
        g[0].state = ActiveOptimized;
        let c = a.configure(g.clone(), 0);
        assert!(c.changed && !c.transitioning);
        assert_eq!(a.state_of(1), ActiveOptimized);
        g[0].state = Standby;
        g[0].supported = ALL_SUPPORTED & !Transitioning.sup_bit();
        assert!(!a.configure(g, 5).transitioning);
        assert_eq!(a.state_of(1), Standby);
    }

    #[test]
    fn membership_and_removal_are_changes() {
        let a = Alua::new();
        a.configure(two(), 0);
        let mut g = two();
        g[1].ports = vec![2];
        assert!(a.configure(g.clone(), 0).changed);
        assert_eq!(a.group_of(3), 1);
        assert_eq!(a.state_of(3), ActiveOptimized);
        assert!(!a.configure(g.clone(), 0).changed);
        g.pop();
        assert!(a.configure(g, 0).changed);
        assert_eq!(a.groups().len(), 1);
    }

    fn stpg(descs: &[(u8, u16)]) -> Vec<u8> {
        let mut v = vec![0u8; 4];
        for &(s, id) in descs {
            v.extend_from_slice(&[s, 0]);
            v.extend_from_slice(&id.to_be_bytes());
        }
        v
    }

    #[test]
    fn set_target_port_groups() {
        let a = Alua::new();
        a.configure(two(), 2);
        assert_eq!(a.set_explicit(&stpg(&[(0x2, 10), (0x0, 20)])), Ok(true));
        assert_eq!(a.state_of(1), Standby);
        assert_eq!(a.state_of(2), ActiveOptimized);
        assert!(a
            .groups()
            .iter()
            .all(|g| g.status == status::BY_SET_TARGET_PORT_GROUPS));
        assert_eq!(a.set_explicit(&stpg(&[(0x2, 10)])), Ok(false));
        assert_eq!(a.set_explicit(&stpg(&[])), Ok(false));
        // Refused, all or nothing: unknown group, transitioning, LBA dependent, twice.
        assert_eq!(
            a.set_explicit(&stpg(&[(0x0, 10), (0x0, 99)])),
            Err(SetError::Field(10))
        );
        assert_eq!(a.state_of(1), Standby);
        assert_eq!(a.set_explicit(&stpg(&[(0xF, 10)])), Err(SetError::Field(4)));
        assert_eq!(a.set_explicit(&stpg(&[(0x4, 10)])), Err(SetError::Field(4)));
        assert_eq!(
            a.set_explicit(&stpg(&[(0x0, 10), (0x1, 10)])),
            Err(SetError::Field(10))
        );
        assert_eq!(a.set_explicit(&[0, 0]), Err(SetError::Length));
        assert_eq!(a.set_explicit(&[0, 0, 0, 0, 1]), Err(SetError::Length));
        // Group 10 is standby now: only the target side makes it active again.
        assert_eq!(a.set_explicit(&stpg(&[(0x0, 10)])), Err(SetError::Refused));
        assert_eq!(a.set_explicit(&stpg(&[(0x1, 10)])), Err(SetError::Refused));
        assert_eq!(a.set_explicit(&stpg(&[(0x3, 10)])), Ok(true));
        assert_eq!(a.state_of(1), Unavailable);
        // A state the group does not support.
        let mut g = two();
        g[0].supported = ALL_SUPPORTED & !Offline.sup_bit();
        a.configure(g, 0);
        assert_eq!(a.set_explicit(&stpg(&[(0xE, 10)])), Err(SetError::Field(4)));
        assert_eq!(a.set_explicit(&stpg(&[(0xE, 20)])), Ok(true));
        assert_eq!(a.state_of(3), Offline);
    }

    #[test]
    fn explicit_set_ends_an_implicit_transition() {
        let a = Alua::new();
        a.configure(two(), 2);
        let mut g = two();
        g[0].state = Standby;
        let c = a.configure(g, 2);
        assert_eq!(a.state_of(1), Transitioning);
        // On its way to standby: not back to active on request, but a demotion ends it.
        assert_eq!(a.set_explicit(&stpg(&[(0x0, 10)])), Err(SetError::Refused));
        assert_eq!(a.set_explicit(&stpg(&[(0x3, 10)])), Ok(true));
        assert_eq!(a.state_of(1), Unavailable);
        assert!(!a.finish(c.generation));
        assert_eq!(a.state_of(1), Unavailable);
    }

    #[test]
    fn allowed_by_state() {
        let none = Allowed {
            standby: false,
            unavailable: false,
            transitioning: false,
        };
        let sb = Allowed {
            standby: true,
            ..none
        };
        for s in AccessState::ALL {
            assert_eq!(none.allows(s), s.is_active());
        }
        assert!(sb.allows(Standby) && !sb.allows(Unavailable) && !sb.allows(Transitioning));
        let un = Allowed {
            unavailable: true,
            ..none
        };
        assert!(un.allows(Offline) && un.allows(Unavailable) && !un.allows(Standby));
    }
}
