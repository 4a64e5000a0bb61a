//! The runtime: the root of the supervision tree. It runs every pipeline's
//! actors on an I/O thread of its own (an actix system), so a service's own
//! `#[tokio::main]` never touches actix, and hands back a [`RuntimeHandle`]
//! with stats and a graceful [`RuntimeHandle::shutdown`].

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::FerryError;
use crate::pipeline::{self, Flush, Pipeline, PipelineHealth, Running, Shared, StopPolling};
use crate::stats::StatsSnapshot;
use crate::watchdog::Heartbeat;

/// Entry point: `Runtime::builder().pipeline(…).start().await`.
#[derive(Debug)]
pub struct Runtime;

impl Runtime {
    /// A builder with no pipelines and a 30 s shutdown grace period.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            pipelines: Vec::new(),
            grace: Duration::from_secs(30),
            #[cfg(feature = "http")]
            http: None,
        }
    }
}

/// Collects pipelines, then starts them.
#[derive(Debug)]
pub struct RuntimeBuilder {
    pipelines: Vec<Pipeline>,
    grace: Duration,
    #[cfg(feature = "http")]
    http: Option<crate::http::Endpoint>,
}

impl RuntimeBuilder {
    /// Adds a pipeline.
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipelines.push(pipeline);
        self
    }

    /// How long [`RuntimeHandle::shutdown`] lets started jobs finish.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` (see [`crate::http`]):
    /// on an address or with [`crate::http::HttpOptions`], a server started
    /// and stopped with the runtime ([`RuntimeHandle::http_addr`]); or on a
    /// running [`crate::http::HttpServer`], which outlives the runtime.
    #[cfg(feature = "http")]
    pub fn serve_http(mut self, endpoint: impl Into<crate::http::Endpoint>) -> Self {
        self.http = Some(endpoint.into());
        self
    }

    /// Checks the pipelines and starts them on the runtime's I/O thread.
    pub async fn start(mut self) -> Result<RuntimeHandle, FerryError> {
        let mut names = std::collections::HashSet::new();
        for p in &self.pipelines {
            p.check()?;
            if !names.insert(p.name.clone()) {
                return Err(FerryError::Config {
                    pipeline: p.name.clone(),
                    message: "two pipelines have this name".into(),
                });
            }
        }
        // The recorder goes in before the pipelines register their metrics.
        #[cfg(feature = "http")]
        let http = match self.http.take() {
            Some(e) => Some(crate::http::Opened::open(e, &self.pipelines)?),
            None => None,
        };
        let (jobs_rt, heartbeat) = watched_runtimes(&mut self.pipelines)?;
        let shared: Vec<Arc<Shared>> = self.pipelines.into_iter().map(Shared::new).collect();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (cmd_tx, cmd_rx) = oneshot::channel::<Duration>();
        let (done_tx, done_rx) = oneshot::channel();
        let for_thread = shared.clone();
        let beats = heartbeat.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-io".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    actix_rt::spawn(beats.keep_beating());
                    let running: Vec<Running> =
                        for_thread.into_iter().map(pipeline::start).collect();
                    let _ = ready_tx.send(());
                    // A dropped handle (abort) ends the system without a drain.
                    if let Ok(grace) = cmd_rx.await {
                        let report = drain(&running, grace).await;
                        let _ = done_tx.send(report);
                    }
                });
            })
            .map_err(|e| FerryError::Runtime(format!("could not start the I/O thread: {e}")))?;
        ready_rx
            .await
            .map_err(|_| FerryError::Runtime("the I/O thread died while starting".into()))?;
        heartbeat
            .watch()
            .map_err(|e| FerryError::Runtime(format!("could not start the watchdog: {e}")))?;
        #[cfg(feature = "http")]
        let http = http.map(|h| {
            let (s, beat) = (shared.clone(), heartbeat.clone());
            h.attach(Arc::new(move || health_of(&s, &beat)))
        });
        Ok(RuntimeHandle {
            #[cfg(feature = "http")]
            http,
            shared,
            grace: self.grace,
            cmd: Some(cmd_tx),
            done: Some(done_rx),
            thread: Some(thread),
            jobs_rt,
            heartbeat,
        })
    }
}

/// One pipeline's counters and its leases held now.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStats {
    /// The pipeline's name.
    pub name: String,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// Leases held now.
    pub in_flight: usize,
    /// Whether it is escalated now (restarts in a row past its limit):
    /// polling paused, leases given back.
    pub escalated: bool,
}

/// What a graceful shutdown did.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// Leases of jobs not yet started, released at once.
    pub released_unstarted: usize,
    /// Leases of started jobs that outlived the grace period, released.
    pub released_after_grace: usize,
    /// Leases still held when the runtime stopped (0 unless the queue
    /// refused every release).
    pub held_at_exit: usize,
    /// How long the shutdown took, in milliseconds.
    pub elapsed_ms: u64,
    /// Times the watchdog saw ferry's I/O thread blocked (not running for
    /// longer than its bound) while the runtime ran.
    pub io_thread_blocks: u64,
    /// The longest of those blocks, in milliseconds.
    pub longest_io_block_ms: u64,
}

/// A running runtime. Dropping it without [`RuntimeHandle::shutdown`] stops
/// everything at once, as a crash would.
#[derive(Debug)]
pub struct RuntimeHandle {
    shared: Vec<Arc<Shared>>,
    grace: Duration,
    cmd: Option<oneshot::Sender<Duration>>,
    done: Option<oneshot::Receiver<ShutdownReport>>,
    thread: Option<JoinHandle<()>>,
    /// Where async and batch jobs run (see `Pipeline::runtime`).
    jobs_rt: Option<tokio::runtime::Runtime>,
    heartbeat: Arc<Heartbeat>,
    /// The HTTP endpoint's hold on this runtime (`serve_http`).
    #[cfg(feature = "http")]
    http: Option<crate::http::Attached>,
}

/// The runtimes a `Runtime` owns beside its I/O thread: one for async and
/// batch jobs (when a pipeline needs it), and the I/O thread's watchdog.
fn watched_runtimes(
    pipelines: &mut [Pipeline],
) -> Result<(Option<tokio::runtime::Runtime>, Arc<Heartbeat>), FerryError> {
    let jobs_rt = pipeline::jobs_runtime(pipelines)
        .map_err(|e| FerryError::Runtime(format!("could not start the jobs' runtime: {e}")))?;
    let heartbeat =
        Heartbeat::for_visibilities(pipelines.iter().map(|p| p.config.visibility_timeout));
    Ok((jobs_rt, heartbeat))
}

impl RuntimeHandle {
    /// Stops the watchdog and the jobs' runtime (after the I/O thread).
    fn stop_owned(&mut self) {
        #[cfg(feature = "http")]
        if let Some(h) = self.http.take() {
            h.detach();
        }
        self.heartbeat.stop();
        if let Some(rt) = self.jobs_rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .finish()
    }
}

/// Reads a runtime's counters, also after its shutdown (so a report can
/// include what the drain did). From [`RuntimeHandle::stats_reader`].
#[derive(Debug, Clone)]
pub struct StatsReader {
    shared: Vec<Arc<Shared>>,
}

impl StatsReader {
    /// Every pipeline's counters.
    pub fn stats(&self) -> Vec<PipelineStats> {
        pipeline_stats(&self.shared)
    }

    /// All pipelines' counters added up.
    pub fn total(&self) -> StatsSnapshot {
        self.shared
            .iter()
            .map(|s| s.stats.snapshot())
            .fold(StatsSnapshot::default(), |a, b| a + b)
    }
}

fn health_of(shared: &[Arc<Shared>], heartbeat: &Heartbeat) -> Vec<PipelineHealth> {
    shared
        .iter()
        .map(|s| {
            let mut h = s.health_report();
            heartbeat.annotate(&mut h);
            h
        })
        .collect()
}

fn pipeline_stats(shared: &[Arc<Shared>]) -> Vec<PipelineStats> {
    shared
        .iter()
        .map(|s| PipelineStats {
            name: s.name.to_string(),
            stats: s.stats.snapshot(),
            in_flight: s.leases_held(),
            escalated: s.is_escalated(),
        })
        .collect()
}

impl RuntimeHandle {
    /// Every pipeline's counters.
    pub fn stats(&self) -> Vec<PipelineStats> {
        pipeline_stats(&self.shared)
    }

    /// A reader of the counters that outlives this handle.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            shared: self.shared.clone(),
        }
    }

    /// One pipeline's counters.
    pub fn stats_of(&self, pipeline: &str) -> Option<StatsSnapshot> {
        self.shared
            .iter()
            .find(|s| &*s.name == pipeline)
            .map(|s| s.stats.snapshot())
    }

    /// All pipelines' counters added up.
    pub fn total(&self) -> StatsSnapshot {
        self.shared
            .iter()
            .map(|s| s.stats.snapshot())
            .fold(StatsSnapshot::default(), |a, b| a + b)
    }

    /// Leases held now, over all pipelines.
    pub fn in_flight(&self) -> usize {
        self.shared.iter().map(|s| s.leases_held()).sum()
    }

    /// Every pipeline's health: running, escalated (with the reason),
    /// blocked (ferry's I/O thread has not run for a while), degraded
    /// (worker threads abandoned) or stalled (leases an actor has not moved
    /// past the stall timeout).
    pub fn health(&self) -> Vec<PipelineHealth> {
        health_of(&self.shared, &self.heartbeat)
    }

    /// Where [`RuntimeBuilder::serve_http`]'s endpoints listen.
    #[cfg(feature = "http")]
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr())
    }

    /// The first pipeline that has escalated, as an error.
    fn escalation(&self) -> Option<FerryError> {
        self.shared.iter().find_map(|s| {
            s.escalated_for().map(|reason| FerryError::Escalated {
                pipeline: s.name.to_string(),
                reason,
            })
        })
    }

    /// Stops polling, releases the leases of jobs not yet started, lets
    /// started jobs finish within the grace period, flushes pending deletes,
    /// then releases whatever remains.
    pub async fn shutdown(mut self) -> ShutdownReport {
        #[cfg(feature = "http")]
        if let Some(h) = &self.http {
            h.stopping();
        }
        let mut report = match (self.cmd.take(), self.done.take()) {
            (Some(cmd), Some(done)) => {
                let _ = cmd.send(self.grace);
                done.await.unwrap_or_default()
            }
            _ => ShutdownReport::default(),
        };
        self.heartbeat.stop();
        (report.io_thread_blocks, report.longest_io_block_ms) = self.heartbeat.blocks();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // The drain is over: what is left (a worker thread left behind by a
        // hung job, a task of the jobs' runtime) starts nothing more.
        for s in &self.shared {
            s.halt();
        }
        self.stop_owned();
        report
    }

    /// Runs until `stop` completes (a signal, a spot-interruption notice, a
    /// test's trigger), then shuts down gracefully. If a pipeline escalates
    /// first (its worker looks broken: restarts in a row with no job
    /// succeeding), it shuts down at once and returns
    /// [`FerryError::Escalated`], so the service can exit and its
    /// orchestrator replace it.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<ShutdownReport, FerryError> {
        let watch = async {
            loop {
                if let Some(e) = self.escalation() {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let escalated = tokio::select! {
            _ = stop => None,
            e = watch => Some(e),
        };
        let report = self.shutdown().await;
        match escalated {
            Some(e) => {
                tracing::error!(error = %e, ?report, "stopped after an escalation");
                Err(e)
            }
            None => Ok(report),
        }
    }

    /// Runs until SIGTERM or ctrl-c, then shuts down gracefully; an error
    /// when a pipeline escalates first (see [`RuntimeHandle::run_until`]).
    pub async fn run_until_signal(self) -> Result<ShutdownReport, FerryError> {
        self.run_until(termination_signal()).await
    }

    /// Stops at once without releasing or flushing anything, as SIGKILL
    /// would: held messages come back when their visibility lapses.
    pub fn abort(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        for s in &self.shared {
            s.halt();
        }
        self.cmd.take();
        self.heartbeat.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stop_owned();
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A future that completes on SIGTERM or ctrl-c (SIGINT), whichever comes
/// first. The handlers are installed when this is called, not when the future
/// is first polled, so call it early: a signal that arrives in between is
/// not lost. Must be called within a tokio runtime.
pub fn termination_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let streams =
            signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        async move {
            match streams {
                Ok((mut term, mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; waiting for ctrl-c only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn wait_until(deadline: tokio::time::Instant, mut done: impl FnMut() -> bool) {
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn drain(running: &[Running], grace: Duration) -> ShutdownReport {
    let started = tokio::time::Instant::now();
    let mut report = ShutdownReport::default();
    for r in running {
        r.shared.begin_shutdown();
        let _ = r.poller.send(StopPolling).await;
    }
    for r in running {
        report.released_unstarted += r.release_leases(false);
    }
    let busy = || {
        running
            .iter()
            .any(|r| r.shared.leases_held() > 0 || r.shared.receives_in_flight() > 0)
    };
    wait_until(started + grace, || !busy()).await;
    for r in running {
        let _ = tokio::time::timeout(Duration::from_secs(5), r.acker.send(Flush)).await;
    }
    for r in running {
        report.released_after_grace += r.release_leases(true);
    }
    for r in running {
        let _ = tokio::time::timeout(Duration::from_secs(5), r.acker.send(Flush)).await;
    }
    wait_until(tokio::time::Instant::now() + Duration::from_secs(5), || {
        running.iter().all(|r| r.shared.leases_held() == 0)
    })
    .await;
    report.held_at_exit = running.iter().map(|r| r.shared.leases_held()).sum();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(?report, "ferry stopped");
    report
}
