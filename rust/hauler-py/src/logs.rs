//! The engine's `log` records, carried to Python's `logging`.
//!
//! Engine threads never take the GIL: the logger only queues a record (dropping it if the
//! bounded queue is full), and a Python thread (`hauler._logs`) drains the queue with
//! [`take_log_records`] and hands each record to `logging.getLogger(...)`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{Level, LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;

/// Records waiting for Python; beyond this many, new ones are dropped and counted.
const CAPACITY: usize = 10_000;

/// One record: (Python logging level, logger name, message).
type Entry = (u8, String, String);

struct Bridge {
    tx: Sender<Entry>,
    rx: Receiver<Entry>,
    dropped: AtomicU64,
}

static BRIDGE: OnceLock<Bridge> = OnceLock::new();

fn bridge() -> &'static Bridge {
    BRIDGE.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
        Bridge {
            tx,
            rx,
            dropped: AtomicU64::new(0),
        }
    })
}

struct QueueLogger;

impl Log for QueueLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // hauler's own records from INFO up; other crates' (drivers, pools) from WARN up.
        let ours = metadata.target().starts_with("hauler");
        metadata.level() <= if ours { Level::Info } else { Level::Warn }
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => 40,
            Level::Warn => 30,
            Level::Info => 20,
            Level::Debug => 10,
            Level::Trace => 5,
        };
        let target = record.target();
        let name = match target.strip_prefix("hauler_core") {
            Some(rest) => format!("hauler.engine{}", rest.replace("::", ".")),
            None => format!("hauler.deps.{}", target.replace("::", ".")),
        };
        let b = bridge();
        if b.tx
            .try_send((level, name, record.args().to_string()))
            .is_err()
        {
            b.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static LOGGER: QueueLogger = QueueLogger;

/// Install the queueing logger (once; a logger installed by someone else is left alone).
pub(crate) fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Wait up to `timeout` seconds (GIL released) for engine log records; return those
/// queued, at most 1000, as `(level, logger_name, message)`, plus how many were dropped
/// since the last call because the queue was full.
#[pyfunction]
pub(crate) fn take_log_records(py: Python<'_>, timeout: f64) -> (Vec<Entry>, u64) {
    let b = bridge();
    let wait = Duration::from_secs_f64(timeout.clamp(0.0, 1.0));
    let mut out = Vec::new();
    if let Ok(first) = py.detach(|| b.rx.recv_timeout(wait)) {
        out.push(first);
        out.extend(b.rx.try_iter().take(999));
    }
    (out, b.dropped.swap(0, Ordering::Relaxed))
}
