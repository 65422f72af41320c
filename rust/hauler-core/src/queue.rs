//! [`Queue`]: a storage shared by the producers and workers of one process, with in-process
//! wake-ups so a queued job reaches an idle worker at once instead of at the next poll.

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::{SharedClock, SystemClock};
use crate::error::Result;
use crate::group::NewGroup;
use crate::model::{InsertedJob, JobId, NewJob};
use crate::schedule::{NewSchedule, ScheduleRecord, Ticker};
use crate::storage::{
    GroupInsertParams, JobCancelParams, JobCancelResult, JobFilter, JobInsertManyParams,
    JobRetryParams, ScheduleRunNowParams, ScheduleUpsertParams, Storage,
};

/// A storage plus the wake-up signals of the workers attached to it in this process.
#[derive(Debug)]
pub struct Queue {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    wake: watch::Sender<u64>,
    cancels: watch::Sender<u64>,
    schedules: watch::Sender<u64>,
    finished: watch::Sender<u64>,
}

impl Queue {
    /// Wrap `storage`, using the system clock.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self::with_clock(storage, Arc::new(SystemClock))
    }

    /// Wrap `storage` with an injected clock (tests).
    pub fn with_clock(storage: Arc<dyn Storage>, clock: SharedClock) -> Self {
        let (wake, _) = watch::channel(0);
        let (cancels, _) = watch::channel(0);
        let (schedules, _) = watch::channel(0);
        let (finished, _) = watch::channel(0);
        Queue {
            storage,
            clock,
            wake,
            cancels,
            schedules,
            finished,
        }
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Store jobs (all or none) and wake this process's idle workers. Returns the ids once
    /// the storage has made the jobs durable: each job's own, or for a unique job that
    /// matched an existing one, that job's (see [`Queue::insert_many`]).
    pub async fn push_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        Ok(self
            .insert_many(jobs)
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect())
    }

    /// Store jobs (all or none) and wake this process's idle workers. Returns, once the
    /// storage has made the jobs durable, what became of each: stored, or a duplicate of
    /// the job holding its unique key (see [`Storage::job_insert_many`]).
    pub async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<InsertedJob>> {
        let now = self.clock.now();
        let inserted = self
            .storage
            .job_insert_many(JobInsertManyParams { jobs, now })
            .await?;
        if inserted.iter().any(|j| !j.duplicate) {
            self.wake();
        }
        Ok(inserted)
    }

    /// Store a group and its member jobs (all or none) and wake this process's idle
    /// workers. Returns the members' ids once durable.
    pub async fn push_group(&self, group: NewGroup, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        let ids = jobs.iter().map(|j| j.id).collect();
        let now = self.clock.now();
        self.storage
            .group_insert(GroupInsertParams { group, jobs, now })
            .await?;
        self.wake();
        Ok(ids)
    }

    /// Cancel the jobs matching `filter` (see [`Storage::job_cancel`]). When running jobs
    /// were asked to stop, this process's workers check at once instead of at their next
    /// heartbeat (workers in other processes learn it at their next heartbeat).
    pub async fn cancel_many(&self, filter: JobFilter) -> Result<JobCancelResult> {
        let now = self.clock.now();
        let result = self
            .storage
            .job_cancel(JobCancelParams { filter, now })
            .await?;
        if result.requested > 0 {
            self.cancels.send_modify(|n| *n = n.wrapping_add(1));
        }
        if result.cancelled > 0 {
            self.wake(); // a group finished by the cancel may have stored its on_complete
        }
        Ok(result)
    }

    /// Retry the failed and cancelled jobs matching `filter` (see [`Storage::job_retry`])
    /// and wake this process's idle workers.
    pub async fn retry_many(&self, filter: JobFilter) -> Result<u64> {
        let now = self.clock.now();
        let n = self
            .storage
            .job_retry(JobRetryParams { filter, now })
            .await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Store a schedule entry, or update the one of the same name (its due tick is kept
    /// if the spec is unchanged, so a tick missed while no worker ran is still caught up).
    /// A malformed spec is an [`crate::Error::Config`] and stores nothing. This process's
    /// workers pick the entry up at once, other processes' at their next poll.
    pub async fn schedule_add(&self, schedule: NewSchedule) -> Result<ScheduleRecord> {
        let ticker = Ticker::new(&schedule.spec)?;
        let now = self.clock.now();
        let next_run_at = ticker.next_after(now).ok_or_else(|| {
            crate::Error::Config(format!("schedule {:?} has no future tick", schedule.name))
        })?;
        let record = self
            .storage
            .schedule_upsert(ScheduleUpsertParams {
                schedule,
                next_run_at,
                now,
            })
            .await?;
        self.schedules.send_modify(|n| *n = n.wrapping_add(1));
        Ok(record)
    }

    /// Delete a schedule entry; whether it existed. Its ticks stop in every worker.
    pub async fn schedule_delete(&self, name: &str) -> Result<bool> {
        let deleted = self.storage.schedule_delete(name).await?;
        self.schedules.send_modify(|n| *n = n.wrapping_add(1));
        Ok(deleted)
    }

    /// Store the entry's job now, leaving its ticks alone; `None` if there is no such entry.
    pub async fn schedule_run_now(&self, name: &str) -> Result<Option<JobId>> {
        let now = self.clock.now();
        let id = self
            .storage
            .schedule_run_now(ScheduleRunNowParams {
                name: name.to_owned(),
                now,
            })
            .await?;
        if id.is_some() {
            self.wake();
        }
        Ok(id)
    }

    /// A receiver that changes whenever this process added or deleted a schedule entry.
    pub fn subscribe_schedules(&self) -> watch::Receiver<u64> {
        self.schedules.subscribe()
    }

    /// A receiver that changes whenever [`Queue::cancel_many`] asked running jobs to stop.
    pub fn subscribe_cancels(&self) -> watch::Receiver<u64> {
        self.cancels.subscribe()
    }

    /// Tell this process's workers (every pool on this queue) that jobs just ended here: a
    /// job held back by a concurrency limit may now start, and on a storage that is never
    /// polled (memory) the ending may have stored a job (a group's `on_complete`).
    pub fn finished(&self) {
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever [`Queue::finished`] is called.
    pub fn subscribe_finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Tell this process's workers that something may have become runnable.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every [`Queue::wake`] made after it was marked seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}
