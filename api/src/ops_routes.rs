//! Platform-operations routes on the read side: rebuilding a projection beside the live one.

use crate::auth::Caller;
use crate::http::Reply;
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::web;
use projections::RebuildError;
use serde::Serialize;
use utoipa::ToSchema;

/// A rebuild that has started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildStarted {
    /// The live projection that keeps serving until the rebuild switches in.
    pub projection: String,
    /// The name the rebuild runs under, beside the live one.
    pub rebuild: String,
    /// `running`; follow it in `GET /readyz` (`details[].rebuild`).
    pub state: String,
}

/// `POST /v1/ops/projections/{name}/rebuild`: replay one projection from position 1 in the
/// background; the live one keeps answering and is switched when the rebuild has caught up.
pub async fn rebuild_projection(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let name = path.into_inner();
    let started = state.projections.rebuild(&name).map_err(|e| match e {
        RebuildError::Unknown(_) => Problem::not_found(e.to_string()),
        RebuildError::AlreadyRunning(_) => Problem::conflict("rebuild-running", e.to_string()),
        RebuildError::Stopped => Problem::unavailable(e.to_string()),
    })?;
    tracing::info!(projection = %name, actor = %caller.actor(), "projection rebuild started");
    Ok(Reply::json(
        StatusCode::ACCEPTED,
        &RebuildStarted {
            projection: name,
            rebuild: started.name,
            state: "running".into(),
        },
    ))
}
