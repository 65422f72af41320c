//! A test hook: abort the process at a named point of the engine, so that tests can show
//! a crash there leaves every job in the state `docs/state_machine.md` documents.
//!
//! Set the environment variable `HAULER_TEST_CRASH_AT` to the name of one
//! [`CrashPoint`] (`after_claim`, `during_run`, `before_complete_commit`,
//! `during_retry_reschedule`, `during_enqueue`) before the process first reaches any of
//! them; it is read once per process. The first time the engine reaches that point the
//! process aborts (SIGABRT), as abruptly as a `kill -9`. Unset (always, outside tests),
//! each point costs one comparison.

use std::sync::OnceLock;

/// The environment variable that names the point to crash at.
pub const CRASH_AT_VAR: &str = "HAULER_TEST_CRASH_AT";

/// A point where a test may ask the process to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Jobs were claimed (committed as `running` under this worker's lease) and none has
    /// been handed to the executor yet.
    AfterClaim,
    /// Jobs are running: just before the first heartbeat that renews their leases.
    DuringRun,
    /// A job returned: its completion is written, inside the storage transaction, but
    /// not yet committed.
    BeforeCompleteCommit,
    /// A job failed with retries left: its reschedule is written, inside the storage
    /// transaction, but not yet committed.
    DuringRetryReschedule,
    /// Storing new jobs: the first row of the batch is written, inside the storage
    /// transaction, and the rest are not.
    DuringEnqueue,
}

impl CrashPoint {
    /// The name `HAULER_TEST_CRASH_AT` takes for this point.
    pub const fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterClaim => "after_claim",
            CrashPoint::DuringRun => "during_run",
            CrashPoint::BeforeCompleteCommit => "before_complete_commit",
            CrashPoint::DuringRetryReschedule => "during_retry_reschedule",
            CrashPoint::DuringEnqueue => "during_enqueue",
        }
    }
}

/// Abort the process here if `HAULER_TEST_CRASH_AT` names `point`.
pub fn crash_point(point: CrashPoint) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_AT_VAR).ok());
    if at.as_deref() == Some(point.name()) {
        eprintln!(
            "hauler: {CRASH_AT_VAR}={}: aborting the process",
            point.name()
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_unset_points_do_nothing() {
        let all = [
            CrashPoint::AfterClaim,
            CrashPoint::DuringRun,
            CrashPoint::BeforeCompleteCommit,
            CrashPoint::DuringRetryReschedule,
            CrashPoint::DuringEnqueue,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), all.len());
        // The test process has no HAULER_TEST_CRASH_AT: reaching every point is harmless.
        assert!(std::env::var(CRASH_AT_VAR).is_err());
        for p in all {
            crash_point(p);
        }
    }
}
