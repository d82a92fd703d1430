//! What billing reads for every tenant at once (ADR 024): each tenant's billing mode and the
//! events its plan timeline is folded from (sign-up, plan changes, scheduled downgrades), so
//! that invoicing 10,000 tenants reads no stream.
//!
//! Persisted as, per tenant, its id, its mode and its plan events as stored (type, version,
//! payload): decoded again by the domain when loaded, so a change of layout there is a decode
//! error (and a replay), never a misread.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::billing::{AccountEvent, BillingMode, PlanSpan, plan_timeline};
use domain::tenant::TenantEvent;
use domain::{DomainEvent, TenantId};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::Envelope;

const LAYOUT: u16 = 1;

#[derive(Debug, Default, Clone)]
struct Tenant {
    mode: BillingMode,
    plan_events: Vec<TenantEvent>,
}

#[derive(Debug, Default)]
pub struct BillingView {
    tenants: RwLock<HashMap<TenantId, Tenant>>,
}

impl BillingView {
    /// The tenant's billing mode (`shadow` until changed).
    pub fn mode(&self, tenant: TenantId) -> BillingMode {
        self.tenants
            .read()
            .expect("billing lock")
            .get(&tenant)
            .map_or(BillingMode::Shadow, |t| t.mode)
    }

    /// The tenant's plans over time; empty for a tenant not seen.
    pub fn timeline(&self, tenant: TenantId) -> Vec<PlanSpan> {
        self.tenants
            .read()
            .expect("billing lock")
            .get(&tenant)
            .map(|t| plan_timeline(&t.plan_events))
            .unwrap_or_default()
    }
}

impl Projection for BillingView {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut map = self.tenants.write().expect("billing lock");
        for e in events {
            match e.event_type.as_str() {
                "tenant.signed_up" | "plan.changed" | "plan.change_scheduled" => {
                    let ev = TenantEvent::from_stored(
                        &e.event_type,
                        e.schema_version,
                        e.payload.as_bytes(),
                    )
                    .map_err(|x| Unreadable::at(e, x))?;
                    map.entry(e.tenant_id).or_default().plan_events.push(ev);
                }
                "billing.mode_changed" => {
                    let AccountEvent::ModeChanged(m) = AccountEvent::from_stored(
                        &e.event_type,
                        e.schema_version,
                        e.payload.as_bytes(),
                    )
                    .map_err(|x| Unreadable::at(e, x))?;
                    map.entry(e.tenant_id).or_default().mode = m.to;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let map = self.tenants.read().expect("billing lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(map.len());
        for (id, t) in map.iter() {
            w.uuid(id.as_uuid());
            w.str(t.mode.as_str());
            w.usize(t.plan_events.len());
            for e in &t.plan_events {
                w.str(e.event_type());
                w.u64(u64::from(e.schema_version()));
                w.str(&e.to_payload().to_string());
            }
        }
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let n = r.len()?;
        let mut map = HashMap::with_capacity(n);
        for _ in 0..n {
            let id = TenantId::from_uuid(r.uuid()?);
            let mode = BillingMode::parse(&r.str()?)
                .ok_or_else(|| CodecError::Malformed("billing mode".into()))?;
            let k = r.len()?;
            let mut plan_events = Vec::with_capacity(k);
            for _ in 0..k {
                let t = r.str()?;
                let v = u16::try_from(r.u64()?)
                    .map_err(|_| CodecError::Malformed("schema version".into()))?;
                let p = r.str()?;
                plan_events.push(
                    TenantEvent::from_stored(&t, v, p.as_bytes())
                        .map_err(|e| CodecError::Malformed(e.to_string()))?,
                );
            }
            map.insert(id, Tenant { mode, plan_events });
        }
        r.end()?;
        *self.tenants.write().expect("billing lock") = map;
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(BillingView::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<BillingView>() {
            let taken = std::mem::take(&mut *o.tenants.write().expect("billing lock"));
            *self.tenants.write().expect("billing lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
