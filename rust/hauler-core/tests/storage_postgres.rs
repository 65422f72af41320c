//! The PostgreSQL storage against a real server: the shared conformance suite (each case
//! in a schema of its own, all cases at once), plus what only a shared server can show:
//! separate pools racing for jobs, LISTEN/NOTIFY wake-ups, concurrent migrations, killed
//! connections, schema versions.
//!
//! The server: `HAULER_TEST_POSTGRES_DSN`, a superuser DSN to a throwaway cluster
//! (`eval "$(bash .ci/postgres.sh start)"` starts one). Without it every test fails,
//! unless `HAULER_TEST_POSTGRES=skip` is set.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hauler_core::config::{PoolConfig, QueueConfig};
use hauler_core::model::{
    AttemptOutcome, ClaimedJob, JobId, JobStatus, NewJob, QueueCount, Timestamp,
};
use hauler_core::queue::Queue;
use hauler_core::storage::conformance::{self, new_job, NAME, QUEUE, T0};
use hauler_core::storage::postgres::{self, SCHEMA_VERSION};
use hauler_core::storage::{
    FinishOutcome, JobClaimParams, JobDeleteParams, JobFilter, JobFinish, JobFinishManyParams,
    JobInsertManyParams, JobListParams, JobReclaimParams, JobReleaseParams, PostgresOptions,
    PostgresStorage, Storage,
};
use hauler_core::worker::{Completion, Executor, Outcome, WorkerPool};
use hauler_core::Error;
use tokio::sync::watch;

/// The test server's DSN, or `None` (with a note) when `HAULER_TEST_POSTGRES=skip`.
fn dsn() -> Option<String> {
    if let Ok(dsn) = std::env::var("HAULER_TEST_POSTGRES_DSN") {
        return Some(dsn);
    }
    if std::env::var("HAULER_TEST_POSTGRES").as_deref() == Ok("skip") {
        eprintln!("skipped: HAULER_TEST_POSTGRES=skip and no HAULER_TEST_POSTGRES_DSN");
        return None;
    }
    panic!(
        "HAULER_TEST_POSTGRES_DSN is not set. These tests need a throwaway PostgreSQL server \
         they may create and drop schemas in. Start one with\n\
         \n    eval \"$(bash .ci/postgres.sh start)\"\n\n\
         (stop it with `bash .ci/postgres.sh stop`), or set HAULER_TEST_POSTGRES=skip to skip \
         them."
    );
}

/// A schema name no other test (or earlier run) uses.
fn fresh_schema() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    )
}

fn opts(schema: &str) -> PostgresOptions {
    PostgresOptions {
        schema: schema.to_owned(),
        ..PostgresOptions::default()
    }
}

async fn open(dsn: &str, schema: &str) -> PostgresStorage {
    open_with(dsn, opts(schema)).await
}

async fn open_with(dsn: &str, opts: PostgresOptions) -> PostgresStorage {
    PostgresStorage::connect(dsn, opts)
        .await
        .expect("connect failed")
}

/// `dsn` with another query parameter.
fn with_param(dsn: &str, param: &str) -> String {
    let sep = if dsn.contains('?') { '&' } else { '?' };
    format!("{dsn}{sep}{param}")
}

/// A plain connection for checks and setup (not through the storage).
async fn admin(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn drop_schema(dsn: &str, schema: &str) {
    admin(dsn)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_micros(T0.as_micros() + secs * 1_000_000)
}

fn jobs(n: usize) -> Vec<NewJob> {
    (0..n).map(|_| new_job(NAME, QUEUE)).collect()
}

async fn insert(s: &dyn Storage, jobs: Vec<NewJob>, now: Timestamp) {
    s.job_insert_many(JobInsertManyParams { jobs, now })
        .await
        .expect("insert failed");
}

async fn claim(s: &dyn Storage, limit: u32, worker: &str, now: Timestamp) -> Vec<ClaimedJob> {
    s.job_claim(JobClaimParams {
        queues: vec![QUEUE.to_owned()],
        names: vec![NAME.to_owned()],
        limit,
        worker_id: worker.to_owned(),
        now,
    })
    .await
    .expect("claim failed")
}

async fn complete(s: &dyn Storage, claimed: &[ClaimedJob], now: Timestamp) {
    let finishes = claimed
        .iter()
        .map(|c| JobFinish {
            id: c.id,
            lease: c.lease,
            outcome: FinishOutcome::Completed,
        })
        .collect();
    let accepted = s
        .job_finish_many(JobFinishManyParams { finishes, now })
        .await
        .expect("finish failed");
    assert!(
        accepted.iter().all(|a| *a),
        "every finish should be accepted"
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

/// Every conformance case at once, each against a storage on a schema of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let Some(dsn) = dsn() else { return };
    let cases: Vec<_> = conformance::CASES
        .iter()
        .map(|&(name, case)| {
            let dsn = dsn.clone();
            let task = tokio::spawn(async move {
                let schema = fresh_schema();
                let storage = Arc::new(open(&dsn, &schema).await) as Arc<dyn Storage>;
                let result = tokio::spawn(case(Arc::clone(&storage))).await;
                let closed = storage.close().await;
                drop_schema(&dsn, &schema).await;
                (result, closed)
            });
            (name, task)
        })
        .collect();
    let mut failures = Vec::new();
    for (name, task) in cases {
        let why = match task.await {
            Ok((Ok(()), Ok(()))) => {
                eprintln!("conformance: {name} ... ok");
                continue;
            }
            Ok((Ok(()), Err(e))) => format!("close after the case failed: {e}"),
            Ok((Err(e), _)) | Err(e) if e.is_panic() => panic_text(e.into_panic()),
            Ok((Err(e), _)) | Err(e) => e.to_string(),
        };
        eprintln!("conformance: {name} ... FAILED: {why}");
        failures.push(format!("  {name}: {why}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} storage conformance cases failed:\n{}",
        failures.len(),
        conformance::CASES.len(),
        failures.join("\n")
    );
}

/// Two storages with pools of their own (as two hosts would have), three claimers on
/// each: over many rounds no job is handed out twice, and every job is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_claiming_never_share_a_job() {
    let Some(dsn) = dsn() else { return };
    const ROUNDS: usize = 20;
    const JOBS: usize = 300;
    let schema = fresh_schema();
    let pools = [
        Arc::new(open(&dsn, &schema).await),
        Arc::new(open(&dsn, &schema).await),
    ];
    for round in 0..ROUNDS {
        let all = jobs(JOBS);
        insert(&*pools[round % 2], all.clone(), at(0)).await;
        let claimers: Vec<_> = (0..6)
            .map(|i| {
                let s = Arc::clone(&pools[i % 2]);
                tokio::spawn(async move {
                    let worker = format!("p{}-{i}", i % 2);
                    let limit = 1 + u32::try_from(i).unwrap_or(0) * 4;
                    let mut mine = Vec::new();
                    loop {
                        let got = claim(&*s, limit, &worker, at(1)).await;
                        if got.is_empty() {
                            break mine;
                        }
                        complete(&*s, &got, at(2)).await;
                        mine.extend(got.into_iter().map(|c| c.id));
                    }
                })
            })
            .collect();
        let mut owner: HashMap<JobId, usize> = HashMap::new();
        for (i, t) in claimers.into_iter().enumerate() {
            for id in t.await.expect("claimer panicked") {
                if let Some(first) = owner.insert(id, i) {
                    panic!("round {round}: job {id} claimed by claimers {first} and {i}");
                }
            }
        }
        assert_eq!(
            owner.keys().copied().collect::<HashSet<_>>(),
            all.iter().map(|j| j.id).collect::<HashSet<_>>(),
            "round {round}: every job claimed"
        );
    }
    let counts = pools[0].job_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![QueueCount {
            queue: QUEUE.to_owned(),
            status: JobStatus::Completed,
            count: (ROUNDS * JOBS) as u64,
        }]
    );
    for s in &pools {
        s.close().await.unwrap();
    }
    drop_schema(&dsn, &schema).await;
}

/// Wait for the next change of `rx`, failing after `limit`.
async fn changed_within(rx: &mut watch::Receiver<u64>, limit: Duration, what: &str) {
    tokio::time::timeout(limit, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no wake-up within {limit:?}: {what}"))
        .expect("the wake-up signal closed");
}

/// A job stored through one pool wakes the subscriber of another at once; so do a
/// release and a reclaim that make jobs runnable. Nothing is polled here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_subscribers_of_other_pools() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let listener = open(&dsn, &schema).await;
    let producer = open(&dsn, &schema).await;
    let mut rx = listener.subscribe().expect("LISTEN is on by default");
    // The listener announces its (re)connection once it listens.
    changed_within(&mut rx, Duration::from_secs(5), "the listener connecting").await;

    let t = Instant::now();
    insert(&producer, jobs(3), at(0)).await;
    changed_within(
        &mut rx,
        Duration::from_secs(2),
        "jobs stored by another pool",
    )
    .await;
    eprintln!("insert -> wake-up: {:?}", t.elapsed());

    let c = claim(&producer, 3, "w1", at(0)).await;
    assert_eq!(c.len(), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    rx.borrow_and_update();
    assert!(!rx.has_changed().unwrap(), "a claim notifies nobody");

    let released = producer
        .job_release(JobReleaseParams {
            leases: vec![(c[0].id, c[0].lease)],
            now: at(1),
        })
        .await
        .unwrap();
    assert_eq!(released, 1);
    changed_within(&mut rx, Duration::from_secs(2), "a release").await;

    let reclaimed = producer
        .job_reclaim_expired(JobReclaimParams { now: at(3600) })
        .await
        .unwrap();
    assert_eq!(reclaimed, 2);
    changed_within(&mut rx, Duration::from_secs(2), "a reclaim").await;

    // A second subscriber shares the one listener.
    let mut rx2 = listener.subscribe().unwrap();
    rx2.borrow_and_update();
    insert(&producer, jobs(1), at(0)).await;
    changed_within(&mut rx2, Duration::from_secs(2), "second subscriber").await;

    listener.close().await.unwrap();
    assert!(listener.subscribe().is_none(), "no signal after close");
    producer.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

#[tokio::test]
async fn listen_can_be_turned_off() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let s = open_with(
        &dsn,
        PostgresOptions {
            listen: false,
            ..opts(&schema)
        },
    )
    .await;
    assert!(s.subscribe().is_none());
    assert_eq!(s.poll_interval(), Some(Duration::from_secs(1)));
    s.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// Runs every job by reporting success at once, and counts runs per job.
#[derive(Default)]
struct Counting {
    runs: std::sync::Mutex<HashMap<JobId, usize>>,
    done: tokio::sync::Notify,
}

impl Executor for Counting {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        *self.runs.lock().unwrap().entry(job.id).or_default() += 1;
        done.send(Outcome::Success);
        self.done.notify_waiters();
    }
}

impl Counting {
    fn total(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }
}

fn pool_config(worker: &str) -> PoolConfig {
    PoolConfig::new(
        worker,
        vec![QueueConfig {
            name: QUEUE.to_owned(),
            concurrency: 8,
            names: vec![NAME.to_owned()],
        }],
    )
}

/// A worker pool that would poll only once a minute picks up a job queued by another
/// process within a moment: the notification wakes its idle dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_woken_by_a_job_from_another_process() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let worker_storage = open_with(
        &dsn,
        PostgresOptions {
            poll_interval: Duration::from_secs(60),
            ..opts(&schema)
        },
    )
    .await;
    let mut connected = worker_storage.subscribe().unwrap();
    let queue = Arc::new(Queue::new(Arc::new(worker_storage)));
    let exec = Arc::new(Counting::default());
    let pool = WorkerPool::start(queue.clone(), pool_config("w1"), exec.clone()).unwrap();
    changed_within(&mut connected, Duration::from_secs(5), "the listener").await;
    // Let the dispatcher make its first (empty) claim and go to sleep for a minute.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let producer = open(&dsn, &schema).await;
    let t = Instant::now();
    let job = new_job(NAME, QUEUE);
    insert(&producer, vec![job.clone()], Timestamp::now()).await;
    while exec.total() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the job queued by another process was not run within 5 s (the poll interval \
             is 60 s): the notification did not wake the worker"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("queued by another process -> run: {:?}", t.elapsed());
    pool.stop(Duration::from_secs(5)).await.unwrap();
    let r = producer.job_get(job.id).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Completed);
    queue.storage().close().await.unwrap();
    producer.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// Three worker pools on three storages share one queue: every job runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_worker_pools_run_every_job_once() {
    let Some(dsn) = dsn() else { return };
    const JOBS: usize = 2_000;
    let schema = fresh_schema();
    let exec = Arc::new(Counting::default());
    let mut pools = Vec::new();
    let mut queues = Vec::new();
    for i in 0..3 {
        let storage = open_with(
            &dsn,
            PostgresOptions {
                poll_interval: Duration::from_millis(200),
                ..opts(&schema)
            },
        )
        .await;
        let queue = Arc::new(Queue::new(Arc::new(storage)));
        pools.push(
            WorkerPool::start(queue.clone(), pool_config(&format!("w{i}")), exec.clone()).unwrap(),
        );
        queues.push(queue);
    }
    let all = jobs(JOBS);
    for chunk in all.chunks(250) {
        queues[0].push_many(chunk.to_vec()).await.unwrap();
    }
    let t = Instant::now();
    while exec.total() < JOBS {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "only {} of {JOBS} ran",
            exec.total()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for pool in &pools {
        pool.stop(Duration::from_secs(5)).await.unwrap();
    }
    eprintln!("{JOBS} jobs over 3 pools: {:?}", t.elapsed());
    let runs = exec.runs.lock().unwrap().clone();
    assert!(runs.values().all(|&n| n == 1), "a job ran twice");
    let storage = queues[0].storage();
    let mut cursor = None;
    let mut seen = 0;
    loop {
        let page = storage
            .job_list(JobListParams {
                cursor,
                limit: 500,
                ..JobListParams::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.id);
        for r in &page {
            assert_eq!(r.status, JobStatus::Completed, "job {}", r.id);
            assert_eq!(r.history.len(), 1, "job {}: {:?}", r.id, r.history);
            assert_eq!(r.history[0].outcome, AttemptOutcome::Completed);
        }
        seen += page.len();
    }
    assert_eq!(seen, JOBS);
    for q in &queues {
        q.storage().close().await.unwrap();
    }
    drop_schema(&dsn, &schema).await;
}

/// Many processes starting at once on an empty schema: `migrate` calls and connects race,
/// all succeed, and each migration is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_apply_each_version_once() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let dsn = dsn.clone();
        let opts = opts(&schema);
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                postgres::migrate(&dsn, &opts).await.map(|_| ())
            } else {
                let s = PostgresStorage::connect(&dsn, opts).await?;
                s.close().await
            }
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("every concurrent migration succeeds");
    }
    let rows = admin(&dsn)
        .await
        .query(
            &format!("SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let want: Vec<i32> = (1..=i32::try_from(SCHEMA_VERSION).unwrap()).collect();
    assert_eq!(versions, want);
    assert_eq!(
        postgres::migrate(&dsn, &opts(&schema)).await.unwrap(),
        SCHEMA_VERSION,
        "migrating again is a no-op"
    );
    drop_schema(&dsn, &schema).await;
}

fn storage_error<T: std::fmt::Debug>(res: hauler_core::Result<T>) -> String {
    match res {
        Err(Error::Storage(msg)) => msg,
        other => panic!("expected Error::Storage, got {other:?}"),
    }
}

#[tokio::test]
async fn schema_versions_are_checked() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let strict = PostgresOptions {
        migrate: false,
        ..opts(&schema)
    };
    let msg = storage_error(PostgresStorage::connect(&dsn, strict.clone()).await);
    assert!(
        msg.contains("is at version 0") && msg.contains("migrate"),
        "{msg}"
    );

    assert_eq!(
        postgres::migrate(&dsn, &opts(&schema)).await.unwrap(),
        SCHEMA_VERSION
    );
    let s = PostgresStorage::connect(&dsn, strict.clone())
        .await
        .expect("an up-to-date schema opens without migrating");
    s.close().await.unwrap();

    admin(&dsn)
        .await
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".schema_migrations (version, description) \
             VALUES (999, 'from the future')"
        ))
        .await
        .unwrap();
    for res in [
        PostgresStorage::connect(&dsn, opts(&schema))
            .await
            .map(drop),
        PostgresStorage::connect(&dsn, strict).await.map(drop),
        postgres::migrate(&dsn, &opts(&schema)).await.map(drop),
    ] {
        let msg = storage_error(res);
        assert!(
            msg.contains(&format!(
                "is at version 999, newer than this hauler supports ({SCHEMA_VERSION}); \
                 upgrade hauler"
            )),
            "{msg}"
        );
    }
    drop_schema(&dsn, &schema).await;
}

#[tokio::test]
async fn bad_settings_and_unreachable_servers_are_errors() {
    let Some(dsn) = dsn() else { return };
    let bad = PostgresOptions {
        schema: "Robert'); DROP TABLE students;--".to_owned(),
        ..PostgresOptions::default()
    };
    match PostgresStorage::connect(&dsn, bad).await {
        Err(Error::Config(msg)) => assert!(msg.contains("plain identifier"), "{msg}"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
    match PostgresStorage::connect("postgresql://u:pw@[::1", PostgresOptions::default()).await {
        Err(Error::Config(msg)) => assert!(msg.contains("invalid PostgreSQL DSN"), "{msg}"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
    // Nothing listens on port 1.
    let t = Instant::now();
    let msg = storage_error(
        PostgresStorage::connect(
            "postgresql://hauler:secret-pw@127.0.0.1:1/db",
            PostgresOptions::default(),
        )
        .await,
    );
    assert!(msg.contains("cannot connect to PostgreSQL"), "{msg}");
    assert!(msg.contains("127.0.0.1:1"), "names the server: {msg}");
    assert!(!msg.contains("secret-pw"), "never the password: {msg}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let msg = storage_error(
        postgres::migrate("postgresql://u@127.0.0.1:1/db", &PostgresOptions::default()).await,
    );
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
}

#[tokio::test]
async fn duplicate_id_is_refused_and_nothing_is_stored() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let s = open(&dsn, &schema).await;
    let first = new_job(NAME, QUEUE);
    insert(&s, vec![first.clone()], at(0)).await;
    let fresh = new_job(NAME, QUEUE);
    let msg = storage_error(
        s.job_insert_many(JobInsertManyParams {
            jobs: vec![fresh.clone(), first.clone()],
            now: at(1),
        })
        .await,
    );
    assert!(msg.contains("already exists"), "{msg}");
    assert!(msg.contains(&first.id.to_string()), "{msg}");
    assert!(s.job_get(fresh.id).await.unwrap().is_none());
    s.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// A row that does not decode fails its own job right after the claim; the claim returns
/// the other jobs, and the damaged job is never claimed again.
#[tokio::test]
async fn corrupt_rows_fail_alone_in_the_claim() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let s = open(&dsn, &schema).await;
    let batch = jobs(6);
    let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
    insert(&s, batch, at(0)).await;
    let admin = admin(&dsn).await;
    let damage = [
        (ids[1], "version = -1", "version -1 is out of range"),
        (ids[2], "version = 1099511627776", "out of range"),
        (ids[3], "retry = 'garbage'", "retry: "),
        (
            ids[4],
            "heartbeat_ms = -5",
            "heartbeat_ms -5 is out of range",
        ),
    ];
    for (id, assignment, _) in damage {
        // Test-only SQL built from the constants above.
        let sql = format!("UPDATE \"{schema}\".jobs SET {assignment} WHERE id = $1");
        assert_eq!(admin.execute(&sql, &[&id.0]).await.unwrap(), 1);
    }

    let claimed = claim(&s, 10, "w", at(1)).await;
    let got: HashSet<JobId> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(got, HashSet::from([ids[0], ids[5]]));
    complete(&s, &claimed, at(2)).await;
    // Long past every lease: nothing to reclaim, nothing left to claim.
    let later = at(3600);
    s.job_reclaim_expired(JobReclaimParams { now: later })
        .await
        .unwrap();
    assert!(claim(&s, 10, "w", later).await.is_empty());

    // Read back raw (job_get would report the damage, not the stored error).
    let sql = format!(
        "SELECT status, attempt, last_error, \
             (SELECT array_agg(outcome) FROM \"{schema}\".attempts a WHERE a.job_id = j.id) \
         FROM \"{schema}\".jobs j WHERE id = $1"
    );
    for (id, _, reason) in damage {
        let row = admin.query_one(&sql, &[&id.0]).await.unwrap();
        let (status, attempt): (String, i32) = (row.get(0), row.get(1));
        assert_eq!((status.as_str(), attempt), ("failed", 1));
        let error: serde_json::Value = serde_json::from_str(row.get(2)).unwrap();
        assert_eq!(error["kind"], "CorruptJob");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(&id.to_string()), "{message}");
        assert!(message.contains(reason), "{message}");
        assert_eq!(row.get::<_, Vec<String>>(3), vec!["failed"]);
    }
    s.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// A row whose columns do not decode is still listed and found by id: the record keeps
/// what decodes, and `last_error` (kind `CorruptJob`) names the job and every damaged
/// column; an admin can delete it. The other rows are unaffected.
#[tokio::test]
async fn damaged_rows_are_listed_with_what_is_wrong() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let s = open(&dsn, &schema).await;
    let batch = jobs(3);
    let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
    insert(&s, batch, at(0)).await;
    let admin = admin(&dsn).await;
    // Test-only SQL built from constants.
    let sql = format!(
        "UPDATE \"{schema}\".jobs SET retry = 'garbage', version = -1, last_error = '{{' \
         WHERE id = $1"
    );
    assert_eq!(admin.execute(&sql, &[&ids[1].0]).await.unwrap(), 1);

    let listed = s
        .job_list(JobListParams {
            filter: JobFilter::default(),
            cursor: None,
            limit: 10,
        })
        .await
        .expect("a damaged row must not fail the listing");
    let mut got: Vec<JobId> = listed.iter().map(|r| r.id).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    for r in &listed {
        if r.id == ids[1] {
            let error = r.last_error.as_ref().expect("the damage is reported");
            assert_eq!(error.kind, "CorruptJob");
            for part in [&ids[1].to_string(), "retry: ", "version -1", "last_error: "] {
                assert!(error.message.contains(part), "{part}: {}", error.message);
            }
            assert_eq!((r.status, r.name.as_str()), (JobStatus::Available, NAME));
        } else {
            assert!(r.last_error.is_none(), "{r:?}");
        }
    }
    let one = s.job_get(ids[1]).await.unwrap().expect("found by id");
    assert_eq!(
        one.last_error,
        listed.iter().find(|r| r.id == ids[1]).unwrap().last_error
    );
    let deleted = s
        .job_delete(JobDeleteParams {
            filter: JobFilter {
                ids: Some(vec![ids[1]]),
                ..JobFilter::default()
            },
        })
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    s.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// Terminate every backend of `application_name` and wait until the server has let them
/// all go. Returns how many there were.
async fn kill_connections(admin: &tokio_postgres::Client, application_name: &str) -> usize {
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let t = Instant::now();
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "backends linger");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pids.len()
}

/// The server kills every connection of a storage (pooled and listening): calls made
/// meanwhile fail with `Error::Storage` (never a panic), the pool reconnects, and the
/// listener comes back and wakes subscribers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_are_replaced() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let app = format!("hauler-kill-{schema}");
    let s = Arc::new(
        open(
            &with_param(&dsn, &format!("application_name={app}")),
            &schema,
        )
        .await,
    );
    let producer = open(&dsn, &schema).await;
    let admin = admin(&dsn).await;
    let mut rx = s.subscribe().unwrap();
    changed_within(&mut rx, Duration::from_secs(5), "the listener").await;
    // Open several pooled connections.
    insert(&*s, jobs(50), at(0)).await;
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { claim(&*s, 5, "w1", at(0)).await })
        })
        .collect();
    let mut held = Vec::new();
    for t in busy {
        held.extend(t.await.unwrap());
    }
    assert_eq!(held.len(), 20);

    for round in 0..3 {
        let killed = kill_connections(&admin, &app).await;
        assert!(
            killed >= 2,
            "round {round}: pooled and listening connections: {killed}"
        );
        // Every call now works on a fresh connection.
        let c = claim(&*s, 5, "w2", at(1)).await;
        assert_eq!(c.len(), 5, "round {round}");
        complete(&*s, &c, at(2)).await;
        assert!(s.job_get(c[0].id).await.unwrap().is_some());
        // The listener reconnects (announcing it) and hears other pools again.
        changed_within(
            &mut rx,
            Duration::from_secs(10),
            "the listener reconnecting",
        )
        .await;
        insert(&producer, jobs(1), at(0)).await;
        changed_within(
            &mut rx,
            Duration::from_secs(2),
            "a notification after reconnecting",
        )
        .await;
    }

    // Calls racing with the kills fail cleanly or succeed; none panics, and afterwards
    // everything works.
    let callers: Vec<_> = (0..6)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut errors = 0;
                for _ in 0..50 {
                    let res = s
                        .job_claim(JobClaimParams {
                            queues: vec![QUEUE.to_owned()],
                            names: vec![NAME.to_owned()],
                            limit: 1,
                            worker_id: format!("r{i}"),
                            now: at(1),
                        })
                        .await;
                    match res {
                        Ok(got) => {
                            if let Some(c) = got.first() {
                                let r = s
                                    .job_release(JobReleaseParams {
                                        leases: vec![(c.id, c.lease)],
                                        now: at(1),
                                    })
                                    .await;
                                if let Err(e) = r {
                                    assert!(matches!(e, Error::Storage(_)), "{e:?}");
                                    errors += 1;
                                }
                            }
                        }
                        Err(Error::Storage(_)) => errors += 1,
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                errors
            })
        })
        .collect();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        kill_connections(&admin, &app).await;
    }
    let mut errors = 0;
    for t in callers {
        errors += t.await.expect("a caller panicked");
    }
    eprintln!("calls that failed while their connections were killed: {errors}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.job_counts().await.is_ok());
    let left = claim(&*s, 100, "w3", at(5)).await;
    complete(&*s, &left, at(6)).await;

    s.close().await.unwrap();
    producer.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// With 10,000 completed jobs in the table a claim still picks the right jobs, in order,
/// and takes about as long as on an empty table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_stays_correct_and_fast_with_10k_completed_jobs() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let s = open(&dsn, &schema).await;
    async fn time_claims(s: &dyn Storage) -> Duration {
        let t = Instant::now();
        for _ in 0..50 {
            assert!(claim(s, 10, "idle", at(1)).await.is_empty());
        }
        t.elapsed() / 50
    }
    let empty = time_claims(&s).await;
    for _ in 0..10 {
        insert(&s, jobs(1_000), at(0)).await;
    }
    loop {
        let got = claim(&s, 1_000, "w1", at(1)).await;
        if got.is_empty() {
            break;
        }
        complete(&s, &got, at(2)).await;
    }
    admin(&dsn)
        .await
        .batch_execute(&format!("ANALYZE \"{schema}\".jobs"))
        .await
        .unwrap();
    let full = time_claims(&s).await;
    eprintln!("empty claim: {empty:?} on an empty table, {full:?} with 10k completed jobs");

    let low = new_job(NAME, QUEUE);
    let high = NewJob {
        priority: 5,
        ..new_job(NAME, QUEUE)
    };
    let early = NewJob {
        run_at: Some(at(1)),
        ..new_job(NAME, QUEUE)
    };
    let later = NewJob {
        priority: 9,
        run_at: Some(at(100)),
        ..new_job(NAME, QUEUE)
    };
    insert(
        &s,
        vec![low.clone(), high.clone(), early.clone(), later.clone()],
        at(5),
    )
    .await;
    let mut order = Vec::new();
    loop {
        let got = claim(&s, 1, "w2", at(10)).await;
        let Some(c) = got.first() else { break };
        order.push(c.id);
    }
    assert_eq!(order, vec![high.id, early.id, low.id]);
    s.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

/// Throughput numbers (not a pass/fail test): `cargo test --release -p hauler-core --test
/// storage_postgres measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run by hand with --release"]
async fn measure() {
    let Some(dsn) = dsn() else { return };
    let schema = fresh_schema();
    let s = Arc::new(open(&dsn, &schema).await);

    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        insert(&*s, jobs(1), at(0)).await;
    }
    report("insert, one job per call", n, t.elapsed());

    let n = 50_000;
    let t = Instant::now();
    for _ in 0..n / 1_000 {
        insert(&*s, jobs(1_000), at(0)).await;
    }
    report("insert, 1000 jobs per call", n, t.elapsed());

    let t = Instant::now();
    let mut done = 0;
    loop {
        let got = claim(&*s, 100, "w", at(1)).await;
        if got.is_empty() {
            break;
        }
        done += got.len();
        complete(&*s, &got, at(2)).await;
    }
    report("claim 100 + finish 100, one task", done, t.elapsed());

    for _ in 0..50 {
        insert(&*s, jobs(1_000), at(0)).await;
    }
    let t = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut done = 0;
                loop {
                    let got = claim(&*s, 25, &format!("w{i}"), at(1)).await;
                    if got.is_empty() {
                        break done;
                    }
                    done += got.len();
                    complete(&*s, &got, at(2)).await;
                }
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.unwrap();
    }
    report("claim 25 + finish 25, four tasks", done, t.elapsed());

    insert(&*s, jobs(1), at(3)).await;
    let t = Instant::now();
    let got = claim(&*s, 1, "w", at(4)).await;
    eprintln!("one claim with 100k completed rows: {:?}", t.elapsed());
    assert_eq!(got.len(), 1);
    let rounds = 1_000;
    let t = Instant::now();
    for _ in 0..rounds {
        assert!(claim(&*s, 10, "w", at(4)).await.is_empty());
    }
    eprintln!("empty claim (idle poll): {:?} each", t.elapsed() / rounds);
    s.close().await.unwrap();
    drop_schema(&dsn, &schema).await;
}

fn report(what: &str, n: usize, took: Duration) {
    eprintln!(
        "{what}: {n} in {took:?} = {:.0}/s",
        n as f64 / took.as_secs_f64()
    );
}

/// Two storages with pools of their own (as two hosts would have) claim members of a
/// limited group at once: the limit holds. They finish members of groups at once: each
/// group's `on_complete` job is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_racing_on_groups() {
    let Some(dsn) = dsn() else { return };
    for case in 0..2 {
        let schema = fresh_schema();
        let a: Arc<dyn Storage> = Arc::new(open(&dsn, &schema).await);
        let b: Arc<dyn Storage> = Arc::new(open(&dsn, &schema).await);
        if case == 0 {
            conformance::racing_claimers_hold_the_group_limit(a.clone(), b.clone()).await;
        } else {
            conformance::racing_finishers_store_on_complete_once(a.clone(), b.clone()).await;
        }
        for s in [a, b] {
            s.close().await.unwrap();
        }
        drop_schema(&dsn, &schema).await;
    }
}
