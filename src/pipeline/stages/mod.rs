//! The pipeline's actors, one a file, in the order a message meets them.
//! Each owns the lease states its step holds (the lease module's table says
//! which) and knows the others only by the messages they accept.

pub(crate) mod acker; // settles leases: deletes, retries, dead-letters, releases
pub(crate) mod gate; // FIFO group order and idempotency claims before a job runs
pub(crate) mod lease_keeper; // extends visibility while work runs; loses lapsed leases
pub(crate) mod poller; // receives, merges copies, makes leases
pub(crate) mod publisher; // announces results
pub(crate) mod supervisor; // escalations and the stall watch
pub(crate) mod uploader; // stores results (and probes redeliveries)
