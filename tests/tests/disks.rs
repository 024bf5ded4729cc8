//! Data disks end to end on the local provider (real `shoal`, `shoal-agent`, a dockerd
//! per VM, the demo image, real loop devices, `mkfs.ext4`, `blkid`): each VM gets its own
//! sparse files as loop devices, formatted once and mounted at `hadoopfs/fsN` under the
//! VM's own root; its containers see them at `data_disks`; an agent restart mounts them
//! again without formatting, the data kept; delete detaches every loop device and
//! removes every file. Privileged: run through `scripts/test` as root.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::require_privileges;
use shoal_e2e::vm::{device_at, device_numbers, entered_since, nodes, now_ms};

const TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "dockerd",
    "docker",
    "losetup",
    "blkid",
    "mkfs.ext4",
];

fn disks(n: &Value) -> Vec<Value> {
    n["disks"].as_array().cloned().unwrap_or_default()
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root, dockerd, iproute2, util-linux, e2fsprogs"]
fn two_disks_per_node_are_formatted_once_mounted_per_vm_seen_by_containers_and_removed() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    let path = dir.join("dk.toml");
    std::fs::write(
        &path,
        r#"name = "dk"
[[group]]
name = "all"
count = "rest"
disks = { count = 2, size_gb = 1 }
[[group.container]]
name = "box"
image = "shoal/demo:1"
command = ["sleep", "3600"]
data_disks = "/data"
"#,
    )
    .expect("blueprint");
    let path = path.display().to_string();
    c.shoal_ok(&[
        "cluster",
        "create",
        "dk",
        "--nodes",
        "2",
        "--blueprint",
        &path,
        "--wait",
    ]);
    let v = c.show("dk");
    assert_eq!(v["state"], "AVAILABLE", "{v:#}");
    let mut devices = Vec::new();
    let mut mounts = Vec::new();
    for n in nodes(&v) {
        let ds = disks(&n);
        assert_eq!(ds.len(), 2, "{n:#}");
        for (i, d) in ds.iter().enumerate() {
            let mount = d["mount"].as_str().expect("mount").to_string();
            let device = d["device"].as_str().expect("device").to_string();
            assert!(mount.ends_with(&format!("/hadoopfs/fs{}", i + 1)), "{d:#}");
            assert!(device.starts_with("/dev/loop"), "{d:#}");
            assert_eq!(d["formatted"], true, "a new disk is formatted: {d:#}");
            assert_eq!(d["fs_type"], "ext4");
            // Really mounted there, from that device, with the agent's label.
            let findmnt = sh(&format!("findmnt -n -o SOURCE --mountpoint {mount}"));
            assert_eq!(findmnt, device, "{mount}");
            assert_eq!(
                sh(&format!("blkid -o value -s LABEL {device}")),
                format!("shoalfs{}", i + 1)
            );
            devices.push(device);
            mounts.push(mount);
        }
    }
    devices.sort();
    devices.dedup();
    assert_eq!(
        devices.len(),
        4,
        "each VM has disks of its own: {devices:?}"
    );
    mounts.sort();
    mounts.dedup();
    assert_eq!(
        mounts.len(),
        4,
        "each VM has mount points of its own: {mounts:?}"
    );

    // The container sees its node's disks at /data/1 and /data/2; what it writes lands on
    // the disk of its own node only.
    let ns = nodes(&v);
    let n0 = &ns[0];
    let write = c.docker(
        n0,
        &[
            "exec",
            "box-node-0",
            "sh",
            "-c",
            "echo kept > /data/2/file && cat /proc/mounts",
        ],
    );
    assert!(
        write.status.success(),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    let in_container = String::from_utf8_lossy(&write.stdout).into_owned();
    for target in ["/data/1", "/data/2"] {
        assert!(
            in_container.contains(&format!(" {target} ext4 ")),
            "{target}: {in_container}"
        );
    }
    let m0 = PathBuf::from(disks(n0)[1]["mount"].as_str().expect("mount"));
    assert_eq!(
        std::fs::read_to_string(m0.join("file")).expect("file on the disk"),
        "kept\n"
    );
    let m1 = PathBuf::from(disks(&ns[1])[1]["mount"].as_str().expect("mount"));
    assert!(
        !m1.join("file").exists(),
        "node-1's disk holds node-0's file"
    );
    let text = c.shoal_ok(&["cluster", "show", "dk"]);
    assert!(
        text.contains("/hadoopfs/fs2 /dev/loop") && text.contains("formatted by the agent"),
        "{text}"
    );

    // The agent restarts: the disks are mounted already, nothing is formatted, the data
    // is kept.
    let vm = PathBuf::from(n0["agent_log"].as_str().expect("agent_log"))
        .parent()
        .expect("VM dir")
        .to_path_buf();
    let pid = std::fs::read_to_string(vm.join("agent.pid")).expect("agent.pid");
    assert!(Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.show("dk");
        let n = &nodes(&v)[0];
        let again = disks(n);
        let restarted = n["restarts"]
            .as_str()
            .is_some_and(|r| r.contains("agent 1"));
        if restarted
            && again.len() == 2
            && again.iter().all(|d| d.get("formatted").is_none())
            && n["phase"] == "ready"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report from the restarted agent: {n:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_to_string(m0.join("file")).expect("file kept"),
        "kept\n"
    );
    // Still mounted once: a restart does not stack a second mount.
    assert_eq!(
        sh(&format!(
            "findmnt -n -o SOURCE --mountpoint {} | wc -l",
            m0.display()
        )),
        "1"
    );

    // A reboot: every mount under the VM's directory undone and every process gone, as
    // on a VM. The agent of the new boot mounts the same disks again, formats nothing,
    // and the file is there, in the container too.
    let pid = std::fs::read_to_string(vm.join("agent.pid")).expect("agent.pid");
    assert_eq!(
        sh(&format!("findmnt -n --mountpoint {} | wc -l", m0.display())),
        "1"
    );
    let since = now_ms();
    c.shoal_ok(&["cluster", "reboot", "dk", "--node", "node-0"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = c.show("dk");
        let n = &nodes(&v)[0];
        let again = disks(n);
        let booted = std::fs::read_to_string(vm.join("agent.pid"))
            .is_ok_and(|p| !p.trim().is_empty() && p != pid);
        // DEGRADED while node-0 booted, AVAILABLE once its new agent was ready.
        if booted
            && entered_since(&v, "DEGRADED", since)
            && v["state"] == "AVAILABLE"
            && n["phase"] == "ready"
            && again.len() == 2
            && again.iter().all(|d| d.get("formatted").is_none())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-0 not ready with its disks after the reboot: {n:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        sh(&format!(
            "findmnt -n -o SOURCE --mountpoint {} | wc -l",
            m0.display()
        )),
        "1",
        "mounted again by the new boot"
    );
    assert_eq!(
        std::fs::read_to_string(m0.join("file")).expect("file kept across the reboot"),
        "kept\n"
    );
    // The engine started the container again at its boot, before the agent mounted the
    // disks: it held the empty mount points (the VM's own file system, also ext4 here),
    // so the agent restarted it. Its mount table must show each disk's own device at
    // /data/N, and the file must be there.
    let read = c.docker(
        n0,
        &[
            "exec",
            "box-node-0",
            "sh",
            "-c",
            "cat /data/2/file && cat /proc/self/mountinfo",
        ],
    );
    let seen = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        read.status.success() && seen.starts_with("kept\n"),
        "in the container after the reboot: {seen}{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let v = c.show("dk");
    for (i, d) in disks(&nodes(&v)[0]).iter().enumerate() {
        let device = d["device"].as_str().expect("device");
        let want = device_numbers(device);
        let target = format!("/data/{}", i + 1);
        let got = device_at(&seen, &target);
        assert_eq!(
            got.as_deref(),
            Some(want.as_str()),
            "{target} in the container is not {device}: {seen}"
        );
    }

    let state = c.state_dir.display().to_string();
    let attached = shoal_e2e::vm::loop_devices_under(&state);
    assert_eq!(attached.len(), 4, "{attached:?}");
    c.shoal_ok(&["cluster", "delete", "dk", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
    // Detached (a lazily unmounted device is released by the kernel a moment later).
    let left = shoal_e2e::vm::loop_devices_left_under(&state);
    assert!(left.is_empty(), "loop devices left: {left:?}");
    for d in devices {
        assert!(
            !sh(&format!("losetup -n -O BACK-FILE {d} 2>/dev/null")).contains(&state),
            "{d}"
        );
    }
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn bad_disks_are_refused_at_create_and_nothing_is_made() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    for (name, disks, why) in [
        (
            "d25",
            "{ count = 25, size_gb = 1 }",
            "disks.count 25 is outside 1..=24",
        ),
        (
            "d0",
            "{ count = 1, size_gb = 0 }",
            "disks.size_gb 0 is outside",
        ),
        ("dx", "{ count = 1, size = 1 }", "unknown field `size`"),
    ] {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!("name = \"{name}\"\n[[group]]\nname = \"all\"\ncount = \"rest\"\ndisks = {disks}\n[[group.container]]\nname = \"box\"\nimage = \"shoal/demo:1\"\n"),
        )
        .expect("blueprint");
        let err = c.create_refused(name, &path.display().to_string());
        assert!(err.contains(why), "{name}: {err}");
    }
    c.assert_nothing_made();
}
