//! The jobs a seed sends: good ones, bad inputs, and the hostile messages
//! its plan draws.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::plan::Plan;
use crate::{BAD_AT_1, BAD_AT_2, POISON};

/// One job as sent.
#[derive(Debug, Clone)]
pub(crate) struct SentJob {
    pub(crate) id: String,
    /// The body whose results are expected (a good job's).
    pub(crate) body: String,
    /// 0 for a good job, else the stage that rejects it.
    pub(crate) bad_at: u8,
    /// How else it may end.
    pub(crate) flex: Flex,
    /// What is sent for it, in order.
    pub(crate) sends: Vec<Sending>,
}

/// How a job may end besides what `bad_at` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flex {
    /// Only as `bad_at` says.
    Strict,
    /// A stage-2 result, or an entry in stage 1's dead-letter queue whose
    /// reason names a missing object (a copied pointer whose object its own
    /// job deleted first).
    ResultOrMissing,
    /// A stage-2 result, and at most one entry in stage 1's dead-letter
    /// queue (its broken first version).
    ResultMaybeDead1,
}

/// One message sent for a job.
#[derive(Debug, Clone)]
pub(crate) enum Sending {
    /// This body (offloaded when large payloads are on).
    Body(String),
    /// The message sent for another job (a copied pointer), under this
    /// job's id.
    CopyOf(String),
    /// A large-payload pointer into the untrusted bucket.
    Foreign,
}

impl SentJob {
    pub(crate) fn new(id: String, body: String, bad_at: u8) -> Self {
        Self {
            sends: vec![Sending::Body(body.clone())],
            id,
            body,
            bad_at,
            flex: Flex::Strict,
        }
    }
}

/// The text of a job: lowercase words.
pub(crate) fn text(rng: &mut StdRng) -> String {
    let words = rng.gen_range(2..=60);
    (0..words)
        .map(|_| {
            let len = rng.gen_range(1..=8);
            (0..len)
                .map(|_| rng.gen_range(b'a'..=b'z') as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn jobs_of(plan: &Plan) -> Vec<SentJob> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x6a6f_6273);
    let mut jobs: Vec<SentJob> = (0..plan.jobs)
        .map(|i| {
            let id = if plan.unicode_ids {
                format!("café-{i:03}")
            } else {
                format!("job-{i:03}")
            };
            SentJob::new(id, text(&mut rng), 0)
        })
        .collect();
    for (i, stage) in plan.bad.iter().enumerate() {
        let marker = if *stage == 1 { BAD_AT_1 } else { BAD_AT_2 };
        let body = format!("{marker} {}", text(&mut rng));
        jobs.push(SentJob::new(format!("bad-{i}"), body, *stage));
    }
    // Jobs that fail every attempt, dead-lettered by stage 1 once they used
    // all; on FIFO they hold their group's followers meanwhile.
    let mut prng = StdRng::seed_from_u64(plan.seed ^ 0x706f_6973_6f6e);
    for i in 0..plan.poison {
        let body = format!("{POISON} {}", text(&mut prng));
        jobs.push(SentJob::new(format!("poison-{i}"), body, 1));
    }
    // Hostile messages, drawn apart so the rest stays as it was.
    let h = plan.hostile;
    let mut hrng = StdRng::seed_from_u64(plan.seed ^ 0x6576_696c);
    for i in 0..h.thieves {
        let victim = jobs[hrng.gen_range(0..plan.jobs)].clone();
        jobs.push(SentJob {
            id: format!("thief-{i}"),
            body: victim.body.clone(),
            bad_at: 0,
            flex: Flex::ResultOrMissing,
            sends: vec![Sending::CopyOf(victim.id)],
        });
    }
    for i in 0..h.foreign {
        jobs.push(SentJob {
            sends: vec![Sending::Foreign],
            ..SentJob::new(format!("foreign-{i}"), String::new(), 1)
        });
    }
    for i in 0..h.long_ids {
        let id = format!("long-{i}-{}", "l".repeat(300));
        jobs.push(SentJob::new(id, text(&mut hrng), 1));
    }
    let mut late = Vec::new();
    for i in 0..h.resends {
        let fixed = text(&mut hrng);
        let broken = Sending::Body(format!("{BAD_AT_1} {}", text(&mut hrng)));
        let mut job = SentJob {
            flex: Flex::ResultMaybeDead1,
            ..SentJob::new(format!("resend-{i}"), fixed.clone(), 0)
        };
        if h.resend_adjacent {
            job.sends = vec![broken, Sending::Body(fixed)];
        } else {
            job.sends = vec![broken];
            late.push((job.id.clone(), Sending::Body(fixed)));
        }
        jobs.push(job);
    }
    jobs.shuffle(&mut rng);
    // A re-send sent late goes at the end, after everything else.
    for (id, sending) in late {
        let at = jobs.iter().position(|j| j.id == id).expect("the job");
        let mut job = jobs.remove(at);
        job.sends.push(sending);
        jobs.push(job);
    }
    jobs
}
