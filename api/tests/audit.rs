//! The audit log through the real server (issue 12): a bundle from `POST /v1/audit/bundles`
//! verifies PASS with the real `tenantry-verify` binary, its manifest signature verifies with
//! `openssl pkeyutl -verify -pubin -rawin`, a later checkpoint is proven consistent with an
//! earlier one, a tampered bundle FAILs, and key rotation keeps the old keys listed.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use support::{Backend, TestApp, spawn_app};

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
            // This test binary is target/<profile>/deps/audit-…; the verifier is target/<profile>/.
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

/// Run a command; answer its exit code and output, printing the whole run on request.
fn run(cmd: &mut Command) -> (i32, String) {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let text = format!(
        "$ {shown}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Rename the tenant `n` times: one event each.
fn some_events(app: &TestApp, owner: &str, n: usize, tag: &str) {
    for i in 0..n {
        app.send(
            "PATCH",
            "/v1/tenant",
            &[
                ("Authorization", &format!("Bearer {owner}")),
                ("Content-Type", "application/json"),
            ],
            Some(
                json!({"name": format!("Acme {tag} {i}")})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .expect(200);
    }
}

fn bundle(app: &TestApp, token: &str, from: &str, to: &str) -> support::Response {
    app.post_json(
        "/v1/audit/bundles",
        Some(token),
        &json!({"from": from, "to": to}),
    )
}

/// The current log and export keys' PEMs, written into `dir`.
fn current_keys(app: &TestApp, token: &str, dir: &Path) -> (PathBuf, PathBuf, Value) {
    let ring = app.get("/v1/audit/keys", token).expect(200);
    let pick = |kind: &str| {
        let k = ring["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind && k["current"] == true)
            .unwrap_or_else(|| panic!("no current {kind} key in {ring}"))
            .clone();
        let path = dir.join(format!("{kind}-{}.pem", k["generation"]));
        std::fs::write(&path, k["pem"].as_str().unwrap()).unwrap();
        path
    };
    (pick("log"), pick("export"), ring)
}

fn audit_bundles_from_the_real_server_verify_with_tenantry_verify_and_openssl(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let (tenant, owner) = app.signup("Acme", "owner@acme.test");
    let compliance = app.add_member(&owner, "audit@acme.test", "compliance");
    let analyst = app.add_member(&owner, "analyst@acme.test", "analyst");
    some_events(&app, &owner, 5, "a");

    // Who may: owner and compliance bundle; an analyst may not.
    let far = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    bundle(&app, &analyst, &rfc3339(start), &far).problem(403, "forbidden");
    bundle(&app, &owner, &far, &rfc3339(start)).problem(422, "validation-failed");

    let (log_pem, export_pem, _) = current_keys(&app, &compliance, dir.path());
    let cp1 = app.get("/v1/audit/checkpoint", &compliance).expect(200);
    assert_eq!(cp1["tenant_id"], tenant);
    assert!(cp1["origin"].as_str().unwrap().ends_with(&tenant));
    let size1 = cp1["size"].as_u64().unwrap();
    assert!(size1 >= 10, "sign-up, two members, five renames: {cp1}");
    let cp1_path = dir.path().join("cp1");
    std::fs::write(&cp1_path, cp1["note"].as_str().unwrap()).unwrap();

    // First bundle: everything so far.
    let to1 = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::seconds(1));
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let r = bundle(&app, &compliance, &rfc3339(start), &to1);
    assert_eq!(r.status, 200, "{}", r.exchange);
    assert_eq!(r.header("content-type"), Some("application/gzip"));
    assert_eq!(
        r.header("x-tenantry-tree-size")
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        size1,
        "the bundle proves against the tree as of the request"
    );
    let b1 = dir.path().join("b1.tar.gz");
    std::fs::write(&b1, &r.body).unwrap();
    let (code, out) = run(Command::new(verifier())
        .arg(&b1)
        .arg("--key")
        .arg(&log_pem)
        .arg("--key")
        .arg(&export_pem)
        .args(["--tenant", &tenant]));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    for check in [
        "manifest-signature",
        "checkpoint-signature",
        "range-proof",
        "events",
        "trust",
    ] {
        assert!(out.contains(&format!("PASS {check}")), "{check}:\n{out}");
    }

    // The manifest's signature, with OpenSSL alone.
    let unpacked = dir.path().join("b1");
    std::fs::create_dir(&unpacked).unwrap();
    let (code, out) = run(Command::new("tar")
        .arg("-xzf")
        .arg(&b1)
        .arg("-C")
        .arg(&unpacked));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(&export_pem)
        .arg("-in")
        .arg(unpacked.join("manifest.json"))
        .arg("-sigfile")
        .arg(unpacked.join("manifest.json.sig")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Signature Verified Successfully"), "{out}");
    // And the log key does not verify it: the two keys are different.
    let (code, _) = run(Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(&log_pem)
        .arg("-in")
        .arg(unpacked.join("manifest.json"))
        .arg("-sigfile")
        .arg(unpacked.join("manifest.json.sig")));
    assert_ne!(code, 0);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["tenant"], tenant);
    assert_eq!(manifest["previous_bundle_id"], Value::Null);

    // A changed event fails: the payload's hash no longer matches its leaf.
    let events = unpacked.join("events.jsonl");
    let text = std::fs::read_to_string(&events).unwrap();
    std::fs::write(&events, text.replacen("Acme a 1", "Acme a 9", 1)).unwrap();
    let tampered = dir.path().join("tampered.tar.gz");
    let (code, out) = run(Command::new("tar")
        .arg("-czf")
        .arg(&tampered)
        .arg("-C")
        .arg(&unpacked)
        .arg("."));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(Command::new(verifier())
        .arg(&tampered)
        .arg("--key")
        .arg(&log_pem)
        .arg("--key")
        .arg(&export_pem));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL"), "{out}");

    // More events, then a second bundle: its checkpoint is proven consistent with the first
    // checkpoint (the log was only appended to), and with one handed out in between (every
    // checkpoint handed out is recorded), and it names the first bundle.
    some_events(&app, &owner, 4, "b");
    let cp2 = app.get("/v1/audit/checkpoint", &owner).expect(200);
    assert!(cp2["size"].as_u64().unwrap() > size1);
    let cp2_path = dir.path().join("cp2");
    std::fs::write(&cp2_path, cp2["note"].as_str().unwrap()).unwrap();
    some_events(&app, &owner, 2, "c");
    let far = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let r = bundle(&app, &owner, &to1, &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    let b2 = dir.path().join("b2.tar.gz");
    std::fs::write(&b2, &r.body).unwrap();
    let (code, out) = run(Command::new(verifier())
        .arg(&b2)
        .arg("--key")
        .arg(&log_pem)
        .arg("--key")
        .arg(&export_pem)
        .args(["--tenant", &tenant])
        .arg("--known-checkpoint")
        .arg(&cp1_path));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS known-checkpoint"), "{out}");
    let (code, out) = run(Command::new(verifier())
        .arg(&b2)
        .arg("--key")
        .arg(&log_pem)
        .arg("--key")
        .arg(&export_pem)
        .arg("--known-checkpoint")
        .arg(&cp2_path));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS known-checkpoint"), "{out}");
    let b2_manifest = {
        let d = dir.path().join("b2");
        std::fs::create_dir(&d).unwrap();
        run(Command::new("tar").arg("-xzf").arg(&b2).arg("-C").arg(&d));
        let m: Value =
            serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
        m
    };
    assert_eq!(b2_manifest["previous_bundle_id"], manifest["bundle_id"]);

    // A platform operator reads any tenant's checkpoint; a member only their own.
    let ops = app.operator_token(domain::PlatformRole::Ops);
    let cp = app
        .get(&format!("/v1/audit/checkpoint?tenant={tenant}"), &ops)
        .expect(200);
    assert!(cp["size"].as_u64().unwrap() >= cp2["size"].as_u64().unwrap());
    let (other, _) = app.signup("Other", "owner@other.test");
    app.get(&format!("/v1/audit/checkpoint?tenant={other}"), &owner)
        .problem(403, "forbidden");

    // Rotation: a new log key is in force, the old one stays listed, and a bundle signed now
    // verifies with the new keys.
    let rotated = app
        .send(
            "POST",
            "/v1/audit/keys/log/rotate",
            &[("Authorization", &format!("Bearer {ops}"))],
            None,
        )
        .expect(201);
    assert_eq!(rotated["key"]["generation"], 2);
    let (new_log, export_pem, ring) = current_keys(&app, &owner, dir.path());
    let logs: Vec<&Value> = ring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "log")
        .collect();
    assert_eq!(logs.len(), 2, "{ring}");
    assert_ne!(
        std::fs::read(&new_log).unwrap(),
        std::fs::read(&log_pem).unwrap()
    );
    let r = bundle(&app, &owner, &rfc3339(start), &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    let b3 = dir.path().join("b3.tar.gz");
    std::fs::write(&b3, &r.body).unwrap();
    let (code, out) = run(Command::new(verifier())
        .arg(&b3)
        .arg("--key")
        .arg(&new_log)
        .arg("--key")
        .arg(&export_pem)
        .args(["--tenant", &tenant]));
    assert_eq!(code, 0, "{out}");
}

fn audit_routes_follow_the_flag_and_refuse_empty_ranges(app: TestApp) {
    let (_, owner) = app.signup("Quiet", "owner@quiet.test");
    let past = "2001-01-01T00:00:00Z";
    let r = bundle(&app, &owner, past, "2001-01-02T00:00:00Z");
    let p = r.problem(422, "validation-failed");
    assert!(p.to_string().contains("empty"), "{p}");
    bundle(&app, &owner, "yesterday", past).problem(422, "validation-failed");

    // With the flag off for the tenant, every audit route says so.
    let me = app.get("/v1/tenant", &owner).expect(200);
    let tenant = me["tenant_id"].as_str().unwrap().to_owned();
    let ops = app.operator_token(domain::PlatformRole::Ops);
    put_json(
        &app,
        &format!("/v1/tenants/{tenant}/flags/auditV12"),
        &ops,
        &json!({"enabled": false}),
    )
    .expect(200);
    app.get("/v1/audit/checkpoint", &owner)
        .problem(403, "feature-disabled");
    bundle(&app, &owner, past, "2001-01-02T00:00:00Z").problem(403, "feature-disabled");
    app.get("/v1/audit/state", &owner)
        .problem(403, "feature-disabled");
}

/// `t` to the microsecond, spelled as the bundle format spells times.
fn micros(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn audit_replay_of_a_bundle_equals_the_services_state_at_every_moment(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let mut moments = vec![micros(time::OffsetDateTime::now_utc())];
    let step = |moments: &mut Vec<String>| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        moments.push(micros(time::OffsetDateTime::now_utc()));
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let (tenant, owner) = app.signup("Replayed", "owner@replayed.test");
    step(&mut moments);
    let compliance = app.add_member(&owner, "audit@replayed.test", "compliance");
    app.add_member(&owner, "analyst@replayed.test", "analyst");
    step(&mut moments);
    some_events(&app, &owner, 2, "r");
    app.post_json("/v1/tenant/plan", Some(&owner), &json!({"plan": "pro"}))
        .expect(200);
    step(&mut moments);
    let ops = app.operator_token(domain::PlatformRole::Ops);
    app.send(
        "PUT",
        &format!("/v1/tenants/{tenant}/flags/insightsV11"),
        &[
            ("Authorization", &format!("Bearer {ops}")),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled": false}"#),
    )
    .expect(200);
    let preset = json!({"name": "replayed", "text": {"detectors": ["email"], "method": "replace"}});
    app.post_json("/v1/presets", Some(&owner), &preset)
        .expect(201);
    step(&mut moments);
    let far = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let r = bundle(&app, &compliance, "2000-01-01T00:00:00Z", &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    let path = dir.path().join("all.tar.gz");
    std::fs::write(&path, &r.body).unwrap();
    let (log_pem, export_pem, _) = current_keys(&app, &compliance, dir.path());
    let mut distinct = std::collections::BTreeSet::new();
    for at in &moments {
        let service = app
            .get(&format!("/v1/audit/state?at={at}"), &compliance)
            .expect(200);
        let (code, out) = run(Command::new(verifier())
            .arg("replay")
            .arg(&path)
            .args(["--at", at])
            .arg("--key")
            .arg(&log_pem)
            .arg("--key")
            .arg(&export_pem)
            .args(["--tenant", &tenant]));
        assert_eq!(code, 0, "{out}");
        let stdout = out
            .split("--- stdout\n")
            .nth(1)
            .and_then(|s| s.split("\n--- stderr").next())
            .unwrap();
        let replayed: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(replayed, service, "at {at}");
        distinct.insert(service["events"].as_u64().unwrap());
    }
    assert_eq!(
        distinct.len(),
        moments.len(),
        "every moment saw a different state"
    );
    let last = app
        .get(
            &format!("/v1/audit/state?at={}", moments.last().unwrap()),
            &owner,
        )
        .expect(200);
    assert_eq!(last["plan"], "pro");
    assert_eq!(last["members"].as_array().unwrap().len(), 3);
    assert_eq!(last["flags"]["insightsV11"], false);
    assert_eq!(last["presets"][0]["name"], "replayed");
    assert_eq!(
        app.get(&format!("/v1/audit/state?at={}", moments[0]), &owner)
            .expect(200)["events"],
        0,
        "before the sign-up there is nothing"
    );

    // A bundle that does not start at the tenant's first event cannot be replayed.
    let r = bundle(&app, &compliance, &moments[2], &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    let part = dir.path().join("part.tar.gz");
    std::fs::write(&part, &r.body).unwrap();
    let (code, out) = run(Command::new(verifier())
        .arg("replay")
        .arg(&part)
        .args(["--at", moments.last().unwrap()])
        .arg("--key")
        .arg(&log_pem)
        .arg("--key")
        .arg(&export_pem));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("whole history"), "{out}");
}

fn put_json(app: &TestApp, path: &str, token: &str, body: &Value) -> support::Response {
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

fn audit_bundles_prove_the_retention_policy_from_the_log(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, owner) = app.signup("Kept", "owner@kept.test");
    let compliance = app.add_member(&owner, "audit@kept.test", "compliance");
    let rule = |keep_days: u32| {
        json!({"rules": [{"name": "members", "event_types": ["member.added"],
                          "fields": ["/email", "/name"], "keep_days": keep_days}]})
    };
    let bad =
        json!({"rules": [{"name": "x", "event_types": [], "fields": ["email"], "keep_days": 1}]});
    let p =
        put_json(&app, "/v1/audit/retention", &compliance, &bad).problem(422, "validation-failed");
    assert!(p.to_string().contains("rules[0].fields"), "{p}");
    let set = put_json(&app, "/v1/audit/retention", &compliance, &rule(30)).expect(200);
    assert!(set["global_position"].as_u64().unwrap() > 0);
    let again = put_json(&app, "/v1/audit/retention", &owner, &rule(30)).expect(200);
    assert_eq!(
        again["global_position"], 0,
        "the same policy writes nothing"
    );

    let (log_pem, export_pem, _) = current_keys(&app, &compliance, dir.path());
    let far = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let verify = |name: &str| {
        let r = bundle(&app, &compliance, "2000-01-01T00:00:00Z", &far);
        assert_eq!(r.status, 200, "{}", r.exchange);
        let path = dir.path().join(name);
        std::fs::write(&path, &r.body).unwrap();
        run(Command::new(verifier())
            .arg(&path)
            .arg("--key")
            .arg(&log_pem)
            .arg("--key")
            .arg(&export_pem)
            .args(["--tenant", &tenant]))
    };
    // Inside the window: the policy is proven from the log and nothing needs erasing yet.
    let (code, out) = verify("kept.tar.gz");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS retention"), "{out}");

    // A zero-day window puts both members' personal data past it at once. Until retention is
    // applied (hourly here, ADR 032) the bundle honestly fails the retention proof instead of
    // claiming it.
    put_json(&app, "/v1/audit/retention", &owner, &rule(0)).expect(200);
    let (code, out) = verify("past.tar.gz");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL retention") && out.contains("not erased"),
        "{out}"
    );
}

/// Verify a bundle file with the real `tenantry-verify` and the keys at hand.
fn verify_file(path: &Path, keys: &[&PathBuf], tenant: &str, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(verifier());
    cmd.arg(path);
    for k in keys {
        cmd.arg("--key").arg(k);
    }
    cmd.args(["--tenant", tenant]).args(extra);
    run(&mut cmd)
}

/// The subject keys that seal the tenant's `member.added` events, read from the store itself
/// (raw: the stored bytes), with whether each still has its secret.
fn member_keys(app: &TestApp, tenant: &str) -> Vec<(String, bool)> {
    let tenant: domain::TenantId = tenant.parse().unwrap();
    let location = app.location.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = store::Store::open(&location).await.unwrap();
            let events = store
                .raw()
                .read_stream(tenant, &format!("tenant-{tenant}"), 1, usize::MAX)
                .await
                .unwrap();
            let mut out = Vec::new();
            for e in events.iter().filter(|e| e.event_type == "member.added") {
                assert!(
                    domain::personal::is_sealed_version(e.schema_version),
                    "a member's email is stored sealed: {e:?}"
                );
                assert!(!e.payload.as_str().contains("@kept.test"), "{e:?}");
                for kid in store::key_ids_of(&e.event_type, e.schema_version, &e.payload) {
                    let live = store.subject_key(tenant, &kid).await.unwrap().is_some();
                    out.push((kid, live));
                }
            }
            store.close().await;
            out
        })
    })
    .join()
    .unwrap()
}

/// Poll `GET /v1/me` with `token` until its email reads `want` (a rebuild runs after erasure).
fn wait_for_email(app: &TestApp, token: &str, want: &str) -> Value {
    let mut me = Value::Null;
    for _ in 0..100 {
        me = app.get("/v1/me", token).expect(200);
        if me["email"] == want {
            return me;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the email never read {want:?}: {me}");
}

/// Item 5 through the real server: the service's retention schedule (every second here) erases
/// the members' personal data past a zero-day window; a bundle made afterwards verifies PASS
/// (no plaintext past the window, every erasure for a policy reason), the read models show the
/// values as erased, and the keys are gone from the store (the ciphertext cannot be opened).
fn retention_schedule_erases_past_the_window_and_the_bundle_verifies(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let (tenant, owner) = app.signup("Kept", "owner@kept.test");
    let compliance = app.add_member(&owner, "audit@kept.test", "compliance");
    let ann = app.add_member(&owner, "ann@kept.test", "analyst");
    assert_eq!(
        app.get("/v1/me", &ann).expect(200)["email"],
        "ann@kept.test"
    );
    assert!(
        member_keys(&app, &tenant).iter().all(|(_, live)| *live),
        "sealed with live keys"
    );
    let (log_pem, export_pem, _) = current_keys(&app, &compliance, dir.path());
    let far = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    put_json(
        &app,
        "/v1/audit/retention",
        &compliance,
        &json!({"rules": [{"name": "members", "event_types": ["member.added"],
                           "fields": ["/email", "/name"], "keep_days": 0}]}),
    )
    .expect(200);
    wait_for_email(&app, &ann, domain::personal::ERASED);
    let me = app.get("/v1/me", &owner).expect(200);
    assert_eq!(me["name"], domain::personal::ERASED, "{me}");
    let keys = member_keys(&app, &tenant);
    assert_eq!(keys.len(), 3, "owner, compliance and ann: {keys:?}");
    assert!(
        keys.iter().all(|(_, live)| !live),
        "every key destroyed: {keys:?}"
    );

    let r = bundle(&app, &compliance, "2000-01-01T00:00:00Z", &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    let path = dir.path().join("erased.tar.gz");
    std::fs::write(&path, &r.body).unwrap();
    let (code, out) = verify_file(&path, &[&log_pem, &export_pem], &tenant, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS retention"), "{out}");
    // The erasure is in the log once: the schedule running again finds nothing new to erase.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let events = app
        .get(
            "/v1/audit/events?type=erasure.applied&limit=100",
            &compliance,
        )
        .expect(200);
    let erasures = events.to_string().matches("erasure.applied").count();
    assert_eq!(erasures, 1, "{events}");
}

/// Done-when: erasing a member's data (at their request, inside every window) leaves every
/// earlier checkpoint and proof valid. A bundle and a checkpoint are taken before; after the
/// erasure the old bundle still verifies, a new bundle verifies PASS and proves the old
/// checkpoint a prefix of its tree (`--known-checkpoint`), and the member reads as erased.
fn erasing_a_member_keeps_every_earlier_checkpoint_and_proof_valid(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let start = "2000-01-01T00:00:00Z";
    let (tenant, owner) = app.signup("Kept", "owner@kept.test");
    let compliance = app.add_member(&owner, "audit@kept.test", "compliance");
    let ann = app.add_member(&owner, "ann@kept.test", "analyst");
    let ann_id = app.get("/v1/me", &ann).expect(200)["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    some_events(&app, &owner, 3, "before");
    // A year's window: nothing is past it, so only the member's request may erase.
    put_json(
        &app,
        "/v1/audit/retention",
        &compliance,
        &json!({"rules": [{"name": "members", "event_types": ["member.added"],
                           "fields": ["/email", "/name"], "keep_days": 365}]}),
    )
    .expect(200);
    let (log_pem, export_pem, _) = current_keys(&app, &compliance, dir.path());
    let cp1 = app.get("/v1/audit/checkpoint", &compliance).expect(200);
    let cp1_path = dir.path().join("cp1");
    std::fs::write(&cp1_path, cp1["note"].as_str().unwrap()).unwrap();
    let far = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let before = dir.path().join("before.tar.gz");
    let r = bundle(&app, &compliance, start, &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    std::fs::write(&before, &r.body).unwrap();
    let keys = [&log_pem, &export_pem];
    let (code, out) = verify_file(&before, &keys, &tenant, &[]);
    assert_eq!(code, 0, "{out}");

    // Who may: owner and compliance; an analyst may not; a bad id is a 422.
    app.post_json(
        "/v1/audit/erasures",
        Some(&ann),
        &json!({"user_id": ann_id}),
    )
    .problem(403, "forbidden");
    app.post_json(
        "/v1/audit/erasures",
        Some(&owner),
        &json!({"user_id": "nope"}),
    )
    .problem(422, "validation-failed");
    let done = app
        .post_json(
            "/v1/audit/erasures",
            Some(&compliance),
            &json!({"user_id": ann_id}),
        )
        .expect(200);
    assert_eq!(done["events_erased"], 1, "{done}");
    assert_eq!(done["keys_destroyed"], 1, "{done}");
    assert_eq!(done["erasures"][0]["rule"], "$subject-request", "{done}");
    let again = app
        .post_json(
            "/v1/audit/erasures",
            Some(&owner),
            &json!({"user_id": ann_id}),
        )
        .expect(200);
    assert_eq!(again["events_erased"], 0, "idempotent: {again}");
    assert_eq!(again["global_position"], 0, "{again}");
    wait_for_email(&app, &ann, domain::personal::ERASED);
    assert_eq!(
        app.get("/v1/me", &owner).expect(200)["email"],
        "owner@kept.test",
        "only ann's data is erased"
    );
    let live: Vec<bool> = member_keys(&app, &tenant)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(live.iter().filter(|l| !**l).count(), 1, "{live:?}");

    // The old bundle (and its checkpoint and proofs) still verify; a new bundle verifies and
    // proves the old checkpoint is a prefix of its tree.
    let (code, out) = verify_file(&before, &keys, &tenant, &[]);
    assert_eq!(code, 0, "{out}");
    some_events(&app, &owner, 2, "after");
    let after = dir.path().join("after.tar.gz");
    let r = bundle(&app, &compliance, start, &far);
    assert_eq!(r.status, 200, "{}", r.exchange);
    std::fs::write(&after, &r.body).unwrap();
    let known = cp1_path.to_str().unwrap();
    let (code, out) = verify_file(&after, &keys, &tenant, &["--known-checkpoint", known]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS known-checkpoint"), "{out}");
    assert!(out.contains("PASS retention"), "{out}");
}

macro_rules! with_retention_every_second {
    ($($name:ident),* $(,)?) => {
        mod embedded_retention {
            $( #[test] fn $name() {
                super::$name(super::support::spawn_app_with(super::Backend::Embedded, |s| s.retention_interval_secs = 1));
            } )*
        }
        mod postgres_retention {
            $( #[test] fn $name() {
                super::$name(super::support::spawn_app_with(super::Backend::Postgres, |s| s.retention_interval_secs = 1));
            } )*
        }
    };
}

with_retention_every_second!(retention_schedule_erases_past_the_window_and_the_bundle_verifies);

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(spawn_app(super::Backend::Embedded)); } )*
            use super::spawn_app;
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(spawn_app(super::Backend::Postgres)); } )*
            use super::spawn_app;
        }
    };
}

on_both_stores!(
    audit_bundles_from_the_real_server_verify_with_tenantry_verify_and_openssl,
    audit_routes_follow_the_flag_and_refuse_empty_ranges,
    audit_replay_of_a_bundle_equals_the_services_state_at_every_moment,
    audit_bundles_prove_the_retention_policy_from_the_log,
    erasing_a_member_keeps_every_earlier_checkpoint_and_proof_valid,
);
