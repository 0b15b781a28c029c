//! Logical unit numbers: the encoding of the LUN field (SAM-5 §4.7) and the inventory of the
//! logical units one device server exposes ([`LunMap`]), which handlers consult (REPORT LUNS,
//! EXTENDED COPY targets) without reaching back into the device server.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::lu::LogicalUnit;
use crate::sense::SenseReason;

/// Largest LUN [`lun_to_wire`] encodes with single-level flat space addressing (SAM-5 §4.7.7).
pub const MAX_FLAT_LUN: u64 = 0x3FFF;
/// Largest LUN this device server accepts (extended flat space addressing, 24 bits).
pub const MAX_LUN: u64 = 0xFF_FFFF;

/// Encode a LUN for the 8-byte LUN field (SAM-5 §4.7): peripheral device addressing (00b) below
/// 256, flat space addressing (01b) up to 16383, extended flat space addressing (11b, length
/// 01b, extended address method 2h) up to 2^24-1. The result is the 8 bytes read big-endian.
/// LUNs above [`MAX_LUN`] are masked to 24 bits (`DeviceServer::add_lun` refuses them).
pub fn lun_to_wire(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else if lun <= MAX_FLAT_LUN {
        (0x4000 | lun) << 48
    } else {
        (0xD2u64 << 56) | ((lun & MAX_LUN) << 32)
    }
}

/// Decode the 8-byte LUN field; `None` for address methods and hierarchies we do not use
/// (every LUN we expose is single level, so the remaining levels must be zero).
pub fn lun_from_wire(wire: u64) -> Option<u64> {
    let b = wire.to_be_bytes();
    match b[0] >> 6 {
        // Peripheral device addressing, bus identifier 0.
        0b00 if b[0] == 0 && wire & 0x0000_FFFF_FFFF_FFFF == 0 => Some(u64::from(b[1])),
        // Flat space addressing.
        0b01 if wire & 0x0000_FFFF_FFFF_FFFF == 0 => {
            Some((u64::from(b[0] & 0x3F) << 8) | u64::from(b[1]))
        }
        // Extended flat space addressing: length 01b (4 bytes), extended address method 2h.
        0b11 if b[0] == 0xD2 && wire & 0x0000_0000_FFFF_FFFF == 0 => Some((wire >> 32) & MAX_LUN),
        _ => None,
    }
}

/// Why `add_lun` refused a LUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddLunError {
    /// Above [`MAX_LUN`].
    OutOfRange(u64),
    /// The LUN is already in use.
    Exists(u64),
}

impl fmt::Display for AddLunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddLunError::OutOfRange(l) => write!(f, "LUN {l} is above {MAX_LUN}"),
            AddLunError::Exists(l) => write!(f, "LUN {l} already exists"),
        }
    }
}

impl std::error::Error for AddLunError {}

/// The logical units of one device server, addressed by LUN, and the LUNs it exposes read-only
/// (an ACL's read-only mapping of a writable LU).
#[derive(Default)]
pub(crate) struct LunMap {
    luns: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
    read_only: RwLock<HashSet<u64>>,
}

impl LunMap {
    fn map(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Arc<LogicalUnit>>> {
        self.luns.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a logical unit. Other logical units report REPORTED LUNS DATA HAS CHANGED to the
    /// I_T nexuses they know (SPC-4 §6.33).
    pub fn add(&self, lun: u64, lu: Arc<LogicalUnit>) -> Result<(), AddLunError> {
        if lun > MAX_LUN {
            return Err(AddLunError::OutOfRange(lun));
        }
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&lun) {
            return Err(AddLunError::Exists(lun));
        }
        for other in map.values() {
            other
                .state()
                .ua
                .establish_all(SenseReason::ReportedLunsDataChanged, None);
        }
        map.insert(lun, lu);
        Ok(())
    }

    /// Remove a logical unit; the others report REPORTED LUNS DATA HAS CHANGED.
    pub fn remove(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        let lu = map.remove(&lun)?;
        for other in map.values() {
            other
                .state()
                .ua
                .establish_all(SenseReason::ReportedLunsDataChanged, None);
        }
        Some(lu)
    }

    /// Expose `lun` read-only (or writable again).
    pub fn set_read_only(&self, lun: u64, read_only: bool) {
        let mut ro = self.read_only.write().unwrap_or_else(|e| e.into_inner());
        if read_only {
            ro.insert(lun);
        } else {
            ro.remove(&lun);
        }
    }

    /// Whether `lun` is exposed read-only.
    pub fn is_read_only(&self, lun: u64) -> bool {
        self.read_only
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&lun)
    }

    /// The configured LUNs, ascending.
    pub fn luns(&self) -> Vec<u64> {
        self.map().keys().copied().collect()
    }

    pub fn get(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.map().get(&lun).cloned()
    }

    /// Call `f` for every logical unit, with the inventory locked against changes.
    pub fn each(&self, mut f: impl FnMut(&LogicalUnit)) {
        for lu in self.map().values() {
            f(lu);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [
            0,
            1,
            7,
            255,
            256,
            1000,
            MAX_FLAT_LUN,
            MAX_FLAT_LUN + 1,
            MAX_LUN,
        ] {
            assert_eq!(lun_from_wire(lun_to_wire(lun)), Some(lun), "lun {lun}");
        }
        assert_eq!(lun_to_wire(0), 0);
        assert_eq!(lun_to_wire(1), 0x0001_0000_0000_0000);
        assert_eq!(lun_to_wire(256), 0x4100_0000_0000_0000);
        assert_eq!(lun_to_wire(0x3FFF), 0x7FFF_0000_0000_0000);
        assert_eq!(lun_to_wire(0x12345), 0xD201_2345_0000_0000);
    }

    #[test]
    fn lun_decoding_rejects_other_forms() {
        // Flat space addressing of a small LUN is accepted too.
        assert_eq!(lun_from_wire(0x4005_0000_0000_0000), Some(5));
        // Second level present.
        assert_eq!(lun_from_wire(0x0001_0001_0000_0000), None);
        // Peripheral with a bus identifier.
        assert_eq!(lun_from_wire(0x0101_0000_0000_0000), None);
        // Logical unit addressing (10b).
        assert_eq!(lun_from_wire(0x8001_0000_0000_0000), None);
        // Well-known LU (C1h).
        assert_eq!(lun_from_wire(0xC101_0000_0000_0000), None);
    }
}
