//! People the directory makes, through the real server on both stores (issue 10's gaps; ADR 037):
//! members made by an SSO first login and by SCIM get a first token of kind `sso` / `scim`; their
//! SSO and SCIM events are stored sealed; erasing such a member shows `[erased]` for those fields
//! in the audit feed, frees the SCIM userName, and the audit bundle still verifies PASS.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use support::{Backend, Response, TestApp, spawn_app_with};

const ISSUER: &str = "https://idp.people.example";
const AUDIENCE: &str = "tenantry-people";
const ERASED: &str = domain::personal::ERASED;

/// The real `tenantry-verify`, built once by cargo beside this test binary.
fn verifier() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "verifier",
                    "--bin",
                    "tenantry-verify",
                ])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .output()
                .expect("run cargo build");
            assert!(
                out.status.success(),
                "building tenantry-verify failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let exe = std::env::current_exe().unwrap();
            let bin = exe
                .parent()
                .and_then(Path::parent)
                .unwrap()
                .join("tenantry-verify");
            assert!(bin.exists(), "no {}", bin.display());
            bin
        })
        .clone()
}

/// An Ed25519 identity provider made here: its signing key and public JWK set.
fn issuer() -> (EncodingKey, Value) {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    // PKCS#8 v1 of an Ed25519 private key: the fixed prefix, then the 32-byte seed (RFC 8410).
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let jwks = json!({"keys": [
        {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
         "x": B64.encode(signing.verifying_key().as_bytes())},
    ]});
    (EncodingKey::from_ed_der(&pkcs8), jwks)
}

fn id_token(key: &EncodingKey, email: &str, nonce: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("sub-{email}"), "email": email,
        "email_verified": true, "name": "Ola Sso", "groups": ["eng"], "nonce": nonce,
        "iat": now, "exp": now + 300,
    });
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    jsonwebtoken::encode(&header, &claims, key).expect("a signed token")
}

fn send_json(app: &TestApp, method: &str, path: &str, token: &str, body: &Value) -> Response {
    app.send(
        method,
        path,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

fn scim(app: &TestApp, method: &str, path: &str, token: &str, body: Option<&Value>) -> Response {
    let text = body.map(|b| b.to_string());
    app.send(
        method,
        path,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/scim+json"),
        ],
        text.as_deref().map(str::as_bytes),
    )
}

/// Every event of the tenant in the audit feed (one page is plenty here).
fn feed(app: &TestApp, token: &str) -> Vec<Value> {
    let page = app.get("/v1/audit/events?limit=500", token).expect(200);
    assert!(page["next_cursor"].is_null(), "one page: {page}");
    page["events"].as_array().unwrap().clone()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == t).collect()
}

/// The stored (raw) form of the tenant's events of `types`: (type, schema version, payload).
fn stored(
    app: &TestApp,
    tenant: &str,
    types: &'static [&'static str],
) -> Vec<(String, u16, String)> {
    let tenant: domain::TenantId = tenant.parse().unwrap();
    let location = app.location.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = store::Store::open(&location).await.unwrap();
            let mut out = Vec::new();
            for stream in [
                format!("scim-{tenant}"),
                format!("sso-logins-{tenant}"),
                format!("tenant-{tenant}"),
            ] {
                for e in store
                    .raw()
                    .read_stream(tenant, &stream, 1, usize::MAX)
                    .await
                    .unwrap()
                {
                    if types.contains(&e.event_type.as_str()) {
                        out.push((
                            e.event_type.clone(),
                            e.schema_version,
                            e.payload.as_str().to_owned(),
                        ));
                    }
                }
            }
            store.close().await;
            out
        })
    })
    .join()
    .unwrap()
}

/// A tenant on Enterprise with SSO (everyone a viewer) and a SCIM token: (tenant, owner, SCIM
/// token, the provider's key).
fn directory_tenant(app: &TestApp) -> (String, String, String, EncodingKey) {
    let (tenant, owner) = app.signup("People", "owner@people.test");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let (key, jwks) = issuer();
    send_json(
        app,
        "PUT",
        "/v1/sso/settings",
        &owner,
        &json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks": jwks}),
    )
    .expect(200);
    send_json(
        app,
        "PUT",
        "/v1/sso/mapping",
        &owner,
        &json!({"rules": [], "default_role": "viewer", "reason": "everyone views"}),
    )
    .expect(200);
    let scim_token = app
        .post_json("/v1/scim/token", Some(&owner), &json!({}))
        .expect(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (tenant, owner, scim_token, key)
}

fn people_made_by_sso_and_scim_get_their_token_kind_and_are_erased_with_their_directory_data(
    app: TestApp,
) {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, owner, scim_token, key) = directory_tenant(&app);

    // SCIM provisions Sam; an SSO first login makes Ola.
    let sam = scim(
        &app,
        "POST",
        "/scim/v2/Users",
        &scim_token,
        Some(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "sam@people.test", "externalId": "ext-sam-42", "active": true,
            "displayName": "Sam Scimson", "name": {"givenName": "Sam", "familyName": "Scimson"},
        })),
    );
    assert_eq!(sam.status, 201, "{}", sam.exchange);
    let sam_scim_id = sam.json()["id"].as_str().unwrap().to_owned();
    let ola = app
        .post_json(
            "/v1/sso/login",
            None,
            &json!({"tenant": tenant, "id_token": id_token(&key, "ola@people.test", "n-1"),
                    "nonce": "n-1"}),
        )
        .expect(200);
    let ola_id = ola["user_id"].as_str().unwrap().to_owned();
    let ola_token = ola["token"].as_str().unwrap().to_owned();
    // A returning login signs Ola in again with a token of kind `sso` too.
    app.post_json(
        "/v1/sso/login",
        None,
        &json!({"tenant": tenant, "id_token": id_token(&key, "ola@people.test", "n-2"),
                "nonce": "n-2"}),
    )
    .expect(200);

    // The audit feed: who each member is, and the kinds of their tokens.
    let events = feed(&app, &owner);
    let member_id = |email: &str| {
        of_type(&events, "member.added")
            .into_iter()
            .find(|e| e["payload"]["email"] == email)
            .unwrap_or_else(|| panic!("no member.added for {email}"))["payload"]["user_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let sam_id = member_id("sam@people.test");
    assert_eq!(member_id("ola@people.test"), ola_id);
    let kinds = |user: &str| -> Vec<String> {
        of_type(&events, "token.issued")
            .into_iter()
            .filter(|e| e["payload"]["user_id"] == user)
            .map(|e| e["payload"]["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(&sam_id), ["scim"], "SCIM's member: {events:?}");
    assert_eq!(kinds(&ola_id), ["sso", "sso"], "first login and return");
    assert_eq!(kinds(&member_id("owner@people.test")), ["sign_up"]);
    let login = of_type(&events, "sso.login_recorded");
    assert_eq!(login.len(), 2);
    for l in &login {
        assert_eq!(l["payload"]["user_id"], ola_id.as_str(), "{l}");
        assert_eq!(l["payload"]["email"], "ola@people.test", "{l}");
        assert_eq!(l["schema_version"], 2, "{l}");
    }
    let provisioned = of_type(&events, "scim.user_provisioned");
    assert_eq!(provisioned[0]["payload"]["user_name"], "sam@people.test");
    assert_eq!(provisioned[0]["payload"]["user_id"], sam_id.as_str());
    assert_eq!(
        provisioned[0]["schema_version"], 1,
        "readers see plaintext v1"
    );

    // Stored sealed: no email, name or external id in the bytes of the log.
    let raw = stored(
        &app,
        &tenant,
        &["sso.login_recorded", "scim.user_provisioned"],
    );
    assert_eq!(raw.len(), 3, "{raw:?}");
    for (t, v, payload) in &raw {
        assert!(domain::personal::is_sealed_version(*v), "{t} v{v}");
        for secret in [
            "sam@people.test",
            "ext-sam-42",
            "Scimson",
            "ola@people.test",
            "sub-ola",
        ] {
            assert!(!payload.contains(secret), "{t}: {payload}");
        }
    }
    assert!(
        raw.iter()
            .any(|(t, v, _)| t == "sso.login_recorded" && *v == 0x8000 + 2)
    );

    // A bundle before the erasures verifies.
    let keys = app.get("/v1/audit/keys", &owner).expect(200);
    let pem = |kind: &str| {
        let k = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind && k["current"] == true)
            .unwrap()
            .clone();
        let path = dir.path().join(format!("{kind}.pem"));
        std::fs::write(&path, k["pem"].as_str().unwrap()).unwrap();
        path
    };
    let (log_pem, export_pem) = (pem("log"), pem("export"));
    let far = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let fetch = |name: &str| {
        let r = app.post_json(
            "/v1/audit/bundles",
            Some(&owner),
            &json!({"from": "2000-01-01T00:00:00Z", "to": far}),
        );
        assert_eq!(r.status, 200, "{}", r.exchange);
        std::fs::write(dir.path().join(name), &r.body).unwrap();
    };
    let verify = |name: &str| {
        let path = dir.path().join(name);
        let out = Command::new(verifier())
            .arg(&path)
            .arg("--key")
            .arg(&log_pem)
            .arg("--key")
            .arg(&export_pem)
            .args(["--tenant", &tenant])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    fetch("before.tar.gz");
    let (code, out) = verify("before.tar.gz");
    assert_eq!(code, Some(0), "{out}");

    // Erase both at their request: the SCIM user's events go with Sam, the logins with Ola.
    let erase = |user: &str| {
        app.post_json(
            "/v1/audit/erasures",
            Some(&owner),
            &json!({"user_id": user}),
        )
        .expect(200)
    };
    let done = erase(&sam_id);
    assert_eq!(
        done["events_erased"], 2,
        "member.added, scim.user_provisioned: {done}"
    );
    let done = erase(&ola_id);
    assert_eq!(
        done["events_erased"], 3,
        "member.added and two logins: {done}"
    );

    let events = feed(&app, &owner);
    let text = serde_json::to_string(&events).unwrap();
    for gone in [
        "sam@people.test",
        "ext-sam-42",
        "Scimson",
        "ola@people.test",
        "sub-ola",
    ] {
        assert!(!text.contains(gone), "{gone} still in the feed");
    }
    let p = &of_type(&events, "scim.user_provisioned")[0]["payload"];
    for f in [
        "user_name",
        "external_id",
        "given_name",
        "family_name",
        "display_name",
        "email",
    ] {
        assert_eq!(p[f], ERASED, "{f}: {p}");
    }
    assert_eq!(p["user_id"], sam_id.as_str(), "the link is not personal");
    for l in of_type(&events, "sso.login_recorded") {
        assert_eq!(l["payload"]["email"], ERASED);
        assert_eq!(l["payload"]["subject"], ERASED);
        assert_eq!(l["payload"]["groups"], json!(["eng"]));
    }
    assert_eq!(
        app.get("/v1/me", &owner).expect(200)["email"],
        "owner@people.test",
        "only theirs"
    );

    // SCIM: the user is still there, its name erased; the name matches no filter and is free.
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = scim(&app, "GET", "/scim/v2/Users", &scim_token, None).json();
        if listed["Resources"][0]["userName"] == ERASED {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(listed["totalResults"], 1, "{listed}");
    assert_eq!(listed["Resources"][0]["id"], sam_scim_id.as_str());
    assert_eq!(listed["Resources"][0]["userName"], ERASED, "{listed}");
    for name in ["sam@people.test", "%5Berased%5D"] {
        let found = scim(
            &app,
            "GET",
            &format!("/scim/v2/Users?filter=userName%20eq%20%22{name}%22"),
            &scim_token,
            None,
        );
        assert_eq!(found.json()["totalResults"], 0, "{}", found.exchange);
    }
    let reserved = scim(
        &app,
        "POST",
        "/scim/v2/Users",
        &scim_token,
        Some(&json!({"userName": ERASED, "active": false})),
    );
    assert_eq!(reserved.status, 400, "{}", reserved.exchange);
    let again = scim(
        &app,
        "POST",
        "/scim/v2/Users",
        &scim_token,
        Some(&json!({"userName": "SAM@people.test", "active": false})),
    );
    assert_eq!(
        again.status, 201,
        "the erased name is free: {}",
        again.exchange
    );
    // Ola's token still works (erasure is of data, not access) and reads erased.
    let mut me = Value::Null;
    for _ in 0..100 {
        me = app.get("/v1/me", &ola_token).expect(200);
        if me["email"] == ERASED {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(me["email"], ERASED, "{me}");

    // The bundle before still verifies, and one after verifies PASS, erasures included.
    let (code, out) = verify("before.tar.gz");
    assert_eq!(code, Some(0), "{out}");
    fetch("after.tar.gz");
    let (code, out) = verify("after.tar.gz");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("PASS"), "{out}");
}

/// Sign-in by code answers a member's email and an unknown one alike (status, headers that
/// matter, body), and the member's code is still requested (after the answer).
fn sign_in_answers_members_and_strangers_alike(app: TestApp) {
    let (tenant, owner) = app.signup("Alike", "owner@alike.test");
    app.add_member(&owner, "ann@alike.test", "viewer");
    let ask = |email: &str| {
        app.post_json(
            "/v1/sign-in",
            None,
            &json!({"tenant": tenant, "email": email}),
        )
    };
    let known = ask("ann@alike.test");
    let unknown = ask("nobody@alike.test");
    for r in [&known, &unknown] {
        assert_eq!(r.status, 202, "{}", r.exchange);
    }
    assert_eq!(known.body, unknown.body);
    for h in ["content-type", "content-length"] {
        assert_eq!(known.header(h), unknown.header(h), "{h}");
    }
    let mut requested = Vec::new();
    for _ in 0..100 {
        let page = app
            .get("/v1/audit/events?type=sign_in.code_requested", &owner)
            .expect(200);
        requested = page["events"].as_array().unwrap().clone();
        if !requested.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(requested.len(), 1, "only the member's: {requested:?}");
    assert_eq!(requested[0]["payload"]["email"], "ann@alike.test");
}

/// A request with a chunked body (no length declared) of `chunks`.
fn chunked_csv(app: &TestApp, token: &str, key: Option<&str>, chunks: &[&[u8]]) -> Response {
    let mut req = format!(
        "POST /v1/invites/csv HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n",
        app.addr
    );
    if let Some(k) = key {
        req.push_str(&format!("Idempotency-Key: {k}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    for c in chunks {
        bytes.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        bytes.extend_from_slice(c);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    app.raw(&bytes)
}

/// The CSV body is read as it streams: rows split across chunks (quoted newlines, CRLF split in
/// two) read as the whole file does, a keyed request replays and refuses another body, and a
/// chunked body over the limit is 413 though it declared no length.
fn a_csv_body_is_parsed_as_it_streams(app: TestApp) {
    let (_, owner) = app.signup("Streamed", "owner@streamed.test");
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    let file: &[u8] = b"\xEF\xBB\xBFemail,role,name\r\na@streamed.test,viewer,\"Doe, Jane\"\r\nc@streamed.test,viewer,\"Two\r\nlines\"\r\n\r\nb@streamed.test,admin\r\nB@streamed.test,viewer\r\nnot-an-email,viewer\r\n";
    // The whole file at once (a declared length), as a dry run: what the stream must match.
    let whole = app
        .send(
            "POST",
            "/v1/invites/csv?dry_run=true",
            &[
                ("Authorization", &format!("Bearer {owner}")),
                ("Content-Type", "text/csv"),
            ],
            Some(file),
        )
        .expect(200);
    let chunks: Vec<&[u8]> = file.chunks(7).collect();
    let report = chunked_csv(&app, &owner, Some("k-1"), &chunks).expect(200);
    assert_eq!(report["rows"], whole["rows"], "{report}");
    let lines: Vec<(u64, &str)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(lines.len(), 5, "{report}");
    assert_eq!(lines[0], (2, "created"));
    assert_eq!(lines[1].0, 3);
    assert_eq!(
        &lines[2..],
        [(6, "created"), (7, "invalid"), (8, "invalid")]
    );
    // The same key and bytes (in other chunks) replay; the same key with another body is 422.
    let again = chunked_csv(&app, &owner, Some("k-1"), &[file]).expect(200);
    assert_eq!(again, report);
    chunked_csv(&app, &owner, Some("k-1"), &[b"c@streamed.test,viewer\n"])
        .problem(422, "idempotency-key-reused");
    // Over the limit (64 KiB here) with no declared length: 413 from the bytes read.
    let big = vec![b"x@streamed.test,viewer\n".repeat(512); 8];
    let parts: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    let p = chunked_csv(&app, &owner, None, &parts).problem(413, "payload-too-large");
    assert_eq!(p["limit"], 64 * 1024, "{p}");
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::spawn_app_with(super::Backend::Embedded, |s| s.dataset_limit = 64 * 1024)); } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::spawn_app_with(super::Backend::Postgres, |s| s.dataset_limit = 64 * 1024)); } )*
        }
    };
}

on_both_stores!(
    people_made_by_sso_and_scim_get_their_token_kind_and_are_erased_with_their_directory_data,
    sign_in_answers_members_and_strangers_alike,
    a_csv_body_is_parsed_as_it_streams,
);
