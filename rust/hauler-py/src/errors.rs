//! The one mapping from engine errors to Python exceptions (classes in `hauler.errors`).

use hauler_core::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The exception class `name` from `hauler.errors`.
fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py
        .import("hauler.errors")?
        .getattr(name)?
        .cast_into::<PyType>()?)
}

/// Raise `name` from `hauler.errors` with `message`.
pub(crate) fn hauler_err(name: &str, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| match error_class(py, name) {
        Ok(cls) => PyErr::from_type(cls, message),
        Err(e) => PyRuntimeError::new_err(format!(
            "{message} (and hauler.errors.{name} failed to load: {e})"
        )),
    })
}

/// Convert an engine error; every variant maps to exactly one class.
pub(crate) fn to_pyerr(e: Error) -> PyErr {
    let name = match &e {
        Error::Storage(_) => "StorageError",
        Error::StorageClosed => "StorageClosedError",
        Error::Config(_) => "ConfigError",
        Error::Serialization(_) => "SerializationError",
        Error::JobNotFound(_) => "JobNotFoundError",
        Error::WorkerStopped => "WorkerStoppedError",
    };
    hauler_err(name, e.to_string())
}
