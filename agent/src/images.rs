//! Making sure every image the node's containers need is in the Docker engine.
//!
//! For each image, in order: already present (inspect) → nothing to do; else a tarball
//! baked into the VM image at `<image dir>/<image_tarball_name(ref)>` → loaded through
//! the API (`POST /images/load`, streamed from the file); else pulled from its registry,
//! with the plan's credentials when it gives some. Baked tarballs are what make a first
//! boot fast and registry-free; the pull is the fallback.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use shoal_protocol::{image_tarball_name, reason, Plan, RegistryAuth};
use tokio::io::AsyncReadExt;

use crate::docker::{self, ErrorKind};

/// Size of the chunks a tarball is streamed to the engine in.
const LOAD_CHUNK: usize = 256 * 1024;

/// What [`ensure`] did, image by image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageReport {
    /// References that were already in the engine.
    pub present: Vec<String>,
    /// References loaded from a baked tarball.
    pub loaded: Vec<String>,
    /// References pulled from a registry.
    pub pulled: Vec<String>,
}

/// Why an image could not be made available. Messages name the image, the tarball and
/// the engine's own words; never a credential.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The engine did not answer at all.
    #[error("cannot reach the Docker engine while checking image {image}: {message}")]
    Unreachable {
        /// The image being handled.
        image: String,
        /// The engine client's error.
        message: String,
    },
    /// Inspecting the image failed for another reason than "not found".
    #[error("cannot inspect image {image}: {message}")]
    Inspect {
        /// The image.
        image: String,
        /// The engine's message.
        message: String,
    },
    /// The baked tarball exists but cannot be read.
    #[error("cannot read the tarball {} of image {image}: {source}", path.display())]
    Tarball {
        /// The image.
        image: String,
        /// The tarball.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine refused or failed to load the tarball.
    #[error("the Docker engine could not load the tarball {} for image {image}: {message}", path.display())]
    Load {
        /// The image.
        image: String,
        /// The tarball.
        path: PathBuf,
        /// The engine's message.
        message: String,
    },
    /// The tarball loaded, but the image is still not there under its reference.
    #[error(
        "the tarball {} was loaded but image {image} is still absent (the tarball held: {held})",
        path.display()
    )]
    NotInTarball {
        /// The image.
        image: String,
        /// The tarball.
        path: PathBuf,
        /// What the engine reported loading.
        held: String,
    },
    /// Neither present nor baked, and the pull failed.
    #[error("image {image} is not present, not baked in ({} does not exist), and pulling it from {} failed: {message}", tarball.display(), shoal_protocol::registry_of(image))]
    Pull {
        /// The image.
        image: String,
        /// Where a baked tarball was looked for.
        tarball: PathBuf,
        /// The engine's message.
        message: String,
    },
}

impl ImageError {
    /// The stable reason code reported to the coordinator: `docker-unreachable` when the
    /// engine did not answer, else `image-failed`.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Unreachable { .. } => reason::DOCKER_UNREACHABLE,
            _ => reason::IMAGE_FAILED,
        }
    }
}

/// The images node `node_id` needs, each once (plan order), with the first registry
/// credentials the plan gives for it.
pub fn wanted(plan: &Plan, node_id: &str) -> Vec<(String, Option<RegistryAuth>)> {
    let mut seen = HashSet::new();
    let mut out: Vec<(String, Option<RegistryAuth>)> = Vec::new();
    for c in plan
        .node(node_id)
        .map(|n| n.containers.as_slice())
        .unwrap_or(&[])
    {
        if seen.insert(c.image.clone()) {
            out.push((c.image.clone(), c.registry_auth.clone()));
        } else if let Some(entry) = out.iter_mut().find(|(i, a)| *i == c.image && a.is_none()) {
            entry.1 = c.registry_auth.clone();
        }
    }
    out
}

/// Makes every image of `images` available in the engine: present, else loaded from
/// `image_dir/<image_tarball_name>`, else pulled (with its credentials). Stops at the
/// first image that cannot be made available.
pub async fn ensure(
    docker: &Docker,
    images: &[(String, Option<RegistryAuth>)],
    image_dir: &Path,
) -> Result<ImageReport, ImageError> {
    let mut report = ImageReport::default();
    let mut seen = HashSet::new();
    for (image, auth) in images {
        if !seen.insert(image.as_str()) {
            continue;
        }
        if is_present(docker, image).await? {
            tracing::debug!(image = %image, "image present");
            report.present.push(image.clone());
            continue;
        }
        let tarball = image_dir.join(image_tarball_name(image));
        if tokio::fs::try_exists(&tarball).await.unwrap_or(false) {
            tracing::info!(image = %image, tarball = %tarball.display(), "loading image from its baked tarball");
            load(docker, image, &tarball).await?;
            report.loaded.push(image.clone());
        } else {
            tracing::info!(image = %image, "image neither present nor baked in: pulling it");
            pull(docker, image, auth.as_ref(), &tarball).await?;
            report.pulled.push(image.clone());
        }
    }
    Ok(report)
}

/// Whether the engine holds `image` (a 404 from inspect means no).
async fn is_present(docker: &Docker, image: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) => match ErrorKind::of(&e) {
            ErrorKind::NotFound => Ok(false),
            ErrorKind::Unreachable => Err(ImageError::Unreachable {
                image: image.to_string(),
                message: docker::message(&e),
            }),
            ErrorKind::NotModified | ErrorKind::Refused => Err(ImageError::Inspect {
                image: image.to_string(),
                message: docker::message(&e),
            }),
        },
    }
}

/// Streams a `docker save` tarball to `POST /images/load`, then checks that `image` is
/// there under its reference.
async fn load(docker: &Docker, image: &str, path: &Path) -> Result<(), ImageError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| ImageError::Tarball {
            image: image.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    // The file is read lazily, chunk by chunk, so a large image never sits in memory.
    let body = futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; LOAD_CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let options = ImportImageOptionsBuilder::default().quiet(false).build();
    let mut progress = docker.import_image_stream(options, body, None).boxed();
    let mut held = Vec::new();
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(line) = info.stream.as_deref().map(str::trim) {
                    if !line.is_empty() {
                        tracing::debug!(image = %image, "{line}");
                        held.push(line.to_string());
                    }
                }
            }
            Err(e) => {
                return Err(ImageError::Load {
                    image: image.to_string(),
                    path: path.to_path_buf(),
                    message: docker::message(&e),
                })
            }
        }
    }
    if is_present(docker, image).await? {
        Ok(())
    } else {
        Err(ImageError::NotInTarball {
            image: image.to_string(),
            path: path.to_path_buf(),
            held: if held.is_empty() {
                "nothing".to_string()
            } else {
                held.join("; ")
            },
        })
    }
}

/// Pulls `image` (tag `latest` when it names none: an untagged pull would fetch every
/// tag of the repository).
async fn pull(
    docker: &Docker,
    image: &str,
    auth: Option<&RegistryAuth>,
    tarball: &Path,
) -> Result<(), ImageError> {
    let (name, tag) = split_reference(image);
    let options = CreateImageOptionsBuilder::default()
        .from_image(name)
        .tag(tag)
        .build();
    // Credentials go into the X-Registry-Auth header only; they are never logged.
    let credentials = auth.map(|a| DockerCredentials {
        username: Some(a.username.clone()),
        password: Some(a.password.clone()),
        serveraddress: Some(a.server.clone()),
        ..Default::default()
    });
    let fail = |message: String| ImageError::Pull {
        image: image.to_string(),
        tarball: tarball.to_path_buf(),
        message,
    };
    let mut progress = docker
        .create_image(Some(options), None, credentials)
        .boxed();
    while let Some(item) = progress.next().await {
        if let Err(e) = item {
            return Err(fail(docker::message(&e)));
        }
    }
    if is_present(docker, image).await? {
        Ok(())
    } else {
        Err(fail(
            "the engine reported success but the image is absent".to_string(),
        ))
    }
}

/// Splits a reference into the `fromImage` and `tag` of a pull: a digest or tag stays
/// in the name (tag empty); a bare name gets `latest`.
fn split_reference(image: &str) -> (&str, &str) {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        (image, "")
    } else {
        (image, "latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_image_is_wanted_once_with_the_first_credentials_given() {
        let c = |name: &str, ip: &str, image: &str, auth: Option<&str>| {
            let mut v = serde_json::json!({
                "name": name,
                "hostname": format!("{name}-node-0.demo.shoal.internal"),
                "image": image,
                "address": ip,
            });
            if let Some(user) = auth {
                v["registry_auth"] = serde_json::json!({
                    "server": "r.example.com", "username": user, "password": "pw"
                });
            }
            v
        };
        let plan = serde_json::json!({
            "schema": 1, "cluster": "demo", "generation": 1, "domain": "shoal.internal",
            "network": {"overlay": "10.240.0.0/16", "vni": 42},
            "nodes": [{
                "id": "node-0", "index": 0, "private_ip": "10.213.0.10",
                "slice": "10.240.1.0/24", "gateway": "10.240.1.1",
                "containers": [
                    c("a", "10.240.1.2", "x/a:1", None),
                    c("b", "10.240.1.3", "x/b:1", None),
                    c("c", "10.240.1.4", "x/a:1", Some("first")),
                    c("d", "10.240.1.5", "x/a:1", Some("second")),
                ]
            }]
        });
        let plan = Plan::from_json(&serde_json::to_vec(&plan).expect("json")).expect("plan");
        let wanted = wanted(&plan, "node-0");
        let names: Vec<&str> = wanted.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(names, ["x/a:1", "x/b:1"]);
        assert_eq!(
            wanted[0].1.as_ref().map(|a| a.username.as_str()),
            Some("first")
        );
        assert!(wanted[1].1.is_none());
        assert!(super::wanted(&plan, "node-9").is_empty());
    }

    #[test]
    fn bare_references_are_pulled_as_latest() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("shoal/demo:1"), ("shoal/demo:1", ""));
        assert_eq!(
            split_reference("registry.example.com:5000/a/b"),
            ("registry.example.com:5000/a/b", "latest")
        );
        assert_eq!(
            split_reference("registry.example.com:5000/a/b:2"),
            ("registry.example.com:5000/a/b:2", "")
        );
        assert_eq!(split_reference("a/b@sha256:00"), ("a/b@sha256:00", ""));
    }

    #[test]
    fn errors_name_the_image_and_the_tarball() {
        let e = ImageError::Pull {
            image: "shoal/absent:1".into(),
            tarball: PathBuf::from("/var/lib/shoal/images/shoal_absent_1.tar"),
            message: "no route".into(),
        };
        let text = e.to_string();
        assert!(text.contains("shoal/absent:1"), "{text}");
        assert!(text.contains("shoal_absent_1.tar"), "{text}");
        assert_eq!(e.reason(), reason::IMAGE_FAILED);
    }
}
