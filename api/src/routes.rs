//! The handlers. Each parses its input at the edge, runs one command or one read, and answers
//! with JSON or a problem document. Who may call what is decided by `Caller` (see `auth.rs`).

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use domain::tenant::TenantName;
use domain::{Email, Flag, PersonName, TenantId, TenantRole, UserId};
use projections::Principal;
use serde::{Deserialize, Serialize};
use serde_json::json as j;
use std::collections::BTreeMap;
use std::str::FromStr;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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

fn rfc3339(t: OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

pub(crate) use app::text::display_text;

/// An email address as the schema describes it: ASCII, no spaces around it, then `Email::parse`.
pub(crate) fn email_at_edge(raw: &str) -> Result<Email, String> {
    if !raw.is_ascii() || raw.trim() != raw {
        return Err("must be an ASCII address without surrounding spaces".into());
    }
    Email::parse(raw).map_err(|e| e.to_string())
}

/// A tenant role, as requests and answers spell it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoleName {
    Owner,
    Admin,
    Analyst,
    Viewer,
    Billing,
    Compliance,
}

impl From<TenantRole> for RoleName {
    fn from(r: TenantRole) -> Self {
        match r {
            TenantRole::Owner => RoleName::Owner,
            TenantRole::Admin => RoleName::Admin,
            TenantRole::Analyst => RoleName::Analyst,
            TenantRole::Viewer => RoleName::Viewer,
            TenantRole::Billing => RoleName::Billing,
            TenantRole::Compliance => RoleName::Compliance,
        }
    }
}

/// `POST /v1/signup`. Names are 1 to 100 (tenant) or 200 (person) characters with at least one
/// that is not a space, and no control or bidi-spoofing characters.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignupRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    tenant_name: String,
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[\x21-\x3f\x41-\x7e]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    )]
    email: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    name: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SignupResponse {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    role: RoleName,
    /// The bearer token, shown once (`null` in an idempotent replay, with `token_redacted`).
    token: Option<String>,
    #[schema(format = DateTime)]
    token_expires_at: String,
    /// The global position the command wrote.
    global_position: u64,
}

pub async fn signup(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Reply {
    let scope = TenantId::PLATFORM;
    idempotent(&state, &req, scope, &body, || async {
        // Inside the idempotent run: a retry of a sign-up that went through is replayed without
        // spending the limit, and a 429 is never kept for its key.
        if let Err(wait) = state
            .signup_limiter
            .check(crate::http::client_address(&state, &req))
        {
            state
                .metrics
                .signups_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Problem::too_many_requests(
                "rate-limited",
                "too many sign-ups from this address; try again later",
                wait,
            ));
        }
        let dto: SignupRequest = json(&req, &body)?;
        let mut fields = Fields::default();
        let tenant_name = fields.check(
            "tenant_name",
            display_text(&dto.tenant_name, TenantName::MAX_CHARS, TenantName::parse),
        );
        let email = fields.check("email", email_at_edge(&dto.email));
        let name = fields.check("name", display_text(&dto.name, 200, PersonName::parse));
        fields.finish()?;
        let (tenant_name, email, name) = (tenant_name.unwrap(), email.unwrap(), name.unwrap());
        let ctx = state.ctx(RequestContext::of(&req).metadata("user:signup".into()));
        let signup = app::identity::SignUp {
            tenant_name,
            email,
            name,
            token: None,
        };
        let done = app::identity::sign_up(&state, &ctx, signup).await?;
        Ok(Reply::json(
            StatusCode::CREATED,
            &SignupResponse {
                tenant_id: done.tenant_id,
                user_id: done.user_id,
                role: RoleName::Owner,
                token: Some(done.token),
                token_expires_at: rfc3339(done.expires_at),
                global_position: done.position,
            },
        )
        .header(actix_web::http::header::LOCATION, "/v1/tenant".to_string()))
    })
    .await
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PrincipalKind {
    Member,
    Operator,
}

/// `GET /v1/me`: a member (with tenant, user, email, name) or an operator.
#[derive(Serialize, ToSchema)]
pub(crate) struct Me {
    kind: PrincipalKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    tenant_id: Option<TenantId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    user_id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    operator_id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// A tenant role, or a platform role (support, pm, ops, finance).
    role: String,
    /// The id of the token used for this request (to revoke it by id, `DELETE /v1/tokens/{id}`).
    token_id: Uuid,
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
            token_id,
        } => {
            let member = state
                .identity
                .member(*tenant, *user_id)
                .ok_or_else(|| Problem::not_found("member not found"))?;
            Me {
                kind: PrincipalKind::Member,
                tenant_id: Some(*tenant),
                user_id: Some(*user_id),
                operator_id: None,
                email: Some(member.email.to_string()),
                name: Some(member.name.to_string()),
                role: role.as_str().to_owned(),
                token_id: *token_id,
            }
        }
        Principal::Operator {
            operator_id,
            role,
            token_id,
        } => Me {
            kind: PrincipalKind::Operator,
            tenant_id: None,
            user_id: None,
            operator_id: Some(*operator_id),
            email: None,
            name: None,
            role: role.as_str().to_owned(),
            token_id: *token_id,
        },
    };
    Ok(Reply::json(StatusCode::OK, &body))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PendingPlan {
    plan: crate::quota_routes::PlanName,
    #[schema(format = DateTime)]
    effective_at: String,
}

/// `GET /v1/tenant`.
#[derive(Serialize, ToSchema)]
pub(crate) struct TenantInfo {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    name: String,
    plan: crate::quota_routes::PlanName,
    /// A downgrade scheduled for the next period.
    pending_plan_change: Option<PendingPlan>,
    #[schema(format = DateTime)]
    signed_up_at: String,
    members: u64,
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
        .map(|p| PendingPlan {
            plan: p.to.into(),
            effective_at: rfc3339(p.effective_at),
        });
    Ok(Reply::json(
        StatusCode::OK,
        &TenantInfo {
            tenant_id: t.tenant_id,
            name: t.name.to_string(),
            plan: t.plan_at(now).into(),
            pending_plan_change: pending,
            signed_up_at: rfc3339(t.signed_up_at),
            members: t.members as u64,
        },
    ))
}

/// `PATCH /v1/tenant`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    name: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Renamed {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    name: String,
    global_position: u64,
}

pub async fn rename_tenant(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    // Under an Idempotency-Key, a retry replays the first answer (ADR 005).
    Ok(idempotent(&state, &req, tenant, &body, || {
        rename_tenant_once(state.clone(), req.clone(), caller.clone(), body.clone())
    })
    .await)
}

async fn rename_tenant_once(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: RenameRequest = json(&req, &body)?;
    let mut fields = Fields::default();
    let name = fields.check(
        "name",
        display_text(&dto.name, TenantName::MAX_CHARS, TenantName::parse),
    );
    fields.finish()?;
    let name = name.expect("validated");
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let position = app::identity::rename(&state, &ctx, tenant, name.clone()).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &Renamed {
            tenant_id: tenant,
            name: name.as_str().to_owned(),
            global_position: position,
        },
    ))
}

/// `POST /v1/members`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberRequest {
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[\x21-\x3f\x41-\x7e]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    )]
    email: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff][^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]*$"
    )]
    name: String,
    /// Parsed at the edge so that a wrong role is reported on its field.
    #[schema(value_type = RoleName)]
    role: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MemberResponse {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    email: String,
    role: RoleName,
    /// The member's first token, shown once (`null` in an idempotent replay).
    token: Option<String>,
    #[schema(format = DateTime)]
    token_expires_at: String,
    global_position: u64,
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
        let email = fields.check("email", email_at_edge(&dto.email));
        let name = fields.check("name", display_text(&dto.name, 200, PersonName::parse));
        let role = fields.check("role", TenantRole::from_str(&dto.role));
        fields.finish()?;
        let (email, name, role) = (email.unwrap(), name.unwrap(), role.unwrap());
        let Principal::Member { role: by, .. } = caller.principal else {
            return Err(Problem::forbidden("only members add members"));
        };
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let member = app::identity::AddMember {
            email: email.clone(),
            name,
            role,
            token: None,
        };
        let done = app::identity::add_member(&state, &ctx, tenant, by, member).await?;
        Ok(Reply::json(
            StatusCode::CREATED,
            &MemberResponse {
                tenant_id: tenant,
                user_id: done.user_id,
                email: email.as_str().to_owned(),
                role: role.into(),
                token: Some(done.token),
                token_expires_at: rfc3339(done.expires_at),
                global_position: done.position,
            },
        ))
    })
    .await
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Revoked {
    revoked_token_id: Uuid,
    global_position: u64,
}

pub async fn revoke_current_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<Reply, Problem> {
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let (owner, token_id) = match caller.principal {
        Principal::Member {
            tenant, token_id, ..
        } => (app::identity::TokenOwner::Member(tenant), token_id),
        Principal::Operator { token_id, .. } => (app::identity::TokenOwner::Operator, token_id),
    };
    // From this answer on, the token must not work here.
    let position = app::identity::revoke_token(&state, &ctx, owner, token_id).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &Revoked {
            revoked_token_id: token_id,
            global_position: position,
        },
    ))
}

/// `GET /v1/flags`: each flag, on or off.
#[derive(Serialize, ToSchema)]
pub(crate) struct Flags {
    flags: BTreeMap<String, bool>,
}

/// `GET /v1/tenants/{tenant_id}/flags`.
#[derive(Serialize, ToSchema)]
pub(crate) struct TenantFlags {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    flags: BTreeMap<String, bool>,
    /// The flags set for this tenant, overriding the defaults.
    overrides: BTreeMap<String, bool>,
}

fn effective_flags(state: &AppState, tenant: TenantId) -> BTreeMap<String, bool> {
    app::identity::effective_flags(state, tenant)
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
        &Flags {
            flags: effective_flags(&state, tenant),
        },
    ))
}

fn tenant_path(raw: &str, state: &AppState) -> Result<TenantId, Problem> {
    Ok(app::identity::known_tenant(state, raw)?)
}

pub async fn tenant_flags(
    state: web::Data<AppState>,
    _caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = tenant_path(&path, &state)?;
    let overrides: BTreeMap<String, bool> = app::identity::flag_overrides(&state, tenant)
        .into_iter()
        .map(|(f, on)| (f.as_str().to_owned(), on))
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &TenantFlags {
            tenant_id: tenant,
            flags: effective_flags(&state, tenant),
            overrides,
        },
    ))
}

/// `PUT /v1/tenants/{tenant_id}/flags/{flag}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlagRequest {
    enabled: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct FlagSet {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    flag: String,
    enabled: bool,
    global_position: u64,
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
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let position = app::identity::set_flag(&state, &ctx, tenant, flag, dto.enabled).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &FlagSet {
            tenant_id: tenant,
            flag: flag.as_str().to_owned(),
            enabled: dto.enabled,
            global_position: position,
        },
    ))
}

/// `GET /v1/audit/events`'s filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only events of this actor (`user:<id>` or `operator:<id>`).
    actor: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only events recorded before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^c1[0-9a-f]{1,16}$")]
    cursor: Option<String>,
    /// Events per page (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

/// A page of the audit feed.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditPage {
    #[schema(value_type = Vec<crate::openapi::AuditEvent>)]
    events: Vec<store::Envelope>,
    /// Where the next page starts; `null` on the last page.
    next_cursor: Option<String>,
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
        .map(|s| crate::http::rfc3339_field(field, s).map_err(|e| Problem::validation(vec![e])))
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
        let positions = state
            .audit_tree
            .positions_after(&state.store, tenant, after, 500)
            .await
            .map_err(Problem::from)?;
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
    let more = !exhausted
        && !state
            .audit_tree
            .positions_after(&state.store, tenant, after, 1)
            .await
            .map_err(Problem::from)?
            .is_empty();
    let next_cursor = more.then(|| encode_cursor(after));
    Ok(Reply::json(
        StatusCode::OK,
        &AuditPage {
            events,
            next_cursor,
        },
    ))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    status: String,
}

pub async fn healthz() -> Reply {
    Reply::json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

/// Ready when the store answers and every projection has applied the log's head. A projection
/// stopped at an event it cannot read makes it 503 with `status: "stopped"` and names it (with the
/// position and the reason) until it is rebuilt or the process restarts with code that reads it.
pub async fn readyz(state: web::Data<AppState>) -> Reply {
    let head = match state.store.head().await {
        Ok(h) => h,
        Err(e) => return Problem::from(e).into(),
    };
    let statuses = state.projections.status();
    let stopped: Vec<&str> = statuses
        .iter()
        .filter(|s| s.stopped.is_some())
        .map(|s| s.name)
        .collect();
    let caught_up = statuses.iter().all(|s| s.position >= head);
    let projections: serde_json::Map<String, serde_json::Value> = statuses
        .iter()
        .map(|s| (s.name.to_owned(), s.position.into()))
        .collect();
    let details: Vec<serde_json::Value> = statuses
        .iter()
        .map(|s| {
            j!({
                "name": s.name,
                "position": s.position,
                "lag": head.saturating_sub(s.position),
                "resumed_from": s.resumed_from,
                "stopped": s.stopped.as_ref().map(|u| j!({
                    "at_position": u.position,
                    "event_type": u.event_type,
                    "reason": u.reason,
                })),
                "rebuild": s.rebuild.as_ref().map(|r| j!({
                    "name": r.name,
                    "position": r.position,
                    "state": match &r.state {
                        projections::RebuildState::Running => "running",
                        projections::RebuildState::Done { .. } => "done",
                        projections::RebuildState::Failed { .. } => "failed",
                    },
                    "reason": match &r.state {
                        projections::RebuildState::Failed { reason } => Some(reason.as_str()),
                        _ => None,
                    },
                })),
            })
        })
        .collect();
    let status = if !state.store.health().is_ready() {
        "store_unavailable"
    } else if !stopped.is_empty() {
        "stopped"
    } else if caught_up {
        "ready"
    } else {
        "catching_up"
    };
    let body = j!({
        "status": status,
        "store": state.store.backend_name(),
        "head_position": head,
        "projections": projections,
        "stopped": stopped,
        "details": details,
        "reader_error": state.projections.reader_error(),
    });
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::json(code, &body)
}

/// Who may scrape `/metrics`: the holder of `metrics_token` when one is set, otherwise loopback
/// clients only (a scraper on the same host, or an operator's tunnel) — and never through a proxy,
/// which would make every client look like loopback.
fn may_scrape(state: &AppState, req: &HttpRequest) -> Result<(), Problem> {
    match &state.settings.metrics_token {
        Some(token) => {
            let given = req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            // Compare digests: equal-length, so the comparison's time says nothing of the token.
            if crate::tokens::sha256_hex(given.as_bytes())
                == crate::tokens::sha256_hex(token.0.as_bytes())
            {
                Ok(())
            } else {
                Err(
                    Problem::unauthorized("/metrics needs the metrics token").header(
                        actix_web::http::header::WWW_AUTHENTICATE,
                        "Bearer realm=\"metrics\"",
                    ),
                )
            }
        }
        // Behind a proxy on the same host every client is loopback: then only the token opens it.
        None if !state.settings.trust_forwarded_for
            && req.headers().get("x-forwarded-for").is_none()
            && req.headers().get("forwarded").is_none()
            && req.peer_addr().is_some_and(|a| a.ip().is_loopback()) =>
        {
            Ok(())
        }
        None => Err(Problem::forbidden(
            "/metrics answers loopback clients only; set metrics_token to scrape it remotely",
        )),
    }
}

pub async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, Problem> {
    may_scrape(&state, &req)?;
    let head = state.store.head().await.unwrap_or(0);
    let lag: Vec<(&str, u64)> = state
        .projections
        .checkpoints()
        .into_iter()
        .map(|(n, c)| (n, head.saturating_sub(c)))
        .collect();
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render(&state.counters, &lag, &gauges(&state))))
}

/// What the service's bounded caches hold, for `/metrics` (a soak reads them to see when they
/// are full; ADR 040).
fn gauges(state: &AppState) -> [(&'static str, &'static str, u64); 5] {
    let cache = &state.sandbox;
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    [
        (
            "dataset_cache_bytes",
            "What the cached loaded datasets take: bytes of their files (of memory when the cache is in memory)",
            n(cache.loaded_bytes()),
        ),
        (
            "dataset_cache_budget_bytes",
            "The dataset cache's budget (sandbox_cache_bytes)",
            n(cache.budget()),
        ),
        (
            "dataset_cache_tables",
            "Loaded datasets in the cache",
            n(cache.len()),
        ),
        (
            "sandbox_memory_bytes",
            "SQLite memory tenants' SQL holds now (running queries, and tables when cached in memory)",
            dataplane::sandbox::sandbox_memory_used(),
        ),
        (
            "executor_hot_streams",
            "Streams whose state the command executors keep hot, all executors together",
            n(state.hot_streams()),
        ),
    ]
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
