//! The data catalog: each tenant's datasets (until deleted) and exports.

use crate::runtime::Projection;
use domain::dataset::{DatasetEvent, ExportCompleted, Uploaded};
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

#[derive(Debug, Default)]
struct State {
    datasets: HashMap<TenantId, BTreeMap<Uuid, DatasetView>>,
    exports: HashMap<TenantId, BTreeMap<Uuid, ExportView>>,
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
