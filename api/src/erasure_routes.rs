//! The erasure handler (issue 12, item 5; ADR 032): an owner or compliance officer erases a
//! member's personal data at the member's request. It parses, calls `app::erasure::erase_member`
//! and answers with what was recorded and destroyed.

use crate::auth::Caller;
use crate::http::{Reply, RequestContext, json};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/audit/erasures`: whose personal data to erase.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErasureRequest {
    /// The member (user id) whose personal fields are erased in every event of the tenant.
    #[schema(format = Uuid)]
    user_id: String,
}

/// One `erasure.applied` event written.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErasureRecorded {
    /// The reason: `$subject-request` (a member's own request).
    rule: String,
    /// The tenant sequences of the events erased.
    sequences: Vec<u64>,
    global_position: u64,
}

/// What the erasure did.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErasureDone {
    /// The erasures recorded now (empty when everything was erased before).
    erasures: Vec<ErasureRecorded>,
    /// Events whose personal fields were erased now.
    events_erased: u64,
    /// Subject keys destroyed now (their sealed fields read as `[erased]` from now on).
    keys_destroyed: u64,
    /// The last position written (0 when nothing was written).
    global_position: u64,
}

/// `POST /v1/audit/erasures`.
pub async fn erase_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: ErasureRequest = json(&req, &body)?;
    let user_id: domain::UserId = dto
        .user_id
        .parse()
        .map_err(|_| Problem::validation(vec![("user_id".into(), "must be a UUID".into())]))?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let report = app::erasure::erase_member(&state, &ctx, tenant, user_id).await?;
    let global_position = report.recorded.iter().map(|r| r.2).max().unwrap_or(0);
    Ok(Reply::json(
        StatusCode::OK,
        &ErasureDone {
            erasures: report
                .recorded
                .into_iter()
                .map(|(rule, sequences, global_position)| ErasureRecorded {
                    rule,
                    sequences,
                    global_position,
                })
                .collect(),
            events_erased: report.events_erased,
            keys_destroyed: report.keys_destroyed,
            global_position,
        },
    ))
}
