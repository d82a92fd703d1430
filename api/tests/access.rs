//! People over time through the real server (issue 10, part A): a member signs in again after
//! their token expired, leaves, and frees their seat; the last owner is protected; admins cannot
//! touch owners; revoked tokens fail at once; CSV invites answer one outcome per row for a corpus
//! of ugly files; the outbox delivers each message once, after a restart too.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Backend, TestApp, spawn_app_with, spawn_app_with_clock};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn both(test: impl Fn(Backend)) {
    test(Backend::Embedded);
    test(Backend::Postgres);
}

/// The messages the outbox wrote to `dir` for `to`, oldest first.
fn messages_to(dir: &Path, to: &str) -> Vec<String> {
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .filter_map(|e| {
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    let modified = e.metadata().ok()?.modified().ok()?;
                    text.contains(&format!("To: {to}\r\n"))
                        .then_some((modified, text))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().map(|(_, t)| t).collect()
}

/// Wait (bounded) until the outbox wrote `n` messages to `to`.
#[track_caller]
fn wait_for_messages(dir: &Path, to: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = messages_to(dir, to);
        if found.len() >= n || Instant::now() > deadline {
            assert_eq!(found.len(), n, "messages to {to} in {}", dir.display());
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tenant's events of `event_type`, once there are `n` of them (bounded wait: an outbox
/// delivery is recorded after its transport accepted it).
#[track_caller]
fn wait_for_events(app: &TestApp, token: &str, event_type: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = app
            .get(&format!("/v1/audit/events?type={event_type}"), token)
            .expect(200);
        let events = page["events"].as_array().unwrap().clone();
        if events.len() >= n || Instant::now() > deadline {
            assert_eq!(events.len(), n, "{event_type} events: {page}");
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn code_of(message: &str) -> String {
    let at = message.find("sign-in code is ").expect("a sign-in code") + 16;
    message[at..at + 8].to_owned()
}

/// The invite token of a message (quoted-printable soft line breaks undone, as a mail reader
/// would).
fn invite_token_of(message: &str) -> String {
    let message = message.replace("=\r\n", "").replace("=3D", "=");
    let at = message.find("Invite token: ").expect("an invite token") + 14;
    message[at..].lines().next().unwrap().trim().to_owned()
}

fn me(app: &TestApp, token: &str) -> Value {
    app.get("/v1/me", token).expect(200)
}

fn sign_in(app: &TestApp, outbox: &Path, tenant: &str, email: &str, nth: usize) -> String {
    let r = app
        .post_json(
            "/v1/sign-in",
            None,
            &json!({"tenant": tenant, "email": email.to_uppercase()}),
        )
        .expect(202);
    assert_eq!(r["status"], "sent");
    let messages = wait_for_messages(outbox, email, nth);
    let code = code_of(messages.last().unwrap());
    app.post_json(
        "/v1/sign-in/verify",
        None,
        &json!({"tenant": tenant, "email": email, "code": code}),
    )
    .expect(200)["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> support::Response {
    let auth = bearer(token);
    let text = body.map(|b| b.to_string());
    app.send(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        text.as_deref().map(str::as_bytes),
    )
}

#[test]
fn a_member_signs_in_again_after_31_days_leaves_and_frees_the_seat() {
    both(|backend| {
        let clock = Arc::new(app::ShiftedClock::default());
        let outbox = tempfile::tempdir().unwrap();
        let dir = outbox.path().to_path_buf();
        let app =
            spawn_app_with_clock(backend, |s| s.outbox_dir = Some(dir.clone()), clock.clone());
        // Free plan: three seats.
        let (tenant, owner) = app.signup("Acme", "owner@example.com");
        let ana = app.add_member(&owner, "ana@example.com", "analyst");
        let ana_id = me(&app, &ana)["user_id"].as_str().unwrap().to_owned();
        app.add_member(&owner, "bo@example.com", "viewer");
        app.post_json(
            "/v1/members",
            Some(&owner),
            &json!({"email": "cy@example.com", "name": "Cy", "role": "viewer"}),
        )
        .problem(409, "seat-limit");

        clock.advance(time::Duration::days(31));
        app.get("/v1/me", &ana).problem(401, "unauthorized");
        app.get("/v1/me", &owner).problem(401, "unauthorized");

        // Unknown emails get the same answer, and no message.
        let unknown = app
            .post_json(
                "/v1/sign-in",
                None,
                &json!({"tenant": tenant, "email": "nobody@example.com"}),
            )
            .expect(202);
        assert_eq!(unknown, json!({"status": "sent"}));
        // A wrong code is refused like an unknown email.
        let wrong = app
            .post_json(
                "/v1/sign-in/verify",
                None,
                &json!({"tenant": tenant, "email": "nobody@example.com", "code": "12345678"}),
            )
            .problem(401, "unauthorized");
        let ana2 = sign_in(&app, &dir, &tenant, "ana@example.com", 1);
        assert_eq!(me(&app, &ana2)["user_id"], ana_id.as_str());
        let owner2 = sign_in(&app, &dir, &tenant, "owner@example.com", 1);
        // The code works once.
        let used = code_of(&messages_to(&dir, "ana@example.com")[0]);
        let again = app
            .post_json(
                "/v1/sign-in/verify",
                None,
                &json!({"tenant": tenant, "email": "ana@example.com", "code": used}),
            )
            .problem(401, "unauthorized");
        assert_eq!(again["detail"], wrong["detail"]);

        // Ana leaves: her token stops at once, her seat is free, her email can come back.
        send(
            &app,
            "DELETE",
            &format!("/v1/members/{ana_id}?reason=moving+on"),
            &ana2,
            None,
        )
        .expect(200);
        app.get("/v1/me", &ana2).problem(401, "unauthorized");
        assert_eq!(app.get("/v1/tenant", &owner2).expect(200)["members"], 2);
        app.add_member(&owner2, "cy@example.com", "viewer");
        app.post_json(
            "/v1/members",
            Some(&owner2),
            &json!({"email": "dee@example.com", "name": "Dee", "role": "viewer"}),
        )
        .problem(409, "seat-limit");
        send(
            &app,
            "DELETE",
            &format!("/v1/members/{ana_id}"),
            &owner2,
            None,
        )
        .problem(404, "not-found");
        // The audit feed says who left, and why.
        let events = app
            .get("/v1/audit/events?type=member.removed", &owner2)
            .expect(200);
        let removed = &events["events"][0];
        assert_eq!(removed["payload"]["reason"], "moving on");
        assert_eq!(removed["payload"]["actor"], format!("user:{ana_id}"));
    });
}

#[test]
fn the_last_owner_is_protected_and_admins_cannot_touch_owners() {
    both(|backend| {
        let app = spawn_app_with(backend, |_| {});
        let (_, owner) = app.signup("Acme", "owner@example.com");
        let owner_me = me(&app, &owner);
        let owner_id = owner_me["user_id"].as_str().unwrap().to_owned();
        let owner_token_id = owner_me["token_id"].as_str().unwrap().to_owned();
        let admin = app.add_member(&owner, "admin@example.com", "admin");
        let admin_id = me(&app, &admin)["user_id"].as_str().unwrap().to_owned();
        let viewer = app.add_member(&owner, "viewer@example.com", "viewer");
        let viewer_id = me(&app, &viewer)["user_id"].as_str().unwrap().to_owned();

        let owner_path = format!("/v1/members/{owner_id}");
        send(&app, "DELETE", &owner_path, &admin, None).problem(403, "forbidden");
        send(
            &app,
            "PATCH",
            &owner_path,
            &admin,
            Some(&json!({"role": "viewer"})),
        )
        .problem(403, "forbidden");
        send(
            &app,
            "DELETE",
            &format!("/v1/tokens/{owner_token_id}"),
            &admin,
            None,
        )
        .problem(403, "forbidden");
        send(&app, "POST", &format!("{owner_path}/tokens"), &admin, None).problem(403, "forbidden");
        // Only owners make owners.
        let viewer_path = format!("/v1/members/{viewer_id}");
        send(
            &app,
            "PATCH",
            &viewer_path,
            &admin,
            Some(&json!({"role": "owner"})),
        )
        .problem(403, "forbidden");
        // A viewer removes nobody but themselves, and sees no one else's tokens.
        send(
            &app,
            "DELETE",
            &format!("/v1/members/{admin_id}"),
            &viewer,
            None,
        )
        .problem(403, "forbidden");
        send(
            &app,
            "DELETE",
            &format!("/v1/tokens/{owner_token_id}"),
            &viewer,
            None,
        )
        .problem(404, "not-found");
        // The last owner neither leaves nor steps down.
        send(&app, "DELETE", &owner_path, &owner, None).problem(409, "last-owner");
        send(
            &app,
            "PATCH",
            &owner_path,
            &owner,
            Some(&json!({"role": "admin"})),
        )
        .problem(409, "last-owner");
        // With a second owner, the first may go.
        send(
            &app,
            "PATCH",
            &format!("/v1/members/{admin_id}"),
            &owner,
            Some(&json!({"role": "owner", "reason": "succession"})),
        )
        .expect(200);
        send(&app, "DELETE", &owner_path, &owner, None).expect(200);
        app.get("/v1/me", &owner).problem(401, "unauthorized");
        assert_eq!(me(&app, &admin)["role"], "owner");
        // An admin re-issues a viewer's token; the old one keeps working until revoked.
        let new_admin = app.add_member(&admin, "admin2@example.com", "admin");
        let reissued = send(
            &app,
            "POST",
            &format!("{viewer_path}/tokens"),
            &new_admin,
            None,
        )
        .expect(201);
        let fresh = reissued["token"].as_str().unwrap();
        assert_eq!(me(&app, fresh)["user_id"], viewer_id.as_str());
    });
}

#[test]
fn revoked_tokens_answer_401_at_once() {
    both(|backend| {
        let app = spawn_app_with(backend, |_| {});
        let (_, owner) = app.signup("Acme", "owner@example.com");
        let member = app.add_member(&owner, "m@example.com", "analyst");
        // Rotation: the old token fails on the very next request.
        let rotated = send(&app, "POST", "/v1/tokens", &member, None).expect(201);
        app.get("/v1/me", &member).problem(401, "unauthorized");
        let member = rotated["token"].as_str().unwrap().to_owned();
        let token_id = me(&app, &member)["token_id"].as_str().unwrap().to_owned();
        assert_eq!(rotated["token_id"], token_id.as_str());
        // Revoked by an owner, by id.
        send(
            &app,
            "DELETE",
            &format!("/v1/tokens/{token_id}?reason=laptop+lost"),
            &owner,
            None,
        )
        .expect(200);
        app.get("/v1/me", &member).problem(401, "unauthorized");
        send(
            &app,
            "DELETE",
            &format!("/v1/tokens/{token_id}"),
            &owner,
            None,
        )
        .problem(409, "already-revoked");
        // Platform ops revoke an operator's token.
        let support = app.operator_token(domain::PlatformRole::Support);
        let ops = app.operator_token(domain::PlatformRole::Ops);
        let support_token = me(&app, &support)["token_id"].as_str().unwrap().to_owned();
        send(
            &app,
            "DELETE",
            &format!("/v1/tokens/{support_token}"),
            &ops,
            None,
        )
        .expect(200);
        app.get("/v1/me", &support).problem(401, "unauthorized");
        // The log says why.
        let events = app
            .get("/v1/audit/events?type=token.revoked", &owner)
            .expect(200);
        let reasons: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["payload"]["reason"])
            .collect();
        assert!(reasons.contains(&&json!("rotated")), "{events}");
        assert!(reasons.contains(&&json!("laptop lost")), "{events}");
    });
}

fn corpus(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/invites")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn import(app: &TestApp, token: &str, query: &str, body: &[u8]) -> support::Response {
    app.send(
        "POST",
        &format!("/v1/invites/csv{query}"),
        &[
            ("Authorization", &bearer(token)),
            ("Content-Type", "text/csv"),
        ],
        Some(body),
    )
}

/// `(line, outcome, field)` of a report's row.
type Row = (u64, String, Option<String>);

/// `(line, outcome, field)` of each row of a report.
fn outcomes(report: &Value) -> Vec<Row> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["field"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn every_ugly_csv_file_gets_a_clear_answer() {
    let app = spawn_app_with(Backend::Embedded, |_| {});
    let c = |line: u64| (line, "created".to_owned(), None);
    let bad = |line: u64, field: &str| (line, "invalid".to_owned(), Some(field.to_owned()));
    let cases: Vec<(&str, Vec<Row>)> = vec![
        ("bom_crlf_header.csv", vec![c(2), c(3)]),
        ("no_header.csv", vec![c(1), c(2)]),
        ("reordered_header.csv", vec![c(2), c(3)]),
        ("quoted_fields.csv", vec![c(1), bad(2, "name")]),
        ("duplicates_any_case.csv", vec![c(2), bad(3, "email"), c(4)]),
        (
            "invalid_rows.csv",
            vec![
                bad(2, "email"),
                bad(3, "role"),
                bad(4, "row"),
                bad(5, "row"),
                bad(6, "role"),
            ],
        ),
        ("invalid_utf8.csv", vec![bad(1, "name"), c(2)]),
        ("blank_lines_and_spaces.csv", vec![c(2), c(5)]),
        ("unterminated_quote.csv", vec![bad(1, "name")]),
    ];
    for (file, expected) in cases {
        // A tenant each (a Pro plan's seats), the import by an admin (who invites no owners).
        let (_, owner) = app.signup(
            file,
            &format!("owner@{}.example.com", file.replace(['_', '.'], "-")),
        );
        app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
            .expect(200);
        let admin = app.add_member(&owner, "admin@example.com", "admin");
        let dry = import(&app, &admin, "?dry_run=true", &corpus(file)).expect(200);
        assert_eq!(outcomes(&dry), expected, "{file} (dry run): {dry}");
        assert_eq!(dry["global_position"], 0);
        let real = import(&app, &admin, "", &corpus(file)).expect(200);
        assert_eq!(outcomes(&real), expected, "{file}: {real}");
        let again = import(&app, &admin, "", &corpus(file)).expect(200);
        for ((line, outcome, _), (_, first, _)) in outcomes(&again).iter().zip(&expected) {
            if first == "created" {
                assert_eq!(outcome, "updated_pending_invite", "{file} line {line}");
            }
        }
    }
    let (_, owner) = app.signup("Whole files", "owner@whole.example.com");
    for file in ["empty.csv", "header_only.csv", "unknown_column.csv"] {
        let p = import(&app, &owner, "", &corpus(file)).problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["field"], "file", "{file}: {p}");
    }
    // More than 10,000 rows, and more than 50 MB.
    let many: String = (0..10_001)
        .map(|i| format!("u{i}@example.com,viewer\n"))
        .collect();
    import(&app, &owner, "", many.as_bytes()).problem(422, "validation-failed");
    let huge = vec![b'a'; 50 * 1024 * 1024 + 1];
    import(&app, &owner, "", &huge).problem(413, "payload-too-large");
}

#[test]
fn invites_conflict_update_and_are_accepted_once_through_the_outbox() {
    both(|backend| {
        let outbox = tempfile::tempdir().unwrap();
        let dir = outbox.path().to_path_buf();
        let app = spawn_app_with(backend, |s| s.outbox_dir = Some(dir.clone()));
        let (tenant, owner) = app.signup("Acme", "owner@example.com");
        let member = app.add_member(&owner, "member@example.com", "viewer");
        let body = b"email,role,name\nnew@example.com,viewer,New\nMEMBER@example.com,viewer\n";
        let key = [
            ("Authorization", bearer(&owner)),
            ("Content-Type", "text/csv".to_owned()),
            ("Idempotency-Key", "csv-1".to_owned()),
        ];
        let headers: Vec<(&str, &str)> = key.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let first = app
            .send("POST", "/v1/invites/csv", &headers, Some(body))
            .expect(200);
        assert_eq!(
            outcomes(&first),
            [
                (2, "created".to_owned(), None),
                (3, "skipped_existing_member".to_owned(), None)
            ]
        );
        // The same key replays the same report and invites nobody twice.
        let replay = app
            .send("POST", "/v1/invites/csv", &headers, Some(body))
            .expect(200);
        assert_eq!(replay, first);
        wait_for_messages(&dir, "new@example.com", 1);
        // Another role: a conflict unless asked to update.
        let other = b"new@example.com,analyst\n";
        let r = import(&app, &owner, "", other).expect(200);
        assert_eq!(outcomes(&r)[0].1, "conflict_role");
        let r = import(&app, &owner, "?on_conflict=update_role", other).expect(200);
        assert_eq!(outcomes(&r)[0].1, "updated_pending_invite");
        // Seats count pending invites: owner, member and the invite fill a Free plan's three.
        import(&app, &owner, "", b"fourth@example.com,viewer\n").problem(409, "seat-limit");
        app.post_json(
            "/v1/invites",
            Some(&owner),
            &json!({"email": "fourth@example.com", "role": "viewer"}),
        )
        .problem(409, "seat-limit");
        // Delivered twice (created, then updated), each once.
        let messages = wait_for_messages(&dir, "new@example.com", 2);
        assert!(messages[1].contains("as analyst"), "{}", messages[1]);
        let token = invite_token_of(&messages[1]);
        let accepted = app
            .post_json(
                "/v1/invites/accept",
                None,
                &json!({"token": token, "name": "Nia"}),
            )
            .expect(201);
        assert_eq!(accepted["tenant_id"], tenant.as_str());
        let new_token = accepted["token"].as_str().unwrap();
        assert_eq!(me(&app, new_token)["role"], "analyst");
        assert_eq!(me(&app, new_token)["name"], "New");
        app.post_json(
            "/v1/invites/accept",
            None,
            &json!({"token": token, "name": "Nia"}),
        )
        .problem(409, "invite-used");
        let forged = format!("{}0", &token[..token.len() - 1]);
        let forged = if forged == token {
            format!("{}1", &token[..token.len() - 1])
        } else {
            forged
        };
        app.post_json(
            "/v1/invites/accept",
            None,
            &json!({"token": forged, "name": "X"}),
        )
        .problem(404, "not-found");
        // A member leaves: a single invite fits again.
        let member_id = me(&app, &member)["user_id"].as_str().unwrap().to_owned();
        send(
            &app,
            "DELETE",
            &format!("/v1/members/{member_id}"),
            &member,
            None,
        )
        .expect(200);
        let single = app
            .post_json(
                "/v1/invites",
                Some(&owner),
                &json!({"email": "fourth@example.com", "role": "viewer"}),
            )
            .expect(201);
        assert_eq!(single["outcome"], "created");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            messages_to(&dir, "new@example.com").len(),
            2,
            "delivered once each"
        );
    });
}

#[test]
fn the_outbox_delivers_what_the_log_owes_after_a_restart() {
    let url = support::fresh_postgres();
    // A service without a transport: the invite is owed, in the log only.
    let first = spawn_app_with(Backend::PostgresAt(url.clone()), |s| s.outbox_dir = None);
    let (_, owner) = first.signup("Acme", "owner@example.com");
    first
        .post_json(
            "/v1/invites",
            Some(&owner),
            &json!({"email": "late@example.com", "role": "viewer"}),
        )
        .expect(201);
    // Another instance on the same log, with a transport, delivers it: once.
    let outbox = tempfile::tempdir().unwrap();
    let dir = outbox.path().to_path_buf();
    let _second = spawn_app_with(Backend::PostgresAt(url), |s| {
        s.outbox_dir = Some(dir.clone())
    });
    let messages = wait_for_messages(&dir, "late@example.com", 1);
    assert!(messages[0].contains("Invite token: inv_"));
    wait_for_events(&first, &owner, "message.delivered", 1);
    // And not again: the delivery is in the log.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(messages_to(&dir, "late@example.com").len(), 1);
    wait_for_events(&first, &owner, "message.delivered", 1);
}

/// A tiny SMTP server made in the test: enough of RFC 5321 for one client (greeting, EHLO, MAIL,
/// RCPT, DATA, RSET, NOOP, QUIT; no TLS, no AUTH). Each message received goes to the channel.
fn smtp_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut lines = BufReader::new(conn);
                let mut say = |s: &str| out.write_all(s.as_bytes());
                say("220 test.invalid ESMTP\r\n").unwrap();
                let mut line = String::new();
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let ok = match verb.as_str() {
                        "EHLO" | "HELO" => say("250-test.invalid\r\n250 8BITMIME\r\n"),
                        "MAIL" | "RCPT" | "RSET" | "NOOP" => say("250 OK\r\n"),
                        "DATA" => {
                            say("354 go ahead\r\n").unwrap();
                            let mut message = String::new();
                            loop {
                                let mut l = String::new();
                                if lines.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                                    break;
                                }
                                message.push_str(l.strip_prefix('.').unwrap_or(&l));
                            }
                            let _ = tx.send(message);
                            say("250 queued\r\n")
                        }
                        "QUIT" => {
                            let _ = say("221 bye\r\n");
                            return;
                        }
                        _ => say("502 not implemented\r\n"),
                    };
                    if ok.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (port, rx)
}

#[test]
fn the_outbox_sends_invites_and_codes_through_smtp() {
    let (port, received) = smtp_listener();
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.smtp_url = Some(api::settings::Secret(format!("smtp://127.0.0.1:{port}")));
        s.smtp_from = "Acme via Tenantry <no-reply@example.com>".into();
    });
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    app.post_json(
        "/v1/invites",
        Some(&owner),
        &json!({"email": "smtp@example.com", "role": "analyst"}),
    )
    .expect(201);
    let message = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the invite reaches the SMTP server");
    assert!(message.contains("To: smtp@example.com"), "{message}");
    assert!(
        message.contains("From: \"Acme via Tenantry\" <no-reply@example.com>")
            || message.contains("From: Acme via Tenantry <no-reply@example.com>"),
        "{message}"
    );
    assert!(
        message.contains("@tenantry.outbox>"),
        "a Message-ID of the outbox: {message}"
    );
    let token = invite_token_of(&message);
    let accepted = app
        .post_json(
            "/v1/invites/accept",
            None,
            &json!({"token": token, "name": "Sam"}),
        )
        .expect(201);
    let sam = accepted["token"].as_str().unwrap();
    assert_eq!(me(&app, sam)["role"], "analyst");
    // A sign-in code, through the same relay.
    app.post_json(
        "/v1/sign-in",
        None,
        &json!({"tenant": tenant, "email": "smtp@example.com"}),
    )
    .expect(202);
    let message = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the code reaches the SMTP server");
    let code = code_of(&message);
    app.post_json(
        "/v1/sign-in/verify",
        None,
        &json!({"tenant": tenant, "email": "smtp@example.com", "code": code}),
    )
    .expect(200);
    let delivered = wait_for_events(&app, &owner, "message.delivered", 2);
    let via: Vec<&Value> = delivered.iter().map(|e| &e["payload"]["via"]).collect();
    assert_eq!(via, [&json!("smtp"), &json!("smtp")]);
    // Each once.
    assert!(received.recv_timeout(Duration::from_millis(600)).is_err());
}

#[test]
fn ten_thousand_rows_are_one_request_and_a_retry_replays_the_report() {
    let outbox = tempfile::tempdir().unwrap();
    let dir = outbox.path().to_path_buf();
    let app = spawn_app_with(Backend::Embedded, |s| s.outbox_dir = Some(dir.clone()));
    let (_, owner) = app.signup("Big", "owner@big.example.com");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let csv: String = std::iter::once("email,role,name\r\n".to_owned())
        .chain((0..10_000).map(|i| format!("u{i}@big.example.com,viewer,\"User {i}\"\r\n")))
        .collect();
    let auth = bearer(&owner);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "text/csv"),
        ("Idempotency-Key", "big-import"),
    ];
    let first = app
        .send("POST", "/v1/invites/csv", &headers, Some(csv.as_bytes()))
        .expect(200);
    assert_eq!(first["counts"], json!({"created": 10_000}));
    let replay = app
        .send("POST", "/v1/invites/csv", &headers, Some(csv.as_bytes()))
        .expect(200);
    assert_eq!(replay, first);
    let events = app
        .get("/v1/audit/events?type=invite.created&limit=1", &owner)
        .expect(200);
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    // The outbox gets to them, one file each (the first ones).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&dir).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "no message delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_scheduled_downgrade_keeps_its_seats_until_it_takes_effect() {
    let app = spawn_app_with(Backend::Embedded, |_| {});
    let (_, owner) = app.signup("Shrinking", "owner@example.com");
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    app.add_member(&owner, "a@example.com", "viewer");
    // Back to Free (3 seats) next period; Pro (25 seats) is in force until then.
    let scheduled = app
        .post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "free"}))
        .expect(200);
    assert!(
        app.get("/v1/tenant", &owner).expect(200)["pending_plan_change"].is_object(),
        "{scheduled}"
    );
    // A third seat fits both plans; a fourth would not fit Free when it takes effect.
    app.post_json(
        "/v1/invites",
        Some(&owner),
        &json!({"email": "b@example.com", "role": "viewer"}),
    )
    .expect(201);
    app.post_json(
        "/v1/members",
        Some(&owner),
        &json!({"email": "c@example.com", "name": "C", "role": "viewer"}),
    )
    .problem(409, "seat-limit");
    import(&app, &owner, "", b"c@example.com,viewer\n").problem(409, "seat-limit");
}
