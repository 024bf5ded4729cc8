//! Preflight checks: what a provider needs of this machine (tools, kernel features,
//! credentials), each check saying what it found and how to fix it. Every provider
//! owns its own (`LocalProvider::preflight`, `aws::preflight`, `azure::preflight`);
//! `shoal doctor` shows them, and `shoal serve` refuses a provider whose host checks
//! fail, with the same words.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Context a person should know; nothing to fix.
    Info,
    /// Works, but not as it should (or cannot be checked).
    Warn,
    /// A run will fail until this is fixed.
    Fail,
}

impl Status {
    /// The tag `doctor` prints.
    pub fn tag(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// A short, stable name (`dockerd`, `kernel-vxlan`, `state-dir`, …).
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Builds a [`Check`].
pub fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail: detail.into(),
        fix,
    }
}

/// The first failed check, as one sentence (detail, then fix): why a provider cannot
/// be used here. `None` when nothing failed.
pub fn blocker(checks: &[Check]) -> Option<String> {
    checks
        .iter()
        .find(|c| c.status == Status::Fail)
        .map(|c| match &c.fix {
            Some(f) => format!("{} ({f})", c.detail),
            None => c.detail.clone(),
        })
}

/// What the checks look at.
#[derive(Debug, Clone, Default)]
pub struct PreflightOptions {
    /// The coordinator's state directory.
    pub state_dir: PathBuf,
    /// Where the local provider's baked images are (default `<state-dir>/images`).
    pub image_dir: Option<PathBuf>,
    /// The agent binary local VMs run (default: beside this binary).
    pub agent_bin: Option<PathBuf>,
    /// `--region`, for the cloud providers.
    pub region: Option<String>,
    /// `--set profile=NAME` for AWS.
    pub profile: Option<String>,
    /// The qemu provider's base image (default `<state-dir>/vm-image`).
    pub qemu_image: Option<PathBuf>,
    /// Only what `shoal serve` needs to set a provider up (tools, privileges), not what
    /// a cluster needs later (images, kernel devices tried for real).
    pub host_only: bool,
}

impl PreflightOptions {
    /// The image directory, defaulted.
    pub fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("images"))
    }

    /// The qemu provider's base image directory, defaulted.
    pub fn qemu_image(&self) -> PathBuf {
        self.qemu_image
            .clone()
            .unwrap_or_else(|| self.state_dir.join("vm-image"))
    }

    /// The agent binary, defaulted to `shoal-agent` beside this binary.
    pub fn agent_bin(&self) -> PathBuf {
        self.agent_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
                .unwrap_or_else(|| "shoal-agent".into())
        })
    }
}

/// The first executable `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// Runs a tool and returns its output, or why it could not.
pub fn output(tool: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} {} failed ({}): {}",
            tool.display(),
            args.join(" "),
            out.status,
            text.trim()
        ))
    }
}

/// One check per tool (name, Debian package, what it is for): found on `PATH`, or how
/// to install it.
pub fn tool_checks(tools: &[(&str, &str, &str)]) -> Vec<Check> {
    tools
        .iter()
        .map(|(tool, package, why)| match which(tool) {
            Some(p) => check(tool, Status::Ok, format!("{} ({why})", p.display()), None),
            None => check(
                tool,
                Status::Fail,
                format!("{tool} not found on PATH: needed for {why}"),
                Some(format!("apt-get install {package}")),
            ),
        })
        .collect()
}

/// The `root` check: `why` says what the provider does that needs it.
pub fn root_check(why: &str) -> Check {
    if is_root() {
        check("root", Status::Ok, "running as root", None)
    } else {
        check(
            "root",
            Status::Fail,
            format!("running as uid {}: {why}", nix::unistd::geteuid()),
            Some("run `shoal serve` (and this check) as root, e.g. with sudo".into()),
        )
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
