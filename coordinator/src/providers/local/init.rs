//! A local VM's init: what systemd is on a cloud VM, for the two services a Shoal VM
//! runs. It runs inside the VM's namespace (`shoal local-vm-init --vm-dir DIR`, started
//! by the local provider at boot), outlives the coordinator as a VM does, and:
//!
//! - starts dockerd, waits until its socket answers (`After=docker.service`), then
//!   starts the agent, each from the command line the provider wrote to `boot.json`;
//! - restarts either when it exits, after a backoff (100 ms, doubling to 2 s; back to
//!   100 ms once a run lasted 10 s), as `Restart=always` (dockerd) and
//!   `Restart=on-failure` with `RestartPreventExitStatus=2 4 5` (the agent: see
//!   docs/agent-exit-codes.md) would; every exit and restart is written to
//!   `supervisor.json`, which `cluster show` reads;
//! - is the subreaper of the VM's processes, so what a dead dockerd leaves (containerd,
//!   shims) is reaped like on a VM;
//! - on SIGTERM stops the agent and dockerd (a shutdown) and exits.
//!
//! A service it finds already running (its pid file names a live process: an init
//! killed and started again) is watched instead of started twice.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::keys::write_file_atomic;

/// What the provider writes for the init: how to boot the VM.
pub const BOOT_FILE: &str = "boot.json";
/// What the init writes: every service's starts and exits.
pub const SUPERVISOR_FILE: &str = "supervisor.json";
/// The init's own pid.
pub const INIT_PID: &str = "init.pid";

/// First restart delay.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest restart delay.
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// A run this long resets the backoff.
const STEADY: Duration = Duration::from_secs(10);
/// How long the agent's first start waits for dockerd to answer.
const DOCKER_WAIT: Duration = Duration::from_secs(60);
/// The agent's exit codes that mean "do not restart me" (docs/agent-exit-codes.md):
/// a clean stop, a bad configuration, refused by the coordinator, an invalid plan.
const AGENT_FINAL: &[i32] = &[0, 2, 4, 5];

/// How to boot a local VM: the two services and where their output goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// dockerd's command line (it writes its own pid file).
    pub dockerd: Vec<String>,
    /// dockerd's pid file.
    pub dockerd_pidfile: PathBuf,
    /// The Docker socket, to wait for before the agent's first start.
    pub docker_socket: PathBuf,
    /// dockerd's log.
    pub dockerd_log: PathBuf,
    /// The agent's command line.
    pub agent: Vec<String>,
    /// The agent's environment, on top of the init's.
    pub agent_env: BTreeMap<String, String>,
    /// The agent's pid file (the init writes it).
    pub agent_pidfile: PathBuf,
    /// The agent's log.
    pub agent_log: PathBuf,
}

/// One service's record in [`SUPERVISOR_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Its pid, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Times it was started (the first start included).
    pub starts: u32,
    /// Times it was started again after an exit.
    pub restarts: u32,
    /// How it last ended, for a person: `killed by signal 9`, `exited with code 3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// When it last ended (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_ms: Option<u64>,
    /// How long after that it was started again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_after_ms: Option<u64>,
    /// It ended with an exit code that means "do not restart me".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub given_up: bool,
}

/// What [`SUPERVISOR_FILE`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// When the VM booted (ms since the epoch).
    pub booted_ms: u64,
    /// By service name: `dockerd`, `agent`.
    pub services: BTreeMap<String, ServiceRecord>,
}

impl Supervision {
    /// Reads a VM's record, if it has one.
    pub fn read(dir: &Path) -> Option<Supervision> {
        serde_json::from_slice(&std::fs::read(dir.join(SUPERVISOR_FILE)).ok()?).ok()
    }

    /// For `show`: `agent 1 (last killed by signal 9, back after 0.10s), dockerd 0`.
    pub fn summary(&self) -> String {
        self.services
            .iter()
            .map(|(name, s)| match (&s.last_exit, s.restarted_after_ms) {
                (Some(how), Some(after)) => format!(
                    "{name} {} (last {how}, started again after {:.2}s)",
                    s.restarts,
                    after as f64 / 1000.0
                ),
                (Some(how), None) if s.given_up => {
                    format!("{name} {} ({how}: not restarted)", s.restarts)
                }
                _ => format!("{name} {}", s.restarts),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// A supervised service.
#[derive(Debug)]
struct Service {
    name: &'static str,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    log: PathBuf,
    /// The pid file it writes itself (dockerd), or that the init writes (the agent).
    pidfile: PathBuf,
    writes_pidfile: bool,
    /// Its pid and whether it is the init's child (else found running and watched).
    pid: Option<(i32, bool)>,
    started: Instant,
    /// Quick failures in a row (the backoff's exponent).
    failures: u32,
    next_start: Option<Instant>,
    exited_at: Option<Instant>,
    final_codes: &'static [i32],
}

/// Runs the init of the VM in `dir`; returns its exit code.
pub fn run(dir: &Path) -> i32 {
    let boot: Boot = match std::fs::read(dir.join(BOOT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(b) => b,
        None => {
            eprintln!(
                "shoal local-vm-init: {} is missing or unreadable",
                dir.join(BOOT_FILE).display()
            );
            return 2;
        }
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    if let Err(e) = unsafe {
        nix::sys::signal::signal(
            Signal::SIGTERM,
            nix::sys::signal::SigHandler::Handler(on_term),
        )
    } {
        eprintln!("shoal local-vm-init: cannot handle SIGTERM: {e}");
        return 2;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("shoal local-vm-init: cannot become the VM's subreaper: {e}");
    }
    let _ = write_file_atomic(
        &dir.join(INIT_PID),
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    );
    let mut record = Supervision {
        booted_ms: now_ms(),
        services: BTreeMap::new(),
    };
    let mut services = [
        Service {
            name: "dockerd",
            argv: boot.dockerd.clone(),
            env: BTreeMap::new(),
            log: boot.dockerd_log.clone(),
            pidfile: boot.dockerd_pidfile.clone(),
            writes_pidfile: false,
            pid: None,
            started: Instant::now(),
            failures: 0,
            next_start: Some(Instant::now()),
            exited_at: None,
            final_codes: &[],
        },
        Service {
            name: "agent",
            argv: boot.agent.clone(),
            env: boot.agent_env.clone(),
            log: boot.agent_log.clone(),
            pidfile: boot.agent_pidfile.clone(),
            writes_pidfile: true,
            pid: None,
            started: Instant::now(),
            failures: 0,
            next_start: Some(Instant::now()),
            exited_at: None,
            final_codes: AGENT_FINAL,
        },
    ];
    for s in &mut services {
        if let Some(pid) = live_pid(&s.pidfile) {
            eprintln!(
                "shoal local-vm-init: {} runs already (pid {pid}): watching it",
                s.name
            );
            s.pid = Some((pid, false));
            s.next_start = None;
            record.services.entry(s.name.to_string()).or_default().pid = Some(pid);
        }
    }
    let booted = Instant::now();
    let mut docker_seen = false;
    loop {
        if TERMINATE.load(Ordering::SeqCst) {
            shut_down(&mut services);
            return 0;
        }
        let mut changed = false;
        // Children that ended (a service, or an orphan the VM left to its init).
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    changed |= ended(&mut services, &mut record, pid.as_raw(), Some(code), None)
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    changed |= ended(&mut services, &mut record, pid.as_raw(), None, Some(sig))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Services found running: watched by their pid.
        for i in 0..services.len() {
            if let Some((pid, false)) = services[i].pid {
                if !alive(pid) {
                    changed |= ended(&mut services, &mut record, pid, None, None);
                }
            }
        }
        if !docker_seen {
            docker_seen = docker_answers(&boot.docker_socket) || booted.elapsed() > DOCKER_WAIT;
        }
        let now = Instant::now();
        for s in &mut services {
            let due = s.pid.is_none() && s.next_start.is_some_and(|t| t <= now);
            // After=docker.service: the agent's first start waits for dockerd.
            let waits = s.name == "agent" && !docker_seen;
            if due && !waits {
                start(s, &mut record);
                changed = true;
            }
        }
        if changed {
            let _ = write_file_atomic(
                &dir.join(SUPERVISOR_FILE),
                &serde_json::to_vec_pretty(&record).unwrap_or_default(),
                0o644,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a service now, recording it.
fn start(s: &mut Service, record: &mut Supervision) {
    let rec = record.services.entry(s.name.to_string()).or_default();
    let (Some(program), Some(args)) = (s.argv.first(), s.argv.get(1..)) else {
        s.next_start = None;
        rec.given_up = true;
        rec.last_exit = Some("has no command line".into());
        return;
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.log);
    let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    match Command::new(program)
        .args(args)
        .envs(&s.env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
    {
        Ok(child) => {
            let pid = child.id() as i32;
            // The child is reaped through waitpid(-1); dropping the handle leaves it be.
            drop(child);
            if s.writes_pidfile {
                let _ = write_file_atomic(&s.pidfile, format!("{pid}\n").as_bytes(), 0o644);
            }
            s.pid = Some((pid, true));
            s.started = Instant::now();
            s.next_start = None;
            if let Some(at) = s.exited_at.take() {
                rec.restarts += 1;
                rec.restarted_after_ms = Some(at.elapsed().as_millis() as u64);
            }
            rec.starts += 1;
            rec.pid = Some(pid);
            eprintln!("shoal local-vm-init: started {} (pid {pid})", s.name);
        }
        Err(e) => {
            eprintln!("shoal local-vm-init: cannot start {}: {e}", s.name);
            s.exited_at.get_or_insert_with(Instant::now);
            schedule(s);
        }
    }
}

/// The next start of a service that ended, after its backoff.
fn schedule(s: &mut Service) {
    if s.started.elapsed() >= STEADY {
        s.failures = 0;
    }
    let delay = BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(s.failures))
        .min(BACKOFF_CAP);
    s.failures = s.failures.saturating_add(1);
    s.next_start = Some(Instant::now() + delay);
}

/// Handles the end of process `pid`; returns whether it was a service.
fn ended(
    services: &mut [Service],
    record: &mut Supervision,
    pid: i32,
    code: Option<i32>,
    signal: Option<Signal>,
) -> bool {
    let Some(s) = services
        .iter_mut()
        .find(|s| s.pid.is_some_and(|(p, _)| p == pid))
    else {
        return false;
    };
    s.pid = None;
    s.exited_at = Some(Instant::now());
    let how = match (code, signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => format!("killed by signal {}", sig as i32),
        (None, None) => "ended".to_string(),
    };
    eprintln!("shoal local-vm-init: {} {how}", s.name);
    let rec = record.services.entry(s.name.to_string()).or_default();
    rec.pid = None;
    rec.last_exit = Some(how);
    rec.last_exit_ms = Some(now_ms());
    rec.restarted_after_ms = None;
    if code.is_some_and(|c| s.final_codes.contains(&c)) {
        rec.given_up = true;
        s.next_start = None;
    } else {
        schedule(s);
    }
    true
}

/// Stops the agent, then dockerd: SIGTERM, then SIGKILL after a grace period.
fn shut_down(services: &mut [Service]) {
    for (name, grace) in [("agent", 5), ("dockerd", 20)] {
        let Some((pid, _)) = services.iter().find(|s| s.name == name).and_then(|s| s.pid) else {
            continue;
        };
        let p = Pid::from_raw(pid);
        let _ = kill(p, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(grace);
        while alive(pid) && Instant::now() < deadline {
            let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(p, Signal::SIGKILL);
        let _ = waitpid(p, None);
    }
}

/// A live process (not a zombie).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X") && kill(Pid::from_raw(pid), None).is_ok()
}

/// The pid a pid file names, if that process lives.
fn live_pid(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// Whether a dockerd answers `/_ping` on `socket`.
fn docker_answers(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].windows(3).any(|w| w == b"200"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_as_a_person_would_say_it() {
        let mut s = Supervision::default();
        s.services.insert(
            "agent".into(),
            ServiceRecord {
                starts: 2,
                restarts: 1,
                last_exit: Some("killed by signal 9".into()),
                restarted_after_ms: Some(100),
                ..ServiceRecord::default()
            },
        );
        s.services.insert(
            "dockerd".into(),
            ServiceRecord {
                starts: 1,
                ..ServiceRecord::default()
            },
        );
        assert_eq!(
            s.summary(),
            "agent 1 (last killed by signal 9, started again after 0.10s), dockerd 0"
        );
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_and_resets_after_a_steady_run() {
        let mut s = Service {
            name: "agent",
            argv: vec![],
            env: BTreeMap::new(),
            log: PathBuf::new(),
            pidfile: PathBuf::new(),
            writes_pidfile: false,
            pid: None,
            started: Instant::now(),
            failures: 0,
            next_start: None,
            exited_at: None,
            final_codes: AGENT_FINAL,
        };
        let mut delays = Vec::new();
        for _ in 0..7 {
            let before = Instant::now();
            schedule(&mut s);
            let d = s.next_start.map(|t| t - before).unwrap_or_default();
            delays.push(d.as_millis() / 100);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 20, 20]);
        s.started = Instant::now() - STEADY;
        schedule(&mut s);
        assert_eq!(s.failures, 1, "a steady run resets the backoff");
    }
}
