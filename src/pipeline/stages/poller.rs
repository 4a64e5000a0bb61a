//! The poller: keeps receives in flight while leases are below the limit,
//! derives each delivery's job id (the pipeline's job-id function, if any),
//! classifies it with the seen-ID cache, deletes S3 test events, and hands
//! new jobs on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::backend::{ReceivedMessage, MAX_BATCH};
use crate::error::BackendError;
use crate::job::Job;
use crate::lease::Arrival;
use crate::lease::{Ending, Move};
use crate::pipeline::messages::{Arrived, Restart, ResumePolling, StopPolling};
use crate::pipeline::next::{Next, Routes};
use crate::pipeline::shared::Shared;
use crate::stats::Stats;

pub(crate) struct Poller {
    shared: Arc<Shared>,
    /// Where what its steps hand on goes.
    routes: Routes,
    /// The gate new leases pass, when the pipeline has one.
    /// Where new leases go first, when the pipeline gates them.
    gate: Option<Recipient<Arrived>>,
    /// Receives in flight, by slot number.
    active: Vec<(u64, SpawnHandle)>,
    next_slot: u64,
    /// Receives to keep in flight now (1 ..= receive_concurrency).
    target: usize,
    /// Jobs started per second, smoothed; sizes the prefetch window.
    rate: f64,
    rate_mark: (Instant, u64),
    stopped: bool,
    waiting_capacity: bool,
    /// A receive failed; the next is scheduled.
    retrying: bool,
    error_streak: u32,
}

impl Poller {
    pub(crate) fn new(
        shared: Arc<Shared>,
        gate: Option<Recipient<Arrived>>,
        routes: Routes,
    ) -> Self {
        Self {
            shared,
            routes,
            gate,
            active: Vec::new(),
            next_slot: 0,
            target: 1,
            rate: 0.0,
            rate_mark: (Instant::now(), 0),
            stopped: false,
            waiting_capacity: false,
            retrying: false,
            error_streak: 0,
        }
    }

    /// Updates the job-start rate (every 20 ms at most) and the prefetch
    /// limit it sets.
    fn prefetch_limit(&mut self) -> usize {
        let now = Instant::now();
        let (at, count) = self.rate_mark;
        let dt = now.duration_since(at).as_secs_f64();
        if dt >= 0.02 {
            let started = self.shared.flow.started.load(Ordering::Relaxed);
            let sample = (started - count) as f64 / dt;
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                0.7 * self.rate + 0.3 * sample
            };
            self.rate_mark = (now, started);
        }
        let limit = self.shared.config.prefetch_limit(self.rate);
        self.shared
            .flow
            .prefetch_now
            .store(limit, Ordering::Relaxed);
        limit
    }

    /// Most receives to keep in flight. A FIFO source gets one: its batches
    /// then arrive in the queue's order, and an endpoint that does not lock
    /// message groups atomically across concurrent receives (moto, for one)
    /// cannot hand two of a group's messages to two receives at once.
    fn receive_slots(&self) -> usize {
        if self.shared.life.groups().is_some() {
            1
        } else {
            self.shared.config.receive_concurrency
        }
    }

    /// Room for another receive: below the prefetch and in-flight limits,
    /// counting what the receives already in flight may bring.
    fn room(&mut self) -> usize {
        let prefetch = self.prefetch_limit();
        let cfg = &self.shared.config;
        let coming = self.active.len() * MAX_BATCH;
        cfg.max_in_flight
            .saturating_sub(self.shared.leases_held() + coming)
            .min(prefetch.saturating_sub(self.shared.ready_pending() + coming))
    }

    /// Starts receives until the target concurrency or a limit is met. Only
    /// full batches are asked for (unless a limit is below ten), so no call
    /// is spent on a receive that could return less than it might.
    fn fill(&mut self, ctx: &mut Context<Self>) {
        let full = MAX_BATCH
            .min(self.shared.config.max_in_flight)
            .min(self.shared.config.prefetch_limit(0.0));
        while !self.stopped && !self.retrying && self.active.len() < self.target {
            let room = self.room();
            let cfg = &self.shared.config;
            if room < full {
                self.wait_for_capacity(ctx);
                return;
            }
            let max = room.min(MAX_BATCH);
            let queue = self.shared.sinks.source.clone();
            // The wait is bounded by the visibility (`poll_wait`): a message
            // arriving late in it still lands with most of its lease.
            let (wait, visibility) = (cfg.poll_wait(), cfg.visibility_timeout);
            self.shared
                .flow
                .receives_in_flight
                .fetch_add(1, Ordering::AcqRel);
            let slot = self.next_slot;
            self.next_slot += 1;
            // The lease's deadline counts from when the receive was sent:
            // the queue may have started the visibility clock any time after.
            let sent = Instant::now();
            let handle = ctx.spawn(
                async move { queue.receive(max, wait, visibility).await }
                    .into_actor(self)
                    .map(move |res, act, ctx| act.received(slot, max, res, sent + visibility, ctx)),
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
            async move { shared.flow.capacity.notified().await }
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
        asked: usize,
        res: Result<Vec<ReceivedMessage>, BackendError>,
        visible_until: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.active.retain(|(s, _)| *s != slot);
        self.shared
            .flow
            .receives_in_flight
            .fetch_sub(1, Ordering::AcqRel);
        match res {
            Ok(messages) => {
                self.error_streak = 0;
                let full = messages.len() >= asked;
                let empty = messages.is_empty();
                self.accept(messages, visible_until);
                // Grow while receives come back full and the processors
                // risk running dry (under half the prefetch window waiting,
                // and room for more); shrink when they have enough waiting,
                // and after empty receives. Every receive kept in flight
                // costs a call when the queue runs empty.
                let starving = self.shared.ready_pending() * 2 < self.prefetch_limit();
                if full && starving && self.room() >= asked {
                    self.target = (self.target + 1).min(self.receive_slots());
                } else if empty || (full && !starving) {
                    self.target = self.target.saturating_sub(1).max(1);
                }
                match self.shared.care.dependencies.pause() {
                    // A dependency is failing: the pipeline slows down as a
                    // whole, one receive at a time after a jittered wait,
                    // until calls succeed again.
                    Some(wait) => {
                        self.target = 1;
                        self.fill_after(wait, ctx);
                    }
                    None => self.fill(ctx),
                }
            }
            Err(e) => {
                self.error_streak += 1;
                let delay = self.shared.care.dependencies.pause().unwrap_or_else(|| {
                    crate::backoff::Backoff::jittered(
                        Duration::from_millis(100),
                        Duration::from_millis(3200),
                    )
                    .delay(self.error_streak)
                });
                tracing::warn!(pipeline = %self.shared.name, queue = self.shared.sinks.source.name(),
                    error = %e, retry_in_ms = delay.as_millis() as u64, "receive failed");
                self.fill_after(delay, ctx);
            }
        }
    }

    /// Starts receives again after `wait`.
    fn fill_after(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        self.retrying = true;
        ctx.run_later(wait, |act, ctx| {
            act.retrying = false;
            act.fill(ctx);
        });
    }

    /// Classifies each delivery and sends new jobs on.
    fn accept(&mut self, messages: Vec<ReceivedMessage>, visible_until: Instant) {
        let s = &self.shared;
        let now = Instant::now();
        Stats::add(&s.stats, &s.stats.received, messages.len() as u64);
        let (mut fresh, mut gated, mut probes, mut settle, mut copies) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // FIFO groups of this batch whose later messages go back: one of
        // theirs joined a lease already held, which may be on its way back
        // to the queue, and nothing of the group may overtake it.
        let mut held_back: Vec<String> = Vec::new();
        for mut m in messages {
            let group = m.group_id.clone();
            // The handle moves into the new lease, or stays here for a copy.
            let mut handle = Some(std::mem::take(&mut m.receipt_handle));
            let mut job = Job::from_message(m);
            // A content-derived id replaces the default before anything
            // (seen cache, lease, claims, keys) looks at it.
            if let Some(id) = s.derived_id(&job) {
                job.id = id;
            }
            let id = job.id.clone();
            let k = id.key();
            // The job moves into the new lease, or stays here for a copy.
            let mut job = Some(job);
            let claim = s.life.arrive(k, visible_until, now, || {
                let h = handle.take().expect("taken once");
                (job.take().expect("taken once"), h)
            });
            match claim {
                Arrival::InFlight(lease) => {
                    // The newest handle is the one SQS honours; another
                    // message of the same job is held beside the first.
                    let copy = job.take().expect("not taken for a copy");
                    lease.merge(
                        &copy.message_id,
                        handle.expect("not taken for a copy"),
                        visible_until,
                    );
                    Stats::inc(&s.stats.duplicates_merged);
                    tracing::debug!(pipeline = %s.name, job_id = %id, "duplicate merged into lease");
                    if let Some(g) = group.filter(|g| !held_back.contains(g)) {
                        held_back.push(g);
                    }
                }
                Arrival::Done => {
                    Stats::inc(&s.stats.duplicates_dropped);
                    tracing::debug!(pipeline = %s.name, job_id = %id, "duplicate of a completed job dropped");
                    copies.push(handle.expect("not taken for a copy"));
                }
                Arrival::New(lease) => {
                    let count = lease.job.receive_count;
                    let behind = group.is_some_and(|g| held_back.contains(&g));
                    if self.stopped || s.is_escalated() || behind {
                        settle.push((lease, Ending::Release));
                    } else if s.life.was_dead_lettered(&lease.job.message_id) {
                        // Its entry is in the dead-letter queue already.
                        settle.push((
                            lease,
                            Ending::Delete {
                                dead_lettered: true,
                            },
                        ));
                    } else if s.config.drop_s3_test_events && lease.job.is_s3_test_event() {
                        // Nothing to do: deleted through the acker like a
                        // finished job, never gated, so a FIFO group it
                        // shares is not held behind it.
                        Stats::inc(&s.stats.s3_test_events);
                        tracing::info!(pipeline = %s.name, job_id = %id,
                            "S3 test event: deleted without processing");
                        settle.push((
                            lease,
                            Ending::Delete {
                                dead_lettered: false,
                            },
                        ));
                    } else if let Some(reason) = crate::job::job_id_problem(&lease.job.id) {
                        settle.push((lease, Ending::DeadLetter { reason }));
                    } else if let Some(most) = s.config.max_deliveries.filter(|m| count > *m) {
                        // The backstop for a message that never gets an
                        // outcome; attempts of the job's own are counted
                        // where it fails.
                        let reason = format!(
                            "received {count} times without an outcome, over max_deliveries {most}"
                        );
                        settle.push((lease, Ending::DeadLetter { reason }));
                    } else if self.gate.is_some() {
                        // Group order and claims decide when it runs.
                        if lease.step(Move::Gate).is_some() {
                            gated.push(lease);
                        }
                    } else if count > 1 && s.sinks.results.is_some() {
                        if lease.step(Move::Probe).is_some() {
                            probes.push(lease);
                        }
                    } else {
                        fresh.push(lease);
                    }
                }
            }
        }
        s.leases_changed();
        if let (Some(gate), false) = (&self.gate, gated.is_empty()) {
            gate.do_send(Arrived(gated));
        }
        let next = Next {
            run: fresh,
            probe: probes,
            drop_copies: copies,
            ..Next::none()
        };
        self.routes.send(next.and(s.settle(settle)));
    }
}

impl Actor for Poller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.fill(ctx);
    }
}

impl actix::Supervised for Poller {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The receives in flight were dropped with the old context; what
        // they would have brought comes back when its visibility lapses.
        let dropped = self.active.len();
        self.active.clear();
        self.shared
            .flow
            .receives_in_flight
            .fetch_sub(dropped, Ordering::AcqRel);
        self.waiting_capacity = false;
        self.retrying = false;
    }
}

impl Handler<Restart> for Poller {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for Poller {
    const NAME: &'static str = "poller";
}

impl Handler<ResumePolling> for Poller {
    type Result = ();

    fn handle(&mut self, _: ResumePolling, ctx: &mut Context<Self>) {
        if self.shared.shutting_down() {
            return;
        }
        self.stopped = false;
        self.fill(ctx);
    }
}

impl Handler<StopPolling> for Poller {
    type Result = ();

    fn handle(&mut self, _: StopPolling, ctx: &mut Context<Self>) {
        self.stopped = true;
        if self.shared.sinks.source.receive_is_cancel_safe() {
            for (_, h) in self.active.drain(..) {
                if ctx.cancel_future(h) {
                    self.shared
                        .flow
                        .receives_in_flight
                        .fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}
