//! SSO through the real server, on both stores (issue 10, item 3; ADR 031): an OIDC test issuer
//! made here — RSA and Ed25519 keys generated in the test, ID tokens signed with them — and every
//! way a token must be refused; group → role mapping with drift; the mapping preview.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use support::{Backend, TestApp, spawn_app};

const ISSUER: &str = "https://idp.test.example";
const AUDIENCE: &str = "tenantry-test";

/// The test's identity provider: its signing keys and its public JWK set.
struct Issuer {
    rsa: EncodingKey,
    /// Another RSA key, never published: a token it signs under the published `kid` is forged.
    rsa_other: EncodingKey,
    /// The published RSA key's modulus (the bytes of an HS256 confusion attempt).
    rsa_public_der: Vec<u8>,
    ed: EncodingKey,
    jwks: Value,
}

fn rsa_key() -> (EncodingKey, rsa::RsaPublicKey, Vec<u8>) {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key");
    let der = private.to_pkcs1_der().expect("PKCS#1").as_bytes().to_vec();
    let public = private.to_public_key();
    let n = public.n().to_bytes_be();
    (EncodingKey::from_rsa_der(&der), public, n)
}

fn issuer() -> Issuer {
    let (rsa, public, n) = rsa_key();
    let (rsa_other, _, _) = rsa_key();
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    // PKCS#8 v1 of an Ed25519 private key: the fixed prefix, then the 32-byte seed (RFC 8410).
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let ed = EncodingKey::from_ed_der(&pkcs8);
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
         "n": B64.encode(&n), "e": B64.encode(public.e().to_bytes_be())},
        {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
         "x": B64.encode(signing.verifying_key().as_bytes())},
    ]});
    Issuer {
        rsa,
        rsa_other,
        rsa_public_der: n,
        ed,
        jwks,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An ID token's claims: valid for five minutes, for `email` in `groups`, with `nonce`.
fn claims(email: &str, groups: &[&str], nonce: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("sub-{email}"), "email": email,
        "email_verified": true, "name": "Test User", "groups": groups, "nonce": nonce,
        "iat": now(), "exp": now() + 300,
    })
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("a signed token")
}

fn login(app: &TestApp, tenant: &str, token: &str, nonce: Option<&str>) -> support::Response {
    let mut body = json!({"tenant": tenant, "id_token": token});
    if let Some(n) = nonce {
        body["nonce"] = json!(n);
    }
    app.post_json("/v1/sso/login", None, &body)
}

fn put(app: &TestApp, path: &str, token: &str, body: &Value) -> support::Response {
    app.send(
        "PUT",
        path,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

/// A tenant with SSO set up: (tenant id, owner token, issuer).
fn sso_tenant(app: &TestApp) -> (String, String, Issuer) {
    let (tenant, owner) = app.signup("Acme", "owner@example.com");
    app.post_json(
        "/v1/tenant/plan",
        Some(&owner),
        &json!({"plan": "enterprise"}),
    )
    .expect(200);
    let idp = issuer();
    put(
        app,
        "/v1/sso/settings",
        &owner,
        &json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks": idp.jwks}),
    )
    .expect(200);
    put(
        app,
        "/v1/sso/mapping",
        &owner,
        &json!({"rules": [
            {"group": "eng", "grant": "analyst", "priority": 10},
            {"group": "admins", "grant": "admin", "priority": 50},
            {"group": "contractors", "grant": "deny", "priority": 100},
        ], "default_role": "viewer", "reason": "first rules"}),
    )
    .expect(200);
    (tenant, owner, idp)
}

fn a_valid_id_token_signs_in_and_maps_groups_with_drift_on_a_later_login(app: TestApp) {
    let (tenant, owner, idp) = sso_tenant(&app);
    // A new email: a member is made with the mapped role, and the token works at once.
    let t = sign(
        &idp.rsa,
        Algorithm::RS256,
        "rsa-1",
        &claims("ana@example.com", &["eng"], "n-1"),
    );
    let first = login(&app, &tenant, &t, Some("n-1")).expect(200);
    assert_eq!(
        (first["created"].as_bool(), first["role"].as_str()),
        (Some(true), Some("analyst"))
    );
    let token = first["token"].as_str().unwrap();
    let me = app.get("/v1/me", token).expect(200);
    assert_eq!(
        (me["role"].as_str(), me["email"].as_str()),
        (Some("analyst"), Some("ana@example.com"))
    );
    // The same token again (same nonce): refused.
    login(&app, &tenant, &t, Some("n-1")).problem(401, "sso-replayed");
    // Her groups changed at the provider: an EdDSA token, the new role at this login (drift).
    let t2 = sign(
        &idp.ed,
        Algorithm::EdDSA,
        "ed-1",
        &claims("ana@example.com", &["eng", "admins"], "n-2"),
    );
    let second = login(&app, &tenant, &t2, Some("n-2")).expect(200);
    assert_eq!(second["created"], false);
    assert_eq!(second["role"], "admin");
    assert_eq!(second["role_changed_from"], "analyst");
    assert_eq!(second["user_id"], first["user_id"]);
    assert_eq!(
        app.get("/v1/me", second["token"].as_str().unwrap())
            .expect(200)["role"],
        "admin"
    );
    // The audit feed has the mapping, the login, the drift (reason sso_drift) and the token (kind sso).
    let audit = app.get("/v1/audit/events?limit=200", &owner).expect(200);
    let events = audit["events"].as_array().unwrap();
    let of = |t: &str| {
        events
            .iter()
            .filter(|e| e["event_type"] == t)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("sso.mapping_saved")[0]["payload"]["reason"],
        "first rules"
    );
    assert_eq!(of("sso.login_recorded").len(), 2);
    let drift = of("member.role_changed");
    assert_eq!(drift.len(), 1, "{audit}");
    assert_eq!(drift[0]["payload"]["reason"], "sso_drift");
    assert!(
        of("token.issued")
            .iter()
            .any(|e| e["payload"]["kind"] == "sso"),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(token),
        "tokens are never stored"
    );
    // A token without a nonce is single-use by itself.
    let mut c = claims("bo@example.com", &[], "unused");
    c.as_object_mut().unwrap().remove("nonce");
    let t3 = sign(&idp.rsa, Algorithm::RS256, "rsa-1", &c);
    assert_eq!(
        login(&app, &tenant, &t3, None).expect(200)["role"],
        "viewer"
    );
    login(&app, &tenant, &t3, None).problem(401, "sso-replayed");
}

fn every_bad_id_token_is_refused_and_writes_nothing(app: TestApp) {
    let (tenant, _owner, idp) = sso_tenant(&app);
    let good = claims("eve@example.com", &["eng"], "n");
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good.clone();
        f(c.as_object_mut().unwrap());
        c
    };
    let rs = |c: &Value| sign(&idp.rsa, Algorithm::RS256, "rsa-1", c);
    let none_token = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(good.to_string())
    );
    // HS256 keyed with the published RSA key's bytes: the classic algorithm confusion.
    let confused = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(&idp.rsa_public_der)).unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rs(&with(&|c| {
                c.insert("iat".into(), json!(now() - 900));
                c.insert("exp".into(), json!(now() - 120));
            })),
            "sso-token-time",
        ),
        (
            "not yet valid",
            rs(&with(&|c| {
                c.insert("nbf".into(), json!(now() + 600));
            })),
            "sso-token-time",
        ),
        (
            "issued in the future",
            rs(&with(&|c| {
                c.insert("iat".into(), json!(now() + 600));
                c.insert("exp".into(), json!(now() + 900));
            })),
            "sso-token-time",
        ),
        (
            "wrong audience",
            rs(&with(&|c| {
                c.insert("aud".into(), json!("someone-else"));
            })),
            "sso-audience",
        ),
        (
            "wrong issuer",
            rs(&with(&|c| {
                c.insert("iss".into(), json!("https://evil.example"));
            })),
            "sso-issuer",
        ),
        (
            "wrong key",
            sign(&idp.rsa_other, Algorithm::RS256, "rsa-1", &good),
            "sso-signature",
        ),
        (
            "unknown kid",
            sign(&idp.rsa, Algorithm::RS256, "rsa-9", &good),
            "sso-signature",
        ),
        (
            "EdDSA token under the RSA kid",
            sign(&idp.ed, Algorithm::EdDSA, "rsa-1", &good),
            "sso-signature",
        ),
        ("alg none", none_token, "sso-token-malformed"),
        (
            "HS256 with the RSA key as secret",
            confused,
            "sso-algorithm",
        ),
        (
            "RS512",
            sign(&idp.rsa, Algorithm::RS512, "rsa-1", &good),
            "sso-algorithm",
        ),
        (
            "no email",
            rs(&with(&|c| {
                c.remove("email");
            })),
            "sso-token-malformed",
        ),
        ("garbage", "a.b.c".into(), "sso-token-malformed"),
    ];
    let before = app.head();
    for (what, token, slug) in &cases {
        eprintln!("case: {what}");
        login(&app, &tenant, token, Some("n")).problem(401, slug);
    }
    // A nonce other than the one sent.
    login(&app, &tenant, &rs(&good), Some("other")).problem(401, "sso-nonce");
    assert_eq!(app.head(), before, "a refused token writes nothing");
    // The mapping denies contractors; an unknown tenant is 404; a tenant without SSO is 409.
    let denied = rs(&with(&|c| {
        c.insert("groups".into(), json!(["eng", "contractors"]));
    }));
    login(&app, &tenant, &denied, Some("n")).problem(403, "sso-denied");
    login(
        &app,
        "00000000-0000-4000-8000-000000000001",
        &rs(&good),
        Some("n"),
    )
    .problem(404, "not-found");
    let (other, _) = app.signup("NoSso", "x@example.com");
    login(&app, &other, &rs(&good), Some("n")).problem(409, "sso-not-configured");
}

fn the_preview_shows_who_gains_or_loses_without_saving(app: TestApp) {
    let (tenant, owner, idp) = sso_tenant(&app);
    for (email, groups, nonce) in [
        ("ana@example.com", vec!["eng"], "p1"),
        ("bo@example.com", vec!["sales"], "p2"),
        ("cy@example.com", vec!["eng", "admins"], "p3"),
    ] {
        let t = sign(
            &idp.rsa,
            Algorithm::RS256,
            "rsa-1",
            &claims(email, &groups, nonce),
        );
        login(&app, &tenant, &t, Some(nonce)).expect(200);
    }
    let proposed = json!({"rules": [
        {"group": "eng", "grant": "admin", "priority": 10},
        {"group": "sales", "grant": "deny", "priority": 20},
    ], "default_role": null});
    let r = app
        .post_json("/v1/sso/mapping/preview", Some(&owner), &proposed)
        .expect(200);
    assert_eq!(r["users_considered"], 3, "{r}");
    let lines: Vec<(String, Value, Value, String)> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["email"].as_str().unwrap().to_owned(),
                c["from"].clone(),
                c["to"].clone(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (
                "ana@example.com".into(),
                json!("analyst"),
                json!("admin"),
                "changes".into()
            ),
            (
                "bo@example.com".into(),
                json!("viewer"),
                Value::Null,
                "loses".into()
            ),
        ],
        "cy stays admin (the admins rule is gone, eng now grants admin): {r}"
    );
    // Nothing was saved.
    let m = app.get("/v1/sso/mapping", &owner).expect(200);
    assert_eq!(m["rules"].as_array().unwrap().len(), 3);
    // Only owners grant owner, in a preview as in a save.
    let admin = app.add_member(&owner, "adm@example.com", "admin");
    let to_owner = json!({"rules": [{"group": "eng", "grant": "owner", "priority": 1}], "default_role": "viewer"});
    app.post_json("/v1/sso/mapping/preview", Some(&admin), &to_owner)
        .problem(403, "forbidden");
    put(&app, "/v1/sso/mapping", &admin, &to_owner).problem(403, "forbidden");
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
    a_valid_id_token_signs_in_and_maps_groups_with_drift_on_a_later_login,
    every_bad_id_token_is_refused_and_writes_nothing,
    the_preview_shows_who_gains_or_loses_without_saving,
);
