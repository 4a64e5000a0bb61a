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
//! refused for good, throttling and expired credentials in bursts), the
//! processors' own faults (panics, retries, stalls past the visibility
//! timeout, hangs that ignore their cancellation, async runs that block
//! their thread) and a worker killed between two steps (`crash.rs`). The
//! jobs are sent with faults off,
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
//! stage 1's dead-letter queue mid-run (which must happen, and move every
//! entry it finds, before the seed may settle).
//!
//! `--sabotage MODE` breaks one promise on purpose and inverts the verdict:
//! the sweep exits 0 only if a seed fails with the violation that promise's
//! check reports. The modes that break the runtime itself (`double-run`,
//! `delete-before-upload`, `skip-publish`, `lose-fifo-order`,
//! `dead-letter-retries`) need `--features sabotage`; `scripts/sabotage`
//! runs every mode.

mod audit;
mod check;
mod crash;
mod jobs;
mod plan;
mod processor;
mod record;
mod run;
mod store;
mod world;

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::plan::Plan;
use crate::run::{run_seed, Outcome};
use crate::world::some;

/// The bucket results go to.
const BUCKET: &str = "results";
/// The bucket large payloads go to.
const PAYLOAD_BUCKET: &str = "payloads";
/// A body starting with this is rejected by stage 1.
const BAD_AT_1: &str = "reject-at-stage-1";
/// A body containing this (upper-cased by stage 1) is rejected by stage 2.
const BAD_AT_2: &str = "reject-at-stage-2";
/// Failed attempts of its own before ferry dead-letters a job. The
/// processor's injected failures stop before a good job gets there, so
/// nothing else may dead-letter one: not the backend's faults, throttling,
/// expired credentials, deferrals, waits behind a FIFO group's poison head.
const MAX_RECEIVES: u32 = 5;
/// A body starting with this fails every attempt at stage 1.
const POISON: &str = "poison-every-attempt";
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
    /// Print this job's history (runs, lease ends, effects) with each seed.
    #[arg(long)]
    history: Option<String>,
    /// Seconds a seed may take to settle before it counts as stalled.
    #[arg(long, default_value_t = 30)]
    deadline_secs: u64,
    /// Break one promise on purpose: the sweep then exits 0 only if a seed
    /// fails with the violation that promise's check reports, and stops at
    /// the first such seed.
    #[arg(long, value_enum)]
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
    /// The services throttling and credentials expiring, in bursts.
    Infra,
    /// Jobs that fail every attempt (dead-lettered once they used all).
    Poison,
    /// Processor runs that hang ignoring their cancellation, and async runs
    /// that block their thread.
    Hang,
    /// A worker killed between two steps and started afresh.
    Crash,
}

/// A deliberately broken promise.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Sabotage {
    /// Deletes one stage-2 result before the checks.
    LoseResult,
    /// Leaves a message in the stage-1 queue.
    LeftoverMessage,
    /// Adds a dead-letter entry without a reason, for a good job.
    BareDeadLetter,
    /// The runtime runs each job twice per delivery.
    DoubleRun,
    /// The runtime deletes a message before storing its result.
    DeleteBeforeUpload,
    /// The runtime skips its notices and says they were published.
    SkipPublish,
    /// The runtime runs a FIFO group's messages without waiting.
    LoseFifoOrder,
    /// The runtime dead-letters jobs that asked for a retry or whose effect
    /// failed.
    DeadLetterRetries,
    /// The runtime charges the infrastructure's failures to the jobs.
    ChargeInfrastructure,
    /// The runtime runs again a job the idempotency store marked completed.
    RunCompleted,
    /// A runtime dropped as a crash goes on starting queued jobs.
    IgnoreHalt,
}

impl Sabotage {
    /// What the checks say when they catch it.
    fn caught_by(self) -> &'static str {
        match self {
            Self::LoseResult => "lost (no stage-2 result)",
            Self::LeftoverMessage => "(received 0×)",
            Self::BareDeadLetter => "dead-letter entries without a",
            Self::DoubleRun => "more than its history allows",
            Self::DeleteBeforeUpload => "deleted before its result was stored",
            Self::SkipPublish => "never announced",
            Self::LoseFifoOrder => "broke FIFO order",
            Self::DeadLetterRetries => "holds job(s) that are not bad inputs",
            Self::ChargeInfrastructure => "charged an attempt for the infrastructure",
            Self::RunCompleted => "ran after the store marked them completed",
            Self::IgnoreHalt => "after it was killed",
        }
    }

    /// The runtime's own switch for it, if it breaks the runtime.
    fn in_runtime(self) -> Option<ferry::sabotage::Sabotage> {
        use ferry::sabotage::Sabotage as S;
        match self {
            Self::LoseResult | Self::LeftoverMessage | Self::BareDeadLetter => None,
            Self::DoubleRun => Some(S::DoubleRun),
            Self::DeleteBeforeUpload => Some(S::DeleteBeforeUpload),
            Self::SkipPublish => Some(S::SkipPublish),
            Self::LoseFifoOrder => Some(S::LoseFifoOrder),
            Self::DeadLetterRetries => Some(S::DeadLetterRetries),
            Self::ChargeInfrastructure => Some(S::ChargeInfrastructure),
            Self::RunCompleted => Some(S::RunCompleted),
            Self::IgnoreHalt => Some(S::IgnoreHalt),
        }
    }
}

/// How often a long sweep says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

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
    if let Some(s) = args.sabotage.and_then(Sabotage::in_runtime) {
        #[cfg(feature = "sabotage")]
        ferry::sabotage::set(s);
        #[cfg(not(feature = "sabotage"))]
        {
            eprintln!("fault_sweep: --sabotage {s:?} breaks the runtime itself: run with --features sabotage");
            std::process::exit(2);
        }
    }
    // Each lease's end goes to its seed's log; RUST_LOG=ferry=debug (say)
    // also traces the run.
    let fmt = std::env::var_os("RUST_LOG").is_some().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    let ends = record::LeaseEnds.with_filter(tracing_subscriber::filter::filter_fn(|m| {
        m.target() == "ferry::lease"
    }));
    tracing_subscriber::registry().with(ends).with(fmt).init();
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
    let mut caught = None;
    let mut finished = 0u64;
    let mut last_progress = Instant::now();
    for (seed, outcome) in rx {
        finished += 1;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "fault_sweep: {finished}/{} seeds, {} failed, {:.0} s",
                args.seeds,
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
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
        if args.verbose || args.history.is_some() {
            out.push_str(&details);
        }
        print!("{out}");
        if let Some(s) = args.sabotage {
            if let Some(v) = violations.iter().find(|v| v.contains(s.caught_by())) {
                caught = Some((seed, v.clone()));
                break;
            }
        }
    }
    if let Some(s) = args.sabotage {
        let name = s.to_possible_value().expect("a named value");
        match caught {
            Some((seed, v)) => {
                println!("sabotage {}: caught on seed {seed}: {v}", name.get_name());
                std::process::exit(0);
            }
            None => {
                println!(
                    "sabotage {}: NOT caught in {finished} seeds (no violation saying `{}`)",
                    name.get_name(),
                    s.caught_by()
                );
                std::process::exit(1);
            }
        }
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
