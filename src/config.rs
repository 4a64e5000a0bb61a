//! Pipeline settings: a plain struct with defaults fit for SQS.

use std::time::Duration;

/// How a pipeline's processors and actors are supervised (Erlang's
/// vocabulary: permanent children, restarted one-for-one with backoff).
///
/// The limit measures the worker, not the work: a job that panics is retried
/// and then dead-lettered like any failing job, and only restarts that keep
/// coming with no job succeeding in between escalate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// Restarts (processor rebuilds, actor restarts, worker threads
    /// respawned) in a row with no job succeeding in between, past which the
    /// pipeline escalates: it stops polling, gives back its leases, reports
    /// itself escalated and pauses.
    pub max_restarts: u32,
    /// First restart delay; doubles with each restart in a row.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest restart delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long an escalated pipeline pauses before polling again (doubling
    /// with each escalation, at most ten minutes).
    #[serde(with = "humantime_serde")]
    pub escalation_pause: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 50,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
            escalation_pause: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// The delay before the n-th consecutive restart (n ≥ 1).
    pub fn backoff(&self, n: u32) -> Duration {
        crate::backoff::Backoff::exact(self.backoff_base, self.backoff_max).delay(n)
    }
}

/// Settings of one pipeline. They (de)serialize with serde, durations in
/// human form (`"30s"`, `"1h 30m"`), every field optional (its default
/// when absent) and unknown fields refused; [`crate::Settings`] reads them
/// from a file and the environment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Processor threads.
    pub workers: usize,
    /// Jobs received but not yet started, at most. The default adapts: a
    /// quarter second of work at the rate jobs have been starting, at least
    /// twice the workers plus one batch, at most `max_in_flight`. It keeps a
    /// worker from hoarding messages its fleet could run, while its
    /// processors never wait for a receive.
    pub prefetch: Option<usize>,
    /// Leases held at once, in any stage; a hard cap above `prefetch`.
    pub max_in_flight: usize,
    /// Async and batch processors: jobs running at once (a sync processor
    /// runs `workers` at once). Independent of the receive batch size;
    /// `max_in_flight` must leave room for it.
    pub concurrency: usize,
    /// Most receives in flight at once. The poller starts with one, adds one
    /// while receives come back full and drops one after an empty receive.
    /// A FIFO source always has one, so batches arrive in the queue's order.
    pub receive_concurrency: usize,
    /// Long-polling wait of one receive (SQS allows up to 20 s), at most two
    /// fifths of the visibility ([`PipelineConfig::poll_wait`]).
    #[serde(with = "humantime_serde")]
    pub receive_wait: Duration,
    /// Visibility set on receive and by each extension.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// A lease is not extended past this age (SQS caps it at 12 h); the job
    /// is then cancelled and its message released.
    #[serde(with = "humantime_serde")]
    pub max_lease_age: Duration,
    /// After this many failed attempts of its own (its processor returned an
    /// error, panicked or hung) a job goes to the dead-letter queue. Receives
    /// that never ran it and failures of the infrastructure are not
    /// attempts; the count is kept per process (see DESIGN rule 7).
    pub max_receives: u32,
    /// A backstop on SQS's receive count, for a message that never gets an
    /// outcome (a worker killed during it every time): past this many
    /// receives it is dead-lettered unrun. Off by default: the queue's own
    /// redrive policy (`maxReceiveCount`) is the usual backstop, and SQS
    /// counts receives that never ran the job (deferrals, FIFO waits) too.
    pub max_deliveries: Option<u32>,
    /// Visibility after the first failed attempt; doubles per receive.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_base: Duration,
    /// Longest retry backoff.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Pending deletes, visibility changes and notifications are sent at
    /// once when ten are waiting, else after waiting this long: a longer
    /// interval fills more batches (fewer paid calls), a shorter one settles
    /// single jobs sooner.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long a completed job id is remembered.
    #[serde(with = "humantime_serde")]
    pub seen_ttl: Duration,
    /// How many job ids are remembered at most.
    pub seen_capacity: usize,
    /// Attempts of an upload or publish before the job is retried later.
    pub effect_attempts: u32,
    /// Largest object [`crate::Context::fetch`] accepts; a larger one is bad input.
    pub max_fetch_bytes: usize,
    /// Processor and actor supervision.
    pub restart: RestartPolicy,
    /// Longest any backend or store call may take before it counts as a
    /// transient failure (a receive may take its long-poll wait on top).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// A lease that stays this long in a state whose next step an actor
    /// owns (gate, uploader, publisher, acker) marks that actor stalled: it
    /// is restarted and picks the lease up again.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// How long an idempotency claim holds without renewal (the lease keeper
    /// renews it with each extension); `None`: the visibility timeout. A
    /// worker killed mid-job blocks its job for about this long.
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Option<Duration>,
    /// How long a completed job is remembered by the idempotency store:
    /// copies arriving within it are deleted unprocessed.
    #[serde(with = "humantime_serde")]
    pub completed_ttl: Duration,
    /// Deletes S3's test event (`"Event":"s3:TestEvent"`, sent to the queue
    /// when a bucket notification is configured) as it is received, without
    /// running the processor, storing or publishing anything; counted in
    /// `s3_test_events` (and `acked`). Off: the processor sees it like any
    /// other message.
    pub drop_s3_test_events: bool,

    // Stuck user code.
    /// How long a sync job may go on running after its cancellation (its
    /// lease lost, or its maximum age reached) before its worker thread is
    /// abandoned: a new thread takes its place in the pool and the old one
    /// is left, detached, to finish or hang on its own. A job that has
    /// itself run for half its lease's age or more when the lease reaches
    /// its age limit counts one failed attempt ("timed out"), so a
    /// job that hangs every time ends in the dead-letter queue.
    #[serde(with = "humantime_serde")]
    pub hang_grace: Duration,
    /// Abandoned worker threads alive at once, at most. Past it a stuck
    /// worker is not replaced (threads are never spawned without bound) and
    /// `health()` reports the pipeline degraded.
    pub max_abandoned_workers: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefetch: None,
            max_in_flight: 1024,
            concurrency: 256,
            receive_concurrency: 16,
            receive_wait: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(30),
            max_lease_age: Duration::from_secs(11 * 3600 + 50 * 60),
            max_receives: 5,
            max_deliveries: None,
            retry_backoff_base: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(15 * 60),
            flush_interval: Duration::from_millis(100),
            seen_ttl: Duration::from_secs(15 * 60),
            seen_capacity: 100_000,
            effect_attempts: 4,
            max_fetch_bytes: 64 * 1024 * 1024,
            restart: RestartPolicy::default(),
            call_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(300),
            claim_ttl: None,
            completed_ttl: Duration::from_secs(7 * 24 * 3600),
            drop_s3_test_events: true,
            hang_grace: Duration::from_secs(10),
            max_abandoned_workers: 16,
        }
    }
}

impl PipelineConfig {
    /// The prefetch limit in force when jobs start at `rate` per second.
    pub fn prefetch_limit(&self, rate: f64) -> usize {
        let floor = 2 * self.workers + crate::backend::MAX_BATCH;
        let adaptive = ((rate * 0.25) as usize).clamp(floor, self.max_in_flight.max(floor));
        self.prefetch.unwrap_or(adaptive).max(1)
    }

    /// How long a claim holds without renewal.
    pub fn claim_hold(&self) -> Duration {
        self.claim_ttl.unwrap_or(self.visibility_timeout)
    }

    /// The visibility to set after the `receive_count`-th attempt failed.
    pub fn retry_backoff(&self, receive_count: u32) -> Duration {
        crate::backoff::Backoff::exact(self.retry_backoff_base, self.retry_backoff_max)
            .delay(receive_count)
    }
}

/// A setting [`PipelineConfig::validate`] refuses, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field of [`PipelineConfig`] at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl PipelineConfig {
    /// The shortest visibility a lease can be kept under: the keeper looks
    /// at its leases a tenth of the visibility apart but at most every
    /// 5 ms, so below 50 ms a look would come too late to extend in time.
    pub const MIN_VISIBILITY: Duration = Duration::from_millis(50);

    /// The share of the visibility one long poll may wait, in fifths.
    const POLL_FIFTHS: u32 = 2;

    /// How long one receive waits for messages: `receive_wait`, but at
    /// most two fifths of the visibility. A lease's deadline counts from
    /// when its receive was sent (the queue may start the visibility clock
    /// any time before it answers), so a message arriving at the end of
    /// the wait still has three fifths of its lease: more than the half at
    /// which the keeper extends it, with a look to spare.
    pub fn poll_wait(&self) -> Duration {
        self.receive_wait
            .min(self.visibility_timeout * Self::POLL_FIFTHS / 5)
    }

    /// Why a lease held `age` since its receive was sent is not extended
    /// again, if it is not: the next extension would keep its message
    /// hidden past `max_lease_age`, or, given the quarter of the visibility
    /// an extension has to land in, past SQS's 12 hours from the receive
    /// ([`crate::backend::MAX_VISIBILITY`]), which SQS refuses. The lease
    /// keeper then cancels the job and releases the message.
    pub fn lease_age_limit(&self, age: Duration) -> Option<&'static str> {
        let hidden_until = age + self.visibility_timeout;
        if hidden_until > self.max_lease_age {
            Some("max_lease_age")
        } else if hidden_until + self.visibility_timeout / 4 > crate::backend::MAX_VISIBILITY {
            Some("SQS's 12 hours from the receive")
        } else {
            None
        }
    }

    /// Refuses, naming the field, a setting SQS cannot serve or ferry
    /// cannot work with: a visibility or maximum lease age over SQS's
    /// 12 hours ([`crate::backend::MAX_VISIBILITY`]), a visibility under
    /// [`PipelineConfig::MIN_VISIBILITY`] (too short to extend), and a
    /// count of zero where at least one is needed. `Runtime::start` calls
    /// it for every pipeline.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, message: String| Err(ConfigError { field, message });
        let cap = crate::backend::MAX_VISIBILITY;
        let secs = |d: Duration| d.as_secs_f64();
        for (field, value) in [
            ("visibility_timeout", self.visibility_timeout),
            ("max_lease_age", self.max_lease_age),
        ] {
            if value > cap {
                return fail(
                    field,
                    format!(
                        "of {} s is over SQS's 12 hours ({} s) from the receive",
                        secs(value),
                        cap.as_secs()
                    ),
                );
            }
        }
        if self.visibility_timeout < Self::MIN_VISIBILITY {
            return fail(
                "visibility_timeout",
                format!(
                    "of {} s is too short to extend: at least {} ms",
                    secs(self.visibility_timeout),
                    Self::MIN_VISIBILITY.as_millis()
                ),
            );
        }
        for (field, value) in [
            ("workers", self.workers),
            ("max_in_flight", self.max_in_flight),
            ("concurrency", self.concurrency),
            ("receive_concurrency", self.receive_concurrency),
            ("max_receives", self.max_receives as usize),
        ] {
            if value == 0 {
                return fail(field, "must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_grows_and_caps() {
        let c = PipelineConfig::default();
        assert_eq!(c.retry_backoff(1), Duration::from_secs(1));
        assert_eq!(c.retry_backoff(3), Duration::from_secs(4));
        assert_eq!(c.retry_backoff(40), c.retry_backoff_max);
    }
}
