//! Who is who: tokens (by their SHA-256), members and their roles, operators, and each tenant's
//! name, plan and flag overrides.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::platform::{self, PlatformEvent};
use domain::tenant::{Plan, TenantEvent};
use domain::{DomainEvent, Flag, PlatformRole, TenantId, TenantRole, UserId};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use store::Envelope;
use time::OffsetDateTime;
use uuid::Uuid;

/// 2: removed members are gone, roles follow `member.role_changed`.
const LAYOUT: u16 = 2;

/// A token as authentication needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    pub token_id: Uuid,
    /// `None` for platform operators.
    pub tenant: Option<TenantId>,
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: TenantRole,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantView {
    pub tenant_id: TenantId,
    pub name: String,
    pub plan: Plan,
    pub signed_up_at: OffsetDateTime,
    pub flags: BTreeMap<Flag, bool>,
    pub members: usize,
    /// A downgrade waiting for its period.
    pub pending: Option<domain::tenant::PlanChangeScheduled>,
}

impl TenantView {
    /// The plan in force at `now`.
    pub fn plan_at(&self, now: OffsetDateTime) -> Plan {
        match &self.pending {
            Some(p) if now >= p.effective_at => p.to,
            _ => self.plan,
        }
    }
}

/// A message the outbox owes (ADR 030): an invite or a sign-in code not yet delivered. The
/// secret it carries is never in the log; the outbox derives it from the message's id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxMessage {
    pub tenant: TenantId,
    pub message_id: Uuid,
    pub kind: domain::tenant::MessageKind,
    pub email: String,
    /// The invite's role (invites only).
    pub role: Option<TenantRole>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Member {
        tenant: TenantId,
        user_id: UserId,
        role: TenantRole,
        token_id: Uuid,
    },
    Operator {
        operator_id: UserId,
        role: PlatformRole,
        token_id: Uuid,
    },
}

#[derive(Debug, Default)]
struct State {
    tokens: HashMap<String, TokenEntry>,
    token_hashes: HashMap<Uuid, String>,
    members: HashMap<(TenantId, UserId), MemberView>,
    operators: HashMap<UserId, PlatformRole>,
    tenants: HashMap<TenantId, TenantView>,
    /// Messages owed, by id; and each invite's email, for an invite sent again.
    outbox: BTreeMap<Uuid, OutboxMessage>,
    invite_emails: HashMap<Uuid, String>,
}

#[derive(Debug, Default)]
pub struct Identity {
    state: RwLock<State>,
}

/// Why a token does not authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Unknown,
    Expired,
    Revoked,
}

impl Identity {
    /// Resolve a token's SHA-256 (hex) at `now`.
    pub fn authenticate(
        &self,
        sha256_hex: &str,
        now: OffsetDateTime,
    ) -> Result<Principal, TokenProblem> {
        let state = self.state.read().expect("identity lock");
        let token = state.tokens.get(sha256_hex).ok_or(TokenProblem::Unknown)?;
        if token.revoked {
            return Err(TokenProblem::Revoked);
        }
        if token.expires_at <= now {
            return Err(TokenProblem::Expired);
        }
        match token.tenant {
            Some(tenant) => {
                let member = state
                    .members
                    .get(&(tenant, token.user_id))
                    .ok_or(TokenProblem::Unknown)?;
                Ok(Principal::Member {
                    tenant,
                    user_id: token.user_id,
                    role: member.role,
                    token_id: token.token_id,
                })
            }
            None => Ok(Principal::Operator {
                operator_id: token.user_id,
                role: *state
                    .operators
                    .get(&token.user_id)
                    .ok_or(TokenProblem::Unknown)?,
                token_id: token.token_id,
            }),
        }
    }

    pub fn member(&self, tenant: TenantId, user: UserId) -> Option<MemberView> {
        let state = self.state.read().expect("identity lock");
        state.members.get(&(tenant, user)).cloned()
    }

    /// A tenant's member by email, whatever its case (emails are stored lower-cased).
    pub fn member_by_email(&self, tenant: TenantId, email: &str) -> Option<MemberView> {
        let email = email.trim().to_lowercase();
        let state = self.state.read().expect("identity lock");
        state
            .members
            .iter()
            .find(|((t, _), m)| *t == tenant && m.email == email)
            .map(|(_, m)| m.clone())
    }

    /// A tenant's members, by email.
    pub fn members_of(&self, tenant: TenantId) -> Vec<MemberView> {
        let state = self.state.read().expect("identity lock");
        let mut out: Vec<MemberView> = state
            .members
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|(_, m)| m.clone())
            .collect();
        out.sort_by(|a, b| a.email.cmp(&b.email));
        out
    }

    /// The messages the outbox owes, oldest id first (ids are time-ordered UUIDv7s).
    pub fn outbox(&self, limit: usize) -> Vec<OutboxMessage> {
        let state = self.state.read().expect("identity lock");
        state.outbox.values().take(limit).cloned().collect()
    }

    /// Who a token id belongs to (its tenant, `None` for operators, and its user).
    pub fn token_by_id(&self, token_id: Uuid) -> Option<TokenEntry> {
        let state = self.state.read().expect("identity lock");
        let hash = state.token_hashes.get(&token_id)?;
        state.tokens.get(hash).cloned()
    }

    pub fn tenant(&self, tenant: TenantId) -> Option<TenantView> {
        let state = self.state.read().expect("identity lock");
        state.tenants.get(&tenant).cloned()
    }

    /// Every tenant's id, sorted (billing runs over all of them).
    pub fn tenant_ids(&self) -> Vec<TenantId> {
        let state = self.state.read().expect("identity lock");
        let mut ids: Vec<TenantId> = state.tenants.keys().copied().collect();
        ids.sort();
        ids
    }

    fn apply_tenant(state: &mut State, tenant: TenantId, event: TenantEvent, at: OffsetDateTime) {
        match event {
            TenantEvent::SignedUp(e) => {
                state.tenants.insert(
                    tenant,
                    TenantView {
                        tenant_id: tenant,
                        name: e.name.to_string(),
                        plan: e.plan,
                        signed_up_at: at,
                        flags: BTreeMap::new(),
                        members: 0,
                        pending: None,
                    },
                );
            }
            TenantEvent::Renamed(e) => {
                if let Some(t) = state.tenants.get_mut(&tenant) {
                    t.name = e.to.to_string();
                }
            }
            TenantEvent::PlanChanged(e) => {
                if let Some(t) = state.tenants.get_mut(&tenant) {
                    t.plan = e.to;
                    t.pending = None;
                }
            }
            TenantEvent::PlanChangeScheduled(e) => {
                if let Some(t) = state.tenants.get_mut(&tenant) {
                    t.plan = e.from;
                    t.pending = Some(e);
                }
            }
            TenantEvent::MemberAdded(e) => {
                if let Some(t) = state.tenants.get_mut(&tenant) {
                    t.members += 1;
                }
                state.members.insert(
                    (tenant, e.user_id),
                    MemberView {
                        user_id: e.user_id,
                        email: e.email.to_string(),
                        name: e.name.as_str().to_owned(),
                        role: e.role,
                    },
                );
            }
            TenantEvent::TokenIssued(e) => {
                state
                    .token_hashes
                    .insert(e.token.token_id, e.token.token_sha256.clone());
                state.tokens.insert(
                    e.token.token_sha256,
                    TokenEntry {
                        token_id: e.token.token_id,
                        tenant: Some(tenant),
                        user_id: e.user_id,
                        expires_at: e.token.expires_at,
                        revoked: false,
                    },
                );
            }
            TenantEvent::TokenRevoked(e) => Self::revoke(state, e.token_id),
            TenantEvent::FlagSet(e) => {
                if let Some(t) = state.tenants.get_mut(&tenant) {
                    t.flags.insert(e.flag, e.enabled);
                }
            }
            TenantEvent::MemberRemoved(e) => {
                // Their tokens stop at once: without a member, a token authenticates nobody
                // (and each is revoked by its own event in the same append).
                if state.members.remove(&(tenant, e.user_id)).is_some()
                    && let Some(t) = state.tenants.get_mut(&tenant)
                {
                    t.members = t.members.saturating_sub(1);
                }
                for t in state.tokens.values_mut() {
                    if t.tenant == Some(tenant) && t.user_id == e.user_id {
                        t.revoked = true;
                    }
                }
            }
            TenantEvent::MemberRoleChanged(e) => {
                if let Some(m) = state.members.get_mut(&(tenant, e.user_id)) {
                    m.role = e.to;
                }
            }
            TenantEvent::InviteCreated(e) => {
                state.invite_emails.insert(e.invite_id, e.email.to_string());
                state.outbox.insert(
                    e.invite_id,
                    OutboxMessage {
                        tenant,
                        message_id: e.invite_id,
                        kind: domain::tenant::MessageKind::Invite,
                        email: e.email.to_string(),
                        role: Some(e.role),
                        expires_at: e.expires_at,
                    },
                );
            }
            TenantEvent::InviteUpdated(e) => {
                if let Some(email) = state.invite_emails.get(&e.invite_id).cloned() {
                    state.outbox.insert(
                        e.invite_id,
                        OutboxMessage {
                            tenant,
                            message_id: e.invite_id,
                            kind: domain::tenant::MessageKind::Invite,
                            email,
                            role: Some(e.to),
                            expires_at: e.expires_at,
                        },
                    );
                }
            }
            TenantEvent::InviteAccepted(e) => {
                state.outbox.remove(&e.invite_id);
                state.invite_emails.remove(&e.invite_id);
            }
            TenantEvent::SignInCodeRequested(e) => {
                state.outbox.insert(
                    e.request_id,
                    OutboxMessage {
                        tenant,
                        message_id: e.request_id,
                        kind: domain::tenant::MessageKind::SignInCode,
                        email: e.email.to_string(),
                        role: None,
                        expires_at: e.expires_at,
                    },
                );
            }
            TenantEvent::SignInCompleted(e) => {
                state.outbox.remove(&e.request_id);
            }
            TenantEvent::MessageDelivered(e) => {
                // Only the version delivered: one sent again since is still owed.
                let same = |m: &OutboxMessage| e.expires_at.is_none_or(|t| t == m.expires_at);
                if state.outbox.get(&e.message_id).is_some_and(same) {
                    state.outbox.remove(&e.message_id);
                }
            }
            TenantEvent::SignInCodeFailed(_) => {}
        }
    }

    fn revoke(state: &mut State, token_id: Uuid) {
        if let Some(hash) = state.token_hashes.get(&token_id)
            && let Some(t) = state.tokens.get_mut(hash)
        {
            t.revoked = true;
        }
    }
}

impl Identity {
    /// Apply one event; a platform or tenant event that does not decode stops the batch (a
    /// revocation may be behind it: authentication must not go on as if it were not there).
    fn apply_one(state: &mut State, e: &Envelope) -> Result<(), Unreadable> {
        if e.tenant_id == TenantId::PLATFORM && e.stream_id == platform::STREAM {
            match PlatformEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                .map_err(|err| Unreadable::at(e, err))?
            {
                PlatformEvent::OperatorTokenIssued(t) => {
                    state.operators.insert(t.operator_id, t.role);
                    state
                        .token_hashes
                        .insert(t.token.token_id, t.token.token_sha256.clone());
                    state.tokens.insert(
                        t.token.token_sha256,
                        TokenEntry {
                            token_id: t.token.token_id,
                            tenant: None,
                            user_id: t.operator_id,
                            expires_at: t.token.expires_at,
                            revoked: false,
                        },
                    );
                }
                PlatformEvent::OperatorTokenRevoked(t) => Self::revoke(state, t.token_id),
            }
        } else if e.stream_id.starts_with("tenant-") {
            let event =
                TenantEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            Self::apply_tenant(state, e.tenant_id, event, e.recorded_at);
        }
        Ok(())
    }
}

impl Projection for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut state = self.state.write().expect("identity lock");
        for e in events {
            Self::apply_one(&mut state, e)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let s = self.state.read().expect("identity lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(s.tokens.len());
        for (hash, t) in &s.tokens {
            w.str(hash);
            w.uuid(&t.token_id);
            match t.tenant {
                Some(tenant) => {
                    w.bool(true);
                    w.uuid(tenant.as_uuid());
                }
                None => w.bool(false),
            }
            w.uuid(t.user_id.as_uuid());
            w.time(t.expires_at);
            w.bool(t.revoked);
        }
        w.usize(s.members.len());
        for ((tenant, user), m) in &s.members {
            w.uuid(tenant.as_uuid());
            w.uuid(user.as_uuid());
            w.str(&m.email);
            w.str(&m.name);
            w.str(m.role.as_str());
        }
        w.usize(s.operators.len());
        for (operator, role) in &s.operators {
            w.uuid(operator.as_uuid());
            w.str(role.as_str());
        }
        w.usize(s.tenants.len());
        for t in s.tenants.values() {
            w.uuid(t.tenant_id.as_uuid());
            w.str(&t.name);
            w.json(&t.plan);
            w.time(t.signed_up_at);
            w.usize(t.flags.len());
            for (flag, on) in &t.flags {
                w.str(flag.as_str());
                w.bool(*on);
            }
            w.usize(t.members);
            w.json(&t.pending);
        }
        w.json(&s.outbox.values().collect::<Vec<_>>());
        w.json(&s.invite_emails);
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        fn parse<T: std::str::FromStr<Err = String>>(s: String) -> Result<T, CodecError> {
            s.parse().map_err(CodecError::Malformed)
        }
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let mut s = State::default();
        for _ in 0..r.len()? {
            let hash = r.str()?;
            let token_id = r.uuid()?;
            let tenant = if r.bool()? {
                Some(TenantId::from_uuid(r.uuid()?))
            } else {
                None
            };
            let entry = TokenEntry {
                token_id,
                tenant,
                user_id: UserId::from_uuid(r.uuid()?),
                expires_at: r.time()?,
                revoked: r.bool()?,
            };
            s.token_hashes.insert(token_id, hash.clone());
            s.tokens.insert(hash, entry);
        }
        for _ in 0..r.len()? {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let user_id = UserId::from_uuid(r.uuid()?);
            let view = MemberView {
                user_id,
                email: r.str()?,
                name: r.str()?,
                role: parse(r.str()?)?,
            };
            s.members.insert((tenant, user_id), view);
        }
        for _ in 0..r.len()? {
            let operator = UserId::from_uuid(r.uuid()?);
            s.operators.insert(operator, parse(r.str()?)?);
        }
        for _ in 0..r.len()? {
            let tenant_id = TenantId::from_uuid(r.uuid()?);
            let name = r.str()?;
            let plan = r.json()?;
            let signed_up_at = r.time()?;
            let mut flags = BTreeMap::new();
            for _ in 0..r.len()? {
                let flag: Flag = parse(r.str()?)?;
                flags.insert(flag, r.bool()?);
            }
            let view = TenantView {
                tenant_id,
                name,
                plan,
                signed_up_at,
                flags,
                // A count of members, not a length of bytes to follow.
                members: usize::try_from(r.u64()?).map_err(|_| {
                    crate::codec::CodecError::Malformed("member count out of range".into())
                })?,
                pending: r.json()?,
            };
            s.tenants.insert(tenant_id, view);
        }
        let outbox: Vec<OutboxMessage> = r.json()?;
        s.outbox = outbox.into_iter().map(|m| (m.message_id, m)).collect();
        s.invite_emails = r.json()?;
        r.end()?;
        *self.state.write().expect("identity lock") = s;
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Identity::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Identity>() {
            let taken = std::mem::take(&mut *o.state.write().expect("identity lock"));
            *self.state.write().expect("identity lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::tenant::{MemberAdded, SignedUp, TokenIssued, TokenRevoked};
    use domain::{Email, PersonName, identity::IssuedToken};
    use store::{Envelope, RawJson};
    use time::macros::datetime;

    fn envelope(n: u64, tenant: TenantId, e: TenantEvent) -> Envelope {
        Envelope {
            global_position: n,
            tenant_id: tenant,
            stream_id: domain::tenant::stream_id(tenant),
            stream_version: n,
            event_id: Uuid::from_u128(n as u128),
            event_type: e.event_type().to_owned(),
            schema_version: e.schema_version(),
            occurred_at: datetime!(2026-02-16 09:30 UTC),
            recorded_at: datetime!(2026-02-16 09:30 UTC),
            actor: "system".into(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            trace_id: None,
            payload: RawJson::from_value(&e.to_payload()),
        }
    }

    #[test]
    fn a_tenant_with_many_members_and_nothing_after_it_round_trips() {
        let identity = Identity::default();
        let tenant = TenantId::from_uuid(Uuid::from_u128(1));
        let mut events = vec![TenantEvent::SignedUp(SignedUp {
            name: domain::tenant::TenantName::parse("Acme").unwrap(),
            plan: Plan::Free,
            at: datetime!(2026-02-16 09:30 UTC),
        })];
        for i in 0..6u128 {
            events.push(TenantEvent::MemberAdded(MemberAdded {
                user_id: UserId::from_uuid(Uuid::from_u128(100 + i)),
                email: Email::parse(&format!("m{i}@example.com")).unwrap(),
                name: PersonName::parse("M").unwrap(),
                role: TenantRole::Admin,
            }));
        }
        for (i, e) in events.into_iter().enumerate() {
            identity
                .apply(&[envelope(i as u64 + 1, tenant, e)])
                .unwrap();
        }
        let bytes = identity.encode();
        let fresh = Identity::default();
        assert_eq!(fresh.decode(&bytes), Ok(()));
    }

    #[test]
    fn tokens_authenticate_until_they_expire_or_are_revoked() {
        let identity = Identity::default();
        let tenant = TenantId::from_uuid(Uuid::from_u128(1));
        let user = UserId::from_uuid(Uuid::from_u128(2));
        let expires = datetime!(2026-03-01 00:00 UTC);
        let events = [
            TenantEvent::SignedUp(SignedUp {
                name: domain::tenant::TenantName::parse("Acme").unwrap(),
                plan: Plan::Free,
                at: datetime!(2026-02-16 09:30 UTC),
            }),
            TenantEvent::MemberAdded(MemberAdded {
                user_id: user,
                email: Email::parse("a@example.com").unwrap(),
                name: PersonName::parse("A").unwrap(),
                role: TenantRole::Admin,
            }),
            TenantEvent::TokenIssued(TokenIssued {
                user_id: user,
                token: IssuedToken {
                    token_id: Uuid::from_u128(3),
                    token_sha256: "ab".repeat(32),
                    expires_at: expires,
                },
                kind: domain::identity::TokenKind::SignUp,
                issuer: None,
                issued_at: None,
            }),
        ];
        for (i, e) in events.into_iter().enumerate() {
            identity
                .apply(&[envelope(i as u64 + 1, tenant, e)])
                .unwrap();
        }
        let hash = "ab".repeat(32);
        let before = datetime!(2026-02-20 00:00 UTC);
        assert!(matches!(
            identity.authenticate(&hash, before),
            Ok(Principal::Member {
                role: TenantRole::Admin,
                ..
            })
        ));
        assert_eq!(
            identity.authenticate(&hash, expires),
            Err(TokenProblem::Expired)
        );
        assert_eq!(
            identity.authenticate(&"cd".repeat(32), before),
            Err(TokenProblem::Unknown)
        );
        identity
            .apply(&[envelope(
                4,
                tenant,
                TenantEvent::TokenRevoked(TokenRevoked {
                    token_id: Uuid::from_u128(3),
                    reason: None,
                    actor: None,
                }),
            )])
            .unwrap();
        assert_eq!(
            identity.authenticate(&hash, before),
            Err(TokenProblem::Revoked)
        );
        assert_eq!(identity.tenant(tenant).unwrap().members, 1);
    }

    #[test]
    fn a_removed_member_stops_authenticating_and_an_email_is_found_whatever_its_case() {
        use domain::tenant::{MemberRemoved, MemberRoleChanged};
        let identity = Identity::default();
        let tenant = TenantId::from_uuid(Uuid::from_u128(1));
        let user = UserId::from_uuid(Uuid::from_u128(2));
        let events = [
            TenantEvent::SignedUp(SignedUp {
                name: domain::tenant::TenantName::parse("Acme").unwrap(),
                plan: Plan::Free,
                at: datetime!(2026-02-16 09:30 UTC),
            }),
            TenantEvent::MemberAdded(MemberAdded {
                user_id: user,
                email: Email::parse("ana@example.com").unwrap(),
                name: PersonName::parse("A").unwrap(),
                role: TenantRole::Viewer,
            }),
            TenantEvent::TokenIssued(TokenIssued {
                user_id: user,
                token: IssuedToken {
                    token_id: Uuid::from_u128(3),
                    token_sha256: "ab".repeat(32),
                    expires_at: datetime!(2026-03-01 00:00 UTC),
                },
                kind: domain::identity::TokenKind::SignIn,
                issuer: None,
                issued_at: None,
            }),
            TenantEvent::MemberRoleChanged(MemberRoleChanged {
                user_id: user,
                from: TenantRole::Viewer,
                to: TenantRole::Analyst,
                actor: "user:x".into(),
                reason: None,
            }),
        ];
        for (i, e) in events.into_iter().enumerate() {
            identity
                .apply(&[envelope(i as u64 + 1, tenant, e)])
                .unwrap();
        }
        let now = datetime!(2026-02-20 00:00 UTC);
        assert!(matches!(
            identity.authenticate(&"ab".repeat(32), now),
            Ok(Principal::Member {
                role: TenantRole::Analyst,
                ..
            })
        ));
        assert_eq!(
            identity
                .member_by_email(tenant, "ANA@Example.com")
                .map(|m| m.user_id),
            Some(user)
        );
        identity
            .apply(&[envelope(
                5,
                tenant,
                TenantEvent::MemberRemoved(MemberRemoved {
                    user_id: user,
                    email: Email::parse("ana@example.com").unwrap(),
                    role: TenantRole::Analyst,
                    actor: "user:x".into(),
                    reason: None,
                }),
            )])
            .unwrap();
        assert!(identity.authenticate(&"ab".repeat(32), now).is_err());
        assert_eq!(identity.member_by_email(tenant, "ana@example.com"), None);
        assert_eq!(identity.tenant(tenant).unwrap().members, 0);
        // And the persisted state says so too.
        let fresh = Identity::default();
        fresh.decode(&identity.encode()).unwrap();
        assert!(fresh.authenticate(&"ab".repeat(32), now).is_err());
    }
}
