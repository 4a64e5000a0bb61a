//! Command-line flags.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    /// The embedded backend, in this process.
    Local,
    /// SQS, SNS and S3 through the AWS SDK's standard configuration chain
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, profiles, instance roles).
    Aws,
}

/// An operator command on the dead-letter queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DlqOp {
    /// Print each entry's job id, reason and receive count.
    List,
    /// Move entries back to their source queue (then delete them from the
    /// dead-letter queue); a redriven job runs again.
    Redrive,
}

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Stage {
    #[value(name = "1")]
    One,
    #[value(name = "2")]
    Two,
    Both,
}

/// The two-stage image pipeline: stage 1 resizes and blurs each source image
/// into `stage1/<job-id>.png` and announces it on a topic routed to the
/// stage-2 queue; stage 2 writes `stage2/<job-id>.json` with grey-level
/// statistics. Without `--worker` it also produces the jobs, waits for them
/// and prints a report computed from the stores; the exit status is non-zero
/// if any job is lost.
#[derive(Parser, Debug)]
#[command(version)]
pub(crate) struct Args {
    /// Backend.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub(crate) backend: Backend,
    /// Synthetic jobs to generate (ignored with --input).
    #[arg(long, default_value_t = 200)]
    pub(crate) jobs: usize,
    /// Read source images (PNG or JPEG) from this directory instead.
    #[arg(long)]
    pub(crate) input: Option<PathBuf>,
    /// Side of the synthetic images, in pixels.
    #[arg(long, default_value_t = 384)]
    pub(crate) side: u32,
    /// Inject processor panics and, on the embedded backend, duplicate and
    /// concurrent deliveries, redeliveries after delete and failing calls.
    #[arg(long)]
    pub(crate) chaos: bool,
    /// Seed for the synthetic images and every injected fault.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Add this many malformed jobs (bad JSON, missing object, not an image,
    /// decompression bomb, in turn); each must end in the dead-letter queue.
    #[arg(long, default_value_t = 0)]
    pub(crate) bad_inputs: usize,
    /// Stage-1 worker threads (default: one per core).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Give up waiting for the jobs after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
    /// Offload message bodies over 256 KiB to the result bucket
    /// (`payloads/`, extended-client pointers), on both stages and in the
    /// producer; pointer objects are deleted after their messages.
    #[arg(long)]
    pub(crate) large_payloads: bool,
    /// Follow AWS extended-client pointers (Python, Java, …) to any object
    /// of this bucket, as well as ferry's own under `payloads/` in the result
    /// bucket (may be given more than once). Their objects are left in
    /// place: only objects ferry offloaded for a job are deleted after it.
    #[arg(long, value_name = "BUCKET")]
    pub(crate) trust_payloads: Vec<String>,
    /// Pad each job message with this many bytes (with --large-payloads,
    /// more than 262144 makes every job a large payload).
    #[arg(long, default_value_t = 0)]
    pub(crate) pad_bytes: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// FIFO queues and a FIFO topic: the jobs are spread over --groups
    /// message groups, each processed one message at a time, in order.
    #[arg(long)]
    pub(crate) fifo: bool,
    /// Message groups of the produced jobs (with --fifo).
    #[arg(long, default_value_t = 16)]
    pub(crate) groups: usize,
    /// Claim every job in an idempotency store before running it (in memory
    /// on the embedded backend, DynamoDB on AWS), so no job runs twice
    /// across workers or after the queue's deduplication window.
    #[arg(long)]
    pub(crate) exactly_once: bool,
    /// Serve ferry's HTTP endpoints on this address (e.g. 127.0.0.1:9464)
    /// for the whole run: /healthz, /readyz (every stage's health, 503 when
    /// one is not ready) and /metrics (Prometheus text, with each stage's
    /// queue depth and backlog per worker).
    #[arg(long)]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// After the report, keep serving metrics until they are scraped once,
    /// at most this many seconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) metrics_linger_secs: u64,
    /// Seconds between two reads of each stage queue's depth for the
    /// /metrics gauges.
    #[arg(long, default_value_t = 10)]
    pub(crate) depth_every_secs: u64,

    /// Operator command on the dead-letter queues of --stage, instead of a
    /// run: `list` or `redrive`.
    #[arg(long, value_enum)]
    pub(crate) dlq: Option<DlqOp>,
    /// With `--dlq redrive`: only entries whose reason contains this text.
    #[arg(long)]
    pub(crate) reason_contains: Option<String>,

    /// Run as a worker only: no producing, no report; stop on SIGTERM or
    /// ctrl-c with a graceful drain.
    #[arg(long)]
    pub(crate) worker: bool,
    /// Stages this process runs.
    #[arg(long, value_enum, default_value_t = Stage::Both)]
    pub(crate) stage: Stage,
    /// Visibility timeout of each lease, in seconds (kept alive by the lease
    /// keeper while a job runs).
    #[arg(long)]
    pub(crate) visibility_secs: Option<u64>,
    /// Extra time each stage-1 job takes, to stand in for heavier work.
    #[arg(long, default_value_t = 0)]
    pub(crate) process_delay_ms: u64,
    /// Append one JSON line per successful processor run, result write and
    /// notice to `DIR/<pid>.log` as each happens (tests count effects
    /// across processes with it).
    #[arg(long, value_name = "DIR")]
    pub(crate) record: Option<PathBuf>,
    /// Seconds a draining worker lets started jobs finish.
    #[arg(long, default_value_t = 30)]
    pub(crate) grace_secs: u64,
    /// Worker: also drain on a spot interruption notice, polling the EC2
    /// instance metadata service (IMDSv2) for one.
    #[arg(long)]
    pub(crate) spot_watch: bool,
    /// Worker: the metadata service's address for --spot-watch (default:
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT, else EC2's own).
    #[arg(long)]
    pub(crate) imds_endpoint: Option<String>,
    /// Worker: milliseconds between two --spot-watch checks.
    #[arg(long, default_value_t = 5000)]
    pub(crate) spot_poll_ms: u64,

    /// AWS: create the buckets, queues (with dead-letter queues and a redrive
    /// policy), topic and subscription this run needs, named after --prefix.
    #[arg(long)]
    pub(crate) provision: bool,
    /// AWS: name prefix of provisioned resources.
    #[arg(long, default_value = "ferry")]
    pub(crate) prefix: String,
    /// AWS: address S3 buckets path-style (moto and some LocalStack setups).
    #[arg(long)]
    pub(crate) s3_path_style: bool,
    /// AWS: bucket of the source images.
    #[arg(long)]
    pub(crate) input_bucket: Option<String>,
    /// AWS: bucket of the results.
    #[arg(long)]
    pub(crate) result_bucket: Option<String>,
    /// AWS: stage-1 queue (name or URL).
    #[arg(long)]
    pub(crate) stage1_queue: Option<String>,
    /// AWS: stage-1 dead-letter queue (name or URL).
    #[arg(long)]
    pub(crate) stage1_dlq: Option<String>,
    /// AWS: stage-2 queue (name or URL).
    #[arg(long)]
    pub(crate) stage2_queue: Option<String>,
    /// AWS: stage-2 dead-letter queue (name or URL).
    #[arg(long)]
    pub(crate) stage2_dlq: Option<String>,
    /// AWS: topic stage 1 announces results on (ARN or name).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// AWS: DynamoDB table of the idempotency store (with --exactly-once).
    #[arg(long)]
    pub(crate) table: Option<String>,
}
