//! The queues, topic and buckets of a run, on either backend.

use std::sync::Arc;
use std::time::Duration;

use ferry::backend::aws::{AwsBackend, AwsOptions, QueueSpec};
use ferry::backend::local::LocalIdempotencyStore;
use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, Queue, Topic};
use ferry::idempotency::IdempotencyStore;

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
    /// The idempotency store (with --exactly-once).
    pub(crate) store: Option<Arc<dyn IdempotencyStore>>,
    /// The embedded backend, for fault injection (None on AWS).
    pub(crate) local: Option<LocalBackend>,
    /// With --large-payloads: where bodies over 256 KiB go; with
    /// --trust-payloads, also the other buckets pointers may name.
    pub(crate) payloads: Option<ferry::payload::LargePayloads>,
}

/// The redrive policy is the backstop for a message that kills its worker
/// every time; ferry dead-letters sooner, with a reason.
const REDRIVE_AFTER: u32 = 10;

pub(crate) async fn open(args: &Args) -> Result<Resources> {
    let mut r = match args.backend {
        Backend::Local => local(args),
        Backend::Aws => aws(args).await?,
    };
    if args.large_payloads || !args.trust_payloads.is_empty() {
        let mut payloads =
            ferry::payload::LargePayloads::new(r.blobs.clone(), r.result_bucket.clone())
                .prefix("payloads/");
        for bucket in &args.trust_payloads {
            payloads = payloads.trust(bucket.clone());
        }
        r.payloads = Some(payloads);
    }
    Ok(r)
}

/// A queue or topic name, with `.fifo` when the run is FIFO.
fn named(args: &Args, base: &str) -> String {
    if args.fifo {
        format!("{base}.fifo")
    } else {
        base.to_owned()
    }
}

fn local(args: &Args) -> Resources {
    let local = LocalBackend::new();
    let fifo = QueueOptions {
        fifo: args.fifo,
        ..QueueOptions::default()
    };
    let stage1_dlq = local.create_queue(&named(args, "stage1-dlq"), fifo.clone());
    let stage2_dlq = local.create_queue(&named(args, "stage2-dlq"), fifo.clone());
    let redrive = |dlq: &Arc<ferry::backend::local::LocalQueue>| QueueOptions {
        redrive: Some((dlq.clone(), REDRIVE_AFTER)),
        ..fifo.clone()
    };
    let stage1 = local.create_queue(&named(args, "stage1-jobs"), redrive(&stage1_dlq));
    let stage2 = local.create_queue(&named(args, "stage2-jobs"), redrive(&stage2_dlq));
    let topic = local.create_topic(&named(args, "stage1-done"), args.fifo);
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
        store: args
            .exactly_once
            .then(|| Arc::new(LocalIdempotencyStore::new()) as Arc<dyn IdempotencyStore>),
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
        let fifo = args.fifo;
        let dlq = |name: String| {
            let aws = aws.clone();
            async move {
                let spec = QueueSpec {
                    fifo,
                    ..QueueSpec::default()
                };
                aws.create_queue(&name, &spec).await
            }
        };
        let stage1_dlq = dlq(named(args, &format!("{p}-stage1-dlq"))).await?;
        let stage2_dlq = dlq(named(args, &format!("{p}-stage2-dlq"))).await?;
        let spec = |dlq_arn: &str| QueueSpec {
            fifo,
            visibility_timeout: visibility,
            redrive: Some((dlq_arn.to_owned(), REDRIVE_AFTER)),
        };
        let stage1 = aws
            .create_queue(
                &named(args, &format!("{p}-stage1")),
                &spec(stage1_dlq.arn()),
            )
            .await?;
        let stage2 = aws
            .create_queue(
                &named(args, &format!("{p}-stage2")),
                &spec(stage2_dlq.arn()),
            )
            .await?;
        let topic = aws
            .create_topic(&named(args, &format!("{p}-stage1-done")), fifo)
            .await?;
        let table = format!("{p}-idempotency");
        let store = if args.exactly_once {
            Some(Arc::new(aws.create_idempotency_table(&table).await?) as Arc<dyn IdempotencyStore>)
        } else {
            None
        };
        aws.subscribe(&topic, &stage2, false).await?;
        let (input_bucket, result_bucket) = (format!("{p}-input"), format!("{p}-results"));
        aws.create_bucket(&input_bucket).await?;
        aws.create_bucket(&result_bucket).await?;
        eprintln!(
            "provisioned: --stage1-queue {} --stage1-dlq {} --stage2-queue {} --stage2-dlq {} --topic {} --input-bucket {input_bucket} --result-bucket {result_bucket} --table {table}",
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
            store,
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
        store: match args.exactly_once {
            true => Some(Arc::new(
                aws.idempotency_store(required(&args.table, "--table")?)
                    .await?,
            )),
            false => None,
        },
        input_bucket,
        result_bucket,
        local: None,
        payloads: None,
    })
}
