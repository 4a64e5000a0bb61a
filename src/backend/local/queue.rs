//! The embedded queue: SQS semantics in memory.
//!
//! A receive hands out a fresh receipt handle each time (an older one no
//! longer deletes or changes visibility), hides the message for its visibility
//! timeout, counts receives, and moves a message to the dead-letter queue when
//! it would be received more often than the redrive policy allows. FIFO queues
//! lock a message group while any of its messages is in flight and drop a
//! resend with the same deduplication id within five minutes. Time is tokio's,
//! so paused-clock tests drive it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::faults::{FaultState, Op};
use crate::backend::{
    EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage, DEDUP_WINDOW, MAX_BATCH,
    MAX_MESSAGE_ATTRIBUTES, MAX_MESSAGE_BYTES,
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

#[derive(Debug)]
struct Msg {
    message_id: String,
    body: String,
    attributes: HashMap<String, String>,
    group_id: Option<String>,
    dedup_id: Option<String>,
    receive_count: u32,
    /// Receipt generation: the handle `seq-gen` is current only while equal.
    generation: u64,
    in_flight: bool,
    visible_at: Instant,
    /// Bumped whenever `visible_at` changes; stale heap entries are skipped.
    vis_version: u64,
    /// A redelivery-after-delete fault already hit this message.
    resurrected: bool,
    /// Listed in `ready` (at most once).
    queued: bool,
}

#[derive(Debug, Default)]
struct State {
    msgs: HashMap<u64, Msg>,
    /// Visible messages in delivery order (may name deleted ones: skipped).
    ready: VecDeque<u64>,
    /// Hidden messages by the time they become visible.
    hidden: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// FIFO: in-flight messages per group.
    group_in_flight: HashMap<String, usize>,
    /// FIFO: deduplication ids with their send time and message id.
    dedup: HashMap<String, (Instant, String)>,
    next_seq: u64,
    next_generation: u64,
    /// Messages in flight now (kept so depth is O(1)).
    in_flight: usize,
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

fn handle_of(seq: u64, generation: u64) -> String {
    format!("{seq:x}-{generation:x}")
}

fn parse_handle(handle: &str) -> Option<(u64, u64)> {
    let (seq, generation) = handle.split_once('-')?;
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(generation, 16).ok()?,
    ))
}

/// Checks one message as SQS (and SNS, for a notification) does before
/// accepting it: at most [`MAX_MESSAGE_ATTRIBUTES`] attributes, none with an
/// empty name or value, only characters SQS allows, and at most
/// [`MAX_MESSAGE_BYTES`] as SQS counts it
/// ([`message_size`](crate::backend::message_size)). `on` names the queue or topic.
pub(crate) fn validate(on: &str, m: &OutgoingMessage) -> Result<(), BackendError> {
    let n = m.attributes.len();
    if n > MAX_MESSAGE_ATTRIBUTES {
        return Err(BackendError::Invalid {
            message: format!(
                "{on}: the message has {n} message attributes; at most {MAX_MESSAGE_ATTRIBUTES}"
            ),
        });
    }
    let empty = m
        .attributes
        .iter()
        .filter(|(k, v)| k.is_empty() || v.is_empty())
        // The first by name, so the error is the same every time.
        .min_by(|a, b| a.0.cmp(b.0));
    if let Some((name, _)) = empty {
        let message = if name.is_empty() {
            format!("{on}: a message attribute has an empty name")
        } else {
            format!("{on}: message attribute `{name}` has an empty value")
        };
        return Err(BackendError::Invalid { message });
    }
    let bad_text = std::iter::once(("the body", m.body.as_str()))
        .chain(m.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .find(|(_, text)| !text.chars().all(crate::backend::sqs_allows));
    if let Some((what, _)) = bad_text {
        return Err(BackendError::Invalid {
            message: format!(
                "{on}: {} has a character SQS does not allow",
                if what == "the body" {
                    what.to_owned()
                } else {
                    format!("message attribute `{what}`")
                }
            ),
        });
    }
    let size = crate::backend::message_size(&m.body, &m.attributes);
    if size > MAX_MESSAGE_BYTES {
        return Err(BackendError::PayloadTooLarge {
            actual: size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

impl State {
    fn hide(&mut self, seq: u64, until: Instant) {
        if let Some(m) = self.msgs.get_mut(&seq) {
            m.vis_version += 1;
            m.visible_at = until;
            self.hidden.push(Reverse((until, seq, m.vis_version)));
        }
    }

    /// Makes every hidden message whose time has come visible again.
    fn promote(&mut self, now: Instant, fifo: bool) -> bool {
        let mut any = false;
        while let Some(Reverse((at, seq, version))) = self.hidden.peek().copied() {
            if at > now {
                break;
            }
            self.hidden.pop();
            let Some(m) = self.msgs.get_mut(&seq) else {
                continue;
            };
            if m.vis_version != version {
                continue;
            }
            if m.in_flight {
                m.in_flight = false;
                self.in_flight -= 1;
                if let Some(g) = &m.group_id {
                    if let Some(n) = self.group_in_flight.get_mut(g) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            // A message hidden while it was visible (a delete that a replica
            // missed, say) is listed once: listing it twice would let one
            // receive take it twice and lock its FIFO group for good.
            if std::mem::replace(&mut m.queued, true) {
                continue;
            }
            if fifo {
                // Keep send order, so a group's returning head comes first.
                let pos = self.ready.partition_point(|s| *s < seq);
                self.ready.insert(pos, seq);
            } else {
                self.ready.push_back(seq);
            }
            any = true;
        }
        any
    }

    fn next_hidden(&self) -> Option<Instant> {
        self.hidden.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes a message; returns it.
    fn remove(&mut self, seq: u64) -> Option<Msg> {
        let m = self.msgs.remove(&seq)?;
        if m.in_flight {
            self.in_flight -= 1;
            if let Some(g) = &m.group_id {
                if let Some(n) = self.group_in_flight.get_mut(g) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        Some(m)
    }

    /// Looks up the in-flight or visible message a handle is current for.
    fn current(&self, handle: &str) -> Option<u64> {
        let (seq, generation) = parse_handle(handle)?;
        let m = self.msgs.get(&seq)?;
        (m.generation == generation).then_some(seq)
    }
}

/// The deduplication id content-based deduplication gives a message, as SQS
/// does: the SHA-256 of its body (attributes not included), lowercase hex.
/// It is the job id of a message sent without one, so it must not change
/// between builds.
fn content_dedup_id(body: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
            st.dedup
                .retain(|_, (at, _)| now.duration_since(*at) < DEDUP_WINDOW);
            if let Some((_, message_id)) = st.dedup.get(&id) {
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
            st.dedup.insert(id.clone(), (now, message_id.clone()));
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
        let mut released = false;
        let out = entries
            .iter()
            .map(|(h, vis)| {
                if let Some(refused) = refusals.and_then(|r| r.check(&self.name, h)) {
                    return Err(refused);
                }
                let seq = st.current(h).ok_or(BackendError::ReceiptInvalid)?;
                if !st.msgs[&seq].in_flight {
                    return Err(BackendError::ReceiptInvalid);
                }
                st.hide(seq, now + *vis);
                released |= vis.is_zero();
                Ok(())
            })
            .collect();
        if released {
            st.promote(now, self.options.fifo);
        }
        drop(st);
        if released {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn content_based_deduplication_ids_are_the_bodys_sha256() {
        // FIPS 180-2's test vectors: a change of hash fails here.
        assert_eq!(
            content_dedup_id("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            content_dedup_id(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let q = crate::backend::local::LocalBackend::new().create_queue(
            "q.fifo",
            QueueOptions {
                fifo: true,
                content_based_dedup: true,
                ..Default::default()
            },
        );
        q.enqueue(OutgoingMessage::new("abc").group("g")).unwrap();
        // The same body within the window is dropped, whatever its attributes.
        q.enqueue(OutgoingMessage::new("abc").group("g").attribute("a", "b"))
            .unwrap();
        let got = q
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].dedup_id.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }
}
