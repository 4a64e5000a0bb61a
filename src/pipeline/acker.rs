//! The acker: the last step, and the owner of the Settling state. It carries
//! out each lease's ending (kept in the lease): deletes finished messages
//! with their newest receipt handle, sets the visibility of jobs to retry or
//! give back, sends bad input to the dead-letter queue (then deletes it) —
//! in batches of ten, flushed at once when a batch is full and otherwise
//! every `flush_interval`.
//!
//! Retries are bounded: a failed entry is retried alone with a doubling
//! backoff, a permanent refusal is not retried as if it were transient, and
//! after `settle_attempts` the last resort applies — the lease is let go and
//! the queue's own visibility timeout (and redrive policy) takes the
//! message. On restart the acker re-derives its buffers from the Settling
//! leases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::lifecycle::Ended;
use super::messages::{DropCopies, Flush, Restart, Settle};
use super::shared::Shared;
use crate::backend::{
    attribute_size, message_size, sqs_text, OutgoingMessage, MAX_BATCH, MAX_MESSAGE_BYTES,
};
use crate::error::BackendError;
use crate::idempotency::ClaimOutcome;
use crate::job::{
    JobId, DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE,
    DLQ_TRUNCATED_ATTRIBUTE, JOB_ID_ATTRIBUTE, MAX_JOB_ID_BYTES,
};
use crate::lease::{Ending, Lease, LeaseState};
use crate::stats::Stats;

/// SQS's limit on message attributes.
const MAX_ATTRIBUTES: usize = 10;
/// Longest dead-letter reason kept (characters).
const MAX_REASON: usize = 1024;

/// `s` cut to at most `max` characters, with `…` as its last when cut.
fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    s.chars().take(max - 1).chain(['…']).collect()
}

/// `s` cut to at most `max` bytes (at a char boundary).
fn cut_bytes(s: &str, max: usize) -> String {
    s[..s.floor_char_boundary(max)].to_owned()
}

fn is_dead_lettered(lease: &Lease) -> bool {
    matches!(
        lease.ending(),
        Some(Ending::Delete {
            dead_lettered: true
        })
    )
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
    deletes: Vec<Delete>,
    visibility: Vec<Arc<Lease>>,
    dead: Vec<Arc<Lease>>,
    /// Claimed jobs whose effects are done: their records are marked
    /// completed before their messages are deleted.
    completing: Vec<Arc<Lease>>,
    timer: Option<SpawnHandle>,
    outstanding: usize,
    /// Failures in a row, for the retry backoff.
    failures: u32,
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
                if self.shared.life.attempts.of(&lease.job.id) >= cfg.max_receives =>
            {
                let n = self.shared.life.attempts.of(&lease.job.id);
                let reason = format!("failed on all {n} attempts; last error: {reason}");
                lease.set_ending(Ending::DeadLetter { reason });
                self.dead.push(lease);
            }
            Some(Ending::Retry { reason, .. }) => {
                let attempts = self.shared.life.attempts.of(&lease.job.id);
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
                cfg.retry_backoff(self.shared.life.attempts.of(&lease.job.id).max(1))
            }),
            Some(Ending::Wait { after, .. }) => after.unwrap_or_else(|| {
                let deps = &self.shared.care.dependencies;
                deps.pause().unwrap_or_else(|| deps.wait_after(1))
            }),
            Some(Ending::Defer { after }) => after,
            _ => Duration::ZERO,
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
        if self.failures == 0 {
            self.flush(ctx, !idle);
        }
        if self.pending() && self.timer.is_none() {
            let every = if self.failures == 0 {
                self.shared.config.flush_interval
            } else {
                // A doubling backoff while calls keep failing.
                Duration::from_millis(50 << self.failures.min(7))
            };
            self.timer = Some(ctx.run_later(every, |act, ctx| {
                act.timer = None;
                act.flush(ctx, false);
            }));
        }
        self.check_idle();
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

    /// One entry failed. Retryable failures go back in the buffer (counted,
    /// with backoff); a permanent one, or one past the attempt limit, takes
    /// the last resort: returns false and the caller lets the lease go.
    fn failed(&mut self, lease: &Lease, error: &BackendError, what: &str) -> bool {
        let n = lease.settle_failed();
        self.failures = self.failures.saturating_add(1);
        let s = &self.shared;
        if error.is_retryable() && n < s.config.settle_attempts {
            tracing::debug!(pipeline = %s.name, job_id = %lease.job.id, error = %error,
                attempt = n, "{what} failed; will retry");
            return true;
        }
        Stats::inc(&s.stats.settle_gave_up);
        tracing::error!(pipeline = %s.name, job_id = %lease.job.id, error = %error,
            attempts = n, "{what} failed for good: letting the lease go; the queue's \
            visibility timeout returns the message");
        false
    }

    /// The last resort: the lease ends here without a queue call; the
    /// message comes back when its visibility lapses. A job whose effects
    /// (or dead-letter entry) are done stays remembered, so its return is
    /// deleted as a copy instead of being run (or dead-lettered) again.
    fn let_go(&mut self, lease: Arc<Lease>) {
        let how = match lease.ending() {
            Some(Ending::Delete {
                dead_lettered: true,
            }) => Ended::DeadLettered,
            Some(Ending::Delete { .. }) => Ended::Deleted,
            _ => Ended::Released,
        };
        self.shared.end(&[lease], how);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Marks claimed jobs completed in the idempotency store; deletes follow.
    fn send_completions(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let (batch, lapsed) = super::deadline::split_lapsed(&self.shared, batch, |l| Some(l));
        lapsed.into_iter().for_each(|l| self.let_go(l));
        if batch.is_empty() {
            return;
        }
        let s = &self.shared;
        let keep = s.config.completed_ttl;
        let calls = s.store_calls(&batch, |store, key, owner| async move {
            store.complete(&key, &owner, keep).await
        });
        self.call(ctx, calls, |act, results, _| act.completed(batch, results));
    }

    fn completed(&mut self, batch: Vec<Arc<Lease>>, results: Vec<Result<bool, BackendError>>) {
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
                Err(e) => {
                    if self.failed(&lease, &e, "marking the job completed") {
                        self.completing.push(lease);
                    } else {
                        // The effects are done: delete without the record.
                        lease.take_claim();
                        self.deletes.push(Delete::Job(lease));
                    }
                }
            }
        }
    }

    fn send_deletes(&mut self, batch: Vec<Delete>, ctx: &mut Context<Self>) {
        let (batch, lapsed) = super::deadline::split_lapsed(&self.shared, batch, |d| match d {
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
    fn per_entry<T>(
        n: usize,
        res: Result<Vec<Result<T, BackendError>>, BackendError>,
    ) -> Vec<Result<(), BackendError>> {
        match res {
            Ok(r) => r.into_iter().map(|e| e.map(|_| ())).collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    fn deleted(
        &mut self,
        batch: Vec<Delete>,
        handles: Vec<String>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        let results = Self::per_entry(batch.len(), res);
        let (mut deleted, mut dead) = (Vec::new(), Vec::new());
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
                        dead.push(lease);
                    } else {
                        deleted.push(lease);
                    }
                }
                Err(e) => {
                    if self.failed(&lease, &e, "delete") {
                        self.deletes.push(Delete::Job(lease));
                    } else {
                        self.let_go(lease);
                    }
                }
            }
        }
        s.stats.add(&s.stats.acked, deleted.len() as u64);
        s.end(&deleted, Ended::Deleted);
        s.end(&dead, Ended::DeadLettered);
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

    fn send_visibility(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
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

    fn visibility_changed(
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
                Err(e) => {
                    if self.failed(&lease, &e, "visibility change") {
                        self.visibility.push(lease);
                    } else {
                        self.let_go(lease);
                    }
                }
            }
        }
        s.end(&ended, Ended::Released);
    }

    /// A lease's dead-letter entry: the original body, ferry's four
    /// attributes (a reason never empty, at most 1,024 characters, a job id
    /// at most [`MAX_JOB_ID_BYTES`]: each with only characters SQS allows)
    /// and as many of the original attributes as fit within SQS's ten and
    /// its size limit. Whatever a message held, the entry is one SQS takes.
    fn dead_letter_entry(&self, lease: &Lease) -> OutgoingMessage {
        let job = &lease.job;
        let reason = match lease.ending() {
            Some(Ending::DeadLetter { reason }) if !reason.trim().is_empty() => reason,
            _ => "no reason given".to_owned(),
        };
        let reason = cut_chars(&sqs_text(&reason), MAX_REASON);
        let ours = [
            (
                JOB_ID_ATTRIBUTE,
                cut_bytes(&sqs_text(job.id.as_str()), MAX_JOB_ID_BYTES),
            ),
            (DLQ_REASON_ATTRIBUTE, reason),
            (
                DLQ_SOURCE_ATTRIBUTE,
                cut_chars(&sqs_text(self.shared.sinks.source.name()), 256),
            ),
            (DLQ_RECEIVES_ATTRIBUTE, job.receive_count.to_string()),
        ];
        let mut body = job.original_body().to_owned();
        let mut attributes: HashMap<String, String> = ours
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        if attributes[JOB_ID_ATTRIBUTE] != job.id.as_str() {
            // Not the job as it came: marked like a cut body, never redriven
            // (it would run under another id).
            attributes.insert(DLQ_TRUNCATED_ATTRIBUTE.to_owned(), body.len().to_string());
        }
        let ours_size = message_size("", &attributes);
        if body.len() + ours_size > MAX_MESSAGE_BYTES {
            // Never an entry the queue refuses for ever: the body is cut to
            // fit, and the entry says how long it was.
            let original = body.len().to_string();
            let room = MAX_MESSAGE_BYTES
                .saturating_sub(ours_size)
                .saturating_sub(attribute_size(DLQ_TRUNCATED_ATTRIBUTE, &original));
            body.truncate(body.floor_char_boundary(room));
            attributes.insert(DLQ_TRUNCATED_ATTRIBUTE.to_owned(), original);
        }
        let mut size = message_size(&body, &attributes);
        let mut theirs: Vec<_> = job
            .attributes
            .iter()
            .filter(|(k, v)| !k.is_empty() && !v.is_empty() && !attributes.contains_key(*k))
            .collect();
        theirs.sort();
        for (k, v) in theirs {
            let more = attribute_size(k, v);
            if attributes.len() >= MAX_ATTRIBUTES || size + more > MAX_MESSAGE_BYTES {
                break;
            }
            size += more;
            attributes.insert(k.clone(), v.clone());
        }
        let fifo = self.shared.sinks.dead_letter.is_fifo();
        OutgoingMessage {
            body,
            attributes,
            group_id: fifo.then(|| match &job.group_id {
                Some(g) => g.clone(),
                // A job id can be longer than a group id may be (128).
                None => job.id.dedup_id("dead-letter"),
            }),
            // Per message, not per job: the same message dead-lettered
            // twice (its delete lost) is one entry, but a job redriven and
            // dead-lettered again within the five-minute window is a new
            // message and must not be dropped as a duplicate.
            dedup_id: fifo.then(|| JobId::new(&job.message_id).dedup_id("dead-letter")),
            delay: None,
        }
    }

    /// Sends dead-letter entries. With an idempotency store each message's
    /// dead-letter mark is claimed first, so two workers holding copies of
    /// one message (their attempts counted apart) make one entry: a message
    /// already marked is deleted without one; one being marked elsewhere
    /// is given back until that worker is done (it may yet fail to send),
    /// and so is one whose mark the store could not take (after quick
    /// retries).
    fn send_dead(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let s = self.shared.clone();
        let Some(store) = s.sinks.store.clone().filter(|_| !batch.is_empty()) else {
            self.send_dead_entries(batch, ctx);
            return;
        };
        let (hold, attempts) = (s.config.claim_hold(), s.config.effect_attempts);
        let marks = futures_util::future::join_all(batch.iter().map(|l| {
            let (store, key, owner) = (store.clone(), s.dead_letter_mark(l), s.owner(l));
            async move {
                crate::backoff::with_retries(attempts, || store.claim(&key, &owner, hold)).await
            }
        }));
        self.call(ctx, marks, move |act, results, ctx| {
            let mut send = Vec::new();
            for (lease, r) in batch.into_iter().zip(results) {
                match r {
                    Ok(ClaimOutcome::Completed) => {
                        s.life.seen.dead_lettered(&lease.job.message_id);
                        lease.set_ending(Ending::Delete {
                            dead_lettered: true,
                        });
                        act.deletes.push(Delete::Job(lease));
                    }
                    // Being marked elsewhere, or the store failing: look
                    // again later rather than risk a second entry.
                    Ok(ClaimOutcome::HeldElsewhere { .. }) | Err(_) => {
                        lease.set_ending(Ending::Defer { after: hold });
                        act.visibility.push(lease);
                    }
                    Ok(ClaimOutcome::Claimed) => send.push(lease),
                }
            }
            act.send_dead_entries(send, ctx);
        });
    }

    fn send_dead_entries(&mut self, mut batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let mut messages: Vec<OutgoingMessage> =
            batch.iter().map(|l| self.dead_letter_entry(l)).collect();
        // Entries can be as large as a message: cut to the request's limit.
        for range in crate::backend::batches(&messages).into_iter().rev() {
            let part: Vec<OutgoingMessage> = messages.drain(range.clone()).collect();
            let leases: Vec<Arc<Lease>> = batch.drain(range).collect();
            let queue = self.shared.sinks.dead_letter.clone();
            self.call(
                ctx,
                async move { queue.send_batch(part).await },
                |act, res, ctx| act.dead_lettered(leases, res, ctx),
            );
        }
    }

    fn dead_lettered(
        &mut self,
        batch: Vec<Arc<Lease>>,
        res: Result<Vec<Result<String, BackendError>>, BackendError>,
        ctx: &mut Context<Self>,
    ) {
        let s = self.shared.clone();
        let results = Self::per_entry(batch.len(), res);
        let mut sent = Vec::new();
        for (lease, r) in batch.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    self.succeeded();
                    // Recorded before anything else can fail: a restart
                    // from here deletes, it does not send again. Should the
                    // delete not happen, the message's return is deleted
                    // without a second entry.
                    let ending = lease.ending();
                    lease.set_ending(Ending::Delete {
                        dead_lettered: true,
                    });
                    s.life.seen.dead_lettered(&lease.job.message_id);
                    sent.push(lease.clone());
                    Stats::inc(&s.stats.dead_lettered);
                    if let Some(Ending::DeadLetter { reason }) = ending {
                        tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                            reason = %reason, "sent to the dead-letter queue");
                    }
                }
                Err(e) => {
                    if self.failed(&lease, &e, "dead-letter send") {
                        self.dead.push(lease);
                    } else {
                        self.let_go(lease);
                    }
                }
            }
        }
        self.mark_dead_lettered(sent, ctx);
    }

    /// With an idempotency store, completes each message's dead-letter mark
    /// before it is deleted, so a return of it to another worker is deleted
    /// there without a second entry (best effort: a failed mark only loses
    /// that); then deletes them.
    fn mark_dead_lettered(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let s = self.shared.clone();
        let Some(store) = s.sinks.store.clone().filter(|_| !leases.is_empty()) else {
            self.deletes.extend(leases.into_iter().map(Delete::Job));
            return;
        };
        let (keep, attempts) = (s.config.completed_ttl, s.config.effect_attempts);
        let marks = futures_util::future::join_all(leases.iter().map(|l| {
            let (store, key, owner) = (store.clone(), s.dead_letter_mark(l), s.owner(l));
            async move {
                // Claimed before the send (`send_dead`).
                let _ =
                    crate::backoff::with_retries(attempts, || store.complete(&key, &owner, keep))
                        .await;
            }
        }));
        self.call(ctx, marks, move |act, _, _| {
            act.deletes.extend(leases.into_iter().map(Delete::Job));
        });
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
        self.timer = None;
        self.outstanding = 0;
        for lease in self
            .shared
            .life
            .leases
            .restart_owner(&[LeaseState::Settling])
        {
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

impl super::supervision::Child for Acker {
    const NAME: &'static str = "acker";
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
        self.flush(ctx, false);
        let (tx, rx) = oneshot::channel();
        self.idle_waiters.push(tx);
        self.check_idle();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

#[cfg(test)]
mod tests;
