//! A job: one received message as a processor sees it, and the pure
//! functions that derive a job's effects from its id (DESIGN rule 2).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::ReceivedMessage;
use crate::error::ProcessError;

/// The attribute that carries a job's id from producer to every stage.
pub const JOB_ID_ATTRIBUTE: &str = "ferry-job-id";
/// The attribute of a dead-letter entry that says why it is there.
pub const DLQ_REASON_ATTRIBUTE: &str = "ferry-dlq-reason";
/// The attribute of a dead-letter entry that names the queue it came from.
pub const DLQ_SOURCE_ATTRIBUTE: &str = "ferry-source-queue";
/// The attribute of a dead-letter entry that gives the receive count.
pub const DLQ_RECEIVES_ATTRIBUTE: &str = "ferry-receive-count";
/// The attribute of a dead-letter entry that is not the message as it came
/// — its body cut to fit the queue's size limit, or its job id cut (one over
/// [`MAX_JOB_ID_BYTES`]) — with the original body's length in bytes. Such
/// an entry is never redriven.
pub const DLQ_TRUNCATED_ATTRIBUTE: &str = "ferry-dlq-truncated";
/// The metadata key of a result object that names the job that wrote it.
pub const RESULT_JOB_TAG: &str = "ferry-job-id";

/// The longest job id ferry runs (bytes): its key-safe form, at most three
/// times as long, still fits in an S3 key with a prefix. A longer one is bad
/// input, as is one with a character SQS does not allow in an attribute.
pub const MAX_JOB_ID_BYTES: usize = 256;

/// Why ferry will not run a job under `id`, if it will not: longer than
/// [`MAX_JOB_ID_BYTES`], or with a character SQS does not allow in an
/// attribute (the id travels in one to every stage).
pub(crate) fn job_id_problem(id: &JobId) -> Option<String> {
    let id = id.as_str();
    if id.len() > MAX_JOB_ID_BYTES {
        return Some(format!(
            "a job id of {} bytes, over the limit of {MAX_JOB_ID_BYTES}",
            id.len()
        ));
    }
    if !id.chars().all(crate::backend::sqs_allows) {
        return Some("a job id with a character SQS does not allow in an attribute".to_owned());
    }
    None
}

/// A job's identity: the producer's `ferry-job-id` attribute when present,
/// else the FIFO deduplication id, else the message id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Arc<str>);

/// A job id's 128-bit hash, which the seen-ID cache and the lease table
/// keep instead of the id. Two ids share a key with a chance of about
/// n²/2¹²⁹ (1e-29 for 100,000 ids).
pub(crate) type JobKey = [u64; 2];

impl JobId {
    /// The id's 128-bit hash.
    pub(crate) fn key(&self) -> JobKey {
        let h = xxhash_rust::xxh3::xxh3_128(self.as_str().as_bytes());
        [h as u64, (h >> 64) as u64]
    }

    /// A job id from a string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id made safe for an object key: ASCII letters, digits, `.`, `_`
    /// and `-` stay, every other byte becomes `%XX`. Injective, so two jobs
    /// never share a key.
    pub fn key_safe(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// The deduplication id of the notification one pipeline publishes for
    /// this job: a pure function of the two, at most 128 characters. It is
    /// `<pipeline>:<key-safe id>` when that fits, else the pipeline's first
    /// 95 characters, `:` and the first 128 bits (hex) of the SHA-256 of
    /// that longer id: the same in every build and release.
    pub fn dedup_id(&self, pipeline: &str) -> String {
        let id = format!("{pipeline}:{}", self.key_safe());
        if id.len() <= 128 {
            return id;
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id.as_bytes());
        let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let short: String = pipeline.chars().take(95).collect();
        format!("{short}:{hash}")
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// One job as a processor sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The queue's message id.
    pub message_id: String,
    /// The body; an SNS envelope is unwrapped to the notification's message.
    pub body: String,
    /// Message attributes (an SNS envelope's attributes included).
    pub attributes: HashMap<String, String>,
    /// How many times the message has been received.
    pub receive_count: u32,
    /// FIFO message group, if any.
    pub group_id: Option<String>,
    /// This delivery's place in its trace: continues the message's
    /// `traceparent` attribute, else a new trace.
    pub trace: crate::trace::TraceContext,
    /// The body as received, when it was an SNS envelope.
    pub(crate) raw_body: Option<String>,
}

impl Job {
    /// The `job` span of this delivery in `pipeline`'s stage.
    pub(crate) fn span(&self, pipeline: &str) -> tracing::Span {
        let delivery = crate::trace::Delivery {
            job_id: self.id.as_str(),
            message_id: &self.message_id,
            receive_count: self.receive_count,
        };
        crate::trace::job_span(pipeline, delivery, &self.trace)
    }

    /// Reads a received message: unwraps an SNS envelope and finds the job id.
    pub fn from_message(m: ReceivedMessage) -> Self {
        let mut attributes = m.attributes;
        let (body, raw_body) = match unwrap_sns(&m.body) {
            Some((message, attrs)) => {
                for (k, v) in attrs {
                    attributes.entry(k).or_insert(v);
                }
                (message, Some(m.body))
            }
            None => (m.body, None),
        };
        let id = attributes
            .get(JOB_ID_ATTRIBUTE)
            .cloned()
            .or(m.dedup_id)
            .unwrap_or_else(|| m.message_id.clone());
        let trace = crate::trace::TraceContext::continue_from(
            attributes
                .get(crate::trace::TRACEPARENT_ATTRIBUTE)
                .map(String::as_str),
        );
        Self {
            id: JobId::new(id),
            trace,
            message_id: m.message_id,
            body,
            attributes,
            receive_count: m.receive_count,
            group_id: m.group_id,
            raw_body,
        }
    }

    /// The job a message about to be sent will be when received (before the
    /// queue gives it a message id): for deriving its id ahead of time.
    pub(crate) fn as_received(m: &crate::backend::OutgoingMessage) -> Self {
        Self::from_message(ReceivedMessage {
            message_id: String::new(),
            receipt_handle: String::new(),
            body: m.body.clone(),
            attributes: m.attributes.clone(),
            receive_count: 1,
            group_id: m.group_id.clone(),
            dedup_id: m.dedup_id.clone(),
        })
    }

    /// The body as the queue delivered it (what a dead-letter entry keeps).
    pub fn original_body(&self) -> &str {
        self.raw_body.as_deref().unwrap_or(&self.body)
    }

    /// Parses the body as JSON into `T`; a body that does not parse is bad
    /// input, with the parser's error as the reason.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProcessError> {
        serde_json::from_str(&self.body).map_err(|e| {
            ProcessError::bad_input(format!(
                "the body is not a {}: {e}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("job")
            ))
        })
    }

    /// Whether the body is the test event S3 sends to a queue when a bucket
    /// notification is configured (see [`is_s3_test_event`]).
    pub fn is_s3_test_event(&self) -> bool {
        is_s3_test_event(&self.body)
    }

    /// Parses the body as a [`ResultNotice`] (what an upstream ferry stage
    /// published); a body that is not one is bad input.
    pub fn notice(&self) -> Result<ResultNotice, ProcessError> {
        serde_json::from_str(&self.body)
            .map_err(|e| ProcessError::bad_input(format!("not a ferry result notice: {e}")))
    }
}

/// Whether `body` is S3's test event — what S3 sends to a queue when a
/// bucket notification is configured: a JSON object with
/// `"Service":"Amazon S3"` and `"Event":"s3:TestEvent"` (and no `Records`).
/// Only a body that contains `s3:TestEvent` is parsed, so the check costs a
/// substring search for every other body.
pub fn is_s3_test_event(body: &str) -> bool {
    if !body.contains("s3:TestEvent") || !body.trim_start().starts_with('{') {
        return false;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(body) else {
        return false;
    };
    v.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent")
        && v.get("Service").and_then(|e| e.as_str()) == Some("Amazon S3")
        && !v.contains_key("Records")
}

/// If `body` is an SNS notification envelope, its message and attributes.
fn unwrap_sns(body: &str) -> Option<(String, Vec<(String, String)>)> {
    if !body.trim_start().starts_with('{') || !body.contains("\"Notification\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if v.get("Type")?.as_str()? != "Notification" {
        return None;
    }
    let message = v.get("Message")?.as_str()?.to_owned();
    let attrs = v
        .get("MessageAttributes")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.get("Value")?.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Some((message, attrs))
}

/// What a stage publishes when it has stored a result: where the result is
/// and which job it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultNotice {
    /// The job's id.
    pub job_id: JobId,
    /// The pipeline that wrote the result.
    pub pipeline: String,
    /// The result's bucket.
    pub bucket: String,
    /// The result's key.
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str, attrs: &[(&str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            message_id: "m-1".into(),
            receipt_handle: "h".into(),
            body: body.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            receive_count: 1,
            group_id: None,
            dedup_id: None,
        }
    }

    #[test]
    fn job_id_prefers_attribute_then_dedup_then_message_id() {
        assert_eq!(
            Job::from_message(msg("x", &[(JOB_ID_ATTRIBUTE, "j7")]))
                .id
                .as_str(),
            "j7"
        );
        let mut m = msg("x", &[]);
        m.dedup_id = Some("d1".into());
        assert_eq!(Job::from_message(m).id.as_str(), "d1");
        assert_eq!(Job::from_message(msg("x", &[])).id.as_str(), "m-1");
    }

    #[test]
    fn sns_envelope_is_unwrapped_with_its_attributes() {
        let n = crate::backend::OutgoingMessage::new("{\"a\":1}").attribute(JOB_ID_ATTRIBUTE, "j9");
        let body = crate::backend::local::sns_envelope("t", "n-1", &n);
        let job = Job::from_message(msg(&body, &[]));
        assert_eq!(job.body, "{\"a\":1}");
        assert_eq!(job.id.as_str(), "j9");
        assert_eq!(job.original_body(), body);
    }

    #[test]
    fn s3_test_events_are_recognised_strictly() {
        // What S3 sends, and what moto sends (`json.dumps`: spaces after colons).
        let aws = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2014-10-13T15:57:02.089Z","Bucket":"b","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw"}"#;
        let moto = r#"{"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-01-01T00:00:00.000Z", "Bucket": "b"}"#;
        assert!(is_s3_test_event(aws));
        assert!(is_s3_test_event(moto));
        assert!(is_s3_test_event(&format!("  {moto}\n")));
        for body in [
            // Ordinary job bodies that merely mention it.
            "s3:TestEvent",
            r#"{"bucket":"b","key":"s3:TestEvent"}"#,
            r#"{"Event":"s3:TestEvent"}"#,
            r#"{"Service":"Amazon SQS","Event":"s3:TestEvent"}"#,
            r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Records":[]}"#,
            r#"["Service","Amazon S3","Event","s3:TestEvent"]"#,
            r#"{"Service":"Amazon S3","Event":"s3:TestEvent""#,
            r#"{"Service":"Amazon S3","Event":"s3:ObjectCreated:Put"}"#,
        ] {
            assert!(!is_s3_test_event(body), "{body}");
        }
        let mut m = msg(aws, &[]);
        m.message_id = "m-9".into();
        assert!(Job::from_message(m).is_s3_test_event());
    }

    #[test]
    fn key_safe_is_injective_on_tricky_ids() {
        let a = JobId::new("a/b").key_safe();
        let b = JobId::new("a_b").key_safe();
        let c = JobId::new("a%2Fb").key_safe();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(JobId::new("job-001.x").key_safe(), "job-001.x");
    }

    #[test]
    fn dedup_id_is_bounded_and_pure() {
        let long = JobId::new("x".repeat(500));
        assert!(long.dedup_id("stage1").len() <= 128);
        assert_eq!(long.dedup_id("stage1"), long.dedup_id("stage1"));
        assert_ne!(
            JobId::new("a").dedup_id("s1"),
            JobId::new("a").dedup_id("s2")
        );
    }

    /// Fixed values, computed once: a deduplication id that changed between
    /// builds would let a re-published notice through as a second one.
    #[test]
    fn dedup_ids_are_fixed_values() {
        assert_eq!(JobId::new("job-1").dedup_id("stage1"), "stage1:job-1");
        assert_eq!(JobId::new("a/b c").dedup_id("stage1"), "stage1:a%2Fb%20c");
        assert_eq!(
            JobId::new("x".repeat(500)).dedup_id("stage1"),
            "stage1:02fb3c4e6f71efefe643d664e9701179"
        );
        assert_eq!(
            JobId::new("j").dedup_id(&"p".repeat(200)),
            format!("{}:29d7abe7427d07eba25b5dceed91a880", "p".repeat(95))
        );
        assert_eq!(
            JobId::new("é/".repeat(60)).dedup_id("dead-letter"),
            "dead-letter:d1ff82336bce506ba108e2354e1120e0"
        );
        // Every long form fits SQS: at most 128 characters, printable ASCII.
        for (id, pipeline) in [
            ("x".repeat(500), "stage1".to_owned()),
            ("j".to_owned(), "p".repeat(200)),
            ("é/".repeat(60), "dead-letter".to_owned()),
        ] {
            let d = JobId::new(id).dedup_id(&pipeline);
            assert!(d.chars().count() <= 128, "{d}");
            assert!(d.bytes().all(|b| b.is_ascii_graphic()), "{d}");
        }
    }

    #[test]
    fn long_dedup_ids_differ_where_their_ids_do() {
        let base = "x".repeat(300);
        let ids: std::collections::HashSet<_> = (0..200)
            .map(|i| JobId::new(format!("{base}{i}")).dedup_id("stage1"))
            .chain(
                // Two pipelines whose names share the part that is kept.
                ["a", "b"].map(|t| JobId::new(&base).dedup_id(&format!("{}{t}", "p".repeat(100)))),
            )
            .collect();
        assert_eq!(ids.len(), 202);
    }
}
