//! The typed messages on the pipeline's edges. Each carries its leases, and
//! each may carry a batch. What a lease is to go through next is its state
//! (and, for the acker, its ending): the messages only say "look at these".

use std::sync::Arc;

use actix::Message;

use crate::lease::Lease;

/// → processor pool: Pending leases to run.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Leased(pub(crate) Vec<Arc<Lease>>);

/// → uploader: Probing leases (redeliveries whose result may exist).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Probe(pub(crate) Vec<Arc<Lease>>);

/// Processor pool → uploader: Processed leases, output in the lease.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Processed(pub(crate) Vec<Arc<Lease>>);

/// → publisher: Stored leases to announce.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Uploaded(pub(crate) Vec<Arc<Lease>>);

/// Lifecycle → acker: Settling leases, ending in the lease.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Settle(pub(crate) Vec<Arc<Lease>>);

/// Poller → acker: copies of completed jobs to delete unprocessed, by
/// receipt handle.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct DropCopies(pub(crate) Vec<String>);

/// Runtime → acker: send everything pending now; answers when done.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush;

/// Runtime/supervisor → poller: stop receiving.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopPolling;

/// Supervisor → poller: receive again after an escalation's pause.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ResumePolling;

/// Supervisor → any actor: stop, to be restarted (it looks stalled).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Restart;

/// Lifecycle → gate: leases cleared to run (their group moved on).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Admit(pub(crate) Vec<Arc<Lease>>);

/// Poller → gate: new Gated leases.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Arrived(pub(crate) Vec<Arc<Lease>>);
