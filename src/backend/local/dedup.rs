//! Deduplication on the embedded FIFO queues and topics: the window of ids
//! seen within [`DEDUP_WINDOW`], forgotten once it has passed at a constant
//! cost per send, and the id content-based deduplication derives.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use crate::backend::DEDUP_WINDOW;

/// Deduplication ids with the time they were first sent and a value (the
/// message id a duplicate answers with).
#[derive(Debug)]
pub(super) struct DedupWindow<V> {
    ids: HashMap<String, (Instant, V)>,
    /// The ids in the order they were sent, to forget the oldest first.
    order: VecDeque<(Instant, String)>,
}

impl<V> Default for DedupWindow<V> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> DedupWindow<V> {
    /// Forgets every id sent [`DEDUP_WINDOW`] or more before `now`.
    pub(super) fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < DEDUP_WINDOW {
                break;
            }
            let (at, id) = self.order.pop_front().expect("a front entry");
            if self.ids.get(&id).is_some_and(|(t, _)| *t == at) {
                self.ids.remove(&id);
            }
        }
        if self.ids.capacity() > 4 * self.ids.len().max(64) {
            self.ids.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }

    /// The value of an id seen within the window (after [`Self::prune`]).
    pub(super) fn get(&self, id: &str) -> Option<&V> {
        self.ids.get(id).map(|(_, v)| v)
    }

    /// Remembers a new id, sent at `now` (never earlier than the last).
    pub(super) fn insert(&mut self, id: String, now: Instant, value: V) {
        self.order.push_back((now, id.clone()));
        self.ids.insert(id, (now, value));
    }

    /// Ids remembered (for the bookkeeping count).
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The deduplication id content-based deduplication gives a message, as SQS
/// does: the SHA-256 of its body (attributes not included), lowercase hex.
/// It is the job id of a message sent without one, so it must not change
/// between builds.
pub(super) fn content_dedup_id(body: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::QueueOptions;
    use crate::backend::{OutgoingMessage, Queue};
    use std::time::Duration;

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
