//! A queue around an embedded one that records what ferry asks of it (each
//! delivery with its receive count, each visibility change with its value,
//! each delete) and can hang one visibility change: the first one, or every
//! one naming a chosen receipt handle.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry::backend::local::LocalQueue;
use ferry::backend::{EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage};
use ferry::BackendError;

/// One delivery, as the receive handed it out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: String,
    pub handle: String,
    pub receive_count: u32,
    pub at: Instant,
}

/// One entry of a visibility change call.
#[derive(Debug, Clone)]
pub struct VisibilityChange {
    pub handle: String,
    pub to: Duration,
    pub at: Instant,
    /// The call this entry was part of, counted from 1.
    pub call: u32,
    /// Whether the call was hung on purpose (it never reached the queue).
    pub hung: bool,
}

/// What the queue was asked, in order.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub deliveries: Vec<Delivery>,
    pub visibility: Vec<VisibilityChange>,
    pub deleted: Vec<String>,
}

impl Record {
    /// The delivery that handed out this handle.
    pub fn delivery(&self, handle: &str) -> Option<&Delivery> {
        self.deliveries.iter().find(|d| d.handle == handle)
    }

    /// The visibility changes naming this handle, in order.
    pub fn changes_of(&self, handle: &str) -> Vec<&VisibilityChange> {
        self.visibility
            .iter()
            .filter(|c| c.handle == handle)
            .collect()
    }
}

/// Which visibility change hangs (for longer than any test waits; the caller's
/// own time limit is what ends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hang {
    Nothing,
    /// The first call, whatever it names.
    FirstCall,
    /// Every call naming this handle.
    Handle(String),
}

#[derive(Debug)]
pub struct Watched {
    inner: Arc<LocalQueue>,
    record: Mutex<Record>,
    hang: Mutex<Hang>,
    calls: AtomicU32,
    hung: AtomicBool,
}

impl Watched {
    pub fn new(inner: Arc<LocalQueue>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            record: Mutex::new(Record::default()),
            hang: Mutex::new(Hang::Nothing),
            calls: AtomicU32::new(0),
            hung: AtomicBool::new(false),
        })
    }

    /// Hangs the visibility changes `hang` chooses.
    pub fn hang(&self, hang: Hang) {
        *self.hang.lock().unwrap() = hang;
    }

    /// Whether a call has been hung.
    pub fn has_hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }

    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Visibility change calls so far (hung ones included).
    pub fn visibility_calls(&self) -> u32 {
        self.calls.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Queue for Watched {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }
    fn receive_is_cancel_safe(&self) -> bool {
        self.inner.receive_is_cancel_safe()
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        vis: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        let got = self.inner.receive(max, wait, vis).await?;
        let at = Instant::now();
        self.record
            .lock()
            .unwrap()
            .deliveries
            .extend(got.iter().map(|m| Delivery {
                message_id: m.message_id.clone(),
                handle: m.receipt_handle.clone(),
                receive_count: m.receive_count,
                at,
            }));
        Ok(got)
    }
    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        let out = self.inner.delete_batch(handles).await?;
        self.record
            .lock()
            .unwrap()
            .deleted
            .extend(handles.iter().cloned());
        Ok(out)
    }
    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        let call = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let hang = match &*self.hang.lock().unwrap() {
            Hang::Nothing => false,
            Hang::FirstCall => call == 1,
            Hang::Handle(h) => entries.iter().any(|(e, _)| e == h),
        };
        let at = Instant::now();
        self.record
            .lock()
            .unwrap()
            .visibility
            .extend(entries.iter().map(|(h, to)| VisibilityChange {
                handle: h.clone(),
                to: *to,
                at,
                call,
                hung: hang,
            }));
        if hang {
            self.hung.store(true, Ordering::Release);
            // Far longer than any lease in these tests: only the caller's
            // time limit ends it.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        self.inner.change_visibility_batch(entries).await
    }
    async fn send_batch(
        &self,
        m: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.inner.send_batch(m).await
    }
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}
