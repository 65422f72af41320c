//! Worker pool configuration, validated as a whole.

use std::time::Duration;

use crate::error::{Error, Result};

/// One queue a pool works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's name.
    pub name: String,
    /// How many of its jobs may run at once in this pool.
    pub concurrency: usize,
    /// The job names the pool has registered on this queue; it claims no others.
    pub names: Vec<String>,
}

/// How a worker pool runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Recorded on every job the pool claims.
    pub worker_id: String,
    /// The queues, each with its own concurrency.
    pub queues: Vec<QueueConfig>,
    /// How often to look for jobs queued by other processes; `None` uses the storage's
    /// own interval.
    pub poll_interval: Option<Duration>,
    /// How often to reclaim jobs whose lease expired.
    pub reclaim_interval: Duration,
    /// The most finished attempts recorded in one storage transaction.
    pub finish_batch: usize,
    /// Completed jobs are deleted this long after they finished (`None`: kept forever).
    pub retention: Option<Duration>,
    /// How often the pool deletes the completed jobs past `retention`.
    pub retention_interval: Duration,
}

/// How long completed jobs are kept by default: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

impl PoolConfig {
    /// A config with defaults for everything but the id and the queues.
    pub fn new(worker_id: impl Into<String>, queues: Vec<QueueConfig>) -> Self {
        PoolConfig {
            worker_id: worker_id.into(),
            queues,
            poll_interval: None,
            reclaim_interval: Duration::from_secs(1),
            finish_batch: 512,
            retention: Some(DEFAULT_RETENTION),
            retention_interval: Duration::from_secs(60),
        }
    }

    /// Check every setting; the error lists all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.worker_id.is_empty() {
            problems.push("worker_id must not be empty".to_owned());
        }
        if self.queues.is_empty() {
            problems.push("no queues: register at least one job".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for q in &self.queues {
            if q.name.is_empty() {
                problems.push("a queue name must not be empty".to_owned());
            }
            if !seen.insert(q.name.as_str()) {
                problems.push(format!("queue {:?} is configured twice", q.name));
            }
            if q.concurrency == 0 {
                problems.push(format!(
                    "queue {:?}: worker count must be at least 1",
                    q.name
                ));
            }
            if q.names.is_empty() {
                problems.push(format!("queue {:?}: no job registered on it", q.name));
            }
        }
        if self.poll_interval.is_some_and(|d| d.is_zero()) {
            problems.push("poll_interval must be greater than zero".to_owned());
        }
        if self.reclaim_interval.is_zero() {
            problems.push("reclaim_interval must be greater than zero".to_owned());
        }
        if self.finish_batch == 0 {
            problems.push("finish_batch must be at least 1".to_owned());
        }
        if self.retention.is_some_and(|d| d.is_zero()) {
            problems.push("retention must be greater than zero (or None: keep forever)".to_owned());
        }
        if self.retention_interval.is_zero() {
            problems.push("retention_interval must be greater than zero".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_lists_every_problem() {
        let mut c = PoolConfig::new(
            "",
            vec![
                QueueConfig {
                    name: "a".into(),
                    concurrency: 0,
                    names: vec![],
                },
                QueueConfig {
                    name: "a".into(),
                    concurrency: 1,
                    names: vec!["x".into()],
                },
            ],
        );
        c.reclaim_interval = Duration::ZERO;
        c.retention = Some(Duration::ZERO);
        let msg = c.validate().unwrap_err().to_string();
        for part in [
            "worker_id",
            "configured twice",
            "at least 1",
            "no job registered",
            "reclaim",
            "retention",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
    }
}
