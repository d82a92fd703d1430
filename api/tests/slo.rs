//! The in-process SLOs (`GET /v1/ops/slo`) and the alert drill's fault injection
//! (`PUT /v1/ops/drill`; issue 15, ADR 028). The whole drill against the real binary is
//! cli/tests/drill.rs.

mod support;

use serde_json::json;
use support::{Backend, spawn_app_with};

fn put_drill(app: &support::TestApp, ops: &str, body: serde_json::Value) -> support::Response {
    let auth = format!("Bearer {ops}");
    app.send(
        "PUT",
        "/v1/ops/drill",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

#[test]
fn a_drill_injects_exactly_its_ratio_spares_the_ops_routes_and_pages() {
    let app = spawn_app_with(Backend::Embedded, |_| {});
    let ops = app.operator_token(domain::PlatformRole::Ops);
    let quiet = app.get("/v1/ops/slo?scale=60", &ops).expect(200);
    assert_eq!(quiet["paging"], false, "{quiet:#}");
    assert_eq!(quiet["slos"].as_array().unwrap().len(), 3);
    assert_eq!(quiet["drill"], serde_json::Value::Null);

    // Every path is drilled, at a quarter: but never the operations routes or the health checks.
    let on = put_drill(
        &app,
        &ops,
        json!({"error_ratio": 0.25, "added_latency_ms": 0, "route_prefix": "/", "minutes": 5}),
    )
    .expect(200);
    assert_eq!(on["active"], true);
    assert!(on["global_position"].as_u64().unwrap() > 0);
    let mut failed = 0;
    for _ in 0..40 {
        let r = app.send("GET", "/v1/plans", &[], None);
        if r.status == 503 {
            r.problem(503, "drill-injected");
            failed += 1;
        } else {
            r.expect(200);
        }
    }
    assert_eq!(failed, 10, "exactly a quarter");
    for _ in 0..10 {
        app.send("GET", "/healthz", &[], None).expect(200);
    }
    let firing = app.get("/v1/ops/slo?scale=60", &ops).expect(200);
    assert_eq!(firing["paging"], true, "{firing:#}");
    let names: Vec<&str> = firing["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(names.contains(&"availability:page-fast"), "{firing:#}");
    assert_eq!(firing["drill"]["route_prefix"], "/");
    let availability = &firing["slos"][0];
    assert_eq!(availability["slo"], "availability");
    let five = &availability["windows"][0];
    assert_eq!(five["window"], "5m");
    assert_eq!(five["seconds"], 5);
    assert!(five["burn_rate"].as_f64().unwrap() > 14.4, "{five:#}");
    assert!(five["budget_remaining"].as_f64().unwrap() < 1.0);

    // Stopped: nothing injected any more.
    let off = put_drill(
        &app,
        &ops,
        json!({"error_ratio": 0, "added_latency_ms": 0, "route_prefix": "/", "minutes": 0}),
    )
    .expect(200);
    assert_eq!(off["active"], false);
    for _ in 0..20 {
        app.send("GET", "/v1/plans", &[], None).expect(200);
    }
    // A second stop writes nothing.
    let again = put_drill(
        &app,
        &ops,
        json!({"error_ratio": 0, "added_latency_ms": 0, "route_prefix": "/", "minutes": 0}),
    )
    .expect(200);
    assert_eq!(again["global_position"], 0);
}

#[test]
fn drill_and_slo_parameters_out_of_range_are_422() {
    let app = spawn_app_with(Backend::Embedded, |_| {});
    let ops = app.operator_token(domain::PlatformRole::Ops);
    let p = put_drill(
        &app,
        &ops,
        json!({"error_ratio": 1.5, "added_latency_ms": 20000, "route_prefix": "v1", "minutes": 999}),
    )
    .problem(422, "validation-failed");
    let text = p.to_string();
    for field in ["error_ratio", "added_latency_ms", "route_prefix", "minutes"] {
        assert!(text.contains(field), "{field}: {p:#}");
    }
    put_drill(&app, &ops, json!({"error_ratio": 0.5})).problem(422, "validation-failed");
    app.get("/v1/ops/slo?scale=0", &ops)
        .problem(422, "validation-failed");
    app.get("/v1/ops/slo?scale=3601", &ops)
        .problem(422, "validation-failed");
    app.get("/v1/ops/slo?scale=1", &ops).expect(200);
}
