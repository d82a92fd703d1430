//! People and access: sign-up, members, tokens, the tenant's name and flags.
//!
//! The member lifecycle other use cases (SSO, SCIM, invites, sign-in) build on, each HTTP-free,
//! each an event with its actor (the context's `meta.actor`) and reason, each settled on this
//! instance before it answers (a revoked token fails at once):
//!
//! - [`remove_member`]`(app, ctx, tenant, by_role, user, reason) -> position`: the member's
//!   `member.removed` and a `token.revoked` (`member_removed`) per live token; the seat is freed
//!   and the email can be added again. A member removes themselves (leaves) when `ctx.meta.actor`
//!   is `user:<their id>`; otherwise only owners and admins remove, admins never an owner, and
//!   the last owner never goes.
//! - [`change_role`]`(app, ctx, tenant, by_role, user, role, reason) -> position`:
//!   `member.role_changed`; only owners make owners, admins never touch owners, the last owner is
//!   never demoted. Errors: `Tenant(NotAMember | LastOwner | AdminsCannotTouchOwners |
//!   OnlyOwnersAddOwners | SameRole | NotAllowed)`.
//! - [`issue_token_for`]`(app, ctx, tenant, user, kind) -> Minted`: a fresh token for an existing
//!   member who proved who they are elsewhere (SSO, SCIM, a sign-in code); `token.issued` with
//!   `kind`, issuer `ctx.meta.actor`, `issued_at`.
//! - [`reissue_token`] (owners/admins for a member), [`rotate_token`] (the caller's token for a
//!   new one), [`revoke_member_token`] (owners/admins any of the tenant, a member their own),
//!   [`revoke_token`] (the caller's own token, or an operator token by platform ops).
//! - [`member_by_email`]`(app, tenant, email) -> Option<MemberView>`: case-insensitive lookup in
//!   the identity read model.
//! - [`seats_for`]: the seats a new member or invite must fit in (the plan in force, and a
//!   scheduled downgrade's, whichever is fewer).

use crate::metering::plan_of;
use crate::{App, Ctx, Error};
use domain::identity::IssuedToken;
use domain::identity::TokenKind;
use domain::platform::PlatformCommand;
use domain::tenant::{self, By, NewMember, TenantCommand, TenantName};
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

/// A fresh random token for a decision at `ctx.now`.
pub(crate) fn mint_for(app: &App, ctx: &Ctx) -> Minted {
    mint(app, ctx, None)
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
    add_member_as(app, ctx, tenant, by, m, user_id, TokenKind::MemberAdded).await
}

/// Add a member with the id `user_id` (chosen before, e.g. named by an SSO login's record) and
/// a first token of `kind` (`sso`, `scim` for members the directory makes; ADR 037).
pub async fn add_member_as(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    m: AddMember,
    user_id: UserId,
    kind: TokenKind,
) -> Result<Admitted, Error> {
    let minted = mint(app, ctx, m.token);
    let seats = seats_for(app, tenant, ctx.now).await?;
    let member = NewMember {
        user_id,
        email: m.email,
        name: m.name,
        role: m.role,
        token: minted.issued.clone(),
    };
    let command = match kind {
        TokenKind::MemberAdded => TenantCommand::AddMember { member, by, seats },
        kind => TenantCommand::AddMemberFrom {
            member,
            by,
            seats,
            kind,
        },
    };
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &command,
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
                    &TenantCommand::RevokeTokenBy {
                        token_id,
                        by: None,
                        actor: ctx.meta.actor.clone(),
                        reason: Some("signed_out".into()),
                    },
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

/// The seats a new member or invite must fit in at `now`: the plan in force's, and when a
/// downgrade is scheduled, the fewer of it and the coming plan's, so that the downgrade still
/// fits when it takes effect. `None` is unlimited.
pub async fn seats_for(
    app: &App,
    tenant: TenantId,
    now: OffsetDateTime,
) -> Result<Option<u64>, Error> {
    let now_seats = app.config.plans.get(plan_of(app, tenant, now).await?).seats;
    let pending = app
        .identity
        .tenant(tenant)
        .and_then(|t| t.pending)
        .filter(|p| now < p.effective_at)
        .and_then(|p| app.config.plans.get(p.to).seats);
    Ok(match (now_seats, pending) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Who acts: their role, and their user id when the context's actor is a member (`user:<id>`).
fn by(ctx: &Ctx, role: TenantRole) -> By {
    By {
        role,
        user: ctx
            .meta
            .actor
            .strip_prefix("user:")
            .and_then(|id| id.parse::<Uuid>().ok())
            .map(UserId::from_uuid),
    }
}

async fn run(app: &App, ctx: &Ctx, tenant: TenantId, command: TenantCommand) -> Result<u64, Error> {
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// Remove a member (or let them leave); see the module's documentation.
pub async fn remove_member(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by_role: TenantRole,
    user: UserId,
    reason: Option<String>,
) -> Result<u64, Error> {
    let command = TenantCommand::RemoveMember {
        user_id: user,
        by: by(ctx, by_role),
        actor: ctx.meta.actor.clone(),
        reason,
    };
    run(app, ctx, tenant, command).await
}

/// Give a member another role; see the module's documentation.
pub async fn change_role(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by_role: TenantRole,
    user: UserId,
    role: TenantRole,
    reason: Option<String>,
) -> Result<u64, Error> {
    let command = TenantCommand::ChangeRole {
        user_id: user,
        role,
        by: by(ctx, by_role),
        actor: ctx.meta.actor.clone(),
        reason,
    };
    run(app, ctx, tenant, command).await
}

/// A token issued, with the position that wrote it.
#[derive(Debug)]
pub struct Reissued {
    pub minted: Minted,
    pub position: u64,
}

async fn issue(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    kind: TokenKind,
    by: Option<By>,
    replaces: Option<Uuid>,
) -> Result<Reissued, Error> {
    let minted = mint(app, ctx, None);
    let command = TenantCommand::IssueToken {
        user_id: user,
        token: minted.issued.clone(),
        kind,
        issuer: ctx.meta.actor.clone(),
        by,
        replaces,
    };
    let position = run(app, ctx, tenant, command).await?;
    Ok(Reissued { minted, position })
}

/// A fresh token for an existing member who proved who they are elsewhere (SSO, SCIM, a sign-in
/// code): `token.issued` of `kind`. It works on this instance when this returns.
pub async fn issue_token_for(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    kind: TokenKind,
) -> Result<Minted, Error> {
    Ok(issue(app, ctx, tenant, user, kind, None, None)
        .await?
        .minted)
}

/// An owner or admin issues a new token for a member (`reissue`); admins never for an owner.
pub async fn reissue_token(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by_role: TenantRole,
    user: UserId,
) -> Result<Reissued, Error> {
    let by = by(ctx, by_role);
    issue(app, ctx, tenant, user, TokenKind::Reissue, Some(by), None).await
}

/// The caller's token for a new one (`rotation`): one append revokes the old (`rotated`) and
/// issues the new.
pub async fn rotate_token(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    old_token: Uuid,
) -> Result<Reissued, Error> {
    issue(
        app,
        ctx,
        tenant,
        user,
        TokenKind::Rotation,
        None,
        Some(old_token),
    )
    .await
}

/// Revoke one token of the tenant: owners and admins any (admins none of an owner), a member
/// their own (another's is "no such token" to them).
pub async fn revoke_member_token(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by_role: TenantRole,
    token_id: Uuid,
    reason: Option<String>,
) -> Result<u64, Error> {
    let command = TenantCommand::RevokeTokenBy {
        token_id,
        by: Some(by(ctx, by_role)),
        actor: ctx.meta.actor.clone(),
        reason,
    };
    run(app, ctx, tenant, command).await
}

/// A tenant's member by email, whatever its case.
pub fn member_by_email(
    app: &App,
    tenant: TenantId,
    email: &str,
) -> Option<projections::MemberView> {
    app.identity.member_by_email(tenant, email)
}
