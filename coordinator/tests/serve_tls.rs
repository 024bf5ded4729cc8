//! `shoal serve` itself: TLS on a non-loopback operator API (the CLI trusts only the
//! coordinator's CA), and options that contradict TLS refused before anything starts.
//! Runs the real binary; as root its local provider makes a VPC of its own (unique
//! prefix and range) and removes it at SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

struct Serve {
    child: Child,
    dir: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn serve(dir: &Path, extra: &[&str]) -> Command {
    // A distinct local VPC per test (they run in parallel) and per process.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n =
        (std::process::id() * 2 + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)) % 200 + 20;
    let mut c = Command::new(SHOAL);
    c.arg("--state-dir")
        .arg(dir)
        .arg("serve")
        .args(["--metadata-listen", "127.0.0.1:0"])
        .args(["--local-prefix", &format!("st{n}")])
        .args(["--local-vpc", &format!("10.215.{n}.0/24")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn start(dir: &Path, extra: &[&str]) -> Serve {
    let log = std::fs::File::create(dir.join("serve.log")).expect("log");
    let child = serve(dir, extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let s = Serve {
        child,
        dir: dir.to_path_buf(),
    };
    let t = Instant::now();
    while !dir.join("api.json").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "serve did not start: {}",
            std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

#[test]
fn a_non_loopback_operator_api_is_served_over_tls_with_the_ca() {
    let dir = state_dir("api");
    let _s = start(&dir, &["--api-listen", "0.0.0.0:0"]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("api.json")).expect("api.json"))
            .expect("json");
    let url = info["url"].as_str().expect("url").to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert!(info["metadata_url"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://")));
    let key_mode = std::fs::metadata(dir.join("ca-key.pem"))
        .expect("ca-key.pem")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);

    // The CLI finds the API and its CA through the state directory.
    let out = Command::new(SHOAL)
        .arg("--state-dir")
        .arg(&dir)
        .args(["cluster", "list", "--json"])
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From elsewhere, without the CA: refused, saying what to do.
    let token = std::fs::read_to_string(dir.join("token")).expect("token");
    let elsewhere = state_dir("cli");
    let out = Command::new(SHOAL)
        .arg("--state-dir")
        .arg(&elsewhere)
        .args(["--coordinator", &url, "cluster", "list"])
        .env("SHOAL_TOKEN", token.trim())
        .env_remove("SHOAL_CA_CERT")
        .output()
        .expect("cli");
    // Exit 3: no coordinator it can talk to (docs/cli-exit-codes.md).
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SHOAL_CA_CERT"), "{err}");
    // With the CA given: served.
    let out = Command::new(SHOAL)
        .arg("--state-dir")
        .arg(&elsewhere)
        .args(["--coordinator", &url, "cluster", "list"])
        .env("SHOAL_TOKEN", token.trim())
        .env("SHOAL_CA_CERT", dir.join("ca.pem"))
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&elsewhere);

    // The web console on the same listener, over the same TLS: its session cookie is
    // `Secure`, with the `__Host-` prefix.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["-H", &format!("Origin: {url}")])
        .args(["--data-urlencode", &format!("token={}", token.trim())])
        .arg(format!("{url}/console/login"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 303"), "{head}");
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie.contains("__host-shoal-session="), "{cookie}");
    for part in ["; secure", "; httponly", "; samesite=strict", "; path=/"] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
}

#[test]
fn plain_http_is_only_served_when_asked_for() {
    let dir = state_dir("adv");
    let out = serve(&dir, &["--advertise-url", "http://203.0.113.5:8787"])
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-http"), "{err}");
    assert!(!dir.join("api.json").exists());

    // With --insecure-http: plain HTTP, and no CA is made for a loopback operator API.
    let _s = start(
        &dir,
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--advertise-url",
            "http://203.0.113.5:8787",
        ],
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("api.json")).expect("api.json"))
            .expect("json");
    assert!(info["metadata_url"]
        .as_str()
        .is_some_and(|u| u.starts_with("http://")));
    assert!(!dir.join("ca-key.pem").exists());
}
