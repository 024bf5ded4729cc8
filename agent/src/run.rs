//! The boot sequence and the resident loop.

/// Exit codes of `shoal-agent run`, documented in docs/agent-exit-codes.md.
pub mod exit {
    /// Clean stop (SIGTERM).
    pub const OK: i32 = 0;
    /// Bad command line, or the configuration file is missing or invalid.
    pub const CONFIG: i32 = 2;
    /// The coordinator could not be reached (or kept failing) until the deadline.
    pub const UNREACHABLE: i32 = 3;
    /// The coordinator refused the agent (unknown cluster key: 404; bad node token: 401/403).
    pub const REFUSED: i32 = 4;
    /// The plan failed validation, or does not list this node; nothing was changed.
    pub const PLAN_INVALID: i32 = 5;
    /// The Docker engine could not be reached.
    pub const DOCKER: i32 = 6;
    /// Converging the node failed (network, images or containers); reported to the
    /// coordinator with its reason code.
    pub const CONVERGE: i32 = 7;
}
