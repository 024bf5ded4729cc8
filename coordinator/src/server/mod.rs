//! `shoal serve`: opens the store, sets up the providers, resumes clusters in flight,
//! and runs the operator API (loopback) and the metadata API (facing the VMs).

pub mod h1;
pub mod listener;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::net::TcpListener;

use self::listener::Limits;
use crate::api::{self, ApiInfo, ApiState};
use crate::console::session::{SessionSettings, Sessions};
use crate::console::{self, ConsoleState};
use crate::engine::{Engine, EngineSettings};
use crate::keys;
use crate::metadata;
use crate::providers::qemu::AccelChoice;
use crate::providers::registry::{Registry, RegistrySettings};
use crate::store::StoreChoice;
use crate::tls::{self, Ca};

/// Default operator API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8786";
/// Default metadata port.
pub const DEFAULT_METADATA_PORT: u16 = 8787;

/// Options of `shoal serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// State directory.
    pub state_dir: PathBuf,
    /// Operator API address.
    pub api_listen: SocketAddr,
    /// Metadata listener address (default: the local VPC gateway, port 8787).
    pub metadata_listen: Option<SocketAddr>,
    /// Base URL cloud VMs reach the metadata listener at.
    pub advertise_url: Option<String>,
    /// The agent binary the local provider runs.
    pub agent_bin: PathBuf,
    /// Image tarballs for local VMs.
    pub image_dir: PathBuf,
    /// Local VPC range.
    pub local_vpc: Ipv4Net,
    /// Prefix of local namespace names.
    pub local_prefix: String,
    /// Local VMs start with the images in their Docker (see `LocalSettings::shared_images`).
    pub local_shared_images: bool,
    /// Creation timeout (and a change's: every node ready on the new plan).
    pub create_timeout: Duration,
    /// How often resident agents report when nothing changes (0: only on changes).
    pub report_secs: u32,
    /// The silence after which a node is marked lost.
    pub lost_after: Duration,
    /// Serve the metadata API over plain HTTP (explicit opt-in; TLS otherwise).
    pub insecure_http: bool,
    /// Extra names (DNS names or addresses) for the listeners' certificate.
    pub tls_names: Vec<String>,
    /// Limits of the metadata listener (rate, connections, timeouts).
    pub metadata_limits: Limits,
    /// The qemu provider's base image directory (`cloud-init/build-vm-image`).
    pub qemu_image: PathBuf,
    /// The qemu provider's VPC range.
    pub qemu_vpc: Ipv4Net,
    /// The qemu provider's accelerator choice.
    pub qemu_accel: AccelChoice,
    /// Offer the `sim` test provider (records VMs without making them).
    pub enable_sim: bool,
    /// Where the state is kept.
    pub store: StoreChoice,
}

/// `serve` failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Listener or file I/O.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Local provider set-up.
    #[error(transparent)]
    Provider(#[from] crate::providers::ProviderError),
    /// Engine.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The CA or the listeners' certificate.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Options that do not fit together.
    #[error("{0}")]
    Options(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Reads the operator token, creating it (mode 0600) on first start.
pub fn load_or_create_token(state_dir: &Path) -> Result<String, ServeError> {
    let path = state_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if keys::is_secret_shaped(t.trim()) => Ok(t.trim().to_string()),
        Ok(_) | Err(_) => {
            let t = keys::random_secret();
            keys::write_secret_file(&path, format!("{t}\n").as_bytes())
                .map_err(io(format!("writing {}", path.display())))?;
            Ok(t)
        }
    }
}

/// Checks the options that depend on each other, before anything is started.
fn check_options(opts: &ServeOptions) -> Result<(), ServeError> {
    if let Some(url) = &opts.advertise_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ServeError::Options(format!(
                "--advertise-url {url:?} must be an http(s):// URL"
            )));
        }
        if url.starts_with("http://") && !opts.insecure_http {
            return Err(ServeError::Options(format!(
                "--advertise-url {url:?} is plain HTTP but the metadata listener serves TLS: use https://, or --insecure-http to serve plain HTTP"
            )));
        }
    }
    if opts.metadata_limits.max_conns == 0 {
        return Err(ServeError::Options("--max-conns must be at least 1".into()));
    }
    Ok(())
}

/// Where a process on this machine reaches a listener bound to `addr`: a wildcard
/// address on loopback.
fn locally(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    }
}

/// Runs the coordinator until SIGINT or SIGTERM.
pub async fn serve(mut opts: ServeOptions) -> Result<(), ServeError> {
    check_options(&opts)?;
    let (fit, why) = listener::fit_open_files(opts.metadata_limits.max_conns);
    if let Some(why) = why {
        tracing::warn!("{why}");
    }
    opts.metadata_limits.max_conns = fit;
    crate::fault::set_state_dir(opts.state_dir.clone());
    // Everything the coordinator writes holds or sits beside secrets.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // SQLite makes it; with PostgreSQL nothing else would before the token is written.
    std::fs::create_dir_all(&opts.state_dir).map_err(io(format!(
        "creating the state directory {}",
        opts.state_dir.display()
    )))?;
    let store = opts.store.open(&opts.state_dir).await?;
    if let StoreChoice::Postgres(url) = &opts.store {
        tracing::info!(database = %url, "state in PostgreSQL");
    }
    let token = load_or_create_token(&opts.state_dir)?;
    let api_tls_needed = !opts.api_listen.ip().is_loopback();
    let ca = if opts.insecure_http && !api_tls_needed {
        None
    } else {
        Some(Ca::load_or_create(&opts.state_dir)?)
    };

    let providers = Registry::build(&RegistrySettings {
        state_dir: opts.state_dir.clone(),
        agent_bin: opts.agent_bin.clone(),
        image_dir: opts.image_dir.clone(),
        local_vpc: opts.local_vpc,
        local_prefix: opts.local_prefix.clone(),
        local_shared_images: opts.local_shared_images,
        qemu_image: opts.qemu_image.clone(),
        qemu_vpc: opts.qemu_vpc,
        qemu_accel: opts.qemu_accel,
        metadata_listen: opts.metadata_listen,
        metadata_port: opts
            .metadata_listen
            .map_or(DEFAULT_METADATA_PORT, |a| a.port()),
        metadata_scheme: if opts.insecure_http { "http" } else { "https" }.into(),
        enable_sim: opts.enable_sim,
    })
    .await?;
    let gateways = providers.gateways();
    let metadata_addr = match (opts.metadata_listen, gateways.first()) {
        (Some(a), _) => a,
        (None, Some(g)) => SocketAddr::new(*g, DEFAULT_METADATA_PORT),
        (None, None) => SocketAddr::from(([127, 0, 0, 1], DEFAULT_METADATA_PORT)),
    };
    // One certificate for both listeners: every address they are reached at.
    let mut addresses = vec![metadata_addr.ip()];
    addresses.extend(gateways);
    if api_tls_needed {
        addresses.push(opts.api_listen.ip());
        addresses.push(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let names = tls::certificate_names(&addresses, opts.advertise_url.as_deref(), &opts.tls_names);
    let server_tls = match &ca {
        Some(ca) => Some(ca.server_config(&names)?),
        None => None,
    };
    let metadata_tls = if opts.insecure_http {
        tracing::warn!("--insecure-http: the metadata API is plain HTTP; cluster keys and node tokens cross the network in clear");
        None
    } else {
        server_tls.clone()
    };
    let api_tls = if api_tls_needed {
        server_tls.clone()
    } else {
        None
    };
    let settings = EngineSettings {
        advertise_url: opts.advertise_url.clone(),
        create_timeout: opts.create_timeout,
        report_secs: (opts.report_secs > 0).then_some(opts.report_secs),
        lost_after: opts.lost_after,
        // Agents of a TLS listener trust only this CA. With --insecure-http and an
        // https:// advertised URL (a TLS-terminating proxy), they use the system's roots.
        ca_cert_pem: match (&ca, &metadata_tls) {
            (Some(ca), Some(_)) => Some(ca.cert_pem().to_string()),
            _ => None,
        },
        ..EngineSettings::default()
    };
    let api_listener = TcpListener::bind(opts.api_listen)
        .await
        .map_err(io(format!(
            "binding the operator API to {}",
            opts.api_listen
        )))?;
    let md_listener = TcpListener::bind(metadata_addr)
        .await
        .map_err(io(format!("binding the metadata API to {metadata_addr}")))?;
    let api_addr = api_listener
        .local_addr()
        .map_err(io("reading the operator API address"))?;
    let md_addr = md_listener
        .local_addr()
        .map_err(io("reading the metadata API address"))?;
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    // Before the engine resumes any cluster: the sim provider's agents run on this
    // machine and reach the listener where it really is (its port may have been 0).
    providers.metadata_listening(&format!(
        "{}://{}",
        scheme(metadata_tls.is_some()),
        locally(md_addr)
    ));
    let engine = Engine::new(store, providers, settings).await?;

    let info = ApiInfo {
        url: format!("{}://{}", scheme(api_tls.is_some()), locally(api_addr)),
        metadata_url: format!("{}://{md_addr}", scheme(metadata_tls.is_some())),
        pid: std::process::id(),
        ca_cert: ca.as_ref().map(Ca::cert_path),
    };
    let info_json = serde_json::to_vec_pretty(&info).map_err(|e| ServeError::Io {
        what: "serialising api.json".into(),
        source: std::io::Error::other(e),
    })?;
    let info_path = opts.state_dir.join("api.json");
    keys::write_file_atomic(&info_path, &info_json, 0o600)
        .map_err(io(format!("writing {}", info_path.display())))?;
    tracing::info!(operator_api = %info.url, metadata_api = %info.metadata_url, "coordinator listening");

    // The lease first: what the notices start depends on whether this one leads.
    let leads = engine.start_leading().await;
    engine.spawn_notices();
    if leads {
        engine.reconcile().await?;
    }
    engine.spawn_liveness();

    // The web console shares the operator listener (and so its TLS) with the API; its
    // sessions also open the two documents it links to (`api::SESSION_READABLE`).
    let sessions = Arc::new(Sessions::new(
        &token,
        api_tls.is_some(),
        SessionSettings::default(),
    ));
    let api_app = listener::defend(
        api::router(ApiState {
            engine: engine.clone(),
            token: Arc::new(token),
            browser: Some(sessions.clone()),
        })
        .merge(console::router(ConsoleState {
            engine: engine.clone(),
            sessions,
        })),
        &Limits {
            // The operator API is behind its token; no per-source rate limit.
            rate_per_sec: 0.0,
            ..Limits::default()
        },
    );
    let md_app = listener::defend(
        metadata::router(engine.metadata_state()),
        &opts.metadata_limits,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api_srv = listener::serve(
        api_listener,
        api_tls,
        api_app,
        Limits {
            rate_per_sec: 0.0,
            ..Limits::default()
        },
        stop_rx.clone(),
    );
    tokio::spawn(listener::release_after_bursts(
        engine.metrics().metadata_connections(),
        stop_rx.clone(),
    ));
    let md_srv = listener::serve_metadata(
        md_listener,
        metadata_tls,
        md_app,
        opts.metadata_limits.clone(),
        stop_rx,
        engine.metrics().metadata_connections(),
    );
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(io("installing the SIGTERM handler"))?;
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
        Ok::<(), ServeError>(())
    };
    let (a, m, s) = tokio::join!(api_srv, md_srv, signals);
    a.map_err(io("operator API"))?;
    m.map_err(io("metadata API"))?;
    s?;
    // Only our own: a coordinator started on this state dir meanwhile has rewritten it.
    let ours = std::fs::read(&info_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ApiInfo>(&b).ok())
        .is_some_and(|i| i.pid == std::process::id());
    if ours {
        let _ = std::fs::remove_file(&info_path);
    }
    engine.shutdown().await;
    Ok(())
}
