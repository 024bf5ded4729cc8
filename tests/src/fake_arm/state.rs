//! What the fake holds (apps, tokens, roles, resources, operations, scripted faults)
//! and records (every request), behind the one lock of [`super::FakeAzure`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::Value;

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
pub(super) enum FaultKind {
    Throttle { retry_after: u64 },
    Status { status: u16 },
}

#[derive(Debug, Clone)]
pub(super) struct Fault {
    pub(super) method: String,
    pub(super) path_contains: String,
    pub(super) remaining: u32,
    pub(super) kind: FaultKind,
}

#[derive(Debug, Clone)]
pub(super) struct AppCert {
    pub(super) der: Vec<u8>,
    pub(super) sha256: String,
    pub(super) sha1: String,
}

#[derive(Debug, Clone)]
pub(super) struct App {
    pub(super) tenant: String,
    pub(super) certs: Vec<AppCert>,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) client_id: String,
    pub(super) expires: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct Resource {
    pub(super) id: String,
    pub(super) rtype: String,
    pub(super) group_key: String,
    /// What GET returns.
    pub(super) view: Value,
    /// The last accepted PUT body.
    pub(super) request: Value,
}

#[derive(Debug, Clone)]
pub(super) enum OpKind {
    Put { key: String },
    DeleteGroup { group_key: String },
    DeleteResource { key: String },
}

#[derive(Debug, Clone)]
pub(super) struct Operation {
    pub(super) kind: OpKind,
    pub(super) polls_left: u32,
    pub(super) failure: Option<(String, String)>,
    pub(super) done: Option<Result<(), (String, String)>>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) base: String,
    pub(super) apps: HashMap<String, App>,
    pub(super) roles: HashSet<(String, String)>,
    pub(super) tokens: HashMap<String, Token>,
    pub(super) resources: BTreeMap<String, Resource>,
    pub(super) operations: HashMap<String, Operation>,
    pub(super) faults: Vec<Fault>,
    pub(super) vm_failures: HashMap<String, (String, String)>,
    pub(super) requests: Vec<RecordedRequest>,
    pub(super) lro_polls: u32,
    pub(super) lro_retry_after: u64,
    pub(super) token_lifetime: u64,
    pub(super) page_size: usize,
    pub(super) next_public_ip: u32,
}

impl State {
    /// An empty fake serving at `base`, with the defaults its setters change.
    pub(super) fn new(base: String) -> State {
        State {
            base,
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
        }
    }

    pub(super) fn exists(&self, id: &str, rtype: &str) -> bool {
        self.resources
            .get(&id.to_ascii_lowercase())
            .is_some_and(|r| r.rtype == rtype)
    }
}
