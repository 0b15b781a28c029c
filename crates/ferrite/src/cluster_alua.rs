//! ALUA states shared by the nodes of a cluster (issue "Clusters on etcd"; SPC-4 §5.16).
//!
//! Every node configures the same targets with the same ALUA groups, so REPORT TARGET PORT
//! GROUPS can only differ in the states. Those are a pure function, computed by every node
//! alike, of two things the cluster store holds:
//! * the **intended** state of each group: `alua/<target>` (`group ID STATE` lines), written
//!   with a compare-and-swap by `ferrite admin set-alua` (and the other ALUA operations) and by
//!   SET TARGET PORT GROUPS on any node; without that key, the configuration's states;
//! * the **live members** (`nodes/`, `membership`).
//!
//! [`effective`] then makes a group whose `node` is not a live member unavailable, and if that
//! leaves no group of the target in an active state, the standby groups of live nodes
//! active/optimized (the survivor takes over the I/O). Every node follows both prefixes and
//! applies the result like an operator's change: through transitioning (`alua_transition_secs`)
//! where the state becomes or stops being inaccessible, with ASYMMETRIC ACCESS STATE CHANGED
//! for every I_T nexus.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{Cas, ClusterStore, Event, Revision};
use scsi_core::{AccessState, AluaGroup};
use tracing::{info, warn};

use crate::config::{Config, TargetConfig};

/// Groups one record may name (a target has at most one per portal group).
const MAX_GROUPS: usize = 4096;

/// Who set a group's intended state last (its STATUS CODE in REPORT TARGET PORT GROUPS,
/// SPC-4 §6.37).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Nobody since the cluster's configuration.
    Config,
    /// An operator (`ferrite admin`): an implicit transition.
    Operator,
    /// An initiator's SET TARGET PORT GROUPS.
    Initiator,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Config => "config",
            By::Operator => "operator",
            By::Initiator => "initiator",
        }
    }

    fn parse(s: &str) -> Option<By> {
        [By::Config, By::Operator, By::Initiator]
            .into_iter()
            .find(|b| b.name() == s)
    }

    fn status(self) -> u8 {
        match self {
            By::Config => scsi_core::alua_status::NONE,
            By::Operator => scsi_core::alua_status::BY_IMPLICIT_BEHAVIOR,
            By::Initiator => scsi_core::alua_status::BY_SET_TARGET_PORT_GROUPS,
        }
    }
}

/// States (and who set them) by group id.
pub type Intent = BTreeMap<u16, (AccessState, By)>;

/// The record for `intent`.
pub fn encode(intent: &Intent) -> String {
    let mut s = String::from("ferrite-alua 1\n");
    for (id, (st, by)) in intent {
        let _ = writeln!(s, "group {id} {} {}", st.name(), by.name());
    }
    s
}

/// Parse a record written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Intent, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let mut lines = text.lines();
    if lines.next() != Some("ferrite-alua 1") {
        return Err("not a ferrite-alua 1 record".into());
    }
    let mut out = Intent::new();
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        let ["group", id, state, by] = f.as_slice() else {
            return Err(format!("unexpected record {line:?}"));
        };
        let by = By::parse(by).ok_or_else(|| format!("bad setter {by:?}"))?;
        let id = id
            .parse::<u16>()
            .ok()
            .filter(|&i| i != 0)
            .ok_or_else(|| format!("bad group id {id:?}"))?;
        let state = AccessState::parse(state)
            .filter(|s| *s != AccessState::Transitioning)
            .ok_or_else(|| format!("bad state {state:?}"))?;
        if out.insert(id, (state, by)).is_some() || out.len() > MAX_GROUPS {
            return Err(format!("group {id} twice, or too many groups"));
        }
    }
    Ok(out)
}

/// The states the groups of one target should be in: `groups` as configured, with their
/// states replaced by `intent` where it names them; a group whose node (`nodes`, by group id)
/// is not in `live` is unavailable; if then no group is active, the standby groups of live nodes
/// become active/optimized. `live` unknown (`None`): everybody counts as live.
pub fn effective(
    mut groups: Vec<AluaGroup>,
    nodes: &HashMap<u16, String>,
    intent: Option<&Intent>,
    live: Option<&BTreeSet<String>>,
) -> Vec<AluaGroup> {
    if let Some(intent) = intent {
        for g in &mut groups {
            if let Some((s, _)) = intent.get(&g.id) {
                g.state = *s;
            }
        }
    }
    let Some(live) = live else { return groups };
    let up = |id: u16| nodes.get(&id).is_none_or(|n| live.contains(n));
    let mut gone = false;
    for g in &mut groups {
        if !up(g.id) && g.state != AccessState::Unavailable {
            g.state = AccessState::Unavailable;
            gone = true;
        }
    }
    if gone && !groups.iter().any(|g| g.state.is_active()) {
        for g in &mut groups {
            let can = g.supported & AccessState::ActiveOptimized.sup_bit() != 0;
            if g.state == AccessState::Standby && up(g.id) && can {
                g.state = AccessState::ActiveOptimized;
            }
        }
    }
    groups
}

#[derive(Default)]
struct View {
    /// Node names under `nodes/` (None until read).
    live: Option<BTreeSet<String>>,
    /// Target name -> (mod_revision, intent) under `alua/`.
    intent: HashMap<String, (Revision, Intent)>,
}

/// A node's side of the shared ALUA states.
pub struct ClusterAlua {
    prefix: String,
    view: Mutex<View>,
}

/// What the follower calls when the view changed (the daemon reapplies the states).
pub type OnChange = Box<dyn Fn() + Send + Sync>;

impl ClusterAlua {
    pub fn new(prefix: &str) -> Arc<ClusterAlua> {
        Arc::new(ClusterAlua {
            prefix: prefix.to_string(),
            view: Mutex::new(View::default()),
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, target: &str) -> Vec<u8> {
        format!("{}alua/{target}", self.prefix).into_bytes()
    }

    /// The groups of `tc` with the states the cluster wants now.
    pub fn groups(&self, tc: &TargetConfig) -> Vec<AluaGroup> {
        self.groups_and_status(tc).0
    }

    /// The groups of `tc` with their states, and each group's STATUS CODE: derived from the
    /// cluster's view like the states, so that every node reports the same — changed by
    /// implicit behaviour where membership overrides the intent, else after whoever set the
    /// intended state last.
    pub fn groups_and_status(&self, tc: &TargetConfig) -> (Vec<AluaGroup>, Vec<(u16, u8)>) {
        let nodes: HashMap<u16, String> = tc
            .alua_groups
            .iter()
            .filter_map(|g| g.node.clone().map(|n| (g.id, n)))
            .collect();
        let v = self.view();
        let intent = v.intent.get(&tc.name).map(|(_, i)| i);
        let base = tc.effective_alua_groups();
        let groups = effective(base.clone(), &nodes, intent, v.live.as_ref());
        let status = groups
            .iter()
            .map(|g| {
                let (meant, by) = intent
                    .and_then(|i| i.get(&g.id).copied())
                    .or_else(|| {
                        base.iter()
                            .find(|b| b.id == g.id)
                            .map(|b| (b.state, By::Config))
                    })
                    .unwrap_or((g.state, By::Config));
                let st = if meant != g.state {
                    By::Operator.status()
                } else {
                    by.status()
                };
                (g.id, st)
            })
            .collect();
        (groups, status)
    }

    /// Give `c` the cluster's intended states (so that an operator's change on this node
    /// starts from them, not from this node's file).
    pub fn intent_into_config(&self, c: &mut Config) {
        let v = self.view();
        for t in &mut c.targets {
            let Some((_, intent)) = v.intent.get(&t.name) else {
                continue;
            };
            if intent.is_empty() {
                continue;
            }
            t.alua_groups = t.alua_group_configs();
            for g in &mut t.alua_groups {
                if let Some((s, _)) = intent.get(&g.id) {
                    g.state = *s;
                }
            }
        }
    }

    /// Write the intended states of every target whose states differ between `old` and
    /// `new` (an operator's change, or SET TARGET PORT GROUPS), each with a compare-and-swap
    /// on the revision this node last saw: a change another node made meanwhile is an error
    /// (look again and retry), never overwritten unseen.
    pub async fn publish(
        &self,
        store: &dyn ClusterStore,
        old: &Config,
        new: &Config,
        by: By,
    ) -> anyhow::Result<()> {
        for t in &new.targets {
            let states = |tc: &TargetConfig| -> BTreeMap<u16, AccessState> {
                tc.alua_group_configs()
                    .iter()
                    .map(|g| (g.id, g.state))
                    .collect()
            };
            let (rev, stored) = self.view().intent.get(&t.name).cloned().unwrap_or_default();
            // What the cluster holds now: the stored intent, or the configuration's states.
            let current: Intent = if rev > 0 {
                stored
            } else {
                let Some(o) = old.targets.iter().find(|o| o.name == t.name) else {
                    continue; // a new target: its configuration is the intent
                };
                states(o)
                    .into_iter()
                    .map(|(id, s)| (id, (s, By::Config)))
                    .collect()
            };
            // Groups whose state changes get `by`; the others keep who set them.
            let want: Intent = states(t)
                .into_iter()
                .map(|(id, s)| match current.get(&id) {
                    Some(&(was, who)) if was == s => (id, (s, who)),
                    _ => (id, (s, by)),
                })
                .collect();
            if current == want {
                continue;
            }
            let key = self.key(&t.name);
            match store
                .put_if(&key, encode(&want).as_bytes(), rev, None)
                .await
                .map_err(|e| anyhow::anyhow!("cluster: ALUA states of {}: {e}", t.name))?
            {
                Cas::Done(r) => {
                    info!(target = %t.name, revision = r, "cluster: ALUA states published");
                    self.view().intent.insert(t.name.clone(), (r, want));
                }
                Cas::Conflict(_) => anyhow::bail!(
                    "target {}: another node changed the ALUA states meanwhile; look again \
                     (`ferrite admin alua`) and retry",
                    t.name
                ),
            }
        }
        Ok(())
    }

    /// Follow `nodes/` and `alua/` forever, calling `on_change` whenever the view changes.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn ClusterStore>, on_change: OnChange) {
        let nodes = format!("{}nodes/", self.prefix).into_bytes();
        let alua = format!("{}alua/", self.prefix).into_bytes();
        let mut said = false;
        loop {
            let read = async {
                let (n, r1) = store.list(&nodes).await?;
                let (a, r2) = store.list(&alua).await?;
                Ok::<_, cluster::Error>((n, a, r1.min(r2)))
            };
            let (n, a, rev) = match read.await {
                Ok(x) => x,
                Err(e) => {
                    if !said {
                        warn!("cluster: ALUA view cannot be read: {e}");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            said = false;
            {
                let mut v = self.view();
                v.live = Some(
                    n.iter()
                        .filter_map(|kv| kv.key.get(nodes.len()..))
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect(),
                );
                v.intent.clear();
                for kv in &a {
                    self.take(&mut v, &alua, kv);
                }
            }
            on_change();
            let (mut wn, mut wa) = match (
                store.watch(&nodes, rev + 1).await,
                store.watch(&alua, rev + 1).await,
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    warn!("cluster: ALUA feed: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            loop {
                let ev = tokio::select! {
                    ev = wn.next() => ev,
                    ev = wa.next() => ev,
                };
                let ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        warn!("cluster: ALUA feed broke: {e}");
                        break;
                    }
                    None => break,
                };
                {
                    let mut v = self.view();
                    if let Some(name) = ev.key().strip_prefix(nodes.as_slice()) {
                        let name = String::from_utf8_lossy(name).into_owned();
                        let live = v.live.get_or_insert_with(BTreeSet::new);
                        match &ev {
                            Event::Put(_) => live.insert(name),
                            Event::Delete { .. } => live.remove(&name),
                        };
                    } else {
                        match &ev {
                            Event::Put(kv) => self.take(&mut v, &alua, kv),
                            Event::Delete { key, .. } => {
                                if let Some(t) = key.get(alua.len()..) {
                                    v.intent.remove(&*String::from_utf8_lossy(t));
                                }
                            }
                        }
                    }
                }
                on_change();
            }
        }
    }

    fn take(&self, v: &mut View, prefix: &[u8], kv: &cluster::KeyValue) {
        let Some(t) = kv.key.get(prefix.len()..) else {
            return;
        };
        let t = String::from_utf8_lossy(t).into_owned();
        match decode(&kv.value) {
            Ok(i) => {
                v.intent.insert(t, (kv.mod_revision, i));
            }
            Err(e) => warn!(target = %t, "cluster: ALUA record ignored: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessState::*;

    fn g(id: u16, state: AccessState) -> AluaGroup {
        AluaGroup {
            id,
            state,
            preferred: false,
            supported: scsi_core::ALUA_ALL_SUPPORTED,
            ports: vec![id],
        }
    }

    fn states(v: &[AluaGroup]) -> Vec<(u16, AccessState)> {
        v.iter().map(|g| (g.id, g.state)).collect()
    }

    #[test]
    fn a_leaving_node_s_groups_become_unavailable_and_the_survivor_s_active() {
        let nodes: HashMap<u16, String> = [(1, "a".to_string()), (2, "b".to_string())]
            .into_iter()
            .collect();
        let both: BTreeSet<String> = ["a".into(), "b".into()].into_iter().collect();
        let only_b: BTreeSet<String> = ["b".into()].into_iter().collect();
        let cfg = vec![
            g(1, ActiveOptimized),
            g(2, Standby),
            g(3, ActiveNonOptimized),
        ];
        // Everybody there: as configured.
        assert_eq!(
            states(&effective(cfg.clone(), &nodes, None, Some(&both))),
            [(1, ActiveOptimized), (2, Standby), (3, ActiveNonOptimized)]
        );
        // Node a gone, but group 3 (no node) is still active: nothing promoted.
        assert_eq!(
            states(&effective(cfg.clone(), &nodes, None, Some(&only_b))),
            [(1, Unavailable), (2, Standby), (3, ActiveNonOptimized)]
        );
        // Without group 3: b's standby group takes over.
        let two = cfg[..2].to_vec();
        assert_eq!(
            states(&effective(two.clone(), &nodes, None, Some(&only_b))),
            [(1, Unavailable), (2, ActiveOptimized)]
        );
        // The intent wins over the configuration; unknown membership changes nothing.
        let intent: Intent = [
            (1, (Standby, By::Operator)),
            (2, (ActiveOptimized, By::Initiator)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            states(&effective(two.clone(), &nodes, Some(&intent), None)),
            [(1, Standby), (2, ActiveOptimized)]
        );
        // Nobody live: all unavailable, nothing to promote.
        let none = BTreeSet::new();
        assert_eq!(
            states(&effective(two, &nodes, None, Some(&none))),
            [(1, Unavailable), (2, Unavailable)]
        );
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let i: Intent = [
            (1, (ActiveOptimized, By::Config)),
            (7, (Standby, By::Operator)),
            (65535, (Offline, By::Initiator)),
        ]
        .into_iter()
        .collect();
        assert_eq!(decode(encode(&i).as_bytes()).unwrap(), i);
        for bad in [
            "",
            "ferrite-alua 2\n",
            "ferrite-alua 1\ngroup 0 standby config\n",
            "ferrite-alua 1\ngroup 1 transitioning config\n",
            "ferrite-alua 1\ngroup 1 standby config\ngroup 1 standby config\n",
            "ferrite-alua 1\ngroup x standby config\n",
            "ferrite-alua 1\ngroup 1 standby\n",
            "ferrite-alua 1\ngroup 1 standby somebody\n",
            "ferrite-alua 1\nnode 1 a\n",
        ] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
