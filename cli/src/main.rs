//! The `ferry` command: its arguments, and the exit status and output of
//! every subcommand (the work itself is in the modules below).
//!
//! Exit status: 0 success, 1 a failed check or operation, 2 a usage error.
//! `--json` prints one JSON object on stdout, failures included.

mod aws;
mod dlq;
mod health;
mod output;
mod queue;
mod send;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use output::{Failure, Outcome};

/// Operate ferry queues: dead-letter queues, depths, jobs, readiness.
///
/// AWS configuration is the SDK's standard chain (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_PROFILE`, credentials, instance roles); nothing of
/// ferry's own.
#[derive(Debug, Parser)]
#[command(name = "ferry", version)]
struct Cli {
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead-letter queues: list entries and why they are there, redrive them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queues: read their depth.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send one job through ferry's producer (its job id and checks).
    Send(SendArgs),
    /// GET a ferry service's readiness URL: exit 0 on a 2xx answer, 1 otherwise.
    Health(HealthArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List entries (job id, reason, source queue, receive count, body size)
    /// without consuming them.
    List(ListArgs),
    /// Move entries back to their source queue (sent first, deleted from the
    /// dead-letter queue once the send succeeded).
    Redrive(RedriveArgs),
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Visible, in-flight and delayed message counts (approximate, as SQS gives them).
    Depth(DepthArgs),
}

/// `ferry dlq list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The dead-letter queue: a URL or a name.
    #[arg(long)]
    pub(crate) queue: String,
    /// List at most this many entries.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: usize,
}

/// `ferry dlq redrive`.
#[derive(Debug, Args)]
pub(crate) struct RedriveArgs {
    /// The dead-letter queue: a URL or a name.
    #[arg(long)]
    pub(crate) queue: String,
    /// The queue to move entries to: a URL or a name.
    #[arg(long)]
    pub(crate) to: String,
    /// Only entries whose source queue (`ferry-source-queue`) is this name
    /// (or URL); `*` for any source. Default: the `--to` queue's name.
    #[arg(long, value_name = "S")]
    pub(crate) source_filter: Option<String>,
    /// Only entries whose reason (`ferry-dlq-reason`) contains this text.
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason_filter: Option<String>,
    /// Count what would be moved; move nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Move at most this many entries.
    #[arg(long, value_name = "N")]
    pub(crate) max: Option<usize>,
}

/// `ferry queue depth`.
#[derive(Debug, Args)]
pub(crate) struct DepthArgs {
    /// The queue: a URL or a name.
    #[arg(long)]
    pub(crate) queue: String,
}

/// `ferry send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The queue: a URL or a name.
    #[arg(long)]
    pub(crate) queue: String,
    /// The job's id (`ferry-job-id`); by default the producer gives it one.
    #[arg(long, value_name = "ID")]
    pub(crate) job_id: Option<String>,
    /// The FIFO message group (required on FIFO queues, refused on others).
    #[arg(long, value_name = "G")]
    pub(crate) group: Option<String>,
    /// The job's body.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(crate) body: Option<String>,
    /// Read the body from this file (`-`: standard input).
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
}

/// `ferry health`.
#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The readiness URL, e.g. `http://127.0.0.1:9000/readyz` (plain HTTP).
    pub(crate) url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub(crate) timeout: f64,
}

/// Runs an AWS-backed command on a runtime of its own.
fn on_aws<F>(run: impl FnOnce(aws::Aws) -> F) -> Result<Outcome, Failure>
where
    F: std::future::Future<Output = Result<Outcome, Failure>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async { run(aws::Aws::load().await).await })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Dlq(DlqCommand::List(a)) => on_aws(|aws| async move { dlq::list(&aws, &a).await }),
        Command::Dlq(DlqCommand::Redrive(a)) => {
            on_aws(|aws| async move { dlq::redrive(&aws, &a).await })
        }
        Command::Queue(QueueCommand::Depth(a)) => {
            on_aws(|aws| async move { queue::depth(&aws, &a).await })
        }
        Command::Send(a) => on_aws(|aws| async move { send::send(&aws, &a).await }),
        Command::Health(a) => health::check(&a),
    };
    output::finish(result, cli.json)
}
