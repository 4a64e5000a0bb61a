//! The lease keeper: extends the visibility of held messages before it
//! lapses, in batches, up to the maximum lease age (DESIGN rule 5), and
//! enforces each lease's deadline.
//!
//! An extension is sent once half the visibility has passed and has a time
//! limit of its own (a quarter of the visibility), so one slow or hung call
//! leaves time for another before the lease would lapse. A lease's
//! deadline counts from when its receive (or extension) was *sent*, never
//! from when the answer came. A lease past its deadline without a confirmed
//! extension is lost, whatever the reason: its job is cancelled before any
//! further effect and the lease ends.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::backend::MAX_BATCH;
use crate::error::BackendError;
use crate::lease::{Ending, Lease, LeaseState};
use crate::pipeline::messages::Restart;
use crate::pipeline::next::Routes;
use crate::pipeline::shared::Shared;
use crate::stats::Stats;

pub(crate) struct LeaseKeeper {
    shared: Arc<Shared>,
    /// Where what its steps hand on goes.
    routes: Routes,
}

/// Whether a lease whose extension failed still holds its claim: claimed,
/// not cancelled, and its deadline not passed (a lease lost or ending
/// gives its claim up, and a late renewal must not bring it back).
fn still_holds(lease: &Lease) -> bool {
    lease.is_claimed() && !lease.is_cancelled() && !crate::pipeline::run::deadline::lapsed(lease)
}

impl LeaseKeeper {
    pub(crate) fn new(shared: Arc<Shared>, routes: Routes) -> Self {
        Self { shared, routes }
    }

    /// How often leases are looked at: a tenth of the visibility timeout.
    fn tick_every(&self) -> Duration {
        (self.shared.config.visibility_timeout / 10)
            .clamp(Duration::from_millis(5), Duration::from_secs(5))
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let s = &self.shared;
        // The table's clock, which says how long each lease has been in its
        // state (a job's running time at its maximum age, below).
        s.life.tick();
        let now = Instant::now();
        let visibility = s.config.visibility_timeout;
        // Extend once half has passed; each try has a quarter: two fit
        // before the lapse.
        let margin = visibility / 2;
        let mut due = Vec::new();
        let mut expired = Vec::new();
        for lease in s.life.all() {
            let state = lease.state();
            // An extension landing after a give-back would hide the
            // message again: a lease being given back is not extended.
            if state == LeaseState::Ended || (state == LeaseState::Settling && lease.gives_back()) {
                continue;
            }
            let (handle, until) = lease.handle_and_deadline();
            if until <= now && state != LeaseState::Settling {
                // Not confirmed in time: another reader may hold it now.
                self.routes.send(s.lose(
                    &lease,
                    "visibility deadline passed without a confirmed extension",
                ));
                continue;
            }
            if lease.claim_lapsed(now) && state != LeaseState::Settling {
                // Nor its claim: another worker may run the job now.
                Stats::inc(&s.stats.claims_lost);
                self.routes.send(s.lose(
                    &lease,
                    "idempotency claim lapsed without a confirmed renewal",
                ));
                continue;
            }
            if until > now + margin {
                continue;
            }
            if let Some(limit) = s
                .config
                .lease_age_limit(now.duration_since(lease.received_at))
            {
                // A job that has run, its effects under way, keeps its lease
                // to its deadline, unextended: cancelling it now would drop
                // an effect that may still finish in time and give the job
                // back uncharged, to run again (and again, should it always
                // end this close to the limit). Past the deadline it is lost.
                let effects = matches!(state, LeaseState::Processed | LeaseState::Stored);
                if state != LeaseState::Settling && !effects {
                    expired.push((lease, limit));
                }
            } else if lease.begin_extend() {
                // Other messages of the same job go with the lease's own.
                for other in lease.others_due(now, Instant::now() + visibility) {
                    due.push((lease.clone(), other, false));
                }
                due.push((lease, handle, true));
            }
        }
        if !expired.is_empty() {
            let mut settle = Vec::new();
            for (lease, limit) in expired {
                tracing::warn!(pipeline = %s.name, job_id = %lease.job.id, limit,
                    "lease reached its maximum age: job cancelled, message given back");
                Stats::inc(&s.stats.leases_lost);
                s.life.cancel(&lease);
                let ending = s.past_max_age(&lease, limit);
                settle.push((lease, ending));
            }
            self.routes.send(s.settle(settle));
        }
        let limit = visibility / 4;
        for chunk in chunks_by_lease(due) {
            let entries: Vec<(String, Duration)> = chunk
                .iter()
                .map(|(_, h, _)| (h.clone(), visibility))
                .collect();
            let queue = s.sinks.source.clone();
            let sent = Instant::now();
            ctx.spawn(
                async move {
                    match tokio::time::timeout(limit, queue.change_visibility_batch(&entries)).await
                    {
                        Ok(r) => r,
                        Err(_) => Err(BackendError::transient(format!(
                            "extension not answered within {} ms",
                            limit.as_millis()
                        ))),
                    }
                }
                .into_actor(self)
                .map(move |res, act, ctx| act.extended(chunk, res, sent + visibility, ctx)),
            );
        }
    }

    fn extended(
        &mut self,
        chunk: Vec<(Arc<Lease>, String, bool)>,
        res: Result<Vec<Result<(), BackendError>>, BackendError>,
        until: Instant,
        ctx: &mut Context<Self>,
    ) {
        let s = &self.shared;
        let mut renew = Vec::new();
        let results = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pipeline = %s.name, error = %e, "extending leases failed; will retry");
                // The leases still hold until their deadlines, and so must
                // their claims (the queue throttling extensions is no reason
                // for another worker to take a job).
                let renew: Vec<Arc<Lease>> = chunk
                    .into_iter()
                    .filter(|(_, _, own)| *own)
                    .map(|(l, _, _)| {
                        l.end_extend();
                        l
                    })
                    .filter(|l| still_holds(l))
                    .collect();
                if !renew.is_empty() {
                    self.renew_claims(renew, ctx);
                }
                return;
            }
        };
        for ((lease, handle, own), r) in chunk.into_iter().zip(results) {
            if !own {
                // Another message merged into the lease: kept while it
                // extends, dropped when refused.
                match r {
                    Ok(()) => lease.other_extended(&handle, until),
                    Err(BackendError::ReceiptInvalid) => lease.drop_other(&handle),
                    Err(_) => {}
                }
                continue;
            }
            lease.end_extend();
            match r {
                Ok(()) => {
                    if lease.extended(&handle, until) {
                        Stats::inc(&s.stats.leases_extended);
                        if lease.is_claimed() {
                            renew.push(lease);
                        }
                    }
                }
                Err(BackendError::ReceiptInvalid)
                    if lease.handle() == handle && lease.state() != LeaseState::Settling =>
                {
                    // Someone else holds the message now: stop before any effect.
                    self.routes
                        .send(s.lose(&lease, "receipt handle no longer valid"));
                }
                Err(e) => {
                    tracing::debug!(pipeline = %s.name, job_id = %lease.job.id, error = %e,
                        "extension not applied; will retry");
                    // The lease still holds until its deadline: its claim
                    // must not lapse before it because the queue throttled
                    // an extension (the job may be done and completing).
                    if still_holds(&lease) {
                        renew.push(lease);
                    }
                }
            }
        }
        if !renew.is_empty() {
            self.renew_claims(renew, ctx);
        }
    }

    /// The heartbeat renews the idempotency claims of the leases it extended,
    /// or tried to: a failed extension leaves the lease held until its
    /// deadline, and its claim with it.
    /// A renewal refused means another worker took the job over, and one
    /// that fails (after quick retries) may let the claim lapse before the
    /// next: either way this attempt is cancelled before its effects and
    /// its message given back.
    fn renew_claims(&mut self, leases: Vec<Arc<Lease>>, ctx: &mut Context<Self>) {
        let s = &self.shared;
        let hold = s.config.claim_hold();
        let attempts = s.config.effect_attempts;
        // A renewal holds from when it was sent, however late the answer.
        let until = Instant::now() + hold;
        let calls = s.store_calls(&leases, |store, key, owner| async move {
            crate::backoff::with_retries(attempts, || store.renew(&key, &owner, hold)).await
        });
        ctx.spawn(calls.into_actor(self).map(move |results, act, _| {
            let s = &act.shared;
            let mut lost = Vec::new();
            for (lease, r) in leases.into_iter().zip(results) {
                match r {
                    Ok(true) => lease.claim_renewed(until),
                    Ok(false)
                        if lease.is_claimed()
                            && !lease.is_cancelled()
                            && lease.state() != LeaseState::Settling =>
                    {
                        tracing::warn!(pipeline = %s.name, job_id = %lease.job.id,
                                    "idempotency claim lost: job cancelled before its effects");
                        Stats::inc(&s.stats.claims_lost);
                        lease.take_claim();
                        s.life.cancel(&lease);
                        lost.push((lease, Ending::Release));
                    }
                    Ok(false) => {}
                    // Unconfirmed, the claim may lapse before the next
                    // renewal (it was last renewed half a visibility ago)
                    // and another worker take the job: this attempt stops
                    // before its effects, charged nothing.
                    Err(e)
                        if lease.is_claimed()
                            && !lease.is_cancelled()
                            && lease.state() != LeaseState::Settling =>
                    {
                        tracing::warn!(pipeline = %s.name, job_id = %lease.job.id, error = %e,
                            "renewing the idempotency claim failed: job cancelled before its effects");
                        Stats::inc(&s.stats.claims_lost);
                        lease.take_claim();
                        s.life.cancel(&lease);
                        lost.push((lease, Ending::Release));
                    }
                    Err(_) => {}
                }
            }
            act.routes.send(s.settle(lost));
        }));
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.tick_every();
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }
}

impl actix::Supervised for LeaseKeeper {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Extensions in flight were dropped: none is under way any more.
        for lease in self.shared.life.all() {
            lease.end_extend();
        }
    }
}

impl Handler<Restart> for LeaseKeeper {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl crate::pipeline::supervision::Child for LeaseKeeper {
    const NAME: &'static str = "keeper";
}

/// Extension entries in calls of at most [`MAX_BATCH`], a lease's other
/// messages in the same call as its own handle (which comes last): the
/// lease counts as extending until that call is answered, so a give-back
/// never overtakes the extension of one of its messages. (A lease with more
/// than nine other messages spans calls.)
fn chunks_by_lease(due: Vec<(Arc<Lease>, String, bool)>) -> Vec<Vec<(Arc<Lease>, String, bool)>> {
    let mut chunks: Vec<Vec<(Arc<Lease>, String, bool)>> = Vec::new();
    let mut group = Vec::new();
    for entry in due {
        let own = entry.2;
        group.push(entry);
        if !own {
            continue;
        }
        let fits = chunks
            .last()
            .is_some_and(|c| c.len() + group.len() <= MAX_BATCH);
        if fits {
            chunks.last_mut().expect("a chunk").append(&mut group);
        } else {
            while group.len() > MAX_BATCH {
                let rest = group.split_off(MAX_BATCH);
                chunks.push(std::mem::replace(&mut group, rest));
            }
            chunks.push(std::mem::take(&mut group));
        }
    }
    chunks
}

#[cfg(test)]
mod tests;
