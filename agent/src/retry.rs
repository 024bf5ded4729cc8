//! The agent's retry schedules (the arithmetic is `shoal_protocol::backoff`).

use std::time::Duration;

use shoal_protocol::backoff::Backoff;

/// Reaching the coordinator: 250 ms doubling to 10 s. The deadline comes from the
/// configuration (`deadline_secs`), so this one is only a default.
pub const COORDINATOR: Backoff = Backoff {
    initial: Duration::from_millis(250),
    cap: Duration::from_secs(10),
    deadline: Duration::from_secs(900),
};

/// Reaching Docker at boot (dockerd may start after the agent): 100 ms to 2 s, 2 min.
pub const DOCKER: Backoff = Backoff {
    initial: Duration::from_millis(100),
    cap: Duration::from_secs(2),
    deadline: Duration::from_secs(120),
};

/// Re-trying a failed convergence in resident mode: 1 s to 60 s, no end.
pub const RECONVERGE: Backoff = Backoff {
    initial: Duration::from_secs(1),
    cap: Duration::from_secs(60),
    deadline: Duration::MAX,
};

/// The delay before retry `attempt` of `b`, with fresh jitter.
pub fn delay(b: &Backoff, attempt: u32) -> Duration {
    b.delay(attempt, rand::random::<f64>())
}
