//! What a seed chooses: the options, the backend's and the processors'
//! faults, the kinds of processor, the hostile messages and the operator.

use std::time::Duration;

use ferry::backend::local::{Faults, InfraFaults, Op, Window};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::crash::Crash;
use crate::{Args, FaultClass};

/// The processors' own faults.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessorFaults {
    /// Share of first attempts that panic.
    pub(crate) panic_rate: f64,
    /// Chance that a run asks to be retried.
    pub(crate) retry_rate: f64,
    /// Chance that a run first sleeps 1–3 visibility timeouts.
    pub(crate) stall_rate: f64,
    /// Chance that a run hangs, ignoring its cancellation, past its lease's
    /// maximum age and the hang grace (a sync job's thread must then be
    /// replaced; an async job is dropped): a failed attempt of its own.
    pub(crate) hang_rate: f64,
    /// Chance that an async or batch run blocks its thread (a
    /// `std::thread::sleep` of half to one and a half visibility timeouts).
    pub(crate) block_rate: f64,
    /// Every sync run takes at least this long (zero but for the
    /// `ignore-halt` sabotage, which needs jobs still queued when a worker
    /// dies).
    pub(crate) pace: Duration,
}

/// Everything one seed chose.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) seed: u64,
    pub(crate) jobs: usize,
    pub(crate) fifo: bool,
    pub(crate) groups: usize,
    pub(crate) raw_subscription: bool,
    pub(crate) exactly_once: bool,
    /// Workers per stage, each a runtime of its own as a process would be:
    /// two with exactly-once on (the claims are what keeps a job from
    /// running on both), else one.
    pub(crate) workers: u8,
    /// Large payloads above this many bytes.
    pub(crate) large_payloads: Option<usize>,
    /// Bad inputs, and the stage (1 or 2) that rejects each.
    pub(crate) bad: Vec<u8>,
    pub(crate) visibility: Duration,
    /// The leases' maximum age: short (10 visibility timeouts) where jobs
    /// may hang, so that a hang ends in a "timed out" attempt within the
    /// seed; else the default.
    pub(crate) max_lease_age: Option<Duration>,
    pub(crate) flush_interval: Duration,
    pub(crate) faults: Faults,
    pub(crate) processor: ProcessorFaults,
    /// The kind of processor each stage runs.
    pub(crate) kinds: [Kind; 2],
    pub(crate) hostile: Hostile,
    /// Throttling and expired credentials, at a rate and in bursts.
    pub(crate) infra: InfraFaults,
    /// Jobs that fail every attempt at stage 1.
    pub(crate) poison: usize,
    /// The pipelines' long-poll wait: short, or longer than the visibility
    /// (ferry bounds it so a late arrival keeps its lease).
    pub(crate) receive_wait: Duration,
    /// Good jobs' ids carry non-ASCII characters (`café-007`).
    pub(crate) unicode_ids: bool,
    /// A worker killed between two steps, and a fresh one started.
    pub(crate) crash: Option<Crash>,
}

/// Messages an attacker adds, and what an operator does mid-run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hostile {
    /// Copies of good jobs' large-payload pointers under ids of their own.
    pub(crate) thieves: usize,
    /// Pointers into a bucket the pipeline does not trust.
    pub(crate) foreign: usize,
    /// Jobs whose id is over the limit.
    pub(crate) long_ids: usize,
    /// Broken jobs followed by a fixed re-send under the same id.
    pub(crate) resends: usize,
    /// Whether a re-send is sent right after its broken version (else at
    /// the end of the batch).
    pub(crate) resend_adjacent: bool,
    /// When stage 1's dead-letter queue is redriven, if it is.
    pub(crate) redrive_at: Option<Duration>,
}

impl Hostile {
    pub(crate) fn new(seed: u64, large_payloads: bool) -> Self {
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
pub(crate) enum Kind {
    Sync,
    Async,
    Batch,
}

/// A rate drawn from `[0, max)`, or 0 half of the time, so that seeds see
/// fault classes alone as well as together.
pub(crate) fn some_rate(rng: &mut StdRng, max: f64) -> f64 {
    if rng.gen_bool(0.5) {
        rng.gen_range(0.0..max)
    } else {
        0.0
    }
}

impl Plan {
    pub(crate) fn new(seed: u64, args: &Args) -> Self {
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
            hang_rate: 0.0,
            block_rate: 0.0,
            pace: Duration::ZERO,
        };
        let mut hrng = StdRng::seed_from_u64(seed ^ 0x6861_6e67);
        let processor = if hrng.gen_bool(0.3) {
            ProcessorFaults {
                hang_rate: some_rate(&mut hrng, 0.08),
                block_rate: some_rate(&mut hrng, 0.05),
                ..processor
            }
        } else {
            processor
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
        let infra = infra_faults(seed, visibility);
        let poison = StdRng::seed_from_u64(seed ^ 0x706f_6973).gen_range(0..=2) / 2;
        let mut wrng = StdRng::seed_from_u64(seed ^ 0x7761_6974);
        let receive_wait = if wrng.gen_bool(0.5) {
            Duration::from_millis(50)
        } else {
            visibility.mul_f64(wrng.gen_range(0.5..3.0))
        };
        let unicode_ids = wrng.gen_bool(0.3);
        let mut plan = Self {
            seed,
            kinds,
            hostile,
            infra,
            poison,
            receive_wait,
            unicode_ids,
            jobs: args.jobs.unwrap_or(jobs),
            fifo,
            groups,
            raw_subscription,
            exactly_once,
            workers: if exactly_once { 2 } else { 1 },
            large_payloads,
            bad,
            visibility,
            max_lease_age: None,
            crash: None,
            flush_interval,
            faults,
            processor,
        };
        if args.no_faults {
            plan.faults = Faults::none();
            plan.processor = ProcessorFaults::default();
            plan.infra = InfraFaults::default();
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
                FaultClass::Infra => plan.infra = InfraFaults::default(),
                FaultClass::Poison => plan.poison = 0,
                FaultClass::Hang => (p.hang_rate, p.block_rate) = (0.0, 0.0),
                FaultClass::Crash => {}
            }
        }
        if !args.no_faults && !args.disable.contains(&FaultClass::Crash) {
            plan.crash = Crash::draw(seed, plan.workers, plan.jobs);
        }
        if args.sabotage == Some(crate::Sabotage::IgnoreHalt) {
            // What it breaks shows only where a worker dies with jobs
            // queued for its threads: sync processors, killed early.
            plan.kinds = [Kind::Sync, Kind::Sync];
            plan.crash = Some(Crash::early(seed, plan.workers));
            plan.processor.pace = Duration::from_millis(50);
        }
        let p = &plan.processor;
        if p.hang_rate > 0.0 || p.block_rate > 0.0 {
            plan.max_lease_age = Some(plan.visibility * 10);
        }
        plan
    }

    pub(crate) fn describe(&self) -> String {
        let f = &self.faults;
        let p = &self.processor;
        let bad: Vec<String> = self.bad.iter().map(|s| format!("stage {s}")).collect();
        format!(
            "  options: {} jobs, {}, {} subscription, exactly-once {} ({} worker(s) a stage), large payloads {}, bad inputs [{}], processors {:?}\n  \
             timings: visibility {} ms, flush {} ms\n  \
             backend faults: fail {:.3}, duplicate {:.3}, redeliver-after-delete {:.3}, panic {:.3}, \
             slow {:.3} (max {} ms), refuse {:.3}\n  \
             processor faults: panic {:.3} of first attempts, retry {:.3}, stall {:.3}, \
             hang {:.3}, block its thread {:.3}\n  \
             hostile: {:?}\n  \
             infra: {:?}, poison jobs {}, receive wait {} ms, unicode ids {}, crash {:?}",
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
            self.workers,
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
            p.hang_rate,
            p.block_rate,
            self.hostile,
            self.infra,
            self.poison,
            self.receive_wait.as_millis(),
            self.unicode_ids,
            self.crash,
        )
    }
}

/// The services' own faults, drawn apart so a seed's other choices stay:
/// none in 60 % of seeds, else throttling at a rate, and a burst of
/// throttling or of expired credentials lasting up to three visibility
/// timeouts, aimed at a few operations.
fn infra_faults(seed: u64, visibility: Duration) -> InfraFaults {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x696e_6672);
    if rng.gen_bool(0.6) {
        return InfraFaults::default();
    }
    let window = |rng: &mut StdRng| {
        rng.gen_bool(0.6).then(|| {
            Window::new(
                Duration::from_millis(rng.gen_range(0..=1000)),
                visibility.mul_f64(rng.gen_range(0.2..3.0)),
            )
        })
    };
    let throttle_window = window(&mut rng);
    let expired_credentials_window = window(&mut rng);
    let all = [
        Op::Receive,
        Op::Delete,
        Op::ChangeVisibility,
        Op::Send,
        Op::Publish,
        Op::Put,
        Op::Get,
        Op::Head,
        Op::Claim,
        Op::Complete,
    ];
    let ops = all.iter().copied().filter(|_| rng.gen_bool(0.4)).collect();
    InfraFaults {
        throttle_rate: some_rate(&mut rng, 0.05),
        throttle_window,
        expired_credentials_rate: 0.0,
        expired_credentials_window,
        ops,
    }
}
