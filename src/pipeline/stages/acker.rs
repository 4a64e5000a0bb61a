//! The acker: the last step, and the owner of the Settling state. It carries
//! out each lease's ending (kept in the lease): deletes finished messages
//! with their newest receipt handle, sets the visibility of jobs to retry or
//! give back, sends bad input to the dead-letter queue (then deletes it) —
//! in batches of ten, flushed at once when a batch is full and otherwise
//! every `flush_interval`.
//!
//! A failed entry is the infrastructure's to ride out, never the job's: a
//! retryable failure is retried alone, after its own doubling pause
//! ([`SETTLE_RETRIES`]: other entries succeeding in between do not hurry
//! it), for as long as its lease holds (the lease keeper extends a Settling
//! lease up to its maximum age). A permanent refusal, or a lease that
//! lapsed, takes the last resort: the lease is let go and the queue's own
//! visibility timeout (and redrive policy) takes the message. On restart the
//! acker re-derives its buffers from the Settling leases.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::MAX_BATCH;
use crate::error::BackendError;
use crate::lease::{Ending, Lease, LeaseState};
use crate::pipeline::lifecycle::Ended;
use crate::pipeline::messages::{DropCopies, Flush, Restart, Settle};
use crate::pipeline::next::Routes;
use crate::pipeline::shared::Shared;
use crate::stats::Stats;

fn is_dead_lettered(lease: &Lease) -> bool {
    matches!(
        lease.ending(),
        Some(Ending::Delete {
            dead_lettered: true
        })
    )
}

/// The pause before an entry's nth retry: its own, whatever other entries do.
pub(crate) const SETTLE_RETRIES: crate::backoff::Backoff =
    crate::backoff::Backoff::jittered(Duration::from_millis(100), Duration::from_millis(6400));

/// The step a failed entry waits to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Complete,
    Delete,
    Visibility,
    DeadLetter,
}

/// A pending delete.
enum Delete {
    /// A finished job (its ending says whether it was dead-lettered).
    Job(Arc<Lease>),
    /// A copy of a completed job.
    Copy(String),
}

pub(crate) struct Acker {
    shared: Arc<Shared>,
    /// Where what its steps hand on goes.
    routes: Routes,
    deletes: Vec<Delete>,
    visibility: Vec<Arc<Lease>>,
    dead: Vec<Arc<Lease>>,
    /// Claimed jobs whose effects are done: their records are marked
    /// completed before their messages are deleted.
    completing: Vec<Arc<Lease>>,
    /// Entries that failed, each waiting out its own pause.
    parked: Vec<(Instant, Step, Arc<Lease>)>,
    timer: Option<SpawnHandle>,
    outstanding: usize,
    /// Failures in a row, for the retry backoff.
    failures: u32,
    idle_waiters: Vec<oneshot::Sender<()>>,
}

impl Acker {
    pub(crate) fn new(shared: Arc<Shared>, routes: Routes) -> Self {
        Self {
            shared,
            routes,
            deletes: Vec::new(),
            visibility: Vec::new(),
            dead: Vec::new(),
            completing: Vec::new(),
            parked: Vec::new(),
            timer: None,
            outstanding: 0,
            failures: 0,
            idle_waiters: Vec::new(),
        }
    }

    fn accept(&mut self, lease: Arc<Lease>) {
        if lease.state() != LeaseState::Settling || !lease.take_in() {
            return;
        }
        let cfg = &self.shared.config;
        match lease.ending() {
            Some(Ending::Delete { .. }) if lease.is_claimed() => self.completing.push(lease),
            Some(Ending::Delete { .. }) => self.deletes.push(Delete::Job(lease)),
            Some(Ending::Retry { reason, .. })
                if self.shared.life.attempts_of(&lease.job.id) >= cfg.max_receives =>
            {
                let n = self.shared.life.attempts_of(&lease.job.id);
                let reason = format!("failed on all {n} attempts; last error: {reason}");
                lease.set_ending(Ending::DeadLetter { reason });
                self.dead.push(lease);
            }
            Some(Ending::Retry { reason, .. }) => {
                let attempts = self.shared.life.attempts_of(&lease.job.id);
                let after = self.visibility_of(&lease);
                tracing::info!(pipeline = %self.shared.name, job_id = %lease.job.id,
                    attempts, retry_in_ms = after.as_millis() as u64,
                    reason = %reason, "job will be retried");
                self.visibility.push(lease);
            }
            Some(Ending::Wait { reason, .. }) => {
                let after = self.visibility_of(&lease);
                tracing::info!(pipeline = %self.shared.name, job_id = %lease.job.id,
                    back_in_ms = after.as_millis() as u64, reason = %reason,
                    "the infrastructure failed: job back later, no attempt charged");
                self.visibility.push(lease);
            }
            Some(Ending::DeadLetter { .. }) => self.dead.push(lease),
            Some(Ending::Release | Ending::Defer { .. }) => self.visibility.push(lease),
            None => {
                tracing::error!(pipeline = %self.shared.name, job_id = %lease.job.id,
                    "settling lease without an ending: giving it back");
                lease.set_ending(Ending::Release);
                self.visibility.push(lease);
            }
        }
    }

    /// The visibility to set for a lease's ending.
    fn visibility_of(&self, lease: &Lease) -> Duration {
        let cfg = &self.shared.config;
        match lease.ending() {
            Some(Ending::Retry { after, .. }) => after.unwrap_or_else(|| {
                cfg.retry_backoff(self.shared.life.attempts_of(&lease.job.id).max(1))
            }),
            Some(Ending::Wait { after, .. }) => after.unwrap_or_else(|| {
                let deps = &self.shared.care.dependencies;
                deps.pause().unwrap_or_else(|| deps.wait_after(1))
            }),
            Some(Ending::Defer { after }) => after,
            _ => Duration::ZERO,
        }
    }

    /// Whether anything is buffered to send.
    fn buffered(&self) -> bool {
        !(self.deletes.is_empty()
            && self.visibility.is_empty()
            && self.dead.is_empty()
            && self.completing.is_empty())
    }

    fn pending(&self) -> bool {
        self.buffered() || !self.parked.is_empty()
    }

    /// Puts entries whose pause is over (all of them when `all`) back in
    /// their buffers.
    fn unpark(&mut self, all: bool) {
        let now = Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(at, _, _)| all || *at <= now);
        self.parked = wait;
        for (_, step, lease) in due {
            match step {
                Step::Complete => self.completing.push(lease),
                Step::Delete => self.deletes.push(Delete::Job(lease)),
                Step::Visibility => self.visibility.push(lease),
                Step::DeadLetter => self.dead.push(lease),
            }
        }
    }

    /// Sends full batches now and schedules the rest — or sends everything
    /// now when no other job is in flight to fill a batch.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let idle = self.shared.nothing_else_in_flight(0);
        if self.failures == 0 {
            self.flush(ctx, !idle);
        }
        self.arm(ctx);
        self.check_idle();
    }

    /// Sets the timer for what is pending: the next flush of what is
    /// buffered, or the end of the first pause of what is parked.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if self.timer.is_some() || !self.pending() {
            return;
        }
        let every = if !self.buffered() {
            let first = self.parked.iter().map(|(at, _, _)| *at).min();
            first.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
        } else if self.failures == 0 {
            self.shared.config.flush_interval
        } else {
            // A doubling backoff while calls keep failing.
            SETTLE_RETRIES.delay(self.failures)
        };
        self.timer = Some(ctx.run_later(every, |act, ctx| {
            act.timer = None;
            act.flush(ctx, false);
            act.arm(ctx);
        }));
    }

    fn flush(&mut self, ctx: &mut Context<Self>, only_full: bool) {
        self.unpark(false);
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
        // A give-back waits for an extension under way: sent after it, the
        // extension would hide the message again.
        let mut later = Vec::new();
        if self.visibility.iter().any(|l| l.is_extending()) {
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.visibility)
                .into_iter()
                .partition(|l| !l.is_extending());
            self.visibility = ready;
            later = waiting;
        }
        while self.visibility.len() >= min {
            let n = self.visibility.len().min(MAX_BATCH);
            let batch: Vec<Arc<Lease>> = self.visibility.drain(..n).collect();
            self.send_visibility(batch, ctx);
        }
        if !later.is_empty() {
            self.visibility.extend(later);
            if self.timer.is_none() {
                let every = self.shared.config.flush_interval;
                self.timer = Some(ctx.run_later(every, |act, ctx| {
                    act.timer = None;
                    act.flush(ctx, false);
                }));
            }
        }
        while self.dead.len() >= min {
            let n = self.dead.len().min(MAX_BATCH);
            let batch: Vec<Arc<Lease>> = self.dead.drain(..n).collect();
            self.send_dead(batch, ctx);
        }
    }

    /// Other messages merged into these leases go with them: deleted with a
    /// job whose effects are done (as copies, in a later batch: one that
    /// fails comes back and is dropped as a duplicate). A dead-lettered
    /// job's others are not copies of finished work — one may be the fixed
    /// re-send — so they are given back once its own message is gone
    /// ([`Acker::deleted`]), and run as the job anew.
    fn delete_others(&mut self, batch: &[Delete]) {
        for d in batch {
            if let Delete::Job(lease) = d {
                if lease.had_others() && !is_dead_lettered(lease) {
                    let copies = lease.take_others();
                    self.deletes.extend(copies.into_iter().map(Delete::Copy));
                }
            }
        }
    }

    /// Given back with leases given back (best effort: one that fails comes
    /// back when its visibility lapses).
    fn give_back_others(&mut self, batch: &[Arc<Lease>], ctx: &mut Context<Self>) {
        let mut back = Vec::new();
        for lease in batch.iter().filter(|l| l.had_others()) {
            let after = self.visibility_of(lease);
            back.extend(lease.take_others().into_iter().map(|h| (h, after)));
        }
        self.give_back(back, ctx);
    }

    fn give_back(&mut self, mut back: Vec<(String, Duration)>, ctx: &mut Context<Self>) {
        while !back.is_empty() {
            let chunk: Vec<(String, Duration)> = back.drain(..back.len().min(MAX_BATCH)).collect();
            let queue = self.shared.sinks.source.clone();
            self.call(
                ctx,
                async move { queue.change_visibility_batch(&chunk).await },
                |_, _, _| {},
            );
        }
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

    /// One entry failed. A retryable failure, while the lease holds, is
    /// parked for its own doubling pause and then tried again; a permanent
    /// one, or one whose lease lapsed, takes the last resort: the lease is
    /// let go.
    fn failed(&mut self, lease: Arc<Lease>, error: &BackendError, what: &str, step: Step) {
        let n = lease.settle_failed();
        self.failures = self.failures.saturating_add(1);
        let s = &self.shared;
        // A completion is tried however late: the job's effects are done,
        // and the record is what keeps another worker from running it.
        let holds = step == Step::Complete || !crate::pipeline::run::deadline::lapsed(&lease);
        if error.is_retryable() && holds {
            let pause = SETTLE_RETRIES.delay(n);
            tracing::debug!(pipeline = %s.name, job_id = %lease.job.id, error = %error,
                attempt = n, retry_in_ms = pause.as_millis() as u64, "{what} failed; will retry");
            self.parked.push((Instant::now() + pause, step, lease));
            return;
        }
        Stats::inc(&s.stats.settle_gave_up);
        tracing::error!(pipeline = %s.name, job_id = %lease.job.id, error = %error,
            attempts = n, "{what} failed for good: letting the lease go; the queue's \
            visibility timeout returns the message");
        self.let_go(lease);
    }

    /// The last resort: the lease ends here without a queue call; the
    /// message comes back when its visibility lapses. A job whose effects
    /// (or dead-letter entry) are done stays remembered, so its return is
    /// deleted as a copy instead of being run (or dead-lettered) again.
    fn let_go(&mut self, lease: Arc<Lease>) {
        let how = match lease.ending() {
            // Its message is not deleted: it comes back, and its FIFO
            // group waits for it.
            Some(Ending::Delete {
                dead_lettered: true,
            }) => Ended::DeadLetteredUndeleted,
            Some(Ending::Delete { .. }) => {
                // Its effects are done: a claim left is let lapse, never
                // released for another worker to run the job at once.
                lease.take_claim();
                Ended::Deleted
            }
            _ => Ended::Released,
        };
        let next = self.shared.end(&[lease], how);
        self.routes.send(next);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
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

impl actix::Supervised for Acker {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // The calls in flight were dropped with the old context: rebuild
        // every buffer from the Settling leases (copies to drop are not
        // kept: they come back and are dropped again).
        self.deletes.clear();
        self.visibility.clear();
        self.dead.clear();
        self.completing.clear();
        self.parked.clear();
        self.timer = None;
        self.outstanding = 0;
        for lease in self.shared.life.restart_owner(&[LeaseState::Settling]) {
            self.accept(lease);
        }
        self.schedule(ctx);
    }
}

impl Handler<Restart> for Acker {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for Acker {
    const NAME: &'static str = "acker";
    const OWNS: Option<crate::lease::Owner> = Some(crate::lease::Owner::Acker);
}

impl Handler<Settle> for Acker {
    type Result = ();

    fn handle(&mut self, msg: Settle, ctx: &mut Context<Self>) {
        for lease in msg.0 {
            self.accept(lease);
        }
        self.schedule(ctx);
    }
}

impl Handler<DropCopies> for Acker {
    type Result = ();

    fn handle(&mut self, msg: DropCopies, ctx: &mut Context<Self>) {
        self.deletes.extend(msg.0.into_iter().map(Delete::Copy));
        self.schedule(ctx);
    }
}

impl Handler<Flush> for Acker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        // A drain tries what is parked now rather than after its pause.
        self.unpark(true);
        self.flush(ctx, false);
        let (tx, rx) = oneshot::channel();
        self.idle_waiters.push(tx);
        self.check_idle();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

mod dead_letter;
mod effects;
#[cfg(test)]
mod tests;
