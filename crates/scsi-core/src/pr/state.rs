//! Persistent reservation state of one logical unit (SPC-4 §5.13) and the rules that only read
//! it: who is registered, who holds the reservation, and which commands conflict with it.
//!
//! Everything here is plain data and pure functions; no locks, no I/O.

use serde::Serialize;

use crate::cdb::Bytes;
use crate::Nexus;

/// Persistent reservation types (SPC-4 §6.16.3, TYPE field). Only LU_SCOPE (0h) exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PrType {
    /// 1h.
    WriteExclusive,
    /// 3h.
    ExclusiveAccess,
    /// 5h.
    WriteExclusiveRegistrantsOnly,
    /// 6h.
    ExclusiveAccessRegistrantsOnly,
    /// 7h.
    WriteExclusiveAllRegistrants,
    /// 8h.
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    pub fn from_code(code: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| t.code() == code)
    }

    pub const fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "Write Exclusive",
            PrType::ExclusiveAccess => "Exclusive Access",
            PrType::WriteExclusiveRegistrantsOnly => "Write Exclusive - Registrants Only",
            PrType::ExclusiveAccessRegistrantsOnly => "Exclusive Access - Registrants Only",
            PrType::WriteExclusiveAllRegistrants => "Write Exclusive - All Registrants",
            PrType::ExclusiveAccessAllRegistrants => "Exclusive Access - All Registrants",
        }
    }

    /// SPC-4 §5.13.10: every registered I_T nexus is a reservation holder.
    pub const fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    pub const fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }

    /// Reads are restricted too (the Exclusive Access family).
    pub const fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One or more I_T nexuses as persistent reservations name them: an initiator port (iSCSI name
/// plus ISID) and a target port (relative target port identifier). `None` stands for "every":
/// a TransportID without ISID (format 00b, SPC-4 §7.6.4.6) names every initiator port with that
/// name; ALL_TG_PT = 1 (SPC-4 §6.16.3) names every target port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Who {
    pub initiator: String,
    pub isid: Option<u64>,
    /// Relative target port identifier.
    pub port: Option<u16>,
}

/// iSCSI names compare without regard to case (RFC 3722 maps them to lower case).
pub fn names_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Who {
    /// Exactly the I_T nexus `n`.
    pub fn exact(n: &Nexus) -> Who {
        Who {
            initiator: n.initiator_name.clone(),
            isid: Some(n.isid),
            port: Some(n.target_port.relative_port_id),
        }
    }

    /// Whether the concrete I_T nexus `n` is one of those named. With `name_only` (the LU
    /// option for initiators that change their ISID on every login) the ISID is not compared.
    pub fn matches(&self, n: &Nexus, name_only: bool) -> bool {
        names_eq(&self.initiator, &n.initiator_name)
            && (name_only || self.isid.is_none_or(|i| i == n.isid))
            && self
                .port
                .is_none_or(|p| p == n.target_port.relative_port_id)
    }

    /// Whether every I_T nexus `other` names is also named by `self`.
    pub fn covers(&self, other: &Who, name_only: bool) -> bool {
        names_eq(&self.initiator, &other.initiator)
            && (name_only || self.isid.is_none() || self.isid == other.isid)
            && (self.port.is_none() || self.port == other.port)
    }

    /// Whether some I_T nexus is named by both.
    pub fn overlaps(&self, other: &Who, name_only: bool) -> bool {
        let isid_ok =
            name_only || self.isid.is_none() || other.isid.is_none() || self.isid == other.isid;
        let port_ok = self.port.is_none() || other.port.is_none() || self.port == other.port;
        names_eq(&self.initiator, &other.initiator) && isid_ok && port_ok
    }
}

/// A registration: a reservation key for one or more I_T nexuses (SPC-4 §5.13.7).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Registration {
    pub key: u64,
    pub who: Who,
}

/// The persistent reservation, if any (SPC-4 §5.13.9, §5.13.10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Reservation {
    /// Write Exclusive, Exclusive Access and the Registrants Only types: one I_T nexus holds
    /// it, the one that reserved (or preempted, or was moved to).
    Single { ty: PrType, holder: Who },
    /// The All Registrants types: every registered I_T nexus holds it.
    AllRegistrants { ty: PrType },
}

impl Reservation {
    pub fn ty(&self) -> PrType {
        match self {
            Reservation::Single { ty, .. } | Reservation::AllRegistrants { ty } => *ty,
        }
    }

    /// A reservation of type `ty` held by `holder` (ignored for the All Registrants types).
    pub fn new(ty: PrType, holder: Who) -> Reservation {
        if ty.all_registrants() {
            Reservation::AllRegistrants { ty }
        } else {
            Reservation::Single { ty, holder }
        }
    }
}

/// Everything persistent reservations remember for one logical unit.
///
/// Invariants (checked by [`PrState::check`], kept by every operation): keys are non-zero; no
/// two registrations name the same I_T nexus; a `Single` holder is named by a registration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrState {
    /// PRGENERATION (SPC-4 §6.15.2): bumped by every successful REGISTER, REGISTER AND IGNORE
    /// EXISTING KEY, CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE; zero at power on.
    pub generation: u32,
    /// The last valid APTPL bit received (SPC-4 §5.13.5): whether this state survives a power
    /// loss (here: a restart of the daemon).
    pub aptpl: bool,
    /// In the order they were made (the order READ KEYS reports).
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
}

/// How a command touches the medium, for the tables of commands allowed in the presence of
/// various reservations (SPC-4 §5.13.1 and SBC-4): the columns are "reservation type held by
/// another I_T nexus" and "registered or not".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Allowed in every column (INQUIRY, REPORT LUNS, TEST UNIT READY, READ CAPACITY, ...).
    Allowed,
    /// "Allowed / Conflict / Allowed / Allowed / Conflict": refused only where reads are
    /// exclusive (READ, VERIFY, MODE SENSE, ...).
    Read,
    /// "Conflict / Conflict / Allowed / Conflict / Conflict": refused unless the reservation
    /// admits registrants and this I_T nexus is one (WRITE, MODE SELECT, UNMAP, ...).
    Write,
}

/// The conflict class of an opcode table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Allowed,
    Read,
    Write,
    /// PREVENT ALLOW MEDIUM REMOVAL: Allowed with PREVENT = 00b, else Write (SBC-4
    /// reservation table).
    PreventAllow,
    /// START STOP UNIT: Allowed with START = 1 and POWER CONDITION = 0h, else Write
    /// (SBC-4 reservation table).
    StartStop,
    /// The command applies its own reservation rules: PERSISTENT RESERVE OUT (SPC-4 §5.13.1,
    /// enforced by the service actions themselves), RESERVE and RELEASE (SPC-4 §5.13.3).
    Own,
}

impl Class {
    /// The access this command makes, given its CDB.
    pub fn access(self, cdb: Bytes) -> Access {
        match self {
            Class::Allowed | Class::Own => Access::Allowed,
            Class::Read => Access::Read,
            Class::Write => Access::Write,
            Class::PreventAllow if cdb.u8(4) & 0x03 == 0 => Access::Allowed,
            Class::StartStop if cdb.bit(4, 0) && cdb.u8(4) >> 4 == 0 => Access::Allowed,
            Class::PreventAllow | Class::StartStop => Access::Write,
        }
    }
}

impl PrState {
    /// The registration naming `n`, if any.
    pub fn find(&self, n: &Nexus, name_only: bool) -> Option<usize> {
        self.registrations
            .iter()
            .position(|r| r.who.matches(n, name_only))
    }

    /// The registration that names `who` as a whole.
    pub fn find_covering(&self, who: &Who, name_only: bool) -> Option<usize> {
        self.registrations
            .iter()
            .position(|r| r.who.covers(who, name_only))
    }

    /// SPC-4 §5.13.10: whether `n` is a persistent reservation holder.
    pub fn is_holder(&self, n: &Nexus, name_only: bool) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation::AllRegistrants { .. }) => self.find(n, name_only).is_some(),
            Some(Reservation::Single { holder, .. }) => holder.matches(n, name_only),
        }
    }

    /// The key READ RESERVATION reports (SPC-4 §6.15.3: zero for the All Registrants types).
    pub fn holder_key(&self, name_only: bool) -> u64 {
        match &self.reservation {
            Some(Reservation::Single { holder, .. }) => self
                .find_covering(holder, name_only)
                .map(|i| self.registrations[i].key)
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether registration `i` holds the reservation (R_HOLDER of READ FULL STATUS).
    pub fn reg_is_holder(&self, i: usize, name_only: bool) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation::AllRegistrants { .. }) => true,
            Some(Reservation::Single { holder, .. }) => self
                .registrations
                .get(i)
                .is_some_and(|r| r.who.covers(holder, name_only)),
        }
    }

    /// SPC-4 §5.13.1 / SBC-4 reservation tables: whether a command with `access` from `n`
    /// conflicts with the persistent reservation.
    pub fn conflicts(&self, n: &Nexus, access: Access, name_only: bool) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        if access == Access::Allowed || self.is_holder(n, name_only) {
            return false;
        }
        let ty = res.ty();
        // Registrants Only / All Registrants: a registered I_T nexus may do everything.
        let admitted = !matches!(ty, PrType::WriteExclusive | PrType::ExclusiveAccess)
            && self.find(n, name_only).is_some();
        match access {
            Access::Allowed => false,
            Access::Read => ty.exclusive_access() && !admitted,
            Access::Write => !admitted,
        }
    }

    /// Check the invariants (after loading a saved state).
    pub fn check(&self, name_only: bool, max_registrations: usize) -> Result<(), String> {
        if self.registrations.len() > max_registrations {
            return Err(format!(
                "{} registrations, more than the {max_registrations} allowed",
                self.registrations.len()
            ));
        }
        for (i, r) in self.registrations.iter().enumerate() {
            if r.key == 0 {
                return Err(format!("registration {} has key 0", i + 1));
            }
            if self.registrations[..i]
                .iter()
                .any(|o| o.who.overlaps(&r.who, name_only))
            {
                return Err(format!(
                    "registration {} names an I_T nexus registered before it",
                    i + 1
                ));
            }
        }
        if let Some(Reservation::Single { holder, .. }) = &self.reservation {
            if self.find_covering(holder, name_only).is_none() {
                return Err("the reservation holder is not registered".into());
            }
        }
        if let Some(Reservation::AllRegistrants { .. }) = &self.reservation {
            if self.registrations.is_empty() {
                return Err("an all registrants reservation without registrants".into());
            }
        }
        Ok(())
    }
}
