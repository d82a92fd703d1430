//! The plan registry (SPEC §4) and its history: what each plan costs and includes, as versioned
//! definitions in the log. The `PlanRegistry` aggregate lives in the platform tenant's stream
//! `plans`; each `plan_registry.published` event is a whole registry version with the instant it
//! takes effect, so an invoice, a quota decision or an audit can name the prices it was made under.
//!
//! Prices are exact decimals ([`Decimal`]): 0.002 USD per query is 2 × 10⁻³, never a float.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::quota::{Meter, MeterLimits};
use crate::tenant::Plan;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;

/// The platform stream that holds the registry's versions.
pub const STREAM: &str = "plans";

/// An exact, non-negative decimal number: `mantissa × 10^-scale`, kept normalized (no trailing
/// zeros) so that equal values compare equal. Written as a JSON string (`"0.002"`, `"49.00"`),
/// never as a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: u64,
    scale: u8,
}

/// The most decimal places a price may have.
pub const MAX_SCALE: u8 = 12;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a decimal number such as 49.00 or 0.002 (at most 12 decimal places)")]
pub struct InvalidDecimal(pub String);

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// `mantissa × 10^-scale`.
    pub fn new(mantissa: u64, scale: u8) -> Self {
        let (mut mantissa, mut scale) = (mantissa, scale.min(MAX_SCALE));
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        if mantissa == 0 {
            scale = 0;
        }
        Self { mantissa, scale }
    }

    pub fn mantissa(self) -> u64 {
        self.mantissa
    }

    pub fn scale(self) -> u8 {
        self.scale
    }

    /// A whole number of minor units (cents for USD) as a decimal.
    pub fn from_minor_units(minor: u64, exponent: u8) -> Self {
        Self::new(minor, exponent)
    }

    /// `self × units`, exactly, as `(mantissa, scale)` of 128 bits (an invoice line before
    /// rounding).
    pub fn times(self, units: u64) -> (u128, u8) {
        (u128::from(self.mantissa) * u128::from(units), self.scale)
    }

    /// `self × units` in minor units of a currency with `exponent` decimals (2 for USD),
    /// rounded half-even once (SPEC §5).
    pub fn times_in_minor_units(self, units: u64, exponent: u8) -> u128 {
        let (m, scale) = self.times(units);
        if scale <= exponent {
            return m * 10u128.pow(u32::from(exponent - scale));
        }
        let divisor = 10u128.pow(u32::from(scale - exponent));
        let (q, r) = (m / divisor, m % divisor);
        match (2 * r).cmp(&divisor) {
            std::cmp::Ordering::Less => q,
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal => q + (q % 2),
        }
    }
}

impl FromStr for Decimal {
    type Err = InvalidDecimal;
    fn from_str(s: &str) -> Result<Self, InvalidDecimal> {
        let bad = || InvalidDecimal(s.to_owned());
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || (s.contains('.') && frac.is_empty())
            || frac.len() > usize::from(MAX_SCALE)
        {
            return Err(bad());
        }
        let mantissa: u64 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
        Ok(Self::new(mantissa, frac.len() as u8))
    }
}

impl fmt::Display for Decimal {
    /// At least two decimal places (`49.00`, `0.10`, `0.002`): the way prices are read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = usize::from(self.scale.max(2));
        let shifted = format!(
            "{}{}",
            self.mantissa,
            "0".repeat(scale - usize::from(self.scale))
        );
        let digits = format!("{shifted:0>width$}", width = scale + 1);
        let (whole, frac) = digits.split_at(digits.len() - scale);
        write!(f, "{whole}.{frac}")
    }
}

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Overage unit prices per meter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OveragePrices {
    pub queries: Decimal,
    pub exports: Decimal,
}

/// One plan's definition in one registry version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDefinition {
    pub plan: Plan,
    /// The registry version this definition belongs to.
    pub version: u32,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Base fee per month.
    pub base_price: Decimal,
    pub queries: u64,
    pub exports: u64,
    /// `None`: unlimited.
    pub seats: Option<u64>,
    /// Past the limit: grace then blocked (`true`), or billed as overage.
    pub blocking: bool,
    /// Price of each unit past the limit (on a plan that does not block).
    pub overage: OveragePrices,
}

impl PlanDefinition {
    pub fn limits(&self, meter: Meter) -> MeterLimits {
        MeterLimits {
            plan: self.plan,
            limit: match meter {
                Meter::Queries => self.queries,
                Meter::Exports => self.exports,
            },
            blocking: self.blocking,
            registry_version: self.version,
        }
    }

    pub fn overage_price(&self, meter: Meter) -> Decimal {
        match meter {
            Meter::Queries => self.overage.queries,
            Meter::Exports => self.overage.exports,
        }
    }

    /// The same definition in another registry version.
    fn in_version(&self, version: u32) -> Self {
        Self {
            version,
            ..self.clone()
        }
    }
}

fn usd(s: &str) -> Decimal {
    s.parse().expect("default prices are valid decimals")
}

/// The default registry (SPEC §4), version 1.
pub fn defaults() -> Vec<PlanDefinition> {
    let overage = OveragePrices {
        queries: usd("0.002"),
        exports: usd("0.10"),
    };
    vec![
        PlanDefinition {
            plan: Plan::Free,
            version: 1,
            currency: "USD".into(),
            base_price: Decimal::ZERO,
            queries: 200,
            exports: 20,
            seats: Some(3),
            blocking: true,
            overage: OveragePrices {
                queries: Decimal::ZERO,
                exports: Decimal::ZERO,
            },
        },
        PlanDefinition {
            plan: Plan::Pro,
            version: 1,
            currency: "USD".into(),
            base_price: usd("49.00"),
            queries: 20_000,
            exports: 1_000,
            seats: Some(25),
            blocking: false,
            overage: overage.clone(),
        },
        PlanDefinition {
            plan: Plan::Enterprise,
            version: 1,
            currency: "USD".into(),
            base_price: usd("499.00"),
            queries: 500_000,
            exports: 25_000,
            seats: None,
            blocking: false,
            overage,
        },
    ]
}

/// Changes to one plan's definition (from settings); each one given replaces the default.
/// The cent and millicent fields are the older spelling of the prices and still accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOverride {
    pub currency: Option<String>,
    /// Base fee per month, e.g. `"59.00"`.
    pub base_price: Option<Decimal>,
    pub overage_query_price: Option<Decimal>,
    pub overage_export_price: Option<Decimal>,
    pub price_cents: Option<u64>,
    pub queries: Option<u64>,
    pub exports: Option<u64>,
    /// 0 means unlimited.
    pub seats: Option<u64>,
    pub blocking: Option<bool>,
    /// Thousandths of a cent per unit (older spelling of `overage_query_price`).
    pub overage_query_millicents: Option<u64>,
    pub overage_export_millicents: Option<u64>,
}

/// One version of the registry: every plan's definition, and when it took effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    version: u32,
    /// `None` until the version is in the log.
    effective_from: Option<OffsetDateTime>,
    plans: Vec<PlanDefinition>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            version: 1,
            effective_from: None,
            plans: defaults(),
        }
    }
}

impl Registry {
    /// The defaults with overrides applied: what the settings ask for. Its version is only
    /// known once it is published to the log ([`PlanRegistry`]): 1 when it is the defaults, 0
    /// (unpublished) otherwise.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (Plan, &'a PlanOverride)>,
    ) -> Self {
        let mut plans = defaults();
        for (plan, o) in overrides {
            let d = plans
                .iter_mut()
                .find(|d| d.plan == plan)
                .expect("every plan has a definition");
            if let Some(c) = &o.currency {
                d.currency = c.clone();
            }
            if let Some(cents) = o.price_cents {
                d.base_price = Decimal::from_minor_units(cents, 2);
            }
            d.base_price = o.base_price.unwrap_or(d.base_price);
            d.queries = o.queries.unwrap_or(d.queries);
            d.exports = o.exports.unwrap_or(d.exports);
            if let Some(seats) = o.seats {
                d.seats = (seats > 0).then_some(seats);
            }
            d.blocking = o.blocking.unwrap_or(d.blocking);
            // Millicents are 10^-5 of the currency unit.
            if let Some(m) = o.overage_query_millicents {
                d.overage.queries = Decimal::new(m, 5);
            }
            if let Some(m) = o.overage_export_millicents {
                d.overage.exports = Decimal::new(m, 5);
            }
            d.overage.queries = o.overage_query_price.unwrap_or(d.overage.queries);
            d.overage.exports = o.overage_export_price.unwrap_or(d.overage.exports);
        }
        // The defaults are version 1 in every log; anything else has no version until published
        // (0 says so, should a decision ever be made under it).
        let version = if plans == defaults() { 1 } else { 0 };
        Self {
            version,
            effective_from: None,
            plans: plans.iter().map(|d| d.in_version(version)).collect(),
        }
    }

    pub fn get(&self, plan: Plan) -> &PlanDefinition {
        self.plans
            .iter()
            .find(|d| d.plan == plan)
            .expect("every plan has a definition")
    }

    pub fn all(&self) -> &[PlanDefinition] {
        &self.plans
    }

    /// The registry version (1 for the defaults, 0 for other plans not yet published).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn effective_from(&self) -> Option<OffsetDateTime> {
        self.effective_from
    }

    /// Whether two registries define the same plans, whatever their versions.
    pub fn same_plans(&self, plans: &[PlanDefinition]) -> bool {
        self.plans.len() == plans.len()
            && self
                .plans
                .iter()
                .zip(plans)
                .all(|(a, b)| a.in_version(0) == b.in_version(0))
    }

    fn of_published(p: &Published) -> Self {
        Self {
            version: p.version,
            effective_from: Some(p.effective_from),
            plans: p.plans.iter().map(|d| d.in_version(p.version)).collect(),
        }
    }
}

pub fn definition(plan: Plan) -> PlanDefinition {
    defaults()
        .into_iter()
        .find(|d| d.plan == plan)
        .expect("every plan has a definition")
}

/// Publish the plans given as the registry's next version, effective from `effective_from`,
/// unless the latest version already defines exactly these plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub plans: Vec<PlanDefinition>,
    pub effective_from: OffsetDateTime,
    /// Where the definitions come from: `defaults` or `settings`.
    pub source: String,
}

/// `plan_registry.published`: a whole registry version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: OffsetDateTime,
    /// `defaults` or `settings`.
    #[serde(default)]
    pub source: String,
    pub plans: Vec<PlanDefinition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    Published(Published),
}

impl RegistryEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[("plan_registry.published", 1)];
}

impl DomainEvent for RegistryEvent {
    fn event_type(&self) -> &'static str {
        match self {
            RegistryEvent::Published(_) => "plan_registry.published",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            RegistryEvent::Published(e) => serde_json::to_value(e),
        }
        .expect("registry events serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("plan_registry.published", 1) => Ok(RegistryEvent::Published(
                EventDecodeError::parse(event_type, payload)?,
            )),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("every plan needs exactly one definition; {0} has {1}")]
    PlanCount(&'static str, usize),
    #[error("currency {0:?} is not an ISO 4217 code such as USD")]
    Currency(String),
    #[error("a version cannot take effect before the one in force ({0})")]
    BeforeLatest(String),
}

/// Every version of the registry published so far, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRegistry {
    pub versions: Vec<Published>,
}

impl PlanRegistry {
    /// The latest version, if any was published.
    pub fn latest(&self) -> Option<Registry> {
        self.versions.last().map(Registry::of_published)
    }

    /// The version in force at `t`: the last one whose `effective_from` is not after `t`.
    pub fn in_force(&self, t: OffsetDateTime) -> Option<Registry> {
        self.versions
            .iter()
            .rev()
            .find(|p| p.effective_from <= t)
            .map(Registry::of_published)
    }

    /// One published version by number.
    pub fn version(&self, version: u32) -> Option<Registry> {
        self.versions
            .iter()
            .find(|p| p.version == version)
            .map(Registry::of_published)
    }

    fn published(&self, plans: &[PlanDefinition], at: OffsetDateTime, source: &str) -> Published {
        let version = self.versions.last().map_or(1, |p| p.version + 1);
        Published {
            version,
            effective_from: at,
            source: source.to_owned(),
            plans: plans.iter().map(|d| d.in_version(version)).collect(),
        }
    }
}

fn check(plans: &[PlanDefinition]) -> Result<(), RegistryError> {
    for plan in [Plan::Free, Plan::Pro, Plan::Enterprise] {
        let n = plans.iter().filter(|d| d.plan == plan).count();
        if n != 1 {
            return Err(RegistryError::PlanCount(plan.as_str(), n));
        }
    }
    if plans.len() != 3 {
        return Err(RegistryError::PlanCount("the registry", plans.len()));
    }
    for d in plans {
        if d.currency.len() != 3 || !d.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(RegistryError::Currency(d.currency.clone()));
        }
    }
    Ok(())
}

impl Aggregate for PlanRegistry {
    type Command = Publish;
    type Event = RegistryEvent;
    type Error = RegistryError;

    fn decide(
        &self,
        cmd: &Publish,
        _now: OffsetDateTime,
    ) -> Result<Vec<RegistryEvent>, RegistryError> {
        check(&cmd.plans)?;
        let mut state = self.clone();
        let mut events = Vec::new();
        // The defaults are version 1 of every log, in force since before anything happened:
        // history decided before the registry was in the log was decided under them (or under
        // settings nobody recorded), and a simulated history may start in the past.
        if state.versions.is_empty() {
            let first = state.published(&defaults(), OffsetDateTime::UNIX_EPOCH, "defaults");
            state.evolve(&RegistryEvent::Published(first.clone()));
            events.push(RegistryEvent::Published(first));
        }
        let latest = state.versions.last().expect("published above");
        if Registry::of_published(latest).same_plans(&cmd.plans) {
            return Ok(events);
        }
        if cmd.effective_from < latest.effective_from {
            return Err(RegistryError::BeforeLatest(
                latest.effective_from.to_string(),
            ));
        }
        let next = state.published(&cmd.plans, cmd.effective_from, &cmd.source);
        events.push(RegistryEvent::Published(next));
        Ok(events)
    }

    fn evolve(&mut self, event: &RegistryEvent) {
        match event {
            RegistryEvent::Published(p) => self.versions.push(p.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};

    fn publish(plans: Vec<PlanDefinition>) -> Publish {
        Publish {
            plans,
            effective_from: test_now(),
            source: "settings".into(),
        }
    }

    fn v1() -> RegistryEvent {
        RegistryEvent::Published(Published {
            version: 1,
            effective_from: OffsetDateTime::UNIX_EPOCH,
            source: "defaults".into(),
            plans: defaults(),
        })
    }

    fn free_with(queries: u64) -> Vec<PlanDefinition> {
        let o = PlanOverride {
            queries: Some(queries),
            ..PlanOverride::default()
        };
        Registry::with_overrides([(Plan::Free, &o)]).all().to_vec()
    }

    #[test]
    fn an_empty_log_gets_the_defaults_as_version_1() {
        given::<PlanRegistry>([])
            .when(publish(defaults()))
            .then([v1()]);
    }

    #[test]
    fn a_settings_override_on_an_empty_log_is_version_2_after_the_defaults() {
        let state = given::<PlanRegistry>([])
            .when(publish(free_with(500)))
            .then([
                v1(),
                RegistryEvent::Published(Published {
                    version: 2,
                    effective_from: test_now(),
                    source: "settings".into(),
                    plans: free_with(500)
                        .into_iter()
                        .map(|d| d.in_version(2))
                        .collect(),
                }),
            ]);
        let latest = state.latest().unwrap();
        assert_eq!(latest.version(), 2);
        assert_eq!(latest.get(Plan::Free).queries, 500);
        assert_eq!(
            latest
                .get(Plan::Free)
                .limits(Meter::Queries)
                .registry_version,
            2
        );
        assert_eq!(state.version(1).unwrap().get(Plan::Free).queries, 200);
    }

    #[test]
    fn publishing_what_is_already_in_force_writes_nothing() {
        given::<PlanRegistry>([v1()])
            .when(publish(defaults()))
            .then([]);
    }

    #[test]
    fn a_change_after_the_latest_is_the_next_version_and_the_older_stays_readable() {
        let later = test_now() + time::Duration::days(3);
        let state = given::<PlanRegistry>([v1()])
            .when(Publish {
                effective_from: later,
                ..publish(free_with(300))
            })
            .then([RegistryEvent::Published(Published {
                version: 2,
                effective_from: later,
                source: "settings".into(),
                plans: free_with(300)
                    .into_iter()
                    .map(|d| d.in_version(2))
                    .collect(),
            })]);
        assert_eq!(state.in_force(test_now()).unwrap().version(), 1);
        assert_eq!(state.in_force(later).unwrap().version(), 2);
        let v2 = state.versions[1].clone();
        given::<PlanRegistry>([v1(), RegistryEvent::Published(v2)])
            .when(Publish {
                effective_from: test_now(),
                ..publish(free_with(400))
            })
            .then_err(RegistryError::BeforeLatest(later.to_string()));
    }

    #[test]
    fn a_registry_must_define_each_plan_once_in_an_iso_currency() {
        let mut plans = defaults();
        plans.pop();
        given::<PlanRegistry>([])
            .when(publish(plans))
            .then_err(RegistryError::PlanCount("enterprise", 0));
        let mut plans = defaults();
        plans[1].currency = "dollars".into();
        given::<PlanRegistry>([])
            .when(publish(plans))
            .then_err(RegistryError::Currency("dollars".into()));
    }

    #[test]
    fn prices_are_exact_decimals_written_as_strings() {
        let p: Decimal = "0.002".parse().unwrap();
        assert_eq!((p.mantissa(), p.scale()), (2, 3));
        assert_eq!(p.to_string(), "0.002");
        assert_eq!("0.10".parse::<Decimal>().unwrap().to_string(), "0.10");
        assert_eq!("49".parse::<Decimal>().unwrap().to_string(), "49.00");
        assert_eq!("0.1".parse::<Decimal>(), "0.100".parse::<Decimal>());
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"0.002\"");
        for bad in ["", ".5", "1.", "-1", "1e3", "0.0000000000001", "abc", "1,5"] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad:?}");
        }
        // 1,234 queries past the limit at 0.002 USD: 2.468 USD, 247 cents half-even.
        assert_eq!(p.times(1_234), (2_468, 3));
        assert_eq!(p.times_in_minor_units(1_234, 2), 247);
        // Exactly half a cent rounds to even: 0.125 → 12, 0.135 → 14.
        assert_eq!(
            "0.125"
                .parse::<Decimal>()
                .unwrap()
                .times_in_minor_units(1, 2),
            12
        );
        assert_eq!(
            "0.135"
                .parse::<Decimal>()
                .unwrap()
                .times_in_minor_units(1, 2),
            14
        );
        assert_eq!(usd("49.00").times_in_minor_units(1, 2), 4_900);
    }

    #[test]
    fn older_settings_spellings_of_prices_still_apply() {
        let o = PlanOverride {
            price_cents: Some(5_900),
            overage_query_millicents: Some(300),
            ..PlanOverride::default()
        };
        let r = Registry::with_overrides([(Plan::Pro, &o)]);
        assert_eq!(r.get(Plan::Pro).base_price, usd("59.00"));
        assert_eq!(r.get(Plan::Pro).overage.queries, usd("0.003"));
        assert_eq!(
            r.version(),
            0,
            "unpublished until the log gives it a version"
        );
        let same = PlanOverride {
            queries: Some(200),
            ..PlanOverride::default()
        };
        assert_eq!(Registry::with_overrides([(Plan::Free, &same)]).version(), 1);
    }
}
