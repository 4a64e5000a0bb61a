//! DESIGN rule 8 when a FIFO group's head is dead-lettered but its delete is
//! refused: the message is still in the queue and comes back, so the
//! group's later messages, already received and waiting behind it, must
//! not run before it has (a worker that died meanwhile would leave the head
//! to run again after them). They are given back and run after its return,
//! which is deleted without a second entry.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, fast};
use ferry::backend::local::{LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage};
use ferry::prelude::*;
use ferry::BackendError;

/// The source queue, refusing the first delete of the message whose body
/// is `bad` (as SQS refuses a receipt handle gone stale), and noting when
/// that message came back.
#[derive(Debug)]
struct RefuseFirstDelete {
    inner: Arc<LocalQueue>,
    bad_handles: Mutex<HashSet<String>>,
    refused: Mutex<bool>,
    bad_back_at: Mutex<Option<Instant>>,
}

#[ferry::async_trait]
impl Queue for RefuseFirstDelete {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        true
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        vis: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        let got = self.inner.receive(max, wait, vis).await?;
        let mut bad = self.bad_handles.lock().unwrap();
        for m in got.iter().filter(|m| m.body == "bad") {
            if !bad.is_empty() {
                *self.bad_back_at.lock().unwrap() = Some(Instant::now());
            }
            bad.insert(m.receipt_handle.clone());
        }
        Ok(got)
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        let bad: HashSet<String> = self.bad_handles.lock().unwrap().clone();
        let refuse = |h: &String| bad.contains(h) && !*self.refused.lock().unwrap();
        let keep: Vec<String> = handles.iter().filter(|h| !refuse(h)).cloned().collect();
        let mut answers = self.inner.delete_batch(&keep).await?.into_iter();
        let mut out = Vec::new();
        for h in handles {
            if refuse(h) {
                *self.refused.lock().unwrap() = true;
                out.push(Err(BackendError::ReceiptInvalid));
                continue;
            }
            out.push(answers.next().expect("an answer per entry"));
        }
        Ok(out)
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

/// `bad` is bad input; every other job succeeds. Notes when each started.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<(String, Instant)>>>);

impl Processor for Runs {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.0
            .lock()
            .unwrap()
            .push((job.body.clone(), Instant::now()));
        if job.body == "bad" {
            return Err(ProcessError::bad_input("not a job"));
        }
        Ok(Output::text(job.body.clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_head_whose_delete_was_refused_still_goes_first() {
    let local = LocalBackend::new();
    let fifo = QueueOptions {
        fifo: true,
        content_based_dedup: true,
        ..QueueOptions::default()
    };
    let jobs = local.create_queue("jobs.fifo", fifo.clone());
    let dlq = local.create_queue("jobs-dlq.fifo", fifo);
    let source = Arc::new(RefuseFirstDelete {
        inner: jobs.clone(),
        bad_handles: Mutex::default(),
        refused: Mutex::new(false),
        bad_back_at: Mutex::default(),
    });
    let batch = ["bad", "ok-1", "ok-2"]
        .iter()
        .map(|b| OutgoingMessage::new(*b).group("g"))
        .collect();
    jobs.send_batch(batch).await.unwrap();
    let runs = Runs::default();
    let p = runs.clone();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("stage")
                .source(source.clone() as Arc<dyn Queue>)
                .dead_letter(dlq.clone())
                .results(local.blobs(), "results", "out/", "txt")
                .processor(move || p.clone())
                .configure(|c| {
                    fast(c);
                    c.workers = 1;
                }),
        )
        .start()
        .await
        .unwrap();
    eventually("every message settled", || jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    assert!(*source.refused.lock().unwrap(), "no delete was refused");
    let back = source.bad_back_at.lock().unwrap().expect("bad came back");
    let runs = runs.0.lock().unwrap().clone();
    let order: Vec<&str> = runs.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(order, ["bad", "ok-1", "ok-2"], "each run once, in order");
    for (body, at) in &runs[1..] {
        assert!(
            *at > back,
            "{body} ran while the dead-lettered head's message was still to come back"
        );
    }
    assert_eq!(dlq.snapshot().len(), 1, "one dead-letter entry");
}
