//! The local provider's preflight checks (`shoal doctor`, and `shoal serve` before it
//! sets the provider up).

use std::path::Path;

use super::{images, LocalProvider};
use crate::providers::preflight::{
    check, is_root, output, root_check, tool_checks, which, Check, PreflightOptions, Status,
};

impl LocalProvider {
    /// What the local provider needs of this machine: root, Docker and the tools, the
    /// kernel's bridge, VXLAN and veth devices (tried for real in a throwaway
    /// namespace), the agent binary and the demo image. With
    /// [`PreflightOptions::host_only`], only what `shoal serve` needs to set the
    /// provider up: root and the tools.
    pub fn preflight(opts: &PreflightOptions) -> Vec<Check> {
        let mut checks = Vec::new();
        host_checks(&mut checks);
        if !opts.host_only {
            let root = is_root();
            kernel_checks(root, &mut checks);
            forward_check(root, &mut checks);
            agent_and_image_checks(opts, &mut checks);
        }
        checks
    }
}

fn host_checks(checks: &mut Vec<Check>) {
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
}

fn agent_and_image_checks(opts: &PreflightOptions, checks: &mut Vec<Check>) {
    let agent = opts.agent_bin();
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
    let image_dir = opts.image_dir();
    let tar = image_dir.join(shoal_protocol::image_tarball_name(images::DEMO_IMAGE));
    let busybox = Path::new(images::BUSYBOX);
    checks.push(if tar.is_file() {
        check("demo-image", Status::Ok, tar.display().to_string(), None)
    } else if busybox.is_file() {
        check(
            "demo-image",
            Status::Info,
            format!(
                "{} not built yet: `shoal serve` builds it there at first need, from {} (or run cloud-init/build-demo-image {})",
                tar.display(),
                busybox.display(),
                image_dir.display()
            ),
            None,
        )
    } else {
        check(
            "demo-image",
            Status::Fail,
            format!(
                "{} is missing and {} is not there to build it: the demo blueprint (the default) needs image {} baked in, and local VMs have no registry",
                tar.display(),
                busybox.display(),
                images::DEMO_IMAGE
            ),
            Some(format!(
                "apt-get install busybox-static (then `shoal serve` builds it at first need), or cloud-init/build-demo-image {} from Shoal's source tree, or `shoal serve --image-dir DIR` with a directory that has it",
                image_dir.display()
            )),
        )
    });
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
