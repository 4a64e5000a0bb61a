#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod attempts;
pub mod backend;
mod backoff;
mod cancel;
mod config;
pub mod dlq;
mod error;
pub mod idempotency;
mod job;
mod lease;
pub mod metrics;
pub mod payload;
mod pipeline;
mod processor;
pub mod producer;
mod runtime;
/// Switches that break the runtime on purpose, for ferry's own fault sweep
/// (the `sabotage` feature); not an API.
#[doc(hidden)]
pub mod sabotage;

#[cfg(feature = "aws")]
pub mod spot;
mod stats;
pub mod testkit;
pub mod trace;
mod watchdog;

/// The attribute macro async and batch processors are written with.
pub use async_trait::async_trait;
pub use backend::{BlobStore, Queue, Topic};
pub use backend::{DegradedDependency, IntoShared};
pub use config::{ConfigError, PipelineConfig, RestartPolicy};
pub use error::{BackendError, FerryError, ProcessError};
pub use job::{
    is_s3_test_event, Job, JobId, ResultNotice, DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE,
    DLQ_SOURCE_ATTRIBUTE, DLQ_TRUNCATED_ATTRIBUTE, JOB_ID_ATTRIBUTE, MAX_JOB_ID_BYTES,
    RESULT_JOB_TAG,
};
pub use pipeline::{Pipeline, PipelineHealth, ResultStore};
pub use processor::{
    ActorProcessor, AsyncProcessor, BatchOptions, BatchProcessor, Context, Output, ProcessJob,
    Processor, TaskContext, Typed, TypedAsyncProcessor, TypedProcessor, WorkerInfo,
};
pub use runtime::{
    termination_signal, PipelineStats, Runtime, RuntimeBuilder, RuntimeHandle, ShutdownReport,
    StatsReader,
};
pub use stats::StatsSnapshot;

/// ferry's internals, for its own benches and benchmark report only: not a
/// stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::lease::{Claim, Lease, LeaseTable, SeenCache};
}

/// The names a service needs to write and register a processor.
pub mod prelude {
    pub use crate::{
        AsyncProcessor, BatchOptions, BatchProcessor, Context, FerryError, Job, JobId, Output,
        Pipeline, PipelineConfig, ProcessError, Processor, ResultNotice, Runtime, RuntimeHandle,
        TaskContext, Typed, TypedAsyncProcessor, TypedProcessor,
    };
}
