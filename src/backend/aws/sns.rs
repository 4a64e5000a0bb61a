//! SNS through `aws-sdk-sns`.

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::classify::{classify, classify_code};
use crate::backend::{EntryResult, Notification, Topic};
use crate::error::BackendError;

/// An SNS topic.
#[derive(Debug, Clone)]
pub struct SnsTopic {
    pub(crate) client: aws_sdk_sns::Client,
    pub(crate) arn: String,
}

impl SnsTopic {
    /// The topic's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }
}

fn invalid(e: impl std::fmt::Display) -> BackendError {
    BackendError::Invalid {
        message: e.to_string(),
    }
}

#[async_trait]
impl Topic for SnsTopic {
    fn name(&self) -> &str {
        &self.arn
    }

    fn is_fifo(&self) -> bool {
        self.arn.ends_with(".fifo")
    }

    #[tracing::instrument(skip_all, fields(topic = %self.arn, n = notifications.len()))]
    async fn publish_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        let n = notifications.len();
        let mut entries = Vec::with_capacity(n);
        for (i, m) in notifications.into_iter().enumerate() {
            let mut b = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(m.body)
                .set_message_group_id(m.group_id)
                .set_message_deduplication_id(m.dedup_id);
            for (k, v) in m.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(invalid)?;
                b = b.message_attributes(k, value);
            }
            entries.push(b.build().map_err(invalid)?);
        }
        let resource = format!("topic {}", self.arn);
        let out = self
            .client
            .publish_batch()
            .topic_arn(&self.arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify(e, &resource))?;
        let mut results: Vec<EntryResult<String>> = (0..n)
            .map(|_| Err(BackendError::transient("no result for this entry")))
            .collect();
        for s in out.successful() {
            if let Some(i) = s.id().and_then(|id| id.parse::<usize>().ok()) {
                if i < n {
                    results[i] = Ok(s.message_id().unwrap_or_default().to_owned());
                }
            }
        }
        for f in out.failed() {
            if let Ok(i) = f.id().parse::<usize>() {
                if i < n {
                    results[i] = Err(classify_code(
                        f.code(),
                        f.message().unwrap_or(""),
                        !f.sender_fault(),
                        &resource,
                    ));
                }
            }
        }
        Ok(results)
    }
}
