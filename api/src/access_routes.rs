//! People over time (issue 10, part A): token rotation and revocation, re-issue, members removed
//! or given another role, sign-in by an emailed code, invites (single, CSV) and their acceptance.
//! Each handler parses, calls one use case of `app::identity` or `app::invites`, answers.

use crate::auth::Caller;
use crate::http::{Reply, RequestContext, RequestHash, idempotent, idempotent_hashed, json};
use crate::problem::Problem;
use crate::routes::{RoleName, email_at_edge};
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use domain::tenant::OnConflict;
use domain::{PersonName, TenantId, TenantRole, UserId};
use projections::Principal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

fn rfc3339(t: time::OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

/// The caller as a member: tenant, user, role, token.
fn member(caller: &Caller) -> Result<(TenantId, UserId, TenantRole, Uuid), Problem> {
    match caller.principal {
        Principal::Member {
            tenant,
            user_id,
            role,
            token_id,
        } => Ok((tenant, user_id, role, token_id)),
        Principal::Operator { .. } => Err(Problem::forbidden("platform tokens have no tenant")),
    }
}

fn user_path(raw: &str) -> Result<UserId, Problem> {
    raw.parse::<Uuid>()
        .map(UserId::from_uuid)
        .map_err(|_| Problem::not_found("no such member"))
}

fn reason_at_edge(reason: Option<String>) -> Result<Option<String>, Problem> {
    match reason {
        Some(r) if r.chars().count() > 500 || r.chars().any(char::is_control) => {
            Err(Problem::validation(vec![(
                "reason".into(),
                "at most 500 characters, no control characters".into(),
            )]))
        }
        Some(r) if r.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// A new token, shown once.
#[derive(Serialize, ToSchema)]
pub(crate) struct TokenOut {
    token_id: Uuid,
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    token: String,
    #[schema(format = DateTime)]
    token_expires_at: String,
    /// The token this one replaces (rotation), revoked by the same append.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_token_id: Option<Uuid>,
    global_position: u64,
}

/// `POST /v1/tokens`: a new token for the caller; the one used for this request is revoked.
pub async fn rotate(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<Reply, Problem> {
    let (tenant, user, _, token_id) = member(&caller)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let done = app::identity::rotate_token(&state, &ctx, tenant, user, token_id).await?;
    Ok(Reply::json(
        StatusCode::CREATED,
        &TokenOut {
            token_id: done.minted.issued.token_id,
            user_id: user,
            token_expires_at: rfc3339(done.minted.issued.expires_at),
            token: done.minted.secret,
            revoked_token_id: Some(token_id),
            global_position: done.position,
        },
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReasonQuery {
    /// Why (kept in the event; at most 500 characters).
    #[param(max_length = 500)]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TokenRevoked {
    revoked_token_id: Uuid,
    global_position: u64,
}

/// `DELETE /v1/tokens/{token_id}`: owners and admins revoke any token of their tenant (admins
/// none of an owner), a member their own; platform ops revoke operator tokens.
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReasonQuery>,
) -> Result<Reply, Problem> {
    let token_id: Uuid = path
        .parse()
        .map_err(|_| Problem::not_found("no such token"))?;
    let reason = reason_at_edge(q.into_inner().reason)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let position = match caller.principal {
        Principal::Member { tenant, role, .. } => {
            app::identity::revoke_member_token(&state, &ctx, tenant, role, token_id, reason).await?
        }
        Principal::Operator { .. } => {
            // Platform ops revoke operator tokens (a member's token is its tenant's business).
            let is_operator = state
                .identity
                .token_by_id(token_id)
                .is_some_and(|t| t.tenant.is_none());
            if !is_operator {
                return Err(Problem::not_found("no such operator token"));
            }
            app::identity::revoke_token(&state, &ctx, app::identity::TokenOwner::Operator, token_id)
                .await?
        }
    };
    Ok(Reply::json(
        StatusCode::OK,
        &TokenRevoked {
            revoked_token_id: token_id,
            global_position: position,
        },
    ))
}

/// `POST /v1/members/{user_id}/tokens`: an owner or admin issues a new token for a member.
pub async fn reissue(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let (tenant, _, role, _) = member(&caller)?;
    let user = user_path(&path)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let done = app::identity::reissue_token(&state, &ctx, tenant, role, user).await?;
    Ok(Reply::json(
        StatusCode::CREATED,
        &TokenOut {
            token_id: done.minted.issued.token_id,
            user_id: user,
            token_expires_at: rfc3339(done.minted.issued.expires_at),
            token: done.minted.secret,
            revoked_token_id: None,
            global_position: done.position,
        },
    ))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MemberRemoved {
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    global_position: u64,
}

/// `DELETE /v1/members/{user_id}`: owners and admins remove a member; anyone leaves.
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReasonQuery>,
) -> Result<Reply, Problem> {
    let (tenant, _, role, _) = member(&caller)?;
    let user = user_path(&path)?;
    let reason = reason_at_edge(q.into_inner().reason)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let position = app::identity::remove_member(&state, &ctx, tenant, role, user, reason).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &MemberRemoved {
            user_id: user,
            global_position: position,
        },
    ))
}

/// `PATCH /v1/members/{user_id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleRequest {
    #[schema(value_type = RoleName)]
    role: String,
    /// Why (kept in the event).
    #[schema(max_length = 500)]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RoleChanged {
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    role: RoleName,
    global_position: u64,
}

pub async fn change_role(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let (tenant, _, by, _) = member(&caller)?;
    let user = user_path(&path)?;
    let dto: RoleRequest = json(&req, &body)?;
    let role = TenantRole::from_str(&dto.role)
        .map_err(|e| Problem::validation(vec![("role".into(), e)]))?;
    let reason = reason_at_edge(dto.reason)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let position = app::identity::change_role(&state, &ctx, tenant, by, user, role, reason).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &RoleChanged {
            user_id: user,
            role: role.into(),
            global_position: position,
        },
    ))
}

/// `POST /v1/sign-in`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignInRequest {
    tenant: Uuid,
    #[schema(min_length = 3, max_length = 254)]
    email: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SignInSent {
    /// Always `sent`: the answer is the same whether or not the email is a member's.
    status: String,
}

pub async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let started = std::time::Instant::now();
    let dto: SignInRequest = json(&req, &body)?;
    let email =
        email_at_edge(&dto.email).map_err(|e| Problem::validation(vec![("email".into(), e)]))?;
    let ctx = state.ctx(RequestContext::of(&req).metadata("user:sign-in".into()));
    // The same work before the answer whoever asks: the lookup and the write come after it.
    let tenant = TenantId::from_uuid(dto.tenant);
    app::invites::request_sign_in_detached(&state.app, ctx, tenant, email, started).await;
    Ok(Reply::json(
        StatusCode::ACCEPTED,
        &SignInSent {
            status: "sent".into(),
        },
    ))
}

/// `POST /v1/sign-in/verify`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    tenant: Uuid,
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// The eight digits of the message.
    #[schema(max_length = 32)]
    code: String,
}

/// A member admitted: their new token, shown once.
#[derive(Serialize, ToSchema)]
pub(crate) struct Admitted {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    token: String,
    #[schema(format = DateTime)]
    token_expires_at: String,
    global_position: u64,
}

impl From<app::identity::Admitted> for Admitted {
    fn from(a: app::identity::Admitted) -> Self {
        Self {
            tenant_id: a.tenant_id,
            user_id: a.user_id,
            token_expires_at: rfc3339(a.expires_at),
            token: a.token,
            global_position: a.position,
        }
    }
}

pub async fn verify_sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let dto: VerifyRequest = json(&req, &body)?;
    let refused = || Problem::unauthorized("the code is wrong or no longer valid");
    let email = email_at_edge(&dto.email).map_err(|_| refused())?;
    if dto.code.len() > 32 {
        return Err(refused());
    }
    let ctx = state.ctx(RequestContext::of(&req).metadata("user:sign-in".into()));
    let done = app::invites::verify_sign_in(
        &state,
        &ctx,
        TenantId::from_uuid(dto.tenant),
        &email,
        &dto.code,
    )
    .await?;
    Ok(Reply::json(StatusCode::OK, &Admitted::from(done)))
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnConflictName {
    #[default]
    Skip,
    UpdateRole,
}

impl From<OnConflictName> for OnConflict {
    fn from(o: OnConflictName) -> Self {
        match o {
            OnConflictName::Skip => OnConflict::Skip,
            OnConflictName::UpdateRole => OnConflict::UpdateRole,
        }
    }
}

/// `POST /v1/invites`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteRequest {
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    #[schema(value_type = RoleName)]
    role: String,
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// What to do when the email has a pending invite of another role.
    on_conflict: Option<OnConflictName>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InviteOut {
    invite_id: Uuid,
    email: String,
    role: RoleName,
    /// `created` or `updated_pending_invite`.
    outcome: String,
    global_position: u64,
}

pub async fn invite(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    let Some(tenant) = caller.tenant() else {
        return Problem::forbidden("platform tokens have no tenant").into();
    };
    idempotent(&state, &req, tenant, &body, || async {
        let (tenant, _, by, _) = member(&caller)?;
        let dto: InviteRequest = json(&req, &body)?;
        let mut errors = Vec::new();
        let email = email_at_edge(&dto.email).map_err(|e| errors.push(("email".into(), e)));
        let role = TenantRole::from_str(&dto.role).map_err(|e| errors.push(("role".into(), e)));
        let name = match &dto.name {
            Some(n) => crate::routes::display_text(n, 200, PersonName::parse)
                .map(Some)
                .map_err(|e| errors.push(("name".into(), e.to_string()))),
            None => Ok(None),
        };
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        let (email, role, name) = (email.unwrap(), role.unwrap(), name.unwrap());
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let one = app::invites::OneInvite {
            email: email.clone(),
            role,
            name,
            on_conflict: dto.on_conflict.unwrap_or_default().into(),
        };
        let done = app::invites::invite(&state, &ctx, tenant, by, one).await?;
        Ok(Reply::json(
            StatusCode::CREATED,
            &InviteOut {
                invite_id: done.invite_id,
                email: email.as_str().to_owned(),
                role: role.into(),
                outcome: done.outcome.as_str().to_owned(),
                global_position: done.position,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    /// Answer the same report and change nothing.
    #[serde(default)]
    dry_run: bool,
    /// What to do with a row whose email has a pending invite of another role.
    #[serde(default)]
    #[param(inline)]
    on_conflict: OnConflictName,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RowOut {
    line: u64,
    email: String,
    /// `created`, `skipped_existing_member`, `updated_pending_invite`, `conflict_role`, `invalid`.
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ImportOut {
    dry_run: bool,
    /// How many rows had each outcome.
    counts: std::collections::BTreeMap<String, u64>,
    rows: Vec<RowOut>,
    /// 0 under `dry_run` or when nothing changed.
    global_position: u64,
}

/// `POST /v1/invites/csv`: `email,role[,name]` rows, one outcome each. The body is parsed as
/// it arrives (only the rows are kept) and hashed for its idempotency record on the way; more
/// than `dataset_limit` bytes is 413, declared or read.
pub async fn import_csv(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    q: web::Query<CsvQuery>,
    mut body: web::Payload,
) -> Reply {
    use futures_util::StreamExt;
    let Some(tenant) = caller.tenant() else {
        return Problem::forbidden("platform tokens have no tenant").into();
    };
    let q = q.into_inner();
    let limit = state.settings.dataset_limit;
    let too_large = || -> Reply {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "The request body is too large",
        )
        .detail(format!("CSV uploads are limited to {limit} bytes"))
        .with("limit", limit)
        .into()
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let mut hash = RequestHash::of(&req);
    let mut rows = app::invites::CsvRows::new();
    let mut read = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Problem::bad_request(format!("the body was not read: {e}")).into(),
        };
        read += chunk.len();
        if read > limit {
            return too_large();
        }
        hash.update(&chunk);
        rows.push(&chunk);
    }
    let parsed = rows.finish();
    let (state, req, caller) = (&state, &req, &caller);
    idempotent_hashed(state, req, tenant, hash, || async move {
        let (tenant, _, by, _) = member(caller)?;
        let ctx = state.ctx(RequestContext::of(req).metadata(caller.actor()));
        let options = app::invites::ImportOptions {
            dry_run: q.dry_run,
            on_conflict: q.on_conflict.into(),
        };
        let report = app::invites::import_rows(state, &ctx, tenant, by, parsed, options).await?;
        let mut counts = std::collections::BTreeMap::new();
        for r in &report.rows {
            *counts.entry(r.outcome.to_owned()).or_insert(0) += 1;
        }
        Ok(Reply::json(
            StatusCode::OK,
            &ImportOut {
                dry_run: report.dry_run,
                counts,
                rows: report
                    .rows
                    .into_iter()
                    .map(|r| RowOut {
                        line: r.line,
                        email: r.email,
                        outcome: r.outcome.to_owned(),
                        field: r.field,
                        reason: r.reason,
                    })
                    .collect(),
                global_position: report.position,
            },
        ))
    })
    .await
}

/// `POST /v1/invites/accept`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcceptRequest {
    /// The invite token of the message.
    #[schema(max_length = 200)]
    token: String,
    /// The new member's name (the invite's, when it named one, wins).
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

pub async fn accept(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let dto: AcceptRequest = json(&req, &body)?;
    let name = crate::routes::display_text(&dto.name, 200, PersonName::parse)
        .map_err(|e| Problem::validation(vec![("name".into(), e.to_string())]))?;
    let ctx = state.ctx(RequestContext::of(&req).metadata("user:invite".into()));
    let done = app::invites::accept(&state, &ctx, dto.token.trim(), name).await?;
    Ok(Reply::json(StatusCode::CREATED, &Admitted::from(done)))
}
