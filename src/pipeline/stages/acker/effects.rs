//! The acker's calls that settle by the batch: claim completions, deletes
//! (finished jobs, copies) and visibility changes (retries, give-backs),
//! and what each entry's answer means for its lease.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::error::BackendError;
use crate::lease::{Ending, Lease};
use crate::pipeline::lifecycle::Ended;
use crate::stats::Stats;

use super::{is_dead_lettered, Acker, Delete, Step};

impl Acker {
    /// Marks claimed jobs completed in the idempotency store; deletes follow.
    /// A lease past its deadline is marked all the same: the job's effects
    /// are done, and the record says so whoever holds the message now (a
    /// claim another worker took meanwhile is left to it). Its message is
    /// then let go rather than deleted, and its claim never released, which
    /// would let another worker run the job again.
    pub(super) fn send_completions(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let s = &self.shared;
        let keep = s.config.completed_ttl;
        let calls = s.store_calls(&batch, |store, key, owner| async move {
            store.complete(&key, &owner, keep).await
        });
        self.call(ctx, calls, |act, results, _| act.completed(batch, results));
    }

    pub(super) fn completed(
        &mut self,
        batch: Vec<Arc<Lease>>,
        results: Vec<Result<bool, BackendError>>,
    ) {
        let s = self.shared.clone();
        for (lease, r) in batch.into_iter().zip(results) {
            match r {
                Ok(held) => {
                    self.succeeded();
                    if !held {
                        // The claim lapsed and another worker took it. The
                        // effects are done and idempotent: delete anyway.
                        Stats::inc(&s.stats.claims_lost);
                        tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                            "claim lost before completion; record left to its new holder");
                    }
                    lease.take_claim();
                    self.deletes.push(Delete::Job(lease));
                }
                Err(e) if e.is_retryable() => {
                    self.failed(lease, &e, "marking the job completed", Step::Complete);
                }
                Err(e) => {
                    // Refused for good: the effects are done, so the
                    // message is deleted without the record.
                    tracing::error!(pipeline = %s.name, job_id = %lease.job.id, error = %e,
                        "marking the job completed refused; deleting without the record");
                    Stats::inc(&s.stats.settle_gave_up);
                    lease.take_claim();
                    self.deletes.push(Delete::Job(lease));
                }
            }
        }
    }

    pub(super) fn send_deletes(&mut self, batch: Vec<Delete>, ctx: &mut Context<Self>) {
        let (batch, lapsed) =
            crate::pipeline::run::deadline::split_lapsed(&self.shared, batch, |d| match d {
                Delete::Job(lease) => Some(lease),
                Delete::Copy(_) => None,
            });
        lapsed.into_iter().for_each(|l| self.let_go(l));
        if batch.is_empty() {
            return;
        }
        self.delete_others(&batch);
        let handles: Vec<String> = batch
            .iter()
            .map(|d| match d {
                Delete::Job(lease) => lease.handle(),
                Delete::Copy(h) => h.clone(),
            })
            .collect();
        let queue = self.shared.sinks.source.clone();
        self.call(
            ctx,
            async move {
                let res = queue.delete_batch(&handles).await;
                (handles, res)
            },
            |act, (handles, res), ctx| act.deleted(batch, handles, res, ctx),
        );
    }

    /// Splits a whole-batch answer into one result per entry.
    pub(super) fn per_entry<T>(
        n: usize,
        res: Result<Vec<Result<T, BackendError>>, BackendError>,
    ) -> Vec<Result<(), BackendError>> {
        match res {
            Ok(r) => r.into_iter().map(|e| e.map(|_| ())).collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    pub(super) fn deleted(
        &mut self,
        batch: Vec<Delete>,
        handles: Vec<String>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        let results = Self::per_entry(batch.len(), res);
        let (mut deleted, mut dead, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        let mut payloads = Vec::new();
        for ((d, used), r) in batch.into_iter().zip(handles).zip(results) {
            let Delete::Job(lease) = d else {
                // A copy that could not be deleted comes back and is dropped
                // again.
                continue;
            };
            let dead_lettered = is_dead_lettered(&lease);
            match r {
                Ok(()) => {
                    self.succeeded();
                    if !dead_lettered {
                        s.stats.end_to_end.record(lease.received_at.elapsed());
                        s.care.health.success();
                        // The message is gone: its payload object may go too.
                        if let Some(p) = s
                            .sinks
                            .payloads
                            .as_ref()
                            .and_then(|p| p.deletable(&lease.job))
                        {
                            payloads.push(p);
                        }
                    }
                    tracing::debug!(pipeline = %s.name, job_id = %lease.job.id, "deleted");
                    if dead_lettered {
                        dead.push(lease);
                    } else {
                        deleted.push(lease);
                    }
                }
                Err(BackendError::ReceiptInvalid) if lease.handle() != used => {
                    // A newer copy merged in meanwhile: delete with its handle.
                    self.deletes.push(Delete::Job(lease));
                }
                Err(BackendError::ReceiptInvalid) => {
                    // Effects are done; the copy someone else holds will be
                    // resumed or dropped. Nothing is lost.
                    tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                        "delete refused: lease lost after the job's effects completed");
                    Stats::inc(&s.stats.leases_lost);
                    if dead_lettered {
                        // Its message comes back (and is deleted then):
                        // its FIFO group's later messages wait for it.
                        kept.push(lease);
                    } else {
                        deleted.push(lease);
                    }
                }
                Err(e) => self.failed(lease, &e, "delete", Step::Delete),
            }
        }
        s.stats.add(&s.stats.acked, deleted.len() as u64);
        let next = s
            .end(&deleted, Ended::Deleted)
            .and(s.end(&dead, Ended::DeadLettered))
            .and(s.end(&kept, Ended::DeadLetteredUndeleted));
        self.routes.send(next);
        dead.extend(kept);
        // Ended first: a given-back message that returns at once is a new
        // lease of the (forgotten) job, not a copy merged into this one.
        let back: Vec<(String, Duration)> = dead
            .iter()
            .filter(|l| l.had_others())
            .flat_map(|l| l.take_others())
            .map(|h| (h, Duration::ZERO))
            .collect();
        self.give_back(back, ctx);
        if let (Some(store), false) = (s.sinks.payloads.clone(), payloads.is_empty()) {
            self.call(
                ctx,
                async move { store.delete_objects(payloads).await },
                |_, _, _| {},
            );
        }
    }

    pub(super) fn send_visibility(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        self.give_back_others(&batch, ctx);
        let entries: Vec<(String, Duration)> = batch
            .iter()
            .map(|l| (l.handle(), self.visibility_of(l)))
            .collect();
        let queue = self.shared.sinks.source.clone();
        self.call(
            ctx,
            async move {
                let res = queue.change_visibility_batch(&entries).await;
                (entries, res)
            },
            |act, (entries, res), _| act.visibility_changed(batch, entries, res),
        );
    }

    pub(super) fn visibility_changed(
        &mut self,
        batch: Vec<Arc<Lease>>,
        entries: Vec<(String, Duration)>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
    ) {
        let s = self.shared.clone();
        let results = Self::per_entry(batch.len(), res);
        let mut ended = Vec::new();
        for ((lease, (used, _)), r) in batch.into_iter().zip(entries).zip(results) {
            match r {
                Ok(()) | Err(BackendError::ReceiptInvalid) if lease.handle() == used => {
                    // Done, or the message is no longer ours to change: either
                    // way it will be delivered again.
                    self.succeeded();
                    match lease.ending() {
                        Some(Ending::Retry { .. }) => Stats::inc(&s.stats.retried),
                        Some(Ending::Wait { .. }) => Stats::inc(&s.stats.waited),
                        Some(Ending::Release) => Stats::inc(&s.stats.released),
                        _ => {}
                    }
                    ended.push(lease);
                }
                Ok(()) | Err(BackendError::ReceiptInvalid) => self.visibility.push(lease),
                Err(e) => self.failed(lease, &e, "visibility change", Step::Visibility),
            }
        }
        self.routes.send(s.end(&ended, Ended::Released));
    }
}
