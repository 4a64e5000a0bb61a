//! What a lifecycle step hands on, and where it goes. A step (settle, end,
//! lose, announce, a processor's outcome) changes the leases' state and
//! returns a [`Next`]: the leases other actors must now look at, by the
//! message each accepts. Nothing in `Shared` knows an actor; the caller
//! routes a `Next` through the [`Routes`] wiring gave it.

use std::sync::Arc;

use actix::Recipient;

use super::messages::{Admit, DropCopies, Leased, Probe, Processed, Settle, Uploaded};
use crate::lease::Lease;

/// Leases handed on by a step, by their next owner.
#[must_use = "leases handed on must be routed, or they wait for the stall watch"]
#[derive(Debug, Default)]
pub(crate) struct Next {
    /// Settling leases, to the acker.
    pub(crate) settle: Vec<Arc<Lease>>,
    /// Stored leases, to the publisher.
    pub(crate) publish: Vec<Arc<Lease>>,
    /// Leases whose FIFO group moved on, to the gate.
    pub(crate) admit: Vec<Arc<Lease>>,
    /// Processed leases, to the uploader.
    pub(crate) store: Vec<Arc<Lease>>,
    /// Redeliveries whose result may exist, to the uploader.
    pub(crate) probe: Vec<Arc<Lease>>,
    /// Pending leases, to the processors.
    pub(crate) run: Vec<Arc<Lease>>,
    /// Receipt handles of completed jobs' copies, to the acker.
    pub(crate) drop_copies: Vec<String>,
}

impl Next {
    /// Nothing handed on.
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// These leases to the acker.
    pub(crate) fn settle(leases: Vec<Arc<Lease>>) -> Self {
        Self {
            settle: leases,
            ..Self::default()
        }
    }

    /// These leases to the processors.
    pub(crate) fn run(leases: Vec<Arc<Lease>>) -> Self {
        Self {
            run: leases,
            ..Self::default()
        }
    }

    /// What `other` hands on as well.
    pub(crate) fn and(mut self, other: Next) -> Self {
        self.add(other);
        self
    }

    /// Adds what `other` hands on.
    pub(crate) fn add(&mut self, other: Next) {
        let Next {
            settle,
            publish,
            admit,
            store,
            probe,
            run,
            drop_copies,
        } = other;
        self.settle.extend(settle);
        self.publish.extend(publish);
        self.admit.extend(admit);
        self.store.extend(store);
        self.probe.extend(probe);
        self.run.extend(run);
        self.drop_copies.extend(drop_copies);
    }
}

/// The actors a pipeline's steps hand leases to, known only by the messages
/// they accept. Wiring builds it once the actors' addresses exist; each
/// actor (and each worker thread) holds a copy.
#[derive(Clone)]
pub(crate) struct Routes {
    pub(super) settle: Recipient<Settle>,
    pub(super) publish: Recipient<Uploaded>,
    pub(super) admit: Recipient<Admit>,
    pub(super) store: Recipient<Processed>,
    pub(super) probe: Recipient<Probe>,
    pub(super) run: Recipient<Leased>,
    pub(super) drop_copies: Recipient<DropCopies>,
}

impl Routes {
    /// Hands on what a step returned: one message per next owner, carrying
    /// the whole batch.
    pub(crate) fn send(&self, next: Next) {
        let Next {
            settle,
            publish,
            admit,
            store,
            probe,
            run,
            drop_copies,
        } = next;
        if !run.is_empty() {
            self.run.do_send(Leased(run));
        }
        if !probe.is_empty() {
            self.probe.do_send(Probe(probe));
        }
        if !admit.is_empty() {
            self.admit.do_send(Admit(admit));
        }
        if !store.is_empty() {
            self.store.do_send(Processed(store));
        }
        if !publish.is_empty() {
            self.publish.do_send(Uploaded(publish));
        }
        if !settle.is_empty() {
            self.settle.do_send(Settle(settle));
        }
        if !drop_copies.is_empty() {
            self.drop_copies.do_send(DropCopies(drop_copies));
        }
    }
}
