//! The Azure provider against the strict fake of ARM and Entra ID's token endpoint
//! (`shoal_e2e::fake_arm`), in-process on loopback: credentials, tokens, a 3-node
//! cluster, throttling, failures, deletion.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use shoal::providers::azure::arm::ArmSettings;
use shoal::providers::azure::auth::{Endpoints, TokenSource};
use shoal::providers::azure::credentials::{self, AzureCredential, CredentialError};
use shoal::providers::azure::USER_DATA_LIMIT as AZURE_LIMIT;
use shoal::providers::azure::{AzureProvider, API_COMPUTE, API_NETWORK};
use shoal::providers::{ClusterRef, NodeRequest, Provider, ProviderError, ProviderParams, VmState};
use shoal_e2e::fake_arm::FakeAzure;
use shoal_protocol::backoff::Backoff;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5a1c2b3d-4e5f-4061-8728-39a4b5c6d7e8";
const SUB: &str = "0b1c2d3e-4f50-4617-a8b9-cadbecfd0e1f";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q op@example";

/// A state directory under Cargo's test scratch space, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shoal_e2e::unique_name("azst"));
        fs::create_dir_all(&p).expect("state dir");
        StateDir(p)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// RSA key generation takes seconds in a debug build: the credentials most tests use
/// are made once and kept in Cargo's scratch space, then copied into each test's own
/// state directory. `credential_create_*` makes a fresh one.
fn template(name: &str) -> PathBuf {
    static DIRS: OnceLock<PathBuf> = OnceLock::new();
    let root = DIRS
        .get_or_init(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("azure-credential-templates"));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if credentials::load_azure(root, name).is_err() {
        let _ = fs::remove_dir_all(root.join("credentials/azure").join(name));
        match credentials::create_azure(root, name, TENANT, CLIENT, SUB) {
            Ok(_) | Err(CredentialError::Exists { .. }) => {}
            Err(e) => panic!("template credential {name}: {e}"),
        }
    }
    root.join("credentials/azure").join(name)
}

/// Copies template credential `template_name` into `state` as `name`.
fn install_credential(state: &Path, template_name: &str, name: &str) -> AzureCredential {
    let from = template(template_name);
    let to = state.join("credentials/azure").join(name);
    fs::create_dir_all(&to).expect("credential dir");
    for d in [
        state.join("credentials"),
        state.join("credentials/azure"),
        to.clone(),
    ] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    for f in ["key.pem", "cert.pem", "credential.json"] {
        fs::copy(from.join(f), to.join(f)).expect("copy credential file");
    }
    // The stored name is the template's; rewrite it to the installed one.
    let meta = to.join("credential.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&meta).expect("read")).expect("json");
    v["name"] = json!(name);
    fs::write(&meta, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    credentials::load_azure(state, name).expect("installed credential loads")
}

fn fast_settings() -> ArmSettings {
    ArmSettings {
        backoff: Backoff {
            initial: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            deadline: Duration::from_secs(30),
        },
        lro_timeout: Duration::from_secs(60),
        default_poll: Duration::from_millis(100),
        max_poll: Duration::from_secs(5),
    }
}

struct Env {
    fake: FakeAzure,
    state: StateDir,
    provider: AzureProvider,
    params: ProviderParams,
    cred: AzureCredential,
}

impl Env {
    /// A fake with the credential's certificate uploaded and a role granted.
    async fn new() -> Env {
        Env::with(fast_settings(), true, true).await
    }

    async fn with(settings: ArmSettings, upload_cert: bool, grant_role: bool) -> Env {
        let fake = FakeAzure::start().await;
        let state = StateDir::new();
        let cred = install_credential(&state.0, "main", "prod");
        if upload_cert {
            let pem = fs::read_to_string(&cred.cert_path).expect("cert.pem");
            fake.register_app(TENANT, CLIENT, &pem);
        }
        if grant_role {
            fake.grant_role(CLIENT, SUB);
        }
        fake.set_lro_retry_after(0);
        let mut extra = BTreeMap::new();
        extra.insert("authority-host".to_string(), fake.url());
        extra.insert("arm-endpoint".to_string(), fake.url());
        extra.insert("ssh-public-key".to_string(), SSH_KEY.to_string());
        let params = ProviderParams {
            region: Some("westeurope".into()),
            image: Some("Canonical:ubuntu-24_04-lts:server:latest".into()),
            instance_type: Some("Standard_D2s_v5".into()),
            credential: Some("prod".into()),
            exposed_ports: vec![8080, 8440],
            operator_cidr: Some("198.51.100.7/32".into()),
            extra,
        };
        let provider = AzureProvider::with_settings(&state.0, settings).expect("provider");
        Env {
            fake,
            state,
            provider,
            params,
            cred,
        }
    }

    fn arm_requests(&self) -> Vec<shoal_e2e::fake_arm::RecordedRequest> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| !r.is_token_request())
            .collect()
    }
}

fn cluster() -> ClusterRef {
    ClusterRef {
        name: "demo".into(),
        uid: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
    }
}

fn nodes(n: u32) -> Vec<NodeRequest> {
    (0..n)
        .map(|i| NodeRequest {
            incarnation: 0,
            node_id: format!("node-{i}"),
            index: i,
            user_data: format!(
                "#cloud-config\n# node {i}\nwrite_files:\n  - path: /etc/shoal/node\n    content: node-{i}\n"
            )
            .into_bytes(),
            disks: None,
        })
        .collect()
}

fn group_path(c: &ClusterRef) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/shoal-{}", c.tag())
}

#[tokio::test]
async fn credential_create_writes_a_private_key_and_an_uploadable_certificate() {
    let state = StateDir::new();
    let cred = credentials::create_azure(&state.0, "lab", TENANT, CLIENT, SUB).expect("create");

    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&cred.key_path), 0o600, "key.pem must be private");
    assert_eq!(mode(&cred.dir), 0o700);
    assert_eq!(mode(&cred.cert_path), 0o644);
    assert_eq!(cred.key_path, state.0.join("credentials/azure/lab/key.pem"));

    // The certificate parses as X.509 and its thumbprints are what we print.
    let pem = fs::read_to_string(&cred.cert_path).expect("cert.pem");
    let der = shoal_e2e::fake_arm::pem_block(&pem, "CERTIFICATE").expect("PEM certificate");
    let der_ref = rustls_pki_types_der(&der);
    webpki::EndEntityCert::try_from(&der_ref).expect("an X.509 certificate");
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    let hex: String = sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(cred.info.thumbprint_sha1, hex);
    assert_eq!(
        cred.x5t_s256(),
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der))
    );
    let key_text = fs::read_to_string(&cred.key_path).expect("key");
    assert!(key_text.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        !pem.contains("PRIVATE KEY"),
        "the certificate file holds no key"
    );

    let meta: Value =
        serde_json::from_slice(&fs::read(cred.dir.join("credential.json")).expect("json"))
            .expect("json");
    assert_eq!(meta["tenant_id"], TENANT);
    assert_eq!(meta["client_id"], CLIENT);
    assert_eq!(meta["subscription_id"], SUB);
    assert_eq!(meta["thumbprint_sha1"], hex.as_str());
    assert!(
        !String::from_utf8_lossy(&fs::read(cred.dir.join("credential.json")).expect("r"))
            .contains("PRIVATE")
    );

    let text = cred.instructions();
    for needle in [
        cred.cert_path.to_string_lossy().as_ref(),
        "Certificates & secrets",
        CLIENT,
        &format!("/subscriptions/{SUB}"),
        "Contributor",
        hex.as_str(),
    ] {
        assert!(
            text.contains(needle),
            "instructions lack {needle:?}:\n{text}"
        );
    }
    assert!(
        !text.contains(&key_text[30..60]),
        "instructions never show the key"
    );

    // Never overwritten.
    let again = credentials::create_azure(&state.0, "lab", TENANT, CLIENT, SUB);
    assert!(
        matches!(again, Err(CredentialError::Exists { .. })),
        "{again:?}"
    );
    assert_eq!(fs::read_to_string(&cred.key_path).expect("key"), key_text);

    let listed = credentials::list(&state.0).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "lab");
    assert_eq!(
        listed[0].azure.as_ref().map(|a| a.client_id.as_str()),
        Some(CLIENT)
    );

    let loaded = credentials::load_azure(&state.0, "lab").expect("load");
    assert_eq!(loaded.info, cred.info);

    // A key others can read is refused, with the fix in the message.
    fs::set_permissions(&cred.key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = credentials::load_azure(&state.0, "lab").expect_err("world-readable key");
    assert!(e.to_string().contains("chmod 600"), "{e}");

    let missing = credentials::load_azure(&state.0, "nope").expect_err("missing");
    assert!(missing
        .to_string()
        .contains("shoal credential create azure nope"));
}

fn rustls_pki_types_der(der: &[u8]) -> rustls_pki_types::CertificateDer<'static> {
    rustls_pki_types::CertificateDer::from(der.to_vec())
}

#[tokio::test]
async fn client_assertion_is_a_ps256_jwt_naming_the_certificate() {
    let env = Env::new().await;
    let endpoints = Endpoints::resolve(&env.params.extra).expect("endpoints");
    let cred = Arc::new(credentials::load_azure(&env.state.0, "prod").expect("load"));
    let source = TokenSource::new(
        reqwest::Client::new(),
        cred.clone(),
        &endpoints,
        fast_settings().backoff,
    );
    let jwt = source.client_assertion().expect("assertion");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("json")
    };
    let header = decode(parts[0]);
    let claims = decode(parts[1]);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5t#S256"], env.cred.x5t_s256().as_str());
    assert_eq!(
        claims["aud"],
        format!("{}/{TENANT}/oauth2/v2.0/token", env.fake.url()).as_str()
    );
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 36));
    let (nbf, exp) = (
        claims["nbf"].as_i64().expect("nbf"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert!(
        exp > nbf && exp - nbf <= 600,
        "assertion lives at most 10 minutes"
    );
    assert_ne!(
        source.client_assertion().expect("second"),
        jwt,
        "each assertion has its own jti"
    );

    // The fake verifies the signature against the uploaded certificate and issues a token.
    let token = source.token().await.expect("token");
    assert!(!format!("{token:?}").contains(&token.header_value()[7..]));
    assert_eq!(env.fake.token_requests(), 1);
}

#[tokio::test]
async fn a_token_is_cached_across_calls_and_refreshed_near_expiry() {
    let env = Env::new().await;
    let c = cluster();
    // The cluster does not exist yet: describe answers an empty list.
    assert!(env
        .provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe")
        .is_empty());
    assert!(env
        .provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe")
        .is_empty());
    assert_eq!(
        env.fake.token_requests(),
        1,
        "the second call reuses the cached token"
    );
    assert_eq!(env.arm_requests().len(), 2);

    // Tokens that expire within five minutes are replaced before use.
    let env = Env::new().await;
    env.fake.set_token_lifetime(240);
    env.provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe");
    env.provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe");
    assert_eq!(env.fake.token_requests(), 2);
}

#[tokio::test]
async fn three_node_cluster_is_created_described_and_deleted() {
    let env = Env::new().await;
    // Realistic pacing: operations ask for a poll every second.
    env.fake.set_lro_retry_after(1);
    let c = cluster();
    let reqs = nodes(3);
    let started = Instant::now();
    let infos = env
        .provider
        .create_nodes(&c, &env.params, &reqs)
        .await
        .expect("create");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After of the operations was honoured"
    );
    assert_eq!(infos.len(), 3);

    let rg = group_path(&c);
    let group = env.fake.resource(&rg).expect("resource group");
    assert_eq!(group["location"], "westeurope");
    assert_eq!(group["tags"]["shoal:cluster"], c.tag().as_str());

    let vnet = env
        .fake
        .resource(&format!(
            "{rg}/providers/Microsoft.Network/virtualNetworks/shoal-vnet"
        ))
        .expect("vnet");
    assert_eq!(
        vnet["properties"]["addressSpace"]["addressPrefixes"],
        json!(["10.78.0.0/16"])
    );
    assert_eq!(
        vnet["properties"]["subnets"][0]["properties"]["addressPrefix"],
        "10.78.0.0/24"
    );
    assert_eq!(vnet["properties"]["provisioningState"], "Succeeded");

    let nsg = env
        .fake
        .resource(&format!(
            "{rg}/providers/Microsoft.Network/networkSecurityGroups/shoal-nsg"
        ))
        .expect("nsg");
    let rules = nsg["properties"]["securityRules"]
        .as_array()
        .expect("rules")
        .clone();
    assert!(
        rules.iter().any(|r| r["properties"]["protocol"] == "Udp"
            && r["properties"]["destinationPortRange"] == "4789"
            && r["properties"]["access"] == "Allow"
            && r["properties"]["sourceAddressPrefix"] == "10.78.0.0/24"),
        "a rule opens VXLAN between nodes: {rules:?}"
    );
    let operator = rules
        .iter()
        .find(|r| r["properties"]["sourceAddressPrefix"] == "198.51.100.7/32")
        .expect("an operator rule");
    assert_eq!(
        operator["properties"]["destinationPortRanges"],
        json!(["22", "8080", "8440"])
    );

    let mut nic_ips = Vec::new();
    for (req, info) in reqs.iter().zip(&infos) {
        let nic_id = format!(
            "{rg}/providers/Microsoft.Network/networkInterfaces/{}-nic",
            req.node_id
        );
        let nic = env.fake.resource(&nic_id).expect("nic");
        let ip = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
            .as_str()
            .expect("private ip")
            .to_string();
        assert!(ip.starts_with("10.78.0."), "{ip}");
        assert_eq!(info.private_ip.map(|a| a.to_string()), Some(ip.clone()));
        assert_eq!(nic["properties"]["networkSecurityGroup"]["id"], nsg["id"]);
        nic_ips.push(ip);

        let vm_id = format!(
            "{rg}/providers/Microsoft.Compute/virtualMachines/{}",
            req.node_id
        );
        assert_eq!(info.node_id, req.node_id);
        assert_eq!(info.instance_id, vm_id);
        assert_eq!(info.state, VmState::Running);
        assert!(info.details.contains_key("public-ip"));
        let vm = env.fake.resource(&vm_id).expect("vm");
        assert_eq!(vm["properties"]["provisioningState"], "Succeeded");
        assert_eq!(vm["tags"]["shoal:cluster"], c.tag().as_str());
        assert_eq!(vm["tags"]["shoal:node"], req.node_id.as_str());
        assert!(
            vm["properties"]["osProfile"].get("customData").is_none(),
            "ARM never shows custom data"
        );
        let body = env.fake.accepted_body(&vm_id).expect("accepted body");
        let p = &body["properties"];
        assert_eq!(p["hardwareProfile"]["vmSize"], "Standard_D2s_v5");
        assert_eq!(
            p["storageProfile"]["imageReference"],
            json!({"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"})
        );
        assert_eq!(p["osProfile"]["adminUsername"], "shoal");
        assert_eq!(
            p["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"],
            true
        );
        assert_eq!(
            p["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
            SSH_KEY
        );
        assert_eq!(
            p["networkProfile"]["networkInterfaces"][0]["id"]
                .as_str()
                .map(str::to_ascii_lowercase),
            Some(nic_id.to_ascii_lowercase())
        );
        let custom = STANDARD
            .decode(p["osProfile"]["customData"].as_str().expect("customData"))
            .expect("base64");
        assert_eq!(custom, req.user_data, "custom data is the node's user-data");
    }
    nic_ips.sort();
    nic_ips.dedup();
    assert_eq!(nic_ips.len(), 3, "distinct addresses");

    // Operations were followed through their status URLs.
    let arm = env.arm_requests();
    assert!(arm
        .iter()
        .any(|r| r.method == "GET" && r.path.contains("/operations/")));
    // Every ARM call carried an api-version the fake knows (it answers 400 otherwise).
    assert!(
        arm.iter().all(|r| r.api_version.is_some()),
        "every request has an api-version"
    );
    assert!(
        arm.iter().all(|r| r.status < 400),
        "no call was refused: {:?}",
        arm.iter().filter(|r| r.status >= 400).collect::<Vec<_>>()
    );
    assert!(arm
        .iter()
        .any(|r| r.api_version.as_deref() == Some(API_COMPUTE)));
    assert!(arm
        .iter()
        .any(|r| r.api_version.as_deref() == Some(API_NETWORK)));

    // describe lists the NICs' addresses (through paged lists).
    let described = env
        .provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe");
    assert_eq!(
        described
            .iter()
            .map(|n| (n.node_id.clone(), n.private_ip))
            .collect::<Vec<_>>(),
        infos
            .iter()
            .map(|n| (n.node_id.clone(), n.private_ip))
            .collect::<Vec<_>>()
    );
    assert!(described.iter().all(|n| n.state == VmState::Running));

    // A repeated create (after a coordinator crash) converges: nothing new, same addresses.
    let count = env.fake.resource_count();
    env.fake.set_lro_retry_after(0);
    let again = env
        .provider
        .create_nodes(&c, &env.params, &reqs)
        .await
        .expect("create again");
    assert_eq!(env.fake.resource_count(), count);
    assert_eq!(
        again.iter().map(|n| n.private_ip).collect::<Vec<_>>(),
        infos.iter().map(|n| n.private_ip).collect::<Vec<_>>()
    );

    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
    assert!(env.fake.resource(&rg).is_none());
    assert_eq!(
        env.fake.resource_count(),
        0,
        "the group took everything with it"
    );
    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete again is fine");
    assert!(env
        .provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe")
        .is_empty());
    assert_eq!(
        env.fake.token_requests(),
        1,
        "one token served the whole lifecycle"
    );
}

#[tokio::test]
async fn an_unknown_certificate_is_a_clear_auth_error_and_nothing_is_created() {
    let env = Env::with(fast_settings(), false, true).await;
    // The operator uploaded some other certificate, not this credential's.
    let other = install_credential(&env.state.0, "stranger", "other");
    env.fake.register_app(
        TENANT,
        CLIENT,
        &fs::read_to_string(&other.cert_path).expect("pem"),
    );
    let e = env
        .provider
        .create_nodes(&cluster(), &env.params, &nodes(3))
        .await
        .expect_err("unknown certificate");
    match &e {
        ProviderError::Api {
            provider,
            code,
            message,
            ..
        } => {
            assert_eq!(*provider, "azure");
            assert_eq!(code, "invalid_client");
            assert!(message.contains("AADSTS700027"), "{message}");
        }
        other => panic!("expected an Api error, got {other:?}"),
    }
    assert_eq!(
        env.fake.token_requests(),
        1,
        "an auth failure is not retried"
    );
    assert!(env.arm_requests().is_empty(), "no ARM call without a token");
    assert_eq!(env.fake.resource_count(), 0);
    assert!(
        !e.to_string().contains("eyJ"),
        "no assertion in the error: {e}"
    );
}

#[tokio::test]
async fn a_missing_role_fails_at_once_with_arms_message() {
    let env = Env::with(fast_settings(), true, false).await;
    let e = env
        .provider
        .create_nodes(&cluster(), &env.params, &nodes(1))
        .await
        .expect_err("no role");
    assert!(
        matches!(&e, ProviderError::Api { code, message, .. } if code == "AuthorizationFailed" && message.contains(CLIENT)),
        "{e:?}"
    );
    assert_eq!(env.arm_requests().len(), 1, "403 is not retried");
}

#[tokio::test]
async fn a_429_storm_is_retried_honouring_retry_after() {
    let env = Env::new().await;
    env.fake.throttle("PUT", "/virtualMachines/node-1", 3, 1);
    let c = cluster();
    let started = Instant::now();
    env.provider
        .create_nodes(&c, &env.params, &nodes(3))
        .await
        .expect("create after throttling");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "waited 3 × Retry-After: {:?}",
        started.elapsed()
    );
    let puts: Vec<_> = env
        .arm_requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/virtualMachines/node-1"))
        .collect();
    assert_eq!(puts.len(), 4, "three throttled attempts, then one accepted");
    assert_eq!(puts.iter().filter(|r| r.status == 429).count(), 3);
    for w in puts.windows(2) {
        assert!(
            w[1].at.duration_since(w[0].at) >= Duration::from_millis(950),
            "Retry-After: 1 honoured"
        );
    }
    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
}

#[tokio::test]
async fn a_429_storm_past_the_deadline_is_a_clear_error() {
    let mut settings = fast_settings();
    settings.backoff.deadline = Duration::from_secs(3);
    let env = Env::with(settings, true, true).await;
    env.fake.throttle("PUT", "/resourcegroups/", 1000, 1);
    let started = Instant::now();
    let e = env
        .provider
        .create_nodes(&cluster(), &env.params, &nodes(3))
        .await
        .expect_err("throttled for good");
    assert!(started.elapsed() < Duration::from_secs(10));
    match &e {
        ProviderError::Unavailable { message, .. } => {
            assert!(
                message.contains("429") && message.contains("deadline"),
                "{message}"
            );
            assert!(message.contains("TooManyRequests"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let attempts = env.arm_requests().len();
    assert!(
        (3..=4).contains(&attempts),
        "about one attempt per Retry-After: {attempts}"
    );
    assert_eq!(env.fake.resource_count(), 0);
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let env = Env::new().await;
    env.fake
        .server_error("PUT", "/networkInterfaces/node-0-nic", 2, 503);
    let c = cluster();
    env.provider
        .create_nodes(&c, &env.params, &nodes(1))
        .await
        .expect("create after 503s");
    let nic_puts = env
        .arm_requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/node-0-nic"))
        .count();
    assert_eq!(nic_puts, 3);

    // An image the marketplace does not have: ARM's 404 comes back at once, verbatim.
    let mut params = env.params.clone();
    params.image = Some("Canonical:no-such-offer:server:latest".into());
    let before = env.arm_requests().len();
    let e = env
        .provider
        .create_nodes(&c, &params, &nodes(1))
        .await
        .expect_err("bad image");
    assert!(
        matches!(&e, ProviderError::Api { code, .. } if code == "PlatformImageNotFound"),
        "{e:?}"
    );
    let vm_puts = env.arm_requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("virtualMachines"))
        .count();
    assert_eq!(vm_puts, 1);
    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
}

#[tokio::test]
async fn a_failed_vm_deployment_returns_arms_code_and_message_and_delete_cleans_up() {
    let env = Env::new().await;
    env.fake.fail_vm_deployment(
        "node-2",
        "OSProvisioningTimedOut",
        "OS Provisioning for VM 'node-2' did not finish in the allotted time.",
    );
    let c = cluster();
    let e = env
        .provider
        .create_nodes(&c, &env.params, &nodes(3))
        .await
        .expect_err("failed VM");
    match &e {
        ProviderError::Api {
            provider,
            operation,
            code,
            message,
        } => {
            assert_eq!(*provider, "azure");
            assert_eq!(code, "OSProvisioningTimedOut");
            assert_eq!(
                message,
                "OS Provisioning for VM 'node-2' did not finish in the allotted time."
            );
            assert!(operation.contains("node-2"), "{operation}");
        }
        other => panic!("expected an Api error, got {other:?}"),
    }
    // The other nodes were made; describe shows the failed one as failed.
    let described = env
        .provider
        .describe_nodes(&c, &env.params)
        .await
        .expect("describe");
    assert_eq!(described.len(), 3);
    assert_eq!(
        described
            .iter()
            .filter(|n| n.state == VmState::Failed)
            .count(),
        1
    );
    // What the engine does next: delete. Nothing is left.
    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
    assert_eq!(env.fake.resource_count(), 0);
}

#[tokio::test]
async fn bad_settings_are_config_errors_before_any_call() {
    let env = Env::new().await;
    let mut p = env.params.clone();
    p.extra.remove("ssh-public-key");
    let e = env
        .provider
        .create_nodes(&cluster(), &p, &nodes(1))
        .await
        .expect_err("no key");
    assert!(
        matches!(&e, ProviderError::Config { message, .. } if message.contains("ssh-public-key")),
        "{e}"
    );
    let mut p = env.params.clone();
    p.credential = Some("absent".into());
    let e = env
        .provider
        .create_nodes(&cluster(), &p, &nodes(1))
        .await
        .expect_err("no credential");
    assert!(
        e.to_string()
            .contains("shoal credential create azure absent"),
        "{e}"
    );
    let mut p = env.params.clone();
    p.extra.insert(
        "arm-endpoint".into(),
        "http://management.example.com".into(),
    );
    let e = env
        .provider
        .create_nodes(&cluster(), &p, &nodes(1))
        .await
        .expect_err("clear text");
    assert!(e.to_string().contains("loopback"), "{e}");
    let big = vec![NodeRequest {
        incarnation: 0,
        node_id: "node-0".into(),
        index: 0,
        user_data: vec![b'#'; AZURE_LIMIT + 1],
        disks: None,
    }];
    let e = env
        .provider
        .create_nodes(&cluster(), &env.params, &big)
        .await
        .expect_err("too big");
    assert!(e.to_string().contains("65535"), "{e}");
    assert_eq!(env.fake.requests().len(), 0);
    assert_eq!(env.provider.user_data_limit(), Some(65535));
}

/// The fake refuses what Azure refuses: it is only worth testing against if it does.
#[tokio::test]
async fn the_fake_is_strict() {
    let env = Env::new().await;
    let c = cluster();
    env.provider
        .create_nodes(&c, &env.params, &nodes(1))
        .await
        .expect("create");
    let endpoints = Endpoints::resolve(&env.params.extra).expect("endpoints");
    let source = TokenSource::new(
        reqwest::Client::new(),
        Arc::new(credentials::load_azure(&env.state.0, "prod").expect("cred")),
        &endpoints,
        fast_settings().backoff,
    );
    let auth = source.token().await.expect("token").header_value();
    let http = reqwest::Client::new();
    let base = env.fake.url();
    let rg = group_path(&c);
    let call = |method: reqwest::Method, path: String, body: Option<Value>, with_auth: bool| {
        let http = http.clone();
        let auth = auth.clone();
        let url = format!("{base}{path}");
        async move {
            let mut r = http.request(method, url);
            if with_auth {
                r = r.header("authorization", auth);
            }
            if let Some(b) = body {
                r = r
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = r.send().await.expect("send");
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            (
                status,
                v["error"]["code"].as_str().unwrap_or("").to_string(),
                v,
            )
        }
    };
    use reqwest::Method;
    let (s, code, _) = call(Method::GET, rg.clone(), None, true).await;
    assert_eq!((s, code.as_str()), (400, "MissingApiVersionParameter"));
    let (s, code, _) = call(
        Method::GET,
        format!("{rg}?api-version=2099-01-01"),
        None,
        true,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "InvalidApiVersionParameter"));
    let (s, code, _) = call(
        Method::GET,
        format!("{rg}?api-version=2021-04-01"),
        None,
        false,
    )
    .await;
    assert_eq!((s, code.as_str()), (401, "AuthenticationFailed"));

    let vm_path = |name: &str| {
        format!("{rg}/providers/Microsoft.Compute/virtualMachines/{name}?api-version={API_COMPUTE}")
    };
    let vm0 = env
        .fake
        .accepted_body(&format!(
            "{rg}/providers/Microsoft.Compute/virtualMachines/node-0"
        ))
        .expect("vm");
    // A VM without osProfile.
    let mut b = vm0.clone();
    b["properties"]
        .as_object_mut()
        .expect("obj")
        .remove("osProfile");
    let (s, code, v) = call(Method::PUT, vm_path("x"), Some(b), true).await;
    assert_eq!((s, code.as_str()), (400, "InvalidParameter"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("osProfile"),
        "{v}"
    );
    // Data disks as ARM's DataDisk requires them: a lun (0 to 63, unique), a
    // createOption, a size for an empty disk, a known deleteOption.
    let disk = json!({"lun": 0, "createOption": "Empty", "diskSizeGB": 10, "deleteOption": "Delete",
        "managedDisk": {"storageAccountType": "StandardSSD_LRS"}});
    for (change, field) in [
        (
            json!([{"createOption": "Empty", "diskSizeGB": 10}]),
            "dataDisks.lun",
        ),
        (
            json!([{"lun": 64, "createOption": "Empty", "diskSizeGB": 10}]),
            "lun",
        ),
        (json!([disk.clone(), disk.clone()]), "LUN 0"),
        (
            json!([{"lun": 1, "diskSizeGB": 10}]),
            "dataDisks.createOption",
        ),
        (
            json!([{"lun": 1, "createOption": "Blank", "diskSizeGB": 10}]),
            "createOption",
        ),
        (
            json!([{"lun": 1, "createOption": "Empty"}]),
            "dataDisks.diskSizeGB",
        ),
        (
            json!([{"lun": 1, "createOption": "Empty", "diskSizeGB": 0}]),
            "diskSizeGB",
        ),
        (
            json!([{"lun": 1, "createOption": "Empty", "diskSizeGB": 10, "deleteOption": "Keep"}]),
            "deleteOption",
        ),
        (
            json!([{"lun": 1, "createOption": "Empty", "diskSizeGB": 10, "managedDisk": {"storageAccountType": "Fast"}}]),
            "storageAccountType",
        ),
    ] {
        let mut b = vm0.clone();
        b["properties"]["storageProfile"]["dataDisks"] = change.clone();
        let (s, code, v) = call(Method::PUT, vm_path("x"), Some(b), true).await;
        assert_eq!(
            (s, code.as_str()),
            (400, "InvalidParameter"),
            "{change}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{change}: {v}");
    }
    // A VM pointing at a NIC that does not exist.
    let mut b = vm0.clone();
    b["properties"]["networkProfile"]["networkInterfaces"][0]["id"] = json!(format!(
        "{rg}/providers/Microsoft.Network/networkInterfaces/ghost"
    ));
    let (s, _, v) = call(Method::PUT, vm_path("x"), Some(b), true).await;
    assert_eq!(s, 400, "{v}");
    // Another VM on a NIC in use.
    let (s, code, _) = call(Method::PUT, vm_path("x"), Some(vm0.clone()), true).await;
    assert_eq!((s, code.as_str()), (400, "NicInUse"));
    // Custom data cannot change.
    let mut b = vm0.clone();
    b["properties"]["osProfile"]["customData"] = json!(STANDARD.encode("#cloud-config\n"));
    let (s, code, _) = call(Method::PUT, vm_path("node-0"), Some(b), true).await;
    assert_eq!((s, code.as_str()), (409, "PropertyChangeNotAllowed"));
    // Custom data over the limit.
    let mut b = vm0.clone();
    b["properties"]["osProfile"]["customData"] =
        json!(STANDARD.encode(vec![b'a'; AZURE_LIMIT + 1]));
    let (s, code, _) = call(Method::PUT, vm_path("y"), Some(b), true).await;
    assert_eq!((s, code.as_str()), (400, "InvalidParameter"));
    // A NIC on a subnet that does not exist.
    let nic = json!({"location": "westeurope", "properties": {"ipConfigurations": [{"name": "c", "properties": {
        "subnet": {"id": format!("{rg}/providers/Microsoft.Network/virtualNetworks/shoal-vnet/subnets/ghost")}}}]}});
    let (s, code, _) = call(
        Method::PUT,
        format!("{rg}/providers/Microsoft.Network/networkInterfaces/n?api-version={API_NETWORK}"),
        Some(nic),
        true,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "InvalidResourceReference"));
    // Re-PUT of the VNet without the subnet its NICs use.
    let vnet = json!({"location": "westeurope", "properties": {"addressSpace": {"addressPrefixes": ["10.78.0.0/16"]}, "subnets": []}});
    let (s, code, _) = call(
        Method::PUT,
        format!(
            "{rg}/providers/Microsoft.Network/virtualNetworks/shoal-vnet?api-version={API_NETWORK}"
        ),
        Some(vnet),
        true,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "InUseSubnetCannotBeDeleted"));
    // No location.
    let (s, code, _) = call(
        Method::PUT,
        format!("/subscriptions/{SUB}/resourceGroups/x?api-version=2021-04-01"),
        Some(json!({})),
        true,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "LocationRequired"));

    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
}

/// Each VM's custom data is a document `cloud-init schema` accepts.
#[tokio::test]
#[ignore = "needs root and cloud-init (for `cloud-init schema`)"]
async fn custom_data_passes_cloud_init_schema() {
    shoal_e2e::require_privileges(&["cloud-init"]);
    let env = Env::new().await;
    let c = cluster();
    let mut reqs = Vec::new();
    for i in 0..3u32 {
        let cfg = shoal_protocol::AgentConfig {
            metadata_url: "https://203.0.113.1:8787".into(),
            cluster_key: "ab".repeat(32),
            node_id: format!("node-{i}"),
            node_token: "cd".repeat(32),
            ca_cert_pem: None,
            deadline_secs: 1800,
        };
        let user_data =
            shoal::userdata::render_for("azure", &cfg, Some(AZURE_LIMIT)).expect("render");
        reqs.push(NodeRequest {
            incarnation: 0,
            node_id: format!("node-{i}"),
            index: i,
            user_data,
            disks: None,
        });
    }
    env.provider
        .create_nodes(&c, &env.params, &reqs)
        .await
        .expect("create");
    let dir = StateDir::new();
    for r in &reqs {
        let vm = env
            .fake
            .accepted_body(&format!(
                "{}/providers/Microsoft.Compute/virtualMachines/{}",
                group_path(&c),
                r.node_id
            ))
            .expect("vm");
        let mut doc = STANDARD
            .decode(
                vm["properties"]["osProfile"]["customData"]
                    .as_str()
                    .expect("customData"),
            )
            .expect("base64");
        if doc.starts_with(&[0x1f, 0x8b]) {
            let gz = dir.0.join(format!("{}.gz", r.node_id));
            fs::write(&gz, &doc).expect("write");
            doc = shoal_e2e::run(std::process::Command::new("gzip").arg("-dc").arg(&gz)).stdout;
        }
        let file = dir.0.join(format!("{}.yaml", r.node_id));
        fs::write(&file, &doc).expect("write");
        let out = std::process::Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&file)
            .output()
            .expect("run cloud-init");
        assert!(
            out.status.success(),
            "cloud-init schema refused the custom data of {}: {}{}",
            r.node_id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
}

/// A node's data disks are empty managed disks at LUN 0…N-1 in the VM's body, deleted
/// with it; the fake accepts the body (it checks the fields ARM requires).
#[tokio::test]
async fn data_disks_are_empty_managed_disks_in_the_vm_body() {
    let env = Env::new().await;
    let c = cluster();
    let mut reqs = nodes(1);
    reqs[0].disks = Some(shoal::blueprint::DiskSpec {
        count: 2,
        size_gb: 50,
    });
    env.provider
        .create_nodes(&c, &env.params, &reqs)
        .await
        .expect("create");
    let rg = group_path(&c);
    let body = env
        .fake
        .accepted_body(&format!(
            "{rg}/providers/Microsoft.Compute/virtualMachines/node-0"
        ))
        .expect("vm");
    let disks = body["properties"]["storageProfile"]["dataDisks"]
        .as_array()
        .cloned()
        .expect("dataDisks");
    assert_eq!(disks.len(), 2, "{disks:?}");
    for (lun, d) in disks.iter().enumerate() {
        assert_eq!(d["lun"], lun as u64);
        assert_eq!(d["createOption"], "Empty");
        assert_eq!(d["diskSizeGB"], 50);
        assert_eq!(d["deleteOption"], "Delete");
        assert!(d["managedDisk"]["storageAccountType"].is_string(), "{d}");
    }
    assert_eq!(
        shoal::providers::fixed_disk_ids("azure", 2),
        ["lun:0", "lun:1"],
        "the plan names them by LUN"
    );
    env.provider
        .delete_cluster(&c, &env.params)
        .await
        .expect("delete");
}
