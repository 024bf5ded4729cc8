//! AWS end to end: the real `shoal serve` and CLI against moto's EC2 in strict-auth
//! mode (every request's SigV4 signature is checked against an IAM user's key), with
//! the credentials, endpoint and region in the coordinator's environment as an
//! operator would set them.
//!
//! Nobody boots moto's instances, so no agent ever reports: a cluster ends CREATING
//! with its plan published (the creation watchdog would fail it after
//! `--create-timeout`). What is checked is everything up to there: the instances, their
//! tags and user-data, the network, the plan on the metadata endpoint, deletion,
//! failures, and a coordinator killed in the middle of creating.
//!
//! Privileged (the coordinator also sets up its local provider): run as root with
//! `cargo test -p shoal-e2e --test cloud_aws -- --include-ignored`, after
//! `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use shoal::providers::aws::ec2::{child, child_text, find, http_client, items, parse};
use shoal::providers::aws::{Credentials, Params, QueryClient, EC2_API_VERSION};
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::moto::{AccessKey, Moto, REGION};
use shoal_protocol::backoff::Backoff;

const TOOLS: &[&str] = &["python3", "cloud-init", "ip", "nsenter"];
const ADVERTISE: &str = "https://203.0.113.10:8787";
/// The test stands in for the agents and reports once, not every interval: no
/// liveness, or the sweep would mark its nodes lost while a test runs.
const SERVE_ARGS: &[&str] = &["--advertise-url", ADVERTISE, "--report-interval", "0"];
const PLAN_TIMEOUT: Duration = Duration::from_secs(120);

/// An instance as moto describes it.
#[derive(Debug, Clone)]
struct Instance {
    id: String,
    state: String,
    private_ip: Option<Ipv4Addr>,
    instance_type: String,
    image: String,
    subnet: String,
    tags: BTreeMap<String, String>,
}

impl Instance {
    fn node(&self) -> &str {
        self.tags.get("shoal:node").map_or("", String::as_str)
    }
}

/// moto with strict auth on, the test user's key, an AMI moto knows, and a checking
/// EC2 client for looking at what the coordinator did.
struct Aws {
    moto: Moto,
    key: AccessKey,
    ec2: QueryClient,
    ami: String,
}

impl Aws {
    async fn new() -> Aws {
        shoal_e2e::require_privileges(TOOLS);
        let moto = Moto::start();
        let key = moto.strict_auth();
        let ec2 = QueryClient::new(
            http_client().expect("http client"),
            moto.url(),
            REGION,
            "ec2",
            EC2_API_VERSION,
            Credentials::new(key.id.clone(), key.secret.clone(), None, "moto iam user"),
        )
        .expect("client")
        .with_backoff(Backoff {
            initial: Duration::from_millis(50),
            cap: Duration::from_millis(500),
            deadline: Duration::from_secs(20),
        });
        let body = ec2
            .call("DescribeImages", &Params::new().list("Owner", &["amazon"]))
            .await
            .expect("DescribeImages");
        let doc = parse("DescribeImages", moto.url(), &body).expect("xml");
        let ami = items(doc.root_element(), "imagesSet")
            .into_iter()
            .find_map(|i| child_text(i, "imageId").map(str::to_string))
            .expect("moto ships AMIs");
        Aws {
            moto,
            key,
            ec2,
            ami,
        }
    }

    /// The coordinator's environment, as an operator sets it, with `secret` as the key.
    fn env(&self, secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key.id.clone()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_ENDPOINT_URL", self.moto.url().to_string()),
            ("AWS_REGION", REGION.to_string()),
            // Nothing from the machine's own AWS setup.
            ("AWS_PROFILE", String::new()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/credentials".into(),
            ),
            ("AWS_CONFIG_FILE", "/nonexistent/config".into()),
        ]
    }

    fn coordinator(&self, secret: &str) -> TestCoordinator {
        let env = self.env(secret);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        TestCoordinator::start_with_env(SERVE_ARGS, &env)
    }

    /// Instances carrying `shoal:cluster = tag` (any Shoal cluster when `None`), in
    /// every state, sorted by node.
    async fn instances(&self, tag: Option<&str>) -> Vec<Instance> {
        let params = match tag {
            Some(t) => Params::new().filters(&[("tag:shoal:cluster", &[t])]),
            None => Params::new().filters(&[("tag-key", &["shoal:cluster"])]),
        };
        let body = self
            .ec2
            .call("DescribeInstances", &params)
            .await
            .expect("DescribeInstances");
        let doc = parse("DescribeInstances", self.moto.url(), &body).expect("xml");
        let mut out = Vec::new();
        for r in items(doc.root_element(), "reservationSet") {
            for i in items(r, "instancesSet") {
                let text = |name| child_text(i, name).unwrap_or_default().to_string();
                out.push(Instance {
                    id: text("instanceId"),
                    state: child(i, "instanceState")
                        .and_then(|s| child_text(s, "name"))
                        .unwrap_or_default()
                        .to_string(),
                    private_ip: child_text(i, "privateIpAddress").and_then(|a| a.parse().ok()),
                    instance_type: text("instanceType"),
                    image: text("imageId"),
                    subnet: text("subnetId"),
                    tags: items(i, "tagSet")
                        .into_iter()
                        .filter_map(|t| {
                            Some((
                                child_text(t, "key")?.to_string(),
                                child_text(t, "value").unwrap_or_default().to_string(),
                            ))
                        })
                        .collect(),
                });
            }
        }
        out.sort_by(|a, b| (a.node(), &a.id).cmp(&(b.node(), &b.id)));
        out
    }

    /// The instances that are not terminated (pending, running, stopping, …).
    async fn live(&self, tag: Option<&str>) -> Vec<Instance> {
        self.instances(tag)
            .await
            .into_iter()
            .filter(|i| i.state != "terminated")
            .collect()
    }

    /// Ids of the network resources of one kind carrying `shoal:cluster = tag` (any
    /// Shoal cluster when `None`).
    async fn tagged(&self, action: &str, set: &str, id: &str, tag: Option<&str>) -> Vec<String> {
        let params = match tag {
            Some(t) => Params::new().filters(&[("tag:shoal:cluster", &[t])]),
            None => Params::new().filters(&[("tag-key", &["shoal:cluster"])]),
        };
        let body = self
            .ec2
            .call(action, &params)
            .await
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        let doc = parse(action, self.moto.url(), &body).expect("xml");
        items(doc.root_element(), set)
            .into_iter()
            .filter_map(|i| child_text(i, id).map(str::to_string))
            .collect()
    }

    /// (VPCs, subnets, security groups, internet gateways) tagged for `tag`.
    async fn network(&self, tag: Option<&str>) -> [Vec<String>; 4] {
        [
            self.tagged("DescribeVpcs", "vpcSet", "vpcId", tag).await,
            self.tagged("DescribeSubnets", "subnetSet", "subnetId", tag)
                .await,
            self.tagged(
                "DescribeSecurityGroups",
                "securityGroupInfo",
                "groupId",
                tag,
            )
            .await,
            self.tagged(
                "DescribeInternetGateways",
                "internetGatewaySet",
                "internetGatewayId",
                tag,
            )
            .await,
        ]
    }

    /// An instance's user-data, decoded from base64.
    async fn user_data(&self, instance: &str) -> Vec<u8> {
        let body = self
            .ec2
            .call(
                "DescribeInstanceAttribute",
                &Params::new()
                    .set("InstanceId", instance)
                    .set("Attribute", "userData"),
            )
            .await
            .expect("DescribeInstanceAttribute");
        let doc = parse("DescribeInstanceAttribute", self.moto.url(), &body).expect("xml");
        let b64 = find(doc.root_element(), "userData")
            .and_then(|u| child_text(u, "value"))
            .unwrap_or_else(|| panic!("no user-data in {body}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("user-data is base64")
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn create_args<'a>(name: &'a str, ami: &'a str) -> Vec<&'a str> {
    vec![
        "cluster",
        "create",
        name,
        "--provider",
        "aws",
        "--nodes",
        "3",
        "--image",
        ami,
        "--instance-type",
        "t3.medium",
    ]
}

/// The `shoal:cluster` tag value of a cluster, from what `show` says to look for.
fn cluster_tag(v: &Value) -> String {
    let r = v["resources"]
        .as_str()
        .expect("show names the cluster's resources");
    let rest = r
        .split("shoal:cluster=")
        .nth(1)
        .unwrap_or_else(|| panic!("no tag in {r:?}"));
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, moto (python3; tests/moto/setup installs it) and cloud-init"]
async fn a_three_node_cluster_is_created_through_the_coordinator_and_deleted() {
    let aws = Aws::new().await;
    let c = aws.coordinator(&aws.key.secret);
    let out = c.shoal(&create_args("c3", &aws.ami));
    assert!(out.status.success(), "create: {}", text(&out));

    // CREATING with the plan published: every node has its instance and address.
    let v = c.wait_plan("c3", PLAN_TIMEOUT);
    assert_eq!(v["provider"], "aws");
    let tag = cluster_tag(&v);
    assert!(tag.starts_with("c3-"), "{tag}");
    assert!(
        v["resources"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!("in {REGION}"))),
        "{v:#}"
    );
    let shown: Vec<Value> = v["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(shown.len(), 3);

    // Three running instances, tagged for the cluster and their node, with the AMI and
    // type asked for, in the cluster's own subnet; show lists the same ids and addresses.
    let running = aws.live(Some(&tag)).await;
    assert_eq!(
        running.iter().map(Instance::node).collect::<Vec<_>>(),
        ["node-0", "node-1", "node-2"],
        "{running:#?}"
    );
    let [vpcs, subnets, groups, gateways] = aws.network(Some(&tag)).await;
    assert_eq!(
        (vpcs.len(), subnets.len(), groups.len(), gateways.len()),
        (1, 1, 1, 1),
        "one VPC, subnet, security group and internet gateway"
    );
    for (inst, node) in running.iter().zip(&shown) {
        assert_eq!(inst.state, "running");
        assert_eq!(inst.tags["shoal:cluster"], tag);
        assert_eq!(inst.tags["Name"], format!("{tag}-{}", inst.node()));
        assert_eq!(inst.instance_type, "t3.medium");
        assert_eq!(inst.image, aws.ami);
        assert_eq!(inst.subnet, subnets[0]);
        assert_eq!(node["id"], inst.node());
        assert_eq!(node["instance_id"], inst.id.as_str());
        let ip = inst.private_ip.expect("a private address");
        assert_eq!(node["private_ip"], ip.to_string());
        assert_eq!(node["vm-state"], "running");
        assert_eq!(node["instance-type"], "t3.medium");
    }
    let human = c.shoal_ok(&["cluster", "show", "c3"]);
    assert!(
        human.contains(&format!(
            "resources: EC2 resources tagged shoal:cluster={tag}"
        )),
        "{human}"
    );

    // Each instance's user-data: a cloud-config that cloud-init accepts, whose agent
    // configuration points at the advertised URL with the cluster's key and the node's
    // own id and token.
    let mut keys = Vec::new();
    let mut tokens = Vec::new();
    for inst in &running {
        let data = aws.user_data(&inst.id).await;
        shoal_e2e::check_cloud_init_schema(&data, inst.node());
        let cfg = shoal::userdata::agent_config(&data).expect("a Shoal user-data document");
        assert_eq!(cfg.metadata_url, ADVERTISE);
        assert_eq!(cfg.node_id, inst.node());
        assert_eq!(cfg.cluster_key.len(), 64, "a 256-bit key in hex");
        keys.push(cfg.cluster_key);
        tokens.push(cfg.node_token);
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "one cluster key");
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "a token per node");
    let key = keys.remove(0);

    // The plan is served under that key and lists the instances' private addresses.
    let (status, body) = c.metadata(&key);
    assert_eq!(status, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).expect("the plan is JSON");
    assert_eq!(plan["cluster"], "c3");
    let planned: Vec<(String, String, String)> = plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                n["private_ip"].as_str().unwrap_or_default().to_string(),
                n["instance_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = running
        .iter()
        .map(|i| {
            (
                i.node().to_string(),
                i.private_ip.map(|a| a.to_string()).unwrap_or_default(),
                i.id.clone(),
            )
        })
        .collect();
    assert_eq!(planned, expected);

    // Delete: no instance left that is not terminated, no Shoal-tagged network
    // resource, and the plan is no longer served.
    let out = c.shoal(&["cluster", "delete", "c3", "--wait"]);
    assert!(
        out.status.success(),
        "delete: {}\n{}",
        text(&out),
        c.log_text()
    );
    assert!(
        aws.live(None).await.is_empty(),
        "{:#?}",
        aws.live(None).await
    );
    for (kind, left) in ["VPC", "subnet", "security group", "internet gateway"]
        .iter()
        .zip(aws.network(None).await)
    {
        assert!(left.is_empty(), "a Shoal-tagged {kind} is left: {left:?}");
    }
    assert_eq!(c.show("c3")["state"], "DELETED");
    assert_eq!(c.metadata(&key).0, 404);
    // And again: nothing to do, still a success.
    let out = c.shoal(&["cluster", "delete", "c3", "--wait"]);
    assert!(out.status.success(), "second delete: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, moto (python3; tests/moto/setup installs it) and cloud-init"]
async fn a_wrong_secret_fails_with_aws_auth_error_and_creates_nothing() {
    let aws = Aws::new().await;
    let mut c = aws.coordinator("not-the-secret");
    let started = Instant::now();
    let out = c.shoal(&{
        let mut a = create_args("bad", &aws.ami);
        a.push("--wait");
        a
    });
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("cluster bad FAILED")
            && stderr.contains("AuthFailure")
            && stderr.contains("AWS was not able to validate the provided access credentials"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "auth errors are not retried: {:?}",
        started.elapsed()
    );
    assert!(!stderr.contains("not-the-secret"), "no secret in messages");
    assert!(
        stderr.contains("`shoal cluster delete bad` removes what was made"),
        "{stderr}"
    );
    let v = c.show("bad");
    assert_eq!(v["state"], "FAILED");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("aws") && r.contains("AuthFailure")),
        "{v:#}"
    );
    assert!(
        !c.log_text().contains("not-the-secret"),
        "no secret in logs"
    );

    // Nothing was made.
    assert!(aws.instances(None).await.is_empty());
    for left in aws.network(None).await {
        assert!(left.is_empty(), "{left:?}");
    }

    // Deleting needs working credentials too, and says so.
    let out = c.shoal(&["cluster", "delete", "bad", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AuthFailure"),
        "{}",
        text(&out)
    );
    // With the right secret (a coordinator restarted with fixed credentials), it goes.
    c.stop("TERM");
    let good = aws.env(&aws.key.secret);
    c.env = good
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    c.spawn(SERVE_ARGS);
    let out = c.shoal(&["cluster", "delete", "bad", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.show("bad")["state"], "DELETED");
}

/// Exactly one instance per node (none terminated, so none was launched twice and
/// cleaned up), the ones `show` lists, and one of each network resource.
async fn check_one_instance_per_node(aws: &Aws, name: &str, tag: &str, v: &Value) {
    let all = aws.instances(Some(tag)).await;
    assert_eq!(
        all.iter().map(Instance::node).collect::<Vec<_>>(),
        ["node-0", "node-1", "node-2"],
        "{name}: exactly one instance per node: {all:#?}"
    );
    for (inst, node) in all.iter().zip(v["nodes"].as_array().expect("nodes")) {
        assert_eq!(inst.state, "running", "{name}");
        assert_eq!(node["instance_id"], inst.id.as_str(), "{name}");
    }
    let network = aws.network(Some(tag)).await;
    assert!(
        network.iter().all(|ids| ids.len() == 1),
        "{name}: one of each network resource: {network:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, moto (python3; tests/moto/setup installs it) and cloud-init"]
async fn a_coordinator_killed_during_creation_makes_no_duplicate_instance() {
    let aws = Aws::new().await;
    let mut c = aws.coordinator(&aws.key.secret);

    // 1. Killed right after the operator API accepted the request, before (or while)
    //    the network is made.
    let out = c.shoal(&create_args("k1", &aws.ami));
    assert!(out.status.success(), "create: {}", text(&out));
    c.stop("KILL");
    let at_kill = aws.live(None).await.len();
    let network_at_kill = aws.network(None).await.map(|ids| ids.len());
    eprintln!(
        "k1: killed with {at_kill} instance(s) launched and (VPC, subnet, group, gateway) = {network_at_kill:?}"
    );
    c.spawn(SERVE_ARGS);
    let v = c.wait_plan("k1", PLAN_TIMEOUT);
    let tag1 = cluster_tag(&v);
    check_one_instance_per_node(&aws, "k1", &tag1, &v).await;

    // 2. Killed in the middle of launching: as soon as moto shows the first instance of
    //    the cluster (the other launches are then still to come). Should the kill land
    //    after the last launch (a loaded machine), try again with another cluster.
    let mut names = vec!["k1".to_string()];
    let mut landed = Vec::new();
    for attempt in 0..3 {
        let name = format!("k2x{attempt}");
        let out = c.shoal(&create_args(&name, &aws.ami));
        assert!(out.status.success(), "create: {}", text(&out));
        names.push(name.clone());
        let tag = cluster_tag(&c.show(&name));
        let start = Instant::now();
        loop {
            if !aws.live(Some(&tag)).await.is_empty() {
                c.stop("KILL");
                break;
            }
            assert!(
                start.elapsed() < PLAN_TIMEOUT,
                "no instance launched: {}",
                c.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at_kill = aws.live(Some(&tag)).await.len();
        eprintln!("{name}: killed with {at_kill} of 3 instances launched");
        landed.push(at_kill);
        c.spawn(SERVE_ARGS);
        let v = c.wait_plan(&name, PLAN_TIMEOUT);
        check_one_instance_per_node(&aws, &name, &tag, &v).await;
        if at_kill < 3 {
            break;
        }
    }
    assert!(
        landed.iter().any(|n| *n < 3),
        "no kill landed before the last launch: {landed:?}"
    );
    assert_eq!(aws.live(None).await.len(), 3 * names.len());

    for name in &names {
        let out = c.shoal(&["cluster", "delete", name, "--wait"]);
        assert!(out.status.success(), "delete {name}: {}", text(&out));
    }
    assert!(aws.live(None).await.is_empty());
    for left in aws.network(None).await {
        assert!(left.is_empty(), "{left:?}");
    }
}

/// A node's cluster key and token, read out of its user-data as cloud-init would.
fn credentials(user_data: &[u8]) -> (String, String) {
    let cfg = shoal::userdata::agent_config(user_data)
        .expect("the user-data holds the agent's configuration");
    (cfg.cluster_key, cfg.node_token)
}

impl Aws {
    /// Network interfaces and volumes still attached to (or left by) `instance`.
    async fn attached(&self, instance: &str) -> (Vec<String>, Vec<String>) {
        let mut out = Vec::new();
        for (action, set, id) in [
            (
                "DescribeNetworkInterfaces",
                "networkInterfaceSet",
                "networkInterfaceId",
            ),
            ("DescribeVolumes", "volumeSet", "volumeId"),
        ] {
            let params = Params::new().filters(&[("attachment.instance-id", &[instance])]);
            let body = self
                .ec2
                .call(action, &params)
                .await
                .unwrap_or_else(|e| panic!("{action}: {e}"));
            let doc = parse(action, self.moto.url(), &body).expect("xml");
            out.push(
                items(doc.root_element(), set)
                    .into_iter()
                    .filter_map(|i| child_text(i, id).map(str::to_string))
                    .collect(),
            );
        }
        let volumes = out.pop().unwrap_or_default();
        (out.pop().unwrap_or_default(), volumes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, moto (python3; tests/moto/setup installs it) and cloud-init"]
async fn a_cluster_scales_up_and_down_and_has_a_node_repaired_on_ec2() {
    let aws = Aws::new().await;
    let c = aws.coordinator(&aws.key.secret);
    let mut args = create_args("ec", &aws.ami);
    args[6] = "2";
    c.shoal_ok(&args);
    let v = c.wait_plan("ec", PLAN_TIMEOUT);
    let tag = cluster_tag(&v);
    // Nobody boots moto's instances: the test reports for their agents.
    c.report_all("ec", "ready", credentials);
    c.wait_state("ec", "AVAILABLE", PLAN_TIMEOUT);
    let first: Vec<Instance> = aws.live(Some(&tag)).await;
    assert_eq!(first.len(), 2);

    // Up: two workers more, one new generation.
    c.shoal_ok(&["cluster", "scale", "ec", "--nodes", "3"]);
    let v = c.wait_generation("ec", 2, PLAN_TIMEOUT);
    assert_eq!(v["state"], "UPDATING", "{v:#}");
    let up = aws.live(Some(&tag)).await;
    assert_eq!(
        up.iter().map(Instance::node).collect::<Vec<_>>(),
        ["node-0", "node-1", "node-2", "node-3"]
    );
    for i in &up[2..] {
        assert_eq!(i.state, "running");
        assert_eq!(i.tags["shoal:cluster"], tag);
        assert_eq!(i.tags["Name"], format!("{tag}-{}", i.node()));
        assert_eq!(
            i.subnet, first[0].subnet,
            "the new nodes join the cluster's subnet"
        );
    }
    // The first instances are the same ones.
    assert_eq!(up[0].id, first[0].id);
    assert_eq!(up[1].id, first[1].id);
    c.report_all("ec", "ready", credentials);
    let v = c.wait_state("ec", "AVAILABLE", PLAN_TIMEOUT);
    assert_eq!(v["changes"][1]["outcome"], "done", "{v:#}");

    // Down to one worker: node-3 and node-2 drain (a plan marks them leaving), then go.
    let gone: Vec<Instance> = up[2..].to_vec();
    c.shoal_ok(&["cluster", "scale", "ec", "--nodes", "1"]);
    let v = c.wait_generation("ec", 3, PLAN_TIMEOUT);
    let leaving: Vec<String> = shoal_e2e::vm::nodes(&v)
        .iter()
        .filter(|n| n["leaving"] == true)
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    assert_eq!(leaving, ["node-2", "node-3"]);
    // Not drained yet: their instances are still there.
    assert_eq!(aws.live(Some(&tag)).await.len(), 4);
    for n in ["node-2", "node-3"] {
        assert_eq!(c.report_as("ec", n, "drained", credentials), 204);
    }
    c.wait_generation("ec", 4, PLAN_TIMEOUT);
    c.report_all("ec", "ready", credentials);
    let v = c.wait_state("ec", "AVAILABLE", PLAN_TIMEOUT);
    assert_eq!(shoal_e2e::vm::nodes(&v).len(), 2);
    let left = aws.live(Some(&tag)).await;
    assert_eq!(
        left.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [first[0].id.as_str(), first[1].id.as_str()]
    );
    for i in &gone {
        let now: Vec<Instance> = aws.instances(Some(&tag)).await;
        let state = now.iter().find(|x| x.id == i.id).map(|x| x.state.clone());
        assert_eq!(state.as_deref(), Some("terminated"), "{}", i.id);
        let (enis, volumes) = aws.attached(&i.id).await;
        assert!(
            enis.is_empty() && volumes.is_empty(),
            "{} left {enis:?} {volumes:?}",
            i.id
        );
    }

    // Repair node-1: its instance is replaced, the other untouched.
    c.shoal_ok(&["cluster", "repair", "ec", "--node", "node-1"]);
    c.wait_generation("ec", 5, PLAN_TIMEOUT);
    let repaired = aws.live(Some(&tag)).await;
    assert_eq!(repaired.len(), 2);
    assert_eq!(repaired[0].id, first[0].id, "node-0 was touched");
    assert_eq!(repaired[1].node(), "node-1");
    assert_ne!(repaired[1].id, first[1].id, "node-1 got no new instance");
    assert_eq!(repaired[1].tags["shoal:cluster"], tag);
    let old = aws.instances(Some(&tag)).await;
    assert_eq!(
        old.iter()
            .find(|x| x.id == first[1].id)
            .map(|x| x.state.as_str()),
        Some("terminated")
    );
    c.report_all("ec", "ready", credentials);
    let v = c.wait_state("ec", "AVAILABLE", PLAN_TIMEOUT);
    let node1 = &shoal_e2e::vm::nodes(&v)[1];
    assert_eq!(node1["instance_id"], repaired[1].id.as_str());
    assert_eq!(node1["incarnation"], 1);

    c.shoal_ok(&["cluster", "delete", "ec", "--wait"]);
    assert!(aws.live(Some(&tag)).await.is_empty());
}
