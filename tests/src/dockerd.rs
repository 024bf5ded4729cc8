//! A real, throwaway Docker engine inside a [`TestNetns`], for privileged tests.
//!
//! Each [`TestDockerd`] has its own data root, exec root, pidfile and socket, and so its
//! own containerd; its bridges and iptables rules live in the test's namespace. It is
//! started with `nsenter --net=` (not `ip netns exec`, which remounts `/sys` and makes
//! dockerd fail with "Devices cgroup isn't mounted"). Dropping it removes its
//! containers, stops the engine, kills anything still running from its directories,
//! unmounts what it left mounted and deletes its directories.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{run, unique_name, TestNetns};

/// Where data roots and logs of test engines live (on disk: overlay2 needs a real
/// filesystem under it).
const STATE_BASE: &str = "/var/lib/shoal-test";
/// How long the engine may take to answer `/_ping` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A dockerd running inside a test namespace; torn down completely when dropped.
#[derive(Debug)]
pub struct TestDockerd {
    netns: String,
    state_dir: PathBuf,
    exec_root: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl TestDockerd {
    /// Starts a dockerd in `ns` and waits until it answers `/_ping`. Panics (failing the
    /// test) with the end of its log if it does not come up.
    pub fn start(ns: &TestNetns) -> TestDockerd {
        let name = unique_name("sd");
        let state_dir = Path::new(STATE_BASE).join(&name);
        // Unix socket paths are limited to 108 bytes: keep the exec root short.
        let exec_root = PathBuf::from(format!("/run/{name}"));
        let socket = exec_root.join("d.sock");
        let data_root = state_dir.join("data");
        for dir in [&data_root, &exec_root] {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let log_path = state_dir.join("dockerd.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone {}: {e}", log_path.display()));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("dockerd")
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--iptables=true")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd: {e}"));
        let mut d = TestDockerd {
            netns: ns.name().to_string(),
            state_dir,
            exec_root,
            socket,
            child,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(&self.socket) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dockerd in namespace {} exited ({status}) before answering:\n{}",
                    self.netns,
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd in namespace {} did not answer /_ping on {} within {START_TIMEOUT:?}:\n{}",
                    self.netns,
                    self.socket.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The engine's address for clients: `unix:///run/…/d.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// dockerd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directories this engine owns (data root and logs; exec root).
    pub fn dirs(&self) -> [&Path; 2] {
        [&self.state_dir, &self.exec_root]
    }

    /// A `docker -H <this engine>` command.
    pub fn docker_command(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(self.host());
        c
    }

    /// Runs `docker -H <this engine> ARGS`, panicking on failure; returns stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = run(self.docker_command().args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last `lines` lines of dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.state_dir.join("dockerd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Creates the overlay's Docker network as the agent's overlay module does on a
    /// node with slice 10.240.1.0/24: network `shoal`, bridge `shoal0`, subnet
    /// 10.240.0.0/16, gateway 10.240.1.1.
    pub fn create_shoal_network(&self) {
        self.docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            "10.240.0.0/16",
            "--ip-range",
            "10.240.1.0/24",
            "--gateway",
            "10.240.1.1",
            "-o",
            "com.docker.network.bridge.name=shoal0",
            "shoal",
        ]);
    }

    fn remove_containers(&self) {
        let Some(out) = output_within(
            self.docker_command().args(["ps", "-aq"]),
            Duration::from_secs(20),
        ) else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return;
        }
        let _ = output_within(
            self.docker_command().args(["rm", "-f"]).args(&ids),
            Duration::from_secs(60),
        );
    }

    fn stop_engine(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        // containerd and its shims outlive a killed dockerd: find them by our
        // directories in their command lines (unique to this engine).
        let markers = [self.exec_root.clone(), self.state_dir.clone()];
        let leftovers = processes_mentioning(&markers);
        for pid in &leftovers {
            signal(*pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_mentioning(&markers).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in processes_mentioning(&markers) {
            signal(pid, "KILL");
        }
    }

    fn unmount_and_delete(&self) {
        for dir in self.dirs() {
            // Deepest first, so nested mounts come off before their parents.
            let mut points = mounts_under(dir);
            points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
            for point in points {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&point)
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for TestDockerd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.remove_containers();
        }
        self.stop_engine();
        self.unmount_and_delete();
    }
}

/// Whether the engine at `socket` answers `GET /_ping` with 200.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200")
}

/// Runs a command and returns its output, or `None` if it fails to start or runs past
/// `limit` (then it is killed).
fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Live (non-zombie) processes whose command line mentions one of `markers`.
pub fn processes_mentioning(markers: &[PathBuf]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let markers: Vec<String> = markers
        .iter()
        .map(|m| m.to_string_lossy().into_owned())
        .collect();
    let own = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            if state.starts_with('Z') || state.is_empty() {
                return false;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            markers.iter().any(|m| cmdline.contains(m.as_str()))
        })
        .collect()
}

/// Mount points at or below `dir`, from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require_privileges;

    /// A minimal image made with `docker import` from busybox, to give the engine a
    /// running container whose teardown the test can check.
    fn import_busybox(d: &TestDockerd, tag: &str) {
        let dir = std::env::temp_dir().join(unique_name("bbroot"));
        std::fs::create_dir_all(dir.join("bin")).expect("rootfs dir");
        let busybox = crate::which("busybox").expect("busybox on PATH");
        std::fs::copy(&busybox, dir.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))
                .expect("applet link");
        }
        let archive = dir.with_extension("tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&archive)
            .arg("."));
        let out = d
            .docker_command()
            .arg("import")
            .arg(&archive)
            .arg(tag)
            .output()
            .expect("docker import");
        let _ = std::fs::remove_file(&archive);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "needs root, dockerd and docker"]
    fn dockerd_starts_in_its_namespace_and_leaves_nothing_behind() {
        require_privileges(&["ip", "nsenter", "dockerd", "docker", "busybox", "tar"]);
        let ns = TestNetns::new("tdk");
        let d = TestDockerd::start(&ns);
        assert!(d.host().starts_with("unix:///run/"));

        let version = d.docker(&["info", "--format", "{{.ServerVersion}}"]);
        assert!(!version.trim().is_empty(), "docker info printed no version");
        // Its default bridge lives in the test namespace, not on the host.
        let links = ns.ip_json(&["link", "show", "docker0"]);
        assert_eq!(links.as_array().map(Vec::len), Some(1), "{links}");

        import_busybox(&d, "tdk/busybox:1");
        let id = d.docker(&["run", "-d", "tdk/busybox:1", "/bin/sleep", "600"]);
        assert!(!id.trim().is_empty());
        assert!(!mounts_under(d.dirs()[0]).is_empty(), "no overlay mount");

        let pid = d.pid();
        let dirs: Vec<PathBuf> = d.dirs().iter().map(|p| p.to_path_buf()).collect();
        drop(d);

        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "dockerd {pid} still runs"
        );
        assert_eq!(
            processes_mentioning(&dirs),
            Vec::<u32>::new(),
            "leftover processes"
        );
        for dir in &dirs {
            assert_eq!(mounts_under(dir), Vec::<PathBuf>::new(), "leftover mounts");
            assert!(!dir.exists(), "{} still exists", dir.display());
        }
    }
}
