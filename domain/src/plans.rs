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

pub fn definition(plan: Plan) -> PlanDefinition {
    defaults()
        .into_iter()
        .find(|d| d.plan == plan)
        .expect("every plan has a definition")
}
