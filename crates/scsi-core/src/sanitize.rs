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
//! The operation is not resumed when the daemon restarts: a real drive's is, Ferrite's running
//! state is not persisted (yet).

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
#[derive(Debug, PartialEq, Eq)]
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
    let spawned = std::thread::Builder::new()
        .name("sanitize".into())
        .spawn(move || {
            let result = {
                // Wait for every command already running on the LU; new ones are turned away.
                let _all = owned.lock_all();
                run(&owned, overwrite.as_ref())
            };
            if let Err(e) = &result {
                tracing::warn!(error = ?e, "sanitize failed");
            }
            let outcome = match result {
                Ok(()) => SanitizeOutcome::Done,
                Err(_) => SanitizeOutcome::Failed { ause },
            };
            owned.end_sanitize(job, outcome);
        });
    if let Err(e) = spawned {
        // Nothing was touched: the LU stays as it was before this command.
        lu.end_sanitize(job, SanitizeOutcome::NotStarted);
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
        // SBC-4 §5.30.2.2: INVERT inverts the pattern between consecutive passes.
        let block = if o.invert && pass % 2 == 1 {
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
mod tests {
    use super::*;

    fn list(b0: u8, plen: u16, pattern: &[u8]) -> Vec<u8> {
        let mut v = vec![b0, 0];
        v.extend_from_slice(&plen.to_be_bytes());
        v.extend_from_slice(pattern);
        v
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
