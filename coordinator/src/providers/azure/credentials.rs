//! Stored cloud credentials, in the state directory.
//!
//! Azure works as it did for Shoal's ancestor in 2014: the coordinator makes a key pair
//! and a self-signed certificate, keeps the private key, and the operator uploads only
//! the certificate to their app registration. Nothing more sensitive than a tenant,
//! client and subscription id changes hands.
//!
//! Layout, one directory per credential (`0700`):
//!
//! ```text
//! <state>/credentials/azure/<name>/key.pem          PKCS#8 RSA private key, 0600
//! <state>/credentials/azure/<name>/cert.pem         X.509 certificate to upload, 0644
//! <state>/credentials/azure/<name>/credential.json  ids and thumbprints, 0644
//! ```
//!
//! A credential is written into a temporary directory beside its final place and
//! renamed there in one step that refuses to replace an existing one, so a crash leaves
//! either a whole credential or none.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::RsaKeyPair;
use serde::{Deserialize, Serialize};

use crate::keys::{pem_decode, pem_encode};

/// How long a generated certificate is valid. Entra ID shows the expiry in the app
/// registration; a new credential (and upload) is needed after it.
pub const CERT_VALIDITY_DAYS: i64 = 730;

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const META_FILE: &str = "credential.json";

/// Why a credential could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The credential name is not an RFC 1123 label.
    #[error("invalid credential name {name:?}: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// An id given on the command line has the wrong form.
    #[error("invalid {field} {value:?}: {expected}")]
    InvalidId {
        /// `tenant id`, `client id`, `subscription id`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
    /// A credential of that name exists already; it is never overwritten.
    #[error("an {provider} credential named {name:?} exists already at {}: delete it first or choose another name", path.display())]
    Exists {
        /// Provider.
        provider: &'static str,
        /// Name.
        name: String,
        /// Its directory.
        path: PathBuf,
    },
    /// No credential of that name.
    #[error("no {provider} credential named {name:?} (looked in {}): create it with `shoal credential create {provider} {name} --tenant-id … --client-id … --subscription-id …`", path.display())]
    NotFound {
        /// Provider.
        provider: &'static str,
        /// Name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A stored file is damaged or not what Shoal wrote.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key material).
        message: String,
    },
    /// Generating the key or certificate failed.
    #[error("cannot generate the {what}: {message}")]
    Generate {
        /// `RSA key`, `certificate`.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// Signing with the stored key failed.
    #[error("cannot sign with the key of credential {name:?}")]
    Sign {
        /// The credential.
        name: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The private half of a credential, loaded for signing. Its `Debug` shows nothing of
/// the key.
pub struct SigningKey {
    pair: RsaKeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    fn from_pkcs8(der: &[u8], path: &Path) -> Result<SigningKey, CredentialError> {
        RsaKeyPair::from_pkcs8(der)
            .map(|pair| SigningKey { pair })
            .map_err(|e| CredentialError::Invalid {
                path: path.to_path_buf(),
                message: format!("not a usable RSA private key (PKCS#8): {e}"),
            })
    }
}

/// What `credential.json` holds: everything about a credential but its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureCredentialInfo {
    /// Always `azure`.
    pub provider: String,
    /// Credential name.
    pub name: String,
    /// Directory (tenant) id, or a verified domain of the tenant.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// Subscription the clusters go into.
    pub subscription_id: String,
    /// SHA-1 thumbprint of the certificate, upper-case hex: what the Azure portal shows.
    pub thumbprint_sha1: String,
    /// SHA-256 thumbprint of the certificate, upper-case hex.
    pub thumbprint_sha256: String,
    /// Certificate validity start, Unix seconds.
    pub not_before: i64,
    /// Certificate expiry, Unix seconds.
    pub not_after: i64,
}

/// A stored Azure credential, loaded: the ids, the certificate and the signing key.
#[derive(Debug)]
pub struct AzureCredential {
    /// The ids and thumbprints.
    pub info: AzureCredentialInfo,
    /// The credential's directory.
    pub dir: PathBuf,
    /// The private key file (mode 0600).
    pub key_path: PathBuf,
    /// The certificate to upload.
    pub cert_path: PathBuf,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    key: SigningKey,
}

impl AzureCredential {
    /// Credential name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The `x5t#S256` JWT header value: base64url of the certificate's SHA-256 digest.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &self.cert_der))
    }

    /// Signs `message` with RSASSA-PSS and SHA-256 (JWT `PS256`), as Entra ID asks of
    /// client assertions.
    pub fn sign_ps256(&self, message: &[u8]) -> Result<Vec<u8>, CredentialError> {
        let mut sig = vec![0u8; self.key.pair.public().modulus_len()];
        self.key
            .pair
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| CredentialError::Sign {
                name: self.info.name.clone(),
            })?;
        Ok(sig)
    }

    /// What the operator must do next, for the CLI to print after `credential create`.
    pub fn instructions(&self) -> String {
        let i = &self.info;
        format!(
            "Created Azure credential {name:?}.\n\
             \n\
             Private key:  {key} (mode 0600; it never leaves this machine)\n\
             Certificate:  {cert}\n\
             Thumbprint:   {sha1} (SHA-1, as the Azure portal shows it)\n\
             SHA-256:      {sha256}\n\
             Expires:      {expires}\n\
             \n\
             Next steps:\n\
             1. In the Microsoft Entra admin center, open App registrations > the app with\n\
             \x20  client id {client} (tenant {tenant}) > Certificates & secrets >\n\
             \x20  Certificates > Upload certificate, and upload {cert}.\n\
             \x20  Check that the thumbprint shown matches {sha1}.\n\
             2. Give the app a role on subscription {sub}, e.g. Contributor\n\
             \x20  (Subscriptions > {sub} > Access control (IAM) > Add role assignment), or:\n\
             \x20  az role assignment create --assignee {client} --role Contributor \\\n\
             \x20    --scope /subscriptions/{sub}\n\
             3. Create clusters with --provider azure --credential {name}.\n",
            name = i.name,
            key = self.key_path.display(),
            cert = self.cert_path.display(),
            sha1 = i.thumbprint_sha1,
            sha256 = i.thumbprint_sha256,
            expires = format_date(i.not_after),
            client = i.client_id,
            tenant = i.tenant_id,
            sub = i.subscription_id,
        )
    }
}

/// One stored credential, as `shoal credential list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSummary {
    /// `azure`.
    pub provider: String,
    /// Name.
    pub name: String,
    /// The ids and thumbprints, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureCredentialInfo>,
    /// What is wrong with it, when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `<state>/credentials/<provider>`.
fn provider_dir(state_dir: &Path, provider: &str) -> PathBuf {
    state_dir.join("credentials").join(provider)
}

fn validate_name(name: &str) -> Result<(), CredentialError> {
    if shoal_protocol::is_dns_label(name) {
        Ok(())
    } else {
        Err(CredentialError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// A GUID in its usual 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn validate_ids(tenant: &str, client: &str, subscription: &str) -> Result<(), CredentialError> {
    // A tenant may also be named by one of its domains (contoso.onmicrosoft.com).
    if !(is_guid(tenant) || shoal_protocol::is_dns_name(&tenant.to_ascii_lowercase())) {
        return Err(CredentialError::InvalidId {
            field: "tenant id",
            value: tenant.to_string(),
            expected: "a directory (tenant) id such as 00000000-0000-0000-0000-000000000000, or a domain of the tenant",
        });
    }
    for (field, value) in [("client id", client), ("subscription id", subscription)] {
        if !is_guid(value) {
            return Err(CredentialError::InvalidId {
                field,
                value: value.to_string(),
                expected: "a GUID such as 00000000-0000-0000-0000-000000000000",
            });
        }
    }
    Ok(())
}

/// Creates `dir` (and parents) and gives it mode 0700.
fn private_dir(dir: &Path) -> Result<(), CredentialError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Writes a new file with `mode` from the start (never briefly world-readable) and
/// flushes it to disk.
fn write_new_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), CredentialError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), CredentialError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Renames `from` to `to`, failing if `to` exists (even as an empty directory, which a
/// plain rename would replace).
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
            .map_err(std::io::Error::from)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        if to.exists() {
            return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
        }
        fs::rename(from, to)
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
fn format_date(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => unix.to_string(),
    }
}

/// Generates an RSA key (3072 bits: Entra ID takes RSA certificates, and 3072 is the
/// size recommended past 2030) and a self-signed certificate for it. Returns the PKCS#8
/// key and the certificate, both DER.
fn generate_key_and_cert(
    name: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    use rsa::Generate as _;

    let key = rsa::PrivateKey::try_generate().map_err(|e| CredentialError::Generate {
        what: "RSA key",
        message: e.to_string(),
    })?;
    let pkcs8 = key.to_pkcs8_der().map_err(|e| CredentialError::Generate {
        what: "RSA key",
        message: e.to_string(),
    })?;
    let pkcs8 = pkcs8.as_bytes().to_vec();

    let cert_err = |e: rcgen::Error| CredentialError::Generate {
        what: "certificate",
        message: e.to_string(),
    };
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(cert_err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("shoal-{name}"));
    dn.push(rcgen::DnType::OrganizationName, "Shoal");
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut serial).map_err(|_| {
        CredentialError::Generate {
            what: "certificate",
            message: "the system random number generator failed".into(),
        }
    })?;
    serial[0] &= 0x7f; // a positive serial number
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key_pair).map_err(cert_err)?;
    Ok((pkcs8, cert.der().to_vec()))
}

/// Generates a key pair and self-signed certificate for an Azure app registration and
/// stores them as credential `name`. Refuses to replace an existing credential.
pub fn create_azure(
    state_dir: &Path,
    name: &str,
    tenant_id: &str,
    client_id: &str,
    subscription_id: &str,
) -> Result<AzureCredential, CredentialError> {
    validate_name(name)?;
    validate_ids(tenant_id, client_id, subscription_id)?;
    let parent = provider_dir(state_dir, "azure");
    let dir = parent.join(name);
    if dir.exists() {
        return Err(CredentialError::Exists {
            provider: "azure",
            name: name.to_string(),
            path: dir,
        });
    }
    private_dir(&state_dir.join("credentials"))?;
    private_dir(&parent)?;

    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
    let (pkcs8, cert_der) = generate_key_and_cert(name, not_before, not_after)?;

    let info = AzureCredentialInfo {
        provider: "azure".into(),
        name: name.to_string(),
        tenant_id: tenant_id.to_string(),
        client_id: client_id.to_ascii_lowercase(),
        subscription_id: subscription_id.to_ascii_lowercase(),
        thumbprint_sha1: hex_upper(
            digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &cert_der).as_ref(),
        ),
        thumbprint_sha256: hex_upper(digest::digest(&digest::SHA256, &cert_der).as_ref()),
        not_before: not_before.unix_timestamp(),
        not_after: not_after.unix_timestamp(),
    };
    let meta = serde_json::to_vec_pretty(&info).map_err(|e| CredentialError::Generate {
        what: "credential.json",
        message: e.to_string(),
    })?;

    // Everything goes into a private temporary directory first, then one rename.
    let tmp = parent.join(format!(".tmp-{name}-{:016x}", rand::random::<u64>()));
    let result = (|| {
        private_dir(&tmp)?;
        write_new_file(
            &tmp.join(KEY_FILE),
            0o600,
            pem_encode("PRIVATE KEY", &pkcs8).as_bytes(),
        )?;
        write_new_file(
            &tmp.join(CERT_FILE),
            0o644,
            pem_encode("CERTIFICATE", &cert_der).as_bytes(),
        )?;
        write_new_file(&tmp.join(META_FILE), 0o644, &meta)?;
        sync_dir(&tmp)?;
        match rename_no_replace(&tmp, &dir) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    || e.raw_os_error() == Some(39) =>
            {
                return Err(CredentialError::Exists {
                    provider: "azure",
                    name: name.to_string(),
                    path: dir.clone(),
                })
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        sync_dir(&parent)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result?;
    tracing::info!(credential = %name, thumbprint = %info.thumbprint_sha1, "created an Azure credential");

    let key = SigningKey::from_pkcs8(&pkcs8, &dir.join(KEY_FILE))?;
    Ok(AzureCredential {
        info,
        key_path: dir.join(KEY_FILE),
        cert_path: dir.join(CERT_FILE),
        dir,
        cert_der,
        key,
    })
}

/// Loads stored Azure credential `name`.
pub fn load_azure(state_dir: &Path, name: &str) -> Result<AzureCredential, CredentialError> {
    validate_name(name)?;
    let dir = provider_dir(state_dir, "azure").join(name);
    if !dir.is_dir() {
        return Err(CredentialError::NotFound {
            provider: "azure",
            name: name.to_string(),
            path: dir,
        });
    }
    let meta_path = dir.join(META_FILE);
    let meta = fs::read(&meta_path).map_err(io_err(&meta_path))?;
    let info: AzureCredentialInfo =
        serde_json::from_slice(&meta).map_err(|e| CredentialError::Invalid {
            path: meta_path.clone(),
            message: format!("not a Shoal credential description: {e}"),
        })?;

    let cert_path = dir.join(CERT_FILE);
    let cert_text = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let cert_der =
        pem_decode("CERTIFICATE", &cert_text).ok_or_else(|| CredentialError::Invalid {
            path: cert_path.clone(),
            message: "no PEM CERTIFICATE block".into(),
        })?;
    let sha256 = hex_upper(digest::digest(&digest::SHA256, &cert_der).as_ref());
    if sha256 != info.thumbprint_sha256 {
        return Err(CredentialError::Invalid {
            path: cert_path,
            message: format!(
                "certificate thumbprint {sha256} does not match {} recorded in {META_FILE}",
                info.thumbprint_sha256
            ),
        });
    }

    let key_path = dir.join(KEY_FILE);
    let mode = fs::metadata(&key_path)
        .map_err(io_err(&key_path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CredentialError::Invalid {
            path: key_path,
            message: format!(
                "the private key is readable by others (mode {:o}): run chmod 600 on it",
                mode & 0o777
            ),
        });
    }
    let key_text = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let pkcs8 = pem_decode("PRIVATE KEY", &key_text).ok_or_else(|| CredentialError::Invalid {
        path: key_path.clone(),
        message: "no PEM PRIVATE KEY block".into(),
    })?;
    let key = SigningKey::from_pkcs8(&pkcs8, &key_path)?;
    Ok(AzureCredential {
        info,
        dir,
        key_path,
        cert_path,
        cert_der,
        key,
    })
}

/// Every stored credential, by provider and name. A damaged one is listed with its
/// problem rather than failing the whole list.
pub fn list(state_dir: &Path) -> Result<Vec<CredentialSummary>, CredentialError> {
    let mut out = Vec::new();
    let dir = provider_dir(state_dir, "azure");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let meta_path = entry.path().join(META_FILE);
        let parsed = fs::read(&meta_path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<AzureCredentialInfo>(&b).map_err(|e| e.to_string())
            });
        let (azure, problem) = match parsed {
            Ok(info) => (Some(info), None),
            Err(e) => (None, Some(format!("{}: {e}", meta_path.display()))),
        };
        out.push(CredentialSummary {
            provider: "azure".into(),
            name,
            azure,
            problem,
        });
    }
    out.sort_by(|a, b| (&a.provider, &a.name).cmp(&(&b.provider, &b.name)));
    Ok(out)
}

/// Deletes stored Azure credential `name` (its key is gone for good: the certificate
/// in the app registration should be removed too).
pub fn delete_azure(state_dir: &Path, name: &str) -> Result<(), CredentialError> {
    validate_name(name)?;
    let dir = provider_dir(state_dir, "azure").join(name);
    if !dir.is_dir() {
        return Err(CredentialError::NotFound {
            provider: "azure",
            name: name.to_string(),
            path: dir,
        });
    }
    fs::remove_dir_all(&dir).map_err(io_err(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_pem() {
        assert!(is_guid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert!(!is_guid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f"));
        assert!(!is_guid("not-a-guid"));
        let der = (0u8..200).collect::<Vec<_>>();
        let pem = pem_encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_decode("CERTIFICATE", &pem), Some(der));
        assert_eq!(pem_decode("PRIVATE KEY", &pem), None);
    }

    #[test]
    fn bad_names_and_ids_are_refused_before_anything_is_written() {
        let dir = std::env::temp_dir().join(format!("shoal-cred-{}", rand::random::<u32>()));
        let t = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert!(matches!(
            create_azure(&dir, "Bad_Name", t, t, t),
            Err(CredentialError::InvalidName { .. })
        ));
        assert!(matches!(
            create_azure(&dir, "ok", t, "nope", t),
            Err(CredentialError::InvalidId {
                field: "client id",
                ..
            })
        ));
        assert!(!dir.exists());
        let e = load_azure(&dir, "absent").expect_err("absent");
        assert!(e
            .to_string()
            .contains("shoal credential create azure absent"));
    }

    #[test]
    fn created_key_signs_ps256_verifiably_and_reloads() {
        let dir = std::env::temp_dir().join(format!("shoal-cred-{}", rand::random::<u32>()));
        let t = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let start = std::time::Instant::now();
        let cred = create_azure(&dir, "unit", t, t, t).expect("create");
        eprintln!("key generation took {:?}", start.elapsed());
        let sig = cred.sign_ps256(b"header.claims").expect("sign");
        let public = cred.key.pair.public().as_ref().to_vec();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            &public,
        )
        .verify(b"header.claims", &sig)
        .expect("PS256 signature verifies");
        let again = load_azure(&dir, "unit").expect("load");
        assert_eq!(again.info, cred.info);
        assert_eq!(again.x5t_s256(), cred.x5t_s256());
        assert!(format!("{again:?}").contains("redacted"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
