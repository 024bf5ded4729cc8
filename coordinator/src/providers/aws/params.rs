//! What the operator's [`ProviderParams`] say to this provider: the `--set` keys it
//! reads, the defaults it falls back to, and the error that names a bad setting.

use crate::providers::{ProviderError, ProviderParams};

/// The VPC range used when `--set vpc-cidr=` is not given.
pub const DEFAULT_VPC_CIDR: &str = "10.77.0.0/16";
/// The instance type used when `--instance-type` is not given.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

/// A configuration error of this provider.
pub(super) fn config(message: String) -> ProviderError {
    ProviderError::Config {
        provider: "aws",
        message,
    }
}

/// The value of `--set key=…`, trimmed; `None` when absent or blank.
pub(super) fn extra<'a>(params: &'a ProviderParams, key: &str) -> Option<&'a str> {
    params
        .extra
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}
