//! What `/readyz` answers: each pipeline's readiness and reasons, read
//! from its [`PipelineHealth`].

use serde::Serialize;

use crate::pipeline::PipelineHealth;

/// `/readyz`'s body.
#[derive(Debug, Serialize)]
pub(super) struct Readiness {
    pub(super) ready: bool,
    /// Why not, beyond the pipelines': no runtime, a shutdown under way.
    reasons: Vec<String>,
    pipelines: Vec<PipelineReadiness>,
}

#[derive(Debug, Serialize)]
struct PipelineReadiness {
    name: String,
    status: &'static str,
    ready: bool,
    leases: usize,
    reasons: Vec<String>,
}

impl Readiness {
    pub(super) fn without(reason: &str) -> Self {
        Self {
            ready: false,
            reasons: vec![reason.to_owned()],
            pipelines: Vec::new(),
        }
    }

    pub(super) fn of(health: Vec<PipelineHealth>, stopping: bool) -> Self {
        let pipelines: Vec<PipelineReadiness> =
            health.into_iter().map(pipeline_readiness).collect();
        let reasons = if stopping {
            vec!["the runtime is shutting down".to_owned()]
        } else {
            Vec::new()
        };
        Self {
            ready: !stopping && pipelines.iter().all(|p| p.ready),
            reasons,
            pipelines,
        }
    }
}

/// Ready while running or degraded; the reasons list everything wrong now.
fn pipeline_readiness(h: PipelineHealth) -> PipelineReadiness {
    let mut reasons = Vec::new();
    if h.status == "escalated" {
        reasons.push(format!(
            "escalated: {}",
            h.reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    if h.stalled_leases > 0 {
        reasons.push(format!(
            "stalled: {} lease(s) unmoved past the stall timeout; their actor is restarted",
            h.stalled_leases
        ));
    }
    reasons.extend(h.problems);
    for d in &h.degraded {
        let secs = d.since.elapsed().map_or(0, |e| e.as_secs());
        reasons.push(format!(
            "degraded: {} failing for {secs} s ({} failure(s) in a row): {}",
            d.name, d.failures, d.last_error
        ));
    }
    PipelineReadiness {
        ready: matches!(h.status, "running" | "degraded"),
        name: h.name,
        status: h.status,
        leases: h.leases,
        reasons,
    }
}
