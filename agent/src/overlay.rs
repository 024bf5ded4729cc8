//! Placeholder until the overlay change lands (same signatures).
use bollard::Docker;
use shoal_protocol::Plan;

/// Overlay failure.
#[derive(Debug, thiserror::Error)]
#[error("overlay: {0}")]
pub struct OverlayError(String);
impl OverlayError {
    /// Reason code.
    pub fn reason(&self) -> &'static str {
        shoal_protocol::reason::NETWORK_FAILED
    }
}
/// Report.
#[derive(Debug, Default)]
pub struct OverlayReport {
    /// Whether anything changed.
    pub changed: bool,
}
/// Converges the overlay.
pub async fn converge(
    _docker: &Docker,
    _handle: &rtnetlink::Handle,
    _plan: &Plan,
    _node_id: &str,
) -> Result<OverlayReport, OverlayError> {
    Ok(OverlayReport::default())
}
