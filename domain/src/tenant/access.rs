//! People over time in the `Tenant` aggregate (issue 10, part A): members who leave or change
//! role, tokens issued and revoked by someone for a reason, invites (single and by CSV rows) and
//! sign-in codes. The rules: the last owner can be neither removed nor demoted, admins cannot
//! touch owners, only owners make owners, seats count members plus pending invites.

use super::{Member, Tenant, TenantError, TenantEvent, TokenIssued, TokenRevoked};
use crate::UserId;
use crate::identity::{Email, IssuedToken, PersonName, TenantRole, TokenKind};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// How long an invite can be accepted.
pub const INVITE_TTL: time::Duration = time::Duration::days(7);
/// How long a sign-in code works.
pub const SIGN_IN_CODE_TTL: time::Duration = time::Duration::minutes(15);
/// Wrong codes a sign-in request survives; the next one kills it.
pub const SIGN_IN_MAX_FAILURES: u8 = 5;
/// Sign-in codes one member can ask for in an hour (more are ignored, answered the same).
pub const SIGN_IN_REQUESTS_PER_HOUR: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub user_id: UserId,
    pub email: Email,
    pub role: TenantRole,
    /// Who removed them (`user:<id>`, `scim`, …); the member themselves when they left.
    pub actor: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoleChanged {
    pub user_id: UserId,
    pub from: TenantRole,
    pub to: TenantRole,
    pub actor: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCreated {
    pub invite_id: Uuid,
    pub email: Email,
    pub role: TenantRole,
    #[serde(default)]
    pub name: Option<PersonName>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub actor: String,
}

/// A pending invite given a new role (CSV `on_conflict=update_role`) or sent again: it gets a
/// fresh expiry and is delivered again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteUpdated {
    pub invite_id: Uuid,
    pub from: TenantRole,
    pub to: TenantRole,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub actor: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteAccepted {
    pub invite_id: Uuid,
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInCodeRequested {
    pub request_id: Uuid,
    pub user_id: UserId,
    pub email: Email,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInCodeFailed {
    pub request_id: Uuid,
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInCompleted {
    pub request_id: Uuid,
    pub user_id: UserId,
}

/// What kind of message the outbox delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Invite,
    SignInCode,
}

/// The outbox handed a message to its transport (ADR 030).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDelivered {
    /// The invite's or the sign-in request's id.
    pub message_id: Uuid,
    pub kind: MessageKind,
    /// `file` or `smtp` (`expired`: dropped unsent, past its time).
    pub via: String,
    /// The expiry of the version delivered (an invite sent again has a new one, and is owed
    /// again until that version is delivered).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// An invite as the aggregate keeps it while it can still be accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInvite {
    pub email: Email,
    pub role: TenantRole,
    #[serde(default)]
    pub name: Option<PersonName>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A member's open sign-in request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInState {
    pub request_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    pub failures: u8,
    pub used: bool,
    /// When the recent requests were made (for the hourly bound).
    #[serde(default)]
    pub requested: Vec<i64>,
}

/// What to do with a CSV row whose email has a pending invite of another role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    #[default]
    Skip,
    UpdateRole,
}

/// One invite asked for (a valid CSV row, or the single-invite route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInvite {
    pub invite_id: Uuid,
    pub email: Email,
    pub role: TenantRole,
    pub name: Option<PersonName>,
}

/// What became of one asked-for invite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteOutcome {
    Created,
    SkippedExistingMember,
    UpdatedPendingInvite,
    ConflictRole,
}

impl InviteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            InviteOutcome::Created => "created",
            InviteOutcome::SkippedExistingMember => "skipped_existing_member",
            InviteOutcome::UpdatedPendingInvite => "updated_pending_invite",
            InviteOutcome::ConflictRole => "conflict_role",
        }
    }
}

/// Who acts on a member: their role, and whether they act on themselves (leaving, their own
/// token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct By {
    pub role: TenantRole,
    pub user: Option<UserId>,
}

impl By {
    fn manages(self) -> bool {
        matches!(self.role, TenantRole::Owner | TenantRole::Admin)
    }
}

impl Tenant {
    fn owners(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.role == TenantRole::Owner)
            .count()
    }

    fn member_or_404(&self, user: UserId) -> Result<&Member, TenantError> {
        self.members.get(&user).ok_or(TenantError::NotAMember)
    }

    /// Invites that can still be accepted at `now`.
    pub fn pending_invites(&self, now: OffsetDateTime) -> usize {
        self.invites.values().filter(|i| i.expires_at > now).count()
    }

    /// Seats taken at `now`: members plus pending invites.
    pub fn seats_taken(&self, now: OffsetDateTime) -> usize {
        self.members.len() + self.pending_invites(now)
    }

    /// The member with this email (emails are lower-cased when parsed).
    pub fn member_by_email(&self, email: &Email) -> Option<UserId> {
        self.members
            .iter()
            .find(|(_, m)| &m.email == email)
            .map(|(id, _)| *id)
    }

    /// The pending invite for this email, if any (expired ones included: they are replaced).
    pub fn invite_by_email(&self, email: &Email) -> Option<(Uuid, &PendingInvite)> {
        self.invites
            .iter()
            .find(|(_, i)| &i.email == email)
            .map(|(id, i)| (*id, i))
    }

    /// Admins cannot touch owners; only owners and admins manage others.
    fn may_manage(&self, by: By, target: UserId) -> Result<(), TenantError> {
        let target_role = self.member_or_404(target)?.role;
        if by.user == Some(target) {
            return Ok(());
        }
        if !by.manages() {
            return Err(TenantError::NotAllowed(
                "only owners and admins manage other members",
            ));
        }
        if by.role == TenantRole::Admin && target_role == TenantRole::Owner {
            return Err(TenantError::AdminsCannotTouchOwners);
        }
        Ok(())
    }

    pub(super) fn decide_remove(
        &self,
        user: UserId,
        by: By,
        actor: &str,
        reason: &Option<String>,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        self.may_manage(by, user)?;
        let member = self.member_or_404(user)?;
        if member.role == TenantRole::Owner && self.owners() == 1 {
            return Err(TenantError::LastOwner);
        }
        let mut events = vec![TenantEvent::MemberRemoved(MemberRemoved {
            user_id: user,
            email: member.email.clone(),
            role: member.role,
            actor: actor.to_owned(),
            reason: reason.clone(),
        })];
        // Their tokens are revoked with them: the log says why each stopped working.
        for (token_id, owner) in &self.token_owner {
            if *owner == user && self.tokens.get(token_id) == Some(&false) {
                events.push(TenantEvent::TokenRevoked(TokenRevoked {
                    token_id: *token_id,
                    reason: Some("member_removed".into()),
                    actor: Some(actor.to_owned()),
                }));
            }
        }
        Ok(events)
    }

    pub(super) fn decide_change_role(
        &self,
        user: UserId,
        role: TenantRole,
        by: By,
        actor: &str,
        reason: &Option<String>,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        let from = self.member_or_404(user)?.role;
        if !by.manages() {
            return Err(TenantError::NotAllowed(
                "only owners and admins change roles",
            ));
        }
        if by.role == TenantRole::Admin && from == TenantRole::Owner {
            return Err(TenantError::AdminsCannotTouchOwners);
        }
        if role == TenantRole::Owner && by.role != TenantRole::Owner {
            return Err(TenantError::OnlyOwnersAddOwners);
        }
        if from == role {
            return Err(TenantError::SameRole(role.as_str()));
        }
        if from == TenantRole::Owner && self.owners() == 1 {
            return Err(TenantError::LastOwner);
        }
        Ok(vec![TenantEvent::MemberRoleChanged(MemberRoleChanged {
            user_id: user,
            from,
            to: role,
            actor: actor.to_owned(),
            reason: reason.clone(),
        })])
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide_issue_token(
        &self,
        user: UserId,
        token: &IssuedToken,
        kind: TokenKind,
        issuer: &str,
        by: Option<By>,
        replaces: Option<Uuid>,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        self.member_or_404(user)?;
        if let Some(by) = by {
            self.may_manage(by, user)?;
        }
        let mut events = Vec::new();
        if let Some(old) = replaces {
            if self.token_owner.get(&old) != Some(&user) {
                return Err(TenantError::UnknownToken);
            }
            if self.tokens.get(&old) == Some(&true) {
                return Err(TenantError::AlreadyRevoked);
            }
            events.push(TenantEvent::TokenRevoked(TokenRevoked {
                token_id: old,
                reason: Some("rotated".into()),
                actor: Some(issuer.to_owned()),
            }));
        }
        events.push(TenantEvent::TokenIssued(TokenIssued {
            user_id: user,
            token: token.clone(),
            kind,
            issuer: Some(issuer.to_owned()),
            issued_at: Some(now),
        }));
        Ok(events)
    }

    pub(super) fn decide_revoke(
        &self,
        token_id: Uuid,
        by: Option<By>,
        actor: Option<&str>,
        reason: &Option<String>,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        match self.tokens.get(&token_id) {
            None => return Err(TenantError::UnknownToken),
            Some(true) => return Err(TenantError::AlreadyRevoked),
            Some(false) => {}
        }
        if let Some(by) = by {
            let owner = self.token_owner.get(&token_id).copied();
            match owner {
                // A token of a member who left is revoked already; one of nobody is unknown.
                Some(owner) if self.members.contains_key(&owner) => {
                    if by.user != Some(owner) {
                        if !by.manages() {
                            // A member learns nothing about others' tokens.
                            return Err(TenantError::UnknownToken);
                        }
                        self.may_manage(by, owner)?;
                    }
                }
                _ => return Err(TenantError::UnknownToken),
            }
        }
        Ok(vec![TenantEvent::TokenRevoked(TokenRevoked {
            token_id,
            reason: reason.clone(),
            actor: actor.map(str::to_owned),
        })])
    }

    /// What each asked-for invite becomes, and the events that make it so. Shared by the command
    /// and by `dry_run`, so that both answer the same report.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_invites(
        &self,
        invites: &[NewInvite],
        by: TenantRole,
        actor: &str,
        on_conflict: OnConflict,
        seats: Option<u64>,
        now: OffsetDateTime,
    ) -> Result<(Vec<InviteOutcome>, Vec<TenantEvent>), TenantError> {
        let expires_at = now + INVITE_TTL;
        let mut outcomes = Vec::with_capacity(invites.len());
        let mut events = Vec::new();
        let mut new_seats = 0usize;
        let by_email: std::collections::HashMap<&Email, (Uuid, &PendingInvite)> = self
            .invites
            .iter()
            .map(|(id, i)| (&i.email, (*id, i)))
            .collect();
        let members: std::collections::HashSet<&Email> =
            self.members.values().map(|m| &m.email).collect();
        for inv in invites {
            if inv.role == TenantRole::Owner && by != TenantRole::Owner {
                return Err(TenantError::OnlyOwnersAddOwners);
            }
            if members.contains(&inv.email) {
                outcomes.push(InviteOutcome::SkippedExistingMember);
                continue;
            }
            match by_email.get(&inv.email) {
                Some((id, pending)) if pending.expires_at > now => {
                    if pending.role != inv.role && on_conflict == OnConflict::Skip {
                        outcomes.push(InviteOutcome::ConflictRole);
                        continue;
                    }
                    outcomes.push(InviteOutcome::UpdatedPendingInvite);
                    events.push(TenantEvent::InviteUpdated(InviteUpdated {
                        invite_id: *id,
                        from: pending.role,
                        to: inv.role,
                        expires_at,
                        actor: actor.to_owned(),
                    }));
                }
                // No invite, or an expired one (it is replaced by a new one).
                _ => {
                    new_seats += 1;
                    outcomes.push(InviteOutcome::Created);
                    events.push(TenantEvent::InviteCreated(InviteCreated {
                        invite_id: inv.invite_id,
                        email: inv.email.clone(),
                        role: inv.role,
                        name: inv.name.clone(),
                        expires_at,
                        actor: actor.to_owned(),
                    }));
                }
            }
        }
        if let Some(seats) = seats {
            let taken = self.seats_taken(now);
            if new_seats > 0 && (taken + new_seats) as u64 > seats {
                return Err(TenantError::TooManyMembers {
                    plan: self.plan_at(now).as_str(),
                    seats,
                    members: taken,
                });
            }
        }
        Ok((outcomes, events))
    }

    pub(super) fn decide_accept(
        &self,
        invite_id: Uuid,
        user_id: UserId,
        name: &PersonName,
        token: &IssuedToken,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        let invite = match self.invites.get(&invite_id) {
            Some(i) => i,
            None if self.accepted_invites.contains(&invite_id) => {
                return Err(TenantError::InviteUsed);
            }
            None => return Err(TenantError::UnknownInvite),
        };
        if invite.expires_at <= now {
            return Err(TenantError::InviteExpired);
        }
        if self.member_by_email(&invite.email).is_some() {
            return Err(TenantError::EmailTaken(invite.email.to_string()));
        }
        if self.members.contains_key(&user_id) {
            return Err(TenantError::UserIdTaken);
        }
        let name = invite.name.clone().unwrap_or_else(|| name.clone());
        Ok(vec![
            TenantEvent::InviteAccepted(InviteAccepted { invite_id, user_id }),
            TenantEvent::MemberAdded(super::MemberAdded {
                user_id,
                email: invite.email.clone(),
                name,
                role: invite.role,
            }),
            TenantEvent::TokenIssued(TokenIssued {
                user_id,
                token: token.clone(),
                kind: TokenKind::Invite,
                issuer: Some(format!("invite:{invite_id}")),
                issued_at: Some(now),
            }),
        ])
    }

    pub(super) fn decide_sign_in_request(
        &self,
        user: UserId,
        request_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        let member = self.member_or_404(user)?;
        let hour_ago = (now - time::Duration::HOUR).unix_timestamp();
        if let Some(s) = self.sign_ins.get(&user)
            && s.requested.iter().filter(|t| **t > hour_ago).count() >= SIGN_IN_REQUESTS_PER_HOUR
        {
            return Err(TenantError::SignInRefused);
        }
        Ok(vec![TenantEvent::SignInCodeRequested(
            SignInCodeRequested {
                request_id,
                user_id: user,
                email: member.email.clone(),
                expires_at: now + SIGN_IN_CODE_TTL,
            },
        )])
    }

    /// The member's open request, if it can still be answered at `now`.
    pub fn open_sign_in(&self, user: UserId, now: OffsetDateTime) -> Option<Uuid> {
        let s = self.sign_ins.get(&user)?;
        let live = !s.used
            && s.failures < SIGN_IN_MAX_FAILURES
            && s.expires_at.is_some_and(|e| e > now)
            && self.members.contains_key(&user);
        live.then_some(s.request_id).flatten()
    }

    pub(super) fn decide_sign_in_attempt(
        &self,
        user: UserId,
        request_id: Uuid,
        code_matched: bool,
        token: &IssuedToken,
        now: OffsetDateTime,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        if self.open_sign_in(user, now) != Some(request_id) {
            return Err(TenantError::SignInRefused);
        }
        if !code_matched {
            return Ok(vec![TenantEvent::SignInCodeFailed(SignInCodeFailed {
                request_id,
                user_id: user,
            })]);
        }
        Ok(vec![
            TenantEvent::SignInCompleted(SignInCompleted {
                request_id,
                user_id: user,
            }),
            TenantEvent::TokenIssued(TokenIssued {
                user_id: user,
                token: token.clone(),
                kind: TokenKind::SignIn,
                issuer: Some(format!("sign-in:{request_id}")),
                issued_at: Some(now),
            }),
        ])
    }

    pub(super) fn evolve_access(&mut self, event: &TenantEvent) {
        match event {
            TenantEvent::MemberRemoved(e) => {
                self.members.remove(&e.user_id);
                self.sign_ins.remove(&e.user_id);
            }
            TenantEvent::MemberRoleChanged(e) => {
                if let Some(m) = self.members.get_mut(&e.user_id) {
                    m.role = e.to;
                }
            }
            TenantEvent::InviteCreated(e) => {
                // An expired invite for the same email is replaced.
                self.invites.retain(|_, i| i.email != e.email);
                self.invites.insert(
                    e.invite_id,
                    PendingInvite {
                        email: e.email.clone(),
                        role: e.role,
                        name: e.name.clone(),
                        expires_at: e.expires_at,
                    },
                );
            }
            TenantEvent::InviteUpdated(e) => {
                if let Some(i) = self.invites.get_mut(&e.invite_id) {
                    i.role = e.to;
                    i.expires_at = e.expires_at;
                }
            }
            TenantEvent::InviteAccepted(e) => {
                self.invites.remove(&e.invite_id);
                self.accepted_invites.insert(e.invite_id);
            }
            TenantEvent::SignInCodeRequested(e) => {
                let s = self.sign_ins.entry(e.user_id).or_default();
                let at = (e.expires_at - SIGN_IN_CODE_TTL).unix_timestamp();
                let hour_ago = at - 3600;
                s.requested.retain(|t| *t > hour_ago);
                s.requested.push(at);
                s.request_id = Some(e.request_id);
                s.expires_at = Some(e.expires_at);
                s.failures = 0;
                s.used = false;
            }
            TenantEvent::SignInCodeFailed(e) => {
                if let Some(s) = self.sign_ins.get_mut(&e.user_id)
                    && s.request_id == Some(e.request_id)
                {
                    s.failures = s.failures.saturating_add(1);
                }
            }
            TenantEvent::SignInCompleted(e) => {
                if let Some(s) = self.sign_ins.get_mut(&e.user_id)
                    && s.request_id == Some(e.request_id)
                {
                    s.used = true;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};
    use crate::aggregate::{Aggregate, DomainEvent};
    use crate::tenant::{MemberAdded, SignedUp, TenantCommand, TenantName};

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    fn token(n: u128) -> IssuedToken {
        IssuedToken {
            token_id: Uuid::from_u128(1000 + n),
            token_sha256: format!("{n:064x}"),
            expires_at: test_now() + time::Duration::days(30),
        }
    }

    fn member(n: u128, role: TenantRole) -> [TenantEvent; 2] {
        [
            TenantEvent::MemberAdded(MemberAdded {
                user_id: user(n),
                email: email(&format!("m{n}@example.com")),
                name: PersonName::parse("M").unwrap(),
                role,
            }),
            TenantEvent::TokenIssued(TokenIssued {
                user_id: user(n),
                token: token(n),
                kind: TokenKind::MemberAdded,
                issuer: None,
                issued_at: None,
            }),
        ]
    }

    /// A tenant with an owner (1), an admin (2) and a viewer (3).
    fn team() -> Vec<TenantEvent> {
        let mut h = vec![TenantEvent::SignedUp(SignedUp {
            name: TenantName::parse("Acme").unwrap(),
            plan: crate::tenant::Plan::Free,
            at: test_now(),
        })];
        h.extend(member(1, TenantRole::Owner));
        h.extend(member(2, TenantRole::Admin));
        h.extend(member(3, TenantRole::Viewer));
        h
    }

    fn by(role: TenantRole, n: u128) -> By {
        By {
            role,
            user: Some(user(n)),
        }
    }

    fn remove(n: u128, who: By) -> TenantCommand {
        TenantCommand::RemoveMember {
            user_id: user(n),
            by: who,
            actor: "user:x".into(),
            reason: Some("left the company".into()),
        }
    }

    pub(crate) fn one_of_each() -> Vec<TenantEvent> {
        let id = Uuid::from_u128(9);
        vec![
            TenantEvent::MemberRemoved(MemberRemoved {
                user_id: user(3),
                email: email("m3@example.com"),
                role: TenantRole::Viewer,
                actor: "user:x".into(),
                reason: None,
            }),
            TenantEvent::MemberRoleChanged(MemberRoleChanged {
                user_id: user(3),
                from: TenantRole::Viewer,
                to: TenantRole::Analyst,
                actor: "user:x".into(),
                reason: Some("promotion".into()),
            }),
            TenantEvent::InviteCreated(InviteCreated {
                invite_id: id,
                email: email("new@example.com"),
                role: TenantRole::Viewer,
                name: Some(PersonName::parse("New").unwrap()),
                expires_at: test_now(),
                actor: "user:x".into(),
            }),
            TenantEvent::InviteUpdated(InviteUpdated {
                invite_id: id,
                from: TenantRole::Viewer,
                to: TenantRole::Admin,
                expires_at: test_now(),
                actor: "user:x".into(),
            }),
            TenantEvent::InviteAccepted(InviteAccepted {
                invite_id: id,
                user_id: user(5),
            }),
            TenantEvent::SignInCodeRequested(SignInCodeRequested {
                request_id: id,
                user_id: user(3),
                email: email("m3@example.com"),
                expires_at: test_now(),
            }),
            TenantEvent::SignInCodeFailed(SignInCodeFailed {
                request_id: id,
                user_id: user(3),
            }),
            TenantEvent::SignInCompleted(SignInCompleted {
                request_id: id,
                user_id: user(3),
            }),
            TenantEvent::MessageDelivered(MessageDelivered {
                message_id: id,
                kind: MessageKind::Invite,
                via: "file".into(),
                expires_at: Some(test_now()),
            }),
        ]
    }

    #[test]
    fn a_removed_member_loses_their_tokens_and_frees_their_seat() {
        let state = given::<Tenant>(team())
            .when(remove(3, by(TenantRole::Admin, 2)))
            .then([
                TenantEvent::MemberRemoved(MemberRemoved {
                    user_id: user(3),
                    email: email("m3@example.com"),
                    role: TenantRole::Viewer,
                    actor: "user:x".into(),
                    reason: Some("left the company".into()),
                }),
                TenantEvent::TokenRevoked(TokenRevoked {
                    token_id: token(3).token_id,
                    reason: Some("member_removed".into()),
                    actor: Some("user:x".into()),
                }),
            ]);
        assert_eq!(state.seats_taken(test_now()), 2);
        // Removed twice: not a member any more.
        assert_eq!(
            state.decide(&remove(3, by(TenantRole::Owner, 1)), test_now()),
            Err(TenantError::NotAMember)
        );
    }

    #[test]
    fn the_last_owner_is_neither_removed_nor_demoted() {
        given::<Tenant>(team())
            .when(remove(1, by(TenantRole::Owner, 1)))
            .then_err(TenantError::LastOwner);
        given::<Tenant>(team())
            .when(TenantCommand::ChangeRole {
                user_id: user(1),
                role: TenantRole::Admin,
                by: by(TenantRole::Owner, 1),
                actor: "user:1".into(),
                reason: None,
            })
            .then_err(TenantError::LastOwner);
        // With a second owner, the first may go.
        let mut h = team();
        h.push(TenantEvent::MemberRoleChanged(MemberRoleChanged {
            user_id: user(2),
            from: TenantRole::Admin,
            to: TenantRole::Owner,
            actor: "user:1".into(),
            reason: None,
        }));
        let mut s = Tenant::default();
        for e in &h {
            s.evolve(e);
        }
        assert!(
            s.decide(&remove(1, by(TenantRole::Owner, 2)), test_now())
                .is_ok()
        );
    }

    #[test]
    fn admins_cannot_touch_owners_and_only_owners_make_owners() {
        given::<Tenant>(team())
            .when(remove(1, by(TenantRole::Admin, 2)))
            .then_err(TenantError::AdminsCannotTouchOwners);
        given::<Tenant>(team())
            .when(TenantCommand::ChangeRole {
                user_id: user(3),
                role: TenantRole::Owner,
                by: by(TenantRole::Admin, 2),
                actor: "user:2".into(),
                reason: None,
            })
            .then_err(TenantError::OnlyOwnersAddOwners);
        given::<Tenant>(team())
            .when(TenantCommand::RevokeTokenBy {
                token_id: token(1).token_id,
                by: Some(by(TenantRole::Admin, 2)),
                actor: "user:2".into(),
                reason: None,
            })
            .then_err(TenantError::AdminsCannotTouchOwners);
        given::<Tenant>(team())
            .when(TenantCommand::IssueToken {
                user_id: user(1),
                token: token(7),
                kind: TokenKind::Reissue,
                issuer: "user:2".into(),
                by: Some(by(TenantRole::Admin, 2)),
                replaces: None,
            })
            .then_err(TenantError::AdminsCannotTouchOwners);
        // A viewer removes nobody but themselves, and revokes only their own tokens.
        given::<Tenant>(team())
            .when(remove(2, by(TenantRole::Viewer, 3)))
            .then_err(TenantError::NotAllowed(
                "only owners and admins manage other members",
            ));
        given::<Tenant>(team())
            .when(TenantCommand::RevokeTokenBy {
                token_id: token(2).token_id,
                by: Some(by(TenantRole::Viewer, 3)),
                actor: "user:3".into(),
                reason: None,
            })
            .then_err(TenantError::UnknownToken);
    }

    #[test]
    fn an_email_comes_back_after_its_member_left() {
        let mut s = Tenant::default();
        for e in team() {
            s.evolve(&e);
        }
        for e in s
            .decide(&remove(3, by(TenantRole::Viewer, 3)), test_now())
            .unwrap()
        {
            s.evolve(&e);
        }
        let again = crate::tenant::NewMember {
            user_id: user(30),
            email: email("M3@example.com"),
            name: PersonName::parse("Back").unwrap(),
            role: TenantRole::Viewer,
            token: token(30),
        };
        let events = s
            .decide(
                &TenantCommand::AddMember {
                    member: again,
                    by: TenantRole::Owner,
                    seats: Some(3),
                },
                test_now(),
            )
            .unwrap();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn rotation_revokes_the_old_token_and_issues_a_new_one() {
        let events = given::<Tenant>(team())
            .when(TenantCommand::IssueToken {
                user_id: user(3),
                token: token(8),
                kind: TokenKind::Rotation,
                issuer: "user:3".into(),
                by: None,
                replaces: Some(token(3).token_id),
            })
            .then([
                TenantEvent::TokenRevoked(TokenRevoked {
                    token_id: token(3).token_id,
                    reason: Some("rotated".into()),
                    actor: Some("user:3".into()),
                }),
                TenantEvent::TokenIssued(TokenIssued {
                    user_id: user(3),
                    token: token(8),
                    kind: TokenKind::Rotation,
                    issuer: Some("user:3".into()),
                    issued_at: Some(test_now()),
                }),
            ]);
        assert!(events.tokens[&token(3).token_id]);
    }

    fn invite(n: u128, mail: &str, role: TenantRole) -> NewInvite {
        NewInvite {
            invite_id: Uuid::from_u128(500 + n),
            email: email(mail),
            role,
            name: None,
        }
    }

    #[test]
    fn invites_report_one_outcome_each_and_take_seats() {
        let mut s = Tenant::default();
        for e in team() {
            s.evolve(&e);
        }
        let rows = [
            invite(1, "new@example.com", TenantRole::Viewer),
            invite(2, "m3@example.com", TenantRole::Viewer),
        ];
        let (outcomes, events) = s
            .plan_invites(
                &rows,
                TenantRole::Admin,
                "user:2",
                OnConflict::Skip,
                Some(4),
                test_now(),
            )
            .unwrap();
        assert_eq!(
            outcomes,
            [InviteOutcome::Created, InviteOutcome::SkippedExistingMember]
        );
        for e in &events {
            s.evolve(e);
        }
        assert_eq!(s.seats_taken(test_now()), 4);
        // The seat limit counts the pending invite.
        assert!(matches!(
            s.plan_invites(
                &[invite(3, "other@example.com", TenantRole::Viewer)],
                TenantRole::Admin,
                "user:2",
                OnConflict::Skip,
                Some(4),
                test_now()
            ),
            Err(TenantError::TooManyMembers { .. })
        ));
        // Another role for the pending invite: a conflict, or an update when asked.
        let other_role = [invite(4, "NEW@example.com", TenantRole::Analyst)];
        let (o, e) = s
            .plan_invites(
                &other_role,
                TenantRole::Admin,
                "u",
                OnConflict::Skip,
                Some(4),
                test_now(),
            )
            .unwrap();
        assert_eq!((o, e.len()), (vec![InviteOutcome::ConflictRole], 0));
        let (o, e) = s
            .plan_invites(
                &other_role,
                TenantRole::Admin,
                "u",
                OnConflict::UpdateRole,
                Some(4),
                test_now(),
            )
            .unwrap();
        assert_eq!((o, e.len()), (vec![InviteOutcome::UpdatedPendingInvite], 1));
        // Admins invite no owners.
        assert_eq!(
            s.plan_invites(
                &[invite(5, "boss@example.com", TenantRole::Owner)],
                TenantRole::Admin,
                "u",
                OnConflict::Skip,
                None,
                test_now()
            ),
            Err(TenantError::OnlyOwnersAddOwners)
        );
    }

    #[test]
    fn an_invite_is_accepted_once_within_seven_days() {
        let mut s = Tenant::default();
        for e in team() {
            s.evolve(&e);
        }
        let (_, events) = s
            .plan_invites(
                &[invite(1, "new@example.com", TenantRole::Analyst)],
                TenantRole::Owner,
                "u",
                OnConflict::Skip,
                None,
                test_now(),
            )
            .unwrap();
        for e in &events {
            s.evolve(e);
        }
        let id = Uuid::from_u128(501);
        let name = PersonName::parse("New").unwrap();
        let late = test_now() + INVITE_TTL;
        assert_eq!(
            s.decide_accept(id, user(9), &name, &token(9), late),
            Err(TenantError::InviteExpired)
        );
        let accepted = s
            .decide_accept(id, user(9), &name, &token(9), test_now())
            .unwrap();
        assert_eq!(accepted.len(), 3);
        for e in &accepted {
            s.evolve(e);
        }
        assert_eq!(s.members[&user(9)].role, TenantRole::Analyst);
        assert_eq!(
            s.decide_accept(id, user(10), &name, &token(10), test_now()),
            Err(TenantError::InviteUsed)
        );
        assert_eq!(
            s.decide_accept(Uuid::nil(), user(10), &name, &token(10), test_now()),
            Err(TenantError::UnknownInvite)
        );
    }

    #[test]
    fn a_sign_in_code_is_single_use_and_survives_few_wrong_guesses() {
        let mut s = Tenant::default();
        for e in team() {
            s.evolve(&e);
        }
        let req = Uuid::from_u128(77);
        for e in s.decide_sign_in_request(user(3), req, test_now()).unwrap() {
            s.evolve(&e);
        }
        for _ in 0..SIGN_IN_MAX_FAILURES {
            let e = s
                .decide_sign_in_attempt(user(3), req, false, &token(9), test_now())
                .unwrap();
            assert_eq!(e[0].event_type(), "sign_in.code_failed");
            for e in &e {
                s.evolve(e);
            }
        }
        assert_eq!(
            s.decide_sign_in_attempt(user(3), req, true, &token(9), test_now()),
            Err(TenantError::SignInRefused)
        );
        // A new request, a right code, once; an expired code never.
        let req2 = Uuid::from_u128(78);
        for e in s.decide_sign_in_request(user(3), req2, test_now()).unwrap() {
            s.evolve(&e);
        }
        assert_eq!(
            s.decide_sign_in_attempt(
                user(3),
                req2,
                true,
                &token(9),
                test_now() + SIGN_IN_CODE_TTL
            ),
            Err(TenantError::SignInRefused)
        );
        let ok = s
            .decide_sign_in_attempt(user(3), req2, true, &token(9), test_now())
            .unwrap();
        for e in &ok {
            s.evolve(e);
        }
        assert_eq!(
            s.decide_sign_in_attempt(user(3), req2, true, &token(10), test_now()),
            Err(TenantError::SignInRefused)
        );
        // Requests per hour are bounded.
        for n in 0..SIGN_IN_REQUESTS_PER_HOUR as u128 {
            if let Ok(events) =
                s.decide_sign_in_request(user(3), Uuid::from_u128(90 + n), test_now())
            {
                for e in &events {
                    s.evolve(e);
                }
            }
        }
        assert_eq!(
            s.decide_sign_in_request(user(3), Uuid::from_u128(99), test_now()),
            Err(TenantError::SignInRefused)
        );
    }

    #[test]
    fn version_1_token_events_read_as_legacy() {
        let e = TenantEvent::from_stored(
            "token.issued",
            1,
            br#"{"user_id":"00000000-0000-0000-0000-000000000007","token_id":"00000000-0000-0000-0000-000000000008","token_sha256":"ab","expires_at":"2026-03-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(
            matches!(e, TenantEvent::TokenIssued(t) if t.kind == TokenKind::Legacy && t.issuer.is_none())
        );
        let r = TenantEvent::from_stored(
            "token.revoked",
            1,
            br#"{"token_id":"00000000-0000-0000-0000-000000000008"}"#,
        )
        .unwrap();
        assert!(matches!(r, TenantEvent::TokenRevoked(t) if t.reason.is_none()));
    }
}
