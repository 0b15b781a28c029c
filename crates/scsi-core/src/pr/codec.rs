//! Wire formats: the PERSISTENT RESERVE OUT CDB and parameter lists (SPC-4 §6.16), the
//! PERSISTENT RESERVE IN parameter data (SPC-4 §6.15), and iSCSI TransportIDs (SPC-4 §7.6.4.6).
//!
//! Parsing does every check that needs only the bytes (lengths, reserved codes, TransportID
//! syntax); the rules that need the reservation state are in `engine`.

use crate::cdb::{bad_cdb, bad_param, Bytes, Fail};
use crate::sense::SenseReason;

use super::state::PrState;

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutAction {
    Register,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAndAbort,
    RegisterAndIgnoreExistingKey,
    RegisterAndMove,
}

impl OutAction {
    pub fn from_code(sa: u8) -> Option<OutAction> {
        Some(match sa {
            0x00 => OutAction::Register,
            0x01 => OutAction::Reserve,
            0x02 => OutAction::Release,
            0x03 => OutAction::Clear,
            0x04 => OutAction::Preempt,
            0x05 => OutAction::PreemptAndAbort,
            0x06 => OutAction::RegisterAndIgnoreExistingKey,
            0x07 => OutAction::RegisterAndMove,
            // 08h REPLACE LOST RESERVATION is not offered (RLR_C = 0).
            _ => return None,
        })
    }
}

/// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1).
pub mod in_sa {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// SCOPE value LU_SCOPE, the only one (SPC-4 §6.16.3).
pub const LU_SCOPE: u8 = 0;

/// SPC-4 §7.6.4.1: PROTOCOL IDENTIFIER of iSCSI.
pub const PROTOCOL_ISCSI: u8 = 0x5;

/// Longest parameter list we take (SPEC_I_PT lists): enough for every registration we allow,
/// each with the longest TransportID.
pub const MAX_PARAMETER_LIST: usize = 256 * 1024;

/// RFC 7143 §4.2.7.1: at most 223 bytes.
pub const MAX_NAME_LEN: usize = 223;

/// An iSCSI TransportID: an initiator port (format 01b, name and ISID) or every initiator port
/// with that name (format 00b).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    pub name: String,
    pub isid: Option<u64>,
    /// Where it starts in the parameter list (for field pointers).
    pub offset: usize,
}

/// A decoded PERSISTENT RESERVE OUT command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRequest {
    pub action: OutAction,
    /// SCOPE and TYPE, CDB byte 2, undecoded (each service action decides whether it uses
    /// them).
    pub scope: u8,
    pub type_code: u8,
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    pub aptpl: bool,
    pub all_tg_pt: bool,
    pub spec_i_pt: bool,
    /// SPEC_I_PT = 1: the initiator ports to register as well.
    pub transport_ids: Vec<TransportId>,
    /// REGISTER AND MOVE: unregister the source I_T nexus afterwards.
    pub unreg: bool,
    /// REGISTER AND MOVE: relative target port identifier and initiator port of the
    /// destination.
    pub move_port: u16,
    pub move_to: Option<TransportId>,
}

fn length_error() -> Fail {
    SenseReason::ParameterListLengthError.into()
}

/// Decode a PERSISTENT RESERVE OUT CDB and its parameter list (SPC-4 §6.16).
pub fn parse_out(cdb: Bytes, data_out: Bytes) -> Result<OutRequest, Fail> {
    // The opcode table refuses service actions it does not list; this is for direct callers.
    let action = OutAction::from_code(cdb.u8(1) & 0x1F).ok_or_else(|| bad_cdb(1, Some(4)))?;
    let pll = cdb.be32(5) as usize;
    if pll > MAX_PARAMETER_LIST {
        return Err(bad_cdb(5, None));
    }
    let list = Bytes(data_out.slice(0, pll));
    // Fewer bytes arrived than the CDB announces: the list cannot be what it says it is.
    if list.len() < pll || pll < 24 {
        return Err(length_error());
    }
    let mut req = OutRequest {
        action,
        scope: cdb.u8(2) >> 4,
        type_code: cdb.u8(2) & 0x0F,
        key: list.be64(0),
        sa_key: list.be64(8),
        aptpl: false,
        all_tg_pt: false,
        spec_i_pt: false,
        transport_ids: Vec::new(),
        unreg: false,
        move_port: 0,
        move_to: None,
    };
    if action == OutAction::RegisterAndMove {
        // SPC-4 §6.16.4 (REGISTER AND MOVE parameter list): UNREG and APTPL in byte 17, RELATIVE TARGET PORT
        // IDENTIFIER in bytes 18..19, TRANSPORTID PARAMETER DATA LENGTH in bytes 20..23.
        req.unreg = list.bit(17, 1);
        req.aptpl = list.bit(17, 0);
        req.move_port = list.be16(18);
        let tpdl = list.be32(20) as usize;
        let end = 24usize.saturating_add(tpdl);
        if end > pll {
            return Err(length_error());
        }
        let (tid, _) = parse_transport_id(list, 24, end)?;
        req.move_to = Some(tid);
        return Ok(req);
    }
    // SPC-4 §6.16.3 (basic parameter list).
    req.spec_i_pt = list.bit(20, 3);
    req.all_tg_pt = list.bit(20, 2);
    req.aptpl = list.bit(20, 0);
    if req.spec_i_pt && action != OutAction::Register {
        // SPC-4 §6.16.3: SPEC_I_PT is valid only for REGISTER.
        return Err(bad_param(20, Some(3)));
    }
    if !req.spec_i_pt {
        // SPC-4 §6.16.3: with SPEC_I_PT = 0 the list is exactly 24 bytes.
        if pll != 24 {
            return Err(length_error());
        }
        return Ok(req);
    }
    if pll < 28 {
        return Err(length_error());
    }
    let tpdl = list.be32(24) as usize;
    let end = 28usize.saturating_add(tpdl);
    if end > pll {
        return Err(length_error());
    }
    let mut at = 28;
    while at < end {
        let (tid, len) = parse_transport_id(list, at, end)?;
        req.transport_ids.push(tid);
        at += len;
    }
    Ok(req)
}

/// One iSCSI TransportID at `at`, which must end by `end`; returns it and its length.
pub fn parse_transport_id(
    list: Bytes,
    at: usize,
    end: usize,
) -> Result<(TransportId, usize), Fail> {
    let field =
        |byte: usize, bit: Option<u8>| bad_param(u16::try_from(byte).unwrap_or(u16::MAX), bit);
    if at.saturating_add(4) > end {
        return Err(field(at, None));
    }
    let b0 = list.u8(at);
    // SPC-4 §7.6.4.1: PROTOCOL IDENTIFIER, bits 3..0; only iSCSI names iSCSI initiators.
    if b0 & 0x0F != PROTOCOL_ISCSI {
        return Err(field(at, Some(3)));
    }
    let format = b0 >> 6;
    if format > 1 || b0 & 0x30 != 0 {
        return Err(field(at, Some(7)));
    }
    // SPC-4 §7.6.4.6: ADDITIONAL LENGTH is at least 20 and a multiple of four.
    let additional = usize::from(list.be16(at + 2));
    let total = 4 + additional;
    if additional < 20 || additional % 4 != 0 || at.saturating_add(total) > end {
        return Err(field(at + 2, None));
    }
    let text = list.slice(at + 4, additional);
    let Some(nul) = text.iter().position(|&b| b == 0) else {
        return Err(field(at + 4, None));
    };
    let text = &text[..nul];
    let (name, isid) = if format == 0 {
        (text, None)
    } else {
        // Format 01b: "<name>,i,0x<ISID in hex>".
        let sep = b",i,0x";
        let Some(pos) = text
            .windows(sep.len())
            .rposition(|w| w.eq_ignore_ascii_case(sep))
        else {
            return Err(field(at + 4, None));
        };
        let hex = &text[pos + sep.len()..];
        let isid = parse_isid(hex).ok_or_else(|| field(at + 4 + pos + sep.len(), None))?;
        (&text[..pos], Some(isid))
    };
    if !valid_name(name) {
        return Err(field(at + 4, None));
    }
    let name = String::from_utf8_lossy(name).into_owned();
    Ok((
        TransportId {
            name,
            isid,
            offset: at,
        },
        total,
    ))
}

fn parse_isid(hex: &[u8]) -> Option<u64> {
    if hex.is_empty() || hex.len() > 12 {
        return None;
    }
    hex.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(16)?;
        Some((acc << 4) | u64::from(d))
    })
}

/// An iSCSI name as far as TransportIDs need: 1..=223 visible ASCII characters, no comma
/// (the separator of format 01b).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.iter().all(|&b| b.is_ascii_graphic() && b != b',')
}

/// Encode an iSCSI TransportID (SPC-4 §7.6.4.6): format 01b with an ISID, 00b without.
pub fn encode_transport_id(name: &str, isid: Option<u64>) -> Vec<u8> {
    let mut text = name.as_bytes().to_vec();
    if let Some(i) = isid {
        text.extend_from_slice(format!(",i,0x{:012x}", i & 0xFFFF_FFFF_FFFF).as_bytes());
    }
    text.push(0);
    // ADDITIONAL LENGTH: at least 20, a multiple of four; the name is null padded.
    let additional = text.len().next_multiple_of(4).max(20);
    text.resize(additional, 0);
    let format = if isid.is_some() { 0x40 } else { 0x00 };
    let mut out = vec![format | PROTOCOL_ISCSI, 0];
    out.extend_from_slice(&(additional as u16).to_be_bytes());
    out.extend_from_slice(&text);
    out
}

/// PRGENERATION and ADDITIONAL LENGTH, then `body` (SPC-4 §6.15.2, §6.15.3, §6.15.5): the
/// additional length counts the whole body, whatever the allocation length cuts off.
fn with_header(generation: u32, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend(body);
    out
}

/// READ KEYS parameter data (SPC-4 §6.15.2).
pub fn read_keys(st: &PrState) -> Vec<u8> {
    let body = st
        .registrations
        .iter()
        .flat_map(|r| r.key.to_be_bytes())
        .collect();
    with_header(st.generation, body)
}

/// READ RESERVATION parameter data (SPC-4 §6.15.3).
pub fn read_reservation(st: &PrState, name_only: bool) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(res) = &st.reservation {
        body.extend_from_slice(&st.holder_key(name_only).to_be_bytes());
        body.extend_from_slice(&[0; 4]); // obsolete (SCOPE-SPECIFIC ADDRESS)
        body.push(0);
        body.push((LU_SCOPE << 4) | res.ty().code());
        body.extend_from_slice(&[0; 2]); // obsolete
    }
    with_header(st.generation, body)
}

/// REPORT CAPABILITIES parameter data (SPC-4 §6.15.4).
pub fn report_capabilities(st: &PrState, ptpl_capable: bool) -> Vec<u8> {
    let mut out = vec![0u8; 8];
    out[1] = 8; // LENGTH
                // CRH: RESERVE/RELEASE follow §5.13.3; SIP_C: SPEC_I_PT; ATP_C: ALL_TG_PT; PTPL_C: APTPL
                // (only with a state store to keep it in).
    out[2] = 0x10 | 0x08 | 0x04 | u8::from(ptpl_capable);
    // TMV: the type mask is valid. ALLOW COMMANDS 001b: TEST UNIT READY is allowed through an
    // I_T nexus that does not hold a Write Exclusive or Exclusive Access reservation. PTPL_A:
    // the last APTPL received.
    out[3] = 0x80 | (0b001 << 4) | u8::from(st.aptpl);
    // PERSISTENT RESERVATION TYPE MASK: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
    out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    out[5] = 0x01;
    out
}

/// READ FULL STATUS parameter data (SPC-4 §6.15.5): one descriptor per registration.
pub fn read_full_status(st: &PrState, name_only: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, r) in st.registrations.iter().enumerate() {
        let holder = st.reg_is_holder(i, name_only);
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        // ALL_TG_PT: the descriptor stands for the initiator port on every target port.
        body.push((u8::from(r.who.port.is_none()) << 1) | u8::from(holder));
        let scope_type = match (&st.reservation, holder) {
            (Some(res), true) => (LU_SCOPE << 4) | res.ty().code(),
            _ => 0,
        };
        body.push(scope_type);
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&r.who.port.unwrap_or(0).to_be_bytes());
        // With the name-only option a registration stands for every ISID: format 00b.
        let isid = if name_only { None } else { r.who.isid };
        let tid = encode_transport_id(&r.who.initiator, isid);
        body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
        body.extend(tid);
    }
    with_header(st.generation, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(sa: u8, key: u64, sa_key: u64, flags: u8) -> (Vec<u8>, Vec<u8>) {
        let mut cdb = vec![0x5F, sa, 0x05, 0, 0, 0, 0, 0, 24, 0];
        cdb[2] = 0x05;
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        (cdb, p)
    }

    #[test]
    fn transport_id_round_trip() {
        let t = encode_transport_id("iqn.2026-11.io.ferrite:a", Some(0x23d0_0000_0001));
        assert_eq!(t[0], 0x45);
        assert_eq!(t.len() % 4, 0);
        assert_eq!(usize::from(u16::from_be_bytes([t[2], t[3]])), t.len() - 4);
        let text = b"iqn.2026-11.io.ferrite:a,i,0x23d000000001\0";
        assert_eq!(&t[4..4 + text.len()], text);
        let (p, len) = parse_transport_id(Bytes(&t), 0, t.len()).unwrap();
        assert_eq!(len, t.len());
        assert_eq!(p.name, "iqn.2026-11.io.ferrite:a");
        assert_eq!(p.isid, Some(0x23d0_0000_0001));

        let t = encode_transport_id("iqn.x", None);
        // Minimum size: 4 + 20.
        assert_eq!(t.len(), 24);
        assert_eq!(t[0], 0x05);
        let (p, _) = parse_transport_id(Bytes(&t), 0, t.len()).unwrap();
        assert_eq!((p.name.as_str(), p.isid), ("iqn.x", None));
    }

    #[test]
    fn transport_id_errors() {
        let good = encode_transport_id("iqn.x", Some(1));
        let err = |t: &[u8]| parse_transport_id(Bytes(t), 0, t.len()).unwrap_err();
        let mut t = good.clone();
        t[0] = 0x46; // SAS? protocol 6
        assert_eq!(err(&t), bad_param(0, Some(3)));
        let mut t = good.clone();
        t[0] = 0x85; // format 10b
        assert_eq!(err(&t), bad_param(0, Some(7)));
        let mut t = good.clone();
        t[3] = 19; // not a multiple of four
        assert_eq!(err(&t), bad_param(2, None));
        assert_eq!(err(&good[..10]), bad_param(2, None));
        assert_eq!(err(&good[..3]), bad_param(0, None));
        let mut t = good.clone();
        for b in &mut t[4..] {
            *b = b'a'; // no terminating null
        }
        assert_eq!(err(&t), bad_param(4, None));
        let mut t = encode_transport_id("iqn.x", None);
        t[0] = 0x45; // format 01b without ",i,0x"
        assert_eq!(err(&t), bad_param(4, None));
        let mut t = good;
        t[4] = 0; // empty name
        assert!(parse_transport_id(Bytes(&t), 0, t.len()).is_err());
    }

    #[test]
    fn out_lengths() {
        let (cdb, p) = basic(0x06, 0, 1, 0);
        let r = parse_out(Bytes(&cdb), Bytes(&p)).unwrap();
        assert_eq!(r.action, OutAction::RegisterAndIgnoreExistingKey);
        assert_eq!((r.sa_key, r.scope, r.type_code), (1, 0, 5));
        // Data shorter than PARAMETER LIST LENGTH.
        assert_eq!(
            parse_out(Bytes(&cdb), Bytes(&p[..20])).unwrap_err(),
            length_error()
        );
        // 28 bytes without SPEC_I_PT.
        let mut c = cdb.clone();
        c[8] = 28;
        let mut q = p.clone();
        q.extend_from_slice(&[0; 4]);
        assert_eq!(parse_out(Bytes(&c), Bytes(&q)).unwrap_err(), length_error());
        // SPEC_I_PT with anything but REGISTER.
        let (cdb, p) = basic(0x06, 0, 1, 0x08);
        assert_eq!(
            parse_out(Bytes(&cdb), Bytes(&p)).unwrap_err(),
            bad_param(20, Some(3))
        );
        // Unknown service action.
        let (cdb, p) = basic(0x08, 0, 1, 0);
        assert_eq!(
            parse_out(Bytes(&cdb), Bytes(&p)).unwrap_err(),
            bad_cdb(1, Some(4))
        );
    }

    #[test]
    fn spec_i_pt_list() {
        let (mut cdb, mut p) = basic(0x00, 0, 7, 0x08 | 0x01);
        let a = encode_transport_id("iqn.a", None);
        let b = encode_transport_id("iqn.b", Some(0x42));
        let tpdl = a.len() + b.len();
        p.extend_from_slice(&(tpdl as u32).to_be_bytes());
        p.extend_from_slice(&a);
        p.extend_from_slice(&b);
        cdb[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
        let r = parse_out(Bytes(&cdb), Bytes(&p)).unwrap();
        assert!(r.spec_i_pt && r.aptpl && !r.all_tg_pt);
        assert_eq!(r.transport_ids.len(), 2);
        assert_eq!(r.transport_ids[1].isid, Some(0x42));
        assert_eq!(r.transport_ids[1].offset, 28 + a.len());
        // TPDL larger than the list.
        let mut q = p.clone();
        q[24..28].copy_from_slice(&((tpdl + 4) as u32).to_be_bytes());
        assert_eq!(
            parse_out(Bytes(&cdb), Bytes(&q)).unwrap_err(),
            length_error()
        );
        // TPDL cutting a TransportID in half.
        let mut q = p;
        q[24..28].copy_from_slice(&((a.len() + 8) as u32).to_be_bytes());
        assert!(parse_out(Bytes(&cdb), Bytes(&q)).is_err());
    }

    #[test]
    fn register_and_move_list() {
        let t = encode_transport_id("iqn.dest", Some(9));
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&5u64.to_be_bytes());
        p[8..16].copy_from_slice(&6u64.to_be_bytes());
        p[17] = 0x03;
        p[18..20].copy_from_slice(&2u16.to_be_bytes());
        p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
        p.extend_from_slice(&t);
        let mut cdb = vec![0x5F, 0x07, 0x01, 0, 0, 0, 0, 0, 0, 0];
        cdb[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
        let r = parse_out(Bytes(&cdb), Bytes(&p)).unwrap();
        assert!(r.unreg && r.aptpl);
        assert_eq!(r.move_port, 2);
        assert_eq!(r.move_to.as_ref().unwrap().name, "iqn.dest");
        cdb[8] -= 4;
        assert_eq!(
            parse_out(Bytes(&cdb), Bytes(&p)).unwrap_err(),
            length_error()
        );
    }

    #[test]
    fn capabilities_layout() {
        let mut st = PrState::default();
        let c = report_capabilities(&st, true);
        assert_eq!(c, vec![0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0]);
        assert_eq!(report_capabilities(&st, false)[2], 0x1C);
        st.aptpl = true;
        assert_eq!(report_capabilities(&st, true)[3], 0x91);
    }
}
