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
    m.add_function(wrap_pyfunction!(reseed_after_fork, m)?)?;
    Ok(())
}

/// Reseed this thread's random generator (the one job ids and lease tokens draw from) in a
/// child process right after `fork`: the child inherits the parent's generator state, and
/// both would otherwise draw the same "random" ids (`os.register_at_fork` calls it).
#[pyfunction]
fn reseed_after_fork() {
    // A failed reseed keeps the old state: nothing better can be done here.
    let _ = uuid_rand::rng().reseed();
}
