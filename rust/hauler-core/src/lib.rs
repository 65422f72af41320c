//! hauler-core: the hauler job engine, with no Python in it.
//!
//! The engine stores jobs through a [`storage::Storage`], claims them with a lease,
//! hands them to an [`worker::Executor`] (the Python bindings provide one), keeps the
//! lease alive with heartbeats, and records the outcome: completion, a retry at the time
//! the job's [`retry::RetryPolicy`] computes, or final failure.
#![warn(missing_docs, unreachable_pub)]

pub mod blocking;
pub mod clock;
pub mod config;
pub mod error;
pub mod group;
pub mod model;
pub mod queue;
pub mod retry;
pub mod schedule;
pub mod storage;
pub mod testhook;
pub mod worker;

pub use error::{Error, Result};
