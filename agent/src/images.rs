//! Placeholder until the images change lands (same signatures).
use bollard::Docker;
use shoal_protocol::RegistryAuth;
use std::path::Path;

/// Image failure.
#[derive(Debug, thiserror::Error)]
#[error("images: {0}")]
pub struct ImageError(String);
impl ImageError {
    /// Reason code.
    pub fn reason(&self) -> &'static str {
        shoal_protocol::reason::IMAGE_FAILED
    }
}
/// Report.
#[derive(Debug, Default)]
pub struct ImageReport {
    /// Loaded from tarballs.
    pub loaded: Vec<String>,
}
/// Ensures images are present.
pub async fn ensure(
    _docker: &Docker,
    _images: &[(String, Option<RegistryAuth>)],
    _image_dir: &Path,
) -> Result<ImageReport, ImageError> {
    Ok(ImageReport::default())
}
