//! A small Azure Resource Manager REST client: bearer tokens, `api-version` on every
//! call, long-running operations followed to the end, and retries where ARM's
//! guidance says to retry.
//!
//! - Every request carries `api-version`; URLs ARM hands back (`Azure-AsyncOperation`,
//!   `Location`, `nextLink`) already carry theirs and are followed as given, but only
//!   on the ARM endpoint's own origin, so the token never goes anywhere else.
//! - 429 and 5xx answers and connection errors are retried under the overall deadline
//!   of a [`Backoff`]; 429's `Retry-After` is honoured. Other 4xx answers fail at once
//!   with ARM's own code and message. A 401 saying the token is invalid or expired
//!   drops the cached token and tries once more with a new one.
//! - A long-running operation is polled through `Azure-AsyncOperation` (until
//!   `Succeeded`, `Failed` or `Canceled`) or else `Location` (202 until 200/204), every
//!   `Retry-After` seconds.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use shoal_protocol::backoff::Backoff;

use super::auth::{same_origin, TokenSource};
use crate::providers::retry::{retry, retry_after, Verdict, CLOUD_BACKOFF};
use crate::providers::ProviderError;

/// How the client retries and waits.
#[derive(Debug, Clone)]
pub struct ArmSettings {
    /// Retries of one call (throttling, 5xx, connection errors).
    pub backoff: Backoff,
    /// How long one long-running operation may take (VM creation takes minutes).
    pub lro_timeout: Duration,
    /// Poll interval when ARM gives no `Retry-After`.
    pub default_poll: Duration,
    /// Ceiling on a poll interval, whatever `Retry-After` says.
    pub max_poll: Duration,
}

impl Default for ArmSettings {
    fn default() -> Self {
        ArmSettings {
            backoff: CLOUD_BACKOFF,
            lro_timeout: Duration::from_secs(30 * 60),
            default_poll: Duration::from_secs(5),
            max_poll: Duration::from_secs(60),
        }
    }
}

/// An answer from ARM.
#[derive(Debug, Clone)]
pub struct ArmResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

impl ArmResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// One failed attempt and what it calls for.
#[derive(Debug)]
struct CallError {
    error: ProviderError,
    verdict: Verdict,
    status: Option<u16>,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// ARM's error body: `{"error": {"code", "message"}}`.
pub fn arm_error(body: &Value) -> Option<(String, String)> {
    let e = body.get("error")?;
    let code = e.get("code")?.as_str()?.to_string();
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some((code, message))
}

/// The ARM client of one credential and endpoint.
#[derive(Debug, Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    base: String,
    tokens: Arc<TokenSource>,
    settings: ArmSettings,
}

impl ArmClient {
    /// A client for the ARM endpoint `base` (no trailing slash).
    pub fn new(
        http: reqwest::Client,
        base: String,
        tokens: Arc<TokenSource>,
        settings: ArmSettings,
    ) -> ArmClient {
        ArmClient {
            http,
            base,
            tokens,
            settings,
        }
    }

    /// The token source.
    pub fn tokens(&self) -> &TokenSource {
        &self.tokens
    }

    fn url(&self, path: &str, api_version: &str) -> String {
        format!("{}{path}?api-version={api_version}", self.base)
    }

    /// Sends one request with retries; returns any 2xx answer, or the error.
    async fn call(
        &self,
        operation: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        accept_404: bool,
    ) -> Result<ArmResponse, ProviderError> {
        if !same_origin(&self.base, url) {
            return Err(ProviderError::Api {
                provider: "azure",
                operation: operation.to_string(),
                code: "UnexpectedEndpoint".into(),
                message: format!(
                    "ARM pointed at {url}, outside the ARM endpoint {}; not sending a token there",
                    self.base
                ),
            });
        }
        let attempts = AtomicU32::new(0);
        let reauthed = AtomicBool::new(false);
        let what = format!("{method} {}", strip_query(url));
        let result = retry(
            &self.settings.backoff,
            &what,
            |e: &CallError| e.verdict,
            || {
                attempts.fetch_add(1, Ordering::SeqCst);
                self.attempt(operation, method.clone(), url, body, accept_404, &reauthed)
            },
        )
        .await;
        match result {
            Ok(r) => Ok(r),
            Err(e) if matches!(e.verdict, Verdict::Retry { .. }) => {
                let n = attempts.load(Ordering::SeqCst);
                let why = match e.status {
                    Some(429) => "kept throttling (429)".to_string(),
                    Some(s) => format!("kept failing ({s})"),
                    None => "stayed unreachable".to_string(),
                };
                Err(ProviderError::Unavailable {
                    provider: "azure",
                    message: format!(
                        "ARM {why} for {what} ({operation}); gave up after {n} attempts and the retry deadline of {}s: {}",
                        self.settings.backoff.deadline.as_secs(),
                        e.error
                    ),
                })
            }
            Err(e) => Err(e.error),
        }
    }

    async fn attempt(
        &self,
        operation: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        accept_404: bool,
        reauthed: &AtomicBool,
    ) -> Result<ArmResponse, CallError> {
        let token = self.tokens.token().await.map_err(|error| CallError {
            error,
            // The token source has already retried what deserved it.
            verdict: Verdict::Fail,
            status: None,
        })?;
        let mut req = self
            .http
            .request(method.clone(), url)
            .header("authorization", token.header_value())
            .header("accept", "application/json");
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| CallError {
            error: ProviderError::Unavailable {
                provider: "azure",
                message: format!("cannot reach ARM at {}: {e}", strip_query(url)),
            },
            verdict: Verdict::Retry { after: None },
            status: None,
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| CallError {
            error: ProviderError::Unavailable {
                provider: "azure",
                message: format!("reading ARM's answer from {}: {e}", strip_query(url)),
            },
            verdict: Verdict::Retry { after: None },
            status: Some(status),
        })?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) || (accept_404 && status == 404) {
            return Ok(ArmResponse {
                status,
                headers,
                body,
            });
        }
        let (code, message) = arm_error(&body).unwrap_or_else(|| {
            (
                format!("HTTP{status}"),
                String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            )
        });
        let error = ProviderError::Api {
            provider: "azure",
            operation: operation.to_string(),
            code: code.clone(),
            message,
        };
        let verdict = match status {
            429 => Verdict::Retry {
                after: retry_after(&headers),
            },
            500..=599 => Verdict::Retry {
                after: retry_after(&headers),
            },
            401 if matches!(
                code.as_str(),
                "InvalidAuthenticationToken" | "ExpiredAuthenticationToken"
            ) && !reauthed.swap(true, Ordering::SeqCst) =>
            {
                tracing::info!(%code, "ARM refused the cached token; getting a new one");
                self.tokens.invalidate().await;
                Verdict::Retry {
                    after: Some(Duration::ZERO),
                }
            }
            _ => Verdict::Fail,
        };
        Err(CallError {
            error,
            verdict,
            status: Some(status),
        })
    }

    /// `GET path`; `None` when ARM answers 404.
    pub async fn get(
        &self,
        operation: &str,
        path: &str,
        api_version: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let r = self
            .call(
                operation,
                Method::GET,
                &self.url(path, api_version),
                None,
                true,
            )
            .await?;
        Ok((r.status != 404).then_some(r.body))
    }

    /// Every item of a list, following `nextLink`.
    pub async fn list(
        &self,
        operation: &str,
        path: &str,
        api_version: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut url = self.url(path, api_version);
        loop {
            let r = self.call(operation, Method::GET, &url, None, false).await?;
            if let Some(items) = r.body.get("value").and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            match r.body.get("nextLink").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => url = next.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// `PUT path` (create or update, idempotent by name), follows the operation to its
    /// end, and returns the resource as ARM then describes it.
    pub async fn put(
        &self,
        operation: &str,
        path: &str,
        api_version: &str,
        body: &Value,
    ) -> Result<Value, ProviderError> {
        let url = self.url(path, api_version);
        let first = self
            .call(operation, Method::PUT, &url, Some(body), false)
            .await?;
        let has_header = first.header("azure-asyncoperation").is_some()
            || (first.status == 202 && first.header("location").is_some());
        if has_header {
            self.follow(operation, &first).await?;
        } else if is_terminal(&first.body) {
            return check_provisioned(operation, path, first.body);
        }
        // Read the resource back (ARM's guidance after an operation ends); without an
        // operation header, poll it until its provisioning state settles.
        let deadline = Instant::now() + self.settings.lro_timeout;
        let mut wait = self.poll_delay(&first.headers);
        loop {
            let r = self.call(operation, Method::GET, &url, None, false).await?;
            if is_terminal(&r.body) {
                return check_provisioned(operation, path, r.body);
            }
            self.sleep_until_poll(operation, wait, deadline).await?;
            wait = self.poll_delay(&r.headers);
        }
    }

    /// `DELETE path` and waits until it is gone. A resource that is already gone (404)
    /// counts as deleted, so this is safe to repeat.
    pub async fn delete(
        &self,
        operation: &str,
        path: &str,
        api_version: &str,
    ) -> Result<(), ProviderError> {
        let url = self.url(path, api_version);
        let first = self
            .call(operation, Method::DELETE, &url, None, true)
            .await?;
        if first.status == 404 {
            return Ok(());
        }
        self.follow(operation, &first).await
    }

    /// Follows a long-running operation started by `first` until it ends.
    async fn follow(&self, operation: &str, first: &ArmResponse) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.settings.lro_timeout;
        let mut wait = self.poll_delay(&first.headers);
        if let Some(status_url) = first.header("azure-asyncoperation") {
            loop {
                self.sleep_until_poll(operation, wait, deadline).await?;
                let r = self
                    .call(operation, Method::GET, &status_url, None, false)
                    .await?;
                let status = r
                    .body
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match status.as_str() {
                    "Succeeded" => return Ok(()),
                    "Failed" | "Canceled" => {
                        let (code, message) = arm_error(&r.body)
                            .unwrap_or_else(|| (status.clone(), "no error details given".into()));
                        return Err(ProviderError::Api {
                            provider: "azure",
                            operation: operation.to_string(),
                            code,
                            message,
                        });
                    }
                    _ => wait = self.poll_delay(&r.headers),
                }
            }
        } else if let Some(location) = first.header("location").filter(|_| first.status == 202) {
            loop {
                self.sleep_until_poll(operation, wait, deadline).await?;
                let r = self
                    .call(operation, Method::GET, &location, None, false)
                    .await?;
                if r.status != 202 {
                    return Ok(());
                }
                wait = self.poll_delay(&r.headers);
            }
        } else if first.status == 202 {
            Err(ProviderError::Api {
                provider: "azure",
                operation: operation.to_string(),
                code: "MissingOperationHeader".into(),
                message: "ARM accepted the request (202) but gave no Azure-AsyncOperation or Location to follow".into(),
            })
        } else {
            Ok(())
        }
    }

    fn poll_delay(&self, headers: &HeaderMap) -> Duration {
        retry_after(headers)
            .unwrap_or(self.settings.default_poll)
            .min(self.settings.max_poll)
    }

    async fn sleep_until_poll(
        &self,
        operation: &str,
        wait: Duration,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        if Instant::now() + wait > deadline {
            return Err(ProviderError::Unavailable {
                provider: "azure",
                message: format!(
                    "{operation} did not finish within {}s",
                    self.settings.lro_timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// `properties.provisioningState` of a resource.
pub fn provisioning_state(resource: &Value) -> Option<String> {
    resource
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Whether a resource's provisioning state is final (absent means done, per ARM).
fn is_terminal(resource: &Value) -> bool {
    matches!(
        provisioning_state(resource).as_deref(),
        None | Some("Succeeded") | Some("Failed") | Some("Canceled")
    )
}

fn check_provisioned(operation: &str, path: &str, resource: Value) -> Result<Value, ProviderError> {
    match provisioning_state(&resource).as_deref() {
        Some(s @ ("Failed" | "Canceled")) => Err(ProviderError::Api {
            provider: "azure",
            operation: operation.to_string(),
            code: "ProvisioningFailed".into(),
            message: format!("{path} ended in provisioning state {s}"),
        }),
        _ => Ok(resource),
    }
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
