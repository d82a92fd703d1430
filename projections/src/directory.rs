//! The directory read model (ADR 031): each tenant's SCIM users and groups (for SCIM's lists,
//! filters and gets) and the groups each user last came with (an SSO login or SCIM), which the
//! mapping preview evaluates.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::Aggregate;
use domain::scim::{ScimEvent, ScimGroup, ScimUser, user_name_key};
use domain::sso::{ConfigEvent, LoginEvent, SsoConfig};
use domain::{DomainEvent, TenantId};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use store::Envelope;
use time::OffsetDateTime;
use uuid::Uuid;

const LAYOUT: u16 = 1;

/// A SCIM resource with its meta: when it was made and last changed, and a version (its ETag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub value: T,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub modified: OffsetDateTime,
    pub version: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TenantDirectory {
    users: HashMap<Uuid, Versioned<ScimUser>>,
    /// Lower-cased userName → id, in order (lists page through it).
    by_name: BTreeMap<String, Uuid>,
    groups: HashMap<Uuid, Versioned<ScimGroup>>,
    group_by_name: BTreeMap<String, Uuid>,
    /// User → the groups they are in.
    memberships: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Email → the groups of their last SSO login.
    sso_groups: HashMap<String, Vec<String>>,
    /// The SHA-256 of the tenant's SCIM token.
    scim_token: Option<String>,
    /// The SSO settings and mapping in force (a login reads them here, without a store read).
    #[serde(default)]
    sso: SsoConfig,
}

impl TenantDirectory {
    fn set_groups(&mut self, group: Uuid, old: &BTreeSet<Uuid>, new: &BTreeSet<Uuid>) {
        for u in old.difference(new) {
            if let Some(m) = self.memberships.get_mut(u) {
                m.remove(&group);
            }
        }
        for u in new.difference(old) {
            self.memberships.entry(*u).or_default().insert(group);
        }
    }

    fn group_names_of(&self, user: Uuid) -> Vec<String> {
        self.memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|g| self.groups.get(g))
            .map(|g| g.value.display_name.clone())
            .collect()
    }

    fn apply(&mut self, event: ScimEvent, at: OffsetDateTime) {
        match event {
            ScimEvent::UserProvisioned(e) | ScimEvent::UserUpdated(e) => {
                let id = e.user.scim_id;
                let prev = self.users.remove(&id);
                if let Some(p) = &prev {
                    self.by_name.remove(&user_name_key(&p.value.user_name, id));
                }
                self.by_name
                    .insert(user_name_key(&e.user.user_name, id), id);
                let v = versioned(e.user, prev.as_ref(), at);
                self.users.insert(id, v);
            }
            ScimEvent::UserDeleted(e) => {
                if let Some(p) = self.users.remove(&e.scim_id) {
                    self.by_name
                        .remove(&user_name_key(&p.value.user_name, e.scim_id));
                }
                for g in self.memberships.remove(&e.scim_id).into_iter().flatten() {
                    if let Some(group) = self.groups.get_mut(&g) {
                        group.value.members.remove(&e.scim_id);
                    }
                }
            }
            ScimEvent::GroupProvisioned(e) | ScimEvent::GroupUpdated(e) => {
                let id = e.group.group_id;
                let prev = self.groups.remove(&id);
                if let Some(p) = &prev {
                    self.group_by_name
                        .remove(&p.value.display_name.to_lowercase());
                }
                let old = prev
                    .as_ref()
                    .map(|p| p.value.members.clone())
                    .unwrap_or_default();
                self.set_groups(id, &old, &e.group.members);
                self.group_by_name
                    .insert(e.group.display_name.to_lowercase(), id);
                let v = versioned(e.group, prev.as_ref(), at);
                self.groups.insert(id, v);
            }
            ScimEvent::GroupDeleted(e) => {
                if let Some(p) = self.groups.remove(&e.group_id) {
                    self.group_by_name
                        .remove(&p.value.display_name.to_lowercase());
                    self.set_groups(e.group_id, &p.value.members, &BTreeSet::new());
                }
            }
        }
    }
}

fn versioned<T>(value: T, prev: Option<&Versioned<T>>, at: OffsetDateTime) -> Versioned<T> {
    Versioned {
        value,
        created: prev.map_or(at, |p| p.created),
        modified: at,
        version: prev.map_or(1, |p| p.version + 1),
    }
}

/// A SCIM user and the groups they are in (id, display name).
pub type UserWithGroups = (Versioned<ScimUser>, Vec<(Uuid, String)>);

/// How a SCIM list is narrowed: the filters this service supports (`eq` on one attribute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    /// `userName eq "…"` / `displayName eq "…"` (case-insensitive, as RFC 7643 says of both).
    Name(String),
    /// `externalId eq "…"` (case-sensitive).
    ExternalId(String),
    /// `id eq "…"`.
    Id(Uuid),
}

/// One page of a SCIM list.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub total: usize,
    pub items: Vec<T>,
}

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, TenantDirectory>,
    /// SCIM token SHA-256 → its tenant (derived from the tenants' current tokens).
    scim_tokens: HashMap<String, TenantId>,
}

#[derive(Debug, Default)]
pub struct Directory {
    state: RwLock<State>,
}

impl Directory {
    /// A SCIM user and the names of the groups they are in.
    pub fn user(&self, tenant: TenantId, id: Uuid) -> Option<UserWithGroups> {
        let s = self.state.read().expect("directory lock");
        let t = s.tenants.get(&tenant)?;
        let user = t.users.get(&id)?.clone();
        Some((user, Self::groups_with_ids(t, id)))
    }

    fn groups_with_ids(t: &TenantDirectory, user: Uuid) -> Vec<(Uuid, String)> {
        t.memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|g| t.groups.get(g).map(|v| (*g, v.value.display_name.clone())))
            .collect()
    }

    /// The SCIM user with this userName (any case).
    pub fn user_by_name(&self, tenant: TenantId, name: &str) -> Option<Versioned<ScimUser>> {
        let s = self.state.read().expect("directory lock");
        let t = s.tenants.get(&tenant)?;
        t.by_name
            .get(&name.to_lowercase())
            .and_then(|id| t.users.get(id))
            .cloned()
    }

    /// Users by userName order: `start` is 1-based (SCIM's `startIndex`).
    pub fn users(
        &self,
        tenant: TenantId,
        filter: &Filter,
        start: usize,
        count: usize,
    ) -> Page<UserWithGroups> {
        let s = self.state.read().expect("directory lock");
        let Some(t) = s.tenants.get(&tenant) else {
            return Page {
                total: 0,
                items: vec![],
            };
        };
        let with_groups =
            |u: &Versioned<ScimUser>| (u.clone(), Self::groups_with_ids(t, u.value.scim_id));
        let one = |u: Option<&Versioned<ScimUser>>| {
            let items: Vec<_> = u.into_iter().collect();
            Page {
                total: items.len(),
                items: items
                    .into_iter()
                    .skip(start.saturating_sub(1))
                    .take(count)
                    .map(with_groups)
                    .collect(),
            }
        };
        match filter {
            Filter::Name(n) => one(t
                .by_name
                .get(&n.to_lowercase())
                .and_then(|id| t.users.get(id))),
            Filter::Id(id) => one(t.users.get(id)),
            Filter::ExternalId(x) => {
                let all: Vec<_> = t
                    .by_name
                    .values()
                    .filter_map(|id| t.users.get(id))
                    .filter(|u| u.value.external_id.as_deref() == Some(x.as_str()))
                    .collect();
                Page {
                    total: all.len(),
                    items: all
                        .into_iter()
                        .skip(start.saturating_sub(1))
                        .take(count)
                        .map(with_groups)
                        .collect(),
                }
            }
            Filter::All => Page {
                total: t.by_name.len(),
                items: t
                    .by_name
                    .values()
                    .skip(start.saturating_sub(1))
                    .take(count)
                    .filter_map(|id| t.users.get(id))
                    .map(with_groups)
                    .collect(),
            },
        }
    }

    pub fn group(&self, tenant: TenantId, id: Uuid) -> Option<Versioned<ScimGroup>> {
        let s = self.state.read().expect("directory lock");
        s.tenants.get(&tenant)?.groups.get(&id).cloned()
    }

    /// Groups by displayName order.
    pub fn groups(
        &self,
        tenant: TenantId,
        filter: &Filter,
        start: usize,
        count: usize,
    ) -> Page<Versioned<ScimGroup>> {
        let s = self.state.read().expect("directory lock");
        let Some(t) = s.tenants.get(&tenant) else {
            return Page {
                total: 0,
                items: vec![],
            };
        };
        let all: Vec<&Versioned<ScimGroup>> = match filter {
            Filter::Name(n) => t
                .group_by_name
                .get(&n.to_lowercase())
                .and_then(|id| t.groups.get(id))
                .into_iter()
                .collect(),
            Filter::Id(id) => t.groups.get(id).into_iter().collect(),
            Filter::ExternalId(x) => t
                .group_by_name
                .values()
                .filter_map(|id| t.groups.get(id))
                .filter(|g| g.value.external_id.as_deref() == Some(x.as_str()))
                .collect(),
            Filter::All => t
                .group_by_name
                .values()
                .filter_map(|id| t.groups.get(id))
                .collect(),
        };
        Page {
            total: all.len(),
            items: all
                .into_iter()
                .skip(start.saturating_sub(1))
                .take(count)
                .cloned()
                .collect(),
        }
    }

    /// The names of the SCIM groups a user is in.
    pub fn group_names_of(&self, tenant: TenantId, user: Uuid) -> Vec<String> {
        let s = self.state.read().expect("directory lock");
        s.tenants
            .get(&tenant)
            .map(|t| t.group_names_of(user))
            .unwrap_or_default()
    }

    /// Every user whose groups are known, by email (lower-cased): SCIM users with their SCIM
    /// groups, and users who signed in by SSO with their last login's groups (SCIM wins when
    /// both know a user).
    pub fn known_groups(&self, tenant: TenantId) -> BTreeMap<String, Vec<String>> {
        let s = self.state.read().expect("directory lock");
        let Some(t) = s.tenants.get(&tenant) else {
            return BTreeMap::new();
        };
        let mut out: BTreeMap<String, Vec<String>> = t
            .sso_groups
            .iter()
            .map(|(e, g)| (e.clone(), g.clone()))
            .collect();
        // An erased name (ADR 037) is nobody's email any more.
        out.remove(domain::personal::ERASED);
        for u in t.users.values() {
            if u.value.user_name == domain::personal::ERASED {
                continue;
            }
            let groups = t.group_names_of(u.value.scim_id);
            if !groups.is_empty() || !out.contains_key(&u.value.user_name.to_lowercase()) {
                out.insert(u.value.user_name.to_lowercase(), groups);
            }
        }
        out
    }

    /// A tenant's SSO configuration as this instance has applied it (settings and mapping).
    pub fn sso(&self, tenant: TenantId) -> SsoConfig {
        let s = self.state.read().expect("directory lock");
        s.tenants
            .get(&tenant)
            .map(|t| t.sso.clone())
            .unwrap_or_default()
    }

    /// The tenant whose SCIM token has this SHA-256.
    pub fn scim_tenant(&self, sha256_hex: &str) -> Option<TenantId> {
        let s = self.state.read().expect("directory lock");
        s.scim_tokens.get(sha256_hex).copied()
    }

    fn apply_one(state: &mut State, e: &Envelope) -> Result<(), Unreadable> {
        if e.stream_id.starts_with("scim-") {
            let event =
                ScimEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            state
                .tenants
                .entry(e.tenant_id)
                .or_default()
                .apply(event, e.occurred_at);
        } else if e.stream_id.starts_with("sso-logins-") {
            let LoginEvent::Recorded(l) =
                LoginEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            state
                .tenants
                .entry(e.tenant_id)
                .or_default()
                .sso_groups
                .insert(l.email.to_lowercase(), l.groups);
        } else if e.stream_id.starts_with("sso-") {
            let event =
                ConfigEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?;
            let dir = state.tenants.entry(e.tenant_id).or_default();
            dir.sso.evolve(&event);
            if let ConfigEvent::ScimTokenSet(t) = event {
                if let Some(old) = dir.scim_token.replace(t.token_sha256.clone()) {
                    state.scim_tokens.remove(&old);
                }
                state.scim_tokens.insert(t.token_sha256, e.tenant_id);
            }
        }
        Ok(())
    }
}

impl Projection for Directory {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut state = self.state.write().expect("directory lock");
        for e in events {
            Self::apply_one(&mut state, e)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let s = self.state.read().expect("directory lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.usize(s.tenants.len());
        for (tenant, t) in s.tenants.iter() {
            w.uuid(tenant.as_uuid());
            w.json(t);
        }
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let mut s = State::default();
        for _ in 0..r.len()? {
            let tenant = TenantId::from_uuid(r.uuid()?);
            let t: TenantDirectory = r.json()?;
            if let Some(hash) = &t.scim_token {
                s.scim_tokens.insert(hash.clone(), tenant);
            }
            s.tenants.insert(tenant, t);
        }
        r.end()?;
        *self.state.write().expect("directory lock") = s;
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Directory::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Directory>() {
            let taken = std::mem::take(&mut *o.state.write().expect("directory lock"));
            *self.state.write().expect("directory lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::scim::{GroupChanged, UserChanged};
    use domain::sso::{LoginRecorded, ScimTokenSet};

    fn envelope(
        n: u64,
        tenant: TenantId,
        stream: String,
        event: (&str, serde_json::Value),
    ) -> Envelope {
        let now = time::macros::datetime!(2026-02-16 09:30 UTC);
        Envelope {
            global_position: n,
            tenant_id: tenant,
            stream_id: stream,
            stream_version: n,
            event_id: Uuid::from_u128(u128::from(n)),
            event_type: event.0.into(),
            schema_version: 1,
            occurred_at: now,
            recorded_at: now,
            actor: "scim".into(),
            correlation_id: Uuid::from_u128(u128::from(n)),
            causation_id: None,
            trace_id: None,
            payload: store::RawJson::from_value(&event.1),
        }
    }

    fn user(n: u128, name: &str) -> ScimUser {
        ScimUser {
            scim_id: Uuid::from_u128(n),
            user_name: name.into(),
            external_id: Some(format!("x{n}")),
            given_name: None,
            family_name: None,
            display_name: None,
            active: true,
            email: Some(name.into()),
            user_id: None,
        }
    }

    #[test]
    fn users_groups_logins_and_tokens_are_read_back_and_survive_a_restart() {
        let t = TenantId::from_uuid(Uuid::from_u128(9));
        let scim = domain::scim::stream_id(t);
        let ev = |e: ScimEvent| (e.event_type(), e.to_payload());
        let events = vec![
            envelope(
                1,
                t,
                scim.clone(),
                ev(ScimEvent::UserProvisioned(UserChanged {
                    user: user(1, "b@x.io"),
                    reason: "r".into(),
                })),
            ),
            envelope(
                2,
                t,
                scim.clone(),
                ev(ScimEvent::UserProvisioned(UserChanged {
                    user: user(2, "a@x.io"),
                    reason: "r".into(),
                })),
            ),
            envelope(
                3,
                t,
                scim.clone(),
                ev(ScimEvent::GroupProvisioned(GroupChanged {
                    group: ScimGroup {
                        group_id: Uuid::from_u128(50),
                        display_name: "Eng".into(),
                        external_id: None,
                        members: [Uuid::from_u128(1)].into(),
                    },
                    reason: "r".into(),
                })),
            ),
            envelope(4, t, domain::sso::logins_stream(t), {
                let l = LoginEvent::Recorded(LoginRecorded {
                    subject: "s".into(),
                    email: "c@x.io".into(),
                    groups: vec!["sales".into()],
                    role: domain::TenantRole::Viewer,
                    by_group: None,
                    replay_key: "k".into(),
                    replay_until: time::macros::datetime!(2026-02-16 10:00 UTC),
                    at: time::macros::datetime!(2026-02-16 09:30 UTC),
                    user_id: None,
                });
                (l.event_type(), l.to_payload())
            }),
            envelope(5, t, domain::sso::config_stream(t), {
                let c = ConfigEvent::ScimTokenSet(ScimTokenSet {
                    token_id: Uuid::nil(),
                    token_sha256: "ab".into(),
                    reason: "created".into(),
                });
                (c.event_type(), c.to_payload())
            }),
        ];
        let dir = Directory::default();
        dir.apply(&events).unwrap();
        let check = |d: &Directory| {
            let all = d.users(t, &Filter::All, 1, 10);
            let names: Vec<_> = all
                .items
                .iter()
                .map(|(u, _)| u.value.user_name.clone())
                .collect();
            assert_eq!(names, ["a@x.io", "b@x.io"], "in userName order");
            assert_eq!(d.users(t, &Filter::Name("B@X.IO".into()), 1, 10).total, 1);
            assert_eq!(
                d.users(t, &Filter::ExternalId("x2".into()), 1, 10).items[0]
                    .0
                    .value
                    .user_name,
                "a@x.io"
            );
            assert_eq!(d.group_names_of(t, Uuid::from_u128(1)), ["Eng"]);
            let known = d.known_groups(t);
            assert_eq!(known["c@x.io"], ["sales"]);
            assert_eq!(known["b@x.io"], ["Eng"]);
            assert_eq!(d.scim_tenant("ab"), Some(t));
            assert_eq!(d.groups(t, &Filter::Name("eng".into()), 1, 10).total, 1);
        };
        check(&dir);
        let restored = Directory::default();
        restored.decode(&dir.encode()).unwrap();
        check(&restored);
        // A deleted user leaves its groups.
        let gone = envelope(
            6,
            t,
            scim,
            ev(ScimEvent::UserDeleted(domain::scim::UserDeleted {
                scim_id: Uuid::from_u128(1),
                user_name: "b@x.io".into(),
                reason: "r".into(),
            })),
        );
        dir.apply(&[gone]).unwrap();
        assert!(
            dir.group(t, Uuid::from_u128(50))
                .unwrap()
                .value
                .members
                .is_empty()
        );
        assert_eq!(dir.users(t, &Filter::All, 1, 10).total, 1);
    }

    #[test]
    fn erased_user_names_are_listed_but_match_no_filter_and_no_email() {
        let t = TenantId::from_uuid(Uuid::from_u128(7));
        let scim = domain::scim::stream_id(t);
        let ev = |e: ScimEvent| (e.event_type(), e.to_payload());
        let erased = domain::personal::ERASED;
        let events: Vec<Envelope> = (1..=2)
            .map(|n| {
                envelope(
                    n,
                    t,
                    scim.clone(),
                    ev(ScimEvent::UserProvisioned(UserChanged {
                        user: user(u128::from(n), erased),
                        reason: "POST /Users".into(),
                    })),
                )
            })
            .collect();
        let dir = Directory::default();
        dir.apply(&events).unwrap();
        assert_eq!(dir.users(t, &Filter::All, 1, 10).total, 2, "both listed");
        assert_eq!(dir.users(t, &Filter::Name(erased.into()), 1, 10).total, 0);
        assert!(dir.user_by_name(t, erased).is_none());
        assert!(dir.known_groups(t).is_empty());
    }
}
