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
//!   group and everything in it are gone, then 200. A resource DELETE answers 202 with
//!   an `Azure-AsyncOperation`, refuses what is still in use, and a VM takes its NIC
//!   and OS disk (a resource of its own here too) along per their `deleteOption`.
//!   `Retry-After` is sent throughout.
//! - **Faults** on demand: N× 429 with `Retry-After`, N× 5xx, a VM deployment that ends
//!   `Failed` with a chosen code.
//!
//! Every request is recorded (method, path, `api-version`, status) for assertions.
//!
//! Layout: this file serves and routes (the [`FakeAzure`] handle; authentication,
//! `api-version` and role checks; dispatch); `token.rs` the token endpoint and client
//! assertions; `resources.rs` resource groups and resources (PUT, GET, list), with the
//! bodies checked in `network.rs` and `compute.rs`; `deletion.rs` deleting single
//! resources (a VM with its NIC and disk); `operations.rs` asynchronous
//! operations; `faults.rs` scripted faults; `state.rs` what the fake holds; `wire.rs`
//! answers and ARM's error shapes.

mod compute;
mod deletion;
mod faults;
mod network;
mod operations;
mod resources;
mod state;
mod token;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub use self::compute::MARKETPLACE_IMAGES;
pub use self::resources::LOCATIONS;
pub use self::state::RecordedRequest;
pub use self::token::pem_block;

use self::state::{FaultKind, State};
use self::wire::{bad, err, parse_query, Answer, ArmErr};

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
        let state = Arc::new(Mutex::new(State::new(base.clone())));
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
        let cert = token::app_cert(cert_pem);
        self.lock().register_cert(tenant, client_id, cert);
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
        self.lock().add_fault(
            method,
            path_contains,
            times,
            FaultKind::Throttle { retry_after },
        );
    }

    /// Answers the next `times` matching requests with `status` (a 5xx).
    pub fn server_error(&self, method: &str, path_contains: &str, times: u32, status: u16) {
        self.lock()
            .add_fault(method, path_contains, times, FaultKind::Status { status });
    }

    /// Makes the deployment of VM `vm_name` end `Failed` with `code` and `message`.
    pub fn fail_vm_deployment(&self, vm_name: &str, code: &str, message: &str) {
        self.lock().fail_vm(vm_name, code, message);
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
        ("microsoft.compute", "disks") => Some("Microsoft.Compute/disks"),
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
                "the fake does not serve {path}: add it to tests/src/fake_arm/ if Shoal needs it"
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
                Route::Resource {
                    sub,
                    rg,
                    rtype,
                    name,
                },
                Method::DELETE,
            ) => self.delete_in_group(&sub, &rg, rtype, &name, &api_version),
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
