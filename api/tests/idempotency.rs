//! A retry of a mutating request under the same `Idempotency-Key` never applies twice — also
//! when the first attempt's record was lost (its process died after the append and before it
//! kept the answer, so the key was abandoned or taken over): the events' ids come from the key,
//! and the store refuses a second copy.

mod support;

use support::{Backend, TestApp, spawn_app};

/// What a process that died after its append and before keeping the answer leaves behind: the
/// key's record still in flight, begun long enough ago to be taken over.
fn lose_the_answer(app: &TestApp, tenant: &str, user: &str, key: &str) {
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
            store::testing::rewind_idempotency(&location, tenant, Some(&scoped), 600, true).await;
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
    // As if the process had died before keeping the answer: the record is left in flight, old
    // enough to be taken over.
    lose_the_answer(&app, &tenant, &user, "u-lost");
    let retry = app.send("POST", "/v1/usage", &h, Some(body));
    retry.problem(409, "idempotency-key-already-applied");
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

fn keyed(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    key: &str,
    body: &[u8],
) -> support::Response {
    let auth = format!("Bearer {token}");
    app.send(
        method,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", content_type),
            ("Idempotency-Key", key),
        ],
        Some(body),
    )
}

/// Every mutating data-plane route honours the key: a retried upload, export or preset edit is
/// applied once and answered with the first answer.
fn retried_uploads_exports_and_preset_edits_are_applied_once(backend: Backend) {
    let app = spawn_app(backend);
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let csv = b"id,email\n1,ada@example.com\n2,grace@example.com\n";
    let up = |key| {
        keyed(
            &app,
            "POST",
            "/v1/datasets?name=people",
            &owner,
            "text/csv",
            key,
            csv,
        )
    };
    let first = up("up-1").expect(201);
    let again = up("up-1");
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.expect(201)["dataset_id"], first["dataset_id"]);
    assert_eq!(
        app.get("/v1/datasets", &owner).expect(200)["datasets"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "one dataset"
    );
    let dataset = first["dataset_id"].as_str().unwrap();

    let export = serde_json::json!({ "dataset_id": dataset, "format": "csv" }).to_string();
    let ex = |key| {
        keyed(
            &app,
            "POST",
            "/v1/exports",
            &owner,
            "application/json",
            key,
            export.as_bytes(),
        )
    };
    let first = ex("ex-1").expect(201);
    let again = ex("ex-1");
    assert_eq!(again.expect(201)["export_id"], first["export_id"]);
    assert_eq!(
        again.header("location"),
        Some(format!("/v1/exports/{}", first["export_id"].as_str().unwrap()).as_str())
    );
    let quota = app.get("/v1/tenant/quota", &owner).expect(200);
    assert_eq!(
        quota["meters"]["exports"]["used"], 1,
        "the export was charged once"
    );

    let preset =
        serde_json::json!({"name": "p", "text": {"detectors": ["email"], "method": "mask"}});
    let created = app
        .post_json("/v1/presets", Some(&owner), &preset)
        .expect(201);
    let id = created["preset_id"].as_str().unwrap();
    let edit =
        serde_json::json!({"text": {"detectors": ["phone"], "method": "replace"}}).to_string();
    let path = format!("/v1/presets/{id}");
    let put = |key| {
        keyed(
            &app,
            "PUT",
            &path,
            &owner,
            "application/json",
            key,
            edit.as_bytes(),
        )
    };
    assert_eq!(put("ed-1").expect(200)["version"], 2);
    assert_eq!(
        put("ed-1").expect(200)["version"],
        2,
        "the retry made no version 3"
    );
    let shown = app.get(&path, &owner).expect(200);
    assert_eq!(shown["versions"], serde_json::json!([1, 2]));
}

#[test]
fn retried_uploads_exports_and_preset_edits_are_applied_once_embedded() {
    retried_uploads_exports_and_preset_edits_are_applied_once(Backend::Embedded);
}

#[test]
fn retried_uploads_exports_and_preset_edits_are_applied_once_postgres() {
    retried_uploads_exports_and_preset_edits_are_applied_once(Backend::Postgres);
}

/// A sign-up whose answer was lost, retried under its key, does not make a second tenant.
fn a_lost_signup_retried_under_its_key_makes_no_second_tenant(backend: Backend) {
    let app = spawn_app(backend);
    let body = serde_json::json!({"tenant_name": "Once", "email": "once@example.com", "name": "O"})
        .to_string();
    let send = || {
        app.send(
            "POST",
            "/v1/signup",
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "su-lost"),
            ],
            Some(body.as_bytes()),
        )
    };
    let first = send().expect(201);
    let head = app.head();
    // The process died before keeping the answer: the record is left in flight, then taken over.
    let location = app.location.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            store::testing::rewind_idempotency(
                &location,
                domain::TenantId::PLATFORM,
                Some("POST addr:127.0.0.1 su-lost"),
                600,
                true,
            )
            .await;
        });
    let retry = send();
    assert_eq!(retry.status, 409, "{}", retry.exchange);
    assert_eq!(app.head(), head, "nothing written by the retry");
    app.get("/v1/me", first["token"].as_str().unwrap())
        .expect(200);
}

#[test]
fn a_lost_signup_retried_under_its_key_makes_no_second_tenant_embedded() {
    a_lost_signup_retried_under_its_key_makes_no_second_tenant(Backend::Embedded);
}

#[test]
fn a_lost_signup_retried_under_its_key_makes_no_second_tenant_postgres() {
    a_lost_signup_retried_under_its_key_makes_no_second_tenant(Backend::Postgres);
}

/// The same key with the same body but another content type is another request.
#[test]
fn the_content_type_is_part_of_the_request_a_key_stands_for() {
    let app = spawn_app(Backend::Embedded);
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let csv = b"id,city\n1,Paris\n";
    keyed(
        &app,
        "POST",
        "/v1/datasets?name=c",
        &owner,
        "text/plain",
        "ct-1",
        csv,
    )
    .problem(415, "unsupported-media-type");
    keyed(
        &app,
        "POST",
        "/v1/datasets?name=c",
        &owner,
        "text/csv",
        "ct-1",
        csv,
    )
    .problem(422, "idempotency-key-reused");
}

/// The record key and hash the server keeps a `POST /v1/usage` under, for `user`'s `key`.
fn usage_record(user: &str, key: &str, body: &[u8]) -> (String, String) {
    api::http::idempotency_record(
        "POST",
        &format!("user:{user}"),
        key,
        "/v1/usage",
        "",
        &[b"application/json"],
        body,
    )
}

/// Send until the answer is not 409 `idempotency-key-in-flight` (as a client honouring
/// `Retry-After` would), for at most 10 s: far below the 300 s in-flight timeout.
fn send_until_not_in_flight(
    app: &TestApp,
    headers: &[(&str, &str)],
    body: &[u8],
) -> support::Response {
    let start = std::time::Instant::now();
    loop {
        let r = app.send("POST", "/v1/usage", headers, Some(body));
        let in_flight = r.status == 409 && r.exchange.contains("idempotency-key-in-flight");
        if !in_flight || start.elapsed() > std::time::Duration::from_secs(10) {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A keyed request begun by another instance (a second server on the same store) that dies
/// before running it: while that instance lives a retry is told to wait (409 in flight); once
/// it is dead the retry takes the key over at once (not after the 300 s timeout), is applied
/// once and answered as the first would have been, and later retries replay that answer
/// (docs/adr/035).
fn a_key_begun_by_an_instance_that_died_is_taken_over_at_once(backend: Backend) {
    let app = spawn_app(backend);
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let user = app.get("/v1/me", &owner).expect(200)["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant = domain::TenantId::from_uuid(tenant.parse().unwrap());
    let auth = format!("Bearer {owner}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "u-dead"),
    ];
    let body = br#"{"meter": "queries", "units": 3}"#;
    let used = || {
        app.get("/v1/tenant/quota", &owner).expect(200)["meters"]["queries"]["used"]
            .as_u64()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (key, hash) = usage_record(&user, "u-dead", body);
    let other = rt.block_on(async {
        let other = store::Store::open(&app.location).await.unwrap();
        assert_eq!(
            other
                .idempotency_begin(tenant, &key, &hash, uuid::Uuid::new_v4())
                .await
                .unwrap(),
            store::idempotency::Begin::Started
        );
        other
    });
    app.send("POST", "/v1/usage", &h, Some(body))
        .problem(409, "idempotency-key-in-flight");
    assert_eq!(
        used(),
        0,
        "nothing applied while the other instance holds the key"
    );
    // The other instance dies (its store closed and dropped, as a process end would).
    rt.block_on(other.close());
    drop(other);
    let start = std::time::Instant::now();
    let first = send_until_not_in_flight(&app, &h, body);
    let answer = first.expect(200);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "taken over long before the in-flight timeout"
    );
    assert_eq!(first.header("idempotency-replayed"), None);
    assert_eq!(used(), 3, "applied once");
    // The answer of a first run: admitted, 3 units used, at a fresh position.
    assert_eq!(answer["decision"], "admitted", "{answer}");
    assert_eq!(answer["quota"]["used"], 3, "{answer}");
    assert!(answer["global_position"].as_u64().unwrap() > 0);
    let again = app.send("POST", "/v1/usage", &h, Some(body));
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.expect(200), answer, "the kept answer is replayed");
    assert_eq!(used(), 3, "and not applied again");
}

#[test]
fn a_key_begun_by_an_instance_that_died_is_taken_over_at_once_embedded() {
    a_key_begun_by_an_instance_that_died_is_taken_over_at_once(Backend::Embedded);
}

#[test]
fn a_key_begun_by_an_instance_that_died_is_taken_over_at_once_postgres() {
    a_key_begun_by_an_instance_that_died_is_taken_over_at_once(Backend::Postgres);
}

/// An instance that died after its command committed and before it kept the answer: the
/// retry on a live server takes the key over at once (no 300 s wait), writes nothing (the
/// event ids derive from the key) and says the request was applied.
fn a_key_applied_by_an_instance_that_died_is_not_applied_again(backend: Backend) {
    let app = spawn_app(backend);
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let user = app.get("/v1/me", &owner).expect(200)["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant = domain::TenantId::from_uuid(tenant.parse().unwrap());
    let auth = format!("Bearer {owner}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "u-applied"),
    ];
    let body = br#"{"meter": "queries", "units": 3}"#;
    let used = || {
        app.get("/v1/tenant/quota", &owner).expect(200)["meters"]["queries"]["used"]
            .as_u64()
            .unwrap()
    };
    app.send("POST", "/v1/usage", &h, Some(body)).expect(200);
    assert_eq!(used(), 3);
    let head = app.head();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (key, _) = usage_record(&user, "u-applied", body);
    // The record as the dead instance left it: in flight, its instance gone.
    rt.block_on(async {
        let dying = store::Store::open(&app.location).await.unwrap();
        store::testing::orphan_idempotency(&app.location, tenant, &key, dying.instance()).await;
        dying.close().await;
    });
    let retry = send_until_not_in_flight(&app, &h, body);
    retry.problem(409, "idempotency-key-already-applied");
    assert_eq!(used(), 3, "the retry did not meter the units again");
    assert_eq!(app.head(), head, "nothing written by the retry");
}

#[test]
fn a_key_applied_by_an_instance_that_died_is_not_applied_again_embedded() {
    a_key_applied_by_an_instance_that_died_is_not_applied_again(Backend::Embedded);
}

#[test]
fn a_key_applied_by_an_instance_that_died_is_not_applied_again_postgres() {
    a_key_applied_by_an_instance_that_died_is_not_applied_again(Backend::Postgres);
}

/// A retry that would decide *other* events than its lost first attempt is not run: 90 units on
/// the free plan (200 queries), then the same request again would cross the warning threshold
/// and decide `quota.warning` + `usage.recorded` — ids the first attempt never derived, which
/// the store would write, charging the units twice. The first attempt's events marked its key's
/// seed applied in their own transaction, so the retry that takes the key over is answered
/// "already applied" without running (docs/adr/035).
fn a_retry_that_would_decide_other_events_is_not_run(backend: Backend) {
    let (app, owner, h) = ninety_units_lost_then_retried(backend, "u-threshold", |app, t, key| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let dying = store::Store::open(&app.location).await.unwrap();
            store::testing::orphan_idempotency(&app.location, t, key, dying.instance()).await;
            dying.close().await;
        });
    });
    // The answer is kept: later retries replay it.
    let body = br#"{"meter": "queries", "units": 90}"#;
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let again = app.send("POST", "/v1/usage", &h, Some(body));
    again.problem(409, "idempotency-key-already-applied");
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(queries_used(&app, &owner), 90);
}

fn queries_used(app: &TestApp, owner: &str) -> u64 {
    app.get("/v1/tenant/quota", owner).expect(200)["meters"]["queries"]["used"]
        .as_u64()
        .unwrap()
}

/// 90 queries under `key` on the free plan (200), whose first answer `lose` then loses (as a
/// dying instance or an abandoning attempt would leave it, given the tenant and the record's
/// key), and the retry: a second run would cross the warning threshold and decide other events,
/// so it is answered "already applied", nothing charged or written again. Gives the app, the
/// owner's token and the request's headers for the checks that follow.
fn ninety_units_lost_then_retried(
    backend: Backend,
    key: &str,
    lose: impl FnOnce(&TestApp, domain::TenantId, &str),
) -> (TestApp, String, [(&'static str, String); 3]) {
    let app = spawn_app(backend);
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let user = app.get("/v1/me", &owner).expect(200)["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant = domain::TenantId::from_uuid(tenant.parse().unwrap());
    let headers = [
        ("Authorization", format!("Bearer {owner}")),
        ("Content-Type", "application/json".to_owned()),
        ("Idempotency-Key", key.to_owned()),
    ];
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = br#"{"meter": "queries", "units": 90}"#;
    app.send("POST", "/v1/usage", &h, Some(body)).expect(200);
    assert_eq!(queries_used(&app, &owner), 90);
    let head = app.head();
    let (record, _) = usage_record(&user, key, body);
    lose(&app, tenant, &record);
    let retry = send_until_not_in_flight(&app, &h, body);
    retry.problem(409, "idempotency-key-already-applied");
    assert_eq!(
        queries_used(&app, &owner),
        90,
        "the units were not charged twice"
    );
    assert_eq!(app.head(), head, "nothing written by the retry");
    (app, owner, headers)
}

#[test]
fn a_retry_that_would_decide_other_events_is_not_run_embedded() {
    a_retry_that_would_decide_other_events_is_not_run(Backend::Embedded);
}

#[test]
fn a_retry_that_would_decide_other_events_is_not_run_postgres() {
    a_retry_that_would_decide_other_events_is_not_run(Backend::Postgres);
}

/// A request whose events were written and which then answered something worth retrying (a 5xx
/// after the append: the key is abandoned, not kept) is retried under its key: the retry would
/// cross the quota warning and decide other events (new ids the derived ids cannot catch), so it
/// runs only as a replay, which the store refuses — "already applied", never charged twice
/// (docs/adr/035). Before the mark was asked on every begin, this retry charged 180 units.
fn a_retry_after_an_abandoned_answer_whose_events_were_written_is_not_applied_again(
    backend: Backend,
) {
    let (app, owner, _) = ninety_units_lost_then_retried(backend, "u-abandoned", |app, t, key| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            store::testing::abandon_idempotency(&app.location, t, key).await;
        });
    });
    // Another key is another request, charged.
    let auth = format!("Bearer {owner}");
    let h2 = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "u-other"),
    ];
    let body = br#"{"meter": "queries", "units": 90}"#;
    app.send("POST", "/v1/usage", &h2, Some(body)).expect(200);
    assert_eq!(queries_used(&app, &owner), 180);
}

#[test]
fn a_retry_after_an_abandoned_answer_whose_events_were_written_is_not_applied_again_embedded() {
    a_retry_after_an_abandoned_answer_whose_events_were_written_is_not_applied_again(
        Backend::Embedded,
    );
}

#[test]
fn a_retry_after_an_abandoned_answer_whose_events_were_written_is_not_applied_again_postgres() {
    a_retry_after_an_abandoned_answer_whose_events_were_written_is_not_applied_again(
        Backend::Postgres,
    );
}
