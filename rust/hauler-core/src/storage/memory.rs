//! An in-process storage: jobs live in memory and vanish with the process.
//!
//! Everything sits behind one mutex that is never held across an `.await`; each method
//! takes it once, does its work and returns. Nothing scans all jobs on the hot path:
//!
//! - pending jobs are indexed per queue and name in a *lane*, each in one of two sets: the
//!   jobs whose `run_at` has not come by the lane's last claim, ordered by `run_at`, and
//!   the rest, ordered the way claims pick, `(priority DESC, run_at ASC, id ASC)`. A claim
//!   first moves the jobs that became due since the lane's last claim into the ready set,
//!   then merges the first entries of the lanes it asked for;
//! - running jobs are indexed by lease expiry, so reclaiming reads only expired leases;
//! - finished jobs are indexed by finish time, so pruning reads only the jobs it deletes;
//! - counts per queue and status are kept up to date on every transition;
//! - unique keys map to the job holding them (one in its unique states), and concurrency
//!   keys to how many of their jobs run, so inserts and claims check limits by lookup.
//!
//! Every change to a job goes through [`Inner::update`], which takes the job out of the
//! indexes, applies the change and puts it back, so the indexes cannot drift from the
//! records.
//!
//! Jobs are stored compactly (`Stored`, converted to a [`JobRecord`] when read): a queue
//! of 100,000 small jobs costs about 20 MB, then about 25 MB once they have all run. What
//! a job's class decides (name, queue, retry policy...) is shared between the jobs that
//! have it, and so are worker ids.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    lease_duration, FinishOutcome, GroupInsertParams, JobCancelParams, JobCancelResult,
    JobClaimParams, JobCountParams, JobDeleteParams, JobFilter, JobFinishManyParams,
    JobHeartbeatParams, JobHeartbeatResult, JobInsertManyParams, JobListParams, JobNextRunAtParams,
    JobProgressSetParams, JobPruneParams, JobReclaimParams, JobReleaseParams, JobRetryParams,
    ScheduleRunNowParams, ScheduleTickParams, ScheduleUpsertParams, Storage,
};
use crate::error::{Error, Result};
use crate::group::{GroupCounts, GroupRecord, NewGroup};
use crate::model::{
    AttemptOutcome, AttemptRecord, ClaimedJob, ErrorInfo, GroupId, InsertedJob, JobId, JobLimits,
    JobRecord, JobStatus, LeaseToken, NewJob, QueueCount, Timestamp,
};
use crate::retry::{BackoffKind, MaxRetries, RetryPolicy};
use crate::schedule::ScheduleRecord;

/// The smallest id, to bound index ranges.
const MIN_ID: JobId = JobId(Uuid::nil());

/// A storage that keeps jobs in this process's memory: no persistence, no sharing between
/// processes, and the fastest option. Good for tests, development and jobs whose loss on
/// exit is acceptable.
///
/// ```
/// use hauler_core::storage::{MemoryStorage, Storage};
///
/// let storage = MemoryStorage::new();
/// assert!(storage.poll_interval().is_none());
/// ```
#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lock the state, failing once the storage is closed.
    fn open(&self) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.lock()?;
        if inner.closed {
            return Err(Error::StorageClosed);
        }
        Ok(inner)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        // A poisoned lock means a panic mid-update: the indexes may be inconsistent, so
        // refuse to go on rather than hand out wrong jobs.
        self.inner
            .lock()
            .map_err(|_| Error::Storage("memory storage is unusable after a panic".to_owned()))
    }
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("MemoryStorage");
        if let Ok(inner) = self.inner.try_lock() {
            d.field("jobs", &inner.jobs.len())
                .field("closed", &inner.closed);
        }
        d.finish_non_exhaustive()
    }
}

/// What the jobs of one kind share: the fields that come from the job's class. Stored
/// once per distinct combination and shared by every job that has it (see
/// [`Interner::spec`]), so 100,000 jobs of one class pay for one name and one queue.
#[derive(Debug)]
struct Spec {
    name: Box<str>,
    queue: Box<str>,
    retry: RetryPolicy,
    priority: i32,
    timeout_ms: Option<u64>,
    heartbeat_ms: u64,
    version: u32,
}

impl Spec {
    /// The fields as comparable bits (floats by their bit patterns, so every stored value
    /// comes back exactly as it went in).
    fn bits(&self) -> (&str, &str, [u64; 5], i32, Option<u64>, u64, u32) {
        let max = match self.retry.max_retries {
            MaxRetries::Count(n) => u64::from(n),
            MaxRetries::Infinite => u64::MAX,
        };
        let (kind, x) = match self.retry.backoff.kind {
            BackoffKind::Fixed(x) => (0, x),
            BackoffKind::Linear(x) => (1, x),
            BackoffKind::Exponential(x) => (2, x),
        };
        let b = &self.retry.backoff;
        (
            &self.name,
            &self.queue,
            [
                max,
                kind,
                x.to_bits(),
                b.max_delay.to_bits(),
                b.jitter.to_bits(),
            ],
            self.priority,
            self.timeout_ms,
            self.heartbeat_ms,
            self.version,
        )
    }

    fn of(job: &mut NewJob) -> Spec {
        Spec {
            name: std::mem::take(&mut job.name).into_boxed_str(),
            queue: std::mem::take(&mut job.queue).into_boxed_str(),
            retry: job.retry,
            priority: job.priority,
            timeout_ms: job.timeout_ms,
            heartbeat_ms: job.heartbeat_ms,
            version: job.version,
        }
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.bits() == other.bits()
    }
}

impl Eq for Spec {}

impl std::hash::Hash for Spec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits().hash(state);
    }
}

/// A worker id, stored once and shared by the attempts and claims that name it.
type Worker = Arc<String>;

/// The shared values jobs point to: [`Spec`]s and worker ids. An entry no job uses any
/// more is dropped by the next sweep, which runs when a table has doubled since the last.
#[derive(Debug, Default)]
struct Interner {
    specs: HashSet<Arc<Spec>>,
    /// The spec stored last: a batch of jobs of one class finds it without hashing.
    last_spec: Option<Arc<Spec>>,
    specs_sweep_at: usize,
    workers: HashMap<Box<str>, Worker>,
    workers_sweep_at: usize,
}

/// Tables are swept once they hold at least this many entries.
const SWEEP_MIN: usize = 64;

impl Interner {
    /// The shared spec of `job` (its name and queue are taken out of it).
    fn spec(&mut self, job: &mut NewJob) -> Arc<Spec> {
        let spec = Spec::of(job);
        if let Some(last) = self.last_spec.as_ref().filter(|l| ***l == spec) {
            return last.clone();
        }
        let shared = match self.specs.get(&spec) {
            Some(s) => s.clone(),
            None => {
                if self.specs.len() >= self.specs_sweep_at.max(SWEEP_MIN) {
                    self.last_spec = None;
                    self.specs.retain(|s| Arc::strong_count(s) > 1);
                    self.specs_sweep_at = 2 * self.specs.len();
                }
                let s = Arc::new(spec);
                self.specs.insert(s.clone());
                s
            }
        };
        self.last_spec = Some(shared.clone());
        shared
    }

    /// The shared copy of worker id `id`.
    fn worker(&mut self, id: &str) -> Worker {
        if let Some(w) = self.workers.get(id) {
            return w.clone();
        }
        if self.workers.len() >= self.workers_sweep_at.max(SWEEP_MIN) {
            self.workers.retain(|_, w| Arc::strong_count(w) > 1);
            self.workers_sweep_at = 2 * self.workers.len();
        }
        let w = Arc::new(id.to_owned());
        self.workers.insert(id.into(), w.clone());
        w
    }
}

/// One finished attempt, as [`AttemptRecord`] but smaller (the worker id is shared; `None`
/// stands for the empty id of a manual retry).
#[derive(Debug)]
struct Attempt {
    attempt: u32,
    outcome: AttemptOutcome,
    worker: Option<Worker>,
    started_at: Timestamp,
    finished_at: Timestamp,
    error: Option<Box<ErrorInfo>>,
}

/// The claim of a running job (present exactly while it runs).
#[derive(Debug)]
struct Claim {
    lease: LeaseToken,
    worker: Worker,
    expires_at: Timestamp,
}

/// The fields most jobs never set, kept out of line.
#[derive(Debug, Default)]
struct Extra {
    unique_key: Option<String>,
    limits: JobLimits,
    group_id: Option<GroupId>,
    cancel_requested_at: Option<Timestamp>,
    last_error: Option<ErrorInfo>,
    progress: Option<u8>,
    progress_message: Option<String>,
    state: Option<String>,
}

/// The limits of a job that has none.
static NO_LIMITS: JobLimits = JobLimits {
    unique_states: Vec::new(),
    concurrency: None,
    rate: None,
};

/// `Stored::flags`: `started_at` is set.
const STARTED: u8 = 1;
/// `Stored::flags`: `finished_at` is set.
const FINISHED: u8 = 2;

/// A stored job (its id is its key in [`Inner::jobs`]): a [`JobRecord`] laid out to be
/// small, since a queue may hold millions. What the job's class decides is shared
/// ([`Spec`]), the claim and the rarely set fields are boxed out of line, and the times
/// that may be unset share one flags byte instead of an `Option` each.
#[derive(Debug)]
struct Stored {
    spec: Arc<Spec>,
    args: Box<str>,
    created_at: Timestamp,
    run_at: Timestamp,
    started_at: Timestamp,
    finished_at: Timestamp,
    history: Box<[Attempt]>,
    claim: Option<Box<Claim>>,
    extra: Option<Box<Extra>>,
    attempt: u32,
    status: JobStatus,
    flags: u8,
}

impl Stored {
    fn started_at(&self) -> Option<Timestamp> {
        (self.flags & STARTED != 0).then_some(self.started_at)
    }

    fn finished_at(&self) -> Option<Timestamp> {
        (self.flags & FINISHED != 0).then_some(self.finished_at)
    }

    fn set_started_at(&mut self, t: Timestamp) {
        self.started_at = t;
        self.flags |= STARTED;
    }

    fn set_finished_at(&mut self, t: Option<Timestamp>) {
        match t {
            Some(t) => {
                self.finished_at = t;
                self.flags |= FINISHED;
            }
            None => {
                self.finished_at = Timestamp::from_micros(0);
                self.flags &= !FINISHED;
            }
        }
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn limits(&self) -> &JobLimits {
        self.extra.as_ref().map_or(&NO_LIMITS, |x| &x.limits)
    }

    fn unique_key(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.unique_key.as_deref())
    }

    fn group_id(&self) -> Option<GroupId> {
        self.extra.as_ref().and_then(|x| x.group_id)
    }

    fn cancel_requested_at(&self) -> Option<Timestamp> {
        self.extra.as_ref().and_then(|x| x.cancel_requested_at)
    }

    fn lease_expires_at(&self) -> Option<Timestamp> {
        self.claim.as_ref().map(|c| c.expires_at)
    }

    /// Append an attempt to the history (which is stored without spare capacity).
    fn push_attempt(&mut self, attempt: Attempt) {
        let mut history = Vec::with_capacity(self.history.len() + 1);
        history.extend(std::mem::take(&mut self.history).into_vec());
        history.push(attempt);
        self.history = history.into_boxed_slice();
    }

    /// The job as the [`Storage`] trait returns it.
    fn record(&self, id: JobId) -> JobRecord {
        let spec = &*self.spec;
        let extra = self.extra.as_deref();
        JobRecord {
            id,
            name: spec.name.to_string(),
            queue: spec.queue.to_string(),
            args: self.args.to_string(),
            status: self.status,
            attempt: self.attempt,
            retry: spec.retry,
            priority: spec.priority,
            timeout_ms: spec.timeout_ms,
            heartbeat_ms: spec.heartbeat_ms,
            version: spec.version,
            unique_key: extra.and_then(|x| x.unique_key.clone()),
            limits: extra.map_or_else(JobLimits::default, |x| x.limits.clone()),
            created_at: self.created_at,
            run_at: self.run_at,
            started_at: self.started_at(),
            finished_at: self.finished_at(),
            worker_id: self.claim.as_ref().map(|c| c.worker.to_string()),
            lease_expires_at: self.lease_expires_at(),
            cancel_requested_at: self.cancel_requested_at(),
            last_error: extra.and_then(|x| x.last_error.clone()),
            history: self
                .history
                .iter()
                .map(|a| AttemptRecord {
                    attempt: a.attempt,
                    worker_id: a.worker.as_deref().cloned().unwrap_or_default(),
                    started_at: a.started_at,
                    finished_at: a.finished_at,
                    outcome: a.outcome,
                    error: a.error.as_deref().cloned(),
                })
                .collect(),
            progress: extra.and_then(|x| x.progress),
            progress_message: extra.and_then(|x| x.progress_message.clone()),
            state: extra.and_then(|x| x.state.clone()),
            group_id: extra.and_then(|x| x.group_id),
        }
    }

    /// Whether the job meets `filter` (as [`JobFilter::matches`] decides for a record).
    fn matches(&self, id: JobId, f: &JobFilter) -> bool {
        f.ids.as_ref().map_or(true, |ids| ids.contains(&id))
            && (f.statuses.is_empty() || f.statuses.contains(&self.status))
            && f.name.as_deref().map_or(true, |n| n == &*self.spec.name)
            && f.queue.as_deref().map_or(true, |q| q == &*self.spec.queue)
            && f.created_from.map_or(true, |t| self.created_at >= t)
            && f.created_to.map_or(true, |t| self.created_at < t)
            && f.args_contains
                .as_deref()
                .map_or(true, |text| self.args.contains(text))
            && f.group.map_or(true, |g| self.group_id() == Some(g))
    }
}

/// The claim order: priority DESC, run_at ASC, id ASC.
type ReadyKey = (Reverse<i32>, Timestamp, JobId);

/// The pending jobs of one queue and name. Each is in one of two sets: `later` while its
/// `run_at` is after `promoted_until`, `ready` (in claim order) once it is not.
#[derive(Debug)]
struct Lane {
    /// The pending jobs with `run_at > promoted_until`, by run time (with their priority,
    /// to build their claim key).
    later: BTreeSet<(Timestamp, JobId, i32)>,
    /// The pending jobs with `run_at <= promoted_until`, in claim order.
    ready: BTreeSet<ReadyKey>,
    /// Only ever moves forward.
    promoted_until: Timestamp,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            later: BTreeSet::new(),
            ready: BTreeSet::new(),
            promoted_until: Timestamp::from_micros(i64::MIN),
        }
    }
}

impl Lane {
    fn insert(&mut self, id: JobId, s: &Stored) {
        let priority = s.spec.priority;
        if s.run_at <= self.promoted_until {
            self.ready.insert((Reverse(priority), s.run_at, id));
        } else {
            self.later.insert((s.run_at, id, priority));
        }
    }

    fn remove(&mut self, id: JobId, s: &Stored) {
        let priority = s.spec.priority;
        if s.run_at <= self.promoted_until {
            self.ready.remove(&(Reverse(priority), s.run_at, id));
        } else {
            self.later.remove(&(s.run_at, id, priority));
        }
    }

    /// Move the jobs due by `now` into `ready`. Only jobs that became due since the last
    /// promotion are read, so with a clock that moves forward this costs nothing when
    /// nothing new is due.
    fn promote(&mut self, now: Timestamp) {
        if now <= self.promoted_until {
            return;
        }
        self.promoted_until = now;
        let due = match now.as_micros().checked_add(1) {
            Some(after) => {
                let later =
                    self.later
                        .split_off(&(Timestamp::from_micros(after), MIN_ID, i32::MIN));
                std::mem::replace(&mut self.later, later)
            }
            None => std::mem::take(&mut self.later),
        };
        let due = due.into_iter().map(|(t, id, p)| (Reverse(p), t, id));
        if due.len() < self.ready.len() {
            self.ready.extend(due);
        } else {
            // Many at once (a queue filled before the workers started): build the set in
            // one go, which packs its nodes full where inserting one by one leaves them
            // half empty, for the cost of reading `ready` once.
            let mut due: BTreeSet<ReadyKey> = due.collect();
            self.ready.append(&mut due);
        }
    }

    /// The earliest run time in the lane.
    fn next_run_at(&self) -> Option<Timestamp> {
        let mut next = self.later.first().map(|&(t, _, _)| t);
        // `ready` is ordered by run time within each priority: read the first of each.
        let mut level = self.ready.first();
        while let Some(&(Reverse(p), t, _)) = level {
            next = Some(next.map_or(t, |n| n.min(t)));
            let Some(below) = p.checked_sub(1) else {
                break;
            };
            level = self
                .ready
                .range((Reverse(below), Timestamp::from_micros(i64::MIN), MIN_ID)..)
                .next();
        }
        next
    }
}

/// A group's members per status (indexed by `JobStatus as usize`), as the indexes see them.
#[derive(Debug, Default, Clone, Copy)]
struct GroupTally([u64; JobStatus::ALL.len()]);

impl GroupTally {
    fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Members not in a final status.
    fn open(&self) -> u64 {
        JobStatus::ALL
            .iter()
            .filter(|s| !s.is_final())
            .map(|&s| self.0[s as usize])
            .sum()
    }
}

/// A stored group (its counts are in [`Indexes::groups`]).
#[derive(Debug)]
struct GroupRow {
    group: NewGroup,
    on_complete_job_id: Option<JobId>,
    created_at: Timestamp,
    finished_at: Option<Timestamp>,
}

/// The indexes over the jobs, kept in step with them by [`Indexes::insert`] and
/// [`Indexes::remove`].
#[derive(Debug, Default)]
struct Indexes {
    /// Pending jobs: queue, then name.
    lanes: HashMap<String, HashMap<String, Lane>>,
    /// Running jobs by lease expiry.
    running: BTreeSet<(Timestamp, JobId)>,
    /// Finished jobs by finish time.
    finished: BTreeSet<(Timestamp, JobId)>,
    /// Jobs per queue and status (indexed by `JobStatus as usize`).
    counts: BTreeMap<String, [u64; JobStatus::ALL.len()]>,
    /// Unique keys held: by the job with that key whose status is one of its unique states.
    unique: HashMap<String, JobId>,
    /// Running jobs per concurrency key (keys with none are removed).
    running_keys: HashMap<String, u32>,
    /// Members per group.
    groups: HashMap<GroupId, GroupTally>,
}

/// Whether `s` holds its unique key: it has one and its status is one of its unique states.
fn holds_unique(s: &Stored) -> Option<&str> {
    let x = s.extra.as_deref()?;
    x.unique_key
        .as_deref()
        .filter(|_| x.limits.unique_states.contains(&s.status))
}

impl Indexes {
    fn insert(&mut self, id: JobId, s: &Stored) {
        let (queue, name) = (&*s.spec.queue, &*s.spec.name);
        if s.status.is_pending() {
            let names = match self.lanes.get_mut(queue) {
                Some(names) => names,
                None => self.lanes.entry(queue.to_owned()).or_default(),
            };
            let lane = match names.get_mut(name) {
                Some(lane) => lane,
                None => names.entry(name.to_owned()).or_default(),
            };
            lane.insert(id, s);
        } else if s.status == JobStatus::Running {
            if let Some(expires) = s.lease_expires_at() {
                self.running.insert((expires, id));
            }
        } else if let Some(finished) = s.finished_at() {
            self.finished.insert((finished, id));
        }
        let counts = match self.counts.get_mut(queue) {
            Some(c) => c,
            None => self.counts.entry(queue.to_owned()).or_default(),
        };
        counts[s.status as usize] += 1;
        if let Some(key) = holds_unique(s) {
            self.unique.insert(key.to_owned(), id);
        }
        if let (JobStatus::Running, Some(c)) = (s.status, &s.limits().concurrency) {
            *self.running_keys.entry(c.key.clone()).or_default() += 1;
        }
        if let Some(g) = s.group_id() {
            self.groups.entry(g).or_default().0[s.status as usize] += 1;
        }
    }

    fn remove(&mut self, id: JobId, s: &Stored) {
        let (queue, name) = (&*s.spec.queue, &*s.spec.name);
        if s.status.is_pending() {
            if let Some(lane) = self.lanes.get_mut(queue).and_then(|n| n.get_mut(name)) {
                lane.remove(id, s);
            }
        } else if s.status == JobStatus::Running {
            if let Some(expires) = s.lease_expires_at() {
                self.running.remove(&(expires, id));
            }
        } else if let Some(finished) = s.finished_at() {
            self.finished.remove(&(finished, id));
        }
        if let Some(counts) = self.counts.get_mut(queue) {
            counts[s.status as usize] = counts[s.status as usize].saturating_sub(1);
        }
        if let Some(key) = holds_unique(s) {
            if self.unique.get(key) == Some(&id) {
                self.unique.remove(key);
            }
        }
        if let (JobStatus::Running, Some(c)) = (s.status, &s.limits().concurrency) {
            if let Some(n) = self.running_keys.get_mut(&c.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.running_keys.remove(&c.key);
                }
            }
        }
        if let Some(tally) = s.group_id().and_then(|g| self.groups.get_mut(&g)) {
            let n = &mut tally.0[s.status as usize];
            *n = n.saturating_sub(1);
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    /// Every job, by id (so by creation time: ids are UUID v7). Boxed: a B-tree node
    /// holds eleven entries and is often half full, so inline records would leave whole
    /// records' worth of empty slots.
    jobs: BTreeMap<JobId, Box<Stored>>,
    idx: Indexes,
    /// The specs and worker ids the jobs share.
    shared: Interner,
    /// Schedule entries, by name.
    schedules: BTreeMap<String, ScheduleRecord>,
    /// Per rate key, the start times of its jobs within the longest window seen.
    rate_starts: HashMap<String, VecDeque<Timestamp>>,
    /// Job groups.
    groups: HashMap<GroupId, GroupRow>,
}

/// How many more jobs of each key a claim may start: counted once per key, then spent.
#[derive(Default)]
struct Room {
    concurrency: HashMap<String, u32>,
    rate: HashMap<String, u32>,
}

impl Room {
    /// Whether a job with `limits` may start now; if so, its room is spent.
    fn take(&mut self, inner: &Inner, limits: &JobLimits, now: Timestamp) -> bool {
        let concurrency = limits.concurrency.as_ref().map(|c| {
            let running = inner.idx.running_keys.get(&c.key).copied().unwrap_or(0);
            (
                c.key.as_str(),
                *self
                    .concurrency
                    .entry(c.key.clone())
                    .or_insert_with(|| c.limit.saturating_sub(running)),
            )
        });
        let rate = limits.rate.as_ref().map(|r| {
            let since = now.minus(Duration::from_millis(r.window_ms));
            let started = inner.rate_starts.get(&r.key).map_or(0, |starts| {
                starts.iter().filter(|&&t| t > since && t <= now).count()
            });
            let started = u32::try_from(started).unwrap_or(u32::MAX);
            (
                r.key.as_str(),
                *self
                    .rate
                    .entry(r.key.clone())
                    .or_insert_with(|| r.limit.saturating_sub(started)),
            )
        });
        if concurrency.is_some_and(|(_, n)| n == 0) || rate.is_some_and(|(_, n)| n == 0) {
            return false;
        }
        if let Some((key, _)) = concurrency {
            if let Some(n) = self.concurrency.get_mut(key) {
                *n -= 1;
            }
        }
        if let Some((key, _)) = rate {
            if let Some(n) = self.rate.get_mut(key) {
                *n -= 1;
            }
        }
        true
    }
}

impl Inner {
    /// Store jobs, all or none; a unique job whose key is held matches the holder instead.
    fn insert_jobs(&mut self, jobs: Vec<NewJob>, now: Timestamp) -> Result<Vec<InsertedJob>> {
        self.insert_members(jobs, now, None)
    }

    /// Store jobs as [`Inner::insert_jobs`] does, as members of `group` if given.
    fn insert_members(
        &mut self,
        jobs: Vec<NewJob>,
        now: Timestamp,
        group: Option<GroupId>,
    ) -> Result<Vec<InsertedJob>> {
        let inner = self;
        let mut seen = HashSet::with_capacity(jobs.len());
        for job in &jobs {
            job.limits.validate()?;
            if !seen.insert(job.id) {
                return Err(Error::Storage(format!(
                    "job {} appears twice in the batch",
                    job.id
                )));
            }
            if inner.jobs.contains_key(&job.id) {
                return Err(Error::Storage(format!(
                    "a job with id {} already exists",
                    job.id
                )));
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            if let Some(key) = &job.unique_key {
                if let Some(&holder) = inner.idx.unique.get(key) {
                    out.push(InsertedJob {
                        id: holder,
                        duplicate: true,
                    });
                    continue;
                }
                job.limits.unique_states = job.limits.unique_states()?;
            } else {
                job.limits.unique_states.clear();
            }
            out.push(InsertedJob {
                id: job.id,
                duplicate: false,
            });
            let run_at = job.run_at.unwrap_or(now);
            let id = job.id;
            let has_extra =
                job.unique_key.is_some() || group.is_some() || job.limits != JobLimits::default();
            let extra = has_extra.then(|| {
                Box::new(Extra {
                    unique_key: job.unique_key.take(),
                    limits: std::mem::take(&mut job.limits),
                    group_id: group,
                    ..Extra::default()
                })
            });
            let stored = Box::new(Stored {
                spec: inner.shared.spec(&mut job),
                args: job.args.into_boxed_str(),
                created_at: now,
                run_at,
                started_at: Timestamp::from_micros(0),
                finished_at: Timestamp::from_micros(0),
                history: Box::default(),
                claim: None,
                extra,
                attempt: 0,
                status: if run_at > now {
                    JobStatus::Scheduled
                } else {
                    JobStatus::Available
                },
                flags: 0,
            });
            inner.idx.insert(id, &stored);
            inner.jobs.insert(id, stored);
        }
        Ok(out)
    }

    /// Record that a job of rate key `key` (window `window_ms`) started at `now`,
    /// forgetting starts that no window of that length still counts.
    fn record_start(&mut self, key: &str, window_ms: u64, now: Timestamp) {
        let starts = self.rate_starts.entry(key.to_owned()).or_default();
        let horizon = now.minus(Duration::from_millis(window_ms));
        while starts.front().is_some_and(|&t| t <= horizon) {
            starts.pop_front();
        }
        starts.push_back(now);
    }

    /// Apply `f` to a job, keeping the indexes in step, then finish or reopen its group
    /// if the change made that so. Returns `None` for an unknown id.
    fn update<T>(&mut self, id: JobId, f: impl FnOnce(&mut Stored) -> T) -> Option<T> {
        let s = self.jobs.get_mut(&id)?;
        self.idx.remove(id, s);
        let out = f(s);
        self.idx.insert(id, s);
        if let Some(g) = s.group_id() {
            let (is_final, finished_at) = (s.status.is_final(), s.finished_at());
            self.group_changed(g, is_final, finished_at);
        }
        Some(out)
    }

    /// After a member of `g` changed: finish the group if that member became final and no
    /// other is open (storing its `on_complete` job the first time), or reopen it if the
    /// member is open again.
    fn group_changed(&mut self, g: GroupId, member_final: bool, now: Option<Timestamp>) {
        let open = self.idx.groups.get(&g).map_or(0, GroupTally::open);
        let Some(row) = self.groups.get_mut(&g) else {
            return;
        };
        if !member_final {
            row.finished_at = None;
            return;
        }
        if open > 0 || row.finished_at.is_some() {
            return;
        }
        let now = now.unwrap_or(row.created_at);
        row.finished_at = Some(now);
        let job = match (&row.group.on_complete, row.on_complete_job_id) {
            (Some(template), None) => template.to_job(),
            _ => return,
        };
        row.on_complete_job_id = Some(job.id);
        if let Err(e) = self.insert_jobs(vec![job], now) {
            log::error!("group {g}: storing its on_complete job failed: {e}");
        }
    }

    /// Delete the groups of `touched` that have no members left.
    fn drop_empty_groups(&mut self, touched: impl IntoIterator<Item = GroupId>) {
        for g in touched {
            if self.idx.groups.get(&g).map_or(true, |t| t.total() == 0) {
                self.idx.groups.remove(&g);
                self.groups.remove(&g);
            }
        }
    }

    /// The job, if it is running under `lease`.
    fn held(&self, id: JobId, lease: LeaseToken) -> bool {
        self.jobs.get(&id).is_some_and(|s| {
            s.status == JobStatus::Running && s.claim.as_ref().is_some_and(|c| c.lease == lease)
        })
    }

    /// The distinct (queue, name) pairs asked for, as lanes that exist.
    fn lane_keys<'p>(queues: &'p [String], names: &'p [String]) -> Vec<(&'p str, &'p str)> {
        let mut keys: Vec<(&str, &str)> = queues
            .iter()
            .flat_map(|q| names.iter().map(move |n| (q.as_str(), n.as_str())))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    fn lane(&self, queue: &str, name: &str) -> Option<&Lane> {
        self.idx.lanes.get(queue).and_then(|n| n.get(name))
    }

    /// The jobs matching `filter`, newest first, older than `cursor`. A filter by ids
    /// reads only those ids; any other filter reads every job.
    fn matching<'a>(
        &'a self,
        filter: &'a JobFilter,
        cursor: Option<JobId>,
    ) -> Box<dyn Iterator<Item = (JobId, &'a Stored)> + 'a> {
        let older = move |id: &JobId| cursor.map_or(true, |c| *id < c);
        match &filter.ids {
            Some(ids) => {
                let ids: BTreeSet<JobId> = ids.iter().copied().filter(older).collect();
                Box::new(
                    ids.into_iter()
                        .rev()
                        .filter_map(|id| self.jobs.get(&id).map(|s| (id, &**s)))
                        .filter(|&(id, s)| s.matches(id, filter)),
                )
            }
            None => {
                let upper = match cursor {
                    Some(cursor) => Bound::Excluded(cursor),
                    None => Bound::Unbounded,
                };
                Box::new(
                    self.jobs
                        .range((Bound::Unbounded, upper))
                        .rev()
                        .map(|(&id, s)| (id, &**s))
                        .filter(|&(id, s)| s.matches(id, filter)),
                )
            }
        }
    }

    /// The ids of the jobs matching `filter` whose status is one of `statuses`.
    fn matching_ids(&self, filter: &JobFilter, statuses: &[JobStatus]) -> Vec<JobId> {
        self.matching(filter, None)
            .filter(|(_, s)| statuses.contains(&s.status))
            .map(|(id, _)| id)
            .collect()
    }

    /// Take jobs out of the storage, and the groups they leave empty; how many were taken.
    fn delete_all(&mut self, ids: Vec<JobId>) -> u64 {
        let mut groups = HashSet::new();
        let mut n = 0;
        for id in ids {
            if let Some(s) = self.jobs.remove(&id) {
                self.idx.remove(id, &s);
                groups.extend(s.group_id());
                n += 1;
            }
        }
        self.drop_empty_groups(groups);
        n
    }
}

/// Clear the claim of a job leaving `running`, recording the attempt in its history.
fn end_attempt(s: &mut Stored, now: Timestamp, outcome: AttemptOutcome, error: Option<ErrorInfo>) {
    let claim = s.claim.take();
    s.push_attempt(Attempt {
        attempt: s.attempt,
        outcome,
        worker: claim.map(|c| c.worker),
        started_at: s.started_at().unwrap_or(now),
        finished_at: now,
        error: error.clone().map(Box::new),
    });
    if error.is_some() {
        s.extra_mut().last_error = error;
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn job_insert_many(&self, params: JobInsertManyParams) -> Result<Vec<InsertedJob>> {
        let mut inner = self.open()?;
        inner.insert_jobs(params.jobs, params.now)
    }

    async fn group_insert(&self, mut params: GroupInsertParams) -> Result<()> {
        params.group.prepare_members(&mut params.jobs)?;
        let mut inner = self.open()?;
        let g = params.group.id;
        if inner.groups.contains_key(&g) {
            return Err(Error::Storage(format!(
                "a group with id {g} already exists"
            )));
        }
        inner.insert_members(params.jobs, params.now, Some(g))?;
        inner.groups.insert(
            g,
            GroupRow {
                group: params.group,
                on_complete_job_id: None,
                created_at: params.now,
                finished_at: None,
            },
        );
        Ok(())
    }

    async fn group_get(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        let inner = self.open()?;
        let Some(row) = inner.groups.get(&id) else {
            return Ok(None);
        };
        let mut counts = GroupCounts::default();
        if let Some(tally) = inner.idx.groups.get(&id) {
            for status in JobStatus::ALL {
                counts.add(status, tally.0[status as usize]);
            }
        }
        Ok(Some(GroupRecord {
            id,
            name: row.group.name.clone(),
            concurrency: row.group.concurrency,
            on_complete: row.group.on_complete.clone(),
            on_complete_job_id: row.on_complete_job_id,
            created_at: row.created_at,
            finished_at: row.finished_at,
            counts,
        }))
    }

    async fn job_claim(&self, params: JobClaimParams) -> Result<Vec<ClaimedJob>> {
        let mut guard = self.open()?;
        let inner = &mut *guard;
        let now = params.now;
        let limit = usize::try_from(params.limit).unwrap_or(usize::MAX);
        let keys = Inner::lane_keys(&params.queues, &params.names);
        if limit == 0 || keys.is_empty() {
            return Ok(Vec::new());
        }

        for &(q, n) in &keys {
            if let Some(lane) = inner
                .idx
                .lanes
                .get_mut(q)
                .and_then(|names| names.get_mut(n))
            {
                lane.promote(now);
            }
        }

        // Merge the lanes' ready sets in claim order. A lane may hold entries that are not
        // due yet only if `now` moved backwards since its last promotion; skip those.
        let picked: Vec<JobId> = {
            let mut iters: Vec<_> = keys
                .iter()
                .filter_map(|&(q, n)| inner.lane(q, n))
                .map(|lane| lane.ready.iter().filter(move |k| k.1 <= now))
                .collect();
            let mut heads = BinaryHeap::with_capacity(iters.len());
            for (i, it) in iters.iter_mut().enumerate() {
                if let Some(&k) = it.next() {
                    heads.push(Reverse((k, i)));
                }
            }
            let mut picked = Vec::with_capacity(limit.min(1024));
            let mut room = Room::default();
            while picked.len() < limit {
                let Some(Reverse((k, i))) = heads.pop() else {
                    break;
                };
                // A job over a limit stays pending; the ones behind it are still taken.
                let admitted = match inner.jobs.get(&k.2) {
                    Some(s) if s.limits().is_limited() => room.take(inner, s.limits(), now),
                    _ => true,
                };
                if admitted {
                    picked.push(k.2);
                }
                if let Some(&next) = iters[i].next() {
                    heads.push(Reverse((next, i)));
                }
            }
            picked
        };

        let mut claimed = Vec::with_capacity(picked.len());
        let worker = inner.shared.worker(&params.worker_id);
        for id in picked {
            let rate = inner.jobs.get(&id).and_then(|s| s.limits().rate.clone());
            if let Some(r) = rate {
                inner.record_start(&r.key, r.window_ms, now);
            }
            let lease = LeaseToken::new();
            let worker = worker.clone();
            let job = inner.update(id, |s| {
                let spec = &*s.spec;
                let job = ClaimedJob {
                    id,
                    name: spec.name.to_string(),
                    queue: spec.queue.to_string(),
                    args: s.args.to_string(),
                    attempt: s.attempt.saturating_add(1),
                    retry: spec.retry,
                    timeout_ms: spec.timeout_ms,
                    heartbeat_ms: spec.heartbeat_ms,
                    version: spec.version,
                    started_at: now,
                    lease,
                    state: s.extra.as_ref().and_then(|x| x.state.clone()),
                };
                let expires_at = now.plus(lease_duration(spec.heartbeat_ms));
                s.status = JobStatus::Running;
                s.attempt = job.attempt;
                s.set_started_at(now);
                s.claim = Some(Box::new(Claim {
                    lease,
                    worker,
                    expires_at,
                }));
                job
            });
            claimed.extend(job);
        }
        Ok(claimed)
    }

    async fn job_heartbeat(&self, params: JobHeartbeatParams) -> Result<JobHeartbeatResult> {
        let mut inner = self.open()?;
        let mut out = JobHeartbeatResult::default();
        for (id, lease) in params.leases {
            if !inner.held(id, lease) {
                continue;
            }
            let cancel = inner.update(id, |s| {
                let expires_at = params.now.plus(lease_duration(s.spec.heartbeat_ms));
                if let Some(c) = &mut s.claim {
                    c.expires_at = expires_at;
                }
                s.cancel_requested_at().is_some()
            });
            out.extended.push(id);
            if cancel == Some(true) {
                out.cancel_requested.push(id);
            }
        }
        Ok(out)
    }

    async fn job_finish_many(&self, params: JobFinishManyParams) -> Result<Vec<bool>> {
        let mut inner = self.open()?;
        let now = params.now;
        let mut accepted = Vec::with_capacity(params.finishes.len());
        for finish in params.finishes {
            if !inner.held(finish.id, finish.lease) {
                accepted.push(false);
                continue;
            }
            inner.update(finish.id, |s| match finish.outcome {
                _ if s.cancel_requested_at().is_some() => {
                    let error = match finish.outcome {
                        FinishOutcome::Completed | FinishOutcome::Snoozed { .. } => None,
                        FinishOutcome::Retry { error, .. } | FinishOutcome::Failed { error } => {
                            Some(error)
                        }
                    };
                    end_attempt(s, now, AttemptOutcome::Cancelled, error);
                    s.status = JobStatus::Cancelled;
                    s.set_finished_at(Some(now));
                }
                FinishOutcome::Completed => {
                    end_attempt(s, now, AttemptOutcome::Completed, None);
                    s.status = JobStatus::Completed;
                    s.set_finished_at(Some(now));
                }
                FinishOutcome::Retry { retry_at, error } => {
                    end_attempt(s, now, AttemptOutcome::Failed, Some(error));
                    s.status = JobStatus::Retryable;
                    s.run_at = retry_at;
                }
                FinishOutcome::Snoozed { run_at } => {
                    end_attempt(s, now, AttemptOutcome::Snoozed, None);
                    s.status = JobStatus::Scheduled;
                    s.run_at = run_at;
                    s.attempt = s.attempt.saturating_sub(1);
                }
                FinishOutcome::Failed { error } => {
                    end_attempt(s, now, AttemptOutcome::Failed, Some(error));
                    s.status = JobStatus::Failed;
                    s.set_finished_at(Some(now));
                }
            });
            accepted.push(true);
        }
        Ok(accepted)
    }

    async fn job_progress_set(&self, params: JobProgressSetParams) -> Result<bool> {
        let mut inner = self.open()?;
        if !inner.held(params.id, params.lease) {
            return Ok(false);
        }
        inner.update(params.id, |s| {
            if let Some((progress, message)) = params.progress {
                let x = s.extra_mut();
                x.progress = Some(progress);
                x.progress_message = message;
            }
            if let Some(state) = params.state {
                s.extra_mut().state = Some(state);
            }
        });
        Ok(true)
    }

    async fn job_release(&self, params: JobReleaseParams) -> Result<u64> {
        let mut inner = self.open()?;
        let now = params.now;
        let mut released = 0;
        for (id, lease) in params.leases {
            if !inner.held(id, lease) {
                continue;
            }
            inner.update(id, |s| {
                if s.cancel_requested_at().is_some() {
                    end_attempt(s, now, AttemptOutcome::Cancelled, None);
                    s.status = JobStatus::Cancelled;
                    s.set_finished_at(Some(now));
                } else {
                    end_attempt(s, now, AttemptOutcome::Released, None);
                    s.status = JobStatus::Available;
                    s.run_at = now;
                    s.attempt = s.attempt.saturating_sub(1);
                }
            });
            released += 1;
        }
        Ok(released)
    }

    async fn job_reclaim_expired(&self, params: JobReclaimParams) -> Result<u64> {
        let mut inner = self.open()?;
        let now = params.now;
        // Leases that ended strictly before `now`.
        let expired: Vec<JobId> = inner
            .idx
            .running
            .range(..(now, MIN_ID))
            .map(|&(_, id)| id)
            .collect();
        let mut reclaimed = 0;
        for id in expired {
            let done = inner.update(id, |s| {
                let worker = s.claim.as_ref().map_or("", |c| c.worker.as_str());
                let error = ErrorInfo::engine(
                    "LeaseExpired",
                    format!("lease expired: worker {worker} stopped heartbeating"),
                );
                end_attempt(s, now, AttemptOutcome::LeaseExpired, Some(error));
                if s.cancel_requested_at().is_some() {
                    s.status = JobStatus::Cancelled;
                    s.set_finished_at(Some(now));
                } else if s.spec.retry.max_retries.allows_another(s.attempt) {
                    s.status = JobStatus::Available;
                    s.run_at = now;
                } else {
                    s.status = JobStatus::Failed;
                    s.set_finished_at(Some(now));
                }
            });
            reclaimed += u64::from(done.is_some());
        }
        Ok(reclaimed)
    }

    async fn job_get(&self, id: JobId) -> Result<Option<JobRecord>> {
        let inner = self.open()?;
        Ok(inner.jobs.get(&id).map(|s| s.record(id)))
    }

    async fn job_list(&self, params: JobListParams) -> Result<Vec<JobRecord>> {
        let inner = self.open()?;
        let limit = usize::try_from(params.limit).unwrap_or(usize::MAX);
        Ok(inner
            .matching(&params.filter, params.cursor)
            .take(limit)
            .map(|(id, s)| s.record(id))
            .collect())
    }

    async fn job_count(&self, params: JobCountParams) -> Result<u64> {
        let inner = self.open()?;
        let f = &params.filter;
        let by_counts = f.ids.is_none()
            && f.group.is_none()
            && f.name.is_none()
            && f.created_from.is_none()
            && f.created_to.is_none()
            && f.args_contains.is_none();
        if !by_counts {
            return Ok(inner.matching(f, None).count() as u64);
        }
        // Only queue and status: the running counts answer without reading jobs.
        let mut total = 0;
        for (queue, counts) in &inner.idx.counts {
            if f.queue.as_ref().is_some_and(|q| q != queue) {
                continue;
            }
            for status in JobStatus::ALL {
                if f.statuses.is_empty() || f.statuses.contains(&status) {
                    total += counts[status as usize];
                }
            }
        }
        Ok(total)
    }

    async fn job_cancel(&self, params: JobCancelParams) -> Result<JobCancelResult> {
        let mut inner = self.open()?;
        let now = params.now;
        let live = [
            JobStatus::Scheduled,
            JobStatus::Available,
            JobStatus::Retryable,
            JobStatus::Running,
        ];
        let mut result = JobCancelResult::default();
        for id in inner.matching_ids(&params.filter, &live) {
            inner.update(id, |s| {
                if s.status == JobStatus::Running {
                    s.extra_mut().cancel_requested_at.get_or_insert(now);
                    result.requested += 1;
                } else {
                    s.status = JobStatus::Cancelled;
                    s.set_finished_at(Some(now));
                    result.cancelled += 1;
                }
            });
        }
        Ok(result)
    }

    async fn job_retry(&self, params: JobRetryParams) -> Result<u64> {
        let mut inner = self.open()?;
        let now = params.now;
        let ids = inner.matching_ids(&params.filter, &[JobStatus::Failed, JobStatus::Cancelled]);
        let mut retried = 0;
        for &id in &ids {
            let taken = inner.jobs.get(&id).is_some_and(|s| {
                s.unique_key().is_some_and(|key| {
                    inner
                        .idx
                        .unique
                        .get(key)
                        .is_some_and(|&holder| holder != id)
                })
            });
            if taken {
                continue; // another live job holds the key: retrying would duplicate it
            }
            retried += 1;
            inner.update(id, |s| {
                s.push_attempt(Attempt {
                    attempt: s.attempt,
                    outcome: AttemptOutcome::Retried,
                    worker: None,
                    started_at: now,
                    finished_at: now,
                    error: None,
                });
                s.status = JobStatus::Available;
                s.attempt = 0;
                s.run_at = now;
                s.set_finished_at(None);
                if let Some(x) = &mut s.extra {
                    x.cancel_requested_at = None;
                }
            });
        }
        Ok(retried)
    }

    async fn job_delete(&self, params: JobDeleteParams) -> Result<u64> {
        let mut inner = self.open()?;
        let not_running: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|s| *s != JobStatus::Running)
            .collect();
        let ids = inner.matching_ids(&params.filter, &not_running);
        Ok(inner.delete_all(ids))
    }

    async fn job_prune(&self, params: JobPruneParams) -> Result<u64> {
        let mut inner = self.open()?;
        let limit = usize::try_from(params.limit).unwrap_or(usize::MAX);
        let ids: Vec<JobId> = inner
            .idx
            .finished
            .range(..(params.finished_before, MIN_ID))
            .map(|&(_, id)| id)
            .filter(|id| {
                inner
                    .jobs
                    .get(id)
                    .is_some_and(|s| s.status.is_final() && params.statuses.contains(&s.status))
            })
            .take(limit)
            .collect();
        Ok(inner.delete_all(ids))
    }

    async fn job_counts(&self) -> Result<Vec<QueueCount>> {
        let inner = self.open()?;
        let mut out = Vec::new();
        for (queue, counts) in &inner.idx.counts {
            for status in JobStatus::ALL {
                let count = counts[status as usize];
                if count > 0 {
                    out.push(QueueCount {
                        queue: queue.clone(),
                        status,
                        count,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn job_next_run_at(&self, params: JobNextRunAtParams) -> Result<Option<Timestamp>> {
        let inner = self.open()?;
        Ok(Inner::lane_keys(&params.queues, &params.names)
            .into_iter()
            .filter_map(|(q, n)| inner.lane(q, n))
            .filter_map(Lane::next_run_at)
            .min())
    }

    async fn schedule_upsert(&self, params: ScheduleUpsertParams) -> Result<ScheduleRecord> {
        let mut inner = self.open()?;
        let new = params.schedule;
        let record = match inner.schedules.remove(&new.name) {
            Some(old) => ScheduleRecord {
                next_run_at: if old.spec == new.spec {
                    old.next_run_at
                } else {
                    params.next_run_at
                },
                spec: new.spec,
                catch_up: new.catch_up,
                job: new.job,
                updated_at: params.now,
                ..old
            },
            None => ScheduleRecord {
                name: new.name,
                spec: new.spec,
                catch_up: new.catch_up,
                job: new.job,
                next_run_at: params.next_run_at,
                last_enqueued_at: None,
                created_at: params.now,
                updated_at: params.now,
            },
        };
        inner.schedules.insert(record.name.clone(), record.clone());
        Ok(record)
    }

    async fn schedule_tick(&self, params: ScheduleTickParams) -> Result<bool> {
        let mut inner = self.open()?;
        match inner.schedules.get(&params.name) {
            Some(s) if s.next_run_at == params.due => {}
            _ => return Ok(false),
        }
        let enqueued = params.job.is_some();
        if let Some(job) = params.job {
            inner.insert_jobs(vec![job], params.now)?;
        }
        if let Some(s) = inner.schedules.get_mut(&params.name) {
            s.next_run_at = params.next_run_at;
            if enqueued {
                s.last_enqueued_at = Some(params.now);
            }
        }
        Ok(true)
    }

    async fn schedule_run_now(&self, params: ScheduleRunNowParams) -> Result<Option<JobId>> {
        let mut inner = self.open()?;
        let Some(s) = inner.schedules.get_mut(&params.name) else {
            return Ok(None);
        };
        s.last_enqueued_at = Some(params.now);
        let job = s.job.to_job();
        let inserted = inner.insert_jobs(vec![job], params.now)?;
        Ok(inserted.first().map(|j| j.id))
    }

    async fn schedule_delete(&self, name: &str) -> Result<bool> {
        Ok(self.open()?.schedules.remove(name).is_some())
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.open()?.schedules.values().cloned().collect())
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    async fn close(&self) -> Result<()> {
        let mut inner = self.lock()?;
        if !inner.closed {
            // Free the jobs now: nothing can read them any more.
            *inner = Inner {
                closed: true,
                ..Inner::default()
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Backoff;
    use crate::storage::conformance::{new_job, T0};
    use crate::storage::{JobFinish, JobNextRunAtParams};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_micros(T0.as_micros() + secs * 1_000_000)
    }

    async fn insert(s: &MemoryStorage, jobs: Vec<NewJob>, now: Timestamp) {
        s.job_insert_many(JobInsertManyParams { jobs, now })
            .await
            .expect("insert failed");
    }

    async fn claim(s: &MemoryStorage, limit: u32, worker: &str, now: Timestamp) -> Vec<ClaimedJob> {
        s.job_claim(JobClaimParams {
            queues: vec!["q".into()],
            names: vec!["a".into()],
            limit,
            worker_id: worker.into(),
            now,
        })
        .await
        .expect("claim failed")
    }

    async fn next_run_at(s: &MemoryStorage) -> Option<Timestamp> {
        s.job_next_run_at(JobNextRunAtParams {
            queues: vec!["q".into()],
            names: vec!["a".into()],
        })
        .await
        .expect("next_run_at failed")
    }

    #[test]
    fn a_stored_job_stays_small() {
        // What 100,000 queued jobs cost (issue 4: under 100 MB of RSS) rests on these.
        assert!(size_of::<Stored>() <= 96, "{}", size_of::<Stored>());
        assert!(size_of::<Attempt>() <= 40, "{}", size_of::<Attempt>());
    }

    /// A lane's ready jobs are ordered by priority first, so its earliest run time is not
    /// necessarily its first entry's: every priority counts.
    #[tokio::test]
    async fn next_run_at_reads_every_priority_of_the_ready_jobs() {
        let s = MemoryStorage::new();
        let mk = |priority, secs| NewJob {
            priority,
            run_at: Some(at(secs)),
            ..new_job("a", "q")
        };
        let jobs = vec![
            mk(10, -1),
            mk(5, -30),
            mk(0, -50),
            mk(i32::MIN, -70),
            mk(0, 100),
        ];
        insert(&s, jobs, at(-100)).await;
        assert_eq!(next_run_at(&s).await, Some(at(-70)), "before any claim");
        // Makes the four due jobs ready and takes the first (priority 10).
        assert_eq!(claim(&s, 1, "w", at(0)).await.len(), 1);
        assert_eq!(next_run_at(&s).await, Some(at(-70)), "the lowest priority");
        assert_eq!(claim(&s, 3, "w", at(0)).await.len(), 3);
        assert_eq!(next_run_at(&s).await, Some(at(100)), "only the later job");
    }

    /// Claims pick in claim order whether the due jobs reach the ready set all at once (a
    /// set built in one go), a few at a time next to many waiting, or directly on insert.
    #[tokio::test]
    async fn claims_follow_claim_order_however_jobs_become_ready() {
        let s = MemoryStorage::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut pending: Vec<ReadyKey> = Vec::new();
        let batch = |rand: &mut dyn FnMut(u64) -> u64, n, from: i64, span: u64| {
            let jobs: Vec<NewJob> = (0..n)
                .map(|_| NewJob {
                    priority: rand(4) as i32,
                    run_at: Some(at(from + rand(span) as i64)),
                    ..new_job("a", "q")
                })
                .collect();
            let keys: Vec<ReadyKey> = jobs
                .iter()
                .map(|j| (Reverse(j.priority), j.run_at.unwrap_or(T0), j.id))
                .collect();
            (jobs, keys)
        };
        let (jobs, keys) = batch(&mut rand, 600, 0, 300);
        pending.extend(keys);
        insert(&s, jobs, at(-1)).await;
        let mut now = -1;
        let mut claims = 0;
        while !pending.is_empty() {
            now += rand(40) as i64;
            if rand(3) == 0 {
                // Some due at once (straight into the ready set), some later.
                let (jobs, keys) = batch(&mut rand, 5, now - 20, 80);
                pending.extend(keys);
                insert(&s, jobs, at(now)).await;
            }
            let limit = 1 + rand(12) as u32;
            let got: Vec<JobId> = claim(&s, limit, "w", at(now))
                .await
                .iter()
                .map(|c| c.id)
                .collect();
            let mut due: Vec<ReadyKey> =
                pending.iter().filter(|k| k.1 <= at(now)).copied().collect();
            due.sort();
            let expected: Vec<JobId> = due.iter().take(limit as usize).map(|k| k.2).collect();
            assert_eq!(got, expected, "claim {claims} at {now} s");
            pending.retain(|k| !expected.contains(&k.2));
            claims += 1;
        }
    }

    /// Jobs of one name and queue share what they have in common, never what differs.
    #[tokio::test]
    async fn jobs_keep_their_own_settings() {
        let s = MemoryStorage::new();
        let base = new_job("a", "q");
        let jitter = |jitter| RetryPolicy {
            max_retries: MaxRetries::Count(5),
            backoff: Backoff {
                jitter,
                ..Backoff::new(BackoffKind::Exponential(2.0))
            },
        };
        let variants = vec![
            base.clone(),
            NewJob {
                ..new_job("a", "q")
            },
            NewJob {
                priority: 3,
                ..new_job("a", "q")
            },
            NewJob {
                retry: RetryPolicy {
                    max_retries: MaxRetries::Infinite,
                    ..base.retry
                },
                ..new_job("a", "q")
            },
            NewJob {
                retry: jitter(0.0),
                ..new_job("a", "q")
            },
            NewJob {
                retry: jitter(-0.0),
                ..new_job("a", "q")
            },
            NewJob {
                timeout_ms: Some(10),
                ..new_job("a", "q")
            },
            NewJob {
                heartbeat_ms: 7000,
                ..new_job("a", "q")
            },
            NewJob {
                version: 2,
                ..new_job("a", "q")
            },
            new_job("a", "r"),
            new_job("b", "q"),
        ];
        insert(&s, variants.clone(), at(0)).await;
        for job in &variants {
            let r = s.job_get(job.id).await.unwrap().expect("stored");
            assert_eq!(
                (r.name.as_str(), r.queue.as_str(), r.priority, r.retry),
                (
                    job.name.as_str(),
                    job.queue.as_str(),
                    job.priority,
                    job.retry
                )
            );
            assert_eq!(
                r.retry.backoff.jitter.to_bits(),
                job.retry.backoff.jitter.to_bits()
            );
            assert_eq!(
                (r.timeout_ms, r.heartbeat_ms, r.version),
                (job.timeout_ms, job.heartbeat_ms, job.version)
            );
        }
        let inner = s.lock().unwrap();
        // The first two and the one with jitter 0.0 (the default policy) are equal.
        assert_eq!(inner.shared.specs.len(), variants.len() - 2);
    }

    /// Specs and worker ids no job uses any more do not pile up.
    #[tokio::test]
    async fn unused_specs_and_worker_ids_are_dropped() {
        let s = MemoryStorage::new();
        for round in 0..3 {
            let jobs: Vec<NewJob> = (0..200)
                .map(|v| NewJob {
                    version: v + 1,
                    ..new_job("a", "q")
                })
                .collect();
            insert(&s, jobs, at(0)).await;
            let mut finishes = Vec::new();
            for w in 0..200 {
                let worker = format!("w{round}-{w}");
                for c in claim(&s, 1, &worker, at(0)).await {
                    let r = s.job_get(c.id).await.unwrap().expect("stored");
                    assert_eq!((r.worker_id, r.version), (Some(worker.clone()), c.version));
                    finishes.push(JobFinish {
                        id: c.id,
                        lease: c.lease,
                        outcome: FinishOutcome::Completed,
                    });
                }
            }
            let ids: Vec<JobId> = finishes.iter().map(|f| f.id).collect();
            let ok = s
                .job_finish_many(JobFinishManyParams {
                    finishes,
                    now: at(1),
                })
                .await
                .unwrap();
            assert!(ok.iter().all(|&ok| ok));
            for (i, id) in ids.iter().enumerate() {
                let r = s.job_get(*id).await.unwrap().expect("stored");
                assert_eq!(r.history.len(), 1);
                assert_eq!(r.history[0].worker_id, format!("w{round}-{i}"));
                assert_eq!(r.worker_id, None);
            }
            let deleted = s
                .job_delete(JobDeleteParams {
                    filter: JobFilter::default(),
                })
                .await
                .unwrap();
            assert_eq!(deleted, 200);
        }
        let inner = s.lock().unwrap();
        // Without sweeping: 600 of each.
        assert!(
            inner.shared.specs.len() <= 256,
            "{}",
            inner.shared.specs.len()
        );
        assert!(
            inner.shared.workers.len() <= 256,
            "{}",
            inner.shared.workers.len()
        );
    }
}
