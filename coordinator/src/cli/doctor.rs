//! `shoal doctor`: checks what a run needs before it fails halfway, and says exactly
//! what is missing and how to fix it.
//!
//! Each check ends `ok`, `warn` (works, but worth knowing), `info` (context, e.g. the
//! iptables FORWARD pitfall) or `FAIL` (a run will fail: the command exits 1). Checks
//! are plain functions over the real machine: tools on `PATH`, kernel features tried in
//! a throwaway network namespace, file modes, credentials as the providers resolve
//! them, and the coordinator's own `/v1/health`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::operator_http_client;
use crate::api::ApiInfo;
use crate::providers::preflight::{check, Check, PreflightOptions, Status};
use crate::providers::registry;

/// What `shoal doctor` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The provider checked for.
    pub provider: String,
    /// The state directory checked.
    pub state_dir: PathBuf,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// No check failed.
    pub ok: bool,
}

impl Report {
    /// The report for a person.
    pub fn render_text(&self, colour: bool) -> String {
        let mut out = format!(
            "shoal doctor: provider {}, state dir {}\n\n",
            self.provider,
            self.state_dir.display()
        );
        let w = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(8);
        for c in &self.checks {
            let tag = format!("{:<4}", c.status.tag());
            let tag = match (colour, c.status) {
                (true, Status::Ok) => format!("\x1b[32m{tag}\x1b[0m"),
                (true, Status::Warn) => format!("\x1b[33m{tag}\x1b[0m"),
                (true, Status::Fail) => format!("\x1b[1;31m{tag}\x1b[0m"),
                (true, Status::Info) => format!("\x1b[36m{tag}\x1b[0m"),
                (false, _) => tag,
            };
            out.push_str(&format!("  {tag}  {:<w$}  {}\n", c.name, c.detail));
            if let Some(f) = &c.fix {
                out.push_str(&format!("        {:<w$}  fix: {f}\n", ""));
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count();
        out.push('\n');
        if fails == 0 {
            out.push_str(&format!(
                "ready for the {} provider ({warns} warning{})\n",
                self.provider,
                if warns == 1 { "" } else { "s" }
            ));
        } else {
            out.push_str(&format!(
                "{fails} problem{} will stop a run: fix the FAIL lines above, then run `shoal doctor` again\n",
                if fails == 1 { "" } else { "s" }
            ));
        }
        out
    }
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// `local`, `aws` or `azure`.
    pub provider: String,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Where the local provider's baked images are (default `<state-dir>/images`).
    pub image_dir: Option<PathBuf>,
    /// The agent binary local VMs run (default: beside this binary).
    pub agent_bin: Option<PathBuf>,
    /// `--coordinator URL` instead of the state directory's `api.json`.
    pub coordinator: Option<String>,
    /// `--region`, for the cloud providers.
    pub region: Option<String>,
    /// `--set profile=NAME` for AWS.
    pub profile: Option<String>,
    /// The qemu provider's base image (default `<state-dir>/vm-image`).
    pub qemu_image: Option<PathBuf>,
    /// `--store` (SHOAL_STORE_URL): the database to check, if not SQLite.
    pub store: Option<String>,
}

/// Runs every check for the chosen provider: the provider's own preflight, the state
/// directory, and the coordinator.
pub async fn run(opts: &Options) -> Report {
    let preflight = PreflightOptions {
        state_dir: opts.state_dir.clone(),
        image_dir: opts.image_dir.clone(),
        agent_bin: opts.agent_bin.clone(),
        region: opts.region.clone(),
        profile: opts.profile.clone(),
        qemu_image: opts.qemu_image.clone(),
        host_only: false,
    };
    let mut checks = registry::preflight(&opts.provider, &preflight).unwrap_or_else(|| {
        vec![check(
            "provider",
            Status::Fail,
            format!("unknown provider {:?}", opts.provider),
            Some(format!("use one of: {}", registry::NAMES.join(", "))),
        )]
    });
    checks.extend(state_dir_checks(&opts.state_dir));
    checks.push(open_files_check());
    checks.extend(store_checks(opts.store.as_deref()).await);
    checks.push(coordinator_check(opts).await);
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    Report {
        provider: opts.provider.clone(),
        state_dir: opts.state_dir.clone(),
        checks,
        ok,
    }
}

/// The PostgreSQL store, when one is given: reachable, migrated to the schema this
/// build writes, and which coordinator leads provisioning.
async fn store_checks(store: Option<&str>) -> Vec<Check> {
    use crate::store::{pg, StoreChoice};
    let url = match StoreChoice::parse(store) {
        Ok(StoreChoice::Sqlite) => return vec![],
        Ok(StoreChoice::Postgres(url)) => url,
        Err(e) => {
            return vec![check(
                "database",
                Status::Fail,
                e.to_string(),
                Some(
                    "give --store postgres://USER:PASSWORD@HOST:PORT/DATABASE (or SHOAL_STORE_URL)"
                        .into(),
                ),
            )]
        }
    };
    let info = match tokio::time::timeout(Duration::from_secs(15), pg::inspect(&url)).await {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            return vec![check(
                "database",
                Status::Fail,
                e.to_string(),
                Some("check the URL, the password, and that the server accepts connections from here (pg_hba.conf)".into()),
            )]
        }
        Err(_) => {
            return vec![check(
                "database",
                Status::Fail,
                format!("{url}: no answer within 15 s"),
                Some("check the host and port, and the network to it".into()),
            )]
        }
    };
    let mut out = vec![check(
        "database",
        Status::Ok,
        format!("{url}: PostgreSQL {}", info.server_version),
        None,
    )];
    out.push(match info.schema_version {
        0 => check(
            "database-schema",
            Status::Warn,
            format!(
                "not migrated yet (this shoal writes schema {})",
                pg::SCHEMA_VERSION
            ),
            Some("`shoal serve --store` migrates it at its first start".into()),
        ),
        v if v > pg::SCHEMA_VERSION => check(
            "database-schema",
            Status::Fail,
            format!(
                "schema {v}, newer than this shoal understands ({})",
                pg::SCHEMA_VERSION
            ),
            Some("upgrade shoal to the version the other coordinators run".into()),
        ),
        v if v < pg::SCHEMA_VERSION => check(
            "database-schema",
            Status::Warn,
            format!(
                "schema {v}; this shoal migrates it to {} at start",
                pg::SCHEMA_VERSION
            ),
            None,
        ),
        v => check("database-schema", Status::Ok, format!("schema {v}"), None),
    });
    if info.schema_version >= 2 {
        out.push(match pg::current_lease(&url).await {
            Ok(Some(l)) if l.expires_ms > l.now_ms => check(
                "leader",
                Status::Ok,
                format!(
                    "{} leads provisioning (for {} s now; lease renewed, expires in {:.1} s)",
                    l.holder,
                    l.now_ms.saturating_sub(l.since_ms) / 1000,
                    (l.expires_ms - l.now_ms) as f64 / 1000.0
                ),
                None,
            ),
            Ok(Some(l)) => check(
                "leader",
                Status::Warn,
                format!(
                    "no coordinator leads: {}'s lease expired {:.1} s ago",
                    l.holder,
                    (l.now_ms - l.expires_ms) as f64 / 1000.0
                ),
                Some(
                    "start `shoal serve --store` (any running one takes the lease within seconds)"
                        .into(),
                ),
            ),
            Ok(None) => check(
                "leader",
                Status::Info,
                "no coordinator has led yet".to_string(),
                None,
            ),
            Err(e) => check("leader", Status::Warn, e.to_string(), None),
        });
    }
    out
}

/// Whether the open-file limit here lets `serve` hold as many agent connections as
/// `--max-conns` allows by default (each resident agent holds one).
fn open_files_check() -> Check {
    use crate::server::listener::{DEFAULT_MAX_CONNS, RESERVED_FILES};
    use nix::sys::resource::{getrlimit, Resource};
    let want = DEFAULT_MAX_CONNS as u64 + RESERVED_FILES;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if hard >= want => check(
            "open-files",
            Status::Ok,
            format!("hard limit {hard}: `shoal serve` started here can hold {DEFAULT_MAX_CONNS} agent connections (the --max-conns default)"),
            None,
        ),
        Ok((_, hard)) => check(
            "open-files",
            Status::Warn,
            format!(
                "hard limit {hard}: `shoal serve` started here holds at most {} agent connections, not {DEFAULT_MAX_CONNS}",
                hard.saturating_sub(RESERVED_FILES)
            ),
            Some(format!("raise it to {want} (LimitNOFILE={want} in its systemd unit, or `ulimit -Hn {want}` as root) for 10,000 resident agents")),
        ),
        Err(e) => check(
            "open-files",
            Status::Warn,
            format!("cannot read the open-file limit: {e}"),
            None,
        ),
    }
}

/// The state directory and the operator token: present, private, usable.
pub fn state_dir_checks(dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let me = nix::unistd::geteuid().as_raw();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(check(
                "state-dir",
                Status::Warn,
                format!("{} does not exist yet", dir.display()),
                Some("`shoal serve` creates it (mode 0700) at first start".into()),
            ));
            return out;
        }
        Err(e) => {
            out.push(check(
                "state-dir",
                Status::Fail,
                format!("cannot read {}: {e}", dir.display()),
                Some("run as the user who runs `shoal serve`, or give --state-dir".into()),
            ));
            return out;
        }
        Ok(m) if !m.is_dir() => {
            out.push(check(
                "state-dir",
                Status::Fail,
                format!("{} is not a directory", dir.display()),
                Some(format!(
                    "remove or rename {0}, or choose another --state-dir (SHOAL_STATE_DIR)",
                    dir.display()
                )),
            ));
            return out;
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            if m.uid() != me {
                out.push(check(
                    "state-dir",
                    Status::Fail,
                    format!(
                        "{} belongs to uid {}, and you are uid {me}",
                        dir.display(),
                        m.uid()
                    ),
                    Some(
                        "run as the user who runs `shoal serve`, or choose another --state-dir"
                            .into(),
                    ),
                ));
            } else if mode & 0o077 != 0 {
                out.push(check(
                    "state-dir",
                    Status::Fail,
                    format!(
                        "{} has mode {mode:04o}: it holds cluster keys and node tokens, only its owner may enter it",
                        dir.display()
                    ),
                    Some(format!("chmod 700 {}", dir.display())),
                ));
            } else if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
                out.push(check(
                    "state-dir",
                    Status::Fail,
                    format!("{} is not writable", dir.display()),
                    Some(format!(
                        "chmod u+w {0}, or check that its file system is not read-only",
                        dir.display()
                    )),
                ));
            } else {
                out.push(check(
                    "state-dir",
                    Status::Ok,
                    format!("{} (mode {mode:04o})", dir.display()),
                    None,
                ));
            }
        }
    }
    let token = dir.join("token");
    out.push(match std::fs::symlink_metadata(&token) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
            "token",
            Status::Info,
            format!("{} not created yet: `shoal serve` writes it (mode 0600) at first start", token.display()),
            None,
        ),
        Err(e) => check(
            "token",
            Status::Fail,
            format!("cannot read {}: {e}", token.display()),
            None,
        ),
        Ok(m) if !m.is_file() => check(
            "token",
            Status::Fail,
            format!("{} is not a regular file", token.display()),
            Some(format!(
                "remove {}; `shoal serve` writes a new one",
                token.display()
            )),
        ),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => check(
            "token",
            Status::Fail,
            format!(
                "{} has mode {:04o}: the operator token must be readable by its owner only",
                token.display(),
                m.permissions().mode() & 0o7777
            ),
            Some(format!(
                "chmod 600 {0}; anyone who read it can drive the coordinator: delete it and restart `shoal serve` for a new one",
                token.display()
            )),
        ),
        Ok(_) => match std::fs::read_to_string(&token) {
            Ok(t) if crate::keys::is_secret_shaped(t.trim()) => {
                check("token", Status::Ok, format!("{} (mode 0600)", token.display()), None)
            }
            Ok(_) => check(
                "token",
                Status::Warn,
                format!("{} does not hold a token: `shoal serve` replaces it at start", token.display()),
                None,
            ),
            Err(e) => check(
                "token",
                Status::Fail,
                format!("cannot read {}: {e}", token.display()),
                Some("run as the user who runs `shoal serve`".into()),
            ),
        },
    });
    out
}

/// The coordinator answers `/v1/health` with the operator token, and offers the
/// chosen provider.
async fn coordinator_check(opts: &Options) -> Check {
    const NAME: &str = "coordinator";
    let start_fix = format!(
        "start it: shoal serve --state-dir {}",
        opts.state_dir.display()
    );
    let mut ca_cert = None;
    let url = match &opts.coordinator {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let path = opts.state_dir.join("api.json");
            match std::fs::read_to_string(&path) {
                Err(_) => {
                    return check(
                        NAME,
                        Status::Warn,
                        format!("not running for this state dir (no {})", path.display()),
                        Some(start_fix),
                    )
                }
                Ok(t) => match serde_json::from_str::<ApiInfo>(&t) {
                    Ok(i) => {
                        ca_cert = i.ca_cert;
                        i.url
                    }
                    Err(e) => {
                        return check(
                            NAME,
                            Status::Fail,
                            format!("{}: {e}", path.display()),
                            Some(format!("remove it and {start_fix}")),
                        )
                    }
                },
            }
        }
    };
    let token = match std::env::var("SHOAL_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => match std::fs::read_to_string(opts.state_dir.join("token")) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                return check(
                    NAME,
                    Status::Fail,
                    format!(
                        "cannot read the operator token {}: {e}",
                        opts.state_dir.join("token").display()
                    ),
                    Some("run as the user who runs `shoal serve`, or set SHOAL_TOKEN".into()),
                )
            }
        },
    };
    let http = match operator_http_client(&url, ca_cert, &opts.state_dir, Duration::from_secs(5)) {
        Ok(h) => h,
        Err(e) => return check(NAME, Status::Fail, e.to_string(), None),
    };
    let resp = match http
        .get(format!("{url}/v1/health"))
        .bearer_auth(&token)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return check(
                NAME,
                Status::Fail,
                format!("nothing answers at {url}: {e}"),
                Some(format!(
                    "a coordinator that stopped left its api.json behind: {start_fix}"
                )),
            )
        }
    };
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return check(
            NAME,
            Status::Fail,
            format!("{url} refused the operator token"),
            Some(
                "use the token of that coordinator's state dir (--state-dir) or SHOAL_TOKEN".into(),
            ),
        );
    }
    let health: serde_json::Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => {
            return check(
                NAME,
                Status::Fail,
                format!("{url}/v1/health answered something else than Shoal's health: {e}"),
                None,
            )
        }
    };
    let version = health["version"].as_str().unwrap_or("?");
    let p = &health["providers"][&opts.provider];
    if p["available"] == false {
        return check(
            NAME,
            Status::Fail,
            format!(
                "{url} (version {version}) cannot use the {} provider: {}",
                opts.provider,
                p["why"].as_str().unwrap_or("no reason given")
            ),
            Some("fix that where the coordinator runs, then restart `shoal serve`".into()),
        );
    }
    // The local and qemu providers' VMs reach the coordinator on this machine.
    if !matches!(opts.provider.as_str(), "local" | "qemu") && health["advertise_url"].is_null() {
        return check(
            NAME,
            Status::Fail,
            format!(
                "{url} (version {version}) has no --advertise-url: {} VMs could not reach it",
                opts.provider
            ),
            Some("restart it with `shoal serve --advertise-url URL` (an address the VMs reach, port 8787 by default)".into()),
        );
    }
    check(
        NAME,
        Status::Ok,
        format!(
            "{url} answers (version {version}), provider {} available",
            opts.provider
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-doctor-{name}-{}",
            crate::keys::random_hex(4)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn status_of(checks: &[Check], name: &str) -> Status {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
            .status
    }

    #[test]
    fn a_missing_state_dir_is_only_a_warning() {
        let d = tmp("missing");
        let c = state_dir_checks(&d);
        assert_eq!(status_of(&c, "state-dir"), Status::Warn);
    }

    #[test]
    fn a_file_where_the_state_dir_should_be_fails_with_a_fix() {
        let d = tmp("file");
        std::fs::write(&d, "x").expect("write");
        let c = state_dir_checks(&d);
        assert_eq!(status_of(&c, "state-dir"), Status::Fail);
        assert!(c[0].detail.contains("not a directory"), "{c:?}");
        assert!(c[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("--state-dir")));
        let _ = std::fs::remove_file(&d);
    }

    #[test]
    fn open_modes_fail_and_private_ones_pass() {
        let d = tmp("modes");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let tok = d.join("token");
        std::fs::write(&tok, format!("{}\n", crate::keys::random_secret())).expect("token");
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = state_dir_checks(&d);
        assert_eq!(status_of(&c, "state-dir"), Status::Fail);
        assert!(c[0].fix.as_deref() == Some(&*format!("chmod 700 {}", d.display())));
        assert_eq!(status_of(&c, "token"), Status::Fail);
        assert!(c[1].detail.contains("0644"), "{c:?}");

        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = state_dir_checks(&d);
        assert_eq!(status_of(&c, "state-dir"), Status::Ok);
        assert_eq!(status_of(&c, "token"), Status::Ok);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn azure_without_credentials_fails_and_says_how_to_make_one() {
        let d = tmp("azure");
        std::fs::create_dir_all(&d).expect("mkdir");
        let r = run(&Options {
            provider: "azure".into(),
            state_dir: d.clone(),
            image_dir: None,
            agent_bin: None,
            coordinator: None,
            region: None,
            profile: None,
            qemu_image: None,
            store: None,
        })
        .await;
        assert!(!r.ok);
        let c = r
            .checks
            .iter()
            .find(|c| c.name == "azure-credentials")
            .expect("check");
        assert!(c
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("shoal credential create azure")));
        let text = r.render_text(false);
        assert!(text.contains("FAIL  azure-credentials"), "{text}");
        assert!(text.contains("will stop a run"), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
