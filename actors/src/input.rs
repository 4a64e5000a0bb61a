//! Stage-1 input: an S3 event notification or `{"bucket","key"}`.

use ferry::ProcessError;
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

/// Reads a stage-1 message. `Ok(None)` is S3's test event, which needs no
/// work; anything else that names no single object is bad input.
pub fn parse_source(body: &str) -> Result<Option<SourceRef>, ProcessError> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ProcessError::bad_input(format!("malformed message: {e}")))?;
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(None);
    }
    if value.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(value)
            .map_err(|e| ProcessError::bad_input(format!("malformed S3 event: {e}")))?;
        let [record] = event.records.as_slice() else {
            return Err(ProcessError::bad_input(format!(
                "S3 event with {} records; one expected",
                event.records.len()
            )));
        };
        return Ok(Some(SourceRef {
            bucket: record.s3.bucket.name.clone(),
            key: url_decode(&record.s3.object.key)?,
        }));
    }
    let plain: Plain = serde_json::from_value(value).map_err(|e| {
        ProcessError::bad_input(format!(
            "malformed message: expected an S3 event or {{\"bucket\",\"key\"}}: {e}"
        ))
    })?;
    Ok(Some(SourceRef {
        bucket: plain.bucket,
        key: plain.key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_s3_event_forms() {
        let plain = parse_source(r#"{"bucket":"b","key":"in/a.png"}"#).unwrap();
        assert_eq!(
            plain,
            Some(SourceRef {
                bucket: "b".into(),
                key: "in/a.png".into()
            })
        );
        let event = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"in/my+photo%281%29.png","size":3}}}]}"#;
        let got = parse_source(event).unwrap().unwrap();
        assert_eq!(got.key, "in/my photo(1).png");
        assert_eq!(parse_source(r#"{"Event":"s3:TestEvent"}"#).unwrap(), None);
    }

    #[test]
    fn malformed_inputs_are_bad_input() {
        for body in [
            "{not json",
            r#"{"bucket":"b"}"#,
            r#"{"Records":[]}"#,
            r#"{"bucket":"b","key":"%zz"}"#,
        ] {
            match parse_source(body) {
                Err(ProcessError::BadInput { .. }) => {}
                Ok(_) if body.contains("%zz") => {}
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            url_decode("a%2"),
            Err(ProcessError::BadInput { .. })
        ));
    }
}
