//! The insights read model (SPEC §11, ADR 021): each tenant's funnel journey and weekly activity,
//! and the quota/upgrade tally, kept incrementally in commit order. The definitions live in
//! `domain::insights`; this only feeds them.
//!
//! It reads as little as it can: a step, an admitted unit or a grace entry is known from the
//! event's type, stream and `occurred_at`; only sign-ups, plan changes, refused attempts and
//! exports (for their badge) are decoded — and one it cannot decode stops it (fail closed).

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::DomainEvent;
use domain::TenantId;
use domain::insights::{Journey, QuotaTally, Step};
use domain::quota::UsageEvent;
use domain::tenant::{Plan, TenantEvent};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::Envelope;
use time::OffsetDateTime;
use uuid::Uuid;

const LAYOUT: u16 = 1;

/// What the model keeps of one tenant.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TenantInsight {
    pub journey: Journey,
    /// The plan in force (a scheduled downgrade applies from its `effective_at`).
    plan: Plan,
    pending: Option<(OffsetDateTime, Plan)>,
    /// The tenant's last refused attempt.
    last_block: Option<OffsetDateTime>,
}

impl TenantInsight {
    fn plan_at(&mut self, at: OffsetDateTime) -> Plan {
        if let Some((effective, to)) = self.pending
            && at >= effective
        {
            self.plan = to;
            self.pending = None;
        }
        self.plan
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    tenants: HashMap<Uuid, TenantInsight>,
    quota: QuotaTally,
}

#[derive(Debug, Default)]
pub struct Insights {
    state: RwLock<State>,
}

impl Insights {
    /// Every tenant's journey (a snapshot).
    pub fn journeys(&self) -> Vec<Journey> {
        let s = self.state.read().expect("insights lock");
        s.tenants.values().map(|t| t.journey.clone()).collect()
    }

    /// The quota/upgrade tally (a snapshot).
    pub fn quota(&self) -> QuotaTally {
        self.state.read().expect("insights lock").quota.clone()
    }

    fn apply_one(s: &mut State, e: &Envelope) -> Result<(), Unreadable> {
        let at = e.occurred_at;
        let t = e.tenant_id;
        if t == TenantId::PLATFORM {
            return Ok(());
        }
        let decode_usage = || {
            UsageEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                .map_err(|err| Unreadable::at(e, err))
        };
        match e.event_type.as_str() {
            "tenant.signed_up" | "plan.changed" | "plan.change_scheduled" => {
                let event =
                    TenantEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                        .map_err(|err| Unreadable::at(e, err))?;
                let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                match event {
                    TenantEvent::SignedUp(up) => {
                        if tenant.journey.steps[0].is_none() {
                            tenant.plan = up.plan;
                        }
                        tenant.journey.signed_up(at, up.plan);
                    }
                    TenantEvent::PlanChanged(c) => {
                        tenant.plan_at(at);
                        if c.to.rank() > c.from.rank() {
                            s.quota.upgraded(at, c.from, tenant.last_block);
                        }
                        tenant.plan = c.to;
                        tenant.pending = None;
                        tenant.journey.plan_changed(at, c.to);
                    }
                    TenantEvent::PlanChangeScheduled(c) => {
                        tenant.pending = Some((c.effective_at, c.to));
                    }
                    _ => {}
                }
            }
            "dataset.uploaded" => {
                let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                tenant.journey.reached(Step::DatasetUploaded, at);
            }
            "query.run" => {
                let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                tenant.journey.reached(Step::FirstQuery, at);
            }
            "export.completed" => {
                if let UsageEvent::ExportCompleted(x) = decode_usage()?
                    && x.badge == "PASS"
                {
                    let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                    tenant.journey.reached(Step::FirstExportPassed, at);
                }
            }
            "usage.recorded"
                if e.stream_id.starts_with("usage-queries-")
                    || e.stream_id.starts_with("usage-exports-") =>
            {
                let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                tenant.journey.active(at);
            }
            "usage.blocked" => {
                if let UsageEvent::Blocked(b) = decode_usage()? {
                    let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                    tenant.last_block = Some(tenant.last_block.map_or(b.at, |l| l.max(b.at)));
                    s.quota.blocked(at, b.plan, b.attempts);
                }
            }
            "quota.grace_started" => {
                let tenant = s.tenants.entry(*t.as_uuid()).or_default();
                let plan = tenant.plan_at(at);
                s.quota.grace_started(at, plan);
            }
            _ => {}
        }
        Ok(())
    }
}

impl Projection for Insights {
    fn name(&self) -> &'static str {
        "insights"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut s = self.state.write().expect("insights lock");
        for e in events {
            Self::apply_one(&mut s, e)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let s = self.state.read().expect("insights lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.json(&*s);
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let state: State = r.json()?;
        r.end()?;
        *self.state.write().expect("insights lock") = state;
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Insights::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Insights>() {
            let taken = std::mem::take(&mut *o.state.write().expect("insights lock"));
            *self.state.write().expect("insights lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
