//! The data catalog: each tenant's datasets (until deleted), exports and presets.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::dataset::{DatasetEvent, ExportCompleted, Uploaded};
use domain::preset::{PresetEvent, PresetVersion};
use domain::{DomainEvent, TenantId};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use store::Envelope;
use time::OffsetDateTime;
use uuid::Uuid;

const LAYOUT: u16 = 1;

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

#[derive(Debug, Default)]
struct State {
    datasets: HashMap<TenantId, BTreeMap<Uuid, DatasetView>>,
    exports: HashMap<TenantId, BTreeMap<Uuid, ExportView>>,
    presets: HashMap<TenantId, BTreeMap<Uuid, PresetView>>,
}

#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
}

impl Catalog {
    /// The tenant's datasets, oldest first (ids are time-ordered).
    pub fn datasets(&self, tenant: TenantId) -> Vec<DatasetView> {
        let s = self.state.read().expect("catalog lock");
        s.datasets
            .get(&tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One page of the tenant's datasets in id order: at most `limit` after `after`, and the
    /// id the next page starts after (`None` on the last page). Only the page is cloned,
    /// whatever the tenant holds.
    pub fn datasets_page(
        &self,
        tenant: TenantId,
        after: Option<Uuid>,
        limit: usize,
    ) -> (Vec<DatasetView>, Option<Uuid>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let s = self.state.read().expect("catalog lock");
        let Some(m) = s.datasets.get(&tenant) else {
            return (Vec::new(), None);
        };
        let lower = after.map_or(Unbounded, Excluded);
        let mut range = m.range((lower, Unbounded));
        let mut page = Vec::with_capacity(limit.min(m.len()));
        let mut last = None;
        for (id, v) in range.by_ref().take(limit) {
            page.push(v.clone());
            last = Some(*id);
        }
        let next = if range.next().is_some() { last } else { None };
        (page, next)
    }

    pub fn dataset(&self, tenant: TenantId, id: Uuid) -> Option<DatasetView> {
        let s = self.state.read().expect("catalog lock");
        s.datasets.get(&tenant)?.get(&id).cloned()
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

    pub fn export(&self, tenant: TenantId, id: Uuid) -> Option<ExportView> {
        let s = self.state.read().expect("catalog lock");
        s.exports.get(&tenant)?.get(&id).cloned()
    }
}

impl Catalog {
    /// Apply one event to the state; an event of ours that does not decode stops the batch.
    fn apply_one(s: &mut State, e: &Envelope) -> Result<(), Unreadable> {
        if e.stream_id.starts_with("dataset-") {
            let event =
                DatasetEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            let datasets = s.datasets.entry(e.tenant_id).or_default();
            match event {
                DatasetEvent::Uploaded(u) => {
                    datasets.insert(
                        u.dataset_id,
                        DatasetView {
                            dataset: u,
                            uploaded_at: e.recorded_at,
                            uploaded_by: e.actor.clone(),
                        },
                    );
                }
                DatasetEvent::Deleted(d) => {
                    datasets.remove(&d.dataset_id);
                }
            }
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
            s.exports.entry(e.tenant_id).or_default().insert(
                x.export_id,
                ExportView {
                    export: x,
                    completed_at: e.recorded_at,
                },
            );
        }
        Ok(())
    }
}

impl Projection for Catalog {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut s = self.state.write().expect("catalog lock");
        for e in events {
            Self::apply_one(&mut s, e)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let s = self.state.read().expect("catalog lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(s.datasets.len());
        for (tenant, datasets) in &s.datasets {
            w.uuid(tenant.as_uuid());
            w.usize(datasets.len());
            for d in datasets.values() {
                w.json(&d.dataset);
                w.time(d.uploaded_at);
                w.str(&d.uploaded_by);
            }
        }
        w.usize(s.exports.len());
        for (tenant, exports) in &s.exports {
            w.uuid(tenant.as_uuid());
            w.usize(exports.len());
            for x in exports.values() {
                w.json(&x.export);
                w.time(x.completed_at);
            }
        }
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
            let mut datasets = BTreeMap::new();
            for _ in 0..r.len()? {
                let dataset: Uploaded = r.json()?;
                let view = DatasetView {
                    uploaded_at: r.time()?,
                    uploaded_by: r.str()?,
                    dataset,
                };
                datasets.insert(view.dataset.dataset_id, view);
            }
            s.datasets.insert(tenant, datasets);
        }
        for _ in 0..r.len()? {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let mut exports = BTreeMap::new();
            for _ in 0..r.len()? {
                let export: ExportCompleted = r.json()?;
                let view = ExportView {
                    completed_at: r.time()?,
                    export,
                };
                exports.insert(view.export.export_id, view);
            }
            s.exports.insert(tenant, exports);
        }
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
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Catalog::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Catalog>() {
            let taken = std::mem::take(&mut *o.state.write().expect("catalog lock"));
            *self.state.write().expect("catalog lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
