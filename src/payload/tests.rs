//! Unit tests of `payload`.

use super::*;

#[test]
fn pointer_has_the_extended_clients_shape() {
    let p = PayloadPointer {
        bucket: "b".into(),
        key: "k/1".into(),
    };
    assert_eq!(
        p.to_body(),
        r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b","s3Key":"k/1"}]"#
    );
    assert_eq!(PayloadPointer::parse(&p.to_body()), Some(p));
    assert_eq!(PayloadPointer::parse("[1,2]"), None);
    assert_eq!(PayloadPointer::parse("{\"a\":1}"), None);
}

#[test]
fn the_legacy_pointer_class_is_read() {
    let body =
        r#"["com.amazon.sqs.javamessaging.MessageS3Pointer",{"s3BucketName":"b","s3Key":"k"}]"#;
    assert_eq!(
        PayloadPointer::parse(body),
        Some(PayloadPointer {
            bucket: "b".into(),
            key: "k".into()
        })
    );
}

#[test]
fn only_pointers_to_the_payload_location_or_trusted_buckets_are_followed() {
    let local = crate::backend::local::LocalBackend::new();
    let lp = LargePayloads::new(local.blobs(), "payloads").prefix("big/");
    let p = |bucket: &str, key: &str| PayloadPointer {
        bucket: bucket.into(),
        key: key.into(),
    };
    assert_eq!(lp.untrusted(&p("payloads", "big/1")), None);
    for (bucket, key) in [
        ("secrets", "db-password"),
        ("payloads", "other/1"),
        ("payloads", "big/../other/1"),
        ("..", "big/1"),
        ("payloads", "big/\0"),
    ] {
        let why = lp.untrusted(&p(bucket, key));
        assert!(why.is_some(), "{bucket}/{key} followed");
    }
    let lp = lp.trust("producer-bucket");
    assert_eq!(lp.untrusted(&p("producer-bucket", "any/key")), None);
    assert!(lp
        .untrusted(&p("secrets", "k"))
        .unwrap()
        .contains("producer-bucket"));
}
