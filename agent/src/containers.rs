//! Placeholder until the containers change lands (same signatures).
use bollard::Docker;
use shoal_protocol::{ContainerStatus, Plan};

/// Container failure.
#[derive(Debug, thiserror::Error)]
#[error("containers: {0}")]
pub struct ContainerError(String);
impl ContainerError {
    /// Reason code.
    pub fn reason(&self) -> &'static str {
        shoal_protocol::reason::CONTAINER_FAILED
    }
}
/// Report.
#[derive(Debug, Default)]
pub struct ContainersReport {
    /// Statuses.
    pub statuses: Vec<ContainerStatus>,
}
/// Converges containers.
pub async fn converge(
    _docker: &Docker,
    _plan: &Plan,
    _node_id: &str,
) -> Result<ContainersReport, ContainerError> {
    Ok(ContainersReport::default())
}
