//! The SQLite storage: jobs in one database file that several processes may share.
//!
//! * **File.** WAL journal (readers never wait for the writer), `synchronous` as
//!   [`SqliteOptions`] says, and a `busy_timeout` for the moments another process holds
//!   the write lock.
//! * **Connections.** One writer connection: every change is a single `BEGIN IMMEDIATE`
//!   transaction on it, so the write lock is taken up front and a transaction never fails
//!   halfway for want of it. One reader connection (`query_only`) serves `job_get`,
//!   `job_list`, `job_counts` and `job_next_run_at`. Each sits behind its own mutex.
//! * **Async.** Every call runs on tokio's blocking pool (`spawn_blocking`), never on the
//!   runtime's worker threads.
//! * **Schema.** Created and versioned by hauler: `hauler_meta.schema_version` counts the
//!   migration scripts applied so far. Scripts run in order inside `BEGIN IMMEDIATE`, so
//!   processes opening a new file at once apply each exactly once; a file written by a
//!   newer hauler is refused.
//! * **Claiming.** Candidates come from a partial index that holds only pending jobs, so a
//!   claim costs the same however many finished jobs the table keeps. Each claimed job
//!   gets its own [`LeaseToken`]; every later change to a running job is fenced by it.
//! * **SQL.** Static text with bound parameters; lists (queues, names, statuses) are bound
//!   as one JSON array and read with `json_each`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::types::{ToSql, ValueRef};
use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction,
    TransactionBehavior, MAIN_DB,
};

use super::{
    lease_duration, FinishOutcome, GroupInsertParams, JobCancelParams, JobCancelResult,
    JobClaimParams, JobCountParams, JobDeleteParams, JobFilter, JobFinishManyParams,
    JobHeartbeatParams, JobHeartbeatResult, JobInsertManyParams, JobListParams, JobNextRunAtParams,
    JobProgressSetParams, JobPruneParams, JobReclaimParams, JobReleaseParams, JobRetryParams,
    ScheduleRunNowParams, ScheduleTickParams, ScheduleUpsertParams, Storage,
};
use crate::error::{Error, Result};
use crate::group::{GroupCounts, GroupRecord};
use crate::model::{
    AttemptOutcome, AttemptRecord, ClaimedJob, ErrorInfo, GroupId, JobId, JobRecord, JobStatus,
    LeaseToken, QueueCount, Timestamp,
};
use crate::retry::{MaxRetries, RetryPolicy};
use crate::schedule::{JobTemplate, ScheduleRecord};
use crate::testhook::{crash_point, CrashPoint};

/// How hard SQLite works to make a commit survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Synchronous {
    /// `PRAGMA synchronous = NORMAL`: a commit survives a crash of the process; in WAL
    /// mode a power cut may lose the last commits but never corrupts the file.
    #[default]
    Normal,
    /// `PRAGMA synchronous = FULL`: every commit is synced to disk before it returns.
    Full,
}

impl Synchronous {
    /// The lowercase name (`"normal"` or `"full"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        }
    }

    const fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
            Synchronous::Full => "PRAGMA synchronous = FULL",
        }
    }
}

impl fmt::Display for Synchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Synchronous {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("normal") {
            Ok(Synchronous::Normal)
        } else if s.eq_ignore_ascii_case("full") {
            Ok(Synchronous::Full)
        } else {
            Err(Error::Config(format!(
                "invalid SQLite synchronous mode {s:?}; expected \"normal\" or \"full\""
            )))
        }
    }
}

/// Settings of a [`SqliteStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Commit durability (default [`Synchronous::Normal`]).
    pub synchronous: Synchronous,
    /// How long to wait for another connection's write lock before failing (default 5 s).
    pub busy_timeout: Duration,
    /// How often workers look for jobs stored by other processes (default 100 ms).
    pub poll_interval: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Schema migrations, oldest first. `hauler_meta.schema_version` is the number applied;
/// a new schema version is a new script appended here (never an edit of an old one).
const MIGRATIONS: &[&str] = &[
    // 1: jobs.
    "CREATE TABLE hauler_jobs (
        id               TEXT    NOT NULL PRIMARY KEY,
        name             TEXT    NOT NULL,
        queue            TEXT    NOT NULL,
        args             TEXT    NOT NULL,
        status           TEXT    NOT NULL CHECK (status IN ('scheduled', 'available',
                             'running', 'retryable', 'completed', 'failed', 'cancelled')),
        priority         INTEGER NOT NULL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER,
        retry            TEXT    NOT NULL,
        timeout_ms       INTEGER,
        heartbeat_ms     INTEGER NOT NULL,
        version          INTEGER NOT NULL,
        unique_key       TEXT,
        created_at       INTEGER NOT NULL,
        run_at           INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER,
        lease_expires_at INTEGER,
        worker_id        TEXT,
        lease_token      TEXT,
        last_error       TEXT,
        history          TEXT    NOT NULL DEFAULT '[]'
    ) STRICT;
    CREATE INDEX hauler_jobs_claim ON hauler_jobs (queue, priority DESC, run_at, id)
        WHERE status IN ('scheduled', 'available', 'retryable');
    CREATE INDEX hauler_jobs_pending_run_at ON hauler_jobs (queue, run_at)
        WHERE status IN ('scheduled', 'available', 'retryable');
    CREATE INDEX hauler_jobs_lease ON hauler_jobs (lease_expires_at)
        WHERE status = 'running';
    CREATE INDEX hauler_jobs_status ON hauler_jobs (status, id);
    CREATE INDEX hauler_jobs_queue_status ON hauler_jobs (queue, status);",
    // 2: cancelling running jobs; pruning finished jobs by age.
    "ALTER TABLE hauler_jobs ADD COLUMN cancel_requested_at INTEGER;
    CREATE INDEX hauler_jobs_finished ON hauler_jobs (status, finished_at)
        WHERE finished_at IS NOT NULL;",
    // 3: schedule entries (cron and fixed-interval jobs). A tick is taken by moving
    // next_run_at from the tick to the following one, so each tick stores one job.
    "CREATE TABLE hauler_schedules (
        name             TEXT    NOT NULL PRIMARY KEY,
        spec             TEXT    NOT NULL,
        catch_up         TEXT    NOT NULL CHECK (catch_up IN ('one', 'none')),
        job              TEXT    NOT NULL,
        next_run_at      INTEGER NOT NULL,
        last_enqueued_at INTEGER,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    ) STRICT;",
    // 4: a running job's progress and its own state (kept across attempts).
    "ALTER TABLE hauler_jobs ADD COLUMN progress INTEGER;
    ALTER TABLE hauler_jobs ADD COLUMN progress_message TEXT;
    ALTER TABLE hauler_jobs ADD COLUMN state TEXT;",
    // 5: job groups. A member points at its group; a group finishes (finished_at set,
    // on_complete stored under on_complete_job_id) when its last member becomes final.
    "CREATE TABLE hauler_groups (
        id                 TEXT    NOT NULL PRIMARY KEY,
        name               TEXT    NOT NULL,
        concurrency        INTEGER CHECK (concurrency > 0),
        on_complete        TEXT,
        on_complete_job_id TEXT,
        created_at         INTEGER NOT NULL,
        finished_at        INTEGER
    ) STRICT;
    CREATE INDEX hauler_groups_limited ON hauler_groups (id)
        WHERE concurrency IS NOT NULL AND finished_at IS NULL;
    ALTER TABLE hauler_jobs ADD COLUMN group_id TEXT;
    CREATE INDEX hauler_jobs_group ON hauler_jobs (group_id, status)
        WHERE group_id IS NOT NULL;",
];

/// The schema version this build writes and reads.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const META_CREATE: &str = "CREATE TABLE IF NOT EXISTS hauler_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
)";

const META_TABLE_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hauler_meta')";

const META_GET_VERSION: &str = "SELECT value FROM hauler_meta WHERE key = 'schema_version'";

const META_SET_VERSION: &str = "INSERT INTO hauler_meta (key, value) VALUES ('schema_version', ?1)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

const JOB_INSERT: &str = "INSERT INTO hauler_jobs (id, name, queue, args, status, priority,
        max_retries, retry, timeout_ms, heartbeat_ms, version, unique_key, created_at, run_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// The best `?4` claimable jobs of queue `?1` at time `?2` among names `?3` (a JSON array),
/// walking the claim index in claim order, leaving out members of the groups `?5` (a JSON
/// array: the groups that cannot start another member).
const CLAIM_CANDIDATES: &str = "SELECT id, priority, run_at, heartbeat_ms, group_id
    FROM hauler_jobs INDEXED BY hauler_jobs_claim
    WHERE queue = ?1
      AND status IN ('scheduled', 'available', 'retryable')
      AND run_at <= ?2
      AND name IN (SELECT value FROM json_each(?3))
      AND (group_id IS NULL OR group_id NOT IN (SELECT value FROM json_each(?5)))
    ORDER BY priority DESC, run_at, id
    LIMIT ?4";

/// The unfinished groups with a concurrency limit, and how many more members each may
/// start now.
const GROUPS_LIMITED: &str = "SELECT g.id, g.concurrency - (
        SELECT count(*) FROM hauler_jobs j WHERE j.group_id = g.id AND j.status = 'running')
    FROM hauler_groups g INDEXED BY hauler_groups_limited
    WHERE g.concurrency IS NOT NULL AND g.finished_at IS NULL";

const GROUP_INSERT: &str = "INSERT INTO hauler_groups (id, name, concurrency, on_complete,
        created_at)
    VALUES (?1, ?2, ?3, ?4, ?5)";

/// Make the jobs `?2` (a JSON array of ids) members of group `?1`.
const GROUP_MEMBERS_SET: &str = "UPDATE hauler_jobs SET group_id = ?1
    WHERE id IN (SELECT value FROM json_each(?2))";

const GROUP_GET: &str = "SELECT name, concurrency, on_complete, on_complete_job_id, created_at,
        finished_at
    FROM hauler_groups WHERE id = ?1";

const GROUP_COUNTS: &str = "SELECT status, count(*) FROM hauler_jobs
    WHERE group_id = ?1 GROUP BY status";

/// Finish group `?1` at `?2` if no member is left open and it is not finished yet; its
/// on_complete job gets id `?3` unless one was stored before. Answers the template and the
/// id it is stored under.
const GROUP_FINISH: &str = "UPDATE hauler_groups
    SET finished_at = ?2,
        on_complete_job_id = CASE WHEN on_complete IS NULL THEN on_complete_job_id
                                  ELSE coalesce(on_complete_job_id, ?3) END
    WHERE id = ?1 AND finished_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM hauler_jobs INDEXED BY hauler_jobs_group
          WHERE group_id = ?1
            AND status IN ('scheduled', 'available', 'running', 'retryable'))
    RETURNING on_complete, on_complete_job_id";

const GROUP_REOPEN: &str =
    "UPDATE hauler_groups SET finished_at = NULL WHERE id = ?1 AND finished_at IS NOT NULL";

const GROUP_DROP_EMPTY: &str = "DELETE FROM hauler_groups
    WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM hauler_jobs WHERE group_id = ?1)";

const CLAIM_ONE: &str = "UPDATE hauler_jobs
    SET status = 'running', attempt = attempt + 1, started_at = ?2, worker_id = ?3,
        lease_token = ?4, lease_expires_at = ?5
    WHERE id = ?1 AND status IN ('scheduled', 'available', 'retryable')
    RETURNING name, queue, args, attempt, retry, timeout_ms, heartbeat_ms, version, state";

/// Set, for job `?1` running under token `?2`, progress `?3` with message `?4` (unless
/// `?5` is 0) and state `?6` (unless NULL).
const JOB_PROGRESS_SET: &str = "UPDATE hauler_jobs
    SET progress = CASE WHEN ?5 THEN ?3 ELSE progress END,
        progress_message = CASE WHEN ?5 THEN ?4 ELSE progress_message END,
        state = coalesce(?6, state)
    WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const LEASE_HEARTBEAT_MS: &str = "SELECT heartbeat_ms, cancel_requested_at IS NOT NULL
    FROM hauler_jobs WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const LEASE_EXTEND: &str = "UPDATE hauler_jobs SET lease_expires_at = ?2 WHERE id = ?1";

/// End the attempt of job `?1` running under token `?2` at time `?7`: new status `?3`,
/// `run_at` `?4` (NULL: unchanged), `finished_at` `?5`, error `?6` (JSON or NULL), history
/// outcome `?8` (`snoozed`: the attempt is not counted); or, if its cancel was requested,
/// `cancelled` (history: `cancelled`).
const JOB_FINISH: &str = "UPDATE hauler_jobs
    SET status = CASE WHEN cancel_requested_at IS NULL THEN ?3 ELSE 'cancelled' END,
        attempt = CASE WHEN cancel_requested_at IS NULL AND ?8 = 'snoozed' THEN attempt - 1
                       ELSE attempt END,
        run_at = CASE WHEN cancel_requested_at IS NULL THEN coalesce(?4, run_at)
                      ELSE run_at END,
        finished_at = CASE WHEN cancel_requested_at IS NULL THEN ?5 ELSE ?7 END,
        last_error = coalesce(?6, last_error),
        history = json_insert(history, '$[#]', json_object(
            'attempt', attempt, 'worker_id', coalesce(worker_id, ''),
            'started_at', coalesce(started_at, ?7), 'finished_at', ?7,
            'outcome', CASE WHEN cancel_requested_at IS NULL THEN ?8 ELSE 'cancelled' END,
            'error', json(?6))),
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE id = ?1 AND status = 'running' AND lease_token = ?2
    RETURNING group_id, status";

/// Hand back at `?3` job `?1` running under token `?2`: `available`, the attempt not
/// counted; or `cancelled` if its cancel was requested.
const JOB_RELEASE: &str = "UPDATE hauler_jobs
    SET status = CASE WHEN cancel_requested_at IS NULL THEN 'available' ELSE 'cancelled' END,
        attempt = CASE WHEN cancel_requested_at IS NULL THEN attempt - 1 ELSE attempt END,
        run_at = CASE WHEN cancel_requested_at IS NULL THEN ?3 ELSE run_at END,
        finished_at = CASE WHEN cancel_requested_at IS NULL THEN finished_at ELSE ?3 END,
        history = json_insert(history, '$[#]', json_object(
            'attempt', attempt, 'worker_id', coalesce(worker_id, ''),
            'started_at', coalesce(started_at, ?3), 'finished_at', ?3,
            'outcome', CASE WHEN cancel_requested_at IS NULL THEN 'released' ELSE 'cancelled' END,
            'error', NULL)),
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE id = ?1 AND status = 'running' AND lease_token = ?2
    RETURNING group_id, status";

/// Reclaim every job whose lease ended before `?1`. A job may make another attempt while
/// `attempt <= max_retries` (as `MaxRetries::allows_another` counts), unless its cancel
/// was requested (it becomes `cancelled`). The error, written to both `last_error` and the
/// history entry, names the worker that lost the lease.
const JOB_RECLAIM: &str = "UPDATE hauler_jobs INDEXED BY hauler_jobs_lease
    SET status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                      WHEN max_retries IS NULL OR attempt <= max_retries THEN 'available'
                      ELSE 'failed' END,
        run_at = CASE WHEN cancel_requested_at IS NULL
                           AND (max_retries IS NULL OR attempt <= max_retries)
                      THEN ?1 ELSE run_at END,
        finished_at = CASE WHEN cancel_requested_at IS NULL
                                AND (max_retries IS NULL OR attempt <= max_retries)
                           THEN NULL ELSE ?1 END,
        last_error = json_object('kind', 'LeaseExpired', 'message',
            'lease expired: worker ' || coalesce(worker_id, '') || ' stopped heartbeating',
            'traceback', NULL),
        history = json_insert(history, '$[#]', json_object(
            'attempt', attempt, 'worker_id', coalesce(worker_id, ''),
            'started_at', coalesce(started_at, ?1), 'finished_at', ?1,
            'outcome', 'lease_expired',
            'error', json_object('kind', 'LeaseExpired', 'message',
                'lease expired: worker ' || coalesce(worker_id, '') || ' stopped heartbeating',
                'traceback', NULL))),
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE status = 'running' AND lease_expires_at < ?1
    RETURNING group_id, status";

/// The columns [`RawJob::from_row`] reads, in order.
macro_rules! job_columns {
    () => {
        "id, name, queue, args, status, attempt, retry, priority, timeout_ms, heartbeat_ms, \
         version, unique_key, created_at, run_at, started_at, finished_at, worker_id, \
         lease_expires_at, last_error, history, cancel_requested_at, progress, \
         progress_message, state, group_id"
    };
}

/// The conditions of a [`JobFilter`], bound as `?1` ids (a JSON array or NULL), `?2`
/// statuses (a JSON array or NULL), `?3` name, `?4` queue, `?5`/`?6` the `created_at`
/// range, `?7` the text to find in `args` and `?8` the group (each NULL when not filtered
/// on).
macro_rules! filter_conditions {
    () => {
        "(?1 IS NULL OR id IN (SELECT value FROM json_each(?1)))
      AND (?2 IS NULL OR status IN (SELECT value FROM json_each(?2)))
      AND (?3 IS NULL OR name = ?3) AND (?4 IS NULL OR queue = ?4)
      AND (?5 IS NULL OR created_at >= ?5) AND (?6 IS NULL OR created_at < ?6)
      AND (?7 IS NULL OR instr(args, ?7) > 0)
      AND (?8 IS NULL OR group_id = ?8)"
    };
}

/// `head WHERE <filter> tail`, in four forms that lead with what an index can use: by
/// ids (primary key), by statuses (`hauler_jobs_status`), neither, and by group
/// (`hauler_jobs_group`). [`Filter::pick`] chooses; all four take the same parameters.
macro_rules! filtered {
    ($head:expr, $tail:expr) => {
        [
            concat!(
                $head,
                " WHERE id IN (SELECT value FROM json_each(?1)) AND ",
                filter_conditions!(),
                $tail
            ),
            concat!(
                $head,
                " WHERE status IN (SELECT value FROM json_each(?2)) AND ",
                filter_conditions!(),
                $tail
            ),
            concat!($head, " WHERE ", filter_conditions!(), $tail),
            concat!(
                $head,
                " WHERE group_id = ?8 AND ",
                filter_conditions!(),
                $tail
            ),
        ]
    };
}

const JOB_GET: &str = concat!("SELECT ", job_columns!(), " FROM hauler_jobs WHERE id = ?1");

// Ids are lowercase hex and hyphens, all sorting before '~': with no cursor (`?9`) the
// range is the whole table, and `id <` stays an index range either way.
const JOB_LIST: [&str; 4] = filtered!(
    concat!("SELECT ", job_columns!(), " FROM hauler_jobs"),
    " AND id < coalesce(?9, '~') ORDER BY id DESC LIMIT ?10"
);

const JOB_COUNT: [&str; 4] = filtered!("SELECT count(*) FROM hauler_jobs", "");

/// Cancel at `?9` the matching jobs: pending ones at once, running ones by request.
const JOB_CANCEL: [&str; 4] = filtered!(
    "UPDATE hauler_jobs
    SET status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
        finished_at = CASE WHEN status = 'running' THEN finished_at ELSE ?9 END,
        cancel_requested_at = CASE WHEN status = 'running'
                                   THEN coalesce(cancel_requested_at, ?9)
                                   ELSE cancel_requested_at END",
    " AND status IN ('scheduled', 'available', 'retryable', 'running')
    RETURNING status, group_id"
);

/// Make the matching failed and cancelled jobs available at `?9`, attempts back to 0, with
/// a `retried` history entry.
const JOB_RETRY: [&str; 4] = filtered!(
    "UPDATE hauler_jobs
    SET status = 'available', attempt = 0, run_at = ?9, finished_at = NULL,
        cancel_requested_at = NULL,
        history = json_insert(history, '$[#]', json_object(
            'attempt', attempt, 'worker_id', '', 'started_at', ?9, 'finished_at', ?9,
            'outcome', 'retried', 'error', NULL))",
    " AND status IN ('failed', 'cancelled') RETURNING group_id"
);

const JOB_DELETE: [&str; 4] = filtered!(
    "DELETE FROM hauler_jobs",
    " AND status <> 'running' RETURNING group_id"
);

/// Delete up to `?3` jobs of statuses `?1` (a JSON array of final statuses) that finished
/// before `?2`.
const JOB_PRUNE: &str = "DELETE FROM hauler_jobs WHERE id IN (
    SELECT id FROM hauler_jobs INDEXED BY hauler_jobs_finished
    WHERE status IN (SELECT value FROM json_each(?1)) AND finished_at < ?2
    LIMIT ?3)
    RETURNING group_id";

/// Insert an entry, or update its definition (keeping its next tick if the spec is the same).
const SCHEDULE_UPSERT: &str = "INSERT INTO hauler_schedules
        (name, spec, catch_up, job, next_run_at, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
    ON CONFLICT (name) DO UPDATE SET
        next_run_at = CASE WHEN hauler_schedules.spec = excluded.spec
            THEN hauler_schedules.next_run_at ELSE excluded.next_run_at END,
        spec = excluded.spec, catch_up = excluded.catch_up, job = excluded.job,
        updated_at = excluded.updated_at
    RETURNING name, spec, catch_up, job, next_run_at, last_enqueued_at, created_at, updated_at";

/// Take a tick: only while next_run_at is still the tick (compare-and-set).
const SCHEDULE_TICK: &str = "UPDATE hauler_schedules
    SET next_run_at = ?3, last_enqueued_at = CASE WHEN ?4 THEN ?5 ELSE last_enqueued_at END
    WHERE name = ?1 AND next_run_at = ?2";

const SCHEDULE_RUN_NOW: &str = "UPDATE hauler_schedules SET last_enqueued_at = ?2
    WHERE name = ?1 RETURNING job";

const SCHEDULE_DELETE: &str = "DELETE FROM hauler_schedules WHERE name = ?1";

const SCHEDULE_LIST: &str = "SELECT name, spec, catch_up, job, next_run_at, last_enqueued_at,
    created_at, updated_at FROM hauler_schedules ORDER BY name";

const JOB_COUNTS: &str = "SELECT queue, status, count(*) FROM hauler_jobs GROUP BY queue, status";

const NEXT_RUN_AT: &str = "SELECT run_at
    FROM hauler_jobs INDEXED BY hauler_jobs_pending_run_at
    WHERE queue = ?1
      AND status IN ('scheduled', 'available', 'retryable')
      AND name IN (SELECT value FROM json_each(?2))
    ORDER BY run_at
    LIMIT 1";

/// A [`Storage`] in one SQLite file, safe to share between threads and processes.
///
/// ```no_run
/// use hauler_core::storage::{SqliteOptions, SqliteStorage};
///
/// let storage = SqliteStorage::open("jobs.db", SqliteOptions::default())?;
/// # Ok::<(), hauler_core::Error>(())
/// ```
pub struct SqliteStorage {
    inner: Arc<Inner>,
    poll_interval: Duration,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.inner.path)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    busy_timeout: Duration,
    closed: AtomicBool,
    writer: Mutex<Option<Connection>>,
    reader: Mutex<Option<Connection>>,
}

/// A failure inside a database call: SQLite's (given context when mapped) or already ours.
enum Failure {
    Sql(rusqlite::Error),
    Hauler(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Hauler(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Hauler(e.into())
    }
}

type DbResult<T> = std::result::Result<T, Failure>;

impl SqliteStorage {
    /// Open (creating if needed) the database file at `path`, creating or upgrading
    /// hauler's tables in it.
    ///
    /// Fails with [`Error::Storage`], naming the path, if the file cannot be opened or
    /// written (missing directory, read-only, not a database) or was written by a newer
    /// hauler.
    ///
    /// Opening does file I/O and may wait up to `busy_timeout` for another process's
    /// write lock: from async code, call it on a blocking thread.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut writer = open_connection(&path, &opts)?;
        migrate(&mut writer, &path)?;
        let reader = open_connection(&path, &opts)?;
        reader
            .execute_batch("PRAGMA query_only = ON")
            .map_err(|e| open_error(&path, &e))?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                path,
                busy_timeout: opts.busy_timeout,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(writer)),
                reader: Mutex::new(Some(reader)),
            }),
            poll_interval: opts.poll_interval,
        })
    }

    /// Run `f` on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        self.ensure_open()?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Storage(format!("sqlite task failed: {e}")))?
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::StorageClosed)
        } else {
            Ok(())
        }
    }
}

fn open_error(path: &Path, e: &rusqlite::Error) -> Error {
    Error::Storage(format!(
        "cannot open SQLite database {}: {e}",
        path.display()
    ))
}

/// Open one connection and set it up: busy timeout, WAL, synchronous, statement cache.
fn open_connection(path: &Path, opts: &SqliteOptions) -> Result<Connection> {
    let err = |e: rusqlite::Error| open_error(path, &e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(opts.busy_timeout).map_err(err)?;
    if conn.is_readonly(MAIN_DB).map_err(err)? {
        return Err(Error::Storage(format!(
            "cannot open SQLite database {}: the file is read-only",
            path.display()
        )));
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Storage(format!(
            "cannot open SQLite database {}: WAL journal mode is unavailable (got {mode:?})",
            path.display()
        )));
    }
    conn.execute_batch(opts.synchronous.pragma()).map_err(err)?;
    // After a burst the WAL is cut back to 64 MiB once checkpointed, instead of keeping
    // its largest size for good.
    conn.execute_batch("PRAGMA journal_size_limit = 67108864")
        .map_err(err)?;
    // Plan statements without looking at bound values: SQLite (3.48+) otherwise reads a
    // bound LIMIT at prepare time and expires the statement whenever the value changes, so
    // the claim query (LIMIT = the free worker count) was re-prepared on most claims.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The schema version recorded in the file (0: none yet).
fn schema_version(conn: &Connection, path: &Path) -> Result<i64> {
    let err = |e: rusqlite::Error| open_error(path, &e);
    let has_meta: bool = conn
        .query_row(META_TABLE_EXISTS, [], |r| r.get(0))
        .map_err(err)?;
    if !has_meta {
        return Ok(0);
    }
    let text: Option<String> = conn
        .query_row(META_GET_VERSION, [], |r| r.get(0))
        .optional()
        .map_err(err)?;
    let Some(text) = text else { return Ok(0) };
    let version = text.parse::<i64>().map_err(|_| {
        Error::Storage(format!(
            "{}: invalid schema_version {text:?} in hauler_meta",
            path.display()
        ))
    })?;
    if version > SCHEMA_VERSION {
        return Err(Error::Storage(format!(
            "{}: database schema version {version} is newer than this hauler supports \
             ({SCHEMA_VERSION}); upgrade hauler",
            path.display()
        )));
    }
    Ok(version)
}

/// Bring the schema up to [`SCHEMA_VERSION`]. The version is checked again under the
/// write lock, so concurrent openers apply each script once.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    if schema_version(conn, path)? == SCHEMA_VERSION {
        return Ok(());
    }
    let err = |e: rusqlite::Error| {
        Error::Storage(format!(
            "cannot migrate SQLite database {}: {e}",
            path.display()
        ))
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(META_CREATE).map_err(err)?;
    let current = schema_version(&tx, path)?;
    let applied = usize::try_from(current).unwrap_or(0);
    for script in MIGRATIONS.iter().skip(applied) {
        tx.execute_batch(script).map_err(err)?;
    }
    tx.execute(META_SET_VERSION, [SCHEMA_VERSION.to_string()])
        .map_err(err)?;
    tx.commit().map_err(err)
}

impl Inner {
    /// Run `f` in one `BEGIN IMMEDIATE` transaction on the writer; commit if it succeeds.
    fn write<T>(&self, op: &str, f: impl FnOnce(&Transaction<'_>) -> DbResult<T>) -> Result<T> {
        let mut guard = self.writer.lock().map_err(|_| poisoned())?;
        let conn = guard.as_mut().ok_or(Error::StorageClosed)?;
        let run = || -> DbResult<T> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run().map_err(|e| self.failure(op, e))
    }

    /// Run `f` in one read transaction (one snapshot) on the reader.
    fn read<T>(&self, op: &str, f: impl FnOnce(&Transaction<'_>) -> DbResult<T>) -> Result<T> {
        let mut guard = self.reader.lock().map_err(|_| poisoned())?;
        let conn = guard.as_mut().ok_or(Error::StorageClosed)?;
        let run = || -> DbResult<T> {
            let tx = conn.transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run().map_err(|e| self.failure(op, e))
    }

    fn failure(&self, op: &str, failure: Failure) -> Error {
        let e = match failure {
            Failure::Hauler(e) => return e,
            Failure::Sql(e) => e,
        };
        let path = self.path.display();
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Storage(format!(
                "{op} on {path}: the database stayed locked by another connection for longer \
                 than busy_timeout ({} ms): {e}",
                self.busy_timeout.as_millis()
            )),
            Some(ErrorCode::ReadOnly) => {
                Error::Storage(format!("{op} on {path}: the database is read-only: {e}"))
            }
            _ => Error::Storage(format!("{op} on {path}: sqlite: {e}")),
        }
    }

    /// Drop both connections (reader first, so the writer's close may checkpoint and
    /// remove the WAL when it is the file's last connection).
    fn close(&self) -> Result<()> {
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut result = Ok(());
        if let Some(conn) = reader {
            if let Err((_, e)) = conn.close() {
                result = Err(self.failure("close", Failure::Sql(e)));
            }
        }
        if let Some(conn) = writer {
            // Best effort: move what the WAL holds into the database without waiting for
            // other processes' readers; closing the last connection checkpoints fully.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            if let Err((_, e)) = conn.close() {
                result = Err(self.failure("close", Failure::Sql(e)));
            }
        }
        result
    }
}

fn poisoned() -> Error {
    Error::Storage("sqlite connection lock poisoned (an earlier call panicked)".to_owned())
}

/// A `u64` as a SQLite integer (values past `i64::MAX` are clamped).
fn to_sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(id: &str, what: impl fmt::Display) -> Error {
    Error::Storage(format!("corrupt row for job {id} in hauler_jobs: {what}"))
}

/// A stored integer as `T`, or a corruption error naming the job and field.
fn from_sql_int<T: TryFrom<i64>>(v: i64, id: &str, field: &str) -> Result<T> {
    T::try_from(v).map_err(|_| corrupt(id, format_args!("{field} {v} is out of range")))
}

fn parse_id(id: &str) -> Result<JobId> {
    id.parse::<JobId>().map_err(|e| corrupt(id, e))
}

/// A `hauler_jobs` row as SQLite hands it over, before decoding.
struct RawJob {
    id: String,
    name: String,
    queue: String,
    args: String,
    status: String,
    attempt: i64,
    retry: String,
    priority: i64,
    timeout_ms: Option<i64>,
    heartbeat_ms: i64,
    version: i64,
    unique_key: Option<String>,
    created_at: i64,
    run_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    worker_id: Option<String>,
    lease_expires_at: Option<i64>,
    last_error: Option<String>,
    history: String,
    cancel_requested_at: Option<i64>,
    progress: Option<i64>,
    progress_message: Option<String>,
    state: Option<String>,
    group_id: Option<String>,
}

impl RawJob {
    /// Read the columns of `job_columns!`, in order.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawJob {
            id: row.get(0)?,
            name: row.get(1)?,
            queue: row.get(2)?,
            args: row.get(3)?,
            status: row.get(4)?,
            attempt: row.get(5)?,
            retry: row.get(6)?,
            priority: row.get(7)?,
            timeout_ms: row.get(8)?,
            heartbeat_ms: row.get(9)?,
            version: row.get(10)?,
            unique_key: row.get(11)?,
            created_at: row.get(12)?,
            run_at: row.get(13)?,
            started_at: row.get(14)?,
            finished_at: row.get(15)?,
            worker_id: row.get(16)?,
            lease_expires_at: row.get(17)?,
            last_error: row.get(18)?,
            history: row.get(19)?,
            cancel_requested_at: row.get(20)?,
            progress: row.get(21)?,
            progress_message: row.get(22)?,
            state: row.get(23)?,
            group_id: row.get(24)?,
        })
    }

    fn into_record(self) -> Result<JobRecord> {
        let id = self.id.as_str();
        let last_error = match &self.last_error {
            Some(text) => Some(
                serde_json::from_str::<ErrorInfo>(text)
                    .map_err(|e| corrupt(id, format_args!("last_error: {e}")))?,
            ),
            None => None,
        };
        let group_id = match &self.group_id {
            Some(g) => Some(g.parse::<GroupId>().map_err(|e| corrupt(id, e))?),
            None => None,
        };
        Ok(JobRecord {
            group_id,
            id: parse_id(id)?,
            status: self
                .status
                .parse::<JobStatus>()
                .map_err(|e| corrupt(id, e))?,
            attempt: from_sql_int(self.attempt, id, "attempt")?,
            retry: RetryPolicy::from_json(&self.retry)
                .map_err(|e| corrupt(id, format_args!("retry: {e}")))?,
            priority: from_sql_int(self.priority, id, "priority")?,
            timeout_ms: self
                .timeout_ms
                .map(|v| from_sql_int(v, id, "timeout_ms"))
                .transpose()?,
            heartbeat_ms: from_sql_int(self.heartbeat_ms, id, "heartbeat_ms")?,
            version: from_sql_int(self.version, id, "version")?,
            created_at: Timestamp::from_micros(self.created_at),
            run_at: Timestamp::from_micros(self.run_at),
            started_at: self.started_at.map(Timestamp::from_micros),
            finished_at: self.finished_at.map(Timestamp::from_micros),
            lease_expires_at: self.lease_expires_at.map(Timestamp::from_micros),
            cancel_requested_at: self.cancel_requested_at.map(Timestamp::from_micros),
            last_error,
            history: serde_json::from_str::<Vec<AttemptRecord>>(&self.history)
                .map_err(|e| corrupt(id, format_args!("history: {e}")))?,
            name: self.name,
            queue: self.queue,
            args: self.args,
            unique_key: self.unique_key,
            worker_id: self.worker_id,
            progress: self
                .progress
                .map(|v| from_sql_int(v, id, "progress"))
                .transpose()?,
            progress_message: self.progress_message,
            state: self.state,
        })
    }
}

/// A claimable job found by [`CLAIM_CANDIDATES`].
struct Candidate {
    id: String,
    priority: i64,
    run_at: i64,
    heartbeat_ms: i64,
    group_id: Option<String>,
}

/// The columns [`CLAIM_ONE`] returns, read without conversion: a value that does not
/// decode makes its own job fail (see [`decode_claimed`]), never the whole claim.
struct ClaimedRow {
    name: Vec<u8>,
    queue: Vec<u8>,
    args: Vec<u8>,
    attempt: Option<i64>,
    retry: Vec<u8>,
    timeout_ms: Option<i64>,
    heartbeat_ms: Option<i64>,
    version: Option<i64>,
    state: Option<Vec<u8>>,
}

impl ClaimedRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let bytes = |i: usize| -> rusqlite::Result<Vec<u8>> {
            Ok(match r.get_ref(i)? {
                ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
                _ => Vec::new(),
            })
        };
        let int = |i: usize| -> rusqlite::Result<Option<i64>> {
            Ok(match r.get_ref(i)? {
                ValueRef::Integer(v) => Some(v),
                _ => None,
            })
        };
        Ok(ClaimedRow {
            name: bytes(0)?,
            queue: bytes(1)?,
            args: bytes(2)?,
            attempt: int(3)?,
            retry: bytes(4)?,
            timeout_ms: int(5)?,
            heartbeat_ms: int(6)?,
            version: int(7)?,
            state: match r.get_ref(8)? {
                ValueRef::Text(b) | ValueRef::Blob(b) => Some(b.to_vec()),
                _ => None,
            },
        })
    }
}

/// A claimed row as the job it describes, or why it cannot be one (the message names the
/// job and the damaged column).
fn decode_claimed(
    id: &str,
    row: ClaimedRow,
    lease: LeaseToken,
    now: Timestamp,
) -> Result<ClaimedJob> {
    let text = |field: &str, b: Vec<u8>| {
        String::from_utf8(b)
            .map_err(|e| corrupt(id, format_args!("{field} is not valid UTF-8: {e}")))
    };
    let int = |field: &str, v: Option<i64>| {
        v.ok_or_else(|| corrupt(id, format_args!("{field} is not an integer")))
    };
    let retry = text("retry", row.retry)?;
    Ok(ClaimedJob {
        id: parse_id(id)?,
        name: text("name", row.name)?,
        queue: text("queue", row.queue)?,
        args: text("args", row.args)?,
        attempt: from_sql_int(int("attempt", row.attempt)?, id, "attempt")?,
        retry: RetryPolicy::from_json(&retry)
            .map_err(|e| corrupt(id, format_args!("retry: {e}")))?,
        timeout_ms: row
            .timeout_ms
            .map(|v| from_sql_int(v, id, "timeout_ms"))
            .transpose()?,
        heartbeat_ms: from_sql_int(int("heartbeat_ms", row.heartbeat_ms)?, id, "heartbeat_ms")?,
        version: from_sql_int(int("version", row.version)?, id, "version")?,
        started_at: now,
        lease,
        state: row.state.map(|b| text("state", b)).transpose()?,
    })
}

fn insert_jobs(tx: &Transaction<'_>, p: &JobInsertManyParams) -> DbResult<()> {
    let mut stmt = tx.prepare_cached(JOB_INSERT)?;
    for job in &p.jobs {
        let run_at = job.run_at.unwrap_or(p.now);
        let status = if run_at > p.now {
            JobStatus::Scheduled
        } else {
            JobStatus::Available
        };
        let max_retries = match job.retry.max_retries {
            MaxRetries::Count(n) => Some(i64::from(n)),
            MaxRetries::Infinite => None,
        };
        let inserted = stmt.execute(params![
            job.id.to_string(),
            job.name,
            job.queue,
            job.args,
            status.as_str(),
            job.priority,
            max_retries,
            job.retry.to_json(),
            job.timeout_ms.map(to_sql_int),
            to_sql_int(job.heartbeat_ms),
            job.version,
            job.unique_key,
            p.now.as_micros(),
            run_at.as_micros(),
        ]);
        match inserted {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return Err(
                    Error::Storage(format!("a job with id {} already exists", job.id)).into(),
                );
            }
            other => other?,
        };
        crash_point(CrashPoint::DuringEnqueue);
    }
    Ok(())
}

fn insert_group(tx: &Transaction<'_>, p: &GroupInsertParams) -> DbResult<()> {
    let g = &p.group;
    let on_complete = g
        .on_complete
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let inserted = tx.prepare_cached(GROUP_INSERT)?.execute(params![
        g.id.to_string(),
        g.name,
        g.concurrency,
        on_complete,
        p.now.as_micros(),
    ]);
    match inserted {
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            return Err(Error::Storage(format!("a group with id {} already exists", g.id)).into());
        }
        other => other?,
    };
    insert_jobs(
        tx,
        &JobInsertManyParams {
            jobs: p.jobs.clone(),
            now: p.now,
        },
    )?;
    let ids: Vec<String> = p.jobs.iter().map(|j| j.id.to_string()).collect();
    tx.prepare_cached(GROUP_MEMBERS_SET)?
        .execute(params![g.id.to_string(), serde_json::to_string(&ids)?])?;
    Ok(())
}

fn get_group(tx: &Transaction<'_>, id: GroupId) -> DbResult<Option<GroupRecord>> {
    let key = id.to_string();
    type Raw = (
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
        i64,
        Option<i64>,
    );
    let raw: Option<Raw> = tx
        .prepare_cached(GROUP_GET)?
        .query_row([&key], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((name, concurrency, on_complete, job_id, created_at, finished_at)) = raw else {
        return Ok(None);
    };
    let bad = |what: String| Error::Storage(format!("corrupt row for group {id}: {what}"));
    let mut counts = GroupCounts::default();
    let mut stmt = tx.prepare_cached(GROUP_COUNTS)?;
    for row in stmt.query_map([&key], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (status, n) = row?;
        let status = status
            .parse::<JobStatus>()
            .map_err(|e| bad(format!("a member's status: {e}")))?;
        counts.add(status, u64::try_from(n).unwrap_or(0));
    }
    Ok(Some(GroupRecord {
        id,
        name,
        concurrency: concurrency
            .map(|c| u32::try_from(c).map_err(|_| bad(format!("concurrency {c}"))))
            .transpose()?,
        on_complete: on_complete
            .map(|t| serde_json::from_str(&t).map_err(|e| bad(format!("on_complete: {e}"))))
            .transpose()?,
        on_complete_job_id: job_id
            .map(|j| {
                j.parse::<JobId>()
                    .map_err(|e| bad(format!("on_complete_job_id: {e}")))
            })
            .transpose()?,
        created_at: Timestamp::from_micros(created_at),
        finished_at: finished_at.map(Timestamp::from_micros),
        counts,
    }))
}

/// The best `limit` claimable jobs of the claim's queues and names, leaving out members of
/// the groups in `full`.
fn claim_candidates(
    tx: &Transaction<'_>,
    p: &JobClaimParams,
    limit: usize,
    full: &BTreeSet<String>,
) -> DbResult<Vec<Candidate>> {
    let names = serde_json::to_string(&p.names)?;
    let full = serde_json::to_string(full)?;
    let queues: BTreeSet<&str> = p.queues.iter().map(String::as_str).collect();
    let now = p.now.as_micros();
    let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // One index walk per queue, each stopping after `limit` rows; then the best `limit`
    // overall. (A single `queue IN (...)` query would sort every ready job of the queues.)
    let mut candidates = Vec::new();
    let mut select = tx.prepare_cached(CLAIM_CANDIDATES)?;
    for queue in queues {
        let rows = select.query_map(params![queue, now, names, sql_limit, full], |r| {
            Ok(Candidate {
                id: r.get(0)?,
                priority: r.get(1)?,
                run_at: r.get(2)?,
                heartbeat_ms: r.get(3)?,
                group_id: r.get(4)?,
            })
        })?;
        for row in rows {
            candidates.push(row?);
        }
    }
    candidates.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then_with(|| a.id.cmp(&b.id))
    });
    candidates.truncate(limit);
    Ok(candidates)
}

/// The candidates to claim: the best `limit`, where a member of a group with a
/// concurrency limit counts only while the group has room. Members passed over do not
/// take the place of other jobs: the full group is left out and the walk done again.
fn pick_candidates(tx: &Transaction<'_>, p: &JobClaimParams) -> DbResult<Vec<Candidate>> {
    let limit = usize::try_from(p.limit).unwrap_or(usize::MAX);
    let mut room: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = tx.prepare_cached(GROUPS_LIMITED)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (g, n) = row?;
            room.insert(g, n);
        }
    }
    let mut full: BTreeSet<String> = room
        .iter()
        .filter(|(_, &n)| n <= 0)
        .map(|(g, _)| g.clone())
        .collect();
    let mut picked: Vec<Candidate> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let mut passed_over = false;
        for c in claim_candidates(tx, p, limit, &full)? {
            if picked.len() == limit {
                break;
            }
            if !seen.insert(c.id.clone()) {
                continue;
            }
            if let Some(left) = c.group_id.as_ref().and_then(|g| room.get_mut(g)) {
                if *left <= 0 {
                    passed_over = true;
                    continue;
                }
                *left -= 1;
                if *left == 0 {
                    full.extend(c.group_id.clone());
                }
            }
            picked.push(c);
        }
        if !passed_over || picked.len() == limit {
            break;
        }
    }
    // Claim order, as one walk would have given it.
    picked.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(picked)
}

fn claim_jobs(tx: &Transaction<'_>, p: &JobClaimParams) -> DbResult<Vec<ClaimedJob>> {
    let now = p.now.as_micros();
    let candidates = pick_candidates(tx, p)?;
    let mut update = tx.prepare_cached(CLAIM_ONE)?;
    let mut claimed = Vec::with_capacity(candidates.len());
    for c in candidates {
        let id = c.id.as_str();
        let lease = LeaseToken::new();
        // A damaged heartbeat_ms fails the job below; its lease length no longer matters.
        let heartbeat_ms: u64 = from_sql_int(c.heartbeat_ms, id, "heartbeat_ms").unwrap_or(0);
        let expires = p.now.plus(lease_duration(heartbeat_ms));
        let row = update
            .query_row(
                params![id, now, p.worker_id, lease.to_string(), expires.as_micros()],
                ClaimedRow::from_row,
            )
            .optional()?;
        // Under the write lock the candidate is still pending, so a row always comes back.
        let Some(row) = row else { continue };
        match decode_claimed(id, row, lease, p.now) {
            Ok(job) => claimed.push(job),
            // Retrying cannot repair the row: fail the job now, in this transaction, so it
            // is never claimed again and the rest of the batch still runs.
            Err(e) => fail_corrupt(tx, id, lease, &e, p.now)?,
        }
    }
    Ok(claimed)
}

/// End the attempt just claimed of a job whose row does not decode: `failed`, with the
/// reason in `last_error` and the history.
fn fail_corrupt(
    tx: &Transaction<'_>,
    id: &str,
    lease: LeaseToken,
    reason: &Error,
    now: Timestamp,
) -> DbResult<()> {
    let message = match reason {
        Error::Storage(m) => m.clone(),
        other => other.to_string(),
    };
    log::error!("failing job {id}: {message}");
    let error = serde_json::to_string(&ErrorInfo::engine("CorruptJob", message))?;
    let at = now.as_micros();
    let changed = tx
        .prepare_cached(JOB_FINISH)?
        .query_row(
            params![
                id,
                lease.to_string(),
                JobStatus::Failed.as_str(),
                None::<i64>,
                at,
                error,
                at,
                AttemptOutcome::Failed.as_str(),
            ],
            member_change,
        )
        .optional()?;
    let mut ended = BTreeSet::new();
    note_final(&mut ended, changed);
    finish_groups(tx, &ended, now)
}

/// A member's group and new status, as `RETURNING group_id, status` gives them.
type MemberChange = (Option<String>, String);

fn member_change(r: &Row<'_>) -> rusqlite::Result<MemberChange> {
    Ok((r.get(0)?, r.get(1)?))
}

/// Add the group of a job that became final to `ended`.
fn note_final(ended: &mut BTreeSet<String>, change: Option<MemberChange>) {
    if let Some((Some(group), status)) = change {
        if status.parse::<JobStatus>().is_ok_and(JobStatus::is_final) {
            ended.insert(group);
        }
    }
}

/// Finish the groups in `ended` whose members are now all final (each at most once, ever
/// storing its on_complete job once), in the caller's transaction.
fn finish_groups(tx: &Transaction<'_>, ended: &BTreeSet<String>, now: Timestamp) -> DbResult<()> {
    if ended.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(GROUP_FINISH)?;
    for group in ended {
        let job_id = JobId::new();
        let row: Option<(Option<String>, Option<String>)> = stmt
            .query_row(params![group, now.as_micros(), job_id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((Some(template), Some(stored_id))) = row else {
            continue;
        };
        if stored_id != job_id.to_string() {
            continue; // stored when the group first finished
        }
        match serde_json::from_str::<JobTemplate>(&template) {
            Ok(template) => {
                let mut job = template.to_job();
                job.id = job_id;
                insert_jobs(
                    tx,
                    &JobInsertManyParams {
                        jobs: vec![job],
                        now,
                    },
                )?;
            }
            // The members' changes must still be recorded: the group finishes without it.
            Err(e) => log::error!(
                "group {group}: its on_complete job is not stored, the row is corrupt: {e}"
            ),
        }
    }
    Ok(())
}

fn heartbeat_jobs(tx: &Transaction<'_>, p: &JobHeartbeatParams) -> DbResult<JobHeartbeatResult> {
    let mut check = tx.prepare_cached(LEASE_HEARTBEAT_MS)?;
    let mut extend = tx.prepare_cached(LEASE_EXTEND)?;
    let mut out = JobHeartbeatResult::default();
    for (id, lease) in &p.leases {
        let id_text = id.to_string();
        let held: Option<(i64, bool)> = check
            .query_row(params![id_text, lease.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((heartbeat_ms, cancel_requested)) = held else {
            continue;
        };
        let heartbeat_ms: u64 = from_sql_int(heartbeat_ms, &id_text, "heartbeat_ms")?;
        let expires = p.now.plus(lease_duration(heartbeat_ms));
        extend.execute(params![id_text, expires.as_micros()])?;
        out.extended.push(*id);
        if cancel_requested {
            out.cancel_requested.push(*id);
        }
    }
    Ok(out)
}

fn finish_jobs(tx: &Transaction<'_>, p: &JobFinishManyParams) -> DbResult<Vec<bool>> {
    let mut stmt = tx.prepare_cached(JOB_FINISH)?;
    let mut ended = BTreeSet::new();
    let now = p.now.as_micros();
    let mut accepted = Vec::with_capacity(p.finishes.len());
    for f in &p.finishes {
        let (status, run_at, finished_at, error, outcome) = match &f.outcome {
            FinishOutcome::Completed => (
                JobStatus::Completed,
                None,
                Some(now),
                None,
                AttemptOutcome::Completed,
            ),
            FinishOutcome::Retry { retry_at, error } => (
                JobStatus::Retryable,
                Some(retry_at.as_micros()),
                None,
                Some(serde_json::to_string(error)?),
                AttemptOutcome::Failed,
            ),
            FinishOutcome::Failed { error } => (
                JobStatus::Failed,
                None,
                Some(now),
                Some(serde_json::to_string(error)?),
                AttemptOutcome::Failed,
            ),
            FinishOutcome::Snoozed { run_at } => (
                JobStatus::Scheduled,
                Some(run_at.as_micros()),
                None,
                None,
                AttemptOutcome::Snoozed,
            ),
        };
        let changed = stmt
            .query_row(
                params![
                    f.id.to_string(),
                    f.lease.to_string(),
                    status.as_str(),
                    run_at,
                    finished_at,
                    error,
                    now,
                    outcome.as_str(),
                ],
                member_change,
            )
            .optional()?;
        accepted.push(changed.is_some());
        note_final(&mut ended, changed);
    }
    finish_groups(tx, &ended, p.now)?;
    for f in &p.finishes {
        match f.outcome {
            FinishOutcome::Completed => crash_point(CrashPoint::BeforeCompleteCommit),
            FinishOutcome::Retry { .. } => crash_point(CrashPoint::DuringRetryReschedule),
            FinishOutcome::Failed { .. } | FinishOutcome::Snoozed { .. } => {}
        }
    }
    Ok(accepted)
}

fn release_jobs(tx: &Transaction<'_>, p: &JobReleaseParams) -> DbResult<u64> {
    let mut stmt = tx.prepare_cached(JOB_RELEASE)?;
    let mut released = 0;
    let mut ended = BTreeSet::new();
    for (id, lease) in &p.leases {
        let changed = stmt
            .query_row(
                params![id.to_string(), lease.to_string(), p.now.as_micros()],
                member_change,
            )
            .optional()?;
        released += u64::from(changed.is_some());
        note_final(&mut ended, changed);
    }
    finish_groups(tx, &ended, p.now)?;
    Ok(released)
}

fn set_progress(tx: &Transaction<'_>, p: &JobProgressSetParams) -> DbResult<bool> {
    let (set, progress, message) = match &p.progress {
        Some((progress, message)) => (true, Some(i64::from(*progress)), message.as_deref()),
        None => (false, None, None),
    };
    let changed = tx.prepare_cached(JOB_PROGRESS_SET)?.execute(params![
        p.id.to_string(),
        p.lease.to_string(),
        progress,
        message,
        set,
        p.state,
    ])?;
    Ok(changed == 1)
}

fn reclaim_jobs(tx: &Transaction<'_>, p: &JobReclaimParams) -> DbResult<u64> {
    let mut stmt = tx.prepare_cached(JOB_RECLAIM)?;
    let mut ended = BTreeSet::new();
    let mut reclaimed = 0;
    for change in stmt.query_map([p.now.as_micros()], member_change)? {
        reclaimed += 1;
        note_final(&mut ended, Some(change?));
    }
    finish_groups(tx, &ended, p.now)?;
    Ok(reclaimed)
}

fn get_job(tx: &Transaction<'_>, id: JobId) -> DbResult<Option<JobRecord>> {
    let mut stmt = tx.prepare_cached(JOB_GET)?;
    let raw = stmt
        .query_row([id.to_string()], RawJob::from_row)
        .optional()?;
    Ok(raw.map(RawJob::into_record).transpose()?)
}

/// A [`JobFilter`] as the parameters `?1` to `?7` of [`filter_conditions!`].
struct Filter {
    ids: Option<String>,
    statuses: Option<String>,
    name: Option<String>,
    queue: Option<String>,
    created_from: Option<i64>,
    created_to: Option<i64>,
    args_contains: Option<String>,
    group: Option<String>,
    /// Which form of a [`filtered!`] statement to run.
    form: usize,
}

impl Filter {
    fn new(f: &JobFilter) -> DbResult<Self> {
        let ids = f
            .ids
            .as_ref()
            .map(|ids| {
                let texts: Vec<String> = ids.iter().map(JobId::to_string).collect();
                serde_json::to_string(&texts)
            })
            .transpose()?;
        let statuses = if f.statuses.is_empty() {
            None
        } else {
            let names: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
            Some(serde_json::to_string(&names)?)
        };
        let form = if ids.is_some() {
            0
        } else if f.group.is_some() {
            3
        } else if statuses.is_some() {
            1
        } else {
            2
        };
        Ok(Filter {
            ids,
            statuses,
            name: f.name.clone(),
            queue: f.queue.clone(),
            created_from: f.created_from.map(Timestamp::as_micros),
            created_to: f.created_to.map(Timestamp::as_micros),
            args_contains: f.args_contains.clone(),
            group: f.group.map(|g| g.to_string()),
            form,
        })
    }

    /// The form of `sql` that suits this filter.
    fn pick(&self, sql: [&'static str; 4]) -> &'static str {
        sql[self.form]
    }

    /// The filter's parameters followed by `extra` (`?9` onwards).
    fn params<'a>(&'a self, extra: &[&'a dyn ToSql]) -> Vec<&'a dyn ToSql> {
        let mut all: Vec<&dyn ToSql> = vec![
            &self.ids,
            &self.statuses,
            &self.name,
            &self.queue,
            &self.created_from,
            &self.created_to,
            &self.args_contains,
            &self.group,
        ];
        all.extend_from_slice(extra);
        all
    }
}

fn list_jobs(tx: &Transaction<'_>, p: &JobListParams) -> DbResult<Vec<JobRecord>> {
    let f = Filter::new(&p.filter)?;
    let mut stmt = tx.prepare_cached(f.pick(JOB_LIST))?;
    let cursor = p.cursor.map(|c| c.to_string());
    let rows = stmt.query_map(&*f.params(&[&cursor, &p.limit]), RawJob::from_row)?;
    let mut jobs = Vec::new();
    for raw in rows {
        jobs.push(raw?.into_record()?);
    }
    Ok(jobs)
}

fn count_matching(tx: &Transaction<'_>, p: &JobCountParams) -> DbResult<u64> {
    let f = Filter::new(&p.filter)?;
    let n: i64 = tx
        .prepare_cached(f.pick(JOB_COUNT))?
        .query_row(&*f.params(&[]), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn cancel_jobs(tx: &Transaction<'_>, p: &JobCancelParams) -> DbResult<JobCancelResult> {
    let f = Filter::new(&p.filter)?;
    let now = p.now.as_micros();
    let mut stmt = tx.prepare_cached(f.pick(JOB_CANCEL))?;
    let rows = stmt.query_map(&*f.params(&[&now]), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut result = JobCancelResult::default();
    let mut ended = BTreeSet::new();
    for row in rows {
        let (status, group) = row?;
        if status == JobStatus::Running.as_str() {
            result.requested += 1;
        } else {
            result.cancelled += 1;
            note_final(&mut ended, Some((group, status)));
        }
    }
    finish_groups(tx, &ended, p.now)?;
    Ok(result)
}

fn retry_jobs(tx: &Transaction<'_>, p: &JobRetryParams) -> DbResult<u64> {
    let f = Filter::new(&p.filter)?;
    let now = p.now.as_micros();
    let mut stmt = tx.prepare_cached(f.pick(JOB_RETRY))?;
    let mut retried = 0;
    let mut reopened = BTreeSet::new();
    for group in stmt.query_map(&*f.params(&[&now]), |r| r.get::<_, Option<String>>(0))? {
        retried += 1;
        reopened.extend(group?);
    }
    let mut reopen = tx.prepare_cached(GROUP_REOPEN)?;
    for group in &reopened {
        reopen.execute([group])?;
    }
    Ok(retried)
}

fn delete_jobs(tx: &Transaction<'_>, p: &JobDeleteParams) -> DbResult<u64> {
    let f = Filter::new(&p.filter)?;
    let mut stmt = tx.prepare_cached(f.pick(JOB_DELETE))?;
    let groups = stmt.query_map(&*f.params(&[]), |r| r.get::<_, Option<String>>(0))?;
    drop_empty_groups(tx, groups)
}

fn prune_jobs(tx: &Transaction<'_>, p: &JobPruneParams) -> DbResult<u64> {
    let statuses: Vec<&str> = p
        .statuses
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect();
    let mut stmt = tx.prepare_cached(JOB_PRUNE)?;
    let groups = stmt.query_map(
        params![
            serde_json::to_string(&statuses)?,
            p.finished_before.as_micros(),
            p.limit
        ],
        |r| r.get::<_, Option<String>>(0),
    )?;
    drop_empty_groups(tx, groups)
}

/// Count the deleted jobs whose groups the rows name, and delete those groups that have no
/// members left.
fn drop_empty_groups(
    tx: &Transaction<'_>,
    groups: impl Iterator<Item = rusqlite::Result<Option<String>>>,
) -> DbResult<u64> {
    let mut deleted = 0;
    let mut touched = BTreeSet::new();
    for group in groups {
        deleted += 1;
        touched.extend(group?);
    }
    let mut drop = tx.prepare_cached(GROUP_DROP_EMPTY)?;
    for group in &touched {
        drop.execute([group])?;
    }
    Ok(deleted)
}

fn count_jobs(tx: &Transaction<'_>) -> DbResult<Vec<QueueCount>> {
    let mut stmt = tx.prepare_cached(JOB_COUNTS)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut counts = Vec::new();
    for row in rows {
        let (queue, status, count) = row?;
        counts.push(QueueCount {
            status: status.parse::<JobStatus>().map_err(|e| {
                Error::Storage(format!(
                    "corrupt status in hauler_jobs (queue {queue:?}): {e}"
                ))
            })?,
            count: u64::try_from(count).unwrap_or(0),
            queue,
        });
    }
    counts.sort_by(|a, b| a.queue.cmp(&b.queue).then(a.status.cmp(&b.status)));
    Ok(counts)
}

fn next_run_at(tx: &Transaction<'_>, p: &JobNextRunAtParams) -> DbResult<Option<Timestamp>> {
    if p.names.is_empty() {
        return Ok(None);
    }
    let names = serde_json::to_string(&p.names)?;
    let queues: BTreeSet<&str> = p.queues.iter().map(String::as_str).collect();
    let mut stmt = tx.prepare_cached(NEXT_RUN_AT)?;
    let mut earliest: Option<i64> = None;
    for queue in queues {
        let run_at: Option<i64> = stmt
            .query_row(params![queue, names], |r| r.get(0))
            .optional()?;
        earliest = match (earliest, run_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest.map(Timestamp::from_micros))
}

type RawSchedule = (String, String, String, String, [Option<i64>; 4]);

fn schedule_from_row(row: &Row<'_>) -> rusqlite::Result<RawSchedule> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        [row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?],
    ))
}

fn decode_schedule(raw: RawSchedule) -> Result<ScheduleRecord> {
    let (name, spec, catch_up, job, [next, last, created, updated]) = raw;
    let bad = |what: String| Error::Storage(format!("corrupt row for schedule {name:?}: {what}"));
    let ts = |v: Option<i64>| v.map(Timestamp::from_micros);
    Ok(ScheduleRecord {
        spec: serde_json::from_str(&spec).map_err(|e| bad(format!("spec: {e}")))?,
        catch_up: catch_up.parse().map_err(|e| bad(format!("{e}")))?,
        job: serde_json::from_str(&job).map_err(|e| bad(format!("job: {e}")))?,
        next_run_at: ts(next).ok_or_else(|| bad("no next_run_at".into()))?,
        last_enqueued_at: ts(last),
        created_at: ts(created).ok_or_else(|| bad("no created_at".into()))?,
        updated_at: ts(updated).ok_or_else(|| bad("no updated_at".into()))?,
        name,
    })
}

fn upsert_schedule(tx: &Transaction<'_>, p: &ScheduleUpsertParams) -> DbResult<ScheduleRecord> {
    let s = &p.schedule;
    let raw = tx.prepare_cached(SCHEDULE_UPSERT)?.query_row(
        params![
            s.name,
            serde_json::to_string(&s.spec)?,
            s.catch_up.as_str(),
            serde_json::to_string(&s.job)?,
            p.next_run_at.as_micros(),
            p.now.as_micros(),
        ],
        schedule_from_row,
    )?;
    Ok(decode_schedule(raw)?)
}

fn tick_schedule(tx: &Transaction<'_>, p: ScheduleTickParams) -> DbResult<bool> {
    let taken = tx.prepare_cached(SCHEDULE_TICK)?.execute(params![
        p.name,
        p.due.as_micros(),
        p.next_run_at.as_micros(),
        p.job.is_some(),
        p.now.as_micros(),
    ])? == 1;
    if let (true, Some(job)) = (taken, p.job) {
        insert_jobs(
            tx,
            &JobInsertManyParams {
                jobs: vec![job],
                now: p.now,
            },
        )?;
    }
    Ok(taken)
}

fn run_schedule_now(tx: &Transaction<'_>, p: &ScheduleRunNowParams) -> DbResult<Option<JobId>> {
    let job: Option<String> = tx
        .prepare_cached(SCHEDULE_RUN_NOW)?
        .query_row(params![p.name, p.now.as_micros()], |r| r.get(0))
        .optional()?;
    let Some(job) = job else { return Ok(None) };
    let template: JobTemplate = serde_json::from_str(&job)
        .map_err(|e| Error::Storage(format!("corrupt row for schedule {:?}: job: {e}", p.name)))?;
    let job = template.to_job();
    let id = job.id;
    insert_jobs(
        tx,
        &JobInsertManyParams {
            jobs: vec![job],
            now: p.now,
        },
    )?;
    Ok(Some(id))
}

fn list_schedules(tx: &Transaction<'_>) -> DbResult<Vec<ScheduleRecord>> {
    let mut stmt = tx.prepare_cached(SCHEDULE_LIST)?;
    let raws = stmt
        .query_map([], schedule_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(raws
        .into_iter()
        .map(decode_schedule)
        .collect::<Result<_>>()?)
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn job_insert_many(&self, params: JobInsertManyParams) -> Result<()> {
        if params.jobs.is_empty() {
            return self.ensure_open();
        }
        self.run(move |db| db.write("job_insert_many", |tx| insert_jobs(tx, &params)))
            .await
    }

    async fn group_insert(&self, params: GroupInsertParams) -> Result<()> {
        if params.jobs.is_empty() {
            self.ensure_open()?;
            return Err(Error::Storage(format!(
                "group {} has no member jobs",
                params.group.id
            )));
        }
        self.run(move |db| db.write("group_insert", |tx| insert_group(tx, &params)))
            .await
    }

    async fn group_get(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        self.run(move |db| db.read("group_get", |tx| get_group(tx, id)))
            .await
    }

    async fn job_claim(&self, params: JobClaimParams) -> Result<Vec<ClaimedJob>> {
        if params.limit == 0 || params.queues.is_empty() || params.names.is_empty() {
            self.ensure_open()?;
            return Ok(Vec::new());
        }
        self.run(move |db| db.write("job_claim", |tx| claim_jobs(tx, &params)))
            .await
    }

    async fn job_heartbeat(&self, params: JobHeartbeatParams) -> Result<JobHeartbeatResult> {
        if params.leases.is_empty() {
            self.ensure_open()?;
            return Ok(JobHeartbeatResult::default());
        }
        self.run(move |db| db.write("job_heartbeat", |tx| heartbeat_jobs(tx, &params)))
            .await
    }

    async fn job_finish_many(&self, params: JobFinishManyParams) -> Result<Vec<bool>> {
        if params.finishes.is_empty() {
            self.ensure_open()?;
            return Ok(Vec::new());
        }
        self.run(move |db| db.write("job_finish_many", |tx| finish_jobs(tx, &params)))
            .await
    }

    async fn job_release(&self, params: JobReleaseParams) -> Result<u64> {
        if params.leases.is_empty() {
            self.ensure_open()?;
            return Ok(0);
        }
        self.run(move |db| db.write("job_release", |tx| release_jobs(tx, &params)))
            .await
    }

    async fn job_progress_set(&self, params: JobProgressSetParams) -> Result<bool> {
        self.run(move |db| db.write("job_progress_set", |tx| set_progress(tx, &params)))
            .await
    }

    async fn job_reclaim_expired(&self, params: JobReclaimParams) -> Result<u64> {
        self.run(move |db| db.write("job_reclaim_expired", |tx| reclaim_jobs(tx, &params)))
            .await
    }

    async fn job_get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.run(move |db| db.read("job_get", |tx| get_job(tx, id)))
            .await
    }

    async fn job_list(&self, params: JobListParams) -> Result<Vec<JobRecord>> {
        self.run(move |db| db.read("job_list", |tx| list_jobs(tx, &params)))
            .await
    }

    async fn job_count(&self, params: JobCountParams) -> Result<u64> {
        self.run(move |db| db.read("job_count", |tx| count_matching(tx, &params)))
            .await
    }

    async fn job_cancel(&self, params: JobCancelParams) -> Result<JobCancelResult> {
        self.run(move |db| db.write("job_cancel", |tx| cancel_jobs(tx, &params)))
            .await
    }

    async fn job_retry(&self, params: JobRetryParams) -> Result<u64> {
        self.run(move |db| db.write("job_retry", |tx| retry_jobs(tx, &params)))
            .await
    }

    async fn job_delete(&self, params: JobDeleteParams) -> Result<u64> {
        self.run(move |db| db.write("job_delete", |tx| delete_jobs(tx, &params)))
            .await
    }

    async fn job_prune(&self, params: JobPruneParams) -> Result<u64> {
        if params.limit == 0 || !params.statuses.iter().any(|s| s.is_final()) {
            self.ensure_open()?;
            return Ok(0);
        }
        self.run(move |db| db.write("job_prune", |tx| prune_jobs(tx, &params)))
            .await
    }

    async fn job_counts(&self) -> Result<Vec<QueueCount>> {
        self.run(move |db| db.read("job_counts", count_jobs)).await
    }

    async fn job_next_run_at(&self, params: JobNextRunAtParams) -> Result<Option<Timestamp>> {
        self.run(move |db| db.read("job_next_run_at", |tx| next_run_at(tx, &params)))
            .await
    }

    async fn schedule_upsert(&self, params: ScheduleUpsertParams) -> Result<ScheduleRecord> {
        self.run(move |db| db.write("schedule_upsert", |tx| upsert_schedule(tx, &params)))
            .await
    }

    async fn schedule_tick(&self, params: ScheduleTickParams) -> Result<bool> {
        self.run(move |db| db.write("schedule_tick", |tx| tick_schedule(tx, params)))
            .await
    }

    async fn schedule_run_now(&self, params: ScheduleRunNowParams) -> Result<Option<JobId>> {
        self.run(move |db| db.write("schedule_run_now", |tx| run_schedule_now(tx, &params)))
            .await
    }

    async fn schedule_delete(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.run(move |db| {
            db.write("schedule_delete", |tx| {
                Ok(tx.prepare_cached(SCHEDULE_DELETE)?.execute([&name])? == 1)
            })
        })
        .await
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleRecord>> {
        self.run(move |db| db.read("schedule_list", list_schedules))
            .await
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.poll_interval)
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.close())
            .await
            .map_err(|e| Error::Storage(format!("sqlite task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql`, one detail line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let explain = ["EXPLAIN QUERY PLAN ", sql].concat();
        let mut stmt = conn.prepare(&explain).unwrap();
        let count = stmt.parameter_count();
        let nulls = vec![rusqlite::types::Null; count];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn hot_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        let mut conn = open_connection(&path, &SqliteOptions::default()).unwrap();
        migrate(&mut conn, &path).unwrap();

        let claim = plan(&conn, CLAIM_CANDIDATES);
        assert!(
            claim.contains("USING INDEX hauler_jobs_claim (queue=?)"),
            "{claim}"
        );
        assert!(
            !claim.contains("TEMP B-TREE"),
            "claim must walk the index in order: {claim}"
        );

        let next = plan(&conn, NEXT_RUN_AT);
        assert!(
            next.contains("USING INDEX hauler_jobs_pending_run_at (queue=?)"),
            "{next}"
        );
        assert!(!next.contains("TEMP B-TREE"), "{next}");

        let reclaim = plan(&conn, JOB_RECLAIM);
        assert!(
            reclaim.contains("INDEX hauler_jobs_lease (lease_expires_at<?)"),
            "{reclaim}"
        );

        for one in [
            CLAIM_ONE,
            JOB_FINISH,
            JOB_RELEASE,
            JOB_PROGRESS_SET,
            LEASE_HEARTBEAT_MS,
            LEASE_EXTEND,
            JOB_GET,
        ] {
            let p = plan(&conn, one);
            assert!(
                p.contains("sqlite_autoindex_hauler_jobs_1 (id=?)"),
                "{one}\n{p}"
            );
        }

        let [list_ids, list_status, list_all, list_group] = JOB_LIST.map(|sql| plan(&conn, sql));
        assert!(
            list_group.contains("hauler_jobs_group (group_id=?)"),
            "{list_group}"
        );
        assert!(
            list_all.contains("sqlite_autoindex_hauler_jobs_1 (id<?)"),
            "{list_all}"
        );
        assert!(!list_all.contains("TEMP B-TREE"), "{list_all}");
        assert!(
            list_status.contains("hauler_jobs_status (status=? AND id<?)"),
            "{list_status}"
        );
        assert!(
            list_ids.contains("sqlite_autoindex_hauler_jobs_1 (id=?)"),
            "{list_ids}"
        );
        // Every filtered statement reaches jobs by id or status when filtered on them.
        for sql in [JOB_COUNT, JOB_CANCEL, JOB_RETRY, JOB_DELETE] {
            let [by_ids, by_status, _, by_group] = sql.map(|one| plan(&conn, one));
            assert!(
                by_group.contains("hauler_jobs_group (group_id=?"),
                "{}\n{by_group}",
                sql[3]
            );
            // By primary key, or by status and id (the status index ends with the id).
            assert!(
                by_ids.contains("id=?)") && !by_ids.contains("SCAN hauler_jobs"),
                "{}\n{by_ids}",
                sql[0]
            );
            assert!(
                by_status.contains("hauler_jobs_status (status=?)"),
                "{}\n{by_status}",
                sql[1]
            );
        }
        let prune = plan(&conn, JOB_PRUNE);
        assert!(
            prune.contains("USING INDEX hauler_jobs_finished (status=? AND finished_at<?)"),
            "{prune}"
        );

        let counts = plan(&conn, JOB_COUNTS);
        assert!(
            counts.contains("COVERING INDEX hauler_jobs_queue_status"),
            "{counts}"
        );
        assert!(!counts.contains("TEMP B-TREE"), "{counts}");
    }

    #[test]
    fn claim_query_is_not_reprepared_when_its_limit_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qpsg.db");
        let mut conn = open_connection(&path, &SqliteOptions::default()).unwrap();
        migrate(&mut conn, &path).unwrap();
        let mut stmt = conn.prepare_cached(CLAIM_CANDIDATES).unwrap();
        for limit in [1_i64, 4, 2, 3, 1] {
            let mut rows = stmt
                .query(params!["default", 0_i64, "[\"noop\"]", limit, "[]"])
                .unwrap();
            while rows.next().unwrap().is_some() {}
        }
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    /// A row that does not decode fails its own job inside the claim; the claim returns
    /// the other jobs, and the damaged job is never claimed again.
    #[tokio::test]
    async fn corrupt_rows_fail_alone_inside_the_claim() {
        use crate::storage::conformance::{new_job, NAME, QUEUE, T0};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.db");
        let storage = SqliteStorage::open(&path, SqliteOptions::default()).unwrap();
        let jobs: Vec<_> = (0..5).map(|_| new_job(NAME, QUEUE)).collect();
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        storage
            .job_insert_many(JobInsertManyParams { jobs, now: T0 })
            .await
            .unwrap();
        let raw = Connection::open(&path).unwrap();
        for (id, damage) in [
            (ids[1], "version = -1"),
            (ids[2], "args = CAST(x'7b22ff227d' AS TEXT)"),
            (ids[3], "retry = 'garbage'"),
        ] {
            // Test-only SQL built from constants above.
            let sql = format!("UPDATE hauler_jobs SET {damage} WHERE id = ?1");
            assert_eq!(raw.execute(&sql, [id.to_string()]).unwrap(), 1);
        }
        drop(raw);

        let claim = |now| JobClaimParams {
            queues: vec![QUEUE.to_owned()],
            names: vec![NAME.to_owned()],
            limit: 10,
            worker_id: "w".to_owned(),
            now,
        };
        let got: Vec<JobId> = storage
            .job_claim(claim(T0))
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(got, vec![ids[0], ids[4]]);
        assert!(storage.job_claim(claim(T0)).await.unwrap().is_empty());

        let raw = Connection::open(&path).unwrap();
        for (id, reason) in [
            (ids[1], "version -1 is out of range"),
            (ids[2], "args is not valid UTF-8"),
            (ids[3], "retry: "),
        ] {
            let (status, attempt, error): (String, i64, String) = raw
                .query_row(
                    "SELECT status, attempt, last_error FROM hauler_jobs WHERE id = ?1",
                    [id.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!((status.as_str(), attempt), ("failed", 1), "{error}");
            let error: ErrorInfo = serde_json::from_str(&error).unwrap();
            assert_eq!(error.kind, "CorruptJob");
            assert!(error.message.contains(&id.to_string()), "{}", error.message);
            assert!(error.message.contains(reason), "{}", error.message);
        }
    }

    #[test]
    fn migrations_run_once_and_record_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = open_connection(&path, &SqliteOptions::default()).unwrap();
        assert_eq!(schema_version(&conn, &path).unwrap(), 0);
        migrate(&mut conn, &path).unwrap();
        assert_eq!(schema_version(&conn, &path).unwrap(), SCHEMA_VERSION);
        migrate(&mut conn, &path).unwrap();
        assert_eq!(schema_version(&conn, &path).unwrap(), SCHEMA_VERSION);
    }

    /// A file written by the first schema version is upgraded in place: its jobs keep
    /// their data and can be cancelled, retried and pruned.
    #[tokio::test]
    async fn a_version_1_file_is_upgraded() {
        use crate::storage::conformance::{new_job, NAME, QUEUE, T0};
        use crate::storage::JobFilter;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = open_connection(&path, &SqliteOptions::default()).unwrap();
            conn.execute_batch(META_CREATE).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(META_SET_VERSION, ["1"]).unwrap();
        }
        let job = new_job(NAME, QUEUE);
        {
            // Stored by a version-1 hauler: the columns of the first schema only.
            let conn = Connection::open(&path).unwrap();
            conn.execute(
                "INSERT INTO hauler_jobs (id, name, queue, args, status, priority, retry,
                    heartbeat_ms, version, created_at, run_at, finished_at, history)
                 VALUES (?1, ?2, ?3, '{}', 'failed', 0, ?4, 5000, 1, ?5, ?5, ?5,
                    '[{\"attempt\":1,\"worker_id\":\"w\",\"started_at\":1,\"finished_at\":2,\"outcome\":\"failed\",\"error\":null}]')",
                params![
                    job.id.to_string(),
                    job.name,
                    job.queue,
                    job.retry.to_json(),
                    T0.as_micros()
                ],
            )
            .unwrap();
        }
        let storage = SqliteStorage::open(&path, SqliteOptions::default()).unwrap();
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn, &path).unwrap(), SCHEMA_VERSION);
        let got = storage.job_get(job.id).await.unwrap().unwrap();
        assert_eq!(
            (got.status, got.cancel_requested_at, got.history.len()),
            (JobStatus::Failed, None, 1)
        );
        let filter = JobFilter {
            ids: Some(vec![job.id]),
            ..JobFilter::default()
        };
        let retried = storage
            .job_retry(JobRetryParams {
                filter: filter.clone(),
                now: T0,
            })
            .await
            .unwrap();
        assert_eq!(retried, 1);
        let got = storage.job_get(job.id).await.unwrap().unwrap();
        assert_eq!(got.history.len(), 2);
        assert_eq!(got.history[1].outcome, AttemptOutcome::Retried);
    }

    #[test]
    fn stored_outcome_names_match_serde() {
        for outcome in AttemptOutcome::ALL {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{}\"", outcome.as_str()));
        }
    }
}
