//! The `Storage` trait: what the engine needs from a place that keeps jobs.
//!
//! Methods are named noun-first and take one params struct each, so adding a field never
//! breaks a call site. Every method that changes a running job is *fenced* by the claim's
//! [`LeaseToken`]: it applies only while the job is still running under that token.
//!
//! Pending statuses (`scheduled`, `available`, `retryable`) are all claimable once their
//! `run_at` has come; the status records why the job is waiting.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::Result;
use crate::group::{GroupRecord, NewGroup};
use crate::model::{
    ClaimedJob, ErrorInfo, GroupId, InsertedJob, JobId, JobRecord, JobStatus, LeaseToken, NewJob,
    QueueCount, Timestamp,
};
use crate::schedule::{NewSchedule, ScheduleRecord};

pub mod memory;
pub mod postgres;
pub mod sqlite;
mod sqlite_checkpoint;
mod sqlite_watch;

#[doc(hidden)]
pub mod conformance;

pub use memory::MemoryStorage;
pub use postgres::{PostgresOptions, PostgresStorage};
pub use sqlite::{SqliteOptions, SqliteStorage, Synchronous};

/// What was wrong with the columns of one stored row, each replaced by a stand-in value
/// (so an admin listing still shows the job): `last_error` then says what is damaged.
#[derive(Default)]
pub(crate) struct Damage(Vec<String>);

impl Damage {
    /// Note a damaged column.
    pub(crate) fn note(&mut self, what: String) {
        self.0.push(what);
    }

    /// `value`, or `stand_in` with the error noted.
    pub(crate) fn or<T>(&mut self, value: Result<T>, stand_in: T) -> T {
        value.unwrap_or_else(|e| {
            self.note(match e {
                crate::Error::Storage(m) => m,
                other => other.to_string(),
            });
            stand_in
        })
    }

    /// `record`, its `last_error` saying what is damaged if anything is.
    pub(crate) fn mark(self, mut record: JobRecord) -> JobRecord {
        if !self.0.is_empty() {
            record.last_error = Some(ErrorInfo::engine("CorruptJob", self.0.join("; ")));
        }
        record
    }
}

/// A lease lasts this many heartbeat intervals: a job whose worker misses this many
/// heartbeats in a row may be reclaimed.
pub const LEASE_HEARTBEATS: u64 = 3;

/// The lease length for a job with heartbeat interval `heartbeat_ms`.
pub fn lease_duration(heartbeat_ms: u64) -> Duration {
    Duration::from_millis(heartbeat_ms.saturating_mul(LEASE_HEARTBEATS))
}

/// Store jobs.
#[derive(Debug, Clone)]
pub struct JobInsertManyParams {
    /// The jobs, stored all or none (one transaction).
    pub jobs: Vec<NewJob>,
    /// The time of storing: `created_at`, and the run time of jobs with none. A job whose
    /// `run_at` is later than this is stored `scheduled`, otherwise `available`.
    pub now: Timestamp,
}

/// Store a group and its members.
#[derive(Debug, Clone)]
pub struct GroupInsertParams {
    /// The group.
    pub group: NewGroup,
    /// Its members (at least one), stored as members of `group` whatever else they are.
    pub jobs: Vec<NewJob>,
    /// As for [`JobInsertManyParams::now`]; also the group's `created_at`.
    pub now: Timestamp,
}

/// Claim jobs that are ready to run.
#[derive(Debug, Clone)]
pub struct JobClaimParams {
    /// Only jobs on these queues.
    pub queues: Vec<String>,
    /// Only jobs with these names (the kinds the worker has registered). Never empty.
    pub names: Vec<String>,
    /// At most this many jobs.
    pub limit: u32,
    /// Recorded as the lease holder.
    pub worker_id: String,
    /// Claim jobs whose `run_at <= now`; the lease of each claimed job lasts until
    /// `now + lease_duration(job.heartbeat_ms)`.
    pub now: Timestamp,
}

/// Extend the leases of running jobs.
#[derive(Debug, Clone)]
pub struct JobHeartbeatParams {
    /// The jobs and the tokens their claims returned.
    pub leases: Vec<(JobId, LeaseToken)>,
    /// Each lease is extended to `now + lease_duration(job.heartbeat_ms)`.
    pub now: Timestamp,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobHeartbeatResult {
    /// The jobs whose lease was extended, in the order asked. A job missing here is no
    /// longer held under that token and its runner should give it up.
    pub extended: Vec<JobId>,
    /// Of `extended`, the jobs whose cancel was requested: their runner should stop them.
    pub cancel_requested: Vec<JobId>,
}

/// How an attempt ended, as the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishOutcome {
    /// Success: the job becomes `completed`.
    Completed,
    /// Failure with retries left: the job becomes `retryable`, runnable at `retry_at`.
    Retry {
        /// When to run again.
        retry_at: Timestamp,
        /// What went wrong.
        error: ErrorInfo,
    },
    /// Failure with no retry: the job becomes `failed`.
    Failed {
        /// What went wrong.
        error: ErrorInfo,
    },
    /// The job asked to run again later: it becomes `scheduled` at `run_at`, and the
    /// attempt is not counted (history: `snoozed`).
    Snoozed {
        /// When to run again.
        run_at: Timestamp,
    },
}

/// One attempt's end, to record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFinish {
    /// The job.
    pub id: JobId,
    /// The claim's token; the finish is refused unless the job still runs under it.
    pub lease: LeaseToken,
    /// What happened.
    pub outcome: FinishOutcome,
}

/// Record the ends of attempts.
#[derive(Debug, Clone)]
pub struct JobFinishManyParams {
    /// The attempts (one transaction).
    pub finishes: Vec<JobFinish>,
    /// The time the attempts ended.
    pub now: Timestamp,
}

/// Record the ends of attempts, then claim jobs: see [`Storage::job_finish_claim`].
#[derive(Debug, Clone)]
pub struct JobFinishClaimParams {
    /// The attempts to record first.
    pub finish: JobFinishManyParams,
    /// The claim to make after them.
    pub claim: JobClaimParams,
}

/// What [`Storage::job_finish_claim`] did.
#[derive(Debug)]
pub struct JobFinishClaimResult {
    /// For each finish, in order, whether it was accepted (as [`Storage::job_finish_many`]
    /// answers).
    pub accepted: Vec<bool>,
    /// The jobs claimed (as [`Storage::job_claim`] answers), or why the claim failed after
    /// the finishes were recorded.
    pub claimed: Result<Vec<ClaimedJob>>,
}

/// Parameters of [`Storage::job_progress_set`].
#[derive(Debug, Clone)]
pub struct JobProgressSetParams {
    /// The job.
    pub id: JobId,
    /// The lease it runs under; the write is refused unless the job still runs under it.
    pub lease: LeaseToken,
    /// New progress (0 to 100) and message; `None` leaves both as they are.
    pub progress: Option<(u8, Option<String>)>,
    /// New state (a JSON object, as text); `None` leaves it as it is.
    pub state: Option<String>,
    /// The current time.
    pub now: Timestamp,
}

/// Hand running jobs back without counting the attempt (a worker shutting down).
#[derive(Debug, Clone)]
pub struct JobReleaseParams {
    /// The jobs and their claims' tokens.
    pub leases: Vec<(JobId, LeaseToken)>,
    /// They become `available` with `run_at = now`.
    pub now: Timestamp,
}

/// Take back running jobs whose lease expired (their worker died or stalled).
#[derive(Debug, Clone)]
pub struct JobReclaimParams {
    /// Jobs with `lease_expires_at < now` are reclaimed.
    pub now: Timestamp,
}

/// Which jobs a listing, a count or an admin operation applies to: every criterion given
/// must hold. The default (nothing given) matches every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only these ids (`None`: any id; an empty list matches nothing).
    pub ids: Option<Vec<JobId>>,
    /// Only these statuses (empty: any).
    pub statuses: Vec<JobStatus>,
    /// Only this name.
    pub name: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only jobs stored at or after this time (`created_at >= created_from`).
    pub created_from: Option<Timestamp>,
    /// Only jobs stored before this time (`created_at < created_to`).
    pub created_to: Option<Timestamp>,
    /// Only jobs whose arguments, as the stored JSON text, contain this substring
    /// (case-sensitive).
    pub args_contains: Option<String>,
    /// Only members of this group.
    pub group: Option<GroupId>,
}

impl JobFilter {
    /// Whether `job` meets every criterion (what each storage's SQL computes).
    pub fn matches(&self, job: &JobRecord) -> bool {
        self.ids.as_ref().map_or(true, |ids| ids.contains(&job.id))
            && (self.statuses.is_empty() || self.statuses.contains(&job.status))
            && self.name.as_ref().map_or(true, |n| *n == job.name)
            && self.queue.as_ref().map_or(true, |q| *q == job.queue)
            && self.created_from.map_or(true, |t| job.created_at >= t)
            && self.created_to.map_or(true, |t| job.created_at < t)
            && self
                .args_contains
                .as_ref()
                .map_or(true, |text| job.args.contains(text.as_str()))
            && self.group.map_or(true, |g| job.group_id == Some(g))
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobListParams {
    /// The jobs to list.
    pub filter: JobFilter,
    /// Newest first, starting strictly after (older than) this id.
    pub cursor: Option<JobId>,
    /// At most this many.
    pub limit: u32,
}

/// Which jobs to count.
#[derive(Debug, Clone, Default)]
pub struct JobCountParams {
    /// The jobs to count.
    pub filter: JobFilter,
}

/// Cancel jobs.
#[derive(Debug, Clone)]
pub struct JobCancelParams {
    /// The jobs to cancel; of those, only pending and running ones change.
    pub filter: JobFilter,
    /// The time of the cancel: `finished_at` of the jobs cancelled at once, and
    /// `cancel_requested_at` of running ones.
    pub now: Timestamp,
}

/// What a cancel changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCancelResult {
    /// Pending jobs (`scheduled`, `available`, `retryable`) that became `cancelled`.
    pub cancelled: u64,
    /// Running jobs now marked cancel-requested (including those already marked): each
    /// ends `cancelled` when its attempt ends, is released, or its lease expires.
    pub requested: u64,
}

/// Retry failed and cancelled jobs by hand.
#[derive(Debug, Clone)]
pub struct JobRetryParams {
    /// The jobs to retry; of those, only `failed` and `cancelled` ones change.
    pub filter: JobFilter,
    /// They become `available` with `run_at = now`.
    pub now: Timestamp,
}

/// Delete jobs and their history.
#[derive(Debug, Clone)]
pub struct JobDeleteParams {
    /// The jobs to delete; running ones are left alone (cancel them first).
    pub filter: JobFilter,
}

/// Delete finished jobs that ended long enough ago (retention).
#[derive(Debug, Clone)]
pub struct JobPruneParams {
    /// Only jobs in these statuses; statuses that are not final are ignored.
    pub statuses: Vec<JobStatus>,
    /// Only jobs with `finished_at < finished_before`.
    pub finished_before: Timestamp,
    /// At most this many per call (call again while a call deletes `limit`), so one call
    /// never holds the storage for long.
    pub limit: u32,
}

/// When the next pending job becomes runnable.
#[derive(Debug, Clone)]
pub struct JobNextRunAtParams {
    /// Only jobs on these queues.
    pub queues: Vec<String>,
    /// Only jobs with these names.
    pub names: Vec<String>,
}

/// Store a schedule entry, or update the stored one of the same name.
#[derive(Debug, Clone)]
pub struct ScheduleUpsertParams {
    /// The entry.
    pub schedule: NewSchedule,
    /// Its first tick: stored as `next_run_at` for a new entry, and for an existing one
    /// whose spec changed. An existing entry with the same spec keeps its `next_run_at`
    /// (so ticks missed while no worker ran are still due) and its `last_enqueued_at`.
    pub next_run_at: Timestamp,
    /// `created_at` of a new entry, `updated_at` of any.
    pub now: Timestamp,
}

/// Take one tick of a schedule entry.
#[derive(Debug, Clone)]
pub struct ScheduleTickParams {
    /// The entry.
    pub name: String,
    /// The tick being taken: the entry's stored `next_run_at` as the caller read it.
    pub due: Timestamp,
    /// The entry's next tick after this one.
    pub next_run_at: Timestamp,
    /// The job to store for the tick (`None`: the tick is skipped, not run).
    pub job: Option<NewJob>,
    /// The time of storing (the job's `created_at`; `last_enqueued_at` if a job is stored).
    pub now: Timestamp,
}

/// Enqueue a schedule entry's job at once, leaving its ticks alone.
#[derive(Debug, Clone)]
pub struct ScheduleRunNowParams {
    /// The entry.
    pub name: String,
    /// The time of storing.
    pub now: Timestamp,
}

/// A place that keeps jobs. Implementations: [`MemoryStorage`], [`SqliteStorage`],
/// [`PostgresStorage`].
///
/// Every method that can make a job final (finish, release, reclaim, cancel, and a claim
/// failing a corrupt row) also finishes the job's group, in the same transaction, when no
/// member of it is left open, storing the group's `on_complete` job the first time (see
/// [`crate::group`]).
///
/// All methods are safe to call concurrently, from one process or (for persistent
/// storages) from many. Every method returns [`crate::Error::StorageClosed`] after
/// [`Storage::close`].
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Store jobs, all or none. Returns once they are durable (for SQLite: committed),
    /// saying for each job, in order, whether it was stored or matched an existing job.
    ///
    /// A job with a `unique_key` is not stored while another job of that key is in one of
    /// *its own* unique states ([`crate::model::JobLimits::unique_states`]): the answer
    /// then names that job, with `duplicate: true`. This holds across processes (the
    /// storage enforces it with a unique index, never a read-then-write) and inside one
    /// batch (the second of two equal jobs matches the first). Unique states that leave
    /// out a status that is not final are refused with [`crate::Error::Config`].
    async fn job_insert_many(&self, params: JobInsertManyParams) -> Result<Vec<InsertedJob>>;

    /// Store a group and its members in one transaction (all or none); see
    /// [`crate::group`]. Each member of a group with a concurrency limit is stored with
    /// the group's concurrency key ([`NewGroup::prepare_members`]). Fails, storing
    /// nothing, if a member's id is taken, or with [`crate::Error::Config`] if
    /// [`NewGroup::prepare_members`] refuses the members.
    async fn group_insert(&self, params: GroupInsertParams) -> Result<()>;

    /// One group with its members' counts; `None` if there is no such group (never
    /// stored, or deleted with its last member).
    async fn group_get(&self, id: GroupId) -> Result<Option<GroupRecord>>;

    /// Claim up to `limit` runnable jobs, highest priority first, then earliest `run_at`,
    /// then oldest id. Each becomes `running` with `attempt + 1`, `started_at = now`, a
    /// fresh lease token and `worker_id`. A job is never handed to two claimers while its
    /// lease holds.
    ///
    /// Limits ([`crate::model::JobLimits`]) hold across every claimer: a job whose
    /// concurrency key already has `limit` jobs running, or whose rate key saw `limit`
    /// starts in the last `window_ms`, is passed over (it stays pending, no attempt
    /// counted) and the jobs behind it are claimed instead; one claim never takes more
    /// jobs of a key than the key has room for. Each start of a rate-limited job is
    /// recorded. A member of a group with a concurrency limit carries that limit as its
    /// concurrency key (see [`crate::group`]), so it is held back the same way.
    async fn job_claim(&self, params: JobClaimParams) -> Result<Vec<ClaimedJob>>;

    /// Extend leases, and say which of the jobs have a cancel requested.
    async fn job_heartbeat(&self, params: JobHeartbeatParams) -> Result<JobHeartbeatResult>;

    /// Record ended attempts, each appended to its job's history. Returns, in order,
    /// whether each was accepted (`false`: the lease was lost; nothing changed). A job
    /// whose cancel was requested becomes `cancelled` whatever the outcome, and its
    /// history entry says `cancelled` (with the attempt's error, if it had one).
    async fn job_finish_many(&self, params: JobFinishManyParams) -> Result<Vec<bool>>;

    /// [`Storage::job_finish_many`], then [`Storage::job_claim`], with the same meaning as
    /// the two calls one after the other: the claim sees what the finishes changed (a slot
    /// of a concurrency limit freed, a group's `on_complete` job stored), and a refused
    /// finish does not stop the claim. `Err`: no finish was recorded and nothing claimed.
    /// A claim that fails after the finishes were recorded is reported in
    /// [`JobFinishClaimResult::claimed`].
    ///
    /// The default makes the two calls. A storage that can do both in one write (one
    /// transaction) overrides it and says so in [`Storage::finish_claim_combined`].
    async fn job_finish_claim(&self, params: JobFinishClaimParams) -> Result<JobFinishClaimResult> {
        let accepted = self.job_finish_many(params.finish).await?;
        let claimed = self.job_claim(params.claim).await;
        Ok(JobFinishClaimResult { accepted, claimed })
    }

    /// Whether [`Storage::job_finish_claim`] costs less than its two calls (one write
    /// instead of two); worker pools then claim together with recording outcomes.
    fn finish_claim_combined(&self) -> bool {
        false
    }

    /// Save a running job's progress and/or state at once. Returns whether it was
    /// accepted (`false`: the job no longer runs under `lease`; nothing changed). State
    /// is kept across attempts and handed back by [`Storage::job_claim`].
    async fn job_progress_set(&self, params: JobProgressSetParams) -> Result<bool>;

    /// Hand running jobs back: `available` at once, attempt count restored, history gets
    /// a `released` entry. Returns how many were released (fenced like finish). A job
    /// whose cancel was requested becomes `cancelled` instead (history: `cancelled`).
    async fn job_release(&self, params: JobReleaseParams) -> Result<u64>;

    /// Reclaim running jobs whose lease expired: the attempt is recorded as
    /// `lease_expired`; the job becomes `available` at once if its retries allow another
    /// attempt, else `failed`, or `cancelled` if its cancel was requested. Returns how
    /// many were reclaimed.
    async fn job_reclaim_expired(&self, params: JobReclaimParams) -> Result<u64>;

    /// One job with its history.
    async fn job_get(&self, id: JobId) -> Result<Option<JobRecord>>;

    /// Jobs matching the filter, newest first.
    async fn job_list(&self, params: JobListParams) -> Result<Vec<JobRecord>>;

    /// How many jobs match the filter.
    async fn job_count(&self, params: JobCountParams) -> Result<u64>;

    /// Cancel the matching jobs in one transaction: pending ones become `cancelled` at
    /// once (`finished_at = now`; they never run), running ones get `cancel_requested_at`
    /// (kept if already set) and end `cancelled` (see [`Storage::job_finish_many`]).
    /// Finished jobs are left alone.
    async fn job_cancel(&self, params: JobCancelParams) -> Result<JobCancelResult>;

    /// Retry the matching `failed` and `cancelled` jobs in one transaction: each becomes
    /// `available` at `now` with its attempt count back to 0 and `finished_at` and
    /// `cancel_requested_at` cleared; its history is kept and gains a `retried` entry.
    /// Returns how many were retried. A unique job whose key another job holds (in that
    /// job's unique states) is left as it is and not counted: running it again would make
    /// a second live job of the key. Of two matching jobs of one key, only one is retried.
    /// The finished groups of retried jobs are reopened (`finished_at` cleared).
    async fn job_retry(&self, params: JobRetryParams) -> Result<u64>;

    /// Delete the matching jobs that are not running, with their history, in one
    /// transaction, and the groups left with no members. Returns how many jobs were
    /// deleted.
    async fn job_delete(&self, params: JobDeleteParams) -> Result<u64>;

    /// Delete up to `limit` finished jobs of the given statuses that finished before
    /// `finished_before`, with their history, and the groups left with no members. Returns
    /// how many jobs were deleted.
    async fn job_prune(&self, params: JobPruneParams) -> Result<u64>;

    /// Counts per queue and status (pairs with no jobs are left out).
    async fn job_counts(&self) -> Result<Vec<QueueCount>>;

    /// The earliest `run_at` among pending jobs of these queues and names (past or future).
    async fn job_next_run_at(&self, params: JobNextRunAtParams) -> Result<Option<Timestamp>>;

    /// Store a schedule entry or update the one with the same name (see
    /// [`ScheduleUpsertParams::next_run_at`]). Returns the entry as stored.
    async fn schedule_upsert(&self, params: ScheduleUpsertParams) -> Result<ScheduleRecord>;

    /// Take a tick: if the entry still exists and its `next_run_at` is `due`, set it to
    /// `params.next_run_at` and store `params.job` (if any), in one transaction. Returns
    /// whether this call took the tick. However many workers call this for the same
    /// entry and `due` at once, exactly one gets `true`, so a tick stores at most one job.
    async fn schedule_tick(&self, params: ScheduleTickParams) -> Result<bool>;

    /// Store a fresh job from the entry's template, runnable at once, and set the entry's
    /// `last_enqueued_at`; its ticks do not move. Returns the job's id, or `None` if no
    /// entry has that name.
    async fn schedule_run_now(&self, params: ScheduleRunNowParams) -> Result<Option<JobId>>;

    /// Delete the entry. Returns whether it existed. Jobs it already stored are kept.
    async fn schedule_delete(&self, name: &str) -> Result<bool>;

    /// Every entry, by name.
    async fn schedule_list(&self) -> Result<Vec<ScheduleRecord>>;

    /// How often workers should look for jobs queued by *other processes* (`None`: the
    /// storage cannot be shared between processes, so in-process wake-ups suffice).
    fn poll_interval(&self) -> Option<Duration>;

    /// A signal that *another process* may have made jobs runnable (for PostgreSQL:
    /// `LISTEN`/`NOTIFY`), so idle workers need not wait for the next poll. The value only
    /// counts signals: wait for changes. `None` (the default): the storage cannot tell, and
    /// workers rely on [`Storage::poll_interval`], which stays the fallback either way.
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Close the storage; later calls fail with `StorageClosed`. Idempotent.
    async fn close(&self) -> Result<()>;
}
