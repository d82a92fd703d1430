//! The data catalog: each tenant's datasets (until deleted), exports and presets.
//!
//! Datasets and exports grow with what tenants do, so they are rows in the store (ADR 039), keyed
//! by a kind byte and the id (ids are time-ordered: key order is upload order); only presets, a
//! handful per tenant, are in memory. The datasets read last are cached (a query looks its dataset
//! up every time), two generations of at most `CACHED / 2` each. Rows applied and not yet stored
//! are read from the pending ones (`pending.rs`).
//!
//! A deleted dataset's row becomes a tombstone (an empty value) and an upload's row is written
//! only where none is: applying the log again (a replay, a rebuild beside the live catalog) never
//! brings a deleted dataset back, not even for a moment.

use crate::codec::{CodecError, Reader, Writer};
use crate::pending::Pending;
use crate::runtime::{Projection, Unreadable};
use domain::dataset::{DatasetEvent, ExportCompleted, Uploaded};
use domain::preset::{PresetEvent, PresetVersion};
use domain::{DomainEvent, TenantId};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use store::{Envelope, ProjectionRow, RowWrite, Store, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

const NAME: &str = "catalog";
/// 2: presets only, datasets and exports in rows (1 held them all).
const LAYOUT: u16 = 2;
/// The key's first byte: what the row is.
const DATASET: u8 = b'd';
const EXPORT: u8 = b'x';
/// Datasets kept in the cache at most: the ones queried lately (a miss is one row read).
const CACHED: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetView {
    pub dataset: Uploaded,
    pub uploaded_at: OffsetDateTime,
    pub uploaded_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportView {
    pub export: ExportCompleted,
    pub completed_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresetView {
    pub preset_id: Uuid,
    pub versions: BTreeMap<u32, PresetVersion>,
    pub deleted: bool,
}

impl PresetView {
    pub fn latest(&self) -> &PresetVersion {
        self.versions
            .values()
            .next_back()
            .expect("a preset has a first version")
    }
}

fn key(kind: u8, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

fn encode_dataset(d: &DatasetView) -> Vec<u8> {
    let mut w = Writer::with_capacity("catalog.dataset", 1, 512);
    w.json(&d.dataset);
    w.time(d.uploaded_at);
    w.str(&d.uploaded_by);
    w.finish()
}

fn decode_dataset(bytes: &[u8]) -> Result<DatasetView, CodecError> {
    let mut r = Reader::new(bytes, "catalog.dataset", 1)?;
    let dataset = r.json()?;
    let view = DatasetView {
        dataset,
        uploaded_at: r.time()?,
        uploaded_by: r.str()?,
    };
    r.end()?;
    Ok(view)
}

fn encode_export(x: &ExportView) -> Vec<u8> {
    let mut w = Writer::with_capacity("catalog.export", 1, 512);
    w.json(&x.export);
    w.time(x.completed_at);
    w.finish()
}

fn decode_export(bytes: &[u8]) -> Result<ExportView, CodecError> {
    let mut r = Reader::new(bytes, "catalog.export", 1)?;
    let export = r.json()?;
    let view = ExportView {
        export,
        completed_at: r.time()?,
    };
    r.end()?;
    Ok(view)
}

fn unreadable(e: CodecError) -> StoreError {
    StoreError::Backend(format!("a catalog row cannot be read: {e}"))
}

#[derive(Debug, Default)]
struct State {
    presets: HashMap<TenantId, BTreeMap<Uuid, PresetView>>,
}

/// Datasets read lately. `epoch` moves whenever an applied event changes datasets, so that a read
/// that began before a change does not cache what it read.
#[derive(Debug, Default)]
struct Cache {
    epoch: u64,
    new: HashMap<(TenantId, Uuid), DatasetView>,
    old: HashMap<(TenantId, Uuid), DatasetView>,
}

impl Cache {
    fn get(&mut self, k: (TenantId, Uuid)) -> Option<DatasetView> {
        if let Some(v) = self.new.get(&k) {
            return Some(v.clone());
        }
        let v = self.old.remove(&k)?;
        self.insert(k, v.clone());
        Some(v)
    }

    fn insert(&mut self, k: (TenantId, Uuid), v: DatasetView) {
        if self.new.len() >= CACHED / 2 {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(k, v);
    }

    fn forget(&mut self, k: &(TenantId, Uuid)) {
        self.new.remove(k);
        self.old.remove(k);
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
    cache: Mutex<Cache>,
    pending: Pending,
}

impl Catalog {
    /// One page of the tenant's datasets in id order (upload order): at most `limit` after
    /// `after`, and the id the next page starts after (`None` on the last page).
    pub async fn datasets_page(
        &self,
        store: &Store,
        tenant: TenantId,
        after: Option<Uuid>,
        limit: usize,
    ) -> store::Result<(Vec<DatasetView>, Option<Uuid>)> {
        // The first key past `after`'s is its own followed by a zero byte.
        let from = match after {
            Some(id) => {
                let mut k = key(DATASET, id);
                k.push(0);
                k
            }
            None => vec![DATASET],
        };
        let mut from = from;
        let mut page = Vec::new();
        loop {
            let want = limit.saturating_add(1).saturating_sub(page.len());
            let rows = self
                .pending
                .range(store, NAME, tenant, &from, &[DATASET, 0xff], want)
                .await?;
            let exhausted = rows.len() < want;
            if let Some((k, _)) = rows.last() {
                from = k.clone();
                from.push(0);
            }
            for (_, v) in rows.iter().filter(|(_, v)| !v.is_empty()) {
                page.push(decode_dataset(v).map_err(unreadable)?);
            }
            if page.len() > limit || exhausted {
                break;
            }
        }
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|d| d.dataset.dataset_id)
        } else {
            None
        };
        Ok((page, next))
    }

    pub async fn dataset(
        &self,
        store: &Store,
        tenant: TenantId,
        id: Uuid,
    ) -> store::Result<Option<DatasetView>> {
        let epoch = {
            let mut cache = self.cache.lock().expect("catalog cache lock");
            if let Some(v) = cache.get((tenant, id)) {
                return Ok(Some(v));
            }
            cache.epoch
        };
        let Some(bytes) = self
            .pending
            .row(store, NAME, tenant, &key(DATASET, id))
            .await?
        else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(None); // deleted
        }
        let view = decode_dataset(&bytes).map_err(unreadable)?;
        let mut cache = self.cache.lock().expect("catalog cache lock");
        if cache.epoch == epoch {
            cache.insert((tenant, id), view.clone());
        }
        Ok(Some(view))
    }

    /// The tenant's presets (deleted ones too: their history is kept).
    pub fn presets(&self, tenant: TenantId) -> Vec<PresetView> {
        let s = self.state.read().expect("catalog lock");
        s.presets
            .get(&tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn preset(&self, tenant: TenantId, id: Uuid) -> Option<PresetView> {
        let s = self.state.read().expect("catalog lock");
        s.presets.get(&tenant)?.get(&id).cloned()
    }

    pub async fn export(
        &self,
        store: &Store,
        tenant: TenantId,
        id: Uuid,
    ) -> store::Result<Option<ExportView>> {
        self.pending
            .row(store, NAME, tenant, &key(EXPORT, id))
            .await?
            .map(|b| decode_export(&b).map_err(unreadable))
            .transpose()
    }
}

impl Catalog {
    /// Apply one event to the state; an event of ours that does not decode stops the batch.
    fn apply_one(&self, s: &mut State, e: &Envelope) -> Result<(), Unreadable> {
        if e.stream_id.starts_with("dataset-") {
            let event =
                DatasetEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            let (id, write) = match event {
                DatasetEvent::Uploaded(u) => {
                    let view = DatasetView {
                        dataset: u,
                        uploaded_at: e.recorded_at,
                        uploaded_by: e.actor.clone(),
                    };
                    (
                        view.dataset.dataset_id,
                        RowWrite::Insert(encode_dataset(&view)),
                    )
                }
                DatasetEvent::Deleted(d) => (d.dataset_id, RowWrite::Put(Vec::new())),
            };
            self.pending.push(ProjectionRow {
                tenant: e.tenant_id,
                key: key(DATASET, id),
                write,
            });
            let mut cache = self.cache.lock().expect("catalog cache lock");
            cache.epoch += 1;
            cache.forget(&(e.tenant_id, id));
        } else if e.stream_id.starts_with("preset-") {
            let event =
                PresetEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            let presets = s.presets.entry(e.tenant_id).or_default();
            match event {
                PresetEvent::Created(v) | PresetEvent::Edited(v) => {
                    let view = presets.entry(v.preset_id).or_insert_with(|| PresetView {
                        preset_id: v.preset_id,
                        versions: BTreeMap::new(),
                        deleted: false,
                    });
                    view.versions.insert(v.version, v);
                }
                PresetEvent::Deleted(d) => {
                    if let Some(view) = presets.get_mut(&d.preset_id) {
                        view.deleted = true;
                    }
                }
            }
        } else if e.event_type == "export.completed" {
            let x = serde_json::from_str::<ExportCompleted>(e.payload.as_str())
                .map_err(|err| Unreadable::at(e, err))?;
            let view = ExportView {
                export: x,
                completed_at: e.recorded_at,
            };
            self.pending.push(ProjectionRow {
                tenant: e.tenant_id,
                key: key(EXPORT, view.export.export_id),
                write: RowWrite::Put(encode_export(&view)),
            });
        }
        Ok(())
    }
}

impl Projection for Catalog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut s = self.state.write().expect("catalog lock");
        for e in events {
            self.apply_one(&mut s, e)?;
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
        let s = self.state.read().expect("catalog lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(s.presets.len());
        for (tenant, presets) in &s.presets {
            w.uuid(tenant.as_uuid());
            w.usize(presets.len());
            for p in presets.values() {
                w.uuid(&p.preset_id);
                w.bool(p.deleted);
                w.usize(p.versions.len());
                for v in p.versions.values() {
                    w.json(v);
                }
            }
        }
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let mut s = State::default();
        for _ in 0..r.len()? {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let mut presets = BTreeMap::new();
            for _ in 0..r.len()? {
                let preset_id = r.uuid()?;
                let deleted = r.bool()?;
                let mut versions = BTreeMap::new();
                for _ in 0..r.len()? {
                    let v: PresetVersion = r.json()?;
                    versions.insert(v.version, v);
                }
                if versions.is_empty() {
                    return Err(CodecError::Malformed("a preset without versions".into()));
                }
                presets.insert(
                    preset_id,
                    PresetView {
                        preset_id,
                        versions,
                        deleted,
                    },
                );
            }
            s.presets.insert(tenant, presets);
        }
        r.end()?;
        *self.state.write().expect("catalog lock") = s;
        *self.cache.lock().expect("catalog cache lock") = Cache::default();
        self.pending.clear();
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Catalog::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Catalog>() {
            let taken = std::mem::take(&mut *o.state.write().expect("catalog lock"));
            *self.state.write().expect("catalog lock") = taken;
            *self.cache.lock().expect("catalog cache lock") = Cache::default();
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
    use crate::runtime::keep_rows;
    use serde_json::json;
    use store::RawJson;

    fn event(position: u64, tenant: TenantId, stream: &str, t: &str, payload: Value) -> Envelope {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000 + position as i64).unwrap();
        Envelope {
            global_position: position,
            tenant_id: tenant,
            stream_id: stream.into(),
            stream_version: 1,
            event_id: Uuid::new_v4(),
            event_type: t.into(),
            schema_version: 1,
            occurred_at: at,
            recorded_at: at,
            actor: "user:1".into(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            trace_id: None,
            payload: RawJson::from_value(&payload),
        }
    }

    use serde_json::Value;

    fn uploaded(position: u64, tenant: TenantId, id: Uuid) -> Envelope {
        event(
            position,
            tenant,
            &format!("dataset-{id}"),
            "dataset.uploaded",
            json!({"dataset_id": id, "name": format!("d{position}"), "columns": [],
                   "rows": 1, "bytes": 2, "sha256": "00"}),
        )
    }

    fn deleted(position: u64, tenant: TenantId, id: Uuid) -> Envelope {
        event(
            position,
            tenant,
            &format!("dataset-{id}"),
            "dataset.deleted",
            json!({"dataset_id": id}),
        )
    }

    async fn feed(c: &Catalog, store: &Store, events: &[Envelope]) {
        c.apply(events).unwrap();
        keep_rows(store, c).await;
    }

    async fn listed(c: &Catalog, store: &Store, tenant: TenantId, limit: usize) -> Vec<Vec<Uuid>> {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = c.datasets_page(store, tenant, after, limit).await.unwrap();
            pages.push(page.iter().map(|d| d.dataset.dataset_id).collect());
            match next {
                Some(n) => after = Some(n),
                None => return pages,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn datasets_are_rows_paged_in_upload_order_and_a_deleted_one_never_comes_back() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let (t, other) = (
            TenantId::from_uuid(Uuid::new_v4()),
            TenantId::from_uuid(Uuid::new_v4()),
        );
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let catalog = Catalog::default();
        let events: Vec<Envelope> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| uploaded(i as u64 + 1, t, *id))
            .collect();
        feed(&catalog, store, &events).await;
        feed(&catalog, store, &[uploaded(6, other, Uuid::now_v7())]).await;
        // A query reads (and caches) ids[1], then it is deleted.
        assert!(catalog.dataset(store, t, ids[1]).await.unwrap().is_some());
        feed(
            &catalog,
            store,
            &[deleted(7, t, ids[1]), deleted(8, t, ids[3])],
        )
        .await;
        assert_eq!(catalog.dataset(store, t, ids[1]).await.unwrap(), None);
        assert_eq!(
            listed(&catalog, store, t, 2).await,
            vec![vec![ids[0], ids[2]], vec![ids[4]]],
            "pages of two, tombstones skipped, another tenant's not listed"
        );
        assert_eq!(
            listed(&catalog, store, t, 3).await,
            vec![vec![ids[0], ids[2], ids[4]]]
        );

        // Applied, its row not yet stored: found all the same (the pending rows).
        let late = Uuid::now_v7();
        catalog.apply(&[uploaded(9, t, late)]).unwrap();
        assert!(catalog.dataset(store, t, late).await.unwrap().is_some());
        assert_eq!(
            listed(&catalog, store, t, 10).await,
            vec![vec![ids[0], ids[2], ids[4], late]]
        );
        keep_rows(store, &catalog).await;

        // The log applied again from position 1 (a rebuild beside the live catalog): the upload
        // of a deleted dataset does not bring it back while the replay is between the two.
        let rebuilt = Catalog::default();
        feed(&rebuilt, store, &events).await;
        assert_eq!(rebuilt.dataset(store, t, ids[1]).await.unwrap(), None);
        assert_eq!(catalog.dataset(store, t, ids[3]).await.unwrap(), None);
        assert_eq!(
            listed(&catalog, store, t, 10).await,
            vec![vec![ids[0], ids[2], ids[4], late]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_are_rows_and_presets_survive_the_state_codec() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let t = TenantId::from_uuid(Uuid::new_v4());
        let (export, preset) = (Uuid::now_v7(), Uuid::now_v7());
        let catalog = Catalog::default();
        let completed = json!({"export_id": export, "dataset_id": Uuid::now_v7(),
            "sql_sha256": null, "format": "csv", "preset_id": "none", "preset_version": 1,
            "rows": 3, "bytes": 30, "sha256": "ab", "badge": "PASS", "findings": {}});
        let mut x = event(1, t, "exports", "export.completed", completed);
        x.stream_id = format!("export-{export}");
        let p = event(
            2,
            t,
            &format!("preset-{preset}"),
            "preset.created",
            serde_json::to_value(PresetVersion {
                preset_id: preset,
                name: "p".into(),
                version: 1,
                rules: domain::preset::Rules::default_preset(),
            })
            .unwrap(),
        );
        feed(&catalog, store, &[x, p]).await;
        let view = catalog.export(store, t, export).await.unwrap().unwrap();
        assert_eq!(view.export.rows, 3);
        assert_eq!(
            catalog.export(store, t, Uuid::now_v7()).await.unwrap(),
            None
        );
        let back = Catalog::default();
        back.decode(&catalog.encode()).unwrap();
        assert_eq!(catalog.presets(t).len(), 1);
        assert_eq!(back.presets(t), catalog.presets(t));
    }
}
