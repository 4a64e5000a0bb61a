//! The typed messages on the pipeline's edges. Each carries its leases, and
//! each may carry a batch.

use std::sync::Arc;
use std::time::Duration;

use actix::Message;

use crate::job::ResultNotice;
use crate::lease::Lease;
use crate::processor::Output;

/// Poller → processor pool: jobs to run.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Leased(pub(crate) Vec<Arc<Lease>>);

/// Poller → uploader: redelivered jobs whose result may already exist.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Probe(pub(crate) Vec<Arc<Lease>>);

/// Processor pool → uploader: results to store.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Processed(pub(crate) Vec<(Arc<Lease>, Output)>);

/// What the publisher announces for one job.
#[derive(Debug)]
pub(crate) enum Announce {
    /// A stored result.
    Stored(ResultNotice),
    /// No result store: the output itself is the notification.
    Inline(Output),
}

/// Uploader → publisher: results stored, to be announced.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Uploaded(pub(crate) Vec<(Arc<Lease>, Announce)>);

/// How a job ends, as the acker carries it out.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Effects done: delete the message (with its newest handle).
    Done(Arc<Lease>),
    /// Try again later: visibility set to a backoff.
    Retry {
        lease: Arc<Lease>,
        reason: String,
        after: Option<Duration>,
    },
    /// Bad input or out of attempts: to the dead-letter queue, then delete.
    DeadLetter { lease: Arc<Lease>, reason: String },
    /// Give the message back at once (visibility 0).
    Release(Arc<Lease>),
    /// Give the message back for a later look, without counting an attempt
    /// (another worker holds the job's claim).
    Defer { lease: Arc<Lease>, after: Duration },
    /// A copy of a completed job: delete it unprocessed.
    DropCopy(String),
}

/// Anyone → acker.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Settle(pub(crate) Vec<Settlement>);

/// Runtime → acker: send everything pending now; answers when done.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush;

/// Runtime/supervisor → poller: stop receiving.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopPolling;
