//! Error recovery above level 0 (RFC 7143 §7.1-§7.3, §11.16): what the session keeps so that
//! a lost PDU can be sent again, SNACK, recovery R2Ts, and digest errors that do not end the
//! session.
//!
//! What is kept, and its bounds (everything here is driven by the peer):
//! - per connection, the numbered responses (PDUs that took a StatSN) its initiator has not
//!   acknowledged with ExpStatSN: at most [`MAX_UNACKED`] PDUs and [`MAX_UNACKED_BYTES`] of
//!   payload; older ones are forgotten, and a SNACK for them is rejected (the initiator then
//!   falls back to a coarser recovery).
//! - per answered task, its SCSI Response and its Data-In (a handle on the device server's
//!   buffer, cut again on demand), until that status is acknowledged. The buffer keeps its
//!   buffer-budget grant, so what a session keeps counts against its own share; when one of
//!   its commands waits for budget, the kept buffers go first.
//!
//! At ErrorRecoveryLevel ≥ 1 the status of a read never rides on its last Data-In (no phase
//! collapse), so a Status SNACK never needs the data buffer.
//!
//! ErrorRecoveryLevel 2 (§6.2.2, §7.4, §11.5.1): a connection that fails, is logged out for
//! recovery or is reinstated leaves its tasks behind for Time2Wait + Time2Retain (`retain`):
//! they neither send nor start; one that finishes meanwhile keeps its answer. TASK REASSIGN on
//! a connection of the session takes a task over: a write is asked for the data still missing,
//! a read's Data-In is sent again from the initiator's ExpDataSN, and the status follows. When
//! the time is up the tasks are aborted without a response.

use super::*;

/// Numbered responses kept per connection for a Status SNACK.
pub(super) const MAX_UNACKED: usize = 1024;
/// Payload bytes of those responses (NOP-In echoes can carry up to MaxRecvDataSegmentLength).
pub(super) const MAX_UNACKED_BYTES: usize = 1 << 20;
/// PDUs the connection may have queued and still take a SNACK: its retransmissions stay
/// behind what the peer reads (a burst of SNACKs in one read buffer must not queue gigabytes
/// of copies); past it a SNACK gets a SNACK Reject, and may be sent again later.
const MAX_QUEUED_FOR_SNACK: usize = 256;

/// Recovery R2Ts (or lost unsolicited bursts) one task may go through before it is ended with
/// PROTOCOL SERVICE CRC ERROR: a peer whose every Data-Out is bad must not keep a task forever.
const MAX_RECOVERIES: u8 = 16;

/// SNACK types (RFC 7143 §11.16.1).
const SNACK_DATA_R2T: u8 = 0;
const SNACK_STATUS: u8 = 1;
const SNACK_DATA_ACK: u8 = 2;
const SNACK_R_DATA: u8 = 3;

/// (offset, length, F bit) of one Data-In PDU.
pub(super) type Segment = (u32, u32, bool);

/// A Data-In buffer and how it was cut into PDUs.
pub(super) type KeptData = (Arc<SharedBuf>, Vec<Segment>);

/// A task's answer, kept until the initiator acknowledges its status.
#[derive(Debug)]
pub(super) struct Answer {
    /// The link that carried the status.
    pub(super) link: u64,
    pub(super) lun: u64,
    /// The Data-In buffer and how it was cut: (offset, length, F bit) of DataSN
    /// `first_data_sn + i`. `None` once let go (budget pressure, DataACK).
    data: Option<KeptData>,
    first_data_sn: u32,
    /// The SCSI Response as sent.
    status: OutPdu,
}

impl Answer {
    fn stat_sn(&self) -> u32 {
        match &self.status.header {
            Header::ScsiResponse(r) => r.stat_sn,
            _ => 0,
        }
    }
}

/// Cut `[from, end)` of a Data-In buffer into PDUs: each at most `mrdsl` bytes, none across a
/// MaxBurstLength boundary, F on the last of each burst (RFC 7143 §11.7.1, §13.12).
pub(super) fn segments(from: u32, end: u32, mrdsl: u32, burst: u32) -> Vec<(u32, u32, bool)> {
    let (mrdsl, burst) = (u64::from(mrdsl.max(512)), u64::from(burst.max(512)));
    let end = u64::from(end);
    let mut v = Vec::new();
    let mut off = u64::from(from);
    while off < end {
        let burst_end = (off / burst + 1) * burst;
        let len = mrdsl.min(end - off).min(burst_end - off);
        let fin = off + len == end || off + len == burst_end;
        v.push((off as u32, len as u32, fin));
        off += len;
    }
    v
}

/// The StatSN a target PDU took, if it is a numbered response (RFC 7143 §4.2.2.2).
fn numbered(h: &Header) -> Option<u32> {
    match h {
        Header::ScsiResponse(r) => Some(r.stat_sn),
        Header::DataIn(d) if d.has_status => Some(d.stat_sn),
        // A NOP-In that answers a ping; our own pings do not take a StatSN (§11.19).
        Header::NopIn(n) if n.itt != RESERVED_TAG => Some(n.stat_sn),
        Header::TaskMgmtResponse(t) => Some(t.stat_sn),
        Header::TextResponse(t) => Some(t.stat_sn),
        Header::LogoutResponse(l) => Some(l.stat_sn),
        Header::Reject(r) => Some(r.stat_sn),
        Header::AsyncMessage(a) => Some(a.stat_sn),
        _ => None,
    }
}

impl SessionCore {
    /// Keep a numbered response for a Status SNACK (ERL ≥ 1; see the module docs).
    pub(super) fn log_sent(&mut self, pdu: &OutPdu) {
        if numbered(&pdu.header).is_none() {
            return;
        }
        let l = &mut self.link;
        l.sent_bytes += pdu.data.len();
        l.sent.push_back(pdu.clone());
        while l.sent.len() > MAX_UNACKED || l.sent_bytes > MAX_UNACKED_BYTES {
            let Some(old) = l.sent.pop_front() else {
                break;
            };
            l.sent_bytes -= old.data.len();
        }
    }

    /// Keep a task's answer until its status is acknowledged (ERL ≥ 1).
    pub(super) fn keep_answer(
        &mut self,
        itt: u32,
        lun: u64,
        first_data_sn: u32,
        data: Option<KeptData>,
        status: OutPdu,
    ) {
        let a = Answer {
            link: self.link.id,
            lun,
            data,
            first_data_sn,
            status,
        };
        self.link.answered.push_back((a.stat_sn(), itt));
        self.answers.insert(itt, a);
        while self.link.answered.len() > MAX_UNACKED {
            if let Some((sn, itt)) = self.link.answered.pop_front() {
                self.forget_answer(itt, sn);
            }
        }
    }

    fn forget_answer(&mut self, itt: u32, stat_sn: u32) {
        let id = self.link.id;
        if self
            .answers
            .get(&itt)
            .is_some_and(|a| a.link == id && a.stat_sn() == stat_sn)
        {
            self.answers.remove(&itt);
        }
    }

    /// Let go of the Data-In buffers kept for retransmission (their budget comes back once
    /// the PDUs already queued are sent); a Data SNACK for them is rejected from now on.
    pub(super) fn drop_answer_data(&mut self) {
        let retain = &self.retain;
        for a in self.answers.values_mut() {
            // Not those waiting for reassignment: nothing else could send them again.
            if !retain.contains_key(&a.link) {
                a.data = None;
            }
        }
    }

    /// The ExpStatSN an initiator PDU carries acknowledges every response before it on this
    /// connection (RFC 7143 §4.2.2.2): what is kept for them goes.
    pub(super) fn ack_stat_sn(&mut self, bhs: &[u8; 48]) {
        let op = Opcode(bhs[0] & 0x3f);
        if !matches!(
            op,
            Opcode::NOP_OUT
                | Opcode::SCSI_COMMAND
                | Opcode::TASK_MGMT_REQUEST
                | Opcode::TEXT_REQUEST
                | Opcode::DATA_OUT
                | Opcode::LOGOUT_REQUEST
                | Opcode::SNACK_REQUEST
        ) {
            return;
        }
        let exp = u32::from_be_bytes([bhs[28], bhs[29], bhs[30], bhs[31]]);
        let l = &mut self.link;
        // Only forward, and never past what was sent.
        if !serial::lt(l.exp_stat_sn, exp) || serial::lt(l.stat_sn, exp) {
            return;
        }
        l.exp_stat_sn = exp;
        while let Some(sn) = l.sent.front().and_then(|p| numbered(&p.header)) {
            if !serial::lt(sn, exp) {
                break;
            }
            if let Some(p) = l.sent.pop_front() {
                l.sent_bytes -= p.data.len();
            }
        }
        while let Some(&(sn, itt)) = self.link.answered.front() {
            if !serial::lt(sn, exp) {
                break;
            }
            self.link.answered.pop_front();
            self.forget_answer(itt, sn);
        }
    }

    /// A copy of a kept PDU with today's ExpCmdSN / MaxCmdSN (RFC 7143 §11.16: the only fields
    /// a retransmission changes).
    fn again(&self, p: &OutPdu) -> OutPdu {
        let mut p = p.clone();
        let (e, m) = (self.exp_cmd_sn, self.max_cmd_sn);
        match &mut p.header {
            Header::ScsiResponse(r) => (r.exp_cmd_sn, r.max_cmd_sn) = (e, m),
            Header::DataIn(d) => (d.exp_cmd_sn, d.max_cmd_sn) = (e, m),
            Header::NopIn(n) => (n.exp_cmd_sn, n.max_cmd_sn) = (e, m),
            Header::TaskMgmtResponse(t) => (t.exp_cmd_sn, t.max_cmd_sn) = (e, m),
            Header::TextResponse(t) => (t.exp_cmd_sn, t.max_cmd_sn) = (e, m),
            Header::LogoutResponse(l) => (l.exp_cmd_sn, l.max_cmd_sn) = (e, m),
            Header::Reject(r) => (r.exp_cmd_sn, r.max_cmd_sn) = (e, m),
            Header::AsyncMessage(a) => (a.exp_cmd_sn, a.max_cmd_sn) = (e, m),
            Header::R2t(r) => (r.exp_cmd_sn, r.max_cmd_sn) = (e, m),
            _ => {}
        }
        p.header_digest = self.link.header_digest;
        p.data_digest = self.link.data_digest;
        p
    }

    /// Queue a retransmission (not kept again: the original is still kept).
    fn push_again(&mut self, p: OutPdu) {
        if !self.link.closed {
            self.link.out.push_back(p);
        }
    }

    /// The numbers `[beg, beg + run)` a SNACK asks for among `[first, next)`, `run` 0 meaning
    /// "up to the last one sent" (RFC 7143 §11.16.6-7); `None` if any of them was never sent.
    fn run(beg: u32, run: u32, first: u32, next: u32) -> Option<(u32, u32)> {
        let end = if run == 0 {
            next
        } else {
            beg.wrapping_add(run)
        };
        let ok = serial::le(first, beg) && serial::lt(beg, next) && serial::le(end, next);
        ok.then_some((beg, end))
    }

    /// RFC 7143 §11.16: SNACK Request (ErrorRecoveryLevel ≥ 1 only, §7.1.5).
    pub(super) fn handle_snack(&mut self, pdu: &RawPdu, s: SnackRequest) {
        if self.erl() == 0 {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        }
        if s.snack_type != SNACK_DATA_ACK && self.link.out.len() >= MAX_QUEUED_FOR_SNACK {
            self.reject(&pdu.bhs, RejectReason::SNACK_REJECT);
            return;
        }
        match s.snack_type {
            SNACK_STATUS => self.status_snack(pdu, s),
            SNACK_DATA_R2T => self.data_snack(pdu, s),
            SNACK_DATA_ACK => {
                // We never set the A bit; a DataACK still lets go of what it acknowledges
                // (§11.16.1: BegRun is the next DataSN the initiator expects).
                let a = self.answers.get_mut(&s.itt);
                match a {
                    Some(a) if a.link == self.link.id => {
                        let n = a.data.as_ref().map_or(0, |(_, segs)| segs.len() as u32);
                        if serial::le(a.first_data_sn.wrapping_add(n), s.beg_run) {
                            a.data = None;
                        }
                    }
                    _ => self.reject(&pdu.bhs, RejectReason::INVALID_DATA_ACK),
                }
            }
            SNACK_R_DATA => self.r_data_snack(pdu, s),
            _ => self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR),
        }
    }

    /// Status SNACK: the numbered responses `BegRun..` again, exact copies (§11.16).
    fn status_snack(&mut self, pdu: &RawPdu, s: SnackRequest) {
        let l = &self.link;
        let first = l.sent.front().and_then(|p| numbered(&p.header));
        // Acknowledged or forgotten responses cannot be asked for (§11.16: Protocol Error).
        let range = first.and_then(|f| Self::run(s.beg_run, s.run_length, f, l.stat_sn));
        let Some((beg, end)) = range.filter(|_| serial::le(l.exp_stat_sn, s.beg_run)) else {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        };
        let again: Vec<OutPdu> = l
            .sent
            .iter()
            .filter(|p| {
                numbered(&p.header).is_some_and(|sn| serial::le(beg, sn) && serial::lt(sn, end))
            })
            .map(|p| self.again(p))
            .collect();
        for p in again {
            self.push_again(p);
        }
    }

    /// Data/R2T SNACK: Data-In of an answered read, or R2Ts of a write still gathering data.
    fn data_snack(&mut self, pdu: &RawPdu, s: SnackRequest) {
        // R2Ts of a write in progress on this connection (§11.16.1: BegRun is an R2TSN).
        let id = self.link.id;
        if let Some(t) = self.tasks.get(&s.itt).filter(|t| t.link == id) {
            let TaskPhase::Receiving(w) = &t.phase else {
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return;
            };
            let first = w.r2ts.iter().map(|r| r.sn).min();
            let range = first.and_then(|f| Self::run(s.beg_run, s.run_length, f, w.r2t_sn));
            let Some((beg, end)) = range else {
                self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
                return;
            };
            let lun = t.lun;
            let again: Vec<(u32, u32, u32, u32)> = w
                .r2ts
                .iter()
                .filter(|r| serial::le(beg, r.sn) && serial::lt(r.sn, end))
                .map(|r| (r.ttt, r.sn, r.offset + r.received, r.len - r.received))
                .collect();
            for (ttt, sn, offset, len) in again {
                self.push_r2t(lun, s.itt, ttt, sn, offset, len);
            }
            return;
        }
        let id = self.link.id;
        let Some(a) = self.answers.get(&s.itt).filter(|a| a.link == id) else {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        };
        let Some((buf, segs)) = &a.data else {
            // Sent, but let go of since (budget pressure): it cannot be sent again.
            self.reject(&pdu.bhs, RejectReason::SNACK_REJECT);
            return;
        };
        let next = a.first_data_sn.wrapping_add(segs.len() as u32);
        let Some((beg, end)) = Self::run(s.beg_run, s.run_length, a.first_data_sn, next) else {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        };
        // Exact copies (§11.16): same DataSN, offset, F bit; ExpCmdSN/MaxCmdSN of today.
        let (buf, lun, first, stat_sn) = (buf.clone(), a.lun, a.first_data_sn, a.stat_sn());
        let picked: Vec<(u32, (u32, u32, bool))> = segs
            .iter()
            .enumerate()
            .map(|(i, &seg)| (first.wrapping_add(i as u32), seg))
            .filter(|&(sn, _)| serial::le(beg, sn) && serial::lt(sn, end))
            .collect();
        for (sn, seg) in picked {
            self.push_data_in_again(s.itt, lun, &buf, (sn, stat_sn), seg);
        }
    }

    /// A Data-In retransmission (not numbered: never kept).
    fn push_data_in_again(
        &mut self,
        itt: u32,
        lun: u64,
        buf: &Arc<SharedBuf>,
        (data_sn, stat_sn): (u32, u32),
        seg: (u32, u32, bool),
    ) {
        let (off, len, final_bit) = seg;
        let h = Header::DataIn(DataIn {
            final_bit,
            lun,
            itt,
            ttt: RESERVED_TAG,
            // Not meaningful without status (§11.7.4); the original carried the StatSN its
            // status then took.
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data_sn,
            buffer_offset: off,
            ..Default::default()
        });
        self.push_again(OutPdu {
            header: h,
            data: Payload::Shared {
                buf: buf.clone(),
                start: off as usize,
                len: len as usize,
            },
            header_digest: self.link.header_digest,
            data_digest: self.link.data_digest,
        });
    }

    /// R-Data SNACK (§11.16.3, resegmentation): every Data-In of the task again, cut for this
    /// connection's MaxRecvDataSegmentLength, then its status with the SNACK Tag (same StatSN).
    fn r_data_snack(&mut self, pdu: &RawPdu, s: SnackRequest) {
        let id = self.link.id;
        let (mrdsl, burst) = (
            self.link.params.initiator_mrdsl,
            self.link.params.max_burst_length,
        );
        let Some(a) = self.answers.get_mut(&s.itt).filter(|a| a.link == id) else {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        };
        // We never ask for DataACK, so nothing was acknowledged: BegRun and RunLength are 0.
        if s.beg_run != 0 || s.run_length != 0 {
            self.reject(&pdu.bhs, RejectReason::PROTOCOL_ERROR);
            return;
        }
        let mut status = a.status.clone();
        let (lun, first, stat_sn) = (a.lun, a.first_data_sn, a.stat_sn());
        let mut resent = None;
        if let Some((buf, segs)) = a.data.as_mut() {
            let end = segs.iter().map(|&(o, l, _)| o + l).max().unwrap_or(0);
            *segs = segments(0, end, mrdsl, burst);
            resent = Some((buf.clone(), segs.clone()));
        } else if a.status_has_data() {
            self.reject(&pdu.bhs, RejectReason::SNACK_REJECT);
            return;
        }
        let n = resent.as_ref().map_or(0, |(_, s)| s.len() as u32);
        if let Header::ScsiResponse(r) = &mut status.header {
            r.snack_tag = s.ttt;
            r.exp_data_sn = first.wrapping_add(n);
        }
        if let Some(a) = self.answers.get_mut(&s.itt) {
            a.status = status.clone();
        }
        if let Some((buf, segs)) = resent {
            for (i, seg) in segs.into_iter().enumerate() {
                let sn = first.wrapping_add(i as u32);
                self.push_data_in_again(s.itt, lun, &buf, (sn, stat_sn), seg);
            }
        }
        let p = self.again(&status);
        self.push_again(p);
    }

    /// Queue an R2T (RFC 7143 §11.8; it carries the next StatSN without taking it).
    pub(super) fn push_r2t(
        &mut self,
        lun: u64,
        itt: u32,
        ttt: u32,
        sn: u32,
        offset: u32,
        len: u32,
    ) {
        let h = Header::R2t(R2t {
            lun,
            itt,
            ttt,
            stat_sn: self.link.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            r2t_sn: sn,
            buffer_offset: offset,
            desired_len: len,
        });
        self.push(h, Payload::Empty);
    }

    /// ERL ≥ 1: a Data-Out of task `itt` was lost or came out of sequence (digest error, a
    /// gap after a dropped PDU, a sequence ending short). The rest of its sequence is dropped;
    /// when the sequence ends (F bit) a recovery R2T asks for what is missing (RFC 7143
    /// §7.3.2; DataPDUInOrder=Yes, so that is everything after the last good byte). Lost
    /// unsolicited data is asked for by the ordinary R2Ts. `false` if the PDU cannot be
    /// placed (no such sequence), or the task went through too many recoveries.
    pub(super) fn recover_data_out(&mut self, itt: u32, ttt: u32, final_bit: bool) -> bool {
        let id = self.link.id;
        let Some(t) = self.tasks.get_mut(&itt).filter(|t| t.link == id) else {
            return false;
        };
        let TaskPhase::Receiving(w) = &mut t.phase else {
            return false;
        };
        let fresh = if ttt == RESERVED_TAG {
            if w.unsolicited_done {
                return false;
            }
            !std::mem::replace(&mut w.unsolicited_damaged, true)
        } else {
            match w.r2ts.iter_mut().find(|r| r.ttt == ttt) {
                Some(r) => !std::mem::replace(&mut r.damaged, true),
                None => return false,
            }
        };
        if fresh {
            t.recoveries += 1;
            if t.recoveries > MAX_RECOVERIES {
                return false;
            }
        }
        if !final_bit {
            return true; // wait for the end of the sequence
        }
        if ttt == RESERVED_TAG {
            w.unsolicited_done = true;
            w.next_r2t_offset = w.buf.len() as u32;
            self.advance_task(itt);
            return true;
        }
        let new_ttt = self.alloc_ttt();
        let Some(t) = self.tasks.get_mut(&itt) else {
            return true;
        };
        let lun = t.lun;
        let TaskPhase::Receiving(w) = &mut t.phase else {
            return true;
        };
        let sn = w.r2t_sn;
        let Some(r) = w.r2ts.iter_mut().find(|r| r.ttt == ttt) else {
            return true;
        };
        r.ttt = new_ttt;
        r.sn = sn;
        r.offset += r.received;
        r.len -= r.received;
        r.received = 0;
        r.next_data_sn = 0;
        r.damaged = false;
        let (offset, len) = (r.offset, r.len);
        w.r2t_sn += 1;
        t.data_sn = w.r2t_sn;
        tracing::debug!(itt, offset, len, "recovery R2T");
        self.push_r2t(lun, itt, new_ttt, sn, offset, len);
        true
    }

    /// ERL ≥ 1, a PDU whose data digest failed (the Reject is sent): a Data-Out is asked for
    /// again (`recover_data_out`); a command is dropped, and the initiator retries it when it
    /// sees the CmdSN gap (RFC 7143 §7.8, §6.2.1), its unsolicited Data-Out dropped meanwhile;
    /// anything else needs nothing more.
    pub(super) fn recover_digest_error(&mut self, bhs: &[u8; 48]) {
        match Header::parse(bhs) {
            Ok(Header::DataOut(d)) => {
                let id = self.link.id;
                let known = self.tasks.get(&d.itt).is_some_and(|t| t.link == id);
                if known && !self.recover_data_out(d.itt, d.ttt, d.final_bit) {
                    // RFC 7143 §11.4.7.2: PROTOCOL SERVICE CRC ERROR.
                    self.fail_task(d.itt, &sense_fixed(0x0b, 0x47, 0x05));
                }
            }
            Ok(Header::ScsiCommand(c)) if !self.tasks.contains_key(&c.itt) => {
                self.remember_aborted_itt(c.itt);
            }
            _ => {}
        }
    }
}

impl Answer {
    /// Whether the task had Data-In (the SCSI Response's ExpDataSN counts them).
    fn status_has_data(&self) -> bool {
        match &self.status.header {
            Header::ScsiResponse(r) => r.exp_data_sn != self.first_data_sn,
            _ => false,
        }
    }
}

impl SessionCore {
    /// ErrorRecoveryLevel 2: the current connection failed (or is removed for recovery, or
    /// replaced): it closes, and its tasks wait for reassignment until the returned time
    /// (`None`: Time2Wait + Time2Retain is 0, so they are ended now).
    pub(crate) fn fail_link(&mut self, now: Instant, reason: &'static str) -> Option<Instant> {
        let id = self.link.id;
        // Its R2Ts will never be answered there: after reassignment the data still missing
        // is asked for again (RFC 7143 §6.2.2).
        for t in self.tasks.values_mut().filter(|t| t.link == id) {
            if let TaskPhase::Receiving(w) = &mut t.phase {
                w.r2ts.clear();
                w.unsolicited_done = true;
                w.unsolicited_damaged = false;
                w.next_r2t_offset = w.buf.len() as u32;
            }
        }
        let tasks = &self.tasks;
        self.budget_wait
            .retain(|i| tasks.get(i).is_none_or(|t| t.link != id));
        self.link.r2ts_out = 0;
        self.link.data_clock = None;
        self.close(reason);
        let p = &self.params;
        let keep = std::time::Duration::from_secs(u64::from(
            p.default_time2wait.saturating_add(p.default_time2retain),
        ));
        if keep.is_zero() {
            self.end_link_tasks();
            return None;
        }
        let until = now + keep;
        self.retain.insert(id, until);
        tracing::debug!(
            cid = self.cur,
            ?keep,
            "connection failed: tasks wait for reassignment"
        );
        Some(until)
    }

    /// When the current link's tasks stop waiting for reassignment, if they do.
    pub(crate) fn retained_until(&self) -> Option<Instant> {
        self.retain.get(&self.link.id).copied()
    }

    /// Whether connection `cid` failed and its tasks wait for reassignment.
    pub(super) fn retained_cid(&self, cid: u16) -> bool {
        let l = if self.cur == cid {
            Some(&self.link)
        } else {
            self.parked.get(&cid)
        };
        l.is_some_and(|l| self.retain.contains_key(&l.id))
    }

    /// Tasks whose Time2Retain is up are aborted without a response (RFC 7143 §6.1.2).
    pub(crate) fn expire(&mut self, now: Instant) {
        if self.retain.is_empty() {
            return;
        }
        let due: Vec<u64> = self
            .retain
            .iter()
            .filter(|&(_, &t)| t <= now)
            .map(|(&id, _)| id)
            .collect();
        if due.is_empty() {
            return;
        }
        for id in &due {
            self.retain.remove(id);
        }
        let mut ignored = HashSet::new();
        let n = self.abort_where(|t| due.contains(&t.link), &mut ignored);
        self.answers.retain(|_, a| !due.contains(&a.link));
        tracing::debug!(
            tasks = n,
            "Time2Retain expired: tasks of failed connections ended"
        );
        self.update_window();
    }

    /// Whether TASK REASSIGN may take task `itt` over (RFC 7143 §11.5.1, §11.6.1).
    pub(super) fn reassignable(&self, itt: u32) -> Result<(), TmfResponse> {
        let link = match (self.tasks.get(&itt), self.answers.get(&itt)) {
            (Some(t), _) => t.link,
            (None, Some(a)) => a.link,
            (None, None) => return Err(TmfResponse::TASK_DOES_NOT_EXIST),
        };
        if self.retain.contains_key(&link) {
            Ok(())
        } else {
            // Its connection is still up (or was never logged out for recovery).
            Err(TmfResponse::TASK_STILL_ALLEGIANT)
        }
    }

    /// TASK REASSIGN, once its response is out: task `itt` becomes allegiant to the current
    /// connection and goes on from where it stands (RFC 7143 §6.2.2, §11.5.6).
    pub(super) fn reassign(&mut self, itt: u32, exp_data_sn: u32) {
        let (cid, id) = (self.cur, self.link.id);
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.cid = cid;
            t.link = id;
            let tid = t.id;
            match &t.phase {
                // Asked for the data still missing.
                TaskPhase::Receiving(_) => self.advance_task(itt),
                // Its status will come here.
                TaskPhase::Executing => {
                    if let Some(e) = self.executing.get_mut(&tid) {
                        e.2 = cid;
                    }
                }
                TaskPhase::Answered(_) => {
                    let Some(mut task) = self.tasks.remove(&itt) else {
                        return;
                    };
                    let phase = std::mem::replace(&mut task.phase, TaskPhase::Executing);
                    if let TaskPhase::Answered(b) = phase {
                        let (outcome, grant) = *b;
                        self.send_response(itt, &task, outcome, grant);
                    }
                    self.update_window();
                }
            }
            return;
        }
        if let Some(a) = self.answers.remove(&itt) {
            self.resend_answer(itt, a, exp_data_sn);
        }
    }

    /// A task answered on a connection that failed before the initiator acknowledged it:
    /// its Data-In from ExpDataSN (0: all of it; RFC 7143 §11.5.6), cut for this connection,
    /// then its status with this connection's next StatSN.
    fn resend_answer(&mut self, itt: u32, a: Answer, exp_data_sn: u32) {
        let (mrdsl, burst) = (
            self.link.params.initiator_mrdsl,
            self.link.params.max_burst_length,
        );
        let first = a.first_data_sn;
        let mut next = first;
        let mut kept = None;
        if let Some((buf, segs)) = a.data {
            let n = segs.len() as u32;
            let end = segs.last().map_or(0, |&(o, l, _)| o + l);
            let from_sn = if exp_data_sn != 0
                && serial::in_window(exp_data_sn, first, first.wrapping_add(n))
            {
                exp_data_sn
            } else {
                first
            };
            let done = from_sn.wrapping_sub(first) as usize;
            let from_off = segs.get(done).map_or(end, |s| s.0);
            let fresh = segments(from_off, end, mrdsl, burst);
            for (i, &seg) in fresh.iter().enumerate() {
                self.push_data_in(itt, a.lun, &buf, from_sn.wrapping_add(i as u32), seg, None);
            }
            next = from_sn.wrapping_add(fresh.len() as u32);
            let mut all = segs[..done].to_vec();
            all.extend(fresh);
            kept = Some((buf, all));
        }
        let mut status = a.status;
        if let Header::ScsiResponse(r) = &mut status.header {
            r.stat_sn = self.link.stat_sn;
            r.exp_cmd_sn = self.exp_cmd_sn;
            r.max_cmd_sn = self.max_cmd_sn;
            r.exp_data_sn = next;
            r.snack_tag = 0;
        }
        self.link.stat_sn = self.link.stat_sn.wrapping_add(1);
        status.header_digest = self.link.header_digest;
        status.data_digest = self.link.data_digest;
        let copy = status.clone();
        self.push(status.header, status.data);
        self.keep_answer(itt, a.lun, first, kept, copy);
    }
}
