//! The audit log's handlers (issue 12): the keyring, key rotation, a tenant's signed checkpoint
//! and audit bundles. They parse, call one use case of `app::audit` and answer; the bundle is
//! streamed from the temporary file the use case wrote.

use crate::auth::Caller;
use crate::http::{Reply, RequestContext, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use app::audit::KeyInfo;
use domain::TenantId;
use domain::audit::KeyKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A public key of the audit keyring.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditKey {
    /// `log` (signs checkpoints) or `export` (signs bundle manifests).
    kind: String,
    /// 1 for the first key of its kind, one more per rotation.
    generation: u32,
    name: String,
    /// 8 hex digits: the C2SP key id (log keys), or the first 4 bytes of the key's SHA-256.
    key_id: String,
    /// The 32-byte Ed25519 public key, base64.
    public_key: String,
    /// SubjectPublicKeyInfo PEM, for `openssl pkeyutl -pubin` and `tenantry-verify --key`.
    pem: String,
    /// The C2SP signed-note verifier key (log keys only).
    vkey: Option<String>,
    /// Whether this key is in force; rotated keys stay listed.
    current: bool,
}

impl From<KeyInfo> for AuditKey {
    fn from(k: KeyInfo) -> Self {
        AuditKey {
            kind: k.kind.as_str().to_owned(),
            generation: k.generation,
            name: k.name,
            key_id: k.key_id,
            public_key: k.public_key,
            pem: k.pem,
            vkey: k.vkey,
            current: k.current,
        }
    }
}

/// The audit keyring: every log and export key, rotated ones included.
#[derive(Serialize, ToSchema)]
pub(crate) struct Keyring {
    keys: Vec<AuditKey>,
}

/// A rotation: the new key in force.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyRotated {
    key: AuditKey,
    global_position: u64,
}

/// A tenant's tree, signed now.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditCheckpoint {
    #[schema(value_type = uuid::Uuid)]
    tenant_id: TenantId,
    /// `{log key name}/{tenant id}`.
    origin: String,
    /// The tree's size: the tenant's events so far.
    size: u64,
    /// The root, base64.
    root: String,
    /// The C2SP signed note (checkpoint body and signature line).
    note: String,
    /// The log key's id, 8 hex digits.
    key_id: String,
}

/// `GET /v1/audit/checkpoint`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckpointQuery {
    /// The tenant (platform operators; without it, the platform tenant's own tree). Members get
    /// their own tenant's.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant: Option<String>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

/// `POST /v1/audit/bundles`: the range `[from, to)` of `recorded_at`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BundleRequest {
    /// Start of the range (inclusive), RFC 3339.
    #[schema(format = DateTime)]
    from: String,
    /// End of the range (exclusive), RFC 3339.
    #[schema(format = DateTime)]
    to: String,
}

fn ctx(state: &AppState, req: &HttpRequest, caller: &Caller) -> app::Ctx {
    state.ctx(RequestContext::of(req).metadata(caller.actor()))
}

/// `GET /v1/audit/keys`.
pub async fn keys(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<Reply, Problem> {
    let keys = app::audit::keys(&state, &ctx(&state, &req, &caller)).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &Keyring {
            keys: keys.into_iter().map(AuditKey::from).collect(),
        },
    ))
}

/// `POST /v1/audit/keys/{kind}/rotate`.
pub async fn rotate_key(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let kind = KeyKind::parse(&path).ok_or_else(|| Problem::not_found("no such key kind"))?;
    let (key, position) = app::audit::rotate_key(&state, &ctx(&state, &req, &caller), kind).await?;
    Ok(Reply::json(
        StatusCode::CREATED,
        &KeyRotated {
            key: key.into(),
            global_position: position,
        },
    ))
}

/// `GET /v1/audit/checkpoint`.
pub async fn checkpoint(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    q: web::Query<CheckpointQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = match (caller.tenant(), &q.tenant) {
        (Some(own), None) => own,
        (Some(own), Some(asked)) if asked.eq_ignore_ascii_case(&own.as_uuid().to_string()) => own,
        (Some(_), Some(_)) => {
            return Err(Problem::forbidden(
                "members read their own tenant's checkpoint only",
            ));
        }
        (None, Some(asked)) => uuid::Uuid::parse_str(asked)
            .map(TenantId::from_uuid)
            .map_err(|_| Problem::validation(vec![("tenant".into(), "must be a UUID".into())]))?,
        // An operator's own tenant is the platform's (operators, keyring, plan registry).
        (None, None) => TenantId::PLATFORM,
    };
    let c = app::audit::checkpoint(&state, &ctx(&state, &req, &caller), tenant).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &AuditCheckpoint {
            tenant_id: c.tenant,
            origin: c.origin,
            size: c.size,
            root: c.root,
            note: c.note,
            key_id: c.key_id,
        },
    ))
}

/// `GET /v1/audit/state`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// The moment (RFC 3339): the state after every event recorded at or before it (default:
    /// now).
    #[param(format = DateTime)]
    at: Option<String>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

/// A member at the moment asked.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditStateMember {
    user_id: String,
    role: String,
}

/// A preset at the moment asked.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditStatePreset {
    preset_id: String,
    name: String,
    version: u32,
    deleted: bool,
}

/// The tenant at a moment, rebuilt from its events — what `tenantry-verify replay --at` prints
/// for a bundle of the same events.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditState {
    tenant_id: String,
    /// The moment, RFC 3339 with microseconds.
    at: String,
    /// How many of the tenant's events were folded.
    events: u64,
    name: Option<String>,
    /// The plan in force at the moment.
    plan: String,
    members: Vec<AuditStateMember>,
    /// The tenant's flag overrides.
    flags: std::collections::BTreeMap<String, bool>,
    presets: Vec<AuditStatePreset>,
    /// `null` until first changed (the default, `shadow`, applies).
    billing_mode: Option<String>,
}

impl From<domain::replay::TenantState> for AuditState {
    fn from(s: domain::replay::TenantState) -> Self {
        AuditState {
            tenant_id: s.tenant_id,
            at: s.at,
            events: s.events,
            name: s.name,
            plan: s.plan,
            members: s
                .members
                .into_iter()
                .map(|m| AuditStateMember {
                    user_id: m.user_id,
                    role: m.role,
                })
                .collect(),
            flags: s.flags,
            presets: s
                .presets
                .into_iter()
                .map(|p| AuditStatePreset {
                    preset_id: p.preset_id,
                    name: p.name,
                    version: p.version,
                    deleted: p.deleted,
                })
                .collect(),
            billing_mode: s.billing_mode,
        }
    }
}

/// `GET /v1/audit/state?at=`.
pub async fn state_at(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<StateQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let at = match &q.at {
        Some(raw) => {
            crate::http::rfc3339_field("at", raw).map_err(|e| Problem::validation(vec![e]))?
        }
        None => state.clock.now(),
    };
    let s = app::audit::state_at(&state, tenant, at).await?;
    Ok(Reply::json(StatusCode::OK, &AuditState::from(s)))
}

/// A string schema with a pattern (what the derive cannot put on a vector's items).
fn pattern_string(
    description: &str,
    pattern: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .into()
}

/// An event type (`member.added`): no spaces.
pub(crate) struct EventTypeName;

impl utoipa::PartialSchema for EventTypeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        pattern_string("An event type (`member.added`)", r"^\S+$")
    }
}

impl ToSchema for EventTypeName {}

/// A JSON pointer into an event's payload (`/email`).
pub(crate) struct JsonPointer;

impl utoipa::PartialSchema for JsonPointer {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        pattern_string("A JSON pointer into the payload (`/email`)", r"^/")
    }
}

impl ToSchema for JsonPointer {}

/// One retention rule.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionRuleDto {
    /// The rule's name, unique in the policy (erasures name it).
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    name: String,
    /// The event types it covers (`member.added`, …).
    #[schema(min_items = 1, value_type = Vec<EventTypeName>)]
    event_types: Vec<String>,
    /// JSON pointers to the personal fields of those events' payloads (`/email`).
    #[schema(min_items = 1, value_type = Vec<JsonPointer>)]
    fields: Vec<String>,
    /// Days the fields are kept after the event's `occurred_at`.
    #[schema(maximum = 36500)]
    keep_days: u32,
}

/// `PUT /v1/audit/retention`: the tenant's whole retention policy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionRequest {
    rules: Vec<RetentionRuleDto>,
}

/// The policy in force.
#[derive(Serialize, ToSchema)]
pub(crate) struct RetentionSet {
    rules: Vec<RetentionRuleDto>,
    /// 0 when the policy was already in force (nothing written).
    global_position: u64,
}

/// `PUT /v1/audit/retention`.
pub async fn set_retention(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: RetentionRequest = json(&req, &body)?;
    let policy = domain::audit::RetentionPolicySet {
        rules: dto
            .rules
            .iter()
            .map(|r| domain::audit::RetentionRule {
                name: r.name.clone(),
                event_types: r.event_types.clone(),
                fields: r.fields.clone(),
                keep_days: r.keep_days,
            })
            .collect(),
    };
    let problems = policy.problems();
    if !problems.is_empty() {
        return Err(Problem::validation(problems));
    }
    let position =
        app::audit::set_retention(&state, &ctx(&state, &req, &caller), tenant, policy).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &RetentionSet {
            rules: dto.rules,
            global_position: position,
        },
    ))
}

/// `POST /v1/audit/bundles`: the bundle as `application/gzip`, streamed from its temporary file.
pub async fn create_bundle(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: BundleRequest = json(&req, &body)?;
    let (from, to) = match (
        crate::http::rfc3339_field("from", &dto.from),
        crate::http::rfc3339_field("to", &dto.to),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (f, t) => {
            return Err(Problem::validation(
                [f.err(), t.err()].into_iter().flatten().collect(),
            ));
        }
    };
    let b = app::audit::bundle(&state, &ctx(&state, &req, &caller), tenant, from, to).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/gzip"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"audit-{}.tar.gz\"", b.bundle_id),
        ))
        .insert_header(("X-Tenantry-Bundle-Id", b.bundle_id.clone()))
        .insert_header(("X-Tenantry-Event-Count", b.event_count.to_string()))
        .insert_header(("X-Tenantry-Tree-Size", b.tree_size.to_string()))
        .insert_header(("X-Tenantry-Manifest-Sha256", b.manifest_sha256.clone()))
        .insert_header(("X-Tenantry-Global-Position", b.position.to_string()))
        .no_chunking(b.bytes)
        .streaming(crate::http::file_chunks(b.file)))
}
