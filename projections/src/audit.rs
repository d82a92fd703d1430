//! The audit index: for each tenant, the positions of its events in the log. The audit feed pages
//! through it and reads the envelopes by position (the log has no per-tenant index, ADR 003).

use crate::runtime::Projection;
use domain::TenantId;
use std::collections::HashMap;
use std::sync::RwLock;
use store::Envelope;

#[derive(Debug, Default)]
pub struct Audit {
    positions: RwLock<HashMap<TenantId, Vec<u64>>>,
}

impl Audit {
    /// Up to `limit` positions of `tenant`'s events after `after`, in order.
    pub fn positions_after(&self, tenant: TenantId, after: u64, limit: usize) -> Vec<u64> {
        let map = self.positions.read().expect("audit lock");
        let Some(list) = map.get(&tenant) else {
            return Vec::new();
        };
        let start = list.partition_point(|p| *p <= after);
        list[start..].iter().take(limit).copied().collect()
    }

    pub fn count(&self, tenant: TenantId) -> usize {
        self.positions
            .read()
            .expect("audit lock")
            .get(&tenant)
            .map_or(0, Vec::len)
    }
}

impl Projection for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn apply(&self, e: &Envelope) {
        self.positions
            .write()
            .expect("audit lock")
            .entry(e.tenant_id)
            .or_default()
            .push(e.global_position);
    }
}
