//! The plan registry (SPEC §4): what each plan costs and includes. Versioned, so an invoice can
//! name the definition it was computed with.

use crate::quota::{Meter, MeterLimits};
use crate::tenant::Plan;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanDefinition {
    pub plan: Plan,
    pub version: u32,
    /// Base fee per month, in cents (USD).
    pub price_cents: u64,
    pub queries: u64,
    pub exports: u64,
    /// `None`: unlimited.
    pub seats: Option<u64>,
    /// Past the limit: grace then blocked (`true`), or billed as overage.
    pub blocking: bool,
    /// Overage prices in thousandths of a cent per unit.
    pub overage_query_millicents: u64,
    pub overage_export_millicents: u64,
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
        }
    }
}

/// The default registry, version 1.
pub fn defaults() -> Vec<PlanDefinition> {
    vec![
        PlanDefinition {
            plan: Plan::Free,
            version: 1,
            price_cents: 0,
            queries: 200,
            exports: 20,
            seats: Some(3),
            blocking: true,
            overage_query_millicents: 0,
            overage_export_millicents: 0,
        },
        PlanDefinition {
            plan: Plan::Pro,
            version: 1,
            price_cents: 4_900,
            queries: 20_000,
            exports: 1_000,
            seats: Some(25),
            blocking: false,
            overage_query_millicents: 200,
            overage_export_millicents: 10_000,
        },
        PlanDefinition {
            plan: Plan::Enterprise,
            version: 1,
            price_cents: 49_900,
            queries: 500_000,
            exports: 25_000,
            seats: None,
            blocking: false,
            overage_query_millicents: 200,
            overage_export_millicents: 10_000,
        },
    ]
}

/// Changes to one plan's definition (from settings); each one given replaces the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOverride {
    pub price_cents: Option<u64>,
    pub queries: Option<u64>,
    pub exports: Option<u64>,
    /// 0 means unlimited.
    pub seats: Option<u64>,
    pub blocking: Option<bool>,
    pub overage_query_millicents: Option<u64>,
    pub overage_export_millicents: Option<u64>,
}

/// The plans in force: the defaults with any overrides (an overridden plan is version 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    plans: Vec<PlanDefinition>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { plans: defaults() }
    }
}

impl Registry {
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (Plan, &'a PlanOverride)>,
    ) -> Self {
        let mut plans = defaults();
        for (plan, o) in overrides {
            let d = plans
                .iter_mut()
                .find(|d| d.plan == plan)
                .expect("every plan has a definition");
            d.version += 1;
            d.price_cents = o.price_cents.unwrap_or(d.price_cents);
            d.queries = o.queries.unwrap_or(d.queries);
            d.exports = o.exports.unwrap_or(d.exports);
            if let Some(seats) = o.seats {
                d.seats = (seats > 0).then_some(seats);
            }
            d.blocking = o.blocking.unwrap_or(d.blocking);
            d.overage_query_millicents = o
                .overage_query_millicents
                .unwrap_or(d.overage_query_millicents);
            d.overage_export_millicents = o
                .overage_export_millicents
                .unwrap_or(d.overage_export_millicents);
        }
        Self { plans }
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
}

pub fn definition(plan: Plan) -> PlanDefinition {
    defaults()
        .into_iter()
        .find(|d| d.plan == plan)
        .expect("every plan has a definition")
}
