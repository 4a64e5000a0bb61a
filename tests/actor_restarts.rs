//! DESIGN rule 6: an actor that panics anyway (here, inside a tracing layer,
//! the one piece of foreign code that runs within ferry's own actors) is
//! restarted in place and picks its work up from the lease states; a worker
//! thread that panics outside its processor carries on. Nothing is lost.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use common::*;
use ferry::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

/// Panics on events whose message starts with one of the armed texts, each
/// a set number of times.
struct Saboteur;

fn armed() -> &'static Mutex<Vec<(&'static str, u32)>> {
    static ARMED: OnceLock<Mutex<Vec<(&'static str, u32)>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Saboteur);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        Mutex::new(Vec::new())
    })
}

static FIRED: AtomicU32 = AtomicU32::new(0);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for Saboteur {
    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        let hit = {
            let mut armed = armed().lock().unwrap();
            armed
                .iter_mut()
                .find(|(text, n)| *n > 0 && m.0.starts_with(text))
                .map(|(_, n)| *n -= 1)
                .is_some()
        };
        if hit {
            FIRED.fetch_add(1, Ordering::AcqRel);
            panic!("tracing layer bug on {:?}", m.0);
        }
    }
}

#[tokio::test]
async fn actors_and_workers_that_panic_in_a_tracing_layer_restart_and_lose_nothing() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map_or("", String::as_str);
        if !msg.starts_with("tracing layer bug") {
            default(info);
        }
    }));
    // The acker logs "job will be retried" while it takes a retry in; a
    // worker logs "processor failed" after a processor's error; the
    // uploader-side resume and the deletes log at debug level.
    armed()
        .lock()
        .unwrap()
        .extend([("job will be retried", 2), ("processor failed", 2)]);
    let h = Harness::new();
    let ids = h.send_jobs(30).await;
    let p = Counting::new();
    // Every first attempt asks to be retried: the armed events fire.
    let rt = Runtime::builder()
        .pipeline(
            h.pipeline(p.clone())
                .processor(|| RetryFirst)
                .configure(|c| {
                    c.retry_backoff_base = std::time::Duration::from_millis(10);
                }),
        )
        .start()
        .await
        .unwrap();
    let done = ferry::testkit::wait_until(LIMIT, || {
        h.jobs.depth_now().total() == 0 && rt.in_flight() == 0
    })
    .await;
    assert!(
        done,
        "jobs left {:?}; {:?}; {:?}",
        h.jobs.depth_now(),
        rt.stats_of("stage"),
        rt.health()
    );
    let stats = rt.stats_of("stage").unwrap();
    let health = rt.health();
    rt.shutdown().await;
    eprintln!("{stats:?}\n{health:?}");
    assert_eq!(FIRED.load(Ordering::Acquire), 4, "the layer fired");
    assert!(stats.actor_restarts >= 4, "{stats:?}");
    assert_eq!(h.results().await.len(), ids.len());
    assert!(h.dlq.snapshot().is_empty());
    assert_eq!(health[0].status, "running");
}

/// Asks for a retry on each job's first receive.
struct RetryFirst;

impl Processor for RetryFirst {
    fn process(&mut self, job: &Job, _: &Context) -> Result<Output, ProcessError> {
        if job.receive_count == 1 {
            return Err(ProcessError::retry("first attempt"));
        }
        Ok(Output::text(job.body.clone()))
    }
}
