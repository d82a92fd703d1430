//! The data plane through real HTTP on both stores: upload, query, export, download, delete;
//! hostile SQL; roles.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestApp, spawn_app_with};

const CSV: &str = "id,email,amount,day,note\n\
1,ada@example.com,10.5,2024-01-02,call +44 20 7946 0958\n\
2,bob@example.org,3,2024-01-03,fine\n\
3,,7.25,2024-01-03,\"quoted, with comma\"\n";

fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        s.query_time_ms = 300;
        s.dataset_limit = 64 * 1024;
    })
}

fn upload(app: &TestApp, token: &str, name: &str, csv: &str) -> support::Response {
    app.send(
        "POST",
        &format!("/v1/datasets?name={name}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "text/csv"),
        ],
        Some(csv.as_bytes()),
    )
}

fn query(app: &TestApp, token: &str, dataset: &str, sql: &str) -> support::Response {
    app.post_json(
        &format!("/v1/datasets/{dataset}/query"),
        Some(token),
        &json!({"sql": sql}),
    )
}

fn datasets_are_uploaded_typed_queried_and_deleted(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let analyst = app.add_member(&owner, "ana@example.com", "analyst");
    let d = upload(&app, &analyst, "customers", CSV).expect(201);
    let id = d["dataset_id"].as_str().unwrap().to_owned();
    let types: Vec<&str> = d["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["integer", "text", "float", "date", "text"]);
    assert_eq!(d["rows"], 3);
    assert_eq!(d["bytes"], CSV.len());
    assert_eq!(d["sha256"], api::tokens::sha256_hex(CSV.as_bytes()));
    let listed = app.get("/v1/datasets", &analyst).expect(200);
    assert_eq!(listed["datasets"][0]["dataset_id"], id.as_str());
    assert_eq!(
        app.get(&format!("/v1/datasets/{id}"), &analyst).expect(200)["name"],
        "customers"
    );

    let r = query(
        &app,
        &analyst,
        &id,
        "SELECT day, count(*) AS n, sum(amount) FROM data GROUP BY day ORDER BY day",
    )
    .expect(200);
    assert_eq!(r["columns"], json!(["day", "n", "sum(amount)"]));
    assert_eq!(
        r["rows"],
        json!([["2024-01-02", 1, 10.5], ["2024-01-03", 2, 10.25]])
    );
    let runs = app
        .get("/v1/audit/events?type=query.run", &owner)
        .expect(200);
    let run = &runs["events"][0]["payload"];
    assert_eq!(run["rows"], 2);
    assert_eq!(run["sql_sha256"].as_str().unwrap().len(), 64);
    assert!(
        !runs.to_string().contains("GROUP BY"),
        "the SQL itself is not kept"
    );

    let deleted = app.send(
        "DELETE",
        &format!("/v1/datasets/{id}"),
        &[("Authorization", &format!("Bearer {analyst}"))],
        None,
    );
    deleted.expect(200);
    app.get(&format!("/v1/datasets/{id}"), &analyst)
        .problem(404, "not-found");
    query(&app, &analyst, &id, "SELECT 1").problem(404, "not-found");
    assert!(
        app.get("/v1/datasets", &analyst).expect(200)["datasets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let types: Vec<String> = app
        .get("/v1/audit/events?type=dataset.deleted", &owner)
        .expect(200)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["dataset.deleted"]);
    // The data is gone from the store, not just hidden.
    let location = app.location.clone();
    let tenant = app.get("/v1/me", &owner).json()["tenant_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let blob = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let store = store::Store::open(&location).await.unwrap();
            store.get_blob(tenant, &format!("ds-{id}")).await.unwrap()
        });
    assert_eq!(blob, None);
}

fn bad_uploads_are_refused_with_the_line_and_write_only_their_fact(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let before = app.head();
    let p = upload(&app, &owner, "bad", "a,b\n1,2\n3\n").problem(422, "invalid-csv");
    assert_eq!(p["line"], 3);
    let p = upload(&app, &owner, "bad", "a,b\n1,\u{FFFD}\n").expect(201);
    assert_eq!(p["rows"], 1, "replacement characters are text");
    let before = before.max(app.head());
    let p = app
        .send(
            "POST",
            "/v1/datasets?name=x",
            &[
                ("Authorization", &format!("Bearer {owner}")),
                ("Content-Type", "text/csv"),
            ],
            Some(b"a,b\n1,\xff\n"),
        )
        .problem(422, "invalid-csv");
    assert_eq!(p["line"], 2);
    upload(&app, &owner, "x", "").problem(422, "invalid-csv");
    upload(&app, &owner, "x", "a,a\n1,2\n").problem(422, "invalid-csv");
    app.send(
        "POST",
        "/v1/datasets?name=x",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "application/json"),
        ],
        Some(b"{}"),
    )
    .problem(415, "unsupported-media-type");
    app.send(
        "POST",
        "/v1/datasets",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "text/csv"),
        ],
        Some(b"a\n1\n"),
    )
    .problem(400, "bad-query");
    let big = format!("a\n{}", "1\n".repeat(40_000));
    let p = upload(&app, &owner, "big", &big).problem(413, "payload-too-large");
    assert_eq!(p["limit"], 64 * 1024);
    // No dataset: each refusal the handler saw is one `dataset.upload_rejected` fact, never the
    // content (the 400 and the 413 are refused before it).
    let rejected = app
        .get("/v1/audit/events?type=dataset.upload_rejected", &owner)
        .expect(200)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["reason"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(
        rejected,
        [
            "shape",
            "encoding",
            "empty",
            "column_names",
            "unsupported_media_type"
        ]
    );
    assert_eq!(
        app.head(),
        before + 4,
        "refused uploads write their fact only"
    );
}

fn hostile_sql_is_refused_or_stopped_and_the_server_stays_healthy(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let id = upload(&app, &owner, "c", CSV).expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r",
            "query-timeout",
        ),
        (
            "SELECT count(*) FROM data a, data b, data c, data d, data e, data f, data g, data h, data i, data j, data k, data l, data m, data n, data o, data p, data q, data r, data s, data t, data u, data v, data w",
            "query-timeout",
        ),
        // Refused either way: denied by the authorizer, or absent from this SQLite build.
        (
            "SELECT load_extension('/tmp/evil.so')",
            "query-not-allowed|query-invalid",
        ),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "query-not-allowed"),
        ("PRAGMA writable_schema = 1", "query-not-allowed"),
        ("DELETE FROM data", "query-not-allowed"),
        (
            "CREATE TEMP TABLE t AS SELECT * FROM data",
            "query-not-allowed",
        ),
        ("SELECT 1; DROP TABLE data", "query-invalid"),
        ("SELEKT nonsense", "query-invalid"),
        ("SELECT randomblob(1000000000)", "query-invalid"),
    ];
    for (sql, slugs) in cases {
        let r = query(&app, &owner, &id, sql);
        assert_eq!(r.status, 422, "{}", r.exchange);
        let kind = r.json()["type"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            slugs.split('|').any(|s| s == kind),
            "{sql}: {kind}\n{}",
            r.exchange
        );
    }
    query(&app, &owner, &id, "").problem(422, "validation-failed");
    app.send("GET", "/healthz", &[], None).expect(200);
    assert_eq!(
        query(&app, &owner, &id, "SELECT count(*) FROM data").expect(200)["rows"],
        json!([[3]])
    );
}

fn exports_are_redacted_badged_byte_identical_and_downloadable(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let viewer = app.add_member(&owner, "v@example.com", "viewer");
    let id = upload(&app, &owner, "c", CSV).expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": id, "format": "csv"}),
        )
        .expect(201);
    let again = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": id, "format": "csv", "preset": {"id": "default", "version": 1}}),
        )
        .expect(201);
    assert_eq!(first["badge"], "PASS");
    assert_eq!(first["rows"], 3);
    assert_eq!(first["preset"], json!({"id": "default", "version": 1}));
    assert_eq!(
        first["sha256"], again["sha256"],
        "same input and preset version, same bytes"
    );
    assert_ne!(first["export_id"], again["export_id"]);
    let url = first["download_url"].as_str().unwrap();
    let file = app.get(url, &viewer);
    assert_eq!(file.status, 200, "{}", file.exchange);
    let text = String::from_utf8(file.body.clone()).unwrap();
    assert_eq!(
        text,
        "id,email,amount,day,note\n1,[email],10.5,2024-01-02,call [phone]\n2,[email],3.0,2024-01-03,fine\n3,,7.25,2024-01-03,\"quoted, with comma\"\n"
    );
    assert_eq!(
        api::tokens::sha256_hex(&file.body),
        first["sha256"].as_str().unwrap()
    );
    assert!(
        file.header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"export-")
    );
    assert!(file.header("repr-digest").unwrap().starts_with("sha-256=:"));
    let meta = app
        .get(
            &format!("/v1/exports/{}", first["export_id"].as_str().unwrap()),
            &viewer,
        )
        .expect(200);
    assert_eq!(meta["badge"], "PASS");
    // JSON Lines of a query, and the event that records it.
    let j = app.post_json("/v1/exports", Some(&owner), &json!({"dataset_id": id, "format": "jsonl", "sql": "SELECT id, email FROM data WHERE id < 3"})).expect(201);
    let body = app.get(j["download_url"].as_str().unwrap(), &owner).body;
    let lines: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"id": 1, "email": "[email]"}),
            json!({"id": 2, "email": "[email]"})
        ]
    );
    let events = app
        .get("/v1/audit/events?type=export.completed", &owner)
        .expect(200);
    let e = &events["events"][0]["payload"];
    assert_eq!(e["badge"], "PASS");
    assert_eq!(e["preset_id"], "default");
    assert_eq!(e["sha256"], first["sha256"]);
    // Refusals.
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": id, "format": "xml"}),
    )
    .problem(422, "validation-failed");
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": id, "format": "csv", "preset": {"id": "marketing", "version": 3}}),
    )
    .problem(422, "validation-failed");
    app.post_json(
        "/v1/exports",
        Some(&owner),
        &json!({"dataset_id": uuid::Uuid::new_v4(), "format": "csv"}),
    )
    .problem(404, "not-found");
    app.post_json(
        "/v1/exports",
        Some(&viewer),
        &json!({"dataset_id": id, "format": "csv"}),
    )
    .problem(403, "forbidden");
    upload(&app, &viewer, "v", CSV).problem(403, "forbidden");
    query(&app, &viewer, &id, "SELECT 1").problem(403, "forbidden");
    // Another tenant sees none of it.
    let (_, other) = app.signup("Other", "other@example.com");
    app.get(&format!("/v1/datasets/{id}"), &other)
        .problem(404, "not-found");
    app.get(url, &other).problem(404, "not-found");
}

fn presets_are_versioned_shared_and_applied_at_export(app: TestApp) {
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let analyst = app.add_member(&owner, "ana@example.com", "analyst");
    let viewer = app.add_member(&owner, "v@example.com", "viewer");
    let id = upload(&app, &owner, "c", CSV).expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v1 = json!({
        "name": "partners",
        "columns": [
            {"column": "email", "action": "hash"},
            {"column": "amount", "action": "generalize", "bucket": 5},
            {"column": "d*", "action": "generalize"},
            {"column": "id", "action": "drop"}
        ],
        "text": {"detectors": ["phone"], "method": "mask"}
    });
    let created = app.post_json("/v1/presets", Some(&owner), &v1).expect(201);
    let preset = created["preset_id"].as_str().unwrap().to_owned();
    assert_eq!(created["version"], 1);
    app.post_json("/v1/presets", Some(&analyst), &v1)
        .problem(403, "forbidden");
    let listed = app.get("/v1/presets", &viewer).expect(200);
    let names: Vec<&str> = listed["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "partners"],
        "shared within the tenant, with the built-in default"
    );

    let export = |version: u32| {
        app.post_json("/v1/exports", Some(&analyst), &json!({"dataset_id": id, "format": "csv", "preset": {"id": preset, "version": version}}))
            .expect(201)
    };
    let a = export(1);
    let b = export(1);
    assert_eq!(
        a["sha256"], b["sha256"],
        "the same preset version gives the same bytes"
    );
    assert_eq!(a["preset"], json!({"id": preset, "version": 1}));
    let text =
        String::from_utf8(app.get(a["download_url"].as_str().unwrap(), &analyst).body).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("email,amount,day,note"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[0].len(), 12, "hashed: {text}");
    assert_eq!(&first[1..], ["10.0", "2024-01", "call ****************"]);
    assert_eq!(a["badge"], "PASS");
    // Column rules hold under any SQL: an alias cannot reach the original values, and a
    // dropped column is not there to select.
    let aliased = app
        .post_json("/v1/exports", Some(&analyst), &json!({"dataset_id": id, "format": "csv", "sql": "SELECT email AS x, upper(email) AS y FROM data WHERE email IS NOT NULL AND email != ''", "preset": {"id": preset, "version": 1}}))
        .expect(201);
    assert_eq!(aliased["badge"], "PASS");
    let body = String::from_utf8(
        app.get(aliased["download_url"].as_str().unwrap(), &analyst)
            .body,
    )
    .unwrap();
    assert!(!body.contains("@example"), "{body}");
    app.post_json("/v1/exports", Some(&analyst), &json!({"dataset_id": id, "format": "csv", "sql": "SELECT id FROM data", "preset": {"id": preset, "version": 1}}))
        .problem(422, "query-invalid");

    // Edit: version 2 keeps the email as it is; the output scan catches it.
    let v2 = json!({"columns": [{"column": "email", "action": "keep"}], "text": {"detectors": ["phone"], "method": "replace"}});
    let edited = app.send(
        "PUT",
        &format!("/v1/presets/{preset}"),
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "application/json"),
        ],
        Some(v2.to_string().as_bytes()),
    );
    let edited = edited.expect(200);
    assert_eq!(edited["version"], 2);
    assert_eq!(edited["versions"], json!([1, 2]));
    assert_eq!(edited["name"], "partners");
    let c = export(2);
    assert_eq!(c["badge"], "FAIL");
    assert_eq!(c["findings"], json!({"email": 2}));
    assert_ne!(c["sha256"], a["sha256"]);
    assert_eq!(
        export(1)["sha256"],
        a["sha256"],
        "older versions stay usable and identical"
    );
    let old = app
        .get(&format!("/v1/presets/{preset}?version=1"), &viewer)
        .expect(200);
    assert_eq!(old["columns"][0]["action"], "hash");

    // Invalid rules name their fields; unknown actions and detectors are refused.
    let bad = json!({"name": "bad", "columns": [{"column": "", "action": "truncate", "length": 0}], "text": {"detectors": ["email", "email"], "method": "replace"}});
    let p = app
        .post_json("/v1/presets", Some(&owner), &bad)
        .problem(422, "validation-failed");
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["columns[0].column", "columns[0].length", "text.detectors"]
    );
    for body in [
        json!({"name": "x", "columns": [{"column": "a", "action": "shred"}], "text": {"detectors": [], "method": "replace"}}),
        json!({"name": "x", "text": {"detectors": ["dna"], "method": "replace"}}),
        json!({"name": "x", "text": {"detectors": [], "method": "burn"}}),
        json!({"text": {"detectors": [], "method": "replace"}}),
    ] {
        app.post_json("/v1/presets", Some(&owner), &body)
            .problem(422, "validation-failed");
    }
    // A well-formed name the built-in preset holds is a conflict, not an invalid field.
    app.post_json(
        "/v1/presets",
        Some(&owner),
        &json!({"name": "default", "text": {"detectors": [], "method": "replace"}}),
    )
    .problem(409, "preset-builtin");

    // The built-in default cannot change; deleting keeps the history but stops new exports.
    app.send(
        "PUT",
        "/v1/presets/default",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("Content-Type", "application/json"),
        ],
        Some(v2.to_string().as_bytes()),
    )
    .problem(409, "preset-builtin");
    assert_eq!(
        app.get("/v1/presets/default", &viewer).expect(200)["version"],
        1
    );
    app.send(
        "DELETE",
        &format!("/v1/presets/{preset}"),
        &[("Authorization", &format!("Bearer {owner}"))],
        None,
    )
    .expect(200);
    // The preset is gone, every version of it (its history is in the audit feed).
    app.get(&format!("/v1/presets/{preset}"), &viewer)
        .problem(404, "preset-deleted");
    app.get(&format!("/v1/presets/{preset}?version=1"), &viewer)
        .problem(404, "preset-deleted");
    app.post_json(
        "/v1/exports",
        Some(&analyst),
        &json!({"dataset_id": id, "format": "csv", "preset": {"id": preset, "version": 1}}),
    )
    .problem(422, "validation-failed");

    // Behind its flag.
    let ops = app.operator_token(domain::PlatformRole::Ops);
    app.send(
        "PUT",
        &format!("/v1/tenants/{tenant}/flags/redactionPresetBuilder"),
        &[
            ("Authorization", &format!("Bearer {ops}")),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled": false}"#),
    )
    .expect(200);
    app.get("/v1/presets", &viewer)
        .problem(403, "feature-disabled");
}

/// Memory counted as memory: a query under column rules runs over a redacted copy held in
/// memory, and a copy of 110,000 rows × 20 short columns (4.5 MB of CSV, ~75 MB of values) is
/// past the export's 64 MiB memory cap: refused with a problem document, charged as `too_large`
/// (ADR 015), no file kept. The whole dataset, streamed to a temporary file row by row, is
/// exported and downloaded byte for byte.
fn an_export_past_its_memory_cap_is_refused_and_a_streamed_one_is_downloaded(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.query_time_ms = 60_000;
        s.dataset_limit = 16 * 1024 * 1024;
    });
    let (_, owner) = app.signup("Wide", "wide@example.com");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let header: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    let mut csv = header.join(",") + "\n";
    let row = (0..20)
        .map(|i| (i % 10).to_string())
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for _ in 0..110_000 {
        csv.push_str(&row);
    }
    let id = upload(&app, &owner, "wide", &csv).expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let preset = app
        .post_json(
            "/v1/presets",
            Some(&owner),
            &json!({"name": "hide", "columns": [{"column": "c0", "action": "mask"}],
                    "text": {"detectors": ["email"], "method": "replace"}}),
        )
        .expect(201)["preset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": id, "format": "csv", "sql": "SELECT * FROM data",
                    "preset": {"id": preset, "version": 1}}),
        )
        .problem(422, "validation-failed");
    assert!(refused.to_string().contains("bytes of memory"), "{refused}");
    let failed = app
        .get("/v1/audit/events?type=export.failed", &owner)
        .expect(200);
    assert_eq!(
        failed["events"][0]["payload"]["error_class"], "too_large",
        "{failed}"
    );
    assert_eq!(
        app.get("/v1/audit/events?type=export.completed", &owner)
            .expect(200)["events"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    let streamed = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": id, "format": "csv", "preset": {"id": preset, "version": 1}}),
        )
        .expect(201);
    assert_eq!(streamed["rows"], 110_000);
    let file = app.get(streamed["download_url"].as_str().unwrap(), &owner);
    assert_eq!(file.status, 200);
    assert_eq!(file.body.len() as u64, streamed["bytes"].as_u64().unwrap());
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&file.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, streamed["sha256"].as_str().unwrap());
    let text = String::from_utf8(file.body).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header.join(",").as_str()));
    assert_eq!(
        lines.next(),
        Some(format!("*{}", &row.trim_end()[1..]).as_str()),
        "c0 masked"
    );
}

#[test]
fn an_export_past_its_memory_cap_is_refused_and_a_streamed_one_is_downloaded_on_the_embedded_store()
{
    an_export_past_its_memory_cap_is_refused_and_a_streamed_one_is_downloaded(Backend::Embedded);
}

#[test]
fn an_export_past_its_memory_cap_is_refused_and_a_streamed_one_is_downloaded_on_postgresql() {
    an_export_past_its_memory_cap_is_refused_and_a_streamed_one_is_downloaded(Backend::Postgres);
}

fn datasets_are_listed_a_page_at_a_time_with_an_opaque_cursor(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let (_, other) = app.signup("Globex", "owner@globex.example");
    let mut uploaded: Vec<String> = (0..5)
        .map(|i| {
            upload(&app, &owner, &format!("d{i}"), CSV).expect(201)["dataset_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    upload(&app, &other, "theirs", CSV).expect(201);
    uploaded.sort();

    // Pages of two: 2 + 2 + 1, in id order, each dataset once, the last page without a cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/datasets?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get(&path, &owner).expect(200);
        pages += 1;
        let items = page["datasets"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        seen.extend(
            items
                .iter()
                .map(|d| d["dataset_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/datasets?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen, uploaded,
        "every dataset of the tenant once, none of another's"
    );
    // The default page holds them all, and says it is the last.
    let all = app.get("/v1/datasets", &owner).expect(200);
    assert_eq!(all["datasets"].as_array().unwrap().len(), 5);
    assert!(all["next_cursor"].is_null());

    // A bad limit or a cursor that is not ours is a 422 naming the field.
    for bad in [
        "limit=0",
        "limit=1001",
        "cursor=c1ff",
        "cursor=d1zz",
        "cursor=d1",
    ] {
        let r = app.get(&format!("/v1/datasets?{bad}"), &owner);
        assert_eq!(r.status, 422, "{bad}: {}", r.json());
        let field = bad.split('=').next().unwrap();
        assert!(r.json().to_string().contains(field), "{bad}: {}", r.json());
    }
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
    datasets_are_uploaded_typed_queried_and_deleted,
    bad_uploads_are_refused_with_the_line_and_write_only_their_fact,
    hostile_sql_is_refused_or_stopped_and_the_server_stays_healthy,
    exports_are_redacted_badged_byte_identical_and_downloadable,
    presets_are_versioned_shared_and_applied_at_export,
    datasets_are_listed_a_page_at_a_time_with_an_opaque_cursor,
);
