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

/// Reaching Docker at boot (dockerd may start after the agent): 50 ms to 250 ms, 2 min.
/// A refused connection to a local socket costs microseconds, and dockerd is usually
/// up within a second or two of boot: polling it often saves up to a whole backoff step
/// (bench/run measured the agent noticing dockerd ~100 ms late with a 2 s cap).
pub const DOCKER: Backoff = Backoff {
    initial: Duration::from_millis(50),
    cap: Duration::from_millis(250),
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
