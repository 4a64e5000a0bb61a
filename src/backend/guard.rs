//! Every backend and store call a pipeline makes runs under a guard: a panic
//! inside the call becomes a retryable [`BackendError`] (counted as
//! `backend_panics`), and a call that does not answer within its time limit
//! becomes a retryable timeout. So no user-supplied queue, topic, blob store
//! or idempotency store can end an actor or hang it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;

use crate::backend::{
    BlobStore, EntryResult, Notification, ObjectMeta, OutgoingMessage, Queue, QueueDepth,
    ReceivedMessage, Topic,
};
use crate::error::BackendError;
use crate::idempotency::{ClaimOutcome, IdempotencyRecord, IdempotencyStore};
use crate::stats::Stats;

use super::dependencies::{degrades, Dependencies};

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// What the guards of one pipeline share: its counters, the time limit,
/// and the record of which dependencies fail now.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    stats: Arc<Stats>,
    /// Longest a call may take (a receive: its long-poll wait on top).
    limit: Duration,
    dependencies: Arc<Dependencies>,
}

impl Guard {
    pub(crate) fn new(stats: Arc<Stats>, limit: Duration, dependencies: Arc<Dependencies>) -> Self {
        Self {
            stats,
            limit,
            dependencies,
        }
    }

    /// Runs `call` under [`Guard::contain`], and records whether the
    /// resource it names works: a failure of the infrastructure marks it
    /// degraded (the pipeline slows down), a success clears it.
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        resource: &str,
        limit: Duration,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let r = self.contain(what, resource, limit, call).await;
        match &r {
            Ok(_) => self.dependencies.succeeded(resource),
            Err(e) if degrades(e) => self.dependencies.failed(resource, &e.to_string()),
            Err(_) => {}
        }
        r
    }

    /// Runs `call` with a panic guard and a time limit.
    async fn contain<T>(
        &self,
        what: &'static str,
        resource: &str,
        limit: Duration,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
            Ok(Ok(r)) => r,
            Ok(Err(payload)) => {
                let message = panic_message(&*payload);
                Stats::inc(&self.stats.backend_panics);
                tracing::error!(call = what, resource, panic = %message,
                    "backend call panicked; treated as a transient failure");
                Err(BackendError::transient(format!(
                    "{what} on {resource} panicked: {message}"
                )))
            }
            Err(_) => {
                Stats::inc(&self.stats.backend_timeouts);
                tracing::warn!(
                    call = what,
                    resource,
                    limit_ms = limit.as_millis() as u64,
                    "backend call timed out"
                );
                Err(BackendError::transient(format!(
                    "{what} on {resource} timed out after {} ms",
                    limit.as_millis()
                )))
            }
        }
    }

    pub(crate) fn queue(&self, inner: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Arc::new(Guarded {
            inner,
            guard: self.clone(),
        })
    }

    pub(crate) fn topic(&self, inner: Arc<dyn Topic>) -> Arc<dyn Topic> {
        Arc::new(Guarded {
            inner,
            guard: self.clone(),
        })
    }

    pub(crate) fn blobs(&self, inner: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
        Arc::new(Guarded {
            inner,
            guard: self.clone(),
        })
    }

    pub(crate) fn store(&self, inner: Arc<dyn IdempotencyStore>) -> Arc<dyn IdempotencyStore> {
        Arc::new(Guarded {
            inner,
            guard: self.clone(),
        })
    }
}

/// A backend behind a [`Guard`].
struct Guarded<T: ?Sized> {
    inner: Arc<T>,
    guard: Guard,
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: ?Sized> Guarded<T> {
    async fn run<R>(
        &self,
        what: &'static str,
        resource: &str,
        call: impl Future<Output = Result<R, BackendError>>,
    ) -> Result<R, BackendError> {
        self.guard.run(what, resource, self.guard.limit, call).await
    }
}

#[async_trait]
impl Queue for Guarded<dyn Queue> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        let limit = self.guard.limit + wait;
        let call = self.inner.receive(max, wait, visibility);
        self.guard.run("receive", self.name(), limit, call).await
    }

    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        let res = self
            .run("delete", self.name(), self.inner.delete_batch(handles))
            .await?;
        entries(res, handles.len(), "delete")
    }

    async fn change_visibility_batch(
        &self,
        entries_in: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        let call = self.inner.change_visibility_batch(entries_in);
        let res = self.run("change visibility", self.name(), call).await?;
        entries(res, entries_in.len(), "change visibility")
    }

    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        let n = messages.len();
        let res = self
            .run("send", self.name(), self.inner.send_batch(messages))
            .await?;
        entries(res, n, "send")
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.run("depth", self.name(), self.inner.depth()).await
    }

    fn receive_is_cancel_safe(&self) -> bool {
        self.inner.receive_is_cancel_safe()
    }
}

/// A batch answer must have one entry per request entry; a backend that
/// answers otherwise fails the whole call (retryable) instead of leaving
/// entries without an outcome.
fn entries<T>(
    res: Vec<EntryResult<T>>,
    asked: usize,
    what: &str,
) -> Result<Vec<EntryResult<T>>, BackendError> {
    if res.len() == asked {
        Ok(res)
    } else {
        Err(BackendError::transient(format!(
            "{what}: {} results for {asked} entries",
            res.len()
        )))
    }
}

#[async_trait]
impl Topic for Guarded<dyn Topic> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }

    async fn publish_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        let n = notifications.len();
        let call = self.inner.publish_batch(notifications);
        let res = self.run("publish", self.name(), call).await?;
        entries(res, n, "publish")
    }
}

#[async_trait]
impl BlobStore for Guarded<dyn BlobStore> {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        self.run("put", bucket, self.inner.put(bucket, key, body, meta))
            .await
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        self.run("get", bucket, self.inner.get(bucket, key)).await
    }

    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        self.run("get", bucket, self.inner.get_limited(bucket, key, limit))
            .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        self.run("head", bucket, self.inner.head(bucket, key)).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.run("list", bucket, self.inner.list(bucket, prefix))
            .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        self.run("delete object", bucket, self.inner.delete(bucket, key))
            .await
    }
}

#[async_trait]
impl IdempotencyStore for Guarded<dyn IdempotencyStore> {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        self.run("claim", key, self.inner.claim(key, owner, hold_for))
            .await
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        hold_for: Duration,
    ) -> Result<bool, BackendError> {
        self.run("renew", key, self.inner.renew(key, owner, hold_for))
            .await
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        keep_for: Duration,
    ) -> Result<bool, BackendError> {
        self.run("complete", key, self.inner.complete(key, owner, keep_for))
            .await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), BackendError> {
        self.run("release claim", key, self.inner.release(key, owner))
            .await
    }

    async fn record(&self, key: &str) -> Result<Option<IdempotencyRecord>, BackendError> {
        self.run("read record", key, self.inner.record(key)).await
    }
}
