//! The `Dataset` aggregate (an uploaded CSV file: its name, columns, size and digest) and the
//! facts of the data plane: the successes a unit pays for (`query.run`, `export.completed`,
//! appended with their unit on the usage stream, see `quota.rs`) and the failures
//! (`query.failed`, `export.failed`, `dataset.upload_rejected`, see [`DataFact`]). A failure that
//! used the service's time (a timeout, an export cut by its caps) costs a unit like a success and
//! is appended with it on the usage stream; the others cost nothing (ADR 015,
//! [`FailureClass::is_charged`]).

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

pub fn stream_id(dataset: Uuid) -> String {
    format!("dataset-{dataset}")
}

/// The stream of a tenant's failed queries (and, before `query.run` v2, of its successful ones).
pub const QUERIES_STREAM: &str = "queries";

/// The stream of a tenant's rejected uploads.
pub const UPLOADS_STREAM: &str = "uploads";

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

impl DatasetEvent {
    /// Every event type this aggregate writes, with the schema version it writes.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] =
        &[("dataset.uploaded", 1), ("dataset.deleted", 1)];
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
/// Version 2 added `query_id`, which its unit names (`null` in version 1 events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRun {
    #[serde(default)]
    pub query_id: Option<Uuid>,
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
    /// Spreadsheet formula cells of a CSV (a text starting with `=`, `+`, `-`, `@`, a tab or a
    /// carriage return) written with a leading `'` so that no spreadsheet runs them (OWASP
    /// CSV injection). 0 in v1 events, written before the neutralising.
    #[serde(default)]
    pub formulas_neutralized: u64,
    /// The PII engine that scanned the output (`tenantry-pii/2`; empty in v1 events).
    #[serde(default)]
    pub engine: String,
    /// Columns written whose names say they hold people's names, addresses or dates of birth,
    /// with no column rule (`name (name)`): any keeps the badge from PASS. Empty in v1 events.
    #[serde(default)]
    pub withheld_columns: Vec<String>,
}

/// Why a query or an export failed. Stable strings: funnels and support read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// It ran out of time while running.
    Timeout,
    /// Its time budget went by before it started (waiting for the dataset's connection): nothing
    /// ran.
    Expired,
    /// The SQL does not parse, or names what does not exist.
    Syntax,
    /// The SQL tried something only reading is allowed to do without.
    Denied,
    /// The result would exceed the export's row or byte bounds.
    TooLarge,
    /// Our fault (the dataset could not be loaded, a worker failed).
    Internal,
}

impl FailureClass {
    /// Whether a failure of this class costs a unit (ADR 015): work that used the service's time
    /// is charged (a timeout ran for its whole budget; an export cut by its row or byte cap read
    /// up to the cap, the same work a truncated query answers and is charged for). A refusal
    /// before anything ran (SQL that does not parse or is denied, a budget gone before the start)
    /// and our own faults cost nothing.
    pub fn is_charged(self) -> bool {
        match self {
            FailureClass::Timeout | FailureClass::TooLarge => true,
            FailureClass::Expired
            | FailureClass::Syntax
            | FailureClass::Denied
            | FailureClass::Internal => false,
        }
    }
}

/// `query.failed`: a query that did not produce a result. Charged when its class is (appended
/// with its unit on the usage stream), free otherwise (on the `queries` stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryFailed {
    pub query_id: Uuid,
    pub dataset_id: Uuid,
    pub sql_sha256: String,
    pub error_class: FailureClass,
    pub elapsed_ms: u64,
}

/// `export.failed`: an export that produced no file. Charged when its class is (appended with its
/// unit on the usage stream), free otherwise (on its `export-{id}` stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFailed {
    pub export_id: Uuid,
    pub dataset_id: Uuid,
    pub sql_sha256: Option<String>,
    pub format: String,
    pub preset_id: String,
    pub preset_version: u32,
    pub error_class: FailureClass,
}

/// `dataset.upload_rejected`: an upload refused before it became a dataset. Never the content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRejected {
    /// The name asked for, when it was a valid name.
    pub name: Option<String>,
    pub bytes: u64,
    /// `invalid_name`, `unsupported_media_type`, `empty`, `encoding`, `shape`, `malformed`,
    /// `column_names` or `too_many_columns`.
    pub reason: String,
    /// The CSV line at fault, when there is one.
    pub line: Option<u64>,
}

/// An export's file was downloaded (every download is a fact; a FAIL file only after its
/// badge was acknowledged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportDownloaded {
    pub export_id: Uuid,
    /// The badge the file carries (`PASS` or `FAIL`).
    pub badge: String,
    /// The downloader acknowledged a FAIL badge (`?acknowledge=fail`).
    pub acknowledged_fail: bool,
}

/// Facts of the data plane that need no decision: failures. One whose class is charged is not
/// appended alone but paid for (`quota::UnitFact::failure`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataFact {
    QueryFailed(QueryFailed),
    ExportFailed(ExportFailed),
    UploadRejected(UploadRejected),
    ExportDownloaded(ExportDownloaded),
}

impl DataFact {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("query.failed", 1),
        ("export.failed", 1),
        ("dataset.upload_rejected", 1),
        ("export.downloaded", 1),
    ];

    /// The stream the fact is appended to.
    pub fn stream_id(&self) -> String {
        match self {
            DataFact::QueryFailed(_) => QUERIES_STREAM.to_owned(),
            DataFact::ExportFailed(x) => export_stream_id(x.export_id),
            DataFact::UploadRejected(_) => UPLOADS_STREAM.to_owned(),
            DataFact::ExportDownloaded(x) => export_stream_id(x.export_id),
        }
    }
}

impl DomainEvent for DataFact {
    fn event_type(&self) -> &'static str {
        match self {
            DataFact::QueryFailed(_) => "query.failed",
            DataFact::ExportFailed(_) => "export.failed",
            DataFact::UploadRejected(_) => "dataset.upload_rejected",
            DataFact::ExportDownloaded(_) => "export.downloaded",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            DataFact::QueryFailed(e) => serde_json::to_value(e),
            DataFact::ExportFailed(e) => serde_json::to_value(e),
            DataFact::UploadRejected(e) => serde_json::to_value(e),
            DataFact::ExportDownloaded(e) => serde_json::to_value(e),
        }
        .expect("data facts serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        let p = payload;
        Ok(match (event_type, schema_version) {
            ("query.failed", 1) => DataFact::QueryFailed(EventDecodeError::parse(event_type, p)?),
            ("export.failed", 1) => DataFact::ExportFailed(EventDecodeError::parse(event_type, p)?),
            ("dataset.upload_rejected", 1) => {
                DataFact::UploadRejected(EventDecodeError::parse(event_type, p)?)
            }
            ("export.downloaded", 1) => {
                DataFact::ExportDownloaded(EventDecodeError::parse(event_type, p)?)
            }
            _ => {
                return Err(EventDecodeError::UnknownType {
                    event_type: event_type.to_owned(),
                    schema_version,
                });
            }
        })
    }
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

    #[test]
    fn failures_are_facts_that_round_trip_and_are_catalogued() {
        let facts = vec![
            DataFact::QueryFailed(QueryFailed {
                query_id: Uuid::from_u128(1),
                dataset_id: Uuid::from_u128(2),
                sql_sha256: "ab".repeat(32),
                error_class: FailureClass::Timeout,
                elapsed_ms: 1_000,
            }),
            DataFact::ExportFailed(ExportFailed {
                export_id: Uuid::from_u128(3),
                dataset_id: Uuid::from_u128(2),
                sql_sha256: None,
                format: "csv".into(),
                preset_id: "default".into(),
                preset_version: 1,
                error_class: FailureClass::TooLarge,
            }),
            DataFact::UploadRejected(UploadRejected {
                name: Some("sales".into()),
                bytes: 12,
                reason: "shape".into(),
                line: Some(3),
            }),
            DataFact::ExportDownloaded(ExportDownloaded {
                export_id: Uuid::from_u128(3),
                badge: "FAIL".into(),
                acknowledged_fail: true,
            }),
        ];
        let kinds: Vec<_> = facts
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        assert_eq!(kinds, DataFact::ALL_EVENT_TYPES);
        assert_eq!(facts[0].to_payload()["error_class"], "timeout");
        assert_eq!(
            serde_json::to_value(FailureClass::Expired).unwrap(),
            "expired"
        );
        assert_eq!(facts[1].stream_id(), export_stream_id(Uuid::from_u128(3)));
        for e in facts {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            assert_eq!(
                DataFact::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap(),
                e
            );
        }
        let kinds: Vec<_> = [
            DatasetEvent::Uploaded(uploaded()),
            DatasetEvent::Deleted(Deleted {
                dataset_id: Uuid::from_u128(1),
            }),
        ]
        .iter()
        .map(|e| (e.event_type(), e.schema_version()))
        .collect();
        assert_eq!(kinds, DatasetEvent::ALL_EVENT_TYPES);
    }
}
