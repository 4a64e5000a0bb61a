//! One seed's world: the embedded backend with its queues, topic and
//! buckets, how the jobs are sent, and the pipelines of each worker.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ferry::backend::local::LocalIdempotencyStore;
use ferry::backend::local::{LocalBackend, LocalQueue, LocalTopic, QueueOptions};
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::payload::LargePayloads;
use ferry::prelude::*;
use ferry::JOB_ID_ATTRIBUTE;

use crate::crash::CrashPoint;
use crate::jobs::{Flex, Sending, SentJob};
use crate::plan::{Kind, Plan};
use crate::processor::SweepProcessor;
use crate::record::{
    pipeline_name, register, Log, RecordedBlobs, RecordedQueue, RecordedTopic, Role,
};
use crate::store::RecordedStore;
use crate::{BUCKET, MAX_RECEIVES, PAYLOAD_BUCKET, REDRIVE_AFTER};

/// The queues and topic of one seed.
pub(crate) struct World {
    pub(crate) local: LocalBackend,
    pub(crate) stage1: Arc<LocalQueue>,
    pub(crate) dlq1: Arc<LocalQueue>,
    pub(crate) stage2: Arc<LocalQueue>,
    pub(crate) dlq2: Arc<LocalQueue>,
    pub(crate) payloads: Option<LargePayloads>,
    topic: Arc<LocalTopic>,
    /// The idempotency store every worker shares (used with exactly-once).
    pub(crate) store: Arc<LocalIdempotencyStore>,
    /// What happened, job by job.
    pub(crate) log: Arc<Log>,
}

/// The bucket the pipeline does not trust, and the object in it that
/// hostile pointers aim at.
pub(crate) const SECRETS: (&str, &str) = ("secrets", "db-password");

impl World {
    pub(crate) fn new(plan: &Plan) -> Self {
        let local = LocalBackend::new();
        let named = |base: &str| {
            if plan.fifo {
                format!("{base}.fifo")
            } else {
                base.to_owned()
            }
        };
        let options = QueueOptions {
            fifo: plan.fifo,
            visibility_timeout: plan.visibility,
            ..QueueOptions::default()
        };
        let redrive = |dlq: &Arc<LocalQueue>| QueueOptions {
            redrive: Some((dlq.clone(), REDRIVE_AFTER)),
            ..options.clone()
        };
        let dlq1 = local.create_queue(&named("stage1-dlq"), options.clone());
        let dlq2 = local.create_queue(&named("stage2-dlq"), options.clone());
        let stage1 = local.create_queue(&named("stage1"), redrive(&dlq1));
        let stage2 = local.create_queue(&named("stage2"), redrive(&dlq2));
        let topic = local.create_topic(&named("stage1-done"), plan.fifo);
        local.subscribe(&topic, &stage2, plan.raw_subscription);
        let payloads = plan
            .large_payloads
            .map(|t| LargePayloads::new(local.blobs(), PAYLOAD_BUCKET).threshold(t));
        Self {
            store: Arc::new(local.idempotency_store()),
            local,
            stage1,
            dlq1,
            stage2,
            dlq2,
            payloads,
            topic,
            log: Arc::default(),
        }
    }

    /// Sends every job to stage 1 (faults are off).
    pub(crate) async fn send(&self, plan: &Plan, jobs: &[SentJob]) -> Result<(), String> {
        let blobs = self.local.blobs();
        blobs
            .put(SECRETS.0, SECRETS.1, "hunter2".into(), Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = Vec::new();
        let mut sent_for: HashMap<String, OutgoingMessage> = HashMap::new();
        let mut copies = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            for (n, sending) in j.sends.iter().enumerate() {
                let mut m = match sending {
                    Sending::Body(body) => OutgoingMessage::new(body.clone()),
                    Sending::Foreign => OutgoingMessage::new(
                        serde_json::json!([
                            ferry::payload::POINTER_CLASS,
                            {"s3BucketName": SECRETS.0, "s3Key": SECRETS.1}
                        ])
                        .to_string(),
                    )
                    .attribute(ferry::payload::PAYLOAD_SIZE_ATTRIBUTE, "7"),
                    Sending::CopyOf(victim) => {
                        // Filled in once the victim's message exists.
                        copies.push((messages.len(), victim.clone()));
                        OutgoingMessage::new("")
                    }
                };
                m = m.attribute(JOB_ID_ATTRIBUTE, &j.id);
                if plan.fifo {
                    let dedup = JobId::new(format!("{}#{n}", j.id)).dedup_id("send");
                    m = m.group(format!("group-{}", i % plan.groups)).dedup(dedup);
                }
                if let (Some(p), Sending::Body(_)) = (&self.payloads, sending) {
                    m = p.offload(m).await.map_err(|e| e.to_string())?;
                }
                if matches!(sending, Sending::Body(_)) {
                    sent_for.entry(j.id.clone()).or_insert_with(|| m.clone());
                }
                messages.push(m);
            }
        }
        for (at, victim) in copies {
            let theirs = sent_for.get(&victim).ok_or("no message for a victim")?;
            let m = &mut messages[at];
            m.body = theirs.body.clone();
            for (k, v) in &theirs.attributes {
                if k != JOB_ID_ATTRIBUTE {
                    m.attributes.insert(k.clone(), v.clone());
                }
            }
        }
        for range in ferry::backend::batches(&messages) {
            let sent = self
                .stage1
                .send_batch(messages[range].to_vec())
                .await
                .map_err(|e| format!("sending the jobs failed: {e}"))?;
            for r in sent {
                r.map_err(|e| format!("sending a job failed: {e}"))?;
            }
        }
        Ok(())
    }

    /// The pipelines of one worker: stage 1 and stage 2, on recording
    /// wrappers of the seed's queues, topic and result store.
    /// `worker` names the worker in the records; `crash` is its kill
    /// switch, if the seed kills it.
    pub(crate) fn pipelines(
        &self,
        plan: &Plan,
        worker: u8,
        crash: Option<Arc<CrashPoint>>,
    ) -> [Pipeline; 2] {
        let (visibility, flush) = (plan.visibility, plan.flush_interval);
        let receive_wait = plan.receive_wait;
        let max_lease_age = plan.max_lease_age;
        let tune = move |c: &mut PipelineConfig| {
            c.workers = 2;
            if let Some(age) = max_lease_age {
                c.max_lease_age = age;
            }
            c.hang_grace = visibility;
            c.visibility_timeout = visibility;
            c.receive_wait = receive_wait;
            c.retry_backoff_base = Duration::from_millis(20);
            c.retry_backoff_max = Duration::from_millis(200);
            c.flush_interval = flush;
            c.max_receives = MAX_RECEIVES;
            c.restart.backoff_base = Duration::from_millis(1);
            c.restart.backoff_max = Duration::from_millis(20);
        };
        let processor = |stage| SweepProcessor {
            stage,
            worker,
            seed: plan.seed,
            faults: plan.processor,
            visibility,
            hang: plan.max_lease_age.unwrap_or_default() + visibility * 3,
            log: self.log.clone(),
            crash: crash.clone(),
        };
        let store = plan.exactly_once.then(|| {
            Arc::new(RecordedStore {
                inner: self.store.clone(),
                log: self.log.clone(),
                worker,
                crash: crash.clone(),
            })
        });
        let log = &self.log;
        let queue = |q: &Arc<LocalQueue>, stage, role| {
            Arc::new(RecordedQueue {
                inner: q.clone(),
                log: log.clone(),
                stage,
                role,
                worker,
                crash: crash.clone(),
            })
        };
        let results = Arc::new(RecordedBlobs {
            inner: self.local.blobs(),
            log: log.clone(),
            crash: crash.clone(),
        });
        let topic = Arc::new(RecordedTopic {
            inner: self.topic.clone(),
            log: log.clone(),
            crash: crash.clone(),
        });
        let named = |stage| {
            let name = pipeline_name(plan.seed, stage);
            register(&name, log, stage);
            Pipeline::new(name)
        };
        let extras = |p: Pipeline, kind: Kind, processor: SweepProcessor| {
            let mut p = match kind {
                Kind::Sync => p.processor(move || processor.clone()),
                Kind::Async => p.async_processor(processor),
                Kind::Batch => p.batch_processor(
                    processor,
                    BatchOptions {
                        max_jobs: 4,
                        max_wait: Duration::from_millis(5),
                    },
                ),
            };
            if let Some(s) = &store {
                p = p.idempotency(s.clone());
            }
            if let Some(l) = &self.payloads {
                p = p.large_payloads(l.clone());
            }
            p.configure(tune)
        };
        [
            extras(
                named(1)
                    .source(queue(&self.stage1, 1, Role::Source))
                    .dead_letter(queue(&self.dlq1, 1, Role::DeadLetter))
                    .results(results.clone(), BUCKET, "stage1/", "txt")
                    .topic(topic),
                plan.kinds[0],
                processor(1),
            ),
            extras(
                named(2)
                    .source(queue(&self.stage2, 2, Role::Source))
                    .dead_letter(queue(&self.dlq2, 2, Role::DeadLetter))
                    .results(results, BUCKET, "stage2/", "txt"),
                plan.kinds[1],
                processor(2),
            ),
        ]
    }

    /// Whether every job has reached its end: good jobs' stage-2 results
    /// stored, bad inputs in their dead-letter queues, both queues empty.
    /// Reads without backend calls, so it draws nothing from the faults.
    pub(crate) async fn settled(&self, jobs: &[SentJob]) -> bool {
        if self.stage1.depth_now().total() > 0 || self.stage2.depth_now().total() > 0 {
            return false;
        }
        let Ok(done) = self.local.blobs().list(BUCKET, "stage2/").await else {
            return false;
        };
        let done: BTreeSet<String> = done.into_iter().collect();
        let dead = |q: &LocalQueue| -> BTreeSet<String> {
            q.snapshot().iter().map(job_of_entry).collect()
        };
        let (dead1, dead2) = (dead(&self.dlq1), dead(&self.dlq2));
        jobs.iter().all(|j| match (j.bad_at, j.flex) {
            (0, Flex::ResultOrMissing) => {
                done.contains(&result_key(2, &j.id)) || dead1.contains(&j.id)
            }
            (0, _) => done.contains(&result_key(2, &j.id)),
            (1, _) => dead1.contains(listed(&j.id)),
            _ => dead2.contains(&j.id),
        })
    }
}

/// A job's id as its dead-letter entry names it (cut to the limit).
pub(crate) fn listed(id: &str) -> &str {
    &id[..id.len().min(ferry::MAX_JOB_ID_BYTES)]
}

pub(crate) fn result_key(stage: u8, id: &str) -> String {
    format!("stage{stage}/{}.txt", JobId::new(id).key_safe())
}

/// The job a stored message stands for, as ferry reads it: its
/// `ferry-job-id` (inside an SNS envelope too), else its message id.
pub(crate) fn job_of_entry(m: &ferry::backend::local::StoredMessage) -> String {
    Job::from_message(ferry::backend::ReceivedMessage {
        message_id: m.message_id.clone(),
        receipt_handle: String::new(),
        body: m.body.clone(),
        attributes: m.attributes.clone(),
        receive_count: m.receive_count,
        group_id: None,
        dedup_id: None,
    })
    .id
    .to_string()
}

/// A list for a message, shortened.
pub(crate) fn some<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    let mut out = all.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > 6 {
        let _ = write!(out, ", … ({} in all)", all.len());
    }
    out
}
