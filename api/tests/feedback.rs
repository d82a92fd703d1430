//! In-product feedback through the real server on both stores (SPEC §7, issue 13 items 4–6):
//! submit → triage, an invalid transition is 409, filters, paging, counts and CSV, the per-user
//! rate limit, the opt-out, and the proof of privacy: the whole labelled PII corpus sent through
//! `POST /v1/feedback`, then not one original value found in the store's raw bytes.

mod support;

use domain::PlatformRole;
use serde_json::{Value, json};
use store::{Location, Store};
use support::{Backend, TestApp, spawn_app};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn submit(app: &TestApp, token: &str, body: &Value) -> Value {
    app.post_json("/v1/feedback", Some(token), body).expect(201)
}

fn patch(app: &TestApp, token: &str, id: &str, body: &Value) -> support::Response {
    app.send(
        "PATCH",
        &format!("/v1/feedback/{id}"),
        &[
            ("Authorization", &bearer(token)),
            ("Content-Type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

fn feedback_flows_from_submit_to_triage(app: TestApp) {
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let (_, other) = app.signup("Other", "other@example.com");
    let analyst = app.add_member(&owner, "ana@example.com", "analyst");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = app.send(
        "POST",
        "/v1/feedback",
        &[
            ("Authorization", &bearer(&analyst)),
            ("Content-Type", "application/json"),
            (
                "traceparent",
                &format!("00-{trace}-00f067aa0ba902b7-01"),
            ),
        ],
        Some(
            json!({"message": "Export fails; mail me at ada.lovelace@example.com or +44 20 7946 0958",
                   "screen": "exports", "step": "download", "severity": "high", "category": "bug"})
            .to_string()
            .as_bytes(),
        ),
    );
    let created = r.expect(201);
    let id = created["feedback_id"].as_str().unwrap().to_owned();
    let position = created["global_position"].as_u64().unwrap();

    let board = app
        .get(&format!("/v1/feedback?min_position={position}"), &owner)
        .expect(200);
    assert_eq!(board["total"], 1, "{board}");
    let item = &board["items"][0];
    let message = item["message"].as_str().unwrap();
    assert!(!message.contains("ada.lovelace"), "{message}");
    assert!(!message.contains("7946"), "{message}");
    assert!(
        message.contains("[email]") && message.contains("[phone]"),
        "{message}"
    );
    assert_eq!(item["state"], "new");
    assert_eq!(item["category"], "bug");
    let d = &item["diagnostics"];
    assert_eq!(d["trace_id"], trace);
    assert_eq!(d["plan"], "free");
    assert_eq!(d["environment"], "dev");
    assert_eq!(d["app_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d["flags"]["feedbackMVP"], true);
    assert!(d["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let user_ref = d["user_ref"].as_str().unwrap();
    assert_eq!(user_ref.len(), 64);
    assert!(!user_ref.contains(&tenant));

    // The same user gets the same reference.
    submit(
        &app,
        &analyst,
        &json!({"message": "again", "screen": "exports", "step": "download", "severity": "low"}),
    );
    let board = app.get("/v1/feedback", &owner).expect(200);
    assert_eq!(board["items"][0]["diagnostics"]["user_ref"], user_ref);

    // Analysts do not triage; another tenant's owner neither sees nor finds it.
    app.get("/v1/feedback", &analyst).problem(403, "forbidden");
    assert_eq!(app.get("/v1/feedback", &other).expect(200)["total"], 0);
    patch(&app, &other, &id, &json!({"state": "triaged"})).problem(404, "not-found");

    // new → resolved is not a transition: 409, and nothing changes.
    let p =
        patch(&app, &owner, &id, &json!({"state": "resolved"})).problem(409, "invalid-transition");
    assert!(p["detail"].as_str().unwrap().contains("new"), "{p}");
    let t = patch(
        &app,
        &owner,
        &id,
        &json!({"state": "triaged", "assignee": "support-1", "labels": ["export", "ui"], "priority": "p1"}),
    )
    .expect(200);
    assert_eq!(t["item"]["state"], "triaged");
    assert_eq!(t["item"]["assignee"], "support-1");
    assert_eq!(t["item"]["labels"], json!(["export", "ui"]));
    assert_eq!(t["item"]["priority"], "p1");

    // Platform support sees every tenant and triages on.
    let support = app.operator_token(PlatformRole::Support);
    let seen = app
        .get(
            &format!("/v1/feedback?tenant_id={tenant}&state=triaged"),
            &support,
        )
        .expect(200);
    assert_eq!(seen["total"], 1, "{seen}");
    patch(
        &app,
        &support,
        &id,
        &json!({"state": "in_progress", "assignee": null}),
    )
    .expect(200);
    let done = patch(&app, &support, &id, &json!({"state": "resolved"})).expect(200);
    assert_eq!(done["item"]["state"], "resolved");
    assert!(done["item"]["assignee"].is_null());
    patch(&app, &support, &id, &json!({"state": "in_progress"})).problem(409, "invalid-transition");
    patch(&app, &support, &id, &json!({"labels": ["Not Valid"]})).problem(422, "validation-failed");
    patch(&app, &support, "not-a-uuid", &json!({})).problem(404, "not-found");

    // Ops is not a triager.
    let ops = app.operator_token(PlatformRole::Ops);
    app.get("/v1/feedback", &ops).problem(403, "forbidden");
}

fn the_board_filters_counts_pages_and_exports_csv(app: TestApp) {
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    let items = [
        ("exports", "high", "the download button, does nothing"),
        ("exports", "low", "slow \"export\" page"),
        ("datasets", "high", "upload stuck at 99%"),
        ("datasets", "critical", "=HYPERLINK(\"x\") upload lost"),
        ("queries", "medium", "query editor loses focus"),
    ];
    for (screen, severity, message) in items {
        submit(
            &app,
            &owner,
            &json!({"message": message, "screen": screen, "step": "main", "severity": severity}),
        );
    }
    let all = app.get("/v1/feedback", &owner).expect(200);
    assert_eq!(all["total"], 5);
    assert_eq!(
        all["counts"]["by_severity"],
        json!({"low": 1, "medium": 1, "high": 2, "critical": 1})
    );
    assert_eq!(
        all["counts"]["by_screen"],
        json!({"exports": 2, "datasets": 2, "queries": 1})
    );
    assert_eq!(all["items"][0]["screen"], "queries", "newest first");

    let high = app.get("/v1/feedback?severity=high", &owner).expect(200);
    assert_eq!(high["total"], 2);
    assert_eq!(
        high["counts"]["by_screen"],
        json!({"exports": 1, "datasets": 1})
    );
    let ds = app.get("/v1/feedback?screen=datasets", &owner).expect(200);
    assert_eq!(ds["total"], 2);
    let text = app.get("/v1/feedback?text=UPLOAD", &owner).expect(200);
    assert_eq!(text["total"], 2);
    let new = app
        .get("/v1/feedback?state=new&severity=critical", &owner)
        .expect(200);
    assert_eq!(new["total"], 1);
    assert_eq!(
        app.get("/v1/feedback?state=resolved", &owner).expect(200)["total"],
        0
    );

    // Pages of two: 2 + 2 + 1, the same items once each, counts of the whole view each time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/feedback?limit=2&cursor={c}"),
            None => "/v1/feedback?limit=2".to_owned(),
        };
        let page = app.get(&path, &owner).expect(200);
        assert_eq!(page["total"], 5);
        for i in page["items"].as_array().unwrap() {
            seen.push(i["feedback_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    app.get("/v1/feedback?limit=0", &owner)
        .problem(422, "validation-failed");
    app.get("/v1/feedback?cursor=zz", &owner)
        .problem(422, "validation-failed");

    // CSV of a filtered view: header, stable columns, RFC 4180 quoting, formula cells neutralised.
    let r = app.send(
        "GET",
        &format!("/v1/feedback.csv?tenant_id={tenant}&screen=exports"),
        &[("Authorization", &bearer(&owner))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.exchange);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    let csv = String::from_utf8(r.body.clone()).unwrap();
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(lines[0], app::feedback::CSV_COLUMNS.join(","));
    assert!(
        csv.contains("\"the download button, does nothing\""),
        "{csv}"
    );
    assert!(csv.contains("\"slow \"\"export\"\" page\""), "{csv}");
    let r = app.send(
        "GET",
        "/v1/feedback.csv?severity=critical",
        &[("Authorization", &bearer(&owner))],
        None,
    );
    let csv = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"x\"\") upload lost\""),
        "{csv}"
    );
}

fn feedback_is_rate_limited_per_user(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let viewer = app.add_member(&owner, "v@example.com", "viewer");
    let body = json!({"message": "hi", "screen": "home", "step": "main", "severity": "low"});
    for _ in 0..app_limit() {
        submit(&app, &owner, &body);
    }
    let r = app.post_json("/v1/feedback", Some(&owner), &body);
    r.problem(429, "rate-limited");
    assert!(r.header("retry-after").is_some());
    // Another user of the same tenant is not limited by it.
    submit(&app, &viewer, &body);
}

fn app_limit() -> u32 {
    api::feedback_routes::PER_USER_PER_MINUTE
}

fn opting_out_keeps_only_screen_step_and_severity(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let created = submit(
        &app,
        &owner,
        &json!({"message": "private words", "screen": "home", "step": "main",
                "severity": "medium", "category": "idea", "diagnostics": false}),
    );
    let item = &app.get("/v1/feedback", &owner).expect(200)["items"][0];
    assert_eq!(item["screen"], "home");
    assert_eq!(item["step"], "main");
    assert_eq!(item["severity"], "medium");
    assert!(item["message"].is_null(), "{item}");
    assert!(item["category"].is_null(), "{item}");
    assert!(item["diagnostics"].is_null(), "{item}");
    // And in the store itself: nothing else in the payload.
    let position = created["global_position"].as_u64().unwrap();
    let events = read_all(&app.location);
    let e = events
        .iter()
        .find(|e| e.global_position == position)
        .unwrap();
    let payload: Value = serde_json::from_slice(e.payload.as_bytes()).unwrap();
    let mut keys: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["feedback_id", "message", "screen", "severity", "step"]
    );
    assert!(payload["message"].is_null());
    assert!(!String::from_utf8_lossy(e.payload.as_bytes()).contains("private words"));
}

fn a_tenant_opts_out_for_every_member(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let viewer = app.add_member(&owner, "v@example.com", "viewer");
    let put = |token: &str, enabled: bool| {
        app.send(
            "PUT",
            "/v1/tenant/feedback-diagnostics",
            &[
                ("Authorization", &bearer(token)),
                ("Content-Type", "application/json"),
            ],
            Some(json!({ "enabled": enabled }).to_string().as_bytes()),
        )
    };
    put(&viewer, false).problem(403, "forbidden");
    let set = put(&owner, false).expect(200);
    assert!(set["global_position"].as_u64().unwrap() > 0);
    assert_eq!(
        put(&owner, false).expect(200)["global_position"],
        0,
        "already off"
    );
    submit(
        &app,
        &viewer,
        &json!({"message": "private words", "screen": "home", "step": "main", "severity": "high"}),
    );
    let item = &app.get("/v1/feedback", &owner).expect(200)["items"][0];
    assert_eq!(item["screen"], "home");
    assert_eq!(item["severity"], "high");
    assert!(item["message"].is_null(), "{item}");
    assert!(item["diagnostics"].is_null(), "{item}");
    put(&owner, true).expect(200);
    submit(
        &app,
        &viewer,
        &json!({"message": "words", "screen": "home", "step": "main", "severity": "low"}),
    );
    let item = &app.get("/v1/feedback", &owner).expect(200)["items"][0];
    assert_eq!(item["message"], "words");
    assert!(item["diagnostics"].is_object(), "{item}");
}

fn read_all(location: &Location) -> Vec<store::Envelope> {
    let location = location.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let store = Store::open(&location).await.unwrap();
            let mut out = Vec::new();
            loop {
                let from = out
                    .last()
                    .map_or(1, |e: &store::Envelope| e.global_position + 1);
                let batch = store.read_all(from, 10_000).await.unwrap();
                if batch.is_empty() {
                    return out;
                }
                out.extend(batch);
            }
        })
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

/// Item 6: the whole labelled corpus through `POST /v1/feedback`, then the raw store searched
/// for every original value.
fn no_original_personal_value_reaches_the_store(app: TestApp) {
    let samples = fixtures::pii_corpus::corpus(0x5EED_2026, 200, 0);
    let originals: Vec<String> = {
        let mut v: Vec<String> = samples
            .iter()
            .flat_map(|s| s.expected.iter().map(|(_, value)| value.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert!(originals.len() > 1000, "{} values", originals.len());
    // Pack the samples into messages of at most 4096 characters.
    let mut messages = vec![String::new()];
    for s in &samples {
        let last = messages.last_mut().unwrap();
        if last.chars().count() + s.text.chars().count() + 2 > 4096 {
            messages.push(String::new());
        }
        let last = messages.last_mut().unwrap();
        if !last.is_empty() {
            last.push_str("\n\n");
        }
        last.push_str(&s.text);
    }
    // A marker that is no personal data: the scan below must find it, or it reads nothing.
    const MARKER: &str = "marker-q7w3e9r1t5y";
    messages.push(format!("the scan must see this: {MARKER}"));
    // Each user may send 10 a minute: one tenant's owner per 10 messages.
    let mut last_position = 0;
    for (n, chunk) in messages.chunks(app_limit() as usize).enumerate() {
        let (_, owner) = app.signup(&format!("Corpus {n}"), &format!("corpus{n}@example.com"));
        for m in chunk {
            let r = submit(
                &app,
                &owner,
                // Messages are stored sealed (ADR 032): the marker's submission also names it as
                // its screen, stored as is, so that the file scan below has something to find.
                &json!({"message": m, "screen": if m.contains(MARKER) { MARKER } else { "support" },
                        "step": "contact", "severity": "low"}),
            );
            last_position = r["global_position"].as_u64().unwrap();
        }
    }
    // The projections have persisted what they saw (the board holds the scrubbed messages).
    assert!(last_position > 0);

    let mut leaked: Vec<String> = Vec::new();
    let mut look = |label: &str, hay: &[u8]| {
        for v in &originals {
            if memchr::memmem::find(hay, v.as_bytes()).is_some() {
                leaked.push(format!("{v:?} in {label}"));
            }
        }
    };
    match &app.location {
        Location::Embedded(dir) => {
            let mut files = Vec::new();
            files_under(dir, &mut files);
            assert!(
                files.iter().any(|(p, _)| p.ends_with("events.db")),
                "{files:?}"
            );
            for (path, bytes) in &files {
                look(path, bytes);
            }
        }
        Location::Postgres(_) => {}
    }
    // Both backends: every stored event's every text field, as stored.
    let events = read_all(&app.location);
    assert!(
        events
            .iter()
            .filter(|e| e.event_type == "feedback.submitted")
            .count()
            == messages.len()
    );
    for e in &events {
        let mut text = e.payload.as_bytes().to_vec();
        for t in [&e.stream_id, &e.actor, &e.event_type] {
            text.extend_from_slice(t.as_bytes());
        }
        if let Some(t) = &e.trace_id {
            text.extend_from_slice(t.as_bytes());
        }
        look(&format!("event {}", e.global_position), &text);
    }
    let (mut marker_in_files, mut marker_in_events) = (false, false);
    if let Location::Embedded(dir) = &app.location {
        let mut files = Vec::new();
        files_under(dir, &mut files);
        marker_in_files = files
            .iter()
            .any(|(_, b)| memchr::memmem::find(b, MARKER.as_bytes()).is_some());
    }
    for e in &events {
        marker_in_events |= memchr::memmem::find(e.payload.as_bytes(), MARKER.as_bytes()).is_some();
    }
    assert!(
        marker_in_events,
        "the marker is not in the events: the scan proves nothing"
    );
    if matches!(app.location, Location::Embedded(_)) {
        assert!(
            marker_in_files,
            "the marker is not in the files: the scan proves nothing"
        );
    }
    assert!(
        leaked.is_empty(),
        "{} original values stored: {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(20)]
    );
}

#[test]
fn embedded_feedback_flows_from_submit_to_triage() {
    feedback_flows_from_submit_to_triage(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_feedback_flows_from_submit_to_triage() {
    feedback_flows_from_submit_to_triage(spawn_app(Backend::Postgres));
}

#[test]
fn embedded_feedback_board_filters_counts_pages_and_exports_csv() {
    the_board_filters_counts_pages_and_exports_csv(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_feedback_board_filters_counts_pages_and_exports_csv() {
    the_board_filters_counts_pages_and_exports_csv(spawn_app(Backend::Postgres));
}

#[test]
fn embedded_feedback_is_rate_limited_per_user() {
    feedback_is_rate_limited_per_user(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_feedback_is_rate_limited_per_user() {
    feedback_is_rate_limited_per_user(spawn_app(Backend::Postgres));
}

#[test]
fn embedded_feedback_opt_out_keeps_only_screen_step_and_severity() {
    opting_out_keeps_only_screen_step_and_severity(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_feedback_opt_out_keeps_only_screen_step_and_severity() {
    opting_out_keeps_only_screen_step_and_severity(spawn_app(Backend::Postgres));
}

#[test]
fn embedded_feedback_privacy_no_original_value_reaches_the_store() {
    no_original_personal_value_reaches_the_store(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_feedback_privacy_no_original_value_reaches_the_store() {
    no_original_personal_value_reaches_the_store(spawn_app(Backend::Postgres));
}

#[test]
fn embedded_feedback_tenant_opt_out_applies_to_every_member() {
    a_tenant_opts_out_for_every_member(spawn_app(Backend::Embedded));
}

#[test]
fn postgres_feedback_tenant_opt_out_applies_to_every_member() {
    a_tenant_opts_out_for_every_member(spawn_app(Backend::Postgres));
}
