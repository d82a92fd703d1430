//! `tenantry retention apply`, run for real against a store on both backends (ADR 032): members
//! past their window are erased (recorded, then their keys destroyed), a repeat erases nothing,
//! and a half-done erasure (recorded, keys still there: a crash between the two) is finished.

use serde_json::{Value, json};
use store::{AppendRequest, Expected, Location, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

mod support;

use support::{block_on, ok_json};

/// Append one event to `stream`, decided long ago (`occurred_at` in 2020).
async fn append(location: &Location, tenant: domain::TenantId, stream: &str, ty: &str, p: Value) {
    let store = Store::open(location).await.unwrap();
    let at = time::macros::datetime!(2020-03-01 12:00 UTC);
    store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: stream.to_owned(),
            expected: Expected::Any,
            events: vec![NewEvent::new(ty, RawJson::from_value(&p)).occurred_at(at)],
            metadata: Metadata::actor("test"),
        })
        .await
        .unwrap();
    store.close().await;
}

async fn member(location: &Location, tenant: domain::TenantId, user: Uuid, email: &str) {
    let stream = domain::tenant::stream_id(tenant);
    let p = json!({"user_id": user, "email": email, "name": "Ann", "role": "analyst"});
    append(location, tenant, &stream, "member.added", p).await;
}

/// Whether `user`'s keys are all destroyed, and what their first member event reads as.
async fn state_of(location: &Location, tenant: domain::TenantId, user: Uuid) -> (bool, String) {
    let store = Store::open(location).await.unwrap();
    let subject = domain::personal::user_subject(&user.to_string());
    let live = store.subject_key_ids(tenant, &subject).await.unwrap();
    let events = store
        .read_stream(tenant, &domain::tenant::stream_id(tenant), 1, usize::MAX)
        .await
        .unwrap();
    let email = events
        .iter()
        .map(|e| e.payload.to_value())
        .find(|v| v["user_id"] == user.to_string())
        .map(|v| v["email"].as_str().unwrap().to_owned())
        .unwrap();
    store.close().await;
    (live.is_empty(), email)
}

fn retention_apply_erases_past_the_window_and_finishes_half_done_erasures(
    location: Location,
    args: &[&str],
) {
    let tenant = domain::TenantId::from_uuid(Uuid::new_v4());
    let (ann, bob, cat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    block_on(async {
        let policy = json!({"rules": [{"name": "members", "event_types": ["member.added"],
                                       "fields": ["/email", "/name"], "keep_days": 30}]});
        append(
            &location,
            tenant,
            "retention",
            "retention.policy_set",
            policy,
        )
        .await; // 0
        member(&location, tenant, ann, "ann@x.test").await; // 1
        member(&location, tenant, bob, "bob@x.test").await; // 2
        assert_eq!(
            state_of(&location, tenant, ann).await,
            (false, "ann@x.test".into())
        );
    });
    let mut all = vec!["retention", "apply", "--tenant"];
    let t = tenant.to_string();
    all.push(&t);
    all.extend_from_slice(args);
    let report = ok_json(&all);
    assert_eq!(report[0]["events_erased"], 2, "{report}");
    assert_eq!(report[0]["keys_destroyed"], 2, "{report}");
    assert_eq!(report[0]["erasures"][0]["rule"], "members", "{report}");
    assert_eq!(
        report[0]["erasures"][0]["sequences"],
        json!([1, 2]),
        "{report}"
    );
    block_on(async {
        assert_eq!(
            state_of(&location, tenant, ann).await,
            (true, domain::personal::ERASED.into())
        );
    });
    let again = ok_json(&all);
    assert_eq!(again[0]["events_erased"], 0, "{again}");
    assert_eq!(again[0]["keys_destroyed"], 0, "{again}");

    // A crash between the record and the keys' destruction: the erasure of cat's event (4) is
    // in the log, its key is not destroyed yet. The next run finishes it without a new record.
    block_on(async {
        member(&location, tenant, cat, "cat@x.test").await; // 4 (3 is the first erasure)
        let er = json!({"rule": "members", "sequences": [4]});
        append(&location, tenant, "erasures", "erasure.applied", er).await;
        assert_eq!(
            state_of(&location, tenant, cat).await,
            (false, "cat@x.test".into())
        );
    });
    let finished = ok_json(&all);
    assert_eq!(finished[0]["events_erased"], 0, "{finished}");
    assert_eq!(finished[0]["keys_destroyed"], 1, "{finished}");
    block_on(async {
        assert_eq!(
            state_of(&location, tenant, cat).await,
            (true, domain::personal::ERASED.into())
        );
    });
}

#[test]
fn retention_apply_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    retention_apply_erases_past_the_window_and_finishes_half_done_erasures(
        Location::Embedded(dir.path().to_path_buf()),
        &["--data", &data],
    );
}

#[test]
fn retention_apply_on_postgresql() {
    let url = block_on(store::testing::fresh_postgres_url());
    retention_apply_erases_past_the_window_and_finishes_half_done_erasures(
        Location::Postgres(url.clone()),
        &["--store", &url],
    );
}
