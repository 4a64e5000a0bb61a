//! Worker processes against one moto server: a spot-kill soak (workers
//! SIGKILLed at random while fresh ones start) and a SIGTERM drain. Both are
//! bounded in time and stop by themselves.
#![cfg(feature = "aws")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::aws::*;
use common::example_binary;
use ferry::backend::aws::{AwsBackend, QueueSpec, SqsQueue};
use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue};
use ferry::{DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};
use std::sync::Arc;

/// One run's resources, provisioned as `--provision` would.
struct Stages {
    aws: AwsBackend,
    input: String,
    results: String,
    stage1: Arc<SqsQueue>,
    stage1_dlq: Arc<SqsQueue>,
    stage2: Arc<SqsQueue>,
    stage2_dlq: Arc<SqsQueue>,
    topic_arn: String,
    /// Subscribed to the topic as stage 2's queue is: every notice stage 1
    /// published, kept for counting.
    tap: Arc<SqsQueue>,
    logs: PathBuf,
}

impl Stages {
    async fn new(tag: &str) -> Self {
        let aws = backend().await;
        let p = unique(tag).to_lowercase();
        let dlq1 = aws
            .create_queue(&format!("{p}-s1-dlq"), &QueueSpec::default())
            .await
            .unwrap();
        let dlq2 = aws
            .create_queue(&format!("{p}-s2-dlq"), &QueueSpec::default())
            .await
            .unwrap();
        let spec = |arn: &str| QueueSpec {
            redrive: Some((arn.to_owned(), 10)),
            ..QueueSpec::default()
        };
        let stage1 = aws
            .create_queue(&format!("{p}-s1"), &spec(dlq1.arn()))
            .await
            .unwrap();
        let stage2 = aws
            .create_queue(&format!("{p}-s2"), &spec(dlq2.arn()))
            .await
            .unwrap();
        let topic = aws.create_topic(&format!("{p}-done"), false).await.unwrap();
        aws.subscribe(&topic, &stage2, false).await.unwrap();
        let tap = aws
            .create_queue(&format!("{p}-tap"), &QueueSpec::default())
            .await
            .unwrap();
        aws.subscribe(&topic, &tap, false).await.unwrap();
        let (input, results) = (format!("{p}-in"), format!("{p}-out"));
        aws.create_bucket(&input).await.unwrap();
        aws.create_bucket(&results).await.unwrap();
        let logs = std::env::temp_dir().join(format!("ferry-{p}"));
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            aws,
            input,
            results,
            stage1,
            stage1_dlq: dlq1,
            stage2,
            stage2_dlq: dlq2,
            topic_arn: topic.arn().to_owned(),
            tap,
            logs,
        }
    }

    /// Uploads `n` images and enqueues one job each, plus the bad inputs.
    async fn produce(&self, n: usize, bad: &[(&str, String)]) {
        let blobs = self.aws.blobs();
        blobs
            .put(
                &self.input,
                "bad/text.png",
                ferry_actors::samples::not_an_image().into(),
                ObjectMeta::default(),
            )
            .await
            .unwrap();
        let mut msgs = Vec::new();
        for i in 0..n {
            let key = format!("in/{i}.png");
            let png = ferry_actors::samples::synthetic_png(i as u64, 48);
            blobs
                .put(&self.input, &key, png.into(), ObjectMeta::default())
                .await
                .unwrap();
            let body = serde_json::json!({"bucket": self.input, "key": key}).to_string();
            msgs.push(
                OutgoingMessage::new(body).attribute(JOB_ID_ATTRIBUTE, format!("job-{i:03}")),
            );
        }
        for (id, body) in bad {
            msgs.push(OutgoingMessage::new(body.clone()).attribute(JOB_ID_ATTRIBUTE, *id));
        }
        for chunk in msgs.chunks(10) {
            for r in self.stage1.send_batch(chunk.to_vec()).await.unwrap() {
                r.unwrap();
            }
        }
    }

    /// Waits until worker `n` says it is running (bounded).
    fn wait_running(&self, stage: &str, n: usize) {
        let log = self.logs.join(format!("worker-{stage}-{n}.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("running stage")
        {
            assert!(
                Instant::now() < deadline,
                "worker {n} never started; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The main job's binary with this run's resources on its command line.
    fn command(&self) -> Command {
        let mut cmd = Command::new(example_binary());
        cmd.args(["--backend", "aws", "--s3-path-style"])
            .args([
                "--input-bucket",
                &self.input,
                "--result-bucket",
                &self.results,
            ])
            .args([
                "--stage1-queue",
                self.stage1.url(),
                "--stage1-dlq",
                self.stage1_dlq.url(),
            ])
            .args([
                "--stage2-queue",
                self.stage2.url(),
                "--stage2-dlq",
                self.stage2_dlq.url(),
            ])
            .args(["--topic", &self.topic_arn])
            .env("RUST_LOG", "warn");
        cmd
    }

    fn worker(&self, stage: &str, n: usize, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.logs.join(format!("worker-{stage}-{n}.log"))).unwrap();
        self.command()
            .args(["--worker", "--stage", stage, "--workers", "1"])
            .arg("--record")
            .arg(self.record_dir())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Where each worker records its processor runs, result writes and
    /// notices (`<pid>.log`).
    fn record_dir(&self) -> PathBuf {
        self.logs.join("record")
    }

    /// What each worker process recorded: per pid, per (event, stage, job
    /// id), how often. A line cut short by a SIGKILL is left out.
    fn records(&self) -> BTreeMap<u32, BTreeMap<(String, String, String), u32>> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(self.record_dir()) else {
            return out;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let pid: u32 = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected record {}", path.display()));
            let counts: &mut BTreeMap<(String, String, String), u32> = out.entry(pid).or_default();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                let id = field("id");
                // A result write names its key: `stage2/job-001.json`.
                let id = match field("event").as_str() {
                    "put" => id
                        .split_once('/')
                        .map(|(_, k)| k.rsplit_once('.').map_or(k, |(j, _)| j).to_owned())
                        .unwrap_or(id),
                    _ => id,
                };
                *counts
                    .entry((field("event"), field("stage"), id))
                    .or_default() += 1;
            }
        }
        out
    }

    /// Runs an operator command to its end; its standard output.
    fn operator(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn depth_total(&self, q: &SqsQueue) -> usize {
        q.depth().await.unwrap().total()
    }

    /// The last `stats` line each worker log holds, summed.
    fn worker_stats(&self) -> ferry::StatsSnapshot {
        let mut total = ferry::StatsSnapshot::default();
        for entry in std::fs::read_dir(&self.logs).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            if let Some(line) = text.lines().rev().find_map(|l| l.strip_prefix("stats ")) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let get = |k: &str| v[k].as_u64().unwrap_or(0);
                let mut s = ferry::StatsSnapshot::default();
                s.duplicates_merged = get("duplicates_merged");
                s.duplicates_dropped = get("duplicates_dropped");
                s.resumed = get("resumed");
                s.restarts = get("restarts");
                s.received = get("received");
                s.processed = get("processed");
                s.leases_lost = get("leases_lost");
                s.skipped_completed = get("skipped_completed");
                s.claims_deferred = get("claims_deferred");
                s.claims_lost = get("claims_lost");
                total = total + s;
            }
        }
        total
    }
}

/// The two tests start worker processes against one moto server; run them
/// one at a time so neither measures the other's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "could not signal worker {}", child.id());
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_kill_soak_loses_nothing_and_repeats_no_effect() {
    let Some(_) = endpoint() else { return };
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 150;
    let s = Stages::new("spot").await;
    let bad = vec![
        ("bad-json", "{\"bucket\": ".to_string()),
        (
            "bad-missing",
            serde_json::json!({"bucket": s.input, "key": "nope.png"}).to_string(),
        ),
        (
            "bad-text",
            serde_json::json!({"bucket": s.input, "key": "bad/text.png"}).to_string(),
        ),
    ];
    s.produce(JOBS, &bad).await;
    let started = Instant::now();
    // 300 ms of work per stage-1 job: kills land mid-job, not between runs.
    let extra = [
        "--visibility-secs",
        "4",
        "--grace-secs",
        "5",
        "--process-delay-ms",
        "300",
    ];
    let mut spawned = 0;
    let mut workers: Vec<(String, usize, Child)> = Vec::new();
    for stage in ["1", "1", "1", "2", "2", "2"] {
        workers.push((stage.to_string(), spawned, s.worker(stage, spawned, &extra)));
        spawned += 1;
    }
    let deadline = started + Duration::from_secs(300);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut kills = 0;
    let mut killed: BTreeSet<u32> = BTreeSet::new();
    let mut last_kill = Instant::now();
    let blobs = s.aws.blobs();
    let done = loop {
        assert!(
            Instant::now() < deadline,
            "not done within 300 s after {kills} kills"
        );
        if last_kill.elapsed() >= Duration::from_secs(2) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % workers.len() as u64) as usize;
            let (stage, _, mut child) = workers.swap_remove(i);
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed.insert(child.id());
            kills += 1;
            workers.push((stage.clone(), spawned, s.worker(&stage, spawned, &extra)));
            spawned += 1;
            last_kill = Instant::now();
        }
        let results = blobs.list(&s.results, "stage2/").await.unwrap();
        if results.len() >= JOBS
            && s.depth_total(&s.stage1).await == 0
            && s.depth_total(&s.stage2).await == 0
            && s.depth_total(&s.stage1_dlq).await == bad.len()
        {
            break results;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    for (stage, n, child) in &workers {
        s.wait_running(stage, *n);
        sigterm(child);
    }
    for (_, _, child) in &mut workers {
        assert!(
            wait_exit(child, Duration::from_secs(30)).success(),
            "a worker exited non-zero on SIGTERM"
        );
    }

    // Exactly one stage-2 result per job, each naming its job.
    let expected: BTreeSet<String> = (0..JOBS)
        .map(|i| format!("stage2/job-{i:03}.json"))
        .collect();
    let got: BTreeSet<String> = done.into_iter().collect();
    assert_eq!(got, expected);
    for key in &expected {
        let doc: serde_json::Value =
            serde_json::from_slice(&blobs.get(&s.results, key).await.unwrap()).unwrap();
        assert_eq!(
            format!("stage2/{}.json", doc["job_id"].as_str().unwrap()),
            *key
        );
    }
    // Both work queues empty, visible and in flight; the DLQ holds exactly the bad inputs.
    assert_eq!(
        s.depth_total(&s.stage1).await + s.depth_total(&s.stage2).await,
        0
    );
    assert_eq!(s.depth_total(&s.stage2_dlq).await, 0);
    let h = AwsHarness {
        aws: s.aws.clone(),
        jobs: s.stage1.clone(),
        dlq: s.stage1_dlq.clone(),
        topic: s.aws.topic(&s.topic_arn).await.unwrap(),
        downstream: s.stage2.clone(),
        bucket: s.results.clone(),
    };
    let mut dead: Vec<(String, String)> = h
        .drain_view(&s.stage1_dlq)
        .await
        .into_iter()
        .map(|m| {
            (
                m.attributes[JOB_ID_ATTRIBUTE].clone(),
                m.attributes
                    .get(DLQ_REASON_ATTRIBUTE)
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
        ["bad-json", "bad-missing", "bad-text"]
    );
    assert!(dead[0].1.contains("malformed message"), "{dead:?}");
    assert!(dead[1].1.contains("missing object"), "{dead:?}");
    assert!(dead[2].1.contains("not an image"), "{dead:?}");
    assert!(
        kills >= 3,
        "the soak ended before it killed anything: {kills} kills"
    );

    // Effects, counted. Without exactly-once, only a SIGKILL can make a job
    // run, write its result or be announced again: a killed worker's lease
    // comes back, and the next holder redoes what the killed one had not
    // finished (the stored result is found and not redone; a notice not
    // followed by the delete is sent again). So: no process does anything
    // twice for one job, the workers never killed do each stage-1 effect at
    // most once per job, and every extra notice has a killed worker that
    // sent it.
    let survivors: BTreeSet<u32> = workers.iter().map(|(_, _, c)| c.id()).collect();
    let records = s.records();
    assert!(
        survivors.iter().all(|pid| records.contains_key(pid)),
        "a worker left no record: {:?}",
        records.keys()
    );
    let count = |pids: &dyn Fn(u32) -> bool, event: &str, stage: &str, id: &str| -> u32 {
        records
            .iter()
            .filter(|(pid, _)| pids(**pid))
            .filter_map(|(_, c)| c.get(&(event.to_owned(), stage.to_owned(), id.to_owned())))
            .sum()
    };
    let all = |_: u32| true;
    let survivor = |pid: u32| survivors.contains(&pid);
    for (pid, counts) in &records {
        for ((event, stage, id), n) in counts {
            if event != "publish" {
                assert_eq!(
                    *n,
                    1,
                    "worker {pid} ({}) did {event} {stage} {id} {n} times",
                    if killed.contains(pid) {
                        "killed"
                    } else {
                        "survivor"
                    }
                );
            }
        }
    }
    let notices = h.drain_view(&s.tap).await;
    let mut noticed: BTreeMap<String, u32> = BTreeMap::new();
    for m in notices {
        *noticed
            .entry(ferry::Job::from_message(m).id.to_string())
            .or_default() += 1;
    }
    let ids: Vec<String> = (0..JOBS).map(|i| format!("job-{i:03}")).collect();
    assert_eq!(
        noticed.keys().cloned().collect::<Vec<_>>(),
        ids,
        "a notice per job, none for a bad input"
    );
    let (mut runs1, mut runs2) = (0, 0);
    for id in &ids {
        let n = noticed[id];
        for event in ["run", "put", "published"] {
            assert!(
                count(&survivor, event, "stage1", id) <= 1,
                "{id}: stage 1 {event} more than once in workers never killed"
            );
        }
        let sent_by_killed = records
            .iter()
            .filter(|(pid, c)| {
                killed.contains(pid)
                    && c.contains_key(&("publish".to_owned(), "stage1".to_owned(), id.clone()))
            })
            .count() as u32;
        assert!(
            n <= count(&all, "publish", "stage1", id) && n <= 1 + sent_by_killed,
            "{id}: {n} notices, {sent_by_killed} of them possibly sent by killed workers"
        );
        // Stage 2 sees each notice as its own message: a worker never
        // killed runs it at most once per notice.
        let r1 = count(&all, "run", "stage1", id);
        let r2 = count(&all, "run", "stage2", id);
        assert!(r1 >= 1 && r2 >= 1, "{id}: stage 1 ran {r1}, stage 2 {r2}");
        assert!(
            count(&survivor, "run", "stage2", id) <= n
                && count(&survivor, "put", "stage2", id) <= n,
            "{id}: stage 2 ran more often than it was told to in workers never killed"
        );
        runs1 += r1;
        runs2 += r2;
    }
    let notices_total: u32 = noticed.values().sum();
    eprintln!(
        "spot-kill: {kills} kills, {spawned} workers started, {JOBS} jobs, {} stage-2 results, \
         processor runs stage 1 {runs1} stage 2 {runs2}, notices {notices_total}, \
         dead letters {}, {:.1} s",
        got.len(),
        dead.len(),
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_unstarted_jobs_within_a_second_and_exits_clean() {
    let Some(_) = endpoint() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stages::new("term").await;
    s.produce(10, &[]).await;
    let mut child = s.worker(
        "1",
        0,
        &[
            "--visibility-secs",
            "30",
            "--process-delay-ms",
            "3000",
            "--grace-secs",
            "15",
        ],
    );
    s.wait_running("1", 0);
    let limit = Instant::now() + Duration::from_secs(30);
    while s.stage1.depth().await.unwrap().in_flight < 10 {
        assert!(Instant::now() < limit, "the worker never leased the jobs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first job is now in its three seconds of work.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    sigterm(&child);
    let signalled = Instant::now();
    while s.stage1.depth().await.unwrap().visible < 9 {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "unstarted jobs were not released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let released_in = signalled.elapsed();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let depth = s.stage1.depth().await.unwrap();
    eprintln!("sigterm: 9 unstarted jobs visible again after {released_in:?}; exit {status:?}; queue {depth:?}");
    assert!(released_in < Duration::from_secs(1), "took {released_in:?}");
    assert_eq!(
        (depth.visible, depth.in_flight),
        (9, 0),
        "the worker exited holding a lease"
    );
    let done = s.aws.blobs().list(&s.results, "stage1/").await.unwrap();
    assert_eq!(
        done.len(),
        1,
        "the started job finished within the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_notice_drains_the_worker_like_sigterm() {
    let Some(_) = endpoint() else { return };
    let _serial = SERIAL.lock().await;
    let imds = common::imds::FakeImds::start();
    let s = Stages::new("spotwatch").await;
    s.produce(10, &[]).await;
    let mut child = s.worker(
        "1",
        0,
        &[
            "--visibility-secs",
            "30",
            "--process-delay-ms",
            "3000",
            "--grace-secs",
            "15",
            "--spot-watch",
            "--spot-poll-ms",
            "100",
            "--imds-endpoint",
            &imds.endpoint,
        ],
    );
    s.wait_running("1", 0);
    let limit = Instant::now() + Duration::from_secs(30);
    while s.stage1.depth().await.unwrap().in_flight < 10 {
        assert!(Instant::now() < limit, "the worker never leased the jobs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first job is now in its three seconds of work; the watcher has
    // been told "no interruption" (404) all along.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        imds.checks() >= 2,
        "the worker does not poll the metadata service"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker stopped on its own"
    );
    imds.interrupt("terminate");
    let noticed = Instant::now();
    while s.stage1.depth().await.unwrap().visible < 9 {
        assert!(
            noticed.elapsed() < Duration::from_secs(5),
            "unstarted jobs were not released after the notice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let released_in = noticed.elapsed();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let log = std::fs::read_to_string(s.logs.join("worker-1-0.log")).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        log.contains("spot interruption notice: terminate"),
        "the worker did not say why it drained:\n{log}"
    );
    let depth = s.stage1.depth().await.unwrap();
    eprintln!(
        "spot watch: 9 unstarted jobs visible again {released_in:?} after the notice; exit {status:?}; queue {depth:?}; {} metadata checks, {} token(s)",
        imds.checks(),
        imds.tokens()
    );
    assert!(released_in < Duration::from_secs(2), "took {released_in:?}");
    assert_eq!(
        (depth.visible, depth.in_flight),
        (9, 0),
        "the worker exited holding a lease"
    );
    let done = s.aws.blobs().list(&s.results, "stage1/").await.unwrap();
    assert_eq!(
        done.len(),
        1,
        "the started job finished within the grace period"
    );
    assert_eq!(done.len() + depth.visible, 10, "a job was lost");
    assert_eq!(
        imds.refused(),
        0,
        "a metadata read without the IMDSv2 token"
    );
}

/// Workers with the idempotency store on: `--exactly-once --table T`.
fn claiming<'a>(table: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--exactly-once", "--table", table, "--visibility-secs", "2"];
    args.extend_from_slice(extra);
    args
}

async fn record(
    store: &ferry::backend::aws::DynamoIdempotencyStore,
    id: &str,
) -> Option<ferry::idempotency::IdempotencyRecord> {
    use ferry::idempotency::{job_key, IdempotencyStore};
    store
        .record(&job_key("stage1", &ferry::JobId::new(id)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_run_each_job_once_though_every_job_is_sent_twice() {
    let Some(_) = endpoint() else { return };
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 30;
    let s = Stages::new("once").await;
    let table = unique("once");
    let store = s.aws.create_idempotency_table(&table).await.unwrap();
    // A producer that retried every send: each job's message twice.
    s.produce(JOBS, &[]).await;
    s.produce(JOBS, &[]).await;
    let args = claiming(&table, &["--process-delay-ms", "100"]);
    let mut workers: Vec<Child> = (0..3).map(|n| s.worker("1", n, &args)).collect();
    (0..3).for_each(|n| s.wait_running("1", n));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = s
            .aws
            .blobs()
            .list(&s.results, "stage1/")
            .await
            .unwrap()
            .len();
        if done == JOBS && s.depth_total(&s.stage1).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {done} of {JOBS} done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each worker prints its final stats line when told to stop.
    workers.iter().for_each(sigterm);
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    let total = s.worker_stats();
    let mut claims = 0;
    for i in 0..JOBS {
        let r = record(&store, &format!("job-{i:03}"))
            .await
            .expect("a record per job");
        assert_eq!(r.status, ferry::idempotency::RecordStatus::Completed);
        claims += r.claims;
    }
    eprintln!(
        "3 worker processes, {JOBS} jobs sent twice: received {}, processor runs {}, merged or \
         dropped in-process {}, given back while another held the claim {}, deleted as completed \
         by the store {}, claims in the store {claims}",
        total.received,
        total.processed,
        total.duplicates(),
        total.claims_deferred,
        total.skipped_completed
    );
    assert_eq!(
        total.processed as usize, JOBS,
        "processor runs, counted by the workers"
    );
    assert_eq!(
        claims as usize, JOBS,
        "one successful claim per job, counted by the store"
    );
    assert!(total.skipped_completed + total.claims_deferred > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holders_claim_expires_and_another_worker_runs_the_job_once() {
    let Some(_) = endpoint() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stages::new("claimkill").await;
    let table = unique("claimkill");
    let store = s.aws.create_idempotency_table(&table).await.unwrap();
    s.produce(1, &[]).await;
    // The first worker claims the job and is killed 30 s short of finishing.
    let mut first = s.worker("1", 0, &claiming(&table, &["--process-delay-ms", "30000"]));
    s.wait_running("1", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while record(&store, "job-000").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the first worker never claimed the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = Instant::now();
    let mut second = s.worker("1", 1, &claiming(&table, &[]));
    s.wait_running("1", 1);
    loop {
        let done = s
            .aws
            .blobs()
            .list(&s.results, "stage1/")
            .await
            .unwrap()
            .len();
        if done == 1 && s.depth_total(&s.stage1).await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the job was never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    sigterm(&second);
    assert!(wait_exit(&mut second, Duration::from_secs(30)).success());
    let r = record(&store, "job-000").await.unwrap();
    let total = s.worker_stats();
    eprintln!(
        "SIGKILLed holder: done by the other worker {took:?} after the kill; record {:?}, \
         claims {}, processor runs {}, given back while the dead claim lived {}",
        r.status, r.claims, total.processed, total.claims_deferred
    );
    assert_eq!(r.status, ferry::idempotency::RecordStatus::Completed);
    assert_eq!(r.claims, 2, "the killed worker's claim, then the other's");
    assert_eq!(total.processed, 1, "the job ran to completion once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_fix_and_redrive_through_the_command_runs_the_job_once() {
    let Some(_) = endpoint() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stages::new("redrive").await;
    // A job whose source object is missing: bad input.
    let body = serde_json::json!({"bucket": s.input, "key": "late/photo.png"}).to_string();
    s.stage1
        .send_batch(vec![
            OutgoingMessage::new(body).attribute(JOB_ID_ATTRIBUTE, "late-photo")
        ])
        .await
        .unwrap();
    let rt = ferry::Runtime::builder()
        .pipeline(
            ferry_actors::Stage1::pipeline(ferry::Pipeline::new("stage1"))
                .source(s.stage1.clone())
                .dead_letter(s.stage1_dlq.clone())
                .results(s.aws.blobs(), s.results.clone(), "stage1/", "png")
                .reads_from(s.input.clone())
                .processor(ferry_actors::Stage1::default)
                .configure(|c| {
                    common::fast(c);
                    c.visibility_timeout = Duration::from_secs(5);
                    c.receive_wait = Duration::from_secs(1);
                }),
        )
        .start()
        .await
        .unwrap();
    common::eventually_async("the job dead-lettered", || async {
        rt.stats_of("stage1").unwrap().dead_lettered == 1
    })
    .await;

    let listed = s.operator(&["--dlq", "list", "--stage", "1"]);
    eprintln!("{listed}");
    assert!(listed.contains("stage1: 1 in"), "{listed}");
    assert!(listed.contains("late-photo"), "{listed}");
    assert!(listed.contains("missing object"), "{listed}");
    // A wrong filter moves nothing.
    let none = s.operator(&[
        "--dlq",
        "redrive",
        "--stage",
        "1",
        "--reason-contains",
        "not an image",
    ]);
    assert!(none.contains("moved 0, skipped 1"), "{none}");

    // The fix: the object appears. Then the redrive.
    s.aws
        .blobs()
        .put(
            &s.input,
            "late/photo.png",
            ferry_actors::samples::synthetic_png(7, 32).into(),
            ObjectMeta::default(),
        )
        .await
        .unwrap();
    let redriven = s.operator(&[
        "--dlq",
        "redrive",
        "--stage",
        "1",
        "--reason-contains",
        "missing object",
    ]);
    eprintln!("{redriven}");
    assert!(redriven.contains("moved 1"), "{redriven}");

    // The same worker, well within its seen-ID cache's memory, runs it.
    let blobs = s.aws.blobs();
    common::eventually_async("the redriven job's result", || async {
        blobs.list(&s.results, "stage1/").await.unwrap()
            == vec!["stage1/late-photo.png".to_string()]
    })
    .await;
    common::eventually_async("both queues empty", || async {
        s.depth_total(&s.stage1).await == 0 && s.depth_total(&s.stage1_dlq).await == 0
    })
    .await;
    let stats = rt.stats_of("stage1").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.processed, 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(stats.duplicates_dropped, 0, "{stats:?}");
    let listed = s.operator(&["--dlq", "list", "--stage", "1"]);
    assert!(listed.contains("stage1: 0 in"), "{listed}");
}
