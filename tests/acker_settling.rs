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

/// The pipeline's visibility timeout: a visibility change of this length is
/// an extension, any other a give-back.
const VISIBILITY: Duration = Duration::from_millis(400);

/// The embedded queue, with deletes that fail while `failing`, the first
/// delete of the message with body `refuse` refused for good, deletes and
/// give-backs held while `hold_deletes` / `hold_give_backs`, and each
/// extension answered only after `slow_extensions` (if set).
#[derive(Debug)]
struct Scripted {
    inner: Arc<LocalQueue>,
    failing: AtomicBool,
    refuse: Option<String>,
    refused: Mutex<Option<String>>,
    deletes: AtomicUsize,
    hold_deletes: AtomicBool,
    hold_give_backs: AtomicBool,
    held: AtomicUsize,
    slow_extensions: Mutex<Option<Duration>>,
    /// An extension is under way (between its call and its answer).
    extending: Arc<AtomicBool>,
    /// A give-back was sent while an extension was under way.
    overlapped: AtomicBool,
    /// Every give-back's handle, in call order.
    give_backs: Mutex<Vec<String>>,
}

async fn while_set(flag: &AtomicBool) {
    while flag.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Scripted {
    fn new(inner: Arc<LocalQueue>, refuse: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failing: AtomicBool::new(false),
            refuse: refuse.map(str::to_owned),
            refused: Mutex::default(),
            deletes: AtomicUsize::new(0),
            hold_deletes: AtomicBool::new(false),
            hold_give_backs: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            slow_extensions: Mutex::default(),
            extending: Arc::default(),
            overlapped: AtomicBool::new(false),
            give_backs: Mutex::default(),
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
        if self.hold_deletes.load(Ordering::Acquire) {
            self.held.fetch_add(1, Ordering::AcqRel);
            while_set(&self.hold_deletes).await;
        }
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
        if entries.iter().all(|(_, d)| *d == VISIBILITY) {
            let slow = *self.slow_extensions.lock().unwrap();
            if let Some(slow) = slow {
                // Cleared however the call ends (the keeper may drop it).
                struct Clear<'a>(&'a AtomicBool);
                impl Drop for Clear<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                self.extending.store(true, Ordering::Release);
                let _clear = Clear(&self.extending);
                tokio::time::sleep(slow).await;
                return self.inner.change_visibility_batch(entries).await;
            }
            return self.inner.change_visibility_batch(entries).await;
        }
        if self.extending.load(Ordering::Acquire) {
            self.overlapped.store(true, Ordering::Release);
        }
        self.give_backs
            .lock()
            .unwrap()
            .extend(entries.iter().map(|(h, _)| h.clone()));
        if self.hold_give_backs.load(Ordering::Acquire) {
            self.held.fetch_add(1, Ordering::AcqRel);
            while_set(&self.hold_give_backs).await;
        }
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

/// Refuses bodies starting with `bad` as bad input until fixed; asks for a
/// retry of a first delivery of a body starting with `retry` (once
/// `extending` is set, for `retry after extension`); counts runs per job id.
#[derive(Clone, Default)]
struct Fixable {
    fixed: Arc<AtomicBool>,
    runs: Arc<Mutex<HashMap<String, u32>>>,
    extending: Arc<AtomicBool>,
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
        if job.body.starts_with("retry") && job.receive_count == 1 {
            if job.body == "retry after extension" {
                let until = std::time::Instant::now() + Duration::from_secs(5);
                while !self.extending.load(Ordering::Acquire) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            return Err(ProcessError::retry("again"));
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
        let p = Fixable {
            extending: queue.extending.clone(),
            ..Fixable::default()
        };
        Self {
            local,
            inner,
            queue,
            dlq,
            p,
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
        self.start_with(flush_interval, 500).await
    }

    async fn start_with(&self, flush_interval: Duration, max_in_flight: usize) -> RuntimeHandle {
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
                        c.visibility_timeout = VISIBILITY;
                        c.retry_backoff_base = Duration::from_millis(20);
                        c.retry_backoff_max = Duration::from_millis(200);
                        c.receive_wait = Duration::from_millis(50);
                        c.flush_interval = flush_interval;
                        c.max_in_flight = max_in_flight;
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

/// DESIGN rule 5: a give-back waits for an extension under way; sent
/// before it lands, the extension would hide the message again.
#[tokio::test]
async fn a_give_back_waits_for_the_extension_under_way() {
    let w = World::new(None);
    // Within the extension's time limit (a quarter of the visibility).
    *w.queue.slow_extensions.lock().unwrap() = Some(Duration::from_millis(80));
    w.send("j1", "retry after extension").await;
    let rt = w.start(Duration::from_millis(2)).await;
    eventually("the retry and the rerun", LIMIT, || {
        w.p.runs_of("j1") == 2 && w.inner.snapshot().is_empty()
    })
    .await;
    rt.shutdown().await;
    assert!(
        !w.queue.give_backs.lock().unwrap().is_empty(),
        "no give-back seen"
    );
    assert!(
        !w.queue.overlapped.load(Ordering::Acquire),
        "a give-back went out while an extension was under way"
    );
}

/// DESIGN rule 4: the newest receipt handle deletes. A copy merged while
/// the delete with the older handle is under way: that delete is refused,
/// and the acker deletes again with the newer one; nothing is lost.
#[tokio::test]
async fn a_delete_refused_for_a_handle_replaced_meanwhile_is_sent_again() {
    let w = World::new(None);
    w.queue.hold_deletes.store(true, Ordering::Release);
    w.send("j1", "done").await;
    let rt = w.start(Duration::from_millis(2)).await;
    eventually("a held delete", LIMIT, || {
        w.queue.held.load(Ordering::Acquire) >= 1
    })
    .await;
    let id = w.inner.snapshot()[0].message_id.clone();
    assert!(w.inner.duplicate_now(&id));
    eventually("the copy merged", LIMIT, || {
        rt.stats_of("stage").unwrap().duplicates_merged == 1
    })
    .await;
    w.queue.hold_deletes.store(false, Ordering::Release);
    eventually("the delete", LIMIT, || w.inner.snapshot().is_empty()).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.leases_lost, 0, "{stats:?}");
    assert_eq!(stats.duplicates_dropped, 0, "{stats:?}");
    assert_eq!(w.p.runs_of("j1"), 1);
}

/// The same for a give-back: one refused for a handle replaced meanwhile
/// is sent again with the newer handle, so the retry's backoff applies to
/// the delivery the queue knows.
#[tokio::test]
async fn a_give_back_for_a_handle_replaced_meanwhile_is_sent_again() {
    let w = World::new(None);
    w.queue.hold_give_backs.store(true, Ordering::Release);
    w.send("j1", "retry").await;
    let rt = w.start(Duration::from_millis(2)).await;
    eventually("a held give-back", LIMIT, || {
        w.queue.held.load(Ordering::Acquire) >= 1
    })
    .await;
    let id = w.inner.snapshot()[0].message_id.clone();
    assert!(w.inner.duplicate_now(&id));
    eventually("the copy merged", LIMIT, || {
        rt.stats_of("stage").unwrap().duplicates_merged == 1
    })
    .await;
    w.queue.hold_give_backs.store(false, Ordering::Release);
    eventually("the rerun", LIMIT, || {
        w.p.runs_of("j1") == 2 && w.inner.snapshot().is_empty()
    })
    .await;
    rt.shutdown().await;
    let backs = w.queue.give_backs.lock().unwrap().clone();
    assert!(backs.len() >= 2, "{backs:?}");
    assert_ne!(backs[0], backs[1], "the newer handle was never given back");
}

/// A delete refused because another reader holds the message now (not a
/// copy merged into the lease): the job's effects are done, the lease is
/// counted lost and ends — the refusal is not retried for ever.
#[tokio::test]
async fn a_delete_refused_because_another_reader_holds_the_message_ends_the_lease() {
    let w = World::new(None);
    w.queue.hold_deletes.store(true, Ordering::Release);
    w.send("j1", "done").await;
    // One lease at a time: the pipeline does not receive while it settles.
    let rt = w.start_with(Duration::from_millis(2), 1).await;
    eventually("a held delete", LIMIT, || {
        w.queue.held.load(Ordering::Acquire) >= 1
    })
    .await;
    let id = w.inner.snapshot()[0].message_id.clone();
    assert!(w.inner.duplicate_now(&id));
    let theirs = w
        .inner
        .receive(1, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1, "another reader took it");
    w.queue.hold_deletes.store(false, Ordering::Release);
    eventually("the lease ended", LIMIT, || {
        rt.stats_of("stage").unwrap().leases_lost == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = w.queue.deletes.load(Ordering::Acquire);
    assert_eq!(calls, 1, "the refused delete was retried");
    rt.shutdown().await;
    assert_eq!(w.p.runs_of("j1"), 1);
}
