//! `/healthz`, `/readyz` and `/metrics` over HTTP (feature `http`), on the
//! embedded backend, asked by a real HTTP client on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::backend::local::{LocalBackend, LocalQueue, QueueOptions};
use ferry::backend::{OutgoingMessage, Queue};
use ferry::http::{HttpOptions, HttpServer};
use ferry::prelude::*;

/// Every wait of a test is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

/// A port the system picks.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `GET http://addr/path`: the status and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(&format!("http://{addr}{path}")).call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

/// `/readyz` as JSON.
fn readyz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/readyz");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// Asks `path` until `want` holds of the answer, failing after [`LIMIT`].
fn until(addr: SocketAddr, path: &str, what: &str, want: impl Fn(u16, &str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = get(addr, path);
        if want(status, &body) {
            return body;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{path}: never {what}; last answer {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one series (`name{labels}`) in a Prometheus text.
fn series(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Sends one message per body.
async fn send(queue: &LocalQueue, bodies: impl IntoIterator<Item = String>) {
    let messages: Vec<OutgoingMessage> = bodies.into_iter().map(OutgoingMessage::new).collect();
    for chunk in messages.chunks(10) {
        for r in queue.send_batch(chunk.to_vec()).await.unwrap() {
            r.unwrap();
        }
    }
}

/// A source queue named after the pipeline, its dead-letter queue, and
/// `jobs` messages in the source.
async fn queues(
    local: &LocalBackend,
    name: &str,
    jobs: usize,
) -> (Arc<LocalQueue>, Arc<LocalQueue>) {
    let source = local.create_queue(name, QueueOptions::default());
    let dlq = local.create_queue(&format!("{name}-dlq"), QueueOptions::default());
    send(&source, (0..jobs).map(|i| format!("job {i}"))).await;
    (source, dlq)
}

fn quick(c: &mut PipelineConfig) {
    c.visibility_timeout = Duration::from_secs(5);
    c.receive_wait = Duration::from_millis(50);
    c.retry_backoff_base = Duration::from_millis(20);
    c.retry_backoff_max = Duration::from_millis(200);
    c.flush_interval = Duration::from_millis(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_is_alive_ready_and_its_counters_are_scraped() {
    let local = LocalBackend::new();
    let (source, dlq) = queues(&local, "http-ok", 5).await;
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("http-ok")
                .source(source.clone())
                .dead_letter(dlq)
                .results(local.blobs(), "results", "ok/", "txt")
                .handler(|job: &Job, _: &Context| Ok(Output::text(job.body.to_uppercase())))
                .configure(quick),
        )
        .serve_http(HttpOptions::new(any_port()).depth_every(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    let addr = rt.http_addr().expect("serve_http gives an address");
    assert_ne!(addr.port(), 0, "the bound port, not the one asked for");

    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_owned()));
    let (status, ready) = readyz(addr);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["pipelines"][0]["name"], "http-ok", "{ready}");
    assert_eq!(ready["pipelines"][0]["status"], "running", "{ready}");
    assert_eq!(ready["pipelines"][0]["reasons"], serde_json::json!([]));
    assert_eq!(get(addr, "/nothing-here").0, 404);

    // The five jobs done, the counters say so, and the queue's gauges show
    // it empty.
    let text = until(
        addr,
        "/metrics",
        "five jobs acked and the queue empty",
        |s, t| {
            s == 200
                && series(t, "ferry_acked_total{pipeline=\"http-ok\"}") == Some(5.0)
                && series(t, "ferry_queue_depth_visible{pipeline=\"http-ok\"}") == Some(0.0)
                && series(t, "ferry_queue_depth_in_flight{pipeline=\"http-ok\"}") == Some(0.0)
        },
    );
    assert_eq!(
        series(&text, "ferry_received_total{pipeline=\"http-ok\"}"),
        Some(5.0)
    );
    assert_eq!(
        series(&text, "ferry_processed_total{pipeline=\"http-ok\"}"),
        Some(5.0)
    );
    assert_eq!(
        series(&text, "ferry_backlog_per_worker{pipeline=\"http-ok\"}"),
        Some(0.0)
    );
    assert!(
        text.contains("# TYPE ferry_queue_depth_visible gauge"),
        "{text}"
    );
    assert_eq!(source.depth_now().total(), 0);

    // The server stops with the runtime.
    rt.shutdown().await;
    assert!(
        try_get(addr, "/healthz").is_err(),
        "the endpoint still answers after the runtime's shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_gauges_show_the_backlog_per_worker() {
    let local = LocalBackend::new();
    let (source, dlq) = queues(&local, "http-backlog", 40).await;
    // Jobs that wait until released: the queue keeps its backlog.
    let held = Arc::new(AtomicBool::new(true));
    let hold = held.clone();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("http-backlog")
                .source(source.clone())
                .dead_letter(dlq)
                .results(local.blobs(), "results", "backlog/", "txt")
                .handler(move |job: &Job, _: &Context| {
                    let started = Instant::now();
                    while hold.load(Ordering::Acquire) && started.elapsed() < LIMIT {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(Output::text(job.body.clone()))
                })
                .configure(|c| {
                    quick(c);
                    c.workers = 2;
                    c.prefetch = Some(2);
                    c.max_in_flight = 4;
                }),
        )
        .serve_http(HttpOptions::new(any_port()).depth_every(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    let addr = rt.http_addr().unwrap();
    let key = |name: &str| format!("{name}{{pipeline=\"http-backlog\"}}");
    let text = until(addr, "/metrics", "the backlog seen", |_, t| {
        let visible = series(t, &key("ferry_queue_depth_visible"));
        let in_flight = series(t, &key("ferry_queue_depth_in_flight"));
        // At most four leases taken: 36 or more still visible.
        visible.is_some_and(|v| v >= 36.0) && in_flight.is_some_and(|n| n >= 1.0)
    });
    let visible = series(&text, &key("ferry_queue_depth_visible")).unwrap();
    let in_flight = series(&text, &key("ferry_queue_depth_in_flight")).unwrap();
    assert_eq!(visible + in_flight, 40.0, "{text}");
    assert_eq!(
        series(&text, &key("ferry_backlog_per_worker")),
        Some(visible / 2.0),
        "visible messages per worker (2 workers): {text}"
    );
    held.store(false, Ordering::Release);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_with_the_reason_when_a_pipeline_escalates() {
    let local = LocalBackend::new();
    let (source, dlq) = queues(&local, "http-escalates", 0).await;
    let broken = Arc::new(AtomicBool::new(false));
    let breaks = broken.clone();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("http-escalates")
                .source(source.clone())
                .dead_letter(dlq)
                .results(local.blobs(), "results", "esc/", "txt")
                .handler(move |job: &Job, _: &Context| {
                    if breaks.load(Ordering::Acquire) {
                        // Panics end in `resume_unwind`: no panic message printed.
                        std::panic::resume_unwind(Box::new("processor bug"));
                    }
                    Ok(Output::text(job.body.clone()))
                })
                .configure(|c| {
                    quick(c);
                    c.restart.max_restarts = 3;
                    c.restart.backoff_base = Duration::from_millis(1);
                    c.restart.backoff_max = Duration::from_millis(10);
                    c.restart.escalation_pause = Duration::from_secs(60);
                    c.retry_backoff_base = Duration::from_secs(30);
                    c.retry_backoff_max = Duration::from_secs(30);
                }),
        )
        .serve_http(any_port())
        .start()
        .await
        .unwrap();
    let addr = rt.http_addr().unwrap();
    // Ready while it works.
    let (status, ready) = readyz(addr);
    assert_eq!((status, &ready["ready"]), (200, &serde_json::json!(true)));
    // Its processor breaks: restarts in a row, with no job succeeding.
    broken.store(true, Ordering::Release);
    send(&source, (0..10).map(|i| format!("job {i}"))).await;
    let body = until(addr, "/readyz", "503", |status, _| status == 503);
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false, "{ready}");
    let p = &ready["pipelines"][0];
    assert_eq!(p["name"], "http-escalates", "{ready}");
    assert_eq!(p["status"], "escalated", "{ready}");
    assert_eq!(p["ready"], false, "{ready}");
    let reasons = p["reasons"].as_array().expect("reasons");
    assert!(
        reasons.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.starts_with("escalated:") && r.contains("restarts in a row"))),
        "{ready}"
    );
    // Still alive: a restart is the orchestrator's call, run_until's error
    // the service's.
    assert_eq!(get(addr, "/healthz").0, 200);
    rt.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_dependency_keeps_it_ready_and_says_why() {
    let local = LocalBackend::new();
    let (source, dlq) = queues(&local, "http-degraded", 3).await;
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("http-degraded")
                .source(source)
                .dead_letter(dlq)
                .results(local.blobs(), "results", "deg/", "txt")
                .handler(|_: &Job, _: &Context| {
                    Err(ProcessError::unavailable("the thumbnail service is down"))
                })
                .configure(quick),
        )
        .serve_http(any_port())
        .start()
        .await
        .unwrap();
    let addr = rt.http_addr().unwrap();
    let body = until(addr, "/readyz", "degraded", |_, body| {
        body.contains("\"status\":\"degraded\"")
    });
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    let reasons = ready["pipelines"][0]["reasons"].to_string();
    assert!(
        reasons.contains("degraded:") && reasons.contains("the thumbnail service is down"),
        "{ready}"
    );
    assert_eq!(get(addr, "/readyz").0, 200);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_service_outlives_the_runtime() {
    let server = HttpServer::start(any_port()).unwrap();
    let addr = server.local_addr();
    // No runtime yet: alive, not ready.
    assert_eq!(get(addr, "/healthz").0, 200);
    let (status, ready) = readyz(addr);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["reasons"][0], "no runtime is running", "{ready}");

    let local = LocalBackend::new();
    let (source, dlq) = queues(&local, "http-shared", 2).await;
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("http-shared")
                .source(source)
                .dead_letter(dlq)
                .results(local.blobs(), "results", "shared/", "txt")
                .handler(|job: &Job, _: &Context| Ok(Output::text(job.body.clone())))
                .configure(quick),
        )
        .serve_http(&server)
        .start()
        .await
        .unwrap();
    assert_eq!(rt.http_addr(), Some(addr));
    assert_eq!(readyz(addr).0, 200);
    until(addr, "/metrics", "two jobs acked", |_, t| {
        series(t, "ferry_acked_total{pipeline=\"http-shared\"}") == Some(2.0)
    });
    let scrapes = server.metrics_scrapes();
    assert!(scrapes >= 1);
    rt.shutdown().await;

    // The runtime is gone: not ready, and the final figures still scraped.
    let (status, ready) = readyz(addr);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["pipelines"], serde_json::json!([]), "{ready}");
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        series(&text, "ferry_acked_total{pipeline=\"http-shared\"}"),
        Some(2.0)
    );
    assert_eq!(server.metrics_scrapes(), scrapes + 1);
    server.stop();
    assert!(try_get(addr, "/healthz").is_err(), "answers after stop()");
}
