//! The per-process seen-ID cache (DESIGN rule 4): a job runs at most once at a
//! time in this process, a copy that arrives mid-flight joins the first's
//! lease, and a copy that arrives after completion is dropped unprocessed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::time::Instant;

use super::held::Lease;
use crate::job::{JobId, JobKey};

/// The cache keeps no id strings, only their hashes.
type Key = JobKey;

#[derive(Debug, Clone)]
enum Seen {
    InFlight(Arc<Lease>),
    /// Completed, at this many milliseconds after the cache's epoch.
    Done(u64),
}

/// What a delivery is, as far as this process knows.
#[allow(missing_docs)]
#[derive(Debug)]
pub enum Arrival {
    /// Not seen (or seen long ago): process it under this new lease.
    New(Arc<Lease>),
    /// The same job is in flight under this lease.
    InFlight(Arc<Lease>),
    /// The same job completed within the TTL.
    Done,
}

/// The seen-ID cache, bounded by count and by age of completed entries.
#[derive(Debug)]
pub struct SeenCache {
    map: DashMap<Key, Seen, rustc_hash::FxBuildHasher>,
    completed: Mutex<VecDeque<(u64, Key)>>,
    /// Messages already dead-lettered, by message id, with the time.
    dead: Mutex<std::collections::HashMap<String, u64>>,
    any_dead: std::sync::atomic::AtomicBool,
    epoch: Instant,
    ttl: Duration,
    capacity: usize,
}

impl SeenCache {
    /// A cache remembering completed ids for `ttl`, at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            map: DashMap::with_hasher(rustc_hash::FxBuildHasher),
            completed: Mutex::new(VecDeque::new()),
            dead: Mutex::default(),
            any_dead: Default::default(),
            epoch: Instant::now(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    /// Classifies a delivery; `make` creates the lease of a new one.
    pub fn arrive(&self, id: &JobId, make: impl FnOnce() -> Arc<Lease>) -> Arrival {
        self.arrive_key(id.key(), make)
    }

    /// [`SeenCache::claim`] by a key already hashed.
    pub(crate) fn arrive_key(&self, k: Key, make: impl FnOnce() -> Arc<Lease>) -> Arrival {
        let ttl = self.ttl.as_millis() as u64;
        match self.map.entry(k) {
            Entry::Occupied(mut e) => match e.get() {
                Seen::InFlight(lease) => Arrival::InFlight(lease.clone()),
                Seen::Done(at) if self.now_ms().saturating_sub(*at) < ttl => Arrival::Done,
                Seen::Done(_) => {
                    let lease = make();
                    e.insert(Seen::InFlight(lease.clone()));
                    Arrival::New(lease)
                }
            },
            Entry::Vacant(v) => {
                let lease = make();
                v.insert(Seen::InFlight(lease.clone()));
                Arrival::New(lease)
            }
        }
    }

    /// The job finished (deleted or dead-lettered): later copies are dropped.
    pub fn complete(&self, id: &JobId) {
        self.complete_keys(&[id.key()]);
    }

    /// Marks a batch of jobs completed at once (one clock read, one lock).
    pub(crate) fn complete_keys(&self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        let now = self.now_ms();
        let ttl = self.ttl.as_millis() as u64;
        for k in keys {
            self.map.insert(*k, Seen::Done(now));
        }
        let mut done = self.completed.lock().expect("seen lock");
        done.extend(keys.iter().map(|k| (now, *k)));
        while let Some((at, old)) = done.front() {
            let expired = now.saturating_sub(*at) >= ttl;
            if !expired && self.map.len() <= self.capacity {
                break;
            }
            // Only drop the entry this record stands for, not a newer one.
            self.map
                .remove_if(old, |_, s| matches!(s, Seen::Done(t) if t == at));
            done.pop_front();
        }
    }

    /// The job will come back (retry, release, lost lease): forget it.
    pub fn forget(&self, lease: &Lease) {
        self.map.remove_if(
            &lease.seen_key,
            |_, s| matches!(s, Seen::InFlight(l) if l.id == lease.id),
        );
    }

    /// A message (by its queue's message id, not the job id) whose
    /// dead-letter entry is sent: should it come back (its delete failed),
    /// it is deleted without a second entry. A redrive or a fixed re-send is
    /// a new message and runs.
    pub(crate) fn dead_lettered(&self, message_id: &str) {
        let now = self.now_ms();
        let ttl = self.ttl.as_millis() as u64;
        let mut d = self.dead.lock().expect("seen lock");
        d.retain(|_, at| now.saturating_sub(*at) < ttl);
        if d.len() < self.capacity {
            d.insert(message_id.to_owned(), now);
        }
        self.any_dead
            .store(!d.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// Whether this message's dead-letter entry was already sent.
    pub(crate) fn was_dead_lettered(&self, message_id: &str) -> bool {
        // The common case, no dead letters at all, takes no lock.
        if !self.any_dead.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let d = self.dead.lock().expect("seen lock");
        d.get(message_id)
            .is_some_and(|at| self.now_ms().saturating_sub(*at) < self.ttl.as_millis() as u64)
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ReceivedMessage;
    use crate::job::Job;
    use crate::lease::LeaseTable;

    fn lease(table: &LeaseTable, id: &str) -> Arc<Lease> {
        let job = Job::from_message(ReceivedMessage {
            message_id: id.into(),
            receipt_handle: "h".into(),
            body: String::new(),
            attributes: Default::default(),
            receive_count: 1,
            group_id: None,
            dedup_id: None,
        });
        table.insert(job, "h".into(), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_then_done_then_expired() {
        let table = LeaseTable::default();
        let cache = SeenCache::new(Duration::from_secs(60), 100);
        let id = JobId::new("a");
        let first = match cache.arrive(&id, || lease(&table, "a")) {
            Arrival::New(l) => l,
            other => panic!("expected new, got {other:?}"),
        };
        assert!(
            matches!(cache.arrive(&id, || lease(&table, "a")), Arrival::InFlight(l) if l.id == first.id)
        );
        cache.complete(&id);
        assert!(matches!(
            cache.arrive(&id, || lease(&table, "a")),
            Arrival::Done
        ));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            cache.arrive(&id, || lease(&table, "a")),
            Arrival::New(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_capacity() {
        let table = LeaseTable::default();
        let cache = SeenCache::new(Duration::from_secs(3600), 100);
        for i in 0..1000 {
            let id = JobId::new(format!("j{i}"));
            let _ = cache.arrive(&id, || lease(&table, "x"));
            cache.complete(&id);
        }
        // It keeps exactly the newest 100: those are still dropped as done,
        // the older ones are forgotten.
        assert_eq!(cache.len(), 100);
        for i in 900..1000 {
            let id = JobId::new(format!("j{i}"));
            assert!(
                matches!(cache.arrive(&id, || lease(&table, "x")), Arrival::Done),
                "j{i} forgotten"
            );
        }
        for i in [0, 1, 500, 899] {
            let id = JobId::new(format!("j{i}"));
            assert!(
                matches!(cache.arrive(&id, || lease(&table, "x")), Arrival::New(_)),
                "j{i} kept"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_age() {
        let table = LeaseTable::default();
        let cache = SeenCache::new(Duration::from_secs(60), 100);
        assert!(cache.is_empty());
        for i in 0..10 {
            let id = JobId::new(format!("j{i}"));
            let _ = cache.arrive(&id, || lease(&table, "x"));
            assert!(!cache.is_empty());
            cache.complete(&id);
        }
        assert_eq!(cache.len(), 10);
        tokio::time::advance(Duration::from_secs(60)).await;
        // The next completion drops every entry of the TTL's age.
        let id = JobId::new("late");
        let _ = cache.arrive(&id, || lease(&table, "x"));
        cache.complete(&id);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_job_is_dropped_until_exactly_the_ttl() {
        let table = LeaseTable::default();
        let cache = SeenCache::new(Duration::from_secs(60), 100);
        let id = JobId::new("a");
        let _ = cache.arrive(&id, || lease(&table, "a"));
        cache.complete(&id);
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert!(matches!(
            cache.arrive(&id, || lease(&table, "a")),
            Arrival::Done
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(
            cache.arrive(&id, || lease(&table, "a")),
            Arrival::New(_)
        ));
    }

    /// The key is all 128 bits of the id's xxh3 (fixed values, computed
    /// once outside ferry): no half of it is dropped.
    #[test]
    fn the_key_is_the_ids_128_bit_xxh3() {
        assert_eq!(
            JobId::new("job-1").key(),
            [0xa733_14ba_43d2_8cef, 0x3327_6808_5871_1e9f]
        );
    }

    /// DESIGN rule 13: a dead-lettered message's id is remembered (for the
    /// TTL), so its return is deleted without a second entry; others are not.
    #[tokio::test(start_paused = true)]
    async fn dead_lettered_messages_are_remembered_for_the_ttl() {
        let cache = SeenCache::new(Duration::from_secs(60), 100);
        assert!(!cache.was_dead_lettered("m1"));
        cache.dead_lettered("m1");
        assert!(cache.was_dead_lettered("m1"));
        assert!(!cache.was_dead_lettered("m2"));
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.dead_lettered("m2");
        assert!(
            cache.was_dead_lettered("m1"),
            "a second one dropped the first"
        );
        assert!(cache.was_dead_lettered("m2"));
        // Job ids are another space: nothing here is a completed job.
        assert!(cache.is_empty());
        tokio::time::advance(Duration::from_millis(58_999)).await;
        assert!(cache.was_dead_lettered("m1"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!cache.was_dead_lettered("m1"), "remembered past the TTL");
        assert!(cache.was_dead_lettered("m2"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!cache.was_dead_lettered("m2"));
    }

    #[tokio::test(start_paused = true)]
    async fn dead_lettered_messages_are_bounded_by_count_and_age() {
        let cache = SeenCache::new(Duration::from_secs(60), 2);
        for m in ["m1", "m2", "m3"] {
            cache.dead_lettered(m);
        }
        let kept = ["m1", "m2", "m3"]
            .iter()
            .filter(|m| cache.was_dead_lettered(m))
            .count();
        assert_eq!(kept, 2, "at most the capacity, and up to it");
        // At the TTL the old ones make room for a new one.
        tokio::time::advance(Duration::from_secs(60)).await;
        cache.dead_lettered("m4");
        assert!(cache.was_dead_lettered("m4"));
        let one = SeenCache::new(Duration::from_secs(60), 1);
        one.dead_lettered("a");
        tokio::time::advance(Duration::from_secs(60)).await;
        one.dead_lettered("b");
        assert!(one.was_dead_lettered("b"), "an expired entry kept its room");
    }

    #[tokio::test(start_paused = true)]
    async fn forget_only_drops_its_own_lease() {
        let table = LeaseTable::default();
        let cache = SeenCache::new(Duration::from_secs(60), 100);
        let id = JobId::new("a");
        let Arrival::New(first) = cache.arrive(&id, || lease(&table, "a")) else {
            panic!()
        };
        let other = lease(&table, "a");
        cache.forget(&other);
        assert!(matches!(
            cache.arrive(&id, || lease(&table, "a")),
            Arrival::InFlight(_)
        ));
        cache.forget(&first);
        assert!(matches!(
            cache.arrive(&id, || lease(&table, "a")),
            Arrival::New(_)
        ));
    }
}
