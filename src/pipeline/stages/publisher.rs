//! The publisher: announces each stored result on the topic, in batches of
//! ten, with the job id as an attribute and a deduplication id derived from
//! it (DESIGN rule 2). It owns the Stored state: on restart it announces
//! every Stored lease again (a notice is a function of the job id).

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::backend::{Notification, MAX_PUBLISH_BATCH};
use crate::backoff::with_retries;
use crate::error::BackendError;
use crate::job::{ResultNotice, JOB_ID_ATTRIBUTE};
use crate::lease::{Ending, Lease, LeaseState};
use crate::pipeline::messages::{Restart, Uploaded};
use crate::pipeline::next::{Next, Routes};
use crate::pipeline::shared::Shared;
use crate::stats::Stats;
use crate::trace::TRACEPARENT_ATTRIBUTE;

pub(crate) struct Publisher {
    shared: Arc<Shared>,
    /// Where what its steps hand on goes.
    routes: Routes,
    /// Stored leases waiting to fill a batch of ten.
    waiting: Vec<Arc<Lease>>,
    timer: Option<SpawnHandle>,
}

impl Publisher {
    pub(crate) fn new(shared: Arc<Shared>, routes: Routes) -> Self {
        Self {
            shared,
            routes,
            waiting: Vec::new(),
            timer: None,
        }
    }

    /// Publishes full batches now (or everything, when `all`); schedules
    /// the rest after the flush interval.
    fn flush(&mut self, all: bool, ctx: &mut Context<Self>) {
        let Some(topic) = self.shared.sinks.topic.clone() else {
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
            let mut lost = Next::none();
            for lease in chunk {
                if lease.state() != LeaseState::Stored
                    || self
                        .shared
                        .lost_before(&lease, "publishing the notification", &mut lost)
                {
                    continue;
                }
                let Some(n) = self.notification(&lease, fifo) else {
                    continue;
                };
                batch.push(n);
                leases.push(lease);
            }
            self.routes.send(lost);
            if leases.is_empty() {
                continue;
            }
            let topic = topic.clone();
            let held = leases.clone();
            let attempts = self.shared.config.effect_attempts;
            let payloads = self.shared.sinks.payloads.clone();
            ctx.spawn(
                async move {
                    let batch = match payloads {
                        Some(p) => with_retries(attempts, || p.offload_all(batch.clone())).await?,
                        None => batch,
                    };
                    // Offloaded or not, notifications can be large: one
                    // call per batch within the request's limit.
                    let mut answers = Vec::with_capacity(batch.len());
                    for range in crate::backend::batches(&batch) {
                        let part = &batch[range.clone()];
                        let part_leases = &held[range];
                        let res = with_retries(attempts, || {
                            // No retry once a lease of the batch was lost
                            // or lapsed.
                            let lost = part_leases
                                .iter()
                                .any(|l| crate::pipeline::run::deadline::gone(l));
                            let (topic, part) = (topic.clone(), part.to_vec());
                            async move {
                                if lost {
                                    // Not the other jobs' doing: they wait,
                                    // charged nothing.
                                    return Err(BackendError::transient(
                                        "a lease of the batch was lost",
                                    ));
                                }
                                if crate::sabotage::on(crate::sabotage::Sabotage::SkipPublish) {
                                    return Ok(part.iter().map(|_| Ok(String::new())).collect());
                                }
                                topic.publish_batch(part).await
                            }
                        })
                        .await;
                        match res {
                            Ok(r) => answers.extend(r),
                            Err(e) => answers.extend(part.iter().map(|_| Err(e.clone()))),
                        }
                    }
                    Ok(answers)
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

    /// A Stored lease's notification: the stored result's notice, or the
    /// output itself when the pipeline stores no results.
    fn notification(&self, lease: &Lease, fifo: bool) -> Option<Notification> {
        let job = &lease.job;
        let body = match &self.shared.sinks.results {
            Some(store) => serde_json::to_string(&ResultNotice {
                job_id: job.id.clone(),
                pipeline: self.shared.name.to_string(),
                bucket: store.bucket.clone(),
                key: store.key(&job.id),
            })
            .expect("a notice always serialises"),
            None => String::from_utf8_lossy(&lease.output()?.body).into_owned(),
        };
        Some(Notification {
            body,
            attributes: HashMap::from([
                (JOB_ID_ATTRIBUTE.to_owned(), job.id.to_string()),
                (TRACEPARENT_ATTRIBUTE.to_owned(), job.trace.traceparent()),
            ]),
            group_id: fifo.then(|| job.group_id.clone().unwrap_or_else(|| job.id.to_string())),
            dedup_id: fifo.then(|| job.id.dedup_id(&self.shared.name)),
            delay: None,
        })
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
        let mut next = Next::none();
        for (lease, r) in leases.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    Stats::inc(&self.shared.stats.published);
                    settle.push((
                        lease,
                        Ending::Delete {
                            dead_lettered: false,
                        },
                    ));
                }
                Err(_)
                    if self.shared.lost_before(
                        &lease,
                        "publishing the notification",
                        &mut next,
                    ) => {}
                Err(e) => settle.push((
                    lease,
                    crate::pipeline::lifecycle::effect_failed("publishing the notification", &e),
                )),
            }
        }
        self.routes.send(next.and(self.shared.settle(settle)));
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;
}

impl actix::Supervised for Publisher {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Batches in flight were dropped: announce every Stored lease again.
        self.timer = None;
        self.waiting.clear();
        let stored = self.shared.life.restart_owner(&[LeaseState::Stored]);
        self.waiting
            .extend(stored.into_iter().filter(|l| l.take_in()));
        self.flush(false, ctx);
    }
}

impl Handler<Restart> for Publisher {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for Publisher {
    const NAME: &'static str = "publisher";
    const OWNS: Option<crate::lease::Owner> = Some(crate::lease::Owner::Publisher);
}

impl Handler<Uploaded> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Uploaded, ctx: &mut Context<Self>) {
        self.waiting.extend(
            msg.0
                .into_iter()
                .filter(|l| l.state() == LeaseState::Stored && l.take_in()),
        );
        self.flush(false, ctx);
    }
}
