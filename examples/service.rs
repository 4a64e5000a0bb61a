//! The smallest service, as the README shows it: one pipeline on SQS and S3
//! (or LocalStack, moto), a closure as its processor, run until SIGTERM.

use ferry::prelude::*;

#[tokio::main]
async fn main() -> Result<(), FerryError> {
    let aws = ferry::backend::aws::AwsBackend::from_env().await; // AWS_REGION, AWS_ENDPOINT_URL, profiles, roles
    let squares = Pipeline::new("squares")
        .source(aws.queue("squares").await?)
        .dead_letter(aws.queue("squares-dlq").await?)
        .results(aws.blobs(), "squares-results", "out/", "txt") // s3://squares-results/out/<job-id>.txt
        .handler(|job: &Job, _ctx: &Context| {
            let n: u64 = job.body.trim().parse().or_bad_input()?; // not a number: dead-lettered, with why
            Ok(Output::text((n * n).to_string()))
        });
    let runtime = Runtime::builder().pipeline(squares).start().await?;
    runtime.run_until_signal().await.map(drop) // on SIGTERM: stop, drain, exit
}
