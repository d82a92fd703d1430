//! SCIM 2.0 through the real server, on both stores (issue 10, item 4; ADR 031): the SCIM token,
//! SCIM error documents, Okta's filter → create → 409 → PATCH flow, Entra's `"False"` and
//! PascalCase `op`s, deprovisioning that stops a member's tokens at once, groups feeding the
//! role mapping, paging and discovery.

mod support;

use serde_json::{Value, json};
use support::{Backend, Response, TestApp, spawn_app};

fn scim(app: &TestApp, method: &str, path: &str, token: &str, body: Option<&Value>) -> Response {
    let auth = format!("Bearer {token}");
    let text = body.map(|b| b.to_string());
    app.send(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/scim+json"),
        ],
        text.as_deref().map(str::as_bytes),
    )
}

/// A SCIM error document with this status and (when given) `scimType`.
fn scim_error(r: &Response, status: u16, scim_type: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.exchange);
    assert_eq!(
        r.header("content-type"),
        Some("application/scim+json"),
        "{}",
        r.exchange
    );
    let doc = r.json();
    assert_eq!(
        doc["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );
    assert_eq!(
        doc["status"],
        json!(status.to_string()),
        "status is a string"
    );
    if let Some(t) = scim_type {
        assert_eq!(doc["scimType"], t, "{}", r.exchange);
    }
    doc
}

fn ok(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.exchange);
    assert_eq!(
        r.header("content-type"),
        Some("application/scim+json"),
        "{}",
        r.exchange
    );
    r.json()
}

fn filter(user_name: &str) -> String {
    format!("/scim/v2/Users?filter=userName%20eq%20%22{user_name}%22")
}

/// A tenant with a SCIM token: (owner token, SCIM token).
fn scim_tenant(app: &TestApp) -> (String, String) {
    let (_, owner) = app.signup("Acme", "owner@example.com");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let t = app
        .post_json("/v1/scim/token", Some(&owner), &json!({}))
        .expect(201);
    (owner, t["token"].as_str().unwrap().to_owned())
}

fn okta_and_entra_provision_and_deprovision_and_tokens_stop_at_once(app: TestApp) {
    let (owner, token) = scim_tenant(&app);
    // No token, a member's token: SCIM errors, not problem documents.
    let r = app.send("GET", "/scim/v2/Users", &[], None);
    scim_error(&r, 401, None);
    scim_error(
        &scim(&app, "GET", "/scim/v2/Users", &owner, None),
        401,
        None,
    );
    // A member who exists already, with a token.
    let member_token = app.add_member(&owner, "bo@example.com", "viewer");
    app.get("/v1/me", &member_token).expect(200);
    // Okta: filter (nothing), create, create again (409 uniqueness), filter (found).
    let found = ok(
        &scim(&app, "GET", &filter("bo@example.com"), &token, None),
        200,
    );
    assert_eq!(found["totalResults"], 0);
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "bo@example.com", "name": {"givenName": "Bo", "familyName": "Ek"},
        "emails": [{"primary": true, "value": "bo@example.com", "type": "work"}],
        "active": true, "externalId": "okta-1",
    });
    let created = ok(
        &scim(&app, "POST", "/scim/v2/Users", &token, Some(&user)),
        201,
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["active"], true);
    assert_eq!(created["name"]["familyName"], "Ek");
    assert_eq!(created["meta"]["resourceType"], "User");
    let mut again = user.clone();
    again["userName"] = json!("BO@example.com");
    scim_error(
        &scim(&app, "POST", "/scim/v2/Users", &token, Some(&again)),
        409,
        Some("uniqueness"),
    );
    let found = ok(
        &scim(&app, "GET", &filter("Bo@Example.com"), &token, None),
        200,
    );
    assert_eq!(found["totalResults"], 1);
    assert_eq!(found["Resources"][0]["id"], id.as_str());
    // The existing member was adopted: their token still works.
    app.get("/v1/me", &member_token).expect(200);
    // Entra: PascalCase op, "False" as a string. The member's token stops at once.
    let off = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let patched = ok(
        &scim(
            &app,
            "PATCH",
            &format!("/scim/v2/Users/{id}"),
            &token,
            Some(&off),
        ),
        200,
    );
    assert_eq!(patched["active"], false);
    app.get("/v1/me", &member_token)
        .problem(401, "unauthorized");
    let got = ok(
        &scim(&app, "GET", &format!("/scim/v2/Users/{id}"), &token, None),
        200,
    );
    assert_eq!(got["active"], false, "a deactivated user is still there");
    // Okta's reactivation: a PATCH without a path.
    let on = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"active": true}}]});
    assert_eq!(
        ok(
            &scim(
                &app,
                "PATCH",
                &format!("/scim/v2/Users/{id}"),
                &token,
                Some(&on)
            ),
            200
        )["active"],
        true
    );
    // PUT replaces attributes; DELETE removes the user and the member.
    let mut put = user.clone();
    put["displayName"] = json!("Bo E.");
    assert_eq!(
        ok(
            &scim(
                &app,
                "PUT",
                &format!("/scim/v2/Users/{id}"),
                &token,
                Some(&put)
            ),
            200
        )["displayName"],
        "Bo E."
    );
    let r = scim(
        &app,
        "DELETE",
        &format!("/scim/v2/Users/{id}"),
        &token,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.exchange);
    scim_error(
        &scim(&app, "GET", &format!("/scim/v2/Users/{id}"), &token, None),
        404,
        None,
    );
    // Every SCIM operation is an event with actor `scim` and a reason.
    let audit = app.get("/v1/audit/events?limit=200", &owner).expect(200);
    let scim_events: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"].as_str().unwrap().starts_with("scim.user"))
        .collect();
    let reasons: Vec<&str> = scim_events
        .iter()
        .map(|e| e["payload"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "POST /Users",
            "PATCH active=false",
            "PATCH active=true",
            "PUT /Users",
            "DELETE /Users"
        ],
        "{audit}"
    );
    assert!(scim_events.iter().all(|e| e["actor"] == "scim"));
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "member.removed" && e["actor"] == "scim")
    );
    // Bad input: SCIM errors with their scimType.
    scim_error(
        &scim(
            &app,
            "GET",
            "/scim/v2/Users?filter=title%20co%20%22x%22",
            &token,
            None,
        ),
        400,
        Some("invalidFilter"),
    );
    scim_error(
        &scim(
            &app,
            "POST",
            "/scim/v2/Users",
            &token,
            Some(&json!({"active": true})),
        ),
        400,
        Some("invalidValue"),
    );
    let r = app.send(
        "POST",
        "/scim/v2/Users",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/scim+json"),
        ],
        Some(b"{nope"),
    );
    scim_error(&r, 400, Some("invalidSyntax"));
    // A rotated token replaces the old one.
    let rotated = app
        .post_json("/v1/scim/token", Some(&owner), &json!({}))
        .expect(201);
    scim_error(
        &scim(&app, "GET", "/scim/v2/Users", &token, None),
        401,
        None,
    );
    ok(
        &scim(
            &app,
            "GET",
            "/scim/v2/Users",
            rotated["token"].as_str().unwrap(),
            None,
        ),
        200,
    );
}

fn groups_feed_the_mapping_and_lists_page(app: TestApp) {
    let (owner, token) = scim_tenant(&app);
    app.send(
        "PUT",
        "/v1/sso/mapping",
        &[("Authorization", &format!("Bearer {owner}")), ("Content-Type", "application/json")],
        Some(json!({"rules": [{"group": "Engineering", "grant": "analyst", "priority": 1}], "default_role": "viewer"}).to_string().as_bytes()),
    )
    .expect(200);
    let mut ids = Vec::new();
    for name in ["c@example.com", "a@example.com", "b@example.com"] {
        let u = ok(
            &scim(
                &app,
                "POST",
                "/scim/v2/Users",
                &token,
                Some(&json!({"userName": name})),
            ),
            201,
        );
        ids.push(u["id"].as_str().unwrap().to_owned());
    }
    // Lists are in userName order, paged by startIndex and count.
    let page = ok(
        &scim(
            &app,
            "GET",
            "/scim/v2/Users?startIndex=2&count=1",
            &token,
            None,
        ),
        200,
    );
    assert_eq!(
        (
            page["totalResults"].as_u64(),
            page["itemsPerPage"].as_u64(),
            page["startIndex"].as_u64()
        ),
        (Some(3), Some(1), Some(2))
    );
    assert_eq!(page["Resources"][0]["userName"], "b@example.com");
    // A group with a@ in it: a@ becomes an analyst (reason scim_groups).
    let group = ok(
        &scim(
            &app,
            "POST",
            "/scim/v2/Groups",
            &token,
            Some(&json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Engineering", "members": [{"value": ids[1]}]})),
        ),
        201,
    );
    let gid = group["id"].as_str().unwrap().to_owned();
    assert_eq!(group["members"][0]["value"], ids[1].as_str());
    let user = ok(
        &scim(
            &app,
            "GET",
            &format!("/scim/v2/Users/{}", ids[1]),
            &token,
            None,
        ),
        200,
    );
    assert_eq!(user["groups"][0]["display"], "Engineering");
    let role_changes = |app: &TestApp| -> Vec<(String, String)> {
        let audit = app.get("/v1/audit/events?limit=200", &owner).expect(200);
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == "member.role_changed")
            .map(|e| {
                (
                    e["payload"]["to"].as_str().unwrap().to_owned(),
                    e["payload"]["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        role_changes(&app),
        [("analyst".to_owned(), "scim_groups".to_owned())]
    );
    // Entra's PATCH: add b@, remove a@ by a filter path.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "Add", "path": "members", "value": [{"value": ids[2]}]},
        {"op": "Remove", "path": format!("members[value eq \"{}\"]", ids[1])},
    ]});
    let g = ok(
        &scim(
            &app,
            "PATCH",
            &format!("/scim/v2/Groups/{gid}"),
            &token,
            Some(&patch),
        ),
        200,
    );
    assert_eq!(g["members"].as_array().unwrap().len(), 1);
    assert_eq!(g["members"][0]["value"], ids[2].as_str());
    let changes = role_changes(&app);
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.contains(&("viewer".into(), "scim_groups".into())));
    // Filters on groups; the discovery documents are public.
    let found = ok(
        &scim(
            &app,
            "GET",
            "/scim/v2/Groups?filter=displayName%20eq%20%22engineering%22",
            &token,
            None,
        ),
        200,
    );
    assert_eq!(found["totalResults"], 1);
    let r = scim(
        &app,
        "DELETE",
        &format!("/scim/v2/Groups/{gid}"),
        &token,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.exchange);
    for path in [
        "/scim/v2/ServiceProviderConfig",
        "/scim/v2/ResourceTypes",
        "/scim/v2/Schemas",
        "/scim/v2/ResourceTypes/User",
    ] {
        ok(&app.send("GET", path, &[], None), 200);
    }
    let spc = ok(
        &app.send("GET", "/scim/v2/ServiceProviderConfig", &[], None),
        200,
    );
    assert_eq!(spc["patch"]["supported"], true);
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
    okta_and_entra_provision_and_deprovision_and_tokens_stop_at_once,
    groups_feed_the_mapping_and_lists_page,
);
