//! Datasets: a CSV read, described and kept (a refused one is a fact too, never its content),
//! and a dataset deleted with its data.

use crate::analysis::{dataset_blob_id, kind_name};
use crate::metering::record_fact;
use crate::shares::Work;
use crate::{App, Ctx, Error};
use dataplane::ingest::{self, IngestError};
use domain::TenantId;
use domain::dataset::{
    self, DataFact, DatasetColumn, DatasetCommand, DatasetError, UploadRejected, Uploaded,
};
use std::time::Duration;
use uuid::Uuid;

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

/// An upload as received: the name as sent, the body's media type (lower case, without
/// parameters) and its bytes.
#[derive(Debug)]
pub struct Upload<'a> {
    pub name: &'a str,
    pub media_type: &'a str,
    pub body: Vec<u8>,
}

/// A dataset kept: what the upload described, and its position.
#[derive(Debug)]
pub struct Kept {
    pub uploaded: Uploaded,
    pub position: u64,
}

/// Read, describe and keep a CSV as a new dataset. A refusal (bad name, not CSV, unreadable CSV)
/// is recorded as `dataset.upload_rejected`, without the content.
pub async fn upload(app: &App, ctx: &Ctx, tenant: TenantId, up: Upload<'_>) -> Result<Kept, Error> {
    let rejected = |name: Option<String>, reason: &str, line: Option<u64>| {
        DataFact::UploadRejected(UploadRejected {
            name,
            bytes: up.body.len() as u64,
            reason: reason.to_owned(),
            line,
        })
    };
    let name = match crate::text::display_text(
        up.name,
        domain::tenant::TenantName::MAX_CHARS,
        domain::tenant::TenantName::parse,
    ) {
        Ok(name) => name.to_string(),
        Err(e) => {
            record_fact(app, ctx, tenant, &rejected(None, "invalid_name", None)).await?;
            return Err(Error::field("name", e));
        }
    };
    if up.media_type != "text/csv" {
        let fact = rejected(Some(name), "unsupported_media_type", None);
        record_fact(app, ctx, tenant, &fact).await?;
        return Err(Error::UnsupportedMediaType(
            "upload the dataset as text/csv".into(),
        ));
    }
    // The tenant's fair share of uploads being read and stored.
    let _running = app
        .shares
        .acquire(tenant, Work::Upload, Duration::from_secs(30))
        .await?;
    let bytes = up.body;
    let (described, bytes) = tokio::task::spawn_blocking(move || (ingest::ingest(&bytes), bytes))
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?;
    let described = match described {
        Ok(described) => described,
        Err(e) => {
            let (reason, line) = ingest_reason(&e);
            let fact = DataFact::UploadRejected(UploadRejected {
                name: Some(name.clone()),
                bytes: bytes.len() as u64,
                reason: reason.to_owned(),
                line,
            });
            record_fact(app, ctx, tenant, &fact).await?;
            return Err(Error::Ingest(e));
        }
    };
    let dataset_id = ctx.new_id("dataset");
    app.store
        .put_blob(tenant, &dataset_blob_id(dataset_id), bytes)
        .await?;
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
    let done = app
        .datasets
        .execute(
            tenant,
            &dataset::stream_id(dataset_id),
            &DatasetCommand::Upload(uploaded.clone()),
            &ctx.meta,
            ctx.now,
        )
        .await;
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            // Nothing refers to the file: take it back.
            let _ = app
                .store
                .delete_blob(tenant, &dataset_blob_id(dataset_id))
                .await;
            return Err(e.into());
        }
    };
    // The answer points at the dataset: make it readable here first.
    let position = app.settled(&done.appended).await;
    Ok(Kept { uploaded, position })
}

/// Delete a dataset: the deletion is recorded, then its data goes. A retry after a deletion
/// whose data removal failed finishes the removal and answers as before.
pub async fn delete(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    raw: &str,
) -> Result<(Uuid, u64), Error> {
    let id = Uuid::parse_str(raw).map_err(|_| Error::NotFound("no such dataset".into()))?;
    let done = app
        .datasets
        .execute(
            tenant,
            &dataset::stream_id(id),
            &DatasetCommand::Delete,
            &ctx.meta,
            ctx.now,
        )
        .await;
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            if matches!(e, commands::ExecuteError::Domain(DatasetError::NotFound)) {
                app.sandbox.forget(&id.to_string());
                let _ = app.store.delete_blob(tenant, &dataset_blob_id(id)).await;
            }
            return Err(e.into());
        }
    };
    app.sandbox.forget(&id.to_string());
    app.store.delete_blob(tenant, &dataset_blob_id(id)).await?;
    let position = app.settled(&done.appended).await;
    Ok((id, position))
}
