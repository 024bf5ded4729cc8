//! Rendered user-data against Debian's real cloud-init: `cloud-init schema
//! --config-file` must accept every rendering (plain and gzipped, with and without a CA
//! certificate, with awkward characters in every value), cloud-init's own YAML reader
//! must read back exactly the values we wrote, and a deliberately broken document must
//! fail the same check (so the check is known to be able to fail).
//!
//! Run with `cargo test -p shoal --test userdata_schema -- --include-ignored`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shoal::providers::aws::USER_DATA_LIMIT as EC2_LIMIT;
use shoal::userdata;
use shoal_protocol::{AgentConfig, AGENT_CONFIG_PATH};

/// Debian's interpreter, which has cloud-init's Python package (a PATH `python3` may be
/// another one, e.g. pyenv's).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(shoal_e2e::unique_name("shoal-ud-"));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn schema(path: &Path) -> Output {
    Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(path)
        .output()
        .expect("run cloud-init schema")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_valid(path: &Path) {
    let out = schema(path);
    assert!(
        out.status.success(),
        "cloud-init schema refused {}: {}",
        path.display(),
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Valid cloud-config"),
        "{}",
        text(&out)
    );
}

fn pem() -> String {
    // Shaped like a real certificate (the schema check does not parse it).
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for i in 0..12 {
        s.push_str(&format!(
            "MIIBszCCAVmgAwIBAgIUX{i:02}qAbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/AB\n"
        ));
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

fn configs() -> Vec<(&'static str, AgentConfig)> {
    let base = AgentConfig {
        metadata_url: "https://10.213.0.1:8787".into(),
        cluster_key: "3f9d2c7a1b4e8f6051a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60789".into(),
        node_id: "node-0".into(),
        node_token: "5b1c9e0d7f2a4e6b8c0d2f4a6b8c0e2f".into(),
        ca_cert_pem: None,
        deadline_secs: 900,
    };
    vec![
        ("no-ca", base.clone()),
        (
            "with-ca",
            AgentConfig {
                ca_cert_pem: Some(pem()),
                ..base.clone()
            },
        ),
        (
            "awkward",
            AgentConfig {
                metadata_url: "https://h:1/p?a=\"1\"&b='2' # no comment: here".into(),
                cluster_key: "colon: backslash\\ tab\t cr\r lf\n end".into(),
                node_id: "- [a, b] {c: d} | > & * ! % @ `".into(),
                node_token: "\u{0}\u{7}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}é😀\"'"
                    .into(),
                ca_cert_pem: Some(format!("{}\n\n  indented line\n", pem())),
                deadline_secs: u64::MAX,
            },
        ),
    ]
}

#[test]
#[ignore = "needs cloud-init"]
fn rendered_documents_pass_cloud_init_schema() {
    shoal_e2e::require_privileges(&["cloud-init"]);
    let dir = TempDir::new();
    for (name, cfg) in configs() {
        let path = dir.write(&format!("{name}.yaml"), userdata::render(&cfg).as_bytes());
        assert_valid(&path);
    }
}

/// Schema validity alone would pass a document whose values YAML reads differently
/// from what we meant; this reads each rendering with cloud-init's own YAML loader and
/// compares every value.
#[test]
#[ignore = "needs cloud-init"]
fn cloud_init_reads_back_exactly_what_was_written() {
    shoal_e2e::require_privileges(&["cloud-init"]);
    let dir = TempDir::new();
    let script = r#"
import json, sys
from cloudinit import safeyaml
doc = safeyaml.load(open(sys.argv[1], "rb").read())
entry = [e for e in doc["write_files"] if e["path"] == sys.argv[2]]
assert len(entry) == 1, entry
e = entry[0]
print(json.dumps({
    "permissions": e["permissions"],
    "owner": e["owner"],
    "config": json.loads(e["content"]),
    "runcmd": doc["runcmd"],
}))
"#;
    for (name, cfg) in configs() {
        let path = dir.write(&format!("{name}.yaml"), userdata::render(&cfg).as_bytes());
        let out = shoal_e2e::run(
            Command::new(SYSTEM_PYTHON)
                .arg("-c")
                .arg(script)
                .arg(&path)
                .arg(AGENT_CONFIG_PATH),
        );
        let seen: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("python printed JSON");
        assert_eq!(seen["permissions"], "0600", "{name}");
        assert_eq!(seen["owner"], "root:root", "{name}");
        assert_eq!(
            seen["config"],
            serde_json::to_value(&cfg).expect("serializes"),
            "{name}: cloud-init read other values than were written"
        );
        assert_eq!(
            seen["runcmd"],
            serde_json::json!([[
                "systemctl",
                "enable",
                "--now",
                "--no-block",
                "shoal-agent.service"
            ]]),
            "{name}"
        );
    }
}

#[test]
#[ignore = "needs cloud-init"]
fn broken_documents_fail_the_same_check() {
    shoal_e2e::require_privileges(&["cloud-init"]);
    let dir = TempDir::new();
    let good = userdata::render(&configs()[1].1);

    // write_files of the wrong type.
    let wrong_type = dir.write("wrong-type.yaml", b"#cloud-config\nwrite_files: \"nope\"\n");
    let out = schema(&wrong_type);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(text(&out).contains("write_files"), "{}", text(&out));

    // Our document with permissions as an (octal-looking) integer: YAML reads 0600 as
    // 384, which the schema refuses; this is why the renderer quotes it.
    let unquoted = good.replace("permissions: \"0600\"", "permissions: 0600");
    assert_ne!(unquoted, good);
    let out = schema(&dir.write("unquoted.yaml", unquoted.as_bytes()));
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(text(&out).contains("permissions"), "{}", text(&out));

    // Our document with its block indentation broken: not YAML at all.
    let broken = good.replace("    content: |\n      {", "    content: |\n{");
    assert_ne!(broken, good);
    let out = schema(&dir.write("broken.yaml", broken.as_bytes()));
    assert!(!out.status.success(), "accepted: {}", text(&out));
}

/// A rendering too large for EC2 plain goes gzipped; cloud-init's own user-data
/// processor must inflate it, see a cloud-config, and that cloud-config must be valid.
#[test]
#[ignore = "needs cloud-init"]
fn gzipped_rendering_is_read_by_cloud_init() {
    shoal_e2e::require_privileges(&["cloud-init"]);
    let dir = TempDir::new();
    let mut big = pem();
    while big.len() < EC2_LIMIT + 4096 {
        big.push_str(&pem());
    }
    let cfg = AgentConfig {
        ca_cert_pem: Some(big),
        ..configs()[2].1.clone()
    };
    let plain = userdata::render(&cfg);
    assert!(plain.len() > EC2_LIMIT);
    let bytes = userdata::render_for("aws", &cfg, Some(EC2_LIMIT)).expect("fits gzipped");
    assert!(bytes.len() <= EC2_LIMIT && bytes.starts_with(&[0x1f, 0x8b]));
    let gz = dir.write("user-data.gz", &bytes);

    // What cloud-init does with user-data it fetched: convert, inflate, split parts.
    let script = r#"
import sys
from cloudinit import helpers, user_data
msg = user_data.UserDataProcessor(helpers.Paths({})).process(open(sys.argv[1], "rb").read())
parts = [p for p in msg.walk() if p.get_content_maintype() != "multipart"]
assert len(parts) == 1, [p.get_content_type() for p in parts]
sys.stderr.write(parts[0].get_content_type())
sys.stdout.buffer.write(parts[0].get_payload(decode=True))
"#;
    let out = shoal_e2e::run(Command::new(SYSTEM_PYTHON).arg("-c").arg(script).arg(&gz));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "text/cloud-config");
    assert_eq!(
        out.stdout,
        plain.as_bytes(),
        "cloud-init inflated other bytes"
    );
    assert_valid(&dir.write("inflated.yaml", &out.stdout));
    assert_eq!(userdata::agent_config(&bytes).expect("reads back"), cfg);
}
