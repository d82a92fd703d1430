//! Billing through real HTTP, on both stores: the invoice preview as JSON, CSV and PDF with the
//! same totals (the PDF read back with `pdftotext`), who may see it, billing modes changed by
//! platform finance with an `Idempotency-Key`, and a clean reconciliation of what was used.

mod support;

use domain::PlatformRole;
use serde_json::json;
use support::{Backend, TestApp, spawn_app};

fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invoice.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg("-layout")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext runs (Debian package poppler-utils; scripts/test.sh installs it)");
    assert!(out.status.success(), "pdftotext failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn a_pro_tenant_previews_its_invoice_as_json_csv_and_pdf_with_equal_totals(app: TestApp) {
    let (tenant, owner) = app.signup("Acme Analytics", "owner@example.com");
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    // 20,000 queries are included; 1,234 over at 0.002 = 2.468 → 2.47 USD, one rounding.
    for _ in 0..2 {
        app.post_json(
            "/v1/usage",
            Some(&owner),
            &json!({"meter": "queries", "units": 10_000}),
        )
        .expect(200);
    }
    app.post_json(
        "/v1/usage",
        Some(&owner),
        &json!({"meter": "queries", "units": 1_234}),
    )
    .expect(200);
    let head = app.head();
    let preview = |accept: &str| {
        app.send(
            "GET",
            &format!("/v1/tenant/invoices/preview?min_position={head}"),
            &[
                ("Authorization", &format!("Bearer {owner}")),
                ("Accept", accept),
            ],
            None,
        )
    };
    let j = preview("application/json").expect(200);
    assert_eq!(j["status"], "draft");
    assert_eq!(j["mode"], "shadow");
    assert_eq!(j["tenant_id"], tenant);
    assert_eq!(j["quantities"]["queries"], 21_234);
    let overage = j["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "overage")
        .unwrap_or_else(|| panic!("an overage line: {j}"));
    assert_eq!(overage["quantity"], 1_234);
    assert_eq!(overage["unit_price"], "0.002");
    assert_eq!(overage["amount_minor"], 247);
    let total = j["total"].as_str().unwrap().to_owned();
    let total_minor = j["total_minor"].as_i64().unwrap();
    let sum: i64 = j["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, total_minor);

    let csv = preview("text/csv");
    assert_eq!(csv.status, 200, "{}", csv.exchange);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let text = String::from_utf8(csv.body.clone()).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with(&format!("total,,,,,{total},USD")),
        "{text}"
    );

    let pdf = preview("application/pdf");
    assert_eq!(pdf.status, 200);
    assert_eq!(pdf.header("content-type"), Some("application/pdf"));
    assert!(pdf.body.starts_with(b"%PDF-"));
    let text = pdf_text(&pdf.body);
    assert!(text.contains(&format!("Total: {total} USD")), "{text}");
    assert!(text.contains("Acme Analytics"), "{text}");
    assert!(
        text.contains(&j["period"].as_str().unwrap().to_string()),
        "{text}"
    );
    assert!(
        text.contains("= 2.47"),
        "the overage line is in the PDF: {text}"
    );

    // A viewer may not see invoices; the billing role may.
    let viewer = app.add_member(&owner, "viewer@example.com", "viewer");
    app.get("/v1/tenant/invoices/preview", &viewer)
        .problem(403, "forbidden");
    let billing = app.add_member(&owner, "billing@example.com", "billing");
    app.get("/v1/tenant/invoices", &billing).expect(200);

    // Platform finance turns billing on, once per key; a repeated mode is a conflict.
    let finance = app.operator_token(PlatformRole::Finance);
    let body = json!({"mode": "active_test", "reason": "pilot customer"}).to_string();
    let put = |key: &str, body: &str| {
        app.send(
            "PUT",
            &format!("/v1/tenants/{tenant}/billing-mode"),
            &[
                ("Authorization", &format!("Bearer {finance}")),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            Some(body.as_bytes()),
        )
    };
    let first = put("mode-1", &body).expect(200);
    assert_eq!(first["from"], "shadow");
    assert_eq!(first["mode"], "active_test");
    assert_eq!(
        put("mode-1", &body).expect(200),
        first,
        "replayed, not applied twice"
    );
    put("mode-2", &body).problem(409, "billing-same-mode");
    app.send(
        "PUT",
        &format!("/v1/tenants/{tenant}/billing-mode"),
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
    .problem(403, "forbidden");
    let j = app.get("/v1/tenant/invoices/preview", &owner).expect(200);
    assert_eq!(j["mode"], "active_test");

    // Reconciliation of today: clean, and said so.
    let today = time::OffsetDateTime::now_utc().date();
    let r = app
        .get(
            &format!(
                "/v1/ops/reconciliation?from={today}&to={}",
                today.next_day().unwrap()
            ),
            &finance,
        )
        .expect(200);
    assert_eq!(r["clean"], true, "{r}");
    assert!(r["summary"].as_str().unwrap().starts_with("clean"));
    assert!(r["events_read"].as_u64().unwrap() > 0);
    // Nothing of this tenant can be finalized before its period has ended.
    app.get("/v1/invoices", &finance).expect(200);
}

#[test]
fn billing_preview_modes_and_reconciliation_embedded() {
    a_pro_tenant_previews_its_invoice_as_json_csv_and_pdf_with_equal_totals(spawn_app(
        Backend::Embedded,
    ));
}

#[test]
fn billing_preview_modes_and_reconciliation_postgres() {
    a_pro_tenant_previews_its_invoice_as_json_csv_and_pdf_with_equal_totals(spawn_app(
        Backend::Postgres,
    ));
}

/// A tenant's January written through the real aggregates with January's decision times (the
/// server's clock is today's, so a past period is the only one that can be final): sign-up on the
/// 10th, Pro from the 15th at noon, 20,500 queries. Returns (tenant id, owner token).
fn january_of_a_pro_tenant(app: &TestApp) -> (String, String) {
    use domain::quota::{self, Meter, Period, Record, Usage, UsageCommand};
    use domain::tenant::{NewMember, Plan, Tenant, TenantCommand, TenantName};
    use time::macros::datetime;
    let location = app.location.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let store = store::Store::open(&location).await.unwrap();
            let tenants = commands::Executor::<Tenant>::new(
                store.clone(),
                commands::ExecutorConfig::new("tenant/v1"),
            );
            let usage = commands::Executor::<Usage>::new(
                store.clone(),
                commands::ExecutorConfig::new("usage/v1"),
            );
            let tenant = domain::TenantId::from_uuid(uuid::Uuid::now_v7());
            let secret = api::tokens::generate();
            let meta = store::Metadata::actor("test:january");
            let stream = domain::tenant::stream_id(tenant);
            let signed_up = datetime!(2026-01-10 10:00 UTC);
            tenants
                .execute(
                    tenant,
                    &stream,
                    &TenantCommand::SignUp {
                        name: TenantName::parse("January Co").unwrap(),
                        owner: NewMember {
                            user_id: domain::UserId::from_uuid(uuid::Uuid::now_v7()),
                            email: domain::Email::parse("jan@example.com").unwrap(),
                            name: domain::PersonName::parse("Jan").unwrap(),
                            role: domain::TenantRole::Owner,
                            token: domain::identity::IssuedToken {
                                token_id: uuid::Uuid::now_v7(),
                                token_sha256: api::tokens::sha256_hex(secret.as_bytes()),
                                expires_at: time::OffsetDateTime::now_utc()
                                    + time::Duration::days(1),
                            },
                        },
                    },
                    &meta,
                    signed_up,
                )
                .await
                .unwrap();
            let pro = datetime!(2026-01-15 12:00 UTC);
            tenants
                .execute(
                    tenant,
                    &stream,
                    &TenantCommand::ChangePlan {
                        plan: Plan::Pro,
                        reason: None,
                        seats: Some(25),
                        registry_version: 1,
                    },
                    &meta,
                    pro,
                )
                .await
                .unwrap();
            let at = datetime!(2026-01-20 08:00 UTC);
            let limits = domain::plans::definition(Plan::Pro).limits(Meter::Queries);
            for units in [10_000, 10_000, 500] {
                usage
                    .execute(
                        tenant,
                        &quota::stream_id(Meter::Queries, Period::of(at)),
                        &UsageCommand::Record(Record::units(Meter::Queries, units, limits)),
                        &meta,
                        at,
                    )
                    .await
                    .unwrap();
            }
            store.close().await;
            (tenant.to_string(), secret)
        })
}

fn a_finalized_invoice_downloads_as_json_csv_and_pdf_with_equal_totals(app: TestApp) {
    let (tenant, owner) = january_of_a_pro_tenant(&app);
    let finance = app.operator_token(PlatformRole::Finance);
    let head = app.head();
    // The server's read models have the history before finance finalizes January.
    app.get(&format!("/v1/invoices?min_position={head}"), &finance)
        .expect(200);
    let fin = |key: &str| {
        app.send(
            "POST",
            "/v1/ops/invoices/finalize",
            &[
                ("Authorization", &format!("Bearer {finance}")),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            Some(br#"{"period": "2026-01"}"#),
        )
    };
    let done = fin("jan-1").expect(200);
    assert_eq!(done["finalized"], json!(["TEN-000001"]), "{done}");
    let again = fin("jan-2").expect(200);
    assert_eq!(
        again["finalized"],
        json!([]),
        "a finalized invoice never changes"
    );
    assert_eq!(again["already_final"], 1);

    let list = app.get("/v1/tenant/invoices", &owner).expect(200);
    assert_eq!(list["invoices"][0]["number"], "TEN-000001");
    let get = |accept: &str| {
        app.send(
            "GET",
            "/v1/tenant/invoices/TEN-000001",
            &[
                ("Authorization", &format!("Bearer {owner}")),
                ("Accept", accept),
            ],
            None,
        )
    };
    let j = get("application/json").expect(200);
    assert_eq!(j["tenant_id"], tenant);
    assert_eq!(j["status"], "finalized");
    // Pro from 2026-01-15 12:00: 1,425,600 of 2,678,400 seconds of 49.00 = 26.0806… → 26.08;
    // 500 queries over 20,000 at 0.002 = 1.00.
    let amounts: Vec<_> = j["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        amounts,
        vec![
            ("prorated_fee".to_owned(), 2_608),
            ("overage".to_owned(), 100)
        ],
        "{j}"
    );
    assert_eq!(j["total"], "27.08");
    let csv = get("text/csv");
    assert_eq!(csv.status, 200, "{}", csv.exchange);
    let text = String::from_utf8(csv.body.clone()).unwrap();
    assert!(text.ends_with("total,,,,,27.08,USD\n"), "{text}");
    let pdf = get("application/pdf");
    assert_eq!(pdf.status, 200, "{}", pdf.exchange);
    let text = pdf_text(&pdf.body);
    assert!(text.contains("Total: 27.08 USD"), "{text}");
    assert!(text.contains("Invoice TEN-000001"), "{text}");
    assert!(text.contains("January Co"), "{text}");

    // Another tenant's owner does not see it.
    let (_, other) = app.signup("Other", "other@example.com");
    app.get("/v1/tenant/invoices/TEN-000001", &other)
        .problem(404, "not-found");
    // Finance sees it in the cross-tenant list, and the month reconciles with it.
    let all = app.get("/v1/invoices", &finance).expect(200);
    assert_eq!(all["invoices"].as_array().unwrap().len(), 1);
    let r = app
        .get(
            "/v1/ops/reconciliation?from=2026-01-01&to=2026-02-01",
            &finance,
        )
        .expect(200);
    assert_eq!(r["clean"], true, "{r}");
    assert_eq!(r["invoices_checked"], 1);
}

#[test]
fn a_finalized_invoice_downloads_with_equal_totals_embedded() {
    a_finalized_invoice_downloads_as_json_csv_and_pdf_with_equal_totals(spawn_app(
        Backend::Embedded,
    ));
}

#[test]
fn a_finalized_invoice_downloads_with_equal_totals_postgres() {
    a_finalized_invoice_downloads_as_json_csv_and_pdf_with_equal_totals(spawn_app(
        Backend::Postgres,
    ));
}
