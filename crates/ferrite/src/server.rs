//! The running target: targets built from the configuration, one listener per portal, the
//! session table (TSIH allocation, reinstatement), and one driver task per connection.
//!
//! This is the only layer that touches sockets, timers and threads. Protocol decisions come
//! from `iscsi-proto`'s [`Connection`]; SCSI semantics from `scsi-core`'s [`DeviceServer`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use backstore::{Backstore, BlockBackstore, FileBackstore, RamBackstore, RbdBackstore};
use iscsi_proto::budget::BufferBudget;
use iscsi_proto::conn::ConnConfig;
use iscsi_proto::table::{Joined, SessionKey, SessionTable};
use iscsi_proto::{
    ConnEvent, Connection, Directory, LoginResult, SessionKind, TaskOutcome, TmfAction,
};
use iscsi_wire::frame::{Decoder, FrameError};
use iscsi_wire::LoginStatus;
use scsi_core::{DeviceServer, LogicalUnit, LuConfig, Nexus, ScsiRequest, TaskAttr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::cluster_alua::ClusterAlua;
use crate::cluster_pr::ClusterPr;
use crate::config::{BackstoreSpec, Config, LunConfig, TargetConfig};
use crate::membership::{Fence, FencedBackstore};
use crate::metrics::{IoSnapshot, IoStats, Kind, LuMetrics, Metrics, PortMetrics};
use crate::runtime::{PortalView, Runtime, Target};
use crate::writer::Frames;

#[derive(Debug)]
struct SessionEntry {
    kill: watch::Sender<bool>,
    /// The LUN view the session uses (initiator name, or the demo view).
    view_key: String,
    /// The session's engine (set once the leading login is accepted): other I_T nexuses'
    /// task management and PREEMPT AND ABORT end its tasks through it.
    session: Option<iscsi_proto::SessionHandle>,
    /// Where the leading connection came from.
    peer: SocketAddr,
    /// See `Attached::budget_room`.
    budget_room: Arc<Notify>,
    params: iscsi_proto::Negotiated,
    target: Arc<Target>,
    nexus: Arc<Nexus>,
    /// Tells the device server, exactly once, that the I_T nexus is gone.
    nexus_released: Arc<NexusRelease>,
    /// What the session's commands did (`ferrite admin stats`).
    io: Arc<IoStats>,
}

/// Releases an I_T nexus exactly once, whoever asks first — the connection that ends or a
/// login that reinstates its session — and makes the other party wait until it is done, so
/// that no command of a new session on the same I_T nexus runs before the old one is released.
#[derive(Debug, Default)]
struct NexusRelease(Mutex<bool>);

impl NexusRelease {
    fn release(&self, view: &DeviceServer, nexus: &Nexus) {
        let mut done = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            view.nexus_lost(nexus);
            *done = true;
        }
    }
}

/// How often logical units look at their backstore's size again (`Daemon::capacity_watch`).
const CAPACITY_CHECK: Duration = Duration::from_secs(2);

/// Shared daemon state.
pub struct Daemon {
    rt: RwLock<Arc<Runtime>>,
    pub conn_cfg: ConnConfig,
    /// Where `save` writes the configuration (the file it was loaded from).
    pub config_path: Option<PathBuf>,
    /// Listener tasks by address.
    listeners: Mutex<HashMap<SocketAddr, tokio::task::JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    /// Normal sessions by TSIH and by initiator port + target port (`iscsi_proto::table`).
    sessions: Mutex<SessionTable<SessionEntry>>,
    next_stat_sn: AtomicU32,
    /// Command data buffered at once, over all sessions (see `iscsi_proto::budget`).
    pub budget: Arc<BufferBudget>,
    /// Connections per portal still logging in, at most.
    max_login_connections: usize,
    /// A heap trim is queued (see `trim_heap`).
    trim_pending: AtomicBool,
    /// What `GET /metrics` reports (see `metrics`).
    pub metrics: Arc<Metrics>,
    /// Held across "read the configuration, change it, apply it, save it" (the admin API,
    /// SIGHUP, saving explicit ALUA transitions), so that no change is lost to another.
    pub config_lock: tokio::sync::Mutex<()>,
    /// An initiator changed ALUA states (SET TARGET PORT GROUPS): save them (`alua_saver`).
    alua_dirty: Notify,
    /// A clustered node's fence (`membership`); none on a single node.
    pub fence: Option<Arc<Fence>>,
    /// A clustered node's cluster store (set once at start).
    pub cluster_store: std::sync::OnceLock<Arc<dyn cluster::ClusterStore>>,
    /// A clustered node's shared persistent reservations (`cluster_pr`).
    pub cluster_pr: Option<Arc<ClusterPr>>,
    /// A clustered node's shared ALUA states (`cluster_alua`).
    pub cluster_alua: Option<Arc<ClusterAlua>>,
    /// Whether the portals are open: always on a single node; while it holds its lease on a
    /// clustered one.
    serving: AtomicBool,
    /// The floating portals this node holds and its lease (`portals`).
    pub portals: tokio::sync::Mutex<crate::portals::Held>,
    /// Membership got or lost a lease.
    pub lease_changed: Notify,
    /// The floating portal addresses up here now (what `sync_listeners` listens on of them).
    floating_up: Mutex<std::collections::BTreeSet<SocketAddr>>,
    /// Per listening portal: ends the connections accepted there (a floating portal let go).
    portal_close: Mutex<HashMap<SocketAddr, watch::Sender<bool>>>,
}

/// A boxed future (the `membership::Serving` hooks).
pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl crate::membership::Serving for Daemon {
    fn start_serving(
        self: Arc<Self>,
        lease: cluster::LeaseId,
    ) -> BoxFut<'static, anyhow::Result<()>> {
        Box::pin(async move {
            // The shared reservations are read again before anyone can log in.
            if let Some(pr) = &self.cluster_pr {
                pr.serving(lease).await;
            }
            self.serving.store(true, Ordering::SeqCst);
            self.sync_listeners().await
        })
    }

    fn stop_serving(self: Arc<Self>) -> BoxFut<'static, ()> {
        Box::pin(async move {
            if let Some(pr) = &self.cluster_pr {
                pr.fenced();
            }
            self.serving.store(false, Ordering::SeqCst);
            let _ = self.sync_listeners().await;
            let tsihs: Vec<u16> = self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(tsih, _, _)| tsih)
                .collect();
            for tsih in tsihs {
                self.drop_session(tsih);
            }
            // The floating addresses go down while the lease still holds (`portals`).
            let c = self.runtime().config.cluster.clone();
            if let Some(c) = c.filter(|c| !c.portals.is_empty()) {
                crate::portals::release_all(&self, &c).await;
            }
        })
    }

    fn set_lease(self: Arc<Self>, lease: cluster::LeaseId) -> BoxFut<'static, ()> {
        Box::pin(async move {
            self.portals.lock().await.lease = Some(lease);
            self.lease_changed.notify_one();
        })
    }

    fn flush_all(&self) {
        Daemon::flush_all(self);
    }
}

/// The default buffer budget: the smaller of 1 GiB and an eighth of the machine's memory.
fn default_buffer_budget() -> u64 {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let gib = 1u64 << 30;
    mem.map_or(gib, |m| (m / 8).min(gib))
}

/// Open a LUN's backstore. `shared`: a clustered node, whose partners open the same storage
/// (`block:` devices then go past the page cache, see `backstore::BlockBackstore::open_direct`).
fn open_backstore(
    spec: &BackstoreSpec,
    l: &LunConfig,
    shared: bool,
) -> anyhow::Result<Arc<dyn Backstore>> {
    Ok(match spec {
        BackstoreSpec::Ram { size } => {
            Arc::new(RamBackstore::try_new(*size).context("RAM backstore")?)
        }
        BackstoreSpec::File { path, size } => {
            if shared {
                warn!(
                    path = %path.display(),
                    "a file LUN on a clustered node goes through this node's page cache:                      share storage between nodes as a block: device (opened O_DIRECT)"
                );
            }
            Arc::new(
                FileBackstore::open(path, *size)
                    .with_context(|| format!("file backstore {}", path.display()))?,
            )
        }
        BackstoreSpec::Block { path } if shared => Arc::new(
            BlockBackstore::open_direct(path)
                .with_context(|| format!("block backstore {} (O_DIRECT)", path.display()))?,
        ),
        BackstoreSpec::Block { path } => Arc::new(
            BlockBackstore::open(path)
                .with_context(|| format!("block backstore {}", path.display()))?,
        ),
        BackstoreSpec::Rbd { pool, image } => {
            let c = l.ceph.clone().unwrap_or_default();
            let o = backstore::RbdOptions {
                pool: pool.clone(),
                image: image.clone(),
                conf: c.conf,
                client_id: c.client_id,
                keyring: c.keyring,
                timeout_secs: c.timeout_secs,
            };
            // Connecting takes network round trips (at most the timeout): off the workers.
            let store = match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(|| RbdBackstore::open(&o))
                }
                _ => RbdBackstore::open(&o),
            };
            Arc::new(store.context("RBD backstore")?)
        }
    })
}

/// Wrap `store` in the LUN's encryption: the key file's key unwraps the data key kept in the
/// state directory (`<target>_lun<N>.dek`; a RAM LUN, whose data dies with the process, gets a
/// data key of its own at each start). A loose or wrong key file stops the start. Errors and
/// logs name files, never keys.
fn encrypt(
    state_dir: Option<&std::path::Path>,
    t: &TargetConfig,
    l: &LunConfig,
    spec: &BackstoreSpec,
    enc: &crate::config::EncryptionConfig,
    store: Arc<dyn Backstore>,
) -> anyhow::Result<Arc<dyn Backstore>> {
    let ctx = || format!("target {} LUN {}: encryption", t.name, l.id);
    let kek = backstore::KeyFileKey::load(&enc.key_file).with_context(ctx)?;
    let state = match spec {
        BackstoreSpec::Ram { .. } => None,
        _ => Some(crate::pr_cli::key_state_file(state_dir, &t.name, l.id)),
    };
    let (store, origin) =
        backstore::EncryptedBackstore::open(store, l.block_size, kek, state.clone())
            .with_context(ctx)?;
    let state = state.map(|p| p.display().to_string());
    match origin {
        backstore::KeyOrigin::Created => {
            info!(target = %t.name, lun = l.id, state = ?state, "new data key made for an encrypted LUN")
        }
        backstore::KeyOrigin::Loaded | backstore::KeyOrigin::Ephemeral => {
            info!(target = %t.name, lun = l.id, state = ?state, "encrypted LUN")
        }
    }
    Ok(Arc::new(store))
}

/// Open the backstore of one LUN and build its logical unit (with its persistent reservation
/// state file in `state_dir`, see `pr_cli`).
pub fn build_lu(
    state_dir: Option<&std::path::Path>,
    metrics: &Metrics,
    fence: Option<&Arc<Fence>>,
    shared_pr: Option<&Arc<ClusterPr>>,
    t: &TargetConfig,
    l: &LunConfig,
) -> anyhow::Result<Arc<LogicalUnit>> {
    let spec = BackstoreSpec::parse(&l.backstore).map_err(anyhow::Error::msg)?;
    let mut store = open_backstore(&spec, l, fence.is_some())?;
    if let Some(enc) = &l.encryption {
        store = encrypt(state_dir, t, l, &spec, enc, store)?;
    }
    if let Some(f) = fence {
        // A clustered node's writes stop when it fences itself (`membership`).
        store = Arc::new(FencedBackstore {
            inner: store,
            fence: f.clone(),
        });
    }
    let store = metrics.timed_store(&t.name, l.id, store);
    let cfg = LuConfig {
        block_size: l.block_size,
        read_only: l.read_only,
        thin: l
            .thin
            .unwrap_or(!matches!(spec, BackstoreSpec::Block { .. }))
            && store.supports_unmap(),
        serial: l.serial.clone().unwrap_or_else(|| {
            format!(
                "{:016x}",
                scsi_core::naa_from_name(&format!("{}/{}", t.name, l.id))
            )
        }),
        naa_id: scsi_core::naa_from_name(&format!("{}/{}", t.name, l.id)),
        removable: l.removable,
        physical_block_size: l.physical_block_size.unwrap_or(0),
        pr_match_initiator_name_only: l.pr_match_initiator_name_only,
        sanitize_rate: match &l.sanitize_rate {
            Some(r) => crate::config::parse_size(r).map_err(anyhow::Error::msg)?,
            None => 0,
        },
        ..LuConfig::default()
    };
    let lu = LogicalUnit::new(cfg, store)
        .map_err(|e| anyhow::anyhow!("target {} LUN {}: {e}", t.name, l.id))?;
    // Restores APTPL persistent reservations before anyone can log in; a clustered node's
    // live in the cluster store instead (`cluster_pr`).
    let ram = matches!(spec, BackstoreSpec::Ram { .. });
    if shared_pr.is_none() {
        crate::pr_cli::attach(&lu, state_dir, &t.name, l.id, ram)?;
    }
    let lu = Arc::new(lu);
    if let Some(pr) = shared_pr {
        pr.attach(&lu);
    }
    crate::pr_cli::attach_op_journal(&lu, state_dir, &t.name, l.id, ram)?;
    info!(target = %t.name, lun = l.id, backstore = %l.backstore, "LUN ready");
    Ok(lu)
}

/// End a session's tasks whose LUN field `on_lun` selects; with `wait`, a receiver that hears
/// how many there were once none of them is with the device server any more.
fn abort_in(
    session: &iscsi_proto::SessionHandle,
    nexus: &Arc<Nexus>,
    on_lun: impl Fn(u64) -> bool,
    wait: bool,
) -> Option<(Arc<Nexus>, tokio::sync::oneshot::Receiver<usize>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: Option<Box<dyn FnOnce(usize) + Send>> = wait.then(|| {
        Box::new(move |n| {
            let _ = tx.send(n);
        }) as Box<dyn FnOnce(usize) + Send>
    });
    let n = session.abort_tasks_for(on_lun, done);
    if n > 0 {
        info!(initiator = %nexus.initiator_name, tasks = n, "tasks aborted through another I_T nexus");
    }
    wait.then(|| (nexus.clone(), rx))
}

/// Which I_T nexuses an abort reaches.
enum Whom<'a> {
    Only(&'a [Nexus]),
    AllBut(&'a Nexus),
}

/// The transport side of PREEMPT AND ABORT: routes the device server's request to the sessions
/// of the preempted I_T nexuses, under whatever LUN number their view gives the logical unit.
/// The device server waits for their commands itself (see `pr`), so nobody waits here.
struct SessionAborter(std::sync::Weak<Daemon>);

impl scsi_core::TaskAborter for SessionAborter {
    fn abort_tasks(&self, lu: &LogicalUnit, _lun: u64, nexuses: &[Nexus]) {
        let Some(d) = self.0.upgrade() else { return };
        drop(d.abort_on_lu(lu, Whom::Only(nexuses), false));
    }
}

/// The daemon's side of explicit ALUA transitions: an initiator's SET TARGET PORT GROUPS
/// changed states, which must outlive a restart. The command's thread only raises a flag; the
/// saver task writes the configuration (one write for any number of changes meanwhile).
struct AluaSaver(std::sync::Weak<Daemon>);

impl scsi_core::AluaObserver for AluaSaver {
    fn explicit_change(&self, device: &scsi_core::TargetDevice) {
        if let Some(d) = self.0.upgrade() {
            info!(target = %device.name(), "ALUA states changed by SET TARGET PORT GROUPS");
            d.alua_dirty.notify_one();
        }
    }
}

impl Daemon {
    /// Hand every target device of the runtime the session aborter and the ALUA saver.
    fn wire_devices(self: &Arc<Self>, rt: &Runtime) {
        let aborter: Arc<dyn scsi_core::TaskAborter> =
            Arc::new(SessionAborter(Arc::downgrade(self)));
        let saver: Arc<dyn scsi_core::AluaObserver> = Arc::new(AluaSaver(Arc::downgrade(self)));
        for t in &rt.targets {
            t.device.set_task_aborter(aborter.clone());
            t.device.set_alua_observer(saver.clone());
        }
    }

    /// A clustered node found its cluster store: follow the shared ALUA states, applying
    /// them whenever they or the members change.
    pub fn start_cluster_alua(self: &Arc<Self>, store: Arc<dyn cluster::ClusterStore>) {
        let Some(alua) = &self.cluster_alua else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(alua.clone().follow(
            store,
            Box::new(move || {
                if let Some(d) = weak.upgrade() {
                    d.refresh_alua();
                }
            }),
        ));
    }

    /// Put every target's ALUA groups in the states the cluster wants now.
    fn refresh_alua(&self) {
        let Some(alua) = &self.cluster_alua else {
            return;
        };
        let rt = self.runtime();
        for tc in &rt.config.targets {
            let Some(t) = rt.target(&tc.name) else {
                continue;
            };
            let (groups, status) = alua.groups_and_status(tc);
            let change = t.device.configure_alua(groups, tc.alua_transition_secs);
            t.device.alua().set_status(&status);
            if change.changed {
                info!(target = %tc.name, "cluster: ALUA states changed");
            }
            if change.transitioning {
                Self::schedule_alua_one(crate::runtime::AluaPending {
                    device: t.device.clone(),
                    generation: change.generation,
                    secs: tc.alua_transition_secs,
                });
            }
        }
    }

    /// A clustered node found its cluster store: follow the shared persistent reservations.
    pub fn start_cluster_pr(self: &Arc<Self>, store: Arc<dyn cluster::ClusterStore>) {
        let Some(pr) = &self.cluster_pr else { return };
        let weak = Arc::downgrade(self);
        pr.start(
            store,
            Box::new(move |lu, victims| {
                if let Some(d) = weak.upgrade() {
                    drop(d.abort_on_lu(lu, Whom::Only(victims), false));
                }
            }),
        );
    }

    /// Write the running configuration to the file the daemon was started from, atomically (a
    /// daemon started without one keeps its changes in memory).
    pub async fn save_config(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.config_path {
            let text = toml::to_string(&self.runtime().config)?;
            // fsyncs: off the workers.
            tokio::task::block_in_place(|| crate::admin::write_atomic(path, text.as_bytes()))?;
        }
        Ok(())
    }

    /// Finish the implicit ALUA transitions `rt` began, each after its transition time.
    fn schedule_alua(rt: &Runtime) {
        for p in rt.alua_pending.iter().cloned() {
            Self::schedule_alua_one(p);
        }
    }

    fn schedule_alua_one(p: crate::runtime::AluaPending) {
        info!(target = %p.device.name(), secs = p.secs, "ALUA transition begins");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(p.secs.into())).await;
            if p.device.finish_alua_transition(p.generation) {
                info!(target = %p.device.name(), "ALUA transition done");
            }
        });
    }

    /// Wait until no target port group of any target is transitioning (bounded: the longest
    /// transition time plus a margin).
    pub async fn alua_settled(&self) {
        let limit = Instant::now() + Duration::from_secs(u64::from(u8::MAX) + 5);
        loop {
            let busy = self
                .runtime()
                .targets
                .iter()
                .any(|t| t.device.alua().groups().iter().any(|g| g.target.is_some()));
            if !busy || Instant::now() > limit {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every [`CAPACITY_CHECK`], each logical unit looks at its backstore's size again
    /// (`LogicalUnit::refresh_capacity`), so that a file, block device or RBD image the
    /// operator grew (or shrank) while served is followed: initiators get CAPACITY DATA HAS
    /// CHANGED and READ CAPACITY answers the new size. Polling, because there is no one event
    /// for all three (a file's size, a device's resize uevent, an image header's watch); the
    /// cost is a stat, an ioctl or a librbd call per LU per period, on the blocking pool. A
    /// size that cannot be read is logged once, until it can again.
    async fn capacity_watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CAPACITY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = std::collections::HashSet::<(String, u64)>::new();
        loop {
            tick.tick().await;
            let lus: Vec<(String, u64, Arc<LogicalUnit>)> = self
                .runtime()
                .targets
                .iter()
                .flat_map(|t| {
                    t.lus
                        .iter()
                        .map(|(lun, (_, lu))| (t.name.clone(), *lun, lu.clone()))
                })
                .collect();
            let mut still = std::mem::take(&mut failing);
            // LUs removed since are forgotten.
            still.retain(|(t, l)| lus.iter().any(|(t2, l2, _)| t == t2 && l == l2));
            let checked = tokio::task::spawn_blocking(move || {
                for (target, lun, lu) in lus {
                    match lu.refresh_capacity() {
                        Ok(changed) => {
                            still.remove(&(target.clone(), lun));
                            if let Some((before, after)) = changed {
                                info!(
                                    target = %target,
                                    lun,
                                    blocks_before = before,
                                    blocks_after = after,
                                    "capacity changed: CAPACITY DATA HAS CHANGED for every initiator"
                                );
                            }
                        }
                        Err(e) => {
                            if still.insert((target.clone(), lun)) {
                                warn!(target = %target, lun, "cannot read the backstore's size: {e}");
                            }
                        }
                    }
                }
                still
            })
            .await;
            failing = checked.unwrap_or_default();
        }
    }

    /// Save the ALUA states initiators set (SET TARGET PORT GROUPS) into the configuration,
    /// whenever they change.
    async fn alua_saver(self: Arc<Self>) {
        loop {
            self.alua_dirty.notified().await;
            if let Err(e) = self.save_alua_states().await {
                warn!("saving ALUA states failed: {e:#}");
            }
        }
    }

    async fn save_alua_states(self: &Arc<Self>) -> anyhow::Result<()> {
        let _g = self.config_lock.lock().await;
        let rt = self.runtime();
        let mut c = rt.config.clone();
        if let Some(alua) = &self.cluster_alua {
            alua.intent_into_config(&mut c);
        }
        let before = c.clone();
        let changed = alua_into_config(&rt, &mut c);
        if changed {
            // A clustered node tells the others (an initiator's choice holds on every node).
            if let (Some(alua), Some(store)) = (&self.cluster_alua, self.cluster_store.get()) {
                alua.publish(&**store, &before, &c, crate::cluster_alua::By::Initiator)
                    .await?;
            }
            self.apply(c).await?;
            self.save_config().await?;
        }
        Ok(())
    }

    pub fn build(cfg: &Config, config_path: Option<PathBuf>) -> anyhow::Result<Arc<Daemon>> {
        let state_dir = cfg.settings.state_dir.as_deref();
        let metrics = Arc::new(Metrics::new());
        // A clustered node starts fenced: it serves once it holds its lease (`membership`).
        let fence = cfg.cluster.as_ref().map(|_| Arc::new(Fence::new(true)));
        let cluster_pr = cfg
            .cluster
            .as_ref()
            .map(|c| ClusterPr::new(&c.prefix, &c.node, Duration::from_secs(c.lease_secs)));
        let cluster_alua = cfg.cluster.as_ref().map(|c| ClusterAlua::new(&c.prefix));
        let rt = Runtime::build(
            cfg,
            None,
            &mut |t, l| {
                build_lu(
                    state_dir,
                    &metrics,
                    fence.as_ref(),
                    cluster_pr.as_ref(),
                    t,
                    l,
                )
            },
            &|t| alua_groups(cluster_alua.as_ref(), t),
        )?;
        let s = &cfg.settings;
        let conn_cfg = ConnConfig {
            offer: iscsi_proto::TargetOffer {
                max_recv_data_segment_length: s.max_recv_data_segment_length,
                max_burst_length: s.max_burst_length,
                first_burst_length: s.first_burst_length,
                initial_r2t: s.initial_r2t,
                immediate_data: s.immediate_data,
                max_outstanding_r2t: s.max_outstanding_r2t,
                max_connections: s.max_connections,
                error_recovery_level: s.error_recovery_level,
                default_time2wait: s.default_time2wait,
                default_time2retain: s.default_time2retain,
                allow_header_digest: s.digests,
                allow_data_digest: s.digests,
            },
            cmd_window: s.queue_depth,
            // SBC-4 §6.6.4: no command moves more than the LU's MAXIMUM TRANSFER LENGTH, so no
            // write buffer needs to be larger.
            max_write_len: scsi_core::limits::MAX_TRANSFER_BYTES,
            nop_interval: (s.nop_interval_secs > 0)
                .then(|| Duration::from_secs(s.nop_interval_secs)),
            nop_timeout: Duration::from_secs(s.nop_timeout_secs.max(1)),
            login_timeout: Duration::from_secs(s.login_timeout_secs.max(1)),
            data_out_timeout: (s.data_out_timeout_secs > 0)
                .then(|| Duration::from_secs(s.data_out_timeout_secs)),
        };
        let limit = match &s.buffer_budget {
            Some(b) => crate::config::parse_size(b).map_err(anyhow::Error::msg)?,
            None => default_buffer_budget(),
        };
        // One session holds at most an eighth of the budget, so that a few sessions that
        // never finish their writes leave the rest to everybody else.
        let budget = BufferBudget::new(
            limit,
            limit / 8,
            u64::from(scsi_core::limits::MAX_TRANSFER_BYTES),
        );
        info!(
            limit_mib = budget.limit() >> 20,
            per_session_mib = budget.per_session() >> 20,
            "buffer budget"
        );
        let d = Arc::new(Daemon {
            rt: RwLock::new(Arc::new(rt)),
            conn_cfg,
            config_path,
            listeners: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            sessions: Mutex::new(SessionTable::new()),
            next_stat_sn: AtomicU32::new(0x1000),
            budget,
            max_login_connections: s.max_login_connections as usize,
            trim_pending: AtomicBool::new(false),
            metrics,
            config_lock: tokio::sync::Mutex::new(()),
            alua_dirty: Notify::new(),
            serving: AtomicBool::new(fence.is_none()),
            fence,
            cluster_store: std::sync::OnceLock::new(),
            cluster_pr,
            cluster_alua,
            portals: tokio::sync::Mutex::new(Default::default()),
            lease_changed: Notify::new(),
            floating_up: Mutex::new(Default::default()),
            portal_close: Mutex::new(HashMap::new()),
        });
        d.wire_devices(&d.runtime());
        let weak = Arc::downgrade(&d);
        d.metrics.set_alua_source(Box::new(move || {
            let Some(d) = weak.upgrade() else {
                return Vec::new();
            };
            let rt = d.runtime();
            let mut v = Vec::new();
            for t in &rt.targets {
                for g in t.device.alua().groups() {
                    v.push((t.name.clone(), g.group.id, g.group.state));
                }
            }
            v
        }));
        Ok(d)
    }

    /// The runtime in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.rt.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Flush every LUN (clean shutdown).
    pub fn flush_all(&self) {
        for t in &self.runtime().targets {
            for (id, (_, lu)) in &t.lus {
                if let Err(e) = lu.backstore().flush() {
                    warn!(target = %t.name, lun = id, "flush at shutdown failed: {e}");
                }
            }
        }
    }
}

/// A target's ALUA groups in the states they should be in: the configuration's, or on a
/// clustered node the cluster's (`cluster_alua`).
fn alua_groups(cluster: Option<&Arc<ClusterAlua>>, t: &TargetConfig) -> Vec<scsi_core::AluaGroup> {
    match cluster {
        Some(c) => c.groups(t),
        None => t.effective_alua_groups(),
    }
}

/// Copy into `c` the ALUA states initiators set with SET TARGET PORT GROUPS since `rt`'s
/// configuration was written, so that a change built from `c` keeps them (the default group is
/// written out when its state moved). Returns whether `c` changed.
pub fn alua_into_config(rt: &Runtime, c: &mut Config) -> bool {
    let mut changed = false;
    for t in &mut c.targets {
        let Some(now) = rt.target(&t.name).map(|r| r.device.alua().groups()) else {
            continue;
        };
        let mut groups = t.alua_group_configs();
        let mut this = false;
        for g in &mut groups {
            let Some(live) = now.iter().find(|x| x.group.id == g.id) else {
                continue;
            };
            // Only a settled state an initiator chose; an operator's transition under way is
            // in the configuration already.
            let explicit = live.status == scsi_core::alua_status::BY_SET_TARGET_PORT_GROUPS;
            if explicit && live.target.is_none() && live.group.state != g.state {
                g.state = live.group.state;
                this = true;
            }
        }
        if this {
            t.alua_groups = groups;
            changed = true;
        }
    }
    changed
}

/// Serve until [`Daemon::shutdown`] is called.
pub async fn serve(daemon: Arc<Daemon>) -> anyhow::Result<()> {
    daemon.sync_listeners().await?;
    let saver = tokio::spawn(daemon.clone().alua_saver());
    let capacity = tokio::spawn(daemon.clone().capacity_watch());
    for line in connect_hints(&daemon.runtime()) {
        info!("{line}");
    }
    let mut shutdown = daemon.shutdown_rx();
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    for (_, t) in daemon
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
    {
        t.abort();
    }
    saver.abort();
    capacity.abort();
    Ok(())
}

/// How an initiator reaches each enabled portal group: an open-iscsi discovery and login, and
/// the libiscsi URL of its first LUN.
fn connect_hints(rt: &Runtime) -> Vec<String> {
    let mut v = Vec::new();
    for t in &rt.targets {
        for g in t.groups.iter().filter(|g| g.enabled) {
            let Some(p) = g.portals.first() else {
                continue;
            };
            let lun = t.lus.keys().next().copied().unwrap_or(0);
            v.push(format!(
                "connect: iscsiadm -m discovery -t sendtargets -p {p} && iscsiadm -m node -T {} -p {p} --login",
                t.name
            ));
            v.push(format!(
                "connect: iscsi://{p}/{}/{lun} (libiscsi, QEMU)",
                t.name
            ));
        }
    }
    v
}

impl Daemon {
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Which floating portal addresses are up here (`portals`); `sync_listeners` listens on
    /// those of them only.
    pub fn set_floating_up(&self, up: &std::collections::BTreeSet<SocketAddr>) {
        *self.floating_up.lock().unwrap_or_else(|e| e.into_inner()) = up.clone();
    }

    /// End every connection accepted on portal `addr` (its address is let go).
    pub fn close_portal_connections(&self, addr: &SocketAddr) {
        if let Some(tx) = self
            .portal_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr)
        {
            let _ = tx.send(true);
        }
    }

    /// Listen on every portal of the runtime and stop listening on portals it no longer has.
    /// A portal that cannot be bound is an error (at start, the daemon does not come up).
    pub async fn sync_listeners(self: &Arc<Self>) -> anyhow::Result<()> {
        // A fenced cluster node listens nowhere; a floating portal only where it is up.
        let want = if self.serving.load(Ordering::SeqCst) {
            let rt = self.runtime();
            let floating: Vec<SocketAddr> = rt
                .config
                .cluster
                .iter()
                .flat_map(|c| c.portals.iter().map(|p| p.address))
                .collect();
            let up = self
                .floating_up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            rt.listen_addrs()
                .into_iter()
                .filter(|a| !floating.contains(a) || up.contains(a))
                .collect()
        } else {
            Vec::new()
        };
        let have: Vec<SocketAddr> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for addr in have.iter().filter(|a| !want.contains(a)) {
            if let Some(t) = self
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(addr)
            {
                t.abort();
                info!(%addr, "portal closed");
            }
        }
        for addr in want.into_iter().filter(|a| !have.contains(a)) {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            info!(%addr, "portal listening");
            // The connections accepted here end on shutdown, or when the portal is let go.
            let (close, conns) = watch::channel(false);
            let mut sd = self.shutdown_rx();
            let fwd = close.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = sd.changed() => { let _ = fwd.send(true); }
                    _ = fwd.closed() => {}
                }
            });
            self.portal_close
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr, close);
            let task = tokio::spawn(accept_loop(l, self.clone(), conns));
            self.listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr, task);
        }
        Ok(())
    }

    /// Replace the configuration of the running daemon: build the new runtime (reusing what
    /// did not change), listen on new portals, and end the sessions the new configuration no
    /// longer allows. Nothing changes if the new configuration cannot be built.
    pub async fn apply(self: &Arc<Self>, cfg: Config) -> anyhow::Result<()> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let old = self.runtime();
        let metrics = self.metrics.clone();
        anyhow::ensure!(
            cfg.cluster == old.config.cluster,
            "the [cluster] settings change only with a restart"
        );
        let fence = self.fence.clone();
        let shared_pr = self.cluster_pr.clone();
        let shared_alua = self.cluster_alua.clone();
        let new = tokio::task::spawn_blocking(move || {
            let state_dir = cfg.settings.state_dir.clone();
            Runtime::build(
                &cfg,
                Some(&old),
                &mut |t, l| {
                    build_lu(
                        state_dir.as_deref(),
                        &metrics,
                        fence.as_ref(),
                        shared_pr.as_ref(),
                        t,
                        l,
                    )
                },
                &|t| alua_groups(shared_alua.as_ref(), t),
            )
        })
        .await??;
        self.wire_devices(&new);
        Self::schedule_alua(&new);
        let new = Arc::new(new);
        *self.rt.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        // A clustered node's ALUA STATUS CODEs are the cluster's too.
        self.refresh_alua();
        self.sync_listeners().await?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for (tsih, k, e) in sessions.iter() {
            let still = new
                .target(&k.target)
                .and_then(|t| {
                    t.group(k.tpgt)
                        .filter(|g| g.enabled)
                        .and_then(|g| t.view_for(g, &k.initiator))
                })
                .is_some_and(|(key, _)| key == e.view_key);
            if !still {
                info!(initiator = %k.initiator, target = %k.target, tsih, "configuration change ends session");
                let _ = e.kill.send(true);
            }
        }
        Ok(())
    }

    /// Sessions for the admin API.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<SessionInfo> = s
            .iter()
            .map(|(tsih, k, e)| SessionInfo {
                tsih,
                initiator: k.initiator.clone(),
                isid: format!("{:012x}", k.isid),
                target: k.target.clone(),
                tpg_tag: k.tpgt,
                peer: e.peer.to_string(),
                luns: e
                    .target
                    .views
                    .get(&e.view_key)
                    .map(|v| v.luns())
                    .unwrap_or_default(),
                connections: e
                    .session
                    .as_ref()
                    .map(|s| s.connections())
                    .unwrap_or_default(),
                io: e.io.snapshot(),
                params: e.params.clone(),
            })
            .collect();
        v.sort_by_key(|x| x.tsih);
        v
    }

    /// Ask every session whose I_T nexus `whom` names to abort its tasks on `lu`, under the LUN
    /// its own view gives it (SAM-5 §5.6). With `wait`, each returns a receiver that hears how
    /// many tasks it aborted once none of them is with the device server any more.
    fn abort_on_lu(
        &self,
        lu: &LogicalUnit,
        whom: Whom,
        wait: bool,
    ) -> Vec<(Arc<Nexus>, tokio::sync::oneshot::Receiver<usize>)> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut asked = Vec::new();
        for (_, _, e) in sessions.iter() {
            let reached = match whom {
                Whom::Only(list) => list.contains(&e.nexus),
                Whom::AllBut(n) => *e.nexus != *n,
            };
            let (Some(view), Some(session)) = (
                e.target.views.get(&e.view_key).filter(|_| reached),
                &e.session,
            ) else {
                continue;
            };
            for mapped in view.luns() {
                if view.lu(mapped).is_some_and(|x| std::ptr::eq(&*x, lu)) {
                    let on_lun = move |field| scsi_core::lun_from_wire(field) == Some(mapped);
                    asked.extend(abort_in(session, &e.nexus, on_lun, wait));
                }
            }
        }
        asked
    }

    /// Ask every session with `target` but the one of nexus `except` to abort all its tasks
    /// (TARGET WARM/COLD RESET, SAM-5 §6.3.2); as [`Daemon::abort_on_lu`] with `wait`.
    fn abort_on_target(
        &self,
        target: &str,
        except: &Nexus,
    ) -> Vec<(Arc<Nexus>, tokio::sync::oneshot::Receiver<usize>)> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut asked = Vec::new();
        for (_, k, e) in sessions.iter() {
            if k.target != target || *e.nexus == *except {
                continue;
            }
            if let Some(session) = &e.session {
                asked.extend(abort_in(session, &e.nexus, |_| true, true));
            }
        }
        asked
    }

    /// End every session with `target` except the one of nexus `except` (TARGET COLD RESET).
    pub fn end_target_sessions(&self, target: &str, except: &Nexus) {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for (tsih, k, e) in s.iter() {
            if k.target == target && *e.nexus != *except {
                info!(target = %k.target, tsih, "target cold reset ends session");
                let _ = e.kill.send(true);
            }
        }
    }

    /// End a session by TSIH, telling its connections first (RFC 7143 §11.9.1, AsyncEvent 3:
    /// the target drops all connections). Returns whether it existed.
    pub fn drop_session(&self, tsih: u16) -> bool {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match s.get(tsih) {
            Some(e) => {
                match &e.session {
                    Some(h) => h.drop_all("dropped by the operator"),
                    // Still logging in: no connection to tell.
                    None => {
                        let _ = e.kill.send(true);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// The engine of session `tsih`, once its leading login is through.
    fn session_handle(&self, tsih: u16) -> Option<iscsi_proto::SessionHandle> {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.get(tsih).and_then(|e| e.session.clone())
    }

    /// Drop connection `cid` of session `tsih`, telling it first (AsyncEvent 2). Returns
    /// whether that connection was open.
    pub fn drop_connection(&self, tsih: u16, cid: u16) -> bool {
        self.session_handle(tsih)
            .is_some_and(|h| h.drop_connection(cid, Instant::now()))
    }

    /// Ask session `tsih` to log out within `within` seconds (AsyncEvent 1, on each of its
    /// connections); if it is still there then, it is dropped. Returns how many connections
    /// were asked (`None`: no such session).
    pub fn logout_session(self: &Arc<Self>, tsih: u16, within: u16) -> Option<usize> {
        let h = self.session_handle(tsih)?;
        let n = h.request_logout(within);
        let d = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(within))).await;
            if !h.is_over() {
                info!(tsih, "no logout within the time asked: session dropped");
                h.drop_all("no logout within the time asked");
                drop(d);
            }
        });
        Some(n)
    }
}

/// One session as the admin API reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionInfo {
    pub tsih: u16,
    pub initiator: String,
    pub isid: String,
    pub target: String,
    pub tpg_tag: u16,
    pub peer: String,
    pub luns: Vec<u64>,
    /// CIDs of the session's open connections (MC/S).
    pub connections: Vec<u16>,
    /// What its commands did so far.
    pub io: IoSnapshot,
    #[serde(serialize_with = "ser_params")]
    pub params: iscsi_proto::Negotiated,
}

fn ser_params<S: serde::Serializer>(p: &iscsi_proto::Negotiated, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    m.serialize_entry(
        "HeaderDigest",
        if p.header_digest { "CRC32C" } else { "None" },
    )?;
    m.serialize_entry("DataDigest", if p.data_digest { "CRC32C" } else { "None" })?;
    m.serialize_entry("InitialR2T", &p.initial_r2t)?;
    m.serialize_entry("ImmediateData", &p.immediate_data)?;
    m.serialize_entry("MaxRecvDataSegmentLength", &p.target_mrdsl)?;
    m.serialize_entry("InitiatorMaxRecvDataSegmentLength", &p.initiator_mrdsl)?;
    m.serialize_entry("MaxBurstLength", &p.max_burst_length)?;
    m.serialize_entry("FirstBurstLength", &p.first_burst_length)?;
    m.serialize_entry("MaxOutstandingR2T", &p.max_outstanding_r2t)?;
    m.serialize_entry("MaxConnections", &p.max_connections)?;
    m.serialize_entry("ErrorRecoveryLevel", &p.error_recovery_level)?;
    m.serialize_entry("DefaultTime2Wait", &p.default_time2wait)?;
    m.serialize_entry("DefaultTime2Retain", &p.default_time2retain)?;
    m.end()
}

/// One connection of a portal that has not finished logging in; the slot is given back when
/// the login completes or the connection ends.
struct LoginSlot(Option<Arc<AtomicUsize>>);

impl LoginSlot {
    fn done(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        self.done();
    }
}

async fn accept_loop(l: TcpListener, daemon: Arc<Daemon>, shutdown: watch::Receiver<bool>) {
    let logging_in = Arc::new(AtomicUsize::new(0));
    let mut refused = 0u64;
    loop {
        match l.accept().await {
            Ok((sock, peer)) => {
                // Connections that have not logged in yet cost a task and buffers each, and
                // anybody can open them: at most `max_login_connections` per portal.
                if logging_in.fetch_add(1, Ordering::AcqRel) >= daemon.max_login_connections {
                    logging_in.fetch_sub(1, Ordering::AcqRel);
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(%peer, refused, "too many connections logging in on this portal; closed");
                    }
                    drop(sock);
                    continue;
                }
                let slot = LoginSlot(Some(logging_in.clone()));
                let _ = sock.set_nodelay(true);
                let d = daemon.clone();
                let sd = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(e) = run_connection(sock, peer, d, sd, slot).await {
                        debug!(%peer, "connection ended: {e:#}");
                    }
                });
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The session a connection belongs to once logged in.
struct Attached {
    /// TSIH and CID in the session table.
    session: Option<(u16, u16)>,
    /// TSIH of a discovery session.
    discovery: Option<u16>,
    target: Option<Arc<Target>>,
    /// The session's LUN view (mapped LUN numbers → logical units).
    view: Option<Arc<DeviceServer>>,
    nexus: Option<Arc<Nexus>>,
    nexus_released: Arc<NexusRelease>,
    kill: Option<watch::Receiver<bool>>,
    /// Notified when the session's buffer budget may have room: shared by the session's
    /// connections, so that any of them still open moves the session on.
    budget_room: Arc<Notify>,
    /// The portal group's counters, once the login names it.
    port: Option<PortMetrics>,
    /// Counted as an open connection (`port`).
    counted: bool,
    /// Per-LUN counters by LUN field, with the logical unit they were resolved for.
    lun_metrics: HashMap<u64, (usize, Arc<LuMetrics>)>,
    /// The session's own counters.
    io: Option<Arc<IoStats>>,
}

impl Attached {
    /// The counters of the logical unit LUN field `lun` reaches (resolved once per LUN).
    fn lu_metrics(&mut self, daemon: &Daemon, lun: u64) -> Option<Arc<LuMetrics>> {
        let view = self.view.as_ref()?;
        let lu = scsi_core::lun_from_wire(lun).and_then(|l| view.lu(l))?;
        let ptr = Arc::as_ptr(&lu) as usize;
        if let Some((p, m)) = self.lun_metrics.get(&lun) {
            if *p == ptr {
                return Some(m.clone());
            }
        }
        let target = self.target.as_ref()?;
        // The device is the target's for good: it knows LUNs added since this login too.
        let id = target.device.id_of(&lu)?;
        let m = daemon.metrics.lun(&target.name, id);
        self.lun_metrics.insert(lun, (ptr, m.clone()));
        Some(m)
    }
}

/// How long a task management function waits for other sessions to end their tasks. A
/// session whose driver is stuck (its initiator stopped reading) must not hold the function
/// for ever; past this the function completes anyway, and says so in the log. Shorter than
/// initiators' own TMF timeouts (open-iscsi waits 30 s for a LUN or target reset, 15 s for
/// an abort), so the answer still reaches an initiator that waits.
const TMF_ABORT_WAIT: Duration = Duration::from_secs(10);

/// The parts of a task management function beyond the calling session (its own tasks are
/// already ended by the connection engine): end the tasks of the other I_T nexuses the
/// function covers, wait until they are gone, then reset the device server's state.
async fn task_management(
    daemon: &Arc<Daemon>,
    a: TmfAction,
    view: Arc<DeviceServer>,
    nexus: Arc<Nexus>,
    target: Arc<Target>,
) {
    let lu = match a {
        TmfAction::ClearTaskSet { lun } | TmfAction::LunReset { lun } => {
            match scsi_core::lun_from_wire(lun).and_then(|l| view.lu(l)) {
                Some(lu) => Some(lu),
                None => return, // the engine answered LUN DOES NOT EXIST
            }
        }
        TmfAction::TargetWarmReset | TmfAction::TargetColdReset => None,
    };
    // SAM-5 §7.4 (CLEAR TASK SET), §7.7 (LOGICAL UNIT RESET), §6.3.2 (hard reset): with one
    // task set per logical unit (TST = 000b), every I_T nexus's tasks end.
    let asked = match &lu {
        Some(lu) => daemon.abort_on_lu(lu, Whom::AllBut(&nexus), true),
        None => daemon.abort_on_target(&target.name, &nexus),
    };
    let deadline = tokio::time::Instant::now() + TMF_ABORT_WAIT;
    let mut cleared = Vec::new();
    for (n, rx) in asked {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(tasks)) if tasks > 0 => cleared.push(n),
            // Nothing aborted there, or the session ended meanwhile (its tasks with it).
            Ok(_) => {}
            Err(_) => warn!(
                initiator = %n.initiator_name,
                "task management went on without waiting longer for another session's tasks"
            ),
        }
    }
    if a == TmfAction::TargetColdReset {
        // RFC 7143 §11.5.1: a cold reset ends the target's connections to all initiators
        // (this one closes itself after the response).
        daemon.end_target_sessions(&target.name, &nexus);
    }
    // Device-server side effects (unit attentions, releases, mode pages): off the workers.
    let _ = tokio::task::spawn_blocking(move || match (a, lu) {
        (TmfAction::ClearTaskSet { .. }, Some(lu)) => {
            for n in &cleared {
                lu.commands_cleared(n);
            }
        }
        (TmfAction::LunReset { .. }, Some(lu)) => lu.logical_unit_reset(),
        (TmfAction::TargetWarmReset | TmfAction::TargetColdReset, _) => {
            // The whole SCSI target device, whatever LUNs this initiator's view shows.
            target.device.reset();
        }
        _ => {}
    })
    .await;
}

/// Run one SCSI task on the device server (the view of the session).
fn request<'a>(
    nexus: &'a Nexus,
    task: &'a iscsi_proto::ScsiTask,
    cancel: Option<&'a AtomicBool>,
) -> ScsiRequest<'a> {
    ScsiRequest {
        nexus,
        lun: task.lun,
        cdb: &task.cdb,
        data_out: &task.data_out,
        expected_data_in: if task.read { task.expected_len } else { 0 },
        attr: task_attr(task.attr),
        cancel,
    }
}

/// What a command did: metrics, session statistics, and the outcome for the session engine.
fn finish_task(
    task: &iscsi_proto::ScsiTask,
    r: scsi_core::ScsiResponse,
    took: Duration,
    metrics: Option<&LuMetrics>,
    session_io: Option<&IoStats>,
) -> TaskOutcome {
    let kind = Kind::of(&task.cdb);
    if let Some(m) = metrics {
        m.record(
            kind,
            took,
            r.status.0,
            &r.sense,
            r.data_in.len(),
            task.data_out.len(),
        );
    }
    if let Some(io) = session_io {
        io.record(
            kind,
            took,
            r.status.0 == 0,
            r.data_in.len(),
            task.data_out.len(),
        );
    }
    TaskOutcome {
        status: r.status.0,
        sense: r.sense,
        data_in: r.data_in,
        data_out_len: r.data_out_len,
    }
}

/// [`run_task`] for the commands `DeviceServer::is_async` picks: awaits the backstore.
async fn run_task_async(
    view: &DeviceServer,
    nexus: &Nexus,
    task: &iscsi_proto::ScsiTask,
    metrics: Option<&LuMetrics>,
    session_io: Option<&IoStats>,
) -> TaskOutcome {
    let t0 = Instant::now();
    let r = view.execute_async(&request(nexus, task, None)).await;
    finish_task(task, r, t0.elapsed(), metrics, session_io)
}

fn run_task(
    view: &DeviceServer,
    nexus: &Nexus,
    task: &iscsi_proto::ScsiTask,
    cancel: Option<&AtomicBool>,
    metrics: Option<&LuMetrics>,
    session_io: Option<&IoStats>,
) -> TaskOutcome {
    let t0 = Instant::now();
    let r = view.execute(&request(nexus, task, cancel));
    finish_task(task, r, t0.elapsed(), metrics, session_io)
}

/// A task's place in its logical unit's task set, as the session engine holds it.
struct LuTask(scsi_core::TaskEntry);

impl iscsi_proto::TaskSetEntry for LuTask {
    fn blocked(&self) -> bool {
        self.0.blocked()
    }
}

fn task_attr(a: u8) -> TaskAttr {
    match a {
        0 => TaskAttr::Untagged,
        2 => TaskAttr::Ordered,
        3 => TaskAttr::HeadOfQueue,
        4 => TaskAttr::Aca,
        _ => TaskAttr::Simple,
    }
}

async fn run_connection(
    sock: TcpStream,
    peer: SocketAddr,
    daemon: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
    mut login_slot: LoginSlot,
) -> anyhow::Result<()> {
    let local = sock.local_addr()?;
    info!(%peer, %local, "connection accepted");
    let (mut rd, mut wr) = sock.into_split();
    let now = Instant::now();
    let stat_sn = daemon.next_stat_sn.fetch_add(0x100, Ordering::Relaxed);
    let mut conn = Connection::with_random(
        daemon.conn_cfg.clone(),
        now,
        stat_sn,
        random_bytes().context("reading /dev/urandom for the CHAP challenge")?,
    );
    // The session's share of the buffer budget; the budget wakes us when room comes back.
    let budget_room = Arc::new(Notify::new());
    let waker = budget_room.clone();
    let budget_room_of_session = budget_room.clone();
    conn.set_budget(daemon.budget.account(Arc::new(move || waker.notify_one())));
    // Another connection of the session queued output or events for this one.
    let link_woken = Arc::new(Notify::new());
    let mut decoder = Decoder::new(8192);
    // The writer task owns the socket's write half so reads never wait on writes.
    // Bounded: an initiator that stops reading stops us reading its requests (backpressure)
    // instead of growing our memory.
    let (out_tx, mut out_rx) = mpsc::channel::<Frames>(64);
    let writer = tokio::spawn(async move {
        while let Some(frames) = out_rx.recv().await {
            if frames.write_to(&mut wr).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(iscsi_proto::TaskId, TaskOutcome)>();
    // Task management actions carried out beside the loop (see `ConnEvent::Tmf`).
    let (tmf_done_tx, mut tmf_done_rx) = mpsc::unbounded_channel::<()>();
    // Cancel flags of the tasks running on the blocking pool (ABORT TASK of a SANITIZE).
    let mut cancels: HashMap<iscsi_proto::TaskId, Arc<AtomicBool>> = HashMap::new();
    let mut att = Attached {
        session: None,
        discovery: None,
        target: None,
        view: None,
        nexus: None,
        nexus_released: Arc::default(),
        kill: None,
        budget_room: budget_room_of_session,
        port: None,
        counted: false,
        lun_metrics: HashMap::new(),
        io: None,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut start = 0usize;
    let mut closing: Option<&'static str> = None;
    let mut peer_closed = false;
    // A PDU was skipped after a header digest error: the next header must check out.
    let mut boundary_doubtful = false;

    loop {
        // Decode every whole PDU already buffered. During login, one PDU at a time: its events
        // (login completion, new framing) must be applied before the next PDU is decoded.
        let mut progressed = false;
        while !conn.is_closed() {
            match decoder.decode(&buf[start..]) {
                Ok(Some((pdu, used))) => {
                    start += used;
                    progressed = true;
                    boundary_doubtful = false;
                    let rt = daemon.runtime();
                    let view = PortalView { rt: &rt, local };
                    conn.handle_pdu(Instant::now(), pdu, &view);
                    if !conn.is_full_feature() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(FrameError::DataDigest { bhs, consumed }) => {
                    start += consumed;
                    progressed = true;
                    warn!(%peer, "data digest error");
                    if let Some(p) = &att.port {
                        p.digest_error();
                    }
                    conn.handle_digest_error(&bhs);
                }
                Err(FrameError::HeaderDigest { consumed, .. })
                    if conn.error_recovery_level() >= 1 && !boundary_doubtful =>
                {
                    // RFC 7143 §7.8: above ErrorRecoveryLevel 0 the PDU is dropped unseen (the
                    // initiator finds the gap: command retry, SNACK, recovery R2T). Its lengths
                    // may be wrong, so the boundary stands only if the next header checks out.
                    start += consumed;
                    progressed = true;
                    boundary_doubtful = true;
                    warn!(%peer, "header digest error: PDU dropped");
                    if let Some(p) = &att.port {
                        p.digest_error();
                    }
                }
                Err(e) => {
                    warn!(%peer, "unrecoverable framing error: {e:?}");
                    if let (Some(p), FrameError::HeaderDigest { .. }) = (&att.port, &e) {
                        p.digest_error();
                    }
                    conn.shutdown("framing error");
                    break;
                }
            }
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
        }
        // Act on what the engine produced.
        let mut batch = Frames::default();
        loop {
            let events = conn.take_events();
            if events.is_empty() {
                break;
            }
            for ev in events {
                match ev {
                    ConnEvent::LoginComplete(r) => {
                        login_complete(&daemon, &mut conn, &r, local, peer, &mut att).await;
                        login_slot.done();
                        let w = link_woken.clone();
                        conn.set_waker(Arc::new(move || w.notify_one()));
                    }
                    ConnEvent::Framing {
                        header_digest,
                        data_digest,
                        max_recv,
                    } => {
                        decoder.header_digest = header_digest;
                        decoder.data_digest = data_digest;
                        decoder.max_data = max_recv;
                    }
                    ConnEvent::Execute(task) => {
                        let (Some(t), Some(nexus)) = (att.view.clone(), att.nexus.clone()) else {
                            continue;
                        };
                        let lm = att.lu_metrics(&daemon, task.lun);
                        if t.is_quick(task.lun, &task.cdb) {
                            // Microseconds of work: a hand-off to the blocking pool (two thread
                            // wake-ups) would cost more than the command itself.
                            let o =
                                run_task(&t, &nexus, &task, None, lm.as_deref(), att.io.as_deref());
                            conn.complete_task(task.id, o);
                            continue;
                        }
                        if t.is_async(task.lun, &task.cdb) {
                            // READ/WRITE on an asynchronous backstore (RBD): a task, not a
                            // blocking thread, waits for the data (see `execute_async`).
                            let tx = done_tx.clone();
                            let session = conn.session();
                            let io = att.io.clone();
                            tokio::spawn(async move {
                                let o =
                                    run_task_async(&t, &nexus, &task, lm.as_deref(), io.as_deref())
                                        .await;
                                if let Err(mpsc::error::SendError((id, o))) = tx.send((task.id, o))
                                {
                                    if let Some(s) = session {
                                        s.complete_task(id, o);
                                    }
                                }
                            });
                            continue;
                        }
                        let tx = done_tx.clone();
                        let cancel = Arc::new(AtomicBool::new(false));
                        cancels.insert(task.id, cancel.clone());
                        let session = conn.session();
                        let io = att.io.clone();
                        tokio::task::spawn_blocking(move || {
                            let o = run_task(
                                &t,
                                &nexus,
                                &task,
                                Some(&cancel),
                                lm.as_deref(),
                                io.as_deref(),
                            );
                            if let Err(mpsc::error::SendError((id, o))) = tx.send((task.id, o)) {
                                // This connection is gone (logged out, replaced) but the
                                // session may go on and waits for the task.
                                if let Some(s) = session {
                                    s.complete_task(id, o);
                                }
                            }
                        });
                    }
                    ConnEvent::Cancel(id) => {
                        if let Some(c) = cancels.get(&id) {
                            c.store(true, Ordering::Release);
                        }
                    }
                    ConnEvent::Tmf(a) => {
                        // The engine answers the function once we say its action is carried out
                        // (SAM-5 §7.1: it completes once every task it ends is gone). That may
                        // wait for other sessions, so it runs beside this loop, which goes on
                        // serving their requests to end our tasks (two sessions resetting the
                        // same LUN at once wait for each other).
                        if let (Some(view), Some(n), Some(t)) =
                            (att.view.clone(), att.nexus.clone(), att.target.clone())
                        {
                            let d = daemon.clone();
                            let done = tmf_done_tx.clone();
                            let session = conn.session();
                            tokio::spawn(async move {
                                task_management(&d, a, view, n, t).await;
                                if done.send(()).is_err() {
                                    // This connection is gone (failed at ErrorRecoveryLevel 2,
                                    // replaced): the session's queue of functions waits still.
                                    if let Some(s) = session {
                                        s.tmf_done();
                                    }
                                }
                            });
                        } else {
                            conn.tmf_done();
                        }
                    }
                    ConnEvent::Close { reason } => closing = Some(reason),
                }
            }
        }
        conn.transmit_all(|pdu| batch.push(&pdu));
        if !batch.is_empty() && out_tx.send(batch).await.is_err() {
            break;
        }
        if closing.is_some() || peer_closed || conn.is_closed() {
            break;
        }
        if progressed && start < buf.len() {
            continue; // more buffered PDUs to decode under the new state
        }
        let deadline = conn.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let kill = async {
            match att.kill.as_mut() {
                Some(k) => {
                    while !*k.borrow() {
                        if k.changed().await.is_err() {
                            return;
                        }
                    }
                }
                None => std::future::pending().await,
            }
        };
        if buf.capacity() - buf.len() < 16 * 1024 {
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            buf.reserve(256 * 1024);
        }
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n.unwrap_or(0) == 0 {
                    peer_closed = true;
                    info!(%peer, "peer closed the connection");
                }
            }
            Some((id, outcome)) = done_rx.recv() => {
                let mut finished = vec![id];
                conn.complete_task(id, outcome);
                // Batch every completion already waiting.
                while let Ok((id, outcome)) = done_rx.try_recv() {
                    finished.push(id);
                    conn.complete_task(id, outcome);
                }
                for id in finished {
                    cancels.remove(&id);
                }
            }
            _ = att.budget_room.notified() => conn.budget_ready(),
            _ = link_woken.notified() => {}
            Some(()) = tmf_done_rx.recv() => conn.tmf_done(),
            _ = sleep => conn.handle_timeout(Instant::now()),
            _ = kill => {
                info!(%peer, "session reinstated by a new login");
                conn.shutdown("session reinstatement");
            }
            _ = shutdown.changed() => conn.shutdown("daemon shutting down"),
        }
    }
    if let Some(reason) = closing {
        info!(%peer, reason, "closing connection");
    }
    // A connection that ends without a logout (peer gone, protocol or framing error): at
    // ErrorRecoveryLevel 0 and 1 its session ends, every other connection of it too (RFC 7143
    // §7.1.5); at 2 its tasks wait for reassignment until `retained` (§7.4), and so does its
    // place in the session.
    let retained = if conn.is_current() && !conn.is_closed() {
        conn.connection_lost(Instant::now(), "connection lost")
    } else {
        conn.connection_lost(Instant::now(), "closed")
    };
    // Tasks still running have nobody to answer to: let those that wait give up (at
    // ErrorRecoveryLevel 2 they finish, and their answers wait for reassignment).
    if retained.is_none() {
        for c in cancels.values() {
            c.store(true, Ordering::Release);
        }
    }
    // Let the writer drain what is queued, then leave the session.
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    if att.counted {
        if let Some(p) = &att.port {
            p.connection_closed();
        }
    } else if att.discovery.is_none() {
        // The login never got through: why, as far as the login went.
        let target = conn.login_target();
        let rt = daemon.runtime();
        let tpgt = PortalView { rt: &rt, local }.tpg_tag_of(target.as_deref());
        let outcome = conn
            .login_refusal()
            .map_or("abandoned", crate::metrics::login_outcome);
        daemon
            .metrics
            .login_failed(target.as_deref(), tpgt, outcome);
    }
    if let Some(tsih) = att.discovery.take() {
        daemon
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .close_discovery(tsih);
    }
    let Some((tsih, cid)) = att.session.take() else {
        return Ok(());
    };
    let current = conn.is_current();
    let link = conn.link_id();
    let session = conn.session();
    // The session's buffers this connection held are free now.
    drop(conn);
    match (retained, session) {
        (Some(until), Some(session)) => {
            info!(%peer, tsih, cid, "connection lost: its tasks wait for reassignment");
            let d = daemon.clone();
            tokio::spawn(async move {
                // Until Time2Retain is up, or the session ends sooner (a logout, reinstatement).
                loop {
                    let now = Instant::now();
                    if now >= until || session.is_over() {
                        break;
                    }
                    let step = (until - now).min(Duration::from_secs(1));
                    tokio::time::sleep(step).await;
                }
                session.expire(Instant::now());
                // Replaced meanwhile (connection reinstatement): the CID is the new one's.
                if session.link_is(cid, link) {
                    leave_session(&d, true, tsih, cid, &mut att).await;
                }
                d.trim_heap();
            });
        }
        _ => {
            leave_session(&daemon, current, tsih, cid, &mut att).await;
            daemon.clone().trim_heap();
        }
    }
    Ok(())
}

/// Connection `cid` of session `tsih` is gone from the session table; the last one releases
/// the session's I_T nexus and takes the session out. `current`: the connection was still its
/// session's (not replaced by another login with its CID).
async fn leave_session(
    daemon: &Arc<Daemon>,
    current: bool,
    tsih: u16,
    cid: u16,
    att: &mut Attached,
) {
    // A connection another login replaced (same CID) is not in the table any more; nor is one
    // whose session a new leading login reinstated (that login released the nexus).
    let last = {
        let mut s = daemon.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let ours = current
            && s.get(tsih)
                .is_some_and(|e| Arc::ptr_eq(&e.nexus_released, &att.nexus_released));
        if ours && s.connections(tsih) > 1 {
            s.leave(tsih, cid);
            false
        } else {
            ours
        }
    };
    if last {
        if let Some(p) = &att.port {
            p.session_closed();
        }
        if let (Some(d), Some(n)) = (att.view.take(), att.nexus.take()) {
            // SAM-5: the I_T nexus is gone (releases SPC-2 reservations it held). This
            // happens while the session is still in the table: a new login from the same
            // initiator port finds it there and waits for the release (or has done it
            // itself, reinstating), so the release can never land after that new
            // session's first commands.
            let release = att.nexus_released.clone();
            let _ = tokio::task::spawn_blocking(move || release.release(&d, &n)).await;
        }
        daemon
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leave(tsih, cid);
    }
}

impl Daemon {
    /// Give the memory freed by ended sessions back to the system. The allocator is tuned to
    /// keep large buffers (`main::tune_allocator`), which is right while I/O runs but would
    /// keep a burst of buffers resident for good. The trim runs a moment after the session
    /// ended, when the last of its buffers (tasks finishing on the blocking pool, frames the
    /// writer held) are free too; sessions ending meanwhile share it.
    fn trim_heap(self: Arc<Self>) {
        const SETTLE: Duration = Duration::from_millis(500);
        if self.trim_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE).await;
            self.trim_pending.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(|| {
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: malloc_trim only returns free heap memory to the kernel.
                unsafe {
                    libc::malloc_trim(0);
                }
            })
            .await;
        });
    }
}

async fn login_complete(
    daemon: &Arc<Daemon>,
    conn: &mut Connection,
    r: &LoginResult,
    local: SocketAddr,
    peer: SocketAddr,
    att: &mut Attached,
) {
    let rt = daemon.runtime();
    let portal = PortalView { rt: &rt, local };
    if r.kind == SessionKind::Discovery {
        let tsih = daemon
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open_discovery();
        let Some(tsih) = tsih else {
            conn.refuse_login(LoginStatus::OUT_OF_RESOURCES);
            return;
        };
        info!(%peer, initiator = %r.initiator_name, tsih, "discovery session");
        att.discovery = Some(tsih);
        conn.accept_login(r, tsih);
        daemon.metrics.port("", portal.tpg_tag()).login_succeeded();
        return;
    }
    // The configuration may have changed since the first login PDU: check again.
    let Some(target) = rt.target(&r.target_name).cloned() else {
        conn.refuse_login(LoginStatus::NOT_FOUND);
        return;
    };
    let Some(group) = portal.group_of(&target) else {
        conn.refuse_login(LoginStatus::NOT_FOUND);
        return;
    };
    if !group.enabled {
        conn.refuse_login(LoginStatus::SERVICE_UNAVAILABLE);
        return;
    }
    let Some((view_key, view)) = target.view_for(group, &r.initiator_name) else {
        conn.refuse_login(LoginStatus::AUTHORIZATION_FAILURE);
        return;
    };
    let key = SessionKey {
        initiator: r.initiator_name.clone(),
        isid: r.isid,
        target: r.target_name.clone(),
        tpgt: group.tag,
    };
    let key_tpgt = group.tag;
    if r.tsih != 0 {
        join_session(daemon, conn, r, &key, peer, att);
        return;
    }
    let (kill_tx, kill_rx) = watch::channel(false);
    let nexus = Arc::new(Nexus {
        initiator_name: r.initiator_name.clone(),
        isid: r.isid,
        target_port: group.port.clone(),
    });
    let entry = SessionEntry {
        kill: kill_tx,
        view_key,
        session: None,
        peer,
        budget_room: att.budget_room.clone(),
        params: r.params.clone(),
        target: target.clone(),
        nexus: nexus.clone(),
        nexus_released: att.nexus_released.clone(),
        io: Arc::new(IoStats::default()),
    };
    let io = entry.io.clone();
    // RFC 7143 §6.3.5: a leading login from the same initiator port to the same portal group
    // reinstates (closes) the old session. The old one is told to stop at once, and its nexus
    // released below, before this login completes, so that neither its exit nor its state can
    // reach what the new one acquires.
    let opened = daemon
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .open(key, r.cid, r.params.max_connections, entry);
    let opened = match opened {
        Ok(o) => o,
        Err(status) => {
            conn.refuse_login(status);
            return;
        }
    };
    let tsih = opened.tsih;
    if let Some((_, old)) = opened.reinstated {
        info!(%peer, initiator = %r.initiator_name, isid = format_args!("{:012x}", r.isid), "reinstating session");
        let _ = old.kill.send(true);
        // Tasks an ErrorRecoveryLevel 2 session kept for reassignment end with it.
        if let Some(h) = &old.session {
            h.shutdown("session reinstatement");
        }
        // Taking the LU's locks may wait for an APTPL fsync: off the session table's lock and
        // off the async workers, and done before the login response lets commands come.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(v) = old.target.views.get(&old.view_key) {
                old.nexus_released.release(v, &old.nexus);
            }
        })
        .await;
    }
    let p = &r.params;
    info!(
        %peer,
        initiator = %r.initiator_name,
        target = %r.target_name,
        tsih,
        cid = r.cid,
        tpgt = group.tag,
        luns = ?view.luns(),
        header_digest = p.header_digest,
        data_digest = p.data_digest,
        initial_r2t = p.initial_r2t,
        immediate_data = p.immediate_data,
        mrdsl_in = p.target_mrdsl,
        mrdsl_out = p.initiator_mrdsl,
        max_burst = p.max_burst_length,
        first_burst = p.first_burst_length,
        max_r2t = p.max_outstanding_r2t,
        max_connections = p.max_connections,
        "login complete"
    );
    att.session = Some((tsih, r.cid));
    att.target = Some(target);
    att.view = Some(view.clone());
    att.nexus = Some(nexus);
    att.kill = Some(kill_rx);
    att.io = Some(io);
    conn.accept_login(r, tsih);
    let pm = daemon.metrics.port(&r.target_name, key_tpgt);
    pm.login_succeeded();
    pm.session_opened();
    pm.connection_opened();
    conn.set_observer(Arc::new(pm.clone()));
    att.port = Some(pm);
    att.counted = true;
    let filter_view = view.clone();
    conn.set_lun_filter(move |field| {
        scsi_core::lun_from_wire(field).is_some_and(|l| filter_view.lu(l).is_some())
    });
    // SAM-5 §8.6: the session's tasks enter their logical unit's one task set, beside every
    // other I_T nexus's; when a task leaves it, the sessions with tasks there look again at
    // their dormant ones (the budget waker moves the session on).
    let room = att.budget_room.clone();
    let owner = Arc::as_ptr(&room) as u64;
    let waker: scsi_core::TaskWaker = Arc::new(move || room.notify_one());
    conn.set_task_sets(move |field, attr| {
        let lu = scsi_core::lun_from_wire(field).and_then(|l| view.lu(l))?;
        let entry = lu
            .task_set()
            .enter(task_attr(attr), owner, Some(waker.clone()));
        Some(Box::new(LuTask(entry)) as Box<dyn iscsi_proto::TaskSetEntry>)
    });
    // Other I_T nexuses reach the session's tasks through its engine.
    if let Some(e) = daemon
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(tsih)
    {
        e.session = conn.session();
    }
}

/// A login naming a session (TSIH ≠ 0): a connection joins it (MC/S, RFC 7143 §6.3.4), or
/// replaces its connection with the same CID (connection reinstatement: the old connection's
/// tasks end below ErrorRecoveryLevel 2, and wait for TASK REASSIGN at 2). The session's I_T nexus,
/// view and parameters are the session's; the connection negotiated only its own keys.
fn join_session(
    daemon: &Arc<Daemon>,
    conn: &mut Connection,
    r: &LoginResult,
    key: &SessionKey,
    peer: SocketAddr,
    att: &mut Attached,
) {
    let mut sessions = daemon.sessions.lock().unwrap_or_else(|e| e.into_inner());
    // What the connection takes from its session (the session's leading login may not have
    // finished yet: no engine to join then).
    let found = sessions.get(r.tsih).map(|e| {
        (
            e.session.clone(),
            e.target.clone(),
            e.target.views.get(&e.view_key).cloned(),
            e.nexus.clone(),
            e.nexus_released.clone(),
            e.kill.subscribe(),
            e.budget_room.clone(),
            e.io.clone(),
        )
    });
    let joined = match found {
        Some((Some(_), ..)) => sessions.join(key, r.tsih, r.cid),
        Some((None, ..)) => Err(LoginStatus::SERVICE_UNAVAILABLE),
        None => Err(LoginStatus::SESSION_DOES_NOT_EXIST),
    };
    drop(sessions);
    let joined = match joined {
        Ok(j) => j,
        Err(status) => {
            conn.refuse_login(status);
            return;
        }
    };
    let Some((Some(session), target, view, nexus, released, kill, budget_room, io)) = found else {
        conn.refuse_login(LoginStatus::SESSION_DOES_NOT_EXIST);
        return;
    };
    att.session = Some((r.tsih, r.cid));
    att.target = Some(target);
    att.view = view;
    att.nexus = Some(nexus);
    att.nexus_released = released;
    att.kill = Some(kill);
    att.budget_room = budget_room;
    att.io = Some(io);
    info!(
        %peer,
        initiator = %r.initiator_name,
        tsih = r.tsih,
        cid = r.cid,
        reinstates = joined == Joined::Replaces,
        header_digest = r.params.header_digest,
        data_digest = r.params.data_digest,
        "connection joins session"
    );
    conn.accept_join(r, r.tsih, &session);
    if conn.session().is_some() {
        let pm = daemon.metrics.port(&key.target, key.tpgt);
        pm.login_succeeded();
        pm.connection_opened();
        att.port = Some(pm);
        att.counted = true;
    }
    if conn.session().is_none() {
        // The session ended meanwhile: the login was refused.
        att.session = None;
        let mut s = daemon.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if joined == Joined::Added {
            s.leave(r.tsih, r.cid);
        }
    }
}

/// Random bytes for the CHAP challenge (RFC 7143 §12.1.3: challenges must be unpredictable).
fn random_bytes() -> std::io::Result<[u8; 33]> {
    use std::io::Read;
    let mut b = [0u8; 33];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}
