//! The two-stage image pipeline, end to end, on the embedded backend.
//!
//! Stage 1 reads a job (an S3 event notification or `{"bucket","key"}`),
//! resizes and blurs the image, stores `stage1/<job-id>.png` and publishes a
//! notice to a topic that routes to the stage-2 queue; stage 2 reads the
//! stage-1 result and stores `stage2/<job-id>.json` with its statistics.
//!
//! ```text
//! cargo run --release --example spot_pipeline
//! cargo run --release --example spot_pipeline -- --jobs 300 --chaos --seed 7 --bad-inputs 4 --json
//! ```
//!
//! The final report is computed by reading the stores and queues, not from
//! counters alone; the exit status is non-zero if any job is lost.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry::backend::local::{Faults, LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{BlobStore, ObjectMeta, OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::testkit::PanicInjector;
use ferry::{DLQ_REASON_ATTRIBUTE, JOB_ID_ATTRIBUTE};
use ferry_actors::{samples, ImageStats, Stage1, Stage2};
use serde::Serialize;

/// Runs the two-stage image pipeline and reports what the stores hold.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Synthetic jobs to generate (ignored with --input).
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Read source images (PNG or JPEG) from this directory instead.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Side of the synthetic images, in pixels.
    #[arg(long, default_value_t = 384)]
    side: u32,
    /// Inject duplicate and concurrent deliveries, redeliveries after
    /// delete, failing calls and processor panics.
    #[arg(long)]
    chaos: bool,
    /// Seed for the synthetic images and every injected fault.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Add this many malformed jobs (bad JSON, missing object, not an image,
    /// decompression bomb, in turn); each must end in the dead-letter queue.
    #[arg(long, default_value_t = 0)]
    bad_inputs: usize,
    /// Stage-1 worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const INPUT_BUCKET: &str = "ferry-input";
const RESULT_BUCKET: &str = "ferry-results";

#[derive(Debug, Serialize)]
struct Report {
    jobs: usize,
    bad_inputs: usize,
    stage1_results: usize,
    stage2_results: usize,
    lost: usize,
    dead_lettered: usize,
    duplicates_dropped: u64,
    restarts: u64,
    leases_extended: u64,
    retried: u64,
    resumed: u64,
    elapsed_s: f64,
    jobs_per_s: f64,
    dead_letters: Vec<DeadLetter>,
    stages: BTreeMap<String, ferry::StatsSnapshot>,
}

#[derive(Debug, Serialize)]
struct DeadLetter {
    queue: String,
    job_id: String,
    reason: String,
}

struct Setup {
    local: LocalBackend,
    stage1_jobs: Arc<LocalQueue>,
    stage1_dlq: Arc<LocalQueue>,
    stage2_jobs: Arc<LocalQueue>,
    stage2_dlq: Arc<LocalQueue>,
    good: Vec<JobId>,
    bad: Vec<JobId>,
}

fn job_message(i: usize, key: &str) -> OutgoingMessage {
    if i % 2 == 0 {
        // What S3 itself sends: no attributes, so the job id is the message id.
        OutgoingMessage::new(
            serde_json::json!({"Records": [{
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": INPUT_BUCKET}, "object": {"key": key}}
            }]})
            .to_string(),
        )
    } else {
        // A producer of ours: names the job itself.
        OutgoingMessage::new(serde_json::json!({"bucket": INPUT_BUCKET, "key": key}).to_string())
            .attribute(JOB_ID_ATTRIBUTE, format!("job-{i:05}"))
    }
}

async fn enqueue(queue: &LocalQueue, messages: Vec<OutgoingMessage>) -> Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(ferry::backend::MAX_BATCH) {
        let named: Vec<Option<String>> = chunk
            .iter()
            .map(|m| m.attributes.get(JOB_ID_ATTRIBUTE).cloned())
            .collect();
        let sent = queue.send_batch(chunk.to_vec()).await?;
        for (name, r) in named.into_iter().zip(sent) {
            let message_id = r?;
            ids.push(JobId::new(name.unwrap_or(message_id)));
        }
    }
    Ok(ids)
}

async fn setup(args: &Args) -> Result<Setup> {
    let local = LocalBackend::new();
    let blobs = local.blobs();
    let stage1_dlq = local.create_queue("stage1-dlq", QueueOptions::default());
    let stage2_dlq = local.create_queue("stage2-dlq", QueueOptions::default());
    // The redrive policy is the backstop for a message that kills its
    // worker every time; ferry dead-letters sooner, with a reason.
    let stage1_jobs = local.create_queue(
        "stage1-jobs",
        QueueOptions {
            redrive: Some((stage1_dlq.clone(), 10)),
            ..QueueOptions::default()
        },
    );
    let stage2_jobs = local.create_queue(
        "stage2-jobs",
        QueueOptions {
            redrive: Some((stage2_dlq.clone(), 10)),
            ..QueueOptions::default()
        },
    );
    let topic = local.create_topic("stage1-done", false);
    local.subscribe(&topic, &stage2_jobs, false);

    let mut keys = Vec::new();
    match &args.input {
        Some(dir) => {
            let mut files: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for path in files {
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let key = format!("input/{name}");
                blobs
                    .put(
                        INPUT_BUCKET,
                        &key,
                        std::fs::read(&path)?.into(),
                        ObjectMeta::default(),
                    )
                    .await?;
                keys.push(key);
            }
        }
        None => {
            for i in 0..args.jobs {
                let key = format!("input/img-{i:05}.png");
                let png =
                    samples::synthetic_png(args.seed.wrapping_mul(1_000_003) + i as u64, args.side);
                blobs
                    .put(INPUT_BUCKET, &key, png.into(), ObjectMeta::default())
                    .await?;
                keys.push(key);
            }
        }
    }
    let good_msgs: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| job_message(i, k))
        .collect();

    blobs
        .put(
            INPUT_BUCKET,
            "bad/not-an-image.png",
            samples::not_an_image().into(),
            ObjectMeta::default(),
        )
        .await?;
    blobs
        .put(
            INPUT_BUCKET,
            "bad/bomb.png",
            samples::decompression_bomb_png().into(),
            ObjectMeta::default(),
        )
        .await?;
    let bad_msgs: Vec<_> = (0..args.bad_inputs)
        .map(|i| {
            let body = match i % 4 {
                0 => "{\"bucket\": \"ferry-input\", \"key\": ".to_string(),
                1 => serde_json::json!({"bucket": INPUT_BUCKET, "key": format!("missing/{i}.png")})
                    .to_string(),
                2 => serde_json::json!({"bucket": INPUT_BUCKET, "key": "bad/not-an-image.png"})
                    .to_string(),
                _ => serde_json::json!({"bucket": INPUT_BUCKET, "key": "bad/bomb.png"}).to_string(),
            };
            OutgoingMessage::new(body).attribute(JOB_ID_ATTRIBUTE, format!("bad-{i:03}"))
        })
        .collect();
    let good = enqueue(&stage1_jobs, good_msgs).await?;
    let bad = enqueue(&stage1_jobs, bad_msgs).await?;
    Ok(Setup {
        local,
        stage1_jobs,
        stage1_dlq,
        stage2_jobs,
        stage2_dlq,
        good,
        bad,
    })
}

fn pipelines(args: &Args, s: &Setup) -> (Pipeline, Pipeline) {
    let (chaos, seed) = (args.chaos, args.seed);
    let panic_rate = if chaos { 0.05 } else { 0.0 };
    let tune = |c: &mut PipelineConfig| {
        c.visibility_timeout = Duration::from_secs(4);
        c.retry_backoff_base = Duration::from_millis(100);
        c.retry_backoff_max = Duration::from_secs(2);
        c.max_receives = 8;
        c.receive_wait = Duration::from_secs(1);
        c.max_in_flight = 32;
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let blobs = s.local.blobs();
    let topic = s.local.create_topic("stage1-done", false);
    let stage1 = Pipeline::new("stage1")
        .source(s.stage1_jobs.clone())
        .dead_letter(s.stage1_dlq.clone())
        .results(blobs.clone(), RESULT_BUCKET, "stage1/", "png")
        .topic(topic)
        .processor(move || PanicInjector::new(Stage1::default(), seed, panic_rate))
        .configure(|c| {
            tune(c);
            c.workers = workers;
        });
    let stage2 = Pipeline::new("stage2")
        .source(s.stage2_jobs.clone())
        .dead_letter(s.stage2_dlq.clone())
        .results(blobs, RESULT_BUCKET, "stage2/", "json")
        .processor(move || PanicInjector::new(Stage2, seed ^ 0x5eed, panic_rate))
        .configure(|c| {
            tune(c);
            c.workers = 1;
        });
    (stage1, stage2)
}

/// Counts what the stores hold for the expected jobs.
async fn count_results(blobs: &dyn BlobStore, jobs: &[JobId]) -> Result<(usize, usize)> {
    let s1: HashSet<String> = blobs
        .list(RESULT_BUCKET, "stage1/")
        .await?
        .into_iter()
        .collect();
    let s2: HashSet<String> = blobs
        .list(RESULT_BUCKET, "stage2/")
        .await?
        .into_iter()
        .collect();
    let stage1 = jobs
        .iter()
        .filter(|j| s1.contains(&format!("stage1/{}.png", j.key_safe())))
        .count();
    let stage2 = jobs
        .iter()
        .filter(|j| s2.contains(&format!("stage2/{}.json", j.key_safe())))
        .count();
    Ok((stage1, stage2))
}

fn dead_letters(queues: &[&LocalQueue]) -> Vec<DeadLetter> {
    queues
        .iter()
        .flat_map(|q| {
            q.snapshot().into_iter().map(|m| DeadLetter {
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
                    .unwrap_or_else(|| "(no reason: redriven by the queue)".into()),
            })
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Injected panics are expected: keep them out of the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        if !msg.starts_with("injected panic") {
            default_hook(info);
        }
    }));

    let s = setup(&args).await?;
    let total = s.good.len() + s.bad.len();
    if !args.json {
        println!(
            "ferry spot_pipeline: {} jobs + {} bad inputs, embedded backend, chaos {}",
            s.good.len(),
            s.bad.len(),
            if args.chaos {
                format!("on (seed {})", args.seed)
            } else {
                "off".into()
            }
        );
    }
    if args.chaos {
        s.local.set_faults(Faults::chaos(args.seed));
    }

    let started = Instant::now();
    let (p1, p2) = pipelines(&args, &s);
    let runtime = Runtime::builder()
        .pipeline(p1)
        .pipeline(p2)
        .shutdown_grace(Duration::from_secs(10))
        .start()
        .await?;

    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} settled  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let blobs = s.local.blobs();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let (_, done2) = count_results(blobs.as_ref(), &s.good).await?;
        let dead = s.stage1_dlq.depth_now().total() + s.stage2_dlq.depth_now().total();
        let t = runtime.total();
        bar.set_position((done2 + dead).min(total) as u64);
        bar.set_message(format!(
            "dup {} retry {} restart {}",
            t.duplicates(),
            t.retried,
            t.restarts
        ));
        let drained =
            s.stage1_jobs.depth_now().total() == 0 && s.stage2_jobs.depth_now().total() == 0;
        if (done2 + dead >= total && drained) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let stats = runtime.stats();
    let shutdown = runtime.shutdown().await;

    // The report, from the stores (read without injected faults).
    s.local.set_faults(Faults::none());
    let (stage1_results, stage2_results) = count_results(blobs.as_ref(), &s.good).await?;
    let mut valid2 = 0;
    for j in &s.good {
        if let Ok(bytes) = blobs
            .get(RESULT_BUCKET, &format!("stage2/{}.json", j.key_safe()))
            .await
        {
            if serde_json::from_slice::<ImageStats>(&bytes).is_ok_and(|st| st.job_id == *j) {
                valid2 += 1;
            }
        }
    }
    let dead_letters = dead_letters(&[&s.stage1_dlq, &s.stage2_dlq]);
    let dead_ids: HashSet<&str> = dead_letters.iter().map(|d| d.job_id.as_str()).collect();
    let lost = (s.good.len() - valid2.min(s.good.len()))
        + s.bad
            .iter()
            .filter(|b| !dead_ids.contains(b.as_str()))
            .count();
    let t = stats
        .iter()
        .fold(ferry::StatsSnapshot::default(), |a, p| a + p.stats);
    let report = Report {
        jobs: s.good.len(),
        bad_inputs: s.bad.len(),
        stage1_results,
        stage2_results,
        lost,
        dead_lettered: dead_letters.len(),
        duplicates_dropped: t.duplicates(),
        restarts: t.restarts,
        leases_extended: t.leases_extended,
        retried: t.retried,
        resumed: t.resumed,
        elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        jobs_per_s: ((s.good.len() as f64 / elapsed.as_secs_f64()) * 10.0).round() / 10.0,
        dead_letters,
        stages: stats.into_iter().map(|p| (p.name, p.stats)).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("jobs                {}", report.jobs);
        println!("stage1_results      {}", report.stage1_results);
        println!("stage2_results      {}", report.stage2_results);
        println!("lost                {}", report.lost);
        println!(
            "dead_lettered       {} (bad inputs sent: {})",
            report.dead_lettered, report.bad_inputs
        );
        for d in &report.dead_letters {
            println!("  {} {}: {}", d.queue, d.job_id, d.reason);
        }
        println!("duplicates_dropped  {}", report.duplicates_dropped);
        println!("restarts            {}", report.restarts);
        println!("retried             {}", report.retried);
        println!("resumed             {}", report.resumed);
        println!("leases_extended     {}", report.leases_extended);
        println!("elapsed_s           {:.3}", report.elapsed_s);
        println!("jobs_per_s          {:.1}", report.jobs_per_s);
        println!(
            "shutdown            {} ms, {} leases held at exit",
            shutdown.elapsed_ms, shutdown.held_at_exit
        );
    }
    if report.lost > 0 {
        eprintln!("{} job(s) lost", report.lost);
        std::process::exit(1);
    }
    Ok(())
}
