//! SANITIZE (SBC-4 §4.11 sanitize operations, §5.30 SANITIZE command).
//!
//! What a Ferrite LU can honour:
//! * OVERWRITE (01h): every block is overwritten with the initialization pattern, as many
//!   passes as OVERWRITE COUNT asks, the pattern inverted between passes when INVERT is set,
//!   each pass flushed to the backstore.
//! * BLOCK ERASE (02h): only on thin LUs (LBPME = 1): every block is deallocated, so the
//!   backing file really gives its space back and every block reads as zero (LBPRZ = 1). The
//!   Block Device Characteristics page says WABEREQ = 01b: reads after it succeed.
//! * EXIT FAILURE MODE (1Fh): leaves the state a failed sanitize left behind.
//! * CRYPTO ERASE (03h) is not offered: no backstore encrypts its data, so there is no key to
//!   change (SBC-4 §4.11.4); it is an unknown service action (INVALID FIELD IN CDB).
//!
//! The operation runs on a thread of its own, detached from the command that started it: with
//! IMMED = 1 the command returns as soon as the CDB and parameter list are validated, with
//! IMMED = 0 when the operation ends (SBC-4 §5.30.1). Either way the operation outlives the
//! command — ABORT TASK, LUN and target resets and I_T nexus loss end the command, not the
//! sanitize (SBC-4 §4.11.2). While it runs every command but INQUIRY, REPORT LUNS and REQUEST
//! SENSE ends in NOT READY, SANITIZE IN PROGRESS with a progress indication (checked in
//! dispatch); commands already running finish first (the sanitize takes every block's range
//! lock). An OVERWRITE writes at most `LuConfig::sanitize_rate` bytes per second.
//!
//! A sanitize that fails leaves the LU refusing media access with SANITIZE COMMAND FAILED until
//! a sanitize succeeds, or, if it was started with AUSE = 1, EXIT FAILURE MODE (SBC-4 §4.11.5).
//!
//! With a [`SanitizeJournal`] (the daemon gives file and block LUNs one in its state
//! directory) the operation survives a restart the way a drive's survives a power cycle: the
//! journal records it before it starts, and a LU that finds a running record when its journal
//! is attached starts it again from the beginning (an overwrite or erase is idempotent). A
//! failed sanitize is recorded too, so the LU keeps refusing media access after a restart.
//!
//! # Journal format (version 1)
//!
//! ```text
//! ferrite-sanitize 1
//! running overwrite          (or `running block-erase`, or `failed`)
//! ause 0
//! passes 1                   (overwrite only, as are the next two)
//! invert 0
//! pattern a5a5a5a5...        (one logical block, hex)
//! crc32c 1b2c3d4e            (CRC32C of every byte before this line)
//! ```

use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cdb::{bad_cdb, bad_param, Bytes, CmdResult, Fail};
use crate::lu::{LogicalUnit, SanitizeOutcome};
use crate::sbc::{check_writable, deallocate, write_pattern};
use crate::sense::SenseReason;
use crate::server::{io_fail, lun_from_wire, Cmd};
use crate::ScsiStatus;

/// Bytes an OVERWRITE writes between two progress updates.
const STEP_BYTES: u64 = 1 << 20;

/// SANITIZE service actions (SBC-4 §5.30.1 table).
pub mod sa {
    pub const OVERWRITE: u8 = 0x01;
    pub const BLOCK_ERASE: u8 = 0x02;
    pub const EXIT_FAILURE_MODE: u8 = 0x1F;
}

/// A validated OVERWRITE parameter list (SBC-4 §5.30.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Overwrite {
    invert: bool,
    passes: u8,
    /// One logical block of the initialization pattern, repeated to fill it.
    block: Vec<u8>,
}

/// Parse the OVERWRITE parameter list of `len` bytes for blocks of `bs` bytes.
fn parse_overwrite(list: Bytes, len: usize, bs: usize) -> Result<Overwrite, Fail> {
    // SBC-4 §5.30.2.1: PARAMETER LIST LENGTH must be more than 4 and at most the logical
    // block length plus 4.
    if len < 5 || len > bs + 4 {
        return Err(bad_cdb(7, None));
    }
    if list.len() < len {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let b0 = list.u8(0);
    let invert = b0 & 0x80 != 0;
    // TEST field: 00b is the only value without vendor-specific meaning.
    if b0 & 0x60 != 0 {
        return Err(bad_param(0, Some(6)));
    }
    let passes = b0 & 0x1F;
    // SBC-4 §5.30.2.2: OVERWRITE COUNT 0 is an invalid field.
    if passes == 0 {
        return Err(bad_param(0, Some(4)));
    }
    let plen = usize::from(list.be16(2));
    // INITIALIZATION PATTERN LENGTH: 1 .. logical block length, and inside the list.
    if plen == 0 || plen > bs {
        return Err(bad_param(2, None));
    }
    if 4 + plen > len {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let pattern = list.slice(4, plen);
    let block = pattern.iter().copied().cycle().take(bs).collect();
    Ok(Overwrite {
        invert,
        passes,
        block,
    })
}

/// SANITIZE. Service actions are split in the opcode table; one handler serves them all.
pub fn sanitize(cmd: &Cmd, lu: &LogicalUnit) -> CmdResult {
    let c = cmd.cdb;
    let immed = c.bit(1, 7);
    let ause = c.bit(1, 5);
    let action = c.u8(1) & 0x1F;
    let len = usize::from(c.be16(7));
    cmd.expect_out(len as u64);
    // A failed sanitize must be repeatable, so only the medium itself is checked here.
    if !lu.medium_loaded() {
        return Err(SenseReason::MediumNotPresent.into());
    }
    let bs = lu.block_size() as usize;
    match action {
        sa::EXIT_FAILURE_MODE => {
            // SBC-4 §5.30.2.5: PARAMETER LIST LENGTH must be zero.
            if len != 0 {
                return Err(bad_cdb(7, None));
            }
            // SBC-4 §5.30.1: a sanitize that failed with AUSE = 0 is only left by another
            // sanitize; EXIT FAILURE MODE then is an invalid field.
            if !lu.exit_sanitize_failure() {
                return Err(bad_cdb(1, Some(4)));
            }
            if let Err(e) = journal(lu, None) {
                tracing::error!(error = %e, "sanitize journal: the failure record stays");
            }
            return Ok(Vec::new());
        }
        sa::BLOCK_ERASE => {
            // SBC-4 §5.30.2.3: PARAMETER LIST LENGTH must be zero.
            if len != 0 {
                return Err(bad_cdb(7, None));
            }
            // Only a thin LU can erase by deallocating (the table hides it elsewhere).
            if !lu.thin() {
                return Err(bad_cdb(1, Some(4)));
            }
        }
        sa::OVERWRITE => {}
        _ => return Err(bad_cdb(1, Some(4))),
    }
    let overwrite = if action == sa::OVERWRITE {
        Some(parse_overwrite(Bytes(cmd.data_out.slice(0, len)), len, bs)?)
    } else {
        None
    };
    check_writable(cmd, lu)?;
    // The operation needs the LU after this command is gone.
    let Some(owned) = lun_from_wire(cmd.req.lun).and_then(|l| cmd.server.lu(l)) else {
        return Err(SenseReason::LunNotSupported.into());
    };
    let Some(job) = lu.begin_sanitize() else {
        return Err(SenseReason::SanitizeInProgress.into());
    };
    let op = Operation { overwrite, ause };
    // Recorded before the first block changes, so a restart finds it.
    if let Err(e) = journal(lu, Some(&Record::Running(op.clone()))) {
        lu.end_sanitize(job, SanitizeOutcome::NotStarted);
        return Err(io_fail(
            "sanitize journal",
            SenseReason::InternalTargetFailure,
            &e,
        ));
    }
    if let Err(e) = start(owned, job, op) {
        // Nothing was touched: the LU stays as it was before this command.
        lu.end_sanitize(job, SanitizeOutcome::NotStarted);
        let old = lu.sanitize_failure().map(|ause| Record::Failed { ause });
        if let Err(e) = journal(lu, old.as_ref()) {
            tracing::error!(error = %e, "sanitize journal not restored");
        }
        return Err(io_fail(
            "sanitize thread",
            SenseReason::InternalTargetFailure,
            &e,
        ));
    }
    if immed {
        return Ok(Vec::new());
    }
    match lu.wait_sanitize(job, || cmd.cancelled()) {
        Some(SanitizeOutcome::Failed { .. }) => Err(SenseReason::SanitizeFailed.into()),
        Some(_) => Ok(Vec::new()),
        // The task was aborted; the sanitize carries on.
        None => Err(Fail::Status(ScsiStatus::TASK_ABORTED)),
    }
}

/// What a sanitize operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Operation {
    /// `None`: BLOCK ERASE.
    overwrite: Option<Overwrite>,
    /// AUSE of the SANITIZE command that asked for it.
    ause: bool,
}

/// Run sanitize `job` on a thread of its own; it ends the job and updates the journal.
fn start(lu: Arc<LogicalUnit>, job: u64, op: Operation) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sanitize".into())
        .spawn(move || {
            let result = {
                // Wait for every command already running on the LU; new ones are turned away.
                let _all = lu.lock_all();
                run(&lu, op.overwrite.as_ref())
            };
            let (outcome, record) = match result {
                Ok(()) => (SanitizeOutcome::Done, None),
                Err(e) => {
                    tracing::warn!(error = ?e, "sanitize failed");
                    let ause = op.ause;
                    (
                        SanitizeOutcome::Failed { ause },
                        Some(Record::Failed { ause }),
                    )
                }
            };
            if let Err(e) = journal(&lu, record.as_ref()) {
                tracing::error!(error = %e, "sanitize journal not updated");
            }
            lu.end_sanitize(job, outcome);
        })
        .map(drop)
}

/// Save `rec` in the LU's journal (remove the record with `None`); no journal, nothing to do.
fn journal(lu: &LogicalUnit, rec: Option<&Record>) -> io::Result<()> {
    match lu.sanitize_journal() {
        Some(j) => j.save(rec.map(encode).as_deref()),
        None => Ok(()),
    }
}

/// What attaching a journal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanitizeResume {
    Nothing,
    /// A sanitize was running at the last stop: it runs again.
    Restarted,
    /// The last sanitize had failed: media access stays refused.
    Failed,
}

impl LogicalUnit {
    /// Give the LU its sanitize journal and act on what it holds (before any initiator can
    /// reach the LU). A damaged journal is an error: starting as if no sanitize had been asked
    /// for would expose data the initiator meant to destroy.
    pub fn set_sanitize_journal(
        self: &Arc<Self>,
        j: Arc<dyn SanitizeJournal>,
    ) -> io::Result<SanitizeResume> {
        let saved = j.load()?;
        self.put_sanitize_journal(j.clone());
        let Some(text) = saved else {
            return Ok(SanitizeResume::Nothing);
        };
        let bs = self.block_size() as usize;
        let rec = decode(&text, bs).map_err(|m| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {m} (remove it to start without the sanitize it records)",
                    j.describe()
                ),
            )
        })?;
        match rec {
            Record::Failed { ause } => {
                self.restore_sanitize_failure(ause);
                Ok(SanitizeResume::Failed)
            }
            Record::Running(op) => {
                let job = self
                    .begin_sanitize()
                    .ok_or_else(|| io::Error::other("a sanitize is already running"))?;
                if let Err(e) = start(self.clone(), job, op) {
                    self.end_sanitize(job, SanitizeOutcome::NotStarted);
                    return Err(e);
                }
                Ok(SanitizeResume::Restarted)
            }
        }
    }
}

/// Where a LU's running or failed sanitize is recorded (see the module documentation).
pub trait SanitizeJournal: Send + Sync + fmt::Debug {
    /// The saved record, `None` if there is none.
    fn load(&self) -> io::Result<Option<String>>;
    /// Make `rec` the saved record, or remove it (`None`); durable when it returns `Ok`.
    fn save(&self, rec: Option<&str>) -> io::Result<()>;
    /// For logs and error messages.
    fn describe(&self) -> String;
}

/// A journal in one file, written atomically (temporary file, fsync, rename, fsync the
/// directory).
#[derive(Debug)]
pub struct FileSanitizeJournal {
    path: PathBuf,
}

impl FileSanitizeJournal {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SanitizeJournal for FileSanitizeJournal {
    fn load(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.path.display()),
            )),
        }
    }

    fn save(&self, rec: Option<&str>) -> io::Result<()> {
        match rec {
            Some(text) => crate::durable::write_durably(&self.path, text.as_bytes()),
            None => crate::durable::remove_durably(&self.path),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Record {
    Running(Operation),
    Failed { ause: bool },
}

const MAGIC: &str = "ferrite-sanitize 1";

fn encode(r: &Record) -> String {
    let mut t = format!("{MAGIC}\n");
    let bit = |b: bool| u8::from(b);
    match r {
        Record::Failed { ause } => {
            let _ = write!(t, "failed\nause {}\n", bit(*ause));
        }
        Record::Running(op) => match &op.overwrite {
            None => {
                let _ = write!(t, "running block-erase\nause {}\n", bit(op.ause));
            }
            Some(o) => {
                let _ = write!(
                    t,
                    "running overwrite\nause {}\npasses {}\ninvert {}\npattern ",
                    bit(op.ause),
                    o.passes,
                    bit(o.invert)
                );
                for b in &o.block {
                    let _ = write!(t, "{b:02x}");
                }
                t.push('\n');
            }
        },
    }
    let crc = crc32c::crc32c(t.as_bytes());
    let _ = writeln!(t, "crc32c {crc:08x}");
    t
}

/// Parse a record for a LU of `bs`-byte blocks.
fn decode(text: &str, bs: usize) -> Result<Record, String> {
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("truncated")?;
    let (body, last) = text.split_at(body_end);
    let crc = last
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("no checksum line")?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a version 1 sanitize journal".into());
    }
    let mut field = |name: &str| -> Result<String, String> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .map(|v| v.trim_start().to_string())
            .ok_or_else(|| format!("missing {name:?} line"))
    };
    let flag = |v: &str| match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("bad flag {v:?}")),
    };
    let state = field("")?;
    let ause = flag(&field("ause")?)?;
    let overwrite = match state.as_str() {
        "failed" => return Ok(Record::Failed { ause }),
        "running block-erase" => None,
        "running overwrite" => {
            let passes: u8 = field("passes")?
                .parse()
                .map_err(|_| "bad pass count".to_string())?;
            if !(1..=0x1F).contains(&passes) {
                return Err("bad pass count".into());
            }
            let invert = flag(&field("invert")?)?;
            let hex = field("pattern")?;
            if hex.len() != 2 * bs || !hex.is_ascii() {
                return Err(format!("pattern is not one {bs}-byte block"));
            }
            let block = (0..bs)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "bad pattern".to_string())?;
            Some(Overwrite {
                invert,
                passes,
                block,
            })
        }
        other => return Err(format!("unknown state {other:?}")),
    };
    Ok(Record::Running(Operation { overwrite, ause }))
}

/// Keeps a writer at or under `rate` bytes per second (0: no limit).
struct Pace {
    start: Instant,
    rate: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            start: Instant::now(),
            rate,
        }
    }

    /// `bytes` have been written since the start: sleep until that is within the rate.
    fn wait(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

fn run(lu: &LogicalUnit, overwrite: Option<&Overwrite>) -> Result<(), Fail> {
    let num = lu.num_blocks();
    let flush = || {
        lu.backstore()
            .flush()
            .map_err(|e| io_fail("sanitize flush", SenseReason::WriteError, &e))
    };
    let Some(o) = overwrite else {
        deallocate(lu, 0, num)?;
        lu.set_sanitize_progress(1, 1);
        return flush();
    };
    let bs = o.block.len() as u64;
    let step = (STEP_BYTES / bs).max(1);
    let total = num * u64::from(o.passes);
    let inverted: Vec<u8> = o.block.iter().map(|b| !b).collect();
    let pace = Pace::new(lu.config().sanitize_rate);
    for pass in 0..u64::from(o.passes) {
        // SBC-4 §5.30.2.2: INVERT inverts the pattern between consecutive passes, starting
        // inverted when OVERWRITE COUNT is even, so the last pass always writes the pattern
        // itself.
        let passes_left = u64::from(o.passes) - 1 - pass;
        let block = if o.invert && passes_left % 2 == 1 {
            &inverted
        } else {
            &o.block
        };
        let mut lba = 0;
        while lba < num {
            let n = step.min(num - lba);
            write_pattern(lu, lba, n, block)?;
            lba += n;
            let done = pass * num + lba;
            lu.set_sanitize_progress(done, total);
            pace.wait(done * bs);
        }
        flush()?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Record a failed sanitize in the LU's journal, as the sanitize thread does.
    pub(crate) fn record_failure(lu: &LogicalUnit, ause: bool) {
        journal(lu, Some(&Record::Failed { ause })).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(b0: u8, plen: u16, pattern: &[u8]) -> Vec<u8> {
        let mut v = vec![b0, 0];
        v.extend_from_slice(&plen.to_be_bytes());
        v.extend_from_slice(pattern);
        v
    }

    #[test]
    fn journal_records_round_trip_and_damage_is_refused() {
        let records = [
            Record::Failed { ause: true },
            Record::Failed { ause: false },
            Record::Running(Operation {
                overwrite: None,
                ause: true,
            }),
            Record::Running(Operation {
                overwrite: Some(Overwrite {
                    invert: true,
                    passes: 3,
                    block: (0..8u8).map(|i| i.wrapping_mul(37)).collect(),
                }),
                ause: false,
            }),
        ];
        for r in &records {
            let t = encode(r);
            assert!(t.starts_with("ferrite-sanitize 1\n"), "{t}");
            assert_eq!(decode(&t, 8).as_ref(), Ok(r), "{t}");
        }
        let good = encode(&records[3]);
        // A flipped byte, a truncation, a wrong block size.
        let flipped = good.replacen("passes 3", "passes 4", 1);
        assert_eq!(decode(&flipped, 8), Err("checksum mismatch".into()));
        assert!(decode(&good[..good.len() - 12], 8).is_err());
        assert!(decode(&good, 16).is_err());
        assert!(decode("", 8).is_err());
        assert!(decode("ferrite-sanitize 1\n", 8).is_err());
    }

    #[test]
    fn overwrite_list_rules() {
        let l = list(0x01, 4, b"abcd");
        let o = parse_overwrite(Bytes(&l), l.len(), 8).unwrap();
        assert_eq!(o.block, b"abcdabcd");
        assert_eq!((o.invert, o.passes), (false, 1));
        let l = list(0x83, 3, b"xyz");
        let o = parse_overwrite(Bytes(&l), l.len(), 8).unwrap();
        assert_eq!(o.block, b"xyzxyzxy");
        assert_eq!((o.invert, o.passes), (true, 3));
        // Length bounds are CDB errors; pattern errors are parameter list errors.
        for len in 0..5 {
            assert_eq!(parse_overwrite(Bytes(&l), len, 8), Err(bad_cdb(7, None)));
        }
        assert_eq!(parse_overwrite(Bytes(&l), 13, 8), Err(bad_cdb(7, None)));
        let zero_count = list(0x00, 4, b"abcd");
        assert_eq!(
            parse_overwrite(Bytes(&zero_count), 8, 8),
            Err(bad_param(0, Some(4)))
        );
        let long = list(0x01, 9, b"abcdefghi");
        assert_eq!(parse_overwrite(Bytes(&long), 13, 8), Err(bad_cdb(7, None)));
        let long = list(0x01, 9, b"abcdefgh");
        assert_eq!(
            parse_overwrite(Bytes(&long), 12, 8),
            Err(bad_param(2, None))
        );
        let none = list(0x01, 0, b"abcd");
        assert_eq!(parse_overwrite(Bytes(&none), 8, 8), Err(bad_param(2, None)));
        let test = list(0x21, 4, b"abcd");
        assert_eq!(
            parse_overwrite(Bytes(&test), 8, 8),
            Err(bad_param(0, Some(6)))
        );
        // Shorter data-out than the list length claims.
        assert_eq!(
            parse_overwrite(Bytes(&l[..5]), 7, 8),
            Err(SenseReason::ParameterListLengthError.into())
        );
    }
}
