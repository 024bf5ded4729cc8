//! A real `shoal serve` for end-to-end tests: its own state directory, its own local
//! VPC (a distinct /24 and name prefix, so tests run side by side), the demo image as
//! the "baked" image directory. Dropping it deletes its clusters, stops it, and removes
//! its state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace's target directory, found from the running test binary
/// (`target/debug/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test binary");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A binary of the workspace (`shoal`, `shoal-agent`), built by `cargo build --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// An image directory holding the demo image only (`cloud-init/build-demo-image`, run
/// once per test process: it takes well under a second, and its output only changes
/// with its inputs): what the tests' coordinators treat as baked in. Kept apart from
/// `target/images`, which may also hold the 400 MB hadoop image that every coordinator
/// would otherwise load into its image template.
pub fn image_dir() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = target_dir().join("test-images").join("demo");
    BUILT.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-init/build-demo-image");
        crate::run(Command::new(script).arg(&dir));
    });
    dir
}

/// An image directory holding the hadoop image only: `cloud-init/build-hadoop-image
/// target/images` (a no-op while its inputs are unchanged; minutes the first time),
/// hard-linked into a directory of its own.
pub fn hadoop_image_dir() -> PathBuf {
    let built = target_dir().join("images");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-init/build-hadoop-image");
    crate::run(Command::new(script).arg(&built));
    let name = shoal_protocol::image_tarball_name("shoal/hadoop:1");
    let dir = target_dir().join("test-images").join("hadoop");
    std::fs::create_dir_all(&dir).expect("hadoop image dir");
    let link = dir.join(&name);
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(built.join(&name), &link).expect("link the hadoop image");
    dir
}

/// The qemu provider's base image made by `cloud-init/build-vm-image`
/// (`target/vm-image/current`; it may not exist: only the qemu tests need it).
pub fn vm_image_dir() -> PathBuf {
    target_dir().join("vm-image").join("current")
}

/// A running coordinator.
#[derive(Debug)]
pub struct TestCoordinator {
    /// Its state directory.
    pub state_dir: PathBuf,
    /// The local provider's name prefix.
    pub prefix: String,
    /// The VPC range.
    pub vpc: String,
    /// The gateway (metadata listener) address.
    pub gateway: String,
    /// The qemu provider's VPC range (a /24 of 10.219.0.0/16, the same third octet as
    /// the local VPC's).
    pub qemu_vpc: String,
    /// Environment variables every start of the server gets (cloud credentials and
    /// endpoints), on top of the test's own environment.
    pub env: Vec<(String, String)>,
    /// Started as the README's "Using it" runs it: no `--agent-bin`, no `--image-dir`
    /// (only the VPC range and name prefix that keep test runs apart).
    pub bare: bool,
    child: Option<Child>,
    log: PathBuf,
    /// The image directory it serves with.
    images: PathBuf,
    /// Held while this coordinator lives: its prefix and state directory are its own.
    lock: (std::fs::File, PathBuf),
    /// The API URL and metadata URL the CLI calls and tests use, read from `api.json`
    /// when it was started ([`TestCoordinator::pin`]).
    pinned: Option<(String, String)>,
    /// It shares another's state directory ([`TestCoordinator::beside`]): its drop
    /// stops it and leaves the clusters and the directory to that one.
    shared: bool,
}

impl TestCoordinator {
    /// Starts `shoal serve` and waits until its operator API answers.
    pub fn start() -> TestCoordinator {
        Self::start_with(&[])
    }

    /// Starts `shoal serve` with extra arguments.
    pub fn start_with(extra: &[&str]) -> TestCoordinator {
        Self::start_with_env(extra, &[])
    }

    /// Starts `shoal serve` on another image directory than [`image_dir`] (it loads
    /// the images into its template before it serves).
    pub fn start_with_images(images: &Path, extra: &[&str]) -> TestCoordinator {
        let mut c = Self::prepare(&[], false);
        c.images = images.to_path_buf();
        c.spawn(extra);
        c
    }

    /// Starts `shoal serve` as the README's "Using it" section does: the agent found
    /// beside `shoal`, the image directory the state directory's own (`<state>/images`).
    pub fn start_bare() -> TestCoordinator {
        let mut c = Self::prepare(&[], true);
        c.spawn(&[]);
        c
    }

    /// Starts `shoal serve` with extra arguments and environment variables; the
    /// variables are kept in [`TestCoordinator::env`] for every restart.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> TestCoordinator {
        let mut c = Self::prepare(env, false);
        c.spawn(extra);
        c
    }

    /// A coordinator not started yet: its prefix, VPC range and state directory.
    fn prepare(env: &[(&str, &str)], bare: bool) -> TestCoordinator {
        static N: AtomicU32 = AtomicU32::new(0);
        // The prefix (and so the state directory, namespaces and links) comes from the
        // pid modulo 1000, which another test process may share: a lock file held for
        // this coordinator's life makes it ours, so no other process removes its state
        // directory at start (as one did to a qemu test's, mid-boot).
        let (n, prefix, lock) = loop {
            let n = N.fetch_add(1, Ordering::SeqCst);
            let prefix = format!("t{}x{n}", std::process::id() % 1000);
            let path = std::env::temp_dir().join(format!("shoal-e2e-{prefix}.lock"));
            let lock = std::fs::File::create(&path).expect("test lock file");
            if lock.try_lock().is_ok() {
                break (n, prefix, (lock, path));
            }
        };
        // A /24 of 10.214.0.0/16 per coordinator (and the same one of 10.219.0.0/16 for
        // its qemu VPC), from the pid and a counter, skipping any whose gateway address
        // a coordinator of another test process holds.
        let in_use = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let first = std::process::id().wrapping_mul(7).wrapping_add(n * 31);
        let octet = (0..250)
            .map(|i| (first.wrapping_add(i * 37)) % 250 + 1)
            .find(|o| {
                !in_use.contains(&format!(" 10.214.{o}.1/"))
                    && !in_use.contains(&format!(" 10.219.{o}.1/"))
            })
            .expect("a free test VPC range in 10.214.0.0/16");
        let state_dir = std::env::temp_dir().join(format!("shoal-e2e-{prefix}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).expect("state dir");
        TestCoordinator {
            vpc: format!("10.214.{octet}.0/24"),
            qemu_vpc: format!("10.219.{octet}.0/24"),
            gateway: format!("10.214.{octet}.1"),
            prefix,
            log: state_dir.join("serve.log"),
            state_dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bare,
            child: None,
            images: image_dir(),
            lock,
            pinned: None,
            shared: false,
        }
    }

    /// Starts a second coordinator on `other`'s state directory (so with its CA,
    /// operator token, credentials and sim provider records: several coordinators on
    /// one PostgreSQL database), logging to a file of its own. Both are pinned: the CLI
    /// calls of each go to its own API, not to whichever wrote `api.json` last.
    pub fn beside(
        other: &mut TestCoordinator,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestCoordinator {
        other.pin();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let lock_path =
            std::env::temp_dir().join(format!("shoal-e2e-{}-beside{n}.lock", other.prefix));
        let lock = std::fs::File::create(&lock_path).expect("test lock file");
        let mut c = TestCoordinator {
            state_dir: other.state_dir.clone(),
            prefix: other.prefix.clone(),
            vpc: other.vpc.clone(),
            gateway: other.gateway.clone(),
            qemu_vpc: other.qemu_vpc.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bare: other.bare,
            child: None,
            log: other.state_dir.join(format!("serve-beside{n}.log")),
            images: other.images.clone(),
            lock: (lock, lock_path),
            pinned: None,
            shared: true,
        };
        c.spawn(extra);
        c.pin();
        c
    }

    /// Pins this coordinator's CLI calls to the API it serves now.
    pub fn pin(&mut self) {
        let info: Value = serde_json::from_slice(
            &std::fs::read(self.state_dir.join("api.json")).expect("api.json"),
        )
        .expect("api.json is JSON");
        let url = |k: &str| info[k].as_str().expect("api.json URLs").to_string();
        self.pinned = Some((url("url"), url("metadata_url")));
    }

    /// The metadata API base URL of a pinned coordinator.
    pub fn pinned_metadata_url(&self) -> Option<&str> {
        self.pinned.as_ref().map(|(_, m)| m.as_str())
    }

    /// (Re)starts the server process on the same state, with [`TestCoordinator::env`].
    pub fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("serve log");
        let log2 = log.try_clone().expect("serve log");
        let _ = std::fs::remove_file(self.state_dir.join("api.json"));
        let mut cmd = Command::new(bin("shoal"));
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("serve")
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--local-vpc", &self.vpc, "--local-prefix", &self.prefix])
            .args(["--qemu-vpc", &self.qemu_vpc]);
        if !self.bare {
            cmd.arg("--qemu-image")
                .arg(vm_image_dir())
                .arg("--agent-bin")
                .arg(bin("shoal-agent"))
                .arg("--image-dir")
                .arg(&self.images);
        }
        let child = cmd
            .args(extra)
            .env("RUST_LOG", "info")
            // After the default, so a test may ask for another level (RUST_LOG=debug).
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("start shoal serve");
        self.child = Some(child);
        let start = Instant::now();
        while !self.state_dir.join("api.json").exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("shoal serve exited ({status}): {}", self.log_text());
            }
            // It loads the image tarballs into its template first: seconds for the
            // demo image, more for the hadoop one on a busy machine.
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "shoal serve did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal to the server and waits for it (SIGKILL simulates a crash).
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
            // A stopped process (SIGSTOP, fault tests) acts on TERM only once continued.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Waits (up to `timeout`) until a coordinator started with `SHOAL_FAULT_STOP_AT`
    /// reached `point` and stopped itself there, then kills it with SIGKILL: a crash at
    /// exactly that point (see `coordinator/src/fault.rs`).
    pub fn kill_at(&mut self, point: &str, timeout: Duration) {
        let marker = self.state_dir.join(format!("fault-{point}"));
        let start = Instant::now();
        while !marker.exists() {
            assert!(
                start.elapsed() < timeout,
                "the coordinator never reached {point}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The marker is written just before SIGSTOP; wait until it took effect, so the
        // kill lands at the point and not a little after it.
        let pid = self.pid().expect("running");
        let start = Instant::now();
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if state == Some("T") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not stopped: {stat}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop("KILL");
    }

    /// Runs the CLI against this coordinator.
    pub fn shoal(&self, args: &[&str]) -> Output {
        self.cli(args).output().expect("run shoal")
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("shoal"));
        if let Some((api, _)) = &self.pinned {
            cmd.env("SHOAL_COORDINATOR", api);
        }
        cmd.arg("--state-dir").arg(&self.state_dir).args(args);
        cmd
    }

    /// Runs the CLI in the background, its output discarded: when a crash point comes
    /// right after a request is recorded, the coordinator may stop before it answers.
    pub fn shoal_in_background(&self, args: &[&str]) -> std::process::Child {
        self.cli(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run shoal")
    }

    /// Runs the CLI, panicking unless it succeeds; returns stdout.
    pub fn shoal_ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `shoal cluster show NAME --json`.
    pub fn show(&self, name: &str) -> Value {
        serde_json::from_str(&self.shoal_ok(&["cluster", "show", name, "--json"]))
            .expect("show --json is JSON")
    }

    /// Waits until the cluster's state is `state` (panics on timeout).
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.show(name);
            if v["state"] == state {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "cluster {name} not {state} after {timeout:?}: {v:#}\nserver log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the cluster is CREATING with its plan published: the end state on a
    /// cloud where nobody boots the VMs (moto, the fake ARM), so no agent reports.
    /// Panics if it leaves creation or takes longer than `timeout`.
    pub fn wait_plan(&self, name: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.show(name);
            if v["state"] == "CREATING" && v["generation"].as_u64().unwrap_or(0) >= 1 {
                return v;
            }
            assert!(
                v["state"] == "CREATING" || v["state"] == "REQUESTED",
                "cluster {name} left creation: {v:#}\nserver log:\n{}",
                self.log_text()
            );
            assert!(
                start.elapsed() < timeout,
                "cluster {name} has no plan after {timeout:?}: {v:#}\nserver log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET /metadata/v1/{key}` on the metadata listener (the local VPC gateway, port
    /// 8787): the status and the body. Over TLS with the coordinator's CA (curl), or
    /// plain HTTP for a coordinator started with `--insecure-http`.
    pub fn metadata(&self, key: &str) -> (u16, String) {
        let ca = self.state_dir.join("ca.pem");
        let info: Value = serde_json::from_slice(
            &std::fs::read(self.state_dir.join("api.json")).expect("api.json"),
        )
        .expect("api.json is JSON");
        let tls = info["metadata_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://"));
        if !tls {
            let url = format!("http://{}:8787/metadata/v1/{key}", self.gateway);
            return crate::http_request("GET", &url, &[], "")
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        }
        let url = format!("https://{}:8787/metadata/v1/{key}", self.gateway);
        let out = Command::new("curl")
            .arg("-sS")
            .arg("--cacert")
            .arg(&ca)
            .args(["-w", "\n%{http_code}", &url])
            .output()
            .unwrap_or_else(|e| panic!("curl {url}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GET {url}: {}", String::from_utf8_lossy(&out.stderr)));
        (code, body.to_string())
    }

    /// Plays a node's agent on a cloud where nobody boots the VMs (moto, the fake ARM):
    /// PUTs a report of `phase` on the cluster's current generation to the metadata API,
    /// with the node's own key and token, which `credentials` reads out of its user-data
    /// (`shoal user-data`). Returns the HTTP status.
    pub fn report_as(
        &self,
        cluster: &str,
        node: &str,
        phase: &str,
        credentials: impl Fn(&[u8]) -> (String, String),
    ) -> u16 {
        let user_data = self.shoal_ok(&["user-data", cluster, "--node", node]);
        let (key, token) = credentials(user_data.as_bytes());
        let generation = self.show(cluster)["generation"].as_u64().unwrap_or(0);
        let body = serde_json::json!({
            "phase": phase,
            "generation": generation,
            "agent_version": "e2e",
        })
        .to_string();
        let url = format!(
            "https://{}:8787{}",
            self.gateway,
            shoal_protocol::contract::status_path(&key, node)
        );
        let out = Command::new("curl")
            .arg("-sS")
            .arg("--cacert")
            .arg(self.state_dir.join("ca.pem"))
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "Content-Type: application/json", "-d", &body, &url])
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "PUT status of {node}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// [`TestCoordinator::report_as`] for every node of `cluster`, panicking unless each
    /// is accepted (204).
    pub fn report_all(
        &self,
        cluster: &str,
        phase: &str,
        credentials: impl Fn(&[u8]) -> (String, String),
    ) {
        for n in crate::vm::nodes(&self.show(cluster)) {
            let id = n["id"].as_str().expect("id");
            assert_eq!(
                self.report_as(cluster, id, phase, &credentials),
                204,
                "{id}"
            );
        }
    }

    /// Waits until the cluster's plan generation is at least `generation`.
    pub fn wait_generation(&self, name: &str, generation: u64, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.show(name);
            if v["generation"].as_u64().unwrap_or(0) >= generation {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "cluster {name} has no generation {generation} after {timeout:?}: {v:#}\nserver log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The operator token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// The operator API base URL.
    pub fn api_url(&self) -> String {
        let v: Value = serde_json::from_slice(
            &std::fs::read(self.state_dir.join("api.json")).expect("api.json"),
        )
        .expect("api.json is JSON");
        v["url"].as_str().expect("url").to_string()
    }

    /// A directory for a test's blueprint files (and the files they name), in the
    /// coordinator's state directory, so that it goes with it.
    pub fn blueprint_dir(&self) -> PathBuf {
        let dir = self.state_dir.join("blueprints");
        std::fs::create_dir_all(&dir).expect("blueprint dir");
        dir
    }

    /// `cluster create NAME --nodes 1 --blueprint PATH`, which must be refused: the
    /// CLI's message.
    pub fn create_refused(&self, name: &str, path: &str) -> String {
        let out = self.shoal(&[
            "cluster",
            "create",
            name,
            "--nodes",
            "1",
            "--blueprint",
            path,
        ]);
        assert!(
            !out.status.success(),
            "cluster {name} ({path}) was accepted"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// No cluster is recorded and nothing of one is left at the local provider.
    pub fn assert_nothing_made(&self) {
        let list: Value = serde_json::from_str(&self.shoal_ok(&["cluster", "list", "--json"]))
            .expect("cluster list --json");
        assert_eq!(list, serde_json::json!([]));
        assert_eq!(self.leftovers(true), Vec::<String>::new());
    }

    /// Runs `docker` against a node's dockerd (from `show --json`).
    pub fn docker(&self, node: &Value, args: &[&str]) -> Output {
        let sock = node["docker_socket"].as_str().expect("docker_socket");
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{sock}"))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Everything this coordinator's local and qemu providers may leave behind:
    /// namespaces with its prefix, processes in them or naming its state dir (dockerds,
    /// agents, qemus), taps on the qemu VPC bridge, VM files (overlays, seeds), mounts
    /// under its state dir. Empty when clean.
    pub fn leftovers(&self, cluster_only: bool) -> Vec<String> {
        let mut out = Vec::new();
        let pattern = format!("{}-", self.prefix);
        let vpcs = [
            format!("{}-vpc", self.prefix),
            format!("{}-qvpc", self.prefix),
        ];
        if let Ok(d) = std::fs::read_dir("/run/netns") {
            for e in d.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&pattern) && !(cluster_only && vpcs.contains(&n)) {
                    out.push(format!("namespace {n}"));
                }
            }
        }
        let qvpc = Path::new("/run/netns").join(&vpcs[1]);
        if qvpc.exists() {
            let links = Command::new("ip")
                .args(["-n", &vpcs[1], "-o", "link", "show", "type", "tun"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for l in links.lines() {
                if let Some(name) = l.split(':').nth(1) {
                    out.push(format!("tap {} in {}", name.trim(), vpcs[1]));
                }
            }
        }
        let vms = self.state_dir.join("qemu").join("vms");
        for cluster in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(cluster.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(format!("VM files {}", f.path().display()));
            }
            if std::fs::read_dir(cluster.path()).is_ok() {
                out.push(format!("VM directory {}", cluster.path().display()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.state_dir.display().to_string();
        for l in mounts.lines() {
            if let Some(m) = l.split(' ').nth(4) {
                if m.starts_with(&dir) {
                    out.push(format!("mount {m}"));
                }
            }
        }
        if let Ok(d) = std::fs::read_dir("/proc") {
            for e in d.flatten() {
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmd.contains(&dir) && !cmd.contains(" serve ") && !cmd.contains(" cluster ") {
                    let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                    if !stat.contains(") Z ") {
                        out.push(format!(
                            "process {}: {cmd}",
                            e.file_name().to_string_lossy()
                        ));
                    }
                }
            }
        }
        if !cluster_only {
            for link in &vpcs {
                if Path::new("/sys/class/net").join(link).exists() {
                    out.push(format!("link {link}"));
                }
            }
        }
        out
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if self.shared {
            self.stop("TERM");
            let _ = std::fs::remove_file(&self.lock.1);
            return;
        }
        if self.child.is_none() {
            self.spawn(&[]);
            if self.pinned.is_some() {
                self.pin();
            }
        }
        if let Ok(out) = std::panic::catch_unwind(|| self.shoal(&["cluster", "list", "--json"])) {
            let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for c in list {
                if let Some(name) = c["name"].as_str() {
                    if c["state"] != "DELETED" {
                        let _ = self.shoal(&["cluster", "delete", name, "--wait"]);
                    }
                }
            }
        }
        self.stop("TERM");
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
        // Removed while still held: a process that opens the path afterwards makes a
        // new file and locks that.
        let _ = std::fs::remove_file(&self.lock.1);
    }
}
