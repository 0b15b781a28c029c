//! LBA range locks: what makes COMPARE AND WRITE, ORWRITE and WRITE ATOMIC atomic.
//!
//! SBC-4 §5.3 (COMPARE AND WRITE), §5.9 (ORWRITE) and §4.29 (atomic writes) ask that the
//! read-modify-write or the whole write is one indivisible step with respect to every other
//! command that touches the same blocks. A whole-LU lock would serialise unrelated commands
//! (a VMware host sends its ATS heartbeats to a few blocks while the rest of the LU is busy), so
//! each command locks only its own LBA range: readers shared, anything that changes blocks
//! exclusive. Overlapping writes are therefore ordered too, so a reader never sees a block that
//! is half one write and half another.
//!
//! Grants are first come, first served among overlapping requests (a ticket per request, and a
//! request waits for every earlier conflicting one, granted or not), so a stream of readers
//! cannot starve a writer and no two requests can wait for each other: the ticket order is total.
//! A command holds at most one range of one LU at a time (EXTENDED COPY takes them chunk by
//! chunk), so there is no lock-order deadlock across LUs either.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug)]
struct Entry {
    ticket: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Entry {
    fn conflicts(&self, other: &Entry) -> bool {
        (self.exclusive || other.exclusive) && self.start < other.end && other.start < self.end
    }
}

#[derive(Debug, Default)]
struct Table {
    next_ticket: u64,
    /// Granted and waiting requests, in ticket order.
    entries: Vec<Entry>,
}

/// The range locks of one logical unit.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    table: Mutex<Table>,
    changed: Condvar,
}

/// A held range; released on drop.
#[must_use = "the range is unlocked as soon as the guard is dropped"]
pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    ticket: u64,
}

impl RangeLocks {
    fn table(&self) -> MutexGuard<'_, Table> {
        // The table is consistent at every step; a panic elsewhere does not poison its meaning.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock blocks `[lba, lba + count)` (an empty range locks the single block `lba`, so that
    /// zero-length commands still order themselves).
    pub(crate) fn lock(&self, lba: u64, count: u64, exclusive: bool) -> RangeGuard<'_> {
        match self.lock_unless(lba, count, exclusive, || false) {
            Some(g) => g,
            None => unreachable!("a request that never gives up is always granted"),
        }
    }

    /// As [`RangeLocks::lock`], but give up (`None`) instead of waiting when `give_up` says so
    /// at a moment the request is blocked. A command that found the LU idle and then queued
    /// behind a whole-LU operation (a sanitize) that began meanwhile uses this not to wait
    /// for the whole operation.
    pub(crate) fn lock_unless(
        &self,
        lba: u64,
        count: u64,
        exclusive: bool,
        give_up: impl Fn() -> bool,
    ) -> Option<RangeGuard<'_>> {
        let mut t = self.table();
        let ticket = t.next_ticket;
        t.next_ticket += 1;
        let me = Entry {
            ticket,
            start: lba,
            end: lba.saturating_add(count.max(1)),
            exclusive,
        };
        t.entries.push(me);
        loop {
            let pos = t.entries.len() - 1;
            let mine = t
                .entries
                .iter()
                .position(|e| e.ticket == ticket)
                .unwrap_or(pos);
            let blocked = t.entries[..mine]
                .iter()
                .any(|e| e.conflicts(&t.entries[mine]));
            if !blocked {
                return Some(RangeGuard {
                    locks: self,
                    ticket,
                });
            }
            if give_up() {
                t.entries.retain(|e| e.ticket != ticket);
                drop(t);
                self.changed.notify_all();
                return None;
            }
            t = self.changed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lock the whole LU (SANITIZE).
    pub(crate) fn lock_all(&self) -> RangeGuard<'_> {
        self.lock(0, u64::MAX, true)
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.table().entries.len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.locks.table();
        t.entries.retain(|e| e.ticket != self.ticket);
        drop(t);
        self.locks.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn shared_ranges_coexist_and_disjoint_exclusive_ones_too() {
        let l = RangeLocks::default();
        let a = l.lock(0, 10, false);
        let b = l.lock(5, 10, false);
        let c = l.lock(20, 5, true);
        let d = l.lock(25, 5, true);
        assert_eq!(l.held(), 4);
        drop((a, b, c, d));
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn exclusive_waits_for_overlapping_reader() {
        let l = Arc::new(RangeLocks::default());
        let stage = Arc::new(AtomicU32::new(0));
        let r = l.lock(0, 8, false);
        let (l2, s2) = (l.clone(), stage.clone());
        let h = std::thread::spawn(move || {
            let _w = l2.lock(7, 1, true);
            s2.store(1, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            stage.load(Ordering::SeqCst),
            0,
            "writer got in under a reader"
        );
        drop(r);
        h.join().unwrap();
        assert_eq!(stage.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn later_readers_queue_behind_a_waiting_writer() {
        let l = Arc::new(RangeLocks::default());
        let r1 = l.lock(0, 1, false);
        let l2 = l.clone();
        let w = std::thread::spawn(move || {
            let _w = l2.lock(0, 1, true);
            std::thread::sleep(Duration::from_millis(20));
        });
        // Let the writer queue up; a reader arriving now waits for it (FIFO).
        while l.held() < 2 {
            std::thread::yield_now();
        }
        let l3 = l.clone();
        let r2 = std::thread::spawn(move || {
            let _r = l3.lock(0, 1, false);
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(l.held(), 3);
        drop(r1);
        w.join().unwrap();
        r2.join().unwrap();
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn whole_lu_lock_excludes_everything() {
        let l = RangeLocks::default();
        let e = Entry {
            ticket: 0,
            start: 0,
            end: u64::MAX,
            exclusive: true,
        };
        let r = Entry {
            ticket: 1,
            start: u64::MAX - 2,
            end: u64::MAX - 1,
            exclusive: false,
        };
        assert!(e.conflicts(&r));
        let g = l.lock_all();
        drop(g);
        let _z = l.lock(u64::MAX, 0, false); // saturates, no overflow
    }
}
