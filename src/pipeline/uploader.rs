//! The uploader: stores each result under a key derived from the job id,
//! tagged with the job id (DESIGN rule 2), and for redelivered jobs first
//! checks whether an earlier attempt already stored it (rule 3).

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::acker::Acker;
use super::messages::{Announce, Leased, Probe, Processed, Settle, Settlement, Uploaded};
use super::pool::ProcessorPool;
use super::publisher::Publisher;
use super::{with_retries, Shared};
use crate::backend::ObjectMeta;
use crate::job::{ResultNotice, RESULT_JOB_TAG};
use crate::lease::Lease;
use crate::processor::Output;
use crate::stats::Stats;

pub(crate) struct Uploader {
    shared: Arc<Shared>,
    pool: Addr<ProcessorPool>,
    publisher: Addr<Publisher>,
    acker: Addr<Acker>,
}

impl Uploader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        pool: Addr<ProcessorPool>,
        publisher: Addr<Publisher>,
        acker: Addr<Acker>,
    ) -> Self {
        Self {
            shared,
            pool,
            publisher,
            acker,
        }
    }

    /// The notice for a job's result. The uploader only sees jobs of
    /// pipelines with a result store: the pool routes the others past it.
    fn notice(&self, lease: &Lease) -> ResultNotice {
        let store = self
            .shared
            .results
            .as_ref()
            .expect("routed here only with a store");
        ResultNotice {
            job_id: lease.job.id.clone(),
            pipeline: self.shared.name.to_string(),
            bucket: store.bucket.clone(),
            key: store.key(&lease.job.id),
        }
    }

    fn upload(&mut self, lease: Arc<Lease>, output: Output, ctx: &mut Context<Self>) {
        let notice = self.notice(&lease);
        if lease.is_cancelled() {
            self.shared.drop_lease(&lease);
            return;
        }
        let store = self
            .shared
            .results
            .clone()
            .expect("routed here only with a store");
        let attempts = self.shared.config.effect_attempts;
        let meta = ObjectMeta {
            size: output.body.len() as u64,
            content_type: output.content_type,
            metadata: HashMap::from([(RESULT_JOB_TAG.to_owned(), lease.job.id.to_string())]),
        };
        let body = output.body;
        let key = notice.key.clone();
        ctx.spawn(
            async move {
                with_retries(attempts, || {
                    store
                        .blobs
                        .put(&store.bucket, &key, body.clone(), meta.clone())
                })
                .await
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(()) => {
                    Stats::inc(&act.shared.stats.uploaded);
                    act.publisher
                        .do_send(Uploaded(vec![(lease, Announce::Stored(notice))]));
                }
                Err(e) => act.acker.do_send(Settle(vec![Settlement::Retry {
                    lease,
                    reason: format!("storing the result: {e}"),
                    after: None,
                }])),
            }),
        );
    }

    fn probe(&mut self, lease: Arc<Lease>, ctx: &mut Context<Self>) {
        let notice = self.notice(&lease);
        let store = self
            .shared
            .results
            .clone()
            .expect("probes only with a store");
        let key = notice.key.clone();
        ctx.spawn(
            async move { store.blobs.head(&store.bucket, &key).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    let done = matches!(&res, Ok(Some(meta))
                        if meta.metadata.get(RESULT_JOB_TAG).map(String::as_str)
                            == Some(lease.job.id.as_str()));
                    if done && lease.try_start() {
                        act.shared.jobs_started(1);
                        Stats::inc(&act.shared.stats.resumed);
                        tracing::info!(pipeline = %act.shared.name, job_id = %lease.job.id,
                            "result already stored by an earlier attempt; resuming at publish");
                        act.publisher
                            .do_send(Uploaded(vec![(lease, Announce::Stored(notice))]));
                    } else {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "result check failed; processing");
                        }
                        act.pool.do_send(Leased(vec![lease]));
                    }
                }),
        );
    }
}

impl Actor for Uploader {
    type Context = Context<Self>;
}

impl Handler<Processed> for Uploader {
    type Result = ();

    fn handle(&mut self, msg: Processed, ctx: &mut Context<Self>) {
        for (lease, output) in msg.0 {
            self.upload(lease, output, ctx);
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
