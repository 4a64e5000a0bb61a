//! What passes through the services: messages received and sent, queue
//! depths, object metadata, and the outcome of one batch entry.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::BackendError;

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
    /// ([`super::metadata`]).
    pub metadata: HashMap<String, String>,
}

/// The outcome of one entry of a batch call, in the order of the request.
pub type EntryResult<T = ()> = Result<T, BackendError>;
