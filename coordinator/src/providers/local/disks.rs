//! A local VM's data disks: a sparse file per disk (`disks/diskN.img` in the VM's
//! directory) attached as a loop device. The plan names each by its backing file
//! (`loop:PATH`), which only that VM's directory holds, so a disk is given to one VM
//! only; the agent finds the loop device by it.

use std::path::{Path, PathBuf};

use super::{err, run};
use crate::blueprint::DiskSpec;
use crate::providers::ProviderError;

/// The backing files of a VM's disks, in order.
fn files(vm_dir: &Path, count: u32) -> Vec<PathBuf> {
    (1..=count)
        .map(|i| vm_dir.join("disks").join(format!("disk{i}.img")))
        .collect()
}

/// The plan ids of the disks a VM's directory holds, in order (`disk1.img`, …).
pub(super) fn ids(vm_dir: &Path) -> Vec<String> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(vm_dir.join("disks"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix("disk")?
                .strip_suffix(".img")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|(_, p)| format!("loop:{}", p.display()))
        .collect()
}

/// The loop devices attached to `file` (`losetup -j`), usually one.
async fn loops_of(file: &Path) -> Vec<String> {
    let f = file.display().to_string();
    run("losetup", &["-n", "-O", "NAME", "-j", &f])
        .await
        .map(|out| {
            out.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Makes (idempotently) the VM's disks and attaches each to a loop device (their plan
/// ids are then [`ids`]). A disk made before (the VM's creation resumed) is kept as it is, its
/// data with it.
pub(super) async fn attach(vm_dir: &Path, spec: &DiskSpec) -> Result<(), ProviderError> {
    let dir = vm_dir.join("disks");
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    for file in files(vm_dir, spec.count) {
        if !file.exists() {
            let f = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&file)
                .map_err(|e| err(format!("creating {}: {e}", file.display())))?;
            // Sparse: a 100 GiB disk costs nothing until written.
            f.set_len(u64::from(spec.size_gb) << 30)
                .map_err(|e| err(format!("sizing {}: {e}", file.display())))?;
        }
        if loops_of(&file).await.is_empty() {
            let f = file.display().to_string();
            run("losetup", &["--find", "--show", &f]).await?;
        }
    }
    Ok(())
}

/// Detaches every loop device of the VM's disks (a device still held, by a lazy
/// unmount, is detached by the kernel once released) and removes the backing files.
/// Every error is collected.
pub(super) async fn detach_all(vm_dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let dir = vm_dir.join("disks");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return errors;
    };
    for e in entries.flatten() {
        let file = e.path();
        for dev in loops_of(&file).await {
            if let Err(e) = run("losetup", &["-d", &dev]).await {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = std::fs::remove_file(&file) {
            errors.push(format!("removing {}: {e}", file.display()));
        }
    }
    errors
}
