//! A minimal iSCSI initiator over a plain `TcpStream`, written from RFC 7143 independently of the
//! daemon's own wire code, so the tests can speak byte-exact PDUs: log in (with or without CRC32C
//! header and data digests, with one-way or mutual CHAP, to a normal or a discovery session, or
//! joining an existing session by TSIH), WRITE(10) through R2T + Data-Out, READ(10) through
//! Data-In, REPORT LUNS and other commands on any LUN, SendTargets, log out — and misbehave on
//! purpose (half a PDU, vanish mid-transfer, corrupt a digest).
//!
//! It uses neither `iscsi-wire` nor `iscsi-proto` (the crate depends on them for the sans-IO
//! modules only): what it sends and checks must not share a bug with the target under test.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The target [`LoginOpts::default`] logs in to: the name the whole-system tests give their
/// daemon (`crates/ferrite/tests/common`'s `IQN`, which is checked to be the same).
pub const TARGET: &str = "iqn.2026-11.io.ferrite:itest";

pub const OP_NOP_OUT: u8 = 0x00;
pub const OP_SCSI_CMD: u8 = 0x01;
pub const OP_LOGIN_REQ: u8 = 0x03;
pub const OP_TEXT_REQ: u8 = 0x04;
pub const OP_DATA_OUT: u8 = 0x05;
pub const OP_LOGOUT_REQ: u8 = 0x06;
pub const OP_NOP_IN: u8 = 0x20;
pub const OP_SCSI_RSP: u8 = 0x21;
pub const OP_LOGIN_RSP: u8 = 0x23;
pub const OP_TEXT_RSP: u8 = 0x24;
pub const OP_DATA_IN: u8 = 0x25;
pub const OP_LOGOUT_RSP: u8 = 0x26;
pub const OP_R2T: u8 = 0x31;
pub const OP_REJECT: u8 = 0x3f;

/// CRC32C (Castagnoli), as RFC 7143 §13.1 uses for digests; sent least significant byte first.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn set_dsl(b: &mut [u8; 48], len: usize) {
    assert!(len < 1 << 24);
    b[5] = (len >> 16) as u8;
    b[6] = (len >> 8) as u8;
    b[7] = len as u8;
}

/// `key=value\0…`
pub fn text(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in keys {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

pub fn parse_text(data: &[u8]) -> HashMap<String, String> {
    parse_text_pairs(data).into_iter().collect()
}

/// `key=value\0…` in the order sent (keys may repeat, e.g. TargetAddress).
pub fn parse_text_pairs(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// RFC 7143 §6.1 hex-constant.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decode a `0x` hex-constant (an odd digit count has an implied leading zero).
pub fn unhex(v: &str) -> Option<Vec<u8>> {
    let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
    let h = if h.len() % 2 == 1 {
        format!("0{h}")
    } else {
        h.to_string()
    };
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect()
}

/// RFC 1994 §4.1 with MD5 (CHAP_A=5): MD5(identifier || secret || challenge).
pub fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

/// The 8-byte LUN field for `lun` (SAM-5 §4.7: peripheral device addressing below 256, flat
/// space addressing up to 16383).
pub fn lun_field(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        assert!(lun <= 0x3fff, "LUN {lun} needs extended addressing");
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    }
    b
}

/// The LUN in an 8-byte LUN field (peripheral or flat space addressing), as REPORT LUNS lists it.
pub fn lun_from_field(b: &[u8]) -> u64 {
    match b[0] >> 6 {
        0b00 => u64::from(b[1]),
        0b01 => (u64::from(b[0] & 0x3f) << 8) | u64::from(b[1]),
        _ => panic!("LUN field {b:02x?} uses an addressing method the tests do not expect"),
    }
}

/// One received PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn itt(&self) -> u32 {
        be32(&self.bhs, 16)
    }
}

/// A login request BHS (RFC 7143 §11.12).
pub fn login_bhs(
    csg: u8,
    nsg: u8,
    transit: bool,
    isid: [u8; 6],
    itt: u32,
    cmdsn: u32,
    exp_statsn: u32,
) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = 0x40 | OP_LOGIN_REQ; // immediate
    b[1] = if transit { 0x80 } else { 0 } | (csg & 3) << 2 | if transit { nsg & 3 } else { 0 };
    b[8..14].copy_from_slice(&isid);
    put32(&mut b, 16, itt);
    put32(&mut b, 24, cmdsn);
    put32(&mut b, 28, exp_statsn);
    b
}

/// A whole login request PDU (no digests exist during login), as bytes.
pub fn login_pdu(csg: u8, nsg: u8, transit: bool, isid: [u8; 6], keys: &[(&str, &str)]) -> Vec<u8> {
    let data = text(keys);
    let mut b = login_bhs(csg, nsg, transit, isid, 1, 1, 0);
    set_dsl(&mut b, data.len());
    let mut v = b.to_vec();
    v.extend_from_slice(&data);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

#[derive(Clone)]
pub struct LoginOpts<'a> {
    pub initiator: &'a str,
    pub target: &'a str,
    pub header_digest: bool,
    pub data_digest: bool,
    pub isid: [u8; 6],
    /// Authenticate with CHAP (AuthMethod=CHAP, CHAP_A=5) instead of AuthMethod=None.
    pub chap: Option<Chap>,
    /// A discovery session (SessionType=Discovery, no TargetName).
    pub discovery: bool,
    /// TSIH of the session to join; 0 (the default) asks for a new session.
    pub tsih: u16,
    pub cid: u16,
    /// MaxConnections offered by a leading login (default 1).
    pub max_connections: u32,
    /// ErrorRecoveryLevel offered (default 0).
    pub error_recovery_level: u32,
    /// DefaultTime2Retain offered (default 0: no connection recovery).
    pub time2retain: u32,
}

impl Default for LoginOpts<'_> {
    fn default() -> Self {
        LoginOpts {
            initiator: "iqn.2026-11.io.ferrite:test-initiator",
            target: TARGET,
            header_digest: false,
            data_digest: false,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            chap: None,
            discovery: false,
            tsih: 0,
            cid: 0,
            max_connections: 1,
            error_recovery_level: 0,
            time2retain: 0,
        }
    }
}

/// CHAP credentials for [`LoginOpts::chap`] (RFC 7143 §12.1.3).
#[derive(Clone, Debug, Default)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    /// Mutual CHAP: the name and secret the target must prove (its CHAP_N and CHAP_R are
    /// checked; a mismatch fails the login with [`LoginError::Other`]).
    pub target: Option<(String, String)>,
    /// Mutual CHAP with the target's own challenge handed back (a reflection attack).
    pub reflect: bool,
}

impl Chap {
    pub fn new(user: &str, secret: &str) -> Chap {
        Chap {
            user: user.into(),
            secret: secret.into(),
            ..Chap::default()
        }
    }

    pub fn mutual(user: &str, secret: &str, target_user: &str, target_secret: &str) -> Chap {
        Chap {
            target: Some((target_user.into(), target_secret.into())),
            ..Chap::new(user, secret)
        }
    }
}

/// Why a login did not reach full feature phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// The target answered with this non-zero status class and detail (RFC 7143 §11.13.5).
    Refused { class: u8, detail: u8 },
    /// Anything else (I/O, an unexpected answer, a target that failed mutual CHAP).
    Other(String),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Refused { class, detail } => write!(
                f,
                "login rejected: status class {class:#04x} detail {detail:#04x}"
            ),
            LoginError::Other(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for LoginError {
    fn from(e: io::Error) -> Self {
        LoginError::Other(e.to_string())
    }
}

/// What a SCSI command came back with.
#[derive(Debug, Clone)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    /// Sense data (without the 2-byte SenseLength), empty unless CHECK CONDITION.
    pub sense: Vec<u8>,
}

impl ScsiResult {
    /// The sense key of fixed-format sense data.
    pub fn sense_key(&self) -> Option<u8> {
        self.sense.get(2).map(|k| k & 0x0f)
    }
    /// ASC and ASCQ of fixed-format sense data.
    pub fn asc(&self) -> Option<(u8, u8)> {
        Some((*self.sense.get(12)?, *self.sense.get(13)?))
    }
}

/// The fields of an R2T PDU (RFC 7143 §11.8) an initiator answers.
#[derive(Clone, Copy, Debug)]
pub struct R2t {
    pub itt: u32,
    pub ttt: u32,
    pub offset: u32,
    pub len: u32,
}

impl R2t {
    pub fn of(p: &Pdu) -> R2t {
        R2t {
            itt: p.itt(),
            ttt: be32(&p.bhs, 20),
            offset: be32(&p.bhs, 40),
            len: be32(&p.bhs, 44),
        }
    }
}

/// A logged-in normal session on one connection.
pub struct Session {
    pub stream: TcpStream,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Keys the target answered in the operational stage.
    pub negotiated: HashMap<String, String>,
    /// Every key the target sent during login, in order (both stages).
    pub login_keys: Vec<(String, String)>,
    /// The TSIH the target gave the session in its final login response.
    pub tsih: u16,
    /// The LUN that SCSI commands address (0 unless set).
    pub lun: u64,
    isid: [u8; 6],
    login_tsih: u16,
    cid: u16,
    cmdsn: u32,
    exp_statsn: u32,
    next_itt: u32,
    /// The target's MaxRecvDataSegmentLength: the most we may put in one PDU.
    max_send: usize,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Session {
    /// Log in (to full feature phase) and clear the unit attentions of a new I_T nexus on LUN 0.
    pub fn login(addr: SocketAddr, o: &LoginOpts) -> io::Result<Session> {
        let mut s = Session::connect(addr, o).map_err(|e| err(e.to_string()))?;
        // A new I_T nexus starts with a unit attention (SAM-5 §5.14: power on / reset /
        // I_T nexus loss); collect it the way initiators do, with TEST UNIT READY.
        s.clear_unit_attentions().map_err(err)?;
        Ok(s)
    }

    /// Log in to full feature phase and stop there (no command sent). A refusal comes back as
    /// [`LoginError::Refused`] with the status bytes of the login response.
    pub fn connect(addr: SocketAddr, o: &LoginOpts) -> Result<Session, LoginError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Session::connect_on(stream, o)
    }

    /// [`Session::login`] over a connection the caller opened (its own connect timeout, or a
    /// socket made inside another network namespace).
    pub fn login_on(stream: TcpStream, o: &LoginOpts) -> io::Result<Session> {
        let mut s = Session::connect_on(stream, o).map_err(|e| err(e.to_string()))?;
        s.clear_unit_attentions().map_err(err)?;
        Ok(s)
    }

    /// [`Session::connect`] over a connection the caller opened (a read timeout it set is
    /// kept; 30 s otherwise).
    pub fn connect_on(stream: TcpStream, o: &LoginOpts) -> Result<Session, LoginError> {
        if stream.read_timeout()?.is_none() {
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        }
        stream.set_nodelay(true)?;
        let mut s = Session {
            stream,
            header_digest: false,
            data_digest: false,
            negotiated: HashMap::new(),
            login_keys: Vec::new(),
            tsih: 0,
            lun: 0,
            isid: o.isid,
            login_tsih: o.tsih,
            cid: o.cid,
            cmdsn: 1,
            exp_statsn: 0,
            next_itt: 0x100,
            max_send: 8192,
        };
        let mut first: Vec<(&str, &str)> = vec![("InitiatorName", o.initiator)];
        if o.discovery {
            first.push(("SessionType", "Discovery"));
        } else {
            first.push(("SessionType", "Normal"));
            first.push(("TargetName", o.target));
        }
        match &o.chap {
            None => {
                // Security stage → operational stage, no authentication.
                first.push(("AuthMethod", "None"));
                let r = s.login_step(0, 1, true, &first)?;
                if !(r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 1) {
                    // The target wants another security exchange with nothing more from us.
                    let r = s.login_step(0, 1, true, &[])?;
                    if !(r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 1) {
                        return Err(LoginError::Other(format!(
                            "target did not leave the security stage: {:02x?}",
                            &r.bhs[..4]
                        )));
                    }
                }
            }
            Some(chap) => s.chap_exchange(&first, chap)?,
        }
        let hd = if o.header_digest { "CRC32C" } else { "None" };
        let dd = if o.data_digest { "CRC32C" } else { "None" };
        let max_connections = o.max_connections.to_string();
        let erl = o.error_recovery_level.to_string();
        let retain = o.time2retain.to_string();
        let op = [
            ("HeaderDigest", hd),
            ("DataDigest", dd),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", erl.as_str()),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", retain.as_str()),
            ("MaxConnections", max_connections.as_str()),
        ];
        // A connection joining a session negotiates only its own keys (RFC 7143 §13: the
        // others are leading-only).
        let mut keys: &[(&str, &str)] = if o.tsih != 0 { &op[..3] } else { &op };
        for _ in 0..4 {
            let r = s.login_step(1, 3, true, keys)?;
            s.negotiated.extend(parse_text(&r.data));
            if r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 3 {
                s.header_digest = s
                    .negotiated
                    .get("HeaderDigest")
                    .is_some_and(|v| v == "CRC32C");
                s.data_digest = s
                    .negotiated
                    .get("DataDigest")
                    .is_some_and(|v| v == "CRC32C");
                if let Some(m) = s
                    .negotiated
                    .get("MaxRecvDataSegmentLength")
                    .and_then(|v| v.parse().ok())
                {
                    s.max_send = m;
                }
                s.tsih = u16::from_be_bytes([r.bhs[14], r.bhs[15]]);
                return Ok(s);
            }
            keys = &[];
        }
        Err(LoginError::Other(
            "target never reached full feature phase".into(),
        ))
    }

    /// The security stage with CHAP (RFC 7143 §12.1.3): AuthMethod, CHAP_A, then CHAP_N and
    /// CHAP_R (plus our own CHAP_I and CHAP_C for mutual CHAP) with T=1.
    fn chap_exchange(&mut self, first: &[(&str, &str)], chap: &Chap) -> Result<(), LoginError> {
        let other = |m: String| LoginError::Other(m);
        let mut keys = first.to_vec();
        keys.push(("AuthMethod", "CHAP"));
        let r = self.login_step(0, 1, false, &keys)?;
        let got = parse_text(&r.data);
        if got.get("AuthMethod").map(String::as_str) != Some("CHAP") {
            // No method agreed (AuthMethod=Reject): ask to leave the stage anyway, so that the
            // refusal's status shows (RFC 7143 §11.13.5: 0201).
            self.login_step(0, 1, true, &[])?;
            return Err(other(format!("target did not choose CHAP: {got:?}")));
        }
        let r = self.login_step(0, 1, false, &[("CHAP_A", "5")])?;
        let got = parse_text(&r.data);
        if got.get("CHAP_A").map(String::as_str) != Some("5") {
            return Err(other(format!("target did not choose MD5: {got:?}")));
        }
        let id: u8 = got
            .get("CHAP_I")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| other(format!("no CHAP_I: {got:?}")))?;
        let challenge = got
            .get("CHAP_C")
            .and_then(|v| unhex(v))
            .ok_or_else(|| other(format!("no CHAP_C: {got:?}")))?;
        let response = hex(&chap_md5(id, chap.secret.as_bytes(), &challenge));
        let my_id = 0x5au8;
        let my_challenge: Vec<u8> = if chap.reflect {
            challenge.clone()
        } else {
            (0u8..16)
                .map(|i| i.wrapping_mul(37).wrapping_add(11))
                .collect()
        };
        let my_id_s = my_id.to_string();
        let my_challenge_s = hex(&my_challenge);
        let mut keys = vec![
            ("CHAP_N", chap.user.as_str()),
            ("CHAP_R", response.as_str()),
        ];
        if chap.target.is_some() || chap.reflect {
            keys.push(("CHAP_I", &my_id_s));
            keys.push(("CHAP_C", &my_challenge_s));
        }
        let r = self.login_step(0, 1, true, &keys)?;
        if !(r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 1) {
            return Err(other(format!(
                "target did not leave the security stage after CHAP: {:02x?}",
                &r.bhs[..4]
            )));
        }
        if let Some((user, secret)) = &chap.target {
            let got = parse_text(&r.data);
            let want = chap_md5(my_id, secret.as_bytes(), &my_challenge);
            if got.get("CHAP_N") != Some(user) {
                return Err(other(format!(
                    "target answered CHAP_N {:?}",
                    got.get("CHAP_N")
                )));
            }
            if got.get("CHAP_R").and_then(|v| unhex(v)) != Some(want) {
                return Err(other(format!(
                    "target's CHAP_R {:?} is not MD5(I, secret, C)",
                    got.get("CHAP_R")
                )));
            }
        }
        Ok(())
    }

    fn login_step(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[(&str, &str)],
    ) -> Result<Pdu, LoginError> {
        let data = text(keys);
        let mut b = login_bhs(csg, nsg, transit, self.isid, 1, self.cmdsn, self.exp_statsn);
        b[14..16].copy_from_slice(&self.login_tsih.to_be_bytes());
        b[20..22].copy_from_slice(&self.cid.to_be_bytes());
        set_dsl(&mut b, data.len());
        self.send(&b, &data)?;
        let r = self.recv()?;
        if r.opcode() != OP_LOGIN_RSP {
            return Err(LoginError::Other(format!(
                "expected a login response, got opcode {:#04x}",
                r.opcode()
            )));
        }
        if r.bhs[36] != 0 {
            return Err(LoginError::Refused {
                class: r.bhs[36],
                detail: r.bhs[37],
            });
        }
        self.exp_statsn = be32(&r.bhs, 24).wrapping_add(1);
        self.login_keys.extend(parse_text_pairs(&r.data));
        Ok(r)
    }

    /// Send one PDU, with digests as negotiated.
    pub fn send(&mut self, bhs: &[u8; 48], data: &[u8]) -> io::Result<()> {
        let buf = self.encode(bhs, data);
        self.stream.write_all(&buf)
    }

    /// The bytes of one PDU, with digests as negotiated.
    pub fn encode(&self, bhs: &[u8; 48], data: &[u8]) -> Vec<u8> {
        let mut b = *bhs;
        set_dsl(&mut b, data.len());
        let mut buf = b.to_vec();
        if self.header_digest {
            buf.extend_from_slice(&crc32c(&b).to_le_bytes());
        }
        if !data.is_empty() {
            let start = buf.len();
            buf.extend_from_slice(data);
            buf.resize(start + data.len().next_multiple_of(4), 0);
            if self.data_digest {
                let d = crc32c(&buf[start..]);
                buf.extend_from_slice(&d.to_le_bytes());
            }
        }
        buf
    }

    /// Receive one PDU, checking its digests; NOP-In pings are answered and skipped.
    pub fn recv(&mut self) -> io::Result<Pdu> {
        loop {
            let mut bhs = [0u8; 48];
            self.stream.read_exact(&mut bhs)?;
            let ahs = bhs[4] as usize * 4;
            let mut ahs_buf = vec![0u8; ahs];
            self.stream.read_exact(&mut ahs_buf)?;
            if self.header_digest {
                let mut d = [0u8; 4];
                self.stream.read_exact(&mut d)?;
                let mut h = bhs.to_vec();
                h.extend_from_slice(&ahs_buf);
                if u32::from_le_bytes(d) != crc32c(&h) {
                    return Err(err(format!(
                        "bad header digest from target on opcode {:#04x}",
                        bhs[0] & 0x3f
                    )));
                }
            }
            let dsl = (bhs[5] as usize) << 16 | (bhs[6] as usize) << 8 | bhs[7] as usize;
            let mut data = vec![0u8; dsl.next_multiple_of(4)];
            self.stream.read_exact(&mut data)?;
            if dsl > 0 && self.data_digest {
                let mut d = [0u8; 4];
                self.stream.read_exact(&mut d)?;
                if u32::from_le_bytes(d) != crc32c(&data) {
                    return Err(err(format!(
                        "bad data digest from target on opcode {:#04x}",
                        bhs[0] & 0x3f
                    )));
                }
            }
            data.truncate(dsl);
            let p = Pdu { bhs, data };
            if p.opcode() == OP_NOP_IN && be32(&p.bhs, 20) != 0xffff_ffff {
                // RFC 7143 §11.19: a NOP-In with a valid TTT asks for a NOP-Out echoing it.
                let mut b = [0u8; 48];
                b[0] = 0x40 | OP_NOP_OUT;
                b[1] = 0x80;
                b[8..16].copy_from_slice(&p.bhs[8..16]);
                put32(&mut b, 16, 0xffff_ffff);
                b[20..24].copy_from_slice(&p.bhs[20..24]);
                put32(&mut b, 24, self.cmdsn);
                put32(&mut b, 28, self.exp_statsn);
                self.send(&b, &[])?;
                continue;
            }
            if p.opcode() == OP_NOP_IN {
                continue;
            }
            return Ok(p);
        }
    }

    /// A SCSI command BHS for LUN 0 with a fresh ITT and the next CmdSN (`cdb` up to 16 bytes).
    pub fn scsi_cmd_bhs(
        &mut self,
        cdb: &[u8],
        read: bool,
        write: bool,
        edtl: u32,
    ) -> ([u8; 48], u32) {
        let itt = self.next_itt;
        self.next_itt += 1;
        let mut b = [0u8; 48];
        b[0] = OP_SCSI_CMD;
        b[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1; // F, R, W, SIMPLE
        b[8..16].copy_from_slice(&lun_field(self.lun));
        put32(&mut b, 16, itt);
        put32(&mut b, 20, edtl);
        put32(&mut b, 24, self.cmdsn);
        put32(&mut b, 28, self.exp_statsn);
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        (b, itt)
    }

    fn check_status(&mut self, p: &Pdu, itt: u32) -> Result<(), String> {
        if p.itt() != itt {
            return Err(format!(
                "response for ITT {:#x}, expected {itt:#x}",
                p.itt()
            ));
        }
        self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
        let (response, status) = (p.bhs[2], p.bhs[3]);
        if response != 0 || status != 0 {
            return Err(format!(
                "SCSI response {response:#x} status {status:#x}, sense {:02x?}",
                p.data
            ));
        }
        Ok(())
    }

    /// TEST UNIT READY until it answers GOOD (at most a few times).
    pub fn clear_unit_attentions(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..8 {
            let (b, itt) = self.scsi_cmd_bhs(&[0u8; 6], false, false, 0);
            self.send(&b, &[])
                .map_err(|e| format!("send TEST UNIT READY: {e}"))?;
            let p = self.recv().map_err(|e| format!("TEST UNIT READY: {e}"))?;
            if p.opcode() != OP_SCSI_RSP {
                return Err(format!(
                    "TEST UNIT READY: unexpected opcode {:#04x}",
                    p.opcode()
                ));
            }
            match self.check_status(&p, itt) {
                Ok(()) => return Ok(()),
                // CHECK CONDITION with sense key UNIT ATTENTION: try again.
                Err(e) if p.bhs[3] == 0x02 && p.data.len() > 4 && p.data[4] & 0x0f == 0x06 => {
                    last = e
                }
                Err(e) => return Err(format!("TEST UNIT READY: {e}")),
            }
        }
        Err(format!("unit attentions never cleared: {last}"))
    }

    /// WRITE(10) `data` (a whole number of `block`-byte blocks) at `lba`, all data through R2T.
    pub fn write10(&mut self, lba: u32, data: &[u8], block: usize) -> Result<(), String> {
        let r = self.write10_result(lba, data, block)?;
        if r.status != 0 {
            return Err(format!(
                "SCSI response 0x0 status {:#x}, sense {:02x?}",
                r.status, r.sense
            ));
        }
        Ok(())
    }

    /// WRITE(10) as [`Session::write10`], returning the status and sense instead of failing on
    /// CHECK CONDITION.
    pub fn write10_result(
        &mut self,
        lba: u32,
        data: &[u8],
        block: usize,
    ) -> Result<ScsiResult, String> {
        assert!(data.len().is_multiple_of(block));
        let blocks = (data.len() / block) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.write_command(&cdb, data)
    }

    /// A command with data-out (`cdb` up to 16 bytes), all data through R2T; its status.
    pub fn write_command(&mut self, cdb: &[u8], data: &[u8]) -> Result<ScsiResult, String> {
        let itt = self.start_write_command(cdb, data)?;
        let p = self
            .recv()
            .map_err(|e| format!("command {:#04x}: {e}", cdb[0]))?;
        match p.opcode() {
            OP_SCSI_RSP => self.scsi_result(&p, itt, Vec::new()),
            op => Err(format!(
                "command {:#04x}: unexpected opcode {op:#04x}: {:02x?}",
                cdb[0],
                &p.bhs[..8]
            )),
        }
    }

    /// Send a command with data-out and answer its R2Ts until every byte is sent; returns its
    /// ITT without waiting for the response (the target answers only after the last byte).
    pub fn start_write_command(&mut self, cdb: &[u8], data: &[u8]) -> Result<u32, String> {
        let (b, itt) = self.scsi_cmd_bhs(cdb, false, true, data.len() as u32);
        self.send(&b, &[])
            .map_err(|e| format!("send command {:#04x}: {e}", cdb[0]))?;
        let mut total = 0;
        while total < data.len() {
            let p = self
                .recv()
                .map_err(|e| format!("command {:#04x}: {e}", cdb[0]))?;
            if p.opcode() != OP_R2T {
                return Err(format!(
                    "command {:#04x}: expected R2T, got opcode {:#04x}: {:02x?} {:02x?}",
                    cdb[0],
                    p.opcode(),
                    &p.bhs[..8],
                    p.data
                ));
            }
            let r = R2t::of(&p);
            let (off, len) = (r.offset as usize, r.len as usize);
            if off + len > data.len() {
                return Err(format!("R2T for {off}+{len} beyond {} bytes", data.len()));
            }
            self.answer_r2t(&r, &data[off..off + len], false)
                .map_err(|e| format!("Data-Out: {e}"))?;
            total += len;
        }
        Ok(itt)
    }

    /// Send the Data-Out PDUs that answer `r2t` with `data` (its whole desired length), in
    /// pieces of at most the target's MaxRecvDataSegmentLength. With `hold_last`, the last
    /// piece is not sent (the task then waits for it forever).
    pub fn answer_r2t(&mut self, r2t: &R2t, data: &[u8], hold_last: bool) -> io::Result<()> {
        let len = data.len();
        let mut sent = 0;
        let mut data_sn = 0u32;
        while sent < len {
            let n = (len - sent).min(self.max_send);
            if hold_last && sent + n == len {
                break;
            }
            let mut d = [0u8; 48];
            d[0] = OP_DATA_OUT;
            d[1] = if sent + n == len { 0x80 } else { 0 };
            put32(&mut d, 16, r2t.itt);
            put32(&mut d, 20, r2t.ttt);
            put32(&mut d, 28, self.exp_statsn);
            put32(&mut d, 36, data_sn);
            put32(&mut d, 40, r2t.offset + sent as u32);
            self.send(&d, &data[sent..sent + n])?;
            sent += n;
            data_sn += 1;
        }
        Ok(())
    }

    /// ABORT TASK (RFC 7143 §11.5) for the task `itt`, sent as an immediate command; returns
    /// the Task Management Function response code. Other PDUs arriving first are an error.
    pub fn abort_task(&mut self, itt: u32, ref_cmd_sn: u32) -> Result<u8, String> {
        self.tmf(0x01, itt, ref_cmd_sn)
    }

    /// A Task Management Function Request (RFC 7143 §11.5) for LUN `self.lun`, sent as an
    /// immediate command: `function` 1 ABORT TASK, 2 ABORT TASK SET, 3 CLEAR ACA, 4 CLEAR TASK
    /// SET, 5 LOGICAL UNIT RESET, 6 TARGET WARM RESET, 7 TARGET COLD RESET. Returns the
    /// response code; other PDUs arriving first are an error.
    pub fn tmf(&mut self, function: u8, itt: u32, ref_cmd_sn: u32) -> Result<u8, String> {
        let mut b = [0u8; 48];
        b[0] = 0x40 | 0x02; // immediate Task Management Function Request
        b[1] = 0x80 | function;
        b[8..16].copy_from_slice(&lun_field(self.lun));
        let tmf_itt = self.next_itt;
        self.next_itt += 1;
        put32(&mut b, 16, tmf_itt);
        put32(&mut b, 20, itt);
        put32(&mut b, 24, self.cmdsn);
        put32(&mut b, 28, self.exp_statsn);
        put32(&mut b, 32, ref_cmd_sn);
        self.send(&b, &[])
            .map_err(|e| format!("send TMF {function}: {e}"))?;
        let p = self.recv().map_err(|e| format!("TMF {function}: {e}"))?;
        if p.opcode() != 0x22 || p.itt() != tmf_itt {
            return Err(format!(
                "TMF {function}: got opcode {:#04x} ITT {:#x}: {:02x?}",
                p.opcode(),
                p.itt(),
                &p.bhs[..8]
            ));
        }
        self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
        Ok(p.bhs[2])
    }

    /// The ExpStatSN the next PDU will carry.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_statsn
    }

    /// Set the ExpStatSN the next PDU carries (what the initiator acknowledges).
    pub fn set_exp_stat_sn(&mut self, sn: u32) {
        self.exp_statsn = sn;
    }

    /// The CmdSN the next command will carry.
    pub fn cmd_sn(&self) -> u32 {
        self.cmdsn
    }

    /// Set the ITT the next task gets (a session's connections share one ITT space,
    /// RFC 7143 §11.2.1.8).
    pub fn set_next_itt(&mut self, itt: u32) {
        self.next_itt = itt;
    }

    /// Set the CmdSN the next command carries (a session's connections share one order).
    pub fn set_cmd_sn(&mut self, sn: u32) {
        self.cmdsn = sn;
    }

    /// Logout request (RFC 7143 §11.14) with `reason` (0 session, 1 connection `cid`) sent as
    /// an immediate command; returns the Logout Response's response code.
    pub fn logout_request(&mut self, reason: u8, cid: u16) -> Result<u8, String> {
        let mut b = [0u8; 48];
        b[0] = 0x40 | OP_LOGOUT_REQ;
        b[1] = 0x80 | reason;
        put32(&mut b, 16, 0x7ffe_0000 | u32::from(cid));
        b[20..22].copy_from_slice(&cid.to_be_bytes());
        put32(&mut b, 24, self.cmdsn);
        put32(&mut b, 28, self.exp_statsn);
        self.send(&b, &[])
            .map_err(|e| format!("send logout: {e}"))?;
        let p = self.recv().map_err(|e| format!("logout: {e}"))?;
        if p.opcode() != OP_LOGOUT_RSP {
            return Err(format!("logout answered with {:02x?}", &p.bhs[..4]));
        }
        self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
        Ok(p.bhs[2])
    }

    /// READ(10) `blocks` blocks at `lba`.
    pub fn read10(&mut self, lba: u32, blocks: u16, block: usize) -> Result<Vec<u8>, String> {
        let len = blocks as usize * block;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let (b, itt) = self.scsi_cmd_bhs(&cdb, true, false, len as u32);
        self.send(&b, &[])
            .map_err(|e| format!("send READ(10): {e}"))?;
        let mut buf = vec![0u8; len];
        let mut got = 0usize;
        loop {
            let p = self.recv().map_err(|e| format!("READ(10): {e}"))?;
            match p.opcode() {
                OP_DATA_IN => {
                    let off = be32(&p.bhs, 40) as usize;
                    if off + p.data.len() > len {
                        return Err(format!("Data-In at {off}+{} beyond {len}", p.data.len()));
                    }
                    buf[off..off + p.data.len()].copy_from_slice(&p.data);
                    got += p.data.len();
                    if p.bhs[1] & 0x01 != 0 {
                        // Status in the last Data-In.
                        self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
                        if p.bhs[3] != 0 {
                            return Err(format!("READ(10) status {:#x}", p.bhs[3]));
                        }
                        break;
                    }
                }
                OP_SCSI_RSP => {
                    self.check_status(&p, itt)?;
                    break;
                }
                op => {
                    return Err(format!(
                        "READ(10): unexpected opcode {op:#04x}: {:02x?}",
                        &p.bhs[..8]
                    ))
                }
            }
        }
        if got != len {
            return Err(format!("READ(10): {got} of {len} bytes arrived"));
        }
        Ok(buf)
    }

    /// The outcome in a SCSI Response PDU (RFC 7143 §11.4), with `data` gathered from Data-In.
    fn scsi_result(&mut self, p: &Pdu, itt: u32, data: Vec<u8>) -> Result<ScsiResult, String> {
        if p.itt() != itt {
            return Err(format!(
                "response for ITT {:#x}, expected {itt:#x}",
                p.itt()
            ));
        }
        self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
        if p.bhs[2] != 0 {
            return Err(format!("iSCSI response {:#x}", p.bhs[2]));
        }
        // The data segment of a CHECK CONDITION is SenseLength (2 bytes) + sense data.
        let sense = if p.data.len() >= 2 {
            let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
            p.data[2..(2 + n).min(p.data.len())].to_vec()
        } else {
            Vec::new()
        };
        Ok(ScsiResult {
            status: p.bhs[3],
            data,
            sense,
        })
    }

    /// A command without data-out (`cdb` up to 16 bytes), reading at most `alloc` bytes.
    pub fn command(&mut self, cdb: &[u8], alloc: u32) -> Result<ScsiResult, String> {
        let (b, itt) = self.scsi_cmd_bhs(cdb, alloc > 0, false, alloc);
        self.send(&b, &[])
            .map_err(|e| format!("send command {:#04x}: {e}", cdb[0]))?;
        let mut data = Vec::new();
        loop {
            let p = self
                .recv()
                .map_err(|e| format!("command {:#04x}: {e}", cdb[0]))?;
            match p.opcode() {
                OP_DATA_IN => {
                    let off = be32(&p.bhs, 40) as usize;
                    if off + p.data.len() > alloc as usize {
                        return Err(format!("Data-In at {off}+{} beyond {alloc}", p.data.len()));
                    }
                    if data.len() < off + p.data.len() {
                        data.resize(off + p.data.len(), 0);
                    }
                    data[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        // Status in the last Data-In.
                        self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
                        return Ok(ScsiResult {
                            status: p.bhs[3],
                            data,
                            sense: Vec::new(),
                        });
                    }
                }
                OP_SCSI_RSP => return self.scsi_result(&p, itt, data),
                op => {
                    return Err(format!(
                        "command {:#04x}: unexpected opcode {op:#04x}: {:02x?}",
                        cdb[0],
                        &p.bhs[..8]
                    ))
                }
            }
        }
    }

    /// REPORT LUNS (SPC-4 §6.33, SELECT REPORT 00h): the LUNs of this I_T nexus, ascending as
    /// listed. A unit attention (e.g. REPORTED LUNS DATA HAS CHANGED) is an error.
    pub fn report_luns(&mut self) -> Result<Vec<u64>, String> {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
        let r = self.command(&cdb, 4096)?;
        if r.status != 0 {
            return Err(format!(
                "REPORT LUNS status {:#x}, sense {:02x?}",
                r.status, r.sense
            ));
        }
        if r.data.len() < 8 {
            return Err(format!("REPORT LUNS: {} bytes", r.data.len()));
        }
        let len = be32(&r.data, 0) as usize;
        let list = &r.data[8..(8 + len).min(r.data.len())];
        Ok(list.chunks_exact(8).map(lun_from_field).collect())
    }

    /// A Text Request with `keys` (RFC 7143 §11.10), following the target's continuation
    /// (C bit / TTT) until the final response; returns every key of the answer, in order.
    pub fn text_request(&mut self, keys: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        let itt = self.next_itt;
        self.next_itt += 1;
        let mut data = text(keys);
        let mut ttt = 0xffff_ffffu32;
        let mut answer = Vec::new();
        for _ in 0..64 {
            let mut b = [0u8; 48];
            b[0] = OP_TEXT_REQ;
            b[1] = 0x80; // F
            put32(&mut b, 16, itt);
            put32(&mut b, 20, ttt);
            put32(&mut b, 24, self.cmdsn);
            put32(&mut b, 28, self.exp_statsn);
            self.cmdsn = self.cmdsn.wrapping_add(1);
            self.send(&b, &data)
                .map_err(|e| format!("send text request: {e}"))?;
            let p = self.recv().map_err(|e| format!("text request: {e}"))?;
            if p.opcode() != OP_TEXT_RSP || p.itt() != itt {
                return Err(format!("text request answered with {:02x?}", &p.bhs[..20]));
            }
            self.exp_statsn = be32(&p.bhs, 24).wrapping_add(1);
            answer.extend_from_slice(&p.data);
            if p.bhs[1] & 0x80 != 0 {
                return Ok(parse_text_pairs(&answer));
            }
            // More to come: an empty request carrying the target's TTT.
            ttt = be32(&p.bhs, 20);
            data = Vec::new();
        }
        Err("text response never ended".into())
    }

    /// `SendTargets=<what>` (RFC 7143 appendix C): TargetName and TargetAddress keys, in order.
    pub fn send_targets(&mut self, what: &str) -> Result<Vec<(String, String)>, String> {
        self.text_request(&[("SendTargets", what)])
    }

    /// Logout (close the session) and wait for the response.
    pub fn logout(mut self) -> Result<(), String> {
        let mut b = [0u8; 48];
        b[0] = 0x40 | OP_LOGOUT_REQ;
        b[1] = 0x80;
        put32(&mut b, 16, 0x7fff_0000);
        put32(&mut b, 24, self.cmdsn);
        put32(&mut b, 28, self.exp_statsn);
        self.send(&b, &[])
            .map_err(|e| format!("send logout: {e}"))?;
        let p = self.recv().map_err(|e| format!("logout: {e}"))?;
        if p.opcode() != OP_LOGOUT_RSP || p.bhs[2] != 0 {
            return Err(format!("logout answered with {:02x?}", &p.bhs[..4]));
        }
        Ok(())
    }
}
