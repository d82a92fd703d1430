//! Every route fed malformed and hostile input: random bytes, wrong types, huge and odd Unicode
//! strings, deep nesting, duplicated keys and headers. Never a 5xx, always a problem document for
//! an error, and nothing written by a refused request.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestApp, spawn_app};

/// A small deterministic generator, so a failure is reproducible from its case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hostile_string(rng: &mut Rng) -> Value {
    let pool = [
        "".to_owned(),
        " ".to_owned(),
        "x".repeat(50_000),
        "\u{202E}evil\u{202C}".to_owned(),
        "zero\u{200B}width".to_owned(),
        "nul\u{0000}byte".to_owned(),
        "🚀".repeat(1000),
        "Robert'); DROP TABLE events;--".to_owned(),
        "<script>alert(1)</script>".to_owned(),
        "../../etc/passwd".to_owned(),
        "a@b.c".to_owned(),
        "ok@example.com".to_owned(),
        "owner".to_owned(),
        "\\ud800".to_owned(),
        "ａｄｍｉｎ".to_owned(),
    ];
    Value::String(pool[rng.below(pool.len() as u64) as usize].clone())
}

fn hostile_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.next().is_multiple_of(2)),
        2 => json!(rng.next() as i64),
        3 => json!(-0.0),
        4 | 5 => hostile_string(rng),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| hostile_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for key in [
                "tenant_name",
                "email",
                "name",
                "role",
                "enabled",
                "extra",
                "sql",
                "dataset_id",
                "format",
                "preset",
                "columns",
                "text",
            ] {
                if rng.below(3) > 0 {
                    m.insert(key.to_owned(), hostile_value(rng, depth + 1));
                }
            }
            Value::Object(m)
        }
    }
}

fn hostile_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => (0..rng.below(2_000)).map(|_| rng.next() as u8).collect(),
        1 => format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
        2 => br#"{"email": "a@example.com", "email": "b@example.com", "name": "x", "role": "viewer"}"#.to_vec(),
        3 => br#"{"tenant_name": "A", "email": "a@example.com", "name": 1e999}"#.to_vec(),
        4 => b"{\"tenant_name\": \"\xff\xfe\", \"email\": \"a@example.com\", \"name\": \"n\"}".to_vec(),
        _ => hostile_value(rng, 0).to_string().into_bytes(),
    }
}

#[track_caller]
fn check(app: &TestApp, r: &support::Response, head_before: u64) {
    assert!(r.status < 500, "server error:\n{}", r.exchange);
    assert!(
        r.header("x-request-id").is_some(),
        "no request id:\n{}",
        r.exchange
    );
    if r.status >= 400 {
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{}",
            r.exchange
        );
        assert_eq!(
            app.head(),
            head_before,
            "a refused request wrote something:\n{}",
            r.exchange
        );
    }
}

fn hostile_bodies_never_break_the_service(app: TestApp) {
    let (tenant, owner) = app.signup("Fuzz", "fuzz@example.com");
    let ops = app.operator_token(domain::PlatformRole::Ops);
    let owner_auth = format!("Bearer {owner}");
    let ops_auth = format!("Bearer {ops}");
    let flag_path = format!("/v1/tenants/{tenant}/flags/auditV12");
    let dataset = app
        .send(
            "POST",
            "/v1/datasets?name=fuzz",
            &[("Authorization", &owner_auth), ("Content-Type", "text/csv")],
            Some(b"id,email\n1,a@example.com\n"),
        )
        .expect(201)["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let query_path = format!("/v1/datasets/{dataset}/query");
    let targets: [(&str, &str, Option<&str>); 7] = [
        ("POST", &query_path, Some(&owner_auth)),
        ("POST", "/v1/exports", Some(&owner_auth)),
        ("POST", "/v1/presets", Some(&owner_auth)),
        ("POST", "/v1/signup", None),
        ("PATCH", "/v1/tenant", Some(&owner_auth)),
        ("POST", "/v1/members", Some(&owner_auth)),
        ("PUT", &flag_path, Some(&ops_auth)),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..60 {
        for (method, path, auth) in targets {
            let body = hostile_body(&mut rng);
            let content_type = [
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "application/x-www-form-urlencoded",
            ][rng.below(4) as usize];
            let mut headers = vec![("Content-Type", content_type)];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let head = app.head();
            let r = app.send(method, path, &headers, Some(&body));
            check(&app, &r, head);
            let _ = case;
        }
    }
    // Hostile headers and query strings.
    let head = app.head();
    let long = "a".repeat(20_000);
    for headers in [
        vec![("Authorization", "Bearer")],
        vec![("Authorization", "Bearer tnt_")],
        vec![("Authorization", long.as_str())],
        vec![
            ("traceparent", "00-zzzz-zzzz-01"),
            ("Authorization", owner_auth.as_str()),
        ],
        vec![
            ("x-request-id", long.as_str()),
            ("Authorization", owner_auth.as_str()),
        ],
    ] {
        let r = app.send("GET", "/v1/me", &headers, None);
        check(&app, &r, head);
    }
    for query in [
        "min_position=-1",
        "min_position=99999999999999999999999",
        "min_position=%00",
        "limit=1&limit=2",
        "cursor=%FF%FE",
        "type=%E2%80%AE",
    ] {
        let r = app.send(
            "GET",
            &format!("/v1/audit/events?{query}"),
            &[("Authorization", &owner_auth)],
            None,
        );
        check(&app, &r, head);
    }
    // Bytes that are not valid in an HTTP field value are refused by the HTTP parser itself,
    // before any of our code runs: a plain 400, never a crash.
    for raw in [
        &b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"[..],
        &b"GET /v1/me HTTP/1.1\r\nHost: x\r\nIdempotency-Key: \x7f\r\nConnection: close\r\n\r\n"[..],
    ] {
        let r = app.raw(raw);
        assert!(r.status < 500, "{}", r.exchange);
    }
    assert_eq!(app.head(), head);
    // Still healthy, still serving.
    app.send("GET", "/healthz", &[], None).expect(200);
    app.get("/v1/me", &owner).expect(200);
}

#[test]
fn hostile_bodies_never_break_the_service_embedded() {
    hostile_bodies_never_break_the_service(spawn_app(Backend::Embedded));
}

#[test]
fn hostile_bodies_never_break_the_service_postgres() {
    hostile_bodies_never_break_the_service(spawn_app(Backend::Postgres));
}
