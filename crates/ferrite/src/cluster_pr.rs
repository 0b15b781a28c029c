//! Persistent reservations shared through the cluster store (issue "Clusters on etcd"; the
//! model is `scsi_core::pr::shared`'s).
//!
//! Keys, under the cluster prefix:
//! * `pr/<NAA>`: the last change of the logical unit whose NAA identifier (16 hex digits) is
//!   NAA — the same on every node, since every node configures the same targets and LUNs. No
//!   lease: the state outlives every node (APTPL across a restart of the whole cluster).
//! * `pr-acks/<node>`: the highest store revision whose changes `node` has applied, bound to
//!   the node's lease.
//!
//! One task per node follows `pr/` from the store's change feed and applies every change to
//! the logical units it serves: new state, unit attentions, and for PREEMPT AND ABORT the abort
//! of the preempted I_T nexuses' tasks and the wait until none of their commands still runs
//! (on the blocking pool). Then it writes its acknowledgement. A PERSISTENT RESERVE OUT (on
//! the blocking pool) writes its change with a compare-and-swap and waits until every node
//! under `nodes/` has acknowledged it or has left; a node leaves only once its lease ended,
//! and it fences itself before that (`membership`), so a node that cannot acknowledge no
//! longer serves anyone when the command completes.
//!
//! When the change feed breaks, every shared logical unit's copy is in doubt (commands it
//! decides get BUSY) until the prefix is read again in full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use cluster::{Cas, ClusterStore, Event, LeaseId, Revision};
use scsi_core::{decode_change, encode_change, LogicalUnit, Nexus, PrChange, Publish, SharedPr};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// How long one store operation of a PERSISTENT RESERVE OUT may take before its outcome is
/// looked up instead.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// How the daemon aborts the tasks of I_T nexuses on one logical unit (PREEMPT AND ABORT).
pub type Aborter = Box<dyn Fn(&LogicalUnit, &[Nexus]) + Send + Sync>;

/// A node's side of the shared persistent reservations.
pub struct ClusterPr {
    prefix: String,
    node: String,
    /// The node's lease while it serves (acknowledgements live with it).
    lease: Mutex<Option<LeaseId>>,
    /// The shared logical units by key.
    lus: Mutex<HashMap<Vec<u8>, Weak<LogicalUnit>>>,
    /// Set once the daemon runs (`start`).
    store: OnceLock<Arc<dyn ClusterStore>>,
    handle: OnceLock<tokio::runtime::Handle>,
    aborter: OnceLock<Aborter>,
    /// The follower reads everything again (a logical unit was attached, the node joined).
    wake: tokio::sync::Notify,
    /// (revision acknowledged, `mod_revision` of our acknowledgement key, 0: none).
    ack: tokio::sync::Mutex<(Revision, Revision)>,
    lease_ttl: Duration,
}

/// One logical unit's handle on [`ClusterPr`] (what `LogicalUnit::set_shared_pr` holds).
struct LuShared {
    key: Vec<u8>,
    cluster: Weak<ClusterPr>,
}

impl ClusterPr {
    pub fn new(prefix: &str, node: &str, lease_ttl: Duration) -> Arc<ClusterPr> {
        Arc::new(ClusterPr {
            prefix: prefix.to_string(),
            node: node.to_string(),
            lease: Mutex::new(None),
            lus: Mutex::new(HashMap::new()),
            store: OnceLock::new(),
            handle: OnceLock::new(),
            aborter: OnceLock::new(),
            wake: tokio::sync::Notify::new(),
            ack: tokio::sync::Mutex::new((0, 0)),
            lease_ttl,
        })
    }

    fn pr_prefix(&self) -> Vec<u8> {
        format!("{}pr/", self.prefix).into_bytes()
    }

    /// The store key of the logical unit with NAA identifier `naa`.
    pub fn key_for(&self, naa: u64) -> Vec<u8> {
        format!("{}pr/{naa:016x}", self.prefix).into_bytes()
    }

    /// Share `lu`'s persistent reservations through the cluster (its copy is in doubt until
    /// the follower read its key).
    pub fn attach(self: &Arc<Self>, lu: &Arc<LogicalUnit>) {
        let key = self.key_for(lu.config().naa_id);
        let reattached = self
            .lus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(Weak::upgrade)
            .is_some_and(|old| Arc::ptr_eq(&old, lu));
        if reattached {
            return; // a reconfiguration kept this logical unit
        }
        lu.set_shared_pr(Arc::new(LuShared {
            key: key.clone(),
            cluster: Arc::downgrade(self),
        }));
        self.lus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::downgrade(lu));
        self.wake.notify_one();
    }

    fn lu(&self, key: &[u8]) -> Option<Arc<LogicalUnit>> {
        let mut lus = self.lus.lock().unwrap_or_else(|e| e.into_inner());
        let lu = lus.get(key).and_then(Weak::upgrade);
        if lu.is_none() {
            lus.remove(key);
        }
        lu
    }

    fn all_lus(&self) -> Vec<(Vec<u8>, Arc<LogicalUnit>)> {
        let mut lus = self.lus.lock().unwrap_or_else(|e| e.into_inner());
        lus.retain(|_, w| w.strong_count() > 0);
        lus.iter()
            .filter_map(|(k, w)| w.upgrade().map(|lu| (k.clone(), lu)))
            .collect()
    }

    /// Start following the store (once, at start).
    pub fn start(self: &Arc<Self>, store: Arc<dyn ClusterStore>, aborter: Aborter) {
        let _ = self.store.set(store);
        let _ = self.aborter.set(aborter);
        let _ = self.handle.set(tokio::runtime::Handle::current());
        tokio::spawn(self.clone().follow());
    }

    /// The node joined with `lease`: read every shared logical unit's state again before the
    /// portals open, and acknowledge with the new lease.
    pub async fn serving(self: &Arc<Self>, lease: LeaseId) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        *self.ack.lock().await = (0, 0);
        // Have the follower read everything again (it acknowledges once done), and wait for
        // it, bounded: commands arriving meanwhile get BUSY, not a stale answer.
        self.doubt_all();
        self.wake.notify_one();
        let until = Instant::now() + self.lease_ttl;
        while Instant::now() < until && self.ack.lock().await.1 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The node fenced itself: no acknowledgements without a lease, and no copy to trust.
    pub fn fenced(&self) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.doubt_all();
    }

    /// The follower: read, then apply every change the feed delivers, forever; read again
    /// whenever the feed breaks.
    async fn follow(self: Arc<Self>) {
        let store = self.store.get().expect("started").clone();
        let prefix = self.pr_prefix();
        let mut said = false;
        loop {
            let from = match self.resync(&*store, &prefix).await {
                Ok(rev) => rev + 1,
                Err(e) => {
                    if !said {
                        warn!("cluster: persistent reservations cannot be read: {e}");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            said = false;
            let mut feed = match store.watch(&prefix, from).await {
                Ok(w) => w,
                Err(e) => {
                    warn!("cluster: persistent reservation feed: {e}");
                    self.doubt_all();
                    continue;
                }
            };
            loop {
                let ev = tokio::select! {
                    ev = feed.next() => ev,
                    _ = self.wake.notified() => {
                        // In order with the feed: what the read returns is at least as new
                        // as every event applied so far, and older events still queued are
                        // ignored (`apply_shared_pr` compares revisions).
                        if let Err(e) = self.resync(&*store, &prefix).await {
                            warn!("cluster: persistent reservations cannot be read: {e}");
                            break;
                        }
                        continue;
                    }
                };
                match ev {
                    Some(Ok(ev)) => {
                        let rev = ev.revision();
                        self.apply_event(ev).await;
                        self.acknowledge(&*store, rev).await;
                    }
                    Some(Err(e)) => {
                        warn!("cluster: persistent reservation feed broke: {e}");
                        break;
                    }
                    None => {
                        warn!("cluster: persistent reservation feed ended");
                        break;
                    }
                }
            }
            self.doubt_all();
        }
    }

    fn doubt_all(&self) {
        for (_, lu) in self.all_lus() {
            lu.pr_in_doubt();
        }
    }

    /// Read the whole prefix and apply it to every shared logical unit (their copies are
    /// trusted again); returns the store revision read at.
    async fn resync(&self, store: &dyn ClusterStore, prefix: &[u8]) -> cluster::Result<Revision> {
        let (kvs, rev) = store.list(prefix).await?;
        let by_key: HashMap<&[u8], &cluster::KeyValue> =
            kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
        for (key, lu) in self.all_lus() {
            let kv = by_key.get(key.as_slice()).copied();
            self.apply_one(lu, kv, rev, true).await;
        }
        self.acknowledge(store, rev).await;
        Ok(rev)
    }

    async fn apply_event(&self, ev: Event) {
        let Some(lu) = self.lu(ev.key()) else {
            return; // a logical unit this node does not serve
        };
        match ev {
            Event::Put(kv) => self.apply_one(lu, Some(&kv), kv.mod_revision, false).await,
            Event::Delete { revision, .. } => self.apply_one(lu, None, revision, false).await,
        }
    }

    /// Apply one key's state (`None`: absent at `rev`) to `lu`, with the change's unit
    /// attentions and aborts, waiting (on the blocking pool) for the aborted commands.
    async fn apply_one(
        &self,
        lu: Arc<LogicalUnit>,
        kv: Option<&cluster::KeyValue>,
        rev: Revision,
        resync: bool,
    ) {
        let change = match kv.map(|kv| (kv.mod_revision, decode_change(&kv.value))) {
            None => None,
            Some((mrev, Ok(c))) => Some((mrev, c)),
            Some((mrev, Err(e))) => {
                // Not ours to repair: never serve from it.
                error!(
                    key = %String::from_utf8_lossy(&kv.map(|k| k.key.clone()).unwrap_or_default()),
                    revision = mrev,
                    "cluster: damaged persistent reservation record ({e}); the logical unit answers BUSY"
                );
                lu.pr_in_doubt();
                return;
            }
        };
        let victims = match &change {
            Some((mrev, c)) => lu.apply_shared_pr(*mrev, Some(c), resync),
            None => lu.apply_shared_pr(rev, None, resync),
        };
        let Some((mrev, c)) = change else { return };
        debug!(
            revision = mrev,
            generation = c.state.generation,
            "cluster: persistent reservation change applied"
        );
        if c.abort.is_empty() {
            return;
        }
        if !victims.is_empty() {
            if let Some(abort) = self.aborter.get() {
                abort(&lu, &victims);
            }
        }
        let lu2 = lu.clone();
        let _ = tokio::task::spawn_blocking(move || lu2.drain_preempted(&c)).await;
    }

    /// Tell the cluster this node applied every change up to `rev` (with its lease; none while
    /// fenced).
    async fn acknowledge(&self, store: &dyn ClusterStore, rev: Revision) {
        let Some(lease) = *self.lease.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let key = format!("{}pr-acks/{}", self.prefix, self.node).into_bytes();
        let mut ack = self.ack.lock().await;
        if rev <= ack.0 && ack.1 != 0 {
            return;
        }
        for _ in 0..3 {
            match store
                .put_if(&key, rev.to_string().as_bytes(), ack.1, Some(lease))
                .await
            {
                Ok(Cas::Done(r)) => {
                    *ack = (rev, r);
                    return;
                }
                Ok(Cas::Conflict(kv)) => ack.1 = kv.map_or(0, |kv| kv.mod_revision),
                Err(e) => {
                    warn!("cluster: acknowledging persistent reservation changes: {e}");
                    return;
                }
            }
        }
    }

    /// Block (a PERSISTENT RESERVE OUT's thread) until `change` is decided and applied
    /// everywhere.
    fn publish(
        &self,
        key: &[u8],
        copy: &dyn Fn() -> u64,
        base: Revision,
        change: &PrChange,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), Publish> {
        let (Some(store), Some(handle)) = (self.store.get(), self.handle.get()) else {
            return Err(Publish::Unavailable(
                "not connected to the cluster yet".into(),
            ));
        };
        handle.block_on(async {
            let rev = self
                .write(&**store, key, copy, base, change, cancelled)
                .await?;
            self.wait_everywhere(&**store, rev, cancelled).await
        })
    }

    /// Write `change` if the key is still at `base`; the revision it was written at.
    ///
    /// An answer that does not come (the store away, a timeout) leaves the outcome unknown,
    /// and the request may still land later: answering BUSY then could be a lie. So the same
    /// compare-and-swap is sent again until the store answers it. If the first one landed,
    /// the key holds our change (same id): done. If not, this one decides, and the first can
    /// never land afterwards, since the key is no longer at `base`. The wait ends when this
    /// node loses its lease (it fenced itself and dropped the sessions: nobody hears an
    /// answer) or the initiator gave up on the command.
    async fn write(
        &self,
        store: &dyn ClusterStore,
        key: &[u8],
        copy: &dyn Fn() -> u64,
        base: Revision,
        change: &PrChange,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Revision, Publish> {
        let value = encode_change(change);
        let mut said = false;
        loop {
            let put =
                tokio::time::timeout(OP_TIMEOUT, store.put_if(key, value.as_bytes(), base, None));
            let why = match put.await {
                Ok(Ok(Cas::Done(rev))) => return Ok(rev),
                Ok(Ok(Cas::Conflict(Some(kv))))
                    if decode_change(&kv.value).is_ok_and(|c| c.id == change.id) =>
                {
                    return Ok(kv.mod_revision)
                }
                Ok(Ok(Cas::Conflict(now))) => {
                    // Another node's change came first: let the follower bring the copy up
                    // to it, then compute again.
                    let seen = now.map_or(0, |kv| kv.mod_revision);
                    let until = Instant::now() + OP_TIMEOUT;
                    while copy() == base && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    debug!(
                        base,
                        seen,
                        now = copy(),
                        "cluster: persistent reservation change lost a race"
                    );
                    return Err(Publish::Stale);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_string(),
            };
            if !said {
                warn!("cluster: persistent reservation change: {why}; sending it again until the store answers");
                said = true;
            }
            if cancelled() {
                return Err(Publish::Unavailable(format!(
                    "{why}; the initiator gave up"
                )));
            }
            if self
                .lease
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
            {
                // The fence drops every session right after taking the lease away; give it
                // the time, so that the BUSY this turns into reaches nobody.
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err(Publish::Unavailable(format!(
                    "{why}; this node lost its lease"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every node in `nodes/` acknowledged `rev` (or left). Ends early when the
    /// command was given up or this node lost its lease (its sessions are gone then).
    async fn wait_everywhere(
        &self,
        store: &dyn ClusterStore,
        rev: Revision,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), Publish> {
        let nodes = format!("{}nodes/", self.prefix).into_bytes();
        let acks = format!("{}pr-acks/", self.prefix).into_bytes();
        let t0 = Instant::now();
        let mut delay = Duration::from_millis(1);
        let mut told = t0;
        loop {
            let waiting = async {
                let (members, _) = store.list(&nodes).await?;
                let (acked, _) = store.list(&acks).await?;
                let ack_of = |name: &[u8]| {
                    acked
                        .iter()
                        .find(|kv| kv.key.get(acks.len()..) == Some(name))
                        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                Ok::<_, cluster::Error>(
                    members
                        .iter()
                        .filter_map(|m| m.key.get(nodes.len()..))
                        .filter(|name| ack_of(name) < rev)
                        .map(|name| String::from_utf8_lossy(name).into_owned())
                        .collect::<Vec<String>>(),
                )
            };
            match tokio::time::timeout(OP_TIMEOUT, waiting).await {
                Ok(Ok(w)) if w.is_empty() => {
                    debug!(revision = rev, waited = ?t0.elapsed(), "cluster: persistent reservation change applied everywhere");
                    return Ok(());
                }
                Ok(Ok(w)) if told.elapsed() > Duration::from_secs(5) => {
                    warn!(revision = rev, nodes = ?w, waited = ?t0.elapsed(), "cluster: waiting for nodes to apply a persistent reservation change");
                    told = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!("cluster: reading acknowledgements: {e}"),
                Err(_) => debug!("cluster: reading acknowledgements timed out"),
            }
            if cancelled() {
                info!(revision = rev, "cluster: persistent reservation change made; the initiator gave up waiting for every node");
                return Ok(());
            }
            if self
                .lease
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
            {
                return Err(Publish::Unavailable(
                    "this node lost its lease before every node applied the change".into(),
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }
}

impl SharedPr for LuShared {
    fn publish(
        &self,
        base: u64,
        change: &PrChange,
        copy: &dyn Fn() -> u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), Publish> {
        match self.cluster.upgrade() {
            Some(c) => c.publish(&self.key, copy, base, change, cancelled),
            None => Err(Publish::Unavailable("the daemon is stopping".into())),
        }
    }

    fn describe(&self) -> String {
        format!("cluster key {}", String::from_utf8_lossy(&self.key))
    }
}
