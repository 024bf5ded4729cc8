//! A strict fake of Azure Resource Manager and of the Microsoft identity platform's
//! token endpoint, written from the public API reference, for testing Shoal's Azure
//! provider in-process on loopback. No emulator of Azure compute exists.
//!
//! What it checks, as Azure does:
//!
//! - **Tokens** (`POST /{tenant}/oauth2/v2.0/token`): the client-credentials grant
//!   with a certificate client assertion. The JWT's signature (PS256, or legacy RS256)
//!   is verified against a certificate "uploaded" to the app with
//!   [`FakeAzure::register_app`], found by its `x5t#S256` (or `x5t`) thumbprint;
//!   `aud` must be this endpoint's token URL, `iss` and `sub` the client id, `exp` in
//!   the future, `nbf` not in the future; the scope must be ARM's `/.default`. Errors
//!   come back as Entra sends them (`invalid_client`, `AADSTS700027: …`).
//! - **ARM**: a valid, unexpired bearer token on every call; a role for the token's
//!   app on the subscription ([`FakeAzure::grant_role`]), else 403
//!   `AuthorizationFailed`; an `api-version` that the resource provider knows, else 400
//!   `MissingApiVersionParameter`/`InvalidApiVersionParameter`; the required fields of
//!   every body and the existence of everything a body refers to (400 with ARM-style
//!   errors naming the field); properties that cannot change after creation
//!   (`customData`, `computerName`) do not change.
//! - **Asynchronous operations**: a PUT answers 201 (or 200) with
//!   `provisioningState: Creating`/`Updating` and an `Azure-AsyncOperation` URL whose
//!   status goes `InProgress` → `Succeeded` (or `Failed`) after a number of polls; a
//!   resource group DELETE answers 202 with a `Location` URL that answers 202 until the
//!   group and everything in it are gone, then 200. `Retry-After` is sent throughout.
//! - **Faults** on demand: N× 429 with `Retry-After`, N× 5xx, a VM deployment that ends
//!   `Failed` with a chosen code.
//!
//! Every request is recorded (method, path, `api-version`, status) for assertions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// API versions the fake accepts, per resource provider (a subset of the real lists).
pub const API_VERSIONS_RESOURCES: &[&str] = &[
    "2021-04-01",
    "2022-09-01",
    "2023-07-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-04-01",
];
/// `Microsoft.Network` API versions the fake accepts.
pub const API_VERSIONS_NETWORK: &[&str] = &[
    "2023-09-01",
    "2023-11-01",
    "2024-01-01",
    "2024-03-01",
    "2024-05-01",
    "2024-07-01",
    "2024-10-01",
];
/// `Microsoft.Compute` API versions the fake accepts.
pub const API_VERSIONS_COMPUTE: &[&str] = &[
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-04-01",
];

/// Regions the fake knows.
pub const LOCATIONS: &[&str] = &[
    "eastus",
    "eastus2",
    "westus",
    "westus2",
    "westus3",
    "centralus",
    "northcentralus",
    "southcentralus",
    "canadacentral",
    "brazilsouth",
    "northeurope",
    "westeurope",
    "uksouth",
    "ukwest",
    "francecentral",
    "germanywestcentral",
    "switzerlandnorth",
    "norwayeast",
    "swedencentral",
    "polandcentral",
    "italynorth",
    "eastasia",
    "southeastasia",
    "japaneast",
    "japanwest",
    "koreacentral",
    "australiaeast",
    "centralindia",
    "uaenorth",
    "southafricanorth",
];

/// Marketplace images the fake knows (publisher, offer, sku), case-insensitively.
pub const MARKETPLACE_IMAGES: &[(&str, &str, &str)] = &[
    ("Canonical", "ubuntu-24_04-lts", "server"),
    ("Canonical", "ubuntu-24_04-lts", "server-gen1"),
    (
        "Canonical",
        "0001-com-ubuntu-server-jammy",
        "22_04-lts-gen2",
    ),
    ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts"),
    ("Debian", "debian-12", "12-gen2"),
    ("Debian", "debian-12", "12"),
    ("RedHat", "RHEL", "9-lvm-gen2"),
];

const CUSTOM_DATA_MAX: usize = 65535;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, as sent.
    pub path: String,
    /// The `api-version` query parameter, if any.
    pub api_version: Option<String>,
    /// What the fake answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl RecordedRequest {
    /// Whether this was a token request.
    pub fn is_token_request(&self) -> bool {
        self.path.ends_with("/oauth2/v2.0/token")
    }
}

#[derive(Debug, Clone)]
enum FaultKind {
    Throttle { retry_after: u64 },
    Status { status: u16 },
}

#[derive(Debug, Clone)]
struct Fault {
    method: String,
    path_contains: String,
    remaining: u32,
    kind: FaultKind,
}

#[derive(Debug, Clone)]
struct AppCert {
    der: Vec<u8>,
    sha256: String,
    sha1: String,
}

#[derive(Debug, Clone)]
struct App {
    tenant: String,
    certs: Vec<AppCert>,
}

#[derive(Debug, Clone)]
struct Token {
    client_id: String,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Resource {
    id: String,
    rtype: String,
    group_key: String,
    /// What GET returns.
    view: Value,
    /// The last accepted PUT body.
    request: Value,
}

#[derive(Debug, Clone)]
enum OpKind {
    Put { key: String },
    DeleteGroup { group_key: String },
}

#[derive(Debug, Clone)]
struct Operation {
    kind: OpKind,
    polls_left: u32,
    failure: Option<(String, String)>,
    done: Option<Result<(), (String, String)>>,
}

#[derive(Debug)]
struct State {
    base: String,
    apps: HashMap<String, App>,
    roles: HashSet<(String, String)>,
    tokens: HashMap<String, Token>,
    resources: BTreeMap<String, Resource>,
    operations: HashMap<String, Operation>,
    faults: Vec<Fault>,
    vm_failures: HashMap<String, (String, String)>,
    requests: Vec<RecordedRequest>,
    lro_polls: u32,
    lro_retry_after: u64,
    token_lifetime: u64,
    page_size: usize,
    next_public_ip: u32,
}

/// The fake, serving on `127.0.0.1` until dropped.
#[derive(Debug)]
pub struct FakeAzure {
    base: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

impl FakeAzure {
    /// Starts the fake on a free loopback port. Both the token endpoint and ARM are
    /// served at [`FakeAzure::url`].
    pub async fn start() -> FakeAzure {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a loopback port for the fake");
        let addr = listener.local_addr().expect("local address");
        let base = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State {
            base: base.clone(),
            apps: HashMap::new(),
            roles: HashSet::new(),
            tokens: HashMap::new(),
            resources: BTreeMap::new(),
            operations: HashMap::new(),
            faults: Vec::new(),
            vm_failures: HashMap::new(),
            requests: Vec::new(),
            lro_polls: 2,
            lro_retry_after: 1,
            token_lifetime: 3599,
            page_size: 2,
            next_public_ip: 10,
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        FakeAzure {
            base,
            state,
            shutdown: Some(tx),
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:PORT`: the authority host and the ARM endpoint.
    pub fn url(&self) -> String {
        self.base.clone()
    }

    /// "Uploads" a certificate (PEM) to app `client_id` of `tenant`, as an operator
    /// does under Certificates & secrets. Several certificates may be registered.
    pub fn register_app(&self, tenant: &str, client_id: &str, cert_pem: &str) {
        let der = pem_block(cert_pem, "CERTIFICATE").expect("a PEM certificate");
        let cert_der = rustls_pki_types::CertificateDer::from(der.clone());
        webpki::EndEntityCert::try_from(&cert_der).expect("an X.509 certificate webpki can parse");
        let sha256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der));
        let sha1 = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &der,
        ));
        let mut s = self.lock();
        let app = s
            .apps
            .entry(client_id.to_ascii_lowercase())
            .or_insert_with(|| App {
                tenant: tenant.to_ascii_lowercase(),
                certs: Vec::new(),
            });
        app.certs.push(AppCert { der, sha256, sha1 });
    }

    /// Gives app `client_id` a role (Contributor) on `subscription`.
    pub fn grant_role(&self, client_id: &str, subscription: &str) {
        self.lock().roles.insert((
            client_id.to_ascii_lowercase(),
            subscription.to_ascii_lowercase(),
        ));
    }

    /// How many polls an operation stays `InProgress` (at least 1).
    pub fn set_lro_polls(&self, polls: u32) {
        self.lock().lro_polls = polls.max(1);
    }

    /// The `Retry-After` (seconds) sent with operations.
    pub fn set_lro_retry_after(&self, secs: u64) {
        self.lock().lro_retry_after = secs;
    }

    /// The lifetime (`expires_in`) of the tokens issued from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.lock().token_lifetime = secs;
    }

    /// Answers the next `times` requests whose method is `method` and whose path
    /// contains `path_contains` (case-insensitive) with 429 `TooManyRequests` and
    /// `Retry-After: retry_after`.
    pub fn throttle(&self, method: &str, path_contains: &str, times: u32, retry_after: u64) {
        self.lock().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_ascii_lowercase(),
            remaining: times,
            kind: FaultKind::Throttle { retry_after },
        });
    }

    /// Answers the next `times` matching requests with `status` (a 5xx).
    pub fn server_error(&self, method: &str, path_contains: &str, times: u32, status: u16) {
        self.lock().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_ascii_lowercase(),
            remaining: times,
            kind: FaultKind::Status { status },
        });
    }

    /// Makes the deployment of VM `vm_name` end `Failed` with `code` and `message`.
    pub fn fail_vm_deployment(&self, vm_name: &str, code: &str, message: &str) {
        self.lock().vm_failures.insert(
            vm_name.to_ascii_lowercase(),
            (code.to_string(), message.to_string()),
        );
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// How many token requests arrived.
    pub fn token_requests(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.is_token_request())
            .count()
    }

    /// A resource as GET would return it (by id, case-insensitive).
    pub fn resource(&self, id: &str) -> Option<Value> {
        self.lock()
            .resources
            .get(&id.to_ascii_lowercase())
            .map(|r| r.view.clone())
    }

    /// The last PUT body the fake accepted for a resource (it keeps what GET hides,
    /// such as a VM's `customData`).
    pub fn accepted_body(&self, id: &str) -> Option<Value> {
        self.lock()
            .resources
            .get(&id.to_ascii_lowercase())
            .map(|r| r.request.clone())
    }

    /// Ids of the resources of `rtype` (e.g. `Microsoft.Compute/virtualMachines`).
    pub fn resources_of_type(&self, rtype: &str) -> Vec<String> {
        self.lock()
            .resources
            .values()
            .filter(|r| r.rtype.eq_ignore_ascii_case(rtype))
            .map(|r| r.id.clone())
            .collect()
    }

    /// All resources and groups the fake holds.
    pub fn resource_count(&self) -> usize {
        self.lock().resources.len()
    }
}

/// The DER in the first PEM block labelled `label`.
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

// ---------------------------------------------------------------------------------
// HTTP plumbing

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }
    fn empty(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

/// An ARM error answer.
#[derive(Debug)]
struct ArmErr {
    status: u16,
    code: String,
    message: String,
    target: Option<String>,
}

fn err(status: u16, code: &str, message: impl Into<String>) -> ArmErr {
    ArmErr {
        status,
        code: code.to_string(),
        message: message.into(),
        target: None,
    }
}

fn bad(code: &str, message: impl Into<String>) -> ArmErr {
    err(400, code, message)
}

/// `InvalidParameter` naming the field, as the Compute provider answers.
fn invalid(target: &str, message: impl Into<String>) -> ArmErr {
    ArmErr {
        status: 400,
        code: "InvalidParameter".into(),
        message: message.into(),
        target: Some(target.to_string()),
    }
}

fn missing(field: &str) -> ArmErr {
    invalid(
        field,
        format!("Required parameter '{field}' is missing (null)."),
    )
}

impl From<ArmErr> for Answer {
    fn from(e: ArmErr) -> Answer {
        let mut error = json!({"code": e.code, "message": e.message});
        if let Some(t) = e.target {
            error["target"] = json!(t);
        }
        Answer::json(e.status, json!({ "error": error }))
    }
}

async fn handle(
    AxumState(state): AxumState<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let path = uri.path().to_string();
        let query = parse_query(uri.query().unwrap_or(""));
        let answer = s.dispatch(&method, &path, &query, &headers, &body);
        s.requests.push(RecordedRequest {
            method: method.to_string(),
            path,
            api_version: query.get("api-version").cloned(),
            status: answer.status,
            at: Instant::now(),
        });
        answer
    };
    let mut resp = match answer.body {
        Some(b) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            b.to_string(),
        )
            .into_response(),
        None => ().into_response(),
    };
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    for (k, v) in answer.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn new_guid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn canonical_type(ns: &str, t: &str) -> Option<&'static str> {
    match (
        ns.to_ascii_lowercase().as_str(),
        t.to_ascii_lowercase().as_str(),
    ) {
        ("microsoft.network", "networksecuritygroups") => {
            Some("Microsoft.Network/networkSecurityGroups")
        }
        ("microsoft.network", "virtualnetworks") => Some("Microsoft.Network/virtualNetworks"),
        ("microsoft.network", "networkinterfaces") => Some("Microsoft.Network/networkInterfaces"),
        ("microsoft.network", "publicipaddresses") => Some("Microsoft.Network/publicIPAddresses"),
        ("microsoft.compute", "virtualmachines") => Some("Microsoft.Compute/virtualMachines"),
        _ => None,
    }
}

fn api_versions_for(ns: &str) -> Option<&'static [&'static str]> {
    match ns.to_ascii_lowercase().as_str() {
        "microsoft.network" => Some(API_VERSIONS_NETWORK),
        "microsoft.compute" => Some(API_VERSIONS_COMPUTE),
        "microsoft.resources" => Some(API_VERSIONS_RESOURCES),
        _ => None,
    }
}

/// Where a request goes.
enum Route {
    Token {
        tenant: String,
    },
    Group {
        sub: String,
        rg: String,
    },
    List {
        sub: String,
        rg: String,
        rtype: &'static str,
    },
    Resource {
        sub: String,
        rg: String,
        rtype: &'static str,
        name: String,
    },
    Subnet {
        sub: String,
        rg: String,
        vnet: String,
        name: String,
    },
    AsyncOp {
        sub: String,
        id: String,
    },
    LocationOp {
        sub: String,
        id: String,
    },
}

fn route(path: &str) -> Result<(Route, &'static str), ArmErr> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let low: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = low.iter().map(String::as_str).collect();
    let unsupported = || {
        bad(
            "FakeUnsupported",
            format!(
                "the fake does not serve {path}: add it to tests/src/fake_arm.rs if Shoal needs it"
            ),
        )
    };
    let provider_type = |ns: &str, t: &str| {
        canonical_type(ns, t).ok_or_else(|| {
            bad(
                "InvalidResourceType",
                format!("The resource type '{t}' could not be found in the namespace '{ns}'."),
            )
        })
    };
    match l.as_slice() {
        [_, "oauth2", "v2.0", "token"] => Ok((
            Route::Token {
                tenant: segs[0].to_string(),
            },
            "",
        )),
        ["subscriptions", _, "resourcegroups", _] => Ok((
            Route::Group {
                sub: low[1].clone(),
                rg: segs[3].to_string(),
            },
            "microsoft.resources",
        )),
        ["subscriptions", _, "operationresults", _] => Ok((
            Route::LocationOp {
                sub: low[1].clone(),
                id: segs[3].to_string(),
            },
            "microsoft.resources",
        )),
        ["subscriptions", _, "providers", ns, "locations", _, "operations", _] => Ok((
            Route::AsyncOp {
                sub: low[1].clone(),
                id: segs[7].to_string(),
            },
            api_ns(ns).ok_or_else(unsupported)?,
        )),
        ["subscriptions", _, "resourcegroups", _, "providers", ns, t] => Ok((
            Route::List {
                sub: low[1].clone(),
                rg: segs[3].to_string(),
                rtype: provider_type(ns, t)?,
            },
            api_ns(ns).ok_or_else(unsupported)?,
        )),
        ["subscriptions", _, "resourcegroups", _, "providers", ns, t, _] => Ok((
            Route::Resource {
                sub: low[1].clone(),
                rg: segs[3].to_string(),
                rtype: provider_type(ns, t)?,
                name: segs[7].to_string(),
            },
            api_ns(ns).ok_or_else(unsupported)?,
        )),
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "virtualnetworks", _, "subnets", _] => {
            Ok((
                Route::Subnet {
                    sub: low[1].clone(),
                    rg: segs[3].to_string(),
                    vnet: segs[7].to_string(),
                    name: segs[9].to_string(),
                },
                "microsoft.network",
            ))
        }
        _ => Err(unsupported()),
    }
}

fn api_ns(ns: &str) -> Option<&'static str> {
    match ns {
        "microsoft.network" => Some("microsoft.network"),
        "microsoft.compute" => Some("microsoft.compute"),
        _ => None,
    }
}

fn group_id(sub: &str, rg: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}")
}

impl State {
    fn dispatch(
        &mut self,
        method: &Method,
        path: &str,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Answer {
        // Scripted faults come first, as throttling and outages do.
        if let Some(a) = self.fault(method, path) {
            return a;
        }
        let (route, ns) = match route(path) {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        if let Route::Token { tenant } = &route {
            if method != Method::POST {
                return Answer::json(
                    405,
                    json!({"error": "invalid_request", "error_description": "AADSTS900561: The endpoint only accepts POST requests."}),
                );
            }
            return self.token(tenant, headers, body);
        }
        // ARM: authentication, api-version, authorization, then the operation.
        let client = match self.authenticate(headers) {
            Ok(c) => c,
            Err(e) => {
                return Answer::from(e).header(
                    "WWW-Authenticate",
                    "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\"",
                )
            }
        };
        if let Err(e) = check_api_version(query, ns) {
            return e.into();
        }
        let sub = match &route {
            Route::Group { sub, .. }
            | Route::List { sub, .. }
            | Route::Resource { sub, .. }
            | Route::Subnet { sub, .. }
            | Route::AsyncOp { sub, .. }
            | Route::LocationOp { sub, .. } => sub.clone(),
            Route::Token { .. } => String::new(),
        };
        if !self.roles.contains(&(client.clone(), sub.clone())) {
            let action = match *method {
                Method::GET => "read",
                Method::DELETE => "delete",
                _ => "write",
            };
            return err(
                403,
                "AuthorizationFailed",
                format!(
                    "The client '{client}' with object id '{client}' does not have authorization to perform action '{action}' over scope '{path}' or the scope is invalid. If access was recently granted, please refresh your credentials."
                ),
            )
            .into();
        }
        let api_version = query.get("api-version").cloned().unwrap_or_default();
        let result = match (route, method.clone()) {
            (Route::Group { sub, rg }, Method::PUT) => self.put_group(&sub, &rg, body),
            (Route::Group { sub, rg }, Method::GET) => self.get_group(&sub, &rg),
            (Route::Group { sub, rg }, Method::DELETE) => {
                self.delete_group(&sub, &rg, &api_version)
            }
            (Route::List { sub, rg, rtype }, Method::GET) => {
                self.list(&sub, &rg, rtype, query, path, &api_version)
            }
            (
                Route::Resource {
                    sub,
                    rg,
                    rtype,
                    name,
                },
                Method::PUT,
            ) => self.put_resource(&sub, &rg, rtype, &name, body, &api_version),
            (
                Route::Resource {
                    sub,
                    rg,
                    rtype,
                    name,
                },
                Method::GET,
            ) => self.get_resource(&sub, &rg, rtype, &name),
            (
                Route::Subnet {
                    sub,
                    rg,
                    vnet,
                    name,
                },
                Method::GET,
            ) => self.get_subnet(&sub, &rg, &vnet, &name),
            (Route::AsyncOp { id, .. }, Method::GET) => self.poll_async(&id),
            (Route::LocationOp { sub, id }, Method::GET) => {
                self.poll_location(&sub, &id, &api_version)
            }
            (_, m) => Err(bad(
                "FakeUnsupported",
                format!("the fake does not support {m} on {path}"),
            )),
        };
        result.unwrap_or_else(Answer::from)
    }

    fn fault(&mut self, method: &Method, path: &str) -> Option<Answer> {
        let lpath = path.to_ascii_lowercase();
        let f = self.faults.iter_mut().find(|f| {
            f.remaining > 0 && f.method == method.as_str() && lpath.contains(&f.path_contains)
        })?;
        f.remaining -= 1;
        Some(match f.kind {
            FaultKind::Throttle { retry_after } => Answer::json(
                429,
                json!({"error": {"code": "TooManyRequests", "message": "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:01:00. For more information, see - https://aka.ms/srpthrottlinglimits"}}),
            )
            .header("Retry-After", retry_after.to_string()),
            FaultKind::Status { status } => Answer::json(
                status,
                json!({"error": {"code": "InternalServerError", "message": "Encountered internal server error. Diagnostic information: timestamp '…', subscription id '…'."}}),
            ),
        })
    }

    // ---------------------------------------------------------------------------
    // The token endpoint

    fn token(&mut self, tenant: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
        let entra = |status: u16, error: &str, description: String| {
            Answer::json(
                status,
                json!({
                    "error": error,
                    "error_description": description,
                    "error_codes": [description.get(6..description.find(':').unwrap_or(6)).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0)],
                    "timestamp": now_unix().to_string(),
                    "trace_id": new_guid(),
                    "correlation_id": new_guid(),
                }),
            )
        };
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return entra(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.".into(),
            );
        }
        let form = parse_query(&String::from_utf8_lossy(body));
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") != "client_credentials" {
            return entra(
                400,
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.".into(),
            );
        }
        let client_id = get("client_id").to_ascii_lowercase();
        if client_id.is_empty() {
            return entra(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'."
                    .into(),
            );
        }
        let tenant_l = tenant.to_ascii_lowercase();
        let app = match self.apps.get(&client_id) {
            Some(a) if a.tenant == tenant_l => a.clone(),
            _ => {
                return entra(
                    400,
                    "unauthorized_client",
                    format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
                )
            }
        };
        let expected_scope = format!("{}/.default", self.base);
        if get("scope") != expected_scope {
            return entra(
                400,
                "invalid_scope",
                format!("AADSTS1002012: The provided value for scope {} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", get("scope")),
            );
        }
        if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            || get("client_assertion").is_empty()
        {
            return entra(
                401,
                "invalid_client",
                "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.".into(),
            );
        }
        let aud = format!("{}/{tenant}/oauth2/v2.0/token", self.base);
        if let Err(description) = verify_assertion(get("client_assertion"), &client_id, &aud, &app)
        {
            return entra(401, "invalid_client", description);
        }
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let lifetime = self.token_lifetime;
        self.tokens.insert(
            token.clone(),
            Token {
                client_id,
                expires: Instant::now() + Duration::from_secs(lifetime),
            },
        );
        Answer::json(
            200,
            json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }),
        )
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<String, ArmErr> {
        let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(err(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            ));
        };
        let Some(t) = h.strip_prefix("Bearer ") else {
            return Err(err(
                401,
                "AuthenticationFailedInvalidHeader",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            ));
        };
        match self.tokens.get(t) {
            None => Err(err(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            )),
            Some(tok) if tok.expires <= Instant::now() => Err(err(
                401,
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time.",
            )),
            Some(tok) => Ok(tok.client_id.clone()),
        }
    }

    // ---------------------------------------------------------------------------
    // Resource groups

    fn put_group(&mut self, sub: &str, rg: &str, body: &[u8]) -> Result<Answer, ArmErr> {
        let body = parse_body(body)?;
        let location = required_location(&body)?;
        let key = group_id(sub, rg).to_ascii_lowercase();
        if let Some(existing) = self.resources.get(&key) {
            let state = existing.view["properties"]["provisioningState"]
                .as_str()
                .unwrap_or("");
            if state == "Deleting" {
                return Err(err(
                    409,
                    "ResourceGroupBeingDeleted",
                    format!("The resource group '{rg}' is in deprovisioning state and cannot perform this operation."),
                ));
            }
            if existing.view["location"] != json!(location) {
                return Err(err(
                    409,
                    "InvalidResourceGroupLocation",
                    format!("Invalid resource group location '{location}'. The Resource group already exists in location '{}'.", existing.view["location"].as_str().unwrap_or("")),
                ));
            }
        }
        let created = !self.resources.contains_key(&key);
        let id = group_id(sub, rg);
        let view = json!({
            "id": id,
            "name": rg,
            "type": "Microsoft.Resources/resourceGroups",
            "location": location,
            "tags": body.get("tags").cloned().unwrap_or(json!({})),
            "properties": {"provisioningState": "Succeeded"},
        });
        self.resources.insert(
            key.clone(),
            Resource {
                id,
                rtype: "Microsoft.Resources/resourceGroups".into(),
                group_key: key,
                view: view.clone(),
                request: body,
            },
        );
        Ok(Answer::json(if created { 201 } else { 200 }, view))
    }

    fn get_group(&self, sub: &str, rg: &str) -> Result<Answer, ArmErr> {
        self.resources
            .get(&group_id(sub, rg).to_ascii_lowercase())
            .map(|r| Answer::json(200, r.view.clone()))
            .ok_or_else(|| group_not_found(rg))
    }

    fn delete_group(&mut self, sub: &str, rg: &str, api_version: &str) -> Result<Answer, ArmErr> {
        let key = group_id(sub, rg).to_ascii_lowercase();
        let group = self
            .resources
            .get_mut(&key)
            .ok_or_else(|| group_not_found(rg))?;
        group.view["properties"]["provisioningState"] = json!("Deleting");
        let op = new_guid();
        self.operations.insert(
            op.clone(),
            Operation {
                kind: OpKind::DeleteGroup { group_key: key },
                polls_left: self.lro_polls,
                failure: None,
                done: None,
            },
        );
        Ok(Answer::empty(202)
            .header(
                "Location",
                format!(
                    "{}/subscriptions/{sub}/operationresults/{op}?api-version={api_version}",
                    self.base
                ),
            )
            .header("Retry-After", self.lro_retry_after.to_string()))
    }

    fn poll_location(&mut self, sub: &str, id: &str, api_version: &str) -> Result<Answer, ArmErr> {
        let retry_after = self.lro_retry_after.to_string();
        let base = self.base.clone();
        let op = self.operations.get_mut(id).ok_or_else(|| {
            err(
                404,
                "OperationNotFound",
                format!("The operation '{id}' could not be found."),
            )
        })?;
        if op.done.is_none() {
            op.polls_left = op.polls_left.saturating_sub(1);
            if op.polls_left > 0 {
                return Ok(Answer::empty(202)
                    .header(
                        "Location",
                        format!("{base}/subscriptions/{sub}/operationresults/{id}?api-version={api_version}"),
                    )
                    .header("Retry-After", retry_after));
            }
            op.done = Some(Ok(()));
            if let OpKind::DeleteGroup { group_key } = op.kind.clone() {
                self.resources
                    .retain(|k, r| *k != group_key && r.group_key != group_key);
            }
        }
        Ok(Answer::empty(200))
    }

    // ---------------------------------------------------------------------------
    // Resources in a group

    fn group_for_write(&self, sub: &str, rg: &str) -> Result<String, ArmErr> {
        let key = group_id(sub, rg).to_ascii_lowercase();
        let g = self
            .resources
            .get(&key)
            .ok_or_else(|| group_not_found(rg))?;
        if g.view["properties"]["provisioningState"] == json!("Deleting") {
            return Err(err(
                409,
                "ResourceGroupBeingDeleted",
                format!("The resource group '{rg}' is in deprovisioning state and cannot perform this operation."),
            ));
        }
        Ok(key)
    }

    fn get_resource(&self, sub: &str, rg: &str, rtype: &str, name: &str) -> Result<Answer, ArmErr> {
        let gkey = group_id(sub, rg).to_ascii_lowercase();
        if !self.resources.contains_key(&gkey) {
            return Err(group_not_found(rg));
        }
        let id = resource_id(sub, rg, rtype, name);
        self.resources
            .get(&id.to_ascii_lowercase())
            .map(|r| Answer::json(200, r.view.clone()))
            .ok_or_else(|| {
                err(
                    404,
                    "ResourceNotFound",
                    format!("The Resource '{rtype}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"),
                )
            })
    }

    fn get_subnet(&self, sub: &str, rg: &str, vnet: &str, name: &str) -> Result<Answer, ArmErr> {
        let id = format!(
            "{}/subnets/{name}",
            resource_id(sub, rg, "Microsoft.Network/virtualNetworks", vnet)
        );
        self.subnet(&id)
            .map(|s| Answer::json(200, s))
            .ok_or_else(|| err(404, "NotFound", format!("Resource '{name}' not found.")))
    }

    fn list(
        &self,
        sub: &str,
        rg: &str,
        rtype: &str,
        query: &HashMap<String, String>,
        path: &str,
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        let gkey = group_id(sub, rg).to_ascii_lowercase();
        if !self.resources.contains_key(&gkey) {
            return Err(group_not_found(rg));
        }
        let all: Vec<Value> = self
            .resources
            .values()
            .filter(|r| r.group_key == gkey && r.rtype == rtype)
            .map(|r| r.view.clone())
            .collect();
        let skip: usize = query
            .get("$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(self.page_size)
            .cloned()
            .collect();
        let mut body = json!({ "value": page });
        if skip + self.page_size < all.len() {
            body["nextLink"] = json!(format!(
                "{}{path}?api-version={api_version}&$skiptoken={}",
                self.base,
                skip + self.page_size
            ));
        }
        Ok(Answer::json(200, body))
    }

    fn subnet(&self, subnet_id: &str) -> Option<Value> {
        let lower = subnet_id.to_ascii_lowercase();
        let (vnet_id, name) = lower.split_once("/subnets/")?;
        let vnet = self.resources.get(vnet_id)?;
        vnet.view["properties"]["subnets"]
            .as_array()?
            .iter()
            .find(|s| s["name"].as_str().map(str::to_ascii_lowercase).as_deref() == Some(name))
            .cloned()
    }

    fn exists(&self, id: &str, rtype: &str) -> bool {
        self.resources
            .get(&id.to_ascii_lowercase())
            .is_some_and(|r| r.rtype == rtype)
    }

    fn put_resource(
        &mut self,
        sub: &str,
        rg: &str,
        rtype: &'static str,
        name: &str,
        body: &[u8],
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        let gkey = self.group_for_write(sub, rg)?;
        let body = parse_body(body)?;
        let location = required_location(&body)?;
        let id = resource_id(sub, rg, rtype, name);
        let key = id.to_ascii_lowercase();
        let existing = self.resources.get(&key).cloned();
        if let Some(e) = &existing {
            if e.view["location"] != json!(location) {
                return Err(bad(
                    "InvalidResourceLocation",
                    format!("The resource '{name}' already exists in location '{}' in resource group '{rg}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.", e.view["location"].as_str().unwrap_or("")),
                ));
            }
            let state = e.view["properties"]["provisioningState"]
                .as_str()
                .unwrap_or("");
            if matches!(state, "Creating" | "Updating") {
                return Err(err(
                    409,
                    "AnotherOperationInProgress",
                    format!("Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {id}."),
                ));
            }
        }
        let mut failure = None;
        let properties = match rtype {
            "Microsoft.Network/networkSecurityGroups" => self.nsg_properties(&body)?,
            "Microsoft.Network/virtualNetworks" => {
                self.vnet_properties(&id, &location, &body, existing.as_ref())?
            }
            "Microsoft.Network/publicIPAddresses" => {
                self.public_ip_properties(&body, existing.as_ref())?
            }
            "Microsoft.Network/networkInterfaces" => {
                self.nic_properties(&id, &location, &body, existing.as_ref())?
            }
            "Microsoft.Compute/virtualMachines" => {
                failure = self.vm_failures.get(&name.to_ascii_lowercase()).cloned();
                self.vm_properties(&id, &location, &body, existing.as_ref())?
            }
            _ => return Err(bad("FakeUnsupported", format!("PUT of {rtype}"))),
        };
        let created = existing.is_none();
        let mut view = json!({
            "id": id,
            "name": name,
            "type": rtype,
            "location": location,
            "tags": body.get("tags").cloned().unwrap_or(json!({})),
            "etag": format!("W/\"{}\"", new_guid()),
            "properties": properties,
        });
        if let Some(sku) = body.get("sku") {
            view["sku"] = sku.clone();
        }
        view["properties"]["provisioningState"] =
            json!(if created { "Creating" } else { "Updating" });
        if rtype == "Microsoft.Compute/virtualMachines" {
            // Custom data is write-only: ARM never returns it.
            hide_custom_data(&mut view);
        }
        // Back-references that ARM keeps: a NIC knows its VM, a public IP its NIC.
        self.link(rtype, &id, &view);
        self.resources.insert(
            key.clone(),
            Resource {
                id: id.clone(),
                rtype: rtype.to_string(),
                group_key: gkey,
                view: view.clone(),
                request: body,
            },
        );
        let op = new_guid();
        self.operations.insert(
            op.clone(),
            Operation {
                kind: OpKind::Put { key },
                polls_left: self.lro_polls,
                failure,
                done: None,
            },
        );
        let ns = rtype.split('/').next().unwrap_or("");
        Ok(Answer::json(if created { 201 } else { 200 }, view)
            .header(
                "Azure-AsyncOperation",
                format!(
                    "{}/subscriptions/{sub}/providers/{ns}/locations/{location}/operations/{op}?api-version={api_version}",
                    self.base
                ),
            )
            .header("Retry-After", self.lro_retry_after.to_string()))
    }

    fn link(&mut self, rtype: &str, id: &str, view: &Value) {
        match rtype {
            "Microsoft.Compute/virtualMachines" => {
                if let Some(nics) =
                    view["properties"]["networkProfile"]["networkInterfaces"].as_array()
                {
                    for n in nics {
                        if let Some(nic) = n["id"]
                            .as_str()
                            .and_then(|i| self.resources.get_mut(&i.to_ascii_lowercase()))
                        {
                            nic.view["properties"]["virtualMachine"] = json!({ "id": id });
                        }
                    }
                }
            }
            "Microsoft.Network/networkInterfaces" => {
                if let Some(cfgs) = view["properties"]["ipConfigurations"].as_array() {
                    for c in cfgs {
                        if let Some(pip) = c["properties"]["publicIPAddress"]["id"]
                            .as_str()
                            .and_then(|i| self.resources.get_mut(&i.to_ascii_lowercase()))
                        {
                            pip.view["properties"]["ipConfiguration"] = json!({ "id": format!("{id}/ipConfigurations/{}", c["name"].as_str().unwrap_or("")) });
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn poll_async(&mut self, id: &str) -> Result<Answer, ArmErr> {
        let retry_after = self.lro_retry_after.to_string();
        let op = self.operations.get_mut(id).ok_or_else(|| {
            err(
                404,
                "OperationNotFound",
                format!("The operation '{id}' could not be found."),
            )
        })?;
        if op.done.is_none() {
            op.polls_left = op.polls_left.saturating_sub(1);
            if op.polls_left > 0 {
                return Ok(Answer::json(
                    200,
                    json!({"name": id, "status": "InProgress", "startTime": now_unix().to_string()}),
                )
                .header("Retry-After", retry_after));
            }
            let outcome = match op.failure.clone() {
                Some(f) => Err(f),
                None => Ok(()),
            };
            op.done = Some(outcome.clone());
            if let OpKind::Put { key } = op.kind.clone() {
                if let Some(r) = self.resources.get_mut(&key) {
                    r.view["properties"]["provisioningState"] = json!(if outcome.is_ok() {
                        "Succeeded"
                    } else {
                        "Failed"
                    });
                    if r.rtype == "Microsoft.Network/virtualNetworks" {
                        if let Some(subnets) = r.view["properties"]["subnets"].as_array_mut() {
                            for s in subnets {
                                s["properties"]["provisioningState"] = json!("Succeeded");
                            }
                        }
                    }
                }
            }
        }
        Ok(match op_done(&self.operations, id) {
            Some(Ok(())) => Answer::json(200, json!({"name": id, "status": "Succeeded"})),
            Some(Err((code, message))) => Answer::json(
                200,
                json!({"name": id, "status": "Failed", "error": {"code": code, "message": message}}),
            ),
            None => Answer::json(200, json!({"name": id, "status": "InProgress"})),
        })
    }

    // ---------------------------------------------------------------------------
    // Bodies, as the API reference describes them

    fn nsg_properties(&self, body: &Value) -> Result<Value, ArmErr> {
        let props = body.get("properties").cloned().unwrap_or(json!({}));
        let mut seen_names = HashSet::new();
        let mut seen_priorities = HashSet::new();
        if let Some(rules) = props.get("securityRules") {
            let rules = rules.as_array().ok_or_else(|| {
                bad(
                    "InvalidRequestFormat",
                    "properties.securityRules must be an array.",
                )
            })?;
            for (i, r) in rules.iter().enumerate() {
                let at = format!("properties.securityRules[{i}]");
                let name = r["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        bad(
                            "InvalidRequestFormat",
                            format!("Required property '{at}.name' is missing."),
                        )
                    })?;
                if !seen_names.insert(name.to_ascii_lowercase()) {
                    return Err(bad(
                        "InvalidRequestFormat",
                        format!("Security rule name '{name}' is used more than once."),
                    ));
                }
                let p = &r["properties"];
                let one_of = |field: &str, allowed: &[&str]| -> Result<String, ArmErr> {
                    let v = p[field].as_str().ok_or_else(|| {
                        bad(
                            "InvalidRequestFormat",
                            format!("Required property '{at}.properties.{field}' is missing."),
                        )
                    })?;
                    allowed
                        .iter()
                        .find(|a| a.eq_ignore_ascii_case(v))
                        .map(|a| a.to_string())
                        .ok_or_else(|| {
                            bad("SecurityRuleParameterContainsUnsupportedValue", format!("Value '{v}' of '{at}.properties.{field}' is not one of {allowed:?}."))
                        })
                };
                one_of("protocol", &["Tcp", "Udp", "Icmp", "Esp", "Ah", "*"])?;
                one_of("access", &["Allow", "Deny"])?;
                let direction = one_of("direction", &["Inbound", "Outbound"])?;
                let priority = p["priority"].as_u64().ok_or_else(|| {
                    bad(
                        "SecurityRuleInvalidPriority",
                        format!("Required property '{at}.properties.priority' is missing."),
                    )
                })?;
                if !(100..=4096).contains(&priority) {
                    return Err(bad("SecurityRuleInvalidPriority", format!("Security rule '{name}' has invalid Priority {priority}. Value provided: {priority}. Allowed range 100-4096.")));
                }
                if !seen_priorities.insert((direction.clone(), priority)) {
                    return Err(bad("SecurityRuleConflict", format!("Security rule '{name}' conflicts with another rule: both have priority {priority} and direction {direction}.")));
                }
                for (single, plural, check) in [
                    (
                        "sourceAddressPrefix",
                        "sourceAddressPrefixes",
                        check_prefix as fn(&str) -> bool,
                    ),
                    (
                        "destinationAddressPrefix",
                        "destinationAddressPrefixes",
                        check_prefix,
                    ),
                    ("sourcePortRange", "sourcePortRanges", check_port_range),
                    (
                        "destinationPortRange",
                        "destinationPortRanges",
                        check_port_range,
                    ),
                ] {
                    let values: Vec<&str> = match (p.get(single), p.get(plural)) {
                        (Some(Value::String(s)), None) => vec![s.as_str()],
                        (None, Some(Value::Array(a))) if !a.is_empty() => {
                            a.iter().filter_map(Value::as_str).collect()
                        }
                        _ => {
                            return Err(bad("InvalidRequestFormat", format!("Exactly one of '{at}.properties.{single}' and '{at}.properties.{plural}' is required.")))
                        }
                    };
                    if let Some(v) = values.iter().find(|v| !check(v)) {
                        return Err(bad(
                            "SecurityRuleParameterContainsUnsupportedValue",
                            format!("Value '{v}' of '{at}.properties.{single}' is invalid."),
                        ));
                    }
                }
                let _ = i;
            }
        }
        let mut out = props;
        if let Some(rules) = out["securityRules"].as_array_mut() {
            for r in rules {
                r["properties"]["provisioningState"] = json!("Succeeded");
            }
        }
        Ok(out)
    }

    fn vnet_properties(
        &self,
        id: &str,
        location: &str,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let props = body.get("properties").ok_or_else(|| {
            bad(
                "InvalidRequestFormat",
                "Required property 'properties' is missing.",
            )
        })?;
        let spaces: Vec<Ipv4Net> = props["addressSpace"]["addressPrefixes"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("InvalidRequestFormat", "Required property 'properties.addressSpace.addressPrefixes' is missing."))?
            .iter()
            .map(|p| {
                p.as_str()
                    .and_then(|s| s.parse::<Ipv4Net>().ok())
                    .ok_or_else(|| bad("InvalidAddressPrefixFormat", format!("Address prefix {p} of 'properties.addressSpace.addressPrefixes' is not a valid CIDR.")))
            })
            .collect::<Result<_, _>>()?;
        let mut subnets_out = Vec::new();
        let mut ranges: Vec<(String, Ipv4Net)> = Vec::new();
        for (i, s) in props["subnets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let name = s["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        "InvalidRequestFormat",
                        format!("Required property 'properties.subnets[{i}].name' is missing."),
                    )
                })?;
            let prefix_text = s["properties"]["addressPrefix"].as_str().ok_or_else(|| {
                bad("InvalidRequestFormat", format!("Required property 'properties.subnets[{i}].properties.addressPrefix' is missing."))
            })?;
            let prefix: Ipv4Net = prefix_text.parse().map_err(|_| {
                bad(
                    "InvalidAddressPrefixFormat",
                    format!("Subnet '{name}' has an invalid address prefix '{prefix_text}'."),
                )
            })?;
            if prefix.network() != prefix.addr() {
                return Err(bad("InvalidCIDRNotation", format!("The address prefix {prefix_text} in resource {id}/subnets/{name} has an invalid CIDR notation. For the given prefix length, the address prefix should be {}.", prefix.trunc())));
            }
            if !spaces.iter().any(|sp| sp.contains(&prefix)) {
                return Err(bad("NetcfgSubnetRangeOutsideVnet", format!("Subnet '{name}' is not valid because its IP address range is outside the IP address range of virtual network '{}'.", id.rsplit('/').next().unwrap_or(""))));
            }
            if let Some((other, _)) = ranges
                .iter()
                .find(|(_, r)| r.contains(&prefix) || prefix.contains(r))
            {
                return Err(bad("NetcfgSubnetRangesOverlap", format!("Subnet '{name}' is not valid because its IP address range overlaps with that of an existing subnet '{other}' in virtual network.")));
            }
            ranges.push((name.to_string(), prefix));
            let mut sp = s["properties"].clone();
            if let Some(nsg) = sp["networkSecurityGroup"]["id"].as_str() {
                if !self.exists(nsg, "Microsoft.Network/networkSecurityGroups") {
                    return Err(invalid_reference(nsg, &format!("{id}/subnets/{name}")));
                }
            }
            let subnet_id = format!("{id}/subnets/{name}");
            // A subnet in use keeps its range.
            if let Some(prev) = existing.and_then(|_| self.subnet(&subnet_id)) {
                if self.subnet_in_use(&subnet_id)
                    && prev["properties"]["addressPrefix"].as_str() != Some(prefix_text)
                {
                    return Err(bad(
                        "InUseSubnetCannotBeUpdated",
                        format!("Subnet {name} is in use and cannot be updated."),
                    ));
                }
            }
            sp["provisioningState"] = json!("Updating");
            subnets_out.push(json!({
                "id": subnet_id,
                "name": name,
                "type": "Microsoft.Network/virtualNetworks/subnets",
                "properties": sp,
            }));
        }
        if let Some(e) = existing {
            for old in e.view["properties"]["subnets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let old_id = old["id"].as_str().unwrap_or("");
                let kept = subnets_out.iter().any(|s| {
                    s["id"].as_str().map(str::to_ascii_lowercase)
                        == Some(old_id.to_ascii_lowercase())
                });
                if !kept && self.subnet_in_use(old_id) {
                    return Err(bad("InUseSubnetCannotBeDeleted", format!("Subnet {} is in use by {} and cannot be deleted. In order to delete the subnet, delete all the resources within the subnet.", old["name"].as_str().unwrap_or(""), self.subnet_users(old_id).join(", "))));
                }
            }
        }
        let _ = location;
        let mut out = props.clone();
        out["subnets"] = Value::Array(subnets_out);
        Ok(out)
    }

    fn subnet_users(&self, subnet_id: &str) -> Vec<String> {
        let want = subnet_id.to_ascii_lowercase();
        self.resources
            .values()
            .filter(|r| r.rtype == "Microsoft.Network/networkInterfaces")
            .filter(|r| {
                r.view["properties"]["ipConfigurations"]
                    .as_array()
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c["properties"]["subnet"]["id"]
                                .as_str()
                                .map(str::to_ascii_lowercase)
                                == Some(want.clone())
                        })
                    })
            })
            .map(|r| format!("{}/ipConfigurations", r.id))
            .collect()
    }

    fn subnet_in_use(&self, subnet_id: &str) -> bool {
        !self.subnet_users(subnet_id).is_empty()
    }

    fn public_ip_properties(
        &mut self,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let sku = body["sku"]["name"].as_str().unwrap_or("Basic");
        let props = body.get("properties").cloned().unwrap_or(json!({}));
        let method = props["publicIPAllocationMethod"]
            .as_str()
            .unwrap_or("Dynamic")
            .to_string();
        let method = method.as_str();
        if !["Static", "Dynamic"].contains(&method) {
            return Err(bad("InvalidRequestFormat", format!("Value '{method}' of 'properties.publicIPAllocationMethod' is not Static or Dynamic.")));
        }
        if sku.eq_ignore_ascii_case("Basic") {
            return Err(bad(
                "BasicSkuPublicIpIsRetired",
                "Basic SKU public IP addresses are retired: use sku.name Standard.",
            ));
        }
        if !sku.eq_ignore_ascii_case("Standard") {
            return Err(bad(
                "InvalidRequestFormat",
                format!("Value '{sku}' of 'sku.name' is invalid."),
            ));
        }
        if method != "Static" {
            return Err(bad(
                "StandardSkuPublicIPAddressesMustBeStatic",
                "Standard sku publicIp must have AllocationMethod set to Static.",
            ));
        }
        let address = match existing.and_then(|e| e.view["properties"]["ipAddress"].as_str()) {
            Some(a) => a.to_string(),
            None => {
                // TEST-NET-3 (RFC 5737): documentation addresses, never routed.
                self.next_public_ip += 1;
                Ipv4Addr::new(203, 0, 113, (self.next_public_ip % 250) as u8).to_string()
            }
        };
        let mut out = props;
        out["publicIPAllocationMethod"] = json!(method);
        out["ipAddress"] = json!(address);
        if let Some(cfg) = existing.and_then(|e| e.view["properties"].get("ipConfiguration")) {
            out["ipConfiguration"] = cfg.clone();
        }
        Ok(out)
    }

    fn nic_properties(
        &self,
        id: &str,
        location: &str,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let props = body.get("properties").ok_or_else(|| {
            bad(
                "InvalidRequestFormat",
                "Required property 'properties' is missing.",
            )
        })?;
        let configs = props["ipConfigurations"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                bad(
                    "InvalidRequestFormat",
                    "Required property 'properties.ipConfigurations' is missing or empty.",
                )
            })?;
        if let Some(nsg) = props["networkSecurityGroup"]["id"].as_str() {
            if !self.exists(nsg, "Microsoft.Network/networkSecurityGroups") {
                return Err(invalid_reference(nsg, id));
            }
        }
        let mut out_configs = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let at = format!("properties.ipConfigurations[{i}]");
            let name = c["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        "InvalidRequestFormat",
                        format!("Required property '{at}.name' is missing."),
                    )
                })?;
            let p = &c["properties"];
            let subnet_id = p["subnet"]["id"].as_str().ok_or_else(|| {
                bad(
                    "InvalidRequestFormat",
                    format!("Required property '{at}.properties.subnet.id' is missing."),
                )
            })?;
            let subnet = self
                .subnet(subnet_id)
                .ok_or_else(|| invalid_reference(subnet_id, id))?;
            let vnet_id = subnet_id
                .to_ascii_lowercase()
                .split("/subnets/")
                .next()
                .unwrap_or("")
                .to_string();
            if self
                .resources
                .get(&vnet_id)
                .map(|v| v.view["location"].clone())
                != Some(json!(location))
            {
                return Err(bad("InvalidResourceReference", format!("Resource {subnet_id} referenced by resource {id} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.")));
            }
            let net: Ipv4Net = subnet["properties"]["addressPrefix"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("InternalServerError", "subnet without a prefix"))?;
            let method = p["privateIPAllocationMethod"].as_str().unwrap_or("Dynamic");
            let address = match method {
                "Static" => {
                    let a: Ipv4Addr = p["privateIPAddress"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad("InvalidRequestFormat", format!("'{at}.properties.privateIPAddress' is required for Static allocation.")))?;
                    if !net.contains(&a) {
                        return Err(bad("PrivateIPAddressNotInSubnet", format!("IP address {a} does not belong to the subnet {subnet_id}.")));
                    }
                    a
                }
                "Dynamic" => {
                    let previous = existing
                        .and_then(|e| e.view["properties"]["ipConfigurations"][i]["properties"]["privateIPAddress"].as_str())
                        .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        .filter(|a| net.contains(a));
                    match previous {
                        Some(a) => a,
                        None => self.allocate_ip(subnet_id, net)?,
                    }
                }
                other => {
                    return Err(bad("InvalidRequestFormat", format!("Value '{other}' of '{at}.properties.privateIPAllocationMethod' is not Static or Dynamic.")))
                }
            };
            if let Some(pip) = p["publicIPAddress"]["id"].as_str() {
                let r = self
                    .resources
                    .get(&pip.to_ascii_lowercase())
                    .filter(|r| r.rtype == "Microsoft.Network/publicIPAddresses")
                    .ok_or_else(|| invalid_reference(pip, id))?;
                if let Some(user) = r.view["properties"]["ipConfiguration"]["id"].as_str() {
                    if !user
                        .to_ascii_lowercase()
                        .starts_with(&format!("{}/", id.to_ascii_lowercase()))
                    {
                        return Err(bad("PublicIPAddressInUse", format!("Resource {pip} is referenced by resource {user}; it cannot be used by {id}.")));
                    }
                }
            }
            let mut op = p.clone();
            op["privateIPAddress"] = json!(address.to_string());
            op["privateIPAllocationMethod"] = json!(method);
            op["privateIPAddressVersion"] = json!("IPv4");
            op["provisioningState"] = json!("Succeeded");
            out_configs.push(json!({
                "id": format!("{id}/ipConfigurations/{name}"),
                "name": name,
                "properties": op,
            }));
        }
        let mut out = props.clone();
        out["ipConfigurations"] = Value::Array(out_configs);
        if let Some(vm) = existing.and_then(|e| e.view["properties"].get("virtualMachine")) {
            out["virtualMachine"] = vm.clone();
        }
        out["macAddress"] = json!(format!(
            "00-0D-3A-{:02X}-{:02X}-{:02X}",
            rand::random::<u8>(),
            rand::random::<u8>(),
            rand::random::<u8>()
        ));
        Ok(out)
    }

    /// The first free address of a subnet; Azure keeps the first four and the last.
    fn allocate_ip(&self, subnet_id: &str, net: Ipv4Net) -> Result<Ipv4Addr, ArmErr> {
        let want = subnet_id.to_ascii_lowercase();
        let used: HashSet<String> = self
            .resources
            .values()
            .filter(|r| r.rtype == "Microsoft.Network/networkInterfaces")
            .flat_map(|r| {
                r.view["properties"]["ipConfigurations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|c| {
                c["properties"]["subnet"]["id"]
                    .as_str()
                    .map(str::to_ascii_lowercase)
                    == Some(want.clone())
            })
            .filter_map(|c| {
                c["properties"]["privateIPAddress"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        let first = u32::from(net.network()) + 4;
        let last = u32::from(net.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(&a.to_string()))
            .ok_or_else(|| bad("SubnetIsFull", format!("Subnet {subnet_id} with address prefix {net} does not have enough capacity for 1 IP addresses.")))
    }

    fn vm_properties(
        &self,
        id: &str,
        location: &str,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let props = body
            .get("properties")
            .ok_or_else(|| missing("properties"))?;
        // hardwareProfile
        let size = props["hardwareProfile"]["vmSize"]
            .as_str()
            .ok_or_else(|| missing("hardwareProfile.vmSize"))?;
        let size_ok = size.starts_with("Standard_")
            && size.len() > 9
            && size.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !size_ok {
            return Err(invalid("vmSize", format!("The value {size} provided for the VM size is not valid. The valid sizes in the current region are: Standard_B2s, Standard_D2s_v5, Standard_D4s_v5, ….")));
        }
        // storageProfile
        let image = &props["storageProfile"]["imageReference"];
        if image.is_null() {
            return Err(missing("storageProfile.imageReference"));
        }
        if let Some(image_id) = image["id"].as_str() {
            let l = image_id.to_ascii_lowercase();
            if !(l.starts_with("/subscriptions/")
                && (l.contains("/providers/microsoft.compute/images/")
                    || l.contains("/providers/microsoft.compute/galleries/")))
            {
                return Err(invalid(
                    "imageReference.id",
                    format!("The value '{image_id}' of parameter 'imageReference.id' is invalid."),
                ));
            }
        } else {
            let mut parts = Vec::new();
            for f in ["publisher", "offer", "sku", "version"] {
                parts.push(
                    image[f]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| missing(&format!("imageReference.{f}")))?,
                );
            }
            let known = MARKETPLACE_IMAGES.iter().any(|(p, o, s)| {
                p.eq_ignore_ascii_case(parts[0])
                    && o.eq_ignore_ascii_case(parts[1])
                    && s.eq_ignore_ascii_case(parts[2])
            });
            if !known {
                return Err(err(404, "PlatformImageNotFound", format!("The platform image '{}:{}:{}:{}' is not available. Verify that all fields in the storage profile are correct.", parts[0], parts[1], parts[2], parts[3])));
            }
        }
        let os_disk = &props["storageProfile"]["osDisk"];
        if !os_disk.is_null() {
            let create = os_disk["createOption"]
                .as_str()
                .ok_or_else(|| missing("storageProfile.osDisk.createOption"))?;
            if !create.eq_ignore_ascii_case("FromImage") {
                return Err(invalid("osDisk.createOption", format!("The value '{create}' of parameter 'osDisk.createOption' is not allowed with an image reference.")));
            }
            if let Some(t) = os_disk["managedDisk"]["storageAccountType"].as_str() {
                const TYPES: &[&str] = &[
                    "Standard_LRS",
                    "StandardSSD_LRS",
                    "Premium_LRS",
                    "Premium_ZRS",
                    "StandardSSD_ZRS",
                    "PremiumV2_LRS",
                    "UltraSSD_LRS",
                ];
                if !TYPES.contains(&t) {
                    return Err(invalid(
                        "osDisk.managedDisk.storageAccountType",
                        format!("The value '{t}' of parameter 'storageAccountType' is invalid."),
                    ));
                }
            }
        }
        // osProfile
        let os = &props["osProfile"];
        if os.is_null() {
            return Err(missing("osProfile"));
        }
        let computer = os["computerName"]
            .as_str()
            .ok_or_else(|| missing("osProfile.computerName"))?;
        let computer_ok = !computer.is_empty()
            && computer.len() <= 64
            && computer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !computer.starts_with('-')
            && !computer.bytes().all(|b| b.is_ascii_digit());
        if !computer_ok {
            return Err(invalid("computerName", "Linux host name cannot exceed 64 characters in length or contain the following characters: ` ~ ! @ # $ % ^ & * ( ) = + _ [ ] { } \\ | ; : ' \" , < > / ?."));
        }
        let admin = os["adminUsername"]
            .as_str()
            .ok_or_else(|| missing("osProfile.adminUsername"))?;
        const RESERVED: &[&str] = &[
            "root",
            "admin",
            "administrator",
            "guest",
            "sys",
            "user",
            "test",
            "adm",
            "daemon",
            "bin",
            "nobody",
        ];
        if admin.is_empty()
            || admin.len() > 64
            || RESERVED.contains(&admin.to_ascii_lowercase().as_str())
        {
            return Err(invalid(
                "adminUsername",
                "The Admin Username specified is not allowed.",
            ));
        }
        if let Some(cd) = os.get("customData") {
            let decoded = cd.as_str().and_then(|s| STANDARD.decode(s).ok());
            if decoded.is_none_or(|d| d.len() > CUSTOM_DATA_MAX) {
                return Err(invalid("customData", "Custom data in OSProfile must be in Base64 encoding and with a maximum length of 87380 characters."));
            }
        }
        let linux = &os["linuxConfiguration"];
        let no_password = linux["disablePasswordAuthentication"]
            .as_bool()
            .unwrap_or(false);
        if no_password {
            let keys = linux["ssh"]["publicKeys"]
                .as_array()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| invalid("linuxConfiguration.ssh.publicKeys", "Authentication using either SSH or by user name and password must be enabled in Linux profile."))?;
            for k in keys {
                let path = k["path"].as_str().unwrap_or("");
                if path != format!("/home/{admin}/.ssh/authorized_keys") {
                    return Err(invalid("linuxConfiguration.ssh.publicKeys.path", format!("The value of parameter linuxConfiguration.ssh.publicKeys.path is invalid: '{path}'. It must be /home/{admin}/.ssh/authorized_keys.")));
                }
                let data = k["keyData"].as_str().unwrap_or("");
                if !is_ssh_public_key(data) {
                    return Err(invalid("linuxConfiguration.ssh.publicKeys.keyData", "The value of parameter linuxConfiguration.ssh.publicKeys.keyData is invalid."));
                }
            }
        } else if os["adminPassword"].as_str().is_none() {
            return Err(missing("adminPassword"));
        }
        // networkProfile
        let nics = props["networkProfile"]["networkInterfaces"]
            .as_array()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("networkProfile.networkInterfaces"))?;
        for n in nics {
            let nic_id = n["id"]
                .as_str()
                .ok_or_else(|| missing("networkProfile.networkInterfaces.id"))?;
            let nic = self
                .resources
                .get(&nic_id.to_ascii_lowercase())
                .filter(|r| r.rtype == "Microsoft.Network/networkInterfaces")
                .ok_or_else(|| err(400, "NotFound", format!("Resource {nic_id} not found.")))?;
            if nic.view["location"] != json!(location) {
                return Err(invalid("networkProfile.networkInterfaces", format!("The network interface {nic_id} is in location '{}' and cannot be used by a virtual machine in '{location}'.", nic.view["location"].as_str().unwrap_or(""))));
            }
            if let Some(user) = nic.view["properties"]["virtualMachine"]["id"].as_str() {
                if !user.eq_ignore_ascii_case(id) {
                    return Err(bad("NicInUse", format!("Network Interface {nic_id} is used by existing resource {user}. In order to delete the network interface, it must be dissociated from the resource.")));
                }
            }
        }
        // Properties that cannot change once the VM exists.
        if let Some(e) = existing {
            let before = &e.request["properties"]["osProfile"];
            for field in ["computerName", "adminUsername", "customData"] {
                if before.get(field) != os.get(field) {
                    return Err(err(
                        409,
                        "PropertyChangeNotAllowed",
                        format!("Changing property '{field}' is not allowed."),
                    )
                    .with_target(field));
                }
            }
        }
        let mut out = props.clone();
        out["vmId"] = json!(existing
            .and_then(|e| e.view["properties"]["vmId"].as_str().map(str::to_string))
            .unwrap_or_else(new_guid));
        let _ = location;
        Ok(out)
    }
}

impl ArmErr {
    fn with_target(mut self, t: &str) -> ArmErr {
        self.target = Some(t.to_string());
        self
    }
}

fn op_done(ops: &HashMap<String, Operation>, id: &str) -> Option<Result<(), (String, String)>> {
    ops.get(id).and_then(|o| o.done.clone())
}

fn hide_custom_data(view: &mut Value) {
    if let Some(os) = view["properties"]["osProfile"].as_object_mut() {
        os.remove("customData");
    }
}

fn resource_id(sub: &str, rg: &str, rtype: &str, name: &str) -> String {
    let (ns, t) = rtype.split_once('/').unwrap_or((rtype, ""));
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{t}/{name}")
}

fn group_not_found(rg: &str) -> ArmErr {
    err(
        404,
        "ResourceGroupNotFound",
        format!("Resource group '{rg}' could not be found."),
    )
}

fn invalid_reference(target: &str, by: &str) -> ArmErr {
    bad(
        "InvalidResourceReference",
        format!("Resource {target} referenced by resource {by} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region."),
    )
}

fn parse_body(body: &[u8]) -> Result<Value, ArmErr> {
    if body.is_empty() {
        return Err(bad(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'The request body is empty.'",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        bad(
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{e}'."),
        )
    })
}

fn required_location(body: &Value) -> Result<String, ArmErr> {
    let loc = body["location"]
        .as_str()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            bad(
                "LocationRequired",
                "The location property is required for this definition.",
            )
        })?;
    let norm = loc.to_ascii_lowercase().replace(' ', "");
    if !LOCATIONS.contains(&norm.as_str()) {
        return Err(bad(
            "LocationNotAvailableForResourceType",
            format!(
                "The provided location '{loc}' is not available for resource type. List of available regions is '{}'.",
                LOCATIONS.join(",")
            ),
        ));
    }
    Ok(norm)
}

fn check_api_version(query: &HashMap<String, String>, ns: &str) -> Result<(), ArmErr> {
    let Some(v) = query.get("api-version").filter(|v| !v.is_empty()) else {
        return Err(bad(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    let known = api_versions_for(ns).unwrap_or(&[]);
    if !known.contains(&v.as_str()) {
        return Err(bad(
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions are '{}'.",
                known.join(",")
            ),
        ));
    }
    Ok(())
}

fn check_prefix(p: &str) -> bool {
    const TAGS: &[&str] = &["*", "VirtualNetwork", "Internet", "AzureLoadBalancer"];
    TAGS.contains(&p) || p.parse::<ipnet::IpNet>().is_ok() || p.parse::<std::net::IpAddr>().is_ok()
}

fn check_port_range(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let port = |s: &str| s.parse::<u32>().ok().filter(|n| *n <= 65535);
    match p.split_once('-') {
        Some((a, b)) => matches!((port(a), port(b)), (Some(a), Some(b)) if a <= b),
        None => port(p).is_some(),
    }
}

fn is_ssh_public_key(s: &str) -> bool {
    let mut parts = s.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(raw) = STANDARD.decode(blob) else {
        return false;
    };
    // The blob starts with the key type as an SSH string.
    let Some(len) = raw
        .get(0..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    matches!(
        kind,
        "ssh-rsa"
            | "ssh-ed25519"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
    ) && raw.get(4..4 + len) == Some(kind.as_bytes())
}

/// Checks a client assertion as Entra ID does; the error is Entra's description.
fn verify_assertion(jwt: &str, client_id: &str, aud: &str, app: &App) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err("AADSTS50027: JWT token is invalid or malformed.".into());
    }
    let decode = |p: &str| -> Result<Value, String> {
        URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| "AADSTS50027: JWT token is invalid or malformed.".to_string())
    };
    let header = decode(parts[0])?;
    let claims = decode(parts[1])?;
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| "AADSTS50027: JWT token is invalid or malformed.".to_string())?;
    if let Some(t) = header.get("typ") {
        if t.as_str().is_none_or(|t| !t.eq_ignore_ascii_case("JWT")) {
            return Err("AADSTS50027: JWT token is invalid or malformed: typ must be JWT.".into());
        }
    }
    let alg = header["alg"].as_str().unwrap_or("");
    let (algorithm, thumb, by_sha256): (&dyn rustls_pki_types::SignatureVerificationAlgorithm, _, bool) = match alg {
        "PS256" => (webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY, header["x5t#S256"].as_str(), true),
        "RS256" => (
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            header["x5t#S256"].as_str().or(header["x5t"].as_str()),
            header.get("x5t#S256").is_some(),
        ),
        other => {
            return Err(format!(
                "AADSTS5002730: Invalid JWT token. Unsupported key for the signing algorithm '{other}'."
            ))
        }
    };
    let thumb = thumb.ok_or_else(|| {
        "AADSTS700027: Client assertion failed signature validation. The token has no x5t#S256 or x5t header naming its certificate.".to_string()
    })?;
    let cert = app
        .certs
        .iter()
        .find(|c| if by_sha256 { c.sha256 == thumb } else { c.sha1 == thumb })
        .ok_or_else(|| {
            format!("AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumb}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]")
        })?;
    let cert_der = rustls_pki_types::CertificateDer::from(cert.der.clone());
    let ee = webpki::EndEntityCert::try_from(&cert_der).map_err(|e| {
        format!("AADSTS700027: Client assertion failed signature validation: {e:?}")
    })?;
    let signed = format!("{}.{}", parts[0], parts[1]);
    ee.verify_signature(algorithm, signed.as_bytes(), &sig)
        .map_err(|_| "AADSTS700027: Client assertion contains an invalid signature.".to_string())?;
    if claims["aud"].as_str() != Some(aud) {
        return Err(format!(
            "AADSTS50013: Assertion audience claim does not match the required value. The audience in the assertion was '{}' and the expected audience is '{aud}'.",
            claims["aud"].as_str().unwrap_or("")
        ));
    }
    if claims["iss"]
        .as_str()
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some(client_id)
        || claims["sub"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref()
            != Some(client_id)
    {
        return Err("AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .".into());
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err("AADSTS50027: JWT token is invalid or malformed: no jti claim.".into());
    }
    let now = now_unix();
    let skew = 300;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let nbf = claims["nbf"].as_i64().unwrap_or(now);
    if exp <= now || nbf > now + skew {
        return Err(format!("AADSTS700024: Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."));
    }
    Ok(())
}
