//! The source queues' depth gauges: each pipeline's source queue read every
//! so often, its visible and in-flight counts and its backlog per worker
//! set as gauges.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Notify;

use crate::backend::Queue;
use crate::metrics::{BACKLOG_PER_WORKER, PIPELINE_LABEL, QUEUE_IN_FLIGHT, QUEUE_VISIBLE};
use crate::pipeline::Pipeline;
use crate::processor::ProcessorKind;

/// A pipeline's source queue, whose depth the gauges show.
#[derive(Clone)]
pub(super) struct Source {
    pipeline: String,
    queue: Arc<dyn Queue>,
    /// Processor slots in this process: the backlog per worker's divisor.
    slots: usize,
}

impl Source {
    /// Each pipeline's source queue (the queue itself, not the pipeline's
    /// guarded view of it: a failed depth read marks no dependency
    /// degraded and slows no pipeline down).
    pub(super) fn of(pipelines: &[Pipeline]) -> Vec<Source> {
        pipelines
            .iter()
            .filter_map(|p| {
                Some(Source {
                    pipeline: p.name.clone(),
                    queue: p.source.clone()?,
                    slots: match p.processor {
                        Some(ProcessorKind::Sync(_)) => p.config.workers,
                        _ => p.config.concurrency,
                    },
                })
            })
            .collect()
    }

    /// Reads the depth and sets the gauges; on a failure they keep their
    /// last value (none before the first read).
    async fn refresh(&self, limit: Duration) {
        let call = AssertUnwindSafe(self.queue.depth()).catch_unwind();
        let why = match tokio::time::timeout(limit, call).await {
            Ok(Ok(Ok(d))) => {
                let label = || self.pipeline.clone();
                metrics::gauge!(QUEUE_VISIBLE, PIPELINE_LABEL => label()).set(d.visible as f64);
                metrics::gauge!(QUEUE_IN_FLIGHT, PIPELINE_LABEL => label()).set(d.in_flight as f64);
                metrics::gauge!(BACKLOG_PER_WORKER, PIPELINE_LABEL => label())
                    .set(d.visible as f64 / self.slots.max(1) as f64);
                return;
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => "the depth call panicked".to_owned(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        tracing::warn!(pipeline = %self.pipeline, queue = %self.queue.name(), error = %why,
            "could not read the source queue's depth; its gauges keep their last value");
    }
}

/// Reads the depth of each queue `sources` names now, every `every` and
/// at once when `wake` is notified (a runtime attached). Runs until its
/// runtime ends.
pub(super) async fn refresh_depths(
    sources: impl Fn() -> Vec<Source>,
    every: Duration,
    wake: Arc<Notify>,
) {
    // A depth call that hangs is given up after this long.
    let limit = every.clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        for s in sources() {
            s.refresh(limit).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => {}
        }
    }
}
