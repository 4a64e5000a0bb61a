//! Retrying a backend call that failed with a retryable error, waiting a
//! doubling backoff between tries.

use std::future::Future;
use std::time::Duration;

use crate::error::BackendError;

/// Runs `call` up to `attempts` times while it fails with a retryable error,
/// waiting a doubling backoff from 20 ms between tries.
pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, mut call: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut delay = Duration::from_millis(20);
    let mut n = 1;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::debug!(error = %e, attempt = n, "retrying backend call");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                n += 1;
            }
            other => return other,
        }
    }
}
