//! Metering and quotas (SPEC §4): the `Usage` aggregate of one tenant, one meter and one
//! calendar month (UTC). Each request for units is one decision: admit, admit in grace, or block;
//! the threshold events (80 %, grace started, grace ended) happen once per period.
//!
//! The plan's limits come in with each command (from the plan registry version in force and the
//! tenant's current plan), so an upgrade lifts a block at once and usage so far is kept; every
//! usage event names the registry version it was decided under.
//!
//! A unit and the fact it pays for (`query.run`, `export.completed`, or a failure that used the
//! service's time: `query.failed`, `export.failed` of a charged class, ADR 015) are decided
//! together and appended in one atomic append on this stream, the unit naming its fact
//! (`pays_for`). A charged failure that meets a blocked meter is recorded without a unit. Refusals
//! are coalesced: the first refused attempt of a minute is written at once, later ones in that
//! minute are counted by the caller and written as one `usage.blocked` with their count.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::dataset::{DataFact, ExportCompleted, ExportFailed, QueryFailed, QueryRun};
use crate::tenant::Plan;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::{Date, Month, OffsetDateTime, Time, UtcOffset};
use uuid::Uuid;

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
    /// The plan registry version these limits come from.
    #[serde(default)]
    pub registry_version: u32,
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

/// The start of the minute `t` falls in (UTC): refusals are coalesced per meter per minute.
pub fn minute_of(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_time(Time::from_hms(t.hour(), t.minute(), 0).expect("valid time"))
}

/// The fact a unit pays for, decided and appended with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitFact {
    Query(QueryRun),
    Export(ExportCompleted),
    /// A query that failed after using the service's time (see [`UnitFact::failure`]).
    QueryFailed(QueryFailed),
    /// An export that failed after using the service's time.
    ExportFailed(ExportFailed),
}

impl UnitFact {
    /// The unit fact of a failure that costs a unit (its class is charged, ADR 015), or the
    /// failure back when it costs nothing (it is then appended alone, on its own stream).
    pub fn failure(fact: DataFact) -> Result<UnitFact, DataFact> {
        match fact {
            DataFact::QueryFailed(q) if q.error_class.is_charged() => Ok(UnitFact::QueryFailed(q)),
            DataFact::ExportFailed(x) if x.error_class.is_charged() => {
                Ok(UnitFact::ExportFailed(x))
            }
            free => Err(free),
        }
    }

    /// Whether the fact is a failure (recorded even when the meter admits no unit for it).
    fn is_failure(&self) -> bool {
        matches!(self, UnitFact::QueryFailed(_) | UnitFact::ExportFailed(_))
    }

    /// A failure whose class costs nothing cannot pay for a unit.
    fn is_payable(&self) -> bool {
        match self {
            UnitFact::Query(_) | UnitFact::Export(_) => true,
            UnitFact::QueryFailed(q) => q.error_class.is_charged(),
            UnitFact::ExportFailed(x) => x.error_class.is_charged(),
        }
    }

    fn pays_for(&self) -> PaysFor {
        match self {
            UnitFact::Query(q) => PaysFor {
                event_type: "query.run".into(),
                id: q.query_id,
            },
            UnitFact::Export(x) => PaysFor {
                event_type: "export.completed".into(),
                id: Some(x.export_id),
            },
            UnitFact::QueryFailed(q) => PaysFor {
                event_type: "query.failed".into(),
                id: Some(q.query_id),
            },
            UnitFact::ExportFailed(x) => PaysFor {
                event_type: "export.failed".into(),
                id: Some(x.export_id),
            },
        }
    }

    fn event(&self) -> UsageEvent {
        match self {
            UnitFact::Query(q) => UsageEvent::QueryRun(q.clone()),
            UnitFact::Export(x) => UsageEvent::ExportCompleted(x.clone()),
            UnitFact::QueryFailed(q) => UsageEvent::QueryFailed(q.clone()),
            UnitFact::ExportFailed(x) => UsageEvent::ExportFailed(x.clone()),
        }
    }
}

/// Ask for `units` of `meter` under `limits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub meter: Meter,
    pub units: u64,
    pub limits: MeterLimits,
    /// What the units pay for: appended with them when they are admitted. `None`: units
    /// reported directly (`POST /v1/usage`).
    pub pays_for: Option<UnitFact>,
    /// Only look: a refusal is decided (and recorded) as usual, an admission writes nothing.
    /// Used before running work that a blocked meter must not run.
    pub probe: bool,
}

impl Record {
    /// `units` of `meter` paying for nothing in particular.
    pub fn units(meter: Meter, units: u64, limits: MeterLimits) -> Self {
        Self {
            meter,
            units,
            limits,
            pays_for: None,
            probe: false,
        }
    }
}

/// Refused attempts of one minute that were not written one by one (see [`Usage::decide`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountRefusals {
    pub meter: Meter,
    pub limits: MeterLimits,
    /// The start of the minute (UTC).
    pub minute: OffsetDateTime,
    pub attempts: u64,
    pub units: u64,
    /// The last refused attempt.
    pub last_at: OffsetDateTime,
}

// A command lives for one decision and is passed by reference: boxing the unit's fact would
// cost an allocation per metered request for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageCommand {
    Record(Record),
    CountRefusals(CountRefusals),
}

impl From<Record> for UsageCommand {
    fn from(r: Record) -> Self {
        UsageCommand::Record(r)
    }
}

/// What a unit pays for: the fact's type and id (a query's or an export's id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaysFor {
    #[serde(rename = "type")]
    pub event_type: String,
    pub id: Option<Uuid>,
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
    /// The plan registry version the unit was decided under (`null` in v1 events, decided
    /// before the registry was in the log).
    #[serde(default)]
    pub registry_version: Option<u32>,
    /// The fact the units paid for (same append, just before); `null` for units reported
    /// directly and in v1 events.
    #[serde(default)]
    pub pays_for: Option<PaysFor>,
}

fn one() -> u64 {
    1
}

/// Refused attempts of one meter in one minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub meter: Meter,
    pub period: Period,
    /// Units asked for by the attempts counted here.
    pub units: u64,
    pub used: u64,
    pub plan: Plan,
    pub limit: u64,
    /// The last attempt counted here.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The minute the attempts fall in (`null` in v1 events: the minute of `at`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub minute: Option<OffsetDateTime>,
    /// How many attempts were refused (1 in v1 events).
    #[serde(default = "one")]
    pub attempts: u64,
    #[serde(default)]
    pub registry_version: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub meter: Meter,
    pub period: Period,
    pub used: u64,
    pub limit: u64,
    /// The plan whose limit this is (`null` in v1 events).
    #[serde(default)]
    pub plan: Option<Plan>,
    #[serde(default)]
    pub registry_version: Option<u32>,
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
    /// The fact a unit paid for, in the unit's append.
    QueryRun(QueryRun),
    ExportCompleted(ExportCompleted),
    /// A charged failure, in its unit's append (or alone, when the meter admitted no unit).
    QueryFailed(QueryFailed),
    ExportFailed(ExportFailed),
}

impl UsageEvent {
    /// Every event type this aggregate writes, with the schema version it writes. The charged
    /// failures (`query.failed`, `export.failed`) are also written here; they are the same types
    /// and payloads as [`DataFact`]'s and catalogued there, once.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("usage.recorded", 2),
        ("usage.blocked", 2),
        ("quota.warning", 2),
        ("quota.reached", 2),
        ("quota.grace_started", 1),
        ("quota.grace_ended", 1),
        ("query.run", 2),
        ("export.completed", 2),
    ];
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
            UsageEvent::QueryRun(_) => "query.run",
            UsageEvent::ExportCompleted(_) => "export.completed",
            UsageEvent::QueryFailed(_) => "query.failed",
            UsageEvent::ExportFailed(_) => "export.failed",
        }
    }

    fn schema_version(&self) -> u16 {
        match self {
            UsageEvent::Recorded(_)
            | UsageEvent::Blocked(_)
            | UsageEvent::Warning(_)
            | UsageEvent::Reached(_)
            | UsageEvent::QueryRun(_)
            | UsageEvent::ExportCompleted(_) => 2,
            UsageEvent::GraceStarted(_)
            | UsageEvent::GraceEnded(_)
            | UsageEvent::QueryFailed(_)
            | UsageEvent::ExportFailed(_) => 1,
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            UsageEvent::Recorded(e) => serde_json::to_value(e),
            UsageEvent::Blocked(e) => serde_json::to_value(e),
            UsageEvent::Warning(e) | UsageEvent::Reached(e) => serde_json::to_value(e),
            UsageEvent::GraceStarted(e) => serde_json::to_value(e),
            UsageEvent::GraceEnded(e) => serde_json::to_value(e),
            UsageEvent::QueryRun(e) => serde_json::to_value(e),
            UsageEvent::ExportCompleted(e) => serde_json::to_value(e),
            UsageEvent::QueryFailed(e) => serde_json::to_value(e),
            UsageEvent::ExportFailed(e) => serde_json::to_value(e),
        }
        .expect("usage events serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        let p = payload;
        // Version 1 payloads read as version 2: the fields v2 added are optional (`null` when
        // absent), which is the upcast.
        Ok(match (event_type, schema_version) {
            ("usage.recorded", 1 | 2) => {
                UsageEvent::Recorded(EventDecodeError::parse(event_type, p)?)
            }
            ("usage.blocked", 1 | 2) => {
                UsageEvent::Blocked(EventDecodeError::parse(event_type, p)?)
            }
            ("quota.warning", 1 | 2) => {
                UsageEvent::Warning(EventDecodeError::parse(event_type, p)?)
            }
            ("quota.reached", 1 | 2) => {
                UsageEvent::Reached(EventDecodeError::parse(event_type, p)?)
            }
            ("query.run", 1 | 2) => UsageEvent::QueryRun(EventDecodeError::parse(event_type, p)?),
            ("export.completed", 1 | 2) => {
                UsageEvent::ExportCompleted(EventDecodeError::parse(event_type, p)?)
            }
            ("query.failed", 1) => UsageEvent::QueryFailed(EventDecodeError::parse(event_type, p)?),
            ("export.failed", 1) => {
                UsageEvent::ExportFailed(EventDecodeError::parse(event_type, p)?)
            }
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
    /// A failure of a class that costs nothing was offered as what a unit pays for.
    #[error("this failure costs nothing: it pays for no unit")]
    FreeFailure,
}

/// What a decision on a [`Record`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The units are recorded (with their fact).
    Admitted,
    /// The attempt is refused (written, or counted for its minute's coalesced event).
    Refused,
    /// A probe that would have been admitted: nothing was written.
    Clear,
    /// A charged failure met a meter that admits no unit: the failure is recorded without one,
    /// and no refusal is counted (the work was admitted when it started).
    Uncharged,
}

impl Outcome {
    /// Read the outcome of `record` from the events it produced and the state they left.
    pub fn of(record: &Record, events: &[UsageEvent], after: &Usage, now: OffsetDateTime) -> Self {
        if events.iter().any(|e| matches!(e, UsageEvent::Recorded(_))) {
            return Outcome::Admitted;
        }
        if record.pays_for.as_ref().is_some_and(UnitFact::is_failure) {
            return Outcome::Uncharged;
        }
        if events.iter().any(|e| matches!(e, UsageEvent::Blocked(_))) || !record.probe {
            return Outcome::Refused;
        }
        // A probe that wrote nothing: a coalesced refusal, or an admission it only looked at.
        let look = Record {
            probe: false,
            pays_for: None,
            ..record.clone()
        };
        match after.decide_record(&look, now) {
            Ok(events) if events.iter().any(|e| matches!(e, UsageEvent::Recorded(_))) => {
                Outcome::Clear
            }
            _ => Outcome::Refused,
        }
    }
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
    /// The limit the 80 % warning was given for (`None` with `warned`: before limits were kept).
    #[serde(default)]
    pub warned_limit: Option<u64>,
    #[serde(default)]
    pub reached_limit: Option<u64>,
    /// The minute whose first refusal is written; later ones in it are counted by the caller.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub refused_minute: Option<OffsetDateTime>,
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

impl Usage {
    /// Whether the 80 % warning is still to come under `limit`: once per period and limit, so a
    /// new limit (an upgrade, a new registry version) gets its own warning.
    fn warning_due(&self, limit: u64) -> bool {
        !(self.warned && self.warned_limit.is_none_or(|l| l == limit))
    }

    fn reached_due(&self, limit: u64) -> bool {
        !(self.reached && self.reached_limit.is_none_or(|l| l == limit))
    }

    fn decide_record(
        &self,
        cmd: &Record,
        now: OffsetDateTime,
    ) -> Result<Vec<UsageEvent>, UsageError> {
        if cmd.units == 0 || cmd.units > 10_000 {
            return Err(UsageError::InvalidUnits);
        }
        if cmd.pays_for.as_ref().is_some_and(|f| !f.is_payable()) {
            return Err(UsageError::FreeFailure);
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
            plan: Some(limits.plan),
            registry_version: Some(limits.registry_version),
        };
        let admit = |events: &mut Vec<UsageEvent>, state| {
            if cmd.probe {
                // Only looking: an admission writes nothing.
                events.clear();
                return;
            }
            if self.warning_due(limits.limit) && limits.limit > 0 && used * 5 >= limits.limit * 4 {
                events.push(UsageEvent::Warning(threshold(used)));
            }
            if self.reached_due(limits.limit) && used >= limits.limit {
                events.push(UsageEvent::Reached(threshold(used)));
            }
            if let Some(fact) = &cmd.pays_for {
                events.push(fact.event());
            }
            events.push(UsageEvent::Recorded(Recorded {
                meter,
                period,
                units: cmd.units,
                used,
                plan: limits.plan,
                limit: limits.limit,
                state,
                registry_version: Some(limits.registry_version),
                pays_for: cmd.pays_for.as_ref().map(UnitFact::pays_for),
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
        // A charged failure settles work that was admitted when it started (its probe passed):
        // the meter filled up meanwhile. The failure is still a fact, without a unit; it is not
        // a refused attempt, and grace ends at the next real one.
        if let Some(fact) = cmd.pays_for.as_ref().filter(|f| f.is_failure()) {
            return Ok(vec![fact.event()]);
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
        // The first refusal of a minute is written now; the later ones of that minute are
        // counted by the caller and written together (`CountRefusals`), so a tenant hammering a
        // blocked meter adds a bounded number of events per minute.
        let minute = minute_of(now);
        if events.is_empty() && self.refused_minute == Some(minute) {
            return Ok(events);
        }
        events.push(UsageEvent::Blocked(Blocked {
            meter,
            period,
            units: cmd.units,
            used: self.used,
            plan: limits.plan,
            limit: limits.limit,
            at: now,
            minute: Some(minute),
            attempts: 1,
            registry_version: Some(limits.registry_version),
        }));
        Ok(events)
    }
}

impl Aggregate for Usage {
    type Command = UsageCommand;
    type Event = UsageEvent;
    type Error = UsageError;

    fn decide(
        &self,
        cmd: &UsageCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<UsageEvent>, UsageError> {
        match cmd {
            UsageCommand::Record(r) => self.decide_record(r, now),
            UsageCommand::CountRefusals(c) => {
                if c.attempts == 0 {
                    return Ok(Vec::new());
                }
                Ok(vec![UsageEvent::Blocked(Blocked {
                    meter: c.meter,
                    period: self.period.unwrap_or_else(|| Period::of(c.minute)),
                    units: c.units,
                    used: self.used,
                    plan: c.limits.plan,
                    limit: c.limits.limit,
                    at: c.last_at,
                    minute: Some(c.minute),
                    attempts: c.attempts,
                    registry_version: Some(c.limits.registry_version),
                })])
            }
        }
    }

    fn evolve(&mut self, event: &UsageEvent) {
        match event {
            UsageEvent::Recorded(e) => {
                self.period = Some(e.period);
                self.used = e.used;
            }
            UsageEvent::Blocked(e) => {
                self.period = Some(e.period);
                self.blocked_attempts += e.attempts;
                let minute = e.minute.unwrap_or_else(|| minute_of(e.at));
                if self.last_blocked_at.is_none_or(|t| e.at >= t) {
                    self.last_blocked_at = Some(e.at);
                }
                if self.refused_minute.is_none_or(|m| minute > m) {
                    self.refused_minute = Some(minute);
                }
            }
            UsageEvent::Warning(e) => {
                self.warned = true;
                self.warned_limit = Some(e.limit);
            }
            UsageEvent::Reached(e) => {
                self.reached = true;
                self.reached_limit = Some(e.limit);
            }
            UsageEvent::GraceStarted(e) => self.grace_started_at = Some(e.at),
            UsageEvent::GraceEnded(e) => {
                self.grace_ended = true;
                self.grace_ended_at = Some(e.at);
            }
            // Facts change nothing in the meter: their unit does.
            UsageEvent::QueryRun(_)
            | UsageEvent::ExportCompleted(_)
            | UsageEvent::QueryFailed(_)
            | UsageEvent::ExportFailed(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};
    use crate::dataset::FailureClass;
    use time::macros::datetime;

    const FREE: MeterLimits = MeterLimits {
        plan: Plan::Free,
        limit: 200,
        blocking: true,
        registry_version: 1,
    };
    const PRO: MeterLimits = MeterLimits {
        plan: Plan::Pro,
        limit: 20_000,
        blocking: false,
        registry_version: 1,
    };

    fn record(units: u64, limits: MeterLimits) -> UsageCommand {
        Record::units(Meter::Queries, units, limits).into()
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
        assert_eq!(
            s.blocked_attempts, 1,
            "the first refusal of the minute is written, the other 79 are the caller's to count"
        );
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

    fn query_fact(n: u128) -> QueryRun {
        QueryRun {
            query_id: Some(Uuid::from_u128(n)),
            dataset_id: Uuid::from_u128(99),
            sql_sha256: "ab".repeat(32),
            rows: 3,
            truncated: false,
            elapsed_ms: 4,
        }
    }

    fn export_fact() -> ExportCompleted {
        ExportCompleted {
            export_id: Uuid::from_u128(5),
            dataset_id: Uuid::from_u128(99),
            sql_sha256: None,
            format: "csv".into(),
            preset_id: "default".into(),
            preset_version: 1,
            rows: 2,
            bytes: 10,
            sha256: "cd".repeat(32),
            badge: "PASS".into(),
            findings: Default::default(),
            formulas_neutralized: 0,
            engine: String::new(),
            withheld_columns: Vec::new(),
        }
    }

    #[test]
    fn a_unit_and_the_fact_it_pays_for_are_one_decision_naming_each_other() {
        let period = Period::of(test_now());
        given::<Usage>([])
            .when(UsageCommand::Record(Record {
                pays_for: Some(UnitFact::Query(query_fact(1))),
                ..Record::units(Meter::Queries, 1, PRO)
            }))
            .then([
                UsageEvent::QueryRun(query_fact(1)),
                UsageEvent::Recorded(Recorded {
                    meter: Meter::Queries,
                    period,
                    units: 1,
                    used: 1,
                    plan: Plan::Pro,
                    limit: 20_000,
                    state: QuotaState::Ok,
                    registry_version: Some(1),
                    pays_for: Some(PaysFor {
                        event_type: "query.run".into(),
                        id: Some(Uuid::from_u128(1)),
                    }),
                }),
            ]);
    }

    fn query_failure(class: FailureClass) -> QueryFailed {
        QueryFailed {
            query_id: Uuid::from_u128(7),
            dataset_id: Uuid::from_u128(99),
            sql_sha256: "ab".repeat(32),
            error_class: class,
            elapsed_ms: 5_000,
        }
    }

    fn export_failure(class: FailureClass) -> ExportFailed {
        ExportFailed {
            export_id: Uuid::from_u128(8),
            dataset_id: Uuid::from_u128(99),
            sql_sha256: None,
            format: "csv".into(),
            preset_id: "default".into(),
            preset_version: 1,
            error_class: class,
        }
    }

    #[test]
    fn a_timed_out_query_costs_one_unit_appended_with_its_failure_and_naming_it() {
        let fact = UnitFact::failure(DataFact::QueryFailed(query_failure(FailureClass::Timeout)))
            .expect("a timeout is charged");
        given::<Usage>([])
            .when(UsageCommand::Record(Record {
                pays_for: Some(fact),
                ..Record::units(Meter::Queries, 1, PRO)
            }))
            .then([
                UsageEvent::QueryFailed(query_failure(FailureClass::Timeout)),
                UsageEvent::Recorded(Recorded {
                    meter: Meter::Queries,
                    period: Period::of(test_now()),
                    units: 1,
                    used: 1,
                    plan: Plan::Pro,
                    limit: 20_000,
                    state: QuotaState::Ok,
                    registry_version: Some(1),
                    pays_for: Some(PaysFor {
                        event_type: "query.failed".into(),
                        id: Some(Uuid::from_u128(7)),
                    }),
                }),
            ]);
    }

    #[test]
    fn an_export_cut_by_its_caps_costs_one_unit_like_a_truncated_query() {
        let fact = UnitFact::failure(DataFact::ExportFailed(export_failure(
            FailureClass::TooLarge,
        )))
        .expect("an export cut by its caps is charged");
        let cmd = Record {
            pays_for: Some(fact),
            ..Record::units(Meter::Exports, 1, FREE)
        };
        let events = Usage::default()
            .decide(&cmd.clone().into(), test_now())
            .unwrap();
        assert!(matches!(
            events.as_slice(),
            [UsageEvent::ExportFailed(x), UsageEvent::Recorded(r)]
                if x.error_class == FailureClass::TooLarge
                    && r.pays_for == Some(PaysFor { event_type: "export.failed".into(), id: Some(Uuid::from_u128(8)) })
        ));
        let mut after = Usage::default();
        for e in &events {
            after.evolve(e);
        }
        assert_eq!(after.used, 1);
        assert_eq!(
            Outcome::of(&cmd, &events, &after, test_now()),
            Outcome::Admitted
        );
    }

    #[test]
    fn refusals_before_anything_ran_and_our_own_faults_cost_nothing() {
        for class in [
            FailureClass::Syntax,
            FailureClass::Denied,
            FailureClass::Expired,
            FailureClass::Internal,
        ] {
            let free = DataFact::QueryFailed(query_failure(class));
            assert_eq!(UnitFact::failure(free.clone()), Err(free), "{class:?}");
            let free = DataFact::ExportFailed(export_failure(class));
            assert_eq!(UnitFact::failure(free.clone()), Err(free), "{class:?}");
            // Offered as what a unit pays for anyway, it is refused as a command.
            given::<Usage>([])
                .when(UsageCommand::Record(Record {
                    pays_for: Some(UnitFact::QueryFailed(query_failure(class))),
                    ..Record::units(Meter::Queries, 1, PRO)
                }))
                .then_err(UsageError::FreeFailure);
        }
        let upload = DataFact::UploadRejected(crate::dataset::UploadRejected {
            name: None,
            bytes: 1,
            reason: "empty".into(),
            line: None,
        });
        assert_eq!(UnitFact::failure(upload.clone()), Err(upload));
    }

    #[test]
    fn a_charged_failure_on_a_blocked_meter_is_recorded_without_a_unit_and_is_no_refusal() {
        let blocked = Usage {
            used: 220,
            warned: true,
            reached: true,
            grace_started_at: Some(test_now()),
            grace_ended: true,
            period: Some(Period::of(test_now())),
            ..Usage::default()
        };
        let cmd = Record {
            pays_for: Some(UnitFact::QueryFailed(query_failure(FailureClass::Timeout))),
            ..Record::units(Meter::Queries, 1, FREE)
        };
        let events = blocked.decide(&cmd.clone().into(), test_now()).unwrap();
        assert_eq!(
            events,
            [UsageEvent::QueryFailed(query_failure(
                FailureClass::Timeout
            ))]
        );
        let mut after = blocked.clone();
        for e in &events {
            after.evolve(e);
        }
        assert_eq!(after, blocked, "no unit, no refusal counted");
        assert_eq!(
            Outcome::of(&cmd, &events, &after, test_now()),
            Outcome::Uncharged
        );
        // Grace used up but not yet ended: the failure does not end it either.
        let grace_full = Usage {
            grace_ended: false,
            ..blocked
        };
        assert_eq!(
            grace_full.decide(&cmd.into(), test_now()).unwrap(),
            [UsageEvent::QueryFailed(query_failure(
                FailureClass::Timeout
            ))]
        );
    }

    #[test]
    fn a_refused_unit_writes_no_fact() {
        let blocked = Usage {
            used: 220,
            warned: true,
            reached: true,
            grace_started_at: Some(test_now()),
            grace_ended: true,
            period: Some(Period::of(test_now())),
            ..Usage::default()
        };
        let cmd = Record {
            pays_for: Some(UnitFact::Export(export_fact())),
            ..Record::units(Meter::Exports, 1, FREE)
        };
        let events = blocked
            .decide(&UsageCommand::Record(cmd.clone()), test_now())
            .unwrap();
        assert!(
            matches!(events.as_slice(), [UsageEvent::Blocked(b)] if b.attempts == 1 && b.registry_version == Some(1))
        );
        assert_eq!(
            Outcome::of(&cmd, &events, &blocked, test_now()),
            Outcome::Refused
        );
    }

    #[test]
    fn refusals_are_written_once_per_minute_and_the_rest_counted_in_one_event() {
        let mut s = Usage::default();
        let now = test_now();
        run(&mut s, 220, FREE, now);
        let first = run(&mut s, 1, FREE, now);
        assert!(
            matches!(first.last(), Some(UsageEvent::Blocked(b)) if b.minute == Some(minute_of(now)))
        );
        // Later in the same minute: nothing is written, the attempt is still refused.
        let later = now + time::Duration::seconds(20);
        let cmd = Record::units(Meter::Queries, 1, FREE);
        for _ in 0..50 {
            let events = s.decide(&cmd.clone().into(), later).unwrap();
            assert!(events.is_empty());
            assert_eq!(Outcome::of(&cmd, &events, &s, later), Outcome::Refused);
        }
        // The caller writes the 50 it counted as one event.
        let counted = s
            .decide(
                &UsageCommand::CountRefusals(CountRefusals {
                    meter: Meter::Queries,
                    limits: FREE,
                    minute: minute_of(now),
                    attempts: 50,
                    units: 50,
                    last_at: later,
                }),
                later,
            )
            .unwrap();
        for e in &counted {
            s.evolve(e);
        }
        assert_eq!(s.blocked_attempts, 51);
        // A new minute writes its first refusal again.
        let next = now + time::Duration::minutes(1);
        assert!(
            matches!(run(&mut s, 1, FREE, next).as_slice(), [UsageEvent::Blocked(b)] if b.attempts == 1)
        );
    }

    #[test]
    fn a_probe_records_a_refusal_but_writes_nothing_for_an_admission() {
        let probe = Record {
            probe: true,
            ..Record::units(Meter::Queries, 1, FREE)
        };
        let fresh = Usage::default();
        let events = fresh.decide(&probe.clone().into(), test_now()).unwrap();
        assert!(events.is_empty());
        assert_eq!(
            Outcome::of(&probe, &events, &fresh, test_now()),
            Outcome::Clear
        );
        let mut blocked = Usage::default();
        run(&mut blocked, 220, FREE, test_now());
        let events = blocked.decide(&probe.clone().into(), test_now()).unwrap();
        assert!(events.iter().any(|e| matches!(e, UsageEvent::Blocked(_))));
        assert_eq!(
            Outcome::of(&probe, &events, &blocked, test_now()),
            Outcome::Refused
        );
    }

    #[test]
    fn an_upgrade_re_arms_the_thresholds_for_the_new_limit() {
        let mut s = Usage::default();
        let now = test_now();
        let kinds = |events: Vec<UsageEvent>| -> Vec<&'static str> {
            events
                .iter()
                .map(|e| e.event_type())
                .filter(|t| t.starts_with("quota."))
                .collect()
        };
        assert_eq!(
            kinds(run(&mut s, 200, FREE, now)),
            ["quota.warning", "quota.reached"]
        );
        // On Pro the 80 % mark is 16,000: no warning at 201, its own warning and reach later.
        assert!(kinds(run(&mut s, 1, PRO, now)).is_empty());
        assert!(kinds(run(&mut s, 8_000, PRO, now)).is_empty());
        assert_eq!(kinds(run(&mut s, 7_799, PRO, now)), ["quota.warning"]);
        let reached = run(&mut s, 4_000, PRO, now);
        assert!(
            matches!(&reached[0], UsageEvent::Reached(t) if t.limit == 20_000 && t.plan == Some(Plan::Pro))
        );
        assert!(kinds(run(&mut s, 1, PRO, now)).is_empty(), "once per limit");
    }

    #[test]
    fn every_usage_event_type_round_trips_and_is_catalogued() {
        let period = Period::of(test_now());
        let threshold = Threshold {
            meter: Meter::Queries,
            period,
            used: 160,
            limit: 200,
            plan: Some(Plan::Free),
            registry_version: Some(3),
        };
        let events = vec![
            UsageEvent::Recorded(Recorded {
                meter: Meter::Queries,
                period,
                units: 1,
                used: 1,
                plan: Plan::Free,
                limit: 200,
                state: QuotaState::Ok,
                registry_version: Some(3),
                pays_for: None,
            }),
            UsageEvent::Blocked(Blocked {
                meter: Meter::Queries,
                period,
                units: 2,
                used: 220,
                plan: Plan::Free,
                limit: 200,
                at: test_now(),
                minute: Some(minute_of(test_now())),
                attempts: 2,
                registry_version: Some(3),
            }),
            UsageEvent::Warning(threshold.clone()),
            UsageEvent::Reached(threshold),
            UsageEvent::GraceStarted(GraceStarted {
                meter: Meter::Queries,
                period,
                at: test_now(),
                grace_units: 20,
                ends_at: test_now(),
            }),
            UsageEvent::GraceEnded(GraceEnded {
                meter: Meter::Queries,
                period,
                at: test_now(),
                reason: "units".into(),
            }),
            UsageEvent::QueryRun(query_fact(2)),
            UsageEvent::ExportCompleted(export_fact()),
        ];
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        assert_eq!(kinds, UsageEvent::ALL_EVENT_TYPES);
        // Charged failures are written here too, with the types and versions of `DataFact`,
        // where they are catalogued.
        let failures = [
            UsageEvent::QueryFailed(query_failure(FailureClass::Timeout)),
            UsageEvent::ExportFailed(export_failure(FailureClass::TooLarge)),
        ];
        for e in &failures {
            assert!(
                DataFact::ALL_EVENT_TYPES.contains(&(e.event_type(), e.schema_version())),
                "{} is catalogued with DataFact",
                e.event_type()
            );
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let fact = DataFact::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(fact.to_payload(), e.to_payload(), "the same payload");
        }
        for e in events.into_iter().chain(failures) {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back = UsageEvent::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn version_1_usage_events_read_as_version_2() {
        let recorded = UsageEvent::from_stored(
            "usage.recorded",
            1,
            br#"{"meter":"queries","period":{"year":2026,"month":2},"units":1,"used":5,"plan":"free","limit":200,"state":"ok"}"#,
        )
        .unwrap();
        assert!(
            matches!(&recorded, UsageEvent::Recorded(r) if r.registry_version.is_none() && r.pays_for.is_none())
        );
        let blocked = UsageEvent::from_stored(
            "usage.blocked",
            1,
            br#"{"meter":"queries","period":{"year":2026,"month":2},"units":1,"used":220,"plan":"free","limit":200,"at":"2026-02-16T09:30:42Z"}"#,
        )
        .unwrap();
        let mut s = Usage::default();
        s.evolve(&blocked);
        assert_eq!(s.blocked_attempts, 1);
        assert_eq!(s.refused_minute, Some(datetime!(2026-02-16 09:30 UTC)));
        let run = UsageEvent::from_stored(
            "query.run",
            1,
            br#"{"dataset_id":"00000000-0000-0000-0000-000000000001","sql_sha256":"ab","rows":1,"truncated":false,"elapsed_ms":2}"#,
        )
        .unwrap();
        assert!(matches!(run, UsageEvent::QueryRun(q) if q.query_id.is_none()));
        let warning = UsageEvent::from_stored(
            "quota.warning",
            1,
            br#"{"meter":"queries","period":{"year":2026,"month":2},"used":160,"limit":200}"#,
        )
        .unwrap();
        s.evolve(&warning);
        assert_eq!(s.warned_limit, Some(200));
    }
}
