//! The AWS backend: SQS, SNS and S3 through the AWS SDK.
//!
//! Configuration is the SDK's standard chain — `AWS_ENDPOINT_URL`,
//! `AWS_REGION`, profiles, instance roles — so pointing ferry at LocalStack,
//! ElasticMQ or a moto server needs no ferry-specific setting; or inject an
//! [`aws_config::SdkConfig`] of your own with [`AwsBackend::from_conf`].
//!
//! Resources are resolved (and their existence checked) when you ask for
//! them, so a missing queue, topic or bucket, or denied access, fails at
//! start-up with an error that names it. [`AwsBackend::create_queue`] and
//! friends provision what a run needs on a local endpoint.
//!
//! ```no_run
//! # async fn run() -> Result<(), ferry::BackendError> {
//! use ferry::backend::aws::{AwsBackend, AwsOptions};
//!
//! // moto and some LocalStack setups want path-style S3 addressing.
//! let aws = AwsBackend::load(AwsOptions { force_path_style: true, ..AwsOptions::default() }).await;
//! let jobs = aws.queue("jobs").await?;            // a name or a queue URL
//! let done = aws.topic("arn:aws:sns:us-east-1:123456789012:done").await?;
//! aws.check_bucket("results").await?;
//! # let _ = (jobs, done); Ok(()) }
//! ```

mod classify;
mod dynamo;
mod s3;
mod sns;
mod sqs;

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::types::QueueAttributeName as Qa;

pub use dynamo::DynamoIdempotencyStore;
pub use s3::S3Store;
pub use sns::SnsTopic;
pub use sqs::SqsQueue;

use crate::error::BackendError;
use classify::classify;

/// How to build the AWS clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsOptions {
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`
    /// (moto and some LocalStack setups need it; an IP endpoint gets it anyway).
    pub force_path_style: bool,
    /// Longest single attempt of any call; must exceed the long-polling wait
    /// (20 s), since the SDK's defaults set no read timeout.
    pub attempt_timeout: Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        Self {
            force_path_style: false,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// Settings for [`AwsBackend::create_queue`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSpec {
    /// A FIFO queue (the name must end in `.fifo`).
    pub fifo: bool,
    /// Default visibility timeout.
    pub visibility_timeout: Option<Duration>,
    /// Redrive to this dead-letter queue ARN after this many receives.
    pub redrive: Option<(String, u32)>,
}

/// SQS, SNS and S3 clients sharing one configuration. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AwsBackend {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

pub(crate) fn https_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl AwsBackend {
    /// Loads the standard configuration chain with default options.
    pub async fn from_env() -> Self {
        Self::load(AwsOptions::default()).await
    }

    /// Loads the standard configuration chain.
    pub async fn load(options: AwsOptions) -> Self {
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(3100))
                    .operation_attempt_timeout(options.attempt_timeout)
                    .build(),
            )
            .load()
            .await;
        Self::from_conf_with(&conf, &options)
    }

    /// Uses an SDK configuration of your own (with default options).
    pub fn from_conf(conf: &SdkConfig) -> Self {
        Self::from_conf_with(conf, &AwsOptions::default())
    }

    /// Uses an SDK configuration of your own. A configuration without an
    /// HTTP client gets ferry's (rustls).
    pub fn from_conf_with(conf: &SdkConfig, options: &AwsOptions) -> Self {
        let http = conf.http_client().unwrap_or_else(https_client);
        let sqs = aws_sdk_sqs::config::Builder::from(conf)
            .http_client(http.clone())
            .build();
        let sns = aws_sdk_sns::config::Builder::from(conf)
            .http_client(http.clone())
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(conf)
            .http_client(http.clone())
            .build();
        let s3 = aws_sdk_s3::config::Builder::from(conf)
            .http_client(http)
            .force_path_style(options.force_path_style)
            .build();
        Self {
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            sns: aws_sdk_sns::Client::from_conf(sns),
            s3: aws_sdk_s3::Client::from_conf(s3),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
        }
    }

    /// Resolves a queue by name or URL and checks that it exists.
    pub async fn queue(&self, name_or_url: &str) -> Result<Arc<SqsQueue>, BackendError> {
        let resource = format!("queue {name_or_url}");
        let url = if name_or_url.starts_with("http://") || name_or_url.starts_with("https://") {
            name_or_url.to_owned()
        } else {
            self.sqs
                .get_queue_url()
                .queue_name(name_or_url)
                .send()
                .await
                .map_err(|e| classify(e, &resource))?
                .queue_url()
                .ok_or_else(|| BackendError::not_found(resource.clone()))?
                .to_owned()
        };
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(Qa::QueueArn)
            .send()
            .await
            .map_err(|e| classify(e, &resource))?;
        let arn = attrs
            .attributes()
            .and_then(|a| a.get(&Qa::QueueArn))
            .cloned()
            .unwrap_or_default();
        let name = url.rsplit('/').next().unwrap_or(&url).to_owned();
        Ok(Arc::new(SqsQueue {
            client: self.sqs.clone(),
            url,
            name,
            arn,
        }))
    }

    /// Resolves a topic by ARN (or by name, searching the account's topics)
    /// and checks that it exists.
    pub async fn topic(&self, arn_or_name: &str) -> Result<Arc<SnsTopic>, BackendError> {
        let resource = format!("topic {arn_or_name}");
        let arn = if arn_or_name.starts_with("arn:") {
            self.sns
                .get_topic_attributes()
                .topic_arn(arn_or_name)
                .send()
                .await
                .map_err(|e| classify(e, &resource))?;
            arn_or_name.to_owned()
        } else {
            let suffix = format!(":{arn_or_name}");
            let mut token = None;
            loop {
                let out = self
                    .sns
                    .list_topics()
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| classify(e, &resource))?;
                if let Some(t) = out
                    .topics()
                    .iter()
                    .filter_map(|t| t.topic_arn())
                    .find(|a| a.ends_with(&suffix))
                {
                    break t.to_owned();
                }
                match out.next_token() {
                    Some(t) => token = Some(t.to_owned()),
                    None => return Err(BackendError::not_found(resource)),
                }
            }
        };
        Ok(Arc::new(SnsTopic {
            client: self.sns.clone(),
            arn,
        }))
    }

    /// Checks that a bucket exists and can be reached.
    pub async fn check_bucket(&self, bucket: &str) -> Result<(), BackendError> {
        self.s3
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| classify(e, &format!("bucket {bucket}")))?;
        Ok(())
    }

    /// The DynamoDB idempotency store in `table` (checked now: a missing
    /// table fails at start-up).
    pub async fn idempotency_store(
        &self,
        table: &str,
    ) -> Result<DynamoIdempotencyStore, BackendError> {
        let store = DynamoIdempotencyStore::new(self.dynamodb.clone(), table);
        store.check().await?;
        Ok(store)
    }

    /// Creates the idempotency store's table (on-demand capacity, key
    /// `job`, TTL on `ttl`) or returns the existing one.
    pub async fn create_idempotency_table(
        &self,
        table: &str,
    ) -> Result<DynamoIdempotencyStore, BackendError> {
        let store = DynamoIdempotencyStore::new(self.dynamodb.clone(), table);
        store.create_table().await?;
        Ok(store)
    }

    /// The S3 blob store.
    pub fn blobs(&self) -> Arc<S3Store> {
        Arc::new(S3Store {
            client: self.s3.clone(),
        })
    }

    /// Creates a queue (or returns the existing one of that name).
    pub async fn create_queue(
        &self,
        name: &str,
        spec: &QueueSpec,
    ) -> Result<Arc<SqsQueue>, BackendError> {
        let mut req = self.sqs.create_queue().queue_name(name);
        if spec.fifo {
            req = req.attributes(Qa::FifoQueue, "true");
        }
        if let Some(v) = spec.visibility_timeout {
            req = req.attributes(Qa::VisibilityTimeout, v.as_secs().to_string());
        }
        if let Some((dlq_arn, max)) = &spec.redrive {
            let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max.to_string()});
            req = req.attributes(Qa::RedrivePolicy, policy.to_string());
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify(e, &format!("queue {name}")))?;
        let url = out
            .queue_url()
            .ok_or_else(|| BackendError::not_found(format!("queue {name}")))?;
        self.queue(url).await
    }

    /// Creates a topic (or returns the existing one of that name).
    pub async fn create_topic(
        &self,
        name: &str,
        fifo: bool,
    ) -> Result<Arc<SnsTopic>, BackendError> {
        let mut req = self.sns.create_topic().name(name);
        if fifo {
            // Only set when true: some emulators read any value as true.
            req = req.attributes("FifoTopic", "true");
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify(e, &format!("topic {name}")))?;
        let arn = out
            .topic_arn()
            .ok_or_else(|| BackendError::not_found(format!("topic {name}")))?;
        Ok(Arc::new(SnsTopic {
            client: self.sns.clone(),
            arn: arn.to_owned(),
        }))
    }

    /// Subscribes a queue to a topic (raw delivery or the SNS envelope) and
    /// lets the topic send to the queue.
    pub async fn subscribe(
        &self,
        topic: &SnsTopic,
        queue: &SqsQueue,
        raw: bool,
    ) -> Result<(), BackendError> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue.arn(),
                "Condition": {"ArnEquals": {"aws:SourceArn": topic.arn()}}
            }]
        });
        let resource = format!("queue {}", queue.name);
        self.sqs
            .set_queue_attributes()
            .queue_url(queue.url())
            .attributes(Qa::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| classify(e, &resource))?;
        let mut req = self
            .sns
            .subscribe()
            .topic_arn(topic.arn())
            .protocol("sqs")
            .endpoint(queue.arn())
            .return_subscription_arn(true);
        if raw {
            req = req.attributes("RawMessageDelivery", "true");
        }
        req.send()
            .await
            .map_err(|e| classify(e, &format!("topic {}", topic.arn())))?;
        Ok(())
    }

    /// Has S3 send a bucket's event notifications of these types (say
    /// `s3:ObjectCreated:*`) to a queue, and lets S3 send to it: the queue's
    /// access policy is replaced by one that allows the bucket. S3 then
    /// sends the queue an `s3:TestEvent` (which pipelines delete on receipt,
    /// see `PipelineConfig::drop_s3_test_events`). Replaces the bucket's
    /// notification configuration.
    pub async fn notify_queue(
        &self,
        bucket: &str,
        queue: &SqsQueue,
        events: &[&str],
    ) -> Result<(), BackendError> {
        use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue.arn(),
                "Condition": {"ArnLike": {"aws:SourceArn": format!("arn:aws:s3:::{bucket}")}}
            }]
        });
        self.sqs
            .set_queue_attributes()
            .queue_url(queue.url())
            .attributes(Qa::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| classify(e, &format!("queue {}", queue.name)))?;
        let target = QueueConfiguration::builder()
            .queue_arn(queue.arn())
            .set_events(Some(events.iter().map(|e| Event::from(*e)).collect()))
            .build()
            .map_err(|e| BackendError::Invalid {
                message: e.to_string(),
            })?;
        self.s3
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(target)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(e, &format!("bucket {bucket}")))?;
        Ok(())
    }

    /// Creates a bucket in the client's region (an existing one of ours is fine).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), BackendError> {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        let mut req = self.s3.create_bucket().bucket(bucket);
        let region = self.s3.config().region().map(|r| r.to_string());
        if let Some(r) = region.filter(|r| r != "us-east-1") {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(r.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(e) => Err(classify(e, &format!("bucket {bucket}"))),
        }
    }
}
