//! What this process did, for the tests that count effects: the successful
//! processor runs in the order they returned (the report's `run_order`; kept
//! only by a run that reports, not by a worker), and with `--record DIR` one JSON line per successful run, result write
//! and notice in `DIR/<pid>.log`, each written as it happens, so a worker
//! killed mid-run leaves what it did so far.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use ferry::backend::{BlobStore, EntryResult, Notification, ObjectMeta, Topic};
use ferry::prelude::*;
use ferry::{BackendError, WorkerInfo, JOB_ID_ATTRIBUTE};

use crate::Result;

static RUNS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());
static KEEP_ORDER: AtomicBool = AtomicBool::new(false);

/// Keeps the order of successful runs in memory, for the report.
pub(crate) fn keep_order() {
    KEEP_ORDER.store(true, Ordering::Release);
}
static LOG: OnceLock<Mutex<File>> = OnceLock::new();

/// Starts writing this process's record under `dir`.
pub(crate) fn to_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = File::options()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.log", std::process::id())))?;
    let _ = LOG.set(Mutex::new(file));
    Ok(())
}

fn recording() -> bool {
    LOG.get().is_some()
}

/// One line: `{"event":…,"stage":…,"id":…}`, in a single write.
fn event(event: &str, stage: &str, id: &str) {
    if let Some(log) = LOG.get() {
        let mut line = serde_json::json!({"event": event, "stage": stage, "id": id}).to_string();
        line.push('\n');
        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
        // A record that cannot be written fails the test that reads it.
        let _ = f.write_all(line.as_bytes());
    }
}

/// The successful processor runs of each stage, in the order they returned.
pub(crate) fn run_order() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (stage, id) in RUNS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        out.entry((*stage).to_owned()).or_default().push(id.clone());
    }
    out
}

/// A processor whose successful runs are recorded.
pub(crate) struct Recorded<P> {
    pub(crate) inner: P,
    pub(crate) stage: &'static str,
}

impl<P: Processor> Processor for Recorded<P> {
    fn started(&mut self, info: &WorkerInfo) {
        self.inner.started(info);
    }

    fn process(&mut self, job: &Job, ctx: &Context) -> std::result::Result<Output, ProcessError> {
        let out = self.inner.process(job, ctx)?;
        if KEEP_ORDER.load(Ordering::Acquire) {
            RUNS.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((self.stage, job.id.to_string()));
        }
        event("run", self.stage, job.id.as_str());
        Ok(out)
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }
}

/// The topic, recording each notice before it is sent (`publish`) and once
/// accepted (`published`), when recording.
pub(crate) fn topic(inner: Arc<dyn Topic>, stage: &'static str) -> Arc<dyn Topic> {
    if recording() {
        Arc::new(RecordedTopic { inner, stage })
    } else {
        inner
    }
}

/// The result store, recording each result write once it succeeded
/// (`put`, with the key), when recording.
pub(crate) fn results(inner: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
    if recording() {
        Arc::new(RecordedBlobs { inner })
    } else {
        inner
    }
}

#[derive(Debug)]
struct RecordedTopic {
    inner: Arc<dyn Topic>,
    stage: &'static str,
}

#[async_trait]
impl Topic for RecordedTopic {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }

    async fn publish_batch(
        &self,
        notifications: Vec<Notification>,
    ) -> std::result::Result<Vec<EntryResult<String>>, BackendError> {
        let ids: Vec<String> = notifications
            .iter()
            .map(|n| {
                n.attributes
                    .get(JOB_ID_ATTRIBUTE)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        ids.iter().for_each(|id| event("publish", self.stage, id));
        let out = self.inner.publish_batch(notifications).await?;
        for (id, r) in ids.iter().zip(&out) {
            if r.is_ok() {
                event("published", self.stage, id);
            }
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct RecordedBlobs {
    inner: Arc<dyn BlobStore>,
}

#[async_trait]
impl BlobStore for RecordedBlobs {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: ObjectMeta,
    ) -> std::result::Result<(), BackendError> {
        self.inner.put(bucket, key, body, meta).await?;
        if let Some((stage, _)) = key.split_once('/') {
            event("put", stage, key);
        }
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> std::result::Result<Bytes, BackendError> {
        self.inner.get(bucket, key).await
    }

    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> std::result::Result<Bytes, BackendError> {
        self.inner.get_limited(bucket, key, limit).await
    }

    async fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> std::result::Result<Option<ObjectMeta>, BackendError> {
        self.inner.head(bucket, key).await
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> std::result::Result<Vec<String>, BackendError> {
        self.inner.list(bucket, prefix).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> std::result::Result<(), BackendError> {
        self.inner.delete(bucket, key).await
    }
}
