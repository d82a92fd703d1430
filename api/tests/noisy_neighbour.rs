//! Fair shares: a tenant flooding the service with expensive queries fills its own share of
//! running work and is told to slow down (429 + Retry-After); another tenant's small queries go
//! through at once, without errors.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Backend, TestApp, spawn_app_with};

fn upload(app: &TestApp, token: &str, name: &str, csv: &str) -> String {
    let r = app.send(
        "POST",
        &format!("/v1/datasets?name={name}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "text/csv"),
        ],
        Some(csv.as_bytes()),
    );
    r.expect(201)["dataset_id"].as_str().unwrap().to_owned()
}

fn query(app: &TestApp, token: &str, dataset: &str, sql: &str) -> support::Response {
    app.post_json(
        &format!("/v1/datasets/{dataset}/query"),
        Some(token),
        &serde_json::json!({ "sql": sql }),
    )
}

#[test]
fn a_flooding_tenant_is_held_to_its_share_and_its_neighbour_is_not_slowed() {
    let app = Arc::new(spawn_app_with(Backend::Embedded, |s| {
        s.concurrency_per_tenant = 2;
        s.concurrency_global = 8;
        s.query_time_ms = 1_500;
    }));
    let (_, a) = app.signup("Noisy", "noisy@example.com");
    let (_, b) = app.signup("Quiet", "quiet@example.com");
    for token in [&a, &b] {
        app.post_json(
            "/v1/tenant/plan",
            Some(token),
            &serde_json::json!({"plan": "enterprise"}),
        )
        .expect(200);
    }
    let mut big = String::from("id,name\n");
    for i in 0..3_000 {
        big.push_str(&format!("{i},name {i}\n"));
    }
    let a_data = upload(&app, &a, "big", &big);
    let b_data = upload(&app, &b, "small", "id,city\n1,Paris\n2,Oslo\n3,Lima\n");

    // Tenant A: twelve clients, each running a query that burns its whole time budget.
    let flood: Vec<_> = (0..12)
        .map(|_| {
            let (app, a, a_data) = (app.clone(), a.clone(), a_data.clone());
            std::thread::spawn(move || {
                let r = query(
                    &app,
                    &a,
                    &a_data,
                    "SELECT count(*) FROM data x, data y, data z",
                );
                (r.status, r.header("retry-after").map(str::to_owned))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Tenant B, meanwhile: small queries, one after the other.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let r = query(&app, &b, &b_data, "SELECT city FROM data ORDER BY id");
        assert_eq!(r.status, 200, "{}", r.exchange);
        slowest = slowest.max(started.elapsed());
    }
    let answers: Vec<_> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let limited = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!(
        limited >= 8,
        "at most 2 of A's 12 queries run at once, the rest are told to wait: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == 429)
            .all(|(_, retry)| retry.is_some()),
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == 429)
            .all(|(_, retry)| retry.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert!(
        slowest < Duration::from_millis(1_000),
        "B's slowest small query took {slowest:?} while A's ran for 1.5 s"
    );
}
