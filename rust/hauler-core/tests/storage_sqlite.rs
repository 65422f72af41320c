//! The SQLite storage: the shared conformance suite, plus what only a file can show
//! (reopening, several handles and processes on one file, schema versions, open errors,
//! claim cost with many finished jobs).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hauler_core::model::{ClaimedJob, ErrorInfo, JobId, JobStatus, NewJob, QueueCount, Timestamp};
use hauler_core::storage::conformance::{self, new_job, NAME, QUEUE, T0};
use hauler_core::storage::{
    FinishOutcome, JobClaimParams, JobDeleteParams, JobFilter, JobFinish, JobFinishManyParams,
    JobInsertManyParams, JobListParams, SqliteOptions, SqliteStorage, Storage, Synchronous,
};
use hauler_core::Error;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_micros(T0.as_micros() + secs * 1_000_000)
}

fn open(path: &Path) -> SqliteStorage {
    SqliteStorage::open(path, SqliteOptions::default()).expect("open failed")
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

fn storage_error(res: hauler_core::Result<SqliteStorage>) -> String {
    match res {
        Err(Error::Storage(msg)) => msg,
        other => panic!("expected Error::Storage, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let n = Arc::new(AtomicUsize::new(0));
    conformance::run_all(|| {
        let dir = Arc::clone(&dir);
        let n = Arc::clone(&n);
        async move {
            let path = dir
                .path()
                .join(format!("case-{}.db", n.fetch_add(1, Ordering::SeqCst)));
            Arc::new(open(&path)) as Arc<dyn Storage>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_file_keeps_jobs_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let all = jobs(3);
    let s = open(&path);
    insert(&s, all.clone(), at(0)).await;
    let c = claim(&s, 1, "w1", at(1)).await;
    complete(&s, &c, at(2)).await;
    s.close().await.unwrap();

    let s = open(&path);
    for job in &all {
        let r = s
            .job_get(job.id)
            .await
            .unwrap()
            .expect("job survives reopening");
        if job.id == c[0].id {
            assert_eq!(r.status, JobStatus::Completed);
            assert_eq!(r.history.len(), 1);
            assert_eq!(r.history[0].worker_id, "w1");
            assert_eq!(r.finished_at, Some(at(2)));
        } else {
            assert_eq!(r.status, JobStatus::Available);
            assert_eq!(r.args, job.args);
        }
    }
    assert_eq!(claim(&s, 10, "w2", at(3)).await.len(), 2);
    s.close().await.unwrap();
}

fn moved_error<T: std::fmt::Debug>(res: hauler_core::Result<T>) -> String {
    match res {
        Err(Error::Storage(msg)) => msg,
        other => panic!("expected Error::Storage, got {other:?}"),
    }
}

/// The database file deleted under open handles: the next write is refused, naming the
/// path, and nothing goes to the deleted file; the handles then use a fresh database at
/// the path, and a second handle (another process's, in effect) joins the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_refused_then_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let a = open(&path);
    let b = open(&path);
    let before = jobs(2);
    insert(&a, before.clone(), at(0)).await;
    std::fs::remove_file(&path).unwrap();

    let lost = jobs(1);
    let msg = moved_error(
        a.job_insert_many(JobInsertManyParams {
            jobs: lost.clone(),
            now: at(1),
        })
        .await,
    );
    assert!(
        msg.contains("database file was deleted or replaced"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(path.exists(), "the path holds a fresh database again");

    let after = jobs(3);
    insert(&a, after.clone(), at(2)).await;
    // b notices on its own (a read), then sees the fresh file a writes to.
    assert!(b.job_get(after[0].id).await.is_err());
    for job in &after {
        assert!(b.job_get(job.id).await.unwrap().is_some());
    }
    for job in before.iter().chain(&lost) {
        assert!(a.job_get(job.id).await.unwrap().is_none());
    }
    assert_eq!(claim(&b, 10, "w", at(3)).await.len(), 3);
    a.close().await.unwrap();
    b.close().await.unwrap();

    // Nothing of the deleted file's WAL leaked into the new one.
    let s = open(&path);
    assert_eq!(claim(&s, 10, "w", at(4)).await.len(), 0);
    for job in &after {
        let r = s.job_get(job.id).await.unwrap().expect("job kept");
        assert_eq!(r.status, JobStatus::Running);
    }
    s.close().await.unwrap();
}

/// The file replaced by another database (moved over the path): the open handle is
/// refused once, then works on the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_is_refused_then_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let other = dir.path().join("other.db");
    let a = open(&path);
    insert(&a, jobs(1), at(0)).await;
    let kept = jobs(1);
    let o = open(&other);
    insert(&o, kept.clone(), at(0)).await;
    o.close().await.unwrap();
    std::fs::rename(&other, &path).unwrap();

    let msg = moved_error(
        a.job_insert_many(JobInsertManyParams {
            jobs: jobs(1),
            now: at(1),
        })
        .await,
    );
    assert!(
        msg.contains("database file was deleted or replaced"),
        "{msg}"
    );
    let got = claim(&a, 10, "w", at(2)).await;
    assert_eq!(
        got.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![kept[0].id]
    );
    a.close().await.unwrap();
}

/// A row whose columns do not decode is still listed and found by id: the record keeps
/// what decodes (text that is not UTF-8 decoded lossily), and `last_error` (kind
/// `CorruptJob`) names the job and every damaged column; an admin can delete it. A row
/// whose id is not one is left out of the listing. The other rows are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_rows_are_listed_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let s = open(&path);
    let batch = jobs(4);
    let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
    insert(&s, batch, at(0)).await;
    let raw = rusqlite::Connection::open(&path).unwrap();
    let damage = "UPDATE hauler_jobs SET retry = 'garbage', version = -1, last_error = '{', \
                  args = CAST(x'7b22ff227d' AS TEXT) WHERE id = ?1";
    assert_eq!(raw.execute(damage, [ids[1].to_string()]).unwrap(), 1);
    let no_id = "UPDATE hauler_jobs SET id = 'not-an-id' WHERE id = ?1";
    assert_eq!(raw.execute(no_id, [ids[3].to_string()]).unwrap(), 1);
    drop(raw);

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
    let mut want = ids[..3].to_vec();
    want.sort();
    assert_eq!(got, want);
    for r in &listed {
        if r.id == ids[1] {
            let error = r.last_error.as_ref().expect("the damage is reported");
            assert_eq!(error.kind, "CorruptJob");
            for part in [
                &ids[1].to_string(),
                "retry: ",
                "version -1",
                "last_error: ",
                "args is not valid UTF-8",
            ] {
                assert!(error.message.contains(part), "{part}: {}", error.message);
            }
            assert_eq!((r.status, r.name.as_str()), (JobStatus::Available, NAME));
            assert_eq!(r.args, "{\"\u{fffd}\"}");
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
}

/// Two handles on one file (each with its own connections, as two processes would have),
/// four threads with a runtime each: no job is handed out twice, and every job is.
#[test]
fn two_handles_claiming_from_four_threads_never_share_a_job() {
    const JOBS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let handles = [Arc::new(open(&path)), Arc::new(open(&path))];
    let all = jobs(JOBS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(insert(&*handles[0], all.clone(), at(0)));

    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&handles[i % 2]);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let worker = format!("t{i}");
                    let mut mine = Vec::new();
                    loop {
                        let got = claim(&*s, 1 + (i as u32) * 2, &worker, at(1)).await;
                        if got.is_empty() {
                            break mine;
                        }
                        mine.extend(got.into_iter().map(|c| c.id));
                    }
                })
            })
        })
        .collect();
    let mut owner: HashMap<JobId, usize> = HashMap::new();
    for (i, t) in threads.into_iter().enumerate() {
        for id in t.join().expect("claimer thread panicked") {
            if let Some(first) = owner.insert(id, i) {
                panic!("job {id} claimed by threads {first} and {i}");
            }
        }
    }
    assert_eq!(owner.len(), JOBS);
    rt.block_on(async {
        for s in &handles {
            s.close().await.unwrap();
        }
    });
}

const CHILD_DB: &str = "HAULER_TEST_SQLITE_CHILD_DB";
const CHILD_OUT: &str = "HAULER_TEST_SQLITE_CHILD_OUT";

/// Run by `two_processes_claiming_never_share_a_job` in a child process: claim until the
/// queue is empty and write the claimed ids, one a line, to the file `CHILD_OUT` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper run in a child process by two_processes_claiming_never_share_a_job"]
async fn child_claimer() {
    let (Some(db), Some(out)) = (std::env::var_os(CHILD_DB), std::env::var_os(CHILD_OUT)) else {
        return;
    };
    let s = Arc::new(open(Path::new(&db)));
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = claim(&*s, 3, &format!("{}-{i}", std::process::id()), at(1)).await;
                    if got.is_empty() {
                        break mine;
                    }
                    mine.extend(got.into_iter().map(|c| c.id.to_string()));
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    s.close().await.unwrap();
    std::fs::write(out, ids.join("\n")).unwrap();
}

/// Real processes: two children of this test binary claim from one file at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_claiming_never_share_a_job() {
    const JOBS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let s = open(&path);
    let all = jobs(JOBS);
    insert(&s, all.clone(), at(0)).await;

    let exe = std::env::current_exe().unwrap();
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("child-{i}.txt")))
        .collect();
    // Both children start before either is waited for, so they claim at the same time.
    let children: Vec<_> = outs
        .iter()
        .map(|out| {
            Command::new(&exe)
                .args(["child_claimer", "--exact", "--ignored", "--test-threads=1"])
                .env(CHILD_DB, &path)
                .env(CHILD_OUT, out)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child claimer failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut seen = HashSet::new();
    for out in &outs {
        let text = std::fs::read_to_string(out).expect("child wrote its ids");
        for line in text.lines() {
            let id: JobId = line.parse().unwrap();
            assert!(seen.insert(id), "job {id} claimed by both processes");
        }
    }
    assert_eq!(seen, all.iter().map(|j| j.id).collect::<HashSet<_>>());
    s.close().await.unwrap();
}

/// Several handles opening a brand-new file at once all succeed (migrations run once).
#[test]
fn concurrent_opens_of_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("new.db"));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || SqliteStorage::open(&*path, SqliteOptions::default()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("every concurrent open succeeds");
    }
    let conn = rusqlite::Connection::open(&*path).unwrap();
    let version: String = conn
        .query_row(
            "SELECT value FROM hauler_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "9");
}

#[tokio::test]
async fn synchronous_full_opens_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions {
        synchronous: Synchronous::Full,
        ..SqliteOptions::default()
    };
    let s = SqliteStorage::open(dir.path().join("full.db"), opts).unwrap();
    let job = new_job(NAME, QUEUE);
    insert(&s, vec![job.clone()], at(0)).await;
    assert!(s.job_get(job.id).await.unwrap().is_some());
    assert_eq!(s.poll_interval(), Some(Duration::from_millis(100)));
    s.close().await.unwrap();
}

#[test]
fn synchronous_parses_case_insensitively() {
    assert_eq!(
        "normal".parse::<Synchronous>().unwrap(),
        Synchronous::Normal
    );
    assert_eq!("FULL".parse::<Synchronous>().unwrap(), Synchronous::Full);
    match "extra".parse::<Synchronous>() {
        Err(Error::Config(msg)) => assert!(msg.contains("\"extra\""), "{msg}"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE hauler_meta SET value = '999' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let msg = storage_error(SqliteStorage::open(&path, SqliteOptions::default()));
    assert!(
        msg.contains(
            "database schema version 999 is newer than this hauler supports (9); upgrade hauler"
        ),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn missing_directory_is_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("jobs.db");
    let msg = storage_error(SqliteStorage::open(&path, SqliteOptions::default()));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn a_file_that_is_not_a_database_is_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "these are not the pages you are looking for ".repeat(200),
    )
    .unwrap();
    let msg = storage_error(SqliteStorage::open(&path, SqliteOptions::default()));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
}

#[tokio::test]
async fn duplicate_id_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("jobs.db"));
    let first = new_job(NAME, QUEUE);
    insert(&s, vec![first.clone()], at(0)).await;
    let fresh = new_job(NAME, QUEUE);
    let res = s
        .job_insert_many(JobInsertManyParams {
            jobs: vec![fresh.clone(), first.clone()],
            now: at(1),
        })
        .await;
    match res {
        Err(Error::Storage(msg)) => assert!(msg.contains(&first.id.to_string()), "{msg}"),
        other => panic!("expected Error::Storage, got {other:?}"),
    }
    assert!(
        s.job_get(fresh.id).await.unwrap().is_none(),
        "the batch is all or none"
    );
    s.close().await.unwrap();
}

/// Heartbeat, lease expiry and reclaim with the JSON history SQLite builds itself.
#[tokio::test]
async fn reclaim_records_the_lost_lease_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("jobs.db"));
    let job = NewJob {
        heartbeat_ms: 1_000,
        ..new_job(NAME, QUEUE)
    };
    insert(&s, vec![job.clone()], at(0)).await;
    let c = claim(&s, 1, "w1", at(0)).await.remove(0);
    assert_eq!(
        s.job_reclaim_expired(hauler_core::storage::JobReclaimParams { now: at(3) })
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.job_reclaim_expired(hauler_core::storage::JobReclaimParams { now: at(4) })
            .await
            .unwrap(),
        1
    );
    let r = s.job_get(job.id).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Available);
    assert_eq!(r.run_at, at(4));
    let expected = ErrorInfo::engine(
        "LeaseExpired",
        "lease expired: worker w1 stopped heartbeating",
    );
    assert_eq!(r.last_error.as_ref(), Some(&expected));
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.history[0].attempt, 1);
    assert_eq!(r.history[0].started_at, at(0));
    assert_eq!(r.history[0].error.as_ref(), Some(&expected));
    // The lost runner's report is refused.
    let accepted = s
        .job_finish_many(JobFinishManyParams {
            finishes: vec![JobFinish {
                id: c.id,
                lease: c.lease,
                outcome: FinishOutcome::Completed,
            }],
            now: at(5),
        })
        .await
        .unwrap();
    assert_eq!(accepted, vec![false]);
    s.close().await.unwrap();
}

/// A claim over several queues takes the best jobs across all of them (each queue is
/// searched on its own, then merged); a queue named twice is searched once.
#[tokio::test]
async fn claim_over_several_queues_merges_in_claim_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("jobs.db"));
    let job = |queue: &str, priority: i32, run_at: i64| NewJob {
        priority,
        run_at: Some(at(run_at)),
        ..new_job(NAME, queue)
    };
    let a_low = job("a", 1, 0);
    let b_high = job("b", 7, 3);
    let c_mid_early = job("c", 4, 1);
    let a_mid_late = job("a", 4, 2);
    let b_low = job("b", 0, 0);
    let all = vec![
        a_low.clone(),
        b_high.clone(),
        c_mid_early.clone(),
        a_mid_late.clone(),
        b_low,
    ];
    insert(&s, all, at(5)).await;
    let queues = ["a", "b", "c", "a"].map(str::to_owned).to_vec();
    let got = s
        .job_claim(JobClaimParams {
            queues,
            names: vec![NAME.to_owned()],
            limit: 4,
            worker_id: "w".to_owned(),
            now: at(5),
        })
        .await
        .unwrap();
    let ids: Vec<JobId> = got.iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        vec![b_high.id, c_mid_early.id, a_mid_late.id, a_low.id]
    );
    s.close().await.unwrap();
}

/// With 10,000 completed jobs in the table, a claim still picks the right jobs, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_stays_correct_with_10k_completed_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("jobs.db"));
    insert(&s, jobs(10_000), at(0)).await;
    loop {
        let got = claim(&s, 1_000, "w1", at(1)).await;
        if got.is_empty() {
            break;
        }
        complete(&s, &got, at(2)).await;
    }
    let counts = s.job_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![QueueCount {
            queue: QUEUE.to_owned(),
            status: JobStatus::Completed,
            count: 10_000
        }]
    );

    let low = NewJob {
        priority: 0,
        ..new_job(NAME, QUEUE)
    };
    let high = NewJob {
        priority: 5,
        ..new_job(NAME, QUEUE)
    };
    let early = NewJob {
        priority: 0,
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
    let started = Instant::now();
    let order: Vec<JobId> = {
        let mut order = Vec::new();
        loop {
            let got = claim(&s, 1, "w2", at(10)).await;
            let Some(c) = got.first() else { break };
            order.push(c.id);
        }
        order
    };
    eprintln!(
        "3 single claims + 1 empty claim over 10k completed rows: {:?}",
        started.elapsed()
    );
    assert_eq!(
        order,
        vec![high.id, early.id, low.id],
        "priority, then run_at, then id"
    );
    let listed = s
        .job_list(JobListParams {
            filter: JobFilter {
                statuses: vec![JobStatus::Scheduled],
                ..JobFilter::default()
            },
            limit: 10,
            ..JobListParams::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![later.id]
    );
    s.close().await.unwrap();
}

/// Throughput numbers (not a pass/fail test): `cargo test --release -p hauler-core --test
/// storage_sqlite measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run by hand with --release"]
async fn measure() {
    for sync in [Synchronous::Normal, Synchronous::Full] {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            synchronous: sync,
            ..SqliteOptions::default()
        };
        let s = SqliteStorage::open(dir.path().join("m.db"), opts).unwrap();

        let n = 2_000;
        let t = Instant::now();
        for _ in 0..n {
            insert(&s, jobs(1), at(0)).await;
        }
        report(&format!("{sync}: insert, one job per call"), n, t.elapsed());

        let n = 50_000;
        let t = Instant::now();
        for _ in 0..n / 1_000 {
            insert(&s, jobs(1_000), at(0)).await;
        }
        report(
            &format!("{sync}: insert, 1000 jobs per call"),
            n,
            t.elapsed(),
        );

        let t = Instant::now();
        let mut done = 0;
        loop {
            let got = claim(&s, 100, "w", at(1)).await;
            if got.is_empty() {
                break;
            }
            done += got.len();
            complete(&s, &got, at(2)).await;
        }
        report(
            &format!("{sync}: claim 100 + finish 100"),
            done,
            t.elapsed(),
        );

        insert(&s, jobs(1), at(3)).await;
        let t = Instant::now();
        let got = claim(&s, 1, "w", at(4)).await;
        eprintln!(
            "{sync}: one claim with {done} completed rows: {:?}",
            t.elapsed()
        );
        assert_eq!(got.len(), 1);
        let t = Instant::now();
        let rounds = 1_000;
        for _ in 0..rounds {
            assert!(claim(&s, 10, "w", at(4)).await.is_empty());
        }
        eprintln!(
            "{sync}: empty claim (idle poll): {:?} each",
            t.elapsed() / rounds
        );
        s.close().await.unwrap();
    }
}

fn report(what: &str, n: usize, took: Duration) {
    eprintln!(
        "{what}: {n} in {took:?} = {:.0}/s",
        n as f64 / took.as_secs_f64()
    );
}

/// Two handles on one file (as two processes would have) claim members of a limited
/// group at once: the limit holds. They finish members of groups at once: each group's
/// `on_complete` job is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_racing_on_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.db");
    let a: Arc<dyn Storage> = Arc::new(open(&path));
    let b: Arc<dyn Storage> = Arc::new(open(&path));
    conformance::racing_claimers_hold_the_group_limit(a.clone(), b.clone()).await;
    let c: Arc<dyn Storage> = Arc::new(open(&dir.path().join("groups2.db")));
    let d: Arc<dyn Storage> = Arc::new(open(&dir.path().join("groups2.db")));
    conformance::racing_finishers_store_on_complete_once(c.clone(), d.clone()).await;
    for s in [a, b, c, d] {
        s.close().await.unwrap();
    }
}

/// Wait for a wake-up on `rx`: whether one came within `limit`.
async fn woken(rx: &mut tokio::sync::watch::Receiver<u64>, limit: Duration) -> bool {
    tokio::time::timeout(limit, rx.changed()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_by_another_handle_wakes_subscribers_and_an_empty_claim_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    // Two handles on one file, as a worker process and a web process would have.
    let worker = open(&path);
    let producer = open(&path);
    let mut rx = worker
        .subscribe()
        .expect("SQLite tells of other processes' commits");
    let mut rx2 = worker.subscribe().expect("every dispatcher subscribes");
    // Let the watcher start and settle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    rx.borrow_and_update();

    insert(&producer, jobs(1), at(0)).await;
    assert!(
        woken(&mut rx, Duration::from_secs(5)).await,
        "no wake-up after an insert"
    );
    assert!(
        woken(&mut rx2, Duration::from_secs(5)).await,
        "every subscriber is woken"
    );
    let c = claim(&worker, 10, "w1", at(1)).await;
    assert_eq!(c.len(), 1);
    complete(&worker, &c, at(2)).await;

    // A claim that finds nothing writes nothing, so it cannot wake its own dispatcher
    // (which would then claim again, in a loop).
    tokio::time::sleep(Duration::from_millis(50)).await;
    rx.borrow_and_update();
    for _ in 0..3 {
        assert!(claim(&worker, 10, "w1", at(3)).await.is_empty());
        assert!(
            !woken(&mut rx, Duration::from_millis(200)).await,
            "an empty claim woke the dispatcher"
        );
    }

    // A file written in the same directory is not the database.
    std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
    assert!(!woken(&mut rx, Duration::from_millis(200)).await);

    worker.close().await.unwrap();
    assert!(
        worker.subscribe().is_none(),
        "a closed storage has no signal"
    );
    producer.close().await.unwrap();
}
