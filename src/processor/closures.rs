//! Closures as processors, for the smallest services: a sync function of
//! the job (run on worker threads, as a [`Processor`]) or an async one (run
//! as tasks, as an [`AsyncProcessor`]). Registered with
//! [`Pipeline::handler`](crate::Pipeline::handler) and
//! [`Pipeline::async_handler`](crate::Pipeline::async_handler).

use std::future::Future;
use std::sync::Arc;

use super::context::{Context, TaskContext};
use super::kinds::{AsyncProcessor, Processor};
use super::output::Output;
use crate::error::ProcessError;
use crate::job::Job;

/// A sync closure as a [`Processor`]: every worker thread shares it.
pub(crate) struct FnProcessor<F>(pub(crate) Arc<F>);

impl<F> Processor for FnProcessor<F>
where
    F: Fn(&Job, &Context) -> Result<Output, ProcessError> + Send + Sync + 'static,
{
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        (self.0)(job, ctx)
    }
}

/// An async closure as an [`AsyncProcessor`]: each run gets its own copy of
/// the job and its context, so the future borrows nothing.
pub(crate) struct FnAsyncProcessor<F>(pub(crate) F);

#[async_trait::async_trait]
impl<F, Fut> AsyncProcessor for FnAsyncProcessor<F>
where
    F: Fn(Job, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Output, ProcessError>> + Send + 'static,
{
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Result<Output, ProcessError> {
        (self.0)(job.clone(), ctx.clone()).await
    }
}
