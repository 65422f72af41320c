//! WAL checkpoints for the SQLite storage, on a thread of their own.
//!
//! In WAL mode every commit appends pages to the `-wal` file, and a checkpoint copies them
//! back into the database (with an fsync) so the WAL can start over. Left to SQLite, the
//! connection whose commit makes the WAL reach `wal_autocheckpoint` pages does that
//! checkpoint inside its commit: the writer, which every job's claim and finish waits
//! for, stopped for 35 ms once per 16 MiB written (4% of a 50,000-job drain, and a 35 ms
//! hiccup for whatever was queued behind it).
//!
//! So a thread checkpoints instead, shortly after commits ([`GATHER`] lets a burst of them
//! go first), in `PASSIVE` mode: it never waits for, nor blocks, the writer or readers,
//! and copies only what no reader still needs. The writer keeps `wal_autocheckpoint` as
//! the backstop for the times this thread cannot keep up.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long the thread lets commits gather before it checkpoints what they wrote.
pub(crate) const GATHER: Duration = Duration::from_millis(50);

/// The checkpoint thread of one open database, told of each commit.
#[derive(Debug, Default)]
pub(crate) struct Checkpointer {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// A commit came since the last checkpoint began.
    pending: bool,
    /// The storage closed or was dropped: the thread exits.
    stop: bool,
}

impl Checkpointer {
    fn state(&self) -> MutexGuard<'_, State> {
        // Two flags, never left half-set by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A commit added pages to the WAL.
    pub(crate) fn committed(&self) {
        let mut state = self.state();
        if !state.pending {
            state.pending = true;
            self.changed.notify_one();
        }
    }

    /// Stop the thread (it finishes a checkpoint it is in).
    pub(crate) fn stop(&self) {
        self.state().stop = true;
        self.changed.notify_one();
    }

    /// Start the thread: after each burst of commits it calls `checkpoint`, until
    /// [`Checkpointer::stop`] or until `checkpoint` returns false (its storage is gone).
    /// False if no thread could be started (SQLite's own checkpoints then do the work).
    pub(crate) fn start(
        self: &Arc<Self>,
        mut checkpoint: impl FnMut() -> bool + Send + 'static,
    ) -> bool {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("hauler-sqlite-c".to_owned())
            .spawn(move || {
                while me.wait_for_commits() {
                    if !checkpoint() {
                        return;
                    }
                }
            })
            .is_ok()
    }

    /// Wait for a commit, then [`GATHER`] more; false once stopped.
    fn wait_for_commits(&self) -> bool {
        let mut state = self.state();
        while !state.pending && !state.stop {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let until = Instant::now() + GATHER;
        while !state.stop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.pending = false;
        !state.stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Sets its counter to 0 when dropped: with the thread's closure, when the thread ends.
    struct Exit(Arc<AtomicUsize>);

    impl Drop for Exit {
        fn drop(&mut self) {
            self.0.store(0, Ordering::SeqCst);
        }
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A burst of commits is one checkpoint, made after them; nothing runs without a
    /// commit; stop ends the thread.
    #[test]
    fn one_checkpoint_per_burst_of_commits_and_none_without() {
        let c = Arc::new(Checkpointer::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicUsize::new(1));
        let (r, a) = (Arc::clone(&runs), Arc::clone(&alive));
        let exit = Exit(a);
        assert!(c.start(move || {
            let _ = &exit;
            r.fetch_add(1, Ordering::SeqCst);
            true
        }));
        std::thread::sleep(GATHER * 2);
        assert_eq!(runs.load(Ordering::SeqCst), 0, "no commit, no checkpoint");

        let started = Instant::now();
        for _ in 0..100 {
            c.committed();
        }
        wait_until("the burst is checkpointed", || {
            runs.load(Ordering::SeqCst) == 1
        });
        assert!(started.elapsed() >= GATHER, "commits were let gather first");
        std::thread::sleep(GATHER * 2);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one checkpoint for the burst"
        );

        c.committed();
        wait_until("the next commit is checkpointed", || {
            runs.load(Ordering::SeqCst) == 2
        });

        c.stop();
        wait_until("the thread exits", || alive.load(Ordering::SeqCst) == 0);
    }

    /// The thread exits when its storage is gone (the checkpoint says so).
    #[test]
    fn the_thread_exits_when_the_checkpoint_says_the_storage_is_gone() {
        let c = Arc::new(Checkpointer::default());
        let alive = Arc::new(AtomicUsize::new(1));
        let exit = Exit(Arc::clone(&alive));
        assert!(c.start(move || {
            let _ = &exit;
            false
        }));
        c.committed();
        wait_until("the thread exits", || alive.load(Ordering::SeqCst) == 0);
    }
}
