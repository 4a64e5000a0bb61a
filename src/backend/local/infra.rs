//! Faults of the services themselves, for the embedded backend: throttling
//! and expired credentials, at a rate or over a window of time, answered as
//! the AWS backend classifies the real ones.

use std::time::Duration;

use super::op::Op;
use crate::error::BackendError;

/// A span of time, counted from when the faults it belongs to were set
/// ([`super::LocalBackend::set_infra_faults`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// When it opens.
    pub start: Duration,
    /// How long it lasts.
    pub length: Duration,
}

impl Window {
    /// A window from `start` for `length`.
    pub fn new(start: Duration, length: Duration) -> Self {
        Self { start, length }
    }

    fn contains(&self, elapsed: Duration) -> bool {
        elapsed >= self.start && elapsed - self.start < self.length
    }
}

/// Faults of the services themselves rather than of one call's luck:
/// throttling and expired credentials, at a rate or for every call in a
/// window, aimed at chosen operations. Set with
/// [`super::LocalBackend::set_infra_faults`]; rates draw from the backend's
/// seeded generator ([`Faults::seed`](super::Faults::seed)), windows count from when they were
/// set. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InfraFaults {
    /// Chance that a call is throttled: it fails with
    /// [`BackendError::Throttled`], what the AWS backend makes of S3's
    /// `SlowDown`, SQS's `RequestThrottled`, SNS's `Throttling` and
    /// DynamoDB's `ProvisionedThroughputExceededException`.
    pub throttle_rate: f64,
    /// A burst: every call in this window is throttled.
    pub throttle_window: Option<Window>,
    /// Chance that a call fails because the temporary credentials it was
    /// signed with have expired: [`BackendError::expired_credentials`],
    /// what the AWS backend makes of `ExpiredToken`.
    pub expired_credentials_rate: f64,
    /// A lapsed rotation: every call in this window fails with expired
    /// credentials.
    pub expired_credentials_window: Option<Window>,
    /// The operations these faults hit; empty: every one.
    pub ops: Vec<Op>,
}

impl InfraFaults {
    pub(super) fn is_quiet(&self) -> bool {
        self.throttle_rate <= 0.0
            && self.throttle_window.is_none()
            && self.expired_credentials_rate <= 0.0
            && self.expired_credentials_window.is_none()
    }

    /// Whether these faults hit `op`.
    pub(super) fn hits(&self, op: Op) -> bool {
        self.ops.is_empty() || self.ops.contains(&op)
    }

    /// The answer of a call of `op` on `resource`, `elapsed` after these
    /// faults were set; `roll` draws from the backend's generator.
    pub(super) fn check(
        &self,
        op: Op,
        resource: &str,
        elapsed: Duration,
        mut roll: impl FnMut(f64) -> bool,
    ) -> Result<(), BackendError> {
        let within = |w: Option<Window>| w.is_some_and(|w| w.contains(elapsed));
        if within(self.expired_credentials_window) || roll(self.expired_credentials_rate) {
            return Err(BackendError::expired_credentials(format!(
                "{resource} (ExpiredToken: injected: the security token included in the \
                 request is expired; {op:?})"
            )));
        }
        if within(self.throttle_window) || roll(self.throttle_rate) {
            return Err(BackendError::throttled(format!(
                "{resource}: {}: injected throttling of {op:?}",
                throttle_code(op)
            )));
        }
        Ok(())
    }
}

/// The code the service of `op` throttles with.
fn throttle_code(op: Op) -> &'static str {
    match op.service() {
        "s3" => "SlowDown",
        "sns" => "Throttling",
        "store" => "ProvisionedThroughputExceededException",
        _ => "RequestThrottled",
    }
}
