//! A minimal iSCSI initiator over a plain `TcpStream`, written from RFC 7143 independently of the
//! daemon's own wire code, so the tests can speak byte-exact PDUs: log in (with or without CRC32C
//! header and data digests), WRITE(10) through R2T + Data-Out, READ(10) through Data-In, log out —
//! and misbehave on purpose (half a PDU, vanish mid-transfer, corrupt a digest).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const OP_NOP_OUT: u8 = 0x00;
pub const OP_SCSI_CMD: u8 = 0x01;
pub const OP_LOGIN_REQ: u8 = 0x03;
pub const OP_DATA_OUT: u8 = 0x05;
pub const OP_LOGOUT_REQ: u8 = 0x06;
pub const OP_NOP_IN: u8 = 0x20;
pub const OP_SCSI_RSP: u8 = 0x21;
pub const OP_LOGIN_RSP: u8 = 0x23;
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

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn put32(b: &mut [u8], at: usize, v: u32) {
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
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
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

pub struct LoginOpts<'a> {
    pub initiator: &'a str,
    pub target: &'a str,
    pub header_digest: bool,
    pub data_digest: bool,
    pub isid: [u8; 6],
}

impl Default for LoginOpts<'_> {
    fn default() -> Self {
        LoginOpts {
            initiator: "iqn.2026-11.io.ferrite:test-initiator",
            target: super::IQN,
            header_digest: false,
            data_digest: false,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
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
    pub fn login(addr: SocketAddr, o: &LoginOpts) -> io::Result<Session> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let mut s = Session {
            stream,
            header_digest: false,
            data_digest: false,
            negotiated: HashMap::new(),
            cmdsn: 1,
            exp_statsn: 0,
            next_itt: 0x100,
            max_send: 8192,
        };
        // Security stage → operational stage, no authentication.
        let sec = [
            ("InitiatorName", o.initiator),
            ("SessionType", "Normal"),
            ("TargetName", o.target),
            ("AuthMethod", "None"),
        ];
        let r = s.login_step(0, 1, o.isid, &sec)?;
        let mut stage = (r.bhs[1] >> 2) & 3;
        let mut nsg = r.bhs[1] & 3;
        let mut transited = r.bhs[1] & 0x80 != 0;
        if !(transited && nsg == 1) {
            // The target wants another security exchange with nothing more from us.
            let r = s.login_step(0, 1, o.isid, &[])?;
            (stage, nsg, transited) = ((r.bhs[1] >> 2) & 3, r.bhs[1] & 3, r.bhs[1] & 0x80 != 0);
            if !(transited && nsg == 1) {
                return Err(err(format!(
                    "target did not leave the security stage: {:02x?}",
                    &r.bhs[..4]
                )));
            }
        }
        let _ = stage;
        let hd = if o.header_digest { "CRC32C" } else { "None" };
        let dd = if o.data_digest { "CRC32C" } else { "None" };
        let op = [
            ("HeaderDigest", hd),
            ("DataDigest", dd),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
            ("MaxConnections", "1"),
        ];
        let mut keys: &[(&str, &str)] = &op;
        for _ in 0..4 {
            let r = s.login_step(1, 3, o.isid, keys)?;
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
                // A new I_T nexus starts with a unit attention (SAM-5 §5.14: power on / reset /
                // I_T nexus loss); collect it the way initiators do, with TEST UNIT READY.
                s.clear_unit_attentions().map_err(err)?;
                return Ok(s);
            }
            keys = &[];
        }
        Err(err("target never reached full feature phase"))
    }

    fn login_step(
        &mut self,
        csg: u8,
        nsg: u8,
        isid: [u8; 6],
        keys: &[(&str, &str)],
    ) -> io::Result<Pdu> {
        let data = text(keys);
        let mut b = login_bhs(csg, nsg, true, isid, 1, self.cmdsn, self.exp_statsn);
        set_dsl(&mut b, data.len());
        self.send(&b, &data)?;
        let r = self.recv()?;
        if r.opcode() != OP_LOGIN_RSP {
            return Err(err(format!(
                "expected a login response, got opcode {:#04x}",
                r.opcode()
            )));
        }
        if r.bhs[36] != 0 {
            return Err(err(format!(
                "login rejected: status class {:#04x} detail {:#04x} ({:?})",
                r.bhs[36],
                r.bhs[37],
                parse_text(&r.data)
            )));
        }
        self.exp_statsn = be32(&r.bhs, 24).wrapping_add(1);
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
        assert!(data.len().is_multiple_of(block));
        let blocks = (data.len() / block) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let (b, itt) = self.scsi_cmd_bhs(&cdb, false, true, data.len() as u32);
        self.send(&b, &[])
            .map_err(|e| format!("send WRITE(10): {e}"))?;
        loop {
            let p = self.recv().map_err(|e| format!("WRITE(10): {e}"))?;
            match p.opcode() {
                OP_R2T => {
                    let ttt = be32(&p.bhs, 20);
                    let off = be32(&p.bhs, 40) as usize;
                    let len = be32(&p.bhs, 44) as usize;
                    if off + len > data.len() {
                        return Err(format!("R2T for {off}+{len} beyond {} bytes", data.len()));
                    }
                    let mut sent = 0;
                    let mut data_sn = 0u32;
                    while sent < len {
                        let n = (len - sent).min(self.max_send);
                        let mut d = [0u8; 48];
                        d[0] = OP_DATA_OUT;
                        d[1] = if sent + n == len { 0x80 } else { 0 };
                        put32(&mut d, 16, itt);
                        put32(&mut d, 20, ttt);
                        put32(&mut d, 28, self.exp_statsn);
                        put32(&mut d, 36, data_sn);
                        put32(&mut d, 40, (off + sent) as u32);
                        self.send(&d, &data[off + sent..off + sent + n])
                            .map_err(|e| format!("Data-Out: {e}"))?;
                        sent += n;
                        data_sn += 1;
                    }
                }
                OP_SCSI_RSP => return self.check_status(&p, itt),
                op => {
                    return Err(format!(
                        "WRITE(10): unexpected opcode {op:#04x}: {:02x?}",
                        &p.bhs[..8]
                    ))
                }
            }
        }
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
