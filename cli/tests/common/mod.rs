//! Shared set-up for the `ferry` command's tests: the moto server that
//! `scripts/test` starts (skipped without one, failed under
//! `FERRY_TEST_AWS=required`), unique queue names, and the built binary.
#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry::backend::aws::{AwsBackend, AwsOptions, QueueSpec, SqsQueue};
use ferry::backend::{Queue, ReceivedMessage};
use serde_json::Value;

/// The endpoint, or None (skip) when the test command did not start moto.
/// Under `scripts/test` (`FERRY_TEST_AWS=required`) a missing endpoint
/// fails. Only a loopback endpoint is used.
pub fn endpoint() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => {
            assert!(
                url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"),
                "AWS_ENDPOINT_URL={url}: these tests run against a loopback moto server only"
            );
            Some(url)
        }
        _ => {
            assert_ne!(
                std::env::var("FERRY_TEST_AWS").as_deref(),
                Ok("required"),
                "FERRY_TEST_AWS=required but AWS_ENDPOINT_URL is not set"
            );
            eprintln!("skipped: AWS_ENDPOINT_URL is not set (scripts/test starts a moto server)");
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "c{}-{}-{nanos:x}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// ferry's AWS backend on the test's endpoint, for setting up and checking.
pub async fn backend() -> AwsBackend {
    AwsBackend::load(AwsOptions::default()).await
}

/// Creates a standard queue (or a FIFO one when `name` ends in `.fifo`).
pub async fn queue(aws: &AwsBackend, name: &str) -> std::sync::Arc<SqsQueue> {
    let spec = QueueSpec {
        fifo: name.ends_with(".fifo"),
        ..QueueSpec::default()
    };
    aws.create_queue(name, &spec).await.unwrap()
}

/// Every message a queue hands out now, hidden for a minute.
pub async fn drain(q: &SqsQueue) -> Vec<ReceivedMessage> {
    let mut out = Vec::new();
    loop {
        let got = q
            .receive(10, Duration::from_millis(200), Duration::from_secs(60))
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// What one run of the `ferry` binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as the one JSON object `--json` prints.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {self:?}"))
    }

    /// Asserts the exit status, showing the run when it differs.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit status of {self:#?}");
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The built `ferry` binary, with the test's AWS settings and no proxy or
/// instance-metadata lookups (nothing but loopback).
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args).env("AWS_EC2_METADATA_DISABLED", "true");
    for v in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs `ferry ARGS` to its end (off the async runtime's thread).
pub async fn ferry(args: &[&str]) -> Run {
    let mut c = command(args);
    tokio::task::spawn_blocking(move || c.output().expect("run the ferry binary").into())
        .await
        .unwrap()
}
