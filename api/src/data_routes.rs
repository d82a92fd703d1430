//! The analysts' data plane over HTTP: datasets (upload, list, get, delete), queries, exports
//! and their downloads.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, settle, wait_for};
use crate::problem::Problem;
use crate::quota_routes::{meter, refuse_if_blocked};
use crate::server::AppState;
use crate::shares::Work;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use commands::ExecuteError;
use dataplane::export::{ExportError, Format};
use dataplane::ingest::{self, ColumnType, IngestError};
use dataplane::sandbox::{Limits, QueryError, QueryResult, Table};
use domain::DomainEvent;
use domain::TenantId;
use domain::dataset::{
    self, DataFact, DatasetColumn, DatasetCommand, DatasetError, ExportCompleted, ExportFailed,
    FailureClass, QueryFailed, QueryRun, UploadRejected, Uploaded,
};
use domain::preset::{self, PresetCommand, PresetError, Rules};
use domain::quota::{Meter, UnitFact};
use projections::DatasetView;
use projections::PresetView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{AppendRequest, BlobBody, Expected, NewEvent, RawJson};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The largest file one export may write (it is written to a temporary file as the rows are
/// read, then kept as a blob): the bound on an export's temporary storage.
const EXPORT_MAX_BYTES: u64 = 1 << 30;
/// On PostgreSQL a blob is one `bytea`, sent in one protocol message: both are capped just under
/// 1 GiB by the server, so exports stop well below.
const EXPORT_MAX_BYTES_POSTGRES: u64 = 512 << 20;

/// The most memory an export may hold at once (counted as `sandbox::row_memory` counts it): one
/// row of a streamed export, or the whole redacted copy a query under column rules runs over.
const EXPORT_MAX_MEMORY: usize = 64 << 20;

fn kind_name(k: ColumnType) -> &'static str {
    match k {
        ColumnType::Integer => "integer",
        ColumnType::Float => "float",
        ColumnType::Boolean => "boolean",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamp",
        ColumnType::Text => "text",
    }
}

fn kind_of(name: &str) -> ColumnType {
    match name {
        "integer" => ColumnType::Integer,
        "float" => ColumnType::Float,
        "boolean" => ColumnType::Boolean,
        "date" => ColumnType::Date,
        "timestamp" => ColumnType::Timestamp,
        _ => ColumnType::Text,
    }
}

/// A dataset: its columns and their types, rows, bytes and SHA-256.
#[derive(Serialize, ToSchema)]
pub(crate) struct Dataset {
    dataset_id: Uuid,
    name: String,
    #[schema(value_type = Vec<crate::openapi::Column>)]
    columns: Vec<DatasetColumn>,
    rows: u64,
    bytes: u64,
    sha256: String,
    /// In the catalog (not in the upload's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    uploaded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uploaded_by: Option<String>,
    /// In the upload's answer: the position it wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    global_position: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DatasetList {
    datasets: Vec<Dataset>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DatasetDeleted {
    dataset_id: Uuid,
    deleted: bool,
    global_position: u64,
}

fn dataset_json(v: &DatasetView) -> Dataset {
    let d = &v.dataset;
    Dataset {
        dataset_id: d.dataset_id,
        name: d.name.clone(),
        columns: d.columns.clone(),
        rows: d.rows,
        bytes: d.bytes,
        sha256: d.sha256.clone(),
        uploaded_at: Some(store::format_rfc3339_micros(v.uploaded_at)),
        uploaded_by: Some(v.uploaded_by.clone()),
        global_position: None,
    }
}

fn blob_id(dataset: Uuid) -> String {
    format!("ds-{dataset}")
}

fn export_blob_id(export: Uuid) -> String {
    format!("ex-{export}")
}

/// Why an upload's CSV was refused, for its fact: a stable reason and the line at fault.
fn ingest_reason(e: &IngestError) -> (&'static str, Option<u64>) {
    match e {
        IngestError::Encoding { line } => ("encoding", Some(*line)),
        IngestError::Shape { line, .. } => ("shape", Some(*line)),
        IngestError::Malformed { line, .. } => ("malformed", Some(*line)),
        IngestError::EmptyColumnName { .. }
        | IngestError::DuplicateColumn { .. }
        | IngestError::BadColumnName { .. } => ("column_names", Some(1)),
        IngestError::TooManyColumns => ("too_many_columns", Some(1)),
        IngestError::Empty => ("empty", None),
    }
}

fn ingest_problem(e: IngestError) -> Problem {
    let line = match &e {
        IngestError::Encoding { line }
        | IngestError::Shape { line, .. }
        | IngestError::Malformed { line, .. } => Some(*line),
        IngestError::EmptyColumnName { .. }
        | IngestError::DuplicateColumn { .. }
        | IngestError::BadColumnName { .. }
        | IngestError::TooManyColumns => Some(1),
        IngestError::Empty => None,
    };
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-csv",
        "The CSV file cannot be read",
    )
    .detail(e.to_string());
    if let Some(line) = line {
        p = p.with("line", line);
    }
    p
}

fn dataset_problem(e: ExecuteError<DatasetError>) -> Problem {
    crate::http::execute_problem(e, |d| match d {
        DatasetError::NotFound => Problem::not_found("no such dataset"),
        d => Problem::conflict("dataset-exists", d.to_string()),
    })
}

/// `POST /v1/datasets?name=…`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The dataset's name: 1 to 100 characters, at least one not a space, no control characters.
    #[param(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    name: String,
}

/// `POST /v1/datasets?name=…` with a `text/csv` body.
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    q: web::Query<UploadQuery>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &body, || {
        upload_once(state.clone(), req.clone(), caller.clone(), q, body.clone())
    })
    .await)
}

async fn upload_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    q: web::Query<UploadQuery>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // A refused upload is a fact too (never its content): first-success funnels read them.
    let meta = RequestContext::of(&req).metadata(caller.actor());
    let rejected = |name: Option<String>, reason: &str, line: Option<u64>| {
        DataFact::UploadRejected(UploadRejected {
            name,
            bytes: body.len() as u64,
            reason: reason.to_owned(),
            line,
        })
    };
    let name = match crate::routes::display_text(
        &q.name,
        domain::tenant::TenantName::MAX_CHARS,
        domain::tenant::TenantName::parse,
    ) {
        Ok(name) => name.to_string(),
        Err(e) => {
            record_fact(&state, tenant, &rejected(None, "invalid_name", None), meta).await?;
            return Err(Problem::validation(vec![("name".into(), e)]));
        }
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type != "text/csv" {
        let fact = rejected(Some(name), "unsupported_media_type", None);
        record_fact(&state, tenant, &fact, meta).await?;
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("upload the dataset as text/csv"));
    }
    // The tenant's fair share of uploads being read and stored.
    let _running = state
        .shares
        .acquire(tenant, Work::Upload, Duration::from_secs(30))
        .await?;
    let bytes = body.to_vec();
    let described = {
        let bytes = bytes.clone();
        match web::block(move || ingest::ingest(&bytes))
            .await
            .map_err(|_| Problem::internal())?
        {
            Ok(described) => described,
            Err(e) => {
                let (reason, line) = ingest_reason(&e);
                let fact = rejected(Some(name.clone()), reason, line);
                record_fact(&state, tenant, &fact, meta).await?;
                return Err(ingest_problem(e));
            }
        }
    };
    let dataset_id = Uuid::now_v7();
    state
        .store
        .put_blob(tenant, &blob_id(dataset_id), bytes)
        .await
        .map_err(Problem::from)?;
    let uploaded = Uploaded {
        dataset_id,
        name,
        columns: described
            .columns
            .iter()
            .map(|c| DatasetColumn {
                name: c.name.clone(),
                kind: kind_name(c.kind).into(),
            })
            .collect(),
        rows: described.rows,
        bytes: described.bytes,
        sha256: described.sha256,
    };
    let ctx = RequestContext::of(&req);
    let done = state
        .datasets
        .execute(
            tenant,
            &dataset::stream_id(dataset_id),
            &DatasetCommand::Upload(uploaded.clone()),
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await;
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            // Nothing refers to the file: take it back.
            let _ = state.store.delete_blob(tenant, &blob_id(dataset_id)).await;
            return Err(dataset_problem(e));
        }
    };
    // The answer points at /v1/datasets/{id}: make it readable here first.
    let position = state.settled(&done.appended).await;
    Ok(Reply::json(
        StatusCode::CREATED,
        &Dataset {
            dataset_id,
            name: uploaded.name,
            columns: uploaded.columns,
            rows: uploaded.rows,
            bytes: uploaded.bytes,
            sha256: uploaded.sha256,
            uploaded_at: None,
            uploaded_by: None,
            global_position: Some(position),
        },
    )
    .header(header::LOCATION, format!("/v1/datasets/{dataset_id}")))
}

pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let items: Vec<_> = state
        .catalog
        .datasets(tenant)
        .iter()
        .map(dataset_json)
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &DatasetList { datasets: items },
    ))
}

fn dataset_of(state: &AppState, tenant: TenantId, raw: &str) -> Result<DatasetView, Problem> {
    Uuid::parse_str(raw)
        .ok()
        .and_then(|id| state.catalog.dataset(tenant, id))
        .ok_or_else(|| Problem::not_found("no such dataset"))
}

pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let view = dataset_of(&state, tenant, &path)?;
    Ok(Reply::json(StatusCode::OK, &dataset_json(&view)))
}

pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &[], || {
        delete_once(state.clone(), req.clone(), caller.clone(), path)
    })
    .await)
}

async fn delete_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let id = Uuid::parse_str(&path).map_err(|_| Problem::not_found("no such dataset"))?;
    let ctx = RequestContext::of(&req);
    let done = state
        .datasets
        .execute(
            tenant,
            &dataset::stream_id(id),
            &DatasetCommand::Delete,
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await;
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            // A retry after a deletion whose data removal failed: finish the removal, then
            // answer as before.
            if matches!(e, ExecuteError::Domain(DatasetError::NotFound)) {
                state.sandbox.forget(&id.to_string());
                let _ = state.store.delete_blob(tenant, &blob_id(id)).await;
            }
            return Err(dataset_problem(e));
        }
    };
    // The deletion is recorded; now the data goes.
    state.sandbox.forget(&id.to_string());
    state
        .store
        .delete_blob(tenant, &blob_id(id))
        .await
        .map_err(Problem::from)?;
    let position = state.settled(&done.appended).await;
    Ok(Reply::json(
        StatusCode::OK,
        &DatasetDeleted {
            dataset_id: id,
            deleted: true,
            global_position: position,
        },
    ))
}

/// The dataset loaded for querying (from the cache, or from its blob).
async fn table(
    state: &web::Data<AppState>,
    tenant: TenantId,
    view: &DatasetView,
) -> Result<Arc<Table>, Problem> {
    let id = view.dataset.dataset_id;
    let columns: Vec<ingest::Column> = view
        .dataset
        .columns
        .iter()
        .map(|c| ingest::Column {
            name: c.name.clone(),
            kind: kind_of(&c.kind),
        })
        .collect();
    if let Some(table) = state.sandbox.get(&id.to_string()) {
        return Ok(table);
    }
    let bytes = state
        .store
        .get_blob(tenant, &blob_id(id))
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found("the dataset's data is gone"))?;
    let state = state.clone();
    web::block(move || {
        state
            .sandbox
            .get_or_load(&id.to_string(), || Table::load(&bytes, &columns))
    })
    .await
    .map_err(|_| Problem::internal())?
    .map_err(query_problem)
}

fn query_problem(e: QueryError) -> Problem {
    let (slug, title) = match &e {
        QueryError::NotAllowed(_) => ("query-not-allowed", "Only reading queries are allowed"),
        QueryError::Timeout(_) | QueryError::Expired(_) => {
            ("query-timeout", "The query ran out of time")
        }
        QueryError::Invalid(_) => ("query-invalid", "The query is invalid"),
        QueryError::Load(_) => {
            tracing::error!(error = %e, "dataset load failed");
            return Problem::internal();
        }
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title).detail(e.to_string())
}

/// A query's problem document and its class, for the failure's fact.
fn query_failure(e: QueryError) -> (Problem, FailureClass) {
    let class = match &e {
        QueryError::NotAllowed(_) => FailureClass::Denied,
        QueryError::Timeout(_) => FailureClass::Timeout,
        QueryError::Expired(_) => FailureClass::Expired,
        QueryError::Invalid(_) => FailureClass::Syntax,
        QueryError::Load(_) => FailureClass::Internal,
    };
    (query_problem(e), class)
}

async fn run_query(
    table: Arc<Table>,
    sql: String,
    limits: Limits,
) -> Result<QueryResult, (Problem, FailureClass)> {
    web::block(move || table.query(&sql, limits))
        .await
        .map_err(|_| (Problem::internal(), FailureClass::Internal))?
        .map_err(query_failure)
}

/// `POST /v1/datasets/{dataset_id}/query`: read-only SQL over the table `data`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryRequest {
    #[schema(max_length = 10000, pattern = r"\S")]
    sql: String,
}

/// A query's result.
#[derive(Serialize, ToSchema)]
pub(crate) struct QueryAnswer {
    columns: Vec<String>,
    #[schema(value_type = Vec<Vec<Object>>)]
    rows: Vec<Vec<serde_json::Value>>,
    row_count: u64,
    /// True when the row or byte cap cut the result short.
    truncated: bool,
    elapsed_ms: u64,
    global_position: u64,
}

/// The longest SQL a query or an export takes, in characters: well inside `body_limit` (64 KiB by
/// default) however the text is encoded, so that a schema-valid body is never 413.
const SQL_MAX_CHARS: usize = 10_000;

fn sql_within_limit(sql: Option<&str>) -> Result<(), Problem> {
    match sql {
        Some(sql) if sql.chars().count() > SQL_MAX_CHARS => Err(Problem::validation(vec![(
            "sql".into(),
            format!("at most {SQL_MAX_CHARS} characters"),
        )])),
        _ => Ok(()),
    }
}

fn sql_digest(sql: &str) -> String {
    crate::tokens::sha256_hex(sql.as_bytes())
}

/// Append a fact that needs no decision (a failure) to its stream.
async fn record_fact(
    state: &AppState,
    tenant: TenantId,
    fact: &DataFact,
    meta: store::Metadata,
) -> Result<u64, Problem> {
    let appended = state
        .store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: fact.stream_id(),
            expected: Expected::Any,
            events: vec![
                NewEvent::new(fact.event_type(), RawJson::from_value(&fact.to_payload()))
                    .with_schema_version(fact.schema_version())
                    .occurred_at(OffsetDateTime::now_utc()),
            ],
            metadata: meta,
        })
        .await
        .map_err(Problem::from)?;
    // A client that reads the feed after the refusal finds the fact here.
    Ok(state.settled(&Some(appended)).await)
}

/// Record a failed query or export by the rule of ADR 015: a failure that used the service's time
/// (a timeout, an export cut by its caps) pays one unit, appended with its fact on the usage
/// stream (`usage.recorded` naming it); one that did not is appended alone on its own stream.
/// A charged failure that meets a meter admitting no unit is still recorded, without one. The
/// problem to answer with gets the quota headers when a unit was decided.
async fn settle_failure(
    state: &web::Data<AppState>,
    tenant: TenantId,
    meter_of: Meter,
    fact: DataFact,
    meta: store::Metadata,
    problem: Problem,
) -> Problem {
    let unit = match UnitFact::failure(fact) {
        Ok(unit) => unit,
        Err(free) => {
            return match record_fact(state, tenant, &free, meta).await {
                Ok(_) => problem,
                Err(p) => p,
            };
        }
    };
    match meter(state, tenant, meter_of, 1, Some(unit), &meta).await {
        Ok(metered) => {
            settle(state, metered.position).await;
            metered
                .headers(OffsetDateTime::now_utc())
                .into_iter()
                .fold(problem, |p, (name, value)| p.header(name, value))
        }
        Err(p) => p,
    }
}

/// `POST /v1/datasets/{id}/query {"sql": …}`.
pub async fn query(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &body, || {
        query_once(
            state.clone(),
            req.clone(),
            caller.clone(),
            path,
            body.clone(),
        )
    })
    .await)
}

async fn query_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let arrived = Instant::now();
    let tenant = caller.tenant_or_forbidden()?;
    let dto: QueryRequest = json(&req, &body)?;
    if dto.sql.trim().is_empty() {
        return Err(Problem::validation(vec![("sql".into(), "is empty".into())]));
    }
    sql_within_limit(Some(&dto.sql))?;
    let view = dataset_of(&state, tenant, &path)?;
    let budget = Duration::from_millis(state.settings.query_time_ms);
    // The tenant's fair share of running queries; waiting for a slot counts against the budget.
    let _running = state.shares.acquire(tenant, Work::Query, budget).await?;
    let table = table(&state, tenant, &view).await?;
    let limits = Limits {
        time: budget,
        max_rows: state.settings.query_max_rows,
        since: Some(arrived),
        ..Limits::default()
    };
    // A blocked meter refuses before the query runs; the unit recorded with the query's fact
    // after it ran is the real guard. A failure is a fact too; it costs a unit when it used the
    // service's time (a timeout), nothing otherwise (ADR 015).
    let meta = RequestContext::of(&req).metadata(caller.actor());
    if let Some(blocked) = refuse_if_blocked(&state, tenant, Meter::Queries, &meta).await? {
        return Err(blocked.blocked_problem(&state.settings.public_url));
    }
    let query_id = Uuid::now_v7();
    let started = Instant::now();
    let result = match run_query(table, dto.sql.clone(), limits).await {
        Ok(result) => result,
        Err((problem, class)) => {
            let failed = DataFact::QueryFailed(QueryFailed {
                query_id,
                dataset_id: view.dataset.dataset_id,
                sql_sha256: sql_digest(&dto.sql),
                error_class: class,
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
            return Err(
                settle_failure(&state, tenant, Meter::Queries, failed, meta, problem).await,
            );
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let fact = QueryRun {
        query_id: Some(query_id),
        dataset_id: view.dataset.dataset_id,
        sql_sha256: sql_digest(&dto.sql),
        rows: result.rows.len() as u64,
        truncated: result.truncated,
        elapsed_ms,
    };
    let metered = meter(
        &state,
        tenant,
        Meter::Queries,
        1,
        Some(UnitFact::Query(fact)),
        &meta,
    )
    .await?;
    if !metered.admitted {
        return Err(metered.blocked_problem(&state.settings.public_url));
    }
    let position = metered.position;
    settle(&state, position).await;
    Ok(Reply::json(
        StatusCode::OK,
        &QueryAnswer {
            row_count: result.rows.len() as u64,
            columns: result.columns,
            rows: result.rows,
            truncated: result.truncated,
            elapsed_ms,
            global_position: position,
        },
    )
    .with_headers(metered.headers(OffsetDateTime::now_utc())))
}

/// A preset and one of its versions (`default`, version 1, is built in).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresetRef {
    id: String,
    #[schema(minimum = 1, maximum = 2147483647)]
    version: u32,
}

/// An export's file format.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ExportFormat {
    Csv,
    Jsonl,
}

impl From<ExportFormat> for Format {
    fn from(f: ExportFormat) -> Self {
        match f {
            ExportFormat::Csv => Format::Csv,
            ExportFormat::Jsonl => Format::Jsonl,
        }
    }
}

/// `POST /v1/exports`: a dataset, or a query over it, through a redaction preset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportRequest {
    #[schema(format = Uuid)]
    dataset_id: String,
    /// A query over the table `data`; the whole dataset when absent.
    #[schema(max_length = 10000)]
    sql: Option<String>,
    format: ExportFormat,
    preset: Option<PresetRef>,
}

/// `POST /v1/exports`: run the dataset (or a query over it) through a preset, scan, badge, keep.
pub async fn create_export(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &body, || {
        create_export_once(state.clone(), req.clone(), caller.clone(), body.clone())
    })
    .await)
}

async fn create_export_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let arrived = Instant::now();
    let tenant = caller.tenant_or_forbidden()?;
    let dto: ExportRequest = json(&req, &body)?;
    sql_within_limit(dto.sql.as_deref())?;
    let (preset_id, preset_version, rules) = match &dto.preset {
        None => (preset::DEFAULT_ID.to_owned(), 1, Rules::default_preset()),
        Some(p) if p.id == preset::DEFAULT_ID && p.version == 1 => {
            (preset::DEFAULT_ID.to_owned(), 1, Rules::default_preset())
        }
        Some(p) => {
            let unknown = || {
                Problem::validation(vec![(
                    "preset".into(),
                    format!("no preset {} with version {}", p.id, p.version),
                )])
            };
            let view = Uuid::parse_str(&p.id)
                .ok()
                .and_then(|id| state.catalog.preset(tenant, id))
                .ok_or_else(unknown)?;
            if view.deleted {
                return Err(Problem::validation(vec![(
                    "preset".into(),
                    "the preset was deleted".into(),
                )]));
            }
            let version = view.versions.get(&p.version).ok_or_else(unknown)?;
            (p.id.clone(), p.version, version.rules.clone())
        }
    };
    let view = dataset_of(&state, tenant, &dto.dataset_id)?;
    let budget = Duration::from_millis(state.settings.query_time_ms.max(60_000));
    let _running = state.shares.acquire(tenant, Work::Export, budget).await?;
    let table = table(&state, tenant, &view).await?;
    let sql = dto
        .sql
        .clone()
        .unwrap_or_else(|| "SELECT * FROM data".to_owned());
    let limits = Limits {
        time: budget,
        max_rows: state.settings.export_max_rows,
        // Counted as memory: a streamed export holds one row at a time, a redacted copy all.
        max_result_bytes: EXPORT_MAX_MEMORY,
        since: Some(arrived),
    };
    let meta = RequestContext::of(&req).metadata(caller.actor());
    if let Some(blocked) = refuse_if_blocked(&state, tenant, Meter::Exports, &meta).await? {
        return Err(blocked.blocked_problem(&state.settings.public_url));
    }
    let export_id = Uuid::now_v7();
    let format = Format::from(dto.format);
    let key = state.pii_key(tenant);
    let max_bytes = if state.store.backend_name() == "postgres" {
        EXPORT_MAX_BYTES_POSTGRES
    } else {
        EXPORT_MAX_BYTES
    };
    let too_large = || {
        (
            Problem::validation(vec![(
                "sql".into(),
                format!(
                    "the export would exceed {} rows, {max_bytes} bytes, or \
                     {EXPORT_MAX_MEMORY} bytes of memory",
                    state.settings.export_max_rows
                ),
            )]),
            FailureClass::TooLarge,
        )
    };
    let built = async {
        let (table, rules) = match (&dto.sql, rules.columns.is_empty()) {
            // A query under column rules runs over a redacted copy, so that aliases and
            // expressions cannot reach the original values of a ruled column.
            (Some(_), false) => {
                let all = run_query(table, "SELECT * FROM data".into(), limits).await?;
                if all.truncated {
                    return Err(too_large());
                }
                let (k, r) = (key.clone(), rules.clone());
                let redacted = web::block(move || {
                    Table::from_result(&dataplane::export::redact_columns(&all, &r, &k))
                })
                .await
                .map_err(|_| (Problem::internal(), FailureClass::Internal))?
                .map_err(query_failure)?;
                let text_only = Rules {
                    columns: Vec::new(),
                    text: rules.text.clone(),
                };
                (Arc::new(redacted), text_only)
            }
            _ => (table, rules),
        };
        // Rows are redacted and written to a temporary file as they are read: the result is
        // never held whole (ADR 015).
        let key = key.clone();
        let written = web::block(move || {
            dataplane::export::to_temp_file(
                &std::env::temp_dir(),
                &table,
                &sql,
                limits,
                dataplane::export::Spec {
                    format,
                    rules: &rules,
                    key: &key,
                    max_bytes,
                },
            )
        })
        .await
        .map_err(|_| (Problem::internal(), FailureClass::Internal))?;
        match written {
            Ok(written) => Ok(written),
            Err(ExportError::Query(e)) => Err(query_failure(e)),
            Err(ExportError::TooLarge { .. }) => Err(too_large()),
            Err(ExportError::Io(e)) => {
                tracing::error!(error = %e, "export file not written");
                Err((Problem::internal(), FailureClass::Internal))
            }
        }
    }
    .await;
    // The temporary file is removed when `file` is dropped: on every path out of here.
    // A failed export is a fact, charged or not by its class (ADR 015).
    let failed = |preset_id: String, error_class: FailureClass| {
        DataFact::ExportFailed(ExportFailed {
            export_id,
            dataset_id: view.dataset.dataset_id,
            sql_sha256: dto.sql.as_deref().map(sql_digest),
            format: format.extension().into(),
            preset_id,
            preset_version,
            error_class,
        })
    };
    let (file, exported) = match built {
        Ok(written) => written,
        Err((problem, class)) => {
            let failed = failed(preset_id, class);
            return Err(
                settle_failure(&state, tenant, Meter::Exports, failed, meta, problem).await,
            );
        }
    };
    // Keep the file first: a unit is charged only for an export that can be delivered.
    if let Err(e) = state
        .store
        .put_blob_file(tenant, &export_blob_id(export_id), file.path())
        .await
    {
        // Our fault, so free (ADR 015), but a fact like every failure.
        tracing::error!(error = %e, "export file not stored");
        let failed = failed(preset_id, FailureClass::Internal);
        let problem = Problem::from(e);
        return Err(settle_failure(&state, tenant, Meter::Exports, failed, meta, problem).await);
    }
    drop(file);
    let fact = ExportCompleted {
        export_id,
        dataset_id: view.dataset.dataset_id,
        sql_sha256: dto.sql.as_deref().map(sql_digest),
        format: format.extension().into(),
        preset_id,
        preset_version,
        rows: exported.rows,
        bytes: exported.size,
        sha256: exported.sha256.clone(),
        badge: match exported.badge {
            dataplane::export::Badge::Pass => "PASS".into(),
            dataplane::export::Badge::Fail => "FAIL".into(),
        },
        findings: exported
            .findings
            .iter()
            .map(|(d, n)| (d.as_str().to_owned(), *n as u64))
            .collect(),
    };
    // The unit and the `export.completed` it pays for are one append.
    let metered = meter(
        &state,
        tenant,
        Meter::Exports,
        1,
        Some(UnitFact::Export(fact.clone())),
        &meta,
    )
    .await;
    let metered = match metered {
        Ok(m) if m.admitted => m,
        refused => {
            // Only a definite refusal drops the file: after a 5xx the unit and its
            // `export.completed` may have been stored (an outcome the store could not tell), and
            // a charged export must keep its download.
            let definite = match &refused {
                Ok(_) => true,
                Err(p) => !p.status_code().is_server_error(),
            };
            if definite {
                let _ = state
                    .store
                    .delete_blob(tenant, &export_blob_id(export_id))
                    .await;
            }
            return Err(match refused {
                Ok(m) => m.blocked_problem(&state.settings.public_url),
                Err(p) => p,
            });
        }
    };
    let position = metered.position;
    // The answer points at the download: make it readable here first.
    settle(&state, position).await;
    Ok(
        Reply::json(StatusCode::CREATED, &export_json(&fact, position))
            .header(header::LOCATION, format!("/v1/exports/{export_id}"))
            .with_headers(metered.headers(OffsetDateTime::now_utc())),
    )
}

/// A version of a redaction preset.
#[derive(Serialize, ToSchema)]
pub(crate) struct Preset {
    /// A UUID, or `default` for the built-in preset.
    preset_id: String,
    name: String,
    version: u32,
    versions: Vec<u32>,
    deleted: bool,
    /// Only on the built-in `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    builtin: Option<bool>,
    #[schema(value_type = Vec<ColumnRuleDto>)]
    columns: Vec<preset::ColumnRule>,
    #[schema(value_type = crate::openapi::TextRule)]
    text: preset::TextRule,
    /// In a command's answer: the position it wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    global_position: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PresetList {
    presets: Vec<Preset>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PresetDeleted {
    #[schema(format = Uuid)]
    preset_id: Uuid,
    deleted: bool,
    global_position: u64,
}

fn preset_json(v: &PresetView, version: Option<u32>) -> Option<Preset> {
    let shown = match version {
        Some(n) => v.versions.get(&n)?,
        None => v.latest(),
    };
    Some(Preset {
        preset_id: v.preset_id.to_string(),
        name: shown.name.clone(),
        version: shown.version,
        versions: v.versions.keys().copied().collect(),
        deleted: v.deleted,
        builtin: None,
        columns: shown.rules.columns.clone(),
        text: shown.rules.text.clone(),
        global_position: None,
    })
}

fn builtin_default() -> Preset {
    let rules = Rules::default_preset();
    Preset {
        preset_id: preset::DEFAULT_ID.to_owned(),
        name: "default".into(),
        version: 1,
        versions: vec![1],
        deleted: false,
        builtin: Some(true),
        columns: rules.columns,
        text: rules.text,
        global_position: None,
    }
}

fn preset_problem(e: ExecuteError<PresetError>) -> Problem {
    crate::http::execute_problem(e, |d| match d {
        PresetError::Invalid(fields) => Problem::validation(fields),
        PresetError::NotFound => Problem::not_found("no such preset"),
        d @ PresetError::Deleted => Problem::conflict("preset-deleted", d.to_string()),
        d => Problem::conflict("preset-exists", d.to_string()),
    })
}

/// A column rule: a column name or glob (`*`, `?`, case-insensitive) and what happens to its
/// values.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum ColumnRuleDto {
    Keep {
        #[schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )]
        column: String,
    },
    Drop {
        #[schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )]
        column: String,
    },
    Mask {
        #[schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )]
        column: String,
    },
    Hash {
        #[schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )]
        column: String,
    },
    /// The first `length` characters.
    Truncate {
        #[schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )]
        column: String,
        #[schema(minimum = 1, maximum = 10000)]
        length: usize,
    },
    /// Dates and timestamps to their month; numbers down to a multiple of `bucket`.
    Generalize {
        #[schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
        )]
        column: String,
        #[serde(default)]
        #[schema(minimum = 1, maximum = 9223372036854775807_u64)]
        bucket: Option<u64>,
    },
}

impl ColumnRuleDto {
    /// The domain's rule; the column's text as the schema says (what is sent, not only the trimmed
    /// text, is at most 128 characters and free of control characters).
    fn parse(self) -> Result<preset::ColumnRule, String> {
        use preset::ColumnAction as A;
        let (column, action) = match self {
            ColumnRuleDto::Keep { column } => (column, A::Keep),
            ColumnRuleDto::Drop { column } => (column, A::Drop),
            ColumnRuleDto::Mask { column } => (column, A::Mask),
            ColumnRuleDto::Hash { column } => (column, A::Hash),
            ColumnRuleDto::Truncate { column, length } => (column, A::Truncate { length }),
            ColumnRuleDto::Generalize { column, bucket } => (column, A::Generalize { bucket }),
        };
        if column.chars().count() > 128 || column.chars().any(char::is_control) {
            return Err("must be 1 to 128 characters".into());
        }
        if let A::Generalize { bucket: Some(b) } = action
            && b > i64::MAX as u64
        {
            return Err(format!("bucket must be at most {}", i64::MAX));
        }
        Ok(preset::ColumnRule { column, action })
    }
}

/// `POST /v1/presets`: a new preset's name and rules.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPresetRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    name: String,
    #[serde(default)]
    #[schema(max_items = 200)]
    columns: Vec<ColumnRuleDto>,
    #[schema(value_type = crate::openapi::TextRule)]
    text: preset::TextRule,
}

/// `PUT /v1/presets/{preset_id}`: the next version's rules, and a new name if one is given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresetRequest {
    /// The name is kept when absent.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    name: Option<String>,
    #[serde(default)]
    #[schema(max_items = 200)]
    columns: Vec<ColumnRuleDto>,
    #[schema(value_type = crate::openapi::TextRule)]
    text: preset::TextRule,
}

/// The rules of a preset request, every invalid column rule named.
fn rules_of(rules: Vec<ColumnRuleDto>, text: preset::TextRule) -> Result<Rules, Problem> {
    {
        let mut problems = Vec::new();
        let mut columns = Vec::new();
        for (i, c) in rules.into_iter().enumerate() {
            match c.parse() {
                Ok(c) => columns.push(c),
                Err(e) => problems.push((format!("columns[{i}].column"), e)),
            }
        }
        if problems.is_empty() {
            Ok(Rules { columns, text })
        } else {
            Err(Problem::validation(problems))
        }
    }
}

fn preset_name(raw: Option<&str>) -> Result<Option<String>, Problem> {
    raw.map(|n| {
        crate::routes::display_text(
            n,
            domain::tenant::TenantName::MAX_CHARS,
            domain::tenant::TenantName::parse,
        )
        .map(|n| n.to_string())
        .map_err(|e| Problem::validation(vec![("name".into(), e)]))
    })
    .transpose()
}

/// A preset's latest version as a command answers it, with the position the command wrote.
fn preset_answer(
    state: &AppState,
    tenant: TenantId,
    preset_id: Uuid,
    position: u64,
    status: StatusCode,
) -> Result<Reply, Problem> {
    let view = state
        .catalog
        .preset(tenant, preset_id)
        .ok_or_else(Problem::internal)?;
    let mut body = preset_json(&view, None).ok_or_else(Problem::internal)?;
    body.global_position = Some(position);
    Ok(Reply::json(status, &body))
}

/// `POST /v1/presets`: a new preset, version 1.
pub async fn create_preset(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &body, || {
        create_preset_once(state.clone(), req.clone(), caller.clone(), body.clone())
    })
    .await)
}

async fn create_preset_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: NewPresetRequest = json(&req, &body)?;
    let name = preset_name(Some(&dto.name))?.unwrap_or_default();
    let rules = rules_of(dto.columns, dto.text)?;
    if name.eq_ignore_ascii_case(preset::DEFAULT_ID) {
        // A valid name that the built-in preset holds: a conflict, not a malformed request.
        return Err(Problem::conflict(
            "preset-builtin",
            "\"default\" is the built-in preset's name",
        ));
    }
    let preset_id = Uuid::now_v7();
    let ctx = RequestContext::of(&req);
    let done = state
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Create {
                preset_id,
                name,
                rules,
            },
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(preset_problem)?;
    let position = state.settled(&done.appended).await;
    Ok(
        preset_answer(&state, tenant, preset_id, position, StatusCode::CREATED)?
            .header(header::LOCATION, format!("/v1/presets/{preset_id}")),
    )
}

/// `PUT /v1/presets/{id}`: a new version.
pub async fn edit_preset(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &body, || {
        edit_preset_once(
            state.clone(),
            req.clone(),
            caller.clone(),
            path,
            body.clone(),
        )
    })
    .await)
}

async fn edit_preset_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    if path.as_str() == preset::DEFAULT_ID {
        return Err(Problem::conflict(
            "preset-builtin",
            "the built-in default preset cannot be changed",
        ));
    }
    let preset_id = Uuid::parse_str(&path).map_err(|_| Problem::not_found("no such preset"))?;
    let dto: PresetRequest = json(&req, &body)?;
    let name = preset_name(dto.name.as_deref())?;
    let rules = rules_of(dto.columns, dto.text)?;
    let ctx = RequestContext::of(&req);
    let done = state
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Edit { name, rules },
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(preset_problem)?;
    let position = state.settled(&done.appended).await;
    preset_answer(&state, tenant, preset_id, position, StatusCode::OK)
}

pub async fn delete_preset(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &[], || {
        delete_preset_once(state.clone(), req.clone(), caller.clone(), path)
    })
    .await)
}

async fn delete_preset_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    if path.as_str() == preset::DEFAULT_ID {
        return Err(Problem::conflict(
            "preset-builtin",
            "the built-in default preset cannot be deleted",
        ));
    }
    let preset_id = Uuid::parse_str(&path).map_err(|_| Problem::not_found("no such preset"))?;
    let ctx = RequestContext::of(&req);
    let done = state
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Delete,
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(preset_problem)?;
    let position = state.settled(&done.appended).await;
    Ok(Reply::json(
        StatusCode::OK,
        &PresetDeleted {
            preset_id,
            deleted: true,
            global_position: position,
        },
    ))
}

pub async fn list_presets(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let mut items = vec![builtin_default()];
    items.extend(
        state
            .catalog
            .presets(tenant)
            .iter()
            .filter_map(|v| preset_json(v, None)),
    );
    Ok(Reply::json(StatusCode::OK, &PresetList { presets: items }))
}

/// `GET /v1/presets/{preset_id}?version=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PresetQuery {
    /// A version; the latest when absent.
    #[param(minimum = 1)]
    version: Option<u32>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

pub async fn get_preset(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<PresetQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    if path.as_str() == preset::DEFAULT_ID {
        return match q.version {
            None | Some(1) => Ok(Reply::json(StatusCode::OK, &builtin_default())),
            Some(_) => Err(Problem::not_found("the default preset has one version")),
        };
    }
    let view = Uuid::parse_str(&path)
        .ok()
        .and_then(|id| state.catalog.preset(tenant, id))
        .ok_or_else(|| Problem::not_found("no such preset"))?;
    // A deleted preset is gone, every version of it: its history (each version's rules, which
    // exports cite by id and version) stays in the audit feed.
    if view.deleted {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "preset-deleted",
            "The preset was deleted",
        )
        .detail("the preset was deleted; its versions are in the audit feed (preset.* events)"));
    }
    let body =
        preset_json(&view, q.version).ok_or_else(|| Problem::not_found("no such version"))?;
    Ok(Reply::json(StatusCode::OK, &body))
}

/// An export's metadata.
#[derive(Serialize, ToSchema)]
pub(crate) struct Export {
    export_id: Uuid,
    dataset_id: Uuid,
    /// csv or jsonl.
    format: String,
    preset: PresetRef,
    rows: u64,
    bytes: u64,
    sha256: String,
    /// PASS or FAIL: whether the output scan found anything left.
    badge: String,
    /// Findings left in the output, per detector; never the values.
    findings: BTreeMap<String, u64>,
    download_url: String,
    global_position: u64,
}

fn export_json(x: &ExportCompleted, position: u64) -> Export {
    Export {
        export_id: x.export_id,
        dataset_id: x.dataset_id,
        format: x.format.clone(),
        preset: PresetRef {
            id: x.preset_id.clone(),
            version: x.preset_version,
        },
        rows: x.rows,
        bytes: x.bytes,
        sha256: x.sha256.clone(),
        badge: x.badge.clone(),
        findings: x.findings.clone(),
        download_url: format!("/v1/exports/{}/download", x.export_id),
        global_position: position,
    }
}

pub async fn get_export(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let x = Uuid::parse_str(&path)
        .ok()
        .and_then(|id| state.catalog.export(tenant, id))
        .ok_or_else(|| Problem::not_found("no such export"))?;
    Ok(Reply::json(StatusCode::OK, &export_json(&x.export, 0)))
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, b)| a | (u32::from(*b) << (16 - 8 * i)));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET /v1/exports/{id}/download`: the file, with its name and digest.
pub async fn download(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let x = Uuid::parse_str(&path)
        .ok()
        .and_then(|id| state.catalog.export(tenant, id))
        .ok_or_else(|| Problem::not_found("no such export"))?;
    let blob = state
        .store
        .open_blob(tenant, &export_blob_id(x.export.export_id))
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found("the export's file is gone"))?;
    let digest: Vec<u8> = (0..x.export.sha256.len() / 2)
        .filter_map(|i| u8::from_str_radix(&x.export.sha256[2 * i..2 * i + 2], 16).ok())
        .collect();
    let format = if x.export.format == "jsonl" {
        Format::Jsonl
    } else {
        Format::Csv
    };
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"export-{}.{}\"",
                x.export.export_id,
                format.extension()
            ),
        ))
        .insert_header(("Repr-Digest", format!("sha-256=:{}:", base64(&digest))))
        .insert_header(("X-Tenantry-Badge", x.export.badge.clone()))
        .insert_header((header::ETAG, format!("\"{}\"", x.export.sha256)));
    Ok(match blob {
        // The embedded store's blob is a file: sent in pieces, never read whole.
        BlobBody::File(file, len) => answer.no_chunking(len).streaming(file_chunks(file)),
        // PostgreSQL keeps a blob as one value: it arrives whole.
        BlobBody::Bytes(bytes) => answer.body(bytes),
    })
}

/// A file read in pieces of 256 KiB on the blocking pool, as a response body.
fn file_chunks(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let (file, chunk) = web::block(move || {
            use std::io::Read;
            let mut chunk = vec![0u8; 256 * 1024];
            let n = file.read(&mut chunk)?;
            chunk.truncate(n);
            Ok::<_, std::io::Error>((file, chunk))
        })
        .await??;
        Ok(if chunk.is_empty() {
            None
        } else {
            Some((web::Bytes::from(chunk), file))
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
