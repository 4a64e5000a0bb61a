//! How many times each job has itself failed in this process: the count
//! that sends a failing job to the dead-letter queue (DESIGN rule 7).
//!
//! Only the job's own failures count — its processor returned an error,
//! panicked or hung past its limit. Receives that never ran it (a deferral
//! behind another worker's claim, a wait behind its FIFO predecessor, a
//! give-back at shutdown) and failures of the infrastructure (throttling, an
//! upload that failed, expired credentials) do not. SQS's receive count
//! counts all of those, so it is not used.
//!
//! The count lives in this process only: a job that fails on several workers
//! is counted by each, so across a fleet it may run more often than
//! `max_receives` before one of them dead-letters it (erring toward running
//! it again); the queue's own redrive policy is the hard backstop. The map is
//! bounded by count and age, like the seen-ID cache; an entry pushed out
//! only costs the job more runs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::job::JobId;

/// Failed attempts per job, bounded.
#[derive(Debug)]
pub(crate) struct Attempts {
    map: Mutex<HashMap<JobId, (u32, Instant)>>,
    capacity: usize,
    ttl: Duration,
}

impl Attempts {
    /// At most `capacity` jobs, each kept `ttl` after its last failure.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: Mutex::default(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Counts one more failed attempt of `job`; returns its attempts so far,
    /// this one included.
    pub(crate) fn failed(&self, job: &JobId) -> u32 {
        let now = Instant::now();
        let mut map = self.map.lock().expect("attempts lock");
        if map.len() >= self.capacity && !map.contains_key(job) {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if map.len() >= self.capacity {
                // Still full: drop the oldest half (they only run again).
                let mut ages: Vec<Instant> = map.values().map(|(_, at)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                map.retain(|_, (_, at)| *at > cut);
            }
        }
        let entry = map.entry(job.clone()).or_insert((0, now));
        if now.duration_since(entry.1) >= self.ttl {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }

    /// The job's failed attempts so far.
    pub(crate) fn of(&self, job: &JobId) -> u32 {
        let map = self.map.lock().expect("attempts lock");
        map.get(job)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map_or(0, |(n, _)| *n)
    }

    /// The job finished (done or dead-lettered): its count goes.
    pub(crate) fn forget(&self, job: &JobId) {
        self.map.lock().expect("attempts lock").remove(job);
    }

    /// Jobs counted now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().expect("attempts lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_per_job_and_forgets() {
        let a = Attempts::new(10, Duration::from_secs(60));
        let (x, y) = (JobId::new("x"), JobId::new("y"));
        assert_eq!(a.failed(&x), 1);
        assert_eq!(a.failed(&x), 2);
        assert_eq!(a.failed(&y), 1);
        assert_eq!(a.of(&x), 2);
        a.forget(&x);
        assert_eq!(a.of(&x), 0);
        assert_eq!(a.failed(&x), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_lapses_after_its_ttl() {
        let a = Attempts::new(10, Duration::from_secs(60));
        let x = JobId::new("x");
        a.failed(&x);
        a.failed(&x);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(a.of(&x), 0);
        assert_eq!(a.failed(&x), 1, "a lapsed count starts again");
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_capacity_keeping_the_newest() {
        let a = Attempts::new(100, Duration::from_secs(3600));
        for i in 0..1000 {
            a.failed(&JobId::new(format!("job-{i}")));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(a.len() <= 100, "{} kept", a.len());
        assert!(a.len() >= 50, "{} kept", a.len());
        assert_eq!(a.of(&JobId::new("job-999")), 1, "the newest is kept");
        assert_eq!(a.of(&JobId::new("job-0")), 0, "the oldest went");
    }
}
