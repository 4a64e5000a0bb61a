//! The embedded queue: SQS semantics in memory.
//!
//! A receive hands out a fresh receipt handle each time (an older one no
//! longer deletes or changes visibility), hides the message for its visibility
//! timeout, counts receives, and moves a message to the dead-letter queue when
//! it would be received more often than the redrive policy allows. FIFO queues
//! lock a message group while any of its messages is in flight and drop a
//! resend with the same deduplication id within five minutes. As SQS, it
//! refuses a visibility over 12 hours and an extension past 12 hours from
//! the receive ([`MAX_VISIBILITY`]), and a waiting long poll returns as soon
//! as a message becomes visible (sent, given back, or its visibility
//! shortened). What it keeps besides its messages is bounded by them
//! ([`LocalQueue::bookkeeping`]). Time is tokio's, so paused-clock tests
//! drive it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::dedup::content_dedup_id;
use super::faults::FaultState;
use super::op::Op;
use super::queue_state::{handle_of, Msg, State};
use crate::backend::rules::validate;
use crate::backend::{
    EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage, MAX_BATCH, MAX_VISIBILITY,
};
use crate::error::BackendError;

/// How to create an embedded queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// A FIFO queue (its name should end in `.fifo`).
    pub fifo: bool,
    /// Deduplicate FIFO sends without an id by a hash of the body.
    pub content_based_dedup: bool,
    /// Visibility timeout when a receive names none.
    pub visibility_timeout: Duration,
    /// Move a message to this queue once it has been received this often.
    pub redrive: Option<(Arc<LocalQueue>, u32)>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            fifo: false,
            content_based_dedup: false,
            visibility_timeout: Duration::from_secs(30),
            redrive: None,
        }
    }
}

/// A message as the queue stores it (for tests and reports).
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Message id.
    pub message_id: String,
    /// Body.
    pub body: String,
    /// Attributes.
    pub attributes: HashMap<String, String>,
    /// Receives so far.
    pub receive_count: u32,
    /// Whether it is in flight now.
    pub in_flight: bool,
}

/// An embedded queue. Create it with [`super::LocalBackend::create_queue`].
#[derive(Debug)]
pub struct LocalQueue {
    name: String,
    options: QueueOptions,
    state: Mutex<State>,
    notify: Notify,
    faults: Arc<FaultState>,
}

/// SQS's answer to a visibility over [`MAX_VISIBILITY`].
fn visibility_refused(visibility: Duration) -> BackendError {
    BackendError::Invalid {
        message: format!(
            "Value {} for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and \
             {}, if provided.",
            visibility.as_secs(),
            MAX_VISIBILITY.as_secs()
        ),
    }
}

impl LocalQueue {
    pub(crate) fn new(name: String, options: QueueOptions, faults: Arc<FaultState>) -> Self {
        Self {
            name,
            options,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            faults,
        }
    }

    /// The options the queue was created with.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// Every message the queue holds, in send order (for tests and reports).
    pub fn snapshot(&self) -> Vec<StoredMessage> {
        let st = self.state.lock().expect("queue lock");
        let mut seqs: Vec<_> = st.msgs.keys().copied().collect();
        seqs.sort_unstable();
        seqs.iter()
            .map(|s| {
                let m = &st.msgs[s];
                StoredMessage {
                    message_id: m.message_id.clone(),
                    body: m.body.clone(),
                    attributes: m.attributes.clone(),
                    receive_count: m.receive_count,
                    in_flight: m.in_flight,
                }
            })
            .collect()
    }

    /// Makes an in-flight message visible again at once, as when SQS hands
    /// one message to a second reader: the next receive gets it with a newer
    /// receipt handle. Returns false if no such message is in flight.
    pub fn duplicate_now(&self, message_id: &str) -> bool {
        let now = Instant::now();
        let mut st = self.state.lock().expect("queue lock");
        let seq = st
            .msgs
            .iter()
            .find(|(_, m)| m.message_id == message_id && m.in_flight)
            .map(|(s, _)| *s);
        let Some(seq) = seq else { return false };
        st.hide(seq, now);
        st.promote(now, self.options.fifo);
        drop(st);
        self.notify.notify_waiters();
        true
    }

    /// Each message's place in the queue's bookkeeping, for a report on a
    /// message that is not delivered (see `State::explain`).
    #[doc(hidden)]
    pub fn explain(&self) -> Vec<String> {
        let st = self.state.lock().expect("queue lock");
        st.explain(Instant::now())
    }

    /// Entries the queue keeps beside its messages (visible and hidden
    /// lists, FIFO group locks, deduplication ids): bounded by the messages
    /// it holds and the five-minute window, not by those it ever held.
    #[doc(hidden)]
    pub fn bookkeeping(&self) -> usize {
        self.state.lock().expect("queue lock").bookkeeping()
    }

    /// Visible and in-flight counts now, without counting a call.
    pub fn depth_now(&self) -> QueueDepth {
        let now = Instant::now();
        let mut st = self.state.lock().expect("queue lock");
        st.promote(now, self.options.fifo);
        let in_flight = st.in_flight;
        QueueDepth {
            visible: st.msgs.len() - in_flight,
            in_flight,
        }
    }

    /// Puts one message in, as a send or a topic delivery does, after
    /// checking it as SQS would ([`validate`]).
    pub(crate) fn enqueue(&self, msg: OutgoingMessage) -> Result<String, BackendError> {
        validate(&self.name, &msg)?;
        let now = Instant::now();
        let mut st = self.state.lock().expect("queue lock");
        let dedup_id = if self.options.fifo {
            if msg.group_id.is_none() {
                return Err(BackendError::Invalid {
                    message: format!("{}: a FIFO queue needs a message group id", self.name),
                });
            }
            let id = match (&msg.dedup_id, self.options.content_based_dedup) {
                (Some(id), _) => id.clone(),
                // As SQS: the SHA-256 of the body (not the attributes), hex.
                (None, true) => content_dedup_id(&msg.body),
                (None, false) => {
                    return Err(BackendError::Invalid {
                        message: format!(
                            "{}: a deduplication id is needed without content-based deduplication",
                            self.name
                        ),
                    })
                }
            };
            st.dedup.prune(now);
            if let Some(message_id) = st.dedup.get(&id) {
                return Ok(message_id.clone());
            }
            Some(id)
        } else {
            msg.dedup_id.clone()
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let message_id = format!("{}-{seq:08}", self.name);
        if let (true, Some(id)) = (self.options.fifo, &dedup_id) {
            st.dedup.insert(id.clone(), now, message_id.clone());
        }
        st.msgs.insert(
            seq,
            Msg {
                message_id: message_id.clone(),
                body: msg.body,
                attributes: msg.attributes,
                group_id: msg.group_id,
                dedup_id,
                receive_count: 0,
                generation: 0,
                in_flight: false,
                received_at: now,
                visible_at: now,
                vis_version: 0,
                resurrected: false,
                queued: false,
            },
        );
        match msg.delay {
            Some(d) if !d.is_zero() => st.hide(seq, now + d),
            _ => {
                st.ready.push_back(seq);
                st.msgs.get_mut(&seq).expect("inserted").queued = true;
            }
        }
        drop(st);
        self.notify.notify_waiters();
        Ok(message_id)
    }

    /// Takes up to `max` visible messages, honouring FIFO group locks.
    fn take(&self, st: &mut State, max: usize, visibility: Duration, now: Instant) -> Vec<u64> {
        let fifo = self.options.fifo;
        let mut taken = Vec::new();
        let mut taken_groups: Vec<String> = Vec::new();
        let mut i = 0;
        while taken.len() < max && i < st.ready.len() {
            let seq = st.ready[i];
            let Some(in_flight) = st.msgs.get(&seq).map(|m| m.in_flight) else {
                st.ready.remove(i);
                continue;
            };
            if in_flight {
                // Listed, then received through another listing: not twice.
                st.ready.remove(i);
                if let Some(m) = st.msgs.get_mut(&seq) {
                    m.queued = false;
                }
                continue;
            }
            let m = &st.msgs[&seq];
            if fifo {
                let g = m.group_id.clone().unwrap_or_default();
                let locked = st.group_in_flight.get(&g).copied().unwrap_or(0) > 0;
                if locked && !taken_groups.contains(&g) {
                    i += 1;
                    continue;
                }
                if !taken_groups.contains(&g) {
                    taken_groups.push(g);
                }
            }
            let receive_count = m.receive_count;
            st.ready.remove(i);
            st.msgs.get_mut(&seq).expect("present").queued = false;
            // Redrive: a message past the receive limit goes to the DLQ.
            if let Some((dlq, max_receives)) = &self.options.redrive {
                if receive_count >= *max_receives {
                    let m = st.remove(seq).expect("present");
                    let _ = dlq.enqueue(OutgoingMessage {
                        body: m.body,
                        attributes: m.attributes,
                        group_id: m.group_id,
                        dedup_id: m.dedup_id.map(|d| format!("{d}-redriven")),
                        delay: None,
                    });
                    continue;
                }
            }
            let generation = st.next_generation + 1;
            st.next_generation = generation;
            let m = st.msgs.get_mut(&seq).expect("present");
            m.receive_count += 1;
            m.generation = generation;
            m.in_flight = true;
            m.received_at = now;
            st.in_flight += 1;
            if let Some(g) = &m.group_id {
                *st.group_in_flight.entry(g.clone()).or_default() += 1;
            }
            st.hide(seq, now + visibility);
            taken.push(seq);
        }
        taken
    }

    fn receive_now(
        &self,
        max: usize,
        visibility: Duration,
    ) -> (Vec<ReceivedMessage>, Option<Instant>) {
        let now = Instant::now();
        let dup_rate = self.faults.duplicate_rate();
        let mut st = self.state.lock().expect("queue lock");
        st.promote(now, self.options.fifo);
        let seqs = self.take(&mut st, max, visibility, now);
        let mut out = Vec::with_capacity(seqs.len());
        let mut duplicated = false;
        for seq in seqs {
            let m = &st.msgs[&seq];
            out.push(ReceivedMessage {
                message_id: m.message_id.clone(),
                receipt_handle: handle_of(seq, m.generation),
                body: m.body.clone(),
                attributes: m.attributes.clone(),
                receive_count: m.receive_count,
                group_id: m.group_id.clone(),
                dedup_id: m.dedup_id.clone(),
            });
            if dup_rate > 0.0 && self.faults.roll(dup_rate) {
                // Another server hands the same message out again right away.
                st.hide(seq, now);
                duplicated = true;
            }
        }
        let next = st.next_hidden();
        st.compact();
        drop(st);
        if duplicated {
            self.notify.notify_waiters();
        }
        (out, next)
    }
}

#[async_trait]
impl Queue for LocalQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_fifo(&self) -> bool {
        self.options.fifo
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        self.faults.before(Op::Receive, &self.name).await?;
        if visibility > MAX_VISIBILITY {
            return Err(visibility_refused(visibility));
        }
        let max = max.clamp(1, MAX_BATCH);
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, next_hidden) = self.receive_now(max, visibility);
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            let wake = next_hidden.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.faults.before(Op::Delete, &self.name).await?;
        let redeliver = self.faults.redeliver_rate();
        let refusals = self.faults.refusals(&self.name);
        let now = Instant::now();
        let mut st = self.state.lock().expect("queue lock");
        let out = handles
            .iter()
            .map(|h| {
                if let Some(refused) = refusals.and_then(|r| r.check(&self.name, h)) {
                    return Err(refused);
                }
                let seq = st.current(h).ok_or(BackendError::ReceiptInvalid)?;
                let resurrect =
                    redeliver > 0.0 && !st.msgs[&seq].resurrected && self.faults.roll(redeliver);
                if resurrect {
                    // A replica missed the delete: the message returns once.
                    let later = now + self.faults.jitter(Duration::from_millis(200));
                    if let Some(m) = st.msgs.get_mut(&seq) {
                        m.resurrected = true;
                    }
                    st.hide(seq, later);
                } else {
                    st.remove(seq);
                }
                Ok(())
            })
            .collect();
        st.compact();
        drop(st);
        // A FIFO group may have unlocked.
        self.notify.notify_waiters();
        Ok(out)
    }

    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.faults.before(Op::ChangeVisibility, &self.name).await?;
        let refusals = self.faults.refusals(&self.name);
        let now = Instant::now();
        let mut st = self.state.lock().expect("queue lock");
        let (mut released, mut sooner) = (false, false);
        let out = entries
            .iter()
            .map(|(h, vis)| {
                if let Some(refused) = refusals.and_then(|r| r.check(&self.name, h)) {
                    return Err(refused);
                }
                let seq = st.current(h).ok_or(BackendError::ReceiptInvalid)?;
                let m = &st.msgs[&seq];
                if !m.in_flight {
                    return Err(BackendError::ReceiptInvalid);
                }
                if *vis > MAX_VISIBILITY {
                    return Err(visibility_refused(*vis));
                }
                // As SQS: at most 12 hours from the receive, in all.
                if now + *vis > m.received_at + MAX_VISIBILITY {
                    return Err(BackendError::Invalid {
                        message: format!(
                            "Value {} for parameter VisibilityTimeout is invalid. Reason: Total \
                             VisibilityTimeout for the message is beyond the limit [{} seconds]",
                            vis.as_secs(),
                            MAX_VISIBILITY.as_secs()
                        ),
                    });
                }
                sooner |= now + *vis < m.visible_at;
                st.hide(seq, now + *vis);
                released |= vis.is_zero();
                Ok(())
            })
            .collect();
        if released {
            st.promote(now, self.options.fifo);
        }
        st.compact();
        drop(st);
        // A long poll waiting for the message's old time wakes for its new one.
        if released || sooner {
            self.notify.notify_waiters();
        }
        Ok(out)
    }

    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.faults.before(Op::Send, &self.name).await?;
        crate::backend::check_batch(&self.name, &messages)?;
        Ok(messages.into_iter().map(|m| self.enqueue(m)).collect())
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        Ok(self.depth_now())
    }

    fn receive_is_cancel_safe(&self) -> bool {
        true
    }
}
