//! A real `moto_server` for the AWS tests, in strict-auth mode: every EC2 request is
//! SigV4-checked against an IAM user's key, so a bad signature fails as on AWS.
//!
//! Used by the provider tests (`coordinator/tests/aws_moto.rs`) and the end-to-end
//! tests through the coordinator (`tests/tests/cloud_aws.rs`). Each test starts its own
//! server on a free loopback port, from the venv that `tests/moto/setup` makes
//! (`$SHOAL_MOTO_VENV`, else `target/moto-venv`; [`Moto::start`] runs the script,
//! which does nothing when the pinned moto is already there).
//!
//! This module talks to moto only over plain HTTP on loopback
//! ([`crate::http_request`]), so the harness needs no HTTP or signing crate: the IAM calls that set up the
//! test user are made while moto still has auth off (it reads only the service name
//! from the `Authorization` header then), and everything after that is the test's
//! business, with a real SigV4 client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// Where the moto venv lives.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("SHOAL_MOTO_VENV") {
        return PathBuf::from(v);
    }
    repo().join("target/moto-venv")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// A `moto_server` child process; killed on drop, the end of its log printed if the
/// test failed.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    url: String,
    log: PathBuf,
}

/// An IAM user's access key.
#[derive(Debug, Clone)]
pub struct AccessKey {
    /// `AKIA…`.
    pub id: String,
    /// The secret.
    pub secret: String,
}

impl Moto {
    /// Installs moto if needed, starts it with AMI validation on (moto accepts any AMI
    /// id otherwise) and auth off, and waits until it answers.
    pub fn start() -> Moto {
        crate::require_privileges(&["python3"]);
        // The script is idempotent (it checks the installed version first); the lock
        // keeps parallel tests of one binary from installing into the venv at once.
        static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        {
            let _one_at_a_time = SETUP.lock().unwrap_or_else(|p| p.into_inner());
            crate::run(Command::new(repo().join("tests/moto/setup")).arg(venv()));
        }
        let server = venv().join("bin/moto_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("moto")));
        let out = std::fs::File::create(&log).expect("moto log");
        let err = out.try_clone().expect("moto log");
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            // Auth starts off so the test can create its IAM user; `strict_auth` then
            // turns checking on for every request that follows.
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(moto.request("GET", "/moto-api/", &[], ""), Ok((200, _))) {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start: see {}",
                moto.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates IAM user `shoal-test` allowed `ec2:*`, with an access key, then switches
    /// moto to checking every request (moto's `INITIAL_NO_AUTH_ACTION_COUNT`, set to 0
    /// through its control API). Starting moto with checking on would leave no way to
    /// create the user: moto has no root key.
    pub fn strict_auth(&self) -> AccessKey {
        let user = "shoal-test";
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#;
        self.iam(&[("Action", "CreateUser"), ("UserName", user)]);
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "ec2-all"),
            ("PolicyDocument", policy),
        ]);
        let body = self.iam(&[("Action", "CreateAccessKey"), ("UserName", user)]);
        let key = AccessKey {
            id: xml_text(&body, "AccessKeyId").unwrap_or_else(|| panic!("no key id: {body}")),
            secret: xml_text(&body, "SecretAccessKey")
                .unwrap_or_else(|| panic!("no secret: {body}")),
        };
        let r = self.request("POST", "/moto-api/reset-auth", &[], "0");
        assert!(matches!(r, Ok((200, _))), "reset-auth: {r:?}");
        key
    }

    /// One IAM Query call while auth is off: moto routes by the credential scope of the
    /// `Authorization` header and checks nothing else yet.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut body = String::from("Version=2010-05-08");
        for (k, v) in params {
            body.push('&');
            body.push_str(&form_encode(k));
            body.push('=');
            body.push_str(&form_encode(v));
        }
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/{REGION}/iam/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
            "0".repeat(64)
        );
        let headers = [
            ("Authorization", auth.as_str()),
            ("X-Amz-Date", "20250101T000000Z"),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ];
        match self.request("POST", "/", &headers, &body) {
            Ok((200, text)) => text,
            other => panic!("IAM {params:?}: {other:?}"),
        }
    }

    /// One plain HTTP request to moto; returns the status and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        crate::http_request(method, &format!("{}{path}", self.url), headers, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- moto log (last lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The text of the first `<name>` element (enough for IAM's flat answers).
fn xml_text(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{name}>"))?;
    Some(body[start..start + len].trim().to_string())
}

/// `application/x-www-form-urlencoded` encoding of one key or value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_everything_but_unreserved() {
        assert_eq!(form_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(form_encode(r#"{"x": "*"}"#), "%7B%22x%22%3A%20%22%2A%22%7D");
    }

    #[test]
    fn reads_flat_xml() {
        let body = "<CreateAccessKeyResponse><AccessKey><AccessKeyId> AKIA1 </AccessKeyId></AccessKey></CreateAccessKeyResponse>";
        assert_eq!(xml_text(body, "AccessKeyId").as_deref(), Some("AKIA1"));
        assert_eq!(xml_text(body, "SecretAccessKey"), None);
    }
}
