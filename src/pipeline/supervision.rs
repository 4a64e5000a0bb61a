//! One-for-one restarts: each actor's future is polled inside
//! `catch_unwind`; an actor that panics (or is told to restart because it
//! looks stalled) is restarted in place after a doubling backoff, its
//! address and mailbox kept, and its `restarting` hook re-derives its work
//! from the leases in the states it owns.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::dev::ContextFut;
use actix::prelude::*;

use super::messages::Restart;
use super::shared::Shared;
use crate::backend::guard::panic_message;
use crate::lease::Owner;
use crate::stats::Stats;

/// An actor ferry supervises: it can be told to restart, and re-derives its
/// work in `restarting`.
pub(crate) trait Child:
    Actor<Context = Context<Self>> + actix::Supervised + Handler<Restart>
{
    /// The actor's name, for logs and the stall watch.
    const NAME: &'static str;
    /// The lease owner it is (see [`Owner`]): the stall watch restarts it
    /// when a lease stays too long in a state it owns.
    const OWNS: Option<Owner> = None;
}

/// Starts supervised actors and remembers how to restart them.
pub(crate) struct Supervision {
    shared: Arc<Shared>,
    restarters: Mutex<HashMap<Owner, Recipient<Restart>>>,
}

impl Supervision {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            restarters: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `act` in `ctx` under a restarting supervisor.
    pub(crate) fn start<A: Child>(&self, ctx: Context<A>, act: A) -> Addr<A> {
        let addr = ctx.address();
        if let Some(owner) = A::OWNS {
            self.restarters
                .lock()
                .expect("restarters lock")
                .insert(owner, addr.clone().recipient());
        }
        actix::spawn(Supervised {
            fut: ctx.into_future(act),
            shared: self.shared.clone(),
            name: A::NAME,
            crashes: 0,
            pause: None,
        });
        addr
    }

    /// The restart address of each actor that owns lease states.
    pub(crate) fn restarters(&self) -> HashMap<Owner, Recipient<Restart>> {
        self.restarters.lock().expect("restarters lock").clone()
    }
}

/// An actor's future, polled under `catch_unwind`; restarted in place when
/// it panics or stops while its address is still held.
struct Supervised<A: Child> {
    fut: ContextFut<A, Context<A>>,
    shared: Arc<Shared>,
    name: &'static str,
    crashes: u32,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<A: Child> Future for Supervised<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let why = if let Some(p) = this.pause.as_mut() {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
                // The restart hook re-derives the actor's work; it may
                // panic too, and is supervised like the rest.
                match catch_unwind(AssertUnwindSafe(|| this.fut.restart())) {
                    Ok(true) => continue,
                    Ok(false) => return Poll::Ready(()),
                    Err(payload) => {
                        format!("panicked while restarting: {}", panic_message(&*payload))
                    }
                }
            } else {
                match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(())) => "stopped".to_owned(),
                    Err(payload) => format!("panicked: {}", panic_message(&*payload)),
                }
            };
            let s = &this.shared;
            this.crashes = if s.care.health.failing.load(Ordering::Relaxed) == 0 {
                1
            } else {
                this.crashes + 1
            };
            Stats::inc(&s.stats.actor_restarts);
            // A drain still needs every actor: restart at once then.
            let backoff = if s.shutting_down() {
                Duration::ZERO
            } else {
                s.config.restart.backoff(this.crashes)
            };
            tracing::error!(pipeline = %s.name, actor = this.name, why = %why,
                backoff_ms = backoff.as_millis() as u64, "actor restarting");
            s.restarted(&format!("actor {} {why}", this.name));
            this.pause = Some(Box::pin(tokio::time::sleep(backoff)));
        }
    }
}
