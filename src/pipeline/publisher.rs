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

pub(crate) struct Publisher {
    shared: Arc<Shared>,
    acker: Addr<Acker>,
}

impl Publisher {
    pub(crate) fn new(shared: Arc<Shared>, acker: Addr<Acker>) -> Self {
        Self { shared, acker }
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
            attributes: HashMap::from([(JOB_ID_ATTRIBUTE.to_owned(), job.id.to_string())]),
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
        let Some(topic) = self.shared.topic.clone() else {
            let settle = msg
                .0
                .into_iter()
                .map(|(l, _)| Settlement::Done(l))
                .collect();
            self.acker.do_send(Settle(settle));
            return;
        };
        let fifo = topic.is_fifo();
        let mut live = Vec::with_capacity(msg.0.len());
        for (lease, announce) in msg.0 {
            if lease.is_cancelled() {
                self.shared.drop_lease(&lease);
            } else {
                live.push((lease, announce));
            }
        }
        while !live.is_empty() {
            let chunk: Vec<_> = live.drain(..live.len().min(MAX_PUBLISH_BATCH)).collect();
            let (leases, batch): (Vec<_>, Vec<_>) = chunk
                .into_iter()
                .map(|(l, a)| {
                    let n = self.notification(&l, a, fifo);
                    (l, n)
                })
                .unzip();
            let topic = topic.clone();
            let attempts = self.shared.config.effect_attempts;
            ctx.spawn(
                async move { with_retries(attempts, || topic.publish_batch(batch.clone())).await }
                    .into_actor(self)
                    .map(move |res, act, _| act.published(leases, res)),
            );
        }
    }
}
