//! `_native.Storage`: one storage handle, shared by the producers and workers of a process.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hauler_core::group::{GroupRecord, NewGroup};
use hauler_core::model::{
    ConcurrencyLimit, GroupId, JobId, JobLimits, JobStatus, NewJob, RateLimit, Timestamp,
};
use hauler_core::queue::Queue;
use hauler_core::retry::RetryPolicy;
use hauler_core::schedule::{
    CatchUp, JobTemplate, NewSchedule, ScheduleRecord, ScheduleSpec, Ticker,
};
use hauler_core::storage::{
    postgres, JobCountParams, JobDeleteParams, JobFilter, JobListParams, JobPruneParams,
    MemoryStorage, PostgresOptions, PostgresStorage, SqliteOptions, SqliteStorage, Synchronous,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple, PyType};

use crate::convert::{record_to_py, retry_from_py};
use crate::errors::{hauler_err, to_pyerr};
use crate::json::{to_json, to_json_fields};
use crate::runtime::{runtime, wait, wait_held};

/// A storage handle (see `_native.pyi`).
#[pyclass(name = "Storage", module = "hauler._native", frozen)]
pub(crate) struct PyStorage {
    pub(crate) queue: Arc<Queue>,
    kind: &'static str,
    closed: AtomicBool,
    /// The schema of a PostgreSQL storage (for transactional enqueue).
    pg_schema: Option<String>,
}

fn parse_id(s: &str) -> PyResult<JobId> {
    JobId::from_str(s).map_err(to_pyerr)
}

fn parse_statuses(statuses: &[String]) -> PyResult<Vec<JobStatus>> {
    statuses
        .iter()
        .map(|s| JobStatus::from_str(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(to_pyerr)
}

/// The `FilterDict` of `_native.pyi` → a [`JobFilter`].
fn filter_from_py(d: &Bound<'_, PyDict>) -> PyResult<JobFilter> {
    let item = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(key)?
            .ok_or_else(|| hauler_err("ConfigError", format!("filter is missing {key:?}")))
    };
    let ids: Option<Vec<String>> = item("ids")?.extract()?;
    let statuses: Vec<String> = item("statuses")?.extract()?;
    let time = |key: &str| -> PyResult<Option<Timestamp>> {
        Ok(item(key)?
            .extract::<Option<i64>>()?
            .map(Timestamp::from_micros))
    };
    Ok(JobFilter {
        ids: ids
            .map(|ids| {
                ids.iter()
                    .map(|i| parse_id(i))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?,
        statuses: parse_statuses(&statuses)?,
        name: item("name")?.extract()?,
        queue: item("queue")?.extract()?,
        created_from: time("created_from")?,
        created_to: time("created_to")?,
        args_contains: item("args_contains")?.extract()?,
        group: item("group")?
            .extract::<Option<String>>()?
            .map(|g| GroupId::from_str(&g).map_err(to_pyerr))
            .transpose()?,
    })
}

/// A job tuple → the template of a job stored later (a schedule's tick, a group's
/// `on_complete`).
fn template(job: NewJob) -> JobTemplate {
    JobTemplate {
        name: job.name,
        queue: job.queue,
        args: job.args,
        priority: job.priority,
        retry: job.retry,
        timeout_ms: job.timeout_ms,
        heartbeat_ms: job.heartbeat_ms,
        version: job.version,
        limits: job.limits,
    }
}

/// A stored group → the `GroupDict` of `_native.pyi`.
fn group_to_py<'py>(py: Python<'py>, g: &GroupRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", g.id.to_string())?;
    d.set_item("name", &g.name)?;
    d.set_item("concurrency", g.concurrency)?;
    d.set_item(
        "on_complete_name",
        g.on_complete.as_ref().map(|t| t.name.as_str()),
    )?;
    d.set_item(
        "on_complete_job_id",
        g.on_complete_job_id.map(|id| id.to_string()),
    )?;
    d.set_item("created_at", g.created_at.as_micros())?;
    d.set_item("finished_at", g.finished_at.map(|t| t.as_micros()))?;
    d.set_item("pending", g.counts.pending)?;
    d.set_item("running", g.counts.running)?;
    d.set_item("completed", g.counts.completed)?;
    d.set_item("failed", g.counts.failed)?;
    d.set_item("cancelled", g.counts.cancelled)?;
    d.set_item("status", g.status().as_str())?;
    Ok(d)
}

fn millis(name: &str, ms: i64) -> PyResult<Duration> {
    u64::try_from(ms)
        .ok()
        .filter(|&m| m > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            hauler_err(
                "ConfigError",
                format!("{name} must be a positive number of milliseconds, got {ms}"),
            )
        })
}

/// The constants a job class gives every job of it, checked.
struct JobConstants {
    name: String,
    queue: String,
    priority: i32,
    retry: RetryPolicy,
    timeout_ms: Option<u64>,
    heartbeat_ms: u64,
    version: u32,
}

impl JobConstants {
    /// Check the constants of `_NewJobTuple` and `_JobClassTuple` (items 0, 1 and 3-6
    /// of the former, with the version).
    fn new(
        name: String,
        queue: String,
        priority: i64,
        retry: &Bound<'_, PyAny>,
        timeout_ms: Option<i64>,
        heartbeat_ms: i64,
        version: i64,
    ) -> PyResult<Self> {
        let retry = retry
            .cast::<PyDict>()
            .map_err(|_| hauler_err("ConfigError", "retry policy must be a dict"))?;
        let heartbeat_ms = millis("HEARTBEAT_INTERVAL", heartbeat_ms)?.as_millis() as u64;
        let timeout_ms = timeout_ms
            .map(|ms| millis("TIMEOUT", ms).map(|d| d.as_millis() as u64))
            .transpose()?;
        let version = u32::try_from(version)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                hauler_err(
                    "ConfigError",
                    format!("VERSION must be a positive int, got {version}"),
                )
            })?;
        let priority = i32::try_from(priority).map_err(|_| {
            hauler_err(
                "ConfigError",
                format!("PRIORITY must fit in 32 bits, got {priority}"),
            )
        })?;
        Ok(JobConstants {
            name,
            queue,
            priority,
            retry: retry_from_py(retry)?,
            timeout_ms,
            heartbeat_ms,
            version,
        })
    }

    /// A job of these constants with arguments `args` (JSON text, checked by
    /// [`JobConstants::args`]).
    fn job(
        &self,
        args: String,
        unique_key: Option<String>,
        limits: JobLimits,
        run_at_us: Option<i64>,
    ) -> NewJob {
        NewJob {
            id: JobId::new(),
            unique_key,
            limits,
            name: self.name.clone(),
            queue: self.queue.clone(),
            args,
            priority: self.priority,
            retry: self.retry,
            timeout_ms: self.timeout_ms,
            heartbeat_ms: self.heartbeat_ms,
            run_at: run_at_us.map(Timestamp::from_micros),
            version: self.version,
        }
    }

    /// The arguments of a job as JSON text (`json`, or why they could not be), refused
    /// if they take more than `max_payload` bytes.
    fn args(&self, json: Result<String, String>, max_payload: Option<usize>) -> PyResult<String> {
        let name = &self.name;
        let args_json = json.map_err(|e| {
            hauler_err(
                "SerializationError",
                format!("job {name:?}: arguments cannot be serialized: {e}"),
            )
        })?;
        if let Some(max) = max_payload.filter(|&max| args_json.len() > max) {
            return Err(hauler_err(
                "SerializationError",
                format!(
                    "job {name:?}: arguments take {} bytes as JSON, over the limit of {max} \
                     bytes (max_payload_bytes); store large data elsewhere and queue a \
                     reference to it",
                    args_json.len()
                ),
            ));
        }
        Ok(args_json)
    }
}

/// One job tuple of `push_many` → a `NewJob` (arguments serialized here, with the GIL),
/// refused if its arguments take more than `max_payload` bytes as JSON.
fn new_job(t: &Bound<'_, PyAny>, max_payload: Option<usize>) -> PyResult<NewJob> {
    let t = t
        .cast::<PyTuple>()
        .map_err(|_| hauler_err("ConfigError", "each job must be a tuple"))?;
    if t.len() != 10 {
        return Err(hauler_err(
            "ConfigError",
            format!("a job tuple has 10 items, got {}", t.len()),
        ));
    }
    let constants = JobConstants::new(
        t.get_item(0)?.extract()?,
        t.get_item(1)?.extract()?,
        t.get_item(3)?.extract()?,
        &t.get_item(4)?,
        t.get_item(5)?.extract()?,
        t.get_item(6)?.extract()?,
        t.get_item(8)?.extract()?,
    )?;
    let args = constants.args(to_json(&t.get_item(2)?), max_payload)?;
    let (unique_key, limits) = limits_from_py(&t.get_item(9)?)?;
    Ok(constants.job(args, unique_key, limits, t.get_item(7)?.extract()?))
}

/// A job class as `Storage.enqueue` sees it: its `_JobClassTuple`, checked.
struct JobClass<'py> {
    /// The class (compared by identity).
    ty: Bound<'py, PyType>,
    constants: JobConstants,
    /// The stored field names, in order.
    fields: Vec<Bound<'py, PyString>>,
    /// `encode(job)`: the fields as a JSON-compatible dict.
    encode: Bound<'py, PyAny>,
    /// `limits(job)`, or None when the class sets no limits.
    limits: Option<Bound<'py, PyAny>>,
}

impl<'py> JobClass<'py> {
    fn new(ty: Bound<'py, PyType>, t: &Bound<'py, PyAny>) -> PyResult<Self> {
        let t = t
            .cast::<PyTuple>()
            .ok()
            .filter(|t| t.len() == 10)
            .ok_or_else(|| hauler_err("ConfigError", "a job class tuple has 10 items"))?;
        let constants = JobConstants::new(
            t.get_item(0)?.extract()?,
            t.get_item(1)?.extract()?,
            t.get_item(2)?.extract()?,
            &t.get_item(3)?,
            t.get_item(4)?.extract()?,
            t.get_item(5)?.extract()?,
            t.get_item(6)?.extract()?,
        )?;
        let fields = t
            .get_item(7)?
            .try_iter()?
            .map(|f| Ok(f?.cast_into::<PyString>()?))
            .collect::<PyResult<Vec<_>>>()?;
        let limits = Some(t.get_item(9)?).filter(|l| !l.is_none());
        Ok(JobClass {
            ty,
            constants,
            fields,
            encode: t.get_item(8)?,
            limits,
        })
    }

    /// `job` → a `NewJob`. Fields that are all plain values (exactly str, int, float,
    /// bool or None, as the codec passes them through) are serialized straight from the
    /// object; otherwise the class's encoder builds the dict (and raises for a value it
    /// cannot store), as `Job._encode` does.
    fn job(
        &self,
        job: &Bound<'py, PyAny>,
        run_at_us: Option<i64>,
        max_payload: Option<usize>,
    ) -> PyResult<NewJob> {
        let json = match to_json_fields(job, &self.fields) {
            Some(json) => Ok(json),
            None => to_json(&self.encode.call1((job,))?),
        };
        let args = self.constants.args(json, max_payload)?;
        let (unique_key, limits) = match &self.limits {
            Some(f) => limits_from_py(&f.call1((job,))?)?,
            None => (None, JobLimits::default()),
        };
        Ok(self.constants.job(args, unique_key, limits, run_at_us))
    }
}

/// Builds the ids `Storage.enqueue` returns: instances of a `uuid.UUID` subclass with a
/// `duplicate` slot, their slots set as `UUID.__init__` sets them, without parsing text.
struct IdMaker<'py> {
    ids: Bound<'py, PyType>,
    alloc: pyo3::ffi::allocfunc,
    safe_unknown: Bound<'py, PyAny>,
}

impl<'py> IdMaker<'py> {
    fn new(ids: &Bound<'py, PyType>) -> PyResult<Self> {
        let py = ids.py();
        let uuid = py.import(intern!(py, "uuid"))?;
        if !ids.is_subclass(&uuid.getattr(intern!(py, "UUID"))?)?
            || !ids.hasattr(intern!(py, "duplicate"))?
        {
            return Err(hauler_err(
                "ConfigError",
                "ids must be a uuid.UUID subclass with a duplicate slot",
            ));
        }
        // SAFETY: `ids` is a live type object; the slot is its allocator (the one
        // `object.__new__` calls), inherited from `object` unless a base sets another.
        let slot = unsafe { pyo3::ffi::PyType_GetSlot(ids.as_type_ptr(), pyo3::ffi::Py_tp_alloc) };
        let alloc = if slot.is_null() {
            pyo3::ffi::PyType_GenericAlloc as pyo3::ffi::allocfunc
        } else {
            // SAFETY: the `Py_tp_alloc` slot holds an `allocfunc`.
            unsafe { std::mem::transmute::<*mut std::ffi::c_void, pyo3::ffi::allocfunc>(slot) }
        };
        Ok(IdMaker {
            ids: ids.clone(),
            alloc,
            safe_unknown: uuid
                .getattr(intern!(py, "SafeUUID"))?
                .getattr(intern!(py, "unknown"))?,
        })
    }

    /// `object.__new__(ids)` with `int`, `is_safe` and `duplicate` set; allocated
    /// directly (no argument tuple), as id lists are long and every allocation counts
    /// towards Python's next garbage collection.
    fn make(&self, id: JobId, duplicate: bool) -> PyResult<Bound<'py, PyAny>> {
        let py = self.ids.py();
        // SAFETY: the type's own allocator, called as `object.__new__` calls it; the
        // result is a new reference (or NULL with an exception set).
        let obj = unsafe {
            let ptr = (self.alloc)(self.ids.as_type_ptr(), 0);
            Bound::from_owned_ptr_or_err(py, ptr)?
        };
        let int = id.0.as_u128().into_pyobject(py)?;
        let duplicate = PyBool::new(py, duplicate);
        for (name, value) in [
            (intern!(py, "int"), int.as_any()),
            (intern!(py, "is_safe"), &self.safe_unknown),
            (intern!(py, "duplicate"), duplicate.as_any()),
        ] {
            // SAFETY: three live objects; `object.__setattr__`, which `UUID.__init__`
            // uses because `UUID.__setattr__` refuses every assignment.
            let rc = unsafe {
                pyo3::ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr())
            };
            if rc != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(obj)
    }
}

/// The `LimitsDict` of `_native.pyi` (or None) → the unique key and the [`JobLimits`].
fn limits_from_py(d: &Bound<'_, PyAny>) -> PyResult<(Option<String>, JobLimits)> {
    if d.is_none() {
        return Ok((None, JobLimits::default()));
    }
    let d = d
        .cast::<PyDict>()
        .map_err(|_| hauler_err("ConfigError", "job limits must be a dict or None"))?;
    let item = |key: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        Ok(d.get_item(key)?.filter(|v| !v.is_none()))
    };
    let positive = |what: &str, v: i64| -> PyResult<u32> {
        u32::try_from(v).ok().filter(|&n| n > 0).ok_or_else(|| {
            hauler_err(
                "ConfigError",
                format!("{what} must be a positive int that fits in 32 bits, got {v}"),
            )
        })
    };
    let unique_key: Option<String> = item("unique_key")?.map(|v| v.extract()).transpose()?;
    let unique_states: Vec<String> = item("unique_states")?
        .map(|v| v.extract())
        .transpose()?
        .unwrap_or_default();
    let concurrency = match item("concurrency_key")? {
        Some(key) => {
            let limit: i64 = item("concurrency_limit")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or(1);
            Some(ConcurrencyLimit {
                key: key.extract()?,
                limit: positive("concurrency limit", limit)?,
            })
        }
        None => None,
    };
    let rate = match item("rate_key")? {
        Some(key) => {
            let limit: i64 = item("rate_limit")?.map_or(Ok(0), |v| v.extract())?;
            let window: i64 = item("rate_window_ms")?.map_or(Ok(0), |v| v.extract())?;
            Some(RateLimit {
                key: key.extract()?,
                limit: positive("rate limit", limit)?,
                window_ms: u64::from(positive("rate window (ms)", window)?),
            })
        }
        None => None,
    };
    let limits = JobLimits {
        unique_states: parse_statuses(&unique_states)?,
        concurrency,
        rate,
    };
    limits.validate().map_err(to_pyerr)?;
    Ok((unique_key, limits))
}

impl PyStorage {
    fn new(storage: Arc<dyn hauler_core::storage::Storage>, kind: &'static str) -> Self {
        PyStorage {
            queue: Arc::new(Queue::new(storage)),
            kind,
            closed: AtomicBool::new(false),
            pg_schema: None,
        }
    }
}

#[pymethods]
impl PyStorage {
    /// An in-process storage with no persistence.
    #[staticmethod]
    fn memory() -> Self {
        PyStorage::new(Arc::new(MemoryStorage::new()), "memory")
    }

    /// Open (creating if needed) the SQLite database at `path`.
    #[staticmethod]
    #[pyo3(signature = (path, *, synchronous = "normal", busy_timeout_ms = 5000, poll_interval_ms = 100))]
    fn sqlite(
        py: Python<'_>,
        path: String,
        synchronous: &str,
        busy_timeout_ms: i64,
        poll_interval_ms: i64,
    ) -> PyResult<Self> {
        let opts = SqliteOptions {
            synchronous: Synchronous::from_str(synchronous).map_err(to_pyerr)?,
            busy_timeout: millis("busy_timeout", busy_timeout_ms)?,
            poll_interval: millis("poll_interval", poll_interval_ms)?,
        };
        let storage = py
            .detach(|| SqliteStorage::open(&path, opts))
            .map_err(to_pyerr)?;
        Ok(PyStorage::new(Arc::new(storage), "sqlite"))
    }

    /// Connect to PostgreSQL at `dsn`, applying hauler's migrations unless `migrate` is
    /// false (then the schema must be up to date).
    #[staticmethod]
    #[pyo3(signature = (dsn, *, schema = "hauler", pool_size = 10, poll_interval_ms = 1000, connect_timeout_ms = 10000, listen = true, migrate = true))]
    #[allow(clippy::too_many_arguments)]
    fn postgres(
        py: Python<'_>,
        dsn: String,
        schema: &str,
        pool_size: i64,
        poll_interval_ms: i64,
        connect_timeout_ms: i64,
        listen: bool,
        migrate: bool,
    ) -> PyResult<Self> {
        let opts = postgres_options(schema, pool_size, poll_interval_ms, connect_timeout_ms)?;
        let opts = PostgresOptions {
            listen,
            migrate,
            ..opts
        };
        let schema = opts.schema.clone();
        let storage = wait(
            py,
            async move { PostgresStorage::connect(&dsn, opts).await },
        )?;
        Ok(PyStorage {
            pg_schema: Some(schema),
            ..PyStorage::new(Arc::new(storage), "postgres")
        })
    }

    /// `"memory"`, `"sqlite"` or `"postgres"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Store job objects in one transaction; once durable, return their ids (instances of
    /// `ids`) in order. `class_of(type(job))` gives each job class's `_JobClassTuple`,
    /// asked once per class and call.
    #[pyo3(signature = (jobs, class_of, ids, *, run_at_us = None, max_payload_bytes = None))]
    fn enqueue<'py>(
        &self,
        py: Python<'py>,
        jobs: &Bound<'py, PyAny>,
        class_of: &Bound<'py, PyAny>,
        ids: &Bound<'py, PyType>,
        run_at_us: Option<i64>,
        max_payload_bytes: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let maker = IdMaker::new(ids)?;
        let mut classes: Vec<JobClass<'py>> = Vec::new();
        let mut last = 0;
        let mut new = Vec::with_capacity(jobs.len().unwrap_or(0));
        for job in jobs.try_iter()? {
            let job = job?;
            let ty = job.get_type();
            if !classes.get(last).is_some_and(|c| c.ty.is(&ty)) {
                last = match classes.iter().position(|c| c.ty.is(&ty)) {
                    Some(i) => i,
                    None => {
                        let t = class_of.call1((&ty,))?;
                        classes.push(JobClass::new(ty, &t)?);
                        classes.len() - 1
                    }
                };
            }
            new.push(classes[last].job(&job, run_at_us, max_payload_bytes)?);
        }
        if new.is_empty() {
            return Ok(PyList::empty(py));
        }
        let queue = self.queue.clone();
        let fut = async move { queue.insert_many(new).await };
        let inserted = if self.kind == "memory" {
            wait_held(py, fut)?
        } else {
            wait(py, fut)?
        };
        let out = PyList::empty(py);
        for j in &inserted {
            out.append(maker.make(j.id, j.duplicate)?)?;
        }
        Ok(out)
    }

    /// Store jobs in one transaction; once durable, return per job its id and whether it
    /// was a duplicate (the id is then the existing job's).
    #[pyo3(signature = (jobs, *, max_payload_bytes = None))]
    fn push_many(
        &self,
        py: Python<'_>,
        jobs: &Bound<'_, PyAny>,
        max_payload_bytes: Option<usize>,
    ) -> PyResult<Vec<(String, bool)>> {
        let mut new = Vec::new();
        for item in jobs.try_iter()? {
            new.push(new_job(&item?, max_payload_bytes)?);
        }
        let queue = self.queue.clone();
        let fut = async move { queue.insert_many(new).await };
        let inserted = if self.kind == "memory" {
            wait_held(py, fut)?
        } else {
            wait(py, fut)?
        };
        Ok(inserted
            .iter()
            .map(|j| (j.id.to_string(), j.duplicate))
            .collect())
    }

    /// Store a group and its member jobs in one transaction; (group id, member ids).
    #[pyo3(signature = (name, jobs, *, concurrency = None, on_complete = None, max_payload_bytes = None))]
    fn group_push(
        &self,
        py: Python<'_>,
        name: String,
        jobs: &Bound<'_, PyAny>,
        concurrency: Option<i64>,
        on_complete: Option<&Bound<'_, PyAny>>,
        max_payload_bytes: Option<usize>,
    ) -> PyResult<(String, Vec<String>)> {
        let concurrency = concurrency
            .map(|c| {
                u32::try_from(c).ok().filter(|&c| c > 0).ok_or_else(|| {
                    hauler_err(
                        "ConfigError",
                        format!("concurrency must be a positive int or None, got {c}"),
                    )
                })
            })
            .transpose()?;
        let mut members = Vec::new();
        for item in jobs.try_iter()? {
            members.push(new_job(&item?, max_payload_bytes)?);
        }
        if members.is_empty() {
            return Err(hauler_err(
                "ConfigError",
                format!("group {name:?} needs at least one job"),
            ));
        }
        let on_complete = on_complete
            .map(|t| new_job(t, max_payload_bytes).map(template))
            .transpose()?;
        let group = NewGroup {
            id: GroupId::new(),
            name,
            concurrency,
            on_complete,
        };
        let id = group.id;
        let queue = self.queue.clone();
        let ids = wait(py, async move { queue.push_group(group, members).await })?;
        Ok((id.to_string(), ids.iter().map(JobId::to_string).collect()))
    }

    /// One group with its members' counts, or None.
    fn group_get<'py>(
        &self,
        py: Python<'py>,
        group_id: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let id = GroupId::from_str(group_id).map_err(to_pyerr)?;
        let storage = self.queue.storage().clone();
        let rec = wait(py, async move { storage.group_get(id).await })?;
        rec.map(|g| group_to_py(py, &g)).transpose()
    }

    /// Transactional enqueue on PostgreSQL: the statement (psycopg `%(name)s` style), its
    /// parameters and the new ids, for the caller to execute on its own connection; for a
    /// batch with unique jobs also the holder lookup and each job's key.
    #[pyo3(signature = (jobs, *, max_payload_bytes = None))]
    #[allow(clippy::type_complexity)]
    fn pg_insert<'py>(
        &self,
        py: Python<'py>,
        jobs: &Bound<'py, PyAny>,
        max_payload_bytes: Option<usize>,
    ) -> PyResult<(
        String,
        Bound<'py, PyDict>,
        Vec<String>,
        Option<(String, Vec<Option<String>>)>,
    )> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(hauler_err("StorageClosedError", "the storage is closed"));
        }
        let schema = self.pg_schema.as_deref().ok_or_else(|| {
            hauler_err(
                "ConfigError",
                format!(
                    "enqueueing on your own connection needs a PostgresStorage, not {}",
                    self.kind
                ),
            )
        })?;
        let mut new = Vec::new();
        for item in jobs.try_iter()? {
            new.push(new_job(&item?, max_payload_bytes)?);
        }
        let ids: Vec<String> = new.iter().map(|j| j.id.to_string()).collect();
        let keys: Vec<Option<String>> = new.iter().map(|j| j.unique_key.clone()).collect();
        let now = self.queue.clock().now();
        let rows = postgres::JobInsertRows::new(new, now).map_err(to_pyerr)?;
        let (sql, unique) = if keys.iter().any(Option::is_some) {
            let (insert, holders) =
                postgres::job_insert_unique_statements(schema).map_err(to_pyerr)?;
            (insert, Some((psycopg_placeholders(&holders), keys)))
        } else {
            (
                postgres::job_insert_statement(schema).map_err(to_pyerr)?,
                None,
            )
        };
        let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339();
        let params = PyDict::new(py);
        let uuids: Vec<String> = rows.ids.iter().map(ToString::to_string).collect();
        params.set_item("p1", uuids)?;
        params.set_item("p2", rows.names)?;
        params.set_item("p3", rows.queues)?;
        params.set_item("p4", rows.args)?;
        params.set_item("p5", rows.statuses)?;
        params.set_item("p6", rows.priorities)?;
        params.set_item("p7", rows.max_retries)?;
        params.set_item("p8", rows.retries)?;
        params.set_item("p9", rows.timeouts_ms)?;
        params.set_item("p10", rows.heartbeats_ms)?;
        params.set_item("p11", rows.versions)?;
        params.set_item("p12", rows.unique_keys)?;
        let now = chrono::DateTime::from_timestamp_micros(now.as_micros())
            .map(|t| time(&t))
            .ok_or_else(|| hauler_err("StorageError", "the clock is out of range"))?;
        params.set_item("p13", now)?;
        params.set_item("p14", rows.run_ats.iter().map(time).collect::<Vec<_>>())?;
        params.set_item("p15", postgres::notify_channel(schema))?;
        params.set_item("p16", rows.unique_states)?;
        params.set_item("p17", rows.concurrency_keys)?;
        params.set_item("p18", rows.concurrency_limits)?;
        params.set_item("p19", rows.rate_keys)?;
        params.set_item("p20", rows.rate_limits)?;
        params.set_item("p21", rows.rate_windows_ms)?;
        Ok((psycopg_placeholders(&sql), params, ids, unique))
    }

    /// One job, or None.
    fn get<'py>(&self, py: Python<'py>, job_id: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let id = parse_id(job_id)?;
        let storage = self.queue.storage().clone();
        let rec = wait(py, async move { storage.job_get(id).await })?;
        rec.map(|r| record_to_py(py, &r)).transpose()
    }

    /// Jobs matching `filter`, newest first, older than `cursor`.
    #[pyo3(signature = (filter, cursor, limit))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        filter: &Bound<'py, PyDict>,
        cursor: Option<&str>,
        limit: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let filter = filter_from_py(filter)?;
        let limit = u32::try_from(limit)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| {
                hauler_err(
                    "ConfigError",
                    format!("limit must be a positive int, got {limit}"),
                )
            })?;
        let cursor = cursor.map(parse_id).transpose()?;
        let storage = self.queue.storage().clone();
        let params = JobListParams {
            filter,
            cursor,
            limit,
        };
        let recs = wait(py, async move { storage.job_list(params).await })?;
        let out = PyList::empty(py);
        for r in &recs {
            out.append(record_to_py(py, r)?)?;
        }
        Ok(out)
    }

    /// How many jobs match `filter`.
    fn count(&self, py: Python<'_>, filter: &Bound<'_, PyDict>) -> PyResult<u64> {
        let filter = filter_from_py(filter)?;
        let storage = self.queue.storage().clone();
        wait(py, async move {
            storage.job_count(JobCountParams { filter }).await
        })
    }

    /// Cancel the jobs matching `filter`: (cancelled at once, asked to stop).
    fn cancel(&self, py: Python<'_>, filter: &Bound<'_, PyDict>) -> PyResult<(u64, u64)> {
        let filter = filter_from_py(filter)?;
        let queue = self.queue.clone();
        let result = wait(py, async move { queue.cancel_many(filter).await })?;
        Ok((result.cancelled, result.requested))
    }

    /// Retry the failed and cancelled jobs matching `filter`; how many.
    fn retry(&self, py: Python<'_>, filter: &Bound<'_, PyDict>) -> PyResult<u64> {
        let filter = filter_from_py(filter)?;
        let queue = self.queue.clone();
        wait(py, async move { queue.retry_many(filter).await })
    }

    /// Delete the jobs matching `filter` that are not running; how many.
    fn delete(&self, py: Python<'_>, filter: &Bound<'_, PyDict>) -> PyResult<u64> {
        let filter = filter_from_py(filter)?;
        let storage = self.queue.storage().clone();
        wait(py, async move {
            storage.job_delete(JobDeleteParams { filter }).await
        })
    }

    /// Delete the jobs of final `statuses` that finished before `finished_before` (µs), in
    /// batches of `batch`; how many.
    #[pyo3(signature = (statuses, finished_before, *, batch = 1000))]
    fn prune(
        &self,
        py: Python<'_>,
        statuses: Vec<String>,
        finished_before: i64,
        batch: u32,
    ) -> PyResult<u64> {
        let statuses = parse_statuses(&statuses)?;
        if batch == 0 {
            return Err(hauler_err("ConfigError", "batch must be at least 1"));
        }
        let storage = self.queue.storage().clone();
        wait(py, async move {
            let mut total = 0;
            loop {
                let n = storage
                    .job_prune(JobPruneParams {
                        statuses: statuses.clone(),
                        finished_before: Timestamp::from_micros(finished_before),
                        limit: batch,
                    })
                    .await?;
                total += n;
                if n < u64::from(batch) {
                    return Ok(total);
                }
            }
        })
    }

    /// (queue, status, count) triples.
    fn counts(&self, py: Python<'_>) -> PyResult<Vec<(String, String, u64)>> {
        let storage = self.queue.storage().clone();
        let counts = wait(py, async move { storage.job_counts().await })?;
        Ok(counts
            .into_iter()
            .map(|c| (c.queue, c.status.as_str().to_owned(), c.count))
            .collect())
    }

    /// Store a schedule entry (or update the one of that name); the stored entry.
    #[pyo3(signature = (name, spec, catch_up, job, *, max_payload_bytes = None))]
    fn schedule_add<'py>(
        &self,
        py: Python<'py>,
        name: String,
        spec: &Bound<'py, PyDict>,
        catch_up: &str,
        job: &Bound<'py, PyAny>,
        max_payload_bytes: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        if name.is_empty() || name.contains('\0') {
            return Err(hauler_err(
                "ConfigError",
                format!("a schedule name must be non-empty text without NUL, got {name:?}"),
            ));
        }
        let spec = spec_from_py(spec)?;
        let catch_up = CatchUp::from_str(catch_up).map_err(to_pyerr)?;
        let job = new_job(job, max_payload_bytes)?;
        let schedule = NewSchedule {
            name,
            spec,
            catch_up,
            job: template(job),
        };
        let queue = self.queue.clone();
        let record = wait(py, async move { queue.schedule_add(schedule).await })?;
        schedule_to_py(py, &record)
    }

    /// Delete a schedule entry; whether it existed.
    fn schedule_delete(&self, py: Python<'_>, name: String) -> PyResult<bool> {
        let queue = self.queue.clone();
        wait(py, async move { queue.schedule_delete(&name).await })
    }

    /// Store a schedule entry's job now; its id, or None if there is no such entry.
    fn schedule_run_now(&self, py: Python<'_>, name: String) -> PyResult<Option<String>> {
        let queue = self.queue.clone();
        let id = wait(py, async move { queue.schedule_run_now(&name).await })?;
        Ok(id.map(|id| id.to_string()))
    }

    /// Every schedule entry, by name.
    fn schedule_list<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let storage = self.queue.storage().clone();
        let entries = wait(py, async move { storage.schedule_list().await })?;
        entries.iter().map(|r| schedule_to_py(py, r)).collect()
    }

    /// Close the storage; later calls raise StorageClosedError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let storage = self.queue.storage().clone();
        wait(py, async move { storage.close().await })?;
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("<hauler._native.Storage {}>", self.kind)
    }
}

/// A schedule spec dict (`{"cron": expr, "timezone": tz}` or `{"every_ms": n}`).
fn spec_from_py(d: &Bound<'_, PyDict>) -> PyResult<ScheduleSpec> {
    let spec = if let Some(expr) = d.get_item("cron")? {
        let timezone = match d.get_item("timezone")? {
            Some(tz) => tz.extract()?,
            None => "UTC".to_owned(),
        };
        ScheduleSpec::Cron {
            expr: expr.extract()?,
            timezone,
        }
    } else if let Some(ms) = d.get_item("every_ms")? {
        let ms: i64 = ms.extract()?;
        ScheduleSpec::Every {
            interval_ms: millis("interval", ms)?.as_millis() as u64,
        }
    } else {
        return Err(hauler_err(
            "ConfigError",
            "a schedule spec needs \"cron\" or \"every_ms\"",
        ));
    };
    Ticker::new(&spec).map_err(to_pyerr)?;
    Ok(spec)
}

/// Check a schedule spec (see `spec_from_py`): a malformed cron expression, an unknown
/// time zone or a bad interval raises ConfigError naming the bad part.
#[pyfunction]
pub(crate) fn check_schedule(spec: &Bound<'_, PyDict>) -> PyResult<()> {
    spec_from_py(spec).map(|_| ())
}

fn schedule_to_py<'py>(py: Python<'py>, r: &ScheduleRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &r.name)?;
    match &r.spec {
        ScheduleSpec::Cron { expr, timezone } => {
            d.set_item("cron", expr)?;
            d.set_item("timezone", timezone)?;
            d.set_item("every_ms", py.None())?;
        }
        ScheduleSpec::Every { interval_ms } => {
            d.set_item("cron", py.None())?;
            d.set_item("timezone", py.None())?;
            d.set_item("every_ms", interval_ms)?;
        }
    }
    d.set_item("catch_up", r.catch_up.as_str())?;
    d.set_item("job_name", &r.job.name)?;
    d.set_item("queue", &r.job.queue)?;
    d.set_item("args", &r.job.args)?;
    d.set_item("next_run_at", r.next_run_at.as_micros())?;
    d.set_item(
        "last_enqueued_at",
        r.last_enqueued_at.map(Timestamp::as_micros),
    )?;
    d.set_item("created_at", r.created_at.as_micros())?;
    d.set_item("updated_at", r.updated_at.as_micros())?;
    Ok(d)
}

/// The engine's clock, in microseconds since the epoch.
#[pyfunction]
pub(crate) fn now_us() -> i64 {
    Timestamp::now().as_micros()
}

/// Raise ConfigError naming every problem in a retry policy dict.
#[pyfunction]
pub(crate) fn validate_retry(retry: &Bound<'_, PyDict>) -> PyResult<()> {
    retry_from_py(retry).map(|_| ())
}

/// The delay in seconds before retry `retry_number` with jitter draw `unit`.
#[pyfunction]
pub(crate) fn backoff_delay(
    retry: &Bound<'_, PyDict>,
    retry_number: u32,
    unit: f64,
) -> PyResult<f64> {
    Ok(retry_from_py(retry)?
        .backoff
        .delay(retry_number, unit)
        .as_secs_f64())
}

/// Make sure the runtime can start (called at import so a failure is reported early).
pub(crate) fn warm_up() -> PyResult<()> {
    runtime().map(|_| ())
}

fn postgres_options(
    schema: &str,
    pool_size: i64,
    poll_interval_ms: i64,
    connect_timeout_ms: i64,
) -> PyResult<PostgresOptions> {
    let pool_size = usize::try_from(pool_size)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            hauler_err(
                "ConfigError",
                format!("pool_size must be at least 1, got {pool_size}"),
            )
        })?;
    Ok(PostgresOptions {
        schema: schema.to_owned(),
        pool_size,
        poll_interval: millis("poll_interval", poll_interval_ms)?,
        connect_timeout: millis("connect_timeout", connect_timeout_ms)?,
        ..PostgresOptions::default()
    })
}

/// Create or upgrade hauler's schema in the PostgreSQL database at `dsn`; returns the
/// schema version.
#[pyfunction]
#[pyo3(signature = (dsn, *, schema = "hauler", connect_timeout_ms = 10000))]
pub(crate) fn postgres_migrate(
    py: Python<'_>,
    dsn: String,
    schema: &str,
    connect_timeout_ms: i64,
) -> PyResult<u32> {
    let opts = postgres_options(schema, 1, 1000, connect_timeout_ms)?;
    wait(py, async move {
        hauler_core::storage::postgres::migrate(&dsn, &opts).await
    })
}

/// `$12` → `%(p12)s`: psycopg's named placeholders (a literal `%` is doubled).
fn psycopg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str("%%"),
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("%(p");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push_str(")s");
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::psycopg_placeholders;

    #[test]
    fn placeholders_become_named_and_percent_is_escaped() {
        assert_eq!(
            psycopg_placeholders("SELECT $1::int, $12, '5%', $2"),
            "SELECT %(p1)s::int, %(p12)s, '5%%', %(p2)s"
        );
    }
}
