//! The three narrow traits ferry talks to — a queue, a topic, a blob store —
//! and the types that cross them.
//!
//! Everything above these traits is backend-agnostic. The embedded default
//! lives in [`local`]; the service limits it and every other backend honour
//! are the constants re-exported here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BackendError;

#[cfg(feature = "aws")]
pub mod aws;
pub(crate) mod dependencies;
pub(crate) mod guard;
pub mod local;
mod message;
pub mod metadata;
mod rules;

pub use dependencies::DegradedDependency;
pub use message::{
    EntryResult, Notification, ObjectMeta, OutgoingMessage, QueueDepth, ReceivedMessage,
};
pub(crate) use rules::check_batch;
pub use rules::{
    attribute_name_problem, attribute_size, batches, fifo_id_problem, message_size,
    object_name_problem, sqs_allows, sqs_text, ATTRIBUTE_DATA_TYPE, DEDUP_WINDOW,
    MAX_ATTRIBUTE_NAME_CHARS, MAX_BATCH, MAX_FIFO_ID_CHARS, MAX_MESSAGE_ATTRIBUTES,
    MAX_MESSAGE_BYTES, MAX_PUBLISH_BATCH, MAX_RECEIVED_BYTES, MAX_VISIBILITY, MAX_WAIT,
};

/// A queue: SQS or the embedded one.
#[async_trait]
pub trait Queue: Send + Sync + fmt::Debug + 'static {
    /// A name for logs and errors (the queue name or URL).
    fn name(&self) -> &str;

    /// Whether this is a FIFO queue.
    fn is_fifo(&self) -> bool;

    /// Receives up to `max` (≤ [`MAX_BATCH`]) messages, waiting up to `wait`
    /// for the first, and hides them for `visibility`.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError>;

    /// Deletes up to [`MAX_BATCH`] messages by receipt handle.
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError>;

    /// Sets the visibility of up to [`MAX_BATCH`] messages from now.
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError>;

    /// Sends up to [`MAX_BATCH`] messages; each entry gives the message id.
    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError>;

    /// Approximate visible and in-flight counts.
    async fn depth(&self) -> Result<QueueDepth, BackendError>;

    /// Whether dropping a receive before it returns loses no message (true
    /// when messages are taken in one step as the call completes). Shutdown
    /// cancels such receives instead of waiting out their long poll.
    fn receive_is_cancel_safe(&self) -> bool {
        false
    }
}

/// A topic: SNS or the embedded one.
#[async_trait]
pub trait Topic: Send + Sync + fmt::Debug + 'static {
    /// A name for logs and errors (the topic name or ARN).
    fn name(&self) -> &str;

    /// Whether this is a FIFO topic.
    fn is_fifo(&self) -> bool;

    /// Publishes up to [`MAX_PUBLISH_BATCH`] notifications.
    async fn publish_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError>;
}

/// A blob store: S3 or the embedded one. Buckets are named per call.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug + 'static {
    /// Writes an object, replacing any object at the key.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError>;

    /// Reads an object; [`BackendError::NotFound`] when there is none.
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError>;

    /// Reads an object of at most `limit` bytes. A larger one is refused
    /// with [`BackendError::PayloadTooLarge`] without being held in memory.
    ///
    /// The default asks [`BlobStore::head`] for the size first, then reads;
    /// stores that can stop a read part-way (S3, the embedded store)
    /// override it so an object that grows in between is still refused.
    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        match self.head(bucket, key).await? {
            None => Err(BackendError::NotFound {
                resource: format!("s3://{bucket}/{key}"),
            }),
            Some(meta) if meta.size > limit as u64 => Err(BackendError::PayloadTooLarge {
                actual: usize::try_from(meta.size).unwrap_or(usize::MAX),
                limit,
            }),
            Some(_) => {
                let body = self.get(bucket, key).await?;
                if body.len() > limit {
                    return Err(BackendError::PayloadTooLarge {
                        actual: body.len(),
                        limit,
                    });
                }
                Ok(body)
            }
        }
    }

    /// Reads an object's metadata; `None` when there is no object.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError>;

    /// Lists the keys under a prefix (used by reports and tests).
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError>;

    /// Deletes an object; deleting one that is not there succeeds. Used to
    /// remove large-payload objects after their message is deleted; a store
    /// that cannot delete keeps this default, which refuses.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        Err(BackendError::Invalid {
            message: format!("this blob store cannot delete s3://{bucket}/{key}"),
        })
    }
}

/// A backend a pipeline, producer or payload store can be given: a concrete
/// handle (`Arc<LocalQueue>`, `Arc<SqsQueue>`, …) or an `Arc<dyn …>`.
pub trait IntoBackend<T: ?Sized> {
    /// The backend as the trait object ferry holds.
    fn into_backend(self) -> Arc<T>;
}

macro_rules! into_backend {
    ($tr:ident) => {
        impl<Q: $tr> IntoBackend<dyn $tr> for Arc<Q> {
            fn into_backend(self) -> Arc<dyn $tr> {
                self
            }
        }
        impl IntoBackend<dyn $tr> for Arc<dyn $tr> {
            fn into_backend(self) -> Arc<dyn $tr> {
                self
            }
        }
    };
}
into_backend!(Queue);
into_backend!(Topic);
into_backend!(BlobStore);
