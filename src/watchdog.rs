//! The I/O thread's heartbeat, watched from a thread of its own. Every
//! pipeline's actors, lease keeping included, run on ferry's one I/O
//! thread; code that blocks it (a job-id function that waits, a backend
//! that blocks) stops them all, and from inside nothing can tell. A task on
//! the I/O thread beats; the watchdog thread notices when the beats stop
//! for longer than a bound (a quarter of the smallest visibility timeout,
//! at least a second), logs it, and counts it for the shutdown report;
//! `health()` says `blocked` while it lasts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pipeline::PipelineHealth;
/// The I/O thread's last beat, and what the watchdog saw of it.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch` at the last beat.
    last: AtomicU64,
    /// Silence longer than this is a blocked thread.
    bound: Duration,
    /// Times the watchdog saw the thread blocked.
    blocks: AtomicU64,
    /// The longest silence seen past the bound, in milliseconds.
    longest_ms: AtomicU64,
    stop: AtomicBool,
}

impl Heartbeat {
    /// A heartbeat for pipelines with these visibility timeouts: blocked
    /// past a quarter of the smallest, at least a second.
    pub(crate) fn for_visibilities(visibilities: impl Iterator<Item = Duration>) -> Arc<Self> {
        let smallest = visibilities.min().unwrap_or(Duration::from_secs(30));
        Arc::new(Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            bound: (smallest / 4).max(Duration::from_secs(1)),
            blocks: AtomicU64::new(0),
            longest_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// How often the I/O thread beats and the watchdog looks.
    fn every(&self) -> Duration {
        (self.bound / 10).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Release);
    }

    /// How long since the I/O thread last beat.
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// How long the I/O thread has been silent, when past the bound.
    pub(crate) fn blocked(&self) -> Option<Duration> {
        Some(self.silent_for()).filter(|d| *d > self.bound)
    }

    /// Beats for as long as the I/O thread runs: spawn it there.
    pub(crate) async fn keep_beating(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat();
        }
    }

    /// Starts the watchdog thread; it ends after [`Heartbeat::stop`].
    pub(crate) fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let hb = self.clone();
        std::thread::Builder::new()
            .name("ferry-watchdog".into())
            .spawn(move || hb.run())
            .map(drop)
    }

    fn run(&self) {
        let mut blocked = false;
        while !self.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(self.every());
            match self.blocked() {
                Some(silent) => {
                    if !std::mem::replace(&mut blocked, true) {
                        self.blocks.fetch_add(1, Ordering::AcqRel);
                        tracing::error!(
                            silent_ms = silent.as_millis() as u64,
                            "ferry's I/O thread is blocked: no lease is extended and no \
                             effect happens until it runs again (something blocks it: a \
                             job-id function, a backend call, an async processor on it)"
                        );
                    }
                    self.longest_ms
                        .fetch_max(silent.as_millis() as u64, Ordering::AcqRel);
                }
                None if std::mem::replace(&mut blocked, false) => {
                    tracing::warn!("ferry's I/O thread runs again");
                }
                None => {}
            }
        }
    }

    /// Ends the watchdog thread (within one look).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Adds a blocked I/O thread to a pipeline's health.
    pub(crate) fn annotate(&self, h: &mut PipelineHealth) {
        let Some(silent) = self.blocked() else {
            return;
        };
        h.io_blocked_ms = Some(silent.as_millis() as u64);
        h.problems.insert(
            0,
            format!(
                "blocked: the I/O thread has not run for {:.1} s",
                silent.as_secs_f64()
            ),
        );
        if h.status != "escalated" {
            h.status = "blocked";
        }
    }

    /// What the watchdog saw so far: how many times the I/O thread was
    /// blocked, and the longest block in milliseconds.
    pub(crate) fn blocks(&self) -> (u64, u64) {
        (
            self.blocks.load(Ordering::Acquire),
            self.longest_ms.load(Ordering::Acquire),
        )
    }
}
