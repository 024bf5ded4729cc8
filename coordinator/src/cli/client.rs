//! The operator API's client: finds the coordinator (the state directory's `api.json`
//! and token, or `--coordinator` with `SHOAL_TOKEN`), trusts only its CA, and turns
//! its errors into [`CliError`]s that say what to do next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::CliError;
use crate::api::ApiInfo;
use crate::providers::registry;
use crate::view::ClusterView;

/// An HTTP client for the operator API at `base`: for an `https://` URL it trusts the
/// coordinator's CA only: `ca_cert` (from `SHOAL_CA_CERT` or `api.json`), else the state
/// directory's `ca.pem`.
pub fn operator_http_client(
    base: &str,
    ca_cert: Option<PathBuf>,
    state_dir: &Path,
    timeout: Duration,
) -> Result<reqwest::Client, CliError> {
    let mut http = reqwest::Client::builder().timeout(timeout);
    if base.starts_with("https://") {
        let path = ca_cert
            .or_else(|| std::env::var_os("SHOAL_CA_CERT").map(PathBuf::from))
            .unwrap_or_else(|| state_dir.join(crate::tls::CA_CERT_FILE));
        let pem = std::fs::read(&path).map_err(|e| {
            CliError::NoCoordinator(format!(
                "the coordinator at {base} serves TLS, but its CA certificate {} cannot be read: {e}. Copy <state-dir>/ca.pem from the coordinator and set SHOAL_CA_CERT",
                path.display()
            ))
        })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| CliError::NoCoordinator(format!("{}: {e}", path.display())))?;
        http = http.tls_certs_only([cert]);
    }
    http.build()
        .map_err(|e| CliError::Local(format!("HTTP client: {e}")))
}

/// A client of the operator API.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Finds the coordinator: `--coordinator` with `SHOAL_TOKEN`, or the state dir's
    /// `api.json` and `token`.
    pub fn discover(state_dir: &Path, coordinator: Option<&str>) -> Result<Client, CliError> {
        let token = match std::env::var("SHOAL_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => std::fs::read_to_string(state_dir.join("token"))
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    CliError::Unauthorized(format!(
                        "cannot read the operator token {}: {e}. Run this as the user who runs `shoal serve`, point --state-dir at its state directory, or set SHOAL_TOKEN",
                        state_dir.join("token").display()
                    ))
                })?,
        };
        let mut ca_cert = std::env::var_os("SHOAL_CA_CERT").map(PathBuf::from);
        let base = match coordinator {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let path = state_dir.join("api.json");
                let text = std::fs::read_to_string(&path).map_err(|_| {
                    CliError::NoCoordinator(format!(
                        "no coordinator is running for state dir {} (no {}): start one with `shoal serve --state-dir {}`, or give --coordinator URL",
                        state_dir.display(),
                        path.display(),
                        state_dir.display()
                    ))
                })?;
                let info: ApiInfo = serde_json::from_str(&text).map_err(|e| {
                    CliError::NoCoordinator(format!(
                        "{}: {e}: remove it and start `shoal serve` again",
                        path.display()
                    ))
                })?;
                ca_cert = ca_cert.or(info.ca_cert);
                info.url
            }
        };
        let http = operator_http_client(&base, ca_cert, state_dir, Duration::from_secs(30))?;
        Ok(Client { base, token, http })
    }

    /// One request; an answer other than 2xx becomes the [`CliError`] of its class,
    /// with what to do next.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, CliError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            CliError::NoCoordinator(format!(
                "cannot reach the coordinator at {}: {e}. Is `shoal serve` running? `shoal doctor` checks this machine and the coordinator",
                self.base
            ))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str::<serde_json::Value>(&text).ok();
        let code = v
            .as_ref()
            .and_then(|v| v["error"]["code"].as_str().map(String::from))
            .unwrap_or_default();
        let message = v
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        let hint = next_step(&code, path, body);
        let status = status.as_u16();
        Err(match status {
            401 => CliError::Unauthorized(format!("{message} (HTTP {status}){hint}")),
            400..=499 => CliError::Refused {
                status,
                message,
                hint,
            },
            _ => CliError::Coordinator(format!("{message} (HTTP {status}){hint}")),
        })
    }

    /// One request whose answer is JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, CliError> {
        self.call(method, path, body)
            .await?
            .json()
            .await
            .map_err(|e| {
                CliError::Coordinator(format!("unexpected answer from the coordinator: {e}"))
            })
    }

    /// One cluster.
    pub async fn show(&self, name: &str) -> Result<ClusterView, CliError> {
        self.json(reqwest::Method::GET, &format!("/v1/clusters/{name}"), None)
            .await
    }
}

/// What to do after an API error, from its stable code: the text the CLI appends to
/// the coordinator's message.
pub fn next_step(code: &str, path: &str, body: Option<&serde_json::Value>) -> String {
    let name = body
        .and_then(|b| b["name"].as_str())
        .map(String::from)
        .or_else(|| {
            path.strip_prefix("/v1/clusters/")
                .map(|r| r.split(['/', '?']).next().unwrap_or(r).to_string())
        })
        .unwrap_or_else(|| "NAME".into());
    let provider = body.and_then(|b| b["provider"].as_str()).unwrap_or("local");
    match code {
        "not-found" if path.contains("/user-data") => {
            format!(": see the cluster's nodes with `shoal cluster show {name}`")
        }
        "not-found" => ": see the clusters there are with `shoal cluster list`".into(),
        "exists" => format!(
            ": choose another name, or delete it first with `shoal cluster delete {name} --wait`"
        ),
        "conflict" => format!(": see its state with `shoal cluster show {name}`"),
        "provider-unavailable" if registry::NAMES.contains(&provider) => format!(
            ": `shoal doctor --provider {provider}` says what this machine lacks"
        ),
        "unauthorized" => ": the token does not match this coordinator: give the --state-dir it runs with, or its token in SHOAL_TOKEN".into(),
        "internal" => ": the coordinator's log says more (`shoal serve` writes it to stderr)".into(),
        _ => String::new(),
    }
}
