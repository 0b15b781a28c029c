//! The task set of a logical unit (SAM-5 §8.6, §8.9): one for every I_T nexus that reaches
//! the logical unit (the Control mode page says TST = 000b), in the order tasks entered it.
//!
//! The transport enters a task when it delivers the command (RFC 7143: in CmdSN order) and the
//! task leaves when it is done, aborted or failed (dropping its [`TaskEntry`]). Meanwhile
//! [`TaskEntry::blocked`] says whether the task attributes of the others keep it dormant:
//!
//! - HEAD OF QUEUE runs at once;
//! - ORDERED runs once every older task and every HEAD OF QUEUE task has left;
//! - SIMPLE (and untagged, and ACA, which this target does not establish) runs once every
//!   older ORDERED task and every HEAD OF QUEUE task has left.
//!
//! When a task leaves while ORDERED or HEAD OF QUEUE tasks are about, the owners of the other
//! tasks are woken (each registered a waker with its tasks) to look at their dormant ones
//! again. With only SIMPLE tasks (what Linux, Windows and ESXi send) nothing is ever blocked
//! and `blocked` takes no lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::TaskAttr;

/// Called when a task of its owner may have become runnable.
pub type TaskWaker = Arc<dyn Fn() + Send + Sync>;

/// One logical unit's task set (see the module docs).
#[derive(Default)]
pub struct TaskSet {
    inner: Mutex<Inner>,
    /// ORDERED and HEAD OF QUEUE tasks in the set: while 0, nothing is blocked.
    special: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    next: u64,
    live: BTreeMap<u64, Member>,
    ordered: BTreeSet<u64>,
    head_of_queue: usize,
}

struct Member {
    owner: u64,
    waker: Option<TaskWaker>,
}

impl fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_struct("TaskSet")
            .field("tasks", &g.live.len())
            .field("ordered", &g.ordered.len())
            .field("head_of_queue", &g.head_of_queue)
            .finish()
    }
}

impl TaskSet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task enters the set, behind every task already in it. `owner` identifies who holds
    /// it (an I_T nexus's session); `waker` is called when it may have become runnable.
    pub fn enter(
        self: &Arc<Self>,
        attr: TaskAttr,
        owner: u64,
        waker: Option<TaskWaker>,
    ) -> TaskEntry {
        let mut g = self.lock();
        let seq = g.next;
        g.next += 1;
        g.live.insert(seq, Member { owner, waker });
        match attr {
            TaskAttr::Ordered => {
                g.ordered.insert(seq);
                self.special.fetch_add(1, Ordering::AcqRel);
            }
            TaskAttr::HeadOfQueue => {
                g.head_of_queue += 1;
                self.special.fetch_add(1, Ordering::AcqRel);
            }
            _ => {}
        }
        TaskEntry {
            set: self.clone(),
            seq,
            attr,
            owner,
        }
    }

    /// Tasks in the set.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A task's place in its logical unit's task set; dropping it takes the task out.
pub struct TaskEntry {
    set: Arc<TaskSet>,
    seq: u64,
    attr: TaskAttr,
    owner: u64,
}

impl fmt::Debug for TaskEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskEntry({}, {:?})", self.seq, self.attr)
    }
}

impl TaskEntry {
    /// Whether the task must stay dormant for now (SAM-5 §8.6; see the module docs).
    pub fn blocked(&self) -> bool {
        if self.attr == TaskAttr::HeadOfQueue || self.set.special.load(Ordering::Acquire) == 0 {
            return false;
        }
        let g = self.set.lock();
        if g.head_of_queue > 0 {
            return true;
        }
        let older = |first: Option<&u64>| first.is_some_and(|&s| s < self.seq);
        match self.attr {
            TaskAttr::Ordered => older(g.live.keys().next()),
            _ => older(g.ordered.iter().next()),
        }
    }
}

impl Drop for TaskEntry {
    fn drop(&mut self) {
        let wake: Vec<TaskWaker> = {
            let mut g = self.set.lock();
            g.live.remove(&self.seq);
            match self.attr {
                TaskAttr::Ordered => {
                    g.ordered.remove(&self.seq);
                    self.set.special.fetch_sub(1, Ordering::AcqRel);
                }
                TaskAttr::HeadOfQueue => {
                    g.head_of_queue -= 1;
                    self.set.special.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
            let special = self.attr == TaskAttr::Ordered || self.attr == TaskAttr::HeadOfQueue;
            if !special && g.ordered.is_empty() && g.head_of_queue == 0 {
                Vec::new()
            } else {
                // Every other owner with a task here, once each.
                let mut owners = BTreeSet::new();
                g.live
                    .values()
                    .filter(|m| m.owner != self.owner && owners.insert(m.owner))
                    .filter_map(|m| m.waker.clone())
                    .collect()
            }
        };
        for w in wake {
            w();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counter() -> (TaskWaker, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            Arc::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
            n,
        )
    }

    #[test]
    fn simple_tasks_never_wait() {
        let s = Arc::new(TaskSet::new());
        let a = s.enter(TaskAttr::Simple, 1, None);
        let b = s.enter(TaskAttr::Simple, 2, None);
        assert!(!a.blocked() && !b.blocked());
        assert_eq!(s.len(), 2);
        drop(a);
        drop(b);
        assert!(s.is_empty());
    }

    #[test]
    fn ordered_waits_for_every_older_task_and_holds_back_younger_simple_ones() {
        let s = Arc::new(TaskSet::new());
        let (wa, na) = counter();
        let (wb, nb) = counter();
        let old = s.enter(TaskAttr::Simple, 1, Some(wa.clone()));
        let ord = s.enter(TaskAttr::Ordered, 2, Some(wb.clone()));
        let young = s.enter(TaskAttr::Simple, 1, Some(wa));
        assert!(!old.blocked());
        assert!(
            ord.blocked(),
            "behind an older SIMPLE task of another owner"
        );
        assert!(young.blocked(), "behind an older ORDERED task");
        drop(old);
        assert_eq!(
            nb.load(Ordering::SeqCst),
            1,
            "the ORDERED task's owner is woken"
        );
        assert!(!ord.blocked());
        assert!(young.blocked());
        drop(ord);
        assert_eq!(na.load(Ordering::SeqCst), 1);
        assert!(!young.blocked());
    }

    #[test]
    fn head_of_queue_runs_at_once_and_holds_back_the_others() {
        let s = Arc::new(TaskSet::new());
        let ord = s.enter(TaskAttr::Ordered, 1, None);
        let simple = s.enter(TaskAttr::Simple, 2, None);
        let hoq = s.enter(TaskAttr::HeadOfQueue, 3, None);
        assert!(!hoq.blocked());
        assert!(ord.blocked(), "a HEAD OF QUEUE task goes first");
        assert!(simple.blocked());
        drop(hoq);
        assert!(!ord.blocked());
        assert!(simple.blocked());
        drop(ord);
        assert!(!simple.blocked());
    }

    #[test]
    fn only_simple_tasks_leaving_wake_nobody() {
        let s = Arc::new(TaskSet::new());
        let (w, n) = counter();
        let a = s.enter(TaskAttr::Simple, 1, Some(w.clone()));
        let b = s.enter(TaskAttr::Simple, 2, Some(w));
        drop(a);
        drop(b);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }
}
