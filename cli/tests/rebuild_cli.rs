//! `tenantry rebuild [NAME]`, run for real against a store in a temp folder: it rebuilds one
//! projection (or all) from position 1 and saves it with its checkpoint; an unknown name or an
//! unreadable event fails without saving anything.

use serde_json::{Value, json};
use store::{AppendRequest, Expected, Location, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

mod support;

use support::{block_on, ok_json, tenantry};

async fn append(location: &Location, tenant: domain::TenantId, event_type: &str, payload: Value) {
    let store = Store::open(location).await.unwrap();
    store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: domain::tenant::stream_id(tenant),
            expected: Expected::Any,
            events: vec![NewEvent::new(event_type, RawJson::from_value(&payload))],
            metadata: Metadata::actor("test"),
        })
        .await
        .unwrap();
    store.close().await;
}

async fn saved_position(location: &Location, name: &str) -> Option<u64> {
    let store = Store::open(location).await.unwrap();
    let saved = store.load_projection(name).await.unwrap();
    store.close().await;
    saved.map(|s| s.position)
}

#[test]
fn rebuild_saves_the_named_projection_at_the_head_and_refuses_unknown_names_and_unreadable_events()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let location = Location::Embedded(dir.path().to_path_buf());
    let tenant = domain::TenantId::from_uuid(Uuid::new_v4());
    block_on(append(
        &location,
        tenant,
        "tenant.signed_up",
        json!({"name": "Acme", "plan": "free", "at": "2026-02-16T09:30:00Z"}),
    ));
    ok_json(&["operator", "token", "--role", "ops", "--data", data]);

    let one = ok_json(&["rebuild", "identity", "--data", data]);
    assert_eq!(one["projections"], json!(["identity"]));
    assert_eq!(one["position"], 2);
    assert_eq!(one["head_position"], 2);
    assert_eq!(block_on(saved_position(&location, "identity")), Some(2));
    assert_eq!(block_on(saved_position(&location, "audit_tree")), None);

    let all = ok_json(&["rebuild", "--data", data]);
    assert_eq!(
        all["projections"],
        json!([
            "identity",
            "catalog",
            "insights",
            "first_success",
            "audit_tree",
            "feedback",
            "directory"
        ])
    );
    assert_eq!(block_on(saved_position(&location, "audit_tree")), Some(2));

    let unknown = tenantry(&["rebuild", "nope", "--data", data]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("identity, catalog, insights"), "{stderr}");

    // An event the identity projection cannot read: the rebuild fails and saves nothing new.
    block_on(append(
        &location,
        tenant,
        "token.revoked",
        json!({"token_id": 42}),
    ));
    let bad = tenantry(&["rebuild", "identity", "--data", data]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("position 3"), "{stderr}");
    assert_eq!(block_on(saved_position(&location, "identity")), Some(2));
}
