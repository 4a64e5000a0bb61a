//! The embedded topic: fan-out to subscribed queues, raw or in the SNS
//! envelope, with FIFO deduplication.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use tokio::time::Instant;

use super::dedup::DedupWindow;
use super::faults::FaultState;
use super::op::Op;
use super::queue::LocalQueue;
use crate::backend::rules::validate;
use crate::backend::{EntryResult, Notification, OutgoingMessage, Topic};
use crate::error::BackendError;

#[derive(Debug)]
struct Subscription {
    queue: Arc<LocalQueue>,
    raw: bool,
}

/// An embedded topic. Create it with [`super::LocalBackend::create_topic`].
#[derive(Debug)]
pub struct LocalTopic {
    name: String,
    fifo: bool,
    subscriptions: RwLock<Vec<Subscription>>,
    dedup: Mutex<DedupWindow<()>>,
    next_id: AtomicU64,
    faults: Arc<FaultState>,
}

/// The body SNS delivers to a queue when raw delivery is off.
pub(crate) fn sns_envelope(topic: &str, message_id: &str, n: &Notification) -> String {
    let attributes: serde_json::Map<String, serde_json::Value> = n
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!({"Type": "String", "Value": v})))
        .collect();
    serde_json::json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": format!("arn:aws:sns:local:000000000000:{topic}"),
        "Message": n.body,
        "MessageAttributes": attributes,
    })
    .to_string()
}

impl LocalTopic {
    pub(crate) fn new(name: String, fifo: bool, faults: Arc<FaultState>) -> Self {
        Self {
            name,
            fifo,
            subscriptions: RwLock::new(Vec::new()),
            dedup: Mutex::new(DedupWindow::default()),
            next_id: AtomicU64::new(0),
            faults,
        }
    }

    pub(crate) fn subscribe(&self, queue: Arc<LocalQueue>, raw: bool) {
        self.subscriptions
            .write()
            .expect("subscriptions lock")
            .push(Subscription { queue, raw });
    }

    fn publish_one(&self, n: Notification) -> Result<String, BackendError> {
        // Checked before fan-out, as SNS does: an invalid notification
        // reaches no subscriber and records no deduplication id.
        validate(&self.name, &n)?;
        let id = format!(
            "{}-n{:08}",
            self.name,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        if self.fifo {
            let Some(dedup) = n.dedup_id.clone() else {
                return Err(BackendError::Invalid {
                    message: format!("{}: a FIFO topic needs a deduplication id", self.name),
                });
            };
            let now = Instant::now();
            let mut seen = self.dedup.lock().expect("dedup lock");
            seen.prune(now);
            if seen.get(&dedup).is_some() {
                return Ok(id);
            }
            seen.insert(dedup, now, ());
        }
        for sub in self
            .subscriptions
            .read()
            .expect("subscriptions lock")
            .iter()
        {
            let msg = if sub.raw {
                n.clone()
            } else {
                OutgoingMessage {
                    body: sns_envelope(&self.name, &id, &n),
                    attributes: HashMap::new(),
                    group_id: n.group_id.clone(),
                    dedup_id: n.dedup_id.clone(),
                    delay: None,
                }
            };
            sub.queue.enqueue(msg)?;
        }
        Ok(id)
    }
}

#[async_trait]
impl Topic for LocalTopic {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    async fn publish_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.faults.before(Op::Publish, &self.name).await?;
        crate::backend::check_batch(&self.name, &notifications)?;
        Ok(notifications
            .into_iter()
            .map(|n| self.publish_one(n))
            .collect())
    }
}
