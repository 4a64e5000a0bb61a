//! Wiring: starts one pipeline's actors, each under a restarting
//! supervisor, and gives each its routes (the others, known only by the
//! messages they accept). The shared state knows no actor.

use std::sync::Arc;

use actix::{Addr, AsyncContext};

use super::next::Routes;
use super::run::{pool, runner};
use super::shared::Shared;
use super::stages::{acker, gate, lease_keeper, poller, publisher, supervisor, uploader};
use super::supervision;
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
    /// Where what the runtime's own steps hand on goes (shutdown's
    /// releases).
    pub(crate) routes: Routes,
    /// Held so these actors live exactly as long as the runtime.
    _keeper: Addr<lease_keeper::LeaseKeeper>,
    _supervisor: Addr<supervisor::PipelineSupervisor>,
    _others: Others,
}

impl Running {
    /// Gives back the pipeline's leases not started yet, or all of them
    /// (see `Shared::release_leases`); returns how many.
    pub(crate) fn release_leases(&self, started_too: bool) -> usize {
        let (n, next) = self.shared.release_leases(started_too);
        self.routes.send(next);
        n
    }
}

/// Starts one pipeline's actors, each under a restarting supervisor; must
/// run inside the actix system. Actors know each other only through
/// [`Routes`], made before any of them starts.
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
    let routes = Routes {
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
    };
    let sup = supervision::Supervision::new(shared.clone());
    let r = || routes.clone();
    sup.start(acker_ctx, acker::Acker::new(shared.clone(), r()));
    sup.start(
        publisher_ctx,
        publisher::Publisher::new(shared.clone(), r()),
    );
    sup.start(uploader_ctx, uploader::Uploader::new(shared.clone(), r()));
    let (pool, runner) = if sync {
        sup.start(pool_ctx, pool::ProcessorPool::new(shared.clone(), io, r()));
        (Some(pool), None)
    } else {
        sup.start(
            runner_ctx,
            runner::AsyncRunner::new(shared.clone(), io, r()),
        );
        (None, Some(runner))
    };
    let gate = shared.gated().then(|| {
        sup.start(gate_ctx, gate::Gate::new(shared.clone(), r()));
        gate
    });
    let poller = sup.start(
        actix::Context::new(),
        poller::Poller::new(shared.clone(), gate.clone().map(|g| g.recipient()), r()),
    );
    let keeper = sup.start(
        actix::Context::new(),
        lease_keeper::LeaseKeeper::new(shared.clone(), r()),
    );
    let supervisor = sup.start(
        actix::Context::new(),
        supervisor::PipelineSupervisor::new(
            shared.clone(),
            poller.clone().recipient(),
            poller.clone().recipient(),
            sup.restarters(),
            r(),
        ),
    );
    Running {
        shared,
        routes,
        poller,
        acker: acker.clone(),
        _keeper: keeper,
        _supervisor: supervisor,
        _others: (publisher, uploader, pool, runner, gate),
    }
}

/// Routes that lead nowhere (to actors never started; what is sent there
/// is dropped): for the tests of one actor.
#[cfg(test)]
pub(crate) fn routes_nowhere() -> Routes {
    let (a, p, u, r, g) = (
        actix::Context::<acker::Acker>::new(),
        actix::Context::<publisher::Publisher>::new(),
        actix::Context::<uploader::Uploader>::new(),
        actix::Context::<pool::ProcessorPool>::new(),
        actix::Context::<gate::Gate>::new(),
    );
    Routes {
        settle: a.address().recipient(),
        publish: p.address().recipient(),
        admit: g.address().recipient(),
        store: u.address().recipient(),
        probe: u.address().recipient(),
        run: r.address().recipient(),
        drop_copies: a.address().recipient(),
    }
}

/// Starts only the acker and the lease keeper (the other routes lead
/// nowhere): for the lease keeper's own tests. Returns the routes.
#[cfg(test)]
pub(crate) fn start_keeper_only(shared: Arc<Shared>) -> Routes {
    let acker_ctx = actix::Context::<acker::Acker>::new();
    let acker = acker_ctx.address();
    let (p, u, r, g) = (
        actix::Context::<publisher::Publisher>::new(),
        actix::Context::<uploader::Uploader>::new(),
        actix::Context::<pool::ProcessorPool>::new(),
        actix::Context::<gate::Gate>::new(),
    );
    let routes = Routes {
        settle: acker.clone().recipient(),
        publish: p.address().recipient(),
        admit: g.address().recipient(),
        store: u.address().recipient(),
        probe: u.address().recipient(),
        run: r.address().recipient(),
        drop_copies: acker.clone().recipient(),
    };
    let sup = supervision::Supervision::new(shared.clone());
    sup.start(acker_ctx, acker::Acker::new(shared.clone(), routes.clone()));
    sup.start(
        actix::Context::new(),
        lease_keeper::LeaseKeeper::new(shared, routes.clone()),
    );
    routes
}
