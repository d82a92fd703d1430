//! The audit tree: each tenant's RFC 9162 Merkle tree over its events in commit order (tenant
//! sequence = leaf index, ADR 020's v1 leaf), kept incrementally as a compact range — one leaf
//! hash and on average one node hash per event — with the leaf hashes, global positions and
//! `recorded_at` of every leaf, which proofs and bundles need (ADR 023).
//!
//! The leaf commits to the SHA-256 of the payload bytes as the runtime hands them over, which are
//! the stored bytes as long as the runtime's store handle has no upcasters (the service's has
//! none; store-level upcasting would have to skip this projection). A bundle re-reads the events
//! raw and refuses to sign when a leaf it recomputes differs from the one kept here.
//!
//! Persisted as, per tenant, its id and per leaf the position delta, the `recorded_at` delta and
//! the leaf hash (~36 bytes per event); the compact range is recomputed from the leaves on load.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use audit::{CompactRange, Hash, LeafHeader};
use domain::TenantId;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::Envelope;

const LAYOUT: u16 = 1;

#[derive(Debug, Default)]
struct TenantTree {
    range: CompactRange,
    leaves: Vec<Hash>,
    positions: Vec<u64>,
    recorded: Vec<i64>,
}

impl TenantTree {
    fn push(&mut self, leaf: Hash, position: u64, recorded: i64) {
        self.range.push(leaf);
        self.leaves.push(leaf);
        self.positions.push(position);
        self.recorded.push(recorded);
    }
}

/// A copy of one tenant's tree as it was at one moment: what a checkpoint signs and a bundle
/// proves against, unaffected by events applied after it was taken.
#[derive(Clone, Debug)]
pub struct TreeView {
    pub size: u64,
    pub root: Hash,
    /// Leaf hashes, `size` of them.
    pub leaves: Vec<Hash>,
    /// The global position of each leaf.
    pub positions: Vec<u64>,
    /// The `recorded_at` of each leaf, microseconds since the epoch.
    pub recorded: Vec<i64>,
}

impl TreeView {
    /// The first tenant sequence whose `recorded_at` is at or after `micros` (`size` if none).
    /// `recorded_at` follows commit order within a tenant (ADR 020's assumption of the store).
    pub fn first_at_or_after(&self, micros: i64) -> u64 {
        self.recorded.partition_point(|r| *r < micros) as u64
    }
}

/// Microseconds since the epoch, the leaf's time unit.
fn micros(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// The v1 leaf of `e` at tenant sequence `sequence`.
pub fn leaf_header(e: &Envelope, sequence: u64) -> LeafHeader {
    LeafHeader::new(
        sequence,
        e.global_position,
        micros(e.occurred_at),
        micros(e.recorded_at),
        e.event_type.clone(),
        e.schema_version,
        e.stream_id.clone(),
        e.payload.as_bytes(),
    )
}

#[derive(Debug, Default)]
pub struct AuditTree {
    tenants: RwLock<HashMap<TenantId, TenantTree>>,
}

impl AuditTree {
    /// How many events of `tenant` the tree holds.
    pub fn size(&self, tenant: TenantId) -> u64 {
        self.tenants
            .read()
            .expect("audit tree lock")
            .get(&tenant)
            .map_or(0, |t| t.range.size())
    }

    /// Every tenant with its tree's size.
    pub fn sizes(&self) -> Vec<(TenantId, u64)> {
        let map = self.tenants.read().expect("audit tree lock");
        map.iter()
            .map(|(t, tree)| (*t, tree.range.size()))
            .collect()
    }

    /// The tree's size and root for `tenant` (the empty root for a tenant without events).
    pub fn head(&self, tenant: TenantId) -> (u64, Hash) {
        let map = self.tenants.read().expect("audit tree lock");
        match map.get(&tenant) {
            Some(t) => (t.range.size(), t.range.root()),
            None => (0, audit::EMPTY_ROOT),
        }
    }

    /// A copy of `tenant`'s whole tree (linear in its size: ~48 bytes per event).
    pub fn view(&self, tenant: TenantId) -> TreeView {
        let map = self.tenants.read().expect("audit tree lock");
        match map.get(&tenant) {
            Some(t) => TreeView {
                size: t.range.size(),
                root: t.range.root(),
                leaves: t.leaves.clone(),
                positions: t.positions.clone(),
                recorded: t.recorded.clone(),
            },
            None => TreeView {
                size: 0,
                root: audit::EMPTY_ROOT,
                leaves: Vec::new(),
                positions: Vec::new(),
                recorded: Vec::new(),
            },
        }
    }
}

impl Projection for AuditTree {
    fn name(&self) -> &'static str {
        "audit_tree"
    }

    fn reads_stored_bytes(&self) -> bool {
        true
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut map = self.tenants.write().expect("audit tree lock");
        for e in events {
            let tree = map.entry(e.tenant_id).or_default();
            let header = leaf_header(e, tree.range.size());
            let leaf = header.leaf_hash().map_err(|err| Unreadable::at(e, err))?;
            tree.push(leaf, e.global_position, header.recorded_at_micros);
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let map = self.tenants.read().expect("audit tree lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(map.len());
        for (tenant, t) in map.iter() {
            w.uuid(tenant.as_uuid());
            w.usize(t.leaves.len());
            let (mut prev_pos, mut prev_rec) = (0u64, 0i64);
            for i in 0..t.leaves.len() {
                w.u64(t.positions[i] - prev_pos);
                w.i64(t.recorded[i].wrapping_sub(prev_rec));
                w.fixed(&t.leaves[i]);
                prev_pos = t.positions[i];
                prev_rec = t.recorded[i];
            }
        }
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let tenants = r.len()?;
        let mut map = HashMap::with_capacity(tenants);
        for _ in 0..tenants {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let n = r.len()?;
            let mut t = TenantTree::default();
            let (mut pos, mut rec) = (0u64, 0i64);
            for _ in 0..n {
                let delta = r.u64()?;
                if delta == 0 {
                    return Err(CodecError::Malformed("positions not increasing".into()));
                }
                pos = pos
                    .checked_add(delta)
                    .ok_or_else(|| CodecError::Malformed("position overflow".into()))?;
                rec = rec.wrapping_add(r.i64()?);
                let leaf = r.fixed::<32>()?;
                t.push(leaf, pos, rec);
            }
            map.insert(tenant, t);
        }
        r.end()?;
        *self.tenants.write().expect("audit tree lock") = map;
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(AuditTree::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<AuditTree>() {
            let taken = std::mem::take(&mut *o.tenants.write().expect("audit tree lock"));
            *self.tenants.write().expect("audit tree lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::RawJson;
    use time::OffsetDateTime;
    use uuid::Uuid;

    fn event(tenant: u128, position: u64, payload: &str) -> Envelope {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000 + position as i64).unwrap();
        Envelope {
            global_position: position,
            tenant_id: TenantId::from_uuid(Uuid::from_u128(tenant)),
            stream_id: "s".into(),
            stream_version: position,
            event_id: Uuid::from_u128(position as u128),
            event_type: "t.happened".into(),
            schema_version: 1,
            occurred_at: at,
            recorded_at: at,
            actor: "system".into(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            trace_id: None,
            payload: RawJson::parse(payload).unwrap(),
        }
    }

    #[test]
    fn each_tenant_has_its_own_tree_whose_root_is_rfc9162s_and_survives_encoding() {
        let tree = AuditTree::default();
        let events: Vec<_> = (1..=9)
            .map(|p| event(1 + (p % 2) as u128, p, &format!("{{\"n\":{p}}}")))
            .collect();
        tree.apply(&events[..4]).unwrap();
        tree.apply(&events[4..]).unwrap();
        let a = TenantId::from_uuid(Uuid::from_u128(1));
        let view = tree.view(a);
        assert_eq!(view.size, 4, "positions 2, 4, 6, 8");
        assert_eq!(view.positions, vec![2, 4, 6, 8]);
        let expected: Vec<Hash> = events
            .iter()
            .filter(|e| e.tenant_id == a)
            .enumerate()
            .map(|(i, e)| leaf_header(e, i as u64).leaf_hash().unwrap())
            .collect();
        assert_eq!(view.leaves, expected);
        assert_eq!(view.root, audit::root(&expected, 4).unwrap());
        let back = AuditTree::default();
        back.decode(&tree.encode()).unwrap();
        assert_eq!(back.head(a), tree.head(a));
        assert_eq!(back.view(a).recorded, view.recorded);
        let bytes = tree.encode();
        assert!(back.decode(&bytes[..bytes.len() - 3]).is_err());
        assert_eq!(
            back.size(a),
            4,
            "a failed decode leaves the state as it was"
        );
    }
}
