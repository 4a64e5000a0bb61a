//! The extension API: what a user's processor implements, and what it gets.
//!
//! A processor runs on a thread of its own (never on the async I/O thread),
//! one job at a time. It returns an [`Output`] — the result to store — or a
//! [`ProcessError`] that says whether to retry later or dead-letter the input.
//! A panic is caught: the processor is rebuilt from its factory, the job is
//! retried with backoff, and restarts past the pipeline's limit escalate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BlobStore;
use crate::error::{BackendError, ProcessError};
use crate::job::Job;

/// A user's processor.
///
/// ```
/// use ferry::prelude::*;
///
/// struct Upper;
///
/// impl Processor for Upper {
///     fn process(&mut self, job: &Job, _ctx: &Context) -> Result<Output, ProcessError> {
///         if job.body.is_empty() {
///             return Err(ProcessError::bad_input("empty body"));
///         }
///         Ok(Output::text(job.body.to_uppercase()))
///     }
/// }
/// ```
pub trait Processor: Send + 'static {
    /// Called on the processor's thread before its first job (and after
    /// each rebuild).
    fn started(&mut self, _info: &WorkerInfo) {}

    /// Processes one job.
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError>;

    /// Called on the processor's thread when the pipeline stops.
    fn stopping(&mut self) {}
}

/// Builds a processor; called once per worker thread and after each panic.
pub(crate) type ProcessorFactory = Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync>;

/// Which worker a processor runs on.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The pipeline's name.
    pub pipeline: String,
    /// The worker's index, from 0.
    pub index: usize,
}

/// A processor's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The result's bytes (stored when the pipeline has a result store, else
    /// published as the notification's body when it has a topic).
    pub body: Bytes,
    /// The result's content type.
    pub content_type: Option<String>,
}

impl Output {
    /// No result: the job is simply acknowledged.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Bytes of a content type.
    pub fn bytes(body: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            content_type: Some(content_type.into()),
        }
    }

    /// UTF-8 text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::bytes(text.into(), "text/plain; charset=utf-8")
    }

    /// A value as JSON.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, ProcessError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ProcessError::retry(format!("could not encode the result: {e}")))?;
        Ok(Self::bytes(body, "application/json"))
    }
}

/// What a processor may use while it runs.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) pipeline: Arc<str>,
    pub(crate) blobs: Option<Arc<dyn BlobStore>>,
    pub(crate) io: tokio::runtime::Handle,
    pub(crate) cancelled: Arc<AtomicBool>,
    pub(crate) max_fetch_bytes: usize,
    /// The buckets [`Context::fetch`] may read.
    pub(crate) readable: Arc<[String]>,
}

impl Context {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Whether the job's lease was lost or given up. A long processor may
    /// check it and return early; its result would be discarded anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Reads an object from the pipeline's blob store, blocking this worker
    /// thread while the I/O thread does the call.
    ///
    /// Only the pipeline's own buckets can be read: those named with
    /// [`Pipeline::reads_from`](crate::Pipeline::reads_from), its result
    /// bucket and its large-payload bucket. A name outside them, a name S3
    /// would refuse (or one with a `.` or `..` segment), a missing object and
    /// one over `max_fetch_bytes` are bad input — the size is learnt before
    /// the body is read, so a huge object is never held in memory. A
    /// transient failure is a retry.
    pub fn fetch(&self, bucket: &str, key: &str) -> Result<Bytes, ProcessError> {
        let shown = |s: &str| s.chars().take(200).collect::<String>();
        if let Some(why) = crate::backend::object_name_problem(bucket, key) {
            return Err(ProcessError::bad_input(format!(
                "will not read s3://{}/{}: {why}",
                shown(bucket),
                shown(key)
            )));
        }
        if !self.readable.iter().any(|b| b == bucket) {
            return Err(ProcessError::bad_input(format!(
                "s3://{bucket}/{} is outside the buckets pipeline `{}` reads ({})",
                shown(key),
                self.pipeline,
                if self.readable.is_empty() {
                    "none".to_owned()
                } else {
                    self.readable.join(", ")
                }
            )));
        }
        let blobs = self.blobs.clone().ok_or_else(|| {
            ProcessError::bad_input(format!(
                "pipeline `{}` has no blob store to read s3://{bucket}/{key}",
                self.pipeline
            ))
        })?;
        fetch_limited(&self.io, blobs, bucket, key, self.max_fetch_bytes)
    }
}

/// Reads at most `limit` bytes of an object from a worker thread, as bad
/// input when it is missing or larger, as a retry when the call failed.
pub(crate) fn fetch_limited(
    io: &tokio::runtime::Handle,
    blobs: Arc<dyn BlobStore>,
    bucket: &str,
    key: &str,
    limit: usize,
) -> Result<Bytes, ProcessError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (b, k) = (bucket.to_owned(), key.to_owned());
    io.spawn(async move {
        let _ = tx.send(blobs.get_limited(&b, &k, limit).await);
    });
    let got = rx
        .blocking_recv()
        .map_err(|_| ProcessError::retry("the runtime stopped during a fetch"))?;
    match got {
        Ok(bytes) => Ok(bytes),
        Err(BackendError::PayloadTooLarge { actual, limit }) => Err(ProcessError::bad_input(
            format!("s3://{bucket}/{key} is {actual} bytes, over the limit of {limit}"),
        )),
        Err(BackendError::NotFound { .. }) => Err(ProcessError::bad_input(format!(
            "missing object s3://{bucket}/{key}"
        ))),
        Err(e) if e.is_retryable() => Err(ProcessError::retry(format!(
            "reading s3://{bucket}/{key}: {e}"
        ))),
        Err(e) => Err(ProcessError::bad_input(format!(
            "reading s3://{bucket}/{key}: {e}"
        ))),
    }
}
