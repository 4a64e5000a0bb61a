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

    /// Who takes the next step of a lease in this state.
    pub(crate) fn owner(self) -> Owner {
        match self {
            Self::Pending => Owner::Processors,
            Self::Gated => Owner::Gate,
            Self::Running => Owner::Job,
            Self::Probing | Self::Processed => Owner::Uploader,
            Self::Stored => Owner::Publisher,
            Self::Settling => Owner::Acker,
            Self::Ended => Owner::Nobody,
        }
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

/// Who takes a lease's next step: the owner of the state it is in. The
/// supervisor's stall watch restarts the owning actor of a lease stuck in
/// its state, and each actor's restart re-derives its work from the leases
/// in the states it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    /// The processors' actor (the worker pool, or the async runner): it
    /// queues the lease for a processor.
    Processors,
    /// The gate (its claim), or its FIFO group while it waits there.
    Gate,
    /// The job's own worker thread or task.
    Job,
    /// The uploader: probing for a stored result, or storing one.
    Uploader,
    /// The publisher: announcing the stored result.
    Publisher,
    /// The acker: carrying out the ending.
    Acker,
    /// Nobody: the lease is gone.
    Nobody,
}

impl Owner {
    /// The owner's name, as DESIGN.md's table of states gives it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Processors => "processors",
            Self::Gate => "gate",
            Self::Job => "job",
            Self::Uploader => "uploader",
            Self::Publisher => "publisher",
            Self::Acker => "acker",
            Self::Nobody => "nobody",
        }
    }
}

/// Every move a lease may make, each from a set of states to one state.
/// The only changes of state there are: [`super::Lease::take`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    /// The poller holds a new lease for the gate (FIFO group, claim).
    Gate,
    /// The poller asks the uploader whether a redelivery's result is stored.
    Probe,
    /// The gate sends a redelivery on to its probe.
    ProbeGated,
    /// The gate lets a lease run.
    Admit,
    /// A worker starts the job.
    Start,
    /// The job returned a result to store.
    Process,
    /// The job's result needs no store: on to the publisher.
    ProcessUnstored,
    /// The uploader stored the result.
    Store,
    /// The probe found the result stored: on to the publisher.
    Found,
    /// The probe found no result: the job runs.
    NotFound,
    /// An ending is decided: to the acker.
    Settle,
    /// The lease ends (the acker carried out its ending, or it was given
    /// back before it started).
    End,
    /// The lease is lost (deadline passed, receipt refused): ends from any
    /// live state but Settling, which the acker ends itself.
    Lose,
}

use LeaseState as S;

/// The states a lease is in before the acker has it.
const BEFORE_ACKER: &[LeaseState] = &[
    S::Pending,
    S::Gated,
    S::Probing,
    S::Running,
    S::Processed,
    S::Stored,
];
/// Every state but Ended.
const LIVE: &[LeaseState] = &[
    S::Pending,
    S::Gated,
    S::Probing,
    S::Running,
    S::Processed,
    S::Stored,
    S::Settling,
];

impl Move {
    /// Every move, in the order DESIGN.md lists them.
    #[cfg(test)]
    pub(crate) const ALL: [Move; 13] = [
        Move::Gate,
        Move::Probe,
        Move::ProbeGated,
        Move::Admit,
        Move::Start,
        Move::Process,
        Move::ProcessUnstored,
        Move::Store,
        Move::Found,
        Move::NotFound,
        Move::Settle,
        Move::End,
        Move::Lose,
    ];

    /// The table: the states a move leaves, and the state it enters.
    pub(crate) fn edge(self) -> (&'static [LeaseState], LeaseState) {
        match self {
            Move::Gate => (&[S::Pending], S::Gated),
            Move::Probe => (&[S::Pending], S::Probing),
            Move::ProbeGated => (&[S::Gated], S::Probing),
            Move::Admit => (&[S::Gated], S::Pending),
            Move::Start => (&[S::Pending], S::Running),
            Move::Process => (&[S::Running], S::Processed),
            Move::ProcessUnstored => (&[S::Running], S::Stored),
            Move::Store => (&[S::Processed], S::Stored),
            Move::Found => (&[S::Probing], S::Stored),
            Move::NotFound => (&[S::Probing], S::Pending),
            Move::Settle => (BEFORE_ACKER, S::Settling),
            Move::End => (LIVE, S::Ended),
            // The acker ends a Settling lease itself, lost or not.
            Move::Lose => (BEFORE_ACKER, S::Ended),
        }
    }

    /// The move's name, as DESIGN.md's table of moves gives it.
    #[cfg(test)]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Move::Gate => "gate",
            Move::Probe => "probe",
            Move::ProbeGated => "probe-gated",
            Move::Admit => "admit",
            Move::Start => "start",
            Move::Process => "process",
            Move::ProcessUnstored => "process-unstored",
            Move::Store => "store",
            Move::Found => "found",
            Move::NotFound => "not-found",
            Move::Settle => "settle",
            Move::End => "end",
            Move::Lose => "lose",
        }
    }
}

/// The table of states and moves as DESIGN.md shows it (a test checks that
/// DESIGN.md holds exactly this text).
#[cfg(test)]
pub(crate) fn design_table() -> String {
    let mut out = String::from("| state | owner | moves out |\n| --- | --- | --- |\n");
    for state in LeaseState::ALL {
        let moves: Vec<String> = Move::ALL
            .iter()
            .filter(|m| m.edge().0.contains(&state))
            .map(|m| format!("{} → {}", m.name(), m.edge().1.name()))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            state.name(),
            state.owner().name(),
            if moves.is_empty() {
                "—".to_owned()
            } else {
                moves.join(", ")
            }
        ));
    }
    out
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
