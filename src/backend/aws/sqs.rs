//! SQS through `aws-sdk-sqs`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName as Msa,
    QueueAttributeName as Qa, SendMessageBatchRequestEntry,
};

use super::classify::{classify, classify_code};
use crate::backend::{
    EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage, MAX_BATCH, MAX_VISIBILITY,
    MAX_WAIT,
};
use crate::error::BackendError;

/// An SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    pub(crate) client: aws_sdk_sqs::Client,
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) arn: String,
}

/// Whole seconds for SQS, rounded up, within `[0, max]`.
fn secs(d: Duration, max: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(max.as_secs()) as i32
}

fn invalid(message: String) -> BackendError {
    BackendError::Invalid { message }
}

impl SqsQueue {
    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The queue's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    fn resource(&self) -> String {
        format!("queue {}", self.name)
    }

    /// Per-entry results in request order, from `successful` ids and
    /// `failed` entries.
    fn entry_results(&self, n: usize, failed: &[BatchResultErrorEntry]) -> Vec<EntryResult> {
        let mut out: Vec<EntryResult> = (0..n).map(|_| Ok(())).collect();
        for f in failed {
            if let Ok(i) = f.id().parse::<usize>() {
                if i < n {
                    out[i] = Err(classify_code(
                        f.code(),
                        f.message().unwrap_or(""),
                        !f.sender_fault(),
                        &self.resource(),
                    ));
                }
            }
        }
        out
    }
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_fifo(&self) -> bool {
        self.name.ends_with(".fifo")
    }

    #[tracing::instrument(skip_all, fields(queue = %self.name, max))]
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(secs(wait, MAX_WAIT))
            .visibility_timeout(secs(visibility, MAX_VISIBILITY))
            .message_attribute_names("All")
            .message_system_attribute_names(Msa::ApproximateReceiveCount)
            .message_system_attribute_names(Msa::MessageGroupId)
            .message_system_attribute_names(Msa::MessageDeduplicationId)
            .send()
            .await
            .map_err(|e| classify(e, &self.resource()))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let system = m.attributes();
                let sys = |k: Msa| system.and_then(|a| a.get(&k)).cloned();
                let attributes = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(ReceivedMessage {
                    message_id: m.message_id()?.to_owned(),
                    receipt_handle: m.receipt_handle()?.to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    attributes,
                    receive_count: sys(Msa::ApproximateReceiveCount)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                    group_id: sys(Msa::MessageGroupId),
                    dedup_id: sys(Msa::MessageDeduplicationId),
                })
            })
            .collect())
    }

    #[tracing::instrument(skip_all, fields(queue = %self.name, n = handles.len()))]
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        let entries = handles
            .iter()
            .enumerate()
            .map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .map_err(|e| invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify(e, &self.resource()))?;
        Ok(self.entry_results(handles.len(), out.failed()))
    }

    #[tracing::instrument(skip_all, fields(queue = %self.name, n = entries.len()))]
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        let batch = entries
            .iter()
            .enumerate()
            .map(|(i, (h, vis))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(secs(*vis, MAX_VISIBILITY))
                    .build()
                    .map_err(|e| invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| classify(e, &self.resource()))?;
        Ok(self.entry_results(entries.len(), out.failed()))
    }

    #[tracing::instrument(skip_all, fields(queue = %self.name, n = messages.len()))]
    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        let n = messages.len();
        let mut entries = Vec::with_capacity(n);
        for (i, m) in messages.into_iter().enumerate() {
            let mut b = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body)
                .set_message_group_id(m.group_id)
                .set_message_deduplication_id(m.dedup_id);
            if let Some(d) = m.delay {
                b = b.delay_seconds(secs(d, Duration::from_secs(900)));
            }
            for (k, v) in m.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                b = b.message_attributes(k, value);
            }
            entries.push(b.build().map_err(|e| invalid(e.to_string()))?);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify(e, &self.resource()))?;
        let mut results: Vec<EntryResult<String>> = (0..n)
            .map(|_| Err(BackendError::transient("no result for this entry")))
            .collect();
        for s in out.successful() {
            if let Ok(i) = s.id().parse::<usize>() {
                if i < n {
                    results[i] = Ok(s.message_id().to_owned());
                }
            }
        }
        for (i, r) in self.entry_results(n, out.failed()).into_iter().enumerate() {
            if let Err(e) = r {
                results[i] = Err(e);
            }
        }
        Ok(results)
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(Qa::ApproximateNumberOfMessages)
            .attribute_names(Qa::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(Qa::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| classify(e, &self.resource()))?;
        let empty = HashMap::new();
        let attrs = out.attributes().unwrap_or(&empty);
        let get = |k: Qa| {
            attrs
                .get(&k)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: get(Qa::ApproximateNumberOfMessages)
                + get(Qa::ApproximateNumberOfMessagesDelayed),
            in_flight: get(Qa::ApproximateNumberOfMessagesNotVisible),
        })
    }
}
