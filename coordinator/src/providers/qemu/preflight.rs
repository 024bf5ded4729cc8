//! The qemu provider's preflight checks (`shoal doctor --provider qemu`, and `shoal
//! serve` before it sets the provider up).

use std::path::Path;

use super::{
    decide_accel, Accel, AccelChoice, BaseImage, KvmProbe, QemuProvider, MEMORY_MIB, QEMU,
};
use crate::providers::preflight::{
    check, output, root_check, tool_checks, which, Check, PreflightOptions, Status,
};

impl QemuProvider {
    /// What the qemu provider needs of this machine: root, qemu and the tools, the tun
    /// device; beyond [`PreflightOptions::host_only`], the accelerator VMs will run
    /// under (KVM or TCG, and why), the base image, and the memory left for VMs.
    pub fn preflight(opts: &PreflightOptions) -> Vec<Check> {
        let mut checks = vec![root_check(
            "the qemu provider makes taps and a VPC namespace",
        )];
        checks.push(match which(QEMU) {
            None => check(
                QEMU,
                Status::Fail,
                format!("{QEMU} not found on PATH: it runs the VMs"),
                Some("apt-get install -t bookworm-backports qemu-system-x86 (on Debian 12 it must match qemu-utils; scripts/install-deps does it)".into()),
            ),
            Some(p) => match output(&p, &["--version"]) {
                Ok(v) => check(
                    QEMU,
                    Status::Ok,
                    format!("{}: {}", p.display(), v.lines().next().unwrap_or("").trim()),
                    None,
                ),
                Err(e) => check(QEMU, Status::Fail, e, Some("reinstall qemu-system-x86".into())),
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
        if !opts.host_only {
            checks.push(accel_check());
            checks.push(image_check(&opts.qemu_image()));
            checks.extend(memory_check());
        }
        checks
    }
}

fn accel_check() -> Check {
    match decide_accel(AccelChoice::Auto, &KvmProbe::read()) {
        Ok(a) => check(
            "accelerator",
            if a.accel == Accel::Kvm {
                Status::Ok
            } else {
                Status::Info
            },
            format!("{}: {}", a.accel.as_str(), a.why),
            None,
        ),
        Err(e) => check("accelerator", Status::Fail, e, None),
    }
}

fn image_check(image: &Path) -> Check {
    match BaseImage::open(image) {
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
    }
}

/// Room for VMs in the memory this machine has free (`MemAvailable`): a VM takes its
/// own memory and about 256 MiB of qemu's.
fn memory_check() -> Option<Check> {
    let mib = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())?
        / 1024;
    let vms = mib / u64::from(MEMORY_MIB + 256);
    Some(check(
        "memory",
        if vms == 0 { Status::Warn } else { Status::Info },
        format!("{mib} MiB available: room for about {vms} VM(s) of {MEMORY_MIB} MiB (and qemu's own ~256 MiB)"),
        None,
    ))
}
