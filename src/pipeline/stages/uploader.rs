//! The uploader: stores each result under a key derived from the job id,
//! tagged with the job id (DESIGN rule 2), and for redelivered jobs first
//! checks whether an earlier attempt already stored it (rule 3). It owns the
//! Processed and Probing states: on restart it stores or probes again every
//! lease in them.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::backend::ObjectMeta;
use crate::backoff::with_retries;
use crate::job::RESULT_JOB_TAG;
use crate::lease::{Lease, LeaseState, Move};
use crate::pipeline::messages::{Probe, Processed, Restart};
use crate::pipeline::next::{Next, Routes};
use crate::pipeline::shared::Shared;
use crate::stats::Stats;

pub(crate) struct Uploader {
    shared: Arc<Shared>,
    /// Where what its steps hand on goes.
    routes: Routes,
}

impl Uploader {
    pub(crate) fn new(shared: Arc<Shared>, routes: Routes) -> Self {
        Self { shared, routes }
    }

    fn upload(&mut self, lease: Arc<Lease>, ctx: &mut Context<Self>) {
        let s = &self.shared;
        let (Some(store), Some(output), LeaseState::Processed) =
            (s.sinks.results.clone(), lease.output(), lease.state())
        else {
            return;
        };
        let mut next = Next::none();
        if s.lost_before(&lease, "storing the result", &mut next) || !lease.take_in() {
            self.routes.send(next);
            return;
        }
        let attempts = s.config.effect_attempts;
        let meta = ObjectMeta {
            size: output.body.len() as u64,
            content_type: output.content_type,
            metadata: HashMap::from([(RESULT_JOB_TAG.to_owned(), lease.job.id.to_string())]),
        };
        let body = output.body;
        let key = store.key(&lease.job.id);
        let held = [lease.clone()];
        let cancelled = s.life.cancel_signal();
        let early_delete = crate::sabotage::on(crate::sabotage::Sabotage::DeleteBeforeUpload)
            .then(|| (s.sinks.source.clone(), lease.handle()));
        ctx.spawn(
            async move {
                with_retries(attempts, || {
                    let (store, key, body, meta) =
                        (store.clone(), key.clone(), body.clone(), meta.clone());
                    let early_delete = early_delete.clone();
                    let lost = crate::pipeline::run::deadline::gone(&held[0]);
                    let (held, cancelled) = (&held, &cancelled);
                    async move {
                        // No retry after the lease was lost or lapsed.
                        if lost {
                            return Err(crate::BackendError::transient("lease lost"));
                        }
                        if let Some((queue, handle)) = early_delete {
                            let _ = queue.delete_batch(&[handle]).await;
                        }
                        let put = store.blobs.put(&store.bucket, &key, body, meta);
                        crate::pipeline::run::deadline::within(held, cancelled, put).await
                    }
                })
                .await
            }
            .into_actor(self)
            .map(move |res, act, _| {
                let s = &act.shared;
                let mut next = Next::none();
                match res {
                    Ok(()) => {
                        Stats::inc(&s.stats.uploaded);
                        if lease.step(Move::Store).is_some() {
                            next = s.announce(vec![lease]);
                        }
                    }
                    Err(_) if s.lost_before(&lease, "storing the result", &mut next) => {}
                    Err(e) => {
                        let ending =
                            crate::pipeline::lifecycle::effect_failed("storing the result", &e);
                        next = s.settle_one(lease, ending);
                    }
                }
                act.routes.send(next);
            }),
        );
    }

    fn probe(&mut self, lease: Arc<Lease>, ctx: &mut Context<Self>) {
        let Some(store) = self.shared.sinks.results.clone() else {
            return;
        };
        if lease.state() != LeaseState::Probing || !lease.take_in() {
            return;
        }
        let key = store.key(&lease.job.id);
        ctx.spawn(
            async move { store.blobs.head(&store.bucket, &key).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let s = &act.shared;
                    let next = act.probed(lease, res);
                    act.routes.send(next);
                    let _ = s;
                }),
        );
    }

    /// What a probe's answer calls for.
    fn probed(
        &self,
        lease: Arc<Lease>,
        res: Result<Option<ObjectMeta>, crate::BackendError>,
    ) -> Next {
        let s = &self.shared;
        let done = matches!(&res, Ok(Some(meta))
                        if meta.metadata.get(RESULT_JOB_TAG).map(String::as_str)
                            == Some(lease.job.id.as_str()));
        if done && !lease.is_cancelled() {
            if lease.step(Move::Found).is_none() {
                return Next::none();
            }
            s.jobs_started(1);
            Stats::inc(&s.stats.resumed);
            tracing::info!(pipeline = %s.name, job_id = %lease.job.id,
                            "result already stored by an earlier attempt; resuming at publish");
            s.announce(vec![lease])
        } else if let (Err(e), false) = (&res, lease.is_cancelled()) {
            // The infrastructure's failure: running the job
            // again might repeat what an earlier attempt did, so
            // it waits to be looked at again.
            tracing::debug!(error = %e, "result check failed; the job waits");
            s.jobs_started(1);
            s.settle_one(
                lease,
                crate::lease::Ending::Wait {
                    reason: format!("checking for a stored result: {e}"),
                    after: None,
                },
            )
        } else if lease.step(Move::NotFound).is_some() {
            Next::run(vec![lease])
        } else {
            Next::none()
        }
    }
}

impl Actor for Uploader {
    type Context = Context<Self>;
}

impl actix::Supervised for Uploader {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // The calls in flight were dropped: do them again.
        let s = self.shared.clone();
        for lease in s.life.restart_owner(&[LeaseState::Processed]) {
            self.upload(lease, ctx);
        }
        for lease in s.life.restart_owner(&[LeaseState::Probing]) {
            self.probe(lease, ctx);
        }
    }
}

impl Handler<Restart> for Uploader {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for Uploader {
    const NAME: &'static str = "uploader";
    const OWNS: Option<crate::lease::Owner> = Some(crate::lease::Owner::Uploader);
}

impl Handler<Processed> for Uploader {
    type Result = ();

    fn handle(&mut self, msg: Processed, ctx: &mut Context<Self>) {
        for lease in msg.0 {
            self.upload(lease, ctx);
        }
    }
}

impl Handler<Probe> for Uploader {
    type Result = ();

    fn handle(&mut self, msg: Probe, ctx: &mut Context<Self>) {
        for lease in msg.0 {
            self.probe(lease, ctx);
        }
    }
}
