//! The running model built from a validated [`Config`]: targets with their logical units,
//! portal groups (target ports) and per-initiator LUN views, plus the answers the login engine
//! asks for (`Directory`).
//!
//! A runtime is immutable once built. Live reconfiguration builds a new one from the new
//! config, reusing what did not change — open backstores with their unit attention and
//! reservation state, relative target port ids, and the per-initiator views (which are
//! updated in place so sessions see LUNs come and go, with REPORTED LUNS DATA HAS CHANGED).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use iscsi_proto::chap::Secret;
use iscsi_proto::{Access, AuthPolicy, Directory};
use scsi_core::{DeviceServer, LogicalUnit, TargetDevice, TargetPort};

use crate::config::{ChapConfig, Config, LunConfig, TargetConfig};

/// A view's LUN map: mapped LUN -> (target LUN, read-only).
type LunMap = BTreeMap<u64, (u64, bool)>;

/// View key of initiators admitted by demo mode (no ACL of their own).
pub const DEMO_VIEW: &str = "";

/// A portal group (one SCSI target port) at run time.
#[derive(Debug)]
pub struct PortalGroup {
    pub tag: u16,
    pub portals: Vec<SocketAddr>,
    pub enabled: bool,
    pub demo_mode: bool,
    pub authentication: bool,
    pub chap: Option<ChapConfig>,
    pub port: Arc<TargetPort>,
}

/// A node ACL at run time.
#[derive(Debug)]
pub struct Acl {
    pub initiator: String,
    pub chap: Option<ChapConfig>,
}

/// A target at run time.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub groups: Vec<PortalGroup>,
    /// The target's logical units by LUN, with the config they were built from.
    pub lus: BTreeMap<u64, (LunConfig, Arc<LogicalUnit>)>,
    pub acls: Vec<Acl>,
    /// LUN views by initiator name ([`DEMO_VIEW`] for demo mode): what REPORT LUNS shows and
    /// which LU each LUN number reaches.
    pub views: HashMap<String, Arc<DeviceServer>>,
    /// The SCSI target device (scsi-core): its ports, logical units and target-wide resets.
    /// The same object across reconfigurations, as long as the target exists.
    pub device: Arc<TargetDevice>,
}

impl Target {
    pub fn acl(&self, initiator: &str) -> Option<&Acl> {
        self.acls.iter().find(|a| a.initiator == initiator)
    }

    /// The view an initiator gets through `group`, if it may log in there at all.
    pub fn view_for(
        &self,
        group: &PortalGroup,
        initiator: &str,
    ) -> Option<(String, Arc<DeviceServer>)> {
        if self.acl(initiator).is_some() {
            let v = self.views.get(initiator)?;
            return Some((initiator.to_string(), v.clone()));
        }
        if group.demo_mode {
            let v = self.views.get(DEMO_VIEW)?;
            return Some((DEMO_VIEW.to_string(), v.clone()));
        }
        None
    }

    pub fn group(&self, tag: u16) -> Option<&PortalGroup> {
        self.groups.iter().find(|g| g.tag == tag)
    }
}

/// Everything the daemon serves at one moment.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub targets: Vec<Arc<Target>>,
    /// ALUA transitions the build began: finish each after its seconds
    /// (`TargetDevice::finish_alua_transition`).
    pub alua_pending: Vec<AluaPending>,
}

/// An implicit ALUA transition under way (SPC-4 §5.16.2.5).
#[derive(Debug, Clone)]
pub struct AluaPending {
    pub device: Arc<TargetDevice>,
    pub generation: u64,
    pub secs: u8,
}

/// Builds a logical unit for `l`; provided by the daemon (it owns backstore opening).
pub type LuBuilder<'a> =
    dyn FnMut(&TargetConfig, &LunConfig) -> anyhow::Result<Arc<LogicalUnit>> + 'a;

impl Runtime {
    /// Build from `cfg`, reusing unchanged parts of `old`. `alua` gives each target's ALUA
    /// groups with the states they should be in (the configuration's, or the cluster's view
    /// of them, `cluster_alua`).
    pub fn build(
        cfg: &Config,
        old: Option<&Runtime>,
        build_lu: &mut LuBuilder,
        alua: &dyn Fn(&TargetConfig) -> Vec<scsi_core::AluaGroup>,
    ) -> anyhow::Result<Runtime> {
        let mut targets = Vec::new();
        // What each target device will hold, applied once everything is built (a failure
        // leaves the running devices as they are).
        let mut devices = Vec::new();
        for tc in &cfg.targets {
            let prev = old.and_then(|o| o.target(&tc.name));
            let device = prev.map_or_else(|| TargetDevice::new(&tc.name), |p| p.device.clone());
            let mut lus = BTreeMap::new();
            for l in &tc.luns {
                let reused = prev.and_then(|p| p.lus.get(&l.id)).filter(|(c, _)| c == l);
                let lu = match reused {
                    Some((_, lu)) => lu.clone(),
                    None => build_lu(tc, l)?,
                };
                lus.insert(l.id, (l.clone(), lu));
            }
            let mut groups = Vec::new();
            for g in &tc.portal_groups {
                // SPC-4 §7.8.6.x: the relative target port identifier is unique within the
                // SCSI target device (our iSCSI target) and must not change under the
                // initiator: it is the portal group tag, stable across restarts and edits.
                let port = device.port(g.tag, g.tag);
                groups.push(PortalGroup {
                    tag: g.tag,
                    portals: g.portals.iter().filter_map(|p| p.parse().ok()).collect(),
                    enabled: g.enabled,
                    demo_mode: g.demo_mode(tc),
                    authentication: g.authentication,
                    chap: g.chap.clone(),
                    port,
                });
            }
            let acls: Vec<Acl> = tc
                .acls
                .iter()
                .map(|a| Acl {
                    initiator: a.initiator.clone(),
                    chap: a.chap.clone(),
                })
                .collect();
            // Desired LUN maps per view: mapped LUN -> (target LUN, read-only).
            let mut wanted: Vec<(String, LunMap)> = Vec::new();
            let all: LunMap = lus.keys().map(|&k| (k, (k, false))).collect();
            wanted.push((DEMO_VIEW.to_string(), all.clone()));
            for a in &tc.acls {
                let m = match &a.luns {
                    Some(list) => list
                        .iter()
                        .map(|m| (m.mapped, (m.lun, m.read_only)))
                        .collect(),
                    None => all.clone(),
                };
                wanted.push((a.initiator.clone(), m));
            }
            let mut views = HashMap::new();
            for (key, map) in wanted {
                let view = prev
                    .and_then(|p| p.views.get(&key).cloned())
                    .unwrap_or_else(|| Arc::new(DeviceServer::on(device.clone())));
                sync_view(&view, &map, &lus)?;
                views.insert(key, view);
            }
            let tags: Vec<u16> = groups.iter().map(|g| g.tag).collect();
            let held = lus.iter().map(|(&id, (_, lu))| (id, lu.clone())).collect();
            let alua = (alua(tc), tc.alua_transition_secs);
            devices.push((device.clone(), tags, held, alua));
            targets.push(Arc::new(Target {
                name: tc.name.clone(),
                alias: tc.alias.clone(),
                groups,
                lus,
                acls,
                views,
                device,
            }));
        }
        let mut alua_pending = Vec::new();
        for (device, tags, lus, (groups, secs)) in devices {
            device.retain_ports(&tags);
            device.set_lus(lus);
            // A change of states passes through transitioning (on a device that was already
            // serving; a new one starts in its configured states).
            let change = device.configure_alua(groups, secs);
            if change.transitioning {
                alua_pending.push(AluaPending {
                    device: device.clone(),
                    generation: change.generation,
                    secs,
                });
            }
        }
        Ok(Runtime {
            config: cfg.clone(),
            targets,
            alua_pending,
        })
    }

    pub fn target(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Every portal address to listen on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .targets
            .iter()
            .flat_map(|t| t.groups.iter().flat_map(|g| g.portals.iter().copied()))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Make `view` map exactly `map` (mapped LUN -> target LUN, read-only), adding and removing
/// LUs in place.
fn sync_view(
    view: &DeviceServer,
    map: &LunMap,
    lus: &BTreeMap<u64, (LunConfig, Arc<LogicalUnit>)>,
) -> anyhow::Result<()> {
    for mapped in view.luns() {
        let keep = map
            .get(&mapped)
            .and_then(|(t, _)| lus.get(t))
            .zip(view.lu(mapped))
            .is_some_and(|((_, want), have)| Arc::ptr_eq(want, &have));
        if !keep {
            view.remove_lun(mapped);
        }
    }
    for (&mapped, &(target_lun, read_only)) in map {
        view.set_read_only(mapped, read_only);
        if view.lu(mapped).is_some() {
            continue;
        }
        if let Some((_, lu)) = lus.get(&target_lun) {
            view.add_lun(mapped, lu.clone())
                .map_err(|e| anyhow::anyhow!("LUN {mapped}: {e:?}"))?;
        }
    }
    Ok(())
}

fn secret(user: &str, secret: &str) -> Secret {
    Secret {
        user: user.to_string(),
        secret: secret.as_bytes().to_vec(),
    }
}

fn policy(required: bool, chap: Option<&ChapConfig>) -> AuthPolicy {
    AuthPolicy {
        required,
        initiator: chap.map(|c| secret(&c.user, &c.secret)),
        target: chap.and_then(|c| {
            Some(secret(
                c.mutual_user.as_deref()?,
                c.mutual_secret.as_deref()?,
            ))
        }),
    }
}

fn fmt_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        // RFC 7143 §13.8: IPv6 addresses in brackets.
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

/// What the login engine may ask, answered for the portal one connection arrived on.
pub struct PortalView<'a> {
    pub rt: &'a Runtime,
    pub local: SocketAddr,
}

impl PortalView<'_> {
    /// The portal group of `t` that owns our local address (a wildcard listener matches any
    /// local address with its port).
    pub fn group_of<'t>(&self, t: &'t Target) -> Option<&'t PortalGroup> {
        t.groups.iter().find(|g| {
            g.portals.iter().any(|p| {
                p.port() == self.local.port()
                    && (p.ip() == self.local.ip() || p.ip().is_unspecified())
            })
        })
    }
}

impl Directory for PortalView<'_> {
    fn tpg_tag(&self) -> u16 {
        self.rt
            .targets
            .iter()
            .find_map(|t| self.group_of(t).map(|g| g.tag))
            .unwrap_or(1)
    }

    fn tpg_tag_of(&self, target: Option<&str>) -> u16 {
        target
            .and_then(|n| self.rt.target(n))
            .and_then(|t| self.group_of(t))
            .map(|g| g.tag)
            .unwrap_or_else(|| self.tpg_tag())
    }

    fn target(&self, name: &str, initiator: &str) -> Option<Option<String>> {
        match self.access(name, initiator) {
            Access::Allowed { alias } => Some(alias),
            _ => None,
        }
    }

    fn access(&self, name: &str, initiator: &str) -> Access {
        let Some(t) = self.rt.target(name) else {
            return Access::NotFound;
        };
        let Some(g) = self.group_of(t) else {
            return Access::NotFound;
        };
        if !g.enabled {
            return Access::Unavailable;
        }
        if t.view_for(g, initiator).is_none() {
            return Access::Denied;
        }
        Access::Allowed {
            alias: t.alias.clone(),
        }
    }

    fn auth(&self, initiator: &str, target: Option<&str>) -> AuthPolicy {
        let Some(name) = target else {
            let c = self.rt.config.settings.discovery_chap.as_ref();
            return policy(c.is_some(), c);
        };
        let Some(t) = self.rt.target(name) else {
            return AuthPolicy::default();
        };
        let Some(g) = self.group_of(t) else {
            return AuthPolicy::default();
        };
        // An initiator's own credentials win over the group's demo-mode credentials.
        let chap = t
            .acl(initiator)
            .and_then(|a| a.chap.as_ref())
            .or(g.chap.as_ref());
        policy(g.authentication, chap)
    }

    fn send_targets(&self, initiator: &str, filter: Option<&str>) -> Vec<(String, Vec<String>)> {
        let only_enabled = self.rt.config.settings.tpg_enabled_sendtargets;
        let mut out = Vec::new();
        for t in &self.rt.targets {
            if filter.is_some_and(|f| f != t.name) {
                continue;
            }
            let mut addrs = Vec::new();
            for g in &t.groups {
                // Hidden: disabled groups (tpg_enabled_sendtargets) and groups the initiator
                // could not log in through.
                if (only_enabled && !g.enabled) || t.view_for(g, initiator).is_none() {
                    continue;
                }
                for p in &g.portals {
                    let a = if p.ip().is_unspecified() {
                        SocketAddr::new(self.local.ip(), p.port())
                    } else {
                        *p
                    };
                    addrs.push(format!("{},{}", fmt_addr(a), g.tag));
                }
            }
            if !addrs.is_empty() {
                out.push((t.name.clone(), addrs));
            }
        }
        out
    }
}
