//! Which of a pipeline's dependencies are failing now — each queue, topic,
//! bucket and store by the resource its calls name, and the processor's own
//! dependencies — since when, and how long the pipeline waits while any of
//! them does: its next receive, and the job that met the failure (DESIGN
//! rule 7). A failure of the infrastructure charges no job an attempt; the
//! pipeline as a whole slows down instead, with jitter, and resumes as
//! calls succeed again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::BackendError;

/// The name the processor's own dependencies go by.
pub(crate) const PROCESSOR: &str = "the processor's dependencies";

/// A dependency failing now, as `health()` reports it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DegradedDependency {
    /// The queue, topic, bucket or store (as its calls name it), or the
    /// processor's dependencies.
    pub name: String,
    /// When it began failing.
    pub since: SystemTime,
    /// Failures in a row since.
    pub failures: u32,
    /// The last failure.
    pub last_error: String,
}

/// Whether a failed call says a dependency is degraded (as opposed to
/// refusing one request: a missing object, an oversized body).
pub(crate) fn degrades(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::Throttled { .. }
            | BackendError::Transient { .. }
            | BackendError::ExpiredCredentials { .. }
            | BackendError::AccessDenied { .. }
    )
}

/// The failing dependencies of one pipeline.
#[derive(Debug)]
pub(crate) struct Dependencies {
    failing: Mutex<HashMap<String, DegradedDependency>>,
    /// How many are failing: the hot path's check.
    count: AtomicUsize,
    base: Duration,
    max: Duration,
}

impl Dependencies {
    /// Waits start at `base` and double per failure in a row, up to `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            failing: Mutex::default(),
            count: AtomicUsize::new(0),
            base: base.max(Duration::from_millis(1)),
            max: max.max(base),
        }
    }

    /// A call to `name` failed with `error`.
    pub(crate) fn failed(&self, name: &str, error: &str) {
        let mut map = self.failing.lock().expect("dependencies lock");
        let d = map.entry(name.to_owned()).or_insert_with(|| {
            self.count.fetch_add(1, Ordering::AcqRel);
            DegradedDependency {
                name: name.to_owned(),
                since: SystemTime::now(),
                failures: 0,
                last_error: String::new(),
            }
        });
        d.failures = d.failures.saturating_add(1);
        d.last_error = error.chars().take(512).collect();
    }

    /// A call to `name` succeeded: it is no longer failing.
    pub(crate) fn succeeded(&self, name: &str) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.failing.lock().expect("dependencies lock");
        if map.remove(name).is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether any dependency is failing.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// How long to wait now: nothing while every dependency works, else a
    /// doubling wait by the longest run of failures, jittered to ±50 %.
    pub(crate) fn pause(&self) -> Option<Duration> {
        if !self.any() {
            return None;
        }
        let worst = {
            let map = self.failing.lock().expect("dependencies lock");
            map.values().map(|d| d.failures).max()?
        };
        Some(self.wait_after(worst))
    }

    /// The jittered wait after `failures` in a row.
    pub(crate) fn wait_after(&self, failures: u32) -> Duration {
        crate::backoff::Backoff::jittered(self.base, self.max).delay(failures)
    }

    /// The failing dependencies, longest failing first.
    pub(crate) fn degraded(&self) -> Vec<DegradedDependency> {
        let map = self.failing.lock().expect("dependencies lock");
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by_key(|d| d.since);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_until_a_call_succeeds() {
        let d = Dependencies::new(Duration::from_millis(100), Duration::from_secs(2));
        assert!(d.pause().is_none());
        d.succeeded("bucket results");
        d.failed("bucket results", "throttled: SlowDown");
        d.failed("bucket results", "throttled: SlowDown");
        d.failed("queue jobs", "transient failure: 503");
        let now = d.degraded();
        assert_eq!(now.len(), 2);
        assert_eq!(now[0].name, "bucket results");
        assert_eq!(now[0].failures, 2);
        assert_eq!(now[0].last_error, "throttled: SlowDown");
        let p = d.pause().expect("degraded");
        assert!(
            p >= Duration::from_millis(100) && p <= Duration::from_millis(300),
            "{p:?}"
        );
        d.succeeded("bucket results");
        assert_eq!(d.degraded().len(), 1);
        d.succeeded("queue jobs");
        assert!(d.pause().is_none());
        assert!(!d.any());
    }

    #[test]
    fn waits_double_up_to_the_most_with_jitter() {
        let d = Dependencies::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            let w = d.wait_after(1);
            assert!(w >= Duration::from_millis(50) && w <= Duration::from_millis(150));
            let w = d.wait_after(3);
            assert!(w >= Duration::from_millis(200) && w <= Duration::from_millis(600));
            let w = d.wait_after(40);
            assert!(w >= Duration::from_millis(500) && w <= Duration::from_millis(1500));
        }
    }

    #[test]
    fn only_infrastructure_failures_degrade() {
        assert!(degrades(&BackendError::throttled("SlowDown")));
        assert!(degrades(&BackendError::expired_credentials("ExpiredToken")));
        assert!(degrades(&BackendError::transient("timed out")));
        assert!(!degrades(&BackendError::not_found("s3://b/k")));
        assert!(!degrades(&BackendError::ReceiptInvalid));
    }
}
