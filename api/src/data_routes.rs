//! The analysts' data plane over HTTP: datasets (upload, list, get, delete), queries, exports
//! and their downloads.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::problem::quota_headers;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use dataplane::export::Format;
use domain::TenantId;
use domain::dataset::{DatasetColumn, ExportCompleted};
use domain::preset::{self, Rules};
use projections::DatasetView;
use projections::PresetView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use store::BlobBody;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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

/// A page of the tenant's datasets, in id order.
#[derive(Serialize, ToSchema)]
pub(crate) struct DatasetList {
    datasets: Vec<Dataset>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /v1/datasets`: a page at a time (SPEC: lists are paginated with an opaque cursor).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^d1[0-9a-f]{32}$")]
    cursor: Option<String>,
    /// Datasets per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

/// Cursors are opaque to clients: a version tag and the last dataset id, in hex.
fn encode_dataset_cursor(id: Uuid) -> String {
    format!("d1{}", id.simple())
}

fn decode_dataset_cursor(cursor: &str) -> Option<Uuid> {
    let hex = cursor.strip_prefix("d1")?;
    (hex.len() == 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| Uuid::parse_str(hex).ok())
    .flatten()
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
    let media_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let upload = app::datasets::Upload {
        name: &q.name,
        media_type: &media_type,
        body: body.to_vec(),
    };
    let kept = app::datasets::upload(&state, &ctx, tenant, upload).await?;
    let (dataset_id, uploaded) = (kept.uploaded.dataset_id, kept.uploaded);
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
            global_position: Some(kept.position),
        },
    )
    .header(header::LOCATION, format!("/v1/datasets/{dataset_id}")))
}

pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ListQuery>,
) -> Result<Reply, Problem> {
    let limit = q.limit.unwrap_or(100);
    let mut invalid = Vec::new();
    if !(1..=1000).contains(&limit) {
        invalid.push(("limit".to_owned(), "must be 1 to 1000".to_owned()));
    }
    let after = match q.cursor.as_deref() {
        Some(c) => match decode_dataset_cursor(c) {
            Some(id) => Some(id),
            None => {
                invalid.push((
                    "cursor".to_owned(),
                    "is not a cursor of this list".to_owned(),
                ));
                None
            }
        },
        None => None,
    };
    if !invalid.is_empty() {
        return Err(Problem::validation(invalid));
    }
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let (page, next) = state
        .catalog
        .datasets_page(&state.store, tenant, after, limit)
        .await
        .map_err(Problem::from)?;
    let next_cursor = next.map(encode_dataset_cursor);
    let datasets = page.iter().map(dataset_json).collect();
    Ok(Reply::json(
        StatusCode::OK,
        &DatasetList {
            datasets,
            next_cursor,
        },
    ))
}

async fn dataset_of(state: &AppState, tenant: TenantId, raw: &str) -> Result<DatasetView, Problem> {
    Ok(app::analysis::dataset_of(state, tenant, raw).await?)
}

pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let view = dataset_of(&state, tenant, &path).await?;
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
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let (id, position) = app::datasets::delete(&state, &ctx, tenant, &path).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &DatasetDeleted {
            dataset_id: id,
            deleted: true,
            global_position: position,
        },
    ))
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
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let answer = app::analysis::query(&state, &ctx, tenant, &path, &dto.sql, arrived).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &QueryAnswer {
            row_count: answer.rows.len() as u64,
            columns: answer.columns,
            rows: answer.rows,
            truncated: answer.truncated,
            elapsed_ms: answer.elapsed_ms,
            global_position: answer.position,
        },
    )
    .with_headers(quota_headers(&answer.metered)))
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
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let spec = app::analysis::ExportSpec {
        dataset: dto.dataset_id,
        sql: dto.sql,
        format: dto.format.into(),
        preset: dto.preset.map(|p| (p.id, p.version)),
    };
    let done = app::analysis::export(&state, &ctx, tenant, spec, arrived).await?;
    let export_id = done.fact.export_id;
    Ok(
        Reply::json(StatusCode::CREATED, &export_json(&done.fact, done.position))
            .header(header::LOCATION, format!("/v1/exports/{export_id}"))
            .with_headers(quota_headers(&done.metered)),
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
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let (preset_id, position) = app::presets::create(&state, &ctx, tenant, name, rules).await?;
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
    let dto: PresetRequest = json(&req, &body)?;
    let name = preset_name(dto.name.as_deref())?;
    let rules = rules_of(dto.columns, dto.text)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let (preset_id, position) =
        app::presets::edit(&state, &ctx, tenant, &path, name, rules).await?;
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
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let (preset_id, position) = app::presets::delete(&state, &ctx, tenant, &path).await?;
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
    /// CSV cells that began with `=`, `+`, `-`, `@`, a tab or a carriage return, written with a
    /// leading `'` so that no spreadsheet runs them as formulas (OWASP CSV injection).
    formulas_neutralized: u64,
    /// The PII engine that scanned what was written (`tenantry-pii/2`).
    engine: String,
    /// What the badge checked: every detector over every written line, and the column names
    /// that say people's names, addresses or dates of birth.
    checked: Vec<String>,
    /// Columns written whose names say they hold people's names, addresses or dates of birth,
    /// with no column rule: any keeps the badge from PASS.
    withheld_columns: Vec<String>,
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
        formulas_neutralized: x.formulas_neutralized,
        engine: x.engine.clone(),
        checked: domain::pii::Detector::ALL
            .iter()
            .map(|d| format!("detector:{}", d.as_str()))
            .chain(std::iter::once("personal_column_names".to_owned()))
            .collect(),
        withheld_columns: x.withheld_columns.clone(),
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
    let x = export_of(&state, tenant, &path).await?;
    Ok(Reply::json(StatusCode::OK, &export_json(&x.export, 0)))
}

/// A tenant's export by the id a client sent.
async fn export_of(
    state: &AppState,
    tenant: TenantId,
    raw: &str,
) -> Result<projections::ExportView, Problem> {
    let Ok(id) = Uuid::parse_str(raw) else {
        return Err(Problem::not_found("no such export"));
    };
    state
        .catalog
        .export(&state.store, tenant, id)
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found("no such export"))
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
/// `GET /v1/exports/{export_id}/download`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `fail`: take a file whose badge is FAIL, knowing it may hold personal data.
    #[param(inline)]
    pub acknowledge: Option<Acknowledge>,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Acknowledge {
    Fail,
}

pub async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<DownloadQuery>,
) -> Result<HttpResponse, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let x = export_of(&state, tenant, &path).await?;
    // Every download is a fact; a FAIL file needs the caller's acknowledgement first.
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let acknowledged = matches!(q.acknowledge, Some(Acknowledge::Fail));
    app::analysis::download(&state, &ctx, tenant, &x.export, acknowledged).await?;
    let blob = state
        .store
        .open_blob(tenant, &app::analysis::export_blob_id(x.export.export_id))
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
        BlobBody::File(file, len) => answer
            .no_chunking(len)
            .streaming(crate::http::file_chunks(file)),
        // PostgreSQL's larger blob comes in chunks, a short read each (ADR 036).
        BlobBody::Chunks(len, chunks) => {
            answer
                .no_chunking(len)
                .streaming(futures_util::StreamExt::map(chunks, |chunk| {
                    chunk.map(web::Bytes::from)
                }))
        }
        // A blob of one chunk or less arrives whole.
        BlobBody::Bytes(bytes) => answer.body(bytes),
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
