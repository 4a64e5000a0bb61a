//! DESIGN rule 8: FIFO group order. 20 groups × 30 messages with failures
//! injected at random: every group completes in send order, no two jobs of
//! one group run at once, and groups overlap in time. On the embedded
//! backend and on SQS/SNS (moto), where the notices published to a FIFO
//! topic also arrive in group order.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue, Topic};
use ferry::prelude::*;
use ferry::JOB_ID_ATTRIBUTE;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{fast, Kind};

const GROUPS: usize = 20;
const PER_GROUP: usize = 30;

#[derive(Default)]
struct Log {
    /// Completed runs: group, sequence number, start and end.
    done: Vec<(usize, usize, Instant, Instant)>,
    running: HashSet<usize>,
    max_running: usize,
    /// Times a job started while another of its group was running.
    violations: u32,
    /// Every attempt: group, sequence number, receive count, failed.
    attempts: Vec<(usize, usize, u32, bool)>,
}

/// Parses `group-GG/SSS`, fails at random, records each completion.
#[derive(Clone)]
struct Ordered {
    log: Arc<Mutex<Log>>,
    rng: Arc<Mutex<StdRng>>,
    failures: Arc<AtomicU32>,
    fail_rate: f64,
    delay: Duration,
}

impl Ordered {
    fn new(seed: u64, fail_rate: f64, delay: Duration) -> Self {
        Self {
            log: Default::default(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            failures: Default::default(),
            fail_rate,
            delay,
        }
    }
}

fn parse(body: &str) -> (usize, usize) {
    let (g, s) = body
        .trim_start_matches("group-")
        .split_once('/')
        .expect("group-GG/SSS");
    (g.parse().unwrap(), s.parse().unwrap())
}

impl Ordered {
    /// A run's start: group and sequence, the time.
    fn begin(&self, job: &Job) -> (usize, usize, Instant) {
        let (g, s) = parse(&job.body);
        let mut log = self.log.lock().unwrap();
        if !log.running.insert(g) {
            log.violations += 1;
        }
        log.max_running = log.max_running.max(log.running.len());
        (g, s, Instant::now())
    }

    /// A run's end: fails at random, records the completion.
    fn end(
        &self,
        job: &Job,
        (g, s, start): (usize, usize, Instant),
    ) -> Result<Output, ProcessError> {
        let fail = self.rng.lock().unwrap().gen_bool(self.fail_rate);
        let mut log = self.log.lock().unwrap();
        log.running.remove(&g);
        log.attempts.push((g, s, job.receive_count, fail));
        if fail {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(ProcessError::retry("injected failure"));
        }
        log.done.push((g, s, start, Instant::now()));
        Ok(Output::text(job.body.clone()))
    }
}

impl Processor for Ordered {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        let run = self.begin(job);
        std::thread::sleep(self.delay);
        self.end(job, run)
    }
}

#[ferry::async_trait]
impl AsyncProcessor for Ordered {
    async fn process(&self, job: &Job, _: &TaskContext) -> Result<Output, ProcessError> {
        let run = self.begin(job);
        tokio::time::sleep(self.delay).await;
        self.end(job, run)
    }
}

#[ferry::async_trait]
impl BatchProcessor for Ordered {
    async fn process_batch(
        &self,
        jobs: &[Job],
        _: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        let runs: Vec<_> = jobs.iter().map(|j| self.begin(j)).collect();
        tokio::time::sleep(self.delay).await;
        jobs.iter().zip(runs).map(|(j, r)| self.end(j, r)).collect()
    }
}

async fn send_groups(queue: &dyn Queue) {
    // Interleaved: every group's message s before any group's message s+1.
    let all: Vec<OutgoingMessage> = (0..PER_GROUP)
        .flat_map(|s| (0..GROUPS).map(move |g| (g, s)))
        .map(|(g, s)| {
            OutgoingMessage::new(format!("group-{g:02}/{s:03}"))
                .attribute(JOB_ID_ATTRIBUTE, format!("g{g:02}-s{s:03}"))
                .group(format!("group-{g:02}"))
                .dedup(format!("g{g:02}-s{s:03}"))
        })
        .collect();
    for chunk in all.chunks(10) {
        for r in queue.send_batch(chunk.to_vec()).await.unwrap() {
            r.unwrap();
        }
    }
}

fn pipeline(
    source: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    topic: Option<Arc<dyn Topic>>,
    p: Ordered,
    visibility: Duration,
    retry_after: Duration,
    kind: Kind,
) -> Pipeline {
    let pipeline = Pipeline::new("fifo").source(source).dead_letter(dlq);
    let pipeline = match kind {
        Kind::Sync => pipeline.processor(move || p.clone()),
        Kind::Async => pipeline.async_processor(p),
        Kind::Batch => pipeline.batch_processor(
            p,
            BatchOptions {
                max_jobs: 8,
                max_wait: Duration::from_millis(2),
            },
        ),
    };
    let mut pipeline = pipeline.configure(|c| {
        fast(c);
        c.workers = 8;
        c.concurrency = 8;
        c.visibility_timeout = visibility;
        c.retry_backoff_base = retry_after;
        c.retry_backoff_max = retry_after;
        // Released messages count receives too: never dead-letter here.
        c.max_receives = 1000;
    });
    if let Some(t) = topic {
        pipeline = pipeline.topic(t);
    }
    pipeline
}

/// Checks the completion log; returns (groups at once on average over the
/// run, most processors running at once).
fn check(p: &Ordered) -> (f64, usize) {
    let log = p.log.lock().unwrap();
    assert_eq!(log.violations, 0, "two jobs of one group ran at once");
    let mut by_group: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (g, s, _, _) in &log.done {
        by_group.entry(*g).or_default().push(*s);
    }
    assert_eq!(by_group.len(), GROUPS);
    let expected: Vec<usize> = (0..PER_GROUP).collect();
    for (g, seqs) in &by_group {
        if seqs != &expected {
            let attempts: Vec<_> = log.attempts.iter().filter(|a| a.0 == *g).collect();
            eprintln!("attempts of group {g}: {attempts:?}");
        }
        assert_eq!(seqs, &expected, "group {g} completed out of order");
    }
    // Each group's span, from its first start to its last end; their sum
    // over the whole run's span is how many groups were under way at once.
    let first = log.done.iter().map(|d| d.2).min().unwrap();
    let last = log.done.iter().map(|d| d.3).max().unwrap();
    let mut spans: HashMap<usize, (Instant, Instant)> = HashMap::new();
    for (g, _, a, b) in &log.done {
        let e = spans.entry(*g).or_insert((*a, *b));
        e.0 = e.0.min(*a);
        e.1 = e.1.max(*b);
    }
    let busy: f64 = spans.values().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
    let overlap = busy / (last - first).as_secs_f64();
    (overlap, log.max_running)
}

async fn fifo_groups_complete_in_send_order_on_the_embedded_backend(kind: Kind) {
    let local = LocalBackend::new();
    let fifo = QueueOptions {
        fifo: true,
        ..QueueOptions::default()
    };
    let dlq = local.create_queue("fifo-dlq.fifo", fifo.clone());
    let jobs = local.create_queue("fifo-jobs.fifo", fifo);
    send_groups(jobs.as_ref()).await;
    let p = Ordered::new(11, 0.15, Duration::from_millis(2));
    let started = Instant::now();
    let runtime = Runtime::builder()
        .pipeline(pipeline(
            jobs.clone(),
            dlq.clone(),
            None,
            p.clone(),
            Duration::from_secs(2),
            Duration::from_millis(20),
            kind,
        ))
        .start()
        .await
        .unwrap();
    let total = GROUPS * PER_GROUP;
    common::eventually_async("every message to complete", || async {
        p.log.lock().unwrap().done.len() >= total && jobs.depth_now().total() == 0
    })
    .await;
    let stats = runtime.total();
    runtime.shutdown().await;
    let (overlap, max_running) = check(&p);
    let failures = p.failures.load(Ordering::Relaxed);
    eprintln!(
        "embedded FIFO: {total} messages in {:.2} s, {failures} injected failures, \
         {} releases, groups at once on average {overlap:.1}, most processors at once {max_running}",
        started.elapsed().as_secs_f64(),
        stats.released
    );
    assert!(failures > 20, "failures were injected ({failures})");
    assert!(
        stats.released > 0,
        "a failure gave its group's waiting messages back"
    );
    assert_eq!(dlq.depth_now().total(), 0);
    assert!(
        overlap > 4.0,
        "groups ran in parallel (overlap {overlap:.1})"
    );
    assert!(
        max_running > 1,
        "processors of different groups ran at once"
    );
}

/// moto's SQS runs each request on a thread of its own and does not lock a
/// FIFO group atomically: a delete that lands while a receive is scanning
/// can let that receive hand out a group's later message before an earlier
/// one. SQS has no such race; this wrapper sends one call at a time, so the
/// test measures ferry and not the emulator.
#[cfg(feature = "aws")]
#[derive(Debug)]
struct OneCallAtATime {
    inner: Arc<dyn Queue>,
    lock: tokio::sync::Mutex<()>,
}

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl Queue for OneCallAtATime {
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
        vis: Duration,
    ) -> Result<Vec<ferry::backend::ReceivedMessage>, ferry::BackendError> {
        let _one = self.lock.lock().await;
        self.inner.receive(max, wait, vis).await
    }
    async fn delete_batch(
        &self,
        handles: &[String],
    ) -> Result<Vec<ferry::backend::EntryResult>, ferry::BackendError> {
        let _one = self.lock.lock().await;
        self.inner.delete_batch(handles).await
    }
    async fn change_visibility_batch(
        &self,
        e: &[(String, Duration)],
    ) -> Result<Vec<ferry::backend::EntryResult>, ferry::BackendError> {
        let _one = self.lock.lock().await;
        self.inner.change_visibility_batch(e).await
    }
    async fn send_batch(
        &self,
        m: Vec<OutgoingMessage>,
    ) -> Result<Vec<ferry::backend::EntryResult<String>>, ferry::BackendError> {
        let _one = self.lock.lock().await;
        self.inner.send_batch(m).await
    }
    async fn depth(&self) -> Result<ferry::backend::QueueDepth, ferry::BackendError> {
        self.inner.depth().await
    }
}

#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_complete_in_send_order_on_sqs_and_the_fifo_topic_keeps_it() {
    use ferry::backend::aws::QueueSpec;
    let Some(_) = common::aws::endpoint() else {
        return;
    };
    let aws = common::aws::backend().await;
    let name = common::aws::unique("fifo");
    let spec = QueueSpec {
        fifo: true,
        ..QueueSpec::default()
    };
    let dlq = aws
        .create_queue(&format!("{name}-dlq.fifo"), &spec)
        .await
        .unwrap();
    let jobs = aws
        .create_queue(&format!("{name}-jobs.fifo"), &spec)
        .await
        .unwrap();
    let next = aws
        .create_queue(&format!("{name}-next.fifo"), &spec)
        .await
        .unwrap();
    let topic = aws
        .create_topic(&format!("{name}-done.fifo"), true)
        .await
        .unwrap();
    aws.subscribe(&topic, &next, false).await.unwrap();
    send_groups(jobs.as_ref()).await;

    let p = Ordered::new(12, 0.1, Duration::from_millis(2));
    let started = Instant::now();
    let runtime = Runtime::builder()
        .pipeline(pipeline(
            Arc::new(OneCallAtATime {
                inner: jobs.clone(),
                lock: tokio::sync::Mutex::new(()),
            }),
            dlq.clone(),
            Some(topic),
            p.clone(),
            // moto answers slowly under this load; a lapsed lease on a
            // message waiting behind its group would let moto unlock the
            // group (it does not keep the group locked as SQS does).
            Duration::from_secs(10),
            // moto keeps a released message in its in-flight set until a
            // receive happens to pass over it, and a receive that then
            // meets a group's failed head and two such messages clears
            // them one by one and hands out the last first. A failed head
            // that stays away three seconds lets the receives in between
            // clear its group's released messages first (SQS needs none
            // of this).
            Duration::from_secs(3),
            Kind::Sync,
        ))
        .start()
        .await
        .unwrap();
    let total = GROUPS * PER_GROUP;
    let deadline = Instant::now() + Duration::from_secs(240);
    while p.log.lock().unwrap().done.len() < total || runtime.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "timed out: {:?}",
            runtime.total()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = runtime.total();
    runtime.shutdown().await;
    eprintln!("SQS FIFO (moto) counters: {stats:?}");
    let (overlap, max_running) = check(&p);
    let failures = p.failures.load(Ordering::Relaxed);
    eprintln!(
        "SQS FIFO (moto): {total} messages in {:.2} s, {failures} injected failures, \
         {} releases, {} extensions, groups at once on average {overlap:.1}, most processors at once {max_running}",
        started.elapsed().as_secs_f64(),
        stats.released,
        stats.leases_extended
    );
    assert!(failures > 10, "failures were injected ({failures})");
    assert_eq!(jobs.depth().await.unwrap().total(), 0);
    assert_eq!(dlq.depth().await.unwrap().total(), 0);
    assert!(
        overlap > 4.0,
        "groups ran in parallel (overlap {overlap:.1})"
    );

    // The notices: each carries its group, in order, once (the FIFO topic
    // deduplicates by the id ferry derives from the job id).
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut count = 0;
    while count < total {
        let got = next
            .receive(10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(!got.is_empty(), "notices missing: {count} of {total}");
        let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
        for m in got {
            let job = Job::from_message(m);
            let group = job.group_id.clone().expect("a FIFO notice has a group");
            seen.entry(group).or_default().push(job.id.to_string());
            count += 1;
        }
        next.delete_batch(&handles).await.unwrap();
    }
    assert_eq!(seen.len(), GROUPS);
    for (group, ids) in seen {
        let g: usize = group.trim_start_matches("group-").parse().unwrap();
        let expected: Vec<String> = (0..PER_GROUP).map(|s| format!("g{g:02}-s{s:03}")).collect();
        assert_eq!(ids, expected, "notices of {group} out of order");
    }
}

for_each_kind!(mt; fifo_groups_complete_in_send_order_on_the_embedded_backend);
