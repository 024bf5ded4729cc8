//! Connecting to the Docker engine, and what its errors mean.
//!
//! Every module that talks to Docker (overlay, images, containers) reads an error through
//! [`ErrorKind::of`] and words it with [`message`], so "the engine is down" and "the
//! engine said no" are told apart the same way everywhere (the first is reported as
//! `docker-unreachable`, which a resident agent rides out).

use bollard::errors::Error as BollardError;
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

/// What a Docker API error means to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The engine did not answer: no socket, a refused or broken connection, a timeout.
    Unreachable,
    /// The engine has no such object (404).
    NotFound,
    /// The object is already in the requested state (304: stopping a stopped container).
    NotModified,
    /// The engine answered and refused (409 conflicts, 400, 500, a failed stream, …).
    Refused,
}

impl ErrorKind {
    /// Classifies a client error. Transport failures mean the engine is unreachable;
    /// anything the engine answered is a refusal of some kind.
    pub fn of(e: &BollardError) -> ErrorKind {
        match e {
            BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_) => ErrorKind::Unreachable,
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => ErrorKind::NotFound,
            BollardError::DockerResponseServerError {
                status_code: 304, ..
            } => ErrorKind::NotModified,
            _ => ErrorKind::Refused,
        }
    }
}

/// Whether `e` is the engine's 404.
pub fn is_not_found(e: &BollardError) -> bool {
    ErrorKind::of(e) == ErrorKind::NotFound
}

/// The engine's own words for an error: its message for refusals, else the client error
/// with its causes.
pub fn message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status_code: u16) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code,
            message: format!("status {status_code}\n"),
        }
    }

    #[test]
    fn errors_are_classified_by_what_the_engine_did() {
        assert_eq!(
            ErrorKind::of(&BollardError::SocketNotFoundError("/run/d.sock".into())),
            ErrorKind::Unreachable
        );
        assert_eq!(
            ErrorKind::of(&BollardError::RequestTimeoutError),
            ErrorKind::Unreachable
        );
        let io = BollardError::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(ErrorKind::of(&io), ErrorKind::Unreachable);
        assert_eq!(ErrorKind::of(&answered(404)), ErrorKind::NotFound);
        assert!(is_not_found(&answered(404)));
        assert_eq!(ErrorKind::of(&answered(304)), ErrorKind::NotModified);
        for status in [400, 409, 500] {
            assert_eq!(ErrorKind::of(&answered(status)), ErrorKind::Refused);
        }
        assert_eq!(message(&answered(409)), "status 409");
    }
}
