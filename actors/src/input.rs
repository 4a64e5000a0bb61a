//! Stage-1 input: an S3 event notification or `{"bucket","key"}`; the job
//! id of an S3 event, and the split of an event with several records.

use ferry::backend::OutgoingMessage;
use ferry::{Job, JobId, ProcessError};
use serde::Deserialize;

/// The object a stage-1 message names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// Bucket.
    pub bucket: String,
    /// Key (URL-decoded when it came from an S3 event).
    pub key: String,
}

#[derive(Deserialize)]
struct Plain {
    bucket: String,
    key: String,
}

#[derive(Deserialize)]
struct S3Event {
    #[serde(rename = "Records")]
    records: Vec<S3Record>,
}

#[derive(Deserialize)]
struct S3Record {
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: S3Bucket,
    object: S3Object,
}

#[derive(Deserialize)]
struct S3Bucket {
    name: String,
}

#[derive(Deserialize)]
struct S3Object {
    key: String,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    sequencer: Option<String>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
}

/// S3 event keys are URL-encoded with `+` for spaces.
fn url_decode(s: &str) -> Result<String, ProcessError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                let v = u8::from_str_radix(hex, 16)
                    .map_err(|_| ProcessError::bad_input(format!("bad escape in key {s:?}")))?;
                out.push(v);
                i += 2;
            }
            b'%' => return Err(ProcessError::bad_input(format!("bad escape in key {s:?}"))),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ProcessError::bad_input(format!("key {s:?} is not UTF-8")))
}

/// Reads a stage-1 message: the one object it names. S3's test event (which
/// ferry deletes on receipt unless `PipelineConfig::drop_s3_test_events` is
/// off), an S3 event with several records (register [`stage1_split`]) and
/// anything else that names no single object are bad input.
pub fn parse_source(body: &str) -> Result<SourceRef, ProcessError> {
    if ferry::is_s3_test_event(body) {
        return Err(ProcessError::bad_input(
            "S3 test event (s3:TestEvent): it names no object; ferry deletes these on \
             receipt unless drop_s3_test_events is off",
        ));
    }
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ProcessError::bad_input(format!("malformed message: {e}")))?;
    if value.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(value)
            .map_err(|e| ProcessError::bad_input(format!("malformed S3 event: {e}")))?;
        let [record] = event.records.as_slice() else {
            return Err(ProcessError::bad_input(format!(
                "S3 event with {} records; one expected (split it: Pipeline::split with \
                 ferry_actors::stage1_split)",
                event.records.len()
            )));
        };
        return Ok(SourceRef {
            bucket: record.s3.bucket.name.clone(),
            key: url_decode(&record.s3.object.key)?,
        });
    }
    let plain: Plain = serde_json::from_value(value).map_err(|e| {
        ProcessError::bad_input(format!(
            "malformed message: expected an S3 event or {{\"bucket\",\"key\"}}: {e}"
        ))
    })?;
    Ok(SourceRef {
        bucket: plain.bucket,
        key: plain.key,
    })
}

/// Longest readable S3 job id; a longer one is replaced by a hash.
const MAX_READABLE_ID: usize = 256;

/// A marker of the object's version, when the record has one: a present
/// and meaningful value (S3 writes `"null"` for an unversioned object).
fn marker(v: &Option<String>) -> Option<&str> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "null")
}

/// The job id of an S3 event with exactly one record; `None` for anything
/// else (a plain `{"bucket","key"}` body, S3's test event, an event with no
/// or several records, a malformed one), which keeps ferry's default id.
///
/// The id names the object and the version of it the event is about:
/// `s3:<bucket>:<marker>:<key>` (key URL-decoded), where the marker is
/// `v=<versionId>` when the record has one (a versioned bucket: each version
/// is a job), else `s=<sequencer>` (S3 orders events on a key by it; a
/// duplicate delivery of one event carries the same one, an overwrite a new
/// one), else `e=<eTag>` (the content: an overwrite with the same bytes is
/// the same job), else `-` (the key alone). So duplicate deliveries of one
/// event — each a different SQS message — are one job, while a new version
/// or overwrite of the object is a new job. An id longer than 256 bytes is
/// `s3:<bucket>:h=<128-bit xxh3 of that id, hex>`: bounded, and stable
/// across processes and releases. `JobId::key_safe` makes either safe for
/// an object key.
pub fn s3_event_job_id(body: &str) -> Option<JobId> {
    if !body.contains("Records") {
        return None;
    }
    let event: S3Event = serde_json::from_str(body).ok()?;
    let [record] = event.records.as_slice() else {
        return None;
    };
    let (bucket, object) = (&record.s3.bucket.name, &record.s3.object);
    let key = url_decode(&object.key).ok()?;
    let marker = marker(&object.version_id)
        .map(|v| format!("v={v}"))
        .or_else(|| marker(&object.sequencer).map(|s| format!("s={s}")))
        .or_else(|| marker(&object.etag).map(|e| format!("e={e}")))
        .unwrap_or_else(|| "-".to_owned());
    let id = format!("s3:{bucket}:{marker}:{key}");
    if id.len() <= MAX_READABLE_ID {
        return Some(JobId::new(id));
    }
    let hash = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
    Some(JobId::new(format!("s3:{bucket}:h={hash:032x}")))
}

/// [`s3_event_job_id`] of a job's body: register it on the stage-1
/// pipeline with `Pipeline::job_id(ferry_actors::stage1_job_id)`.
pub fn stage1_job_id(job: &Job) -> Option<JobId> {
    s3_event_job_id(&job.body)
}

/// The records of an S3 event with more than one, each as a single-record
/// event body (`{"Records":[record]}`, the record as it came); `None` for
/// anything else.
pub fn split_s3_event(body: &str) -> Option<Vec<String>> {
    if !body.contains("Records") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let records = value.get("Records")?.as_array()?;
    if records.len() < 2 {
        return None;
    }
    Some(
        records
            .iter()
            .map(|r| serde_json::json!({ "Records": [r] }).to_string())
            .collect(),
    )
}

/// The stage-1 split function: an S3 event with several records becomes
/// one message per record, each the event a single-record delivery would
/// be, so its job id ([`stage1_job_id`]) is the one that delivery would
/// get. Register it with `Pipeline::split(ferry_actors::stage1_split)`.
pub fn stage1_split(job: &Job) -> Option<Vec<OutgoingMessage>> {
    Some(
        split_s3_event(&job.body)?
            .into_iter()
            .map(OutgoingMessage::new)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: &str, key: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut object = serde_json::json!({"key": key, "size": 3});
        if let (Some(o), Some(e)) = (object.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::json!({
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": object}
        })
    }

    fn event(records: &[serde_json::Value]) -> String {
        serde_json::json!({ "Records": records }).to_string()
    }

    #[test]
    fn plain_and_s3_event_forms() {
        let plain = parse_source(r#"{"bucket":"b","key":"in/a.png"}"#).unwrap();
        assert_eq!(
            plain,
            SourceRef {
                bucket: "b".into(),
                key: "in/a.png".into()
            }
        );
        let event = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"in/my+photo%281%29.png","size":3}}}]}"#;
        let got = parse_source(event).unwrap();
        assert_eq!(got.key, "in/my photo(1).png");
    }

    #[test]
    fn a_test_event_or_several_records_is_bad_input_with_a_reason() {
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"t","Bucket":"b"}"#;
        match parse_source(test) {
            Err(ProcessError::BadInput { reason }) => assert!(reason.contains("s3:TestEvent")),
            other => panic!("{other:?}"),
        }
        let two = event(&[
            record("b", "a", serde_json::json!({})),
            record("b", "c", serde_json::json!({})),
        ]);
        match parse_source(&two) {
            Err(ProcessError::BadInput { reason }) => {
                assert!(reason.contains("2 records"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_inputs_are_bad_input() {
        for body in [
            "{not json",
            r#"{"bucket":"b"}"#,
            r#"{"Records":[]}"#,
            r#"{"Event":"s3:TestEvent"}"#,
            r#"{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}"#,
        ] {
            match parse_source(body) {
                Err(ProcessError::BadInput { .. }) => {}
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            url_decode("a%2"),
            Err(ProcessError::BadInput { .. })
        ));
    }

    #[test]
    fn s3_job_ids_prefer_version_then_sequencer_then_etag_then_key() {
        let id = |extra| s3_event_job_id(&event(&[record("b", "in/my+photo.png", extra)])).unwrap();
        let all = serde_json::json!({"versionId": "V1", "sequencer": "0A1", "eTag": "e1"});
        assert_eq!(id(all).as_str(), "s3:b:v=V1:in/my photo.png");
        let unversioned =
            serde_json::json!({"versionId": "null", "sequencer": "0A1", "eTag": "e1"});
        assert_eq!(id(unversioned).as_str(), "s3:b:s=0A1:in/my photo.png");
        assert_eq!(
            id(serde_json::json!({"eTag": "e1"})).as_str(),
            "s3:b:e=e1:in/my photo.png"
        );
        assert_eq!(id(serde_json::json!({})).as_str(), "s3:b:-:in/my photo.png");
        // The same event delivered twice (other fields differing, formatted
        // differently) is one job; a new version, sequencer or content is not.
        let seq = |s: &str| serde_json::json!({"sequencer": s, "eTag": "e1"});
        let mut again: serde_json::Value =
            serde_json::from_str(&event(&[record("b", "in/my+photo.png", seq("0A1"))])).unwrap();
        again["Records"][0]["eventTime"] = "later".into();
        let again = serde_json::to_string_pretty(&again).unwrap();
        assert_eq!(s3_event_job_id(&again), Some(id(seq("0A1"))));
        assert_ne!(id(seq("0A1")), id(seq("0A2")));
        assert_ne!(
            id(serde_json::json!({"versionId": "V1"})),
            id(serde_json::json!({"versionId": "V2"}))
        );
        assert_ne!(
            id(serde_json::json!({"eTag": "e1"})),
            id(serde_json::json!({"eTag": "e2"}))
        );
        // Other buckets and keys are other jobs.
        let other_key = s3_event_job_id(&event(&[record("b", "in/other.png", seq("0A1"))]));
        let other_bucket = s3_event_job_id(&event(&[record("c", "in/my+photo.png", seq("0A1"))]));
        assert_ne!(other_key, Some(id(seq("0A1"))));
        assert_ne!(other_bucket, Some(id(seq("0A1"))));
    }

    #[test]
    fn other_bodies_keep_the_default_id() {
        for body in [
            r#"{"bucket":"b","key":"in/a.png"}"#,
            r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#,
            r#"{"Records":[]}"#,
            r#"{"Records":"x"}"#,
            "Records",
            &event(&[
                record("b", "a", serde_json::json!({})),
                record("b", "c", serde_json::json!({})),
            ]),
            &event(&[record("b", "%zz", serde_json::json!({}))]),
        ] {
            assert_eq!(s3_event_job_id(body), None, "{body}");
        }
    }

    #[test]
    fn long_ids_are_hashed_bounded_and_stable() {
        let key = "k/".repeat(400);
        let long = event(&[record("b", &key, serde_json::json!({"sequencer": "01"}))]);
        let id = s3_event_job_id(&long).unwrap();
        // A fixed value (xxh3-128, seed 0, of `s3:b:s=01:k/k/…`): the id
        // names the job's result, so it must not change between builds.
        assert_eq!(id.as_str(), "s3:b:h=fa5dabff07581585b256386ecca9a35a");
        assert_eq!(s3_event_job_id(&long), Some(id.clone()));
        let other = event(&[record("b", &key, serde_json::json!({"sequencer": "02"}))]);
        assert_ne!(s3_event_job_id(&other), Some(id.clone()));
        assert!(id.key_safe().len() <= 80);
    }

    #[test]
    fn a_split_part_gets_the_id_of_a_single_record_delivery() {
        let records: Vec<_> = (0..3)
            .map(|i| {
                record(
                    "b",
                    &format!("in/{i}.png"),
                    serde_json::json!({"sequencer": format!("0{i}")}),
                )
            })
            .collect();
        let parts = split_s3_event(&event(&records)).unwrap();
        assert_eq!(parts.len(), 3);
        for (part, r) in parts.iter().zip(&records) {
            let single = event(std::slice::from_ref(r));
            assert!(s3_event_job_id(part).is_some());
            assert_eq!(s3_event_job_id(part), s3_event_job_id(&single));
            assert_eq!(parse_source(part).unwrap(), parse_source(&single).unwrap());
        }
        assert_eq!(split_s3_event(&event(&records[..1])), None);
        assert_eq!(split_s3_event(r#"{"bucket":"b","key":"k"}"#), None);
    }
}
