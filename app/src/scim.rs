//! SCIM 2.0 provisioning (issue 10, item 4; RFC 7643/7644; ADR 031): the tenant's SCIM token,
//! users and groups. A SCIM user is a member of the tenant while active (their role from the
//! same mapping rules as SSO, over their SCIM groups); deactivating or deleting one removes the
//! member, and their tokens stop at once. Every operation is an event with actor `scim` and the
//! request as its reason. The SCIM wire format is `api`'s; this is HTTP-free.

use crate::{App, Ctx, Error};
use domain::scim::{self, ScimCommand, ScimError, ScimGroup, ScimUser};
use domain::sso::{self, ConfigCommand, Outcome};
use domain::{Email, PersonName, TenantId, TenantRole, UserId};
use projections::{DirectoryFilter, DirectoryPage, Versioned};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// The actor of every SCIM event.
pub const ACTOR: &str = "scim";

impl From<ScimError> for Error {
    fn from(e: ScimError) -> Self {
        match e {
            ScimError::UserNameTaken(_) | ScimError::GroupNameTaken(_) | ScimError::IdTaken(_) => {
                Error::Conflict {
                    slug: "uniqueness",
                    detail: e.to_string(),
                }
            }
            ScimError::UnknownUser | ScimError::UnknownGroup => Error::NotFound(e.to_string()),
            ScimError::UnknownMember(_) => Error::field("members", e.to_string()),
        }
    }
}

fn scim_ctx(ctx: &Ctx) -> Ctx {
    let mut c = ctx.clone();
    c.meta.actor = ACTOR.into();
    c
}

/// A new SCIM token for the tenant (the old one stops working): shown once, stored as SHA-256.
#[derive(Debug)]
pub struct ScimToken {
    pub token: String,
    pub token_id: Uuid,
    pub position: u64,
}

pub async fn create_token(app: &App, ctx: &Ctx, tenant: TenantId) -> Result<ScimToken, Error> {
    let token = crate::tokens::generate();
    let token_id = ctx.new_id("scim-token");
    let done = app
        .sso
        .config
        .execute(
            tenant,
            &sso::config_stream(tenant),
            &ConfigCommand::SetScimToken {
                token_id,
                token_sha256: crate::tokens::sha256_hex(token.as_bytes()),
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    let position = app.settled(&done.appended).await;
    Ok(ScimToken {
        token,
        token_id,
        position,
    })
}

/// The tenant a SCIM bearer token belongs to, if `inviteSsoV1` is on for it.
pub async fn authenticate(app: &App, token: &str) -> Result<TenantId, Error> {
    let unauthorized = || Error::Unauthorized {
        slug: "unauthorized",
        detail: "not a valid SCIM token".into(),
    };
    if !crate::tokens::well_formed(token) {
        return Err(unauthorized());
    }
    let hash = crate::tokens::sha256_hex(token.as_bytes());
    let tenant = match app.directory.scim_tenant(&hash) {
        Some(t) => t,
        None => {
            // A token made a moment ago (here or on another instance) may not be applied yet.
            app.projections
                .catch_up_one("directory", Duration::from_secs(2))
                .await;
            app.directory.scim_tenant(&hash).ok_or_else(unauthorized)?
        }
    };
    crate::sso::require_flag(app, tenant)?;
    Ok(tenant)
}

/// A user's attributes as the provider sends them.
#[derive(Clone, Debug)]
pub struct UserInput {
    pub user_name: String,
    pub external_id: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub display_name: Option<String>,
    pub active: bool,
    /// The provider's emails, the primary first (used when the userName is not an email).
    pub emails: Vec<String>,
}

/// A user as SCIM shows it: the resource, its meta and its groups (id, name).
pub type UserView = projections::UserWithGroups;

pub fn get_user(app: &App, tenant: TenantId, id: Uuid) -> Result<UserView, Error> {
    app.directory
        .user(tenant, id)
        .ok_or_else(|| Error::NotFound("no such user".into()))
}

pub fn list_users(
    app: &App,
    tenant: TenantId,
    filter: &DirectoryFilter,
    start: usize,
    count: usize,
) -> DirectoryPage<UserView> {
    app.directory.users(tenant, filter, start, count)
}

/// The email a user's member has: their userName when it is one, else their first email that is.
fn email_of(input: &UserInput) -> Option<Email> {
    std::iter::once(&input.user_name)
        .chain(&input.emails)
        .find_map(|e| Email::parse(e).ok())
}

fn check_user(input: &UserInput) -> Result<(), Error> {
    let n = input.user_name.trim();
    if n.is_empty() || n.chars().count() > 256 {
        return Err(Error::field("userName", "must be 1 to 256 characters"));
    }
    // What an erased userName reads as (ADR 037): no user is given it, so it never stands for
    // a live name.
    if n == domain::personal::ERASED {
        return Err(Error::field("userName", "is reserved"));
    }
    Ok(())
}

/// The member a user should be, by the mapping over their groups: the member with their email
/// (their role brought in line), or a new one; `None` when the mapping refuses them.
async fn link(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    input: &UserInput,
    groups: &[String],
) -> Result<Option<UserId>, Error> {
    // Without an email the user cannot be a member (yet): a later PUT or PATCH may give one.
    let Some(email) = email_of(input) else {
        return Ok(None);
    };
    let mapping = crate::sso::config(app, tenant).await?.mapping;
    let Outcome::Role { role, .. } = mapping.evaluate(groups) else {
        return Ok(None);
    };
    // A member with that email already (the owner who signed up, one invited): linked as they
    // are. Their role follows the rules when their SCIM groups change (`remap`), not now: a
    // provider creates users before it pushes their groups, and a demotion here would be undone
    // a moment later at best.
    if let Some(m) = app.identity.member_by_email(tenant, email.as_str()) {
        return Ok(Some(m.user_id));
    }
    let name = [input.given_name.as_deref(), input.family_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let name = PersonName::parse(&name)
        .or_else(|_| PersonName::parse(input.display_name.as_deref().unwrap_or("")))
        .or_else(|_| PersonName::parse(email.as_str().split('@').next().unwrap_or("member")))
        .map_err(|e| Error::field("name", e.to_string()))?;
    let added = crate::identity::add_member_as(
        app,
        ctx,
        tenant,
        TenantRole::Owner,
        crate::identity::AddMember {
            email,
            name,
            role,
            token: None,
        },
        UserId::from_uuid(ctx.new_id("member")),
        domain::identity::TokenKind::Scim,
    )
    .await?;
    Ok(Some(added.user_id))
}

async fn set_role(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    from: TenantRole,
    to: TenantRole,
) -> Result<(), Error> {
    match crate::identity::change_role(
        app,
        ctx,
        tenant,
        TenantRole::Owner,
        user,
        to,
        Some("scim_groups".into()),
    )
    .await
    {
        Ok(_) | Err(Error::Tenant(domain::tenant::TenantError::SameRole(_))) => Ok(()),
        Err(Error::Tenant(domain::tenant::TenantError::LastOwner)) => {
            tracing::warn!(%tenant, %user, %from, %to, "SCIM groups would demote the last owner; kept");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Remove the member a user was; one already gone is fine.
async fn unlink(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    reason: &str,
) -> Result<(), Error> {
    match crate::identity::remove_member(
        app,
        ctx,
        tenant,
        TenantRole::Owner,
        user,
        Some(reason.to_owned()),
    )
    .await
    {
        Ok(_) | Err(Error::Tenant(domain::tenant::TenantError::NotAMember)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `POST /Users`.
pub async fn create_user(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    input: UserInput,
) -> Result<UserView, Error> {
    let ctx = scim_ctx(ctx);
    check_user(&input)?;
    if app
        .directory
        .user_by_name(tenant, &input.user_name)
        .is_some()
    {
        return Err(ScimError::UserNameTaken(input.user_name).into());
    }
    let scim_id = ctx.new_id("scim-user");
    let user_id = if input.active {
        link(app, &ctx, tenant, &input, &[]).await?
    } else {
        None
    };
    let user = user_of(scim_id, &input, user_id);
    run(
        app,
        &ctx,
        tenant,
        ScimCommand::CreateUser {
            user,
            reason: "POST /Users".into(),
        },
    )
    .await?;
    get_user(app, tenant, scim_id)
}

fn user_of(scim_id: Uuid, input: &UserInput, user_id: Option<UserId>) -> ScimUser {
    ScimUser {
        scim_id,
        user_name: input.user_name.clone(),
        external_id: input.external_id.clone(),
        given_name: input.given_name.clone(),
        family_name: input.family_name.clone(),
        display_name: input.display_name.clone(),
        active: input.active,
        email: email_of(input).map(|e| e.to_string()),
        user_id,
    }
}

async fn run(app: &App, ctx: &Ctx, tenant: TenantId, command: ScimCommand) -> Result<u64, Error> {
    let done = app
        .sso
        .scim
        .execute(
            tenant,
            &scim::stream_id(tenant),
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// `PUT /Users/{id}` (and `PATCH`, once its operations are applied): the user becomes `input`.
/// Turning `active` off removes the member (their tokens stop at once); on, makes them a member
/// again; a new userName moves them to the member of that email.
pub async fn replace_user(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    id: Uuid,
    input: UserInput,
    reason: &str,
) -> Result<UserView, Error> {
    let ctx = scim_ctx(ctx);
    check_user(&input)?;
    let (current, groups) = get_user(app, tenant, id)?;
    if let Some(other) = app.directory.user_by_name(tenant, &input.user_name)
        && other.value.scim_id != id
    {
        return Err(ScimError::UserNameTaken(input.user_name).into());
    }
    let same_email = current.value.email.as_deref().map(str::to_lowercase)
        == email_of(&input).map(|e| e.to_string());
    let group_names: Vec<String> = groups.into_iter().map(|(_, n)| n).collect();
    let user_id = match (current.value.user_id, input.active) {
        (Some(u), true) if same_email => Some(u),
        (Some(u), true) => {
            unlink(app, &ctx, tenant, u, "scim_renamed").await?;
            link(app, &ctx, tenant, &input, &group_names).await?
        }
        (Some(u), false) => {
            unlink(app, &ctx, tenant, u, "scim_deactivated").await?;
            None
        }
        (None, true) => link(app, &ctx, tenant, &input, &group_names).await?,
        (None, false) => None,
    };
    run(
        app,
        &ctx,
        tenant,
        ScimCommand::UpdateUser {
            user: user_of(id, &input, user_id),
            reason: reason.to_owned(),
        },
    )
    .await?;
    get_user(app, tenant, id)
}

/// `DELETE /Users/{id}`: the member is removed, then the user.
pub async fn delete_user(app: &App, ctx: &Ctx, tenant: TenantId, id: Uuid) -> Result<u64, Error> {
    let ctx = scim_ctx(ctx);
    let (current, _) = get_user(app, tenant, id)?;
    if let Some(u) = current.value.user_id {
        unlink(app, &ctx, tenant, u, "scim_deleted").await?;
    }
    run(
        app,
        &ctx,
        tenant,
        ScimCommand::DeleteUser {
            scim_id: id,
            reason: "DELETE /Users".into(),
        },
    )
    .await
}

/// One PATCH operation (RFC 7644 §3.5.2), its `op` already normalized (Entra sends `Replace`).
#[derive(Clone, Debug)]
pub struct PatchOp {
    pub op: PatchKind,
    pub path: Option<String>,
    pub value: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Add,
    Replace,
    Remove,
}

impl PatchKind {
    /// `add`, `replace`, `remove` in any case.
    pub fn parse(s: &str) -> Option<PatchKind> {
        match s.to_ascii_lowercase().as_str() {
            "add" => Some(PatchKind::Add),
            "replace" => Some(PatchKind::Replace),
            "remove" => Some(PatchKind::Remove),
            _ => None,
        }
    }
}

/// A boolean as providers send it: `true`, or Entra's `"True"`/`"False"` strings.
pub fn lenient_bool(v: &serde_json::Value) -> Option<bool> {
    match v {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn text(v: &serde_json::Value, field: &str) -> Result<Option<String>, Error> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        _ => Err(Error::field(field, "must be a string")),
    }
}

/// Apply one attribute of a user: `path` lower-cased, `value` what to set (`Null` to clear).
fn set_user_attr(
    input: &mut UserInput,
    path: &str,
    value: &serde_json::Value,
) -> Result<(), Error> {
    match path {
        "active" => {
            input.active =
                lenient_bool(value).ok_or_else(|| Error::field("active", "must be a boolean"))?
        }
        "username" => {
            input.user_name =
                text(value, "userName")?.ok_or_else(|| Error::field("userName", "is required"))?
        }
        "externalid" => input.external_id = text(value, "externalId")?,
        "displayname" => input.display_name = text(value, "displayName")?,
        "name.givenname" => input.given_name = text(value, "name.givenName")?,
        "name.familyname" => input.family_name = text(value, "name.familyName")?,
        "name" => match value {
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    match k.to_ascii_lowercase().as_str() {
                        "givenname" => input.given_name = text(v, "name.givenName")?,
                        "familyname" => input.family_name = text(v, "name.familyName")?,
                        _ => {}
                    }
                }
            }
            serde_json::Value::Null => {
                input.given_name = None;
                input.family_name = None;
            }
            _ => return Err(Error::field("name", "must be an object")),
        },
        // Attributes we do not keep (emails, phoneNumbers, title, enterprise extension, …)
        // are accepted and ignored, as RFC 7644 allows a service provider to.
        _ => {}
    }
    Ok(())
}

/// `PATCH /Users/{id}`.
pub async fn patch_user(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    id: Uuid,
    ops: Vec<PatchOp>,
) -> Result<UserView, Error> {
    let (current, _) = get_user(app, tenant, id)?;
    let c = &current.value;
    let mut input = UserInput {
        user_name: c.user_name.clone(),
        external_id: c.external_id.clone(),
        given_name: c.given_name.clone(),
        family_name: c.family_name.clone(),
        display_name: c.display_name.clone(),
        active: c.active,
        emails: c.email.iter().cloned().collect(),
    };
    let mut said = Vec::new();
    for op in &ops {
        let null = serde_json::Value::Null;
        match (&op.path, op.op) {
            (Some(path), PatchKind::Remove) => {
                let p = strip_urn(path);
                if p == "active" || p == "username" {
                    return Err(Error::field(path, "cannot be removed"));
                }
                set_user_attr(&mut input, &p, &null)?;
                said.push(format!("remove {path}"));
            }
            (Some(path), _) => {
                let value = op
                    .value
                    .as_ref()
                    .ok_or_else(|| Error::field("value", "is required"))?;
                set_user_attr(&mut input, &strip_urn(path), value)?;
                said.push(match strip_urn(path).as_str() {
                    "active" => format!("active={}", lenient_bool(value).unwrap_or(true)),
                    _ => format!("{:?} {path}", op.op).to_lowercase(),
                });
            }
            (None, PatchKind::Remove) => return Err(Error::field("path", "is required to remove")),
            (None, _) => {
                // No path: the value is an object of attributes (Entra, Okta).
                let Some(serde_json::Value::Object(attrs)) = &op.value else {
                    return Err(Error::field(
                        "value",
                        "must be an object when there is no path",
                    ));
                };
                for (k, v) in attrs {
                    let p = strip_urn(k);
                    set_user_attr(&mut input, &p, v)?;
                    said.push(match p.as_str() {
                        "active" => format!("active={}", lenient_bool(v).unwrap_or(true)),
                        _ => format!("{:?} {k}", op.op).to_lowercase(),
                    });
                }
            }
        }
    }
    let reason = format!("PATCH {}", said.join(", "));
    replace_user(app, ctx, tenant, id, input, &reason).await
}

/// A path's attribute, lower-cased, without a schema URN prefix
/// (`urn:ietf:params:scim:schemas:core:2.0:User:active` → `active`).
fn strip_urn(path: &str) -> String {
    let p = path.to_ascii_lowercase();
    match p.strip_prefix("urn:ietf:params:scim:schemas:core:2.0:user:") {
        Some(rest) => rest.to_owned(),
        None if p.starts_with("urn:") => {
            // An extension's attribute: keep only what follows its URN (ignored anyway).
            p.rsplit(':').next().unwrap_or("").to_owned()
        }
        None => p,
    }
}

// ---------------------------------------------------------------------------------------------
// Groups.

#[derive(Clone, Debug)]
pub struct GroupInput {
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: BTreeSet<Uuid>,
}

pub fn get_group(app: &App, tenant: TenantId, id: Uuid) -> Result<Versioned<ScimGroup>, Error> {
    app.directory
        .group(tenant, id)
        .ok_or_else(|| Error::NotFound("no such group".into()))
}

pub fn list_groups(
    app: &App,
    tenant: TenantId,
    filter: &DirectoryFilter,
    start: usize,
    count: usize,
) -> DirectoryPage<Versioned<ScimGroup>> {
    app.directory.groups(tenant, filter, start, count)
}

fn check_group(input: &GroupInput) -> Result<(), Error> {
    let n = input.display_name.trim();
    if n.is_empty() || n.chars().count() > 256 {
        return Err(Error::field("displayName", "must be 1 to 256 characters"));
    }
    Ok(())
}

/// Bring the roles of these users in line with the mapping over their groups now.
async fn remap(app: &App, ctx: &Ctx, tenant: TenantId, users: BTreeSet<Uuid>) -> Result<(), Error> {
    if users.is_empty() {
        return Ok(());
    }
    let mapping = crate::sso::config(app, tenant).await?.mapping;
    for scim_id in users {
        let Some((user, groups)) = app.directory.user(tenant, scim_id) else {
            continue;
        };
        let Some(member) = user
            .value
            .user_id
            .and_then(|u| app.identity.member(tenant, u))
        else {
            continue;
        };
        let names: Vec<String> = groups.into_iter().map(|(_, n)| n).collect();
        // A deny or no match leaves the member as they are; deactivation is SCIM's `active`.
        if let Outcome::Role { role, .. } = mapping.evaluate(&names)
            && role != member.role
        {
            set_role(app, ctx, tenant, member.user_id, member.role, role).await?;
        }
    }
    Ok(())
}

/// `POST /Groups`.
pub async fn create_group(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    input: GroupInput,
) -> Result<Versioned<ScimGroup>, Error> {
    let ctx = scim_ctx(ctx);
    check_group(&input)?;
    let group_id = ctx.new_id("scim-group");
    run(
        app,
        &ctx,
        tenant,
        ScimCommand::CreateGroup {
            group: ScimGroup {
                group_id,
                display_name: input.display_name,
                external_id: input.external_id,
                members: input.members.clone(),
            },
            reason: "POST /Groups".into(),
        },
    )
    .await?;
    remap(app, &ctx, tenant, input.members).await?;
    get_group(app, tenant, group_id)
}

/// `PUT /Groups/{id}` (and `PATCH` once applied).
pub async fn replace_group(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    id: Uuid,
    input: GroupInput,
    reason: &str,
) -> Result<Versioned<ScimGroup>, Error> {
    let ctx = scim_ctx(ctx);
    check_group(&input)?;
    let current = get_group(app, tenant, id)?;
    let renamed = current.value.display_name != input.display_name;
    let affected: BTreeSet<Uuid> = if renamed {
        current
            .value
            .members
            .union(&input.members)
            .copied()
            .collect()
    } else {
        current
            .value
            .members
            .symmetric_difference(&input.members)
            .copied()
            .collect()
    };
    run(
        app,
        &ctx,
        tenant,
        ScimCommand::UpdateGroup {
            group: ScimGroup {
                group_id: id,
                display_name: input.display_name,
                external_id: input.external_id,
                members: input.members,
            },
            reason: reason.to_owned(),
        },
    )
    .await?;
    remap(app, &ctx, tenant, affected).await?;
    get_group(app, tenant, id)
}

/// `PATCH /Groups/{id}`: members added or removed (`members[value eq "…"]` paths too), the name
/// replaced.
pub async fn patch_group(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    id: Uuid,
    ops: Vec<PatchOp>,
) -> Result<Versioned<ScimGroup>, Error> {
    let current = get_group(app, tenant, id)?;
    let mut input = GroupInput {
        display_name: current.value.display_name.clone(),
        external_id: current.value.external_id.clone(),
        members: current.value.members.clone(),
    };
    let mut said = Vec::new();
    for op in &ops {
        let path = op.path.as_deref().map(str::to_ascii_lowercase);
        match (op.op, path.as_deref()) {
            (PatchKind::Add | PatchKind::Replace, Some("members")) => {
                let ids = member_ids(op.value.as_ref())?;
                if op.op == PatchKind::Replace {
                    input.members.clear();
                }
                said.push(format!("{} {} members", kind(op.op), ids.len()));
                input.members.extend(ids);
            }
            (PatchKind::Remove, Some("members")) => match &op.value {
                None => {
                    said.push("remove all members".into());
                    input.members.clear();
                }
                Some(v) => {
                    let ids = member_ids(Some(v))?;
                    said.push(format!("remove {} members", ids.len()));
                    for m in ids {
                        input.members.remove(&m);
                    }
                }
            },
            (PatchKind::Remove, Some(p)) if p.starts_with("members[") => {
                let id = member_in_filter(p)
                    .ok_or_else(|| Error::field("path", "expected members[value eq \"id\"]"))?;
                said.push("remove 1 member".into());
                input.members.remove(&id);
            }
            (PatchKind::Add | PatchKind::Replace, Some("displayname")) => {
                input.display_name = op
                    .value
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| Error::field("displayName", "must be a string"))?
                    .to_owned();
                said.push("replace displayName".into());
            }
            (PatchKind::Remove, Some("externalid")) => {
                input.external_id = None;
                said.push("remove externalId".into());
            }
            (PatchKind::Add | PatchKind::Replace, Some("externalid")) => {
                input.external_id = op
                    .value
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                said.push("replace externalId".into());
            }
            (PatchKind::Add | PatchKind::Replace, None) => {
                let Some(serde_json::Value::Object(attrs)) = &op.value else {
                    return Err(Error::field(
                        "value",
                        "must be an object when there is no path",
                    ));
                };
                for (k, v) in attrs {
                    match k.to_ascii_lowercase().as_str() {
                        "displayname" => {
                            input.display_name = v
                                .as_str()
                                .ok_or_else(|| Error::field("displayName", "must be a string"))?
                                .to_owned()
                        }
                        "externalid" => input.external_id = v.as_str().map(str::to_owned),
                        "members" => {
                            if op.op == PatchKind::Replace {
                                input.members.clear();
                            }
                            input.members.extend(member_ids(Some(v))?)
                        }
                        _ => {}
                    }
                }
                said.push(format!("{} attributes", kind(op.op)));
            }
            (_, Some(other)) => {
                return Err(Error::field(
                    "path",
                    format!("{other:?} is not a path of a group"),
                ));
            }
            (PatchKind::Remove, None) => return Err(Error::field("path", "is required to remove")),
        }
    }
    let reason = format!("PATCH {}", said.join(", "));
    replace_group(app, ctx, tenant, id, input, &reason).await
}

fn kind(k: PatchKind) -> &'static str {
    match k {
        PatchKind::Add => "add",
        PatchKind::Replace => "replace",
        PatchKind::Remove => "remove",
    }
}

/// `[{"value": "id"}, …]` (or one such object).
fn member_ids(v: Option<&serde_json::Value>) -> Result<Vec<Uuid>, Error> {
    let bad = || Error::field("members", "expected [{\"value\": \"<user id>\"}]");
    let items = match v {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(o @ serde_json::Value::Object(_)) => vec![o.clone()],
        _ => return Err(bad()),
    };
    items
        .iter()
        .map(|m| {
            m.get("value")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<Uuid>().ok())
                .ok_or_else(|| {
                    Error::field(
                        "members",
                        "a member's value is not the id of a provisioned user",
                    )
                })
        })
        .collect()
}

/// `members[value eq "id"]` → the id.
fn member_in_filter(path: &str) -> Option<Uuid> {
    let inner = path.strip_prefix("members[")?.strip_suffix(']')?;
    let rest = inner.trim().strip_prefix("value")?.trim_start();
    let rest = rest.strip_prefix("eq")?.trim();
    rest.trim_matches('"').parse().ok()
}

/// `DELETE /Groups/{id}`: its members' roles follow the mapping without it.
pub async fn delete_group(app: &App, ctx: &Ctx, tenant: TenantId, id: Uuid) -> Result<u64, Error> {
    let ctx = scim_ctx(ctx);
    let current = get_group(app, tenant, id)?;
    let position = run(
        app,
        &ctx,
        tenant,
        ScimCommand::DeleteGroup {
            group_id: id,
            reason: "DELETE /Groups".into(),
        },
    )
    .await?;
    remap(app, &ctx, tenant, current.value.members).await?;
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_quirks_are_read() {
        assert_eq!(PatchKind::parse("Replace"), Some(PatchKind::Replace));
        assert_eq!(PatchKind::parse("ADD"), Some(PatchKind::Add));
        assert_eq!(PatchKind::parse("move"), None);
        assert_eq!(lenient_bool(&serde_json::json!("False")), Some(false));
        assert_eq!(lenient_bool(&serde_json::json!("true")), Some(true));
        assert_eq!(lenient_bool(&serde_json::json!(false)), Some(false));
        assert_eq!(lenient_bool(&serde_json::json!("no")), None);
        assert_eq!(
            strip_urn("urn:ietf:params:scim:schemas:core:2.0:User:active"),
            "active"
        );
        let id = Uuid::from_u128(7);
        assert_eq!(
            member_in_filter(&format!("members[value eq \"{id}\"]")),
            Some(id)
        );
    }
}
