//! `tenantry operator token`, the real binary, beside a running server on the same store (issue 8's
//! scenario): issue a token with the CLI, revoke it through the server, issue a second one with
//! the CLI; the second is revocable too, because the server's refusal is never decided on its
//! stale cache of the platform stream.

#[path = "../../api/tests/support/mod.rs"]
mod support;

use serde_json::Value;
use std::process::Command;
use store::Location;
use support::{Backend, TestApp, spawn_app};

/// `tenantry operator token --role ops` on the app's store; its JSON answer.
fn cli_operator_token(app: &TestApp) -> Value {
    let store_args = match &app.location {
        Location::Embedded(dir) => ["--data".to_owned(), dir.display().to_string()],
        Location::Postgres(url) => ["--store".to_owned(), url.clone()],
    };
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["operator", "token", "--role", "ops", "--ttl-days", "1"])
        .args(&store_args)
        .output()
        .expect("run tenantry");
    assert!(
        out.status.success(),
        "tenantry operator token failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON answer")
}

fn revoke_current(app: &TestApp, token: &str) -> support::Response {
    let auth = format!("Bearer {token}");
    app.send(
        "DELETE",
        "/v1/tokens/current",
        &[("Authorization", &auth)],
        None,
    )
}

fn tokens_issued_by_the_binary_beside_a_server_are_revocable_through_it(backend: Backend) {
    let app = spawn_app(backend);
    let first = cli_operator_token(&app);
    assert_eq!(first["role"], "ops", "{first}");
    assert!(
        first["global_position"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );
    let first = first["token"].as_str().expect("a token").to_owned();
    let me = app.get("/v1/me", &first).expect(200);
    assert_eq!(me["role"], "ops", "{me}");
    revoke_current(&app, &first).expect(200);
    app.get("/v1/me", &first).problem(401, "unauthorized");

    // The server's platform stream is now hot in memory; the binary writes beside it.
    let second = cli_operator_token(&app);
    let second = second["token"].as_str().expect("a token").to_owned();
    app.get("/v1/me", &second).expect(200);
    revoke_current(&app, &second).expect(200);
    app.get("/v1/me", &second).problem(401, "unauthorized");
}

#[test]
fn tokens_issued_by_the_binary_beside_a_server_are_revocable_through_it_embedded() {
    tokens_issued_by_the_binary_beside_a_server_are_revocable_through_it(Backend::Embedded);
}

#[test]
fn tokens_issued_by_the_binary_beside_a_server_are_revocable_through_it_postgres() {
    tokens_issued_by_the_binary_beside_a_server_are_revocable_through_it(Backend::Postgres);
}
