//! People and access: sign-up, members, tokens, the tenant's name and flags.

use crate::metering::plan_of;
use crate::{App, Ctx, Error};
use domain::identity::IssuedToken;
use domain::platform::PlatformCommand;
use domain::tenant::{self, NewMember, TenantCommand, TenantName};
use domain::{Email, Flag, PersonName, TenantId, TenantRole, UserId};
use std::collections::BTreeMap;
use store::Appended;
use time::OffsetDateTime;
use uuid::Uuid;

/// A token handed out once: the secret (never stored) and what the log keeps of it.
#[derive(Debug)]
pub struct Minted {
    pub secret: String,
    pub issued: IssuedToken,
}

/// A new token for a decision at `ctx.now`: `secret` when given (a simulation's own, so that it
/// replays), otherwise a fresh random one. Never derived from the context: a token must not be
/// computable from anything a client sends, such as an idempotency key.
fn mint(app: &App, ctx: &Ctx, secret: Option<String>) -> Minted {
    let secret = secret.unwrap_or_else(crate::tokens::generate);
    Minted {
        issued: IssuedToken {
            token_id: ctx.new_id("token"),
            token_sha256: crate::tokens::sha256_hex(secret.as_bytes()),
            expires_at: ctx.now + time::Duration::days(app.config.token_ttl_days),
        },
        secret,
    }
}

/// Who a new tenant's owner is.
#[derive(Debug)]
pub struct SignUp {
    pub tenant_name: TenantName,
    pub email: Email,
    pub name: PersonName,
    /// The owner's token secret; a random one when `None`.
    pub token: Option<String>,
}

/// A member with a token: a new tenant's owner, or a member added.
#[derive(Debug)]
pub struct Admitted {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub token: String,
    pub expires_at: OffsetDateTime,
    pub position: u64,
}

/// Sign a new tenant up, with its owner and the owner's first token. The tenant's and owner's
/// ids come from the context's id seed when it has one (an `Idempotency-Key`): a retry after a
/// lost answer lands on the same stream and is refused as already signed up, instead of making a
/// second tenant.
pub async fn sign_up(app: &App, ctx: &Ctx, s: SignUp) -> Result<Admitted, Error> {
    let tenant_id = TenantId::from_uuid(ctx.new_id("tenant"));
    let user_id = UserId::from_uuid(ctx.new_id("owner"));
    let minted = mint(app, ctx, s.token);
    let mut meta = ctx.meta.clone();
    meta.actor = format!("user:{user_id}");
    let done = app
        .tenants
        .execute(
            tenant_id,
            &tenant::stream_id(tenant_id),
            &TenantCommand::SignUp {
                name: s.tenant_name,
                owner: NewMember {
                    user_id,
                    email: s.email,
                    name: s.name,
                    role: TenantRole::Owner,
                    token: minted.issued.clone(),
                },
            },
            &meta,
            ctx.now,
        )
        .await?;
    // The token must work at once: wait until this instance's projections have it.
    let position = app.settled(&done.appended).await;
    Ok(Admitted {
        tenant_id,
        user_id,
        token: minted.secret,
        expires_at: minted.issued.expires_at,
        position,
    })
}

/// A member to add.
#[derive(Debug)]
pub struct AddMember {
    pub email: Email,
    pub name: PersonName,
    pub role: TenantRole,
    /// The member's token secret; a random one when `None`.
    pub token: Option<String>,
}

/// Add a member with their first token. `by` is the role of who adds (only owners add owners);
/// the plan in force decides the seats.
pub async fn add_member(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    m: AddMember,
) -> Result<Admitted, Error> {
    let user_id = UserId::from_uuid(ctx.new_id("member"));
    let minted = mint(app, ctx, m.token);
    let seats = app
        .config
        .plans
        .get(plan_of(app, tenant, ctx.now).await?)
        .seats;
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &TenantCommand::AddMember {
                member: NewMember {
                    user_id,
                    email: m.email,
                    name: m.name,
                    role: m.role,
                    token: minted.issued.clone(),
                },
                by,
                seats,
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    let position = app.settled(&done.appended).await;
    Ok(Admitted {
        tenant_id: tenant,
        user_id,
        token: minted.secret,
        expires_at: minted.issued.expires_at,
        position,
    })
}

/// Rename a tenant.
pub async fn rename(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    name: TenantName,
) -> Result<u64, Error> {
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &TenantCommand::Rename { name },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// Whose token is revoked.
#[derive(Clone, Copy, Debug)]
pub enum TokenOwner {
    Member(TenantId),
    Operator,
}

/// Revoke a token. From the answer on, it does not work on this instance.
pub async fn revoke_token(
    app: &App,
    ctx: &Ctx,
    owner: TokenOwner,
    token_id: Uuid,
) -> Result<u64, Error> {
    let appended: Option<Appended> = match owner {
        TokenOwner::Member(tenant) => {
            app.tenants
                .execute(
                    tenant,
                    &tenant::stream_id(tenant),
                    &TenantCommand::RevokeToken { token_id },
                    &ctx.meta,
                    ctx.now,
                )
                .await?
                .appended
        }
        TokenOwner::Operator => {
            app.platform
                .execute(
                    TenantId::PLATFORM,
                    domain::platform::STREAM,
                    &PlatformCommand::RevokeToken { token_id },
                    &ctx.meta,
                    ctx.now,
                )
                .await?
                .appended
        }
    };
    Ok(app.settled(&appended).await)
}

/// A tenant known to this instance's read models, by the id a client sent.
pub fn known_tenant(app: &App, raw: &str) -> Result<TenantId, Error> {
    raw.parse::<TenantId>()
        .ok()
        .filter(|t| app.identity.tenant(*t).is_some())
        .ok_or_else(|| Error::NotFound("no such tenant".into()))
}

/// A tenant's flag overrides.
pub fn flag_overrides(app: &App, tenant: TenantId) -> BTreeMap<Flag, bool> {
    app.identity
        .tenant(tenant)
        .map(|t| t.flags)
        .unwrap_or_default()
}

/// Every flag, on or off for `tenant` (its overrides, else the defaults).
pub fn effective_flags(app: &App, tenant: TenantId) -> BTreeMap<String, bool> {
    let overrides = flag_overrides(app, tenant);
    Flag::ALL
        .iter()
        .map(|f| {
            (
                f.as_str().to_owned(),
                app.config.flag_enabled(*f, &overrides),
            )
        })
        .collect()
}

/// Turn a flag on or off for a tenant.
pub async fn set_flag(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    flag: Flag,
    enabled: bool,
) -> Result<u64, Error> {
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &TenantCommand::SetFlag { flag, enabled },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// A platform-staff token.
#[derive(Debug)]
pub struct OperatorAdmitted {
    pub operator_id: UserId,
    pub role: domain::PlatformRole,
    pub token: String,
    pub expires_at: OffsetDateTime,
    pub position: u64,
}

/// Issue a platform-staff token (from the command line: a running server on the same store
/// picks it up from the log). Takes only the platform's executor, so that a command-line tool
/// need not start the whole application (nor publish a plan registry) to issue one.
pub async fn issue_operator_token(
    platform: &commands::Executor<domain::platform::Platform>,
    ctx: &Ctx,
    role: domain::PlatformRole,
    ttl_days: i64,
) -> Result<OperatorAdmitted, Error> {
    let operator_id = UserId::from_uuid(ctx.new_id("operator"));
    let secret = crate::tokens::generate();
    let issued = IssuedToken {
        token_id: ctx.new_id("token"),
        token_sha256: crate::tokens::sha256_hex(secret.as_bytes()),
        expires_at: ctx.now + time::Duration::days(ttl_days),
    };
    let expires_at = issued.expires_at;
    let done = platform
        .execute(
            TenantId::PLATFORM,
            domain::platform::STREAM,
            &PlatformCommand::IssueOperatorToken {
                operator_id,
                role,
                token: issued,
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(OperatorAdmitted {
        operator_id,
        role,
        token: secret,
        expires_at,
        position: done.appended.map_or(0, |a| a.last_position()),
    })
}
