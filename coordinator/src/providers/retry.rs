//! Retrying cloud calls: only what is worth retrying (connection errors, throttling,
//! 5xx), with capped, jittered backoff under an overall deadline. One place, so every
//! provider retries alike.

use std::future::Future;
use std::time::{Duration, Instant};

use shoal_protocol::backoff::Backoff;

/// What a failed attempt calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again; `after` is the server's `Retry-After`, when it gave one.
    Retry {
        /// Server-requested delay.
        after: Option<Duration>,
    },
    /// Fail now (auth errors, bad requests, quota).
    Fail,
}

/// The default schedule for cloud API calls: 200 ms doubling to 10 s, 3 minutes in all.
pub const CLOUD_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    cap: Duration::from_secs(10),
    deadline: Duration::from_secs(180),
};

/// The `Retry-After` delay of an answer, in seconds (the form ARM and Entra ID use; an
/// HTTP date is not understood, and the caller then falls back to its own schedule).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Runs `op` until it succeeds, fails for good, or the deadline passes; then returns
/// the last error. `classify` says which errors are retryable.
pub async fn retry<T, E, F, Fut>(
    backoff: &Backoff,
    what: &str,
    classify: impl Fn(&E) -> Verdict,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let after = match classify(&err) {
            Verdict::Fail => return Err(err),
            Verdict::Retry { after } => after,
        };
        let delay = after.unwrap_or_else(|| backoff.delay(attempt, rand::random::<f64>()));
        if start.elapsed() + delay > backoff.deadline {
            tracing::warn!(%what, attempt, "giving up: the retry deadline has passed");
            return Err(err);
        }
        tracing::info!(%what, attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            deadline: Duration::from_secs(5),
        }
    }

    #[test]
    fn retry_after_reads_delay_seconds_only() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        // An HTTP date leaves the delay to the caller's own schedule.
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn retries_retryable_errors_until_success() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, String> = retry(
            &fast(),
            "t",
            |_| Verdict::Retry { after: None },
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    Err("503".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn fails_at_once_on_final_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<(), String> = retry(
            &fast(),
            "t",
            |_| Verdict::Fail,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("AuthFailure".to_string())
            },
        )
        .await;
        assert_eq!(r, Err("AuthFailure".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_at_the_deadline() {
        let b = Backoff {
            initial: Duration::from_millis(20),
            cap: Duration::from_millis(20),
            deadline: Duration::from_millis(100),
        };
        let start = Instant::now();
        let r: Result<(), String> = retry(
            &b,
            "t",
            |_| Verdict::Retry { after: None },
            || async { Err("500".to_string()) },
        )
        .await;
        assert!(r.is_err());
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
