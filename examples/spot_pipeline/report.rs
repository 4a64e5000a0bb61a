//! The final report, computed by reading the stores and queues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ferry::backend::Queue;
use ferry::prelude::*;
use ferry::{PipelineHealth, PipelineStats, StatsSnapshot, DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};
use ferry_actors::ImageStats;
use serde::Serialize;

use crate::produce::Produced;
use crate::resources::Resources;
use crate::Result;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    jobs: usize,
    bad_inputs: usize,
    stage1_results: usize,
    stage2_results: usize,
    /// Jobs with neither a stage-2 result nor a dead-letter entry.
    lost: usize,
    dead_lettered: usize,
    /// With --input: the user's files that turned out to be bad input (their
    /// jobs dead-lettered, with the reason). Not lost: reported.
    rejected_inputs: Vec<Rejected>,
    /// Generated images (valid by construction) that were dead-lettered: a
    /// failure of the run, like a lost job.
    generated_dead_lettered: usize,
    duplicates_dropped: u64,
    restarts: u64,
    /// Actors restarted (after a panic or a stall), backend calls that
    /// panicked or timed out (retried as transient failures), lease endings
    /// given up after permanent refusals, and escalations.
    actor_restarts: u64,
    backend_panics: u64,
    backend_timeouts: u64,
    settle_gave_up: u64,
    escalations: u64,
    leases_lost: u64,
    leases_extended: u64,
    retried: u64,
    resumed: u64,
    /// Leases given back because a dependency failed (throttling, expired
    /// credentials, outages): no attempt charged.
    waited: u64,
    /// Worker threads replaced because their job hung past its
    /// cancellation.
    workers_replaced: u64,
    /// Successful processor runs, per stage: equal to `jobs` when every job
    /// ran exactly once.
    processor_completions: BTreeMap<String, u64>,
    /// Processor runs that panicked or returned an error (bad inputs
    /// included), per stage.
    processor_panics: BTreeMap<String, u64>,
    processor_failures: BTreeMap<String, u64>,
    /// Idempotency store: jobs found completed and deleted unprocessed,
    /// jobs given back because another worker held them, claims lost.
    skipped_completed: u64,
    claims_deferred: u64,
    claims_lost: u64,
    payloads_offloaded: usize,
    payload_objects_left: usize,
    elapsed_s: f64,
    jobs_per_s: f64,
    dead_letters: Vec<DeadLetter>,
    stages: BTreeMap<String, StatsSnapshot>,
    /// Per FIFO group, its good jobs' ids in send order (empty without
    /// --fifo).
    sent_order: BTreeMap<String, Vec<String>>,
    /// Per stage, the job ids of successful processor runs in the order
    /// they returned.
    run_order: BTreeMap<String, Vec<String>>,
}

/// One of the user's files whose job was dead-lettered.
#[derive(Debug, Serialize)]
struct Rejected {
    file: String,
    job_id: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct DeadLetter {
    queue: String,
    job_id: String,
    reason: String,
}

/// How many jobs have a stage-1 and a stage-2 result.
pub(crate) async fn count_results(r: &Resources, jobs: &[JobId]) -> Result<(usize, usize)> {
    let s1: HashSet<String> = r
        .blobs
        .list(&r.result_bucket, "stage1/")
        .await?
        .into_iter()
        .collect();
    let s2: HashSet<String> = r
        .blobs
        .list(&r.result_bucket, "stage2/")
        .await?
        .into_iter()
        .collect();
    let has = |set: &HashSet<String>, prefix: &str, ext: &str, j: &JobId| {
        set.contains(&format!("{prefix}{}.{ext}", j.key_safe()))
    };
    Ok((
        jobs.iter()
            .filter(|j| has(&s1, "stage1/", "png", j))
            .count(),
        jobs.iter()
            .filter(|j| has(&s2, "stage2/", "json", j))
            .count(),
    ))
}

/// Reads (without deleting) every entry of the dead-letter queues.
async fn dead_letters(queues: &[&dyn Queue]) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for q in queues {
        loop {
            let got = q
                .receive(10, Duration::ZERO, Duration::from_secs(60))
                .await?;
            if got.is_empty() {
                break;
            }
            for m in got {
                out.push(DeadLetter {
                    queue: q.name().to_owned(),
                    job_id: m
                        .attributes
                        .get(JOB_ID_ATTRIBUTE)
                        .cloned()
                        .unwrap_or(m.message_id),
                    reason: m
                        .attributes
                        .get(DLQ_REASON_ATTRIBUTE)
                        .cloned()
                        .unwrap_or_else(|| {
                            "(no reason: moved by the queue's redrive policy)".into()
                        }),
                });
            }
        }
    }
    Ok(out)
}

fn per_stage(stats: &[PipelineStats], f: impl Fn(&StatsSnapshot) -> u64) -> BTreeMap<String, u64> {
    stats
        .iter()
        .map(|p| (p.name.clone(), f(&p.stats)))
        .collect()
}

pub(crate) async fn build(
    r: &Resources,
    produced: &Produced,
    stats: Vec<PipelineStats>,
    elapsed: Duration,
) -> Result<Report> {
    let good = &produced.good;
    let (stage1_results, stage2_results) = count_results(r, good).await?;
    let mut valid2: HashSet<&JobId> = HashSet::new();
    for j in good {
        let key = format!("stage2/{}.json", j.key_safe());
        if let Ok(bytes) = r.blobs.get(&r.result_bucket, &key).await {
            if serde_json::from_slice::<ImageStats>(&bytes).is_ok_and(|s| s.job_id == *j) {
                valid2.insert(j);
            }
        }
    }
    let dead = dead_letters(&[r.stage1_dlq.as_ref(), r.stage2_dlq.as_ref()]).await?;
    let reasons: HashMap<&str, &str> = dead
        .iter()
        .map(|d| (d.job_id.as_str(), d.reason.as_str()))
        .collect();
    // Lost: neither a result nor a dead-letter entry.
    let lost = good
        .iter()
        .chain(&produced.bad)
        .filter(|j| !valid2.contains(j) && !reasons.contains_key(j.as_str()))
        .count();
    // Good jobs without a result that were dead-lettered, with the reason.
    let good_dead: Vec<Rejected> = good
        .iter()
        .zip(&produced.good_keys)
        .filter(|(j, _)| !valid2.contains(j))
        .filter_map(|(j, key)| {
            Some(Rejected {
                file: key.strip_prefix("input/").unwrap_or(key).to_owned(),
                job_id: j.to_string(),
                reason: reasons.get(j.as_str())?.to_string(),
            })
        })
        .collect();
    let (rejected_inputs, generated_dead_lettered) = if produced.user_files {
        (good_dead, 0)
    } else {
        (Vec::new(), good_dead.len())
    };
    let total = stats
        .iter()
        .fold(StatsSnapshot::default(), |a, p| a + p.stats);
    Ok(Report {
        jobs: good.len(),
        bad_inputs: produced.bad.len(),
        stage1_results,
        stage2_results,
        lost,
        dead_lettered: dead.len(),
        rejected_inputs,
        generated_dead_lettered,
        duplicates_dropped: total.duplicates(),
        restarts: total.restarts,
        actor_restarts: total.actor_restarts,
        backend_panics: total.backend_panics,
        backend_timeouts: total.backend_timeouts,
        settle_gave_up: total.settle_gave_up,
        escalations: total.escalations,
        leases_lost: total.leases_lost,
        leases_extended: total.leases_extended,
        retried: total.retried,
        resumed: total.resumed,
        waited: total.waited,
        workers_replaced: total.workers_replaced,
        processor_completions: per_stage(&stats, |s| s.processed),
        processor_panics: per_stage(&stats, |s| s.panics),
        processor_failures: per_stage(&stats, |s| s.failed),
        skipped_completed: total.skipped_completed,
        claims_deferred: total.claims_deferred,
        claims_lost: total.claims_lost,
        payloads_offloaded: produced.offloaded,
        payload_objects_left: r.blobs.list(&r.result_bucket, "payloads/").await?.len(),
        elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        jobs_per_s: (good.len() as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        dead_letters: dead,
        stages: stats.into_iter().map(|p| (p.name, p.stats)).collect(),
        sent_order: sent_order(produced),
        run_order: crate::record::run_order(),
    })
}

/// What is wrong now, for the progress line: each pipeline that is not
/// `running`, with the dependencies it waits out and its problems (a
/// blocked I/O thread, abandoned or stuck workers). Empty when all is well.
pub(crate) fn troubles(health: &[PipelineHealth]) -> String {
    let mut out = String::new();
    for h in health.iter().filter(|h| h.status != "running") {
        let mut what: Vec<String> = h
            .degraded
            .iter()
            .map(|d| {
                let secs = d.since.elapsed().map_or(0, |e| e.as_secs());
                format!("{} failing {secs}s ({})", d.name, d.last_error)
            })
            .collect();
        what.extend(h.problems.iter().cloned());
        out.push_str(&format!(" | {} {}: {}", h.name, h.status, what.join("; ")));
    }
    out
}

/// Each FIFO group's good jobs, in send order.
fn sent_order(produced: &Produced) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, group) in produced.good.iter().zip(&produced.good_groups) {
        if let Some(g) = group {
            out.entry(g.clone()).or_default().push(id.to_string());
        }
    }
    out
}

impl Report {
    /// Why the run failed, if it did: a job lost, or a generated (valid)
    /// image dead-lettered. The user's own bad files are no failure.
    pub(crate) fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.lost > 0 {
            why.push(format!("{} job(s) lost", self.lost));
        }
        if self.generated_dead_lettered > 0 {
            why.push(format!(
                "{} generated image(s) dead-lettered, though valid",
                self.generated_dead_lettered
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    pub(crate) fn print(&self) {
        println!("jobs                {}", self.jobs);
        println!("stage1_results      {}", self.stage1_results);
        println!("stage2_results      {}", self.stage2_results);
        println!("lost                {}", self.lost);
        println!(
            "dead_lettered       {} (bad inputs sent: {})",
            self.dead_lettered, self.bad_inputs
        );
        for d in &self.dead_letters {
            println!("  {} {}: {}", d.queue, d.job_id, d.reason);
        }
        if !self.rejected_inputs.is_empty() {
            println!(
                "rejected_inputs     {} of your files (bad input, dead-lettered):",
                self.rejected_inputs.len()
            );
            for f in &self.rejected_inputs {
                println!("  {}: {}", f.file, f.reason);
            }
        }
        if self.generated_dead_lettered > 0 {
            println!(
                "generated_dead_lettered {} (valid images: a failure)",
                self.generated_dead_lettered
            );
        }
        println!("duplicates_dropped  {}", self.duplicates_dropped);
        println!("restarts            {}", self.restarts);
        println!(
            "actor_restarts      {} (backend panics {}, timeouts {}, escalations {})",
            self.actor_restarts, self.backend_panics, self.backend_timeouts, self.escalations
        );
        println!("retried             {}", self.retried);
        println!("resumed             {}", self.resumed);
        println!(
            "waited              {} (leases given back while a dependency failed, no attempt charged)",
            self.waited
        );
        println!("workers_replaced    {}", self.workers_replaced);
        println!("leases_extended     {}", self.leases_extended);
        let stages = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "processor runs      completed: {}; panicked: {}; failed: {}",
            stages(&self.processor_completions),
            stages(&self.processor_panics),
            stages(&self.processor_failures)
        );
        println!(
            "idempotency store   skipped_completed {}, claims_deferred {}, claims_lost {}",
            self.skipped_completed, self.claims_deferred, self.claims_lost
        );
        println!("elapsed_s           {:.3}", self.elapsed_s);
        println!("jobs_per_s          {:.1}", self.jobs_per_s);
    }
}
