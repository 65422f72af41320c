//! The worker pool: claims jobs, hands them to an [`Executor`], keeps their leases alive,
//! enforces timeouts, and records outcomes in batches.
//!
//! One dispatcher task per queue claims up to its free worker count in one storage call
//! (more when its jobs are short: see [`PREFETCH_WAIT`]), then waits for whichever comes first: a worker slot freeing, a job queued in this process
//! ([`Queue::wake`]), a notification of jobs queued by other processes
//! ([`crate::storage::Storage::subscribe`]), the next scheduled run time, the storage's poll
//! interval (the fallback for those notifications), or stop. A completer task writes
//! finished attempts many per transaction; a heartbeat task renews leases and learns which
//! running jobs were asked to stop (cancelled); a reclaim task takes back jobs whose worker
//! died (never this pool's own: it reclaims only leases that expired before the earliest
//! one this pool still holds, so a pool cut off from its storage for longer than a lease
//! does not take back its own running jobs when the storage returns, and its heartbeats
//! extend them instead); a retention task deletes old completed jobs; a scheduler task
//! takes the ticks of the schedule entries whose job the pool has registered (see
//! [`crate::schedule`]).
//!
//! A job's attempt ends on whichever thread reports its outcome ([`Completion`]): no task
//! per job. A worker that finishes a job may take the queue's next prefetched job itself
//! ([`Completion::send_and_next`]), so a burst of short jobs runs back to back on one
//! thread (for Python: under one hold of the GIL) instead of bouncing between threads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{PoolConfig, QueueConfig};
use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::model::{ClaimedJob, ErrorInfo, JobId, JobStatus, LeaseToken};
use crate::queue::Queue;
use crate::retry::RetryPolicy;
use crate::schedule::{plan_tick, Ticker};
use crate::storage::{
    lease_duration, FinishOutcome, JobClaimParams, JobFinish, JobFinishClaimParams,
    JobFinishManyParams, JobHeartbeatParams, JobNextRunAtParams, JobPruneParams, JobReclaimParams,
    JobReleaseParams, ScheduleTickParams,
};
use crate::testhook::{crash_point, CrashPoint};

/// How a job's attempt ended, as its executor reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It returned normally.
    Success,
    /// It raised.
    Failure {
        /// What went wrong.
        error: ErrorInfo,
        /// Retrying cannot help (for example its arguments do not decode): fail at once.
        permanent: bool,
    },
    /// It asked to run again after `delay`, without counting the attempt.
    Snooze {
        /// How long to wait before the next run.
        delay: Duration,
    },
}

/// Set once a cancel of a running job was requested; the job's code may poll it to stop
/// early (cooperative cancellation, for jobs that cannot be interrupted).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Whether a cancel was requested.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How an executor reports a job's outcome, with the job's [`CancelFlag`].
///
/// Reporting ends the attempt on the reporting thread, with no hop through a task: the
/// worker slot is freed (or, with [`Completion::send_and_next`], handed straight to the
/// next prefetched job) and the outcome is queued for the completer.
pub struct Completion {
    run: Arc<Run>,
    cancel: CancelFlag,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

impl Completion {
    /// Report the outcome. Reporting after the engine gave up on the job (timeout, lost
    /// lease, shutdown) is harmless: the report is ignored.
    pub fn send(self, outcome: Outcome) {
        if let Some(state) = self.run.take() {
            end_attempt(&self.run, state, outcome, None);
        }
    }

    /// Report the outcome and keep the worker slot for the queue's next prefetched job,
    /// if one waits and `accept` takes it: the caller runs that job next, on the same
    /// thread (for Python: under the same hold of the GIL), instead of the slot going back
    /// to the pool and the job to another thread. `None` when no job waits (or `accept`
    /// refuses the first one: it then goes to [`Executor::execute`] as usual).
    pub fn send_and_next(
        self,
        outcome: Outcome,
        accept: &dyn Fn(&ClaimedJob) -> bool,
    ) -> Option<(ClaimedJob, Completion)> {
        let state = self.run.take()?;
        end_attempt(&self.run, state, outcome, Some(accept))
    }

    /// The job's cancel flag, set when a cancel of the running job is requested. Hand it
    /// to the job's code so it can stop early.
    pub fn cancel_flag(&self) -> CancelFlag {
        self.cancel.clone()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(state) = self.run.take() {
            let outcome = Outcome::Failure {
                error: ErrorInfo::engine(
                    "WorkerError",
                    "the executor dropped the job without an outcome",
                ),
                permanent: false,
            };
            end_attempt(&self.run, state, outcome, None);
        }
    }
}

/// One attempt handed to the executor. Whichever ends it first (its outcome, its
/// timeout, the executor dropping it) takes `state` and records the end; the others find
/// `None` and do nothing.
struct Run {
    shared: Arc<Shared>,
    slots: Arc<Slots>,
    state: Mutex<Option<RunState>>,
}

struct RunState {
    id: JobId,
    lease: LeaseToken,
    attempt: u32,
    retry: RetryPolicy,
    started: Instant,
    permit: OwnedSemaphorePermit,
    /// The task that ends the attempt at its timeout, if it has one.
    timer: Option<tokio::task::AbortHandle>,
}

impl Run {
    fn take(&self) -> Option<RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Runs jobs. The Python bindings implement it; tests implement it with closures.
pub trait Executor: Send + Sync + 'static {
    /// Start running `job` and call [`Completion::send`] when it ends. Must not block:
    /// hand the work to a thread or task. Dropping `done` without sending counts as a
    /// failed attempt.
    fn execute(&self, job: ClaimedJob, done: Completion);

    /// The engine stopped waiting for `job_id` (timeout, lost lease or shutdown): stop it
    /// if possible (an async job can be cancelled). Its later outcome is ignored.
    fn abandon(&self, job_id: JobId) {
        let _ = job_id;
    }

    /// A cancel of the running `job_id` was requested; its [`CancelFlag`] is already set.
    /// Interrupt it if possible (an async job can be cancelled). Unlike [`abandon`], the
    /// engine still waits for its outcome; whatever it is, the job ends `cancelled`.
    ///
    /// [`abandon`]: Executor::abandon
    fn cancel(&self, job_id: JobId) {
        let _ = job_id;
    }

    /// The storage accepted the outcome of an attempt this pool ran: `outcome` is what
    /// was written, except that a job whose cancel was requested ends `cancelled` instead
    /// (the storage decides; read the job to know). Not called for outcomes the storage
    /// refused (the lease was taken over), nor for jobs released at shutdown or reclaimed
    /// after their lease expired. Called from the pool's completer task, in the order
    /// written: must not block (hand the report to a thread). Lifecycle hooks use it.
    fn recorded(&self, job_id: JobId, outcome: &FinishOutcome) {
        let _ = (job_id, outcome);
    }
}

/// A running job's lease, as the heartbeat task sees it.
#[derive(Debug)]
struct LeaseEntry {
    token: LeaseToken,
    heartbeat: Duration,
    /// The lease length the storage gives the job (claim and each heartbeat).
    lease: Duration,
    /// When the lease ends in storage, as of its last extension (the claim, or the last
    /// heartbeat the storage accepted).
    expires_at: Timestamp,
    next_beat: Instant,
    /// Still executing (not yet handed to the completer).
    executing: bool,
    /// A heartbeat found the lease taken over: stop renewing it.
    lost: bool,
    /// Set when a heartbeat finds the job's cancel requested.
    cancel: CancelFlag,
}

/// Completed jobs deleted per storage call by the retention task.
const RETENTION_BATCH: u32 = 1000;

/// A finished attempt on its way to storage, or a flush marker, or a dispatcher's claim
/// (see [`claim`]).
enum FinishMsg {
    Finish(JobFinish),
    Flush(oneshot::Sender<()>),
    Claim(JobClaimParams, ClaimReply),
}

/// Where the completer answers a dispatcher's claim.
type ClaimReply = oneshot::Sender<Result<Vec<ClaimedJob>>>;

/// Short jobs are prefetched: the dispatcher claims more than its free workers, and the
/// extra jobs wait in the pool (under their leases, renewed by the heartbeat task) for a
/// worker, so one claim transaction serves many jobs. A queue prefetches as many jobs as
/// its workers get through in about this long, going by the recent run time of its jobs;
/// jobs that take longer than this are claimed only as workers free up, so no job waits
/// here long while another pool could run it. The longer the wait, the fewer claim
/// transactions a backlog of short jobs costs: measured on SQLite (20,000 no-op jobs, 4
/// workers), 16 ms and at most 1,024 jobs drained 24% faster than 4 ms and 256.
const PREFETCH_WAIT: Duration = Duration::from_millis(16);
/// The most jobs a queue prefetches.
const PREFETCH_MAX: usize = 1024;
/// With a storage that claims and records outcomes in one write, the longest outcomes
/// wait for the dispatcher's next claim while prefetched jobs are waiting (see
/// [`complete_loop`]). Jobs start regardless: only the write of the outcome waits. Shorter
/// than [`PREFETCH_WAIT`]: a job's outcome is stored within a few milliseconds even when
/// the next claim is further off (a longer linger measured no faster).
const FINISH_LINGER: Duration = Duration::from_millis(4);

/// Per-queue dispatcher state.
#[derive(Debug)]
struct Slots {
    config: QueueConfig,
    /// Jobs claimed and not yet finished: running, or prefetched and waiting for a worker.
    busy: AtomicUsize,
    freed: Notify,
    /// One permit per worker: a claimed job runs once it holds one.
    workers: Arc<Semaphore>,
    /// Prefetched jobs waiting for a worker, in claim order: taken by [`start_loop`] when a
    /// worker is free, or by a worker that just finished a job ([`Completion::send_and_next`]).
    prefetched: Mutex<Prefetched>,
    /// Tells [`start_loop`] a job was prefetched.
    prefetched_added: Notify,
    /// Recent run time of the queue's jobs, in microseconds (a moving average);
    /// `u64::MAX` until one has run.
    avg_run_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Prefetched {
    jobs: VecDeque<(ClaimedJob, CancelFlag)>,
    /// Set once the pool stops: nothing more is taken out (`stop` releases the rest).
    closed: bool,
}

impl Slots {
    fn new(config: QueueConfig) -> Self {
        Slots {
            workers: Arc::new(Semaphore::new(config.concurrency)),
            prefetched: Mutex::new(Prefetched::default()),
            prefetched_added: Notify::new(),
            config,
            busy: AtomicUsize::new(0),
            freed: Notify::new(),
            avg_run_us: AtomicU64::new(u64::MAX),
        }
    }

    fn prefetched(&self) -> MutexGuard<'_, Prefetched> {
        self.prefetched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next prefetched job, if one waits, the pool is not stopping and `accept` (if
    /// given) takes it; counted out of `buffered`.
    fn take_prefetched(
        &self,
        buffered: &AtomicUsize,
        accept: Option<&dyn Fn(&ClaimedJob) -> bool>,
    ) -> Option<(ClaimedJob, CancelFlag)> {
        let mut p = self.prefetched();
        if p.closed {
            return None;
        }
        let (job, _) = p.jobs.front()?;
        if accept.is_some_and(|accept| !accept(job)) {
            return None;
        }
        let next = p.jobs.pop_front();
        buffered.fetch_sub(1, Ordering::SeqCst);
        next
    }

    /// How many jobs the queue may hold beyond its workers now (see [`PREFETCH_WAIT`]).
    fn prefetch(&self) -> usize {
        let avg = self.avg_run_us.load(Ordering::Relaxed).max(1);
        let per_worker = PREFETCH_WAIT.as_micros() as u64 / avg;
        usize::try_from(per_worker)
            .unwrap_or(usize::MAX)
            .saturating_mul(self.config.concurrency)
            .min(PREFETCH_MAX)
    }

    /// How many jobs to claim now: none while the pool holds enough to keep every worker
    /// busy and at least half its room is taken (so claims come in batches, not one job
    /// per finished one); otherwise all the room left.
    fn claim_size(&self) -> usize {
        let busy = self.busy.load(Ordering::SeqCst);
        let room = self.config.concurrency + self.prefetch();
        let free = room.saturating_sub(busy);
        if busy < self.config.concurrency || free * 2 >= room {
            free
        } else {
            0
        }
    }

    /// Fold one run's duration into the moving average.
    fn ran_for(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        let avg = self.avg_run_us.load(Ordering::Relaxed);
        let next = if avg == u64::MAX {
            us
        } else {
            (avg.saturating_mul(7).saturating_add(us)) / 8
        };
        self.avg_run_us.store(next, Ordering::Relaxed);
    }
}

struct Shared {
    queue: Arc<Queue>,
    config: PoolConfig,
    executor: Arc<dyn Executor>,
    leases: Mutex<HashMap<JobId, LeaseEntry>>,
    leases_changed: Notify,
    /// Claimed jobs not finished, running or prefetched (see [`PREFETCH_WAIT`]).
    executing: AtomicUsize,
    /// Of those, the prefetched ones waiting for a worker.
    buffered: AtomicUsize,
    idle: Notify,
    finish_tx: mpsc::UnboundedSender<FinishMsg>,
    stopping: watch::Sender<bool>,
    /// The pool's runtime: attempts end on executor threads, which may need to start or
    /// stop a timeout task.
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn leases(&self) -> MutexGuard<'_, HashMap<JobId, LeaseEntry>> {
        // The map holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.config
            .poll_interval
            .or_else(|| self.queue.storage().poll_interval())
    }
}

/// A running worker pool. Dropping it does not stop it; call [`WorkerPool::stop`].
pub struct WorkerPool {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: watch::Sender<bool>,
    stop_started: AtomicBool,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("worker_id", &self.shared.config.worker_id)
            .field("executing", &self.in_flight())
            .finish()
    }
}

const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// After a failed heartbeat, the longest wait before the next try.
const HEARTBEAT_RETRY_MAX: Duration = Duration::from_secs(1);
/// How long `stop` waits, past its timeout, for the last outcomes to be written.
const STOP_FLUSH_GRACE: Duration = Duration::from_secs(5);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// When due jobs could not all be claimed (held back by a concurrency or rate limit, or
/// taken by another worker), the dispatcher looks again after this long, doubling each
/// time up to the poll interval (1 s for a storage that is not shared), instead of at
/// once: a limit that keeps jobs waiting must not turn the dispatcher into a busy loop.
/// A job finishing in this process wakes it at once.
const BLOCKED_BACKOFF_MIN: Duration = Duration::from_millis(5);
const BLOCKED_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(ERROR_BACKOFF_MAX)
}

impl WorkerPool {
    /// Validate `config` and start the pool's tasks on the current tokio runtime.
    pub fn start(
        queue: Arc<Queue>,
        config: PoolConfig,
        executor: Arc<dyn Executor>,
    ) -> Result<Self> {
        config.validate()?;
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let (stopping, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            queue,
            config,
            executor,
            leases: Mutex::new(HashMap::new()),
            leases_changed: Notify::new(),
            executing: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            idle: Notify::new(),
            finish_tx,
            stopping,
            runtime: tokio::runtime::Handle::current(),
        });
        // The dispatchers first, one per queue: `stop` finds them by position.
        let mut tasks = Vec::new();
        let mut starters = Vec::new();
        for qc in &shared.config.queues {
            let slots = Arc::new(Slots::new(qc.clone()));
            tasks.push(tokio::spawn(dispatch_loop(shared.clone(), slots.clone())));
            starters.push(tokio::spawn(start_loop(shared.clone(), slots)));
        }
        tasks.extend(starters);
        tasks.push(tokio::spawn(complete_loop(shared.clone(), finish_rx)));
        tasks.push(tokio::spawn(heartbeat_loop(shared.clone())));
        tasks.push(tokio::spawn(reclaim_loop(shared.clone())));
        tasks.push(tokio::spawn(schedule_loop(shared.clone())));
        if shared.config.retention.is_some() {
            tasks.push(tokio::spawn(retention_loop(shared.clone())));
        }
        let (stopped, _) = watch::channel(false);
        Ok(WorkerPool {
            shared,
            tasks: Mutex::new(tasks),
            stopped,
            stop_started: AtomicBool::new(false),
        })
    }

    /// The id recorded on every job this pool claims.
    pub fn worker_id(&self) -> &str {
        &self.shared.config.worker_id
    }

    /// How many jobs are executing now.
    pub fn in_flight(&self) -> usize {
        let buffered = self.shared.buffered.load(Ordering::SeqCst);
        self.shared
            .executing
            .load(Ordering::SeqCst)
            .saturating_sub(buffered)
    }

    /// Whether the pool is still running (not yet fully stopped).
    pub fn is_running(&self) -> bool {
        !*self.stopped.borrow()
    }

    /// Stop: claim nothing more, let executing jobs finish for up to `timeout`, then hand
    /// the rest back to the storage (available at once for another worker, attempt not
    /// counted), record every outcome, and end the pool's tasks. A second call waits for
    /// the first to finish.
    pub async fn stop(&self, timeout: Duration) -> Result<()> {
        if self.stop_started.swap(true, Ordering::SeqCst) {
            self.join().await;
            return Ok(());
        }
        let shared = &self.shared;
        shared.stopping.send_replace(true);
        let deadline = Instant::now() + timeout;
        // A claim in flight when the stop began commits even if its task is aborted (the
        // storage call runs on): let the dispatchers finish it and release what it took.
        // Each returns as soon as it sees the stop; one stuck on a failing storage past
        // the timeout is aborted (its claim, if it commits, waits for lease expiry).
        let dispatchers: Vec<JoinHandle<()>> = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            let n = shared.config.queues.len().min(tasks.len());
            tasks.drain(..n).collect()
        };
        for mut d in dispatchers {
            if tokio::time::timeout_at(deadline, &mut d).await.is_err() {
                d.abort();
            }
        }
        loop {
            let idle = shared.idle.notified();
            if shared.executing.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        // Take the unfinished jobs out of the lease map before abandoning them: an abandoned
        // job may still report an outcome (a cancelled async task does), and `run_job`
        // records outcomes only of jobs still in the map, so the release below wins.
        let leftover: Vec<(JobId, LeaseToken)> = {
            let mut leases = shared.leases();
            let leftover: Vec<(JobId, LeaseToken)> = leases
                .iter()
                .filter(|(_, e)| e.executing && !e.lost)
                .map(|(id, e)| (*id, e.token))
                .collect();
            for (id, _) in &leftover {
                leases.remove(id);
            }
            leftover
        };
        let mut result = Ok(());
        if !leftover.is_empty() {
            for (id, _) in &leftover {
                shared.executor.abandon(*id);
            }
            let now = shared.queue.clock().now();
            let released = shared
                .queue
                .storage()
                .job_release(JobReleaseParams {
                    leases: leftover.clone(),
                    now,
                })
                .await;
            match released {
                Ok(n) => log::info!(
                    "worker {}: released {n} unfinished job(s) at shutdown",
                    shared.config.worker_id
                ),
                Err(e) => {
                    log::error!(
                        "worker {}: could not release jobs: {e}",
                        shared.config.worker_id
                    );
                    result = Err(e);
                }
            }
            shared.queue.wake();
        }
        // Write every recorded outcome before the tasks end; but a storage that keeps
        // failing must not hold the stop forever: past the timeout (and a short grace for
        // the write itself) the outcomes are given up, their leases expire and the jobs
        // run again elsewhere (at-least-once).
        let (ack_tx, ack_rx) = oneshot::channel();
        if shared.finish_tx.send(FinishMsg::Flush(ack_tx)).is_ok() {
            let flush_deadline = deadline.max(Instant::now()) + STOP_FLUSH_GRACE;
            if tokio::time::timeout_at(flush_deadline, ack_rx)
                .await
                .is_err()
            {
                log::error!(
                    "worker {}: could not record the last outcomes before stopping (the \
                     storage keeps failing); their jobs will run again once their leases expire",
                    shared.config.worker_id
                );
                result = result.and(Err(Error::Storage(
                    "stopped before the last outcomes could be recorded".to_owned(),
                )));
            }
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
        self.stopped.send_replace(true);
        result
    }

    /// Wait until the pool has stopped.
    pub async fn join(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

async fn dispatch_loop(shared: Arc<Shared>, slots: Arc<Slots>) {
    let mut stop_rx = shared.stopping.subscribe();
    let mut wake_rx = shared.queue.subscribe();
    // Jobs made runnable by other processes, when the storage can tell (LISTEN/NOTIFY).
    let mut remote_rx = shared.queue.storage().subscribe();
    // Jobs of this process ending (any pool on this queue): a job held back by a limit may
    // start now.
    let mut finished_rx = shared.queue.subscribe_finished();
    let mut error_backoff = ERROR_BACKOFF_MIN;
    let mut blocked_backoff = BLOCKED_BACKOFF_MIN;
    let blocked_max = shared
        .poll_interval()
        .unwrap_or(BLOCKED_BACKOFF_MAX)
        .max(BLOCKED_BACKOFF_MIN);
    // A storage no other process shares is never polled: a job that ends here may have
    // stored another (a group's on_complete), so an idle dispatcher looks then too.
    let wake_on_finish = shared.queue.storage().poll_interval().is_none();
    let queues = vec![slots.config.name.clone()];
    let names = slots.config.names.clone();
    loop {
        // Set when due jobs were left unclaimed: wait for a finish, or back off.
        let mut blocked = false;
        if *stop_rx.borrow_and_update() {
            return;
        }
        let free = slots.claim_size();
        let mut wait_for: Option<Duration> = None;
        if free > 0 {
            wake_rx.borrow_and_update();
            finished_rx.borrow_and_update();
            if let Some(rx) = remote_rx.as_mut() {
                rx.borrow_and_update();
            }
            let now = shared.queue.clock().now();
            let claimed = claim(
                &shared,
                JobClaimParams {
                    queues: queues.clone(),
                    names: names.clone(),
                    limit: u32::try_from(free).unwrap_or(u32::MAX),
                    worker_id: shared.config.worker_id.clone(),
                    now,
                },
            )
            .await;
            let claimed = match claimed {
                Ok(c) => {
                    error_backoff = ERROR_BACKOFF_MIN;
                    c
                }
                Err(Error::StorageClosed) => {
                    log::error!(
                        "worker {}: storage closed; dispatcher stops",
                        shared.config.worker_id
                    );
                    return;
                }
                Err(e) => {
                    log::error!(
                        "worker {}: claiming from queue {:?} failed (retrying in {:?}): {e}",
                        shared.config.worker_id,
                        slots.config.name,
                        error_backoff
                    );
                    tokio::select! {
                        _ = stop_rx.changed() => {}
                        _ = tokio::time::sleep(error_backoff) => {}
                    }
                    error_backoff = next_backoff(error_backoff);
                    continue;
                }
            };
            if *stop_rx.borrow() && !claimed.is_empty() {
                // The stop began while this claim ran: hand the jobs straight back rather
                // than start them (or leave them running with nobody behind them).
                release_claimed(&shared, &claimed).await;
                return;
            }
            let got = claimed.len();
            if got > 0 {
                crash_point(CrashPoint::AfterClaim);
            }
            for job in claimed {
                start_job(&shared, &slots, job);
            }
            if got == free {
                blocked_backoff = BLOCKED_BACKOFF_MIN;
                continue; // full now, or more may be waiting: loop to re-check
            }
            // Fewer than asked: sleep until the next scheduled job or the poll interval.
            let next = shared
                .queue
                .storage()
                .job_next_run_at(JobNextRunAtParams {
                    queues: queues.clone(),
                    names: names.clone(),
                })
                .await;
            let now = shared.queue.clock().now();
            let until_next = match next {
                // Due jobs the claim left: held back by a limit (or just taken by another
                // worker). Back off rather than spin; a finish here wakes us sooner.
                Ok(Some(t)) if t <= now => {
                    blocked = true;
                    let wait = blocked_backoff;
                    blocked_backoff = (blocked_backoff * 2).min(blocked_max);
                    Some(wait)
                }
                Ok(Some(t)) => {
                    blocked_backoff = BLOCKED_BACKOFF_MIN;
                    Some(now.until(t).max(Duration::from_millis(1)))
                }
                Ok(None) => {
                    blocked_backoff = BLOCKED_BACKOFF_MIN;
                    None
                }
                Err(_) => Some(error_backoff),
            };
            wait_for = match (until_next, shared.poll_interval()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let full = free == 0 || slots.claim_size() == 0;
        tokio::select! {
            _ = stop_rx.changed() => {}
            _ = slots.freed.notified() => {}
            _ = wake_rx.changed(), if !full => {}
            _ = changed_or_forever(&mut remote_rx), if !full => {}
            _ = sleep_or_forever(wait_for), if !full => {}
            // A finished job may have freed a slot of the limit holding our jobs back. On
            // memory, also when idle: the job that ended may have stored another (a group's
            // on_complete), and nothing else would tell us.
            _ = finished_rx.changed(), if !full && (blocked || wake_on_finish) => {
                blocked_backoff = BLOCKED_BACKOFF_MIN;
            }
        }
    }
}

/// Claim for a dispatcher. When the storage records outcomes and claims in one write
/// ([`crate::storage::Storage::finish_claim_combined`]), the claim goes to the completer,
/// which makes it together with the outcomes waiting to be written (half the writes when
/// jobs are short); otherwise, or if the completer is gone, straight to the storage.
async fn claim(shared: &Shared, params: JobClaimParams) -> Result<Vec<ClaimedJob>> {
    if shared.queue.storage().finish_claim_combined() {
        let (reply, answer) = oneshot::channel();
        if shared
            .finish_tx
            .send(FinishMsg::Claim(params.clone(), reply))
            .is_ok()
        {
            if let Ok(claimed) = answer.await {
                return claimed;
            }
        }
    }
    shared.queue.storage().job_claim(params).await
}

/// Hand a claim's result to the dispatcher that asked; if it is gone (the pool stops),
/// release what was claimed.
async fn answer_claim(shared: &Shared, reply: ClaimReply, claimed: Result<Vec<ClaimedJob>>) {
    if let Err(Ok(jobs)) = reply.send(claimed) {
        if !jobs.is_empty() {
            release_claimed(shared, &jobs).await;
        }
    }
}

/// Release jobs a dispatcher claimed after the stop began: available again at once.
async fn release_claimed(shared: &Shared, claimed: &[ClaimedJob]) {
    let leases = claimed.iter().map(|j| (j.id, j.lease)).collect();
    let now = shared.queue.clock().now();
    let released = shared
        .queue
        .storage()
        .job_release(JobReleaseParams { leases, now })
        .await;
    match released {
        Ok(n) => log::info!(
            "worker {}: released {n} job(s) claimed as the pool stopped",
            shared.config.worker_id
        ),
        Err(e) => log::error!(
            "worker {}: could not release jobs claimed as the pool stopped (they run again \
             once their leases expire): {e}",
            shared.config.worker_id
        ),
    }
    shared.queue.wake();
}

async fn changed_or_forever(rx: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    // No signal, or its storage is gone: only the other branches can wake us.
    std::future::pending().await
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn start_job(shared: &Arc<Shared>, slots: &Arc<Slots>, job: ClaimedJob) {
    slots.busy.fetch_add(1, Ordering::SeqCst);
    shared.executing.fetch_add(1, Ordering::SeqCst);
    let heartbeat = Duration::from_millis(job.heartbeat_ms.max(1));
    let lease = lease_duration(job.heartbeat_ms);
    let cancel = CancelFlag::default();
    shared.leases().insert(
        job.id,
        LeaseEntry {
            token: job.lease,
            heartbeat,
            lease,
            expires_at: job.started_at.plus(lease),
            next_beat: Instant::now() + heartbeat,
            executing: true,
            lost: false,
            cancel: cancel.clone(),
        },
    );
    shared.leases_changed.notify_one();
    // Straight to a free worker, unless prefetched jobs wait: they go first, in claim order.
    let mut p = slots.prefetched();
    if p.jobs.is_empty() {
        if let Ok(permit) = slots.workers.clone().try_acquire_owned() {
            drop(p);
            launch(shared, slots, job, cancel, permit);
            return;
        }
    }
    shared.buffered.fetch_add(1, Ordering::SeqCst);
    if p.closed {
        drop(p);
        not_started(shared, slots); // the pool is stopping
        return;
    }
    p.jobs.push_back((job, cancel));
    drop(p);
    slots.prefetched_added.notify_one();
}

/// Start the queue's prefetched jobs in claim order as workers free up (a worker that
/// finishes a job may also take the next one itself). Once the pool begins to stop, the
/// jobs still waiting are left in the lease map, and `stop` releases them (available at
/// once, attempt not counted).
async fn start_loop(shared: Arc<Shared>, slots: Arc<Slots>) {
    let mut stop_rx = shared.stopping.subscribe();
    loop {
        let added = slots.prefetched_added.notified();
        if slots.prefetched().jobs.is_empty() {
            tokio::select! {
                biased;
                _ = stop_rx.wait_for(|s| *s) => break,
                _ = added => continue,
            }
        }
        let permit = tokio::select! {
            biased;
            p = slots.workers.clone().acquire_owned() => p.ok(),
            _ = stop_rx.wait_for(|s| *s) => None,
        };
        let Some(permit) = permit else { break };
        // A worker may have taken it meanwhile.
        if let Some((job, cancel)) = slots.take_prefetched(&shared.buffered, None) {
            launch(&shared, &slots, job, cancel, permit);
        }
    }
    let left = {
        let mut p = slots.prefetched();
        p.closed = true;
        std::mem::take(&mut p.jobs)
    };
    for _ in left {
        not_started(&shared, &slots);
    }
}

/// Count out a prefetched job that will not run here (its lease entry stays for `stop`).
fn not_started(shared: &Shared, slots: &Slots) {
    shared.buffered.fetch_sub(1, Ordering::SeqCst);
    slots.busy.fetch_sub(1, Ordering::SeqCst);
    if shared.executing.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.idle.notify_waiters();
    }
}

/// Hand `job` to the executor on the worker holding `permit`.
fn launch(
    shared: &Arc<Shared>,
    slots: &Arc<Slots>,
    job: ClaimedJob,
    cancel: CancelFlag,
    permit: OwnedSemaphorePermit,
) {
    if let Ok((job, done)) = ready(shared, slots, job, cancel, permit) {
        shared.executor.execute(job, done);
    }
}

/// Make `job` ready to run on the worker holding `permit`: its [`Completion`], and the
/// timeout task if it has a timeout. A prefetched job that lost its lease or was
/// cancelled while it waited ends at once instead, and the permit comes back.
fn ready(
    shared: &Arc<Shared>,
    slots: &Arc<Slots>,
    job: ClaimedJob,
    cancel: CancelFlag,
    permit: OwnedSemaphorePermit,
) -> std::result::Result<(ClaimedJob, Completion), OwnedSemaphorePermit> {
    let skip = {
        let leases = shared.leases();
        match leases.get(&job.id) {
            Some(e) if e.token == job.lease && e.lost => Some(ErrorInfo::engine(
                "LeaseLost",
                "the job's lease was taken over before it started",
            )),
            Some(e) if e.token == job.lease && e.cancel.is_set() => Some(ErrorInfo::engine(
                "Cancelled",
                "the job was cancelled before it started",
            )),
            _ => None,
        }
    };
    if let Some(error) = skip {
        let outcome = Outcome::Failure {
            error,
            permanent: false,
        };
        settle(
            shared,
            slots,
            job.id,
            job.lease,
            job.attempt,
            job.retry,
            outcome,
        );
        return Err(permit);
    }
    let run = Arc::new(Run {
        shared: shared.clone(),
        slots: slots.clone(),
        state: Mutex::new(Some(RunState {
            id: job.id,
            lease: job.lease,
            attempt: job.attempt,
            retry: job.retry,
            started: Instant::now(),
            permit,
            timer: None,
        })),
    });
    if let Some(ms) = job.timeout_ms {
        let limit = Duration::from_millis(ms);
        let timed = run.clone();
        let id = job.id;
        let timer = shared.runtime.spawn(async move {
            tokio::time::sleep(limit).await;
            if let Some(state) = timed.take() {
                timed.shared.executor.abandon(id);
                let outcome = Outcome::Failure {
                    error: ErrorInfo::engine(
                        "Timeout",
                        format!(
                            "attempt exceeded the job's timeout of {:.3}s",
                            limit.as_secs_f64()
                        ),
                    ),
                    permanent: false,
                };
                end_attempt(&timed, state, outcome, None);
            }
        });
        if let Some(state) = run.state.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            state.timer = Some(timer.abort_handle());
        }
    }
    Ok((job, Completion { run, cancel }))
}

/// End an attempt: record its outcome, then free its worker, or (with `next`) keep the
/// worker for the next prefetched job `next` accepts and return that job ready to run.
fn end_attempt(
    run: &Run,
    state: RunState,
    outcome: Outcome,
    next: Option<&dyn Fn(&ClaimedJob) -> bool>,
) -> Option<(ClaimedJob, Completion)> {
    let (shared, slots) = (&run.shared, &run.slots);
    let RunState {
        id,
        lease,
        attempt,
        retry,
        started,
        permit,
        timer,
    } = state;
    if let Some(timer) = timer {
        timer.abort();
    }
    slots.ran_for(started.elapsed());
    let mut following = None;
    let mut permit = Some(permit);
    if let Some(accept) = next {
        // The worker stays with the queue: its permit goes to the next job.
        while let Some(p) = permit.take() {
            let Some((job, cancel)) = slots.take_prefetched(&shared.buffered, Some(accept)) else {
                permit = Some(p);
                break;
            };
            match ready(shared, slots, job, cancel, p) {
                Ok(ready) => following = Some(ready),
                Err(p) => permit = Some(p),
            }
        }
    }
    // Otherwise the worker is free again, before the outcome is queued, so the dispatcher
    // may claim while it is written.
    drop(permit);
    settle(shared, slots, id, lease, attempt, retry, outcome);
    following
}

/// Record a job's outcome and count it out: its lease entry stops executing, the outcome
/// goes to the completer, the dispatcher learns of the room.
fn settle(
    shared: &Shared,
    slots: &Slots,
    id: JobId,
    lease: LeaseToken,
    attempt: u32,
    retry: RetryPolicy,
    outcome: Outcome,
) {
    let still_ours = {
        let mut leases = shared.leases();
        match leases.get_mut(&id) {
            Some(e) if e.token == lease => {
                e.executing = false;
                true
            }
            _ => false, // released at shutdown: the storage already has it back
        }
    };
    slots.busy.fetch_sub(1, Ordering::SeqCst);
    // The dispatcher waits for room only while it has none to claim into.
    if slots.claim_size() > 0 {
        slots.freed.notify_one();
    }
    if still_ours {
        record_outcome(shared, id, lease, attempt, retry, outcome);
    }
    // Count the job as done only once its outcome is queued: `stop` flushes the completer
    // as soon as nothing executes, and an outcome queued after that flush would be lost.
    if shared.executing.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.idle.notify_waiters();
    }
}

/// Turn an attempt's outcome into what the storage records, and queue it for the completer.
fn record_outcome(
    shared: &Shared,
    id: JobId,
    lease: LeaseToken,
    attempt: u32,
    retry: RetryPolicy,
    outcome: Outcome,
) {
    let now = shared.queue.clock().now();
    let outcome = match outcome {
        Outcome::Success => FinishOutcome::Completed,
        Outcome::Snooze { delay } => FinishOutcome::Snoozed {
            run_at: now.plus(delay),
        },
        Outcome::Failure {
            error,
            permanent: true,
        } => FinishOutcome::Failed { error },
        Outcome::Failure {
            error,
            permanent: false,
        } => match retry.next_delay(attempt, rand::random()) {
            Some(delay) => FinishOutcome::Retry {
                retry_at: now.plus(delay),
                error,
            },
            None => FinishOutcome::Failed { error },
        },
    };
    let _ = shared
        .finish_tx
        .send(FinishMsg::Finish(JobFinish { id, lease, outcome }));
}

async fn complete_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<FinishMsg>) {
    let max = shared.config.finish_batch;
    let combined = shared.queue.storage().finish_claim_combined();
    let mut buf = Vec::with_capacity(max);
    while rx.recv_many(&mut buf, max).await > 0 {
        let mut batch = Vec::with_capacity(buf.len());
        let mut acks = Vec::new();
        let mut claims = Vec::new();
        for msg in buf.drain(..) {
            sort_msg(msg, &mut batch, &mut acks, &mut claims);
        }
        // While prefetched jobs wait for workers, a dispatcher's claim comes soon: the
        // outcomes wait for it (at most FINISH_LINGER), so that one write records them and
        // claims, instead of one write per handful of outcomes.
        if combined
            && claims.is_empty()
            && acks.is_empty()
            && shared.buffered.load(Ordering::SeqCst) > 0
        {
            let deadline = Instant::now() + FINISH_LINGER;
            while batch.len() < max {
                let Ok(Some(msg)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                    break;
                };
                let last = !matches!(msg, FinishMsg::Finish(_));
                sort_msg(msg, &mut batch, &mut acks, &mut claims);
                if last {
                    break;
                }
            }
        }
        let mut claims = claims.into_iter();
        if !batch.is_empty() {
            write_finishes(&shared, batch, claims.next()).await;
        }
        for (mut params, reply) in claims {
            // A stopping pool starts nothing new: its dispatcher returns when it sees the stop.
            let claimed = if *shared.stopping.borrow() {
                Ok(Vec::new())
            } else {
                params.now = shared.queue.clock().now();
                shared.queue.storage().job_claim(params).await
            };
            answer_claim(&shared, reply, claimed).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// File one message of the completer's channel.
fn sort_msg(
    msg: FinishMsg,
    batch: &mut Vec<JobFinish>,
    acks: &mut Vec<oneshot::Sender<()>>,
    claims: &mut Vec<(JobClaimParams, ClaimReply)>,
) {
    match msg {
        FinishMsg::Finish(f) => batch.push(f),
        FinishMsg::Flush(ack) => acks.push(ack),
        FinishMsg::Claim(params, reply) => claims.push((params, reply)),
    }
}

/// Record a batch of finished attempts, retrying while the storage fails: the jobs keep
/// their leases (the heartbeat task still renews them) until the write lands, so a
/// temporary storage outage neither loses an outcome nor lets another worker take over.
/// A dispatcher's claim, if given, is made in the same storage call (first try only: a
/// failure is its answer, and the dispatcher backs off as for its own claims).
async fn write_finishes(
    shared: &Shared,
    batch: Vec<JobFinish>,
    mut claim: Option<(JobClaimParams, ClaimReply)>,
) {
    let mut backoff = ERROR_BACKOFF_MIN;
    loop {
        let now = shared.queue.clock().now();
        let finish = JobFinishManyParams {
            finishes: batch.clone(),
            now,
        };
        let res = match claim.take() {
            None => shared.queue.storage().job_finish_many(finish).await,
            // A stopping pool starts nothing new: its dispatcher returns when it sees the stop.
            Some((_, reply)) if *shared.stopping.borrow() => {
                answer_claim(shared, reply, Ok(Vec::new())).await;
                shared.queue.storage().job_finish_many(finish).await
            }
            Some((mut params, reply)) => {
                params.now = now;
                let res = shared
                    .queue
                    .storage()
                    .job_finish_claim(JobFinishClaimParams {
                        finish,
                        claim: params,
                    })
                    .await;
                match res {
                    Ok(r) => {
                        answer_claim(shared, reply, r.claimed).await;
                        Ok(r.accepted)
                    }
                    Err(e) => {
                        let again = match &e {
                            Error::StorageClosed => Error::StorageClosed,
                            other => Error::Storage(other.to_string()),
                        };
                        answer_claim(shared, reply, Err(again)).await;
                        Err(e)
                    }
                }
            }
        };
        match res {
            Ok(accepted) => {
                let mut leases = shared.leases();
                for (f, ok) in batch.iter().zip(&accepted) {
                    if leases.get(&f.id).is_some_and(|e| e.token == f.lease) {
                        leases.remove(&f.id);
                    }
                    if !*ok {
                        log::warn!(
                            "worker {}: outcome of job {} refused: its lease was taken over",
                            shared.config.worker_id,
                            f.id
                        );
                    }
                }
                drop(leases);
                for (f, _) in batch.iter().zip(&accepted).filter(|(_, ok)| **ok) {
                    shared.executor.recorded(f.id, &f.outcome);
                }
                shared.queue.finished();
                if batch
                    .iter()
                    .any(|f| !matches!(f.outcome, FinishOutcome::Completed))
                {
                    shared.queue.wake(); // a retry with no delay is runnable now
                }
                return;
            }
            Err(Error::StorageClosed) => {
                log::error!(
                    "worker {}: storage closed; {} outcome(s) not recorded (their leases will expire)",
                    shared.config.worker_id,
                    batch.len()
                );
                return;
            }
            Err(e) => {
                log::error!(
                    "worker {}: recording {} outcome(s) failed (retrying in {backoff:?}): {e}",
                    shared.config.worker_id,
                    batch.len()
                );
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    // Cancels requested through this process's queue: beat every lease at once, so a job
    // running here learns of its cancel now rather than at its next heartbeat.
    let mut cancels = shared.queue.subscribe_cancels();
    loop {
        let next = shared
            .leases()
            .values()
            .filter(|e| !e.lost)
            .map(|e| e.next_beat)
            .min();
        let mut all = false;
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = shared.leases_changed.notified() => continue,
                    Ok(()) = cancels.changed() => all = true,
                }
            }
            None => {
                tokio::select! {
                    _ = shared.leases_changed.notified() => {}
                    Ok(()) = cancels.changed() => {}
                }
                continue;
            }
        }
        let now_i = Instant::now();
        let due: Vec<(JobId, LeaseToken)> = {
            let mut leases = shared.leases();
            leases
                .iter_mut()
                .filter(|(_, e)| !e.lost && (all || e.next_beat <= now_i))
                .map(|(id, e)| {
                    e.next_beat = now_i + e.heartbeat;
                    (*id, e.token)
                })
                .collect()
        };
        if due.is_empty() {
            continue;
        }
        crash_point(CrashPoint::DuringRun);
        let now = shared.queue.clock().now();
        match shared
            .queue
            .storage()
            .job_heartbeat(JobHeartbeatParams {
                leases: due.clone(),
                now,
            })
            .await
        {
            Ok(result) => {
                let kept: HashSet<JobId> = result.extended.iter().copied().collect();
                let mut leases = shared.leases();
                for (id, token) in due.iter().filter(|(id, _)| kept.contains(id)) {
                    if let Some(e) = leases.get_mut(id).filter(|e| e.token == *token) {
                        e.expires_at = now.plus(e.lease);
                    }
                }
                for (id, token) in due.iter().filter(|(id, _)| !kept.contains(id)) {
                    log::warn!(
                        "worker {}: lost the lease of job {id}; another worker may run it",
                        shared.config.worker_id
                    );
                    if let Some(e) = leases.get_mut(id).filter(|e| e.token == *token) {
                        e.lost = true;
                        if e.executing {
                            shared.executor.abandon(*id);
                        }
                    }
                }
                // Entries stay until the job ends (run_job and the completer remove
                // them); its outcome will be refused by the storage's fence.
                let tokens: HashMap<JobId, LeaseToken> = due.iter().copied().collect();
                for id in &result.cancel_requested {
                    let Some(e) = leases
                        .get_mut(id)
                        .filter(|e| Some(&e.token) == tokens.get(id))
                    else {
                        continue;
                    };
                    if e.cancel.is_set() {
                        continue;
                    }
                    e.cancel.set();
                    if e.executing {
                        log::info!(
                            "worker {}: job {id} was cancelled; stopping it",
                            shared.config.worker_id
                        );
                        shared.executor.cancel(*id);
                    }
                }
            }
            Err(e) => {
                log::error!("worker {}: heartbeat failed: {e}", shared.config.worker_id);
                // Try again soon rather than a whole interval later: the leases run out.
                let retry_at = Instant::now();
                let mut leases = shared.leases();
                for (id, token) in &due {
                    if let Some(e) = leases.get_mut(id).filter(|e| e.token == *token) {
                        e.next_beat = e
                            .next_beat
                            .min(retry_at + (e.heartbeat / 4).min(HEARTBEAT_RETRY_MAX));
                    }
                }
            }
        }
    }
}

/// Delete completed jobs that finished more than `retention` ago, a batch at a time, every
/// `retention_interval` (and once at start).
async fn retention_loop(shared: Arc<Shared>) {
    let Some(keep) = shared.config.retention else {
        return;
    };
    let mut interval = tokio::time::interval(shared.config.retention_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let mut pruned = 0;
        loop {
            let cutoff = shared.queue.clock().now().minus(keep);
            let deleted = shared
                .queue
                .storage()
                .job_prune(JobPruneParams {
                    statuses: vec![JobStatus::Completed],
                    finished_before: cutoff,
                    limit: RETENTION_BATCH,
                })
                .await;
            match deleted {
                Ok(n) => {
                    pruned += n;
                    if n < u64::from(RETENTION_BATCH) {
                        break;
                    }
                    // Let other writers in between batches.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(Error::StorageClosed) => return,
                Err(e) => {
                    log::error!(
                        "worker {}: deleting old completed jobs failed: {e}",
                        shared.config.worker_id
                    );
                    break;
                }
            }
        }
        if pruned > 0 {
            log::info!(
                "worker {}: deleted {pruned} completed job(s) older than the retention of {keep:?}",
                shared.config.worker_id
            );
        }
    }
}

/// Take the due ticks of the schedule entries whose job this pool has registered, then
/// sleep until the earliest next tick. The entries are re-read at least every poll
/// interval (other processes add, delete and take ticks of entries) and at once when this
/// process changes one. Ticks are taken in storage, so however many pools (in however
/// many processes) run this, each tick stores one job.
async fn schedule_loop(shared: Arc<Shared>) {
    let mut stop_rx = shared.stopping.subscribe();
    let mut changes = shared.queue.subscribe_schedules();
    let names: HashSet<&str> = shared
        .config
        .queues
        .iter()
        .flat_map(|q| q.names.iter().map(String::as_str))
        .collect();
    let mut error_backoff = ERROR_BACKOFF_MIN;
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        if *stop_rx.borrow_and_update() {
            return;
        }
        changes.borrow_and_update();
        let wait_for = match schedule_pass(&shared, &names, &mut warned).await {
            Ok(next) => {
                error_backoff = ERROR_BACKOFF_MIN;
                let until = next.map(|t| {
                    shared
                        .queue
                        .clock()
                        .now()
                        .until(t)
                        .max(Duration::from_millis(1))
                });
                match (until, shared.poll_interval()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Err(Error::StorageClosed) => return,
            Err(e) => {
                log::error!(
                    "worker {}: scheduling failed (retrying in {error_backoff:?}): {e}",
                    shared.config.worker_id
                );
                let wait = error_backoff;
                error_backoff = next_backoff(error_backoff);
                Some(wait)
            }
        };
        tokio::select! {
            _ = stop_rx.changed() => {}
            _ = changes.changed() => {}
            _ = sleep_or_forever(wait_for) => {}
        }
    }
}

/// One pass over the entries: take every due tick; return the earliest next tick.
async fn schedule_pass(
    shared: &Shared,
    names: &HashSet<&str>,
    warned: &mut HashSet<String>,
) -> Result<Option<Timestamp>> {
    let storage = shared.queue.storage();
    let entries = storage.schedule_list().await?;
    let mut earliest: Option<Timestamp> = None;
    for entry in entries {
        if !names.contains(entry.job.name.as_str()) {
            continue;
        }
        let ticker = match Ticker::new(&entry.spec) {
            Ok(t) => t,
            Err(e) => {
                if warned.insert(entry.name.clone()) {
                    log::error!(
                        "worker {}: schedule {:?} is skipped: {e}",
                        shared.config.worker_id,
                        entry.name
                    );
                }
                continue;
            }
        };
        let now = shared.queue.clock().now();
        let mut next = entry.next_run_at;
        if entry.next_run_at <= now {
            let Some(plan) = plan_tick(&ticker, entry.catch_up, entry.next_run_at, now) else {
                continue; // no tick after now: the entry is over
            };
            let job = plan.enqueue.then(|| entry.job.to_job());
            let taken = storage
                .schedule_tick(ScheduleTickParams {
                    name: entry.name.clone(),
                    due: entry.next_run_at,
                    next_run_at: plan.next_run_at,
                    job,
                    now,
                })
                .await?;
            if taken && plan.enqueue {
                shared.queue.wake();
            } else if taken {
                log::info!(
                    "worker {}: schedule {:?}: skipped ticks missed since {:?} (catch_up=none)",
                    shared.config.worker_id,
                    entry.name,
                    entry.next_run_at
                );
            }
            next = plan.next_run_at;
        }
        earliest = Some(earliest.map_or(next, |e| e.min(next)));
    }
    Ok(earliest)
}

async fn reclaim_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.config.reclaim_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // Leases that expired before the earliest one this pool holds: its own leases may
        // have run out while the storage was unreachable, but they are still being run and
        // the heartbeat task extends them as soon as it gets through. Another pool's
        // reclaim may take them (at-least-once); this one does not.
        let now = shared.queue.clock().now();
        let held = shared
            .leases()
            .values()
            .filter(|e| !e.lost)
            .map(|e| e.expires_at)
            .min();
        let now = match held {
            Some(earliest) if earliest < now => {
                log::debug!(
                    "worker {}: not reclaiming leases that ended after {earliest:?}: this \
                     pool holds leases it has not been able to extend",
                    shared.config.worker_id
                );
                earliest
            }
            _ => now,
        };
        match shared
            .queue
            .storage()
            .job_reclaim_expired(JobReclaimParams { now })
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                log::warn!(
                    "worker {}: reclaimed {n} job(s) whose worker stopped heartbeating",
                    shared.config.worker_id
                );
                shared.queue.wake();
            }
            Err(Error::StorageClosed) => return,
            Err(e) => log::error!("worker {}: reclaim failed: {e}", shared.config.worker_id),
        }
    }
}
