//! Exports and uploads that tell the truth (issue 13, item 3), through the real server: long
//! digit strings stay exact (text, never a rounded float), spreadsheet formula cells are
//! neutralised in CSV and the answer says how many, and JSON Lines never repeat a key.

mod support;

use serde_json::json;
use support::{Backend, TestApp, spawn_app};

const CSV: &[u8] = b"account,amount,note\n\
12345678901234567890,12.5,=HYPERLINK(\"http://evil.example\")\n\
98765432109876543210,7,@SUM(A1:A9)\n";

fn upload(app: &TestApp, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let r = app
        .send(
            "POST",
            "/v1/datasets?name=accounts",
            &[("Authorization", &auth), ("Content-Type", "text/csv")],
            Some(CSV),
        )
        .expect(201);
    let kinds: Vec<(&str, &str)> = r["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("account", "text"), ("amount", "float"), ("note", "text")],
        "20-digit numbers are text: {r}"
    );
    r["dataset_id"].as_str().unwrap().to_owned()
}

fn long_numbers_stay_exact_and_formula_cells_are_neutralised(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let dataset = upload(&app, &owner);
    let q = app
        .post_json(
            &format!("/v1/datasets/{dataset}/query"),
            Some(&owner),
            &json!({"sql": "SELECT account, account AS again FROM data ORDER BY account"}),
        )
        .expect(200);
    assert_eq!(q["rows"][0][0], "12345678901234567890", "{q}");

    // CSV: the two formula cells get a leading quote, and the answer counts them.
    let x = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": dataset, "format": "csv", "sql": "SELECT account, note FROM data ORDER BY account"}),
        )
        .expect(201);
    assert_eq!(x["formulas_neutralized"], 2, "{x}");
    let file = app.get(x["download_url"].as_str().unwrap(), &owner);
    assert_eq!(file.status, 200);
    let text = String::from_utf8(file.body.clone()).unwrap();
    assert!(text.contains("'@SUM(A1:A9)"), "{text}");
    assert!(text.contains("\"'=HYPERLINK("), "{text}");
    assert!(text.contains("12345678901234567890"), "{text}");

    // JSON Lines: a query naming two columns alike gets two keys, never one key twice.
    let x = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": dataset, "format": "jsonl", "sql": "SELECT account, account FROM data"}),
        )
        .expect(201);
    let file = app.get(x["download_url"].as_str().unwrap(), &owner);
    let first = String::from_utf8(file.body.clone()).unwrap();
    let line: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(line.len(), 2, "{first}");
    assert!(
        line.contains_key("account") && line.contains_key("account_2"),
        "{first}"
    );
}

#[test]
fn embedded_long_numbers_stay_exact_and_formula_cells_are_neutralised() {
    long_numbers_stay_exact_and_formula_cells_are_neutralised(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_long_numbers_stay_exact_and_formula_cells_are_neutralised() {
    long_numbers_stay_exact_and_formula_cells_are_neutralised(spawn_app(Backend::Postgres));
}

/// A body over its limit is a 413 that names the limit of where it was sent: a CSV upload's
/// `dataset_limit`, not the JSON bodies' `body_limit`.
#[test]
fn a_413_names_the_limit_of_the_route_it_was_sent_to() {
    let app = support::spawn_app_with(Backend::Embedded, |s| {
        s.dataset_limit = 100_000;
        s.body_limit = 1_000;
    });
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let auth = format!("Bearer {owner}");
    let mut csv = b"n,text\n".to_vec();
    while csv.len() <= 120_000 {
        csv.extend_from_slice(b"1,some text of a row\n");
    }
    let r = app.send(
        "POST",
        "/v1/datasets?name=big",
        &[("Authorization", &auth), ("Content-Type", "text/csv")],
        Some(&csv),
    );
    let p = r.problem(413, "payload-too-large");
    assert_eq!(p["limit"], 100_000, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("CSV uploads"), "{p}");
    // Under its own limit, the same upload goes through although it is far over `body_limit`.
    let small = &csv[..50_000];
    let end = small.iter().rposition(|b| *b == b'\n').unwrap() + 1;
    app.send(
        "POST",
        "/v1/datasets?name=small",
        &[("Authorization", &auth), ("Content-Type", "text/csv")],
        Some(&small[..end]),
    )
    .expect(201);
    let long = json!({"name": "x".repeat(2_000)});
    let p = app
        .send(
            "PATCH",
            "/v1/tenant",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(long.to_string().as_bytes()),
        )
        .problem(413, "payload-too-large");
    assert_eq!(p["limit"], 1_000, "{p}");
}

/// The badge says what it checked, withholds PASS when a column of people's names (or addresses,
/// or birth dates) is written with no column rule, and a FAIL file is handed out only with an
/// explicit acknowledgement; every download is an `export.downloaded` fact.
fn the_badge_is_honest_and_a_fail_file_needs_an_acknowledgement(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let auth = format!("Bearer {owner}");
    let r = app
        .send(
            "POST",
            "/v1/datasets?name=people",
            &[("Authorization", &auth), ("Content-Type", "text/csv")],
            Some(b"customer_name,city,amount\nAda Lovelace,London,3\nGrace Hopper,New York,5\n"),
        )
        .expect(201);
    let dataset = r["dataset_id"].as_str().unwrap().to_owned();
    let x = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": dataset, "format": "csv"}),
        )
        .expect(201);
    assert_eq!(x["badge"], "FAIL", "names pass through untouched: {x}");
    assert_eq!(
        x["withheld_columns"],
        json!(["customer_name (name)"]),
        "{x}"
    );
    assert_eq!(x["engine"], "tenantry-pii/2");
    assert!(
        x["checked"]
            .as_array()
            .unwrap()
            .contains(&json!("personal_column_names"))
    );
    let url = x["download_url"].as_str().unwrap().to_owned();
    let refused = app.get(&url, &owner).problem(409, "export-not-passed");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("customer_name"),
        "{refused}"
    );
    let file = app.get(&format!("{url}?acknowledge=fail"), &owner);
    assert_eq!(file.status, 200, "{}", file.exchange);

    // The same data under a column rule for the names, or without the names, passes.
    let x = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": dataset, "format": "csv", "sql": "SELECT city, sum(amount) AS total FROM data GROUP BY city"}),
        )
        .expect(201);
    assert_eq!(x["badge"], "PASS", "{x}");
    let url = x["download_url"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&url, &owner).status, 200);

    // Both downloads are facts, by the owner; the refused one is not.
    let feed = app
        .get("/v1/audit/events?type=export.downloaded&limit=10", &owner)
        .expect(200);
    let events = feed["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{feed}");
    assert_eq!(events[0]["payload"]["acknowledged_fail"], true);
    assert_eq!(events[1]["payload"]["badge"], "PASS");
}

#[test]
fn embedded_the_badge_is_honest_and_a_fail_file_needs_an_acknowledgement() {
    the_badge_is_honest_and_a_fail_file_needs_an_acknowledgement(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_the_badge_is_honest_and_a_fail_file_needs_an_acknowledgement() {
    the_badge_is_honest_and_a_fail_file_needs_an_acknowledgement(spawn_app(Backend::Postgres));
}
