//! The two-stage image pipeline, end to end.
//!
//! ```text
//! cargo run --release --example spot_pipeline
//! cargo run --release --example spot_pipeline -- --jobs 300 --chaos --seed 7 --bad-inputs 4 --json
//! AWS_ENDPOINT_URL=http://127.0.0.1:5000 cargo run --release --example spot_pipeline -- \
//!     --backend aws --provision --jobs 50 --json
//! ```
//!
//! Stage 1 reads a job (an S3 event notification or `{"bucket","key"}`;
//! an S3 event's job id names the object and its version, and an event with
//! several records is split into one job per record), resizes and blurs the
//! image, stores `stage1/<job-id>.png` and publishes a
//! notice to a topic that routes to the stage-2 queue; stage 2 stores
//! `stage2/<job-id>.json` with the image's statistics. The report is computed
//! by reading the stores and queues; the exit status is non-zero if any job
//! is lost. With `--worker` the process only runs its stages until SIGTERM.

mod args;
mod produce;
mod record;
mod report;
mod resources;

use std::time::{Duration, Instant};

use clap::Parser;
use ferry::backend::local::Faults;
use ferry::http::{HttpOptions, HttpServer};
use ferry::prelude::*;
use ferry::testkit::PanicInjector;
use ferry_actors::{Stage1, Stage2};

use args::{Args, Backend, Stage};
use resources::Resources;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Stands in for heavier work: sleeps before each job.
struct Slow<P> {
    inner: P,
    delay: Duration,
}

impl<P: Processor> Processor for Slow<P> {
    fn process(&mut self, job: &Job, ctx: &Context) -> std::result::Result<Output, ProcessError> {
        std::thread::sleep(self.delay);
        self.inner.process(job, ctx)
    }
}

fn pipelines(args: &Args, r: &Resources) -> Vec<Pipeline> {
    let (seed, delay) = (args.seed, Duration::from_millis(args.process_delay_ms));
    let panic_rate = if args.chaos { 0.05 } else { 0.0 };
    let aws = args.backend == Backend::Aws;
    let fifo = args.fifo;
    let visibility = Duration::from_secs(args.visibility_secs.unwrap_or(if aws { 30 } else { 4 }));
    let tune = move |c: &mut PipelineConfig| {
        c.visibility_timeout = visibility;
        // SQS counts visibility in whole seconds.
        c.retry_backoff_base = if aws {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        };
        c.retry_backoff_max = Duration::from_secs(if aws { 8 } else { 2 });
        c.max_receives = 8;
        // Short long polls: a draining worker waits for its open receives.
        c.receive_wait = Duration::from_secs(if aws { 2 } else { 1 });
        // FIFO: leases waiting behind their group's running job count too.
        c.max_in_flight = if fifo { 256 } else { 32 };
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let store = r.store.clone();
    let claims = move |p: Pipeline| match &store {
        Some(s) => p.idempotency(s.clone()),
        None => p,
    };
    let mut out = Vec::new();
    if args.stage != Stage::Two {
        out.push(claims(
            // S3 events: one job per object version however often S3
            // delivers the event, and one job per record.
            Stage1::pipeline(Pipeline::new("stage1"))
                .source(r.stage1.clone())
                .dead_letter(r.stage1_dlq.clone())
                .results(
                    record::results(r.blobs.clone()),
                    r.result_bucket.clone(),
                    "stage1/",
                    "png",
                )
                .reads_from(r.input_bucket.clone())
                .topic(record::topic(r.topic.clone(), "stage1"))
                .processor(move || record::Recorded {
                    inner: Slow {
                        inner: PanicInjector::new(Stage1::default(), seed, panic_rate),
                        delay,
                    },
                    stage: "stage1",
                })
                .configure(|c| {
                    tune(c);
                    c.workers = workers;
                }),
        ));
    }
    if args.stage != Stage::One {
        out.push(claims(
            Pipeline::new("stage2")
                .source(r.stage2.clone())
                .dead_letter(r.stage2_dlq.clone())
                .results(
                    record::results(r.blobs.clone()),
                    r.result_bucket.clone(),
                    "stage2/",
                    "json",
                )
                .processor(move || record::Recorded {
                    inner: PanicInjector::new(Stage2, seed ^ 0x5eed, panic_rate),
                    stage: "stage2",
                })
                .configure(|c| {
                    tune(c);
                    c.workers = 1;
                }),
        ));
    }
    out
}

async fn start(args: &Args, r: &Resources, http: Option<&HttpServer>) -> Result<RuntimeHandle> {
    let mut builder = Runtime::builder().shutdown_grace(Duration::from_secs(args.grace_secs));
    if let Some(server) = http {
        builder = builder.serve_http(server);
    }
    for mut p in pipelines(args, r) {
        if let Some(payloads) = &r.payloads {
            p = p.large_payloads(payloads.clone());
        }
        builder = builder.pipeline(p);
    }
    Ok(builder.start().await?)
}

/// Worker mode: run the stages until SIGTERM or ctrl-c, then drain.
async fn worker(
    args: &Args,
    r: &Resources,
    http: Option<&HttpServer>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let runtime = start(args, r, http).await?;
    let pid = std::process::id();
    let spot = if args.spot_watch {
        let imds = ferry::spot::imds_client(args.imds_endpoint.as_deref())?;
        let every = Duration::from_millis(args.spot_poll_ms);
        futures_util::future::Either::Left(async move {
            let n = ferry::spot::interruption_notice(imds, every).await;
            eprintln!(
                "spot interruption notice: {} at {}; draining",
                n.action, n.time
            );
        })
    } else {
        futures_util::future::Either::Right(std::future::pending::<()>())
    };
    let stop = async move {
        tokio::select! {
            _ = stop => {}
            _ = spot => {}
        }
    };
    eprintln!("worker {pid} running stage(s) {:?}", args.stage);
    tokio::pin!(stop);
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => eprintln!("stats {}", serde_json::to_string(&runtime.total())?),
        }
    }
    eprintln!("stats {}", serde_json::to_string(&runtime.total())?);
    let report = runtime.shutdown().await;
    eprintln!(
        "worker {} stopped: {}",
        std::process::id(),
        serde_json::to_string(&report)?
    );
    Ok(())
}

async fn settled(r: &Resources, produced: &produce::Produced) -> Result<(usize, bool)> {
    let (_, done2) = report::count_results(r, &produced.good).await?;
    let dead = r.stage1_dlq.depth().await?.total() + r.stage2_dlq.depth().await?.total();
    let drained = r.stage1.depth().await?.total() == 0 && r.stage2.depth().await?.total() == 0;
    let settled = done2 + dead;
    Ok((
        settled,
        drained && settled >= produced.good.len() + produced.bad.len(),
    ))
}

/// `--dlq list|redrive`: the dead-letter queues of the stages asked for.
async fn dead_letters(args: &Args, r: &Resources, op: args::DlqOp) -> Result<()> {
    let stages = [
        (Stage::One, "stage1", &r.stage1_dlq, &r.stage1),
        (Stage::Two, "stage2", &r.stage2_dlq, &r.stage2),
    ];
    for (stage, name, dlq, source) in stages {
        if args.stage != Stage::Both && args.stage != stage {
            continue;
        }
        match op {
            args::DlqOp::List => {
                let entries = ferry::dlq::list(dlq.as_ref(), 1000).await?;
                println!("{name}: {} in {}", entries.len(), dlq.name());
                for e in entries {
                    println!(
                        "  {}  receives {}  {}",
                        e.job_id.as_deref().unwrap_or(&e.message_id),
                        e.receive_count.map_or("?".into(), |n| n.to_string()),
                        e.reason.as_deref().unwrap_or("(no reason)")
                    );
                }
            }
            args::DlqOp::Redrive => {
                let options = ferry::dlq::RedriveOptions {
                    reason_contains: args.reason_contains.clone(),
                    ..Default::default()
                };
                let report = ferry::dlq::redrive(dlq.as_ref(), source.as_ref(), &options).await?;
                println!(
                    "{name}: redrive from {} to {}: scanned {}, moved {}, skipped {}, failed {}",
                    dlq.name(),
                    source.name(),
                    report.scanned,
                    report.moved,
                    report.skipped,
                    report.failed
                );
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Listen for SIGTERM from the first moment: a worker told to stop while
    // it starts up still exits cleanly.
    let stop = ferry::termination_signal();
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
            .map_or("", String::as_str);
        if !msg.starts_with("injected panic") {
            default_hook(info);
        }
    }));

    // ferry's endpoints (its Prometheus recorder with them) go in before
    // any pipeline registers its metrics, and outlive the runtime: the final
    // figures are scraped after the report.
    let http = match args.metrics_addr {
        Some(addr) => {
            let every = Duration::from_secs(args.depth_every_secs);
            let server = HttpServer::start(HttpOptions::new(addr).depth_every(every))?;
            let at = server.local_addr();
            eprintln!("health on http://{at}/healthz and http://{at}/readyz");
            eprintln!("metrics on http://{at}/metrics");
            Some(server)
        }
        None => None,
    };
    if let Some(dir) = &args.record {
        record::to_dir(dir)?;
    }
    let r = resources::open(&args).await?;
    if let Some(op) = args.dlq {
        return dead_letters(&args, &r, op).await;
    }
    if args.worker {
        return worker(&args, &r, http.as_ref(), stop).await;
    }
    record::keep_order();
    let produced = produce::produce(&args, &r).await?;
    let total = produced.good.len() + produced.bad.len();
    if !args.json {
        println!(
            "ferry spot_pipeline: {} jobs + {} bad inputs, {:?} backend, chaos {}",
            produced.good.len(),
            produced.bad.len(),
            args.backend,
            if args.chaos {
                format!("on (seed {})", args.seed)
            } else {
                "off".into()
            }
        );
    }
    if let (true, Some(local)) = (args.chaos, &r.local) {
        local.set_faults(Faults::chaos(args.seed));
    }

    let started = Instant::now();
    let runtime = start(&args, &r, http.as_ref()).await?;
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
    let poll = Duration::from_millis(if r.local.is_some() { 50 } else { 250 });
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let (n, done) = settled(&r, &produced).await?;
        let t = runtime.total();
        bar.set_position(n.min(total) as u64);
        bar.set_message(format!(
            "dup {} retry {} restart {}{}",
            t.duplicates(),
            t.retried,
            t.restarts,
            report::troubles(&runtime.health())
        ));
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    // Counters read after the drain, so the report has the final figures.
    let reader = runtime.stats_reader();
    let shutdown = runtime.shutdown().await;
    let stats = reader.stats();

    if let Some(local) = &r.local {
        // The report reads the stores without injected faults.
        local.set_faults(Faults::none());
    }
    let report = report::build(&r, &produced, stats, elapsed).await?;
    // Scrapes from now on see the final figures (counted before the report
    // is printed, so a scrape right after it ends the linger).
    let scraped = http.as_ref().map_or(0, HttpServer::metrics_scrapes);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
        println!(
            "shutdown            {} ms, {} leases held at exit",
            shutdown.elapsed_ms, shutdown.held_at_exit
        );
        println!(
            "io_thread_blocks    {} (longest {} ms)",
            shutdown.io_thread_blocks, shutdown.longest_io_block_ms
        );
    }
    if let Some(server) = &http {
        linger(
            server,
            scraped,
            Duration::from_secs(args.metrics_linger_secs),
        )
        .await;
        server.stop();
    }
    if let Some(failure) = report.failure() {
        eprintln!("{failure}");
        std::process::exit(1);
    }
    Ok(())
}

/// Keeps serving until a scrape after the `seen`-th has been answered, at
/// most `limit`.
async fn linger(server: &HttpServer, seen: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while server.metrics_scrapes() <= seen && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
