//! The command line: `shoal serve` runs the coordinator; every other command talks to
//! a running one over the operator API, or works on the state directory alone
//! (`credential`, `doctor`). [`run`] dispatches; each command lives in its module.

pub mod client;
pub mod cluster;
pub mod credential;
pub mod doctor;
pub mod error;
pub mod progress;
pub mod serve;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use shoal_protocol::MAX_NODES;

pub use self::client::{operator_http_client, Client};
use self::error::to_json;
pub use self::error::{exit, CliError};
use crate::providers::registry;

/// Shoal: container clusters on cloud VMs, up in seconds.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// State directory (database, tokens, local VMs). Default: /var/lib/shoal for root,
    /// else ~/.local/state/shoal.
    #[arg(long, env = "SHOAL_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Operator API URL of a coordinator (with SHOAL_TOKEN), instead of the state dir's.
    #[arg(long, env = "SHOAL_COORDINATOR", global = true)]
    pub coordinator: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (operator API on loopback, metadata API facing the VMs).
    Serve(ServeArgs),
    /// Create, list, show and delete clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage cloud credentials kept in the state directory.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Print the cloud-init user-data of a cluster's node.
    UserData {
        /// Cluster name.
        cluster: String,
        /// Node id (default node-0).
        #[arg(long)]
        node: Option<String>,
        /// Print JSON: {"cluster", "node", "user_data"}.
        #[arg(long)]
        json: bool,
    },
    /// Check this machine and the coordinator before a run: what is missing and how to
    /// fix it (exit 1 when something blocks a run).
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `shoal completions bash > /etc/bash_completion.d/shoal`;
    /// zsh: `shoal completions zsh > "${fpath[1]}/_shoal"`;
    /// fish: `shoal completions fish > ~/.config/fish/completions/shoal.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    ///
    /// `shoal man | man -l -` reads it; `shoal man --out-dir /usr/local/share/man/man1`
    /// installs shoal.1, shoal-cluster.1, shoal-cluster-create.1, ….
    Man {
        /// Write shoal.1 and a page per subcommand here instead of printing shoal.1.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// A local VM's init (started by the local provider inside the VM's namespace; it
    /// supervises the VM's dockerd and agent as systemd does on a cloud VM).
    #[command(hide = true)]
    LocalVmInit {
        /// The VM's directory (its boot.json).
        #[arg(long)]
        vm_dir: PathBuf,
    },
}

/// `shoal doctor` options.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The provider to check for.
    #[arg(long, default_value = "local", value_parser = clap::builder::PossibleValuesParser::new(registry::NAMES))]
    pub provider: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Image directory the coordinator uses (default: <state-dir>/images).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// The agent binary local VMs run (default: beside this binary).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Region to check (AWS).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS profile to check (as `--set profile=NAME` at create).
    #[arg(long)]
    pub profile: Option<String>,
    /// The qemu provider's base image to check (as `shoal serve --qemu-image`;
    /// default: <state-dir>/vm-image).
    #[arg(long)]
    pub qemu_image: Option<PathBuf>,
    /// The store to check, as `shoal serve --store` takes it (a PostgreSQL URL: is it
    /// reachable, migrated, who leads); better given in SHOAL_STORE_URL.
    #[arg(long, env = crate::store::pg::URL_ENV, hide_env_values = true)]
    pub store: Option<String>,
}

/// How the local provider's VMs get their images (`shoal serve --local-images`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalImages {
    /// Loaded once into a template data root; each VM's dockerd starts with them.
    Shared,
    /// Loaded by each VM's agent from the tarballs at boot.
    Load,
}

/// `shoal serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the state is kept: `sqlite` (the default: a file in the state directory)
    /// or a PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE, which several
    /// coordinators can share (docs/several-coordinators.md). Give the URL in the
    /// environment rather than here: `ps` shows every process's arguments.
    #[arg(long, env = crate::store::pg::URL_ENV, hide_env_values = true)]
    pub store: Option<String>,
    /// Operator API address. On loopback it is plain HTTP; any other address is served
    /// over TLS with the coordinator's CA (<state-dir>/ca.pem).
    #[arg(long, default_value = crate::server::DEFAULT_API_LISTEN)]
    pub api_listen: std::net::SocketAddr,
    /// Metadata API address. Default: the local VPC gateway, port 8787.
    #[arg(long)]
    pub metadata_listen: Option<std::net::SocketAddr>,
    /// Metadata base URL that cloud VMs reach this coordinator at.
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// The shoal-agent binary local VMs run. Default: beside this binary.
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Container image tarballs local VMs treat as baked in. Default: <state-dir>/images.
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Address range of the local provider's VPC.
    #[arg(long, default_value = crate::providers::local::DEFAULT_VPC)]
    pub local_vpc: ipnet::Ipv4Net,
    /// Prefix of the local provider's namespace and link names (the qemu provider's
    /// too).
    #[arg(long, default_value = crate::providers::local::DEFAULT_PREFIX)]
    pub local_prefix: String,
    /// How local VMs get the image tarballs: `shared` (loaded once into a template that
    /// every VM's Docker starts with, as baked VM images do) or `load` (each VM's agent
    /// loads them at boot).
    #[arg(long, value_enum, default_value_t = LocalImages::Shared)]
    pub local_images: LocalImages,
    /// The qemu provider's base image: a directory made by cloud-init/build-vm-image
    /// (e.g. target/vm-image/current). Default: <state-dir>/vm-image.
    #[arg(long)]
    pub qemu_image: Option<PathBuf>,
    /// Address range of the qemu provider's VPC.
    #[arg(long, default_value = crate::providers::qemu::DEFAULT_VPC)]
    pub qemu_vpc: ipnet::Ipv4Net,
    /// The qemu provider's accelerator: auto (KVM when it is usable, else TCG), kvm, tcg.
    #[arg(long, default_value = "auto")]
    pub qemu_accel: crate::providers::qemu::AccelChoice,
    /// Seconds a creation may take before the cluster is FAILED (and a scale or repair
    /// before it ends as failed).
    #[arg(long, default_value_t = 900)]
    pub create_timeout: u64,
    /// Seconds between the reports a resident agent sends when nothing changes, so a
    /// silent node can be told from a quiet one (0: reports on changes only, and no
    /// node is ever marked lost).
    #[arg(long, default_value_t = crate::engine::DEFAULT_REPORT_SECS, value_parser = clap::value_parser!(u32).range(0..=shoal_protocol::MAX_REPORT_SECS as i64))]
    pub report_interval: u32,
    /// Seconds of silence after which a node is marked lost and its cluster DEGRADED.
    #[arg(long, default_value_t = crate::engine::DEFAULT_LOST_AFTER.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub lost_after: u64,
    /// Serve the metadata API over plain HTTP instead of TLS. Cluster keys and node
    /// tokens then cross the network in clear: only for networks you trust, or behind
    /// a TLS-terminating proxy (with an https:// --advertise-url).
    #[arg(long)]
    pub insecure_http: bool,
    /// Another DNS name or address for the listeners' certificate (repeatable); the
    /// local VPC gateway, the listen addresses and --advertise-url's host are in it
    /// already.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Metadata requests per second allowed from one source address (0: no limit).
    #[arg(long, default_value_t = 20.0)]
    pub rate_limit: f64,
    /// Metadata requests one source address may make in a burst.
    #[arg(long, default_value_t = 40.0)]
    pub rate_burst: f64,
    /// Concurrent metadata connections allowed from one source address.
    #[arg(long, default_value_t = 64)]
    pub max_conns_per_source: usize,
    /// Concurrent metadata connections in all: each resident agent holds one (its
    /// long-poll). `serve` raises its open-file limit to fit, and refuses to start
    /// when the hard limit cannot.
    #[arg(long, default_value_t = crate::server::listener::DEFAULT_MAX_CONNS)]
    pub max_conns: usize,
    /// Offer the `sim` provider: it records VMs without making them, for load tests of
    /// the coordinator with `shoal-agent-sim` (bench/agent-sim). Never in production.
    #[arg(long)]
    pub enable_sim_provider: bool,
}

/// `shoal credential …`.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create a credential.
    #[command(subcommand)]
    Create(CredentialCreate),
    /// List stored credentials.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `shoal credential create …`.
#[derive(Debug, Subcommand)]
pub enum CredentialCreate {
    /// Generate a key pair and certificate for an Azure app registration (upload the
    /// certificate; the private key never leaves the state directory).
    Azure {
        /// Credential name.
        name: String,
        /// Directory (tenant) id.
        #[arg(long)]
        tenant_id: String,
        /// Application (client) id of the app registration.
        #[arg(long)]
        client_id: String,
        /// Subscription id.
        #[arg(long)]
        subscription_id: String,
    },
}

/// `shoal cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster.
    Create(CreateArgs),
    /// List clusters.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a cluster and its nodes.
    Show {
        /// Cluster name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resize a host group (--nodes N, with --group G), or take out given nodes
    /// (--remove NODE…), without disturbing what runs on the others.
    Scale(ScaleArgs),
    /// Give nodes new VMs under the same ids and indexes: every lost or failed node, or
    /// the ones named with --node.
    Repair {
        /// Cluster name.
        name: String,
        /// A node to replace (repeatable; default: every lost or failed node).
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
        /// Wait until the repair is over (exit 1 if it fails), showing progress.
        #[arg(long)]
        wait: bool,
        /// Print the cluster as JSON (with --wait: once the repair is over).
        #[arg(long)]
        json: bool,
    },
    /// Reboot a node's VM: every process in it stops, and it boots again.
    Reboot {
        /// Cluster name.
        name: String,
        /// The node.
        #[arg(long)]
        node: String,
        /// Print the cluster as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a cluster and every resource it owns (safe to repeat).
    Delete {
        /// Cluster name.
        name: String,
        /// Wait until it is gone.
        #[arg(long)]
        wait: bool,
        /// Print the cluster as JSON when done.
        #[arg(long)]
        json: bool,
    },
    /// Show how a cluster booted: each node's phases as a waterfall (text, SVG or JSON).
    Timeline {
        /// Cluster name.
        name: String,
        /// Also write the waterfall as an SVG picture to FILE ("-": print it instead).
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Print JSON (the stages of every node, in ms since the request).
        #[arg(long)]
        json: bool,
        /// Width of the text waterfall (default: the terminal's, or $COLUMNS, or 100).
        #[arg(long)]
        width: Option<usize>,
    },
}

/// `shoal cluster scale` options.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Cluster name.
    pub name: String,
    /// The host group to resize (default: the blueprint's "rest" group).
    #[arg(long, requires = "nodes")]
    pub group: Option<String>,
    /// The group's new number of nodes.
    #[arg(long, conflicts_with = "remove", required_unless_present = "remove", value_parser = clap::value_parser!(u32).range(0..=MAX_NODES as i64))]
    pub nodes: Option<u32>,
    /// Nodes to take out, by id.
    #[arg(long, num_args = 1.., value_name = "NODE")]
    pub remove: Vec<String>,
    /// Wait until the scale is over (exit 1 if it fails), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Print the cluster as JSON (with --wait: once the scale is over).
    #[arg(long)]
    pub json: bool,
}

/// `shoal cluster create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Cluster name (1 to 40 of a-z, 0-9, '-').
    pub name: String,
    /// Provider: local, qemu, aws or azure.
    #[arg(long, default_value = "local")]
    pub provider: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=MAX_NODES as i64))]
    pub nodes: u32,
    /// Blueprint: a built-in name (see `coordinator/blueprints/`: demo, …) or a TOML file.
    #[arg(long)]
    pub blueprint: Option<String>,
    /// Wait until the cluster is AVAILABLE (exit 1 if it fails), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Print the cluster as JSON (with --wait: once it is AVAILABLE or FAILED).
    #[arg(long)]
    pub json: bool,
    /// Cloud region.
    #[arg(long)]
    pub region: Option<String>,
    /// Machine image (AMI id, Azure image reference or id; for qemu, the absolute path
    /// of a base image directory instead of `shoal serve --qemu-image`).
    #[arg(long)]
    pub image: Option<String>,
    /// Instance type or VM size.
    #[arg(long)]
    pub instance_type: Option<String>,
    /// Stored credential name (Azure).
    #[arg(long)]
    pub credential: Option<String>,
    /// Address range allowed on the blueprint's published ports.
    #[arg(long)]
    pub operator_cidr: Option<String>,
    /// Provider-specific setting KEY=VALUE (repeatable), e.g. vpc-id=vpc-123.
    #[arg(long = "set", value_parser = parse_kv)]
    pub set: Vec<(String, String)>,
    /// Replace a node on its own once it has been lost this long (seconds, or with s,
    /// m or h: 90s, 10m).
    #[arg(long, value_name = "AFTER", value_parser = parse_duration)]
    pub auto_repair: Option<u64>,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    crate::blueprint::Seconds::parse(s)
        .map(|d| d.0)
        .filter(|d| *d > 0)
        .ok_or_else(|| format!("{s:?} is not a duration of at least 1 s (90, 90s, 10m, 1h)"))
}

/// Runs the command; returns the process exit status (see [`exit`]). Failures are
/// printed as `shoal: <message>`.
pub async fn run(cli: Cli) -> u8 {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let result = match &cli.command {
        Command::Serve(a) => return serve::run(&state_dir, a).await,
        Command::Credential(cmd) => credential::run(&state_dir, cmd).await,
        Command::Doctor(a) => run_doctor(&state_dir, cli.coordinator.clone(), a).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "shoal", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { out_dir } => run_man(out_dir.as_deref()),
        // main() runs it before any runtime starts; here only if called as a library.
        Command::LocalVmInit { vm_dir } => {
            return u8::try_from(crate::providers::local::init::run(vm_dir)).unwrap_or(exit::LOCAL)
        }
        Command::Cluster(cmd) => match Client::discover(&state_dir, cli.coordinator.as_deref()) {
            Ok(client) => cluster::run(&client, cmd).await,
            Err(e) => Err(e),
        },
        Command::UserData {
            cluster,
            node,
            json,
        } => match Client::discover(&state_dir, cli.coordinator.as_deref()) {
            Ok(client) => cluster::user_data(&client, cluster, node.as_deref(), *json).await,
            Err(e) => Err(e),
        },
    };
    result.unwrap_or_else(|e| {
        eprintln!("shoal: {e}");
        e.exit_code()
    })
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/shoal");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("shoal")
}

/// `shoal doctor`.
async fn run_doctor(
    state_dir: &Path,
    coordinator: Option<String>,
    a: &DoctorArgs,
) -> Result<u8, CliError> {
    let report = doctor::run(&doctor::Options {
        provider: a.provider.clone(),
        state_dir: state_dir.to_path_buf(),
        image_dir: a.image_dir.clone(),
        agent_bin: a.agent_bin.clone(),
        coordinator,
        region: a.region.clone(),
        profile: a.profile.clone(),
        qemu_image: a.qemu_image.clone(),
        store: a.store.clone(),
    })
    .await;
    if a.json {
        println!("{}", to_json(&report)?);
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report.render_text(colour));
    }
    Ok(if report.ok { exit::OK } else { exit::FAILED })
}

/// `shoal man`: the page of `shoal`, or every page into a directory.
fn run_man(out_dir: Option<&Path>) -> Result<u8, CliError> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match out_dir {
        None => {
            let mut out = std::io::stdout();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CliError::Local(format!("writing the manual page: {e}")))?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Local(format!("cannot create {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                CliError::Local(format!("writing manual pages to {}: {e}", dir.display()))
            })?;
            eprintln!("manual pages written to {}", dir.display());
        }
    }
    Ok(exit::OK)
}
