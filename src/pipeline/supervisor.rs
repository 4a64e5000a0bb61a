//! The pipeline supervisor: the parent of a pipeline's actors. Processor
//! workers restart one-for-one under the pipeline's [`crate::RestartPolicy`];
//! when restarts pass its limit within its window, the supervisor escalates:
//! the poller stops and every lease is released, so the messages go to
//! healthier workers instead of being held by a failing one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use super::acker::Acker;
use super::messages::StopPolling;
use super::poller::Poller;
use super::{release_leases_of, Shared};
use crate::stats::Stats;

/// A child passed the restart limit.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Escalate {
    pub(crate) reason: String,
}

pub(crate) struct PipelineSupervisor {
    shared: Arc<Shared>,
    poller: Addr<Poller>,
    acker: Addr<Acker>,
}

impl PipelineSupervisor {
    pub(crate) fn new(shared: Arc<Shared>, poller: Addr<Poller>, acker: Addr<Acker>) -> Self {
        Self {
            shared,
            poller,
            acker,
        }
    }
}

impl Actor for PipelineSupervisor {
    type Context = Context<Self>;
}

impl Handler<Escalate> for PipelineSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Escalate, _: &mut Context<Self>) {
        if self.shared.escalated.swap(true, Ordering::AcqRel) {
            return;
        }
        Stats::inc(&self.shared.stats.escalations);
        tracing::error!(pipeline = %self.shared.name, reason = %msg.reason,
            "restart limit passed: polling stopped, releasing every lease");
        self.poller.do_send(StopPolling);
        release_leases_of(&self.shared, &self.acker, true);
    }
}
