//! S3 through `aws-sdk-s3`.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::classify::classify;
use crate::backend::metadata::{decode_value, encode_value};
use crate::backend::{BlobStore, ObjectMeta};
use crate::error::BackendError;

/// S3, any bucket the credentials reach.
#[derive(Debug, Clone)]
pub struct S3Store {
    pub(crate) client: aws_sdk_s3::Client,
}

fn name(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

#[async_trait]
impl BlobStore for S3Store {
    /// Metadata values that are not plain US-ASCII go out RFC 2047-encoded
    /// ([`crate::backend::metadata`]).
    #[tracing::instrument(skip_all, fields(bucket, key, size = body.len()))]
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .set_content_type(meta.content_type)
            .set_metadata(Some(
                meta.metadata
                    .into_iter()
                    .map(|(k, v)| (k, encode_value(&v).into_owned()))
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| classify(e, &name(bucket, key)))?;
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        self.get_limited(bucket, key, usize::MAX).await
    }

    /// Refuses by the response's length before reading, and stops reading
    /// the body as soon as it passes `limit`.
    #[tracing::instrument(skip_all, fields(bucket, key))]
    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        let mut out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, &name(bucket, key)))?;
        let too_large = |actual: usize| BackendError::PayloadTooLarge { actual, limit };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > limit as u64 {
            return Err(too_large(usize::try_from(declared).unwrap_or(usize::MAX)));
        }
        // Reserved up front only up to 8 MiB: a declared length is a claim,
        // and an unlimited read of a huge object must fail by reading, not
        // abort on one allocation.
        let mut buf = bytes::BytesMut::with_capacity(declared.min(8 << 20) as usize);
        while let Some(chunk) = out
            .body
            .try_next()
            .await
            .map_err(|e| BackendError::transient(format!("{}: {e}", name(bucket, key))))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(too_large(buf.len() + chunk.len()));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Metadata values are decoded ([`crate::backend::metadata`]).
    #[tracing::instrument(skip_all, fields(bucket, key))]
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                content_type: out.content_type().map(str::to_owned),
                metadata: out
                    .metadata()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), decode_value(v).into_owned()))
                    .collect(),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(classify(e, &name(bucket, key))),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| classify(e, &format!("s3://{bucket}/{prefix}")))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, &name(bucket, key)))?;
        Ok(())
    }
}
