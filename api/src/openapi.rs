//! The OpenAPI 3.1 document, built from the permission table (every route is in it, with the
//! same method and path) plus the request and response schemas.

use crate::rbac::{Access, ROUTES, RouteSpec};
use serde_json::{Value, json};

fn problem_ref() -> Value {
    json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}})
}

fn json_ref(name: &str) -> Value {
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}})
}

/// (request schema, success status, response schema) of each route.
fn shapes(spec: &RouteSpec) -> (Option<&'static str>, &'static str, Option<&'static str>) {
    match (spec.method, spec.path) {
        ("POST", "/v1/signup") => (Some("SignupRequest"), "201", Some("SignupResponse")),
        ("GET", "/v1/me") => (None, "200", Some("Me")),
        ("GET", "/v1/tenant") => (None, "200", Some("Tenant")),
        ("PATCH", "/v1/tenant") => (Some("RenameRequest"), "200", Some("Renamed")),
        ("POST", "/v1/members") => (Some("MemberRequest"), "201", Some("MemberResponse")),
        ("DELETE", "/v1/tokens/current") => (None, "200", Some("Revoked")),
        ("GET", "/v1/flags") => (None, "200", Some("Flags")),
        ("GET", "/v1/tenants/{tenant_id}/flags") => (None, "200", Some("TenantFlags")),
        ("PUT", "/v1/tenants/{tenant_id}/flags/{flag}") => {
            (Some("FlagRequest"), "200", Some("FlagSet"))
        }
        ("GET", "/v1/audit/events") => (None, "200", Some("AuditPage")),
        ("POST", "/v1/datasets") => (Some("Csv"), "201", Some("Dataset")),
        ("GET", "/v1/datasets") => (None, "200", Some("DatasetList")),
        ("GET", "/v1/datasets/{dataset_id}") => (None, "200", Some("Dataset")),
        ("DELETE", "/v1/datasets/{dataset_id}") => (None, "200", Some("DatasetDeleted")),
        ("POST", "/v1/datasets/{dataset_id}/query") => {
            (Some("QueryRequest"), "200", Some("QueryResult"))
        }
        ("POST", "/v1/exports") => (Some("ExportRequest"), "201", Some("Export")),
        ("GET", "/v1/exports/{export_id}") => (None, "200", Some("Export")),
        ("POST", "/v1/presets") => (Some("PresetRequest"), "201", Some("Preset")),
        ("GET", "/v1/presets") => (None, "200", Some("PresetList")),
        ("GET", "/v1/presets/{preset_id}") => (None, "200", Some("Preset")),
        ("PUT", "/v1/presets/{preset_id}") => (Some("PresetRequest"), "200", Some("Preset")),
        ("DELETE", "/v1/presets/{preset_id}") => (None, "200", Some("PresetDeleted")),
        ("GET", "/v1/plans") => (None, "200", Some("Plans")),
        ("POST", "/v1/usage") => (Some("UsageRequest"), "200", Some("UsageDecision")),
        ("GET", "/v1/tenant/quota") => (None, "200", Some("Quota")),
        ("POST", "/v1/tenant/plan") => (Some("PlanRequest"), "200", Some("PlanChange")),
        ("GET", "/healthz") => (None, "200", Some("Health")),
        ("GET", "/readyz") => (None, "200", Some("Ready")),
        _ => (None, "200", None),
    }
}

fn operation(spec: &RouteSpec) -> Value {
    let (request, ok, response) = shapes(spec);
    let mut params: Vec<Value> = spec
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if spec.method == "GET" && spec.path.starts_with("/v1/") {
        params.push(json!({"name": "min_position", "in": "query", "required": false,
            "description": "Wait (bounded) until the read models have applied this global position.",
            "schema": {"type": "integer", "minimum": 0}}));
    }
    if spec.method == "POST" && spec.path == "/v1/datasets" {
        params.push(json!({"name": "name", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 100}}));
    }
    if spec.method == "GET" && spec.path == "/v1/presets/{preset_id}" {
        params.push(json!({"name": "version", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1}}));
    }
    if spec.path == "/v1/audit/events" {
        for (name, schema, description) in [
            (
                "type",
                json!({"type": "string"}),
                "Only events of this type.",
            ),
            (
                "actor",
                json!({"type": "string"}),
                "Only events by this actor (user:<id>, operator:<id>).",
            ),
            (
                "from",
                json!({"type": "string", "format": "date-time"}),
                "Recorded at or after (RFC 3339).",
            ),
            (
                "to",
                json!({"type": "string", "format": "date-time"}),
                "Recorded before (RFC 3339).",
            ),
            (
                "cursor",
                json!({"type": "string"}),
                "The next_cursor of the previous page.",
            ),
            (
                "limit",
                json!({"type": "integer", "minimum": 1, "maximum": 500, "default": 100}),
                "Page size.",
            ),
        ] {
            params.push(json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description}));
        }
    }
    if spec.method == "POST" {
        params.push(
            json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Replays the first response for the same key and body (24 h).",
            "schema": {"type": "string", "maxLength": 255}}),
        );
    }
    let mut responses = serde_json::Map::new();
    let mut success = json!({"description": "Success"});
    if let Some(r) = response {
        success["content"] = json_ref(r);
    } else if spec.path == "/metrics" {
        success["content"] = json!({"text/plain": {"schema": {"type": "string"}}});
    } else if spec.path == "/openapi.json" {
        success["content"] = json!({"application/json": {"schema": {"type": "object"}}});
    }
    responses.insert(ok.into(), success);
    let mut problems = vec![
        ("400", "Malformed request"),
        ("404", "Not found"),
        ("405", "Method not allowed"),
    ];
    if request.is_some() {
        problems.extend([
            ("413", "Body too large"),
            ("415", "Not JSON"),
            ("422", "Invalid fields"),
        ]);
    }
    if matches!(
        (spec.method, spec.path),
        ("POST", "/v1/usage")
            | ("POST", "/v1/datasets/{dataset_id}/query")
            | ("POST", "/v1/exports")
    ) {
        problems.push(("402", "The plan's quota is used up and its grace is over"));
    }
    if matches!(spec.access, Access::Roles(_)) {
        problems.extend([
            ("401", "Missing, unknown, expired or revoked token"),
            ("403", "Role not allowed, or feature disabled"),
        ]);
    }
    if spec.method != "GET" {
        problems.push(("409", "Conflict"));
    }
    problems.push(("503", "Store unavailable or read models not caught up"));
    for (code, description) in problems {
        responses.insert(
            code.into(),
            json!({"description": description, "content": problem_ref()}),
        );
    }
    let mut op = json!({
        "summary": spec.summary,
        "operationId": format!("{}{}", spec.method.to_lowercase(), spec.path.replace(['/', '{', '}', '.'], "_")),
        "parameters": params,
        "responses": responses,
    });
    if let Some(r) = request {
        let content = if r == "Csv" {
            json!({"text/csv": {"schema": {"type": "string"}}})
        } else {
            json_ref(r)
        };
        op["requestBody"] = json!({"required": true, "content": content});
    }
    if spec.path.ends_with("/download") {
        op["responses"]["200"]["content"] = json!({
            "text/csv": {"schema": {"type": "string"}},
            "application/jsonl": {"schema": {"type": "string"}}
        });
    }
    if let Access::Roles(roles) = spec.access {
        op["security"] = json!([{"bearer": []}]);
        let names: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        op["x-roles"] = json!(names);
    } else {
        op["security"] = json!([]);
    }
    if let Some(flag) = spec.flag {
        op["x-feature-flag"] = json!(flag.as_str());
    }
    op
}

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for spec in ROUTES {
        let entry = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[spec.method.to_lowercase()] = operation(spec);
    }
    let string = json!({"type": "string"});
    let uuid = json!({"type": "string", "format": "uuid"});
    let position = json!({"type": "integer", "minimum": 0, "description": "The global position the command wrote"});
    let time = json!({"type": "string", "format": "date-time"});
    let role = json!({"type": "string", "enum": ["owner", "admin", "analyst", "viewer", "billing", "compliance"]});
    let flags = json!({"type": "object", "additionalProperties": {"type": "boolean"}});
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
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
                    "type": {"type": "string", "format": "uri"}, "title": string, "status": {"type": "integer"},
                    "detail": string, "errors": {"type": "array", "items": {"type": "object", "properties": {"field": string, "reason": string}}}
                }},
                "SignupRequest": {"type": "object", "additionalProperties": false, "required": ["tenant_name", "email", "name"], "properties": {
                    "tenant_name": {"type": "string", "minLength": 1, "maxLength": 100},
                    "email": {"type": "string", "format": "email", "maxLength": 254},
                    "name": {"type": "string", "minLength": 1, "maxLength": 200}
                }},
                "SignupResponse": {"type": "object", "required": ["tenant_id", "user_id", "token", "global_position"], "properties": {
                    "tenant_id": uuid, "user_id": uuid, "role": role, "token": string, "token_expires_at": time, "global_position": position
                }},
                "Me": {"type": "object", "required": ["kind", "role"], "properties": {
                    "kind": {"type": "string", "enum": ["member", "operator"]}, "tenant_id": uuid, "user_id": uuid,
                    "operator_id": uuid, "email": string, "name": string, "role": string
                }},
                "Tenant": {"type": "object", "properties": {
                    "tenant_id": uuid, "name": string, "plan": {"type": "string", "enum": ["free", "pro", "enterprise"]},
                    "signed_up_at": time, "members": {"type": "integer"}
                }},
                "RenameRequest": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 100}
                }},
                "Renamed": {"type": "object", "properties": {"tenant_id": uuid, "name": string, "global_position": position}},
                "MemberRequest": {"type": "object", "additionalProperties": false, "required": ["email", "name", "role"], "properties": {
                    "email": {"type": "string", "format": "email"}, "name": string, "role": role
                }},
                "MemberResponse": {"type": "object", "properties": {
                    "tenant_id": uuid, "user_id": uuid, "email": string, "role": role, "token": string,
                    "token_expires_at": time, "global_position": position
                }},
                "Revoked": {"type": "object", "properties": {"revoked_token_id": uuid, "global_position": position}},
                "Flags": {"type": "object", "properties": {"flags": flags}},
                "TenantFlags": {"type": "object", "properties": {"tenant_id": uuid, "flags": flags, "overrides": flags}},
                "FlagRequest": {"type": "object", "additionalProperties": false, "required": ["enabled"], "properties": {"enabled": {"type": "boolean"}}},
                "FlagSet": {"type": "object", "properties": {"tenant_id": uuid, "flag": string, "enabled": {"type": "boolean"}, "global_position": position}},
                "Envelope": {"type": "object", "properties": {
                    "global_position": {"type": "integer"}, "tenant_id": uuid, "stream_id": string,
                    "stream_version": {"type": "integer"}, "event_id": uuid, "event_type": string,
                    "schema_version": {"type": "integer"}, "recorded_at": time, "actor": string,
                    "correlation_id": uuid, "causation_id": {"type": ["string", "null"]},
                    "trace_id": {"type": ["string", "null"]}, "payload": {}
                }},
                "AuditPage": {"type": "object", "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Envelope"}},
                    "next_cursor": {"type": ["string", "null"]}
                }},
                "Health": {"type": "object", "properties": {"status": string}},
                "ColumnRule": {"type": "object", "required": ["column", "action"], "properties": {
                    "column": {"type": "string", "description": "A column name or a glob (* and ?), case-insensitive"},
                    "action": {"type": "string", "enum": ["keep", "drop", "mask", "hash", "truncate", "generalize"]},
                    "length": {"type": "integer", "minimum": 1, "description": "truncate"},
                    "bucket": {"type": "integer", "minimum": 1, "description": "generalize numbers"}
                }},
                "TextRule": {"type": "object", "required": ["detectors", "method"], "properties": {
                    "detectors": {"type": "array", "items": {"type": "string", "enum": ["url_credentials", "secret", "jwt", "bearer_token", "email", "card", "iban", "ssn", "mac", "ipv6", "ipv4", "phone"]}},
                    "method": {"type": "string", "enum": ["remove", "replace", "mask", "hash"]}
                }},
                "PresetRequest": {"type": "object", "additionalProperties": false, "required": ["text"], "properties": {
                    "name": string, "columns": {"type": "array", "items": {"$ref": "#/components/schemas/ColumnRule"}},
                    "text": {"$ref": "#/components/schemas/TextRule"}
                }},
                "Preset": {"type": "object", "properties": {
                    "preset_id": string, "name": string, "version": {"type": "integer"},
                    "versions": {"type": "array", "items": {"type": "integer"}}, "deleted": {"type": "boolean"},
                    "columns": {"type": "array", "items": {"$ref": "#/components/schemas/ColumnRule"}},
                    "text": {"$ref": "#/components/schemas/TextRule"}, "global_position": position
                }},
                "PresetList": {"type": "object", "properties": {"presets": {"type": "array", "items": {"$ref": "#/components/schemas/Preset"}}}},
                "PresetDeleted": {"type": "object", "properties": {"preset_id": string, "deleted": {"type": "boolean"}, "global_position": position}},
                "Plans": {"type": "object", "properties": {"plans": {"type": "array", "items": {"type": "object"}}}},
                "UsageRequest": {"type": "object", "additionalProperties": false, "required": ["meter", "units"], "properties": {
                    "meter": {"type": "string", "enum": ["queries", "exports"]}, "units": {"type": "integer", "minimum": 1, "maximum": 10000}
                }},
                "MeterQuota": {"type": "object", "properties": {
                    "meter": string, "plan": string, "used": {"type": "integer"}, "limit": {"type": "integer"},
                    "state": {"type": "string", "enum": ["ok", "warning", "grace", "blocked", "overage"]},
                    "grace_units_left": {"type": "integer"}, "grace_ends_at": {"type": ["string", "null"]}, "resets_at": time
                }},
                "UsageDecision": {"type": "object", "properties": {
                    "decision": {"type": "string", "enum": ["admitted", "admitted_in_grace"]},
                    "quota": {"$ref": "#/components/schemas/MeterQuota"}, "notice": {"type": "object"}, "global_position": position
                }},
                "Quota": {"type": "object", "properties": {"plan": string, "meters": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/MeterQuota"}}}},
                "PlanRequest": {"type": "object", "additionalProperties": false, "required": ["plan"], "properties": {
                    "plan": {"type": "string", "enum": ["free", "pro", "enterprise"]}, "reason": {"type": "string", "maxLength": 500}
                }},
                "PlanChange": {"type": "object", "properties": {"plan": string, "effective": string, "scheduled": {"type": "object"}, "global_position": position}},
                "Column": {"type": "object", "properties": {"name": string, "type": {"type": "string", "enum": ["integer", "float", "boolean", "date", "timestamp", "text"]}}},
                "Dataset": {"type": "object", "properties": {
                    "dataset_id": uuid, "name": string, "columns": {"type": "array", "items": {"$ref": "#/components/schemas/Column"}},
                    "rows": {"type": "integer"}, "bytes": {"type": "integer"}, "sha256": string,
                    "uploaded_at": time, "uploaded_by": string, "global_position": position
                }},
                "DatasetList": {"type": "object", "properties": {"datasets": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}}}},
                "DatasetDeleted": {"type": "object", "properties": {"dataset_id": uuid, "deleted": {"type": "boolean"}, "global_position": position}},
                "QueryRequest": {"type": "object", "additionalProperties": false, "required": ["sql"], "properties": {"sql": {"type": "string", "maxLength": 100000}}},
                "QueryResult": {"type": "object", "properties": {
                    "columns": {"type": "array", "items": string}, "rows": {"type": "array", "items": {"type": "array"}},
                    "row_count": {"type": "integer"}, "truncated": {"type": "boolean"}, "elapsed_ms": {"type": "integer"}, "global_position": position
                }},
                "ExportRequest": {"type": "object", "additionalProperties": false, "required": ["dataset_id", "format"], "properties": {
                    "dataset_id": uuid, "sql": string, "format": {"type": "string", "enum": ["csv", "jsonl"]},
                    "preset": {"type": "object", "additionalProperties": false, "required": ["id", "version"], "properties": {"id": string, "version": {"type": "integer"}}}
                }},
                "Export": {"type": "object", "properties": {
                    "export_id": uuid, "dataset_id": uuid, "format": string,
                    "preset": {"type": "object", "properties": {"id": string, "version": {"type": "integer"}}},
                    "rows": {"type": "integer"}, "bytes": {"type": "integer"}, "sha256": string,
                    "badge": {"type": "string", "enum": ["PASS", "FAIL"]},
                    "findings": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "download_url": string, "global_position": position
                }},
                "Ready": {"type": "object", "properties": {"status": string, "store": string, "head_position": {"type": "integer"}, "projections": {"type": "object"}}}
            }
        }
    })
}
