//! The service through real HTTP, on both stores: identity, roles, flags, idempotency, the audit
//! feed, read-your-writes, and errors as problem documents.

mod support;

use api::rbac::{Access, ROUTES, Role};
use domain::{PlatformRole, TenantRole};
use serde_json::{Value, json};
use support::{Backend, TestApp, spawn_app, spawn_app_with};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn signup_returns_a_token_that_works_at_once_and_is_never_stored(app: TestApp) {
    let body = json!({"tenant_name": "Acme Analytics", "email": "Ada@Example.com", "name": "Ada Lovelace"});
    let r = app.post_json("/v1/signup", None, &body);
    let created = r.expect(201);
    assert!(r.header("x-request-id").is_some());
    let token = created["token"].as_str().unwrap();
    assert!(created["global_position"].as_u64().unwrap() >= 1);
    let me = app.get("/v1/me", token).expect(200);
    assert_eq!(me["role"], "owner");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["tenant_id"], created["tenant_id"]);
    let tenant = app.get("/v1/tenant", token).expect(200);
    assert_eq!(tenant["plan"], "free");
    assert_eq!(tenant["name"], "Acme Analytics");
    // The log holds the token's hash, never the token.
    let audit = app.get("/v1/audit/events", token).expect(200);
    let text = audit.to_string();
    assert!(!text.contains(token), "the token must not be stored");
    let issued = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "token.issued")
        .expect("a token.issued event");
    assert_eq!(
        issued["payload"]["token_sha256"],
        api::tokens::sha256_hex(token.as_bytes())
    );
}

fn signup_validates_every_field_and_writes_nothing_when_refused(app: TestApp) {
    let before = app.head();
    let r = app.post_json(
        "/v1/signup",
        None,
        &json!({"tenant_name": " ", "email": "nope", "name": "a\u{202E}b"}),
    );
    let p = r.problem(422, "validation-failed");
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["tenant_name", "email", "name"]);
    for (body, status, slug) in [
        (
            json!({"tenant_name": "A", "email": "a@b.co"}),
            422,
            "validation-failed",
        ),
        (
            json!({"tenant_name": "A", "email": "a@b.co", "name": "N", "plan": "enterprise"}),
            422,
            "validation-failed",
        ),
        (
            json!({"tenant_name": 7, "email": "a@b.co", "name": "N"}),
            422,
            "validation-failed",
        ),
        (
            json!({"tenant_name": "x".repeat(101), "email": "a@b.co", "name": "N"}),
            422,
            "validation-failed",
        ),
        (json!([1, 2, 3]), 422, "validation-failed"),
        (json!(null), 422, "validation-failed"),
    ] {
        app.post_json("/v1/signup", None, &body)
            .problem(status, slug);
    }
    assert_eq!(app.head(), before, "refused requests write nothing");
}

fn members_get_their_role_and_token_and_admins_cannot_make_owners(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let admin = app.add_member(&owner, "admin@example.com", "admin");
    let analyst = app.add_member(&admin, "ana@example.com", "analyst");
    assert_eq!(app.get("/v1/me", &analyst).expect(200)["role"], "analyst");
    let body = json!({"email": "boss@example.com", "name": "Boss", "role": "owner"});
    app.post_json("/v1/members", Some(&admin), &body)
        .problem(403, "forbidden");
    // The Free plan has 3 seats: a fourth member needs an upgrade.
    let p = app
        .post_json("/v1/members", Some(&owner), &body)
        .problem(409, "seat-limit");
    assert!(p["detail"].as_str().unwrap().contains("3 seats"), "{p}");
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    app.post_json("/v1/members", Some(&owner), &body)
        .expect(201);
    let dup = json!({"email": "ANA@example.com", "name": "Again", "role": "viewer"});
    app.post_json("/v1/members", Some(&owner), &dup)
        .problem(409, "member-exists");
    let bad_role = json!({"email": "x@example.com", "name": "X", "role": "root"});
    let p = app
        .post_json("/v1/members", Some(&owner), &bad_role)
        .problem(422, "validation-failed");
    assert_eq!(p["errors"][0]["field"], "role");
    assert_eq!(app.get("/v1/tenant", &owner).expect(200)["members"], 4);
}

fn a_revoked_token_stops_working_at_once(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let viewer = app.add_member(&owner, "v@example.com", "viewer");
    app.send(
        "DELETE",
        "/v1/tokens/current",
        &[("Authorization", &bearer(&viewer))],
        None,
    )
    .expect(200);
    app.get("/v1/me", &viewer).problem(401, "unauthorized");
    app.get("/v1/me", &owner).expect(200);
    // Renaming: a one-event command; the same name again is refused.
    let auth = bearer(&owner);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    app.send("PATCH", "/v1/tenant", &h, Some(br#"{"name": "Acme 2"}"#))
        .expect(200);
    app.send("PATCH", "/v1/tenant", &h, Some(br#"{"name": "Acme 2"}"#))
        .problem(409, "no-change");
    app.send("PATCH", "/v1/tenant", &h, Some(br#"{"name": ""}"#))
        .problem(422, "validation-failed");
    assert_eq!(app.get("/v1/tenant", &owner).expect(200)["name"], "Acme 2");
    let ops = app.operator_token(PlatformRole::Ops);
    app.get("/v1/me", &ops).expect(200);
    app.send(
        "DELETE",
        "/v1/tokens/current",
        &[("Authorization", &bearer(&ops))],
        None,
    )
    .expect(200);
    app.get("/v1/me", &ops).problem(401, "unauthorized");
}

/// Every route of the permission table, called with every role: allowed roles get through the
/// gate, the others get 403; a missing or bogus token gets 401.
fn every_route_answers_every_role_as_the_table_says(app: TestApp) {
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    // Enough seats for a member of every role (and the members the walk adds).
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let mut tokens: Vec<(Role, String)> = vec![(Role::Tenant(TenantRole::Owner), owner.clone())];
    for role in TenantRole::ALL.iter().filter(|r| **r != TenantRole::Owner) {
        let token = app.add_member(&owner, &format!("{role}@example.com"), role.as_str());
        tokens.push((Role::Tenant(*role), token));
    }
    for role in PlatformRole::ALL {
        tokens.push((Role::Platform(*role), app.operator_token(*role)));
    }
    assert_eq!(tokens.len(), Role::all().len());
    let csv = b"id,email\n1,a@example.com\n".to_vec();
    let owner_auth = bearer(&owner);
    let upload = |name: &str| {
        let r = app.send(
            "POST",
            &format!("/v1/datasets?name={name}"),
            &[("Authorization", &owner_auth), ("Content-Type", "text/csv")],
            Some(&csv),
        );
        r.expect(201)["dataset_id"].as_str().unwrap().to_owned()
    };
    let dataset = upload("walk");
    let export = app
        .post_json(
            "/v1/exports",
            Some(&owner),
            &json!({"dataset_id": dataset, "format": "csv"}),
        )
        .expect(201)["export_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let preset_body =
        json!({"name": "walk", "text": {"detectors": ["email"], "method": "replace"}}).to_string();
    let new_preset = || {
        app.post_json(
            "/v1/presets",
            Some(&owner),
            &serde_json::from_str(&preset_body).unwrap(),
        )
        .expect(201)["preset_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let preset = new_preset();
    let feedback_body =
        json!({"message": "walk", "screen": "walk", "step": "walk", "severity": "low"});
    let feedback = app
        .post_json("/v1/feedback", Some(&owner), &feedback_body)
        .expect(201)["feedback_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for spec in ROUTES {
        let mut path = spec
            .path
            .replace("{tenant_id}", &tenant)
            .replace("{flag}", "insightsV11")
            .replace("{dataset_id}", &dataset)
            .replace("{export_id}", &export)
            .replace("{preset_id}", &preset)
            .replace("{name}", "catalog")
            .replace("{nudge_id}", "upload-first-dataset")
            .replace("{feedback_id}", &feedback)
            .replace("{kind}", "export");
        let mut content_type = "application/json";
        if (spec.method, spec.path) == ("POST", "/v1/datasets") {
            path.push_str("?name=walk");
            content_type = "text/csv";
        }
        if (spec.method, spec.path) == ("POST", "/v1/invites/csv") {
            content_type = "text/csv";
        }
        if (spec.method, spec.path) == ("GET", "/v1/ops/reconciliation") {
            path.push_str("?from=2000-01-01&to=2000-01-02");
        }
        let body: Option<Vec<u8>> = match (spec.method, spec.path) {
            ("POST", "/v1/members") => None, // a body is sent per role below
            ("POST", "/v1/datasets") => Some(csv.clone()),
            ("POST", "/v1/datasets/{dataset_id}/query") => Some(br#"{"sql": "SELECT 1"}"#.to_vec()),
            ("POST", "/v1/exports") => Some(
                json!({"dataset_id": dataset, "format": "csv"})
                    .to_string()
                    .into_bytes(),
            ),
            ("POST", "/v1/presets") | ("PUT", "/v1/presets/{preset_id}") => {
                Some(preset_body.clone().into_bytes())
            }
            ("POST", "/v1/usage") => Some(br#"{"meter": "queries", "units": 1}"#.to_vec()),
            ("POST", "/v1/audit/bundles") => {
                Some(br#"{"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}"#.to_vec())
            }
            // Nobody's data: the walk must not erase the members it walks with.
            ("POST", "/v1/audit/erasures") => {
                Some(br#"{"user_id": "00000000-0000-4000-8000-0000000000ee"}"#.to_vec())
            }
            ("POST", "/v1/tenant/plan") => Some(br#"{"plan": "enterprise"}"#.to_vec()),
            ("POST", "/v1/invites/csv") => Some(b"walk-csv@example.com,viewer\r\n".to_vec()),
            ("POST", "/v1/tokens") | ("DELETE", "/v1/tokens/{token_id}") => None,
            ("POST", "/v1/ops/invoices/finalize") => Some(br#"{"period": "2000-01"}"#.to_vec()),
            ("POST", "/v1/invoices/{number}/credit-notes") => {
                Some(br#"{"amount_minor": 1, "reason": "walk"}"#.to_vec())
            }
            ("POST", "/v1/onboarding/position") => {
                Some(br#"{"screen": "walk", "step": "first_query"}"#.to_vec())
            }
            ("POST", "/v1/onboarding/nudges/{nudge_id}/snooze") => Some(br#"{"minutes": 5}"#.to_vec()),
            ("POST", "/v1/feedback") => Some(feedback_body.to_string().into_bytes()),
            ("PUT", "/v1/audit/retention") => Some(
                br#"{"rules": [{"name": "members", "event_types": ["member.added"], "fields": ["/email"], "keep_days": 30}]}"#
                    .to_vec(),
            ),
            // A stop (minutes 0): the walk itself must not be drilled.
            ("PUT", "/v1/ops/drill") => Some(
                br#"{"error_ratio": 0, "added_latency_ms": 0, "route_prefix": "/", "minutes": 0}"#
                    .to_vec(),
            ),
            ("PUT", "/v1/sso/settings") => Some(
                br#"{"issuer": "https://idp.example", "audience": "walk", "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}"#
                    .to_vec(),
            ),
            ("PUT", "/v1/sso/mapping") | ("POST", "/v1/sso/mapping/preview") => Some(
                br#"{"rules": [{"group": "eng", "grant": "analyst", "priority": 1}], "default_role": "viewer"}"#
                    .to_vec(),
            ),
            ("PUT", _) => Some(br#"{"enabled": true}"#.to_vec()),
            ("PATCH", _) => None, // a body is sent per role below
            ("POST", _) => Some(b"{}".to_vec()),
            _ => None,
        };
        // SCIM routes take the tenant's SCIM token, never a member's or an operator's: every
        // role is refused with a SCIM error (tests/scim.rs walks them with a SCIM token).
        if let Access::Scim = spec.access {
            let path = path.replace("{id}", &uuid::Uuid::nil().to_string());
            let none = app.send(spec.method, &path, &[], body.as_deref());
            assert_eq!(none.status, 401, "{}", none.exchange);
            for (role, token) in &tokens {
                let r = app.send(
                    spec.method,
                    &path,
                    &[
                        ("Authorization", &bearer(token)),
                        ("Content-Type", "application/scim+json"),
                    ],
                    body.as_deref(),
                );
                assert_eq!(r.status, 401, "{role} on a SCIM route:\n{}", r.exchange);
                assert_eq!(r.header("content-type"), Some("application/scim+json"));
            }
            continue;
        }
        let Access::Roles(_) = spec.access else {
            let r = app.send(
                spec.method,
                &path,
                &[("Content-Type", content_type)],
                body.as_deref(),
            );
            assert!(
                r.status != 401 && r.status != 403,
                "public route refused:\n{}",
                r.exchange
            );
            continue;
        };
        // No token, and a well-formed unknown token.
        app.send(spec.method, &path, &[], body.as_deref())
            .problem(401, "unauthorized");
        let unknown = format!("tnt_{}", "ab".repeat(32));
        app.send(
            spec.method,
            &path,
            &[("Authorization", &bearer(&unknown))],
            body.as_deref(),
        )
        .problem(401, "unauthorized");
        for (role, token) in &tokens {
            if spec.path == "/v1/tokens/current"
                || (spec.method, spec.path) == ("POST", "/v1/tokens")
            {
                continue; // checked below: calling it revokes the token
            }
            // Members who leave and tokens revoked by id: each role acts on a member (or token)
            // of its own, made for the walk, so that the walk's tokens keep working.
            let (path, token) = member_walk_target(&app, &owner, spec, *role, token, &path);
            let token = &token;
            let member_body = json!({"email": format!("new-{role}-{}@example.com", spec.method), "name": "N", "role": "viewer"})
                .to_string()
                .into_bytes();
            let rename_body = json!({"name": format!("Renamed by {role}")})
                .to_string()
                .into_bytes();
            let body = match (spec.method, spec.path) {
                ("POST", "/v1/members") => Some(member_body),
                ("PATCH", "/v1/tenant") => Some(rename_body),
                ("PATCH", "/v1/members/{user_id}") => Some(br#"{"role": "analyst", "reason": "walk"}"#.to_vec()),
                ("POST", "/v1/invites") => Some(
                    json!({"email": format!("invited-{role}@example.com"), "role": "viewer"})
                        .to_string()
                        .into_bytes(),
                ),
                ("PATCH", "/v1/feedback/{feedback_id}") => {
                    Some(br#"{"labels": ["walk"], "priority": "p2"}"#.to_vec())
                }
                // Each allowed role moves the plan up one step, so none is a no-op.
                ("POST", "/v1/tenant/plan") => Some(
                    json!({"plan": if *role == Role::Tenant(TenantRole::Owner) { "pro" } else { "enterprise" }})
                        .to_string()
                        .into_bytes(),
                ),
                // Each allowed role sets another mode, so none is a no-op.
                ("PUT", "/v1/tenants/{tenant_id}/billing-mode") => Some(
                    json!({"mode": if role.to_string() == "platform:finance" { "active_test" } else { "active_live" }, "reason": "walk"})
                        .to_string()
                        .into_bytes(),
                ),
                _ => body.clone(),
            };
            // Each deletion gets a dataset of its own.
            let path = match (spec.method, spec.path) {
                ("DELETE", "/v1/datasets/{dataset_id}") => {
                    format!("/v1/datasets/{}", upload("to-delete"))
                }
                ("DELETE", "/v1/presets/{preset_id}") => format!("/v1/presets/{}", new_preset()),
                _ => path.clone(),
            };
            let auth = bearer(token);
            let r = app.send(
                spec.method,
                &path,
                &[("Authorization", &auth), ("Content-Type", content_type)],
                body.as_deref(),
            );
            if api::rbac::allows(spec, *role) {
                // No invoice can be final in a fresh service (its period must have ended a day
                // before): an invoice number is not found, once the role was let through.
                if spec.path.contains("{number}") && r.status == 404 {
                    r.problem(404, "not-found");
                    continue;
                }
                assert!(
                    r.status < 400,
                    "{role} should be allowed on {} {}:\n{}",
                    spec.method,
                    spec.path,
                    r.exchange
                );
            } else {
                let p = r.problem(403, "forbidden");
                assert_eq!(p["role"], role.to_string());
            }
        }
    }
    // POST /v1/tokens (rotation) is open to every tenant role: each gets a new token, and the
    // old one stops.
    for (role, token) in tokens.iter_mut() {
        let r = app.send(
            "POST",
            "/v1/tokens",
            &[("Authorization", &bearer(token))],
            None,
        );
        if matches!(role, Role::Tenant(_)) {
            let new = r.expect(201)["token"].as_str().unwrap().to_owned();
            app.get("/v1/me", token).problem(401, "unauthorized");
            *token = new;
        } else {
            let p = r.problem(403, "forbidden");
            assert_eq!(p["role"], role.to_string());
        }
    }
    // DELETE /v1/tokens/current is open to every role: each revokes its own token.
    for (role, token) in &tokens {
        let r = app.send(
            "DELETE",
            "/v1/tokens/current",
            &[("Authorization", &bearer(token))],
            None,
        );
        assert_eq!(r.status, 200, "{role}:\n{}", r.exchange);
    }
}

fn ops_turn_a_feature_off_for_one_tenant_only(app: TestApp) {
    let (a_id, a) = app.signup("A", "a@example.com");
    let (_, b) = app.signup("B", "b@example.com");
    let ops = app.operator_token(PlatformRole::Ops);
    let support = app.operator_token(PlatformRole::Support);
    app.get("/v1/audit/events", &a).expect(200);
    let off = app.send(
        "PUT",
        &format!("/v1/tenants/{a_id}/flags/auditV12"),
        &[
            ("Authorization", &bearer(&ops)),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled": false}"#),
    );
    let set = off.expect(200);
    assert_eq!(set["enabled"], false);
    let p = app
        .get("/v1/audit/events", &a)
        .problem(403, "feature-disabled");
    assert_eq!(p["flag"], "auditV12");
    app.get("/v1/audit/events", &b).expect(200);
    assert_eq!(
        app.get("/v1/flags", &a).expect(200)["flags"]["auditV12"],
        false
    );
    assert_eq!(
        app.get("/v1/flags", &b).expect(200)["flags"]["auditV12"],
        true
    );
    let seen = app
        .get(&format!("/v1/tenants/{a_id}/flags"), &support)
        .expect(200);
    assert_eq!(seen["overrides"]["auditV12"], false);
    // Unknown flags and tenants are 404; the flag change is an event in the tenant's history.
    app.send(
        "PUT",
        &format!("/v1/tenants/{a_id}/flags/nope"),
        &[
            ("Authorization", &bearer(&ops)),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled": true}"#),
    )
    .problem(404, "not-found");
    app.send(
        "PUT",
        &format!("/v1/tenants/{}/flags/auditV12", uuid::Uuid::new_v4()),
        &[
            ("Authorization", &bearer(&ops)),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled": true}"#),
    )
    .problem(404, "not-found");
    app.send(
        "PUT",
        &format!("/v1/tenants/{a_id}/flags/auditV12"),
        &[
            ("Authorization", &bearer(&ops)),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled": true}"#),
    )
    .expect(200);
    let events = app.get("/v1/audit/events?type=flag.set", &a).expect(200);
    let flips: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["enabled"])
        .collect();
    assert_eq!(flips, [&json!(false), &json!(true)]);
    assert!(
        events["events"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("operator:")
    );
}

fn a_retried_request_with_the_same_idempotency_key_is_applied_once(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let body = json!({"email": "m@example.com", "name": "M", "role": "viewer"}).to_string();
    let auth = bearer(&owner);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "add-m-1"),
    ];
    let first = app.send("POST", "/v1/members", &headers, Some(body.as_bytes()));
    let first_body = first.expect(201);
    let again = app.send("POST", "/v1/members", &headers, Some(body.as_bytes()));
    let replayed = again.json();
    assert_eq!(again.status, 201);
    assert_eq!(
        replayed["user_id"], first_body["user_id"],
        "the first response is replayed"
    );
    assert_eq!(replayed["global_position"], first_body["global_position"]);
    // The token is kept sealed for the key's retention: a client whose first answer was lost
    // still gets the member's token, and it works.
    assert!(first_body["token"].is_string());
    assert_eq!(replayed["token"], first_body["token"]);
    assert_eq!(replayed.get("token_redacted"), None);
    app.get("/v1/me", replayed["token"].as_str().unwrap())
        .expect(200);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(
        again.header("location"),
        first.header("location"),
        "the replay keeps the first answer's headers"
    );
    // Keys are per caller: another member using the same key runs their own request.
    app.send(
        "POST",
        "/v1/tenant/plan",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"plan": "pro"}"#),
    )
    .expect(200);
    let admin = app.add_member(&owner, "admin@example.com", "admin");
    let admin_auth = bearer(&admin);
    let theirs = app.send(
        "POST",
        "/v1/members",
        &[
            ("Authorization", admin_auth.as_str()),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "add-m-1"),
        ],
        Some(
            json!({"email": "n@example.com", "name": "N", "role": "viewer"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_ne!(theirs.expect(201)["user_id"], first_body["user_id"]);
    let other = json!({"email": "other@example.com", "name": "O", "role": "viewer"}).to_string();
    app.send("POST", "/v1/members", &headers, Some(other.as_bytes()))
        .problem(422, "idempotency-key-reused");
    assert_eq!(app.get("/v1/tenant", &owner).expect(200)["members"], 4);
    // A refused request is replayed as refused; sign-up keys work without a token.
    let signup = json!({"tenant_name": "B", "email": "b@example.com", "name": "B"}).to_string();
    let sh = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "signup-1"),
    ];
    let s1 = app
        .send("POST", "/v1/signup", &sh, Some(signup.as_bytes()))
        .expect(201);
    let s2 = app
        .send("POST", "/v1/signup", &sh, Some(signup.as_bytes()))
        .expect(201);
    assert_eq!(s1["tenant_id"], s2["tenant_id"]);
    assert_eq!(
        s2["token"], s1["token"],
        "a retried sign-up gets the owner's token back"
    );
    app.send(
        "POST",
        "/v1/signup",
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ],
        Some(signup.as_bytes()),
    )
    .problem(400, "bad-request");
}

fn the_audit_feed_filters_pages_and_stays_inside_the_tenant(app: TestApp) {
    let (_, a) = app.signup("A", "a@example.com");
    app.post_json("/v1/tenant/plan", Some(&a), &json!({"plan": "pro"}))
        .expect(200);
    let (_, b) = app.signup("B", "b@example.com");
    for i in 0..7 {
        app.add_member(&a, &format!("m{i}@example.com"), "viewer");
    }
    app.add_member(&b, "b2@example.com", "viewer");
    // A: signed_up + member.added + token.issued + plan.changed, then 7 × (member.added +
    // token.issued) = 18.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/audit/events?limit=4&cursor={c}"),
            None => "/v1/audit/events?limit=4".to_owned(),
        };
        let page = app.get(&path, &a).expect(200);
        for e in page["events"].as_array().unwrap() {
            seen.push(e["global_position"].as_u64().unwrap());
            assert_eq!(e["tenant_id"], app.get("/v1/me", &a).json()["tenant_id"]);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 18, "every event once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in commit order");
    let members = app
        .get("/v1/audit/events?type=member.added", &a)
        .expect(200);
    assert_eq!(members["events"].as_array().unwrap().len(), 8);
    let me = app.get("/v1/me", &a).json();
    let mine = app
        .get(
            &format!(
                "/v1/audit/events?actor=user:{}&limit=500",
                me["user_id"].as_str().unwrap()
            ),
            &a,
        )
        .expect(200);
    assert_eq!(mine["events"].as_array().unwrap().len(), 18);
    let future = app
        .get("/v1/audit/events?from=2999-01-01T00:00:00Z", &a)
        .expect(200);
    assert!(future["events"].as_array().unwrap().is_empty());
    let past = app
        .get("/v1/audit/events?to=2000-01-01T00:00:00Z", &a)
        .expect(200);
    assert!(past["events"].as_array().unwrap().is_empty());
    app.get("/v1/audit/events?from=yesterday", &a)
        .problem(422, "validation-failed");
    app.get("/v1/audit/events?cursor=garbage", &a)
        .problem(422, "validation-failed");
    app.get("/v1/audit/events?limit=0", &a)
        .problem(422, "validation-failed");
    app.get("/v1/audit/events?limit=abc", &a)
        .problem(400, "bad-query");
    app.get("/v1/audit/events?sort=asc", &a)
        .problem(400, "bad-query");
    assert_eq!(
        app.get("/v1/audit/events", &b).expect(200)["events"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let viewer = app.add_member(&a, "late@example.com", "viewer");
    app.get("/v1/audit/events", &viewer)
        .problem(403, "forbidden");
}

fn errors_are_problem_documents_with_request_ids_and_traces_reach_the_events(app: TestApp) {
    let r = app.send("GET", "/nowhere", &[], None);
    r.problem(404, "not-found");
    assert!(r.header("x-request-id").is_some());
    app.send("PATCH", "/v1/me", &[], None)
        .problem(405, "method-not-allowed");
    app.send(
        "POST",
        "/v1/signup",
        &[("Content-Type", "text/plain")],
        Some(b"hi"),
    )
    .problem(415, "unsupported-media-type");
    app.send(
        "POST",
        "/v1/signup",
        &[("Content-Type", "application/json")],
        Some(b"{\"tenant_name\": "),
    )
    .problem(400, "bad-request");
    let huge = vec![b'a'; 70 * 1024];
    app.send(
        "POST",
        "/v1/signup",
        &[("Content-Type", "application/json")],
        Some(&huge),
    )
    .problem(413, "payload-too-large");
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.send(
        "GET",
        "/v1/me",
        &[
            ("Authorization", &bearer(&owner)),
            ("Authorization", &bearer(&owner)),
        ],
        None,
    )
    .problem(400, "bad-request");
    app.send(
        "GET",
        "/v1/me",
        &[("Authorization", "Bearer not-a-token")],
        None,
    )
    .problem(401, "unauthorized");
    app.send(
        "GET",
        "/v1/me",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
        None,
    )
    .problem(401, "unauthorized");
    // x-request-id is echoed when it is plain, and a valid traceparent reaches the events.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = json!({"email": "t@example.com", "name": "T", "role": "viewer"}).to_string();
    let r = app.send(
        "POST",
        "/v1/members",
        &[
            ("Authorization", &bearer(&owner)),
            ("Content-Type", "application/json"),
            ("x-request-id", "req-123"),
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
        ],
        Some(body.as_bytes()),
    );
    r.expect(201);
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let events = app
        .get("/v1/audit/events?type=member.added", &owner)
        .expect(200);
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["trace_id"], trace);
    let r = app.send(
        "GET",
        "/healthz",
        &[("x-request-id", "bad id with spaces")],
        None,
    );
    assert_ne!(r.header("x-request-id"), Some("bad id with spaces"));
}

/// A position beyond the log's head cannot be waited for: it is the client's error (404
/// `position-not-written`, no `Retry-After`), not the service's (503 is only for a position the
/// store has and this instance has not applied yet).
fn reads_wait_for_min_position_and_refuse_one_never_written(app: TestApp) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    let r = app.post_json(
        "/v1/members",
        Some(&owner),
        &json!({"email": "x@example.com", "name": "X", "role": "viewer"}),
    );
    let position = r.expect(201)["global_position"].as_u64().unwrap();
    assert_eq!(
        app.get(&format!("/v1/tenant?min_position={position}"), &owner)
            .expect(200)["members"],
        2
    );
    let r = app.get(
        &format!("/v1/tenant?min_position={}", position + 1_000_000),
        &owner,
    );
    let p = r.problem(404, "position-not-written");
    assert_eq!(p["min_position"], position + 1_000_000);
    assert!(
        p["head_position"].as_u64() >= Some(position),
        "{}",
        r.exchange
    );
    assert_eq!(r.header("retry-after"), None, "{}", r.exchange);
}

fn the_openapi_document_and_metrics_describe_the_service(app: TestApp) {
    let doc = app.send("GET", "/openapi.json", &[], None).expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    for spec in ROUTES {
        let op = &doc["paths"][spec.path][spec.method.to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from the OpenAPI document",
            spec.method,
            spec.path
        );
        assert!(op["responses"].as_object().unwrap().len() >= 2);
    }
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.get("/v1/me", &owner).expect(200);
    let text = String::from_utf8(app.send("GET", "/metrics", &[], None).body).unwrap();
    assert!(text.contains("tenantry_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/me\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("tenantry_http_request_duration_seconds_bucket{le=\"+Inf\",method=\"GET\",route=\"/v1/me\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("tenantry_projection_lag_events{projection=\"identity\"}"));
    assert!(text.contains("tenantry_events_appended_total 3"), "{text}");
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
    signup_returns_a_token_that_works_at_once_and_is_never_stored,
    signup_validates_every_field_and_writes_nothing_when_refused,
    members_get_their_role_and_token_and_admins_cannot_make_owners,
    a_revoked_token_stops_working_at_once,
    every_route_answers_every_role_as_the_table_says,
    ops_turn_a_feature_off_for_one_tenant_only,
    a_retried_request_with_the_same_idempotency_key_is_applied_once,
    the_audit_feed_filters_pages_and_stays_inside_the_tenant,
    errors_are_problem_documents_with_request_ids_and_traces_reach_the_events,
    the_openapi_document_and_metrics_describe_the_service,
);

#[test]
fn reads_wait_for_min_position_embedded() {
    reads_wait_for_min_position_and_refuse_one_never_written(spawn_app_with(
        Backend::Embedded,
        |s| s.read_wait_ms = 300,
    ));
}

#[test]
fn reads_wait_for_min_position_postgres() {
    reads_wait_for_min_position_and_refuse_one_never_written(spawn_app_with(
        Backend::Postgres,
        |s| s.read_wait_ms = 300,
    ));
}

/// Two servers on one PostgreSQL database: a write on one is read on the other with
/// `min_position`, and a token issued by one works on the other at once.
#[test]
fn two_servers_on_one_database_read_each_others_writes() {
    let url = support::fresh_postgres();
    let one = spawn_app(Backend::PostgresAt(url.clone()));
    let two = spawn_app(Backend::PostgresAt(url));
    let created = one
        .post_json(
            "/v1/signup",
            None,
            &json!({"tenant_name": "Shared", "email": "s@example.com", "name": "S"}),
        )
        .expect(201);
    let token = created["token"].as_str().unwrap();
    let position = created["global_position"].as_u64().unwrap();
    let seen = two
        .get(&format!("/v1/tenant?min_position={position}"), token)
        .expect(200);
    assert_eq!(seen["name"], "Shared");
    let member = two
        .post_json(
            "/v1/members",
            Some(token),
            &json!({"email": "m@example.com", "name": "M", "role": "analyst"}),
        )
        .expect(201);
    let p2 = member["global_position"].as_u64().unwrap();
    assert_eq!(
        one.get(&format!("/v1/tenant?min_position={p2}"), token)
            .expect(200)["members"],
        2
    );
    // The same Idempotency-Key across instances: applied once.
    let body = json!({"email": "k@example.com", "name": "K", "role": "viewer"}).to_string();
    let auth = bearer(token);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "cross-1"),
    ];
    let a = one
        .send("POST", "/v1/members", &h, Some(body.as_bytes()))
        .expect(201);
    let b = two
        .send("POST", "/v1/members", &h, Some(body.as_bytes()))
        .expect(201);
    assert_eq!(a["user_id"], b["user_id"]);
    assert_eq!(
        b["token"], a["token"],
        "the other instance replays the sealed token"
    );
    assert_eq!(
        two.get(
            &format!("/v1/tenant?min_position={}", a["global_position"]),
            token
        )
        .expect(200)["members"],
        3
    );
}

#[test]
fn the_permissions_document_matches_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/permissions.md");
    let on_disk = std::fs::read_to_string(path).expect("docs/permissions.md exists");
    assert_eq!(
        on_disk,
        api::rbac::permissions_markdown(),
        "docs/permissions.md is stale: run `tenantry docs permissions > docs/permissions.md`"
    );
}

/// For the routes that remove members or revoke tokens by id: the path and token a role walks
/// them with, made fresh for it (a throwaway member of the same role, a spare token), so that
/// the walk's own members and tokens survive. Other routes: as they are.
fn member_walk_target(
    app: &TestApp,
    owner: &str,
    spec: &api::rbac::RouteSpec,
    role: Role,
    token: &str,
    path: &str,
) -> (String, String) {
    let nil = uuid::Uuid::nil().to_string();
    let untouched = path.replace("{user_id}", &nil).replace("{token_id}", &nil);
    let Role::Tenant(tenant_role) = role else {
        if (spec.method, spec.path) == ("DELETE", "/v1/tokens/{token_id}")
            && role == Role::Platform(PlatformRole::Ops)
        {
            // Platform ops revoke an operator's token.
            let spare = app.operator_token(PlatformRole::Support);
            let id = app.get("/v1/me", &spare).expect(200)["token_id"]
                .as_str()
                .unwrap()
                .to_owned();
            return (format!("/v1/tokens/{id}"), token.to_owned());
        }
        return (untouched, token.to_owned());
    };
    if !api::rbac::allows(spec, role) {
        return (untouched, token.to_owned());
    }
    let throwaway = |r: TenantRole| {
        let email = format!("walk-{}@example.com", uuid::Uuid::new_v4().simple());
        let t = app.add_member(owner, &email, r.as_str());
        let id = app.get("/v1/me", &t).expect(200)["user_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (t, id)
    };
    match (spec.method, spec.path) {
        // Everyone may leave: a throwaway member of this role leaves.
        ("DELETE", "/v1/members/{user_id}") => {
            let (t, id) = throwaway(tenant_role);
            (format!("/v1/members/{id}"), t)
        }
        ("PATCH", "/v1/members/{user_id}") | ("POST", "/v1/members/{user_id}/tokens") => {
            let (_, id) = throwaway(TenantRole::Viewer);
            (path.replace("{user_id}", &id), token.to_owned())
        }
        // A spare token of this role's member (issued by the owner), revoked by that member.
        ("DELETE", "/v1/tokens/{token_id}") => {
            let user = app.get("/v1/me", token).expect(200)["user_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let auth = format!("Bearer {owner}");
            let spare = app
                .send(
                    "POST",
                    &format!("/v1/members/{user}/tokens"),
                    &[("Authorization", &auth)],
                    None,
                )
                .expect(201)["token_id"]
                .as_str()
                .unwrap()
                .to_owned();
            (format!("/v1/tokens/{spare}"), token.to_owned())
        }
        _ => (path.to_owned(), token.to_owned()),
    }
}
