//! `ferry dlq list` and `ferry dlq redrive`: ferry's `dlq` module (its
//! listing, its redrive), what it reports, as text or JSON.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry::backend::{EntryResult, OutgoingMessage, Queue, QueueDepth, ReceivedMessage};
use ferry::dlq::{self, DeadLetter, RedriveOptions};
use ferry::BackendError;
use serde_json::{json, Value};

use crate::aws::{queue_name, Aws};
use crate::output::{table, Failure, Outcome};
use crate::{ListArgs, RedriveArgs};

/// Why entries can be left out of a listing or a redrive.
const LEFT_OUT_WHY: &str =
    "past the limit, in flight elsewhere, or behind the first ten of a FIFO group";

fn entry_json(e: &DeadLetter) -> Value {
    json!({
        "message_id": e.message_id,
        "job_id": e.job_id,
        "reason": e.reason,
        "source": e.source,
        "receive_count": e.receive_count,
        "body_bytes": e.body_len,
        "truncated": e.truncated,
        "body_preview": e.body_preview,
    })
}

/// Lists the dead-letter queue with `ferry::dlq::listing`, and says how
/// many entries it never saw.
pub(crate) async fn list(aws: &Aws, args: &ListArgs) -> Result<Outcome, Failure> {
    let queue = aws.queue(&args.queue).await?;
    let listing = dlq::listing(queue.as_ref(), args.limit)
        .await
        .map_err(|e| Failure::doing(&format!("cannot list {}", queue.url()), e))?;
    let rows: Vec<Vec<String>> = listing
        .entries
        .iter()
        .map(|e| {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            vec![
                or_dash(&e.job_id),
                e.receive_count
                    .map_or_else(|| "-".into(), |n| n.to_string()),
                if e.truncated {
                    format!("{} (truncated)", e.body_len)
                } else {
                    e.body_len.to_string()
                },
                or_dash(&e.source),
                or_dash(&e.reason),
            ]
        })
        .collect();
    let mut human = String::new();
    if !rows.is_empty() {
        human = table(&["JOB ID", "RECEIVES", "BYTES", "SOURCE", "REASON"], &rows);
    }
    human.push_str(&format!(
        "{} listed; {}\n",
        plural(listing.entries.len(), "entry", "entries"),
        left_out(listing.unlisted, "unlisted"),
    ));
    let json = json!({
        "queue": queue.url(),
        "entries": listing.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "listed": listing.entries.len(),
        "unlisted": listing.unlisted,
    });
    Ok(Outcome::ok(json, human))
}

/// Which entries a redrive takes by their source queue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceFilter {
    /// Those whose source is the target queue (the `dlq` module's default).
    Target,
    /// Any source, or none.
    Any,
    /// Those whose source is this other queue.
    Named(String),
}

impl SourceFilter {
    fn of(arg: Option<&str>, target: &str) -> Self {
        match arg {
            None => Self::Target,
            Some("*") => Self::Any,
            Some(s) if queue_name(s) == target => Self::Target,
            Some(s) => Self::Named(queue_name(s).to_owned()),
        }
    }

    /// The source name an entry must carry, if any.
    fn wanted<'a>(&'a self, target: &'a str) -> Option<&'a str> {
        match self {
            Self::Target => Some(target),
            Self::Any => None,
            Self::Named(n) => Some(n),
        }
    }
}

/// Redrives with `ferry::dlq::redrive`, or counts what it would move.
pub(crate) async fn redrive(aws: &Aws, args: &RedriveArgs) -> Result<Outcome, Failure> {
    let dead = aws.queue(&args.queue).await?;
    let to = aws.queue(&args.to).await?;
    let filter = SourceFilter::of(args.source_filter.as_deref(), to.name());
    let options = RedriveOptions {
        reason_contains: args.reason_filter.clone(),
        any_source: filter == SourceFilter::Any,
        max: args.max,
    };
    let mut json = json!({
        "queue": dead.url(),
        "to": to.url(),
        "dry_run": args.dry_run,
        "source_filter": filter.wanted(to.name()).unwrap_or("*"),
        "reason_filter": args.reason_filter,
    });
    let fields = json.as_object_mut().expect("an object");
    if args.dry_run {
        let planned = plan(dead.as_ref(), to.name(), &filter, &options).await?;
        for (k, v) in [
            ("would_move", planned.would_move),
            ("scanned", planned.scanned),
            ("skipped", planned.scanned - planned.would_move),
        ] {
            fields.insert(k.into(), v.into());
        }
        fields.insert("unseen".into(), json!(planned.unseen));
        let human = format!(
            "dry run: would move {} of {} scanned to {}; {}\n",
            planned.would_move,
            plural(planned.scanned, "entry", "entries"),
            to.name(),
            left_out(planned.unseen, "unseen"),
        );
        return Ok(Outcome::ok(json, human));
    }
    // The `dlq` module takes entries whose source is the target's name:
    // for another source, the target is named after it.
    let target: Arc<dyn Queue> = match &filter {
        SourceFilter::Named(source) => Arc::new(Renamed {
            inner: to.clone(),
            name: source.clone(),
        }),
        _ => to.clone(),
    };
    let report = dlq::redrive(dead.as_ref(), target.as_ref(), &options)
        .await
        .map_err(|e| Failure::doing(&format!("redrive from {} stopped", dead.url()), e))?;
    for (k, v) in [
        ("moved", report.moved),
        ("scanned", report.scanned),
        ("skipped", report.skipped),
        ("failed", report.failed),
    ] {
        fields.insert(k.into(), v.into());
    }
    fields.insert("unseen".into(), json!(report.unseen));
    let mut human = format!(
        "moved {} to {} ({} scanned, {} skipped, {} failed); {}\n",
        plural(report.moved, "entry", "entries"),
        to.name(),
        report.scanned,
        report.skipped,
        report.failed,
        left_out(report.unseen, "unseen"),
    );
    if report.failed > 0 {
        human.push_str(
            "some entries could not be sent back: they are still in the dead-letter queue\n",
        );
    }
    Ok(Outcome {
        ok: report.failed == 0,
        json,
        human,
    })
}

/// What a dry run found.
struct Plan {
    scanned: usize,
    would_move: usize,
    unseen: Option<usize>,
}

/// Lists the whole dead-letter queue (consuming nothing) and counts the
/// entries a redrive with `options` would move, by the rules
/// `ferry::dlq::redrive` documents: the source and reason match, the body
/// is not truncated, each job once, at most `max`.
async fn plan(
    dead: &dyn Queue,
    target: &str,
    filter: &SourceFilter,
    options: &RedriveOptions,
) -> Result<Plan, Failure> {
    let listing = dlq::listing(dead, usize::MAX)
        .await
        .map_err(|e| Failure::doing(&format!("cannot list {}", dead.name()), e))?;
    let wanted = filter.wanted(target);
    let max = options.max.unwrap_or(usize::MAX);
    let mut jobs = HashSet::new();
    let mut would_move = 0;
    for e in &listing.entries {
        let source_ok = wanted.is_none() || e.source.as_deref() == wanted;
        let reason_ok = options
            .reason_contains
            .as_deref()
            .is_none_or(|want| e.reason.as_deref().unwrap_or("").contains(want));
        let job = e.job_id.clone().unwrap_or_else(|| e.message_id.clone());
        if source_ok && reason_ok && !e.truncated && would_move < max && jobs.insert(job) {
            would_move += 1;
        }
    }
    Ok(Plan {
        scanned: listing.entries.len(),
        would_move,
        unseen: listing.unlisted,
    })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn left_out(n: Option<usize>, what: &str) -> String {
    match n {
        Some(0) => format!("0 {what}"),
        Some(n) => format!("{n} {what} ({LEFT_OUT_WHY})"),
        None => format!("{what} unknown (the queue's depth could not be read)"),
    }
}

/// The target queue under another name: `ferry::dlq::redrive` moves the
/// entries whose `ferry-source-queue` is its target's name, so a redrive of
/// another source's entries to this queue names the target after it. Every
/// call goes to the real queue.
#[derive(Debug)]
struct Renamed {
    inner: Arc<dyn Queue>,
    name: String,
}

#[ferry::async_trait]
impl Queue for Renamed {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_fifo(&self) -> bool {
        self.inner.is_fifo()
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, BackendError> {
        self.inner.receive(max, wait, visibility).await
    }

    async fn delete_batch(&self, handles: &[String]) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.delete_batch(handles).await
    }

    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<EntryResult>, BackendError> {
        self.inner.change_visibility_batch(entries).await
    }

    async fn send_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<String>>, BackendError> {
        self.inner.send_batch(messages).await
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }

    fn receive_is_cancel_safe(&self) -> bool {
        self.inner.receive_is_cancel_safe()
    }
}
