//! Helpers shared by Shoal's privileged tests: throwaway network namespaces, and the
//! check that a privileged test really has what it needs.
//!
//! Privileged tests are marked `#[ignore = "needs root …"]`, so a plain `cargo test`
//! reports them as ignored (skipped), never as passed. `scripts/test` runs them with
//! `--include-ignored` where root and the tools are present; once asked to run, a test
//! whose prerequisites are missing fails loudly through [`require_privileges`].

pub mod coordinator;
pub mod dockerd;
pub mod fake_arm;
pub mod hadoop;
pub mod moto;
pub mod postgres;
pub mod vm;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Panics (failing the test) unless this process is root and `tools` are on PATH.
pub fn require_privileges(tools: &[&str]) {
    assert!(
        nix_is_root(),
        "this privileged test needs root: run it through scripts/test as root"
    );
    for tool in tools {
        assert!(
            which(tool).is_some(),
            "this privileged test needs `{tool}` on PATH (scripts/test installs it)"
        );
    }
}

fn nix_is_root() -> bool {
    // `id -u` keeps this crate free of libc bindings.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One plain HTTP/1.0 request (`Connection: close`) to an `http://HOST:PORT/…` URL on a
/// test server (moto, a coordinator's metadata API): returns the status and the body.
/// A few lines of `std`, so the harness needs no HTTP client crate.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("{url}: only http:// URLs")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("{url}: not an HTTP answer: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Panics unless `cloud-init schema` accepts `doc` (user-data as a VM receives it,
/// gzip-compressed or not); `what` names it in the message.
pub fn check_cloud_init_schema(doc: &[u8], what: &str) {
    let dir = std::env::temp_dir();
    let plain = if doc.starts_with(&[0x1f, 0x8b]) {
        let gz = dir.join(format!("{}.gz", unique_name("ud")));
        std::fs::write(&gz, doc).expect("write user-data");
        let out = run(Command::new("gzip").arg("-dc").arg(&gz));
        let _ = std::fs::remove_file(&gz);
        out.stdout
    } else {
        doc.to_vec()
    };
    let file = dir.join(format!("{}.yaml", unique_name("ud")));
    std::fs::write(&file, &plain).expect("write user-data");
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .expect("run cloud-init schema");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "cloud-init schema refused the user-data of {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A unique, short name for a throwaway object: `{prefix}{pid % 10000}x{n}`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `/run/netns/<unique name>` with its loopback up.
    pub fn new(prefix: &str) -> TestNetns {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = TestNetns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path, for `setns` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace (through `nsenter --net=`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `ip ARGS` inside the namespace, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(self.command("ip").args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ip -j ARGS` inside the namespace and parses the JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        if text.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {text}"))
    }

    /// Runs `bridge -j ARGS` inside the namespace and parses the JSON.
    pub fn bridge_json(&self, args: &[&str]) -> serde_json::Value {
        let out = run(self.command("bridge").arg("-j").args(args));
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bridge -j {args:?}: {e}: {text}"))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins two namespaces with a veth pair named `eth0` on both sides, with the given
/// addresses (CIDR notation), both up: a two-VM "underlay".
pub fn link_pair(a: &TestNetns, a_cidr: &str, b: &TestNetns, b_cidr: &str) {
    let peer = unique_name("vp");
    let here = unique_name("vh");
    run(Command::new("ip").args(["link", "add", &here, "type", "veth", "peer", "name", &peer]));
    run(Command::new("ip").args(["link", "set", &here, "netns", a.name()]));
    run(Command::new("ip").args(["link", "set", &peer, "netns", b.name()]));
    for (ns, dev, cidr) in [(a, &here, a_cidr), (b, &peer, b_cidr)] {
        ns.ip(&["link", "set", dev, "name", "eth0"]);
        ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
}
