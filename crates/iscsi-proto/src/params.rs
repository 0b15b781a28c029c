//! The declarative table of login/text keys (RFC 7143 §13) and the negotiation that it drives.
//!
//! Each key has a phase (may it appear in the security stage, the operational stage, full
//! feature phase), a scope (session-wide or per connection), whether only the leading login may
//! carry it, a value type with its range, a default, and a result function. [`Negotiator`]
//! answers an initiator's offers from that table and the target's own [`TargetOffer`].

use std::collections::HashSet;

/// Where a key may be used (RFC 7143 §13 "Use:").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// "IO": initialize only — login, either stage.
    InitializeOnly,
    /// "LO": leading connection's login only.
    LeadingOnly,
    /// "ALL": login and full feature phase.
    All,
    /// "FFPO": full feature phase only (SendTargets).
    FullFeatureOnly,
    /// Security stage only (AuthMethod and the CHAP keys).
    Security,
}

/// Session-wide or per-connection (RFC 7143 §13 "Scope:").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Session,
    Connection,
}

/// Value type and result function (RFC 7143 §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Boolean, result = OR of both sides.
    BoolOr,
    /// Boolean, result = AND of both sides.
    BoolAnd,
    /// Number in [min, max], result = the smaller of both sides.
    NumMin { min: u32, max: u32 },
    /// Number in [min, max], result = the larger of both sides.
    NumMax { min: u32, max: u32 },
    /// Each side declares its own value (no negotiation), numeric range.
    DeclNum { min: u32, max: u32 },
    /// Each side declares its own value, text.
    DeclText,
    /// Comma-separated list of choices; the responder picks the first it supports.
    List,
}

#[derive(Clone, Copy, Debug)]
pub struct KeyDef {
    pub name: &'static str,
    pub usage: Usage,
    pub scope: Scope,
    pub kind: Kind,
    pub default: &'static str,
}

const M24: u32 = (1 << 24) - 1;

/// RFC 7143 §13 (and §12.1 for AuthMethod), plus RFC 7144 §2 for iSCSIProtocolLevel.
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "AuthMethod",
        usage: Usage::Security,
        scope: Scope::Connection,
        kind: Kind::List,
        default: "None",
    },
    KeyDef {
        name: "HeaderDigest",
        usage: Usage::InitializeOnly,
        scope: Scope::Connection,
        kind: Kind::List,
        default: "None",
    },
    KeyDef {
        name: "DataDigest",
        usage: Usage::InitializeOnly,
        scope: Scope::Connection,
        kind: Kind::List,
        default: "None",
    },
    KeyDef {
        name: "MaxConnections",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 1, max: 65535 },
        default: "1",
    },
    KeyDef {
        name: "SendTargets",
        usage: Usage::FullFeatureOnly,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "",
    },
    KeyDef {
        name: "TargetName",
        usage: Usage::InitializeOnly,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "",
    },
    KeyDef {
        name: "InitiatorName",
        usage: Usage::InitializeOnly,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "",
    },
    KeyDef {
        name: "TargetAlias",
        usage: Usage::All,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "",
    },
    KeyDef {
        name: "InitiatorAlias",
        usage: Usage::All,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "",
    },
    KeyDef {
        name: "TargetAddress",
        usage: Usage::All,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "",
    },
    KeyDef {
        name: "TargetPortalGroupTag",
        usage: Usage::InitializeOnly,
        scope: Scope::Session,
        kind: Kind::DeclNum { min: 0, max: 65535 },
        default: "1",
    },
    KeyDef {
        name: "InitialR2T",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::BoolOr,
        default: "Yes",
    },
    KeyDef {
        name: "ImmediateData",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::BoolAnd,
        default: "Yes",
    },
    KeyDef {
        name: "MaxRecvDataSegmentLength",
        usage: Usage::All,
        scope: Scope::Connection,
        kind: Kind::DeclNum { min: 512, max: M24 },
        default: "8192",
    },
    KeyDef {
        name: "MaxBurstLength",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 512, max: M24 },
        default: "262144",
    },
    KeyDef {
        name: "FirstBurstLength",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 512, max: M24 },
        default: "65536",
    },
    KeyDef {
        name: "DefaultTime2Wait",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMax { min: 0, max: 3600 },
        default: "2",
    },
    KeyDef {
        name: "DefaultTime2Retain",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 0, max: 3600 },
        default: "20",
    },
    KeyDef {
        name: "MaxOutstandingR2T",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 1, max: 65535 },
        default: "1",
    },
    KeyDef {
        name: "DataPDUInOrder",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::BoolOr,
        default: "Yes",
    },
    KeyDef {
        name: "DataSequenceInOrder",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::BoolOr,
        default: "Yes",
    },
    KeyDef {
        name: "ErrorRecoveryLevel",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 0, max: 2 },
        default: "0",
    },
    KeyDef {
        name: "SessionType",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::DeclText,
        default: "Normal",
    },
    // RFC 7143 §13.25 dropped markers; RFC 7143 §13 keeps them answerable for RFC 3720 peers.
    KeyDef {
        name: "OFMarker",
        usage: Usage::InitializeOnly,
        scope: Scope::Connection,
        kind: Kind::BoolAnd,
        default: "No",
    },
    KeyDef {
        name: "IFMarker",
        usage: Usage::InitializeOnly,
        scope: Scope::Connection,
        kind: Kind::BoolAnd,
        default: "No",
    },
    KeyDef {
        name: "OFMarkInt",
        usage: Usage::InitializeOnly,
        scope: Scope::Connection,
        kind: Kind::NumMin { min: 1, max: 65535 },
        default: "2048",
    },
    KeyDef {
        name: "IFMarkInt",
        usage: Usage::InitializeOnly,
        scope: Scope::Connection,
        kind: Kind::NumMin { min: 1, max: 65535 },
        default: "2048",
    },
    KeyDef {
        name: "iSCSIProtocolLevel",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::NumMin { min: 0, max: 31 },
        default: "1",
    },
    KeyDef {
        name: "TaskReporting",
        usage: Usage::LeadingOnly,
        scope: Scope::Session,
        kind: Kind::List,
        default: "RFC3720",
    },
];

pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// What the target is willing to do; the operator's knobs for negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetOffer {
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
}

impl Default for TargetOffer {
    fn default() -> Self {
        TargetOffer {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 16,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            // RFC 7143 §7.1.5: every level (2: connection recovery, task reassignment).
            error_recovery_level: 2,
            allow_header_digest: true,
            allow_data_digest: true,
        }
    }
}

/// Operational parameters in force once login completes (RFC 7143 §13 defaults until changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the initiator will accept from us in one data segment.
    pub initiator_mrdsl: u32,
    /// What we accept from the initiator in one data segment.
    pub target_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262144,
            first_burst_length: 65536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// Why one key could not be answered with a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The key came twice in one login (RFC 7143 §6.2: login reject, initiator error).
    Repeated(String),
}

/// Parse an RFC 7143 §6.1 numerical value: decimal, or hex with 0x.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else {
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// Answers the initiator's keys during login (and text negotiation) from the table.
#[derive(Debug, Clone)]
pub struct Negotiator {
    pub offer: TargetOffer,
    pub result: Negotiated,
    seen: HashSet<String>,
    /// Whether the target has declared its MaxRecvDataSegmentLength yet.
    pub declared_mrdsl: bool,
    /// Whether FirstBurstLength was negotiated explicitly (else clamp our default).
    first_burst_set: bool,
}

impl Negotiator {
    pub fn new(offer: TargetOffer) -> Self {
        let result = Negotiated {
            target_mrdsl: 8192,
            ..Negotiated::default()
        };
        Negotiator {
            offer,
            result,
            seen: HashSet::new(),
            declared_mrdsl: false,
            first_burst_set: false,
        }
    }

    /// Answer one offered operational key. `Ok(None)` means no answer is sent (a declaration
    /// that needs none). Security keys and names are handled by the login engine, not here.
    pub fn answer(&mut self, key: &str, value: &str) -> Result<Option<String>, KeyError> {
        let Some(def) = lookup(key) else {
            // RFC 7143 §6.2: unknown keys (including X- and X# extension keys we do not implement)
            // are answered NotUnderstood.
            return Ok(Some("NotUnderstood".into()));
        };
        if !self.seen.insert(key.to_string()) && key != "TargetAddress" {
            return Err(KeyError::Repeated(key.to_string()));
        }
        // The initiator may answer our declarations with these; nothing to negotiate.
        if matches!(value, "NotUnderstood" | "Irrelevant" | "Reject") {
            return Ok(None);
        }
        let o = self.offer.clone();
        let r = &mut self.result;
        let ans: String = match key {
            "HeaderDigest" | "DataDigest" => {
                let allow = if key == "HeaderDigest" {
                    o.allow_header_digest
                } else {
                    o.allow_data_digest
                };
                // RFC 7143 §13.1: the responder picks the first value of the list it supports.
                let pick = value
                    .split(',')
                    .find(|v| *v == "None" || (*v == "CRC32C" && allow));
                match pick {
                    Some(p) => {
                        let on = p == "CRC32C";
                        if key == "HeaderDigest" {
                            r.header_digest = on
                        } else {
                            r.data_digest = on
                        }
                        p.to_string()
                    }
                    None => "Reject".into(),
                }
            }
            "TaskReporting" => {
                // RFC 7144 §2.2: we implement RFC 3720 reporting only.
                if value.split(',').any(|v| v == "RFC3720") {
                    "RFC3720".into()
                } else {
                    "Reject".into()
                }
            }
            "OFMarker" | "IFMarker" => match parse_bool(value) {
                Some(_) => "No".into(),
                None => "Reject".into(),
            },
            "OFMarkInt" | "IFMarkInt" => "Irrelevant".into(),
            "MaxRecvDataSegmentLength" => {
                let Kind::DeclNum { min, max } = def.kind else {
                    unreachable!()
                };
                match parse_number(value) {
                    Some(n) if n >= min as u64 => {
                        // RFC 7143 §13.12: declarative; an initiator may declare more than 2^24-1
                        // in theory, we never send more than the field allows.
                        r.initiator_mrdsl = n.min(max as u64) as u32;
                        if self.declared_mrdsl {
                            return Ok(None);
                        }
                        self.declared_mrdsl = true;
                        r.target_mrdsl = o.max_recv_data_segment_length;
                        o.max_recv_data_segment_length.to_string()
                    }
                    _ => "Reject".into(),
                }
            }
            _ => match def.kind {
                Kind::BoolOr | Kind::BoolAnd => {
                    let Some(theirs) = parse_bool(value) else {
                        return Ok(Some("Reject".into()));
                    };
                    let ours = match key {
                        "InitialR2T" => o.initial_r2t,
                        "ImmediateData" => o.immediate_data,
                        // We deliver data in order and ask for it in order.
                        _ => true,
                    };
                    let v = if def.kind == Kind::BoolOr {
                        theirs || ours
                    } else {
                        theirs && ours
                    };
                    match key {
                        "InitialR2T" => r.initial_r2t = v,
                        "ImmediateData" => r.immediate_data = v,
                        "DataPDUInOrder" => r.data_pdu_in_order = v,
                        "DataSequenceInOrder" => r.data_sequence_in_order = v,
                        _ => {}
                    }
                    yes_no(v).into()
                }
                Kind::NumMin { min, max } | Kind::NumMax { min, max } => {
                    let Some(n) = parse_number(value) else {
                        return Ok(Some("Reject".into()));
                    };
                    if n < min as u64 || n > max as u64 {
                        // RFC 7143 §6.2: an out-of-range offer is answered with Reject.
                        return Ok(Some("Reject".into()));
                    }
                    let n = n as u32;
                    let ours = match key {
                        "MaxConnections" => o.max_connections,
                        "MaxBurstLength" => o.max_burst_length,
                        "FirstBurstLength" => o.first_burst_length,
                        "DefaultTime2Wait" => o.default_time2wait,
                        "DefaultTime2Retain" => o.default_time2retain,
                        "MaxOutstandingR2T" => o.max_outstanding_r2t,
                        "ErrorRecoveryLevel" => o.error_recovery_level,
                        "iSCSIProtocolLevel" => 1,
                        _ => n,
                    };
                    let v = if matches!(def.kind, Kind::NumMin { .. }) {
                        n.min(ours)
                    } else {
                        n.max(ours)
                    };
                    match key {
                        "MaxConnections" => r.max_connections = v,
                        "MaxBurstLength" => r.max_burst_length = v,
                        "FirstBurstLength" => {
                            r.first_burst_length = v;
                            self.first_burst_set = true;
                        }
                        "DefaultTime2Wait" => r.default_time2wait = v,
                        "DefaultTime2Retain" => r.default_time2retain = v,
                        "MaxOutstandingR2T" => r.max_outstanding_r2t = v,
                        "ErrorRecoveryLevel" => r.error_recovery_level = v,
                        _ => {}
                    }
                    v.to_string()
                }
                // Declarations from the initiator (names, aliases) are taken by the login
                // engine; no answer.
                Kind::DeclText | Kind::DeclNum { .. } => return Ok(None),
                Kind::List => "Reject".into(),
            },
        };
        Ok(Some(ans))
    }

    /// Keys the target declares on its own in the operational stage if the initiator did not
    /// bring them up, so both sides agree on non-default values.
    pub fn target_declarations(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.result.target_mrdsl = self.offer.max_recv_data_segment_length;
            out.push((
                "MaxRecvDataSegmentLength".to_string(),
                self.offer.max_recv_data_segment_length.to_string(),
            ));
        }
        out
    }

    /// Final consistency of the negotiated values (called when login completes).
    pub fn finish(&mut self) -> Negotiated {
        let r = &mut self.result;
        if !self.first_burst_set {
            r.first_burst_length = r.first_burst_length.min(self.offer.first_burst_length);
        }
        // RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
        r.first_burst_length = r.first_burst_length.min(r.max_burst_length);
        r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Negotiator {
        Negotiator::new(TargetOffer::default())
    }

    #[test]
    fn table_has_unique_names_and_valid_defaults() {
        let mut names = HashSet::new();
        for k in KEYS {
            assert!(names.insert(k.name), "{} twice", k.name);
            match k.kind {
                Kind::NumMin { min, max }
                | Kind::NumMax { min, max }
                | Kind::DeclNum { min, max } => {
                    let d = parse_number(k.default).unwrap();
                    assert!(d >= min as u64 && d <= max as u64, "{}", k.name);
                }
                Kind::BoolAnd | Kind::BoolOr => assert!(parse_bool(k.default).is_some()),
                _ => {}
            }
        }
    }

    #[test]
    fn result_functions() {
        let mut g = n();
        assert_eq!(g.answer("InitialR2T", "No").unwrap().as_deref(), Some("No"));
        assert_eq!(
            g.answer("ImmediateData", "Yes").unwrap().as_deref(),
            Some("Yes")
        );
        assert_eq!(
            g.answer("MaxBurstLength", "16776192").unwrap().as_deref(),
            Some("1048576")
        );
        assert_eq!(
            g.answer("FirstBurstLength", "4096").unwrap().as_deref(),
            Some("4096")
        );
        assert_eq!(
            g.answer("DefaultTime2Wait", "0").unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(
            g.answer("DefaultTime2Retain", "0").unwrap().as_deref(),
            Some("0")
        );
        assert_eq!(
            g.answer("MaxOutstandingR2T", "1").unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(
            g.answer("ErrorRecoveryLevel", "2").unwrap().as_deref(),
            Some(
                TargetOffer::default()
                    .error_recovery_level
                    .to_string()
                    .as_str()
            )
        );
        assert_eq!(
            g.answer("HeaderDigest", "CRC32C,None").unwrap().as_deref(),
            Some("CRC32C")
        );
        assert_eq!(
            g.answer("DataDigest", "None,CRC32C").unwrap().as_deref(),
            Some("None")
        );
        assert_eq!(
            g.answer("MaxRecvDataSegmentLength", "65536")
                .unwrap()
                .as_deref(),
            Some("262144")
        );
        let r = g.finish();
        assert!(!r.initial_r2t && r.immediate_data && r.header_digest && !r.data_digest);
        assert_eq!((r.max_burst_length, r.first_burst_length), (1048576, 4096));
        assert_eq!((r.initiator_mrdsl, r.target_mrdsl), (65536, 262144));
        assert_eq!((r.default_time2wait, r.default_time2retain), (2, 0));
    }

    #[test]
    fn bad_values_and_unknown_keys() {
        let mut g = n();
        assert_eq!(
            g.answer("InitialR2T", "Maybe").unwrap().as_deref(),
            Some("Reject")
        );
        assert_eq!(
            g.answer("MaxBurstLength", "100").unwrap().as_deref(),
            Some("Reject")
        );
        assert_eq!(
            g.answer("MaxOutstandingR2T", "0x").unwrap().as_deref(),
            Some("Reject")
        );
        assert_eq!(
            g.answer("X-com.example.Foo", "1").unwrap().as_deref(),
            Some("NotUnderstood")
        );
        assert_eq!(
            g.answer("HeaderDigest", "MD5").unwrap().as_deref(),
            Some("Reject")
        );
        assert!(matches!(
            g.answer("InitialR2T", "Yes"),
            Err(KeyError::Repeated(_))
        ));
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut g = n();
        g.answer("MaxBurstLength", "8192").unwrap();
        let r = g.finish();
        assert_eq!(r.first_burst_length, 8192);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("123"), Some(123));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }
}
