//! Wiring: starts one pipeline's actors, each under a restarting
//! supervisor, and tells each where to send (the others' addresses, known
//! by the messages they accept).

use std::sync::Arc;

use actix::{Addr, AsyncContext};

use super::shared::{Addrs, Shared};
use super::{
    acker, gate, lease_keeper, poller, pool, publisher, runner, supervision, supervisor, uploader,
};
use crate::processor::ProcessorKind;

/// The other actors' addresses: the pool or the async runner, the gate
/// when there is one.
type Others = (
    Addr<publisher::Publisher>,
    Addr<uploader::Uploader>,
    Option<Addr<pool::ProcessorPool>>,
    Option<Addr<runner::AsyncRunner>>,
    Option<Addr<gate::Gate>>,
);

/// A started pipeline's addresses.
pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    pub(crate) poller: Addr<poller::Poller>,
    pub(crate) acker: Addr<acker::Acker>,
    /// Held so these actors live exactly as long as the runtime.
    _keeper: Addr<lease_keeper::LeaseKeeper>,
    _supervisor: Addr<supervisor::PipelineSupervisor>,
    _others: Others,
}

/// Starts one pipeline's actors, each under a restarting supervisor; must
/// run inside the actix system. Actors know each other only through
/// [`Addrs`], set before any of them starts.
pub(crate) fn start(shared: Arc<Shared>) -> Running {
    let io = tokio::runtime::Handle::current();
    let acker_ctx = actix::Context::<acker::Acker>::new();
    let publisher_ctx = actix::Context::<publisher::Publisher>::new();
    let uploader_ctx = actix::Context::<uploader::Uploader>::new();
    let pool_ctx = actix::Context::<pool::ProcessorPool>::new();
    let runner_ctx = actix::Context::<runner::AsyncRunner>::new();
    let gate_ctx = actix::Context::<gate::Gate>::new();
    let (acker, publisher, uploader, pool, runner, gate) = (
        acker_ctx.address(),
        publisher_ctx.address(),
        uploader_ctx.address(),
        pool_ctx.address(),
        runner_ctx.address(),
        gate_ctx.address(),
    );
    let sync = matches!(shared.processor, ProcessorKind::Sync(_));
    let _ = shared.care.addrs.set(Addrs {
        settle: acker.clone().recipient(),
        publish: publisher.clone().recipient(),
        admit: gate.clone().recipient(),
        store: uploader.clone().recipient(),
        probe: uploader.clone().recipient(),
        run: if sync {
            pool.clone().recipient()
        } else {
            runner.clone().recipient()
        },
        drop_copies: acker.clone().recipient(),
    });
    let sup = supervision::Supervision::new(shared.clone());
    sup.start(acker_ctx, acker::Acker::new(shared.clone()));
    sup.start(publisher_ctx, publisher::Publisher::new(shared.clone()));
    sup.start(uploader_ctx, uploader::Uploader::new(shared.clone()));
    let (pool, runner) = if sync {
        sup.start(pool_ctx, pool::ProcessorPool::new(shared.clone(), io));
        (Some(pool), None)
    } else {
        sup.start(runner_ctx, runner::AsyncRunner::new(shared.clone(), io));
        (None, Some(runner))
    };
    let gate = shared.gated().then(|| {
        sup.start(gate_ctx, gate::Gate::new(shared.clone()));
        gate
    });
    let poller = sup.start(
        actix::Context::new(),
        poller::Poller::new(shared.clone(), gate.clone().map(|g| g.recipient())),
    );
    let keeper = sup.start(
        actix::Context::new(),
        lease_keeper::LeaseKeeper::new(shared.clone()),
    );
    let supervisor = sup.start(
        actix::Context::new(),
        supervisor::PipelineSupervisor::new(
            shared.clone(),
            poller.clone().recipient(),
            poller.clone().recipient(),
            sup.restarters(),
        ),
    );
    Running {
        shared,
        poller,
        acker: acker.clone(),
        _keeper: keeper,
        _supervisor: supervisor,
        _others: (publisher, uploader, pool, runner, gate),
    }
}

/// Starts only the acker and the lease keeper (the other actors' addresses
/// lead nowhere): for the lease keeper's own tests.
#[cfg(test)]
pub(crate) fn start_keeper_only(shared: Arc<Shared>) {
    let acker_ctx = actix::Context::<acker::Acker>::new();
    let acker = acker_ctx.address();
    let (p, u, r, g) = (
        actix::Context::<publisher::Publisher>::new(),
        actix::Context::<uploader::Uploader>::new(),
        actix::Context::<pool::ProcessorPool>::new(),
        actix::Context::<gate::Gate>::new(),
    );
    let _ = shared.care.addrs.set(Addrs {
        settle: acker.clone().recipient(),
        publish: p.address().recipient(),
        admit: g.address().recipient(),
        store: u.address().recipient(),
        probe: u.address().recipient(),
        run: r.address().recipient(),
        drop_copies: acker.clone().recipient(),
    });
    let sup = supervision::Supervision::new(shared.clone());
    sup.start(acker_ctx, acker::Acker::new(shared.clone()));
    sup.start(
        actix::Context::new(),
        lease_keeper::LeaseKeeper::new(shared),
    );
}
