//! One seed from start to verdict: send the jobs, start each worker's
//! runtime with the faults on, redrive mid-run when the plan says so, wait
//! until everything settled, shut down, and check.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ferry::backend::local::{Faults, InfraFaults};
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::{PipelineStats, ShutdownReport, JOB_ID_ATTRIBUTE};

use crate::audit::audit;
use crate::check::check;
use crate::crash::{lost_at_crash, CrashPoint};
use crate::jobs::{jobs_of, SentJob};
use crate::plan::Plan;
use crate::record::unregister;
use crate::world::{job_of_entry, result_key, World};
use crate::{Args, Sabotage, BUCKET, GRACE, SHUTDOWN_LIMIT};

/// What one seed found.
pub(crate) struct Outcome {
    pub(crate) violations: Vec<String>,
    /// Printed with --verbose.
    pub(crate) details: String,
    pub(crate) elapsed: Duration,
}

/// How long the operator waits for a dead-letter entry to redrive before
/// redriving an empty queue.
const REDRIVE_PATIENCE: Duration = Duration::from_secs(5);

pub(crate) async fn run_seed(plan: Plan, args: &Args) -> Outcome {
    let started = Instant::now();
    let mut v = Vec::new();
    let mut details = String::new();
    let jobs = jobs_of(&plan);
    let world = World::new(&plan);
    let done = |v, details| Outcome {
        violations: v,
        details,
        elapsed: started.elapsed(),
    };
    if let Err(e) = world.send(&plan, &jobs).await {
        v.push(e);
        return done(v, details);
    }
    world.local.set_faults(plan.faults.clone());
    world.local.set_infra_faults(plan.infra.clone());
    let crash = plan.crash.map(|c| CrashPoint::new(c, world.log.clone()));
    let mut runtimes = Vec::new();
    for worker in 0..plan.workers {
        let point = crash
            .clone()
            .filter(|_| plan.crash.is_some_and(|c| c.worker == worker));
        match start_worker(&world, &plan, worker, point).await {
            Ok(r) => runtimes.push(r),
            Err(e) => v.push(e),
        }
    }
    if runtimes.len() < usize::from(plan.workers) {
        world.local.set_faults(Faults::none());
        world.local.set_infra_faults(InfraFaults::default());
        for r in runtimes {
            let _ = tokio::time::timeout(SHUTDOWN_LIMIT, r.shutdown()).await;
        }
        unregister(plan.seed);
        return done(v, details);
    }
    let deadline = Instant::now() + Duration::from_secs(args.deadline_secs);
    let mut redrive_at = plan.hostile.redrive_at.map(|d| Instant::now() + d);
    let mut crashed = false;
    let mut dead_readers = Vec::new();
    let settled = loop {
        if let (Some(point), Some(c), false) = (&crash, plan.crash, crashed) {
            if point.fired() {
                // SIGKILL: the worker's runtime goes at once, and a fresh
                // worker (named anew in the records) takes its place.
                crashed = true;
                let w = usize::from(c.worker);
                let fresh = c.worker + plan.workers;
                let dead = runtimes.remove(w);
                // Its counters stay in the checks (an escalation before it
                // died is still one).
                dead_readers.push(dead.stats_reader());
                let _ = tokio::task::spawn_blocking(move || drop(dead)).await;
                point.set_dropped();
                lost_at_crash(&world.log, c.worker, point.fired_at());
                let _ = writeln!(
                    details,
                    "  worker {} killed; worker {fresh} started",
                    c.worker
                );
                match start_worker(&world, &plan, fresh, None).await {
                    Ok(r) => runtimes.insert(w, r),
                    Err(e) => {
                        v.push(e);
                        break false;
                    }
                }
            }
        }
        if let Some(at) = redrive_at.filter(|at| Instant::now() >= *at) {
            // The operator moves stage 1's dead letters back, as after a
            // fix that fixed nothing: each is dead-lettered again, once.
            // They wait for an entry to move (for a while); faults pause
            // meanwhile (a redrive half done under faults can leave an
            // entry both moved and kept: the operator's to sort).
            let waiting = !world
                .dlq1
                .snapshot()
                .iter()
                .any(|m| job_of_entry(m).len() < ferry::MAX_JOB_ID_BYTES);
            if waiting && Instant::now() < at + REDRIVE_PATIENCE {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            redrive_at = None;
            redrive(&world, &plan, &mut v, &mut details).await;
            continue;
        }
        // The run may not settle while the operator is yet to act.
        if redrive_at.is_none() && world.settled(&jobs).await {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if redrive_at.is_some() {
        v.push("the operator's redrive never happened".into());
    }
    let run_time = started.elapsed();
    let health: Vec<String> = if settled {
        Vec::new()
    } else {
        runtimes
            .iter()
            .flat_map(|r| r.health())
            .map(|h| format!("{h:?}"))
            .collect()
    };
    let mut readers: Vec<_> = runtimes.iter().map(|r| r.stats_reader()).collect();
    readers.extend(dead_readers);
    // Shut down on tasks of their own: if one hangs, the checks still run
    // and say so (the seed's thread is then left behind).
    let mut reports: Vec<Option<ShutdownReport>> = Vec::new();
    let shutdowns: Vec<_> = runtimes
        .into_iter()
        .map(|r| tokio::spawn(r.shutdown()))
        .collect();
    for (worker, mut shutdown) in shutdowns.into_iter().enumerate() {
        reports.push(
            match tokio::time::timeout(SHUTDOWN_LIMIT, &mut shutdown).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    v.push(format!("worker {worker}'s shutdown panicked: {e}"));
                    None
                }
                Err(_) => {
                    v.push(format!(
                        "worker {worker}'s shutdown did not finish within {} s",
                        SHUTDOWN_LIMIT.as_secs()
                    ));
                    None
                }
            },
        );
    }
    world.local.set_faults(Faults::none());
    world.local.set_infra_faults(InfraFaults::default());
    unregister(plan.seed);
    let stats: Vec<PipelineStats> = readers.iter().flat_map(|r| r.stats()).collect();
    sabotage(args.sabotage, &world, &jobs).await;

    if !settled {
        v.push(format!(
            "did not settle within {} s (stalled): {}",
            args.deadline_secs,
            progress(&world, &jobs, &stats).await
        ));
        v.push(format!("health at the deadline: {}", health.join("; ")));
    }
    for r in reports.iter().flatten() {
        if r.held_at_exit != 0 {
            v.push(format!("the shutdown left {} leases held", r.held_at_exit));
        }
    }
    check(&world, &jobs, &stats, plan.exactly_once, &mut v).await;
    audit(&jobs, plan.fifo, plan.exactly_once, &world.log, &mut v);
    if let Some(job) = &args.history {
        for stage in [1, 2] {
            let h = world.log.with(|r| crate::audit::history(r, stage, job));
            let _ = writeln!(details, "  {h}");
        }
    }

    if args.verbose {
        let _ = writeln!(details, "{}", plan.describe());
        let _ = writeln!(
            details,
            "  settled {} after {:.2} s; shutdown {}",
            settled,
            run_time.as_secs_f64(),
            reports
                .iter()
                .map(|r| r.as_ref().map_or("hung".into(), |r| format!(
                    "{} ms, {} held",
                    r.elapsed_ms, r.held_at_exit
                )))
                .collect::<Vec<_>>()
                .join(" / ")
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
        let tally = world.log.with(|r| {
            let mut t = std::collections::BTreeMap::<String, usize>::new();
            for run in &r.runs {
                *t.entry(format!("{:?}", run.how)).or_default() += 1;
            }
            t
        });
        let _ = writeln!(details, "  processor runs: {tally:?}");
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
    done(v, details)
}

/// Starts one worker: a runtime with both stages, as one process.
async fn start_worker(
    world: &World,
    plan: &Plan,
    worker: u8,
    crash: Option<std::sync::Arc<CrashPoint>>,
) -> Result<RuntimeHandle, String> {
    let mut builder = Runtime::builder().shutdown_grace(GRACE);
    for p in world.pipelines(plan, worker, crash) {
        builder = builder.pipeline(p);
    }
    builder
        .start()
        .await
        .map_err(|e| format!("worker {worker}'s runtime did not start: {e}"))
}

/// The operator's redrive of stage 1's dead-letter queue, with faults off:
/// every entry that was there and may be redriven (not one whose job id
/// was cut) must move.
async fn redrive(world: &World, plan: &Plan, v: &mut Vec<String>, details: &mut String) {
    world.local.set_faults(Faults::none());
    let infra = world.local.infra_faults();
    world.local.set_infra_faults(InfraFaults::default());
    // A redrive moves a job once (a second entry of it, from a killed
    // worker's successor, stays): what it should move is every job.
    let before: Vec<String> = world
        .dlq1
        .snapshot()
        .iter()
        .map(job_of_entry)
        .filter(|id| id.len() < ferry::MAX_JOB_ID_BYTES)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let moved = ferry::dlq::redrive(
        world.dlq1.as_ref(),
        world.stage1.as_ref(),
        &ferry::dlq::RedriveOptions::default(),
    )
    .await;
    world.local.set_faults(plan.faults.clone());
    world.local.set_infra_faults(infra);
    match moved {
        Ok(r) => {
            let _ = writeln!(details, "  redrive of {} entries: {r:?}", before.len());
            // Entries dead-lettered during the redrive may move too.
            if r.moved < before.len() || r.failed > 0 {
                v.push(format!(
                    "the redrive moved {} of the {} jobs it should have ({r:?}): {}",
                    r.moved,
                    before.len(),
                    crate::world::some(&before)
                ));
            }
        }
        Err(e) => v.push(format!("the redrive failed: {e}")),
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

/// Breaks the end state on purpose, after the run (the runtime's own
/// sabotage is switched on before it).
async fn sabotage(what: Option<Sabotage>, world: &World, jobs: &[SentJob]) {
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
        _ => {}
    }
}
