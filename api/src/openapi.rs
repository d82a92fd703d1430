//! The OpenAPI 3.1 document, generated from the route table (`rbac::ROUTES`: every route, its
//! method, path, access, flag and shape) and the schemas `utoipa` derives from the Rust types that
//! parse each request and serialize each answer. Nothing here names a route.
//!
//! A few answers embed values of other crates (a stored event, a meter's quota view, a plan, a
//! preset's text rule) whose types know nothing of OpenAPI. Their shapes are described here, once,
//! and a test serializes the real values and checks them against these descriptions.

use crate::rbac::{Access, Body, ROUTES, RouteSpec};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

/// A stored event as the audit feed shows it (`store::Envelope`).
#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct AuditEvent {
    global_position: u64,
    tenant_id: uuid::Uuid,
    stream_id: String,
    stream_version: u64,
    event_id: uuid::Uuid,
    event_type: String,
    schema_version: u16,
    /// When the fact happened (business time).
    #[schema(format = DateTime)]
    occurred_at: String,
    /// When the store committed it.
    #[schema(format = DateTime)]
    recorded_at: String,
    /// `user:<id>`, `operator:<id>` or `system`.
    actor: String,
    correlation_id: uuid::Uuid,
    causation_id: Option<uuid::Uuid>,
    trace_id: Option<String>,
    /// The event's own JSON.
    #[schema(value_type = Object)]
    payload: Value,
}

/// Where a meter stands (`domain::quota::QuotaView`).
#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct MeterQuota {
    #[schema(inline)]
    meter: crate::quota_routes::MeterName,
    #[schema(inline)]
    plan: crate::quota_routes::PlanName,
    used: u64,
    limit: u64,
    #[schema(inline)]
    state: QuotaState,
    grace_units_left: u64,
    #[schema(format = DateTime)]
    grace_ends_at: Option<String>,
    #[schema(format = DateTime)]
    resets_at: String,
}

#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum QuotaState {
    Ok,
    Warning,
    Grace,
    Blocked,
    Overage,
}

/// A dataset's column (`domain::dataset::DatasetColumn`).
#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct Column {
    name: String,
    #[schema(rename = "type", inline)]
    kind: ColumnType,
}

#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum ColumnType {
    Integer,
    Float,
    Boolean,
    Date,
    Timestamp,
    Text,
}

/// How free text is scrubbed (`domain::preset::TextRule`): which detectors, and how. A detector
/// is listed at most once.
///
/// `Deserialize` only so that the schema says, as the domain's type does, that unknown fields
/// are refused.
#[allow(dead_code)]
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextRule {
    /// Each at most once (`uniqueItems`, set in `document`).
    #[schema(inline)]
    detectors: Vec<DetectorName>,
    #[schema(inline)]
    method: ScrubMethod,
}

#[allow(dead_code)]
#[derive(serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DetectorName {
    UrlCredentials,
    Secret,
    Jwt,
    BearerToken,
    Email,
    Card,
    Iban,
    Ssn,
    Mac,
    Ipv6,
    Ipv4,
    Phone,
}

#[allow(dead_code)]
#[derive(serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ScrubMethod {
    Remove,
    Replace,
    Mask,
    Hash,
}

/// A plan of the registry (`domain::plans::PlanDefinition`).
#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct PlanDefinition {
    #[schema(inline)]
    plan: crate::quota_routes::PlanName,
    /// The plan registry version this definition belongs to.
    version: u32,
    /// ISO 4217, e.g. `USD`.
    currency: String,
    /// Base fee per month, an exact decimal such as `"49.00"`.
    #[schema(pattern = r"^[0-9]+\.[0-9]{2,12}$")]
    base_price: String,
    queries: u64,
    exports: u64,
    /// `null`: unlimited.
    seats: Option<u64>,
    /// Past the limit: grace then blocked (`true`), or billed as overage.
    blocking: bool,
    /// Price per unit past the limit, per meter.
    overage: OveragePrices,
}

/// Exact decimals such as `"0.002"` (never floats).
#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct OveragePrices {
    #[schema(pattern = r"^[0-9]+\.[0-9]{2,12}$")]
    queries: String,
    #[schema(pattern = r"^[0-9]+\.[0-9]{2,12}$")]
    exports: String,
}

/// An RFC 9457 problem document.
#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct Problem {
    /// `https://tenantry.dev/problems/<slug>`.
    r#type: String,
    title: String,
    status: u16,
    detail: Option<String>,
    /// One entry per invalid field (422).
    errors: Option<Vec<FieldError>>,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub(crate) struct FieldError {
    field: String,
    reason: String,
}

type Schemas = Vec<(String, RefOr<Schema>)>;

fn content(body: &Body, schemas: &mut Schemas) -> Option<Value> {
    Some(match body {
        Body::None => return None,
        Body::Json(schema) => {
            let name = schema(schemas);
            json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}})
        }
        Body::AnyJson => json!({"application/json": {"schema": {"type": "object"}}}),
        Body::Csv => json!({"text/csv": {"schema": {"type": "string"}}}),
        Body::Text(content_type) => json!({ *content_type: {"schema": {"type": "string"}}}),
        Body::Download => json!({
            "text/csv": {"schema": {"type": "string"}},
            "application/jsonl": {"schema": {"type": "string"}}
        }),
        Body::Scim => json!({"application/scim+json": {"schema": {"type": "object"}}}),
    })
}

/// The problem statuses a route answers: the ones every route of its kind answers, then its own.
fn problems(spec: &RouteSpec) -> Vec<(u16, &'static str)> {
    let mut out = vec![(400, "Malformed request: query string, header or body")];
    if spec.method == "GET" && spec.path.starts_with("/v1/") {
        out.push((
            404,
            "Not found, or `min_position` beyond the last position written",
        ));
    } else {
        out.push((404, "Not found: a resource named in the path or the body"));
    }
    if !matches!(spec.api.request, Body::None) {
        out.extend([
            (413, "Body too large"),
            (415, "Unsupported media type"),
            (422, "Invalid fields"),
        ]);
    }
    if let Access::Roles(_) | Access::Scim = spec.access {
        out.extend([
            (401, "Missing, unknown, expired or revoked token"),
            (403, "Role not allowed, or feature disabled"),
        ]);
    }
    if spec.method != "GET" {
        out.push((409, "Conflict with the current state"));
    }
    if spec.api.idempotent && !out.iter().any(|(c, _)| *c == 422) {
        out.push((422, "`Idempotency-Key` reused with a different request"));
    }
    if spec.method == "GET" && spec.path.starts_with("/v1/") {
        out.push((
            503,
            "`min_position` not applied by this instance yet (see Retry-After), or the store is unavailable",
        ));
    } else {
        out.push((503, "The store is unavailable"));
    }
    for (code, description) in spec.api.problems {
        match out.iter_mut().find(|(c, _)| c == code) {
            Some(entry) => entry.1 = description,
            None => out.push((*code, description)),
        }
    }
    out
}

/// A path parameter: a feature flag is one of the flags; an id is a string (a UUID, or the
/// built-in preset's `default`), and an unknown one is 404.
fn path_schema(name: &str) -> Value {
    match name {
        "flag" => {
            let flags: Vec<&str> = domain::Flag::ALL.iter().map(|f| f.as_str()).collect();
            json!({"type": "string", "enum": flags})
        }
        _ => json!({"type": "string"}),
    }
}

fn operation(spec: &RouteSpec, schemas: &mut Schemas) -> Value {
    let mut params: Vec<Value> = spec
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_schema(name)}))
        .collect();
    if let Some(query) = spec.api.query {
        for p in query() {
            params.push(serde_json::to_value(p).expect("parameters serialize"));
        }
    }
    if spec.api.idempotent {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Replays the first response for the same key and body (25 h).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"}}));
    }
    let mut success = json!({"description": "Success"});
    let success_content = content(&spec.api.response, schemas);
    if let Some(c) = &success_content {
        success["content"] = c.clone();
    }
    let mut responses = serde_json::Map::new();
    responses.insert(spec.api.status.to_string(), success);
    for (code, description) in problems(spec) {
        let mut content = json!({"application/problem+json":
            {"schema": {"$ref": "#/components/schemas/Problem"}}});
        // Everything under /scim/v2 answers SCIM error documents (ADR 031); a request actix
        // itself refuses (an oversized body) is still a problem document.
        if spec.path.starts_with("/scim/v2/") && code != 413 {
            content = json!({"application/scim+json":
                {"schema": {"$ref": "#/components/schemas/ScimErrorBody"}}});
        }
        if let (true, Some(Value::Object(body))) =
            (spec.api.body_also_on.contains(&code), &success_content)
        {
            for (media_type, schema) in body {
                content[media_type] = schema.clone();
            }
        }
        responses.insert(
            code.to_string(),
            json!({"description": description, "content": content}),
        );
    }
    let mut op = json!({
        "summary": spec.summary,
        "operationId": format!("{}{}", spec.method.to_lowercase(), spec.path.replace(['/', '{', '}', '.'], "_")),
        "parameters": params,
        "responses": responses,
    });
    if let Some(c) = content(&spec.api.request, schemas) {
        op["requestBody"] = json!({"required": true, "content": c});
    }
    match spec.access {
        Access::Roles(roles) => {
            op["security"] = json!([{"bearer": []}]);
            let names: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            op["x-roles"] = json!(names);
        }
        Access::Public => op["security"] = json!([]),
        Access::Scim => op["security"] = json!([{"bearer": []}]),
    }
    if let Some(flag) = spec.flag {
        op["x-feature-flag"] = json!(flag.as_str());
    }
    op
}

pub fn document() -> Value {
    let mut schemas: Schemas = Vec::new();
    let mut paths = serde_json::Map::new();
    for spec in ROUTES {
        let op = operation(spec, &mut schemas);
        let entry = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[spec.method.to_lowercase()] = op;
    }
    <Problem as ToSchema>::schemas(&mut schemas);
    schemas.push((
        "ScimErrorBody".into(),
        <crate::scim_routes::ScimErrorBody as utoipa::PartialSchema>::schema(),
    ));
    schemas.push((
        "Problem".into(),
        <Problem as utoipa::PartialSchema>::schema(),
    ));
    let mut components: serde_json::Map<String, Value> = schemas
        .into_iter()
        .map(|(name, schema)| {
            (
                name,
                serde_json::to_value(schema).expect("schemas serialize"),
            )
        })
        .collect();
    // utoipa's derive has no `uniqueItems`; the domain refuses a detector listed twice.
    if let Some(detectors) = components
        .get_mut("TextRule")
        .and_then(|t| t.pointer_mut("/properties/detectors"))
    {
        detectors["uniqueItems"] = json!(true);
    }
    // Every request type refuses unknown fields (`deny_unknown_fields`); utoipa says so for
    // structs but not for the variants of an internally tagged enum.
    if let Some(Value::Array(variants)) = components
        .get_mut("ColumnRuleDto")
        .and_then(|t| t.get_mut("oneOf"))
    {
        for v in variants {
            v["additionalProperties"] = json!(false);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tenantry API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event-sourced multi-tenant analytics backend. Errors are RFC 9457 problem documents."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The property names a component schema declares.
    fn properties(doc: &Value, name: &str) -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has properties"))
            .keys()
            .cloned()
            .collect()
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }

    fn enum_values(doc: &Value, name: &str, property: &str) -> BTreeSet<String> {
        let p = &doc["components"]["schemas"][name]["properties"][property];
        let values = p["enum"]
            .as_array()
            .or_else(|| p["items"]["enum"].as_array())
            .unwrap_or_else(|| panic!("{name}.{property} is an enum: {p}"));
        values
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    }

    #[test]
    fn every_route_of_the_table_is_in_the_document_with_its_success_status() {
        let doc = document();
        for spec in ROUTES {
            let op = &doc["paths"][spec.path][spec.method.to_lowercase()];
            assert!(
                op["responses"][spec.api.status.to_string()].is_object(),
                "{} {}",
                spec.method,
                spec.path
            );
        }
        let declared: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(declared, ROUTES.len());
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "#/components/schemas/{name} is referenced but not defined"
            );
        }
    }

    #[test]
    fn described_shapes_of_other_crates_match_what_they_serialize() {
        let doc = document();
        let now = time::OffsetDateTime::now_utc();
        // A stored event.
        let envelope = store::Envelope {
            global_position: 1,
            tenant_id: domain::TenantId::PLATFORM,
            stream_id: "s".into(),
            stream_version: 1,
            event_id: uuid::Uuid::nil(),
            event_type: "t".into(),
            schema_version: 1,
            occurred_at: now,
            recorded_at: now,
            actor: "system".into(),
            correlation_id: uuid::Uuid::nil(),
            causation_id: None,
            trace_id: None,
            payload: store::RawJson::from_value(&json!({})),
        };
        assert_eq!(
            keys(&serde_json::to_value(&envelope).unwrap()),
            properties(&doc, "AuditEvent")
        );
        // A meter's quota view.
        let limits = domain::plans::definition(domain::tenant::Plan::Free)
            .limits(domain::quota::Meter::Queries);
        let view = domain::quota::Usage::default().view(domain::quota::Meter::Queries, limits, now);
        assert_eq!(
            keys(&serde_json::to_value(&view).unwrap()),
            properties(&doc, "MeterQuota")
        );
        // A plan.
        for plan in domain::plans::defaults() {
            assert_eq!(
                keys(&serde_json::to_value(&plan).unwrap()),
                properties(&doc, "PlanDefinition")
            );
        }
        // A dataset's column.
        let column = domain::dataset::DatasetColumn {
            name: "a".into(),
            kind: "text".into(),
        };
        assert_eq!(
            keys(&serde_json::to_value(&column).unwrap()),
            properties(&doc, "Column")
        );
        // A text rule: every detector and method.
        let rule = domain::preset::Rules::default_preset().text;
        assert_eq!(
            keys(&serde_json::to_value(&rule).unwrap()),
            properties(&doc, "TextRule")
        );
        let detectors: BTreeSet<String> = domain::pii::Detector::ALL
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect();
        assert_eq!(detectors, enum_values(&doc, "TextRule", "detectors"));
        for method in ["remove", "replace", "mask", "hash"] {
            let parsed: Result<domain::pii::Method, _> = serde_json::from_value(json!(method));
            assert!(parsed.is_ok(), "{method}");
        }
        assert_eq!(enum_values(&doc, "TextRule", "method").len(), 4);
    }

    /// Every object a request body can hold refuses unknown fields, as its DTO does
    /// (`deny_unknown_fields`): otherwise the document would accept what the server refuses.
    #[test]
    fn every_request_object_refuses_unknown_fields() {
        fn walk(doc: &Value, schema: &Value, at: &str, seen: &mut BTreeSet<String>) {
            if let Some(r) = schema["$ref"].as_str() {
                let name = r.rsplit('/').next().unwrap().to_owned();
                if seen.insert(name.clone()) {
                    walk(doc, &doc["components"]["schemas"][&name], &name, seen);
                }
                return;
            }
            if schema.get("properties").is_some() {
                assert_eq!(
                    schema["additionalProperties"],
                    json!(false),
                    "{at}: {schema}"
                );
                for (name, p) in schema["properties"].as_object().unwrap() {
                    walk(doc, p, &format!("{at}.{name}"), seen);
                }
            }
            for key in ["oneOf", "anyOf", "allOf"] {
                for s in schema[key].as_array().into_iter().flatten() {
                    walk(doc, s, at, seen);
                }
            }
            if schema.get("items").is_some() {
                walk(doc, &schema["items"], &format!("{at}[]"), seen);
            }
        }
        let doc = document();
        let mut seen = BTreeSet::new();
        for spec in ROUTES {
            let body = &doc["paths"][spec.path][spec.method.to_lowercase()]["requestBody"];
            if let Some(schema) = body.pointer("/content/application~1json/schema") {
                walk(&doc, schema, spec.path, &mut seen);
            }
        }
        assert!(
            seen.contains("ColumnRuleDto") && seen.contains("TextRule"),
            "{seen:?}"
        );
    }

    /// Say a route once: registration (`server.rs`), the permission check (`auth.rs`) and this
    /// document read the table and name no route themselves; nothing else declares a route.
    /// (Links in answers, such as a `Location`, and the bench clients' requests are URLs, not
    /// declarations.)
    #[test]
    fn no_route_path_is_written_twice() {
        let mut seen = BTreeSet::new();
        for spec in ROUTES {
            assert!(
                seen.insert((spec.method, spec.path)),
                "{} {} is in the table twice",
                spec.method,
                spec.path
            );
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut offenders = Vec::new();
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("an entry").path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if !file.ends_with(".rs") || file == "rbac.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let declarations = [
                "web::resource(\"",
                concat!("web::", "scope("),
                concat!("web::", "get()"),
                concat!("web::", "post()"),
                concat!("#[", "get("),
                concat!("#[", "post("),
                concat!("utoipa::", "path"),
            ];
            for d in declarations {
                if text.contains(d) {
                    offenders.push(format!("{file}: declares a route ({d})"));
                }
            }
            if ["server.rs", "auth.rs", "openapi.rs"].contains(&file) {
                for spec in ROUTES {
                    if text.contains(&format!("\"{}\"", spec.path)) {
                        offenders.push(format!("{file}: names {}", spec.path));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "routes outside rbac::ROUTES:\n{}",
            offenders.join("\n")
        );
    }
}
