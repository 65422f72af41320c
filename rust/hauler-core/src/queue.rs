//! [`Queue`]: a storage shared by the producers and workers of one process, with in-process
//! wake-ups so a queued job reaches an idle worker at once instead of at the next poll.

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::{SharedClock, SystemClock};
use crate::error::Result;
use crate::model::{JobId, NewJob};
use crate::storage::{JobInsertManyParams, Storage};

/// A storage plus the wake-up signal of the workers attached to it in this process.
#[derive(Debug)]
pub struct Queue {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    wake: watch::Sender<u64>,
}

impl Queue {
    /// Wrap `storage`, using the system clock.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self::with_clock(storage, Arc::new(SystemClock))
    }

    /// Wrap `storage` with an injected clock (tests).
    pub fn with_clock(storage: Arc<dyn Storage>, clock: SharedClock) -> Self {
        let (wake, _) = watch::channel(0);
        Queue {
            storage,
            clock,
            wake,
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
    /// the storage has made the jobs durable.
    pub async fn push_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        let ids = jobs.iter().map(|j| j.id).collect();
        let now = self.clock.now();
        self.storage
            .job_insert_many(JobInsertManyParams { jobs, now })
            .await?;
        self.wake();
        Ok(ids)
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
