//! The command line (clap): `serve`, `admin`, `pr`, `completions`. Each admin command's words
//! are handed, in order, to `admin::request_from_args`, which builds the request the daemon's
//! admin API takes; so the syntax below and the requests stay one thing.

use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, Parser, Subcommand};

/// `ferrite --version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERRITE_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "ferrite",
    version = VERSION,
    about = "An iSCSI target (RFC 7143) serving SCSI block devices",
    long_about = "An iSCSI target (RFC 7143) serving SCSI block devices.\n\n\
        `ferrite serve` with no options serves the demo target iqn.2026-11.io.ferrite:demo on \
        127.0.0.1:3260 with LUN 0 a 1 GiB RAM disk, open to any initiator.",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Serve iSCSI (the demo target when given no options)
    Serve(ServeArgs),
    /// Change the running daemon through its admin socket
    Admin(AdminArgs),
    /// Persistent reservation state saved with APTPL (offline: stop the daemon first)
    Pr(PrArgs),
    /// Take this node's floating portal addresses down, the daemon not running (systemd's
    /// ExecStopPost: a daemon that died leaves none up until its restart)
    ReleasePortals {
        /// The configuration file whose [[cluster.portal]] addresses go down
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl ServeArgs {
    /// The `--ceph-*` settings, if any was given.
    pub fn ceph(&self) -> Option<crate::config::CephConfig> {
        let c = crate::config::CephConfig {
            conf: self.ceph_conf.clone(),
            client_id: self.ceph_id.clone(),
            keyring: self.ceph_keyring.clone(),
            timeout_secs: None,
        };
        (c != crate::config::CephConfig::default()).then_some(c)
    }
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Load the whole configuration from a TOML file
    #[arg(long, value_name = "PATH", conflicts_with_all = ["portals", "target", "luns"])]
    pub config: Option<PathBuf>,
    /// Listen here (repeatable; default 127.0.0.1:3260)
    #[arg(long = "portal", value_name = "ADDR:PORT")]
    pub portals: Vec<String>,
    /// Target name (default iqn.2026-11.io.ferrite:demo)
    #[arg(long, value_name = "IQN")]
    pub target: Option<String>,
    /// ram:SIZE | file:PATH[:SIZE] | block:PATH | rbd:POOL/IMAGE (repeatable; LUN 0, 1, ...)
    #[arg(long = "lun", value_name = "SPEC")]
    pub luns: Vec<String>,
    /// Logical block size of the --lun LUNs: 512 or 4096
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub block_size: u32,
    /// Ceph configuration file of the rbd: LUNs (default $CEPH_CONF, /etc/ceph/ceph.conf)
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub ceph_conf: Option<PathBuf>,
    /// Ceph client id of the rbd: LUNs (default admin)
    #[arg(long, value_name = "ID", conflicts_with = "config")]
    pub ceph_id: Option<String>,
    /// Ceph keyring of the rbd: LUNs (default: the one the configuration file names)
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub ceph_keyring: Option<PathBuf>,
    /// Admin API socket (default: settings.admin_socket, else /run/ferrite/admin.sock as root,
    /// $XDG_RUNTIME_DIR/ferrite/admin.sock otherwise; 'none' disables it)
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<String>,
    /// Where APTPL persistent reservations are kept (default: settings.state_dir,
    /// $STATE_DIRECTORY, $XDG_STATE_HOME/ferrite, ~/.local/state/ferrite, ./ferrite-state)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (default: settings.metrics_listen;
    /// off)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Log filter, e.g. debug or ferrite=debug (default info; also FERRITE_LOG)
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The daemon's admin socket (default as for `serve`)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's answer as JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCmd,
}

/// Every admin command. The fields are positional, in the order the words come; their values
/// go to `admin::request_from_args` as they are.
#[derive(Subcommand, Debug)]
#[command(disable_help_subcommand = true)]
pub enum AdminCmd {
    /// The model: targets, groups, portals, LUNs, ACLs, each LUN's medium state
    Targets,
    /// Sessions with negotiated parameters, open connections and I/O counters
    Sessions,
    /// Per LUN and per session: IOPS, MiB/s, latency, every SECONDS (1), COUNT times
    Stats {
        #[arg(value_name = "SECONDS")]
        seconds: Option<String>,
        #[arg(value_name = "COUNT")]
        count: Option<String>,
    },
    /// End a session (its connections are told: asynchronous event 3)
    DropSession {
        #[arg(value_name = "TSIH")]
        tsih: String,
    },
    /// End one connection of a session (asynchronous event 2; ERL 2 keeps its tasks)
    DropConnection {
        #[arg(value_name = "TSIH")]
        tsih: String,
        #[arg(value_name = "CID")]
        cid: String,
    },
    /// Ask a session to log out (asynchronous event 1); dropped after SECONDS (10)
    LogoutSession {
        #[arg(value_name = "TSIH")]
        tsih: String,
        #[arg(value_name = "SECONDS")]
        seconds: Option<String>,
    },
    /// New target, portal group 1 on these portals
    AddTarget {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "PORTAL", required = true)]
        portals: Vec<String>,
    },
    /// Remove a target (its sessions end)
    RemoveTarget {
        #[arg(value_name = "IQN")]
        iqn: String,
    },
    /// New portal group; alua_group=ID puts it in that ALUA group (needed once the target has
    /// ALUA groups configured)
    AddGroup {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "TAG")]
        tag: String,
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Remove a portal group (its sessions end)
    RemoveGroup(Group),
    /// Enable a portal group
    EnableGroup(Group),
    /// Disable a portal group (its sessions end)
    DisableGroup(Group),
    /// Group attributes: demo_mode=yes|no authentication=yes|no
    SetGroup {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "TAG")]
        tag: String,
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// A portal group's CHAP credentials (demo mode)
    SetGroupChap {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "TAG")]
        tag: String,
        /// USER SECRET [MUTUAL_USER MUTUAL_SECRET]
        #[arg(value_name = "CREDENTIAL", num_args = 2..=4, required = true)]
        chap: Vec<String>,
    },
    /// Listen on one more portal of a group (at once)
    AddPortal(Portal),
    /// Stop listening on a portal of a group
    RemovePortal(Portal),
    /// New LUN: lun=N block_size=N read_only=yes (rbd: also ceph_conf=PATH ceph_id=ID
    /// ceph_keyring=PATH)
    AddLun {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "BACKSTORE")]
        backstore: String,
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Remove a LUN
    RemoveLun {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "LUN")]
        lun: String,
    },
    /// Allow an initiator, with map=MAPPED:LUN[:ro],... (default: every LUN)
    AddAcl {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "INITIATOR")]
        initiator: String,
        #[arg(value_name = "map=...")]
        settings: Vec<String>,
    },
    /// Remove an initiator's ACL (its sessions end)
    RemoveAcl {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "INITIATOR")]
        initiator: String,
    },
    /// An initiator's CHAP credentials: USER SECRET [MUTUAL_USER MUTUAL_SECRET] (USER '-' or
    /// nothing clears them)
    SetChap {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "INITIATOR")]
        initiator: String,
        #[arg(value_name = "CREDENTIAL", num_args = 0..=4)]
        chap: Vec<String>,
    },
    /// Discovery: sendtargets_enabled_only=yes|no chap=USER:SECRET|none
    SetDiscovery {
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// This node in its cluster: name, whether it holds its lease (serving) or is fenced,
    /// the members and the floating portals' holders; or an action: move-portal ADDR NODE
    /// (planned move, kept until cancelled with NODE "-"), drain NODE (it holds no portal), undrain NODE
    Cluster {
        #[arg(value_name = "ACTION")]
        action: Vec<String>,
    },
    /// ALUA target port groups and their access states, by target
    Alua,
    /// Change ALUA states, all at once, through transitioning: ID=STATE... (STATE:
    /// active/optimized, active/non-optimized, standby, unavailable, offline)
    SetAlua {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "ID=STATE", required = true)]
        states: Vec<String>,
    },
    /// New ALUA group: state=STATE preferred=yes portal_groups=TAG,... (moved from their
    /// groups)
    AddAluaGroup(AluaGroupArgs),
    /// ALUA group attributes: state=STATE preferred=yes|no portal_groups=TAG,... (moved)
    SetAluaGroup(AluaGroupArgs),
    /// Remove an ALUA group (its portal groups must be in other groups by then)
    RemoveAluaGroup {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Seconds an operator's ALUA change spends transitioning (0-255)
    SetAluaTransition {
        #[arg(value_name = "IQN")]
        iqn: String,
        #[arg(value_name = "SECONDS")]
        secs: String,
    },
    /// Persistent reservations: keys, holder, type, generation
    PrShow(PrLun),
    /// Drop them all (like PERSISTENT RESERVE OUT CLEAR)
    PrClear(PrLun),
    /// Print the configuration (TOML)
    Export,
    /// Write it atomically (default: the --config file)
    Save {
        #[arg(value_name = "PATH")]
        path: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct Group {
    #[arg(value_name = "IQN")]
    iqn: String,
    #[arg(value_name = "TAG")]
    tag: String,
}

#[derive(Args, Debug)]
pub struct AluaGroupArgs {
    #[arg(value_name = "IQN")]
    iqn: String,
    #[arg(value_name = "ID")]
    id: String,
    #[arg(value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

#[derive(Args, Debug)]
pub struct Portal {
    #[arg(value_name = "IQN")]
    iqn: String,
    #[arg(value_name = "TAG")]
    tag: String,
    #[arg(value_name = "ADDR:PORT")]
    portal: String,
}

#[derive(Args, Debug)]
pub struct PrLun {
    #[arg(value_name = "IQN")]
    iqn: String,
    #[arg(value_name = "LUN")]
    lun: Option<String>,
}

#[derive(Args, Debug)]
pub struct PrArgs {
    #[command(subcommand)]
    pub command: PrCmd,
    /// The state directory (default as for `serve`)
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
#[command(disable_help_subcommand = true)]
pub enum PrCmd {
    /// Print every saved state file in the state directory
    Show,
    /// Remove one (NAME as `show` prints it); the LU starts without registrations next time
    Clear {
        #[arg(long, value_name = "NAME")]
        lun_file: String,
    },
}

/// The name and the words (positional values, in order) of the admin command in `m`, the
/// matches of `ferrite admin`.
pub fn admin_words(m: &ArgMatches) -> Option<(String, Vec<String>)> {
    let (name, sub) = m.subcommand()?;
    let root = Cli::command();
    let admin = root.find_subcommand("admin")?;
    let cmd = admin.find_subcommand(name)?;
    let mut words = Vec::new();
    for arg in cmd.get_arguments().filter(|a| a.is_positional()) {
        if let Some(vals) = sub.get_raw(arg.get_id().as_str()) {
            words.extend(vals.map(|v| v.to_string_lossy().into_owned()));
        }
    }
    Some((name.to_string(), words))
}

/// `ferrite completions SHELL`.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ferrite", &mut std::io::stdout());
}
