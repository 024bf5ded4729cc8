//! Data disks ([`NodePlan::disks`]): found by their plan id, formatted when blank, and
//! mounted at `/hadoopfs/fs1…N` (under the agent's mount root) at every convergence,
//! idempotently.
//!
//! A disk is formatted (`mkfs.ext4` with the label `shoalfsN`) only when a low-level
//! probe (`blkid -p`) finds nothing on it: no filesystem, no partition table, no RAID or
//! LVM signature. A disk holding anything is mounted as it is, or, if it cannot be,
//! fails the node: it is never formatted. A convergence that fails unmounts what it
//! mounted itself, so nothing is left half-mounted.
//!
//! [`NodePlan::disks`]: shoal_protocol::NodePlan::disks

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_protocol::{disk_mount_point, DiskPlan, DiskReport, NodePlan, VolumePlan};

/// Why a disk could not be used; reported as `disk-failed`.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No block device answers to the plan's id.
    #[error("data disk {id}: no block device found for it{}", if tried.is_empty() { String::new() } else { format!(" (looked for {tried})") })]
    NotFound {
        /// Its plan id.
        id: String,
        /// Where it was looked for.
        tried: String,
    },
    /// A tool failed on the device.
    #[error("data disk {id} ({device}): {what}")]
    Device {
        /// Its plan id.
        id: String,
        /// The block device.
        device: String,
        /// What failed, with the tool's message.
        what: String,
    },
}

/// How long the agent waits for a disk's device to appear (a cloud attaches volumes
/// a little after the VM starts).
const APPEAR_WAIT: Duration = Duration::from_secs(60);

/// The filesystem label of disk `n`.
fn label(n: usize) -> String {
    format!("shoalfs{n}")
}

/// Where disk `n` (1-based) is mounted under `root`.
pub fn mount_point(root: &Path, n: usize) -> PathBuf {
    root.join(disk_mount_point(n).trim_start_matches('/'))
}

/// The bind mounts a container with `data_disks = DIR` gets: disk N at `DIR/N`.
pub fn volumes(root: &Path, count: usize, dir: &str) -> Vec<VolumePlan> {
    (1..=count)
        .map(|n| VolumePlan {
            source: mount_point(root, n).display().to_string(),
            target: format!("{}/{n}", dir.trim_end_matches('/')),
            read_only: false,
        })
        .collect()
}

/// What [`converge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// Every disk, in order, as mounted now.
    pub disks: Vec<DiskReport>,
    /// How many of them this call mounted (the rest were mounted already: an agent
    /// restarted, a convergence after the first).
    pub mounted_now: usize,
}

/// Finds, formats when blank, and mounts every disk of `node`; says what is mounted, in
/// order. On an error, what this call mounted is unmounted again.
pub async fn converge(node: &NodePlan, root: &Path) -> Result<Mounted, DiskError> {
    let mut reports = Vec::with_capacity(node.disks.len());
    let mut mounted_now: Vec<PathBuf> = Vec::new();
    for (i, d) in node.disks.iter().enumerate() {
        match one(d, i + 1, root, &mut mounted_now).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                for m in mounted_now.iter().rev() {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
                return Err(e);
            }
        }
    }
    Ok(Mounted {
        disks: reports,
        mounted_now: mounted_now.len(),
    })
}

async fn one(
    d: &DiskPlan,
    n: usize,
    root: &Path,
    mounted_now: &mut Vec<PathBuf>,
) -> Result<DiskReport, DiskError> {
    let device = find(&d.id).await?;
    let bad = |what: String| DiskError::Device {
        id: d.id.clone(),
        device: device.clone(),
        what,
    };
    let target = mount_point(root, n);
    let target_s = target.display().to_string();
    if let Some((source, fs_type)) = mounted_at(&target) {
        if same_device(&source, &device) {
            return Ok(DiskReport {
                id: d.id.clone(),
                device,
                mount: target_s,
                fs_type,
                formatted: false,
            });
        }
        return Err(bad(format!(
            "{target_s} is already a mount point, of {source}"
        )));
    }
    let mut formatted = false;
    let mut fs_type = match probe(&device).await.map_err(bad)? {
        Probe::Blank => String::new(),
        Probe::Filesystem(t) => t,
        Probe::Other(what) => {
            return Err(bad(format!(
                "it holds {what} and no filesystem to mount; it is never formatted"
            )))
        }
    };
    if fs_type.is_empty() {
        tracing::info!(id = %d.id, %device, "formatting a blank data disk");
        let l = label(n);
        tool("mkfs.ext4", &["-q", "-L", &l, &device])
            .await
            .map_err(|e| bad(format!("formatting it failed: {e}")))?;
        formatted = true;
        fs_type = "ext4".into();
    }
    std::fs::create_dir_all(&target).map_err(|e| bad(format!("creating {target_s}: {e}")))?;
    tool("mount", &["-t", &fs_type, &device, &target_s])
        .await
        .map_err(|e| bad(format!("mounting it at {target_s} failed: {e}")))?;
    mounted_now.push(target.clone());
    tracing::info!(id = %d.id, %device, mount = %target_s, %fs_type, formatted, "data disk mounted");
    Ok(DiskReport {
        id: d.id.clone(),
        device,
        mount: target_s,
        fs_type,
        formatted,
    })
}

/// What a low-level probe found on a device.
enum Probe {
    Blank,
    Filesystem(String),
    /// A partition table, a RAID member, …: what `blkid` says it is.
    Other(String),
}

async fn probe(device: &str) -> Result<Probe, String> {
    let out = tokio::process::Command::new("blkid")
        .args(["-p", "-o", "export", device])
        .output()
        .await
        .map_err(|e| format!("cannot run blkid: {e}"))?;
    // 2: nothing was found on it.
    if out.status.code() == Some(2) {
        return Ok(Probe::Blank);
    }
    if !out.status.success() {
        return Err(format!(
            "blkid -p {device} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(String::from)
    };
    let usage = field("USAGE").unwrap_or_default();
    match (field("TYPE"), field("PTTYPE")) {
        (Some(t), _) if usage == "filesystem" || usage.is_empty() => Ok(Probe::Filesystem(t)),
        (Some(t), _) => Ok(Probe::Other(format!("a {t} signature ({usage})"))),
        (None, Some(pt)) => Ok(Probe::Other(format!("a {pt} partition table"))),
        (None, None) => Ok(Probe::Other("a signature blkid does not name".into())),
    }
}

/// Runs a tool; its stderr on failure.
async fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The device and filesystem mounted at `target`, if one is (`/proc/self/mountinfo`).
fn mounted_at(target: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let t = target.display().to_string();
    info.lines().rev().find_map(|l| {
        let mut fields = l.split(' ');
        let point = fields.nth(4)?;
        if unescape(point) != t {
            return None;
        }
        let rest = l.split(" - ").nth(1)?;
        let mut r = rest.split(' ');
        let fs = r.next()?.to_string();
        let source = r.next()?.to_string();
        Some((source, fs))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether two device paths name the same block device.
fn same_device(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.rdev() == y.rdev(),
        _ => a == b,
    }
}

/// The block device of a plan id, waiting a while for it to appear.
async fn find(id: &str) -> Result<String, DiskError> {
    let deadline = tokio::time::Instant::now() + APPEAR_WAIT;
    loop {
        let (found, tried) = candidates(id);
        if let Some(dev) = found {
            return Ok(dev);
        }
        if tokio::time::Instant::now() >= deadline || id.starts_with("loop:") {
            // A loop device is attached before the VM boots: no point waiting.
            return Err(DiskError::NotFound {
                id: id.to_string(),
                tried,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The device for `id` if present, and what was looked at.
fn candidates(id: &str) -> (Option<String>, String) {
    if let Some(file) = id.strip_prefix("loop:") {
        let found = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
                (name.starts_with("loop") && backing.trim_end() == file)
                    .then(|| format!("/dev/{name}"))
            });
        return (found, format!("a loop device backed by {file}"));
    }
    if let Some(name) = id.strip_prefix("/dev/") {
        // EBS: the name given, its Xen alias (sdf → xvdf), or on Nitro the NVMe device
        // whose udev link names it.
        let mut paths = vec![format!("/dev/{name}")];
        if let Some(rest) = name.strip_prefix("sd") {
            paths.push(format!("/dev/xvd{rest}"));
        }
        paths.push(format!(
            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{name}"
        ));
        let found = paths.iter().find(|p| Path::new(p).exists()).cloned();
        return (found, paths.join(", "));
    }
    if let Some(lun) = id.strip_prefix("lun:") {
        // Azure: the waagent's udev link, else the SCSI path naming the LUN.
        let link = format!("/dev/disk/azure/scsi1/lun{lun}");
        if Path::new(&link).exists() {
            return (Some(link.clone()), link);
        }
        let suffix = format!("-lun-{lun}");
        let found = std::fs::read_dir("/dev/disk/by-path")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().display().to_string())
            .find(|p| p.ends_with(&suffix) && !p.contains("-part"));
        return (found, format!("{link}, /dev/disk/by-path/*{suffix}"));
    }
    (None, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_get_one_directory_per_disk() {
        let v = volumes(Path::new("/vm/root"), 2, "/data/");
        assert_eq!(v[0].source, "/vm/root/hadoopfs/fs1");
        assert_eq!(v[1].target, "/data/2");
        assert_eq!(mount_point(Path::new("/"), 3), Path::new("/hadoopfs/fs3"));
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
