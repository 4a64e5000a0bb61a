//! The embedded backend: in-process queues, topics and a blob store with the
//! SQS/SNS/S3 semantics that matter, plus seeded fault injection and call
//! counts. It is ferry's default and doubles as a test kit for users' own
//! processors.
//!
//! ```
//! use ferry::backend::local::{LocalBackend, QueueOptions};
//!
//! let local = LocalBackend::new();
//! let dlq = local.create_queue("jobs-dlq", QueueOptions::default());
//! let jobs = local.create_queue(
//!     "jobs",
//!     QueueOptions { redrive: Some((dlq, 5)), ..QueueOptions::default() },
//! );
//! let topic = local.create_topic("done", false);
//! let next = local.create_queue("next", QueueOptions::default());
//! local.subscribe(&topic, &next, true);
//! # let _ = jobs;
//! ```

mod blob;
mod dedup;
mod faults;
mod idempotency;
mod infra;
mod op;
mod queue;
mod queue_state;
mod topic;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use blob::LocalBlobStore;
pub use faults::{CallCounts, CallGate, Faults};
pub use idempotency::{LocalIdempotencyStore, LOCAL_KEEP_EXPIRED};
pub use infra::{InfraFaults, Window};
pub use op::Op;
pub use queue::{LocalQueue, QueueOptions, StoredMessage};
pub use topic::LocalTopic;

#[cfg(test)]
pub(crate) use topic::sns_envelope;

pub(crate) use faults::FaultState;

/// The embedded backend: a namespace of queues and topics and one blob store,
/// sharing fault injection and call counts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    faults: Arc<FaultState>,
    queues: Mutex<HashMap<String, Arc<LocalQueue>>>,
    topics: Mutex<HashMap<String, Arc<LocalTopic>>>,
    blobs: Arc<LocalBlobStore>,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBackend {
    /// A backend with an in-memory blob store and no faults.
    pub fn new() -> Self {
        Self::build(Faults::none(), None)
    }

    /// A backend with these faults.
    pub fn with_faults(faults: Faults) -> Self {
        Self::build(faults, None)
    }

    /// A backend whose blob store keeps objects under this directory.
    pub fn with_blob_dir(dir: impl Into<PathBuf>) -> Self {
        Self::build(Faults::none(), Some(dir.into()))
    }

    fn build(faults: Faults, dir: Option<PathBuf>) -> Self {
        let faults = Arc::new(FaultState::new(faults));
        let blobs = match dir {
            Some(d) => LocalBlobStore::dir(d, faults.clone()),
            None => LocalBlobStore::memory(faults.clone()),
        };
        Self {
            inner: Arc::new(Inner {
                faults,
                queues: Mutex::new(HashMap::new()),
                topics: Mutex::new(HashMap::new()),
                blobs: Arc::new(blobs),
            }),
        }
    }

    /// Replaces the faults (and reseeds).
    pub fn set_faults(&self, faults: Faults) {
        self.inner.faults.set(faults);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.inner.faults.get()
    }

    /// Replaces the throttling and expired-credential faults; their windows
    /// count from now. Independent of [`LocalBackend::set_faults`], whose
    /// seed their rates draw from.
    pub fn set_infra_faults(&self, faults: InfraFaults) {
        self.inner.faults.set_infra(faults);
    }

    /// The throttling and expired-credential faults in force.
    pub fn infra_faults(&self) -> InfraFaults {
        self.inner.faults.get_infra()
    }

    /// Calls so far, per operation.
    pub fn calls(&self) -> CallCounts {
        self.inner.faults.calls()
    }

    /// Holds every call of `op` until the returned gate is opened (or
    /// dropped and another gate set).
    pub fn gate(&self, op: Op) -> CallGate {
        self.inner.faults.gate(op)
    }

    /// Makes the next call of `op` panic (`injected backend panic: …`),
    /// once, whatever other faults are set (none needed). The panic is
    /// raised before the call takes any lock, so the backend stays usable.
    pub fn panic_next(&self, op: Op) {
        self.inner.faults.panic_next(op);
    }

    /// A new, empty idempotency store whose calls go through this backend's
    /// fault injection: they are counted ([`Op::Claim`], [`Op::Renew`],
    /// [`Op::Complete`], [`Op::Release`]), held by gates, slowed, failed and
    /// made to panic like the queues' calls. Reading a record is not.
    /// Each call returns a store of its own; share one with `Arc`.
    pub fn idempotency_store(&self) -> LocalIdempotencyStore {
        LocalIdempotencyStore::with_faults(self.inner.faults.clone())
    }

    /// Creates a queue, or returns the existing one of that name.
    pub fn create_queue(&self, name: &str, options: QueueOptions) -> Arc<LocalQueue> {
        self.inner
            .queues
            .lock()
            .expect("queues lock")
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(LocalQueue::new(
                    name.to_owned(),
                    options,
                    self.inner.faults.clone(),
                ))
            })
            .clone()
    }

    /// The queue of that name, if created.
    pub fn queue(&self, name: &str) -> Option<Arc<LocalQueue>> {
        self.inner
            .queues
            .lock()
            .expect("queues lock")
            .get(name)
            .cloned()
    }

    /// Creates a topic, or returns the existing one of that name.
    pub fn create_topic(&self, name: &str, fifo: bool) -> Arc<LocalTopic> {
        self.inner
            .topics
            .lock()
            .expect("topics lock")
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(LocalTopic::new(
                    name.to_owned(),
                    fifo,
                    self.inner.faults.clone(),
                ))
            })
            .clone()
    }

    /// Subscribes a queue to a topic; `raw` delivers the bare body and
    /// attributes, otherwise the SNS JSON envelope.
    pub fn subscribe(&self, topic: &LocalTopic, queue: &Arc<LocalQueue>, raw: bool) {
        topic.subscribe(queue.clone(), raw);
    }

    /// The blob store.
    pub fn blobs(&self) -> Arc<LocalBlobStore> {
        self.inner.blobs.clone()
    }
}
