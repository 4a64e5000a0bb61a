//! The main job end to end: runs the `spot_pipeline` example binary (built by
//! `cargo test` with the other examples) and checks its report.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(common::example_binary())
        .args(args)
        .arg("--json")
        .arg("--timeout")
        .arg("120")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): stdout {stdout:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

#[test]
fn chaos_run_loses_nothing_and_dead_letters_exactly_the_bad_inputs() {
    let (ok, r) = run(&[
        "--jobs",
        "40",
        "--side",
        "96",
        "--chaos",
        "--seed",
        "7",
        "--bad-inputs",
        "4",
    ]);
    assert!(ok, "exit status non-zero: {r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["jobs"], 40);
    assert_eq!(r["stage1_results"], 40);
    assert_eq!(r["stage2_results"], 40);
    assert_eq!(r["dead_lettered"], 4, "{r}");
    let reasons: Vec<&str> = r["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    for want in [
        "malformed message",
        "missing object",
        "not an image",
        "decompression bomb",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no dead letter says {want:?}: {reasons:?}"
        );
    }
    assert!(r["duplicates_dropped"].as_u64().unwrap() > 0, "{r}");
    assert!(r["restarts"].as_u64().unwrap() > 0, "{r}");
    assert!(r["leases_extended"].as_u64().is_some(), "{r}");
    assert!(r["elapsed_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    for stage in ["stage1", "stage2"] {
        assert_eq!(
            r["run_order"][stage].as_array().map(Vec::len),
            r["processor_completions"][stage]
                .as_u64()
                .map(|n| n as usize),
            "{stage}: every successful run recorded: {r}"
        );
    }
}

#[test]
fn a_plain_run_reports_every_job() {
    let (ok, r) = run(&["--jobs", "12", "--side", "64"]);
    assert!(ok);
    assert_eq!(
        (
            r["stage1_results"].as_u64(),
            r["stage2_results"].as_u64(),
            r["lost"].as_u64()
        ),
        (Some(12), Some(12), Some(0)),
        "{r}"
    );
    assert_eq!(r["dead_lettered"], 0);
}

#[test]
fn large_payload_jobs_go_through_pointers_and_their_objects_are_removed() {
    let (ok, r) = run(&[
        "--jobs",
        "6",
        "--side",
        "48",
        "--large-payloads",
        "--pad-bytes",
        "300000",
    ]);
    assert!(ok, "{r}");
    assert_eq!(
        (
            r["stage1_results"].as_u64(),
            r["stage2_results"].as_u64(),
            r["lost"].as_u64()
        ),
        (Some(6), Some(6), Some(0)),
        "{r}"
    );
    // Every job was offloaded, resolved, and its object deleted after its
    // message (the notices were small: nothing else was offloaded).
    assert_eq!(r["payloads_offloaded"], 6, "{r}");
    assert_eq!(r["payload_objects_left"], 0, "{r}");
    assert_eq!(r["dead_lettered"], 0, "{r}");
}

#[test]
fn fifo_exactly_once_chaos_run_completes_each_job_once_per_stage() {
    let (ok, r) = run(&[
        "--jobs",
        "40",
        "--side",
        "96",
        "--fifo",
        "--groups",
        "8",
        "--exactly-once",
        "--chaos",
        "--seed",
        "3",
        "--bad-inputs",
        "2",
    ]);
    assert!(ok, "exit status non-zero: {r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["stage2_results"], 40, "{r}");
    assert_eq!(r["dead_lettered"], 2, "{r}");
    for stage in ["stage1", "stage2"] {
        assert_eq!(
            r["processor_completions"][stage], 40,
            "{stage}: one successful processor run per job: {r}"
        );
    }
    assert!(
        r["restarts"].as_u64().unwrap() > 0,
        "panics were injected: {r}"
    );
    assert_eq!(r["claims_lost"], 0, "{r}");
    // Chaos delivered copies and redeliveries of finished jobs: each was
    // dropped by the seen cache or found completed in the store, and none
    // ran (the completions above).
    assert!(
        r["duplicates_dropped"].as_u64().unwrap() + r["skipped_completed"].as_u64().unwrap() > 0,
        "no copy was delivered: the run did not test exactly-once: {r}"
    );
    // DESIGN rule 8: in each stage, each group's jobs completed in the
    // order they were sent.
    let sent = r["sent_order"].as_object().expect("sent_order");
    assert_eq!(sent.len(), 8, "{r}");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        sent.values().map(|ids| strings(ids).len()).sum::<usize>(),
        40,
        "{r}"
    );
    for stage in ["stage1", "stage2"] {
        let ran = strings(&r["run_order"][stage]);
        assert_eq!(ran.len(), 40, "{stage}: one run per job: {ran:?}");
        for (group, ids) in sent {
            let ids = strings(ids);
            let in_group: Vec<&String> = ran.iter().filter(|id| ids.contains(id)).collect();
            assert_eq!(
                in_group,
                ids.iter().collect::<Vec<_>>(),
                "{stage}, {group}: completed out of send order"
            );
        }
    }
}
