//! One pipeline: its actors, the state they share, and how they are wired.
//!
//! ```text
//! Poller ──Leased──▶ ProcessorPool ──Processed──▶ Uploader ──Uploaded──▶ Publisher ──Settle──▶ Acker
//!   │  └──Probe (redeliveries)──▶ Uploader ──(result exists)──▶ Publisher                        │
//!   └────────── leases ──────────▶ LeaseTable ◀── LeaseKeeper (extends)    settles, releases ◀───┘
//! ```
//!
//! All actors of a pipeline run on the runtime's I/O thread; processors run
//! on worker threads of their own (sync) or on the jobs' runtime (async,
//! batch). Leases, the seen-ID cache and FIFO groups live in the pipeline's
//! [`shared::Shared`] state, outside every actor, so no restart loses them.
//! Actors know each other only by the messages they accept (`messages`).

// What a pipeline is made of.
mod builder; // `Pipeline`: source, processor, sinks and settings
mod messages; // what the actors send each other
mod next; // what a step hands on (`Next`), and the routes it goes by
mod shared; // the state every actor shares, in rooms
mod wiring; // starts the actors and gives each its routes

// The actors (`stages`), and the one way a job runs (`run`).
mod run; // the job runner: sync pool, async and batch runner, outcome, split
mod stages; // one actor per file, in the order a message meets them

// Steps the actors share.
mod health; // what health() reports
mod lifecycle; // how a lease ends: seen cache, table, groups, attempts
mod supervision; // one-for-one restarts of every actor

pub(crate) use builder::JobIdFn;
pub use builder::{Pipeline, ResultStore};
pub use health::PipelineHealth;
pub(crate) use messages::{Flush, StopPolling};
pub(crate) use run::runner::jobs_runtime;
pub(crate) use shared::Shared;
#[cfg(test)]
pub(crate) use wiring::{routes_nowhere, start_keeper_only};
pub(crate) use wiring::{start, Running};
