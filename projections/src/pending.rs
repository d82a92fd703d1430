//! Rows a projection has applied that the store may not hold yet (ADR 039).
//!
//! The runtime publishes a page's position as soon as the page is applied and writes the rows in
//! the background, in order; until a row's write is done, the projection's reads find it here
//! first. So the rows' write is never on the path of a command waiting to read its own write,
//! and a reader never misses a row of a position it was told is applied.

use domain::TenantId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, RwLock};
use store::{ProjectionRow, RowWrite, Store};

#[derive(Debug)]
struct Overlay {
    write: RowWrite,
    /// The batch that carries it to the store.
    batch: u64,
}

#[derive(Debug, Default)]
struct Queue {
    rows: Vec<ProjectionRow>,
    /// The batch the rows pushed now belong to.
    batch: u64,
    /// Batches taken and not yet stored, oldest first.
    taken: VecDeque<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    overlay: RwLock<BTreeMap<(TenantId, Vec<u8>), Overlay>>,
    queue: Mutex<Queue>,
}

/// What the overlay says of a key.
enum Seen {
    /// Nothing pending: the store's row is the row.
    Store,
    Value(Vec<u8>),
    Gone,
    /// These bytes unless the store has a row.
    IfAbsent(Vec<u8>),
}

impl Pending {
    /// A row the projection produced (in the order it applies events).
    pub(crate) fn push(&self, row: ProjectionRow) {
        let mut q = self.queue.lock().expect("pending lock");
        let batch = q.batch;
        {
            let mut overlay = self.overlay.write().expect("pending lock");
            let k = (row.tenant, row.key.clone());
            let write = match overlay.remove(&k) {
                Some(earlier) => earlier.write.then(row.write.clone()),
                None => row.write.clone(),
            };
            overlay.insert(k, Overlay { write, batch });
        }
        q.rows.push(row);
    }

    /// The rows pushed since the last call: one batch for the store.
    pub(crate) fn take(&self) -> Vec<ProjectionRow> {
        let mut q = self.queue.lock().expect("pending lock");
        if q.rows.is_empty() {
            return Vec::new();
        }
        let batch = q.batch;
        q.taken.push_back(batch);
        q.batch += 1;
        std::mem::take(&mut q.rows)
    }

    /// The oldest batch taken is in the store: its rows are read from there now (unless a later
    /// batch wrote them again).
    pub(crate) fn stored(&self) {
        let Some(batch) = self.queue.lock().expect("pending lock").taken.pop_front() else {
            return;
        };
        self.overlay
            .write()
            .expect("pending lock")
            .retain(|_, o| o.batch > batch);
    }

    /// Forget everything (the state was replaced by a decode or an adoption).
    pub(crate) fn clear(&self) {
        *self.queue.lock().expect("pending lock") = Queue::default();
        self.overlay.write().expect("pending lock").clear();
    }

    fn seen(&self, tenant: TenantId, key: &[u8]) -> Seen {
        let overlay = self.overlay.read().expect("pending lock");
        match overlay.get(&(tenant, key.to_vec())).map(|o| &o.write) {
            None => Seen::Store,
            Some(RowWrite::Put(v)) => Seen::Value(v.clone()),
            Some(RowWrite::Delete) => Seen::Gone,
            Some(RowWrite::Insert(v)) => Seen::IfAbsent(v.clone()),
        }
    }

    /// The row under `key`.
    pub(crate) async fn row(
        &self,
        store: &Store,
        projection: &str,
        tenant: TenantId,
        key: &[u8],
    ) -> store::Result<Option<Vec<u8>>> {
        Ok(self
            .rows_at(store, projection, vec![(tenant, key.to_vec())])
            .await?
            .pop()
            .flatten())
    }

    /// The rows under each `(tenant, key)`, in the order asked.
    pub(crate) async fn rows_at(
        &self,
        store: &Store,
        projection: &str,
        keys: Vec<(TenantId, Vec<u8>)>,
    ) -> store::Result<Vec<Option<Vec<u8>>>> {
        let seen: Vec<Seen> = keys.iter().map(|(t, k)| self.seen(*t, k)).collect();
        let ask: Vec<(TenantId, Vec<u8>)> = keys
            .iter()
            .zip(&seen)
            .filter(|(_, s)| matches!(s, Seen::Store | Seen::IfAbsent(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut stored = store.projection_rows_at(projection, ask).await?.into_iter();
        Ok(seen
            .into_iter()
            .map(|s| match s {
                Seen::Value(v) => Some(v),
                Seen::Gone => None,
                Seen::Store => stored.next().flatten(),
                Seen::IfAbsent(v) => Some(stored.next().flatten().unwrap_or(v)),
            })
            .collect())
    }

    /// `tenant`'s rows with keys in `from..=to`, in key order, at most `limit`.
    pub(crate) async fn range(
        &self,
        store: &Store,
        projection: &str,
        tenant: TenantId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let pending: Vec<(Vec<u8>, RowWrite)> = {
            let overlay = self.overlay.read().expect("pending lock");
            overlay
                .range((tenant, from.to_vec())..=(tenant, to.to_vec()))
                .map(|((_, k), o)| (k.clone(), o.write.clone()))
                .collect()
        };
        // Enough of the store's rows that `limit` of them survive the pending removals.
        let window = limit.saturating_add(pending.len());
        let rows = store
            .projection_rows(projection, tenant, from, to, window)
            .await?;
        if pending.is_empty() {
            return Ok(rows);
        }
        let exhausted = rows.len() < window;
        let last = rows.last().map(|(k, _)| k.clone());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
        for (k, write) in pending {
            // Past the window the store's rows are unknown: a pending row there is left for the
            // next page (none of them can come before the window's `limit` survivors).
            if !exhausted && last.as_ref().is_some_and(|l| &k > l) {
                continue;
            }
            match write {
                RowWrite::Put(v) => {
                    merged.insert(k, v);
                }
                RowWrite::Delete => {
                    merged.remove(&k);
                }
                RowWrite::Insert(v) => {
                    merged.entry(k).or_insert(v);
                }
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(tenant: TenantId, k: u8, write: RowWrite) -> ProjectionRow {
        ProjectionRow {
            tenant,
            key: vec![k],
            write,
        }
    }

    fn put(v: &str) -> RowWrite {
        RowWrite::Put(v.as_bytes().to_vec())
    }

    fn text(rows: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(u8, String)> {
        rows.into_iter()
            .map(|(k, v)| (k[0], String::from_utf8(v).unwrap()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_pending_rows_over_the_stored_ones_until_they_are_stored() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let t = TenantId::from_uuid(Uuid::new_v4());
        store
            .put_projection_rows(
                "p",
                (1..=6).map(|k| row(t, k, put(&format!("s{k}")))).collect(),
            )
            .await
            .unwrap();
        let pending = Pending::default();
        for r in [
            row(t, 2, RowWrite::Delete),
            row(t, 3, put("new3")),
            row(t, 4, RowWrite::Insert(b"ins4".to_vec())),
            row(t, 7, RowWrite::Insert(b"ins7".to_vec())),
            row(t, 0, put("zero")),
        ] {
            pending.push(r);
        }
        let check = || async {
            assert_eq!(
                text(pending.range(store, "p", t, &[], &[0xff], 3).await.unwrap()),
                vec![(0, "zero".into()), (1, "s1".into()), (3, "new3".into())]
            );
            assert_eq!(
                text(
                    pending
                        .range(store, "p", t, &[4], &[0xff], 10)
                        .await
                        .unwrap()
                ),
                vec![
                    (4, "s4".into()),
                    (5, "s5".into()),
                    (6, "s6".into()),
                    (7, "ins7".into())
                ],
                "an insert over a stored row leaves it"
            );
            assert_eq!(
                pending
                    .rows_at(store, "p", [2, 4, 7, 9].map(|k| (t, vec![k])).to_vec())
                    .await
                    .unwrap(),
                vec![None, Some(b"s4".to_vec()), Some(b"ins7".to_vec()), None]
            );
        };
        check().await;
        let rows = pending.take();
        assert_eq!(rows.len(), 5);
        check().await;
        store.put_projection_rows("p", rows).await.unwrap();
        pending.stored();
        assert!(pending.overlay.read().unwrap().is_empty());
        check().await;
    }

    #[test]
    fn a_row_written_again_after_its_batch_was_taken_stays_pending_until_its_own_is_stored() {
        let t = TenantId::from_uuid(Uuid::new_v4());
        let pending = Pending::default();
        pending.push(row(t, 1, put("first")));
        let first = pending.take();
        pending.push(row(t, 1, put("second")));
        let second = pending.take();
        pending.stored();
        assert!(matches!(
            pending.seen(t, &[1]),
            Seen::Value(v) if v == b"second"
        ));
        pending.stored();
        assert!(matches!(pending.seen(t, &[1]), Seen::Store));
        assert_eq!((first.len(), second.len()), (1, 1));
    }
}
