//! The acker's pacing and last resort (DESIGN rules 6 and 13, and "Cost and
//! throughput"): a delete goes out at once when nothing else could fill its
//! batch; a failing delete is retried with a doubling backoff, not in a
//! burst that spends its attempts; a delete refused for good lets the lease
//! go — a finished job stays remembered (its return is dropped as a copy,
//! not run again), a dead-lettered one is forgotten (a fixed re-send runs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::backend::local::{LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage};
use ferry::prelude::*;
use ferry::{BackendError, JOB_ID_ATTRIBUTE};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

async fn eventually(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        ferry::testkit::wait_until(limit, cond).await,
        "timed out waiting for {what}"
    );
}

/// The embedded queue, with deletes that fail while `failing`, and the
/// first delete of the message with body `refuse` refused for good.
#[derive(Debug)]
struct Scripted {
    inner: Arc<LocalQueue>,
    failing: AtomicBool,
    refuse: Option<String>,
    refused: Mutex<Option<String>>,
    deletes: AtomicUsize,
}

impl Scripted {
    fn new(inner: Arc<LocalQueue>, refuse: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failing: AtomicBool::new(false),
            refuse: refuse.map(str::to_owned),
            refused: Mutex::default(),
            deletes: AtomicUsize::new(0),
        })
    }
}

#[ferry::async_trait]
impl Queue for Scripted {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        let got = self.inner.receive(max, wait, visibility).await?;
        let mut refused = self.refused.lock().unwrap();
        for m in &got {
            if refused.is_none() && self.refuse.as_deref() == Some(m.body.as_str()) {
                *refused = Some(m.receipt_handle.clone());
            }
        }
        Ok(got)
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.deletes.fetch_add(1, Ordering::AcqRel);
        if self.failing.load(Ordering::Acquire) {
            return Err(BackendError::transient("deletes are failing"));
        }
        let refused = self.refused.lock().unwrap().clone();
        let pass: Vec<String> = handles
            .iter()
            .filter(|h| Some(*h) != refused.as_ref())
            .cloned()
            .collect();
        let mut passed = self.inner.delete_batch(&pass).await?.into_iter();
        Ok(handles
            .iter()
            .map(|h| {
                if Some(h) == refused.as_ref() {
                    Err(BackendError::Invalid {
                        message: "refused for good".into(),
                    })
                } else {
                    passed.next().expect("one answer per entry")
                }
            })
            .collect())
    }
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.change_visibility_batch(entries).await
    }
    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.inner.send_batch(messages).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

/// Refuses bodies starting with `bad` as bad input until fixed; counts runs
/// per job id.
#[derive(Clone, Default)]
struct Fixable {
    fixed: Arc<AtomicBool>,
    runs: Arc<Mutex<HashMap<String, u32>>>,
}

impl Fixable {
    fn runs_of(&self, id: &str) -> u32 {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

impl Processor for Fixable {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(job.id.to_string())
            .or_default() += 1;
        if job.body.starts_with("bad") && !self.fixed.load(Ordering::Acquire) {
            return Err(ProcessError::bad_input("bad"));
        }
        Ok(Output::text(job.body.clone()))
    }
}

struct World {
    local: LocalBackend,
    inner: Arc<LocalQueue>,
    queue: Arc<Scripted>,
    dlq: Arc<LocalQueue>,
    p: Fixable,
}

impl World {
    fn new(refuse: Option<&str>) -> Self {
        let local = LocalBackend::new();
        let inner = local.create_queue("jobs", QueueOptions::default());
        let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
        let queue = Scripted::new(inner.clone(), refuse);
        Self {
            local,
            inner,
            queue,
            dlq,
            p: Fixable::default(),
        }
    }

    async fn send(&self, id: &str, body: &str) {
        self.inner
            .send_batch(vec![
                OutgoingMessage::new(body).attribute(JOB_ID_ATTRIBUTE, id)
            ])
            .await
            .unwrap();
    }

    async fn start(&self, flush_interval: Duration) -> RuntimeHandle {
        let p = self.p.clone();
        Runtime::builder()
            .pipeline(
                Pipeline::new("stage")
                    .source(self.queue.clone())
                    .dead_letter(self.dlq.clone())
                    .results(self.local.blobs(), "results", "out/", "txt")
                    .processor(move || p.clone())
                    .configure(move |c| {
                        c.workers = 2;
                        c.visibility_timeout = Duration::from_millis(400);
                        c.receive_wait = Duration::from_millis(50);
                        c.flush_interval = flush_interval;
                    }),
            )
            .start()
            .await
            .unwrap()
    }
}

/// "Or at once when every lease the pipeline holds is already waiting to
/// be settled": with a ten-second flush interval, a lone job's delete does
/// not wait for it.
#[tokio::test]
async fn a_lone_jobs_delete_goes_out_at_once() {
    let w = World::new(None);
    w.send("j1", "one").await;
    let rt = w.start(Duration::from_secs(10)).await;
    eventually("the delete", Duration::from_secs(3), || {
        w.inner.snapshot().is_empty()
    })
    .await;
    assert_eq!(w.p.runs_of("j1"), 1);
    rt.shutdown().await;
}

/// Deletes fail for 600 ms: retried with a doubling backoff, the job is
/// deleted within its attempts; a burst would have spent them all.
#[tokio::test]
async fn a_failing_delete_is_retried_with_backoff_not_in_a_burst() {
    let w = World::new(None);
    w.queue.failing.store(true, Ordering::Release);
    w.send("j1", "one").await;
    let rt = w.start(Duration::from_millis(2)).await;
    eventually("a failed delete", LIMIT, || {
        w.queue.deletes.load(Ordering::Acquire) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let during = w.queue.deletes.load(Ordering::Acquire);
    w.queue.failing.store(false, Ordering::Release);
    eventually("the delete", LIMIT, || w.inner.snapshot().is_empty()).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert!(during <= 6, "{during} delete calls in 600 ms: no backoff");
    assert_eq!(stats.settle_gave_up, 0, "{stats:?}");
    assert_eq!(w.p.runs_of("j1"), 1);
}

/// A finished job whose delete is refused for good is let go, and stays
/// remembered: when its message comes back it is dropped as a copy.
#[tokio::test]
async fn a_finished_job_let_go_is_dropped_when_it_returns() {
    let w = World::new(Some("done"));
    w.send("j1", "done").await;
    let rt = w.start(Duration::from_millis(2)).await;
    eventually("the return dropped", LIMIT, || {
        w.inner.snapshot().is_empty()
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.settle_gave_up, 1, "{stats:?}");
    assert_eq!(w.p.runs_of("j1"), 1, "run again when it returned");
    assert_eq!(stats.duplicates_dropped, 1, "{stats:?}");
}

/// A dead-lettered job whose delete is refused for good is let go, and
/// forgotten (DESIGN rule 13): a fixed re-send of it runs, while the
/// returning message itself is deleted without a second entry.
#[tokio::test]
async fn a_dead_lettered_job_let_go_is_forgotten() {
    let w = World::new(Some("bad input"));
    w.send("J", "bad input").await;
    let rt = w.start(Duration::from_millis(2)).await;
    eventually("the delete given up", LIMIT, || {
        rt.stats_of("stage").unwrap().settle_gave_up == 1
    })
    .await;
    assert_eq!(w.dlq.depth_now().total(), 1);
    w.p.fixed.store(true, Ordering::Release);
    w.send("J", "bad input, fixed").await;
    eventually("the re-send run", LIMIT, || w.p.runs_of("J") == 2).await;
    eventually("both messages gone", LIMIT, || {
        w.inner.snapshot().is_empty()
    })
    .await;
    rt.shutdown().await;
    assert_eq!(w.dlq.depth_now().total(), 1, "a second dead-letter entry");
    assert_eq!(w.p.runs_of("J"), 2);
}
