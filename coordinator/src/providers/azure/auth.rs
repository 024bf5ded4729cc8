//! Tokens for Azure Resource Manager: the OAuth 2.0 client-credentials grant with a
//! certificate client assertion (a JWT signed with the stored credential's key), as the
//! Microsoft identity platform documents it for `private_key_jwt`.
//!
//! The assertion carries `alg: PS256` and the certificate's SHA-256 thumbprint as
//! `x5t#S256`, the header Entra ID looks the uploaded certificate up by. Tokens are
//! cached until five minutes before they expire, and neither tokens nor assertions
//! ever reach a log or an error message.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::Url;
use serde::Deserialize;
use shoal_protocol::backoff::Backoff;

use crate::providers::azure::credentials::AzureCredential;
use crate::providers::retry::{retry, retry_after, Verdict};
use crate::providers::ProviderError;

/// Entra ID's authority host in Azure's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Azure Resource Manager in Azure's public cloud.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// Environment override of the authority host (sovereign clouds, tests).
pub const ENV_AUTHORITY_HOST: &str = "SHOAL_AZURE_AUTHORITY_HOST";
/// Environment override of the ARM endpoint.
pub const ENV_ARM_ENDPOINT: &str = "SHOAL_AZURE_ARM_ENDPOINT";
/// A cached token is replaced this long before it expires, so a call never starts with
/// a token about to lapse.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime of a client assertion; the documentation asks for 5 to 10 minutes.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Where tokens come from and where they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// e.g. `https://login.microsoftonline.com` (no trailing slash).
    pub authority_host: String,
    /// e.g. `https://management.azure.com` (no trailing slash).
    pub arm: String,
    /// The token scope: `{arm}/.default` unless `arm-scope` says otherwise (some
    /// sovereign clouds name ARM's audience differently from its URL).
    pub scope: String,
}

impl Endpoints {
    /// Resolves the endpoints: `--set authority-host=…`/`arm-endpoint=…`/`arm-scope=…`
    /// first, then `SHOAL_AZURE_AUTHORITY_HOST`/`SHOAL_AZURE_ARM_ENDPOINT`, then the
    /// public cloud.
    pub fn resolve(extra: &BTreeMap<String, String>) -> Result<Endpoints, ProviderError> {
        let pick = |key: &str, env: &str, default: &str| {
            extra
                .get(key)
                .cloned()
                .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
                .unwrap_or_else(|| default.to_string())
        };
        let authority_host = check_endpoint(
            "authority-host",
            &pick("authority-host", ENV_AUTHORITY_HOST, DEFAULT_AUTHORITY_HOST),
        )?;
        let arm = check_endpoint(
            "arm-endpoint",
            &pick("arm-endpoint", ENV_ARM_ENDPOINT, DEFAULT_ARM_ENDPOINT),
        )?;
        let scope = extra
            .get("arm-scope")
            .cloned()
            .unwrap_or_else(|| format!("{arm}/.default"));
        Ok(Endpoints {
            authority_host,
            arm,
            scope,
        })
    }
}

/// Checks an endpoint URL: `https://`, or `http://` on a loopback host only (a local
/// fake), so a bearer token never crosses a network in clear text. Returns it without
/// a trailing slash.
pub fn check_endpoint(what: &str, url: &str) -> Result<String, ProviderError> {
    let bad = |why: &str| ProviderError::Config {
        provider: "azure",
        message: format!("{what} {url:?}: {why}"),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback(&parsed) => {}
        "http" => return Err(bad("plain http is allowed only on a loopback host")),
        _ => return Err(bad("must be an https:// URL")),
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Whether `url` has the same scheme, host and port as `base`: a bearer token is only
/// ever sent to the endpoint it was issued for, whatever URL a response points at.
pub fn same_origin(base: &str, url: &str) -> bool {
    match (Url::parse(base), Url::parse(url)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str().map(str::to_ascii_lowercase)
                    == b.host_str().map(str::to_ascii_lowercase)
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

/// An access token. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<str>,
    expires_at: Instant,
}

impl AccessToken {
    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    /// When it expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Entra ID's token response.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: serde_json::Value,
}

/// Entra ID's error response.
#[derive(Deserialize)]
struct TokenErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A failed token request and whether it is worth another try.
#[derive(Debug)]
struct TokenCallError {
    error: ProviderError,
    verdict: Verdict,
}

impl fmt::Display for TokenCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// Gets and caches tokens for one credential, authority and scope.
pub struct TokenSource {
    http: reqwest::Client,
    credential: Arc<AzureCredential>,
    token_url: String,
    scope: String,
    backoff: Backoff,
    // A tokio mutex, held while a token is fetched, so concurrent callers wait for one
    // request instead of each making their own.
    cache: tokio::sync::Mutex<Option<AccessToken>>,
    requests: AtomicU32,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("credential", &self.credential.name())
            .field("token_url", &self.token_url)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A token source for `credential` against `endpoints`.
    pub fn new(
        http: reqwest::Client,
        credential: Arc<AzureCredential>,
        endpoints: &Endpoints,
        backoff: Backoff,
    ) -> TokenSource {
        let token_url = format!(
            "{}/{}/oauth2/v2.0/token",
            endpoints.authority_host, credential.info.tenant_id
        );
        TokenSource {
            http,
            credential,
            token_url,
            scope: endpoints.scope.clone(),
            backoff,
            cache: tokio::sync::Mutex::new(None),
            requests: AtomicU32::new(0),
        }
    }

    /// The credential tokens are made for.
    pub fn credential(&self) -> &AzureCredential {
        &self.credential
    }

    /// How many token requests this source has sent.
    pub fn requests_sent(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }

    /// A valid token: the cached one while it has more than [`REFRESH_MARGIN`] left,
    /// else a new one.
    pub async fn token(&self) -> Result<AccessToken, ProviderError> {
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.as_ref() {
            if t.expires_at > Instant::now() + REFRESH_MARGIN {
                return Ok(t.clone());
            }
        }
        let token = self.request_token().await?;
        *cache = Some(token.clone());
        Ok(token)
    }

    /// Forgets the cached token (ARM said it is invalid or expired).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// Builds a signed client assertion.
    pub fn client_assertion(&self) -> Result<String, ProviderError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.credential.x5t_s256(),
        });
        let jti: [u8; 16] = rand::random();
        let client = &self.credential.info.client_id;
        let claims = serde_json::json!({
            "aud": self.token_url,
            "iss": client,
            "sub": client,
            "jti": uuid_string(&jti),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .credential
            .sign_ps256(signing_input.as_bytes())
            .map_err(|e| ProviderError::Config {
                provider: "azure",
                message: e.to_string(),
            })?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    async fn request_token(&self) -> Result<AccessToken, ProviderError> {
        let what = format!("token request to {}", self.token_url);
        let result = retry(
            &self.backoff,
            &what,
            |e: &TokenCallError| e.verdict,
            || self.request_once(),
        )
        .await;
        match result {
            Ok(t) => {
                tracing::debug!(credential = %self.credential.name(), "got an ARM access token");
                Ok(t)
            }
            Err(e) if matches!(e.verdict, Verdict::Retry { .. }) => {
                Err(ProviderError::Unavailable {
                    provider: "azure",
                    message: format!(
                        "gave up on the token endpoint {} after the retry deadline of {}s: {}",
                        self.token_url,
                        self.backoff.deadline.as_secs(),
                        e.error
                    ),
                })
            }
            Err(e) => Err(e.error),
        }
    }

    async fn request_once(&self) -> Result<AccessToken, TokenCallError> {
        let fail = |error| TokenCallError {
            error,
            verdict: Verdict::Fail,
        };
        let assertion = self.client_assertion().map_err(fail)?;
        self.requests.fetch_add(1, Ordering::SeqCst);
        let form = [
            ("client_id", self.credential.info.client_id.as_str()),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| TokenCallError {
                error: ProviderError::Unavailable {
                    provider: "azure",
                    message: format!("cannot reach the token endpoint {}: {e}", self.token_url),
                },
                verdict: Verdict::Retry { after: None },
            })?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(|e| TokenCallError {
            error: ProviderError::Unavailable {
                provider: "azure",
                message: format!("reading the answer of {}: {e}", self.token_url),
            },
            verdict: Verdict::Retry { after: None },
        })?;
        if status.is_success() {
            let t: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| {
                fail(ProviderError::Api {
                    provider: "azure",
                    operation: "token".into(),
                    code: "InvalidTokenResponse".into(),
                    message: format!("the token endpoint answered with unreadable JSON: {e}"),
                })
            })?;
            if let Some(tt) = &t.token_type {
                if !tt.eq_ignore_ascii_case("bearer") {
                    return Err(fail(ProviderError::Api {
                        provider: "azure",
                        operation: "token".into(),
                        code: "InvalidTokenResponse".into(),
                        message: format!("unexpected token type {tt:?}"),
                    }));
                }
            }
            // `expires_in` is a number, though some endpoints send it as a string.
            let secs = match &t.expires_in {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .unwrap_or(0);
            return Ok(AccessToken {
                secret: t.access_token.into(),
                expires_at: started + Duration::from_secs(secs),
            });
        }
        let (code, message) = match serde_json::from_slice::<TokenErrorBody>(&bytes) {
            Ok(b) => (b.error, b.error_description),
            Err(_) => (
                format!("HTTP{}", status.as_u16()),
                String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            ),
        };
        let error = ProviderError::Api {
            provider: "azure",
            operation: format!("token (credential {})", self.credential.name()),
            code,
            message,
        };
        let verdict = if status.as_u16() == 429 || status.is_server_error() {
            Verdict::Retry { after: retry_after }
        } else {
            Verdict::Fail
        };
        Err(TokenCallError { error, verdict })
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A random (version 4) UUID string from 16 random bytes.
fn uuid_string(bytes: &[u8; 16]) -> String {
    let mut b = *bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_the_public_cloud_and_refuse_clear_text_off_loopback() {
        let mut extra = BTreeMap::new();
        extra.insert(
            "authority-host".to_string(),
            "https://login.example.cn/".into(),
        );
        extra.insert("arm-endpoint".to_string(), "http://127.0.0.1:8080".into());
        let e = Endpoints::resolve(&extra).expect("valid");
        assert_eq!(e.authority_host, "https://login.example.cn");
        assert_eq!(e.arm, "http://127.0.0.1:8080");
        assert_eq!(e.scope, "http://127.0.0.1:8080/.default");
        assert!(check_endpoint("arm-endpoint", "http://management.example.com").is_err());
        assert!(check_endpoint("arm-endpoint", "ftp://x").is_err());
        assert!(check_endpoint("arm-endpoint", "http://[::1]:9/").is_ok());
        assert!(check_endpoint("arm-endpoint", "http://localhost:9").is_ok());
    }

    #[test]
    fn origins_and_encodings() {
        assert!(same_origin(
            "https://management.azure.com",
            "https://MANAGEMENT.azure.com:443/subscriptions/x?api-version=1"
        ));
        assert!(!same_origin(
            "https://management.azure.com",
            "https://evil.example/subscriptions"
        ));
        assert!(!same_origin("http://127.0.0.1:1", "http://127.0.0.1:2/x"));
        assert_eq!(form_encode("a b/c:.default"), "a+b%2Fc%3A.default");
        let u = uuid_string(&[0xff; 16]);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn tokens_do_not_show_in_debug() {
        let t = AccessToken {
            secret: "very-secret".into(),
            expires_at: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
