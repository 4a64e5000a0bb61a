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

/// A task that panicked outside the processor retries the job it had
/// started, one attempt charged, as a worker thread does; it gives back the
/// one it had not started, charging that job nothing (it never ran), and
/// leaves alone one another task started (queued again after a restart).
#[tokio::test]
async fn a_task_that_panicked_charges_only_the_jobs_it_started() {
    let t = tasks();
    let (started, waiting, elsewhere) = (
        lease(&t, "started"),
        lease(&t, "waiting"),
        lease(&t, "elsewhere"),
    );
    let here = StartedHere::default();
    assert!(matches!(here.start(&t.shared, &started), Start::Started));
    assert!(matches!(t.shared.start_job(&elsewhere), Start::Started));
    drop(Unfinished {
        tasks: t.clone(),
        leases: vec![started.clone(), waiting.clone(), elsewhere.clone()],
        here,
        panicked: Some("boom".into()),
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
    assert_eq!(
        elsewhere.state(),
        LeaseState::Running,
        "another task's job is that task's to end"
    );
    assert_eq!(t.shared.life.attempts_of(&elsewhere.job.id), 0);
}

/// A task dropped unfinished because its runtime shut down charges nothing:
/// the job it had started is given back, not retried.
#[tokio::test]
async fn a_task_dropped_with_its_runtime_charges_nothing() {
    let t = tasks();
    let started = lease(&t, "started");
    let here = StartedHere::default();
    assert!(matches!(here.start(&t.shared, &started), Start::Started));
    drop(Unfinished {
        tasks: t.clone(),
        leases: vec![started.clone()],
        here,
        panicked: None,
    });
    assert_eq!(started.state(), LeaseState::Settling);
    assert!(
        matches!(started.ending(), Some(Ending::Release)),
        "{:?}",
        started.ending()
    );
    assert_eq!(
        t.shared.life.attempts_of(&started.job.id),
        0,
        "nothing charged"
    );
}
