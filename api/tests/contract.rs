//! The HTTP contract at the edge, through the real server: what the OpenAPI document promises is
//! what the handlers check — no stricter (a schema-valid request is not refused for its shape) and
//! no looser (a request the schema refuses is refused). schemathesis searches the same ground in
//! `scripts/schemathesis.sh`; these pin down what it found.

mod support;

use serde_json::{Value, json};
use support::{Backend, spawn_app};

/// The schema of a request body's property, resolved through `$ref`.
fn request_property(doc: &Value, path: &str, method: &str, property: &str) -> Value {
    let reference =
        doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has a JSON body"))
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
    doc["components"]["schemas"][&reference]["properties"][property].clone()
}

#[test]
fn an_integral_number_sent_as_a_float_is_an_integer() {
    let app = spawn_app(Backend::Embedded);
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let r = app
        .post_json(
            "/v1/usage",
            Some(&owner),
            &json!({"meter": "queries", "units": 2.0}),
        )
        .expect(200);
    assert_eq!(r["quota"]["used"], 2);
    // A fraction is not an integer.
    app.post_json(
        "/v1/usage",
        Some(&owner),
        &json!({"meter": "queries", "units": 1.5}),
    )
    .problem(422, "validation-failed");
}

#[test]
fn names_are_measured_as_sent_and_refuse_control_characters_anywhere() {
    let app = spawn_app(Backend::Embedded);
    let doc = app.send("GET", "/openapi.json", &[], None).expect(200);
    let schema = request_property(&doc, "/v1/signup", "post", "tenant_name");
    assert_eq!(schema["maxLength"], 100);
    // 101 characters as sent, though 1 once trimmed: the schema refuses it, so does the server.
    let padded = format!("a{}", " ".repeat(100));
    // A control character the trim would have removed.
    let hidden = "Acme\u{85}";
    for name in [padded.as_str(), hidden] {
        let p = app
            .post_json(
                "/v1/signup",
                None,
                &json!({"tenant_name": name, "email": "a@example.com", "name": "A"}),
            )
            .problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["field"], "tenant_name");
    }
}

#[test]
fn emails_are_the_ascii_addresses_the_schema_describes() {
    let app = spawn_app(Backend::Embedded);
    let doc = app.send("GET", "/openapi.json", &[], None).expect(200);
    let schema = request_property(&doc, "/v1/signup", "post", "email");
    assert!(schema["pattern"].is_string(), "{schema}");
    for email in [" ada@example.com", "ada@exämple.com", "äda@example.com"] {
        app.post_json(
            "/v1/signup",
            None,
            &json!({"tenant_name": "Acme", "email": email, "name": "Ada"}),
        )
        .problem(422, "validation-failed");
    }
    app.post_json(
        "/v1/signup",
        None,
        &json!({"tenant_name": "Acme", "email": "Ada.L+x@Example.com", "name": "Ada"}),
    )
    .expect(201);
}

#[test]
fn roles_plans_and_meters_are_enums_in_the_document_and_at_the_edge() {
    let app = spawn_app(Backend::Embedded);
    let doc = app.send("GET", "/openapi.json", &[], None).expect(200);
    let text = doc.to_string();
    for values in [
        r#"["owner","admin","analyst","viewer","billing","compliance"]"#,
        r#"["free","pro","enterprise"]"#,
        r#"["queries","exports"]"#,
    ] {
        assert!(text.contains(values), "{values} is an enum in the document");
    }
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let p = app
        .post_json(
            "/v1/members",
            Some(&owner),
            &json!({"email": "x@example.com", "name": "X", "role": "superuser"}),
        )
        .problem(422, "validation-failed");
    assert!(
        p["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("superuser")
    );
}

#[test]
fn idempotency_key_is_documented_only_where_it_is_honoured() {
    let app = spawn_app(Backend::Embedded);
    let doc = app.send("GET", "/openapi.json", &[], None).expect(200);
    let has_key = |path: &str| {
        doc["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key")
    };
    for path in [
        "/v1/signup",
        "/v1/members",
        "/v1/usage",
        "/v1/tenant/plan",
        "/v1/datasets",
        "/v1/exports",
        "/v1/presets",
    ] {
        assert!(has_key(path), "{path}");
    }
    // Routes that do not honour it do not list it.
    for (method, path) in [
        ("delete", "/v1/tokens/current"),
        ("post", "/v1/ops/projections/{name}/rebuild"),
    ] {
        let listed = doc["paths"][path][method]["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
        assert!(!listed, "{method} {path}");
    }
}
