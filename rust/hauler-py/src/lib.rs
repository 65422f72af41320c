//! `hauler._native`: the PyO3 bindings. This crate only converts between Python and
//! hauler-core; the engine lives there.
#![warn(unreachable_pub)]

mod convert;
mod errors;
mod json;
mod logs;
mod runtime;
mod storage;
mod worker;

use pyo3::prelude::*;

/// The hauler engine (private: use the `hauler` package).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    storage::warm_up()?;
    logs::install();
    m.add_class::<storage::PyStorage>()?;
    m.add_class::<worker::PyWorker>()?;
    m.add_class::<worker::PyCancelFlag>()?;
    m.add_class::<worker::PyJobRun>()?;
    m.add_function(wrap_pyfunction!(storage::now_us, m)?)?;
    m.add_function(wrap_pyfunction!(storage::validate_retry, m)?)?;
    m.add_function(wrap_pyfunction!(storage::backoff_delay, m)?)?;
    m.add_function(wrap_pyfunction!(worker::wait_sync_threads, m)?)?;
    m.add_function(wrap_pyfunction!(storage::postgres_migrate, m)?)?;
    m.add_function(wrap_pyfunction!(storage::check_schedule, m)?)?;
    m.add_function(wrap_pyfunction!(logs::take_log_records, m)?)?;
    Ok(())
}
