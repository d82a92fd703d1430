//! A retry of a mutating request under the same `Idempotency-Key` never applies twice — also
//! when the first attempt's record was lost (its process died after the append and before it
//! kept the answer, so the key was abandoned or taken over): the events' ids come from the key,
//! and the store refuses a second copy.

mod support;

use store::Store;
use support::{Backend, TestApp, spawn_app};

fn lose_the_record(app: &TestApp, tenant: &str, user: &str, key: &str) {
    let location = app.location.clone();
    let (tenant, scoped) = (
        domain::TenantId::from_uuid(tenant.parse().unwrap()),
        format!("POST user:{user} {key}"),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let store = Store::open(&location).await.unwrap();
            store.idempotency_abandon(tenant, &scoped).await.unwrap();
            store.close().await;
        });
}

fn a_lost_answer_retried_under_its_key_is_not_metered_again(backend: Backend) {
    let app = spawn_app(backend);
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let me = app.get("/v1/me", &owner).expect(200);
    let user = me["user_id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {owner}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "u-lost"),
    ];
    let body = br#"{"meter": "queries", "units": 3}"#;
    app.send("POST", "/v1/usage", &h, Some(body)).expect(200);
    let used = |app: &TestApp| {
        app.get("/v1/tenant/quota", &owner).expect(200)["meters"]["queries"]["used"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(used(&app), 3);
    // As if the process had died before keeping the answer: the record is gone.
    lose_the_record(&app, &tenant, &user, "u-lost");
    let retry = app.send("POST", "/v1/usage", &h, Some(body));
    retry.problem(409, "duplicate-event-id");
    assert_eq!(used(&app), 3, "the retry did not meter the units again");
    // Another key is another request.
    let h2 = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "u-next"),
    ];
    app.send("POST", "/v1/usage", &h2, Some(body)).expect(200);
    assert_eq!(used(&app), 6);
}

#[test]
fn a_lost_answer_retried_under_its_key_is_not_metered_again_embedded() {
    a_lost_answer_retried_under_its_key_is_not_metered_again(Backend::Embedded);
}

#[test]
fn a_lost_answer_retried_under_its_key_is_not_metered_again_postgres() {
    a_lost_answer_retried_under_its_key_is_not_metered_again(Backend::Postgres);
}
