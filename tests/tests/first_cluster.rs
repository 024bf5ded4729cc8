//! A first cluster as a new user makes it, following the README's "Using it" section
//! after the build: `shoal serve --state-dir S` with no image directory given, then
//! `shoal cluster create`. The images a blueprint names are checked before any VM is
//! made: the demo image is built at first need, any other missing one is refused at
//! once (HTTP 422) with the command that makes it, and nothing is recorded.

use std::time::Duration;

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::require_privileges;

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "busybox"];

#[test]
#[ignore = "needs root, dockerd, iproute2, busybox-static"]
fn the_readme_example_works_as_written() {
    require_privileges(TOOLS);
    // `shoal serve --state-dir S`: no --image-dir, no --agent-bin (only the VPC range
    // and prefix that keep this run apart from others on the machine).
    let c = TestCoordinator::start_bare();
    let images = c.state_dir.join("images");
    assert!(!images.join("shoal_demo_1.tar").exists());
    let out = c.shoal(&[
        "cluster",
        "create",
        "c",
        "--provider",
        "local",
        "--nodes",
        "2",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log_text()
    );
    assert!(
        images.join("shoal_demo_1.tar").is_file(),
        "the demo image was not built into the state directory's image directory"
    );
    let v = c.show("c");
    assert_eq!(v["state"], "AVAILABLE");
    assert_eq!(v["images"], serde_json::json!(["shoal/demo:1"]));
    // Every node runs the demo containers from the image built at first need.
    for n in v["nodes"].as_array().expect("nodes") {
        let running: Vec<&Value> = n["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter(|k| k["state"] == "running")
            .collect();
        assert!(!running.is_empty(), "{n:#}");
        let out = c.docker(
            n,
            &["image", "inspect", "-f", "{{.RepoTags}}", "shoal/demo:1"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.shoal_ok(&["cluster", "delete", "c", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_missing_image_is_refused_before_anything_is_made() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let file = c.state_dir.join("missing.toml");
    std::fs::write(
        &file,
        r#"
name = "missing"
[[group]]
name = "master"
count = 1
[[group.container]]
name = "namenode"
image = "shoal/hadoop:1"
[[group]]
name = "workers"
count = "rest"
[[group.container]]
name = "app"
image = "registry.example.com/team/app:2"
"#,
    )
    .expect("blueprint");
    let started = std::time::Instant::now();
    let out = c.shoal(&[
        "cluster",
        "create",
        "x",
        "--nodes",
        "3",
        "--blueprint",
        file.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Exit 4: refused by the coordinator (docs/cli-exit-codes.md), at once.
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not refused at once"
    );
    for expect in [
        "(HTTP 422)",
        "shoal/hadoop:1",
        "cloud-init/build-hadoop-image",
        "registry.example.com/team/app:2",
        "registry.example.com_team_app_2.tar",
    ] {
        assert!(err.contains(expect), "{expect:?} not in: {err}");
    }
    let list: Value =
        serde_json::from_str(&c.shoal_ok(&["cluster", "list", "--json"])).expect("json");
    assert_eq!(
        list,
        Value::Array(vec![]),
        "a refused request recorded a cluster"
    );
    assert_eq!(c.leftovers(true), Vec::<String>::new(), "a VM was made");
    // The API says the same, with its stable code.
    let (code, body) = shoal_e2e::http_request(
        "POST",
        &format!("{}/v1/clusters", c.api_url()),
        &[
            ("Authorization", &format!("Bearer {}", c.token())),
            ("Content-Type", "application/json"),
        ],
        &serde_json::json!({
            "name": "y",
            "provider": "local",
            "nodes": 1,
            "blueprint_toml": std::fs::read_to_string(&file).expect("read"),
        })
        .to_string(),
    )
    .expect("POST");
    assert_eq!(code, 422, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["code"], "images-missing");
}
