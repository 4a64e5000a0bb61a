//! The acker's dead-letter entries: what one holds (the original body and
//! attributes, ferry's reason, source, receive count and job id, all within
//! SQS's limits), sending them, and the store's dead-letter marks.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::backend::{attribute_size, message_size, sqs_text, OutgoingMessage, MAX_MESSAGE_BYTES};
use crate::error::BackendError;
use crate::idempotency::ClaimOutcome;
use crate::job::{
    JobId, DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE,
    DLQ_TRUNCATED_ATTRIBUTE, JOB_ID_ATTRIBUTE, MAX_JOB_ID_BYTES,
};
use crate::lease::{Ending, Lease};
use crate::stats::Stats;

use super::{Acker, Delete, Step};

/// SQS's limit on message attributes.
pub(super) const MAX_ATTRIBUTES: usize = 10;
/// Longest dead-letter reason kept (characters).
pub(super) const MAX_REASON: usize = 1024;

/// `s` cut to at most `max` characters, with `…` as its last when cut.
pub(super) fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    s.chars().take(max - 1).chain(['…']).collect()
}

/// `s` cut to at most `max` bytes (at a char boundary).
pub(super) fn cut_bytes(s: &str, max: usize) -> String {
    s[..s.floor_char_boundary(max)].to_owned()
}

impl Acker {
    /// A lease's dead-letter entry: the original body, ferry's four
    /// attributes (a reason never empty, at most 1,024 characters, a job id
    /// at most [`MAX_JOB_ID_BYTES`]: each with only characters SQS allows)
    /// and as many of the original attributes as fit within SQS's ten and
    /// its size limit. Whatever a message held, the entry is one SQS takes.
    pub(super) fn dead_letter_entry(&self, lease: &Lease) -> OutgoingMessage {
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
    pub(super) fn send_dead(&mut self, batch: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
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
                        s.life.mark_dead_lettered(&lease.job.message_id);
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
                    Ok(ClaimOutcome::Claimed | ClaimOutcome::TakenOver) => send.push(lease),
                }
            }
            act.send_dead_entries(send, ctx);
        });
    }

    pub(super) fn send_dead_entries(
        &mut self,
        mut batch: Vec<Arc<Lease>>,
        ctx: &mut Context<Self>,
    ) {
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

    pub(super) fn dead_lettered(
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
                    s.life.mark_dead_lettered(&lease.job.message_id);
                    sent.push(lease.clone());
                    Stats::inc(&s.stats.dead_lettered);
                    if let Some(Ending::DeadLetter { reason }) = ending {
                        tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                            reason = %reason, "sent to the dead-letter queue");
                        for hook in &s.on_dead_letter {
                            crate::processor::call_hook("on_dead_letter", &lease.job, || {
                                hook(&lease.job, &reason)
                            });
                        }
                    }
                }
                Err(e) => self.failed(lease, &e, "dead-letter send", Step::DeadLetter),
            }
        }
        self.mark_dead_lettered(sent, ctx);
    }

    /// With an idempotency store, completes each message's dead-letter mark
    /// before it is deleted, so a return of it to another worker is deleted
    /// there without a second entry (best effort: a failed mark only loses
    /// that); then deletes them.
    pub(super) fn mark_dead_lettered(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
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
}
