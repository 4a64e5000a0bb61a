//! Each job against what its own history allows, from the seed's log:
//!
//! - **Runs.** A successful run of a job that was not cancelled is the one
//!   its effects may come from. Two such runs of one job in one stage never
//!   overlap (one process merges copies; across workers, the claim keeps
//!   the second out), and a later one follows only an earlier one whose
//!   lease was then given back (retried, released, waiting out a failed
//!   effect) or lost: ferry reports each lease's end, and an end of the
//!   earlier run's message must come after that run started (a deferral,
//!   which never ran the job, does not count). A worker killed mid-run
//!   lost every lease it held; with exactly-once off its successor may
//!   also repeat the job (nothing of the dead process is remembered). It may come after the later
//!   run: a lease that gives its message back stops renewing its claim
//!   while its give-back is under way, and another worker may take the job
//!   meanwhile — harmless, as the first run's effects failed. With
//!   exactly-once on that holds across workers too.
//! - **Result writes.** Only from such runs: never more writes of a job's
//!   result than it had such runs.
//! - **Notices.** Every job that stage 1 completes is announced; on a FIFO
//!   topic all of a job's notices carry one deduplication id, so stage 2
//!   gets one.
//! - **Delete last.** No message of a job is deleted before the job's result
//!   is written and (stage 1) announced, or, for a bad input, before its
//!   dead-letter entry is sent.
//! - **FIFO order.** On FIFO queues, every run of a group's message ends
//!   before any run of the group's later messages starts (cancelled runs
//!   aside: their output is never used), in each stage.
//! - **Inputs.** Stage 2 reads exactly the result stage 1 wrote for the job.

use std::collections::BTreeMap;

use crate::jobs::{Flex, SentJob};
use crate::record::{Effect, Log, Records, Run, RunEnd};
use crate::world::{listed, result_key, some};

/// Checks every job of the seed against its history.
pub(crate) fn audit(
    jobs: &[SentJob],
    fifo: bool,
    exactly_once: bool,
    log: &Log,
    v: &mut Vec<String>,
) {
    log.with(|r| {
        for a in &r.anomalies {
            v.push(a.clone());
        }
        // The audit reads ferry's words: any it does not know means it
        // would be checking nothing.
        const HOW: &[&str] = &[
            "Deleted",
            "DeadLettered",
            "DeadLetteredUndeleted",
            "Released",
            "Lost",
        ];
        const ENDING: &[&str] = &[
            "delete",
            "retry",
            "dead-letter",
            "release",
            "defer",
            "wait",
            "none",
            "crash",
        ];
        if let Some(e) = r
            .ends
            .iter()
            .find(|e| !HOW.contains(&e.how.as_str()) || !ENDING.contains(&e.ending.as_str()))
        {
            v.push(format!("a lease end the audit cannot read: {e:?}"));
        }
        if let Some(run) = r.runs.iter().find(|x| sequence(&x.message).is_none()) {
            v.push(format!(
                "a message id the audit cannot order: {}",
                run.message
            ));
        }
        charged(r, v);
        hung(r, v);
        if exactly_once {
            after_completion(r, v);
        }
        for stage in [1u8, 2] {
            runs(r, stage, exactly_once, v);
            effects(jobs, r, stage, fifo, v);
            if fifo {
                order(r, stage, exactly_once, v);
            }
        }
    });
}

/// A job's successful, uncancelled runs in a stage, by id, in start order.
fn used_runs(r: &Records, stage: u8) -> BTreeMap<&str, Vec<&Run>> {
    let mut by_job: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in &r.runs {
        if run.stage == stage && run.how == RunEnd::Ok && !run.cancelled {
            by_job.entry(run.job.as_str()).or_default().push(run);
        }
    }
    for runs in by_job.values_mut() {
        runs.sort_by_key(|r| r.start);
    }
    by_job
}

fn runs(r: &Records, stage: u8, exactly_once: bool, v: &mut Vec<String>) {
    let mut bad = Vec::new();
    for (job, runs) in used_runs(r, stage) {
        for pair in runs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.start < a.end {
                bad.push(format!(
                    "{job} ran twice at once (worker {} and {})",
                    a.worker, b.worker
                ));
                continue;
            }
            let excused = r.ends.iter().any(|e| {
                e.stage == stage
                    && e.ending != "defer"
                    && e.job == job
                    && e.message == a.message
                    && e.receive_count == a.receive_count
                    && (e.how == "Released" || e.how == "Lost")
                    && a.start < e.at
                    // A killed worker's leases were lost when it died: that
                    // excuses only runs after its death, or a later
                    // delivery of the same message (the queue handed it out
                    // again, so the dead worker's visibility had lapsed
                    // before, whatever its table still said).
                    && (e.ending != "crash"
                        || e.at < b.start
                        || (b.message == a.message && b.receive_count > a.receive_count))
            });
            // Without the store, what a killed worker did is forgotten: its
            // successor may run the job again (from a notice announced
            // again, or a message it could not delete).
            let forgotten = !exactly_once
                && a.worker != b.worker
                && r.crashes
                    .iter()
                    .any(|(w, at)| *w == a.worker && *at < b.start);
            if !excused && !forgotten {
                bad.push(format!(
                    "{job} ran again (worker {} after worker {}) though its lease was not \
                     given back or lost after the first run",
                    b.worker, a.worker
                ));
            }
        }
    }
    if !bad.is_empty() {
        let first = bad[0].split(' ').next().unwrap_or_default().to_owned();
        v.push(format!(
            "stage {stage} ran {} job(s) more than its history allows: {} [history: {}]",
            bad.len(),
            some(&bad),
            history(r, stage, &first)
        ));
    }
}

/// A lease that ended as a retry charged its job an attempt: its run must
/// have failed by its own doing (an error or a panic), not succeeded or met
/// an unavailable dependency — the infrastructure's failures are the
/// pipeline's to wait out.
fn charged(r: &Records, v: &mut Vec<String>) {
    let mut bad = Vec::new();
    for e in r.ends.iter().filter(|e| e.ending == "retry") {
        let runs: Vec<&Run> = r
            .runs
            .iter()
            .filter(|x| {
                x.stage == e.stage
                    && x.job == e.job
                    && x.message == e.message
                    && x.receive_count == e.receive_count
            })
            .collect();
        if !runs.is_empty()
            && runs
                .iter()
                .all(|x| matches!(x.how, RunEnd::Ok | RunEnd::Unavailable | RunEnd::Dropped))
        {
            bad.push(format!("{} at stage {} ({})", e.job, e.stage, e.message));
        }
    }
    if !bad.is_empty() {
        v.push(format!(
            "{} job(s) charged an attempt for the infrastructure's failure: {}",
            bad.len(),
            some(&bad)
        ));
    }
}

/// A run that hung must have been cancelled and its lease ended: timed out
/// (a retry, or a dead letter when that was its last attempt), given back
/// uncharged (it had waited most of its lease's age for a worker), or lost.
/// ferry may not leave it be.
fn hung(r: &Records, v: &mut Vec<String>) {
    let bad: Vec<String> = r
        .runs
        .iter()
        .filter(|x| x.how == RunEnd::Hung)
        .filter(|x| {
            !r.ends.iter().any(|e| {
                e.stage == x.stage
                    && e.job == x.job
                    && e.message == x.message
                    && e.receive_count == x.receive_count
                    && (matches!(e.ending.as_str(), "retry" | "release" | "dead-letter")
                        || matches!(
                            e.how.as_str(),
                            "Lost" | "DeadLettered" | "DeadLetteredUndeleted"
                        ))
            })
        })
        .map(|x| {
            format!(
                "{} at stage {} ({}) [{}]",
                x.job,
                x.stage,
                x.message,
                history(r, x.stage, &x.job)
            )
        })
        .collect();
    if !bad.is_empty() {
        v.push(format!(
            "{} hung run(s) never timed out or lost: {}",
            bad.len(),
            some(&bad)
        ));
    }
}

/// With exactly-once on, a job the store marked completed never runs
/// again: its later deliveries are deleted unrun.
fn after_completion(r: &Records, v: &mut Vec<String>) {
    let mut bad = Vec::new();
    for (stage, job, at) in &r.completions {
        if let Some(run) = r.runs.iter().find(|x| {
            x.stage == *stage
                && x.job == *job
                && x.how == RunEnd::Ok
                && !x.cancelled
                && x.start > *at
        }) {
            bad.push(format!(
                "{job} at stage {stage} (worker {}, {})",
                run.worker, run.message
            ));
        }
    }
    if !bad.is_empty() {
        v.push(format!(
            "{} job(s) ran after the store marked them completed: {}",
            bad.len(),
            some(&bad)
        ));
    }
}

/// Whether a job is expected to complete `stage` (its result and notice),
/// and so whether the effect checks apply to it there.
fn completes(j: &SentJob, stage: u8) -> bool {
    j.flex == Flex::Strict && (j.bad_at == 0 || (stage == 1 && j.bad_at == 2))
}

fn first<'a>(list: &'a [Effect], stage: u8, job: &str) -> Option<&'a Effect> {
    list.iter()
        .filter(|e| e.stage == stage && e.job == job)
        .min_by_key(|e| e.at)
}

fn effects(jobs: &[SentJob], r: &Records, stage: u8, fifo: bool, v: &mut Vec<String>) {
    let used = used_runs(r, stage);
    let mut bad = Vec::new();
    for j in jobs {
        let deletes: Vec<&Effect> = r
            .deletes
            .iter()
            .filter(|e| e.stage == stage && listed(&e.job) == listed(&j.id))
            .collect();
        if j.flex == Flex::Strict && j.bad_at == stage {
            let entry = r
                .dead_letters
                .iter()
                .filter(|e| e.stage == stage && listed(&e.job) == listed(&j.id))
                .map(|e| e.at)
                .min();
            if let Some(d) = deletes.iter().find(|d| entry.is_none_or(|at| d.at < at)) {
                bad.push(format!(
                    "{}: message {} deleted before its dead-letter entry was sent",
                    j.id,
                    d.detail.as_deref().unwrap_or("?")
                ));
            }
            continue;
        }
        if !completes(j, stage) {
            continue;
        }
        let key = result_key(stage, &j.id);
        let writes = r.puts.iter().filter(|p| p.job == key).count();
        let runs = used.get(j.id.as_str()).map_or(0, Vec::len);
        if writes > runs {
            bad.push(format!(
                "{}: result written {writes} times from {runs} successful run(s)",
                j.id
            ));
        }
        let written = first(&r.puts, stage, &key).map(|e| e.at);
        let announced = if stage == 1 {
            let notices: Vec<&Effect> = r.notices.iter().filter(|n| n.job == j.id).collect();
            if notices.is_empty() && written.is_some() {
                bad.push(format!("{}: result stored but never announced", j.id));
            }
            // A lease publishes at most once (the embedded topic fails a
            // call before it publishes), so never more notices than the
            // job's leases at stage 1; and never before its result.
            let leases = r
                .ends
                .iter()
                .filter(|e| e.stage == 1 && e.job == j.id)
                .count();
            if notices.len() > leases {
                bad.push(format!(
                    "{}: announced {} times by {leases} lease(s)",
                    j.id,
                    notices.len()
                ));
            }
            let first_notice = notices.iter().map(|n| n.at).min();
            if let (Some(n), Some(w)) = (first_notice, written) {
                if n < w {
                    bad.push(format!("{}: announced before its result was stored", j.id));
                }
            }
            if fifo {
                let mut ids: Vec<&str> =
                    notices.iter().filter_map(|n| n.detail.as_deref()).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > 1 || notices.iter().any(|n| n.detail.is_none()) {
                    bad.push(format!(
                        "{}: notices under {} deduplication ids on a FIFO topic",
                        j.id,
                        ids.len()
                    ));
                }
            }
            notices.iter().map(|n| n.at).min()
        } else {
            written
        };
        for d in &deletes {
            let before = |at: Option<u64>| at.is_none_or(|at| d.at < at);
            if before(written) || before(announced) {
                bad.push(format!(
                    "{}: message {} deleted before its result was {}",
                    j.id,
                    d.detail.as_deref().unwrap_or("?"),
                    if before(written) {
                        "stored"
                    } else {
                        "announced"
                    }
                ));
                break;
            }
        }
    }
    if !bad.is_empty() {
        v.push(format!(
            "stage {stage}: {} effect(s) out of order or repeated: {}",
            bad.len(),
            some(&bad)
        ));
    }
}

/// The queue's sequence number in a message id (`<queue>-<n>`): the order
/// the queue took the messages in.
fn sequence(message: &str) -> Option<u64> {
    message.rsplit('-').next()?.parse().ok()
}

fn order(r: &Records, stage: u8, exactly_once: bool, v: &mut Vec<String>) {
    // A message the queue delivered again after its delete (the backend's
    // redelivery fault), once a worker was killed since: without the store,
    // the worker that deleted it is gone with its memory, and the run is
    // the queue's breach of order, not ferry's (a living worker drops it as
    // a copy; with the store, its record does).
    let back_from_the_dead = |run: &Run| {
        !exactly_once
            && r.deletes.iter().any(|d| {
                d.stage == stage
                    && d.detail.as_deref() == Some(run.message.as_str())
                    && d.at < run.start
                    && r.crashes
                        .iter()
                        .any(|(_, at)| d.at < *at && *at < run.start)
            })
    };
    // Group → message sequence → the message's runs.
    let mut groups: BTreeMap<&str, BTreeMap<u64, Vec<&Run>>> = BTreeMap::new();
    for run in r
        .runs
        .iter()
        .filter(|x| x.stage == stage && !x.cancelled && !back_from_the_dead(x))
    {
        let Some(m) = r.messages.get(&(stage, run.message.clone())) else {
            continue;
        };
        let (Some(group), Some(n)) = (m.group.as_deref(), sequence(&run.message)) else {
            continue;
        };
        groups
            .entry(group)
            .or_default()
            .entry(n)
            .or_default()
            .push(run);
    }
    let show = |run: &Run| {
        format!(
            "{} ({}, receive {}, worker {}, {:?}, {}–{})",
            run.job, run.message, run.receive_count, run.worker, run.how, run.start, run.end
        )
    };
    let mut bad = Vec::new();
    for (group, messages) in &groups {
        // The run that ended last among the group's earlier messages.
        let mut last: Option<&Run> = None;
        for runs in messages.values() {
            if let Some(l) = last {
                if let Some(early) = runs.iter().find(|x| x.start < l.end) {
                    bad.push(format!(
                        "group {group}: {} started before {} ended [history of {}: {}]",
                        show(early),
                        show(l),
                        l.job,
                        history(r, stage, &l.job)
                    ));
                }
            }
            for run in runs {
                if last.is_none_or(|l| run.end > l.end) {
                    last = Some(run);
                }
            }
        }
    }
    if !bad.is_empty() {
        v.push(format!("stage {stage} broke FIFO order: {}", some(&bad)));
    }
}

/// A job's history in a stage, for a report: its runs, lease ends and
/// effects in stamp order.
pub(crate) fn history(r: &Records, stage: u8, job: &str) -> String {
    let mut events: Vec<(u64, String)> = Vec::new();
    for x in r.runs.iter().filter(|x| x.stage == stage && x.job == job) {
        events.push((
            x.start,
            format!(
                "run {}–{} {:?}{} on worker {} ({}, receive {})",
                x.start,
                x.end,
                x.how,
                if x.cancelled { " cancelled" } else { "" },
                x.worker,
                x.message,
                x.receive_count
            ),
        ));
    }
    for e in r.ends.iter().filter(|e| e.stage == stage && e.job == job) {
        events.push((
            e.at,
            format!("lease {} ({}, {})", e.how, e.ending, e.message),
        ));
    }
    for (what, list) in [("deleted", &r.deletes), ("dead-lettered", &r.dead_letters)] {
        for e in list.iter().filter(|e| e.stage == stage && e.job == job) {
            events.push((
                e.at,
                format!("{what} {}", e.detail.as_deref().unwrap_or("")),
            ));
        }
    }
    for (_, _, at, what) in r.store_calls.iter().filter(|c| c.0 == stage && c.1 == job) {
        events.push((*at, what.clone()));
    }
    let key = result_key(stage, job);
    for e in r.puts.iter().filter(|e| e.job == key) {
        events.push((e.at, "result written".into()));
    }
    if stage == 1 {
        for e in r.notices.iter().filter(|e| e.job == job) {
            events.push((e.at, "announced".into()));
        }
    }
    events.sort();
    let lines: Vec<String> = events.iter().map(|(at, e)| format!("{at}: {e}")).collect();
    format!("{job} at stage {stage}: {}", lines.join("; "))
}
