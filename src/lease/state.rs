//! Where a lease stands ([`LeaseState`]) and how it ends ([`Ending`]).

use std::time::Duration;

/// Where a lease's job stands, and so which actor owns its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum LeaseState {
    /// Received, waiting for a processor (the pool's channel).
    Pending = 0,
    /// At the gate: behind its FIFO group's running job, or being claimed.
    Gated = 1,
    /// A redelivery whose stored result is being looked for (uploader).
    Probing = 2,
    /// A processor runs it (a worker thread).
    Running = 3,
    /// Processed; its output, kept in the lease, is to be stored (uploader).
    Processed = 4,
    /// Its result is stored (or its output is the notice): to be announced
    /// (publisher).
    Stored = 5,
    /// Its ending, kept in the lease, is with the acker.
    Settling = 6,
    /// Deleted, released, dead-lettered or lost: nothing more may happen.
    Ended = 7,
}

impl LeaseState {
    pub(super) const ALL: [LeaseState; 8] = [
        LeaseState::Pending,
        LeaseState::Gated,
        LeaseState::Probing,
        LeaseState::Running,
        LeaseState::Processed,
        LeaseState::Stored,
        LeaseState::Settling,
        LeaseState::Ended,
    ];

    pub(super) fn from_u8(v: u8) -> Self {
        Self::ALL[v.min(7) as usize]
    }

    /// Not started yet: counted against the prefetch window.
    pub(crate) fn unstarted(self) -> bool {
        matches!(self, Self::Pending | Self::Gated | Self::Probing)
    }

    /// The state's name, for logs and health reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Gated => "gated",
            Self::Probing => "probing",
            Self::Running => "running",
            Self::Processed => "processed",
            Self::Stored => "stored",
            Self::Settling => "settling",
            Self::Ended => "ended",
        }
    }
}

/// How a lease ends, as the acker carries it out. Kept in the lease while
/// it is [`LeaseState::Settling`], so a restarted acker finds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ending {
    /// Effects done: mark the claim completed (if any), then delete the
    /// message with its newest handle. `dead_lettered`: its dead-letter
    /// entry is already sent.
    Delete { dead_lettered: bool },
    /// Try again later: visibility set to a backoff.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Bad input or out of attempts: to the dead-letter queue, then delete.
    DeadLetter { reason: String },
    /// Give the message back at once (visibility 0).
    Release,
    /// Give the message back for a later look without counting an attempt
    /// (another worker holds the job's claim).
    Defer { after: Duration },
    /// Try again later without counting an attempt: the infrastructure
    /// failed (an upload, a notice, a dependency the processor needs), not
    /// the job. `after` overrides the pipeline's own wait.
    Wait {
        reason: String,
        after: Option<Duration>,
    },
}
