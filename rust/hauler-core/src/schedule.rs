//! Periodic jobs: cron expressions and fixed intervals, and the tick times they produce.
//!
//! A schedule entry is stored (see [`crate::storage::Storage::schedule_upsert`]) with the
//! run time of its next tick. Every worker that knows the entry's job computes the same
//! tick times from the same [`ScheduleSpec`], so the storage can deduplicate ticks by
//! (entry name, tick time): a tick is taken by moving the stored next run time from that
//! tick to the following one, which succeeds for exactly one caller.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{JobId, JobLimits, NewJob, Timestamp};
use crate::retry::RetryPolicy;

/// A missed tick older than this is "missed" for [`CatchUp::None`]: skipped, not run late.
pub const CATCH_UP_GRACE: Duration = Duration::from_secs(10);

/// When an entry's ticks come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// A cron expression (5 fields, or 6 with seconds first, or an `@hourly`-style alias),
    /// evaluated in an IANA time zone.
    Cron {
        /// The expression as given.
        expr: String,
        /// The IANA zone name (`UTC`, `Europe/Paris`...).
        timezone: String,
    },
    /// Every `interval_ms` milliseconds, at multiples of the interval since the Unix epoch
    /// (so every process computes the same ticks).
    Every {
        /// The interval, at least 1 ms.
        interval_ms: u64,
    },
}

/// What a worker does with ticks that passed while no worker ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Enqueue one job for them all, at once.
    #[default]
    One,
    /// Skip them; the next tick runs on time.
    None,
}

impl CatchUp {
    /// `"one"` or `"none"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CatchUp::One => "one",
            CatchUp::None => "none",
        }
    }
}

impl FromStr for CatchUp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "one" => Ok(CatchUp::One),
            "none" => Ok(CatchUp::None),
            _ => Err(Error::Config(format!(
                "catch_up must be \"one\" or \"none\", not {s:?}"
            ))),
        }
    }
}

/// The job an entry enqueues at each tick (a [`NewJob`] without id and run time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTemplate {
    /// The job kind's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// The serialized fields: a JSON object, as text.
    pub args: String,
    /// Priority (higher first).
    pub priority: i32,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Per-attempt time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// The version of the job's class.
    pub version: u32,
    /// The concurrency and rate limits of each job it stores (a template has no unique
    /// key: each tick already stores one job).
    #[serde(default)]
    pub limits: JobLimits,
}

impl JobTemplate {
    /// A fresh job from this template, runnable at once.
    pub fn to_job(&self) -> NewJob {
        NewJob {
            id: JobId::new(),
            name: self.name.clone(),
            queue: self.queue.clone(),
            args: self.args.clone(),
            priority: self.priority,
            retry: self.retry,
            timeout_ms: self.timeout_ms,
            heartbeat_ms: self.heartbeat_ms,
            run_at: None,
            version: self.version,
            unique_key: None,
            limits: JobLimits {
                unique_states: Vec::new(),
                ..self.limits.clone()
            },
        }
    }
}

/// A schedule entry to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    /// The entry's unique name.
    pub name: String,
    /// When it ticks.
    pub spec: ScheduleSpec,
    /// What to do with missed ticks.
    pub catch_up: CatchUp,
    /// The job each tick enqueues.
    pub job: JobTemplate,
}

/// A stored schedule entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    /// The entry's unique name.
    pub name: String,
    /// When it ticks.
    pub spec: ScheduleSpec,
    /// What to do with missed ticks.
    pub catch_up: CatchUp,
    /// The job each tick enqueues.
    pub job: JobTemplate,
    /// The next tick not yet taken (it may be past if no worker ran).
    pub next_run_at: Timestamp,
    /// When a tick (or `run_now`) last enqueued a job.
    pub last_enqueued_at: Option<Timestamp>,
    /// When the entry was first stored.
    pub created_at: Timestamp,
    /// When its definition was last written.
    pub updated_at: Timestamp,
}

/// A parsed [`ScheduleSpec`] that computes tick times.
#[derive(Debug, Clone)]
pub enum Ticker {
    /// A cron expression in a zone.
    Cron(Box<Cron>, Tz),
    /// A fixed interval, in microseconds.
    Every(i64),
}

const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day of month",
    "month",
    "day of week",
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
}

/// Parse a cron expression, naming the bad field when it is malformed.
fn parse_cron(expr: &str) -> Result<Cron> {
    let parser = parser();
    let err = match parser.parse(expr) {
        Ok(cron) => return Ok(cron),
        Err(e) => e,
    };
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let bad = |detail: String| Error::Config(format!("invalid cron expression {expr:?}: {detail}"));
    if expr.trim_start().starts_with('@') {
        return Err(bad(format!(
            "unknown alias {:?} (expected @yearly, @annually, @monthly, @weekly, @daily, \
             @midnight or @hourly)",
            expr.trim()
        )));
    }
    if !(5..=6).contains(&fields.len()) {
        return Err(bad(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with \
             seconds first, got {}",
            fields.len()
        )));
    }
    // Find the field at fault: each one alone, the others `*`.
    let offset = 6 - fields.len();
    for (i, field) in fields.iter().enumerate() {
        let mut probe = vec!["*"; fields.len()];
        probe[i] = field;
        if let Err(e) = parser.parse(&probe.join(" ")) {
            return Err(bad(format!(
                "{} field {field:?}: {e}",
                FIELD_NAMES[i + offset]
            )));
        }
    }
    Err(bad(err.to_string()))
}

impl Ticker {
    /// Parse and check `spec`: a malformed expression, an unknown zone, a cron that never
    /// fires or a zero interval is a [`Error::Config`] naming the bad part.
    pub fn new(spec: &ScheduleSpec) -> Result<Self> {
        match spec {
            ScheduleSpec::Cron { expr, timezone } => {
                let tz = Tz::from_str(timezone).map_err(|_| {
                    Error::Config(format!(
                        "unknown time zone {timezone:?} (expected an IANA name such as \
                         \"UTC\" or \"Europe/Paris\")"
                    ))
                })?;
                let cron = parse_cron(expr)?;
                let ticker = Ticker::Cron(Box::new(cron), tz);
                if ticker.next_after(Timestamp::now()).is_none() {
                    return Err(Error::Config(format!(
                        "cron expression {expr:?} never matches a date"
                    )));
                }
                Ok(ticker)
            }
            ScheduleSpec::Every { interval_ms } => {
                if *interval_ms == 0 {
                    return Err(Error::Config(
                        "a schedule's interval must be positive".to_owned(),
                    ));
                }
                let us = i64::try_from(*interval_ms)
                    .ok()
                    .and_then(|ms| ms.checked_mul(1000))
                    .ok_or_else(|| Error::Config("a schedule's interval is too long".into()))?;
                Ok(Ticker::Every(us))
            }
        }
    }

    /// The first tick strictly after `t` (`None`: there is none, or it is out of range).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Ticker::Every(us) => {
                let k = t.as_micros().div_euclid(*us);
                k.checked_add(1)
                    .and_then(|k| k.checked_mul(*us))
                    .map(Timestamp::from_micros)
            }
            Ticker::Cron(cron, tz) => {
                let utc: DateTime<Utc> = DateTime::from_timestamp_micros(t.as_micros())?;
                let local = tz.from_utc_datetime(&utc.naive_utc());
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Some(Timestamp::from_micros(next.timestamp_micros()))
            }
        }
    }

    /// The latest tick at or before `t`, if one is later than `after`.
    pub fn latest_until(&self, after: Timestamp, t: Timestamp) -> Option<Timestamp> {
        match self {
            Ticker::Every(us) => {
                let tick = Timestamp::from_micros(t.as_micros().div_euclid(*us) * us);
                (tick > after).then_some(tick)
            }
            Ticker::Cron(cron, tz) => {
                let utc: DateTime<Utc> = DateTime::from_timestamp_micros(t.as_micros())?;
                let local = tz.from_utc_datetime(&utc.naive_utc());
                let prev = cron.find_previous_occurrence(&local, true).ok()?;
                let tick = Timestamp::from_micros(prev.timestamp_micros());
                (tick > after).then_some(tick)
            }
        }
    }
}

/// What a worker does with an entry whose stored next tick `due` has come (`due <= now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickPlan {
    /// Enqueue a job for this tick (`false`: the due ticks were missed and are skipped).
    pub enqueue: bool,
    /// The entry's next tick after this one (strictly after `now`).
    pub next_run_at: Timestamp,
}

/// Decide what to do with a due entry. Ticks that all came while no worker ran collapse
/// into one job ([`CatchUp::One`]) or none ([`CatchUp::None`], unless the latest due tick
/// is recent: within [`CATCH_UP_GRACE`], it is on time, not missed). `None`: the entry
/// has no tick after `now`.
pub fn plan_tick(
    ticker: &Ticker,
    catch_up: CatchUp,
    due: Timestamp,
    now: Timestamp,
) -> Option<TickPlan> {
    let next_run_at = ticker.next_after(now)?;
    let enqueue = match catch_up {
        CatchUp::One => true,
        CatchUp::None => {
            let latest = ticker.latest_until(due, now).unwrap_or(due);
            let recent = latest.until(now) <= CATCH_UP_GRACE;
            // The only due tick, and a recent one: this is the tick on time.
            latest == due && recent
        }
    };
    Some(TickPlan {
        enqueue,
        next_run_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        let t = DateTime::parse_from_rfc3339(s).expect("valid test time");
        Timestamp::from_micros(t.timestamp_micros())
    }

    fn cron(expr: &str, tz: &str) -> Result<Ticker> {
        Ticker::new(&ScheduleSpec::Cron {
            expr: expr.into(),
            timezone: tz.into(),
        })
    }

    #[test]
    fn cron_forms_and_next_ticks() {
        let t = ts("2026-03-02T10:07:30Z"); // a Monday
        let next = |e: &str| cron(e, "UTC").unwrap().next_after(t).unwrap();
        assert_eq!(next("*/5 * * * *"), ts("2026-03-02T10:10:00Z"));
        assert_eq!(next("0/5 * * * *"), ts("2026-03-02T10:10:00Z"));
        assert_eq!(next("@hourly"), ts("2026-03-02T11:00:00Z"));
        assert_eq!(next("@daily"), ts("2026-03-03T00:00:00Z"));
        assert_eq!(next("0 9 * * sat,sun"), ts("2026-03-07T09:00:00Z"));
        assert_eq!(next("0 0 1 jan-feb *"), ts("2027-01-01T00:00:00Z"));
        assert_eq!(next("*/10 * * * * *"), ts("2026-03-02T10:07:40Z"));
        assert_eq!(next("15 10-12 * * mon"), ts("2026-03-02T10:15:00Z"));
    }

    #[test]
    fn cron_in_a_time_zone() {
        // 09:00 in Paris is 08:00 UTC in winter (CET), 07:00 in summer (CEST).
        let paris = cron("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.next_after(ts("2026-01-10T12:00:00Z")),
            Some(ts("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(ts("2026-07-10T12:00:00Z")),
            Some(ts("2026-07-11T07:00:00Z"))
        );
    }

    #[test]
    fn malformed_expressions_name_the_bad_part() {
        let msg = |e: &str| cron(e, "UTC").unwrap_err().to_string();
        assert!(
            msg("61 * * * *").contains("minute field \"61\""),
            "{}",
            msg("61 * * * *")
        );
        assert!(msg("0 25 * * *").contains("hour field \"25\""));
        assert!(msg("* * * * foo").contains("day of week field \"foo\""));
        assert!(msg("*/x * * * * *").contains("second field \"*/x\""));
        assert!(msg("* * * *").contains("got 4"));
        assert!(msg("@fortnightly").contains("unknown alias \"@fortnightly\""));
        assert!(msg("0 0 31 2 *").contains("never matches"));
        let tz = cron("* * * * *", "Mars/Olympus").unwrap_err().to_string();
        assert!(tz.contains("unknown time zone \"Mars/Olympus\""), "{tz}");
        assert!(Ticker::new(&ScheduleSpec::Every { interval_ms: 0 }).is_err());
    }

    #[test]
    fn intervals_tick_on_multiples_since_the_epoch() {
        let every = Ticker::new(&ScheduleSpec::Every { interval_ms: 1500 }).unwrap();
        let t = Timestamp::from_micros(10_000_000);
        assert_eq!(
            every.next_after(t),
            Some(Timestamp::from_micros(10_500_000))
        );
        assert_eq!(
            every.next_after(Timestamp::from_micros(10_500_000)),
            Some(Timestamp::from_micros(12_000_000))
        );
    }

    #[test]
    fn catch_up_one_enqueues_once_and_none_skips_missed_ticks() {
        let every_second = cron("* * * * * *", "UTC").unwrap();
        let now = ts("2026-03-02T10:00:00.200Z");
        // On time (the only due tick, 200 ms ago): both enqueue.
        let due = ts("2026-03-02T10:00:00Z");
        for c in [CatchUp::One, CatchUp::None] {
            let plan = plan_tick(&every_second, c, due, now).unwrap();
            assert!(plan.enqueue);
            assert_eq!(plan.next_run_at, ts("2026-03-02T10:00:01Z"));
        }
        // An hour of missed ticks: one job, or none; either way the next tick is next second.
        let old = ts("2026-03-02T09:00:00Z");
        let one = plan_tick(&every_second, CatchUp::One, old, now).unwrap();
        let none = plan_tick(&every_second, CatchUp::None, old, now).unwrap();
        assert!(one.enqueue && !none.enqueue);
        assert_eq!(none.next_run_at, ts("2026-03-02T10:00:01Z"));
        // A daily tick missed by an hour is missed too, though it is the only one due.
        let daily = cron("@daily", "UTC").unwrap();
        let late = plan_tick(
            &daily,
            CatchUp::None,
            ts("2026-03-02T00:00:00Z"),
            ts("2026-03-02T01:00:00Z"),
        );
        assert!(!late.unwrap().enqueue);
    }
}
