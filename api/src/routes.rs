//! The handlers. Each parses its input at the edge, runs one command or one read, and answers
//! with JSON or a problem document. Who may call what is decided by `Caller` (see `auth.rs`).

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use commands::ExecuteError;
use domain::identity::IssuedToken;
use domain::platform::{PlatformCommand, PlatformError};
use domain::tenant::{self, NewMember, TenantCommand, TenantError, TenantName};
use domain::{Email, Flag, PersonName, TenantId, TenantRole, UserId};
use projections::Principal;
use serde::Deserialize;
use serde_json::json as j;
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

pub fn tenant_problem(e: ExecuteError<TenantError>) -> Problem {
    crate::http::execute_problem(e, |d| {
        let (status, slug) = match &d {
            TenantError::AlreadySignedUp => (StatusCode::CONFLICT, "tenant-exists"),
            TenantError::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            TenantError::SameName | TenantError::SamePlan(_) => (StatusCode::CONFLICT, "no-change"),
            TenantError::EmailTaken(_) | TenantError::UserIdTaken => {
                (StatusCode::CONFLICT, "member-exists")
            }
            TenantError::OnlyOwnersAddOwners => (StatusCode::FORBIDDEN, "forbidden"),
            TenantError::UnknownToken => (StatusCode::NOT_FOUND, "not-found"),
            TenantError::AlreadyRevoked => (StatusCode::CONFLICT, "already-revoked"),
            TenantError::TooManyMembers { .. } => (StatusCode::CONFLICT, "seat-limit"),
        };
        Problem::new(status, slug, "The request was refused").detail(d.to_string())
    })
}

/// A validation error list: parse each field, collect every failure.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn check<T, E: std::fmt::Display>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| self.0.push((field.to_owned(), e.to_string())))
            .ok()
    }

    fn finish(self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.0))
        }
    }
}

fn new_token(state: &AppState) -> (String, IssuedToken) {
    let token = crate::tokens::generate();
    let issued = IssuedToken {
        token_id: Uuid::now_v7(),
        token_sha256: crate::tokens::sha256_hex(token.as_bytes()),
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(state.settings.token_ttl_days),
    };
    (token, issued)
}

fn rfc3339(t: OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    tenant_name: String,
    email: String,
    name: String,
}

pub async fn signup(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Reply {
    let scope = TenantId::PLATFORM;
    idempotent(&state, &req, scope, &body, || async {
        let dto: SignupRequest = json(&req, &body)?;
        let mut fields = Fields::default();
        let tenant_name = fields.check("tenant_name", TenantName::parse(&dto.tenant_name));
        let email = fields.check("email", Email::parse(&dto.email));
        let name = fields.check("name", PersonName::parse(&dto.name));
        fields.finish()?;
        let (tenant_name, email, name) = (tenant_name.unwrap(), email.unwrap(), name.unwrap());
        let tenant_id = TenantId::from_uuid(Uuid::now_v7());
        let user_id = UserId::from_uuid(Uuid::now_v7());
        let (token, issued) = new_token(&state);
        let expires_at = issued.expires_at;
        let ctx = RequestContext::of(&req);
        let done = state
            .tenants
            .execute(
                tenant_id,
                &tenant::stream_id(tenant_id),
                &TenantCommand::SignUp {
                    name: tenant_name,
                    owner: NewMember {
                        user_id,
                        email,
                        name,
                        role: TenantRole::Owner,
                        token: issued,
                    },
                },
                &ctx.metadata(format!("user:{user_id}")),
                OffsetDateTime::now_utc(),
            )
            .await
            .map_err(tenant_problem)?;
        // The token must work at once: wait until this instance's projections have it.
        let position = state.settled(&done.appended).await;
        Ok(Reply::json(
            StatusCode::CREATED,
            &j!({
                "tenant_id": tenant_id,
                "user_id": user_id,
                "role": "owner",
                "token": token,
                "token_expires_at": rfc3339(expires_at),
                "global_position": position,
            }),
        )
        .header(actix_web::http::header::LOCATION, "/v1/tenant".to_string()))
    })
    .await
}

pub async fn me(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let body = match &caller.principal {
        Principal::Member {
            tenant,
            user_id,
            role,
            ..
        } => {
            let member = state
                .identity
                .member(*tenant, *user_id)
                .ok_or_else(|| Problem::not_found("member not found"))?;
            j!({
                "kind": "member",
                "tenant_id": tenant,
                "user_id": user_id,
                "email": member.email,
                "name": member.name,
                "role": role.as_str(),
            })
        }
        Principal::Operator {
            operator_id, role, ..
        } => j!({
            "kind": "operator",
            "operator_id": operator_id,
            "role": role.as_str(),
        }),
    };
    Ok(Reply::json(StatusCode::OK, &body))
}

pub async fn tenant_info(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let t = state
        .identity
        .tenant(tenant)
        .ok_or_else(|| Problem::not_found("tenant not found"))?;
    let now = OffsetDateTime::now_utc();
    let pending = t
        .pending
        .as_ref()
        .filter(|p| now < p.effective_at)
        .map(|p| j!({"plan": p.to.as_str(), "effective_at": rfc3339(p.effective_at)}));
    Ok(Reply::json(
        StatusCode::OK,
        &j!({
            "tenant_id": t.tenant_id,
            "name": t.name,
            "plan": t.plan_at(now).as_str(),
            "pending_plan_change": pending,
            "signed_up_at": rfc3339(t.signed_up_at),
            "members": t.members,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameRequest {
    name: String,
}

pub async fn rename_tenant(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: RenameRequest = json(&req, &body)?;
    let mut fields = Fields::default();
    let name = fields.check("name", TenantName::parse(&dto.name));
    fields.finish()?;
    let name = name.expect("validated");
    let ctx = RequestContext::of(&req);
    let done = state
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &TenantCommand::Rename { name: name.clone() },
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(tenant_problem)?;
    let position = state.settled(&done.appended).await;
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"tenant_id": tenant, "name": name.as_str(), "global_position": position}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberRequest {
    email: String,
    name: String,
    role: String,
}

pub async fn add_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    let Some(tenant) = caller.tenant() else {
        return Problem::forbidden("platform tokens have no tenant").into();
    };
    idempotent(&state, &req, tenant, &body, || async {
        let dto: MemberRequest = json(&req, &body)?;
        let mut fields = Fields::default();
        let email = fields.check("email", Email::parse(&dto.email));
        let name = fields.check("name", PersonName::parse(&dto.name));
        let role = fields.check("role", TenantRole::from_str(&dto.role));
        fields.finish()?;
        let (email, name, role) = (email.unwrap(), name.unwrap(), role.unwrap());
        let Principal::Member { role: by, .. } = caller.principal else {
            return Err(Problem::forbidden("only members add members"));
        };
        let user_id = UserId::from_uuid(Uuid::now_v7());
        let (token, issued) = new_token(&state);
        let expires_at = issued.expires_at;
        let ctx = RequestContext::of(&req);
        let done = state
            .tenants
            .execute(
                tenant,
                &tenant::stream_id(tenant),
                &TenantCommand::AddMember {
                    member: NewMember {
                        user_id,
                        email: email.clone(),
                        name,
                        role,
                        token: issued,
                    },
                    by,
                    seats: state
                        .settings
                        .plans
                        .get(
                            state
                                .identity
                                .tenant(tenant)
                                .map_or(domain::tenant::Plan::Free, |t| {
                                    t.plan_at(OffsetDateTime::now_utc())
                                }),
                        )
                        .seats,
                },
                &ctx.metadata(caller.actor()),
                OffsetDateTime::now_utc(),
            )
            .await
            .map_err(tenant_problem)?;
        let position = state.settled(&done.appended).await;
        Ok(Reply::json(
            StatusCode::CREATED,
            &j!({
                "tenant_id": tenant,
                "user_id": user_id,
                "email": email.as_str(),
                "role": role.as_str(),
                "token": token,
                "token_expires_at": rfc3339(expires_at),
                "global_position": position,
            }),
        ))
    })
    .await
}

pub async fn revoke_current_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<Reply, Problem> {
    let ctx = RequestContext::of(&req);
    let meta = ctx.metadata(caller.actor());
    let now = OffsetDateTime::now_utc();
    let (token_id, appended) = match caller.principal {
        Principal::Member {
            tenant, token_id, ..
        } => {
            let done = state
                .tenants
                .execute(
                    tenant,
                    &tenant::stream_id(tenant),
                    &TenantCommand::RevokeToken { token_id },
                    &meta,
                    now,
                )
                .await
                .map_err(tenant_problem)?;
            (token_id, done.appended)
        }
        Principal::Operator { token_id, .. } => {
            let done = state
                .platform
                .execute(
                    TenantId::PLATFORM,
                    domain::platform::STREAM,
                    &PlatformCommand::RevokeToken { token_id },
                    &meta,
                    now,
                )
                .await
                .map_err(|e| {
                    crate::http::execute_problem(e, |d| match d {
                        PlatformError::AlreadyRevoked => {
                            Problem::conflict("already-revoked", "the token is already revoked")
                        }
                        PlatformError::UnknownToken => Problem::not_found("no such token"),
                    })
                })?;
            (token_id, done.appended)
        }
    };
    // From this answer on, the token must not work here.
    let position = state.settled(&appended).await;
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"revoked_token_id": token_id, "global_position": position}),
    ))
}

fn effective_flags(
    state: &AppState,
    tenant: TenantId,
) -> serde_json::Map<String, serde_json::Value> {
    let overrides = state
        .identity
        .tenant(tenant)
        .map(|t| t.flags)
        .unwrap_or_default();
    Flag::ALL
        .iter()
        .map(|f| {
            (
                f.as_str().to_owned(),
                state.settings.flag_enabled(*f, &overrides).into(),
            )
        })
        .collect()
}

pub async fn my_flags(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"flags": effective_flags(&state, tenant)}),
    ))
}

fn tenant_path(raw: &str, state: &AppState) -> Result<TenantId, Problem> {
    let tenant = TenantId::from_str(raw).map_err(|_| Problem::not_found("no such tenant"))?;
    state
        .identity
        .tenant(tenant)
        .map(|_| tenant)
        .ok_or_else(|| Problem::not_found("no such tenant"))
}

pub async fn tenant_flags(
    state: web::Data<AppState>,
    _caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = tenant_path(&path, &state)?;
    let overrides: serde_json::Map<String, serde_json::Value> = state
        .identity
        .tenant(tenant)
        .map(|t| t.flags)
        .unwrap_or_default()
        .into_iter()
        .map(|(f, on)| (f.as_str().to_owned(), on.into()))
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"tenant_id": tenant, "flags": effective_flags(&state, tenant), "overrides": overrides}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagRequest {
    enabled: bool,
}

pub async fn set_tenant_flag(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let (tenant_raw, flag_raw) = path.into_inner();
    let tenant = tenant_path(&tenant_raw, &state)?;
    let flag = Flag::from_str(&flag_raw).map_err(Problem::not_found)?;
    let dto: FlagRequest = json(&req, &body)?;
    let ctx = RequestContext::of(&req);
    let done = state
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &TenantCommand::SetFlag {
                flag,
                enabled: dto.enabled,
            },
            &ctx.metadata(caller.actor()),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(tenant_problem)?;
    let position = state.settled(&done.appended).await;
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"tenant_id": tenant, "flag": flag.as_str(), "enabled": dto.enabled, "global_position": position}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    actor: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    min_position: Option<u64>,
}

/// Cursors are opaque to clients: a version tag and the last position, in hex.
fn encode_cursor(position: u64) -> String {
    format!("c1{position:x}")
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    u64::from_str_radix(cursor.strip_prefix("c1")?, 16).ok()
}

fn parse_time(field: &str, raw: &Option<String>) -> Result<Option<OffsetDateTime>, Problem> {
    raw.as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
                Problem::validation(vec![(field.into(), "must be an RFC 3339 timestamp".into())])
            })
        })
        .transpose()
}

/// At most this many events are examined per page; a sparse filter returns a shorter page with
/// a cursor to continue from.
const AUDIT_SCAN_BUDGET: usize = 20_000;

pub async fn audit_events(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<AuditQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::validation(vec![(
            "limit".into(),
            "must be 1 to 500".into(),
        )]));
    }
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    let mut after = match &q.cursor {
        Some(c) => decode_cursor(c).ok_or_else(|| {
            Problem::validation(vec![("cursor".into(), "is not a cursor of ours".into())])
        })?,
        None => 0,
    };
    let mut events = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    while events.len() < limit && scanned < AUDIT_SCAN_BUDGET {
        let positions = state.audit.positions_after(tenant, after, 500);
        if positions.is_empty() {
            exhausted = true;
            break;
        }
        scanned += positions.len();
        let page = state
            .store
            .read_positions(positions.clone())
            .await
            .map_err(Problem::from)?;
        let mut last = after;
        for e in page {
            last = e.global_position;
            let keep = e.tenant_id == tenant
                && q.event_type.as_deref().is_none_or(|t| t == e.event_type)
                && q.actor.as_deref().is_none_or(|a| a == e.actor)
                && from.is_none_or(|f| e.recorded_at >= f)
                && to.is_none_or(|t| e.recorded_at < t);
            if keep {
                events.push(e);
                if events.len() == limit {
                    break;
                }
            }
        }
        after = if events.len() == limit {
            last
        } else {
            *positions.last().expect("not empty")
        };
    }
    let more = !exhausted && !state.audit.positions_after(tenant, after, 1).is_empty();
    let next_cursor = more.then(|| encode_cursor(after));
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"events": events, "next_cursor": next_cursor}),
    ))
}

pub async fn healthz() -> Reply {
    Reply::json(StatusCode::OK, &j!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Reply {
    let head = match state.store.head().await {
        Ok(h) => h,
        Err(e) => return Problem::from(e).into(),
    };
    let checkpoints = state.projections.checkpoints();
    let ready = checkpoints.iter().all(|(_, c)| *c >= head);
    let projections: serde_json::Map<String, serde_json::Value> = checkpoints
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.into()))
        .collect();
    let body = j!({
        "status": if ready { "ready" } else { "catching_up" },
        "store": state.store.backend_name(),
        "head_position": head,
        "projections": projections,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::json(status, &body)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let head = state.store.head().await.unwrap_or(0);
    let lag: Vec<(&str, u64)> = state
        .projections
        .checkpoints()
        .into_iter()
        .map(|(n, c)| (n, head.saturating_sub(c)))
        .collect();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&lag))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi::document().to_string())
}

/// For unmatched routes.
pub async fn not_found(req: HttpRequest) -> Reply {
    Problem::not_found(format!("no route for {} {}", req.method(), req.path())).into()
}
