//! The `Dataset` aggregate (an uploaded CSV file: its name, columns, size and digest) and the
//! facts of the data plane that need no decision (`query.run`, `export.completed`).

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

pub fn stream_id(dataset: Uuid) -> String {
    format!("dataset-{dataset}")
}

/// The stream of a tenant's query facts.
pub const QUERIES_STREAM: &str = "queries";

pub fn export_stream_id(export: Uuid) -> String {
    format!("export-{export}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetColumn {
    pub name: String,
    /// integer, float, boolean, date, timestamp or text.
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    pub dataset_id: Uuid,
    pub name: String,
    pub columns: Vec<DatasetColumn>,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub dataset_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetEvent {
    Uploaded(Uploaded),
    Deleted(Deleted),
}

impl DomainEvent for DatasetEvent {
    fn event_type(&self) -> &'static str {
        match self {
            DatasetEvent::Uploaded(_) => "dataset.uploaded",
            DatasetEvent::Deleted(_) => "dataset.deleted",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            DatasetEvent::Uploaded(e) => serde_json::to_value(e),
            DatasetEvent::Deleted(e) => serde_json::to_value(e),
        }
        .expect("dataset events serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("dataset.uploaded", 1) => Ok(DatasetEvent::Uploaded(EventDecodeError::parse(
                event_type, payload,
            )?)),
            ("dataset.deleted", 1) => Ok(DatasetEvent::Deleted(EventDecodeError::parse(
                event_type, payload,
            )?)),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetCommand {
    Upload(Uploaded),
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    #[error("this dataset already exists")]
    AlreadyUploaded,
    #[error("no such dataset")]
    NotFound,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub uploaded: Option<Uploaded>,
    pub deleted: bool,
}

impl Aggregate for Dataset {
    type Command = DatasetCommand;
    type Event = DatasetEvent;
    type Error = DatasetError;

    fn decide(
        &self,
        command: &DatasetCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<DatasetEvent>, DatasetError> {
        match (command, &self.uploaded, self.deleted) {
            (DatasetCommand::Upload(_), Some(_), _) => Err(DatasetError::AlreadyUploaded),
            (DatasetCommand::Upload(u), None, _) => Ok(vec![DatasetEvent::Uploaded(u.clone())]),
            (DatasetCommand::Delete, None, _) | (DatasetCommand::Delete, _, true) => {
                Err(DatasetError::NotFound)
            }
            (DatasetCommand::Delete, Some(u), false) => Ok(vec![DatasetEvent::Deleted(Deleted {
                dataset_id: u.dataset_id,
            })]),
        }
    }

    fn evolve(&mut self, event: &DatasetEvent) {
        match event {
            DatasetEvent::Uploaded(u) => self.uploaded = Some(u.clone()),
            DatasetEvent::Deleted(_) => self.deleted = true,
        }
    }
}

/// `query.run`: a successful query. The SQL is kept only as its digest (it may quote PII).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRun {
    pub dataset_id: Uuid,
    pub sql_sha256: String,
    pub rows: u64,
    pub truncated: bool,
    pub elapsed_ms: u64,
}

/// `export.completed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCompleted {
    pub export_id: Uuid,
    pub dataset_id: Uuid,
    pub sql_sha256: Option<String>,
    pub format: String,
    pub preset_id: String,
    pub preset_version: u32,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// PASS or FAIL.
    pub badge: String,
    /// Findings left in the output, per detector; never the values.
    pub findings: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;

    fn uploaded() -> Uploaded {
        Uploaded {
            dataset_id: Uuid::from_u128(1),
            name: "sales".into(),
            columns: vec![DatasetColumn {
                name: "id".into(),
                kind: "integer".into(),
            }],
            rows: 3,
            bytes: 20,
            sha256: "00".repeat(32),
        }
    }

    #[test]
    fn a_dataset_is_uploaded_once_and_deleted_once() {
        given::<Dataset>([])
            .when(DatasetCommand::Upload(uploaded()))
            .then([DatasetEvent::Uploaded(uploaded())]);
        given::<Dataset>([DatasetEvent::Uploaded(uploaded())])
            .when(DatasetCommand::Upload(uploaded()))
            .then_err(DatasetError::AlreadyUploaded);
        given::<Dataset>([DatasetEvent::Uploaded(uploaded())])
            .when(DatasetCommand::Delete)
            .then([DatasetEvent::Deleted(Deleted {
                dataset_id: Uuid::from_u128(1),
            })]);
        given::<Dataset>([
            DatasetEvent::Uploaded(uploaded()),
            DatasetEvent::Deleted(Deleted {
                dataset_id: Uuid::from_u128(1),
            }),
        ])
        .when(DatasetCommand::Delete)
        .then_err(DatasetError::NotFound);
        given::<Dataset>([])
            .when(DatasetCommand::Delete)
            .then_err(DatasetError::NotFound);
    }
}
