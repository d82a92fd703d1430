//! Single sign-on (issue 10, item 3; ADR 031): a tenant's OIDC settings, the login with an ID
//! token (signature, issuer, audience, times, single use; groups through the mapping rules), the
//! mapping and its preview. Signatures are checked by `jsonwebtoken`, never by hand; keys come
//! from the settings (a JWK set inline or in a file on the server), never from the network.

use crate::{App, Ctx, Error};
use commands::{Executor, ExecutorConfig};
use domain::sso::{
    self, ConfigCommand, JwksSource, LoginError, LoginRecorded, Mapping, Outcome, PreviewChange,
    SsoAlg, SsoConfig, SsoLogins, SsoSettings,
};
use domain::{Email, Flag, PersonName, TenantId, TenantRole, UserId};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use store::Store;
use time::OffsetDateTime;

/// The SSO and SCIM aggregates' executors.
#[derive(Debug)]
pub struct Sso {
    pub config: Executor<SsoConfig>,
    pub logins: Executor<SsoLogins>,
    pub scim: Executor<domain::scim::ScimDirectory>,
}

impl Sso {
    pub fn new(store: &Store) -> Self {
        Sso {
            config: Executor::new(store.clone(), ExecutorConfig::new("sso-config/v1")),
            logins: Executor::new(store.clone(), ExecutorConfig::new("sso-logins/v1")),
            // A directory of many users is a large state: snapshot it less often.
            scim: Executor::new(
                store.clone(),
                ExecutorConfig {
                    snapshot_every: 10_000,
                    ..ExecutorConfig::new("scim-directory/v1")
                },
            ),
        }
    }
}

impl From<sso::ConfigError> for Error {
    fn from(e: sso::ConfigError) -> Self {
        match e {
            sso::ConfigError::Settings(s) => {
                let text = s.to_string();
                let (field, reason) = text.split_once(": ").unwrap_or(("settings", &text));
                Error::field(field, reason)
            }
            sso::ConfigError::Mapping(sso::MappingError::OnlyOwnersGrantOwner) => {
                Error::Forbidden {
                    slug: "forbidden",
                    detail: "only an owner may map groups to the owner role".into(),
                }
            }
            sso::ConfigError::Mapping(m) => {
                let text = m.to_string();
                let (field, reason) = text.split_once(": ").unwrap_or(("rules", &text));
                Error::field(field, reason)
            }
        }
    }
}

impl From<LoginError> for Error {
    fn from(e: LoginError) -> Self {
        Error::Unauthorized {
            slug: "sso-replayed",
            detail: e.to_string(),
        }
    }
}

/// Refuse unless `inviteSsoV1` is on for `tenant` (the anonymous login has no caller for the
/// route table's flag check to run on).
pub fn require_flag(app: &App, tenant: TenantId) -> Result<(), Error> {
    let overrides = crate::identity::flag_overrides(app, tenant);
    if app.config.flag_enabled(Flag::InviteSsoV1, &overrides) {
        Ok(())
    } else {
        Err(Error::Forbidden {
            slug: "feature-disabled",
            detail: "the inviteSsoV1 feature is turned off for this tenant".into(),
        })
    }
}

/// A tenant's SSO configuration as it is now.
pub async fn config(app: &App, tenant: TenantId) -> Result<SsoConfig, Error> {
    let (state, _) = app
        .sso
        .config
        .load(tenant, &sso::config_stream(tenant))
        .await?;
    Ok(state)
}

/// Set a tenant's OIDC settings. The JWK set is read and checked now (at least one RS256 or
/// Ed25519 key), so that a mistake shows here and not at the first login.
pub async fn set_settings(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    settings: SsoSettings,
) -> Result<u64, Error> {
    let keys = load_keys(&settings.jwks).map_err(|reason| Error::field("jwks", reason))?;
    if !keys
        .iter()
        .any(|k| settings.algorithms.iter().any(|a| key_fits(k, *a)))
    {
        return Err(Error::field(
            "jwks",
            "no key of the set can verify any of the allowed algorithms",
        ));
    }
    let done = app
        .sso
        .config
        .execute(
            tenant,
            &sso::config_stream(tenant),
            &ConfigCommand::SetSettings(settings),
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// Save the mapping rules (an audited event: `sso.mapping_saved`). `by` is who saves it.
pub async fn save_mapping(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    mapping: Mapping,
    reason: Option<String>,
) -> Result<u64, Error> {
    let done = app
        .sso
        .config
        .execute(
            tenant,
            &sso::config_stream(tenant),
            &ConfigCommand::SaveMapping {
                mapping,
                by,
                reason,
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// What a proposed mapping would change, over the users known from their last SSO login (or
/// SCIM) groups, without saving anything.
#[derive(Debug)]
pub struct Preview {
    pub users_considered: usize,
    pub changes: Vec<PreviewChange>,
}

pub async fn preview_mapping(
    app: &App,
    tenant: TenantId,
    by: TenantRole,
    proposed: Mapping,
) -> Result<Preview, Error> {
    proposed
        .validate(by)
        .map_err(|e| Error::from(sso::ConfigError::Mapping(e)))?;
    let current = config(app, tenant).await?.mapping;
    let users: Vec<sso::KnownUser> = app
        .directory
        .known_groups(tenant)
        .into_iter()
        .map(|(email, groups)| {
            let member = app.identity.member_by_email(tenant, &email);
            sso::KnownUser {
                user_id: member.as_ref().map(|m| m.user_id),
                role: member.map(|m| m.role),
                email,
                groups,
            }
        })
        .collect();
    let users_considered = users.len();
    Ok(Preview {
        users_considered,
        changes: sso::preview(&current, &proposed, users),
    })
}

/// A login request: the tenant, the ID token, the nonce the client sent to the provider.
#[derive(Debug)]
pub struct Login {
    pub tenant: TenantId,
    pub id_token: String,
    pub nonce: Option<String>,
}

/// A member signed in by SSO, with their new token.
#[derive(Debug)]
pub struct LoggedIn {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub role: TenantRole,
    pub token: String,
    pub expires_at: OffsetDateTime,
    /// A new member was made for this login.
    pub created: bool,
    /// The role they had before this login, when their groups now map to another.
    pub role_changed_from: Option<TenantRole>,
    pub position: u64,
}

/// Sign a user in with an ID token of the tenant's identity provider.
pub async fn login(app: &App, ctx: &Ctx, req: Login) -> Result<LoggedIn, Error> {
    require_flag(app, req.tenant)?;
    // From the read model: no store read on the hot path (a change answers only once this
    // instance has applied it, so an owner's own change is seen).
    let cfg = app.directory.sso(req.tenant);
    let settings = cfg.settings.as_ref().ok_or_else(|| Error::Conflict {
        slug: "sso-not-configured",
        detail: "this tenant has no SSO settings".into(),
    })?;
    let keys = load_keys(&settings.jwks).map_err(|reason| {
        tracing::error!(tenant = %req.tenant, %reason, "SSO keys cannot be read");
        Error::Internal("the tenant's SSO keys cannot be read".into())
    })?;
    let claims = verify(
        settings,
        &keys,
        &req.id_token,
        req.nonce.as_deref(),
        ctx.now,
    )
    .map_err(|r| Error::Unauthorized {
        slug: r.slug(),
        detail: r.to_string(),
    })?;
    let outcome = cfg.mapping.evaluate(&claims.groups);
    let (role, by_group) = match outcome {
        Outcome::Role { role, group } => (role, group),
        Outcome::Denied { group } => {
            return Err(Error::Forbidden {
                slug: "sso-denied",
                detail: match group {
                    Some(g) => format!("the group {g:?} is denied access to this tenant"),
                    None => {
                        "no mapping rule matches your groups and there is no default role".into()
                    }
                },
            });
        }
    };
    // The replay guard first: a replayed token is refused before anything else is written.
    let mut meta = ctx.meta.clone();
    meta.actor = "sso".into();
    let ctx = Ctx {
        meta,
        ..ctx.clone()
    };
    // The member this login signs in, named in its record so that the record is sealed under
    // their key (ADR 037): the member with this email, or the id a first login makes them with.
    let member = app
        .identity
        .member_by_email(req.tenant, claims.email.as_str());
    let user_id = member
        .as_ref()
        .map(|m| m.user_id)
        .unwrap_or_else(|| UserId::from_uuid(ctx.new_id("member")));
    let recorded = app
        .sso
        .logins
        .execute(
            req.tenant,
            &sso::logins_stream(req.tenant),
            &LoginRecorded {
                subject: claims.subject.clone(),
                email: claims.email.to_string(),
                groups: claims.groups.clone(),
                role,
                by_group,
                replay_key: claims.replay_key.clone(),
                replay_until: claims.replay_until,
                at: ctx.now,
                user_id: Some(user_id),
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    let recorded = app.committed(&recorded.appended);
    let mut done = admit(
        app,
        &ctx,
        req.tenant,
        Admit {
            email: claims.email,
            name: claims.name,
            role,
            kind: domain::identity::TokenKind::Sso,
            drift_reason: "sso_drift",
            new_user_id: user_id,
            member,
        },
    )
    .await?;
    done.position = done.position.max(recorded);
    Ok(done)
}

/// Who signs in through the directory (SSO or SCIM), with the role the mapping gave them.
#[derive(Debug)]
pub(crate) struct Admit {
    pub email: Email,
    pub name: PersonName,
    pub role: TenantRole,
    pub kind: domain::identity::TokenKind,
    /// The reason of a role change (`sso_drift`).
    pub drift_reason: &'static str,
    /// The id a new member is made with.
    pub new_user_id: UserId,
    /// The member with this email, as looked up just before (`None`: a new member is made; one
    /// made meanwhile by a concurrent login is found when the email is refused as taken).
    pub member: Option<projections::MemberView>,
}

/// Make the member (a new email, seats permitting) or find them; give them the mapped role when
/// it changed (drift, recorded as `member.role_changed` with the reason); issue their token.
pub(crate) async fn admit(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    a: Admit,
) -> Result<LoggedIn, Error> {
    let member = match a.member {
        Some(m) => m,
        None => {
            // The mapping that grants the role was saved by an owner or admin (only owners grant
            // owner): the directory adds members with an owner's right.
            let added = crate::identity::add_member_as(
                app,
                ctx,
                tenant,
                TenantRole::Owner,
                crate::identity::AddMember {
                    email: a.email.clone(),
                    name: a.name.clone(),
                    role: a.role,
                    token: None,
                },
                a.new_user_id,
                a.kind,
            )
            .await;
            match added {
                Ok(added) => {
                    return Ok(LoggedIn {
                        tenant_id: tenant,
                        user_id: added.user_id,
                        role: a.role,
                        token: added.token,
                        expires_at: added.expires_at,
                        created: true,
                        role_changed_from: None,
                        position: added.position,
                    });
                }
                // A concurrent first login of the same user made the member a moment ago: sign
                // in as that member.
                Err(Error::Tenant(domain::tenant::TenantError::EmailTaken(_))) => {
                    app.projections
                        .catch_up_one("identity", std::time::Duration::from_secs(2))
                        .await;
                    app.identity
                        .member_by_email(tenant, a.email.as_str())
                        .ok_or(Error::Busy)?
                }
                Err(e) => return Err(e),
            }
        }
    };
    let mut role = member.role;
    let mut role_changed_from = None;
    if member.role != a.role {
        let changed = crate::identity::change_role(
            app,
            ctx,
            tenant,
            TenantRole::Owner,
            member.user_id,
            a.role,
            Some(a.drift_reason.to_owned()),
        )
        .await;
        match changed {
            Ok(_) => {
                role_changed_from = Some(member.role);
                role = a.role;
            }
            // A concurrent login of the same user moved the role first.
            Err(Error::Tenant(domain::tenant::TenantError::SameRole(_))) => role = a.role,
            // The last owner keeps their role; they still sign in.
            Err(Error::Tenant(domain::tenant::TenantError::LastOwner)) => {
                tracing::warn!(%tenant, user = %member.user_id, "drift would demote the last owner; kept");
            }
            Err(e) => return Err(e),
        }
    }
    let minted = crate::identity::issue_token_for(app, ctx, tenant, member.user_id, a.kind).await?;
    Ok(LoggedIn {
        tenant_id: tenant,
        user_id: member.user_id,
        role,
        token: minted.secret,
        expires_at: minted.issued.expires_at,
        created: false,
        role_changed_from,
        position: 0,
    })
}

/// What a verified ID token says.
#[derive(Debug)]
struct Claims {
    subject: String,
    email: Email,
    name: PersonName,
    groups: Vec<String>,
    replay_key: String,
    replay_until: OffsetDateTime,
}

/// Why an ID token is refused (401).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token's algorithm {0} is not allowed")]
    Algorithm(String),
    #[error("no key of the tenant's JWK set matches the token (kid and algorithm)")]
    NoKey,
    #[error("the ID token's signature does not verify")]
    Signature,
    #[error("the ID token was issued by another issuer")]
    Issuer,
    #[error("the ID token is for another audience")]
    Audience,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token is not valid yet")]
    NotYetValid,
    #[error("the ID token was issued in the future")]
    IssuedInFuture,
    #[error("the ID token lives longer than a day")]
    TooLong,
    #[error("the ID token's nonce is not the one sent")]
    Nonce,
    #[error("the ID token lacks {0}")]
    Missing(&'static str),
}

impl Refusal {
    pub fn slug(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) | Refusal::Missing(_) => "sso-token-malformed",
            Refusal::Algorithm(_) => "sso-algorithm",
            Refusal::NoKey | Refusal::Signature => "sso-signature",
            Refusal::Issuer => "sso-issuer",
            Refusal::Audience => "sso-audience",
            Refusal::Expired
            | Refusal::NotYetValid
            | Refusal::IssuedInFuture
            | Refusal::TooLong => "sso-token-time",
            Refusal::Nonce => "sso-nonce",
        }
    }
}

/// The JWK set's keys that parse (keys of other types are skipped: a provider's set may hold
/// encryption or EC keys we do not use).
pub fn load_keys(source: &JwksSource) -> Result<Vec<Jwk>, String> {
    let text = match source {
        JwksSource::Inline(text) => text.clone(),
        JwksSource::File(path) => {
            let p = std::path::Path::new(path);
            if !p.is_absolute() {
                return Err("the JWK set file must be an absolute path".into());
            }
            // The contents are never echoed: an error says only that the file is not a set.
            std::fs::read_to_string(p)
                .map_err(|_| "the JWK set file cannot be read by the server".to_owned())?
        }
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| "not a JSON JWK set".to_owned())?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| "a JWK set is an object with a \"keys\" array".to_owned())?;
    let parsed: Vec<Jwk> = keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(usable)
        .collect();
    if parsed.is_empty() {
        return Err("the JWK set has no RSA or Ed25519 public key".into());
    }
    Ok(parsed)
}

fn usable(k: &Jwk) -> bool {
    match &k.algorithm {
        AlgorithmParameters::RSA(_) => true,
        AlgorithmParameters::OctetKeyPair(p) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    }
}

/// Whether a key may verify `alg`: its type must be the algorithm's (no RSA key for EdDSA, no
/// symmetric key ever), and its own `alg`, when it says one, must be the same.
fn key_fits(k: &Jwk, alg: SsoAlg) -> bool {
    let type_fits = match (&k.algorithm, alg) {
        (AlgorithmParameters::RSA(_), SsoAlg::RS256) => true,
        (AlgorithmParameters::OctetKeyPair(p), SsoAlg::EdDSA) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    let alg_fits = match k.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == SsoAlg::RS256,
        Some(KeyAlgorithm::EdDSA) => alg == SsoAlg::EdDSA,
        Some(_) => false,
    };
    type_fits && alg_fits
}

/// Check an ID token: header algorithm allowed, key by `kid` (and fitting the algorithm),
/// signature, `iss`, `aud` (by `jsonwebtoken`), then `exp`, `nbf`, `iat` against `now` with the
/// tenant's skew, the nonce, and the claims we need.
fn verify(
    settings: &SsoSettings,
    keys: &[Jwk],
    token: &str,
    nonce: Option<&str>,
    now: OffsetDateTime,
) -> Result<Claims, Refusal> {
    use jsonwebtoken::errors::ErrorKind;
    // `alg: none` and unknown algorithms fail to parse here.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| Refusal::Malformed(format!("header: {e}")))?;
    let alg = match header.alg {
        Algorithm::RS256 => SsoAlg::RS256,
        Algorithm::EdDSA => SsoAlg::EdDSA,
        other => return Err(Refusal::Algorithm(format!("{other:?}"))),
    };
    if !settings.algorithms.contains(&alg) {
        return Err(Refusal::Algorithm(alg.as_str().into()));
    }
    let candidates: Vec<&Jwk> = keys
        .iter()
        .filter(|k| key_fits(k, alg))
        .filter(|k| match &header.kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    let key = match candidates.as_slice() {
        [one] => *one,
        _ => return Err(Refusal::NoKey),
    };
    let key = DecodingKey::from_jwk(key).map_err(|_| Refusal::NoKey)?;
    let mut validation = Validation::new(header.alg);
    // Times are checked below against the decision's clock, with the tenant's skew.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[settings.issuer.as_str()]);
    validation.set_audience(&[settings.audience.as_str()]);
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key,
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => Refusal::Signature,
        ErrorKind::InvalidIssuer => Refusal::Issuer,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            Refusal::Algorithm(format!("{:?}", header.alg))
        }
        ErrorKind::MissingRequiredClaim(c) => Refusal::Malformed(format!("no {c} claim")),
        ErrorKind::InvalidKeyFormat => Refusal::NoKey,
        other => Refusal::Malformed(format!("{other:?}")),
    })?;
    let claims = data.claims;
    let skew = i64::from(settings.clock_skew_seconds);
    let now_s = now.unix_timestamp();
    let number = |name: &'static str| -> Result<Option<i64>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| Refusal::Malformed(format!("{name} is not a number"))),
        }
    };
    let exp = number("exp")?.ok_or(Refusal::Missing("exp"))?;
    if now_s > exp + skew {
        return Err(Refusal::Expired);
    }
    if let Some(nbf) = number("nbf")?
        && now_s + skew < nbf
    {
        return Err(Refusal::NotYetValid);
    }
    let iat = number("iat")?.ok_or(Refusal::Missing("iat"))?;
    if iat > now_s + skew {
        return Err(Refusal::IssuedInFuture);
    }
    if exp - iat.min(now_s) > sso::MAX_TOKEN_LIFETIME_SECONDS {
        return Err(Refusal::TooLong);
    }
    let token_nonce = claims.get("nonce").and_then(|v| v.as_str());
    if let Some(sent) = nonce
        && token_nonce != Some(sent)
    {
        return Err(Refusal::Nonce);
    }
    let subject = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or(Refusal::Missing("sub"))?
        .to_owned();
    let email = claims
        .get("email")
        .and_then(|v| v.as_str())
        .ok_or(Refusal::Missing("email"))?;
    if claims.get("email_verified").and_then(|v| v.as_bool()) == Some(false) {
        return Err(Refusal::Malformed("the email is not verified".into()));
    }
    let email = Email::parse(email).map_err(|e| Refusal::Malformed(format!("email: {e}")))?;
    let name = claims
        .get("name")
        .and_then(|v| v.as_str())
        .and_then(|n| PersonName::parse(n).ok())
        .or_else(|| PersonName::parse(email.as_str().split('@').next().unwrap_or("")).ok())
        .ok_or(Refusal::Missing("name"))?;
    let groups = match claims.get(&settings.groups_claim) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|g| {
                g.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Refusal::Malformed("a group is not a string".into()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Refusal::Malformed("the groups claim is not a list".into())),
    };
    // Single use: by the nonce when the token has one, else by the token itself.
    let replay_key = match token_nonce {
        Some(n) => crate::tokens::sha256_hex_of([b"nonce:".as_slice(), n.as_bytes()]),
        None => crate::tokens::sha256_hex_of([b"token:".as_slice(), token.as_bytes()]),
    };
    let replay_until =
        OffsetDateTime::from_unix_timestamp(exp + skew).map_err(|_| Refusal::TooLong)?;
    Ok(Claims {
        subject,
        email,
        name,
        groups,
        replay_key,
        replay_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fit_only_their_own_algorithm() {
        let set = r#"{"keys":[
            {"kty":"RSA","kid":"r","alg":"RS256","n":"sXch","e":"AQAB"},
            {"kty":"OKP","kid":"e","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"r2","alg":"RS512","n":"sXch","e":"AQAB"}
        ]}"#;
        let keys = load_keys(&JwksSource::Inline(set.into())).unwrap();
        let ids: Vec<_> = keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(
            ids,
            ["r", "e", "r2"],
            "the symmetric key is never a candidate"
        );
        let fits = |kid: &str, alg| {
            key_fits(
                keys.iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
                    .unwrap(),
                alg,
            )
        };
        assert!(fits("r", SsoAlg::RS256));
        assert!(!fits("r", SsoAlg::EdDSA));
        assert!(fits("e", SsoAlg::EdDSA));
        assert!(!fits("e", SsoAlg::RS256));
        assert!(
            !fits("r2", SsoAlg::RS256),
            "a key marked for RS512 is not used for RS256"
        );
        assert!(load_keys(&JwksSource::Inline("{}".into())).is_err());
        assert!(load_keys(&JwksSource::File("relative.json".into())).is_err());
    }
}
