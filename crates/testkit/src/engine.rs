//! A scripted, sans-IO peer for `iscsi_proto::Connection`: the test plays both the initiator
//! (PDUs in through `handle_pdu`) and the driver (`accept_login`, `accept_join`, draining
//! `poll_transmit` and `poll_event`), as the daemon's connection task would.
//!
//! ```
//! use std::time::Instant;
//! use iscsi_proto::{conn::ConnConfig, Connection};
//! use testkit::engine::{self, Dir, LoginOpts};
//!
//! let (dir, now) = (Dir::new(engine::TARGET), Instant::now());
//! let mut c = Connection::new(ConnConfig::default(), now, 50);
//! let r = engine::login(&mut c, now, &dir, &LoginOpts::default(), 1);
//! assert!(c.is_full_feature());
//! assert_eq!(r.exp_cmd_sn, testkit::pdu::FIRST_CMD_SN);
//! ```

use std::time::Instant;

use iscsi_proto::{ConnEvent, Connection, Directory, LoginResult, OutPdu, SessionHandle};
use iscsi_wire::frame::RawPdu;
use iscsi_wire::{text, LoginRequest, Stage};

use crate::pdu::{self, Request};

/// The target the engine-level tests and fuzz targets log in to.
pub const TARGET: &str = "iqn.2026-11.io.ferrite:t";
/// The initiator name [`LoginOpts::default`] gives.
pub const INITIATOR: &str = "iqn.2026-11.test:fuzz";
/// The portal [`Dir::new`] lists a target at, with portal group tag 1.
pub const ADDRESS: &str = "127.0.0.1:3260,1";

/// A [`Directory`] answered from plain data: the targets a login may name (with an alias
/// each, or none), the portal group tag, and the SendTargets answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dir {
    pub tpg_tag: u16,
    /// (name, alias) of each target a login may name; anyone may log in to them.
    pub targets: Vec<(String, Option<String>)>,
    /// (target name, addresses "host:port,tag") as SendTargets lists them, in order. A
    /// `SendTargets=<name>` gets the entries of that name.
    pub send_targets: Vec<(String, Vec<String>)>,
}

impl Dir {
    /// One target without an alias behind portal group 1, listed at [`ADDRESS`].
    pub fn new(target: &str) -> Dir {
        Dir {
            tpg_tag: 1,
            targets: vec![(target.into(), None)],
            send_targets: vec![(target.into(), vec![ADDRESS.into()])],
        }
    }

    /// Give every target an alias (answered as TargetAlias at login).
    pub fn with_alias(mut self, alias: &str) -> Dir {
        for t in &mut self.targets {
            t.1 = Some(alias.into());
        }
        self
    }

    /// Answer `tag` as the portal group tag.
    pub fn with_tpg_tag(mut self, tag: u16) -> Dir {
        self.tpg_tag = tag;
        self
    }

    /// List one more target in SendTargets answers (a login may not name it).
    pub fn listing(mut self, target: &str, address: &str) -> Dir {
        self.send_targets
            .push((target.into(), vec![address.into()]));
        self
    }
}

impl Directory for Dir {
    fn tpg_tag(&self) -> u16 {
        self.tpg_tag
    }

    fn target(&self, name: &str, _initiator: &str) -> Option<Option<String>> {
        self.targets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, alias)| alias.clone())
    }

    fn send_targets(&self, _initiator: &str, filter: Option<&str>) -> Vec<(String, Vec<String>)> {
        self.send_targets
            .iter()
            .filter(|(n, _)| filter.is_none_or(|f| f == n))
            .cloned()
            .collect()
    }
}

/// One Login Request that goes from the operational stage straight to full feature phase
/// (T = 1, CSG 1, NSG 3), with these keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOpts {
    pub initiator: String,
    /// The TargetName; `None` for a discovery session (SessionType=Discovery instead).
    pub target: Option<String>,
    pub isid: u64,
    /// 0 for a new session (a leading login), else the session to join.
    pub tsih: u16,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// Sent after InitiatorName and TargetName (or SessionType), in this order.
    pub keys: Vec<(String, String)>,
}

impl Default for LoginOpts {
    /// A leading login of [`INITIATOR`] to [`TARGET`], CID 0, CmdSN [`pdu::FIRST_CMD_SN`].
    fn default() -> Self {
        LoginOpts {
            initiator: INITIATOR.into(),
            target: Some(TARGET.into()),
            isid: pdu::ISID,
            tsih: 0,
            cid: 0,
            cmd_sn: pdu::FIRST_CMD_SN,
            exp_stat_sn: 0,
            keys: Vec::new(),
        }
    }
}

impl LoginOpts {
    /// A leading login to a normal session with `target`.
    pub fn normal(target: &str) -> LoginOpts {
        LoginOpts {
            target: Some(target.into()),
            ..LoginOpts::default()
        }
    }

    /// A discovery session.
    pub fn discovery() -> LoginOpts {
        LoginOpts {
            target: None,
            ..LoginOpts::default()
        }
    }

    /// Join session `tsih` as connection `cid` (MC/S, RFC 7143 §6.3.3).
    pub fn join(self, tsih: u16, cid: u16) -> LoginOpts {
        LoginOpts { tsih, cid, ..self }
    }

    /// One more key, sent after those already there.
    pub fn key(mut self, key: &str, value: &str) -> LoginOpts {
        self.keys.push((key.into(), value.into()));
        self
    }

    /// Every key, in the order sent.
    pub fn all_keys(&self) -> Vec<(&str, &str)> {
        let mut v = vec![("InitiatorName", self.initiator.as_str())];
        match &self.target {
            Some(t) => v.push(("TargetName", t.as_str())),
            None => v.push(("SessionType", "Discovery")),
        }
        v.extend(self.keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        v
    }

    /// The Login Request's header.
    pub fn header(&self) -> LoginRequest {
        LoginRequest {
            isid: self.isid,
            tsih: self.tsih,
            cid: self.cid,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..pdu::login_request(Stage::Operational, Stage::FullFeature)
        }
    }

    /// The Login Request, framed.
    pub fn request(&self) -> RawPdu {
        self.header().raw(&text::encode(&self.all_keys()))
    }
}

/// Every PDU the connection has queued.
pub fn outputs(c: &mut Connection) -> Vec<OutPdu> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

/// Every event the connection has queued.
pub fn events(c: &mut Connection) -> Vec<ConnEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// [`outputs`], then [`events`].
pub fn drain(c: &mut Connection) -> (Vec<OutPdu>, Vec<ConnEvent>) {
    (outputs(c), events(c))
}

/// Send the Login Request of `opts` and return the `LoginComplete` the engine asks the driver
/// to decide on, without answering it; `None` if its first event is anything else. PDUs it
/// queued (a refusal) are dropped; later events stay queued.
pub fn try_request_login(
    c: &mut Connection,
    now: Instant,
    dir: &dyn Directory,
    opts: &LoginOpts,
) -> Option<LoginResult> {
    match send_login(c, now, dir, opts) {
        Some(ConnEvent::LoginComplete(r)) => Some(r),
        _ => None,
    }
}

/// [`try_request_login`] that must reach `LoginComplete`.
pub fn request_login(
    c: &mut Connection,
    now: Instant,
    dir: &dyn Directory,
    opts: &LoginOpts,
) -> LoginResult {
    match send_login(c, now, dir, opts) {
        Some(ConnEvent::LoginComplete(r)) => r,
        other => panic!("expected LoginComplete, got {other:?}"),
    }
}

/// The Login Request in, its PDUs dropped; the first event.
fn send_login(
    c: &mut Connection,
    now: Instant,
    dir: &dyn Directory,
    opts: &LoginOpts,
) -> Option<ConnEvent> {
    c.handle_pdu(now, opts.request(), dir);
    while c.poll_transmit().is_some() {}
    c.poll_event()
}

/// A leading login to full feature phase: the request, then `accept_login` with `tsih` as the
/// new session's TSIH; the Login Response and the `Framing` event are drained.
pub fn login(
    c: &mut Connection,
    now: Instant,
    dir: &dyn Directory,
    opts: &LoginOpts,
    tsih: u16,
) -> LoginResult {
    let r = request_login(c, now, dir, opts);
    c.accept_login(&r, tsih);
    let (out, ev) = drain(c);
    assert!(c.is_full_feature(), "login not accepted: {out:?} {ev:?}");
    r
}

/// A connection joining `session` (MC/S): the request with `opts.tsih` and `opts.cid`, then
/// `accept_join`; its Login Response and events are drained. A connection of the session with
/// the same CID is replaced (RFC 7143 §6.3.4).
pub fn login_join(
    c: &mut Connection,
    now: Instant,
    dir: &dyn Directory,
    opts: &LoginOpts,
    session: &SessionHandle,
) -> LoginResult {
    assert_ne!(opts.tsih, 0, "a join names the session's TSIH");
    let r = request_login(c, now, dir, opts);
    c.accept_join(&r, opts.tsih, session);
    let (out, ev) = drain(c);
    assert!(c.is_full_feature(), "join not accepted: {out:?} {ev:?}");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi_proto::conn::ConnConfig;
    use iscsi_proto::SessionKind;
    use iscsi_wire::{Header, LogoutReason};

    #[test]
    fn a_leading_login_and_a_join_share_one_session() {
        let now = Instant::now();
        let dir = Dir::new(TARGET);
        let mut cfg = ConnConfig::default();
        cfg.offer.max_connections = 2;
        let mut c0 = Connection::new(cfg.clone(), now, 50);
        let opts = LoginOpts::default().key("MaxConnections", "2");
        let r = login(&mut c0, now, &dir, &opts, 7);
        assert_eq!((r.kind, r.cid, r.tsih), (SessionKind::Normal, 0, 0));
        let session = c0.session().expect("a session");
        let mut c1 = Connection::new(cfg, now, 500);
        let r = login_join(
            &mut c1,
            now,
            &dir,
            &LoginOpts::default().join(7, 1),
            &session,
        );
        assert_eq!((r.tsih, r.cid), (7, 1));
        let mut cids = session.connections();
        cids.sort();
        assert_eq!(cids, vec![0, 1]);
        // Logging out connection 1 from connection 0 (RFC 7143 §11.14.1, reason 1).
        let lo = pdu::logout(LogoutReason::CLOSE_CONNECTION, 9, 1, r.exp_cmd_sn);
        c0.handle_pdu(now, lo.raw(&[]), &dir);
        let out = outputs(&mut c0);
        assert!(
            matches!(out.as_slice(), [o] if matches!(&o.header, Header::LogoutResponse(l) if l.response.0 == 0)),
            "{out:?}"
        );
    }

    #[test]
    fn discovery_login_and_send_targets() {
        let now = Instant::now();
        let dir = Dir::new(TARGET)
            .with_alias("a")
            .with_tpg_tag(3)
            .listing("iqn.2026-11.io.ferrite:u", "[::1]:3260,3");
        let mut c = Connection::new(ConnConfig::default(), now, 50);
        let r = login(&mut c, now, &dir, &LoginOpts::discovery(), 1);
        assert_eq!(r.kind, SessionKind::Discovery);
        let q = pdu::text_request(5, r.exp_cmd_sn).raw(b"SendTargets=All\0");
        c.handle_pdu(now, q, &dir);
        let out = outputs(&mut c);
        let answer = text::parse(out[0].data.as_slice()).unwrap();
        let names: Vec<&str> = answer
            .iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(names, [TARGET, "iqn.2026-11.io.ferrite:u"]);
        assert_eq!(dir.send_targets("i", Some(TARGET)).len(), 1);
        assert_eq!(dir.target(TARGET, "i"), Some(Some("a".into())));
        assert_eq!(dir.target("iqn.2026-11.io.ferrite:u", "i"), None);
    }
}
