//! The AWS side of the command: the standard configuration chain loaded
//! once, ferry's AWS backend built from it, and queues resolved by URL or
//! name.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use ferry::backend::aws::{AwsBackend, AwsOptions, SqsQueue};

use crate::output::Failure;

/// ferry's AWS backend, and a bare SQS client on the same configuration
/// for what ferry's `Queue` does not say (the delayed count).
#[derive(Debug, Clone)]
pub(crate) struct Aws {
    /// ferry's backend: queues, the producer and the `dlq` module go through it.
    pub(crate) backend: AwsBackend,
    /// The SDK's SQS client.
    pub(crate) sqs: aws_sdk_sqs::Client,
}

impl Aws {
    /// Loads the SDK's standard chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// profiles, credentials, instance roles) with the HTTP client and
    /// timeouts ferry's own `AwsBackend::load` uses: rustls on ring, 3.1 s
    /// to connect, 30 s per attempt.
    pub(crate) async fn load() -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let options = AwsOptions::default();
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(3100))
                    .operation_attempt_timeout(options.attempt_timeout)
                    .build(),
            )
            .load()
            .await;
        Self {
            backend: AwsBackend::from_conf_with(&conf, &options),
            sqs: aws_sdk_sqs::Client::new(&conf),
        }
    }

    /// A queue by URL or name (a name is resolved with GetQueueUrl); a
    /// missing queue or denied access fails naming it.
    pub(crate) async fn queue(&self, url_or_name: &str) -> Result<Arc<SqsQueue>, Failure> {
        self.backend
            .queue(url_or_name)
            .await
            .map_err(|e| Failure::doing(&format!("cannot open queue {url_or_name}"), e))
    }
}

/// A queue's name from its URL or name (the URL's last path segment).
pub(crate) fn queue_name(url_or_name: &str) -> &str {
    url_or_name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url_or_name)
}
