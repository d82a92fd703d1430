//! A decision that produces no event (a refusal) is never answered from a stale cache: the
//! server checks the stream's stored version first. The two scenarios of issue 8, through the
//! real server: a token issued by the CLI's command (from a second `Store` on the same data)
//! beside a running server, and two server instances on one PostgreSQL database. The first
//! scenario with the real `tenantry` binary as the other process: `cli/tests/operator_token.rs`.

mod support;

use domain::PlatformRole;
use support::{Backend, TestApp, spawn_app};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn revoke_current(app: &TestApp, token: &str) -> support::Response {
    app.send(
        "DELETE",
        "/v1/tokens/current",
        &[("Authorization", &bearer(token))],
        None,
    )
}

/// Issue an operator token with the CLI, revoke it through the server, issue a second one with
/// the CLI: revoking the second works, and it stops working.
fn an_operator_token_issued_beside_the_server_can_be_revoked_through_it(backend: Backend) {
    let app = spawn_app(backend);
    let first = app.operator_token(PlatformRole::Ops);
    app.get("/v1/me", &first).expect(200);
    revoke_current(&app, &first).expect(200);
    app.get("/v1/me", &first).problem(401, "unauthorized");

    // The server's platform stream is now hot in memory; the CLI writes beside it.
    let second = app.operator_token(PlatformRole::Ops);
    app.get("/v1/me", &second).expect(200);
    revoke_current(&app, &second).expect(200);
    app.get("/v1/me", &second).problem(401, "unauthorized");
}

#[test]
fn an_operator_token_issued_by_the_cli_is_revocable_through_a_running_server_embedded() {
    an_operator_token_issued_beside_the_server_can_be_revoked_through_it(Backend::Embedded);
}

#[test]
fn an_operator_token_issued_by_the_cli_is_revocable_through_a_running_server_postgres() {
    an_operator_token_issued_beside_the_server_can_be_revoked_through_it(Backend::Postgres);
}

/// Two instances on one database: what one refuses is decided on what the other wrote.
#[test]
fn two_instances_never_refuse_on_each_others_stale_state_postgres() {
    let url = support::fresh_postgres();
    let one = spawn_app(Backend::PostgresAt(url.clone()));
    let two = spawn_app(Backend::PostgresAt(url));
    let (_, owner) = one.signup("Acme", "owner@example.com");
    let rename = |app: &TestApp, name: &str| {
        let auth = bearer(&owner);
        let body = serde_json::json!({ "name": name }).to_string();
        app.send(
            "PATCH",
            "/v1/tenant",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    };
    // Instance two holds the tenant hot as "Two"; instance one renames it to "Three".
    rename(&two, "Two").expect(200);
    rename(&one, "Three").expect(200);
    // To instance two's cache, "Two" is the current name (a 409 no-change); it is not.
    rename(&two, "Two").expect(200);
    // And a true no-change is still refused, after the check found the cache fresh.
    rename(&two, "Two").problem(409, "no-change");
    let position = one.head();
    let tenant = one.get(&format!("/v1/tenant?min_position={position}"), &owner);
    assert_eq!(tenant.expect(200)["name"], "Two");

    // The same for a token: issued through one instance, revoked through the other.
    let analyst = one.add_member(&owner, "ana@example.com", "analyst");
    two.get("/v1/me", &analyst).expect(200);
    revoke_current(&two, &analyst).expect(200);
    two.get("/v1/me", &analyst).problem(401, "unauthorized");
    // Instance one learns of the revocation from the log (a notification, then a read).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while one.get("/v1/me", &analyst).status != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "instance one still accepts a revoked token"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
