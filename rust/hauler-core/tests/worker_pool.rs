//! The worker pool against real storages, with a Rust executor (no Python).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hauler_core::config::{PoolConfig, QueueConfig};
use hauler_core::model::{
    AttemptOutcome, ClaimedJob, ErrorInfo, JobId, JobStatus, NewJob, Timestamp,
};
use hauler_core::queue::Queue;
use hauler_core::retry::{Backoff, BackoffKind, MaxRetries, RetryPolicy};
use hauler_core::storage::conformance::new_job;
use hauler_core::storage::{
    FinishOutcome, JobCancelResult, JobFilter, MemoryStorage, SqliteOptions, SqliteStorage, Storage,
};
use hauler_core::worker::{Completion, Executor, Outcome, WorkerPool};

use common::Counting;

type Handler =
    Arc<dyn Fn(ClaimedJob) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// Runs each job as a tokio task calling `handler`.
struct FnExecutor {
    handler: Handler,
    abandoned: Mutex<Vec<JobId>>,
    cancelled: Arc<Mutex<Vec<JobId>>>,
}

impl FnExecutor {
    fn new<F, Fut>(f: F) -> Arc<Self>
    where
        F: Fn(ClaimedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        Arc::new(FnExecutor {
            handler: Arc::new(move |j| Box::pin(f(j))),
            abandoned: Mutex::new(Vec::new()),
            cancelled: Arc::default(),
        })
    }
}

impl Executor for FnExecutor {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        let fut = (self.handler)(job);
        tokio::spawn(async move { done.send(fut.await) });
    }
    fn abandon(&self, job_id: JobId) {
        self.abandoned.lock().unwrap().push(job_id);
    }
    fn cancel(&self, job_id: JobId) {
        self.cancelled.lock().unwrap().push(job_id);
    }
}

/// Wait until the pool has passed the cancel of `id` on to its executor (`cancelled`):
/// it has set the job's cancel flag by then.
async fn wait_cancel_heard(cancelled: &Mutex<Vec<JobId>>, id: JobId) {
    let t0 = Instant::now();
    while !cancelled.lock().unwrap().contains(&id) {
        assert!(t0.elapsed() < Duration::from_secs(10), "cancel never heard");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fail(msg: &str) -> Outcome {
    Outcome::Failure {
        error: ErrorInfo::engine("TestError", msg),
        permanent: false,
    }
}

fn pool_config(concurrency: usize, names: &[&str]) -> PoolConfig {
    let mut c = PoolConfig::new(
        "test-worker",
        vec![QueueConfig {
            name: "default".into(),
            concurrency,
            names: names.iter().map(|s| s.to_string()).collect(),
        }],
    );
    c.reclaim_interval = Duration::from_millis(50);
    c
}

fn job(name: &str) -> NewJob {
    new_job(name, "default")
}

fn fast_retry(retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: MaxRetries::Count(retries),
        backoff: Backoff::new(BackoffKind::Fixed(0.01)),
    }
}

async fn wait_final(storage: &Arc<dyn Storage>, ids: &[JobId], limit: Duration) {
    let start = Instant::now();
    loop {
        let mut all = true;
        for id in ids {
            let rec = storage.job_get(*id).await.unwrap().unwrap();
            if !rec.status.is_final() {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "jobs not finished within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn storages() -> Vec<(&'static str, Arc<dyn Storage>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStorage::open(dir.path().join("jobs.db"), SqliteOptions::default()).unwrap();
    vec![
        (
            "memory",
            Arc::new(MemoryStorage::new()) as Arc<dyn Storage>,
            None,
        ),
        ("sqlite", Arc::new(sqlite) as Arc<dyn Storage>, Some(dir)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_jobs_and_records_completion() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let exec = FnExecutor::new(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Outcome::Success }
        });
        let pool = WorkerPool::start(queue.clone(), pool_config(4, &["a"]), exec).unwrap();
        let ids = queue
            .push_many((0..200).map(|_| job("a")).collect())
            .await
            .unwrap();
        wait_final(&storage, &ids, Duration::from_secs(10)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 200, "{kind}");
        let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Completed, "{kind}");
        assert_eq!(rec.history.len(), 1, "{kind}");
        assert_eq!(rec.history[0].outcome, AttemptOutcome::Completed);
        assert_eq!(rec.history[0].worker_id, "test-worker");
        pool.stop(Duration::from_secs(1)).await.unwrap();
        assert!(!pool.is_running());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_backoff_then_fail() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let t = times.clone();
        let exec = FnExecutor::new(move |_| {
            t.lock().unwrap().push(Instant::now());
            async { fail("boom") }
        });
        let pool = WorkerPool::start(queue.clone(), pool_config(2, &["a"]), exec).unwrap();
        let mut j = job("a");
        j.retry = RetryPolicy {
            max_retries: MaxRetries::Count(2),
            backoff: Backoff::new(BackoffKind::Linear(0.1)),
        };
        let ids = queue.push_many(vec![j]).await.unwrap();
        wait_final(&storage, &ids, Duration::from_secs(10)).await;
        let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Failed, "{kind}");
        assert_eq!(rec.attempt, 3, "{kind}: first attempt + 2 retries");
        assert_eq!(rec.history.len(), 3);
        assert!(rec
            .history
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Failed));
        assert_eq!(rec.last_error.as_ref().unwrap().message, "boom");
        let times = times.lock().unwrap().clone();
        let gap1 = times[1] - times[0];
        let gap2 = times[2] - times[1];
        assert!(
            gap1 >= Duration::from_millis(95),
            "{kind}: linear retry 1 after 0.1s, was {gap1:?}"
        );
        assert!(
            gap2 >= Duration::from_millis(195),
            "{kind}: linear retry 2 after 0.2s, was {gap2:?}"
        );
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_skips_retries() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let queue = Arc::new(Queue::new(storage.clone()));
    let exec = FnExecutor::new(|_| async {
        Outcome::Failure {
            error: ErrorInfo::engine("Bad", "cannot decode"),
            permanent: true,
        }
    });
    let pool = WorkerPool::start(queue.clone(), pool_config(1, &["a"]), exec).unwrap();
    let ids = queue.push_many(vec![job("a")]).await.unwrap();
    wait_final(&storage, &ids, Duration::from_secs(5)).await;
    let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.attempt), (JobStatus::Failed, 1));
    pool.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_respected_and_names_filtered() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let queue = Arc::new(Queue::new(storage.clone()));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let exec = FnExecutor::new(move |_| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(cur, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Outcome::Success
        }
    });
    let pool = WorkerPool::start(queue.clone(), pool_config(3, &["a"]), exec).unwrap();
    let ids = queue
        .push_many((0..60).map(|_| job("a")).collect())
        .await
        .unwrap();
    let other = queue.push_many(vec![job("unregistered")]).await.unwrap();
    wait_final(&storage, &ids, Duration::from_secs(10)).await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "at most the worker count at once, and it is used"
    );
    let rec = storage.job_get(other[0]).await.unwrap().unwrap();
    assert_eq!(
        rec.status,
        JobStatus::Available,
        "a name the pool did not register is never claimed"
    );
    pool.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_job_starts_on_time_not_before() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let started = Arc::new(Mutex::new(HashMap::new()));
        let s = started.clone();
        let exec = FnExecutor::new(move |j: ClaimedJob| {
            s.lock().unwrap().insert(j.id, Timestamp::now());
            async { Outcome::Success }
        });
        let mut cfg = pool_config(2, &["a"]);
        cfg.poll_interval = Some(Duration::from_secs(30)); // prove the wake-up is not a poll
        let pool = WorkerPool::start(queue.clone(), cfg, exec).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // the pool is idle, waiting
        let at = Timestamp::now().plus(Duration::from_millis(300));
        let mut j = job("a");
        j.run_at = Some(at);
        let ids = queue.push_many(vec![j]).await.unwrap();
        assert_eq!(
            storage.job_get(ids[0]).await.unwrap().unwrap().status,
            JobStatus::Scheduled
        );
        wait_final(&storage, &ids, Duration::from_secs(5)).await;
        let start = started.lock().unwrap()[&ids[0]];
        let late = start.as_micros() - at.as_micros();
        assert!(late >= 0, "{kind}: ran {late}us early");
        assert!(
            late < 50_000,
            "{kind}: ran {late}us late (target: within 10 ms on an idle machine)"
        );
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_the_attempt_and_abandons_it() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let queue = Arc::new(Queue::new(storage.clone()));
    let exec = FnExecutor::new(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Outcome::Success
    });
    let pool = WorkerPool::start(queue.clone(), pool_config(1, &["a"]), exec.clone()).unwrap();
    let mut j = job("a");
    j.timeout_ms = Some(100);
    j.retry = fast_retry(0);
    let ids = queue.push_many(vec![j]).await.unwrap();
    wait_final(&storage, &ids, Duration::from_secs(3)).await;
    let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(rec.last_error.unwrap().kind, "Timeout");
    assert_eq!(*exec.abandoned.lock().unwrap(), vec![ids[0]]);
    pool.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_then_releases_the_rest() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let queue = Arc::new(Queue::new(storage.clone()));
    let exec = FnExecutor::new(|j: ClaimedJob| async move {
        let ms = if j.name == "slow" { 10_000 } else { 50 };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Outcome::Success
    });
    let pool = WorkerPool::start(queue.clone(), pool_config(2, &["slow", "quick"]), exec).unwrap();
    let ids = queue
        .push_many(vec![job("slow"), job("quick")])
        .await
        .unwrap();
    let t0 = Instant::now();
    while pool.in_flight() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pool.stop(Duration::from_millis(300)).await.unwrap();
    let slow = storage.job_get(ids[0]).await.unwrap().unwrap();
    let quick = storage.job_get(ids[1]).await.unwrap().unwrap();
    assert_eq!(
        quick.status,
        JobStatus::Completed,
        "finished within the stop timeout"
    );
    assert_eq!(
        slow.status,
        JobStatus::Available,
        "released for another worker at once"
    );
    assert_eq!(slow.attempt, 0, "a release does not count the attempt");
    assert_eq!(
        slow.history.last().unwrap().outcome,
        AttemptOutcome::Released
    );
    assert!(!pool.is_running());
}

/// Holds each job until it is abandoned, then reports a failure, as a cancelled asyncio
/// task does.
#[derive(Default)]
struct FailOnAbandon {
    running: Mutex<HashMap<JobId, Completion>>,
}

impl Executor for FailOnAbandon {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        self.running.lock().unwrap().insert(job.id, done);
    }
    fn abandon(&self, job_id: JobId) {
        if let Some(done) = self.running.lock().unwrap().remove(&job_id) {
            done.send(fail("cancelled"));
        }
    }
}

async fn wait_in_flight(pool: &WorkerPool, n: usize) {
    let t0 = Instant::now();
    while pool.in_flight() < n {
        assert!(t0.elapsed() < Duration::from_secs(5), "never {n} in flight");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_releases_a_job_whose_abandonment_reports_a_failure() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        for round in 0..10 {
            // A name per round, so each round's pool claims only its own job.
            let name = format!("a{round}");
            let exec = Arc::new(FailOnAbandon::default());
            let pool = WorkerPool::start(queue.clone(), pool_config(1, &[&name]), exec).unwrap();
            let ids = queue.push_many(vec![job(&name)]).await.unwrap();
            wait_in_flight(&pool, 1).await;
            pool.stop(Duration::from_millis(10)).await.unwrap();
            let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
            let outcomes: Vec<_> = rec.history.iter().map(|a| a.outcome).collect();
            assert_eq!(
                (rec.status, rec.attempt, outcomes),
                (JobStatus::Available, 0, vec![AttemptOutcome::Released]),
                "{kind}, round {round}: the release must win over the late failure"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_records_a_job_that_finishes_while_draining() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        for round in 0..10 {
            let name = format!("a{round}");
            // Long enough to be seen in flight on a loaded machine (polled every 1 ms).
            let exec = FnExecutor::new(|_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Outcome::Success
            });
            let pool = WorkerPool::start(queue.clone(), pool_config(1, &[&name]), exec).unwrap();
            let ids = queue.push_many(vec![job(&name)]).await.unwrap();
            wait_in_flight(&pool, 1).await;
            pool.stop(Duration::from_secs(5)).await.unwrap();
            let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
            assert_eq!(
                (rec.status, rec.attempt),
                (JobStatus::Completed, 1),
                "{kind}, round {round}: stop returned before the outcome was written"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_jobs_are_reclaimed_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(&path, SqliteOptions::default()).unwrap());
    let queue = Arc::new(Queue::new(storage.clone()));
    // A "dead" worker: claims the job and never reports or heartbeats.
    let mut j = job("a");
    j.heartbeat_ms = 50;
    let ids = queue.push_many(vec![j]).await.unwrap();
    let claimed = storage
        .job_claim(hauler_core::storage::JobClaimParams {
            queues: vec!["default".into()],
            names: vec!["a".into()],
            limit: 1,
            worker_id: "dead".into(),
            now: Timestamp::now(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let exec = FnExecutor::new(|_| async { Outcome::Success });
    let other = Arc::new(Queue::new(Arc::new(
        SqliteStorage::open(&path, SqliteOptions::default()).unwrap(),
    )));
    let pool = WorkerPool::start(other, pool_config(1, &["a"]), exec).unwrap();
    wait_final(&storage, &ids, Duration::from_secs(5)).await;
    let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Completed);
    let outcomes: Vec<_> = rec
        .history
        .iter()
        .map(|a| (a.worker_id.as_str(), a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("dead", AttemptOutcome::LeaseExpired),
            ("test-worker", AttemptOutcome::Completed)
        ]
    );
    pool.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_leased() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let queue = Arc::new(Queue::new(storage.clone()));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let exec = FnExecutor::new(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(600)).await; // 4 leases long
            Outcome::Success
        }
    });
    let pool = WorkerPool::start(queue.clone(), pool_config(1, &["a"]), exec).unwrap();
    let mut j = job("a");
    j.heartbeat_ms = 50;
    let ids = queue.push_many(vec![j]).await.unwrap();
    wait_final(&storage, &ids, Duration::from_secs(5)).await;
    let rec = storage.job_get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.attempt, runs.load(Ordering::SeqCst)),
        (JobStatus::Completed, 1, 1)
    );
    pool.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused() {
    let queue = Arc::new(Queue::new(Arc::new(MemoryStorage::new())));
    let exec = FnExecutor::new(|_| async { Outcome::Success });
    let err = WorkerPool::start(queue, pool_config(0, &["a"]), exec).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

/// Runs each job until its cancel flag is set, then reports a failure; records the jobs
/// the engine asked to cancel.
#[derive(Default)]
struct CancellableExecutor {
    cancelled: Mutex<Vec<JobId>>,
}

impl Executor for CancellableExecutor {
    fn execute(&self, _job: ClaimedJob, done: Completion) {
        let flag = done.cancel_flag();
        tokio::spawn(async move {
            while !flag.is_set() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            done.send(fail("stopped on request"));
        });
    }
    fn cancel(&self, job_id: JobId) {
        self.cancelled.lock().unwrap().push(job_id);
    }
}

async fn wait_status(storage: &Arc<dyn Storage>, id: JobId, want: JobStatus, limit: Duration) {
    let start = Instant::now();
    while storage.job_get(id).await.unwrap().unwrap().status != want {
        assert!(
            start.elapsed() < limit,
            "job {id} not {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn by_ids(ids: &[JobId]) -> JobFilter {
    JobFilter {
        ids: Some(ids.to_vec()),
        ..JobFilter::default()
    }
}

/// A cancel through the pool's own queue reaches a running job at once (not at its next
/// heartbeat, a minute away here): its flag is set, the executor is asked to stop it, and
/// the job ends `cancelled` though it reported a failure with retries left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_running_job_stops_and_ends_cancelled() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let exec = Arc::new(CancellableExecutor::default());
        let pool = WorkerPool::start(queue.clone(), pool_config(2, &["a"]), exec.clone()).unwrap();
        let slow = NewJob {
            heartbeat_ms: 60_000,
            ..job("a")
        };
        let other = NewJob {
            heartbeat_ms: 60_000,
            ..job("a")
        };
        let ids = queue
            .push_many(vec![slow.clone(), other.clone()])
            .await
            .unwrap();
        wait_in_flight(&pool, 2).await;
        let result = queue.cancel_many(by_ids(&ids[..1])).await.unwrap();
        assert_eq!(
            result,
            JobCancelResult {
                cancelled: 0,
                requested: 1
            },
            "{kind}"
        );
        wait_status(
            &storage,
            slow.id,
            JobStatus::Cancelled,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(*exec.cancelled.lock().unwrap(), vec![slow.id], "{kind}");
        let rec = storage.job_get(slow.id).await.unwrap().unwrap();
        assert_eq!(rec.history.len(), 1, "{kind}");
        assert_eq!(rec.history[0].outcome, AttemptOutcome::Cancelled, "{kind}");
        assert_eq!(
            rec.history[0].error.as_ref().map(|e| e.message.as_str()),
            Some("stopped on request"),
            "{kind}"
        );
        assert_eq!(
            storage.job_get(other.id).await.unwrap().unwrap().status,
            JobStatus::Running,
            "{kind}: the other job runs on"
        );
        queue.cancel_many(by_ids(&ids[1..])).await.unwrap();
        wait_final(&storage, &ids, Duration::from_secs(5)).await;
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}

/// A cancel made through another queue on the same storage (as another process would)
/// reaches the running job at its next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_elsewhere_arrives_with_the_next_heartbeat() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let elsewhere = Queue::new(storage.clone());
        let exec = Arc::new(CancellableExecutor::default());
        let pool = WorkerPool::start(queue.clone(), pool_config(1, &["a"]), exec.clone()).unwrap();
        let j = NewJob {
            heartbeat_ms: 100,
            ..job("a")
        };
        queue.push_many(vec![j.clone()]).await.unwrap();
        wait_in_flight(&pool, 1).await;
        let result = elsewhere.cancel_many(by_ids(&[j.id])).await.unwrap();
        assert_eq!(result.requested, 1, "{kind}");
        wait_status(&storage, j.id, JobStatus::Cancelled, Duration::from_secs(5)).await;
        assert_eq!(*exec.cancelled.lock().unwrap(), vec![j.id], "{kind}");
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}

/// The retention task deletes completed jobs once they are older than the retention; it
/// leaves failed jobs, and a pool with no retention deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_completed_jobs() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let exec = FnExecutor::new(|j: ClaimedJob| async move {
            if j.name == "bad" {
                Outcome::Failure {
                    error: ErrorInfo::engine("TestError", "no"),
                    permanent: true,
                }
            } else {
                Outcome::Success
            }
        });
        let mut keep = pool_config(4, &["a", "bad"]);
        keep.retention = None;
        let pool = WorkerPool::start(queue.clone(), keep, exec.clone()).unwrap();
        let ids = queue
            .push_many(vec![job("a"), job("a"), job("bad")])
            .await
            .unwrap();
        wait_final(&storage, &ids, Duration::from_secs(5)).await;
        pool.stop(Duration::from_secs(1)).await.unwrap();

        let mut prune = pool_config(4, &["a", "bad"]);
        prune.retention = Some(Duration::from_millis(100));
        prune.retention_interval = Duration::from_millis(20);
        let pool = WorkerPool::start(queue.clone(), prune, exec).unwrap();
        let start = Instant::now();
        while storage.job_get(ids[1]).await.unwrap().is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{kind}: not pruned"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(storage.job_get(ids[0]).await.unwrap().is_none(), "{kind}");
        let failed = storage.job_get(ids[2]).await.unwrap().unwrap();
        assert_eq!(
            failed.status,
            JobStatus::Failed,
            "{kind}: failed jobs are kept"
        );
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}

/// Reports each outcome the storage accepted (see [`Executor::recorded`]).
struct Recording {
    inner: Arc<FnExecutor>,
    recorded: Mutex<Vec<(JobId, FinishOutcome)>>,
}

impl Executor for Recording {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        self.inner.execute(job, done);
    }
    fn recorded(&self, job_id: JobId, outcome: &FinishOutcome) {
        self.recorded
            .lock()
            .unwrap()
            .push((job_id, outcome.clone()));
    }
}

/// The executor hears of every outcome once the storage accepted it, in order: success,
/// each retry, the final failure, and a permanent failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_hears_of_each_recorded_outcome() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let inner = FnExecutor::new(|j: ClaimedJob| async move {
            match j.name.as_str() {
                "ok" => Outcome::Success,
                "flaky" => fail("boom"),
                _ => Outcome::Failure {
                    error: ErrorInfo::engine("Bad", "cannot decode"),
                    permanent: true,
                },
            }
        });
        let exec = Arc::new(Recording {
            inner,
            recorded: Mutex::new(Vec::new()),
        });
        let pool = WorkerPool::start(
            queue.clone(),
            pool_config(2, &["ok", "flaky", "bad"]),
            exec.clone(),
        )
        .unwrap();
        let flaky = NewJob {
            retry: fast_retry(1),
            ..job("flaky")
        };
        let ids = queue
            .push_many(vec![job("ok"), flaky, job("bad")])
            .await
            .unwrap();
        wait_final(&storage, &ids, Duration::from_secs(10)).await;
        pool.stop(Duration::from_secs(1)).await.unwrap();
        let recorded = exec.recorded.lock().unwrap().clone();
        let of = |id: JobId| -> Vec<&'static str> {
            recorded
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, o)| match o {
                    FinishOutcome::Completed => "completed",
                    FinishOutcome::Retry { .. } => "retry",
                    FinishOutcome::Failed { .. } => "failed",
                    FinishOutcome::Snoozed { .. } => "snoozed",
                })
                .collect()
        };
        assert_eq!(of(ids[0]), ["completed"], "{kind}");
        assert_eq!(of(ids[1]), ["retry", "failed"], "{kind}");
        assert_eq!(of(ids[2]), ["failed"], "{kind}");
        assert_eq!(recorded.len(), 4, "{kind}");
    }
}

async fn statuses(storage: &Arc<dyn Storage>, ids: &[JobId]) -> Vec<JobStatus> {
    let mut out = Vec::new();
    for id in ids {
        out.push(storage.job_get(*id).await.unwrap().unwrap().status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jobs_are_prefetched_and_released_unrun_at_stop() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let exec = FnExecutor::new(move |j: ClaimedJob| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                if j.name == "hold" {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Outcome::Success
            }
        });
        let pool =
            WorkerPool::start(queue.clone(), pool_config(1, &["quick", "hold"]), exec).unwrap();
        // Quick jobs first, so the pool knows its jobs are short.
        let warm = queue
            .push_many((0..20).map(|_| job("quick")).collect())
            .await
            .unwrap();
        wait_final(&storage, &warm, Duration::from_secs(10)).await;
        let hold = queue.push_many(vec![job("hold")]).await.unwrap();
        wait_in_flight(&pool, 1).await;
        let mut ids = queue
            .push_many((0..30).map(|_| job("quick")).collect())
            .await
            .unwrap();
        ids.extend(hold);
        // The one worker runs `hold`; the quick jobs behind it are claimed (leased) too.
        let t0 = Instant::now();
        while statuses(&storage, &ids)
            .await
            .iter()
            .filter(|s| **s == JobStatus::Running)
            .count()
            < 2
        {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{kind}: nothing prefetched"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            pool.in_flight(),
            1,
            "{kind}: prefetched jobs are not executing"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 21, "{kind}");
        pool.stop(Duration::from_millis(50)).await.unwrap();
        assert_eq!(
            ran.load(Ordering::SeqCst),
            21,
            "{kind}: no job started after the stop"
        );
        for id in &ids {
            let rec = storage.job_get(*id).await.unwrap().unwrap();
            assert_eq!(rec.status, JobStatus::Available, "{kind}: released at stop");
            assert_eq!(
                rec.attempt, 0,
                "{kind}: a release does not count the attempt"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_job_cancelled_while_it_waits_never_runs() {
    for (kind, storage, _dir) in storages() {
        let queue = Arc::new(Queue::new(storage.clone()));
        let release = Arc::new(tokio::sync::Notify::new());
        let ran_quick = Arc::new(AtomicUsize::new(0));
        let (gate, r) = (release.clone(), ran_quick.clone());
        let exec = FnExecutor::new(move |j: ClaimedJob| {
            let gate = gate.clone();
            if j.name == "quick" {
                r.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                if j.name == "hold" {
                    gate.notified().await;
                }
                Outcome::Success
            }
        });
        let pool = WorkerPool::start(
            queue.clone(),
            pool_config(1, &["quick", "hold"]),
            exec.clone(),
        )
        .unwrap();
        let warm = queue
            .push_many((0..20).map(|_| job("quick")).collect())
            .await
            .unwrap();
        wait_final(&storage, &warm, Duration::from_secs(10)).await;
        let hold = queue.push_many(vec![job("hold")]).await.unwrap();
        wait_in_flight(&pool, 1).await;
        let waiting = queue.push_many(vec![job("quick")]).await.unwrap();
        wait_status(
            &storage,
            waiting[0],
            JobStatus::Running,
            Duration::from_secs(5),
        )
        .await;
        let result = queue.cancel_many(by_ids(&waiting)).await.unwrap();
        assert_eq!(
            result.requested, 1,
            "{kind}: claimed (prefetched), so a request"
        );
        // The heartbeat task hears of the cancel before the worker frees up.
        wait_cancel_heard(&exec.cancelled, waiting[0]).await;
        release.notify_one();
        wait_status(
            &storage,
            waiting[0],
            JobStatus::Cancelled,
            Duration::from_secs(5),
        )
        .await;
        wait_status(
            &storage,
            hold[0],
            JobStatus::Completed,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            ran_quick.load(Ordering::SeqCst),
            20,
            "{kind}: the cancelled job never ran"
        );
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}

/// Held closed until [`open_gate`]: jobs named "hold" wait at it.
type Gate = Arc<(Mutex<bool>, std::sync::Condvar)>;

/// Runs jobs on plain threads, as the Python bindings do: a thread that finishes a job
/// takes the queue's next prefetched job itself ([`Completion::send_and_next`]), except
/// jobs named "elsewhere", which it leaves to [`Executor::execute`].
struct ThreadExecutor {
    tx: Mutex<Option<std::sync::mpsc::Sender<(ClaimedJob, Completion)>>>,
    /// Jobs run, in the order they started, with whether they came from `send_and_next`.
    started: Arc<Mutex<Vec<(String, bool)>>>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
    abandoned: Arc<Mutex<Vec<JobId>>>,
    cancelled: Arc<Mutex<Vec<JobId>>>,
}

impl ThreadExecutor {
    /// `threads` threads; a job named "hold" waits for `gate`, "slow" sleeps 2 s.
    fn new(threads: usize, gate: Gate) -> Arc<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(ClaimedJob, Completion)>();
        let rx = Arc::new(Mutex::new(rx));
        let exec = Arc::new(ThreadExecutor {
            tx: Mutex::new(Some(tx)),
            started: Arc::default(),
            running: Arc::default(),
            most_running: Arc::default(),
            abandoned: Arc::default(),
            cancelled: Arc::default(),
        });
        for _ in 0..threads {
            let rx = rx.clone();
            let (started, running, most) = (
                exec.started.clone(),
                exec.running.clone(),
                exec.most_running.clone(),
            );
            let gate = gate.clone();
            std::thread::spawn(move || {
                let mut next: Option<(ClaimedJob, Completion, bool)> = None;
                loop {
                    let (job, done, chained) = match next.take() {
                        Some(n) => n,
                        None => match rx.lock().unwrap().recv() {
                            Ok((j, d)) => (j, d, false),
                            Err(_) => return,
                        },
                    };
                    started.lock().unwrap().push((job.name.clone(), chained));
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    match job.name.as_str() {
                        "hold" => {
                            let (open, cv) = &*gate;
                            let mut open = open.lock().unwrap();
                            while !*open {
                                open = cv.wait(open).unwrap();
                            }
                        }
                        "slow" => std::thread::sleep(Duration::from_secs(2)),
                        _ => {}
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    next = done
                        .send_and_next(Outcome::Success, &|j| j.name != "elsewhere")
                        .map(|(j, d)| (j, d, true));
                }
            });
        }
        exec
    }

    fn close(&self) {
        self.tx.lock().unwrap().take();
    }
}

impl Executor for ThreadExecutor {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send((job, done));
        }
    }
    fn abandon(&self, job_id: JobId) {
        self.abandoned.lock().unwrap().push(job_id);
    }
    fn cancel(&self, job_id: JobId) {
        self.cancelled.lock().unwrap().push(job_id);
    }
}

fn open_gate(gate: &(Mutex<bool>, std::sync::Condvar)) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

/// A pool of `workers` on a [`ThreadExecutor`] of `threads` held by a closed gate (jobs
/// named "hold" wait at it), after `warm` "quick" jobs ran so that it prefetches.
async fn warmed_gated_pool(
    storage: &Arc<dyn Storage>,
    threads: usize,
    workers: usize,
    names: &[&str],
    warm: usize,
) -> (Arc<Queue>, Gate, Arc<ThreadExecutor>, WorkerPool) {
    let queue = Arc::new(Queue::new(storage.clone()));
    let gate: Gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let exec = ThreadExecutor::new(threads, gate.clone());
    let pool = WorkerPool::start(queue.clone(), pool_config(workers, names), exec.clone()).unwrap();
    let warmed = queue
        .push_many((0..warm).map(|_| job("quick")).collect())
        .await
        .unwrap();
    wait_final(storage, &warmed, Duration::from_secs(10)).await;
    (queue, gate, exec, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_the_next_prefetched_job_itself_within_the_limit() {
    for (kind, storage, _dir) in storages() {
        // Short jobs, so the pool prefetches; "elsewhere" jobs are mixed in.
        let (queue, gate, exec, pool) =
            warmed_gated_pool(&storage, 4, 2, &["quick", "hold", "elsewhere"], 50).await;
        // Both workers held: everything queued behind them is prefetched, then runs on the
        // threads that were held, one job after another.
        let hold = queue
            .push_many(vec![job("hold"), job("hold")])
            .await
            .unwrap();
        wait_in_flight(&pool, 2).await;
        let jobs = (0..200)
            .map(|i| job(if i % 10 == 9 { "elsewhere" } else { "quick" }))
            .collect();
        let ids = queue.push_many(jobs).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        open_gate(&gate);
        wait_final(&storage, &ids, Duration::from_secs(10)).await;
        wait_final(&storage, &hold, Duration::from_secs(10)).await;
        for s in statuses(&storage, &ids).await {
            assert_eq!(s, JobStatus::Completed, "{kind}");
        }
        let started = exec.started.lock().unwrap().clone();
        assert_eq!(started.len(), 50 + 2 + 200, "{kind}: each job ran once");
        assert!(
            started.iter().filter(|(_, chained)| *chained).count() > 50,
            "{kind}: workers took prefetched jobs themselves"
        );
        assert!(
            started
                .iter()
                .all(|(name, chained)| !chained || name != "elsewhere"),
            "{kind}: a job the worker refuses goes through execute"
        );
        assert!(
            exec.most_running.load(Ordering::SeqCst) <= 2,
            "{kind}: never more jobs at once than workers"
        );
        pool.stop(Duration::from_secs(1)).await.unwrap();
        exec.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_skips_a_cancelled_prefetched_job_and_times_out_the_next() {
    for (kind, storage, _dir) in storages() {
        let (queue, gate, exec, pool) =
            warmed_gated_pool(&storage, 1, 1, &["quick", "hold", "slow"], 20).await;
        let hold = queue.push_many(vec![job("hold")]).await.unwrap();
        wait_in_flight(&pool, 1).await;
        let mut slow = job("slow");
        slow.timeout_ms = Some(200);
        slow.retry = fast_retry(0);
        let ids = queue.push_many(vec![job("quick"), slow]).await.unwrap();
        for id in &ids {
            wait_status(&storage, *id, JobStatus::Running, Duration::from_secs(5)).await;
        }
        let result = queue.cancel_many(by_ids(&ids[..1])).await.unwrap();
        assert_eq!(result.requested, 1, "{kind}: prefetched, so a request");
        // The heartbeat task hears of the cancel before the worker frees up.
        wait_cancel_heard(&exec.cancelled, ids[0]).await;
        open_gate(&gate);
        wait_final(&storage, &ids, Duration::from_secs(5)).await;
        let cancelled = storage.job_get(ids[0]).await.unwrap().unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled, "{kind}");
        let timed_out = storage.job_get(ids[1]).await.unwrap().unwrap();
        assert_eq!(timed_out.status, JobStatus::Failed, "{kind}");
        assert_eq!(timed_out.last_error.unwrap().kind, "Timeout", "{kind}");
        assert_eq!(*exec.abandoned.lock().unwrap(), vec![ids[1]], "{kind}");
        let started = exec.started.lock().unwrap().clone();
        assert_eq!(
            started[20..].to_vec(),
            vec![("hold".to_owned(), false), ("slow".to_owned(), true)],
            "{kind}: the cancelled job never ran; the slow one ran on the held thread"
        );
        wait_final(&storage, &hold, Duration::from_secs(5)).await;
        pool.stop(Duration::from_secs(3)).await.unwrap();
        exec.close();
    }
}

/// On SQLite, where one write can record outcomes and claim, a pool draining short jobs
/// claims together with recording outcomes; every job still runs exactly once and ends
/// completed, and the stop leaves nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pool_claims_with_its_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStorage::open(dir.path().join("jobs.db"), SqliteOptions::default()).unwrap();
    let counting = Arc::new(Counting::new(Arc::new(sqlite)));
    let storage: Arc<dyn Storage> = counting.clone();
    assert!(storage.finish_claim_combined());
    let queue = Arc::new(Queue::new(storage.clone()));
    let runs: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let r = runs.clone();
    let exec = FnExecutor::new(move |j: ClaimedJob| {
        *r.lock().unwrap().entry(j.id).or_default() += 1;
        async { Outcome::Success }
    });
    let pool = WorkerPool::start(queue.clone(), pool_config(4, &["quick"]), exec).unwrap();
    let ids = queue
        .push_many((0..3000).map(|_| job("quick")).collect())
        .await
        .unwrap();
    wait_final(&storage, &ids, Duration::from_secs(60)).await;
    pool.stop(Duration::from_secs(5)).await.unwrap();
    {
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), ids.len());
        assert!(runs.values().all(|n| *n == 1), "a job ran twice");
    }
    assert_eq!(
        statuses(&storage, &ids)
            .await
            .iter()
            .filter(|s| **s == JobStatus::Completed)
            .count(),
        ids.len()
    );
    assert!(
        counting.finish_claims.load(Ordering::SeqCst) > 0,
        "no claim was made with outcomes"
    );
}
