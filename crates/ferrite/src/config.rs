//! The declarative configuration model: targets → portal groups → portals, and LUNs.
//! One loader (TOML file or command-line quick flags) and one validator; the running daemon is
//! built from a validated [`Config`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use scsi_core::{AccessState, AluaGroup};
use serde::{Deserialize, Serialize};

pub const DEMO_TARGET: &str = "iqn.2026-11.io.ferrite:demo";
pub const DEFAULT_PORTAL: &str = "127.0.0.1:3260";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub settings: Settings,
    /// Membership of a cluster of Ferrite nodes (state in etcd); none: a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
}

/// `[cluster]`: this node's name and the etcd it keeps the cluster's state in.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (letters, digits, `.`, `_`, `-`; 1-63).
    pub node: String,
    /// etcd client endpoints, `host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// TLS to etcd: the CA of etcd's server certificates and this node's client certificate
    /// and key (PEM). Required unless every endpoint is on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Seconds of the node's lease: a node that cannot renew it stops serving before it ends.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Where the cluster's keys live in etcd.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// Floating portal addresses (`[[cluster.portal]]`): the one live node that owns each
    /// (in etcd) holds the address and listens there (`portals`).
    #[serde(default, rename = "portal", skip_serializing_if = "Vec::is_empty")]
    pub portals: Vec<ClusterPortal>,
    /// Whether a portal goes back to a more preferred node when it rejoins.
    #[serde(default)]
    pub failback: Failback,
    /// A command that adds or removes a floating address instead of `ip addr` (and announces
    /// it): run as `HOOK... add|del ADDRESS/PREFIX_LEN INTERFACE`; exit status 0 means done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_hook: Option<Vec<String>>,
}

/// One floating portal address and the nodes that may hold it, most preferred first. The
/// address must be a portal of a portal group in the target configuration (identical on every
/// node), so it keeps its portal group tag wherever it moves.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterPortal {
    /// `IP:PORT`, as in the portal group.
    pub address: SocketAddr,
    /// The interface the address goes on.
    pub interface: String,
    /// The address's prefix length on that interface.
    pub prefix_len: u8,
    /// Who may hold it: the first live one (not drained) does.
    pub nodes: Vec<String>,
}

/// `failback`: `manual` (a portal stays with its holder until it fails or is moved) or `auto`
/// (a more preferred node takes it back when it is live again; the holder lets it go cleanly).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    #[default]
    Manual,
    Auto,
}

/// 4 s: a crashed node's partner takes over within the lease plus etcd's expiry check
/// (4.5 s at most), while a node rides out an etcd leader election (1-2 s) without fencing
/// itself (it fences 3 s after its last successful renewal).
fn default_lease_secs() -> u64 {
    4
}

fn default_cluster_prefix() -> String {
    "/ferrite/".into()
}

/// A node name: 1-63 letters, digits, `.`, `_` or `-`.
pub fn valid_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?}: 1-63 letters, digits, '.', '_' or '-'"))
    }
}

impl ClusterConfig {
    /// Every rule, with a message that names the culprit.
    pub fn validate(&self) -> Result<(), String> {
        valid_node_name(&self.node).map_err(|e| format!("cluster.node {e}"))?;
        if self.endpoints.is_empty() {
            return Err("cluster.endpoints: at least one etcd endpoint (host:port)".into());
        }
        let mut loopback_only = true;
        for e in &self.endpoints {
            let Some((host, port)) = e.rsplit_once(':') else {
                return Err(format!("cluster.endpoints: {e:?} is not host:port"));
            };
            if port.parse::<u16>().is_err() || host.is_empty() {
                return Err(format!("cluster.endpoints: {e:?} is not host:port"));
            }
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let lo = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            loopback_only &= lo;
        }
        match (&self.ca, &self.cert, &self.key) {
            (Some(_), Some(_), Some(_)) => {}
            (None, None, None) if loopback_only => {}
            (None, None, None) => {
                return Err(
                    "cluster: etcd endpoints off this host need TLS (ca, cert, key): the \
                     cluster's state decides who may write to shared LUNs"
                        .into(),
                )
            }
            _ => return Err("cluster: ca, cert and key go together".into()),
        }
        if !(2..=60).contains(&self.lease_secs) {
            return Err("cluster.lease_secs must be 2..60".into());
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err("cluster.prefix must start and end with '/'".into());
        }
        let mut seen = HashSet::new();
        for p in &self.portals {
            let a = p.address;
            if !seen.insert(a.ip()) {
                return Err(format!(
                    "cluster.portal {a}: the address is listed twice (one owner per address)"
                ));
            }
            if a.ip().is_unspecified() || a.ip().is_loopback() {
                return Err(format!(
                    "cluster.portal {a}: a floating address must be a real one"
                ));
            }
            let max = if a.is_ipv4() { 32 } else { 128 };
            if p.prefix_len == 0 || p.prefix_len > max {
                return Err(format!("cluster.portal {a}: prefix_len must be 1..{max}"));
            }
            let ok_if = !p.interface.is_empty()
                && p.interface.len() <= 15
                && p.interface
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
            if !ok_if {
                return Err(format!(
                    "cluster.portal {a}: interface {:?} is not an interface name",
                    p.interface
                ));
            }
            if p.nodes.is_empty() || p.nodes.len() > 64 {
                return Err(format!("cluster.portal {a}: nodes must list 1..64 nodes"));
            }
            let mut names = HashSet::new();
            for n in &p.nodes {
                if valid_node_name(n).is_err() || !names.insert(n) {
                    return Err(format!(
                        "cluster.portal {a}: node {n:?} is not a node name or is listed twice"
                    ));
                }
            }
        }
        if self.address_hook.as_ref().is_some_and(|h| h.is_empty()) {
            return Err("cluster.address_hook: name a program".into());
        }
        Ok(())
    }
}

/// Daemon-wide knobs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Seconds of idle time before a NOP-In ping (0 disables pings).
    pub nop_interval_secs: u64,
    /// Seconds a ping may stay unanswered.
    pub nop_timeout_secs: u64,
    /// Seconds a login may take.
    pub login_timeout_secs: u64,
    /// Seconds R2Ts may stay unanswered (no Data-Out at all) before the connection is dropped
    /// (0: never).
    pub data_out_timeout_secs: u64,
    /// Commands in flight per session (MaxCmdSN window).
    pub queue_depth: u32,
    /// Connections one session may have (MaxConnections offered, RFC 7143 §13.2).
    pub max_connections: u32,
    /// Highest ErrorRecoveryLevel offered (RFC 7143 §7.1.5, §13.20): 0 session recovery only,
    /// 1 adds SNACK and recovery R2Ts, 2 adds connection recovery (task reassignment).
    pub error_recovery_level: u32,
    /// DefaultTime2Wait / DefaultTime2Retain offered (RFC 7143 §13.15, §13.16): after a
    /// connection fails at ErrorRecoveryLevel 2, its tasks wait this long for reassignment.
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    /// Our MaxRecvDataSegmentLength.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Offer CRC32C header/data digests.
    pub digests: bool,
    /// SendTargets lists only enabled portal groups (LIO's `tpg_enabled_sendtargets`).
    pub tpg_enabled_sendtargets: bool,
    /// CHAP that discovery sessions must pass (none: discovery is open).
    pub discovery_chap: Option<ChapConfig>,
    /// Unix socket of the admin API (`ferrite admin`); none disables it.
    pub admin_socket: Option<PathBuf>,
    /// Where persistent reservations saved with APTPL live, one file per LUN (default: see
    /// `pr_cli::state_dir`).
    pub state_dir: Option<PathBuf>,
    /// Bytes of command data (write data-out, read data-in) the target buffers at once over
    /// all sessions (a size such as "512M"; default the smaller of 1 GiB and an eighth of the
    /// machine's memory).
    pub buffer_budget: Option<String>,
    /// Connections per portal that may be logging in at once; more are closed at accept.
    pub max_login_connections: u32,
    /// Where Prometheus metrics are served (`ADDR:PORT`, path `/metrics`); none: off.
    pub metrics_listen: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        let o = iscsi_proto::TargetOffer::default();
        Settings {
            nop_interval_secs: 30,
            nop_timeout_secs: 30,
            login_timeout_secs: 30,
            data_out_timeout_secs: 30,
            queue_depth: 128,
            max_connections: 8,
            error_recovery_level: o.error_recovery_level,
            default_time2wait: o.default_time2wait,
            default_time2retain: o.default_time2retain,
            max_recv_data_segment_length: o.max_recv_data_segment_length,
            max_burst_length: o.max_burst_length,
            first_burst_length: o.first_burst_length,
            max_outstanding_r2t: o.max_outstanding_r2t,
            initial_r2t: o.initial_r2t,
            immediate_data: o.immediate_data,
            digests: true,
            tpg_enabled_sendtargets: true,
            discovery_chap: None,
            admin_socket: None,
            state_dir: None,
            buffer_budget: None,
            max_login_connections: 256,
            metrics_listen: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
    /// Seconds an ALUA target port group spends transitioning when the operator changes its
    /// state (SPC-4 §5.16.2.5; reported as the IMPLICIT TRANSITION TIME). 0: at once.
    #[serde(
        default = "default_alua_transition",
        skip_serializing_if = "is_default_alua_transition"
    )]
    pub alua_transition_secs: u8,
    #[serde(default, rename = "portal_group")]
    pub portal_groups: Vec<PortalGroupConfig>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfig>,
    /// Node ACLs: which initiators may log in, and which LUNs each one sees.
    #[serde(default, rename = "acl")]
    pub acls: Vec<AclConfig>,
    /// ALUA target port groups (SPC-4 §5.16). None: one group (id 1) of every portal group,
    /// active/optimized.
    #[serde(default, rename = "alua_group", skip_serializing_if = "Vec::is_empty")]
    pub alua_groups: Vec<AluaGroupConfig>,
}

/// The default ALUA transition time: long enough for initiators to see the transitioning
/// state, short enough not to stall I/O noticeably.
pub const DEFAULT_ALUA_TRANSITION_SECS: u8 = 1;

fn default_alua_transition() -> u8 {
    DEFAULT_ALUA_TRANSITION_SECS
}

fn is_default_alua_transition(v: &u8) -> bool {
    *v == DEFAULT_ALUA_TRANSITION_SECS
}

/// One ALUA target port group: the portal groups (target ports) in it and their access state.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AluaGroupConfig {
    /// TARGET PORT GROUP, 1..65535, unique within the target (and the same on every node that
    /// serves the target).
    pub id: u16,
    /// Tags of the portal groups in it; every portal group of the target is in exactly one.
    pub portal_groups: Vec<u16>,
    /// active/optimized, active/non-optimized, standby, unavailable or offline.
    #[serde(with = "state_name")]
    pub state: AccessState,
    /// PREF: report the group as a preferred path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preferred: bool,
    /// The states the group can be in (default: all, transitioning included). Without
    /// "transitioning", its changes are immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_states: Option<Vec<String>>,
    /// In a cluster: the node whose ports these are. While that node is not a live member,
    /// the group is unavailable on every node (`cluster_alua`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl AluaGroupConfig {
    /// The *_SUP bits of `supported_states` (every state when absent).
    pub fn supported_bits(&self) -> Result<u8, String> {
        match &self.supported_states {
            None => Ok(scsi_core::ALUA_ALL_SUPPORTED),
            Some(list) => list.iter().try_fold(0u8, |bits, name| {
                AccessState::parse(name)
                    .map(|s| bits | s.sup_bit())
                    .ok_or_else(|| format!("unknown ALUA state {name:?}"))
            }),
        }
    }
}

impl TargetConfig {
    /// The ALUA groups as configuration entries: the configured ones, or the default group
    /// written out (so that its state can be changed and kept).
    pub fn alua_group_configs(&self) -> Vec<AluaGroupConfig> {
        if !self.alua_groups.is_empty() {
            return self.alua_groups.clone();
        }
        self.effective_alua_groups()
            .into_iter()
            .map(|g| AluaGroupConfig {
                id: g.id,
                portal_groups: g.ports,
                state: g.state,
                preferred: g.preferred,
                supported_states: None,
                node: None,
            })
            .collect()
    }

    /// The target's ALUA groups as the device gets them: the configured ones, or the default
    /// group of every portal group (id 1, active/optimized).
    pub fn effective_alua_groups(&self) -> Vec<AluaGroup> {
        if self.alua_groups.is_empty() {
            let ports = self.portal_groups.iter().map(|g| g.tag).collect();
            return vec![AluaGroup::default_for(ports)];
        }
        self.alua_groups
            .iter()
            .map(|g| AluaGroup {
                id: g.id,
                state: g.state,
                preferred: g.preferred,
                supported: g.supported_bits().unwrap_or(scsi_core::ALUA_ALL_SUPPORTED),
                // The relative target port identifier of a portal group is its tag (see
                // `runtime`).
                ports: g.portal_groups.clone(),
            })
            .collect()
    }
}

/// ALUA states in the configuration by name (`AccessState::name`).
mod state_name {
    use scsi_core::AccessState;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &AccessState, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<AccessState, D::Error> {
        let name = String::deserialize(de)?;
        AccessState::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown ALUA state {name:?} (active/optimized, active/non-optimized, \
                 standby, unavailable, offline)"
            ))
        })
    }
}

/// CHAP credentials (RFC 7143 §12.1.3). `user`/`secret` is what the initiator presents;
/// `mutual_user`/`mutual_secret` is what the target answers with when asked (mutual CHAP).
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

/// Secrets never reach logs: Debug shows only the user names.
impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .field("mutual_user", &self.mutual_user)
            .field(
                "mutual_secret",
                &self.mutual_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ChapConfig {
    fn validate(&self, what: &str) -> Result<(), String> {
        // RFC 7143 §12.1.3: secrets of at least 96 bits.
        let min = iscsi_proto::chap::MIN_SECRET_LEN;
        if self.user.is_empty() {
            return Err(format!("{what}: CHAP user is empty"));
        }
        if self.secret.len() < min {
            return Err(format!("{what}: CHAP secret shorter than {min} bytes"));
        }
        match (&self.mutual_user, &self.mutual_secret) {
            (None, None) => Ok(()),
            (Some(u), Some(sec)) => {
                if u.is_empty() || sec.len() < min {
                    return Err(format!(
                        "{what}: mutual CHAP user empty or secret shorter than {min} bytes"
                    ));
                }
                if *sec == self.secret {
                    return Err(format!(
                        "{what}: mutual CHAP secret must differ from the initiator secret"
                    ));
                }
                Ok(())
            }
            _ => Err(format!("{what}: mutual_user and mutual_secret go together")),
        }
    }
}

/// One initiator allowed to log in to a target.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    pub initiator: String,
    /// LUN mapping for this initiator; when absent it sees every LUN under its own number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub luns: Option<Vec<MappedLun>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapConfig>,
}

/// `mapped` is the LUN number the initiator sees; `lun` the target's LUN behind it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MappedLun {
    pub mapped: u64,
    pub lun: u64,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortalGroupConfig {
    pub tag: u16,
    pub portals: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Any initiator may log in through this group and sees every LUN (LIO's
    /// `generate_node_acls`). Defaults to on when the target has no ACLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_mode: Option<bool>,
    /// Initiators must authenticate with CHAP to log in through this group.
    #[serde(default)]
    pub authentication: bool,
    /// CHAP credentials for initiators without their own (demo mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapConfig>,
}

impl PortalGroupConfig {
    pub fn demo_mode(&self, t: &TargetConfig) -> bool {
        self.demo_mode.unwrap_or(t.acls.is_empty())
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub id: u64,
    /// `ram:SIZE`, `file:PATH[:SIZE]`, `block:PATH` or `rbd:POOL/IMAGE`.
    pub backstore: String,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default)]
    pub read_only: bool,
    /// Thin provisioning (UNMAP); defaults on for RAM and file backstores.
    #[serde(default)]
    pub thin: Option<bool>,
    #[serde(default)]
    pub serial: Option<String>,
    /// Removable medium: START STOP UNIT ejects and loads it (default false).
    #[serde(default)]
    pub removable: bool,
    /// Physical block size in bytes: block_size times a power of two (default block_size).
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    /// Persistent reservations match registrations by initiator name alone, whatever the ISID
    /// (for initiators that change it on every login; default false: by I_T nexus).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pr_match_initiator_name_only: bool,
    /// Most bytes per second a SANITIZE OVERWRITE writes, as a size (`"64M"`): leaves disk
    /// bandwidth to the other LUNs while a sanitize runs in the background (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize_rate: Option<String>,
    /// Encrypt every block (AES-256-XTS) under a data key wrapped with the key in `key_file`;
    /// offers SANITIZE CRYPTO ERASE (default: not encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// How an `rbd:` LUN reaches its Ceph cluster (default: as the `rbd` command does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephConfig>,
}

/// `ceph = { conf = "/etc/ceph/ceph.conf", client_id = "admin", keyring = "..." }`: the
/// client settings of an `rbd:` LUN. Every field is optional; the defaults are the `rbd`
/// command's: the configuration file `$CEPH_CONF` or `/etc/ceph/ceph.conf`, client
/// `client.admin`, the keyring that configuration names (or librados's search path).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CephConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<PathBuf>,
    /// Client id, with or without `client.` (`admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<PathBuf>,
    /// Seconds connecting and each cluster operation may take before it is an error (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// `encryption = { key_file = "/etc/ferrite/keys/lun0.key" }`: only the key file's path is
/// configuration (and is exported); the key stays in the file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// 32 bytes, raw or as 64 hexadecimal digits; mode 0600 or 0400.
    pub key_file: PathBuf,
}

fn default_block_size() -> u32 {
    512
}

/// A parsed backstore spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackstoreSpec {
    Ram { size: u64 },
    File { path: PathBuf, size: Option<u64> },
    Block { path: PathBuf },
    Rbd { pool: String, image: String },
}

/// Parse sizes like `1G`, `512M`, `4096`, `10GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

impl BackstoreSpec {
    pub fn parse(s: &str) -> Result<BackstoreSpec, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("backstore {s:?}: expected KIND:..."))?;
        match kind {
            "ram" => Ok(BackstoreSpec::Ram {
                size: parse_size(rest)?,
            }),
            "file" => {
                // file:PATH[:SIZE] — a trailing :SIZE only if it parses as a size.
                if let Some((p, sz)) = rest.rsplit_once(':') {
                    if let Ok(size) = parse_size(sz) {
                        return Ok(BackstoreSpec::File {
                            path: p.into(),
                            size: Some(size),
                        });
                    }
                }
                if rest.is_empty() {
                    return Err(format!("backstore {s:?}: missing path"));
                }
                Ok(BackstoreSpec::File {
                    path: rest.into(),
                    size: None,
                })
            }
            "block" => {
                if rest.is_empty() {
                    return Err(format!("backstore {s:?}: missing path"));
                }
                Ok(BackstoreSpec::Block { path: rest.into() })
            }
            "rbd" => match rest.split_once('/') {
                Some((pool, image))
                    if !pool.is_empty() && !image.is_empty() && !image.contains('/') =>
                {
                    Ok(BackstoreSpec::Rbd {
                        pool: pool.into(),
                        image: image.into(),
                    })
                }
                _ => Err(format!("backstore {s:?}: expected rbd:POOL/IMAGE")),
            },
            _ => Err(format!(
                "backstore {s:?}: kind must be ram, file, block or rbd"
            )),
        }
    }
}

/// The line of `text` that holds the last quoted value a validation message names (the most
/// specific culprit: `target "a" group 1: portal "b" ...` points at `b`), 1-based.
fn culprit_line(text: &str, message: &str) -> Option<usize> {
    let quoted: Vec<&str> = message
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty())
        .collect();
    quoted.iter().rev().find_map(|q| {
        text.lines()
            .position(|l| l.contains(&format!("\"{q}\"")))
            .map(|i| i + 1)
    })
}

/// RFC 7143 §4.2.7.2: iqn., eui. or naa. names.
pub fn valid_iscsi_name(n: &str) -> bool {
    let ok_chars = n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b));
    ok_chars
        && n.len() <= 223
        && (n.starts_with("iqn.") || n.starts_with("eui.") || n.starts_with("naa."))
}

impl Config {
    /// The zero-config demo: one target, one RAM LUN of 1 GiB, on 127.0.0.1:3260.
    pub fn demo() -> Config {
        Config {
            settings: Settings::default(),
            cluster: None,
            targets: vec![TargetConfig {
                name: DEMO_TARGET.into(),
                alias: Some("ferrite-demo".into()),
                portal_groups: vec![PortalGroupConfig {
                    tag: 1,
                    portals: vec![DEFAULT_PORTAL.into()],
                    enabled: true,
                    demo_mode: Some(true),
                    authentication: false,
                    chap: None,
                }],
                luns: vec![LunConfig {
                    id: 0,
                    backstore: "ram:1G".into(),
                    block_size: 512,
                    read_only: false,
                    thin: None,
                    serial: None,
                    removable: false,
                    physical_block_size: None,
                    pr_match_initiator_name_only: false,
                    sanitize_rate: None,
                    encryption: None,
                    ceph: None,
                }],
                acls: Vec::new(),
                alua_groups: Vec::new(),
                alua_transition_secs: DEFAULT_ALUA_TRANSITION_SECS,
            }],
        }
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        cfg.validate().map_err(|e| match culprit_line(&text, &e) {
            Some(line) => format!("{}:{line}: {e}", path.display()),
            None => format!("{}: {e}", path.display()),
        })?;
        Ok(cfg)
    }

    /// Every rule the model has, with a message that names the culprit.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("no target configured".into());
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
            // A floating address keeps the portal group tag the target configuration gives it.
            for p in &c.portals {
                let listed = self.targets.iter().any(|t| {
                    t.portal_groups.iter().any(|g| {
                        g.portals
                            .iter()
                            .any(|x| x.parse::<SocketAddr>().is_ok_and(|x| x == p.address))
                    })
                });
                if !listed {
                    return Err(format!(
                        "cluster.portal {}: no portal group lists this portal",
                        p.address
                    ));
                }
            }
        }
        // An ALUA group bound to a node goes unavailable with it (`cluster_alua`); a floating
        // portal moves to a partner instead, so its group must stay served: never both.
        for t in &self.targets {
            for g in t.alua_groups.iter().filter(|g| g.node.is_some()) {
                let what = format!("target {:?} alua_group {}", t.name, g.id);
                let Some(c) = &self.cluster else {
                    return Err(format!("{what}: node needs a [cluster] section"));
                };
                let floats = t
                    .portal_groups
                    .iter()
                    .filter(|pg| g.portal_groups.contains(&pg.tag))
                    .flat_map(|pg| &pg.portals)
                    .filter_map(|x| x.parse::<SocketAddr>().ok())
                    .find(|a| c.portals.iter().any(|p| p.address == *a));
                if let Some(a) = floats {
                    return Err(format!(
                        "{what}: bound to node {:?}, but its portal {a} floats between nodes                          (cluster.portal): a group either stays with its node or moves with                          its address",
                        g.node.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        let s = &self.settings;
        if !(512..=16_777_215).contains(&s.max_recv_data_segment_length) {
            return Err("settings.max_recv_data_segment_length must be 512..16777215".into());
        }
        if !(512..=16_777_215).contains(&s.max_burst_length)
            || !(512..=16_777_215).contains(&s.first_burst_length)
        {
            return Err("settings burst lengths must be 512..16777215".into());
        }
        if s.queue_depth == 0 || s.queue_depth > 4096 {
            return Err("settings.queue_depth must be 1..4096".into());
        }
        if !(1..=65535).contains(&s.max_connections) {
            return Err("settings.max_connections must be 1..65535".into());
        }
        if let Some(m) = &s.metrics_listen {
            m.parse::<std::net::SocketAddr>()
                .map_err(|e| format!("settings.metrics_listen {m:?}: {e}"))?;
        }
        if s.error_recovery_level > 2 {
            return Err("settings.error_recovery_level must be 0, 1 or 2".into());
        }
        if s.default_time2wait > 3600 || s.default_time2retain > 3600 {
            return Err(
                "settings.default_time2wait and default_time2retain must be 0..3600".into(),
            );
        }
        if s.max_outstanding_r2t == 0 {
            return Err("settings.max_outstanding_r2t must be at least 1".into());
        }
        if let Some(b) = &s.buffer_budget {
            let min = u64::from(scsi_core::limits::MAX_TRANSFER_BYTES);
            match parse_size(b) {
                Ok(n) if n >= min => {}
                _ => {
                    return Err(format!(
                        "settings.buffer_budget must be a size of at least {}M \
                         (one largest transfer)",
                        min >> 20
                    ))
                }
            }
        }
        if s.max_login_connections == 0 {
            return Err("settings.max_login_connections must be at least 1".into());
        }
        if let Some(c) = &s.discovery_chap {
            c.validate("settings.discovery_chap")?;
        }
        let mut names = HashSet::new();
        let mut portals = HashSet::new();
        for t in &self.targets {
            if !valid_iscsi_name(&t.name) {
                return Err(format!(
                    "target {:?}: not a valid iSCSI name (RFC 7143 §4.2.7)",
                    t.name
                ));
            }
            if !names.insert(&t.name) {
                return Err(format!("target {:?} defined twice", t.name));
            }
            if t.portal_groups.is_empty() {
                return Err(format!("target {:?}: no portal group", t.name));
            }
            let mut tags = HashSet::new();
            for g in &t.portal_groups {
                if g.tag == 0 {
                    return Err(format!(
                        "target {:?}: portal group tag must be 1..65535",
                        t.name
                    ));
                }
                if !tags.insert(g.tag) {
                    return Err(format!(
                        "target {:?}: portal group tag {} twice",
                        t.name, g.tag
                    ));
                }
                for p in &g.portals {
                    let addr: SocketAddr = p.parse().map_err(|_| {
                        format!(
                            "target {:?} group {}: portal {p:?} is not IP:PORT",
                            t.name, g.tag
                        )
                    })?;
                    // A portal belongs to one group of a target (RFC 7143 §4.4.1).
                    if !portals.insert((t.name.clone(), addr)) {
                        return Err(format!("target {:?}: portal {p} in two groups", t.name));
                    }
                }
            }
            for g in &t.portal_groups {
                if let Some(c) = &g.chap {
                    c.validate(&format!("target {:?} group {}", t.name, g.tag))?;
                }
                if g.authentication && g.demo_mode(t) && g.chap.is_none() {
                    return Err(format!(
                        "target {:?} group {}: authentication in demo mode needs the group's chap",
                        t.name, g.tag
                    ));
                }
            }
            validate_alua(t)?;
            let lun_ids: HashSet<u64> = t.luns.iter().map(|l| l.id).collect();
            let mut inits = HashSet::new();
            for a in &t.acls {
                let what = format!("target {:?} acl {:?}", t.name, a.initiator);
                if !valid_iscsi_name(&a.initiator) {
                    return Err(format!("{what}: not a valid iSCSI name (RFC 7143 §4.2.7)"));
                }
                if !inits.insert(&a.initiator) {
                    return Err(format!("{what}: defined twice"));
                }
                if let Some(c) = &a.chap {
                    c.validate(&what)?;
                }
                let mut mapped = HashSet::new();
                for m in a.luns.iter().flatten() {
                    if !lun_ids.contains(&m.lun) {
                        return Err(format!(
                            "{what}: maps LUN {} which the target does not have",
                            m.lun
                        ));
                    }
                    if m.mapped > 16383 || !mapped.insert(m.mapped) {
                        return Err(format!("{what}: mapped LUN {} invalid or twice", m.mapped));
                    }
                }
            }
            let mut ids = HashSet::new();
            for l in &t.luns {
                if l.id > 16383 {
                    return Err(format!("target {:?}: LUN {} above 16383", t.name, l.id));
                }
                if !ids.insert(l.id) {
                    return Err(format!("target {:?}: LUN {} twice", t.name, l.id));
                }
                let spec = BackstoreSpec::parse(&l.backstore)
                    .map_err(|e| format!("target {:?} LUN {}: {e}", t.name, l.id))?;
                if l.ceph.is_some() && !matches!(spec, BackstoreSpec::Rbd { .. }) {
                    return Err(format!(
                        "target {:?} LUN {}: ceph settings belong to rbd: backstores",
                        t.name, l.id
                    ));
                }
                if l.block_size != 512 && l.block_size != 4096 {
                    return Err(format!(
                        "target {:?} LUN {}: block_size must be 512 or 4096",
                        t.name, l.id
                    ));
                }
                if let Some(r) = &l.sanitize_rate {
                    if parse_size(r).map_or(true, |n| n == 0) {
                        return Err(format!(
                            "target {:?} LUN {}: sanitize_rate must be a size above zero, \
                             like \"64M\" (bytes per second)",
                            t.name, l.id
                        ));
                    }
                }
                if let Some(p) = l.physical_block_size {
                    let ratio = p / l.block_size;
                    if p % l.block_size != 0 || !ratio.is_power_of_two() || ratio > 1 << 15 {
                        return Err(format!(
                            "target {:?} LUN {}: physical_block_size must be block_size times \
                             a power of two",
                            t.name, l.id
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// ALUA groups (SPC-4 §5.16): unique ids, every portal group in exactly one group, states a
/// group supports, and no configured transitioning (that state only lives during a change).
fn validate_alua(t: &TargetConfig) -> Result<(), String> {
    if t.alua_groups.is_empty() {
        return Ok(());
    }
    let tags: HashSet<u16> = t.portal_groups.iter().map(|g| g.tag).collect();
    let mut ids = HashSet::new();
    let mut placed = HashSet::new();
    for g in &t.alua_groups {
        let what = format!("target {:?} alua_group {}", t.name, g.id);
        if g.id == 0 {
            return Err(format!(
                "target {:?}: alua_group id must be 1..65535",
                t.name
            ));
        }
        if !ids.insert(g.id) {
            return Err(format!("{what}: defined twice"));
        }
        // SPC-4 §6.37: a target port group descriptor counts its ports in one byte.
        if g.portal_groups.len() > 255 {
            return Err(format!("{what}: more than 255 portal groups"));
        }
        for tag in &g.portal_groups {
            if !tags.contains(tag) {
                return Err(format!("{what}: no portal group {tag}"));
            }
            if !placed.insert(*tag) {
                return Err(format!("{what}: portal group {tag} is in two ALUA groups"));
            }
        }
        if g.state == AccessState::Transitioning {
            return Err(format!(
                "{what}: transitioning is not a state to configure (it only lasts \
                 alua_transition_secs while a state changes)"
            ));
        }
        let bits = g.supported_bits().map_err(|e| format!("{what}: {e}"))?;
        if bits & g.state.sup_bit() == 0 {
            return Err(format!(
                "{what}: state {} is not among its supported_states",
                g.state.name()
            ));
        }
        if bits & !AccessState::Transitioning.sup_bit() == 0 {
            return Err(format!("{what}: supported_states names no state to be in"));
        }
        if let Some(n) = &g.node {
            valid_node_name(n).map_err(|e| format!("{what}: node {e}"))?;
        }
    }
    if let Some(tag) = t
        .portal_groups
        .iter()
        .map(|g| g.tag)
        .find(|t| !placed.contains(t))
    {
        return Err(format!(
            "target {:?}: portal group {tag} is in no alua_group (with ALUA groups \
             configured, every portal group belongs to one)",
            t.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_carry_file_and_line() {
        let dir = std::env::temp_dir().join(format!("ferrite-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        let text = "[[target]]\nname = \"iqn.2026-11.io.ferrite:t\"\n[[target.portal_group]]\ntag = 1\nportals = [\"127.0.0.1:3260\", \"nonsense\"]\n";
        std::fs::write(&p, text).unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(e.contains("bad.toml:5:") && e.contains("nonsense"), "{e}");
        // Syntax errors: the TOML parser's own line and column.
        std::fs::write(&p, "[[target]]\nname = \n").unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn floating_portals_are_checked_against_the_targets_and_each_other() {
        let with = |portal: &str, extra: &str| {
            let t = format!(
                r#"
                [cluster]
                node = "a"
                endpoints = ["127.0.0.1:2379"]
                {extra}
                [[cluster.portal]]
                {portal}
                [[target]]
                name = "iqn.2026-11.io.ferrite:t"
                [[target.portal_group]]
                tag = 3
                portals = ["10.0.0.100:3260"]
                "#
            );
            toml::from_str::<Config>(&t)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|()| c))
        };
        let good = r#"address = "10.0.0.100:3260"
                interface = "eth0"
                prefix_len = 24
                nodes = ["a", "b"]"#;
        let cl = with(good, "").unwrap().cluster.unwrap();
        assert_eq!(cl.failback, Failback::Manual, "the default");
        let cl = with(good, r#"failback = "auto""#).unwrap().cluster.unwrap();
        assert_eq!(cl.failback, Failback::Auto);
        assert_eq!(cl.portals[0].nodes, ["a", "b"]);
        let e = with(&good.replace(".100:", ".101:"), "").unwrap_err();
        assert!(e.contains("no portal group lists"), "{e}");
        let e = with(&good.replace("24", "33"), "").unwrap_err();
        assert!(e.contains("prefix_len"), "{e}");
        let e = with(&good.replace(r#"["a", "b"]"#, r#"["a", "a"]"#), "").unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = with(&good.replace("eth0", "eth0; rm"), "").unwrap_err();
        assert!(e.contains("interface"), "{e}");
        let e = with(good, "address_hook = []").unwrap_err();
        assert!(e.contains("address_hook"), "{e}");
        let e = with(good, r#"failback = "sometimes""#).unwrap_err();
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn an_alua_group_follows_its_node_or_its_floating_address_not_both() {
        let cfg = |cluster: bool, floating: bool| {
            let mut t = String::new();
            if cluster {
                t.push_str("[cluster]\nnode = \"a\"\nendpoints = [\"127.0.0.1:2379\"]\n");
                if floating {
                    t.push_str(
                        "[[cluster.portal]]\naddress = \"10.0.0.100:3260\"\ninterface = \"eth0\"\n\
                         prefix_len = 24\nnodes = [\"a\", \"b\"]\n",
                    );
                }
            }
            t.push_str(
                r#"
                [[target]]
                name = "iqn.2026-11.io.ferrite:t"
                [[target.portal_group]]
                tag = 1
                portals = ["10.0.0.100:3260"]
                [[target.alua_group]]
                id = 1
                portal_groups = [1]
                state = "active/optimized"
                node = "a"
                "#,
            );
            toml::from_str::<Config>(&t)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate())
        };
        assert_eq!(cfg(true, false), Ok(()));
        let e = cfg(true, true).unwrap_err();
        assert!(e.contains("floats between nodes"), "{e}");
        let e = cfg(false, false).unwrap_err();
        assert!(e.contains("needs a [cluster]"), "{e}");
    }

    #[test]
    fn chap_secrets_are_not_in_debug_output() {
        let c = ChapConfig {
            user: "u".into(),
            secret: "initiator-secret-1".into(),
            mutual_user: Some("t".into()),
            mutual_secret: Some("target-secret-22".into()),
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("initiator-secret") && !d.contains("target-secret"),
            "{d}"
        );
    }

    #[test]
    fn sizes_and_specs() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(
            BackstoreSpec::parse("ram:64M"),
            Ok(BackstoreSpec::Ram { size: 64 << 20 })
        );
        assert_eq!(
            BackstoreSpec::parse("file:/tmp/x.img:1G"),
            Ok(BackstoreSpec::File {
                path: "/tmp/x.img".into(),
                size: Some(1 << 30)
            })
        );
        assert_eq!(
            BackstoreSpec::parse("file:/tmp/x.img"),
            Ok(BackstoreSpec::File {
                path: "/tmp/x.img".into(),
                size: None
            })
        );
        assert_eq!(
            BackstoreSpec::parse("block:/dev/sdb"),
            Ok(BackstoreSpec::Block {
                path: "/dev/sdb".into()
            })
        );
        assert!(BackstoreSpec::parse("nbd:x").is_err());
        assert_eq!(
            BackstoreSpec::parse("rbd:rbd/disk0"),
            Ok(BackstoreSpec::Rbd {
                pool: "rbd".into(),
                image: "disk0".into()
            })
        );
        for bad in ["rbd:", "rbd:pool", "rbd:/image", "rbd:pool/", "rbd:a/b/c"] {
            assert!(BackstoreSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn demo_is_valid() {
        Config::demo().validate().unwrap();
    }

    #[test]
    fn toml_model() {
        let t = r#"
            [settings]
            queue_depth = 64

            [[target]]
            name = "iqn.2026-11.io.ferrite:t1"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:3260", "[::1]:3260"]
            [[target.portal_group]]
            tag = 2
            portals = ["127.0.0.2:3260"]
            enabled = false
            [[target.lun]]
            id = 0
            backstore = "ram:16M"
        "#;
        let c: Config = toml::from_str(t).unwrap();
        c.validate().unwrap();
        assert_eq!(c.settings.queue_depth, 64);
        assert_eq!(c.targets[0].portal_groups.len(), 2);
        assert!(!c.targets[0].portal_groups[1].enabled);
    }

    #[test]
    fn rbd_luns_and_their_ceph_settings() {
        let t = r#"
            [[target]]
            name = "iqn.2026-11.io.example:rbd"
            [[target.portal_group]]
            tag = 1
            portals = ["127.0.0.1:3260"]
            [[target.lun]]
            id = 0
            backstore = "rbd:pool0/disk"
            ceph = { conf = "/etc/ceph/other.conf", client_id = "iscsi", timeout_secs = 5 }
            [[target.lun]]
            id = 1
            backstore = "rbd:pool0/disk2"
        "#;
        let c: Config = toml::from_str(t).unwrap();
        c.validate().unwrap();
        let ceph = c.targets[0].luns[0].ceph.clone().unwrap();
        assert_eq!(ceph.client_id.as_deref(), Some("iscsi"));
        assert_eq!(ceph.timeout_secs, Some(5));
        assert!(ceph.keyring.is_none());
        assert!(c.targets[0].luns[1].ceph.is_none());
        // Written back the same way (no empty fields), and read again equal.
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("keyring"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        // Ceph settings on another kind of backstore are a mistake; so are unknown fields.
        let mut bad = c.clone();
        bad.targets[0].luns[1].backstore = "ram:1M".into();
        bad.targets[0].luns[1].ceph = Some(CephConfig::default());
        assert!(bad.validate().unwrap_err().contains("ceph settings"));
        assert!(toml::from_str::<Config>(&t.replace("timeout_secs", "timeout")).is_err());
    }

    #[test]
    fn validation_errors_name_the_culprit() {
        let mut c = Config::demo();
        c.targets[0].name = "Bad Name".into();
        assert!(c.validate().unwrap_err().contains("Bad Name"));
        let mut c = Config::demo();
        c.targets[0].portal_groups[0]
            .portals
            .push("nonsense".into());
        assert!(c.validate().unwrap_err().contains("nonsense"));
        let mut c = Config::demo();
        let l = c.targets[0].luns[0].clone();
        c.targets[0].luns.push(l);
        assert!(c.validate().unwrap_err().contains("LUN 0 twice"));
        let bad: Result<Config, _> = toml::from_str("[[target]]\nname = \"iqn.x\"\nbogus = 1\n");
        assert!(bad.is_err());
        // sanitize_rate: a size above zero.
        for (rate, ok) in [("64M", true), ("1", true), ("0", false), ("fast", false)] {
            let mut c = Config::demo();
            c.targets[0].luns[0].sanitize_rate = Some(rate.into());
            match c.validate() {
                Ok(()) => assert!(ok, "{rate} accepted"),
                Err(e) => assert!(!ok && e.contains("sanitize_rate"), "{rate}: {e}"),
            }
        }
    }
}
