//! Azure end to end: `shoal credential create azure` through the CLI, the certificate
//! "uploaded" to the strict fake of Entra ID and ARM (`shoal_e2e::fake_arm`), and the
//! real `shoal serve` pointed at the fake through `SHOAL_AZURE_AUTHORITY_HOST` and
//! `SHOAL_AZURE_ARM_ENDPOINT`, as an operator of a sovereign cloud would.
//!
//! The fake runs inside the test process on loopback (a multi-threaded runtime, since
//! the test blocks on CLI commands while the fake answers the coordinator). Nobody
//! boots the fake's VMs, so a cluster ends CREATING with its plan published.
//!
//! Privileged (the coordinator also sets up its local provider): run as root with
//! `cargo test -p shoal-e2e --test cloud_azure -- --include-ignored`, after
//! `cargo build --workspace --bins`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::fake_arm::FakeAzure;

const TOOLS: &[&str] = &["cloud-init", "ip", "nsenter"];
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5a1c2b3d-4e5f-4061-8728-39a4b5c6d7e8";
const SUB: &str = "0b1c2d3e-4f50-4617-a8b9-cadbecfd0e1f";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q op@example";
const OPERATOR_CIDR: &str = "198.51.100.7/32";
const ADVERTISE: &str = "https://203.0.113.10:8787";
/// The test stands in for the agents and reports once, not every interval: no
/// liveness, or the sweep would mark its nodes lost while a test runs.
const SERVE_ARGS: &[&str] = &["--advertise-url", ADVERTISE, "--report-interval", "0"];
const PLAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The fake (role granted to the app; no certificate uploaded yet) and a coordinator
/// that talks to it.
async fn setup() -> (FakeAzure, TestCoordinator) {
    shoal_e2e::require_privileges(TOOLS);
    let fake = FakeAzure::start().await;
    fake.grant_role(CLIENT, SUB);
    let url = fake.url();
    let c = TestCoordinator::start_with_env(
        SERVE_ARGS,
        &[
            ("SHOAL_AZURE_AUTHORITY_HOST", url.as_str()),
            ("SHOAL_AZURE_ARM_ENDPOINT", url.as_str()),
        ],
    );
    (fake, c)
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `shoal credential create azure NAME …`; returns what it printed.
fn credential_create(c: &TestCoordinator, name: &str) -> String {
    c.shoal_ok(&[
        "credential",
        "create",
        "azure",
        name,
        "--tenant-id",
        TENANT,
        "--client-id",
        CLIENT,
        "--subscription-id",
        SUB,
    ])
}

fn credential_dir(c: &TestCoordinator, name: &str) -> std::path::PathBuf {
    c.state_dir.join("credentials/azure").join(name)
}

/// What the operator does in the Entra admin center: upload the certificate.
fn upload_certificate(fake: &FakeAzure, c: &TestCoordinator, name: &str) {
    let pem = std::fs::read_to_string(credential_dir(c, name).join("cert.pem")).expect("cert.pem");
    fake.register_app(TENANT, CLIENT, &pem);
}

fn create_args<'a>(name: &'a str, credential: &'a str, ssh: &'a str) -> Vec<&'a str> {
    vec![
        "cluster",
        "create",
        name,
        "--provider",
        "azure",
        "--credential",
        credential,
        "--nodes",
        "3",
        "--region",
        "westeurope",
        "--image",
        "Canonical:ubuntu-24_04-lts:server:latest",
        "--instance-type",
        "Standard_D2s_v5",
        "--operator-cidr",
        OPERATOR_CIDR,
        "--set",
        ssh,
    ]
}

/// The cluster's resource group name, from what `show` says to look for.
fn group_of(v: &Value) -> String {
    let r = v["resources"]
        .as_str()
        .expect("show names the resource group");
    r.strip_prefix("resource group ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no resource group in {r:?}"))
        .to_string()
}

fn group_path(group: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{group}")
}

fn arm_requests(fake: &FakeAzure) -> Vec<shoal_e2e::fake_arm::RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| !r.is_token_request())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cloud-init (for `cloud-init schema`)"]
async fn from_credential_create_to_a_three_node_cluster_and_back() {
    let (fake, c) = setup().await;

    // 1. The credential: a private key only the coordinator's user can read, and a
    //    certificate to upload, with instructions.
    let printed = credential_create(&c, "prod");
    let dir = credential_dir(&c, "prod");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&c.state_dir.join("credentials")), 0o700);
    assert_eq!(mode(&dir.join("cert.pem")), 0o644);
    let cert_path = dir.join("cert.pem").display().to_string();
    for needle in [
        cert_path.as_str(),
        "Upload certificate",
        CLIENT,
        "Contributor",
        "--credential prod",
    ] {
        assert!(printed.contains(needle), "{needle:?} not in:\n{printed}");
    }
    let key = std::fs::read_to_string(dir.join("key.pem")).expect("key");
    assert!(!printed.contains(&key[40..80]), "the key is never printed");
    let listed: Value =
        serde_json::from_str(&c.shoal_ok(&["credential", "list", "--json"])).expect("json");
    assert_eq!(listed[0]["name"], "prod");
    assert_eq!(listed[0]["azure"]["client_id"], CLIENT);
    assert!(listed[0]["problem"].is_null(), "{listed:#}");
    upload_certificate(&fake, &c, "prod");

    // 2. The cluster, from an SSH public key file as operators give it.
    let ssh_file = c.state_dir.join("id_ed25519.pub");
    std::fs::write(&ssh_file, format!("{SSH_KEY}\n")).expect("ssh key");
    let ssh = format!("ssh-public-key={}", ssh_file.display());
    let out = c.shoal(&create_args("az3", "prod", &ssh));
    assert!(out.status.success(), "create: {}", text(&out));
    let v = c.wait_plan("az3", PLAN_TIMEOUT);
    let group = group_of(&v);
    assert!(group.starts_with("shoal-az3-"), "{group}");
    let rg = group_path(&group);

    // The resource group, network and security group, as asked.
    let g = fake.resource(&rg).expect("resource group");
    assert_eq!(g["location"], "westeurope");
    let tag = group.trim_start_matches("shoal-");
    assert_eq!(g["tags"]["shoal:cluster"], tag);
    let vnet = fake
        .resource(&format!(
            "{rg}/providers/Microsoft.Network/virtualNetworks/shoal-vnet"
        ))
        .expect("vnet");
    assert_eq!(
        vnet["properties"]["subnets"][0]["properties"]["addressPrefix"],
        "10.78.0.0/24"
    );
    let nsg = fake
        .resource(&format!(
            "{rg}/providers/Microsoft.Network/networkSecurityGroups/shoal-nsg"
        ))
        .expect("nsg");
    let rules = nsg["properties"]["securityRules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rules.iter().any(|r| r["properties"]["protocol"] == "Udp"
            && r["properties"]["destinationPortRange"] == "4789"
            && r["properties"]["access"] == "Allow"),
        "VXLAN is open between nodes: {rules:#?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["properties"]["sourceAddressPrefix"] == OPERATOR_CIDR),
        "the operator's range is allowed in: {rules:#?}"
    );

    // Per node: a NIC with its private address, a VM with the size, image, SSH key and
    // tags asked for; show and the plan list the same ids and addresses.
    let shown = v["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(shown.len(), 3);
    let mut cluster_keys = Vec::new();
    let mut expected_plan = Vec::new();
    for node in &shown {
        let id = node["id"].as_str().expect("node id");
        let nic = fake
            .resource(&format!(
                "{rg}/providers/Microsoft.Network/networkInterfaces/{id}-nic"
            ))
            .expect("nic");
        let ip = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
            .as_str()
            .expect("private address")
            .to_string();
        assert!(ip.starts_with("10.78.0."), "{ip}");
        assert_eq!(nic["properties"]["networkSecurityGroup"]["id"], nsg["id"]);
        let vm_id = format!("{rg}/providers/Microsoft.Compute/virtualMachines/{id}");
        let vm = fake.resource(&vm_id).expect("vm");
        assert_eq!(vm["properties"]["provisioningState"], "Succeeded");
        assert_eq!(vm["tags"]["shoal:cluster"], tag);
        assert_eq!(vm["tags"]["shoal:node"], id);
        assert_eq!(node["instance_id"], vm_id.as_str());
        assert_eq!(node["private_ip"], ip.as_str());
        assert_eq!(node["resource-group"], group.as_str());
        assert_eq!(node["vm-state"], "running");
        expected_plan.push((id.to_string(), ip, vm_id.clone()));

        let body = fake.accepted_body(&vm_id).expect("the VM's PUT body");
        let p = &body["properties"];
        assert_eq!(p["hardwareProfile"]["vmSize"], "Standard_D2s_v5");
        assert_eq!(
            p["storageProfile"]["imageReference"],
            json!({"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"})
        );
        assert_eq!(
            p["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
            SSH_KEY
        );
        // Custom data: a cloud-config that cloud-init accepts, whose agent configuration
        // points at the advertised URL with the cluster's key and this node's id.
        let custom = STANDARD
            .decode(p["osProfile"]["customData"].as_str().expect("customData"))
            .expect("base64");
        shoal_e2e::check_cloud_init_schema(&custom, id);
        let cfg = shoal::userdata::agent_config(&custom).expect("a Shoal user-data document");
        assert_eq!(cfg.metadata_url, ADVERTISE);
        assert_eq!(cfg.node_id, id);
        cluster_keys.push(cfg.cluster_key);
    }
    cluster_keys.dedup();
    assert_eq!(cluster_keys.len(), 1, "one cluster key");
    let (status, body) = c.metadata(&cluster_keys[0]);
    assert_eq!(status, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).expect("plan");
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
    assert_eq!(planned, expected_plan);

    // Every ARM call carried an api-version the fake knows, none was refused, and the
    // token was fetched once and reused.
    let arm = arm_requests(&fake);
    assert!(arm.iter().all(|r| r.api_version.is_some()));
    assert!(
        arm.iter().all(|r| r.status < 400),
        "{:#?}",
        arm.iter().filter(|r| r.status >= 400).collect::<Vec<_>>()
    );
    assert_eq!(fake.token_requests(), 1);
    let log = c.log_text();
    assert!(!log.contains("eyJ"), "no token or assertion in the log");

    // 3. Delete: the resource group, and everything with it.
    let out = c.shoal(&["cluster", "delete", "az3", "--wait"]);
    assert!(
        out.status.success(),
        "delete: {}\n{}",
        text(&out),
        c.log_text()
    );
    assert!(fake.resource(&rg).is_none());
    assert_eq!(fake.resource_count(), 0, "nothing left on the fake");
    assert_eq!(c.metadata(&cluster_keys[0]).0, 404);
    let out = c.shoal(&["cluster", "delete", "az3", "--wait"]);
    assert!(out.status.success(), "second delete: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cloud-init (for `cloud-init schema`)"]
async fn an_unknown_certificate_fails_clearly_and_creates_nothing() {
    let (fake, c) = setup().await;
    // The app knows an older certificate, not the one of the credential used.
    credential_create(&c, "old");
    credential_create(&c, "new");
    upload_certificate(&fake, &c, "old");
    let ssh = format!("ssh-public-key={SSH_KEY}");
    let mut args = create_args("nocert", "new", &ssh);
    args.push("--wait");
    let started = Instant::now();
    let out = c.shoal(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("cluster nocert FAILED")
            && stderr.contains("invalid_client")
            && stderr.contains("AADSTS700027"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an authentication failure is not retried: {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(
            "`shoal cluster delete nocert` removes what was made (resource group shoal-nocert-"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("eyJ") && !c.log_text().contains("eyJ"),
        "no client assertion in messages or logs"
    );
    assert!(
        arm_requests(&fake).is_empty(),
        "no ARM call without a token"
    );
    assert_eq!(fake.resource_count(), 0, "nothing was made");

    // Deleting needs a token too, and says why it cannot; once the operator uploads the
    // right certificate, it goes.
    let out = c.shoal(&["cluster", "delete", "nocert", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AADSTS700027"),
        "{}",
        text(&out)
    );
    upload_certificate(&fake, &c, "new");
    let out = c.shoal(&["cluster", "delete", "nocert", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.show("nocert")["state"], "DELETED");
    assert_eq!(fake.resource_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cloud-init (for `cloud-init schema`)"]
async fn a_429_storm_is_retried_honouring_retry_after() {
    let (fake, c) = setup().await;
    credential_create(&c, "prod");
    upload_certificate(&fake, &c, "prod");
    fake.set_lro_retry_after(0);
    fake.throttle("PUT", "/virtualMachines/node-1", 4, 1);
    let ssh = format!("ssh-public-key={SSH_KEY}");
    let out = c.shoal(&create_args("storm", "prod", &ssh));
    assert!(out.status.success(), "create: {}", text(&out));
    let v = c.wait_plan("storm", PLAN_TIMEOUT);
    assert!(v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .all(|n| n["private_ip"].is_string() && n["vm-state"] == "running"));

    // Four throttled attempts, each retried after the Retry-After ARM sent, then one
    // accepted; the other nodes went on meanwhile.
    let puts: Vec<_> = arm_requests(&fake)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/virtualMachines/node-1"))
        .collect();
    let statuses: Vec<u16> = puts.iter().map(|r| r.status).collect();
    assert!(
        statuses.len() == 5 && statuses[..4] == [429; 4] && (200..300).contains(&statuses[4]),
        "{puts:#?}"
    );
    for w in puts.windows(2).take(4) {
        assert!(
            w[1].at.duration_since(w[0].at) >= Duration::from_millis(950),
            "Retry-After: 1 honoured: {puts:#?}"
        );
    }
    let out = c.shoal(&["cluster", "delete", "storm", "--wait"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    assert_eq!(fake.resource_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cloud-init (for `cloud-init schema`)"]
async fn a_failed_vm_deployment_fails_the_cluster_and_delete_removes_everything() {
    let (fake, c) = setup().await;
    credential_create(&c, "prod");
    upload_certificate(&fake, &c, "prod");
    fake.set_lro_retry_after(0);
    let message = "OS Provisioning for VM 'node-2' did not finish in the allotted time.";
    fake.fail_vm_deployment("node-2", "OSProvisioningTimedOut", message);
    let ssh = format!("ssh-public-key={SSH_KEY}");
    let mut args = create_args("broken", "prod", &ssh);
    args.push("--wait");
    let out = c.shoal(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("cluster broken FAILED")
            && stderr.contains("OSProvisioningTimedOut")
            && stderr.contains(message),
        "{stderr}"
    );
    // What exists is listed: the three VMs, the failed one as failed, and the group.
    let v = c.show("broken");
    assert_eq!(v["state"], "FAILED");
    let group = group_of(&v);
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    for n in &nodes {
        let id = n["id"].as_str().expect("id");
        assert_eq!(
            n["instance_id"],
            format!(
                "{}/providers/Microsoft.Compute/virtualMachines/{id}",
                group_path(&group)
            )
            .as_str(),
            "{v:#}"
        );
        let want = if id == "node-2" { "failed" } else { "running" };
        assert_eq!(n["vm-state"], want, "{v:#}");
    }
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains("VM failed"), "{human}");
    assert!(fake.resource(&group_path(&group)).is_some());

    // Delete after the failure removes the group and everything in it.
    let out = c.shoal(&["cluster", "delete", "broken", "--wait"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    assert!(fake.resource(&group_path(&group)).is_none());
    assert_eq!(fake.resource_count(), 0, "nothing leaked");
}

/// A node's cluster key and token, read out of its user-data as cloud-init would.
fn credentials(user_data: &[u8]) -> (String, String) {
    let cfg = shoal::userdata::agent_config(user_data)
        .expect("the user-data holds the agent's configuration");
    (cfg.cluster_key, cfg.node_token)
}

/// The ARM ids of a node's VM, NIC, public IP and OS disk in group `rg`.
fn node_resources(rg: &str, node: &str) -> [String; 4] {
    [
        format!("{rg}/providers/Microsoft.Compute/virtualMachines/{node}"),
        format!("{rg}/providers/Microsoft.Network/networkInterfaces/{node}-nic"),
        format!("{rg}/providers/Microsoft.Network/publicIPAddresses/{node}-pip"),
        format!("{rg}/providers/Microsoft.Compute/disks/{node}-osdisk"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cloud-init (for `cloud-init schema`)"]
async fn a_cluster_scales_up_and_down_and_has_a_node_repaired_on_azure() {
    let (fake, c) = setup().await;
    credential_create(&c, "prod");
    upload_certificate(&fake, &c, "prod");
    let ssh = format!("ssh-public-key={SSH_KEY}");
    let mut args = create_args("azs", "prod", &ssh);
    args[8] = "2";
    c.shoal_ok(&args);
    let v = c.wait_plan("azs", PLAN_TIMEOUT);
    let rg = group_path(&group_of(&v));
    let tag = group_of(&v).trim_start_matches("shoal-").to_string();
    // Nobody boots the fake's VMs: the test reports for their agents.
    c.report_all("azs", "ready", credentials);
    c.wait_state("azs", "AVAILABLE", PLAN_TIMEOUT);
    let vm_id = |v: &Value| v["properties"]["vmId"].as_str().unwrap_or("").to_string();
    let first = [0, 1].map(|i| {
        fake.resource(&node_resources(&rg, &format!("node-{i}"))[0])
            .map(|v| vm_id(&v))
            .expect("vm")
    });

    // Up: two more workers, each a VM with its NIC, public IP and disk, tagged.
    c.shoal_ok(&["cluster", "scale", "azs", "--nodes", "3"]);
    c.wait_generation("azs", 2, PLAN_TIMEOUT);
    for n in ["node-2", "node-3"] {
        let [vm, nic, pip, disk] = node_resources(&rg, n);
        let vm = fake.resource(&vm).unwrap_or_else(|| panic!("{n}'s VM"));
        assert_eq!(vm["tags"]["shoal:cluster"], tag.as_str());
        assert_eq!(vm["tags"]["shoal:node"], n);
        for r in [nic, pip, disk] {
            assert!(fake.resource(&r).is_some(), "{r} missing");
        }
    }
    c.report_all("azs", "ready", credentials);
    c.wait_state("azs", "AVAILABLE", PLAN_TIMEOUT);

    // Down to one worker: node-3 and node-2 drain, then their VMs go with their NICs,
    // public IPs and disks; the rest of the group stays.
    c.shoal_ok(&["cluster", "scale", "azs", "--nodes", "1"]);
    c.wait_generation("azs", 3, PLAN_TIMEOUT);
    for n in ["node-2", "node-3"] {
        assert_eq!(c.report_as("azs", n, "drained", credentials), 204);
    }
    c.wait_generation("azs", 4, PLAN_TIMEOUT);
    c.report_all("azs", "ready", credentials);
    c.wait_state("azs", "AVAILABLE", PLAN_TIMEOUT);
    for n in ["node-2", "node-3"] {
        for r in node_resources(&rg, n) {
            assert!(fake.resource(&r).is_none(), "{r} is left");
        }
    }
    assert_eq!(fake.resources_of_type("Microsoft.Compute/disks").len(), 2);
    for (i, before) in first.iter().enumerate() {
        let now = fake
            .resource(&node_resources(&rg, &format!("node-{i}"))[0])
            .map(|v| vm_id(&v));
        assert_eq!(
            now.as_deref(),
            Some(before.as_str()),
            "node-{i} was touched"
        );
    }

    // Repair node-1: a new VM (and disk) under the same names, node-0 untouched.
    c.shoal_ok(&["cluster", "repair", "azs", "--node", "node-1"]);
    c.wait_generation("azs", 5, PLAN_TIMEOUT);
    let [vm, nic, _, disk] = node_resources(&rg, "node-1");
    let repaired = fake.resource(&vm).expect("node-1's new VM");
    assert_ne!(vm_id(&repaired), first[1], "node-1 got no new VM");
    assert_eq!(repaired["tags"]["shoal:node"], "node-1");
    assert!(fake.resource(&nic).is_some() && fake.resource(&disk).is_some());
    let node0 = fake
        .resource(&node_resources(&rg, "node-0")[0])
        .map(|v| vm_id(&v));
    assert_eq!(node0.as_deref(), Some(first[0].as_str()));
    // The old VM's custom data is not the new one's: the node's token was replaced.
    c.report_all("azs", "ready", credentials);
    c.wait_state("azs", "AVAILABLE", PLAN_TIMEOUT);
    // Every ARM call was accepted: nothing was deleted while still in use.
    let refused: Vec<_> = arm_requests(&fake)
        .into_iter()
        .filter(|r| r.status >= 400)
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");

    c.shoal_ok(&["cluster", "delete", "azs", "--wait"]);
    assert_eq!(fake.resource_count(), 0, "nothing left on the fake");
}
