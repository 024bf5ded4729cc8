//! The agent's configuration file, as cloud-init writes it from the user-data.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_protocol::{is_dns_label, AgentConfig};

/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: u64 = 256 << 10;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Missing or unreadable.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid.
    #[error("configuration {path} is invalid: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and checks the configuration. Warns when the file (which holds the cluster
/// key and the node token) is readable by others than its owner.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let p = path.display().to_string();
    let read = |source| ConfigError::Read {
        path: p.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid {
            path: p,
            message: format!(
                "{} bytes, over the {MAX_CONFIG_BYTES}-byte limit",
                meta.len()
            ),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %p, mode = format!("{:o}", meta.permissions().mode() & 0o777), "the configuration holds secrets and should be mode 0600");
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let cfg: AgentConfig = serde_json::from_slice(&bytes).map_err(|e| ConfigError::Invalid {
        path: p.clone(),
        message: e.to_string(),
    })?;
    check(&cfg).map_err(|message| ConfigError::Invalid { path: p, message })?;
    Ok(cfg)
}

/// The rules a configuration must meet.
pub fn check(cfg: &AgentConfig) -> Result<(), String> {
    let url = &cfg.metadata_url;
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        return Err(format!("metadata_url {url:?} is not an http(s) URL"));
    }
    if cfg.cluster_key.len() != 64 || !cfg.cluster_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("cluster_key is not 64 hex digits".into());
    }
    if !is_dns_label(&cfg.node_id) {
        return Err(format!(
            "node_id {:?} is not an RFC 1123 label",
            cfg.node_id
        ));
    }
    if cfg.node_token.is_empty() || cfg.node_token.len() > 256 {
        return Err("node_token is empty or too long".into());
    }
    if let Some(pem) = &cfg.ca_cert_pem {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("ca_cert_pem holds no PEM certificate".into());
        }
    }
    if cfg.deadline_secs == 0 {
        return Err("deadline_secs must be positive".into());
    }
    Ok(())
}
