//! The running target: targets built from the configuration, one listener per portal, the
//! session table (TSIH allocation, reinstatement), and one driver task per connection.
//!
//! This is the only layer that touches sockets, timers and threads. Protocol decisions come
//! from `iscsi-proto`'s [`Connection`]; SCSI semantics from `scsi-core`'s [`DeviceServer`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backstore::{Backstore, BlockBackstore, FileBackstore, RamBackstore};
use iscsi_proto::conn::ConnConfig;
use iscsi_proto::{
    ConnEvent, Connection, Directory, LoginResult, SessionKind, TaskOutcome, TmfAction,
};
use iscsi_wire::frame::{Decoder, FrameError};
use iscsi_wire::LoginStatus;
use scsi_core::{DeviceServer, LogicalUnit, LuConfig, Nexus, ScsiRequest, TargetPort, TaskAttr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{BackstoreSpec, Config, TargetConfig};

/// A portal group of a target at run time.
#[derive(Debug)]
pub struct PortalGroup {
    pub tag: u16,
    pub portals: Vec<SocketAddr>,
    pub enabled: bool,
    pub port: Arc<TargetPort>,
}

/// A target at run time.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub groups: Vec<PortalGroup>,
    pub device: Arc<DeviceServer>,
}

#[derive(Debug)]
struct SessionEntry {
    tsih: u16,
    kill: watch::Sender<bool>,
    target: Arc<Target>,
    nexus: Arc<Nexus>,
    /// Set once the device server has been told the I_T nexus is gone (exactly once).
    nexus_released: Arc<AtomicBool>,
}

/// Key of the session table: RFC 7143 §4.4.3 — initiator name + ISID (the initiator port)
/// with the target portal group (the target port).
type SessionKey = (String, u64, String, u16);

/// Shared daemon state.
pub struct Daemon {
    pub targets: Vec<Arc<Target>>,
    pub conn_cfg: ConnConfig,
    sessions: Mutex<HashMap<SessionKey, SessionEntry>>,
    next_tsih: AtomicU16,
    next_stat_sn: AtomicU32,
}

fn open_backstore(spec: &BackstoreSpec) -> anyhow::Result<Arc<dyn Backstore>> {
    Ok(match spec {
        BackstoreSpec::Ram { size } => {
            Arc::new(RamBackstore::try_new(*size).context("RAM backstore")?)
        }
        BackstoreSpec::File { path, size } => Arc::new(
            FileBackstore::open(path, *size)
                .with_context(|| format!("file backstore {}", path.display()))?,
        ),
        BackstoreSpec::Block { path } => Arc::new(
            BlockBackstore::open(path)
                .with_context(|| format!("block backstore {}", path.display()))?,
        ),
    })
}

fn build_target(t: &TargetConfig, rel_port_base: &mut u16) -> anyhow::Result<Target> {
    let device = DeviceServer::new();
    for l in &t.luns {
        let spec = BackstoreSpec::parse(&l.backstore).map_err(anyhow::Error::msg)?;
        let store = open_backstore(&spec)?;
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
            ..LuConfig::default()
        };
        let lu = LogicalUnit::new(cfg, store)
            .map_err(|e| anyhow::anyhow!("target {} LUN {}: {e}", t.name, l.id))?;
        info!(target = %t.name, lun = l.id, backstore = %l.backstore, "LUN ready");
        device
            .add_lun(l.id, Arc::new(lu))
            .map_err(|e| anyhow::anyhow!("target {} LUN {}: {e:?}", t.name, l.id))?;
    }
    let mut groups = Vec::new();
    for g in &t.portal_groups {
        *rel_port_base += 1;
        groups.push(PortalGroup {
            tag: g.tag,
            portals: g
                .portals
                .iter()
                .map(|p| p.parse().expect("validated"))
                .collect(),
            enabled: g.enabled,
            port: Arc::new(TargetPort {
                target_name: t.name.clone(),
                tpg_tag: g.tag,
                relative_port_id: *rel_port_base,
            }),
        });
    }
    Ok(Target {
        name: t.name.clone(),
        alias: t.alias.clone(),
        groups,
        device: Arc::new(device),
    })
}

impl Daemon {
    pub fn build(cfg: &Config) -> anyhow::Result<Arc<Daemon>> {
        let mut rel = 0u16;
        let targets = cfg
            .targets
            .iter()
            .map(|t| build_target(t, &mut rel).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let s = &cfg.settings;
        let conn_cfg = ConnConfig {
            offer: iscsi_proto::TargetOffer {
                max_recv_data_segment_length: s.max_recv_data_segment_length,
                max_burst_length: s.max_burst_length,
                first_burst_length: s.first_burst_length,
                initial_r2t: s.initial_r2t,
                immediate_data: s.immediate_data,
                max_outstanding_r2t: s.max_outstanding_r2t,
                allow_header_digest: s.digests,
                allow_data_digest: s.digests,
                ..Default::default()
            },
            cmd_window: s.queue_depth,
            nop_interval: (s.nop_interval_secs > 0)
                .then(|| Duration::from_secs(s.nop_interval_secs)),
            nop_timeout: Duration::from_secs(s.nop_timeout_secs.max(1)),
            login_timeout: Duration::from_secs(s.login_timeout_secs.max(1)),
            ..ConnConfig::default()
        };
        Ok(Arc::new(Daemon {
            targets,
            conn_cfg,
            sessions: Mutex::new(HashMap::new()),
            next_tsih: AtomicU16::new(1),
            next_stat_sn: AtomicU32::new(0x1000),
        }))
    }

    /// Every (portal address) we must listen on.
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

    fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            // RFC 7143 §11.12.6: TSIH 0 is reserved for "new session".
            if t != 0 {
                return t;
            }
        }
    }

    pub fn target(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Flush every LUN (clean shutdown).
    pub fn flush_all(&self) {
        for t in &self.targets {
            for lun in t.device.luns() {
                if let Some(lu) = t.device.lu(lun) {
                    if let Err(e) = lu.backstore().flush() {
                        warn!(target = %t.name, lun, "flush at shutdown failed: {e}");
                    }
                }
            }
        }
    }
}

/// What the login engine may ask, answered for one connection's portal.
struct PortalView<'a> {
    daemon: &'a Daemon,
    local: SocketAddr,
}

impl PortalView<'_> {
    /// The portal group of `t` that owns our local address (listening on the unspecified
    /// address matches any local address with the same port).
    fn group_of<'t>(&self, t: &'t Target) -> Option<&'t PortalGroup> {
        t.groups.iter().find(|g| {
            g.portals.iter().any(|p| {
                p.port() == self.local.port()
                    && (p.ip() == self.local.ip() || p.ip().is_unspecified())
            })
        })
    }
}

fn fmt_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        // RFC 7143 §13.8: IPv6 addresses in brackets.
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

impl Directory for PortalView<'_> {
    fn tpg_tag(&self) -> u16 {
        // The first target with a group on this portal decides; groups are per target, and
        // a portal's tag is the same for all its targets in the common configuration.
        self.daemon
            .targets
            .iter()
            .find_map(|t| self.group_of(t).map(|g| g.tag))
            .unwrap_or(1)
    }

    fn target(&self, name: &str, _initiator: &str) -> Option<Option<String>> {
        let t = self.daemon.target(name)?;
        let g = self.group_of(t)?;
        if !g.enabled {
            return None;
        }
        Some(t.alias.clone())
    }

    fn send_targets(&self, _initiator: &str, filter: Option<&str>) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for t in &self.daemon.targets {
            if filter.is_some_and(|f| f != t.name) {
                continue;
            }
            let mut addrs = Vec::new();
            for g in t.groups.iter().filter(|g| g.enabled) {
                for p in &g.portals {
                    // A wildcard listener is reported by the address the initiator reached.
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

/// Run every listener until `shutdown` flips to true.
pub async fn serve(daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for addr in daemon.listen_addrs() {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        info!(%addr, "portal listening");
        listeners.push(l);
    }
    let mut tasks = Vec::new();
    for l in listeners {
        let d = daemon.clone();
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(accept_loop(l, d, sd)));
    }
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn accept_loop(l: TcpListener, daemon: Arc<Daemon>, shutdown: watch::Receiver<bool>) {
    loop {
        match l.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                let d = daemon.clone();
                let sd = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(e) = run_connection(sock, peer, d, sd).await {
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
    key: Option<SessionKey>,
    tsih: u16,
    target: Option<Arc<Target>>,
    nexus: Option<Arc<Nexus>>,
    nexus_released: Arc<AtomicBool>,
    kill: Option<watch::Receiver<bool>>,
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
) -> anyhow::Result<()> {
    let local = sock.local_addr()?;
    info!(%peer, %local, "connection accepted");
    let (mut rd, mut wr) = sock.into_split();
    let now = Instant::now();
    let stat_sn = daemon.next_stat_sn.fetch_add(0x100, Ordering::Relaxed);
    let mut conn = Connection::new(daemon.conn_cfg.clone(), now, stat_sn);
    let mut decoder = Decoder::new(8192);
    // The writer task owns the socket's write half so reads never wait on writes.
    // Bounded: an initiator that stops reading stops us reading its requests (backpressure)
    // instead of growing our memory.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(buf) = out_rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(iscsi_proto::TaskId, TaskOutcome)>();
    let mut att = Attached {
        key: None,
        tsih: 0,
        target: None,
        nexus: None,
        nexus_released: Arc::new(AtomicBool::new(false)),
        kill: None,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut start = 0usize;
    let mut closing: Option<&'static str> = None;
    let mut peer_closed = false;

    loop {
        // Decode every whole PDU already buffered. During login, one PDU at a time: its events
        // (login completion, new framing) must be applied before the next PDU is decoded.
        let mut progressed = false;
        while !conn.is_closed() {
            match decoder.decode(&buf[start..]) {
                Ok(Some((pdu, used))) => {
                    start += used;
                    progressed = true;
                    let view = PortalView {
                        daemon: &daemon,
                        local,
                    };
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
                    conn.handle_digest_error(&bhs);
                }
                Err(e) => {
                    warn!(%peer, "unrecoverable framing error: {e:?}");
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
        let mut batch = Vec::new();
        while let Some(ev) = conn.poll_event() {
            match ev {
                ConnEvent::LoginComplete(r) => {
                    login_complete(&daemon, &mut conn, &r, local, peer, &mut att)
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
                    let (Some(t), Some(nexus)) = (att.target.clone(), att.nexus.clone()) else {
                        continue;
                    };
                    let tx = done_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let req = ScsiRequest {
                            nexus: &nexus,
                            lun: task.lun,
                            cdb: &task.cdb,
                            data_out: &task.data_out,
                            expected_data_in: if task.read { task.expected_len } else { 0 },
                            attr: task_attr(task.attr),
                        };
                        let r = t.device.execute(&req);
                        let o = TaskOutcome {
                            status: r.status.0,
                            sense: r.sense,
                            data_in: r.data_in,
                            data_out_len: r.data_out_len,
                        };
                        let _ = tx.send((task.id, o));
                    });
                }
                ConnEvent::Tmf(a) => {
                    if let Some(t) = &att.target {
                        let d = t.device.clone();
                        // Device-server side effects of the TMF (unit attentions, releases).
                        let _ = tokio::task::spawn_blocking(move || match a {
                            TmfAction::ClearTaskSet { .. } => {}
                            TmfAction::LunReset { lun } => {
                                d.lun_reset(lun);
                            }
                            TmfAction::TargetWarmReset | TmfAction::TargetColdReset => {
                                d.target_reset()
                            }
                        })
                        .await;
                    }
                }
                ConnEvent::Close { reason } => closing = Some(reason),
            }
        }
        while let Some(pdu) = conn.poll_transmit() {
            pdu.encode(&mut batch);
        }
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
                conn.complete_task(id, outcome);
                // Batch every completion already waiting.
                while let Ok((id, outcome)) = done_rx.try_recv() {
                    conn.complete_task(id, outcome);
                }
            }
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
    // Let the writer drain what is queued, then release the session and the I_T nexus.
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    if let Some(key) = att.key.take() {
        let mut s = daemon.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if s.get(&key).is_some_and(|e| e.tsih == att.tsih) {
            s.remove(&key);
        }
    }
    if let (Some(t), Some(n)) = (att.target.take(), att.nexus.take()) {
        // SAM-5: the I_T nexus is gone (releases SPC-2 reservations it held). A reinstating
        // login has already done this for us, before its own commands ran.
        if !att.nexus_released.swap(true, Ordering::AcqRel) {
            let d = t.device.clone();
            let _ = tokio::task::spawn_blocking(move || d.nexus_lost(&n)).await;
        }
    }
    Ok(())
}

fn login_complete(
    daemon: &Arc<Daemon>,
    conn: &mut Connection,
    r: &LoginResult,
    local: SocketAddr,
    peer: SocketAddr,
    att: &mut Attached,
) {
    let view = PortalView { daemon, local };
    if r.kind == SessionKind::Discovery {
        let tsih = daemon.alloc_tsih();
        info!(%peer, initiator = %r.initiator_name, tsih, "discovery session");
        conn.accept_login(r, tsih);
        return;
    }
    let Some(target) = daemon.target(&r.target_name).cloned() else {
        conn.refuse_login(LoginStatus::NOT_FOUND);
        return;
    };
    let Some(group) = view.group_of(&target) else {
        conn.refuse_login(LoginStatus::NOT_FOUND);
        return;
    };
    let key: SessionKey = (
        r.initiator_name.clone(),
        r.isid,
        r.target_name.clone(),
        group.tag,
    );
    let mut sessions = daemon.sessions.lock().unwrap_or_else(|e| e.into_inner());
    if r.tsih != 0 && sessions.get(&key).is_none_or(|e| e.tsih != r.tsih) {
        // RFC 7143 §11.13.5: joining a session that does not exist.
        drop(sessions);
        conn.refuse_login(LoginStatus::SESSION_DOES_NOT_EXIST);
        return;
    }
    if let Some(old) = sessions.remove(&key) {
        // RFC 7143 §6.3.5 (session reinstatement): a new leading login from the same
        // initiator port to the same portal group closes the old session.
        info!(%peer, initiator = %r.initiator_name, isid = format_args!("{:012x}", r.isid), old_tsih = old.tsih, "reinstating session");
        let _ = old.kill.send(true);
        // The old nexus is the same I_T nexus as the new one: release it now, so that the
        // old connection's exit cannot release what the new session acquires.
        if !old.nexus_released.swap(true, Ordering::AcqRel) {
            old.target.device.nexus_lost(&old.nexus);
        }
    }
    let tsih = if r.tsih != 0 {
        r.tsih
    } else {
        daemon.alloc_tsih()
    };
    let (kill_tx, kill_rx) = watch::channel(false);
    let nexus = Arc::new(Nexus {
        initiator_name: r.initiator_name.clone(),
        isid: r.isid,
        target_port: group.port.clone(),
    });
    sessions.insert(
        key.clone(),
        SessionEntry {
            tsih,
            kill: kill_tx,
            target: target.clone(),
            nexus: nexus.clone(),
            nexus_released: att.nexus_released.clone(),
        },
    );
    drop(sessions);
    let p = &r.params;
    info!(
        %peer,
        initiator = %r.initiator_name,
        target = %r.target_name,
        tsih,
        tpgt = group.tag,
        header_digest = p.header_digest,
        data_digest = p.data_digest,
        initial_r2t = p.initial_r2t,
        immediate_data = p.immediate_data,
        mrdsl_in = p.target_mrdsl,
        mrdsl_out = p.initiator_mrdsl,
        max_burst = p.max_burst_length,
        first_burst = p.first_burst_length,
        max_r2t = p.max_outstanding_r2t,
        "login complete"
    );
    att.key = Some(key);
    att.tsih = tsih;
    att.target = Some(target);
    att.nexus = Some(nexus);
    att.kill = Some(kill_rx);
    conn.accept_login(r, tsih);
}
