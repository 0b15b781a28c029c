//! The login phase (RFC 7143 §6.3, §11.12, §11.13): stages, transitions, key negotiation and
//! the status class/detail of every refusal.
//!
//! ```text
//!   first Login Request ──► Security (CSG=0) ──T=1──► Operational (CSG=1) ──T=1──► FullFeature
//!                      └──────────────────► Operational ───────────────────T=1──┘
//!                      Security ─────────────────────────T=1, NSG=3─────────────► FullFeature
//! ```
//! The engine never allocates a TSIH or touches the session table: when the initiator asks to
//! enter full feature phase it returns [`LoginStep::Complete`], and the driver answers with
//! [`Login::accept`] (TSIH chosen, old session reinstated) or [`Login::refuse`].

use iscsi_wire::text;
use iscsi_wire::{Header, LoginRequest, LoginResponse, LoginStatus, Stage};

use crate::chap::{self, Algorithm, Secret};
use crate::params::{lookup, KeyError, Negotiated, Negotiator, TargetOffer, Usage};
use crate::{OutPdu, Payload};

/// Bound on login PDUs per connection (the peer controls how many it sends).
pub const MAX_LOGIN_PDUS: u32 = 64;

/// What the login engine may ask about the target configuration. Answers must come from
/// memory (a snapshot of the configuration), so the engine stays deterministic.
pub trait Directory {
    /// Tag of the portal group the connection arrived on (RFC 7143 §13.9).
    fn tpg_tag(&self) -> u16;
    /// The target's alias if `name` is a target reachable through this portal group, and the
    /// initiator may log in to it.
    fn target(&self, name: &str, initiator: &str) -> Option<Option<String>>;
    /// SendTargets answer (RFC 7143 appendix C): (target name, ["addr:port,tag", ...]).
    /// `filter` is `None` for `All`, else one target name.
    fn send_targets(&self, initiator: &str, filter: Option<&str>) -> Vec<(String, Vec<String>)>;
    /// The tag of the portal group `target` has on this portal (RFC 7143 §13.9).
    fn tpg_tag_of(&self, _target: Option<&str>) -> u16 {
        self.tpg_tag()
    }
    /// Whether `initiator` may log in to `target` through this portal.
    fn access(&self, target: &str, initiator: &str) -> Access {
        match self.target(target, initiator) {
            Some(alias) => Access::Allowed { alias },
            None => Access::NotFound,
        }
    }
    /// What authentication the initiator owes (`target` is `None` for discovery sessions).
    fn auth(&self, _initiator: &str, _target: Option<&str>) -> AuthPolicy {
        AuthPolicy::default()
    }
}

/// Answer to [`Directory::access`], each mapped to its login status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed {
        alias: Option<String>,
    },
    /// No such target behind this portal (0203).
    NotFound,
    /// The portal group is disabled (0301).
    Unavailable,
    /// The initiator is not in the target's access list (0202).
    Denied,
}

/// Authentication required of one initiator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// CHAP is mandatory (AuthMethod=None is refused).
    pub required: bool,
    /// What the initiator must present (CHAP_N / secret); `None` means CHAP cannot be used.
    pub initiator: Option<Secret>,
    /// What the target answers with when the initiator asks for mutual CHAP.
    pub target: Option<Secret>,
}

/// Where the security stage stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    /// No method chosen yet.
    Start,
    NoneAgreed,
    /// Every offered method was refused.
    Rejected,
    /// CHAP chosen; CHAP_A expected next.
    ChapChosen,
    /// Challenge sent; CHAP_N and CHAP_R expected next.
    ChapChallenged {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Authenticated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    Normal,
    Discovery,
}

/// Everything the driver needs to attach the connection to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResult {
    pub kind: SessionKind,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// Empty for discovery sessions.
    pub target_name: String,
    pub isid: u64,
    /// TSIH the initiator asked for: 0 for a new session, else the session to join.
    pub tsih: u16,
    pub cid: u16,
    pub params: Negotiated,
    /// Initial CmdSN (the first command's CmdSN will equal it, RFC 7143 §4.2.2.1).
    pub exp_cmd_sn: u32,
    /// The StatSN the first full-feature response carries.
    pub next_stat_sn: u32,
}

/// What one login request led to.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginStep {
    /// A response is queued; wait for the next request.
    Continue,
    /// The initiator asked to enter full feature phase and everything checks out; call
    /// [`Login::accept`] or [`Login::refuse`].
    Complete(LoginResult),
    /// A refusal is queued; close the connection once it is sent.
    Failed(LoginStatus),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the first request.
    Start,
    /// In a stage (CSG).
    In(Stage),
    /// Final response pending the driver's decision.
    Completing,
    Done,
}

/// Login engine for one connection.
#[derive(Debug)]
pub struct Login {
    state: State,
    neg: Negotiator,
    window: u32,
    pdus: u32,
    acc: text::Accumulator,
    // Identity gathered from the first request.
    isid: u64,
    tsih: u16,
    itt: u32,
    cid: u16,
    cmd_sn: u32,
    stat_sn: u32,
    initiator_name: Option<String>,
    initiator_alias: Option<String>,
    target_name: Option<String>,
    kind: SessionKind,
    auth: Auth,
    policy: AuthPolicy,
    /// Random bytes from the driver: CHAP identifier and challenge.
    random: [u8; 1 + chap::CHALLENGE_LEN],
    identity_checked: bool,
    sent_tpgt: bool,
    pending: Option<(LoginRequest, Vec<(String, String)>)>,
    out: Vec<OutPdu>,
}

fn lstatus(s: LoginStatus) -> LoginStep {
    LoginStep::Failed(s)
}

impl Login {
    /// The TargetName the initiator gave so far (none for discovery, or not yet).
    pub fn target_name(&self) -> Option<&str> {
        self.target_name.as_deref()
    }

    /// `window` is the command window (MaxCmdSN - ExpCmdSN + 1) the session will offer.
    /// `random` must come from a cryptographic source: it becomes the CHAP challenge.
    pub fn new(
        offer: TargetOffer,
        window: u32,
        initial_stat_sn: u32,
        random: [u8; 1 + chap::CHALLENGE_LEN],
    ) -> Self {
        Login {
            state: State::Start,
            neg: Negotiator::new(offer),
            window: window.max(1),
            pdus: 0,
            acc: text::Accumulator::default(),
            isid: 0,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 0,
            stat_sn: initial_stat_sn,
            initiator_name: None,
            initiator_alias: None,
            target_name: None,
            kind: SessionKind::Normal,
            auth: Auth::Start,
            policy: AuthPolicy::default(),
            random,
            identity_checked: false,
            sent_tpgt: false,
            pending: None,
            out: Vec::new(),
        }
    }

    /// Queued responses, oldest first.
    pub fn take_output(&mut self) -> Vec<OutPdu> {
        std::mem::take(&mut self.out)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Initiator name once known (for logs).
    pub fn initiator_name(&self) -> Option<&str> {
        self.initiator_name.as_deref()
    }

    fn respond(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        nsg: Stage,
        status: LoginStatus,
        tsih: u16,
        pairs: &[(String, String)],
    ) {
        let csg = match self.state {
            State::In(s) => s,
            _ => req.csg,
        };
        let h = LoginResponse {
            transit,
            cont: false,
            csg,
            nsg: if transit { nsg } else { Stage::Security },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih,
            itt: req.itt,
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.cmd_sn,
            max_cmd_sn: self.cmd_sn.wrapping_add(self.window - 1),
            status,
        };
        // RFC 7143 §11.13.4: each login response carries the next StatSN.
        self.stat_sn = self.stat_sn.wrapping_add(1);
        let data = text::encode(pairs);
        self.out.push(OutPdu {
            header: Header::LoginResponse(h),
            data: if data.is_empty() {
                Payload::Empty
            } else {
                Payload::Owned(data)
            },
            header_digest: false,
            data_digest: false,
        });
    }

    fn fail(&mut self, req: &LoginRequest, status: LoginStatus) -> LoginStep {
        // RFC 7143 §11.13.5: a failed login response carries no text, TSIH 0 in most cases.
        self.respond(req, false, Stage::Security, status, 0, &[]);
        self.state = State::Done;
        lstatus(status)
    }

    /// Handle one Login Request PDU.
    pub fn handle(&mut self, req: &LoginRequest, data: &[u8], dir: &dyn Directory) -> LoginStep {
        if matches!(self.state, State::Completing | State::Done) {
            return self.fail(req, LoginStatus::INITIATOR_ERROR);
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return self.fail(req, LoginStatus::INITIATOR_ERROR);
        }
        if self.state == State::Start {
            // RFC 7143 §11.12.4: we speak version 0x00 only.
            if req.version_min > 0 {
                return self.fail(req, LoginStatus::UNSUPPORTED_VERSION);
            }
            self.isid = req.isid;
            self.tsih = req.tsih;
            self.itt = req.itt;
            self.cid = req.cid;
            self.cmd_sn = req.cmd_sn;
            match req.csg {
                Stage::Security | Stage::Operational => self.state = State::In(req.csg),
                // RFC 7143 §6.3: login starts in one of the two negotiation stages.
                _ => return self.fail(req, LoginStatus::INITIATOR_ERROR),
            }
        } else {
            // RFC 7143 §6.3 and §11.12.5: ISID, TSIH and CID stay the same during a login.
            if req.isid != self.isid || req.tsih != self.tsih || req.cid != self.cid {
                return self.fail(req, LoginStatus::INITIATOR_ERROR);
            }
        }
        let State::In(stage) = self.state else {
            unreachable!()
        };
        if req.csg != stage {
            return self.fail(req, LoginStatus::INITIATOR_ERROR);
        }
        // RFC 7143 §11.12.2: T and C must not both be set.
        if req.transit && req.cont {
            return self.fail(req, LoginStatus::INITIATOR_ERROR);
        }
        if req.transit && (req.nsg <= req.csg || req.nsg == Stage::Reserved) {
            return self.fail(req, LoginStatus::INITIATOR_ERROR);
        }
        let whole = match self.acc.push(data, req.cont) {
            Ok(Some(t)) => t,
            Ok(None) => {
                // RFC 7143 §6.3: answer a continued request with an empty response.
                self.respond(req, false, Stage::Security, LoginStatus::SUCCESS, 0, &[]);
                return LoginStep::Continue;
            }
            Err(_) => return self.fail(req, LoginStatus::INITIATOR_ERROR),
        };
        let pairs = match text::parse(&whole) {
            Ok(p) => p,
            Err(_) => return self.fail(req, LoginStatus::INITIATOR_ERROR),
        };
        let mut answers: Vec<(String, String)> = Vec::new();
        let mut offered_auth: Option<String> = None;
        let mut chap_keys: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" => {
                    if self.initiator_name.is_some() {
                        return self.fail(req, LoginStatus::INITIATOR_ERROR);
                    }
                    if v.is_empty() || v.len() > 223 {
                        // RFC 7143 §4.2.7.1: names are at most 223 bytes.
                        return self.fail(req, LoginStatus::INITIATOR_ERROR);
                    }
                    self.initiator_name = Some(v.clone());
                }
                "InitiatorAlias" => self.initiator_alias = Some(v.clone()),
                "TargetName" => {
                    if self.target_name.is_some() {
                        return self.fail(req, LoginStatus::INITIATOR_ERROR);
                    }
                    self.target_name = Some(v.clone());
                }
                "SessionType" => match v.as_str() {
                    "Normal" => self.kind = SessionKind::Normal,
                    "Discovery" => self.kind = SessionKind::Discovery,
                    _ => return self.fail(req, LoginStatus::SESSION_TYPE_NOT_SUPPORTED),
                },
                "AuthMethod" => offered_auth = Some(v.clone()),
                _ => {
                    if k.starts_with("CHAP_") {
                        if chap_keys.iter().any(|(a, _)| a == k) {
                            return self.fail(req, LoginStatus::INITIATOR_ERROR);
                        }
                        chap_keys.push((k.clone(), v.clone()));
                        continue;
                    }
                    if let Some(def) = lookup(k) {
                        // RFC 7143 §13.4: SendTargets belongs to full feature phase;
                        // TargetAddress / TargetPortalGroupTag / TargetAlias are target
                        // declarations an initiator may not make.
                        if def.usage == Usage::FullFeatureOnly
                            || matches!(
                                k.as_str(),
                                "TargetAddress" | "TargetPortalGroupTag" | "TargetAlias"
                            )
                        {
                            answers.push((k.clone(), "Irrelevant".into()));
                            continue;
                        }
                        // RFC 7143 §13: leading-only keys on a connection joining a session.
                        if def.usage == Usage::LeadingOnly && self.tsih != 0 {
                            answers.push((k.clone(), "Irrelevant".into()));
                            continue;
                        }
                    }
                    match self.neg.answer(k, v) {
                        Ok(Some(a)) => answers.push((k.clone(), a)),
                        Ok(None) => {}
                        Err(KeyError::Repeated(_)) => {
                            return self.fail(req, LoginStatus::INITIATOR_ERROR)
                        }
                    }
                }
            }
        }
        // RFC 7143 §13.11: InitiatorName MUST be in the first login request.
        let Some(initiator) = self.initiator_name.clone() else {
            return self.fail(req, LoginStatus::MISSING_PARAMETER);
        };
        if !self.identity_checked {
            self.identity_checked = true;
            let target = match self.kind {
                SessionKind::Normal => {
                    // RFC 7143 §13.4: TargetName is required for a Normal session.
                    let Some(t) = self.target_name.clone() else {
                        return self.fail(req, LoginStatus::MISSING_PARAMETER);
                    };
                    match dir.access(&t, &initiator) {
                        Access::Allowed { alias } => {
                            if let Some(a) = alias {
                                answers.push(("TargetAlias".into(), a));
                            }
                        }
                        Access::NotFound => return self.fail(req, LoginStatus::NOT_FOUND),
                        Access::Unavailable => {
                            return self.fail(req, LoginStatus::SERVICE_UNAVAILABLE)
                        }
                        Access::Denied => {
                            return self.fail(req, LoginStatus::AUTHORIZATION_FAILURE)
                        }
                    }
                    Some(t)
                }
                SessionKind::Discovery => None,
            };
            self.policy = dir.auth(&initiator, target.as_deref());
        }
        // Whether this request moved the authentication exchange on (see the T=1 case below).
        let advanced_auth = offered_auth.is_some() || !chap_keys.is_empty();
        if let Some(offer) = offered_auth {
            if stage != Stage::Security || self.auth != Auth::Start {
                return self.fail(req, LoginStatus::INITIATOR_ERROR);
            }
            // RFC 7143 §12.1: the target picks the first method of the initiator's list that
            // it supports. CHAP needs credentials for this initiator; None is refused when
            // authentication is required.
            let pick = offer.split(',').find(|m| match *m {
                "CHAP" => self.policy.initiator.is_some(),
                "None" => !self.policy.required,
                _ => false,
            });
            let answer = match pick {
                Some("CHAP") => {
                    self.auth = Auth::ChapChosen;
                    "CHAP"
                }
                Some(_) => {
                    self.auth = Auth::NoneAgreed;
                    "None"
                }
                None => {
                    self.auth = Auth::Rejected;
                    "Reject"
                }
            };
            answers.push(("AuthMethod".into(), answer.into()));
        }
        if !chap_keys.is_empty() {
            if stage != Stage::Security {
                return self.fail(req, LoginStatus::INITIATOR_ERROR);
            }
            match self.chap_step(&chap_keys) {
                Ok(mut a) => answers.append(&mut a),
                Err(status) => return self.fail(req, status),
            }
        }
        // RFC 7143 §13.9: the target sends TargetPortalGroupTag in its first response.
        if !self.sent_tpgt {
            self.sent_tpgt = true;
            answers.push((
                "TargetPortalGroupTag".into(),
                dir.tpg_tag_of(self.target_name.as_deref()).to_string(),
            ));
        }
        if !req.transit {
            if stage == Stage::Operational {
                answers.extend(self.neg.target_declarations());
            }
            self.respond(
                req,
                false,
                Stage::Security,
                LoginStatus::SUCCESS,
                0,
                &answers,
            );
            return LoginStep::Continue;
        }
        // Leaving the security stage (or skipping it) needs a finished authentication
        // (RFC 7143 §6.3, §11.13.5 status 0201). An initiator that never offered AuthMethod
        // gets None when no authentication is required.
        let authenticated = match self.auth {
            Auth::NoneAgreed | Auth::Authenticated => true,
            Auth::Start => !self.policy.required,
            _ => false,
        };
        if !authenticated {
            // RFC 7143 appendix B: an initiator may ask to transit (T=1) in the request that
            // offers AuthMethod=CHAP or answers a CHAP step (libiscsi does); the target answers
            // with T=0 and the next CHAP keys until the exchange is finished.
            let in_progress = matches!(self.auth, Auth::ChapChosen | Auth::ChapChallenged { .. });
            if in_progress && advanced_auth {
                self.respond(
                    req,
                    false,
                    Stage::Security,
                    LoginStatus::SUCCESS,
                    0,
                    &answers,
                );
                return LoginStep::Continue;
            }
            return self.fail(req, LoginStatus::AUTHENTICATION_FAILURE);
        }
        match req.nsg {
            Stage::Operational => {
                self.respond(
                    req,
                    true,
                    Stage::Operational,
                    LoginStatus::SUCCESS,
                    0,
                    &answers,
                );
                self.state = State::In(Stage::Operational);
                LoginStep::Continue
            }
            _ => {
                answers.extend(self.neg.target_declarations());
                self.pending = Some((req.clone(), answers));
                self.state = State::Completing;
                LoginStep::Complete(LoginResult {
                    kind: self.kind,
                    initiator_name: initiator,
                    initiator_alias: self.initiator_alias.clone(),
                    target_name: self.target_name.clone().unwrap_or_default(),
                    isid: self.isid,
                    tsih: self.tsih,
                    cid: self.cid,
                    params: self.neg.finish(),
                    exp_cmd_sn: self.cmd_sn,
                    // The final response takes the current StatSN; FFP starts after it.
                    next_stat_sn: self.stat_sn.wrapping_add(1),
                })
            }
        }
    }
}

impl Login {
    /// One step of the CHAP exchange (RFC 7143 §12.1.3). Returns the keys to answer with.
    fn chap_step(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginStatus> {
        let get = |k: &str| keys.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        let fail = LoginStatus::AUTHENTICATION_FAILURE;
        match std::mem::replace(&mut self.auth, Auth::Rejected) {
            Auth::ChapChosen => {
                let offer = get("CHAP_A").ok_or(fail)?;
                if keys.len() != 1 {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
                // Prefer the strongest algorithm we share, in the initiator's order of listing
                // as RFC 7143 §12.1.3 asks (the first value we support).
                let alg = offer
                    .split(',')
                    .find_map(Algorithm::from_code)
                    .ok_or(fail)?;
                let id = self.random[0];
                let challenge = self.random[1..].to_vec();
                let answer = vec![
                    ("CHAP_A".into(), alg.code().to_string()),
                    ("CHAP_I".into(), id.to_string()),
                    ("CHAP_C".into(), chap::encode_hex(&challenge)),
                ];
                self.auth = Auth::ChapChallenged { alg, id, challenge };
                Ok(answer)
            }
            Auth::ChapChallenged { alg, id, challenge } => {
                let creds = self.policy.initiator.clone().ok_or(fail)?;
                let name = get("CHAP_N").ok_or(fail)?;
                let resp = get("CHAP_R").and_then(chap::decode_binary).ok_or(fail)?;
                let expected = alg.response(id, &creds.secret, &challenge);
                if name != creds.user || !chap::same(&resp, &expected) {
                    return Err(fail);
                }
                let mut answer = Vec::new();
                match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        // Mutual CHAP: the initiator challenges us back.
                        let target = self.policy.target.clone().ok_or(fail)?;
                        let i: u8 = i.parse().map_err(|_| fail)?;
                        let c = chap::decode_binary(c).ok_or(fail)?;
                        // RFC 7143 §12.1.3: refuse a challenge equal to ours (reflection),
                        // and the same secret in both directions.
                        if c.is_empty() || c == challenge || target.secret == creds.secret {
                            return Err(fail);
                        }
                        answer.push(("CHAP_N".into(), target.user.clone()));
                        answer.push((
                            "CHAP_R".into(),
                            chap::encode_hex(&alg.response(i, &target.secret, &c)),
                        ));
                    }
                    _ => return Err(fail),
                }
                self.auth = Auth::Authenticated;
                Ok(answer)
            }
            _ => Err(fail),
        }
    }

    /// Send the final response: the connection enters full feature phase with `tsih`.
    /// Digests, if negotiated, start with the next PDU (RFC 7143 §13.1).
    pub fn accept(&mut self, tsih: u16) {
        let Some((req, answers)) = self.pending.take() else {
            return;
        };
        self.respond(
            &req,
            true,
            Stage::FullFeature,
            LoginStatus::SUCCESS,
            tsih,
            &answers,
        );
        self.state = State::Done;
    }

    /// Refuse at the last step (session table says no).
    pub fn refuse(&mut self, status: LoginStatus) {
        let Some((req, _)) = self.pending.take() else {
            return;
        };
        self.fail(&req, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open to anyone, CHAP required with alice's credentials.
    struct Dir;
    impl Directory for Dir {
        fn tpg_tag(&self) -> u16 {
            1
        }
        fn target(&self, _t: &str, _i: &str) -> Option<Option<String>> {
            Some(None)
        }
        fn send_targets(&self, _i: &str, _f: Option<&str>) -> Vec<(String, Vec<String>)> {
            Vec::new()
        }
        fn auth(&self, _i: &str, _t: Option<&str>) -> AuthPolicy {
            AuthPolicy {
                required: true,
                initiator: Some(Secret {
                    user: "alice".into(),
                    secret: b"alice-secret-12".to_vec(),
                }),
                target: None,
            }
        }
    }

    fn req(transit: bool, nsg: Stage) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg: Stage::Security,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: 0x8000_0000_0001,
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    /// The response to one request: (transit, status, keys).
    fn step(
        l: &mut Login,
        r: &LoginRequest,
        keys: &[(&str, &str)],
    ) -> (bool, LoginStatus, Vec<(String, String)>) {
        let pairs: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.handle(r, &text::encode(&pairs), &Dir);
        let out = l.take_output();
        let Header::LoginResponse(h) = &out[0].header else {
            panic!("not a login response")
        };
        (
            h.transit,
            h.status,
            text::parse(out[0].data.as_slice()).unwrap(),
        )
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        p.iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn chap_offered_with_transit_set_continues_with_t0() {
        // libiscsi's sequence: AuthMethod=CHAP,None with T=1 NSG=1, then CHAP_A with T=0 NSG=1,
        // then CHAP_N/CHAP_R with T=1 (RFC 7143 appendix B).
        let mut l = Login::new(TargetOffer::default(), 8, 1, [7; 33]);
        let first = [
            ("InitiatorName", "iqn.2026-11.test:init"),
            ("TargetName", "iqn.2026-11.test:t"),
            ("SessionType", "Normal"),
            ("AuthMethod", "CHAP,None"),
        ];
        let (t, st, p) = step(&mut l, &req(true, Stage::Operational), &first);
        assert_eq!((t, st), (false, LoginStatus::SUCCESS));
        assert_eq!(get(&p, "AuthMethod"), "CHAP");
        let (t, st, p) = step(&mut l, &req(false, Stage::Operational), &[("CHAP_A", "5")]);
        assert_eq!((t, st), (false, LoginStatus::SUCCESS));
        let id: u8 = get(&p, "CHAP_I").parse().unwrap();
        let c = chap::decode_binary(get(&p, "CHAP_C")).unwrap();
        let r = chap::encode_hex(&Algorithm::Md5.response(id, b"alice-secret-12", &c));
        let (t, st, _) = step(
            &mut l,
            &req(true, Stage::Operational),
            &[("CHAP_N", "alice"), ("CHAP_R", &r)],
        );
        assert_eq!((t, st), (true, LoginStatus::SUCCESS));
    }

    #[test]
    fn transit_without_finishing_chap_is_authentication_failure() {
        let mut l = Login::new(TargetOffer::default(), 8, 1, [7; 33]);
        let first = [
            ("InitiatorName", "iqn.2026-11.test:init"),
            ("TargetName", "iqn.2026-11.test:t"),
            ("AuthMethod", "CHAP"),
        ];
        step(&mut l, &req(false, Stage::Operational), &first);
        step(&mut l, &req(false, Stage::Operational), &[("CHAP_A", "5")]);
        // T=1 with no CHAP_N/CHAP_R: the exchange did not move, so the stage cannot end.
        let (t, st, _) = step(&mut l, &req(true, Stage::Operational), &[]);
        assert_eq!((t, st), (false, LoginStatus::AUTHENTICATION_FAILURE));
    }
}
