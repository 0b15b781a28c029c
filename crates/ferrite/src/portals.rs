//! Floating portal addresses (`[[cluster.portal]]`, issue 10): which live node holds each,
//! and moving them when a node fails, rejoins, or an operator asks.
//!
//! Ownership lives in the cluster store. `<prefix>portals/<address>` names the holder and is
//! written with compare-and-swap *under the holder's lease*: it disappears when that lease
//! ends, and only one node can create it. A node adds the address to its interface, announces
//! it (gratuitous ARP, or an unsolicited neighbour advertisement for IPv6: `ndisc.rs`) and
//! listens on it only after its compare-and-swap won, and it removes the address when it lets
//! the key go or fences itself — membership fences a node before its
//! lease can end, so the old holder has stopped before the key can vanish and anybody else can
//! take it: two nodes never serve one address. The portal group tag is the one the target
//! configuration gives the address, identical on every node, so initiators see the same
//! address and tag (and their reservations, keyed by the target port, stay valid).
//!
//! Beside the owners, under the same prefix: `portals/want/<address>` (a planned move:
//! `ferrite admin cluster move-portal`, the named node goes first in the preference order while
//! the key exists) and `portals/drain/<node>` (the node holds no portal).
//!
//! [`decide`] is the whole policy, without I/O: from the members, the owners, the moves and
//! drains, what this node takes and lets go. [`run`] feeds it from the store (a watch on the
//! members and the portal keys, and a rescan every few seconds) and carries out its steps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cluster::{Cas, ClusterStore, KeyValue, LeaseId, Revision};
use tokio::process::Command;
use tracing::{info, warn};

use crate::config::{ClusterConfig, ClusterPortal, Failback};
use crate::server::Daemon;

/// The holder of one portal, as the store has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    /// The lease the key lives with (the holder's).
    pub lease: Option<LeaseId>,
    /// The key's `mod_revision` (for a compare-and-swap delete).
    pub revision: Revision,
}

/// The cluster as one read of the store shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Nodes holding their lease (their node key exists).
    pub live: BTreeSet<String>,
    /// Nodes that hold no portal (`drain`).
    pub drained: BTreeSet<String>,
    pub owners: BTreeMap<SocketAddr, Owner>,
    /// Planned moves: the node that goes first for the address.
    pub wants: BTreeMap<SocketAddr, String>,
}

/// What this node does for one portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the owner key (expecting it absent), then add, announce and listen.
    Take(SocketAddr),
    /// The key is ours already but the address is not up here: add, announce and listen.
    Resume(SocketAddr),
    /// Stop listening, drop the connections, remove the address, then delete our key (at
    /// this revision) so that the next node can take it.
    Release(SocketAddr, Revision),
    /// The address is up here but the key is not ours (gone, or another's): take it down.
    Drop(SocketAddr),
}

/// The nodes that may hold `p` now, best first: a planned move's node, then the configured
/// order; live and not drained.
pub fn candidates<'a>(p: &'a ClusterPortal, v: &'a View) -> Vec<&'a str> {
    let mut order: Vec<&str> = Vec::new();
    if let Some(w) = v.wants.get(&p.address) {
        order.push(w);
    }
    for n in &p.nodes {
        if !order.contains(&n.as_str()) {
            order.push(n);
        }
    }
    order.retain(|n| v.live.contains(*n) && !v.drained.contains(*n));
    order
}

/// This node's steps (see the module docs): `me` and its current `lease`, the addresses it has
/// up now (`held`).
pub fn decide(
    me: &str,
    lease: LeaseId,
    portals: &[ClusterPortal],
    failback: Failback,
    v: &View,
    held: &BTreeSet<SocketAddr>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for p in portals {
        let a = p.address;
        let best = candidates(p, v).first().copied();
        let mine = v
            .owners
            .get(&a)
            .filter(|o| o.node == me && o.lease == Some(lease));
        match (v.owners.get(&a), mine) {
            (None, _) => {
                if held.contains(&a) {
                    steps.push(Step::Drop(a));
                }
                if best == Some(me) {
                    steps.push(Step::Take(a));
                }
            }
            (Some(_), None) => {
                // Another's (or a previous run's of ours, until its lease ends).
                if held.contains(&a) {
                    steps.push(Step::Drop(a));
                }
            }
            (Some(_), Some(o)) => {
                let stay = match best {
                    Some(b) if b == me => true,
                    // Nobody may take it: keep serving rather than leave it dark.
                    None => true,
                    Some(b) => {
                        let wanted = v.wants.get(&a).is_some_and(|w| w == b);
                        let allowed = candidates(p, v).contains(&me);
                        // A planned move, a drain or a node no longer listed moves it at
                        // once; a preferred node back from a failure only with failback.
                        allowed && !wanted && failback == Failback::Manual
                    }
                };
                if !stay {
                    steps.push(Step::Release(a, o.revision));
                } else if !held.contains(&a) {
                    steps.push(Step::Resume(a));
                }
            }
        }
    }
    steps
}

/// The owner key of `a`.
pub fn owner_key(prefix: &str, a: &SocketAddr) -> String {
    format!("{prefix}portals/{a}")
}

/// Read the store into a [`View`] (members from `nodes/`, the rest from `portals/`).
pub fn view_of(prefix: &str, nodes: &[KeyValue], portals: &[KeyValue]) -> View {
    let mut v = View::default();
    let np = format!("{prefix}nodes/");
    for kv in nodes {
        if let Some(n) = kv.key.strip_prefix(np.as_bytes()) {
            v.live.insert(String::from_utf8_lossy(n).into_owned());
        }
    }
    let pp = format!("{prefix}portals/");
    for kv in portals {
        let Some(rest) = kv.key.strip_prefix(pp.as_bytes()) else {
            continue;
        };
        let rest = String::from_utf8_lossy(rest);
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        if let Some(n) = rest.strip_prefix("drain/") {
            v.drained.insert(n.to_string());
        } else if let Some(a) = rest.strip_prefix("want/") {
            if let Ok(a) = a.parse() {
                v.wants.insert(a, value.trim().to_string());
            }
        } else if let Ok(a) = rest.parse::<SocketAddr>() {
            let node = serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .and_then(|j| j["node"].as_str().map(str::to_string))
                .unwrap_or_default();
            v.owners.insert(
                a,
                Owner {
                    node,
                    lease: kv.lease,
                    revision: kv.mod_revision,
                },
            );
        }
    }
    v
}

/// What this node holds: its lease while it serves, and the addresses it has up. Changed only
/// under the daemon's `portals` lock, which a fence takes too, so that a take that won its
/// compare-and-swap just before the fence cannot bring an address up after it.
#[derive(Debug, Default)]
pub struct Held {
    pub lease: Option<LeaseId>,
    pub addrs: BTreeSet<SocketAddr>,
    /// The gratuitous ARP still being sent per address: dropping the sender stops it, so
    /// that an announcement of ours never comes after the address went to another node.
    announcing: BTreeMap<SocketAddr, tokio::sync::oneshot::Sender<()>>,
}

impl Held {
    fn forget(&mut self, a: &SocketAddr) {
        self.addrs.remove(a);
        self.announcing.remove(a);
    }
}

/// How long one `ip`, `arping` or hook command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);
/// The store operations of a take or a release, at most (a fence waits for them).
const STORE_LIMIT: Duration = Duration::from_secs(1);
/// Read everything again this often even if no watch said anything.
const RESCAN: Duration = Duration::from_secs(2);

/// Run a command, bounded; its error output if it failed.
async fn run_cmd(program: &str, args: &[String]) -> Result<(), String> {
    let out = tokio::time::timeout(
        COMMAND_LIMIT,
        Command::new(program).args(args).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| {
        format!(
            "{program} {}: no end within {COMMAND_LIMIT:?}",
            args.join(" ")
        )
    })?
    .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Bring `p`'s address up on its interface (or the hook) and announce it; the announcement
/// goes on until it ends or the returned sender is dropped.
async fn address_up(
    c: &ClusterConfig,
    p: &ClusterPortal,
) -> Result<Option<tokio::sync::oneshot::Sender<()>>, String> {
    let cidr = format!("{}/{}", p.address.ip(), p.prefix_len);
    if let Some(hook) = &c.address_hook {
        let mut args: Vec<String> = hook[1..].to_vec();
        args.extend(["add".into(), cidr, p.interface.clone()]);
        return run_cmd(&hook[0], &args).await.map(|()| None);
    }
    let mut args: Vec<String> = ["addr", "add", &cidr, "dev", &p.interface]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if p.address.is_ipv6() {
        // No duplicate address detection: the owner key in the store is what makes the
        // address this node's alone. DAD would leave it tentative (neither listened on nor
        // announced) for a second or more after a takeover, and fail it outright while a
        // crashed holder's kernel still has the address.
        args.push("nodad".into());
    }
    match run_cmd("ip", &args).await {
        Ok(()) => {}
        // Still there from before (a previous run that died): ours now.
        Err(e) if e.contains("File exists") => {}
        Err(e) => return Err(e),
    }
    if let IpAddr::V6(ip) = p.address.ip() {
        return Ok(Some(advertise_v6(p.interface.clone(), ip, p.address)));
    }
    // A gratuitous ARP, so that peers send to this host's MAC at once (without it a peer
    // keeps the old holder's for about 30 s). arping idles about a second per packet: in the
    // background, reaped by its own task, stopped when the address goes (its second packet
    // must not point peers back here once another node holds the address).
    let ip = p.address.ip().to_string();
    match Command::new("arping")
        .args(["-q", "-U", "-c", "2", "-I", &p.interface, &ip])
        .kill_on_drop(true)
        .spawn()
    {
        Ok(mut child) => {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::timeout(COMMAND_LIMIT, child.wait()) => {}
                    _ = stopped => {}
                }
                // Dropping the child kills it if it still runs.
            });
            Ok(Some(stop))
        }
        Err(e) => {
            warn!(
                "portal {}: no gratuitous ARP (arping, Debian iputils-arping: {e}); peers \
                 find the new holder only when their ARP entry expires",
                p.address
            );
            Ok(None)
        }
    }
}

/// Unsolicited neighbour advertisements for a floating IPv6 address (`ndisc`), the IPv6 side
/// of the gratuitous ARP: one now and one a second later, as arping sends two, unless the
/// address goes first (dropping the returned sender).
fn advertise_v6(
    interface: String,
    ip: std::net::Ipv6Addr,
    portal: SocketAddr,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        for round in 0..2 {
            if round > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut stopped => return,
                }
            }
            // One datagram on a raw socket: it does not wait.
            if let Err(e) = crate::ndisc::advertise(&interface, ip) {
                warn!(
                    portal = %portal,
                    "no unsolicited neighbour advertisement ({e}; needs CAP_NET_RAW); peers \
                     find the new holder only when neighbour unreachability detection gives \
                     up on the old one"
                );
                return;
            }
        }
    });
    stop
}

/// Take `p`'s address off its interface (gone already is fine).
async fn address_down(c: &ClusterConfig, p: &ClusterPortal) -> Result<(), String> {
    let cidr = format!("{}/{}", p.address.ip(), p.prefix_len);
    if let Some(hook) = &c.address_hook {
        let mut args: Vec<String> = hook[1..].to_vec();
        args.extend(["del".into(), cidr, p.interface.clone()]);
        return run_cmd(&hook[0], &args).await;
    }
    let args: Vec<String> = ["addr", "del", &cidr, "dev", &p.interface]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match run_cmd("ip", &args).await {
        // Not there: EADDRNOTAVAIL, which iproute2 words differently across versions and
        // families ("Cannot assign requested address", "ipv4: Address not found").
        Err(e)
            if !e.contains("Cannot assign requested address")
                && !e.to_ascii_lowercase().contains("address not found") =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// `ferrite release-portals --config FILE`: every floating address of the configuration down
/// on this host (by `ip addr del` or the hook, as the daemon takes them down), for systemd's
/// `ExecStopPost` after the daemon stopped. A daemon that died (SIGKILL, a crash) cannot take
/// its addresses down, and the kernel keeps them: it would answer initiators with resets, and
/// peers' ARP and neighbour solicitations alongside the new holder, until the restart.
/// Refused while the daemon's admin socket answers (a running holder would lose its address
/// under it).
pub fn release_offline(path: &std::path::Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    let cfg = match crate::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferrite release-portals: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(c) = cfg.cluster.filter(|c| !c.portals.is_empty()) else {
        return ExitCode::SUCCESS; // no floating address
    };
    let socket = cfg
        .settings
        .admin_socket
        .clone()
        .unwrap_or_else(crate::admin::default_socket);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        eprintln!(
            "ferrite release-portals: the daemon is running ({} answers); it takes its \
             addresses down itself when it stops",
            socket.display()
        );
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrite release-portals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    rt.block_on(async {
        for p in &c.portals {
            if let Err(e) = address_down(&c, p).await {
                eprintln!("ferrite release-portals: {}: {e}", p.address);
                failed = true;
            }
        }
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn portal<'a>(c: &'a ClusterConfig, a: &SocketAddr) -> Option<&'a ClusterPortal> {
    c.portals.iter().find(|p| p.address == *a)
}

/// Take every floating address down, holding nothing: at start (a previous run may have died
/// with addresses up) and when the node fences itself.
pub async fn release_all(d: &Arc<Daemon>, c: &ClusterConfig) {
    let mut held = d.portals.lock().await;
    held.lease = None;
    let had = std::mem::take(&mut held.addrs);
    held.announcing.clear();
    d.set_floating_up(&held.addrs);
    let _ = d.sync_listeners().await;
    for a in &had {
        d.close_portal_connections(a);
    }
    for p in &c.portals {
        match address_down(c, p).await {
            Ok(()) if had.contains(&p.address) => info!(portal = %p.address, "portal released"),
            Ok(()) => {}
            Err(e) => warn!(portal = %p.address, "cannot take the address down: {e}"),
        }
    }
}

/// Carry out one step. `lease` is the one `decide` saw.
async fn apply(
    d: &Arc<Daemon>,
    store: &dyn ClusterStore,
    c: &ClusterConfig,
    lease: LeaseId,
    step: Step,
) -> Result<(), String> {
    let mut held = d.portals.lock().await;
    if held.lease != Some(lease) || d.fence.as_ref().is_some_and(|f| f.is_fenced()) {
        // Fenced (or joined again) since the read: the next round decides afresh.
        return Ok(());
    }
    match step {
        Step::Take(a) | Step::Resume(a) => {
            let p = portal(c, &a).ok_or("not a configured portal")?;
            let key = owner_key(&c.prefix, &a);
            if matches!(step, Step::Take(_)) {
                let value = serde_json::json!({ "node": c.node }).to_string();
                let cas = tokio::time::timeout(
                    STORE_LIMIT,
                    store.put_if(key.as_bytes(), value.as_bytes(), 0, Some(lease)),
                )
                .await
                .map_err(|_| "the store did not answer".to_string())?
                .map_err(|e| e.to_string())?;
                match cas {
                    Cas::Done(rev) => info!(portal = %a, revision = rev, "portal owned"),
                    Cas::Conflict(_) => return Ok(()),
                }
            }
            // The key is ours: only now does the address come up here (unless a fence came
            // meanwhile: then the key goes with the lease, and the address stays down).
            if d.fence.as_ref().is_some_and(|f| f.is_fenced()) {
                return Ok(());
            }
            let announcing = match address_up(c, p).await {
                Ok(a) => a,
                Err(e) => {
                    // Let the next node try.
                    if let Ok(Ok((Some(kv), _))) =
                        tokio::time::timeout(STORE_LIMIT, store.get(key.as_bytes())).await
                    {
                        if kv.lease == Some(lease) {
                            let _ = store.delete_if(key.as_bytes(), kv.mod_revision).await;
                        }
                    }
                    return Err(format!("cannot bring the address up: {e}"));
                }
            };
            if let Some(stop) = announcing {
                held.announcing.insert(a, stop);
            }
            held.addrs.insert(a);
            d.set_floating_up(&held.addrs);
            if let Err(e) = d.sync_listeners().await {
                warn!(portal = %a, "cannot listen: {e:#}");
            }
            info!(portal = %a, interface = %p.interface, "portal taken: address up, announced, listening");
        }
        Step::Release(a, revision) => {
            let p = portal(c, &a).ok_or("not a configured portal")?;
            held.forget(&a);
            d.set_floating_up(&held.addrs);
            let _ = d.sync_listeners().await;
            d.close_portal_connections(&a);
            // The commands those connections had under way finish before the next holder
            // can start (bounded; the fence's count is the node's, so this is conservative).
            if let Some(f) = &d.fence {
                f.drained(tokio::time::Instant::now() + Duration::from_secs(2))
                    .await;
            }
            address_down(c, p).await?;
            let key = owner_key(&c.prefix, &a);
            tokio::time::timeout(STORE_LIMIT, store.delete_if(key.as_bytes(), revision))
                .await
                .map_err(|_| "the store did not answer".to_string())?
                .map_err(|e| e.to_string())?;
            info!(portal = %a, "portal released (planned)");
        }
        Step::Drop(a) => {
            let p = portal(c, &a).ok_or("not a configured portal")?;
            held.forget(&a);
            d.set_floating_up(&held.addrs);
            let _ = d.sync_listeners().await;
            d.close_portal_connections(&a);
            address_down(c, p).await?;
            warn!(portal = %a, "portal dropped: its key is not ours");
        }
    }
    Ok(())
}

/// The portal keeper of a clustered node with floating portals: forever.
pub async fn run(d: Arc<Daemon>, store: Arc<dyn ClusterStore>, c: ClusterConfig) {
    let nodes_prefix = format!("{}nodes/", c.prefix);
    let portals_prefix = format!("{}portals/", c.prefix);
    loop {
        let lease = d.portals.lock().await.lease;
        let Some(lease) = lease else {
            // Not serving: wait until membership says we hold a lease.
            let _ = tokio::time::timeout(RESCAN, d.lease_changed.notified()).await;
            continue;
        };
        let read = async {
            let (n, r1) = store.list(nodes_prefix.as_bytes()).await?;
            let (p, r2) = store.list(portals_prefix.as_bytes()).await?;
            Ok::<_, cluster::Error>((n, r1, p, r2))
        };
        let (nodes, r1, ps, r2) = match tokio::time::timeout(STORE_LIMIT * 2, read).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                warn!("portals: cannot read the cluster: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                warn!("portals: the cluster store does not answer");
                continue;
            }
        };
        let v = view_of(&c.prefix, &nodes, &ps);
        let held = d.portals.lock().await.addrs.clone();
        // A listener that could not be bound when its address came up is tried again.
        if let Err(e) = d.sync_listeners().await {
            warn!("portals: {e:#}");
        }
        for step in decide(&c.node, lease, &c.portals, c.failback, &v, &held) {
            if let Err(e) = apply(&d, &*store, &c, lease, step.clone()).await {
                warn!("portals: {step:?}: {e}");
            }
        }
        // Wait for a change of members or portal keys (from just after what we read), our
        // lease, or the rescan.
        let w1 = store.watch(nodes_prefix.as_bytes(), r1 + 1);
        let w2 = store.watch(portals_prefix.as_bytes(), r2 + 1);
        let wait = async {
            match tokio::join!(w1, w2) {
                (Ok(mut a), Ok(mut b)) => {
                    tokio::select! {
                        _ = a.next() => {}
                        _ = b.next() => {}
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = d.lease_changed.notified() => {}
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal(a: &str, nodes: &[&str]) -> ClusterPortal {
        ClusterPortal {
            address: a.parse().unwrap(),
            interface: "eth0".into(),
            prefix_len: 24,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    const L: LeaseId = LeaseId(7);

    fn view(live: &[&str], owners: &[(&str, &str, i64)]) -> View {
        View {
            live: live.iter().map(|n| n.to_string()).collect(),
            owners: owners
                .iter()
                .map(|(a, n, l)| {
                    (
                        a.parse().unwrap(),
                        Owner {
                            node: n.to_string(),
                            lease: Some(LeaseId(*l)),
                            revision: 10,
                        },
                    )
                })
                .collect(),
            ..View::default()
        }
    }

    fn set(a: &[&str]) -> BTreeSet<SocketAddr> {
        a.iter().map(|a| a.parse().unwrap()).collect()
    }

    const A: &str = "10.0.0.100:3260";
    const B: &str = "10.0.0.101:3260";

    #[test]
    fn a_free_portal_goes_to_the_most_preferred_live_node_only() {
        let ps = [portal(A, &["a", "b"]), portal(B, &["b", "a"])];
        let v = view(&["a", "b"], &[]);
        let m = Failback::Manual;
        assert_eq!(
            decide("a", L, &ps, m, &v, &set(&[])),
            vec![Step::Take(A.parse().unwrap())]
        );
        assert_eq!(
            decide("b", L, &ps, m, &v, &set(&[])),
            vec![Step::Take(B.parse().unwrap())]
        );
        // a is gone: b takes both.
        let v = view(&["b"], &[(B, "b", 7)]);
        assert_eq!(
            decide("b", L, &ps, m, &v, &set(&[B])),
            vec![Step::Take(A.parse().unwrap())]
        );
        // A node not listed never takes.
        assert!(decide("c", L, &ps, m, &view(&["c"], &[]), &set(&[])).is_empty());
    }

    #[test]
    fn failback_auto_gives_the_portal_back_and_manual_keeps_it() {
        let ps = [portal(A, &["a", "b"])];
        let v = view(&["a", "b"], &[(A, "b", 7)]);
        assert!(decide("b", L, &ps, Failback::Manual, &v, &set(&[A])).is_empty());
        assert_eq!(
            decide("b", L, &ps, Failback::Auto, &v, &set(&[A])),
            vec![Step::Release(A.parse().unwrap(), 10)]
        );
        // a waits for the key to be gone either way.
        assert!(decide("a", L, &ps, Failback::Auto, &v, &set(&[])).is_empty());
    }

    #[test]
    fn a_planned_move_and_a_drain_move_the_portal_whatever_the_policy() {
        let ps = [portal(A, &["a", "b"])];
        let mut v = view(&["a", "b"], &[(A, "a", 7)]);
        v.wants.insert(A.parse().unwrap(), "b".into());
        let r = vec![Step::Release(A.parse().unwrap(), 10)];
        assert_eq!(decide("a", L, &ps, Failback::Manual, &v, &set(&[A])), r);
        v.owners.clear();
        assert!(decide("a", L, &ps, Failback::Manual, &v, &set(&[])).is_empty());
        assert_eq!(
            decide("b", L, &ps, Failback::Manual, &v, &set(&[])),
            vec![Step::Take(A.parse().unwrap())]
        );
        // A move to a node that is not live changes nothing.
        let mut v = view(&["a"], &[(A, "a", 7)]);
        v.wants.insert(A.parse().unwrap(), "b".into());
        assert!(decide("a", L, &ps, Failback::Manual, &v, &set(&[A])).is_empty());
        // Drained: let go; the next one takes it.
        let mut v = view(&["a", "b"], &[(A, "a", 7)]);
        v.drained.insert("a".into());
        assert_eq!(decide("a", L, &ps, Failback::Manual, &v, &set(&[A])), r);
        // The last node standing keeps serving even when drained.
        let mut v = view(&["a"], &[(A, "a", 7)]);
        v.drained.insert("a".into());
        assert!(decide("a", L, &ps, Failback::Manual, &v, &set(&[A])).is_empty());
    }

    #[test]
    fn a_key_of_another_lease_is_not_ours_and_an_address_without_our_key_goes_down() {
        let ps = [portal(A, &["a", "b"])];
        // Our previous run's key (lease 3): wait for it to end, hold nothing.
        let v = view(&["a", "b"], &[(A, "a", 3)]);
        assert!(decide("a", L, &ps, Failback::Manual, &v, &set(&[])).is_empty());
        assert_eq!(
            decide("a", L, &ps, Failback::Manual, &v, &set(&[A])),
            vec![Step::Drop(A.parse().unwrap())]
        );
        // Our key, address not up (a take cut short): bring it up.
        let v = view(&["a", "b"], &[(A, "a", 7)]);
        assert_eq!(
            decide("a", L, &ps, Failback::Manual, &v, &set(&[])),
            vec![Step::Resume(A.parse().unwrap())]
        );
        // Somebody deleted our key: down, then take again.
        let v = view(&["a", "b"], &[]);
        assert_eq!(
            decide("a", L, &ps, Failback::Manual, &v, &set(&[A])),
            vec![
                Step::Drop(A.parse().unwrap()),
                Step::Take(A.parse().unwrap())
            ]
        );
    }

    #[test]
    fn the_view_reads_members_owners_moves_and_drains() {
        let kv = |k: &str, v: &str, lease: Option<i64>| KeyValue {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            create_revision: 3,
            mod_revision: 4,
            lease: lease.map(LeaseId),
        };
        let v = view_of(
            "/f/",
            &[
                kv("/f/nodes/a", "{}", Some(1)),
                kv("/f/nodes/b", "{}", Some(2)),
            ],
            &[
                kv(&format!("/f/portals/{A}"), r#"{"node":"b"}"#, Some(2)),
                kv(&format!("/f/portals/want/{A}"), "a", None),
                kv("/f/portals/drain/b", "drained", None),
                kv("/f/portals/nonsense", "x", None),
            ],
        );
        assert_eq!(v.live, ["a", "b"].map(String::from).into());
        assert_eq!(v.drained, ["b"].map(String::from).into());
        let a: SocketAddr = A.parse().unwrap();
        assert_eq!(v.wants[&a], "a");
        assert_eq!(
            v.owners[&a],
            Owner {
                node: "b".into(),
                lease: Some(LeaseId(2)),
                revision: 4
            }
        );
        assert_eq!(v.owners.len(), 1);
    }

    #[tokio::test]
    async fn the_store_view_and_compare_and_swap_give_one_owner() {
        // Two nodes decide from the same MemStore; only one compare-and-swap wins, and the
        // key goes with the winner's lease.
        let s = cluster::MemStore::new();
        let ttl = Duration::from_secs(5);
        let (la, lb) = (s.grant(ttl).await.unwrap(), s.grant(ttl).await.unwrap());
        for (n, l) in [("a", la), ("b", lb)] {
            let k = format!("/f/nodes/{n}");
            s.put_if(k.as_bytes(), b"{}", 0, Some(l.id)).await.unwrap();
        }
        let ps = [portal(A, &["b", "a"])];
        let read = || async {
            let (n, _) = s.list(b"/f/nodes/").await.unwrap();
            let (p, _) = s.list(b"/f/portals/").await.unwrap();
            view_of("/f/", &n, &p)
        };
        let v = read().await;
        let none = set(&[]);
        assert!(decide("a", la.id, &ps, Failback::Manual, &v, &none).is_empty());
        assert_eq!(
            decide("b", lb.id, &ps, Failback::Manual, &v, &none),
            vec![Step::Take(A.parse().unwrap())]
        );
        let key = owner_key("/f/", &A.parse().unwrap());
        let val = br#"{"node":"b"}"#;
        assert!(matches!(
            s.put_if(key.as_bytes(), val, 0, Some(lb.id)).await.unwrap(),
            Cas::Done(_)
        ));
        // A second take (say a stale decision of a) loses.
        assert!(matches!(
            s.put_if(key.as_bytes(), br#"{"node":"a"}"#, 0, Some(la.id))
                .await
                .unwrap(),
            Cas::Conflict(Some(_))
        ));
        let v = read().await;
        assert_eq!(v.owners[&A.parse().unwrap()].node, "b");
        // b's lease ends: its node key and its portal go together; a takes over.
        s.revoke(lb.id).await.unwrap();
        let v = read().await;
        assert!(!v.live.contains("b") && v.owners.is_empty());
        assert_eq!(
            decide("a", la.id, &ps, Failback::Manual, &v, &none),
            vec![Step::Take(A.parse().unwrap())]
        );
    }
}
