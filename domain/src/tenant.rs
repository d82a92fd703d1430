//! The `Tenant` aggregate: sign-up with a validated name, rename, the current plan, members and
//! their tokens, and per-tenant feature-flag overrides.

use crate::UserId;
use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::identity::{Email, Flag, IssuedToken, PersonName, TenantRole, TokenKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

pub mod access;
pub use access::{
    By, InviteAccepted, InviteCreated, InviteOutcome, InviteUpdated, MemberRemoved,
    MemberRoleChanged, MessageDelivered, MessageKind, NewInvite, OnConflict, PendingInvite,
    SignInCodeFailed, SignInCodeRequested, SignInCompleted,
};

/// The stream that holds one tenant's lifecycle events.
pub fn stream_id(tenant: crate::TenantId) -> String {
    format!("tenant-{tenant}")
}

/// A tenant's display name: trimmed, 1 to 100 characters, no control or bidirectional-override
/// characters (they make names that render differently from what they are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TenantName(String);

/// History is read leniently: a stored name decodes as it was written, even if today's rule
/// (`TenantName::parse`, applied to every command) would refuse it.
impl<'de> Deserialize<'de> for TenantName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("contains a control or invisible formatting character")]
    ForbiddenCharacter,
}

impl TenantName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, TenantNameError> {
        parse_display_text(raw, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Trimmed display text of 1 to `max` characters, free of control and spoofing characters.
pub(crate) fn parse_display_text(raw: &str, max: usize) -> Result<String, TenantNameError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(TenantNameError::Empty);
    }
    if text.chars().count() > max {
        return Err(TenantNameError::TooLong { max });
    }
    if text.chars().any(is_forbidden) {
        return Err(TenantNameError::ForbiddenCharacter);
    }
    Ok(text.to_owned())
}

/// Control characters, and the Unicode format characters used for spoofing: bidi embeddings and
/// overrides, isolates, zero-width characters and the byte-order mark.
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl TryFrom<String> for TenantName {
    type Error = TenantNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantName> for String {
    fn from(value: TenantName) -> Self {
        value.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plans of SPEC §4. Their limits and prices live in the plan registry, not here.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    #[default]
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    /// Free < Pro < Enterprise: moving up is an upgrade.
    pub fn rank(self) -> u8 {
        match self {
            Plan::Free => 0,
            Plan::Pro => 1,
            Plan::Enterprise => 2,
        }
    }

    pub fn parse(s: &str) -> Option<Plan> {
        match s {
            "free" => Some(Plan::Free),
            "pro" => Some(Plan::Pro),
            "enterprise" => Some(Plan::Enterprise),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }
}

/// A member to add: who they are and the token they start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMember {
    pub user_id: UserId,
    pub email: Email,
    pub name: PersonName,
    pub role: TenantRole,
    pub token: IssuedToken,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantCommand {
    /// Create the tenant on the Free plan with its first user as `owner`.
    SignUp {
        name: TenantName,
        owner: NewMember,
    },
    Rename {
        name: TenantName,
    },
    ChangePlan {
        plan: Plan,
        reason: Option<String>,
        /// The new plan's seats (from the plan registry); `None` is unlimited.
        seats: Option<u64>,
        /// The plan registry version the change is decided under.
        registry_version: u32,
    },
    /// Add a member; `by` is the role of who asks (an admin cannot make owners); `seats` is what
    /// the plan in force allows (`None`: unlimited).
    AddMember {
        member: NewMember,
        by: TenantRole,
        seats: Option<u64>,
    },
    /// Add a member the directory makes (an SSO first login, a SCIM user), as `AddMember`; its
    /// first token's kind says where it came from (`sso`, `scim`) rather than `member_added`.
    AddMemberFrom {
        member: NewMember,
        by: TenantRole,
        seats: Option<u64>,
        kind: TokenKind,
    },
    /// Revoke one token of the tenant's members.
    RevokeToken {
        token_id: Uuid,
    },
    /// Override a feature flag for this tenant (platform ops).
    SetFlag {
        flag: Flag,
        enabled: bool,
    },
    /// Remove a member (or a member leaves: `by.user` is themselves); their tokens are revoked.
    RemoveMember {
        user_id: UserId,
        by: By,
        actor: String,
        reason: Option<String>,
    },
    /// Give a member another role.
    ChangeRole {
        user_id: UserId,
        role: TenantRole,
        by: By,
        actor: String,
        reason: Option<String>,
    },
    /// Issue a token to an existing member: a re-issue by an owner or admin (`by`), a rotation
    /// (`replaces` the caller's token), an SSO or SCIM sign-in (`by: None`).
    IssueToken {
        user_id: UserId,
        token: IssuedToken,
        kind: TokenKind,
        issuer: String,
        by: Option<By>,
        replaces: Option<Uuid>,
    },
    /// Revoke a token as someone (`by: None`: the caller's own, or the platform), for a reason.
    RevokeTokenBy {
        token_id: Uuid,
        by: Option<By>,
        actor: String,
        reason: Option<String>,
    },
    /// Invite people (one, or the valid rows of a CSV file).
    CreateInvites {
        invites: Vec<NewInvite>,
        by: TenantRole,
        actor: String,
        on_conflict: OnConflict,
        /// Seats the plan allows now and after a scheduled downgrade (the fewer).
        seats: Option<u64>,
    },
    /// Accept an invite: the member is made and their first token issued.
    AcceptInvite {
        invite_id: Uuid,
        user_id: UserId,
        name: PersonName,
        token: IssuedToken,
    },
    /// A member asks for a sign-in code.
    RequestSignInCode {
        user_id: UserId,
        request_id: Uuid,
    },
    /// A sign-in code was presented; the application checked it against the request.
    AttemptSignIn {
        user_id: UserId,
        request_id: Uuid,
        code_matched: bool,
        token: IssuedToken,
    },
    /// The outbox handed messages to its transport (one event each, one append).
    RecordDeliveries {
        deliveries: Vec<MessageDelivered>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUp {
    pub name: TenantName,
    pub plan: Plan,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renamed {
    pub from: TenantName,
    pub to: TenantName,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanChanged {
    pub from: Plan,
    pub to: Plan,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why, as the person who changed it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plan registry version the change was decided under (`null` in v1 events).
    #[serde(default)]
    pub registry_version: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanChangeScheduled {
    pub from: Plan,
    pub to: Plan,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plan registry version the change was decided under (`null` in v1 events).
    #[serde(default)]
    pub registry_version: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAdded {
    pub user_id: UserId,
    pub email: Email,
    pub name: PersonName,
    pub role: TenantRole,
}

/// v2 added `kind`, `issuer` and `issued_at`; v1 payloads read as `legacy`, with no issuer and
/// no issue time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub user_id: UserId,
    #[serde(flatten)]
    pub token: IssuedToken,
    #[serde(default = "legacy_kind")]
    pub kind: TokenKind,
    /// Who issued it (`user:<id>`, `invite:<id>`, `sign-in:<id>`, `sso`, `scim`, …).
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub issued_at: Option<OffsetDateTime>,
}

fn legacy_kind() -> TokenKind {
    TokenKind::Legacy
}

/// v2 added `reason` and `actor`; v1 payloads read with both `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub token_id: Uuid,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagSet {
    pub flag: Flag,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantEvent {
    SignedUp(SignedUp),
    Renamed(Renamed),
    PlanChanged(PlanChanged),
    PlanChangeScheduled(PlanChangeScheduled),
    MemberAdded(MemberAdded),
    TokenIssued(TokenIssued),
    TokenRevoked(TokenRevoked),
    FlagSet(FlagSet),
    MemberRemoved(MemberRemoved),
    MemberRoleChanged(MemberRoleChanged),
    InviteCreated(InviteCreated),
    InviteUpdated(InviteUpdated),
    InviteAccepted(InviteAccepted),
    SignInCodeRequested(SignInCodeRequested),
    SignInCodeFailed(SignInCodeFailed),
    SignInCompleted(SignInCompleted),
    MessageDelivered(MessageDelivered),
}

impl TenantEvent {
    /// Every event type this aggregate writes, with the schema version it writes.
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("tenant.signed_up", 1),
        ("tenant.renamed", 1),
        ("plan.changed", 2),
        ("plan.change_scheduled", 2),
        ("member.added", 1),
        ("token.issued", 2),
        ("token.revoked", 2),
        ("flag.set", 1),
        ("member.removed", 1),
        ("member.role_changed", 1),
        ("invite.created", 1),
        ("invite.updated", 1),
        ("invite.accepted", 1),
        ("sign_in.code_requested", 1),
        ("sign_in.code_failed", 1),
        ("sign_in.completed", 1),
        ("message.delivered", 1),
    ];
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TenantEvent::SignedUp(_) => "tenant.signed_up",
            TenantEvent::Renamed(_) => "tenant.renamed",
            TenantEvent::PlanChanged(_) => "plan.changed",
            TenantEvent::PlanChangeScheduled(_) => "plan.change_scheduled",
            TenantEvent::MemberAdded(_) => "member.added",
            TenantEvent::TokenIssued(_) => "token.issued",
            TenantEvent::TokenRevoked(_) => "token.revoked",
            TenantEvent::FlagSet(_) => "flag.set",
            TenantEvent::MemberRemoved(_) => "member.removed",
            TenantEvent::MemberRoleChanged(_) => "member.role_changed",
            TenantEvent::InviteCreated(_) => "invite.created",
            TenantEvent::InviteUpdated(_) => "invite.updated",
            TenantEvent::InviteAccepted(_) => "invite.accepted",
            TenantEvent::SignInCodeRequested(_) => "sign_in.code_requested",
            TenantEvent::SignInCodeFailed(_) => "sign_in.code_failed",
            TenantEvent::SignInCompleted(_) => "sign_in.completed",
            TenantEvent::MessageDelivered(_) => "message.delivered",
        }
    }

    fn schema_version(&self) -> u16 {
        match self {
            // v2 added `registry_version`; v1 payloads read with it `null`.
            TenantEvent::PlanChanged(_) | TenantEvent::PlanChangeScheduled(_) => 2,
            // v2 added the issuer, kind and time of a token, and the reason of a revocation.
            TenantEvent::TokenIssued(_) | TenantEvent::TokenRevoked(_) => 2,
            _ => 1,
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        let value = match self {
            TenantEvent::SignedUp(e) => serde_json::to_value(e),
            TenantEvent::Renamed(e) => serde_json::to_value(e),
            TenantEvent::PlanChanged(e) => serde_json::to_value(e),
            TenantEvent::PlanChangeScheduled(e) => serde_json::to_value(e),
            TenantEvent::MemberAdded(e) => serde_json::to_value(e),
            TenantEvent::TokenIssued(e) => serde_json::to_value(e),
            TenantEvent::TokenRevoked(e) => serde_json::to_value(e),
            TenantEvent::FlagSet(e) => serde_json::to_value(e),
            TenantEvent::MemberRemoved(e) => serde_json::to_value(e),
            TenantEvent::MemberRoleChanged(e) => serde_json::to_value(e),
            TenantEvent::InviteCreated(e) => serde_json::to_value(e),
            TenantEvent::InviteUpdated(e) => serde_json::to_value(e),
            TenantEvent::InviteAccepted(e) => serde_json::to_value(e),
            TenantEvent::SignInCodeRequested(e) => serde_json::to_value(e),
            TenantEvent::SignInCodeFailed(e) => serde_json::to_value(e),
            TenantEvent::SignInCompleted(e) => serde_json::to_value(e),
            TenantEvent::MessageDelivered(e) => serde_json::to_value(e),
        };
        value.expect("tenant events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        Ok(match (event_type, schema_version) {
            ("tenant.signed_up", 1) => {
                TenantEvent::SignedUp(EventDecodeError::parse(event_type, payload)?)
            }
            ("tenant.renamed", 1) => {
                TenantEvent::Renamed(EventDecodeError::parse(event_type, payload)?)
            }
            ("plan.changed", 1 | 2) => {
                TenantEvent::PlanChanged(EventDecodeError::parse(event_type, payload)?)
            }
            ("plan.change_scheduled", 1 | 2) => {
                TenantEvent::PlanChangeScheduled(EventDecodeError::parse(event_type, payload)?)
            }
            ("member.added", 1) => {
                TenantEvent::MemberAdded(EventDecodeError::parse(event_type, payload)?)
            }
            // v1 payloads upcast by their serde defaults: kind `legacy`, no issuer, no reason.
            ("token.issued", 1 | 2) => {
                TenantEvent::TokenIssued(EventDecodeError::parse(event_type, payload)?)
            }
            ("token.revoked", 1 | 2) => {
                TenantEvent::TokenRevoked(EventDecodeError::parse(event_type, payload)?)
            }
            ("flag.set", 1) => TenantEvent::FlagSet(EventDecodeError::parse(event_type, payload)?),
            ("member.removed", 1) => {
                TenantEvent::MemberRemoved(EventDecodeError::parse(event_type, payload)?)
            }
            ("member.role_changed", 1) => {
                TenantEvent::MemberRoleChanged(EventDecodeError::parse(event_type, payload)?)
            }
            ("invite.created", 1) => {
                TenantEvent::InviteCreated(EventDecodeError::parse(event_type, payload)?)
            }
            ("invite.updated", 1) => {
                TenantEvent::InviteUpdated(EventDecodeError::parse(event_type, payload)?)
            }
            ("invite.accepted", 1) => {
                TenantEvent::InviteAccepted(EventDecodeError::parse(event_type, payload)?)
            }
            ("sign_in.code_requested", 1) => {
                TenantEvent::SignInCodeRequested(EventDecodeError::parse(event_type, payload)?)
            }
            ("sign_in.code_failed", 1) => {
                TenantEvent::SignInCodeFailed(EventDecodeError::parse(event_type, payload)?)
            }
            ("sign_in.completed", 1) => {
                TenantEvent::SignInCompleted(EventDecodeError::parse(event_type, payload)?)
            }
            ("message.delivered", 1) => {
                TenantEvent::MessageDelivered(EventDecodeError::parse(event_type, payload)?)
            }
            _ => {
                return Err(EventDecodeError::UnknownType {
                    event_type: event_type.to_owned(),
                    schema_version,
                });
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("this tenant has already signed up")]
    AlreadySignedUp,
    #[error("no such tenant")]
    NotFound,
    #[error("the tenant already has this name")]
    SameName,
    #[error("the tenant is already on the {0} plan")]
    SamePlan(&'static str),
    #[error("the {plan} plan has {seats} seats and the tenant has {members} members")]
    TooManyMembers {
        plan: &'static str,
        seats: u64,
        members: usize,
    },
    #[error("{0} is already a member of this tenant")]
    EmailTaken(String),
    #[error("this user id is already a member of this tenant")]
    UserIdTaken,
    #[error("only an owner can add an owner")]
    OnlyOwnersAddOwners,
    #[error("no such token")]
    UnknownToken,
    #[error("the token is already revoked")]
    AlreadyRevoked,
    #[error("no such member in this tenant")]
    NotAMember,
    #[error("the last owner cannot be removed or demoted; make another owner first")]
    LastOwner,
    #[error("admins cannot act on owners")]
    AdminsCannotTouchOwners,
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("the member already has the {0} role")]
    SameRole(&'static str),
    #[error("no such invite")]
    UnknownInvite,
    #[error("this invite was already accepted")]
    InviteUsed,
    #[error("this invite has expired")]
    InviteExpired,
    /// Unknown email, wrong, expired or used code, too many attempts: one answer for all.
    #[error("the code is wrong or no longer valid")]
    SignInRefused,
}

/// A member as the aggregate keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub email: Email,
    pub role: TenantRole,
}

/// What the executor keeps hot for one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: Option<TenantName>,
    pub plan: Plan,
    #[serde(with = "time::serde::rfc3339::option")]
    pub signed_up_at: Option<OffsetDateTime>,
    pub members: BTreeMap<UserId, Member>,
    /// Token id → revoked?
    pub tokens: BTreeMap<Uuid, bool>,
    /// Token id → the member it was issued to.
    #[serde(default)]
    pub token_owner: BTreeMap<Uuid, UserId>,
    /// Invites that were not accepted (expired ones until they are replaced).
    #[serde(default)]
    pub invites: BTreeMap<Uuid, PendingInvite>,
    #[serde(default)]
    pub accepted_invites: BTreeSet<Uuid>,
    /// Each member's sign-in request.
    #[serde(default)]
    pub sign_ins: BTreeMap<UserId, access::SignInState>,
    pub flags: BTreeMap<Flag, bool>,
    /// A downgrade waiting for the next period: the plan and when it applies.
    #[serde(default)]
    pub pending: Option<PlanChangeScheduled>,
}

impl Tenant {
    /// The plan in force at `now` (a scheduled downgrade applies from its period on).
    pub fn plan_at(&self, now: OffsetDateTime) -> Plan {
        match &self.pending {
            Some(p) if now >= p.effective_at => p.to,
            _ => self.plan,
        }
    }

    fn check_new_member(&self, m: &NewMember) -> Result<(), TenantError> {
        if self.members.contains_key(&m.user_id) {
            return Err(TenantError::UserIdTaken);
        }
        if self.members.values().any(|x| x.email == m.email) {
            return Err(TenantError::EmailTaken(m.email.to_string()));
        }
        Ok(())
    }
}

fn member_events(m: &NewMember, kind: TokenKind, now: OffsetDateTime) -> [TenantEvent; 2] {
    [
        TenantEvent::MemberAdded(MemberAdded {
            user_id: m.user_id,
            email: m.email.clone(),
            name: m.name.clone(),
            role: m.role,
        }),
        TenantEvent::TokenIssued(TokenIssued {
            user_id: m.user_id,
            token: m.token.clone(),
            kind,
            issuer: Some(format!("user:{}", m.user_id)),
            issued_at: Some(now),
        }),
    ]
}

impl Tenant {
    /// A new member and their first token of `kind`; `by` is the role of who asks (only owners
    /// add owners), `seats` what the plan allows.
    fn decide_add_member(
        &self,
        member: &NewMember,
        by: TenantRole,
        seats: Option<u64>,
        kind: TokenKind,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        if member.role == TenantRole::Owner && by != TenantRole::Owner {
            return Err(TenantError::OnlyOwnersAddOwners);
        }
        self.check_new_member(member)?;
        if let Some(seats) = seats
            && self.seats_taken(now) as u64 >= seats
        {
            return Err(TenantError::TooManyMembers {
                plan: self.plan_at(now).as_str(),
                seats,
                members: self.seats_taken(now),
            });
        }
        Ok(member_events(member, kind, now).into())
    }
}

impl Aggregate for Tenant {
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;

    fn decide(
        &self,
        command: &TenantCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        use TenantCommand as C;
        if self.name.is_none() && !matches!(command, C::SignUp { .. }) {
            return Err(TenantError::NotFound);
        }
        match command {
            C::SignUp { .. } if self.name.is_some() => Err(TenantError::AlreadySignedUp),
            C::SignUp { name, owner } => {
                let mut events = vec![TenantEvent::SignedUp(SignedUp {
                    name: name.clone(),
                    plan: Plan::Free,
                    at: now,
                })];
                let owner = NewMember {
                    role: TenantRole::Owner,
                    ..owner.clone()
                };
                events.extend(member_events(&owner, TokenKind::SignUp, now));
                Ok(events)
            }
            C::Rename { name } if Some(name) == self.name.as_ref() => Err(TenantError::SameName),
            C::Rename { name } => Ok(vec![TenantEvent::Renamed(Renamed {
                from: self.name.clone().expect("checked above"),
                to: name.clone(),
            })]),
            C::ChangePlan {
                plan,
                reason,
                seats,
                registry_version,
            } => {
                let current = self.plan_at(now);
                let pending = self.pending.as_ref().filter(|p| now < p.effective_at);
                if *plan == current && pending.is_none() {
                    return Err(TenantError::SamePlan(plan.as_str()));
                }
                if plan.rank() >= current.rank() {
                    // An upgrade (or cancelling a scheduled downgrade): effective now.
                    return Ok(vec![TenantEvent::PlanChanged(PlanChanged {
                        from: current,
                        to: *plan,
                        at: now,
                        reason: reason.clone(),
                        registry_version: Some(*registry_version),
                    })]);
                }
                if let Some(seats) = *seats
                    && self.seats_taken(now) as u64 > seats
                {
                    return Err(TenantError::TooManyMembers {
                        plan: plan.as_str(),
                        seats,
                        members: self.seats_taken(now),
                    });
                }
                Ok(vec![TenantEvent::PlanChangeScheduled(
                    PlanChangeScheduled {
                        from: current,
                        to: *plan,
                        effective_at: crate::quota::Period::of(now).end(),
                        reason: reason.clone(),
                        registry_version: Some(*registry_version),
                    },
                )])
            }
            C::AddMember { member, by, seats } => {
                self.decide_add_member(member, *by, *seats, TokenKind::MemberAdded, now)
            }
            C::AddMemberFrom {
                member,
                by,
                seats,
                kind,
            } => self.decide_add_member(member, *by, *seats, *kind, now),
            C::RevokeToken { token_id } => match self.tokens.get(token_id) {
                None => Err(TenantError::UnknownToken),
                Some(true) => Err(TenantError::AlreadyRevoked),
                Some(false) => Ok(vec![TenantEvent::TokenRevoked(TokenRevoked {
                    token_id: *token_id,
                    reason: None,
                    actor: None,
                })]),
            },
            C::SetFlag { flag, enabled } => Ok(vec![TenantEvent::FlagSet(FlagSet {
                flag: *flag,
                enabled: *enabled,
            })]),
            C::RemoveMember {
                user_id,
                by,
                actor,
                reason,
            } => self.decide_remove(*user_id, *by, actor, reason),
            C::ChangeRole {
                user_id,
                role,
                by,
                actor,
                reason,
            } => self.decide_change_role(*user_id, *role, *by, actor, reason),
            C::IssueToken {
                user_id,
                token,
                kind,
                issuer,
                by,
                replaces,
            } => self.decide_issue_token(*user_id, token, *kind, issuer, *by, *replaces, now),
            C::RevokeTokenBy {
                token_id,
                by,
                actor,
                reason,
            } => self.decide_revoke(*token_id, *by, Some(actor), reason),
            C::CreateInvites {
                invites,
                by,
                actor,
                on_conflict,
                seats,
            } => self
                .plan_invites(invites, *by, actor, *on_conflict, *seats, now)
                .map(|(_, events)| events),
            C::AcceptInvite {
                invite_id,
                user_id,
                name,
                token,
            } => self.decide_accept(*invite_id, *user_id, name, token, now),
            C::RequestSignInCode {
                user_id,
                request_id,
            } => self.decide_sign_in_request(*user_id, *request_id, now),
            C::AttemptSignIn {
                user_id,
                request_id,
                code_matched,
                token,
            } => self.decide_sign_in_attempt(*user_id, *request_id, *code_matched, token, now),
            C::RecordDeliveries { deliveries } => Ok(deliveries
                .iter()
                .cloned()
                .map(TenantEvent::MessageDelivered)
                .collect()),
        }
    }

    fn evolve(&mut self, event: &TenantEvent) {
        match event {
            TenantEvent::SignedUp(e) => {
                self.name = Some(e.name.clone());
                self.plan = e.plan;
                self.signed_up_at = Some(e.at);
            }
            TenantEvent::Renamed(e) => self.name = Some(e.to.clone()),
            TenantEvent::PlanChanged(e) => {
                self.plan = e.to;
                self.pending = None;
            }
            TenantEvent::PlanChangeScheduled(e) => {
                // The plan in force when it was asked for (an earlier scheduled change may have
                // taken effect since) stays until this one applies.
                self.plan = e.from;
                self.pending = Some(e.clone());
            }
            TenantEvent::MemberAdded(e) => {
                self.members.insert(
                    e.user_id,
                    Member {
                        email: e.email.clone(),
                        role: e.role,
                    },
                );
            }
            TenantEvent::TokenIssued(e) => {
                self.tokens.insert(e.token.token_id, false);
                self.token_owner.insert(e.token.token_id, e.user_id);
            }
            TenantEvent::TokenRevoked(e) => {
                self.tokens.insert(e.token_id, true);
            }
            TenantEvent::FlagSet(e) => {
                self.flags.insert(e.flag, e.enabled);
            }
            other => self.evolve_access(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};

    fn added(m: &NewMember) -> [TenantEvent; 2] {
        member_events(m, TokenKind::MemberAdded, test_now())
    }

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn new_member(n: u128, email: &str, role: TenantRole) -> NewMember {
        NewMember {
            user_id: user(n),
            email: Email::parse(email).unwrap(),
            name: PersonName::parse("Ada Lovelace").unwrap(),
            role,
            token: IssuedToken {
                token_id: Uuid::from_u128(1000 + n),
                token_sha256: format!("{n:064x}"),
                expires_at: test_now() + time::Duration::days(30),
            },
        }
    }

    fn signed_up(n: &str) -> Vec<TenantEvent> {
        let owner = new_member(1, "owner@example.com", TenantRole::Owner);
        let mut events = vec![TenantEvent::SignedUp(SignedUp {
            name: name(n),
            plan: Plan::Free,
            at: test_now(),
        })];
        events.extend(member_events(&owner, TokenKind::SignUp, test_now()));
        events
    }

    #[test]
    fn sign_up_starts_on_the_free_plan_with_its_first_user_as_owner() {
        // Whatever role the command carries, the first member is the owner.
        let owner = new_member(1, "owner@example.com", TenantRole::Viewer);
        let state = given::<Tenant>([])
            .when(TenantCommand::SignUp {
                name: name("Acme"),
                owner,
            })
            .then(signed_up("Acme"));
        assert_eq!(state.plan, Plan::Free);
        assert_eq!(state.members[&user(1)].role, TenantRole::Owner);
        assert_eq!(state.tokens.len(), 1);
    }

    #[test]
    fn signing_up_twice_is_refused() {
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::SignUp {
                name: name("Acme 2"),
                owner: new_member(2, "b@example.com", TenantRole::Owner),
            })
            .then_err(TenantError::AlreadySignedUp);
    }

    #[test]
    fn rename_records_old_and_new_name() {
        let state = given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::Rename {
                name: name("Acme Corp"),
            })
            .then([TenantEvent::Renamed(Renamed {
                from: name("Acme"),
                to: name("Acme Corp"),
            })]);
        assert_eq!(state.name, Some(name("Acme Corp")));
    }

    #[test]
    fn rename_to_the_same_name_is_refused() {
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::Rename { name: name("Acme") })
            .then_err(TenantError::SameName);
    }

    #[test]
    fn commands_on_a_tenant_that_never_signed_up_are_refused() {
        given::<Tenant>([])
            .when(TenantCommand::Rename { name: name("X") })
            .then_err(TenantError::NotFound);
        given::<Tenant>([])
            .when(TenantCommand::ChangePlan {
                plan: Plan::Pro,
                reason: None,
                seats: crate::plans::definition(Plan::Pro).seats,
                registry_version: 1,
            })
            .then_err(TenantError::NotFound);
        given::<Tenant>([])
            .when(TenantCommand::RevokeToken {
                token_id: Uuid::nil(),
            })
            .then_err(TenantError::NotFound);
    }

    #[test]
    fn change_plan_moves_the_current_plan() {
        let state = given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::ChangePlan {
                plan: Plan::Pro,
                reason: None,
                seats: crate::plans::definition(Plan::Pro).seats,
                registry_version: 1,
            })
            .then([TenantEvent::PlanChanged(PlanChanged {
                from: Plan::Free,
                to: Plan::Pro,
                at: test_now(),
                reason: None,
                registry_version: Some(1),
            })]);
        assert_eq!(state.plan, Plan::Pro);
    }

    #[test]
    fn a_downgrade_waits_for_the_next_period_and_respects_seats() {
        let upgraded = TenantEvent::PlanChanged(PlanChanged {
            from: Plan::Free,
            to: Plan::Pro,
            at: test_now(),
            reason: None,
            registry_version: Some(1),
        });
        let mut history = signed_up("Acme");
        history.push(upgraded);
        let state = given::<Tenant>(history.clone())
            .when(TenantCommand::ChangePlan {
                plan: Plan::Free,
                reason: None,
                seats: crate::plans::definition(Plan::Free).seats,
                registry_version: 1,
            })
            .then([TenantEvent::PlanChangeScheduled(PlanChangeScheduled {
                from: Plan::Pro,
                to: Plan::Free,
                effective_at: time::macros::datetime!(2026-03-01 00:00 UTC),
                reason: None,
                registry_version: Some(1),
            })]);
        assert_eq!(state.plan_at(test_now()), Plan::Pro);
        assert_eq!(
            state.plan_at(time::macros::datetime!(2026-03-01 00:00 UTC)),
            Plan::Free
        );
        for i in 2..=4u128 {
            history.extend(added(&new_member(
                i,
                &format!("m{i}@example.com"),
                TenantRole::Viewer,
            )));
        }
        given::<Tenant>(history)
            .when(TenantCommand::ChangePlan {
                plan: Plan::Free,
                reason: None,
                seats: crate::plans::definition(Plan::Free).seats,
                registry_version: 1,
            })
            .then_err(TenantError::TooManyMembers {
                plan: "free",
                seats: 3,
                members: 4,
            });
    }

    #[test]
    fn a_second_downgrade_starts_from_the_plan_then_in_force() {
        use time::macros::datetime;
        let mut history = signed_up("Acme");
        history.push(TenantEvent::PlanChanged(PlanChanged {
            from: Plan::Free,
            to: Plan::Enterprise,
            at: test_now(),
            reason: None,
            registry_version: Some(1),
        }));
        history.push(TenantEvent::PlanChangeScheduled(PlanChangeScheduled {
            from: Plan::Enterprise,
            to: Plan::Pro,
            effective_at: datetime!(2026-03-01 00:00 UTC),
            reason: None,
            registry_version: Some(1),
        }));
        let mut state = given::<Tenant>(history)
            .when(TenantCommand::Rename {
                name: name("Acme 2"),
            })
            .then([TenantEvent::Renamed(Renamed {
                from: name("Acme"),
                to: name("Acme 2"),
            })]);
        let march = datetime!(2026-03-15 00:00 UTC);
        assert_eq!(state.plan_at(march), Plan::Pro);
        let events = state
            .decide(
                &TenantCommand::ChangePlan {
                    plan: Plan::Free,
                    reason: None,
                    seats: Some(3),
                    registry_version: 1,
                },
                march,
            )
            .unwrap();
        for e in &events {
            state.evolve(e);
        }
        assert_eq!(
            state.plan_at(march),
            Plan::Pro,
            "Pro stays in force until April"
        );
        assert_eq!(state.plan_at(datetime!(2026-04-01 00:00 UTC)), Plan::Free);
    }

    #[test]
    fn changing_to_the_current_plan_is_refused() {
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::ChangePlan {
                plan: Plan::Free,
                reason: None,
                seats: crate::plans::definition(Plan::Free).seats,
                registry_version: 1,
            })
            .then_err(TenantError::SamePlan("free"));
    }

    #[test]
    fn members_are_added_with_their_first_token() {
        let m = new_member(2, "ana@example.com", TenantRole::Analyst);
        let state = given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::AddMember {
                member: m.clone(),
                by: TenantRole::Admin,
                seats: None,
            })
            .then(added(&m));
        assert_eq!(state.members.len(), 2);
    }

    #[test]
    fn a_member_the_directory_makes_gets_a_first_token_of_its_kind() {
        for kind in [TokenKind::Sso, TokenKind::Scim] {
            let m = new_member(2, "ana@example.com", TenantRole::Analyst);
            given::<Tenant>(signed_up("Acme"))
                .when(TenantCommand::AddMemberFrom {
                    member: m.clone(),
                    by: TenantRole::Owner,
                    seats: None,
                    kind,
                })
                .then(member_events(&m, kind, test_now()));
            // The same rules as any new member: seats, one email, only owners make owners.
            given::<Tenant>(signed_up("Acme"))
                .when(TenantCommand::AddMemberFrom {
                    member: new_member(3, "ana@example.com", TenantRole::Owner),
                    by: TenantRole::Admin,
                    seats: None,
                    kind,
                })
                .then_err(TenantError::OnlyOwnersAddOwners);
            given::<Tenant>(signed_up("Acme"))
                .when(TenantCommand::AddMemberFrom {
                    member: m,
                    by: TenantRole::Owner,
                    seats: Some(1),
                    kind,
                })
                .then_err(TenantError::TooManyMembers {
                    plan: "free",
                    seats: 1,
                    members: 1,
                });
        }
    }

    #[test]
    fn an_email_is_a_member_once_whatever_its_case() {
        let m = new_member(2, "OWNER@example.com", TenantRole::Viewer);
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::AddMember {
                member: m,
                by: TenantRole::Owner,
                seats: None,
            })
            .then_err(TenantError::EmailTaken("owner@example.com".into()));
    }

    #[test]
    fn only_an_owner_can_add_an_owner() {
        let m = new_member(2, "second@example.com", TenantRole::Owner);
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::AddMember {
                member: m.clone(),
                by: TenantRole::Admin,
                seats: None,
            })
            .then_err(TenantError::OnlyOwnersAddOwners);
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::AddMember {
                member: m.clone(),
                by: TenantRole::Owner,
                seats: None,
            })
            .then(added(&m));
    }

    #[test]
    fn members_fit_in_the_plans_seats() {
        let mut history = signed_up("Acme");
        history.extend(added(&new_member(2, "b@example.com", TenantRole::Viewer)));
        history.extend(added(&new_member(3, "c@example.com", TenantRole::Viewer)));
        let fourth = new_member(4, "d@example.com", TenantRole::Viewer);
        given::<Tenant>(history.clone())
            .when(TenantCommand::AddMember {
                member: fourth.clone(),
                by: TenantRole::Owner,
                seats: Some(3),
            })
            .then_err(TenantError::TooManyMembers {
                plan: "free",
                seats: 3,
                members: 3,
            });
        given::<Tenant>(history)
            .when(TenantCommand::AddMember {
                member: fourth.clone(),
                by: TenantRole::Owner,
                seats: None,
            })
            .then(added(&fourth));
    }

    #[test]
    fn a_token_is_revoked_once() {
        let token_id = Uuid::from_u128(1001);
        let mut history = signed_up("Acme");
        history.push(TenantEvent::TokenRevoked(TokenRevoked {
            token_id,
            reason: None,
            actor: None,
        }));
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::RevokeToken { token_id })
            .then([TenantEvent::TokenRevoked(TokenRevoked {
                token_id,
                reason: None,
                actor: None,
            })]);
        given::<Tenant>(history)
            .when(TenantCommand::RevokeToken { token_id })
            .then_err(TenantError::AlreadyRevoked);
        given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::RevokeToken {
                token_id: Uuid::nil(),
            })
            .then_err(TenantError::UnknownToken);
    }

    #[test]
    fn flag_overrides_are_recorded() {
        let state = given::<Tenant>(signed_up("Acme"))
            .when(TenantCommand::SetFlag {
                flag: Flag::AuditV12,
                enabled: false,
            })
            .then([TenantEvent::FlagSet(FlagSet {
                flag: Flag::AuditV12,
                enabled: false,
            })]);
        assert_eq!(state.flags.get(&Flag::AuditV12), Some(&false));
    }

    #[test]
    fn tenant_names_are_parsed_at_the_edge() {
        assert_eq!(name("  Acme  ").as_str(), "Acme");
        assert_eq!(TenantName::parse("   "), Err(TenantNameError::Empty));
        assert_eq!(
            TenantName::parse(&"x".repeat(101)),
            Err(TenantNameError::TooLong { max: 100 })
        );
        assert!(TenantName::parse(&"é".repeat(100)).is_ok());
        for hostile in [
            "a\u{0000}b",
            "a\nb",
            "evil\u{202E}gpj.exe",
            "zero\u{200B}width",
        ] {
            assert_eq!(
                TenantName::parse(hostile),
                Err(TenantNameError::ForbiddenCharacter),
                "{hostile:?}"
            );
        }
        assert!(TenantName::parse("Ünïcødé 株式会社 🚀").is_ok());
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let mut events = signed_up("Acme");
        events.extend([
            TenantEvent::Renamed(Renamed {
                from: name("Acme"),
                to: name("B"),
            }),
            TenantEvent::PlanChanged(PlanChanged {
                from: Plan::Free,
                to: Plan::Enterprise,
                at: test_now(),
                reason: None,
                registry_version: Some(1),
            }),
            TenantEvent::PlanChangeScheduled(PlanChangeScheduled {
                from: Plan::Enterprise,
                to: Plan::Free,
                effective_at: test_now(),
                reason: Some("budget".into()),
                registry_version: Some(2),
            }),
            TenantEvent::TokenRevoked(TokenRevoked {
                token_id: Uuid::from_u128(7),
                reason: Some("rotated".into()),
                actor: Some("user:x".into()),
            }),
            TenantEvent::FlagSet(FlagSet {
                flag: Flag::InsightsV11,
                enabled: true,
            }),
        ]);
        events.extend(access::tests::one_of_each());
        let mut kinds: Vec<_> = events
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        kinds.sort();
        let mut all = TenantEvent::ALL_EVENT_TYPES.to_vec();
        all.sort();
        assert_eq!(
            kinds, all,
            "one sample of every event type, as ALL_EVENT_TYPES lists them"
        );
        for e in events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back =
                TenantEvent::from_stored(e.event_type(), e.schema_version(), &bytes).unwrap();
            assert_eq!(back, e);
        }
        assert!(matches!(
            TenantEvent::from_stored("tenant.signed_up", 9, b"{}"),
            Err(EventDecodeError::UnknownType { .. })
        ));
    }

    #[test]
    fn stored_values_that_todays_rules_refuse_still_decode() {
        // Validation belongs to commands, never to history: an email that `Email::parse` refuses
        // today (no domain dot), a name it would trim, an empty new name.
        assert!(Email::parse("ops@localhost").is_err());
        let added = TenantEvent::from_stored(
            "member.added",
            1,
            br#"{"user_id":"00000000-0000-0000-0000-000000000007","email":"ops@localhost","name":" Ada\u200b ","role":"viewer"}"#,
        )
        .unwrap();
        let TenantEvent::MemberAdded(m) = &added else {
            panic!("{added:?}")
        };
        assert_eq!(
            (m.email.as_str(), m.name.as_str()),
            ("ops@localhost", " Ada\u{200b} ")
        );
        let renamed =
            TenantEvent::from_stored("tenant.renamed", 1, br#"{"from":"a","to":""}"#).unwrap();
        assert!(matches!(renamed, TenantEvent::Renamed(r) if r.to.as_str().is_empty()));
        // And the state folds them.
        let mut state = Tenant::default();
        state.evolve(&added);
        assert_eq!(state.members.len(), 1);
        // Commands still refuse them.
        assert!(TenantName::parse("").is_err());
    }

    #[test]
    fn plan_changes_of_version_1_read_with_no_registry_version() {
        let e = TenantEvent::from_stored(
            "plan.changed",
            1,
            br#"{"from":"free","to":"pro","at":"2026-02-16T09:30:00Z"}"#,
        )
        .unwrap();
        assert!(matches!(e, TenantEvent::PlanChanged(p) if p.registry_version.is_none()));
    }
}
