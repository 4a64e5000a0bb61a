//! A processor's result: the bytes to store (or publish) and their type.

use bytes::Bytes;

use crate::error::ProcessError;

/// A processor's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The result's bytes (stored when the pipeline has a result store, else
    /// published as the notification's body when it has a topic).
    pub body: Bytes,
    /// The result's content type.
    pub content_type: Option<String>,
}

impl Output {
    /// No result: the job is simply acknowledged.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Bytes of a content type.
    pub fn bytes(body: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            content_type: Some(content_type.into()),
        }
    }

    /// UTF-8 text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::bytes(text.into(), "text/plain; charset=utf-8")
    }

    /// A value as JSON.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, ProcessError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ProcessError::retry(format!("could not encode the result: {e}")))?;
        Ok(Self::bytes(body, "application/json"))
    }
}
