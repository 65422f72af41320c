//! Retry counts and backoff delays.
//!
//! `MaxRetries::Count(n)` allows `n` retries after the first attempt, so at most `n + 1`
//! attempts (as the background-jobs crate counts). The delay before retry number `k`
//! (`k = 1` after the first failed attempt) is:
//!
//! | backoff            | delay (seconds)     |
//! |--------------------|---------------------|
//! | `Fixed(s)`         | `s`                 |
//! | `Linear(s)`        | `s * k`             |
//! | `Exponential(b)`   | `b ** k`            |
//!
//! then capped at `max_delay` (default one day), then, with `jitter = j` (0 to 1),
//! multiplied by a uniform random factor in `[1 - j, 1 + j]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many times a failed job is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxRetries {
    /// Retry up to this many times after the first attempt.
    Count(u32),
    /// Retry forever.
    Infinite,
}

impl MaxRetries {
    /// Whether a job that has made `attempts` attempts may make another.
    pub fn allows_another(self, attempts: u32) -> bool {
        match self {
            MaxRetries::Count(n) => attempts <= n,
            MaxRetries::Infinite => true,
        }
    }
}

/// The shape of the delay between retries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// The same delay every time, in seconds.
    Fixed(f64),
    /// `seconds * retry_number`.
    Linear(f64),
    /// `base ** retry_number` seconds.
    Exponential(f64),
}

/// The default cap on a retry delay: one day.
pub const DEFAULT_MAX_DELAY_SECS: f64 = 86_400.0;

/// A backoff policy: the shape, a cap, and optional jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// The shape.
    pub kind: BackoffKind,
    /// The largest delay, in seconds.
    pub max_delay: f64,
    /// Random spread as a fraction of the delay, from 0 (none) to 1.
    pub jitter: f64,
}

impl Backoff {
    /// A backoff of `kind` with the default cap and no jitter.
    pub fn new(kind: BackoffKind) -> Self {
        Backoff {
            kind,
            max_delay: DEFAULT_MAX_DELAY_SECS,
            jitter: 0.0,
        }
    }

    /// Check the numbers, naming each problem.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let (label, v) = match self.kind {
            BackoffKind::Fixed(s) => ("Backoff.fixed seconds", s),
            BackoffKind::Linear(s) => ("Backoff.linear seconds", s),
            BackoffKind::Exponential(b) => ("Backoff.exponential base", b),
        };
        if !v.is_finite() || v < 0.0 {
            problems.push(format!("{label} must be a finite number >= 0, got {v}"));
        }
        if matches!(self.kind, BackoffKind::Exponential(b) if b.is_finite() && b < 1.0) {
            problems.push(format!("Backoff.exponential base must be >= 1, got {v}"));
        }
        if !self.max_delay.is_finite() || self.max_delay < 0.0 {
            problems.push(format!(
                "max_delay must be a finite number >= 0, got {}",
                self.max_delay
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(format!(
                "jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), before jitter.
    pub fn base_delay_secs(&self, retry: u32) -> f64 {
        let k = f64::from(retry.max(1));
        let raw = match self.kind {
            BackoffKind::Fixed(s) => s,
            BackoffKind::Linear(s) => s * k,
            BackoffKind::Exponential(b) => b.powf(k),
        };
        if raw.is_nan() {
            self.max_delay
        } else {
            raw.min(self.max_delay).max(0.0)
        }
    }

    /// The delay before retry number `retry`, with jitter drawn from `unit` (a number in
    /// `[0, 1)`; pass `rand::random()` in production and a fixed value in tests).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let base = self.base_delay_secs(retry);
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// Everything that decides whether and when a failed job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// How many retries.
    pub max_retries: MaxRetries,
    /// How long to wait before each.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: MaxRetries::Count(5),
            backoff: Backoff::new(BackoffKind::Exponential(2.0)),
        }
    }
}

impl RetryPolicy {
    /// After attempt number `attempt` failed: the delay before the next attempt, or `None`
    /// when the retries are used up.
    pub fn next_delay(&self, attempt: u32, unit: f64) -> Option<Duration> {
        self.max_retries
            .allows_another(attempt)
            .then(|| self.backoff.delay(attempt, unit))
    }

    /// Stored form (JSON text).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse the stored form.
    pub fn from_json(s: &str) -> Result<Self> {
        Ok(serde_json::from_str(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(b: Backoff, k: u32) -> f64 {
        b.delay(k, 0.5).as_secs_f64()
    }

    #[test]
    fn formulas() {
        let fixed = Backoff::new(BackoffKind::Fixed(7.0));
        assert_eq!([secs(fixed, 1), secs(fixed, 5)], [7.0, 7.0]);
        let linear = Backoff::new(BackoffKind::Linear(3.0));
        assert_eq!(
            [secs(linear, 1), secs(linear, 2), secs(linear, 4)],
            [3.0, 6.0, 12.0]
        );
        let exp = Backoff::new(BackoffKind::Exponential(2.0));
        assert_eq!(
            [secs(exp, 1), secs(exp, 2), secs(exp, 10)],
            [2.0, 4.0, 1024.0]
        );
    }

    #[test]
    fn cap_and_jitter() {
        let mut b = Backoff::new(BackoffKind::Exponential(10.0));
        b.max_delay = 60.0;
        assert_eq!(secs(b, 5), 60.0);
        assert_eq!(
            b.delay(1000, 0.0).as_secs_f64(),
            60.0,
            "huge exponents are capped"
        );
        b.jitter = 0.5;
        assert_eq!(b.delay(5, 0.0).as_secs_f64(), 30.0);
        assert_eq!(b.delay(5, 1.0).as_secs_f64(), 90.0);
    }

    #[test]
    fn max_retries_counts_retries_after_the_first_attempt() {
        let p = RetryPolicy {
            max_retries: MaxRetries::Count(2),
            backoff: Backoff::new(BackoffKind::Fixed(1.0)),
        };
        assert!(p.next_delay(1, 0.0).is_some());
        assert!(p.next_delay(2, 0.0).is_some());
        assert!(
            p.next_delay(3, 0.0).is_none(),
            "3 attempts = first + 2 retries"
        );
        let none = RetryPolicy {
            max_retries: MaxRetries::Count(0),
            ..p
        };
        assert!(none.next_delay(1, 0.0).is_none());
        let inf = RetryPolicy {
            max_retries: MaxRetries::Infinite,
            ..p
        };
        assert!(inf.next_delay(u32::MAX, 0.0).is_some());
    }

    #[test]
    fn validate_names_problems() {
        let mut b = Backoff::new(BackoffKind::Fixed(-1.0));
        b.jitter = 2.0;
        let msg = b.validate().unwrap_err().to_string();
        assert!(
            msg.contains("Backoff.fixed seconds") && msg.contains("jitter"),
            "{msg}"
        );
        assert!(Backoff::new(BackoffKind::Exponential(0.5))
            .validate()
            .is_err());
    }

    #[test]
    fn json_round_trip() {
        let p = RetryPolicy::default();
        assert_eq!(RetryPolicy::from_json(&p.to_json()).unwrap(), p);
    }
}
