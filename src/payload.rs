//! Large payloads: a body over the threshold (SQS's 256 KiB by default) is
//! stored in the blob store and the message carries a pointer in the shape
//! of the AWS SQS/SNS Extended Client Library's:
//!
//! ```text
//! body:      ["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"<bucket>","s3Key":"<key>"}]
//! attribute: ExtendedPayloadSize = <original size in bytes>
//! ```
//!
//! The older clients' class name, `com.amazon.sqs.javamessaging.MessageS3Pointer`
//! (still written by the Java and Python clients in legacy mode), is read
//! too.
//!
//! A pipeline with [`Pipeline::large_payloads`](crate::Pipeline::large_payloads)
//! offloads the notifications it publishes and resolves pointers it
//! receives before the processor sees the job. A pointer is untrusted
//! input: it is resolved only when it names the payload bucket under the
//! payload prefix, or a bucket the pipeline trusts
//! ([`LargePayloads::trust`]); any other pointer, one whose declared size
//! is over `max_fetch_bytes`, and one to a missing or oversized object are
//! bad input, dead-lettered with the reason. The object's size is learnt
//! before its body is read. Producers offload with
//! [`LargePayloads::offload`].
//!
//! After a job's message is deleted its pointer's object is deleted too, but
//! only an object ferry's offload wrote *for that job*: the offload tags the
//! object with a digest of the message's job id ([`PAYLOAD_JOB_METADATA`]),
//! and the delete goes ahead only when the tag matches the finished job's
//! id. A message that copies another job's pointer under its own id can
//! read that payload (it could read the message too) but never delete it.
//! Objects without the tag — written by another client, or for a message
//! without a job id — are left to the bucket's lifecycle rules unless
//! [`LargePayloads::delete_untagged`] says otherwise. Never deleted: before
//! the message is, for a dead-lettered message (its entry still points
//! there), and by default for a message that came through an SNS envelope,
//! since other subscribers of the same notification may still need the
//! object.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use serde_json::json;

use crate::backend::IntoBackend;
use crate::backend::{
    BlobStore, ObjectMeta, OutgoingMessage, MAX_MESSAGE_ATTRIBUTES, MAX_MESSAGE_BYTES,
};
use crate::error::{BackendError, ProcessError};
use crate::job::Job;
use crate::job::JOB_ID_ATTRIBUTE;

/// The class name the extended client writes as the pointer's first element.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The older clients' class name for the same pointer, also read.
pub const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";
/// The attribute that marks an offloaded message and gives the payload's size.
pub const PAYLOAD_SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The older extended clients' name for [`PAYLOAD_SIZE_ATTRIBUTE`], also recognised.
pub const LEGACY_PAYLOAD_SIZE_ATTRIBUTE: &str = "SQSLargePayloadSize";

/// The object metadata (S3 `x-amz-meta-ferry-payload-job`) in which
/// [`LargePayloads::offload`] records the SHA-256 (hex) of the job id the
/// payload was written for.
pub const PAYLOAD_JOB_METADATA: &str = "ferry-payload-job";

/// The tag of a payload written for `job_id`.
fn payload_tag(job_id: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(job_id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
        // A pointer is small; anything long is not one (and is not parsed).
        if body.len() > 4096
            || !body.starts_with('[')
            || !(body.contains(POINTER_CLASS) || body.contains(LEGACY_POINTER_CLASS))
        {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let arr = v.as_array()?;
        if arr.len() != 2 || ![POINTER_CLASS, LEGACY_POINTER_CLASS].contains(&arr[0].as_str()?) {
            return None;
        }
        Some(Self {
            bucket: arr[1].get("s3BucketName")?.as_str()?.to_owned(),
            key: arr[1].get("s3Key")?.as_str()?.to_owned(),
        })
    }

    /// `s3://bucket/key`, each cut to 200 characters, for reasons and logs.
    fn shown(&self) -> String {
        let cut = |s: &str| s.chars().take(200).collect::<String>();
        format!("s3://{}/{}", cut(&self.bucket), cut(&self.key))
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
    delete_untagged: bool,
    trusted: Vec<String>,
}

impl std::fmt::Debug for LargePayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargePayloads")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("threshold", &self.threshold)
            .field("delete_after_ack", &self.delete_after_ack)
            .field("delete_fanned_out", &self.delete_fanned_out)
            .field("delete_untagged", &self.delete_untagged)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl LargePayloads {
    /// Offloads to `bucket` under the prefix `ferry-payloads/`, above
    /// [`MAX_MESSAGE_BYTES`] (body and attributes counted, as SQS does);
    /// deletes after the message is deleted, except for messages that came
    /// through an SNS envelope.
    pub fn new(blobs: impl IntoBackend<dyn BlobStore>, bucket: impl Into<String>) -> Self {
        Self {
            blobs: blobs.into_backend(),
            bucket: bucket.into(),
            prefix: "ferry-payloads/".into(),
            threshold: MAX_MESSAGE_BYTES,
            delete_after_ack: true,
            delete_fanned_out: false,
            delete_untagged: false,
            trusted: Vec::new(),
        }
    }

    /// Also resolves pointers to any key of `bucket` (for producers that
    /// offload to a bucket of their own). Their objects are deleted after
    /// the message by the same rule as the payload bucket's (only an object
    /// tagged for the finished job). Pointers to any other bucket are bad
    /// input.
    pub fn trust(mut self, bucket: impl Into<String>) -> Self {
        self.trusted.push(bucket.into());
        self
    }

    /// Why a received pointer will not be followed, if it will not: it must
    /// name the payload bucket under the payload prefix, or a trusted
    /// bucket, with a name S3 would accept.
    pub fn untrusted(&self, p: &PayloadPointer) -> Option<String> {
        if let Some(why) = crate::backend::object_name_problem(&p.bucket, &p.key) {
            return Some(why);
        }
        let ours = p.bucket == self.bucket && p.key.starts_with(&self.prefix);
        if ours || self.trusted.contains(&p.bucket) {
            return None;
        }
        Some(format!(
            "it is outside the payload location s3://{}/{}{}",
            self.bucket,
            self.prefix,
            if self.trusted.is_empty() {
                String::new()
            } else {
                format!(" and the trusted buckets ({})", self.trusted.join(", "))
            }
        ))
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

    /// Whether a resolved pointer's object *without* ferry's job tag (one
    /// another extended client wrote, or one offloaded for a message with
    /// no job id) is deleted after its message too (default false: it is
    /// left to the bucket's lifecycle rules). Only safe when everyone who
    /// can send to the queue is trusted: any such message can then delete
    /// any untagged object it can point at.
    pub fn delete_untagged(mut self, yes: bool) -> Self {
        self.delete_untagged = yes;
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

    /// A message's size as SQS counts it: body, attribute names, data types
    /// and values.
    pub fn message_size(m: &OutgoingMessage) -> usize {
        crate::backend::message_size(&m.body, &m.attributes)
    }

    /// Stores the body and returns the pointer message, when the message is
    /// over the threshold; else returns it as it is. The object is tagged
    /// ([`PAYLOAD_JOB_METADATA`]) for the job id the pipeline will see — the
    /// `ferry-job-id` attribute, else the FIFO deduplication id; a message
    /// with neither is given a `ferry-job-id` (the payload's random id) so
    /// that its object can be deleted after its job.
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
        // Tagged for the id the pipeline will see: the job id attribute,
        // else the FIFO deduplication id; a message with neither (whose id
        // would be its message id, unknown until sent) is given one, the
        // payload's own, when an attribute is free for it.
        let job_id = match (m.attributes.get(JOB_ID_ATTRIBUTE), &m.dedup_id) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(dedup)) => Some(dedup.clone()),
            (None, None) if m.attributes.len() + 2 <= MAX_MESSAGE_ATTRIBUTES => {
                m.attributes
                    .insert(JOB_ID_ATTRIBUTE.to_owned(), hex.clone());
                Some(hex)
            }
            (None, None) => None,
        };
        let metadata: HashMap<String, String> = job_id
            .map(|id| (PAYLOAD_JOB_METADATA.to_owned(), payload_tag(&id)))
            .into_iter()
            .collect();
        let meta = ObjectMeta {
            size: size as u64,
            content_type: Some("text/plain; charset=utf-8".into()),
            metadata,
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
    pub(crate) fn guarded(mut self, guard: &crate::backend::guard::Guard) -> Self {
        self.blobs = guard.blobs(self.blobs);
        self
    }

    /// The pointer whose object may be deleted now that `job`'s message is,
    /// with the job's id: only a trusted one (the job ran, so it was
    /// resolved); [`LargePayloads::delete_objects`] checks the tag.
    pub(crate) fn deletable(&self, job: &Job) -> Option<(PayloadPointer, String)> {
        let fanned_out = job.raw_body.is_some();
        if !self.delete_after_ack || (fanned_out && !self.delete_fanned_out) {
            return None;
        }
        PayloadPointer::of_job(job)
            .filter(|p| self.untrusted(p).is_none())
            .map(|p| (p, job.id.to_string()))
    }

    /// Deletes the payload objects of finished jobs whose messages are gone
    /// — each only if its tag names that job (or, with
    /// [`LargePayloads::delete_untagged`], if it has no tag). Failures are
    /// logged: an object left behind costs storage, not correctness.
    pub(crate) async fn delete_objects(&self, pointers: Vec<(PayloadPointer, String)>) {
        for (p, job_id) in pointers {
            let tag = match self.blobs.head(&p.bucket, &p.key).await {
                Ok(Some(meta)) => meta.metadata.get(PAYLOAD_JOB_METADATA).cloned(),
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(bucket = %p.bucket, key = %p.key, error = %e,
                        "could not read a payload object's tag: left in place");
                    continue;
                }
            };
            match tag {
                Some(tag) if tag == payload_tag(&job_id) => {}
                None if self.delete_untagged => {}
                Some(_) => {
                    tracing::warn!(bucket = %p.bucket, key = %p.key, job_id = %job_id,
                        "payload object written for another job: left in place");
                    continue;
                }
                None => {
                    tracing::debug!(bucket = %p.bucket, key = %p.key,
                        "payload object without ferry's job tag: left in place");
                    continue;
                }
            }
            match self.blobs.delete(&p.bucket, &p.key).await {
                Ok(()) => {
                    tracing::debug!(bucket = %p.bucket, key = %p.key, "payload object deleted")
                }
                Err(e) => tracing::warn!(bucket = %p.bucket, key = %p.key, error = %e,
                    "could not delete a payload object"),
            }
        }
    }

    /// The pointer `job` carries, if any, once checked: an untrusted
    /// pointer and a declared size over `limit` are bad input.
    pub(crate) fn pointer(
        &self,
        job: &Job,
        limit: usize,
    ) -> Result<Option<PayloadPointer>, ProcessError> {
        let Some(p) = PayloadPointer::of_job(job) else {
            return Ok(None);
        };
        if let Some(why) = self.untrusted(&p) {
            return Err(ProcessError::bad_input(format!(
                "large payload pointer to {} not followed: {why}",
                p.shown()
            )));
        }
        let declared = [PAYLOAD_SIZE_ATTRIBUTE, LEGACY_PAYLOAD_SIZE_ATTRIBUTE]
            .iter()
            .find_map(|a| job.attributes.get(*a))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(size) = declared.filter(|s| *s > limit as u64) {
            return Err(ProcessError::bad_input(format!(
                "large payload pointer to {}: declared size {size} bytes is over the limit of {limit}",
                p.shown()
            )));
        }
        Ok(Some(p))
    }

    /// Reads a checked pointer's object, at most `limit` bytes.
    pub(crate) fn fetch(
        &self,
        p: &PayloadPointer,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Bytes, ProcessError>> + Send + 'static {
        let read = crate::processor::fetch_limited(self.blobs.clone(), &p.bucket, &p.key, limit);
        async move {
            read.await.map_err(|e| match e {
                ProcessError::BadInput { reason } => {
                    ProcessError::bad_input(format!("large payload pointer: {reason}"))
                }
                other => other,
            })
        }
    }

    /// The job with the payload read from `p` in place of the pointer.
    pub(crate) fn with_payload(
        job: &Job,
        p: &PayloadPointer,
        bytes: Bytes,
    ) -> Result<Job, ProcessError> {
        let body = String::from_utf8(bytes.to_vec()).map_err(|_| {
            ProcessError::bad_input(format!("large payload pointer: {} is not UTF-8", p.shown()))
        })?;
        let mut resolved = job.clone();
        resolved.body = body;
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests;
