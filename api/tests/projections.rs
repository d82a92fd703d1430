//! The read side through the real server: a projection that meets an event it cannot decode stops
//! (fail closed), `/readyz` names it and authentication refuses; a platform operator rebuilds a
//! projection beside the live one without downtime.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson};
use support::{Backend, TestApp, spawn_app};

/// Append events straight through the store, as another process (or a bug) could.
fn append_raw(app: &TestApp, tenant: &str, stream: &str, event_type: &str, payload: Value) -> u64 {
    let tenant: domain::TenantId = tenant.parse().expect("a tenant id");
    let stream = stream.to_owned();
    let event_type = event_type.to_owned();
    app.with_store(|store| async move {
        let appended = store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: stream,
                expected: Expected::Any,
                events: vec![NewEvent::new(event_type, RawJson::from_value(&payload))],
                metadata: Metadata::actor("test"),
            })
            .await
            .unwrap();
        appended.last_position()
    })
}

/// Poll `/readyz` until `done` holds for its body (up to 15 s).
fn readyz_until(app: &TestApp, done: impl Fn(&Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.send("GET", "/readyz", &[], None);
        let body = r.json();
        if done(&body) || Instant::now() > deadline {
            return (r.status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn an_undecodable_revocation_stops_identity_readyz_names_it_and_auth_refuses(backend: Backend) {
    let app = spawn_app(backend);
    let (tenant, owner) = app.signup("Acme", "owner@acme.example");
    app.get("/v1/me", &owner).expect(200);
    // A token revocation the code cannot read: its token id is not a UUID.
    let bad = append_raw(
        &app,
        &tenant,
        &format!("tenant-{tenant}"),
        "token.revoked",
        json!({"token_id": 42}),
    );
    let (status, body) = readyz_until(&app, |b| b["status"] == "stopped");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["stopped"], json!(["identity"]), "{body}");
    let identity = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "identity")
        .unwrap();
    assert_eq!(identity["stopped"]["at_position"], bad, "{body}");
    assert_eq!(identity["stopped"]["event_type"], "token.revoked");
    assert_eq!(identity["position"], bad - 1, "stopped before the event");
    // The other read models are not held back by it.
    let audit = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "audit_tree")
        .unwrap();
    assert!(audit["stopped"].is_null());
    // The token might have been revoked by that event: authentication refuses, with a problem.
    let r = app.get("/v1/me", &owner);
    let p = r.problem(503, "identity-stopped");
    assert_eq!(p["projection"], "identity");
    assert_eq!(p["stopped_at"], bad);
    assert!(r.header("retry-after").is_some());
    // Public routes still answer.
    app.send("GET", "/healthz", &[], None).expect(200);
}

fn rebuild_state(body: &Value, name: &str) -> Value {
    body["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .map(|d| d["rebuild"].clone())
        .unwrap_or(Value::Null)
}

/// The persisted state of `name`, read back into a fresh projection through another handle.
fn persisted<P: projections::Projection + Default>(app: &TestApp, name: &str) -> (u64, P) {
    let name = name.to_owned();
    app.with_store(|store| async move {
        let saved = store
            .load_projection(&name)
            .await
            .unwrap()
            .expect("a checkpoint");
        let p = P::default();
        p.decode(&saved.state).expect("the checkpoint decodes");
        (saved.position, p)
    })
}

fn an_operator_rebuilds_projections_beside_the_live_ones_and_their_checkpoints_read_back(
    backend: Backend,
) {
    let app = spawn_app(backend);
    let (tenant, owner) = app.signup("Acme", "owner@acme.example");
    let tenant: domain::TenantId = tenant.parse().unwrap();
    app.add_member(&owner, "v@acme.example", "viewer");
    let upload = app.send(
        "POST",
        "/v1/datasets?name=people",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "text/csv"),
        ],
        Some(b"id,email\n1,a@example.com\n2,b@example.com\n"),
    );
    let dataset = upload.expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post_json(
        "/v1/presets",
        Some(&owner),
        &json!({"name": "walk", "text": {"detectors": ["email"], "method": "replace"}}),
    )
    .expect(201);
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": dataset, "format": "csv"}),
    )
    .expect(201);
    let ops = app.operator_token(domain::PlatformRole::Ops);
    let support = app.operator_token(domain::PlatformRole::Support);
    let post = |path: &str, token: &str| {
        app.send(
            "POST",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
    };
    send_checks(&post, &support, &ops);
    for name in ["catalog", "identity"] {
        let started = post(&format!("/v1/ops/projections/{name}/rebuild"), &ops).expect(202);
        assert_eq!(started["projection"], name);
        assert_eq!(started["rebuild"], format!("{name}.rebuild"));
    }
    // The live projections keep serving during the rebuild.
    app.get("/v1/me", &owner).expect(200);
    let (status, body) = readyz_until(&app, |b| {
        ["catalog", "identity"]
            .iter()
            .all(|n| rebuild_state(b, n)["state"] == "done")
    });
    assert_eq!(status, 200, "{body}");
    for name in ["catalog", "identity"] {
        assert_eq!(rebuild_state(&body, name)["state"], "done", "{body}");
    }
    // The switched-in state answers, and its checkpoint reads back to the same read model.
    let listed = app.get("/v1/datasets", &owner).expect(200);
    assert!(listed.to_string().contains(&dataset), "{listed}");
    let (_, catalog) = persisted::<projections::Catalog>(&app, "catalog");
    let catalog = std::sync::Arc::new(catalog);
    let datasets = app.with_store(|store| {
        let catalog = catalog.clone();
        async move {
            catalog
                .datasets_page(&store, tenant, None, 10)
                .await
                .unwrap()
                .0
        }
    });
    assert_eq!(datasets.len(), 1);
    assert_eq!(datasets[0].dataset.dataset_id.to_string(), dataset);
    assert_eq!(catalog.presets(tenant).len(), 1);
    let (_, identity) = persisted::<projections::Identity>(&app, "identity");
    let hash = api::tokens::sha256_hex(owner.as_bytes());
    assert!(matches!(
        identity.authenticate(&hash, time::OffsetDateTime::now_utc()),
        Ok(projections::Principal::Member { tenant: t, .. }) if t == tenant
    ));
    assert_eq!(identity.tenant(tenant).unwrap().members, 2);
}

/// Only platform ops may rebuild, and only a projection that exists.
fn send_checks(post: &dyn Fn(&str, &str) -> support::Response, support: &str, ops: &str) {
    post("/v1/ops/projections/audit/rebuild", support).problem(403, "forbidden");
    post("/v1/ops/projections/nope/rebuild", ops).problem(404, "not-found");
}

#[test]
fn embedded_an_undecodable_revocation_stops_identity_readyz_names_it_and_auth_refuses() {
    an_undecodable_revocation_stops_identity_readyz_names_it_and_auth_refuses(Backend::Embedded);
}

#[test]
fn postgres_an_undecodable_revocation_stops_identity_readyz_names_it_and_auth_refuses() {
    an_undecodable_revocation_stops_identity_readyz_names_it_and_auth_refuses(Backend::Postgres);
}

#[test]
fn embedded_an_operator_rebuilds_projections_beside_the_live_ones_and_their_checkpoints_read_back()
{
    an_operator_rebuilds_projections_beside_the_live_ones_and_their_checkpoints_read_back(
        Backend::Embedded,
    );
}

#[test]
fn postgres_an_operator_rebuilds_projections_beside_the_live_ones_and_their_checkpoints_read_back()
{
    an_operator_rebuilds_projections_beside_the_live_ones_and_their_checkpoints_read_back(
        Backend::Postgres,
    );
}
