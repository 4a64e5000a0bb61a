//! What SQS and SNS accept in a message: the checks the embedded queue and
//! topic apply to every send (refusing as the services do) and the
//! producer applies before it sends (refusing with a clear error instead).

use std::time::Duration;

use super::message::OutgoingMessage;
use crate::error::BackendError;

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

/// The longest FIFO message group id or deduplication id SQS takes.
pub const MAX_FIFO_ID_CHARS: usize = 128;
/// The longest message attribute name SQS takes.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;

/// Why SQS would refuse `id` as a FIFO message group id or deduplication
/// id (`what` names which), if it would: 1 to 128 characters, each an ASCII
/// letter or digit or punctuation (`` !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ ``).
pub fn fifo_id_problem(what: &str, id: &str) -> Option<String> {
    if id.is_empty() || id.len() > MAX_FIFO_ID_CHARS {
        return Some(format!(
            "a {what} of {} characters (1 to {MAX_FIFO_ID_CHARS} allowed)",
            id.chars().count()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b.is_ascii_punctuation())
    {
        return Some(format!(
            "a {what} with a character SQS does not allow (ASCII letters, digits and punctuation only)"
        ));
    }
    None
}

/// Why SQS would refuse `name` as a message attribute name, if it would:
/// 1 to 256 characters of ASCII letters, digits, `_`, `-` and `.`; no `.`
/// at either end nor two in a row; not starting with `AWS.` or `Amazon.`
/// (any case).
pub fn attribute_name_problem(name: &str) -> Option<String> {
    let shown: String = name.chars().take(80).collect();
    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_CHARS {
        return Some(format!(
            "an attribute name of {} characters (1 to {MAX_ATTRIBUTE_NAME_CHARS} allowed)",
            name.chars().count()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Some(format!(
            "attribute name {shown:?}: only ASCII letters, digits, `_`, `-` and `.`"
        ));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Some(format!(
            "attribute name {shown:?}: no `.` at either end nor two in a row"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aws.") || lower.starts_with("amazon.") {
        return Some(format!(
            "attribute name {shown:?}: `AWS.` and `Amazon.` are reserved"
        ));
    }
    None
}

/// Checks one message as SQS (and SNS, for a notification) does before
/// accepting it: at most [`MAX_MESSAGE_ATTRIBUTES`] attributes, none with an
/// empty name or value, only characters SQS allows, and at most
/// [`MAX_MESSAGE_BYTES`] as SQS counts it ([`message_size`]). `on` names
/// the queue or topic.
pub(crate) fn validate(on: &str, m: &OutgoingMessage) -> Result<(), BackendError> {
    let n = m.attributes.len();
    if n > MAX_MESSAGE_ATTRIBUTES {
        return Err(BackendError::Invalid {
            message: format!(
                "{on}: the message has {n} message attributes; at most {MAX_MESSAGE_ATTRIBUTES}"
            ),
        });
    }
    let empty = m
        .attributes
        .iter()
        .filter(|(k, v)| k.is_empty() || v.is_empty())
        // The first by name, so the error is the same every time.
        .min_by(|a, b| a.0.cmp(b.0));
    if let Some((name, _)) = empty {
        let message = if name.is_empty() {
            format!("{on}: a message attribute has an empty name")
        } else {
            format!("{on}: message attribute `{name}` has an empty value")
        };
        return Err(BackendError::Invalid { message });
    }
    let bad_text = std::iter::once(("the body", m.body.as_str()))
        .chain(m.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .find(|(_, text)| !text.chars().all(sqs_allows));
    if let Some((what, _)) = bad_text {
        return Err(BackendError::Invalid {
            message: format!(
                "{on}: {} has a character SQS does not allow",
                if what == "the body" {
                    what.to_owned()
                } else {
                    format!("message attribute `{what}`")
                }
            ),
        });
    }
    let size = message_size(&m.body, &m.attributes);
    if size > MAX_MESSAGE_BYTES {
        return Err(BackendError::PayloadTooLarge {
            actual: size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_ids_as_sqs_takes_them() {
        assert_eq!(fifo_id_problem("group", "tenant-7"), None);
        assert_eq!(
            fifo_id_problem("group", "a!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~z"),
            None
        );
        assert_eq!(fifo_id_problem("group", &"g".repeat(128)), None);
        for bad in ["", "has space", "café", "tab\t", &"g".repeat(129)] {
            assert!(fifo_id_problem("group", bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn attribute_names_as_sqs_takes_them() {
        for ok in ["tenant", "ferry-job-id", "a.b_c-D9", &"n".repeat(256)] {
            assert_eq!(attribute_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "has space",
            "ümlaut",
            ".lead",
            "trail.",
            "a..b",
            "AWS.x",
            "amazon.y",
            &"n".repeat(257),
        ] {
            assert!(attribute_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
