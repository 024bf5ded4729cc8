//! The web console in a real headless Chromium (Debian's `chromium`), driven by
//! playwright-core (`tests/console/console.test.mjs`, run with node's test runner),
//! against a real `shoal serve` on the local provider: the browser logs in, creates a
//! cluster from the form and watches it boot, opens its timeline, tries forged writes,
//! checks the 375 px layout and accessibility rules, and deletes the cluster by
//! keyboard alone. This side then checks what the browser did, from the server.
//!
//! Privileged (a local cluster needs root); `scripts/test` installs Chromium and the
//! test's npm packages (`npm ci` in tests/console) and runs it:
//! `cargo test -p shoal-e2e --test console -- --include-ignored`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use shoal_e2e::coordinator::{bin, target_dir, TestCoordinator};
use shoal_e2e::{require_privileges, unique_name};

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "node", "chromium"];

#[test]
#[ignore = "needs root (a local cluster), Debian's chromium and tests/console/node_modules: run through scripts/test as root"]
fn the_console_in_a_real_chromium() {
    require_privileges(TOOLS);
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    assert!(
        here.join("node_modules/playwright-core").is_dir(),
        "tests/console/node_modules is missing: run `npm ci` in tests/console (scripts/test does)"
    );
    // 2 nodes in CI; docs/console.png is `cluster.png` of a run with
    // SHOAL_CONSOLE_NODES=3.
    let nodes = std::env::var("SHOAL_CONSOLE_NODES").unwrap_or_else(|_| "2".into());
    let c = TestCoordinator::start();
    let name = unique_name("web");
    let shots = target_dir().join("console-shots");
    let _ = std::fs::remove_dir_all(&shots);
    let started = Instant::now();
    let out = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg("console.test.mjs")
        .current_dir(&here)
        .env("SHOAL_URL", c.api_url())
        .env("SHOAL_TOKEN", c.token())
        .env("SHOAL_BIN", bin("shoal"))
        .env("SHOAL_STATE_DIR", &c.state_dir)
        .env("SHOAL_CLUSTER", &name)
        .env("SHOAL_NODES", &nodes)
        .env("SHOAL_SHOTS", &shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    eprintln!(
        "browser steps took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert!(
        out.status.success(),
        "the browser test failed ({}); server log:\n{}",
        out.status,
        c.log_text()
    );
    // What the browser did, seen from the server: the cluster it made was deleted,
    // and nothing of it is left on the machine.
    let v = c.show(&name);
    assert_eq!(v["state"], "DELETED", "{v:#}");
    // The browser scaled it by one node from the scale form before deleting it.
    let scaled: u32 = nodes.parse::<u32>().expect("a node count") + 1;
    assert_eq!(v["node_count"], scaled, "{v:#}");
    assert!(
        v["time_to_available_ms"].as_u64().is_some(),
        "it was AVAILABLE: {v:#}"
    );
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:?}");
    for f in [
        "login.png",
        "cluster.png",
        "list.png",
        "list-row.png",
        "phone-cluster.png",
        "timeline.svg",
    ] {
        assert!(shots.join(f).is_file(), "no {f}");
    }
    // Logins and refusals reach the log, the token never does.
    let log = c.log_text();
    assert!(log.contains("console login refused"), "{log}");
    assert!(
        !log.contains(&c.token()),
        "the operator token is in the log"
    );
}
