//! DESIGN rules 1–3: delete last, idempotent effects, resume don't redo.
//!
//! Each test freezes a worker between two steps with a gate on one backend
//! operation, checks that nothing was deleted early, kills the worker
//! (abort: no release, no flush, as SIGKILL), then lets a fresh worker —
//! with an empty seen-ID cache — finish the job on the same queues.

mod common;

use std::collections::HashMap;

use common::*;
use ferry::backend::local::Op;
use ferry::backend::BlobStore;
use ferry::prelude::*;
use ferry::{JOB_ID_ATTRIBUTE, RESULT_JOB_TAG};

const JOBS: usize = 5;

async fn start(h: &Harness, p: &Counting, kind: Kind) -> RuntimeHandle {
    Runtime::builder()
        .pipeline(h.pipeline_of(kind, p.clone()))
        .start()
        .await
        .unwrap()
}

/// The downstream notifications per job id, with their bodies.
fn notifications(h: &Harness) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for m in h.downstream.snapshot() {
        let id = m
            .attributes
            .get(JOB_ID_ATTRIBUTE)
            .cloned()
            .expect("every notification names its job");
        out.entry(id).or_default().push(m.body);
    }
    out
}

async fn finish_with_fresh_worker(h: &Harness, p: &Counting, kind: Kind) -> ferry::StatsSnapshot {
    let rt = start(h, p, kind).await;
    eventually("every job deleted", || h.jobs.depth_now().total() == 0).await;
    let stats = rt.stats_of("stage").unwrap();
    let report = rt.shutdown().await;
    assert_eq!(report.held_at_exit, 0);
    stats
}

async fn crash_before_the_result_is_stored_redoes_the_job(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(JOBS).await;
    let p = Counting::new();
    let gate = h.local.gate(Op::Put);
    let rt = start(&h, &p, kind).await;
    eventually("every job processed", || p.total_runs() as usize == JOBS).await;
    // Frozen before the upload: nothing stored, nothing deleted.
    assert!(h.results().await.is_empty());
    assert_eq!(
        h.jobs.depth_now().total(),
        JOBS,
        "a message was deleted before its effects"
    );
    rt.abort();
    gate.open();

    finish_with_fresh_worker(&h, &p, kind).await;
    assert_eq!(h.results().await.len(), JOBS);
    for i in 0..JOBS {
        assert_eq!(
            p.runs_of(&format!("job-{i}")),
            2,
            "no result was stored, so the job runs again"
        );
    }
    let notes = notifications(&h);
    assert_eq!(notes.len(), JOBS);
    assert!(
        notes.values().all(|n| n.len() == 1),
        "published once per job: {notes:?}"
    );
}

async fn crash_after_the_result_is_stored_resumes_without_reprocessing(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(JOBS).await;
    let p = Counting::new();
    let gate = h.local.gate(Op::Publish);
    let rt = start(&h, &p, kind).await;
    eventually("every result stored", || {
        rt.stats_of("stage").unwrap().uploaded as usize == JOBS
    })
    .await;
    assert_eq!(
        h.jobs.depth_now().total(),
        JOBS,
        "a message was deleted before its notification"
    );
    assert!(h.downstream.snapshot().is_empty());
    rt.abort();
    gate.open();

    let stats = finish_with_fresh_worker(&h, &p, kind).await;
    assert_eq!(
        stats.resumed as usize, JOBS,
        "the fresh worker found every stored result"
    );
    for i in 0..JOBS {
        let id = format!("job-{i}");
        assert_eq!(p.runs_of(&id), 1, "{id} was processed again");
        // The key and its tag are pure functions of the job id.
        let meta = h
            .local
            .blobs()
            .head("results", &format!("out/{id}.txt"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(meta.metadata.get(RESULT_JOB_TAG), Some(&id));
    }
    assert!(notifications(&h).values().all(|n| n.len() == 1));
}

async fn crash_after_publishing_republishes_the_same_job_and_deletes(kind: Kind) {
    let h = Harness::new();
    h.send_jobs(JOBS).await;
    let p = Counting::new();
    let gate = h.local.gate(Op::Delete);
    let rt = start(&h, &p, kind).await;
    eventually("every notification accepted", || {
        rt.stats_of("stage").unwrap().published as usize == JOBS
    })
    .await;
    assert_eq!(h.jobs.depth_now().total(), JOBS);
    let before = notifications(&h);
    rt.abort();
    gate.open();

    finish_with_fresh_worker(&h, &p, kind).await;
    assert_eq!(p.total_runs() as usize, JOBS, "no job was processed twice");
    let after = notifications(&h);
    assert_eq!(after.len(), JOBS);
    for (id, bodies) in &after {
        // Re-published after the crash, recognisably the same job: same id
        // attribute, same body.
        assert_eq!(bodies.len(), 2, "{id}");
        assert_eq!(bodies[0], bodies[1]);
        assert_eq!(before[id][0], bodies[0]);
    }
}

async fn effects_are_keyed_by_job_id_not_by_message(kind: Kind) {
    let h = Harness::new();
    // Two different messages for one job (a producer retry): one result key.
    h.send_named(&["same".to_string(), "same".to_string()])
        .await;
    let p = Counting::new();
    let rt = start(&h, &p, kind).await;
    eventually("both messages deleted", || h.jobs.depth_now().total() == 0).await;
    rt.shutdown().await;
    assert_eq!(h.results().await, vec!["out/same.txt".to_string()]);
    assert_eq!(
        p.runs_of("same"),
        1,
        "the second copy was dropped by the seen-ID cache"
    );
}

for_each_kind!(
    crash_before_the_result_is_stored_redoes_the_job,
    crash_after_the_result_is_stored_resumes_without_reprocessing,
    crash_after_publishing_republishes_the_same_job_and_deletes,
    effects_are_keyed_by_job_id_not_by_message,
);
