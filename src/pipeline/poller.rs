//! The poller: keeps receives in flight while leases are below the limit,
//! classifies each delivery with the seen-ID cache, and hands new jobs on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::acker::Acker;
use super::messages::{Leased, Probe, Settle, Settlement, StopPolling};
use super::pool::ProcessorPool;
use super::uploader::Uploader;
use super::Shared;
use crate::backend::{ReceivedMessage, MAX_BATCH};
use crate::error::BackendError;
use crate::job::Job;
use crate::seen::Claim;
use crate::stats::Stats;

pub(crate) struct Poller {
    shared: Arc<Shared>,
    pool: Addr<ProcessorPool>,
    uploader: Addr<Uploader>,
    acker: Addr<Acker>,
    /// Receives in flight, by slot number.
    active: Vec<(u64, SpawnHandle)>,
    next_slot: u64,
    stopped: bool,
    waiting_capacity: bool,
    error_streak: u32,
}

impl Poller {
    pub(crate) fn new(
        shared: Arc<Shared>,
        pool: Addr<ProcessorPool>,
        uploader: Addr<Uploader>,
        acker: Addr<Acker>,
    ) -> Self {
        Self {
            shared,
            pool,
            uploader,
            acker,
            active: Vec::new(),
            next_slot: 0,
            stopped: false,
            waiting_capacity: false,
            error_streak: 0,
        }
    }

    /// Starts receives until the concurrency or the in-flight limit is met.
    fn fill(&mut self, ctx: &mut Context<Self>) {
        let cfg = &self.shared.config;
        while !self.stopped && self.active.len() < cfg.receive_concurrency {
            let reserved = self.shared.leases.len() + self.active.len() * MAX_BATCH;
            let room = cfg.max_in_flight.saturating_sub(reserved);
            if room == 0 {
                self.wait_for_capacity(ctx);
                return;
            }
            let max = room.min(MAX_BATCH);
            let queue = self.shared.source.clone();
            let (wait, visibility) = (cfg.receive_wait, cfg.visibility_timeout);
            self.shared
                .receives_in_flight
                .fetch_add(1, Ordering::AcqRel);
            let slot = self.next_slot;
            self.next_slot += 1;
            let handle = ctx.spawn(
                async move { queue.receive(max, wait, visibility).await }
                    .into_actor(self)
                    .map(move |res, act, ctx| act.received(slot, res, visibility, ctx)),
            );
            self.active.push((slot, handle));
        }
    }

    fn wait_for_capacity(&mut self, ctx: &mut Context<Self>) {
        if self.waiting_capacity {
            return;
        }
        self.waiting_capacity = true;
        let shared = self.shared.clone();
        ctx.spawn(
            async move { shared.capacity.notified().await }
                .into_actor(self)
                .map(|_, act, ctx| {
                    act.waiting_capacity = false;
                    act.fill(ctx);
                }),
        );
    }

    fn received(
        &mut self,
        slot: u64,
        res: Result<Vec<ReceivedMessage>, BackendError>,
        visibility: Duration,
        ctx: &mut Context<Self>,
    ) {
        self.active.retain(|(s, _)| *s != slot);
        self.shared
            .receives_in_flight
            .fetch_sub(1, Ordering::AcqRel);
        match res {
            Ok(messages) => {
                self.error_streak = 0;
                self.accept(messages, Instant::now() + visibility);
                self.fill(ctx);
            }
            Err(e) => {
                self.error_streak += 1;
                let delay = Duration::from_millis(50 * (1 << self.error_streak.min(6)));
                tracing::warn!(pipeline = %self.shared.name, queue = self.shared.source.name(),
                    error = %e, retry_in_ms = delay.as_millis() as u64, "receive failed");
                ctx.run_later(delay, |act, ctx| act.fill(ctx));
            }
        }
    }

    /// Classifies each delivery and sends new jobs on.
    fn accept(&mut self, messages: Vec<ReceivedMessage>, visible_until: Instant) {
        let s = &self.shared;
        Stats::add(&s.stats, &s.stats.received, messages.len() as u64);
        let (mut fresh, mut probes, mut settle) = (Vec::new(), Vec::new(), Vec::new());
        for m in messages {
            let handle = m.receipt_handle.clone();
            let job = Job::from_message(m);
            let id = job.id.clone();
            let claim = s
                .seen
                .claim(&id, || s.leases.insert(job, handle.clone(), visible_until));
            match claim {
                Claim::InFlight(lease) => {
                    // The newest handle is the one SQS honours.
                    lease.merge(handle, visible_until);
                    Stats::inc(&s.stats.duplicates_merged);
                    tracing::debug!(pipeline = %s.name, job_id = %id, "duplicate merged into lease");
                }
                Claim::Done => {
                    Stats::inc(&s.stats.duplicates_dropped);
                    tracing::debug!(pipeline = %s.name, job_id = %id, "duplicate of a completed job dropped");
                    settle.push(Settlement::DropCopy(handle));
                }
                Claim::New(lease) => {
                    let count = lease.job.receive_count;
                    if self.stopped || s.is_escalated() {
                        lease.try_release_pending();
                        settle.push(Settlement::Release(lease));
                    } else if count > s.config.max_receives {
                        let reason = format!(
                            "received {count} times, over the limit of {}",
                            s.config.max_receives
                        );
                        lease.try_release_pending();
                        settle.push(Settlement::DeadLetter { lease, reason });
                    } else if count > 1 && s.results.is_some() {
                        probes.push(lease);
                    } else {
                        fresh.push(lease);
                    }
                }
            }
        }
        if !fresh.is_empty() {
            self.pool.do_send(Leased(fresh));
        }
        if !probes.is_empty() {
            self.uploader.do_send(Probe(probes));
        }
        if !settle.is_empty() {
            self.acker.do_send(Settle(settle));
        }
    }
}

impl Actor for Poller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.fill(ctx);
    }
}

impl Handler<StopPolling> for Poller {
    type Result = ();

    fn handle(&mut self, _: StopPolling, ctx: &mut Context<Self>) {
        self.stopped = true;
        if self.shared.source.receive_is_cancel_safe() {
            for (_, h) in self.active.drain(..) {
                if ctx.cancel_future(h) {
                    self.shared
                        .receives_in_flight
                        .fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}
