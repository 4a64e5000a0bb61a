//! A seeded fault sweep over a whole two-stage pipeline on the embedded
//! backend.
//!
//! ```text
//! cargo run --release --example fault_sweep -- --seeds 200
//! cargo run --release --example fault_sweep -- --seeds 1 --from 17 --verbose
//! cargo run --release --example fault_sweep -- --seeds 50 --no-faults
//! ```
//!
//! Each seed S derives everything from `StdRng::seed_from_u64(S)`: the
//! options (FIFO or standard, exactly-once, large payloads, SNS envelope or
//! raw delivery, 0–3 bad inputs), the backend's faults (failing, slow and
//! panicking calls, duplicates, redelivery after delete, receipt handles
//! refused for good) and the processors' own faults (panics, retries,
//! stalls past the visibility timeout). The jobs are sent with faults off,
//! the faults are set, both stages run until everything settled (or a
//! deadline passed), the runtime shuts down, the faults are turned off and
//! every invariant is checked by reading the stores and queues. A failing
//! seed prints each violation and the command that repeats it; the exit
//! status is non-zero when any seed failed. The seed fixes every choice and
//! the backend's fault draws, not the interleaving of threads, so a
//! failure may need a few repeats; `--disable panic,refuse` (say) turns
//! fault classes off, the seed's other choices unchanged.
//!
//! The workload: `stage1` queue → processor (upper-cases the text) →
//! `stage1/<job-id>.txt` → topic → `stage2` queue → processor (reads the
//! stage-1 result, writes its length and its reverse) → `stage2/<job-id>.txt`.
//! A bad input is rejected as bad input by stage 1 or by stage 2 and must
//! end in that stage's dead-letter queue.
//!
//! Hostile messages and an operator, drawn apart from the rest (`--disable
//! hostile` turns them off): copies of good jobs' large-payload pointers
//! under ids of their own (each ends with a result or, once the payload's
//! own job deleted it, dead-lettered as a missing object — never the
//! victim), pointers into a bucket the pipeline does not trust and job ids
//! over the limit (dead-lettered by stage 1, the foreign object intact), a
//! broken job followed by its fixed re-send under the same id (a result
//! always; the broken one dead-lettered at most once), and a redrive of
//! stage 1's dead-letter queue mid-run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use ferry::backend::local::{Faults, LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::payload::LargePayloads;
use ferry::prelude::*;
use ferry::{PipelineStats, ShutdownReport, StatsSnapshot, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};

/// The bucket results go to.
const BUCKET: &str = "results";
/// The bucket large payloads go to.
const PAYLOAD_BUCKET: &str = "payloads";
/// A body starting with this is rejected by stage 1.
const BAD_AT_1: &str = "reject-at-stage-1";
/// A body containing this (upper-cased by stage 1) is rejected by stage 2.
const BAD_AT_2: &str = "reject-at-stage-2";
/// Receives before ferry dead-letters a failing job: high, so a good job
/// never gets there through the injected faults alone.
const MAX_RECEIVES: u32 = 50;
/// The queue's own redrive, the backstop past ferry's limit (an entry it
/// moves carries no `ferry-dlq-reason`, which the checks would report).
const REDRIVE_AFTER: u32 = 60;
/// How long a shutdown may take before it counts as hung.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);
/// Graceful shutdown's grace period.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug, Clone)]
#[command(about = "A seeded fault sweep over a two-stage ferry pipeline on the embedded backend")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Jobs per seed (default: 10–30, chosen by the seed).
    #[arg(long)]
    jobs: Option<usize>,
    /// Seeds run at once, each on its own backend, runtime and threads.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Print each seed's options, faults and final counters.
    #[arg(long)]
    verbose: bool,
    /// Inject no fault (options and bad inputs still vary): every seed must pass.
    #[arg(long)]
    no_faults: bool,
    /// Turn these fault classes off (the seed's other choices stay the
    /// same), to find which one a failure needs.
    #[arg(long, value_enum, value_delimiter = ',')]
    disable: Vec<FaultClass>,
    /// Seconds a seed may take to settle before it counts as stalled.
    #[arg(long, default_value_t = 30)]
    deadline_secs: u64,
    /// Break one invariant on purpose, to see the checks catch it.
    #[arg(long, value_enum, hide = true)]
    sabotage: Option<Sabotage>,
}

/// One kind of injected fault.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum FaultClass {
    /// Backend calls failing transiently.
    Fail,
    /// Duplicate (concurrent) deliveries.
    Duplicate,
    /// Messages coming back after their delete.
    Redeliver,
    /// Backend calls panicking.
    Panic,
    /// Slow backend calls.
    Slow,
    /// Receipt handles refused for good.
    Refuse,
    /// Processor panics.
    ProcessorPanic,
    /// Processor retry requests.
    Retry,
    /// Processor runs stalling past the visibility timeout.
    Stall,
    /// Hostile messages and the operator's redrive.
    Hostile,
}

/// A deliberately broken invariant.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Sabotage {
    /// Deletes one stage-2 result before the checks.
    LoseResult,
    /// Counts one successful stage-1 run more than happened.
    ExtraRun,
    /// Leaves a message in the stage-1 queue.
    LeftoverMessage,
    /// Adds a dead-letter entry without a reason, for a good job.
    BareDeadLetter,
}

/// The processors' own faults.
#[derive(Debug, Clone, Copy, Default)]
struct ProcessorFaults {
    /// Share of first attempts that panic.
    panic_rate: f64,
    /// Chance that a run asks to be retried.
    retry_rate: f64,
    /// Chance that a run first sleeps 1–3 visibility timeouts.
    stall_rate: f64,
}

/// Everything one seed chose.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    jobs: usize,
    fifo: bool,
    groups: usize,
    raw_subscription: bool,
    exactly_once: bool,
    /// Large payloads above this many bytes.
    large_payloads: Option<usize>,
    /// Bad inputs, and the stage (1 or 2) that rejects each.
    bad: Vec<u8>,
    visibility: Duration,
    flush_interval: Duration,
    faults: Faults,
    processor: ProcessorFaults,
    /// The kind of processor each stage runs.
    kinds: [Kind; 2],
    hostile: Hostile,
}

/// Messages an attacker adds, and what an operator does mid-run.
#[derive(Debug, Clone, Copy, Default)]
struct Hostile {
    /// Copies of good jobs' large-payload pointers under ids of their own.
    thieves: usize,
    /// Pointers into a bucket the pipeline does not trust.
    foreign: usize,
    /// Jobs whose id is over the limit.
    long_ids: usize,
    /// Broken jobs followed by a fixed re-send under the same id.
    resends: usize,
    /// Whether a re-send is sent right after its broken version (else at
    /// the end of the batch).
    resend_adjacent: bool,
    /// When stage 1's dead-letter queue is redriven, if it is.
    redrive_at: Option<Duration>,
}

impl Hostile {
    fn new(seed: u64, large_payloads: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x686f_7374);
        if rng.gen_bool(0.4) {
            return Self::default();
        }
        Self {
            thieves: if large_payloads {
                rng.gen_range(0..=3)
            } else {
                0
            },
            foreign: if large_payloads {
                rng.gen_range(0..=1)
            } else {
                0
            },
            long_ids: rng.gen_range(0..=1),
            resends: rng.gen_range(0..=2),
            resend_adjacent: rng.gen_bool(0.5),
            redrive_at: rng
                .gen_bool(0.5)
                .then(|| Duration::from_millis(rng.gen_range(50..=1500))),
        }
    }
}

/// A kind of processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sync,
    Async,
    Batch,
}

/// A rate drawn from `[0, max)`, or 0 half of the time, so that seeds see
/// fault classes alone as well as together.
fn some_rate(rng: &mut StdRng, max: f64) -> f64 {
    if rng.gen_bool(0.5) {
        rng.gen_range(0.0..max)
    } else {
        0.0
    }
}

impl Plan {
    fn new(seed: u64, args: &Args) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let jobs = rng.gen_range(10..=30);
        let fifo = rng.gen_bool(0.35);
        let groups = rng.gen_range(2..=4);
        let raw_subscription = rng.gen_bool(0.5);
        let exactly_once = rng.gen_bool(0.5);
        let large_payloads = rng.gen_bool(0.35).then(|| rng.gen_range(100..=300));
        let bad = (0..rng.gen_range(0..=3))
            .map(|_| if rng.gen_bool(0.5) { 1 } else { 2 })
            .collect();
        let visibility = Duration::from_millis(rng.gen_range(300..=600));
        let flush_interval = Duration::from_millis(rng.gen_range(10..=20));
        let vis_ms = visibility.as_millis() as u64;
        let faults = Faults {
            seed,
            fail_rate: some_rate(&mut rng, 0.1),
            duplicate_rate: some_rate(&mut rng, 0.1),
            redeliver_after_delete_rate: some_rate(&mut rng, 0.1),
            panic_rate: some_rate(&mut rng, 0.03),
            slow_rate: some_rate(&mut rng, 0.05),
            slow_max: Duration::from_millis(rng.gen_range(1..=2 * vis_ms)),
            refuse_rate: some_rate(&mut rng, 0.05),
            latency: Duration::ZERO,
        };
        let processor = ProcessorFaults {
            panic_rate: some_rate(&mut rng, 0.1),
            retry_rate: some_rate(&mut rng, 0.1),
            stall_rate: some_rate(&mut rng, 0.05),
        };
        // Drawn apart, so that a seed's other choices stay as they were.
        let mut kinds_rng = StdRng::seed_from_u64(seed ^ 0x6b69_6e64);
        let mut kind = || match kinds_rng.gen_range(0..3) {
            0 => Kind::Sync,
            1 => Kind::Async,
            _ => Kind::Batch,
        };
        let kinds = [kind(), kind()];
        let hostile = Hostile::new(seed, large_payloads.is_some());
        let mut plan = Self {
            seed,
            kinds,
            hostile,
            jobs: args.jobs.unwrap_or(jobs),
            fifo,
            groups,
            raw_subscription,
            exactly_once,
            large_payloads,
            bad,
            visibility,
            flush_interval,
            faults,
            processor,
        };
        if args.no_faults {
            plan.faults = Faults::none();
            plan.processor = ProcessorFaults::default();
        }
        for class in &args.disable {
            let (f, p) = (&mut plan.faults, &mut plan.processor);
            match class {
                FaultClass::Fail => f.fail_rate = 0.0,
                FaultClass::Duplicate => f.duplicate_rate = 0.0,
                FaultClass::Redeliver => f.redeliver_after_delete_rate = 0.0,
                FaultClass::Panic => f.panic_rate = 0.0,
                FaultClass::Slow => f.slow_rate = 0.0,
                FaultClass::Refuse => f.refuse_rate = 0.0,
                FaultClass::ProcessorPanic => p.panic_rate = 0.0,
                FaultClass::Retry => p.retry_rate = 0.0,
                FaultClass::Stall => p.stall_rate = 0.0,
                FaultClass::Hostile => plan.hostile = Hostile::default(),
            }
        }
        plan
    }

    fn describe(&self) -> String {
        let f = &self.faults;
        let p = &self.processor;
        let bad: Vec<String> = self.bad.iter().map(|s| format!("stage {s}")).collect();
        format!(
            "  options: {} jobs, {}, {} subscription, exactly-once {}, large payloads {}, bad inputs [{}], processors {:?}\n  \
             timings: visibility {} ms, flush {} ms\n  \
             backend faults: fail {:.3}, duplicate {:.3}, redeliver-after-delete {:.3}, panic {:.3}, \
             slow {:.3} (max {} ms), refuse {:.3}\n  \
             processor faults: panic {:.3} of first attempts, retry {:.3}, stall {:.3}\n  \
             hostile: {:?}",
            self.jobs,
            if self.fifo {
                format!("FIFO in {} groups", self.groups)
            } else {
                "standard".into()
            },
            if self.raw_subscription {
                "raw"
            } else {
                "enveloped"
            },
            if self.exactly_once { "on" } else { "off" },
            self.large_payloads
                .map_or("off".into(), |t| format!("over {t} bytes")),
            bad.join(", "),
            self.kinds,
            self.visibility.as_millis(),
            self.flush_interval.as_millis(),
            f.fail_rate,
            f.duplicate_rate,
            f.redeliver_after_delete_rate,
            f.panic_rate,
            f.slow_rate,
            f.slow_max.as_millis(),
            f.refuse_rate,
            p.panic_rate,
            p.retry_rate,
            p.stall_rate,
            self.hostile,
        )
    }
}

/// A stable draw from `[0, 1)` for a job, a stage, an attempt and a purpose
/// (FNV-1a, the same on every machine).
fn draw(seed: u64, purpose: u64, stage: u8, attempt: u32, id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let salt = [seed, purpose, u64::from(stage), u64::from(attempt)];
    for b in salt.iter().flat_map(|w| w.to_le_bytes()).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Successful processor runs per stage and job id.
type Runs = Arc<Mutex<HashMap<(u8, String), u32>>>;

/// The processor of both stages, with the seed's processor faults.
#[derive(Clone)]
struct SweepProcessor {
    stage: u8,
    seed: u64,
    faults: ProcessorFaults,
    visibility: Duration,
    runs: Runs,
}

/// What stage 2 stores for a stage-1 result.
fn stage2_of(stage1: &str) -> String {
    format!(
        "{}:{}",
        stage1.len(),
        stage1.chars().rev().collect::<String>()
    )
}

impl SweepProcessor {
    /// The seed's faults for one run: a panic on a first attempt, or how
    /// long to stall and whether to ask for a retry.
    fn faults_of(&self, job: &Job) -> (Duration, bool) {
        let (id, n, f) = (job.id.as_str(), job.receive_count, self.faults);
        let d = |purpose| draw(self.seed, purpose, self.stage, n, id);
        if n == 1 && d(1) < f.panic_rate {
            panic!("injected processor panic: stage {} job {id}", self.stage);
        }
        let stall = if d(2) < f.stall_rate {
            self.visibility.mul_f64(1.0 + 2.0 * d(3))
        } else {
            Duration::ZERO
        };
        (stall, d(4) < f.retry_rate)
    }

    /// Where stage 2 reads its input: the stage-1 result its notice names.
    fn input_of(&self, job: &Job) -> Result<Option<ResultNotice>, ProcessError> {
        if self.stage == 1 {
            return Ok(None);
        }
        job.notice().map(Some)
    }

    /// The work itself, given the stage-1 result stage 2 read; counts the
    /// successful run.
    fn work(&self, job: &Job, input: Option<bytes::Bytes>) -> Result<Output, ProcessError> {
        let out = self.output(job, input)?;
        *self
            .runs
            .lock()
            .expect("runs lock")
            .entry((self.stage, job.id.to_string()))
            .or_default() += 1;
        Ok(out)
    }

    fn output(&self, job: &Job, input: Option<bytes::Bytes>) -> Result<Output, ProcessError> {
        if self.stage == 1 {
            if job.body.starts_with(BAD_AT_1) {
                return Err(ProcessError::bad_input(format!(
                    "stage 1 cannot use {}: marked bad",
                    job.id
                )));
            }
            return Ok(Output::text(job.body.to_uppercase()));
        }
        let bytes = input.expect("stage 2 reads its input");
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ProcessError::bad_input("stage-1 result is not UTF-8"))?;
        if text.contains(&BAD_AT_2.to_uppercase()) {
            return Err(ProcessError::bad_input(format!(
                "stage 2 cannot use {}: marked bad",
                job.id
            )));
        }
        Ok(Output::text(stage2_of(&text)))
    }
}

impl Processor for SweepProcessor {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        let (stall, retry) = self.faults_of(job);
        std::thread::sleep(stall);
        if retry {
            return Err(ProcessError::retry("injected retry"));
        }
        let input = match self.input_of(job)? {
            Some(n) => Some(ctx.fetch(&n.bucket, &n.key)?),
            None => None,
        };
        self.work(job, input)
    }
}

#[ferry::async_trait]
impl AsyncProcessor for SweepProcessor {
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Result<Output, ProcessError> {
        let (stall, retry) = self.faults_of(job);
        tokio::time::sleep(stall).await;
        if retry {
            return Err(ProcessError::retry("injected retry"));
        }
        let input = match self.input_of(job)? {
            Some(n) => Some(ctx.fetch(&n.bucket, &n.key).await?),
            None => None,
        };
        self.work(job, input)
    }
}

#[ferry::async_trait]
impl BatchProcessor for SweepProcessor {
    async fn process_batch(
        &self,
        jobs: &[Job],
        ctx: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        // A panic in any job's faults fails the whole batch; the longest
        // stall holds the whole batch.
        let faults: Vec<(Duration, bool)> = jobs.iter().map(|j| self.faults_of(j)).collect();
        let stall = faults.iter().map(|f| f.0).max().unwrap_or_default();
        tokio::time::sleep(stall).await;
        let mut out = Vec::with_capacity(jobs.len());
        for (job, (_, retry)) in jobs.iter().zip(faults) {
            if retry {
                out.push(Err(ProcessError::retry("injected retry")));
                continue;
            }
            let input = match self.input_of(job) {
                Ok(Some(n)) => match ctx.fetch(&n.bucket, &n.key).await {
                    Ok(b) => Some(b),
                    Err(e) => {
                        out.push(Err(e));
                        continue;
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            out.push(self.work(job, input));
        }
        out
    }
}

/// One job as sent.
#[derive(Debug, Clone)]
struct SentJob {
    id: String,
    /// The body whose results are expected (a good job's).
    body: String,
    /// 0 for a good job, else the stage that rejects it.
    bad_at: u8,
    /// How else it may end.
    flex: Flex,
    /// What is sent for it, in order.
    sends: Vec<Sending>,
}

/// How a job may end besides what `bad_at` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flex {
    /// Only as `bad_at` says.
    Strict,
    /// A stage-2 result, or an entry in stage 1's dead-letter queue whose
    /// reason names a missing object (a copied pointer whose object its own
    /// job deleted first).
    ResultOrMissing,
    /// A stage-2 result, and at most one entry in stage 1's dead-letter
    /// queue (its broken first version).
    ResultMaybeDead1,
}

/// One message sent for a job.
#[derive(Debug, Clone)]
enum Sending {
    /// This body (offloaded when large payloads are on).
    Body(String),
    /// The message sent for another job (a copied pointer), under this
    /// job's id.
    CopyOf(String),
    /// A large-payload pointer into the untrusted bucket.
    Foreign,
}

impl SentJob {
    fn new(id: String, body: String, bad_at: u8) -> Self {
        Self {
            sends: vec![Sending::Body(body.clone())],
            id,
            body,
            bad_at,
            flex: Flex::Strict,
        }
    }
}

/// The text of a job: lowercase words.
fn text(rng: &mut StdRng) -> String {
    let words = rng.gen_range(2..=60);
    (0..words)
        .map(|_| {
            let len = rng.gen_range(1..=8);
            (0..len)
                .map(|_| rng.gen_range(b'a'..=b'z') as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn jobs_of(plan: &Plan) -> Vec<SentJob> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x6a6f_6273);
    let mut jobs: Vec<SentJob> = (0..plan.jobs)
        .map(|i| SentJob::new(format!("job-{i:03}"), text(&mut rng), 0))
        .collect();
    for (i, stage) in plan.bad.iter().enumerate() {
        let marker = if *stage == 1 { BAD_AT_1 } else { BAD_AT_2 };
        let body = format!("{marker} {}", text(&mut rng));
        jobs.push(SentJob::new(format!("bad-{i}"), body, *stage));
    }
    // Hostile messages, drawn apart so the rest stays as it was.
    let h = plan.hostile;
    let mut hrng = StdRng::seed_from_u64(plan.seed ^ 0x6576_696c);
    for i in 0..h.thieves {
        let victim = jobs[hrng.gen_range(0..plan.jobs)].clone();
        jobs.push(SentJob {
            id: format!("thief-{i}"),
            body: victim.body.clone(),
            bad_at: 0,
            flex: Flex::ResultOrMissing,
            sends: vec![Sending::CopyOf(victim.id)],
        });
    }
    for i in 0..h.foreign {
        jobs.push(SentJob {
            sends: vec![Sending::Foreign],
            ..SentJob::new(format!("foreign-{i}"), String::new(), 1)
        });
    }
    for i in 0..h.long_ids {
        let id = format!("long-{i}-{}", "l".repeat(300));
        jobs.push(SentJob::new(id, text(&mut hrng), 1));
    }
    let mut late = Vec::new();
    for i in 0..h.resends {
        let fixed = text(&mut hrng);
        let broken = Sending::Body(format!("{BAD_AT_1} {}", text(&mut hrng)));
        let mut job = SentJob {
            flex: Flex::ResultMaybeDead1,
            ..SentJob::new(format!("resend-{i}"), fixed.clone(), 0)
        };
        if h.resend_adjacent {
            job.sends = vec![broken, Sending::Body(fixed)];
        } else {
            job.sends = vec![broken];
            late.push((job.id.clone(), Sending::Body(fixed)));
        }
        jobs.push(job);
    }
    jobs.shuffle(&mut rng);
    // A re-send sent late goes at the end, after everything else.
    for (id, sending) in late {
        let at = jobs.iter().position(|j| j.id == id).expect("the job");
        let mut job = jobs.remove(at);
        job.sends.push(sending);
        jobs.push(job);
    }
    jobs
}

/// The queues and topic of one seed.
struct World {
    local: LocalBackend,
    stage1: Arc<LocalQueue>,
    dlq1: Arc<LocalQueue>,
    stage2: Arc<LocalQueue>,
    dlq2: Arc<LocalQueue>,
    payloads: Option<LargePayloads>,
}

/// The bucket the pipeline does not trust, and the object in it that
/// hostile pointers aim at.
const SECRETS: (&str, &str) = ("secrets", "db-password");

impl World {
    fn new(plan: &Plan) -> (Self, Arc<ferry::backend::local::LocalTopic>) {
        let local = LocalBackend::new();
        let named = |base: &str| {
            if plan.fifo {
                format!("{base}.fifo")
            } else {
                base.to_owned()
            }
        };
        let options = QueueOptions {
            fifo: plan.fifo,
            visibility_timeout: plan.visibility,
            ..QueueOptions::default()
        };
        let redrive = |dlq: &Arc<LocalQueue>| QueueOptions {
            redrive: Some((dlq.clone(), REDRIVE_AFTER)),
            ..options.clone()
        };
        let dlq1 = local.create_queue(&named("stage1-dlq"), options.clone());
        let dlq2 = local.create_queue(&named("stage2-dlq"), options.clone());
        let stage1 = local.create_queue(&named("stage1"), redrive(&dlq1));
        let stage2 = local.create_queue(&named("stage2"), redrive(&dlq2));
        let topic = local.create_topic(&named("stage1-done"), plan.fifo);
        local.subscribe(&topic, &stage2, plan.raw_subscription);
        let payloads = plan
            .large_payloads
            .map(|t| LargePayloads::new(local.blobs(), PAYLOAD_BUCKET).threshold(t));
        (
            Self {
                local,
                stage1,
                dlq1,
                stage2,
                dlq2,
                payloads,
            },
            topic,
        )
    }

    /// Sends every job to stage 1 (faults are off).
    async fn send(&self, plan: &Plan, jobs: &[SentJob]) -> Result<(), String> {
        let blobs = self.local.blobs();
        blobs
            .put(SECRETS.0, SECRETS.1, "hunter2".into(), Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = Vec::new();
        let mut sent_for: HashMap<String, OutgoingMessage> = HashMap::new();
        let mut copies = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            for (n, sending) in j.sends.iter().enumerate() {
                let mut m = match sending {
                    Sending::Body(body) => OutgoingMessage::new(body.clone()),
                    Sending::Foreign => OutgoingMessage::new(
                        serde_json::json!([
                            ferry::payload::POINTER_CLASS,
                            {"s3BucketName": SECRETS.0, "s3Key": SECRETS.1}
                        ])
                        .to_string(),
                    )
                    .attribute(ferry::payload::PAYLOAD_SIZE_ATTRIBUTE, "7"),
                    Sending::CopyOf(victim) => {
                        // Filled in once the victim's message exists.
                        copies.push((messages.len(), victim.clone()));
                        OutgoingMessage::new("")
                    }
                };
                m = m.attribute(JOB_ID_ATTRIBUTE, &j.id);
                if plan.fifo {
                    let dedup = JobId::new(format!("{}#{n}", j.id)).dedup_id("send");
                    m = m.group(format!("group-{}", i % plan.groups)).dedup(dedup);
                }
                if let (Some(p), Sending::Body(_)) = (&self.payloads, sending) {
                    m = p.offload(m).await.map_err(|e| e.to_string())?;
                }
                if matches!(sending, Sending::Body(_)) {
                    sent_for.entry(j.id.clone()).or_insert_with(|| m.clone());
                }
                messages.push(m);
            }
        }
        for (at, victim) in copies {
            let theirs = sent_for.get(&victim).ok_or("no message for a victim")?;
            let m = &mut messages[at];
            m.body = theirs.body.clone();
            for (k, v) in &theirs.attributes {
                if k != JOB_ID_ATTRIBUTE {
                    m.attributes.insert(k.clone(), v.clone());
                }
            }
        }
        for range in ferry::backend::batches(&messages) {
            let sent = self
                .stage1
                .send_batch(messages[range].to_vec())
                .await
                .map_err(|e| format!("sending the jobs failed: {e}"))?;
            for r in sent {
                r.map_err(|e| format!("sending a job failed: {e}"))?;
            }
        }
        Ok(())
    }

    fn pipelines(
        &self,
        plan: &Plan,
        topic: Arc<ferry::backend::local::LocalTopic>,
        runs: &Runs,
    ) -> [Pipeline; 2] {
        let (visibility, flush) = (plan.visibility, plan.flush_interval);
        let tune = move |c: &mut PipelineConfig| {
            c.workers = 2;
            c.visibility_timeout = visibility;
            c.receive_wait = Duration::from_millis(50);
            c.retry_backoff_base = Duration::from_millis(20);
            c.retry_backoff_max = Duration::from_millis(200);
            c.flush_interval = flush;
            c.max_receives = MAX_RECEIVES;
            c.restart.backoff_base = Duration::from_millis(1);
            c.restart.backoff_max = Duration::from_millis(20);
        };
        let processor = |stage| SweepProcessor {
            stage,
            seed: plan.seed,
            faults: plan.processor,
            visibility,
            runs: runs.clone(),
        };
        let (p1, p2) = (processor(1), processor(2));
        let store = plan
            .exactly_once
            .then(|| Arc::new(self.local.idempotency_store()));
        let extras = |p: Pipeline, kind: Kind, processor: SweepProcessor| {
            let mut p = match kind {
                Kind::Sync => p.processor(move || processor.clone()),
                Kind::Async => p.async_processor(processor),
                Kind::Batch => p.batch_processor(
                    processor,
                    BatchOptions {
                        max_jobs: 4,
                        max_wait: Duration::from_millis(5),
                    },
                ),
            };
            if let Some(s) = &store {
                p = p.idempotency(s.clone());
            }
            if let Some(l) = &self.payloads {
                p = p.large_payloads(l.clone());
            }
            p.configure(tune)
        };
        [
            extras(
                Pipeline::new("stage1")
                    .source(self.stage1.clone())
                    .dead_letter(self.dlq1.clone())
                    .results(self.local.blobs(), BUCKET, "stage1/", "txt")
                    .topic(topic),
                plan.kinds[0],
                p1,
            ),
            extras(
                Pipeline::new("stage2")
                    .source(self.stage2.clone())
                    .dead_letter(self.dlq2.clone())
                    .results(self.local.blobs(), BUCKET, "stage2/", "txt"),
                plan.kinds[1],
                p2,
            ),
        ]
    }

    /// Whether every job has reached its end: good jobs' stage-2 results
    /// stored, bad inputs in their dead-letter queues, both queues empty.
    /// Reads without backend calls, so it draws nothing from the faults.
    async fn settled(&self, jobs: &[SentJob]) -> bool {
        if self.stage1.depth_now().total() > 0 || self.stage2.depth_now().total() > 0 {
            return false;
        }
        let Ok(done) = self.local.blobs().list(BUCKET, "stage2/").await else {
            return false;
        };
        let done: BTreeSet<String> = done.into_iter().collect();
        let dead = |q: &LocalQueue| -> BTreeSet<String> {
            q.snapshot().iter().map(job_of_entry).collect()
        };
        let (dead1, dead2) = (dead(&self.dlq1), dead(&self.dlq2));
        jobs.iter().all(|j| match (j.bad_at, j.flex) {
            (0, Flex::ResultOrMissing) => {
                done.contains(&result_key(2, &j.id)) || dead1.contains(&j.id)
            }
            (0, _) => done.contains(&result_key(2, &j.id)),
            (1, _) => dead1.contains(listed(&j.id)),
            _ => dead2.contains(&j.id),
        })
    }
}

/// A job's id as its dead-letter entry names it (cut to the limit).
fn listed(id: &str) -> &str {
    &id[..id.len().min(ferry::MAX_JOB_ID_BYTES)]
}

fn result_key(stage: u8, id: &str) -> String {
    format!("stage{stage}/{}.txt", JobId::new(id).key_safe())
}

/// The job a stored message stands for, as ferry reads it: its
/// `ferry-job-id` (inside an SNS envelope too), else its message id.
fn job_of_entry(m: &ferry::backend::local::StoredMessage) -> String {
    Job::from_message(ferry::backend::ReceivedMessage {
        message_id: m.message_id.clone(),
        receipt_handle: String::new(),
        body: m.body.clone(),
        attributes: m.attributes.clone(),
        receive_count: m.receive_count,
        group_id: None,
        dedup_id: None,
    })
    .id
    .to_string()
}

/// A list for a message, shortened.
fn some<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    let mut out = all.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > 6 {
        let _ = write!(out, ", … ({} in all)", all.len());
    }
    out
}

/// What one seed found.
struct Outcome {
    violations: Vec<String>,
    /// Printed with --verbose.
    details: String,
    elapsed: Duration,
}

async fn run_seed(plan: Plan, args: &Args) -> Outcome {
    let started = Instant::now();
    let mut v = Vec::new();
    let mut details = String::new();
    let jobs = jobs_of(&plan);
    let (world, topic) = World::new(&plan);
    if let Err(e) = world.send(&plan, &jobs).await {
        v.push(e);
        return Outcome {
            violations: v,
            details,
            elapsed: started.elapsed(),
        };
    }
    let runs: Runs = Arc::default();
    let mut builder = Runtime::builder().shutdown_grace(GRACE);
    for p in world.pipelines(&plan, topic, &runs) {
        builder = builder.pipeline(p);
    }
    world.local.set_faults(plan.faults.clone());
    let runtime = match builder.start().await {
        Ok(r) => r,
        Err(e) => {
            world.local.set_faults(Faults::none());
            v.push(format!("the runtime did not start: {e}"));
            return Outcome {
                violations: v,
                details,
                elapsed: started.elapsed(),
            };
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.deadline_secs);
    let mut redrive_at = plan.hostile.redrive_at.map(|d| Instant::now() + d);
    let settled = loop {
        if redrive_at.is_some_and(|at| Instant::now() >= at) {
            // The operator moves stage 1's dead letters back, as after a
            // fix that fixed nothing: each is dead-lettered again, once.
            // Faults pause meanwhile (a redrive half done under faults can
            // leave an entry both moved and kept: the operator's to sort).
            redrive_at = None;
            world.local.set_faults(Faults::none());
            let moved = ferry::dlq::redrive(
                world.dlq1.as_ref(),
                world.stage1.as_ref(),
                &ferry::dlq::RedriveOptions::default(),
            )
            .await;
            world.local.set_faults(plan.faults.clone());
            match moved {
                Ok(r) => {
                    let _ = writeln!(details, "  redrive: {r:?}");
                }
                Err(e) => v.push(format!("the redrive failed: {e}")),
            }
            continue;
        }
        if world.settled(&jobs).await {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let run_time = started.elapsed();
    let reader = runtime.stats_reader();
    // Shut down on a task of its own: if it hangs, the checks still run and
    // say so (the seed's thread is then left behind).
    let mut shutdown = tokio::spawn(runtime.shutdown());
    let report: Option<ShutdownReport> =
        match tokio::time::timeout(SHUTDOWN_LIMIT, &mut shutdown).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                v.push(format!("the shutdown panicked: {e}"));
                None
            }
            Err(_) => {
                v.push(format!(
                    "the shutdown did not finish within {} s",
                    SHUTDOWN_LIMIT.as_secs()
                ));
                None
            }
        };
    world.local.set_faults(Faults::none());
    let stats = reader.stats();
    sabotage(args.sabotage, &world, &jobs, &runs).await;

    if !settled {
        v.push(format!(
            "did not settle within {} s (stalled): {}",
            args.deadline_secs,
            progress(&world, &jobs, &stats).await
        ));
    }
    if let Some(r) = &report {
        if r.held_at_exit != 0 {
            v.push(format!("the shutdown left {} leases held", r.held_at_exit));
        }
    }
    check(&world, &jobs, &runs, &stats, &mut v).await;

    if args.verbose {
        let _ = writeln!(details, "{}", plan.describe());
        let _ = writeln!(
            details,
            "  settled {} after {:.2} s; shutdown {}",
            settled,
            run_time.as_secs_f64(),
            report.as_ref().map_or("hung".into(), |r| format!(
                "{} ms, {} held",
                r.elapsed_ms, r.held_at_exit
            ))
        );
        for s in &stats {
            let _ = writeln!(
                details,
                "  {}{}: {}",
                s.name,
                if s.escalated { " (escalated)" } else { "" },
                serde_json::to_string(&s.stats).unwrap_or_default()
            );
        }
        let calls = world.local.calls();
        let _ = writeln!(
            details,
            "  backend calls: {}",
            ferry::backend::local::Op::ALL
                .iter()
                .map(|op| format!("{op:?} {}", calls.get(*op)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Outcome {
        violations: v,
        details,
        elapsed: started.elapsed(),
    }
}

/// Where a seed that did not settle got to.
async fn progress(world: &World, jobs: &[SentJob], stats: &[PipelineStats]) -> String {
    let done = world
        .local
        .blobs()
        .list(BUCKET, "stage2/")
        .await
        .unwrap_or_default();
    let good = jobs.iter().filter(|j| j.bad_at == 0).count();
    let held: Vec<String> = stats
        .iter()
        .map(|s| format!("{} holds {}", s.name, s.in_flight))
        .collect();
    format!(
        "{}/{} stage-2 results, dead-letter entries {} + {}, queues hold {} + {}, {}",
        done.len(),
        good,
        world.dlq1.depth_now().total(),
        world.dlq2.depth_now().total(),
        world.stage1.depth_now().total(),
        world.stage2.depth_now().total(),
        held.join(", ")
    )
}

async fn sabotage(what: Option<Sabotage>, world: &World, jobs: &[SentJob], runs: &Runs) {
    let Some(what) = what else { return };
    let good = jobs.iter().find(|j| j.bad_at == 0).expect("a good job");
    match what {
        Sabotage::LoseResult => {
            let _ = world
                .local
                .blobs()
                .delete(BUCKET, &result_key(2, &good.id))
                .await;
        }
        Sabotage::ExtraRun => {
            *runs
                .lock()
                .expect("runs lock")
                .entry((1, good.id.clone()))
                .or_default() += 1;
        }
        Sabotage::LeftoverMessage => {
            let _ = world
                .stage1
                .send_batch(vec![OutgoingMessage::new("left over")
                    .group("g")
                    .dedup("left-over")])
                .await;
        }
        Sabotage::BareDeadLetter => {
            let _ = world
                .dlq1
                .send_batch(vec![OutgoingMessage::new("no reason")
                    .attribute(JOB_ID_ATTRIBUTE, &good.id)
                    .group("g")
                    .dedup("bare")])
                .await;
        }
    }
}

/// Every invariant, checked after the run with faults off.
async fn check(
    world: &World,
    jobs: &[SentJob],
    runs: &Runs,
    stats: &[PipelineStats],
    v: &mut Vec<String>,
) {
    let blobs = world.local.blobs();
    // Stage 1's dead letters: job id → reasons.
    let mut dead1: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in world.dlq1.snapshot() {
        let reason = m.attributes.get(DLQ_REASON_ATTRIBUTE).cloned();
        dead1
            .entry(job_of_entry(&m))
            .or_default()
            .push(reason.unwrap_or_default());
    }
    // A copied pointer ends with a result or, its object deleted by its own
    // job first, as a missing object; never for another reason.
    for j in jobs.iter().filter(|j| j.flex == Flex::ResultOrMissing) {
        for reason in dead1.get(&j.id).into_iter().flatten() {
            if !reason.contains("missing object") {
                v.push(format!(
                    "{} (a copied pointer) dead-lettered: {reason}",
                    j.id
                ));
            }
        }
    }
    match blobs.get(SECRETS.0, SECRETS.1).await {
        Ok(b) if b.as_ref() == b"hunter2" => {}
        other => v.push(format!("the untrusted bucket's object changed: {other:?}")),
    }

    // Results: exactly the expected keys, with the expected contents. Keys
    // are functions of the job id, so "exactly one result per job" is: the
    // key is there and no other key is.
    for stage in [1u8, 2] {
        // Key → (job id, content).
        let expected: BTreeMap<String, (&str, String)> = jobs
            .iter()
            .filter(|j| j.flex != Flex::ResultOrMissing || !dead1.contains_key(&j.id))
            .filter(|j| j.bad_at == 0 || (stage == 1 && j.bad_at == 2))
            .map(|j| {
                let s1 = j.body.to_uppercase();
                let content = if stage == 1 { s1 } else { stage2_of(&s1) };
                (result_key(stage, &j.id), (j.id.as_str(), content))
            })
            .collect();
        let stored: BTreeSet<String> = match blobs.list(BUCKET, &format!("stage{stage}/")).await {
            Ok(keys) => keys.into_iter().collect(),
            Err(e) => {
                v.push(format!("listing stage-{stage} results failed: {e}"));
                continue;
            }
        };
        let missing: Vec<&str> = expected
            .iter()
            .filter(|(k, _)| !stored.contains(*k))
            .map(|(_, (id, _))| *id)
            .collect();
        if !missing.is_empty() {
            let what = if stage == 1 {
                "no stage-1 result"
            } else {
                "lost (no stage-2 result)"
            };
            v.push(format!(
                "{} job(s) {what}: {}",
                missing.len(),
                some(&missing)
            ));
        }
        let extra: Vec<&String> = stored
            .iter()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        if !extra.is_empty() {
            v.push(format!(
                "unexpected stage-{stage} result(s): {}",
                some(&extra)
            ));
        }
        let mut wrong = Vec::new();
        for (key, (_, content)) in &expected {
            if !stored.contains(key) {
                continue;
            }
            match blobs.get(BUCKET, key).await {
                Ok(b) if b.as_ref() == content.as_bytes() => {}
                Ok(_) => wrong.push(key.clone()),
                Err(e) => wrong.push(format!("{key} ({e})")),
            }
        }
        if !wrong.is_empty() {
            v.push(format!("wrong stage-{stage} result(s): {}", some(&wrong)));
        }
    }

    // Dead-letter queues: exactly the bad inputs of their stage, once each,
    // each with a reason.
    for (stage, dlq) in [(1u8, &world.dlq1), (2, &world.dlq2)] {
        let expected: BTreeSet<&str> = jobs
            .iter()
            .filter(|j| j.bad_at == stage)
            .map(|j| listed(&j.id))
            .collect();
        // Hostile jobs that may be there too (at most once).
        let allowed: BTreeSet<&str> = jobs
            .iter()
            .filter(|j| stage == 1 && j.flex != Flex::Strict)
            .map(|j| j.id.as_str())
            .collect();
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        let mut bare = Vec::new();
        for m in dlq.snapshot() {
            let id = job_of_entry(&m);
            if m.attributes
                .get(DLQ_REASON_ATTRIBUTE)
                .is_none_or(|r| r.trim().is_empty())
            {
                bare.push(id.clone());
            }
            *held.entry(id).or_default() += 1;
        }
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|id| !held.contains_key(**id))
            .collect();
        if !missing.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter queue lacks bad input(s) {}",
                some(&missing)
            ));
        }
        let intruders: Vec<&String> = held
            .keys()
            .filter(|id| !expected.contains(id.as_str()) && !allowed.contains(id.as_str()))
            .collect();
        if !intruders.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter queue holds job(s) that are not bad inputs: {}",
                some(&intruders)
            ));
        }
        let doubled: Vec<String> = held
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("{id} ×{n}"))
            .collect();
        if !doubled.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter queue holds copies: {}",
                some(&doubled)
            ));
        }
        if !bare.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter entries without a {DLQ_REASON_ATTRIBUTE}: {}",
                some(&bare)
            ));
        }
    }

    // Source queues empty.
    for (stage, q) in [(1u8, &world.stage1), (2, &world.stage2)] {
        let left = q.snapshot();
        if !left.is_empty() {
            let in_flight = left.iter().filter(|m| m.in_flight).count();
            v.push(format!(
                "stage-{stage} queue still holds {} message(s) ({in_flight} in flight): {}",
                left.len(),
                some(left.iter().map(|m| format!(
                    "{} (received {}×)",
                    job_of_entry(m),
                    m.receive_count
                )))
            ));
        }
    }

    // Processor runs. A job's first successful run is the one its result
    // comes from; another successful run of the same job in the same stage
    // can only start after an earlier delivery of it ended without its
    // effects done, and every such ending is counted by the stage: the job
    // was put back to be tried again (`retried`: its upload or notice
    // failed), given back unfinished (`released`), cancelled with its lease
    // (`leases_lost`) or with its idempotency claim (`claims_lost`), or let
    // go after its delete was refused for good (`settle_gave_up`). So
    //     Σ_jobs (successful runs − 1)  ≤  retried + released + leases_lost
    //                                      + claims_lost + settle_gave_up.
    // The bound is loose (`retried` also counts the processor's own retry
    // requests, which are not successful runs), never too tight.
    let runs = runs.lock().expect("runs lock").clone();
    for stage in [1u8, 2] {
        let Some(s) = stats
            .iter()
            .find(|s| s.name == format!("stage{stage}"))
            .map(|s| s.stats)
        else {
            v.push(format!("no counters for stage{stage}"));
            continue;
        };
        let allowance = allowance(&s);
        let repeated: Vec<(String, u32)> = runs
            .iter()
            .filter(|((st, _), n)| *st == stage && **n > 1)
            .map(|((_, id), n)| (id.clone(), *n))
            .collect();
        let extra: u64 = repeated.iter().map(|(_, n)| u64::from(n - 1)).sum();
        if extra > allowance {
            let mut repeated = repeated;
            repeated.sort();
            v.push(format!(
                "stage {stage} ran {extra} time(s) more than once per job ({}) but counted only \
                 {allowance} retried/released/lost (retried {}, released {}, leases_lost {}, claims_lost {})",
                some(repeated.iter().map(|(id, n)| format!("{id} ×{n}"))),
                s.retried,
                s.released,
                s.leases_lost,
                s.claims_lost
            ));
        }
    }
    for s in stats {
        if s.escalated {
            v.push(format!(
                "{} escalated: it passed its restart limit and stopped polling",
                s.name
            ));
        }
    }
}

/// The events that allow a job's processor to succeed more than once.
fn allowance(s: &StatsSnapshot) -> u64 {
    s.retried + s.released + s.leases_lost + s.claims_lost + s.settle_gave_up
}

/// Runs one seed on a thread and a tokio runtime of its own; an error when
/// the harness panicked or gave no outcome within `limit` (the thread is then
/// left behind).
fn run_isolated(seed: u64, args: &Args, limit: Duration) -> Result<Outcome, String> {
    let (tx, rx) = mpsc::channel();
    let args = args.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                let plan = Plan::new(seed, &args);
                rt.block_on(run_seed(plan, &args))
            }));
            let _ = tx.send(result.map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            }));
        });
    if let Err(e) = spawned {
        return Err(format!("could not start the seed's thread: {e}"));
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(panic)) => Err(format!("the harness panicked: {panic}")),
        Err(_) => Err(format!(
            "hung: no outcome within {} s (the run, its shutdown or the checks never finished)",
            limit.as_secs()
        )),
    }
}

fn reproduce(seed: u64, args: &Args) -> String {
    let mut cmd =
        format!("cargo run --release --example fault_sweep -- --seeds 1 --from {seed} --verbose");
    if let Some(j) = args.jobs {
        let _ = write!(cmd, " --jobs {j}");
    }
    if args.no_faults {
        cmd.push_str(" --no-faults");
    }
    if !args.disable.is_empty() {
        let names: Vec<String> = args
            .disable
            .iter()
            .map(|c| {
                c.to_possible_value()
                    .expect("a named value")
                    .get_name()
                    .to_owned()
            })
            .collect();
        let _ = write!(cmd, " --disable {}", names.join(","));
    }
    if args.deadline_secs != 30 {
        let _ = write!(cmd, " --deadline-secs {}", args.deadline_secs);
    }
    if let Some(s) = args.sabotage {
        let _ = write!(
            cmd,
            " --sabotage {}",
            s.to_possible_value().expect("a named value").get_name()
        );
    }
    cmd
}

fn main() {
    let args = Args::parse();
    // RUST_LOG=ferry=debug (say) traces a seed's run.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    // Injected panics are expected: keep their messages off the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !msg.starts_with("injected") {
            default_hook(info);
        }
    }));

    let started = Instant::now();
    let end = args.from.saturating_add(args.seeds);
    let next = Arc::new(AtomicU64::new(args.from));
    let limit = Duration::from_secs(args.deadline_secs) + SHUTDOWN_LIMIT + Duration::from_secs(30);
    let (tx, rx) = mpsc::channel();
    for _ in 0..args.parallel.max(1) {
        let (next, tx, args) = (next.clone(), tx.clone(), args.clone());
        std::thread::spawn(move || loop {
            let seed = next.fetch_add(1, Ordering::Relaxed);
            if seed >= end {
                break;
            }
            let outcome = run_isolated(seed, &args, limit);
            if tx.send((seed, outcome)).is_err() {
                break;
            }
        });
    }
    drop(tx);

    let mut failed = Vec::new();
    for (seed, outcome) in rx {
        let (violations, details, elapsed) = match outcome {
            Ok(o) => (o.violations, o.details, Some(o.elapsed)),
            Err(e) => (vec![e], String::new(), None),
        };
        let took = elapsed.map_or("-".into(), |e| format!("{:.2} s", e.as_secs_f64()));
        let mut out = String::new();
        if violations.is_empty() {
            if args.verbose {
                let _ = writeln!(out, "seed {seed} ok ({took})");
            }
        } else {
            failed.push(seed);
            let _ = writeln!(
                out,
                "seed {seed} FAILED ({took}): {}",
                violations.join("; ")
            );
            let _ = writeln!(out, "  reproduce: {}", reproduce(seed, &args));
        }
        if args.verbose {
            out.push_str(&details);
        }
        print!("{out}");
    }
    failed.sort_unstable();
    if !failed.is_empty() {
        println!("failed seeds: {}", some(&failed));
    }
    println!(
        "fault_sweep: {} seeds, {} failed, {:.1} s",
        args.seeds,
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    // Exit at once: a hung seed's threads are not waited for.
    std::process::exit(i32::from(!failed.is_empty()));
}
