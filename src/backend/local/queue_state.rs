//! The embedded queue's state: its messages, the visible ones in delivery
//! order, the hidden ones by the time they return, FIFO group locks and the
//! deduplication window — and the bookkeeping that keeps all of it bounded
//! by the messages the queue holds, not by those it ever held.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use tokio::time::Instant;

use super::dedup::DedupWindow;

#[derive(Debug)]
pub(super) struct Msg {
    pub(super) message_id: String,
    pub(super) body: String,
    pub(super) attributes: HashMap<String, String>,
    pub(super) group_id: Option<String>,
    pub(super) dedup_id: Option<String>,
    pub(super) receive_count: u32,
    /// Receipt generation: the handle `seq-gen` is current only while equal.
    pub(super) generation: u64,
    pub(super) in_flight: bool,
    /// When the current delivery was received (SQS's 12-hour cap on its
    /// visibility counts from here).
    pub(super) received_at: Instant,
    pub(super) visible_at: Instant,
    /// Bumped whenever `visible_at` changes; stale heap entries are skipped.
    pub(super) vis_version: u64,
    /// A redelivery-after-delete fault already hit this message.
    pub(super) resurrected: bool,
    /// Listed in `ready` (at most once).
    pub(super) queued: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) msgs: HashMap<u64, Msg>,
    /// Visible messages in delivery order (may name deleted ones: skipped).
    pub(super) ready: VecDeque<u64>,
    /// Hidden messages by the time they become visible (may name deleted or
    /// re-hidden ones: skipped).
    pub(super) hidden: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// FIFO: in-flight messages per group (only groups with some).
    pub(super) group_in_flight: HashMap<String, usize>,
    /// FIFO: deduplication ids with the message id they were sent as.
    pub(super) dedup: DedupWindow<String>,
    pub(super) next_seq: u64,
    pub(super) next_generation: u64,
    /// Messages in flight now (kept so depth is O(1)).
    pub(super) in_flight: usize,
}

pub(super) fn handle_of(seq: u64, generation: u64) -> String {
    format!("{seq:x}-{generation:x}")
}

fn parse_handle(handle: &str) -> Option<(u64, u64)> {
    let (seq, generation) = handle.split_once('-')?;
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(generation, 16).ok()?,
    ))
}

/// One message of `group` is no longer in flight: a group with none left
/// is forgotten.
fn group_out(groups: &mut HashMap<String, usize>, group: &Option<String>) {
    if let Some(g) = group {
        if let Some(n) = groups.get_mut(g) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                groups.remove(g);
            }
        }
    }
}

impl State {
    pub(super) fn hide(&mut self, seq: u64, until: Instant) {
        if let Some(m) = self.msgs.get_mut(&seq) {
            m.vis_version += 1;
            m.visible_at = until;
            self.hidden.push(Reverse((until, seq, m.vis_version)));
        }
    }

    /// Makes every hidden message whose time has come visible again.
    pub(super) fn promote(&mut self, now: Instant, fifo: bool) -> bool {
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
                group_out(&mut self.group_in_flight, &m.group_id);
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

    /// Looks up the in-flight or visible message a handle is current for.
    pub(super) fn current(&self, handle: &str) -> Option<u64> {
        let (seq, generation) = parse_handle(handle)?;
        let m = self.msgs.get(&seq)?;
        (m.generation == generation).then_some(seq)
    }

    pub(super) fn next_hidden(&self) -> Option<Instant> {
        self.hidden.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes a message; returns it.
    pub(super) fn remove(&mut self, seq: u64) -> Option<Msg> {
        let m = self.msgs.remove(&seq)?;
        if m.in_flight {
            self.in_flight -= 1;
            group_out(&mut self.group_in_flight, &m.group_id);
        }
        Some(m)
    }

    /// Drops the entries of `hidden` and `ready` that name no message (or
    /// an older visibility of one) once they outnumber the messages, and
    /// gives back capacity left from a larger queue: each pass at least
    /// halves what it scans, so its cost per call stays constant.
    pub(super) fn compact(&mut self) {
        let live = self.msgs.len();
        let limit = 2 * live + 64;
        let msgs = &self.msgs;
        if self.hidden.len() > limit {
            self.hidden.retain(|Reverse((_, seq, version))| {
                msgs.get(seq).is_some_and(|m| m.vis_version == *version)
            });
        }
        if self.ready.len() > limit {
            self.ready.retain(|seq| msgs.contains_key(seq));
        }
        if self.hidden.capacity() > 4 * limit {
            self.hidden.shrink_to(limit);
        }
        if self.ready.capacity() > 4 * limit {
            self.ready.shrink_to(limit);
        }
        if self.msgs.capacity() > 4 * limit {
            self.msgs.shrink_to(limit);
        }
        if self.group_in_flight.capacity() > 4 * (self.group_in_flight.len() + 64) {
            self.group_in_flight.shrink_to_fit();
        }
    }

    /// Each message's place in the bookkeeping: in flight, listed as
    /// visible, its hidden entry and when it returns, its FIFO group's lock.
    pub(super) fn explain(&self, now: Instant) -> Vec<String> {
        let mut seqs: Vec<_> = self.msgs.keys().copied().collect();
        seqs.sort_unstable();
        seqs.iter()
            .map(|s| {
                let m = &self.msgs[s];
                let listed = self.ready.iter().filter(|r| *r == s).count();
                let hidden: Vec<_> = self
                    .hidden
                    .iter()
                    .filter(|e| e.0 .1 == *s && e.0 .2 == m.vis_version)
                    .map(|e| e.0 .0.saturating_duration_since(now).as_millis())
                    .collect();
                let lock = m
                    .group_id
                    .as_ref()
                    .map(|g| self.group_in_flight.get(g).copied().unwrap_or(0));
                format!(
                    "{}: in_flight {}, queued {}, listed {listed}×, hidden in {hidden:?} ms, \
                     visible_at in {} ms, group {:?} lock {lock:?}, resurrected {}",
                    m.message_id,
                    m.in_flight,
                    m.queued,
                    m.visible_at.saturating_duration_since(now).as_millis(),
                    m.group_id,
                    m.resurrected
                )
            })
            .collect()
    }

    /// Entries of every table beside the messages themselves: what the
    /// queue keeps to find, order, lock and deduplicate them.
    pub(super) fn bookkeeping(&self) -> usize {
        self.ready.len() + self.hidden.len() + self.group_in_flight.len() + self.dedup.len()
    }
}
