//! The metadata client: long-polls the plan and reports status.
//!
//! Only connection errors, 429 and 5xx are retried ([`crate::retry`]: capped, jittered
//! backoff, never sooner than the server's `Retry-After`, under the configured
//! deadline); any other answer fails at once with its status and body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use shoal_protocol::contract::{self, GENERATION_HEADER, MAX_PLAN_BYTES};
use shoal_protocol::{AgentConfig, NodeStatus, Plan, PlanError};

use crate::retry::{self, Attempt, GaveUp, Policy};

pub use contract::LONG_POLL_SECS;

/// A failure to obtain the plan.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nothing but retryable failures until the deadline (or the last attempt).
    #[error("could not reach the coordinator at {url} within {secs}s; last error: {last}")]
    Unreachable {
        /// The metadata base URL.
        url: String,
        /// The deadline; without one, the time spent trying.
        secs: u64,
        /// The last failure.
        last: String,
    },
    /// A redirect. A coordinator never sends one, and following it would send the
    /// cluster key (in the path) to a host the agent was never configured with.
    #[error(
        "the coordinator at {url} answered HTTP {status}, a redirect to {location}; a Shoal \
         coordinator never redirects, so the agent did not follow it (check metadata_url \
         in the agent's configuration, and any proxy between this VM and the coordinator)"
    )]
    Redirected {
        /// The metadata base URL.
        url: String,
        /// Status (3xx).
        status: u16,
        /// The origin (scheme, host, port) the answer pointed to; never its path, which
        /// may hold the key.
        location: String,
    },
    /// A final answer (unknown key: 404; bad token: 401).
    #[error("the coordinator at {url} refused the request: HTTP {status}: {body}")]
    Refused {
        /// The metadata base URL.
        url: String,
        /// Status.
        status: u16,
        /// Body (truncated).
        body: String,
    },
}

/// What a poll returned.
#[derive(Debug)]
pub enum Fetched {
    /// A plan that passed validation.
    Plan(Plan),
    /// A plan that did not; `generation` is from the answer's header, so the agent waits
    /// for a newer one instead of fetching this one again.
    Invalid {
        /// Generation of the bad plan.
        generation: u64,
        /// Why.
        error: PlanError,
    },
    /// No newer plan by `quiet_at` (see [`MetadataClient::wait_for_plan`]): the
    /// long-poll ended on time and its connection is free for the liveness report.
    Quiet,
}

/// Client setup errors.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client: {0}")]
pub struct ClientError(String);

/// A failed request, worded without its URL (which holds the cluster key).
#[derive(Debug)]
enum Problem {
    /// No usable answer: a connection error, a timeout, 429 or 5xx.
    Unreachable(String),
    /// A final answer.
    Refused {
        /// Status.
        status: u16,
        /// Body (truncated).
        body: String,
    },
    /// A redirect, not followed.
    Redirected {
        /// Status.
        status: u16,
        /// Where to, as [`location_origin`] words it.
        location: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unreachable(m) => f.write_str(m),
            Problem::Refused { status, body } => write!(f, "HTTP {status}: {body}"),
            Problem::Redirected { status, location } => {
                write!(f, "HTTP {status}, a redirect to {location}")
            }
        }
    }
}

/// How an answer that is not a success ends the attempt: 429 and 5xx are retried (after
/// the `Retry-After` the server gave), anything else is final.
async fn unsuccessful(resp: reqwest::Response) -> Attempt<Problem> {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = retry_after(resp.headers());
        let mut m = format!("HTTP {}", status.as_u16());
        if let Some(a) = after {
            m.push_str(&format!(" (Retry-After: {} s)", a.as_secs()));
        }
        return Attempt::Retry {
            error: Problem::Unreachable(m),
            after,
        };
    }
    if status.is_redirection() {
        return Attempt::Fail(Problem::Redirected {
            status: status.as_u16(),
            location: location_origin(&resp),
        });
    }
    // Only the start of the body is read: it is quoted in the error, and a hostile
    // server's endless body must not be held in memory.
    let body = match read_prefix(resp, ERROR_BODY_BYTES).await {
        Ok(b) => String::from_utf8_lossy(&b.bytes).into_owned(),
        Err(_) => String::new(),
    };
    Attempt::Fail(Problem::Refused {
        status: status.as_u16(),
        body: truncate(&body),
    })
}

/// Most bytes of an error answer's body read (it is quoted, truncated, in the error).
const ERROR_BODY_BYTES: usize = 4096;

/// The start of a body, read chunk by chunk.
#[derive(Debug)]
struct Prefix {
    /// At most the limit's worth of bytes.
    bytes: Vec<u8>,
    /// Whether that is the whole body.
    whole: bool,
    /// Bytes received, the chunk that crossed the limit included.
    seen: usize,
}

/// Reads `resp`'s body up to `limit` bytes and stops there: memory stays bounded
/// whatever the server sends (an endless chunked body ends the read at the limit, and
/// dropping the response closes the connection).
async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> Result<Prefix, reqwest::Error> {
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = resp.chunk().await? {
        seen = seen.saturating_add(chunk.len());
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Prefix {
                bytes,
                whole: false,
                seen,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Prefix {
        bytes,
        whole: true,
        seen,
    })
}

/// Where a redirect points, as its origin only (`http://host:port`): the path and query
/// are left out, since a redirect to the same path elsewhere would carry the key.
fn location_origin(resp: &reqwest::Response) -> String {
    let Some(location) = resp.headers().get(reqwest::header::LOCATION) else {
        return "nowhere (no Location header)".into();
    };
    let Ok(location) = location.to_str() else {
        return "an unreadable Location".into();
    };
    match resp.url().join(location) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u.origin().ascii_serialization(),
        Ok(u) => format!("a {}: URL", truncate(u.scheme())),
        Err(_) => "an unparseable Location".into(),
    }
}

/// The `Retry-After` of an answer, in seconds (the form the coordinator's rate limiter
/// sends; an HTTP date is not understood, and the backoff schedule applies instead).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The metadata client of one node.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    http: reqwest::Client,
    base: String,
    key: String,
    node: String,
    token: String,
    /// When the client was made: the origin of `answered_ms`.
    born: Instant,
    /// Milliseconds from `born` to the coordinator's latest complete answer (shared by
    /// clones): the agent's deadline counts from it.
    answered_ms: Arc<AtomicU64>,
}

impl MetadataClient {
    /// Builds a client; with a CA certificate in the configuration, only that CA is
    /// trusted.
    pub fn new(cfg: &AgentConfig) -> Result<MetadataClient, ClientError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(LONG_POLL_SECS + 15))
            // A redirect is answered with an error (`FetchError::Redirected`), never
            // followed: the key is in the path.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("shoal-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| ClientError(format!("ca_cert_pem: {e}")))?;
            b = b.tls_certs_only([cert]);
        }
        Ok(MetadataClient {
            http: b.build().map_err(|e| ClientError(e.to_string()))?,
            base: cfg.metadata_url.trim_end_matches('/').to_string(),
            key: cfg.cluster_key.clone(),
            node: cfg.node_id.clone(),
            token: cfg.node_token.clone(),
            born: Instant::now(),
            answered_ms: Arc::default(),
        })
    }

    /// When the coordinator last gave a complete answer (a plan, a 204, an accepted
    /// report), or when this client was made if it never has.
    pub fn last_answer(&self) -> Instant {
        self.born + Duration::from_millis(self.answered_ms.load(Ordering::Relaxed))
    }

    fn answered(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.answered_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When a `deadline` of silence from the coordinator runs out.
    fn until(&self, deadline: Option<Duration>) -> Option<Instant> {
        deadline.and_then(|d| self.last_answer().checked_add(d))
    }

    /// The metadata base URL (no secret in it).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn plan_url(&self) -> String {
        format!("{}{}", self.base, contract::plan_path(&self.key))
    }

    async fn poll_once(&self, after: u64, wait: u64) -> Result<Option<Fetched>, Attempt<Problem>> {
        let resp = self
            .http
            .get(self.plan_url())
            .query(&[(contract::WAIT_PARAM, wait), (contract::AFTER_PARAM, after)])
            // A large cluster's plan is about a tenth of its size gzipped; the
            // coordinator compresses it once per generation.
            .header(reqwest::header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            // The URL holds the key: never let reqwest's error print it.
            .map_err(|e| Attempt::retry(Problem::Unreachable(describe(&e))))?;
        let generation = resp
            .headers()
            .get(GENERATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match resp.status() {
            StatusCode::OK => {
                let too_large = |size| {
                    Ok(Some(Fetched::Invalid {
                        generation,
                        error: PlanError::TooLarge {
                            size,
                            limit: MAX_PLAN_BYTES,
                        },
                    }))
                };
                // A declared size over the limit is refused unread.
                if let Some(len) = resp.content_length() {
                    if len > MAX_PLAN_BYTES as u64 {
                        self.answered();
                        return too_large(usize::try_from(len).unwrap_or(usize::MAX));
                    }
                }
                let encoding = resp
                    .headers()
                    .get(reqwest::header::CONTENT_ENCODING)
                    .map(|v| {
                        String::from_utf8_lossy(v.as_bytes())
                            .trim()
                            .to_ascii_lowercase()
                    });
                let body = read_prefix(resp, MAX_PLAN_BYTES)
                    .await
                    .map_err(|e| Attempt::retry(Problem::Unreachable(describe(&e))))?;
                self.answered();
                if !body.whole {
                    return too_large(body.seen);
                }
                let bytes = match encoding.as_deref() {
                    None | Some("identity") => body.bytes,
                    Some("gzip") => match gunzip(&body.bytes) {
                        Ok(b) => b,
                        Err(error) => return Ok(Some(Fetched::Invalid { generation, error })),
                    },
                    Some(other) => {
                        let error = PlanError::Malformed(format!(
                            "the plan came in an encoding the agent did not ask for: {}",
                            truncate(other)
                        ));
                        return Ok(Some(Fetched::Invalid { generation, error }));
                    }
                };
                Ok(Some(match Plan::from_json(&bytes) {
                    Ok(p) => Fetched::Plan(p),
                    Err(error) => Fetched::Invalid { generation, error },
                }))
            }
            StatusCode::NO_CONTENT => {
                self.answered();
                Ok(None)
            }
            _ => Err(unsuccessful(resp).await),
        }
    }

    /// The error of a request that [`retry::run`] gave up on; `secs` is the deadline
    /// (or the time spent, without one).
    fn gave_up(&self, e: GaveUp<Problem>, secs: u64) -> FetchError {
        match e {
            GaveUp::Failed(Problem::Redirected { status, location }) => FetchError::Redirected {
                url: self.base.clone(),
                status,
                location,
            },
            GaveUp::Failed(Problem::Refused { status, body }) => FetchError::Refused {
                url: self.base.clone(),
                status,
                body,
            },
            other => FetchError::Unreachable {
                url: self.base.clone(),
                secs,
                last: other.to_string(),
            },
        }
    }

    /// Waits for a plan newer than `after`. With a `deadline`, gives up with
    /// [`FetchError::Unreachable`] once the coordinator has not answered for that long
    /// ([`MetadataClient::last_answer`]; a 204 at the end of a long-poll is an answer):
    /// retryable failures are retried until then, and a request still in flight then
    /// (a connection, a held long-poll, a slow body) is dropped. Without one (resident
    /// mode), retries for ever.
    ///
    /// With `quiet_at` (when the resident agent's liveness report is due), the
    /// long-polls are asked to end by then, and the first that ends with no newer plan
    /// at or after it returns [`Fetched::Quiet`]. The report then goes out on the
    /// connection the poll leaves idle: dropping a held poll to report would close its
    /// connection and cost a TLS handshake per report (section 13 of
    /// docs/benchmarks.md).
    pub async fn wait_for_plan(
        &self,
        after: u64,
        deadline: Option<Duration>,
        quiet_at: Option<Instant>,
    ) -> Result<Fetched, FetchError> {
        let start = Instant::now();
        loop {
            let until = self.until(deadline);
            let policy = Policy {
                until,
                ..Policy::new("fetching the plan", retry::COORDINATOR)
            };
            let wait = long_poll_wait(until).min(quiet_wait(quiet_at));
            match retry::run(&policy, || self.poll_once(after, wait)).await {
                Ok(Some(f)) => return Ok(f),
                Ok(None) if quiet_at.is_some_and(|q| Instant::now() + QUIET_SLACK >= q) => {
                    return Ok(Fetched::Quiet)
                }
                // The long-poll ran out with no newer plan: ask again.
                Ok(None) => {}
                Err(e) => {
                    let secs = deadline.unwrap_or(start.elapsed()).as_secs();
                    return Err(self.gave_up(e, secs));
                }
            }
        }
    }

    /// Reports this node's status; retries retryable failures briefly (about 8 s). A
    /// report still undelivered then is the caller's to send again later
    /// ([`FetchError::Unreachable`]).
    pub async fn report(&self, status: &NodeStatus) -> Result<(), FetchError> {
        self.report_with(status, 5, None).await
    }

    /// Reports this node's status in at most `attempts` tries and, with a `deadline`,
    /// only until the coordinator has not answered for that long (as
    /// [`MetadataClient::wait_for_plan`]).
    pub async fn report_with(
        &self,
        status: &NodeStatus,
        attempts: u32,
        deadline: Option<Duration>,
    ) -> Result<(), FetchError> {
        let url = format!(
            "{}{}",
            self.base,
            contract::status_path(&self.key, &self.node)
        );
        let start = Instant::now();
        let policy = Policy {
            until: self.until(deadline),
            max_attempts: attempts.max(1),
            ..Policy::new("reporting the status", retry::COORDINATOR)
        };
        let put = || async {
            let resp = self
                .http
                .put(&url)
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(10))
                .json(status)
                .send()
                .await
                .map_err(|e| Attempt::retry(Problem::Unreachable(describe(&e))))?;
            if resp.status().is_success() {
                self.answered();
                Ok(())
            } else {
                Err(unsuccessful(resp).await)
            }
        };
        retry::run(&policy, put).await.map_err(|e| {
            let secs = deadline.unwrap_or(start.elapsed()).as_secs();
            self.gave_up(e, secs)
        })
    }
}

/// Time left for the coordinator's answer to travel back after a long-poll it held.
const ROUND_TRIP_MARGIN: Duration = Duration::from_secs(2);

/// How long to ask the coordinator to hold a long-poll: [`LONG_POLL_SECS`], or less so
/// that its 204 arrives before the deadline (at least a second, so polls never spin).
fn long_poll_wait(until: Option<Instant>) -> u64 {
    until.map_or(LONG_POLL_SECS, |until| {
        until
            .saturating_duration_since(Instant::now())
            .saturating_sub(ROUND_TRIP_MARGIN)
            .as_secs()
            .clamp(1, LONG_POLL_SECS)
    })
}

/// How early a long-poll may end before `quiet_at` and still count as quiet (the
/// coordinator's timer and this one's need not agree to the millisecond).
pub(crate) const QUIET_SLACK: Duration = Duration::from_secs(1);

/// How long to hold a long-poll that should end at `quiet_at`: the time left rounded up
/// to whole seconds (rounded down, every report would come up to a second early: 25 %
/// more reports at the default 5 s), at least one so polls never spin, or
/// [`LONG_POLL_SECS`] without one.
fn quiet_wait(quiet_at: Option<Instant>) -> u64 {
    quiet_at.map_or(LONG_POLL_SECS, |q| {
        let left = q.saturating_duration_since(Instant::now());
        (left.as_secs() + u64::from(left.subsec_nanos() > 0)).clamp(1, LONG_POLL_SECS)
    })
}

/// Inflates a gzipped plan, reading at most one byte past [`MAX_PLAN_BYTES`]: a small
/// body that inflates beyond the limit is refused as too large, not held in memory.
fn gunzip(gz: &[u8]) -> Result<Vec<u8>, PlanError> {
    use std::io::Read as _;
    let mut out = Vec::with_capacity(gz.len().saturating_mul(8).min(MAX_PLAN_BYTES));
    flate2::read::GzDecoder::new(gz)
        .take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| PlanError::Malformed(format!("the gzipped plan does not inflate: {e}")))?;
    if out.len() > MAX_PLAN_BYTES {
        return Err(PlanError::TooLarge {
            size: out.len(),
            limit: MAX_PLAN_BYTES,
        });
    }
    Ok(out)
}

/// A reqwest error without its URL (which carries the cluster key).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut msg = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn truncate(s: &str) -> String {
    let mut t: String = s.chars().take(512).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}
