//! The engine's error type.

use thiserror::Error as ThisError;

/// Every error the engine reports. The Python bindings map each variant to one
/// exception class under `hauler.HaulerError`.
#[derive(Debug, ThisError)]
pub enum Error {
    /// The storage failed (I/O, lock timeout, corrupt file, lost connection...).
    #[error("storage error: {0}")]
    Storage(String),
    /// The storage was closed and can no longer be used.
    #[error("storage is closed")]
    StorageClosed,
    /// A configuration value is invalid; the message lists every problem.
    #[error("{0}")]
    Config(String),
    /// A job payload could not be serialized or deserialized.
    #[error("{0}")]
    Serialization(String),
    /// No job with this id exists in the storage.
    #[error("no job with id {0}")]
    JobNotFound(String),
    /// The worker was already stopped.
    #[error("worker is stopped")]
    WorkerStopped,
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(format!("sqlite: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialization(format!("invalid JSON: {e}"))
    }
}
