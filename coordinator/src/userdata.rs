//! The user-data renderer: one `#cloud-config` document per node, for every provider.
//! Filled in by its own change; the signatures below are the contract the engine and
//! the providers use.

use shoal_protocol::AgentConfig;

/// EC2's limit on user-data, in bytes, before base64.
pub const EC2_LIMIT: usize = 16 * 1024;

/// Why a user-data document could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// Too large for the provider even compressed.
    #[error("user-data is {size} bytes ({compressed} gzip-compressed), over the {provider} limit of {limit} bytes")]
    TooLarge {
        /// Provider name.
        provider: &'static str,
        /// Plain size.
        size: usize,
        /// Compressed size.
        compressed: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a document this renderer wrote.
    #[error("user-data is not a Shoal cloud-config: {0}")]
    Invalid(String),
}

/// Renders the `#cloud-config` document for one node.
pub fn render(cfg: &AgentConfig) -> String {
    // Interim renderer: JSON strings are valid YAML scalars.
    let json = serde_json::to_string(cfg).unwrap_or_default();
    let quoted = serde_json::to_string(&json).unwrap_or_default();
    format!("#cloud-config\nwrite_files:\n  - path: {}\n    permissions: \"0600\"\n    content: {quoted}\n", shoal_protocol::AGENT_CONFIG_PATH)
}

/// Renders and, when a limit is given and the plain document exceeds it, gzip-compresses
/// (cloud-init detects gzip); errors when even that is too large.
pub fn render_for(
    provider: &'static str,
    cfg: &AgentConfig,
    limit: Option<usize>,
) -> Result<Vec<u8>, UserDataError> {
    let _ = (provider, limit);
    Ok(render(cfg).into_bytes())
}

/// Reads the agent configuration back out of rendered (possibly gzipped) user-data:
/// how the local provider boots its VMs from the very document a cloud VM gets.
pub fn agent_config(user_data: &[u8]) -> Result<AgentConfig, UserDataError> {
    let text = std::str::from_utf8(user_data).map_err(|e| UserDataError::Invalid(e.to_string()))?;
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("content: "))
        .ok_or_else(|| UserDataError::Invalid("no content".into()))?;
    let json: String = serde_json::from_str(line).map_err(|e| UserDataError::Invalid(e.to_string()))?;
    serde_json::from_str(&json).map_err(|e| UserDataError::Invalid(e.to_string()))
}
