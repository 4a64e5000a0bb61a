//! Unit tests of `runner`.

use super::*;
use crate::backend::local::{LocalBackend, QueueOptions};
use crate::backend::ReceivedMessage;
use crate::pipeline::Pipeline;
use crate::processor::TaskContext;

struct Noop;
#[async_trait::async_trait]
impl AsyncProcessor for Noop {
    async fn process(
        &self,
        _: &Job,
        _: &TaskContext,
    ) -> Result<crate::processor::Output, ProcessError> {
        Ok(crate::processor::Output::empty())
    }
}

fn tasks() -> Arc<Tasks> {
    let local = LocalBackend::new();
    let q = local.create_queue("q", QueueOptions::default());
    let dlq = local.create_queue("dlq", QueueOptions::default());
    let shared = Shared::new(
        Pipeline::new("p")
            .source(q)
            .dead_letter(dlq)
            .async_processor(Noop),
    );
    let io = tokio::runtime::Handle::current();
    Arc::new(Tasks {
        permits: Arc::new(Semaphore::new(shared.config.concurrency)),
        shared,
        rt: io.clone(),
        io,
        outbox: Arc::new(Outbox::new(crate::pipeline::routes_nowhere())),
        running: AtomicUsize::new(0),
    })
}

fn lease(t: &Tasks, id: &str) -> Arc<Lease> {
    let m = ReceivedMessage {
        message_id: format!("msg-{id}"),
        receipt_handle: format!("h-{id}"),
        body: "{}".into(),
        attributes: [(crate::job::JOB_ID_ATTRIBUTE.to_owned(), id.to_owned())].into(),
        receive_count: 1,
        group_id: None,
        dedup_id: None,
    };
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    t.shared
        .life
        .table()
        .insert(Job::from_message(m), format!("h-{id}"), until)
}

/// A task dropped before it finished (its runtime shut down, or it
/// panicked outside the processor) retries the job it had started, one
/// attempt charged, and gives back the one it had not started, charging
/// that job nothing: it never ran.
#[tokio::test]
async fn a_task_dropped_unfinished_charges_only_the_jobs_it_started() {
    let t = tasks();
    let (started, waiting) = (lease(&t, "started"), lease(&t, "waiting"));
    assert!(matches!(t.shared.start_job(&started), Start::Started));
    drop(Unfinished {
        tasks: t.clone(),
        leases: vec![started.clone(), waiting.clone()],
        why: "the task was dropped".into(),
    });
    assert_eq!(started.state(), LeaseState::Settling);
    assert!(matches!(started.ending(), Some(Ending::Retry { .. })));
    assert_eq!(t.shared.life.attempts_of(&started.job.id), 1);
    assert_eq!(waiting.state(), LeaseState::Settling);
    assert!(
        matches!(waiting.ending(), Some(Ending::Release)),
        "a job that never started is given back, not retried: {:?}",
        waiting.ending()
    );
    assert_eq!(
        t.shared.life.attempts_of(&waiting.job.id),
        0,
        "nothing charged"
    );
}
