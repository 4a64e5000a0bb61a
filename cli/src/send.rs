//! `ferry send`: one job through ferry's producer, so its id, FIFO
//! deduplication and checks are the producer's.

use std::io::Read;

use ferry::producer::{NewJob, Producer};
use serde_json::json;

use crate::aws::Aws;
use crate::output::{Failure, Outcome};
use crate::SendArgs;

/// The body: the argument, or the file (`-`: standard input), as UTF-8.
fn body(args: &SendArgs) -> Result<String, Failure> {
    match (&args.body, &args.file) {
        (Some(b), _) => Ok(b.clone()),
        (None, Some(path)) => {
            let mut bytes = Vec::new();
            let read = if path.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes).map(|_| ())
            } else {
                std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
            };
            read.map_err(|e| Failure::doing(&format!("cannot read {}", path.display()), e))?;
            String::from_utf8(bytes).map_err(|_| {
                Failure::new(format!(
                    "{} is not UTF-8 text (a queue message body is text)",
                    path.display()
                ))
            })
        }
        (None, None) => Err(Failure::new("no body: give BODY or --file PATH")),
    }
}

/// Sends the job and reports the id the pipeline will see.
pub(crate) async fn send(aws: &Aws, args: &SendArgs) -> Result<Outcome, Failure> {
    let body = body(args)?;
    let queue = aws.queue(&args.queue).await?;
    let mut job = NewJob::new(body);
    if let Some(id) = &args.job_id {
        job = job.id(id);
    }
    if let Some(group) = &args.group {
        job = job.group(group);
    }
    let sent = Producer::new(queue.clone())
        .send(job)
        .await
        .map_err(|e| Failure::doing(&format!("queue {}", queue.url()), e))?;
    let json = json!({
        "queue": queue.url(),
        "job_id": sent.job_id.as_str(),
        "message_id": sent.message_id,
    });
    let human = format!(
        "sent job {} (message {}) to {}\n",
        sent.job_id.as_str(),
        sent.message_id,
        queue.url()
    );
    Ok(Outcome::ok(json, human))
}
