//! The CLI's failures and their exit codes (docs/cli-exit-codes.md). Every message
//! says what to do next; the code says what kind of failure it was, so scripts can
//! tell "the coordinator said no" from "there is no coordinator".

/// Exit codes of `shoal`.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// What was asked did not happen: a cluster FAILED under `--wait`, a deletion
    /// failed, `doctor` found a problem that stops a run, `serve` could not start.
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap's own errors too).
    pub const USAGE: u8 = 2;
    /// No coordinator to talk to: none running for this state directory, nothing
    /// answering at its address, or its CA certificate missing.
    pub const NO_COORDINATOR: u8 = 3;
    /// The coordinator refused the request (HTTP 4xx): bad input, an unknown cluster,
    /// a name taken, a provider not available.
    pub const REFUSED: u8 = 4;
    /// The operator token is missing, unreadable or wrong.
    pub const UNAUTHORIZED: u8 = 5;
    /// The coordinator failed (HTTP 5xx) or answered something that is not Shoal's.
    pub const COORDINATOR: u8 = 6;
    /// A local file could not be read or written, or a local operation failed.
    pub const LOCAL: u8 = 7;
}

/// A CLI failure: printed as `shoal: <message>`, exiting with [`CliError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong in a way clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// No coordinator to talk to.
    #[error("{0}")]
    NoCoordinator(String),
    /// The coordinator refused the request.
    #[error("{message} (HTTP {status}){hint}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The coordinator's message.
        message: String,
        /// What to do next (starts with ": ", or empty).
        hint: String,
    },
    /// The operator token is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The coordinator failed, or did not answer as Shoal does.
    #[error("{0}")]
    Coordinator(String),
    /// A local file or operation failed.
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::NoCoordinator(_) => exit::NO_COORDINATOR,
            CliError::Refused { .. } => exit::REFUSED,
            CliError::Unauthorized(_) => exit::UNAUTHORIZED,
            CliError::Coordinator(_) => exit::COORDINATOR,
            CliError::Local(_) => exit::LOCAL,
        }
    }
}

/// Pretty JSON for `--json`.
pub fn to_json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|e| CliError::Local(format!("printing JSON: {e}")))
}
