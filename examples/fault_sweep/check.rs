//! The end state of a seed, checked with faults off: results, dead-letter
//! queues, source queues, the untrusted bucket, escalations.

use std::collections::{BTreeMap, BTreeSet};

use ferry::backend::BlobStore;
use ferry::{PipelineStats, DLQ_REASON_ATTRIBUTE};

use crate::jobs::{Flex, SentJob};
use crate::processor::stage2_of;
use crate::world::{job_of_entry, listed, result_key, some, World, SECRETS};
use crate::BUCKET;

/// Every invariant, checked after the run with faults off.
pub(crate) async fn check(
    world: &World,
    jobs: &[SentJob],
    stats: &[PipelineStats],
    exactly_once: bool,
    v: &mut Vec<String>,
) {
    let blobs = world.local.blobs();
    // Stage 1's dead letters: job id → reasons.
    let mut dead1: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in world.dlq1.snapshot() {
        let reason = m.attributes.get(DLQ_REASON_ATTRIBUTE).cloned();
        dead1
            .entry(job_of_entry(&m))
            .or_default()
            .push(reason.unwrap_or_default());
    }
    // A copied pointer ends with a result or, its object deleted by its own
    // job first, as a missing object; never for another reason.
    for j in jobs.iter().filter(|j| j.flex == Flex::ResultOrMissing) {
        for reason in dead1.get(&j.id).into_iter().flatten() {
            if !reason.contains("missing object") {
                v.push(format!(
                    "{} (a copied pointer) dead-lettered: {reason}",
                    j.id
                ));
            }
        }
    }
    match blobs.get(SECRETS.0, SECRETS.1).await {
        Ok(b) if b.as_ref() == b"hunter2" => {}
        other => v.push(format!("the untrusted bucket's object changed: {other:?}")),
    }

    // Results: exactly the expected keys, with the expected contents (how
    // often each was written is the audit's to check).
    for stage in [1u8, 2] {
        // Key → (job id, content).
        let expected: BTreeMap<String, (&str, String)> = jobs
            .iter()
            .filter(|j| j.flex != Flex::ResultOrMissing || !dead1.contains_key(&j.id))
            .filter(|j| j.bad_at == 0 || (stage == 1 && j.bad_at == 2))
            .map(|j| {
                let s1 = j.body.to_uppercase();
                let content = if stage == 1 { s1 } else { stage2_of(&s1) };
                (result_key(stage, &j.id), (j.id.as_str(), content))
            })
            .collect();
        let stored: BTreeSet<String> = match blobs.list(BUCKET, &format!("stage{stage}/")).await {
            Ok(keys) => keys.into_iter().collect(),
            Err(e) => {
                v.push(format!("listing stage-{stage} results failed: {e}"));
                continue;
            }
        };
        let missing: Vec<&str> = expected
            .iter()
            .filter(|(k, _)| !stored.contains(*k))
            .map(|(_, (id, _))| *id)
            .collect();
        if !missing.is_empty() {
            let what = if stage == 1 {
                "no stage-1 result"
            } else {
                "lost (no stage-2 result)"
            };
            v.push(format!(
                "{} job(s) {what}: {}",
                missing.len(),
                some(&missing)
            ));
        }
        let extra: Vec<&String> = stored
            .iter()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        if !extra.is_empty() {
            v.push(format!(
                "unexpected stage-{stage} result(s): {}",
                some(&extra)
            ));
        }
        let mut wrong = Vec::new();
        for (key, (_, content)) in &expected {
            if !stored.contains(key) {
                continue;
            }
            match blobs.get(BUCKET, key).await {
                Ok(b) if b.as_ref() == content.as_bytes() => {}
                Ok(_) => wrong.push(key.clone()),
                Err(e) => wrong.push(format!("{key} ({e})")),
            }
        }
        if !wrong.is_empty() {
            v.push(format!("wrong stage-{stage} result(s): {}", some(&wrong)));
        }
    }

    // Dead-letter queues: exactly the bad inputs of their stage, once each,
    // each with a reason.
    for (stage, dlq) in [(1u8, &world.dlq1), (2, &world.dlq2)] {
        let expected: BTreeSet<&str> = jobs
            .iter()
            .filter(|j| j.bad_at == stage)
            .map(|j| listed(&j.id))
            .collect();
        // Hostile jobs that may be there too (at most once).
        let allowed: BTreeSet<&str> = jobs
            .iter()
            .filter(|j| stage == 1 && j.flex != Flex::Strict)
            .map(|j| j.id.as_str())
            .collect();
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        let mut bare = Vec::new();
        for m in dlq.snapshot() {
            let id = job_of_entry(&m);
            if m.attributes
                .get(DLQ_REASON_ATTRIBUTE)
                .is_none_or(|r| r.trim().is_empty())
            {
                bare.push(id.clone());
            }
            *held.entry(id).or_default() += 1;
        }
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|id| !held.contains_key(**id))
            .collect();
        if !missing.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter queue lacks bad input(s) {}",
                some(&missing)
            ));
        }
        let intruders: Vec<&String> = held
            .keys()
            .filter(|id| !expected.contains(id.as_str()) && !allowed.contains(id.as_str()))
            .collect();
        if !intruders.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter queue holds job(s) that are not bad inputs: {}",
                some(&intruders)
            ));
        }
        // A stage-2 job the at-least-once topic announced twice is two
        // messages, and a bad one is dead-lettered once per message: a
        // dead-lettered job is forgotten so that a fixed re-send or a
        // redrive runs it (DESIGN rule 13), and a copy of its notice cannot
        // be told from either. Stage 1's jobs are sent once each.
        let messages_of = |id: &str| -> u32 {
            world.log.with(|r| {
                r.messages
                    .iter()
                    .filter(|((st, _), m)| *st == stage && listed(&m.job) == id)
                    .count() as u32
            })
        };
        // With exactly-once on, a message is marked dead-lettered in the
        // store; a mark the store failed to keep (claimed more than once:
        // the first lapsed unconfirmed) may cost a second entry, nothing
        // else may.
        let marks_lapsed = |id: &str| -> bool {
            let messages: Vec<String> = world.log.with(|r| {
                r.messages
                    .iter()
                    .filter(|((st, _), m)| *st == stage && listed(&m.job) == id)
                    .map(|((_, message), _)| message.clone())
                    .collect()
            });
            world.store.records().iter().any(|(key, record)| {
                record.claims > 1
                    && key.contains("\u{1f}dead-lettered\u{1f}")
                    && messages.iter().any(|m| key.ends_with(m.as_str()))
            })
        };
        // Without the store, a worker killed after it dead-lettered a
        // message leaves it to its successor, which remembers nothing: the
        // message not yet deleted, or back after its delete (a replica that
        // missed it), gets a second entry (with the store, the dead
        // worker's mark lapses first: `marks_lapsed`).
        let killed_after_entry = |id: &str| -> bool {
            !exactly_once
                && world.log.with(|r| {
                    r.crashes.iter().any(|(w, at)| {
                        let worker = w.to_string();
                        r.dead_letters.iter().any(|e| {
                            e.stage == stage
                                && e.job == id
                                && e.detail.as_deref() == Some(worker.as_str())
                                && e.at < *at
                        })
                    })
                })
        };
        let doubled: Vec<String> = held
            .iter()
            .filter(|(id, n)| {
                // One entry per message of the job (stage 1's are sent
                // once), and one more where a mark lapsed or a worker died
                // between an entry and its delete.
                let messages = if stage == 1 {
                    1
                } else {
                    messages_of(id).max(1)
                };
                let extra = u32::from(marks_lapsed(id) || killed_after_entry(id));
                **n > messages + extra
            })
            .map(|(id, n)| format!("{id} ×{n}"))
            .collect();
        if !doubled.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter queue holds copies: {}",
                some(&doubled)
            ));
        }
        if !bare.is_empty() {
            v.push(format!(
                "stage-{stage} dead-letter entries without a {DLQ_REASON_ATTRIBUTE}: {}",
                some(&bare)
            ));
        }
    }

    // Source queues empty.
    for (stage, q) in [(1u8, &world.stage1), (2, &world.stage2)] {
        let left = q.snapshot();
        if !left.is_empty() {
            let in_flight = left.iter().filter(|m| m.in_flight).count();
            v.push(format!(
                "stage-{stage} queue still holds {} message(s) ({in_flight} in flight): {} [{}]",
                left.len(),
                some(left.iter().map(|m| format!(
                    "{} (received {}×)",
                    job_of_entry(m),
                    m.receive_count
                ))),
                q.explain().join("; ")
            ));
        }
    }

    for s in stats {
        if s.escalated {
            v.push(format!(
                "{} escalated: it passed its restart limit and stopped polling",
                s.name
            ));
        }
    }
}
