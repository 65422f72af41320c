//! `_native.Worker`: a worker pool whose executor runs Python jobs.
//!
//! Sync jobs run on the pool's own OS threads (as many as its total worker count), each
//! holding the GIL only while Python runs. Async jobs are handed to the pool's asyncio loop
//! by one submitter thread; the loop reports back through a callback. No tokio thread ever
//! takes the GIL.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hauler_core::config::{PoolConfig, QueueConfig};
use hauler_core::model::{ClaimedJob, ErrorInfo, JobId, LeaseToken};
use hauler_core::queue::Queue;
use hauler_core::storage::{FinishOutcome, JobProgressSetParams};
use hauler_core::worker::{CancelFlag, Completion, Executor, Outcome, WorkerPool};
use pyo3::prelude::*;

use crate::errors::hauler_err;
use crate::json::from_json;
use crate::runtime::{runtime, wait};
use crate::storage::PyStorage;

type Handles = Arc<Mutex<HashMap<JobId, Py<PyAny>>>>;

enum AsyncMsg {
    Run(Box<ClaimedJob>, Completion),
    Abandon(JobId),
}

/// A recorded outcome on its way to the pool's hooks: the job and `"completed"`,
/// `"retry"` or `"failed"`.
type Report = (JobId, &'static str);

/// Where recorded outcomes go when the pool has lifecycle hooks for them.
struct Reports {
    tx: Mutex<Option<Sender<Report>>>,
    /// The kinds of outcome a hook wants; the others are not sent.
    kinds: HashSet<String>,
}

struct PyExecutor {
    sync_tx: Mutex<Option<Sender<(ClaimedJob, Completion)>>>,
    async_tx: Mutex<Option<Sender<AsyncMsg>>>,
    async_names: Arc<HashSet<String>>,
    /// `None` when no hook wants recorded outcomes: then nothing is sent at all.
    reports: Option<Reports>,
}

/// How long `stop` waits for the hooks of the last recorded outcomes to be called.
const REPORT_DRAIN: Duration = Duration::from_secs(5);

fn stopped_outcome() -> Outcome {
    Outcome::Failure {
        error: ErrorInfo::engine("WorkerStopped", "the worker stopped before running the job"),
        permanent: false,
    }
}

impl Executor for PyExecutor {
    fn execute(&self, job: ClaimedJob, done: Completion) {
        if self.async_names.contains(&job.name) {
            let tx = self
                .async_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match tx {
                Some(tx) => {
                    if let Err(e) = tx.send(AsyncMsg::Run(Box::new(job), done)) {
                        if let AsyncMsg::Run(_, done) = e.into_inner() {
                            done.send(stopped_outcome());
                        }
                    }
                }
                None => done.send(stopped_outcome()),
            }
        } else {
            let tx = self
                .sync_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match tx {
                Some(tx) => {
                    if let Err(e) = tx.send((job, done)) {
                        e.into_inner().1.send(stopped_outcome());
                    }
                }
                None => done.send(stopped_outcome()),
            }
        }
    }

    fn abandon(&self, job_id: JobId) {
        if let Some(tx) = self
            .async_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(AsyncMsg::Abandon(job_id));
        }
    }

    /// An async job's task is cancelled (its outcome still comes back); a sync job only
    /// sees its flag, set by the engine before this call.
    fn cancel(&self, job_id: JobId) {
        self.abandon(job_id);
    }

    /// Hand the outcome to the hooks thread, if a hook wants this kind.
    fn recorded(&self, job_id: JobId, outcome: &FinishOutcome) {
        let Some(reports) = &self.reports else {
            return;
        };
        let kind = match outcome {
            FinishOutcome::Completed => "completed",
            FinishOutcome::Retry { .. } => "retry",
            FinishOutcome::Failed { .. } => "failed",
            FinishOutcome::Snoozed { .. } => return,
        };
        if !reports.kinds.contains(kind) {
            return;
        }
        if let Some(tx) = reports
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send((job_id, kind));
        }
    }
}

/// A running job's cancel flag, as Python sees it (`_native.CancelFlag`).
#[pyclass(name = "CancelFlag", module = "hauler._native", frozen)]
pub(crate) struct PyCancelFlag(CancelFlag);

#[pymethods]
impl PyCancelFlag {
    /// Whether a cancel of the job was requested.
    fn is_set(&self) -> bool {
        self.0.is_set()
    }
}

/// One run of one job, as Python sees it (`_native.JobRun`): what it needs to save its
/// progress and state under its lease.
#[pyclass(name = "JobRun", module = "hauler._native", frozen)]
pub(crate) struct PyJobRun {
    queue: Arc<Queue>,
    id: JobId,
    lease: LeaseToken,
    state: Option<String>,
}

impl PyJobRun {
    fn new(queue: &Arc<Queue>, job: &ClaimedJob) -> Self {
        PyJobRun {
            queue: queue.clone(),
            id: job.id,
            lease: job.lease,
            state: job.state.clone(),
        }
    }

    fn save(
        &self,
        py: Python<'_>,
        progress: Option<(u8, Option<String>)>,
        state: Option<String>,
    ) -> PyResult<bool> {
        let storage = self.queue.storage().clone();
        let params = JobProgressSetParams {
            id: self.id,
            lease: self.lease,
            progress,
            state,
            now: self.queue.clock().now(),
        };
        wait(py, async move { storage.job_progress_set(params).await })
    }
}

#[pymethods]
impl PyJobRun {
    /// The state saved by an earlier attempt (JSON text), as claimed.
    #[getter]
    fn claimed_state(&self) -> Option<String> {
        self.state.clone()
    }

    /// Save progress (0 to 100) and its message; false if the lease was lost.
    #[pyo3(signature = (percent, message = None))]
    fn set_progress(&self, py: Python<'_>, percent: u8, message: Option<String>) -> PyResult<bool> {
        if percent > 100 {
            return Err(hauler_err(
                "ConfigError",
                format!("progress must be between 0 and 100, got {percent}"),
            ));
        }
        self.save(py, Some((percent, message)), None)
    }

    /// Save the state (a JSON object as text); false if the lease was lost.
    fn set_state(&self, py: Python<'_>, state: String) -> PyResult<bool> {
        self.save(py, None, Some(state))
    }
}

impl PyExecutor {
    /// Drop the channels: threads finish their current job and exit.
    fn shutdown(&self) {
        self.sync_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.async_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = &self.reports {
            r.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }
}

/// `None` → success; `(kind, message, traceback, permanent)` → failure; an `int` →
/// snoozed for that many milliseconds.
fn parse_outcome(obj: &Bound<'_, PyAny>) -> Outcome {
    if obj.is_none() {
        return Outcome::Success;
    }
    if let Ok(ms) = obj.extract::<u64>() {
        return Outcome::Snooze {
            delay: Duration::from_millis(ms),
        };
    }
    match obj.extract::<(String, String, Option<String>, bool)>() {
        Ok((kind, message, traceback, permanent)) => Outcome::Failure {
            error: ErrorInfo {
                kind,
                message,
                traceback,
            },
            permanent,
        },
        Err(e) => Outcome::Failure {
            error: ErrorInfo::engine("WorkerError", format!("malformed job outcome: {e}")),
            permanent: false,
        },
    }
}

fn py_failure(py: Python<'_>, e: &PyErr, permanent: bool) -> Outcome {
    let kind = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let traceback = e.traceback(py).and_then(|tb| tb.format().ok());
    Outcome::Failure {
        error: ErrorInfo {
            kind,
            message: e.value(py).to_string(),
            traceback,
        },
        permanent,
    }
}

fn panic_outcome() -> Outcome {
    Outcome::Failure {
        error: ErrorInfo::engine(
            "WorkerError",
            "internal error (panic) while running the job",
        ),
        permanent: false,
    }
}

fn run_sync_job(
    py: Python<'_>,
    run_sync: &Py<PyAny>,
    job: &ClaimedJob,
    cancel: CancelFlag,
    queue: &Arc<Queue>,
) -> Outcome {
    let args = match from_json(py, &job.args) {
        Ok(a) => a,
        Err(e) => return py_failure(py, &e, true),
    };
    let cancel = match Py::new(py, PyCancelFlag(cancel)) {
        Ok(c) => c,
        Err(e) => return py_failure(py, &e, false),
    };
    let run = match Py::new(py, PyJobRun::new(queue, job)) {
        Ok(r) => r,
        Err(e) => return py_failure(py, &e, false),
    };
    match run_sync.call1(
        py,
        (
            job.name.as_str(),
            args,
            job.id.to_string(),
            job.attempt,
            job.version,
            cancel,
            run,
        ),
    ) {
        Ok(r) => parse_outcome(r.bind(py)),
        Err(e) => py_failure(py, &e, false),
    }
}

/// The number of live sync threads in the process, and a way to wait for it to reach zero.
struct LiveThreads {
    count: Mutex<usize>,
    zero: Condvar,
}

/// Every pool's sync threads, counted so interpreter exit can wait for them to leave Python.
static LIVE: LiveThreads = LiveThreads {
    count: Mutex::new(0),
    zero: Condvar::new(),
};

impl LiveThreads {
    fn started(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn exited(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.zero.notify_all();
        }
    }

    /// Wait until no thread is left; false if `limit` passed first.
    fn wait(&self, limit: Duration) -> bool {
        let n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (_n, t) = self
            .zero
            .wait_timeout_while(n, limit, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        !t.timed_out()
    }
}

fn sync_thread(
    rx: Receiver<(ClaimedJob, Completion)>,
    run_sync: Py<PyAny>,
    queue: Arc<Queue>,
    async_names: Arc<HashSet<String>>,
) {
    // One thread state for the thread's whole life (not one per job): attaching costs a
    // thread-state allocation, and `threading.local` values survive from job to job. The
    // GIL is released while waiting for work.
    //
    // A job already waiting when one ends runs at once, under the same GIL hold: a burst of
    // short jobs costs one release and re-take of the GIL, not one per job. (Python still
    // hands the GIL to other threads that ask for it, every switch interval.)
    Python::attach(|py| {
        let mut waiting = None;
        loop {
            let next = match waiting.take() {
                Some(m) => Ok(m),
                None => py.detach(|| rx.recv()),
            };
            let Ok((job, done)) = next else { break };
            let cancel = done.cancel_flag();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                run_sync_job(py, &run_sync, &job, cancel, &queue)
            }))
            .unwrap_or_else(|_| panic_outcome());
            // The queue's next prefetched sync job runs here at once, on this worker
            // slot and under this hold of the GIL; else one already handed to the pool.
            waiting = done
                .send_and_next(outcome, &|next| !async_names.contains(&next.name))
                .or_else(|| rx.try_recv().ok());
        }
        drop(run_sync);
    });
    // Counted out only once detached for good: from here on the interpreter may finalize.
    LIVE.exited();
}

/// Call `on_recorded(job_id, kind)` for each recorded outcome, one at a time, until the
/// pool shuts down and every report sent before is handled. `_done` is dropped on exit,
/// which tells `stop` the hooks are through.
fn report_thread(rx: Receiver<Report>, on_recorded: Py<PyAny>, _done: Sender<()>) {
    Python::attach(|py| {
        while let Ok((id, kind)) = py.detach(|| rx.recv()) {
            let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
                on_recorded.call1(py, (id.to_string(), kind))
            }));
            if let Ok(Err(e)) = called {
                tracing_error(py, &e);
            }
        }
        drop(on_recorded);
    });
    LIVE.exited();
}

/// Called by the asyncio loop when an async job ends.
#[pyclass(frozen)]
struct DoneCallback {
    done: Mutex<Option<Completion>>,
    job_id: JobId,
    handles: Handles,
}

#[pymethods]
impl DoneCallback {
    fn __call__(&self, outcome: &Bound<'_, PyAny>) {
        let outcome = parse_outcome(outcome);
        if let Some(done) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            done.send(outcome);
        }
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.job_id);
    }
}

fn submit_async_job(
    py: Python<'_>,
    submit: &Py<PyAny>,
    handles: &Handles,
    queue: &Arc<Queue>,
    job: ClaimedJob,
    done: Completion,
) {
    let args = match from_json(py, &job.args) {
        Ok(a) => a,
        Err(e) => return done.send(py_failure(py, &e, true)),
    };
    let cancel = match Py::new(py, PyCancelFlag(done.cancel_flag())) {
        Ok(c) => c,
        Err(e) => return done.send(py_failure(py, &e, false)),
    };
    let run = match Py::new(py, PyJobRun::new(queue, &job)) {
        Ok(r) => r,
        Err(e) => return done.send(py_failure(py, &e, false)),
    };
    let cb = DoneCallback {
        done: Mutex::new(Some(done)),
        job_id: job.id,
        handles: handles.clone(),
    };
    let cb = match Py::new(py, cb) {
        Ok(cb) => cb,
        Err(e) => return tracing_error(py, &e),
    };
    match submit.call1(
        py,
        (
            job.name.as_str(),
            args,
            job.id.to_string(),
            job.attempt,
            job.version,
            cb.clone_ref(py),
            cancel,
            run,
        ),
    ) {
        Ok(handle) => {
            handles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.id, handle);
        }
        Err(e) => {
            let outcome = py_failure(py, &e, false);
            if let Some(done) = cb
                .get()
                .done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                done.send(outcome);
            }
        }
    }
}

fn tracing_error(py: Python<'_>, e: &PyErr) {
    e.clone_ref(py).print(py);
}

fn async_thread(rx: Receiver<AsyncMsg>, submit: Py<PyAny>, queue: Arc<Queue>) {
    let handles: Handles = Arc::new(Mutex::new(HashMap::new()));
    while let Ok(first) = rx.recv() {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Python::attach(|py| {
                // Take every message already waiting under this one GIL hold.
                let mut msg = Some(first);
                while let Some(m) = msg.take().or_else(|| rx.try_recv().ok()) {
                    match m {
                        AsyncMsg::Run(job, done) => {
                            submit_async_job(py, &submit, &handles, &queue, *job, done)
                        }
                        AsyncMsg::Abandon(id) => {
                            let handle = handles
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&id);
                            if let Some(h) = handle {
                                if let Err(e) = h.call_method0(py, "cancel") {
                                    tracing_error(py, &e);
                                }
                            }
                        }
                    }
                }
            })
        }));
    }
}

/// A running worker pool (see `_native.pyi`).
#[pyclass(name = "Worker", module = "hauler._native", frozen)]
pub(crate) struct PyWorker {
    pool: Arc<WorkerPool>,
    executor: Arc<PyExecutor>,
    /// The hooks thread's id, and a channel that disconnects when it has exited.
    reports_done: Mutex<Option<(std::thread::ThreadId, Receiver<()>)>>,
}

fn spawn_thread(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> PyResult<std::thread::ThreadId> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::runtime::block_async_signals();
            f()
        })
        .map(|h| h.thread().id())
        .map_err(|e| hauler_err("ConfigError", format!("cannot start a worker thread: {e}")))
}

#[pymethods]
impl PyWorker {
    #[new]
    #[pyo3(signature = (storage, queues, names, run_sync, submit_async, async_names, *, worker_id, poll_interval_ms = None, reclaim_interval_ms = 1000, retention_ms = None, on_recorded = None, recorded_kinds = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        storage: &Bound<'_, PyStorage>,
        queues: HashMap<String, i64>,
        names: HashMap<String, String>,
        run_sync: Py<PyAny>,
        submit_async: Option<Py<PyAny>>,
        async_names: Vec<String>,
        worker_id: String,
        poll_interval_ms: Option<i64>,
        reclaim_interval_ms: i64,
        retention_ms: Option<i64>,
        on_recorded: Option<Py<PyAny>>,
        recorded_kinds: Vec<String>,
    ) -> PyResult<Self> {
        let mut queue_configs = Vec::new();
        let mut sync_threads = 0usize;
        let async_names: Arc<HashSet<String>> = Arc::new(async_names.into_iter().collect());
        let mut queue_list: Vec<_> = queues.into_iter().collect();
        queue_list.sort();
        for (queue, count) in queue_list {
            let concurrency = usize::try_from(count).map_err(|_| {
                hauler_err(
                    "ConfigError",
                    format!("queue {queue:?}: worker count must be at least 1, got {count}"),
                )
            })?;
            let mut qnames: Vec<String> = names
                .iter()
                .filter(|(_, q)| **q == queue)
                .map(|(n, _)| n.clone())
                .collect();
            qnames.sort();
            if qnames.iter().any(|n| !async_names.contains(n)) {
                sync_threads += concurrency;
            }
            queue_configs.push(QueueConfig {
                name: queue,
                concurrency,
                names: qnames,
            });
        }
        let ms = |name: &str, v: i64| {
            u64::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    hauler_err(
                        "ConfigError",
                        format!("{name} must be positive, got {v} ms"),
                    )
                })
        };
        let mut config = PoolConfig::new(worker_id, queue_configs);
        config.poll_interval = poll_interval_ms
            .map(|v| ms("poll_interval", v))
            .transpose()?;
        config.reclaim_interval = ms("reclaim_interval", reclaim_interval_ms)?;
        config.retention = retention_ms.map(|v| ms("retention", v)).transpose()?;
        // Completed jobs go between `retention` and twice that after they finished, and at
        // most a minute late.
        if let Some(keep) = config.retention {
            config.retention_interval = keep.min(Duration::from_secs(60));
        }
        config.validate().map_err(crate::errors::to_pyerr)?;
        if !async_names.is_empty() && submit_async.is_none() {
            return Err(hauler_err(
                "ConfigError",
                "async jobs registered but no asyncio loop given",
            ));
        }

        let (sync_tx, sync_rx) = crossbeam_channel::unbounded();
        let (async_tx, async_rx) = crossbeam_channel::unbounded();
        let queue = storage.get().queue.clone();
        for i in 0..sync_threads {
            let rx = sync_rx.clone();
            let f = run_sync.clone_ref(py);
            let q = queue.clone();
            let a = async_names.clone();
            LIVE.started();
            if let Err(e) =
                spawn_thread(format!("hauler-sync-{i}"), move || sync_thread(rx, f, q, a))
            {
                LIVE.exited();
                return Err(e);
            }
        }
        if let Some(submit) = submit_async {
            let q = queue.clone();
            spawn_thread("hauler-async-submit".into(), move || {
                async_thread(async_rx, submit, q)
            })?;
        }
        if let Some(kind) = recorded_kinds
            .iter()
            .find(|k| !["completed", "retry", "failed"].contains(&k.as_str()))
        {
            return Err(hauler_err(
                "ConfigError",
                format!("unknown recorded outcome kind {kind:?}"),
            ));
        }
        let mut reports = None;
        let mut reports_done = None;
        if let Some(on_recorded) = on_recorded.filter(|_| !recorded_kinds.is_empty()) {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (done_tx, done_rx) = crossbeam_channel::bounded(0);
            LIVE.started();
            match spawn_thread("hauler-hooks".into(), move || {
                report_thread(rx, on_recorded, done_tx)
            }) {
                Ok(id) => reports_done = Some((id, done_rx)),
                Err(e) => {
                    LIVE.exited();
                    return Err(e);
                }
            }
            reports = Some(Reports {
                tx: Mutex::new(Some(tx)),
                kinds: recorded_kinds.into_iter().collect(),
            });
        }
        let executor = Arc::new(PyExecutor {
            sync_tx: Mutex::new(Some(sync_tx)),
            async_tx: Mutex::new(Some(async_tx)),
            async_names,
            reports,
        });
        let rt = runtime()?;
        let pool = {
            let _guard = rt.enter();
            WorkerPool::start(queue, config, executor.clone()).map_err(crate::errors::to_pyerr)?
        };
        Ok(PyWorker {
            pool: Arc::new(pool),
            executor,
            reports_done: Mutex::new(reports_done),
        })
    }

    /// This pool's id.
    #[getter]
    fn worker_id(&self) -> String {
        self.pool.worker_id().to_owned()
    }

    /// Whether the pool is still running.
    #[getter]
    fn running(&self) -> bool {
        self.pool.is_running()
    }

    /// How many jobs are executing now.
    fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    /// Stop claiming, wait up to `timeout` seconds for running jobs, release the rest.
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        if !timeout.is_finite() || timeout < 0.0 {
            return Err(hauler_err(
                "ConfigError",
                format!("stop timeout must be >= 0 seconds, got {timeout}"),
            ));
        }
        // The stop runs as its own task: if the wait is interrupted (Ctrl-C, SIGTERM), the
        // drain and the release still complete, and a later stop() or join() waits for it.
        let pool = self.pool.clone();
        let stopping =
            runtime()?.spawn(async move { pool.stop(Duration::from_secs_f64(timeout)).await });
        let result = wait(py, async move {
            stopping.await.unwrap_or_else(|e| {
                Err(hauler_core::Error::Storage(format!(
                    "stopping the worker failed: {e}"
                )))
            })
        });
        self.executor.shutdown();
        if result.is_ok() {
            self.drain_reports(py);
        }
        result
    }

    /// Wait until the pool has stopped; False if `timeout` passed first.
    #[pyo3(signature = (timeout = None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let pool = self.pool.clone();
        let limit = match timeout {
            Some(t) if !t.is_finite() || t < 0.0 => {
                return Err(hauler_err(
                    "ConfigError",
                    format!("join timeout must be >= 0 seconds, got {t}"),
                ))
            }
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        wait(py, async move {
            Ok(match limit {
                Some(d) => tokio::time::timeout(d, pool.join()).await.is_ok(),
                None => {
                    pool.join().await;
                    true
                }
            })
        })
    }
}

impl PyWorker {
    /// Wait (up to [`REPORT_DRAIN`]) for the hooks thread to call the hooks of the
    /// outcomes recorded before the stop; it goes on in the background past that. Not
    /// from the hooks thread itself (a hook that stops its own pool).
    fn drain_reports(&self, py: Python<'_>) {
        let taken = self
            .reports_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((thread, done)) = taken else {
            return;
        };
        if std::thread::current().id() == thread {
            return;
        }
        if let Ok(()) | Err(RecvTimeoutError::Timeout) =
            py.detach(|| done.recv_timeout(REPORT_DRAIN))
        {
            log::warn!(
                "worker {}: lifecycle hooks still running {:?} after the stop; they go on in \
                 the background",
                self.pool.worker_id(),
                REPORT_DRAIN
            );
        }
    }
}

/// Wait until the sync threads of every pool in the process have returned from Python and
/// exited (so call it after stopping them all); False if `timeout` passed first. Threads still running a job that was released or
/// timed out finish it first (its result is ignored).
#[pyfunction]
#[pyo3(signature = (timeout = None))]
pub(crate) fn wait_sync_threads(py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
    let limit = match timeout {
        Some(t) if !t.is_finite() || t < 0.0 => {
            return Err(hauler_err(
                "ConfigError",
                format!("wait_sync_threads timeout must be >= 0 seconds, got {t}"),
            ))
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let deadline = limit.map(|d| std::time::Instant::now() + d);
    // Wake up every 100 ms to let Ctrl-C through.
    loop {
        let step = Duration::from_millis(100);
        let slice = match deadline {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .min(step),
            None => step,
        };
        if py.detach(|| LIVE.wait(slice)) {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
        py.check_signals()?;
    }
}
