//! The local provider: VMs are network namespaces on this machine.
//!
//! - The "cloud" is a namespace `<prefix>-vpc` holding a bridge `vpc0`; the host joins
//!   it through a veth `<prefix>-vpc` carrying the VPC gateway address, where the
//!   coordinator's metadata listener sits. (The bridge lives in a namespace of its own
//!   because on the host Docker's FORWARD policy would drop bridged VM-to-VM frames.)
//! - A VM is a namespace `<prefix>-<cluster>-<uid>-<node>` whose `eth0` is a veth on
//!   `vpc0`, with its own init ([`init`], `shoal local-vm-init`, started with
//!   `nsenter --net=…`: `ip netns exec` remounts /sys and breaks dockerd), which starts
//!   and supervises, as systemd does on a VM, the VM's dockerd (own data root, exec
//!   root, pidfile, socket, config) and then the agent, with the configuration read
//!   from the very user-data document a cloud VM would get. The images a baked VM image
//!   holds are the tarballs of the image directory: loaded once into a template data
//!   root (`image_store`) that each new VM's dockerd starts with, or (without the
//!   store) loaded by each VM's agent.
//! - VMs outlive the coordinator (their processes are in their own process groups), as
//!   cloud VMs would. A reboot kills every process of the VM, clears its links and
//!   mounts and boots it again (the init, dockerd, then the agent). Deletion kills the init first
//!   (nothing restarts), stops everything else (the containers of a dockerd that died
//!   included: they are found by their cgroups), unmounts what is left and removes the
//!   namespace, so nothing remains.

mod disks;
pub mod images;
pub mod init;
mod preflight;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use ipnet::Ipv4Net;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{ClusterRef, NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams, VmState};
use crate::keys::write_file_atomic;
use crate::userdata;

mod image_store;

/// Default VPC range: clear of Docker's default pools (172.17.0.0/16 and up,
/// 192.168.0.0/16) and of the 10.0.x and 192.168.x ranges typical of LANs.
pub const DEFAULT_VPC: &str = "10.213.0.0/16";
/// Default prefix of every name the provider makes.
pub const DEFAULT_PREFIX: &str = "shoal";

/// Settings.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Directory of VM state (`<state-dir>/local`).
    pub dir: PathBuf,
    /// Prefix of namespace and link names (at most 8 characters).
    pub prefix: String,
    /// The VPC range; its first host address is the gateway (this machine).
    pub vpc: Ipv4Net,
    /// The `shoal-agent` binary to run in each VM.
    pub agent_bin: PathBuf,
    /// The "baked" image tarballs each VM's agent loads.
    pub image_dir: PathBuf,
    /// Port of the metadata listener on the gateway.
    pub metadata_port: u16,
    /// Scheme of the metadata listener (`https`, or `http` with --insecure-http).
    pub metadata_scheme: String,
    /// Whether VMs start with the images already in their Docker (a template data root
    /// shared by hard links), as a baked cloud VM does; else each VM's agent loads the
    /// tarballs.
    pub shared_images: bool,
    /// The `shoal` binary whose `local-vm-init` is each VM's init (this one).
    pub init_bin: PathBuf,
}

/// The local provider.
#[derive(Debug)]
pub struct LocalProvider {
    s: LocalSettings,
    leases: tokio::sync::Mutex<()>,
    images: Option<image_store::ImageStore>,
}

fn err(msg: impl Into<String>) -> ProviderError {
    ProviderError::Local(msg.into())
}

/// Runs a command, turning failure into an error carrying its stderr.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String, ProviderError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) async fn ip(args: &[&str]) -> Result<String, ProviderError> {
    run("ip", args).await
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

pub(crate) fn pid_alive(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    // Signal 0 checks existence; a zombie still counts as gone for our purposes.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z" && kill(Pid::from_raw(pid), None).is_ok()).then_some(pid)
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
pub(crate) async fn stop_pid(pid: i32, grace: Duration) {
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if kill(p, None).is_err() || is_zombie(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(p, Signal::SIGKILL);
}

pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .map(|st| st == "Z")
        })
        .unwrap_or(true)
}

/// Asks a dockerd on a unix socket for `/_ping`.
pub async fn docker_ping(socket: &Path) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::UnixStream::connect(socket),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].windows(3).any(|w| w == b"200")
    )
}

/// The inode of a namespace file, to find the processes inside it.
fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Every process whose network namespace is the one at `ns`.
fn pids_in_netns(ns: &Path) -> Vec<i32> {
    let Some(ino) = ns_inode(ns) else {
        return vec![];
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(ino))
        .collect()
}

/// A live process whose command line has an argument containing `needle` (and none
/// equal to `--once`): a dockerd or agent this provider started, found even when its
/// pid file was never written (a coordinator killed between spawning it and the pid
/// file, or a dockerd not yet far enough to write its own).
pub(crate) fn find_process(needle: &str) -> Option<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && !is_zombie(pid))
        .find(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            args.iter()
                .any(|a| a.windows(needle.len()).any(|w| w == needle.as_bytes()))
                && !args.iter().any(|a| *a == b"--once")
        })
}

/// Every process in a container of the dockerd whose data root is `data_root`: the
/// container ids are the directories of `containers/`, and each of their processes is
/// in a cgroup named after its id (whichever cgroup driver), so they are found even
/// when their dockerd and containerd are gone.
fn container_pids(data_root: &Path) -> Vec<i32> {
    let ids: Vec<String> = std::fs::read_dir(data_root.join("containers"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return vec![];
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| ids.iter().any(|id| cg.contains(id.as_str())))
        })
        .collect()
}

/// Waits until every one of `pids` has exited (or is a zombie), at most `limit`.
async fn wait_gone(pids: &[i32], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while pids.iter().any(|p| !is_zombie(*p)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for m in mounts_under(dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            errors.push(format!("unmount {}: {e}", m.display()));
        }
    }
    errors
}

/// Checks a provider's name prefix (1 to 8 of a-z, 0-9, '-': it starts interface
/// names, at most 15 bytes) and VPC range (a network of /24 or larger).
pub(crate) fn check_prefix_and_vpc(prefix: &str, vpc: Ipv4Net) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 8 || !shoal_protocol::is_dns_label(prefix) {
        return Err(format!("prefix {prefix:?} must be 1 to 8 of a-z, 0-9, '-'"));
    }
    if vpc.prefix_len() > 24 || vpc != vpc.trunc() {
        return Err(format!(
            "VPC range {vpc} must be a network of /24 or larger"
        ));
    }
    Ok(())
}

/// Makes (idempotently) a VPC: a namespace `ns` holding a bridge `vpc0`, and the host's
/// leg, a veth `host` whose peer `uplink` is on the bridge, carrying `gateway_cidr`.
pub(crate) async fn ensure_vpc_namespace(
    ns: &str,
    host: &str,
    gateway_cidr: &str,
) -> Result<(), ProviderError> {
    if !netns_path(ns).exists() {
        ip(&["netns", "add", ns]).await?;
    }
    if ip(&["-n", ns, "link", "show", "vpc0"]).await.is_err() {
        ip(&["-n", ns, "link", "add", "vpc0", "type", "bridge"]).await?;
    }
    ip(&["-n", ns, "link", "set", "vpc0", "up"]).await?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
    if ip(&["link", "show", host]).await.is_err() {
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "uplink", "netns", ns,
        ])
        .await?;
    }
    ip(&["-n", ns, "link", "set", "uplink", "master", "vpc0", "up"]).await?;
    let addrs = ip(&["-o", "-4", "addr", "show", "dev", host]).await?;
    if !addrs.contains(&format!(" {gateway_cidr} ")) {
        ip(&["addr", "add", gateway_cidr, "dev", host]).await?;
    }
    ip(&["link", "set", host, "up"]).await?;
    Ok(())
}

/// Removes a VPC made by [`ensure_vpc_namespace`] when `vms` (a provider's directory of
/// VMs) is empty; returns whether it did.
pub(crate) async fn teardown_vpc_namespace_if_unused(
    ns: &str,
    host: &str,
    vms: &Path,
) -> Result<bool, ProviderError> {
    let in_use = std::fs::read_dir(vms)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if in_use {
        return Ok(false);
    }
    let _ = ip(&["link", "del", host]).await;
    if netns_path(ns).exists() {
        ip(&["netns", "del", ns]).await?;
    }
    Ok(true)
}

impl LocalProvider {
    /// A provider with these settings; call [`LocalProvider::ensure_vpc`] before use.
    pub fn new(s: LocalSettings) -> Result<LocalProvider, ProviderError> {
        check_prefix_and_vpc(&s.prefix, s.vpc).map_err(err)?;
        let images = s.shared_images.then(|| {
            image_store::ImageStore::new(
                s.dir.join("image-store"),
                s.image_dir.clone(),
                s.prefix.clone(),
            )
        });
        Ok(LocalProvider {
            s,
            leases: tokio::sync::Mutex::new(()),
            images,
        })
    }

    /// Loads the image tarballs into the template data root VMs start with (once, and
    /// again only when they change; a no-op without the shared store). Run at
    /// coordinator start so that no VM waits for it.
    pub async fn prepare_images(&self) {
        if let Some(store) = &self.images {
            store.prepare().await;
        }
    }

    /// The VPC gateway: this machine's address on the VPC.
    pub fn gateway(&self) -> Ipv4Addr {
        self.s.vpc.hosts().next().unwrap_or(self.s.vpc.network())
    }

    fn vpc_ns(&self) -> String {
        format!("{}-vpc", self.s.prefix)
    }

    fn host_link(&self) -> String {
        format!("{}-vpc", self.s.prefix)
    }

    fn vm_ns(&self, cluster: &ClusterRef, node: &str) -> String {
        format!("{}-{}-{node}", self.s.prefix, cluster.tag())
    }

    fn vm_dir(&self, cluster: &ClusterRef, node: &str) -> PathBuf {
        self.cluster_dir(cluster).join(node)
    }

    fn cluster_dir(&self, cluster: &ClusterRef) -> PathBuf {
        self.s.dir.join("vms").join(cluster.tag())
    }

    fn exec_root(&self, cluster: &ClusterRef, index: u32) -> PathBuf {
        // Short: containerd's socket path lives under it and must stay < 108 bytes.
        PathBuf::from(format!(
            "/run/shoal/{}-{}-{index}",
            self.s.prefix, cluster.uid
        ))
    }

    /// Creates the VPC namespace, its bridge and the host's leg (idempotent).
    pub async fn ensure_vpc(&self) -> Result<(), ProviderError> {
        std::fs::create_dir_all(self.s.dir.join("vms"))
            .map_err(|e| err(format!("creating {}: {e}", self.s.dir.display())))?;
        let cidr = format!("{}/{}", self.gateway(), self.s.vpc.prefix_len());
        ensure_vpc_namespace(&self.vpc_ns(), &self.host_link(), &cidr).await
    }

    /// Removes the VPC when no VM is left in it (at coordinator shutdown).
    pub async fn teardown_vpc_if_unused(&self) -> Result<bool, ProviderError> {
        teardown_vpc_namespace_if_unused(&self.vpc_ns(), &self.host_link(), &self.s.dir.join("vms"))
            .await
    }

    fn leases_path(&self) -> PathBuf {
        self.s.dir.join("leases.json")
    }

    fn read_leases(&self) -> BTreeMap<Ipv4Addr, String> {
        std::fs::read(self.leases_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_leases(&self, leases: &BTreeMap<Ipv4Addr, String>) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec_pretty(leases).map_err(|e| err(e.to_string()))?;
        write_file_atomic(&self.leases_path(), &bytes, 0o644)
            .map_err(|e| err(format!("writing {}: {e}", self.leases_path().display())))
    }

    /// The private address of `owner` (`<tag>/<node>`), leasing a free one if needed.
    async fn lease(&self, owner: &str) -> Result<Ipv4Addr, ProviderError> {
        let _guard = self.leases.lock().await;
        let mut leases = self.read_leases();
        if let Some((ip, _)) = leases.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(*ip);
        }
        let gateway = self.gateway();
        // Leave the first 8 addresses to the infrastructure.
        let ip = self
            .s
            .vpc
            .hosts()
            .skip(9)
            .find(|ip| *ip != gateway && !leases.contains_key(ip))
            .ok_or_else(|| err(format!("the VPC {} has no free address", self.s.vpc)))?;
        leases.insert(ip, owner.to_string());
        self.write_leases(&leases)?;
        Ok(ip)
    }

    /// Releases the addresses whose owner `drop` picks.
    async fn release_where(&self, drop: impl Fn(&str) -> bool) -> Result<(), ProviderError> {
        let _guard = self.leases.lock().await;
        let mut leases = self.read_leases();
        leases.retain(|_, o| !drop(o));
        self.write_leases(&leases)
    }

    async fn release(&self, tag: &str) -> Result<(), ProviderError> {
        let prefix = format!("{tag}/");
        self.release_where(|o| o.starts_with(&prefix)).await
    }

    fn leased_ip(&self, owner: &str) -> Option<Ipv4Addr> {
        self.read_leases()
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
    }

    fn details(&self, cluster: &ClusterRef, node: &str) -> BTreeMap<String, String> {
        let dir = self.vm_dir(cluster, node);
        let mut d = BTreeMap::from([
            ("netns".to_string(), self.vm_ns(cluster, node)),
            (
                "docker_socket".to_string(),
                dir.join("docker.sock").display().to_string(),
            ),
            (
                "agent_log".to_string(),
                dir.join("agent.log").display().to_string(),
            ),
            (
                "dockerd_log".to_string(),
                dir.join("dockerd.log").display().to_string(),
            ),
        ]);
        // Its disks, as every describe sees them: the plan is built from the latest.
        let ids = disks::ids(&dir);
        if !ids.is_empty() {
            d.insert(super::DISKS_DETAIL.to_string(), ids.join("\n"));
        }
        d
    }

    async fn create_vm(
        &self,
        cluster: &ClusterRef,
        req: &NodeRequest,
    ) -> Result<NodeInfo, ProviderError> {
        let node = &req.node_id;
        let owner = format!("{}/{node}", cluster.tag());
        let addr = self.lease(&owner).await?;
        let ns = self.vm_ns(cluster, node);
        let dir = self.vm_dir(cluster, node);
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;

        // The agent's configuration comes out of the user-data, as cloud-init would write it.
        let cfg =
            userdata::agent_config(&req.user_data).map_err(|e| err(format!("{node}: {e}")))?;
        let cfg_json = serde_json::to_vec_pretty(&cfg).map_err(|e| err(e.to_string()))?;
        write_file_atomic(&dir.join("user-data"), &req.user_data, 0o600)
            .and_then(|_| write_file_atomic(&dir.join("agent.json"), &cfg_json, 0o600))
            .map_err(|e| err(format!("writing {}: {e}", dir.display())))?;

        self.ensure_vm_network(cluster, req.index, &ns, addr)
            .await?;
        crate::fault::point("vm-network");
        if let Some(store) = &self.images {
            // A new VM only: a data root that exists is this VM's own, as it left it.
            store.seed(&dir.join("docker")).await;
        }
        // The disks before the boot: the agent looks for them at its first convergence.
        if let Some(spec) = &req.disks {
            disks::attach(&dir, spec).await?;
        }
        self.boot(cluster, req.index, &ns, &dir)?;
        let details = self.details(cluster, node);
        Ok(NodeInfo {
            node_id: node.clone(),
            instance_id: ns.clone(),
            private_ip: Some(addr),
            state: VmState::Running,
            details,
        })
    }

    async fn ensure_vm_network(
        &self,
        cluster: &ClusterRef,
        index: u32,
        ns: &str,
        addr: Ipv4Addr,
    ) -> Result<(), ProviderError> {
        let cidr = format!("{addr}/{}", self.s.vpc.prefix_len());
        let uplink = format!("v{}{}", &cluster.uid[..cluster.uid.len().min(8)], index);
        let vpc = self.vpc_ns();
        let gw = self.gateway().to_string();
        // Every step is idempotent and all are run every time: a call interrupted
        // anywhere (a coordinator killed between two steps) is completed by the next,
        // never judged done from one of its traces. (It was: an address on eth0 was
        // taken for a finished network, and a VM resumed after a crash could be left
        // without its link up or its default route.)
        let created = !netns_path(ns).exists();
        if created {
            ip(&["netns", "add", ns]).await?;
        }
        let has_eth0 = ip(&["-n", ns, "link", "show", "eth0"]).await.is_ok();
        let mut steps: Vec<Vec<&str>> = Vec::new();
        if !has_eth0 {
            // A stale host end from an earlier attempt would block the name.
            let _ = ip(&["-n", &vpc, "link", "del", &uplink]).await;
            steps.push(vec![
                "-n", &vpc, "link", "add", &uplink, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
        }
        steps.extend([
            vec!["-n", &vpc, "link", "set", &uplink, "master", "vpc0", "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec!["-n", ns, "addr", "replace", &cidr, "dev", "eth0"],
            vec!["-n", ns, "link", "set", "eth0", "up"],
            vec!["-n", ns, "route", "replace", "default", "via", &gw],
        ]);
        for step in steps {
            if let Err(e) = ip(&step).await {
                if created {
                    let _ = ip(&["netns", "del", ns]).await;
                    let _ = ip(&["-n", &vpc, "link", "del", &uplink]).await;
                }
                return Err(e);
            }
            if step.contains(&"addr") {
                // Address set, link and route not yet.
                crate::fault::point("vm-half-network");
            }
        }
        Ok(())
    }

    /// Boots the VM: writes how (`boot.json`: dockerd, then the agent) and starts its
    /// init, unless one runs already (a creation resumed after a crash, or one started
    /// by a coordinator that died before the init wrote its pid file).
    fn boot(
        &self,
        cluster: &ClusterRef,
        index: u32,
        ns: &str,
        dir: &Path,
    ) -> Result<(), ProviderError> {
        let exec_root = self.exec_root(cluster, index);
        let config = dir.join("daemon.json");
        write_file_atomic(&config, b"{}\n", 0o644)
            .map_err(|e| err(format!("writing {}: {e}", config.display())))?;
        let sock = dir.join("docker.sock");
        let s = |p: &Path| p.display().to_string();
        let boot = init::Boot {
            dockerd: vec![
                "dockerd".into(),
                format!("--data-root={}", s(&dir.join("docker"))),
                format!("--exec-root={}", s(&exec_root)),
                format!("--pidfile={}", s(&dir.join("dockerd.pid"))),
                format!("--config-file={}", s(&config)),
                format!("--host=unix://{}", s(&sock)),
                "--iptables=true".into(),
                "--userland-proxy=false".into(),
                "--log-level=warn".into(),
            ],
            dockerd_pidfile: dir.join("dockerd.pid"),
            docker_socket: sock.clone(),
            dockerd_log: dir.join("dockerd.log"),
            agent: vec![
                s(&self.s.agent_bin),
                "run".into(),
                "--config".into(),
                s(&dir.join("agent.json")),
                "--docker-host".into(),
                format!("unix://{}", s(&sock)),
                "--image-dir".into(),
                s(&self.s.image_dir),
                "--state-dir".into(),
                s(&dir.join("agent-state")),
                // The VM's own root for its data disks' mount points (`/hadoopfs/fsN`):
                // a local VM shares the host's mount namespace (see docs/blueprints.md).
                "--mount-root".into(),
                s(&dir.join("root")),
            ],
            // The agents' log level: SHOAL_AGENT_LOG of the coordinator (a tracing
            // filter), info by default.
            agent_env: BTreeMap::from([(
                "RUST_LOG".to_string(),
                std::env::var("SHOAL_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )]),
            agent_pidfile: dir.join("agent.pid"),
            agent_log: dir.join("agent.log"),
        };
        let json = serde_json::to_vec_pretty(&boot).map_err(|e| err(e.to_string()))?;
        write_file_atomic(&dir.join(init::BOOT_FILE), &json, 0o644).map_err(|e| {
            err(format!(
                "writing {}: {e}",
                dir.join(init::BOOT_FILE).display()
            ))
        })?;
        if pid_alive(&dir.join(init::INIT_PID)).is_some() {
            return Ok(());
        }
        let flag = format!("--vm-dir={}", dir.display());
        if let Some(pid) = find_process(&flag) {
            tracing::info!(%ns, pid, "the VM's init runs already");
            return Ok(());
        }
        let log = open_log(&dir.join("init.log"))?;
        let log2 = log.try_clone().map_err(|e| err(format!("init log: {e}")))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .arg("--")
            .arg(&self.s.init_bin)
            .arg("local-vm-init")
            .arg(&flag)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                err(format!(
                    "starting the init of {ns} ({} local-vm-init): {e}",
                    self.s.init_bin.display()
                ))
            })?;
        reap(child, format!("init of {ns}"));
        Ok(())
    }

    /// Kills every process of a VM at once (its init first, so nothing restarts), as a
    /// power cut does: the agent, dockerd, whatever runs in its namespace (containerd,
    /// shims), and its containers, found by their cgroups even when their dockerd is
    /// gone. Waits (bounded) until they have exited.
    async fn kill_vm(&self, cluster: &ClusterRef, node: &str) {
        let dir = self.vm_dir(cluster, node);
        let ns = self.vm_ns(cluster, node);
        for pid in [
            pid_alive(&dir.join(init::INIT_PID)),
            find_process(&format!("--vm-dir={}", dir.display())),
        ]
        .into_iter()
        .flatten()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut pids: Vec<i32> = ["agent.pid", "dockerd.pid"]
            .iter()
            .filter_map(|f| pid_alive(&dir.join(f)))
            .collect();
        pids.extend(pids_in_netns(&netns_path(&ns)));
        pids.extend(container_pids(&dir.join("docker")));
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        wait_gone(&pids, Duration::from_secs(5)).await;
    }

    /// Reboots a VM as its kernel would: every process killed, every mount under its
    /// directory and exec root gone, every link but `lo` and its NIC (`eth0`) deleted
    /// (the bridge and VXLAN device the agent made), then booted again by its init
    /// from the same user-data (dockerd, then the agent, which converges at boot).
    async fn reboot_vm(&self, cluster: &ClusterRef, node: &str) -> Result<(), ProviderError> {
        let dir = self.vm_dir(cluster, node);
        let ns = self.vm_ns(cluster, node);
        let index: u32 = node
            .strip_prefix("node-")
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| err(format!("{node} is not a node of this provider")))?;
        if !dir.join(init::BOOT_FILE).exists() {
            return Err(err(format!(
                "{node} has no VM here ({} is missing)",
                dir.display()
            )));
        }
        self.kill_vm(cluster, node).await;
        let exec_root = self.exec_root(cluster, index);
        let mut errors = unmount_all_under(&dir);
        errors.extend(unmount_all_under(&exec_root));
        // The exec root is the VM's /run, which a reboot empties (a tmpfs). Left in
        // place, it names the killed containerd in containerd.pid; the new dockerd
        // takes a pid that still exists (the killed containerd, a zombie until the
        // host's init reaps it: the VM's own init was killed first) for a containerd
        // still running, waits for its socket and gives up after 15 s ("timeout
        // waiting for containerd to start"), and only its restart brings the VM up.
        if exec_root.exists() {
            if let Err(e) = std::fs::remove_dir_all(&exec_root) {
                errors.push(format!("emptying {} (its /run): {e}", exec_root.display()));
            }
        }
        let links = ip(&["-n", &ns, "-o", "link", "show"]).await?;
        for name in links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| !n.is_empty() && n != "lo" && n != "eth0")
        {
            // A veth goes with its peer (a container's, gone with its process): only a
            // link that is still there after a failed delete is an error.
            if let Err(e) = ip(&["-n", &ns, "link", "del", &name]).await {
                if ip(&["-n", &ns, "link", "show", &name]).await.is_ok() {
                    errors.push(e.to_string());
                }
            }
        }
        if !errors.is_empty() {
            return Err(err(format!("rebooting {node}: {}", errors.join("; "))));
        }
        for f in ["agent.pid", "dockerd.pid", init::INIT_PID] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        self.boot(cluster, index, &ns, &dir)
    }

    /// Stops one VM and removes everything it had; errors are collected, not fatal.
    async fn delete_vm(&self, cluster: &ClusterRef, node: &str, index: Option<u32>) -> Vec<String> {
        let mut errors = Vec::new();
        let ns = self.vm_ns(cluster, node);
        let dir = self.vm_dir(cluster, node);
        // The init first: it would start again what is stopped below.
        for pid in [
            pid_alive(&dir.join(init::INIT_PID)),
            find_process(&format!("--vm-dir={}", dir.display())),
        ]
        .into_iter()
        .flatten()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(pid) = pid_alive(&dir.join("agent.pid")) {
            stop_pid(pid, Duration::from_secs(2)).await;
        }
        let sock = dir.join("docker.sock");
        if docker_ping(&sock).await {
            stop_containers(&sock).await;
        }
        if let Some(pid) = pid_alive(&dir.join("dockerd.pid")) {
            stop_pid(pid, Duration::from_secs(15)).await;
        }
        crate::fault::point("vm-deleted");
        // Whatever still runs: in the namespace (a containerd shim, a stray process), or
        // in a container whose dockerd died before it could stop it (its processes are
        // in the container's own namespaces, reparented, found by their cgroups).
        let nspath = netns_path(&ns);
        let mut strays = pids_in_netns(&nspath);
        strays.extend(container_pids(&dir.join("docker")));
        for pid in &strays {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // Killed is not gone: wait (bounded) until they have exited, so that "deleted"
        // means no process of the VM is left.
        wait_gone(&strays, Duration::from_secs(5)).await;
        let mut roots = vec![dir.clone()];
        if let Some(i) = index {
            roots.push(self.exec_root(cluster, i));
        }
        for root in &roots {
            errors.extend(unmount_all_under(root));
        }
        // Unmounted first (the agent's mounts are under the VM's directory), then the
        // loop devices go, then the files.
        errors.extend(disks::detach_all(&dir).await);
        if nspath.exists() {
            if let Err(e) = ip(&["netns", "del", &ns]).await {
                errors.push(e.to_string());
            }
        }
        for root in &roots {
            if root.exists() {
                if let Err(e) = std::fs::remove_dir_all(root) {
                    errors.push(format!("removing {}: {e}", root.display()));
                }
            }
        }
        errors
    }

    /// VM node ids of a cluster found on disk or as namespaces.
    fn vms_of(&self, cluster: &ClusterRef) -> Vec<String> {
        let mut nodes: Vec<String> = std::fs::read_dir(self.cluster_dir(cluster))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let prefix = format!("{}-{}-", self.s.prefix, cluster.tag());
        if let Ok(d) = std::fs::read_dir("/run/netns") {
            for e in d.flatten() {
                if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)) {
                    if !nodes.iter().any(|x| x == n) {
                        nodes.push(n.to_string());
                    }
                }
            }
        }
        nodes.sort();
        nodes
    }
}

pub(crate) fn open_log(path: &Path) -> Result<std::fs::File, ProviderError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| err(format!("opening {}: {e}", path.display())))
}

/// `program` to be run inside network namespace `ns` (`nsenter --net=`: `ip netns exec`
/// would remount /sys), in a process group of its own (so that it outlives the
/// coordinator, as a VM's processes do), with stdout and stderr appended to `log`.
/// The caller adds the arguments and spawns it.
pub(crate) fn netns_command(
    ns: &str,
    program: impl AsRef<std::ffi::OsStr>,
    log: &Path,
) -> Result<Command, ProviderError> {
    let out = open_log(log)?;
    let err_out = out
        .try_clone()
        .map_err(|e| err(format!("{}: {e}", log.display())))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .process_group(0);
    Ok(cmd)
}

/// Waits for a child in the background so it never lingers as a zombie while the
/// coordinator runs (if the coordinator dies first, init adopts it).
pub(crate) fn reap(mut child: tokio::process::Child, what: String) {
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::info!(%what, %status, "process exited"),
            Err(e) => tracing::warn!(%what, error = %e, "waiting for process failed"),
        }
    });
}

/// Stops every container of a VM's dockerd (5 s grace, then killed) and removes them.
async fn stop_containers(sock: &Path) {
    let host = format!("unix://{}", sock.display());
    let Ok(ids) = run("docker", &["-H", &host, "ps", "-aq"]).await else {
        return;
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return;
    }
    let mut stop = vec!["-H", host.as_str(), "stop", "-t", "5"];
    stop.extend(&ids);
    let _ = run("docker", &stop).await;
    let mut rm = vec!["-H", host.as_str(), "rm", "-f"];
    rm.extend(&ids);
    let _ = run("docker", &rm).await;
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn max_disks(&self) -> u32 {
        shoal_protocol::MAX_DISKS as u32
    }

    fn gateway(&self) -> Option<std::net::IpAddr> {
        Some(self.gateway().into())
    }

    fn check_images<'a>(
        &'a self,
        images: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let dir = self.s.image_dir.clone();
        let images = images.to_vec();
        async move {
            // Reading busybox and hashing a layer is blocking work.
            let missing = tokio::task::spawn_blocking(move || images::missing(&dir, &images))
                .await
                .map_err(|e| err(format!("checking the images: {e}")))?;
            if missing.is_empty() {
                return Ok(());
            }
            Err(ProviderError::ImagesMissing(
                missing
                    .iter()
                    .map(|m| {
                        format!(
                            "{} is not in the image directory ({}): {}",
                            m.image,
                            m.tarball.display(),
                            m.fix
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ))
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            match self.teardown_vpc_if_unused().await {
                Ok(true) => tracing::info!("local VPC removed (no VM left)"),
                Ok(false) => tracing::info!("local VPC kept: local clusters still exist"),
                Err(e) => tracing::warn!(error = %e, "removing the local VPC failed"),
            }
        }
        .boxed()
    }

    fn metadata_url(&self) -> Option<String> {
        Some(format!(
            "{}://{}:{}",
            self.s.metadata_scheme,
            self.gateway(),
            self.s.metadata_port
        ))
    }

    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        async move {
            self.ensure_vpc().await?;
            let results = join_all(nodes.iter().map(|n| self.create_vm(cluster, n))).await;
            results.into_iter().collect()
        }
        .boxed()
    }

    fn describe_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        async move {
            Ok(self
                .vms_of(cluster)
                .into_iter()
                .map(|node| {
                    let dir = self.vm_dir(cluster, &node);
                    let ns = self.vm_ns(cluster, &node);
                    let running =
                        netns_path(&ns).exists() && pid_alive(&dir.join("dockerd.pid")).is_some();
                    NodeInfo {
                        private_ip: self.leased_ip(&format!("{}/{node}", cluster.tag())),
                        details: self.details(cluster, &node),
                        instance_id: ns,
                        state: if running {
                            VmState::Running
                        } else {
                            VmState::Stopped
                        },
                        node_id: node,
                    }
                })
                .collect())
        }
        .boxed()
    }

    fn reboot_node<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        node: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.reboot_vm(cluster, node).boxed()
    }

    fn live_details(&self, cluster: &ClusterRef, node: &str) -> BTreeMap<String, String> {
        let Some(sup) = init::Supervision::read(&self.vm_dir(cluster, node)) else {
            return BTreeMap::new();
        };
        BTreeMap::from([
            ("restarts".to_string(), sup.summary()),
            ("booted_ms".to_string(), sup.booted_ms.to_string()),
        ])
    }

    fn delete_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        nodes: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let results = join_all(nodes.iter().map(|node| {
                let index = node.strip_prefix("node-").and_then(|i| i.parse().ok());
                self.delete_vm(cluster, node, index)
            }))
            .await;
            let mut errors: Vec<String> = results.into_iter().flatten().collect();
            let owners: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}/{n}", cluster.tag()))
                .collect();
            if let Err(e) = self.release_where(|o| owners.iter().any(|x| x == o)).await {
                errors.push(e.to_string());
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(err(errors.join("; ")))
            }
        }
        .boxed()
    }

    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let nodes = self.vms_of(cluster);
            let results = join_all(nodes.iter().map(|node| {
                let index = node.strip_prefix("node-").and_then(|i| i.parse().ok());
                self.delete_vm(cluster, node, index)
            }))
            .await;
            let mut errors: Vec<String> = results.into_iter().flatten().collect();
            let dir = self.cluster_dir(cluster);
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    errors.push(format!("removing {}: {e}", dir.display()));
                }
            }
            if let Err(e) = self.release(&cluster.tag()).await {
                errors.push(e.to_string());
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(err(errors.join("; ")))
            }
        }
        .boxed()
    }
}
