//! Rules broken on purpose: switches that make the runtime break one of its
//! own promises, so that the fault sweep can show its checks catch a broken
//! runtime. Compiled in only with the `sabotage` feature (for ferry's own
//! tests); without it every switch is off and costs nothing.

/// One promise to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Sabotage {
    /// Nothing is broken.
    Off = 0,
    /// A worker runs each job's processor twice for one delivery.
    DoubleRun = 1,
    /// The uploader deletes a job's message before storing its result.
    DeleteBeforeUpload = 2,
    /// The publisher reports its notices accepted without publishing them.
    SkipPublish = 3,
    /// A FIFO group's next message runs without waiting for the one before.
    LoseFifoOrder = 4,
    /// A job whose processor asked for a retry, or whose upload or notice
    /// failed, is dead-lettered instead.
    DeadLetterRetries = 5,
    /// The infrastructure's failures are charged to the job as attempts.
    ChargeInfrastructure = 6,
    /// A job the idempotency store marked completed is run again.
    RunCompleted = 7,
    /// The worker threads of a runtime dropped without a shutdown go on
    /// starting the jobs queued for them.
    IgnoreHalt = 8,
}

#[cfg(feature = "sabotage")]
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Breaks `what` in every pipeline of the process from now on
/// ([`Sabotage::Off`] mends it).
#[cfg(feature = "sabotage")]
pub fn set(what: Sabotage) {
    MODE.store(what as u8, std::sync::atomic::Ordering::Release);
}

/// Whether `what` is broken now.
#[inline(always)]
pub(crate) fn on(what: Sabotage) -> bool {
    #[cfg(feature = "sabotage")]
    {
        MODE.load(std::sync::atomic::Ordering::Acquire) == what as u8
    }
    #[cfg(not(feature = "sabotage"))]
    {
        let _ = what;
        false
    }
}
