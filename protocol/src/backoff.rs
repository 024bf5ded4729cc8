//! Capped exponential backoff with full jitter, shared by the agent and the
//! coordinator's providers. Pure arithmetic: the callers sleep and draw the randomness.

use std::time::Duration;

/// A retry schedule: delays grow from `initial` by doubling up to `cap`; each actual
/// delay is drawn uniformly from `[cap_n / 2, cap_n]` ("equal jitter"), so retries from
/// many VMs spread out while none retries in a hot loop. `deadline` bounds the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay's ceiling.
    pub initial: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// Overall time budget of the operation, first attempt included.
    pub deadline: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry), given a random
    /// fraction in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.cap)
            .max(Duration::from_millis(1));
        let random = random.clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + random / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(5));
        assert!(b.delay(30, 0.0) >= Duration::from_millis(2500));
    }
}
