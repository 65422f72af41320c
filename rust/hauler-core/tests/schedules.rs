//! Schedule entries run by worker pools: one job per tick however many pools take part,
//! and catch-up of ticks missed while no pool ran.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hauler_core::config::{PoolConfig, QueueConfig};
use hauler_core::model::{ClaimedJob, JobId, JobRecord, Timestamp};
use hauler_core::queue::Queue;
use hauler_core::schedule::CatchUp;
use hauler_core::storage::conformance::{new_schedule, NAME, QUEUE};
use hauler_core::storage::{
    JobListParams, MemoryStorage, ScheduleUpsertParams, SqliteOptions, SqliteStorage, Storage,
};
use hauler_core::worker::{Completion, Executor, Outcome, WorkerPool};

struct Succeed;

impl Executor for Succeed {
    fn execute(&self, _job: ClaimedJob, done: Completion) {
        done.send(Outcome::Success);
    }
    fn abandon(&self, _job_id: JobId) {}
}

fn config(id: &str) -> PoolConfig {
    let mut c = PoolConfig::new(
        id,
        vec![QueueConfig {
            name: QUEUE.into(),
            concurrency: 2,
            names: vec![NAME.into()],
        }],
    );
    c.poll_interval = Some(Duration::from_millis(200));
    c
}

async fn jobs(s: &dyn Storage) -> Vec<JobRecord> {
    s.job_list(JobListParams {
        limit: 1000,
        ..JobListParams::default()
    })
    .await
    .unwrap()
}

/// Two pairs of storage handles on one store: memory (one object) and SQLite (two
/// connections to one file, as two processes would have).
type Pair = (&'static str, Arc<dyn Storage>, Arc<dyn Storage>);

fn stores(dir: &tempfile::TempDir) -> Vec<Pair> {
    let mem: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let path = dir.path().join("cron.db");
    let open = || -> Arc<dyn Storage> {
        Arc::new(SqliteStorage::open(&path, SqliteOptions::default()).unwrap())
    };
    vec![("memory", mem.clone(), mem), ("sqlite", open(), open())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_store_one_job_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, a, b) in stores(&dir) {
        let (qa, qb) = (Arc::new(Queue::new(a.clone())), Arc::new(Queue::new(b)));
        // Both register the same entry, as two processes starting the same code would.
        qa.schedule_add(new_schedule("tick", "{}")).await.unwrap();
        qb.schedule_add(new_schedule("tick", "{}")).await.unwrap();
        let pa = WorkerPool::start(qa.clone(), config("a"), Arc::new(Succeed)).unwrap();
        let pb = WorkerPool::start(qb.clone(), config("b"), Arc::new(Succeed)).unwrap();
        tokio::time::sleep(Duration::from_millis(3200)).await;
        pa.stop(Duration::from_secs(5)).await.unwrap();
        pb.stop(Duration::from_secs(5)).await.unwrap();
        let all = jobs(&*a).await;
        let mut per_second: HashMap<i64, usize> = HashMap::new();
        for j in &all {
            *per_second
                .entry(j.created_at.as_micros() / 1_000_000)
                .or_default() += 1;
        }
        assert!(
            (3..=4).contains(&all.len()),
            "{kind}: {} jobs in 3.2 s",
            all.len()
        );
        assert!(
            per_second.values().all(|&n| n == 1),
            "{kind}: {per_second:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_missed_while_no_pool_ran_are_caught_up_once_or_skipped() {
    for catch_up in [CatchUp::One, CatchUp::None] {
        // Start just after a whole second, so the entry's next on-time tick is ~1 s away and
        // cannot be mistaken for the catch-up job (it was, when `now` fell at x.975).
        let into_second = Timestamp::now().as_micros().rem_euclid(1_000_000) as u64;
        tokio::time::sleep(Duration::from_micros(1_000_000 - into_second + 10_000)).await;
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let now = Timestamp::now();
        let mut entry = new_schedule("missed", "{}");
        entry.catch_up = catch_up;
        // Stored an hour ago by a pool that then went away: 3600 ticks are due.
        storage
            .schedule_upsert(ScheduleUpsertParams {
                schedule: entry,
                next_run_at: now.minus(Duration::from_secs(3600)),
                now: now.minus(Duration::from_secs(3601)),
            })
            .await
            .unwrap();
        let queue = Arc::new(Queue::new(storage.clone()));
        let mut c = config("late");
        c.poll_interval = None;
        let pool = WorkerPool::start(queue, c, Arc::new(Succeed)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        pool.stop(Duration::from_secs(5)).await.unwrap();
        let stored = jobs(&*storage).await;
        // The tick on time after start may add one (the entry ticks every second).
        let caught_up = stored
            .iter()
            .filter(|j| j.created_at.as_micros() < now.as_micros() + 50_000)
            .count();
        let want = usize::from(catch_up == CatchUp::One);
        assert_eq!(caught_up, want, "{catch_up:?}: {stored:?}");
        assert!(stored.len() <= want + 1, "{catch_up:?}: {}", stored.len());
        let next = storage.schedule_list().await.unwrap()[0].next_run_at;
        assert!(
            next > Timestamp::now().minus(Duration::from_secs(2)),
            "{catch_up:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_elsewhere_stops_ticking() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let queue = Arc::new(Queue::new(storage.clone()));
    queue
        .schedule_add(new_schedule("gone", "{}"))
        .await
        .unwrap();
    let pool = WorkerPool::start(queue.clone(), config("p"), Arc::new(Succeed)).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(queue.schedule_delete("gone").await.unwrap());
    let before = jobs(&*storage).await.len();
    assert!(before >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(jobs(&*storage).await.len(), before);
    pool.stop(Duration::from_secs(5)).await.unwrap();
}
