//! Counters per pipeline, readable at any time as a [`StatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of one pipeline.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $( pub(crate) $name: AtomicU64, )*
        }

        /// A copy of one pipeline's counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl std::ops::Add for StatsSnapshot {
            type Output = StatsSnapshot;
            fn add(self, o: StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name + o.$name, )* }
            }
        }
    };
}

counters! {
    /// Messages received (copies included).
    received,
    /// Copies that arrived while the job was in flight and joined its lease.
    duplicates_merged,
    /// Copies that arrived after the job completed and were deleted unprocessed.
    duplicates_dropped,
    /// Successful processor runs.
    processed,
    /// Processor runs that returned an error.
    failed,
    /// Processor runs that panicked.
    panics,
    /// Processors rebuilt after a panic, and actors restarted.
    restarts,
    /// Redelivered jobs whose result already existed, so processing was skipped.
    resumed,
    /// Result objects written.
    uploaded,
    /// Notifications accepted by the topic.
    published,
    /// Messages deleted after success.
    acked,
    /// Jobs put back with a backoff to be tried again.
    retried,
    /// Messages sent to the dead-letter queue.
    dead_lettered,
    /// Leases given back (visibility 0) without processing to the end.
    released,
    /// Successful visibility extensions.
    leases_extended,
    /// Leases lost (receipt invalid or maximum age reached).
    leases_lost,
    /// Times the restart limit was passed and the pipeline stopped polling.
    escalations,
    /// Jobs the idempotency store knew as completed: deleted unprocessed.
    skipped_completed,
    /// Jobs claimed by another worker: given back for a later look.
    claims_deferred,
    /// Claims lost while the job ran (renewal or completion refused): the
    /// job was cancelled before its effects, or its record left alone.
    claims_lost,
}

impl StatsSnapshot {
    /// Copies dropped or merged by the seen-ID cache.
    pub fn duplicates(&self) -> u64 {
        self.duplicates_merged + self.duplicates_dropped
    }
}

impl Stats {
    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        if n == 0 {
            return;
        }
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
