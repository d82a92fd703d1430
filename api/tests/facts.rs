//! The facts later projections need, through real HTTP on both stores: the plan registry in the
//! log (a settings override at start is a new version), every unit naming its registry version
//! and the fact it paid for in the same append, and failures as facts.

mod support;

use domain::plans::{PlanOverride, Registry};
use domain::tenant::Plan;
use serde_json::{Value, json};
use support::{Backend, TestApp, spawn_app_with};

const CSV: &str = "id,amount\n1,10.5\n2,3\n";

fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| s.query_time_ms = 300)
}

fn upload(app: &TestApp, token: &str) -> String {
    app.send(
        "POST",
        "/v1/datasets?name=sales",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "text/csv"),
        ],
        Some(CSV.as_bytes()),
    )
    .expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn query(app: &TestApp, token: &str, dataset: &str, sql: &str) -> support::Response {
    app.post_json(
        &format!("/v1/datasets/{dataset}/query"),
        Some(token),
        &json!({"sql": sql}),
    )
}

/// The tenant's events of one type, oldest first.
fn events(app: &TestApp, token: &str, event_type: &str) -> Vec<Value> {
    // Read our writes: wait until this instance's projections reached the head.
    let head = app.head();
    app.get(
        &format!("/v1/audit/events?type={event_type}&min_position={head}"),
        token,
    )
    .expect(200)["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// The plan registry's stream (platform tenant), read from the store itself.
fn registry_events(app: &TestApp) -> Vec<Value> {
    let location = app.location.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let store = store::Store::open(&location).await.unwrap();
            let events = store
                .read_stream(domain::TenantId::PLATFORM, domain::plans::STREAM, 1, 100)
                .await
                .unwrap();
            store.close().await;
            events
                .into_iter()
                .map(|e| {
                    assert_eq!(e.event_type, "plan_registry.published");
                    e.payload.to_value()
                })
                .collect()
        })
}

/// A unit and the fact it pays for: one append on the usage stream (consecutive positions, one
/// stream, one correlation), the unit naming the fact and the registry version.
fn assert_one_append(fact: &Value, unit: &Value, fact_type: &str, id_field: &str) {
    assert_eq!(
        unit["global_position"].as_u64().unwrap(),
        fact["global_position"].as_u64().unwrap() + 1,
        "consecutive positions:\n{fact}\n{unit}"
    );
    assert_eq!(
        unit["stream_version"].as_u64().unwrap(),
        fact["stream_version"].as_u64().unwrap() + 1
    );
    assert_eq!(unit["stream_id"], fact["stream_id"]);
    assert!(
        unit["stream_id"].as_str().unwrap().starts_with("usage-"),
        "{unit}"
    );
    assert_eq!(unit["correlation_id"], fact["correlation_id"]);
    assert_eq!(unit["schema_version"], 2);
    assert_eq!(unit["payload"]["pays_for"]["type"], fact_type);
    assert_eq!(unit["payload"]["pays_for"]["id"], fact["payload"][id_field]);
    assert!(fact["payload"][id_field].is_string());
}

fn a_metered_query_and_its_fact_share_one_append_naming_the_registry_version(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let dataset = upload(&app, &owner);
    query(&app, &owner, &dataset, "SELECT sum(amount) FROM data").expect(200);
    let runs = events(&app, &owner, "query.run");
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!((runs.len(), units.len()), (1, 1));
    assert_eq!(runs[0]["schema_version"], 2);
    assert_one_append(&runs[0], &units[0], "query.run", "query_id");
    assert_eq!(units[0]["payload"]["registry_version"], 1);
    assert_eq!(units[0]["payload"]["plan"], "free");

    // An export: `export.completed` and its unit, the same way.
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": dataset, "format": "csv"}),
    )
    .expect(201);
    let done = events(&app, &owner, "export.completed");
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!((done.len(), units.len()), (1, 2));
    assert_one_append(&done[0], &units[1], "export.completed", "export_id");
    assert!(
        done[0]["stream_id"]
            .as_str()
            .unwrap()
            .starts_with("usage-exports-")
    );
    // The download still finds the export (the catalog reads it from the usage stream).
    let export_id = done[0]["payload"]["export_id"].as_str().unwrap();
    let r = app.get(&format!("/v1/exports/{export_id}/download"), &owner);
    assert_eq!(r.status, 200, "{r:?}");
}

fn a_failed_query_or_export_is_a_fact_with_its_error_class_and_costs_nothing(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let dataset = upload(&app, &owner);
    query(&app, &owner, &dataset, "SELEC amount FROM data").problem(422, "query-invalid");
    query(&app, &owner, &dataset, "DELETE FROM data").problem(422, "query-not-allowed");
    let failed = events(&app, &owner, "query.failed");
    let classes: Vec<&str> = failed
        .iter()
        .map(|e| e["payload"]["error_class"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["syntax", "denied"], "{failed:?}");
    for f in &failed {
        assert_eq!(f["stream_id"], "queries");
        assert_eq!(f["payload"]["dataset_id"], dataset.as_str());
        assert_eq!(f["payload"]["sql_sha256"].as_str().unwrap().len(), 64);
        assert!(
            !f.to_string().contains("SELEC"),
            "the SQL itself is not kept"
        );
    }
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": dataset, "format": "csv", "sql": "SELEC nothing"}),
    )
    .problem(422, "query-invalid");
    let failed = events(&app, &owner, "export.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["payload"]["error_class"], "syntax");
    let export_id = failed[0]["payload"]["export_id"].as_str().unwrap();
    assert_eq!(failed[0]["stream_id"], format!("export-{export_id}"));
    assert!(
        events(&app, &owner, "usage.recorded").is_empty(),
        "a failure is charged nothing"
    );
}

/// A query that never ends: stopped by its time budget.
const ENDLESS: &str =
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r";

fn quota_used(app: &TestApp, token: &str, meter: &str) -> u64 {
    let quota = app.get("/v1/tenant/quota", token).expect(200);
    quota["meters"][meter]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {meter} in {quota}"))
}

/// ADR 015: a timeout used the service's time and costs one unit, appended with its
/// `query.failed`; SQL refused before it ran costs nothing and its fact stays on `queries`.
fn a_timed_out_query_costs_one_unit_in_one_append_and_a_syntax_error_costs_nothing(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let dataset = upload(&app, &owner);
    let r = query(&app, &owner, &dataset, ENDLESS);
    assert!(
        r.header("RateLimit").is_some(),
        "a charged failure says what is left: {}",
        r.exchange
    );
    r.problem(422, "query-timeout");
    let failed = events(&app, &owner, "query.failed");
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!((failed.len(), units.len()), (1, 1), "{failed:?}\n{units:?}");
    assert_eq!(failed[0]["payload"]["error_class"], "timeout");
    assert_eq!(failed[0]["schema_version"], 1);
    assert_one_append(&failed[0], &units[0], "query.failed", "query_id");
    assert!(
        failed[0]["stream_id"]
            .as_str()
            .unwrap()
            .starts_with("usage-queries-")
    );
    assert_eq!(units[0]["payload"]["units"], 1);
    assert_eq!(quota_used(&app, &owner, "queries"), 1);

    let head = app.head();
    let r = query(&app, &owner, &dataset, "SELEC amount FROM data");
    assert!(r.header("RateLimit").is_none(), "{}", r.exchange);
    r.problem(422, "query-invalid");
    let failed = events(&app, &owner, "query.failed");
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[1]["payload"]["error_class"], "syntax");
    assert_eq!(failed[1]["stream_id"], "queries");
    assert_eq!(app.head(), head + 1, "the syntax error wrote its fact only");
    assert_eq!(events(&app, &owner, "usage.recorded").len(), 1);
    assert_eq!(quota_used(&app, &owner, "queries"), 1, "not charged");
}

/// An export cut by its row cap read up to the cap, the same work a truncated query answers and
/// is charged for: it costs one unit, appended with its `export.failed`.
fn an_export_cut_by_its_row_cap_costs_one_unit_in_one_append(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.export_max_rows = 1);
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let dataset = upload(&app, &owner);
    let r = app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": dataset, "format": "csv"}),
    );
    assert!(r.header("RateLimit").is_some(), "{}", r.exchange);
    r.problem(422, "validation-failed");
    let failed = events(&app, &owner, "export.failed");
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!((failed.len(), units.len()), (1, 1), "{failed:?}\n{units:?}");
    assert_eq!(failed[0]["payload"]["error_class"], "too_large");
    assert_one_append(&failed[0], &units[0], "export.failed", "export_id");
    assert_eq!(quota_used(&app, &owner, "exports"), 1);
    assert!(events(&app, &owner, "export.completed").is_empty());
}

#[test]
fn an_export_cut_by_its_row_cap_costs_one_unit_on_the_embedded_store() {
    an_export_cut_by_its_row_cap_costs_one_unit_in_one_append(Backend::Embedded);
}

#[test]
fn an_export_cut_by_its_row_cap_costs_one_unit_on_postgres() {
    an_export_cut_by_its_row_cap_costs_one_unit_in_one_append(Backend::Postgres);
}

/// A timeout admitted when it started (its probe passed) whose meter filled up while it ran: the
/// failure is still a fact, on the usage stream, without a unit; it is not a refused attempt.
fn a_timeout_settled_on_a_meter_that_filled_meanwhile_is_recorded_without_a_unit(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app_with(backend, |s| s.query_time_ms = 1_500));
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let dataset = upload(&app, &owner);
    // Free: 200 queries and 20 grace units. 219 used, one unit left.
    usage(&app, &owner, "queries", 200).expect(200);
    usage(&app, &owner, "queries", 18).expect(200);
    query(&app, &owner, &dataset, "SELECT 1 FROM data").expect(200);
    let running = {
        let (app, owner, dataset) = (app.clone(), owner.clone(), dataset.clone());
        std::thread::spawn(move || query(&app, &owner, &dataset, ENDLESS))
    };
    // The query is past its probe and running: take the last unit meanwhile.
    std::thread::sleep(std::time::Duration::from_millis(400));
    usage(&app, &owner, "queries", 1).expect(200);
    running.join().unwrap().problem(422, "query-timeout");
    let failed = events(&app, &owner, "query.failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["payload"]["error_class"], "timeout");
    assert!(
        failed[0]["stream_id"]
            .as_str()
            .unwrap()
            .starts_with("usage-queries-")
    );
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!(units.len(), 4, "{units:?}");
    assert!(
        units
            .iter()
            .all(|u| u["payload"]["pays_for"]["type"] != "query.failed"),
        "no unit pays for it"
    );
    assert_eq!(quota_used(&app, &owner, "queries"), 220);
    assert!(
        events(&app, &owner, "usage.blocked").is_empty(),
        "not a refused attempt"
    );
    assert!(events(&app, &owner, "quota.grace_ended").is_empty());
}

#[test]
fn a_timeout_on_a_meter_that_filled_meanwhile_is_a_fact_without_a_unit_on_the_embedded_store() {
    a_timeout_settled_on_a_meter_that_filled_meanwhile_is_recorded_without_a_unit(
        Backend::Embedded,
    );
}

#[test]
fn a_timeout_on_a_meter_that_filled_meanwhile_is_a_fact_without_a_unit_on_postgres() {
    a_timeout_settled_on_a_meter_that_filled_meanwhile_is_recorded_without_a_unit(
        Backend::Postgres,
    );
}

fn a_refused_upload_is_a_fact_without_its_content(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.send(
        "POST",
        "/v1/datasets?name=leads",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "text/csv"),
        ],
        Some(b"email,n\nada@example.com,1\nbob@example.org\n"),
    )
    .problem(422, "invalid-csv");
    let rejected = events(&app, &owner, "dataset.upload_rejected");
    assert_eq!(rejected.len(), 1);
    let p = &rejected[0]["payload"];
    assert_eq!(
        (p["name"].as_str(), p["reason"].as_str(), p["line"].as_u64()),
        (Some("leads"), Some("shape"), Some(3))
    );
    assert!(
        !rejected[0].to_string().contains("ada@"),
        "never the content"
    );
    assert!(events(&app, &owner, "dataset.uploaded").is_empty());
}

fn usage(app: &TestApp, token: &str, meter: &str, units: u64) -> support::Response {
    app.post_json(
        "/v1/usage",
        Some(token),
        &json!({"meter": meter, "units": units}),
    )
}

fn refusals_of_a_blocked_meter_are_written_once_a_minute_not_once_each(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    // 20 included exports and 2 grace units, then the meter is blocked.
    usage(&app, &owner, "exports", 20).expect(200);
    usage(&app, &owner, "exports", 2).expect(200);
    for _ in 0..25 {
        usage(&app, &owner, "exports", 1).problem(402, "plan-quota-exceeded");
    }
    let blocked = events(&app, &owner, "usage.blocked");
    // The first refusal of a minute is written at once (two if the minute turned meanwhile);
    // the others are counted and written together once their minute is over.
    assert!((1..=2).contains(&blocked.len()), "{blocked:?}");
    let first = &blocked[0]["payload"];
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["registry_version"], 1);
    assert!(
        first["minute"].as_str().unwrap().ends_with(":00Z"),
        "{first}"
    );
}

fn an_upgrade_gets_its_own_warning_and_reached_events(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    usage(&app, &owner, "exports", 20).expect(200);
    let limits = |app: &TestApp| -> Vec<(u64, String)> {
        events(app, &owner, "quota.warning")
            .iter()
            .chain(&events(app, &owner, "quota.reached"))
            .map(|e| {
                (
                    e["payload"]["limit"].as_u64().unwrap(),
                    e["event_type"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        limits(&app),
        [(20, "quota.warning".into()), (20, "quota.reached".into())]
    );
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    // Pro includes 1,000 exports: 80 % is 800.
    usage(&app, &owner, "exports", 779).expect(200);
    assert_eq!(limits(&app).len(), 2, "not yet at 80 % of the new limit");
    usage(&app, &owner, "exports", 1).expect(200);
    usage(&app, &owner, "exports", 200).expect(200);
    let all = limits(&app);
    assert_eq!(
        all,
        [
            (20, "quota.warning".into()),
            (1_000, "quota.warning".into()),
            (20, "quota.reached".into()),
            (1_000, "quota.reached".into()),
        ]
    );
    let warning = &events(&app, &owner, "quota.warning")[1]["payload"];
    assert_eq!(warning["plan"], "pro");
    assert_eq!(warning["used"], 800);
}

/// Events written before this change (schema version 1) keep reading: usage goes on from them.
fn version_1_usage_events_written_before_keep_counting(app: TestApp) {
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let tenant: domain::TenantId = tenant.parse().unwrap();
    let period = domain::quota::Period::of(time::OffsetDateTime::now_utc());
    let stream = domain::quota::stream_id(domain::quota::Meter::Queries, period);
    let p = json!({"year": period.year, "month": period.month});
    let v1 = [
        (
            "quota.warning",
            json!({"meter": "queries", "period": p, "used": 170, "limit": 200}),
        ),
        (
            "usage.recorded",
            json!({"meter": "queries", "period": p, "units": 170, "used": 170, "plan": "free", "limit": 200, "state": "warning"}),
        ),
        (
            "usage.blocked",
            json!({"meter": "queries", "period": p, "units": 50, "used": 170, "plan": "free", "limit": 200, "at": "2026-01-01T00:00:00Z"}),
        ),
    ];
    let location = app.location.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let store = store::Store::open(&location).await.unwrap();
            store
                .append(store::AppendRequest {
                    tenant_id: tenant,
                    stream_id: stream,
                    expected: store::Expected::NoStream,
                    events: v1
                        .iter()
                        .map(|(t, p)| store::NewEvent::new(*t, store::RawJson::from_value(p)))
                        .collect(),
                    metadata: store::Metadata::actor("test:v1-history"),
                })
                .await
                .unwrap();
            store.close().await;
        });
    let r = usage(&app, &owner, "queries", 1).expect(200);
    assert_eq!(r["quota"]["used"], 171, "{r}");
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!(units.len(), 2);
    assert_eq!(units[0]["schema_version"], 1, "history is not rewritten");
    assert_eq!(units[1]["schema_version"], 2);
    assert_eq!(units[1]["payload"]["registry_version"], 1);
    assert!(
        events(&app, &owner, "quota.warning").len() == 1,
        "the v1 warning still counts for this limit"
    );
}

fn override_free_queries(queries: u64) -> Registry {
    let o = PlanOverride {
        queries: Some(queries),
        ..PlanOverride::default()
    };
    Registry::with_overrides([(Plan::Free, &o)])
}

fn a_settings_override_at_start_makes_registry_version_2_and_units_name_it(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.plans = override_free_queries(300));
    let plans = app.send("GET", "/v1/plans", &[], None).expect(200);
    assert_eq!(plans["registry_version"], 2);
    assert!(plans["effective_from"].is_string());
    let free = &plans["plans"][0];
    assert_eq!(
        (free["plan"].as_str(), free["queries"].as_u64()),
        (Some("free"), Some(300))
    );
    assert_eq!(free["version"], 2);
    let pro = &plans["plans"][1];
    assert_eq!(pro["base_price"], "49.00");
    assert_eq!(
        pro["overage"],
        json!({"queries": "0.002", "exports": "0.10"})
    );
    assert_eq!(pro["currency"], "USD");

    let published = registry_events(&app);
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(
        (&published[0]["version"], &published[0]["source"]),
        (&json!(1), &json!("defaults"))
    );
    assert_eq!(published[0]["plans"][0]["queries"], 200);
    assert_eq!(
        (&published[1]["version"], &published[1]["source"]),
        (&json!(2), &json!("settings"))
    );
    assert_eq!(published[1]["plans"][0]["queries"], 300);
    assert_eq!(published[1]["plans"][1]["overage"]["queries"], "0.002");

    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.post_json(
        "/v1/usage",
        Some(&owner),
        &json!({"meter": "queries", "units": 2}),
    )
    .expect(200);
    let units = events(&app, &owner, "usage.recorded");
    assert_eq!(units[0]["payload"]["registry_version"], 2);
    assert_eq!(units[0]["payload"]["limit"], 300);
    assert!(units[0]["payload"]["pays_for"].is_null());
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    let changed = events(&app, &owner, "plan.changed");
    assert_eq!(changed[0]["schema_version"], 2);
    assert_eq!(changed[0]["payload"]["registry_version"], 2);
}

#[test]
fn a_settings_override_at_start_makes_registry_version_2_on_the_embedded_store() {
    a_settings_override_at_start_makes_registry_version_2_and_units_name_it(Backend::Embedded);
}

#[test]
fn a_settings_override_at_start_makes_registry_version_2_on_postgres() {
    a_settings_override_at_start_makes_registry_version_2_and_units_name_it(Backend::Postgres);
}

/// Two more instances on one database: the same settings publish nothing new; other settings
/// are the next version.
#[test]
fn restarting_with_the_same_settings_keeps_the_version_and_new_settings_make_the_next() {
    let url = support::fresh_postgres();
    let first = spawn_app_with(Backend::PostgresAt(url.clone()), |s| {
        s.plans = override_free_queries(300)
    });
    let again = spawn_app_with(Backend::PostgresAt(url.clone()), |s| {
        s.plans = override_free_queries(300)
    });
    let plans = again.send("GET", "/v1/plans", &[], None).expect(200);
    assert_eq!(plans["registry_version"], 2);
    assert_eq!(registry_events(&first).len(), 2);
    let defaults = spawn_app_with(Backend::PostgresAt(url), |_| {});
    let plans = defaults.send("GET", "/v1/plans", &[], None).expect(200);
    assert_eq!(
        plans["registry_version"], 3,
        "back to the defaults is a new version"
    );
    assert_eq!(plans["plans"][0]["queries"], 200);
    let published = registry_events(&first);
    assert_eq!(published.len(), 3);
    assert_eq!(published[2]["source"], "settings");
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::app(super::Backend::Embedded)); } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::app(super::Backend::Postgres)); } )*
        }
    };
}

on_both_stores!(
    a_metered_query_and_its_fact_share_one_append_naming_the_registry_version,
    a_failed_query_or_export_is_a_fact_with_its_error_class_and_costs_nothing,
    a_timed_out_query_costs_one_unit_in_one_append_and_a_syntax_error_costs_nothing,
    a_refused_upload_is_a_fact_without_its_content,
    refusals_of_a_blocked_meter_are_written_once_a_minute_not_once_each,
    an_upgrade_gets_its_own_warning_and_reached_events,
    version_1_usage_events_written_before_keep_counting,
);
