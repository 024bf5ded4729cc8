//! The command line: `shoal serve` runs the coordinator; every other command talks to
//! a running one over the operator API.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use shoal_protocol::Phase;

use crate::api::ClusterView;
use crate::engine::CreateRequest;
use crate::providers::ProviderParams;
use crate::server::ApiInfo;
use crate::store::ClusterState;

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
}

/// `shoal doctor` options.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The provider to check for.
    #[arg(long, default_value = "local", value_parser = clap::builder::PossibleValuesParser::new(crate::doctor::PROVIDERS))]
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
    /// The qemu provider's base image to check (as `shoal serve --qemu-image`).
    #[arg(long)]
    pub qemu_image: Option<PathBuf>,
}

/// `shoal serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
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
    /// Seconds a creation may take before the cluster is FAILED.
    #[arg(long, default_value_t = 900)]
    pub create_timeout: u64,
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

/// `shoal cluster create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Cluster name (1 to 40 of a-z, 0-9, '-').
    pub name: String,
    /// Provider: local, qemu, aws or azure.
    #[arg(long, default_value = "local")]
    pub provider: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub nodes: u32,
    /// Blueprint: a built-in name (demo, ambari) or a TOML file.
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

/// A CLI failure: printed as `shoal: <message>`, exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn cli_err(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

/// An HTTP client for the operator API at `base`: for an `https://` URL it trusts the
/// coordinator's CA only: `ca_cert` (from `SHOAL_CA_CERT` or `api.json`), else the state
/// directory's `ca.pem`.
pub fn operator_http_client(
    base: &str,
    ca_cert: Option<PathBuf>,
    state_dir: &Path,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut http = reqwest::Client::builder().timeout(timeout);
    if base.starts_with("https://") {
        let path = ca_cert
            .or_else(|| std::env::var_os("SHOAL_CA_CERT").map(PathBuf::from))
            .unwrap_or_else(|| state_dir.join(crate::tls::CA_CERT_FILE));
        let pem = std::fs::read(&path).map_err(|e| {
            format!(
                "the coordinator at {base} serves TLS, but its CA certificate {} cannot be read: {e}. Copy <state-dir>/ca.pem from the coordinator and set SHOAL_CA_CERT",
                path.display()
            )
        })?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        http = http.tls_certs_only([cert]);
    }
    http.build().map_err(|e| format!("HTTP client: {e}"))
}

/// A client of the operator API.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Finds the coordinator: `--coordinator` with `SHOAL_TOKEN`, or the state dir's
    /// `api.json` and `token`.
    pub fn discover(state_dir: &Path, coordinator: Option<&str>) -> Result<Client, CliError> {
        let token = match std::env::var("SHOAL_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => std::fs::read_to_string(state_dir.join("token"))
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    cli_err(format!(
                        "cannot read the operator token {}: {e}. Run this as the user who runs `shoal serve`, point --state-dir at its state directory, or set SHOAL_TOKEN",
                        state_dir.join("token").display()
                    ))
                })?,
        };
        let mut ca_cert = std::env::var_os("SHOAL_CA_CERT").map(PathBuf::from);
        let base = match coordinator {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let path = state_dir.join("api.json");
                let text = std::fs::read_to_string(&path).map_err(|_| {
                    cli_err(format!(
                        "no coordinator is running for state dir {} (no {}): start one with `shoal serve --state-dir {}`, or give --coordinator URL",
                        state_dir.display(),
                        path.display(),
                        state_dir.display()
                    ))
                })?;
                let info: ApiInfo = serde_json::from_str(&text)
                    .map_err(|e| cli_err(format!("{}: {e}", path.display())))?;
                ca_cert = ca_cert.or(info.ca_cert);
                info.url
            }
        };
        let http = operator_http_client(&base, ca_cert, state_dir, Duration::from_secs(30))
            .map_err(cli_err)?;
        Ok(Client { base, token, http })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, CliError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            cli_err(format!(
                "cannot reach the coordinator at {}: {e}. Is `shoal serve` running? `shoal doctor` checks this machine and the coordinator",
                self.base
            ))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str::<serde_json::Value>(&text).ok();
        let code = v
            .as_ref()
            .and_then(|v| v["error"]["code"].as_str().map(String::from))
            .unwrap_or_default();
        let message = v
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        let hint = next_step(&code, path, body);
        Err(cli_err(format!(
            "{message} (HTTP {}){hint}",
            status.as_u16()
        )))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, CliError> {
        self.call(method, path, body)
            .await?
            .json()
            .await
            .map_err(|e| cli_err(format!("unexpected answer from the coordinator: {e}")))
    }

    /// One cluster.
    pub async fn show(&self, name: &str) -> Result<ClusterView, CliError> {
        self.json(reqwest::Method::GET, &format!("/v1/clusters/{name}"), None)
            .await
    }
}

/// Runs a credential command (local to the state directory; no server needed).
pub async fn run_credential(state_dir: &Path, cmd: &CredentialCommand) -> Result<i32, CliError> {
    match cmd {
        CredentialCommand::Create(CredentialCreate::Azure {
            name,
            tenant_id,
            client_id,
            subscription_id,
        }) => {
            let (dir, name, tenant, client, sub) = (
                state_dir.to_path_buf(),
                name.clone(),
                tenant_id.clone(),
                client_id.clone(),
                subscription_id.clone(),
            );
            // RSA key generation is CPU work: keep it off the async workers.
            let cred = tokio::task::spawn_blocking(move || {
                crate::credentials::create_azure(&dir, &name, &tenant, &client, &sub)
            })
            .await
            .map_err(|e| cli_err(e.to_string()))?
            .map_err(|e| cli_err(e.to_string()))?;
            println!("{}", cred.instructions());
            Ok(0)
        }
        CredentialCommand::List { json } => {
            let list = crate::credentials::list(state_dir).map_err(|e| cli_err(e.to_string()))?;
            if *json {
                println!("{}", to_json(&list)?);
            } else {
                println!("{:<8} {:<24} STATUS", "PROVIDER", "NAME");
                for c in &list {
                    println!(
                        "{:<8} {:<24} {}",
                        c.provider,
                        c.name,
                        c.problem.as_deref().unwrap_or("ok")
                    );
                }
            }
            Ok(0)
        }
    }
}

/// Runs a client command; returns the process exit status.
pub async fn run_client(cli: &Cli) -> Result<i32, CliError> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    // Commands that need no coordinator.
    match &cli.command {
        Command::Credential(cmd) => return run_credential(&state_dir, cmd).await,
        Command::Doctor(a) => return run_doctor(&state_dir, cli.coordinator.clone(), a).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "shoal", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man { out_dir } => return run_man(out_dir.as_deref()),
        _ => {}
    }
    let client = Client::discover(&state_dir, cli.coordinator.as_deref())?;
    match &cli.command {
        Command::Serve(_)
        | Command::Credential(_)
        | Command::Doctor(_)
        | Command::Completions { .. }
        | Command::Man { .. } => Err(cli_err("not a client command")),
        Command::UserData {
            cluster,
            node,
            json,
        } => {
            let node = node.clone().unwrap_or_else(|| "node-0".to_string());
            let path = format!("/v1/clusters/{cluster}/user-data?node={node}");
            let text = client
                .call(reqwest::Method::GET, &path, None)
                .await?
                .text()
                .await
                .map_err(|e| cli_err(e.to_string()))?;
            if *json {
                let v = serde_json::json!({ "cluster": cluster, "node": node, "user_data": text });
                println!("{}", to_json(&v)?);
            } else {
                print!("{text}");
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Timeline {
            name,
            svg,
            json,
            width,
        }) => {
            let c = client.show(name).await?;
            let t = crate::timeline::Timeline::from_view(&c, crate::store::now_ms());
            let svg_to_stdout = svg.as_deref() == Some(Path::new("-"));
            if let Some(file) = svg.as_deref().filter(|_| !svg_to_stdout) {
                std::fs::write(file, t.render_svg()).map_err(|e| {
                    cli_err(format!(
                        "cannot write the SVG to {}: {e} (is its directory there and writable?)",
                        file.display()
                    ))
                })?;
                eprintln!("timeline of {name} written to {}", file.display());
            }
            if svg_to_stdout {
                print!("{}", t.render_svg());
            } else if *json {
                println!("{}", to_json(&t)?);
            } else {
                let colour =
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                print!(
                    "{}",
                    t.render_text(width.unwrap_or_else(terminal_width), colour)
                );
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::List { json }) => {
            let list: Vec<ClusterView> = client
                .json(reqwest::Method::GET, "/v1/clusters", None)
                .await?;
            if *json {
                println!("{}", to_json(&list)?);
            } else {
                println!(
                    "{:<20} {:<10} {:<8} {:>5}  BLUEPRINT",
                    "NAME", "STATE", "PROVIDER", "NODES"
                );
                for c in &list {
                    println!(
                        "{:<20} {:<10} {:<8} {:>5}  {}",
                        c.name, c.state, c.provider, c.node_count, c.blueprint
                    );
                }
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Show { name, json }) => {
            let c = client.show(name).await?;
            if *json {
                println!("{}", to_json(&c)?);
            } else {
                print_cluster(&c);
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Create(a)) => {
            let (blueprint, blueprint_toml) = match &a.blueprint {
                None => (None, None),
                Some(b) if crate::blueprint::Blueprint::built_in(b).is_some() => {
                    (Some(b.clone()), None)
                }
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        cli_err(format!(
                            "--blueprint {path:?} is neither a built-in blueprint (demo, ambari) nor a readable file: {e}"
                        ))
                    })?;
                    (None, Some(text))
                }
            };
            let req = CreateRequest {
                name: a.name.clone(),
                provider: a.provider.clone(),
                nodes: a.nodes,
                blueprint,
                blueprint_toml,
                params: ProviderParams {
                    region: a.region.clone(),
                    image: a.image.clone(),
                    instance_type: a.instance_type.clone(),
                    credential: a.credential.clone(),
                    exposed_ports: vec![],
                    operator_cidr: a.operator_cidr.clone(),
                    extra: a.set.iter().cloned().collect(),
                },
            };
            let body = serde_json::to_value(&req).map_err(|e| cli_err(e.to_string()))?;
            let c: ClusterView = client
                .json(reqwest::Method::POST, "/v1/clusters", Some(&body))
                .await?;
            eprintln!(
                "cluster {} requested: {} node(s) on {}",
                c.name, c.node_count, c.provider
            );
            if !a.wait {
                if a.json {
                    println!("{}", to_json(&c)?);
                }
                return Ok(0);
            }
            let c = wait_for(
                &client,
                &a.name,
                &[ClusterState::Available, ClusterState::Failed],
            )
            .await?;
            if a.json {
                println!("{}", to_json(&c)?);
            } else {
                print_cluster(&c);
            }
            if c.state == ClusterState::Available {
                Ok(0)
            } else {
                eprintln!(
                    "shoal: cluster {} FAILED: {}",
                    c.name,
                    c.reason.as_deref().unwrap_or("no reason recorded")
                );
                for n in c.nodes.iter().filter(|n| n.phase == Phase::Failed) {
                    if let Some(e) = &n.error {
                        eprintln!("  {}: {}: {}", n.id, e.reason, e.message);
                    }
                    if let Some(log) = n.details.get("agent_log") {
                        eprintln!("  {}: agent log {log}", n.id);
                    }
                }
                eprintln!(
                    "shoal: `shoal cluster timeline {}` shows where it stopped",
                    c.name
                );
                match &c.resources {
                    Some(r) => eprintln!(
                        "shoal: `shoal cluster delete {}` removes what was made ({r})",
                        c.name
                    ),
                    None => eprintln!(
                        "shoal: `shoal cluster delete {}` removes what was made",
                        c.name
                    ),
                }
                Ok(1)
            }
        }
        Command::Cluster(ClusterCommand::Delete { name, wait, json }) => {
            let c: ClusterView = client
                .json(
                    reqwest::Method::DELETE,
                    &format!("/v1/clusters/{name}"),
                    None,
                )
                .await?;
            eprintln!("cluster {} is {}", c.name, c.state);
            if !wait {
                if *json {
                    println!("{}", to_json(&c)?);
                }
                return Ok(0);
            }
            let c = wait_for(&client, name, &[ClusterState::Deleted]).await?;
            if *json {
                println!("{}", to_json(&c)?);
            }
            if c.state != ClusterState::Deleted {
                eprintln!(
                    "shoal: deleting {} failed: {}",
                    c.name,
                    c.reason.as_deref().unwrap_or("no reason recorded")
                );
                eprintln!(
                    "next: fix the cause, then `shoal cluster delete {}` again (it is safe to repeat)",
                    c.name
                );
                return Ok(1);
            }
            eprintln!("cluster {} is {}", c.name, c.state);
            Ok(0)
        }
    }
}

/// What to do after an API error, from its stable code: the text the CLI appends to
/// the coordinator's message.
pub fn next_step(code: &str, path: &str, body: Option<&serde_json::Value>) -> String {
    let name = body
        .and_then(|b| b["name"].as_str())
        .map(String::from)
        .or_else(|| {
            path.strip_prefix("/v1/clusters/")
                .map(|r| r.split(['/', '?']).next().unwrap_or(r).to_string())
        })
        .unwrap_or_else(|| "NAME".into());
    let provider = body.and_then(|b| b["provider"].as_str()).unwrap_or("local");
    match code {
        "not-found" if path.contains("/user-data") => {
            format!(": see the cluster's nodes with `shoal cluster show {name}`")
        }
        "not-found" => ": see the clusters there are with `shoal cluster list`".into(),
        "exists" => format!(
            ": choose another name, or delete it first with `shoal cluster delete {name} --wait`"
        ),
        "conflict" => format!(": see its state with `shoal cluster show {name}`"),
        "provider-unavailable" if crate::doctor::PROVIDERS.contains(&provider) => format!(
            ": `shoal doctor --provider {provider}` says what this machine lacks"
        ),
        "unauthorized" => ": the token does not match this coordinator: give the --state-dir it runs with, or its token in SHOAL_TOKEN".into(),
        "internal" => ": the coordinator's log says more (`shoal serve` writes it to stderr)".into(),
        _ => String::new(),
    }
}

/// The terminal's width: `$COLUMNS`, else the TTY's, else 100.
fn terminal_width() -> usize {
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w >= 40)
    {
        return w;
    }
    tty_columns().unwrap_or(100)
}

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);

fn tty_columns() -> Option<usize> {
    use std::os::fd::AsRawFd;
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a
    // live, properly aligned local; the descriptor is stdout's, open for this call.
    let r = unsafe { tiocgwinsz(out.as_raw_fd(), &mut ws) };
    match r {
        Ok(_) if ws.ws_col >= 40 => Some(usize::from(ws.ws_col)),
        _ => None,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|e| cli_err(e.to_string()))
}

/// Polls until the cluster reaches one of `states`, showing progress on stderr (see
/// [`crate::progress`]).
async fn wait_for(
    client: &Client,
    name: &str,
    states: &[ClusterState],
) -> Result<ClusterView, CliError> {
    use std::io::Write as _;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut progress = crate::progress::Progress::new(tty);
    loop {
        let c = client.show(name).await?;
        let text = progress.update(&c, start.elapsed());
        if !text.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
        let delete_failed = c.state == ClusterState::Deleting && c.reason.is_some();
        if states.contains(&c.state) || delete_failed {
            return Ok(c);
        }
        // A terminal is redrawn often enough to look alive; logs need fewer polls.
        tokio::time::sleep(Duration::from_millis(if tty { 100 } else { 200 })).await;
    }
}

/// `shoal doctor`.
async fn run_doctor(
    state_dir: &Path,
    coordinator: Option<String>,
    a: &DoctorArgs,
) -> Result<i32, CliError> {
    let report = crate::doctor::run(&crate::doctor::Options {
        provider: a.provider.clone(),
        state_dir: state_dir.to_path_buf(),
        image_dir: a.image_dir.clone(),
        agent_bin: a.agent_bin.clone(),
        coordinator,
        region: a.region.clone(),
        profile: a.profile.clone(),
        qemu_image: a.qemu_image.clone(),
    })
    .await;
    if a.json {
        println!("{}", to_json(&report)?);
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report.render_text(colour));
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// `shoal man`: the page of `shoal`, or every page into a directory.
fn run_man(out_dir: Option<&Path>) -> Result<i32, CliError> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match out_dir {
        None => {
            let mut out = std::io::stdout();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| cli_err(format!("writing the manual page: {e}")))?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| cli_err(format!("cannot create {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| cli_err(format!("writing manual pages to {}: {e}", dir.display())))?;
            eprintln!("manual pages written to {}", dir.display());
        }
    }
    Ok(0)
}

/// Prints a cluster for a person.
pub fn print_cluster(c: &ClusterView) {
    let avail = c
        .time_to_available_ms
        .map(|ms| format!("  (available in {:.1}s)", ms as f64 / 1000.0))
        .unwrap_or_default();
    println!(
        "cluster {}  {}  provider {}  blueprint {}  generation {}{avail}",
        c.name, c.state, c.provider, c.blueprint, c.generation
    );
    if let Some(r) = &c.reason {
        println!("reason: {r}");
    }
    println!("metadata {}  overlay {}", c.metadata_url, c.overlay);
    if let Some(r) = &c.resources {
        println!("resources: {r}");
    }
    println!(
        "{:<8} {:<15} {:<14} {:<34} CONTAINERS",
        "NODE", "ADDRESS", "PHASE", "INSTANCE"
    );
    for n in &c.nodes {
        let containers = n
            .containers
            .iter()
            .map(|k| {
                format!(
                    "{} {} {}",
                    k.hostname,
                    k.address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "host".into()),
                    k.state
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<8} {:<15} {:<14} {:<34} {}",
            n.id,
            n.private_ip.map(|i| i.to_string()).unwrap_or_default(),
            n.phase.as_str(),
            n.instance_id.as_deref().unwrap_or(""),
            containers
        );
        if let Some(e) = &n.error {
            println!("         error {}: {}", e.reason, e.message);
        }
        if let Some(state) = n.details.get("vm-state").filter(|s| *s != "running") {
            println!("         VM {state}");
        }
    }
}
