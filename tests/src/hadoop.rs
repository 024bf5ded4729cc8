//! Asking a local hadoop cluster what an operator would ask it: the NameNode's JMX
//! through the ports the master node publishes, and HDFS's own clients run in a
//! container (`docker exec`).

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::coordinator::TestCoordinator;
use crate::http_request;

/// Tools the hadoop tests need (the image is built from a debootstrap root with a JDK).
pub const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker", "debootstrap", "javac"];

/// `docker exec CONTAINER bash -c SCRIPT` on `node`'s dockerd; panics unless it
/// succeeds; returns stdout.
pub fn exec(c: &TestCoordinator, node: &Value, container: &str, script: &str) -> String {
    let out = c.docker(node, &["exec", container, "bash", "-c", script]);
    assert!(
        out.status.success(),
        "{container}: `{script}` failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A GET answered 200 with JSON.
pub fn get_json(url: &str) -> Value {
    let (status, body) =
        http_request("GET", url, &[], "").unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// The NameNode's FSNamesystemState and its live DataNodes (`FQDN:port` → details),
/// from its JMX at `ip`:50070.
pub fn namenode_state(ip: &str) -> (Value, Map<String, Value>) {
    let state = get_json(&format!(
        "http://{ip}:50070/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState"
    ));
    let info = get_json(&format!(
        "http://{ip}:50070/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo"
    ));
    let live: Map<String, Value> = info["beans"][0]["LiveNodes"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    (state["beans"][0].clone(), live)
}

/// The first word of `md5sum`'s output.
pub fn md5(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_string()
}

/// Polls `check` every 500 ms until it returns `None`; panics with its last answer
/// (why not yet) after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<String>) {
    let start = Instant::now();
    loop {
        match check() {
            None => return,
            Some(why) if start.elapsed() > timeout => {
                panic!("{what}: not after {timeout:?}: {why}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
