//! An in-process storage: jobs live in memory and vanish with the process.
//!
//! Everything sits behind one mutex that is never held across an `.await`; each method
//! takes it once, does its work and returns. Nothing scans all jobs on the hot path:
//!
//! - pending jobs are indexed per queue and name in a *lane*: one set ordered by
//!   `run_at` (for scheduling and [`Storage::job_next_run_at`]) and one ordered the way
//!   claims pick, `(priority DESC, run_at ASC, id ASC)`, holding the jobs whose `run_at`
//!   has come. A claim first moves the jobs that became due since the lane's last claim
//!   into the ready set, then merges the first entries of the lanes it asked for;
//! - running jobs are indexed by lease expiry, so reclaiming reads only expired leases;
//! - finished jobs are indexed by finish time, so pruning reads only the jobs it deletes;
//! - counts per queue and status are kept up to date on every transition;
//! - unique keys map to the job holding them (one in its unique states), and concurrency
//!   keys to how many of their jobs run, so inserts and claims check limits by lookup.
//!
//! Every change to a job goes through [`Inner::update`], which takes the job out of the
//! indexes, applies the change and puts it back, so the indexes cannot drift from the
//! records.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
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
use crate::schedule::ScheduleRecord;

/// The smallest and largest ids, to bound index ranges.
const MIN_ID: JobId = JobId(Uuid::nil());
const MAX_ID: JobId = JobId(Uuid::from_u128(u128::MAX));

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

/// A stored job and the token of its current claim.
#[derive(Debug)]
struct Entry {
    record: JobRecord,
    /// Set while the job is running.
    lease: Option<LeaseToken>,
}

/// The claim order: priority DESC, run_at ASC, id ASC.
type ReadyKey = (Reverse<i32>, Timestamp, JobId);

/// The pending jobs of one queue and name.
#[derive(Debug)]
struct Lane {
    /// Every pending job, by run time (with its priority, to build its claim key).
    by_run_at: BTreeSet<(Timestamp, JobId, i32)>,
    /// The pending jobs with `run_at <= promoted_until`, in claim order.
    ready: BTreeSet<ReadyKey>,
    /// Every pending job due by this time is in `ready`.
    promoted_until: Timestamp,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            by_run_at: BTreeSet::new(),
            ready: BTreeSet::new(),
            promoted_until: Timestamp::from_micros(i64::MIN),
        }
    }
}

impl Lane {
    fn insert(&mut self, r: &JobRecord) {
        self.by_run_at.insert((r.run_at, r.id, r.priority));
        if r.run_at <= self.promoted_until {
            self.ready.insert((Reverse(r.priority), r.run_at, r.id));
        }
    }

    fn remove(&mut self, r: &JobRecord) {
        self.by_run_at.remove(&(r.run_at, r.id, r.priority));
        self.ready.remove(&(Reverse(r.priority), r.run_at, r.id));
    }

    /// Move the jobs due by `now` into `ready`. Only jobs that became due since the last
    /// promotion are read, so with a clock that moves forward this costs nothing when
    /// nothing new is due.
    fn promote(&mut self, now: Timestamp) {
        if now <= self.promoted_until {
            return;
        }
        let after = (self.promoted_until, MAX_ID, i32::MAX);
        let range = (
            Bound::Excluded(after),
            Bound::Included((now, MAX_ID, i32::MAX)),
        );
        for &(run_at, id, priority) in self.by_run_at.range(range) {
            self.ready.insert((Reverse(priority), run_at, id));
        }
        self.promoted_until = now;
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

/// Whether `r` holds its unique key: it has one and its status is one of its unique states.
fn holds_unique(r: &JobRecord) -> Option<&str> {
    r.unique_key
        .as_deref()
        .filter(|_| r.limits.unique_states.contains(&r.status))
}

impl Indexes {
    fn insert(&mut self, r: &JobRecord) {
        if r.status.is_pending() {
            let names = match self.lanes.get_mut(r.queue.as_str()) {
                Some(names) => names,
                None => self.lanes.entry(r.queue.clone()).or_default(),
            };
            let lane = match names.get_mut(r.name.as_str()) {
                Some(lane) => lane,
                None => names.entry(r.name.clone()).or_default(),
            };
            lane.insert(r);
        } else if r.status == JobStatus::Running {
            if let Some(expires) = r.lease_expires_at {
                self.running.insert((expires, r.id));
            }
        } else if let Some(finished) = r.finished_at {
            self.finished.insert((finished, r.id));
        }
        let counts = match self.counts.get_mut(r.queue.as_str()) {
            Some(c) => c,
            None => self.counts.entry(r.queue.clone()).or_default(),
        };
        counts[r.status as usize] += 1;
        if let Some(key) = holds_unique(r) {
            self.unique.insert(key.to_owned(), r.id);
        }
        if let (JobStatus::Running, Some(c)) = (r.status, &r.limits.concurrency) {
            *self.running_keys.entry(c.key.clone()).or_default() += 1;
        }
        if let Some(g) = r.group_id {
            self.groups.entry(g).or_default().0[r.status as usize] += 1;
        }
    }

    fn remove(&mut self, r: &JobRecord) {
        if r.status.is_pending() {
            if let Some(lane) = self
                .lanes
                .get_mut(r.queue.as_str())
                .and_then(|n| n.get_mut(r.name.as_str()))
            {
                lane.remove(r);
            }
        } else if r.status == JobStatus::Running {
            if let Some(expires) = r.lease_expires_at {
                self.running.remove(&(expires, r.id));
            }
        } else if let Some(finished) = r.finished_at {
            self.finished.remove(&(finished, r.id));
        }
        if let Some(counts) = self.counts.get_mut(r.queue.as_str()) {
            counts[r.status as usize] = counts[r.status as usize].saturating_sub(1);
        }
        if let Some(key) = holds_unique(r) {
            if self.unique.get(key) == Some(&r.id) {
                self.unique.remove(key);
            }
        }
        if let (JobStatus::Running, Some(c)) = (r.status, &r.limits.concurrency) {
            if let Some(n) = self.running_keys.get_mut(&c.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.running_keys.remove(&c.key);
                }
            }
        }
        if let Some(tally) = r.group_id.and_then(|g| self.groups.get_mut(&g)) {
            let n = &mut tally.0[r.status as usize];
            *n = n.saturating_sub(1);
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    /// Every job, by id (so by creation time: ids are UUID v7).
    jobs: BTreeMap<JobId, Entry>,
    idx: Indexes,
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
            let record = JobRecord {
                id: job.id,
                name: job.name,
                queue: job.queue,
                args: job.args,
                status: if run_at > now {
                    JobStatus::Scheduled
                } else {
                    JobStatus::Available
                },
                attempt: 0,
                retry: job.retry,
                priority: job.priority,
                timeout_ms: job.timeout_ms,
                heartbeat_ms: job.heartbeat_ms,
                version: job.version,
                unique_key: job.unique_key,
                limits: job.limits,
                created_at: now,
                run_at,
                started_at: None,
                finished_at: None,
                worker_id: None,
                lease_expires_at: None,
                cancel_requested_at: None,
                last_error: None,
                history: Vec::new(),
                progress: None,
                progress_message: None,
                state: None,
                group_id: group,
            };
            inner.idx.insert(&record);
            inner.jobs.insert(
                record.id,
                Entry {
                    record,
                    lease: None,
                },
            );
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
    fn update<T>(&mut self, id: JobId, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let entry = self.jobs.get_mut(&id)?;
        self.idx.remove(&entry.record);
        let out = f(entry);
        self.idx.insert(&entry.record);
        let r = &entry.record;
        if let Some(g) = r.group_id {
            let (is_final, finished_at) = (r.status.is_final(), r.finished_at);
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
        self.jobs
            .get(&id)
            .is_some_and(|e| e.record.status == JobStatus::Running && e.lease == Some(lease))
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

    /// The records matching `filter`, newest first, older than `cursor`. A filter by ids
    /// reads only those ids; any other filter reads every job.
    fn matching<'a>(
        &'a self,
        filter: &'a JobFilter,
        cursor: Option<JobId>,
    ) -> Box<dyn Iterator<Item = &'a JobRecord> + 'a> {
        let older = move |id: &JobId| cursor.map_or(true, |c| *id < c);
        match &filter.ids {
            Some(ids) => {
                let ids: BTreeSet<JobId> = ids.iter().copied().filter(older).collect();
                Box::new(
                    ids.into_iter()
                        .rev()
                        .filter_map(|id| self.jobs.get(&id))
                        .map(|e| &e.record)
                        .filter(|r| filter.matches(r)),
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
                        .map(|(_, e)| &e.record)
                        .filter(|r| filter.matches(r)),
                )
            }
        }
    }

    /// The ids of the jobs matching `filter` whose status is one of `statuses`.
    fn matching_ids(&self, filter: &JobFilter, statuses: &[JobStatus]) -> Vec<JobId> {
        self.matching(filter, None)
            .filter(|r| statuses.contains(&r.status))
            .map(|r| r.id)
            .collect()
    }

    /// Take jobs out of the storage, and the groups they leave empty; how many were taken.
    fn delete_all(&mut self, ids: Vec<JobId>) -> u64 {
        let mut groups = HashSet::new();
        let mut n = 0;
        for id in ids {
            if let Some(entry) = self.jobs.remove(&id) {
                self.idx.remove(&entry.record);
                groups.extend(entry.record.group_id);
                n += 1;
            }
        }
        self.drop_empty_groups(groups);
        n
    }
}

/// Clear the claim of a job leaving `running`, recording the attempt in its history.
fn end_attempt(e: &mut Entry, now: Timestamp, outcome: AttemptOutcome, error: Option<ErrorInfo>) {
    let r = &mut e.record;
    r.history.push(AttemptRecord {
        attempt: r.attempt,
        worker_id: r.worker_id.take().unwrap_or_default(),
        started_at: r.started_at.unwrap_or(now),
        finished_at: now,
        outcome,
        error: error.clone(),
    });
    if error.is_some() {
        r.last_error = error;
    }
    r.lease_expires_at = None;
    e.lease = None;
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
                    Some(e) if e.record.limits.is_limited() => {
                        room.take(inner, &e.record.limits, now)
                    }
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
        for id in picked {
            let rate = inner
                .jobs
                .get(&id)
                .and_then(|e| e.record.limits.rate.clone());
            if let Some(r) = rate {
                inner.record_start(&r.key, r.window_ms, now);
            }
            let lease = LeaseToken::new();
            let job = inner.update(id, |e| {
                let r = &mut e.record;
                r.status = JobStatus::Running;
                r.attempt = r.attempt.saturating_add(1);
                r.started_at = Some(now);
                r.worker_id = Some(params.worker_id.clone());
                r.lease_expires_at = Some(now.plus(lease_duration(r.heartbeat_ms)));
                e.lease = Some(lease);
                ClaimedJob {
                    id: r.id,
                    name: r.name.clone(),
                    queue: r.queue.clone(),
                    args: r.args.clone(),
                    attempt: r.attempt,
                    retry: r.retry,
                    timeout_ms: r.timeout_ms,
                    heartbeat_ms: r.heartbeat_ms,
                    version: r.version,
                    started_at: now,
                    lease,
                    state: r.state.clone(),
                }
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
            let cancel = inner.update(id, |e| {
                let hb = e.record.heartbeat_ms;
                e.record.lease_expires_at = Some(params.now.plus(lease_duration(hb)));
                e.record.cancel_requested_at.is_some()
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
            inner.update(finish.id, |e| match finish.outcome {
                _ if e.record.cancel_requested_at.is_some() => {
                    let error = match finish.outcome {
                        FinishOutcome::Completed | FinishOutcome::Snoozed { .. } => None,
                        FinishOutcome::Retry { error, .. } | FinishOutcome::Failed { error } => {
                            Some(error)
                        }
                    };
                    end_attempt(e, now, AttemptOutcome::Cancelled, error);
                    e.record.status = JobStatus::Cancelled;
                    e.record.finished_at = Some(now);
                }
                FinishOutcome::Completed => {
                    end_attempt(e, now, AttemptOutcome::Completed, None);
                    e.record.status = JobStatus::Completed;
                    e.record.finished_at = Some(now);
                }
                FinishOutcome::Retry { retry_at, error } => {
                    end_attempt(e, now, AttemptOutcome::Failed, Some(error));
                    e.record.status = JobStatus::Retryable;
                    e.record.run_at = retry_at;
                }
                FinishOutcome::Snoozed { run_at } => {
                    end_attempt(e, now, AttemptOutcome::Snoozed, None);
                    e.record.status = JobStatus::Scheduled;
                    e.record.run_at = run_at;
                    e.record.attempt = e.record.attempt.saturating_sub(1);
                }
                FinishOutcome::Failed { error } => {
                    end_attempt(e, now, AttemptOutcome::Failed, Some(error));
                    e.record.status = JobStatus::Failed;
                    e.record.finished_at = Some(now);
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
        inner.update(params.id, |e| {
            if let Some((progress, message)) = params.progress {
                e.record.progress = Some(progress);
                e.record.progress_message = message;
            }
            if let Some(state) = params.state {
                e.record.state = Some(state);
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
            inner.update(id, |e| {
                if e.record.cancel_requested_at.is_some() {
                    end_attempt(e, now, AttemptOutcome::Cancelled, None);
                    e.record.status = JobStatus::Cancelled;
                    e.record.finished_at = Some(now);
                } else {
                    end_attempt(e, now, AttemptOutcome::Released, None);
                    e.record.status = JobStatus::Available;
                    e.record.run_at = now;
                    e.record.attempt = e.record.attempt.saturating_sub(1);
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
            let done = inner.update(id, |e| {
                let worker = e.record.worker_id.clone().unwrap_or_default();
                let error = ErrorInfo::engine(
                    "LeaseExpired",
                    format!("lease expired: worker {worker} stopped heartbeating"),
                );
                end_attempt(e, now, AttemptOutcome::LeaseExpired, Some(error));
                let r = &mut e.record;
                if r.cancel_requested_at.is_some() {
                    r.status = JobStatus::Cancelled;
                    r.finished_at = Some(now);
                } else if r.retry.max_retries.allows_another(r.attempt) {
                    r.status = JobStatus::Available;
                    r.run_at = now;
                } else {
                    r.status = JobStatus::Failed;
                    r.finished_at = Some(now);
                }
            });
            reclaimed += u64::from(done.is_some());
        }
        Ok(reclaimed)
    }

    async fn job_get(&self, id: JobId) -> Result<Option<JobRecord>> {
        let inner = self.open()?;
        Ok(inner.jobs.get(&id).map(|e| e.record.clone()))
    }

    async fn job_list(&self, params: JobListParams) -> Result<Vec<JobRecord>> {
        let inner = self.open()?;
        let limit = usize::try_from(params.limit).unwrap_or(usize::MAX);
        Ok(inner
            .matching(&params.filter, params.cursor)
            .take(limit)
            .cloned()
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
            inner.update(id, |e| {
                let r = &mut e.record;
                if r.status == JobStatus::Running {
                    r.cancel_requested_at.get_or_insert(now);
                    result.requested += 1;
                } else {
                    r.status = JobStatus::Cancelled;
                    r.finished_at = Some(now);
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
            let taken = inner.jobs.get(&id).is_some_and(|e| {
                e.record.unique_key.as_ref().is_some_and(|key| {
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
            inner.update(id, |e| {
                let r = &mut e.record;
                r.history.push(AttemptRecord {
                    attempt: r.attempt,
                    worker_id: String::new(),
                    started_at: now,
                    finished_at: now,
                    outcome: AttemptOutcome::Retried,
                    error: None,
                });
                r.status = JobStatus::Available;
                r.attempt = 0;
                r.run_at = now;
                r.finished_at = None;
                r.cancel_requested_at = None;
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
                inner.jobs.get(id).is_some_and(|e| {
                    e.record.status.is_final() && params.statuses.contains(&e.record.status)
                })
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
            .filter_map(|lane| lane.by_run_at.first().map(|&(t, _, _)| t))
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
