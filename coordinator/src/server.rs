//! `shoal serve`: opens the store, sets up the providers, resumes clusters in flight,
//! and runs the operator API (loopback) and the metadata API (facing the VMs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::engine::{Engine, EngineSettings};
use crate::keys;
use crate::metadata;
use crate::providers::local::{LocalProvider, LocalSettings};
use crate::providers::Provider;
use crate::store::Store;

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
    /// Creation timeout.
    pub create_timeout: Duration,
}

/// What `serve` writes for the CLI: where the operator API is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    /// Base URL of the operator API.
    pub url: String,
    /// Base URL of the metadata API.
    pub metadata_url: String,
    /// The server's pid.
    pub pid: u32,
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

/// Runs the coordinator until SIGINT or SIGTERM.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    // Everything the coordinator writes holds or sits beside secrets.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let store = Arc::new(Store::open(&opts.state_dir)?);
    let token = load_or_create_token(&opts.state_dir)?;

    let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
    let mut unavailable = BTreeMap::new();
    let mut local: Option<Arc<LocalProvider>> = None;
    match LocalProvider::usable() {
        Ok(()) => {
            let p = Arc::new(LocalProvider::new(LocalSettings {
                dir: opts.state_dir.join("local"),
                prefix: opts.local_prefix.clone(),
                vpc: opts.local_vpc,
                agent_bin: opts.agent_bin.clone(),
                image_dir: opts.image_dir.clone(),
                metadata_port: opts
                    .metadata_listen
                    .map_or(DEFAULT_METADATA_PORT, |a| a.port()),
                metadata_scheme: "http".into(),
            })?);
            p.ensure_vpc().await?;
            providers.push(p.clone());
            local = Some(p);
        }
        Err(why) => {
            unavailable.insert("local".to_string(), why);
        }
    }
    providers.push(Arc::new(crate::providers::aws::AwsProvider::new()));
    match crate::providers::azure::AzureProvider::new(opts.state_dir.clone()) {
        Ok(p) => providers.push(Arc::new(p)),
        Err(e) => {
            unavailable.insert("azure".to_string(), e.to_string());
        }
    }

    let metadata_addr = match (opts.metadata_listen, &local) {
        (Some(a), _) => a,
        (None, Some(l)) => SocketAddr::from((l.gateway(), DEFAULT_METADATA_PORT)),
        (None, None) => SocketAddr::from(([127, 0, 0, 1], DEFAULT_METADATA_PORT)),
    };
    let settings = EngineSettings {
        advertise_url: opts.advertise_url.clone(),
        create_timeout: opts.create_timeout,
        ..EngineSettings::default()
    };
    let engine = Engine::new(store, providers, unavailable, settings)?;

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
    let info = ApiInfo {
        url: format!("http://{api_addr}"),
        metadata_url: format!("http://{md_addr}"),
        pid: std::process::id(),
    };
    let info_json = serde_json::to_vec_pretty(&info).map_err(|e| ServeError::Io {
        what: "serialising api.json".into(),
        source: std::io::Error::other(e),
    })?;
    let info_path = opts.state_dir.join("api.json");
    keys::write_file_atomic(&info_path, &info_json, 0o600)
        .map_err(io(format!("writing {}", info_path.display())))?;
    tracing::info!(operator_api = %info.url, metadata_api = %info.metadata_url, "coordinator listening");

    engine.reconcile()?;

    let api_app = api::router(ApiState {
        engine: engine.clone(),
        token: Arc::new(token),
    });
    let md_app = metadata::router(engine.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let mut rx2 = stop_rx;
    let api_srv = axum::serve(api_listener, api_app).with_graceful_shutdown(async move {
        let _ = rx1.wait_for(|s| *s).await;
    });
    let md_srv = axum::serve(md_listener, md_app).with_graceful_shutdown(async move {
        let _ = rx2.wait_for(|s| *s).await;
    });
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
    let _ = std::fs::remove_file(&info_path);
    if let Some(l) = local {
        match l.teardown_vpc_if_unused().await {
            Ok(true) => tracing::info!("local VPC removed (no VM left)"),
            Ok(false) => tracing::info!("local VPC kept: local clusters still exist"),
            Err(e) => tracing::warn!(error = %e, "removing the local VPC failed"),
        }
    }
    Ok(())
}
