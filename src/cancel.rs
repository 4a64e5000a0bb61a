//! A job's cancellation as its code sees it: a flag to poll and a signal to
//! await. The lease table owns the flags and cancels them; a job's context
//! only reads them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A lease's cancel flag with the signal that wakes its waiters.
#[derive(Debug, Clone)]
pub(crate) struct CancelHandle {
    pub(crate) flag: Arc<AtomicBool>,
    pub(crate) signal: Arc<tokio::sync::Notify>,
}

impl CancelHandle {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub(crate) async fn cancelled(&self) {
        cancelled(&self.flag, &self.signal).await
    }
}

/// Waits for `flag`, woken by `signal` (shared by a table's leases).
async fn cancelled(flag: &AtomicBool, signal: &tokio::sync::Notify) {
    loop {
        let woken = signal.notified();
        tokio::pin!(woken);
        // Registered before the flag is read: a cancel in between wakes it.
        woken.as_mut().enable();
        if flag.load(Ordering::Acquire) {
            return;
        }
        woken.await;
    }
}
