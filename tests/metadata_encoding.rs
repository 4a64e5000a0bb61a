//! Job ids in S3 user metadata are US-ASCII on the wire (moto): a result
//! stored for a job id such as `input/café-016.png` carries its
//! `ferry-job-id` RFC 2047-encoded, which another client (the plain AWS
//! SDK) reads as ASCII and decodes back to the id; an ASCII id is written
//! as it is; and ferry's own reading path (the resume probe on
//! redelivery, `S3Store::head`) gets the original id back.
#![cfg(feature = "aws")]

mod common;

use aws_config::BehaviorVersion;
use common::aws::*;
use common::*;
use ferry::backend::metadata::decode_value;
use ferry::backend::BlobStore;
use ferry::prelude::*;
use ferry::RESULT_JOB_TAG;

/// Another client: the AWS SDK's S3 client, configured from the same
/// environment, with no ferry code between it and the wire.
async fn plain_s3() -> aws_sdk_s3::Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    )
}

#[tokio::test]
async fn non_ascii_job_ids_are_ascii_on_the_wire_and_read_back_whole() {
    let Some(h) = AwsHarness::new("meta").await else {
        return;
    };
    let ids: Vec<String> = ["input/café-016.png", "input/日本-2.png", "plain-ascii-3"]
        .map(String::from)
        .into();
    h.send_named(&ids).await;
    let p = Counting::new();
    // The first worker stores every result, then freezes before the notice.
    let held = Hold::new(h.topic.clone());
    let rt = Runtime::builder()
        .pipeline(h.pipeline_with(h.jobs.clone(), held.clone(), p.clone()))
        .start()
        .await
        .unwrap();
    eventually_async("results stored", || async { h.results().await.len() == 3 }).await;
    rt.abort();
    drop(held);

    // Another client's view: ASCII headers that decode to the ids.
    let s3 = plain_s3().await;
    for id in &ids {
        let key = format!("out/{}.txt", JobId::new(id).key_safe());
        let out = s3
            .head_object()
            .bucket(&h.bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        let raw = out
            .metadata()
            .and_then(|m| m.get(RESULT_JOB_TAG))
            .unwrap_or_else(|| panic!("{key}: no {RESULT_JOB_TAG} in {:?}", out.metadata()))
            .clone();
        assert!(
            raw.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{key}: {raw:?} is not printable US-ASCII"
        );
        if id.is_ascii() {
            assert_eq!(&raw, id, "an ASCII id is written as it is");
        } else {
            assert!(raw.starts_with("=?UTF-8?B?"), "{raw}");
            assert_eq!(decode_value(&raw), id.as_str());
        }
        assert_eq!(
            raw,
            ferry::backend::metadata::encode_value(id),
            "the documented encoding"
        );
        // ferry's store reads the id back as it was.
        let meta = h.aws.blobs().head(&h.bucket, &key).await.unwrap().unwrap();
        assert_eq!(meta.metadata.get(RESULT_JOB_TAG), Some(id));
    }
    let fixed = s3
        .head_object()
        .bucket(&h.bucket)
        .key("out/input%2Fcaf%C3%A9-016.png.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fixed.metadata().unwrap()[RESULT_JOB_TAG],
        "=?UTF-8?B?aW5wdXQvY2Fmw6ktMDE2LnBuZw==?="
    );

    // A fresh worker after the leases lapse: each redelivery's probe finds
    // its result tagged with its own id and resumes without running it.
    let rt = Runtime::builder()
        .pipeline(h.pipeline(p.clone()))
        .start()
        .await
        .unwrap();
    // Waits for the resumes themselves: moto's depth can read 0 while the
    // lapsed messages are not yet visible again.
    eventually_async("the three resumed and the source drained", || async {
        rt.stats_of("stage")
            .is_some_and(|s| s.resumed + s.dead_lettered >= 3)
            && h.depth(&h.jobs).await.total() == 0
    })
    .await;
    let stats = rt.stats_of("stage").unwrap();
    rt.shutdown().await;
    assert_eq!(stats.resumed, 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    for id in &ids {
        assert_eq!(p.runs_of(id), 1, "{id} processed again");
    }
}
