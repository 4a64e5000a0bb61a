//! The acker: the last step. It deletes finished messages with their newest
//! receipt handle, sets the visibility of jobs to retry, sends bad input to the
//! dead-letter queue (then deletes it), and releases leases — all in batches
//! of ten, flushed at once when a batch is full and otherwise every
//! `flush_interval`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::messages::{Flush, Settle, Settlement};
use super::Shared;
use crate::backend::{OutgoingMessage, MAX_BATCH};
use crate::error::BackendError;
use crate::job::{
    DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE, JOB_ID_ATTRIBUTE,
};
use crate::lease::Lease;
use crate::stats::Stats;

/// A pending delete.
enum Delete {
    /// A finished job; `dead_lettered` after its dead-letter entry was sent.
    Job {
        lease: Arc<Lease>,
        dead_lettered: bool,
    },
    /// A copy of a completed job.
    Copy(String),
}

/// Why a visibility change is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VisKind {
    Retry,
    Release,
    Defer,
}

struct VisChange {
    lease: Arc<Lease>,
    after: Duration,
    kind: VisKind,
}

pub(crate) struct Acker {
    shared: Arc<Shared>,
    deletes: Vec<Delete>,
    visibility: Vec<VisChange>,
    dead: Vec<(Arc<Lease>, String)>,
    /// Claimed jobs whose effects are done: their records are marked
    /// completed before their messages are deleted.
    completing: Vec<Arc<Lease>>,
    timer: Option<SpawnHandle>,
    outstanding: usize,
    idle_waiters: Vec<oneshot::Sender<()>>,
}

impl Acker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            deletes: Vec::new(),
            visibility: Vec::new(),
            dead: Vec::new(),
            completing: Vec::new(),
            timer: None,
            outstanding: 0,
            idle_waiters: Vec::new(),
        }
    }

    /// A lease's ending entered the acker's care.
    fn hold(&self) {
        self.shared.settling.fetch_add(1, Ordering::AcqRel);
    }

    /// A lease's ending left it (finished or dropped).
    fn release_hold(&self) {
        self.shared.settling.fetch_sub(1, Ordering::AcqRel);
    }

    fn accept(&mut self, s: Settlement) {
        if !matches!(s, Settlement::DropCopy(_)) {
            self.hold();
        }
        let cfg = &self.shared.config;
        match s {
            Settlement::Done(lease) => {
                if lease.is_cancelled() {
                    // The lease is lost: deleting now could delete a copy
                    // another worker holds. It will come back.
                    self.shared.drop_lease(&lease);
                    self.release_hold();
                } else if lease.is_claimed() {
                    self.completing.push(lease);
                } else {
                    self.deletes.push(Delete::Job {
                        lease,
                        dead_lettered: false,
                    });
                }
            }
            Settlement::Retry {
                lease,
                reason,
                after,
            } => {
                let count = lease.job.receive_count;
                if lease.is_cancelled() {
                    self.shared.drop_lease(&lease);
                    self.release_hold();
                } else if count >= cfg.max_receives {
                    let reason = format!("failed on all {count} receives; last error: {reason}");
                    self.dead.push((lease, reason));
                } else {
                    let after = after.unwrap_or_else(|| cfg.retry_backoff(count));
                    tracing::info!(pipeline = %self.shared.name, job_id = %lease.job.id,
                        receive_count = count, retry_in_ms = after.as_millis() as u64,
                        reason = %reason, "job will be retried");
                    self.visibility.push(VisChange {
                        lease,
                        after,
                        kind: VisKind::Retry,
                    });
                }
            }
            Settlement::DeadLetter { lease, reason } => {
                if lease.is_cancelled() {
                    self.shared.drop_lease(&lease);
                    self.release_hold();
                } else {
                    self.dead.push((lease, reason));
                }
            }
            Settlement::Release(lease) => self.visibility.push(VisChange {
                lease,
                after: Duration::ZERO,
                kind: VisKind::Release,
            }),
            Settlement::Defer { lease, after } => self.visibility.push(VisChange {
                lease,
                after,
                kind: VisKind::Defer,
            }),
            Settlement::DropCopy(handle) => self.deletes.push(Delete::Copy(handle)),
        }
    }

    fn pending(&self) -> bool {
        !(self.deletes.is_empty()
            && self.visibility.is_empty()
            && self.dead.is_empty()
            && self.completing.is_empty())
    }

    /// Sends full batches now and schedules the rest — or sends everything
    /// now when no other job is in flight to fill a batch.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let idle = self.shared.nothing_else_in_flight(0);
        self.flush(ctx, !idle);
        if self.pending() && self.timer.is_none() {
            let every = self.shared.config.flush_interval;
            self.timer = Some(ctx.run_later(every, |act, ctx| {
                act.timer = None;
                act.flush(ctx, false);
            }));
        }
        self.check_idle();
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        if self.timer.is_none() {
            self.timer = Some(ctx.run_later(Duration::from_millis(50), |act, ctx| {
                act.timer = None;
                act.flush(ctx, false);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>, only_full: bool) {
        let min = if only_full { MAX_BATCH } else { 1 };
        while self.completing.len() >= min {
            let n = self.completing.len().min(MAX_BATCH);
            let batch: Vec<Arc<Lease>> = self.completing.drain(..n).collect();
            self.send_completions(batch, ctx);
        }
        while self.deletes.len() >= min {
            let n = self.deletes.len().min(MAX_BATCH);
            let batch: Vec<Delete> = self.deletes.drain(..n).collect();
            self.send_deletes(batch, ctx);
        }
        while self.visibility.len() >= min {
            let n = self.visibility.len().min(MAX_BATCH);
            let batch: Vec<VisChange> = self.visibility.drain(..n).collect();
            self.send_visibility(batch, ctx);
        }
        while self.dead.len() >= min {
            let n = self.dead.len().min(MAX_BATCH);
            let batch: Vec<(Arc<Lease>, String)> = self.dead.drain(..n).collect();
            self.send_dead(batch, ctx);
        }
    }

    /// Marks claimed jobs completed in the idempotency store; deletes follow.
    fn send_completions(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let s = &self.shared;
        let keep = s.config.completed_ttl;
        let calls = s.store_calls(&batch, |store, key, owner| async move {
            store.complete(&key, &owner, keep).await
        });
        self.call(ctx, calls, |act, results, ctx| {
            act.completed(batch, results, ctx)
        });
    }

    fn completed(
        &mut self,
        batch: Vec<Arc<Lease>>,
        results: Vec<Result<bool, BackendError>>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        for (lease, r) in batch.into_iter().zip(results) {
            match r {
                Ok(held) => {
                    if !held {
                        // The claim lapsed and another worker took it. The
                        // effects are done and idempotent: delete anyway.
                        Stats::inc(&s.stats.claims_lost);
                        tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                            "claim lost before completion; record left to its new holder");
                    }
                    lease.take_claim();
                    self.deletes.push(Delete::Job {
                        lease,
                        dead_lettered: false,
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "marking a job completed failed; will retry");
                    self.completing.push(lease);
                    self.retry_later(ctx);
                }
            }
        }
    }

    fn send_deletes(&mut self, batch: Vec<Delete>, ctx: &mut Context<Self>) {
        let handles: Vec<String> = batch
            .iter()
            .map(|d| match d {
                Delete::Job { lease, .. } => lease.handle(),
                Delete::Copy(h) => h.clone(),
            })
            .collect();
        let queue = self.shared.source.clone();
        self.call(
            ctx,
            async move {
                let res = queue.delete_batch(&handles).await;
                (handles, res)
            },
            |act, (handles, res), ctx| act.deleted(batch, handles, res, ctx),
        );
    }

    /// Runs one backend call, counted as outstanding until its result has
    /// been handled; then sends whatever became due.
    fn call<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        call: impl std::future::Future<Output = T> + 'static,
        then: impl FnOnce(&mut Self, T, &mut Context<Self>) + 'static,
    ) {
        self.outstanding += 1;
        ctx.spawn(call.into_actor(self).map(move |res, act, ctx| {
            act.outstanding -= 1;
            then(act, res, ctx);
            act.schedule(ctx);
        }));
    }

    fn deleted(
        &mut self,
        batch: Vec<Delete>,
        handles: Vec<String>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        let results = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pipeline = %s.name, error = %e, "delete failed; will retry");
                self.deletes.extend(batch);
                self.retry_later(ctx);
                return;
            }
        };
        let mut finished = Vec::with_capacity(batch.len());
        let mut acked = 0;
        let mut payloads = Vec::new();
        for ((d, used), r) in batch.into_iter().zip(handles).zip(results) {
            let Delete::Job {
                lease,
                dead_lettered,
            } = d
            else {
                continue;
            };
            match r {
                Ok(()) => {
                    if !dead_lettered {
                        acked += 1;
                        s.stats.end_to_end.record(lease.received_at.elapsed());
                        // The message is gone: its payload object may go too.
                        if let Some(p) = s.payloads.as_ref().and_then(|p| p.deletable(&lease.job)) {
                            payloads.push(p);
                        }
                    }
                    tracing::debug!(pipeline = %s.name, job_id = %lease.job.id, "deleted");
                    finished.push(lease);
                    self.release_hold();
                }
                Err(BackendError::ReceiptInvalid) if lease.handle() != used => {
                    // A newer copy merged in meanwhile: delete with its handle.
                    self.deletes.push(Delete::Job {
                        lease,
                        dead_lettered,
                    });
                }
                Err(BackendError::ReceiptInvalid) => {
                    // Effects are done; the copy someone else holds will be
                    // resumed or dropped. Nothing is lost.
                    tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                        "delete refused: lease lost after the job's effects completed");
                    Stats::inc(&s.stats.leases_lost);
                    finished.push(lease);
                    self.release_hold();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "delete entry failed; will retry");
                    self.deletes.push(Delete::Job {
                        lease,
                        dead_lettered,
                    });
                    self.retry_later(ctx);
                }
            }
        }
        s.finish_leases(&finished);
        s.stats.add(&s.stats.acked, acked);
        if let (Some(store), false) = (s.payloads.clone(), payloads.is_empty()) {
            self.call(
                ctx,
                async move { store.delete_objects(payloads).await },
                |_, _, _| {},
            );
        }
    }

    fn send_visibility(&mut self, batch: Vec<VisChange>, ctx: &mut Context<Self>) {
        let entries: Vec<(String, Duration)> =
            batch.iter().map(|v| (v.lease.handle(), v.after)).collect();
        let queue = self.shared.source.clone();
        self.call(
            ctx,
            async move {
                let res = queue.change_visibility_batch(&entries).await;
                (entries, res)
            },
            |act, (entries, res), ctx| act.visibility_changed(batch, entries, res, ctx),
        );
    }

    fn visibility_changed(
        &mut self,
        batch: Vec<VisChange>,
        entries: Vec<(String, Duration)>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        let results = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pipeline = %s.name, error = %e, "visibility change failed; will retry");
                self.visibility.extend(batch);
                self.retry_later(ctx);
                return;
            }
        };
        for ((v, (used, _)), r) in batch.into_iter().zip(entries).zip(results) {
            match r {
                Ok(()) | Err(BackendError::ReceiptInvalid) if v.lease.handle() == used => {
                    // Done, or the message is no longer ours to change: either
                    // way it will be delivered again.
                    match (v.kind, r.is_ok()) {
                        (VisKind::Retry, true) => Stats::inc(&s.stats.retried),
                        (VisKind::Release, true) => Stats::inc(&s.stats.released),
                        _ => {}
                    }
                    s.drop_lease(&v.lease);
                    self.release_hold();
                }
                Ok(()) | Err(BackendError::ReceiptInvalid) => self.visibility.push(v),
                Err(e) => {
                    tracing::debug!(error = %e, "visibility entry failed; will retry");
                    self.visibility.push(v);
                    self.retry_later(ctx);
                }
            }
        }
    }

    fn send_dead(&mut self, batch: Vec<(Arc<Lease>, String)>, ctx: &mut Context<Self>) {
        let fifo = self.shared.dead_letter.is_fifo();
        let source = self.shared.source.name().to_owned();
        let messages: Vec<OutgoingMessage> = batch
            .iter()
            .map(|(lease, reason)| {
                let job = &lease.job;
                let mut attributes: HashMap<String, String> = job.attributes.clone();
                attributes.insert(JOB_ID_ATTRIBUTE.to_owned(), job.id.to_string());
                attributes.insert(DLQ_REASON_ATTRIBUTE.to_owned(), reason.clone());
                attributes.insert(DLQ_SOURCE_ATTRIBUTE.to_owned(), source.clone());
                attributes.insert(
                    DLQ_RECEIVES_ATTRIBUTE.to_owned(),
                    job.receive_count.to_string(),
                );
                OutgoingMessage {
                    body: job.original_body().to_owned(),
                    attributes,
                    group_id: fifo
                        .then(|| job.group_id.clone().unwrap_or_else(|| job.id.to_string())),
                    dedup_id: fifo.then(|| job.id.dedup_id("dead-letter")),
                    delay: None,
                }
            })
            .collect();
        let queue = self.shared.dead_letter.clone();
        self.call(
            ctx,
            async move { queue.send_batch(messages).await },
            |act, res, ctx| act.dead_lettered(batch, res, ctx),
        );
    }

    fn dead_lettered(
        &mut self,
        batch: Vec<(Arc<Lease>, String)>,
        res: Result<Vec<Result<String, BackendError>>, BackendError>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        let results: Vec<Result<(), BackendError>> = match res {
            Ok(r) => r.into_iter().map(|e| e.map(|_| ())).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        };
        for ((lease, reason), r) in batch.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    Stats::inc(&s.stats.dead_lettered);
                    tracing::warn!(pipeline = %s.name, job_id = %lease.job.id, reason = %reason,
                        "sent to the dead-letter queue");
                    self.deletes.push(Delete::Job {
                        lease,
                        dead_lettered: true,
                    });
                }
                Err(e) => {
                    tracing::warn!(pipeline = %s.name, error = %e,
                        "dead-letter send failed; will retry");
                    self.dead.push((lease, reason));
                    self.retry_later(ctx);
                }
            }
        }
    }

    fn check_idle(&mut self) {
        if self.outstanding == 0 && !self.pending() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Actor for Acker {
    type Context = Context<Self>;
}

impl Handler<Settle> for Acker {
    type Result = ();

    fn handle(&mut self, msg: Settle, ctx: &mut Context<Self>) {
        for s in msg.0 {
            self.accept(s);
        }
        self.schedule(ctx);
    }
}

impl Handler<Flush> for Acker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        self.flush(ctx, false);
        let (tx, rx) = oneshot::channel();
        self.idle_waiters.push(tx);
        self.check_idle();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
