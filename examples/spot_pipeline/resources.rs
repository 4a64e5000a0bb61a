//! The queues, topic and buckets of a run, on either backend.

use std::sync::Arc;
use std::time::Duration;

use ferry::backend::aws::{AwsBackend, AwsOptions, QueueSpec};
use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, Queue, Topic};

use crate::args::{Args, Backend};
use crate::Result;

/// Everything a run touches.
pub(crate) struct Resources {
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) input_bucket: String,
    pub(crate) result_bucket: String,
    pub(crate) stage1: Arc<dyn Queue>,
    pub(crate) stage1_dlq: Arc<dyn Queue>,
    pub(crate) stage2: Arc<dyn Queue>,
    pub(crate) stage2_dlq: Arc<dyn Queue>,
    pub(crate) topic: Arc<dyn Topic>,
    /// The embedded backend, for fault injection (None on AWS).
    pub(crate) local: Option<LocalBackend>,
    /// With --large-payloads: where bodies over 256 KiB go.
    pub(crate) payloads: Option<ferry::payload::LargePayloads>,
}

/// The redrive policy is the backstop for a message that kills its worker
/// every time; ferry dead-letters sooner, with a reason.
const REDRIVE_AFTER: u32 = 10;

pub(crate) async fn open(args: &Args) -> Result<Resources> {
    let mut r = match args.backend {
        Backend::Local => local(),
        Backend::Aws => aws(args).await?,
    };
    if args.large_payloads {
        r.payloads = Some(
            ferry::payload::LargePayloads::new(r.blobs.clone(), r.result_bucket.clone())
                .prefix("payloads/"),
        );
    }
    Ok(r)
}

fn local() -> Resources {
    let local = LocalBackend::new();
    let stage1_dlq = local.create_queue("stage1-dlq", QueueOptions::default());
    let stage2_dlq = local.create_queue("stage2-dlq", QueueOptions::default());
    let redrive = |dlq: &Arc<ferry::backend::local::LocalQueue>| QueueOptions {
        redrive: Some((dlq.clone(), REDRIVE_AFTER)),
        ..QueueOptions::default()
    };
    let stage1 = local.create_queue("stage1-jobs", redrive(&stage1_dlq));
    let stage2 = local.create_queue("stage2-jobs", redrive(&stage2_dlq));
    let topic = local.create_topic("stage1-done", false);
    // Not raw: stage 2 reads the SNS envelope, as it would on AWS by default.
    local.subscribe(&topic, &stage2, false);
    Resources {
        blobs: local.blobs(),
        input_bucket: "ferry-input".into(),
        result_bucket: "ferry-results".into(),
        stage1,
        stage1_dlq,
        stage2,
        stage2_dlq,
        topic,
        local: Some(local),
        payloads: None,
    }
}

fn required<'a>(value: &'a Option<String>, flag: &str) -> Result<&'a str> {
    value
        .as_deref()
        .ok_or_else(|| format!("--backend aws needs {flag} (or --provision)").into())
}

async fn aws(args: &Args) -> Result<Resources> {
    let aws = AwsBackend::load(AwsOptions {
        force_path_style: args.s3_path_style,
        ..AwsOptions::default()
    })
    .await;
    if args.provision {
        let p = &args.prefix;
        let visibility = Some(Duration::from_secs(30));
        let dlq = |name: String| {
            let aws = aws.clone();
            async move { aws.create_queue(&name, &QueueSpec::default()).await }
        };
        let stage1_dlq = dlq(format!("{p}-stage1-dlq")).await?;
        let stage2_dlq = dlq(format!("{p}-stage2-dlq")).await?;
        let spec = |dlq_arn: &str| QueueSpec {
            visibility_timeout: visibility,
            redrive: Some((dlq_arn.to_owned(), REDRIVE_AFTER)),
            ..QueueSpec::default()
        };
        let stage1 = aws
            .create_queue(&format!("{p}-stage1"), &spec(stage1_dlq.arn()))
            .await?;
        let stage2 = aws
            .create_queue(&format!("{p}-stage2"), &spec(stage2_dlq.arn()))
            .await?;
        let topic = aws.create_topic(&format!("{p}-stage1-done"), false).await?;
        aws.subscribe(&topic, &stage2, false).await?;
        let (input_bucket, result_bucket) = (format!("{p}-input"), format!("{p}-results"));
        aws.create_bucket(&input_bucket).await?;
        aws.create_bucket(&result_bucket).await?;
        eprintln!(
            "provisioned: --stage1-queue {} --stage1-dlq {} --stage2-queue {} --stage2-dlq {} --topic {} --input-bucket {input_bucket} --result-bucket {result_bucket}",
            stage1.url(), stage1_dlq.url(), stage2.url(), stage2_dlq.url(), topic.arn()
        );
        return Ok(Resources {
            blobs: aws.blobs(),
            input_bucket,
            result_bucket,
            stage1,
            stage1_dlq,
            stage2,
            stage2_dlq,
            topic,
            local: None,
            payloads: None,
        });
    }
    // Named resources: each is checked now, so a missing one fails at start-up.
    let (input_bucket, result_bucket) = (
        required(&args.input_bucket, "--input-bucket")?.to_owned(),
        required(&args.result_bucket, "--result-bucket")?.to_owned(),
    );
    aws.check_bucket(&input_bucket).await?;
    aws.check_bucket(&result_bucket).await?;
    Ok(Resources {
        blobs: aws.blobs(),
        stage1: aws
            .queue(required(&args.stage1_queue, "--stage1-queue")?)
            .await?,
        stage1_dlq: aws
            .queue(required(&args.stage1_dlq, "--stage1-dlq")?)
            .await?,
        stage2: aws
            .queue(required(&args.stage2_queue, "--stage2-queue")?)
            .await?,
        stage2_dlq: aws
            .queue(required(&args.stage2_dlq, "--stage2-dlq")?)
            .await?,
        topic: aws.topic(required(&args.topic, "--topic")?).await?,
        input_bucket,
        result_bucket,
        local: None,
        payloads: None,
    })
}
