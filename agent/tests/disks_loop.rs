//! Data disks against real loop devices, `blkid`, `mkfs.ext4` and `mount`: a blank disk
//! is formatted once and mounted at `hadoopfs/fsN` under the mount root, idempotently; a
//! disk holding a filesystem is mounted without formatting, its data kept; a disk
//! holding a partition table is never formatted and fails with the device named, and
//! what that convergence mounted is unmounted again. Each test uses files and mounts
//! under a directory of its own, detached and removed in `Drop`.
//!
//! Run with `cargo test -p shoal-agent --test disks_loop -- --include-ignored` as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_agent::disks::{self, DiskError};
use shoal_e2e::{require_privileges, unique_name};
use shoal_protocol::{DiskPlan, NodePlan};

const TOOLS: &[&str] = &[
    "losetup",
    "blkid",
    "mkfs.ext4",
    "mount",
    "sfdisk",
    "findmnt",
];

/// A directory with loop-backed files; everything is unmounted, detached and removed
/// when it is dropped.
struct Rig {
    dir: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let dir = std::env::temp_dir().join(unique_name("shoal-disks"));
        std::fs::create_dir_all(dir.join("root")).expect("dir");
        Rig { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A 64 MiB sparse file attached to a loop device; its plan id.
    fn disk(&self, name: &str) -> String {
        let file = self.dir.join(format!("{name}.img"));
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(64 << 20))
            .expect("file");
        sh(&format!("losetup --find --show {}", file.display()));
        format!("loop:{}", file.display())
    }

    fn device(&self, id: &str) -> String {
        let file = id.trim_start_matches("loop:");
        sh(&format!("losetup -n -O NAME -j {file}"))
    }

    fn mounts(&self) -> Vec<String> {
        let root = self.root().display().to_string();
        sh("findmnt -rn -o TARGET")
            .lines()
            .filter(|l| l.starts_with(&root))
            .map(String::from)
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for m in self.mounts().iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "img") {
                for dev in sh(&format!("losetup -n -O NAME -j {}", p.display())).lines() {
                    let _ = Command::new("losetup").args(["-d", dev.trim()]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn node(ids: &[String]) -> NodePlan {
    NodePlan {
        id: "node-0".into(),
        index: 0,
        private_ip: "10.213.0.10".parse().expect("ip"),
        instance_id: None,
        slice: "10.240.1.0/24".parse().expect("slice"),
        gateway: "10.240.1.1".parse().expect("gw"),
        containers: vec![],
        leaving: false,
        drain: None,
        peer_drains: vec![],
        recipes: vec![],
        disks: ids
            .iter()
            .map(|id| DiskPlan {
                id: id.clone(),
                size_gb: 1,
            })
            .collect(),
    }
}

fn mount_of(root: &Path, n: usize) -> String {
    disks::mount_point(root, n).display().to_string()
}

#[tokio::test]
#[ignore = "needs root, util-linux, e2fsprogs, fdisk"]
async fn a_blank_disk_is_formatted_once_and_a_filesystem_is_kept() {
    require_privileges(TOOLS);
    let rig = Rig::new();
    let blank = rig.disk("blank");
    // Disk 2 already holds a filesystem with data on it.
    let used = rig.disk("used");
    let used_dev = rig.device(&used);
    sh(&format!("mkfs.ext4 -q -L theirs {used_dev}"));
    let tmp = rig.dir.join("m");
    std::fs::create_dir_all(&tmp).expect("tmp");
    sh(&format!(
        "mount {used_dev} {0} && echo theirs > {0}/data && umount {0}",
        tmp.display()
    ));

    let n = node(&[blank.clone(), used.clone()]);
    let first = disks::converge(&n, &rig.root()).await.expect("converge");
    assert_eq!(first.mounted_now, 2);
    let first = first.disks;
    assert_eq!(first.len(), 2);
    assert!(first[0].formatted && !first[1].formatted, "{first:?}");
    assert_eq!(first[0].mount, mount_of(&rig.root(), 1));
    assert_eq!(
        sh(&format!("blkid -o value -s LABEL {}", first[0].device)),
        "shoalfs1"
    );
    assert_eq!(
        sh(&format!("blkid -o value -s LABEL {used_dev}")),
        "theirs",
        "never formatted"
    );
    let kept = Path::new(&first[1].mount).join("data");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("their data"),
        "theirs\n"
    );
    std::fs::write(Path::new(&first[0].mount).join("ours"), "ours").expect("write");

    // Again (an agent restart): nothing formatted, nothing mounted twice.
    let again = disks::converge(&n, &rig.root())
        .await
        .expect("converge again");
    assert_eq!(again.mounted_now, 0, "mounted already");
    let again = again.disks;
    assert!(again.iter().all(|d| !d.formatted), "{again:?}");
    assert_eq!(rig.mounts().len(), 2, "{:?}", rig.mounts());
    // Unmounted (a reboot) and converged again: mounted, still not formatted.
    for m in rig.mounts() {
        sh(&format!("umount {m}"));
    }
    let rebooted = disks::converge(&n, &rig.root())
        .await
        .expect("after a reboot");
    assert_eq!(rebooted.mounted_now, 2, "mounted again");
    let rebooted = rebooted.disks;
    assert!(rebooted.iter().all(|d| !d.formatted), "{rebooted:?}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&rebooted[0].mount).join("ours")).expect("kept"),
        "ours"
    );
}

#[tokio::test]
#[ignore = "needs root, util-linux, e2fsprogs, fdisk"]
async fn a_disk_with_a_partition_table_is_never_formatted_and_nothing_is_left_mounted() {
    require_privileges(TOOLS);
    let rig = Rig::new();
    let blank = rig.disk("blank");
    let parted = rig.disk("parted");
    let dev = rig.device(&parted);
    sh(&format!("echo 'label: gpt' | sfdisk -q {dev}"));
    let n = node(&[blank, parted.clone()]);
    let e = disks::converge(&n, &rig.root())
        .await
        .expect_err("a partition table");
    let text = e.to_string();
    assert!(matches!(e, DiskError::Device { .. }), "{e:?}");
    assert!(text.contains(&parted) && text.contains(&dev), "{text}");
    assert!(
        text.contains("gpt partition table") && text.contains("never formatted"),
        "{text}"
    );
    // Disk 1 was mounted by this convergence: unmounted again.
    assert!(rig.mounts().is_empty(), "{:?}", rig.mounts());
    assert_eq!(
        sh(&format!("blkid -p -o value -s PTTYPE {dev}")),
        "gpt",
        "left as it was"
    );

    let missing = node(&["loop:/nonexistent/disk.img".to_string()]);
    let e = disks::converge(&missing, &rig.root())
        .await
        .expect_err("no device");
    assert!(matches!(e, DiskError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
}
