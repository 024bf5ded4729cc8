//! The Microsoft identity platform's token endpoint (`POST /{tenant}/oauth2/v2.0/token`,
//! client-credentials grant with a certificate client assertion), the verification
//! of that assertion, and the bearer tokens ARM calls must carry.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use super::state::{App, AppCert, State, Token};
use super::wire::{err, new_guid, now_unix, parse_query, Answer, ArmErr};

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

/// A certificate as an operator uploads it (PEM), with the thumbprints an assertion
/// names it by. Panics on anything but an X.509 certificate: a test's mistake.
pub(super) fn app_cert(cert_pem: &str) -> AppCert {
    let der = pem_block(cert_pem, "CERTIFICATE").expect("a PEM certificate");
    let cert_der = rustls_pki_types::CertificateDer::from(der.clone());
    webpki::EndEntityCert::try_from(&cert_der).expect("an X.509 certificate webpki can parse");
    let sha256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der));
    let sha1 = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &der,
    ));
    AppCert { der, sha256, sha1 }
}

impl State {
    /// Registers `cert` on app `client_id` of `tenant` (several may be registered).
    pub(super) fn register_cert(&mut self, tenant: &str, client_id: &str, cert: AppCert) {
        let app = self
            .apps
            .entry(client_id.to_ascii_lowercase())
            .or_insert_with(|| App {
                tenant: tenant.to_ascii_lowercase(),
                certs: Vec::new(),
            });
        app.certs.push(cert);
    }

    pub(super) fn token(&mut self, tenant: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
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

    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Result<String, ArmErr> {
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
