//! The data catalog: each tenant's datasets (until deleted) and exports.

use crate::runtime::Projection;
use domain::dataset::{DatasetEvent, ExportCompleted, Uploaded};
use domain::preset::{PresetEvent, PresetVersion};
use domain::{DomainEvent, TenantId};
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use store::Envelope;
use time::OffsetDateTime;
use uuid::Uuid;

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

impl Projection for Catalog {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn apply(&self, e: &Envelope) {
        if e.stream_id.starts_with("dataset-") {
            let Ok(event) =
                DatasetEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
            else {
                tracing::error!(position = e.global_position, "unreadable dataset event");
                return;
            };
            let mut s = self.state.write().expect("catalog lock");
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
            let Ok(event) =
                PresetEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
            else {
                tracing::error!(position = e.global_position, "unreadable preset event");
                return;
            };
            let mut s = self.state.write().expect("catalog lock");
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
            match serde_json::from_str::<ExportCompleted>(e.payload.as_str()) {
                Ok(x) => {
                    let mut s = self.state.write().expect("catalog lock");
                    s.exports.entry(e.tenant_id).or_default().insert(
                        x.export_id,
                        ExportView {
                            export: x,
                            completed_at: e.recorded_at,
                        },
                    );
                }
                Err(err) => {
                    tracing::error!(position = e.global_position, error = %err, "unreadable export event")
                }
            }
        }
    }
}
