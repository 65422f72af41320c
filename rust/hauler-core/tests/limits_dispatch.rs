//! A worker pool whose due jobs are held back by a concurrency limit: it backs off instead
//! of claiming in a busy loop, and starts a held job once its slot frees.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Counting;
use hauler_core::config::{PoolConfig, QueueConfig};
use hauler_core::model::{ClaimedJob, ConcurrencyLimit, JobId, JobLimits, JobStatus, NewJob};
use hauler_core::queue::Queue;
use hauler_core::storage::conformance::new_job;
use hauler_core::storage::{MemoryStorage, SqliteOptions, SqliteStorage, Storage};
use hauler_core::worker::{Completion, Executor, Outcome, WorkerPool};
use tokio::sync::watch;

type Handler =
    Arc<dyn Fn(ClaimedJob) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// Runs each job as a tokio task calling `handler`.
struct FnExecutor(Handler);

impl Executor for FnExecutor {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        let fut = (self.0)(job);
        tokio::spawn(async move { done.send(fut.await) });
    }
    fn abandon(&self, _job_id: JobId) {}
}

fn singleton(name: &str) -> NewJob {
    NewJob {
        limits: JobLimits {
            concurrency: Some(ConcurrencyLimit {
                key: name.to_owned(),
                limit: 1,
            }),
            ..JobLimits::default()
        },
        ..new_job(name, "default")
    }
}

async fn status(s: &dyn Storage, id: JobId) -> JobStatus {
    s.job_get(id).await.unwrap().unwrap().status
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// While the only due job waits for its key's slot, the dispatcher claims a handful of
/// times (its backoff doubles up to the poll interval), not once a millisecond; once the
/// running job finishes, the held one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_a_limit_is_not_claimed_in_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStorage::open(dir.path().join("jobs.db"), SqliteOptions::default()).unwrap();
    let storages: [(&str, Arc<dyn Storage>); 2] = [
        ("memory", Arc::new(MemoryStorage::new())),
        ("sqlite", Arc::new(sqlite)),
    ];
    for (kind, inner) in storages {
        let counting = Arc::new(Counting::new(inner));
        let storage: Arc<dyn Storage> = counting.clone();
        let queue = Arc::new(Queue::new(storage.clone()));
        let (release, gate) = watch::channel(false);
        let exec = Arc::new(FnExecutor(Arc::new(move |_job| {
            let mut gate = gate.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                Outcome::Success
            })
        })));
        let mut config = PoolConfig::new(
            "limits-worker",
            vec![QueueConfig {
                name: "default".into(),
                concurrency: 4,
                names: vec!["one".into()],
            }],
        );
        config.reclaim_interval = Duration::from_millis(50);
        let pool = WorkerPool::start(queue.clone(), config, exec).unwrap();
        let ids = queue
            .push_many(vec![singleton("one"), singleton("one")])
            .await
            .unwrap();
        wait_until(&format!("{kind}: the first job starts"), || async {
            status(&*storage, ids[0]).await == JobStatus::Running
        })
        .await;

        let before = counting.claims.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = counting.claims.load(Ordering::SeqCst) - before;
        // A busy loop would claim hundreds of times in 500 ms; the backoff (5 ms doubling
        // to at most 1 s, or SQLite's 100 ms poll interval) claims about ten times.
        assert!(
            during <= 25,
            "{kind}: {during} claims while the job was held"
        );
        assert_eq!(
            status(&*storage, ids[1]).await,
            JobStatus::Available,
            "{kind}"
        );

        release.send(true).unwrap();
        wait_until(&format!("{kind}: both jobs complete"), || async {
            status(&*storage, ids[1]).await == JobStatus::Completed
        })
        .await;
        let first = storage.job_get(ids[0]).await.unwrap().unwrap();
        let second = storage.job_get(ids[1]).await.unwrap().unwrap();
        assert!(
            second.history[0].started_at >= first.history[0].finished_at,
            "{kind}: the held job started before the first one finished"
        );
        assert_eq!(
            second.history[0].attempt, 1,
            "{kind}: waiting burns no attempt"
        );
        pool.stop(Duration::from_secs(1)).await.unwrap();
    }
}
