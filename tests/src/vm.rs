//! Looking into a local cluster's simulated VMs from a test, through what `shoal cluster
//! show --json` says of each node (its namespace, Docker socket and log paths): the
//! processes, the overlay's FDB, the containers and their hosts files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::coordinator::TestCoordinator;

/// The nodes of a `show --json` answer.
pub fn nodes(v: &Value) -> Vec<Value> {
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// A command's standard output, as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command run inside the node's network namespace.
pub fn in_ns(node: &Value, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!(
        "--net=/run/netns/{}",
        node["netns"].as_str().expect("netns")
    ))
    .arg("--")
    .arg(program);
    cmd
}

/// The peers in the node's VXLAN replication list (`shoal-vx`'s all-zeros FDB
/// entries), sorted.
pub fn fdb_peers(node: &Value) -> Vec<String> {
    let out = in_ns(node, "bridge")
        .args(["-j", "fdb", "show", "dev", "shoal-vx"])
        .output()
        .expect("bridge");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    let mut peers: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .filter_map(|e| e["dst"].as_str().map(String::from))
        .collect();
    peers.sort();
    peers
}

/// The ids of the node's running containers, one per line.
pub fn container_ids(c: &TestCoordinator, node: &Value) -> String {
    stdout(&c.docker(node, &["ps", "-q", "--no-trunc"]))
}

/// Each node's running containers, by node id: `ID STARTED_AT RESTART_COUNT` per
/// container, so that a container replaced, restarted or stopped shows as a change.
pub fn container_starts(
    c: &TestCoordinator,
    v: &Value,
) -> std::collections::BTreeMap<String, String> {
    nodes(v)
        .iter()
        .map(|n| {
            let ids = container_ids(c, n);
            let started = stdout(
                &c.docker(
                    n,
                    &[
                        "inspect",
                        "--format",
                        "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}",
                    ]
                    .into_iter()
                    .chain(ids.split_whitespace())
                    .collect::<Vec<_>>(),
                ),
            );
            (n["id"].as_str().unwrap_or("").to_string(), started)
        })
        .collect()
}

/// The node's VM directory (its state, logs, pid files).
pub fn vm_dir(node: &Value) -> PathBuf {
    Path::new(node["agent_log"].as_str().expect("agent_log"))
        .parent()
        .expect("vm dir")
        .to_path_buf()
}

/// Live processes whose program is `program` and whose command line has an argument
/// containing `needle`, as `pid: command line`.
pub fn processes(program: &str, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            continue;
        }
        if args.first().is_some_and(|a| a.ends_with(program))
            && args.iter().any(|a| a.contains(needle))
        {
            out.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                args.join(" ")
            ));
        }
    }
    out
}

/// Polls `f` every 50 ms until it returns `Some`, or panics naming `what` after
/// `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The loop devices whose backing file is under `dir`, as `/dev/loopN: FILE` (from
/// `/sys/block/loop*/loop/backing_file`).
pub fn loop_devices_under(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(file) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            // Under `dir` itself, not a sibling whose name starts the same.
            if file.starts_with(&format!("{}/", dir.trim_end_matches('/'))) {
                out.push(format!("/dev/{name}: {}", file.trim_end()));
            }
        }
    }
    out.sort();
    out
}

/// Waits up to 10 s for every loop device backed under `dir` to be detached (a lazily
/// unmounted device is released by the kernel a moment after the delete): those left.
pub fn loop_devices_left_under(dir: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = loop_devices_under(dir);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the cluster entered `state` after `since_ms` (its record of states).
pub fn entered_since(v: &Value, state: &str, since_ms: u64) -> bool {
    v["events"].as_array().is_some_and(|es| {
        es.iter()
            .any(|e| e["state"] == state && e["at_ms"].as_u64().is_some_and(|t| t >= since_ms))
    })
}

/// Milliseconds since the epoch (the clock of the cluster's record).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The device numbers (`MAJ:MIN`) of the file system mounted topmost at `target` in a
/// mount table (`/proc/PID/mountinfo`, a container's as `cat` prints it).
pub fn device_at(mountinfo: &str, target: &str) -> Option<String> {
    mountinfo
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(target))
        .and_then(|l| l.split(' ').nth(2))
        .map(String::from)
}

/// A block device's numbers, `MAJ:MIN` (`lsblk`), to compare with [`device_at`].
pub fn device_numbers(device: &str) -> String {
    let out = Command::new("lsblk")
        .args(["-dno", "MAJ:MIN", device])
        .output()
        .expect("lsblk");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
