//! # ferry
//!
//! A runtime for queue workers on disposable compute. A service embeds ferry,
//! registers its processors, and ferry runs the protocol: receive from the
//! queue, keep each message's lease alive while work runs, process, store the
//! result, announce it on a topic, and delete the message **last**. Workers
//! may die at any instant and the queue delivers at least once; ferry loses
//! nothing and repeats no visible effect.
//!
//! ## Layout
//!
//! - [`backend`] — three narrow traits ([`Queue`], [`Topic`], [`BlobStore`])
//!   with the service limits as constants, and [`backend::local`], the
//!   embedded default with SQS/SNS/S3 semantics and fault injection.
//! - [`Pipeline`] — one stage: a source queue, a [`Processor`], and the sinks
//!   it feeds (result store, topic, dead-letter queue).
//! - [`Runtime`] — starts pipelines on an I/O thread of its own and returns a
//!   [`RuntimeHandle`] (stats, graceful shutdown).
//! - Inside each pipeline, actors pass typed batches:
//!   `Poller → ProcessorPool → Uploader → Publisher → Acker`, with a
//!   `LeaseKeeper` extending visibility and a supervisor restarting
//!   processors. Leases and the seen-ID cache live outside every actor.
//! - [`Job`], [`JobId`] and [`ResultNotice`] — what a processor sees, and the
//!   pure functions that derive a job's effects from its id.
//! - [`testkit`] — helpers for tests of processors and pipelines.
//!
//! ## A processor in a few lines
//!
//! ```
//! use ferry::prelude::*;
//! use ferry::backend::local::{LocalBackend, QueueOptions};
//!
//! struct Shout;
//! impl Processor for Shout {
//!     fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
//!         Ok(Output::text(job.body.to_uppercase()))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), FerryError> {
//! let local = LocalBackend::new();
//! let jobs = local.create_queue("jobs", QueueOptions::default());
//! let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
//! let runtime = Runtime::builder()
//!     .pipeline(
//!         Pipeline::new("shout")
//!             .source(jobs)
//!             .dead_letter(dlq)
//!             .results(local.blobs(), "results", "shout/", "txt")
//!             .processor(|| Shout),
//!     )
//!     .start()
//!     .await?;
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The invariants ferry keeps, and the tests that hold it to them, are listed
//! in the repository's design notes (`DESIGN.md`).

#![forbid(unsafe_code)]

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod backend;
mod config;
mod error;
pub mod idempotency;
mod job;
mod lease;
mod pipeline;
mod processor;
mod runtime;
mod seen;
mod stats;
pub mod testkit;

pub use backend::{BlobStore, Queue, Topic};
pub use config::{PipelineConfig, RestartPolicy};
pub use error::{BackendError, FerryError, ProcessError};
pub use job::{
    Job, JobId, ResultNotice, DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE, DLQ_SOURCE_ATTRIBUTE,
    JOB_ID_ATTRIBUTE, RESULT_JOB_TAG,
};
pub use pipeline::{IntoShared, Pipeline, ResultStore};
pub use processor::{Context, Output, Processor, WorkerInfo};
pub use runtime::{
    termination_signal, PipelineStats, Runtime, RuntimeBuilder, RuntimeHandle, ShutdownReport,
};
pub use stats::StatsSnapshot;

/// ferry's internals, for its own benches and benchmark report only: not a
/// stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::lease::{Lease, LeaseTable};
    pub use crate::seen::{Claim, SeenCache};
}

/// The names a service needs to write and register a processor.
pub mod prelude {
    pub use crate::{
        Context, FerryError, Job, JobId, Output, Pipeline, PipelineConfig, ProcessError, Processor,
        ResultNotice, Runtime, RuntimeHandle,
    };
}
