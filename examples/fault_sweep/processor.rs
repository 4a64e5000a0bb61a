//! The processor both stages run, as a sync, async or batch processor, with
//! the seed's processor faults; it records every run in the seed's log.

use std::sync::Arc;
use std::time::Duration;

use ferry::prelude::*;

use crate::crash::CrashPoint;
use crate::plan::ProcessorFaults;
use crate::record::{Log, Run, RunEnd};
use crate::world::result_key;
use crate::{BAD_AT_1, BAD_AT_2, BUCKET, MAX_RECEIVES, POISON};

/// A stable draw from `[0, 1)` for a job, a stage, an attempt and a purpose
/// (FNV-1a, the same on every machine, then MurmurHash3's finaliser: FNV's
/// high bits barely move when only an id's last character does, so ids
/// such as `job-001` and `job-002` would draw almost alike).
fn draw(seed: u64, purpose: u64, stage: u8, attempt: u32, id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let salt = [seed, purpose, u64::from(stage), u64::from(attempt)];
    for b in salt.iter().flat_map(|w| w.to_le_bytes()).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// What stage 2 stores for a stage-1 result.
pub(crate) fn stage2_of(stage1: &str) -> String {
    format!(
        "{}:{}",
        stage1.len(),
        stage1.chars().rev().collect::<String>()
    )
}

/// The processor of both stages, with the seed's processor faults.
#[derive(Clone)]
pub(crate) struct SweepProcessor {
    pub(crate) stage: u8,
    pub(crate) worker: u8,
    pub(crate) seed: u64,
    pub(crate) faults: ProcessorFaults,
    pub(crate) visibility: Duration,
    /// How long a hanging run hangs: past the lease's maximum age and the
    /// hang grace, so it is timed out and its thread replaced meanwhile.
    pub(crate) hang: Duration,
    pub(crate) log: Arc<Log>,
    /// The worker's kill switch: a run that returns after its worker died
    /// was cancelled (its output can go nowhere).
    pub(crate) crash: Option<Arc<CrashPoint>>,
}

/// One run's injected faults.
struct Draws {
    panic: bool,
    stall: Duration,
    retry: bool,
    /// Hang, ignoring cancellation.
    hang: bool,
    /// Block the thread (async and batch runs) this long.
    block: Duration,
}

impl SweepProcessor {
    /// The seed's faults for one run: a panic on a first attempt, how long
    /// to stall, whether to ask for a retry. Failures stop from the
    /// `MAX_RECEIVES - 1`th receive on, so a good job fails at most
    /// `MAX_RECEIVES - 2` times of its own and is never dead-lettered for
    /// failing: whatever else happens to it is not its fault. Stalls and
    /// blocks stop there too, so that no late run is timed out by them. And
    /// the failures injected into one job, across all its messages and
    /// workers (a job announced twice has two stage-2 messages, each with
    /// its own receive counts), stop at `MAX_RECEIVES - 2` too.
    fn faults_of(&self, job: &Job) -> Draws {
        if self.crash.as_ref().is_some_and(|c| c.dropped()) {
            self.log.anomaly(format!(
                "worker {} started {} at stage {} after it was killed",
                self.worker, job.id, self.stage
            ));
        }
        let (id, n, f) = (job.id.as_str(), job.receive_count, self.faults);
        let d = |purpose| draw(self.seed, purpose, self.stage, n, id);
        let early = n + 1 < MAX_RECEIVES;
        let mut draws = Draws {
            panic: n == 1 && d(1) < f.panic_rate,
            stall: if early && d(2) < f.stall_rate {
                self.visibility.mul_f64(1.0 + 2.0 * d(3))
            } else {
                Duration::ZERO
            },
            retry: early && d(4) < f.retry_rate,
            hang: early && d(5) < f.hang_rate,
            block: if early && d(6) < f.block_rate {
                self.visibility.mul_f64(0.5 + d(7))
            } else {
                Duration::ZERO
            },
        };
        if draws.panic || draws.retry || draws.hang {
            let key = (self.stage, id.to_owned());
            let allowed = self.log.with(|r| {
                let count = r.injected.entry(key).or_default();
                *count += 1;
                *count <= MAX_RECEIVES - 2
            });
            if !allowed {
                (draws.panic, draws.retry, draws.hang) = (false, false, false);
            }
        }
        draws
    }

    /// Records a run that hangs from now on: it ignores its cancellation,
    /// so ferry must time it out, and it counts as cancelled (whatever it
    /// returns, if ever, is dropped).
    fn hangs(&self, job: &Job) {
        let start = self.log.tick();
        self.record(job, start, RunEnd::Hung, true);
    }

    /// Records a run that started at `start`.
    fn record(&self, job: &Job, start: u64, how: RunEnd, cancelled: bool) {
        let end = self.log.tick();
        let cancelled = cancelled || self.crash.as_ref().is_some_and(|c| c.fired());
        self.log.run(Run {
            stage: self.stage,
            worker: self.worker,
            job: job.id.to_string(),
            message: job.message_id.clone(),
            receive_count: job.receive_count,
            start,
            end,
            how,
            cancelled,
        });
    }

    /// Records a panicking run, then panics.
    fn panic(&self, job: &Job, start: u64) -> ! {
        self.record(job, start, RunEnd::Panicked, false);
        panic!(
            "injected processor panic: stage {} job {}",
            self.stage, job.id
        );
    }

    /// Where stage 2 reads its input: the stage-1 result its notice names,
    /// which must be exactly the job's own.
    fn input_of(&self, job: &Job) -> Result<Option<ResultNotice>, ProcessError> {
        if self.stage == 1 {
            return Ok(None);
        }
        let n = job.notice()?;
        let own = result_key(1, job.id.as_str());
        if n.bucket != BUCKET || n.key != own || n.job_id != job.id {
            self.log.anomaly(format!(
                "stage 2 got a notice for {} naming s3://{}/{} of job {} (its own: s3://{BUCKET}/{own})",
                job.id, n.bucket, n.key, n.job_id
            ));
        }
        Ok(Some(n))
    }

    fn output(&self, job: &Job, input: Option<bytes::Bytes>) -> Result<Output, ProcessError> {
        if self.stage == 1 {
            if job.body.starts_with(POISON) {
                return Err(ProcessError::retry("poisoned: fails every attempt"));
            }
            if job.body.starts_with(BAD_AT_1) {
                return Err(ProcessError::bad_input(format!(
                    "stage 1 cannot use {}: marked bad",
                    job.id
                )));
            }
            return Ok(Output::text(job.body.to_uppercase()));
        }
        let bytes = input.expect("stage 2 reads its input");
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ProcessError::bad_input("stage-1 result is not UTF-8"))?;
        if text.contains(&BAD_AT_2.to_uppercase()) {
            return Err(ProcessError::bad_input(format!(
                "stage 2 cannot use {}: marked bad",
                job.id
            )));
        }
        Ok(Output::text(stage2_of(&text)))
    }
}

/// Records async runs whose future is dropped before they return (cancelled,
/// or timed out at their lease's age): dropped futures say nothing else.
struct Unfinished<'a> {
    p: &'a SweepProcessor,
    jobs: &'a [Job],
    start: u64,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            for job in self.jobs {
                self.p.record(job, self.start, RunEnd::Dropped, true);
            }
        }
    }
}

fn end_of<T>(r: &Result<T, ProcessError>) -> RunEnd {
    match r {
        Ok(_) => RunEnd::Ok,
        Err(ProcessError::Unavailable { .. }) => RunEnd::Unavailable,
        Err(_) => RunEnd::Failed,
    }
}

impl Processor for SweepProcessor {
    fn process(&mut self, job: &Job, ctx: &Context) -> Result<Output, ProcessError> {
        let start = self.log.tick();
        let d = self.faults_of(job);
        std::thread::sleep(self.faults.pace);
        if d.panic {
            self.panic(job, start);
        }
        if d.hang {
            self.hangs(job);
            std::thread::sleep(self.hang);
            return Err(ProcessError::retry("hung"));
        }
        std::thread::sleep(d.stall);
        let r = (|| {
            if d.retry {
                return Err(ProcessError::retry("injected retry"));
            }
            let input = match self.input_of(job)? {
                Some(n) => Some(ctx.fetch(&n.bucket, &n.key)?),
                None => None,
            };
            self.output(job, input)
        })();
        self.record(job, start, end_of(&r), ctx.is_cancelled());
        r
    }
}

#[ferry::async_trait]
impl AsyncProcessor for SweepProcessor {
    async fn process(&self, job: &Job, ctx: &TaskContext) -> Result<Output, ProcessError> {
        let start = self.log.tick();
        let mut unfinished = Unfinished {
            p: self,
            jobs: std::slice::from_ref(job),
            start,
            done: false,
        };
        let d = self.faults_of(job);
        if d.panic {
            unfinished.done = true;
            self.panic(job, start);
        }
        if d.hang {
            unfinished.done = true;
            self.hangs(job);
            tokio::time::sleep(self.hang).await;
            return Err(ProcessError::retry("hung"));
        }
        // Blocks the thread it runs on, as a blocking call in async code does.
        std::thread::sleep(d.block);
        tokio::time::sleep(d.stall).await;
        let r = async {
            if d.retry {
                return Err(ProcessError::retry("injected retry"));
            }
            let input = match self.input_of(job)? {
                Some(n) => Some(ctx.fetch(&n.bucket, &n.key).await?),
                None => None,
            };
            self.output(job, input)
        }
        .await;
        unfinished.done = true;
        self.record(job, start, end_of(&r), ctx.is_cancelled());
        r
    }
}

#[ferry::async_trait]
impl BatchProcessor for SweepProcessor {
    async fn process_batch(
        &self,
        jobs: &[Job],
        ctx: &TaskContext,
    ) -> Vec<Result<Output, ProcessError>> {
        // A panic in any job's faults fails the whole batch; the longest
        // stall holds the whole batch.
        let start = self.log.tick();
        let mut unfinished = Unfinished {
            p: self,
            jobs,
            start,
            done: false,
        };
        let draws: Vec<Draws> = jobs.iter().map(|j| self.faults_of(j)).collect();
        if let Some(i) = draws.iter().position(|d| d.panic) {
            unfinished.done = true;
            for (j, job) in jobs.iter().enumerate() {
                if j != i {
                    self.record(job, start, RunEnd::Panicked, false);
                }
            }
            self.panic(&jobs[i], start);
        }
        // A batch does not hang (the whole batch would be timed out with
        // it), but it may block its thread.
        let block = draws.iter().map(|d| d.block).max().unwrap_or_default();
        std::thread::sleep(block);
        let stall = draws.iter().map(|d| d.stall).max().unwrap_or_default();
        tokio::time::sleep(stall).await;
        let mut out = Vec::with_capacity(jobs.len());
        for (job, d) in jobs.iter().zip(draws) {
            let r = async {
                if d.retry {
                    return Err(ProcessError::retry("injected retry"));
                }
                let input = match self.input_of(job)? {
                    Some(n) => Some(ctx.fetch(&n.bucket, &n.key).await?),
                    None => None,
                };
                self.output(job, input)
            }
            .await;
            out.push(r);
        }
        unfinished.done = true;
        for (i, (job, r)) in jobs.iter().zip(&out).enumerate() {
            self.record(job, start, end_of(r), ctx.is_job_cancelled(i));
        }
        out
    }
}
