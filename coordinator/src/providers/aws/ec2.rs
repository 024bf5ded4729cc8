//! A small client for AWS Query APIs (EC2, and IAM in the tests): form-encoded POSTs
//! signed with SigV4, XML answers, and AWS's XML errors turned into codes.
//!
//! Retries follow `crate::providers::retry`: connection failures, 5xx and throttling codes are
//! retried; everything else (auth errors, bad parameters, quotas) fails at once with
//! AWS's own code and message.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use roxmltree::{Document, Node};
use shoal_protocol::backoff::Backoff;

use super::credentials::Credentials;
use crate::providers::retry::{retry, Verdict, CLOUD_BACKOFF};
use crate::providers::ProviderError;

/// The EC2 Query API version Shoal speaks.
pub const EC2_API_VERSION: &str = "2016-11-15";

/// Error codes that mean "slow down": retried like 5xx.
const THROTTLING: [&str; 6] = [
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "Unavailable",
    "ServiceUnavailable",
];

/// A failed Query API call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    /// No answer: the connection failed or timed out.
    #[error("{operation}: cannot reach {endpoint}: {message}")]
    Transport {
        /// The API action.
        operation: String,
        /// The endpoint.
        endpoint: String,
        /// What the HTTP client said.
        message: String,
    },
    /// AWS answered with an error document.
    #[error("{operation} failed (HTTP {status}): {code}: {message}")]
    Api {
        /// The API action.
        operation: String,
        /// HTTP status.
        status: u16,
        /// AWS's error code, verbatim.
        code: String,
        /// AWS's message, verbatim.
        message: String,
    },
    /// An answer that is not what the API returns (not XML, or missing a field).
    #[error("{operation}: unexpected answer from {endpoint} (HTTP {status}): {message}")]
    BadResponse {
        /// The API action.
        operation: String,
        /// The endpoint.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// What was wrong, with the start of the body.
        message: String,
    },
    /// The request could not be signed (malformed endpoint or credentials).
    #[error("{operation}: cannot sign the request: {message}")]
    Signing {
        /// The API action.
        operation: String,
        /// The signer's message.
        message: String,
    },
}

impl AwsError {
    /// AWS's error code, when AWS gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Whether a failed call is worth repeating: connection errors, 5xx and throttling
/// are; auth errors (`AuthFailure`, `SignatureDoesNotMatch`, …), bad parameters
/// (`InvalidAMIID.*`), quotas (`InstanceLimitExceeded`, `VcpuLimitExceeded`) and every
/// other 4xx are not.
pub fn classify(err: &AwsError) -> Verdict {
    match err {
        AwsError::Transport { .. } => Verdict::Retry { after: None },
        AwsError::Api { status, code, .. } => {
            if THROTTLING.contains(&code.as_str()) || *status >= 500 {
                Verdict::Retry { after: None }
            } else {
                Verdict::Fail
            }
        }
        AwsError::BadResponse { status, .. } if *status >= 500 => Verdict::Retry { after: None },
        AwsError::BadResponse { .. } | AwsError::Signing { .. } => Verdict::Fail,
    }
}

impl From<AwsError> for ProviderError {
    fn from(e: AwsError) -> ProviderError {
        match e {
            AwsError::Api {
                operation,
                code,
                message,
                ..
            } => ProviderError::Api {
                provider: "aws",
                operation,
                code,
                message,
            },
            AwsError::Signing { .. } => ProviderError::Config {
                provider: "aws",
                message: e.to_string(),
            },
            AwsError::Transport { .. } | AwsError::BadResponse { .. } => {
                ProviderError::Unavailable {
                    provider: "aws",
                    message: e.to_string(),
                }
            }
        }
    }
}

/// The HTTP client the AWS provider uses: rustls on *ring*, bounded timeouts.
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    // Another part of the program may have installed it already; either way one is set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config {
            provider: "aws",
            message: format!("cannot build the HTTP client: {e}"),
        })
}

/// Request parameters in order. Query APIs number list members from 1
/// (`InstanceId.1`, `Filter.1.Value.1`).
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// No parameters.
    pub fn new() -> Params {
        Params::default()
    }

    /// Adds one parameter.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Params {
        self.0.push((key.into(), value.into()));
        self
    }

    /// Adds `PREFIX.1`, `PREFIX.2`, … for a list.
    pub fn list<S: AsRef<str>>(mut self, prefix: &str, values: &[S]) -> Params {
        for (i, v) in values.iter().enumerate() {
            self.0
                .push((format!("{prefix}.{}", i + 1), v.as_ref().to_string()));
        }
        self
    }

    /// Adds `Filter.N.Name` / `Filter.N.Value.M` for each filter.
    pub fn filters(mut self, filters: &[(&str, &[&str])]) -> Params {
        for (i, (name, values)) in filters.iter().enumerate() {
            let n = i + 1;
            self.0.push((format!("Filter.{n}.Name"), name.to_string()));
            for (j, v) in values.iter().enumerate() {
                self.0
                    .push((format!("Filter.{n}.Value.{}", j + 1), v.to_string()));
            }
        }
        self
    }

    /// Adds `TagSpecification.N` for a resource type with the given tags.
    pub fn tag_spec(mut self, n: usize, resource_type: &str, tags: &[(&str, &str)]) -> Params {
        let p = format!("TagSpecification.{n}");
        self.0
            .push((format!("{p}.ResourceType"), resource_type.to_string()));
        for (i, (k, v)) in tags.iter().enumerate() {
            self.0
                .push((format!("{p}.Tag.{}.Key", i + 1), k.to_string()));
            self.0
                .push((format!("{p}.Tag.{}.Value", i + 1), v.to_string()));
        }
        self
    }
}

/// A signed Query API client for one service, region and endpoint.
#[derive(Debug, Clone)]
pub struct QueryClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    host: String,
    region: String,
    service: &'static str,
    version: &'static str,
    credentials: Credentials,
    backoff: Backoff,
}

impl QueryClient {
    /// A client for `service` (the SigV4 signing name, e.g. `ec2`, `iam`) speaking API
    /// `version` at `endpoint`.
    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        region: &str,
        service: &'static str,
        version: &'static str,
        credentials: Credentials,
    ) -> Result<QueryClient, ProviderError> {
        let bad = |why: &str| ProviderError::Config {
            provider: "aws",
            message: format!("invalid {service} endpoint URL {endpoint:?}: {why}"),
        };
        let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(bad("no host")),
        };
        Ok(QueryClient {
            http,
            endpoint: url,
            host,
            region: region.to_string(),
            service,
            version,
            credentials,
            backoff: CLOUD_BACKOFF,
        })
    }

    /// Replaces the retry schedule (tests use short ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> QueryClient {
        self.backoff = backoff;
        self
    }

    /// The retry schedule in use.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Calls `action`, retrying what is worth retrying; returns the XML answer.
    pub async fn call(&self, action: &str, params: &Params) -> Result<String, AwsError> {
        retry(&self.backoff, action, classify, || {
            self.call_once(action, params)
        })
        .await
    }

    /// Calls `action` once; returns the XML answer.
    pub async fn call_once(&self, action: &str, params: &Params) -> Result<String, AwsError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", action)
            .append_pair("Version", self.version)
            .extend_pairs(params.0.iter())
            .finish();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signed = self.sign(action, content_type, &body)?;

        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::HOST, &self.host)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        for (name, value) in &signed {
            req = req.header(name.as_str(), value.as_str());
        }
        tracing::debug!(service = self.service, %action, endpoint = %self.endpoint, "calling");
        let transport = |e: reqwest::Error| AwsError::Transport {
            operation: action.to_string(),
            endpoint: self.endpoint.to_string(),
            message: error_chain(&e),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        Err(parse_error(action, self.endpoint.as_str(), status, &text))
    }

    /// Signs a POST of `body`; returns the headers to add (authorization, date, token).
    fn sign(
        &self,
        action: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Vec<(String, String)>, AwsError> {
        let signing_error = |e: &dyn std::fmt::Display| AwsError::Signing {
            operation: action.to_string(),
            message: e.to_string(),
        };
        let identity = self.credentials.to_signing().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e))?
            .into();
        let headers = [("content-type", content_type), ("host", self.host.as_str())];
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| signing_error(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| signing_error(&e))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// The error's own message and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

/// Reads AWS's error document: EC2's `<Response><Errors><Error>` or the
/// `<ErrorResponse><Error>` of IAM and STS; both carry `Code` and `Message`.
pub fn parse_error(operation: &str, endpoint: &str, status: u16, body: &str) -> AwsError {
    let found = Document::parse(body).ok().and_then(|doc| {
        let err = doc
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "Error")?;
        let code = child_text(err, "Code")?.to_string();
        let message = child_text(err, "Message").unwrap_or_default().to_string();
        Some((code, message))
    });
    match found {
        Some((code, message)) => AwsError::Api {
            operation: operation.to_string(),
            status,
            code,
            message,
        },
        None => AwsError::BadResponse {
            operation: operation.to_string(),
            endpoint: endpoint.to_string(),
            status,
            message: format!("no error document in the answer: {}", snippet(body)),
        },
    }
}

/// The start of a body, for messages.
fn snippet(body: &str) -> String {
    let mut s: String = body.chars().take(200).collect();
    if body.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// Parses an answer, turning malformed XML into a `BadResponse`.
pub fn parse<'a>(operation: &str, endpoint: &str, body: &'a str) -> Result<Document<'a>, AwsError> {
    Document::parse(body).map_err(|e| AwsError::BadResponse {
        operation: operation.to_string(),
        endpoint: endpoint.to_string(),
        status: 200,
        message: format!("invalid XML ({e}): {}", snippet(body)),
    })
}

/// The first child element with this local name (namespaces ignored: EC2 puts its
/// answers in a versioned default namespace).
pub fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The text of the first child element with this name.
pub fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.text()).map(str::trim)
}

/// The `<item>` elements of the list child `set` (`instancesSet`, `vpcSet`, …).
pub fn items<'a, 'i>(node: Node<'a, 'i>, set: &str) -> Vec<Node<'a, 'i>> {
    child(node, set)
        .map(|s| {
            s.children()
                .filter(|c| c.is_element() && c.tag_name().name() == "item")
                .collect()
        })
        .unwrap_or_default()
}

/// The first element anywhere below `node` with this name.
pub fn find<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.descendants()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The `tagSet` of a resource as key → value.
pub fn tags(node: Node<'_, '_>) -> std::collections::BTreeMap<String, String> {
    items(node, "tagSet")
        .into_iter()
        .filter_map(|t| {
            Some((
                child_text(t, "key")?.to_string(),
                child_text(t, "value").unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> AwsError {
        AwsError::Api {
            operation: "RunInstances".into(),
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn retries_only_throttling_5xx_and_transport_errors() {
        let retry = Verdict::Retry { after: None };
        for (status, code) in [
            (503, "RequestLimitExceeded"),
            (400, "RequestLimitExceeded"),
            (400, "Throttling"),
            (400, "ThrottlingException"),
            (503, "Unavailable"),
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
        ] {
            assert_eq!(classify(&api(status, code)), retry, "{status} {code}");
        }
        for (status, code) in [
            (401, "AuthFailure"),
            (403, "InvalidClientTokenId"),
            (403, "SignatureDoesNotMatch"),
            (400, "InvalidAMIID.NotFound"),
            (400, "InvalidAMIID.Malformed"),
            (400, "InstanceLimitExceeded"),
            (400, "VcpuLimitExceeded"),
            (400, "InvalidParameterValue"),
            (404, "Whatever"),
        ] {
            assert_eq!(
                classify(&api(status, code)),
                Verdict::Fail,
                "{status} {code}"
            );
        }
        let transport = AwsError::Transport {
            operation: "DescribeInstances".into(),
            endpoint: "http://127.0.0.1:1/".into(),
            message: "connection refused".into(),
        };
        assert_eq!(classify(&transport), retry);
        let bad = |status| AwsError::BadResponse {
            operation: "X".into(),
            endpoint: "e".into(),
            status,
            message: "html".into(),
        };
        assert_eq!(classify(&bad(502)), retry);
        assert_eq!(classify(&bad(400)), Verdict::Fail);
    }

    #[test]
    fn reads_ec2_and_iam_error_documents_verbatim() {
        let ec2 = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>The image id '[ami-1]' does not exist</Message></Error></Errors><RequestID>r-1</RequestID></Response>"#;
        match parse_error("RunInstances", "e", 400, ec2) {
            AwsError::Api {
                code,
                message,
                status,
                operation,
            } => {
                assert_eq!(code, "InvalidAMIID.NotFound");
                assert_eq!(message, "The image id '[ami-1]' does not exist");
                assert_eq!(status, 400);
                assert_eq!(operation, "RunInstances");
            }
            other => panic!("{other:?}"),
        }
        let iam = r#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        let e = parse_error("CreateUser", "e", 403, iam);
        assert_eq!(e.code(), Some("InvalidClientTokenId"));
        let p: ProviderError = e.into();
        assert!(matches!(p, ProviderError::Api { ref code, .. } if code == "InvalidClientTokenId"));

        let html = "<html><body>Bad Gateway</body></html>";
        let e = parse_error("DescribeVpcs", "http://x/", 502, html);
        assert!(
            matches!(e, AwsError::BadResponse { status: 502, .. }),
            "{e:?}"
        );
        assert!(matches!(
            ProviderError::from(e),
            ProviderError::Unavailable { .. }
        ));
    }

    #[test]
    fn params_number_lists_filters_and_tags_from_one() {
        let p = Params::new()
            .list("InstanceId", &["i-1", "i-2"])
            .filters(&[
                ("tag:shoal:cluster", &["c-1"]),
                ("instance-state-name", &["pending", "running"]),
            ])
            .tag_spec(1, "vpc", &[("shoal:cluster", "c-1"), ("Name", "c-1")]);
        let got: Vec<String> = p.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "InstanceId.1=i-1",
                "InstanceId.2=i-2",
                "Filter.1.Name=tag:shoal:cluster",
                "Filter.1.Value.1=c-1",
                "Filter.2.Name=instance-state-name",
                "Filter.2.Value.1=pending",
                "Filter.2.Value.2=running",
                "TagSpecification.1.ResourceType=vpc",
                "TagSpecification.1.Tag.1.Key=shoal:cluster",
                "TagSpecification.1.Tag.1.Value=c-1",
                "TagSpecification.1.Tag.2.Key=Name",
                "TagSpecification.1.Tag.2.Value=c-1",
            ]
        );
    }

    /// A scripted HTTP server on loopback: answers each connection with the next
    /// (status, body) pair, then closes it.
    async fn scripted(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the headers and the body (Content-Length) before answering.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (url, seen)
    }

    fn client(url: &str) -> QueryClient {
        QueryClient::new(
            http_client().expect("client"),
            url,
            "us-east-1",
            "ec2",
            EC2_API_VERSION,
            Credentials::new("AKIATEST", "secret", None, "test"),
        )
        .expect("client")
        .with_backoff(Backoff {
            initial: Duration::from_millis(5),
            cap: Duration::from_millis(10),
            deadline: Duration::from_secs(10),
        })
    }

    const THROTTLED: &str = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>";
    const AUTH: &str = "<Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors></Response>";
    const OK: &str = "<DescribeVpcsResponse><vpcSet/></DescribeVpcsResponse>";

    #[tokio::test]
    async fn throttling_and_5xx_are_retried_until_success() {
        let (url, seen) = scripted(vec![(503, THROTTLED), (500, "oops"), (200, OK)]).await;
        let body = client(&url)
            .call("DescribeVpcs", &Params::new())
            .await
            .expect("third try succeeds");
        assert_eq!(body, OK);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn auth_failures_are_not_retried() {
        let (url, seen) = scripted(vec![(401, AUTH), (200, OK)]).await;
        let err = client(&url)
            .call("DescribeVpcs", &Params::new())
            .await
            .expect_err("fails");
        assert_eq!(err.code(), Some("AuthFailure"));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
