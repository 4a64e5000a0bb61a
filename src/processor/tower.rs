//! A `tower::Service` as an async processor, so the tower ecosystem's
//! middleware (timeouts, rate and concurrency limits, retries, load
//! shedding, tracing) composes around a job the way it does around a
//! request.

use std::error::Error;

use super::context::TaskContext;
use super::kinds::AsyncProcessor;
use super::output::Output;
use crate::error::ProcessError;
use crate::job::Job;

/// Runs each job through a [`tower_service::Service`] taking a [`Job`] and
/// answering an [`Output`]. The service is cloned per job (as tower
/// services are shared), and waited on until it is ready. An error that is
/// a [`ProcessError`] keeps its kind; any other (a tower timeout, a shed
/// load, the service's own) is a retry with the error's text, counting an
/// attempt — wrap it in [`ProcessError::unavailable`] inside the service
/// when it is not the job's fault.
///
/// ```
/// use ferry::prelude::*;
/// use ferry::TowerProcessor;
///
/// let service = tower::service_fn(|job: Job| async move {
///     Ok::<_, ProcessError>(Output::text(job.body.to_uppercase()))
/// });
/// let _ = Pipeline::new("upper").async_processor(TowerProcessor::new(service));
/// ```
#[derive(Debug, Clone)]
pub struct TowerProcessor<S> {
    service: S,
}

impl<S> TowerProcessor<S> {
    /// Runs every job through `service`.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

#[async_trait::async_trait]
impl<S> AsyncProcessor for TowerProcessor<S>
where
    S: tower_service::Service<Job, Response = Output> + Clone + Send + Sync + 'static,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
    S::Future: Send,
{
    async fn process(&self, job: &Job, _ctx: &TaskContext) -> Result<Output, ProcessError> {
        let mut service = self.service.clone();
        futures_util::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(fault)?;
        service.call(job.clone()).await.map_err(fault)
    }
}

/// A service's error as the job's outcome: a [`ProcessError`] as it is,
/// anything else a retry.
fn fault(e: impl Into<Box<dyn Error + Send + Sync>>) -> ProcessError {
    match e.into().downcast::<ProcessError>() {
        Ok(e) => *e,
        Err(other) => ProcessError::retry(other.to_string()),
    }
}
