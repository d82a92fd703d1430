//! Small doors, closed: anonymous sign-up is rate-limited per client address, `/metrics` is not
//! public and its labels cannot be grown by a client.

mod support;

use support::{Backend, spawn_app_with};

#[test]
fn a_flood_of_signups_from_one_address_gets_429_with_retry_after() {
    let app = spawn_app_with(Backend::Embedded, |s| s.signup_per_minute = 5);
    for i in 0..5 {
        app.signup(&format!("Tenant {i}"), &format!("o{i}@example.com"));
    }
    let head = app.head();
    let body =
        serde_json::json!({"tenant_name": "One too many", "email": "x@example.com", "name": "X"});
    let r = app.post_json("/v1/signup", None, &body);
    r.problem(429, "rate-limited");
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After:\n{}", r.exchange))
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert_eq!(app.head(), head, "a refused sign-up writes nothing");
    // Other routes are not limited by it.
    app.send("GET", "/healthz", &[], None).expect(200);
}

#[test]
fn a_behind_proxy_setting_limits_by_the_forwarded_address() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.signup_per_minute = 1;
        s.trust_forwarded_for = true;
    });
    let signup = |from: &str, n: u32| {
        let body = serde_json::json!({"tenant_name": format!("T{n}"), "email": format!("o{n}@example.com"), "name": "O"})
            .to_string();
        app.send(
            "POST",
            "/v1/signup",
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", from),
            ],
            Some(body.as_bytes()),
        )
    };
    // The proxy appends the address it saw; what the client put before it is not believed.
    signup("203.0.113.1, 198.51.100.7", 1).expect(201);
    signup("203.0.113.2, 198.51.100.7", 2).problem(429, "rate-limited");
    signup("198.51.100.8", 3).expect(201);
}

#[test]
fn metrics_need_the_token_when_one_is_set_and_labels_stay_bounded() {
    let token = "scrape-0123456789abcdef";
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.metrics_token = Some(api::settings::Secret(token.into()));
    });
    app.send("GET", "/metrics", &[], None)
        .problem(401, "unauthorized");
    app.send(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer wrong-token-000000")],
        None,
    )
    .problem(401, "unauthorized");
    for method in ["BREW", "PROPFIND", "XYZZY"] {
        app.send(method, "/v1/me", &[], None);
    }
    let r = app.send(
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.exchange);
    let text = String::from_utf8(r.body).unwrap();
    for method in ["BREW", "PROPFIND", "XYZZY"] {
        assert!(!text.contains(method), "{method} became a label:\n{text}");
    }
    assert!(text.contains(r#"method="OTHER""#), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

/// An answer worth retrying (here a 429) is not kept under its Idempotency-Key: the key is still
/// free, so the same key with another body is not "reused", and a retry runs again.
#[test]
fn a_retryable_answer_is_not_kept_under_its_idempotency_key() {
    let app = spawn_app_with(Backend::Embedded, |s| s.signup_per_minute = 1);
    app.signup("First", "first@example.com");
    let send = |name: &str| {
        let body = serde_json::json!({"tenant_name": name, "email": "k@example.com", "name": "K"})
            .to_string();
        app.send(
            "POST",
            "/v1/signup",
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "retry-me"),
            ],
            Some(body.as_bytes()),
        )
    };
    send("Second").problem(429, "rate-limited");
    let again = send("Another body");
    again.problem(429, "rate-limited");
    assert_eq!(again.header("idempotency-replayed"), None);
}

/// A sign-up that went through is replayed for its key without spending the address's limit.
#[test]
fn a_replayed_signup_does_not_spend_the_rate_limit() {
    let app = spawn_app_with(Backend::Embedded, |s| s.signup_per_minute = 1);
    let body = serde_json::json!({"tenant_name": "Once", "email": "o@example.com", "name": "O"})
        .to_string();
    let send = || {
        app.send(
            "POST",
            "/v1/signup",
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "once"),
            ],
            Some(body.as_bytes()),
        )
    };
    let first = send().expect(201);
    let again = send();
    assert_eq!(again.expect(201)["tenant_id"], first["tenant_id"]);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
}

/// Behind a proxy every client connects from loopback: without a token, /metrics stays closed.
#[test]
fn metrics_are_not_open_to_proxied_clients_without_a_token() {
    let direct = spawn_app_with(Backend::Embedded, |_| {});
    let open = direct.send("GET", "/metrics", &[], None);
    assert_eq!(open.status, 200, "{}", open.exchange);
    direct
        .send(
            "GET",
            "/metrics",
            &[("X-Forwarded-For", "203.0.113.9")],
            None,
        )
        .problem(403, "forbidden");
    let proxied = spawn_app_with(Backend::Embedded, |s| s.trust_forwarded_for = true);
    proxied
        .send("GET", "/metrics", &[], None)
        .problem(403, "forbidden");
}
