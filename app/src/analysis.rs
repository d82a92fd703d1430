//! Queries and exports over a tenant's datasets: a fair share of the service, a look at the meter
//! before anything runs, the run inside the sandbox, then one unit with the fact it pays for —
//! or the failure's fact, charged by ADR 015's rule.

use crate::metering::{Metered, record_units, refuse_if_blocked, settle_failure};
use crate::shares::Work;
use crate::{App, Ctx, Error};
use dataplane::export::{ExportError, Format};
use dataplane::ingest::{self, ColumnType};
use dataplane::sandbox::{Limits, QueryError, QueryResult, Table};
use domain::TenantId;
use domain::dataset::{
    DataFact, ExportCompleted, ExportFailed, FailureClass, QueryFailed, QueryRun,
};
use domain::preset::{self, Rules};
use domain::quota::{Meter, UnitFact};
use projections::DatasetView;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The largest file one export may write (it is written to a temporary file as the rows are
/// read, then kept as a blob): the bound on an export's temporary storage.
const EXPORT_MAX_BYTES: u64 = 1 << 30;
/// On PostgreSQL a blob is one `bytea`, sent in one protocol message: both are capped just under
/// 1 GiB by the server, so exports stop well below.
const EXPORT_MAX_BYTES_POSTGRES: u64 = 512 << 20;

/// The most memory an export may hold at once (counted as `sandbox::row_memory` counts it): one
/// row of a streamed export, or the whole redacted copy a query under column rules runs over.
pub const EXPORT_MAX_MEMORY: usize = 64 << 20;

/// The longest SQL a query or an export takes, in characters.
pub const SQL_MAX_CHARS: usize = 10_000;

/// Where a dataset's CSV is kept.
pub fn dataset_blob_id(dataset: Uuid) -> String {
    format!("ds-{dataset}")
}

/// Where an export's file is kept.
pub fn export_blob_id(export: Uuid) -> String {
    format!("ex-{export}")
}

/// A column type as events spell it.
pub fn kind_name(k: ColumnType) -> &'static str {
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

/// A tenant's dataset by the id a client sent.
pub async fn dataset_of(app: &App, tenant: TenantId, raw: &str) -> Result<DatasetView, Error> {
    let Ok(id) = Uuid::parse_str(raw) else {
        return Err(Error::NotFound("no such dataset".into()));
    };
    app.catalog
        .dataset(&app.store, tenant, id)
        .await?
        .ok_or_else(|| Error::NotFound("no such dataset".into()))
}

/// The dataset loaded for querying (from the cache, or from its blob).
async fn table(app: &App, tenant: TenantId, view: &DatasetView) -> Result<Arc<Table>, Error> {
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
    if let Some(table) = app.sandbox.get(&id.to_string()) {
        return Ok(table);
    }
    let bytes = app
        .store
        .get_blob(tenant, &dataset_blob_id(id))
        .await?
        .ok_or_else(|| Error::NotFound("the dataset's data is gone".into()))?;
    let app = app
        .me()
        .ok_or_else(|| Error::Internal("shutting down".into()))?;
    blocking(move || {
        app.sandbox
            .get_or_load(&id.to_string(), |dir| Table::load_in(dir, &bytes, &columns))
    })
    .await?
    .map_err(|e| {
        tracing::error!(error = %e, "dataset load failed");
        Error::Query(e)
    })
}

/// Run blocking work (SQLite, redaction, file writes) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))
}

/// A failure's class, for its fact.
fn class_of(e: &QueryError) -> FailureClass {
    match e {
        QueryError::NotAllowed(_) => FailureClass::Denied,
        QueryError::Timeout(_) => FailureClass::Timeout,
        QueryError::Expired(_) => FailureClass::Expired,
        QueryError::Invalid(_) => FailureClass::Syntax,
        QueryError::Load(_) => FailureClass::Internal,
    }
}

fn failure(e: Error) -> (Error, FailureClass) {
    let class = match &e {
        Error::Query(q) => class_of(q),
        _ => FailureClass::Internal,
    };
    (e, class)
}

async fn run(
    table: Arc<Table>,
    sql: String,
    limits: Limits,
) -> Result<QueryResult, (Error, FailureClass)> {
    blocking(move || table.query(&sql, limits))
        .await
        .map_err(failure)?
        .map_err(|e| failure(Error::Query(e)))
}

fn sql_within_limit(sql: Option<&str>) -> Result<(), Error> {
    match sql {
        Some(sql) if sql.chars().count() > SQL_MAX_CHARS => Err(Error::field(
            "sql",
            format!("at most {SQL_MAX_CHARS} characters"),
        )),
        _ => Ok(()),
    }
}

fn sql_digest(sql: &str) -> String {
    crate::tokens::sha256_hex(sql.as_bytes())
}

/// A query's result, charged one unit.
#[derive(Debug)]
pub struct QueryAnswer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// True when the row or byte cap cut the result short.
    pub truncated: bool,
    pub elapsed_ms: u64,
    pub position: u64,
    pub metered: Metered,
}

/// Run read-only SQL over the table `data` of a tenant's dataset. `arrived` starts the time
/// budget (waiting for a share counts against it).
pub async fn query(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    dataset: &str,
    sql: &str,
    arrived: Instant,
) -> Result<QueryAnswer, Error> {
    if sql.trim().is_empty() {
        return Err(Error::field("sql", "is empty"));
    }
    sql_within_limit(Some(sql))?;
    let view = dataset_of(app, tenant, dataset).await?;
    let budget = app.config.query_time;
    // The tenant's fair share of running queries; waiting for a slot counts against the budget.
    let _running = app.shares.acquire(tenant, Work::Query, budget).await?;
    let table = table(app, tenant, &view).await?;
    let limits = Limits {
        time: budget,
        max_rows: app.config.query_max_rows,
        since: Some(arrived),
        ..Limits::default()
    };
    // A blocked meter refuses before the query runs; the unit recorded with the query's fact
    // after it ran is the real guard. A failure is a fact too; it costs a unit when it used the
    // service's time (a timeout), nothing otherwise (ADR 015).
    refuse_if_blocked(app, ctx, tenant, Meter::Queries).await?;
    let query_id = ctx.new_id("query");
    let started = Instant::now();
    let result = match run(table, sql.to_owned(), limits).await {
        Ok(result) => result,
        Err((cause, class)) => {
            let failed = DataFact::QueryFailed(QueryFailed {
                query_id,
                dataset_id: view.dataset.dataset_id,
                sql_sha256: sql_digest(sql),
                error_class: class,
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
            return Err(settle_failure(app, ctx, tenant, Meter::Queries, failed, cause).await);
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let fact = QueryRun {
        query_id: Some(query_id),
        dataset_id: view.dataset.dataset_id,
        sql_sha256: sql_digest(sql),
        rows: result.rows.len() as u64,
        truncated: result.truncated,
        elapsed_ms,
    };
    let metered = record_units(
        app,
        ctx,
        tenant,
        Meter::Queries,
        1,
        Some(UnitFact::Query(fact)),
    )
    .await?;
    if !metered.admitted {
        return Err(Error::QuotaBlocked(Box::new(metered)));
    }
    let position = metered.position;
    app.settle(position).await;
    Ok(QueryAnswer {
        columns: result.columns,
        rows: result.rows,
        truncated: result.truncated,
        elapsed_ms,
        position,
        metered,
    })
}

/// What to export: a dataset, or a query over it, through a redaction preset.
#[derive(Clone, Debug)]
pub struct ExportSpec {
    /// The dataset's id as the client sent it.
    pub dataset: String,
    /// A query over the table `data`; the whole dataset when absent.
    pub sql: Option<String>,
    pub format: Format,
    /// A preset id (a UUID, or `default`) and its version; the built-in default when absent.
    pub preset: Option<(String, u32)>,
}

/// A finished export, kept and charged.
#[derive(Debug)]
pub struct ExportDone {
    pub fact: ExportCompleted,
    pub position: u64,
    pub metered: Metered,
}

/// The preset's rules by id and version.
fn preset_rules(
    app: &App,
    tenant: TenantId,
    preset: &Option<(String, u32)>,
) -> Result<(String, u32, Rules), Error> {
    match preset {
        None => Ok((preset::DEFAULT_ID.to_owned(), 1, Rules::default_preset())),
        Some((id, 1)) if id == preset::DEFAULT_ID => {
            Ok((preset::DEFAULT_ID.to_owned(), 1, Rules::default_preset()))
        }
        Some((id, version)) => {
            let unknown =
                || Error::field("preset", format!("no preset {id} with version {version}"));
            let view = Uuid::parse_str(id)
                .ok()
                .and_then(|uuid| app.catalog.preset(tenant, uuid))
                .ok_or_else(unknown)?;
            if view.deleted {
                return Err(Error::field("preset", "the preset was deleted"));
            }
            let v = view.versions.get(version).ok_or_else(unknown)?;
            Ok((id.clone(), *version, v.rules.clone()))
        }
    }
}

/// Run the dataset (or a query over it) through a preset, scan, badge, keep the file, and charge
/// one unit with its `export.completed` in one append. `arrived` starts the time budget.
pub async fn export(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    spec: ExportSpec,
    arrived: Instant,
) -> Result<ExportDone, Error> {
    sql_within_limit(spec.sql.as_deref())?;
    let (preset_id, preset_version, rules) = preset_rules(app, tenant, &spec.preset)?;
    let view = dataset_of(app, tenant, &spec.dataset).await?;
    let budget = app.config.query_time.max(Duration::from_secs(60));
    let _running = app.shares.acquire(tenant, Work::Export, budget).await?;
    let table = table(app, tenant, &view).await?;
    let sql = spec
        .sql
        .clone()
        .unwrap_or_else(|| "SELECT * FROM data".to_owned());
    let limits = Limits {
        time: budget,
        max_rows: app.config.export_max_rows,
        // Counted as memory: a streamed export holds one row at a time, a redacted copy all.
        max_result_bytes: EXPORT_MAX_MEMORY,
        since: Some(arrived),
    };
    refuse_if_blocked(app, ctx, tenant, Meter::Exports).await?;
    let export_id = ctx.new_id("export");
    let format = spec.format;
    let key = app.pii_key(tenant);
    let max_bytes = if app.store.backend_name() == "postgres" {
        EXPORT_MAX_BYTES_POSTGRES
    } else {
        EXPORT_MAX_BYTES
    };
    let max_rows = app.config.export_max_rows;
    let too_large = || {
        (
            Error::field(
                "sql",
                format!(
                    "the export would exceed {max_rows} rows, {max_bytes} bytes, or \
                     {EXPORT_MAX_MEMORY} bytes of memory"
                ),
            ),
            FailureClass::TooLarge,
        )
    };
    let built = async {
        let (table, rules, upstream) = match (&spec.sql, rules.columns.is_empty()) {
            // A query under column rules runs over a redacted copy, so that aliases and
            // expressions cannot reach the original values of a ruled column.
            (Some(_), false) => {
                let all = run(table, "SELECT * FROM data".into(), limits).await?;
                if all.truncated {
                    return Err(too_large());
                }
                let (k, r) = (key.clone(), rules.clone());
                let redacted = blocking(move || {
                    Table::from_result(&dataplane::export::redact_columns(&all, &r, &k))
                })
                .await
                .map_err(failure)?
                .map_err(|e| failure(Error::Query(e)))?;
                let text_only = Rules {
                    columns: Vec::new(),
                    text: rules.text.clone(),
                };
                (Arc::new(redacted), text_only, Some(rules.clone()))
            }
            _ => (table, rules, None),
        };
        // Rows are redacted and written to a temporary file as they are read: the result is
        // never held whole (ADR 015).
        let key = key.clone();
        let written = blocking(move || {
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
                    ruled_upstream: upstream.as_ref(),
                },
            )
        })
        .await
        .map_err(failure)?;
        match written {
            Ok(written) => Ok(written),
            Err(ExportError::Query(e)) => Err(failure(Error::Query(e))),
            Err(ExportError::TooLarge { .. }) => Err(too_large()),
            Err(ExportError::Io(e)) => {
                tracing::error!(error = %e, "export file not written");
                Err((
                    Error::Internal("export file not written".into()),
                    FailureClass::Internal,
                ))
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
            sql_sha256: spec.sql.as_deref().map(sql_digest),
            format: format.extension().into(),
            preset_id,
            preset_version,
            error_class,
        })
    };
    let (file, exported) = match built {
        Ok(written) => written,
        Err((cause, class)) => {
            let failed = failed(preset_id, class);
            return Err(settle_failure(app, ctx, tenant, Meter::Exports, failed, cause).await);
        }
    };
    // Keep the file first: a unit is charged only for an export that can be delivered.
    if let Err(e) = app
        .store
        .put_blob_file(tenant, &export_blob_id(export_id), file.path())
        .await
    {
        // Our fault, so free (ADR 015), but a fact like every failure.
        tracing::error!(error = %e, "export file not stored");
        let failed = failed(preset_id, FailureClass::Internal);
        return Err(settle_failure(app, ctx, tenant, Meter::Exports, failed, e.into()).await);
    }
    drop(file);
    let fact = ExportCompleted {
        export_id,
        dataset_id: view.dataset.dataset_id,
        sql_sha256: spec.sql.as_deref().map(sql_digest),
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
        formulas_neutralized: exported.formulas_neutralized,
        engine: domain::pii::ENGINE.to_owned(),
        withheld_columns: exported
            .withheld
            .iter()
            .map(|(column, kind)| format!("{column} ({kind})"))
            .collect(),
    };
    // The unit and the `export.completed` it pays for are one append.
    let metered = record_units(
        app,
        ctx,
        tenant,
        Meter::Exports,
        1,
        Some(UnitFact::Export(fact.clone())),
    )
    .await;
    let metered = match metered {
        Ok(m) if m.admitted => m,
        refused => {
            // Only a definite refusal drops the file: after a store failure the unit and its
            // `export.completed` may have been stored (an outcome the store could not tell), and
            // a charged export must keep its download.
            let definite = match &refused {
                Ok(_) => true,
                Err(Error::Store(e)) => !e.is_transient(),
                Err(Error::Decode(_) | Error::Internal(_)) => false,
                Err(_) => true,
            };
            if definite {
                let _ = app
                    .store
                    .delete_blob(tenant, &export_blob_id(export_id))
                    .await;
            }
            return Err(match refused {
                Ok(m) => Error::QuotaBlocked(Box::new(m)),
                Err(e) => e,
            });
        }
    };
    let position = metered.position;
    // The answer points at the download: make it readable here first.
    app.settle(position).await;
    Ok(ExportDone {
        fact,
        position,
        metered,
    })
}

/// A download of an export's file, allowed and recorded: every download is an
/// `export.downloaded` fact, and a file whose badge is FAIL is only handed out when the caller
/// acknowledged it (409 `export-not-passed` otherwise). Its position.
pub async fn download(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    export: &ExportCompleted,
    acknowledged_fail: bool,
) -> Result<u64, Error> {
    if export.badge != "PASS" && !acknowledged_fail {
        let mut why: Vec<String> = export
            .findings
            .iter()
            .map(|(detector, n)| format!("{n} {detector} finding(s)"))
            .collect();
        why.extend(
            export
                .withheld_columns
                .iter()
                .map(|c| format!("column {c} has no column rule")),
        );
        return Err(Error::Conflict {
            slug: "export-not-passed",
            detail: format!(
                "this export's badge is {} ({}); download it with ?acknowledge=fail to take it anyway",
                export.badge,
                why.join(", ")
            ),
        });
    }
    let fact = DataFact::ExportDownloaded(domain::dataset::ExportDownloaded {
        export_id: export.export_id,
        badge: export.badge.clone(),
        acknowledged_fail: export.badge != "PASS",
    });
    crate::metering::record_fact(app, ctx, tenant, &fact).await
}
