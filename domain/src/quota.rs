//! Metering and quotas (SPEC §4): the `Usage` aggregate of one tenant, one meter and one
//! calendar month (UTC). Each request for units is one decision: admit, admit in grace, or block;
//! the threshold events (80 %, grace started, grace ended) happen once per period.
//!
//! The plan's limits come in with each command (from the plan registry and the tenant's current
//! plan), so an upgrade lifts a block at once and usage so far is kept.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::tenant::Plan;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::{Date, Month, OffsetDateTime, Time, UtcOffset};

/// How long grace lasts after the first unit over the limit.
pub const GRACE_HOURS: i64 = 72;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Meter {
    Queries,
    Exports,
}

impl Meter {
    pub const ALL: &'static [Meter] = &[Meter::Queries, Meter::Exports];

    pub fn as_str(self) -> &'static str {
        match self {
            Meter::Queries => "queries",
            Meter::Exports => "exports",
        }
    }
}

impl FromStr for Meter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queries" => Ok(Meter::Queries),
            "exports" => Ok(Meter::Exports),
            other => Err(format!(
                "unknown meter {other:?} (expected queries or exports)"
            )),
        }
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A calendar month in UTC: `[first day 00:00, next month's first day 00:00)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period {
    pub year: i32,
    pub month: u8,
}

impl Period {
    pub fn of(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        Self {
            year: t.year(),
            month: u8::from(t.month()),
        }
    }

    pub fn start(self) -> OffsetDateTime {
        let month = Month::try_from(self.month).expect("valid month");
        Date::from_calendar_date(self.year, month, 1)
            .expect("valid date")
            .with_time(Time::MIDNIGHT)
            .assume_utc()
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// When the period ends (and the quota resets).
    pub fn end(self) -> OffsetDateTime {
        self.next().start()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The stream of one tenant's usage of one meter in one period.
pub fn stream_id(meter: Meter, period: Period) -> String {
    format!("usage-{meter}-{period}")
}

/// The limits the current plan gives a meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterLimits {
    pub plan: Plan,
    /// Units included in the period.
    pub limit: u64,
    /// Free plans stop (after grace); paid plans go on and bill overage.
    pub blocking: bool,
}

impl MeterLimits {
    /// `ceil(limit × 10 %)`.
    pub fn grace_units(&self) -> u64 {
        self.limit.div_ceil(10)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaState {
    Ok,
    Warning,
    Grace,
    Blocked,
    /// Past the limit on a plan that bills overage.
    Overage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub meter: Meter,
    pub units: u64,
    pub limits: MeterLimits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub meter: Meter,
    pub period: Period,
    pub units: u64,
    /// Units used in the period after this record.
    pub used: u64,
    pub plan: Plan,
    pub limit: u64,
    pub state: QuotaState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub meter: Meter,
    pub period: Period,
    pub units: u64,
    pub used: u64,
    pub plan: Plan,
    pub limit: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub meter: Meter,
    pub period: Period,
    pub used: u64,
    pub limit: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceStarted {
    pub meter: Meter,
    pub period: Period,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub grace_units: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceEnded {
    pub meter: Meter,
    pub period: Period,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `units` (the grace units are used up) or `time` (72 hours passed).
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageEvent {
    Recorded(Recorded),
    Blocked(Blocked),
    Warning(Threshold),
    Reached(Threshold),
    GraceStarted(GraceStarted),
    GraceEnded(GraceEnded),
}

impl DomainEvent for UsageEvent {
    fn event_type(&self) -> &'static str {
        match self {
            UsageEvent::Recorded(_) => "usage.recorded",
            UsageEvent::Blocked(_) => "usage.blocked",
            UsageEvent::Warning(_) => "quota.warning",
            UsageEvent::Reached(_) => "quota.reached",
            UsageEvent::GraceStarted(_) => "quota.grace_started",
            UsageEvent::GraceEnded(_) => "quota.grace_ended",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            UsageEvent::Recorded(e) => serde_json::to_value(e),
            UsageEvent::Blocked(e) => serde_json::to_value(e),
            UsageEvent::Warning(e) | UsageEvent::Reached(e) => serde_json::to_value(e),
            UsageEvent::GraceStarted(e) => serde_json::to_value(e),
            UsageEvent::GraceEnded(e) => serde_json::to_value(e),
        }
        .expect("usage events serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        let p = payload;
        Ok(match (event_type, schema_version) {
            ("usage.recorded", 1) => UsageEvent::Recorded(EventDecodeError::parse(event_type, p)?),
            ("usage.blocked", 1) => UsageEvent::Blocked(EventDecodeError::parse(event_type, p)?),
            ("quota.warning", 1) => UsageEvent::Warning(EventDecodeError::parse(event_type, p)?),
            ("quota.reached", 1) => UsageEvent::Reached(EventDecodeError::parse(event_type, p)?),
            ("quota.grace_started", 1) => {
                UsageEvent::GraceStarted(EventDecodeError::parse(event_type, p)?)
            }
            ("quota.grace_ended", 1) => {
                UsageEvent::GraceEnded(EventDecodeError::parse(event_type, p)?)
            }
            _ => {
                return Err(EventDecodeError::UnknownType {
                    event_type: event_type.to_owned(),
                    schema_version,
                });
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("units must be 1 to 10000")]
    InvalidUnits,
}

/// One tenant's usage of one meter in one period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub period: Option<Period>,
    pub used: u64,
    pub blocked_attempts: u64,
    pub warned: bool,
    pub reached: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub grace_started_at: Option<OffsetDateTime>,
    pub grace_ended: bool,
    /// When the last attempt was refused.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_blocked_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub grace_ended_at: Option<OffsetDateTime>,
}

/// Where a meter stands, for answers and headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaView {
    pub meter: Meter,
    pub plan: Plan,
    pub used: u64,
    pub limit: u64,
    pub state: QuotaState,
    pub grace_units_left: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub grace_ends_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub resets_at: OffsetDateTime,
}

impl Usage {
    /// The meter's state under `limits` at `now`.
    pub fn view(&self, meter: Meter, limits: MeterLimits, now: OffsetDateTime) -> QuotaView {
        let period = self.period.unwrap_or_else(|| Period::of(now));
        let grace_ends_at = self
            .grace_started_at
            .map(|t| t + time::Duration::hours(GRACE_HOURS));
        let cap = limits.limit + limits.grace_units();
        let grace_over =
            self.grace_ended || grace_ends_at.is_some_and(|e| now >= e) || self.used >= cap;
        let state = if !limits.blocking {
            if self.used > limits.limit {
                QuotaState::Overage
            } else if self.used * 5 >= limits.limit * 4 {
                QuotaState::Warning
            } else {
                QuotaState::Ok
            }
        } else if self.used >= limits.limit && grace_over {
            QuotaState::Blocked
        } else if self.used > limits.limit
            || (self.used == limits.limit && self.grace_started_at.is_some())
        {
            QuotaState::Grace
        } else if limits.limit > 0 && self.used * 5 >= limits.limit * 4 {
            QuotaState::Warning
        } else {
            QuotaState::Ok
        };
        QuotaView {
            meter,
            plan: limits.plan,
            used: self.used,
            limit: limits.limit,
            state,
            grace_units_left: if limits.blocking {
                cap.saturating_sub(self.used.max(limits.limit))
            } else {
                0
            },
            grace_ends_at,
            resets_at: period.end(),
        }
    }
}

impl Aggregate for Usage {
    type Command = Record;
    type Event = UsageEvent;
    type Error = UsageError;

    fn decide(&self, cmd: &Record, now: OffsetDateTime) -> Result<Vec<UsageEvent>, UsageError> {
        if cmd.units == 0 || cmd.units > 10_000 {
            return Err(UsageError::InvalidUnits);
        }
        let period = self.period.unwrap_or_else(|| Period::of(now));
        let (meter, limits) = (cmd.meter, cmd.limits);
        let used = self.used + cmd.units;
        let mut events = Vec::new();
        let threshold = |used| Threshold {
            meter,
            period,
            used,
            limit: limits.limit,
        };
        let admit = |events: &mut Vec<UsageEvent>, state| {
            if !self.warned && limits.limit > 0 && used * 5 >= limits.limit * 4 {
                events.push(UsageEvent::Warning(threshold(used)));
            }
            if !self.reached && used >= limits.limit {
                events.push(UsageEvent::Reached(threshold(used)));
            }
            events.push(UsageEvent::Recorded(Recorded {
                meter,
                period,
                units: cmd.units,
                used,
                plan: limits.plan,
                limit: limits.limit,
                state,
            }));
        };
        if !limits.blocking {
            let state = if used > limits.limit {
                QuotaState::Overage
            } else if used * 5 >= limits.limit * 4 {
                QuotaState::Warning
            } else {
                QuotaState::Ok
            };
            admit(&mut events, state);
            return Ok(events);
        }
        if used <= limits.limit {
            let state = if used * 5 >= limits.limit * 4 {
                QuotaState::Warning
            } else {
                QuotaState::Ok
            };
            admit(&mut events, state);
            return Ok(events);
        }
        // Over the limit on a blocking plan: grace, while units and time last.
        let started = self.grace_started_at.unwrap_or(now);
        let ends_at = started + time::Duration::hours(GRACE_HOURS);
        let within_units = used <= limits.limit + limits.grace_units();
        let within_time = now < ends_at;
        if within_units && within_time && !self.grace_ended {
            if self.grace_started_at.is_none() {
                events.push(UsageEvent::GraceStarted(GraceStarted {
                    meter,
                    period,
                    at: now,
                    grace_units: limits.grace_units(),
                    ends_at,
                }));
            }
            admit(&mut events, QuotaState::Grace);
            return Ok(events);
        }
        // Grace ends when its units are used up or its time has run out — not because one
        // request was too big to fit in what is left.
        let exhausted = self.used >= limits.limit + limits.grace_units();
        if !self.grace_ended
            && (exhausted || !within_time)
            && (self.grace_started_at.is_some() || self.used >= limits.limit)
        {
            events.push(UsageEvent::GraceEnded(GraceEnded {
                meter,
                period,
                // When it really ended: now for units, its 72 hours' end for time.
                at: if within_time { now } else { ends_at },
                reason: if within_time {
                    "units".into()
                } else {
                    "time".into()
                },
            }));
        }
        events.push(UsageEvent::Blocked(Blocked {
            meter,
            period,
            units: cmd.units,
            used: self.used,
            plan: limits.plan,
            limit: limits.limit,
            at: now,
        }));
        Ok(events)
    }

    fn evolve(&mut self, event: &UsageEvent) {
        match event {
            UsageEvent::Recorded(e) => {
                self.period = Some(e.period);
                self.used = e.used;
            }
            UsageEvent::Blocked(e) => {
                self.period = Some(e.period);
                self.blocked_attempts += 1;
                self.last_blocked_at = Some(e.at);
            }
            UsageEvent::Warning(_) => self.warned = true,
            UsageEvent::Reached(_) => self.reached = true,
            UsageEvent::GraceStarted(e) => self.grace_started_at = Some(e.at),
            UsageEvent::GraceEnded(e) => {
                self.grace_ended = true;
                self.grace_ended_at = Some(e.at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};
    use time::macros::datetime;

    const FREE: MeterLimits = MeterLimits {
        plan: Plan::Free,
        limit: 200,
        blocking: true,
    };
    const PRO: MeterLimits = MeterLimits {
        plan: Plan::Pro,
        limit: 20_000,
        blocking: false,
    };

    fn record(units: u64, limits: MeterLimits) -> Record {
        Record {
            meter: Meter::Queries,
            units,
            limits,
        }
    }

    /// Drive the aggregate through commands, deciding each at `now`.
    fn run(
        state: &mut Usage,
        units: u64,
        limits: MeterLimits,
        now: OffsetDateTime,
    ) -> Vec<UsageEvent> {
        let events = state.decide(&record(units, limits), now).unwrap();
        for e in &events {
            state.evolve(e);
        }
        events
    }

    fn admitted(events: &[UsageEvent]) -> bool {
        events.iter().any(|e| matches!(e, UsageEvent::Recorded(_)))
    }

    #[test]
    fn a_free_meter_admits_exactly_the_limit_plus_its_grace_units() {
        let mut s = Usage::default();
        let now = test_now();
        let mut admitted_units = 0;
        for _ in 0..300 {
            if admitted(&run(&mut s, 1, FREE, now)) {
                admitted_units += 1;
            }
        }
        assert_eq!(admitted_units, 200 + 20, "limit 200 + ceil(10 %) = 220");
        assert_eq!(s.blocked_attempts, 80);
        assert_eq!(s.view(Meter::Queries, FREE, now).state, QuotaState::Blocked);
    }

    #[test]
    fn thresholds_happen_once_per_period() {
        let mut s = Usage::default();
        let now = test_now();
        let mut kinds = Vec::new();
        for _ in 0..230 {
            for e in run(&mut s, 1, FREE, now) {
                if !matches!(e, UsageEvent::Recorded(_) | UsageEvent::Blocked(_)) {
                    kinds.push(e.event_type());
                }
            }
        }
        assert_eq!(
            kinds,
            [
                "quota.warning",
                "quota.reached",
                "quota.grace_started",
                "quota.grace_ended"
            ]
        );
    }

    #[test]
    fn the_last_grace_unit_is_admitted_and_the_next_is_not() {
        let mut s = Usage {
            used: 219,
            warned: true,
            reached: true,
            grace_started_at: Some(test_now()),
            period: Some(Period::of(test_now())),
            ..Usage::default()
        };
        assert!(admitted(&run(&mut s, 1, FREE, test_now())));
        assert_eq!(s.used, 220);
        let events = run(&mut s, 1, FREE, test_now());
        assert!(!admitted(&events));
        assert!(matches!(&events[0], UsageEvent::GraceEnded(g) if g.reason == "units"));
        // A request of several units is admitted whole or not at all.
        let mut s = Usage {
            used: 215,
            warned: true,
            reached: true,
            grace_started_at: Some(test_now()),
            period: Some(Period::of(test_now())),
            ..Usage::default()
        };
        assert!(!admitted(&run(&mut s, 6, FREE, test_now())));
        assert_eq!(s.used, 215);
    }

    #[test]
    fn a_request_too_big_for_the_grace_left_does_not_end_it() {
        let now = test_now();
        let mut s = Usage::default();
        run(&mut s, 200, FREE, now);
        run(&mut s, 15, FREE, now);
        assert_eq!(s.used, 215);
        let events = run(&mut s, 6, FREE, now);
        assert!(!admitted(&events));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, UsageEvent::GraceEnded(_)))
        );
        assert!(
            admitted(&run(&mut s, 5, FREE, now)),
            "the 5 grace units left are still there"
        );
        // Before the limit, a request bigger than limit + grace is refused without ending grace.
        let mut s = Usage::default();
        assert!(!admitted(&run(&mut s, 500, FREE, now)));
        assert!(admitted(&run(&mut s, 210, FREE, now)));
        assert_eq!(s.view(Meter::Queries, FREE, now).grace_units_left, 10);
    }

    #[test]
    fn grace_ends_after_72_hours_whatever_is_left() {
        let start = test_now();
        let mut s = Usage::default();
        for _ in 0..201 {
            run(&mut s, 1, FREE, start);
        }
        assert_eq!(s.grace_started_at, Some(start));
        assert!(admitted(&run(
            &mut s,
            1,
            FREE,
            start + time::Duration::hours(71)
        )));
        let events = run(&mut s, 1, FREE, start + time::Duration::hours(72));
        assert!(!admitted(&events));
        assert!(matches!(&events[0], UsageEvent::GraceEnded(g) if g.reason == "time"));
    }

    #[test]
    fn an_upgrade_lifts_a_block_at_once_and_keeps_usage() {
        let mut s = Usage::default();
        for _ in 0..260 {
            run(&mut s, 1, FREE, test_now());
        }
        assert_eq!(
            s.view(Meter::Queries, FREE, test_now()).state,
            QuotaState::Blocked
        );
        let events = run(&mut s, 1, PRO, test_now());
        assert!(admitted(&events));
        assert_eq!(s.used, 221, "usage so far is kept");
        assert_eq!(
            s.view(Meter::Queries, PRO, test_now()).state,
            QuotaState::Ok
        );
    }

    #[test]
    fn paid_plans_never_block_and_count_overage() {
        let mut s = Usage {
            used: 19_999,
            ..Usage::default()
        };
        assert!(admitted(&run(&mut s, 5, PRO, test_now())));
        assert_eq!(
            s.view(Meter::Queries, PRO, test_now()).state,
            QuotaState::Overage
        );
    }

    #[test]
    fn periods_are_utc_calendar_months() {
        let p = Period::of(datetime!(2026-12-31 23:59:59.999 UTC));
        assert_eq!(p.to_string(), "2026-12");
        assert_eq!(p.end(), datetime!(2027-01-01 00:00 UTC));
        assert_eq!(
            Period::of(datetime!(2027-01-01 00:30 +01:00)).to_string(),
            "2026-12",
            "UTC, not local time"
        );
        assert_eq!(stream_id(Meter::Exports, p), "usage-exports-2026-12");
    }

    #[test]
    fn units_must_be_sane() {
        given::<Usage>([])
            .when(record(0, FREE))
            .then_err(UsageError::InvalidUnits);
        given::<Usage>([])
            .when(record(10_001, FREE))
            .then_err(UsageError::InvalidUnits);
    }
}
