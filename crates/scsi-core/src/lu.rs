//! A logical unit: its configuration, its backstore, and the state the device server keeps for
//! it (mode pages, unit attentions per I_T nexus, SPC-2 reservation, LBA range locks, removable
//! medium, sanitize/format and copy-manager state).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use backstore::Backstore;

use crate::cdb::Fail;
use crate::journal::OpJournal;
use crate::locks::{RangeGuard, RangeLocks};
use crate::sense::SenseReason;
use crate::task_set::TaskSet;
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
    /// MAXIMUM ATOMIC TRANSFER LENGTH, in bytes (the VPD field is in blocks). Every write is
    /// done under an exclusive range lock, so any write up to MAXIMUM TRANSFER LENGTH could be
    /// atomic; the smaller bound keeps one atomic write from holding a large range for long.
    pub const MAX_ATOMIC_TRANSFER_BYTES: u32 = 1 << 20;
    /// Copy results held per logical unit for RECEIVE COPY RESULTS (SPC-4 §6.18).
    pub const MAX_HELD_COPY_RESULTS: usize = 64;
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
    /// Removable medium (RMB = 1): START STOP UNIT ejects and loads it, PREVENT ALLOW MEDIUM
    /// REMOVAL locks it in (SBC-4 §4.x removable medium, §5.13, §5.25).
    pub removable: bool,
    /// Physical block length in bytes: the logical block size times a power of two (READ
    /// CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT). 0 means "same as block_size".
    pub physical_block_size: u32,
    /// Establish POWER ON, RESET, OR BUS DEVICE RESET OCCURRED for each new I_T nexus
    /// (SPC-4 §5.14). Real initiators (and libiscsi's login) clear it with TEST UNIT READY.
    pub report_power_on_ua: bool,
    /// Persistent reservations: a registration matches its initiator name whatever the ISID
    /// (for initiators, like open-iscsi, that pick a new ISID on every login). SPC-4 keys
    /// registrations by I_T nexus, so this is off by default.
    pub pr_match_initiator_name_only: bool,
    /// Most bytes per second a sanitize OVERWRITE writes, so that a background sanitize of one
    /// LU leaves the disk it shares with others some bandwidth (0: as fast as the backstore
    /// takes them).
    pub sanitize_rate: u64,
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
            removable: false,
            physical_block_size: 0,
            report_power_on_ua: true,
            pr_match_initiator_name_only: false,
            sanitize_rate: 0,
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
    /// Physical block size that is not the logical block size times 2^0..2^15.
    PhysicalBlockSize { physical: u32, logical: u32 },
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
            ConfigError::PhysicalBlockSize { physical, logical } => write!(
                f,
                "physical block size {physical} is not {logical} times a power of two"
            ),
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

/// Mode parameters that can change (current values; the pages are built in `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeState {
    /// Caching page WCE: when clear every write is made durable before GOOD.
    pub wce: bool,
    /// Control page SWP: software write protect.
    pub swp: bool,
}

impl Default for ModeState {
    fn default() -> Self {
        Self {
            wce: true,
            swp: false,
        }
    }
}

/// The outcome of one EXTENDED COPY, held for RECEIVE COPY RESULTS (COPY STATUS; encoded in
/// `xcopy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStatus {
    pub ok: bool,
    pub segments_processed: u16,
    /// Bytes copied.
    pub bytes: u64,
}

/// Per-LU state guarded by one lock: unit attentions and the SPC-2 reservation.
#[derive(Debug, Default)]
pub(crate) struct LuState {
    pub ua: UnitAttentions,
    /// SPC-2 RESERVE(6)/(10) holder.
    pub reservation: Option<Nexus>,
    /// Persistent reservations (SPC-4 §5.13).
    pub pr: crate::pr::PrLu,
}

/// Removable-medium state and the long operations on the whole medium (kept apart from
/// `LuState` so the checks every media command makes are a couple of atomic loads).
#[derive(Debug)]
struct Media {
    /// A medium is loaded. Always true for a fixed-medium LU.
    loaded: AtomicBool,
    /// The operation running on the whole medium ([`OpKind`] as a number, 0: none): every
    /// command but INQUIRY, REPORT LUNS and REQUEST SENSE is refused with SANITIZE IN PROGRESS
    /// (SBC-4 §4.11.2) or FORMAT IN PROGRESS (SBC-4 §5.4.1).
    running: AtomicU8,
    /// How much of it is done, in 1/65536ths (the progress indication).
    progress: AtomicU32,
    /// The last operation failed ([`Failure`] as a number, 0: none): media access fails with
    /// SANITIZE COMMAND FAILED (SBC-4 §4.11.5) or MEDIUM FORMAT CORRUPTED (SBC-4 §4.x) until
    /// it is redone (or, for a sanitize started with AUSE = 1, EXIT FAILURE MODE).
    failed: AtomicU8,
    /// Operations started and finished, for the commands (IMMED = 0) that wait for theirs.
    jobs: Mutex<Jobs>,
    ended: Condvar,
    /// I_T nexuses whose PREVENT ALLOW MEDIUM REMOVAL holds the medium in (SBC-4 §5.13: the
    /// medium may be removed only when no nexus prevents it).
    prevent: Mutex<HashSet<Nexus>>,
}

/// A long operation on the whole medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// SANITIZE (SBC-4 §4.11).
    Sanitize,
    /// FORMAT UNIT (SBC-4 §5.4).
    Format,
}

impl OpKind {
    fn code(self) -> u8 {
        match self {
            OpKind::Sanitize => 1,
            OpKind::Format => 2,
        }
    }
}

/// What a failed operation left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A sanitize failed; `ause` is the AUSE bit of the SANITIZE command that asked for it.
    Sanitize { ause: bool },
    /// A format failed: the medium is format corrupt.
    Format,
}

impl Failure {
    fn code(self) -> u8 {
        match self {
            Failure::Sanitize { .. } => 1,
            Failure::Format => 2,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpOutcome {
    Done,
    Failed(Failure),
    /// It could not be started: nothing changed, a failure before it still stands.
    NotStarted,
}

/// Bookkeeping of operations (job numbers count from 1).
#[derive(Debug, Default)]
struct Jobs {
    started: u64,
    finished: u64,
    /// Outcomes of the last few jobs.
    recent: VecDeque<(u64, OpOutcome)>,
    failure: Option<Failure>,
}

/// One disk logical unit.
pub struct LogicalUnit {
    cfg: LuConfig,
    serial: String,
    store: Arc<dyn Backstore>,
    state: Mutex<LuState>,
    mode: Mutex<ModeState>,
    /// LBA range locks: reads shared, writes exclusive (see `locks`).
    ranges: RangeLocks,
    media: Media,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS, per (I_T nexus, list identifier).
    copy_results: Mutex<HashMap<(Nexus, u8), CopyStatus>>,
    /// The capacity in logical blocks initiators were last told of (`refresh_capacity`).
    told_blocks: AtomicU64,
    /// Where a running or failed operation is recorded across restarts (none: not recorded).
    journal: Mutex<Option<Arc<dyn OpJournal>>>,
    /// The thread of the last operation started (see [`LogicalUnit::wait_idle`]).
    op_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The one task set of every I_T nexus (SAM-5 §8.6, TST = 000b).
    tasks: Arc<TaskSet>,
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
        let physical = match cfg.physical_block_size {
            0 => cfg.block_size,
            p => p,
        };
        if physical < cfg.block_size
            || physical % cfg.block_size != 0
            || !(physical / cfg.block_size).is_power_of_two()
            || physical / cfg.block_size > 1 << 15
        {
            return Err(ConfigError::PhysicalBlockSize {
                physical,
                logical: cfg.block_size,
            });
        }
        if store.size() < u64::from(cfg.block_size) {
            return Err(ConfigError::TooSmall {
                size: store.size(),
                block_size: cfg.block_size,
            });
        }
        let blocks = store.size() / u64::from(cfg.block_size);
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
            ranges: RangeLocks::default(),
            media: Media {
                loaded: AtomicBool::new(true),
                running: AtomicU8::new(0),
                progress: AtomicU32::new(0),
                failed: AtomicU8::new(0),
                jobs: Mutex::new(Jobs::default()),
                ended: Condvar::new(),
                prevent: Mutex::new(HashSet::new()),
            },
            copy_results: Mutex::new(HashMap::new()),
            told_blocks: AtomicU64::new(blocks),
            journal: Mutex::new(None),
            op_thread: Mutex::new(None),
            tasks: Arc::new(TaskSet::new()),
        })
    }

    /// The logical unit's task set, shared by every I_T nexus (see `task_set`).
    pub fn task_set(&self) -> &Arc<TaskSet> {
        &self.tasks
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
    /// Whether the backstore encrypts every block, so SANITIZE CRYPTO ERASE applies.
    pub fn encrypted(&self) -> bool {
        self.store.encrypted()
    }

    pub fn thin(&self) -> bool {
        self.cfg.thin && self.store.supports_unmap()
    }

    /// THRESHOLD EXPONENT (VPD B2h, SBC-4 §6.6.5): provisioning resources are counted in
    /// units of 2^exponent blocks, chosen so that the whole LU fits the 4-byte counts of the
    /// Logical Block Provisioning log page.
    pub fn threshold_exponent(&self) -> u8 {
        let bits = 64 - self.num_blocks().leading_zeros();
        bits.saturating_sub(32) as u8
    }

    /// Maximum transfer length in logical blocks (VPD B0h).
    pub fn max_transfer_blocks(&self) -> u32 {
        limits::MAX_TRANSFER_BYTES / self.cfg.block_size
    }

    /// Maximum atomic transfer length in logical blocks (VPD B0h, WRITE ATOMIC(16)).
    pub fn max_atomic_blocks(&self) -> u32 {
        limits::MAX_ATOMIC_TRANSFER_BYTES / self.cfg.block_size
    }

    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY(16), SBC-4 §5.21.2).
    pub fn lbppb_exponent(&self) -> u8 {
        match self.cfg.physical_block_size {
            0 => 0,
            p => (p / self.cfg.block_size).trailing_zeros() as u8,
        }
    }

    /// Logical blocks per physical block.
    pub fn lbppb(&self) -> u32 {
        1 << self.lbppb_exponent()
    }

    pub fn removable(&self) -> bool {
        self.cfg.removable
    }

    /// Whether a medium is loaded (always, for a fixed-medium LU).
    pub fn medium_loaded(&self) -> bool {
        self.media.loaded.load(Ordering::SeqCst)
    }

    /// The medium's state for operators: `ready`, `no medium`, `sanitize 42%`,
    /// `format 42%`, `sanitize failed` or `format corrupt`.
    pub fn medium_status(&self) -> String {
        if !self.medium_loaded() {
            return "no medium".into();
        }
        let pct = u32::from(self.progress()) * 100 / 65536;
        match self.media.running.load(Ordering::SeqCst) {
            1 => return format!("sanitize {pct}%"),
            2 => return format!("format {pct}%"),
            _ => {}
        }
        match self.media.failed.load(Ordering::SeqCst) {
            1 => "sanitize failed".into(),
            2 => "format corrupt".into(),
            _ => "ready".into(),
        }
    }

    /// What a command meets while an operation runs on the whole medium: NOT READY, SANITIZE
    /// IN PROGRESS or FORMAT IN PROGRESS, with a progress indication; `None` when idle.
    pub fn busy(&self) -> Option<crate::Sense> {
        let reason = match self.media.running.load(Ordering::SeqCst) {
            0 => return None,
            1 => SenseReason::SanitizeInProgress,
            _ => SenseReason::FormatInProgress,
        };
        Some(crate::Sense::new(reason).with_progress(self.progress()))
    }

    /// The readiness check of every command that needs the medium (SBC-4 §4.x): MEDIUM NOT
    /// PRESENT when a removable medium is out; SANITIZE COMMAND FAILED while a failed sanitize
    /// has not been redone or exited (SBC-4 §4.11.5); MEDIUM FORMAT CORRUPTED after a failed
    /// format, until a format succeeds.
    pub(crate) fn check_ready(&self) -> Result<(), Fail> {
        if !self.medium_loaded() {
            return Err(SenseReason::MediumNotPresent.into());
        }
        match self.media.failed.load(Ordering::SeqCst) {
            0 => Ok(()),
            1 => Err(SenseReason::SanitizeFailed.into()),
            _ => Err(SenseReason::MediumFormatCorrupted.into()),
        }
    }

    /// Lock blocks `[lba, lba + count)` shared (reads) or exclusive (anything that writes).
    /// A command that would have to wait for a sanitize or format (one that began after the
    /// command was admitted) ends the way it would had it arrived a moment later: NOT READY,
    /// SANITIZE / FORMAT IN PROGRESS — never waiting hours for the operation.
    pub(crate) fn lock_range(
        &self,
        lba: u64,
        count: u64,
        exclusive: bool,
    ) -> Result<RangeGuard<'_>, Fail> {
        self.ranges
            .lock_unless(lba, count, exclusive, || self.busy().is_some())
            .ok_or_else(|| {
                Fail::Check(
                    self.busy()
                        .unwrap_or(crate::Sense::new(SenseReason::NotReady)),
                )
            })
    }

    /// As [`LogicalUnit::lock_range`], for the asynchronous path: instead of blocking the
    /// thread while a conflicting range is held, the future yields to its executor and tries
    /// again (the holder may be another future that needs this very thread to finish). It
    /// keeps no place in the queue while it yields, so overlapping synchronous commands go
    /// first; overlapping transfers are rare, and each waits only for the one before it.
    pub(crate) async fn lock_range_async(
        &self,
        lba: u64,
        count: u64,
        exclusive: bool,
    ) -> Result<RangeGuard<'_>, Fail> {
        loop {
            if let Some(g) = self.ranges.lock_unless(lba, count, exclusive, || true) {
                return Ok(g);
            }
            if let Some(busy) = self.busy() {
                return Err(Fail::Check(busy));
            }
            YieldNow(false).await;
        }
    }

    /// Range lock requests granted or waiting (tests).
    #[cfg(test)]
    pub(crate) fn range_requests(&self) -> usize {
        self.ranges.held()
    }

    /// Lock every block (SANITIZE).
    pub(crate) fn lock_all(&self) -> RangeGuard<'_> {
        self.ranges.lock_all()
    }

    /// Progress of the running operation, in 1/65536ths of the whole.
    pub fn progress(&self) -> u16 {
        self.media.progress.load(Ordering::Relaxed) as u16
    }

    /// Claim the LU for a new operation: `None` if one is already running, else its job
    /// number. From here on new commands are refused (see [`LogicalUnit::busy`]).
    pub(crate) fn begin_operation(&self, kind: OpKind) -> Option<u64> {
        let mut jobs = lock(&self.media.jobs);
        if self.media.running.load(Ordering::SeqCst) != 0 {
            return None;
        }
        self.media.progress.store(0, Ordering::Relaxed);
        self.media.running.store(kind.code(), Ordering::SeqCst);
        jobs.started += 1;
        Some(jobs.started)
    }

    /// Record how far the running operation has got (`done` of `total` units of work).
    pub(crate) fn set_progress(&self, done: u64, total: u64) {
        let p = (u128::from(done) * 65536 / u128::from(total.max(1))).min(65535);
        self.media.progress.store(p as u32, Ordering::Relaxed);
    }

    /// Operation `job` ended: a success clears any earlier failure (SBC-4 §4.11.5: a sanitize
    /// that succeeds ends a failed one; a format that succeeds ends format corruption).
    pub(crate) fn end_operation(&self, job: u64, outcome: OpOutcome) {
        let mut jobs = lock(&self.media.jobs);
        jobs.finished = job;
        jobs.recent.push_back((job, outcome));
        if jobs.recent.len() > 8 {
            jobs.recent.pop_front();
        }
        match outcome {
            OpOutcome::Done => jobs.failure = None,
            OpOutcome::Failed(f) => jobs.failure = Some(f),
            OpOutcome::NotStarted => {}
        }
        self.media
            .failed
            .store(jobs.failure.map_or(0, Failure::code), Ordering::SeqCst);
        self.media.running.store(0, Ordering::SeqCst);
        drop(jobs);
        self.media.ended.notify_all();
    }

    /// Wait for operation `job` to end, checking `stop` between short waits; `None` if `stop`
    /// said to give up first (the operation itself carries on).
    pub(crate) fn wait_operation(&self, job: u64, stop: impl Fn() -> bool) -> Option<OpOutcome> {
        let mut jobs = lock(&self.media.jobs);
        loop {
            if jobs.finished >= job {
                let outcome = jobs.recent.iter().find(|(j, _)| *j == job).map(|&(_, o)| o);
                // Only evicted from `recent` after eight later jobs: report what we can.
                return Some(outcome.unwrap_or(OpOutcome::Done));
            }
            if stop() {
                return None;
            }
            jobs = self
                .media
                .ended
                .wait_timeout(jobs, std::time::Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn set_op_thread(&self, h: std::thread::JoinHandle<()>) {
        *lock(&self.op_thread) = Some(h);
    }

    /// Wait until the last sanitize or format started has ended and its thread is gone (for
    /// shutdown and tests; commands never wait here).
    pub fn wait_idle(&self) {
        let handle = lock(&self.op_thread).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    /// The operation journal, if the LU has one.
    pub(crate) fn journal(&self) -> Option<Arc<dyn OpJournal>> {
        lock(&self.journal).clone()
    }

    pub(crate) fn put_journal(&self, j: Arc<dyn OpJournal>) {
        *lock(&self.journal) = Some(j);
    }

    /// What the last failed operation left behind, if it has not been cleared.
    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.media.jobs).failure
    }

    /// Restore the state a failed operation left (from the journal, at start).
    pub(crate) fn restore_failure(&self, f: Failure) {
        let mut jobs = lock(&self.media.jobs);
        jobs.failure = Some(f);
        self.media.failed.store(f.code(), Ordering::SeqCst);
    }

    /// SANITIZE EXIT FAILURE MODE (SBC-4 §5.30.2.5): `false` if the failed sanitize was
    /// started with AUSE = 0, which EXIT FAILURE MODE may not end. Format corruption is not a
    /// sanitize failure and stays.
    pub(crate) fn exit_sanitize_failure(&self) -> bool {
        let mut jobs = lock(&self.media.jobs);
        match jobs.failure {
            Some(Failure::Sanitize { ause: false }) => false,
            Some(Failure::Sanitize { ause: true }) => {
                jobs.failure = None;
                self.media.failed.store(0, Ordering::SeqCst);
                true
            }
            _ => true,
        }
    }

    /// Record PREVENT (`true`) or ALLOW for `nexus` (SBC-4 §5.13).
    pub(crate) fn set_prevent(&self, nexus: &Nexus, prevent: bool) {
        let mut p = lock(&self.media.prevent);
        if prevent {
            p.insert(nexus.clone());
        } else {
            p.remove(nexus);
        }
    }

    /// Whether any I_T nexus prevents medium removal.
    pub fn removal_prevented(&self) -> bool {
        !lock(&self.media.prevent).is_empty()
    }

    /// Eject (`false`) or load (`true`) the medium. Loading tells every other I_T nexus that the
    /// medium may have changed (SPC-4 §5.14, 28h/00h).
    pub(crate) fn set_loaded(&self, loaded: bool, by: &Nexus) {
        let was = self.media.loaded.swap(loaded, Ordering::SeqCst);
        if loaded && !was {
            self.state()
                .ua
                .establish_all(SenseReason::MediumMayHaveChanged, Some(by));
        }
    }

    /// Follow the backstore's size (a file, device or image the operator grew or shrank,
    /// [`Backstore::refresh_size`]). When the capacity in logical blocks changed, every I_T
    /// nexus gets the unit attention CAPACITY DATA HAS CHANGED (2Ah/09h, SPC-4 annex F), so
    /// that initiators read the capacity again (READ CAPACITY, SBC-4 §5.20/§5.21), and the old
    /// and new counts are returned.
    pub fn refresh_capacity(&self) -> std::io::Result<Option<(u64, u64)>> {
        self.store.refresh_size()?;
        let after = self.num_blocks();
        let before = self.told_blocks.swap(after, Ordering::SeqCst);
        if before == after {
            return Ok(None);
        }
        self.state()
            .ua
            .establish_all(SenseReason::CapacityDataChanged, None);
        Ok(Some((before, after)))
    }

    /// Hold the outcome of an EXTENDED COPY for RECEIVE COPY RESULTS.
    pub(crate) fn hold_copy_status(&self, nexus: &Nexus, list_id: u8, status: CopyStatus) {
        let mut held = lock(&self.copy_results);
        if held.len() >= limits::MAX_HELD_COPY_RESULTS
            && !held.contains_key(&(nexus.clone(), list_id))
        {
            // Bounded: the oldest is unknown in a HashMap, so drop this nexus's others first,
            // then anything.
            let victim = held
                .keys()
                .find(|(n, _)| n == nexus)
                .or_else(|| held.keys().next())
                .cloned();
            if let Some(v) = victim {
                held.remove(&v);
            }
        }
        held.insert((nexus.clone(), list_id), status);
    }

    /// Take (and forget) the held outcome of `list_id` for `nexus`.
    pub(crate) fn take_copy_status(&self, nexus: &Nexus, list_id: u8) -> Option<CopyStatus> {
        lock(&self.copy_results).remove(&(nexus.clone(), list_id))
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

    /// Reset to power-on conditions (SAM-5 §6.3.3 logical unit reset / hard reset): release the
    /// SPC-2 reservation, restore mode parameters to their defaults, clear every PREVENT (SBC-4
    /// §5.13) and held copy result (SPC-4 §6.4.1), and establish `ua` for every known I_T nexus.
    /// A loaded or ejected medium stays as it is; a running sanitize carries on (SBC-4 §4.11.2).
    /// LOGICAL UNIT RESET (SAM-5 §7.7): mode parameters back to their defaults, SPC-2
    /// reservation and PREVENT released, BUS DEVICE RESET FUNCTION OCCURRED for every I_T
    /// nexus. The transport has ended the tasks.
    pub fn logical_unit_reset(&self) {
        self.reset(SenseReason::BusDeviceResetFunction);
    }

    /// The hard reset of a TARGET WARM/COLD RESET (SAM-5 §6.3.2): as a logical unit reset, with
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub fn hard_reset(&self) {
        self.reset(SenseReason::PowerOnOrReset);
    }

    /// Another I_T nexus's CLEAR TASK SET aborted commands of `nexus`: with TAS = 0 in the
    /// Control mode page (ours), it hears COMMANDS CLEARED BY ANOTHER INITIATOR (SAM-5 §5.6).
    pub fn commands_cleared(&self, nexus: &Nexus) {
        self.state()
            .ua
            .establish(nexus, SenseReason::CommandsClearedByAnotherInitiator);
    }

    pub(crate) fn reset(&self, ua: SenseReason) {
        *self.mode_lock() = ModeState::default();
        lock(&self.media.prevent).clear();
        lock(&self.copy_results).clear();
        let mut st = self.state();
        st.reservation = None;
        st.ua.reset_all(ua);
    }

    /// I_T nexus loss: release its reservation and its PREVENT (SBC-4 §5.13), drop its held
    /// copy results, and set its unit attentions aside for its return (with I_T NEXUS LOSS
    /// OCCURRED).
    pub(crate) fn nexus_lost(&self, nexus: &Nexus) {
        lock(&self.media.prevent).remove(nexus);
        lock(&self.copy_results).retain(|(n, _), _| n != nexus);
        let mut st = self.state();
        if st.reservation.as_ref() == Some(nexus) {
            st.reservation = None;
        }
        let report = self.cfg.report_power_on_ua;
        st.ua.lose(nexus, report);
    }
}

/// A poisoned lock only means another command panicked mid-update; the state we keep is valid
/// at every step, so carry on rather than take the whole target down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ready on the second poll: lets the executor run other tasks once.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
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
