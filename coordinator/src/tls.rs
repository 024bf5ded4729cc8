//! The coordinator's certificate authority and the TLS configuration of its listeners.
//!
//! At first start `shoal serve` makes a CA in the state directory: `ca-key.pem` (PKCS#8
//! ECDSA P-256, mode 0600) and `ca.pem` (its self-signed certificate, mode 0644). The CA
//! certificate travels to every agent in its user-data (`ca_cert_pem`), and agents
//! trust nothing else. At every start the coordinator signs a fresh server certificate
//! for the names and addresses its listeners are reached at (the local VPC gateway, the
//! host of `--advertise-url`, `--tls-san`); that certificate's key lives only in memory.
//!
//! The CA is never made again over an existing one: a lost or unreadable key is an
//! error, because a new CA would cut every running agent off.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration as TimeDuration, OffsetDateTime};

use crate::keys;
use crate::keys::{pem_decode, pem_encode};

/// The CA certificate, in the state directory (mode 0644: it is public).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key, in the state directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Common name of every Shoal CA. Constant, because the issuer of a server certificate
/// is rebuilt from it at each start (it must equal the subject inside `ca.pem`).
const CA_COMMON_NAME: &str = "Shoal coordinator CA";

/// TLS set-up failures. None carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a CA file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A CA file exists but is not usable; it is not replaced.
    #[error("{path}: {message}; the CA is not made again over it (that would cut running agents off): restore the file, or move both {CA_CERT_FILE} and {CA_KEY_FILE} away to start over")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Generating a key or certificate.
    #[error("generating the {what}: {message}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's message.
        message: String,
    },
    /// A subject alternative name that is neither an address nor a DNS name.
    #[error("{name:?} cannot be a certificate name: {message}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The coordinator's CA: its key signs the listeners' certificates.
pub struct Ca {
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
    dir: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("cert", &self.dir.join(CA_CERT_FILE))
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Shoal");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn random_serial() -> rcgen::SerialNumber {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive serial number
    rcgen::SerialNumber::from_slice(&serial)
}

fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |e| TlsError::Generate {
        what,
        message: e.to_string(),
    }
}

impl Ca {
    /// Loads the CA from `state_dir`, or makes one when neither file exists.
    pub fn load_or_create(state_dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => Self::create(state_dir),
            (true, true) => Self::load(state_dir),
            (true, false) => Err(TlsError::Invalid {
                path: key_path,
                message: "missing".into(),
            }),
            (false, true) => Err(TlsError::Invalid {
                path: cert_path,
                message: "missing".into(),
            }),
        }
    }

    fn create(state_dir: &Path) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(generate("CA key"))?;
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - TimeDuration::days(1);
        params.not_after = now + TimeDuration::days(365 * 20);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(generate("CA certificate"))?;
        let cert_der = cert.der().to_vec();
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let key_path = state_dir.join(CA_KEY_FILE);
        let cert_path = state_dir.join(CA_CERT_FILE);
        // The key first: a certificate without its key is refused at the next start.
        keys::write_secret_file(
            &key_path,
            pem_encode("PRIVATE KEY", &key.serialize_der()).as_bytes(),
        )
        .map_err(|source| TlsError::Io {
            path: key_path.clone(),
            source,
        })?;
        keys::write_file_atomic(&cert_path, cert_pem.as_bytes(), 0o644).map_err(|source| {
            TlsError::Io {
                path: cert_path.clone(),
                source,
            }
        })?;
        tracing::info!(cert = %cert_path.display(), "created the coordinator's certificate authority");
        Ok(Ca {
            key,
            cert_pem,
            cert_der,
            dir: state_dir.to_path_buf(),
        })
    }

    fn load(state_dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let meta = std::fs::metadata(&key_path).map_err(|source| TlsError::Io {
            path: key_path.clone(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            // Tighten rather than refuse: the key is ours, and refusing would stop the
            // coordinator over a mode someone else widened.
            tracing::warn!(path = %key_path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the CA key was readable by others; setting mode 0600");
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| TlsError::Io {
                    path: key_path.clone(),
                    source,
                },
            )?;
        }
        let key_der =
            pem_decode("PRIVATE KEY", &read(&key_path)?).ok_or_else(|| TlsError::Invalid {
                path: key_path.clone(),
                message: "no PEM PRIVATE KEY block".into(),
            })?;
        // Deliberately no detail from the parser: it may quote key bytes.
        let key = KeyPair::try_from(key_der.as_slice()).map_err(|_| TlsError::Invalid {
            path: key_path.clone(),
            message: "not a PKCS#8 key rcgen can use".into(),
        })?;
        let cert_text = read(&cert_path)?;
        let cert_der = pem_decode("CERTIFICATE", &cert_text).ok_or_else(|| TlsError::Invalid {
            path: cert_path.clone(),
            message: "no PEM CERTIFICATE block".into(),
        })?;
        // The certificate must be the key's: its SubjectPublicKeyInfo holds the key's
        // raw public key.
        let raw = key.public_key_raw();
        let is_cert = cert_der.first() == Some(&0x30) && !raw.is_empty();
        if !is_cert || !cert_der.windows(raw.len()).any(|w| w == raw) {
            return Err(TlsError::Invalid {
                path: cert_path,
                message: format!("not a certificate for the key in {CA_KEY_FILE}"),
            });
        }
        Ok(Ca {
            key,
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            dir: state_dir.to_path_buf(),
        })
    }

    /// The CA certificate (PEM), as agents receive it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate (for clients such as the CLI and curl).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Signs a server certificate for `names` (IP addresses or DNS names) with a fresh
    /// key kept in memory, and returns a rustls configuration serving it (TLS 1.3 and
    /// 1.2, HTTP/1.1).
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Shoal coordinator");
        params.distinguished_name = dn;
        let mut sans: Vec<SanType> = Vec::new();
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(name.clone().try_into().map_err(|e: rcgen::Error| {
                        TlsError::BadName {
                            name: name.clone(),
                            message: e.to_string(),
                        }
                    })?)
                }
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - TimeDuration::days(1);
        // Made again at every start; long enough for a coordinator that never restarts.
        params.not_after = now + TimeDuration::days(365 * 5);
        params.serial_number = Some(random_serial());
        let server_key = KeyPair::generate().map_err(generate("server key"))?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&server_key, &issuer)
            .map_err(generate("server certificate"))?;
        let chain = vec![
            CertificateDer::from(cert.der().to_vec()),
            CertificateDer::from(self.cert_der.clone()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The names the listeners' certificate carries: every address given, and the host of
/// the advertised URL.
pub fn certificate_names(
    addresses: &[IpAddr],
    advertise_url: Option<&str>,
    extra: &[String],
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    };
    for ip in addresses {
        if !ip.is_unspecified() {
            add(ip.to_string());
        }
    }
    if let Some(host) = advertise_url.and_then(url_host) {
        add(host);
    }
    for e in extra {
        add(e.clone());
    }
    names
}

/// The host of an `http(s)://host[:port][/path]` URL (brackets of an IPv6 host removed).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-tls-{}", keys::random_hex(6)));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn ca_is_made_once_with_a_private_key_file_and_reloaded() {
        let dir = tempdir();
        let ca = Ca::load_or_create(&dir).expect("create");
        let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let again = Ca::load_or_create(&dir).expect("load");
        assert_eq!(ca.cert_pem(), again.cert_pem());
        assert!(!format!("{again:?}").contains("PRIVATE"));
        // A server certificate signed by the reloaded CA is trusted by the first CA's
        // certificate.
        again
            .server_config(&["10.213.0.1".into(), "coord.example".into()])
            .expect("server config");
        // A missing key is an error, never a silent new CA.
        std::fs::remove_file(dir.join(CA_KEY_FILE)).expect("rm");
        let e = Ca::load_or_create(&dir).expect_err("missing key");
        assert!(e.to_string().contains("ca-key.pem: missing"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let a = tempdir();
        let b = tempdir();
        Ca::load_or_create(&a).expect("a");
        Ca::load_or_create(&b).expect("b");
        std::fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE)).expect("copy");
        let e = Ca::load_or_create(&a).expect_err("mismatch");
        assert!(
            e.to_string().contains("not a certificate for the key"),
            "{e}"
        );
        for d in [a, b] {
            std::fs::remove_dir_all(&d).expect("cleanup");
        }
    }

    #[test]
    fn names_come_from_addresses_and_the_advertised_url() {
        let names = certificate_names(
            &[
                "10.213.0.1".parse().expect("ip"),
                "0.0.0.0".parse().expect("ip"),
            ],
            Some("https://Coord.Example:8787/x"),
            &["203.0.113.9".into()],
        );
        assert_eq!(names, ["10.213.0.1", "coord.example", "203.0.113.9"]);
        assert_eq!(
            url_host("https://[fd00::1]:8787").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(url_host("https://10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(url_host("nonsense"), None);
    }
}
