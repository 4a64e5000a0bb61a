//! The main job end to end: runs the `spot_pipeline` example binary (built by
//! `cargo test` with the other examples) and checks its report.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// An ICO file (an embedded PNG behind an icon directory): an image, but in
/// a format the stage-1 decoder does not read.
fn ico() -> Vec<u8> {
    let png = ferry_actors::samples::synthetic_png(9, 16);
    let mut ico = vec![0, 0, 1, 0, 1, 0]; // reserved, type 1 (icon), one image
    ico.extend([16, 16, 0, 0, 1, 0, 32, 0]); // 16×16, planes 1, 32 bits
    ico.extend((png.len() as u32).to_le_bytes());
    ico.extend(22u32.to_le_bytes()); // the image starts after this entry
    ico.extend(png);
    ico
}

/// A directory of the user's files: three good images, an icon named
/// `.png` and a text file.
fn user_files(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-input-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3u64 {
        let png = ferry_actors::samples::synthetic_png(i, 48);
        std::fs::write(dir.join(format!("photo-{i}.png")), png).unwrap();
    }
    std::fs::write(dir.join("icon.png"), ico()).unwrap();
    std::fs::write(dir.join("notes.txt"), "shopping list\n").unwrap();
    dir
}

#[test]
fn bad_files_of_the_users_own_are_reported_with_their_reasons_not_lost() {
    let dir = user_files("json");
    let (ok, r) = run(&["--input", dir.to_str().unwrap()]);
    assert!(ok, "exit status non-zero: {r}");
    assert_eq!(r["jobs"], 5, "{r}");
    assert_eq!(r["stage2_results"], 3, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["dead_lettered"], 2, "{r}");
    assert_eq!(r["generated_dead_lettered"], 0, "{r}");
    let rejected: Vec<(&str, &str)> = r["rejected_inputs"]
        .as_array()
        .expect("rejected_inputs")
        .iter()
        .map(|f| (f["file"].as_str().unwrap(), f["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected.len(), 2, "{r}");
    assert!(
        rejected
            .iter()
            .any(|(f, why)| *f == "icon.png"
                && why.contains("The image format Ico is not supported")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|(f, why)| *f == "notes.txt" && why.contains("not an image")),
        "{rejected:?}"
    );

    // The text report names them too, and the run still succeeds.
    let out = Command::new(common::example_binary())
        .args(["--input", dir.to_str().unwrap(), "--timeout", "120"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {text}", out.status);
    assert!(text.contains("lost                0"), "{text}");
    assert!(
        text.contains("rejected_inputs     2 of your files"),
        "{text}"
    );
    assert!(
        text.contains("  icon.png: ") && text.contains("Ico is not supported"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET http://addr/path`: the status and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// The value of one series (`name{labels}`) in a Prometheus text.
fn series(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_addr_serves_health_readiness_and_metrics() {
    let mut child = Command::new(common::example_binary())
        .args(["--jobs", "16", "--side", "64", "--json", "--timeout", "120"])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-linger-secs",
            "60",
        ])
        .args(["--depth-every-secs", "1", "--process-delay-ms", "150"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr_tx, addr_rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let err_log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("metrics on http://") {
                let _ = addr_tx.send(rest.trim_end_matches("/metrics").to_owned());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let (report_tx, report_rx) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with('{') {
                let _ = report_tx.send(line);
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the example never said where it serves");
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_owned()));

    // While the stages run: ready, both of them, and the queues' gauges in
    // the metrics.
    let started = Instant::now();
    let (ready, metrics) = loop {
        let (status, body) = http_get(&addr, "/readyz");
        let (_, text) = http_get(&addr, "/metrics");
        let gauges = ["stage1", "stage2"].iter().all(|stage| {
            [
                "ferry_received_total",
                "ferry_queue_depth_visible",
                "ferry_backlog_per_worker",
            ]
            .iter()
            .all(|name| series(&text, &format!("{name}{{pipeline=\"{stage}\"}}")).is_some())
        });
        if status == 200 && gauges {
            break (body, text);
        }
        assert!(
            report_rx.try_recv().is_err(),
            "the run ended before it was seen ready with its gauges: {status} {body}\n{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready with its gauges within 60 s: {status} {body}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let names: Vec<&str> = ready["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stage1", "stage2"], "{ready}");
    assert!(
        metrics.contains("# TYPE ferry_queue_depth_visible gauge"),
        "{metrics}"
    );

    let report: serde_json::Value = serde_json::from_str(
        &report_rx
            .recv_timeout(Duration::from_secs(150))
            .expect("no JSON report"),
    )
    .unwrap();
    assert_eq!(report["lost"], 0, "{report}");
    // The runtime is gone: not ready; the final figures still scraped, and
    // that scrape ends the linger.
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for stage in ["stage1", "stage2"] {
        assert_eq!(
            series(&text, &format!("ferry_acked_total{{pipeline=\"{stage}\"}}")),
            Some(16.0),
            "{text}"
        );
    }
    let scraped_at = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        scraped_at.elapsed() < Duration::from_secs(20),
        "the example kept serving after the final scrape"
    );
    let log = err_log.join().unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{log}");
}

/// `--trust-payloads BUCKET`: a worker follows a pointer that an AWS
/// extended client (here in the Python client's shape: its class name, a
/// UUID key, `json.dumps` spacing, the object without ferry's job tag)
/// wrote to that bucket, and still refuses one to a bucket it does not
/// trust. On the moto server `scripts/test` starts.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_extended_client_pointers_to_a_trusted_bucket() {
    use ferry::backend::aws::QueueSpec;
    use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue};

    if common::aws::endpoint().is_none() {
        return;
    }
    let aws = common::aws::backend().await;
    let p = common::aws::unique("trust").to_lowercase();
    let queue = |name: String, spec: QueueSpec| {
        let aws = aws.clone();
        async move { aws.create_queue(&name, &spec).await.unwrap() }
    };
    let dlq1 = queue(format!("{p}-s1-dlq"), QueueSpec::default()).await;
    let dlq2 = queue(format!("{p}-s2-dlq"), QueueSpec::default()).await;
    let redrive = |arn: &str| QueueSpec {
        redrive: Some((arn.to_owned(), 10)),
        ..QueueSpec::default()
    };
    let stage1 = queue(format!("{p}-s1"), redrive(dlq1.arn())).await;
    let stage2 = queue(format!("{p}-s2"), redrive(dlq2.arn())).await;
    let topic = aws.create_topic(&format!("{p}-done"), false).await.unwrap();
    aws.subscribe(&topic, &stage2, false).await.unwrap();
    let [input, results, trusted, other] = ["in", "out", "py", "other"].map(|b| format!("{p}-{b}"));
    for b in [&input, &results, &trusted, &other] {
        aws.create_bucket(b).await.unwrap();
    }
    let blobs = aws.blobs();
    let png = ferry_actors::samples::synthetic_png(5, 48);
    blobs
        .put(&input, "in/photo.png", png.into(), ObjectMeta::default())
        .await
        .unwrap();
    // What the other client offloaded: the job's body, under a UUID key.
    let job = serde_json::json!({"bucket": input, "key": "in/photo.png"}).to_string();
    let key = "4f6a0c1e-3b7d-4c55-9a2e-6d1f0b8c7e21";
    for bucket in [&trusted, &other] {
        blobs
            .put(bucket, key, job.clone().into(), ObjectMeta::default())
            .await
            .unwrap();
        let pointer = format!(
            "[\"software.amazon.payloadoffloading.PayloadS3Pointer\", \
             {{\"s3BucketName\": \"{bucket}\", \"s3Key\": \"{key}\"}}]"
        );
        let sent = stage1
            .send_batch(vec![OutgoingMessage::new(pointer)
                .attribute("ExtendedPayloadSize", job.len().to_string())])
            .await
            .unwrap();
        sent.into_iter().for_each(|r| {
            r.unwrap();
        });
    }

    let mut worker = Command::new(common::example_binary())
        .args(["--backend", "aws", "--s3-path-style", "--worker"])
        .args([
            "--stage",
            "both",
            "--workers",
            "1",
            "--trust-payloads",
            &trusted,
        ])
        .args(["--input-bucket", &input, "--result-bucket", &results])
        .args(["--stage1-queue", stage1.url(), "--stage1-dlq", dlq1.url()])
        .args(["--stage2-queue", stage2.url(), "--stage2-dlq", dlq2.url()])
        .args(["--topic", topic.arn()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(worker.stderr.take().unwrap());
    let log = std::thread::spawn(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    // The trusted pointer's job ends in a stage-2 result, the other in the
    // dead-letter queue.
    let started = Instant::now();
    let (done, dead) = loop {
        let done = blobs.list(&results, "stage2/").await.unwrap();
        let dead = ferry::dlq::list(dlq1.as_ref(), 10).await.unwrap();
        if done.len() + dead.len() >= 2 || started.elapsed() > Duration::from_secs(60) {
            break (done, dead);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            panic!("the worker did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log.join().unwrap();
    let reasons: Vec<String> = dead.iter().filter_map(|d| d.reason.clone()).collect();
    assert_eq!(
        done.len(),
        1,
        "stage-2 results {done:?}; dead letters {reasons:?}\n{log}"
    );
    assert_eq!(dead.len(), 1, "dead letters {reasons:?}\n{log}");
    assert!(
        reasons[0].contains("not followed") && reasons[0].contains(&other),
        "{reasons:?}"
    );
    assert!(status.success(), "worker exit {status:?}\n{log}");
    assert_eq!(blobs.list(&results, "stage1/").await.unwrap().len(), 1);
    // Another client's object (no ferry job tag) is left to that client.
    assert_eq!(blobs.list(&trusted, "").await.unwrap(), [key]);
    assert_eq!(dlq2.depth().await.unwrap().total(), 0);
    assert_eq!(stage1.depth().await.unwrap().total(), 0);
}
