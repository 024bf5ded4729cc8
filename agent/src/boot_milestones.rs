//! The OS's own boot, as a real VM records it: the kernel's start (`/proc/uptime`),
//! systemd's timestamps (the manager's `InitRDTimestampMonotonic`,
//! `UserspaceTimestampMonotonic`, `FinishTimestampMonotonic`, and when a few units
//! started and became active), and cloud-init's stages and outcome
//! (`/run/cloud-init/status.json`, `result.json`). The agent sends them with its status
//! reports ([`BootReport`]), so the coordinator's timeline shows the OS's boot and the
//! agent's phases in one picture.
//!
//! Only a node with a boot of its own reports one: the agent must be the main process
//! of a systemd unit of its own (`systemctl show -p MainPID` of the unit its cgroup
//! names is the agent's pid), which is how a baked image starts it at boot. The local
//! provider's agents are children of the coordinator on a host that booted long ago:
//! they report nothing, rather than the host's boot. (Comparing the agent's network
//! namespace with PID 1's would need ptrace rights over PID 1, which the unit's
//! capability bounding set withholds.)
//!
//! Reading is cheap but not free (one `systemctl show`), so a background task reads
//! until the boot is complete (systemd finished starting up and cloud-init wrote its
//! result) or [`WATCH_LIMIT`] passes, and publishes each new reading on a watch
//! channel; reports take the latest reading without any I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_protocol::{BootReport, BootStage, CloudInitOutcome, MAX_CLOUD_INIT_ERRORS};
use tokio::sync::watch;

/// How often the boot is read again while it is not complete.
pub const INTERVAL: Duration = Duration::from_secs(3);
/// How long the boot is watched at most: a boot that never completes (a unit that
/// hangs) is reported as far as it got.
pub const WATCH_LIMIT: Duration = Duration::from_secs(900);

/// The units whose start is worth a stage: the network the agent needs, Docker (the
/// moment "docker ready", from which everything else is Shoal's), and the agent itself.
pub const UNITS: [&str; 3] = [
    "systemd-networkd-wait-online.service",
    "docker.service",
    "shoal-agent.service",
];

/// cloud-init's stages, in the order they run, as `status.json` names them.
const CLOUD_INIT_STAGES: [&str; 4] = ["init-local", "init", "modules-config", "modules-final"];

/// Where the sources are: `/proc`, `/run/cloud-init`, and the `systemctl` to ask.
/// Tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The proc file system.
    pub proc: PathBuf,
    /// cloud-init's run directory.
    pub cloud_init_run: PathBuf,
    /// The `systemctl` program (`None`: do not ask systemd).
    pub systemctl: Option<PathBuf>,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            proc: PathBuf::from("/proc"),
            cloud_init_run: PathBuf::from("/run/cloud-init"),
            systemctl: Some(PathBuf::from("systemctl")),
        }
    }
}

/// Whether `systemctl show -p MainPID UNIT` output names `pid`: the process is the
/// unit's main process, started by systemd for that unit.
pub fn is_main_pid(show: &str, pid: u32) -> bool {
    parse_show(show)
        .first()
        .and_then(|b| b.get("MainPID"))
        .and_then(|v| v.parse::<u32>().ok())
        == Some(pid)
}

/// Seconds since boot, from the first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    let v: f64 = text.split_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// The blocks of `systemctl show` output (`Key=Value` lines; several units are
/// separated by blank lines).
pub fn parse_show(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.to_string(), v.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn micros(block: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    block
        .get(key)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
}

fn stage(source: &str, name: &str, started_ms: u64, end_ms: Option<u64>) -> BootStage {
    BootStage {
        source: source.into(),
        name: name.into(),
        started_ms,
        duration_ms: end_ms.map(|e| e.saturating_sub(started_ms)),
    }
}

/// The kernel's, the initrd's and systemd's own stages from the manager's properties,
/// and each unit's start (inactive → active) from theirs. Monotonic timestamps count
/// from the kernel's start, `kernel_start_ms` on the wall clock.
pub fn systemd_stages(
    kernel_start_ms: u64,
    manager: &BTreeMap<String, String>,
    units: &[BTreeMap<String, String>],
) -> Vec<BootStage> {
    let at = |us: u64| kernel_start_ms.saturating_add(us / 1000);
    let mut out = Vec::new();
    let initrd = micros(manager, "InitRDTimestampMonotonic");
    let Some(userspace) = micros(manager, "UserspaceTimestampMonotonic") else {
        return out;
    };
    let finish = micros(manager, "FinishTimestampMonotonic");
    out.push(stage(
        "kernel",
        "kernel",
        kernel_start_ms,
        Some(at(initrd.unwrap_or(userspace))),
    ));
    if let Some(i) = initrd {
        out.push(stage("systemd", "initrd", at(i), Some(at(userspace))));
    }
    out.push(stage("systemd", "userspace", at(userspace), finish.map(at)));
    for u in units {
        let (Some(id), Some(start)) = (u.get("Id"), micros(u, "InactiveExitTimestampMonotonic"))
        else {
            continue;
        };
        let active = micros(u, "ActiveEnterTimestampMonotonic").filter(|a| *a >= start);
        out.push(stage("systemd", id, at(start), active.map(at)));
    }
    out
}

/// Whether systemd says the boot is over (every start-up job done).
pub fn systemd_finished(manager: &BTreeMap<String, String>) -> bool {
    micros(manager, "FinishTimestampMonotonic").is_some()
}

#[derive(Debug, Deserialize)]
struct Versioned<T> {
    v1: T,
}

#[derive(Debug, Default, Deserialize)]
struct StageTimes {
    #[serde(default)]
    start: Option<f64>,
    #[serde(default)]
    finished: Option<f64>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Result1 {
    #[serde(default)]
    datasource: Option<String>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

fn epoch_ms(secs: f64) -> Option<u64> {
    (secs.is_finite() && secs > 0.0).then(|| (secs * 1000.0).round() as u64)
}

fn error_text(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.chars().take(1024).collect()
}

/// cloud-init's stages (from `status.json`) and outcome (from `result.json` once the
/// last stage wrote it, else `running`). Either document may be absent or unreadable:
/// what can be read is reported.
pub fn cloud_init(
    status_json: Option<&[u8]>,
    result_json: Option<&[u8]>,
) -> (Vec<BootStage>, Option<CloudInitOutcome>) {
    let status: Option<BTreeMap<String, serde_json::Value>> = status_json
        .and_then(|b| {
            serde_json::from_slice::<Versioned<BTreeMap<String, serde_json::Value>>>(b).ok()
        })
        .map(|v| v.v1);
    let result: Option<Result1> = result_json
        .and_then(|b| serde_json::from_slice::<Versioned<Result1>>(b).ok())
        .map(|v| v.v1);
    let mut stages = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut datasource = None;
    if let Some(st) = &status {
        for name in CLOUD_INIT_STAGES {
            let Some(t) = st
                .get(name)
                .and_then(|v| serde_json::from_value::<StageTimes>(v.clone()).ok())
            else {
                continue;
            };
            errors.extend(t.errors.iter().map(error_text));
            if let Some(start) = t.start.and_then(epoch_ms) {
                stages.push(stage(
                    "cloud-init",
                    name,
                    start,
                    t.finished.and_then(epoch_ms).filter(|f| *f >= start),
                ));
            }
        }
        datasource = st
            .get("datasource")
            .and_then(|d| d.as_str())
            .map(String::from);
    }
    if let Some(r) = &result {
        for e in r.errors.iter().map(error_text) {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        datasource = r.datasource.clone().or(datasource);
    }
    if status.is_none() && result.is_none() {
        return (stages, None);
    }
    errors.truncate(MAX_CLOUD_INIT_ERRORS);
    let status = match (&result, errors.is_empty()) {
        (_, false) => "error",
        (Some(_), true) => "done",
        (None, true) => "running",
    };
    let datasource = datasource.map(|d| d.chars().take(256).collect());
    (
        stages,
        Some(CloudInitOutcome {
            status: status.into(),
            datasource,
            errors,
        }),
    )
}

/// The systemd unit of a process, from its `/proc/PID/cgroup` (cgroup v2: `0::/path`,
/// or v1's `name=systemd` hierarchy): the last path component, when it is a service.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            (ctrl.is_empty() || ctrl == "name=systemd").then_some(path)
        })
        .filter_map(|p| p.rsplit('/').next())
        .find(|u| u.ends_with(".service") && u.len() <= 64)
        .map(String::from)
}

/// One reading of the boot, and whether it is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// What to report.
    pub report: BootReport,
    /// Nothing more will change: systemd finished, cloud-init wrote its result (or
    /// there is no cloud-init), and so did everything else read here.
    pub complete: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn systemctl_show(systemctl: &Path, args: &[&str]) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(systemctl)
            .arg("show")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads the boot once. `kernel_start_ms` is fixed on the first reading (later ones
/// pass it back) so that the stages do not move with the rounding of `/proc/uptime`.
pub async fn read(src: &Sources, kernel_start_ms: Option<u64>) -> Option<Reading> {
    let kernel_start_ms = match kernel_start_ms {
        Some(k) => k,
        None => {
            let text = tokio::fs::read_to_string(src.proc.join("uptime"))
                .await
                .ok()?;
            let up = parse_uptime(&text)?;
            now_ms().saturating_sub((up * 1000.0) as u64)
        }
    };
    let mut stages = Vec::new();
    let mut systemd_done = true;
    if let Some(systemctl) = &src.systemctl {
        let manager = systemctl_show(
            systemctl,
            &[
                "--property=InitRDTimestampMonotonic,UserspaceTimestampMonotonic,FinishTimestampMonotonic",
            ],
        )
        .await;
        match manager.as_deref().map(parse_show) {
            Some(blocks) if !blocks.is_empty() => {
                let mut args = vec![
                    "--property=Id,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic",
                ];
                args.extend(UNITS);
                let units = systemctl_show(systemctl, &args)
                    .await
                    .map(|t| parse_show(&t))
                    .unwrap_or_default();
                stages = systemd_stages(kernel_start_ms, &blocks[0], &units);
                systemd_done = systemd_finished(&blocks[0]);
            }
            // No systemd to ask: only the kernel's start and cloud-init's own times.
            _ => {}
        }
    }
    let status = tokio::fs::read(src.cloud_init_run.join("status.json"))
        .await
        .ok();
    let result = tokio::fs::read(src.cloud_init_run.join("result.json"))
        .await
        .ok();
    let (ci_stages, outcome) = cloud_init(status.as_deref(), result.as_deref());
    stages.extend(ci_stages);
    // A clock that jumped back between kernel start and a stage would make a stage
    // start before the kernel: those are dropped rather than reported wrong.
    stages.retain(|s| s.started_ms >= kernel_start_ms);
    stages.sort_by_key(|s| s.started_ms);
    stages.truncate(shoal_protocol::MAX_BOOT_STAGES);
    let cloud_init_done = outcome.as_ref().is_none_or(|o| o.status != "running");
    let agent_unit = tokio::fs::read_to_string(src.proc.join("self/cgroup"))
        .await
        .ok()
        .and_then(|t| unit_from_cgroup(&t));
    Some(Reading {
        complete: systemd_done && cloud_init_done,
        report: BootReport {
            kernel_start_ms,
            stages,
            cloud_init: outcome,
            agent_unit,
        },
    })
}

/// The systemd unit this process is the main process of, if any: a boot of its own.
pub async fn own_unit(src: &Sources) -> Option<String> {
    let cgroup = tokio::fs::read_to_string(src.proc.join("self/cgroup"))
        .await
        .ok()?;
    let unit = unit_from_cgroup(&cgroup)?;
    let systemctl = src.systemctl.as_ref()?;
    let show = systemctl_show(systemctl, &["--property=MainPID", &unit]).await?;
    is_main_pid(&show, std::process::id()).then_some(unit)
}

/// Starts watching the boot, when this node has one of its own ([`own_unit`]): the
/// receiver holds the latest reading (`None` before the first, and for ever where there
/// is no boot to report).
pub fn watch(src: Sources) -> watch::Receiver<Option<BootReport>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let Some(unit) = own_unit(&src).await else {
            tracing::info!("not the main process of a systemd unit: no boot of its own to report");
            return;
        };
        tracing::info!(%unit, "reporting the OS's boot");
        let start = tokio::time::Instant::now();
        let mut kernel_start = None;
        loop {
            let reading = read(&src, kernel_start).await;
            if reading.is_none() && kernel_start.is_none() {
                tracing::warn!(proc = %src.proc.display(), "cannot read the uptime: no boot report");
                return;
            }
            if let Some(r) = reading {
                kernel_start = Some(r.report.kernel_start_ms);
                let changed = tx.borrow().as_ref() != Some(&r.report);
                if changed {
                    tx.send_replace(Some(r.report));
                }
                if r.complete {
                    tracing::info!("boot complete: boot report final");
                    return;
                }
            }
            if start.elapsed() > WATCH_LIMIT || tx.is_closed() {
                return;
            }
            tokio::time::sleep(INTERVAL).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1_700_000_000_000;

    #[test]
    fn uptime_is_the_first_field() {
        assert_eq!(parse_uptime("12.34 20.00\n"), Some(12.34));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("x 1"), None);
        assert_eq!(parse_uptime("-1 2"), None);
    }

    fn manager(initrd: u64, userspace: u64, finish: u64) -> BTreeMap<String, String> {
        parse_show(&format!(
            "InitRDTimestampMonotonic={initrd}\nUserspaceTimestampMonotonic={userspace}\nFinishTimestampMonotonic={finish}\n"
        ))
        .remove(0)
    }

    #[test]
    fn systemd_stages_from_its_timestamps() {
        let units = parse_show(
            "Id=systemd-networkd-wait-online.service\nInactiveExitTimestampMonotonic=20000000\nActiveEnterTimestampMonotonic=45500000\n\n\
             Id=docker.service\nInactiveExitTimestampMonotonic=46000000\nActiveEnterTimestampMonotonic=0\n\n\
             Id=shoal-agent.service\nInactiveExitTimestampMonotonic=0\nActiveEnterTimestampMonotonic=0\n",
        );
        assert_eq!(units.len(), 3);
        let s = systemd_stages(K, &manager(1_700_000, 5_200_000, 0), &units);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel",
                "initrd",
                "userspace",
                "systemd-networkd-wait-online.service",
                "docker.service"
            ]
        );
        assert_eq!((s[0].started_ms, s[0].duration_ms), (K, Some(1700)));
        assert_eq!((s[1].started_ms, s[1].duration_ms), (K + 1700, Some(3500)));
        // Userspace still starting up: no end.
        assert_eq!((s[2].started_ms, s[2].duration_ms), (K + 5200, None));
        assert_eq!(s[3].duration_ms, Some(25_500));
        // Docker starting, not active yet.
        assert_eq!((s[4].started_ms, s[4].duration_ms), (K + 46_000, None));
        assert!(!systemd_finished(&manager(1, 2, 0)));
        assert!(systemd_finished(&manager(1, 2, 3)));
        // Without an initrd the kernel runs until userspace.
        let s = systemd_stages(K, &manager(0, 2_000_000, 9_000_000), &[]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].duration_ms, Some(2000));
        assert_eq!(s[1].duration_ms, Some(7000));
        // Nothing without the userspace timestamp.
        assert!(systemd_stages(K, &BTreeMap::new(), &units).is_empty());
    }

    const STATUS: &str = r#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]",
        "init": {"errors": [], "finished": 1700000060.5, "recoverable_errors": {}, "start": 1700000052.25},
        "init-local": {"errors": [], "finished": 1700000051.0, "start": 1700000040.0},
        "modules-config": {"errors": [], "finished": null, "start": 1700000070.0},
        "modules-final": {"errors": [], "finished": null, "start": null},
        "stage": "modules-config"}}"#;

    #[test]
    fn cloud_init_stages_and_outcome() {
        let (stages, outcome) = cloud_init(Some(STATUS.as_bytes()), None);
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["init-local", "init", "modules-config"]);
        assert_eq!(stages[0].started_ms, K + 40_000);
        assert_eq!(stages[1].duration_ms, Some(8250));
        assert_eq!(stages[2].duration_ms, None);
        let o = outcome.expect("outcome");
        assert_eq!(o.status, "running");
        assert!(o
            .datasource
            .as_deref()
            .is_some_and(|d| d.contains("NoCloud")));

        let result = br#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]", "errors": []}}"#;
        let (_, o) = cloud_init(Some(STATUS.as_bytes()), Some(result));
        assert_eq!(o.expect("outcome").status, "done");

        let failed = br#"{"v1": {"datasource": null, "errors": ["('scripts_user', RuntimeError('Runparts: 1 failures'))"]}}"#;
        let (_, o) = cloud_init(Some(STATUS.as_bytes()), Some(failed));
        let o = o.expect("outcome");
        assert_eq!(o.status, "error");
        assert_eq!(o.errors.len(), 1);
        assert!(o.errors[0].contains("Runparts"));

        // Nothing to read: no outcome; garbage: the same.
        assert_eq!(cloud_init(None, None), (vec![], None));
        assert_eq!(cloud_init(Some(b"{"), Some(b"[]")), (vec![], None));
    }

    #[test]
    fn the_unit_comes_from_the_cgroup() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/shoal-agent.service\n").as_deref(),
            Some("shoal-agent.service")
        );
        assert_eq!(
            unit_from_cgroup("12:cpu:/x\n1:name=systemd:/system.slice/shoal-agent.service\n")
                .as_deref(),
            Some("shoal-agent.service")
        );
        assert_eq!(unit_from_cgroup("0::/user.slice/session-1.scope\n"), None);
        assert_eq!(unit_from_cgroup("0::/\n"), None);
    }

    #[tokio::test]
    async fn a_reading_from_files_only() {
        let dir = std::env::temp_dir().join(format!("shoal-boot-{}", std::process::id()));
        let proc = dir.join("proc");
        let run = dir.join("run");
        std::fs::create_dir_all(proc.join("self")).expect("mkdir");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::write(proc.join("uptime"), "100.00 50.00\n").expect("uptime");
        std::fs::write(
            proc.join("self/cgroup"),
            "0::/system.slice/shoal-agent.service\n",
        )
        .expect("cgroup");
        // cloud-init stages a minute ago, relative to now.
        let now = now_ms() as f64 / 1000.0;
        let status = format!(
            r#"{{"v1": {{"init-local": {{"start": {}, "finished": {}, "errors": []}}}}}}"#,
            now - 60.0,
            now - 50.0
        );
        std::fs::write(run.join("status.json"), status).expect("status");
        let src = Sources {
            proc: proc.clone(),
            cloud_init_run: run.clone(),
            systemctl: None,
        };
        let r = read(&src, None).await.expect("reading");
        let kernel = r.report.kernel_start_ms;
        assert!(now_ms() - kernel >= 100_000 && now_ms() - kernel < 102_000);
        assert_eq!(r.report.stages.len(), 1);
        assert_eq!(r.report.stages[0].duration_ms, Some(10_000));
        assert_eq!(r.report.agent_unit.as_deref(), Some("shoal-agent.service"));
        assert!(!r.complete, "cloud-init still running");
        // The kernel's start is kept from the first reading.
        let again = read(&src, Some(kernel)).await.expect("reading");
        assert_eq!(again.report.kernel_start_ms, kernel);
        std::fs::write(run.join("result.json"), r#"{"v1": {"errors": []}}"#).expect("result");
        let done = read(&src, Some(kernel)).await.expect("reading");
        assert!(done.complete);
        assert_eq!(done.report.cloud_init.expect("outcome").status, "done");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_main_process_of_its_unit_has_a_boot() {
        let show = "MainPID=812\n";
        assert!(is_main_pid(show, 812));
        // The local provider's agent: its cgroup is the coordinator's unit, whose main
        // process is the coordinator.
        assert!(!is_main_pid(show, 813));
        assert!(!is_main_pid("", 812));
        assert!(!is_main_pid("MainPID=x\n", 812));
    }
}
