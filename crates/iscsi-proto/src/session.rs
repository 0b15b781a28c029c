//! The state a session shares among its connections, and the full feature phase engine that
//! works on it, sans-IO (RFC 7143 §3.2, §4.2, §6.3; SAM-5 §4.6).
//!
//! ```text
//!   Session (SessionCore)                       one per session, shared by its connections
//!   ├── CmdSN window (ExpCmdSN / MaxCmdSN)      RFC 7143 §4.2.2.1: one command order for all
//!   ├── task table by ITT, each task with the   RFC 7143 §5.1: connection allegiance
//!   │   CID of its connection
//!   ├── task set order (attributes), TMFs, buffer budget, LUN filter
//!   └── links by CID                            one per connection
//!       └── StatSN, output queue, events, digests, negotiated connection keys, NOP ping,
//!           text exchange, logout, R2T clock
//! ```
//!
//! Every call comes in on behalf of one connection (the *current link*); what it answers goes
//! out there, and what belongs to another connection's task (its R2Ts, Data-In, status, the
//! device server's `Execute` and `Cancel`) goes out on that task's connection. The core
//! switches its current link for those (`on`), and remembers which other links got output so
//! the driver can wake their I/O tasks. [`crate::Connection`] is the per-connection handle
//! the driver holds; [`SessionHandle`] is what the daemon holds to act on a session from
//! outside (another I_T nexus's task management, operator actions).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use iscsi_wire::frame::RawPdu;
use iscsi_wire::header::*;
use iscsi_wire::{ahs, text, AsyncEvent, LogoutReason, LogoutResponseCode, Opcode, RejectReason};
use iscsi_wire::{TmfFunction, TmfResponse, RESERVED_TAG};

use crate::budget::{BudgetAccount, Grant, SharedBuf, Waker};
use crate::conn::{AbortedTasks, ConnConfig, ConnEvent, ScsiTask, TaskId, TaskOutcome, TmfAction};
use crate::login::{Directory, SessionKind};
use crate::params::Negotiated;
use crate::serial;
use crate::{OutPdu, Payload};

mod recovery;

#[derive(Debug)]
struct R2tState {
    ttt: u32,
    /// Its R2TSN (RFC 7143 §11.8.4), for an R2T SNACK.
    sn: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
    /// ERL ≥ 1: a Data-Out of this sequence was lost (digest error, gap); the rest of the
    /// sequence is dropped and a recovery R2T asks again for what is missing.
    damaged: bool,
}

#[derive(Debug)]
struct WriteState {
    buf: Vec<u8>,
    /// End of the unsolicited part (immediate data + unsolicited Data-Out).
    unsolicited_end: u32,
    unsolicited_done: bool,
    unsolicited_data_sn: u32,
    /// ERL ≥ 1: part of the unsolicited data was lost; R2Ts ask for it once the unsolicited
    /// sequence ends.
    unsolicited_damaged: bool,
    next_r2t_offset: u32,
    r2t_sn: u32,
    r2ts: Vec<R2tState>,
}

#[derive(Debug)]
enum TaskPhase {
    /// Gathering data-out.
    Receiving(WriteState),
    /// Handed to the device server.
    Executing,
    /// ErrorRecoveryLevel 2: done while its connection was down; the answer (and the data-in
    /// grant) waits for the task to be reassigned (RFC 7143 §6.2.2).
    Answered(Box<(TaskOutcome, Option<Grant>)>),
}

#[derive(Debug)]
struct Task {
    id: TaskId,
    lun: u64,
    cdb: Vec<u8>,
    attr: u8,
    read: bool,
    write: bool,
    expected_len: u32,
    /// Delivered in CmdSN order (or immediate).
    delivered: bool,
    phase: TaskPhase,
    /// DataSN / R2TSN counter for the task (RFC 7143 §11.7.5, §11.8.4).
    data_sn: u32,
    /// Write budget this task holds for its data-out buffer.
    held: Held,
    /// Place in the task set (delivery order), for task attributes.
    seq: u64,
    /// The connection the command came on: its data and status go there (RFC 7143 §5.1).
    cid: u16,
    /// Recovery R2Ts sent for it (bounded: see `recovery`).
    recoveries: u8,
    /// The link (of connection `cid`) it is allegiant to: when that link failed at
    /// ErrorRecoveryLevel 2 the task waits for reassignment (see `retain`).
    link: u64,
    /// Its place in the logical unit's task set, shared with the other I_T nexuses (from
    /// delivery until it is done; see `TaskSetEntry`).
    entry: Option<NoDebug<Box<dyn TaskSetEntry>>>,
}

/// A task's place in its logical unit's task set (SAM-5 §8.6: one per logical unit, shared by
/// every I_T nexus), which the driver hands out when a task is delivered
/// ([`crate::Connection::set_task_sets`]). Dropping it takes the task out of the set.
pub trait TaskSetEntry: Send {
    /// Whether the task attributes of the other tasks keep this one dormant for now.
    fn blocked(&self) -> bool;
}

/// What a session reports as it goes, for the driver's statistics (none by default).
pub trait SessionObserver: Send + Sync {
    /// A task management function request (RFC 7143 §11.5.1 function code) and the response
    /// it got (§11.6.1), once answered.
    fn tmf(&self, function: u8, response: TmfResponse) {
        let _ = (function, response);
    }
}

/// The driver's task sets: for a task's LUN field and task attribute (RFC 7143 §11.3.1 ATTR),
/// its entry in the task set of the logical unit it reaches.
pub type TaskSets = Box<dyn Fn(u64, u8) -> Option<Box<dyn TaskSetEntry>> + Send + Sync>;

/// Task attributes (RFC 7143 §11.3.1 ATTR field, SAM-5 §8.6).
const ATTR_ORDERED: u8 = 2;
const ATTR_HEAD_OF_QUEUE: u8 = 3;

/// Buffer budget held by one task (see `budget`): granted for solicited data-out, charged for
/// unsolicited data-out, granted for data-in (`read`).
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    granted: u64,
    charged: u64,
    read: u64,
}

impl Held {
    /// What the data-out buffer holds.
    fn total(self) -> u64 {
        self.granted + self.charged
    }
}

/// A non-SCSI request waiting for its CmdSN turn.
#[derive(Debug)]
enum Queued {
    Scsi {
        itt: u32,
    },
    /// A request and the connection (CID, link) it came on: it runs only if that link is still
    /// there when its turn comes (not on a connection that replaced it).
    Other(RawPdu, u16, u64),
}

#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    /// Its function code (RFC 7143 §11.5.1).
    function: u8,
    /// The connection (CID and link) it came on: its response goes there, and nowhere if that
    /// link is gone meanwhile.
    cid: u16,
    link: u64,
    response: TmfResponse,
    waiting: HashSet<TaskId>,
    action: Option<TmfAction>,
    /// Its action went to the driver, which calls `tmf_done` when it is carried out.
    with_driver: bool,
    /// TASK REASSIGN: (ITT, ExpDataSN) to take over once the response is out.
    reassign: Option<(u32, u32)>,
}

#[derive(Debug)]
struct TextExchange {
    ttt: u32,
    itt: u32,
    splitter: text::Splitter,
}

/// What one connection of the session owns (RFC 7143 §4.2.2.2: StatSN is per connection).
#[derive(Debug)]
pub(crate) struct Link {
    /// Unique within the session: a connection replaced by another with its CID keeps a
    /// handle on an id that is no longer there.
    pub(crate) id: u64,
    pub(crate) params: Negotiated,
    pub(crate) stat_sn: u32,
    pub(crate) out: VecDeque<OutPdu>,
    pub(crate) events: VecDeque<ConnEvent>,
    pub(crate) header_digest: bool,
    pub(crate) data_digest: bool,
    /// Set once the connection must close; later calls on its behalf do nothing.
    pub(crate) closed: bool,
    pub(crate) last_rx: Instant,
    /// R2Ts sent on this connection and not yet answered in full.
    r2ts_out: usize,
    /// While R2Ts are out: since when no Data-Out has arrived (`None` until the next call that
    /// knows the time).
    data_clock: Option<Instant>,
    text_acc: text::Accumulator,
    text: Option<TextExchange>,
    /// (TTT, ITT) of a text request the initiator is still sending with C=1.
    text_in: Option<(u32, u32)>,
    ping: Option<(u32, Instant)>,
    /// A logout waiting for this connection's running tasks: (ITT, response, what closes).
    logout: Option<(u32, LogoutResponseCode, LogoutScope)>,
    waker: Option<NoDebug<Waker>>,
    /// ErrorRecoveryLevel ≥ 1: the numbered responses (PDUs that took a StatSN) the initiator
    /// has not acknowledged yet, oldest first, and their payload bytes (RFC 7143 §7.3.1,
    /// §11.16: a Status SNACK asks for them again).
    pub(crate) sent: VecDeque<OutPdu>,
    pub(crate) sent_bytes: usize,
    /// The initiator's ExpStatSN on this connection (RFC 7143 §4.2.2.2).
    pub(crate) exp_stat_sn: u32,
    /// (StatSN, ITT) of the task answers this connection carried, oldest first, while the
    /// initiator has not acknowledged them (see `SessionCore::answers`).
    pub(crate) answered: VecDeque<(u32, u32)>,
}

/// A field `Debug` skips (callbacks).
pub(crate) struct NoDebug<T>(pub(crate) T);

impl<T> std::fmt::Debug for NoDebug<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// What a logout closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogoutScope {
    Session,
    Connection(u16),
    /// ErrorRecoveryLevel 2: the connection goes, its tasks wait to be reassigned.
    Recovery(u16),
}

impl Link {
    pub(crate) fn new(params: Negotiated, stat_sn: u32, now: Instant) -> Link {
        Link {
            id: 0,
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            params,
            stat_sn,
            out: VecDeque::new(),
            events: VecDeque::new(),
            closed: false,
            last_rx: now,
            r2ts_out: 0,
            data_clock: None,
            text_acc: text::Accumulator::default(),
            text: None,
            text_in: None,
            ping: None,
            logout: None,
            waker: None,
            sent: VecDeque::new(),
            sent_bytes: 0,
            exp_stat_sn: stat_sn,
            answered: VecDeque::new(),
        }
    }

    /// Where output for a connection that is gone goes (nowhere).
    fn gone(now: Instant) -> Link {
        let mut l = Link::new(Negotiated::default(), 0, now);
        l.closed = true;
        l
    }
}

/// The session state and the full feature phase engine (see the module docs).
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) cfg: ConnConfig,
    kind: SessionKind,
    initiator: String,
    /// Session-wide parameters as the leading login negotiated them.
    params: Negotiated,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    next_task_id: u64,
    next_ttt: u32,
    tasks: HashMap<u32, Task>,
    /// ITT and budget charge of the tasks with the device server, by id (the charge is
    /// returned when the device server hands the task back, as it holds the data till then).
    executing: HashMap<TaskId, (u32, Held, u16)>,
    /// Delivery counter (`Task::seq`).
    next_seq: u64,
    /// Delivered ORDERED and HEAD OF QUEUE tasks still in the task set: while both are zero
    /// every task may run at once.
    ordered: usize,
    head_of_queue: usize,
    /// Tasks whose data is in but whose attribute keeps them dormant, by `seq`.
    dormant: BTreeMap<u64, u32>,
    /// Delivered commands waiting for buffer budget (writes before their R2Ts go out, reads
    /// before they run), in order.
    budget_wait: VecDeque<u32>,
    /// Results of aborted tasks are dropped when they come back.
    aborted: HashSet<TaskId>,
    /// ITTs recently aborted while receiving data: their late Data-Out is dropped silently.
    aborted_itts: VecDeque<u32>,
    queued: BTreeMap<u32, Queued>,
    tmfs: Vec<PendingTmf>,
    /// Aborts asked from outside that wait for running tasks: (those tasks, how many were
    /// aborted in all, whom to tell).
    abort_waits: Vec<NoDebug<AbortWait>>,
    /// Which LUN fields address a logical unit of this session (set by the driver).
    lun_exists: Option<LunFilter>,
    /// The logical units' task sets (set by the driver; without them, task attributes order
    /// this session's tasks only).
    task_sets: Option<NoDebug<TaskSets>>,
    observer: Option<NoDebug<Arc<dyn SessionObserver>>>,
    /// This session's share of the target-wide buffer budget (none: unbounded, for tests).
    budget: Option<BudgetAccount>,
    /// The current link (see the module docs) and the others, by CID.
    cur: u16,
    pub(crate) link: Link,
    parked: BTreeMap<u16, Link>,
    /// Links other than the caller's that got output during the current call.
    woken: BTreeSet<u16>,
    /// Wakers of replaced links, to be called once (their drivers then find them gone).
    lost_wakers: NoDebug<Vec<Waker>>,
    next_link_id: u64,
    /// ErrorRecoveryLevel ≥ 1: answered tasks by ITT, kept until the initiator acknowledges
    /// their status (SNACK, reassignment: see `recovery`).
    answers: HashMap<u32, recovery::Answer>,
    /// ErrorRecoveryLevel 2: links that failed (or were logged out for recovery) whose tasks
    /// wait for reassignment, with when they stop waiting (Time2Wait + Time2Retain after the
    /// failure, RFC 7143 §6.1.2, §7.4).
    retain: HashMap<u64, Instant>,
    /// The session is over (logout, reinstatement, ERL 0/1 connection failure, cold reset).
    ended: bool,
}

type AbortWait = (HashSet<TaskId>, usize, Box<dyn FnOnce(usize) + Send>);

/// The driver's answer to "does this LUN field reach a logical unit?".
struct LunFilter(Box<dyn Fn(u64) -> bool + Send + Sync>);

impl std::fmt::Debug for LunFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LunFilter")
    }
}

/// A session as the daemon holds it: shared by the session's connections, and the way to
/// act on the session from outside.
#[derive(Clone, Debug)]
pub struct SessionHandle(pub(crate) Arc<Mutex<SessionCore>>);

impl SessionHandle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionCore> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the core on behalf of connection `cid` (link `link`), then wake the other
    /// connections that got output. `None` if that link is no longer the session's (another
    /// connection replaced it).
    pub(crate) fn with<R>(
        &self,
        cid: u16,
        link: u64,
        f: impl FnOnce(&mut SessionCore) -> R,
    ) -> Option<R> {
        let mut g = self.lock();
        g.switch_to(cid);
        if g.link.id != link {
            return None;
        }
        let r = f(&mut g);
        let wakers = g.take_wakers();
        drop(g);
        for w in wakers {
            w();
        }
        Some(r)
    }

    /// Run `f` on behalf of connection `cid` (link `link`) if that link is still the
    /// session's, else from outside: for what the session needs done whoever brings it (a
    /// task's completion). One lock either way.
    pub(crate) fn with_or_outside<R>(
        &self,
        cid: u16,
        link: u64,
        f: impl FnOnce(&mut SessionCore) -> R,
    ) -> R {
        let mut g = self.lock();
        g.switch_to(cid);
        if g.link.id == link {
            let r = f(&mut g);
            let wakers = g.take_wakers();
            drop(g);
            for w in wakers {
                w();
            }
            return r;
        }
        Self::run_outside(g, f)
    }

    /// Run `f` on the core from outside any connection (one lock), then wake every
    /// connection: nobody else looks at their queues after this call.
    fn outside<R>(&self, f: impl FnOnce(&mut SessionCore) -> R) -> R {
        Self::run_outside(self.lock(), f)
    }

    fn run_outside<R>(
        mut g: MutexGuard<'_, SessionCore>,
        f: impl FnOnce(&mut SessionCore) -> R,
    ) -> R {
        let r = f(&mut g);
        g.woken.clear();
        let mut wakers: Vec<Waker> = g
            .parked
            .values()
            .chain(std::iter::once(&g.link))
            .filter_map(|l| l.waker.as_ref().map(|w| w.0.clone()))
            .collect();
        wakers.append(&mut g.lost_wakers.0);
        drop(g);
        for w in wakers {
            w();
        }
        r
    }

    /// Abort, without any response, every task whose LUN field satisfies `lun` (another I_T
    /// nexus's task management or PREEMPT AND ABORT, SAM-5 §5.6). `done` hears how many tasks
    /// were aborted once none of them is with the device server any more.
    pub fn abort_tasks_for(
        &self,
        lun: impl Fn(u64) -> bool,
        done: Option<Box<dyn FnOnce(usize) + Send>>,
    ) -> usize {
        // One lock: a task that comes back right after the abort must find the wait.
        self.outside(|c| {
            let ended = c.abort_tasks_for(lun);
            let n = ended.tasks;
            match done {
                Some(done) if ended.running.is_empty() => done(n),
                Some(done) => c.abort_waits.push(NoDebug((ended.running, n, done))),
                None => {}
            }
            n
        })
    }

    /// The device server finished a task of the session, whichever connection (if any, still)
    /// handed it out: its status goes out on the task's connection, and what waited for it
    /// (a TMF, a logout, an outside abort) goes on.
    pub fn complete_task(&self, id: TaskId, outcome: TaskOutcome) {
        self.outside(|c| c.complete_task(id, outcome));
    }

    /// The driver carried out a task management function's action (see
    /// [`crate::Connection::tmf_done`]), when the connection it was handed to is gone.
    pub fn tmf_done(&self) {
        self.outside(|c| c.tmf_done());
    }

    /// The buffer budget may have room again.
    pub fn budget_ready(&self) {
        self.outside(|c| c.budget_ready());
    }

    /// End the session: every connection closes (reinstatement, an operator, a cold reset).
    pub fn shutdown(&self, reason: &'static str) {
        self.outside(|c| c.close_all(reason));
    }

    /// Ask the initiator to log out (RFC 7143 §11.9.1, AsyncEvent 1), on every open connection
    /// (the request goes on the connection to be logged out): it must do so within `within`
    /// seconds. Returns how many connections were asked.
    pub fn request_logout(&self, within: u16) -> usize {
        self.outside(|c| {
            let mut n = 0;
            for cid in c.open_cids() {
                c.on(cid, |l| {
                    l.send_async(AsyncEvent::LOGOUT_REQUEST, 0, 0, within)
                });
                n += 1;
            }
            n
        })
    }

    /// Drop connection `cid`, telling it first (AsyncEvent 2 with Time2Wait / Time2Retain):
    /// at ErrorRecoveryLevel 2 its tasks wait for reassignment, below it they end; the last
    /// open connection takes the session with it. False if no such connection is open.
    pub fn drop_connection(&self, cid: u16, now: Instant) -> bool {
        self.outside(|c| {
            let open = c.open_cids();
            if !open.contains(&cid) {
                return false;
            }
            let (w, r) = (c.params.default_time2wait, c.params.default_time2retain);
            c.on(cid, |l| {
                l.send_async(AsyncEvent::DROP_CONNECTION, cid, w as u16, r as u16)
            });
            if c.erl() >= 2 {
                c.on(cid, |l| l.fail_link(now, "dropped by the target"));
            } else if open.len() == 1 {
                c.close_all("dropped by the target");
            } else {
                c.on(cid, |l| {
                    l.end_link_tasks();
                    l.close("dropped by the target");
                });
            }
            true
        })
    }

    /// End the session, telling every open connection first (AsyncEvent 3).
    pub fn drop_all(&self, reason: &'static str) {
        self.outside(|c| {
            let (w, r) = (c.params.default_time2wait, c.params.default_time2retain);
            for cid in c.open_cids() {
                c.on(cid, |l| {
                    l.send_async(AsyncEvent::DROP_ALL_CONNECTIONS, 0, w as u16, r as u16)
                });
            }
            c.close_all(reason);
        });
    }

    /// Time2Retain of failed connections' tasks that is up: those tasks end (ErrorRecoveryLevel
    /// 2, see [`crate::Connection::connection_lost`]).
    pub fn expire(&self, now: Instant) {
        self.outside(|c| c.expire(now));
    }

    /// Whether connection `cid` of the session is still link `link` (not replaced by a
    /// connection reinstatement).
    pub fn link_is(&self, cid: u16, link: u64) -> bool {
        let g = self.lock();
        let l = if g.cur == cid {
            Some(&g.link)
        } else {
            g.parked.get(&cid)
        };
        l.is_some_and(|l| l.id == link)
    }

    /// The session is over: nothing of it is left to serve or to recover.
    pub fn is_over(&self) -> bool {
        self.lock().session_closed()
    }

    /// Connections of the session that are still open.
    pub fn connections(&self) -> Vec<u16> {
        self.lock().open_cids()
    }
}

const MAX_ABORTED_ITTS: usize = 256;

/// Fixed-format sense data (SPC-4 §4.5.3) for the transport-level conditions RFC 7143
/// §11.4.7.2 assigns to iSCSI itself (the device server builds every other sense).
fn sense_fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

impl SessionCore {
    pub(crate) fn new(
        cfg: ConnConfig,
        kind: SessionKind,
        initiator: String,
        params: Negotiated,
        exp_cmd_sn: u32,
        cid: u16,
        link: Link,
    ) -> SessionCore {
        let window = cfg.cmd_window;
        let mut link = link;
        link.id = 1;
        SessionCore {
            cfg,
            kind,
            initiator,
            params,
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_add(window - 1),
            next_task_id: 1,
            next_ttt: 1,
            tasks: HashMap::new(),
            executing: HashMap::new(),
            next_seq: 0,
            ordered: 0,
            head_of_queue: 0,
            dormant: BTreeMap::new(),
            budget_wait: VecDeque::new(),
            aborted: HashSet::new(),
            aborted_itts: VecDeque::new(),
            queued: BTreeMap::new(),
            tmfs: Vec::new(),
            abort_waits: Vec::new(),
            lun_exists: None,
            task_sets: None,
            observer: None,
            budget: None,
            cur: cid,
            link,
            parked: BTreeMap::new(),
            woken: BTreeSet::new(),
            lost_wakers: NoDebug(Vec::new()),
            next_link_id: 2,
            answers: HashMap::new(),
            retain: HashMap::new(),
            ended: false,
        }
    }

    /// CIDs of the open connections.
    fn open_cids(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .parked
            .iter()
            .filter(|(_, l)| !l.closed)
            .map(|(c, _)| *c)
            .collect();
        if !self.link.closed {
            v.push(self.cur);
        }
        v.sort_unstable();
        v
    }

    /// Queue an Asynchronous Message (RFC 7143 §11.9) on the current link; it takes a StatSN.
    fn send_async(&mut self, event: AsyncEvent, p1: u16, p2: u16, p3: u16) {
        let h = Header::AsyncMessage(AsyncMessage {
            lun: 0,
            stat_sn: self.link.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            event,
            vcode: 0,
            param1: p1,
            param2: p2,
            param3: p3,
        });
        if !self.link.closed {
            self.link.stat_sn = self.link.stat_sn.wrapping_add(1);
        }
        self.push(h, Payload::Empty);
    }

    /// Make `cid` the current link.
    pub(crate) fn switch_to(&mut self, cid: u16) {
        if cid == self.cur {
            return;
        }
        let now = self.link.last_rx;
        let next = self.parked.remove(&cid).unwrap_or_else(|| Link::gone(now));
        let prev = std::mem::replace(&mut self.link, next);
        self.parked.insert(self.cur, prev);
        self.cur = cid;
    }

    /// Run `f` with `cid` as the current link, then go back.
    fn on<R>(&mut self, cid: u16, f: impl FnOnce(&mut Self) -> R) -> R {
        let back = self.cur;
        if cid != back {
            self.woken.insert(cid);
        }
        self.switch_to(cid);
        let r = f(self);
        self.switch_to(back);
        r
    }

    /// The wakers of the links that got output during this call (but the caller's).
    fn take_wakers(&mut self) -> Vec<Waker> {
        let cur = self.cur;
        let woken = std::mem::take(&mut self.woken);
        let mut v: Vec<Waker> = woken
            .into_iter()
            .filter(|&c| c != cur)
            .filter_map(|c| self.parked.get(&c).and_then(|l| l.waker.as_ref()))
            .map(|w| w.0.clone())
            .collect();
        v.append(&mut self.lost_wakers.0);
        v
    }

    /// A connection joins the session (MC/S, RFC 7143 §6.3.4 with the TSIH given). A CID
    /// in use is connection reinstatement: the old link closes first; its tasks end below
    /// ErrorRecoveryLevel 2, and wait to be reassigned at 2 (an implicit logout for recovery).
    pub(crate) fn add_link(&mut self, cid: u16, mut link: Link) -> u64 {
        link.id = self.next_link_id;
        self.next_link_id += 1;
        let id = link.id;
        if self.cur == cid || self.parked.contains_key(&cid) {
            let now = link.last_rx;
            let erl2 = self.erl() >= 2;
            self.on(cid, |c| {
                if erl2 {
                    // RFC 7143 §6.3.4, §7.4: at ErrorRecoveryLevel 2 reinstatement is an
                    // implicit logout for recovery: the old connection's tasks wait to be
                    // reassigned.
                    if !c.link.closed {
                        c.fail_link(now, "connection reinstated");
                    }
                } else {
                    c.end_link_tasks();
                    c.close("connection reinstated");
                }
            });
            let old = if self.cur == cid {
                std::mem::replace(&mut self.link, link)
            } else {
                self.parked
                    .insert(cid, link)
                    .unwrap_or_else(|| Link::gone(self.link.last_rx))
            };
            // Its driver finds its link gone and stops.
            if let Some(w) = old.waker {
                self.lost_wakers.0.push(w.0);
            }
        } else {
            self.parked.insert(cid, link);
        }
        id
    }

    pub(crate) fn set_waker(&mut self, waker: Waker) {
        self.link.waker = Some(NoDebug(waker));
    }

    /// The session is over: ended, or every connection closed with no task waiting for
    /// connection recovery.
    pub(crate) fn session_closed(&self) -> bool {
        self.ended
            || (self.link.closed
                && self.parked.values().all(|l| l.closed)
                && self.retain.is_empty())
    }

    /// The state the engine's methods work on (the session; `link` is the connection's).
    fn ffp(&mut self) -> &mut Self {
        self
    }

    pub(crate) fn params(&self) -> &Negotiated {
        &self.params
    }

    pub(crate) fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub(crate) fn executing_ids(&self) -> Vec<TaskId> {
        self.executing.keys().copied().collect()
    }

    pub(crate) fn set_budget(&mut self, account: BudgetAccount) {
        self.budget = Some(account);
    }

    pub(crate) fn set_lun_filter(&mut self, f: Box<dyn Fn(u64) -> bool + Send + Sync>) {
        self.lun_exists = Some(LunFilter(f));
    }

    pub(crate) fn set_task_sets(&mut self, f: TaskSets) {
        self.task_sets = Some(NoDebug(f));
    }

    pub(crate) fn set_observer(&mut self, o: Arc<dyn SessionObserver>) {
        self.observer = Some(NoDebug(o));
    }

    /// Every link closes (ErrorRecoveryLevel 0: a failed connection is a failed session,
    /// RFC 7143 §7.1.5; logout of the session; reinstatement).
    pub(crate) fn close_all(&mut self, reason: &'static str) {
        let cids: Vec<u16> = self.parked.keys().copied().collect();
        for cid in cids {
            self.on(cid, |c| c.close(reason));
        }
        self.close(reason);
        self.ended = true;
        self.retain.clear();
    }

    /// The current link's tasks end without a response: its connection is going away.
    fn end_link_tasks(&mut self) {
        let cid = self.cur;
        let mut ignored = HashSet::new();
        self.abort_where(|t| t.cid == cid, &mut ignored);
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Hand the driver an event, unless the connection is already closed (`Close` is the last
    /// event the driver ever sees).
    fn emit(&mut self, ev: ConnEvent) {
        if !self.link.closed {
            self.link.events.push_back(ev);
        }
    }

    fn close(&mut self, reason: &'static str) {
        if !self.link.closed {
            self.link.closed = true;
            self.link.events.push_back(ConnEvent::Close { reason });
        }
    }

    /// Queue a PDU. Nothing is queued once the connection is closed: a close is final, and
    /// late calls (a completion, a queued request drained after a logout) must stay silent.
    fn push(&mut self, header: Header, data: Payload) {
        if self.link.closed {
            return;
        }
        let pdu = OutPdu {
            header,
            data,
            header_digest: self.link.header_digest,
            data_digest: self.link.data_digest,
        };
        if self.erl() >= 1 {
            self.log_sent(&pdu);
        }
        self.link.out.push_back(pdu);
    }

    /// The session's ErrorRecoveryLevel (RFC 7143 §13.20).
    pub(crate) fn erl(&self) -> u32 {
        self.params.error_recovery_level
    }

    /// Send a Reject carrying the offending header (RFC 7143 §11.17).
    fn reject(&mut self, bhs: &[u8; 48], reason: RejectReason) {
        let stat_sn = self.link.stat_sn;
        self.link.stat_sn = stat_sn.wrapping_add(1);
        let (exp, max) = (self.exp_cmd_sn, self.max_cmd_sn);
        let h = Header::Reject(Reject {
            reason,
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: max,
            data_sn: 0,
        });
        self.push(h, Payload::Owned(bhs.to_vec()));
    }

    /// Advance MaxCmdSN as tasks finish; never move it backwards (RFC 7143 §4.2.2.1).
    fn update_window(&mut self) {
        let window = self.cfg.cmd_window;
        if self.budget.as_ref().is_some_and(|b| b.at_share()) {
            // The session holds its whole share of the buffer budget: the window stays where
            // it is, so it cannot send more unsolicited data until tasks finish.
            return;
        }
        let f = self.ffp();
        let busy = (f.tasks.len() as u32).min(window - 1);
        let candidate = f.exp_cmd_sn.wrapping_add(window - 1 - busy);
        if serial::lt(f.max_cmd_sn, candidate) {
            f.max_cmd_sn = candidate;
        }
    }

    fn handle_ffp(&mut self, pdu: RawPdu, dir: &dyn Directory) {
        let header = match pdu.header() {
            Ok(h) => h,
            Err(_) => {
                // RFC 7143 §11.17.1: unknown opcode → Reject, Command not supported.
                self.reject(&pdu.bhs, RejectReason::COMMAND_NOT_SUPPORTED);
                return;
            }
        };
        // CmdSN ordering applies to requests that carry one (RFC 7143 §4.2.2.1).
        let (cmd_sn, immediate) = match &header {
            Header::ScsiCommand(c) => (Some(c.cmd_sn), c.immediate),
            Header::TaskMgmtRequest(t) => (Some(t.cmd_sn), t.immediate),
            Header::TextRequest(t) => (Some(t.cmd_sn), t.immediate),
            Header::LogoutRequest(l) => (Some(l.cmd_sn), l.immediate),
            Header::NopOut(n) => (Some(n.cmd_sn), n.immediate),
            Header::DataOut(_) | Header::SnackRequest(_) => (None, false),
            Header::LoginRequest(_) => {
                // RFC 7143 §6.3: login in full feature phase is a protocol error.
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return;
            }
            _ => {
                // A target-only opcode sent by the initiator.
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return;
            }
        };
        let Some(cmd_sn) = cmd_sn else {
            match header {
                Header::DataOut(d) => self.handle_data_out(&pdu, d),
                Header::SnackRequest(s) => self.handle_snack(&pdu, s),
                _ => self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR),
            }
            return;
        };
        if immediate {
            // RFC 7143 §3.2.2.1: immediate delivery, CmdSN not advanced.
            self.dispatch(pdu, header, dir);
            return;
        }
        let f = self.ffp();
        if cmd_sn == f.exp_cmd_sn {
            f.exp_cmd_sn = f.exp_cmd_sn.wrapping_add(1);
            self.dispatch(pdu, header, dir);
            self.drain_queued(dir);
        } else if serial::in_window(cmd_sn, f.exp_cmd_sn, f.max_cmd_sn) {
            if f.queued.contains_key(&cmd_sn) {
                return; // duplicate within the window: silently ignored
            }
            // Out of order but inside the window: hold it until the gap fills. A SCSI command
            // registers its task now so its unsolicited data can arrive.
            let discovery = f.kind == SessionKind::Discovery;
            if let (Header::ScsiCommand(c), false) = (&header, discovery) {
                let itt = c.itt;
                if self.register_scsi(&pdu, c) {
                    self.ffp().queued.insert(cmd_sn, Queued::Scsi { itt });
                }
            } else {
                let (cid, link) = (self.cur, self.link.id);
                self.ffp()
                    .queued
                    .insert(cmd_sn, Queued::Other(pdu, cid, link));
            }
        } else {
            // RFC 7143 §4.2.2.1: non-immediate commands outside the window are silently ignored.
            tracing::debug!(
                cmd_sn,
                exp = f.exp_cmd_sn,
                max = f.max_cmd_sn,
                "CmdSN outside window, dropped"
            );
        }
    }

    /// Deliver what waited for the CmdSN that just came (RFC 7143 §4.2.2.1: one order over
    /// all the session's connections), each on the connection it came on.
    fn drain_queued(&mut self, dir: &dyn Directory) {
        loop {
            let f = self.ffp();
            let Some(q) = f.queued.remove(&f.exp_cmd_sn) else {
                break;
            };
            f.exp_cmd_sn = f.exp_cmd_sn.wrapping_add(1);
            match q {
                Queued::Scsi { itt } => self.deliver_scsi(itt),
                Queued::Other(pdu, cid, link) => self.on(cid, |c| {
                    // A request dispatched just before (a Logout, a TARGET COLD RESET) may
                    // have closed the connection, or a login replaced it: nothing queued
                    // behind it runs there then.
                    if !c.link.closed && c.link.id == link {
                        if let Ok(h) = pdu.header() {
                            c.dispatch(pdu, h, dir);
                        }
                    }
                }),
            }
        }
    }

    fn dispatch(&mut self, pdu: RawPdu, header: Header, dir: &dyn Directory) {
        let kind = self.ffp().kind;
        match header {
            Header::ScsiCommand(c) => {
                if kind == SessionKind::Discovery {
                    // RFC 7143 §4.3: a discovery session carries only Text and Logout.
                    self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                    return;
                }
                let itt = c.itt;
                if self.register_scsi(&pdu, &c) {
                    self.deliver_scsi(itt);
                }
            }
            Header::NopOut(n) => self.handle_nop_out(&pdu, n),
            Header::TaskMgmtRequest(t) => {
                if kind == SessionKind::Discovery {
                    self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                    return;
                }
                self.handle_tmf(t)
            }
            Header::TextRequest(t) => self.handle_text(&pdu, t, dir),
            Header::LogoutRequest(l) => self.handle_logout(l),
            _ => self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR),
        }
        self.update_window();
    }

    // ---- SCSI commands and data-out -------------------------------------------------------

    /// Create the task for a SCSI Command PDU and take its immediate data. Returns false if
    /// the command was answered or rejected right away.
    fn register_scsi(&mut self, pdu: &RawPdu, c: &ScsiCommand) -> bool {
        if c.itt == RESERVED_TAG {
            self.reject(&pdu.bhs, RejectReason::INVALID_PDU_FIELD);
            return false;
        }
        if self.ffp().tasks.contains_key(&c.itt) {
            // RFC 7143 §11.2.1.8: the ITT must be unique among the session's open tasks.
            self.reject(&pdu.bhs, RejectReason::TASK_IN_PROGRESS);
            return false;
        }
        let mut cdb = c.cdb.to_vec();
        if !pdu.ahs.is_empty() {
            match ahs::parse(&pdu.ahs) {
                Ok(list) => {
                    for a in list {
                        if let ahs::Ahs::ExtendedCdb(rest) = a {
                            cdb.extend_from_slice(rest);
                        }
                    }
                }
                Err(_) => {
                    self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                    return false;
                }
            }
        }
        let p = self.ffp().link.params.clone();
        let imm_len = pdu.data.len() as u32;
        if imm_len > 0 {
            // RFC 7143 §13.11: immediate data only when negotiated, within FirstBurstLength,
            // and only for commands that send data.
            if !p.immediate_data
                || !c.write
                || imm_len > p.first_burst_length
                || imm_len > c.expected_len
            {
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return false;
            }
        }
        // A tag reused before its answer was acknowledged: that answer can no longer be
        // asked for by tag.
        self.answers.remove(&c.itt);
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        let mut charged = 0u64;
        let phase = if c.write && c.expected_len > 0 {
            if c.expected_len > self.cfg.max_write_len {
                // Too large to buffer: answer with an iSCSI-level target failure (RFC 7143
                // §11.4.3 response 0x01) rather than overrun memory.
                self.send_target_failure(c.itt);
                if !c.final_bit || imm_len < c.expected_len {
                    self.remember_aborted_itt(c.itt);
                }
                return false;
            }
            // RFC 7143 §13.10, §13.14: unsolicited data (immediate + Data-Out without R2T) is
            // allowed up to FirstBurstLength when InitialR2T=No; F=1 on the command means none
            // follows the immediate data.
            let unsolicited_end = if p.initial_r2t {
                imm_len
            } else {
                p.first_burst_length.min(c.expected_len)
            };
            let unsolicited_done = p.initial_r2t || c.final_bit || imm_len >= unsolicited_end;
            // Data that arrives unasked cannot be refused: charge it now. The rest of the
            // buffer is granted before its R2Ts go out (`advance_task`).
            charged = u64::from(unsolicited_end.max(imm_len));
            if let Some(b) = self.budget.as_mut() {
                b.charge(charged);
            }
            let mut buf = Vec::with_capacity(unsolicited_end.max(imm_len) as usize);
            buf.extend_from_slice(&pdu.data);
            TaskPhase::Receiving(WriteState {
                buf,
                unsolicited_end: unsolicited_end.max(imm_len),
                unsolicited_done,
                unsolicited_data_sn: 0,
                unsolicited_damaged: false,
                next_r2t_offset: imm_len,
                r2t_sn: 0,
                r2ts: Vec::new(),
            })
        } else {
            TaskPhase::Receiving(WriteState {
                buf: Vec::new(),
                unsolicited_end: 0,
                unsolicited_done: true,
                unsolicited_data_sn: 0,
                unsolicited_damaged: false,
                next_r2t_offset: 0,
                r2t_sn: 0,
                r2ts: Vec::new(),
            })
        };
        let task = Task {
            id,
            lun: c.lun,
            cdb,
            attr: c.attr,
            read: c.read,
            write: c.write,
            expected_len: c.expected_len,
            delivered: false,
            phase,
            data_sn: 0,
            cid: self.cur,
            held: Held {
                charged,
                ..Held::default()
            },
            seq: 0,
            recoveries: 0,
            link: self.link.id,
            entry: None,
        };
        self.ffp().tasks.insert(c.itt, task);
        true
    }

    /// End a task that is still gathering data with CHECK CONDITION and `sense`.
    fn fail_task(&mut self, itt: u32, sense: &[u8]) {
        let Some(task) = self.ffp().tasks.remove(&itt) else {
            return;
        };
        self.task_gone(&task);
        self.release_budget(itt, task.held);
        self.remember_aborted_itt(itt);
        let status = self.send_scsi_response(itt, &0x02, sense, (false, false, 0), task.data_sn);
        if let Some(status) = status {
            self.keep_answer(itt, task.lun, task.data_sn, None, status);
        }
        self.wake_dormant();
    }

    fn send_target_failure(&mut self, itt: u32) {
        let f = self.ffp();
        let h = Header::ScsiResponse(iscsi_wire::ScsiResponse {
            response: iscsi_wire::ScsiResponseCode::TARGET_FAILURE.0,
            itt,
            stat_sn: f.link.stat_sn,
            exp_cmd_sn: f.exp_cmd_sn,
            max_cmd_sn: f.max_cmd_sn,
            ..Default::default()
        });
        f.link.stat_sn = f.link.stat_sn.wrapping_add(1);
        self.push(h, Payload::Empty);
    }

    /// A task is gone (or its buffer was handed back by the device server): return its write
    /// budget and stop waiting for budget on its behalf.
    fn release_budget(&mut self, itt: u32, held: Held) {
        self.budget_wait.retain(|&i| i != itt);
        let idle = self.budget_wait.is_empty();
        if let Some(b) = self.budget.as_mut() {
            b.release(held.granted + held.read, held.charged);
            if idle {
                b.leave_queue();
            }
        }
    }

    /// The buffer budget may have room again (the account's waker fired): move the commands
    /// waiting for it on (R2Ts, execution), in order, as far as the budget now allows.
    pub fn budget_ready(&mut self) {
        if self.session_closed() {
            return;
        }
        // The same waker says that a task left a logical unit's task set: a dormant task may
        // run now (and then wait for budget like any other).
        self.wake_dormant();
        while let Some(&itt) = self.ffp().budget_wait.front() {
            if !self.ffp().tasks.contains_key(&itt) {
                self.ffp().budget_wait.pop_front();
                continue;
            }
            self.advance_task(itt);
            if self.ffp().budget_wait.front() == Some(&itt) {
                return; // still no room
            }
        }
        if let Some(b) = self.budget.as_mut() {
            b.leave_queue();
        }
    }

    fn remember_aborted_itt(&mut self, itt: u32) {
        let f = self.ffp();
        f.aborted_itts.push_back(itt);
        if f.aborted_itts.len() > MAX_ABORTED_ITTS {
            f.aborted_itts.pop_front();
        }
    }

    fn deliver_scsi(&mut self, itt: u32) {
        let f = self.ffp();
        let Some(t) = f.tasks.get_mut(&itt) else {
            return;
        };
        // The task enters the task set (SAM-5 §8.6), in CmdSN order: the logical unit's,
        // shared with the other I_T nexuses, when the driver gave us those.
        let entry = f.task_sets.as_ref().and_then(|ts| (ts.0)(t.lun, t.attr));
        t.entry = entry.map(NoDebug);
        t.delivered = true;
        t.seq = f.next_seq;
        f.next_seq += 1;
        match t.attr {
            ATTR_ORDERED => f.ordered += 1,
            ATTR_HEAD_OF_QUEUE => f.head_of_queue += 1,
            _ => {}
        }
        self.advance_task(itt);
    }

    /// SAM-5 §8.6: whether a delivered task must stay dormant because of the attributes of the
    /// others in its task set (this session's tasks on the same LUN). A HEAD OF QUEUE task runs
    /// at once; an ORDERED one after every older task and every HEAD OF QUEUE task; a SIMPLE
    /// (or untagged) one after every older ORDERED task and every HEAD OF QUEUE task.
    fn dormant(f: &SessionCore, itt: u32) -> bool {
        let Some(t) = f.tasks.get(&itt) else {
            return false;
        };
        if let Some(e) = &t.entry {
            return e.0.blocked();
        }
        if f.ordered == 0 && f.head_of_queue == 0 {
            return false;
        }
        if t.attr == ATTR_HEAD_OF_QUEUE {
            return false;
        }
        f.tasks.iter().any(|(&i, o)| {
            i != itt
                && o.delivered
                && o.lun == t.lun
                && (o.attr == ATTR_HEAD_OF_QUEUE
                    || (o.seq < t.seq && (t.attr == ATTR_ORDERED || o.attr == ATTR_ORDERED)))
        })
    }

    /// A task left the task set: its attribute no longer holds others back, and nobody waits
    /// for its data any more.
    fn task_gone(&mut self, task: &Task) {
        let f = self.ffp();
        if let TaskPhase::Receiving(w) = &task.phase {
            debug_assert!(f.link.r2ts_out >= w.r2ts.len(), "R2T count");
            f.link.r2ts_out = f.link.r2ts_out.saturating_sub(w.r2ts.len());
        }
        f.dormant.remove(&task.seq);
        if task.delivered {
            match task.attr {
                ATTR_ORDERED => f.ordered -= 1,
                ATTR_HEAD_OF_QUEUE => f.head_of_queue -= 1,
                _ => {}
            }
        }
    }

    /// Let dormant tasks run that may now (oldest first).
    fn wake_dormant(&mut self) {
        let waiting: Vec<u32> = self.ffp().dormant.values().copied().collect();
        for itt in waiting {
            if self.session_closed() {
                return;
            }
            self.advance_task(itt);
        }
    }

    /// Move a delivered task on: solicit more data, or hand it to the device server. What it
    /// sends goes out on the task's own connection.
    fn advance_task(&mut self, itt: u32) {
        let Some((cid, link)) = self.tasks.get(&itt).map(|t| (t.cid, t.link)) else {
            return;
        };
        if self.retain.contains_key(&link) {
            return; // its connection is down: it goes on once reassigned
        }
        self.on(cid, |c| c.advance_task_here(itt));
        if !self.answers.is_empty() && self.budget_wait.contains(&itt) {
            // Answers kept for retransmission hold buffer budget; a task that waits for it
            // comes first (see `recovery`).
            self.drop_answer_data();
        }
    }

    fn advance_task_here(&mut self, itt: u32) {
        let p = self.link.params.clone();
        let dormant = Self::dormant(self, itt);
        let mut r2ts = Vec::new();
        let mut ready = None;
        {
            let SessionCore {
                budget,
                tasks,
                budget_wait,
                dormant: dormant_set,
                link,
                ..
            } = self;
            let Some(t) = tasks.get_mut(&itt) else {
                return;
            };
            if !t.delivered {
                return;
            }
            let TaskPhase::Receiving(w) = &mut t.phase else {
                return;
            };
            let edtl = if t.write { t.expected_len } else { 0 };
            if w.buf.len() as u32 >= edtl && w.r2ts.is_empty() {
                if dormant {
                    dormant_set.insert(t.seq, itt);
                    return;
                }
                dormant_set.remove(&t.seq);
                // A read's data-in buffer is granted before the device server fills it (see
                // `budget`), in delivery order within the session.
                if t.read && t.expected_len > 0 && t.held.read == 0 {
                    let need = u64::from(t.expected_len);
                    let behind = budget_wait.front().is_some_and(|&i| i != itt);
                    if behind || !budget.as_mut().is_none_or(|b| b.try_take(need)) {
                        if !budget_wait.contains(&itt) {
                            budget_wait.push_back(itt);
                        }
                        return;
                    }
                    t.held.read = need;
                    if budget_wait.front() == Some(&itt) {
                        budget_wait.pop_front();
                    }
                }
                let data_out = std::mem::take(&mut w.buf);
                ready = Some(ScsiTask {
                    id: t.id,
                    itt,
                    lun: t.lun,
                    cdb: std::mem::take(&mut t.cdb),
                    attr: t.attr,
                    read: t.read,
                    write: t.write,
                    expected_len: t.expected_len,
                    data_out,
                });
                t.phase = TaskPhase::Executing;
            } else if w.unsolicited_done {
                if dormant && t.held.granted == 0 && w.r2ts.is_empty() {
                    // SAM-5 §8.5: a dormant task transfers no data; the R2Ts of one that has
                    // not started (and the budget they need) wait until it is enabled, so that
                    // dormant tasks never hold buffer budget a task they wait for needs.
                    dormant_set.insert(t.seq, itt);
                    return;
                }
                dormant_set.remove(&t.seq);
                // The whole rest of the buffer is granted before the first R2T (see `budget`),
                // in delivery order within the session.
                let need = u64::from(edtl).saturating_sub(t.held.total());
                if need > 0 {
                    let behind = budget_wait.front().is_some_and(|&i| i != itt);
                    if behind || !budget.as_mut().is_none_or(|b| b.try_take(need)) {
                        if !budget_wait.contains(&itt) {
                            budget_wait.push_back(itt);
                        }
                        return;
                    }
                    t.held.granted += need;
                    w.buf.reserve_exact(edtl as usize - w.buf.len());
                    if budget_wait.front() == Some(&itt) {
                        budget_wait.pop_front();
                    }
                }
                // RFC 7143 §4.2.3: R2Ts for the rest, each at most MaxBurstLength, no more than
                // MaxOutstandingR2T at once.
                while (w.r2ts.len() as u32) < p.max_outstanding_r2t && w.next_r2t_offset < edtl {
                    let len = (edtl - w.next_r2t_offset).min(p.max_burst_length);
                    r2ts.push((w.next_r2t_offset, len, w.r2t_sn));
                    w.r2ts.push(R2tState {
                        ttt: 0,
                        sn: w.r2t_sn,
                        offset: w.next_r2t_offset,
                        len,
                        received: 0,
                        next_data_sn: 0,
                        damaged: false,
                    });
                    w.next_r2t_offset += len;
                    w.r2t_sn += 1;
                }
                t.data_sn = w.r2t_sn;
                link.r2ts_out += r2ts.len();
            }
        }
        if let Some(task) = ready {
            let f = self.ffp();
            let held = f.tasks.get(&itt).map(|t| t.held).unwrap_or_default();
            let cid = f.cur;
            f.executing.insert(task.id, (itt, held, cid));
            self.emit(ConnEvent::Execute(task));
            return;
        }
        for (offset, len, r2t_sn) in r2ts {
            let ttt = self.alloc_ttt();
            let f = self.ffp();
            let Some(t) = f.tasks.get_mut(&itt) else {
                return;
            };
            let lun = t.lun;
            if let TaskPhase::Receiving(w) = &mut t.phase {
                if let Some(r) = w.r2ts.iter_mut().find(|r| r.offset == offset && r.ttt == 0) {
                    r.ttt = ttt;
                }
            }
            let h = Header::R2t(R2t {
                lun,
                itt,
                ttt,
                // RFC 7143 §11.8: R2T carries the next StatSN without advancing it.
                stat_sn: f.link.stat_sn,
                exp_cmd_sn: f.exp_cmd_sn,
                max_cmd_sn: f.max_cmd_sn,
                r2t_sn,
                buffer_offset: offset,
                desired_len: len,
            });
            self.push(h, Payload::Empty);
        }
    }

    fn handle_data_out(&mut self, pdu: &RawPdu, d: DataOut) {
        let f = self.ffp();
        let Some(t) = f.tasks.get_mut(&d.itt) else {
            if f.aborted_itts.contains(&d.itt) {
                return; // data for a task we already aborted or answered
            }
            // RFC 7143 §11.7: Data-Out must belong to an open task.
            self.reject(&pdu.bhs, RejectReason::INVALID_PDU_FIELD);
            return;
        };
        if t.link != f.link.id {
            // RFC 7143 §5.1 (connection allegiance): a task's data comes on its connection
            // (the very one: not another with its CID, until a TASK REASSIGN).
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        }
        let TaskPhase::Receiving(w) = &mut t.phase else {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        };
        let edtl = if t.write { t.expected_len } else { 0 };
        let len = pdu.data.len() as u32;
        let end = d.buffer_offset.checked_add(len);
        let received = w.buf.len() as u32;
        let mut ok = end.is_some_and(|e| e <= edtl);
        if d.ttt == RESERVED_TAG {
            // Unsolicited Data-Out (RFC 7143 §4.2.3): in order, within the first burst,
            // DataSN counting from 0.
            ok = ok
                && !w.unsolicited_done
                && d.buffer_offset == received
                && end.is_some_and(|e| e <= w.unsolicited_end)
                && d.data_sn == w.unsolicited_data_sn;
            if ok {
                w.unsolicited_data_sn += 1;
                w.buf.extend_from_slice(&pdu.data);
                if d.final_bit || w.buf.len() as u32 >= w.unsolicited_end {
                    w.unsolicited_done = true;
                    if w.next_r2t_offset < w.buf.len() as u32 {
                        w.next_r2t_offset = w.buf.len() as u32;
                    }
                }
            }
        } else {
            // Solicited: must match an outstanding R2T (DataPDUInOrder=Yes, so in order).
            match w.r2ts.iter().position(|r| r.ttt == d.ttt) {
                Some(i) => {
                    let r = &mut w.r2ts[i];
                    ok = ok
                        && d.buffer_offset == r.offset + r.received
                        && d.buffer_offset == received
                        && len <= r.len - r.received
                        && d.data_sn == r.next_data_sn;
                    if ok {
                        r.received += len;
                        r.next_data_sn += 1;
                        w.buf.extend_from_slice(&pdu.data);
                        if r.received == r.len {
                            w.r2ts.remove(i);
                            debug_assert!(f.link.r2ts_out > 0, "R2T count");
                            f.link.r2ts_out = f.link.r2ts_out.saturating_sub(1);
                        } else if d.final_bit {
                            ok = false; // sequence ended short of the R2T's length
                        }
                    }
                }
                None => ok = false,
            }
        }
        if !ok && self.erl() >= 1 && self.recover_data_out(d.itt, d.ttt, d.final_bit) {
            // ERL ≥ 1: the sequence lost a PDU; a recovery R2T asks for the rest once it ends
            // (RFC 7143 §7.3.2).
            return;
        }
        if !ok {
            // A Data-Out out of sequence (wrong DataSN, offset, TTT or length). At ERL 0 there
            // is no SNACK recovery (RFC 7143 §7.1.4.2), so the task is ended at once with
            // CHECK CONDITION, ABORTED COMMAND / DATA PHASE ERROR; the connection stays up
            // and the rest of the task's Data-Out is dropped.
            tracing::debug!(
                itt = d.itt,
                ttt = d.ttt,
                data_sn = d.data_sn,
                offset = d.buffer_offset,
                len,
                "bad Data-Out"
            );
            self.fail_task(d.itt, &sense_fixed(0x0b, 0x4b, 0x00));
            return;
        }
        self.advance_task(d.itt);
    }

    /// The device server finished a task.
    pub fn complete_task(&mut self, id: TaskId, outcome: TaskOutcome) {
        if self.session_closed() {
            return;
        }
        let Some((itt, held, _)) = self.executing.remove(&id) else {
            return;
        };
        let aborted = self.aborted.remove(&id);
        // The device server is done with the data-out buffer; the data-in grant goes with the
        // Data-In PDUs.
        self.release_budget(itt, Held { read: 0, ..held });
        let read_grant = self.budget.as_mut().and_then(|b| b.lend(held.read));
        if aborted {
            // Aborted: no response (SAM-5 §7.3); the TMF may now be answered.
            self.finish_tmf_wait(id);
            self.settle_abort_waits(id);
        } else if let Some(mut task) = self.tasks.remove(&itt) {
            if self.retain.contains_key(&task.link) {
                // Its connection failed (ErrorRecoveryLevel 2): the answer waits for the task
                // to be reassigned; it no longer holds others back in the task set.
                self.task_gone(&task);
                task.delivered = false;
                task.entry = None; // done at the logical unit: out of its task set
                task.phase = TaskPhase::Answered(Box::new((outcome, read_grant)));
                self.tasks.insert(itt, task);
            } else {
                // Status goes out on the task's connection (RFC 7143 §5.1).
                self.on(task.cid, |c| {
                    c.task_gone(&task);
                    c.send_response(itt, &task, outcome, read_grant);
                });
            }
        }
        self.update_window();
        self.wake_dormant();
        self.budget_ready();
        self.finish_logouts();
    }

    /// An aborted task came back: answer the outside aborts that waited only for it.
    fn settle_abort_waits(&mut self, id: TaskId) {
        let mut i = 0;
        while i < self.abort_waits.len() {
            let w = &mut self.abort_waits[i].0;
            w.0.remove(&id);
            if w.0.is_empty() {
                let NoDebug((_, n, done)) = self.abort_waits.swap_remove(i);
                done(n);
            } else {
                i += 1;
            }
        }
    }

    /// Answer a task: Data-In (pointing into the device server's buffer, which keeps `grant`
    /// until the last of them is gone) and status.
    fn send_response(&mut self, itt: u32, task: &Task, o: TaskOutcome, grant: Option<Grant>) {
        let p = &self.link.params;
        let (mrdsl, burst) = (p.initiator_mrdsl, p.max_burst_length);
        let edtl = task.expected_len;
        // Residuals (RFC 7143 §11.4.5): compare what the command transferred (or wanted to)
        // with the Expected Data Transfer Length.
        let wanted: u64 = if task.read && !task.write {
            o.data_in.len() as u64
        } else if task.write {
            o.data_out_len as u64
        } else {
            (o.data_in.len() as u64).max(o.data_out_len as u64)
        };
        let (overflow, underflow, residual) = if wanted > edtl as u64 {
            (
                true,
                false,
                (wanted - edtl as u64).min(u32::MAX as u64) as u32,
            )
        } else if wanted < edtl as u64 {
            (false, true, edtl - wanted as u32)
        } else {
            (false, false, 0)
        };
        let send_len = if task.read {
            o.data_in.len().min(edtl as usize)
        } else {
            0
        };
        // RFC 7143 §11.7.4: status may ride on the last Data-In only if there is no sense data
        // to carry (phase collapse). Only at ErrorRecoveryLevel 0: above it the status goes in
        // its own SCSI Response, so that resending it (Status SNACK) never needs the data.
        let collapse = o.status == 0 && o.sense.is_empty() && self.erl() == 0;
        let mut data_sn = task.data_sn;
        let mut kept = None;
        if send_len > 0 {
            let buf = Arc::new(SharedBuf::new(o.data_in, grant));
            let segments = recovery::segments(0, send_len as u32, mrdsl, burst);
            let n = segments.len();
            for (i, &seg) in segments.iter().enumerate() {
                let status =
                    (collapse && i + 1 == n).then_some((o.status, overflow, underflow, residual));
                self.push_data_in(itt, task.lun, &buf, data_sn, seg, status);
                data_sn += 1;
            }
            if collapse {
                return;
            }
            kept = Some((buf, segments));
        }
        let status = self.send_scsi_response(
            itt,
            &o.status,
            &o.sense,
            (overflow, underflow, residual),
            data_sn,
        );
        if let Some(status) = status {
            self.keep_answer(itt, task.lun, task.data_sn, kept, status);
        }
    }

    /// Queue one Data-In PDU cut from `buf`: `seg` is (offset, length, F bit); `status` rides
    /// on it when given (status, overflow, underflow, residual).
    fn push_data_in(
        &mut self,
        itt: u32,
        lun: u64,
        buf: &Arc<SharedBuf>,
        data_sn: u32,
        seg: (u32, u32, bool),
        status: Option<(u8, bool, bool, u32)>,
    ) {
        let (off, len, final_bit) = seg;
        let (st, overflow, underflow, residual) = status.unwrap_or_default();
        let h = Header::DataIn(DataIn {
            // F closes each sequence of at most MaxBurstLength (RFC 7143 §11.7.1).
            final_bit,
            ack: false,
            overflow,
            underflow,
            has_status: status.is_some(),
            status: st,
            lun,
            itt,
            ttt: RESERVED_TAG,
            stat_sn: self.link.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data_sn,
            buffer_offset: off,
            residual,
        });
        if status.is_some() {
            self.link.stat_sn = self.link.stat_sn.wrapping_add(1);
        }
        self.push(
            h,
            Payload::Shared {
                buf: buf.clone(),
                start: off as usize,
                len: len as usize,
            },
        );
    }

    /// Queue a SCSI Response; at ErrorRecoveryLevel ≥ 1 it comes back to be kept with the
    /// task's answer.
    fn send_scsi_response(
        &mut self,
        itt: u32,
        status: &u8,
        sense: &[u8],
        res: (bool, bool, u32),
        exp_data_sn: u32,
    ) -> Option<OutPdu> {
        let f = self.ffp();
        let h = Header::ScsiResponse(iscsi_wire::ScsiResponse {
            overflow: res.0,
            underflow: res.1,
            response: 0,
            status: *status,
            itt,
            stat_sn: f.link.stat_sn,
            exp_cmd_sn: f.exp_cmd_sn,
            max_cmd_sn: f.max_cmd_sn,
            exp_data_sn,
            residual: res.2,
            ..Default::default()
        });
        f.link.stat_sn = f.link.stat_sn.wrapping_add(1);
        // RFC 7143 §11.4.7: the data segment holds SenseLength (2 bytes) then sense data.
        let data = if sense.is_empty() {
            Payload::Empty
        } else {
            let mut v = Vec::with_capacity(sense.len() + 2);
            v.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            v.extend_from_slice(sense);
            Payload::Owned(v)
        };
        let kept = (self.erl() >= 1 && !self.link.closed).then(|| OutPdu {
            header: h.clone(),
            data: data.clone(),
            header_digest: self.link.header_digest,
            data_digest: self.link.data_digest,
        });
        self.push(h, data);
        kept
    }

    // ---- NOP ------------------------------------------------------------------------------

    fn handle_nop_out(&mut self, pdu: &RawPdu, n: NopOut) {
        if n.itt == RESERVED_TAG {
            // A reply to our ping (TTT valid), or a bare ExpStatSN update (RFC 7143 §11.18).
            let f = self.ffp();
            if n.ttt != RESERVED_TAG && f.link.ping.is_some_and(|(t, _)| t == n.ttt) {
                f.link.ping = None;
            }
            return;
        }
        if n.ttt != RESERVED_TAG {
            // RFC 7143 §11.18.3: an initiator ping carries TTT 0xffffffff.
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        }
        // RFC 7143 §11.19: echo the ping data in a NOP-In with the same ITT and LUN.
        let f = self.ffp();
        let h = Header::NopIn(NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn: f.link.stat_sn,
            exp_cmd_sn: f.exp_cmd_sn,
            max_cmd_sn: f.max_cmd_sn,
        });
        f.link.stat_sn = f.link.stat_sn.wrapping_add(1);
        let data = if pdu.data.is_empty() {
            Payload::Empty
        } else {
            Payload::Owned(pdu.data.clone())
        };
        self.push(h, data);
    }

    // ---- Task management ------------------------------------------------------------------

    fn handle_tmf(&mut self, t: TaskMgmtRequest) {
        let func = TmfFunction(t.function);
        let mut waiting = HashSet::new();
        let mut action = None;
        let mut reassign = None;
        let response = match func {
            TmfFunction::ABORT_TASK => {
                let f = self.ffp();
                let found = f.tasks.get(&t.referenced_tag).map(|x| x.lun == t.lun);
                match found {
                    Some(true) => {
                        self.abort_task(t.referenced_tag, &mut waiting);
                        TmfResponse::COMPLETE
                    }
                    // RFC 7143 §11.5.1: a task that is not there. If its CmdSN is within the
                    // window and was never received, consider it received and aborted.
                    _ => {
                        let f = self.ffp();
                        if serial::in_window(t.ref_cmd_sn, f.exp_cmd_sn, f.max_cmd_sn)
                            && serial::lt(t.ref_cmd_sn, t.cmd_sn)
                            && !f.queued.contains_key(&t.ref_cmd_sn)
                        {
                            TmfResponse::COMPLETE
                        } else {
                            TmfResponse::TASK_DOES_NOT_EXIST
                        }
                    }
                }
            }
            // RFC 7143 §11.6.1: a LUN-scoped function on a LUN the session cannot see.
            TmfFunction::ABORT_TASK_SET
            | TmfFunction::CLEAR_TASK_SET
            | TmfFunction::LOGICAL_UNIT_RESET
                if !self.lun_exists(t.lun) =>
            {
                TmfResponse::LUN_DOES_NOT_EXIST
            }
            // SAM-5 §7.2: ABORT TASK SET ends this I_T nexus's tasks only.
            TmfFunction::ABORT_TASK_SET => {
                self.abort_where(|task| task.lun == t.lun, &mut waiting);
                TmfResponse::COMPLETE
            }
            // SAM-5 §7.4: CLEAR TASK SET ends every I_T nexus's tasks (the task set is shared,
            // TST = 000b); the driver reaches the other sessions.
            TmfFunction::CLEAR_TASK_SET => {
                self.abort_where(|task| task.lun == t.lun, &mut waiting);
                action = Some(TmfAction::ClearTaskSet { lun: t.lun });
                TmfResponse::COMPLETE
            }
            TmfFunction::LOGICAL_UNIT_RESET => {
                self.abort_where(|task| task.lun == t.lun, &mut waiting);
                action = Some(TmfAction::LunReset { lun: t.lun });
                TmfResponse::COMPLETE
            }
            TmfFunction::TARGET_WARM_RESET => {
                self.abort_where(|_| true, &mut waiting);
                action = Some(TmfAction::TargetWarmReset);
                TmfResponse::COMPLETE
            }
            TmfFunction::TARGET_COLD_RESET => {
                self.abort_where(|_| true, &mut waiting);
                action = Some(TmfAction::TargetColdReset);
                TmfResponse::COMPLETE
            }
            // RFC 7143 §11.5.1: reassignment needs ErrorRecoveryLevel 2.
            TmfFunction::TASK_REASSIGN if self.erl() < 2 => TmfResponse::REASSIGNMENT_NOT_SUPPORTED,
            TmfFunction::TASK_REASSIGN => match self.reassignable(t.referenced_tag) {
                Ok(()) => {
                    reassign = Some((t.referenced_tag, t.exp_data_sn));
                    TmfResponse::COMPLETE
                }
                Err(r) => r,
            },
            // No ACA support (NACA=1 is refused by the device server), so nothing to clear.
            TmfFunction::CLEAR_ACA => TmfResponse::COMPLETE,
            _ => TmfResponse::REJECTED,
        };
        let (cid, link) = (self.cur, self.link.id);
        self.ffp().tmfs.push(PendingTmf {
            itt: t.itt,
            function: t.function,
            cid,
            link,
            response,
            waiting,
            action,
            with_driver: false,
            reassign,
        });
        self.flush_tmfs();
        // ABORT TASK may have ended what held a dormant task back.
        self.wake_dormant();
    }

    /// Abort the tasks `pred` selects; returns how many there were.
    fn abort_where(
        &mut self,
        pred: impl Fn(&Task) -> bool,
        waiting: &mut HashSet<TaskId>,
    ) -> usize {
        let itts: Vec<u32> = self
            .ffp()
            .tasks
            .iter()
            .filter(|(_, t)| pred(t))
            .map(|(i, _)| *i)
            .collect();
        let n = itts.len();
        for itt in itts {
            self.abort_task(itt, waiting);
        }
        // Only once every task the function ends is gone: none of them may start meanwhile.
        self.wake_dormant();
        n
    }

    fn abort_task(&mut self, itt: u32, waiting: &mut HashSet<TaskId>) {
        let f = self.ffp();
        let Some(task) = f.tasks.remove(&itt) else {
            return;
        };
        f.queued
            .retain(|_, q| !matches!(q, Queued::Scsi { itt: i } if *i == itt));
        // The R2T count and the Cancel belong to the task's connection.
        self.on(task.cid, |c| {
            c.task_gone(&task);
            match task.phase {
                TaskPhase::Executing => {
                    // Its budget comes back with the device server's answer (`complete_task`).
                    c.aborted.insert(task.id);
                    waiting.insert(task.id);
                    c.emit(ConnEvent::Cancel(task.id));
                }
                TaskPhase::Receiving(_) => c.release_budget(itt, task.held),
                // Its data-in grant goes with it.
                TaskPhase::Answered(_) => {}
            }
        });
        self.remember_aborted_itt(itt);
    }

    fn finish_tmf_wait(&mut self, id: TaskId) {
        for t in &mut self.ffp().tmfs {
            t.waiting.remove(&id);
        }
        self.flush_tmfs();
    }

    /// Answer TMFs in arrival order once the tasks they aborted have really stopped
    /// (SAM-5 §7.11: the function completes after the affected tasks are terminated).
    /// A function with an action beyond this session (other I_T nexuses' tasks, device
    /// server state) waits, and holds back the responses behind it, until the driver says the
    /// action is carried out (`tmf_done`).
    fn flush_tmfs(&mut self) {
        while let Some(first) = self.tmfs.first() {
            if !first.waiting.is_empty() || first.with_driver {
                break;
            }
            // Each function is answered on the connection it came on; if that one is gone
            // (closed, or replaced by a login with its CID) there is nobody to answer, and a
            // driver action it still had to run has no driver to run it.
            let (cid, link, action) = (first.cid, first.link, first.action.clone());
            if !self.link_is_open(cid, link) {
                let t = self.tmfs.remove(0);
                self.observe_tmf(&t);
                continue;
            }
            if let Some(a) = action {
                self.ffp().tmfs[0].with_driver = true;
                self.on(cid, |c| c.emit(ConnEvent::Tmf(a)));
                return;
            }
            let mut t = self.tmfs.remove(0);
            if let Some((itt, _)) = t.reassign {
                // Judged again now: a TASK REASSIGN queued behind others may find its task
                // taken over (or ended) meanwhile.
                if let Err(r) = self.reassignable(itt) {
                    (t.response, t.reassign) = (r, None);
                }
            }
            self.observe_tmf(&t);
            self.on(cid, |c| {
                c.send_tmf_response(t.itt, t.response);
                if let Some((itt, exp_data_sn)) = t.reassign {
                    c.reassign(itt, exp_data_sn);
                }
            });
        }
    }

    /// Whether connection `cid` is link `link` and open.
    fn link_is_open(&self, cid: u16, link: u64) -> bool {
        let l = if self.cur == cid {
            Some(&self.link)
        } else {
            self.parked.get(&cid)
        };
        l.is_some_and(|l| l.id == link && !l.closed)
    }

    /// The driver carried out the action of the oldest task management function it was handed
    /// (`ConnEvent::Tmf`): answer it, and the ones queued behind it.
    pub fn tmf_done(&mut self) {
        if self.session_closed() {
            return;
        }
        if !self.tmfs.first().is_some_and(|t| t.with_driver) {
            return;
        }
        let t = self.tmfs.remove(0);
        self.observe_tmf(&t);
        if self.link_is_open(t.cid, t.link) {
            self.on(t.cid, |c| c.send_tmf_response(t.itt, t.response));
        }
        if t.action == Some(TmfAction::TargetColdReset) {
            // RFC 7143 §11.5.1: after a cold reset the target drops all connections.
            self.close_all("target cold reset");
            return;
        }
        self.flush_tmfs();
    }

    fn observe_tmf(&self, t: &PendingTmf) {
        if let Some(o) = &self.observer {
            o.0.tmf(t.function, t.response);
        }
    }

    fn send_tmf_response(&mut self, itt: u32, r: TmfResponse) {
        let f = self.ffp();
        let h = Header::TaskMgmtResponse(TaskMgmtResponse {
            response: r.0,
            itt,
            stat_sn: f.link.stat_sn,
            exp_cmd_sn: f.exp_cmd_sn,
            max_cmd_sn: f.max_cmd_sn,
        });
        f.link.stat_sn = f.link.stat_sn.wrapping_add(1);
        self.push(h, Payload::Empty);
    }

    // ---- Text and SendTargets -------------------------------------------------------------

    fn handle_text(&mut self, pdu: &RawPdu, t: TextRequest, dir: &dyn Directory) {
        let mrdsl = self.ffp().link.params.initiator_mrdsl as usize;
        // Continuing one of our long answers (RFC 7143 §11.11.4): an empty request with our TTT.
        let continuing_request = self
            .ffp()
            .link
            .text_in
            .is_some_and(|(ttt, itt)| ttt == t.ttt && itt == t.itt);
        if t.ttt != RESERVED_TAG && !continuing_request {
            let f = self.ffp();
            match f.link.text.as_mut() {
                Some(x) if x.ttt == t.ttt && x.itt == t.itt => {
                    let (piece, more) = x.splitter.next_piece(mrdsl);
                    let ttt = if more { x.ttt } else { RESERVED_TAG };
                    if !more {
                        f.link.text = None;
                    }
                    self.send_text(t.itt, ttt, more, piece);
                }
                _ => self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR),
            }
            return;
        }
        if !continuing_request {
            // A new request abandons any unfinished exchange (RFC 7143 §11.10.4).
            let f = self.ffp();
            f.link.text = None;
            f.link.text_acc.clear();
        }
        self.ffp().link.text_in = None;
        let whole = match self.ffp().link.text_acc.push(&pdu.data, t.cont) {
            Ok(Some(w)) => w,
            Ok(None) => {
                // RFC 7143 §11.10.2: the initiator's text continues; acknowledge with an
                // empty response whose TTT the next request carries.
                let ttt = self.alloc_ttt();
                self.ffp().link.text_in = Some((ttt, t.itt));
                self.send_text(t.itt, ttt, false, Vec::new());
                return;
            }
            Err(_) => {
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return;
            }
        };
        let pairs = match text::parse(&whole) {
            Ok(p) => p,
            Err(_) => {
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return;
            }
        };
        let initiator = self.ffp().initiator.clone();
        let kind = self.ffp().kind;
        let mut answer: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            if k == "SendTargets" {
                // RFC 7143 appendix C: All (discovery sessions), a name, or empty (the
                // session's own target, normal sessions).
                let filter = match v.as_str() {
                    "All" if kind == SessionKind::Discovery => None,
                    "All" => None,
                    "" => None,
                    name => Some(name),
                };
                for (name, addrs) in dir.send_targets(&initiator, filter) {
                    answer.push(("TargetName".into(), name));
                    for a in addrs {
                        answer.push(("TargetAddress".into(), a));
                    }
                }
            } else if crate::params::lookup(&k).is_some() {
                // Login-only keys cannot be renegotiated in full feature phase.
                answer.push((k, "Reject".into()));
            } else {
                answer.push((k, "NotUnderstood".into()));
            }
        }
        let mut sp = text::Splitter::new(text::encode(&answer));
        let (piece, more) = sp.next_piece(mrdsl);
        if more {
            let ttt = self.alloc_ttt();
            self.ffp().link.text = Some(TextExchange {
                ttt,
                itt: t.itt,
                splitter: sp,
            });
            self.send_text(t.itt, ttt, true, piece);
        } else {
            self.send_text(t.itt, RESERVED_TAG, false, piece);
        }
    }

    fn send_text(&mut self, itt: u32, ttt: u32, cont: bool, data: Vec<u8>) {
        let f = self.ffp();
        let final_bit = ttt == RESERVED_TAG && !cont;
        let h = Header::TextResponse(TextResponse {
            final_bit,
            cont,
            lun: 0,
            itt,
            ttt,
            stat_sn: f.link.stat_sn,
            exp_cmd_sn: f.exp_cmd_sn,
            max_cmd_sn: f.max_cmd_sn,
        });
        f.link.stat_sn = f.link.stat_sn.wrapping_add(1);
        self.push(
            h,
            if data.is_empty() {
                Payload::Empty
            } else {
                Payload::Owned(data)
            },
        );
    }

    // ---- Logout ---------------------------------------------------------------------------

    /// RFC 7143 §11.14: close the session (every connection), this connection, or another
    /// connection of the session by its CID. Tasks still gathering data on what closes will
    /// never get it and end now; running ones finish first, and the response waits for them.
    fn handle_logout(&mut self, l: LogoutRequest) {
        let scope = match l.reason {
            LogoutReason::CLOSE_SESSION => Some(LogoutScope::Session),
            LogoutReason::CLOSE_CONNECTION => Some(LogoutScope::Connection(l.cid)),
            LogoutReason::REMOVE_FOR_RECOVERY if self.erl() >= 2 => {
                Some(LogoutScope::Recovery(l.cid))
            }
            _ => None,
        };
        let code = match (l.reason, scope) {
            (LogoutReason::REMOVE_FOR_RECOVERY, None) => LogoutResponseCode::RECOVERY_NOT_SUPPORTED,
            (_, Some(LogoutScope::Connection(cid))) if !self.has_link(cid) => {
                LogoutResponseCode::CID_NOT_FOUND
            }
            // RFC 7143 §11.14.1: a connection already failed may be removed for recovery too.
            (_, Some(LogoutScope::Recovery(cid)))
                if !self.has_link(cid) && !self.retained_cid(cid) =>
            {
                LogoutResponseCode::CID_NOT_FOUND
            }
            (_, Some(_)) => LogoutResponseCode::CLOSED,
            _ => LogoutResponseCode::CLEANUP_FAILED,
        };
        let scope = scope.unwrap_or(LogoutScope::Connection(self.cur));
        if code == LogoutResponseCode::CLOSED {
            let mut w = HashSet::new();
            let itts: Vec<u32> = self
                .tasks
                .iter()
                .filter(|(_, t)| match scope {
                    LogoutScope::Session => matches!(t.phase, TaskPhase::Receiving(_)),
                    // Another connection goes at once: every task of it ends (no task
                    // reassignment at ErrorRecoveryLevel 0).
                    LogoutScope::Connection(c) if c != self.cur => t.cid == c,
                    LogoutScope::Connection(c) => {
                        t.cid == c && matches!(t.phase, TaskPhase::Receiving(_))
                    }
                    // Removed for recovery: its tasks stay (RFC 7143 §7.4).
                    LogoutScope::Recovery(_) => false,
                })
                .map(|(i, _)| *i)
                .collect();
            for itt in itts {
                self.abort_task(itt, &mut w);
            }
            self.wake_dormant();
            if let LogoutScope::Recovery(c) = scope {
                let now = self.link.last_rx;
                if c != self.cur && self.has_link(c) {
                    self.on(c, |o| {
                        o.fail_link(now, "removed for recovery by another connection")
                    });
                }
            }
        }
        self.link.logout = Some((l.itt, code, scope));
        self.maybe_finish_logout();
    }

    fn has_link(&self, cid: u16) -> bool {
        (self.cur == cid && !self.link.closed) || self.parked.get(&cid).is_some_and(|l| !l.closed)
    }

    /// Answer the logouts whose running tasks have all come back.
    fn finish_logouts(&mut self) {
        let mut cids: Vec<u16> = self
            .parked
            .iter()
            .filter(|(_, l)| l.logout.is_some())
            .map(|(c, _)| *c)
            .collect();
        if self.link.logout.is_some() {
            cids.push(self.cur);
        }
        for cid in cids {
            self.on(cid, |c| c.maybe_finish_logout());
        }
    }

    fn maybe_finish_logout(&mut self) {
        if self.link.closed {
            return;
        }
        let Some((itt, code, scope)) = self.link.logout else {
            return;
        };
        if code == LogoutResponseCode::CLOSED {
            let waits = self.executing.values().any(|&(_, _, c)| match scope {
                LogoutScope::Session => true,
                LogoutScope::Connection(x) => c == x,
                LogoutScope::Recovery(_) => false,
            });
            if waits {
                return;
            }
        }
        let f = self.ffp();
        f.link.logout = None;
        let h = Header::LogoutResponse(LogoutResponse {
            response: code,
            itt,
            stat_sn: f.link.stat_sn,
            exp_cmd_sn: f.exp_cmd_sn,
            max_cmd_sn: f.max_cmd_sn,
            time2wait: f.link.params.default_time2wait as u16,
            time2retain: f.link.params.default_time2retain as u16,
        });
        f.link.stat_sn = f.link.stat_sn.wrapping_add(1);
        self.push(h, Payload::Empty);
        if code != LogoutResponseCode::CLOSED {
            return;
        }
        match scope {
            LogoutScope::Session => self.close_all("logout"),
            LogoutScope::Connection(c) if c == self.cur => self.close("logout"),
            LogoutScope::Connection(c) => {
                self.on(c, |o| o.close("logged out by another connection"))
            }
            LogoutScope::Recovery(c) if c == self.cur => {
                let now = self.link.last_rx;
                self.fail_link(now, "logout: removed for recovery");
            }
            LogoutScope::Recovery(_) => {}
        }
    }

    fn lun_exists(&self, lun: u64) -> bool {
        self.lun_exists.as_ref().is_none_or(|f| (f.0)(lun))
    }

    /// Abort, without any response, every task whose LUN field satisfies `lun`: a task
    /// management function or PREEMPT AND ABORT that arrived through another I_T nexus (SAM-5
    /// §5.6, §7.4, §7.7; SPC-4 §5.13.11.2.5). Tasks already with the device server have their
    /// results dropped; they are the `running` ones the caller may wait for (each comes back
    /// through `complete_task`).
    pub fn abort_tasks_for(&mut self, lun: impl Fn(u64) -> bool) -> AbortedTasks {
        if self.session_closed() {
            return AbortedTasks::default();
        }
        let mut running = HashSet::new();
        let tasks = self.abort_where(|t| lun(t.lun), &mut running);
        self.update_window();
        AbortedTasks { tasks, running }
    }

    /// A PDU whose data digest failed (RFC 7143 §7.8: Reject with Data-Digest-Error; at ERL 0
    /// a SCSI command or Data-Out so hit cannot be recovered, so the session ends).
    pub fn handle_digest_error(&mut self, bhs: &[u8; 48]) {
        if self.link.closed {
            return;
        }
        let op = Opcode(bhs[0] & 0x3f);
        if self.erl() >= 1 {
            self.ack_stat_sn(bhs);
        }
        self.reject(bhs, RejectReason::DATA_DIGEST_ERROR);
        if self.erl() >= 1 {
            self.recover_digest_error(bhs);
            return;
        }
        if matches!(op, Opcode::DATA_OUT | Opcode::SCSI_COMMAND) {
            self.close_all("data digest error on SCSI data at ErrorRecoveryLevel 0");
        }
    }

    /// One PDU received on the current connection.
    pub fn handle_pdu(&mut self, now: Instant, pdu: RawPdu, dir: &dyn Directory) {
        self.link.last_rx = now;
        if self.link.closed {
            return;
        }
        let data_out = pdu.bhs[0] & 0x3f == Opcode::DATA_OUT.0;
        if self.erl() >= 1 {
            self.ack_stat_sn(&pdu.bhs);
        }
        self.handle_ffp(pdu, dir);
        // The Data-Out clock: restarted by any Data-Out, started when R2Ts go out.
        let l = &mut self.link;
        if l.r2ts_out == 0 {
            l.data_clock = None;
        } else if data_out || l.data_clock.is_none() {
            l.data_clock = Some(now);
        }
    }

    /// The current connection's timers: the Data-Out clock and NOP keep-alive. A connection
    /// that fails ends the session (ErrorRecoveryLevel 0).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        if self.link.closed {
            return;
        }
        let l = &mut self.link;
        if l.r2ts_out == 0 {
            l.data_clock = None;
        } else if let Some(d) = self.cfg.data_out_timeout {
            match l.data_clock {
                None => l.data_clock = Some(now),
                Some(t) if now >= t + d => {
                    self.close_all("R2Ts unanswered: no Data-Out within data_out_timeout");
                    return;
                }
                Some(_) => {}
            }
        }
        if let Some((_, sent)) = self.link.ping {
            if now >= sent + self.cfg.nop_timeout {
                self.close_all("NOP-In ping not answered");
            }
            return;
        }
        let Some(interval) = self.cfg.nop_interval else {
            return;
        };
        if now < self.link.last_rx + interval {
            return;
        }
        // RFC 7143 §11.19: a target ping is a NOP-In with a valid TTT and reserved ITT; its
        // StatSN is not advanced.
        let ttt = self.alloc_ttt();
        self.link.ping = Some((ttt, now));
        let h = Header::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt,
            stat_sn: self.link.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        });
        self.push(h, Payload::Empty);
    }

    /// When the driver of the current connection should call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let l = &self.link;
        if l.closed {
            return None;
        }
        let nop = match l.ping {
            Some((_, sent)) => Some(sent + self.cfg.nop_timeout),
            None => self.cfg.nop_interval.map(|i| l.last_rx + i),
        };
        // With R2Ts out, the Data-Out deadline; an unstarted clock wants a call now.
        let data = match (self.cfg.data_out_timeout, l.r2ts_out) {
            (Some(d), 1..) => Some(l.data_clock.map_or(l.last_rx, |t| t + d)),
            _ => None,
        };
        [nop, data, self.retain.values().min().copied()]
            .into_iter()
            .flatten()
            .min()
    }
}
