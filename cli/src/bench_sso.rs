//! `tenantry bench sso` and `tenantry bench scim` (issue 10's numbers; ADR 031).
//!
//! `sso`: logins through the use case (`app::sso::login`, the work of `POST /v1/sso/login`
//! without HTTP: signature, claims, the replay guard, the mapping, the member's token) from many
//! clients at once, over several tenants, with ID tokens signed beforehand (half RS256, half
//! EdDSA) by keys made here. `scim`: the directory read model fed N provisioned users of one
//! tenant as the log would feed it, then SCIM's list with a `userName eq` filter and a page deep
//! in the list, timed through the use case (`app::scim::list_users`).

use crate::bench_insights::{Percentiles, percentiles};
use domain::DomainEvent;
use domain::scim::{ScimEvent, ScimUser, UserChanged};
use domain::sso::{JwksSource, Mapping, SsoAlg, SsoSettings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use projections::{Directory, DirectoryFilter, Projection};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use store::{Envelope, RawJson, Store};

#[derive(Debug, Serialize)]
pub struct SsoReport {
    pub backend: &'static str,
    pub tenants: usize,
    pub concurrency: usize,
    pub logins: usize,
    /// Logins that made a new member (the first of each user).
    pub new_members: usize,
    pub seconds: f64,
    pub logins_per_sec: f64,
}

const ISSUER: &str = "https://idp.bench.example";
const AUDIENCE: &str = "tenantry-bench";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The bench's identity provider: an RSA and an Ed25519 key, and the JWK set that publishes them.
struct Keys {
    rsa: EncodingKey,
    ed: EncodingKey,
    jwks: String,
}

fn keys() -> anyhow::Result<Keys> {
    use rand::RngCore;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
    let der = private.to_pkcs1_der()?.as_bytes().to_vec();
    let public = private.to_public_key();
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    // PKCS#8 v1 of an Ed25519 private key: the fixed prefix, then the seed (RFC 8410).
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64(&public.n().to_bytes_be()),
         "e": b64(&public.e().to_bytes_be())},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "alg": "EdDSA",
         "x": b64(signing.verifying_key().as_bytes())},
    ]});
    Ok(Keys {
        rsa: EncodingKey::from_rsa_der(&der),
        ed: EncodingKey::from_ed_der(&pkcs8),
        jwks: jwks.to_string(),
    })
}

pub async fn sso(
    store: &Store,
    config: app::Config,
    tenants: usize,
    concurrency: usize,
    logins: usize,
    users: usize,
) -> anyhow::Result<SsoReport> {
    let app = app::App::start(config, store.clone(), Arc::new(app::SystemClock)).await;
    let keys = Arc::new(keys()?);
    let mut tenant_ids = Vec::new();
    for i in 0..tenants {
        let ctx = app.ctx(store::Metadata::actor("bench:sso"));
        let signed = app::identity::sign_up(
            &app,
            &ctx,
            app::identity::SignUp {
                tenant_name: domain::tenant::TenantName::parse(&format!("Sso {i}"))?,
                email: domain::Email::parse(&format!("owner{i}@example.com"))?,
                name: domain::PersonName::parse("Owner")?,
                token: None,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = signed.tenant_id;
        app::metering::change_plan(&app, &ctx, t, domain::tenant::Plan::Enterprise, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        app::sso::set_settings(
            &app,
            &ctx,
            t,
            SsoSettings {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                jwks: JwksSource::Inline(keys.jwks.clone()),
                algorithms: vec![SsoAlg::RS256, SsoAlg::EdDSA],
                groups_claim: "groups".into(),
                clock_skew_seconds: 60,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        app::sso::save_mapping(
            &app,
            &ctx,
            t,
            domain::TenantRole::Owner,
            Mapping::default(),
            Some("bench".into()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        tenant_ids.push(t);
    }
    // Sign every token first, on every core: signing is the provider's work, not ours.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let per_worker = logins.div_ceil(concurrency);
    let mut signers = Vec::new();
    for w in 0..concurrency {
        let keys = keys.clone();
        signers.push(tokio::task::spawn_blocking(move || {
            (0..per_worker)
                .map(|k| {
                    let n = w * per_worker + k;
                    let user = n % users;
                    let claims = serde_json::json!({
                        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("u{user}"),
                        "email": format!("u{user}@example.com"), "name": "Bench User",
                        "groups": ["eng"], "nonce": format!("nonce-{n}"),
                        "iat": now, "exp": now + 600,
                    });
                    let (alg, kid, key) = if n.is_multiple_of(2) {
                        (Algorithm::RS256, "rsa", &keys.rsa)
                    } else {
                        (Algorithm::EdDSA, "ed", &keys.ed)
                    };
                    let mut header = Header::new(alg);
                    header.kid = Some(kid.into());
                    let token =
                        jsonwebtoken::encode(&header, &claims, key).expect("the bench's keys sign");
                    (n, format!("nonce-{n}"), token)
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut work = Vec::new();
    for s in signers {
        work.push(s.await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for batch in work {
        let (app, tenant_ids) = (app.clone(), tenant_ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut created = 0usize;
            for (n, nonce, token) in batch {
                let ctx = app.ctx(store::Metadata::actor("sso"));
                let done = app::sso::login(
                    &app,
                    &ctx,
                    app::sso::Login {
                        tenant: tenant_ids[n % tenant_ids.len()],
                        id_token: token,
                        nonce: Some(nonce),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("login {n}: {e}"))?;
                created += usize::from(done.created);
            }
            anyhow::Ok(created)
        }));
    }
    let mut new_members = 0;
    for t in tasks {
        new_members += t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let done = per_worker * concurrency;
    app.projections.shutdown().await;
    Ok(SsoReport {
        backend: store.backend_name(),
        tenants,
        concurrency,
        logins: done,
        new_members,
        seconds,
        logins_per_sec: done as f64 / seconds,
    })
}

#[derive(Debug, Serialize)]
pub struct ScimReport {
    pub users: usize,
    /// `filter=userName eq "…"` (any case), 200 a page at most.
    pub list_filter_user_name_ms: Percentiles,
    /// No filter, `startIndex` half-way through, `count=100`.
    pub list_page_mid_ms: Percentiles,
    /// Feeding the read model, per 10,000 events.
    pub feed_ms_per_10k: f64,
}

pub async fn scim(store: &Store, config: app::Config, users: usize) -> anyhow::Result<ScimReport> {
    let app = app::App::start(config, store.clone(), Arc::new(app::SystemClock)).await;
    let tenant = domain::TenantId::from_uuid(uuid::Uuid::from_u128(0xB3));
    // The same read model type the service reads, fed as the log would feed it.
    let dir = Directory::default();
    let now = time::OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for k in 0..users {
        let id = uuid::Uuid::from_u128(k as u128 + 1);
        let event = ScimEvent::UserProvisioned(UserChanged {
            user: ScimUser {
                scim_id: id,
                user_name: format!("user{k:06}@example.com"),
                external_id: Some(format!("ext-{k}")),
                given_name: Some("Bench".into()),
                family_name: Some(format!("User {k}")),
                display_name: None,
                active: true,
                email: Some(format!("user{k:06}@example.com")),
                user_id: None,
            },
            reason: "POST /Users".into(),
        });
        batch.push(Envelope {
            global_position: k as u64 + 1,
            tenant_id: tenant,
            stream_id: domain::scim::stream_id(tenant),
            stream_version: k as u64 + 1,
            event_id: id,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            occurred_at: now,
            recorded_at: now,
            actor: "scim".into(),
            correlation_id: id,
            causation_id: None,
            trace_id: None,
            payload: RawJson::from_value(&event.to_payload()),
        });
        if batch.len() == 10_000 || k + 1 == users {
            dir.apply(&batch)
                .map_err(|u| anyhow::anyhow!("{}: {}", u.event_type, u.reason))?;
            batch.clear();
        }
    }
    let feed = started.elapsed().as_secs_f64() * 1000.0 / (users as f64 / 10_000.0);
    // Swap it into the app's read model, so that the timed calls are the use case's.
    app.directory.adopt(&dir);
    let runs = 200;
    let mut filtered = Vec::with_capacity(runs);
    for r in 0..runs {
        let name = format!("USER{:06}@example.com", (r * 7919) % users);
        let t = Instant::now();
        let page = app::scim::list_users(&app, tenant, &DirectoryFilter::Name(name), 1, 200);
        filtered.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.total == 1, "the filter found {} users", page.total);
    }
    let mut mid = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let page = app::scim::list_users(&app, tenant, &DirectoryFilter::All, users / 2, 100);
        mid.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.items.len() == 100.min(users - users / 2 + 1));
    }
    app.projections.shutdown().await;
    Ok(ScimReport {
        users,
        list_filter_user_name_ms: percentiles(filtered),
        list_page_mid_ms: percentiles(mid),
        feed_ms_per_10k: feed,
    })
}
