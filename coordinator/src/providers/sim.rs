//! `sim`: a test provider that records VMs without making them, for load tests of the
//! coordinator itself (`bench/agent-sim`, `bench/run --only agents`).
//!
//! Creating a node records a VM (running at once, an address from 100.64.0.0/10) and
//! writes the agent configuration its user-data carries to
//! `<state-dir>/sim/agents/<cluster tag>/<node>.json` (mode 0600: it holds the node's
//! token),
//! where a simulator of agents (`shoal-agent-sim --agents DIR`) picks it up and speaks
//! the real metadata protocol as that node. No process is started and nothing is made
//! on the network, so the engine, the store, the metadata listener and the metrics can
//! be exercised with thousands of nodes on one machine.
//!
//! It is refused unless `shoal serve --enable-sim-provider` is given: a cluster on it
//! has no VMs, and an operator must never make one by mistake.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{ClusterRef, NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams, VmState};
use crate::keys::write_file_atomic;
use crate::userdata;

/// The addresses simulated VMs get, one each, never reused while the state lasts.
const SIM_RANGE: (Ipv4Addr, u32) = (Ipv4Addr::new(100, 64, 0, 0), 1 << 22);

/// The VMs the provider recorded, saved to `vms.json` after every change so that a
/// coordinator restarted in the middle of a creation finds what it made.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SimState {
    /// Addresses handed out so far.
    next: u32,
    /// By cluster tag, then node id.
    clusters: BTreeMap<String, BTreeMap<String, SimVm>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimVm {
    instance_id: String,
    private_ip: Ipv4Addr,
}

/// The `sim` provider.
#[derive(Debug)]
pub struct SimProvider {
    dir: PathBuf,
    state: Mutex<SimState>,
    /// The metadata listener's URL on this machine, once it is bound.
    url: OnceLock<String>,
}

fn err(message: String) -> ProviderError {
    ProviderError::Api {
        provider: "sim",
        operation: "record".into(),
        code: "SimStateError".into(),
        message,
    }
}

impl SimProvider {
    /// A provider keeping its records under `dir` (`<state-dir>/sim`).
    pub fn new(dir: PathBuf) -> Result<SimProvider, ProviderError> {
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let state = load(&dir)?;
        Ok(SimProvider {
            dir,
            state: Mutex::new(state),
            url: OnceLock::new(),
        })
    }

    /// The records as the file holds them now: coordinators sharing a state directory
    /// (several on one database) share the sim "cloud", as they would a real one.
    async fn current(&self) -> Result<tokio::sync::MutexGuard<'_, SimState>, ProviderError> {
        let mut state = self.state.lock().await;
        *state = load(&self.dir)?;
        Ok(state)
    }

    /// Where the agent configurations of `cluster`'s nodes are written.
    pub fn agents_dir(&self, cluster: &ClusterRef) -> PathBuf {
        self.dir.join("agents").join(cluster.tag())
    }

    fn save(&self, state: &SimState) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec(state).map_err(|e| err(e.to_string()))?;
        let path = self.dir.join("vms.json");
        write_file_atomic(&path, &bytes, 0o600)
            .map_err(|e| err(format!("writing {}: {e}", path.display())))
    }
}

fn load(dir: &Path) -> Result<SimState, ProviderError> {
    let path = dir.join("vms.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| err(format!("{} is not a sim state: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SimState::default()),
        Err(e) => Err(err(format!("reading {}: {e}", path.display()))),
    }
}

/// Writes a node's agent configuration readable by root only. Not synced: the file is
/// for a simulator on this machine, and a lost one is written again by the next
/// (idempotent) creation.
fn write_agent_config(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

fn info(node: &str, vm: &SimVm) -> NodeInfo {
    NodeInfo {
        node_id: node.to_string(),
        instance_id: vm.instance_id.clone(),
        private_ip: Some(vm.private_ip),
        state: VmState::Running,
        details: BTreeMap::from([("provider".to_string(), "sim (no VM)".to_string())]),
    }
}

impl Provider for SimProvider {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn metadata_listening(&self, url: &str) {
        let _ = self.url.set(url.to_string());
    }

    /// The simulated agents run on this machine: they reach the listener where it is
    /// (`--advertise-url` is not needed).
    fn metadata_url(&self) -> Option<String> {
        self.url.get().cloned()
    }

    fn footprint(&self, cluster: &ClusterRef, _params: &ProviderParams) -> Option<String> {
        Some(format!(
            "no VM: records in {}, agent configurations in {}",
            self.dir.join("vms.json").display(),
            self.agents_dir(cluster).display()
        ))
    }

    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(async move {
            let dir = self.agents_dir(cluster);
            std::fs::create_dir_all(&dir)
                .and_then(|_| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
            // Every configuration first: a user-data that does not parse fails the call
            // before anything is recorded.
            let mut configs = Vec::with_capacity(nodes.len());
            for req in nodes {
                let cfg = userdata::agent_config(&req.user_data)
                    .map_err(|e| err(format!("{}: {e}", req.node_id)))?;
                configs.push(serde_json::to_vec(&cfg).map_err(|e| err(e.to_string()))?);
            }
            let mut state = self.current().await?;
            let mut out = Vec::with_capacity(nodes.len());
            for (req, cfg) in nodes.iter().zip(configs) {
                let instance_id =
                    format!("sim-{}-{}-{}", cluster.tag(), req.node_id, req.incarnation);
                let known = state
                    .clusters
                    .get(&cluster.tag())
                    .and_then(|c| c.get(&req.node_id))
                    .filter(|vm| vm.instance_id == instance_id)
                    .cloned();
                let vm = match known {
                    Some(vm) => vm,
                    None => {
                        if state.next + 2 >= SIM_RANGE.1 {
                            return Err(err(format!(
                                "the sim provider's {} addresses are used up",
                                SIM_RANGE.1
                            )));
                        }
                        // From .1: the range's first address is its network's.
                        state.next += 1;
                        let ip = Ipv4Addr::from(u32::from(SIM_RANGE.0) + state.next);
                        let vm = SimVm {
                            instance_id,
                            private_ip: ip,
                        };
                        state
                            .clusters
                            .entry(cluster.tag())
                            .or_default()
                            .insert(req.node_id.clone(), vm.clone());
                        vm
                    }
                };
                let path = dir.join(format!("{}.json", req.node_id));
                write_agent_config(&path, &cfg)
                    .map_err(|e| err(format!("writing {}: {e}", path.display())))?;
                out.push(info(&req.node_id, &vm));
            }
            self.save(&state)?;
            Ok(out)
        })
    }

    fn describe_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(async move {
            let state = self.current().await?;
            Ok(state
                .clusters
                .get(&cluster.tag())
                .map(|c| c.iter().map(|(n, vm)| info(n, vm)).collect())
                .unwrap_or_default())
        })
    }

    fn delete_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        nodes: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut state = self.current().await?;
            let dir = self.agents_dir(cluster);
            if let Some(c) = state.clusters.get_mut(&cluster.tag()) {
                for n in nodes {
                    c.remove(n);
                    let _ = std::fs::remove_file(dir.join(format!("{n}.json")));
                }
            }
            self.save(&state)
        })
    }

    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut state = self.current().await?;
            state.clusters.remove(&cluster.tag());
            let dir = self.agents_dir(cluster);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("removing {}: {e}", dir.display()))),
            }
            self.save(&state)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::AgentConfig;

    fn request(node: &str, incarnation: u32) -> NodeRequest {
        let cfg = AgentConfig {
            metadata_url: "https://127.0.0.1:8787".into(),
            cluster_key: "k".repeat(43),
            node_id: node.into(),
            node_token: "t".repeat(43),
            ca_cert_pem: None,
            deadline_secs: 600,
        };
        NodeRequest {
            node_id: node.into(),
            index: 0,
            incarnation,
            user_data: userdata::render(&cfg).into_bytes(),
            disks: None,
        }
    }

    #[tokio::test]
    async fn records_vms_once_writes_private_agent_configs_and_forgets_deleted_ones() {
        let tmp = std::env::temp_dir().join(format!("shoal-sim-{}", crate::keys::random_hex(4)));
        let cluster = ClusterRef {
            name: "c".into(),
            uid: "0123456789ab".into(),
        };
        let params = ProviderParams::default();
        let p = SimProvider::new(tmp.join("sim")).expect("provider");
        let reqs = [request("node-0", 0), request("node-1", 0)];
        let first = p
            .create_nodes(&cluster, &params, &reqs)
            .await
            .expect("create");
        // Repeated: the same VMs, no new address.
        let again = p
            .create_nodes(&cluster, &params, &reqs)
            .await
            .expect("again");
        assert_eq!(first, again);
        assert_ne!(first[0].private_ip, first[1].private_ip);
        let cfg_path = p.agents_dir(&cluster).join("node-1.json");
        let mode = std::fs::metadata(&cfg_path)
            .expect("config")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cfg: AgentConfig =
            serde_json::from_slice(&std::fs::read(&cfg_path).expect("read")).expect("json");
        assert_eq!(cfg.node_id, "node-1");

        // A restarted coordinator finds them; a repaired node is a new VM.
        let p = SimProvider::new(tmp.join("sim")).expect("reopen");
        assert_eq!(
            p.describe_nodes(&cluster, &params).await.expect("describe"),
            first
        );
        let repaired = p
            .create_nodes(&cluster, &params, &[request("node-1", 1)])
            .await
            .expect("repair");
        assert_ne!(repaired[0].instance_id, first[1].instance_id);
        assert_ne!(repaired[0].private_ip, first[1].private_ip);

        p.delete_nodes(&cluster, &params, &["node-0".into()])
            .await
            .expect("delete node");
        assert!(!p.agents_dir(&cluster).join("node-0.json").exists());
        assert_eq!(
            p.describe_nodes(&cluster, &params)
                .await
                .expect("describe")
                .len(),
            1
        );
        p.delete_cluster(&cluster, &params).await.expect("delete");
        assert!(p
            .describe_nodes(&cluster, &params)
            .await
            .expect("describe")
            .is_empty());
        assert!(!p.agents_dir(&cluster).exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
