//! The runtime's HTTP endpoints (feature `http`): `GET /healthz` (the
//! process is alive), `GET /readyz` (every pipeline's health, as JSON; 503
//! when one is not ready) and `GET /metrics` (ferry's metrics in the
//! Prometheus text format, each source queue's depth and backlog per worker
//! among them), served on a thread of their own.
//!
//! Start them with the runtime, on a port of their own:
//!
//! ```no_run
//! # async fn run(stage: ferry::Pipeline) -> Result<(), ferry::FerryError> {
//! let runtime = ferry::Runtime::builder()
//!     .pipeline(stage)
//!     .serve_http(std::net::SocketAddr::from(([0, 0, 0, 0], 9464)))
//!     .start()
//!     .await?;
//! println!("health and metrics on {:?}", runtime.http_addr());
//! # Ok(()) }
//! ```
//!
//! or start an [`HttpServer`] first and hand it to the runtime
//! (`.serve_http(&server)`): it then outlives the runtime, and `/metrics`
//! still answers after the shutdown with the final figures.
//!
//! **Readiness.** A pipeline is ready while its status is `running`, or
//! `degraded` (a dependency failing, worker threads abandoned: it carries
//! on, slowed down, and the reasons say why); it is not ready while
//! `escalated`, `blocked` (ferry's I/O thread does not run) or `stalled`.
//! `/readyz` answers 200 when every pipeline is ready, else 503 — also
//! before a runtime is attached and once its shutdown has begun. Its body:
//!
//! ```text
//! {"ready":false,"reasons":[],"pipelines":[{"name":"resize","status":"escalated",
//!   "ready":false,"leases":0,"reasons":["escalated: more than 3 restarts in a row …"]}]}
//! ```
//!
//! **Metrics.** Unless given a [`PrometheusHandle`]
//! ([`HttpOptions::prometheus`]), the first server of the process installs
//! a Prometheus recorder (histograms with buckets from 1 ms to 10 min) and
//! every later one renders it too; starting fails if another recorder is
//! installed already. Every `depth_every` (10 s by default) each source
//! queue's [`Queue::depth`](crate::Queue::depth) is read and set as the gauges
//! [`QUEUE_VISIBLE`](crate::metrics::QUEUE_VISIBLE),
//! [`QUEUE_IN_FLIGHT`](crate::metrics::QUEUE_IN_FLIGHT) and
//! [`BACKLOG_PER_WORKER`](crate::metrics::BACKLOG_PER_WORKER) (visible
//! messages per processor slot of this process: its workers, or its
//! concurrency for async and batch processors) — the signal AWS recommends
//! for scaling queue workers. A gauge appears after its first successful
//! read.

mod depth;
mod ready;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::{header, StatusCode};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{watch, Notify};

use self::depth::Source;
use self::ready::Readiness;
use crate::error::FerryError;
use crate::pipeline::{Pipeline, PipelineHealth};

/// Histogram buckets, in seconds: from a millisecond to ten minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// The recorder ferry installed, shared by every server of the process.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Where to listen, how often to read the queues' depths, and which
/// Prometheus recorder to render.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    addr: SocketAddr,
    depth_every: Duration,
    prometheus: Option<PrometheusHandle>,
}

impl HttpOptions {
    /// Listens on `addr` (port 0: any free port, see
    /// [`HttpServer::local_addr`]); depths every 10 s; ferry's recorder.
    pub fn new(addr: impl Into<SocketAddr>) -> Self {
        Self {
            addr: addr.into(),
            depth_every: Duration::from_secs(10),
            prometheus: None,
        }
    }

    /// How often each source queue's depth is read (at least 100 ms).
    pub fn depth_every(mut self, every: Duration) -> Self {
        self.depth_every = every.max(Duration::from_millis(100));
        self
    }

    /// Renders this recorder, one the service installed itself, instead of
    /// installing ferry's.
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }
}

impl From<SocketAddr> for HttpOptions {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}

/// What [`RuntimeBuilder::serve_http`](crate::RuntimeBuilder::serve_http)
/// serves on: an address or [`HttpOptions`] (a server started with the
/// runtime and stopped with it), or a running [`HttpServer`] (attached to
/// while the runtime runs, left running after).
#[derive(Debug)]
pub struct Endpoint(Choice);

#[derive(Debug)]
enum Choice {
    Own(HttpOptions),
    Shared(HttpServer),
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self(Choice::Own(addr.into()))
    }
}

impl From<HttpOptions> for Endpoint {
    fn from(options: HttpOptions) -> Self {
        Self(Choice::Own(options))
    }
}

impl From<&HttpServer> for Endpoint {
    fn from(server: &HttpServer) -> Self {
        Self(Choice::Shared(server.clone()))
    }
}

/// Every pipeline's health, as the runtime reports it.
pub(crate) type HealthFn = Arc<dyn Fn() -> Vec<PipelineHealth> + Send + Sync>;

/// The runtime a server reports on now.
struct Watched {
    id: u64,
    health: HealthFn,
    sources: Vec<Source>,
    stopping: Arc<AtomicBool>,
}

/// What the handlers and background tasks share.
struct State {
    prometheus: PrometheusHandle,
    depth_every: Duration,
    watched: Mutex<Option<Watched>>,
    /// Wakes the depth refresh (a runtime was attached).
    refresh: Arc<Notify>,
    scrapes: AtomicU64,
}

impl State {
    fn watched<T>(&self, f: impl FnOnce(Option<&Watched>) -> T) -> T {
        f(self.watched.lock().expect("http state lock").as_ref())
    }
}

/// A running HTTP server for `/healthz`, `/readyz` and `/metrics`. Clones
/// share it; it stops on [`HttpServer::stop`] or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct HttpServer {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Installs the recorder (see the module's doc), binds the address and
    /// serves on a thread of its own; returns once it listens. Until a
    /// runtime is attached `/readyz` answers 503.
    pub fn start(options: impl Into<HttpOptions>) -> Result<HttpServer, FerryError> {
        let options = options.into();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            FerryError::Runtime(format!("HTTP endpoint on {}: {what}: {e}", options.addr))
        };
        let prometheus = match options.prometheus.clone() {
            Some(handle) => handle,
            None => install().map_err(|e| fail("no Prometheus recorder", &e))?,
        };
        let listener =
            std::net::TcpListener::bind(options.addr).map_err(|e| fail("cannot listen", &e))?;
        let addr = listener.local_addr().map_err(|e| fail("no address", &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot listen", &e))?;
        let state = Arc::new(State {
            prometheus,
            depth_every: options.depth_every,
            watched: Mutex::new(None),
            refresh: Arc::new(Notify::new()),
            scrapes: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let for_thread = state.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-http".into())
            .spawn(move || serve(listener, for_thread, stopped, ready_tx))
            .map_err(|e| fail("cannot start its thread", &e))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail("cannot serve", &e)),
            Err(e) => return Err(fail("its thread did not start", &e)),
        }
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        Ok(HttpServer {
            inner: Arc::new(Inner {
                addr,
                state,
                stop,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The address it listens on (the port chosen, when given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `GET /metrics` requests answered so far.
    pub fn metrics_scrapes(&self) -> u64 {
        self.inner.state.scrapes.load(Ordering::Acquire)
    }

    /// The Prometheus recorder it renders.
    pub fn prometheus(&self) -> &PrometheusHandle {
        &self.inner.state.prometheus
    }

    /// Stops serving: requests under way are answered (for at most a
    /// second), then the thread ends. Returns once it has.
    pub fn stop(&self) {
        self.inner.stop_now();
    }
}

impl Inner {
    fn stop_now(&self) {
        self.stop.send_replace(true);
        let thread = self.thread.lock().expect("http thread lock").take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Installs ferry's Prometheus recorder, once per process.
fn install() -> Result<PrometheusHandle, String> {
    let mut installed = INSTALLED.lock().expect("recorder lock");
    if let Some(h) = installed.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| {
            format!("{e} (a service with a recorder of its own passes its handle: HttpOptions::prometheus)")
        })?;
    crate::metrics::describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The server thread: the routes, the depth refresh and the recorder's
/// upkeep, on a runtime of its own, until stopped.
fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let watched = state.clone();
        tokio::spawn(depth::refresh_depths(
            move || watched.watched(|w| w.map(|w| w.sources.clone()).unwrap_or_default()),
            state.depth_every,
            state.refresh.clone(),
        ));
        tokio::spawn(upkeep(state.clone()));
        let app = axum::Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        let mut graceful = stopped.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|s| *s).await;
        });
        let _ = ready.send(Ok(()));
        // Requests under way get a second to finish after the stop.
        let deadline = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        tokio::select! {
            r = server => if let Err(e) = r {
                tracing::error!(error = %e, "the HTTP endpoint stopped");
            },
            _ = deadline => {}
        }
    });
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> impl axum::response::IntoResponse {
    let body = state.prometheus.render();
    state.scrapes.fetch_add(1, Ordering::AcqRel);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(Extract(state): Extract<Arc<State>>) -> impl axum::response::IntoResponse {
    let r = state.watched(|w| match w {
        None => Readiness::without("no runtime is running"),
        Some(w) => Readiness::of((w.health)(), w.stopping.load(Ordering::Acquire)),
    });
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&r).unwrap_or_else(|_| "{\"ready\":false}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// The recorder's upkeep (its histograms' buckets drained), every 5 s.
async fn upkeep(state: Arc<State>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        state.prometheus.run_upkeep();
    }
}

/// An endpoint opened for a runtime about to start: its recorder is in
/// place before the pipelines register their metrics.
pub(crate) struct Opened {
    server: HttpServer,
    owned: bool,
    sources: Vec<Source>,
}

impl Opened {
    /// Starts (or takes) the server, and notes each pipeline's source queue.
    pub(crate) fn open(endpoint: Endpoint, pipelines: &[Pipeline]) -> Result<Self, FerryError> {
        let (server, owned) = match endpoint.0 {
            Choice::Own(options) => (HttpServer::start(options)?, true),
            Choice::Shared(server) => (server, false),
        };
        Ok(Self {
            server,
            owned,
            sources: Source::of(pipelines),
        })
    }

    /// The runtime started: the server reports its health from now on.
    pub(crate) fn attach(self, health: HealthFn) -> Attached {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let stopping = Arc::new(AtomicBool::new(false));
        let state = &self.server.inner.state;
        *state.watched.lock().expect("http state lock") = Some(Watched {
            id,
            health,
            sources: self.sources,
            stopping: stopping.clone(),
        });
        state.refresh.notify_one();
        Attached {
            server: self.server,
            owned: self.owned,
            id,
            stopping,
        }
    }
}

/// A runtime's hold on its endpoint.
#[derive(Debug)]
pub(crate) struct Attached {
    server: HttpServer,
    owned: bool,
    id: u64,
    stopping: Arc<AtomicBool>,
}

impl Attached {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The shutdown began: not ready any more.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The runtime stopped: its own server stops; a shared one forgets it.
    pub(crate) fn detach(self) {
        self.stopping();
        let mut watched = self
            .server
            .inner
            .state
            .watched
            .lock()
            .expect("http state lock");
        if watched.as_ref().is_some_and(|w| w.id == self.id) {
            *watched = None;
        }
        drop(watched);
        if self.owned {
            self.server.stop();
        }
    }
}
