//! SCIM 2.0 provisioning (issue 10, item 4; RFC 7643/7644; ADR 031), the pure part: the
//! `ScimDirectory` aggregate of one tenant (stream `scim-{tenant}`): its provisioned users (a
//! unique `userName`, active or not, linked to the member they are while active) and its groups
//! (a display name and member users). A SCIM user is a tenant member while active; the member, its
//! role and its tokens stay in the tenant's stream (`app` adds and removes them).

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::{TenantId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use time::OffsetDateTime;
use uuid::Uuid;

pub fn stream_id(tenant: TenantId) -> String {
    format!("scim-{tenant}")
}

/// The key a userName is unique under: the name lower-cased (RFC 7643: case-insensitive). An
/// erased userName (its key destroyed, ADR 037) reserves nothing and matches no filter: its key
/// is the user's own, a text no userName can be (the store refuses NUL in any text).
pub fn user_name_key(user_name: &str, scim_id: Uuid) -> String {
    if user_name == crate::personal::ERASED {
        format!("{}\u{0}{scim_id}", crate::personal::ERASED)
    } else {
        user_name.to_lowercase()
    }
}

/// A provisioned user's attributes, as the provider last sent them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScimUser {
    pub scim_id: Uuid,
    /// The sign-in name: an email address here (it is the member's email).
    pub user_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub active: bool,
    /// The email the member is made with: the userName when it is an email, else the provider's
    /// primary email (`null`: none, so the user cannot be a member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The member this user is while active (`null` while inactive, or refused by the mapping).
    #[serde(default)]
    pub user_id: Option<UserId>,
}

/// A provisioned group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScimGroup {
    pub group_id: Uuid,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Members' SCIM ids.
    pub members: BTreeSet<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChanged {
    #[serde(flatten)]
    pub user: ScimUser,
    /// What the provider asked (`POST /Users`, `PATCH active=false`, …).
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeleted {
    pub scim_id: Uuid,
    pub user_name: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChanged {
    #[serde(flatten)]
    pub group: ScimGroup,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeleted {
    pub group_id: Uuid,
    pub display_name: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScimEvent {
    UserProvisioned(UserChanged),
    UserUpdated(UserChanged),
    UserDeleted(UserDeleted),
    GroupProvisioned(GroupChanged),
    GroupUpdated(GroupChanged),
    GroupDeleted(GroupDeleted),
}

impl ScimEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("scim.user_provisioned", 1),
        ("scim.user_updated", 1),
        ("scim.user_deleted", 1),
        ("scim.group_provisioned", 1),
        ("scim.group_updated", 1),
        ("scim.group_deleted", 1),
    ];
}

impl DomainEvent for ScimEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ScimEvent::UserProvisioned(_) => "scim.user_provisioned",
            ScimEvent::UserUpdated(_) => "scim.user_updated",
            ScimEvent::UserDeleted(_) => "scim.user_deleted",
            ScimEvent::GroupProvisioned(_) => "scim.group_provisioned",
            ScimEvent::GroupUpdated(_) => "scim.group_updated",
            ScimEvent::GroupDeleted(_) => "scim.group_deleted",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            ScimEvent::UserProvisioned(e) | ScimEvent::UserUpdated(e) => serde_json::to_value(e),
            ScimEvent::UserDeleted(e) => serde_json::to_value(e),
            ScimEvent::GroupProvisioned(e) | ScimEvent::GroupUpdated(e) => serde_json::to_value(e),
            ScimEvent::GroupDeleted(e) => serde_json::to_value(e),
        }
        .expect("scim events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        Ok(match (event_type, schema_version) {
            ("scim.user_provisioned", 1) => {
                ScimEvent::UserProvisioned(EventDecodeError::parse(event_type, payload)?)
            }
            ("scim.user_updated", 1) => {
                ScimEvent::UserUpdated(EventDecodeError::parse(event_type, payload)?)
            }
            ("scim.user_deleted", 1) => {
                ScimEvent::UserDeleted(EventDecodeError::parse(event_type, payload)?)
            }
            ("scim.group_provisioned", 1) => {
                ScimEvent::GroupProvisioned(EventDecodeError::parse(event_type, payload)?)
            }
            ("scim.group_updated", 1) => {
                ScimEvent::GroupUpdated(EventDecodeError::parse(event_type, payload)?)
            }
            ("scim.group_deleted", 1) => {
                ScimEvent::GroupDeleted(EventDecodeError::parse(event_type, payload)?)
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScimCommand {
    /// Create a user (its `user_name` must be free, whatever its case).
    CreateUser {
        user: ScimUser,
        reason: String,
    },
    /// Replace a user's attributes (PUT or PATCH; the id stays).
    UpdateUser {
        user: ScimUser,
        reason: String,
    },
    DeleteUser {
        scim_id: Uuid,
        reason: String,
    },
    CreateGroup {
        group: ScimGroup,
        reason: String,
    },
    UpdateGroup {
        group: ScimGroup,
        reason: String,
    },
    DeleteGroup {
        group_id: Uuid,
        reason: String,
    },
}

/// Each maps to a SCIM error: 409 `uniqueness`, 404, 400 `invalidValue`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScimError {
    #[error("userName {0:?} is already provisioned")]
    UserNameTaken(String),
    #[error("displayName {0:?} is already a group")]
    GroupNameTaken(String),
    #[error("no such user")]
    UnknownUser,
    #[error("no such group")]
    UnknownGroup,
    #[error("the group lists a member that is not a provisioned user: {0}")]
    UnknownMember(Uuid),
    #[error("{0} is already provisioned")]
    IdTaken(Uuid),
}

/// What the aggregate keeps to decide: names (for uniqueness) and ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScimDirectory {
    /// Lower-cased userName → SCIM id ([`user_name_key`]).
    pub user_names: HashMap<String, Uuid>,
    /// SCIM id → lower-cased userName ([`user_name_key`]).
    pub users: HashMap<Uuid, String>,
    /// Lower-cased displayName → group id.
    pub group_names: HashMap<String, Uuid>,
    pub groups: HashMap<Uuid, String>,
}

impl ScimDirectory {
    fn check_members(&self, g: &ScimGroup) -> Result<(), ScimError> {
        match g.members.iter().find(|m| !self.users.contains_key(m)) {
            Some(m) => Err(ScimError::UnknownMember(*m)),
            None => Ok(()),
        }
    }
}

impl Aggregate for ScimDirectory {
    type Command = ScimCommand;
    type Event = ScimEvent;
    type Error = ScimError;

    fn decide(
        &self,
        command: &ScimCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<ScimEvent>, ScimError> {
        use ScimCommand as C;
        let changed = |user: &ScimUser, reason: &str| UserChanged {
            user: user.clone(),
            reason: reason.to_owned(),
        };
        Ok(vec![match command {
            C::CreateUser { user, reason } => {
                if self.users.contains_key(&user.scim_id) {
                    return Err(ScimError::IdTaken(user.scim_id));
                }
                if self
                    .user_names
                    .contains_key(&user_name_key(&user.user_name, user.scim_id))
                {
                    return Err(ScimError::UserNameTaken(user.user_name.clone()));
                }
                ScimEvent::UserProvisioned(changed(user, reason))
            }
            C::UpdateUser { user, reason } => {
                if !self.users.contains_key(&user.scim_id) {
                    return Err(ScimError::UnknownUser);
                }
                match self
                    .user_names
                    .get(&user_name_key(&user.user_name, user.scim_id))
                {
                    Some(id) if *id != user.scim_id => {
                        return Err(ScimError::UserNameTaken(user.user_name.clone()));
                    }
                    _ => {}
                }
                ScimEvent::UserUpdated(changed(user, reason))
            }
            C::DeleteUser { scim_id, reason } => {
                let name = self.users.get(scim_id).ok_or(ScimError::UnknownUser)?;
                // An erased name's key is the user's own: the event says it was erased.
                let name = match name.split_once('\u{0}') {
                    Some((erased, _)) => erased.to_owned(),
                    None => name.clone(),
                };
                ScimEvent::UserDeleted(UserDeleted {
                    scim_id: *scim_id,
                    user_name: name,
                    reason: reason.clone(),
                })
            }
            C::CreateGroup { group, reason } => {
                if self.groups.contains_key(&group.group_id) {
                    return Err(ScimError::IdTaken(group.group_id));
                }
                if self
                    .group_names
                    .contains_key(&group.display_name.to_lowercase())
                {
                    return Err(ScimError::GroupNameTaken(group.display_name.clone()));
                }
                self.check_members(group)?;
                ScimEvent::GroupProvisioned(GroupChanged {
                    group: group.clone(),
                    reason: reason.clone(),
                })
            }
            C::UpdateGroup { group, reason } => {
                if !self.groups.contains_key(&group.group_id) {
                    return Err(ScimError::UnknownGroup);
                }
                match self.group_names.get(&group.display_name.to_lowercase()) {
                    Some(id) if *id != group.group_id => {
                        return Err(ScimError::GroupNameTaken(group.display_name.clone()));
                    }
                    _ => {}
                }
                self.check_members(group)?;
                ScimEvent::GroupUpdated(GroupChanged {
                    group: group.clone(),
                    reason: reason.clone(),
                })
            }
            C::DeleteGroup { group_id, reason } => {
                let name = self.groups.get(group_id).ok_or(ScimError::UnknownGroup)?;
                ScimEvent::GroupDeleted(GroupDeleted {
                    group_id: *group_id,
                    display_name: name.clone(),
                    reason: reason.clone(),
                })
            }
        }])
    }

    fn evolve(&mut self, event: &ScimEvent) {
        match event {
            ScimEvent::UserProvisioned(e) | ScimEvent::UserUpdated(e) => {
                if let Some(old) = self.users.remove(&e.user.scim_id) {
                    self.user_names.remove(&old);
                }
                let name = user_name_key(&e.user.user_name, e.user.scim_id);
                self.user_names.insert(name.clone(), e.user.scim_id);
                self.users.insert(e.user.scim_id, name);
            }
            ScimEvent::UserDeleted(e) => {
                if let Some(old) = self.users.remove(&e.scim_id) {
                    self.user_names.remove(&old);
                }
            }
            ScimEvent::GroupProvisioned(e) | ScimEvent::GroupUpdated(e) => {
                if let Some(old) = self.groups.remove(&e.group.group_id) {
                    self.group_names.remove(&old);
                }
                let name = e.group.display_name.to_lowercase();
                self.group_names.insert(name.clone(), e.group.group_id);
                self.groups.insert(e.group.group_id, name);
            }
            ScimEvent::GroupDeleted(e) => {
                if let Some(old) = self.groups.remove(&e.group_id) {
                    self.group_names.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;

    fn user(n: u128, name: &str) -> ScimUser {
        ScimUser {
            scim_id: Uuid::from_u128(n),
            user_name: name.into(),
            external_id: None,
            given_name: Some("Ada".into()),
            family_name: None,
            display_name: None,
            active: true,
            email: Some(name.into()),
            user_id: None,
        }
    }

    fn provisioned(n: u128, name: &str) -> ScimEvent {
        ScimEvent::UserProvisioned(UserChanged {
            user: user(n, name),
            reason: "POST /Users".into(),
        })
    }

    #[test]
    fn a_user_name_is_provisioned_once_whatever_its_case_and_freed_by_delete() {
        given::<ScimDirectory>([])
            .when(ScimCommand::CreateUser {
                user: user(1, "ada@x.io"),
                reason: "POST /Users".into(),
            })
            .then([provisioned(1, "ada@x.io")]);
        given::<ScimDirectory>([provisioned(1, "ada@x.io")])
            .when(ScimCommand::CreateUser {
                user: user(2, "ADA@x.io"),
                reason: "POST /Users".into(),
            })
            .then_err(ScimError::UserNameTaken("ADA@x.io".into()));
        let deleted = ScimEvent::UserDeleted(UserDeleted {
            scim_id: Uuid::from_u128(1),
            user_name: "ada@x.io".into(),
            reason: "DELETE".into(),
        });
        given::<ScimDirectory>([provisioned(1, "ada@x.io")])
            .when(ScimCommand::DeleteUser {
                scim_id: Uuid::from_u128(1),
                reason: "DELETE".into(),
            })
            .then([deleted.clone()]);
        given::<ScimDirectory>([provisioned(1, "ada@x.io"), deleted])
            .when(ScimCommand::CreateUser {
                user: user(2, "ada@x.io"),
                reason: "POST /Users".into(),
            })
            .then([provisioned(2, "ada@x.io")]);
    }

    #[test]
    fn an_erased_user_name_reserves_nothing_and_is_deleted_as_erased() {
        let erased = |n: u128| provisioned(n, crate::personal::ERASED);
        // Two erased users do not collide, and the erased name frees the name it was.
        let state = given::<ScimDirectory>([erased(1), erased(2)])
            .when(ScimCommand::CreateUser {
                user: user(3, "ada@x.io"),
                reason: "POST /Users".into(),
            })
            .then([provisioned(3, "ada@x.io")]);
        assert_eq!(state.users.len(), 3);
        given::<ScimDirectory>([erased(1), erased(2)])
            .when(ScimCommand::DeleteUser {
                scim_id: Uuid::from_u128(2),
                reason: "DELETE".into(),
            })
            .then([ScimEvent::UserDeleted(UserDeleted {
                scim_id: Uuid::from_u128(2),
                user_name: crate::personal::ERASED.into(),
                reason: "DELETE".into(),
            })]);
    }

    #[test]
    fn updates_keep_names_unique_and_groups_list_only_provisioned_users() {
        let history = [provisioned(1, "a@x.io"), provisioned(2, "b@x.io")];
        given::<ScimDirectory>(history.clone())
            .when(ScimCommand::UpdateUser {
                user: user(2, "A@x.io"),
                reason: "PUT".into(),
            })
            .then_err(ScimError::UserNameTaken("A@x.io".into()));
        given::<ScimDirectory>(history.clone())
            .when(ScimCommand::UpdateUser {
                user: user(9, "z@x.io"),
                reason: "PUT".into(),
            })
            .then_err(ScimError::UnknownUser);
        let group = ScimGroup {
            group_id: Uuid::from_u128(50),
            display_name: "eng".into(),
            external_id: None,
            members: [Uuid::from_u128(1), Uuid::from_u128(7)].into(),
        };
        given::<ScimDirectory>(history)
            .when(ScimCommand::CreateGroup {
                group,
                reason: "POST /Groups".into(),
            })
            .then_err(ScimError::UnknownMember(Uuid::from_u128(7)));
    }

    #[test]
    fn every_scim_event_type_round_trips() {
        let events = [
            provisioned(1, "a@x.io"),
            ScimEvent::UserUpdated(UserChanged {
                user: ScimUser {
                    active: false,
                    user_id: Some(UserId::from_uuid(Uuid::from_u128(3))),
                    ..user(1, "a@x.io")
                },
                reason: "PATCH active=false".into(),
            }),
            ScimEvent::UserDeleted(UserDeleted {
                scim_id: Uuid::from_u128(1),
                user_name: "a@x.io".into(),
                reason: "DELETE".into(),
            }),
            ScimEvent::GroupProvisioned(GroupChanged {
                group: ScimGroup {
                    group_id: Uuid::from_u128(5),
                    display_name: "eng".into(),
                    external_id: Some("x".into()),
                    members: BTreeSet::new(),
                },
                reason: "POST /Groups".into(),
            }),
            ScimEvent::GroupUpdated(GroupChanged {
                group: ScimGroup {
                    group_id: Uuid::from_u128(5),
                    display_name: "eng".into(),
                    external_id: None,
                    members: [Uuid::from_u128(1)].into(),
                },
                reason: "PATCH add members".into(),
            }),
            ScimEvent::GroupDeleted(GroupDeleted {
                group_id: Uuid::from_u128(5),
                display_name: "eng".into(),
                reason: "DELETE".into(),
            }),
        ];
        assert_eq!(events.len(), ScimEvent::ALL_EVENT_TYPES.len());
        for e in &events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            assert_eq!(
                &ScimEvent::from_stored(e.event_type(), 1, &bytes).unwrap(),
                e
            );
        }
    }
}
