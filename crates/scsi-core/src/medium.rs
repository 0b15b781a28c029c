//! Long operations on the whole medium: SANITIZE (SBC-4 §4.11) and FORMAT UNIT (SBC-4 §5.4).
//!
//! An operation belongs to the logical unit, not to the command that asked for it: it runs on
//! a thread of its own, so a command with IMMED = 1 returns as soon as its CDB and parameter
//! list are validated, and one with IMMED = 0 waits for the end. ABORT TASK, LUN and target
//! resets and I_T nexus loss end the command, never the operation (SBC-4 §4.11.2): a waiting
//! command gives up when the transport cancels it (`Cmd::cancelled`). While the operation runs
//! every command but INQUIRY, REPORT LUNS and REQUEST SENSE ends in NOT READY with SANITIZE IN
//! PROGRESS or FORMAT IN PROGRESS and a progress indication (checked in dispatch); commands
//! already running finish first, as the operation takes every block's range lock. A sanitize
//! OVERWRITE writes at most `LuConfig::sanitize_rate` bytes per second.
//!
//! A failure is remembered: media access then fails with SANITIZE COMMAND FAILED until a
//! sanitize succeeds or, for one started with AUSE = 1, EXIT FAILURE MODE (SBC-4 §4.11.5), or
//! with MEDIUM FORMAT CORRUPTED until a format succeeds.
//!
//! With an [`OpJournal`] (the daemon gives file and block LUNs one in its state directory) the
//! operation survives a restart the way a drive's survives a power cycle: the journal records
//! it before the first block changes, and a LU that finds a running record when its journal is
//! attached starts it again from the beginning (an overwrite or a deallocation is idempotent).
//! A failure is recorded too, so the LU keeps refusing media access after a restart.
//!
//! # Journal format (version 1)
//!
//! ```text
//! ferrite-medium-op 1
//! medium 262144 512            (logical blocks and their length: a record is only acted on
//!                               for the medium it was written for)
//! running sanitize overwrite   (or: running sanitize deallocate, running sanitize
//!                               crypto-erase, running format overwrite, running format
//!                               deallocate, failed sanitize, failed format)
//! ause 0                       (sanitize only)
//! passes 1                     (overwrite only, as are the next two)
//! invert 0
//! pattern a5a5a5a5...          (one logical block, hex)
//! crc32c 1b2c3d4e              (CRC32C of every byte before this line)
//! ```

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cdb::{CmdResult, Fail};
use crate::cmd::{io_fail, Cmd};
use crate::journal::OpJournal;
use crate::lu::{Failure, LogicalUnit, OpKind, OpOutcome};
use crate::sbc::{deallocate, write_pattern};
use crate::sense::SenseReason;
use crate::ScsiStatus;

/// Bytes an overwrite writes between two progress updates.
const STEP_BYTES: u64 = 1 << 20;

/// Write one logical block's pattern over every block, `passes` times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Overwrite {
    /// Invert the pattern between passes (SBC-4 §5.30.2.2).
    pub invert: bool,
    pub passes: u8,
    /// One logical block of the pattern.
    pub block: Vec<u8>,
}

/// What an operation does to every block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    Overwrite(Overwrite),
    /// Deallocate (thin LUs: the blocks read as zeroes, LBPRZ = 1).
    Deallocate,
    /// Replace the encryption key (encrypted LUs, SBC-4 §4.11.4). Running it again after a
    /// crash replaces the key again, which is as good.
    CryptoErase,
}

/// One operation on the whole medium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Operation {
    pub kind: OpKind,
    pub work: Work,
    /// AUSE of the SANITIZE command that asked for it (sanitize only).
    pub ause: bool,
}

impl Operation {
    fn failure(&self) -> Failure {
        match self.kind {
            OpKind::Sanitize => Failure::Sanitize { ause: self.ause },
            OpKind::Format => Failure::Format,
        }
    }
}

/// Start `op` for the command `cmd` on `lu` and answer as IMMED asks: at once, or when the
/// operation ends (a failed one ends the waiting command with SANITIZE COMMAND FAILED or
/// MEDIUM FORMAT CORRUPTED).
pub(crate) fn launch(cmd: &Cmd, lu: &LogicalUnit, op: Operation, immed: bool) -> CmdResult {
    // The operation needs the LU after this command is gone.
    let Some(owned) = cmd.lu.cloned() else {
        return Err(SenseReason::LunNotSupported.into());
    };
    let Some(job) = lu.begin_operation(op.kind) else {
        return Err(Fail::Check(
            lu.busy()
                .unwrap_or(crate::Sense::new(SenseReason::NotReady)),
        ));
    };
    let failed = match op.kind {
        OpKind::Sanitize => SenseReason::SanitizeFailed,
        OpKind::Format => SenseReason::MediumFormatCorrupted,
    };
    // Recorded before the first block changes, so a restart finds it.
    if let Err(e) = journal(lu, Some(&Record::Running(op.clone()))) {
        lu.end_operation(job, OpOutcome::NotStarted);
        return Err(io_fail(
            "operation journal",
            SenseReason::InternalTargetFailure,
            &e,
        ));
    }
    if let Err(e) = start(owned, job, op) {
        // Nothing was touched: the LU stays as it was before this command.
        lu.end_operation(job, OpOutcome::NotStarted);
        journal_state(lu);
        return Err(io_fail(
            "operation thread",
            SenseReason::InternalTargetFailure,
            &e,
        ));
    }
    if immed {
        return Ok(Vec::new());
    }
    match lu.wait_operation(job, || cmd.cancelled()) {
        Some(OpOutcome::Failed(_)) => Err(failed.into()),
        Some(_) => Ok(Vec::new()),
        // The task was aborted; the operation carries on.
        None => Err(Fail::Status(ScsiStatus::TASK_ABORTED)),
    }
}

/// Run operation `job` on a thread of its own; it ends the job and updates the journal.
fn start(lu: Arc<LogicalUnit>, job: u64, op: Operation) -> io::Result<()> {
    let name = match op.kind {
        OpKind::Sanitize => "sanitize",
        OpKind::Format => "format",
    };
    let owner = lu.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = {
                // Wait for every command already running on the LU; new ones are turned away.
                let _all = lu.lock_all();
                run(&lu, &op)
            };
            let outcome = match result {
                Ok(()) => OpOutcome::Done,
                Err(e) => {
                    tracing::warn!(error = ?e, operation = name, "failed");
                    OpOutcome::Failed(op.failure())
                }
            };
            let record = match outcome {
                OpOutcome::Failed(f) => Some(Record::Failed(f)),
                _ => None,
            };
            if let Err(e) = journal(&lu, record.as_ref()) {
                tracing::error!(error = %e, operation = name, "journal not updated");
            }
            lu.end_operation(job, outcome);
        })?;
    owner.set_op_thread(handle);
    Ok(())
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

fn run(lu: &LogicalUnit, op: &Operation) -> Result<(), Fail> {
    let num = lu.num_blocks();
    let flush = || {
        lu.backstore()
            .flush()
            .map_err(|e| io_fail("operation flush", SenseReason::WriteError, &e))
    };
    let o = match &op.work {
        Work::CryptoErase => {
            lu.backstore()
                .crypto_erase()
                .map_err(|e| io_fail("crypto erase", SenseReason::WriteError, &e))?;
            lu.set_progress(1, 1);
            return Ok(());
        }
        Work::Deallocate => {
            deallocate(lu, 0, num)?;
            lu.set_progress(1, 1);
            return flush();
        }
        Work::Overwrite(o) => o,
    };
    let bs = o.block.len() as u64;
    let step = (STEP_BYTES / bs).max(1);
    let total = num * u64::from(o.passes);
    let inverted: Vec<u8> = o.block.iter().map(|b| !b).collect();
    let rate = match op.kind {
        OpKind::Sanitize => lu.config().sanitize_rate,
        OpKind::Format => 0,
    };
    let pace = Pace::new(rate);
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
            lu.set_progress(done, total);
            pace.wait(done * bs);
        }
        flush()?;
    }
    Ok(())
}

/// Save `rec` in the LU's journal (remove the record with `None`); no journal, nothing to do.
fn journal(lu: &LogicalUnit, rec: Option<&Record>) -> io::Result<()> {
    match lu.journal() {
        Some(j) => j.save(rec.map(|r| encode(r, Geometry::of(lu))).as_deref()),
        None => Ok(()),
    }
}

/// Make the journal say what the LU's failure state is (no operation is running).
pub(crate) fn journal_state(lu: &LogicalUnit) {
    let rec = lu.failure().map(Record::Failed);
    if let Err(e) = journal(lu, rec.as_ref()) {
        tracing::error!(error = %e, "operation journal not updated");
    }
}

/// What attaching a journal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    Nothing,
    /// A sanitize or format was running at the last stop: it runs again.
    Restarted,
    /// The last sanitize or format had failed: media access stays refused.
    Failed,
}

impl LogicalUnit {
    /// Give the LU its operation journal and act on what it holds (before any initiator can
    /// reach the LU). A damaged journal is an error: starting as if no sanitize had been asked
    /// for would expose data the initiator meant to destroy.
    pub fn set_journal(self: &Arc<Self>, j: Arc<dyn OpJournal>) -> io::Result<Resume> {
        let saved = j.load()?;
        self.put_journal(j.clone());
        let Some(text) = saved else {
            return Ok(Resume::Nothing);
        };
        let rec = decode(&text, Geometry::of(self)).map_err(|m| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {m} (remove it to start without the operation it records)",
                    j.describe()
                ),
            )
        })?;
        match rec {
            Record::Failed(f) => {
                self.restore_failure(f);
                Ok(Resume::Failed)
            }
            Record::Running(op) => {
                let job = self
                    .begin_operation(op.kind)
                    .ok_or_else(|| io::Error::other("an operation is already running"))?;
                if let Err(e) = start(self.clone(), job, op) {
                    self.end_operation(job, OpOutcome::NotStarted);
                    return Err(e);
                }
                Ok(Resume::Restarted)
            }
        }
    }
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Running(Operation),
    Failed(Failure),
}

const MAGIC: &str = "ferrite-medium-op 1";

/// The medium a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub blocks: u64,
    pub block_size: u32,
}

impl Geometry {
    fn of(lu: &LogicalUnit) -> Self {
        Self {
            blocks: lu.num_blocks(),
            block_size: lu.block_size(),
        }
    }
}

fn kind_name(k: OpKind) -> &'static str {
    match k {
        OpKind::Sanitize => "sanitize",
        OpKind::Format => "format",
    }
}

pub(crate) fn encode(r: &Record, g: Geometry) -> String {
    let mut t = format!("{MAGIC}\nmedium {} {}\n", g.blocks, g.block_size);
    let bit = |b: bool| u8::from(b);
    match r {
        Record::Failed(Failure::Sanitize { ause }) => {
            let _ = write!(t, "failed sanitize\nause {}\n", bit(*ause));
        }
        Record::Failed(Failure::Format) => t.push_str("failed format\n"),
        Record::Running(op) => {
            let work = match op.work {
                Work::Overwrite(_) => "overwrite",
                Work::Deallocate => "deallocate",
                Work::CryptoErase => "crypto-erase",
            };
            let _ = writeln!(t, "running {} {work}", kind_name(op.kind));
            if op.kind == OpKind::Sanitize {
                let _ = writeln!(t, "ause {}", bit(op.ause));
            }
            if let Work::Overwrite(o) = &op.work {
                let _ = write!(t, "passes {}\ninvert {}\npattern ", o.passes, bit(o.invert));
                for b in &o.block {
                    let _ = write!(t, "{b:02x}");
                }
                t.push('\n');
            }
        }
    }
    backstore::durable::seal(&mut t);
    t
}

/// Parse a record for a LU of geometry `g`; one written for another medium is refused.
pub(crate) fn decode(text: &str, g: Geometry) -> Result<Record, String> {
    let bs = g.block_size as usize;
    let body = backstore::durable::unseal(text)?;
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a version 1 operation journal".into());
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
    let medium = field("medium")?;
    let want = format!("{} {}", g.blocks, g.block_size);
    if medium != want {
        return Err(format!(
            "written for a medium of {medium} (blocks, block length), this LU is {want}"
        ));
    }
    let state = field("")?;
    let words: Vec<&str> = state.split(' ').collect();
    let (kind, work) = match words.as_slice() {
        ["failed", "sanitize"] => {
            let ause = flag(&field("ause")?)?;
            return Ok(Record::Failed(Failure::Sanitize { ause }));
        }
        ["failed", "format"] => return Ok(Record::Failed(Failure::Format)),
        ["running", k, w] => (*k, *w),
        _ => return Err(format!("unknown state {state:?}")),
    };
    let kind = match kind {
        "sanitize" => OpKind::Sanitize,
        "format" => OpKind::Format,
        other => return Err(format!("unknown operation {other:?}")),
    };
    let ause = if kind == OpKind::Sanitize {
        flag(&field("ause")?)?
    } else {
        false
    };
    let work = match work {
        "deallocate" => Work::Deallocate,
        "crypto-erase" => Work::CryptoErase,
        "overwrite" => {
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
            Work::Overwrite(Overwrite {
                invert,
                passes,
                block,
            })
        }
        other => return Err(format!("unknown work {other:?}")),
    };
    Ok(Record::Running(Operation { kind, work, ause }))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Put `rec` in the LU's journal, as an operation thread does.
    pub(crate) fn record(lu: &LogicalUnit, rec: &Record) {
        journal(lu, Some(rec)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_records_round_trip_and_damage_is_refused() {
        let pattern = Overwrite {
            invert: true,
            passes: 3,
            block: (0..8u8).map(|i| i.wrapping_mul(37)).collect(),
        };
        let records = [
            Record::Failed(Failure::Sanitize { ause: true }),
            Record::Failed(Failure::Sanitize { ause: false }),
            Record::Failed(Failure::Format),
            Record::Running(Operation {
                kind: OpKind::Sanitize,
                work: Work::Deallocate,
                ause: true,
            }),
            Record::Running(Operation {
                kind: OpKind::Format,
                work: Work::Deallocate,
                ause: false,
            }),
            Record::Running(Operation {
                kind: OpKind::Sanitize,
                work: Work::CryptoErase,
                ause: true,
            }),
            Record::Running(Operation {
                kind: OpKind::Format,
                work: Work::Overwrite(pattern.clone()),
                ause: false,
            }),
            Record::Running(Operation {
                kind: OpKind::Sanitize,
                work: Work::Overwrite(pattern),
                ause: false,
            }),
        ];
        let g = Geometry {
            blocks: 1000,
            block_size: 8,
        };
        for r in &records {
            let t = encode(r, g);
            assert!(t.starts_with("ferrite-medium-op 1\nmedium 1000 8\n"), "{t}");
            assert_eq!(decode(&t, g).as_ref(), Ok(r), "{t}");
        }
        let good = encode(&records[6], g);
        // A changed byte, a truncation, another medium, nothing at all.
        let changed = good.replacen("passes 3", "passes 4", 1);
        assert_eq!(
            decode(&changed, g),
            Err("checksum mismatch (damaged)".into())
        );
        assert!(decode(&good[..good.len() - 12], g).is_err());
        let other = Geometry { blocks: 999, ..g };
        assert!(decode(&good, other)
            .unwrap_err()
            .starts_with("written for a medium of 1000 8"));
        let bigger_blocks = Geometry {
            block_size: 16,
            ..g
        };
        assert!(decode(&good, bigger_blocks).is_err());
        assert!(decode("", g).is_err());
        assert!(decode("ferrite-medium-op 1\n", g).is_err());
    }
}
