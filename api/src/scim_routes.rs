//! SCIM 2.0 over HTTP (issue 10, item 4; RFC 7643/7644; ADR 031): `/scim/v2/Users`, `/Groups`
//! and the discovery documents, authenticated by the tenant's SCIM token (`ScimCaller`), in SCIM's
//! own format: `application/scim+json`, SCIM error documents (never RFC 9457), attribute names
//! read case-insensitively and unknown attributes ignored (RFC 7643 §2.1), the quirks real
//! providers send (Entra's `"False"` strings and PascalCase `op`s). Handlers parse, call one use
//! case of `app::scim` and answer.

use crate::http::RequestContext;
use crate::server::AppState;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, dev::Payload, web};
use app::scim::{GroupInput, PatchKind, PatchOp, UserInput};
use domain::TenantId;
use domain::scim::{ScimGroup, ScimUser};
use futures_util::future::LocalBoxFuture;
use projections::{DirectoryFilter, DirectoryPage, Versioned};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const CONTENT_TYPE: &str = "application/scim+json";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The most resources one list answers.
const MAX_RESULTS: usize = 200;

/// A SCIM error document (RFC 7644 §3.12): `status` is a string.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScimErrorBody {
    schemas: Vec<String>,
    /// The HTTP status, as a string.
    status: String,
    /// `invalidFilter`, `uniqueness`, `invalidValue`, `invalidSyntax`, `mutability`, …
    #[serde(rename = "scimType", skip_serializing_if = "Option::is_none")]
    scim_type: Option<String>,
    detail: String,
}

/// A SCIM error answer.
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidValue"), detail)
    }
}

/// A SCIM error for an answer the server makes outside a SCIM handler (an unknown path under
/// `/scim/v2`, a wrong method): SCIM clients read SCIM errors there too.
pub fn error_response(status: StatusCode, detail: impl Into<String>) -> HttpResponse {
    ScimError::new(status, None, detail).error_response()
}

impl std::fmt::Display for ScimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.detail)
    }
}

impl ResponseError for ScimError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((header::CONTENT_TYPE, CONTENT_TYPE));
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"tenantry-scim\""));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        res.body(
            serde_json::to_vec(&ScimErrorBody {
                schemas: vec![ERROR_SCHEMA.into()],
                status: self.status.as_u16().to_string(),
                scim_type: self.scim_type.map(str::to_owned),
                detail: self.detail.clone(),
            })
            .expect("errors serialize"),
        )
    }
}

impl From<app::Error> for ScimError {
    fn from(e: app::Error) -> Self {
        use app::Error as E;
        match e {
            E::Validation(fields) => ScimError::invalid(
                fields
                    .iter()
                    .map(|(f, r)| format!("{f}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            E::NotFound(what) => ScimError::new(StatusCode::NOT_FOUND, None, what),
            E::Conflict {
                slug: "uniqueness",
                detail,
            } => ScimError::new(StatusCode::CONFLICT, Some("uniqueness"), detail),
            E::Conflict { detail, .. } => ScimError::new(StatusCode::CONFLICT, None, detail),
            E::Unauthorized { detail, .. } => {
                ScimError::new(StatusCode::UNAUTHORIZED, None, detail)
            }
            E::Forbidden { detail, .. } => ScimError::new(StatusCode::FORBIDDEN, None, detail),
            E::Tenant(t) => match t {
                domain::tenant::TenantError::EmailTaken(_) => {
                    ScimError::new(StatusCode::CONFLICT, Some("uniqueness"), t.to_string())
                }
                domain::tenant::TenantError::LastOwner => {
                    ScimError::new(StatusCode::BAD_REQUEST, Some("mutability"), t.to_string())
                }
                other => ScimError::new(StatusCode::CONFLICT, None, other.to_string()),
            },
            E::Busy => ScimError::new(StatusCode::CONFLICT, None, e.to_string()),
            E::Store(_) | E::NotCaughtUp { .. } => {
                ScimError::new(StatusCode::SERVICE_UNAVAILABLE, None, "retry shortly")
            }
            other => {
                tracing::error!(error = %other, "SCIM request failed");
                ScimError::new(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error")
            }
        }
    }
}

/// The tenant a SCIM request acts on, by its SCIM bearer token.
#[derive(Clone, Copy, Debug)]
pub struct ScimCaller {
    pub tenant: TenantId,
}

impl FromRequest for ScimCaller {
    type Error = ScimError;
    type Future = LocalBoxFuture<'static, Result<Self, ScimError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| {
                ScimError::new(StatusCode::INTERNAL_SERVER_ERROR, None, "no state")
            })?;
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                })
                .ok_or_else(|| {
                    ScimError::new(
                        StatusCode::UNAUTHORIZED,
                        None,
                        "send Authorization: Bearer <SCIM token>",
                    )
                })?;
            let tenant = app::scim::authenticate(state, token).await?;
            Ok(ScimCaller { tenant })
        })
    }
}

fn ctx(state: &AppState, req: &HttpRequest) -> app::Ctx {
    state.ctx(RequestContext::of(req).metadata(app::scim::ACTOR.into()))
}

fn scim_json(status: StatusCode, value: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
        .body(serde_json::to_vec(value).expect("values serialize"))
}

/// A SCIM body: JSON (`application/scim+json` or `application/json`), an object.
fn body_of(req: &HttpRequest, body: &[u8]) -> Result<Map<String, Value>, ScimError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/scim+json");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/scim+json" && essence != "application/json" {
        return Err(ScimError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "send application/scim+json",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "the body is not a JSON object",
        )),
        Err(e) => Err(ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            format!("invalid JSON: {e}"),
        )),
    }
}

/// An attribute of an object, its name compared case-insensitively.
fn attr<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn opt_text(m: &Map<String, Value>, name: &str) -> Result<Option<String>, ScimError> {
    match attr(m, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ScimError::invalid(format!("{name} must be a string"))),
    }
}

fn location(req: &HttpRequest, kind: &str, id: Uuid) -> String {
    let info = req.connection_info();
    format!("{}://{}/scim/v2/{kind}/{id}", info.scheme(), info.host())
}

fn meta<T>(req: &HttpRequest, kind: &str, id: Uuid, v: &Versioned<T>) -> Value {
    json!({
        "resourceType": kind,
        "created": store::format_rfc3339_micros(v.created),
        "lastModified": store::format_rfc3339_micros(v.modified),
        "location": location(req, &format!("{kind}s"), id),
        "version": format!("W/\"{}\"", v.version),
    })
}

fn user_json(req: &HttpRequest, view: &app::scim::UserView) -> Value {
    let (v, groups) = view;
    let u: &ScimUser = &v.value;
    let mut out = json!({
        "schemas": [USER_SCHEMA],
        "id": u.scim_id,
        "userName": u.user_name,
        "active": u.active,
        "groups": groups.iter().map(|(id, name)| json!({
            "value": id, "display": name, "$ref": location(req, "Groups", *id), "type": "direct"
        })).collect::<Vec<_>>(),
        "meta": meta(req, "User", u.scim_id, v),
    });
    if let Some(x) = &u.external_id {
        out["externalId"] = json!(x);
    }
    if let Some(x) = &u.display_name {
        out["displayName"] = json!(x);
    }
    if u.given_name.is_some() || u.family_name.is_some() {
        let mut name = json!({});
        if let Some(g) = &u.given_name {
            name["givenName"] = json!(g);
        }
        if let Some(f) = &u.family_name {
            name["familyName"] = json!(f);
        }
        out["name"] = name;
    }
    out
}

fn group_json(req: &HttpRequest, v: &Versioned<ScimGroup>) -> Value {
    let g = &v.value;
    // RFC 7643 §8.7.1: a member is its `value` and `$ref`.
    let members: Vec<Value> = g
        .members
        .iter()
        .map(|m| json!({"value": m, "$ref": location(req, "Users", *m)}))
        .collect();
    let mut out = json!({
        "schemas": [GROUP_SCHEMA],
        "id": g.group_id,
        "displayName": g.display_name,
        "members": members,
        "meta": meta(req, "Group", g.group_id, v),
    });
    if let Some(x) = &g.external_id {
        out["externalId"] = json!(x);
    }
    out
}

/// The query of a SCIM list (RFC 7644 §3.4.2). Other parameters (`attributes`, `sortBy`, …)
/// are accepted and ignored.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `userName eq "…"`, `externalId eq "…"`, `id eq "…"` (Users); `displayName eq "…"`,
    /// `externalId eq "…"`, `id eq "…"` (Groups).
    filter: Option<String>,
    /// 1-based; less than 1 is 1. (Read as text, so that a bad one is a SCIM error.)
    #[serde(rename = "startIndex")]
    #[param(rename = "startIndex", value_type = Option<i64>)]
    start_index: Option<String>,
    /// At most 200; negative is 0.
    #[param(value_type = Option<i64>)]
    count: Option<String>,
    /// Only these attributes (comma-separated; `id` and `schemas` always).
    attributes: Option<String>,
    /// All but these attributes (comma-separated).
    #[serde(rename = "excludedAttributes")]
    #[param(rename = "excludedAttributes")]
    excluded_attributes: Option<String>,
}

/// The query of a SCIM get: which attributes to answer.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Only these attributes (comma-separated; `id` and `schemas` always).
    attributes: Option<String>,
    /// All but these attributes (comma-separated).
    #[serde(rename = "excludedAttributes")]
    #[param(rename = "excludedAttributes")]
    excluded_attributes: Option<String>,
}

/// Keep or drop attributes of a resource (RFC 7644 §3.9): names are case-insensitive, may carry
/// their schema's URN, and may name a sub-attribute (`name.givenName`); `id` and `schemas` stay.
fn project(mut resource: Value, attributes: Option<&str>, excluded: Option<&str>) -> Value {
    fn names(list: &str) -> Vec<Vec<String>> {
        list.split(',')
            .map(|a| {
                let a = a.trim();
                let a = match a.to_ascii_lowercase().strip_prefix("urn:") {
                    Some(_) => a.rsplit(':').next().unwrap_or(a).to_owned(),
                    None => a.to_owned(),
                };
                a.split('.').map(str::to_ascii_lowercase).collect()
            })
            .filter(|p: &Vec<String>| !p.is_empty() && !p[0].is_empty())
            .collect()
    }
    let Value::Object(obj) = &mut resource else {
        return resource;
    };
    let always = |k: &str| matches!(k.to_ascii_lowercase().as_str(), "id" | "schemas");
    if let Some(list) = attributes.filter(|l| !l.trim().is_empty()) {
        let wanted = names(list);
        obj.retain(|k, _| always(k) || wanted.iter().any(|p| p[0] == k.to_ascii_lowercase()));
        for (k, v) in obj.iter_mut() {
            let subs: Vec<&String> = wanted
                .iter()
                .filter(|p| p[0] == k.to_ascii_lowercase() && p.len() > 1)
                .map(|p| &p[1])
                .collect();
            let whole = wanted
                .iter()
                .any(|p| p[0] == k.to_ascii_lowercase() && p.len() == 1);
            if let (Value::Object(inner), false, false) = (v, subs.is_empty(), whole) {
                inner.retain(|sk, _| subs.iter().any(|s| **s == sk.to_ascii_lowercase()));
            }
        }
    } else if let Some(list) = excluded {
        for p in names(list) {
            match p.as_slice() {
                [top] => obj.retain(|k, _| always(k) || k.to_ascii_lowercase() != *top),
                [top, sub, ..] => {
                    for (k, v) in obj.iter_mut() {
                        if k.to_ascii_lowercase() == *top
                            && let Value::Object(inner) = v
                        {
                            inner.retain(|sk, _| sk.to_ascii_lowercase() != *sub);
                        }
                    }
                }
                [] => {}
            }
        }
    }
    resource
}

/// Parse a filter: one `attribute eq "value"` comparison.
fn parse_filter(raw: &str, name_attr: &str) -> Result<DirectoryFilter, ScimError> {
    let bad = || {
        ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidFilter"),
            format!("supported filters: {name_attr} eq \"…\", externalId eq \"…\", id eq \"…\""),
        )
    };
    let raw = raw.trim();
    let (attribute, rest) = raw.split_once(char::is_whitespace).ok_or_else(bad)?;
    let (op, value) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or_else(bad)?;
    if !op.eq_ignore_ascii_case("eq") {
        return Err(bad());
    }
    let value: String = serde_json::from_str(value.trim()).map_err(|_| bad())?;
    let attribute = attribute
        .rsplit(':')
        .next()
        .unwrap_or(attribute)
        .to_ascii_lowercase();
    match attribute.as_str() {
        a if a == name_attr.to_ascii_lowercase() => Ok(DirectoryFilter::Name(value)),
        "externalid" => Ok(DirectoryFilter::ExternalId(value)),
        "id" => Ok(value
            .parse()
            .map(DirectoryFilter::Id)
            // An id that is not ours matches nothing.
            .unwrap_or(DirectoryFilter::Id(Uuid::nil()))),
        _ => Err(bad()),
    }
}

fn paging(q: &ListQuery) -> Result<(usize, usize), ScimError> {
    let number = |name: &str, raw: &Option<String>, default: i64| -> Result<i64, ScimError> {
        match raw {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| ScimError::invalid(format!("{name} must be an integer"))),
        }
    };
    let start = number("startIndex", &q.start_index, 1)?.max(1) as usize;
    let count =
        number("count", &q.count, MAX_RESULTS as i64)?.clamp(0, MAX_RESULTS as i64) as usize;
    Ok((start, count))
}

/// A list answer (RFC 7644 §3.4.2): the query's filter on `name_attr` and paging, the page the
/// directory gives for them, each resource rendered and cut to the asked attributes.
fn list_answer<T>(
    query: &ListQuery,
    name_attr: &str,
    page_of: impl FnOnce(&DirectoryFilter, usize, usize) -> DirectoryPage<T>,
    json_of: impl Fn(&T) -> Value,
) -> Result<HttpResponse, ScimError> {
    let filter = match &query.filter {
        Some(f) => parse_filter(f, name_attr)?,
        None => DirectoryFilter::All,
    };
    let (start, count) = paging(query)?;
    let page = page_of(&filter, start, count);
    let (only, except) = (
        query.attributes.as_deref(),
        query.excluded_attributes.as_deref(),
    );
    let items = page
        .items
        .iter()
        .map(|r| project(json_of(r), only, except))
        .collect();
    Ok(scim_json(StatusCode::OK, &list(page.total, start, items)))
}

fn list(total: usize, start: usize, items: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

fn path_id(raw: &str) -> Result<Uuid, ScimError> {
    raw.parse()
        .map_err(|_| ScimError::new(StatusCode::NOT_FOUND, None, "no such resource"))
}

// ---------------------------------------------------------------------------------------------
// Users.

fn user_input(m: &Map<String, Value>, active_default: bool) -> Result<UserInput, ScimError> {
    let user_name =
        opt_text(m, "userName")?.ok_or_else(|| ScimError::invalid("userName is required"))?;
    let name = match attr(m, "name") {
        None => None,
        Some(Value::Object(n)) => Some(n.clone()),
        Some(_) => return Err(ScimError::invalid("name must be an object")),
    };
    let active = match attr(m, "active") {
        None => active_default,
        Some(v) => app::scim::lenient_bool(v)
            .ok_or_else(|| ScimError::invalid("active must be a boolean"))?,
    };
    Ok(UserInput {
        user_name,
        external_id: opt_text(m, "externalId")?,
        given_name: name
            .as_ref()
            .map(|n| opt_text(n, "givenName"))
            .transpose()?
            .flatten(),
        family_name: name
            .as_ref()
            .map(|n| opt_text(n, "familyName"))
            .transpose()?
            .flatten(),
        display_name: opt_text(m, "displayName")?,
        active,
        emails: emails_of(m),
    })
}

/// The values of `emails`, the primary first (malformed entries are ignored).
fn emails_of(m: &Map<String, Value>) -> Vec<String> {
    let Some(Value::Array(items)) = attr(m, "emails") else {
        return Vec::new();
    };
    let mut out: Vec<(bool, String)> = items
        .iter()
        .filter_map(|e| {
            let e = e.as_object()?;
            let value = attr(e, "value")?.as_str()?.to_owned();
            let primary = attr(e, "primary").and_then(app::scim::lenient_bool) == Some(true);
            Some((!primary, value))
        })
        .collect();
    out.sort_by_key(|(not_primary, _)| *not_primary);
    out.into_iter().map(|(_, v)| v).collect()
}

pub async fn list_users(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ScimError> {
    list_answer(
        &query,
        "userName",
        |filter, start, count| app::scim::list_users(&state, caller.tenant, filter, start, count),
        |u| user_json(&req, u),
    )
}

pub async fn get_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
    query: web::Query<GetQuery>,
) -> Result<HttpResponse, ScimError> {
    let user = app::scim::get_user(&state, caller.tenant, path_id(&id)?)?;
    let body = project(
        user_json(&req, &user),
        query.attributes.as_deref(),
        query.excluded_attributes.as_deref(),
    );
    Ok(scim_json(StatusCode::OK, &body))
}

pub async fn create_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    body: web::Bytes,
) -> Result<HttpResponse, ScimError> {
    let input = user_input(&body_of(&req, &body)?, true)?;
    let user = app::scim::create_user(&state, &ctx(&state, &req), caller.tenant, input).await?;
    let mut res = scim_json(StatusCode::CREATED, &user_json(&req, &user));
    if let Ok(v) = header::HeaderValue::from_str(&location(&req, "Users", user.0.value.scim_id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

pub async fn replace_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ScimError> {
    let id = path_id(&id)?;
    let input = user_input(&body_of(&req, &body)?, true)?;
    let user = app::scim::replace_user(
        &state,
        &ctx(&state, &req),
        caller.tenant,
        id,
        input,
        "PUT /Users",
    )
    .await?;
    Ok(scim_json(StatusCode::OK, &user_json(&req, &user)))
}

/// A PATCH body's operations, `op` in any case (Entra sends `Replace`).
fn patch_ops(m: &Map<String, Value>) -> Result<Vec<PatchOp>, ScimError> {
    if let Some(Value::Array(schemas)) = attr(m, "schemas")
        && !schemas.iter().any(|s| s.as_str() == Some(PATCH_SCHEMA))
    {
        return Err(ScimError::invalid(format!(
            "schemas must list {PATCH_SCHEMA}"
        )));
    }
    let Some(Value::Array(ops)) = attr(m, "Operations") else {
        return Err(ScimError::invalid("Operations must be a list"));
    };
    ops.iter()
        .map(|o| {
            let o = o
                .as_object()
                .ok_or_else(|| ScimError::invalid("an operation must be an object"))?;
            let op = opt_text(o, "op")?
                .and_then(|s| PatchKind::parse(&s))
                .ok_or_else(|| ScimError::invalid("op must be add, replace or remove"))?;
            Ok(PatchOp {
                op,
                path: opt_text(o, "path")?,
                value: attr(o, "value").cloned(),
            })
        })
        .collect()
}

pub async fn patch_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ScimError> {
    let id = path_id(&id)?;
    let ops = patch_ops(&body_of(&req, &body)?)?;
    let user = app::scim::patch_user(&state, &ctx(&state, &req), caller.tenant, id, ops).await?;
    Ok(scim_json(StatusCode::OK, &user_json(&req, &user)))
}

pub async fn delete_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
) -> Result<HttpResponse, ScimError> {
    let id = path_id(&id)?;
    app::scim::delete_user(&state, &ctx(&state, &req), caller.tenant, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---------------------------------------------------------------------------------------------
// Groups.

fn members_of(m: &Map<String, Value>) -> Result<BTreeSet<Uuid>, ScimError> {
    match attr(m, "members") {
        None => Ok(BTreeSet::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.get("value")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ScimError::invalid("a member's value is not a user id"))
            })
            .collect(),
        Some(_) => Err(ScimError::invalid("members must be a list")),
    }
}

fn group_input(m: &Map<String, Value>) -> Result<GroupInput, ScimError> {
    Ok(GroupInput {
        display_name: opt_text(m, "displayName")?
            .ok_or_else(|| ScimError::invalid("displayName is required"))?,
        external_id: opt_text(m, "externalId")?,
        members: members_of(m)?,
    })
}

pub async fn list_groups(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ScimError> {
    list_answer(
        &query,
        "displayName",
        |filter, start, count| app::scim::list_groups(&state, caller.tenant, filter, start, count),
        |g| group_json(&req, g),
    )
}

pub async fn get_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
    query: web::Query<GetQuery>,
) -> Result<HttpResponse, ScimError> {
    let g = app::scim::get_group(&state, caller.tenant, path_id(&id)?)?;
    let body = project(
        group_json(&req, &g),
        query.attributes.as_deref(),
        query.excluded_attributes.as_deref(),
    );
    Ok(scim_json(StatusCode::OK, &body))
}

pub async fn create_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    body: web::Bytes,
) -> Result<HttpResponse, ScimError> {
    let input = group_input(&body_of(&req, &body)?)?;
    let g = app::scim::create_group(&state, &ctx(&state, &req), caller.tenant, input).await?;
    let mut res = scim_json(StatusCode::CREATED, &group_json(&req, &g));
    if let Ok(v) = header::HeaderValue::from_str(&location(&req, "Groups", g.value.group_id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

pub async fn replace_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ScimError> {
    let id = path_id(&id)?;
    let input = group_input(&body_of(&req, &body)?)?;
    let g = app::scim::replace_group(
        &state,
        &ctx(&state, &req),
        caller.tenant,
        id,
        input,
        "PUT /Groups",
    )
    .await?;
    Ok(scim_json(StatusCode::OK, &group_json(&req, &g)))
}

pub async fn patch_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ScimError> {
    let id = path_id(&id)?;
    let ops = patch_ops(&body_of(&req, &body)?)?;
    let g = app::scim::patch_group(&state, &ctx(&state, &req), caller.tenant, id, ops).await?;
    Ok(scim_json(StatusCode::OK, &group_json(&req, &g)))
}

pub async fn delete_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: ScimCaller,
    id: web::Path<String>,
) -> Result<HttpResponse, ScimError> {
    let id = path_id(&id)?;
    app::scim::delete_group(&state, &ctx(&state, &req), caller.tenant, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /.search` at the root (several resource types at once): not implemented (501), as RFC
/// 7644 §3.4.3 allows; `GET` with a filter searches one type.
pub async fn search_root(_caller: ScimCaller) -> Result<HttpResponse, ScimError> {
    Err(ScimError::new(
        StatusCode::NOT_IMPLEMENTED,
        None,
        "searching several resource types at once is not supported; GET /Users or /Groups with a filter",
    ))
}

// ---------------------------------------------------------------------------------------------
// Discovery (RFC 7644 §4): public, like the specification allows.

pub async fn service_provider_config(req: HttpRequest) -> HttpResponse {
    let info = req.connection_info();
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "SCIM token",
                "description": "The tenant's SCIM token (POST /v1/scim/token), as a bearer token",
                "primary": true
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{}://{}/scim/v2/ServiceProviderConfig", info.scheme(), info.host()),
            },
        }),
    )
}

fn resource_types(req: &HttpRequest) -> Vec<Value> {
    let info = req.connection_info();
    let base = format!("{}://{}/scim/v2", info.scheme(), info.host());
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users",
            "description": "A member of the tenant while active",
            "schema": USER_SCHEMA, "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "description": "A group; its name feeds the group → role mapping",
            "schema": GROUP_SCHEMA, "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
        }),
    ]
}

pub async fn list_resource_types(req: HttpRequest) -> HttpResponse {
    let items = resource_types(&req);
    scim_json(StatusCode::OK, &list(items.len(), 1, items))
}

pub async fn get_resource_type(
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ScimError> {
    resource_types(&req)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .map(|r| scim_json(StatusCode::OK, &r))
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, "no such resource type"))
}

fn attribute(name: &str, kind: &str, required: bool, mutability: &str, uniqueness: &str) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": false, "description": name,
        "required": required, "caseExact": false, "mutability": mutability,
        "returned": "default", "uniqueness": uniqueness,
    })
}

fn schemas(req: &HttpRequest) -> Vec<Value> {
    let info = req.connection_info();
    let base = format!("{}://{}/scim/v2/Schemas", info.scheme(), info.host());
    let sub = |name: &str, kind: &str| attribute(name, kind, false, "readWrite", "none");
    let mut name = attribute("name", "complex", false, "readWrite", "none");
    name["subAttributes"] = json!([sub("givenName", "string"), sub("familyName", "string")]);
    let mut groups = attribute("groups", "complex", false, "readOnly", "none");
    groups["multiValued"] = json!(true);
    groups["subAttributes"] = json!([sub("value", "string"), sub("display", "string"), {
        "name": "$ref", "type": "reference", "referenceTypes": ["Group"], "multiValued": false,
        "description": "$ref", "required": false, "caseExact": false, "mutability": "readOnly",
        "returned": "default", "uniqueness": "none"
    }]);
    let mut members = attribute("members", "complex", false, "readWrite", "none");
    members["multiValued"] = json!(true);
    // The member's id, and its reference.
    members["subAttributes"] = json!([
        sub("value", "string"),
        {
            "name": "$ref", "type": "reference", "referenceTypes": ["User"], "multiValued": false,
            "description": "$ref", "required": false, "caseExact": false, "mutability": "immutable",
            "returned": "default", "uniqueness": "none"
        }
    ]);
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": USER_SCHEMA, "name": "User", "description": "User Account",
            "attributes": [
                attribute("userName", "string", true, "readWrite", "server"),
                attribute("displayName", "string", false, "readWrite", "none"),
                // Declared required: a user is active or not, never neither (a POST without it
                // is taken as active, as providers expect).
                attribute("active", "boolean", true, "readWrite", "none"),
                name, groups,
            ],
            "meta": {"resourceType": "Schema", "location": format!("{base}/{USER_SCHEMA}")},
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": GROUP_SCHEMA, "name": "Group", "description": "Group",
            "attributes": [
                attribute("displayName", "string", true, "readWrite", "server"),
                members,
            ],
            "meta": {"resourceType": "Schema", "location": format!("{base}/{GROUP_SCHEMA}")},
        }),
    ]
}

pub async fn list_schemas(req: HttpRequest) -> HttpResponse {
    let items = schemas(&req);
    scim_json(StatusCode::OK, &list(items.len(), 1, items))
}

pub async fn get_schema(
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ScimError> {
    schemas(&req)
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .map(|s| scim_json(StatusCode::OK, &s))
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, "no such schema"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_one_eq_comparison() {
        assert_eq!(
            parse_filter(r#"userName eq "Ada@X.io""#, "userName").unwrap(),
            DirectoryFilter::Name("Ada@X.io".into())
        );
        assert_eq!(
            parse_filter(r#"USERNAME EQ "a""#, "userName").unwrap(),
            DirectoryFilter::Name("a".into())
        );
        assert_eq!(
            parse_filter(
                r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "a""#,
                "userName"
            )
            .unwrap(),
            DirectoryFilter::Name("a".into())
        );
        assert_eq!(
            parse_filter(r#"externalId eq "x y""#, "userName").unwrap(),
            DirectoryFilter::ExternalId("x y".into())
        );
        for bad in [r#"userName co "a""#, "userName eq a", "title eq \"x\"", ""] {
            let e = parse_filter(bad, "userName").unwrap_err();
            assert_eq!(e.scim_type, Some("invalidFilter"), "{bad}");
        }
    }
}
