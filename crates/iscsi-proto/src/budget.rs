//! The target-wide budget for buffered command data.
//!
//! A SCSI write's data-out is held in memory from its first Data-Out PDU until the device
//! server has written it, and a read's data-in from the device server until its last Data-In
//! PDU is on the socket. Nothing in RFC 7143 bounds that across sessions: every session may
//! keep `cmd_window` commands of up to 8 MiB in flight, and a peer that sends all but the last
//! Data-Out of each write, or stops reading, keeps the memory for ever. So the target decides
//! how much data it takes on (RFC 7143 §4.2.3: the target solicits data with R2T when it is
//! ready for it; a read starts when the target gets to it) and takes only what fits the budget:
//!
//! * a write's solicited data is requested (its R2Ts sent) only once the whole of its buffer is
//!   granted; the grant is returned when the device server is done with the data;
//! * a read is handed to the device server only once its Expected Data Transfer Length is
//!   granted; the grant travels with the data-in buffer ([`SharedBuf`]) and is returned when
//!   the last PDU that points into it is gone (written to the socket, or dropped);
//! * unsolicited data (immediate data and Data-Out under InitialR2T=No) cannot be refused, so it
//!   is charged as it is admitted, and a session holding its share stops widening its command
//!   window (MaxCmdSN stays put), which bounds what it can send unasked to its window times
//!   FirstBurstLength. Charges do not count against grants: a write whose unsolicited part is
//!   charged must still be able to get the rest granted, or charged writes waiting for grants
//!   could hold the budget against each other forever;
//! * one session holds at most `per_session` bytes once it has a grant, so the budget never
//!   belongs to a few sessions, while a session with no grant can always take one when the
//!   budget has room (it cannot wait for its own releases then); sessions wait for room first
//!   come, first served, and the head of the queue is woken whenever room comes back.
//!
//! The budget is plain shared state (a mutex and counters) with no clock and no I/O; a waiting
//! account is woken through the [`Waker`] its driver supplied.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Called (from any thread) when an account at the head of the queue may find room now.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The shared budget; every session takes from it through its own [`BudgetAccount`].
pub struct BufferBudget {
    limit: u64,
    per_session: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bytes granted for solicited data, at most `limit`.
    granted: u64,
    /// Bytes charged for unsolicited data.
    charged: u64,
    next_id: u64,
    /// Accounts waiting for room, in arrival order.
    queue: VecDeque<u64>,
    wakers: HashMap<u64, Waker>,
}

impl fmt::Debug for BufferBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferBudget")
            .field("limit", &self.limit)
            .field("per_session", &self.per_session)
            .field("used", &self.used())
            .finish()
    }
}

impl BufferBudget {
    /// A budget of `limit` bytes of which one account may hold `per_session`. `per_session`
    /// is raised to at least `largest_request` and `limit` to at least `per_session`, so that
    /// every request the engine can make fits (a request that never fits would wait forever).
    pub fn new(limit: u64, per_session: u64, largest_request: u64) -> Arc<Self> {
        let per_session = per_session.max(largest_request);
        Arc::new(BufferBudget {
            limit: limit.max(per_session),
            per_session,
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn per_session(&self) -> u64 {
        self.per_session
    }

    /// Bytes granted or charged now, over all accounts.
    pub fn used(&self) -> u64 {
        let g = self.lock();
        g.granted + g.charged
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An account for one session; `waker` is called when it may retry a request.
    pub fn account(self: &Arc<Self>, waker: Waker) -> BudgetAccount {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.wakers.insert(id, waker);
        BudgetAccount {
            budget: self.clone(),
            id,
            granted: 0,
            charged: 0,
            lent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The waker of the account at the head of the queue, to be called once the lock is gone.
    fn head_waker(g: &Inner) -> Option<Waker> {
        g.queue.front().and_then(|id| g.wakers.get(id)).cloned()
    }

    /// Return granted and charged bytes and wake the head of the queue.
    fn give_back(&self, granted: u64, charged: u64) {
        let mut g = self.lock();
        g.granted = g.granted.saturating_sub(granted);
        g.charged = g.charged.saturating_sub(charged);
        let next = BufferBudget::head_waker(&g);
        drop(g);
        if let Some(w) = next {
            w();
        }
    }
}

/// Granted bytes that left their account with a buffer (a read's data-in on its way to the
/// socket); they go back to the budget when this is dropped, from whatever thread drops it.
pub struct Grant {
    budget: Arc<BufferBudget>,
    lent: Arc<AtomicU64>,
    bytes: u64,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Grant({})", self.bytes)
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.lent.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.give_back(self.bytes, 0);
    }
}

/// A device server's data-in buffer, shared by the Data-In PDUs cut from it, with the budget
/// grant it holds until the last of them is gone.
pub struct SharedBuf {
    data: Vec<u8>,
    _grant: Option<Grant>,
}

impl SharedBuf {
    pub fn new(data: Vec<u8>, grant: Option<Grant>) -> Self {
        SharedBuf {
            data,
            _grant: grant,
        }
    }

    /// The buffer back (its grant is returned).
    pub fn into_inner(self) -> Vec<u8> {
        self.data
    }
}

impl std::ops::Deref for SharedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl fmt::Debug for SharedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBuf({} bytes)", self.data.len())
    }
}

impl PartialEq for SharedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for SharedBuf {}

/// One session's share of the budget. Dropping it returns everything it holds.
pub struct BudgetAccount {
    budget: Arc<BufferBudget>,
    id: u64,
    granted: u64,
    charged: u64,
    /// Granted bytes handed out as [`Grant`]s and not yet returned.
    lent: Arc<AtomicU64>,
}

impl fmt::Debug for BudgetAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetAccount")
            .field("id", &self.id)
            .field("granted", &self.granted)
            .field("charged", &self.charged)
            .finish()
    }
}

impl BudgetAccount {
    /// Bytes this account holds.
    pub fn held(&self) -> u64 {
        self.granted + self.charged + self.lent.load(Ordering::Acquire)
    }

    /// Whether the account holds its whole share (its session should not widen its window).
    pub fn at_share(&self) -> bool {
        self.held() >= self.budget.per_session
    }

    /// Take `bytes` for a solicited transfer. On `false` the account waits in the queue (unless
    /// only its own share is in the way: then its own releases are what it waits for) and its
    /// waker is called when it reaches the head and room may have come back.
    pub fn try_take(&mut self, bytes: u64) -> bool {
        let b = self.budget.clone();
        let mut g = b.lock();
        let has_grant = self.granted > 0 || self.lent.load(Ordering::Acquire) > 0;
        if has_grant && self.held() + bytes > b.per_session {
            // Over its share: step out of the queue so others are not held up behind it.
            let was_head = g.queue.front() == Some(&self.id);
            g.queue.retain(|&i| i != self.id);
            let next = was_head.then(|| BufferBudget::head_waker(&g)).flatten();
            drop(g);
            if let Some(w) = next {
                w();
            }
            return false;
        }
        let first = g.queue.front().is_none_or(|&h| h == self.id);
        if first && g.granted + bytes <= b.limit {
            g.granted += bytes;
            self.granted += bytes;
            if g.queue.front() == Some(&self.id) {
                g.queue.pop_front();
            }
            // What is left may serve the next in line.
            let next = BufferBudget::head_waker(&g);
            drop(g);
            if let Some(w) = next {
                w();
            }
            return true;
        }
        if !g.queue.contains(&self.id) {
            g.queue.push_back(self.id);
        }
        false
    }

    /// Charge bytes that arrive unasked (immediate and unsolicited data): always accepted.
    pub fn charge(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let b = self.budget.clone();
        b.lock().charged += bytes;
        self.charged += bytes;
    }

    /// Give back `bytes` of a task that held `granted` bytes of grant and the rest as charge
    /// (clamped to what the account holds), and wake the head of the queue.
    pub fn release(&mut self, granted: u64, charged: u64) {
        let granted = granted.min(self.granted);
        let charged = charged.min(self.charged);
        if granted + charged == 0 {
            return;
        }
        self.granted -= granted;
        self.charged -= charged;
        self.budget.give_back(granted, charged);
    }

    /// Hand `bytes` of this account's grant over to a buffer: they stay counted against the
    /// account (and the budget) until the returned [`Grant`] is dropped.
    pub fn lend(&mut self, bytes: u64) -> Option<Grant> {
        let bytes = bytes.min(self.granted);
        if bytes == 0 {
            return None;
        }
        self.granted -= bytes;
        self.lent.fetch_add(bytes, Ordering::AcqRel);
        Some(Grant {
            budget: self.budget.clone(),
            lent: self.lent.clone(),
            bytes,
        })
    }

    /// Stop waiting (nothing of this session needs room any more).
    pub fn leave_queue(&mut self) {
        let b = self.budget.clone();
        let mut g = b.lock();
        let was_head = g.queue.front() == Some(&self.id);
        g.queue.retain(|&i| i != self.id);
        let next = was_head.then(|| BufferBudget::head_waker(&g)).flatten();
        drop(g);
        if let Some(w) = next {
            w();
        }
    }
}

impl Drop for BudgetAccount {
    fn drop(&mut self) {
        let b = self.budget.clone();
        let mut g = b.lock();
        g.granted = g.granted.saturating_sub(self.granted);
        g.charged = g.charged.saturating_sub(self.charged);
        self.granted = 0;
        self.charged = 0;
        g.queue.retain(|&i| i != self.id);
        g.wakers.remove(&self.id);
        let next = BufferBudget::head_waker(&g);
        drop(g);
        if let Some(w) = next {
            w();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting() -> (Waker, Arc<AtomicUsize>) {
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
    fn grants_up_to_the_limit_then_queues_first_come_first_served() {
        let b = BufferBudget::new(100, 60, 10);
        let (wa, _) = counting();
        let (wb, woken_b) = counting();
        let (wc, woken_c) = counting();
        let mut a = b.account(wa);
        let mut bb = b.account(wb);
        let mut c = b.account(wc);
        assert!(a.try_take(60));
        assert!(bb.try_take(30));
        assert_eq!(b.used(), 90);
        // 20 does not fit: b queues; then c would fit 10 but must wait behind b.
        assert!(!bb.try_take(20));
        assert!(!c.try_take(10));
        assert_eq!(woken_b.load(Ordering::SeqCst), 0);
        a.release(60, 0);
        assert_eq!(woken_b.load(Ordering::SeqCst), 1, "the head is woken");
        assert_eq!(woken_c.load(Ordering::SeqCst), 0, "only the head");
        assert!(bb.try_take(20));
        assert_eq!(
            woken_c.load(Ordering::SeqCst),
            1,
            "room left: the next is woken"
        );
        assert!(c.try_take(10));
        assert_eq!(b.used(), 60);
    }

    #[test]
    fn a_session_never_holds_more_than_its_share_and_does_not_block_others() {
        let b = BufferBudget::new(100, 40, 10);
        let (wa, _) = counting();
        let (wb, _) = counting();
        let mut a = b.account(wa);
        let mut other = b.account(wb);
        assert!(a.try_take(30));
        assert!(!a.try_take(20), "over its share of 40");
        assert!(other.try_take(50), "a is not queued in front of others");
        a.release(30, 0);
        assert!(a.try_take(20));
        assert!(!a.at_share());
        a.charge(25);
        assert!(a.at_share());
    }

    #[test]
    fn charges_never_keep_a_write_from_its_grant() {
        // Unsolicited charges above the limit: a session without a grant still gets one.
        let b = BufferBudget::new(20, 20, 10);
        let (wa, _) = counting();
        let (wb, _) = counting();
        let mut a = b.account(wa);
        let mut other = b.account(wb);
        a.charge(30);
        other.charge(30);
        assert!(a.try_take(10));
        assert!(other.try_take(10));
        assert_eq!(b.used(), 80);
        // With a grant held, the session's own share (charges included) applies.
        assert!(!a.try_take(10));
        a.release(10, 30);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn one_request_always_fits_an_idle_budget() {
        // A limit below the largest request is raised to it.
        let b = BufferBudget::new(4, 1, 16);
        assert_eq!((b.limit(), b.per_session()), (16, 16));
        let (w, _) = counting();
        let mut a = b.account(w);
        assert!(a.try_take(16));
    }

    #[test]
    fn dropping_an_account_returns_everything_and_wakes_the_next() {
        let b = BufferBudget::new(50, 50, 10);
        let (wa, _) = counting();
        let (wb, woken_b) = counting();
        let mut a = b.account(wa);
        let mut bb = b.account(wb);
        assert!(a.try_take(40));
        a.charge(10);
        assert!(!bb.try_take(20));
        drop(a);
        assert_eq!(b.used(), 0);
        assert_eq!(woken_b.load(Ordering::SeqCst), 1);
        assert!(bb.try_take(50));
    }

    #[test]
    fn a_lent_grant_counts_until_its_buffer_is_gone() {
        let b = BufferBudget::new(64, 48, 16);
        let (wa, _) = counting();
        let (wb, woken_b) = counting();
        let mut a = b.account(wa);
        let mut other = b.account(wb);
        assert!(a.try_take(32));
        let buf = SharedBuf::new(vec![7; 4], a.lend(32));
        assert_eq!(
            (a.held(), b.used()),
            (32, 32),
            "still held while the buffer lives"
        );
        assert!(!a.try_take(17), "the share counts lent bytes");
        drop(a); // the session ends; its data is still on the way out
        assert_eq!(b.used(), 32);
        assert!(other.try_take(32));
        assert!(!other.try_take(16), "the budget is full");
        // The last PDU pointing into the buffer goes: the grant comes back, from any thread.
        std::thread::spawn(move || drop(buf)).join().unwrap();
        assert_eq!(b.used(), 32);
        assert_eq!(woken_b.load(Ordering::SeqCst), 1);
        assert!(other.try_take(16));
    }

    #[test]
    fn leaving_the_queue_lets_the_next_go_first() {
        let b = BufferBudget::new(30, 30, 10);
        let (wa, _) = counting();
        let (wb, _) = counting();
        let (wc, woken_c) = counting();
        let mut a = b.account(wa);
        let mut bb = b.account(wb);
        let mut c = b.account(wc);
        assert!(a.try_take(25));
        assert!(!bb.try_take(10));
        assert!(!c.try_take(5));
        bb.leave_queue();
        assert_eq!(woken_c.load(Ordering::SeqCst), 1);
        assert!(c.try_take(5));
    }
}
