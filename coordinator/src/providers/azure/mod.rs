//! The Azure provider, on Azure Resource Manager.
//!
//! A cluster is one resource group, `shoal-<name>-<uid>`, holding a network security
//! group, a virtual network with one subnet, and per node a public IP (optional), a NIC
//! and a VM whose custom data is the node's rendered user-data. Every name is derived
//! from the cluster and node ids, and every write is a PUT, so a create repeated after
//! a crash converges on the same resources instead of making new ones. Deleting the
//! resource group deletes everything, and deleting a group that is gone succeeds.
//!
//! Authentication uses a credential made by `shoal credential create azure` (see
//! [`crate::providers::azure::credentials`]): [`auth`] signs client assertions with its key, [`arm`]
//! calls ARM with the tokens.

pub mod arm;
pub mod auth;
pub mod credentials;
pub mod preflight;

pub use self::preflight::preflight;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::future::{join_all, BoxFuture};
use serde_json::{json, Value};

use self::arm::{provisioning_state, ArmClient, ArmSettings};
use self::auth::{Endpoints, TokenSource};
use super::{ClusterRef, NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams, VmState};

/// Azure's limit on custom data, in bytes, before base64. The ARM reference for
/// `osProfile.customData` says "The base-64 encoded string is decoded to a binary array
/// that is saved as a file on the Virtual Machine. The maximum length of the binary
/// array is 65535 bytes", and ARM's own refusal reads "Custom data in OSProfile must be
/// in Base64 encoding and with a maximum length of 87380 characters" (87,380 = the
/// base64 length of 65,535 bytes). The conceptual page's "can't exceed 64 KB" is this
/// same limit, rounded.
pub const USER_DATA_LIMIT: usize = 65_535;

/// `Microsoft.Resources` API version (resource groups).
pub const API_RESOURCES: &str = "2021-04-01";
/// `Microsoft.Network` API version.
pub const API_NETWORK: &str = "2024-05-01";
/// `Microsoft.Compute` API version.
pub const API_COMPUTE: &str = "2024-07-01";
/// VM size when `--instance-type` is not given.
pub const DEFAULT_VM_SIZE: &str = "Standard_D4s_v5";
/// Admin user when `--set admin-user=…` is not given.
pub const DEFAULT_ADMIN_USER: &str = "shoal";
/// The cluster's virtual network.
pub const VNET_CIDR: &str = "10.78.0.0/16";
/// The nodes' subnet.
pub const SUBNET_CIDR: &str = "10.78.0.0/24";
/// The overlay's VXLAN port, open between nodes.
pub const VXLAN_PORT: u16 = 4789;

const NSG_NAME: &str = "shoal-nsg";
const VNET_NAME: &str = "shoal-vnet";
const SUBNET_NAME: &str = "nodes";
const TAG_CLUSTER: &str = "shoal:cluster";
const TAG_NODE: &str = "shoal:node";

fn config(message: impl Into<String>) -> ProviderError {
    ProviderError::Config {
        provider: "azure",
        message: message.into(),
    }
}

/// The Azure provider.
#[derive(Debug)]
pub struct AzureProvider {
    state_dir: PathBuf,
    settings: ArmSettings,
    http: reqwest::Client,
    // One token source per credential, endpoint and certificate, so tokens are reused
    // across calls and clusters.
    tokens: Mutex<HashMap<String, Arc<TokenSource>>>,
}

/// A marketplace image or a custom image id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `publisher:offer:sku:version`.
    Marketplace {
        /// Publisher, e.g. `Canonical`.
        publisher: String,
        /// Offer, e.g. `ubuntu-24_04-lts`.
        offer: String,
        /// SKU, e.g. `server`.
        sku: String,
        /// Version, e.g. `latest`.
        version: String,
    },
    /// A full resource id (`/subscriptions/…/images/…` or a gallery image version).
    Id(String),
}

impl ImageRef {
    /// Parses `--image`.
    pub fn parse(s: &str) -> Result<ImageRef, ProviderError> {
        let s = s.trim();
        if s.starts_with("/subscriptions/") {
            if s.to_ascii_lowercase()
                .contains("/providers/microsoft.compute/")
            {
                return Ok(ImageRef::Id(s.to_string()));
            }
            return Err(config(format!(
                "--image {s:?} is a resource id but not a Microsoft.Compute image or gallery image"
            )));
        }
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && !p.contains('/')) {
            return Ok(ImageRef::Marketplace {
                publisher: parts[0].into(),
                offer: parts[1].into(),
                sku: parts[2].into(),
                version: parts[3].into(),
            });
        }
        Err(config(format!(
            "--image {s:?}: give a marketplace URN publisher:offer:sku:version (e.g. Canonical:ubuntu-24_04-lts:server:latest) or an image resource id /subscriptions/…"
        )))
    }

    fn to_json(&self) -> Value {
        match self {
            ImageRef::Marketplace {
                publisher,
                offer,
                sku,
                version,
            } => json!({"publisher": publisher, "offer": offer, "sku": sku, "version": version}),
            ImageRef::Id(id) => json!({ "id": id }),
        }
    }
}

/// Everything a create needs, checked before the first call.
#[derive(Debug)]
struct CreateSettings {
    location: String,
    image: ImageRef,
    vm_size: String,
    admin_user: String,
    ssh_public_key: String,
    public_ip: bool,
    os_disk_type: String,
    os_disk_size_gb: Option<u32>,
    operator_cidr: Option<String>,
    exposed_ports: Vec<u16>,
}

impl CreateSettings {
    fn from_params(params: &ProviderParams) -> Result<CreateSettings, ProviderError> {
        let location = params
            .region
            .as_deref()
            .map(|r| r.to_ascii_lowercase().replace(' ', ""))
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                config("--region is required: an Azure location such as westeurope or eastus")
            })?;
        if !location.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(config(format!(
                "--region {location:?} is not an Azure location name (e.g. westeurope)"
            )));
        }
        let image = ImageRef::parse(params.image.as_deref().ok_or_else(|| {
            config("--image is required: a marketplace URN publisher:offer:sku:version or an image resource id")
        })?)?;
        let vm_size = params
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_VM_SIZE.to_string());
        if !vm_size.starts_with("Standard_") && !vm_size.starts_with("Basic_") {
            return Err(config(format!(
                "--instance-type {vm_size:?} is not an Azure VM size (e.g. {DEFAULT_VM_SIZE})"
            )));
        }
        let admin_user = params
            .extra
            .get("admin-user")
            .cloned()
            .unwrap_or_else(|| DEFAULT_ADMIN_USER.to_string());
        check_admin_user(&admin_user)?;
        let ssh_public_key = ssh_public_key(params)?;
        let public_ip = match params.extra.get("public-ip").map(String::as_str) {
            None | Some("true") | Some("yes") => true,
            Some("false") | Some("no") => false,
            Some(v) => return Err(config(format!("public-ip={v:?}: use true or false"))),
        };
        let os_disk_type = params
            .extra
            .get("os-disk-type")
            .cloned()
            .unwrap_or_else(|| "StandardSSD_LRS".into());
        let os_disk_size_gb = match params.extra.get("os-disk-size-gb") {
            None => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=4095).contains(n))
                    .ok_or_else(|| config(format!("os-disk-size-gb={v:?}: a size in GiB")))?,
            ),
        };
        if let Some(c) = &params.operator_cidr {
            c.parse::<ipnet::IpNet>()
                .map_err(|e| config(format!("operator CIDR {c:?}: {e}")))?;
        }
        Ok(CreateSettings {
            location,
            image,
            vm_size,
            admin_user,
            ssh_public_key,
            public_ip,
            os_disk_type,
            os_disk_size_gb,
            operator_cidr: params.operator_cidr.clone(),
            exposed_ports: params.exposed_ports.clone(),
        })
    }
}

fn check_admin_user(user: &str) -> Result<(), ProviderError> {
    // Azure refuses these as admin user names on Linux.
    const RESERVED: &[&str] = &[
        "root",
        "admin",
        "administrator",
        "guest",
        "sys",
        "user",
        "test",
        "adm",
        "daemon",
        "bin",
        "nobody",
    ];
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok || RESERVED.contains(&user) {
        return Err(config(format!(
            "admin-user {user:?}: use a Linux user name (lowercase, at most 32 characters), not one Azure reserves (root, admin, …)"
        )));
    }
    Ok(())
}

/// The SSH public key from `--set ssh-public-key=…`: the key itself, or a file holding it.
fn ssh_public_key(params: &ProviderParams) -> Result<String, ProviderError> {
    let given = params.extra.get("ssh-public-key").ok_or_else(|| {
        config("an SSH public key is required to log in to the VMs: --set ssh-public-key=~/.ssh/id_ed25519.pub (a file) or the key itself")
    })?;
    let looks_like_key = |s: &str| {
        let mut parts = s.split_whitespace();
        matches!(
            parts.next(),
            Some(
                "ssh-rsa"
                    | "ssh-ed25519"
                    | "ecdsa-sha2-nistp256"
                    | "ecdsa-sha2-nistp384"
                    | "ecdsa-sha2-nistp521"
            )
        ) && parts.next().is_some_and(|b| STANDARD.decode(b).is_ok())
    };
    let text = if looks_like_key(given) {
        given.trim().to_string()
    } else {
        let path = match given.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(rest))
                .unwrap_or_else(|| PathBuf::from(given)),
            None => PathBuf::from(given),
        };
        std::fs::read_to_string(&path)
            .map_err(|e| {
                config(format!(
                    "ssh-public-key: {given:?} is neither an OpenSSH public key nor a readable file ({}: {e})",
                    path.display()
                ))
            })?
            .trim()
            .to_string()
    };
    if !looks_like_key(&text) || text.contains("PRIVATE KEY") {
        return Err(config(
            "ssh-public-key: not an OpenSSH public key (ssh-ed25519 AAAA… or ssh-rsa AAAA…)",
        ));
    }
    Ok(text)
}

/// Whether the cluster's resource group exists.
async fn group_exists(arm: &ArmClient, names: &Names) -> Result<bool, ProviderError> {
    Ok(arm
        .get(
            &format!("read resource group {}", names.group),
            &names.group_path,
            API_RESOURCES,
        )
        .await?
        .is_some())
}

/// A node's OS disk: `NODE-osdisk`.
fn disk_name(node: &str) -> String {
    format!("{node}-osdisk")
}

/// The cluster's resource group: `shoal-NAME-UID`.
fn group_name(cluster: &ClusterRef) -> String {
    format!("shoal-{}", cluster.tag())
}

/// The resource ids of one cluster.
#[derive(Debug, Clone)]
struct Names {
    group_path: String,
    group: String,
}

impl Names {
    fn new(subscription: &str, cluster: &ClusterRef) -> Names {
        let group = group_name(cluster);
        Names {
            group_path: format!("/subscriptions/{subscription}/resourceGroups/{group}"),
            group,
        }
    }
    fn network(&self, kind: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/{kind}/{name}",
            self.group_path
        )
    }
    fn nsg(&self) -> String {
        self.network("networkSecurityGroups", NSG_NAME)
    }
    fn vnet(&self) -> String {
        self.network("virtualNetworks", VNET_NAME)
    }
    fn subnet(&self) -> String {
        format!("{}/subnets/{SUBNET_NAME}", self.vnet())
    }
    fn nic(&self, node: &str) -> String {
        self.network("networkInterfaces", &format!("{node}-nic"))
    }
    fn public_ip(&self, node: &str) -> String {
        self.network("publicIPAddresses", &format!("{node}-pip"))
    }
    fn disk(&self, node: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/disks/{}",
            self.group_path,
            disk_name(node)
        )
    }
    fn vm(&self, node: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/virtualMachines/{node}",
            self.group_path
        )
    }
}

impl AzureProvider {
    /// The provider, reading credentials from `state_dir`, with the default retry and
    /// polling schedule.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<AzureProvider, ProviderError> {
        AzureProvider::with_settings(state_dir, ArmSettings::default())
    }

    /// The provider with its own retry and polling schedule (tests shorten it).
    pub fn with_settings(
        state_dir: impl Into<PathBuf>,
        settings: ArmSettings,
    ) -> Result<AzureProvider, ProviderError> {
        // reqwest is built without a default crypto provider; ring is the one the
        // workspace uses. Installing twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Unavailable {
                provider: "azure",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(AzureProvider {
            state_dir: state_dir.into(),
            settings,
            http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The ARM client and subscription for a cluster's credential and endpoints.
    fn client(&self, params: &ProviderParams) -> Result<(ArmClient, String), ProviderError> {
        let name = params.credential.as_deref().ok_or_else(|| {
            config("--credential NAME is required: make one with `shoal credential create azure NAME --tenant-id … --client-id … --subscription-id …`")
        })?;
        let credential = crate::providers::azure::credentials::load_azure(&self.state_dir, name)
            .map_err(|e| config(e.to_string()))?;
        let endpoints = Endpoints::resolve(&params.extra)?;
        let subscription = credential.info.subscription_id.clone();
        let key = format!(
            "{name}|{}|{}|{}",
            endpoints.authority_host, endpoints.scope, credential.info.thumbprint_sha256
        );
        let tokens = {
            let mut map = self
                .tokens
                .lock()
                .map_err(|_| config("internal error: token cache lock poisoned"))?;
            map.entry(key)
                .or_insert_with(|| {
                    Arc::new(TokenSource::new(
                        self.http.clone(),
                        Arc::new(credential),
                        &endpoints,
                        self.settings.backoff,
                    ))
                })
                .clone()
        };
        Ok((
            ArmClient::new(
                self.http.clone(),
                endpoints.arm,
                tokens,
                self.settings.clone(),
            ),
            subscription,
        ))
    }

    async fn create(
        &self,
        cluster: &ClusterRef,
        params: &ProviderParams,
        nodes: &[NodeRequest],
    ) -> Result<Vec<NodeInfo>, ProviderError> {
        let s = CreateSettings::from_params(params)?;
        for n in nodes {
            if n.user_data.len() > USER_DATA_LIMIT {
                return Err(config(format!(
                    "user-data of {} is {} bytes, over Azure's custom data limit of {USER_DATA_LIMIT} bytes",
                    n.node_id,
                    n.user_data.len()
                )));
            }
            if !shoal_protocol::is_dns_label(&n.node_id) {
                return Err(config(format!(
                    "node id {:?} is not an RFC 1123 label",
                    n.node_id
                )));
            }
        }
        let (arm, subscription) = self.client(params)?;
        let names = Names::new(&subscription, cluster);
        let tag = cluster.tag();
        let loc = &s.location;
        tracing::info!(cluster = %tag, group = %names.group, location = %loc, nodes = nodes.len(), "creating Azure resources");

        arm.put(
            &format!("create resource group {}", names.group),
            &names.group_path,
            API_RESOURCES,
            &json!({
                "location": loc,
                "tags": {TAG_CLUSTER: tag, "shoal:name": cluster.name},
            }),
        )
        .await?;

        let (nsg_op, nsg_path) = (
            format!("create network security group {NSG_NAME}"),
            names.nsg(),
        );
        let nsg_body = json!({
            "location": loc,
            "tags": {TAG_CLUSTER: tag},
            "properties": {"securityRules": security_rules(&s)},
        });
        let (vnet_op, vnet_path) = (format!("create virtual network {VNET_NAME}"), names.vnet());
        // The subnet is declared inside the VNet: a later PUT of the VNet without it
        // would try to delete it, so a repeated create must send the same body.
        let vnet_body = json!({
            "location": loc,
            "tags": {TAG_CLUSTER: tag},
            "properties": {
                "addressSpace": {"addressPrefixes": [VNET_CIDR]},
                "subnets": [{
                    "name": SUBNET_NAME,
                    "properties": {"addressPrefix": SUBNET_CIDR},
                }],
            },
        });
        let nsg = arm.put(&nsg_op, &nsg_path, API_NETWORK, &nsg_body);
        let vnet = arm.put(&vnet_op, &vnet_path, API_NETWORK, &vnet_body);
        tokio::try_join!(nsg, vnet)?;

        let results = join_all(
            nodes
                .iter()
                .map(|n| self.create_node(&arm, &names, cluster, &s, n)),
        )
        .await;
        let mut out = Vec::with_capacity(nodes.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(info) => out.push(info),
                Err(e) => {
                    tracing::warn!(cluster = %tag, error = %e, "an Azure node failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    async fn create_node(
        &self,
        arm: &ArmClient,
        names: &Names,
        cluster: &ClusterRef,
        s: &CreateSettings,
        node: &NodeRequest,
    ) -> Result<NodeInfo, ProviderError> {
        let tag = cluster.tag();
        let tags = json!({TAG_CLUSTER: tag, TAG_NODE: node.node_id});
        let id = &node.node_id;
        let mut public_ip = None;
        if s.public_ip {
            let pip = arm
                .put(
                    &format!("create public IP {id}-pip"),
                    &names.public_ip(id),
                    API_NETWORK,
                    &json!({
                        "location": s.location,
                        "tags": tags,
                        "sku": {"name": "Standard"},
                        "properties": {
                            "publicIPAllocationMethod": "Static",
                            "publicIPAddressVersion": "IPv4",
                        },
                    }),
                )
                .await?;
            public_ip = Some(
                pip.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| names.public_ip(id)),
            );
        }
        let mut ip_config = json!({
            "subnet": {"id": names.subnet()},
            "privateIPAllocationMethod": "Dynamic",
            "primary": true,
        });
        if let Some(p) = &public_ip {
            ip_config["publicIPAddress"] = json!({ "id": p });
        }
        let nic = arm
            .put(
                &format!("create network interface {id}-nic"),
                &names.nic(id),
                API_NETWORK,
                &json!({
                    "location": s.location,
                    "tags": tags,
                    "properties": {
                        "ipConfigurations": [{"name": "ipconfig1", "properties": ip_config}],
                        "networkSecurityGroup": {"id": names.nsg()},
                    },
                }),
            )
            .await?;
        let nic_id = nic
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| names.nic(id));

        // Named, so a node's disk can be found (and deleted) by name like its NIC.
        let mut os_disk = json!({
            "name": disk_name(id),
            "createOption": "FromImage",
            "deleteOption": "Delete",
            "managedDisk": {"storageAccountType": s.os_disk_type},
        });
        if let Some(gb) = s.os_disk_size_gb {
            os_disk["diskSizeGB"] = json!(gb);
        }
        let computer_name = {
            let full = format!("{}-{id}", cluster.name);
            if full.len() <= 63 {
                full
            } else {
                id.clone()
            }
        };
        let vm = arm
            .put(
                &format!("create virtual machine {id}"),
                &names.vm(id),
                API_COMPUTE,
                &json!({
                    "location": s.location,
                    "tags": tags,
                    "properties": {
                        "hardwareProfile": {"vmSize": s.vm_size},
                        "storageProfile": {
                            "imageReference": s.image.to_json(),
                            "osDisk": os_disk,
                            "dataDisks": data_disks(&disk_name(id), node, &s.os_disk_type),
                        },
                        "osProfile": {
                            "computerName": computer_name,
                            "adminUsername": s.admin_user,
                            "customData": STANDARD.encode(&node.user_data),
                            "linuxConfiguration": {
                                "disablePasswordAuthentication": true,
                                "ssh": {"publicKeys": [{
                                    "path": format!("/home/{}/.ssh/authorized_keys", s.admin_user),
                                    "keyData": s.ssh_public_key,
                                }]},
                                "provisionVMAgent": true,
                            },
                        },
                        "networkProfile": {"networkInterfaces": [{
                            "id": nic_id,
                            "properties": {"primary": true, "deleteOption": "Delete"},
                        }]},
                    },
                }),
            )
            .await?;
        let public_address = match &public_ip {
            Some(_) => arm
                .get(
                    &format!("read public IP {id}-pip"),
                    &names.public_ip(id),
                    API_NETWORK,
                )
                .await?
                .and_then(|p| {
                    p.pointer("/properties/ipAddress")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                }),
            None => None,
        };
        let mut info = node_info(id.clone(), &vm, Some(&nic), &names.group);
        if let Some(a) = public_address {
            info.details.insert("public-ip".into(), a);
        }
        Ok(info)
    }

    async fn describe(
        &self,
        cluster: &ClusterRef,
        params: &ProviderParams,
    ) -> Result<Vec<NodeInfo>, ProviderError> {
        let (arm, subscription) = self.client(params)?;
        let names = Names::new(&subscription, cluster);
        if !group_exists(&arm, &names).await? {
            return Ok(Vec::new());
        }
        let vms = arm
            .list(
                &format!("list virtual machines of {}", names.group),
                &format!(
                    "{}/providers/Microsoft.Compute/virtualMachines",
                    names.group_path
                ),
                API_COMPUTE,
            )
            .await?;
        let nics = arm
            .list(
                &format!("list network interfaces of {}", names.group),
                &format!(
                    "{}/providers/Microsoft.Network/networkInterfaces",
                    names.group_path
                ),
                API_NETWORK,
            )
            .await?;
        let nic_by_id: HashMap<String, &Value> = nics
            .iter()
            .filter_map(|n| Some((n.get("id")?.as_str()?.to_ascii_lowercase(), n)))
            .collect();
        let mut out: Vec<NodeInfo> = vms
            .iter()
            .map(|vm| {
                let node_id = vm
                    .get("tags")
                    .and_then(|t| t.get(TAG_NODE))
                    .and_then(Value::as_str)
                    .or_else(|| vm.get("name").and_then(Value::as_str))
                    .unwrap_or_default()
                    .to_string();
                let nic = vm
                    .pointer("/properties/networkProfile/networkInterfaces/0/id")
                    .and_then(Value::as_str)
                    .and_then(|id| nic_by_id.get(&id.to_ascii_lowercase()).copied());
                node_info(node_id, vm, nic, &names.group)
            })
            .collect();
        out.sort_by_key(|n| node_sort_key(&n.node_id));
        Ok(out)
    }

    /// Deletes the VMs of `nodes` and what each had of its own: the VM first (ARM
    /// deletes its NIC and OS disk with it, `deleteOption: Delete`), then, in case they
    /// outlived it, the NIC, the public IP and the disk. A resource already gone is no
    /// error.
    async fn delete_some(
        &self,
        cluster: &ClusterRef,
        params: &ProviderParams,
        nodes: &[String],
    ) -> Result<(), ProviderError> {
        let (arm, subscription) = self.client(params)?;
        let names = Names::new(&subscription, cluster);
        if !group_exists(&arm, &names).await? {
            return Ok(());
        }
        tracing::info!(cluster = %cluster.tag(), group = %names.group, nodes = ?nodes, "deleting the nodes' Azure resources");
        let (arm, names) = (&arm, &names);
        let results = join_all(nodes.iter().map(|id| async move {
            arm.delete(
                &format!("delete virtual machine {id}"),
                &names.vm(id),
                API_COMPUTE,
            )
            .await?;
            arm.delete(
                &format!("delete network interface {id}-nic"),
                &names.nic(id),
                API_NETWORK,
            )
            .await?;
            arm.delete(
                &format!("delete public IP {id}-pip"),
                &names.public_ip(id),
                API_NETWORK,
            )
            .await?;
            arm.delete(
                &format!("delete disk {}", disk_name(id)),
                &names.disk(id),
                API_COMPUTE,
            )
            .await
        }))
        .await;
        results.into_iter().collect()
    }

    async fn delete(
        &self,
        cluster: &ClusterRef,
        params: &ProviderParams,
    ) -> Result<(), ProviderError> {
        let (arm, subscription) = self.client(params)?;
        let names = Names::new(&subscription, cluster);
        tracing::info!(cluster = %cluster.tag(), group = %names.group, "deleting the Azure resource group");
        arm.delete(
            &format!("delete resource group {}", names.group),
            &names.group_path,
            API_RESOURCES,
        )
        .await?;
        // ARM says the operation ended; check that the group really is gone.
        match arm
            .get(
                &format!("read resource group {}", names.group),
                &names.group_path,
                API_RESOURCES,
            )
            .await?
        {
            None => Ok(()),
            Some(g) => Err(ProviderError::Api {
                provider: "azure",
                operation: format!("delete resource group {}", names.group),
                code: "ResourceGroupStillExists".into(),
                message: format!(
                    "the deletion finished but the group is still there (provisioning state {})",
                    provisioning_state(&g).unwrap_or_default()
                ),
            }),
        }
    }
}

/// The NSG rules: everything between nodes (VXLAN named on its own, so it shows in the
/// portal), and the operator's address range on SSH and the exposed ports.
fn security_rules(s: &CreateSettings) -> Value {
    let mut rules = vec![
        json!({"name": "shoal-vxlan", "properties": {
            "description": "Shoal overlay (VXLAN) between nodes",
            "priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "Udp",
            "sourceAddressPrefix": SUBNET_CIDR, "sourcePortRange": "*",
            "destinationAddressPrefix": SUBNET_CIDR, "destinationPortRange": VXLAN_PORT.to_string(),
        }}),
        json!({"name": "shoal-intra-cluster", "properties": {
            "description": "All traffic between the cluster's nodes",
            "priority": 110, "direction": "Inbound", "access": "Allow", "protocol": "*",
            "sourceAddressPrefix": SUBNET_CIDR, "sourcePortRange": "*",
            "destinationAddressPrefix": SUBNET_CIDR, "destinationPortRange": "*",
        }}),
    ];
    match &s.operator_cidr {
        Some(cidr) => {
            let mut ports: Vec<u16> = s.exposed_ports.clone();
            ports.push(22);
            ports.sort_unstable();
            ports.dedup();
            rules.push(json!({"name": "shoal-operator", "properties": {
                "description": "The operator's address range on SSH and the blueprint's published ports",
                "priority": 200, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                "sourceAddressPrefix": cidr, "sourcePortRange": "*",
                "destinationAddressPrefix": "*",
                "destinationPortRanges": ports.iter().map(u16::to_string).collect::<Vec<_>>(),
            }}));
        }
        None if !s.exposed_ports.is_empty() => {
            tracing::warn!(ports = ?s.exposed_ports, "no operator address range given: the exposed ports stay closed");
        }
        None => {}
    }
    Value::Array(rules)
}

fn node_info(node_id: String, vm: &Value, nic: Option<&Value>, group: &str) -> NodeInfo {
    let private_ip = nic
        .and_then(|n| n.pointer("/properties/ipConfigurations/0/properties/privateIPAddress"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Ipv4Addr>().ok());
    let state = match provisioning_state(vm).as_deref() {
        Some("Succeeded") => VmState::Running,
        Some("Failed") | Some("Canceled") => VmState::Failed,
        Some("Deleting") => VmState::Stopped,
        _ => VmState::Pending,
    };
    let mut details = BTreeMap::new();
    details.insert("resource-group".to_string(), group.to_string());
    if let Some(name) = vm.get("name").and_then(Value::as_str) {
        details.insert("vm-name".into(), name.into());
    }
    if let Some(v) = vm.pointer("/properties/vmId").and_then(Value::as_str) {
        details.insert("vm-id".into(), v.into());
    }
    if let Some(l) = vm.get("location").and_then(Value::as_str) {
        details.insert("location".into(), l.into());
    }
    NodeInfo {
        node_id,
        instance_id: vm
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        private_ip,
        state,
        details,
    }
}

/// Orders `node-2` before `node-10`.
fn node_sort_key(id: &str) -> (String, u64) {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = id.split_at(id.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0))
}

/// A node's data disks as `storageProfile.dataDisks`: empty managed disks at LUN 0…N-1
/// (the plan's `lun:N`), named after the OS disk, deleted with the VM.
fn data_disks(os_disk: &str, node: &NodeRequest, storage: &str) -> Value {
    let Some(d) = &node.disks else {
        return json!([]);
    };
    Value::Array(
        (0..d.count)
            .map(|lun| {
                json!({
                    "lun": lun,
                    "name": format!("{os_disk}-data{lun}"),
                    "createOption": "Empty",
                    "diskSizeGB": d.size_gb,
                    "managedDisk": {"storageAccountType": storage},
                    "deleteOption": "Delete",
                })
            })
            .collect(),
    )
}

impl Provider for AzureProvider {
    fn name(&self) -> &'static str {
        "azure"
    }

    // Azure's own limit depends on the VM size (2 to 64 data disks); past it ARM refuses
    // the VM with its own message.
    fn max_disks(&self) -> u32 {
        shoal_protocol::MAX_DISKS as u32
    }

    fn user_data_limit(&self) -> Option<usize> {
        Some(USER_DATA_LIMIT)
    }

    fn footprint(&self, cluster: &ClusterRef, params: &ProviderParams) -> Option<String> {
        let group = group_name(cluster);
        Some(match &params.credential {
            Some(c) => format!("resource group {group} (subscription of credential {c})"),
            None => format!("resource group {group}"),
        })
    }

    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(self.create(cluster, params, nodes))
    }

    fn describe_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(self.describe(cluster, params))
    }

    fn delete_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.delete_some(cluster, params, nodes))
    }

    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.delete(cluster, params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_parse_as_urns_or_ids() {
        assert_eq!(
            ImageRef::parse("Canonical:ubuntu-24_04-lts:server:latest").expect("urn"),
            ImageRef::Marketplace {
                publisher: "Canonical".into(),
                offer: "ubuntu-24_04-lts".into(),
                sku: "server".into(),
                version: "latest".into()
            }
        );
        let id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/shoal";
        assert_eq!(ImageRef::parse(id).expect("id"), ImageRef::Id(id.into()));
        assert!(ImageRef::parse("ubuntu").is_err());
        assert!(ImageRef::parse("/subscriptions/s/resourceGroups/g").is_err());
    }

    #[test]
    fn settings_need_region_image_and_ssh_key() {
        let mut p = ProviderParams::default();
        let e = CreateSettings::from_params(&p).expect_err("no region");
        assert!(e.to_string().contains("--region"));
        p.region = Some("West Europe".into());
        p.image = Some("Canonical:ubuntu-24_04-lts:server:latest".into());
        let e = CreateSettings::from_params(&p).expect_err("no key");
        assert!(e.to_string().contains("ssh-public-key"));
        p.extra.insert(
            "ssh-public-key".into(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q me"
                .into(),
        );
        let s = CreateSettings::from_params(&p).expect("complete");
        assert_eq!(s.location, "westeurope");
        assert_eq!(s.vm_size, DEFAULT_VM_SIZE);
        assert_eq!(s.admin_user, "shoal");
        p.extra.insert("admin-user".into(), "root".into());
        assert!(CreateSettings::from_params(&p).is_err());
    }

    #[test]
    fn nodes_sort_numerically() {
        let mut ids = vec!["node-10", "node-2", "node-0"];
        ids.sort_by_key(|i| node_sort_key(i));
        assert_eq!(ids, vec!["node-0", "node-2", "node-10"]);
    }
}
