//! The lease keeper: extends the visibility of held messages before it
//! lapses, in batches, up to the maximum lease age (DESIGN rule 5).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::acker::Acker;
use super::messages::{Settle, Settlement};
use super::Shared;
use crate::backend::MAX_BATCH;
use crate::error::BackendError;
use crate::lease::{Lease, LeaseState};
use crate::stats::Stats;

pub(crate) struct LeaseKeeper {
    shared: Arc<Shared>,
    acker: Addr<Acker>,
}

impl LeaseKeeper {
    pub(crate) fn new(shared: Arc<Shared>, acker: Addr<Acker>) -> Self {
        Self { shared, acker }
    }

    /// How often leases are looked at: a tenth of the visibility timeout.
    fn tick_every(&self) -> Duration {
        (self.shared.config.visibility_timeout / 10)
            .clamp(Duration::from_millis(5), Duration::from_secs(5))
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let s = &self.shared;
        let now = Instant::now();
        let visibility = s.config.visibility_timeout;
        let margin = visibility / 2;
        let mut due = Vec::new();
        let mut expired = Vec::new();
        for lease in s.leases.all() {
            if lease.state() == LeaseState::Released || lease.is_cancelled() {
                continue;
            }
            let (handle, until) = lease.handle_and_deadline();
            if until > now + margin {
                continue;
            }
            if now.duration_since(lease.received_at) + visibility > s.config.max_lease_age {
                expired.push(lease);
            } else if lease.begin_extend() {
                due.push((lease, handle));
            }
        }
        if !expired.is_empty() {
            let mut settle = Vec::new();
            for lease in expired {
                tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                    "lease reached its maximum age: job cancelled, message released");
                Stats::inc(&s.stats.leases_lost);
                lease.cancel();
                settle.push(Settlement::Release(lease));
            }
            self.acker.do_send(Settle(settle));
        }
        while !due.is_empty() {
            let chunk: Vec<(Arc<Lease>, String)> = due.drain(..due.len().min(MAX_BATCH)).collect();
            let entries: Vec<(String, Duration)> =
                chunk.iter().map(|(_, h)| (h.clone(), visibility)).collect();
            let queue = s.source.clone();
            ctx.spawn(
                async move { queue.change_visibility_batch(&entries).await }
                    .into_actor(self)
                    .map(move |res, act, _| act.extended(chunk, res, Instant::now() + visibility)),
            );
        }
    }

    fn extended(
        &mut self,
        chunk: Vec<(Arc<Lease>, String)>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
        until: Instant,
    ) {
        let s = &self.shared;
        let results = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pipeline = %s.name, error = %e, "extending leases failed; will retry");
                chunk.iter().for_each(|(l, _)| l.end_extend());
                return;
            }
        };
        for ((lease, handle), r) in chunk.into_iter().zip(results) {
            lease.end_extend();
            match r {
                Ok(()) => {
                    if lease.extended(&handle, until) {
                        Stats::inc(&s.stats.leases_extended);
                    }
                }
                Err(BackendError::ReceiptInvalid) if lease.handle() == handle => {
                    // Someone else holds the message now: stop before any effect.
                    tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                        "lease lost: receipt handle no longer valid; job cancelled");
                    Stats::inc(&s.stats.leases_lost);
                    lease.cancel();
                    s.drop_lease(&lease);
                }
                Err(e) => {
                    tracing::debug!(pipeline = %s.name, job_id = %lease.job.id, error = %e,
                        "extension not applied; will retry");
                }
            }
        }
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.tick_every();
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }
}
