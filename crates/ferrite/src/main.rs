//! `ferrite`: the iSCSI target daemon.

mod admin;
mod cli;
mod cluster_alua;
mod cluster_pr;
mod config;
mod membership;
mod metrics;
mod ndisc;
mod portals;
mod pr_cli;
mod runtime;
mod server;
mod systemd;
mod writer;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use config::{Config, LunConfig, PortalGroupConfig, TargetConfig};
use tracing::{error, info};

fn build_config(a: &cli::ServeArgs) -> Result<Config, String> {
    if let Some(p) = &a.config {
        if !a.portals.is_empty() || a.target.is_some() || !a.luns.is_empty() {
            return Err("--config cannot be combined with --portal/--target/--lun".into());
        }
        return Config::load(p);
    }
    let mut c = Config::demo();
    let t: &mut TargetConfig = &mut c.targets[0];
    if let Some(name) = &a.target {
        t.name = name.clone();
        t.alias = None;
    }
    if !a.portals.is_empty() {
        t.portal_groups = vec![PortalGroupConfig {
            tag: 1,
            portals: a.portals.clone(),
            enabled: true,
            demo_mode: Some(true),
            authentication: false,
            chap: None,
        }];
    }
    if !a.luns.is_empty() {
        t.luns = a
            .luns
            .iter()
            .enumerate()
            .map(|(i, spec)| LunConfig {
                id: i as u64,
                backstore: spec.clone(),
                block_size: a.block_size,
                read_only: false,
                thin: None,
                serial: None,
                removable: false,
                physical_block_size: None,
                pr_match_initiator_name_only: false,
                sanitize_rate: None,
                encryption: None,
                ceph: spec.starts_with("rbd:").then(|| a.ceph()).flatten(),
            })
            .collect();
    } else {
        t.luns[0].block_size = a.block_size;
    }
    c.validate()?;
    Ok(c)
}

/// `ferrite admin ...`: one request to the running daemon.
fn admin_main(args: &cli::AdminArgs, matches: &clap::ArgMatches) -> ExitCode {
    let socket = args.socket.clone().unwrap_or_else(admin::default_socket);
    let as_json = args.json;
    let Some((cmd, words)) = cli::admin_words(matches) else {
        eprintln!("ferrite admin: a command is needed (ferrite admin --help)");
        return ExitCode::from(2);
    };
    if cmd == "stats" && !as_json {
        return stats_main(&socket, &words);
    }
    let result = admin::request_from_args(&cmd, &words).and_then(|req| admin::call(&socket, &req));
    match result {
        Ok(v) => {
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", admin::render(&cmd, &v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferrite admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ferrite admin stats [SECONDS [COUNT]]`: a table of rates every SECONDS (default 1), COUNT
/// times (default: until interrupted).
fn stats_main(socket: &Path, args: &[String]) -> ExitCode {
    let secs: f64 = match args.first().map(|a| a.parse::<f64>()) {
        None => 1.0,
        Some(Ok(s)) if s > 0.0 && s <= 3600.0 => s,
        Some(_) => {
            eprintln!("ferrite admin stats: SECONDS must be a number of seconds (0-3600)");
            return ExitCode::from(2);
        }
    };
    let count: Option<u64> = match args.get(1).map(|a| a.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            eprintln!("ferrite admin stats: COUNT must be a whole number");
            return ExitCode::from(2);
        }
    };
    let req = serde_json::json!({ "op": "stats" });
    let mut prev = match admin::call(socket, &req) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ferrite admin: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        let t0 = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        let now = match admin::call(socket, &req) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("ferrite admin: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        print!(
            "{}",
            admin::render_stats(&prev, &now, t0.elapsed().as_secs_f64())
        );
        println!();
        prev = now;
        shown += 1;
    }
    ExitCode::SUCCESS
}

/// Keep large buffers (data segments of 128 KiB and up) in the heap instead of a fresh mmap
/// per allocation: glibc's default threshold makes every large read or write fault in and
/// zero new pages, which profiled as the largest cost of 128 KiB transfers.
///
/// The trim threshold is what a heap keeps free at its top before giving memory back. It
/// matters most for the per-thread arenas (the blocking pool's threads allocate every read's
/// data-in there): `malloc_trim` (see `server::Daemon::trim_heap`) returns free chunks inside a
/// heap but never shrinks a per-thread heap's top, which only `free` does past this threshold.
/// 4 MiB keeps the hot path's 128 KiB buffers in place and lets a burst of 8 MiB buffers go.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// SIGHUP (systemd's `ExecReload`): read the configuration file again and apply the difference
/// live, as `ferrite admin` changes do; a file that does not load changes nothing.
async fn reload(daemon: &Arc<server::Daemon>, path: Option<&Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    systemd::notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        systemd::monotonic_usec()
    ));
    let result = match Config::load(path) {
        Ok(cfg) => {
            let _change = daemon.config_lock.lock().await;
            daemon.apply(cfg).await.map_err(|e| format!("{e:#}"))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => info!(config = %path.display(), "SIGHUP: configuration reloaded"),
        Err(e) => error!(config = %path.display(), "SIGHUP: configuration not reloaded: {e}"),
    }
    systemd::notify("READY=1\nSTATUS=serving");
}

fn main() -> ExitCode {
    tune_allocator();
    let matches = <cli::Cli as clap::CommandFactory>::command().get_matches();
    let parsed = match <cli::Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let args = match parsed.command {
        None => {
            // No command: what there is to do.
            let _ = <cli::Cli as clap::CommandFactory>::command().print_long_help();
            return ExitCode::SUCCESS;
        }
        Some(cli::Cmd::Admin(a)) => {
            let sub = matches.subcommand_matches("admin").expect("admin matches");
            return admin_main(&a, sub);
        }
        Some(cli::Cmd::Pr(p)) => return pr_cli::run(p),
        Some(cli::Cmd::ReleasePortals { config }) => return portals::release_offline(&config),
        Some(cli::Cmd::Completions { shell }) => {
            cli::completions(shell);
            return ExitCode::SUCCESS;
        }
        Some(cli::Cmd::Serve(a)) => a,
    };
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("FERRITE_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match build_config(&args) {
        Ok(mut c) => {
            if args.state_dir.is_some() {
                c.settings.state_dir = args.state_dir.clone();
            }
            if args.metrics.is_some() {
                c.settings.metrics_listen = args.metrics.clone();
            }
            c
        }
        Err(e) => {
            eprintln!("ferrite: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrite: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let daemon = match server::Daemon::build(&cfg, args.config.clone()) {
            Ok(d) => d,
            Err(e) => {
                error!("{e:#}");
                return ExitCode::FAILURE;
            }
        };
        // Every portal listens before anything says the daemon is ready.
        if let Err(e) = daemon.sync_listeners().await {
            error!("{e:#}");
            return ExitCode::FAILURE;
        }
        // A clustered node: membership and self-fencing (`membership`); it opens its portals
        // once it holds its lease.
        if let (Some(c), Some(fence)) = (&cfg.cluster, daemon.fence.clone()) {
            let store: Arc<dyn cluster::ClusterStore> = match (&c.ca, &c.cert, &c.key) {
                (Some(ca), Some(cert), Some(key)) => {
                    let tls = cluster::EtcdTls {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                    };
                    match cluster::EtcdStore::with_tls(c.endpoints.clone(), &tls) {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            error!("cluster: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                // Loopback only (the configuration checked it).
                _ => Arc::new(cluster::EtcdStore::new(c.endpoints.clone())),
            };
            let _ = daemon.cluster_store.set(store.clone());
            daemon.start_cluster_pr(store.clone());
            daemon.start_cluster_alua(store.clone());
            info!(node = %c.node, endpoints = ?c.endpoints, "cluster: joining");
            if !c.portals.is_empty() {
                // A previous run may have died with floating addresses up: down they go
                // before this one may hold any.
                portals::release_all(&daemon, c).await;
                tokio::spawn(portals::run(daemon.clone(), store.clone(), c.clone()));
            }
            tokio::spawn(membership::run(
                daemon.clone(),
                fence,
                store,
                c.prefix.clone(),
                c.node.clone(),
                std::time::Duration::from_secs(c.lease_secs),
            ));
        }
        let d2 = daemon.clone();
        let srv = tokio::spawn(server::serve(d2));
        if let Some(addr) = &cfg.settings.metrics_listen {
            let addr: std::net::SocketAddr = match addr.parse() {
                Ok(a) => a,
                Err(e) => {
                    error!("metrics address {addr:?}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let m = daemon.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(m, addr).await {
                    error!("{e:#}");
                }
            });
        }
        // The admin socket: the flag wins over the config; the default is best effort.
        let (socket, explicit) = match (&args.admin_socket, &cfg.settings.admin_socket) {
            (Some(s), _) if s == "none" => (None, true),
            (Some(s), _) => (Some(PathBuf::from(s)), true),
            (None, Some(p)) => (Some(p.clone()), true),
            (None, None) => (Some(admin::default_socket()), false),
        };
        if let Some(path) = socket {
            let d3 = daemon.clone();
            tokio::spawn(async move {
                if let Err(e) = admin::serve(d3, path.clone()).await {
                    if explicit {
                        error!(socket = %path.display(), "admin API failed: {e:#}");
                    } else {
                        tracing::warn!(socket = %path.display(), "admin API not available: {e:#}");
                    }
                }
            });
        }
        // The handlers are in place before anyone hears we are ready: a SIGTERM right after
        // READY=1 must stop us cleanly, not kill us.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        systemd::notify("READY=1\nSTATUS=serving");
        let reload_from = args.config.clone();
        let reloader = daemon.clone();
        let signals = async move {
            loop {
                tokio::select! {
                    _ = term.recv() => return "SIGTERM",
                    _ = int.recv() => return "SIGINT",
                    _ = hup.recv() => reload(&reloader, reload_from.as_deref()).await,
                }
            }
        };
        tokio::select! {
            r = srv => {
                match r {
                    Ok(Err(e)) => { error!("{e:#}"); return ExitCode::FAILURE; }
                    Ok(Ok(())) => {}
                    Err(e) => { error!("server task failed: {e}"); return ExitCode::FAILURE; }
                }
            }
            sig = signals => {
                info!(signal = sig, "shutting down");
                systemd::notify("STOPPING=1");
                daemon.shutdown();
                // Give connections a moment to send what they have.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        if let (Some(c), Some(fence)) = (&cfg.cluster, daemon.fence.clone()) {
            hand_over(&daemon, c, &fence).await;
        }
        let d = daemon.clone();
        let _ = tokio::task::spawn_blocking(move || d.flush_all()).await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// A clustered node that stops cleanly hands over at once instead of letting its lease run out:
/// no write may start, those under way finish, the backstores are flushed, the floating
/// addresses go down, and only then is the lease revoked (its keys, the portals' included, go
/// with it, and the next nodes take them).
async fn hand_over(
    daemon: &Arc<server::Daemon>,
    c: &config::ClusterConfig,
    fence: &membership::Fence,
) {
    use std::time::Duration;
    fence.raise();
    let quiet = fence
        .drained(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    let d = daemon.clone();
    let _ = tokio::task::spawn_blocking(move || d.flush_all()).await;
    let lease = daemon.portals.lock().await.lease;
    if !c.portals.is_empty() {
        portals::release_all(daemon, c).await;
    }
    let (Some(lease), Some(store)) = (lease, daemon.cluster_store.get()) else {
        return;
    };
    if !quiet {
        tracing::warn!("cluster: writes still under way at shutdown; the lease is left to run out");
        return;
    }
    match tokio::time::timeout(Duration::from_secs(2), store.revoke(lease)).await {
        Ok(Ok(())) => info!("cluster: lease revoked; the other nodes take over now"),
        Ok(Err(e)) => tracing::warn!("cluster: cannot revoke the lease ({e}); it runs out"),
        Err(_) => tracing::warn!("cluster: etcd does not answer; the lease runs out"),
    }
}
