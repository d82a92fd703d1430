//! The analysts' data plane over HTTP: datasets (upload, list, get, delete), queries, exports
//! and their downloads.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, json, settle, wait_for};
use crate::problem::Problem;
use crate::quota_routes::{Peek, meter, peek_blocked};
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use commands::ExecuteError;
use dataplane::export::Format;
use dataplane::ingest::{self, ColumnType, IngestError};
use dataplane::sandbox::{Limits, QueryError, QueryResult, Table};
use domain::TenantId;
use domain::dataset::{
    self, DatasetColumn, DatasetCommand, DatasetError, ExportCompleted, QueryRun, Uploaded,
};
use domain::preset::{self, PresetCommand, PresetError, Rules};
use domain::quota::Meter;
use projections::DatasetView;
use projections::PresetView;
use serde::Deserialize;
use serde_json::json as j;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{AppendRequest, Expected, NewEvent, RawJson};
use time::OffsetDateTime;
use uuid::Uuid;

pub fn routes(cfg: &mut web::ServiceConfig, dataset_limit: usize) {
    cfg.service(
        web::resource("/v1/datasets")
            .app_data(web::PayloadConfig::new(dataset_limit))
            .route(web::post().to(upload))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/v1/datasets/{dataset_id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(web::resource("/v1/datasets/{dataset_id}/query").route(web::post().to(query)))
    .service(
        web::resource("/v1/presets")
            .route(web::post().to(create_preset))
            .route(web::get().to(list_presets)),
    )
    .service(
        web::resource("/v1/presets/{preset_id}")
            .route(web::get().to(get_preset))
            .route(web::put().to(edit_preset))
            .route(web::delete().to(delete_preset)),
    )
    .service(web::resource("/v1/exports").route(web::post().to(create_export)))
    .service(web::resource("/v1/exports/{export_id}").route(web::get().to(get_export)))
    .service(web::resource("/v1/exports/{export_id}/download").route(web::get().to(download)));
}

/// The most data one export may hold in memory while it is built.
const EXPORT_MAX_BYTES: usize = 1 << 30;

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

fn dataset_json(v: &DatasetView) -> serde_json::Value {
    let d = &v.dataset;
    j!({
        "dataset_id": d.dataset_id,
        "name": d.name,
        "columns": d.columns,
        "rows": d.rows,
        "bytes": d.bytes,
        "sha256": d.sha256,
        "uploaded_at": store::format_rfc3339_micros(v.uploaded_at),
        "uploaded_by": v.uploaded_by,
    })
}

fn blob_id(dataset: Uuid) -> String {
    format!("ds-{dataset}")
}

fn export_blob_id(export: Uuid) -> String {
    format!("ex-{export}")
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
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
    let name = domain::tenant::TenantName::parse(&q.name)
        .map_err(|e| Problem::validation(vec![("name".into(), e.to_string())]))?
        .to_string();
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
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("upload the dataset as text/csv"));
    }
    let bytes = body.to_vec();
    let described = {
        let bytes = bytes.clone();
        web::block(move || ingest::ingest(&bytes))
            .await
            .map_err(|_| Problem::internal())?
            .map_err(ingest_problem)?
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
        &j!({
            "dataset_id": dataset_id,
            "name": uploaded.name,
            "columns": uploaded.columns,
            "rows": uploaded.rows,
            "bytes": uploaded.bytes,
            "sha256": uploaded.sha256,
            "global_position": position,
        }),
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
    Ok(Reply::json(StatusCode::OK, &j!({"datasets": items})))
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
        &j!({"dataset_id": id, "deleted": true, "global_position": position}),
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
        QueryError::Timeout(_) => ("query-timeout", "The query ran out of time"),
        QueryError::Invalid(_) => ("query-invalid", "The query is invalid"),
        QueryError::Load(_) => {
            tracing::error!(error = %e, "dataset load failed");
            return Problem::internal();
        }
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title).detail(e.to_string())
}

async fn run_query(table: Arc<Table>, sql: String, limits: Limits) -> Result<QueryResult, Problem> {
    web::block(move || table.query(&sql, limits))
        .await
        .map_err(|_| Problem::internal())?
        .map_err(query_problem)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
}

fn sql_digest(sql: &str) -> String {
    crate::tokens::sha256_hex(sql.as_bytes())
}

/// Append a fact that needs no decision, to the tenant's stream of such facts.
async fn record(
    state: &AppState,
    tenant: TenantId,
    stream: &str,
    event_type: &str,
    payload: &impl serde::Serialize,
    meta: store::Metadata,
) -> Result<u64, Problem> {
    let appended = state
        .store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: stream.to_owned(),
            expected: Expected::Any,
            events: vec![NewEvent::new(event_type, RawJson::from_value(payload))],
            metadata: meta,
        })
        .await
        .map_err(Problem::from)?;
    Ok(state.committed(&Some(appended)))
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
    let dto: QueryRequest = json(&req, &body)?;
    if dto.sql.trim().is_empty() {
        return Err(Problem::validation(vec![("sql".into(), "is empty".into())]));
    }
    let view = dataset_of(&state, tenant, &path)?;
    let table = table(&state, tenant, &view).await?;
    let limits = Limits {
        time: Duration::from_millis(state.settings.query_time_ms),
        max_rows: state.settings.query_max_rows,
        ..Limits::default()
    };
    // A blocked meter refuses before the query runs; recording the unit after it succeeded is
    // the real guard (a failed query costs nothing).
    let meta = RequestContext::of(&req).metadata(caller.actor());
    let peeked = match peek_blocked(&state, tenant, Meter::Queries, &meta).await? {
        Peek::Blocked(blocked) => return Err(blocked.blocked_problem(&state.settings.public_url)),
        Peek::Metered(done) => Some(done),
        Peek::Clear => None,
    };
    let started = Instant::now();
    let result = run_query(table, dto.sql.clone(), limits).await?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let ctx = RequestContext::of(&req);
    let metered = match peeked {
        Some(done) => done,
        None => {
            meter(
                &state,
                tenant,
                Meter::Queries,
                1,
                &ctx.metadata(caller.actor()),
            )
            .await?
        }
    };
    if !metered.admitted {
        return Err(metered.blocked_problem(&state.settings.public_url));
    }
    let fact = QueryRun {
        dataset_id: view.dataset.dataset_id,
        sql_sha256: sql_digest(&dto.sql),
        rows: result.rows.len() as u64,
        truncated: result.truncated,
        elapsed_ms,
    };
    let ctx = RequestContext::of(&req);
    let position = record(
        &state,
        tenant,
        dataset::QUERIES_STREAM,
        "query.run",
        &fact,
        ctx.metadata(caller.actor()),
    )
    .await?;
    settle(&state, position).await;
    Ok(Reply::json(
        StatusCode::OK,
        &j!({
            "columns": result.columns,
            "rows": result.rows,
            "row_count": result.rows.len(),
            "truncated": result.truncated,
            "elapsed_ms": elapsed_ms,
            "global_position": position,
        }),
    )
    .with_headers(metered.headers(OffsetDateTime::now_utc())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetRef {
    id: String,
    version: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    dataset_id: String,
    sql: Option<String>,
    format: Format,
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
    let dto: ExportRequest = json(&req, &body)?;
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
    let table = table(&state, tenant, &view).await?;
    let sql = dto
        .sql
        .clone()
        .unwrap_or_else(|| "SELECT * FROM data".to_owned());
    let limits = Limits {
        time: Duration::from_millis(state.settings.query_time_ms.max(60_000)),
        max_rows: state.settings.export_max_rows,
        // The export is built in memory: bound it.
        max_result_bytes: EXPORT_MAX_BYTES,
    };
    let meta = RequestContext::of(&req).metadata(caller.actor());
    let peeked = match peek_blocked(&state, tenant, Meter::Exports, &meta).await? {
        Peek::Blocked(blocked) => return Err(blocked.blocked_problem(&state.settings.public_url)),
        Peek::Metered(done) => Some(done),
        Peek::Clear => None,
    };
    let key = state.pii_key(tenant);
    let (result, rules) = match (&dto.sql, rules.columns.is_empty()) {
        // A query under column rules runs over a redacted copy, so that aliases and
        // expressions cannot reach the original values of a ruled column.
        (Some(_), false) => {
            let all = run_query(table, "SELECT * FROM data".into(), limits).await?;
            let (k, r) = (key.clone(), rules.clone());
            let redacted = web::block(move || {
                Table::from_result(&dataplane::export::redact_columns(&all, &r, &k))
            })
            .await
            .map_err(|_| Problem::internal())?
            .map_err(query_problem)?;
            let text_only = Rules {
                columns: Vec::new(),
                text: rules.text.clone(),
            };
            (run_query(Arc::new(redacted), sql, limits).await?, text_only)
        }
        _ => (run_query(table, sql, limits).await?, rules),
    };
    if result.truncated {
        return Err(Problem::validation(vec![(
            "sql".into(),
            format!(
                "the export would exceed {} rows or {} bytes",
                state.settings.export_max_rows, EXPORT_MAX_BYTES
            ),
        )]));
    }
    let format = dto.format;
    let exported = web::block(move || dataplane::export::export(&result, format, &rules, &key))
        .await
        .map_err(|_| Problem::internal())?;
    // Keep the file first: a unit is charged only for an export that can be delivered.
    let export_id = Uuid::now_v7();
    state
        .store
        .put_blob(tenant, &export_blob_id(export_id), exported.bytes.clone())
        .await
        .map_err(Problem::from)?;
    let metered = match peeked {
        Some(done) => done,
        None => {
            let m = meter(
                &state,
                tenant,
                Meter::Exports,
                1,
                &RequestContext::of(&req).metadata(caller.actor()),
            )
            .await;
            match m {
                Ok(m) => m,
                Err(p) => {
                    let _ = state
                        .store
                        .delete_blob(tenant, &export_blob_id(export_id))
                        .await;
                    return Err(p);
                }
            }
        }
    };
    if !metered.admitted {
        let _ = state
            .store
            .delete_blob(tenant, &export_blob_id(export_id))
            .await;
        return Err(metered.blocked_problem(&state.settings.public_url));
    }
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
    let ctx = RequestContext::of(&req);
    let position = record(
        &state,
        tenant,
        &dataset::export_stream_id(export_id),
        "export.completed",
        &fact,
        ctx.metadata(caller.actor()),
    )
    .await?;
    // The answer points at the download: make it readable here first.
    settle(&state, position).await;
    Ok(
        Reply::json(StatusCode::CREATED, &export_json(&fact, position))
            .header(header::LOCATION, format!("/v1/exports/{export_id}"))
            .with_headers(metered.headers(OffsetDateTime::now_utc())),
    )
}

fn preset_json(v: &PresetView, version: Option<u32>) -> Option<serde_json::Value> {
    let shown = match version {
        Some(n) => v.versions.get(&n)?,
        None => v.latest(),
    };
    Some(j!({
        "preset_id": v.preset_id,
        "name": shown.name,
        "version": shown.version,
        "versions": v.versions.keys().collect::<Vec<_>>(),
        "deleted": v.deleted,
        "columns": shown.rules.columns,
        "text": shown.rules.text,
    }))
}

fn builtin_default() -> serde_json::Value {
    let rules = Rules::default_preset();
    j!({
        "preset_id": preset::DEFAULT_ID,
        "name": "default",
        "version": 1,
        "versions": [1],
        "deleted": false,
        "builtin": true,
        "columns": rules.columns,
        "text": rules.text,
    })
}

fn preset_problem(e: ExecuteError<PresetError>) -> Problem {
    crate::http::execute_problem(e, |d| match d {
        PresetError::Invalid(fields) => Problem::validation(fields),
        PresetError::NotFound => Problem::not_found("no such preset"),
        d @ PresetError::Deleted => Problem::conflict("preset-deleted", d.to_string()),
        d => Problem::conflict("preset-exists", d.to_string()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetRequest {
    name: Option<String>,
    #[serde(default)]
    columns: Vec<preset::ColumnRule>,
    text: preset::TextRule,
}

fn preset_name(raw: Option<&str>) -> Result<Option<String>, Problem> {
    raw.map(|n| {
        domain::tenant::TenantName::parse(n)
            .map(|n| n.to_string())
            .map_err(|e| Problem::validation(vec![("name".into(), e.to_string())]))
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
    body["global_position"] = position.into();
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
    let dto: PresetRequest = json(&req, &body)?;
    let name = preset_name(dto.name.as_deref())?
        .ok_or_else(|| Problem::validation(vec![("name".into(), "is required".into())]))?;
    if name.eq_ignore_ascii_case(preset::DEFAULT_ID) {
        return Err(Problem::validation(vec![(
            "name".into(),
            "\"default\" is the built-in preset".into(),
        )]));
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
                rules: Rules {
                    columns: dto.columns,
                    text: dto.text,
                },
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
    if path.as_str() == preset::DEFAULT_ID {
        return Err(Problem::conflict(
            "preset-builtin",
            "the built-in default preset cannot be changed",
        ));
    }
    let preset_id = Uuid::parse_str(&path).map_err(|_| Problem::not_found("no such preset"))?;
    let dto: PresetRequest = json(&req, &body)?;
    let name = preset_name(dto.name.as_deref())?;
    let ctx = RequestContext::of(&req);
    let done = state
        .presets
        .execute(
            tenant,
            &preset::stream_id(preset_id),
            &PresetCommand::Edit {
                name,
                rules: Rules {
                    columns: dto.columns,
                    text: dto.text,
                },
            },
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
        &j!({"preset_id": preset_id, "deleted": true, "global_position": position}),
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
    Ok(Reply::json(StatusCode::OK, &j!({"presets": items})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetQuery {
    version: Option<u32>,
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
    let body =
        preset_json(&view, q.version).ok_or_else(|| Problem::not_found("no such version"))?;
    Ok(Reply::json(StatusCode::OK, &body))
}

fn export_json(x: &ExportCompleted, position: u64) -> serde_json::Value {
    j!({
        "export_id": x.export_id,
        "dataset_id": x.dataset_id,
        "format": x.format,
        "preset": {"id": x.preset_id, "version": x.preset_version},
        "rows": x.rows,
        "bytes": x.bytes,
        "sha256": x.sha256,
        "badge": x.badge,
        "findings": x.findings,
        "download_url": format!("/v1/exports/{}/download", x.export_id),
        "global_position": position,
    })
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
    let bytes = state
        .store
        .get_blob(tenant, &export_blob_id(x.export.export_id))
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
    Ok(HttpResponse::Ok()
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
        .insert_header((header::ETAG, format!("\"{}\"", x.export.sha256)))
        .body(bytes))
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
