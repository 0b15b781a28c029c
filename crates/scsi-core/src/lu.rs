//! A logical unit: its configuration, its backstore, and the state the device server keeps for
//! it (mode pages, unit attentions per I_T nexus, SPC-2 reservation, the write lock).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use backstore::Backstore;

use crate::mode::ModeState;
use crate::sense::SenseReason;
use crate::ua::UnitAttentions;
use crate::Nexus;

/// Block Limits (VPD B0h) values this device server advertises and enforces (SBC-4 §6.6.4).
pub mod limits {
    /// MAXIMUM TRANSFER LENGTH, in bytes (the VPD field is in blocks: this / block size).
    /// Bounds the buffer one READ/WRITE/VERIFY allocates.
    pub const MAX_TRANSFER_BYTES: u32 = 8 << 20;
    /// MAXIMUM WRITE SAME LENGTH, in logical blocks.
    pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;
    /// MAXIMUM UNMAP LBA COUNT, per UNMAP command. Only advertised on thin LUs. Bounded so that
    /// the zero-fill fallback (a backstore that cannot deallocate a range) stays bounded too.
    pub const MAX_UNMAP_LBA_COUNT: u32 = 1 << 20;
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT. Only advertised on thin LUs.
    pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
    /// MAXIMUM COMPARE AND WRITE LENGTH, in logical blocks (the CDB field is one byte).
    pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;
}

/// Fixed IEEE company identifier used in the NAA designators we generate.
///
/// Ferrite has no registered OUI; this is a CID-format value (second nibble 0xA: local bit set,
/// so it can never collide with an IEEE-assigned OUI). Only stability matters to initiators
/// (multipath keys devices on the whole designator).
pub const NAA_COMPANY_ID: u32 = 0x0A_46_52;

/// FNV-1a, 64-bit: a small, stable hash (the same input always gives the same designator,
/// across restarts and versions).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable NAA IEEE Registered designator (NAA = 5h, SPC-4 §7.8.6.6.3) for `name`
/// (the daemon passes e.g. `"<target iqn>/lun/<n>"`): 4 bits NAA, 24 bits company id, 36 bits
/// vendor specific identifier taken from the FNV-1a hash of the name.
pub fn naa_from_name(name: &str) -> u64 {
    let h = fnv1a64(name.as_bytes());
    // Fold the high bits in so all 64 hash bits influence the 36 we keep.
    let vsi = (h ^ (h >> 36)) & 0xF_FFFF_FFFF;
    (0x5u64 << 60) | (u64::from(NAA_COMPANY_ID) << 36) | vsi
}

/// Configuration of one disk logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuConfig {
    /// T10 VENDOR IDENTIFICATION, up to 8 printable ASCII characters.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION, up to 16 printable ASCII characters.
    pub product: String,
    /// PRODUCT REVISION LEVEL, up to 4 printable ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD 80h), printable ASCII. Empty: derived from `naa_id`.
    pub serial: String,
    /// NAA designator for the logical unit (VPD 83h); see [`naa_from_name`].
    pub naa_id: u64,
    /// Logical block length in bytes: 512 or 4096.
    pub block_size: u32,
    /// Reject every write with DATA PROTECT, WRITE PROTECTED.
    pub read_only: bool,
    /// Thin provisioning: report LBPME / UNMAP / WRITE SAME with UNMAP (only if the backstore
    /// can deallocate, see `Backstore::supports_unmap`).
    pub thin: bool,
    /// Establish POWER ON, RESET, OR BUS DEVICE RESET OCCURRED for each new I_T nexus
    /// (SPC-4 §5.14). Real initiators (and libiscsi's login) clear it with TEST UNIT READY.
    pub report_power_on_ua: bool,
}

impl Default for LuConfig {
    fn default() -> Self {
        Self {
            vendor: "FERRITE".into(),
            product: "Virtual Disk".into(),
            revision: "0001".into(),
            serial: String::new(),
            naa_id: naa_from_name("ferrite"),
            block_size: 512,
            read_only: false,
            thin: false,
            report_power_on_ua: true,
        }
    }
}

/// Why a [`LuConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Block size other than 512 or 4096.
    BlockSize(u32),
    /// A text field is too long or has characters outside 0x20..=0x7E.
    Text { field: &'static str, max_len: usize },
    /// The backstore is smaller than one logical block.
    TooSmall { size: u64, block_size: u32 },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BlockSize(b) => write!(f, "block size {b} not supported (512 or 4096)"),
            ConfigError::Text { field, max_len } => {
                write!(f, "{field}: at most {max_len} printable ASCII characters")
            }
            ConfigError::TooSmall { size, block_size } => {
                write!(
                    f,
                    "backstore of {size} bytes holds no {block_size}-byte block"
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

fn check_text(field: &'static str, s: &str, max_len: usize) -> Result<(), ConfigError> {
    // SPC-4 §4.3.1: ASCII data fields hold only 20h..7Eh.
    if s.len() > max_len || !s.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return Err(ConfigError::Text { field, max_len });
    }
    Ok(())
}

/// Per-LU state guarded by one lock: unit attentions and the SPC-2 reservation.
#[derive(Debug, Default)]
pub(crate) struct LuState {
    pub ua: UnitAttentions,
    /// SPC-2 RESERVE(6)/(10) holder.
    pub reservation: Option<Nexus>,
}

/// One disk logical unit.
pub struct LogicalUnit {
    cfg: LuConfig,
    serial: String,
    store: Arc<dyn Backstore>,
    state: Mutex<LuState>,
    mode: Mutex<ModeState>,
    /// Writes hold it shared; COMPARE AND WRITE holds it exclusively, which makes the
    /// compare and the write one atomic step with respect to every other write (SBC-4 §5.3).
    write_lock: RwLock<()>,
}

impl fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("cfg", &self.cfg)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl LogicalUnit {
    pub fn new(cfg: LuConfig, store: Arc<dyn Backstore>) -> Result<Self, ConfigError> {
        if cfg.block_size != 512 && cfg.block_size != 4096 {
            return Err(ConfigError::BlockSize(cfg.block_size));
        }
        check_text("vendor", &cfg.vendor, 8)?;
        check_text("product", &cfg.product, 16)?;
        check_text("revision", &cfg.revision, 4)?;
        // VPD 80h: PAGE LENGTH is one byte after a 4-byte header.
        check_text("serial", &cfg.serial, 251)?;
        if store.size() < u64::from(cfg.block_size) {
            return Err(ConfigError::TooSmall {
                size: store.size(),
                block_size: cfg.block_size,
            });
        }
        let serial = if cfg.serial.is_empty() {
            format!("{:016x}", cfg.naa_id)
        } else {
            cfg.serial.clone()
        };
        Ok(Self {
            cfg,
            serial,
            store,
            state: Mutex::new(LuState::default()),
            mode: Mutex::new(ModeState::default()),
            write_lock: RwLock::new(()),
        })
    }

    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    pub fn backstore(&self) -> &Arc<dyn Backstore> {
        &self.store
    }

    /// The unit serial number reported in VPD 80h.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn block_size(&self) -> u32 {
        self.cfg.block_size
    }

    /// Capacity in logical blocks (a partial trailing block is not exposed).
    pub fn num_blocks(&self) -> u64 {
        self.store.size() / u64::from(self.cfg.block_size)
    }

    /// Whether logical block provisioning management is on (LBPME, SBC-4 §4.7).
    pub fn thin(&self) -> bool {
        self.cfg.thin && self.store.supports_unmap()
    }

    /// Maximum transfer length in logical blocks (VPD B0h).
    pub fn max_transfer_blocks(&self) -> u32 {
        limits::MAX_TRANSFER_BYTES / self.cfg.block_size
    }

    /// DATA PROTECT reason if writes are refused right now (read-only LU or SWP set).
    pub fn write_protection(&self) -> Option<SenseReason> {
        if self.cfg.read_only {
            Some(SenseReason::WriteProtected)
        } else if self.mode().swp {
            Some(SenseReason::SoftwareWriteProtected)
        } else {
            None
        }
    }

    /// Current mode parameters (a copy).
    pub(crate) fn mode(&self) -> ModeState {
        *lock(&self.mode)
    }

    pub(crate) fn mode_lock(&self) -> MutexGuard<'_, ModeState> {
        lock(&self.mode)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, LuState> {
        lock(&self.state)
    }

    pub(crate) fn write_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.write_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.write_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Reset to power-on conditions (SAM-5 §6.3.3 logical unit reset / hard reset): release the
    /// SPC-2 reservation, restore mode parameters to their defaults and establish `ua` for every
    /// known I_T nexus.
    pub(crate) fn reset(&self, ua: SenseReason) {
        *self.mode_lock() = ModeState::default();
        let mut st = self.state();
        st.reservation = None;
        st.ua.reset_all(ua);
    }

    /// I_T nexus loss: release its reservation and forget its unit attentions.
    pub(crate) fn nexus_lost(&self, nexus: &Nexus) {
        let mut st = self.state();
        if st.reservation.as_ref() == Some(nexus) {
            st.reservation = None;
        }
        st.ua.forget(nexus);
    }
}

/// A poisoned lock only means another command panicked mid-update; the state we keep is valid
/// at every step, so carry on rather than take the whole target down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn naa_layout_is_stable() {
        let a = naa_from_name("iqn.2024-01.org.example:disk/lun/0");
        let b = naa_from_name("iqn.2024-01.org.example:disk/lun/1");
        assert_ne!(a, b);
        assert_eq!(a, naa_from_name("iqn.2024-01.org.example:disk/lun/0"));
        assert_eq!(a >> 60, 5);
        assert_eq!((a >> 36) & 0xFF_FFFF, u64::from(NAA_COMPANY_ID));
    }

    #[test]
    fn text_fields_checked() {
        assert!(check_text("vendor", "FERRITE", 8).is_ok());
        assert!(check_text("vendor", "TOO LONG!", 8).is_err());
        assert!(check_text("vendor", "tab\t", 8).is_err());
        assert!(check_text("product", "é", 16).is_err());
    }
}
