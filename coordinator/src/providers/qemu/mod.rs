//! The qemu provider: real VMs on this machine, booted from the base image
//! `cloud-init/build-vm-image` makes, through cloud-init. The one provider where
//! cloud-init itself reads Shoal's user-data and systemd starts the baked agent.
//!
//! - The "cloud" is a namespace `<prefix>-qvpc` holding a bridge `vpc0`; the host joins
//!   it through a veth `<prefix>-qvpc` carrying the VPC gateway address. VMs route
//!   through the gateway to the coordinator's metadata listener (an address of this
//!   machine). A namespace of its own, as for the local provider: on the host, Docker's
//!   FORWARD policy would drop bridged VM-to-VM frames.
//! - A VM is a qemu process started inside that namespace, with a tap `t<uid><index>`
//!   on `vpc0`, its own qcow2 overlay on the base image (the base is never written), and
//!   a NoCloud seed (an ISO labelled `cidata`): `meta-data` with the instance id,
//!   `user-data` exactly as every cloud gets it (`userdata::render`), and a
//!   `network-config` giving the VM its leased address, matched by MAC.
//! - KVM where it is real, TCG otherwise ([`decide_accel`]): a `/dev/kvm` of the nested
//!   PVM module (`/sys/module/kvm_pvm`), or a CPU without `vmx`/`svm`, means TCG.
//! - VMs outlive the coordinator (qemu runs in a process group of its own), as cloud
//!   VMs would. Every step of a creation is idempotent and checks what exists: a
//!   creation resumed after a crash never starts a second qemu for a VM that runs
//!   (found by its pid file, else by its overlay's path on a qemu command line).
//! - Deletion stops qemu and removes the tap, the overlay, the seed and every file of
//!   the VM: nothing is left.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::local::{
    check_prefix_and_vpc, ensure_vpc_namespace, find_process, ip, is_zombie, netns_command,
    netns_path, pid_alive, reap, run, stop_pid, teardown_vpc_namespace_if_unused,
};
use super::{ClusterRef, NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams, VmState};
use crate::keys::write_file_atomic;

mod preflight;

/// Default VPC range of the qemu provider: beside the local provider's (10.213.0.0/16)
/// and the test harness's (10.214.0.0/16, 10.219.0.0/16).
pub const DEFAULT_VPC: &str = "10.218.0.0/16";
/// Memory of each VM: enough for Debian, cloud-init, dockerd and small containers
/// (256 MiB thrashes).
pub const MEMORY_MIB: u32 = 512;
/// The qemu binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// How long a qemu process may take to start (write its pid file) before the
/// creation fails with its log.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn err(msg: impl Into<String>) -> ProviderError {
    ProviderError::Qemu(msg.into())
}

/// The local provider's helpers report as `local`; here they are this provider's.
fn ours(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Local(m) => ProviderError::Qemu(m),
        other => other,
    }
}

/// How VMs are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// qemu's software emulation (about one host core per booting VM).
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What `shoal serve --qemu-accel` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when it is usable, else TCG.
    #[default]
    Auto,
    /// KVM, or the provider is unavailable.
    Kvm,
    /// TCG even where KVM works.
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<AccelChoice, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!("{other:?} is not one of auto, kvm, tcg")),
        }
    }
}

/// What this machine offers for KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// `/dev/kvm` opened for reading and writing, or why not.
    pub dev_kvm: Result<(), String>,
    /// `/sys/module/kvm_pvm` exists: `/dev/kvm` is the nested PVM module, which runs
    /// only guest kernels built for PVM (a stock kernel stalls, then dies with "KVM
    /// internal error … emulation failure").
    pub pvm: bool,
    /// `/proc/cpuinfo` has the `vmx` or `svm` flag.
    pub virt_flags: bool,
}

impl KvmProbe {
    /// Looks at this machine.
    pub fn read() -> KvmProbe {
        let dev_kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(|_| ())
            .map_err(|e| format!("/dev/kvm cannot be opened: {e}"));
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        KvmProbe {
            dev_kvm,
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
            virt_flags: cpu_has_virt_flags(&cpuinfo),
        }
    }
}

/// Whether a `/proc/cpuinfo` lists `vmx` (Intel VT-x) or `svm` (AMD-V) among its flags.
pub fn cpu_has_virt_flags(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The accelerator the VMs run under, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accelerator {
    /// Which.
    pub accel: Accel,
    /// Why, for `doctor` and `cluster show`.
    pub why: String,
}

/// The accelerator rule: KVM when `/dev/kvm` opens, is not the nested PVM module, and
/// the CPU has `vmx` or `svm`; TCG otherwise. `Err` when KVM was demanded and is not
/// usable.
pub fn decide_accel(choice: AccelChoice, probe: &KvmProbe) -> Result<Accelerator, String> {
    let unusable = if probe.pvm {
        Some("/dev/kvm is the nested PVM module (kvm_pvm), which runs only guest kernels built for PVM".to_string())
    } else if !probe.virt_flags {
        Some("the CPU has no vmx or svm flag (no hardware virtualisation: this machine is likely a VM itself)".to_string())
    } else {
        probe.dev_kvm.as_ref().err().cloned()
    };
    match (choice, unusable) {
        (AccelChoice::Tcg, _) => Ok(Accelerator {
            accel: Accel::Tcg,
            why: "TCG (software emulation) as asked (--qemu-accel tcg)".into(),
        }),
        (AccelChoice::Kvm | AccelChoice::Auto, None) => Ok(Accelerator {
            accel: Accel::Kvm,
            why: "KVM: /dev/kvm opens and the CPU has hardware virtualisation".into(),
        }),
        (AccelChoice::Kvm, Some(why)) => {
            Err(format!("--qemu-accel kvm, but KVM is not usable: {why}"))
        }
        (AccelChoice::Auto, Some(why)) => Ok(Accelerator {
            accel: Accel::Tcg,
            why: format!("TCG (software emulation, about one core per booting VM): {why}"),
        }),
    }
}

/// `manifest.json` of a base image (`cloud-init/build-vm-image`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageManifest {
    /// The build's key (a digest of its inputs).
    pub key: String,
    /// The uncompressed kernel, relative to the image directory.
    pub kernel: String,
    /// The initrd, relative to the image directory.
    pub initrd: String,
    /// The root file system image, relative to the image directory.
    pub rootfs: String,
    /// Its format (`raw`).
    pub rootfs_format: String,
    /// The kernel command line.
    pub cmdline: String,
    /// The container images in the image's own Docker store (older builds: none
    /// listed).
    #[serde(default)]
    pub docker_images: Vec<BakedImage>,
}

/// A container image baked into a base image's Docker store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BakedImage {
    /// Its reference (`shoal/demo:1`).
    pub image: String,
    /// Its id.
    pub id: String,
}

impl ImageManifest {
    /// The images of `wanted` this base image does not hold: its VMs have no registry
    /// to pull them from, as on the local provider.
    pub fn missing<'a>(&self, wanted: &'a [String]) -> Vec<&'a str> {
        wanted
            .iter()
            .filter(|w| !self.docker_images.iter().any(|b| &b.image == *w))
            .map(String::as_str)
            .collect()
    }
}

/// A base image, checked: its files exist, at absolute paths.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The manifest.
    pub manifest: ImageManifest,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
    /// The root file system (the overlays' backing file).
    pub rootfs: PathBuf,
}

impl BaseImage {
    /// Opens the image in `dir` (a symlink such as `target/vm-image/current` is
    /// resolved, so that a VM's overlay keeps its base when a new build moves the link).
    pub fn open(dir: &Path) -> Result<BaseImage, String> {
        const FIX: &str = "build it with cloud-init/build-vm-image (as root), and give `shoal serve --qemu-image DIR`";
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| format!("no base image at {}: {e}; {FIX}", dir.display()))?;
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read {}: {e}; {FIX}", path.display()))?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not an image manifest: {e}", path.display()))?;
        if manifest.rootfs_format != "raw" {
            return Err(format!(
                "{}: root file system format {:?}, expected raw",
                path.display(),
                manifest.rootfs_format
            ));
        }
        let file = |name: &str| -> Result<PathBuf, String> {
            let p = dir.join(name);
            if name.contains('/') || !p.is_file() {
                return Err(format!(
                    "the image in {} lacks {name}; {FIX}",
                    dir.display()
                ));
            }
            Ok(p)
        };
        Ok(BaseImage {
            kernel: file(&manifest.kernel)?,
            initrd: file(&manifest.initrd)?,
            rootfs: file(&manifest.rootfs)?,
            manifest,
        })
    }
}

/// Settings.
#[derive(Debug, Clone)]
pub struct QemuSettings {
    /// Directory of VM state (`<state-dir>/qemu`).
    pub dir: PathBuf,
    /// Prefix of namespace and link names (at most 8 characters).
    pub prefix: String,
    /// The VPC range; its first host address is the gateway (this machine).
    pub vpc: Ipv4Net,
    /// The base image directory (`shoal serve --qemu-image`); a cluster may name
    /// another with `--image DIR`.
    pub image: PathBuf,
    /// The metadata base URL VMs are told (an address of this machine they route to).
    pub metadata_url: String,
    /// The accelerator.
    pub accel: Accelerator,
}

/// The qemu provider.
#[derive(Debug)]
pub struct QemuProvider {
    s: QemuSettings,
    leases: tokio::sync::Mutex<()>,
}

impl QemuProvider {
    /// A provider with these settings.
    pub fn new(s: QemuSettings) -> Result<QemuProvider, ProviderError> {
        check_prefix_and_vpc(&s.prefix, s.vpc).map_err(err)?;
        Ok(QemuProvider {
            s,
            leases: tokio::sync::Mutex::new(()),
        })
    }

    /// The accelerator VMs run under.
    pub fn accel(&self) -> &Accelerator {
        &self.s.accel
    }

    /// The VPC gateway: this machine's address on the VPC.
    pub fn gateway(&self) -> Ipv4Addr {
        self.s.vpc.hosts().next().unwrap_or(self.s.vpc.network())
    }

    fn vpc_ns(&self) -> String {
        format!("{}-qvpc", self.s.prefix)
    }

    fn instance(&self, cluster: &ClusterRef, node: &str) -> String {
        format!("{}-{}-{node}", self.s.prefix, cluster.tag())
    }

    fn tap_prefix(cluster: &ClusterRef) -> String {
        format!("t{}", &cluster.uid[..cluster.uid.len().min(8)])
    }

    fn tap(cluster: &ClusterRef, index: u32) -> String {
        format!("{}{index}", Self::tap_prefix(cluster))
    }

    fn cluster_dir(&self, cluster: &ClusterRef) -> PathBuf {
        self.s.dir.join("vms").join(cluster.tag())
    }

    fn vm_dir(&self, cluster: &ClusterRef, node: &str) -> PathBuf {
        self.cluster_dir(cluster).join(node)
    }

    /// The kernel command line: the image's, and `--set kernel-args=…` (e.g.
    /// `systemd.journald.forward_to_console=1`, to read the journal on the console log).
    fn cmdline(image: &BaseImage, params: &ProviderParams) -> Result<String, ProviderError> {
        let Some(extra) = params.extra.get("kernel-args") else {
            return Ok(image.manifest.cmdline.clone());
        };
        if extra.len() > 1024 || !extra.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(ProviderError::Config {
                provider: "qemu",
                message: "--set kernel-args= takes at most 1024 printable ASCII characters".into(),
            });
        }
        Ok(format!("{} {extra}", image.manifest.cmdline))
    }

    fn image(&self, params: &ProviderParams) -> Result<BaseImage, ProviderError> {
        let dir = match &params.image {
            Some(i) if Path::new(i).is_absolute() => PathBuf::from(i),
            Some(i) => {
                return Err(ProviderError::Config {
                    provider: "qemu",
                    message: format!(
                        "--image {i:?}: give the base image directory as an absolute path"
                    ),
                })
            }
            None => self.s.image.clone(),
        };
        BaseImage::open(&dir).map_err(|message| ProviderError::Config {
            provider: "qemu",
            message,
        })
    }

    /// Creates the VPC namespace, its bridge and the host's leg (idempotent).
    pub async fn ensure_vpc(&self) -> Result<(), ProviderError> {
        std::fs::create_dir_all(self.s.dir.join("vms"))
            .map_err(|e| err(format!("creating {}: {e}", self.s.dir.display())))?;
        let cidr = format!("{}/{}", self.gateway(), self.s.vpc.prefix_len());
        ensure_vpc_namespace(&self.vpc_ns(), &self.vpc_ns(), &cidr)
            .await
            .map_err(ours)
    }

    /// Removes the VPC when no VM is left in it (at coordinator shutdown).
    pub async fn teardown_vpc_if_unused(&self) -> Result<bool, ProviderError> {
        teardown_vpc_namespace_if_unused(&self.vpc_ns(), &self.vpc_ns(), &self.s.dir.join("vms"))
            .await
            .map_err(ours)
    }

    /// The VM's address: the one in its directory (`ip`), or a free one of the VPC,
    /// written there first. The VM directories are the lease table: a deleted VM's
    /// address is free again.
    async fn lease(&self, dir: &Path) -> Result<Ipv4Addr, ProviderError> {
        let _guard = self.leases.lock().await;
        if let Some(ip) = read_ip(dir) {
            return Ok(ip);
        }
        let mut used = std::collections::BTreeSet::new();
        for cluster in read_dirs(&self.s.dir.join("vms")) {
            for vm in read_dirs(&cluster) {
                used.extend(read_ip(&vm));
            }
        }
        let gateway = self.gateway();
        // Leave the first 8 addresses to the infrastructure.
        let addr = self
            .s
            .vpc
            .hosts()
            .skip(9)
            .find(|a| *a != gateway && !used.contains(a))
            .ok_or_else(|| err(format!("the VPC {} has no free address", self.s.vpc)))?;
        write_file_atomic(&dir.join("ip"), format!("{addr}\n").as_bytes(), 0o644)
            .map_err(|e| err(format!("writing {}: {e}", dir.join("ip").display())))?;
        Ok(addr)
    }

    fn details(
        &self,
        cluster: &ClusterRef,
        node: &str,
        index: Option<u32>,
    ) -> BTreeMap<String, String> {
        let dir = self.vm_dir(cluster, node);
        let mut d = BTreeMap::from([
            ("accel".to_string(), self.s.accel.accel.as_str().to_string()),
            ("netns".to_string(), self.vpc_ns()),
            (
                "console_log".to_string(),
                dir.join("console.log").display().to_string(),
            ),
            (
                "qemu_log".to_string(),
                dir.join("qemu.log").display().to_string(),
            ),
            (
                "overlay".to_string(),
                dir.join("disk.qcow2").display().to_string(),
            ),
            (
                "seed".to_string(),
                dir.join("seed.iso").display().to_string(),
            ),
        ]);
        if let Some(i) = index {
            d.insert("tap".to_string(), Self::tap(cluster, i));
        }
        d
    }

    /// The pid of the VM's qemu, if one runs: by its pid file, else by its overlay on
    /// a qemu command line (a coordinator killed before qemu wrote the pid file).
    fn qemu_pid(dir: &Path) -> Option<i32> {
        pid_alive(&dir.join("qemu.pid"))
            .or_else(|| find_process(&format!("file={},", dir.join("disk.qcow2").display())))
    }

    async fn create_vm(
        &self,
        cluster: &ClusterRef,
        image: &BaseImage,
        req: &NodeRequest,
    ) -> Result<NodeInfo, ProviderError> {
        let node = &req.node_id;
        let dir = self.vm_dir(cluster, node);
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let addr = self.lease(&dir).await?;
        let instance = self.instance(cluster, node);
        let tap = Self::tap(cluster, req.index);
        let info = NodeInfo {
            node_id: node.clone(),
            instance_id: instance.clone(),
            private_ip: Some(addr),
            state: VmState::Running,
            details: self.details(cluster, node, Some(req.index)),
        };
        if let Some(pid) = Self::qemu_pid(&dir) {
            tracing::info!(%instance, pid, "qemu already running");
            return Ok(info);
        }
        let mac = mac_for(addr);
        self.write_seed(&dir, &instance, node, &req.user_data, addr, &mac)
            .await?;
        self.ensure_overlay(&dir, image).await?;
        self.ensure_tap(&tap).await?;
        crate::fault::point("qemu-before-start");
        self.start_qemu(&dir, image, &instance, &tap, &mac).await?;
        Ok(info)
    }

    /// The NoCloud seed: an ISO 9660 image labelled `cidata` with `user-data` (as
    /// rendered for every cloud), `meta-data` (the instance id, the host name) and
    /// `network-config` (the leased address, matched by MAC). Mode 0600: the user-data
    /// holds the node's secrets. Rewritten on every start, from the same inputs.
    async fn write_seed(
        &self,
        dir: &Path,
        instance: &str,
        node: &str,
        user_data: &[u8],
        addr: Ipv4Addr,
        mac: &str,
    ) -> Result<(), ProviderError> {
        let files = dir.join("seed.d");
        let _ = std::fs::remove_dir_all(&files);
        std::fs::create_dir(&files)
            .and_then(|_| std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| err(format!("creating {}: {e}", files.display())))?;
        let meta = meta_data(instance, node);
        let net = network_config(mac, addr, self.s.vpc.prefix_len(), self.gateway());
        for (name, bytes, mode) in [
            ("user-data", user_data, 0o600),
            ("meta-data", meta.as_bytes(), 0o644),
            ("network-config", net.as_bytes(), 0o644),
        ] {
            write_file_atomic(&files.join(name), bytes, mode)
                .map_err(|e| err(format!("writing {}: {e}", files.join(name).display())))?;
        }
        let tmp = dir.join("seed.iso.tmp");
        let out = Command::new("genisoimage")
            .arg("-quiet")
            .arg("-output")
            .arg(&tmp)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(files.join("user-data"))
            .arg(files.join("meta-data"))
            .arg(files.join("network-config"))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| err(format!("cannot run genisoimage: {e}")))?;
        let _ = std::fs::remove_dir_all(&files);
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(format!(
                "genisoimage failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|_| std::fs::rename(&tmp, dir.join("seed.iso")))
            .map_err(|e| err(format!("writing {}: {e}", dir.join("seed.iso").display())))
    }

    /// The VM's disk: a qcow2 overlay whose backing file is the base image (kept if it
    /// exists: a resumed creation, or a VM that was stopped).
    async fn ensure_overlay(&self, dir: &Path, image: &BaseImage) -> Result<(), ProviderError> {
        let disk = dir.join("disk.qcow2");
        if disk.exists() {
            return Ok(());
        }
        let tmp = dir.join("disk.qcow2.tmp");
        let base = image.rootfs.display().to_string();
        let tmp_s = tmp.display().to_string();
        run(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-F", "raw", "-b", &base, &tmp_s,
            ],
        )
        .await
        .map_err(ours)?;
        std::fs::rename(&tmp, &disk).map_err(|e| err(format!("writing {}: {e}", disk.display())))
    }

    /// The VM's tap on the VPC bridge, made before qemu opens it (so that qemu's exit
    /// leaves it for deletion to remove, and a start finds it ready).
    async fn ensure_tap(&self, tap: &str) -> Result<(), ProviderError> {
        let ns = self.vpc_ns();
        if ip(&["-n", &ns, "link", "show", tap]).await.is_err() {
            ip(&["-n", &ns, "tuntap", "add", "dev", tap, "mode", "tap"])
                .await
                .map_err(ours)?;
        }
        ip(&["-n", &ns, "link", "set", tap, "master", "vpc0", "up"])
            .await
            .map_err(ours)?;
        Ok(())
    }

    async fn start_qemu(
        &self,
        dir: &Path,
        image: &BaseImage,
        instance: &str,
        tap: &str,
        mac: &str,
    ) -> Result<(), ProviderError> {
        let pidfile = dir.join("qemu.pid");
        let _ = std::fs::remove_file(&pidfile);
        let args = qemu_args(&QemuArgs {
            instance,
            accel: self.s.accel.accel,
            memory_mib: MEMORY_MIB,
            kernel: &image.kernel,
            initrd: &image.initrd,
            cmdline: &image.manifest.cmdline,
            disk: &dir.join("disk.qcow2"),
            seed: &dir.join("seed.iso"),
            console: &dir.join("console.log"),
            pidfile: &pidfile,
            tap,
            mac,
        });
        let mut child = netns_command(&self.vpc_ns(), QEMU, &dir.join("qemu.log"))
            .map_err(ours)?
            .args(&args)
            .spawn()
            .map_err(|e| err(format!("starting {QEMU} for {instance}: {e}")))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if pid_alive(&pidfile).is_some() {
                reap(child, format!("qemu {instance}"));
                tracing::info!(%instance, accel = self.s.accel.accel.as_str(), "VM started");
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(err(format!(
                    "{QEMU} for {instance} exited ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )));
            }
            if tokio::time::Instant::now() > deadline {
                reap(child, format!("qemu {instance}"));
                return Err(err(format!(
                    "{QEMU} for {instance} did not start within {}s (see {})",
                    START_TIMEOUT.as_secs(),
                    dir.join("qemu.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops one VM and removes everything it had; errors are collected, not fatal.
    async fn delete_vm(&self, dir: &Path) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(pid) = Self::qemu_pid(dir) {
            // A VM is powered off, not shut down: its disk is about to be removed.
            stop_pid(pid, Duration::from_secs(5)).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !is_zombie(pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !is_zombie(pid) {
                errors.push(format!(
                    "qemu (pid {pid}) of {} did not exit",
                    dir.display()
                ));
            }
        }
        crate::fault::point("qemu-stopped");
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                errors.push(format!("removing {}: {e}", dir.display()));
            }
        }
        errors
    }

    /// The cluster's taps on the VPC bridge.
    async fn taps_of(&self, cluster: &ClusterRef) -> Vec<String> {
        let ns = self.vpc_ns();
        if !netns_path(&ns).exists() {
            return vec![];
        }
        let Ok(out) = ip(&["-n", &ns, "-o", "link", "show"]).await else {
            return vec![];
        };
        let prefix = Self::tap_prefix(cluster);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect()
    }
}

/// A locally administered MAC (qemu's 52:54:00 range) from the VM's address: unique on
/// the VPC because the address is.
pub fn mac_for(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// The seed's `meta-data`: the instance id (cloud-init runs its once-per-instance
/// modules, `write_files` among them, once per id) and the host name.
pub fn meta_data(instance: &str, hostname: &str) -> String {
    format!("instance-id: \"{instance}\"\nlocal-hostname: \"{hostname}\"\n")
}

/// The seed's `network-config` (version 2): the leased address and the route through
/// the VPC gateway, on the interface with the VM's MAC.
pub fn network_config(mac: &str, addr: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    set-name: eth0\n    addresses: [\"{addr}/{prefix_len}\"]\n    routes:\n      - to: \"0.0.0.0/0\"\n        via: \"{gateway}\"\n"
    )
}

/// What a VM's qemu command line is made of.
#[derive(Debug)]
pub struct QemuArgs<'a> {
    /// The instance name (qemu's `-name`).
    pub instance: &'a str,
    /// The accelerator.
    pub accel: Accel,
    /// Memory.
    pub memory_mib: u32,
    /// The uncompressed kernel.
    pub kernel: &'a Path,
    /// The initrd.
    pub initrd: &'a Path,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The overlay.
    pub disk: &'a Path,
    /// The NoCloud seed.
    pub seed: &'a Path,
    /// The serial console's log.
    pub console: &'a Path,
    /// qemu's pid file.
    pub pidfile: &'a Path,
    /// The tap.
    pub tap: &'a str,
    /// The NIC's MAC.
    pub mac: &'a str,
}

/// The qemu command line of a VM: the kernel booted directly (no firmware, no boot
/// loader: the fastest start, under TCG above all), one virtio disk (the overlay), the
/// seed as a second read-only one, one virtio NIC on the tap, the serial console to a
/// file, no display and no default devices.
pub fn qemu_args(a: &QemuArgs<'_>) -> Vec<String> {
    let mut v: Vec<String> = vec!["-name".into(), a.instance.into()];
    match a.accel {
        // tb-size caps qemu's translation cache (otherwise ~1 GiB of host memory per VM).
        Accel::Tcg => v.extend([
            "-accel".into(),
            "tcg,tb-size=256".into(),
            "-cpu".into(),
            "max".into(),
        ]),
        Accel::Kvm => v.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
    }
    v.extend([
        "-machine".into(),
        "q35".into(),
        "-m".into(),
        a.memory_mib.to_string(),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-chardev".into(),
        format!("file,id=console,path={}", a.console.display()),
        "-serial".into(),
        "chardev:console".into(),
        "-kernel".into(),
        a.kernel.display().to_string(),
        "-initrd".into(),
        a.initrd.display().to_string(),
        "-append".into(),
        a.cmdline.into(),
        "-drive".into(),
        format!(
            "file={},if=virtio,format=qcow2,discard=unmap",
            a.disk.display()
        ),
        "-drive".into(),
        format!("file={},if=virtio,format=raw,readonly=on", a.seed.display()),
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", a.tap),
        // No option ROM: the kernel is booted directly, nothing boots from the network.
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={},romfile=", a.mac),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-pidfile".into(),
        a.pidfile.display().to_string(),
    ]);
    v
}

fn read_ip(dir: &Path) -> Option<Ipv4Addr> {
    std::fs::read_to_string(dir.join("ip"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl Provider for QemuProvider {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn metadata_url(&self) -> Option<String> {
        Some(self.s.metadata_url.clone())
    }

    fn gateway(&self) -> Option<std::net::IpAddr> {
        Some(QemuProvider::gateway(self).into())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            match self.teardown_vpc_if_unused().await {
                Ok(true) => tracing::info!("qemu VPC removed (no VM left)"),
                Ok(false) => tracing::info!("qemu VPC kept: qemu clusters still exist"),
                Err(e) => tracing::warn!(error = %e, "removing the qemu VPC failed"),
            }
        }
        .boxed()
    }

    fn check_images<'a>(
        &'a self,
        images: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            // A base image that cannot be opened fails the creation itself, with its
            // own reason; this check is only about what the image holds.
            let Ok(base) = BaseImage::open(&self.s.image) else {
                return Ok(());
            };
            let missing = base.manifest.missing(images);
            if missing.is_empty() {
                return Ok(());
            }
            Err(ProviderError::ImagesMissing(format!(
                "the base image {} (build {}) does not hold {}: bake the image tarballs into it with `cloud-init/build-vm-image --images DIR` (tarballs made as cloud-init/build-demo-image does), and restart `shoal serve --qemu-image` on the new build",
                self.s.image.display(),
                base.manifest.key,
                missing.join(", ")
            )))
        }
        .boxed()
    }

    fn footprint(&self, cluster: &ClusterRef, _params: &ProviderParams) -> Option<String> {
        Some(format!(
            "qemu VMs under {} ({}); taps {}N on vpc0 in namespace {}; overlays, seeds and logs under {}",
            self.s.accel.accel.as_str().to_uppercase(),
            self.s.accel.why,
            Self::tap_prefix(cluster),
            self.vpc_ns(),
            self.cluster_dir(cluster).display()
        ))
    }

    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        async move {
            let mut image = self.image(params)?;
            image.manifest.cmdline = Self::cmdline(&image, params)?;
            self.ensure_vpc().await?;
            let results = join_all(nodes.iter().map(|n| self.create_vm(cluster, &image, n))).await;
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
            Ok(read_dirs(&self.cluster_dir(cluster))
                .into_iter()
                .filter_map(|dir| {
                    let node = dir.file_name()?.to_str()?.to_string();
                    let index = node.strip_prefix("node-").and_then(|i| i.parse().ok());
                    Some(NodeInfo {
                        instance_id: self.instance(cluster, &node),
                        private_ip: read_ip(&dir),
                        state: if Self::qemu_pid(&dir).is_some() {
                            VmState::Running
                        } else {
                            VmState::Stopped
                        },
                        details: self.details(cluster, &node, index),
                        node_id: node,
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let dirs = read_dirs(&self.cluster_dir(cluster));
            let results = join_all(dirs.iter().map(|d| self.delete_vm(d))).await;
            let mut errors: Vec<String> = results.into_iter().flatten().collect();
            let ns = self.vpc_ns();
            for tap in self.taps_of(cluster).await {
                if let Err(e) = ip(&["-n", &ns, "link", "del", &tap]).await {
                    errors.push(e.to_string());
                }
            }
            let dir = self.cluster_dir(cluster);
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    errors.push(format!("removing {}: {e}", dir.display()));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(dev: bool, pvm: bool, flags: bool) -> KvmProbe {
        KvmProbe {
            dev_kvm: if dev {
                Ok(())
            } else {
                Err("/dev/kvm cannot be opened: No such file or directory".into())
            },
            pvm,
            virt_flags: flags,
        }
    }

    #[test]
    fn the_accelerator_rule() {
        // Real KVM.
        let a = decide_accel(AccelChoice::Auto, &probe(true, false, true)).expect("auto");
        assert_eq!(a.accel, Accel::Kvm);
        // This machine: /dev/kvm from the nested PVM module, no vmx/svm.
        let a = decide_accel(AccelChoice::Auto, &probe(true, true, false)).expect("auto");
        assert_eq!(a.accel, Accel::Tcg);
        assert!(a.why.contains("kvm_pvm"), "{}", a.why);
        // No flags, no PVM: TCG, saying why.
        let a = decide_accel(AccelChoice::Auto, &probe(true, false, false)).expect("auto");
        assert_eq!(a.accel, Accel::Tcg);
        assert!(a.why.contains("vmx or svm"), "{}", a.why);
        // Flags but no /dev/kvm (module not loaded, no permission).
        let a = decide_accel(AccelChoice::Auto, &probe(false, false, true)).expect("auto");
        assert_eq!(a.accel, Accel::Tcg);
        assert!(a.why.contains("/dev/kvm cannot be opened"), "{}", a.why);
        // Demanded: KVM or an error; TCG always.
        let e = decide_accel(AccelChoice::Kvm, &probe(true, true, false)).expect_err("kvm");
        assert!(e.contains("not usable") && e.contains("kvm_pvm"), "{e}");
        assert_eq!(
            decide_accel(AccelChoice::Kvm, &probe(true, false, true))
                .expect("kvm")
                .accel,
            Accel::Kvm
        );
        assert_eq!(
            decide_accel(AccelChoice::Tcg, &probe(true, false, true))
                .expect("tcg")
                .accel,
            Accel::Tcg
        );
        assert_eq!("tcg".parse::<AccelChoice>(), Ok(AccelChoice::Tcg));
        assert!("fast".parse::<AccelChoice>().is_err());
    }

    #[test]
    fn virt_flags_are_read_from_cpuinfo() {
        assert!(cpu_has_virt_flags(
            "processor\t: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpu_has_virt_flags("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_virt_flags("flags\t\t: fpu vme sse svmx\n"));
        assert!(!cpu_has_virt_flags("model name\t: vmx svm\n"));
    }

    #[test]
    fn seed_documents() {
        let addr: Ipv4Addr = "10.219.3.10".parse().expect("ip");
        let mac = mac_for(addr);
        assert_eq!(mac, "52:54:00:db:03:0a");
        let net = network_config(&mac, addr, 24, "10.219.3.1".parse().expect("ip"));
        assert!(net.starts_with("version: 2\n"));
        assert!(net.contains("macaddress: \"52:54:00:db:03:0a\""));
        assert!(net.contains("addresses: [\"10.219.3.10/24\"]"));
        assert!(net.contains("via: \"10.219.3.1\""));
        let meta = meta_data("q1-demo-abc-node-0", "node-0");
        assert_eq!(
            meta,
            "instance-id: \"q1-demo-abc-node-0\"\nlocal-hostname: \"node-0\"\n"
        );
    }

    #[test]
    fn the_command_line() {
        let p = |s: &str| PathBuf::from(s);
        let (k, i, d, s, c, f) = (
            p("/img/vmlinux"),
            p("/img/initrd.img"),
            p("/vm/disk.qcow2"),
            p("/vm/seed.iso"),
            p("/vm/console.log"),
            p("/vm/qemu.pid"),
        );
        let args = |accel| {
            qemu_args(&QemuArgs {
                instance: "q-x-node-0",
                accel,
                memory_mib: 512,
                kernel: &k,
                initrd: &i,
                cmdline: "root=/dev/vda rw console=ttyS0",
                disk: &d,
                seed: &s,
                console: &c,
                pidfile: &f,
                tap: "tabc0",
                mac: "52:54:00:00:00:01",
            })
            .join(" ")
        };
        let tcg = args(Accel::Tcg);
        assert!(tcg.contains("-accel tcg,tb-size=256 -cpu max"), "{tcg}");
        assert!(
            tcg.contains("-append root=/dev/vda rw console=ttyS0"),
            "{tcg}"
        );
        assert!(
            tcg.contains("file=/vm/disk.qcow2,if=virtio,format=qcow2"),
            "{tcg}"
        );
        assert!(
            tcg.contains("file=/vm/seed.iso,if=virtio,format=raw,readonly=on"),
            "{tcg}"
        );
        assert!(
            tcg.contains("ifname=tabc0,script=no,downscript=no"),
            "{tcg}"
        );
        assert!(tcg.contains("mac=52:54:00:00:00:01"), "{tcg}");
        // The running VM is found by its overlay on the command line.
        assert!(tcg.contains(&format!("file={},", d.display())));
        let kvm = args(Accel::Kvm);
        assert!(kvm.contains("-accel kvm -cpu host"), "{kvm}");
    }

    #[test]
    fn image_manifests_are_checked() {
        let dir = std::env::temp_dir().join(format!("shoal-qemu-img-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let e = BaseImage::open(&dir).expect_err("no manifest");
        assert!(e.contains("build-vm-image"), "{e}");
        let manifest = r#"{"key": "k", "kernel": "vmlinux", "initrd": "initrd.img",
            "rootfs": "rootfs.img", "rootfs_format": "raw", "cmdline": "root=/dev/vda", "extra": 1}"#;
        std::fs::write(dir.join("manifest.json"), manifest).expect("write");
        let e = BaseImage::open(&dir).expect_err("no files");
        assert!(e.contains("lacks vmlinux"), "{e}");
        for f in ["vmlinux", "initrd.img", "rootfs.img"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        let img = BaseImage::open(&dir).expect("opens");
        assert!(img.rootfs.is_absolute());
        assert_eq!(img.manifest.cmdline, "root=/dev/vda");
        std::fs::write(
            dir.join("manifest.json"),
            manifest.replace("vmlinux", "../vmlinux"),
        )
        .expect("write");
        assert!(BaseImage::open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn images_the_base_image_lacks_are_refused_before_any_vm() {
        let dir = std::env::temp_dir().join(format!("shoal-qemu-baked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in ["vmlinux", "initrd.img", "rootfs.img"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        std::fs::write(
            dir.join("manifest.json"),
            r#"{"key": "k1", "kernel": "vmlinux", "initrd": "initrd.img", "rootfs": "rootfs.img",
                "rootfs_format": "raw", "cmdline": "root=/dev/vda",
                "docker_images": [{"image": "shoal/demo:1", "id": "sha256:aa"}]}"#,
        )
        .expect("write");
        let p = QemuProvider::new(QemuSettings {
            dir: dir.join("state"),
            prefix: "tq".into(),
            vpc: "10.219.250.0/24".parse().expect("vpc"),
            image: dir.clone(),
            metadata_url: "https://10.219.250.1:8787".into(),
            accel: Accelerator {
                accel: Accel::Tcg,
                why: "test".into(),
            },
        })
        .expect("provider");
        p.check_images(&["shoal/demo:1".to_string()])
            .await
            .expect("the demo image is baked");
        let e = p
            .check_images(&[
                "shoal/demo:1".to_string(),
                "registry.example.com/app:1".to_string(),
            ])
            .await
            .expect_err("not baked");
        let m = e.to_string();
        assert!(matches!(e, ProviderError::ImagesMissing(_)), "{e:?}");
        assert!(
            m.contains("does not hold registry.example.com/app:1:"),
            "{m}"
        );
        assert!(
            m.contains("build k1") && m.contains("build-vm-image --images"),
            "{m}"
        );
        assert!(!dir.join("state").exists(), "the check made something");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
