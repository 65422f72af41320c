//! The process's one tokio runtime, and the one helper every blocking call goes through.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors::to_pyerr;

/// (pid that built it, runtime). A forked child sees another pid and builds its own
/// runtime instead of using the parent's, whose threads did not survive the fork.
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime for this process, built on first use.
pub(crate) fn runtime() -> PyResult<Arc<Runtime>> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
        // Inherited across fork: its threads are gone, so it must never be dropped here.
        if let Some((_, old)) = slot.take() {
            std::mem::forget(old);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hauler-rt")
        .on_thread_start(block_async_signals)
        .enable_all()
        .build()
        .map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "cannot start the hauler runtime: {e}"
            ))
        })?;
    let rt = Arc::new(rt);
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// Run `fut` to completion on the runtime with the GIL released, mapping engine errors to
/// hauler exceptions. Every 100 ms it takes the GIL back to let Ctrl-C raise
/// `KeyboardInterrupt` (the future is then dropped).
pub(crate) fn wait<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    T: Send,
    F: Future<Output = hauler_core::Result<T>> + Send,
{
    let rt = runtime()?;
    let mut fut = std::pin::pin!(fut);
    loop {
        // This thread only waits: storage work that blocks (SQLite) runs on it directly
        // rather than on tokio's blocking pool, saving two thread wake-ups per call. Such a
        // call is not cut short by the 100 ms signal check (it lasts at most the storage's
        // busy timeout).
        let polled = py.detach(|| {
            hauler_core::blocking::caller_blocks(|| {
                // The timer must be built inside the runtime's context, hence the async block.
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), fut.as_mut()).await
                })
            })
        });
        match polled {
            Ok(result) => return result.map_err(to_pyerr),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// A waker for one poll whose wake-up nobody waits for (`Waker::noop` needs Rust 1.85).
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// As [`wait`], but first poll `fut` once on this thread with the GIL held, and release
/// the GIL only if it is not done at once. For calls on a storage that never blocks
/// (memory): releasing the GIL for a call that takes microseconds hands it to a worker
/// thread that waits for it, and taking it back waits for that thread, on every call.
pub(crate) fn wait_held<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    T: Send,
    F: Future<Output = hauler_core::Result<T>> + Send,
{
    let rt = runtime()?;
    let mut fut = Box::pin(fut);
    {
        let _context = rt.enter();
        let waker = std::task::Waker::from(Arc::new(NoWake));
        let mut cx = std::task::Context::from_waker(&waker);
        if let std::task::Poll::Ready(result) = fut.as_mut().poll(&mut cx) {
            return result.map_err(to_pyerr);
        }
    }
    wait(py, fut)
}

/// Block asynchronous signals (SIGTERM, SIGINT, ...) in a thread hauler starts, so the
/// kernel delivers them to the application's threads: Python runs signal handlers on the
/// main thread only, and a SIGTERM taken by an engine thread would leave a main thread
/// sleeping in a system call unaware of it until the call returns. Faults raised by the
/// thread itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL) stay unblocked.
pub(crate) fn block_async_signals() {
    #[cfg(unix)]
    // SAFETY: the set is a local initialised by sigfillset before use, and
    // pthread_sigmask only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
