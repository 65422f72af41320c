//! Job groups: one job made of many member jobs, stored together, followed together, and
//! optionally limited in how many members run at once.
//!
//! * A group and its members are stored in one transaction
//!   ([`crate::storage::Storage::group_insert`]); members may have any name and queue.
//! * With a `concurrency` limit, a claim never makes more than that many members
//!   `running` at once, across every worker and process sharing the storage. Members
//!   held back stay pending (no attempt counted) and do not hold up other jobs. This is
//!   the generic concurrency limit of [`crate::model::JobLimits`]: each member is stored
//!   with the key `group:<group id>` ([`NewGroup::prepare_members`]), so groups use the
//!   same claim code as `SINGLETON`/`CONCURRENCY` jobs. A job holds one concurrency key,
//!   so a member that has its own cannot join a group with a limit; and a member may not
//!   be unique (a duplicate would belong to another group, or none).
//! * The group *finishes* when every member is final (completed, failed or cancelled):
//!   the storage sets its `finished_at` and stores its `on_complete` job, in the same
//!   transaction as the change that made the last member final, guarded so it happens
//!   once however many workers finish members at the same moment.
//! * A manual retry of a member reopens a finished group (`finished_at` back to `None`);
//!   its `on_complete` job, already stored, is not stored again when it finishes anew.
//! * Deleting members is allowed. A group none of whose members are left is deleted with
//!   the last of them (by `job_delete` or `job_prune`). Deleting pending members does not
//!   finish a group, so it does not store `on_complete`: cancel them instead.

use crate::error::{Error, Result};
use crate::model::{ConcurrencyLimit, GroupId, JobId, JobStatus, NewJob, Timestamp};
use crate::schedule::JobTemplate;

/// A group to store with its members.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGroup {
    /// Its id (create with [`GroupId::new`]).
    pub id: GroupId,
    /// A name for people (not unique).
    pub name: String,
    /// At most this many members running at once (`None`: no limit). At least 1.
    pub concurrency: Option<u32>,
    /// The job to store when the group finishes, if any.
    pub on_complete: Option<JobTemplate>,
}

impl NewGroup {
    /// The concurrency key the members of group `id` share when it has a limit.
    pub fn concurrency_key(id: GroupId) -> String {
        format!("group:{id}")
    }

    /// Check that `jobs` may be this group's members, and give each the group's
    /// concurrency limit (if it has one) as its concurrency key. Every storage's
    /// [`crate::storage::Storage::group_insert`] calls this before storing anything.
    ///
    /// Fails with [`Error::Config`], naming every offending member, if the group has no
    /// members, a `concurrency` of 0, a member with a unique key, or (when the group has
    /// a limit) a member with a concurrency limit of its own.
    pub fn prepare_members(&self, jobs: &mut [NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Err(Error::Config(format!(
                "group {:?} needs at least one job",
                self.name
            )));
        }
        if self.concurrency == Some(0) {
            return Err(Error::Config(format!(
                "group {:?}: concurrency must be at least 1",
                self.name
            )));
        }
        let mut problems = Vec::new();
        for job in jobs.iter() {
            if job.unique_key.is_some() {
                problems.push(format!(
                    "job {:?} is UNIQUE, and a unique job cannot be a group member (its \
                     duplicate would be another group's member, or no group's)",
                    job.name
                ));
            }
            if let (Some(_), Some(own)) = (self.concurrency, &job.limits.concurrency) {
                problems.push(format!(
                    "job {:?} has its own concurrency limit (SINGLETON or CONCURRENCY: key \
                     {:?}, limit {}), and a member of a group with a concurrency limit \
                     cannot hold a second one",
                    job.name, own.key, own.limit
                ));
            }
        }
        if !problems.is_empty() {
            problems.dedup();
            return Err(Error::Config(format!(
                "group {:?}: {}",
                self.name,
                problems.join("; ")
            )));
        }
        if let Some(limit) = self.concurrency {
            let key = Self::concurrency_key(self.id);
            for job in jobs.iter_mut() {
                job.limits.concurrency = Some(ConcurrencyLimit {
                    key: key.clone(),
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// How many members of a group are in each kind of status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Scheduled, available or retryable.
    pub pending: u64,
    /// Running.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl GroupCounts {
    /// Count `n` members of `status`.
    pub fn add(&mut self, status: JobStatus, n: u64) {
        let slot = match status {
            JobStatus::Scheduled | JobStatus::Available | JobStatus::Retryable => &mut self.pending,
            JobStatus::Running => &mut self.running,
            JobStatus::Completed => &mut self.completed,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    /// Every member.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.completed + self.failed + self.cancelled
    }

    /// Members in a final status.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }
}

/// Where a group is, derived from its members' statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupStatus {
    /// Some member is pending or running (or the group has no members left).
    InProgress,
    /// Every member completed.
    Done,
    /// Every member is final, some failed, none cancelled.
    DoneWithErrors,
    /// Every member is final and some were cancelled.
    Cancelled,
}

impl GroupStatus {
    /// The snake_case name used in Python.
    pub const fn as_str(self) -> &'static str {
        match self {
            GroupStatus::InProgress => "in_progress",
            GroupStatus::Done => "done",
            GroupStatus::DoneWithErrors => "done_with_errors",
            GroupStatus::Cancelled => "cancelled",
        }
    }

    /// The status of a group whose members are counted by `counts`.
    pub fn of(counts: &GroupCounts) -> Self {
        if counts.total() == 0 || counts.pending + counts.running > 0 {
            GroupStatus::InProgress
        } else if counts.cancelled > 0 {
            GroupStatus::Cancelled
        } else if counts.failed > 0 {
            GroupStatus::DoneWithErrors
        } else {
            GroupStatus::Done
        }
    }
}

/// A stored group with its members' counts.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    /// The id.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// At most this many members running at once (`None`: no limit).
    pub concurrency: Option<u32>,
    /// The job stored when the group finishes, if any.
    pub on_complete: Option<JobTemplate>,
    /// The id of the `on_complete` job once it was stored (it is stored once, ever).
    pub on_complete_job_id: Option<JobId>,
    /// When the group was stored.
    pub created_at: Timestamp,
    /// When its last member became final (`None` while some member is not, or after a
    /// member was retried).
    pub finished_at: Option<Timestamp>,
    /// Its members, by status.
    pub counts: GroupCounts,
}

impl GroupRecord {
    /// Where the group is (see [`GroupStatus::of`]).
    pub fn status(&self) -> GroupStatus {
        GroupStatus::of(&self.counts)
    }
}
