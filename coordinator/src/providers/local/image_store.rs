//! Baked images at boot for nothing: a Docker data root holding every image of the image
//! directory, made once per coordinator (and kept while the tarballs do not change), from
//! which each new VM's data root is seeded before its dockerd starts.
//!
//! A cloud VM baked with its images finds them in its Docker at boot; a local VM is a
//! fresh dockerd, and loading a 400 MB tarball into each (`docker load`: decompress,
//! untar, checksum) is seconds on every node's critical path. Instead a throwaway
//! dockerd (its own namespace, no network of its own) loads the tarballs once into a
//! template data root, and each VM gets `image/` and the storage driver's layer tree of
//! it with `cp -a --link`: directories made anew, files hard links.
//!
//! Sharing the files is safe because Docker never writes to them in place: layer
//! contents are read-only lower layers (a container's writes go to its own upper
//! directory), layer and image metadata are immutable once committed, and the files
//! Docker does rewrite (`repositories.json`, image metadata) it replaces atomically
//! (write a temporary file, rename), which breaks the link instead of changing the
//! shared inode. What Docker changes in place (its bolt databases: networks, volumes,
//! containerd's metadata, buildkit) is not part of the template; each dockerd makes its
//! own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::{
    docker_ping, err, ip, is_zombie, netns_path, open_log, pid_alive, pids_in_netns, run, stop_pid,
    unmount_all_under,
};
use crate::providers::ProviderError;

/// Storage drivers whose layer tree can be shared by hard links.
const DRIVERS: [&str; 2] = ["overlay2", "vfs"];
/// How long the template's dockerd may take to answer.
const DOCKERD_START: Duration = Duration::from_secs(60);

/// The template, once made: its data root and the storage driver it used.
#[derive(Debug, Clone)]
struct Template {
    root: PathBuf,
    driver: &'static str,
}

/// The template data root of a provider.
#[derive(Debug)]
pub struct ImageStore {
    /// Where templates live (`<state-dir>/local/image-store`).
    dir: PathBuf,
    /// The baked tarballs.
    image_dir: PathBuf,
    /// The provider's name prefix (the throwaway namespace is `<prefix>-imgs`).
    prefix: String,
    /// The template of the tarballs as they were last seen (their key), or why it
    /// could not be made (VMs then load the tarballs themselves, as without a store).
    template: tokio::sync::Mutex<Option<(String, Result<Template, String>)>>,
    /// `dockerd --version`, part of the key.
    dockerd_version: tokio::sync::OnceCell<String>,
}

impl ImageStore {
    /// A store for the tarballs of `image_dir`, kept under `dir`.
    pub fn new(dir: PathBuf, image_dir: PathBuf, prefix: String) -> ImageStore {
        ImageStore {
            dir,
            image_dir,
            prefix,
            template: tokio::sync::Mutex::new(None),
            dockerd_version: tokio::sync::OnceCell::new(),
        }
    }

    /// Makes the template now (at coordinator start, so that no VM waits for it); a
    /// no-op once made.
    pub async fn prepare(&self) {
        let _ = self.get().await;
    }

    /// The template of the tarballs as they are now: made again when they changed
    /// since (a tarball added, rebuilt or removed), so a new image counts from the next
    /// VM on.
    async fn get(&self) -> Option<Template> {
        let key = match self.key().await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "no image template: each VM's agent loads the image tarballs itself");
                return None;
            }
        };
        let mut slot = self.template.lock().await;
        if slot.as_ref().is_none_or(|(k, _)| *k != key) {
            let t0 = Instant::now();
            let made = self.make(&key).await.map_err(|e| e.to_string());
            match &made {
                Ok(t) => {
                    tracing::info!(root = %t.root.display(), driver = t.driver, elapsed_ms = t0.elapsed().as_millis() as u64, "image template ready")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no image template: each VM's agent loads the image tarballs itself")
                }
            }
            *slot = Some((key, made));
        }
        slot.as_ref().and_then(|(_, r)| r.as_ref().ok()).cloned()
    }

    /// Seeds a VM's new Docker data root `data_root` (which must not exist yet) with the
    /// template's images. Returns whether it did: without a template, or if the copy
    /// fails, the VM starts empty and its agent loads the tarballs.
    pub async fn seed(&self, data_root: &Path) -> bool {
        let Some(t) = self.get().await else {
            return false;
        };
        if data_root.exists() {
            return false;
        }
        let t0 = Instant::now();
        match seed_from(&t, data_root).await {
            Ok(()) => {
                tracing::debug!(data_root = %data_root.display(), elapsed_ms = t0.elapsed().as_millis() as u64, "data root seeded with the image template");
                true
            }
            Err(e) => {
                tracing::warn!(data_root = %data_root.display(), error = %e, "could not seed the data root; the agent will load the images");
                let _ = std::fs::remove_dir_all(data_root);
                false
            }
        }
    }

    /// The key of the tarballs as they are now: names, sizes, modification times, and
    /// the dockerd that will read the template.
    async fn key(&self) -> Result<String, ProviderError> {
        let mut h = Sha256::new();
        let mut entries: Vec<(String, u64, i64)> = Vec::new();
        let dir = std::fs::read_dir(&self.image_dir)
            .map_err(|e| err(format!("reading {}: {e}", self.image_dir.display())))?;
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".tar") || name.starts_with('.') {
                continue;
            }
            let m = e
                .metadata()
                .map_err(|e| err(format!("reading {name}: {e}")))?;
            use std::os::unix::fs::MetadataExt;
            entries.push((name, m.len(), m.mtime()));
        }
        if entries.is_empty() {
            return Err(err(format!(
                "no image tarball in {}",
                self.image_dir.display()
            )));
        }
        entries.sort();
        for (name, len, mtime) in &entries {
            h.update(format!("{name}\0{len}\0{mtime}\n").as_bytes());
        }
        let version = self
            .dockerd_version
            .get_or_try_init(|| run("dockerd", &["--version"]))
            .await?;
        h.update(version.as_bytes());
        let digest = h.finalize();
        Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }

    /// Finds the template of the tarballs whose key is `key`, or makes it.
    async fn make(&self, key: &str) -> Result<Template, ProviderError> {
        let root = self.dir.join(key);
        if let Some(driver) = driver_of(&root) {
            return Ok(Template { root, driver });
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| err(format!("creating {}: {e}", self.dir.display())))?;
        let work = self.dir.join(format!("{key}.tmp"));
        // A build a killed coordinator left half done.
        self.clean_build(&work).await;
        let result = self.load_into(&work).await;
        self.clean_build(&work).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
        let driver = driver_of(&work.join("docker")).ok_or_else(|| {
            err(format!(
                "the template dockerd used a storage driver other than {DRIVERS:?}"
            ))
        })?;
        // Only the image store and the layers are kept (see the module documentation).
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)
            .map_err(|e| err(format!("creating {}: {e}", root.display())))?;
        for part in ["image", driver] {
            std::fs::rename(work.join("docker").join(part), root.join(part))
                .map_err(|e| err(format!("moving the template's {part}: {e}")))?;
        }
        let _ = std::fs::remove_dir_all(&work);
        // Templates of earlier tarballs are of no further use.
        if let Ok(d) = std::fs::read_dir(&self.dir) {
            for e in d.flatten() {
                if e.file_name() != key {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Template { root, driver })
    }

    /// Stops whatever of a template build still runs (its dockerd and containerd, found
    /// in the build's namespace) and removes its namespace, mounts and exec root; the
    /// data root `work` is left for the caller.
    async fn clean_build(&self, work: &Path) {
        let ns = format!("{}-imgs", self.prefix);
        let strays = pids_in_netns(&netns_path(&ns));
        for pid in &strays {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while strays.iter().any(|p| !is_zombie(*p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if netns_path(&ns).exists() {
            let _ = ip(&["netns", "del", &ns]).await;
        }
        let exec_root = PathBuf::from(format!("/run/shoal/{}-imgs", self.prefix));
        for e in unmount_all_under(work)
            .into_iter()
            .chain(unmount_all_under(&exec_root))
        {
            tracing::warn!("{e}");
        }
        let _ = std::fs::remove_dir_all(&exec_root);
    }

    /// Runs a throwaway dockerd on `work/docker` and loads every tarball into it.
    async fn load_into(&self, work: &Path) -> Result<(), ProviderError> {
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work)
            .map_err(|e| err(format!("creating {}: {e}", work.display())))?;
        let ns = format!("{}-imgs", self.prefix);
        if !netns_path(&ns).exists() {
            ip(&["netns", "add", &ns]).await?;
        }
        let sock = work.join("docker.sock");
        let pidfile = work.join("dockerd.pid");
        let log = open_log(&work.join("dockerd.log"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| err(format!("dockerd log: {e}")))?;
        let config = work.join("daemon.json");
        std::fs::write(&config, b"{}\n")
            .map_err(|e| err(format!("writing {}: {e}", config.display())))?;
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(&ns).display()))
            .arg("--")
            .arg("dockerd")
            .arg(format!("--data-root={}", work.join("docker").display()))
            .arg(format!("--exec-root=/run/shoal/{}-imgs", self.prefix))
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--host=unix://{}", sock.display()))
            // It only loads images: no bridge, no firewall rules.
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("starting the template dockerd: {e}")))?;
        let loaded = async {
            let start = Instant::now();
            while !docker_ping(&sock).await {
                if start.elapsed() > DOCKERD_START || child.try_wait().ok().flatten().is_some() {
                    let log = std::fs::read_to_string(work.join("dockerd.log")).unwrap_or_default();
                    return Err(err(format!(
                        "the template dockerd did not answer within {DOCKERD_START:?}: {}",
                        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let host = format!("unix://{}", sock.display());
            let mut tarballs: Vec<PathBuf> = std::fs::read_dir(&self.image_dir)
                .map_err(|e| err(format!("reading {}: {e}", self.image_dir.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "tar")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            tarballs.sort();
            for t in &tarballs {
                let path = t.display().to_string();
                run(
                    "docker",
                    &["-H", &host, "load", "--quiet", "--input", &path],
                )
                .await?;
            }
            Ok(())
        }
        .await;
        match pid_alive(&pidfile) {
            Some(pid) => stop_pid(pid, Duration::from_secs(15)).await,
            None => {
                let _ = child.start_kill();
            }
        }
        let _ = child.wait().await;
        loaded
    }
}

/// The storage driver whose layer tree a (template) data root holds, if it is one that
/// can be shared.
fn driver_of(root: &Path) -> Option<&'static str> {
    if !root.join("image").is_dir() {
        return None;
    }
    DRIVERS.into_iter().find(|d| root.join(d).is_dir())
}

/// `cp -a --link` of the template's image store and layer tree into `data_root`.
async fn seed_from(t: &Template, data_root: &Path) -> Result<(), ProviderError> {
    std::fs::create_dir_all(data_root)
        .map_err(|e| err(format!("creating {}: {e}", data_root.display())))?;
    // The mode dockerd gives a data root it makes itself.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data_root, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| err(format!("{}: {e}", data_root.display())))?;
    let image = t.root.join("image").display().to_string();
    let layers = t.root.join(t.driver).display().to_string();
    let dest = data_root.display().to_string();
    run("cp", &["-a", "--link", &image, &layers, &dest]).await?;
    Ok(())
}
