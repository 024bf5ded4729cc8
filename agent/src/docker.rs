//! Connecting to the Docker engine.

use bollard::Docker;

/// The Docker endpoint on a VM.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Failure to reach the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The endpoint is not a unix socket URL.
    #[error("docker host {0:?} is not a unix:// URL")]
    BadHost(String),
    /// The engine did not answer.
    #[error("cannot reach the Docker engine at {host}: {source}")]
    Unreachable {
        /// Endpoint.
        host: String,
        /// Cause.
        source: bollard::errors::Error,
    },
}

/// Connects to the engine at `host` (`unix:///path`) and negotiates the API version, so
/// older engines (Debian 12 ships API 1.41) are spoken to in their own version.
pub async fn connect(host: &str) -> Result<Docker, DockerError> {
    let path = host
        .strip_prefix("unix://")
        .ok_or_else(|| DockerError::BadHost(host.to_string()))?;
    let unreachable = |source| DockerError::Unreachable {
        host: host.to_string(),
        source,
    };
    let docker =
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION).map_err(unreachable)?;
    docker.negotiate_version().await.map_err(unreachable)
}
