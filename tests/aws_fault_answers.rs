//! What the real AWS SDK makes of the services' everyday faults, and what
//! ferry then does: a loopback endpoint answers as S3 does when it throttles
//! (`503 SlowDown`) or when a temporary credential has lapsed (`400
//! ExpiredToken`), and the SDK's errors must reach ferry as the
//! infrastructure's (retryable, never bad input). A pipeline whose result
//! uploads are throttled through the SDK waits and shows the bucket as
//! degraded, then stores every result: no job is dead-lettered.
#![cfg(feature = "aws")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use common::*;
use ferry::backend::aws::{AwsBackend, AwsOptions};
use ferry::backend::local::{LocalBackend, QueueOptions};
use ferry::backend::{BlobStore, OutgoingMessage, Queue};
use ferry::prelude::*;
use ferry::{BackendError, JOB_ID_ATTRIBUTE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the endpoint answers one request, by its method.
type Script = Arc<dyn Fn(&str) -> String + Send + Sync>;
/// The requests the endpoint saw: method, path, and whether it answered 200.
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

/// An S3 error response.
fn s3_error(status: &str, code: &str, message: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>loopback</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn ok_put() -> String {
    "HTTP/1.1 200 OK\r\nETag: \"loopback\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
}

/// Reads one request (its head, then its body by `Content-Length` or to
/// the last chunk); returns its method and path.
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let first = head.lines().next()?.to_owned();
    let mut parts = first.split(' ');
    let (method, path) = (parts.next()?.to_uppercase(), parts.next()?.to_owned());
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => {
                body.ends_with(b"\r\n\r\n") && body.windows(3).any(|w| w == b"0\r\n")
            }
            None => true,
        };
        if done {
            return Some((method, path));
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A loopback endpoint that answers each request by `script`, one request
/// per connection; returns its address and the requests it saw.
async fn endpoint(script: Script) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (script, log) = (script.clone(), log.clone());
            tokio::spawn(async move {
                if let Some((method, path)) = read_request(&mut s).await {
                    let answer = script(&method);
                    let ok = answer.starts_with("HTTP/1.1 200");
                    log.lock().unwrap().push((method, path, ok));
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// The AWS backend on the loopback endpoint, through the standard
/// configuration builder; the SDK's own retries are off, so each call is
/// one request and what ferry does with the error is what is tested.
async fn aws_at(url: &str) -> AwsBackend {
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    AwsBackend::from_conf_with(
        &conf,
        &AwsOptions {
            force_path_style: true,
            ..AwsOptions::default()
        },
    )
}

#[tokio::test]
async fn an_expired_token_through_the_sdk_is_the_infrastructures_not_bad_input() {
    let (url, seen) = endpoint(Arc::new(|_| {
        s3_error(
            "400 Bad Request",
            "ExpiredToken",
            "The provided token has expired.",
        )
    }))
    .await;
    let aws = aws_at(&url).await;
    let e = aws.blobs().get("inputs", "a.txt").await.unwrap_err();
    assert!(
        matches!(e, BackendError::ExpiredCredentials { .. }),
        "an expired token is an expired credential: {e:?}"
    );
    assert!(e.is_retryable(), "{e:?}");
    assert!(
        !matches!(
            ProcessError::from_backend("reading the input", e),
            ProcessError::BadInput { .. }
        ),
        "a lapsed credential is never the message's fault"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "one request, no SDK retry");
}

#[tokio::test]
async fn slow_down_through_the_sdk_is_throttling() {
    let (url, _) = endpoint(Arc::new(|_| {
        s3_error(
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        )
    }))
    .await;
    let aws = aws_at(&url).await;
    let e = aws
        .blobs()
        .put("results", "out/a.txt", "a".into(), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Throttled { .. }), "{e:?}");
    assert!(e.is_retryable(), "{e:?}");
}

/// S3 throttles every result upload for a while, through the real SDK: the
/// jobs wait (no attempt charged, none dead-lettered), `health()` names the
/// bucket as degraded meanwhile, and once S3 recovers every result is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_uploads_through_the_sdk_wait_and_every_result_is_stored() {
    let throttled = Arc::new(AtomicUsize::new(0));
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let count = throttled.clone();
    let (url, seen) = endpoint(Arc::new(move |method| {
        if method == "PUT" && std::time::Instant::now() < until {
            count.fetch_add(1, Ordering::AcqRel);
            s3_error(
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
            )
        } else if method == "PUT" {
            ok_put()
        } else {
            s3_error("404 Not Found", "NoSuchKey", "no such key")
        }
    }))
    .await;
    let aws = aws_at(&url).await;
    let local = LocalBackend::new();
    let src = local.create_queue("jobs", QueueOptions::default());
    let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
    let ids = ["t-1", "t-2", "t-3"];
    src.send_batch(
        ids.iter()
            .map(|id| OutgoingMessage::new(*id).attribute(JOB_ID_ATTRIBUTE, *id))
            .collect(),
    )
    .await
    .unwrap();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("throttled")
                .source(src.clone())
                .dead_letter(dlq.clone())
                .results(aws.blobs(), "results", "out/", "txt")
                .processor(Counting::new)
                .configure(|c| {
                    fast(c);
                    c.max_receives = 2;
                }),
        )
        .start()
        .await
        .unwrap();
    let mut degraded_seen = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while src.depth_now().total() > 0 && std::time::Instant::now() < deadline {
        degraded_seen |= rt.health().iter().any(|h| {
            h.status == "degraded" && h.degraded.iter().any(|d| d.name.contains("results"))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = rt.stats_of("throttled").unwrap();
    rt.shutdown().await;
    assert_eq!(src.depth_now().total(), 0, "every job settled");
    assert!(
        throttled.load(Ordering::Acquire) >= 1,
        "S3 throttled some upload"
    );
    assert_eq!(
        dlq.depth_now().total(),
        0,
        "no job is dead-lettered for S3's throttling"
    );
    assert!(stats.waited >= 1, "the throttled jobs waited: {stats:?}");
    assert!(
        degraded_seen,
        "health() named the throttled bucket while it lasted"
    );
    let mut stored: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, ok)| m == "PUT" && *ok)
        .map(|(_, p, _)| p.clone())
        .collect();
    stored.sort();
    stored.dedup();
    for id in ids {
        assert!(
            stored.iter().any(|p| p.contains(&format!("out/{id}.txt"))),
            "{id}'s result was uploaded: {stored:?}"
        );
    }
}
