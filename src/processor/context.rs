//! What a processor may use while it runs: its pipeline's name, reads of
//! the objects it may read (within the pipeline's trusted buckets and size
//! limit), and its job's cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BlobStore;
use crate::error::{BackendError, ProcessError};

/// What a processor may use while it runs.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) reader: Arc<Reader>,
    pub(crate) io: tokio::runtime::Handle,
    pub(crate) cancelled: Arc<AtomicBool>,
    /// Past it the job counts as cancelled (a [`crate::Timeout`] layer).
    pub(crate) deadline: Option<std::time::Instant>,
}

impl Context {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.reader.pipeline
    }

    /// Whether the job's lease was lost or given up. A long processor may
    /// check it and return early; its result would be discarded anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
    }

    /// This context with a deadline (the earlier one holds).
    pub(crate) fn with_deadline(&self, deadline: Option<std::time::Instant>) -> Context {
        let mut ctx = self.clone();
        ctx.deadline = match (self.deadline, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ctx
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
        let blobs = self.reader.check(bucket, key)?;
        blocking(
            &self.io,
            fetch_limited(blobs, bucket, key, self.reader.max_fetch_bytes),
        )
    }
}

/// What a pipeline's processors may read, and how much.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) pipeline: Arc<str>,
    pub(crate) blobs: Option<Arc<dyn BlobStore>>,
    pub(crate) max_fetch_bytes: usize,
    /// The buckets a fetch may read.
    pub(crate) readable: Arc<[String]>,
}

impl Reader {
    /// The store to read `bucket`/`key` from, if the name is one this
    /// pipeline may read.
    fn check(&self, bucket: &str, key: &str) -> Result<Arc<dyn BlobStore>, ProcessError> {
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
        self.blobs.clone().ok_or_else(|| {
            ProcessError::bad_input(format!(
                "pipeline `{}` has no blob store to read s3://{bucket}/{key}",
                self.pipeline
            ))
        })
    }
}

/// Runs `fut` on the I/O runtime and waits for it on this (worker) thread;
/// `None` when the runtime stopped first.
pub(crate) fn run_blocking<T: Send + 'static>(
    io: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    io.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.blocking_recv().ok()
}

/// [`run_blocking`] for a fetch: a stopped runtime is a retry.
pub(crate) fn blocking<T: Send + 'static>(
    io: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = Result<T, ProcessError>> + Send + 'static,
) -> Result<T, ProcessError> {
    run_blocking(io, fut).unwrap_or_else(|| {
        Err(ProcessError::unavailable(
            "the runtime stopped during a fetch",
        ))
    })
}

/// Reads at most `limit` bytes of an object: bad input when it is missing
/// or larger, unavailable (charging the job nothing) when the call failed.
pub(crate) fn fetch_limited(
    blobs: Arc<dyn BlobStore>,
    bucket: &str,
    key: &str,
    limit: usize,
) -> impl std::future::Future<Output = Result<Bytes, ProcessError>> + Send + 'static {
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    async move {
        match blobs.get_limited(&bucket, &key, limit).await {
            Ok(bytes) => Ok(bytes),
            Err(BackendError::PayloadTooLarge { actual, limit }) => Err(ProcessError::bad_input(
                format!("s3://{bucket}/{key} is {actual} bytes, over the limit of {limit}"),
            )),
            Err(BackendError::NotFound { .. }) => Err(ProcessError::bad_input(format!(
                "missing object s3://{bucket}/{key}"
            ))),
            Err(e) => Err(ProcessError::from_backend(
                &format!("reading s3://{bucket}/{key}"),
                e,
            )),
        }
    }
}

/// What an [`AsyncProcessor`](crate::AsyncProcessor) or
/// [`BatchProcessor`](crate::BatchProcessor) may use while it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) reader: Arc<Reader>,
    /// One per job of the batch (one for an async processor's job).
    pub(crate) cancels: Arc<[crate::cancel::CancelHandle]>,
}

impl TaskContext {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.reader.pipeline
    }

    /// Whether the job's lease was lost or given up (for a batch: every
    /// job's). Its result would be discarded anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.iter().all(|c| c.is_cancelled())
    }

    /// Whether the `index`th job of the batch was cancelled.
    pub fn is_job_cancelled(&self, index: usize) -> bool {
        self.cancels.get(index).is_some_and(|c| c.is_cancelled())
    }

    /// The context of some of the batch's jobs, by index.
    pub(crate) fn only(&self, indices: &[usize]) -> TaskContext {
        TaskContext {
            reader: self.reader.clone(),
            cancels: indices
                .iter()
                .filter_map(|&i| self.cancels.get(i).cloned())
                .collect(),
        }
    }

    /// Completes when [`TaskContext::is_cancelled`] becomes true.
    pub async fn cancelled(&self) {
        for c in self.cancels.iter() {
            c.cancelled().await;
        }
    }

    /// Reads an object, as [`Context::fetch`] does, without blocking.
    pub async fn fetch(&self, bucket: &str, key: &str) -> Result<Bytes, ProcessError> {
        let blobs = self.reader.check(bucket, key)?;
        fetch_limited(blobs, bucket, key, self.reader.max_fetch_bytes).await
    }
}
