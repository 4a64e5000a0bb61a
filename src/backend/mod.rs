//! The three narrow traits ferry talks to — a queue, a topic, a blob store —
//! and the types that cross them.
//!
//! Everything above these traits is backend-agnostic. The embedded default
//! lives in [`local`]; the service limits it and every other backend honour
//! are the constants below.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BackendError;

#[cfg(feature = "aws")]
pub mod aws;
pub mod local;
pub mod metadata;
mod rules;

pub use rules::{
    attribute_name_problem, fifo_id_problem, MAX_ATTRIBUTE_NAME_CHARS, MAX_FIFO_ID_CHARS,
};

/// SQS: at most ten entries in one receive, delete, visibility or send batch.
pub const MAX_BATCH: usize = 10;
/// SNS: at most ten entries in one `PublishBatch`.
pub const MAX_PUBLISH_BATCH: usize = 10;
/// SQS caps a message's visibility at 12 hours (43,200 s) from its receive:
/// a receive, `ChangeMessageVisibility` or queue visibility over it, or an
/// extension that would keep the message hidden past 12 hours from the
/// receive that handed it out, is refused (`InvalidParameterValue`). The
/// embedded queue refuses them too.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// SQS long polling waits at most 20 seconds.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS FIFO queues and SNS FIFO topics deduplicate within five minutes.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// SQS's largest message (256 KiB): body, attribute names, data types and
/// values ([`message_size`]).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The largest message SQS delivers from a queue configured for it (1 MiB;
/// 256 KiB is the largest ferry sends). A body over this is bad input: no
/// queue delivered it as it is.
pub const MAX_RECEIVED_BYTES: usize = 1024 * 1024;
/// SQS and SNS: at most ten message attributes on one message.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// The data type ferry gives every message attribute; SQS counts its name
/// in the message's size.
pub const ATTRIBUTE_DATA_TYPE: &str = "String";

/// A message's size as SQS counts it: the body, and each attribute's name,
/// data type and value.
pub fn message_size<'a>(
    body: &str,
    attributes: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> usize {
    body.len()
        + attributes
            .into_iter()
            .map(|(k, v)| attribute_size(k, v))
            .sum::<usize>()
}

/// One attribute's share of a message's size (name, data type, value).
pub fn attribute_size(name: &str, value: &str) -> usize {
    name.len() + ATTRIBUTE_DATA_TYPE.len() + value.len()
}

/// `messages` cut into batches for one call each: at most [`MAX_BATCH`]
/// entries and, together, at most [`MAX_MESSAGE_BYTES`] — SQS's
/// `SendMessageBatch` and SNS's `PublishBatch` limit a whole request's
/// payload to one message's. A message over the limit alone is a batch of
/// its own (the service refuses that entry).
pub fn batches(messages: &[OutgoingMessage]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        let size = message_size(&m.body, &m.attributes);
        if i > start && (i - start == MAX_BATCH || bytes + size > MAX_MESSAGE_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        out.push(start..messages.len());
    }
    out
}

/// Refuses a batch [`batches`] would have cut, as SQS and SNS do
/// (`BatchRequestTooLong`, for the whole call).
pub(crate) fn check_batch(on: &str, messages: &[OutgoingMessage]) -> Result<(), BackendError> {
    let total: usize = messages
        .iter()
        .map(|m| message_size(&m.body, &m.attributes))
        .sum();
    if messages.len() > MAX_BATCH || (messages.len() > 1 && total > MAX_MESSAGE_BYTES) {
        return Err(BackendError::Invalid {
            message: format!(
                "{on}: a batch of {} entries and {total} bytes; at most {MAX_BATCH} and \
                 {MAX_MESSAGE_BYTES} in all",
                messages.len()
            ),
        });
    }
    Ok(())
}

/// Whether SQS accepts `c` in a body or attribute value: tab, line feed,
/// carriage return, and U+0020 and up except the surrogates, U+FFFE and
/// U+FFFF.
pub fn sqs_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// `text` with every character SQS refuses replaced by U+FFFD.
pub fn sqs_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().all(sqs_allows) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| if sqs_allows(c) { c } else { '\u{FFFD}' })
            .collect(),
    )
}

/// Why `bucket`/`key` is not an object name ferry will use, if it is not.
///
/// Bucket names follow S3's rules, loosened to the legacy ones (upper case
/// and `_` allowed, up to 255 characters): letters, digits, `.`, `-` and
/// `_`, starting and ending with a letter or digit, no `..`. Keys are 1 to
/// 1,024 bytes, with no NUL and no `.` or `..` segment (a client or server
/// that normalises paths could turn one into another bucket's object).
/// Every name a message can aim (inputs, large-payload pointers) is checked
/// with this before any call.
pub fn object_name_problem(bucket: &str, key: &str) -> Option<String> {
    let shown = |s: &str| s.chars().take(80).collect::<String>();
    let b = bucket.as_bytes();
    let bucket_ok = (1..=255).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !bucket.contains("..");
    if !bucket_ok {
        return Some(format!("{:?} is not a valid bucket name", shown(bucket)));
    }
    if key.is_empty() || key.len() > 1024 {
        return Some(format!("a key of {} bytes (1 to 1024 allowed)", key.len()));
    }
    if key.contains('\0') {
        return Some(format!("key {:?} contains NUL", shown(key)));
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Some(format!("key {:?} has a `.` or `..` segment", shown(key)));
    }
    None
}

/// One message as a receive hands it out.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The queue's id for the message; the same on every delivery.
    pub message_id: String,
    /// The handle of this delivery; a newer receive makes it stale.
    pub receipt_handle: String,
    /// The body as sent.
    pub body: String,
    /// String message attributes.
    pub attributes: HashMap<String, String>,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// FIFO message group, if any.
    pub group_id: Option<String>,
    /// FIFO deduplication id, if any.
    pub dedup_id: Option<String>,
}

/// One message to send.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    /// The body.
    pub body: String,
    /// String message attributes.
    pub attributes: HashMap<String, String>,
    /// FIFO message group (required on FIFO queues).
    pub group_id: Option<String>,
    /// FIFO deduplication id.
    pub dedup_id: Option<String>,
    /// Delay before the message becomes visible.
    pub delay: Option<Duration>,
}

impl OutgoingMessage {
    /// A message with this body and nothing else.
    pub fn new(body: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Adds a string attribute.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the FIFO group id.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// Sets the FIFO deduplication id.
    pub fn dedup(mut self, id: impl Into<String>) -> Self {
        self.dedup_id = Some(id.into());
        self
    }
}

/// One notification to publish on a topic.
pub type Notification = OutgoingMessage;

/// The visible and in-flight counts of a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages a receive could return now (or after their delay).
    pub visible: usize,
    /// Messages received and not yet deleted or visible again.
    pub in_flight: usize,
}

impl QueueDepth {
    /// Visible plus in flight.
    pub fn total(&self) -> usize {
        self.visible + self.in_flight
    }
}

/// What is stored with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// Content type.
    pub content_type: Option<String>,
    /// User metadata (S3 `x-amz-meta-*`), among them `ferry-job-id`, as
    /// ferry means the values: the S3 backend writes a value that is not
    /// plain US-ASCII RFC 2047-encoded and decodes it on read
    /// ([`metadata`]).
    pub metadata: HashMap<String, String>,
}

/// The outcome of one entry of a batch call, in the order of the request.
pub type EntryResult<T = ()> = Result<T, BackendError>;

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
