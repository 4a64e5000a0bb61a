//! S3 user metadata on the wire: the encoding that keeps every value
//! US-ASCII, as S3 requires of `x-amz-meta-*` headers.
//!
//! A value ferry writes (the result's `ferry-job-id`, whose job id may come
//! from an S3 key such as `input/café-016.png`) goes out unchanged when it
//! is plain printable US-ASCII, and otherwise as RFC 2047 encoded words —
//! the form S3 itself returns non-ASCII metadata in:
//!
//! - **Unchanged**: every character in U+0020–U+007E, no space at either
//!   end, and no `=?` anywhere. Existing ASCII ids are byte-identical.
//! - **Encoded**: the UTF-8 bytes, cut at character boundaries into pieces
//!   of at most 45 bytes, each written `=?UTF-8?B?<base64, padded>?=` (at
//!   most 75 characters), the words joined by one space. A value holding
//!   `=?` is encoded even when ASCII, so that no value written unchanged
//!   reads as encoded words: decoding always gives back what was encoded.
//!
//! [`decode_value`] reads what [`encode_value`] writes and what S3 or
//! another client may have written: a value made only of encoded words
//! (charset `UTF-8`, `US-ASCII` or `ISO-8859-1`, any case; `B` or `Q`
//! encoding; the whitespace between words ignored) is decoded; any other
//! value is returned as it is. Another reader gets the id back with any
//! MIME header decoder — in Python, `str(email.header.make_header(
//! email.header.decode_header(value)))`.
//!
//! The S3 backend encodes every metadata value it puts and decodes every
//! value it reads; [`ObjectMeta::metadata`](super::ObjectMeta::metadata)
//! always holds the values as ferry meant them.

use std::borrow::Cow;

/// The longest encoded word RFC 2047 allows.
const MAX_WORD: usize = 75;
/// Bytes of a value per encoded word: `=?UTF-8?B?` and `?=` take 12 of the
/// 75 characters, and 63 characters of base64 hold 15 groups of 3 bytes.
const WORD_BYTES: usize = (MAX_WORD - 12) / 4 * 3;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Whether `value` goes on the wire as it is (see the module's rules).
fn plain(value: &str) -> bool {
    value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.contains("=?")
}

/// A metadata value as ferry writes it to S3: unchanged when it is plain
/// printable US-ASCII (no space at either end, no `=?`), otherwise RFC 2047
/// encoded words `=?UTF-8?B?…?=` (module documentation).
pub fn encode_value(value: &str) -> Cow<'_, str> {
    if plain(value) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() * 2);
    let mut rest = value;
    while !rest.is_empty() {
        let mut cut = rest.len().min(WORD_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("=?UTF-8?B?");
        base64_encode(piece.as_bytes(), &mut out);
        out.push_str("?=");
        rest = tail;
    }
    Cow::Owned(out)
}

/// A metadata value as read from S3, decoded: a value made only of RFC 2047
/// encoded words gives the text they encode; any other value (or one that
/// does not decode) is returned as it is.
pub fn decode_value(value: &str) -> Cow<'_, str> {
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace());
    if !trimmed.starts_with("=?") {
        return Cow::Borrowed(value);
    }
    match decode_words(trimmed) {
        Some(text) => Cow::Owned(text),
        None => Cow::Borrowed(value),
    }
}

/// The text of a run of encoded words, or `None` if `value` is anything else.
fn decode_words(value: &str) -> Option<String> {
    let mut out = String::new();
    // Bytes of consecutive words in one charset are joined before they are
    // read, so a character split across two words still decodes.
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_latin1 = false;
    let flush = |bytes: &mut Vec<u8>, latin1: bool, out: &mut String| -> Option<()> {
        if latin1 {
            out.extend(bytes.iter().map(|b| char::from(*b)));
        } else {
            out.push_str(std::str::from_utf8(bytes).ok()?);
        }
        bytes.clear();
        Some(())
    };
    let mut rest = value;
    while !rest.is_empty() {
        let word = rest.strip_prefix("=?")?;
        let (charset, word) = word.split_once('?')?;
        let (encoding, word) = word.split_once('?')?;
        let end = word.find("?=")?;
        let (text, after) = (&word[..end], &word[end + 2..]);
        // RFC 2231 allows a language after the charset: `UTF-8*en`.
        let charset = charset.split('*').next().unwrap_or("");
        let latin1 =
            if charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii") {
                false
            } else if charset.eq_ignore_ascii_case("iso-8859-1") {
                true
            } else {
                return None;
            };
        if latin1 != pending_latin1 {
            flush(&mut pending, pending_latin1, &mut out)?;
            pending_latin1 = latin1;
        }
        if encoding.eq_ignore_ascii_case("b") {
            base64_decode(text, &mut pending)?;
        } else if encoding.eq_ignore_ascii_case("q") {
            q_decode(text, &mut pending)?;
        } else {
            return None;
        }
        let next = after.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if next.len() == after.len() && !next.is_empty() {
            // Words must be separated by whitespace.
            return None;
        }
        rest = next;
    }
    flush(&mut pending, pending_latin1, &mut out)?;
    Some(out)
}

fn base64_encode(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

fn base64_decode(text: &str, out: &mut Vec<u8>) -> Option<()> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    for (i, group) in text.chunks(4).enumerate() {
        let last = i + 1 == text.len() / 4;
        let pad = group.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for c in &group[..4 - pad] {
            let v = BASE64.iter().position(|a| a == c)? as u32;
            n = n << 6 | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(())
}

fn q_decode(text: &str, out: &mut Vec<u8>) -> Option<()> {
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'!'..=b'~' => out.push(b),
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_values_are_unchanged() {
        for v in [
            "job-1",
            "input/a b.png",
            "",
            "out/x%20y",
            "a?b=c",
            "=",
            "?=",
        ] {
            assert!(matches!(encode_value(v), Cow::Borrowed(s) if s == v), "{v}");
            assert!(matches!(decode_value(v), Cow::Borrowed(s) if s == v), "{v}");
        }
    }

    #[test]
    fn fixed_encodings() {
        assert_eq!(
            encode_value("input/café-016.png"),
            "=?UTF-8?B?aW5wdXQvY2Fmw6ktMDE2LnBuZw==?="
        );
        assert_eq!(encode_value("é"), "=?UTF-8?B?w6k=?=");
        assert_eq!(encode_value("日本"), "=?UTF-8?B?5pel5pys?=");
        // Control characters, spaces at the ends and `=?` are encoded too.
        assert_eq!(encode_value("a\tb"), "=?UTF-8?B?YQli?=");
        assert_eq!(encode_value(" a"), "=?UTF-8?B?IGE=?=");
        assert_eq!(encode_value("=?x?="), "=?UTF-8?B?PT94Pz0=?=");
        // Long values: words of at most 75 characters, whole characters each.
        let long = "é".repeat(100);
        let encoded = encode_value(&long);
        assert!(encoded.is_ascii());
        for word in encoded.split(' ') {
            assert!(word.len() <= MAX_WORD, "{word}");
            assert!(
                word.starts_with("=?UTF-8?B?") && word.ends_with("?="),
                "{word}"
            );
        }
        assert_eq!(encoded.split(' ').count(), 5, "{encoded}");
        assert_eq!(decode_value(&encoded), long);
    }

    #[test]
    fn round_trips() {
        let values = [
            "input/café-016.png",
            "a",
            "ab",
            "abc",
            "naïve résumé 🚀 done",
            " leading",
            "trailing ",
            "tab\tline\nreturn\r",
            "=?UTF-8?B?YQ==?=",
            "x=?y",
            &"ü".repeat(128),
            &"a🚀".repeat(51),
        ];
        for v in values {
            let encoded = encode_value(v);
            assert!(
                encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                "{encoded}"
            );
            assert_eq!(decode_value(&encoded), v, "{encoded}");
        }
    }

    #[test]
    fn reads_what_s3_and_other_clients_write() {
        // Q encoding, lower case, a character split across two words, and
        // the folding whitespace between words.
        assert_eq!(decode_value("=?utf-8?q?caf=C3=A9_016?="), "café 016");
        assert_eq!(
            decode_value("=?UTF-8?B?Y2Fmww==?=  =?UTF-8?B?qQ==?="),
            "café"
        );
        assert_eq!(decode_value("=?ISO-8859-1?Q?caf=E9?="), "café");
        assert_eq!(decode_value("=?UTF-8*en?B?w6k=?="), "é");
        // Not encoded words, or broken ones: as they are.
        for v in [
            "=?UTF-8?B?w6k=?=x",
            "=?UTF-8?B?w6k=?==?UTF-8?B?w6k=?=",
            "=?KOI8-R?B?w6k=?=",
            "=?UTF-8?B?w6k?=",
            "=?UTF-8?X?abc?=",
            "=?UTF-8?B?/w==?=",
            "=?UTF-8?B",
        ] {
            assert_eq!(decode_value(v), v);
        }
    }
}
