//! Where the AWS provider gets its credentials, region and endpoint: the same places
//! the AWS CLI and SDKs look, so an operator's existing setup just works.
//!
//! Credentials: an explicit profile (`--set profile=NAME`) first; else the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); else the profile
//! named by `AWS_PROFILE` (or `default`) in the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`) and then in the config file
//! (`AWS_CONFIG_FILE`, `~/.aws/config`, whose sections read `[profile NAME]`).
//! Region: `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`.
//! Endpoint: `--set endpoint-url=URL`, `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`, the
//! profile's `endpoint_url`, else the region's public EC2 endpoint.
//!
//! Only static keys are read: profiles that assume roles, use SSO or run a credential
//! process are reported as such, with the CLI command that turns them into keys.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::providers::{ProviderError, ProviderParams};

const PROVIDER: &str = "aws";

/// Where environment variables come from: the process, or a fixed set (tests, or a
/// server that keeps each cluster's environment apart from its own).
#[derive(Clone, Default)]
pub enum Env {
    /// `std::env`, read at every call so rotated credentials are picked up.
    #[default]
    Process,
    /// Exactly these variables and no others (`HOME` included, if files are wanted).
    Fixed(BTreeMap<String, String>),
}

impl Env {
    /// A variable's value; empty counts as unset, as in the AWS CLI.
    pub fn var(&self, name: &str) -> Option<String> {
        let v = match self {
            Env::Process => std::env::var(name).ok(),
            Env::Fixed(vars) => vars.get(name).cloned(),
        };
        v.filter(|v| !v.trim().is_empty())
    }
}

impl fmt::Debug for Env {
    // Values may be secrets: show only which variables a fixed set holds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Env::Process => f.write_str("Env::Process"),
            Env::Fixed(vars) => f
                .debug_tuple("Env::Fixed")
                .field(&vars.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A static AWS key pair, with an optional session token. `Debug` shows the access key
/// id (it is not secret and helps tell keys apart) but never the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    source: String,
}

impl Credentials {
    /// Credentials given directly; `source` says where they came from, for messages.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
        source: impl Into<String>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
            source: source.into(),
        }
    }

    /// The access key id (`AKIA…`, `ASIA…`).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Where these credentials were found (`environment`, `profile 'x' in /path`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The signer's form. Kept inside the crate so the secret has one way out: signing.
    pub(crate) fn to_signing(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            None,
            "shoal",
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("source", &self.source)
            .finish()
    }
}

/// Everything a call needs to reach EC2: who, where, and at which address.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The key pair requests are signed with.
    pub credentials: Credentials,
    /// The region (signing scope and default endpoint).
    pub region: String,
    /// EC2 endpoint base URL.
    pub endpoint: String,
}

/// Sections of an INI-style AWS file: profile name → key → value.
type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// Which kind of shared file: they spell profile sections differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// `~/.aws/credentials`: `[NAME]`.
    Credentials,
    /// `~/.aws/config`: `[default]` or `[profile NAME]`.
    Config,
}

/// Parses an AWS shared file into profiles. Follows the CLI: `#` and `;` start comment
/// lines, keys are case-insensitive, indented lines continue a nested setting (e.g.
/// `s3 =` blocks) and are skipped, and sections that are not profiles (`sso-session`,
/// `services`) are left out.
fn parse_profiles(text: &str, kind: FileKind) -> Sections {
    let mut out = Sections::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.split(']').next() else {
                current = None;
                continue;
            };
            let name = name.trim();
            current = match kind {
                FileKind::Credentials => Some(name.to_string()),
                FileKind::Config => {
                    if name == "default" {
                        Some("default".to_string())
                    } else {
                        name.strip_prefix("profile")
                            .filter(|r| r.starts_with(char::is_whitespace))
                            .map(|r| r.trim().to_string())
                    }
                }
            };
            if let Some(name) = &current {
                out.entry(name.clone()).or_default();
            }
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            continue; // a nested setting's continuation
        }
        let (Some(section), Some((key, value))) = (&current, trimmed.split_once('=')) else {
            continue;
        };
        if let Some(profile) = out.get_mut(section) {
            profile.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    out
}

/// One shared file as found (or not) on disk.
#[derive(Debug)]
struct SharedFile {
    path: Option<PathBuf>,
    sections: Option<Sections>,
    /// Why it could not be read, when it exists but is unreadable.
    error: Option<String>,
}

impl SharedFile {
    fn load(path: Option<PathBuf>, kind: FileKind) -> SharedFile {
        let Some(p) = path else {
            return SharedFile {
                path: None,
                sections: None,
                error: None,
            };
        };
        match std::fs::read_to_string(&p) {
            Ok(text) => SharedFile {
                sections: Some(parse_profiles(&text, kind)),
                path: Some(p),
                error: None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SharedFile {
                path: Some(p),
                sections: None,
                error: None,
            },
            Err(e) => SharedFile {
                error: Some(e.to_string()),
                path: Some(p),
                sections: None,
            },
        }
    }

    fn profile(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.sections.as_ref().and_then(|s| s.get(name))
    }

    /// How this file looked, for "where we looked" messages.
    fn describe(&self, profile: &str) -> String {
        match (&self.path, &self.sections, &self.error) {
            (None, _, _) => "no shared file (HOME is not set)".to_string(),
            (Some(p), _, Some(e)) => format!("{} (unreadable: {e})", p.display()),
            (Some(p), None, None) => format!("{} (does not exist)", p.display()),
            (Some(p), Some(s), None) => match s.get(profile) {
                Some(_) => format!("{} (profile '{profile}' has no keys)", p.display()),
                None => format!("{} (no profile '{profile}')", p.display()),
            },
        }
    }
}

/// Expands a leading `~/` the way the CLI does.
fn expand_home(path: &str, home: Option<&Path>) -> Option<PathBuf> {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => Some(h.join(rest)),
        (Some(_), None) => None,
        (None, _) => Some(PathBuf::from(path)),
    }
}

fn shared_path(env: &Env, var: &str, default: &str, home: Option<&Path>) -> Option<PathBuf> {
    match env.var(var) {
        Some(p) => expand_home(&p, home),
        None => home.map(|h| h.join(default)),
    }
}

fn config_error(message: String) -> ProviderError {
    ProviderError::Config {
        provider: PROVIDER,
        message,
    }
}

/// Static keys from one profile section, if it has them.
fn keys_from(
    profile: &BTreeMap<String, String>,
    name: &str,
    path: &Path,
) -> Result<Option<Credentials>, ProviderError> {
    let ak = profile.get("aws_access_key_id").filter(|v| !v.is_empty());
    let sk = profile
        .get("aws_secret_access_key")
        .filter(|v| !v.is_empty());
    let source = format!("profile '{name}' in {}", path.display());
    match (ak, sk) {
        (Some(ak), Some(sk)) => {
            let token = profile
                .get("aws_session_token")
                .or_else(|| profile.get("aws_security_token"))
                .filter(|v| !v.is_empty())
                .cloned();
            Ok(Some(Credentials::new(
                ak.clone(),
                sk.clone(),
                token,
                source,
            )))
        }
        (Some(_), None) => Err(config_error(format!(
            "{source} has aws_access_key_id but no aws_secret_access_key"
        ))),
        (None, Some(_)) => Err(config_error(format!(
            "{source} has aws_secret_access_key but no aws_access_key_id"
        ))),
        (None, None) => Ok(None),
    }
}

/// Settings of a profile that this provider cannot act on (role assumption, SSO,
/// external processes): named in the error so the operator knows what to change.
const UNSUPPORTED: [&str; 6] = [
    "role_arn",
    "sso_session",
    "sso_start_url",
    "credential_process",
    "web_identity_token_file",
    "credential_source",
];

/// Resolves credentials, region and endpoint for one cluster's settings.
pub fn resolve(env: &Env, params: &ProviderParams) -> Result<AwsSettings, ProviderError> {
    let home = env.var("HOME").map(PathBuf::from);
    let explicit_profile = params.extra.get("profile").filter(|p| !p.is_empty());
    let profile = explicit_profile
        .cloned()
        .or_else(|| env.var("AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_string());
    let creds_file = SharedFile::load(
        shared_path(
            env,
            "AWS_SHARED_CREDENTIALS_FILE",
            ".aws/credentials",
            home.as_deref(),
        ),
        FileKind::Credentials,
    );
    let config_file = SharedFile::load(
        shared_path(env, "AWS_CONFIG_FILE", ".aws/config", home.as_deref()),
        FileKind::Config,
    );

    let credentials = match (explicit_profile, env_credentials(env)?) {
        // An explicit profile wins over the environment, as `aws --profile` does.
        (None, Some(c)) => c,
        _ => profile_credentials(
            &profile,
            explicit_profile.is_some(),
            &creds_file,
            &config_file,
        )?,
    };

    let profile_setting = |key: &str| {
        config_file
            .profile(&profile)
            .and_then(|p| p.get(key))
            .cloned()
    };
    let region = params
        .region
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .or_else(|| profile_setting("region").filter(|r| !r.is_empty()))
        .ok_or_else(|| {
            config_error(format!(
                "no AWS region: give --region, set AWS_REGION or AWS_DEFAULT_REGION, or set \
                 `region` in profile '{profile}' of {}",
                config_file
                    .path
                    .as_ref()
                    .map_or_else(|| "~/.aws/config".to_string(), |p| p.display().to_string())
            ))
        })?;
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(config_error(format!("invalid AWS region {region:?}")));
    }

    let endpoint = params
        .extra
        .get("endpoint-url")
        .filter(|e| !e.is_empty())
        .cloned()
        .or_else(|| env.var("AWS_ENDPOINT_URL_EC2"))
        .or_else(|| env.var("AWS_ENDPOINT_URL"))
        .or_else(|| profile_setting("endpoint_url").filter(|e| !e.is_empty()))
        .unwrap_or_else(|| default_endpoint(&region));
    match reqwest::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => {
            return Err(config_error(format!(
                "invalid EC2 endpoint URL {endpoint:?}: expected http(s)://host[:port]"
            )))
        }
    }

    Ok(AwsSettings {
        credentials,
        region,
        endpoint,
    })
}

/// The public EC2 endpoint of a region.
pub fn default_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://ec2.{region}.amazonaws.com.cn")
    } else {
        format!("https://ec2.{region}.amazonaws.com")
    }
}

fn env_credentials(env: &Env) -> Result<Option<Credentials>, ProviderError> {
    match (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(ak), Some(sk)) => Ok(Some(Credentials::new(
            ak,
            sk,
            env.var("AWS_SESSION_TOKEN"),
            "environment",
        ))),
        (Some(_), None) => Err(config_error(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string(),
        )),
        (None, Some(_)) => Err(config_error(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string(),
        )),
        (None, None) => Ok(None),
    }
}

fn profile_credentials(
    profile: &str,
    explicit: bool,
    creds_file: &SharedFile,
    config_file: &SharedFile,
) -> Result<Credentials, ProviderError> {
    // The credentials file takes precedence over the config file, as in the CLI.
    for file in [creds_file, config_file] {
        if let (Some(section), Some(path)) = (file.profile(profile), &file.path) {
            if let Some(c) = keys_from(section, profile, path)? {
                return Ok(c);
            }
        }
    }
    for file in [creds_file, config_file] {
        if let (Some(section), Some(path)) = (file.profile(profile), &file.path) {
            if let Some(key) = UNSUPPORTED.iter().find(|k| section.contains_key(**k)) {
                return Err(config_error(format!(
                    "profile '{profile}' in {} uses `{key}`, which Shoal does not support; \
                     give static keys instead, e.g. from \
                     `aws configure export-credentials --profile {profile} --format env`",
                    path.display()
                )));
            }
        }
    }
    let env_part = if explicit {
        "the profile was given with --set profile, so the environment was not used"
    } else {
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set"
    };
    Err(config_error(format!(
        "no AWS credentials found: {env_part}; looked for profile '{profile}' in {} and {}",
        creds_file.describe(profile),
        config_file.describe(profile)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::Fixed(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn params(region: Option<&str>, extra: &[(&str, &str)]) -> ProviderParams {
        ProviderParams {
            region: region.map(str::to_string),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// A throwaway HOME with `.aws/credentials` and `.aws/config`.
    struct Home(PathBuf);

    impl Home {
        fn new(credentials: &str, config: &str) -> Home {
            let dir = std::env::temp_dir().join(format!(
                "shoal-aws-cred-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(dir.join(".aws")).expect("temp dir");
            std::fs::write(dir.join(".aws/credentials"), credentials).expect("write");
            std::fs::write(dir.join(".aws/config"), config).expect("write");
            Home(dir)
        }
        fn path(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }

    impl Drop for Home {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CREDS: &str = "\
# comment
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = default/secret

[work]
AWS_ACCESS_KEY_ID=AKIAWORK
aws_secret_access_key=work+secret
aws_session_token = work-token
; another comment
";

    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile work]
region = us-west-2
s3 =
  max_concurrent_requests = 20

[profile keysinconfig]
aws_access_key_id = AKIACONFIG
aws_secret_access_key = config-secret
endpoint_url = http://127.0.0.1:4566

[profile sso]
sso_session = corp
sso_account_id = 123

[sso-session corp]
sso_region = us-east-1
";

    #[test]
    fn parses_both_file_kinds() {
        let c = parse_profiles(CREDS, FileKind::Credentials);
        assert_eq!(c["default"]["aws_access_key_id"], "AKIADEFAULT");
        assert_eq!(c["work"]["aws_access_key_id"], "AKIAWORK");
        assert_eq!(c["work"]["aws_secret_access_key"], "work+secret");
        let g = parse_profiles(CONFIG, FileKind::Config);
        assert_eq!(g["default"]["region"], "eu-west-1");
        assert_eq!(g["work"]["region"], "us-west-2");
        // The nested s3 block is not read as a setting of its own.
        assert!(!g["work"].contains_key("max_concurrent_requests"));
        assert!(!g.contains_key("corp"));
        assert!(!g.contains_key("sso-session corp"));
    }

    #[test]
    fn environment_wins_over_files_unless_a_profile_is_given() {
        let home = Home::new(CREDS, CONFIG);
        let e = env(&[
            ("HOME", home.path()),
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
            ("AWS_PROFILE", "work"),
        ]);
        let s = resolve(&e, &params(None, &[])).expect("resolves");
        assert_eq!(s.credentials.access_key_id(), "AKIAENV");
        assert_eq!(s.credentials.session_token.as_deref(), Some("env-token"));
        // AWS_PROFILE still picks the region when no region variable is set.
        assert_eq!(s.region, "us-west-2");
        assert_eq!(s.endpoint, "https://ec2.us-west-2.amazonaws.com");

        let s = resolve(&e, &params(None, &[("profile", "default")])).expect("resolves");
        assert_eq!(s.credentials.access_key_id(), "AKIADEFAULT");
        assert_eq!(s.region, "eu-west-1");
        assert!(s.credentials.source().contains("profile 'default'"));
    }

    #[test]
    fn profiles_come_from_the_credentials_file_then_the_config_file() {
        let home = Home::new(CREDS, CONFIG);
        let e = env(&[("HOME", home.path()), ("AWS_PROFILE", "work")]);
        let s = resolve(&e, &params(Some("ap-south-1"), &[])).expect("resolves");
        assert_eq!(s.credentials.access_key_id(), "AKIAWORK");
        assert_eq!(s.credentials.secret_access_key, "work+secret");
        assert_eq!(s.credentials.session_token.as_deref(), Some("work-token"));
        assert_eq!(s.region, "ap-south-1", "--region wins");

        let s = resolve(
            &e,
            &params(Some("us-east-1"), &[("profile", "keysinconfig")]),
        )
        .expect("resolves");
        assert_eq!(s.credentials.access_key_id(), "AKIACONFIG");
        assert_eq!(s.endpoint, "http://127.0.0.1:4566");
    }

    #[test]
    fn region_and_endpoint_order() {
        let home = Home::new(CREDS, CONFIG);
        let e = env(&[
            ("HOME", home.path()),
            ("AWS_DEFAULT_REGION", "ca-central-1"),
            ("AWS_ENDPOINT_URL", "http://localhost:1"),
            ("AWS_ENDPOINT_URL_EC2", "http://localhost:2"),
        ]);
        let s = resolve(&e, &params(None, &[])).expect("resolves");
        assert_eq!(s.region, "ca-central-1");
        assert_eq!(s.endpoint, "http://localhost:2");
        let s = resolve(&e, &params(None, &[("endpoint-url", "http://localhost:3")]))
            .expect("resolves");
        assert_eq!(s.endpoint, "http://localhost:3");
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn explicit_file_locations_are_honoured() {
        let home = Home::new("", "");
        let creds = home.0.join("elsewhere-credentials");
        std::fs::write(
            &creds,
            "[ci]\naws_access_key_id=AKIACI\naws_secret_access_key=s\n",
        )
        .expect("write");
        let e = env(&[
            ("HOME", home.path()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                creds.to_str().expect("utf-8"),
            ),
            ("AWS_PROFILE", "ci"),
            ("AWS_REGION", "us-east-1"),
        ]);
        let s = resolve(&e, &params(None, &[])).expect("resolves");
        assert_eq!(s.credentials.access_key_id(), "AKIACI");
    }

    #[test]
    fn missing_credentials_say_where_they_were_looked_for() {
        let home = Home::new(CREDS, CONFIG);
        let e = env(&[("HOME", home.path()), ("AWS_REGION", "us-east-1")]);
        let err = resolve(&e, &params(None, &[("profile", "nope")])).expect_err("no profile");
        let msg = err.to_string();
        assert!(matches!(err, ProviderError::Config { .. }));
        assert!(msg.contains("no profile 'nope'"), "{msg}");
        assert!(msg.contains(".aws/credentials"), "{msg}");
        assert!(msg.contains(".aws/config"), "{msg}");

        let e = env(&[
            ("HOME", "/nonexistent-shoal-home"),
            ("AWS_REGION", "us-east-1"),
        ]);
        let msg = resolve(&e, &params(None, &[]))
            .expect_err("nothing")
            .to_string();
        assert!(msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");

        let e = env(&[("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_REGION", "us-east-1")]);
        let msg = resolve(&e, &params(None, &[]))
            .expect_err("half")
            .to_string();
        assert!(msg.contains("AWS_SECRET_ACCESS_KEY is not"), "{msg}");
    }

    #[test]
    fn unsupported_profiles_are_named() {
        let home = Home::new(CREDS, CONFIG);
        let e = env(&[("HOME", home.path()), ("AWS_REGION", "us-east-1")]);
        let msg = resolve(&e, &params(None, &[("profile", "sso")]))
            .expect_err("sso")
            .to_string();
        assert!(msg.contains("sso_session"), "{msg}");
        assert!(msg.contains("export-credentials"), "{msg}");
    }

    #[test]
    fn missing_region_is_a_config_error() {
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        let msg = resolve(&e, &params(None, &[]))
            .expect_err("no region")
            .to_string();
        assert!(msg.contains("--region"), "{msg}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::new("AKIAVISIBLE", "very-secret", Some("tok-secret".into()), "t");
        let d = format!("{c:?}");
        assert!(d.contains("AKIAVISIBLE"));
        assert!(
            !d.contains("very-secret") && !d.contains("tok-secret"),
            "{d}"
        );
        let e = env(&[("AWS_SECRET_ACCESS_KEY", "very-secret")]);
        assert!(!format!("{e:?}").contains("very-secret"));
    }
}
