//! One iSCSI connection from its first login PDU to its close, as a sans-IO state machine.
//!
//! ```text
//!  Login ──LoginComplete──► (driver: accept_login / refuse_login) ──► FullFeature ──► Closed
//!    └──refusal sent──────────────────────────────────────────────────────────────┘
//! ```
//! In full feature phase the engine owns the session's command window (CmdSN/ExpCmdSN/
//! MaxCmdSN, RFC 7143 §4.2.2.1), the task table keyed by ITT, the R2T state of writes
//! (RFC 7143 §4.2.3, §11.8), Data-In sequencing and residuals (§11.7, §11.4.5), NOP keep-alive
//! (§11.18, §11.19), task management (§11.5, §11.6), text/SendTargets (§11.10, appendix C) and
//! logout (§11.14), and error recovery up to level 2 (`session::recovery`: SNACK, recovery
//! R2Ts, connection recovery with TASK REASSIGN). At level 0 any error that breaks the PDU
//! stream closes the connection.
//!
//! Inputs: [`Connection::handle_pdu`], [`Connection::handle_digest_error`],
//! [`Connection::complete_task`], [`Connection::handle_timeout`]. Outputs:
//! [`Connection::poll_transmit`], [`Connection::poll_event`], [`Connection::poll_timeout`].

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use iscsi_wire::frame::RawPdu;
use iscsi_wire::header::*;
use iscsi_wire::LoginStatus;

use crate::budget::{BudgetAccount, Waker};
use crate::login::{Directory, Login, LoginResult, LoginStep};
use crate::params::{Negotiated, TargetOffer};
use crate::session::{Link, SessionCore, SessionHandle};
use crate::OutPdu;

/// Internal identity of a task handed to the device server (ITTs can be reused by the
/// initiator once a task is answered, so they do not identify an execution).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// A SCSI command whose data-out has fully arrived, ready for the device server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiTask {
    pub id: TaskId,
    pub itt: u32,
    /// The 8-byte LUN field as received.
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub attr: u8,
    pub read: bool,
    pub write: bool,
    /// Expected Data Transfer Length from the initiator.
    pub expected_len: u32,
    pub data_out: Vec<u8>,
}

/// What the device server made of a task.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskOutcome {
    pub status: u8,
    /// Sense data (fixed or descriptor format); sent in the SCSI Response.
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    /// Bytes of data-out the CDB asked for (for the write residual).
    pub data_out_len: u32,
}

/// What [`Connection::abort_tasks_for`] ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AbortedTasks {
    /// Tasks aborted, in any phase.
    pub tasks: usize,
    /// Those of them still with the device server.
    pub running: HashSet<TaskId>,
}

/// A task management function that needs the device server (or the session table). The
/// engine has already ended the tasks of its own session; the tasks of other I_T nexuses
/// (LUN RESET, CLEAR TASK SET, target resets: SAM-5 §7) are the driver's to end, before it
/// lets the response go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TmfAction {
    /// CLEAR TASK SET on a LUN.
    ClearTaskSet {
        lun: u64,
    },
    LunReset {
        lun: u64,
    },
    TargetWarmReset,
    TargetColdReset,
}

/// Things the driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Login reached the point of entering full feature phase: allocate or find the session,
    /// reinstate an old one with the same ISID, then call `accept_login` or `refuse_login`.
    LoginComplete(LoginResult),
    /// Negotiated digests and data segment limit changed: re-arm the decoder.
    Framing {
        header_digest: bool,
        data_digest: bool,
        max_recv: u32,
    },
    Execute(ScsiTask),
    /// A task handed out by `Execute` was aborted while the device server runs it: tell it to
    /// stop waiting, if it can (its result is dropped either way, and the TMF that aborted it
    /// is answered once `complete_task` brings it back).
    Cancel(TaskId),
    Tmf(TmfAction),
    /// Close the connection once every queued PDU is sent.
    Close {
        reason: &'static str,
    },
}

/// Driver-tunable limits.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    pub offer: TargetOffer,
    /// Commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1).
    pub cmd_window: u32,
    /// Largest Expected Data Transfer Length buffered for a write.
    pub max_write_len: u32,
    /// Idle time before a target NOP-In ping; `None` disables pings.
    pub nop_interval: Option<Duration>,
    /// How long a ping may stay unanswered before the connection is dropped.
    pub nop_timeout: Duration,
    /// How long login may take in all.
    pub login_timeout: Duration,
    /// How long R2Ts may stay unanswered (no Data-Out at all) before the connection is
    /// dropped; `None` never. At ErrorRecoveryLevel 0 there is no recovery R2T, and a peer
    /// that never sends the data it was granted would keep its share of the buffer budget.
    pub data_out_timeout: Option<Duration>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            offer: TargetOffer::default(),
            cmd_window: 128,
            max_write_len: 32 * 1024 * 1024,
            nop_interval: Some(Duration::from_secs(30)),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(30),
            data_out_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A connection's login, or its handle on the session it belongs to.
#[derive(Debug)]
enum Phase {
    Login(Box<Login>),
    Full(SessionHandle),
}

/// One connection: its login, then its part of a session (see [`crate::session`]).
#[derive(Debug)]
pub struct Connection {
    cfg: ConnConfig,
    phase: Phase,
    /// The connection's CID (known once login completes) and its link in the session.
    cid: u16,
    link: u64,
    /// Login-phase output (full feature phase output lives in the session, per connection).
    out: VecDeque<OutPdu>,
    events: VecDeque<ConnEvent>,
    started: Instant,
    /// Login phase only: set once the connection must close.
    closed: bool,
    /// The budget account a new session starts with (see `set_budget`).
    budget: Option<BudgetAccount>,
    /// The status the login was refused with, if it was (for the driver's statistics).
    refused: Option<LoginStatus>,
}

impl Connection {
    /// A connection with a fixed CHAP challenge: for tests and fuzzing only. The daemon uses
    /// [`Connection::with_random`].
    pub fn new(cfg: ConnConfig, now: Instant, initial_stat_sn: u32) -> Self {
        Self::with_random(
            cfg,
            now,
            initial_stat_sn,
            [0x5a; 1 + crate::chap::CHALLENGE_LEN],
        )
    }

    /// `random` must come from a cryptographic source (CHAP identifier and challenge).
    pub fn with_random(
        cfg: ConnConfig,
        now: Instant,
        initial_stat_sn: u32,
        random: [u8; 1 + crate::chap::CHALLENGE_LEN],
    ) -> Self {
        let login = Login::new(cfg.offer.clone(), cfg.cmd_window, initial_stat_sn, random);
        Connection {
            cfg,
            phase: Phase::Login(Box::new(login)),
            cid: 0,
            link: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            started: now,
            closed: false,
            budget: None,
            refused: None,
        }
    }

    /// Run `f` on the session on behalf of this connection (full feature phase only, and
    /// only while this connection is the session's: a connection another one replaced is
    /// closed).
    fn full<R>(&self, f: impl FnOnce(&mut SessionCore) -> R) -> Option<R> {
        match &self.phase {
            Phase::Full(s) => s.with(self.cid, self.link, f),
            Phase::Login(_) => None,
        }
    }

    /// Next PDU to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<OutPdu> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        self.full(|c| c.link.out.pop_front()).flatten()
    }

    /// Every PDU queued to send, in order (one lock of the session for all of them).
    pub fn transmit_all(&mut self, mut each: impl FnMut(OutPdu)) {
        self.out.drain(..).for_each(&mut each);
        let queued = self.full(|c| std::mem::take(&mut c.link.out));
        for o in queued.into_iter().flatten() {
            each(o);
        }
    }

    /// Every event waiting, in order (one lock of the session for all of them); handling
    /// them may queue more, which the next call returns.
    #[must_use]
    pub fn take_events(&mut self) -> VecDeque<ConnEvent> {
        let mut v: VecDeque<ConnEvent> = self.events.drain(..).collect();
        if let Some(more) = self.full(|c| std::mem::take(&mut c.link.events)) {
            v.extend(more);
        }
        v
    }

    /// Next thing the driver must do.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.full(|c| c.link.events.pop_front()).flatten()
    }

    pub fn is_full_feature(&self) -> bool {
        self.full(|c| !c.link.closed).unwrap_or(false)
    }

    pub fn is_closed(&self) -> bool {
        match &self.phase {
            Phase::Login(_) => self.closed,
            Phase::Full(_) => self.full(|c| c.link.closed).unwrap_or(true),
        }
    }

    /// The session's ErrorRecoveryLevel (0 before full feature phase).
    pub fn error_recovery_level(&self) -> u32 {
        self.full(|c| c.erl()).unwrap_or(0)
    }

    /// Negotiated parameters of this connection once in full feature phase.
    pub fn params(&self) -> Option<Negotiated> {
        self.full(|c| c.link.params.clone())
    }

    /// Tasks of the session currently known (for metrics/tests).
    pub fn task_count(&self) -> usize {
        self.full(|c| c.task_count()).unwrap_or(0)
    }

    /// The session this connection belongs to, once in full feature phase.
    pub fn session(&self) -> Option<SessionHandle> {
        match &self.phase {
            Phase::Full(s) => Some(s.clone()),
            Phase::Login(_) => None,
        }
    }

    /// The connection's CID (0 before login completes).
    pub fn cid(&self) -> u16 {
        self.cid
    }

    /// Whether this connection is still its session's (open or closed), and not replaced by
    /// a login with its CID (connection reinstatement).
    pub fn is_current(&self) -> bool {
        self.full(|_| ()).is_some()
    }

    fn emit(&mut self, ev: ConnEvent) {
        if !self.closed {
            self.events.push_back(ev);
        }
    }

    fn close(&mut self, reason: &'static str) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(ConnEvent::Close { reason });
        }
    }

    /// When the driver should call [`Connection::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Login(_) if self.closed => None,
            Phase::Login(_) => Some(self.started + self.cfg.login_timeout),
            Phase::Full(_) => self.full(|c| c.poll_timeout()).flatten(),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Login(_) => {
                if !self.closed && now >= self.started + self.cfg.login_timeout {
                    self.close("login timed out");
                }
            }
            Phase::Full(_) => {
                self.full(|c| c.handle_timeout(now));
            }
        }
    }

    /// A PDU whose data digest failed (RFC 7143 §7.8: Reject with Data-Digest-Error; at ERL 0
    /// a SCSI command or Data-Out so hit cannot be recovered, so the session ends).
    pub fn handle_digest_error(&mut self, bhs: &[u8; 48]) {
        match &self.phase {
            // Login has no data digest (it is negotiated by the login).
            Phase::Login(_) => {}
            Phase::Full(_) => {
                self.full(|c| c.handle_digest_error(bhs));
            }
        }
    }

    /// Handle one received PDU.
    pub fn handle_pdu(&mut self, now: Instant, pdu: RawPdu, dir: &dyn Directory) {
        match &mut self.phase {
            Phase::Login(login) => {
                if self.closed {
                    return;
                }
                let req = match pdu.header() {
                    Ok(Header::LoginRequest(r)) => r,
                    _ => {
                        // RFC 7143 §6.3: only Login Requests are valid before full feature
                        // phase; anything else ends the login (protocol error).
                        self.close("non-login PDU during login");
                        return;
                    }
                };
                let step = login.handle(&req, &pdu.data, dir);
                self.out.extend(login.take_output());
                match step {
                    LoginStep::Continue => {}
                    LoginStep::Complete(r) => self.emit(ConnEvent::LoginComplete(r)),
                    LoginStep::Failed(status) => {
                        self.refused = Some(status);
                        self.close("login refused");
                    }
                }
            }
            Phase::Full(_) => {
                self.full(|c| c.handle_pdu(now, pdu, dir));
            }
        }
    }

    /// Send the final login response and enter full feature phase on `link`.
    fn finish_login(&mut self, result: &LoginResult, tsih: u16) -> Option<Link> {
        if self.closed {
            return None;
        }
        let Phase::Login(login) = &mut self.phase else {
            return None;
        };
        login.accept(tsih);
        let mut link = Link::new(result.params.clone(), result.next_stat_sn, self.started);
        link.out.extend(self.out.drain(..));
        link.out.extend(login.take_output());
        link.events.extend(self.events.drain(..));
        let p = &result.params;
        link.events.push_back(ConnEvent::Framing {
            header_digest: p.header_digest,
            data_digest: p.data_digest,
            max_recv: p.target_mrdsl,
        });
        self.cid = result.cid;
        Some(link)
    }

    /// The driver accepted a leading login: a new session with this connection.
    pub fn accept_login(&mut self, result: &LoginResult, tsih: u16) {
        let Some(link) = self.finish_login(result, tsih) else {
            return;
        };
        let mut core = SessionCore::new(
            self.cfg.clone(),
            result.kind,
            result.initiator_name.clone(),
            result.params.clone(),
            result.exp_cmd_sn,
            result.cid,
            link,
        );
        if let Some(b) = self.budget.take() {
            core.set_budget(b);
        }
        self.link = 1;
        self.phase = Phase::Full(SessionHandle(std::sync::Arc::new(std::sync::Mutex::new(
            core,
        ))));
    }

    /// The driver accepted a login that adds this connection to `session` (MC/S, RFC 7143
    /// §6.3.4; a CID in use replaces that connection). The session's own parameters hold;
    /// this connection keeps the connection-scoped keys it negotiated (digests, data segment
    /// lengths: RFC 7143 §13).
    /// A session that has ended meanwhile (every connection closed: at ErrorRecoveryLevel 0
    /// a failed session is not continued) refuses the login with "session does not exist".
    pub fn accept_join(&mut self, result: &LoginResult, tsih: u16, session: &SessionHandle) {
        if self.closed || !matches!(self.phase, Phase::Login(_)) {
            return;
        }
        let mut g = session.lock();
        if g.session_closed() {
            drop(g);
            self.refuse_login(LoginStatus::SESSION_DOES_NOT_EXIST);
            return;
        }
        let Some(mut link) = self.finish_login(result, tsih) else {
            return;
        };
        let cid = result.cid;
        let mut p = g.params().clone();
        let c = &result.params;
        p.header_digest = c.header_digest;
        p.data_digest = c.data_digest;
        p.initiator_mrdsl = c.initiator_mrdsl;
        p.target_mrdsl = c.target_mrdsl;
        link.params = p;
        self.link = g.add_link(cid, link);
        drop(g);
        self.phase = Phase::Full(session.clone());
    }

    /// The driver refused the login at the last step.
    pub fn refuse_login(&mut self, status: LoginStatus) {
        if self.closed {
            return;
        }
        let Phase::Login(login) = &mut self.phase else {
            return;
        };
        login.refuse(status);
        self.out.extend(login.take_output());
        self.refused = Some(status);
        self.close("login refused");
    }

    /// The status the login was refused with (RFC 7143 §11.13.5), if it was.
    pub fn login_refusal(&self) -> Option<LoginStatus> {
        self.refused
    }

    /// The TargetName the initiator is logging in to, while in the login phase.
    pub fn login_target(&self) -> Option<String> {
        match &self.phase {
            Phase::Login(l) => l.target_name().map(str::to_string),
            Phase::Full(_) => None,
        }
    }

    /// Tell `observer` what the session does (task management functions), for statistics.
    pub fn set_observer(&mut self, observer: std::sync::Arc<dyn crate::session::SessionObserver>) {
        self.full(|c| c.set_observer(observer));
    }

    /// Give the session its share of the target-wide buffer budget (before login completes:
    /// the session this connection starts takes it; a connection that joins a session uses
    /// the session's). Without one, nothing is held back (tests, fuzzing).
    pub fn set_budget(&mut self, account: BudgetAccount) {
        match &self.phase {
            Phase::Login(_) => self.budget = Some(account),
            Phase::Full(_) => {
                self.full(|c| c.set_budget(account));
            }
        }
    }

    /// Called when another connection of the session queued output or events for this one
    /// (the driver wakes this connection's task with it).
    pub fn set_waker(&mut self, waker: Waker) {
        self.full(|c| c.set_waker(waker));
    }

    /// The buffer budget may have room again (the account's waker fired): move the commands
    /// waiting for it on (R2Ts, execution), in order, as far as the budget now allows.
    pub fn budget_ready(&mut self) {
        if let Phase::Full(s) = &self.phase {
            s.with_or_outside(self.cid, self.link, |c| c.budget_ready());
        }
    }

    /// The device server finished a task (of any connection of the session; also after this
    /// connection closed or was replaced: the session still waits for it).
    pub fn complete_task(&mut self, id: TaskId, outcome: TaskOutcome) {
        if let Phase::Full(s) = &self.phase {
            s.with_or_outside(self.cid, self.link, |c| c.complete_task(id, outcome));
        }
    }

    /// The driver carried out the action of the oldest task management function it was handed
    /// (`ConnEvent::Tmf`): answer it, and the ones queued behind it.
    pub fn tmf_done(&mut self) {
        // Also when this connection failed or was replaced meanwhile: the session's queue of
        // task management functions waits for it.
        if let Phase::Full(s) = &self.phase {
            s.with_or_outside(self.cid, self.link, |c| c.tmf_done());
        }
    }

    /// Tell the engine which LUN fields reach a logical unit, so LUN-scoped task management
    /// on any other LUN is answered "LUN does not exist" (RFC 7143 §11.6.1).
    pub fn set_lun_filter(&mut self, f: impl Fn(u64) -> bool + Send + Sync + 'static) {
        self.full(|c| c.set_lun_filter(Box::new(f)));
    }

    /// Give the session the logical units' task sets (SAM-5 §8.6): `f` enters a delivered task,
    /// by its LUN field and task attribute, into the task set of the logical unit it reaches,
    /// shared with every other I_T nexus. A task whose entry is blocked stays dormant; the
    /// driver calls [`Connection::budget_ready`] when a task set may have let one go.
    pub fn set_task_sets(
        &mut self,
        f: impl Fn(u64, u8) -> Option<Box<dyn crate::session::TaskSetEntry>> + Send + Sync + 'static,
    ) {
        self.full(|c| c.set_task_sets(Box::new(f)));
    }

    /// Abort, without any response, every task of the session whose LUN field satisfies `lun`
    /// (see [`SessionHandle::abort_tasks_for`]).
    pub fn abort_tasks_for(&mut self, lun: impl Fn(u64) -> bool) -> AbortedTasks {
        self.full(|c| c.abort_tasks_for(lun)).unwrap_or_default()
    }

    /// Session reinstatement, an operator, the daemon stopping, or this connection failed
    /// (ErrorRecoveryLevel 0): the session ends, every connection of it closes.
    pub fn shutdown(&mut self, reason: &'static str) {
        match &self.phase {
            Phase::Login(_) => self.close(reason),
            Phase::Full(_) => {
                self.full(|c| c.close_all(reason));
            }
        }
    }

    /// The connection ended without a logout (peer gone, framing error, timeout). At
    /// ErrorRecoveryLevel 0 and 1 that ends the session, every connection of it (RFC 7143
    /// §7.1.5: session recovery); at 2 only this connection closes, and its tasks wait for
    /// reassignment until the returned time (§7.4), when the driver calls
    /// [`SessionHandle::expire`].
    pub fn connection_lost(&mut self, now: Instant, reason: &'static str) -> Option<Instant> {
        match &self.phase {
            Phase::Login(_) => {
                self.close(reason);
                None
            }
            Phase::Full(_) => self
                .full(|c| {
                    if c.link.closed {
                        c.retained_until()
                    } else if c.erl() >= 2 {
                        c.fail_link(now, reason)
                    } else {
                        c.close_all(reason);
                        None
                    }
                })
                .flatten(),
        }
    }

    /// The link's identity in its session (for [`SessionHandle::link_is`]).
    pub fn link_id(&self) -> u64 {
        self.link
    }

    /// Ids of the session's tasks with the device server.
    pub fn executing(&self) -> Vec<TaskId> {
        self.full(|c| c.executing_ids()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
