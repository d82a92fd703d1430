//! The guided first-success flow through real HTTP (SPEC §9): progress from the member's own
//! actions, the client's screen reports, nudges from the rule table with dismissals and snoozes,
//! drop-off for platform staff, and the flag that gates it. The 30-minute resume rule is tested on
//! its definition in `domain::onboarding` (29 and 31 minutes) and here by its absence on a fresh
//! session.

mod support;

use serde_json::json;
use support::{Backend, TestApp, spawn_app_with};

fn app_with_flag(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        s.flags.insert(domain::Flag::FirstSuccessV11, true);
    })
}

fn app_without_flag(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        s.flags.insert(domain::Flag::FirstSuccessV11, false);
    })
}

fn upload(app: &TestApp, token: &str) -> serde_json::Value {
    let auth = format!("Bearer {token}");
    app.send(
        "POST",
        "/v1/datasets?name=people",
        &[("Authorization", &auth), ("Content-Type", "text/csv")],
        Some(b"name,city\nAda,London\nGrace,New York\n"),
    )
    .expect(201)
}

fn a_member_is_guided_from_joining_to_a_first_query(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let o = app.get("/v1/onboarding", &owner).expect(200);
    assert!(o["steps"][0]["reached_at"].is_string(), "{o}");
    assert_eq!(o["next_step"], "dataset_uploaded");
    assert_eq!(o["nudge"]["id"], "upload-first-dataset");
    assert!(o["resume"].is_null(), "a fresh session is no return: {o}");

    let r = app
        .post_json(
            "/v1/onboarding/position",
            Some(&owner),
            &json!({"screen": "datasets/upload", "step": "dataset_uploaded"}),
        )
        .expect(200);
    let position = r["global_position"].as_u64().unwrap();
    let o = app
        .get(&format!("/v1/onboarding?min_position={position}"), &owner)
        .expect(200);
    assert_eq!(o["position"]["screen"], "datasets/upload");

    let dataset = upload(&app, &owner);
    let id = dataset["dataset_id"].as_str().unwrap();
    let o = app.get("/v1/onboarding", &owner).expect(200);
    assert_eq!(o["next_step"], "first_query");
    assert!(o["steps"][1]["reached_at"].is_string());
    assert_eq!(o["nudge"]["id"], "ask-a-first-question");

    // Dismissed: it does not come back (its rule brings it back only after 2 days).
    app.post_json(
        "/v1/onboarding/nudges/ask-a-first-question/dismiss",
        Some(&owner),
        &json!(null),
    );
    let o = app.get("/v1/onboarding", &owner).expect(200);
    assert!(o["nudge"].is_null(), "{o}");

    let q = app
        .post_json(
            &format!("/v1/datasets/{id}/query"),
            Some(&owner),
            &json!({"sql": "SELECT count(*) FROM data"}),
        )
        .expect(200);
    let o = app
        .get(
            &format!("/v1/onboarding?min_position={}", q["global_position"]),
            &owner,
        )
        .expect(200);
    assert_eq!(o["next_step"], "first_export_passed");
    assert_eq!(o["nudge"]["id"], "export-with-redaction");
    app.post_json(
        "/v1/onboarding/nudges/export-with-redaction/snooze",
        Some(&owner),
        &json!({"minutes": 60}),
    )
    .expect(200);
    let o = app.get("/v1/onboarding", &owner).expect(200);
    assert!(o["nudge"].is_null(), "snoozed: {o}");

    // Another member has a flow of their own.
    let analyst = app.add_member(&owner, "ana@example.com", "analyst");
    let o = app.get("/v1/onboarding", &analyst).expect(200);
    assert_eq!(o["next_step"], "dataset_uploaded");

    // Bad reports, unknown nudges.
    app.post_json(
        "/v1/onboarding/position",
        Some(&owner),
        &json!({"screen": "Not A Screen", "step": "first_query"}),
    )
    .problem(422, "validation-failed");
    app.post_json(
        "/v1/onboarding/position",
        Some(&owner),
        &json!({"screen": "x", "step": "teleported"}),
    )
    .expect(422);
    app.post_json(
        "/v1/onboarding/nudges/no-such-nudge/dismiss",
        Some(&owner),
        &json!(null),
    )
    .expect(404);
    app.post_json(
        "/v1/onboarding/nudges/upload-first-dataset/snooze",
        Some(&owner),
        &json!({"minutes": 0}),
    )
    .expect(422);

    // Platform pm: drop-off across users (2 joined, 1 uploaded and queried).
    let pm = app.operator_token(domain::PlatformRole::Pm);
    let d = app.get("/v1/insights/dropoff", &pm).expect(200);
    let reached: Vec<u64> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_u64().unwrap())
        .collect();
    assert_eq!(reached, [2, 1, 1, 0], "{d}");
    assert_eq!(d["steps"][0]["dropped"], 1);
    let csv = app.send(
        "GET",
        "/v1/insights/dropoff.csv",
        &[("Authorization", &format!("Bearer {pm}"))],
        None,
    );
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with(b"step,reached,completed,dropped,"));
    // Members do not read other users' drop-off.
    app.get("/v1/insights/dropoff", &owner).expect(403);
}

fn the_flag_gates_the_flow(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.get("/v1/onboarding", &owner)
        .problem(403, "feature-disabled");
}

#[test]
fn embedded_a_member_is_guided_from_joining_to_a_first_query() {
    a_member_is_guided_from_joining_to_a_first_query(app_with_flag(Backend::Embedded));
}

#[test]
fn postgres_a_member_is_guided_from_joining_to_a_first_query() {
    a_member_is_guided_from_joining_to_a_first_query(app_with_flag(Backend::Postgres));
}

#[test]
fn without_the_flag_the_flow_is_not_there() {
    the_flag_gates_the_flow(app_without_flag(Backend::Embedded));
}
