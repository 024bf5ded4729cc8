//! Recipes end to end on the local provider (real `shoal`, `shoal-agent`, a dockerd per
//! VM, the demo image): the operator's scripts run as root in each VM (its network
//! namespace), pre-containers ones before the containers and post-ready ones once the
//! node is ready, with their outcomes and output in `cluster show`; once per plan
//! generation across an agent's restart unless `every_boot`; a failing pre-containers
//! recipe fails the node with `recipe-failed` and its output, no container started; a
//! bad recipe is refused at create with nothing made. Privileged: run through
//! `scripts/test` as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::require_privileges;
use shoal_e2e::vm::nodes;

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker"];

/// A blueprint of one group on every node running the demo agent container, with
/// `recipes` (a TOML array) in `dir`.
fn blueprint(dir: &Path, name: &str, recipes: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
[[group]]
name = "all"
count = "rest"
recipes = {recipes}
[[group.container]]
name = "box"
image = "shoal/demo:1"
command = ["sleep", "3600"]
"#
        ),
    )
    .expect("write blueprint");
    path.display().to_string()
}

/// The directory recipes run in on a local VM: the agent's state dir, `recipes/`.
fn recipe_dir(node: &Value) -> PathBuf {
    let log = PathBuf::from(node["agent_log"].as_str().expect("agent_log"));
    log.parent().expect("VM dir").join("agent-state/recipes")
}

fn recipe<'a>(node: &'a Value, name: &str) -> &'a Value {
    node["recipes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no recipe {name} in {node:#}"))
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

fn phase_start(node: &Value, phase: &str) -> u64 {
    node["timings"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["phase"] == phase))
        .and_then(|t| t["started_ms"].as_u64())
        .unwrap_or_else(|| panic!("no {phase} timing in {node:#}"))
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn pre_and_post_recipes_run_on_each_vm_with_their_output_in_cluster_show() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    // The post-ready recipe comes from a file, read by the CLI beside the blueprint.
    std::fs::write(
        dir.join("post.sh"),
        "echo post-ready on $SHOAL_NODE generation $SHOAL_GENERATION\necho boot >> boots\n",
    )
    .expect("post.sh");
    let path = blueprint(
        &dir,
        "rc",
        r#"[
  { name = "prep", when = "pre-containers", timeout = "1m", script = """
echo prep as $(id -u) on $SHOAL_NODE of $SHOAL_CLUSTER
ip -4 -o addr show dev eth0 | awk '{print "eth0", $4}'
echo run >> runs
echo to stderr >&2
""" },
  { name = "post", when = "post-ready", file = "post.sh", every_boot = true },
]"#,
    );
    c.shoal_ok(&[
        "cluster",
        "create",
        "rc",
        "--nodes",
        "2",
        "--blueprint",
        &path,
        "--wait",
    ]);
    // The post-ready recipes run once the nodes are ready: wait for their reports.
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = c.show("rc");
        let done = nodes(&v).iter().all(|n| {
            n["recipes"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["name"] == "post"))
        });
        if done {
            break v;
        }
        assert!(Instant::now() < deadline, "no post-ready report: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["state"], "AVAILABLE", "{v:#}");
    for n in nodes(&v) {
        let id = n["id"].as_str().expect("id");
        let ip = n["private_ip"].as_str().expect("ip");
        let prep = recipe(&n, "prep");
        assert_eq!(prep["ok"], true, "{prep:#}");
        assert_eq!(prep["exit_code"], 0);
        assert_eq!(prep["when"], "pre-containers");
        assert_eq!(prep["generation"], 1);
        let out = prep["output"].as_str().expect("output");
        // As root, inside the VM's own network namespace (its eth0 is the node's).
        assert!(out.contains(&format!("prep as 0 on {id} of rc")), "{out}");
        assert!(out.contains(&format!("eth0 {ip}/")), "{out}");
        assert!(out.contains("to stderr"), "{out}");
        // Before the containers: it ended before the containers phase began.
        let ended = prep["started_ms"].as_u64().expect("started")
            + prep["duration_ms"].as_u64().expect("duration");
        assert!(ended <= phase_start(&n, "containers"), "{n:#}");
        let post = recipe(&n, "post");
        assert_eq!(post["ok"], true, "{post:#}");
        assert_eq!(post["when"], "post-ready");
        assert!(
            post["output"]
                .as_str()
                .is_some_and(|o| o.contains(&format!("post-ready on {id} generation 1"))),
            "{post:#}"
        );
        assert!(
            post["started_ms"].as_u64() >= Some(phase_start(&n, "ready")),
            "{n:#}"
        );
        let rd = recipe_dir(&n);
        assert_eq!(lines(&rd.join("runs")), 1, "prep ran once on {id}");
        assert_eq!(lines(&rd.join("boots")), 1, "post ran once on {id}");
    }
    let text = c.shoal_ok(&["cluster", "show", "rc"]);
    assert!(
        text.contains("recipe prep (pre-containers, generation 1): ok"),
        "{text}"
    );
    assert!(text.contains("| prep as 0 on node-0 of rc"), "{text}");
    assert!(
        text.contains("recipe post (post-ready, generation 1): ok"),
        "{text}"
    );

    // The agent restarts (a boot, for a local VM): the marker keeps prep from running
    // again for the same generation; post runs at every boot.
    let n0 = nodes(&v)[0].clone();
    let vm = PathBuf::from(n0["agent_log"].as_str().expect("agent_log"))
        .parent()
        .expect("VM dir")
        .to_path_buf();
    let pid = std::fs::read_to_string(vm.join("agent.pid")).expect("agent.pid");
    let pid = pid.trim();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .expect("kill")
        .success());
    let rd = recipe_dir(&n0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&rd.join("boots")) < 2 {
        assert!(
            Instant::now() < deadline,
            "post did not run again after the agent's restart: {}",
            std::fs::read_to_string(vm.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        lines(&rd.join("runs")),
        1,
        "prep ran again for the same generation"
    );
    let v = c.show("rc");
    assert_eq!(
        recipe(&nodes(&v)[0], "prep")["generation"],
        1,
        "still reported after the restart"
    );

    c.shoal_ok(&["cluster", "delete", "rc", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_failing_pre_containers_recipe_fails_the_node_with_its_output_and_no_container() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    let path = blueprint(
        &dir,
        "rf",
        r#"[{ name = "check", when = "pre-containers", script = "echo checking the disk; echo disk not ready >&2; exit 3" }]"#,
    );
    let out = c.shoal(&[
        "cluster",
        "create",
        "rf",
        "--nodes",
        "1",
        "--blueprint",
        &path,
        "--wait",
    ]);
    assert!(!out.status.success(), "create --wait should fail");
    let v = c.wait_state("rf", "FAILED", Duration::from_secs(60));
    let n = &nodes(&v)[0];
    assert_eq!(n["phase"], "failed", "{n:#}");
    assert_eq!(n["error"]["reason"], "recipe-failed", "{n:#}");
    let message = n["error"]["message"].as_str().expect("message");
    for part in [
        "recipe check (pre-containers) exited with code 3",
        "checking the disk",
        "disk not ready",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    let r = recipe(n, "check");
    assert_eq!(
        (r["ok"].as_bool(), r["exit_code"].as_i64()),
        (Some(false), Some(3))
    );
    let text = c.shoal_ok(&["cluster", "show", "rf"]);
    assert!(text.contains("error recipe-failed: recipe check"), "{text}");
    assert!(
        text.contains("recipe check (pre-containers, generation 1): failed (exit 3)"),
        "{text}"
    );
    // No container was made.
    let ps = c.docker(n, &["ps", "-aq"]);
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    assert!(
        ps.stdout.is_empty(),
        "containers: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    c.shoal_ok(&["cluster", "delete", "rf", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_bad_recipe_is_refused_at_create_and_nothing_is_made() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    for (name, recipes, why) in [
        (
            "bw",
            r#"[{ name = "x", when = "at-noon", script = "true" }]"#,
            "when \"at-noon\" is neither",
        ),
        (
            "bs",
            r#"[{ name = "x", when = "post-ready" }]"#,
            "no script",
        ),
        (
            "bf",
            r#"[{ name = "x", when = "post-ready", file = "missing.sh" }]"#,
            "missing.sh",
        ),
    ] {
        let path = blueprint(&dir, name, recipes);
        let err = c.create_refused(name, &path);
        assert!(
            err.contains("recipe \"x\"") && err.contains(why),
            "{name}: {err}"
        );
    }
    c.assert_nothing_made();
}
