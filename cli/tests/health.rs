//! `ferry health` against a tiny HTTP responder on 127.0.0.1 that the test
//! starts: 2xx exits 0, anything else (another status, no answer) exits 1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::command;

/// Answers every request with `status` and `body`, recording the request
/// lines; returns the readiness URL.
fn responder(status: &'static str, body: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            seen.lock().unwrap().push(line.trim_end().to_owned());
            // The headers, up to the blank line.
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
        }
    });
    (url, requests)
}

fn health(args: &[&str]) -> (i32, String, String) {
    let out = command(&[&["health"][..], args].concat()).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ready_answers_exit_0_with_the_body() {
    let (url, requests) = responder("200 OK", r#"{"ready":true,"pipelines":["resize"]}"#);
    let (code, stdout, stderr) = health(&[&url]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(r#"{"ready":true,"pipelines":["resize"]}"#),
        "{stdout}"
    );
    assert!(stdout.starts_with("ready:"), "{stdout}");
    assert_eq!(requests.lock().unwrap()[0], "GET /readyz HTTP/1.1");

    let (code, stdout, _) = health(&["--json", &url]);
    assert_eq!(code, 0, "{stdout}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(out["ok"], true);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], r#"{"ready":true,"pipelines":["resize"]}"#);
}

#[test]
fn unready_answers_exit_1_with_the_body() {
    let (url, _) = responder(
        "503 Service Unavailable",
        r#"{"ready":false,"reason":"draining"}"#,
    );
    let (code, stdout, stderr) = health(&[&url]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.starts_with("not ready:"), "{stdout}");
    assert!(stdout.contains(r#""reason":"draining""#), "{stdout}");

    let (code, stdout, _) = health(&["--json", &url]);
    assert_eq!(code, 1, "{stdout}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(out["ok"], false);
    assert_eq!(out["status"], 503);
    assert_eq!(out["body"], r#"{"ready":false,"reason":"draining"}"#);
}

#[test]
fn no_answer_exits_1() {
    // A port that was free a moment ago: nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let (code, stdout, _) = health(&["--json", &url]);
    assert_eq!(code, 1, "{stdout}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(out["ok"], false);
    assert_eq!(out["status"], serde_json::Value::Null);
    assert!(out["error"].is_string(), "{out}");
}

/// A ferry service's own `/readyz` (`RuntimeBuilder::serve_http`): not ready
/// before its runtime starts, ready once it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ferry_services_readiness() {
    use ferry::backend::local::{LocalBackend, QueueOptions};
    use ferry::http::HttpServer;
    use ferry::prelude::*;

    let server = HttpServer::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let url = format!("http://{}/readyz", server.local_addr());
    let ask = |url: String| tokio::task::spawn_blocking(move || health(&["--json", &url]));

    let (code, stdout, _) = ask(url.clone()).await.unwrap();
    assert_eq!(code, 1, "ready with no runtime: {stdout}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(out["status"], 503, "{out}");

    let local = LocalBackend::new();
    let rt = Runtime::builder()
        .pipeline(
            Pipeline::new("cli-health")
                .source(local.create_queue("jobs", QueueOptions::default()))
                .dead_letter(local.create_queue("jobs-dlq", QueueOptions::default()))
                .results(local.blobs(), "results", "out/", "txt")
                .handler(|job: &Job, _: &Context| Ok(Output::text(job.body.clone()))),
        )
        .serve_http(&server)
        .start()
        .await
        .unwrap();
    let (code, stdout, _) = ask(url).await.unwrap();
    assert_eq!(code, 0, "not ready with a running runtime: {stdout}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        out["body"].as_str().unwrap().contains("cli-health"),
        "{out}"
    );
    rt.shutdown().await;
}
