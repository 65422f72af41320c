//! Conversions between engine records and the plain Python values of `_native.pyi`.

use hauler_core::model::{AttemptRecord, ErrorInfo, JobRecord, Timestamp};
use hauler_core::retry::{Backoff, BackoffKind, MaxRetries, RetryPolicy};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::hauler_err;
use crate::json::value_to_py;

/// The retry dict of `_native.pyi` → a validated policy.
pub(crate) fn retry_from_py(d: &Bound<'_, PyDict>) -> PyResult<RetryPolicy> {
    let item = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(key)?
            .ok_or_else(|| hauler_err("ConfigError", format!("retry policy is missing {key:?}")))
    };
    let bad = |key: &str, e: PyErr| hauler_err("ConfigError", format!("retry policy {key}: {e}"));
    let float =
        |key: &str| -> PyResult<f64> { item(key)?.extract::<f64>().map_err(|e| bad(key, e)) };
    let max_retries = item("max_retries")?
        .extract::<Option<i64>>()
        .map_err(|e| bad("max_retries", e))?;
    let max_retries = match max_retries {
        None => MaxRetries::Infinite,
        Some(n) => MaxRetries::Count(u32::try_from(n).map_err(|_| {
            hauler_err(
                "ConfigError",
                format!("max retries must be between 0 and {}, got {n}", u32::MAX),
            )
        })?),
    };
    let seconds = float("seconds")?;
    let kind_name = item("backoff")?
        .extract::<String>()
        .map_err(|e| bad("backoff", e))?;
    let kind = match kind_name.as_str() {
        "fixed" => BackoffKind::Fixed(seconds),
        "linear" => BackoffKind::Linear(seconds),
        "exponential" => BackoffKind::Exponential(seconds),
        other => {
            return Err(hauler_err(
                "ConfigError",
                format!("unknown backoff {other:?}; expected fixed, linear or exponential"),
            ))
        }
    };
    let backoff = Backoff {
        kind,
        max_delay: float("max_delay")?,
        jitter: float("jitter")?,
    };
    backoff.validate().map_err(crate::errors::to_pyerr)?;
    Ok(RetryPolicy {
        max_retries,
        backoff,
    })
}

fn ts(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_micros)
}

pub(crate) fn error_to_py<'py>(py: Python<'py>, e: &ErrorInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("kind", &e.kind)?;
    d.set_item("message", &e.message)?;
    d.set_item("traceback", &e.traceback)?;
    Ok(d)
}

fn attempt_to_py<'py>(py: Python<'py>, a: &AttemptRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("attempt", a.attempt)?;
    d.set_item("worker_id", &a.worker_id)?;
    d.set_item("started_at", a.started_at.as_micros())?;
    d.set_item("finished_at", a.finished_at.as_micros())?;
    d.set_item("outcome", a.outcome.as_str())?;
    d.set_item(
        "error",
        a.error.as_ref().map(|e| error_to_py(py, e)).transpose()?,
    )?;
    Ok(d)
}

/// A stored job → the `JobDict` of `_native.pyi`.
pub(crate) fn record_to_py<'py>(py: Python<'py>, r: &JobRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", r.id.to_string())?;
    d.set_item("name", &r.name)?;
    d.set_item("queue", &r.queue)?;
    // A payload that is not a JSON object (a damaged row; such a job fails when claimed)
    // is handed over as its raw text, so the job can still be inspected.
    match serde_json::from_str::<serde_json::Value>(&r.args) {
        Ok(v @ serde_json::Value::Object(_)) => d.set_item("args", value_to_py(py, &v)?)?,
        _ => d.set_item("args", &r.args)?,
    }
    d.set_item("status", r.status.as_str())?;
    d.set_item("attempt", r.attempt)?;
    d.set_item(
        "max_retries",
        match r.retry.max_retries {
            MaxRetries::Count(n) => Some(n),
            MaxRetries::Infinite => None,
        },
    )?;
    d.set_item("priority", r.priority)?;
    d.set_item("timeout_ms", r.timeout_ms)?;
    d.set_item("heartbeat_ms", r.heartbeat_ms)?;
    d.set_item("version", r.version)?;
    d.set_item("created_at", r.created_at.as_micros())?;
    d.set_item("run_at", r.run_at.as_micros())?;
    d.set_item("started_at", ts(r.started_at))?;
    d.set_item("finished_at", ts(r.finished_at))?;
    d.set_item("worker_id", &r.worker_id)?;
    d.set_item("lease_expires_at", ts(r.lease_expires_at))?;
    d.set_item("cancel_requested_at", ts(r.cancel_requested_at))?;
    d.set_item(
        "last_error",
        r.last_error
            .as_ref()
            .map(|e| error_to_py(py, e))
            .transpose()?,
    )?;
    let history = PyList::empty(py);
    for a in &r.history {
        history.append(attempt_to_py(py, a)?)?;
    }
    d.set_item("history", history)?;
    d.set_item("group_id", r.group_id.map(|g| g.to_string()))?;
    d.set_item("progress", r.progress)?;
    d.set_item("progress_message", &r.progress_message)?;
    d.set_item("unique_key", &r.unique_key)?;
    // State the job saved (a JSON object); damaged text is handed over as it is.
    match r
        .state
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        None => d.set_item("state", py.None())?,
        Some(Ok(v)) => d.set_item("state", value_to_py(py, &v)?)?,
        Some(Err(_)) => d.set_item("state", &r.state)?,
    }
    Ok(d)
}
