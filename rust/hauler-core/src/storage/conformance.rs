//! The one test suite every [`Storage`] must pass (after River's `riverdrivertest`).
//!
//! A storage's test file runs the whole suite:
//!
//! ```no_run
//! use std::sync::Arc;
//! use hauler_core::storage::{conformance, MemoryStorage, Storage};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance() {
//!     conformance::run_all(|| async { Arc::new(MemoryStorage::new()) as Arc<dyn Storage> })
//!         .await;
//! }
//! ```
//!
//! Each case is also a public `async fn` taking a fresh storage, so a single failing case
//! can be run alone while fixing it. Cases pass every time explicitly as `now` (from
//! [`T0`]): a storage never reads the clock, so nothing here sleeps.
//!
//! What the suite does *not* pin down, because the trait leaves it open: the order of the
//! jobs *returned* by one claim (only which jobs are picked is checked; claim order is
//! checked one job at a time).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use super::{
    lease_duration, FinishOutcome, GroupInsertParams, JobCancelParams, JobCancelResult,
    JobClaimParams, JobCountParams, JobDeleteParams, JobFilter, JobFinish, JobFinishClaimParams,
    JobFinishClaimResult, JobFinishManyParams, JobHeartbeatParams, JobHeartbeatResult,
    JobInsertManyParams, JobListParams, JobNextRunAtParams, JobProgressSetParams, JobPruneParams,
    JobReclaimParams, JobReleaseParams, JobRetryParams, ScheduleRunNowParams, ScheduleTickParams,
    ScheduleUpsertParams, Storage,
};
use crate::error::Error;
use crate::group::{GroupCounts, GroupRecord, GroupStatus, NewGroup};
use crate::model::{
    AttemptOutcome, AttemptRecord, ClaimedJob, ConcurrencyLimit, ErrorInfo, GroupId, InsertedJob,
    JobId, JobLimits, JobRecord, JobStatus, LeaseToken, NewJob, QueueCount, RateLimit, Timestamp,
    UNIQUE_STATES_REQUIRED,
};
use crate::retry::{Backoff, BackoffKind, MaxRetries, RetryPolicy};
use crate::schedule::{CatchUp, JobTemplate, NewSchedule, ScheduleRecord, ScheduleSpec};

/// The time every case starts from (2023-11-14T22:13:20Z).
pub const T0: Timestamp = Timestamp::from_micros(1_700_000_000_000_000);

/// The queue the helpers use.
pub const QUEUE: &str = "default";

/// The job name the helpers use.
pub const NAME: &str = "job";

/// A new job with sensible defaults: priority 0, the default retry policy, no timeout,
/// a 5 s heartbeat, version 1, args `{}`, run now, no unique key.
pub fn new_job(name: &str, queue: &str) -> NewJob {
    NewJob {
        id: JobId::new(),
        name: name.to_owned(),
        queue: queue.to_owned(),
        args: "{}".to_owned(),
        priority: 0,
        retry: RetryPolicy::default(),
        timeout_ms: None,
        heartbeat_ms: 5000,
        run_at: None,
        version: 1,
        unique_key: None,
        limits: JobLimits::default(),
    }
}

/// A case: takes a fresh storage and panics on failure.
pub type CaseFn = fn(Arc<dyn Storage>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        /// Every case, by name, in the order [`run_all`] runs them.
        pub const CASES: &[(&str, CaseFn)] = &[$((stringify!($case), |s| Box::pin($case(s)))),*];
    };
}

cases![
    insert_and_get_round_trip,
    insert_many_is_all_or_none,
    claim_marks_job_running,
    claim_order_is_priority_then_run_at_then_id,
    claim_respects_limit,
    claim_filters_by_queue,
    claim_filters_by_name,
    scheduled_job_waits_for_run_at,
    claim_uses_the_given_now,
    concurrent_claimers_never_share_a_job,
    heartbeat_extends_lease,
    finish_completed,
    finish_retry,
    finish_failed,
    finish_many_answers_each_in_order,
    finish_with_stale_token_changes_nothing,
    finish_after_takeover_is_refused,
    late_report_before_reclaim_is_accepted,
    reclaim_makes_expired_job_available,
    reclaim_fails_job_when_retries_are_exhausted,
    release_restores_attempt,
    finish_snoozed_reschedules_without_counting,
    progress_set_is_fenced_and_visible,
    state_survives_retry_and_reclaim,
    history_records_every_attempt_in_order,
    list_filters,
    list_pages_newest_first_with_cursor,
    counts_per_queue_and_status,
    next_run_at_is_earliest_pending,
    cancel_stops_pending_jobs_at_once,
    cancel_of_a_running_job_is_a_request_that_ends_cancelled,
    cancel_requested_job_released_or_reclaimed_is_cancelled,
    cancel_leaves_finished_jobs_alone,
    retry_makes_failed_and_cancelled_jobs_available_again,
    delete_removes_jobs_but_not_running_ones,
    prune_deletes_old_finished_jobs_in_batches,
    filters_by_time_text_and_ids_for_list_count_and_admin,
    schedule_upsert_stores_and_updates_entries,
    schedule_tick_stores_one_job_per_tick,
    concurrent_ticks_store_one_job,
    schedule_run_now_and_delete,
    unique_job_matches_the_holder_of_its_key,
    unique_key_is_free_outside_the_holders_states,
    unique_states_must_cover_every_pending_status,
    concurrent_unique_inserts_store_one_job,
    retry_skips_a_unique_job_whose_key_is_held,
    concurrency_limit_passes_over_full_keys,
    concurrent_claimers_respect_a_concurrency_limit,
    rate_limit_counts_starts_in_a_sliding_window,
    limits_round_trip_and_ride_schedule_templates,
    group_insert_is_all_or_none,
    group_finishes_once_and_stores_on_complete,
    every_final_transition_finishes_a_group,
    cancel_group_cancels_the_rest,
    group_concurrency_limits_claims,
    group_limit_is_the_members_concurrency_key,
    concurrent_claimers_hold_the_group_limit,
    concurrent_finishers_store_on_complete_once,
    groups_go_with_their_last_member,
    finish_claim_records_then_claims,
    finish_claim_claims_even_when_a_finish_is_refused,
    finish_claim_holds_limits,
    finish_claim_can_claim_the_on_complete_it_stores,
    empty_batches,
    close_is_final_and_idempotent,
];

/// Run every case in [`CASES`], each against a fresh storage from `make`, and panic
/// listing the cases that failed. Must run inside a tokio runtime; use the multi-thread
/// flavor so the concurrency case really runs claimers in parallel.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Storage>>,
{
    let mut failures = Vec::new();
    for &(name, case) in CASES {
        let storage = make().await;
        // A task per case, so a failing case is reported by name and the rest still run.
        match tokio::spawn(case(Arc::clone(&storage))).await {
            Ok(()) => eprintln!("conformance: {name} ... ok"),
            Err(e) => {
                let why = if e.is_panic() {
                    panic_text(e.into_panic())
                } else {
                    e.to_string()
                };
                eprintln!("conformance: {name} ... FAILED: {why}");
                failures.push(format!("  {name}: {why}"));
            }
        }
        if let Err(e) = storage.close().await {
            failures.push(format!("  {name}: close after the case failed: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} storage conformance cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "panicked".to_owned(),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// `T0` plus `secs` seconds.
fn at(secs: i64) -> Timestamp {
    Timestamp::from_micros(T0.as_micros() + secs * 1_000_000)
}

/// One microsecond before `t`.
fn just_before(t: Timestamp) -> Timestamp {
    Timestamp::from_micros(t.as_micros() - 1)
}

/// One microsecond after `t`.
fn just_after(t: Timestamp) -> Timestamp {
    Timestamp::from_micros(t.as_micros() + 1)
}

/// `n` fresh ids in ascending order.
fn sorted_ids(n: usize) -> Vec<JobId> {
    let mut ids: Vec<JobId> = (0..n).map(|_| JobId::new()).collect();
    ids.sort();
    ids
}

/// `n` default jobs on [`QUEUE`] named [`NAME`], in ascending id order.
fn jobs(n: usize) -> Vec<NewJob> {
    sorted_ids(n)
        .into_iter()
        .map(|id| NewJob {
            id,
            ..new_job(NAME, QUEUE)
        })
        .collect()
}

fn job_with_hb(heartbeat_ms: u64) -> NewJob {
    NewJob {
        heartbeat_ms,
        ..new_job(NAME, QUEUE)
    }
}

fn job_with_retries(n: u32) -> NewJob {
    let mut job = new_job(NAME, QUEUE);
    job.retry.max_retries = MaxRetries::Count(n);
    job
}

fn boom(message: &str) -> ErrorInfo {
    ErrorInfo {
        kind: "ValueError".to_owned(),
        message: message.to_owned(),
        traceback: Some(format!(
            "Traceback (most recent call last):\nValueError: {message}\n"
        )),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn id_list(records: &[JobRecord]) -> Vec<JobId> {
    records.iter().map(|r| r.id).collect()
}

fn claimed_ids(claimed: &[ClaimedJob]) -> HashSet<JobId> {
    claimed.iter().map(|c| c.id).collect()
}

/// The record a storage must hold right after inserting `job` at `now`.
fn expected_record(job: &NewJob, now: Timestamp) -> JobRecord {
    let run_at = job.run_at.unwrap_or(now);
    JobRecord {
        id: job.id,
        name: job.name.clone(),
        queue: job.queue.clone(),
        args: job.args.clone(),
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
        unique_key: job.unique_key.clone(),
        limits: JobLimits {
            unique_states: match &job.unique_key {
                Some(_) => job.limits.unique_states().expect("valid unique states"),
                None => Vec::new(),
            },
            ..job.limits.clone()
        },
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
        group_id: None,
    }
}

async fn insert(s: &dyn Storage, jobs: Vec<NewJob>, now: Timestamp) {
    let n = jobs.len();
    let got = insert_many(s, jobs, now).await;
    assert_eq!(got.len(), n, "job_insert_many must answer once per job");
    assert!(got.iter().all(|j| !j.duplicate), "{got:?}");
}

async fn insert_many(s: &dyn Storage, jobs: Vec<NewJob>, now: Timestamp) -> Vec<InsertedJob> {
    s.job_insert_many(JobInsertManyParams { jobs, now })
        .await
        .expect("job_insert_many failed")
}

/// A job with unique key `key` (default unique states).
fn unique_job(key: &str) -> NewJob {
    NewJob {
        unique_key: Some(key.to_owned()),
        ..new_job(NAME, QUEUE)
    }
}

/// A job of concurrency key `key` with room for `limit` running at once.
fn limited_job(key: &str, limit: u32) -> NewJob {
    NewJob {
        limits: JobLimits {
            concurrency: Some(ConcurrencyLimit {
                key: key.to_owned(),
                limit,
            }),
            ..JobLimits::default()
        },
        ..new_job(NAME, QUEUE)
    }
}

fn stored(id: JobId) -> InsertedJob {
    InsertedJob {
        id,
        duplicate: false,
    }
}

fn duplicate_of(id: JobId) -> InsertedJob {
    InsertedJob {
        id,
        duplicate: true,
    }
}

async fn get(s: &dyn Storage, id: JobId) -> JobRecord {
    s.job_get(id)
        .await
        .expect("job_get failed")
        .unwrap_or_else(|| panic!("job {id} should be stored"))
}

async fn claim_from(
    s: &dyn Storage,
    queues: &[&str],
    names: &[&str],
    limit: u32,
    worker: &str,
    now: Timestamp,
) -> Vec<ClaimedJob> {
    s.job_claim(JobClaimParams {
        queues: strings(queues),
        names: strings(names),
        limit,
        worker_id: worker.to_owned(),
        now,
    })
    .await
    .expect("job_claim failed")
}

/// Claim from [`QUEUE`] / [`NAME`].
async fn claim(s: &dyn Storage, limit: u32, worker: &str, now: Timestamp) -> Vec<ClaimedJob> {
    claim_from(s, &[QUEUE], &[NAME], limit, worker, now).await
}

/// Claim exactly one job from [`QUEUE`] / [`NAME`].
async fn claim_one(s: &dyn Storage, worker: &str, now: Timestamp) -> ClaimedJob {
    let mut got = claim(s, 1, worker, now).await;
    assert_eq!(
        got.len(),
        1,
        "expected to claim one job at {now:?}, got {got:?}"
    );
    got.remove(0)
}

async fn finish(s: &dyn Storage, job: &ClaimedJob, outcome: FinishOutcome, now: Timestamp) -> bool {
    finish_with(s, job.id, job.lease, outcome, now).await
}

async fn finish_with(
    s: &dyn Storage,
    id: JobId,
    lease: LeaseToken,
    outcome: FinishOutcome,
    now: Timestamp,
) -> bool {
    let finishes = vec![JobFinish { id, lease, outcome }];
    let got = s
        .job_finish_many(JobFinishManyParams { finishes, now })
        .await
        .expect("job_finish_many failed");
    assert_eq!(got.len(), 1, "job_finish_many must answer once per finish");
    got[0]
}

/// The ids whose lease a heartbeat extended.
async fn heartbeat(
    s: &dyn Storage,
    leases: Vec<(JobId, LeaseToken)>,
    now: Timestamp,
) -> Vec<JobId> {
    beat(s, leases, now).await.extended
}

async fn beat(
    s: &dyn Storage,
    leases: Vec<(JobId, LeaseToken)>,
    now: Timestamp,
) -> JobHeartbeatResult {
    s.job_heartbeat(JobHeartbeatParams { leases, now })
        .await
        .expect("job_heartbeat failed")
}

async fn release(s: &dyn Storage, leases: Vec<(JobId, LeaseToken)>, now: Timestamp) -> u64 {
    s.job_release(JobReleaseParams { leases, now })
        .await
        .expect("job_release failed")
}

async fn reclaim(s: &dyn Storage, now: Timestamp) -> u64 {
    s.job_reclaim_expired(JobReclaimParams { now })
        .await
        .expect("job_reclaim_expired failed")
}

async fn list(s: &dyn Storage, params: JobListParams) -> Vec<JobRecord> {
    s.job_list(params).await.expect("job_list failed")
}

async fn next_run_at(s: &dyn Storage, queues: &[&str], names: &[&str]) -> Option<Timestamp> {
    s.job_next_run_at(JobNextRunAtParams {
        queues: strings(queues),
        names: strings(names),
    })
    .await
    .expect("job_next_run_at failed")
}

async fn sorted_counts(s: &dyn Storage) -> Vec<(String, JobStatus, u64)> {
    let mut counts: Vec<_> = s
        .job_counts()
        .await
        .expect("job_counts failed")
        .into_iter()
        .map(
            |QueueCount {
                 queue,
                 status,
                 count,
             }| (queue, status, count),
        )
        .collect();
    counts.sort();
    counts
}

fn lease_expired_error(worker: &str) -> ErrorInfo {
    ErrorInfo::engine(
        "LeaseExpired",
        format!("lease expired: worker {worker} stopped heartbeating"),
    )
}

/// A filter on these ids only.
fn by_ids(ids: &[JobId]) -> JobFilter {
    JobFilter {
        ids: Some(ids.to_vec()),
        ..JobFilter::default()
    }
}

async fn count(s: &dyn Storage, filter: JobFilter) -> u64 {
    s.job_count(JobCountParams { filter })
        .await
        .expect("job_count failed")
}

async fn cancel(s: &dyn Storage, filter: JobFilter, now: Timestamp) -> JobCancelResult {
    s.job_cancel(JobCancelParams { filter, now })
        .await
        .expect("job_cancel failed")
}

async fn retry(s: &dyn Storage, filter: JobFilter, now: Timestamp) -> u64 {
    s.job_retry(JobRetryParams { filter, now })
        .await
        .expect("job_retry failed")
}

async fn delete(s: &dyn Storage, filter: JobFilter) -> u64 {
    s.job_delete(JobDeleteParams { filter })
        .await
        .expect("job_delete failed")
}

async fn prune(s: &dyn Storage, statuses: &[JobStatus], before: Timestamp, limit: u32) -> u64 {
    s.job_prune(JobPruneParams {
        statuses: statuses.to_vec(),
        finished_before: before,
        limit,
    })
    .await
    .expect("job_prune failed")
}

fn cancelled(cancelled: u64, requested: u64) -> JobCancelResult {
    JobCancelResult {
        cancelled,
        requested,
    }
}

// ---------------------------------------------------------------------------------------
// Cases

/// Every field survives insert + get; `run_at` in the future stores `scheduled`, otherwise
/// `available`; `created_at` and a missing `run_at` are the insert's `now`.
pub async fn insert_and_get_round_trip(s: Arc<dyn Storage>) {
    let s = &*s;
    let now = at(0);
    let full = NewJob {
        id: JobId::new(),
        name: "emails.SendWelcome".to_owned(),
        queue: "mail".to_owned(),
        args: r#"{"to":"zoë@example.com","n":3,"quote":"\"x\"","tags":["✓"]}"#.to_owned(),
        priority: 7,
        retry: RetryPolicy {
            max_retries: MaxRetries::Count(3),
            backoff: Backoff {
                kind: BackoffKind::Linear(2.5),
                max_delay: 120.0,
                jitter: 0.25,
            },
        },
        timeout_ms: Some(30_000),
        heartbeat_ms: 750,
        run_at: None,
        version: 4,
        unique_key: Some("send:zoë@example.com".to_owned()),
        limits: JobLimits::default(),
    };
    let future = NewJob {
        run_at: Some(at(60)),
        priority: -2,
        retry: RetryPolicy {
            max_retries: MaxRetries::Infinite,
            backoff: Backoff::new(BackoffKind::Exponential(3.0)),
        },
        ..new_job("reports.Build", "reports")
    };
    let past = NewJob {
        run_at: Some(at(-60)),
        ..new_job(NAME, QUEUE)
    };
    let exact = NewJob {
        run_at: Some(now),
        ..new_job(NAME, QUEUE)
    };
    let soon = NewJob {
        run_at: Some(just_after(now)),
        ..new_job(NAME, QUEUE)
    };
    insert(
        s,
        vec![
            full.clone(),
            future.clone(),
            past.clone(),
            exact.clone(),
            soon.clone(),
        ],
        now,
    )
    .await;

    let want = JobRecord {
        id: full.id,
        name: "emails.SendWelcome".to_owned(),
        queue: "mail".to_owned(),
        args: full.args.clone(),
        status: JobStatus::Available,
        attempt: 0,
        retry: full.retry,
        priority: 7,
        timeout_ms: Some(30_000),
        heartbeat_ms: 750,
        version: 4,
        unique_key: Some("send:zoë@example.com".to_owned()),
        limits: JobLimits {
            unique_states: UNIQUE_STATES_REQUIRED.to_vec(),
            ..JobLimits::default()
        },
        created_at: now,
        run_at: now,
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
        group_id: None,
    };
    assert_eq!(
        get(s, full.id).await,
        want,
        "every field of an immediate job must round-trip"
    );

    let got = get(s, future.id).await;
    assert_eq!(
        got.status,
        JobStatus::Scheduled,
        "run_at in the future stores `scheduled`"
    );
    assert_eq!(
        got,
        expected_record(&future, now),
        "future job must round-trip"
    );
    let got = get(s, past.id).await;
    assert_eq!(
        got.status,
        JobStatus::Available,
        "run_at in the past stores `available`"
    );
    assert_eq!(got.run_at, at(-60), "a past run_at is kept as given");
    assert_eq!(got, expected_record(&past, now));
    let got = get(s, exact.id).await;
    assert_eq!(
        got.status,
        JobStatus::Available,
        "run_at == now stores `available`"
    );
    assert_eq!(got, expected_record(&exact, now));
    let got = get(s, soon.id).await;
    assert_eq!(
        got.status,
        JobStatus::Scheduled,
        "run_at 1µs after now stores `scheduled`"
    );

    assert_eq!(
        s.job_get(JobId::new()).await.expect("job_get failed"),
        None,
        "unknown id"
    );
}

/// A batch with a duplicate id, or an id already stored, fails with `Error::Storage` and
/// stores nothing.
pub async fn insert_many_is_all_or_none(s: Arc<dyn Storage>) {
    let s = &*s;
    let now = at(0);
    let a = new_job(NAME, QUEUE);
    let b = new_job(NAME, QUEUE);
    let a_again = NewJob {
        id: a.id,
        ..new_job("other", QUEUE)
    };
    let res = s
        .job_insert_many(JobInsertManyParams {
            jobs: vec![a.clone(), b.clone(), a_again],
            now,
        })
        .await;
    assert!(
        matches!(res, Err(Error::Storage(_))),
        "duplicate id in a batch: got {res:?}"
    );
    assert_eq!(
        s.job_get(a.id).await.expect("job_get"),
        None,
        "nothing stored (first copy)"
    );
    assert_eq!(
        s.job_get(b.id).await.expect("job_get"),
        None,
        "nothing stored (other job)"
    );
    assert!(list(
        s,
        JobListParams {
            limit: 100,
            ..Default::default()
        }
    )
    .await
    .is_empty());
    assert!(
        sorted_counts(s).await.is_empty(),
        "counts must not see a failed batch"
    );

    insert(s, vec![a.clone()], now).await;
    let c = new_job(NAME, QUEUE);
    let clash = NewJob {
        id: a.id,
        args: r#"{"x":1}"#.to_owned(),
        ..new_job("other", "q2")
    };
    let res = s
        .job_insert_many(JobInsertManyParams {
            jobs: vec![c.clone(), clash],
            now: at(5),
        })
        .await;
    assert!(
        matches!(res, Err(Error::Storage(_))),
        "id already stored: got {res:?}"
    );
    assert_eq!(
        s.job_get(c.id).await.expect("job_get"),
        None,
        "nothing of the batch stored"
    );
    assert_eq!(
        get(s, a.id).await,
        expected_record(&a, now),
        "the existing job is untouched"
    );
    assert_eq!(
        claim(s, 10, "w1", at(10)).await.len(),
        1,
        "only the first job is claimable"
    );
}

/// A claim makes the job `running` with attempt + 1, started_at, worker and lease, and
/// returns what a runner needs.
pub async fn claim_marks_job_running(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = NewJob {
        args: r#"{"n":1}"#.to_owned(),
        timeout_ms: Some(9_000),
        heartbeat_ms: 2_000,
        version: 3,
        ..new_job(NAME, QUEUE)
    };
    let other = new_job(NAME, QUEUE);
    insert(s, vec![job.clone(), other.clone()], at(0)).await;
    let now = at(1);
    let claimed = claim(s, 10, "w1", now).await;
    assert_eq!(claimed.len(), 2, "both jobs are due");
    let c = claimed
        .iter()
        .find(|c| c.id == job.id)
        .expect("the job is claimed")
        .clone();
    let o = claimed
        .iter()
        .find(|c| c.id == other.id)
        .expect("the other job is claimed");
    assert_ne!(c.lease, o.lease, "every claim gets its own lease token");
    let want = ClaimedJob {
        id: job.id,
        name: NAME.to_owned(),
        queue: QUEUE.to_owned(),
        args: job.args.clone(),
        attempt: 1,
        retry: job.retry,
        timeout_ms: Some(9_000),
        heartbeat_ms: 2_000,
        version: 3,
        started_at: now,
        lease: c.lease,
        state: None,
    };
    assert_eq!(c, want, "claimed job fields");

    let mut want = expected_record(&job, at(0));
    want.status = JobStatus::Running;
    want.attempt = 1;
    want.started_at = Some(now);
    want.worker_id = Some("w1".to_owned());
    want.lease_expires_at = Some(now.plus(lease_duration(2_000)));
    assert_eq!(get(s, job.id).await, want, "record after claim");
    assert!(
        claim(s, 10, "w2", at(2)).await.is_empty(),
        "a running job is not claimable"
    );
}

/// Claims pick priority DESC, then run_at ASC, then id ASC, across queues and names.
pub async fn claim_order_is_priority_then_run_at_then_id(s: Arc<dyn Storage>) {
    let s = &*s;
    let now = at(0);
    let ids = sorted_ids(9);
    // (priority, run_at offset in seconds) per id, ids ascending.
    let spec: [(i32, i64); 9] = [
        (0, -10),
        (5, -1),
        (5, -5),
        (i32::MIN, -100),
        (5, -5),
        (0, -10),
        (i32::MAX, 0),
        (0, -20),
        (1, 0),
    ];
    let queues = ["q1", "q2"];
    let names = ["a", "b", "c"];
    let mut batch: Vec<NewJob> = ids
        .iter()
        .zip(spec)
        .enumerate()
        .map(|(i, (&id, (priority, off)))| NewJob {
            id,
            priority,
            run_at: Some(at(off)),
            ..new_job(names[i % 3], queues[i % 2])
        })
        .collect();
    batch.reverse(); // insertion order must not matter
    insert(s, batch, at(-200)).await;

    let order = [6, 2, 4, 1, 8, 7, 0, 5, 3];
    let first3 = claim_from(s, &queues, &names, 3, "w1", now).await;
    assert_eq!(
        claimed_ids(&first3),
        order[..3].iter().map(|&i| ids[i]).collect(),
        "a claim of 3 picks the 3 first jobs in claim order"
    );
    for (k, &i) in order[3..].iter().enumerate() {
        let got = claim_from(s, &queues, &names, 1, "w1", now).await;
        let got_ids: Vec<JobId> = got.iter().map(|c| c.id).collect();
        assert_eq!(
            got_ids,
            vec![ids[i]],
            "claim #{} should pick job {i} (priority {}, run_at {:+}s)",
            k + 4,
            spec[i].0,
            spec[i].1
        );
    }
    assert!(
        claim_from(s, &queues, &names, 1, "w1", now)
            .await
            .is_empty(),
        "all claimed"
    );
}

/// A claim returns at most `limit` jobs; limit 0 claims nothing.
pub async fn claim_respects_limit(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, jobs(5), at(0)).await;
    assert!(
        claim(s, 0, "w1", at(1)).await.is_empty(),
        "limit 0 claims nothing"
    );
    let mut seen = HashSet::new();
    for want in [2, 2, 1, 0] {
        let got = claim(s, 2, "w1", at(1)).await;
        assert_eq!(got.len(), want, "claims of 2 over 5 jobs return 2, 2, 1, 0");
        for c in got {
            assert!(seen.insert(c.id), "job {} claimed twice", c.id);
        }
    }
}

/// A claim only takes jobs of the queues asked for; repeated queues or names do not
/// duplicate jobs.
pub async fn claim_filters_by_queue(s: Arc<dyn Storage>) {
    let s = &*s;
    let mk = |queue: &str, priority: i32| NewJob {
        priority,
        ..new_job(NAME, queue)
    };
    let (q1a, q1b, q2a, q2b, q3) = (
        mk("q1", 0),
        mk("q1", 0),
        mk("q2", 9),
        mk("q2", 9),
        mk("q3", 0),
    );
    insert(
        s,
        vec![
            q1a.clone(),
            q1b.clone(),
            q2a.clone(),
            q2b.clone(),
            q3.clone(),
        ],
        at(0),
    )
    .await;

    let got = claim_from(s, &["q1", "q3"], &[NAME], 10, "w1", at(1)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([q1a.id, q1b.id, q3.id]),
        "only q1 and q3"
    );
    assert_eq!(
        get(s, q2a.id).await.status,
        JobStatus::Available,
        "q2 untouched"
    );
    assert!(claim_from(s, &["nope"], &[NAME], 10, "w1", at(1))
        .await
        .is_empty());

    let got = claim_from(s, &["q2", "q2"], &[NAME, NAME], 10, "w1", at(1)).await;
    assert_eq!(
        got.len(),
        2,
        "repeated queue/name must not claim a job twice: {got:?}"
    );
    assert_eq!(claimed_ids(&got), HashSet::from([q2a.id, q2b.id]));
}

/// A worker never claims a name it did not ask for, whatever its priority.
pub async fn claim_filters_by_name(s: Arc<dyn Storage>) {
    let s = &*s;
    let mk = |name: &str, priority: i32| NewJob {
        priority,
        ..new_job(name, QUEUE)
    };
    let (a1, a2, b1, b2, c1, c2) = (
        mk("a", 0),
        mk("a", 0),
        mk("b", 100),
        mk("b", 100),
        mk("c", 50),
        mk("c", 50),
    );
    let all = vec![
        a1.clone(),
        a2.clone(),
        b1.clone(),
        b2.clone(),
        c1.clone(),
        c2.clone(),
    ];
    insert(s, all, at(0)).await;

    let got = claim_from(s, &[QUEUE], &["a"], 10, "w1", at(1)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([a1.id, a2.id]),
        "only name a"
    );
    for id in [b1.id, b2.id, c1.id, c2.id] {
        assert_eq!(
            get(s, id).await.status,
            JobStatus::Available,
            "other names untouched"
        );
    }
    assert!(claim_from(s, &[QUEUE], &["zzz"], 10, "w1", at(1))
        .await
        .is_empty());
    let got = claim_from(s, &[QUEUE], &["c", "b"], 2, "w2", at(1)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([b1.id, b2.id]),
        "priority across names"
    );
    let got = claim_from(s, &[QUEUE], &["c", "b"], 10, "w2", at(1)).await;
    assert_eq!(claimed_ids(&got), HashSet::from([c1.id, c2.id]));
}

/// A job with a future run_at is not claimable before it, and is at and after it.
pub async fn scheduled_job_waits_for_run_at(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = NewJob {
        run_at: Some(at(30)),
        ..new_job(NAME, QUEUE)
    };
    let late = NewJob {
        run_at: Some(at(60)),
        ..new_job(NAME, QUEUE)
    };
    insert(s, vec![job.clone(), late.clone()], at(0)).await;
    assert_eq!(get(s, job.id).await.status, JobStatus::Scheduled);
    assert!(
        claim(s, 10, "w1", at(0)).await.is_empty(),
        "not claimable at insert time"
    );
    assert!(
        claim(s, 10, "w1", just_before(at(30))).await.is_empty(),
        "not 1µs before run_at"
    );
    assert_eq!(
        get(s, job.id).await.status,
        JobStatus::Scheduled,
        "a failed claim changes nothing"
    );
    let got = claim(s, 10, "w1", at(30)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([job.id]),
        "claimable exactly at run_at"
    );
    assert_eq!(got[0].attempt, 1);
    let got = claim(s, 10, "w1", at(90)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([late.id]),
        "claimable after run_at"
    );
}

/// Claims use the `now` they are given, even when it moves backwards or jobs are stored
/// between claims with run times the storage has already passed.
pub async fn claim_uses_the_given_now(s: Arc<dyn Storage>) {
    let s = &*s;
    let a = NewJob {
        run_at: Some(at(150)),
        ..new_job(NAME, QUEUE)
    };
    let b = NewJob {
        run_at: Some(at(250)),
        ..new_job(NAME, QUEUE)
    };
    insert(s, vec![a.clone(), b.clone()], at(0)).await;
    let got = claim(s, 1, "w1", at(300)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([a.id]),
        "earliest run_at first"
    );
    assert!(
        claim(s, 10, "w1", at(200)).await.is_empty(),
        "b is not due at 200"
    );
    let got = claim(s, 10, "w1", at(250)).await;
    assert_eq!(claimed_ids(&got), HashSet::from([b.id]), "b is due at 250");

    let d = NewJob {
        run_at: Some(at(280)),
        ..new_job(NAME, QUEUE)
    };
    let e = NewJob {
        run_at: Some(at(400)),
        ..new_job(NAME, QUEUE)
    };
    let past = NewJob {
        run_at: Some(at(-50)),
        ..new_job(NAME, QUEUE)
    };
    insert(s, vec![d.clone(), e.clone(), past.clone()], at(0)).await;
    let got = claim(s, 10, "w1", at(260)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([past.id]),
        "only the overdue job at 260"
    );
    let got = claim(s, 10, "w1", at(280)).await;
    assert_eq!(claimed_ids(&got), HashSet::from([d.id]));
    assert!(
        claim(s, 10, "w1", at(350)).await.is_empty(),
        "e is not due at 350"
    );
    let got = claim(s, 10, "w1", at(400)).await;
    assert_eq!(claimed_ids(&got), HashSet::from([e.id]));
}

/// 8 claimers racing over 500 jobs never get the same job, and together get all of them.
pub async fn concurrent_claimers_never_share_a_job(s: Arc<dyn Storage>) {
    const JOBS: usize = 500;
    const CLAIMERS: usize = 8;
    let all = jobs(JOBS);
    insert(&*s, all.clone(), at(0)).await;
    let mut tasks = Vec::new();
    for i in 0..CLAIMERS {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{i}");
            let limit = 1 + u32::try_from(i % 5).unwrap_or(0) * 3;
            let mut mine = Vec::new();
            loop {
                let got = claim(&*s, limit, &worker, at(1)).await;
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|c| (c.id, worker.clone())));
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut by_job = std::collections::HashMap::new();
    for t in tasks {
        for (id, worker) in t.await.expect("claimer task panicked") {
            if let Some(first) = by_job.insert(id, worker.clone()) {
                panic!("job {id} was claimed by both {first} and {worker}");
            }
        }
    }
    assert_eq!(
        by_job.len(),
        JOBS,
        "together the claimers must get every job"
    );
    for job in &all {
        let r = get(&*s, job.id).await;
        assert_eq!(r.status, JobStatus::Running);
        assert_eq!(r.attempt, 1, "each job claimed exactly once");
        assert_eq!(
            r.worker_id.as_ref(),
            by_job.get(&job.id),
            "worker_id is the claimer"
        );
    }
}

/// A heartbeat with the claim's token moves the lease to `now + lease`; a wrong token, an
/// unknown job or a job no longer running is not extended.
pub async fn heartbeat_extends_lease(s: Arc<dyn Storage>) {
    let s = &*s;
    let lease = lease_duration(1_000);
    let job = job_with_hb(1_000);
    let other = job_with_hb(1_000);
    insert(s, vec![job.clone(), other.clone()], at(0)).await;
    let c = claim_from(s, &[QUEUE], &[NAME], 1, "w1", at(0))
        .await
        .remove(0);
    let o = claim_one(s, "w2", at(0)).await;
    let first_expiry = at(0).plus(lease);

    let t = at(2);
    let got = heartbeat(s, vec![(c.id, c.lease), (o.id, LeaseToken::new())], t).await;
    assert_eq!(got, vec![c.id], "only the matching token is extended");
    assert_eq!(
        get(s, c.id).await.lease_expires_at,
        Some(t.plus(lease)),
        "lease = now + lease"
    );
    assert_eq!(
        get(s, o.id).await.lease_expires_at,
        Some(first_expiry),
        "wrong token: unchanged"
    );
    assert!(
        heartbeat(s, vec![(JobId::new(), c.lease)], t)
            .await
            .is_empty(),
        "unknown job"
    );

    assert_eq!(
        reclaim(s, just_after(first_expiry)).await,
        1,
        "only the other job expired"
    );
    assert_eq!(
        get(s, c.id).await.status,
        JobStatus::Running,
        "heartbeated job kept"
    );
    assert_eq!(
        reclaim(s, just_before(t.plus(lease))).await,
        0,
        "not reclaimed before lease end"
    );
    assert_eq!(
        reclaim(s, t.plus(lease)).await,
        0,
        "not reclaimed at lease end (strictly after)"
    );
    assert_eq!(get(s, c.id).await.worker_id.as_deref(), Some("w1"));
    assert_eq!(
        reclaim(s, just_after(t.plus(lease))).await,
        1,
        "reclaimed once the lease ends"
    );
    assert!(
        heartbeat(s, vec![(c.id, c.lease)], at(10)).await.is_empty(),
        "a reclaimed job's old token is not extended"
    );
    let r = get(s, c.id).await;
    assert_eq!((r.status, r.lease_expires_at), (JobStatus::Available, None));
}

/// Completed: status, finished_at, history entry; worker and lease cleared.
pub async fn finish_completed(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = new_job(NAME, QUEUE);
    insert(s, vec![job.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(1)).await;
    assert!(
        finish(s, &c, FinishOutcome::Completed, at(3)).await,
        "finish accepted"
    );
    let mut want = expected_record(&job, at(0));
    want.status = JobStatus::Completed;
    want.attempt = 1;
    want.started_at = Some(at(1));
    want.finished_at = Some(at(3));
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(1),
        finished_at: at(3),
        outcome: AttemptOutcome::Completed,
        error: None,
    }];
    assert_eq!(get(s, job.id).await, want, "record after completion");
    assert!(
        claim(s, 10, "w1", at(100)).await.is_empty(),
        "completed jobs are never claimed"
    );
    assert!(
        !finish(s, &c, FinishOutcome::Completed, at(4)).await,
        "no second completion"
    );
    assert_eq!(
        get(s, job.id).await,
        want,
        "a refused finish changes nothing"
    );
}

/// Retry: `retryable` at retry_at with last_error and a failed history entry; claimable
/// again at retry_at with the next attempt number.
pub async fn finish_retry(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = new_job(NAME, QUEUE);
    insert(s, vec![job.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(1)).await;
    let err = boom("first try");
    let outcome = FinishOutcome::Retry {
        retry_at: at(60),
        error: err.clone(),
    };
    assert!(finish(s, &c, outcome, at(2)).await);
    let mut want = expected_record(&job, at(0));
    want.status = JobStatus::Retryable;
    want.attempt = 1;
    want.run_at = at(60);
    want.started_at = Some(at(1));
    want.last_error = Some(err.clone());
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(1),
        finished_at: at(2),
        outcome: AttemptOutcome::Failed,
        error: Some(err.clone()),
    }];
    assert_eq!(get(s, job.id).await, want, "record after a retry");
    assert_eq!(
        next_run_at(s, &[QUEUE], &[NAME]).await,
        Some(at(60)),
        "retryable is pending"
    );

    assert!(
        claim(s, 10, "w2", just_before(at(60))).await.is_empty(),
        "not before retry_at"
    );
    let c2 = claim_one(s, "w2", at(60)).await;
    assert_eq!(c2.attempt, 2, "second attempt");
    assert_ne!(c2.lease, c.lease, "a new claim gets a new token");
    let r = get(s, job.id).await;
    assert_eq!(
        (r.status, r.worker_id.as_deref()),
        (JobStatus::Running, Some("w2"))
    );
    assert_eq!(
        r.last_error,
        Some(err.clone()),
        "last_error survives the next claim"
    );

    // A retry time already past is claimable at once.
    let outcome = FinishOutcome::Retry {
        retry_at: at(50),
        error: boom("second"),
    };
    assert!(finish(s, &c2, outcome, at(61)).await);
    let c3 = claim_one(s, "w3", at(61)).await;
    assert_eq!(c3.attempt, 3);
    assert!(finish(s, &c3, FinishOutcome::Completed, at(62)).await);
    let r = get(s, job.id).await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.finished_at, Some(at(62)));
    assert_eq!(
        r.last_error,
        Some(boom("second")),
        "completion keeps the most recent error"
    );
    let outcomes: Vec<_> = r.history.iter().map(|h| (h.attempt, h.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, AttemptOutcome::Failed),
            (2, AttemptOutcome::Failed),
            (3, AttemptOutcome::Completed)
        ]
    );
}

/// Failed: `failed` for good, with finished_at, last_error and a failed history entry.
pub async fn finish_failed(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = new_job(NAME, QUEUE);
    insert(s, vec![job.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(1)).await;
    let err = boom("fatal");
    assert!(finish(s, &c, FinishOutcome::Failed { error: err.clone() }, at(5)).await);
    let mut want = expected_record(&job, at(0));
    want.status = JobStatus::Failed;
    want.attempt = 1;
    want.started_at = Some(at(1));
    want.finished_at = Some(at(5));
    want.last_error = Some(err.clone());
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(1),
        finished_at: at(5),
        outcome: AttemptOutcome::Failed,
        error: Some(err),
    }];
    assert_eq!(get(s, job.id).await, want, "record after a final failure");
    assert!(
        claim(s, 10, "w1", at(1000)).await.is_empty(),
        "failed jobs are never claimed"
    );
    assert_eq!(
        next_run_at(s, &[QUEUE], &[NAME]).await,
        None,
        "failed is not pending"
    );
}

/// A batch of finishes answers once per finish, in order, applying each on its own.
pub async fn finish_many_answers_each_in_order(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, jobs(4), at(0)).await;
    let mut cs = claim(s, 4, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    let finishes = vec![
        JobFinish {
            id: cs[0].id,
            lease: cs[0].lease,
            outcome: FinishOutcome::Completed,
        },
        JobFinish {
            id: cs[1].id,
            lease: LeaseToken::new(),
            outcome: FinishOutcome::Completed,
        },
        JobFinish {
            id: cs[2].id,
            lease: cs[2].lease,
            outcome: FinishOutcome::Retry {
                retry_at: at(10),
                error: boom("again"),
            },
        },
        JobFinish {
            id: cs[3].id,
            lease: cs[3].lease,
            outcome: FinishOutcome::Failed { error: boom("no") },
        },
        // The same job twice: the second finds it no longer running.
        JobFinish {
            id: cs[0].id,
            lease: cs[0].lease,
            outcome: FinishOutcome::Completed,
        },
        JobFinish {
            id: JobId::new(),
            lease: LeaseToken::new(),
            outcome: FinishOutcome::Completed,
        },
    ];
    let got = s
        .job_finish_many(JobFinishManyParams {
            finishes,
            now: at(2),
        })
        .await
        .expect("job_finish_many failed");
    assert_eq!(
        got,
        vec![true, false, true, true, false, false],
        "one answer per finish"
    );
    let statuses = [
        get(s, cs[0].id).await.status,
        get(s, cs[1].id).await.status,
        get(s, cs[2].id).await.status,
        get(s, cs[3].id).await.status,
    ];
    assert_eq!(
        statuses,
        [
            JobStatus::Completed,
            JobStatus::Running,
            JobStatus::Retryable,
            JobStatus::Failed
        ]
    );
    assert_eq!(
        get(s, cs[0].id).await.history.len(),
        1,
        "the duplicate finish added nothing"
    );
}

/// A finish with a wrong token, for a job not running, or for an unknown job, is refused
/// and changes nothing.
pub async fn finish_with_stale_token_changes_nothing(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = new_job(NAME, QUEUE);
    insert(s, vec![job.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(1)).await;
    let before = get(s, job.id).await;
    let outcomes = [
        FinishOutcome::Completed,
        FinishOutcome::Retry {
            retry_at: at(5),
            error: boom("x"),
        },
        FinishOutcome::Failed { error: boom("y") },
    ];
    for outcome in outcomes.clone() {
        assert!(
            !finish_with(s, job.id, LeaseToken::new(), outcome, at(2)).await,
            "wrong token"
        );
        assert_eq!(
            get(s, job.id).await,
            before,
            "a refused finish changes nothing"
        );
    }
    assert!(
        !finish_with(s, JobId::new(), c.lease, FinishOutcome::Completed, at(2)).await,
        "unknown job"
    );
    assert_eq!(
        release(s, vec![(job.id, LeaseToken::new())], at(2)).await,
        0,
        "wrong token"
    );
    assert_eq!(
        get(s, job.id).await,
        before,
        "a refused release changes nothing"
    );

    assert!(
        finish(
            s,
            &c,
            FinishOutcome::Failed {
                error: boom("done")
            },
            at(3)
        )
        .await
    );
    let done = get(s, job.id).await;
    for outcome in outcomes {
        assert!(
            !finish(s, &c, outcome, at(4)).await,
            "the job is no longer running"
        );
        assert_eq!(
            get(s, job.id).await,
            done,
            "a refused finish changes nothing"
        );
    }
}

/// After the lease expires and another worker claims the job, the first worker's reports
/// are all refused, and the history shows both attempts.
pub async fn finish_after_takeover_is_refused(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = job_with_hb(1_000);
    insert(s, vec![job.clone()], at(0)).await;
    let first = claim_one(s, "w1", at(0)).await;
    let expiry = at(0).plus(lease_duration(1_000));
    assert_eq!(reclaim(s, just_after(expiry)).await, 1);
    let second = claim_one(s, "w2", at(10)).await;
    assert_eq!(second.attempt, 2);
    assert_ne!(first.lease, second.lease);

    assert!(
        !finish(s, &first, FinishOutcome::Completed, at(11)).await,
        "stale completion"
    );
    assert!(
        heartbeat(s, vec![(first.id, first.lease)], at(11))
            .await
            .is_empty(),
        "stale heartbeat"
    );
    assert_eq!(
        release(s, vec![(first.id, first.lease)], at(11)).await,
        0,
        "stale release"
    );
    let r = get(s, job.id).await;
    assert_eq!(
        r.status,
        JobStatus::Running,
        "still running under the second claim"
    );
    assert_eq!(r.worker_id.as_deref(), Some("w2"));
    assert_eq!(r.attempt, 2);

    assert!(finish(s, &second, FinishOutcome::Completed, at(12)).await);
    let r = get(s, job.id).await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(
        r.history,
        vec![
            AttemptRecord {
                attempt: 1,
                worker_id: "w1".to_owned(),
                started_at: at(0),
                finished_at: just_after(expiry),
                outcome: AttemptOutcome::LeaseExpired,
                error: Some(lease_expired_error("w1")),
            },
            AttemptRecord {
                attempt: 2,
                worker_id: "w2".to_owned(),
                started_at: at(10),
                finished_at: at(12),
                outcome: AttemptOutcome::Completed,
                error: None,
            },
        ],
        "history shows both attempts"
    );
}

/// A lease is lost when it is reclaimed, not when it expires: until a reclaim runs, the
/// holder's heartbeat and finish still apply.
pub async fn late_report_before_reclaim_is_accepted(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, vec![job_with_hb(1_000), job_with_hb(1_000)], at(0)).await;
    let mut cs = claim(s, 2, "w1", at(0)).await;
    assert_eq!(cs.len(), 2);
    let (a, b) = (cs.remove(0), cs.remove(0));
    let late = at(100);
    assert_eq!(heartbeat(s, vec![(a.id, a.lease)], late).await, vec![a.id]);
    assert_eq!(
        get(s, a.id).await.lease_expires_at,
        Some(late.plus(lease_duration(1_000))),
        "a late heartbeat renews the lease"
    );
    assert!(
        finish(s, &b, FinishOutcome::Completed, late).await,
        "a late finish is accepted"
    );
    assert_eq!(
        reclaim(s, just_after(late)).await,
        0,
        "nothing left to reclaim"
    );
}

/// Reclaim takes running jobs whose lease ended strictly before `now`: the attempt is
/// recorded as `lease_expired`, the job is `available` at once with its attempt count.
pub async fn reclaim_makes_expired_job_available(s: Arc<dyn Storage>) {
    let s = &*s;
    let short = job_with_hb(1_000);
    let long = job_with_hb(10_000);
    insert(s, vec![short.clone(), long.clone()], at(0)).await;
    let got = claim(s, 2, "w1", at(0)).await;
    assert_eq!(got.len(), 2);
    let expiry = at(0).plus(lease_duration(1_000));

    assert_eq!(
        reclaim(s, expiry).await,
        0,
        "a lease ending exactly now is not expired"
    );
    let now = just_after(expiry);
    assert_eq!(reclaim(s, now).await, 1, "only the short lease expired");
    let mut want = expected_record(&short, at(0));
    want.status = JobStatus::Available;
    want.attempt = 1;
    want.run_at = now;
    want.started_at = Some(at(0));
    want.last_error = Some(lease_expired_error("w1"));
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(0),
        finished_at: now,
        outcome: AttemptOutcome::LeaseExpired,
        error: Some(lease_expired_error("w1")),
    }];
    assert_eq!(get(s, short.id).await, want, "record after reclaim");
    assert_eq!(
        get(s, long.id).await.status,
        JobStatus::Running,
        "unexpired lease kept"
    );

    assert_eq!(reclaim(s, now).await, 0, "a reclaim is done once");
    let again = claim_one(s, "w2", now).await;
    assert_eq!(
        (again.id, again.attempt),
        (short.id, 2),
        "claimable again, next attempt"
    );
    assert_eq!(
        reclaim(s, just_after(now)).await,
        0,
        "the new claim has a fresh lease"
    );
}

/// Reclaiming a job with no retries left fails it for good.
pub async fn reclaim_fails_job_when_retries_are_exhausted(s: Arc<dyn Storage>) {
    let s = &*s;
    let none = NewJob {
        heartbeat_ms: 1_000,
        ..job_with_retries(0)
    };
    let one = NewJob {
        heartbeat_ms: 1_000,
        ..job_with_retries(1)
    };
    insert(s, vec![none.clone(), one.clone()], at(0)).await;
    assert_eq!(claim(s, 2, "w1", at(0)).await.len(), 2);
    let t1 = at(10);
    assert_eq!(reclaim(s, t1).await, 2);

    let r = get(s, none.id).await;
    assert_eq!(
        r.status,
        JobStatus::Failed,
        "MaxRetries::Count(0): no second attempt"
    );
    assert_eq!(r.finished_at, Some(t1));
    assert_eq!((r.worker_id, r.lease_expires_at), (None, None));
    assert_eq!(r.last_error, Some(lease_expired_error("w1")));
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.history[0].outcome, AttemptOutcome::LeaseExpired);

    let r = get(s, one.id).await;
    assert_eq!(
        r.status,
        JobStatus::Available,
        "MaxRetries::Count(1) allows a second attempt"
    );
    assert_eq!(r.finished_at, None);
    let c = claim_one(s, "w2", t1).await;
    assert_eq!((c.id, c.attempt), (one.id, 2));
    let t2 = at(20);
    assert_eq!(reclaim(s, t2).await, 1);
    let r = get(s, one.id).await;
    assert_eq!(
        r.status,
        JobStatus::Failed,
        "retries used up after the second attempt"
    );
    assert_eq!(r.finished_at, Some(t2));
    assert_eq!(r.last_error, Some(lease_expired_error("w2")));
    let attempts: Vec<_> = r
        .history
        .iter()
        .map(|h| (h.attempt, h.worker_id.as_str()))
        .collect();
    assert_eq!(attempts, vec![(1, "w1"), (2, "w2")]);
    assert!(
        claim(s, 10, "w3", at(30)).await.is_empty(),
        "failed jobs are never claimed"
    );
}

/// Release hands running jobs back: `available` now, attempt count restored, a
/// `released` history entry, fenced by the token.
pub async fn release_restores_attempt(s: Arc<dyn Storage>) {
    let s = &*s;
    let all = jobs(3);
    insert(s, all.clone(), at(0)).await;
    let mut cs = claim(s, 3, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    let leases = vec![
        (cs[0].id, cs[0].lease),
        (cs[1].id, cs[1].lease),
        (cs[2].id, LeaseToken::new()),
    ];
    assert_eq!(
        release(s, leases, at(4)).await,
        2,
        "two right tokens, one wrong"
    );

    let mut want = expected_record(&all[0], at(0));
    want.run_at = at(4);
    want.started_at = Some(at(1));
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(1),
        finished_at: at(4),
        outcome: AttemptOutcome::Released,
        error: None,
    }];
    assert_eq!(get(s, all[0].id).await, want, "record after release");
    assert_eq!(
        get(s, all[2].id).await.status,
        JobStatus::Running,
        "wrong token: kept"
    );
    assert_eq!(
        release(s, vec![(cs[0].id, cs[0].lease)], at(5)).await,
        0,
        "released once"
    );

    let again = claim(s, 2, "w2", at(5)).await;
    assert_eq!(claimed_ids(&again), HashSet::from([cs[0].id, cs[1].id]));
    assert!(
        again.iter().all(|c| c.attempt == 1),
        "a released attempt is not counted"
    );
    let c = again.iter().find(|c| c.id == cs[0].id).expect("claimed");
    assert!(finish(s, c, FinishOutcome::Completed, at(6)).await);
    let outcomes: Vec<_> = get(s, c.id)
        .await
        .history
        .iter()
        .map(|h| (h.attempt, h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, AttemptOutcome::Released),
            (1, AttemptOutcome::Completed)
        ]
    );
}

/// A snoozed job becomes `scheduled` at its `run_at` with the attempt not counted; the
/// history says `snoozed`; a stale token cannot snooze; a cancel request wins.
pub async fn finish_snoozed_reschedules_without_counting(s: Arc<dyn Storage>) {
    let s = &*s;
    let all = jobs(2);
    insert(s, all.clone(), at(0)).await;
    let mut cs = claim(s, 2, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    let snooze = FinishOutcome::Snoozed { run_at: at(10) };
    assert!(finish(s, &cs[0], snooze.clone(), at(2)).await);
    assert!(
        !finish(s, &cs[0], snooze.clone(), at(3)).await,
        "the token is spent"
    );

    let mut want = expected_record(&all[0], at(0));
    want.status = JobStatus::Scheduled;
    want.run_at = at(10);
    want.started_at = Some(at(1));
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(1),
        finished_at: at(2),
        outcome: AttemptOutcome::Snoozed,
        error: None,
    }];
    assert_eq!(get(s, all[0].id).await, want, "record after snooze");
    assert!(
        claim(s, 2, "w2", at(9)).await.is_empty(),
        "not due before run_at"
    );
    let again = claim_one(s, "w2", at(10)).await;
    assert_eq!(
        (again.id, again.attempt),
        (all[0].id, 1),
        "the attempt is not counted"
    );
    assert!(finish(s, &again, FinishOutcome::Completed, at(11)).await);
    let outcomes: Vec<_> = get(s, again.id)
        .await
        .history
        .iter()
        .map(|h| (h.attempt, h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![(1, AttemptOutcome::Snoozed), (1, AttemptOutcome::Completed)]
    );

    assert_eq!(cancel(s, by_ids(&[cs[1].id]), at(3)).await, cancelled(0, 1));
    assert!(finish(s, &cs[1], snooze, at(4)).await);
    let got = get(s, cs[1].id).await;
    assert_eq!(got.status, JobStatus::Cancelled, "a requested cancel wins");
    assert_eq!(got.attempt, 1);
    assert_eq!(
        got.history.iter().map(|h| h.outcome).collect::<Vec<_>>(),
        vec![AttemptOutcome::Cancelled]
    );
}

async fn progress_set(
    s: &dyn Storage,
    c: &ClaimedJob,
    progress: Option<(u8, Option<&str>)>,
    state: Option<&str>,
    now: Timestamp,
) -> bool {
    s.job_progress_set(JobProgressSetParams {
        id: c.id,
        lease: c.lease,
        progress: progress.map(|(p, m)| (p, m.map(str::to_owned))),
        state: state.map(str::to_owned),
        now,
    })
    .await
    .expect("job_progress_set failed")
}

/// Progress and state are written at once under the claim's token and shown by get; each
/// is left alone when not given; a spent or unknown token is refused and changes nothing.
pub async fn progress_set_is_fenced_and_visible(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = new_job(NAME, QUEUE);
    insert(s, vec![job.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(1)).await;
    assert_eq!(c.state, None, "no state before the job saves one");
    assert!(progress_set(s, &c, Some((40, Some("reading"))), None, at(2)).await);
    let got = get(s, job.id).await;
    assert_eq!(
        (got.progress, got.progress_message.as_deref(), got.state),
        (Some(40), Some("reading"), None)
    );
    assert!(progress_set(s, &c, None, Some(r#"{"page":3}"#), at(3)).await);
    let got = get(s, job.id).await;
    assert_eq!(
        (
            got.progress,
            got.progress_message.as_deref(),
            got.state.as_deref()
        ),
        (Some(40), Some("reading"), Some(r#"{"page":3}"#)),
        "state alone leaves progress as it was"
    );
    assert!(progress_set(s, &c, Some((100, None)), None, at(4)).await);
    let got = get(s, job.id).await;
    assert_eq!(
        (
            got.progress,
            got.progress_message.as_deref(),
            got.state.as_deref()
        ),
        (Some(100), None, Some(r#"{"page":3}"#)),
        "a progress without message clears the message"
    );

    let stranger = ClaimedJob {
        lease: LeaseToken::new(),
        ..c.clone()
    };
    assert!(
        !progress_set(s, &stranger, Some((1, None)), Some("{}"), at(5)).await,
        "another token is refused"
    );
    assert!(finish(s, &c, FinishOutcome::Completed, at(6)).await);
    assert!(
        !progress_set(s, &c, Some((1, None)), Some("{}"), at(7)).await,
        "a finished job's token is spent"
    );
    let got = get(s, job.id).await;
    assert_eq!(got.status, JobStatus::Completed);
    assert_eq!(
        (got.progress, got.state.as_deref()),
        (Some(100), Some(r#"{"page":3}"#)),
        "refused writes change nothing; progress and state outlive the run"
    );
}

/// State saved in one attempt is handed to the next claim, after a retry and after a
/// reclaim; the old attempt's token can no longer write it.
pub async fn state_survives_retry_and_reclaim(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = job_with_hb(1_000);
    insert(s, vec![job.clone()], at(0)).await;
    let first = claim_one(s, "w1", at(1)).await;
    assert!(progress_set(s, &first, Some((30, None)), Some(r#"{"step":1}"#), at(2)).await);
    let retry = FinishOutcome::Retry {
        retry_at: at(3),
        error: boom("first try"),
    };
    assert!(finish(s, &first, retry, at(3)).await);
    let second = claim_one(s, "w2", at(3)).await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.state.as_deref(),
        Some(r#"{"step":1}"#),
        "kept across a retry"
    );

    assert!(progress_set(s, &second, None, Some(r#"{"step":2}"#), at(4)).await);
    let now = just_after(at(3).plus(lease_duration(1_000)));
    assert_eq!(reclaim(s, now).await, 1);
    assert!(
        !progress_set(s, &second, None, Some(r#"{"step":9}"#), now).await,
        "a reclaimed lease can no longer write"
    );
    let third = claim_one(s, "w3", now).await;
    assert_eq!(third.attempt, 3);
    assert_eq!(
        third.state.as_deref(),
        Some(r#"{"step":2}"#),
        "kept across a reclaim"
    );
    let got = get(s, job.id).await;
    assert_eq!(
        (got.progress, got.state.as_deref()),
        (Some(30), Some(r#"{"step":2}"#))
    );
}

/// Every kind of attempt end lands in the history, oldest first; last_error is the most
/// recent error.
pub async fn history_records_every_attempt_in_order(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = job_with_hb(1_000);
    insert(s, vec![job.clone()], at(0)).await;
    let c1 = claim_one(s, "w1", at(0)).await;
    let outcome = FinishOutcome::Retry {
        retry_at: at(5),
        error: boom("one"),
    };
    assert!(finish(s, &c1, outcome, at(1)).await);
    let c2 = claim_one(s, "w2", at(5)).await;
    assert_eq!(reclaim(s, at(60)).await, 1);
    let c3 = claim_one(s, "w3", at(60)).await;
    assert_eq!(release(s, vec![(c3.id, c3.lease)], at(61)).await, 1);
    let c4 = claim_one(s, "w4", at(62)).await;
    assert_eq!((c2.attempt, c3.attempt, c4.attempt), (2, 3, 3));
    assert!(finish(s, &c4, FinishOutcome::Completed, at(63)).await);

    let r = get(s, job.id).await;
    let want = vec![
        (
            1,
            "w1",
            at(0),
            at(1),
            AttemptOutcome::Failed,
            Some(boom("one")),
        ),
        (
            2,
            "w2",
            at(5),
            at(60),
            AttemptOutcome::LeaseExpired,
            Some(lease_expired_error("w2")),
        ),
        (3, "w3", at(60), at(61), AttemptOutcome::Released, None),
        (3, "w4", at(62), at(63), AttemptOutcome::Completed, None),
    ];
    let got: Vec<_> = r
        .history
        .iter()
        .map(|h| {
            (
                h.attempt,
                h.worker_id.as_str(),
                h.started_at,
                h.finished_at,
                h.outcome,
                h.error.clone(),
            )
        })
        .collect();
    assert_eq!(got, want, "history, oldest first");
    assert_eq!(r.attempt, 3);
    assert_eq!(
        r.last_error,
        Some(lease_expired_error("w2")),
        "the most recent error"
    );
    assert_eq!(
        (r.status, r.finished_at),
        (JobStatus::Completed, Some(at(63)))
    );
}

/// List filters by statuses, name and queue, newest first.
pub async fn list_filters(s: Arc<dyn Storage>) {
    let s = &*s;
    let ids = sorted_ids(7);
    let spec = [
        ("a", "q1"),
        ("b", "q1"),
        ("a", "q2"),
        ("b", "q2"),
        ("a", "q1"),
        ("b", "q2"),
        ("a", "q1"),
    ];
    let batch: Vec<NewJob> = ids
        .iter()
        .zip(spec)
        .enumerate()
        .map(|(i, (&id, (name, queue)))| NewJob {
            id,
            // job 6 is scheduled
            run_at: (i == 6).then(|| at(100)),
            ..new_job(name, queue)
        })
        .collect();
    insert(s, batch, at(0)).await;
    // 0: completed, 1: failed, 2: retryable, 3: running, 4 & 5: available, 6: scheduled.
    let claim_id = |want: JobId, name: &'static str, queue: &'static str| async move {
        let mut got = claim_from(s, &[queue], &[name], 1, "w1", at(1)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, want, "setup: claims follow id order");
        got.remove(0)
    };
    let c0 = claim_id(ids[0], "a", "q1").await;
    let c1 = claim_id(ids[1], "b", "q1").await;
    let c2 = claim_id(ids[2], "a", "q2").await;
    let _c3 = claim_id(ids[3], "b", "q2").await;
    assert!(finish(s, &c0, FinishOutcome::Completed, at(2)).await);
    assert!(finish(s, &c1, FinishOutcome::Failed { error: boom("x") }, at(2)).await);
    let retry = FinishOutcome::Retry {
        retry_at: at(50),
        error: boom("y"),
    };
    assert!(finish(s, &c2, retry, at(2)).await);

    let q = |statuses: Vec<JobStatus>, name: Option<&str>, queue: Option<&str>| JobListParams {
        filter: JobFilter {
            statuses,
            name: name.map(str::to_owned),
            queue: queue.map(str::to_owned),
            ..JobFilter::default()
        },
        cursor: None,
        limit: 100,
    };
    let pick = |idx: &[usize]| idx.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    let all = list(s, q(vec![], None, None)).await;
    assert_eq!(
        id_list(&all),
        pick(&[6, 5, 4, 3, 2, 1, 0]),
        "all jobs, newest first"
    );
    let want_status = [
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Retryable,
        JobStatus::Running,
        JobStatus::Available,
        JobStatus::Available,
        JobStatus::Scheduled,
    ];
    for r in &all {
        let i = ids.iter().position(|&id| id == r.id).unwrap_or(usize::MAX);
        assert_eq!(r.status, want_status[i], "setup: status of job {i}");
    }
    let full = get(s, ids[1]).await;
    assert_eq!(
        all[5], full,
        "list returns the full record, history included"
    );

    let cases: Vec<(JobListParams, Vec<usize>, &str)> = vec![
        (
            q(vec![JobStatus::Completed, JobStatus::Failed], None, None),
            vec![1, 0],
            "two statuses",
        ),
        (
            q(vec![JobStatus::Available], None, None),
            vec![5, 4],
            "available",
        ),
        (
            q(
                vec![
                    JobStatus::Scheduled,
                    JobStatus::Available,
                    JobStatus::Retryable,
                ],
                None,
                None,
            ),
            vec![6, 5, 4, 2],
            "pending statuses",
        ),
        (
            q(vec![JobStatus::Cancelled], None, None),
            vec![],
            "no such status",
        ),
        (q(vec![], Some("a"), None), vec![6, 4, 2, 0], "name"),
        (q(vec![], None, Some("q2")), vec![5, 3, 2], "queue"),
        (
            q(vec![], Some("b"), Some("q2")),
            vec![5, 3],
            "name and queue",
        ),
        (
            q(vec![JobStatus::Available], Some("a"), Some("q1")),
            vec![4],
            "status, name and queue",
        ),
        (q(vec![], Some("zzz"), None), vec![], "unknown name"),
        (q(vec![], None, Some("zzz")), vec![], "unknown queue"),
    ];
    for (params, want, what) in cases {
        assert_eq!(
            id_list(&list(s, params).await),
            pick(&want),
            "list filter: {what}"
        );
    }
    let mut limited = q(vec![], None, None);
    limited.limit = 3;
    assert_eq!(
        id_list(&list(s, limited).await),
        pick(&[6, 5, 4]),
        "limit keeps the newest"
    );
}

/// Paging with `cursor` walks all jobs newest first with no gaps or duplicates.
pub async fn list_pages_newest_first_with_cursor(s: Arc<dyn Storage>) {
    let s = &*s;
    let ids = sorted_ids(25);
    let batch: Vec<NewJob> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| NewJob {
            id,
            ..new_job(NAME, if i % 2 == 0 { "even" } else { "odd" })
        })
        .collect();
    // Insert in several batches and out of order: order comes from ids alone.
    insert(s, batch[10..].to_vec(), at(0)).await;
    insert(s, batch[..10].to_vec(), at(1)).await;

    async fn walk(s: &dyn Storage, queue: Option<&str>, limit: u32) -> (Vec<JobId>, Vec<usize>) {
        let mut cursor = None;
        let (mut seen, mut sizes) = (Vec::new(), Vec::new());
        loop {
            let params = JobListParams {
                filter: JobFilter {
                    queue: queue.map(str::to_owned),
                    ..JobFilter::default()
                },
                cursor,
                limit,
            };
            let page = list(s, params).await;
            sizes.push(page.len());
            let Some(last) = page.last() else { break };
            cursor = Some(last.id);
            seen.extend(id_list(&page));
            assert!(sizes.len() < 100, "paging does not end");
        }
        (seen, sizes)
    }

    let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
    let (seen, sizes) = walk(s, None, 10).await;
    assert_eq!(sizes, vec![10, 10, 5, 0], "page sizes");
    assert_eq!(
        seen, newest_first,
        "pages cover every job once, newest first"
    );

    let (seen, sizes) = walk(s, Some("even"), 5).await;
    assert_eq!(sizes, vec![5, 5, 3, 0], "filtered page sizes");
    let even: Vec<JobId> = newest_first.iter().step_by(2).copied().collect();
    assert_eq!(seen, even, "filtered pages");

    let page = |cursor: JobId| JobListParams {
        cursor: Some(cursor),
        limit: 3,
        ..Default::default()
    };
    let top = list(s, page(JobId(Uuid::max()))).await;
    assert_eq!(
        id_list(&top),
        newest_first[..3].to_vec(),
        "a cursor above every id"
    );
    assert!(
        list(s, page(JobId(Uuid::nil()))).await.is_empty(),
        "a cursor below every id"
    );
    let mid = list(s, page(ids[12])).await;
    assert_eq!(
        id_list(&mid),
        vec![ids[11], ids[10], ids[9]],
        "strictly older than the cursor"
    );
}

/// Counts per queue and status, leaving out empty pairs.
pub async fn counts_per_queue_and_status(s: Arc<dyn Storage>) {
    let s = &*s;
    assert!(
        sorted_counts(s).await.is_empty(),
        "an empty storage has no counts"
    );
    let mk = |queue: &str, run_at: Option<Timestamp>| NewJob {
        run_at,
        ..new_job(NAME, queue)
    };
    let batch = vec![
        mk("a", None),
        mk("a", None),
        mk("a", None),
        mk("a", None),
        mk("a", Some(at(100))),
        mk("b", None),
        mk("b", None),
        mk("c", Some(at(100))),
    ];
    let cancelled = batch[7].id;
    insert(s, batch, at(0)).await;
    let filter = JobFilter {
        ids: Some(vec![cancelled]),
        ..JobFilter::default()
    };
    assert_eq!(cancel(s, filter, at(1)).await.cancelled, 1);
    let mut a = claim_from(s, &["a"], &[NAME], 2, "w1", at(1)).await;
    let mut b = claim_from(s, &["b"], &[NAME], 2, "w1", at(1)).await;
    assert_eq!((a.len(), b.len()), (2, 2));
    assert!(finish(s, &a.remove(0), FinishOutcome::Completed, at(2)).await);
    assert!(
        finish(
            s,
            &b.remove(0),
            FinishOutcome::Failed { error: boom("x") },
            at(2)
        )
        .await
    );
    let retry = FinishOutcome::Retry {
        retry_at: at(9),
        error: boom("y"),
    };
    assert!(finish(s, &b.remove(0), retry, at(2)).await);

    let want = vec![
        ("a".to_owned(), JobStatus::Scheduled, 1),
        ("a".to_owned(), JobStatus::Available, 2),
        ("a".to_owned(), JobStatus::Running, 1),
        ("a".to_owned(), JobStatus::Completed, 1),
        ("b".to_owned(), JobStatus::Retryable, 1),
        ("b".to_owned(), JobStatus::Failed, 1),
        ("c".to_owned(), JobStatus::Cancelled, 1),
    ];
    assert_eq!(
        sorted_counts(s).await,
        want,
        "counts after setup (no zero rows)"
    );
}

/// next_run_at is the earliest run_at among pending jobs of the queues and names asked for,
/// past or future; running and finished jobs do not count.
pub async fn next_run_at_is_earliest_pending(s: Arc<dyn Storage>) {
    let s = &*s;
    assert_eq!(next_run_at(s, &["a"], &["x"]).await, None, "empty storage");
    let mk = |queue: &str, name: &str, off: i64| NewJob {
        run_at: Some(at(off)),
        ..new_job(name, queue)
    };
    let future = mk("a", "x", 50);
    let past = mk("a", "x", -10);
    let y = mk("a", "y", -100);
    let other_queue = mk("b", "x", -1000);
    let running = mk("a", "z", -5000);
    let done = mk("a", "w", -6000);
    let all = vec![future, past.clone(), y, other_queue, running, done];
    insert(s, all, at(0)).await;
    claim_one_from(s, "a", "z").await;
    let d = claim_one_from(s, "a", "w").await;
    assert!(finish(s, &d, FinishOutcome::Completed, at(0)).await);

    assert_eq!(
        next_run_at(s, &["a"], &["x"]).await,
        Some(at(-10)),
        "past run_at counts"
    );
    assert_eq!(
        next_run_at(s, &["a"], &["x", "y"]).await,
        Some(at(-100)),
        "several names"
    );
    assert_eq!(
        next_run_at(s, &["a", "b"], &["x"]).await,
        Some(at(-1000)),
        "several queues"
    );
    assert_eq!(next_run_at(s, &["c"], &["x"]).await, None, "unknown queue");
    assert_eq!(
        next_run_at(s, &["a"], &["z"]).await,
        None,
        "running jobs are not pending"
    );
    assert_eq!(
        next_run_at(s, &["a"], &["w"]).await,
        None,
        "completed jobs are not pending"
    );

    let c = claim_from(s, &["a"], &["x"], 1, "w1", at(0)).await;
    assert_eq!(claimed_ids(&c), HashSet::from([past.id]));
    assert_eq!(
        next_run_at(s, &["a"], &["x"]).await,
        Some(at(50)),
        "future run_at counts"
    );
    let retry = FinishOutcome::Retry {
        retry_at: at(20),
        error: boom("x"),
    };
    assert!(finish(s, &c[0], retry, at(1)).await);
    assert_eq!(
        next_run_at(s, &["a"], &["x"]).await,
        Some(at(20)),
        "retryable jobs count"
    );

    // Whatever their priorities: the earliest of every priority counts, and a job of
    // another name at a priority of its own is passed over.
    let with_priority = |name: &str, priority: i32, off: i64| NewJob {
        priority,
        ..mk("a", name, off)
    };
    let jobs = vec![
        with_priority("x", 5, 40),
        with_priority("x", -5, 15),
        with_priority("x", 3, 18),
        with_priority("v", 9, 5),
    ];
    insert(s, jobs, at(1)).await;
    assert_eq!(
        next_run_at(s, &["a"], &["x"]).await,
        Some(at(15)),
        "a lower priority's earlier job counts"
    );
    assert_eq!(
        next_run_at(s, &["a"], &["v", "x"]).await,
        Some(at(5)),
        "a higher priority's earlier job counts"
    );
}

async fn claim_one_from(s: &dyn Storage, queue: &str, name: &str) -> ClaimedJob {
    let mut got = claim_from(s, &[queue], &[name], 1, "w1", at(0)).await;
    assert_eq!(got.len(), 1, "expected one {queue}/{name} job");
    got.remove(0)
}

/// Cancelling pending jobs (scheduled, available, retryable) makes them `cancelled` at
/// once with `finished_at = now`: never claimed, not pending for `next_run_at`.
pub async fn cancel_stops_pending_jobs_at_once(s: Arc<dyn Storage>) {
    let s = &*s;
    let available = new_job(NAME, QUEUE);
    let scheduled = NewJob {
        run_at: Some(at(100)),
        ..new_job(NAME, QUEUE)
    };
    let retried = new_job(NAME, QUEUE);
    let other = new_job(NAME, QUEUE);
    insert(s, vec![retried.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(1)).await;
    let back = FinishOutcome::Retry {
        retry_at: at(50),
        error: boom("x"),
    };
    assert!(finish(s, &c, back, at(2)).await);
    insert(
        s,
        vec![available.clone(), scheduled.clone(), other.clone()],
        at(3),
    )
    .await;

    let ids = [available.id, scheduled.id, retried.id];
    assert_eq!(
        cancel(s, by_ids(&ids), at(4)).await,
        cancelled(3, 0),
        "three pending jobs cancelled"
    );
    let mut want = expected_record(&available, at(3));
    want.status = JobStatus::Cancelled;
    want.finished_at = Some(at(4));
    assert_eq!(get(s, available.id).await, want, "record after cancel");
    let r = get(s, retried.id).await;
    assert_eq!(
        (r.status, r.finished_at, r.attempt, r.history.len()),
        (JobStatus::Cancelled, Some(at(4)), 1, 1),
        "a retryable job keeps its history"
    );
    assert_eq!(
        cancel(s, by_ids(&ids), at(5)).await,
        cancelled(0, 0),
        "cancelling again changes nothing"
    );
    assert_eq!(get(s, available.id).await, want, "nor its record");

    let got = claim(s, 10, "w2", at(200)).await;
    assert_eq!(
        claimed_ids(&got),
        HashSet::from([other.id]),
        "cancelled jobs are never claimed"
    );
    assert_eq!(
        next_run_at(s, &[QUEUE], &[NAME]).await,
        None,
        "cancelled jobs are not pending"
    );
    assert_eq!(
        count(
            s,
            JobFilter {
                statuses: vec![JobStatus::Cancelled],
                ..JobFilter::default()
            }
        )
        .await,
        3
    );
}

/// Cancelling a running job marks it cancel-requested (heartbeats report it, the lease
/// stays); however its attempt then ends, completed or failed with retries left, the job
/// becomes `cancelled` with a `cancelled` history entry carrying the attempt's error.
pub async fn cancel_of_a_running_job_is_a_request_that_ends_cancelled(s: Arc<dyn Storage>) {
    let s = &*s;
    let all = jobs(3);
    insert(s, all.clone(), at(0)).await;
    let mut cs = claim(s, 3, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    let ids: Vec<JobId> = cs.iter().map(|c| c.id).collect();
    let leases: Vec<(JobId, LeaseToken)> = cs.iter().map(|c| (c.id, c.lease)).collect();

    assert_eq!(
        cancel(s, by_ids(&ids[..2]), at(2)).await,
        cancelled(0, 2),
        "two running jobs asked to stop"
    );
    let r = get(s, ids[0]).await;
    assert_eq!(
        (r.status, r.cancel_requested_at, r.finished_at),
        (JobStatus::Running, Some(at(2)), None),
        "still running, cancel requested"
    );
    assert_eq!(
        cancel(s, by_ids(&ids[..1]), at(3)).await,
        cancelled(0, 1),
        "asking again still says requested"
    );
    assert_eq!(
        get(s, ids[0]).await.cancel_requested_at,
        Some(at(2)),
        "the first request's time is kept"
    );

    let hb = beat(s, leases.clone(), at(4)).await;
    assert_eq!(
        hb.extended, ids,
        "cancel-requested leases are still extended"
    );
    assert_eq!(
        hb.cancel_requested,
        ids[..2].to_vec(),
        "the heartbeat says which to stop"
    );
    let lease = lease_duration(5000);
    assert_eq!(
        get(s, ids[0]).await.lease_expires_at,
        Some(at(4).plus(lease))
    );

    // It returned normally anyway: still cancelled (the request wins).
    assert!(finish(s, &cs[0], FinishOutcome::Completed, at(5)).await);
    let mut want = expected_record(&all[0], at(0));
    want.status = JobStatus::Cancelled;
    want.attempt = 1;
    want.started_at = Some(at(1));
    want.finished_at = Some(at(5));
    want.cancel_requested_at = Some(at(2));
    want.history = vec![AttemptRecord {
        attempt: 1,
        worker_id: "w1".to_owned(),
        started_at: at(1),
        finished_at: at(5),
        outcome: AttemptOutcome::Cancelled,
        error: None,
    }];
    assert_eq!(get(s, ids[0]).await, want, "completed after the request");

    // It raised (asyncio.CancelledError, say) with retries left: cancelled, not retried.
    let error = ErrorInfo::engine("CancelledError", "the attempt was cancelled");
    let back = FinishOutcome::Retry {
        retry_at: at(60),
        error: error.clone(),
    };
    assert!(finish(s, &cs[1], back, at(6)).await);
    let r = get(s, ids[1]).await;
    assert_eq!(
        (r.status, r.finished_at, r.run_at, r.last_error.clone()),
        (
            JobStatus::Cancelled,
            Some(at(6)),
            at(0),
            Some(error.clone())
        ),
        "failed after the request"
    );
    assert_eq!(r.history.len(), 1);
    assert_eq!(
        (r.history[0].outcome, r.history[0].error.clone()),
        (AttemptOutcome::Cancelled, Some(error))
    );
    assert!(
        claim(s, 10, "w2", at(100)).await.is_empty(),
        "never claimed again"
    );

    let hb = beat(s, vec![leases[2]], at(7)).await;
    assert!(
        hb.cancel_requested.is_empty(),
        "an unrelated job is not cancelled"
    );
    assert!(finish(s, &cs[2], FinishOutcome::Completed, at(8)).await);
    assert_eq!(get(s, ids[2]).await.status, JobStatus::Completed);
    assert_eq!(get(s, ids[2]).await.cancel_requested_at, None);
}

/// A cancel-requested job handed back at shutdown, or whose lease expired, becomes
/// `cancelled` instead of runnable again.
pub async fn cancel_requested_job_released_or_reclaimed_is_cancelled(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, jobs(2), at(0)).await;
    let mut cs = claim(s, 2, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    let ids: Vec<JobId> = cs.iter().map(|c| c.id).collect();
    assert_eq!(cancel(s, by_ids(&ids), at(2)).await, cancelled(0, 2));

    assert_eq!(release(s, vec![(cs[0].id, cs[0].lease)], at(3)).await, 1);
    let r = get(s, ids[0]).await;
    assert_eq!(
        (r.status, r.attempt, r.finished_at, r.run_at),
        (JobStatus::Cancelled, 1, Some(at(3)), at(0)),
        "released: cancelled, the attempt counted"
    );
    assert_eq!(
        r.history.iter().map(|h| h.outcome).collect::<Vec<_>>(),
        vec![AttemptOutcome::Cancelled]
    );

    let expiry = at(1).plus(lease_duration(5000));
    assert_eq!(reclaim(s, just_after(expiry)).await, 1);
    let r = get(s, ids[1]).await;
    assert_eq!(
        (r.status, r.finished_at),
        (JobStatus::Cancelled, Some(just_after(expiry))),
        "reclaimed: cancelled"
    );
    assert_eq!(
        r.history.iter().map(|h| h.outcome).collect::<Vec<_>>(),
        vec![AttemptOutcome::LeaseExpired]
    );
    assert!(claim(s, 10, "w2", at(1000)).await.is_empty());
}

/// Completed, failed and cancelled jobs are left alone by a cancel.
pub async fn cancel_leaves_finished_jobs_alone(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, jobs(2), at(0)).await;
    let mut cs = claim(s, 2, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    assert!(finish(s, &cs[0], FinishOutcome::Completed, at(2)).await);
    let failed = FinishOutcome::Failed { error: boom("x") };
    assert!(finish(s, &cs[1], failed, at(2)).await);
    let before = list(
        s,
        JobListParams {
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    let ids = id_list(&before);
    assert_eq!(cancel(s, by_ids(&ids), at(3)).await, cancelled(0, 0));
    assert_eq!(
        cancel(s, JobFilter::default(), at(3)).await,
        cancelled(0, 0)
    );
    let after = list(
        s,
        JobListParams {
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(after, before, "nothing changed");
    assert_eq!(
        cancel(s, by_ids(&[JobId::new()]), at(3)).await,
        cancelled(0, 0),
        "an unknown id"
    );
}

/// A retry makes failed and cancelled jobs `available` at `now` with the attempt count
/// back to 0 and `finished_at`/`cancel_requested_at` cleared; the history is kept and gets
/// a `retried` entry. Other statuses are left alone.
pub async fn retry_makes_failed_and_cancelled_jobs_available_again(s: Arc<dyn Storage>) {
    let s = &*s;
    let all = jobs(5);
    insert(s, all.clone(), at(0)).await;
    let mut cs = claim(s, 4, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    let ids: Vec<JobId> = all.iter().map(|j| j.id).collect();
    // 0: failed, 1: cancelled while running, 2: completed, 3: running, 4: cancelled pending.
    let failed = FinishOutcome::Failed { error: boom("no") };
    assert!(finish(s, &cs[0], failed, at(2)).await);
    assert_eq!(cancel(s, by_ids(&ids[1..2]), at(2)).await, cancelled(0, 1));
    assert!(finish(s, &cs[1], FinishOutcome::Completed, at(3)).await);
    assert!(finish(s, &cs[2], FinishOutcome::Completed, at(3)).await);
    assert_eq!(cancel(s, by_ids(&ids[4..]), at(3)).await, cancelled(1, 0));

    assert_eq!(
        retry(s, by_ids(&ids), at(10)).await,
        3,
        "the failed and the two cancelled jobs"
    );
    let mut want = expected_record(&all[0], at(0));
    want.run_at = at(10);
    want.started_at = Some(at(1));
    want.last_error = Some(boom("no"));
    want.history = vec![
        AttemptRecord {
            attempt: 1,
            worker_id: "w1".to_owned(),
            started_at: at(1),
            finished_at: at(2),
            outcome: AttemptOutcome::Failed,
            error: Some(boom("no")),
        },
        AttemptRecord {
            attempt: 1,
            worker_id: String::new(),
            started_at: at(10),
            finished_at: at(10),
            outcome: AttemptOutcome::Retried,
            error: None,
        },
    ];
    assert_eq!(get(s, ids[0]).await, want, "record after a manual retry");
    let r = get(s, ids[1]).await;
    assert_eq!(
        (r.status, r.attempt, r.finished_at, r.cancel_requested_at),
        (JobStatus::Available, 0, None, None),
        "the cancel request is cleared"
    );
    let r = get(s, ids[4]).await;
    assert_eq!(
        r.history
            .iter()
            .map(|h| (h.attempt, h.outcome))
            .collect::<Vec<_>>(),
        vec![(0, AttemptOutcome::Retried)],
        "a job cancelled before it ran"
    );
    assert_eq!(get(s, ids[2]).await.status, JobStatus::Completed);
    assert_eq!(get(s, ids[3]).await.status, JobStatus::Running);

    assert_eq!(
        retry(s, by_ids(&ids), at(11)).await,
        0,
        "nothing left to retry"
    );
    let again = claim(s, 10, "w2", at(10)).await;
    assert_eq!(
        claimed_ids(&again),
        HashSet::from([ids[0], ids[1], ids[4]]),
        "retried jobs are claimable at once"
    );
    assert!(
        again.iter().all(|c| c.attempt == 1),
        "attempts counted from 1 again"
    );
    assert_eq!(
        retry(
            s,
            JobFilter {
                statuses: vec![JobStatus::Running, JobStatus::Completed],
                ..JobFilter::default()
            },
            at(12)
        )
        .await,
        0,
        "running and completed jobs are never retried"
    );
}

/// Deleting removes matching jobs and their history, but never a running one.
pub async fn delete_removes_jobs_but_not_running_ones(s: Arc<dyn Storage>) {
    let s = &*s;
    let all = jobs(4);
    insert(s, all.clone(), at(0)).await;
    let mut cs = claim(s, 2, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    assert!(finish(s, &cs[0], FinishOutcome::Completed, at(2)).await);
    let ids: Vec<JobId> = all.iter().map(|j| j.id).collect();
    // 0: completed, 1: running, 2 and 3: available.

    assert_eq!(
        delete(s, by_ids(&ids[..3])).await,
        2,
        "completed and available"
    );
    assert_eq!(s.job_get(ids[0]).await.expect("job_get failed"), None);
    assert_eq!(s.job_get(ids[2]).await.expect("job_get failed"), None);
    assert_eq!(get(s, ids[1]).await.status, JobStatus::Running);
    assert_eq!(
        sorted_counts(s).await,
        vec![
            (QUEUE.to_owned(), JobStatus::Available, 1),
            (QUEUE.to_owned(), JobStatus::Running, 1),
        ],
        "counts follow deletes"
    );
    assert_eq!(delete(s, by_ids(&ids[..3])).await, 0, "deleted once");
    assert!(
        finish(s, &cs[1], FinishOutcome::Completed, at(3)).await,
        "the running job finishes normally"
    );
    assert_eq!(
        delete(
            s,
            JobFilter {
                queue: Some(QUEUE.to_owned()),
                ..JobFilter::default()
            }
        )
        .await,
        2
    );
    assert!(sorted_counts(s).await.is_empty(), "everything deleted");
    let r = claim(s, 10, "w1", at(4)).await;
    assert!(r.is_empty(), "deleted jobs are never claimed");
}

/// Prune deletes finished jobs of the given statuses that finished strictly before the
/// cutoff, at most `limit` per call; other statuses and newer jobs stay.
pub async fn prune_deletes_old_finished_jobs_in_batches(s: Arc<dyn Storage>) {
    let s = &*s;
    let all = jobs(8);
    insert(s, all.clone(), at(0)).await;
    let mut cs = claim(s, 7, "w1", at(1)).await;
    cs.sort_by_key(|c| c.id);
    // 0-3: completed at 10, 11, 12, 13; 4: failed at 10; 5: cancelled at 10; 6: running;
    // 7: available.
    for (i, c) in cs.iter().take(4).enumerate() {
        let when = at(10 + i as i64);
        assert!(finish(s, c, FinishOutcome::Completed, when).await);
    }
    let failed = FinishOutcome::Failed { error: boom("x") };
    assert!(finish(s, &cs[4], failed, at(10)).await);
    assert_eq!(
        cancel(s, by_ids(&[cs[5].id]), at(10)).await,
        cancelled(0, 1)
    );
    assert!(finish(s, &cs[5], FinishOutcome::Completed, at(10)).await);

    let completed = [JobStatus::Completed];
    assert_eq!(
        prune(s, &completed, at(10), 100).await,
        0,
        "finished_at must be strictly before the cutoff"
    );
    assert_eq!(prune(s, &completed, at(13), 2).await, 2, "at most `limit`");
    assert_eq!(prune(s, &completed, at(13), 2).await, 1, "then the rest");
    assert_eq!(prune(s, &completed, at(13), 2).await, 0);
    for (i, job) in all.iter().enumerate() {
        let gone = s.job_get(job.id).await.expect("job_get failed").is_none();
        assert_eq!(gone, i < 3, "job {i}: the three oldest completed are gone");
    }
    assert_eq!(
        prune(
            s,
            &[JobStatus::Running, JobStatus::Available],
            at(1000),
            100
        )
        .await,
        0,
        "statuses that are not final are ignored"
    );
    assert_eq!(
        prune(
            s,
            &[
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled
            ],
            at(1000),
            100
        )
        .await,
        3
    );
    assert_eq!(
        sorted_counts(s).await,
        vec![
            (QUEUE.to_owned(), JobStatus::Available, 1),
            (QUEUE.to_owned(), JobStatus::Running, 1),
        ]
    );
    assert_eq!(prune(s, &completed, at(1000), 0).await, 0, "limit 0");
}

/// Filters by creation time (from inclusive, to exclusive), text in the arguments and
/// ids, combined with each other and with status, name and queue, select the same jobs in
/// list (paged), count and every admin operation.
pub async fn filters_by_time_text_and_ids_for_list_count_and_admin(s: Arc<dyn Storage>) {
    let s = &*s;
    let ids = sorted_ids(6);
    let args = [
        r#"{"to":"alice@example.com","n":1}"#,
        r#"{"to":"bob@example.com","n":2}"#,
        r#"{"to":"alice@example.org","n":3}"#,
        r#"{"to":"Alice@example.com","n":4}"#,
        r#"{"to":"zoë@example.com","n":5}"#,
        r#"{"to":"100% \"real\"","n":6}"#,
    ];
    for (i, (&id, a)) in ids.iter().zip(args).enumerate() {
        let job = NewJob {
            id,
            args: a.to_owned(),
            ..new_job(if i % 2 == 0 { "a" } else { "b" }, QUEUE)
        };
        insert(s, vec![job], at(i as i64 * 10)).await;
    }
    let pick = |idx: &[usize]| idx.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    let text = |t: &str| JobFilter {
        args_contains: Some(t.to_owned()),
        ..JobFilter::default()
    };
    let cases: Vec<(JobFilter, Vec<usize>, &str)> = vec![
        (JobFilter::default(), vec![5, 4, 3, 2, 1, 0], "no filter"),
        (
            JobFilter {
                created_from: Some(at(10)),
                ..JobFilter::default()
            },
            vec![5, 4, 3, 2, 1],
            "created_from is inclusive",
        ),
        (
            JobFilter {
                created_to: Some(at(30)),
                ..JobFilter::default()
            },
            vec![2, 1, 0],
            "created_to is exclusive",
        ),
        (
            JobFilter {
                created_from: Some(at(10)),
                created_to: Some(at(31)),
                ..JobFilter::default()
            },
            vec![3, 2, 1],
            "a range",
        ),
        (text("alice"), vec![2, 0], "text is case-sensitive"),
        (text("example.com"), vec![4, 3, 1, 0], "a substring"),
        (text("zoë"), vec![4], "non-ASCII text"),
        (text("100%"), vec![5], "% is not a wildcard"),
        (
            text(r#"\"real\""#),
            vec![5],
            "text as stored (JSON-escaped)",
        ),
        (text("_"), vec![], "_ is not a wildcard"),
        (
            JobFilter {
                args_contains: Some("example".to_owned()),
                name: Some("a".to_owned()),
                created_from: Some(at(20)),
                ..JobFilter::default()
            },
            vec![4, 2],
            "text, name and time",
        ),
        (by_ids(&pick(&[4, 1, 0])), vec![4, 1, 0], "ids"),
        (by_ids(&[]), vec![], "an empty id list matches nothing"),
        (by_ids(&[JobId::new()]), vec![], "an unknown id"),
        (
            JobFilter {
                ids: Some(pick(&[0, 1, 2])),
                args_contains: Some("alice".to_owned()),
                ..JobFilter::default()
            },
            vec![2, 0],
            "ids and text",
        ),
        (
            JobFilter {
                ids: Some(pick(&[0, 1, 2])),
                statuses: vec![JobStatus::Available],
                name: Some("b".to_owned()),
                ..JobFilter::default()
            },
            vec![1],
            "ids, status and name",
        ),
        (
            JobFilter {
                statuses: vec![JobStatus::Available],
                created_to: Some(at(20)),
                queue: Some(QUEUE.to_owned()),
                ..JobFilter::default()
            },
            vec![1, 0],
            "status, queue and time",
        ),
        (
            JobFilter {
                statuses: vec![JobStatus::Failed],
                ..JobFilter::default()
            },
            vec![],
            "no such status",
        ),
    ];
    for (filter, want, what) in &cases {
        let params = JobListParams {
            filter: filter.clone(),
            cursor: None,
            limit: 100,
        };
        assert_eq!(id_list(&list(s, params).await), pick(want), "list: {what}");
        assert_eq!(
            count(s, filter.clone()).await,
            want.len() as u64,
            "count: {what}"
        );
    }

    // Paging a filtered listing with the cursor.
    let filter = text("example");
    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = list(
            s,
            JobListParams {
                filter: filter.clone(),
                cursor,
                limit: 2,
            },
        )
        .await;
        let Some(last) = page.last() else { break };
        cursor = Some(last.id);
        seen.extend(id_list(&page));
        assert!(seen.len() <= 10, "paging does not end");
    }
    assert_eq!(seen, pick(&[4, 3, 2, 1, 0]), "filtered pages");

    // The admin operations select the same jobs.
    let range = JobFilter {
        created_from: Some(at(10)),
        created_to: Some(at(30)),
        ..JobFilter::default()
    };
    assert_eq!(cancel(s, range.clone(), at(100)).await, cancelled(2, 0));
    assert_eq!(get(s, ids[1]).await.status, JobStatus::Cancelled);
    assert_eq!(get(s, ids[3]).await.status, JobStatus::Available);
    assert_eq!(retry(s, text("alice"), at(101)).await, 1, "only job 2");
    assert_eq!(get(s, ids[2]).await.status, JobStatus::Available);
    assert_eq!(delete(s, text("example.com")).await, 4);
    assert_eq!(
        id_list(
            &list(
                s,
                JobListParams {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
        ),
        pick(&[5, 2])
    );
}

/// A unique job whose key a pending or running job holds stores nothing and names the
/// holder, also against an earlier job of the same batch; jobs without a key and jobs of
/// other keys are stored as usual.
pub async fn unique_job_matches_the_holder_of_its_key(s: Arc<dyn Storage>) {
    let s = &*s;
    let first = unique_job("k1");
    assert_eq!(
        insert_many(s, vec![first.clone()], at(0)).await,
        vec![stored(first.id)]
    );
    let (again, plain, other, other_again) = (
        unique_job("k1"),
        new_job(NAME, QUEUE),
        unique_job("k2"),
        unique_job("k2"),
    );
    let got = insert_many(
        s,
        vec![
            again.clone(),
            plain.clone(),
            other.clone(),
            other_again.clone(),
        ],
        at(1),
    )
    .await;
    assert_eq!(
        got,
        vec![
            duplicate_of(first.id),
            stored(plain.id),
            stored(other.id),
            duplicate_of(other.id)
        ]
    );
    assert!(s.job_get(again.id).await.unwrap().is_none());
    assert!(s.job_get(other_again.id).await.unwrap().is_none());
    // Running still holds the key; so does scheduled (a job in the future).
    let running = claim_one(s, "w", at(2)).await;
    assert_eq!(running.id, first.id);
    let late = unique_job("k1");
    assert_eq!(
        insert_many(s, vec![late], at(3)).await,
        vec![duplicate_of(first.id)]
    );
    let future = NewJob {
        run_at: Some(at(100)),
        ..unique_job("k3")
    };
    insert(s, vec![future.clone()], at(3)).await;
    assert_eq!(
        insert_many(s, vec![unique_job("k3")], at(4)).await,
        vec![duplicate_of(future.id)]
    );
    assert_eq!(
        get(s, future.id).await.limits.unique_states,
        UNIQUE_STATES_REQUIRED.to_vec()
    );
}

/// Once its holder reaches a status outside the holder's unique states the key is free;
/// a holder whose states include `completed` keeps it after completing.
pub async fn unique_key_is_free_outside_the_holders_states(s: Arc<dyn Storage>) {
    let s = &*s;
    let first = unique_job("once");
    insert(s, vec![first.clone()], at(0)).await;
    let c = claim_one(s, "w", at(1)).await;
    assert!(finish(s, &c, FinishOutcome::Completed, at(2)).await);
    let second = unique_job("once");
    assert_eq!(
        insert_many(s, vec![second.clone()], at(3)).await,
        vec![stored(second.id)]
    );

    let mut keeps = unique_job("forever");
    keeps.limits.unique_states = vec![
        JobStatus::Completed,
        JobStatus::Scheduled,
        JobStatus::Available,
        JobStatus::Running,
        JobStatus::Retryable,
    ];
    insert(s, vec![keeps.clone()], at(4)).await;
    assert_eq!(
        get(s, keeps.id).await.limits.unique_states,
        vec![
            JobStatus::Scheduled,
            JobStatus::Available,
            JobStatus::Running,
            JobStatus::Retryable,
            JobStatus::Completed,
        ],
        "stored in life-cycle order"
    );
    // Claim the second "once" job and then the "forever" one.
    let got = claim(s, 10, "w", at(5)).await;
    assert_eq!(got.len(), 2);
    for c in &got {
        assert!(finish(s, c, FinishOutcome::Completed, at(6)).await);
    }
    assert_eq!(
        insert_many(s, vec![unique_job("forever")], at(7)).await,
        vec![duplicate_of(keeps.id)]
    );
    // Cancelling frees a key held in the default states.
    let third = unique_job("once");
    insert(s, vec![third.clone()], at(8)).await;
    cancel(s, by_ids(&[third.id]), at(9)).await;
    let fourth = unique_job("once");
    assert_eq!(
        insert_many(s, vec![fourth.clone()], at(10)).await,
        vec![stored(fourth.id)]
    );
}

/// Unique states that leave out a status that is not final are refused, and the whole
/// batch with them; bad limit numbers too.
pub async fn unique_states_must_cover_every_pending_status(s: Arc<dyn Storage>) {
    let s = &*s;
    let fine = new_job(NAME, QUEUE);
    let mut bad = unique_job("k");
    bad.limits.unique_states = vec![JobStatus::Available, JobStatus::Running];
    let err = s
        .job_insert_many(JobInsertManyParams {
            jobs: vec![fine.clone(), bad],
            now: at(0),
        })
        .await
        .expect_err("unique states without scheduled and retryable must be refused");
    match err {
        Error::Config(m) => assert!(m.contains("scheduled, retryable"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let zero = limited_job("k", 0);
    let err = s
        .job_insert_many(JobInsertManyParams {
            jobs: vec![zero],
            now: at(0),
        })
        .await
        .expect_err("a concurrency limit of 0 must be refused");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(s.job_get(fine.id).await.unwrap().is_none(), "all or none");
}

/// Many inserts of one key at once store exactly one job; every other names it.
pub async fn concurrent_unique_inserts_store_one_job(s: Arc<dyn Storage>) {
    const INSERTERS: usize = 8;
    let mut tasks = Vec::new();
    for _ in 0..INSERTERS {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let job = unique_job("race");
            insert_many(&*s, vec![job.clone(), new_job(NAME, QUEUE)], at(0)).await[0]
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("inserter panicked"));
    }
    let winners: Vec<_> = results.iter().filter(|r| !r.duplicate).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.id == winners[0].id), "{results:?}");
    let filter = JobFilter::default();
    assert_eq!(count(&*s, filter).await, 1 + INSERTERS as u64);
}

/// A manual retry never makes a second live job of a key: a failed job whose key another
/// job took meanwhile is left failed, and of two failed jobs of one key only one runs.
pub async fn retry_skips_a_unique_job_whose_key_is_held(s: Arc<dyn Storage>) {
    let s = &*s;
    let fail = |c: ClaimedJob| async move {
        assert!(finish(s, &c, FinishOutcome::Failed { error: boom("no") }, at(2)).await);
    };
    let a = unique_job("k");
    insert(s, vec![a.clone()], at(0)).await;
    fail(claim_one(s, "w", at(1)).await).await;
    let b = unique_job("k");
    insert(s, vec![b.clone()], at(3)).await; // the key is free: a failed
    assert_eq!(retry(s, by_ids(&[a.id]), at(4)).await, 0);
    assert_eq!(get(s, a.id).await.status, JobStatus::Failed);
    // b fails too; now both are failed and the key is free: one retry wins.
    fail(claim_one(s, "w", at(5)).await).await;
    assert_eq!(retry(s, by_ids(&[a.id, b.id]), at(6)).await, 1);
    let statuses = [get(s, a.id).await.status, get(s, b.id).await.status];
    let mut sorted = statuses;
    sorted.sort();
    assert_eq!(
        sorted,
        [JobStatus::Available, JobStatus::Failed],
        "{statuses:?}"
    );
    // A plain failed job is still retried.
    let plain = new_job("plain", QUEUE);
    insert(s, vec![plain.clone()], at(7)).await;
    let c = claim_from(s, &[QUEUE], &["plain"], 1, "w", at(8)).await;
    fail(c.into_iter().next().expect("claimed")).await;
    assert_eq!(retry(s, by_ids(&[plain.id]), at(9)).await, 1);
}

/// A claim never starts a job whose concurrency key is full: it stays available with no
/// attempt counted, the jobs behind it are claimed instead, and one claim takes no more
/// of a key than its room. A finished job frees its slot.
pub async fn concurrency_limit_passes_over_full_keys(s: Arc<dyn Storage>) {
    let s = &*s;
    let singles: Vec<NewJob> = (0..3)
        .map(|_| NewJob {
            priority: 10,
            ..limited_job("one", 1)
        })
        .collect();
    let pairs: Vec<NewJob> = (0..4)
        .map(|_| NewJob {
            priority: 5,
            ..limited_job("two", 2)
        })
        .collect();
    let plain: Vec<NewJob> = (0..2).map(|_| new_job(NAME, QUEUE)).collect();
    let mut all = singles.clone();
    all.extend(pairs.clone());
    all.extend(plain.clone());
    insert(s, all, at(0)).await;

    let got = claim(s, 10, "w", at(1)).await;
    let ids = claimed_ids(&got);
    let want: HashSet<JobId> = [
        singles[0].id,
        pairs[0].id,
        pairs[1].id,
        plain[0].id,
        plain[1].id,
    ]
    .into_iter()
    .collect();
    assert_eq!(
        ids, want,
        "one of key one, two of key two, and the plain jobs behind"
    );
    for job in &singles[1..] {
        let r = get(s, job.id).await;
        assert_eq!((r.status, r.attempt), (JobStatus::Available, 0));
    }
    assert!(
        claim(s, 10, "w", at(2)).await.is_empty(),
        "every key is full"
    );

    // Finishing the running "one" job makes room for exactly one more.
    let one = got.iter().find(|c| c.id == singles[0].id).expect("claimed");
    assert!(finish(s, one, FinishOutcome::Completed, at(3)).await);
    let next = claim(s, 10, "w", at(4)).await;
    assert_eq!(claimed_ids(&next), [singles[1].id].into_iter().collect());
    // A release frees the slot too (the released job now runs after the last one).
    assert_eq!(
        release(s, vec![(next[0].id, next[0].lease)], at(5)).await,
        1
    );
    let again = claim(s, 10, "w", at(6)).await;
    assert_eq!(claimed_ids(&again), [singles[2].id].into_iter().collect());
}

/// Claimers racing over jobs of one key never run more than its limit at once, and
/// between them they run every job.
pub async fn concurrent_claimers_respect_a_concurrency_limit(s: Arc<dyn Storage>) {
    const LIMIT: u32 = 3;
    const CLAIMERS: usize = 6;
    const JOBS: usize = 24;
    let all: Vec<NewJob> = (0..JOBS).map(|_| limited_job("shared", LIMIT)).collect();
    insert(&*s, all, at(0)).await;
    let mut done = 0;
    for round in 0..200_i64 {
        let mut tasks = Vec::new();
        for i in 0..CLAIMERS {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                claim(&*s, 2, &format!("w{i}"), at(1 + round)).await
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.extend(t.await.expect("claimer panicked"));
        }
        let running = count(
            &*s,
            JobFilter {
                statuses: vec![JobStatus::Running],
                ..JobFilter::default()
            },
        )
        .await;
        assert!(got.len() <= LIMIT as usize, "round {round}: {got:?}");
        assert!(
            running <= u64::from(LIMIT),
            "round {round}: {running} running"
        );
        for c in &got {
            assert!(finish(&*s, c, FinishOutcome::Completed, at(1 + round)).await);
        }
        done += got.len();
        if done == JOBS {
            return;
        }
    }
    panic!("only {done} of {JOBS} jobs ran in 200 rounds");
}

/// At most `limit` jobs of a rate key start within any window: the others wait
/// (available, no attempt counted) until the oldest start leaves the window.
pub async fn rate_limit_counts_starts_in_a_sliding_window(s: Arc<dyn Storage>) {
    let s = &*s;
    let rated = |key: &str| NewJob {
        limits: JobLimits {
            rate: Some(RateLimit {
                key: key.to_owned(),
                limit: 2,
                window_ms: 10_000,
            }),
            ..JobLimits::default()
        },
        ..new_job(NAME, QUEUE)
    };
    let jobs: Vec<NewJob> = (0..5).map(|_| rated("r")).collect();
    let plain = new_job(NAME, QUEUE);
    let mut all = jobs.clone();
    all.push(plain.clone());
    insert(s, all, at(0)).await;
    let first = claim(s, 10, "w", at(1)).await;
    assert_eq!(
        claimed_ids(&first),
        [jobs[0].id, jobs[1].id, plain.id].into_iter().collect()
    );
    for c in &first {
        assert!(finish(s, c, FinishOutcome::Completed, at(2)).await);
    }
    // Finishing does not free a rate slot: the window counts starts.
    assert!(claim(s, 10, "w", at(5)).await.is_empty());
    assert_eq!(get(s, jobs[2].id).await.attempt, 0);
    let one = claim(s, 10, "w", at(6)).await;
    assert!(
        one.is_empty(),
        "the starts at 1 s are inside the window until 11 s"
    );
    let later = claim(s, 10, "w", at(11)).await;
    assert_eq!(
        claimed_ids(&later),
        [jobs[2].id, jobs[3].id].into_iter().collect()
    );
    assert!(claim(s, 10, "w", at(12)).await.is_empty());
    assert_eq!(claimed_ids(&claim(s, 10, "w", at(21)).await).len(), 1);
}

/// Limits are stored with each job, and a schedule entry's template carries its
/// concurrency limit to every job it stores.
pub async fn limits_round_trip_and_ride_schedule_templates(s: Arc<dyn Storage>) {
    let s = &*s;
    let mut job = limited_job("c", 2);
    job.limits.rate = Some(RateLimit {
        key: "r".to_owned(),
        limit: 7,
        window_ms: 60_000,
    });
    insert(s, vec![job.clone()], at(0)).await;
    assert_eq!(get(s, job.id).await, expected_record(&job, at(0)));

    let mut schedule = new_schedule("limited", "{}");
    schedule.job.limits = limited_job("tick", 1).limits;
    s.schedule_upsert(ScheduleUpsertParams {
        schedule,
        next_run_at: at(10),
        now: at(0),
    })
    .await
    .expect("schedule_upsert failed");
    let id = s
        .schedule_run_now(ScheduleRunNowParams {
            name: "limited".to_owned(),
            now: at(1),
        })
        .await
        .expect("schedule_run_now failed")
        .expect("the entry exists");
    assert_eq!(
        get(s, id).await.limits.concurrency,
        Some(ConcurrencyLimit {
            key: "tick".to_owned(),
            limit: 1
        })
    );
}

/// Empty batches and an empty storage are fine everywhere.
pub async fn empty_batches(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, Vec::new(), at(0)).await;
    assert!(heartbeat(s, Vec::new(), at(0)).await.is_empty());
    let finished = s
        .job_finish_many(JobFinishManyParams {
            finishes: Vec::new(),
            now: at(0),
        })
        .await
        .expect("job_finish_many failed");
    assert!(finished.is_empty());
    assert_eq!(release(s, Vec::new(), at(0)).await, 0);
    assert_eq!(reclaim(s, at(0)).await, 0);
    assert!(claim(s, 10, "w1", at(0)).await.is_empty());
    assert!(list(
        s,
        JobListParams {
            limit: 10,
            ..Default::default()
        }
    )
    .await
    .is_empty());
    assert!(sorted_counts(s).await.is_empty());
    assert_eq!(next_run_at(s, &[QUEUE], &[NAME]).await, None);
    assert_eq!(count(s, JobFilter::default()).await, 0);
    assert_eq!(
        cancel(s, JobFilter::default(), at(0)).await,
        cancelled(0, 0)
    );
    assert_eq!(retry(s, JobFilter::default(), at(0)).await, 0);
    assert_eq!(delete(s, JobFilter::default()).await, 0);
    assert_eq!(prune(s, &[JobStatus::Completed], at(0), 10).await, 0);
}

/// After close every call fails with `StorageClosed`; closing again is fine.
pub async fn close_is_final_and_idempotent(s: Arc<dyn Storage>) {
    let s = &*s;
    let job = new_job(NAME, QUEUE);
    insert(s, vec![job.clone()], at(0)).await;
    let c = claim_one(s, "w1", at(0)).await;
    s.close().await.expect("close failed");
    s.close().await.expect("a second close must succeed");
    let _ = s.poll_interval();

    fn closed<T: std::fmt::Debug>(what: &str, res: crate::Result<T>) {
        assert!(
            matches!(res, Err(Error::StorageClosed)),
            "{what} after close: got {res:?}"
        );
    }
    let lease = vec![(c.id, c.lease)];
    closed(
        "job_insert_many",
        s.job_insert_many(JobInsertManyParams {
            jobs: vec![new_job(NAME, QUEUE)],
            now: at(1),
        })
        .await,
    );
    closed(
        "job_claim",
        s.job_claim(JobClaimParams {
            queues: strings(&[QUEUE]),
            names: strings(&[NAME]),
            limit: 1,
            worker_id: "w1".to_owned(),
            now: at(1),
        })
        .await,
    );
    closed(
        "job_heartbeat",
        s.job_heartbeat(JobHeartbeatParams {
            leases: lease.clone(),
            now: at(1),
        })
        .await,
    );
    let finishes = vec![JobFinish {
        id: c.id,
        lease: c.lease,
        outcome: FinishOutcome::Completed,
    }];
    closed(
        "job_finish_many",
        s.job_finish_many(JobFinishManyParams {
            finishes,
            now: at(1),
        })
        .await,
    );
    closed(
        "job_release",
        s.job_release(JobReleaseParams {
            leases: lease,
            now: at(1),
        })
        .await,
    );
    closed(
        "job_reclaim_expired",
        s.job_reclaim_expired(JobReclaimParams { now: at(1) }).await,
    );
    closed("job_get", s.job_get(job.id).await);
    closed(
        "job_list",
        s.job_list(JobListParams {
            limit: 10,
            ..Default::default()
        })
        .await,
    );
    closed("job_counts", s.job_counts().await);
    closed(
        "job_count",
        s.job_count(JobCountParams {
            filter: JobFilter::default(),
        })
        .await,
    );
    closed(
        "job_cancel",
        s.job_cancel(JobCancelParams {
            filter: by_ids(&[c.id]),
            now: at(1),
        })
        .await,
    );
    closed(
        "job_retry",
        s.job_retry(JobRetryParams {
            filter: by_ids(&[c.id]),
            now: at(1),
        })
        .await,
    );
    closed(
        "job_delete",
        s.job_delete(JobDeleteParams {
            filter: by_ids(&[c.id]),
        })
        .await,
    );
    closed(
        "job_prune",
        s.job_prune(JobPruneParams {
            statuses: vec![JobStatus::Completed],
            finished_before: at(1),
            limit: 10,
        })
        .await,
    );
    closed(
        "job_next_run_at",
        s.job_next_run_at(JobNextRunAtParams {
            queues: strings(&[QUEUE]),
            names: strings(&[NAME]),
        })
        .await,
    );
    s.close().await.expect("close after close must succeed");
}

/// A schedule entry ticking every second, whose job is `NAME` on `QUEUE` with `args`.
pub fn new_schedule(name: &str, args: &str) -> NewSchedule {
    NewSchedule {
        name: name.to_owned(),
        spec: ScheduleSpec::Cron {
            expr: "* * * * * *".to_owned(),
            timezone: "UTC".to_owned(),
        },
        catch_up: CatchUp::One,
        job: JobTemplate {
            name: NAME.to_owned(),
            queue: QUEUE.to_owned(),
            args: args.to_owned(),
            priority: 3,
            retry: RetryPolicy::default(),
            timeout_ms: Some(1000),
            heartbeat_ms: 5000,
            version: 2,
            limits: JobLimits::default(),
        },
    }
}

async fn upsert(
    s: &dyn Storage,
    schedule: NewSchedule,
    next: Timestamp,
    now: Timestamp,
) -> ScheduleRecord {
    s.schedule_upsert(ScheduleUpsertParams {
        schedule,
        next_run_at: next,
        now,
    })
    .await
    .expect("schedule_upsert")
}

async fn tick(
    s: &dyn Storage,
    name: &str,
    due: Timestamp,
    next: Timestamp,
    job: Option<NewJob>,
) -> bool {
    s.schedule_tick(ScheduleTickParams {
        name: name.to_owned(),
        due,
        next_run_at: next,
        job,
        now: due,
    })
    .await
    .expect("schedule_tick")
}

async fn all_jobs(s: &dyn Storage) -> Vec<JobRecord> {
    list(
        s,
        JobListParams {
            limit: 1000,
            ..JobListParams::default()
        },
    )
    .await
}

fn secs(n: i64) -> Timestamp {
    Timestamp::from_micros(T0.as_micros() + n * 1_000_000)
}

/// An upsert stores a new entry with the given next tick; a later upsert with the same
/// spec updates the job and keeps the next tick (missed ticks stay due), one with another
/// spec takes the new next tick.
pub async fn schedule_upsert_stores_and_updates_entries(s: Arc<dyn Storage>) {
    let s = &*s;
    assert!(s.schedule_list().await.unwrap().is_empty());
    let first = upsert(s, new_schedule("b", r#"{"v":1}"#), secs(1), T0).await;
    assert_eq!(first.name, "b");
    assert_eq!(first.spec, new_schedule("b", "{}").spec);
    assert_eq!(first.catch_up, CatchUp::One);
    assert_eq!(first.job, new_schedule("b", r#"{"v":1}"#).job);
    assert_eq!(
        (
            first.next_run_at,
            first.last_enqueued_at,
            first.created_at,
            first.updated_at
        ),
        (secs(1), None, T0, T0)
    );
    upsert(s, new_schedule("a", "{}"), secs(1), T0).await;

    let mut same_spec = new_schedule("b", r#"{"v":2}"#);
    same_spec.catch_up = CatchUp::None;
    let again = upsert(s, same_spec.clone(), secs(100), secs(50)).await;
    assert_eq!(
        again.next_run_at,
        secs(1),
        "same spec: the due tick is kept"
    );
    assert_eq!((again.created_at, again.updated_at), (T0, secs(50)));
    assert_eq!(
        (again.catch_up, again.job.args.as_str()),
        (CatchUp::None, r#"{"v":2}"#)
    );

    let mut other_spec = same_spec;
    other_spec.spec = ScheduleSpec::Every {
        interval_ms: 60_000,
    };
    let changed = upsert(s, other_spec.clone(), secs(120), secs(60)).await;
    assert_eq!(changed.next_run_at, secs(120));
    assert_eq!(changed.spec, other_spec.spec);

    let listed = s.schedule_list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(listed[1], changed);
    assert!(all_jobs(s).await.is_empty(), "upserts store no job");
}

/// A tick moves `next_run_at` from the due tick to the next and stores the job, in one
/// step; the same tick again (a second worker), a stale tick, or a tick of an entry that
/// no longer exists stores nothing. A skipped tick (no job) still moves the entry on.
pub async fn schedule_tick_stores_one_job_per_tick(s: Arc<dyn Storage>) {
    let s = &*s;
    let template = new_schedule("every-second", r#"{"n":1}"#);
    upsert(s, template.clone(), secs(1), T0).await;
    let job = template.job.to_job();
    assert!(tick(s, "every-second", secs(1), secs(2), Some(job.clone())).await);
    let stored = get(s, job.id).await;
    assert_eq!(
        (
            stored.name.as_str(),
            stored.queue.as_str(),
            stored.args.as_str()
        ),
        (NAME, QUEUE, r#"{"n":1}"#)
    );
    assert_eq!(
        (
            stored.priority,
            stored.timeout_ms,
            stored.version,
            stored.status
        ),
        (3, Some(1000), 2, JobStatus::Available)
    );
    let entry = &s.schedule_list().await.unwrap()[0];
    assert_eq!(
        (entry.next_run_at, entry.last_enqueued_at),
        (secs(2), Some(secs(1)))
    );

    // The same tick again: refused, nothing stored.
    let dup = template.job.to_job();
    assert!(!tick(s, "every-second", secs(1), secs(2), Some(dup.clone())).await);
    assert!(s.job_get(dup.id).await.unwrap().is_none());
    // Skipping a tick moves the entry on without a job and keeps last_enqueued_at.
    assert!(tick(s, "every-second", secs(2), secs(9), None).await);
    let entry = &s.schedule_list().await.unwrap()[0];
    assert_eq!(
        (entry.next_run_at, entry.last_enqueued_at),
        (secs(9), Some(secs(1)))
    );
    assert_eq!(all_jobs(s).await.len(), 1);
    // An unknown entry takes no tick.
    assert!(!tick(s, "nope", secs(9), secs(10), Some(template.job.to_job())).await);
    assert_eq!(all_jobs(s).await.len(), 1);
}

/// Many workers racing for the same tick of the same entry store exactly one job, and
/// one of them (only) is told it took the tick.
pub async fn concurrent_ticks_store_one_job(s: Arc<dyn Storage>) {
    let template = new_schedule("race", "{}");
    upsert(&*s, template.clone(), secs(1), T0).await;
    for round in 1..=5 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = Arc::clone(&s);
            let job = template.job.to_job();
            tasks.push(tokio::spawn(async move {
                tick(&*s, "race", secs(round), secs(round + 1), Some(job)).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            if t.await.expect("tick task") {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one taker");
    }
    assert_eq!(all_jobs(&*s).await.len(), 5, "one job per tick");
}

/// `run_now` stores a job from the template at once and leaves the ticks alone; delete
/// removes the entry (its jobs stay) so later ticks and `run_now` find nothing.
pub async fn schedule_run_now_and_delete(s: Arc<dyn Storage>) {
    let s = &*s;
    upsert(s, new_schedule("nightly", r#"{"x":true}"#), secs(3600), T0).await;
    let id = s
        .schedule_run_now(ScheduleRunNowParams {
            name: "nightly".to_owned(),
            now: secs(5),
        })
        .await
        .unwrap()
        .expect("the entry exists");
    let job = get(s, id).await;
    assert_eq!(
        (job.name.as_str(), job.args.as_str()),
        (NAME, r#"{"x":true}"#)
    );
    assert_eq!((job.status, job.run_at), (JobStatus::Available, secs(5)));
    let entry = &s.schedule_list().await.unwrap()[0];
    assert_eq!(
        (entry.next_run_at, entry.last_enqueued_at),
        (secs(3600), Some(secs(5)))
    );

    assert!(s.schedule_delete("nightly").await.unwrap());
    assert!(!s.schedule_delete("nightly").await.unwrap());
    assert!(s.schedule_list().await.unwrap().is_empty());
    let none = s
        .schedule_run_now(ScheduleRunNowParams {
            name: "nightly".to_owned(),
            now: secs(6),
        })
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(
        !tick(
            s,
            "nightly",
            secs(3600),
            secs(7200),
            Some(new_job(NAME, QUEUE))
        )
        .await
    );
    assert_eq!(all_jobs(s).await.len(), 1, "the job run_now stored is kept");
}

// ---------------------------------------------------------------------------------------
// Job groups

/// A group of `members` with the given limit and an `on_complete` job named `"done"`.
fn new_group(concurrency: Option<u32>) -> NewGroup {
    NewGroup {
        id: GroupId::new(),
        name: "batch".to_owned(),
        concurrency,
        on_complete: Some(JobTemplate {
            name: "done".to_owned(),
            queue: QUEUE.to_owned(),
            args: r#"{"report":true}"#.to_owned(),
            priority: 0,
            retry: RetryPolicy::default(),
            timeout_ms: None,
            heartbeat_ms: 5000,
            version: 1,
            limits: JobLimits::default(),
        }),
    }
}

async fn insert_group(s: &dyn Storage, group: &NewGroup, jobs: Vec<NewJob>, now: Timestamp) {
    s.group_insert(GroupInsertParams {
        group: group.clone(),
        jobs,
        now,
    })
    .await
    .expect("group_insert failed");
}

async fn group(s: &dyn Storage, id: GroupId) -> GroupRecord {
    s.group_get(id)
        .await
        .expect("group_get failed")
        .unwrap_or_else(|| panic!("group {id} should be stored"))
}

fn in_group(g: GroupId) -> JobFilter {
    JobFilter {
        group: Some(g),
        ..JobFilter::default()
    }
}

/// The stored jobs named `"done"` (the groups' `on_complete` jobs).
async fn callbacks(s: &dyn Storage) -> Vec<JobRecord> {
    list(
        s,
        JobListParams {
            filter: JobFilter {
                name: Some("done".to_owned()),
                ..JobFilter::default()
            },
            cursor: None,
            limit: 100,
        },
    )
    .await
}

fn counts(pending: u64, running: u64, completed: u64, failed: u64, cancelled: u64) -> GroupCounts {
    GroupCounts {
        pending,
        running,
        completed,
        failed,
        cancelled,
    }
}

/// A group and its members are stored together (all or none), members of any name and
/// queue, and each member says which group it is in.
pub async fn group_insert_is_all_or_none(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(Some(2));
    let members = vec![
        new_job(NAME, QUEUE),
        new_job("other", "q2"),
        new_job(NAME, QUEUE),
    ];
    let ids: Vec<JobId> = members.iter().map(|j| j.id).collect();
    insert(s, vec![new_job(NAME, QUEUE)], at(0)).await;
    insert_group(s, &g, members, at(1)).await;

    let got = group(s, g.id).await;
    assert_eq!(got.name, "batch");
    assert_eq!(got.concurrency, Some(2));
    assert_eq!(got.on_complete, g.on_complete);
    assert_eq!(got.on_complete_job_id, None);
    assert_eq!(got.created_at, at(1));
    assert_eq!(got.finished_at, None);
    assert_eq!(got.counts, counts(3, 0, 0, 0, 0));
    assert_eq!(got.status(), GroupStatus::InProgress);
    for id in &ids {
        assert_eq!(get(s, *id).await.group_id, Some(g.id));
    }
    let listed = list(
        s,
        JobListParams {
            filter: in_group(g.id),
            cursor: None,
            limit: 10,
        },
    )
    .await;
    let mut want = ids.clone();
    want.sort();
    want.reverse();
    assert_eq!(
        id_list(&listed),
        want,
        "list(group=...) gives the members only"
    );
    assert_eq!(count(s, in_group(g.id)).await, 3);
    let pending_here = JobFilter {
        statuses: vec![JobStatus::Available],
        queue: Some("q2".to_owned()),
        ..in_group(g.id)
    };
    assert_eq!(count(s, pending_here).await, 1);
    assert_eq!(count(s, JobFilter::default()).await, 4);

    // A member whose id is taken: nothing of the group is stored.
    let clash = new_group(None);
    let fresh = new_job(NAME, QUEUE);
    let taken = NewJob {
        id: ids[0],
        ..new_job(NAME, QUEUE)
    };
    let err = s
        .group_insert(GroupInsertParams {
            group: clash.clone(),
            jobs: vec![fresh.clone(), taken],
            now: at(2),
        })
        .await;
    assert!(err.is_err(), "a member id clash must fail the insert");
    assert!(s.group_get(clash.id).await.unwrap().is_none());
    assert!(s.job_get(fresh.id).await.unwrap().is_none());
    // A group with no members is refused.
    let empty = new_group(None);
    assert!(s
        .group_insert(GroupInsertParams {
            group: empty.clone(),
            jobs: Vec::new(),
            now: at(2),
        })
        .await
        .is_err());
    assert!(s.group_get(empty.id).await.unwrap().is_none());
    assert!(s.group_get(GroupId::new()).await.unwrap().is_none());
}

/// The group finishes when its last member becomes final, storing `on_complete` once; a
/// retried member reopens it without storing `on_complete` again.
pub async fn group_finishes_once_and_stores_on_complete(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(None);
    insert_group(s, &g, jobs(2), at(0)).await;
    let a = claim_one(s, "w", at(1)).await;
    let b = claim_one(s, "w", at(1)).await;
    assert_eq!(group(s, g.id).await.counts, counts(0, 2, 0, 0, 0));

    assert!(finish(s, &a, FinishOutcome::Completed, at(2)).await);
    let mid = group(s, g.id).await;
    assert_eq!(mid.counts, counts(0, 1, 1, 0, 0));
    assert_eq!(mid.finished_at, None);
    assert!(callbacks(s).await.is_empty());

    let failed = FinishOutcome::Failed { error: boom("no") };
    assert!(finish(s, &b, failed, at(3)).await);
    let done = group(s, g.id).await;
    assert_eq!(done.counts, counts(0, 0, 1, 1, 0));
    assert_eq!(done.status(), GroupStatus::DoneWithErrors);
    assert_eq!(done.finished_at, Some(at(3)));
    let cb = callbacks(s).await;
    assert_eq!(cb.len(), 1, "on_complete is stored when the group finishes");
    assert_eq!(Some(cb[0].id), done.on_complete_job_id);
    assert_eq!(cb[0].args, r#"{"report":true}"#);
    assert_eq!(cb[0].status, JobStatus::Available);
    assert_eq!(cb[0].created_at, at(3));
    assert_eq!(cb[0].group_id, None, "the on_complete job is no member");

    // Retry reopens; finishing again does not store on_complete again.
    assert_eq!(retry(s, by_ids(&[b.id]), at(4)).await, 1);
    let reopened = group(s, g.id).await;
    assert_eq!(reopened.finished_at, None);
    assert_eq!(reopened.status(), GroupStatus::InProgress);
    let b2 = claim_from(s, &[QUEUE], &[NAME], 10, "w", at(5)).await;
    assert_eq!(claimed_ids(&b2), HashSet::from([b.id]));
    assert!(finish(s, &b2[0], FinishOutcome::Completed, at(6)).await);
    let again = group(s, g.id).await;
    assert_eq!(again.status(), GroupStatus::Done);
    assert_eq!(again.finished_at, Some(at(6)));
    assert_eq!(again.on_complete_job_id, done.on_complete_job_id);
    assert_eq!(
        callbacks(s).await.len(),
        1,
        "on_complete is stored once, ever"
    );
}

/// [`Storage::job_finish_claim`] with the claim of [`claim`].
async fn finish_claim(
    s: &dyn Storage,
    finishes: Vec<JobFinish>,
    names: &[&str],
    limit: u32,
    now: Timestamp,
) -> JobFinishClaimResult {
    s.job_finish_claim(JobFinishClaimParams {
        finish: JobFinishManyParams { finishes, now },
        claim: JobClaimParams {
            queues: strings(&[QUEUE]),
            names: strings(names),
            limit,
            worker_id: "w2".to_owned(),
            now,
        },
    })
    .await
    .expect("job_finish_claim failed")
}

fn completed(job: &ClaimedJob) -> JobFinish {
    JobFinish {
        id: job.id,
        lease: job.lease,
        outcome: FinishOutcome::Completed,
    }
}

/// The combined call records the finishes (answering each in order) and claims, as the
/// two calls would; with nothing to finish it only claims, with a zero limit it only
/// finishes.
pub async fn finish_claim_records_then_claims(s: Arc<dyn Storage>) {
    let s = &*s;
    let ids = sorted_ids(4);
    let mut js = jobs(4);
    for (j, id) in js.iter_mut().zip(&ids) {
        j.id = *id;
    }
    insert(s, js, at(0)).await;
    let first = claim_one(s, "w1", at(1)).await;
    assert_eq!(first.id, ids[0]);

    let got = finish_claim(s, vec![completed(&first)], &[NAME], 2, at(2)).await;
    assert_eq!(got.accepted, vec![true]);
    let claimed = got.claimed.expect("the claim failed");
    assert_eq!(claimed_ids(&claimed), HashSet::from([ids[1], ids[2]]));
    for c in &claimed {
        assert_eq!(c.started_at, at(2));
        assert_eq!(c.attempt, 1);
        let r = get(s, c.id).await;
        assert_eq!(r.status, JobStatus::Running);
        assert_eq!(r.worker_id.as_deref(), Some("w2"));
    }
    let done = get(s, first.id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.finished_at, Some(at(2)));
    assert_eq!(done.history.len(), 1);

    // Nothing to finish: only a claim. A zero limit: only the finishes.
    let got = finish_claim(s, Vec::new(), &[NAME], 5, at(3)).await;
    assert!(got.accepted.is_empty());
    let last = got.claimed.expect("the claim failed");
    assert_eq!(claimed_ids(&last), HashSet::from([ids[3]]));
    let got = finish_claim(
        s,
        claimed.iter().map(completed).collect(),
        &[NAME],
        0,
        at(4),
    )
    .await;
    assert_eq!(got.accepted, vec![true, true]);
    assert!(got.claimed.expect("the claim failed").is_empty());
    assert_eq!(get(s, ids[3]).await.status, JobStatus::Running);
}

/// A finish refused by its fence (the lease was taken over) changes nothing, and the claim
/// in the same call still happens.
pub async fn finish_claim_claims_even_when_a_finish_is_refused(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, jobs(3), at(0)).await;
    let held = claim_one(s, "w1", at(1)).await;
    let stale = JobFinish {
        id: held.id,
        lease: LeaseToken::new(),
        outcome: FinishOutcome::Completed,
    };
    let unknown = JobFinish {
        id: JobId::new(),
        lease: LeaseToken::new(),
        outcome: FinishOutcome::Completed,
    };
    let got = finish_claim(s, vec![stale, unknown], &[NAME], 10, at(2)).await;
    assert_eq!(got.accepted, vec![false, false]);
    let claimed = got.claimed.expect("the claim failed");
    assert_eq!(claimed.len(), 2, "the other two jobs are claimed");
    assert!(!claimed_ids(&claimed).contains(&held.id));
    let r = get(s, held.id).await;
    assert_eq!(r.status, JobStatus::Running);
    assert_eq!(r.worker_id.as_deref(), Some("w1"));
    assert!(r.history.is_empty());
    // The real holder can still finish it.
    assert!(finish(s, &held, FinishOutcome::Completed, at(3)).await);
}

/// The claim sees the slot a finish in the same call frees, and takes no more jobs of a
/// concurrency key than the key has room for.
pub async fn finish_claim_holds_limits(s: Arc<dyn Storage>) {
    let s = &*s;
    insert(s, (0..4).map(|_| limited_job("k", 2)).collect(), at(0)).await;
    let running = claim(s, 10, "w1", at(1)).await;
    assert_eq!(running.len(), 2, "the key has room for two");

    // One finishes: one slot frees, and exactly one more job is claimed with it.
    let got = finish_claim(s, vec![completed(&running[0])], &[NAME], 10, at(2)).await;
    assert_eq!(got.accepted, vec![true]);
    let next = got.claimed.expect("the claim failed");
    assert_eq!(next.len(), 1, "one slot of the key was freed: {next:?}");
    // A refused finish frees nothing: no job is claimed.
    let stale = JobFinish {
        id: running[1].id,
        lease: LeaseToken::new(),
        outcome: FinishOutcome::Completed,
    };
    let got = finish_claim(s, vec![stale], &[NAME], 10, at(3)).await;
    assert_eq!(got.accepted, vec![false]);
    assert!(got.claimed.expect("the claim failed").is_empty());
    let running_now = count(
        s,
        JobFilter {
            statuses: vec![JobStatus::Running],
            ..JobFilter::default()
        },
    )
    .await;
    assert_eq!(running_now, 2, "never more than the limit running");
}

/// The last member of a group finishing stores the group's on_complete job once, and the
/// claim in the same call can take it.
pub async fn finish_claim_can_claim_the_on_complete_it_stores(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(None);
    insert_group(s, &g, jobs(1), at(0)).await;
    let member = claim_one(s, "w", at(1)).await;
    let got = finish_claim(s, vec![completed(&member)], &[NAME, "done"], 10, at(2)).await;
    assert_eq!(got.accepted, vec![true]);
    let claimed = got.claimed.expect("the claim failed");
    let done = group(s, g.id).await;
    assert_eq!(done.status(), GroupStatus::Done);
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].name, "done");
    assert_eq!(Some(claimed[0].id), done.on_complete_job_id);
    assert_eq!(callbacks(s).await.len(), 1, "on_complete is stored once");
}

/// Every way a member becomes final finishes its group: cancel of pending members, the
/// reclaim of an expired lease with no retries left, and the release of a cancel-requested
/// member. A group with no `on_complete` finishes with none stored.
pub async fn every_final_transition_finishes_a_group(s: Arc<dyn Storage>) {
    let s = &*s;
    // Cancel.
    let g1 = new_group(None);
    insert_group(s, &g1, jobs(2), at(0)).await;
    assert_eq!(cancel(s, in_group(g1.id), at(1)).await, cancelled(2, 0));
    let r1 = group(s, g1.id).await;
    assert_eq!(r1.status(), GroupStatus::Cancelled);
    assert_eq!(r1.finished_at, Some(at(1)));
    assert_eq!(callbacks(s).await.len(), 1);

    // Reclaim with no retries left: failed.
    let g2 = NewGroup {
        on_complete: None,
        ..new_group(None)
    };
    insert_group(s, &g2, vec![job_with_retries(0)], at(10)).await;
    let c = claim_one(s, "dead", at(11)).await;
    let expired = at(11)
        .plus(lease_duration(c.heartbeat_ms))
        .plus(std::time::Duration::from_secs(1));
    assert_eq!(reclaim(s, expired).await, 1);
    let r2 = group(s, g2.id).await;
    assert_eq!(r2.counts, counts(0, 0, 0, 1, 0));
    assert_eq!(r2.finished_at, Some(expired));
    assert_eq!(r2.on_complete_job_id, None);
    assert_eq!(
        callbacks(s).await.len(),
        1,
        "no on_complete: nothing stored"
    );

    // Release of a cancel-requested member.
    let g3 = new_group(None);
    insert_group(s, &g3, jobs(1), at(100)).await;
    let c = claim_one(s, "w", at(101)).await;
    assert_eq!(cancel(s, in_group(g3.id), at(102)).await, cancelled(0, 1));
    assert_eq!(group(s, g3.id).await.finished_at, None);
    assert_eq!(release(s, vec![(c.id, c.lease)], at(103)).await, 1);
    let r3 = group(s, g3.id).await;
    assert_eq!(r3.status(), GroupStatus::Cancelled);
    assert_eq!(r3.finished_at, Some(at(103)));
    assert_eq!(callbacks(s).await.len(), 2);
}

/// Cancelling a group cancels its pending members at once and asks its running ones to
/// stop; it finishes, storing `on_complete`, when the last running one ends. Other jobs are
/// left alone.
pub async fn cancel_group_cancels_the_rest(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(None);
    insert_group(s, &g, jobs(3), at(0)).await;
    let outsider = new_job(NAME, QUEUE);
    insert(s, vec![outsider.clone()], at(0)).await;
    let first = claim_one(s, "w", at(1)).await;
    assert!(finish(s, &first, FinishOutcome::Completed, at(2)).await);
    let running = claim_one(s, "w", at(3)).await;
    assert_eq!(get(s, running.id).await.group_id, Some(g.id));

    assert_eq!(cancel(s, in_group(g.id), at(4)).await, cancelled(1, 1));
    assert_eq!(get(s, outsider.id).await.status, JobStatus::Available);
    let mid = group(s, g.id).await;
    assert_eq!(mid.counts, counts(0, 1, 1, 0, 1));
    assert_eq!(mid.status(), GroupStatus::InProgress);
    assert!(callbacks(s).await.is_empty());

    assert!(finish(s, &running, FinishOutcome::Completed, at(5)).await);
    let end = group(s, g.id).await;
    assert_eq!(end.counts, counts(0, 0, 1, 0, 2));
    assert_eq!(end.status(), GroupStatus::Cancelled);
    assert_eq!(callbacks(s).await.len(), 1);
    // Cancelling a finished group changes nothing.
    assert_eq!(cancel(s, in_group(g.id), at(6)).await, cancelled(0, 0));
    assert_eq!(callbacks(s).await.len(), 1);
}

/// A claim starts at most `concurrency` members of a group; the members held back stay
/// pending with no attempt counted, and the jobs behind them are claimed instead.
pub async fn group_concurrency_limits_claims(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(Some(2));
    let members: Vec<NewJob> = (0..5)
        .map(|_| NewJob {
            priority: 10,
            ..new_job(NAME, QUEUE)
        })
        .collect();
    insert_group(s, &g, members, at(0)).await;
    let others = jobs(3);
    let other_ids: HashSet<JobId> = others.iter().map(|j| j.id).collect();
    insert(s, others, at(0)).await;

    let first = claim(s, 4, "w", at(1)).await;
    assert_eq!(first.len(), 4, "2 members and then 2 other jobs: {first:?}");
    let members_run: Vec<&ClaimedJob> = first
        .iter()
        .filter(|c| !other_ids.contains(&c.id))
        .collect();
    assert_eq!(members_run.len(), 2);
    assert_eq!(group(s, g.id).await.counts, counts(3, 2, 0, 0, 0));
    let rest = claim(s, 10, "w", at(2)).await;
    assert_eq!(rest.len(), 1, "only the last other job: {rest:?}");
    assert!(other_ids.contains(&rest[0].id));
    assert!(claim(s, 10, "w", at(3)).await.is_empty());
    let held = list(
        s,
        JobListParams {
            filter: JobFilter {
                statuses: vec![JobStatus::Available],
                ..in_group(g.id)
            },
            cursor: None,
            limit: 10,
        },
    )
    .await;
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|r| r.attempt == 0), "no attempt burnt");

    // One member ends: one more may start.
    assert!(finish(s, members_run[0], FinishOutcome::Completed, at(4)).await);
    let next = claim(s, 10, "w", at(5)).await;
    assert_eq!(next.len(), 1);
    assert_eq!(get(s, next[0].id).await.group_id, Some(g.id));
    assert!(claim(s, 10, "w", at(6)).await.is_empty());
    assert_eq!(group(s, g.id).await.counts, counts(2, 2, 1, 0, 0));
}

/// A group's limit is its members' one concurrency key (`group:<id>`), next to their
/// rate limits; members of a group without a limit keep their own concurrency key. A
/// member with its own concurrency key in a limited group, a unique member, or a limit
/// of 0 is refused as a config error, storing nothing.
pub async fn group_limit_is_the_members_concurrency_key(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(Some(1));
    let rated = NewJob {
        limits: JobLimits {
            rate: Some(RateLimit {
                key: "rated".to_owned(),
                limit: 10,
                window_ms: 1000,
            }),
            ..JobLimits::default()
        },
        ..new_job(NAME, QUEUE)
    };
    let members = vec![rated.clone(), new_job(NAME, QUEUE)];
    insert_group(s, &g, members.clone(), at(0)).await;
    let key = NewGroup::concurrency_key(g.id);
    assert_eq!(key, format!("group:{}", g.id));
    for m in &members {
        let r = get(s, m.id).await;
        assert_eq!(
            r.limits.concurrency,
            Some(ConcurrencyLimit {
                key: key.clone(),
                limit: 1
            })
        );
        assert_eq!(
            r.limits.rate, m.limits.rate,
            "a member keeps its rate limit"
        );
    }
    // A plain job given the group's key by hand shares its room: the limit is the key's.
    let outsider = limited_job(&key, 1);
    insert(s, vec![outsider.clone()], at(0)).await;
    assert_eq!(
        claim(s, 10, "w", at(1)).await.len(),
        1,
        "one of the key runs"
    );
    assert!(claim(s, 10, "w", at(1)).await.is_empty());

    // Without a group limit, members keep their own concurrency key.
    let free = new_group(None);
    let own = vec![limited_job("own", 1), limited_job("own", 1)];
    insert_group(s, &free, own.clone(), at(2)).await;
    assert_eq!(
        get(s, own[0].id).await.limits.concurrency,
        own[0].limits.concurrency
    );
    let got = claim(s, 10, "w", at(3)).await;
    assert_eq!(
        got.iter()
            .filter(|c| c.id == own[0].id || c.id == own[1].id)
            .count(),
        1,
        "the members' own key holds: {got:?}"
    );

    // Refused, storing nothing: a second key, a unique member, a limit of 0.
    let refused = [
        (Some(2), limited_job("own", 3)),
        (Some(2), unique_job("u")),
        (None, unique_job("u")),
        (Some(0), new_job(NAME, QUEUE)),
    ];
    for (concurrency, bad) in refused {
        let h = new_group(concurrency);
        let fine = new_job(NAME, QUEUE);
        let err = s
            .group_insert(GroupInsertParams {
                group: h.clone(),
                jobs: vec![fine.clone(), bad.clone()],
                now: at(4),
            })
            .await;
        assert!(
            matches!(err, Err(Error::Config(_))),
            "{concurrency:?} with {bad:?}: {err:?}"
        );
        assert!(s.group_get(h.id).await.unwrap().is_none());
        assert!(s.job_get(fine.id).await.unwrap().is_none());
        assert!(s.job_get(bad.id).await.unwrap().is_none());
    }
}

/// Many claimers at once, through `a` and `b` (two handles on one store, or the same one),
/// never have more members of a limited group running than its limit.
pub async fn racing_claimers_hold_the_group_limit(a: Arc<dyn Storage>, b: Arc<dyn Storage>) {
    let g = new_group(Some(2));
    insert_group(&*a, &g, jobs(12), at(0)).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.extend(claim(&*s, 3, &format!("w{i}"), at(1)).await);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.expect("claimer panicked"));
    }
    assert_eq!(claimed.len(), 2, "the limit held: {claimed:?}");
    assert_eq!(group(&*a, g.id).await.counts, counts(10, 2, 0, 0, 0));
}

/// Many finishers at once, through `a` and `b`, each ending members of one group: the
/// group finishes once and its `on_complete` job is stored once.
pub async fn racing_finishers_store_on_complete_once(a: Arc<dyn Storage>, b: Arc<dyn Storage>) {
    for round in 0..3 {
        let g = new_group(None);
        insert_group(&*a, &g, jobs(8), at(round)).await;
        let claimed = claim(&*a, 8, "w", at(round)).await;
        assert_eq!(claimed.len(), 8);
        let mut tasks = Vec::new();
        for (i, c) in claimed.into_iter().enumerate() {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let outcome = if i % 3 == 0 {
                    FinishOutcome::Failed { error: boom("x") }
                } else {
                    FinishOutcome::Completed
                };
                assert!(finish(&*s, &c, outcome, at(round + 1)).await);
            }));
        }
        for t in tasks {
            t.await.expect("finisher panicked");
        }
        let r = group(&*a, g.id).await;
        assert_eq!(r.finished_at, Some(at(round + 1)));
        assert_eq!(r.status(), GroupStatus::DoneWithErrors);
        let stored = callbacks(&*a).await;
        assert_eq!(
            stored.len(),
            usize::try_from(round + 1).unwrap(),
            "one on_complete job per group"
        );
    }
}

/// [`racing_claimers_hold_the_group_limit`] on one handle.
pub async fn concurrent_claimers_hold_the_group_limit(s: Arc<dyn Storage>) {
    racing_claimers_hold_the_group_limit(s.clone(), s).await;
}

/// [`racing_finishers_store_on_complete_once`] on one handle.
pub async fn concurrent_finishers_store_on_complete_once(s: Arc<dyn Storage>) {
    racing_finishers_store_on_complete_once(s.clone(), s).await;
}

/// Deleting or pruning members is allowed; the group goes with its last member.
pub async fn groups_go_with_their_last_member(s: Arc<dyn Storage>) {
    let s = &*s;
    let g = new_group(None);
    insert_group(s, &g, jobs(3), at(0)).await;
    let ids: Vec<JobId> = list(
        s,
        JobListParams {
            filter: in_group(g.id),
            cursor: None,
            limit: 10,
        },
    )
    .await
    .iter()
    .map(|r| r.id)
    .collect();
    assert_eq!(delete(s, by_ids(&ids[..1])).await, 1);
    assert_eq!(group(s, g.id).await.counts.total(), 2);
    assert_eq!(cancel(s, in_group(g.id), at(1)).await, cancelled(2, 0));
    assert_eq!(group(s, g.id).await.status(), GroupStatus::Cancelled);
    assert_eq!(prune(s, &[JobStatus::Cancelled], at(2), 1).await, 1);
    assert!(
        s.group_get(g.id).await.unwrap().is_some(),
        "one member left"
    );
    assert_eq!(prune(s, &[JobStatus::Cancelled], at(2), 10).await, 1);
    assert!(
        s.group_get(g.id).await.unwrap().is_none(),
        "the group goes with its last member"
    );
    // The on_complete job is no member and stays.
    assert_eq!(callbacks(s).await.len(), 1);

    let h = new_group(None);
    insert_group(s, &h, jobs(2), at(3)).await;
    assert_eq!(delete(s, in_group(h.id)).await, 2);
    assert!(s.group_get(h.id).await.unwrap().is_none());
}
