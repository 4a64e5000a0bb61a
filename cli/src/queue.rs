//! `ferry queue depth`: a queue's visible, in-flight and delayed counts.

use aws_sdk_sqs::types::QueueAttributeName as Qa;
use serde_json::json;

use crate::aws::Aws;
use crate::output::{Failure, Outcome};
use crate::DepthArgs;

/// Reads the queue's approximate counts. ferry's `Queue::depth` counts
/// delayed messages as visible, so the three counts come from SQS itself.
pub(crate) async fn depth(aws: &Aws, args: &DepthArgs) -> Result<Outcome, Failure> {
    let queue = aws.queue(&args.queue).await?;
    let out = aws
        .sqs
        .get_queue_attributes()
        .queue_url(queue.url())
        .attribute_names(Qa::ApproximateNumberOfMessages)
        .attribute_names(Qa::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(Qa::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| {
            let e = aws_sdk_sqs::error::DisplayErrorContext(e);
            Failure::doing(&format!("cannot read the depth of {}", queue.url()), e)
        })?;
    let count = |k: Qa| -> Result<usize, Failure> {
        let v = out
            .attributes()
            .and_then(|a| a.get(&k))
            .ok_or_else(|| Failure::new(format!("SQS did not answer {}", k.as_str())))?;
        v.parse()
            .map_err(|_| Failure::new(format!("SQS answered {} = {v:?}", k.as_str())))
    };
    let visible = count(Qa::ApproximateNumberOfMessages)?;
    let in_flight = count(Qa::ApproximateNumberOfMessagesNotVisible)?;
    let delayed = count(Qa::ApproximateNumberOfMessagesDelayed)?;
    let total = visible + in_flight + delayed;
    let json = json!({
        "queue": queue.url(),
        "visible": visible,
        "in_flight": in_flight,
        "delayed": delayed,
        "total": total,
    });
    let human = format!(
        "{}\nvisible    {visible}\nin_flight  {in_flight}\ndelayed    {delayed}\ntotal      {total}\n",
        queue.url()
    );
    Ok(Outcome::ok(json, human))
}
