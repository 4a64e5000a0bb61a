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
//!
//! A count belongs to the message it was charged against. When a failure
//! comes from another message of the same job — a re-send after another
//! worker dead-lettered the first, a redrive — the count carried over is cut
//! to what that message can have failed before (its receive count, less
//! this receive): a count left behind by the job's earlier life does not cut
//! the new one short. Copies of one job delivered together are still
//! counted together, since each copy's receive count grows with each round.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::job::JobId;

/// One job's failed attempts: how many, when the last was, and the message
/// it was charged against.
#[derive(Debug)]
struct Count {
    failures: u32,
    at: Instant,
    message: String,
}

/// Failed attempts per job, bounded.
#[derive(Debug)]
pub(crate) struct Attempts {
    map: Mutex<HashMap<JobId, Count>>,
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

    /// Counts one more failed attempt of `job`, made on receive
    /// `receive_count` of `message`; returns its attempts so far, this one
    /// included.
    pub(crate) fn failed(&self, job: &JobId, message: &str, receive_count: u32) -> u32 {
        let now = Instant::now();
        let mut map = self.map.lock().expect("attempts lock");
        if map.len() >= self.capacity && !map.contains_key(job) {
            let ttl = self.ttl;
            map.retain(|_, c| now.duration_since(c.at) < ttl);
            if map.len() >= self.capacity {
                // Still full: drop the oldest half (they only run again).
                let mut ages: Vec<Instant> = map.values().map(|c| c.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                map.retain(|_, c| c.at > cut);
            }
        }
        let c = map.entry(job.clone()).or_insert_with(|| Count {
            failures: 0,
            at: now,
            message: message.to_owned(),
        });
        if now.duration_since(c.at) >= self.ttl {
            c.failures = 0;
        }
        if c.message != message {
            // Another message of the job: at most its earlier receives
            // can have failed before this one.
            c.failures = c.failures.min(receive_count.saturating_sub(1));
            c.message = message.to_owned();
        }
        c.failures += 1;
        c.at = now;
        c.failures
    }

    /// The job's failed attempts so far.
    pub(crate) fn of(&self, job: &JobId) -> u32 {
        let map = self.map.lock().expect("attempts lock");
        map.get(job)
            .filter(|c| c.at.elapsed() < self.ttl)
            .map_or(0, |c| c.failures)
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
        assert_eq!(a.failed(&x, "m", 1), 1);
        assert_eq!(a.failed(&x, "m", 1), 2);
        assert_eq!(a.failed(&y, "m", 1), 1);
        assert_eq!(a.of(&x), 2);
        a.forget(&x);
        assert_eq!(a.of(&x), 0);
        assert_eq!(a.failed(&x, "m", 1), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_lapses_after_its_ttl() {
        let a = Attempts::new(10, Duration::from_secs(60));
        let x = JobId::new("x");
        a.failed(&x, "m", 1);
        a.failed(&x, "m", 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(a.of(&x), 0);
        assert_eq!(a.failed(&x, "m", 1), 1, "a lapsed count starts again");
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_capacity_keeping_the_newest() {
        let a = Attempts::new(100, Duration::from_secs(3600));
        for i in 0..1000 {
            a.failed(&JobId::new(format!("job-{i}")), "m", 1);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(a.len() <= 100, "{} kept", a.len());
        assert!(a.len() >= 50, "{} kept", a.len());
        assert_eq!(a.of(&JobId::new("job-999")), 1, "the newest is kept");
        assert_eq!(a.of(&JobId::new("job-0")), 0, "the oldest went");
    }

    #[tokio::test(start_paused = true)]
    async fn another_message_of_the_job_is_not_cut_short_by_an_old_count() {
        let a = Attempts::new(10, Duration::from_secs(3600));
        let x = JobId::new("x");
        for r in 1..=4 {
            assert_eq!(a.failed(&x, "first", r), r);
        }
        // A re-send (dead-lettered elsewhere meanwhile), on its first
        // receive: its own first failure.
        assert_eq!(a.failed(&x, "resend", 1), 1);
        assert_eq!(a.failed(&x, "resend", 2), 2);
        // Copies delivered by turns keep counting: each one's receive count
        // grows with every round.
        assert_eq!(a.failed(&x, "copy", 3), 3);
        assert_eq!(a.failed(&x, "resend", 4), 4);
        assert_eq!(a.of(&x), 4);
    }
}
