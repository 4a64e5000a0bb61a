#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

// The crate's map. A message's way through one pipeline:
//
//   backend (a queue) → pipeline::stages::poller → lease (seen cache, table,
//   FIFO groups) → stages::gate → pipeline::run::{pool | runner} →
//   processor (user code) → stages::{uploader, publisher} → backend (result
//   store, topic) → stages::acker → backend (delete last) — while
//   stages::lease_keeper extends the lease and stages::supervisor watches
//   the whole.
//
// The `runtime` runs every pipeline's actors on one I/O thread; `watchdog`
// watches that thread.

// What a service writes and starts.
mod config; // PipelineConfig and its checks
mod processor; // the processor traits, their output and context; middleware
pub mod producer; // sends jobs, with ids fixed before the first attempt
mod runtime; // Runtime: starts pipelines, health, stats, graceful shutdown
#[cfg(feature = "settings")]
mod settings; // settings from a TOML file and the environment

// The runtime's own parts.
mod attempts; // each job's own failed attempts in this process
mod cancel; // a job's cancellation, as its code sees it
mod error; // BackendError, ProcessError, FerryError: whose fault a failure is
mod job; // a received message as a job: id, body, attributes, trace
mod lease; // leases, their states, the seen-ID cache, FIFO groups
mod pipeline; // one pipeline's actors, wiring and shared state
mod stats; // counters per pipeline, mirrored to metrics
mod watchdog; // the I/O thread's heartbeat

// The services, and what crosses them.
pub mod backend; // Queue, Topic, BlobStore; embedded and AWS backends; limits
mod backoff; // retrying a backend call
pub mod dlq; // listing and redriving dead-letter queues
pub mod idempotency; // the store that makes runs exactly-once across processes
pub mod payload; // large payloads offloaded to the blob store
#[cfg(feature = "aws")]
pub mod spot; // spot interruption notices (EC2 metadata)

// Observing and testing.
#[cfg(feature = "http")]
pub mod http; // /healthz, /readyz and /metrics with queue-depth gauges (feature `http`)
pub mod metrics; // metric names and descriptions
/// Switches that break the runtime on purpose, for ferry's own fault sweep
/// (the `sabotage` feature); not an API.
#[doc(hidden)]
pub mod sabotage;
pub mod testkit; // helpers for tests of services that embed ferry
pub mod trace; // W3C trace context across stages

/// The attribute macro async and batch processors are written with.
pub use async_trait::async_trait;
pub use backend::{BlobStore, Queue, Topic};
pub use backend::{DegradedDependency, IntoBackend};
pub use config::{ConfigError, PipelineConfig, RestartPolicy};
pub use error::{BackendError, FerryError, ProcessError, ResultExt};
pub use job::{
    is_s3_test_event, Job, JobId, ResultNotice, DLQ_REASON_ATTRIBUTE, DLQ_RECEIVES_ATTRIBUTE,
    DLQ_SOURCE_ATTRIBUTE, DLQ_TRUNCATED_ATTRIBUTE, JOB_ID_ATTRIBUTE, MAX_JOB_ID_BYTES,
    RESULT_JOB_TAG,
};
pub use pipeline::{Pipeline, PipelineHealth, ResultStore};
pub use processor::{
    ActorProcessor, AsyncProcessor, BatchOptions, BatchProcessor, ConcurrencyLimit, Context,
    DeadLetterHook, FailureHook, Held, Layer, Outcome, Output, ProcessJob, Processor, TaskContext,
    Timeout, TowerProcessor, Typed, TypedAsyncProcessor, TypedProcessor, WorkerInfo,
};
pub use runtime::{
    termination_signal, PipelineStats, Runtime, RuntimeBuilder, RuntimeHandle, ShutdownReport,
    StatsReader,
};
#[cfg(feature = "settings")]
pub use settings::{RuntimeSettings, Settings, SettingsError, ENV_PREFIX};
pub use stats::StatsSnapshot;

/// ferry's internals, for its own benches and benchmark report only: not a
/// stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::lease::{Arrival, Lease, LeaseTable, SeenCache};
}

/// The names a service needs to write and register a processor.
pub mod prelude {
    pub use crate::{
        AsyncProcessor, BatchOptions, BatchProcessor, Context, FerryError, Job, JobId, Output,
        Pipeline, PipelineConfig, ProcessError, Processor, ResultExt, ResultNotice, Runtime,
        RuntimeHandle, TaskContext, Typed, TypedAsyncProcessor, TypedProcessor,
    };
}
