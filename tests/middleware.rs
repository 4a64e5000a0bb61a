//! Middleware on every kind of processor: layers run in order around each
//! job and may refuse it or change its outcome; the failure and
//! dead-letter hooks see the job and why; `Timeout` retries a job past its
//! limit until it is dead-lettered "timed out"; `ConcurrencyLimit` caps the
//! jobs running inside it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry::prelude::*;
use ferry::{ConcurrencyLimit, Held, Layer, Outcome, Timeout, DLQ_REASON_ATTRIBUTE};

/// Records its `before` and `after` calls by name; refuses jobs named
/// `refused-*` (bad input) and turns a failure of `fixable-*` into a result.
struct Recording {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

#[ferry::async_trait]
impl Layer for Recording {
    async fn before(&self, job: &Job) -> Result<Held, ProcessError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} before {}", self.name, job.id));
        if self.name == "outer" && job.id.as_str().starts_with("refused") {
            return Err(ProcessError::bad_input("refused by the outer layer"));
        }
        Ok(None)
    }

    fn after(&self, job: &Job, _took: Duration, outcome: Outcome) -> Outcome {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} after {}", self.name, job.id));
        match outcome {
            Err(_) if self.name == "inner" && job.id.as_str().starts_with("fixable") => {
                Ok(Output::text("fixed by the inner layer"))
            }
            other => other,
        }
    }
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn layers_and_hooks(kind: Kind) {
    let h = Harness::new();
    h.send_named(&["fixable-1".into(), "refused-1".into()])
        .await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (failed, dead): (Seen, Seen) = Default::default();
    let p = Counting::new();
    // Every run fails by itself: only the layers make a result.
    p.set(Behaviour::BadInput);
    let (f, d) = (failed.clone(), dead.clone());
    let pipeline = h
        .pipeline_of(kind, p.clone())
        .layer(Recording {
            name: "outer",
            log: log.clone(),
        })
        .layer(Recording {
            name: "inner",
            log: log.clone(),
        })
        .on_failure(move |job, e| f.lock().unwrap().push((job.id.to_string(), e.to_string())))
        .on_dead_letter(move |job, r| d.lock().unwrap().push((job.id.to_string(), r.into())));
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("both settled", || {
        h.jobs.depth_now().total() == 0 && h.dlq.depth_now().total() == 1
    })
    .await;
    eventually("the dead-letter hook", || !dead.lock().unwrap().is_empty()).await;
    rt.shutdown().await;
    assert_eq!(h.results().await, vec!["out/fixable-1.txt".to_string()]);
    let entry = &h.dlq.snapshot()[0];
    let reason = entry.attributes.get(DLQ_REASON_ATTRIBUTE).unwrap();
    assert!(reason.contains("refused by the outer layer"), "{reason}");
    assert_eq!(p.started_count(), 1, "the refused job never ran");
    let log = log.lock().unwrap().clone();
    let of = |id: &str| -> Vec<String> {
        log.iter()
            .filter(|l| l.ends_with(id))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
            .collect()
    };
    assert_eq!(
        of("fixable-1"),
        ["outer before", "inner before", "inner after", "outer after"]
    );
    // A layer that refuses a job is not asked after it: those outside are.
    assert_eq!(of("refused-1"), ["outer before"]);
    assert_eq!(
        failed.lock().unwrap().clone(),
        [(
            "refused-1".to_string(),
            "bad input: refused by the outer layer".to_string()
        )]
    );
    let dead = dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "refused-1");
    assert!(dead[0].1.contains("refused by the outer layer"), "{dead:?}");
}

async fn a_timeout_retries_then_dead_letters(kind: Kind) {
    let h = Harness::new();
    h.send_named(&["slow".into()]).await;
    let p = Counting::new().with_delay(Duration::from_millis(400));
    let pipeline = h
        .pipeline_of(kind, p.clone())
        .layer(Timeout(Duration::from_millis(50)))
        .configure(|c| c.max_receives = 2);
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("dead-lettered", || h.dlq.depth_now().total() == 1).await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    let entry = &h.dlq.snapshot()[0];
    let reason = entry.attributes.get(DLQ_REASON_ATTRIBUTE).unwrap();
    assert!(reason.contains("timed out after 50 ms"), "{reason}");
    assert_eq!(p.started_count(), 2, "{stats:?}");
    assert!(h.results().await.is_empty());
}

/// Runs 30 ms, counting how many run at once.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(n, Ordering::AcqRel);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Processor for Gauge {
    fn process(&mut self, _: &Job, _: &Context) -> Result<Output, ProcessError> {
        self.enter();
        std::thread::sleep(Duration::from_millis(30));
        self.leave();
        Ok(Output::text("done"))
    }
}

#[ferry::async_trait]
impl AsyncProcessor for Gauge {
    async fn process(&self, _: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        self.enter();
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.leave();
        Ok(Output::text("done"))
    }
}

#[ferry::async_trait]
impl BatchProcessor for Gauge {
    async fn process_batch(&self, jobs: &[Job], _: &TaskContext) -> Vec<Outcome> {
        jobs.iter().for_each(|_| self.enter());
        tokio::time::sleep(Duration::from_millis(30)).await;
        jobs.iter().for_each(|_| self.leave());
        jobs.iter().map(|_| Ok(Output::text("done"))).collect()
    }
}

async fn a_concurrency_limit_caps_running_jobs(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(12).await;
    let g = Gauge::default();
    let base = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt");
    let pipeline = match kind {
        Kind::Sync => {
            let g = g.clone();
            base.processor(move || g.clone())
        }
        Kind::Async => base.async_processor(g.clone()),
        Kind::Batch => base.batch_processor(
            g.clone(),
            BatchOptions {
                max_jobs: 4,
                max_wait: Duration::from_millis(5),
            },
        ),
    }
    .layer(ConcurrencyLimit::new(2))
    .configure(|c| {
        fast(c);
        c.workers = 4;
        c.concurrency = 8;
    });
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("every job stored", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    assert_eq!(h.results().await.len(), 12);
    let most = g.most.load(Ordering::Acquire);
    // A batch holds one permit per job while the batch runs.
    assert!(most <= 2, "{most} jobs ran at once past a limit of 2");
    if kind != Kind::Batch {
        assert_eq!(most, 2, "the limit let only one run at a time");
    }
}

/// The example uses a layer of its own, both shipped layers and both
/// hooks, and checks its orders settled.
#[test]
fn the_middleware_example_runs() {
    let out = std::process::Command::new(example("middleware"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "order-9 dead-lettered: failed on all 2 attempts; last error: timed out after 500 ms"
        ),
        "{text}"
    );
    assert!(text.contains("order-4 failed: bad input"), "{text}");
    assert!(text.contains("slow job"), "{text}");
}

for_each_kind!(mt; layers_and_hooks, a_timeout_retries_then_dead_letters, a_concurrency_limit_caps_running_jobs);

/// tower's own middleware around jobs: a tower service as the processor,
/// with tower's timeout and concurrency limit; a `ProcessError` from the
/// service keeps its kind, tower's timeout is a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_service_with_towers_middleware_is_a_processor() {
    use tower::ServiceBuilder;
    let h = Harness::new();
    h.send_named(&[
        "ok-1".into(),
        "ok-2".into(),
        "slow-1".into(),
        "bad-1".into(),
    ])
    .await;
    let g = Gauge::default();
    let service = ServiceBuilder::new()
        .concurrency_limit(1)
        .timeout(Duration::from_millis(100))
        .service_fn({
            let g = g.clone();
            move |job: Job| {
                let g = g.clone();
                async move {
                    // Left on drop too: tower's timeout drops the future.
                    struct Inside(Gauge);
                    impl Drop for Inside {
                        fn drop(&mut self) {
                            self.0.leave();
                        }
                    }
                    g.enter();
                    let _inside = Inside(g.clone());
                    let wait = if job.id.as_str().starts_with("slow") {
                        1_000
                    } else {
                        20
                    };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    if job.id.as_str().starts_with("bad") {
                        return Err(ProcessError::bad_input("not a thing").into());
                    }
                    Ok::<_, tower::BoxError>(Output::text("done"))
                }
            }
        });
    let pipeline = Pipeline::new("stage")
        .source(h.jobs.clone())
        .dead_letter(h.dlq.clone())
        .results(h.local.blobs(), "results", "out/", "txt")
        .async_processor(ferry::TowerProcessor::new(service))
        .configure(|c| {
            fast(c);
            c.max_receives = 2;
            c.concurrency = 8;
        });
    let rt = Runtime::builder().pipeline(pipeline).start().await.unwrap();
    eventually("every job settled", || {
        h.jobs.depth_now().total() == 0 && h.dlq.depth_now().total() == 2
    })
    .await;
    rt.shutdown().await;
    let mut results = h.results().await;
    results.sort();
    assert_eq!(results, ["out/ok-1.txt", "out/ok-2.txt"]);
    let reasons: Vec<String> = h
        .dlq
        .snapshot()
        .iter()
        .map(|m| m.attributes[DLQ_REASON_ATTRIBUTE].clone())
        .collect();
    assert!(reasons.iter().any(|r| r == "not a thing"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("attempts") && r.contains("timed out")),
        "{reasons:?}"
    );
    assert_eq!(g.most.load(Ordering::Acquire), 1, "tower's limit of one");
}
