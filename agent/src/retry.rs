//! Retrying, in one place: the agent's schedules and the one loop that runs them.
//!
//! [`run`] tries an operation until it succeeds, fails for good, reaches its last
//! allowed attempt, or reaches its deadline. The operation says what each failure calls
//! for ([`Attempt`]): for HTTP only connection errors, 429 and 5xx are worth another try
//! (the client decides). Delays grow by capped exponential backoff with jitter
//! (`shoal_protocol::backoff`), never shorter than a server's `Retry-After`. The
//! deadline bounds the whole: no sleep runs past it, and an attempt still in flight when
//! it comes is dropped, so a slow or silent server cannot carry the caller past it.
//! Each attempt runs in a `retry` tracing span carrying `what` and the attempt number.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use shoal_protocol::backoff::Backoff;
use tracing::Instrument;

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

/// The longest `Retry-After` honoured: a server asking for more is waited for this long
/// (the coordinator's own rate limiter asks for a second or two).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The delay before retry `attempt` of `b`, with fresh jitter.
pub fn delay(b: &Backoff, attempt: u32) -> Duration {
    b.delay(attempt, rand::random::<f64>())
}

/// How a failed attempt ended.
#[derive(Debug)]
pub enum Attempt<E> {
    /// Worth another try; `after` is the server's `Retry-After`, when it sent one.
    Retry {
        /// What went wrong.
        error: E,
        /// The least the server asked to wait.
        after: Option<Duration>,
    },
    /// Final: another try would fail the same way.
    Fail(E),
}

impl<E> Attempt<E> {
    /// A retryable failure without a server-given delay.
    pub fn retry(error: E) -> Attempt<E> {
        Attempt::Retry { error, after: None }
    }
}

/// Why [`run`] gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// An attempt failed for good.
    Failed(E),
    /// Only retryable failures, until the last allowed attempt or until the next one
    /// could not start before the deadline.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last one's failure.
        last: E,
    },
    /// The deadline came while attempt `attempt` was still in flight.
    Deadline {
        /// The attempt that was cut short.
        attempt: u32,
    },
}

impl<E: fmt::Display> fmt::Display for GaveUp<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GaveUp::Failed(e) => e.fmt(f),
            GaveUp::Exhausted { attempts: 1, last } => last.fmt(f),
            GaveUp::Exhausted { attempts, last } => {
                write!(f, "{last} (gave up after {attempts} attempts)")
            }
            GaveUp::Deadline { attempt } => write!(
                f,
                "no complete answer before the deadline (attempt {attempt} was still in flight)"
            ),
        }
    }
}

/// What to retry, how often and until when.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// What is being done, for the logs.
    pub what: &'a str,
    /// The schedule of delays (its `deadline` field is read only by [`Policy::new`]).
    pub backoff: Backoff,
    /// When to give up; `None`: never.
    pub until: Option<Instant>,
    /// Most attempts, the first included.
    pub max_attempts: u32,
}

impl<'a> Policy<'a> {
    /// Unlimited attempts until `backoff.deadline` from now (never, when it does not
    /// fit in an [`Instant`], as `Duration::MAX` does not).
    pub fn new(what: &'a str, backoff: Backoff) -> Policy<'a> {
        Policy {
            what,
            backoff,
            until: Instant::now().checked_add(backoff.deadline),
            max_attempts: u32::MAX,
        }
    }

    /// The delay before retry `attempt`: the jittered backoff, or the server's
    /// `Retry-After` (at most [`MAX_RETRY_AFTER`]) when that is longer.
    fn pause(&self, attempt: u32, after: Option<Duration>) -> Duration {
        let backoff = delay(&self.backoff, attempt);
        after.map_or(backoff, |a| a.min(MAX_RETRY_AFTER).max(backoff))
    }
}

/// Runs `op` under `policy` and returns its first success, or why it gave up.
pub async fn run<T, E, F, Fut>(policy: &Policy<'_>, mut op: F) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
    E: fmt::Display,
{
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let span = tracing::info_span!("retry", what = %policy.what, attempt);
        let fut = op().instrument(span.clone());
        let outcome = match policy.until {
            Some(until) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(until), fut).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        span.in_scope(|| {
                            tracing::warn!("the deadline came with this attempt in flight")
                        });
                        return Err(GaveUp::Deadline { attempt });
                    }
                }
            }
            None => fut.await,
        };
        let (error, after) = match outcome {
            Ok(v) => return Ok(v),
            Err(Attempt::Fail(e)) => return Err(GaveUp::Failed(e)),
            Err(Attempt::Retry { error, after }) => (error, after),
        };
        let pause = policy.pause(attempt, after);
        let past_deadline = policy.until.is_some_and(|until| {
            Instant::now()
                .checked_add(pause)
                .is_none_or(|next| next > until)
        });
        if attempt >= policy.max_attempts || past_deadline {
            return Err(GaveUp::Exhausted {
                attempts: attempt,
                last: error,
            });
        }
        span.in_scope(
            || tracing::info!(delay_ms = pause.as_millis() as u64, error = %error, "retrying"),
        );
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(until: Duration) -> Policy<'static> {
        Policy::new(
            "test",
            Backoff {
                initial: Duration::from_millis(1),
                cap: Duration::from_millis(2),
                deadline: until,
            },
        )
    }

    #[tokio::test]
    async fn retries_until_success_and_fails_at_once_on_final_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, GaveUp<String>> = run(&fast(Duration::from_secs(5)), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                n @ 0..=1 => Err(Attempt::retry(format!("503 #{n}"))),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r.ok(), Some(2));
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = run(&fast(Duration::from_secs(5)), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Attempt::Fail("404"))
        })
        .await;
        assert!(matches!(r, Err(GaveUp::Failed("404"))), "{r:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_at_the_attempt_limit() {
        let calls = AtomicU32::new(0);
        let policy = Policy {
            max_attempts: 3,
            ..fast(Duration::from_secs(5))
        };
        let r: Result<(), _> = run(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Attempt::retry("500"))
        })
        .await;
        assert!(
            matches!(
                r,
                Err(GaveUp::Exhausted {
                    attempts: 3,
                    last: "500"
                })
            ),
            "{r:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_attempt_in_flight_is_cut_at_the_deadline() {
        let start = Instant::now();
        let r: Result<(), GaveUp<String>> = run(&fast(Duration::from_millis(200)), || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(GaveUp::Deadline { attempt: 1 })), "{r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_retry_after_past_the_deadline_gives_up_without_waiting() {
        let start = Instant::now();
        let r: Result<(), _> = run(&fast(Duration::from_secs(3)), || async {
            Err(Attempt::Retry {
                error: "429",
                after: Some(Duration::from_secs(30)),
            })
        })
        .await;
        assert!(
            matches!(r, Err(GaveUp::Exhausted { attempts: 1, .. })),
            "{r:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn retry_after_is_a_floor_with_a_ceiling() {
        let p = fast(Duration::MAX);
        assert_eq!(p.until, None);
        assert_eq!(
            p.pause(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.pause(1, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
        assert!(p.pause(1, Some(Duration::ZERO)) >= Duration::from_micros(500));
        assert!(p.pause(1, None) <= Duration::from_millis(1));
    }
}
