//! The PostgreSQL storage: one set of queues shared by workers on many hosts.
//!
//! * **Connections.** A `deadpool-postgres` pool of tokio-postgres connections. The DSN (URL or
//!   key-value form) is parsed by [`tokio_postgres::Config`], so its options pass through;
//!   hauler adds `-c search_path=<schema>` to the startup options, so every statement is
//!   static text naming unqualified tables, and `application_name=hauler` when the DSN sets
//!   none. TLS is not supported yet: connections are made with `NoTls`, so a DSN that
//!   requires TLS (`sslmode=require`) fails to connect.
//! * **Schema.** hauler owns one schema (default `hauler`): `jobs`, `attempts` (the
//!   history: one row per ended attempt) and `schema_migrations`. The migrations run in one
//!   transaction under a transaction-level advisory lock, so processes starting at once
//!   apply each exactly once; a schema written by a newer hauler is refused. [`migrate`]
//!   applies them ahead of time, for deployments whose workers may not create tables.
//! * **Claiming.** One statement: per queue asked for, the best ready jobs from a partial
//!   index that holds only pending jobs (so a claim costs the same however many finished
//!   jobs the table keeps), locked `FOR UPDATE SKIP LOCKED` so claimers pass each other's
//!   rows instead of waiting; the best `limit` of those become `running` under fresh lease
//!   tokens.
//! * **Fencing.** Heartbeat, finish and release each take their whole batch as arrays
//!   (`unnest`) in one statement that changes a job only while it is `running` under the
//!   caller's token. They lock their rows in id order, so two batches over the same jobs
//!   (a worker's heartbeat and its completer) cannot deadlock; reclaim skips locked rows.
//! * **Time.** Every "now" is the caller's (the engine's injected clock), as in the other
//!   storages: the database clock is never read. Hosts sharing a database must keep their
//!   clocks in step (NTP): a host whose clock runs ahead by more than a lease reclaims
//!   jobs that are still heartbeating. Leases are capped at three times
//!   [`MAX_LEASE_HEARTBEAT_MS`].
//! * **Wake-ups.** Storing jobs, and a release, reclaim or retry that makes one runnable,
//!   sends `pg_notify('<schema>_jobs', queue)` in the same transaction.
//!   [`Storage::subscribe`] starts one listener connection per storage, which turns those
//!   notifications into a wake-up of the process's idle workers and reconnects with
//!   backoff when it is cut; polling every `poll_interval` remains the fallback.
//! * **Failures.** Lost connections and server errors become [`Error::Storage`] naming the
//!   operation and the server (never the password); the pool drops closed connections and
//!   opens new ones on the next call.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};
use uuid::Uuid;

use super::{
    Damage, FinishOutcome, GroupInsertParams, JobCancelParams, JobCancelResult, JobClaimParams,
    JobCountParams, JobDeleteParams, JobFilter, JobFinishManyParams, JobHeartbeatParams,
    JobHeartbeatResult, JobInsertManyParams, JobListParams, JobNextRunAtParams,
    JobProgressSetParams, JobPruneParams, JobReclaimParams, JobReleaseParams, JobRetryParams,
    ScheduleRunNowParams, ScheduleTickParams, ScheduleUpsertParams, Storage, LEASE_HEARTBEATS,
};
use crate::error::{Error, Result};
use crate::group::{GroupCounts, GroupRecord};
use crate::model::{
    AttemptOutcome, AttemptRecord, ClaimedJob, ConcurrencyLimit, ErrorInfo, GroupId, InsertedJob,
    JobId, JobLimits, JobRecord, JobStatus, LeaseToken, NewJob, QueueCount, RateLimit, Timestamp,
};
use crate::retry::{MaxRetries, RetryPolicy};
use crate::schedule::{JobTemplate, ScheduleRecord};
use crate::testhook::{crash_point, CrashPoint};

/// Leases are computed from heartbeat intervals of at most this many milliseconds (about
/// 31 years), so the arithmetic stays inside PostgreSQL's ranges.
pub const MAX_LEASE_HEARTBEAT_MS: i64 = 1_000_000_000_000;

/// The longest schema name: the notification channel `<schema>_jobs` must fit in
/// PostgreSQL's 63-byte identifiers.
const MAX_SCHEMA_LEN: usize = 63 - "_jobs".len();

/// The oldest server hauler runs on (13: `gen_random_uuid()` is built in).
const MIN_SERVER_VERSION: i32 = 130_000;

/// Settings of a [`PostgresStorage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The schema hauler's tables live in (default `hauler`): lowercase letters, digits
    /// and `_`, starting with a letter or `_`, at most 58 characters, not `pg_...`.
    pub schema: String,
    /// The most connections the pool opens (default 10).
    pub pool_size: usize,
    /// How often workers look for jobs when no notification arrives (default 1 s).
    pub poll_interval: Duration,
    /// How long opening one connection may take (default 10 s); a DSN's own
    /// `connect_timeout` wins.
    pub connect_timeout: Duration,
    /// How long a call waits for a free pooled connection (default 30 s).
    pub acquire_timeout: Duration,
    /// Wake idle workers with `LISTEN`/`NOTIFY` (default true). Turn off behind a pooler
    /// that cannot hold a session (pgbouncer in transaction mode); workers then poll.
    pub listen: bool,
    /// Apply pending migrations on connect (default true). When false, connecting fails
    /// unless the schema is up to date (see [`migrate`]).
    pub migrate: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "hauler".to_owned(),
            pool_size: 10,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
            listen: true,
            migrate: true,
        }
    }
}

impl PostgresOptions {
    /// Check every setting; the error lists all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if let Some(problem) = schema_problem(&self.schema) {
            problems.push(problem);
        }
        if self.pool_size == 0 {
            problems.push("pool_size must be at least 1".to_owned());
        }
        for (name, d) in [
            ("poll_interval", self.poll_interval),
            ("connect_timeout", self.connect_timeout),
            ("acquire_timeout", self.acquire_timeout),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be positive"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "invalid PostgreSQL options: {}",
                problems.join("; ")
            )))
        }
    }
}

/// What is wrong with `schema` as hauler's schema name, if anything.
fn schema_problem(schema: &str) -> Option<String> {
    let mut chars = schema.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        Some(format!(
            "schema {schema:?} must be a plain identifier: lowercase letters, digits and '_', \
             starting with a letter or '_'"
        ))
    } else if schema.len() > MAX_SCHEMA_LEN {
        Some(format!(
            "schema {schema:?} is longer than {MAX_SCHEMA_LEN} characters"
        ))
    } else if schema.starts_with("pg_") {
        Some(format!(
            "schema {schema:?} must not start with \"pg_\" (reserved by PostgreSQL)"
        ))
    } else {
        None
    }
}

/// A migration: a script run once, in order, and recorded in `schema_migrations`.
struct Migration {
    description: &'static str,
    sql: &'static str,
}

/// Schema migrations, oldest first. A new schema version is a new entry appended here
/// (never an edit of an old one). Every script runs with `search_path` set to hauler's
/// schema, so unqualified names land there.
const MIGRATIONS: &[Migration] = &[
    Migration {
        description: "jobs and their attempts",
        sql: "
    CREATE TABLE jobs (
        id               uuid        NOT NULL PRIMARY KEY,
        name             text        NOT NULL,
        queue            text        NOT NULL,
        -- The job's fields: a JSON object as the producer wrote it (kept as text, so it
        -- round-trips byte for byte and a malformed payload can still be stored and failed).
        args             text        NOT NULL,
        status           text        NOT NULL CHECK (status IN ('scheduled', 'available',
                             'running', 'retryable', 'completed', 'failed', 'cancelled')),
        priority         integer     NOT NULL,
        attempt          integer     NOT NULL DEFAULT 0,
        -- NULL: retry forever.
        max_retries      bigint,
        -- The RetryPolicy as JSON.
        retry            text        NOT NULL,
        timeout_ms       bigint,
        heartbeat_ms     bigint      NOT NULL,
        version          bigint      NOT NULL,
        -- Stored only; deduplication (issue: unique jobs) comes with its own migration.
        unique_key       text,
        created_at       timestamptz NOT NULL,
        run_at           timestamptz NOT NULL,
        started_at       timestamptz,
        finished_at      timestamptz,
        lease_expires_at timestamptz,
        worker_id        text,
        lease_token      uuid,
        -- The most recent ErrorInfo as JSON.
        last_error       text
    );
    -- Claims walk this per queue in claim order; it holds only pending jobs.
    CREATE INDEX jobs_claim ON jobs (queue, priority DESC, run_at, id)
        WHERE status IN ('scheduled', 'available', 'retryable');
    CREATE INDEX jobs_pending_run_at ON jobs (queue, run_at)
        WHERE status IN ('scheduled', 'available', 'retryable');
    CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
    CREATE INDEX jobs_status ON jobs (status, id);
    CREATE INDEX jobs_queue_status ON jobs (queue, status);

    CREATE TABLE attempts (
        seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        attempt     integer     NOT NULL,
        worker_id   text        NOT NULL,
        started_at  timestamptz NOT NULL,
        finished_at timestamptz NOT NULL,
        outcome     text        NOT NULL CHECK (outcome IN ('completed', 'failed',
                        'lease_expired', 'released')),
        -- An ErrorInfo as JSON.
        error       text
    );
    CREATE INDEX attempts_job ON attempts (job_id, seq);",
    },
    Migration {
        description: "cancelling running jobs, manual retries, pruning by age",
        sql: "
    -- Set while a running job is asked to stop; it then ends 'cancelled'.
    ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
    -- Retention and prune walk finished jobs by status and age.
    CREATE INDEX jobs_finished ON jobs (status, finished_at) WHERE finished_at IS NOT NULL;
    -- Two more history outcomes. The old rows satisfy the narrower old check, so the new
    -- one need not scan them (NOT VALID still checks every row written from now on).
    ALTER TABLE attempts DROP CONSTRAINT attempts_outcome_check;
    ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_check CHECK (outcome IN (
        'completed', 'failed', 'lease_expired', 'released', 'cancelled', 'retried'))
        NOT VALID;",
    },
    Migration {
        description: "schedule entries (cron and fixed-interval jobs)",
        sql: "
    -- One row per entry. A tick is taken by moving next_run_at from the tick to the
    -- following one (compare-and-set under the row lock), so each tick stores one job
    -- however many workers race for it.
    CREATE TABLE schedules (
        name             text        NOT NULL PRIMARY KEY,
        -- The ScheduleSpec as JSON: a cron expression and time zone, or an interval.
        spec             text        NOT NULL,
        catch_up         text        NOT NULL CHECK (catch_up IN ('one', 'none')),
        -- The JobTemplate as JSON: job name, queue, args and options.
        job              text        NOT NULL,
        next_run_at      timestamptz NOT NULL,
        last_enqueued_at timestamptz,
        created_at       timestamptz NOT NULL,
        updated_at       timestamptz NOT NULL
    );",
    },
    Migration {
        description: "snoozed jobs",
        sql: "
    -- One more history outcome: a job that asked to run again later (not counted).
    ALTER TABLE attempts DROP CONSTRAINT attempts_outcome_check;
    ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_check CHECK (outcome IN (
        'completed', 'failed', 'lease_expired', 'released', 'cancelled', 'retried',
        'snoozed'))
        NOT VALID;",
    },
    Migration {
        description: "job progress and state",
        sql: "
    -- The last progress a running job reported (0 to 100) and its message.
    ALTER TABLE jobs ADD COLUMN progress smallint;
    ALTER TABLE jobs ADD COLUMN progress_message text;
    -- The job's own state: a JSON object as text, kept across attempts.
    ALTER TABLE jobs ADD COLUMN state text;",
    },
    Migration {
        description: "unique jobs, concurrency and rate limits",
        sql: "
    -- A unique job's key is held while its status is one of its own unique states
    -- (',scheduled,available,...,'): the partial unique index makes a second holder
    -- impossible, whichever connection writes it. position() and || are immutable.
    ALTER TABLE jobs ADD COLUMN unique_states text;
    ALTER TABLE jobs ADD COLUMN concurrency_key text;
    ALTER TABLE jobs ADD COLUMN concurrency_limit integer;
    ALTER TABLE jobs ADD COLUMN rate_key text;
    ALTER TABLE jobs ADD COLUMN rate_limit integer;
    ALTER TABLE jobs ADD COLUMN rate_window_ms bigint;
    CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND position(',' || status || ',' in unique_states) > 0;
    -- Claims count the running jobs of a concurrency key.
    CREATE INDEX jobs_running_key ON jobs (concurrency_key) WHERE status = 'running';
    -- The starts of rate-limited jobs (a sliding window per key).
    CREATE TABLE rate_starts (
        key        text        NOT NULL,
        started_at timestamptz NOT NULL
    );
    CREATE INDEX rate_starts_key ON rate_starts (key, started_at);",
    },
    Migration {
        description: "job groups",
        sql: "
    -- A group of member jobs. It finishes (finished_at set, on_complete stored once under
    -- on_complete_job_id) in the transaction that makes its last member final. Its
    -- concurrency limit is held by its members' concurrency key (the previous migration).
    CREATE TABLE job_groups (
        id                 uuid        NOT NULL PRIMARY KEY,
        name               text        NOT NULL,
        -- At most this many members running at once; NULL: no limit.
        concurrency        integer     CHECK (concurrency > 0),
        -- The JobTemplate of the job stored when the group finishes, as JSON.
        on_complete        text,
        on_complete_job_id uuid,
        created_at         timestamptz NOT NULL,
        finished_at        timestamptz
    );
    ALTER TABLE jobs ADD COLUMN group_id uuid;
    CREATE INDEX jobs_group ON jobs (group_id, status) WHERE group_id IS NOT NULL;",
    },
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const SERVER_VERSION: &str = "SELECT current_setting('server_version_num')::integer";

/// Serializes migrations of one schema across every process using the database. The
/// first key is hauler's own ("hau1" in ASCII); the second is the schema's.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(1751217457, hashtext($1))";

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     NOT NULL PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

const MIGRATIONS_TABLE_EXISTS: &str = "SELECT to_regclass('schema_migrations') IS NOT NULL";

const CURRENT_VERSION: &str = "SELECT coalesce(max(version), 0) FROM schema_migrations";

const RECORD_VERSION: &str = "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)";

/// Store the jobs given as parallel arrays at `$13`, then notify channel `$15` once per
/// queue.
const JOB_INSERT: &str = "WITH inserted AS (
    INSERT INTO jobs (id, name, queue, args, status, priority, max_retries, retry,
                      timeout_ms, heartbeat_ms, version, unique_key, created_at, run_at,
                      unique_states, concurrency_key, concurrency_limit, rate_key,
                      rate_limit, rate_window_ms)
    SELECT id, name, queue, args, status, priority, max_retries, retry,
           timeout_ms, heartbeat_ms, version, unique_key, $13::timestamptz, run_at,
           unique_states, concurrency_key, concurrency_limit, rate_key, rate_limit,
           rate_window_ms
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[],
                $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[],
                $12::text[], $14::timestamptz[], $16::text[], $17::text[], $18::integer[],
                $19::text[], $20::integer[], $21::bigint[])
         AS t(id, name, queue, args, status, priority, max_retries, retry,
              timeout_ms, heartbeat_ms, version, unique_key, run_at, unique_states,
              concurrency_key, concurrency_limit, rate_key, rate_limit, rate_window_ms)
    RETURNING queue
)
SELECT pg_notify($15, left(queue, 1000))::text FROM (SELECT DISTINCT queue FROM inserted) q";

/// [`JOB_INSERT`] for a batch whose jobs differ only in id and arguments and hold no
/// unique key (the usual batch: jobs of one class queued together; see [`UniformRows`]).
/// Only `$1` (ids) and `$2` (arguments) are arrays, the rest single values, which costs
/// the server about a quarter less per row than unnesting 19 arrays. `$3`-`$11`: name,
/// queue, status, priority, max_retries, retry, timeout_ms, heartbeat_ms, version;
/// `$12` the time of queueing, `$13` the run time, `$14`-`$18` the limits' columns,
/// `$19` the notification channel (one notification: the batch has one queue).
const JOB_INSERT_UNIFORM: &str = "WITH inserted AS (
    INSERT INTO jobs (id, name, queue, args, status, priority, max_retries, retry,
                      timeout_ms, heartbeat_ms, version, created_at, run_at,
                      concurrency_key, concurrency_limit, rate_key, rate_limit,
                      rate_window_ms)
    SELECT id, $3::text, $4::text, args, $5::text, $6::integer, $7::bigint, $8::text,
           $9::bigint, $10::bigint, $11::bigint, $12::timestamptz, $13::timestamptz,
           $14::text, $15::integer, $16::text, $17::integer, $18::bigint
    FROM unnest($1::uuid[], $2::text[]) AS t(id, args)
)
SELECT pg_notify($19, left($4::text, 1000))::text";

/// [`JOB_INSERT`] for a batch with unique jobs: a job whose key is held (by a committed
/// job, one a concurrent transaction commits meanwhile, or one earlier in the batch) is
/// skipped by the unique index. Answers the ids stored (second column NULL), then one
/// row per notification (first column NULL).
const JOB_INSERT_UNIQUE: &str = "WITH inserted AS (
    INSERT INTO jobs (id, name, queue, args, status, priority, max_retries, retry,
                      timeout_ms, heartbeat_ms, version, unique_key, created_at, run_at,
                      unique_states, concurrency_key, concurrency_limit, rate_key,
                      rate_limit, rate_window_ms)
    SELECT id, name, queue, args, status, priority, max_retries, retry,
           timeout_ms, heartbeat_ms, version, unique_key, $13::timestamptz, run_at,
           unique_states, concurrency_key, concurrency_limit, rate_key, rate_limit,
           rate_window_ms
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[],
                $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[],
                $12::text[], $14::timestamptz[], $16::text[], $17::text[], $18::integer[],
                $19::text[], $20::integer[], $21::bigint[])
         WITH ORDINALITY
         AS t(id, name, queue, args, status, priority, max_retries, retry,
              timeout_ms, heartbeat_ms, version, unique_key, run_at, unique_states,
              concurrency_key, concurrency_limit, rate_key, rate_limit, rate_window_ms, n)
    ORDER BY n
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND position(',' || status || ',' in unique_states) > 0
        DO NOTHING
    RETURNING id, queue
)
SELECT id, NULL::text FROM inserted
UNION ALL
SELECT NULL::uuid, pg_notify($15, left(queue, 1000))::text
FROM (SELECT DISTINCT queue FROM inserted) q";

/// The jobs holding unique keys `$1`.
const UNIQUE_HOLDERS: &str = "SELECT unique_key, id FROM jobs
    WHERE unique_key = ANY($1::text[]) AND unique_key IS NOT NULL
      AND position(',' || status || ',' in unique_states) > 0";

/// The columns of jobs about to be stored, as the parallel arrays `JOB_INSERT` binds
/// (`$1`-`$12` and `$14`). Public for transactional enqueue: a client that holds its own
/// connection binds these to [`job_insert_statement`] inside its transaction.
#[derive(Debug, Clone, Default)]
pub struct JobInsertRows {
    /// `$1`: job ids.
    pub ids: Vec<Uuid>,
    /// `$2`: job names.
    pub names: Vec<String>,
    /// `$3`: queues.
    pub queues: Vec<String>,
    /// `$4`: arguments, JSON text.
    pub args: Vec<String>,
    /// `$5`: initial statuses (`available` or `scheduled`).
    pub statuses: Vec<&'static str>,
    /// `$6`: priorities.
    pub priorities: Vec<i32>,
    /// `$7`: retries allowed after the first attempt (`None`: infinite).
    pub max_retries: Vec<Option<i64>>,
    /// `$8`: retry policies, JSON text.
    pub retries: Vec<String>,
    /// `$9`: attempt time limits in ms.
    pub timeouts_ms: Vec<Option<i64>>,
    /// `$10`: heartbeat intervals in ms.
    pub heartbeats_ms: Vec<i64>,
    /// `$11`: job versions.
    pub versions: Vec<i64>,
    /// `$12`: unique keys.
    pub unique_keys: Vec<Option<String>>,
    /// `$14`: run times.
    pub run_ats: Vec<DateTime<Utc>>,
    /// `$16`: unique states (`,scheduled,...,`; NULL without a unique key).
    pub unique_states: Vec<Option<String>>,
    /// `$17`: concurrency keys.
    pub concurrency_keys: Vec<Option<String>>,
    /// `$18`: concurrency limits.
    pub concurrency_limits: Vec<Option<i32>>,
    /// `$19`: rate keys.
    pub rate_keys: Vec<Option<String>>,
    /// `$20`: rate limits (starts per window).
    pub rate_limits: Vec<Option<i32>>,
    /// `$21`: rate windows in ms.
    pub rate_windows_ms: Vec<Option<i64>>,
}

impl JobInsertRows {
    /// The rows for `jobs` queued at `now` (a job without a run time runs at `now`).
    /// Fails with [`Error::Config`] if a job's limits are invalid.
    pub fn new(jobs: Vec<NewJob>, now: Timestamp) -> Result<Self> {
        let mut rows = JobInsertRows::default();
        for job in jobs {
            job.limits.validate()?;
            let unique_states = job
                .unique_key
                .as_ref()
                .map(|_| job.limits.unique_states_text())
                .transpose()?;
            rows.unique_states.push(unique_states);
            let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
            let concurrency = job.limits.concurrency.as_ref();
            rows.concurrency_keys
                .push(concurrency.map(|c| c.key.clone()));
            rows.concurrency_limits
                .push(concurrency.map(|c| clamp(c.limit)));
            let rate = job.limits.rate.as_ref();
            rows.rate_keys.push(rate.map(|r| r.key.clone()));
            rows.rate_limits.push(rate.map(|r| clamp(r.limit)));
            rows.rate_windows_ms
                .push(rate.map(|r| to_bigint(r.window_ms)));
            let run_at = job.run_at.unwrap_or(now);
            let status = if run_at > now {
                JobStatus::Scheduled
            } else {
                JobStatus::Available
            };
            rows.ids.push(job.id.0);
            rows.statuses.push(status.as_str());
            rows.priorities.push(job.priority);
            rows.max_retries.push(match job.retry.max_retries {
                MaxRetries::Count(n) => Some(i64::from(n)),
                MaxRetries::Infinite => None,
            });
            rows.retries.push(job.retry.to_json());
            rows.timeouts_ms.push(job.timeout_ms.map(to_bigint));
            rows.heartbeats_ms.push(to_bigint(job.heartbeat_ms));
            rows.versions.push(i64::from(job.version));
            rows.run_ats.push(to_pg_time(run_at)?);
            rows.names.push(job.name);
            rows.queues.push(job.queue);
            rows.args.push(job.args);
            rows.unique_keys.push(job.unique_key);
        }
        Ok(rows)
    }
}

impl JobInsertRows {
    /// The parameters of [`JOB_INSERT`] (and [`JOB_INSERT_UNIQUE`]): these arrays, the
    /// time of storing `now` and the notification channel.
    fn bind<'a>(
        &'a self,
        now: &'a DateTime<Utc>,
        channel: &'a String,
    ) -> [&'a (dyn ToSql + Sync); 21] {
        [
            &self.ids,
            &self.names,
            &self.queues,
            &self.args,
            &self.statuses,
            &self.priorities,
            &self.max_retries,
            &self.retries,
            &self.timeouts_ms,
            &self.heartbeats_ms,
            &self.versions,
            &self.unique_keys,
            now,
            &self.run_ats,
            channel,
            &self.unique_states,
            &self.concurrency_keys,
            &self.concurrency_limits,
            &self.rate_keys,
            &self.rate_limits,
            &self.rate_windows_ms,
        ]
    }
}

/// A batch of jobs that share everything but id and arguments and hold no unique key,
/// as [`JOB_INSERT_UNIFORM`] binds it.
#[derive(Debug)]
struct UniformRows {
    ids: Vec<Uuid>,
    args: Vec<String>,
    name: String,
    queue: String,
    status: &'static str,
    priority: i32,
    max_retries: Option<i64>,
    retry: String,
    timeout_ms: Option<i64>,
    heartbeat_ms: i64,
    version: i64,
    run_at: DateTime<Utc>,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i32>,
    rate_key: Option<String>,
    rate_limit: Option<i32>,
    rate_window_ms: Option<i64>,
}

impl UniformRows {
    /// The rows of `jobs` queued at `now` if they are uniform, else `jobs` back.
    fn new(jobs: Vec<NewJob>, now: Timestamp) -> Result<std::result::Result<Self, Vec<NewJob>>> {
        let Some(first) = jobs.first() else {
            return Ok(Err(jobs));
        };
        let same = |j: &NewJob| {
            j.unique_key.is_none()
                && j.name == first.name
                && j.queue == first.queue
                && j.priority == first.priority
                && j.retry == first.retry
                && j.timeout_ms == first.timeout_ms
                && j.heartbeat_ms == first.heartbeat_ms
                && j.version == first.version
                && j.run_at == first.run_at
                && j.limits == first.limits
        };
        if !jobs.iter().all(same) {
            return Ok(Err(jobs));
        }
        first.limits.validate()?;
        let run_at = first.run_at.unwrap_or(now);
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let concurrency = first.limits.concurrency.as_ref();
        let rate = first.limits.rate.as_ref();
        let mut rows = UniformRows {
            ids: Vec::with_capacity(jobs.len()),
            args: Vec::with_capacity(jobs.len()),
            name: first.name.clone(),
            queue: first.queue.clone(),
            status: if run_at > now {
                JobStatus::Scheduled
            } else {
                JobStatus::Available
            }
            .as_str(),
            priority: first.priority,
            max_retries: match first.retry.max_retries {
                MaxRetries::Count(n) => Some(i64::from(n)),
                MaxRetries::Infinite => None,
            },
            retry: first.retry.to_json(),
            timeout_ms: first.timeout_ms.map(to_bigint),
            heartbeat_ms: to_bigint(first.heartbeat_ms),
            version: i64::from(first.version),
            run_at: to_pg_time(run_at)?,
            concurrency_key: concurrency.map(|c| c.key.clone()),
            concurrency_limit: concurrency.map(|c| clamp(c.limit)),
            rate_key: rate.map(|r| r.key.clone()),
            rate_limit: rate.map(|r| clamp(r.limit)),
            rate_window_ms: rate.map(|r| to_bigint(r.window_ms)),
        };
        for job in jobs {
            rows.ids.push(job.id.0);
            rows.args.push(job.args);
        }
        Ok(Ok(rows))
    }

    /// The parameters of [`JOB_INSERT_UNIFORM`].
    fn bind<'a>(
        &'a self,
        now: &'a DateTime<Utc>,
        channel: &'a String,
    ) -> [&'a (dyn ToSql + Sync); 19] {
        [
            &self.ids,
            &self.args,
            &self.name,
            &self.queue,
            &self.status,
            &self.priority,
            &self.max_retries,
            &self.retry,
            &self.timeout_ms,
            &self.heartbeat_ms,
            &self.version,
            now,
            &self.run_at,
            &self.concurrency_key,
            &self.concurrency_limit,
            &self.rate_key,
            &self.rate_limit,
            &self.rate_window_ms,
            channel,
        ]
    }
}

/// Store jobs without unique keys (all or none, in the statement's or `client`'s
/// transaction) and notify their queues: [`JOB_INSERT_UNIFORM`] when the batch is
/// uniform, else [`JOB_INSERT`].
async fn insert_plain<C: deadpool_postgres::GenericClient>(
    client: &C,
    jobs: Vec<NewJob>,
    now: Timestamp,
    channel: &String,
) -> std::result::Result<(), Failure> {
    let pg_now = to_pg_time(now)?;
    match UniformRows::new(jobs, now)? {
        Ok(rows) => {
            let statement = client.prepare_cached(JOB_INSERT_UNIFORM).await?;
            client
                .query(&statement, &rows.bind(&pg_now, channel))
                .await?;
        }
        Err(jobs) => {
            let rows = JobInsertRows::new(jobs, now)?;
            let statement = client.prepare_cached(JOB_INSERT).await?;
            client
                .query(&statement, &rows.bind(&pg_now, channel))
                .await?;
        }
    }
    Ok(())
}

/// The statement that stores jobs in `schema`'s tables and notifies idle workers, for a
/// connection whose `search_path` hauler does not control (transactional enqueue): the
/// same SQL as the storage's own insert, with the table qualified. Parameters: `$1`-`$12`,
/// `$14` and `$16`-`$21` are the arrays of [`JobInsertRows`], `$13` the time of queueing
/// and `$15` [`notify_channel`]. The notification is delivered only if the transaction
/// commits. For a batch with unique jobs use [`job_insert_unique_statements`].
pub fn job_insert_statement(schema: &str) -> Result<String> {
    if let Some(problem) = schema_problem(schema) {
        return Err(Error::Config(problem));
    }
    let qualified = format!("INSERT INTO {}.jobs ", quote_ident(schema));
    Ok(JOB_INSERT.replacen("INSERT INTO jobs ", &qualified, 1))
}

/// Transactional enqueue of a batch with unique jobs, as [`job_insert_statement`] is for
/// others: the insert that skips jobs whose key is held (same parameters; it answers the
/// ids stored in its first column), and the lookup of the jobs holding keys `$1` (it
/// answers key, id). The caller runs the insert, looks up the holders of the jobs not
/// stored, and inserts again those whose holder let go of the key meanwhile (as the
/// storage's own insert does), all in its transaction.
pub fn job_insert_unique_statements(schema: &str) -> Result<(String, String)> {
    if let Some(problem) = schema_problem(schema) {
        return Err(Error::Config(problem));
    }
    let table = format!("{}.jobs", quote_ident(schema));
    Ok((
        JOB_INSERT_UNIQUE.replacen("INSERT INTO jobs ", &format!("INSERT INTO {table} "), 1),
        UNIQUE_HOLDERS.replacen("FROM jobs", &format!("FROM {table}"), 1),
    ))
}

/// The `LISTEN`/`NOTIFY` channel of a schema's workers.
pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_jobs")
}

/// Claim up to `$4` jobs of queues `$1` and names `$2` due at `$3` for worker `$5`. Each
/// queue's claim index is walked on its own (a `queue = ANY(...)` scan would sort every
/// ready job of the queues), then the best `$4` overall are taken. The lease is
/// `$3 + least(heartbeat_ms, $6) * $7` milliseconds.
///
/// Jobs with a concurrency or rate limit are picked but not started here: they come back
/// with `limited` true (column 13) and unchanged, for [`PostgresStorage::claim_limited`]
/// to start under the keys' locks. Passed over at once: jobs of concurrency keys `$8`
/// and rate keys `$9` (found full earlier in this claim), and jobs whose key is full as
/// this statement sees it (a hint only; the locked check decides).
const JOB_CLAIM: &str = "WITH picked AS MATERIALIZED (
    SELECT c.id, c.limited
    FROM (SELECT DISTINCT unnest($1::text[]) AS queue) q
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at,
               concurrency_key IS NOT NULL OR rate_key IS NOT NULL AS limited
        FROM jobs
        WHERE queue = q.queue
          AND status IN ('scheduled', 'available', 'retryable')
          AND run_at <= $3::timestamptz
          AND name = ANY($2::text[])
          AND (concurrency_key IS NULL
               OR (NOT concurrency_key = ANY($8::text[])
                   AND (SELECT count(*) FROM jobs r WHERE r.status = 'running'
                        AND r.concurrency_key = jobs.concurrency_key) < concurrency_limit))
          AND (rate_key IS NULL
               OR (NOT rate_key = ANY($9::text[])
                   AND (SELECT count(*) FROM rate_starts s WHERE s.key = jobs.rate_key
                        AND s.started_at > $3::timestamptz
                            - rate_window_ms * interval '1 millisecond') < rate_limit))
        ORDER BY priority DESC, run_at, id
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT $4
),
claimed AS (
    UPDATE jobs j
    SET status = 'running', attempt = j.attempt + 1, started_at = $3::timestamptz,
        worker_id = $5, lease_token = gen_random_uuid(),
        lease_expires_at = $3::timestamptz
            + least(j.heartbeat_ms, $6) * $7 * interval '1 millisecond'
    FROM picked
    WHERE j.id = picked.id AND NOT picked.limited
    RETURNING j.id, j.name, j.queue, j.args, j.attempt, j.retry, j.timeout_ms,
              j.heartbeat_ms, j.version, j.lease_token, j.priority, j.run_at, j.state
)
SELECT *, false, NULL::text, NULL::text FROM claimed
UNION ALL
SELECT j.id, j.name, j.queue, j.args, j.attempt, j.retry, j.timeout_ms, j.heartbeat_ms,
       j.version, j.lease_token, j.priority, j.run_at, j.state, true, j.concurrency_key,
       j.rate_key
FROM picked p JOIN jobs j ON j.id = p.id
WHERE p.limited";

/// Take the transaction-level advisory locks of keys `$1` (sorted by the caller, so two
/// claimers never wait on each other in a cycle), one after another in array order.
const LIMIT_LOCKS: &str = "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
    FROM unnest($1::text[]) AS k";

/// The jobs `$1` that are still claimable at `$2`, locked, with their limits.
const LIMITED_LOCK: &str = "SELECT id, priority, run_at, concurrency_key, concurrency_limit,
        rate_key, rate_limit, rate_window_ms
    FROM jobs
    WHERE id = ANY($1::uuid[])
      AND status IN ('scheduled', 'available', 'retryable')
      AND run_at <= $2::timestamptz
    ORDER BY priority DESC, run_at, id
    FOR UPDATE SKIP LOCKED";

/// How many jobs of each concurrency key `$1` run.
const RUNNING_PER_KEY: &str = "SELECT concurrency_key, count(*) FROM jobs
    WHERE concurrency_key = ANY($1::text[]) AND status = 'running'
    GROUP BY concurrency_key";

/// How many jobs of each rate key `$1` started after the matching time of `$2`.
const RATE_COUNTS: &str = "SELECT w.key, count(s.key)
    FROM unnest($1::text[], $2::timestamptz[]) AS w(key, since)
    LEFT JOIN rate_starts s ON s.key = w.key AND s.started_at > w.since
    GROUP BY w.key";

/// Forget the starts of rate keys `$1` at or before the matching times `$2`, then record
/// a start at `$4` for each of keys `$3` (one per job started).
const RATE_RECORD: &str = "WITH pruned AS (
    DELETE FROM rate_starts s
    USING unnest($1::text[], $2::timestamptz[]) AS w(key, horizon)
    WHERE s.key = w.key AND s.started_at <= w.horizon
)
INSERT INTO rate_starts (key, started_at)
SELECT k, $4::timestamptz FROM unnest($3::text[]) AS k";

/// Start jobs `$1` (locked by [`LIMITED_LOCK`]) as [`JOB_CLAIM`] does.
const LIMITED_START: &str = "UPDATE jobs j
SET status = 'running', attempt = j.attempt + 1, started_at = $2::timestamptz,
    worker_id = $3, lease_token = gen_random_uuid(),
    lease_expires_at = $2::timestamptz + least(j.heartbeat_ms, $4) * $5 * interval '1 millisecond'
WHERE j.id = ANY($1::uuid[])
RETURNING j.id, j.name, j.queue, j.args, j.attempt, j.retry, j.timeout_ms, j.heartbeat_ms,
          j.version, j.lease_token, j.priority, j.run_at, j.state";

const GROUP_INSERT: &str = "INSERT INTO job_groups (id, name, concurrency, on_complete, created_at)
VALUES ($1, $2, $3, $4, $5)";

const GROUP_MEMBERS_SET: &str = "UPDATE jobs SET group_id = $1 WHERE id = ANY($2::uuid[])";

const GROUP_GET: &str = "SELECT g.name, g.concurrency, g.on_complete, g.on_complete_job_id,
    g.created_at, g.finished_at, c.status, c.n
FROM job_groups g
LEFT JOIN LATERAL (
    SELECT status, count(*) AS n FROM jobs WHERE group_id = g.id GROUP BY status
) c ON true
WHERE g.id = $1";

/// Lock, in id order, the unfinished groups of `$1` (the groups whose members the
/// transaction made final), so the count that follows sees every other member change
/// committed before.
const GROUPS_FINISH_LOCK: &str = "SELECT id FROM job_groups
WHERE id = ANY($1::uuid[]) AND finished_at IS NULL
ORDER BY id
FOR UPDATE";

/// Finish at `$3` the groups `$1` none of whose members is still open; each group's
/// on_complete job gets the id at the same place in `$2` unless one was stored before.
/// Answers the groups finished, their templates, and whether their job is to be stored now.
const GROUPS_FINISH: &str = "UPDATE job_groups g
SET finished_at = $3::timestamptz,
    on_complete_job_id = CASE WHEN g.on_complete IS NULL THEN g.on_complete_job_id
                              ELSE coalesce(g.on_complete_job_id, n.job_id) END
FROM unnest($1::uuid[], $2::uuid[]) AS n(id, job_id)
WHERE g.id = n.id AND g.finished_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM jobs j
      WHERE j.group_id = g.id AND j.status IN ('scheduled', 'available', 'running', 'retryable'))
RETURNING g.id, g.on_complete, g.on_complete_job_id = n.job_id";

/// Set, for job `$1` running under token `$2`, progress `$3` with message `$4` (unless
/// `$5` is false) and state `$6` (unless NULL).
const JOB_PROGRESS_SET: &str = "UPDATE jobs
SET progress = CASE WHEN $5::boolean THEN $3::smallint ELSE progress END,
    progress_message = CASE WHEN $5::boolean THEN $4::text ELSE progress_message END,
    state = coalesce($6::text, state)
WHERE id = $1 AND status = 'running' AND lease_token = $2
RETURNING 1";

/// Extend to `$3 + least(heartbeat_ms, $4) * $5` ms the leases of the jobs `$1` running
/// under tokens `$2`.
const JOB_HEARTBEAT: &str = "WITH held AS MATERIALIZED (
    SELECT j.id
    FROM jobs j
    JOIN unnest($1::uuid[], $2::uuid[]) AS l(id, token)
      ON j.id = l.id AND j.lease_token = l.token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR UPDATE OF j
)
UPDATE jobs j
SET lease_expires_at = $3::timestamptz + least(j.heartbeat_ms, $4) * $5 * interval '1 millisecond'
FROM (SELECT DISTINCT id FROM held) h
WHERE j.id = h.id
RETURNING j.id, j.lease_token, j.cancel_requested_at IS NOT NULL";

/// End the attempts given as parallel arrays (job, token, new status, retry time, error,
/// history outcome) at time `$7`; answer the ordinals of the accepted ones (and the groups
/// of those that became final). Of repeated
/// (job, token) pairs only the first counts, so the batch behaves as if applied in order.
/// A snoozed attempt (outcome `snoozed`, status `scheduled`) is not counted. A job whose
/// cancel was requested becomes `cancelled` instead (history: `cancelled`).
const JOB_FINISH: &str = "WITH f AS (
    SELECT DISTINCT ON (id, token) id, token, status, retry_at, error, outcome, ord
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
                $6::text[]) WITH ORDINALITY
         AS t(id, token, status, retry_at, error, outcome, ord)
    ORDER BY id, token, ord
),
held AS MATERIALIZED (
    SELECT j.id, j.queue, j.attempt, j.worker_id, j.started_at, j.group_id,
           j.cancel_requested_at IS NOT NULL AS cancel,
           f.ord, f.status, f.retry_at, f.error, f.outcome
    FROM jobs j
    JOIN f ON j.id = f.id AND j.lease_token = f.token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR UPDATE OF j
),
done AS (
    UPDATE jobs j
    SET status = CASE WHEN h.cancel THEN 'cancelled' ELSE h.status END,
        attempt = CASE WHEN h.outcome = 'snoozed' AND NOT h.cancel THEN j.attempt - 1
                       ELSE j.attempt END,
        run_at = CASE WHEN h.cancel THEN j.run_at ELSE coalesce(h.retry_at, j.run_at) END,
        finished_at = CASE WHEN h.status IN ('retryable', 'scheduled') AND NOT h.cancel
                           THEN NULL ELSE $7::timestamptz END,
        last_error = coalesce(h.error, j.last_error),
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM held h
    WHERE j.id = h.id
    RETURNING h.*
),
history AS (
    INSERT INTO attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, coalesce(worker_id, ''), coalesce(started_at, $7), $7,
           CASE WHEN cancel THEN 'cancelled' ELSE outcome END, error
    FROM done
)
SELECT ord, CASE WHEN status IN ('retryable', 'scheduled') AND NOT cancel
                 THEN pg_notify($8, left(queue, 1000))::text END,
       CASE WHEN cancel OR status NOT IN ('retryable', 'scheduled') THEN group_id END
FROM done";

/// Hand back at time `$3` the jobs `$1` running under tokens `$2`: available at once, the
/// attempt not counted (or `cancelled`, if their cancel was requested); notify channel `$4`.
const JOB_RELEASE: &str = "WITH held AS MATERIALIZED (
    SELECT j.id, j.queue, j.attempt, j.worker_id, j.started_at, j.group_id,
           j.cancel_requested_at IS NOT NULL AS cancel
    FROM jobs j
    JOIN (SELECT DISTINCT id, token FROM unnest($1::uuid[], $2::uuid[]) AS t(id, token)) l
      ON j.id = l.id AND j.lease_token = l.token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR UPDATE OF j
),
done AS (
    UPDATE jobs j
    SET status = CASE WHEN h.cancel THEN 'cancelled' ELSE 'available' END,
        attempt = CASE WHEN h.cancel THEN j.attempt ELSE j.attempt - 1 END,
        run_at = CASE WHEN h.cancel THEN j.run_at ELSE $3::timestamptz END,
        finished_at = CASE WHEN h.cancel THEN $3::timestamptz ELSE j.finished_at END,
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM held h
    WHERE j.id = h.id
    RETURNING h.*
),
history AS (
    INSERT INTO attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, coalesce(worker_id, ''), coalesce(started_at, $3), $3,
           CASE WHEN cancel THEN 'cancelled' ELSE 'released' END, NULL
    FROM done
)
SELECT CASE WHEN NOT cancel THEN pg_notify($4, left(queue, 1000))::text END,
       CASE WHEN cancel THEN group_id END
FROM done";

/// Reclaim every running job whose lease ended before `$1` (skipping rows another
/// transaction holds: their holder is reporting right now). A job may make another attempt
/// while `attempt <= max_retries` (as `MaxRetries::allows_another` counts), unless its
/// cancel was requested (it becomes `cancelled`); those that may are announced on channel
/// `$2`.
const JOB_RECLAIM: &str = "WITH expired AS MATERIALIZED (
    SELECT id, queue, attempt, worker_id, started_at, group_id,
           cancel_requested_at IS NOT NULL AS cancel,
           cancel_requested_at IS NULL AND (max_retries IS NULL OR attempt <= max_retries)
               AS again,
           json_build_object('kind', 'LeaseExpired',
               'message', 'lease expired: worker ' || coalesce(worker_id, '')
                          || ' stopped heartbeating',
               'traceback', NULL)::text AS error
    FROM jobs
    WHERE status = 'running' AND lease_expires_at < $1::timestamptz
    FOR UPDATE SKIP LOCKED
),
done AS (
    UPDATE jobs j
    SET status = CASE WHEN e.again THEN 'available' WHEN e.cancel THEN 'cancelled'
                      ELSE 'failed' END,
        run_at = CASE WHEN e.again THEN $1::timestamptz ELSE j.run_at END,
        finished_at = CASE WHEN e.again THEN NULL ELSE $1::timestamptz END,
        last_error = e.error,
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM expired e
    WHERE j.id = e.id
    RETURNING e.*
),
history AS (
    INSERT INTO attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, coalesce(worker_id, ''), coalesce(started_at, $1), $1,
           'lease_expired', error
    FROM done
)
SELECT CASE WHEN again THEN pg_notify($2, left(queue, 1000))::text END,
       CASE WHEN NOT again THEN group_id END
FROM done";

/// The columns [`record_from_row`] reads, in order: the job's, then its history as
/// parallel arrays (NULL when it has none).
macro_rules! job_select {
    () => {
        "SELECT j.id, j.name, j.queue, j.args, j.status, j.attempt, j.retry, j.priority,
            j.timeout_ms, j.heartbeat_ms, j.version, j.unique_key, j.created_at, j.run_at,
            j.started_at, j.finished_at, j.worker_id, j.lease_expires_at, j.last_error,
            h.attempts, h.workers, h.started, h.finished, h.outcomes, h.errors,
            j.cancel_requested_at, j.progress, j.progress_message, j.state,
            j.unique_states, j.concurrency_key, j.concurrency_limit, j.rate_key,
            j.rate_limit, j.rate_window_ms, j.group_id
        FROM jobs j
        LEFT JOIN LATERAL (
            SELECT array_agg(a.attempt ORDER BY a.seq) AS attempts,
                   array_agg(a.worker_id ORDER BY a.seq) AS workers,
                   array_agg(a.started_at ORDER BY a.seq) AS started,
                   array_agg(a.finished_at ORDER BY a.seq) AS finished,
                   array_agg(a.outcome ORDER BY a.seq) AS outcomes,
                   array_agg(a.error ORDER BY a.seq) AS errors
            FROM attempts a
            WHERE a.job_id = j.id
        ) h ON true"
    };
}

const JOB_GET: &str = concat!(job_select!(), " WHERE j.id = $1");

/// The conditions of a [`JobFilter`] on `jobs j`, bound as `$1` ids, `$2` statuses, `$3`
/// name, `$4` queue, `$5`/`$6` the `created_at` range, `$7` the text to find in `args` and
/// `$8` the group (each NULL when not filtered on).
macro_rules! filter_conditions {
    () => {
        "($1::uuid[] IS NULL OR j.id = ANY($1::uuid[]))
      AND ($2::text[] IS NULL OR j.status = ANY($2::text[]))
      AND ($3::text IS NULL OR j.name = $3::text)
      AND ($4::text IS NULL OR j.queue = $4::text)
      AND ($5::timestamptz IS NULL OR j.created_at >= $5::timestamptz)
      AND ($6::timestamptz IS NULL OR j.created_at < $6::timestamptz)
      AND ($7::text IS NULL OR strpos(j.args, $7::text) > 0)
      AND ($8::uuid IS NULL OR j.group_id = $8::uuid)"
    };
}

/// `head WHERE <filter> tail`, in four forms that lead with what an index can use: by
/// ids (primary key), by statuses (`jobs_status`), neither, and by group (`jobs_group`).
/// [`Filter::pick`] chooses; all four take the same parameters.
macro_rules! filtered {
    ($head:expr, $tail:expr) => {
        [
            concat!(
                $head,
                " WHERE j.id = ANY($1::uuid[]) AND ",
                filter_conditions!(),
                $tail
            ),
            concat!(
                $head,
                " WHERE j.status = ANY($2::text[]) AND ",
                filter_conditions!(),
                $tail
            ),
            concat!($head, " WHERE ", filter_conditions!(), $tail),
            concat!(
                $head,
                " WHERE j.group_id = $8::uuid AND ",
                filter_conditions!(),
                $tail
            ),
        ]
    };
}

// With no cursor (`$9`) the upper bound is the largest UUID, so `id <` stays an index
// range (a job whose id is exactly that value is never listed: ids are UUID v7, and it is
// not one).
const JOB_LIST: [&str; 4] = filtered!(
    job_select!(),
    " AND j.id < coalesce($9::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)
    ORDER BY j.id DESC LIMIT $10"
);

const JOB_COUNT: [&str; 4] = filtered!("SELECT count(*) FROM jobs j", "");

/// Cancel at `$9` the matching jobs: pending ones at once, running ones by request. Rows
/// are locked in id order, as heartbeat and finish lock theirs. Answers the two counts and
/// the groups of the jobs cancelled at once.
const JOB_CANCEL: [&str; 4] = filtered!(
    "WITH picked AS MATERIALIZED (SELECT j.id FROM jobs j",
    " AND j.status IN ('scheduled', 'available', 'retryable', 'running')
    ORDER BY j.id
    FOR UPDATE
),
done AS (
    UPDATE jobs j
    SET status = CASE WHEN j.status = 'running' THEN j.status ELSE 'cancelled' END,
        finished_at = CASE WHEN j.status = 'running' THEN j.finished_at
                           ELSE $9::timestamptz END,
        cancel_requested_at = CASE WHEN j.status = 'running'
                                   THEN coalesce(j.cancel_requested_at, $9::timestamptz)
                                   ELSE j.cancel_requested_at END
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.status, j.group_id
)
SELECT count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status = 'running'),
       array_agg(DISTINCT group_id) FILTER (WHERE status = 'cancelled' AND group_id IS NOT NULL)
FROM done"
);

/// Make the matching failed and cancelled jobs available at `$9`, attempts back to 0, with
/// a `retried` history entry, and reopen their groups; notify channel `$10` once per
/// queue. Answers (count, _) per queue.
///
/// A unique job whose key another job holds is left out, and of two that share a key
/// only the first (by id) is retried, so the unique index is never violated.
const JOB_RETRY: [&str; 4] = filtered!(
    "WITH picked AS MATERIALIZED (SELECT j.id, j.attempt, j.unique_key FROM jobs j",
    " AND j.status IN ('failed', 'cancelled')
      AND (j.unique_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM jobs o
          WHERE o.unique_key = j.unique_key AND o.id <> j.id
            AND position(',' || o.status || ',' in o.unique_states) > 0))
    ORDER BY j.id
    FOR UPDATE
),
one AS (
    SELECT DISTINCT ON (coalesce(unique_key, id::text)) id, attempt FROM picked
    ORDER BY coalesce(unique_key, id::text), id
),
done AS (
    UPDATE jobs j
    SET status = 'available', attempt = 0, run_at = $9::timestamptz, finished_at = NULL,
        cancel_requested_at = NULL
    FROM one p
    WHERE j.id = p.id
    RETURNING j.id, j.queue, p.attempt, j.group_id
),
history AS (
    INSERT INTO attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, '', $9::timestamptz, $9::timestamptz, 'retried', NULL
    FROM done
),
reopened AS (
    UPDATE job_groups g SET finished_at = NULL
    FROM (SELECT id FROM job_groups
          WHERE id IN (SELECT group_id FROM done) AND finished_at IS NOT NULL
          ORDER BY id
          FOR UPDATE) l
    WHERE g.id = l.id
)
SELECT q.n, pg_notify($10::text, left(q.queue, 1000))::text
FROM (SELECT queue, count(*) AS n FROM done GROUP BY queue) q"
);

/// Delete the matching jobs that are not running (their attempts go with them), and the
/// groups they were all the members of.
const JOB_DELETE: [&str; 4] = filtered!(
    "WITH picked AS MATERIALIZED (SELECT j.id FROM jobs j",
    " AND j.status <> 'running'
    ORDER BY j.id
    FOR UPDATE
),
done AS (DELETE FROM jobs j USING picked p WHERE j.id = p.id RETURNING j.group_id),
emptied AS (
    DELETE FROM job_groups g
    USING (SELECT group_id, count(*) AS n FROM done WHERE group_id IS NOT NULL
           GROUP BY group_id) d
    WHERE g.id = d.group_id
      AND d.n = (SELECT count(*) FROM jobs m WHERE m.group_id = g.id)
)
SELECT count(*) FROM done"
);

/// Delete up to `$3` jobs of statuses `$1` that finished before `$2`, skipping rows
/// another transaction holds (a concurrent prune takes those).
const JOB_PRUNE: &str = "WITH picked AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE status = ANY($1::text[]) AND finished_at < $2::timestamptz
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
done AS (DELETE FROM jobs j USING picked p WHERE j.id = p.id RETURNING j.group_id),
emptied AS (
    DELETE FROM job_groups g
    USING (SELECT group_id, count(*) AS n FROM done WHERE group_id IS NOT NULL
           GROUP BY group_id) d
    WHERE g.id = d.group_id
      AND d.n = (SELECT count(*) FROM jobs m WHERE m.group_id = g.id)
)
SELECT count(*) FROM done";

/// Insert an entry, or update its definition (keeping its next tick if the spec is the same).
const SCHEDULE_UPSERT: &str = "INSERT INTO schedules AS s
        (name, spec, catch_up, job, next_run_at, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $6)
    ON CONFLICT (name) DO UPDATE SET
        next_run_at = CASE WHEN s.spec = excluded.spec
            THEN s.next_run_at ELSE excluded.next_run_at END,
        spec = excluded.spec, catch_up = excluded.catch_up, job = excluded.job,
        updated_at = excluded.updated_at
    RETURNING name, spec, catch_up, job, next_run_at, last_enqueued_at, created_at, updated_at";

/// Take a tick: only while next_run_at is still the tick. A concurrent taker waits for the
/// row lock, then re-checks the condition against the committed row and updates nothing.
const SCHEDULE_TICK: &str = "UPDATE schedules
    SET next_run_at = $3,
        last_enqueued_at = CASE WHEN $4 THEN $5 ELSE last_enqueued_at END
    WHERE name = $1 AND next_run_at = $2";

const SCHEDULE_RUN_NOW: &str = "UPDATE schedules SET last_enqueued_at = $2
    WHERE name = $1 RETURNING job";

const SCHEDULE_DELETE: &str = "DELETE FROM schedules WHERE name = $1";

const SCHEDULE_LIST: &str = "SELECT name, spec, catch_up, job, next_run_at, last_enqueued_at,
    created_at, updated_at FROM schedules ORDER BY name";

const JOB_COUNTS: &str = "SELECT queue, status, count(*) FROM jobs GROUP BY queue, status";

/// The earliest run time among pending jobs of queues `$1` and names `$2`, one index walk
/// per queue.
const JOB_NEXT_RUN_AT: &str = "SELECT min(n.run_at)
FROM (SELECT DISTINCT unnest($1::text[]) AS queue) q
CROSS JOIN LATERAL (
    SELECT run_at
    FROM jobs
    WHERE queue = q.queue
      AND status IN ('scheduled', 'available', 'retryable')
      AND name = ANY($2::text[])
    ORDER BY run_at
    LIMIT 1
) n";

/// A [`Storage`] in a PostgreSQL database, shared by any number of processes and hosts.
///
/// ```no_run
/// use hauler_core::storage::{PostgresOptions, PostgresStorage};
///
/// # async fn example() -> hauler_core::Result<()> {
/// let storage =
///     PostgresStorage::connect("postgresql://app@db/app", PostgresOptions::default()).await?;
/// # Ok(())
/// # }
/// ```
pub struct PostgresStorage {
    pool: Pool,
    /// The server and database, for messages (no password).
    target: String,
    schema: String,
    /// `<schema>_jobs`.
    channel: String,
    poll_interval: Duration,
    closed: AtomicBool,
    /// `None` when the options turn LISTEN off.
    listener: Option<Listener>,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The LISTEN connection's settings and its task, started by the first
/// [`Storage::subscribe`].
struct Listener {
    config: tokio_postgres::Config,
    /// `LISTEN "<schema>_jobs"`.
    statement: String,
    target: String,
    /// Bumped on every notification and on every (re)connection.
    wake: Arc<watch::Sender<u64>>,
    /// Set (or dropped with the storage) to end the task.
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.stop();
        }
    }
}

/// A failure inside a database call: PostgreSQL's (given context when mapped) or ours.
enum Failure {
    Pg(tokio_postgres::Error),
    Hauler(Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Hauler(e)
    }
}

impl PostgresStorage {
    /// Connect to the database `dsn` names (a `postgresql://` URL or `key=value` pairs),
    /// and create or upgrade hauler's schema in it (or, with `migrate: false`, check that
    /// it is up to date).
    ///
    /// Fails with [`Error::Config`] for invalid options or an unparsable DSN, and with
    /// [`Error::Storage`] if the server cannot be reached, is older than PostgreSQL 13, or
    /// holds a schema written by a newer hauler.
    pub async fn connect(dsn: &str, opts: PostgresOptions) -> Result<Self> {
        opts.validate()?;
        let config = session_config(dsn, &opts)?;
        let target = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.acquire_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the PostgreSQL pool: {e}")))?;
        let channel = notify_channel(&opts.schema);
        let listener = opts.listen.then(|| Listener {
            config: listener_config(config),
            statement: format!("LISTEN {}", quote_ident(&channel)),
            target: target.clone(),
            wake: Arc::new(watch::channel(0).0),
            shutdown: watch::channel(false).0,
            task: Mutex::new(None),
        });
        let storage = PostgresStorage {
            pool,
            target,
            schema: opts.schema.clone(),
            channel,
            poll_interval: opts.poll_interval,
            closed: AtomicBool::new(false),
            listener,
        };
        let mut client = storage.client("connect").await?;
        let checked = if opts.migrate {
            apply_migrations(&mut client, &opts.schema).await.map(drop)
        } else {
            check_schema_version(&client, &opts.schema).await
        };
        checked.map_err(|e| storage.failure("connect", e))?;
        drop(client);
        Ok(storage)
    }

    /// The schema hauler's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::StorageClosed)
        } else {
            Ok(())
        }
    }

    /// A pooled connection.
    async fn client(&self, op: &str) -> Result<Object> {
        self.ensure_open()?;
        self.pool.get().await.map_err(|e| match e {
            PoolError::Closed => Error::StorageClosed,
            PoolError::Timeout(TimeoutType::Wait) => Error::Storage(format!(
                "{op} on {}: no pooled connection became free within {:?} \
                 (all {} are busy: raise pool_size or acquire_timeout)",
                self.target,
                self.pool.timeouts().wait.unwrap_or_default(),
                self.pool.status().max_size
            )),
            PoolError::Timeout(_) => Error::Storage(format!(
                "{op} on {}: connecting to PostgreSQL timed out",
                self.target
            )),
            PoolError::Backend(e) => Error::Storage(format!(
                "{op} on {}: cannot connect to PostgreSQL: {}",
                self.target,
                pg_message(&e)
            )),
            other => Error::Storage(format!("{op} on {}: {other}", self.target)),
        })
    }

    /// Run one statement on a pooled connection.
    async fn query(&self, op: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.client(op).await?;
        run(&client, sql, params)
            .await
            .map_err(|e| self.failure(op, Failure::Pg(e)))
    }

    fn failure(&self, op: &str, failure: Failure) -> Error {
        let e = match failure {
            Failure::Hauler(e) => return e,
            Failure::Pg(e) => e,
        };
        if e.is_closed() {
            return Error::Storage(format!(
                "{op} on {}: lost the connection to PostgreSQL ({})",
                self.target,
                pg_message(&e)
            ));
        }
        Error::Storage(format!("{op} on {}: {}", self.target, pg_message(&e)))
    }

    /// Run `sql` in a transaction with the group finishing its changes call for: the
    /// groups `ended` reads from the rows (those of members the statement made final) are
    /// finished if no member is left open, their `on_complete` jobs stored, then commit.
    async fn query_finishing_groups(
        &self,
        op: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        ended: Ended,
        now: Timestamp,
    ) -> Result<Vec<Row>> {
        let mut client = self.client(op).await?;
        let work = async {
            let tx = client.transaction().await?;
            let statement = tx.prepare_cached(sql).await?;
            let rows = tx.query(&statement, params).await?;
            finish_groups(&tx, ended.groups(&rows)?, now, &self.channel).await?;
            tx.commit().await?;
            Ok::<_, Failure>(rows)
        };
        work.await.map_err(|e| self.failure(op, e))
    }

    /// End as `failed` the attempts just claimed of jobs whose rows do not decode, with
    /// the reason in `last_error` and the history, so they are never claimed again and
    /// the rest of the claim still runs. The claim is already committed, so this is a
    /// second statement: if it cannot be written, the jobs stay `running` under a lease
    /// nobody renews, and the next claim after it expires fails them again.
    async fn fail_corrupt(&self, damaged: &[(&Row, Error)], now: Timestamp) {
        let (mut ids, mut tokens, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for (row, reason) in damaged {
            let message = match reason {
                Error::Storage(m) => m.clone(),
                other => other.to_string(),
            };
            log::error!("failing a claimed job: {message}");
            let (Ok(id), Ok(token)) = (row.try_get::<_, Uuid>(0), row.try_get::<_, Uuid>(9)) else {
                continue; // not this statement's RETURNING: cannot happen
            };
            let error = ErrorInfo::engine("CorruptJob", message);
            let Ok(error) = serde_json::to_string(&error) else {
                continue;
            };
            ids.push(id);
            tokens.push(token);
            errors.push(Some(error));
        }
        let n = ids.len();
        let statuses = vec![JobStatus::Failed.as_str(); n];
        let retry_ats: Vec<Option<DateTime<Utc>>> = vec![None; n];
        let outcomes = vec![AttemptOutcome::Failed.as_str(); n];
        let Ok(at) = to_pg_time(now) else { return };
        let res = self
            .query_finishing_groups(
                "job_claim: failing corrupt rows",
                JOB_FINISH,
                &[
                    &ids,
                    &tokens,
                    &statuses,
                    &retry_ats,
                    &errors,
                    &outcomes,
                    &at,
                    &self.channel,
                ],
                Ended::Column(2),
                now,
            )
            .await;
        if let Err(e) = res {
            log::error!("{e}; their leases will expire and the next claim tries again");
        }
    }
}

/// Where a statement's rows name the groups of the members it made final.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// A nullable group id column.
    Column(usize),
    /// A nullable array-of-group-ids column.
    Array(usize),
}

impl Ended {
    fn groups(self, rows: &[Row]) -> std::result::Result<Vec<Uuid>, tokio_postgres::Error> {
        let mut out = Vec::new();
        for row in rows {
            match self {
                Ended::Column(i) => out.extend(row.try_get::<_, Option<Uuid>>(i)?),
                Ended::Array(i) => out.extend(
                    row.try_get::<_, Option<Vec<Uuid>>>(i)?
                        .into_iter()
                        .flatten(),
                ),
            }
        }
        Ok(out)
    }
}

/// Finish, inside `tx`, the groups of `groups` none of whose members is open any more:
/// each once, however many transactions make members final at the same moment (the group
/// rows are locked first, so the count that follows sees what the others committed), and
/// its `on_complete` job stored the first time only.
async fn finish_groups(
    tx: &deadpool_postgres::Transaction<'_>,
    mut groups: Vec<Uuid>,
    now: Timestamp,
    channel: &String,
) -> std::result::Result<(), Failure> {
    if groups.is_empty() {
        return Ok(());
    }
    groups.sort_unstable();
    groups.dedup();
    let lock = tx.prepare_cached(GROUPS_FINISH_LOCK).await?;
    let locked: Vec<Uuid> = tx
        .query(&lock, &[&groups])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    if locked.is_empty() {
        return Ok(());
    }
    let job_ids: Vec<Uuid> = locked.iter().map(|_| JobId::new().0).collect();
    let at = to_pg_time(now)?;
    let finish = tx.prepare_cached(GROUPS_FINISH).await?;
    for row in tx.query(&finish, &[&locked, &job_ids, &at]).await? {
        let group: Uuid = row.try_get(0)?;
        let template: Option<String> = row.try_get(1)?;
        let store: Option<bool> = row.try_get(2)?;
        let (Some(template), Some(true)) = (template, store) else {
            continue;
        };
        let Some(job_id) = locked.iter().position(|g| *g == group).map(|i| job_ids[i]) else {
            continue;
        };
        match serde_json::from_str::<JobTemplate>(&template) {
            Ok(template) => {
                let mut job = template.to_job();
                job.id = JobId(job_id);
                insert_in(tx, vec![job], now, channel).await?;
            }
            // The members' changes must still be recorded: the group finishes without it.
            Err(e) => log::error!(
                "group {group}: its on_complete job is not stored, the row is corrupt: {e}"
            ),
        }
    }
    Ok(())
}

/// Run one statement, prepared once per connection.
async fn run(
    client: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

impl Listener {
    /// Start the task unless it runs already. Needs a tokio runtime; without one, false.
    fn start(&self) -> bool {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            log::warn!(
                "{}: no tokio runtime to run the LISTEN connection on; workers will poll",
                self.target
            );
            return false;
        };
        *task = Some(runtime.spawn(listen_loop(
            self.config.clone(),
            self.statement.clone(),
            self.target.clone(),
            Arc::clone(&self.wake),
            self.shutdown.subscribe(),
        )));
        true
    }

    fn stop(&self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Keep a connection listening on the channel, waking `wake`'s subscribers on every
/// notification; reconnect with exponential backoff when it is lost, until `shutdown`.
async fn listen_loop(
    config: tokio_postgres::Config,
    statement: String,
    target: String,
    wake: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    loop {
        let lost = tokio::select! {
            lost = listen_once(&config, &statement, &wake, &mut backoff) => lost,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        log::warn!(
            "{target}: the LISTEN connection failed ({lost}); reconnecting in {backoff:?} \
             (workers poll meanwhile)"
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// One listening connection's life: returns why it ended.
async fn listen_once(
    config: &tokio_postgres::Config,
    statement: &str,
    wake: &watch::Sender<u64>,
    backoff: &mut Duration,
) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return pg_message(&e),
    };
    let listen = client.batch_execute(statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => match done {
                Ok(()) => {
                    listening = true;
                    *backoff = LISTEN_BACKOFF_MIN;
                    // Jobs may have been stored while no connection listened.
                    wake.send_modify(|n| *n = n.wrapping_add(1));
                }
                Err(e) => return pg_message(&e),
            },
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    wake.send_modify(|n| *n = n.wrapping_add(1));
                }
                Some(Ok(_)) => {} // a notice
                Some(Err(e)) => return pg_message(&e),
                None => return "connection closed".to_owned(),
            },
        }
    }
}

/// The session settings for `dsn`: its own, plus hauler's `search_path` and defaults.
fn session_config(dsn: &str, opts: &PostgresOptions) -> Result<tokio_postgres::Config> {
    // The parser's messages never echo the DSN, so a password cannot leak through them.
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| Error::Config(format!("invalid PostgreSQL DSN: {e}")))?;
    // A later `-c` wins over an earlier one, so this overrides a search_path in the DSN.
    // Generic plans: hauler's statements (array parameters, CTEs) never qualify for
    // PostgreSQL's automatic switch to a cached plan, so without this each execution is
    // planned again, which costs about as much as running it.
    let ours = format!(
        "-c search_path={} -c plan_cache_mode=force_generic_plan",
        opts.schema
    );
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("hauler");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(opts.connect_timeout);
    }
    Ok(config)
}

/// The listener's settings: TCP keepalives, so a connection cut without a reset (a dead
/// host, a dropped route) is noticed in about a minute rather than hours.
fn listener_config(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    config
}

/// `user@host:port/db`, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("");
    format!("postgresql://{user}{}/{db}", hosts.join(","))
}

/// `"name"`, for the two statements that take an identifier (CREATE SCHEMA, LISTEN).
/// Only validated names reach it (see [`schema_problem`]), so no quote needs doubling;
/// doubling anyway keeps it correct for any input.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL error as one line: the server's message with its SQLSTATE and detail, or
/// the client's.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(" (");
                text.push_str(detail);
                text.push(')');
            }
            text
        }
        None => e.to_string(),
    }
}

async fn check_server_version(client: &Client) -> std::result::Result<(), Failure> {
    let version: i32 = client.query_one(SERVER_VERSION, &[]).await?.get(0);
    if version < MIN_SERVER_VERSION {
        return Err(Error::Storage(format!(
            "hauler needs PostgreSQL 13 or newer; the server is version {}.{}",
            version / 10_000,
            version % 10_000
        ))
        .into());
    }
    Ok(())
}

fn newer_schema(schema: &str, version: i32) -> Failure {
    Error::Storage(format!(
        "schema {schema:?} is at version {version}, newer than this hauler supports \
         ({SCHEMA_VERSION}); upgrade hauler"
    ))
    .into()
}

/// Bring `schema` up to [`SCHEMA_VERSION`] in one transaction, under an advisory lock
/// that serializes concurrent migrators. Returns the version.
async fn apply_migrations(client: &mut Client, schema: &str) -> std::result::Result<u32, Failure> {
    check_server_version(client).await?;
    let tx = client.transaction().await?;
    tx.execute(MIGRATION_LOCK, &[&schema]).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        quote_ident(schema)
    ))
    .await?;
    tx.batch_execute(MIGRATIONS_TABLE).await?;
    let current: i32 = tx.query_one(CURRENT_VERSION, &[]).await?.get(0);
    let applied = usize::try_from(current).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(newer_schema(schema, current));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(migration.sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(RECORD_VERSION, &[&version, &migration.description])
            .await?;
    }
    tx.commit().await?;
    Ok(SCHEMA_VERSION)
}

/// Fail unless `schema` is exactly at [`SCHEMA_VERSION`].
async fn check_schema_version(client: &Client, schema: &str) -> std::result::Result<(), Failure> {
    check_server_version(client).await?;
    let exists: bool = client.query_one(MIGRATIONS_TABLE_EXISTS, &[]).await?.get(0);
    let current: i32 = if exists {
        client.query_one(CURRENT_VERSION, &[]).await?.get(0)
    } else {
        0
    };
    let current_u = u32::try_from(current).unwrap_or(0);
    if current_u > SCHEMA_VERSION {
        return Err(newer_schema(schema, current));
    }
    if current_u < SCHEMA_VERSION {
        return Err(Error::Storage(format!(
            "schema {schema:?} is at version {current}, this hauler needs {SCHEMA_VERSION}: \
             run hauler's migrate first, or connect with migrate enabled"
        ))
        .into());
    }
    Ok(())
}

/// Create or upgrade hauler's schema in the database `dsn` names, then disconnect; for
/// deployments that migrate before starting workers. Only `schema` and `connect_timeout`
/// of `opts` matter. Safe to run from many processes at once. Returns the schema version.
pub async fn migrate(dsn: &str, opts: &PostgresOptions) -> Result<u32> {
    opts.validate()?;
    let config = session_config(dsn, opts)?;
    let target = describe(&config);
    let fail = |what: &str, e: Failure| match e {
        Failure::Hauler(e) => e,
        Failure::Pg(e) => Error::Storage(format!("{what} on {target}: {}", pg_message(&e))),
    };
    let (mut client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| fail("migrate: connect", e.into()))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("migration connection ended: {e}");
        }
    });
    let result = apply_migrations(&mut client, &opts.schema).await;
    drop(client);
    let _ = driver.await;
    result.map_err(|e| fail("migrate", e))
}

/// A timestamp as PostgreSQL takes it.
fn to_pg_time(t: Timestamp) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.as_micros()).ok_or_else(|| {
        Error::Storage(format!(
            "timestamp {} µs since the epoch is outside the range PostgreSQL can store",
            t.as_micros()
        ))
    })
}

fn from_pg_time(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from_micros(t.timestamp_micros())
}

/// A `u64` as a PostgreSQL bigint (values past `i64::MAX` are clamped).
fn to_bigint(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_outcome(name: &str) -> Option<AttemptOutcome> {
    AttemptOutcome::ALL.into_iter().find(|o| o.as_str() == name)
}

fn corrupt(id: Uuid, what: impl fmt::Display) -> Error {
    Error::Storage(format!(
        "corrupt row for job {id} in the jobs table: {what}"
    ))
}

/// Column `idx` of `row`, or a corruption error naming the job and column.
fn column<'a, T: FromSql<'a>>(row: &'a Row, idx: usize, id: Uuid) -> Result<T> {
    row.try_get(idx).map_err(|e| {
        let name = row.columns().get(idx).map_or("?", |c| c.name());
        corrupt(id, format_args!("column {name}: {e}"))
    })
}

/// A stored integer as `T`, or a corruption error naming the job and field.
fn int<T: TryFrom<i64>>(v: impl Into<i64>, id: Uuid, field: &str) -> Result<T> {
    let v = v.into();
    T::try_from(v).map_err(|_| corrupt(id, format_args!("{field} {v} is out of range")))
}

fn parse_error(text: &str, id: Uuid, field: &str) -> Result<ErrorInfo> {
    serde_json::from_str(text).map_err(|e| corrupt(id, format_args!("{field}: {e}")))
}

/// A [`JobFilter`] as the parameters `$1` to `$7` of [`filter_conditions!`].
struct Filter {
    ids: Option<Vec<Uuid>>,
    statuses: Option<Vec<&'static str>>,
    name: Option<String>,
    queue: Option<String>,
    created_from: Option<DateTime<Utc>>,
    created_to: Option<DateTime<Utc>>,
    args_contains: Option<String>,
    group: Option<Uuid>,
}

impl Filter {
    fn new(f: &JobFilter) -> Result<Self> {
        Ok(Filter {
            ids: f
                .ids
                .as_ref()
                .map(|ids| ids.iter().map(|id| id.0).collect()),
            statuses: (!f.statuses.is_empty())
                .then(|| f.statuses.iter().map(|s| s.as_str()).collect()),
            name: f.name.clone(),
            queue: f.queue.clone(),
            created_from: f.created_from.map(to_pg_time).transpose()?,
            created_to: f.created_to.map(to_pg_time).transpose()?,
            args_contains: f.args_contains.clone(),
            group: f.group.map(|g| g.0),
        })
    }

    /// The form of `sql` that suits this filter.
    fn pick(&self, sql: [&'static str; 4]) -> &'static str {
        if self.ids.is_some() {
            sql[0]
        } else if self.group.is_some() {
            sql[3]
        } else if self.statuses.is_some() {
            sql[1]
        } else {
            sql[2]
        }
    }

    /// The filter's parameters followed by `extra` (`$9` onwards).
    fn params<'a>(&'a self, extra: &[&'a (dyn ToSql + Sync)]) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![
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

/// The first column of the first row, for statements that answer one number.
fn first_column<T: for<'a> FromSql<'a>>(op: &str, rows: &[Row]) -> Result<T> {
    rows.first()
        .ok_or_else(|| Error::Storage(format!("{op}: no result row")))?
        .try_get(0)
        .map_err(|e| Error::Storage(format!("{op}: unexpected row: {e}")))
}

/// Read a row of `job_select!`. A column that does not decode does not fail the read (an
/// admin listing must still show, cancel or delete the job): the record gets a stand-in
/// for it (the default retry policy, 0, the epoch, no history, status `failed`) and its
/// `last_error` says what is damaged, with kind `CorruptJob`. Only an unreadable id fails.
fn record_from_row(row: &Row) -> Result<JobRecord> {
    let id: Uuid = row
        .try_get(0)
        .map_err(|e| Error::Storage(format!("corrupt job id in the jobs table: {e}")))?;
    let mut d = Damage::default();
    let epoch = Timestamp::from_micros(0);
    let status = column::<String>(row, 4, id).and_then(|s| s.parse().map_err(|e| corrupt(id, e)));
    let retry = column::<String>(row, 6, id).and_then(|r| {
        RetryPolicy::from_json(&r).map_err(|e| corrupt(id, format_args!("retry: {e}")))
    });
    let last_error = column::<Option<String>>(row, 18, id).and_then(|text| {
        text.map(|text| parse_error(&text, id, "last_error"))
            .transpose()
    });
    let time = |d: &mut Damage, idx| {
        d.or(
            column::<DateTime<Utc>>(row, idx, id).map(from_pg_time),
            epoch,
        )
    };
    let maybe_time = |d: &mut Damage, idx| {
        d.or(
            column::<Option<DateTime<Utc>>>(row, idx, id).map(|t| t.map(from_pg_time)),
            None,
        )
    };
    let record = JobRecord {
        id: JobId(id),
        name: d.or(column(row, 1, id), String::new()),
        queue: d.or(column(row, 2, id), String::new()),
        args: d.or(column(row, 3, id), String::new()),
        status: d.or(status, JobStatus::Failed),
        attempt: d.or(
            column::<i32>(row, 5, id).and_then(|v| int(v, id, "attempt")),
            0,
        ),
        retry: d.or(retry, RetryPolicy::default()),
        priority: d.or(column(row, 7, id), 0),
        timeout_ms: d.or(
            column::<Option<i64>>(row, 8, id)
                .and_then(|v| v.map(|v| int(v, id, "timeout_ms")).transpose()),
            None,
        ),
        heartbeat_ms: d.or(
            column::<i64>(row, 9, id).and_then(|v| int(v, id, "heartbeat_ms")),
            0,
        ),
        version: d.or(
            column::<i64>(row, 10, id).and_then(|v| int(v, id, "version")),
            0,
        ),
        unique_key: d.or(column(row, 11, id), None),
        created_at: time(&mut d, 12),
        run_at: time(&mut d, 13),
        started_at: maybe_time(&mut d, 14),
        finished_at: maybe_time(&mut d, 15),
        worker_id: d.or(column(row, 16, id), None),
        lease_expires_at: maybe_time(&mut d, 17),
        cancel_requested_at: maybe_time(&mut d, 25),
        last_error: d.or(last_error, None),
        history: d.or(history_from_row(row, id), Vec::new()),
        progress: d.or(
            column::<Option<i16>>(row, 26, id)
                .and_then(|v| v.map(|v| int(v, id, "progress")).transpose()),
            None,
        ),
        progress_message: d.or(column(row, 27, id), None),
        state: d.or(column(row, 28, id), None),
        limits: d.or(limits_from_row(row, id), JobLimits::default()),
        group_id: d.or(
            column::<Option<Uuid>>(row, 35, id).map(|g| g.map(GroupId)),
            None,
        ),
    };
    Ok(d.mark(record))
}

/// The limits of a `job_select!` row (columns 29 to 34).
fn limits_from_row(row: &Row, id: Uuid) -> Result<JobLimits> {
    let unique_states: Option<String> = column(row, 29, id)?;
    let concurrency_key: Option<String> = column(row, 30, id)?;
    let concurrency_limit: Option<i32> = column(row, 31, id)?;
    let rate_key: Option<String> = column(row, 32, id)?;
    let rate_limit: Option<i32> = column(row, 33, id)?;
    let rate_window_ms: Option<i64> = column(row, 34, id)?;
    Ok(JobLimits {
        unique_states: unique_states
            .map(|text| JobLimits::parse_unique_states(&text))
            .transpose()
            .map_err(|e| corrupt(id, format_args!("unique_states: {e}")))?
            .unwrap_or_default(),
        concurrency: match (concurrency_key, concurrency_limit) {
            (Some(key), Some(limit)) => Some(ConcurrencyLimit {
                key,
                limit: int(limit, id, "concurrency_limit")?,
            }),
            _ => None,
        },
        rate: match (rate_key, rate_limit, rate_window_ms) {
            (Some(key), Some(limit), Some(window)) => Some(RateLimit {
                key,
                limit: int(limit, id, "rate_limit")?,
                window_ms: int(window, id, "rate_window_ms")?,
            }),
            _ => None,
        },
    })
}

/// The history arrays of a `job_select!` row (columns 19 to 24), oldest first.
fn history_from_row(row: &Row, id: Uuid) -> Result<Vec<AttemptRecord>> {
    let attempts: Option<Vec<i32>> = column(row, 19, id)?;
    let Some(attempts) = attempts else {
        return Ok(Vec::new());
    };
    let workers: Vec<String> = column(row, 20, id)?;
    let started: Vec<DateTime<Utc>> = column(row, 21, id)?;
    let finished: Vec<DateTime<Utc>> = column(row, 22, id)?;
    let outcomes: Vec<String> = column(row, 23, id)?;
    let errors: Vec<Option<String>> = column(row, 24, id)?;
    let n = attempts.len();
    if [
        workers.len(),
        started.len(),
        finished.len(),
        outcomes.len(),
        errors.len(),
    ]
    .iter()
    .any(|&len| len != n)
    {
        return Err(corrupt(id, "history arrays of different lengths"));
    }
    let mut history = Vec::with_capacity(n);
    for (i, (((attempt, worker_id), outcome), error)) in attempts
        .into_iter()
        .zip(workers)
        .zip(outcomes)
        .zip(errors)
        .enumerate()
    {
        history.push(AttemptRecord {
            attempt: int(attempt, id, "history attempt")?,
            worker_id,
            started_at: from_pg_time(started[i]),
            finished_at: from_pg_time(finished[i]),
            outcome: parse_outcome(&outcome)
                .ok_or_else(|| corrupt(id, format_args!("unknown outcome {outcome:?}")))?,
            error: error
                .map(|text| parse_error(&text, id, "history error"))
                .transpose()?,
        });
    }
    Ok(history)
}

/// Read a row of [`JOB_CLAIM`]'s `RETURNING`, with the claim's sort key.
fn claimed_from_row(row: &Row, started_at: Timestamp) -> Result<(ClaimedJob, i32, Timestamp)> {
    let id: Uuid = row
        .try_get(0)
        .map_err(|e| Error::Storage(format!("corrupt job id in the jobs table: {e}")))?;
    let retry: String = column(row, 5, id)?;
    let job = ClaimedJob {
        id: JobId(id),
        name: column(row, 1, id)?,
        queue: column(row, 2, id)?,
        args: column(row, 3, id)?,
        attempt: int(column::<i32>(row, 4, id)?, id, "attempt")?,
        retry: RetryPolicy::from_json(&retry)
            .map_err(|e| corrupt(id, format_args!("retry: {e}")))?,
        timeout_ms: column::<Option<i64>>(row, 6, id)?
            .map(|v| int(v, id, "timeout_ms"))
            .transpose()?,
        heartbeat_ms: int(column::<i64>(row, 7, id)?, id, "heartbeat_ms")?,
        version: int(column::<i64>(row, 8, id)?, id, "version")?,
        started_at,
        lease: LeaseToken(column(row, 9, id)?),
        state: column(row, 12, id)?,
    };
    let priority: i32 = column(row, 10, id)?;
    let run_at = from_pg_time(column(row, 11, id)?);
    Ok((job, priority, run_at))
}

fn schedule_from_row(row: &Row) -> Result<ScheduleRecord> {
    let name: String = row
        .try_get(0)
        .map_err(|e| Error::Storage(format!("corrupt row in schedules: {e}")))?;
    let bad = |what: String| Error::Storage(format!("corrupt row for schedule {name:?}: {what}"));
    let get_text = |i: usize| row.try_get::<_, String>(i).map_err(|e| bad(e.to_string()));
    let get_time = |i: usize| {
        row.try_get::<_, Option<DateTime<Utc>>>(i)
            .map(|t| t.map(from_pg_time))
            .map_err(|e| bad(e.to_string()))
    };
    let required = |i: usize, what: &str| get_time(i)?.ok_or_else(|| bad(format!("no {what}")));
    Ok(ScheduleRecord {
        spec: serde_json::from_str(&get_text(1)?).map_err(|e| bad(format!("spec: {e}")))?,
        catch_up: get_text(2)?.parse().map_err(|e| bad(format!("{e}")))?,
        job: serde_json::from_str(&get_text(3)?).map_err(|e| bad(format!("job: {e}")))?,
        next_run_at: required(4, "next_run_at")?,
        last_enqueued_at: get_time(5)?,
        created_at: required(6, "created_at")?,
        updated_at: required(7, "updated_at")?,
        name: name.clone(),
    })
}

/// How many times an insert of unique jobs tries again when the job holding a key it
/// met finished (and so let go of the key) before it could be looked up.
const UNIQUE_INSERT_ROUNDS: usize = 16;

/// Store `jobs` inside `tx` (so workers are notified when `tx` commits), saying for each
/// whether it was stored or which job holds its unique key. Jobs without a key take one
/// plain insert; with keys, the insert skips jobs whose key is held (the unique index
/// decides, waiting for a concurrent insert of the key to commit or roll back), and the
/// holders are then looked up; a job whose holder let go of the key meanwhile is inserted
/// again.
async fn insert_in(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: Vec<NewJob>,
    now: Timestamp,
    channel: &String,
) -> std::result::Result<Vec<InsertedJob>, Failure> {
    let pg_now = to_pg_time(now)?;
    let stored = |j: &NewJob| InsertedJob {
        id: j.id,
        duplicate: false,
    };
    if jobs.iter().all(|j| j.unique_key.is_none()) {
        let out = jobs.iter().map(stored).collect();
        insert_plain(tx, jobs, now, channel).await?;
        return Ok(out);
    }
    let mut out: Vec<Option<InsertedJob>> = vec![None; jobs.len()];
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    let insert = tx.prepare_cached(JOB_INSERT_UNIQUE).await?;
    let holders = tx.prepare_cached(UNIQUE_HOLDERS).await?;
    for _ in 0..UNIQUE_INSERT_ROUNDS {
        let batch: Vec<NewJob> = pending.iter().map(|&i| jobs[i].clone()).collect();
        let rows = JobInsertRows::new(batch, now)?;
        let inserted: std::collections::HashSet<Uuid> = tx
            .query(&insert, &rows.bind(&pg_now, channel))
            .await?
            .iter()
            .filter_map(|r| r.try_get::<_, Option<Uuid>>(0).ok().flatten())
            .collect();
        let mut missing = Vec::new();
        for &i in &pending {
            if inserted.contains(&jobs[i].id.0) {
                out[i] = Some(stored(&jobs[i]));
            } else {
                missing.push(i);
            }
        }
        if missing.is_empty() {
            break;
        }
        let keys: Vec<String> = missing
            .iter()
            .filter_map(|&i| jobs[i].unique_key.clone())
            .collect();
        let held: std::collections::HashMap<String, Uuid> = tx
            .query(&holders, &[&keys])
            .await?
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
            .collect();
        pending.clear();
        for i in missing {
            match jobs[i].unique_key.as_ref().and_then(|k| held.get(k)) {
                Some(&holder) => {
                    out[i] = Some(InsertedJob {
                        id: JobId(holder),
                        duplicate: true,
                    });
                }
                None => pending.push(i),
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    out.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
        Failure::Hauler(Error::Storage(format!(
            "storing unique jobs: their keys changed hands {UNIQUE_INSERT_ROUNDS} times \
                 while being stored; nothing was stored"
        )))
    })
}

/// Claim-order sort key of a claimed job: priority (higher first), run time, id.
type Claimed = (ClaimedJob, i32, Timestamp);

/// A claim gives up looking past full keys after this many rounds (each round passes
/// over every key found full so far); the jobs it did not reach wait for the next claim.
const CLAIM_ROUNDS: usize = 8;

impl PostgresStorage {
    /// Start the picked jobs `ids` that have limits, as many as their keys have room for,
    /// in one transaction that holds the keys' advisory locks (taken in sorted order, so
    /// claimers never deadlock). Every claim that starts a limited job holds its keys'
    /// locks while counting and starting, so two claimers can never both see room for
    /// the last slot. Returns the jobs started and the keys found full (concurrency,
    /// rate).
    async fn claim_limited(
        &self,
        picked: &[(Uuid, Option<String>, Option<String>)],
        p: &JobClaimParams,
    ) -> Result<(Vec<Claimed>, Vec<String>, Vec<String>)> {
        const OP: &str = "job_claim";
        let now = to_pg_time(p.now)?;
        let mut locks: Vec<String> = picked
            .iter()
            .flat_map(|(_, c, r)| {
                [
                    c.as_ref().map(|k| ["c:", k].concat()),
                    r.as_ref().map(|k| ["r:", k].concat()),
                ]
            })
            .flatten()
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let ids: Vec<Uuid> = picked.iter().map(|(id, _, _)| *id).collect();
        let lease_beats = to_bigint(LEASE_HEARTBEATS);
        let mut client = self.client(OP).await?;
        let work = async {
            let tx = client.transaction().await?;
            tx.query(&tx.prepare_cached(LIMIT_LOCKS).await?, &[&locks])
                .await?;
            let rows = tx
                .query(&tx.prepare_cached(LIMITED_LOCK).await?, &[&ids, &now])
                .await?;
            struct Cand {
                id: Uuid,
                concurrency: Option<(String, i64)>,
                rate: Option<(String, i64, i64)>,
            }
            let mut cands = Vec::with_capacity(rows.len());
            for r in &rows {
                let ck: Option<String> = r.try_get(3)?;
                let cl: Option<i32> = r.try_get(4)?;
                let rk: Option<String> = r.try_get(5)?;
                let rl: Option<i32> = r.try_get(6)?;
                let rw: Option<i64> = r.try_get(7)?;
                cands.push(Cand {
                    id: r.try_get(0)?,
                    concurrency: ck.zip(cl).map(|(k, l)| (k, i64::from(l))),
                    rate: match (rk, rl, rw) {
                        (Some(k), Some(l), Some(w)) => Some((k, i64::from(l), w)),
                        _ => None,
                    },
                });
            }
            let c_keys: Vec<String> = cands
                .iter()
                .filter_map(|c| c.concurrency.as_ref().map(|(k, _)| k.clone()))
                .collect();
            let mut running: std::collections::HashMap<String, i64> =
                std::collections::HashMap::new();
            if !c_keys.is_empty() {
                for r in tx
                    .query(&tx.prepare_cached(RUNNING_PER_KEY).await?, &[&c_keys])
                    .await?
                {
                    running.insert(r.try_get(0)?, r.try_get(1)?);
                }
            }
            let mut rate_keys = Vec::new();
            let mut rate_since = Vec::new();
            for (k, _, w) in cands.iter().filter_map(|c| c.rate.as_ref()) {
                if !rate_keys.contains(k) {
                    rate_keys.push(k.clone());
                    let window = Duration::from_millis(u64::try_from(*w).unwrap_or(0));
                    rate_since.push(to_pg_time(p.now.minus(window))?);
                }
            }
            let mut started: std::collections::HashMap<String, i64> =
                std::collections::HashMap::new();
            if !rate_keys.is_empty() {
                for r in tx
                    .query(
                        &tx.prepare_cached(RATE_COUNTS).await?,
                        &[&rate_keys, &rate_since],
                    )
                    .await?
                {
                    started.insert(r.try_get(0)?, r.try_get(1)?);
                }
            }
            let (mut admitted, mut full_c, mut full_r, mut rated) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for c in &cands {
                let c_ok = c
                    .concurrency
                    .as_ref()
                    .map_or(true, |(k, l)| running.get(k).copied().unwrap_or(0) < *l);
                let r_ok = c
                    .rate
                    .as_ref()
                    .map_or(true, |(k, l, _)| started.get(k).copied().unwrap_or(0) < *l);
                if !c_ok {
                    full_c.extend(c.concurrency.as_ref().map(|(k, _)| k.clone()));
                }
                if !r_ok {
                    full_r.extend(c.rate.as_ref().map(|(k, _, _)| k.clone()));
                }
                if !(c_ok && r_ok) {
                    continue;
                }
                if let Some((k, _)) = &c.concurrency {
                    *running.entry(k.clone()).or_default() += 1;
                }
                if let Some((k, _, _)) = &c.rate {
                    *started.entry(k.clone()).or_default() += 1;
                    rated.push(k.clone());
                }
                admitted.push(c.id);
            }
            let rows = if admitted.is_empty() {
                Vec::new()
            } else {
                tx.query(
                    &tx.prepare_cached(LIMITED_START).await?,
                    &[
                        &admitted,
                        &now,
                        &p.worker_id,
                        &MAX_LEASE_HEARTBEAT_MS,
                        &lease_beats,
                    ],
                )
                .await?
            };
            if !rated.is_empty() {
                tx.execute(
                    &tx.prepare_cached(RATE_RECORD).await?,
                    &[&rate_keys, &rate_since, &rated, &now],
                )
                .await?;
            }
            tx.commit().await?;
            full_c.sort_unstable();
            full_c.dedup();
            full_r.sort_unstable();
            full_r.dedup();
            Ok::<_, Failure>((rows, full_c, full_r))
        };
        let (rows, full_c, full_r) = work.await.map_err(|e| self.failure(OP, e))?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut damaged = Vec::new();
        for row in &rows {
            match claimed_from_row(row, p.now) {
                Ok(job) => claimed.push(job),
                Err(e) => damaged.push((row, e)),
            }
        }
        if !damaged.is_empty() {
            self.fail_corrupt(&damaged, p.now).await;
        }
        Ok((claimed, full_c, full_r))
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn job_insert_many(&self, p: JobInsertManyParams) -> Result<Vec<InsertedJob>> {
        const INSERT: &str = "job_insert_many";
        self.ensure_open()?;
        if p.jobs.is_empty() {
            return Ok(Vec::new());
        }
        let duplicate_id = |e: &tokio_postgres::Error| {
            Error::Storage(format!(
                "{INSERT} on {}: a job with that id already exists, so nothing was stored ({})",
                self.target,
                pg_message(e)
            ))
        };
        if p.jobs.iter().any(|j| j.unique_key.is_some()) {
            // Unique jobs: insert-or-get in one transaction (see `insert_in`).
            let mut client = self.client(INSERT).await?;
            crash_point(CrashPoint::DuringEnqueue);
            let work = async {
                let tx = client.transaction().await?;
                let out = insert_in(&tx, p.jobs, p.now, &self.channel).await?;
                tx.commit().await?;
                Ok::<_, Failure>(out)
            };
            return work.await.map_err(|e| match e {
                Failure::Pg(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => duplicate_id(&e),
                other => self.failure(INSERT, other),
            });
        }
        let out = p
            .jobs
            .iter()
            .map(|j| InsertedJob {
                id: j.id,
                duplicate: false,
            })
            .collect();
        let client = self.client(INSERT).await?;
        // The batch is one statement, its own transaction: a crash before it is sent
        // leaves what a crash inside SQLite's transaction does (nothing stored).
        crash_point(CrashPoint::DuringEnqueue);
        match insert_plain(&client, p.jobs, p.now, &self.channel).await {
            Ok(()) => Ok(out),
            Err(Failure::Pg(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(duplicate_id(&e))
            }
            Err(e) => Err(self.failure(INSERT, e)),
        }
    }

    async fn group_insert(&self, mut p: GroupInsertParams) -> Result<()> {
        const OP: &str = "group_insert";
        p.group.prepare_members(&mut p.jobs)?;
        self.ensure_open()?;
        let g = &p.group;
        let ids: Vec<Uuid> = p.jobs.iter().map(|j| j.id.0).collect();
        let on_complete = g
            .on_complete
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let concurrency = g.concurrency.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
        let jobs = std::mem::take(&mut p.jobs);
        let now = to_pg_time(p.now)?;
        let mut client = self.client(OP).await?;
        let work = async {
            let tx = client.transaction().await?;
            let insert = tx.prepare_cached(GROUP_INSERT).await?;
            tx.execute(
                &insert,
                &[&g.id.0, &g.name, &concurrency, &on_complete, &now],
            )
            .await?;
            insert_plain(&tx, jobs, p.now, &self.channel).await?;
            let members = tx.prepare_cached(GROUP_MEMBERS_SET).await?;
            tx.execute(&members, &[&g.id.0, &ids]).await?;
            tx.commit().await?;
            Ok::<_, Failure>(())
        };
        match work.await {
            Ok(()) => Ok(()),
            Err(Failure::Pg(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::Storage(format!(
                    "{OP} on {}: a group or job with that id already exists, so nothing was \
                     stored ({})",
                    self.target,
                    pg_message(&e)
                )))
            }
            Err(e) => Err(self.failure(OP, e)),
        }
    }

    async fn group_get(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        const OP: &str = "group_get";
        let rows = self.query(OP, GROUP_GET, &[&id.0]).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let bad = |what: String| Error::Storage(format!("corrupt row for group {id}: {what}"));
        let get = |e: tokio_postgres::Error| bad(e.to_string());
        let concurrency: Option<i32> = first.try_get(1).map_err(get)?;
        let on_complete: Option<String> = first.try_get(2).map_err(get)?;
        let mut counts = GroupCounts::default();
        for row in &rows {
            let status: Option<String> = row.try_get(6).map_err(get)?;
            let n: Option<i64> = row.try_get(7).map_err(get)?;
            if let (Some(status), Some(n)) = (status, n) {
                let status = status
                    .parse::<JobStatus>()
                    .map_err(|e| bad(format!("a member's status: {e}")))?;
                counts.add(status, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(Some(GroupRecord {
            id,
            name: first.try_get(0).map_err(get)?,
            concurrency: concurrency
                .map(|c| u32::try_from(c).map_err(|_| bad(format!("concurrency {c}"))))
                .transpose()?,
            on_complete: on_complete
                .map(|t| serde_json::from_str(&t).map_err(|e| bad(format!("on_complete: {e}"))))
                .transpose()?,
            on_complete_job_id: first.try_get::<_, Option<Uuid>>(3).map_err(get)?.map(JobId),
            created_at: from_pg_time(first.try_get(4).map_err(get)?),
            finished_at: first
                .try_get::<_, Option<DateTime<Utc>>>(5)
                .map_err(get)?
                .map(from_pg_time),
            counts,
        }))
    }

    async fn job_claim(&self, p: JobClaimParams) -> Result<Vec<ClaimedJob>> {
        self.ensure_open()?;
        if p.limit == 0 || p.queues.is_empty() || p.names.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_pg_time(p.now)?;
        let lease_beats = to_bigint(LEASE_HEARTBEATS);
        let mut claimed: Vec<Claimed> = Vec::new();
        // Keys found full: later rounds pass over their jobs to reach the ones behind.
        let (mut full_c, mut full_r): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for _ in 0..CLAIM_ROUNDS {
            let want = i64::from(p.limit) - claimed.len() as i64;
            if want <= 0 {
                break;
            }
            let rows = self
                .query(
                    "job_claim",
                    JOB_CLAIM,
                    &[
                        &p.queues,
                        &p.names,
                        &now,
                        &want,
                        &p.worker_id,
                        &MAX_LEASE_HEARTBEAT_MS,
                        &lease_beats,
                        &full_c,
                        &full_r,
                    ],
                )
                .await?;
            let mut damaged = Vec::new();
            let mut limited = Vec::new();
            for row in &rows {
                if row.try_get::<_, bool>(13).unwrap_or(false) {
                    let id: Uuid = row
                        .try_get(0)
                        .map_err(|e| Error::Storage(format!("job_claim: unexpected row: {e}")))?;
                    limited.push((
                        id,
                        row.try_get(14).unwrap_or(None),
                        row.try_get(15).unwrap_or(None),
                    ));
                    continue;
                }
                match claimed_from_row(row, p.now) {
                    Ok(job) => claimed.push(job),
                    Err(e) => damaged.push((row, e)),
                }
            }
            if !damaged.is_empty() {
                self.fail_corrupt(&damaged, p.now).await;
            }
            if limited.is_empty() {
                break;
            }
            let (started, now_full_c, now_full_r) = self.claim_limited(&limited, &p).await?;
            claimed.extend(started);
            let before = full_c.len() + full_r.len();
            full_c.extend(
                now_full_c
                    .into_iter()
                    .filter(|k| !full_c.contains(k))
                    .collect::<Vec<_>>(),
            );
            full_r.extend(
                now_full_r
                    .into_iter()
                    .filter(|k| !full_r.contains(k))
                    .collect::<Vec<_>>(),
            );
            if full_c.len() + full_r.len() == before {
                break; // no new full key: nothing more to reach behind them
            }
        }
        // RETURNING comes in no particular order: hand the jobs out in claim order.
        claimed.sort_by(|(a, a_priority, a_run), (b, b_priority, b_run)| {
            b_priority
                .cmp(a_priority)
                .then(a_run.cmp(b_run))
                .then(a.id.cmp(&b.id))
        });
        Ok(claimed.into_iter().map(|(job, _, _)| job).collect())
    }

    async fn job_heartbeat(&self, p: JobHeartbeatParams) -> Result<JobHeartbeatResult> {
        self.ensure_open()?;
        if p.leases.is_empty() {
            return Ok(JobHeartbeatResult::default());
        }
        let ids: Vec<Uuid> = p.leases.iter().map(|(id, _)| id.0).collect();
        let tokens: Vec<Uuid> = p.leases.iter().map(|(_, lease)| lease.0).collect();
        let now = to_pg_time(p.now)?;
        let lease_beats = to_bigint(LEASE_HEARTBEATS);
        let rows = self
            .query(
                "job_heartbeat",
                JOB_HEARTBEAT,
                &[&ids, &tokens, &now, &MAX_LEASE_HEARTBEAT_MS, &lease_beats],
            )
            .await?;
        let mut extended = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row
                .try_get(0)
                .map_err(|e| Error::Storage(format!("job_heartbeat: unexpected row: {e}")))?;
            let token: Uuid = column(row, 1, id)?;
            let cancel: bool = column(row, 2, id)?;
            extended.insert((id, token), cancel);
        }
        let mut out = JobHeartbeatResult::default();
        for (id, lease) in &p.leases {
            if let Some(&cancel) = extended.get(&(id.0, lease.0)) {
                out.extended.push(*id);
                if cancel {
                    out.cancel_requested.push(*id);
                }
            }
        }
        Ok(out)
    }

    async fn job_finish_many(&self, p: JobFinishManyParams) -> Result<Vec<bool>> {
        self.ensure_open()?;
        if p.finishes.is_empty() {
            return Ok(Vec::new());
        }
        let n = p.finishes.len();
        let (mut ids, mut tokens, mut statuses) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut retry_ats, mut errors, mut outcomes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for f in &p.finishes {
            let (status, retry_at, error, outcome) = match &f.outcome {
                FinishOutcome::Completed => {
                    (JobStatus::Completed, None, None, AttemptOutcome::Completed)
                }
                FinishOutcome::Retry { retry_at, error } => (
                    JobStatus::Retryable,
                    Some(to_pg_time(*retry_at)?),
                    Some(serde_json::to_string(error)?),
                    AttemptOutcome::Failed,
                ),
                FinishOutcome::Failed { error } => (
                    JobStatus::Failed,
                    None,
                    Some(serde_json::to_string(error)?),
                    AttemptOutcome::Failed,
                ),
                FinishOutcome::Snoozed { run_at } => (
                    JobStatus::Scheduled,
                    Some(to_pg_time(*run_at)?),
                    None,
                    AttemptOutcome::Snoozed,
                ),
            };
            ids.push(f.id.0);
            tokens.push(f.lease.0);
            statuses.push(status.as_str());
            retry_ats.push(retry_at);
            errors.push(error);
            outcomes.push(outcome.as_str());
        }
        let now = to_pg_time(p.now)?;
        // One statement, its own transaction: a crash before it is sent leaves what a
        // crash before SQLite's commit does (the jobs still running under their leases).
        for f in &p.finishes {
            match f.outcome {
                FinishOutcome::Completed => crash_point(CrashPoint::BeforeCompleteCommit),
                FinishOutcome::Retry { .. } => crash_point(CrashPoint::DuringRetryReschedule),
                FinishOutcome::Failed { .. } | FinishOutcome::Snoozed { .. } => {}
            }
        }
        let rows = self
            .query_finishing_groups(
                "job_finish_many",
                JOB_FINISH,
                &[
                    &ids,
                    &tokens,
                    &statuses,
                    &retry_ats,
                    &errors,
                    &outcomes,
                    &now,
                    &self.channel,
                ],
                Ended::Column(2),
                p.now,
            )
            .await?;
        let mut accepted = vec![false; n];
        for row in &rows {
            let ord: i64 = row
                .try_get(0)
                .map_err(|e| Error::Storage(format!("job_finish_many: unexpected row: {e}")))?;
            // Ordinals count from 1.
            if let Some(slot) = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| accepted.get_mut(i))
            {
                *slot = true;
            }
        }
        Ok(accepted)
    }

    async fn job_release(&self, p: JobReleaseParams) -> Result<u64> {
        self.ensure_open()?;
        if p.leases.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = p.leases.iter().map(|(id, _)| id.0).collect();
        let tokens: Vec<Uuid> = p.leases.iter().map(|(_, lease)| lease.0).collect();
        let now = to_pg_time(p.now)?;
        let rows = self
            .query_finishing_groups(
                "job_release",
                JOB_RELEASE,
                &[&ids, &tokens, &now, &self.channel],
                Ended::Column(1),
                p.now,
            )
            .await?;
        Ok(rows.len() as u64)
    }

    async fn job_progress_set(&self, p: JobProgressSetParams) -> Result<bool> {
        let (set, progress, message) = match p.progress {
            Some((progress, message)) => (true, Some(i16::from(progress)), message),
            None => (false, None, None),
        };
        let rows = self
            .query(
                "job_progress_set",
                JOB_PROGRESS_SET,
                &[&p.id.0, &p.lease.0, &progress, &message, &set, &p.state],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn job_reclaim_expired(&self, p: JobReclaimParams) -> Result<u64> {
        let now = to_pg_time(p.now)?;
        let rows = self
            .query_finishing_groups(
                "job_reclaim_expired",
                JOB_RECLAIM,
                &[&now, &self.channel],
                Ended::Column(1),
                p.now,
            )
            .await?;
        Ok(rows.len() as u64)
    }

    async fn job_get(&self, id: JobId) -> Result<Option<JobRecord>> {
        let rows = self.query("job_get", JOB_GET, &[&id.0]).await?;
        rows.first().map(record_from_row).transpose()
    }

    async fn job_list(&self, p: JobListParams) -> Result<Vec<JobRecord>> {
        let f = Filter::new(&p.filter)?;
        let cursor = p.cursor.map(|c| c.0);
        let limit = i64::from(p.limit);
        let rows = self
            .query("job_list", f.pick(JOB_LIST), &f.params(&[&cursor, &limit]))
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn job_count(&self, p: JobCountParams) -> Result<u64> {
        let f = Filter::new(&p.filter)?;
        let rows = self
            .query("job_count", f.pick(JOB_COUNT), &f.params(&[]))
            .await?;
        let n: i64 = first_column("job_count", &rows)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn job_cancel(&self, p: JobCancelParams) -> Result<JobCancelResult> {
        let f = Filter::new(&p.filter)?;
        let now = to_pg_time(p.now)?;
        let rows = self
            .query_finishing_groups(
                "job_cancel",
                f.pick(JOB_CANCEL),
                &f.params(&[&now]),
                Ended::Array(2),
                p.now,
            )
            .await?;
        let decode =
            |e: tokio_postgres::Error| Error::Storage(format!("job_cancel: unexpected row: {e}"));
        let row = rows
            .first()
            .ok_or_else(|| Error::Storage("job_cancel: no result row".to_owned()))?;
        let cancelled: i64 = row.try_get(0).map_err(decode)?;
        let requested: i64 = row.try_get(1).map_err(decode)?;
        Ok(JobCancelResult {
            cancelled: u64::try_from(cancelled).unwrap_or(0),
            requested: u64::try_from(requested).unwrap_or(0),
        })
    }

    async fn job_retry(&self, p: JobRetryParams) -> Result<u64> {
        let f = Filter::new(&p.filter)?;
        let now = to_pg_time(p.now)?;
        let rows = self
            .query(
                "job_retry",
                f.pick(JOB_RETRY),
                &f.params(&[&now, &self.channel]),
            )
            .await?;
        let mut total = 0;
        for row in &rows {
            let n: i64 = row
                .try_get(0)
                .map_err(|e| Error::Storage(format!("job_retry: unexpected row: {e}")))?;
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }

    async fn job_delete(&self, p: JobDeleteParams) -> Result<u64> {
        let f = Filter::new(&p.filter)?;
        let rows = self
            .query("job_delete", f.pick(JOB_DELETE), &f.params(&[]))
            .await?;
        let n: i64 = first_column("job_delete", &rows)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn job_prune(&self, p: JobPruneParams) -> Result<u64> {
        self.ensure_open()?;
        let statuses: Vec<&str> = p
            .statuses
            .iter()
            .filter(|s| s.is_final())
            .map(|s| s.as_str())
            .collect();
        if p.limit == 0 || statuses.is_empty() {
            return Ok(0);
        }
        let before = to_pg_time(p.finished_before)?;
        let limit = i64::from(p.limit);
        let rows = self
            .query("job_prune", JOB_PRUNE, &[&statuses, &before, &limit])
            .await?;
        let n: i64 = first_column("job_prune", &rows)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn job_counts(&self) -> Result<Vec<QueueCount>> {
        let rows = self.query("job_counts", JOB_COUNTS, &[]).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in &rows {
            let decode = |e: tokio_postgres::Error| {
                Error::Storage(format!("job_counts: unexpected row: {e}"))
            };
            let queue: String = row.try_get(0).map_err(decode)?;
            let status: String = row.try_get(1).map_err(decode)?;
            let count: i64 = row.try_get(2).map_err(decode)?;
            counts.push(QueueCount {
                status: status.parse::<JobStatus>().map_err(|e| {
                    Error::Storage(format!(
                        "corrupt status in the jobs table (queue {queue:?}): {e}"
                    ))
                })?,
                count: u64::try_from(count).unwrap_or(0),
                queue,
            });
        }
        counts.sort_by(|a, b| a.queue.cmp(&b.queue).then(a.status.cmp(&b.status)));
        Ok(counts)
    }

    async fn job_next_run_at(&self, p: JobNextRunAtParams) -> Result<Option<Timestamp>> {
        self.ensure_open()?;
        if p.queues.is_empty() || p.names.is_empty() {
            return Ok(None);
        }
        let rows = self
            .query("job_next_run_at", JOB_NEXT_RUN_AT, &[&p.queues, &p.names])
            .await?;
        let earliest: Option<DateTime<Utc>> = match rows.first() {
            Some(row) => row
                .try_get(0)
                .map_err(|e| Error::Storage(format!("job_next_run_at: unexpected row: {e}")))?,
            None => None,
        };
        Ok(earliest.map(from_pg_time))
    }

    async fn schedule_upsert(&self, p: ScheduleUpsertParams) -> Result<ScheduleRecord> {
        let s = &p.schedule;
        let spec = serde_json::to_string(&s.spec)?;
        let job = serde_json::to_string(&s.job)?;
        let (next, now) = (to_pg_time(p.next_run_at)?, to_pg_time(p.now)?);
        let rows = self
            .query(
                "schedule_upsert",
                SCHEDULE_UPSERT,
                &[&s.name, &spec, &s.catch_up.as_str(), &job, &next, &now],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Storage("schedule_upsert: no result row".to_owned()))?;
        schedule_from_row(row)
    }

    async fn schedule_tick(&self, p: ScheduleTickParams) -> Result<bool> {
        const OP: &str = "schedule_tick";
        let (due, next, now) = (
            to_pg_time(p.due)?,
            to_pg_time(p.next_run_at)?,
            to_pg_time(p.now)?,
        );
        let mut client = self.client(OP).await?;
        let work = async {
            let tx = client.transaction().await?;
            let statement = tx.prepare_cached(SCHEDULE_TICK).await?;
            let enqueue = p.job.is_some();
            let taken = tx
                .execute(&statement, &[&p.name, &due, &next, &enqueue, &now])
                .await?
                == 1;
            if let (true, Some(job)) = (taken, p.job) {
                insert_in(&tx, vec![job], p.now, &self.channel).await?;
            }
            tx.commit().await?;
            Ok::<_, Failure>(taken)
        };
        work.await.map_err(|e| self.failure(OP, e))
    }

    async fn schedule_run_now(&self, p: ScheduleRunNowParams) -> Result<Option<JobId>> {
        const OP: &str = "schedule_run_now";
        let now = to_pg_time(p.now)?;
        let mut client = self.client(OP).await?;
        let work = async {
            let tx = client.transaction().await?;
            let statement = tx.prepare_cached(SCHEDULE_RUN_NOW).await?;
            let Some(row) = tx.query_opt(&statement, &[&p.name, &now]).await? else {
                return Ok(None);
            };
            let job: String = row.try_get(0)?;
            let template: JobTemplate = serde_json::from_str(&job).map_err(|e| {
                Error::Storage(format!("corrupt row for schedule {:?}: job: {e}", p.name))
            })?;
            let inserted = insert_in(&tx, vec![template.to_job()], p.now, &self.channel).await?;
            tx.commit().await?;
            Ok::<_, Failure>(inserted.first().map(|j| j.id))
        };
        work.await.map_err(|e| self.failure(OP, e))
    }

    async fn schedule_delete(&self, name: &str) -> Result<bool> {
        let client = self.client("schedule_delete").await?;
        let work = async {
            let statement = client.prepare_cached(SCHEDULE_DELETE).await?;
            client.execute(&statement, &[&name]).await
        };
        let n = work
            .await
            .map_err(|e| self.failure("schedule_delete", Failure::Pg(e)))?;
        Ok(n == 1)
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleRecord>> {
        let rows = self.query("schedule_list", SCHEDULE_LIST, &[]).await?;
        rows.iter().map(schedule_from_row).collect()
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.poll_interval)
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        let listener = self.listener.as_ref()?;
        if self.closed.load(Ordering::Acquire) || !listener.start() {
            return None;
        }
        Some(listener.wake.subscribe())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        if let Some(listener) = &self.listener {
            listener.stop();
        }
        self.pool.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for good in ["hauler", "_x", "jobs_2", &"a".repeat(MAX_SCHEMA_LEN)] {
            assert_eq!(schema_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "Hauler",
            "2jobs",
            "my-jobs",
            "a b",
            "x\"; DROP TABLE jobs; --",
            "é",
            "pg_jobs",
            &"a".repeat(MAX_SCHEMA_LEN + 1),
        ] {
            assert!(schema_problem(bad).is_some(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn options_validate_lists_every_problem() {
        let opts = PostgresOptions {
            schema: "Bad".to_owned(),
            pool_size: 0,
            poll_interval: Duration::ZERO,
            ..PostgresOptions::default()
        };
        match opts.validate() {
            Err(Error::Config(msg)) => {
                for part in ["\"Bad\"", "pool_size", "poll_interval"] {
                    assert!(msg.contains(part), "{msg}");
                }
            }
            other => panic!("expected Error::Config, got {other:?}"),
        }
        assert!(PostgresOptions::default().validate().is_ok());
    }

    #[test]
    fn dsn_options_pass_through_and_search_path_is_added() {
        let opts = PostgresOptions::default();
        let config = session_config(
            "postgresql://app:secret@db.example:6543/jobs?application_name=api&options=-c%20statement_timeout%3D5s",
            &opts,
        )
        .unwrap();
        assert_eq!(config.get_application_name(), Some("api"));
        assert_eq!(
            config.get_options(),
            Some("-c statement_timeout=5s -c search_path=hauler -c plan_cache_mode=force_generic_plan")
        );
        assert_eq!(describe(&config), "postgresql://app@db.example:6543/jobs");

        let config = session_config("host=localhost user=u dbname=d", &opts).unwrap();
        assert_eq!(config.get_application_name(), Some("hauler"));
        assert_eq!(
            config.get_options(),
            Some("-c search_path=hauler -c plan_cache_mode=force_generic_plan")
        );
        assert_eq!(config.get_connect_timeout(), Some(&opts.connect_timeout));

        match session_config("postgresql://u:hunter2@[broken", &opts) {
            Err(Error::Config(msg)) => assert!(!msg.contains("hunter2"), "{msg}"),
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }

    #[test]
    fn stored_outcome_names_match_serde() {
        for outcome in AttemptOutcome::ALL {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{}\"", outcome.as_str()));
            assert_eq!(parse_outcome(outcome.as_str()), Some(outcome));
        }
    }

    /// The test server, found as `tests/storage_postgres.rs` finds it.
    fn test_dsn() -> Option<String> {
        if let Ok(dsn) = std::env::var("HAULER_TEST_POSTGRES_DSN") {
            return Some(dsn);
        }
        if std::env::var("HAULER_TEST_POSTGRES").as_deref() == Ok("skip") {
            eprintln!("skipped: HAULER_TEST_POSTGRES=skip and no HAULER_TEST_POSTGRES_DSN");
            return None;
        }
        panic!(
            "HAULER_TEST_POSTGRES_DSN is not set: start a throwaway server with \
             `eval \"$(bash .ci/postgres.sh start)\"`, or set HAULER_TEST_POSTGRES=skip"
        );
    }

    /// A schema name no other test (or run) uses: `prefix`, the process id, a random tag.
    fn fresh_schema(prefix: &str) -> String {
        format!(
            "{prefix}_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    }

    /// A storage on a fresh schema of the test server, and the schema's name.
    async fn fresh_storage(dsn: &str, prefix: &str) -> (PostgresStorage, String) {
        let schema = fresh_schema(prefix);
        let opts = PostgresOptions {
            schema: schema.clone(),
            ..PostgresOptions::default()
        };
        (PostgresStorage::connect(dsn, opts).await.unwrap(), schema)
    }

    async fn plan(client: &Object, sql: &str, params: &[&(dyn ToSql + Sync)]) -> String {
        let rows = client
            .query(&format!("EXPLAIN {sql}"), params)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN failed: {e}\n{sql}"));
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A uniform batch (one statement with two arrays) stores every column as the general
    /// statement does, limits and a later run time included; a batch that differs in any
    /// column but id and arguments takes the general statement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uniform_batches_store_what_the_general_statement_stores() {
        use crate::model::{ConcurrencyLimit, RateLimit};
        use crate::storage::conformance::{new_job, NAME, QUEUE, T0};
        let Some(dsn) = test_dsn() else { return };
        let (s, schema) = fresh_storage(&dsn, "uni").await;
        let later = Timestamp::from_micros(T0.as_micros() + 60_000_000);
        let job = |i: usize| {
            let mut j = new_job(NAME, QUEUE);
            j.args = format!("{{\"i\":{i}}}");
            j.priority = 4;
            j.timeout_ms = Some(1500);
            j.run_at = Some(later);
            j.limits = JobLimits {
                unique_states: Vec::new(),
                concurrency: Some(ConcurrencyLimit {
                    key: "ck".to_owned(),
                    limit: 2,
                }),
                rate: Some(RateLimit {
                    key: "rk".to_owned(),
                    limit: 5,
                    window_ms: 1000,
                }),
            };
            j
        };
        let uniform: Vec<NewJob> = (0..3).map(job).collect();
        assert!(UniformRows::new(uniform.clone(), T0).unwrap().is_ok());
        let mut mixed: Vec<NewJob> = (3..6).map(job).collect();
        mixed[2].queue = "other".to_owned();
        assert!(UniformRows::new(mixed.clone(), T0).unwrap().is_err());
        let plain: Vec<NewJob> = (6..8).map(|_| new_job(NAME, QUEUE)).collect();
        assert!(UniformRows::new(plain.clone(), T0).unwrap().is_ok());
        for jobs in [uniform, mixed, plain] {
            s.job_insert_many(JobInsertManyParams { jobs, now: T0 })
                .await
                .unwrap();
        }
        let client = s.client("test").await.unwrap();
        let rows = client
            .query(
                "SELECT args, name, queue, status, priority, max_retries, retry, timeout_ms,
                        heartbeat_ms, version, unique_key, created_at, run_at, unique_states,
                        concurrency_key, concurrency_limit, rate_key, rate_limit,
                        rate_window_ms, attempt, group_id IS NULL
                 FROM jobs ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let show = |r: &Row| {
            format!(
                "{:?}",
                (
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3),
                        r.get::<_, i32>(4),
                        r.get::<_, Option<i64>>(5),
                        r.get::<_, String>(6),
                        r.get::<_, Option<i64>>(7),
                        r.get::<_, i64>(8),
                        r.get::<_, i64>(9),
                        r.get::<_, Option<String>>(10),
                    ),
                    (
                        r.get::<_, DateTime<Utc>>(11),
                        r.get::<_, DateTime<Utc>>(12),
                        r.get::<_, Option<String>>(13),
                        r.get::<_, Option<String>>(14),
                        r.get::<_, Option<i32>>(15),
                        r.get::<_, Option<String>>(16),
                        r.get::<_, Option<i32>>(17),
                        r.get::<_, Option<i64>>(18),
                        r.get::<_, i32>(19),
                        r.get::<_, bool>(20),
                    ),
                )
            )
        };
        let rows: Vec<String> = rows.iter().map(show).collect();
        assert_eq!(rows.len(), 8);
        let created = to_pg_time(T0).unwrap();
        let run_at = to_pg_time(later).unwrap();
        let retry = RetryPolicy::default().to_json();
        let max_retries = match RetryPolicy::default().max_retries {
            MaxRetries::Count(n) => Some(i64::from(n)),
            MaxRetries::Infinite => None,
        };
        for (i, row) in rows.iter().enumerate().take(6) {
            let queue = if i == 5 { "other" } else { QUEUE };
            let expected = format!(
                "{:?}",
                (
                    (
                        format!("{{\"i\":{i}}}"),
                        NAME.to_owned(),
                        queue.to_owned(),
                        "scheduled".to_owned(),
                        4_i32,
                        max_retries,
                        retry.clone(),
                        Some(1500_i64),
                        5000_i64,
                        1_i64,
                        None::<String>,
                    ),
                    (
                        created,
                        run_at,
                        None::<String>,
                        Some("ck".to_owned()),
                        Some(2_i32),
                        Some("rk".to_owned()),
                        Some(5_i32),
                        Some(1000_i64),
                        0_i32,
                        true,
                    ),
                )
            );
            assert_eq!(row, &expected, "job {i}");
        }
        for row in &rows[6..] {
            assert!(row.contains("\"available\""), "{row}");
            assert!(
                row.contains(&format!("{created:?}, {created:?}, None, None")),
                "{row}"
            );
        }

        drop(client);
        s.close().await.unwrap();
        let (admin, connection) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
            .await
            .unwrap();
    }

    /// With many finished jobs and a few pending ones, the planner walks the partial
    /// indexes (so a claim's cost does not grow with finished jobs) and reaches single
    /// jobs by primary key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_statements_use_their_indexes() {
        use crate::storage::conformance::{new_job, NAME, QUEUE, T0};
        use crate::storage::JobFinish;
        let Some(dsn) = test_dsn() else { return };
        let (s, schema) = fresh_storage(&dsn, "plan").await;
        for _ in 0..5 {
            let jobs = (0..1_000).map(|_| new_job(NAME, QUEUE)).collect();
            s.job_insert_many(JobInsertManyParams { jobs, now: T0 })
                .await
                .unwrap();
            let claimed = s
                .job_claim(JobClaimParams {
                    queues: vec![QUEUE.to_owned()],
                    names: vec![NAME.to_owned()],
                    limit: 1_000,
                    worker_id: "w".to_owned(),
                    now: T0,
                })
                .await
                .unwrap();
            let finishes = claimed
                .iter()
                .map(|c| JobFinish {
                    id: c.id,
                    lease: c.lease,
                    outcome: FinishOutcome::Completed,
                })
                .collect();
            s.job_finish_many(JobFinishManyParams { finishes, now: T0 })
                .await
                .unwrap();
        }
        let jobs = (0..10).map(|_| new_job(NAME, QUEUE)).collect();
        s.job_insert_many(JobInsertManyParams { jobs, now: T0 })
            .await
            .unwrap();
        let client = s.client("test").await.unwrap();
        client
            .batch_execute("ANALYZE jobs; ANALYZE attempts")
            .await
            .unwrap();

        let now = to_pg_time(T0).unwrap();
        let queues = vec![QUEUE.to_owned()];
        let names = vec![NAME.to_owned()];
        let (ids, tokens) = (vec![Uuid::nil()], vec![Uuid::nil()]);
        let (beats, cap) = (3_i64, MAX_LEASE_HEARTBEAT_MS);
        let no_keys: Vec<String> = Vec::new();
        let claim_params: [&(dyn ToSql + Sync); 9] = [
            &queues, &names, &now, &10_i64, &"w", &cap, &beats, &no_keys, &no_keys,
        ];
        // A few pending jobs: found through an index bounded by status, whichever.
        let claim = plan(&client, JOB_CLAIM, &claim_params).await;
        assert!(!claim.contains("Seq Scan on jobs"), "{claim}");
        assert!(
            claim.contains("Index Scan using jobs_claim on jobs")
                || claim.contains("Index Scan using jobs_queue_status on jobs"),
            "{claim}"
        );
        // A backlog: the claim index is walked in claim order, stopping at the limit.
        let jobs = (0..5_000).map(|_| new_job(NAME, QUEUE)).collect();
        s.job_insert_many(JobInsertManyParams { jobs, now: T0 })
            .await
            .unwrap();
        client.batch_execute("ANALYZE jobs").await.unwrap();
        let claim = plan(&client, JOB_CLAIM, &claim_params).await;
        assert!(
            claim.contains("Index Scan using jobs_claim on jobs"),
            "{claim}"
        );
        assert!(!claim.contains("Sort Key: jobs.priority"), "{claim}");

        // The limits' lookups go straight to their partial indexes.
        let keys = vec!["k".to_owned()];
        let holders = plan(&client, UNIQUE_HOLDERS, &[&keys]).await;
        assert!(holders.contains("using jobs_unique"), "{holders}");
        // Running jobs only: by key, or (while few run) by status; never a scan.
        let running = plan(&client, RUNNING_PER_KEY, &[&keys]).await;
        assert!(
            running.contains("using jobs_running_key") || running.contains("using jobs_status"),
            "{running}"
        );
        assert!(!running.contains("Seq Scan"), "{running}");

        let next = plan(&client, JOB_NEXT_RUN_AT, &[&queues, &names]).await;
        assert!(next.contains("using jobs_pending_run_at"), "{next}");

        let reclaim = plan(&client, JOB_RECLAIM, &[&now, &"c"]).await;
        assert!(
            reclaim.contains("using jobs_lease on jobs")
                || reclaim.contains("Index Cond: (status = 'running'::text)"),
            "only running jobs are read: {reclaim}"
        );

        let by_pkey = [
            (
                "heartbeat",
                plan(&client, JOB_HEARTBEAT, &[&ids, &tokens, &now, &cap, &beats]).await,
            ),
            (
                "finish",
                plan(
                    &client,
                    JOB_FINISH,
                    &[
                        &ids,
                        &tokens,
                        &vec!["completed"],
                        &vec![None::<DateTime<Utc>>],
                        &vec![None::<String>],
                        &vec!["completed"],
                        &now,
                        &"c",
                    ],
                )
                .await,
            ),
            (
                "release",
                plan(&client, JOB_RELEASE, &[&ids, &tokens, &now, &"c"]).await,
            ),
            ("get", plan(&client, JOB_GET, &[&Uuid::nil()]).await),
        ];
        for (what, p) in by_pkey {
            assert!(p.contains("using jobs_pkey"), "{what}:\n{p}");
            assert!(!p.contains("Seq Scan on jobs"), "{what}:\n{p}");
        }

        // The filtered statements, by ids, by statuses and with no filter.
        let no_ids: Option<Vec<Uuid>> = None;
        let some_ids = Some(vec![Uuid::nil()]);
        let no_statuses: Option<Vec<&str>> = None;
        let failed = Some(vec!["failed"]);
        let none: Option<String> = None;
        let no_time: Option<DateTime<Utc>> = None;
        let (no_cursor, limit) = (None::<Uuid>, 10_i64);
        let no_group: Option<Uuid> = None;
        let some_group = Some(Uuid::nil());
        let forms: [[&(dyn ToSql + Sync); 8]; 4] = [
            [
                &some_ids,
                &no_statuses,
                &none,
                &none,
                &no_time,
                &no_time,
                &none,
                &no_group,
            ],
            [
                &no_ids, &failed, &none, &none, &no_time, &no_time, &none, &no_group,
            ],
            [
                &no_ids,
                &no_statuses,
                &none,
                &none,
                &no_time,
                &no_time,
                &none,
                &no_group,
            ],
            [
                &no_ids,
                &no_statuses,
                &none,
                &none,
                &no_time,
                &no_time,
                &none,
                &some_group,
            ],
        ];
        fn params<'a>(
            form: &[&'a (dyn ToSql + Sync); 8],
            extra: &[&'a (dyn ToSql + Sync)],
        ) -> Vec<&'a (dyn ToSql + Sync)> {
            [form.as_slice(), extra].concat()
        }
        let list_extra: [&(dyn ToSql + Sync); 2] = [&no_cursor, &limit];
        let list = plan(&client, JOB_LIST[2], &params(&forms[2], &list_extra)).await;
        assert!(
            list.contains("Index Scan Backward using jobs_pkey"),
            "{list}"
        );
        assert!(list.contains("using attempts_job"), "{list}");
        let by_status = plan(&client, JOB_LIST[1], &params(&forms[1], &list_extra)).await;
        assert!(by_status.contains("using jobs_status"), "{by_status}");
        let by_ids = plan(&client, JOB_LIST[0], &params(&forms[0], &list_extra)).await;
        assert!(by_ids.contains("using jobs_pkey"), "{by_ids}");
        let by_group = plan(&client, JOB_LIST[3], &params(&forms[3], &list_extra)).await;
        assert!(by_group.contains("using jobs_group"), "{by_group}");
        let channel = "c";
        for (what, sql, extra) in [
            ("count", JOB_COUNT, vec![]),
            ("cancel", JOB_CANCEL, vec![&now as &(dyn ToSql + Sync)]),
            (
                "retry",
                JOB_RETRY,
                vec![&now as &(dyn ToSql + Sync), &channel],
            ),
            ("delete", JOB_DELETE, vec![]),
        ] {
            let p = plan(&client, sql[0], &params(&forms[0], &extra)).await;
            assert!(p.contains("using jobs_pkey"), "{what} by ids:\n{p}");
            let p = plan(&client, sql[1], &params(&forms[1], &extra)).await;
            assert!(
                p.contains("using jobs_status") || p.contains("using jobs_finished"),
                "{what} by status:\n{p}"
            );
            let p = plan(&client, sql[3], &params(&forms[3], &extra)).await;
            assert!(p.contains("using jobs_group"), "{what} by group:\n{p}");
        }
        let statuses = vec!["completed"];
        let prune = plan(&client, JOB_PRUNE, &[&statuses, &now, &10_i64]).await;
        assert!(prune.contains("using jobs_finished"), "{prune}");

        drop(client);
        s.close().await.unwrap();
        let (admin, connection) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
            .await
            .unwrap();
    }

    /// A schema at version 1 with jobs and history is upgraded in place: the jobs keep
    /// their data and the new outcomes can be written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_1_schema_is_upgraded() {
        use crate::storage::conformance::{new_job, NAME, QUEUE, T0};
        use crate::storage::{JobFilter, JobRetryParams};
        let Some(dsn) = test_dsn() else { return };
        let schema = fresh_schema("v1");
        let (admin, connection) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(connection);
        let job = new_job(NAME, QUEUE);
        let setup = format!(
            "CREATE SCHEMA {q}; SET search_path = {q}; {MIGRATIONS_TABLE}; {v1};
             INSERT INTO schema_migrations (version, description) VALUES (1, 'v1');",
            q = quote_ident(&schema),
            v1 = MIGRATIONS[0].sql,
        );
        admin.batch_execute(&setup).await.unwrap();
        let t0 = to_pg_time(T0).unwrap();
        admin
            .execute(
                "INSERT INTO jobs (id, name, queue, args, status, priority, retry, heartbeat_ms,
                     version, created_at, run_at, finished_at)
                 VALUES ($1, $2, $3, '{}', 'failed', 0, $4, 5000, 1, $5, $5, $5)",
                &[&job.id.0, &job.name, &job.queue, &job.retry.to_json(), &t0],
            )
            .await
            .unwrap();
        admin
            .execute(
                "INSERT INTO attempts (job_id, attempt, worker_id, started_at, finished_at,
                     outcome) VALUES ($1, 1, 'w', $2, $2, 'failed')",
                &[&job.id.0, &t0],
            )
            .await
            .unwrap();

        let opts = PostgresOptions {
            schema: schema.clone(),
            ..PostgresOptions::default()
        };
        let s = PostgresStorage::connect(&dsn, opts).await.unwrap();
        let got = s.job_get(job.id).await.unwrap().unwrap();
        assert_eq!(
            (got.status, got.cancel_requested_at, got.history.len()),
            (JobStatus::Failed, None, 1)
        );
        let filter = JobFilter {
            ids: Some(vec![job.id]),
            ..JobFilter::default()
        };
        let retried = s
            .job_retry(JobRetryParams { filter, now: T0 })
            .await
            .unwrap();
        assert_eq!(retried, 1);
        let got = s.job_get(job.id).await.unwrap().unwrap();
        assert_eq!(
            got.history.iter().map(|h| h.outcome).collect::<Vec<_>>(),
            vec![AttemptOutcome::Failed, AttemptOutcome::Retried]
        );
        let versions: Vec<i32> = admin
            .query(
                &format!(
                    "SELECT version FROM {}.schema_migrations ORDER BY version",
                    quote_ident(&schema)
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
        admin
            .execute(
                &format!(
                    "INSERT INTO {}.attempts (job_id, attempt, worker_id, started_at,
                         finished_at, outcome) VALUES ($1, 1, 'w', $2, $2, 'snoozed')",
                    quote_ident(&schema)
                ),
                &[&job.id.0, &t0],
            )
            .await
            .expect("version 4 allows the snoozed outcome");
        s.close().await.unwrap();
        admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
            .await
            .unwrap();
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("hauler_jobs"), "\"hauler_jobs\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
