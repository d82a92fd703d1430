//! SSO over HTTP (issue 10, item 3; ADR 031): the tenant's OIDC settings and mapping rules
//! (owners and admins), the mapping preview, the anonymous login with an ID token, and the SCIM
//! token (owners). Handlers parse, call one use case of `app::sso` or `app::scim`, and answer.

use crate::auth::Caller;
use crate::http::{Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::routes::RoleName;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use domain::sso::{Grant, JwksSource, Mapping, MappingRule, SsoAlg, SsoSettings};
use domain::{TenantId, TenantRole, UserId};
use projections::Principal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

fn rfc3339(t: time::OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

fn member_role(caller: &Caller) -> Result<TenantRole, Problem> {
    match caller.principal {
        Principal::Member { role, .. } => Ok(role),
        Principal::Operator { .. } => Err(Problem::forbidden("this route acts on a tenant")),
    }
}

/// An ID-token signature algorithm a tenant allows.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub(crate) enum AlgName {
    RS256,
    EdDSA,
}

impl From<AlgName> for SsoAlg {
    fn from(a: AlgName) -> Self {
        match a {
            AlgName::RS256 => SsoAlg::RS256,
            AlgName::EdDSA => SsoAlg::EdDSA,
        }
    }
}

impl From<SsoAlg> for AlgName {
    fn from(a: SsoAlg) -> Self {
        match a {
            SsoAlg::RS256 => AlgName::RS256,
            SsoAlg::EdDSA => AlgName::EdDSA,
        }
    }
}

/// `PUT /v1/sso/settings`: exactly one of `jwks` (the provider's JWK set, inline) and
/// `jwks_file` (an absolute path on the server, put there by an operator). Keys are never fetched
/// over the network.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsRequest {
    /// The `iss` every ID token must carry, exactly.
    #[schema(min_length = 1, max_length = 2048)]
    issuer: String,
    /// The `aud` every ID token must name (the client id at the provider).
    #[schema(min_length = 1, max_length = 512)]
    audience: String,
    /// A JWK set: `{"keys": [...]}` with RSA or Ed25519 public keys.
    #[schema(value_type = Option<Object>)]
    jwks: Option<serde_json::Value>,
    #[schema(min_length = 1, max_length = 4096)]
    jwks_file: Option<String>,
    /// Allowed algorithms (default both).
    #[schema(min_items = 1)]
    algorithms: Option<Vec<AlgName>>,
    /// The claim that lists the user's groups (default `groups`).
    #[schema(min_length = 1, max_length = 100)]
    groups_claim: Option<String>,
    /// Allowed clock difference with the provider (default 60).
    #[schema(minimum = 0, maximum = 300)]
    clock_skew_seconds: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SettingsView {
    configured: bool,
    issuer: Option<String>,
    audience: Option<String>,
    /// `inline` or `file`.
    jwks_source: Option<String>,
    jwks_file: Option<String>,
    algorithms: Vec<AlgName>,
    groups_claim: Option<String>,
    clock_skew_seconds: Option<u32>,
    /// Whether the tenant has a SCIM token.
    scim_token: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Saved {
    global_position: u64,
}

pub(crate) async fn get_settings(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<crate::http::ReadQuery>,
) -> Result<web::Json<SettingsView>, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    wait_for(&state, query.min_position).await?;
    let cfg = app::sso::config(&state, tenant).await?;
    let s = cfg.settings.as_ref();
    Ok(web::Json(SettingsView {
        configured: s.is_some(),
        issuer: s.map(|s| s.issuer.clone()),
        audience: s.map(|s| s.audience.clone()),
        jwks_source: s.map(|s| match s.jwks {
            JwksSource::Inline(_) => "inline".into(),
            JwksSource::File(_) => "file".into(),
        }),
        jwks_file: s.and_then(|s| match &s.jwks {
            JwksSource::File(p) => Some(p.clone()),
            JwksSource::Inline(_) => None,
        }),
        algorithms: s
            .map(|s| s.algorithms.iter().map(|a| (*a).into()).collect())
            .unwrap_or_default(),
        groups_claim: s.map(|s| s.groups_claim.clone()),
        clock_skew_seconds: s.map(|s| s.clock_skew_seconds),
        scim_token: cfg.scim_token.is_some(),
    }))
}

pub(crate) async fn put_settings(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    let tenant = match caller.tenant_or_forbidden() {
        Ok(t) => t,
        Err(p) => return p.into(),
    };
    idempotent(&state, &req, tenant, &body, || async {
        let dto: SettingsRequest = json(&req, &body)?;
        let jwks = match (dto.jwks, dto.jwks_file) {
            (Some(set), None) => JwksSource::Inline(set.to_string()),
            (None, Some(path)) => JwksSource::File(path),
            _ => {
                return Err(Problem::validation(vec![(
                    "jwks".into(),
                    "give exactly one of jwks and jwks_file".into(),
                )]));
            }
        };
        let mut algorithms: Vec<SsoAlg> = dto
            .algorithms
            .unwrap_or_else(|| vec![AlgName::RS256, AlgName::EdDSA])
            .into_iter()
            .map(Into::into)
            .collect();
        algorithms.sort();
        algorithms.dedup();
        let settings = SsoSettings {
            issuer: dto.issuer,
            audience: dto.audience,
            jwks,
            algorithms,
            groups_claim: dto.groups_claim.unwrap_or_else(|| "groups".into()),
            clock_skew_seconds: dto
                .clock_skew_seconds
                .unwrap_or(domain::sso::DEFAULT_SKEW_SECONDS),
        };
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let position = app::sso::set_settings(&state, &ctx, tenant, settings).await?;
        Ok(Reply::json(
            StatusCode::OK,
            &Saved {
                global_position: position,
            },
        ))
    })
    .await
}

/// One mapping rule: members of `group` get `grant` (a role, or `deny`); the highest `priority`
/// among the matching rules wins, the first listed between equals.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDto {
    #[schema(min_length = 1, max_length = 256)]
    group: String,
    #[schema(pattern = "^(owner|admin|analyst|viewer|billing|compliance|deny)$")]
    grant: String,
    #[schema(minimum = -1000000, maximum = 1000000)]
    priority: i32,
}

/// `PUT /v1/sso/mapping` and `POST /v1/sso/mapping/preview`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MappingRequest {
    #[schema(max_items = 200)]
    rules: Vec<RuleDto>,
    /// The role of a user no rule matches; `null` refuses them.
    default_role: Option<RoleName>,
    /// Why (kept in the `sso.mapping_saved` event).
    #[schema(max_length = 500)]
    reason: Option<String>,
}

impl MappingRequest {
    fn parse(self) -> Result<(Mapping, Option<String>), Problem> {
        let mut fields = Vec::new();
        let mut rules = Vec::new();
        if self.rules.len() > domain::sso::MAX_RULES {
            fields.push(("rules".to_owned(), "at most 200 rules".to_owned()));
        }
        for (i, r) in self.rules.into_iter().enumerate() {
            if !(-1_000_000..=1_000_000).contains(&r.priority) {
                fields.push((
                    format!("rules[{i}].priority"),
                    "from -1000000 to 1000000".to_owned(),
                ));
            }
            if r.group.is_empty() || r.group.chars().count() > 256 {
                fields.push((
                    format!("rules[{i}].group"),
                    "1 to 256 characters".to_owned(),
                ));
            }
            match Grant::parse(&r.grant) {
                Some(grant) => rules.push(MappingRule {
                    group: r.group,
                    grant,
                    priority: r.priority,
                }),
                None => fields.push((format!("rules[{i}].grant"), "a role or \"deny\"".to_owned())),
            }
        }
        if let Some(r) = &self.reason
            && r.chars().count() > 500
        {
            fields.push(("reason".into(), "at most 500 characters".into()));
        }
        if !fields.is_empty() {
            return Err(Problem::validation(fields));
        }
        let default_role = self.default_role.map(|r| match r {
            RoleName::Owner => TenantRole::Owner,
            RoleName::Admin => TenantRole::Admin,
            RoleName::Analyst => TenantRole::Analyst,
            RoleName::Viewer => TenantRole::Viewer,
            RoleName::Billing => TenantRole::Billing,
            RoleName::Compliance => TenantRole::Compliance,
        });
        Ok((
            Mapping {
                rules,
                default_role,
            },
            self.reason,
        ))
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MappingView {
    rules: Vec<RuleDto>,
    default_role: Option<RoleName>,
    /// Whether a mapping was saved (before that, everyone signs in as a viewer).
    saved: bool,
}

pub(crate) async fn get_mapping(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<crate::http::ReadQuery>,
) -> Result<web::Json<MappingView>, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    wait_for(&state, query.min_position).await?;
    let cfg = app::sso::config(&state, tenant).await?;
    Ok(web::Json(MappingView {
        rules: cfg
            .mapping
            .rules
            .iter()
            .map(|r| RuleDto {
                group: r.group.clone(),
                grant: r.grant.as_str().to_owned(),
                priority: r.priority,
            })
            .collect(),
        default_role: cfg.mapping.default_role.map(Into::into),
        saved: cfg.mapping_saved,
    }))
}

pub(crate) async fn put_mapping(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    let tenant = match caller.tenant_or_forbidden() {
        Ok(t) => t,
        Err(p) => return p.into(),
    };
    idempotent(&state, &req, tenant, &body, || async {
        let by = member_role(&caller)?;
        let (mapping, reason) = json::<MappingRequest>(&req, &body)?.parse()?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let position = app::sso::save_mapping(&state, &ctx, tenant, by, mapping, reason).await?;
        Ok(Reply::json(
            StatusCode::OK,
            &Saved {
                global_position: position,
            },
        ))
    })
    .await
}

/// A user whose access the proposed mapping changes; `null` roles are "no access".
#[derive(Serialize, ToSchema)]
pub(crate) struct PreviewLine {
    #[schema(value_type = Option<uuid::Uuid>)]
    user_id: Option<UserId>,
    email: String,
    from: Option<RoleName>,
    to: Option<RoleName>,
    /// `gains` (no access → a role), `loses` (a role → none) or `changes`.
    change: String,
    /// The group whose rule decides the new outcome (`null`: the default role, or no match).
    by_group: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PreviewResponse {
    /// Users known from their last SSO login (or SCIM) groups.
    users_considered: usize,
    changes: Vec<PreviewLine>,
}

pub(crate) async fn preview_mapping(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<web::Json<PreviewResponse>, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let by = member_role(&caller)?;
    let (mapping, _) = json::<MappingRequest>(&req, &body)?.parse()?;
    let preview = app::sso::preview_mapping(&state, tenant, by, mapping).await?;
    Ok(web::Json(PreviewResponse {
        users_considered: preview.users_considered,
        changes: preview
            .changes
            .into_iter()
            .map(|c| PreviewLine {
                user_id: c.user_id,
                email: c.email,
                change: match (c.from, c.to) {
                    (None, Some(_)) => "gains",
                    (Some(_), None) => "loses",
                    _ => "changes",
                }
                .into(),
                from: c.from.map(Into::into),
                to: c.to.map(Into::into),
                by_group: c.by_group,
            })
            .collect(),
    }))
}

/// `POST /v1/sso/login`: an ID token of the tenant's identity provider, and the nonce the client
/// sent it (the token must carry the same).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    #[schema(format = Uuid)]
    tenant: String,
    #[schema(min_length = 1, max_length = 16384)]
    id_token: String,
    #[schema(min_length = 1, max_length = 512)]
    nonce: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct LoginResponse {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    #[schema(value_type = uuid::Uuid)]
    user_id: UserId,
    role: RoleName,
    token: String,
    token_expires_at: String,
    /// A member was made for this login.
    created: bool,
    /// The role before this login, when the user's groups now map to another (drift).
    role_changed_from: Option<RoleName>,
    global_position: u64,
}

pub(crate) async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<web::Json<LoginResponse>, Problem> {
    let dto: LoginRequest = json(&req, &body)?;
    let tenant = app::identity::known_tenant(&state, &dto.tenant)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata("sso".into()));
    let done = app::sso::login(
        &state,
        &ctx,
        app::sso::Login {
            tenant,
            id_token: dto.id_token,
            nonce: dto.nonce,
        },
    )
    .await?;
    Ok(web::Json(LoginResponse {
        tenant_id: done.tenant_id,
        user_id: done.user_id,
        role: done.role.into(),
        token: done.token,
        token_expires_at: rfc3339(done.expires_at),
        created: done.created,
        role_changed_from: done.role_changed_from.map(Into::into),
        global_position: done.position,
    }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ScimTokenResponse {
    /// The SCIM bearer token: shown once, stored only as its SHA-256; the previous one stops
    /// working.
    token: String,
    token_id: Uuid,
    global_position: u64,
}

pub(crate) async fn create_scim_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<(web::Json<ScimTokenResponse>, StatusCode), Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let t = app::scim::create_token(&state, &ctx, tenant).await?;
    Ok((
        web::Json(ScimTokenResponse {
            token: t.token,
            token_id: t.token_id,
            global_position: t.position,
        }),
        StatusCode::CREATED,
    ))
}
