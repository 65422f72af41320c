//! The data the engine stores and moves: job ids, statuses, new jobs, stored records.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use crate::retry::RetryPolicy;

/// A point in time: microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Timestamp(chrono::Utc::now().timestamp_micros())
    }
    /// From microseconds since the epoch.
    pub const fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }
    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }
    /// This time moved by `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Self {
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(us))
    }
    /// This time moved back by `d` (saturating).
    pub fn minus(self, d: std::time::Duration) -> Self {
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(us))
    }
    /// How long from `self` until `later` (zero if `later` is not later).
    pub fn until(self, later: Timestamp) -> std::time::Duration {
        std::time::Duration::from_micros(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }
}

/// A job's id: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s)
            .map(JobId)
            .map_err(|e| Error::Config(format!("invalid job id {s:?}: {e}")))
    }
}

/// A job group's id: a UUID v7, like [`JobId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub Uuid);

impl GroupId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        GroupId(Uuid::now_v7())
    }
}

impl Default for GroupId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for GroupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s)
            .map(GroupId)
            .map_err(|e| Error::Config(format!("invalid group id {s:?}: {e}")))
    }
}

/// Where a job is in its life. See `docs/state_machine.md` for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Stored with a run time in the future.
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker that holds its lease.
    Running,
    /// An attempt failed; waiting for its retry time.
    Retryable,
    /// Finished successfully.
    Completed,
    /// Failed for good (retries exhausted, or a permanent error).
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Scheduled,
        JobStatus::Available,
        JobStatus::Running,
        JobStatus::Retryable,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The lowercase name used in storage and in Python.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Available => "available",
            JobStatus::Running => "running",
            JobStatus::Retryable => "retryable",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Waiting to run: a claim may pick it once its run time has come.
    pub const fn is_pending(self) -> bool {
        matches!(
            self,
            JobStatus::Scheduled | JobStatus::Available | JobStatus::Retryable
        )
    }

    /// Finished for good.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown job status {s:?}; expected one of: scheduled, available, running, \
                     retryable, completed, failed, cancelled"
                ))
            })
    }
}

/// An error raised by a job attempt, carried as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The exception type's qualified name (for example `ValueError`), or an engine reason
    /// such as `LeaseExpired` or `Timeout`.
    pub kind: String,
    /// The error message.
    pub message: String,
    /// The traceback text, when there is one.
    #[serde(default)]
    pub traceback: Option<String>,
}

impl ErrorInfo {
    /// An engine-made error with no traceback.
    pub fn engine(kind: &str, message: impl Into<String>) -> Self {
        ErrorInfo {
            kind: kind.to_owned(),
            message: message.into(),
            traceback: None,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The job ran to completion.
    Completed,
    /// The job raised (or timed out).
    Failed,
    /// The worker lost the lease (it died or stalled); another worker may take over.
    LeaseExpired,
    /// The worker shut down before the job finished and handed it back (not counted).
    Released,
    /// A cancel was requested while the attempt ran; the job ended `cancelled` however the
    /// attempt itself ended (the entry's error is what it raised, if anything).
    Cancelled,
    /// Not an attempt: an operator retried the failed or cancelled job, and its attempt
    /// count started again from 0. `attempt` is the count before the reset;
    /// `started_at` and `finished_at` are the time of the retry; `worker_id` is empty.
    Retried,
    /// The job asked to run again later (`Job.snooze`): it went back to `scheduled` and the
    /// attempt was not counted (the next one runs with the same number).
    Snoozed,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Completed,
        AttemptOutcome::Failed,
        AttemptOutcome::LeaseExpired,
        AttemptOutcome::Released,
        AttemptOutcome::Cancelled,
        AttemptOutcome::Retried,
        AttemptOutcome::Snoozed,
    ];

    /// The snake_case name used in storage and in Python (as serde writes it).
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Retried => "retried",
            AttemptOutcome::Snoozed => "snoozed",
        }
    }
}

/// One attempt in a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker_id: String,
    /// When the attempt started.
    pub started_at: Timestamp,
    /// When it ended (or was found abandoned).
    pub finished_at: Timestamp,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The error, for a failed or abandoned attempt.
    pub error: Option<ErrorInfo>,
}

/// A job to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Its id (create with [`JobId::new`]).
    pub id: JobId,
    /// The job kind's unique name (the Python class's `NAME`).
    pub name: String,
    /// The queue it runs on.
    pub queue: String,
    /// The serialized fields: a JSON object, as text.
    pub args: String,
    /// Higher runs first within a queue.
    pub priority: i32,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Per-attempt time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// How often a running job's lease is renewed; the lease lasts three intervals.
    pub heartbeat_ms: u64,
    /// Do not run before this time (`None`: now).
    pub run_at: Option<Timestamp>,
    /// The version of the job's class that stored it.
    pub version: u32,
    /// Deduplication key (unique jobs); `None` for ordinary jobs.
    pub unique_key: Option<String>,
    /// Its unique states and concurrency and rate limits (default: none).
    pub limits: JobLimits,
}

/// The statuses a unique key holds in by default, and must hold in at least: every status
/// that is not final. (A job moves between these on its own; were one left out, a move into
/// it could meet another job of the same key, which the storage's unique index forbids.)
pub const UNIQUE_STATES_REQUIRED: [JobStatus; 4] = [
    JobStatus::Scheduled,
    JobStatus::Available,
    JobStatus::Running,
    JobStatus::Retryable,
];

/// At most `limit` jobs of one key run at once, across every worker and process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConcurrencyLimit {
    /// Jobs sharing this key share the limit (for example the job name).
    pub key: String,
    /// The most jobs of the key that may be `running` at once (at least 1).
    pub limit: u32,
}

/// At most `limit` jobs of one key start within any window of `window_ms` (a sliding
/// window over the recorded start times), across every worker and process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Jobs sharing this key share the limit (the job name).
    pub key: String,
    /// The most starts per window (at least 1).
    pub limit: u32,
    /// The window, in milliseconds (at least 1).
    pub window_ms: u64,
}

/// What a job must respect beside its own fields: the statuses in which its unique key
/// keeps equal jobs out, and the concurrency and rate limits its claims obey. A job that
/// sets none of them (the default) costs claims and inserts nothing extra.
///
/// A concurrency key is generic: any set of jobs given the same key and limit (one job
/// name for `SINGLETON`/`CONCURRENCY`, or the members of a group) never has more than the
/// limit running.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobLimits {
    /// With a `unique_key`: the statuses in which this job keeps others of its key out.
    /// Must contain every [`UNIQUE_STATES_REQUIRED`] status; empty means exactly those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique_states: Vec<JobStatus>,
    /// How many jobs of its key may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLimit>,
    /// How many jobs of its key may start per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

impl JobLimits {
    /// Whether claims must check this job against a concurrency or rate limit.
    pub fn is_limited(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some()
    }

    /// The unique states to store: the given ones (or the default), in life-cycle order
    /// without repeats. Fails unless they contain every required status.
    pub fn unique_states(&self) -> Result<Vec<JobStatus>, Error> {
        if self.unique_states.is_empty() {
            return Ok(UNIQUE_STATES_REQUIRED.to_vec());
        }
        let missing: Vec<&str> = UNIQUE_STATES_REQUIRED
            .iter()
            .filter(|s| !self.unique_states.contains(s))
            .map(|s| s.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "unique states must include every status that is not final (scheduled, \
                 available, running, retryable); missing: {}",
                missing.join(", ")
            )));
        }
        Ok(JobStatus::ALL
            .into_iter()
            .filter(|s| self.unique_states.contains(s))
            .collect())
    }

    /// The unique states as stored: `,scheduled,available,running,retryable,` (each name
    /// between commas, so a storage tests membership with one substring search).
    pub fn unique_states_text(&self) -> Result<String, Error> {
        let mut text = String::from(",");
        for s in self.unique_states()? {
            text.push_str(s.as_str());
            text.push(',');
        }
        Ok(text)
    }

    /// Check the limits' numbers (a limit or window of 0 is refused).
    pub fn validate(&self) -> Result<(), Error> {
        if self.unique_states.is_empty() && !self.is_limited() {
            return Ok(()); // no limits: the common case, checked without allocating
        }
        if let Some(c) = &self.concurrency {
            if c.limit == 0 {
                return Err(Error::Config(format!(
                    "concurrency limit of key {:?} must be at least 1",
                    c.key
                )));
            }
        }
        if let Some(r) = &self.rate {
            if r.limit == 0 || r.window_ms == 0 {
                return Err(Error::Config(format!(
                    "rate limit of key {:?} must allow at least 1 start per window of at \
                     least 1 ms",
                    r.key
                )));
            }
        }
        self.unique_states().map(drop)
    }

    /// Parse stored unique states (the text [`JobLimits::unique_states_text`] wrote).
    pub fn parse_unique_states(text: &str) -> Result<Vec<JobStatus>, Error> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }
}

/// What storing one job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertedJob {
    /// The job stored (the new job's id), or, for a duplicate, the existing job whose
    /// unique key it shares.
    pub id: JobId,
    /// Whether an existing job matched the job's unique key, so nothing new was stored.
    pub duplicate: bool,
}

/// A job as stored, with its whole history.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The id.
    pub id: JobId,
    /// The job kind's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Serialized fields (a JSON object, as text).
    pub args: String,
    /// Current status.
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempt: u32,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Priority (higher first).
    pub priority: i32,
    /// Per-attempt time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Class version that stored it.
    pub version: u32,
    /// Deduplication key, if any.
    pub unique_key: Option<String>,
    /// Its unique states and concurrency and rate limits.
    pub limits: JobLimits,
    /// When it was stored.
    pub created_at: Timestamp,
    /// When it may next run (for pending jobs) or last became runnable.
    pub run_at: Timestamp,
    /// When the current or last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it reached a final status.
    pub finished_at: Option<Timestamp>,
    /// The worker holding the lease (running jobs).
    pub worker_id: Option<String>,
    /// When the lease ends unless renewed (running jobs).
    pub lease_expires_at: Option<Timestamp>,
    /// When a cancel was requested while the job was running (it then ends `cancelled`);
    /// `None` otherwise. Cleared by a manual retry.
    pub cancel_requested_at: Option<Timestamp>,
    /// The most recent error.
    pub last_error: Option<ErrorInfo>,
    /// Every finished attempt, oldest first.
    pub history: Vec<AttemptRecord>,
    /// Progress the job last reported (0 to 100), if any; kept after it ends.
    pub progress: Option<u8>,
    /// The message given with the last progress, if any.
    pub progress_message: Option<String>,
    /// The job's own state (a JSON object, as text), kept across attempts.
    pub state: Option<String>,
    /// The group the job is a member of (see [`crate::group`]), if any.
    pub group_id: Option<GroupId>,
}

/// A job handed to a worker by a claim: what it needs to run and to report back.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    /// The id.
    pub id: JobId,
    /// The job kind's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Serialized fields.
    pub args: String,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Retries and backoff (to compute the next retry on failure).
    pub retry: RetryPolicy,
    /// Per-attempt time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Class version that stored it.
    pub version: u32,
    /// When this attempt started.
    pub started_at: Timestamp,
    /// The lease fence: only a report carrying this token is accepted.
    pub lease: LeaseToken,
    /// The state the job saved in an earlier attempt (JSON object text), if any.
    pub state: Option<String>,
}

/// Proof of holding a job's lease: the claim's unique token. A completion, failure or
/// heartbeat is applied only if the job is still running under the same token, so a
/// runner whose lease was taken over can never complete the job (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub Uuid);

impl LeaseToken {
    /// A fresh token.
    pub fn new() -> Self {
        LeaseToken(Uuid::new_v4())
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.simple().fmt(f)
    }
}

/// Per-queue, per-status job counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The status.
    pub status: JobStatus,
    /// How many jobs.
    pub count: u64,
}
