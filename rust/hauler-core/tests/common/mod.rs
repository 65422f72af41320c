//! What the worker tests share: a storage wrapper that counts claims.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hauler_core::group::GroupRecord;
use hauler_core::model::{
    ClaimedJob, GroupId, InsertedJob, JobId, JobRecord, QueueCount, Timestamp,
};
use hauler_core::schedule::ScheduleRecord;
use hauler_core::storage::{
    GroupInsertParams, JobCancelParams, JobCancelResult, JobClaimParams, JobCountParams,
    JobDeleteParams, JobFinishClaimParams, JobFinishClaimResult, JobFinishManyParams,
    JobHeartbeatParams, JobHeartbeatResult, JobInsertManyParams, JobListParams, JobNextRunAtParams,
    JobProgressSetParams, JobPruneParams, JobReclaimParams, JobReleaseParams, JobRetryParams,
    ScheduleRunNowParams, ScheduleTickParams, ScheduleUpsertParams, Storage,
};
use hauler_core::Result;
use tokio::sync::watch;

/// A storage that counts the claims made through it (and passes on whether the storage
/// claims together with recording outcomes).
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Storage>,
    /// How many claims were made, alone or with outcomes.
    pub claims: AtomicUsize,
    /// Of those, how many were made with outcomes ([`Storage::job_finish_claim`]).
    pub finish_claims: AtomicUsize,
}

impl Counting {
    /// Count the claims made through `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Counting {
            inner,
            claims: AtomicUsize::new(0),
            finish_claims: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Storage for Counting {
    async fn job_insert_many(&self, p: JobInsertManyParams) -> Result<Vec<InsertedJob>> {
        self.inner.job_insert_many(p).await
    }
    async fn group_insert(&self, p: GroupInsertParams) -> Result<()> {
        self.inner.group_insert(p).await
    }
    async fn group_get(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        self.inner.group_get(id).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> Result<Vec<ClaimedJob>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.job_claim(p).await
    }
    async fn job_heartbeat(&self, p: JobHeartbeatParams) -> Result<JobHeartbeatResult> {
        self.inner.job_heartbeat(p).await
    }
    async fn job_finish_many(&self, p: JobFinishManyParams) -> Result<Vec<bool>> {
        self.inner.job_finish_many(p).await
    }
    async fn job_finish_claim(&self, p: JobFinishClaimParams) -> Result<JobFinishClaimResult> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.finish_claims.fetch_add(1, Ordering::SeqCst);
        self.inner.job_finish_claim(p).await
    }
    fn finish_claim_combined(&self) -> bool {
        self.inner.finish_claim_combined()
    }
    async fn job_progress_set(&self, p: JobProgressSetParams) -> Result<bool> {
        self.inner.job_progress_set(p).await
    }
    async fn job_release(&self, p: JobReleaseParams) -> Result<u64> {
        self.inner.job_release(p).await
    }
    async fn job_reclaim_expired(&self, p: JobReclaimParams) -> Result<u64> {
        self.inner.job_reclaim_expired(p).await
    }
    async fn job_get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.inner.job_get(id).await
    }
    async fn job_list(&self, p: JobListParams) -> Result<Vec<JobRecord>> {
        self.inner.job_list(p).await
    }
    async fn job_count(&self, p: JobCountParams) -> Result<u64> {
        self.inner.job_count(p).await
    }
    async fn job_cancel(&self, p: JobCancelParams) -> Result<JobCancelResult> {
        self.inner.job_cancel(p).await
    }
    async fn job_retry(&self, p: JobRetryParams) -> Result<u64> {
        self.inner.job_retry(p).await
    }
    async fn job_delete(&self, p: JobDeleteParams) -> Result<u64> {
        self.inner.job_delete(p).await
    }
    async fn job_prune(&self, p: JobPruneParams) -> Result<u64> {
        self.inner.job_prune(p).await
    }
    async fn job_counts(&self) -> Result<Vec<QueueCount>> {
        self.inner.job_counts().await
    }
    async fn job_next_run_at(&self, p: JobNextRunAtParams) -> Result<Option<Timestamp>> {
        self.inner.job_next_run_at(p).await
    }
    async fn schedule_upsert(&self, p: ScheduleUpsertParams) -> Result<ScheduleRecord> {
        self.inner.schedule_upsert(p).await
    }
    async fn schedule_tick(&self, p: ScheduleTickParams) -> Result<bool> {
        self.inner.schedule_tick(p).await
    }
    async fn schedule_run_now(&self, p: ScheduleRunNowParams) -> Result<Option<JobId>> {
        self.inner.schedule_run_now(p).await
    }
    async fn schedule_delete(&self, name: &str) -> Result<bool> {
        self.inner.schedule_delete(name).await
    }
    async fn schedule_list(&self) -> Result<Vec<ScheduleRecord>> {
        self.inner.schedule_list().await
    }
    fn poll_interval(&self) -> Option<Duration> {
        self.inner.poll_interval()
    }
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.inner.subscribe()
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
