//! Trace context across stages: W3C `traceparent` in a message attribute.
//!
//! Every delivery of a job is one span per stage (`job`, on the worker
//! thread that runs the processor), with the fields `pipeline`, `job_id`,
//! `message_id`, `receive_count`, `outcome`, and the trace ids `trace_id`,
//! `span_id` and `parent_span_id` (lower-case hex, as in `traceparent`).
//! A job whose message carries a [`TRACEPARENT_ATTRIBUTE`] continues that
//! trace as its child; any other starts a trace of its own. The notice a
//! stage publishes carries `traceparent` naming the stage's span, so the
//! next stage's span is its child — through SNS and SQS on AWS (the
//! attribute rides in the SNS envelope, or as a message attribute on a raw
//! subscription) and on the embedded backend alike.
//!
//! ferry makes its own ids (128-bit trace, 64-bit span), so plain `tracing`
//! output shows the whole trace with no OpenTelemetry installed.

use std::fmt;

use rand::Rng;

/// The message attribute carrying the W3C trace context.
pub const TRACEPARENT_ATTRIBUTE: &str = "traceparent";

/// One job's place in a trace: its trace, its own span, and the span it
/// continues (the upstream stage's), if any.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace's id (never zero).
    pub trace_id: u128,
    /// This job's span in this stage (never zero).
    pub span_id: u64,
    /// The upstream span, when the message carried a `traceparent`.
    pub parent_span_id: Option<u64>,
    /// The W3C trace flags received (sampled = `0x01`), passed on.
    pub flags: u8,
}

fn nonzero_u64(rng: &mut impl Rng) -> u64 {
    loop {
        let v: u64 = rng.gen();
        if v != 0 {
            return v;
        }
    }
}

impl TraceContext {
    /// A new trace, with this as its root span.
    pub fn root() -> Self {
        let mut rng = rand::thread_rng();
        let trace_id = loop {
            let v: u128 = rng.gen();
            if v != 0 {
                break v;
            }
        };
        Self {
            trace_id,
            span_id: nonzero_u64(&mut rng),
            parent_span_id: None,
            flags: 1,
        }
    }

    /// A new span continuing `traceparent` (a new trace when it is absent
    /// or malformed).
    pub fn continue_from(traceparent: Option<&str>) -> Self {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: nonzero_u64(&mut rand::thread_rng()),
                parent_span_id: Some(parent),
                flags,
            },
            None => Self::root(),
        }
    }

    /// The `traceparent` value naming this span as the parent of the next.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The parent span id as 16 lower-case hex digits, or empty.
    pub fn parent_span_id_hex(&self) -> String {
        self.parent_span_id
            .map(|p| format!("{p:016x}"))
            .unwrap_or_default()
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &self.trace_id_hex())
            .field("span_id", &self.span_id_hex())
            .field("parent_span_id", &self.parent_span_id_hex())
            .finish()
    }
}

/// Which delivery a `job` span is of.
pub(crate) struct Delivery<'a> {
    pub(crate) job_id: &'a str,
    pub(crate) message_id: &'a str,
    pub(crate) receive_count: u32,
}

/// The `job` span of one delivery in one stage, in trace `t`; `outcome` is
/// recorded when the processor returns.
pub(crate) fn job_span(pipeline: &str, d: Delivery<'_>, t: &TraceContext) -> tracing::Span {
    let span = tracing::info_span!("job", pipeline = %pipeline, job_id = %d.job_id,
        message_id = %d.message_id, receive_count = d.receive_count,
        trace_id = %format_args!("{:032x}", t.trace_id),
        span_id = %format_args!("{:016x}", t.span_id),
        parent_span_id = tracing::field::Empty, outcome = tracing::field::Empty);
    if let Some(p) = t.parent_span_id {
        span.record(
            "parent_span_id",
            tracing::field::display(format_args!("{p:016x}")),
        );
    }
    #[cfg(feature = "otel")]
    otel::join(&span, t);
    span
}

/// With the `otel` feature: job spans exported through a
/// `tracing-opentelemetry` layer join the job's trace. Each job span's
/// OpenTelemetry parent is the remote span ferry's context names (the
/// upstream stage's span, or for a job that starts a trace, the job's own
/// ferry span), so every stage's exported span has the job's trace id;
/// ferry's own ids stay on the span as the `span_id` and `parent_span_id`
/// fields. The crates are re-exported so a service installs the matching
/// versions: `ferry::trace::otel::tracing_opentelemetry::layer()`.
#[cfg(feature = "otel")]
pub mod otel {
    pub use opentelemetry;
    pub use tracing_opentelemetry;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// The OpenTelemetry context of `t`'s parent: the remote span a job
    /// span hangs under.
    pub fn parent_context(t: &TraceContext) -> opentelemetry::Context {
        let parent = SpanContext::new(
            TraceId::from_bytes(t.trace_id.to_be_bytes()),
            SpanId::from_bytes(t.parent_span_id.unwrap_or(t.span_id).to_be_bytes()),
            TraceFlags::new(t.flags),
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(parent)
    }

    pub(crate) fn join(span: &tracing::Span, t: &TraceContext) {
        // Fails only when no OpenTelemetry layer is installed: nothing to join.
        let _ = span.set_parent(parent_context(t));
    }
}

/// The `outcome` of a processor error: `retry` or `bad_input`.
pub(crate) fn outcome_of(err: &crate::error::ProcessError) -> &'static str {
    match err {
        crate::error::ProcessError::Retry { .. } => "retry",
        crate::error::ProcessError::BadInput { .. } => "bad_input",
        crate::error::ProcessError::Unavailable { .. } => "unavailable",
    }
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): the trace
/// id, the parent span id and the flags. All-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<(u128, u64, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_share_the_trace() {
        let root = TraceContext::root();
        let tp = root.traceparent();
        assert_eq!(tp.len(), 55);
        let child = TraceContext::continue_from(Some(&tp));
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, Some(root.span_id));
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn w3c_example_parses_and_bad_values_do_not() {
        let (t, s, f) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(s, 0x00f067aa0ba902b7);
        assert_eq!(f, 1);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        assert!(TraceContext::continue_from(Some("garbage"))
            .parent_span_id
            .is_none());
    }
}
