//! Spot interruption notices: an opt-in watcher of the EC2 instance metadata
//! service (IMDSv2, through `aws-config`'s IMDS client) whose future
//! completes when the instance is about to be reclaimed. Hand it to
//! [`RuntimeHandle::run_until`](crate::RuntimeHandle::run_until) and ferry
//! drains exactly as on SIGTERM:
//!
//! ```no_run
//! # async fn serve(runtime: ferry::RuntimeHandle) -> Result<(), ferry::FerryError> {
//! use std::time::Duration;
//!
//! let imds = ferry::spot::imds_client(None)?; // AWS_EC2_METADATA_SERVICE_ENDPOINT, else the default
//! let notice = ferry::spot::interruption_notice(imds, Duration::from_secs(5));
//! let signal = ferry::termination_signal();
//! let report = runtime
//!     .run_until(async {
//!         tokio::select! {
//!             n = notice => eprintln!("spot interruption: {} at {}", n.action, n.time),
//!             _ = signal => {}
//!         }
//!     })
//!     .await?;
//! assert_eq!(report.held_at_exit, 0);
//! # Ok(()) }
//! ```
//!
//! EC2 answers `GET /latest/meta-data/spot/instance-action` with 404 until
//! the instance is marked for interruption, then with
//! `{"action": "terminate" | "stop" | "hibernate", "time": "…"}` about two
//! minutes ahead.

use std::time::Duration;

use serde::Deserialize;

pub use aws_config::imds::Client as ImdsClient;

use crate::error::FerryError;

/// The metadata path of a spot instance's pending action.
pub const INSTANCE_ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";

/// A spot interruption notice, as the metadata service gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InterruptionNotice {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When it happens (ISO 8601, UTC).
    pub time: String,
}

/// An IMDSv2 client with ferry's HTTP client (rustls) and short timeouts.
/// `endpoint` overrides the metadata service's address (for example a
/// local fake, `http://127.0.0.1:8111`); `None` takes
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the standard address.
pub fn imds_client(endpoint: Option<&str>) -> Result<ImdsClient, FerryError> {
    let provider = aws_config::provider_config::ProviderConfig::default()
        .with_http_client(crate::backend::aws::https_client());
    let mut builder = ImdsClient::builder()
        .configure(&provider)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .max_attempts(2);
    if let Some(endpoint) = endpoint {
        builder = builder
            .endpoint(endpoint)
            .map_err(|e| FerryError::Runtime(format!("bad metadata endpoint {endpoint}: {e}")))?;
    }
    Ok(builder.build())
}

/// Asks once: `Ok(None)` when no interruption is scheduled (404).
pub async fn check_interruption(
    client: &ImdsClient,
) -> Result<Option<InterruptionNotice>, FerryError> {
    use aws_config::imds::client::error::ImdsError;
    match client.get(INSTANCE_ACTION_PATH).await {
        Ok(body) => serde_json::from_str(body.as_ref()).map(Some).map_err(|e| {
            FerryError::Runtime(format!("unreadable spot instance-action notice: {e}"))
        }),
        Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
        Err(e) => Err(FerryError::Runtime(format!(
            "instance metadata service: {}",
            error_chain(&e)
        ))),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Polls every `every` until an interruption notice arrives, and returns it.
/// Errors (no metadata service, a refusal) are logged and polling goes on.
pub async fn interruption_notice(client: ImdsClient, every: Duration) -> InterruptionNotice {
    let mut failures = 0u32;
    loop {
        match check_interruption(&client).await {
            Ok(Some(notice)) => {
                tracing::warn!(action = %notice.action, time = %notice.time,
                    "spot interruption notice: draining");
                return notice;
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                // Say it once, then quietly (every failure at debug level).
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot read spot interruption notices; will keep trying");
                } else {
                    tracing::debug!(error = %e, failures, "spot notice check failed");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
