//! The admin API: a Unix socket that takes one JSON request per line and answers one JSON
//! line, and the `ferrite admin` client that speaks it.
//!
//! Every change goes through the same path: copy the configuration, change the copy, validate
//! it, apply it to the running daemon ([`Daemon::apply`]: new portals listen at once, sessions
//! the change no longer allows end), then save it atomically to the file the daemon was
//! started from (temp file, fsync, rename, fsync the directory).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::config::{
    AclConfig, AluaGroupConfig, ChapConfig, Config, LunConfig, MappedLun, PortalGroupConfig,
    TargetConfig, DEFAULT_ALUA_TRANSITION_SECS,
};
use crate::server::Daemon;

/// Longest request line accepted (the socket is local, but still bounded).
const MAX_REQUEST: usize = 1 << 20;

/// Write `text` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory — a crash leaves either the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Serve the admin socket until the daemon shuts down.
pub async fn serve(daemon: Arc<Daemon>, path: PathBuf) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        match UnixStream::connect(&path).await {
            Ok(_) => anyhow::bail!("another daemon answers on {} already", path.display()),
            // A socket file nobody answers on is left over from a previous run.
            Err(_) => std::fs::remove_file(&path).map_err(|e| {
                anyhow::anyhow!(
                    "{} is left over from an earlier run and cannot be removed: {e}",
                    path.display()
                )
            })?,
        }
    }
    let listener = UnixListener::bind(&path)?;
    // Only the owner (root for a system daemon) may reconfigure the target.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).ok();
    }
    info!(socket = %path.display(), "admin API listening");
    loop {
        let (sock, _) = listener.accept().await?;
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, d).await {
                warn!("admin connection: {e:#}");
            }
        });
    }
}

async fn handle(sock: UnixStream, daemon: Arc<Daemon>) -> anyhow::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = String::new();
        let n = (&mut rd)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => match execute(&daemon, &req).await {
                Ok(v) => json!({ "ok": true, "result": v }),
                Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
            },
            Err(e) => json!({ "ok": false, "error": format!("bad request: {e}") }),
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
    }
}

use tokio::io::AsyncReadExt;

fn s<'a>(req: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    req.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("missing string field {key:?}"))
}

fn n(req: &Value, key: &str) -> anyhow::Result<u64> {
    req.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("missing number field {key:?}"))
}

/// A portal group tag: 1..65535 (a larger number is refused, not truncated).
fn tag_from(v: u64) -> anyhow::Result<u16> {
    u16::try_from(v).map_err(|_| anyhow::anyhow!("portal group tag {v} out of range 1..65535"))
}

fn target_mut<'a>(c: &'a mut Config, name: &str) -> anyhow::Result<&'a mut TargetConfig> {
    c.targets
        .iter_mut()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow::anyhow!("no target {name:?}"))
}

fn group_mut(t: &mut TargetConfig, tag: u64) -> anyhow::Result<&mut PortalGroupConfig> {
    let name = t.name.clone();
    t.portal_groups
        .iter_mut()
        .find(|g| u64::from(g.tag) == tag)
        .ok_or_else(|| anyhow::anyhow!("target {name:?} has no portal group {tag}"))
}

/// Write out the default ALUA group (every portal group, id 1) of a target that has none
/// configured, so that it can be changed.
fn alua_groups_mut(t: &mut TargetConfig) {
    t.alua_groups = t.alua_group_configs();
}

fn alua_group_mut(t: &mut TargetConfig, id: u64) -> anyhow::Result<&mut AluaGroupConfig> {
    t.alua_groups
        .iter_mut()
        .find(|g| u64::from(g.id) == id)
        .ok_or_else(|| anyhow::anyhow!("no ALUA group {id}"))
}

fn alua_state(req: &Value) -> anyhow::Result<scsi_core::AccessState> {
    let name = s(req, "state")?;
    scsi_core::AccessState::parse(name)
        .filter(|s| *s != scsi_core::AccessState::Transitioning)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown ALUA state {name:?} (active/optimized, active/non-optimized, \
                 standby, unavailable, offline)"
            )
        })
}

fn chap_from(req: &Value) -> anyhow::Result<Option<ChapConfig>> {
    match req.get("chap") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(serde_json::from_value(v.clone())?)),
    }
}

/// A summary of the model for `targets`.
fn describe(rt: &crate::runtime::Runtime) -> Value {
    let targets: Vec<Value> = rt
        .targets
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "alias": t.alias,
                "portal_groups": t.groups.iter().map(|g| json!({
                    "tag": g.tag,
                    "enabled": g.enabled,
                    "demo_mode": g.demo_mode,
                    "authentication": g.authentication,
                    "portals": g.portals.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "relative_port_id": g.port.relative_port_id,
                })).collect::<Vec<_>>(),
                "luns": t.lus.iter().map(|(id, (c, lu))| json!({
                    "id": id,
                    "backstore": c.backstore,
                    "size": lu.backstore().size(),
                    "block_size": c.block_size,
                    "read_only": c.read_only,
                    "encrypted": lu.encrypted(),
                    "medium": lu.medium_status(),
                })).collect::<Vec<_>>(),
                "alua_transition_secs": t.device.alua().transition_secs(),
                "alua_groups": t.device.alua().groups().iter().map(|g| json!({
                    "id": g.group.id,
                    "state": g.group.state.name(),
                    "transition_to": g.target.map(|s| s.name()),
                    "preferred": g.group.preferred,
                    "portal_groups": g.group.ports,
                    "changed_by": match g.status {
                        scsi_core::alua_status::BY_SET_TARGET_PORT_GROUPS => "initiator",
                        scsi_core::alua_status::BY_IMPLICIT_BEHAVIOR => "operator",
                        _ => "configuration",
                    },
                })).collect::<Vec<_>>(),
                "acls": t.acls.iter().map(|a| json!({
                    "initiator": a.initiator,
                    "chap": a.chap.is_some(),
                    "luns": t.views.get(&a.initiator).map(|v| v.luns()).unwrap_or_default(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "targets": targets })
}

/// Run one request. Mutations return the new summary.
pub async fn execute(daemon: &Arc<Daemon>, req: &Value) -> anyhow::Result<Value> {
    let op = s(req, "op")?;
    let rt = daemon.runtime();
    match op {
        "targets" => return Ok(describe(&rt)),
        "sessions" => return Ok(serde_json::to_value(daemon.sessions())?),
        "cluster" => {
            let c =
                rt.config.cluster.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("this node is not in a cluster (no [cluster])")
                })?;
            let fenced = daemon.fence.as_ref().is_some_and(|f| f.is_fenced());
            // The members as the store has them now (or why it cannot say).
            let mut nodes = Vec::new();
            let mut revision = Value::Null;
            let mut store_error = Value::Null;
            if let Some(store) = daemon.cluster_store.get() {
                let prefix = format!("{}nodes/", c.prefix);
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    store.list(prefix.as_bytes()),
                )
                .await;
                match read {
                    Ok(Ok((kvs, rev))) => {
                        revision = json!(rev);
                        for kv in kvs {
                            nodes.push(json!({
                                "node": String::from_utf8_lossy(&kv.key[prefix.len()..]),
                                "lease": kv.lease.map(|l| format!("{:x}", l.0)),
                                "since_revision": kv.create_revision,
                            }));
                        }
                    }
                    Ok(Err(e)) => store_error = json!(e.to_string()),
                    Err(_) => store_error = json!("no answer within 5 s"),
                }
            }
            let mut portals = Vec::new();
            if let Some(store) = daemon.cluster_store.get().filter(|_| !c.portals.is_empty()) {
                let prefix = format!("{}portals/", c.prefix);
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    store.list(prefix.as_bytes()),
                )
                .await;
                if let Ok(Ok((kvs, _))) = read {
                    let v = crate::portals::view_of(&c.prefix, &[], &kvs);
                    for p in &c.portals {
                        let owner = v.owners.get(&p.address);
                        portals.push(json!({
                            "address": p.address.to_string(),
                            "tag": rt.config.targets.iter().find_map(|t| {
                                t.portal_groups.iter().find(|g| g.portals.iter().any(|x| {
                                    x.parse::<std::net::SocketAddr>().is_ok_and(|x| x == p.address)
                                })).map(|g| g.tag)
                            }),
                            "nodes": p.nodes,
                            "owner": owner.map(|o| o.node.clone()),
                            "owner_revision": owner.map(|o| o.revision),
                            "move_to": v.wants.get(&p.address),
                        }));
                    }
                    nodes.iter_mut().for_each(|m: &mut Value| {
                        let n = m["node"].as_str().unwrap_or("").to_string();
                        m["drained"] = json!(v.drained.contains(&n));
                    });
                }
            }
            return Ok(json!({ "cluster": {
                "portals": portals,
                "failback": c.failback,
                "node": c.node,
                "endpoints": c.endpoints,
                "lease_secs": c.lease_secs,
                "serving": !fenced,
                "writes_in_flight": daemon.fence.as_ref().map_or(0, |f| f.inflight()),
                "members": nodes,
                "revision": revision,
                "store_error": store_error,
            }}));
        }
        "cluster-move-portal" | "cluster-drain" | "cluster-undrain" => {
            let c =
                rt.config.cluster.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("this node is not in a cluster (no [cluster])")
                })?;
            let store = daemon
                .cluster_store
                .get()
                .ok_or_else(|| anyhow::anyhow!("no cluster store yet"))?;
            let node = s(req, "node")?;
            let (key, value) = if op == "cluster-move-portal" {
                let a: std::net::SocketAddr = s(req, "address")?
                    .parse()
                    .map_err(|e| anyhow::anyhow!("address: {e}"))?;
                let p = c.portals.iter().find(|p| p.address == a).ok_or_else(|| {
                    anyhow::anyhow!("{a} is not a floating portal ([[cluster.portal]])")
                })?;
                anyhow::ensure!(
                    node == "-" || p.nodes.iter().any(|n| n == node),
                    "{node} is not one of {a}'s nodes ({})",
                    p.nodes.join(", ")
                );
                (
                    format!("{}portals/want/{a}", c.prefix),
                    (node != "-").then(|| node.to_string()),
                )
            } else {
                (
                    format!("{}portals/drain/{node}", c.prefix),
                    (op == "cluster-drain").then(|| "drained".to_string()),
                )
            };
            let limit = std::time::Duration::from_secs(5);
            let change = async {
                let (kv, _) = store.get(key.as_bytes()).await?;
                let rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
                match (&value, kv) {
                    (Some(v), _) => store.put_if(key.as_bytes(), v.as_bytes(), rev, None).await,
                    (None, Some(_)) => store.delete_if(key.as_bytes(), rev).await,
                    (None, None) => Ok(cluster::Cas::Done(0)),
                }
            };
            match tokio::time::timeout(limit, change).await {
                Ok(Ok(cluster::Cas::Done(_))) => {}
                Ok(Ok(cluster::Cas::Conflict(_))) => {
                    anyhow::bail!("changed meanwhile by somebody else; try again")
                }
                Ok(Err(e)) => anyhow::bail!("{e}"),
                Err(_) => anyhow::bail!("the cluster store did not answer within 5 s"),
            }
            info!(op, node, "cluster: {key} changed");
            return Box::pin(execute(daemon, &json!({ "op": "cluster" }))).await;
        }
        "stats" => {
            // Counters since start; the client turns two readings into rates.
            let luns: Vec<Value> = daemon
                .metrics
                .lun_stats()
                .into_iter()
                .map(|(t, l, io)| json!({ "target": t, "lun": l, "io": io }))
                .collect();
            let sessions: Vec<Value> = daemon
                .sessions()
                .into_iter()
                .map(|s| {
                    json!({
                        "tsih": s.tsih, "initiator": s.initiator, "target": s.target, "io": s.io
                    })
                })
                .collect();
            return Ok(json!({ "luns": luns, "sessions": sessions }));
        }
        "drop-session" => {
            let tsih = n(req, "tsih")?;
            let tsih = u16::try_from(tsih).map_err(|_| anyhow::anyhow!("tsih out of range"))?;
            anyhow::ensure!(daemon.drop_session(tsih), "no session with TSIH {tsih}");
            return Ok(json!({ "dropped": tsih }));
        }
        "drop-connection" => {
            let tsih =
                u16::try_from(n(req, "tsih")?).map_err(|_| anyhow::anyhow!("tsih out of range"))?;
            let cid =
                u16::try_from(n(req, "cid")?).map_err(|_| anyhow::anyhow!("cid out of range"))?;
            anyhow::ensure!(
                daemon.drop_connection(tsih, cid),
                "no open connection {cid} in session {tsih}"
            );
            return Ok(json!({ "dropped": { "tsih": tsih, "cid": cid } }));
        }
        "logout-session" => {
            let tsih =
                u16::try_from(n(req, "tsih")?).map_err(|_| anyhow::anyhow!("tsih out of range"))?;
            let within = u16::try_from(n(req, "within")?)
                .map_err(|_| anyhow::anyhow!("seconds out of range"))?;
            let asked = daemon
                .logout_session(tsih, within)
                .ok_or_else(|| anyhow::anyhow!("no session with TSIH {tsih}"))?;
            return Ok(
                json!({ "asked": { "tsih": tsih, "connections": asked, "within": within } }),
            );
        }
        "export" => return Ok(json!({ "toml": toml::to_string(&rt.config)? })),
        "pr-show" | "pr-clear" => {
            // Persistent reservation state of the running daemon (SPC-4 §5.13): registrations,
            // holder, type, generation; `pr-clear` acts like PERSISTENT RESERVE OUT CLEAR.
            let name = s(req, "target")?;
            let t = rt
                .target(name)
                .ok_or_else(|| anyhow::anyhow!("no target {name:?}"))?;
            let only = req.get("lun").and_then(Value::as_u64);
            let mut out = Vec::new();
            // A LU's reservation lock may be held across an APTPL fsync: wait off the workers.
            tokio::task::block_in_place(|| -> anyhow::Result<()> {
                for (id, (_, lu)) in t
                    .lus
                    .iter()
                    .filter(|(id, _)| only.is_none_or(|l| l == **id))
                {
                    if op == "pr-clear" {
                        lu.pr_clear()?;
                        info!(target = %name, lun = id, "persistent reservations cleared by the operator");
                    }
                    out.push(json!({ "lun": id, "state": serde_json::to_value(lu.pr_state())? }));
                }
                Ok(())
            })?;
            anyhow::ensure!(!out.is_empty() || only.is_none(), "no LUN {:?}", only);
            return Ok(json!({ "luns": out }));
        }
        "save" => {
            let path = match req.get("path").and_then(Value::as_str) {
                Some(p) => PathBuf::from(p),
                None => daemon.config_path.clone().ok_or_else(|| {
                    anyhow::anyhow!("the daemon was started without --config: give a path")
                })?,
            };
            let text = toml::to_string(&rt.config)?;
            tokio::task::block_in_place(|| write_atomic(&path, text.as_bytes()))?;
            return Ok(json!({ "saved": path }));
        }
        _ => {}
    }
    // One change at a time, on the configuration as it stands, with the ALUA states initiators
    // chose meanwhile (SET TARGET PORT GROUPS) kept.
    let _change = daemon.config_lock.lock().await;
    let rt = daemon.runtime();
    let mut c = rt.config.clone();
    if let Some(alua) = &daemon.cluster_alua {
        alua.intent_into_config(&mut c);
    }
    crate::server::alua_into_config(&rt, &mut c);
    let before = c.clone();
    match op {
        "add-target" => {
            let name = s(req, "target")?.to_string();
            anyhow::ensure!(
                c.targets.iter().all(|t| t.name != name),
                "target {name:?} exists"
            );
            let tag = tag_from(req.get("tag").and_then(Value::as_u64).unwrap_or(1))?;
            let portals: Vec<String> = req
                .get("portals")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            anyhow::ensure!(
                !portals.is_empty(),
                "a new target needs at least one portal"
            );
            c.targets.push(TargetConfig {
                name,
                alias: req.get("alias").and_then(Value::as_str).map(String::from),
                portal_groups: vec![PortalGroupConfig {
                    tag,
                    portals,
                    enabled: true,
                    demo_mode: None,
                    authentication: false,
                    chap: None,
                }],
                luns: Vec::new(),
                acls: Vec::new(),
                alua_groups: Vec::new(),
                alua_transition_secs: DEFAULT_ALUA_TRANSITION_SECS,
            });
        }
        "remove-target" => {
            let name = s(req, "target")?;
            let before = c.targets.len();
            c.targets.retain(|t| t.name != name);
            anyhow::ensure!(c.targets.len() < before, "no target {name:?}");
        }
        "add-group" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let tag = tag_from(n(req, "tag")?)?;
            if let Some(id) = req.get("alua_group").and_then(Value::as_u64) {
                alua_groups_mut(t);
                let g = alua_group_mut(t, id)?;
                g.portal_groups.push(tag);
            }
            t.portal_groups.push(PortalGroupConfig {
                tag,
                portals: Vec::new(),
                enabled: true,
                demo_mode: None,
                authentication: false,
                chap: None,
            });
        }
        "remove-group" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let tag = n(req, "tag")?;
            let before = t.portal_groups.len();
            t.portal_groups.retain(|g| u64::from(g.tag) != tag);
            anyhow::ensure!(t.portal_groups.len() < before, "no portal group {tag}");
            // It leaves its ALUA group too.
            for g in &mut t.alua_groups {
                g.portal_groups.retain(|&p| u64::from(p) != tag);
            }
        }
        "set-alua" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            alua_groups_mut(t);
            for st in req
                .get("states")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let state = alua_state(st)?;
                alua_group_mut(t, n(st, "id")?)?.state = state;
            }
        }
        "add-alua-group" | "set-alua-group" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            alua_groups_mut(t);
            let id = n(req, "id")?;
            if op == "add-alua-group" {
                let id = u16::try_from(id)
                    .ok()
                    .filter(|&i| i > 0)
                    .ok_or_else(|| anyhow::anyhow!("ALUA group id must be 1..65535"))?;
                anyhow::ensure!(
                    t.alua_groups.iter().all(|g| g.id != id),
                    "ALUA group {id} exists"
                );
                t.alua_groups.push(AluaGroupConfig {
                    id,
                    portal_groups: Vec::new(),
                    state: scsi_core::AccessState::ActiveOptimized,
                    preferred: false,
                    supported_states: None,
                    node: None,
                });
            }
            if let Some(tags) = req.get("portal_groups").and_then(Value::as_array) {
                let tags: Vec<u16> = tags
                    .iter()
                    .map(|v| tag_from(v.as_u64().unwrap_or(0)))
                    .collect::<anyhow::Result<_>>()?;
                // Moved: out of whatever group held them.
                for g in &mut t.alua_groups {
                    g.portal_groups.retain(|p| !tags.contains(p));
                }
                alua_group_mut(t, id)?.portal_groups = tags;
            }
            let g = alua_group_mut(t, id)?;
            if req.get("state").is_some() {
                g.state = alua_state(req)?;
            }
            if let Some(p) = req.get("preferred").and_then(Value::as_bool) {
                g.preferred = p;
            }
        }
        "remove-alua-group" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let id = n(req, "id")?;
            let before = t.alua_groups.len();
            t.alua_groups.retain(|g| u64::from(g.id) != id);
            anyhow::ensure!(t.alua_groups.len() < before, "no ALUA group {id}");
        }
        "set-alua-transition" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            t.alua_transition_secs = u8::try_from(n(req, "secs")?)
                .map_err(|_| anyhow::anyhow!("transition time must be 0..255 seconds"))?;
        }
        "enable-group" | "disable-group" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            group_mut(t, n(req, "tag")?)?.enabled = op == "enable-group";
        }
        "set-group" => {
            // Attributes: demo_mode, authentication, chap.
            let t = target_mut(&mut c, s(req, "target")?)?;
            let g = group_mut(t, n(req, "tag")?)?;
            if let Some(v) = req.get("demo_mode").and_then(Value::as_bool) {
                g.demo_mode = Some(v);
            }
            if let Some(v) = req.get("authentication").and_then(Value::as_bool) {
                g.authentication = v;
            }
            if req.get("chap").is_some() {
                g.chap = chap_from(req)?;
            }
        }
        "add-portal" | "remove-portal" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let g = group_mut(t, n(req, "tag")?)?;
            let p = s(req, "portal")?.to_string();
            if op == "add-portal" {
                anyhow::ensure!(!g.portals.contains(&p), "portal {p} already in the group");
                g.portals.push(p);
            } else {
                let before = g.portals.len();
                g.portals.retain(|x| *x != p);
                anyhow::ensure!(g.portals.len() < before, "portal {p} not in the group");
            }
        }
        "add-lun" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let id = match req.get("lun").and_then(Value::as_u64) {
                Some(id) => id,
                None => (0..)
                    .find(|i| t.luns.iter().all(|l| l.id != *i))
                    .unwrap_or(0),
            };
            let mut l: LunConfig =
                serde_json::from_value(json!({ "id": id, "backstore": s(req, "backstore")? }))?;
            if let Some(b) = req.get("block_size").and_then(Value::as_u64) {
                l.block_size =
                    u32::try_from(b).map_err(|_| anyhow::anyhow!("block_size {b} out of range"))?;
            }
            if let Some(ro) = req.get("read_only").and_then(Value::as_bool) {
                l.read_only = ro;
            }
            if let Some(c) = req.get("ceph") {
                l.ceph = Some(serde_json::from_value(c.clone())?);
            }
            t.luns.push(l);
        }
        "remove-lun" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let id = n(req, "lun")?;
            let before = t.luns.len();
            t.luns.retain(|l| l.id != id);
            anyhow::ensure!(t.luns.len() < before, "no LUN {id}");
            // Mappings of the removed LUN go with it.
            for a in &mut t.acls {
                if let Some(m) = &mut a.luns {
                    m.retain(|x| x.lun != id);
                }
            }
        }
        "add-acl" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let initiator = s(req, "initiator")?.to_string();
            anyhow::ensure!(
                t.acl_index(&initiator).is_none(),
                "ACL for {initiator:?} exists"
            );
            let luns: Option<Vec<MappedLun>> = match req.get("luns") {
                None | Some(Value::Null) => None,
                Some(v) => Some(serde_json::from_value(v.clone())?),
            };
            t.acls.push(AclConfig {
                initiator,
                luns,
                chap: chap_from(req)?,
            });
        }
        "remove-acl" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let i = t
                .acl_index(s(req, "initiator")?)
                .ok_or_else(|| anyhow::anyhow!("no such ACL"))?;
            t.acls.remove(i);
            // Demo mode defaults to on for a target without ACLs; removing the last ACL must
            // not open the target to everyone, so pin the groups' setting down.
            if t.acls.is_empty() {
                for g in &mut t.portal_groups {
                    g.demo_mode.get_or_insert(false);
                }
            }
        }
        "set-acl-chap" => {
            let t = target_mut(&mut c, s(req, "target")?)?;
            let i = t
                .acl_index(s(req, "initiator")?)
                .ok_or_else(|| anyhow::anyhow!("no such ACL"))?;
            t.acls[i].chap = chap_from(req)?;
        }
        "set-discovery" => {
            if let Some(v) = req.get("tpg_enabled_sendtargets").and_then(Value::as_bool) {
                c.settings.tpg_enabled_sendtargets = v;
            }
            if req.get("chap").is_some() {
                c.settings.discovery_chap = chap_from(req)?;
            }
        }
        other => anyhow::bail!("unknown op {other:?}"),
    }
    // A clustered node's ALUA states are the cluster's: written there first (every node
    // follows), then applied here.
    if let (Some(alua), Some(store)) = (&daemon.cluster_alua, daemon.cluster_store.get()) {
        alua.publish(&**store, &before, &c, crate::cluster_alua::By::Operator)
            .await?;
    }
    daemon.apply(c).await?;
    // Run-time changes persist in the file the daemon was started from.
    daemon.save_config().await?;
    if op.contains("alua") {
        // An ALUA change answers once its transition is over (at most the transition time).
        daemon.alua_settled().await;
    }
    Ok(describe(&daemon.runtime()))
}

impl TargetConfig {
    pub fn acl_index(&self, initiator: &str) -> Option<usize> {
        self.acls.iter().position(|a| a.initiator == initiator)
    }
}

// ---- client ---------------------------------------------------------------------------------

pub const DEFAULT_SOCKET: &str = "/run/ferrite/admin.sock";

/// The admin socket when none is configured: [`DEFAULT_SOCKET`] for root (or systemd's
/// `$RUNTIME_DIRECTORY`), else the user's runtime directory (`$XDG_RUNTIME_DIR/ferrite`), where
/// a daemon run by hand can create it.
pub fn default_socket() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = crate::systemd::directory("RUNTIME_DIRECTORY") {
        return d.join("admin.sock");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match env("XDG_RUNTIME_DIR") {
        Some(d) if !root => PathBuf::from(d).join("ferrite/admin.sock"),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

fn yes(v: &str) -> anyhow::Result<bool> {
    match v {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => anyhow::bail!("expected yes or no, got {v:?}"),
    }
}

fn kv(args: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .ok_or_else(|| anyhow::anyhow!("expected KEY=VALUE, got {a:?}"))
        })
        .collect()
}

fn chap_json(a: &[String]) -> anyhow::Result<Value> {
    match a {
        [u, s] => Ok(json!({ "user": u, "secret": s })),
        [u, s, mu, ms] => {
            Ok(json!({ "user": u, "secret": s, "mutual_user": mu, "mutual_secret": ms }))
        }
        _ => anyhow::bail!("CHAP takes USER SECRET [MUTUAL_USER MUTUAL_SECRET]"),
    }
}

/// Turn command-line words into a request.
pub fn request_from_args(cmd: &str, a: &[String]) -> anyhow::Result<Value> {
    let need = |k: usize| -> anyhow::Result<()> {
        anyhow::ensure!(
            a.len() >= k,
            "{cmd}: missing arguments (see ferrite admin --help)"
        );
        Ok(())
    };
    let num = |x: &str| -> anyhow::Result<u64> {
        x.parse()
            .map_err(|_| anyhow::anyhow!("{x:?} is not a number"))
    };
    Ok(match cmd {
        "targets" | "sessions" | "export" | "stats" => json!({ "op": cmd }),
        "drop-session" => {
            need(1)?;
            json!({ "op": cmd, "tsih": num(&a[0])? })
        }
        "drop-connection" => {
            need(2)?;
            json!({ "op": cmd, "tsih": num(&a[0])?, "cid": num(&a[1])? })
        }
        "logout-session" => {
            need(1)?;
            let within = match a.get(1) {
                Some(v) => num(v)?,
                None => 10,
            };
            json!({ "op": cmd, "tsih": num(&a[0])?, "within": within })
        }
        "save" => match a.first() {
            // The daemon runs elsewhere (often in /): a relative path is the client's.
            Some(p) => {
                let p = std::env::current_dir()?.join(p);
                json!({ "op": cmd, "path": p })
            }
            None => json!({ "op": cmd }),
        },
        "add-target" => {
            need(2)?;
            json!({ "op": cmd, "target": a[0], "portals": a[1..] })
        }
        "pr-show" | "pr-clear" => {
            need(1)?;
            match a.get(1) {
                Some(l) => json!({ "op": cmd, "target": a[0], "lun": num(l)? }),
                None => json!({ "op": cmd, "target": a[0] }),
            }
        }
        "remove-target" => {
            need(1)?;
            json!({ "op": cmd, "target": a[0] })
        }
        "add-group" => {
            need(2)?;
            let mut r = json!({ "op": cmd, "target": a[0], "tag": num(&a[1])? });
            for (k, v) in kv(&a[2..])? {
                match k {
                    "alua_group" => r[k] = json!(num(v)?),
                    _ => anyhow::bail!("unknown group attribute {k:?}"),
                }
            }
            r
        }
        "remove-group" | "enable-group" | "disable-group" => {
            need(2)?;
            json!({ "op": cmd, "target": a[0], "tag": num(&a[1])? })
        }
        "alua" => json!({ "op": "targets" }),
        "cluster" => match a.first().map(String::as_str) {
            None => json!({ "op": "cluster" }),
            Some("move-portal") => {
                anyhow::ensure!(a.len() == 3, "cluster move-portal ADDR:PORT NODE|-");
                json!({ "op": "cluster-move-portal", "address": a[1], "node": a[2] })
            }
            Some(x @ ("drain" | "undrain")) => {
                anyhow::ensure!(a.len() == 2, "cluster {x} NODE");
                json!({ "op": format!("cluster-{x}"), "node": a[1] })
            }
            Some(x) => anyhow::bail!("cluster {x:?}: move-portal, drain or undrain"),
        },
        "set-alua" => {
            need(2)?;
            let mut states = Vec::new();
            for (id, st) in kv(&a[1..])? {
                states.push(json!({ "id": num(id)?, "state": st }));
            }
            json!({ "op": cmd, "target": a[0], "states": states })
        }
        "add-alua-group" | "set-alua-group" => {
            need(2)?;
            let mut r = json!({ "op": cmd, "target": a[0], "id": num(&a[1])? });
            for (k, v) in kv(&a[2..])? {
                match k {
                    "state" => r[k] = json!(v),
                    "preferred" => r[k] = json!(yes(v)?),
                    "portal_groups" => {
                        let tags = v
                            .split(',')
                            .filter(|t| !t.is_empty())
                            .map(num)
                            .collect::<anyhow::Result<Vec<u64>>>()?;
                        r[k] = json!(tags);
                    }
                    _ => anyhow::bail!("unknown ALUA group attribute {k:?}"),
                }
            }
            r
        }
        "remove-alua-group" => {
            need(2)?;
            json!({ "op": cmd, "target": a[0], "id": num(&a[1])? })
        }
        "set-alua-transition" => {
            need(2)?;
            json!({ "op": cmd, "target": a[0], "secs": num(&a[1])? })
        }
        "set-group" => {
            need(2)?;
            let mut r = json!({ "op": cmd, "target": a[0], "tag": num(&a[1])? });
            for (k, v) in kv(&a[2..])? {
                match k {
                    "demo_mode" | "authentication" => r[k] = json!(yes(v)?),
                    _ => anyhow::bail!("unknown group attribute {k:?}"),
                }
            }
            r
        }
        "set-group-chap" => {
            need(4)?;
            json!({ "op": "set-group", "target": a[0], "tag": num(&a[1])?, "chap": chap_json(&a[2..])? })
        }
        "add-portal" | "remove-portal" => {
            need(3)?;
            json!({ "op": cmd, "target": a[0], "tag": num(&a[1])?, "portal": a[2] })
        }
        "add-lun" => {
            need(2)?;
            let mut r = json!({ "op": cmd, "target": a[0], "backstore": a[1] });
            for (k, v) in kv(&a[2..])? {
                match k {
                    "lun" => r["lun"] = json!(num(v)?),
                    "block_size" => r["block_size"] = json!(num(v)?),
                    "read_only" => r["read_only"] = json!(yes(v)?),
                    "ceph_conf" | "ceph_keyring" | "ceph_id" => {
                        let field = match k {
                            "ceph_conf" => "conf",
                            "ceph_keyring" => "keyring",
                            _ => "client_id",
                        };
                        if r.get("ceph").is_none() {
                            r["ceph"] = json!({});
                        }
                        r["ceph"][field] = json!(v);
                    }
                    _ => anyhow::bail!("unknown LUN option {k:?}"),
                }
            }
            r
        }
        "remove-lun" => {
            need(2)?;
            json!({ "op": cmd, "target": a[0], "lun": num(&a[1])? })
        }
        "add-acl" => {
            need(2)?;
            let mut r = json!({ "op": cmd, "target": a[0], "initiator": a[1] });
            for (k, v) in kv(&a[2..])? {
                anyhow::ensure!(k == "map", "unknown ACL option {k:?}");
                let mut luns = Vec::new();
                for m in v.split(',') {
                    let parts: Vec<&str> = m.split(':').collect();
                    let (mapped, lun, ro) = match parts.as_slice() {
                        [m, l] => (num(m)?, num(l)?, false),
                        [m, l, "ro"] => (num(m)?, num(l)?, true),
                        _ => anyhow::bail!("map entries are MAPPED:LUN[:ro], got {m:?}"),
                    };
                    luns.push(json!({ "mapped": mapped, "lun": lun, "read_only": ro }));
                }
                r["luns"] = json!(luns);
            }
            r
        }
        "remove-acl" => {
            need(2)?;
            json!({ "op": cmd, "target": a[0], "initiator": a[1] })
        }
        "set-chap" => {
            need(2)?;
            // No credentials, or USER '-': the ACL's CHAP credentials are cleared.
            let chap = if a.len() == 2 || (a.len() == 3 && a[2] == "-") {
                Value::Null
            } else {
                chap_json(&a[2..])?
            };
            json!({ "op": "set-acl-chap", "target": a[0], "initiator": a[1], "chap": chap })
        }
        "set-discovery" => {
            let mut r = json!({ "op": cmd });
            for (k, v) in kv(a)? {
                match k {
                    "sendtargets_enabled_only" => r["tpg_enabled_sendtargets"] = json!(yes(v)?),
                    "chap" if v.is_empty() || v == "none" => r["chap"] = Value::Null,
                    "chap" => {
                        let (u, s) = v
                            .split_once(':')
                            .ok_or_else(|| anyhow::anyhow!("chap=USER:SECRET"))?;
                        r["chap"] = json!({ "user": u, "secret": s });
                    }
                    _ => anyhow::bail!("unknown discovery option {k:?}"),
                }
            }
            r
        }
        _ => anyhow::bail!("unknown command {cmd:?} (see ferrite admin --help)"),
    })
}

/// Send one request and wait for the answer (blocking; the CLI has no runtime of its own).
pub fn call(socket: &Path, req: &Value) -> anyhow::Result<Value> {
    use std::io::{BufRead, BufReader as StdBufReader};
    let mut sock = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {}: {e}", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    sock.write_all(&line)?;
    let mut answer = String::new();
    StdBufReader::new(sock).read_line(&mut answer)?;
    let v: Value = serde_json::from_str(&answer)?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        anyhow::bail!(
            "{}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request failed")
        )
    }
}

/// Human-readable rendering of a result.
pub fn render(cmd: &str, v: &Value) -> String {
    let mut out = String::new();
    match cmd {
        "sessions" => {
            for s in v.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "TSIH {} {} isid {} -> {} tpgt {} from {} LUNs {} CIDs {}\n",
                    s["tsih"],
                    s["initiator"].as_str().unwrap_or(""),
                    s["isid"].as_str().unwrap_or(""),
                    s["target"].as_str().unwrap_or(""),
                    s["tpg_tag"],
                    s["peer"].as_str().unwrap_or(""),
                    s["luns"],
                    s["connections"]
                ));
                if let Some(p) = s["params"].as_object() {
                    let kv: Vec<String> = p
                        .iter()
                        .map(|(k, v)| {
                            format!(
                                "{k}={}",
                                v.as_str()
                                    .map(String::from)
                                    .unwrap_or_else(|| v.to_string())
                            )
                        })
                        .collect();
                    out.push_str(&format!("    {}\n", kv.join(" ")));
                }
            }
            if out.is_empty() {
                out.push_str("no sessions\n");
            }
        }
        "export" => out.push_str(v["toml"].as_str().unwrap_or("")),
        "cluster" => {
            let c = &v["cluster"];
            out.push_str(&format!(
                "node {} {} (lease {} s, etcd {})\n",
                c["node"].as_str().unwrap_or(""),
                if c["serving"] == json!(true) {
                    "serving"
                } else {
                    "fenced"
                },
                c["lease_secs"],
                c["endpoints"]
            ));
            match c["store_error"].as_str() {
                Some(e) => out.push_str(&format!("  etcd: {e}\n")),
                None => out.push_str(&format!("  etcd revision {}\n", c["revision"])),
            }
            for m in c["members"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  member {} lease {} since revision {}{}\n",
                    m["node"].as_str().unwrap_or(""),
                    m["lease"].as_str().unwrap_or("-"),
                    m["since_revision"],
                    if m["drained"] == json!(true) {
                        " drained"
                    } else {
                        ""
                    }
                ));
            }
            for p in c["portals"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  portal {} tag {} owner {} (nodes {}, failback {}){}\n",
                    p["address"].as_str().unwrap_or(""),
                    p["tag"],
                    p["owner"].as_str().unwrap_or("-"),
                    p["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    c["failback"].as_str().unwrap_or(""),
                    match p["move_to"].as_str() {
                        Some(n) => format!(" moved by hand to {n}"),
                        None => String::new(),
                    }
                ));
            }
        }
        _ if v.get("targets").is_some() => {
            for t in v["targets"].as_array().into_iter().flatten() {
                out.push_str(&format!("target {}\n", t["name"].as_str().unwrap_or("")));
                for g in t["portal_groups"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  group {} {}{}{} portals {}\n",
                        g["tag"],
                        if g["enabled"] == json!(true) {
                            "enabled"
                        } else {
                            "disabled"
                        },
                        if g["demo_mode"] == json!(true) {
                            " demo-mode"
                        } else {
                            ""
                        },
                        if g["authentication"] == json!(true) {
                            " chap-required"
                        } else {
                            ""
                        },
                        g["portals"]
                    ));
                }
                for l in t["luns"].as_array().into_iter().flatten() {
                    let medium = match l["medium"].as_str() {
                        Some("ready") | None => String::new(),
                        Some(m) => format!(" [{m}]"),
                    };
                    out.push_str(&format!(
                        "  lun {} {} {} bytes{}{}{medium}\n",
                        l["id"],
                        l["backstore"].as_str().unwrap_or(""),
                        l["size"],
                        if l["read_only"] == json!(true) {
                            " read-only"
                        } else {
                            ""
                        },
                        if l["encrypted"] == json!(true) {
                            " encrypted"
                        } else {
                            ""
                        }
                    ));
                }
                for g in t["alua_groups"].as_array().into_iter().flatten() {
                    let to = match g["transition_to"].as_str() {
                        Some(s) => format!(" -> {s}"),
                        None => String::new(),
                    };
                    out.push_str(&format!(
                        "  alua group {} {}{to}{} portal groups {} (set by {})\n",
                        g["id"],
                        g["state"].as_str().unwrap_or(""),
                        if g["preferred"] == json!(true) {
                            " preferred"
                        } else {
                            ""
                        },
                        g["portal_groups"],
                        g["changed_by"].as_str().unwrap_or(""),
                    ));
                }
                for a in t["acls"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  acl {} luns {}{}\n",
                        a["initiator"].as_str().unwrap_or(""),
                        a["luns"],
                        if a["chap"] == json!(true) {
                            " chap"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        _ => out.push_str(&format!("{v}\n")),
    }
    out
}

/// Rates between two `stats` readings, `secs` apart, as a table.
pub fn render_stats(prev: &Value, now: &Value, secs: f64) -> String {
    use crate::metrics::IoSnapshot;
    let io =
        |v: &Value| -> IoSnapshot { serde_json::from_value(v["io"].clone()).unwrap_or_default() };
    let find = |list: &Value, key: &dyn Fn(&Value) -> bool| -> IoSnapshot {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|x| key(x))
            .map(io)
            .unwrap_or_default()
    };
    let rates = |a: IoSnapshot, b: IoSnapshot| {
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs.max(1e-3);
        let cmds = (b.reads + b.writes + b.others).saturating_sub(a.reads + a.writes + a.others);
        let lat_ms = if cmds == 0 {
            0.0
        } else {
            b.busy_ns.saturating_sub(a.busy_ns) as f64 / cmds as f64 / 1e6
        };
        format!(
            "{:>9.0} {:>9.0} {:>9.0} {:>10.1} {:>10.1} {:>9.3}",
            d(a.reads, b.reads),
            d(a.writes, b.writes),
            d(a.others, b.others),
            d(a.read_bytes, b.read_bytes) / 1048576.0,
            d(a.written_bytes, b.written_bytes) / 1048576.0,
            lat_ms
        )
    };
    let mut out = format!(
        "{:<40} {:>4} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}\n",
        "TARGET", "LUN", "READ/s", "WRITE/s", "OTHER/s", "READ MiB/s", "WRITE MiB/s", "AVG ms"
    );
    for l in now["luns"].as_array().into_iter().flatten() {
        let (t, n) = (
            l["target"].as_str().unwrap_or(""),
            l["lun"].as_u64().unwrap_or(0),
        );
        let before = find(&prev["luns"], &|x| {
            x["target"].as_str() == Some(t) && x["lun"].as_u64() == Some(n)
        });
        out.push_str(&format!("{t:<40} {n:>4} {}\n", rates(before, io(l))));
    }
    out.push_str(&format!(
        "{:<40} {:>4} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}\n",
        "SESSION (TSIH INITIATOR)",
        "",
        "READ/s",
        "WRITE/s",
        "OTHER/s",
        "READ MiB/s",
        "WRITE MiB/s",
        "AVG ms"
    ));
    for x in now["sessions"].as_array().into_iter().flatten() {
        let tsih = x["tsih"].as_u64().unwrap_or(0);
        let before = find(&prev["sessions"], &|y| y["tsih"].as_u64() == Some(tsih));
        let name = format!("{tsih} {}", x["initiator"].as_str().unwrap_or(""));
        out.push_str(&format!("{name:<40} {:>4} {}\n", "", rates(before, io(x))));
    }
    out
}
