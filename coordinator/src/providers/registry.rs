//! The one place providers are built: [`Registry::build`] sets up every provider that
//! can run here and records why the others cannot, so the engine, `/v1/health` and
//! `doctor` all tell the same story.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::aws::AwsProvider;
use super::azure::AzureProvider;
use super::local::{LocalProvider, LocalSettings};
use super::preflight::{self, Check, PreflightOptions};
use super::qemu::{self, AccelChoice, KvmProbe, QemuProvider, QemuSettings};
use super::sim::SimProvider;
use super::{Provider, ProviderError};

/// Every provider Shoal has, by name (`sim` is a test provider, off by default).
pub const NAMES: &[&str] = &["local", "qemu", "aws", "azure", "sim"];

/// Why the sim provider is refused when `serve` was not told to enable it.
pub const SIM_DISABLED: &str = "a test provider that makes no VM (load tests with shoal-agent-sim): start `shoal serve --enable-sim-provider` to use it";

/// What the providers need from `shoal serve`.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The coordinator's state directory (local VMs, stored credentials).
    pub state_dir: PathBuf,
    /// The agent binary local VMs run.
    pub agent_bin: PathBuf,
    /// Image tarballs local VMs treat as baked in.
    pub image_dir: PathBuf,
    /// The local provider's VPC range.
    pub local_vpc: Ipv4Net,
    /// Prefix of the local provider's namespace and link names.
    pub local_prefix: String,
    /// Local VMs start with the images in their Docker (see `LocalSettings::shared_images`).
    pub local_shared_images: bool,
    /// The qemu provider's base image directory (`cloud-init/build-vm-image`).
    pub qemu_image: PathBuf,
    /// The qemu provider's VPC range.
    pub qemu_vpc: Ipv4Net,
    /// The qemu provider's accelerator choice.
    pub qemu_accel: AccelChoice,
    /// `--metadata-listen`, when given (else the first gateway, as `serve` does).
    pub metadata_listen: Option<SocketAddr>,
    /// The metadata listener's port.
    pub metadata_port: u16,
    /// `https` or `http` (with `--insecure-http`).
    pub metadata_scheme: String,
    /// Offer the `sim` test provider (`--enable-sim-provider`).
    pub enable_sim: bool,
}

impl RegistrySettings {
    /// What `shoal serve` checks before it sets a provider up: the host's tools and
    /// privileges, not what a cluster needs later.
    pub fn preflight_options(&self) -> PreflightOptions {
        PreflightOptions {
            state_dir: self.state_dir.clone(),
            image_dir: Some(self.image_dir.clone()),
            agent_bin: Some(self.agent_bin.clone()),
            region: None,
            profile: None,
            qemu_image: Some(self.qemu_image.clone()),
            host_only: true,
        }
    }
}

/// The providers of one coordinator: those that can run here, and why the others
/// cannot.
#[derive(Debug, Default)]
pub struct Registry {
    usable: BTreeMap<String, Arc<dyn Provider>>,
    unavailable: BTreeMap<String, String>,
}

/// Why a provider cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The provider asked for.
    pub name: String,
    /// Why not, and what to do.
    pub why: String,
}

impl Registry {
    /// A registry of the given providers (tests, tools); `unavailable` names the others.
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        unavailable: BTreeMap<String, String>,
    ) -> Registry {
        Registry {
            usable: providers
                .into_iter()
                .map(|p| (p.name().to_string(), p))
                .collect(),
            unavailable,
        }
    }

    /// Sets up every provider that can run on this machine (the local provider's VPC
    /// included).
    pub async fn build(s: &RegistrySettings) -> Result<Registry, ProviderError> {
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        let mut unavailable = BTreeMap::new();
        match preflight::blocker(&LocalProvider::preflight(&s.preflight_options())) {
            None => {
                let p = LocalProvider::new(LocalSettings {
                    dir: s.state_dir.join("local"),
                    prefix: s.local_prefix.clone(),
                    vpc: s.local_vpc,
                    agent_bin: s.agent_bin.clone(),
                    // Each VM's init is `shoal local-vm-init`: this very binary.
                    init_bin: std::env::current_exe().map_err(|e| {
                        ProviderError::Local(format!(
                            "cannot tell where this shoal binary is (each local VM's init): {e}"
                        ))
                    })?,
                    image_dir: s.image_dir.clone(),
                    metadata_port: s.metadata_port,
                    metadata_scheme: s.metadata_scheme.clone(),
                    shared_images: s.local_shared_images,
                })?;
                p.ensure_vpc().await?;
                // Before serving, as a cloud image is baked before any VM boots: the
                // first time (or after the tarballs changed) this loads them all once.
                p.prepare_images().await;
                providers.push(Arc::new(p));
            }
            Some(why) => {
                unavailable.insert("local".to_string(), why);
            }
        }
        let local_gateway = providers.first().and_then(|p| p.gateway());
        match qemu_provider(s, local_gateway) {
            Ok(p) => {
                tracing::info!(accel = p.accel().accel.as_str(), why = %p.accel().why, "qemu provider available");
                providers.push(Arc::new(p));
            }
            Err(why) => {
                unavailable.insert("qemu".to_string(), why);
            }
        }
        if s.enable_sim {
            providers.push(Arc::new(SimProvider::new(s.state_dir.join("sim"))?));
        } else {
            unavailable.insert("sim".to_string(), SIM_DISABLED.to_string());
        }
        providers.push(Arc::new(AwsProvider::new()));
        match AzureProvider::new(s.state_dir.clone()) {
            Ok(p) => providers.push(Arc::new(p)),
            Err(e) => {
                unavailable.insert("azure".to_string(), e.to_string());
            }
        }
        Ok(Registry::new(providers, unavailable))
    }

    /// The provider called `name`, or why it cannot be used.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Provider>, Unavailable> {
        if let Some(p) = self.usable.get(name) {
            return Ok(p.clone());
        }
        let why = self.unavailable.get(name).cloned().unwrap_or_else(|| {
            format!(
                "unknown provider (known: {})",
                self.usable
                    .keys()
                    .chain(self.unavailable.keys())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        Err(Unavailable {
            name: name.to_string(),
            why,
        })
    }

    /// Every provider, usable or not (with why not), by name.
    pub fn list(&self) -> Vec<(String, Option<String>)> {
        let mut all: Vec<(String, Option<String>)> = self
            .usable
            .keys()
            .map(|k| (k.clone(), None))
            .chain(
                self.unavailable
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone()))),
            )
            .collect();
        all.sort();
        all
    }

    /// The addresses of this machine that providers' VMs reach the coordinator at
    /// (the local VPC gateway): the metadata listener's default address and names in
    /// its certificate.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.usable.values().filter_map(|p| p.gateway()).collect()
    }

    /// Tells every provider where the metadata listener serves on this machine, once
    /// it is bound.
    pub fn metadata_listening(&self, url: &str) {
        for p in self.usable.values() {
            p.metadata_listening(url);
        }
    }

    /// Lets every provider release what it holds for the coordinator's lifetime (the
    /// local VPC, when no local VM is left).
    pub async fn shutdown(&self) {
        for p in self.usable.values() {
            p.shutdown().await;
        }
    }
}

/// The qemu provider, or why it cannot run here. Its VMs reach the metadata listener
/// through their VPC's gateway (this machine), at the listener's own address: the one
/// `serve` picks (`--metadata-listen`, else the local provider's gateway, else the qemu
/// VPC's gateway). One on loopback is out of their reach.
fn qemu_provider(
    s: &RegistrySettings,
    local_gateway: Option<IpAddr>,
) -> Result<QemuProvider, String> {
    if let Some(why) = preflight::blocker(&QemuProvider::preflight(&s.preflight_options())) {
        return Err(why);
    }
    let accel = qemu::decide_accel(s.qemu_accel, &KvmProbe::read())?;
    let own_gateway = IpAddr::V4(s.qemu_vpc.hosts().next().unwrap_or(s.qemu_vpc.network()));
    let listen = s
        .metadata_listen
        .unwrap_or_else(|| SocketAddr::new(local_gateway.unwrap_or(own_gateway), s.metadata_port));
    let host = match listen.ip() {
        a if a.is_loopback() => {
            return Err(format!(
                "the metadata listener is on loopback ({listen}), out of the VMs' reach: give --metadata-listen ADDRESS:PORT"
            ))
        }
        a if a.is_unspecified() => own_gateway,
        a => a,
    };
    QemuProvider::new(QemuSettings {
        dir: s.state_dir.join("qemu"),
        prefix: s.local_prefix.clone(),
        vpc: s.qemu_vpc,
        image: s.qemu_image.clone(),
        metadata_url: format!(
            "{}://{}",
            s.metadata_scheme,
            SocketAddr::new(host, listen.port())
        ),
        accel,
    })
    .map_err(|e| e.to_string())
}

/// The preflight checks of the provider called `name` (what `shoal doctor` shows), or
/// `None` for an unknown name.
pub fn preflight(name: &str, opts: &PreflightOptions) -> Option<Vec<Check>> {
    match name {
        "local" => Some(LocalProvider::preflight(opts)),
        "qemu" => Some(QemuProvider::preflight(opts)),
        "aws" => Some(super::aws::preflight(opts)),
        "azure" => Some(super::azure::preflight(opts)),
        "sim" => Some(vec![preflight::check(
            "sim",
            preflight::Status::Info,
            "a test provider: it records VMs without making them, and only a coordinator started with --enable-sim-provider offers it",
            None,
        )]),
        _ => None,
    }
}
