//! The engine's failures, as the operator API shows them.

use super::planner::PlannerError;
use crate::blueprint::BlueprintError;
use crate::providers::ProviderError;
use crate::store::StoreError;
use crate::userdata::UserDataError;

/// An engine failure, shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad request.
    #[error("{0}")]
    BadRequest(String),
    /// No such cluster.
    #[error("no cluster named {0:?}")]
    NotFound(String),
    /// The cluster's state does not allow what was asked (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but asks for what the cluster or its blueprint does
    /// not allow (HTTP 422), with a stable code: `out-of-bounds`, `unknown-group`,
    /// `unknown-node`, `nothing-to-repair`, `unsupported`.
    #[error("{message}")]
    Unprocessable {
        /// The stable code.
        code: &'static str,
        /// What, for a person.
        message: String,
    },
    /// The provider is not usable here.
    #[error("provider {name} is not available: {why}")]
    ProviderUnavailable {
        /// Provider.
        name: String,
        /// Why.
        why: String,
    },
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Provider.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// User-data.
    #[error(transparent)]
    UserData(#[from] UserDataError),
    /// Blueprint.
    #[error(transparent)]
    Blueprint(#[from] BlueprintError),
    /// Planning.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// Timed out.
    #[error("{0}")]
    Timeout(String),
}
