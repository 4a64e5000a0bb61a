//! Errors: what a backend call, a processor and the runtime can report.
//!
//! The retry decision lives in the error type: [`BackendError::is_retryable`]
//! tells the actors whether to try a call again, and a processor's
//! [`ProcessError`] says whether its job failed (and should come back
//! later, charged an attempt), can never succeed (the dead-letter queue), or
//! met an unavailable dependency (back later, charged nothing).

use std::time::Duration;

/// A failed backend call, classified once so every actor decides alike.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The service asked us to slow down.
    #[error("throttled: {message}")]
    Throttled {
        /// What the service said.
        message: String,
    },
    /// A timeout, a connection failure, a 5xx: worth trying again.
    #[error("transient failure: {message}")]
    Transient {
        /// What failed.
        message: String,
    },
    /// The receipt handle is stale or the message is no longer in flight:
    /// the lease is lost.
    #[error("receipt handle is no longer valid")]
    ReceiptInvalid,
    /// The queue, topic, bucket or object does not exist.
    #[error("{resource} not found")]
    NotFound {
        /// Which resource.
        resource: String,
    },
    /// The credentials may not touch the resource.
    #[error("access denied to {resource}")]
    AccessDenied {
        /// Which resource.
        resource: String,
    },
    /// A body over the service's limit.
    #[error("payload too large: {actual} bytes, limit {limit}")]
    PayloadTooLarge {
        /// The body's size.
        actual: usize,
        /// The limit.
        limit: usize,
    },
    /// A request the service refused as malformed.
    #[error("invalid request: {message}")]
    Invalid {
        /// What the service said.
        message: String,
    },
    /// The temporary credentials the call was signed with have expired: the
    /// next call, with refreshed credentials, may succeed.
    #[error("expired credentials: {detail}")]
    ExpiredCredentials {
        /// The resource, and the service's code and words.
        detail: String,
    },
}

impl BackendError {
    /// A transient failure with this message.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
        }
    }

    /// A missing resource.
    pub fn not_found(resource: impl Into<String>) -> Self {
        Self::NotFound {
            resource: resource.into(),
        }
    }

    /// The service asked to slow down (S3's `SlowDown`, SQS's
    /// `RequestThrottled`, …); `message` names the call and the code.
    pub fn throttled(message: impl Into<String>) -> Self {
        Self::Throttled {
            message: message.into(),
        }
    }

    /// The temporary credentials a call was signed with have expired (AWS's
    /// `ExpiredToken`, as at every rotation); `detail` names the resource
    /// and the service's code and words. The AWS backend's classifier and
    /// the embedded backend's injected credential faults both build it
    /// here, so they answer alike.
    pub fn expired_credentials(detail: impl Into<String>) -> Self {
        Self::ExpiredCredentials {
            detail: detail.into(),
        }
    }

    /// Whether the same call may succeed if tried again after a pause.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Transient { .. } | Self::ExpiredCredentials { .. }
        )
    }

    /// Whether the failure is the infrastructure's, not anything a message
    /// named or carried: throttling, a transient failure, expired
    /// credentials, a denial of the pipeline's own resource, a request or
    /// answer the service could not parse. A job that meets one is not
    /// charged an attempt; the pipeline waits and tries again.
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. }
                | Self::Transient { .. }
                | Self::ExpiredCredentials { .. }
                | Self::AccessDenied { .. }
                | Self::Invalid { .. }
        )
    }
}

/// What a processor returns when it cannot produce a result.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// Try the job again later: its visibility is set to a backoff that grows
    /// with the receive count, and after the pipeline's maximum receive count
    /// it goes to the dead-letter queue.
    #[error("retry later: {reason}")]
    Retry {
        /// Why.
        reason: String,
        /// A delay to use instead of the pipeline's backoff.
        after: Option<Duration>,
    },
    /// The input can never succeed: the message goes to the dead-letter queue
    /// with this reason, then is deleted.
    #[error("bad input: {reason}")]
    BadInput {
        /// Why, as the dead-letter entry will say.
        reason: String,
    },
    /// Something the job needs is unavailable (a dependency throttling or
    /// down, credentials refreshing): not the job's fault. The job comes
    /// back later without using up an attempt, however often this
    /// happens, and the pipeline slows its receives while it lasts
    /// (`health()` names the dependency).
    #[error("unavailable: {reason}")]
    Unavailable {
        /// What is unavailable.
        reason: String,
        /// A delay to use instead of the pipeline's own.
        after: Option<Duration>,
    },
}

impl ProcessError {
    /// Retry later with the pipeline's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    /// Retry after this delay.
    pub fn retry_after(reason: impl Into<String>, after: Duration) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: Some(after),
        }
    }

    /// Bad input: dead-letter with this reason.
    pub fn bad_input(reason: impl Into<String>) -> Self {
        Self::BadInput {
            reason: reason.into(),
        }
    }

    /// A dependency is unavailable: try again later, charging the job
    /// nothing.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            after: None,
        }
    }

    /// The reason text.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. }
            | Self::BadInput { reason }
            | Self::Unavailable { reason, .. } => reason,
        }
    }

    /// A failed backend call as the job's outcome: an object the job named
    /// that is missing or too large is bad input; every other failure is
    /// the infrastructure's ([`BackendError::is_infrastructure`], a stale
    /// receipt too), never the job's.
    pub fn from_backend(context: &str, e: BackendError) -> Self {
        match e {
            BackendError::NotFound { .. } | BackendError::PayloadTooLarge { .. } => {
                Self::bad_input(format!("{context}: {e}"))
            }
            e => Self::unavailable(format!("{context}: {e}")),
        }
    }
}

/// Says whose fault an error is, so `?` works in a processor: the error
/// (with its chain of sources, `a: b: c`) becomes the reason of a
/// [`ProcessError`] of the kind named. Any error converts (`std` errors,
/// `anyhow::Error`, a `String`); the choice of kind stays explicit, since
/// only what the job itself did may send it to the dead-letter queue.
///
/// ```
/// use ferry::prelude::*;
///
/// fn process(job: &Job) -> Result<Output, ProcessError> {
///     let n: u32 = job.body.trim().parse().or_bad_input()?; // the job's fault
///     let path = format!("/tmp/ferry-doc-{n}");
///     std::fs::write(&path, job.body.as_bytes()).or_retry()?; // try again later
///     Ok(Output::text(path))
/// }
/// ```
pub trait ResultExt<T> {
    /// The input can never succeed: [`ProcessError::BadInput`].
    fn or_bad_input(self) -> Result<T, ProcessError>;
    /// Try again later, counting an attempt: [`ProcessError::Retry`].
    fn or_retry(self) -> Result<T, ProcessError>;
    /// A dependency is unavailable, not the job's fault:
    /// [`ProcessError::Unavailable`].
    fn or_unavailable(self) -> Result<T, ProcessError>;
}

impl<T, E> ResultExt<T> for Result<T, E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn or_bad_input(self) -> Result<T, ProcessError> {
        self.map_err(|e| ProcessError::bad_input(chain(e.into())))
    }

    fn or_retry(self) -> Result<T, ProcessError> {
        self.map_err(|e| ProcessError::retry(chain(e.into())))
    }

    fn or_unavailable(self) -> Result<T, ProcessError> {
        self.map_err(|e| ProcessError::unavailable(chain(e.into())))
    }
}

/// An error and its sources, `a: b: c`.
fn chain(e: Box<dyn std::error::Error + Send + Sync>) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Starting or running the runtime failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FerryError {
    /// A pipeline's configuration is incomplete or contradictory.
    #[error("pipeline `{pipeline}`: {message}")]
    Config {
        /// The pipeline's name.
        pipeline: String,
        /// What is wrong.
        message: String,
    },
    /// A backend call at start-up failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The runtime thread could not start or died.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A pipeline escalated: restarts kept coming with no job succeeding,
    /// so its worker looks broken.
    #[error("pipeline `{pipeline}` escalated: {reason}")]
    Escalated {
        /// The pipeline's name.
        pipeline: String,
        /// Why.
        reason: String,
    },
}
