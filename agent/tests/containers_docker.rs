//! The agent's images and containers against a real dockerd in a throwaway namespace,
//! with the demo image built by `cloud-init/build-demo-image`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use shoal_agent::containers::{self, ContainerError, LABEL_SPEC};
use shoal_agent::images::{self, ImageError};
use shoal_e2e::dockerd::TestDockerd;
use shoal_e2e::{require_privileges, run, unique_name, TestNetns};
use shoal_protocol::{
    image_tarball_name, reason, ContainerPlan, NetworkMode, NetworkPlan, NodePlan, Plan,
    SCHEMA_VERSION,
};

const DEMO: &str = "shoal/demo:1";
const NODE: &str = "node-0";
const SERVER: &str = "server-node-0";
const AGENT: &str = "agent-node-0";
const SERVER_FQDN: &str = "server-node-0.demo.shoal.internal";
const AGENT_FQDN: &str = "agent-node-0.demo.shoal.internal";

/// A namespace with its own dockerd and a directory holding the demo image tarball.
/// Fields drop in order: the client, then the engine, then the namespace.
struct Env {
    docker: Docker,
    dockerd: TestDockerd,
    ns: TestNetns,
    image_dir: PathBuf,
    /// The containers' hosts files.
    hosts: PathBuf,
}

impl Env {
    async fn new() -> Env {
        require_privileges(&["ip", "nsenter", "dockerd", "docker", "busybox", "tar"]);
        let ns = TestNetns::new("tct");
        let dockerd = TestDockerd::start(&ns);
        let docker = shoal_agent::docker::connect(&dockerd.host())
            .await
            .expect("connect to the test dockerd");
        let image_dir = std::env::temp_dir().join(unique_name("shoal-images"));
        build_demo_image(&image_dir);
        let hosts = std::env::temp_dir().join(unique_name("shoal-hosts"));
        Env {
            docker,
            dockerd,
            ns,
            image_dir,
            hosts,
        }
    }

    fn docker_cli(&self, args: &[&str]) -> String {
        self.dockerd.docker(args)
    }

    /// Loads the demo image and creates the overlay's Docker network.
    async fn prepare(&self) {
        images::ensure(&self.docker, &[(DEMO.to_string(), None)], &self.image_dir)
            .await
            .expect("load the demo image");
        self.dockerd.create_shoal_network();
    }

    async fn container_id(&self, name: &str) -> String {
        self.docker
            .inspect_container(name, None)
            .await
            .expect("inspect")
            .id
            .expect("id")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.image_dir);
        let _ = std::fs::remove_dir_all(&self.hosts);
    }
}

fn build_demo_image(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud-init/build-demo-image");
    let out = run(Command::new("bash").arg(&script).arg(dir).arg(DEMO));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&image_tarball_name(DEMO)),
        "build-demo-image printed: {text}"
    );
}

fn demo_container(name: &str, ip: &str, command: &[&str]) -> ContainerPlan {
    ContainerPlan {
        name: name.into(),
        hostname: format!("{name}-{NODE}.demo.shoal.internal"),
        image: DEMO.into(),
        network: NetworkMode::Overlay,
        address: Some(ip.parse().expect("test address")),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        volumes: vec![],
        ports: vec![],
        registry_auth: None,
        ready: None,
        data_disks: None,
    }
}

/// One node with the demo server and an agent that registers with it.
fn demo_plan() -> Plan {
    let server = demo_container("server", "10.240.1.2", &["shoal-demo", "server"]);
    let mut agent = demo_container("agent", "10.240.1.3", &["shoal-demo", "agent"]);
    agent
        .env
        .insert("DEMO_SERVER".into(), SERVER_FQDN.to_string());
    plan_with(vec![server, agent])
}

fn plan_with(containers: Vec<ContainerPlan>) -> Plan {
    let plan = Plan {
        schema: SCHEMA_VERSION,
        cluster: "demo".into(),
        generation: 1,
        domain: "shoal.internal".into(),
        network: NetworkPlan {
            overlay: "10.240.0.0/16".parse().expect("cidr"),
            vni: 42,
            port: 4789,
            mtu: None,
        },
        nodes: vec![NodePlan {
            id: NODE.into(),
            index: 0,
            private_ip: "10.213.0.10".parse().expect("ip"),
            instance_id: None,
            slice: "10.240.1.0/24".parse().expect("cidr"),
            gateway: "10.240.1.1".parse().expect("ip"),
            containers,
            leaving: false,
            drain: None,
            peer_drains: vec![],
            recipes: vec![],
            disks: vec![],
        }],
        liveness: None,
    };
    plan.validate().expect("the test plan is valid");
    plan
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn names(list: &[&str]) -> Vec<String> {
    sorted(list.iter().map(|s| s.to_string()).collect())
}

/// Polls `f` every 250 ms until it returns `Some`, or panics after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, dockerd, docker and busybox-static"]
async fn demo_cluster_is_loaded_converged_kept_replaced_and_removed() {
    let env = Env::new().await;

    // Images: the baked tarball is loaded once, then found present.
    let wanted = images::wanted(&demo_plan(), NODE);
    assert_eq!(wanted, vec![(DEMO.to_string(), None)]);
    let first = images::ensure(&env.docker, &wanted, &env.image_dir)
        .await
        .expect("load the baked demo image");
    assert_eq!(first.loaded, names(&[DEMO]));
    assert!(
        first.present.is_empty() && first.pulled.is_empty(),
        "{first:?}"
    );
    let second = images::ensure(&env.docker, &wanted, &env.image_dir)
        .await
        .expect("second ensure");
    assert_eq!(second.present, names(&[DEMO]));
    assert!(
        second.loaded.is_empty() && second.pulled.is_empty(),
        "{second:?}"
    );

    env.dockerd.create_shoal_network();
    let plan = demo_plan();
    let report = containers::converge(&env.docker, &plan, NODE, &env.hosts)
        .await
        .expect("converge the demo node");
    assert_eq!(sorted(report.created.clone()), names(&[AGENT, SERVER]));
    assert!(report.kept.is_empty() && report.replaced.is_empty() && report.removed.is_empty());
    for (status, ip) in report.statuses.iter().zip(["10.240.1.2", "10.240.1.3"]) {
        assert_eq!(status.state, "running", "{status:?}");
        assert_eq!(status.address, Some(ip.parse().expect("ip")), "{status:?}");
    }

    // The planned addresses, as Docker itself reports them.
    for (name, ip) in [(SERVER, "10.240.1.2"), (AGENT, "10.240.1.3")] {
        let got = env.docker_cli(&[
            "inspect",
            "--format",
            "{{(index .NetworkSettings.Networks \"shoal\").IPAddress}}",
            name,
        ]);
        assert_eq!(got.trim(), ip, "address of {name}");
    }
    // Each container knows its own FQDN.
    assert_eq!(
        env.docker_cli(&["exec", SERVER, "hostname", "-f"]).trim(),
        SERVER_FQDN
    );
    assert_eq!(
        env.docker_cli(&["exec", AGENT, "hostname", "-f"]).trim(),
        AGENT_FQDN
    );
    // The agent found the server by name and registered from its own overlay address.
    let expected = format!("{AGENT_FQDN} 10.240.1.3");
    wait_for("the agent's registration", Duration::from_secs(30), || {
        let out = env
            .dockerd
            .docker_command()
            .args([
                "exec",
                SERVER,
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/cgi-bin/agents",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().any(|l| l.trim() == expected).then_some(())
    });
    let hello = env.docker_cli(&[
        "exec",
        AGENT,
        "wget",
        "-qO-",
        &format!("http://{SERVER_FQDN}:8080/"),
    ]);
    assert_eq!(hello.trim(), format!("hello from {SERVER_FQDN}"));

    // Converging again changes nothing.
    let server_id = env.container_id(SERVER).await;
    let agent_id = env.container_id(AGENT).await;
    let again = containers::converge(&env.docker, &plan, NODE, &env.hosts)
        .await
        .expect("converge again");
    assert_eq!(sorted(again.kept.clone()), names(&[AGENT, SERVER]));
    assert!(again.created.is_empty() && again.replaced.is_empty() && again.removed.is_empty());
    assert_eq!(env.container_id(SERVER).await, server_id);
    assert_eq!(env.container_id(AGENT).await, agent_id);

    // A stopped container is kept and started again.
    env.docker_cli(&["stop", SERVER]);
    let restarted = containers::converge(&env.docker, &plan, NODE, &env.hosts)
        .await
        .expect("converge with a stopped server");
    assert_eq!(restarted.kept, names(&[AGENT]));
    assert_eq!(restarted.started, names(&[SERVER]));
    assert_eq!(env.container_id(SERVER).await, server_id);
    assert_eq!(
        env.docker_cli(&["inspect", "--format", "{{.State.Status}}", SERVER])
            .trim(),
        "running"
    );

    // A changed environment replaces exactly that container.
    let mut changed = plan.clone();
    changed.nodes[0].containers[1]
        .env
        .insert("DEMO_COLOUR".into(), "blue".into());
    let old_spec = env.docker_cli(&[
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{LABEL_SPEC}\"}}}}"),
        AGENT,
    ]);
    let replaced = containers::converge(&env.docker, &changed, NODE, &env.hosts)
        .await
        .expect("converge a changed agent");
    assert_eq!(replaced.replaced, names(&[AGENT]));
    assert_eq!(replaced.kept, names(&[SERVER]));
    assert!(replaced.created.is_empty() && replaced.removed.is_empty());
    assert_eq!(env.container_id(SERVER).await, server_id);
    assert_ne!(env.container_id(AGENT).await, agent_id);
    let env_vars = env.docker_cli(&["exec", AGENT, "sh", "-c", "echo $DEMO_COLOUR"]);
    assert_eq!(env_vars.trim(), "blue");
    let new_spec = env.docker_cli(&[
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{LABEL_SPEC}\"}}}}"),
        AGENT,
    ]);
    assert_ne!(old_spec.trim(), new_spec.trim());

    // A peer joins: its containers appear in every hosts file, in place; nothing is
    // replaced or restarted.
    let mut grown = changed.clone();
    let mut peer = grown.nodes[0].clone();
    peer.id = "node-1".into();
    peer.index = 1;
    peer.private_ip = "10.213.0.11".parse().expect("ip");
    peer.slice = "10.240.2.0/24".parse().expect("cidr");
    peer.gateway = "10.240.2.1".parse().expect("ip");
    for (c, ip) in peer.containers.iter_mut().zip(["10.240.2.2", "10.240.2.3"]) {
        c.hostname = c.hostname.replace("node-0", "node-1");
        c.address = Some(ip.parse().expect("ip"));
    }
    grown.nodes.push(peer);
    grown.validate().expect("valid");
    let server_started = env.docker_cli(&["inspect", "--format", "{{.State.StartedAt}}", SERVER]);
    let joined = containers::converge(&env.docker, &grown, NODE, &env.hosts)
        .await
        .expect("converge with a new peer");
    assert_eq!(sorted(joined.kept.clone()), names(&[AGENT, SERVER]));
    assert_eq!(
        sorted(joined.hosts_updated.clone()),
        names(&[AGENT, SERVER])
    );
    assert!(joined.created.is_empty() && joined.replaced.is_empty() && joined.started.is_empty());
    assert_eq!(env.container_id(SERVER).await, server_id);
    assert_eq!(
        env.docker_cli(&["inspect", "--format", "{{.State.StartedAt}}", SERVER]),
        server_started,
        "the server was restarted for a peer"
    );
    let seen = env.docker_cli(&["exec", SERVER, "cat", "/etc/hosts"]);
    assert!(
        seen.contains("10.240.2.3\tagent-node-1.demo.shoal.internal agent-node-1"),
        "{seen}"
    );
    // The container still knows itself.
    assert_eq!(
        env.docker_cli(&["exec", SERVER, "hostname", "-f"]).trim(),
        SERVER_FQDN
    );
    // Converging again rewrites nothing.
    let same = containers::converge(&env.docker, &grown, NODE, &env.hosts)
        .await
        .expect("converge again");
    assert!(!same.changed(), "{same:?}");

    // A restarted container keeps the current list (Docker does not write it again).
    env.docker_cli(&["restart", "-t", "1", SERVER]);
    let seen = env.docker_cli(&["exec", SERVER, "cat", "/etc/hosts"]);
    assert!(seen.contains("agent-node-1.demo.shoal.internal"), "{seen}");

    // A container the plan drops is removed; the other is kept, and its hosts file no
    // longer lists it.
    let mut smaller = changed.clone();
    smaller.nodes[0].containers.truncate(1);
    let shrunk = containers::converge(&env.docker, &smaller, NODE, &env.hosts)
        .await
        .expect("converge without the agent");
    assert_eq!(shrunk.removed, names(&[AGENT]));
    assert_eq!(shrunk.kept, names(&[SERVER]));
    assert!(shrunk.replaced.is_empty());
    assert_eq!(env.container_id(SERVER).await, server_id);
    let seen = env.docker_cli(&["exec", SERVER, "cat", "/etc/hosts"]);
    assert!(!seen.contains("agent-node-"), "{seen}");
    assert!(
        !env.hosts.join(AGENT).exists(),
        "the removed container's hosts file is left"
    );

    // A command run in a container: its exit code and output; a timeout.
    let out = containers::exec(
        &env.docker,
        SERVER,
        &["sh".into(), "-c".into(), "echo drained-ok; exit 4".into()],
        Duration::from_secs(10),
    )
    .await
    .expect("exec");
    assert_eq!(out.exit_code, Some(4));
    assert!(out.output.contains("drained-ok"), "{out:?}");
    let t = Instant::now();
    let slow = containers::exec(
        &env.docker,
        SERVER,
        &["sleep".into(), "30".into()],
        Duration::from_secs(1),
    )
    .await
    .expect("exec");
    assert_eq!(slow.exit_code, None);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let left = env.docker_cli(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(left.split_whitespace().collect::<Vec<_>>(), vec![SERVER]);
    let statuses = containers::statuses(&env.docker, &smaller, NODE).await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].state, "running");

    // Docker stop is prompt: the demo roles handle SIGTERM as PID 1.
    let t = Instant::now();
    let removed = containers::remove_all(&env.docker, "demo", &env.hosts)
        .await
        .expect("remove every container of the cluster");
    assert_eq!(removed, names(&[SERVER]));
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(env.docker_cli(&["ps", "-aq"]).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, dockerd, docker and busybox-static"]
async fn images_that_cannot_be_found_are_reported_by_name() {
    let env = Env::new().await;

    // Neither present nor baked, and the namespace has no way out: the pull fails.
    let absent = "shoal-test/absent:1";
    let err = images::ensure(&env.docker, &[(absent.to_string(), None)], &env.image_dir)
        .await
        .expect_err("an absent image cannot be pulled without a network");
    eprintln!("absent image: {err}");
    assert!(matches!(err, ImageError::Pull { .. }), "{err:?}");
    assert_eq!(err.reason(), reason::IMAGE_FAILED);
    let text = err.to_string();
    assert!(text.contains(absent), "{text}");
    assert!(text.contains(&image_tarball_name(absent)), "{text}");

    // A tarball under the wrong name loads, but not the image asked for.
    let other = "shoal/other:2";
    let tarball = env.image_dir.join(image_tarball_name(other));
    std::fs::copy(env.image_dir.join(image_tarball_name(DEMO)), &tarball).expect("copy");
    let err = images::ensure(&env.docker, &[(other.to_string(), None)], &env.image_dir)
        .await
        .expect_err("the tarball holds another image");
    eprintln!("wrong tarball: {err}");
    assert!(matches!(err, ImageError::NotInTarball { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(other) && text.contains(&tarball.display().to_string()),
        "{text}"
    );
    assert!(text.contains(DEMO), "names what the tarball held: {text}");

    // A tarball that is not an image is refused by the engine, with its words.
    let junk = "shoal/junk:1";
    std::fs::write(env.image_dir.join(image_tarball_name(junk)), b"not a tar").expect("write");
    let err = images::ensure(&env.docker, &[(junk.to_string(), None)], &env.image_dir)
        .await
        .expect_err("junk is not an image");
    eprintln!("junk tarball: {err}");
    assert!(
        matches!(
            err,
            ImageError::Load { .. } | ImageError::NotInTarball { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(junk), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, dockerd, docker and busybox-static"]
async fn a_container_that_exits_at_once_is_reported_with_its_exit_code() {
    let env = Env::new().await;
    env.prepare().await;
    let plan = plan_with(vec![demo_container(
        "broken",
        "10.240.1.5",
        &["sh", "-c", "echo the-end-is-near; exit 3"],
    )]);
    let err = containers::converge(&env.docker, &plan, NODE, &env.hosts)
        .await
        .expect_err("a command that exits at once");
    eprintln!("exits at once: {err}");
    match &err {
        ContainerError::Exited {
            container,
            exit_code,
            logs,
            ..
        } => {
            assert_eq!(container, "broken-node-0");
            assert_eq!(*exit_code, 3);
            assert!(logs.contains("the-end-is-near"), "{logs}");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert_eq!(err.reason(), reason::CONTAINER_FAILED);
    assert!(err.to_string().contains("code 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, dockerd, docker and busybox-static"]
async fn host_mode_containers_run_on_the_node_stack() {
    let env = Env::new().await;
    env.prepare().await;
    let mut c = demo_container("server", "10.240.1.2", &["shoal-demo", "server"]);
    c.network = NetworkMode::Host;
    c.address = None;
    let plan = plan_with(vec![c]);
    let report = containers::converge(&env.docker, &plan, NODE, &env.hosts)
        .await
        .expect("converge a host-mode container");
    assert_eq!(report.created, names(&[SERVER]));
    assert_eq!(report.statuses[0].state, "running");
    assert_eq!(report.statuses[0].address, None);
    let mode = env.docker_cli(&["inspect", "--format", "{{.HostConfig.NetworkMode}}", SERVER]);
    assert_eq!(mode.trim(), "host");
    assert_eq!(
        env.docker_cli(&["exec", SERVER, "hostname", "-f"]).trim(),
        SERVER_FQDN
    );
    // On the namespace's own stack: the server answers on its loopback.
    wait_for("the host-mode server", Duration::from_secs(10), || {
        let out = env
            .ns
            .command("busybox")
            .args(["wget", "-qO-", "http://127.0.0.1:8080/"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("hello from")
            .then_some(())
    });
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_reported_as_unreachable() {
    // A socket nobody listens on any more: connections are refused.
    let dir = std::env::temp_dir().join(unique_name("no-docker"));
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("d.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let docker = Docker::connect_with_unix(
        &socket.display().to_string(),
        5,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("a client needs no engine until it sends");
    let err = containers::converge(&docker, &demo_plan(), NODE, &dir)
        .await
        .expect_err("no engine");
    assert_eq!(err.reason(), reason::DOCKER_UNREACHABLE, "{err:?}");
    let err = images::ensure(
        &docker,
        &[(DEMO.to_string(), None)],
        Path::new("/nonexistent"),
    )
    .await
    .expect_err("no engine");
    assert_eq!(err.reason(), reason::DOCKER_UNREACHABLE, "{err:?}");
    let err = containers::converge(&docker, &demo_plan(), "node-9", &dir)
        .await
        .expect_err("no such node");
    assert_eq!(err.reason(), reason::NODE_NOT_IN_PLAN);
    let _ = std::fs::remove_dir_all(&dir);
}
