//! The publisher: announces each stored result on the topic, in batches of
//! ten, with the job id as an attribute and a deduplication id derived from
//! it (DESIGN rule 2). A pipeline without a topic settles straight away.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::acker::Acker;
use super::messages::{Announce, Settle, Settlement, Uploaded};
use super::{with_retries, Shared};
use crate::backend::{Notification, MAX_PUBLISH_BATCH};
use crate::error::BackendError;
use crate::job::JOB_ID_ATTRIBUTE;
use crate::lease::Lease;
use crate::stats::Stats;
use crate::trace::TRACEPARENT_ATTRIBUTE;

pub(crate) struct Publisher {
    shared: Arc<Shared>,
    acker: Addr<Acker>,
    /// Announcements waiting to fill a batch of ten.
    waiting: Vec<(Arc<Lease>, Announce)>,
    timer: Option<SpawnHandle>,
}

impl Publisher {
    pub(crate) fn new(shared: Arc<Shared>, acker: Addr<Acker>) -> Self {
        Self {
            shared,
            acker,
            waiting: Vec::new(),
            timer: None,
        }
    }

    /// Publishes full batches now (or everything, when `all`); schedules
    /// the rest after the flush interval.
    fn flush(&mut self, all: bool, ctx: &mut Context<Self>) {
        let Some(topic) = self.shared.topic.clone() else {
            return;
        };
        let fifo = topic.is_fifo();
        let all = all || self.shared.nothing_else_in_flight(self.waiting.len());
        let min = if all { 1 } else { MAX_PUBLISH_BATCH };
        while self.waiting.len() >= min {
            let n = self.waiting.len().min(MAX_PUBLISH_BATCH);
            let chunk: Vec<_> = self.waiting.drain(..n).collect();
            let mut leases = Vec::with_capacity(n);
            let mut batch = Vec::with_capacity(n);
            for (lease, announce) in chunk {
                if lease.is_cancelled() {
                    self.shared.drop_lease(&lease);
                    continue;
                }
                batch.push(self.notification(&lease, announce, fifo));
                leases.push(lease);
            }
            if leases.is_empty() {
                continue;
            }
            let topic = topic.clone();
            let attempts = self.shared.config.effect_attempts;
            let payloads = self.shared.payloads.clone();
            ctx.spawn(
                async move {
                    let batch = match payloads {
                        Some(p) => with_retries(attempts, || p.offload_all(batch.clone())).await?,
                        None => batch,
                    };
                    with_retries(attempts, || topic.publish_batch(batch.clone())).await
                }
                .into_actor(self)
                .map(move |res, act, _| act.published(leases, res)),
            );
        }
        if !self.waiting.is_empty() && self.timer.is_none() {
            let every = self.shared.config.flush_interval;
            self.timer = Some(ctx.run_later(every, |act, ctx| {
                act.timer = None;
                act.flush(true, ctx);
            }));
        }
    }

    fn notification(&self, lease: &Lease, announce: Announce, fifo: bool) -> Notification {
        let job = &lease.job;
        let body = match announce {
            Announce::Stored(notice) => {
                serde_json::to_string(&notice).expect("a notice always serialises")
            }
            Announce::Inline(output) => String::from_utf8_lossy(&output.body).into_owned(),
        };
        Notification {
            body,
            attributes: HashMap::from([
                (JOB_ID_ATTRIBUTE.to_owned(), job.id.to_string()),
                (TRACEPARENT_ATTRIBUTE.to_owned(), job.trace.traceparent()),
            ]),
            group_id: fifo.then(|| job.group_id.clone().unwrap_or_else(|| job.id.to_string())),
            dedup_id: fifo.then(|| job.id.dedup_id(&self.shared.name)),
            delay: None,
        }
    }

    fn published(
        &mut self,
        leases: Vec<Arc<Lease>>,
        res: Result<Vec<Result<String, BackendError>>, BackendError>,
    ) {
        let results: Vec<Result<(), BackendError>> = match res {
            Ok(r) => r.into_iter().map(|e| e.map(|_| ())).collect(),
            Err(e) => leases.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut settle = Vec::with_capacity(leases.len());
        for (lease, r) in leases.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    Stats::inc(&self.shared.stats.published);
                    settle.push(Settlement::Done(lease));
                }
                Err(e) => settle.push(Settlement::Retry {
                    lease,
                    reason: format!("publishing the notification: {e}"),
                    after: None,
                }),
            }
        }
        self.acker.do_send(Settle(settle));
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;
}

impl Handler<Uploaded> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Uploaded, ctx: &mut Context<Self>) {
        if self.shared.topic.is_none() {
            let settle = msg
                .0
                .into_iter()
                .map(|(l, _)| Settlement::Done(l))
                .collect();
            self.acker.do_send(Settle(settle));
            return;
        }
        self.waiting.extend(msg.0);
        self.flush(false, ctx);
    }
}
