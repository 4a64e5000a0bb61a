//! The producer side: source images in the input bucket and one job message
//! each, half as S3 event notifications, half as `{"bucket","key"}`.

use ferry::backend::{ObjectMeta, OutgoingMessage};
use ferry::prelude::*;
use ferry::producer::{NewJob, Producer};
use ferry::JOB_ID_ATTRIBUTE;
use ferry_actors::samples;

use crate::args::Args;
use crate::resources::Resources;
use crate::Result;

/// The jobs sent: good ones, and bad inputs that must be dead-lettered.
pub(crate) struct Produced {
    pub(crate) good: Vec<JobId>,
    /// The input object of each good job, in the same order.
    pub(crate) good_keys: Vec<String>,
    /// Whether the good jobs are the user's own files (--input), which may
    /// turn out to be bad input, rather than images made to be valid.
    pub(crate) user_files: bool,
    pub(crate) bad: Vec<JobId>,
    /// Job messages sent as large-payload pointers.
    pub(crate) offloaded: usize,
    /// The FIFO group of each good job (None without --fifo), in send order.
    pub(crate) good_groups: Vec<Option<String>>,
}

/// On FIFO queues: the job's message group and a deduplication id.
fn fifo(m: OutgoingMessage, args: &Args, i: usize, kind: &str) -> OutgoingMessage {
    if !args.fifo {
        return m;
    }
    m.group(format!("group-{:02}", i % args.groups.max(1)))
        .dedup(format!("{kind}-{i:05}"))
}

fn job_message(i: usize, bucket: &str, key: &str) -> OutgoingMessage {
    if i.is_multiple_of(2) {
        // What S3 itself sends: no attributes; stage 1 derives the job id
        // from the object and its sequencer.
        OutgoingMessage::new(
            serde_json::json!({"Records": [{
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": key, "sequencer": format!("0066{i:012X}")}
                }
            }]})
            .to_string(),
        )
    } else {
        // A producer of ours names the job itself.
        OutgoingMessage::new(serde_json::json!({"bucket": bucket, "key": key}).to_string())
            .attribute(JOB_ID_ATTRIBUTE, format!("job-{i:05}"))
    }
}

/// Adds a `pad` field of `n` bytes to a JSON job body.
fn pad(mut m: OutgoingMessage, n: usize) -> OutgoingMessage {
    if n > 0 {
        if let Ok(serde_json::Value::Object(mut o)) = serde_json::from_str(&m.body) {
            o.insert("pad".into(), "x".repeat(n).into());
            m.body = serde_json::Value::Object(o).to_string();
        }
    }
    m
}

/// Sends the jobs through ferry's producer: ten per call, each failing
/// entry retried, large bodies offloaded; the ids it returns are the ones
/// stage 1 will see (it derives S3 events' ids as stage 1 does).
async fn enqueue(args: &Args, r: &Resources, messages: Vec<OutgoingMessage>) -> Result<Vec<JobId>> {
    let mut producer = Producer::new(r.stage1.clone()).job_id(ferry_actors::stage1_job_id);
    if let Some(p) = r.payloads.as_ref().filter(|_| args.large_payloads) {
        producer = producer.large_payloads(p.clone());
    }
    let jobs = messages
        .into_iter()
        .map(|m| {
            let mut job = NewJob::new(m.body);
            for (k, v) in m.attributes {
                job = match k.as_str() {
                    JOB_ID_ATTRIBUTE => job.id(v),
                    _ => job.attribute(k, v),
                };
            }
            if let Some(g) = m.group_id {
                job = job.group(g);
            }
            if let Some(d) = m.dedup_id {
                job = job.dedup(d);
            }
            job
        })
        .collect();
    let (sent, _) = producer.send_all(jobs).await;
    sent.into_iter().map(|s| Ok(s?.job_id)).collect()
}

async fn put(r: &Resources, key: &str, body: Vec<u8>) -> Result<()> {
    r.blobs
        .put(&r.input_bucket, key, body.into(), ObjectMeta::default())
        .await?;
    Ok(())
}

pub(crate) async fn produce(args: &Args, r: &Resources) -> Result<Produced> {
    let mut keys = Vec::new();
    match &args.input {
        Some(dir) => {
            let mut files: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for path in files {
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let key = format!("input/{name}");
                put(r, &key, std::fs::read(&path)?).await?;
                keys.push(key);
            }
        }
        None => {
            for i in 0..args.jobs {
                let key = format!("input/img-{i:05}.png");
                let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
                put(r, &key, samples::synthetic_png(seed, args.side)).await?;
                keys.push(key);
            }
        }
    }
    put(r, "bad/not-an-image.png", samples::not_an_image()).await?;
    put(r, "bad/bomb.png", samples::decompression_bomb_png()).await?;
    let bucket = r.input_bucket.as_str();
    let good: Vec<OutgoingMessage> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            pad(
                fifo(job_message(i, bucket, k), args, i, "job"),
                args.pad_bytes,
            )
        })
        .collect();
    let good_groups = good.iter().map(|m| m.group_id.clone()).collect();
    let bad = (0..args.bad_inputs)
        .map(|i| {
            let body = match i % 4 {
                0 => format!("{{\"bucket\": \"{bucket}\", \"key\": "),
                1 => serde_json::json!({"bucket": bucket, "key": format!("missing/{i}.png")})
                    .to_string(),
                2 => {
                    serde_json::json!({"bucket": bucket, "key": "bad/not-an-image.png"}).to_string()
                }
                _ => serde_json::json!({"bucket": bucket, "key": "bad/bomb.png"}).to_string(),
            };
            let m = OutgoingMessage::new(body).attribute(JOB_ID_ATTRIBUTE, format!("bad-{i:03}"));
            fifo(m, args, i, "bad")
        })
        .collect();
    Ok(Produced {
        good: enqueue(args, r, good).await?,
        good_keys: keys,
        user_files: args.input.is_some(),
        bad: enqueue(args, r, bad).await?,
        offloaded: r.blobs.list(&r.result_bucket, "payloads/").await?.len(),
        good_groups,
    })
}
