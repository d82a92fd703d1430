//! Daily usage rollups (SPEC §5): per tenant × meter × UTC day of `occurred_at`, the units
//! admitted, the attempts refused, and the first and last position that counted. Invoices'
//! quantities and the reconciliation read them; reconciliation recomputes them from the raw log
//! by another path (`app::billing::reconcile`) and lists every difference.
//!
//! Persisted as sorted rows: tenant, meter, day (days since the epoch), four varints; a day of a
//! tenant is ~20 bytes, so 10,000 tenants over a year are ~70 MB before compression of repeats.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::TenantId;
use domain::quota::{Meter, Period};
use domain::tenant::Plan;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use store::Envelope;
use time::{Date, OffsetDateTime};

const LAYOUT: u16 = 1;

/// One tenant's use of one meter on one UTC day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    pub admitted: u64,
    pub blocked: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// `(tenant, meter, UTC day)`.
pub type RollupKey = (TenantId, Meter, Date);

/// `(tenant, period, meter, registry version, plan)`: what prices a unit.
pub type PriceKey = (TenantId, Period, Meter, u32, Plan);

/// Units admitted under one price key, and how many of them were past the limit they were
/// decided against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Priced {
    pub units: u64,
    pub overage: u64,
    pub last_at: Option<OffsetDateTime>,
}

#[derive(Debug, Default)]
struct State {
    rows: BTreeMap<RollupKey, Rollup>,
    priced: BTreeMap<(TenantId, Period, Meter, u32, u8), Priced>,
}

/// The daily rollups, and beside them each tenant's period usage by the price it pays (the
/// invoice's quantities without reading a million events: a preview is O(price keys)).
#[derive(Debug, Default)]
pub struct DailyRollups {
    state: RwLock<State>,
}

/// The UTC day of an instant.
pub fn day_of(t: OffsetDateTime) -> Date {
    t.to_offset(time::UtcOffset::UTC).date()
}

#[derive(serde::Deserialize)]
struct Counted {
    meter: Meter,
    period: Period,
    #[serde(default)]
    units: u64,
    #[serde(default = "one")]
    attempts: u64,
    #[serde(default)]
    used: u64,
    #[serde(default)]
    limit: u64,
    #[serde(default)]
    plan: Plan,
    #[serde(default)]
    registry_version: Option<u32>,
}

fn plan_of(rank: u8) -> Plan {
    match rank {
        0 => Plan::Free,
        1 => Plan::Pro,
        _ => Plan::Enterprise,
    }
}

fn one() -> u64 {
    1
}

impl DailyRollups {
    /// The rows of `tenant` (all tenants when `None`) for days in `[from, to)`.
    pub fn rows(&self, tenant: Option<TenantId>, from: Date, to: Date) -> Vec<(RollupKey, Rollup)> {
        let st = self.state.read().expect("rollups lock");
        st.rows
            .iter()
            .filter(|((t, _, d), _)| tenant.is_none_or(|x| x == *t) && *d >= from && *d < to)
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Units admitted for `tenant` and `meter` on days in `[from, to)`.
    pub fn admitted(&self, tenant: TenantId, meter: Meter, from: Date, to: Date) -> u64 {
        let st = self.state.read().expect("rollups lock");
        st.rows
            .range((tenant, meter, from)..(tenant, meter, to))
            .map(|(_, r)| r.admitted)
            .sum()
    }

    /// Remove one row (operations and tests: the reconciliation must then report it).
    pub fn remove_row(&self, key: &RollupKey) -> Option<Rollup> {
        self.state.write().expect("rollups lock").rows.remove(key)
    }

    pub fn len(&self) -> usize {
        self.state.read().expect("rollups lock").rows.len()
    }

    /// A tenant's usage in `period` by price key.
    pub fn priced(&self, tenant: TenantId, period: Period) -> Vec<(PriceKey, Priced)> {
        let st = self.state.read().expect("rollups lock");
        st.priced
            .range((tenant, period, Meter::Queries, 0, 0)..)
            .take_while(|((t, p, ..), _)| *t == tenant && *p == period)
            .map(|((t, p, m, v, r), x)| ((*t, *p, *m, *v, plan_of(*r)), *x))
            .collect()
    }

    /// Every tenant with usage in `period`.
    pub fn tenants_in(&self, period: Period) -> Vec<TenantId> {
        let st = self.state.read().expect("rollups lock");
        let mut out: Vec<TenantId> = st
            .priced
            .keys()
            .filter(|(_, p, ..)| *p == period)
            .map(|(t, ..)| *t)
            .collect();
        out.dedup();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn to_days(d: Date) -> i64 {
    i64::from(d.to_julian_day())
}

impl Projection for DailyRollups {
    fn name(&self) -> &'static str {
        "daily_rollups"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut st = self.state.write().expect("rollups lock");
        let st = &mut *st;
        for e in events {
            let blocked = match e.event_type.as_str() {
                "usage.recorded" => false,
                "usage.blocked" => true,
                _ => continue,
            };
            let c: Counted =
                serde_json::from_slice(e.payload.as_bytes()).map_err(|x| Unreadable::at(e, x))?;
            let row = st
                .rows
                .entry((e.tenant_id, c.meter, day_of(e.occurred_at)))
                .or_default();
            if blocked {
                row.blocked += c.attempts;
            } else {
                row.admitted += c.units;
                let p = st
                    .priced
                    .entry((
                        e.tenant_id,
                        c.period,
                        c.meter,
                        c.registry_version.unwrap_or(1),
                        c.plan.rank(),
                    ))
                    .or_default();
                p.units += c.units;
                p.overage += c.units.min(c.used.saturating_sub(c.limit));
                p.last_at = Some(e.occurred_at);
            }
            if row.first_position == 0 {
                row.first_position = e.global_position;
            }
            row.last_position = e.global_position;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let st = self.state.read().expect("rollups lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(st.priced.len());
        for ((tenant, period, meter, version, rank), p) in st.priced.iter() {
            w.uuid(tenant.as_uuid());
            w.i64(i64::from(period.year));
            w.u64(u64::from(period.month));
            w.bool(*meter == Meter::Exports);
            w.u64(u64::from(*version));
            w.u64(u64::from(*rank));
            w.u64(p.units);
            w.u64(p.overage);
            w.bool(p.last_at.is_some());
            if let Some(t) = p.last_at {
                w.time(t);
            }
        }
        w.usize(st.rows.len());
        for ((tenant, meter, day), r) in st.rows.iter() {
            w.uuid(tenant.as_uuid());
            w.bool(*meter == Meter::Exports);
            w.i64(to_days(*day));
            w.u64(r.admitted);
            w.u64(r.blocked);
            w.u64(r.first_position);
            w.u64(r.last_position);
        }
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let bad = |what: &str| CodecError::Malformed(format!("{what} out of range"));
        let n = r.len()?;
        let mut priced = BTreeMap::new();
        for _ in 0..n {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let year = i32::try_from(r.i64()?).map_err(|_| bad("year"))?;
            let month = u8::try_from(r.u64()?).map_err(|_| bad("month"))?;
            let meter = if r.bool()? {
                Meter::Exports
            } else {
                Meter::Queries
            };
            let version = u32::try_from(r.u64()?).map_err(|_| bad("version"))?;
            let rank = u8::try_from(r.u64()?).map_err(|_| bad("plan"))?;
            let units = r.u64()?;
            let overage = r.u64()?;
            let last_at = if r.bool()? { Some(r.time()?) } else { None };
            priced.insert(
                (tenant, Period { year, month }, meter, version, rank),
                Priced {
                    units,
                    overage,
                    last_at,
                },
            );
        }
        let n = r.len()?;
        let mut rows = BTreeMap::new();
        for _ in 0..n {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let meter = if r.bool()? {
                Meter::Exports
            } else {
                Meter::Queries
            };
            let jd = i32::try_from(r.i64()?)
                .map_err(|_| CodecError::Malformed("day out of range".into()))?;
            let day = Date::from_julian_day(jd)
                .map_err(|_| CodecError::Malformed("day out of range".into()))?;
            let row = Rollup {
                admitted: r.u64()?,
                blocked: r.u64()?,
                first_position: r.u64()?,
                last_position: r.u64()?,
            };
            rows.insert((tenant, meter, day), row);
        }
        r.end()?;
        *self.state.write().expect("rollups lock") = State { rows, priced };
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(DailyRollups::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<DailyRollups>() {
            let taken = std::mem::take(&mut *o.state.write().expect("rollups lock"));
            *self.state.write().expect("rollups lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn rows_survive_encoding_and_a_truncated_state_is_refused() {
        let r = DailyRollups::default();
        let t = TenantId::from_uuid(Uuid::from_u128(1));
        let day = time::macros::date!(2026 - 03 - 02);
        r.state.write().unwrap().rows.insert(
            (t, Meter::Exports, day),
            Rollup {
                admitted: 5,
                blocked: 2,
                first_position: 10,
                last_position: 99,
            },
        );
        let bytes = r.encode();
        let back = DailyRollups::default();
        back.decode(&bytes).unwrap();
        assert_eq!(back.rows(Some(t), day, day.next_day().unwrap()).len(), 1);
        assert_eq!(
            back.admitted(t, Meter::Exports, day, day.next_day().unwrap()),
            5
        );
        assert!(back.decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
