//! Large payloads: a body over the threshold (SQS's 256 KiB by default) is
//! stored in the blob store and the message carries a pointer in the shape
//! of the AWS SQS/SNS Extended Client Library's:
//!
//! ```text
//! body:      ["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"<bucket>","s3Key":"<key>"}]
//! attribute: ExtendedPayloadSize = <original size in bytes>
//! ```
//!
//! A pipeline with [`Pipeline::large_payloads`](crate::Pipeline::large_payloads)
//! offloads the notifications it publishes and resolves pointers it
//! receives before the processor sees the job (a pointer to a missing
//! object is bad input: dead-lettered with the reason). Producers offload
//! with [`LargePayloads::offload`]. After a job's message is deleted its
//! pointer's object is deleted too — never before, never for a
//! dead-lettered message (its entry still points there), and by default not
//! for a message that came through an SNS envelope, since other
//! subscribers of the same notification may still need the object.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use serde_json::json;

use crate::backend::{BlobStore, ObjectMeta, OutgoingMessage, MAX_MESSAGE_BYTES};
use crate::error::{BackendError, ProcessError};
use crate::job::Job;
use crate::pipeline::IntoShared;
use crate::processor::Context;

/// The class name the extended client writes as the pointer's first element.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The attribute that marks an offloaded message and gives the payload's size.
pub const PAYLOAD_SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The older extended clients' name for [`PAYLOAD_SIZE_ATTRIBUTE`], also recognised.
pub const LEGACY_PAYLOAD_SIZE_ATTRIBUTE: &str = "SQSLargePayloadSize";

/// Where an offloaded payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPointer {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
}

impl PayloadPointer {
    /// Reads a pointer body; `None` when `body` is not one.
    pub fn parse(body: &str) -> Option<Self> {
        let body = body.trim_start();
        if !body.starts_with('[') || !body.contains(POINTER_CLASS) {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let arr = v.as_array()?;
        if arr.len() != 2 || arr[0].as_str()? != POINTER_CLASS {
            return None;
        }
        Some(Self {
            bucket: arr[1].get("s3BucketName")?.as_str()?.to_owned(),
            key: arr[1].get("s3Key")?.as_str()?.to_owned(),
        })
    }

    /// The pointer as a message body.
    pub fn to_body(&self) -> String {
        json!([POINTER_CLASS, {"s3BucketName": self.bucket, "s3Key": self.key}]).to_string()
    }

    /// The pointer a job's message carries: its body is a pointer and it
    /// has the size attribute (either name).
    pub fn of_job(job: &Job) -> Option<Self> {
        let marked = job.attributes.contains_key(PAYLOAD_SIZE_ATTRIBUTE)
            || job.attributes.contains_key(LEGACY_PAYLOAD_SIZE_ATTRIBUTE);
        marked.then(|| Self::parse(&job.body)).flatten()
    }
}

/// Where and when a pipeline or producer offloads bodies.
#[derive(Clone)]
pub struct LargePayloads {
    pub(crate) blobs: Arc<dyn BlobStore>,
    bucket: String,
    prefix: String,
    threshold: usize,
    delete_after_ack: bool,
    delete_fanned_out: bool,
}

impl std::fmt::Debug for LargePayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargePayloads")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("threshold", &self.threshold)
            .field("delete_after_ack", &self.delete_after_ack)
            .field("delete_fanned_out", &self.delete_fanned_out)
            .finish_non_exhaustive()
    }
}

impl LargePayloads {
    /// Offloads to `bucket` under the prefix `ferry-payloads/`, above
    /// [`MAX_MESSAGE_BYTES`] (body and attributes counted, as SQS does);
    /// deletes after the message is deleted, except for messages that came
    /// through an SNS envelope.
    pub fn new(blobs: impl IntoShared<dyn BlobStore>, bucket: impl Into<String>) -> Self {
        Self {
            blobs: blobs.into_shared(),
            bucket: bucket.into(),
            prefix: "ferry-payloads/".into(),
            threshold: MAX_MESSAGE_BYTES,
            delete_after_ack: true,
            delete_fanned_out: false,
        }
    }

    /// The key prefix of payload objects.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Messages larger than this many bytes are offloaded.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// Whether a received pointer's object is deleted after its message is
    /// deleted (default true).
    pub fn delete_after_ack(mut self, yes: bool) -> Self {
        self.delete_after_ack = yes;
        self
    }

    /// Whether that also applies to messages that came through an SNS
    /// envelope — only safe when this pipeline is the notification's only
    /// subscriber (default false). A raw SNS subscription cannot be told
    /// from a direct send: turn [`LargePayloads::delete_after_ack`] off on
    /// pipelines that read one of several raw subscriptions.
    pub fn delete_fanned_out(mut self, yes: bool) -> Self {
        self.delete_fanned_out = yes;
        self
    }

    /// The bucket payload objects go to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A message's size as SQS counts it: body, attribute names and values.
    pub fn message_size(m: &OutgoingMessage) -> usize {
        m.body.len()
            + m.attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// Stores the body and returns the pointer message, when the message is
    /// over the threshold; else returns it as it is.
    pub async fn offload(&self, mut m: OutgoingMessage) -> Result<OutgoingMessage, BackendError> {
        if Self::message_size(&m) <= self.threshold {
            return Ok(m);
        }
        let id: u128 = rand::thread_rng().gen();
        let hex = format!("{id:032x}");
        let key = format!(
            "{}{}-{}-{}-{}-{}",
            self.prefix,
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        let size = m.body.len();
        let body = Bytes::from(std::mem::take(&mut m.body));
        let meta = ObjectMeta {
            size: size as u64,
            content_type: Some("text/plain; charset=utf-8".into()),
            metadata: HashMap::new(),
        };
        self.blobs.put(&self.bucket, &key, body, meta).await?;
        m.body = PayloadPointer {
            bucket: self.bucket.clone(),
            key,
        }
        .to_body();
        m.attributes
            .insert(PAYLOAD_SIZE_ATTRIBUTE.to_owned(), size.to_string());
        Ok(m)
    }

    /// [`LargePayloads::offload`] for each message of a batch.
    pub async fn offload_all(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<OutgoingMessage>, BackendError> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.offload(m).await?);
        }
        Ok(out)
    }

    /// The same, with every blob call under a pipeline's guard.
    pub(crate) fn guarded(mut self, guard: &crate::pipeline::Guard) -> Self {
        self.blobs = guard.blobs(self.blobs);
        self
    }

    /// The pointer whose object may be deleted now that `job`'s message is.
    pub(crate) fn deletable(&self, job: &Job) -> Option<PayloadPointer> {
        let fanned_out = job.raw_body.is_some();
        if !self.delete_after_ack || (fanned_out && !self.delete_fanned_out) {
            return None;
        }
        PayloadPointer::of_job(job)
    }

    /// Deletes payload objects whose messages are gone; failures are logged
    /// (an object left behind costs storage, not correctness).
    pub(crate) async fn delete_objects(&self, pointers: Vec<PayloadPointer>) {
        for p in pointers {
            match self.blobs.delete(&p.bucket, &p.key).await {
                Ok(()) => {
                    tracing::debug!(bucket = %p.bucket, key = %p.key, "payload object deleted")
                }
                Err(e) => tracing::warn!(bucket = %p.bucket, key = %p.key, error = %e,
                    "could not delete a payload object"),
            }
        }
    }

    /// The job with its payload in place of the pointer, when it carries
    /// one; a missing or unreadable object is bad input.
    pub(crate) fn resolve(&self, job: &Job, ctx: &Context) -> Result<Option<Job>, ProcessError> {
        let Some(p) = PayloadPointer::of_job(job) else {
            return Ok(None);
        };
        let reader = Context {
            blobs: Some(self.blobs.clone()),
            ..ctx.clone()
        };
        let bytes = reader.fetch(&p.bucket, &p.key).map_err(|e| match e {
            ProcessError::BadInput { reason } => {
                ProcessError::bad_input(format!("large payload pointer: {reason}"))
            }
            other => other,
        })?;
        let body = String::from_utf8(bytes.to_vec()).map_err(|_| {
            ProcessError::bad_input(format!(
                "large payload pointer: s3://{}/{} is not UTF-8",
                p.bucket, p.key
            ))
        })?;
        let mut resolved = job.clone();
        resolved.body = body;
        Ok(Some(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_has_the_extended_clients_shape() {
        let p = PayloadPointer {
            bucket: "b".into(),
            key: "k/1".into(),
        };
        assert_eq!(
            p.to_body(),
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b","s3Key":"k/1"}]"#
        );
        assert_eq!(PayloadPointer::parse(&p.to_body()), Some(p));
        assert_eq!(PayloadPointer::parse("[1,2]"), None);
        assert_eq!(PayloadPointer::parse("{\"a\":1}"), None);
    }
}
