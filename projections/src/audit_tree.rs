//! The audit tree: each tenant's RFC 9162 Merkle tree over its events in commit order (tenant
//! sequence = leaf index, ADR 020's v1 leaf), kept incrementally as a compact range (ADR 023).
//!
//! The leaf commits to the SHA-256 of the payload bytes as the runtime hands them over, which are
//! the stored bytes as long as the runtime's store handle has no upcasters (the service's has
//! none; store-level upcasting would have to skip this projection). A bundle re-reads the events
//! raw and refuses to sign when a leaf it recomputes differs from the one kept here.
//!
//! Memory holds, per tenant, only the compact range (one hash per set bit of the size) and the
//! last position: the leaves are rows in the store (ADR 039), one per event, keyed by the event's
//! global position, holding its tenant sequence, its `recorded_at` and its leaf hash (48 bytes).
//! The same rows are the audit feed's per-tenant index of the log (ADR 003 declined one on the
//! log itself). Proofs, bundles and point-in-time reads load the rows they need.
//!
//! Rows applied but not yet in the store are read from the projection's pending rows
//! (`pending.rs`), so a reader that sees a size finds every row below it.

use crate::codec::{CodecError, Reader, Writer};
use crate::pending::Pending;
use crate::runtime::{Projection, Unreadable};
use audit::{CompactRange, Hash, LeafHeader};
use domain::TenantId;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::{Envelope, ProjectionRow, RowWrite, Store, StoreError};

const NAME: &str = "audit_tree";
/// 2: compact ranges only, the leaves in rows (1 held every leaf in the state).
const LAYOUT: u16 = 2;
/// Bytes of a row's value: tenant sequence, `recorded_at` (µs), leaf hash.
const ROW_BYTES: usize = 48;
/// Rows per read of the store.
const READ_ROWS: usize = 10_000;

#[derive(Clone, Debug, Default)]
struct TenantTree {
    range: CompactRange,
    last_position: u64,
}

impl TenantTree {
    fn head(&self) -> Head {
        Head {
            size: self.range.size(),
            root: self.range.root(),
            last_position: self.last_position,
        }
    }
}

/// A tenant's tree as readers see it: its rows are in the store.
#[derive(Clone, Copy, Debug)]
struct Head {
    size: u64,
    root: Hash,
    last_position: u64,
}

const EMPTY: Head = Head {
    size: 0,
    root: audit::EMPTY_ROOT,
    last_position: 0,
};

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

fn row_value(sequence: u64, recorded: i64, leaf: &Hash) -> Vec<u8> {
    let mut v = Vec::with_capacity(ROW_BYTES);
    v.extend_from_slice(&sequence.to_be_bytes());
    v.extend_from_slice(&recorded.to_be_bytes());
    v.extend_from_slice(leaf);
    v
}

/// A row's key: the event's global position, big-endian (bytewise order is position order).
fn key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

fn position_of(tenant: TenantId, key: &[u8]) -> store::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| missing(tenant, "a key of another form"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn missing(tenant: TenantId, what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!(
        "the audit tree of tenant {tenant} does not match its rows: {what}"
    ))
}

#[derive(Debug, Default)]
pub struct AuditTree {
    trees: RwLock<HashMap<TenantId, TenantTree>>,
    pending: Pending,
}

impl AuditTree {
    fn visible(&self, tenant: TenantId) -> Head {
        self.trees
            .read()
            .expect("audit tree lock")
            .get(&tenant)
            .map_or(EMPTY, TenantTree::head)
    }

    /// How many events of `tenant` the tree holds.
    pub fn size(&self, tenant: TenantId) -> u64 {
        self.visible(tenant).size
    }

    /// Every tenant with its tree's size.
    pub fn sizes(&self) -> Vec<(TenantId, u64)> {
        let map = self.trees.read().expect("audit tree lock");
        map.iter().map(|(t, h)| (*t, h.range.size())).collect()
    }

    /// The tree's size and root for `tenant` (the empty root for a tenant without events).
    pub fn head(&self, tenant: TenantId) -> (u64, Hash) {
        let h = self.visible(tenant);
        (h.size, h.root)
    }

    /// Up to `limit` global positions of `tenant`'s events after `after`, in order: the audit
    /// feed's index.
    pub async fn positions_after(
        &self,
        store: &Store,
        tenant: TenantId,
        after: u64,
        limit: usize,
    ) -> store::Result<Vec<u64>> {
        let head = self.visible(tenant);
        if after >= head.last_position {
            return Ok(Vec::new());
        }
        let rows = self
            .pending
            .range(
                store,
                NAME,
                tenant,
                &key(after + 1),
                &key(head.last_position),
                limit,
            )
            .await?;
        rows.into_iter()
            .map(|(k, _)| position_of(tenant, &k))
            .collect()
    }

    /// A copy of `tenant`'s whole tree, read from its rows (linear in its size: ~48 bytes per
    /// event, for as long as the copy is held).
    pub async fn view(&self, store: &Store, tenant: TenantId) -> store::Result<TreeView> {
        let head = self.visible(tenant);
        let n = usize::try_from(head.size).map_err(|e| missing(tenant, e))?;
        let mut view = TreeView {
            size: head.size,
            root: head.root,
            leaves: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            recorded: Vec::with_capacity(n),
        };
        let mut from = 1;
        while view.leaves.len() < n && from <= head.last_position {
            let rows = self
                .pending
                .range(
                    store,
                    NAME,
                    tenant,
                    &key(from),
                    &key(head.last_position),
                    READ_ROWS,
                )
                .await?;
            let Some(last) = rows.last().map(|(k, _)| position_of(tenant, k)) else {
                break;
            };
            for (k, value) in rows {
                let position = position_of(tenant, &k)?;
                let (sequence, rest) = value
                    .split_first_chunk::<8>()
                    .ok_or_else(|| missing(tenant, "a short row"))?;
                let (recorded, leaf) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| missing(tenant, "a short row"))?;
                let leaf: Hash = leaf
                    .try_into()
                    .map_err(|_| missing(tenant, "a short row"))?;
                if u64::from_be_bytes(*sequence) != view.leaves.len() as u64 {
                    return Err(missing(
                        tenant,
                        format!("no leaf {} before position {position}", view.leaves.len()),
                    ));
                }
                view.leaves.push(leaf);
                view.positions.push(position);
                view.recorded.push(i64::from_be_bytes(*recorded));
            }
            from = last? + 1;
        }
        if view.leaves.len() != n {
            return Err(missing(
                tenant,
                format!("{} leaves of {n} found", view.leaves.len()),
            ));
        }
        Ok(view)
    }
}

impl Projection for AuditTree {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads_stored_bytes(&self) -> bool {
        true
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut trees = self.trees.write().expect("audit tree lock");
        for e in events {
            let tree = trees.entry(e.tenant_id).or_default();
            let sequence = tree.range.size();
            let header = leaf_header(e, sequence);
            let leaf = header.leaf_hash().map_err(|err| Unreadable::at(e, err))?;
            tree.range.push(leaf);
            tree.last_position = e.global_position;
            self.pending.push(ProjectionRow {
                tenant: e.tenant_id,
                key: key(e.global_position).to_vec(),
                write: RowWrite::Put(row_value(sequence, header.recorded_at_micros, &leaf)),
            });
        }
        Ok(())
    }

    fn take_rows(&self) -> Vec<ProjectionRow> {
        self.pending.take()
    }

    fn rows_stored(&self) {
        self.pending.stored();
    }

    fn encode(&self) -> Vec<u8> {
        let trees = self.trees.read().expect("audit tree lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(trees.len());
        for (tenant, t) in trees.iter() {
            w.uuid(tenant.as_uuid());
            w.u64(t.range.size());
            for root in t.range.roots() {
                w.fixed(root);
            }
            w.u64(t.last_position);
        }
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let tenants = r.len()?;
        let mut trees = HashMap::with_capacity(tenants);
        for _ in 0..tenants {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let size = r.u64()?;
            let roots = (0..size.count_ones())
                .map(|_| r.fixed::<32>())
                .collect::<Result<Vec<_>, _>>()?;
            let range = CompactRange::from_parts(size, roots)
                .map_err(|e| CodecError::Malformed(e.to_string()))?;
            let last_position = r.u64()?;
            if (size == 0) != (last_position == 0) {
                return Err(CodecError::Malformed(
                    "a tree's size and last position disagree".into(),
                ));
            }
            trees.insert(
                tenant,
                TenantTree {
                    range,
                    last_position,
                },
            );
        }
        r.end()?;
        *self.trees.write().expect("audit tree lock") = trees;
        self.pending.clear();
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(AuditTree::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<AuditTree>() {
            let trees = std::mem::take(&mut *o.trees.write().expect("audit tree lock"));
            *self.trees.write().expect("audit tree lock") = trees;
            self.pending.clear();
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

    /// Apply `events` as the runtime does: apply, store the rows, publish.
    async fn feed(tree: &AuditTree, store: &Store, events: &[Envelope]) {
        tree.apply(events).unwrap();
        crate::runtime::keep_rows(store, tree).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_tenant_has_its_own_tree_whose_root_is_rfc9162s_with_its_leaves_in_rows() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let tree = AuditTree::default();
        let events: Vec<_> = (1..=9)
            .map(|p| event(1 + (p % 2) as u128, p, &format!("{{\"n\":{p}}}")))
            .collect();
        feed(&tree, store, &events[..4]).await;
        feed(&tree, store, &events[4..]).await;
        let a = TenantId::from_uuid(Uuid::from_u128(1));
        let view = tree.view(store, a).await.unwrap();
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
        assert_eq!(
            tree.positions_after(store, a, 4, 10).await.unwrap(),
            vec![6, 8]
        );
        assert_eq!(tree.positions_after(store, a, 2, 1).await.unwrap(), vec![4]);

        // The state holds the compact ranges only; the leaves come back from the rows.
        let back = AuditTree::default();
        back.decode(&tree.encode()).unwrap();
        assert_eq!(back.head(a), tree.head(a));
        let again = back.view(store, a).await.unwrap();
        assert_eq!(again.recorded, view.recorded);
        assert_eq!(again.leaves, view.leaves);
        let bytes = tree.encode();
        assert!(back.decode(&bytes[..bytes.len() - 3]).is_err());
        assert_eq!(
            back.size(a),
            4,
            "a failed decode leaves the state as it was"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_not_yet_stored_are_read_from_the_pending_ones() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let tree = AuditTree::default();
        let a = TenantId::from_uuid(Uuid::from_u128(1));
        feed(&tree, store, &[event(1, 1, "{}")]).await;
        tree.apply(&[event(1, 2, "{}"), event(1, 3, "{}")]).unwrap();
        assert_eq!(tree.size(a), 3, "applied: the rows are pending");
        assert_eq!(tree.view(store, a).await.unwrap().positions, vec![1, 2, 3]);
        assert_eq!(
            tree.positions_after(store, a, 1, 10).await.unwrap(),
            vec![2, 3]
        );
        let rows = tree.take_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            tree.positions_after(store, a, 0, 10).await.unwrap(),
            vec![1, 2, 3],
            "taken but not stored: still pending"
        );
        store.put_projection_rows("audit_tree", rows).await.unwrap();
        tree.rows_stored();
        assert_eq!(
            tree.view(store, a).await.unwrap().positions,
            vec![1, 2, 3],
            "now from the store"
        );
        assert_eq!(
            tree.positions_after(store, a, 0, 2).await.unwrap(),
            vec![1, 2]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_whose_rows_are_missing_is_refused_not_proven() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let tree = AuditTree::default();
        let a = TenantId::from_uuid(Uuid::from_u128(1));
        tree.apply(&[event(1, 1, "{}"), event(1, 2, "{}")]).unwrap();
        drop(tree.take_rows());
        tree.rows_stored();
        let err = tree.view(store, a).await.unwrap_err();
        assert!(err.to_string().contains("0 leaves of 2"), "{err}");
    }

    #[test]
    fn a_state_of_layout_1_is_refused_so_the_tree_is_replayed() {
        let mut w = Writer::new("audit_tree", 1);
        w.usize(0);
        let old = w.finish();
        assert!(AuditTree::default().decode(&old).is_err());
    }
}
