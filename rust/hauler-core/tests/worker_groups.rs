//! Workers and job groups: a member held back by its group's concurrency limit does not
//! make the dispatcher spin, and starts as soon as a running member ends.
//!
//! Runs on tokio's paused clock: waits are virtual, and claims are counted, never timed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Counting;
use hauler_core::config::{PoolConfig, QueueConfig};
use hauler_core::group::NewGroup;
use hauler_core::model::{ClaimedJob, GroupId, JobId, JobStatus};
use hauler_core::queue::Queue;
use hauler_core::storage::conformance::new_job;
use hauler_core::storage::{MemoryStorage, Storage};
use hauler_core::worker::{Completion, Executor, Outcome, WorkerPool};
use tokio::sync::Semaphore;

/// Runs each job until the test hands it a permit; records how many run at once.
struct Gated {
    permits: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most: Arc<Mutex<usize>>,
}

impl Executor for Gated {
    fn execute(&self, _job: ClaimedJob, done: Completion) {
        let (permits, running, most) = (
            self.permits.clone(),
            self.running.clone(),
            self.most.clone(),
        );
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut m = most.lock().unwrap();
            *m = (*m).max(now);
        }
        tokio::spawn(async move {
            permits.acquire().await.expect("semaphore closed").forget();
            running.fetch_sub(1, Ordering::SeqCst);
            done.send(Outcome::Success);
        });
    }
    fn abandon(&self, _job_id: JobId) {}
}

#[tokio::test(start_paused = true)]
async fn a_held_back_member_neither_spins_the_dispatcher_nor_waits_for_a_poll() {
    let storage = Arc::new(Counting::new(Arc::new(MemoryStorage::new())));
    let queue = Arc::new(Queue::new(storage.clone() as Arc<dyn Storage>));
    let permits = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(Mutex::new(0));
    let exec = Arc::new(Gated {
        permits: permits.clone(),
        started: started.clone(),
        running: Arc::new(AtomicUsize::new(0)),
        most: most.clone(),
    });
    let config = PoolConfig::new(
        "w",
        vec![QueueConfig {
            name: "default".into(),
            concurrency: 4,
            names: vec!["a".into()],
        }],
    );
    let pool = WorkerPool::start(queue.clone(), config, exec).unwrap();
    let group = NewGroup {
        id: GroupId::new(),
        name: "g".into(),
        concurrency: Some(1),
        on_complete: None,
    };
    let g = group.id;
    let ids = queue
        .push_group(group, (0..3).map(|_| new_job("a", "default")).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "one member at a time");

    // A minute with two members due but held back: the dispatcher backs off to one claim
    // a second at most (spinning at 1 ms would be 60 000 claims).
    let before = storage.claims.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = storage.claims.load(Ordering::SeqCst) - before;
    assert!(during <= 80, "{during} claims in a minute while held back");
    assert_eq!(started.load(Ordering::SeqCst), 1);

    // A member ending here lets the next one start at once, not at the next backoff.
    for n in 2..=3 {
        permits.add_permits(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            n,
            "member {n} starts promptly"
        );
    }
    permits.add_permits(1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(*most.lock().unwrap(), 1, "never two members at once");
    for id in ids {
        let r = storage.job_get(id).await.unwrap().unwrap();
        assert_eq!(r.status, JobStatus::Completed);
    }
    assert!(storage
        .group_get(g)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .is_some());
    pool.stop(Duration::from_secs(1)).await.unwrap();
}

/// The "jobs ended" signal is the queue's, not a pool's: a member held back in one pool
/// starts as soon as a member running in another pool of the process ends, not at that
/// pool's next backoff.
#[tokio::test(start_paused = true)]
async fn a_member_ending_in_one_pool_wakes_a_held_member_in_another() {
    let storage = Arc::new(Counting::new(Arc::new(MemoryStorage::new())));
    let queue = Arc::new(Queue::new(storage.clone() as Arc<dyn Storage>));
    let permits = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(Mutex::new(0));
    let exec = Arc::new(Gated {
        permits: permits.clone(),
        started: started.clone(),
        running: Arc::new(AtomicUsize::new(0)),
        most: most.clone(),
    });
    let pool_for = |name: &str| {
        PoolConfig::new(
            format!("w-{name}"),
            vec![QueueConfig {
                name: "default".into(),
                concurrency: 4,
                names: vec![name.into()],
            }],
        )
    };
    let pool_a = WorkerPool::start(queue.clone(), pool_for("a"), exec.clone()).unwrap();
    let pool_b = WorkerPool::start(queue.clone(), pool_for("b"), exec).unwrap();
    let group = NewGroup {
        id: GroupId::new(),
        name: "g".into(),
        concurrency: Some(1),
        on_complete: None,
    };
    let members = vec![new_job("a", "default"), new_job("b", "default")];
    let ids = queue.push_group(group, members).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let running = storage.job_get(ids[0]).await.unwrap().unwrap().status;
    assert_eq!(running, JobStatus::Running, "pool a runs the first member");
    // Long enough for pool b's backoff to reach its longest wait (1 s on memory).
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1);

    permits.add_permits(1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "pool b starts the held member once pool a's member ended"
    );
    permits.add_permits(1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(*most.lock().unwrap(), 1, "never two members at once");
    pool_a.stop(Duration::from_secs(1)).await.unwrap();
    pool_b.stop(Duration::from_secs(1)).await.unwrap();
}
