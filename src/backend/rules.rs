//! What SQS and SNS accept in a message: the checks the embedded queue and
//! topic apply to every send (refusing as the services do) and the
//! producer applies before it sends (refusing with a clear error instead).

use super::{message_size, sqs_allows, OutgoingMessage, MAX_MESSAGE_ATTRIBUTES, MAX_MESSAGE_BYTES};
use crate::error::BackendError;

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
