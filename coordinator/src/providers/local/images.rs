//! The images a local cluster runs, checked before any VM is made. Local VMs have no
//! registry: every image must be a baked tarball in the image directory, named by
//! `shoal_protocol::image_tarball_name`. The demo image needs only Debian's
//! busybox-static, so it is built there at first need, as
//! `cloud-init/build-demo-image` would build it: a `docker save` tarball of one layer
//! (busybox, its applet links, the demo roles), reproducible (sorted entries, fixed
//! owner and mtime).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shoal_protocol::image_tarball_name;

use crate::keys::write_file_atomic;

/// The demo blueprint's image.
pub const DEMO_IMAGE: &str = "shoal/demo:1";
/// Where Debian's busybox-static installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";
/// The demo roles, baked into the image as `/usr/local/bin/shoal-demo`.
const DEMO_SCRIPT: &str = include_str!("../../../../demo/shoal-demo");
/// 2024-01-01, as `cloud-init/build-demo-image`'s default `SOURCE_DATE_EPOCH`.
const EPOCH: u64 = 1_704_067_200;

/// An image the image directory lacks, and how to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The image reference.
    pub image: String,
    /// The tarball looked for.
    pub tarball: PathBuf,
    /// The command that makes it, or what else to do.
    pub fix: String,
}

/// The command that builds an image Shoal knows how to build, for messages.
pub fn builder_of(image: &str, image_dir: &Path) -> Option<String> {
    let dir = image_dir.display();
    if image == DEMO_IMAGE {
        return Some(format!("cloud-init/build-demo-image {dir}"));
    }
    if image.starts_with("shoal/hadoop:") {
        return Some(format!("cloud-init/build-hadoop-image {dir}"));
    }
    None
}

/// The images of `images` that are not baked into `image_dir`, after building the demo
/// image there if it is one of them and busybox-static is installed.
pub fn missing(image_dir: &Path, images: &[String]) -> Vec<Missing> {
    let mut out = Vec::new();
    for image in images {
        let tarball = image_dir.join(image_tarball_name(image));
        if tarball.is_file() {
            continue;
        }
        let mut why = String::new();
        if image == DEMO_IMAGE {
            match build_demo_image(image_dir, Path::new(BUSYBOX)) {
                Ok(path) => {
                    tracing::info!(image = %image, path = %path.display(), "built the demo image at first need");
                    continue;
                }
                Err(e) => why = format!(" (building it here failed: {e})"),
            }
        }
        let fix = match builder_of(image, image_dir) {
            Some(cmd) => format!("build it with `{cmd}` from Shoal's source tree{why}"),
            None => format!(
                "put its `docker save` tarball there as {} (local VMs have no registry){why}",
                tarball.display()
            ),
        };
        out.push(Missing {
            image: image.clone(),
            tarball,
            fix,
        });
    }
    out
}

/// Whether an ELF file asks for a dynamic loader (a `PT_INTERP` program header): a
/// dynamically linked busybox cannot run in an image with no libc.
fn is_dynamic_elf(bytes: &[u8]) -> Result<bool, String> {
    let read = |at: usize, n: usize| -> Result<u64, String> {
        let b = bytes
            .get(at..at + n)
            .ok_or_else(|| "truncated ELF header".to_string())?;
        Ok(b.iter().rev().fold(0u64, |v, x| (v << 8) | u64::from(*x)))
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) || bytes.get(4) != Some(&2) {
        return Err("not a 64-bit ELF file".into());
    }
    if bytes.get(5) != Some(&1) {
        return Err("not a little-endian ELF file".into());
    }
    let phoff = read(0x20, 8)? as usize;
    let phentsize = read(0x36, 2)? as usize;
    let phnum = read(0x38, 2)? as usize;
    for i in 0..phnum {
        if read(phoff + i * phentsize, 4)? == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A tar archive in the POSIX ustar format, built in memory.
#[derive(Debug, Default)]
struct Tar {
    out: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

impl Tar {
    fn entry(&mut self, name: &str, kind: Kind, mode: u32, data: &[u8], link: &str) {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, len: usize, s: &[u8]| {
            let n = s.len().min(len);
            h[at..at + n].copy_from_slice(&s[..n]);
        };
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0width$o}\0", width = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        // Names over 100 bytes go in the prefix field, split at a '/'.
        let (prefix, short) = match name.len() {
            0..=100 => ("", name),
            _ => name
                .char_indices()
                .filter(|(i, c)| *c == '/' && *i <= 155 && name.len() - i - 1 <= 100)
                .map(|(i, _)| (&name[..i], &name[i + 1..]))
                .next()
                .unwrap_or(("", name)),
        };
        put(&mut h, 0, 100, short.as_bytes());
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        let size = if kind == Kind::File { data.len() } else { 0 };
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, EPOCH);
        h[148..156].copy_from_slice(b"        ");
        h[156] = match kind {
            Kind::File => b'0',
            Kind::Symlink => b'2',
            Kind::Dir => b'5',
        };
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 6, b"ustar\0");
        put(&mut h, 263, 2, b"00");
        put(&mut h, 265, 32, b"root");
        put(&mut h, 297, 32, b"root");
        put(&mut h, 345, 155, prefix.as_bytes());
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
        if kind == Kind::File {
            self.out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.out.extend(std::iter::repeat_n(0u8, pad));
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

/// One entry of the demo image's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Builds the demo image into `out_dir` from `busybox` (which must be static); returns
/// the tarball's path. Written atomically, so a VM never loads half of it.
pub fn build_demo_image(out_dir: &Path, busybox: &Path) -> Result<PathBuf, String> {
    let bin = std::fs::read(busybox).map_err(|e| {
        format!(
            "cannot read {}: {e} (apt-get install busybox-static)",
            busybox.display()
        )
    })?;
    if is_dynamic_elf(&bin).map_err(|e| format!("{}: {e}", busybox.display()))? {
        return Err(format!(
            "{} is dynamically linked: apt-get install busybox-static",
            busybox.display()
        ));
    }
    let list = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| format!("cannot run {} --list-full: {e}", busybox.display()))?;
    let mut fs: std::collections::BTreeMap<String, Node> = std::collections::BTreeMap::new();
    let dir = |fs: &mut std::collections::BTreeMap<String, Node>, path: &str, mode: u32| {
        let mut at = String::new();
        for part in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            fs.entry(format!("{at}/")).or_insert(Node::Dir(0o755));
        }
        fs.insert(format!("{path}/"), Node::Dir(mode));
    };
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "etc",
        "var/lib/shoal-demo",
        "proc",
        "sys",
        "dev",
    ] {
        dir(&mut fs, d, 0o755);
    }
    dir(&mut fs, "root", 0o700);
    dir(&mut fs, "tmp", 0o1777);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        if let Some((parent, _)) = applet.rsplit_once('/') {
            if !fs.contains_key(&format!("{parent}/")) {
                dir(&mut fs, parent, 0o755);
            }
        }
        fs.insert(applet.to_string(), Node::Link("/bin/busybox".into()));
    }
    if !fs.contains_key("bin/sh") {
        return Err(format!("{} has no sh applet", busybox.display()));
    }
    fs.insert("bin/busybox".into(), Node::File(0o755, bin));
    fs.insert(
        "usr/local/bin/shoal-demo".into(),
        Node::File(0o755, DEMO_SCRIPT.as_bytes().to_vec()),
    );
    fs.insert(
        "etc/passwd".into(),
        Node::File(
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
    );
    fs.insert(
        "etc/group".into(),
        Node::File(0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec()),
    );
    let mut layer = Tar::default();
    for (name, node) in &fs {
        match node {
            Node::Dir(mode) => layer.entry(name, Kind::Dir, *mode, &[], ""),
            Node::File(mode, data) => layer.entry(name, Kind::File, *mode, data, ""),
            Node::Link(to) => layer.entry(name, Kind::Symlink, 0o777, &[], to),
        }
    }
    let layer = layer.finish();
    let layer_hex = hex(&Sha256::digest(&layer));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let created = "2024-01-01T00:00:00Z";
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/usr/local/bin/shoal-demo", "server"],
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}},
            "StopSignal": "SIGTERM",
            "Labels": {
                "org.opencontainers.image.title": "shoal-demo",
                "org.opencontainers.image.description": "Shoal demo roles (server, agent) on busybox"
            }
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
        "history": [{"created": created, "created_by": "shoal serve (the local provider, at first need)"}]
    })
    .to_string();
    let config_hex = hex(&Sha256::digest(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [DEMO_IMAGE],
        "Layers": [format!("{layer_hex}/layer.tar")]
    }])
    .to_string();
    let mut image = Tar::default();
    let mut entries = [
        (format!("{config_hex}.json"), config.into_bytes()),
        (format!("{layer_hex}/layer.tar"), layer),
        ("manifest.json".to_string(), manifest.into_bytes()),
    ];
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    image.entry(&format!("{layer_hex}/"), Kind::Dir, 0o755, &[], "");
    for (name, data) in &entries {
        image.entry(name, Kind::File, 0o644, data, "");
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let path = out_dir.join(image_tarball_name(DEMO_IMAGE));
    write_file_atomic(&path, &image.finish(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_are_ustar_with_a_valid_checksum() {
        let mut t = Tar::default();
        t.entry("etc/passwd", Kind::File, 0o644, b"root\n", "");
        t.entry("bin/sh", Kind::Symlink, 0o777, &[], "/bin/busybox");
        let out = t.finish();
        assert_eq!(out.len(), 512 * 3 + 1024);
        let h = &out[..512];
        assert_eq!(&h[257..263], b"ustar\0");
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).expect("octal"), 8)
            .expect("checksum");
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(&out[512..517], b"root\n");
        assert_eq!(out[1024 + 156], b'2');
    }

    #[test]
    fn dynamic_and_static_elf_files_are_told_apart() {
        // This test binary is dynamically linked (a PT_INTERP header), a text is no ELF.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert_eq!(is_dynamic_elf(&me), Ok(true));
        assert!(is_dynamic_elf(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn unknown_images_say_where_the_tarball_goes() {
        let dir = std::env::temp_dir().join(format!("shoal-img-{}", crate::keys::random_hex(4)));
        let m = missing(&dir, &["example.com/x:1".to_string()]);
        assert_eq!(m.len(), 1);
        assert!(m[0].fix.contains("example.com_x_1.tar"), "{:?}", m[0]);
        assert_eq!(
            builder_of("shoal/hadoop:1", &dir).as_deref(),
            Some(&*format!("cloud-init/build-hadoop-image {}", dir.display()))
        );
    }
}
