//! The embedded backend's operations: what its calls are counted by and
//! its faults aimed at.

/// A backend operation, as counted and as faults are aimed at.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// SQS `ReceiveMessage`.
    Receive,
    /// SQS `DeleteMessageBatch`.
    Delete,
    /// SQS `ChangeMessageVisibilityBatch`.
    ChangeVisibility,
    /// SQS `SendMessageBatch`.
    Send,
    /// SNS `PublishBatch`.
    Publish,
    /// S3 `PutObject`.
    Put,
    /// S3 `GetObject`.
    Get,
    /// S3 `HeadObject`.
    Head,
    /// Idempotency store: claim a job.
    Claim,
    /// Idempotency store: renew a claim.
    Renew,
    /// Idempotency store: mark a job completed.
    Complete,
    /// Idempotency store: give a claim up.
    Release,
}

/// How many operations there are.
pub(crate) const OPS: usize = Op::ALL.len();

impl Op {
    /// Every operation, in a fixed order.
    pub const ALL: [Op; 12] = [
        Op::Receive,
        Op::Delete,
        Op::ChangeVisibility,
        Op::Send,
        Op::Publish,
        Op::Put,
        Op::Get,
        Op::Head,
        Op::Claim,
        Op::Renew,
        Op::Complete,
        Op::Release,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Which service the operation belongs to: `sqs`, `sns`, `s3` or
    /// `store` (the idempotency store).
    pub fn service(self) -> &'static str {
        match self {
            Op::Receive | Op::Delete | Op::ChangeVisibility | Op::Send => "sqs",
            Op::Publish => "sns",
            Op::Put | Op::Get | Op::Head => "s3",
            Op::Claim | Op::Renew | Op::Complete | Op::Release => "store",
        }
    }
}
