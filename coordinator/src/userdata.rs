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
    let _ = cfg;
    String::new()
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
    let _ = user_data;
    Err(UserDataError::Invalid("not implemented".into()))
}
