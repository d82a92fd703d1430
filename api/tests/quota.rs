//! Plans and quotas through real HTTP: the Free tenant's grace and 402, one-call upgrade,
//! scheduled downgrades, exact admission under concurrency, idempotent metering.

mod support;

use serde_json::json;
use std::sync::Arc;
use support::{Backend, TestApp, spawn_app};

fn usage(app: &TestApp, token: &str, meter: &str, units: u64) -> support::Response {
    app.post_json(
        "/v1/usage",
        Some(token),
        &json!({"meter": meter, "units": units}),
    )
}

fn a_free_tenant_sees_grace_then_a_402_and_one_upgrade_puts_it_back(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let plans = app.send("GET", "/v1/plans", &[], None).expect(200);
    assert_eq!(plans["plans"][0]["plan"], "free");
    // The first 20 exports are included; the 16th crosses 80 %.
    for i in 1..=20 {
        let r = usage(&app, &owner, "exports", 1);
        let body = r.expect(200);
        assert_eq!(body["decision"], "admitted", "unit {i}");
        let state = if i >= 16 { "warning" } else { "ok" };
        assert_eq!(r.header("tenantry-quota-state"), Some(state), "unit {i}");
        assert!(
            r.header("ratelimit-policy")
                .unwrap()
                .starts_with("\"exports\";q=")
        );
        assert_eq!(
            r.header("ratelimit").unwrap().split(';').nth(1),
            Some(format!("r={}", 20 - i).as_str())
        );
    }
    // Two grace units: admitted, and told so.
    for left in [1, 0] {
        let r = usage(&app, &owner, "exports", 1);
        let body = r.expect(200);
        assert_eq!(r.header("tenantry-quota-state"), Some("grace"));
        assert_eq!(body["decision"], "admitted_in_grace");
        assert_eq!(body["notice"]["grace_units_left"], left);
        assert!(
            body["notice"]["message"]
                .as_str()
                .unwrap()
                .contains("upgrade")
        );
    }
    // Then a 402 that says exactly what happened and how to get out.
    let r = usage(&app, &owner, "exports", 1);
    let p = r.problem(402, "plan-quota-exceeded");
    assert_eq!(p["plan"], "free");
    assert_eq!(p["meter"], "exports");
    assert_eq!(p["limit"], 20);
    assert_eq!(p["used"], 22);
    assert!(
        p["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00.000000Z")
    );
    assert!(p["grace_ended_at"].is_string());
    let link = r.header("link").unwrap();
    assert!(
        link.ends_with("; rel=\"upgrade\"") && link.contains("/v1/tenant/plan"),
        "{link}"
    );
    assert_eq!(
        r.header("ratelimit").unwrap().split(';').nth(1),
        Some("r=0")
    );
    let quota = app.get("/v1/tenant/quota", &owner).expect(200);
    assert_eq!(quota["meters"]["exports"]["state"], "blocked");
    assert_eq!(quota["meters"]["queries"]["state"], "ok");
    // Exports through the data plane are blocked too, before they run.
    let csv = b"id\n1\n".to_vec();
    let d = app
        .send(
            "POST",
            "/v1/datasets?name=d",
            &[
                ("Authorization", &format!("Bearer {owner}")),
                ("Content-Type", "text/csv"),
            ],
            Some(&csv),
        )
        .expect(201);
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": d["dataset_id"], "format": "csv"}),
    )
    .problem(402, "plan-quota-exceeded");
    // One call to upgrade; usage so far is kept and work goes on.
    let up = app
        .post_json(
            "/v1/tenant/plan",
            Some(&owner),
            &json!({"plan": "pro", "reason": "blocked on exports"}),
        )
        .expect(200);
    assert_eq!(up["effective"], "now");
    let r = usage(&app, &owner, "exports", 1);
    assert_eq!(r.expect(200)["quota"]["used"], 23);
    assert_eq!(r.header("tenantry-quota-state"), Some("ok"));
    let x = app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": d["dataset_id"], "format": "csv"}),
    );
    x.expect(201);
    assert!(x.header("ratelimit").is_some());
    let changed = app
        .get("/v1/audit/events?type=plan.changed", &owner)
        .expect(200);
    assert_eq!(
        changed["events"][0]["payload"]["reason"],
        "blocked on exports"
    );
    let metrics = String::from_utf8(app.send("GET", "/metrics", &[], None).body).unwrap();
    assert!(
        metrics.contains("tenantry_quota_blocked_attempts_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tenantry_plan_upgrades_total 1"));
    assert!(
        metrics.contains("tenantry_plan_upgrades_after_block_total 1"),
        "{metrics}"
    );
}

fn a_downgrade_waits_for_the_next_period_and_bad_requests_are_refused(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let down = app
        .post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "free"}))
        .expect(200);
    assert_eq!(down["plan"], "enterprise");
    assert_eq!(down["scheduled"]["plan"], "free");
    let t = app.get("/v1/tenant", &owner).expect(200);
    assert_eq!(t["plan"], "enterprise");
    assert_eq!(t["pending_plan_change"]["plan"], "free");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "platinum"}),
    )
    .problem(422, "validation-failed");
    usage(&app, &owner, "bananas", 1).problem(422, "validation-failed");
    usage(&app, &owner, "queries", 0).problem(422, "validation-failed");
    usage(&app, &owner, "queries", 10_001).problem(422, "validation-failed");
    app.post_json(
        "/v1/usage",
        Some(&owner),
        &json!({"meter": "queries", "units": "5"}),
    )
    .problem(422, "validation-failed");
    let viewer = app.add_member(&owner, "v@example.com", "viewer");
    usage(&app, &viewer, "queries", 1).problem(403, "forbidden");
    app.post_json("/v1/tenant/plan", Some(&viewer), &json!({"plan": "pro"}))
        .problem(403, "forbidden");
    assert_eq!(
        app.get("/v1/tenant/quota", &viewer).expect(200)["plan"],
        "enterprise"
    );
}

fn a_retried_usage_request_is_metered_once(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let auth = format!("Bearer {owner}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "u-1"),
    ];
    let body = br#"{"meter": "queries", "units": 3}"#;
    let a = app.send("POST", "/v1/usage", &h, Some(body)).expect(200);
    let b = app.send("POST", "/v1/usage", &h, Some(body)).expect(200);
    assert_eq!(a, b);
    assert_eq!(
        app.get("/v1/tenant/quota", &owner).expect(200)["meters"]["queries"]["used"],
        3
    );
}

/// 64 concurrent clients against one Free tenant: exactly limit + grace units are admitted.
fn concurrent_clients_get_exactly_the_limit_plus_grace(apps: Vec<TestApp>) {
    let (_, owner) = apps[0].signup("Busy", "busy@example.com");
    let apps: Vec<Arc<TestApp>> = apps.into_iter().map(Arc::new).collect();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let app = apps[i % apps.len()].clone();
            let owner = owner.clone();
            std::thread::spawn(move || {
                let mut admitted = 0;
                for _ in 0..2 {
                    let r = usage(&app, &owner, "exports", 1);
                    match r.status {
                        200 => admitted += 1,
                        402 => {}
                        other => panic!("unexpected {other}:\n{}", r.exchange),
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 20 + 2, "limit 20 + ceil(10 %) grace");
    let q = apps[0].get("/v1/tenant/quota", &owner).expect(200);
    assert_eq!(q["meters"]["exports"]["used"], 22);
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::spawn_app(super::Backend::Embedded)); } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::spawn_app(super::Backend::Postgres)); } )*
        }
    };
}

on_both_stores!(
    a_free_tenant_sees_grace_then_a_402_and_one_upgrade_puts_it_back,
    a_downgrade_waits_for_the_next_period_and_bad_requests_are_refused,
    a_retried_usage_request_is_metered_once,
);

#[test]
fn concurrent_clients_get_exactly_the_limit_plus_grace_embedded() {
    concurrent_clients_get_exactly_the_limit_plus_grace(vec![spawn_app(Backend::Embedded)]);
}

#[test]
fn concurrent_clients_get_exactly_the_limit_plus_grace_postgres() {
    concurrent_clients_get_exactly_the_limit_plus_grace(vec![spawn_app(Backend::Postgres)]);
}

#[test]
fn concurrent_clients_on_two_instances_get_exactly_the_limit_plus_grace() {
    let url = support::fresh_postgres();
    concurrent_clients_get_exactly_the_limit_plus_grace(vec![
        spawn_app(Backend::PostgresAt(url.clone())),
        spawn_app(Backend::PostgresAt(url)),
    ]);
}
