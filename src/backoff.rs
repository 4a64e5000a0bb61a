//! The one backoff policy every retry loop uses: a doubling wait from a
//! base, capped, with jitter where many callers could retry in step (half
//! the wait fixed, half drawn), and [`with_retries`], which retries a
//! backend call that failed with a retryable error.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::BackendError;

/// A doubling backoff: `base · 2^(n-1)` before the nth retry, at most
/// `max`; jittered ones wait between half of that and all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Exact waits: for waits a caller or a test relies on to the
    /// millisecond (a failed job's visibility, an actor's restart).
    pub(crate) const fn exact(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: false,
        }
    }

    /// Jittered waits, so callers that failed together do not retry
    /// together.
    pub(crate) const fn jittered(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: true,
        }
    }

    /// The wait before the `n`th retry (`n` from 1).
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        if self.jitter && !full.is_zero() {
            full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
        } else {
            full
        }
    }
}

/// The backoff of quick retries of one backend call: from 20 ms, at most
/// 2 s, jittered.
pub(crate) const CALL_RETRIES: Backoff =
    Backoff::jittered(Duration::from_millis(20), Duration::from_secs(2));

/// Runs `call` up to `attempts` times while it fails with a retryable error,
/// waiting [`CALL_RETRIES`] between tries.
pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, mut call: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut n = 1;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::debug!(error = %e, attempt = n, "retrying backend call");
                tokio::time::sleep(CALL_RETRIES.delay(n)).await;
                n += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_doubles_to_its_cap() {
        let b = Backoff::exact(Duration::from_millis(10), Duration::from_millis(70));
        let waits: Vec<u64> = (1..=5).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 70, 70]);
        assert_eq!(b.delay(0), Duration::from_millis(10));
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(70));
    }

    #[test]
    fn jittered_stays_between_half_and_all_and_varies() {
        let b = Backoff::jittered(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..200).map(|_| b.delay(3)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(200) && *w <= Duration::from_millis(400)));
        assert!(waits.iter().any(|w| *w != waits[0]), "no jitter");
    }
}
