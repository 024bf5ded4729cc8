//! `shoal doctor`: checks what a run needs before it fails halfway, and says exactly
//! what is missing and how to fix it.
//!
//! Each check ends `ok`, `warn` (works, but worth knowing), `info` (context, e.g. the
//! iptables FORWARD pitfall) or `FAIL` (a run will fail: the command exits 1). Checks
//! are plain functions over the real machine: tools on `PATH`, kernel features tried in
//! a throwaway network namespace, file modes, credentials as the providers resolve
//! them, and the coordinator's own `/v1/health`.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::providers::aws::credentials::{resolve, Env};
use crate::providers::ProviderParams;
use crate::server::ApiInfo;

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
    fn tag(self) -> &'static str {
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

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail: detail.into(),
        fix,
    }
}

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
}

/// The providers `doctor` knows.
pub const PROVIDERS: &[&str] = &["local", "qemu", "aws", "azure"];

/// Runs every check for the chosen provider.
pub async fn run(opts: &Options) -> Report {
    let mut checks = Vec::new();
    match opts.provider.as_str() {
        "local" => local_checks(opts, &mut checks),
        "qemu" => qemu_checks(opts, &mut checks),
        "aws" => aws_checks(opts, &mut checks),
        "azure" => azure_checks(opts, &mut checks),
        other => checks.push(check(
            "provider",
            Status::Fail,
            format!("unknown provider {other:?}"),
            Some(format!("use one of: {}", PROVIDERS.join(", "))),
        )),
    }
    checks.extend(state_dir_checks(&opts.state_dir));
    checks.push(coordinator_check(opts).await);
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    Report {
        provider: opts.provider.clone(),
        state_dir: opts.state_dir.clone(),
        checks,
        ok,
    }
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// Runs a tool (found on `PATH`) and returns its output, or why it could not.
fn output(tool: &Path, args: &[&str]) -> Result<String, String> {
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

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One check per tool (name, Debian package, what it is for): found on `PATH`, or how
/// to install it.
fn tool_checks(tools: &[(&str, &str, &str)]) -> Vec<Check> {
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
fn root_check(why: &str) -> Check {
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

fn local_checks(opts: &Options, checks: &mut Vec<Check>) {
    let root = is_root();
    checks.push(root_check(
        "the local provider creates network namespaces and runs a dockerd per VM",
    ));

    checks.push(match which("dockerd") {
        None => check(
            "dockerd",
            Status::Fail,
            "dockerd not found on PATH: every local VM runs its own Docker engine",
            Some("apt-get install docker.io (Shoal starts its own dockerds; the host's may stay stopped)".into()),
        ),
        Some(p) => match output(&p, &["--version"]) {
            Err(e) => check("dockerd", Status::Fail, e, Some("reinstall docker.io".into())),
            Ok(v) => {
                let v = v.trim().to_string();
                match docker_version(&v) {
                    Some((major, minor)) if (major, minor) < (20, 10) => check(
                        "dockerd",
                        Status::Fail,
                        format!("{}: {v}: too old, the agent speaks Docker API 1.41 (Docker 20.10 or later)", p.display()),
                        Some("apt-get install docker.io from Debian 12 or later".into()),
                    ),
                    Some(_) => check("dockerd", Status::Ok, format!("{}: {v}", p.display()), None),
                    None => check(
                        "dockerd",
                        Status::Warn,
                        format!("{}: cannot read the version from {v:?}", p.display()),
                        None,
                    ),
                }
            }
        },
    });

    checks.extend(tool_checks(&[
        ("ip", "iproute2", "namespaces, veths, the VPC bridge"),
        (
            "nsenter",
            "util-linux",
            "starts each VM's dockerd and agent inside its namespace",
        ),
        (
            "iptables",
            "iptables",
            "each VM's dockerd masquerades traffic leaving the overlay",
        ),
    ]));

    kernel_checks(root, checks);
    forward_check(root, checks);

    // The agent and the baked images.
    let agent = opts.agent_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
            .unwrap_or_else(|| "shoal-agent".into())
    });
    checks.push(if agent.is_file() {
        check("agent-binary", Status::Ok, agent.display().to_string(), None)
    } else {
        check(
            "agent-binary",
            Status::Fail,
            format!("{} not found: local VMs run it", agent.display()),
            Some("cargo build -p shoal-agent (it goes beside shoal), or give `shoal serve --agent-bin PATH` and `shoal doctor --agent-bin PATH`".into()),
        )
    });
    let image_dir = opts
        .image_dir
        .clone()
        .unwrap_or_else(|| opts.state_dir.join("images"));
    let tar = image_dir.join(shoal_protocol::image_tarball_name("shoal/demo:1"));
    checks.push(if tar.is_file() {
        check("demo-image", Status::Ok, tar.display().to_string(), None)
    } else {
        check(
            "demo-image",
            Status::Fail,
            format!(
                "{} is missing: the demo blueprint (the default) needs image shoal/demo:1 baked in, and local VMs have no registry",
                tar.display()
            ),
            Some(format!(
                "cloud-init/build-demo-image {} (from Shoal's source tree), or start `shoal serve --image-dir DIR` with a directory that has it",
                image_dir.display()
            )),
        )
    });
}

fn qemu_checks(opts: &Options, checks: &mut Vec<Check>) {
    use crate::providers::qemu::{self, BaseImage};
    let root = is_root();
    checks.push(root_check(
        "the qemu provider makes taps and a VPC namespace",
    ));
    checks.push(match which(qemu::QEMU) {
        None => check(
            qemu::QEMU,
            Status::Fail,
            format!("{} not found on PATH: it runs the VMs", qemu::QEMU),
            Some("apt-get install -t bookworm-backports qemu-system-x86 (on Debian 12 it must match qemu-utils; scripts/install-deps does it)".into()),
        ),
        Some(p) => match output(&p, &["--version"]) {
            Ok(v) => check(
                qemu::QEMU,
                Status::Ok,
                format!("{}: {}", p.display(), v.lines().next().unwrap_or("").trim()),
                None,
            ),
            Err(e) => check(qemu::QEMU, Status::Fail, e, Some("reinstall qemu-system-x86".into())),
        },
    });
    checks.extend(tool_checks(&[
        (
            "qemu-img",
            "qemu-utils",
            "each VM's qcow2 overlay on the base image",
        ),
        (
            "genisoimage",
            "genisoimage",
            "each VM's NoCloud seed (user-data, meta-data, network-config)",
        ),
        ("ip", "iproute2", "the VPC namespace, its bridge, the taps"),
        (
            "nsenter",
            "util-linux",
            "starts qemu inside the VPC namespace",
        ),
    ]));
    checks.push(if Path::new("/dev/net/tun").exists() {
        check("tun", Status::Ok, "/dev/net/tun (the VMs' taps)", None)
    } else {
        check(
            "tun",
            Status::Fail,
            "/dev/net/tun is missing: the VMs' taps need it",
            Some("modprobe tun".into()),
        )
    });
    let probe = qemu::KvmProbe::read();
    checks.push(match qemu::decide_accel(qemu::AccelChoice::Auto, &probe) {
        Ok(a) => check(
            "accelerator",
            if a.accel == qemu::Accel::Kvm {
                Status::Ok
            } else {
                Status::Info
            },
            format!("{}: {}", a.accel.as_str(), a.why),
            None,
        ),
        Err(e) => check("accelerator", Status::Fail, e, None),
    });
    let image = opts
        .qemu_image
        .clone()
        .unwrap_or_else(|| opts.state_dir.join("vm-image"));
    checks.push(match BaseImage::open(&image) {
        Ok(img) => check(
            "base-image",
            Status::Ok,
            format!(
                "{} (build {}, kernel command line {:?})",
                image.display(),
                img.manifest.key,
                img.manifest.cmdline
            ),
            None,
        ),
        Err(e) => check(
            "base-image",
            Status::Fail,
            e,
            Some(format!(
                "cloud-init/build-vm-image (from Shoal's source tree, as root; ~5 minutes the first time), then `shoal serve --qemu-image target/vm-image/current` (or link it to {})",
                image.display()
            )),
        ),
    });
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024);
    if let Some(mib) = available {
        let vms = mib / u64::from(qemu::MEMORY_MIB + 256);
        checks.push(check(
            "memory",
            if vms == 0 { Status::Warn } else { Status::Info },
            format!(
                "{mib} MiB available: room for about {vms} VM(s) of {} MiB (and qemu's own ~256 MiB)",
                qemu::MEMORY_MIB
            ),
            None,
        ));
    }
    kernel_checks(root, checks);
}

/// `Docker version 20.10.24+dfsg1, build 297e128` → (20, 10).
fn docker_version(v: &str) -> Option<(u32, u32)> {
    let rest = v.split("version ").nth(1)?;
    let mut it = rest.split(['.', ',', '+', '-', ' ']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel_checks(root: bool, checks: &mut Vec<Check>) {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    let ip = which("ip");
    // The surest test is to make the devices, in a namespace of our own so the host is
    // never touched; that needs root and `ip`.
    let tried = match (&ip, root) {
        (Some(ip), true) => Some(try_devices(ip)),
        _ => None,
    };
    for (feature, module, what) in [
        (
            "kernel-bridge",
            "bridge",
            "the VPC bridge and each VM's Docker bridge",
        ),
        ("kernel-vxlan", "vxlan", "the overlay between VMs"),
        ("kernel-veth", "veth", "each VM's link to the VPC"),
    ] {
        let c = match &tried {
            Some(results) => match results.iter().find(|(m, _)| *m == module) {
                Some((_, Ok(()))) => check(
                    feature,
                    Status::Ok,
                    format!("created a {module} device in a throwaway namespace ({what})"),
                    None,
                ),
                Some((_, Err(e))) => check(
                    feature,
                    Status::Fail,
                    format!("cannot create a {module} device: {e}"),
                    Some(format!(
                        "modprobe {module}; if the module is missing, install the kernel's extra modules (e.g. linux-modules-extra-$(uname -r)) or use a kernel with CONFIG_{}",
                        module.to_uppercase()
                    )),
                ),
                None => check(feature, Status::Warn, "not tried", None),
            },
            None if loaded(module) => check(
                feature,
                Status::Ok,
                format!("module {module} is loaded ({what})"),
                None,
            ),
            None => check(
                feature,
                Status::Warn,
                format!("module {module} is not loaded and cannot be tried without root and `ip`; it may be built in or load on demand"),
                Some("run `shoal doctor` as root to try it".into()),
            ),
        };
        checks.push(c);
    }
}

/// Creates a bridge, a VXLAN device and a veth pair in a throwaway namespace.
fn try_devices(ip: &Path) -> Vec<(&'static str, Result<(), String>)> {
    let ns = format!("shoal-doctor-{}", std::process::id());
    if let Err(e) = output(ip, &["netns", "add", &ns]) {
        return ["bridge", "vxlan", "veth"]
            .into_iter()
            .map(|m| (m, Err(format!("cannot make a throwaway namespace: {e}"))))
            .collect();
    }
    let results = vec![
        (
            "bridge",
            output(ip, &["-n", &ns, "link", "add", "d-br", "type", "bridge"]).map(|_| ()),
        ),
        (
            "vxlan",
            output(
                ip,
                &[
                    "-n",
                    &ns,
                    "link",
                    "add",
                    "d-vx",
                    "type",
                    "vxlan",
                    "id",
                    "4242",
                    "dstport",
                    "4789",
                    "nolearning",
                ],
            )
            .map(|_| ()),
        ),
        (
            "veth",
            output(
                ip,
                &[
                    "-n", &ns, "link", "add", "d-v0", "type", "veth", "peer", "name", "d-v1",
                ],
            )
            .map(|_| ()),
        ),
    ];
    // Deleting the namespace deletes every device in it.
    let _ = output(ip, &["netns", "delete", &ns]);
    results
}

fn forward_check(root: bool, checks: &mut Vec<Check>) {
    const WHY: &str = "Shoal keeps the local VPC bridge in a namespace of its own (shoal-vpc, or <--local-prefix>-vpc), so VM-to-VM frames never cross the host's FORWARD chain";
    let policy = match (which("iptables"), root) {
        (Some(ipt), true) => output(&ipt, &["-S", "FORWARD"]).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("-P FORWARD ").map(|p| p.trim().to_string()))
        }),
        _ => None,
    };
    let host_dockerd = host_dockerd_pid();
    let detail = match (&policy, host_dockerd) {
        (Some(p), Some(pid)) if p == "DROP" => format!(
            "the host's FORWARD policy is DROP and a host dockerd runs (pid {pid}; Docker sets DROP): a bridge on the host would silently drop traffic between VMs. {WHY}: nothing to do"
        ),
        (Some(p), _) if p == "DROP" => format!(
            "the host's FORWARD policy is DROP (Docker sets it): a bridge on the host would silently drop traffic between VMs. {WHY}: nothing to do"
        ),
        (Some(p), _) => format!("the host's FORWARD policy is {p}. {WHY}, whatever the policy"),
        (None, _) => format!("FORWARD policy not read (needs root and iptables). {WHY}"),
    };
    checks.push(check("forward-policy", Status::Info, detail, None));
}

/// A dockerd that is not one of Shoal's (those run with `--exec-root` under a state
/// directory).
fn host_dockerd_pid() -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).contains("--exec-root") {
            return Some(pid);
        }
    }
    None
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

/// Masks an access key id: `AKIA…WXYZ`.
pub fn mask_key_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 8 {
        return "****".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

fn aws_checks(opts: &Options, checks: &mut Vec<Check>) {
    let mut params = ProviderParams {
        region: Some(opts.region.clone().unwrap_or_else(|| "us-east-1".into())),
        ..ProviderParams::default()
    };
    if let Some(p) = &opts.profile {
        params.extra.insert("profile".into(), p.clone());
    }
    checks.push(match resolve(&Env::Process, &params) {
        Ok(s) => check(
            "aws-credentials",
            Status::Ok,
            format!(
                "access key {} from {}",
                mask_key_id(s.credentials.access_key_id()),
                s.credentials.source()
            ),
            None,
        ),
        Err(e) => check(
            "aws-credentials",
            Status::Fail,
            e.to_string(),
            Some("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials (static keys; `aws configure export-credentials` turns SSO and role profiles into keys)".into()),
        ),
    });
    // The region as `cluster create` would find it without --region.
    params.region = opts.region.clone();
    checks.push(match resolve(&Env::Process, &params) {
        Ok(s) => check(
            "aws-region",
            Status::Ok,
            format!("{} (EC2 endpoint {})", s.region, s.endpoint),
            None,
        ),
        Err(e) if e.to_string().contains("no AWS region") => check(
            "aws-region",
            Status::Warn,
            "no default region",
            Some("give --region to `shoal cluster create`, or set AWS_REGION".into()),
        ),
        // A credentials problem is reported above.
        Err(_) => check("aws-region", Status::Warn, "not resolved (see above)", None),
    });
}

fn azure_checks(opts: &Options, checks: &mut Vec<Check>) {
    const FIX: &str = "shoal credential create azure NAME --tenant-id … --client-id … --subscription-id …, then upload the certificate it prints to the app registration";
    match crate::credentials::list(&opts.state_dir) {
        Err(e) => checks.push(check(
            "azure-credentials",
            Status::Fail,
            e.to_string(),
            None,
        )),
        Ok(list) if list.is_empty() => checks.push(check(
            "azure-credentials",
            Status::Fail,
            format!(
                "no Azure credential stored in {}",
                opts.state_dir.join("credentials/azure").display()
            ),
            Some(FIX.into()),
        )),
        Ok(list) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            for c in list {
                let name = format!("azure:{}", c.name);
                checks.push(match (&c.azure, &c.problem) {
                    (_, Some(p)) => check(&name, Status::Fail, p.clone(), Some(format!("delete {} and create it again: {FIX}", opts.state_dir.join("credentials/azure").join(&c.name).display()))),
                    (Some(i), None) if i.not_after < now => check(
                        &name,
                        Status::Fail,
                        format!("certificate {} expired", i.thumbprint_sha1),
                        Some(format!("create a new credential: {FIX}")),
                    ),
                    (Some(i), None) => check(
                        &name,
                        Status::Ok,
                        format!(
                            "subscription {}, tenant {}, app {}, certificate {} (Azure checks it at the first call)",
                            i.subscription_id, i.tenant_id, i.client_id, i.thumbprint_sha1
                        ),
                        None,
                    ),
                    (None, None) => check(&name, Status::Warn, "unreadable", None),
                });
            }
        }
    }
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
    let http = match crate::cli::operator_http_client(
        &url,
        ca_cert,
        &opts.state_dir,
        Duration::from_secs(5),
    ) {
        Ok(h) => h,
        Err(e) => return check(NAME, Status::Fail, e, None),
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

    #[test]
    fn docker_versions_are_read() {
        assert_eq!(
            docker_version("Docker version 20.10.24+dfsg1, build 297e128"),
            Some((20, 10))
        );
        assert_eq!(
            docker_version("Docker version 28.2.2, build e6534b4"),
            Some((28, 2))
        );
        assert_eq!(docker_version("nonsense"), None);
    }

    #[test]
    fn key_ids_are_masked() {
        assert_eq!(mask_key_id("AKIAIOSFODNN7EXAMPLE"), "AKIA…MPLE");
        assert_eq!(mask_key_id("short"), "****");
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
