//! Single sign-on and directory provisioning (issue 10, items 3 and 4; ADR 031), the pure part:
//! a tenant's OIDC settings, its group → role mapping rules with their evaluation and the preview
//! of a change, the `SsoConfig` aggregate (settings, mapping, the SCIM token's hash; stream
//! `sso-{tenant}`) and the `SsoLogins` aggregate (the replay guard: every login's nonce or token
//! hash until its token expires; stream `sso-logins-{tenant}`). Signature checks are `app`'s, with
//! a maintained JOSE crate; nothing here parses a token.

use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::{TenantId, TenantRole, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;
use uuid::Uuid;

/// The stream of a tenant's SSO and SCIM configuration.
pub fn config_stream(tenant: TenantId) -> String {
    format!("sso-{tenant}")
}

/// The stream of a tenant's SSO logins (the replay guard).
pub fn logins_stream(tenant: TenantId) -> String {
    format!("sso-logins-{tenant}")
}

/// The longest clock skew a tenant may allow between its identity provider and us.
pub const MAX_SKEW_SECONDS: u32 = 300;
/// The skew allowed when settings do not say.
pub const DEFAULT_SKEW_SECONDS: u32 = 60;
/// The most rules a mapping holds.
pub const MAX_RULES: usize = 200;

/// The ID-token signature algorithms a tenant may allow. Anything else (`none`, HMAC, …) is
/// refused before a key is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SsoAlg {
    RS256,
    EdDSA,
}

impl SsoAlg {
    pub fn parse(s: &str) -> Option<SsoAlg> {
        match s {
            "RS256" => Some(SsoAlg::RS256),
            "EdDSA" => Some(SsoAlg::EdDSA),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SsoAlg::RS256 => "RS256",
            SsoAlg::EdDSA => "EdDSA",
        }
    }
}

/// Where the identity provider's public keys come from: a JWK set given inline, or a file on the
/// server (an operator puts it there). Never fetched over the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    /// The JWK set's JSON text.
    Inline(String),
    /// An absolute path on the server.
    File(String),
}

/// A tenant's OIDC settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoSettings {
    /// The `iss` an ID token must carry, exactly.
    pub issuer: String,
    /// The `aud` an ID token must name (our client id at the provider).
    pub audience: String,
    pub jwks: JwksSource,
    /// Allowed algorithms (non-empty).
    pub algorithms: Vec<SsoAlg>,
    /// The claim that lists the user's groups (`groups` unless said).
    pub groups_claim: String,
    pub clock_skew_seconds: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("issuer: must be 1 to 2048 characters")]
    Issuer,
    #[error("audience: must be 1 to 512 characters")]
    Audience,
    #[error("algorithms: allow at least one of RS256, EdDSA")]
    NoAlgorithm,
    #[error("groups_claim: must be 1 to 100 characters")]
    GroupsClaim,
    #[error("clock_skew_seconds: at most {MAX_SKEW_SECONDS}")]
    Skew,
}

impl SsoSettings {
    /// Settings checked as a command: what the fields must be (the JWK set itself is checked by
    /// `app`, which can parse keys).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let within = |s: &str, max: usize| !s.trim().is_empty() && s.chars().count() <= max;
        if !within(&self.issuer, 2048) {
            return Err(SettingsError::Issuer);
        }
        if !within(&self.audience, 512) {
            return Err(SettingsError::Audience);
        }
        if self.algorithms.is_empty() {
            return Err(SettingsError::NoAlgorithm);
        }
        if !within(&self.groups_claim, 100) {
            return Err(SettingsError::GroupsClaim);
        }
        if self.clock_skew_seconds > MAX_SKEW_SECONDS {
            return Err(SettingsError::Skew);
        }
        Ok(())
    }
}

/// What a matching rule grants: a role, or a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grant {
    Role(TenantRole),
    Deny,
}

impl Grant {
    pub fn parse(s: &str) -> Option<Grant> {
        if s == "deny" {
            return Some(Grant::Deny);
        }
        s.parse::<TenantRole>().ok().map(Grant::Role)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Role(r) => r.as_str(),
            Grant::Deny => "deny",
        }
    }
}

impl Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Grant::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown grant {s:?}")))
    }
}

/// One rule: members of `group` get `grant`. Among the rules that match, the highest `priority`
/// wins; between equal priorities, the one listed first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRule {
    /// The group's name (or id) exactly as the provider sends it; compared exactly.
    pub group: String,
    pub grant: Grant,
    pub priority: i32,
}

/// A tenant's group → role mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub rules: Vec<MappingRule>,
    /// The role of a user no rule matches; `None` refuses them.
    pub default_role: Option<TenantRole>,
}

impl Default for Mapping {
    /// Before any mapping is saved, everyone who signs in is a viewer.
    fn default() -> Self {
        Mapping {
            rules: Vec::new(),
            default_role: Some(TenantRole::Viewer),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("rules: at most {MAX_RULES}")]
    TooManyRules,
    #[error("rules[{0}].group: must be 1 to 256 characters")]
    Group(usize),
    #[error("rules[{0}]: the same group with the same priority is listed twice")]
    Duplicate(usize),
    #[error("only an owner may map groups to the owner role")]
    OnlyOwnersGrantOwner,
}

impl Mapping {
    /// A mapping checked as a command; `by` is the role of who saves it.
    pub fn validate(&self, by: TenantRole) -> Result<(), MappingError> {
        if self.rules.len() > MAX_RULES {
            return Err(MappingError::TooManyRules);
        }
        let mut seen = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.group.trim().is_empty() || r.group.chars().count() > 256 {
                return Err(MappingError::Group(i));
            }
            if !seen.insert((r.group.as_str(), r.priority)) {
                return Err(MappingError::Duplicate(i));
            }
        }
        let grants_owner = self
            .rules
            .iter()
            .any(|r| r.grant == Grant::Role(TenantRole::Owner))
            || self.default_role == Some(TenantRole::Owner);
        if grants_owner && by != TenantRole::Owner {
            return Err(MappingError::OnlyOwnersGrantOwner);
        }
        Ok(())
    }

    /// What a user with these groups gets.
    pub fn evaluate<S: AsRef<str>>(&self, groups: &[S]) -> Outcome {
        let mut best: Option<&MappingRule> = None;
        for rule in &self.rules {
            if groups.iter().any(|g| g.as_ref() == rule.group)
                && best.is_none_or(|b| rule.priority > b.priority)
            {
                best = Some(rule);
            }
        }
        match best {
            Some(rule) => match rule.grant {
                Grant::Role(role) => Outcome::Role {
                    role,
                    group: Some(rule.group.clone()),
                },
                Grant::Deny => Outcome::Denied {
                    group: Some(rule.group.clone()),
                },
            },
            None => match self.default_role {
                Some(role) => Outcome::Role { role, group: None },
                None => Outcome::Denied { group: None },
            },
        }
    }
}

/// The result of the mapping for one user: a role (and the group whose rule gave it, `None` for
/// the default role), or refused (by a deny rule's group, or because nothing matched and there
/// is no default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Role {
        role: TenantRole,
        group: Option<String>,
    },
    Denied {
        group: Option<String>,
    },
}

impl Outcome {
    pub fn role(&self) -> Option<TenantRole> {
        match self {
            Outcome::Role { role, .. } => Some(*role),
            Outcome::Denied { .. } => None,
        }
    }
}

/// A user the preview knows: their email, their current role (if a member) and their groups as
/// last seen (an SSO login or SCIM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownUser {
    pub user_id: Option<UserId>,
    pub email: String,
    pub role: Option<TenantRole>,
    pub groups: Vec<String>,
}

/// One line of a preview: a user whose access the new mapping changes. `from` is what they have
/// now (their role as a member, or what the current mapping gives them when not a member), `to`
/// what the new mapping gives; `None` on either side is "no access".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewChange {
    pub user_id: Option<UserId>,
    pub email: String,
    pub from: Option<TenantRole>,
    pub to: Option<TenantRole>,
    /// The group whose rule decides the new outcome (`None`: the default role, or no match).
    pub by_group: Option<String>,
}

/// Who would gain or lose which role if `proposed` replaced the mapping in force. Users whose
/// access stays the same are left out; the answer is sorted by email.
pub fn preview(
    current: &Mapping,
    proposed: &Mapping,
    users: impl IntoIterator<Item = KnownUser>,
) -> Vec<PreviewChange> {
    let mut out: Vec<PreviewChange> = users
        .into_iter()
        .filter_map(|u| {
            let from = u.role.or_else(|| current.evaluate(&u.groups).role());
            let next = proposed.evaluate(&u.groups);
            let to = next.role();
            if from == to {
                return None;
            }
            Some(PreviewChange {
                user_id: u.user_id,
                email: u.email,
                from,
                to,
                by_group: match next {
                    Outcome::Role { group, .. } | Outcome::Denied { group } => group,
                },
            })
        })
        .collect();
    out.sort_by(|a, b| a.email.cmp(&b.email));
    out
}

// ---------------------------------------------------------------------------------------------
// The configuration aggregate.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsSet {
    #[serde(flatten)]
    pub settings: SsoSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingSaved {
    #[serde(flatten)]
    pub mapping: Mapping,
    /// Why, as who saved it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScimTokenSet {
    pub token_id: Uuid,
    /// Lower-case hex SHA-256 of the token; the token itself is shown once and never stored.
    pub token_sha256: String,
    /// `created` or `rotated`.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigEvent {
    SettingsSet(SettingsSet),
    MappingSaved(MappingSaved),
    ScimTokenSet(ScimTokenSet),
}

impl ConfigEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("sso.settings_set", 1),
        ("sso.mapping_saved", 1),
        ("scim.token_set", 1),
    ];
}

impl DomainEvent for ConfigEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ConfigEvent::SettingsSet(_) => "sso.settings_set",
            ConfigEvent::MappingSaved(_) => "sso.mapping_saved",
            ConfigEvent::ScimTokenSet(_) => "scim.token_set",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            ConfigEvent::SettingsSet(e) => serde_json::to_value(e),
            ConfigEvent::MappingSaved(e) => serde_json::to_value(e),
            ConfigEvent::ScimTokenSet(e) => serde_json::to_value(e),
        }
        .expect("sso config events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        Ok(match (event_type, schema_version) {
            ("sso.settings_set", 1) => {
                ConfigEvent::SettingsSet(EventDecodeError::parse(event_type, payload)?)
            }
            ("sso.mapping_saved", 1) => {
                ConfigEvent::MappingSaved(EventDecodeError::parse(event_type, payload)?)
            }
            ("scim.token_set", 1) => {
                ConfigEvent::ScimTokenSet(EventDecodeError::parse(event_type, payload)?)
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
pub enum ConfigCommand {
    SetSettings(SsoSettings),
    SaveMapping {
        mapping: Mapping,
        by: TenantRole,
        reason: Option<String>,
    },
    SetScimToken {
        token_id: Uuid,
        token_sha256: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// A tenant's SSO and SCIM configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoConfig {
    pub settings: Option<SsoSettings>,
    /// The mapping in force (the default one until a mapping is saved).
    pub mapping: Mapping,
    pub mapping_saved: bool,
    /// The SCIM token's id and SHA-256, if one was made.
    pub scim_token: Option<(Uuid, String)>,
}

impl Aggregate for SsoConfig {
    type Command = ConfigCommand;
    type Event = ConfigEvent;
    type Error = ConfigError;

    fn decide(
        &self,
        command: &ConfigCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<ConfigEvent>, ConfigError> {
        match command {
            ConfigCommand::SetSettings(s) => {
                s.validate()?;
                // Setting what is in force is a success that records nothing.
                if self.settings.as_ref() == Some(s) {
                    return Ok(vec![]);
                }
                Ok(vec![ConfigEvent::SettingsSet(SettingsSet {
                    settings: s.clone(),
                })])
            }
            ConfigCommand::SaveMapping {
                mapping,
                by,
                reason,
            } => {
                mapping.validate(*by)?;
                Ok(vec![ConfigEvent::MappingSaved(MappingSaved {
                    mapping: mapping.clone(),
                    reason: reason.clone(),
                })])
            }
            ConfigCommand::SetScimToken {
                token_id,
                token_sha256,
            } => Ok(vec![ConfigEvent::ScimTokenSet(ScimTokenSet {
                token_id: *token_id,
                token_sha256: token_sha256.clone(),
                reason: if self.scim_token.is_some() {
                    "rotated"
                } else {
                    "created"
                }
                .to_owned(),
            })]),
        }
    }

    fn evolve(&mut self, event: &ConfigEvent) {
        match event {
            ConfigEvent::SettingsSet(e) => self.settings = Some(e.settings.clone()),
            ConfigEvent::MappingSaved(e) => {
                self.mapping = e.mapping.clone();
                self.mapping_saved = true;
            }
            ConfigEvent::ScimTokenSet(e) => {
                self.scim_token = Some((e.token_id, e.token_sha256.clone()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The logins aggregate: the replay guard.

/// One accepted SSO login, as the log keeps it: who (the token's subject and email), their groups
/// as the token listed them (the mapping preview reads them), the role the mapping gave, and the
/// replay key (SHA-256 of the nonce, or of the whole token when it had none) kept until
/// `replay_until` (the token's expiry plus the skew).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRecorded {
    pub subject: String,
    pub email: String,
    pub groups: Vec<String>,
    pub role: TenantRole,
    /// The group whose rule gave the role (`null`: the default role).
    #[serde(default)]
    pub by_group: Option<String>,
    pub replay_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub replay_until: OffsetDateTime,
    /// When the login was decided: keys whose window ended before it (less the longest skew,
    /// for instances whose clocks differ) are forgotten.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The member this login signs in (v2; made by it for a first login): whose key seals the
    /// login's personal fields (ADR 037). v1 payloads read as `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginEvent {
    Recorded(LoginRecorded),
}

impl LoginEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[("sso.login_recorded", 2)];
}

impl DomainEvent for LoginEvent {
    fn event_type(&self) -> &'static str {
        "sso.login_recorded"
    }

    /// v2 added `user_id` (the member signed in); v1 payloads read with it `null`.
    fn schema_version(&self) -> u16 {
        2
    }

    fn to_payload(&self) -> serde_json::Value {
        let LoginEvent::Recorded(e) = self;
        serde_json::to_value(e).expect("login events always serialize")
    }

    fn from_stored(
        event_type: &str,
        schema_version: u16,
        payload: &[u8],
    ) -> Result<Self, EventDecodeError> {
        match (event_type, schema_version) {
            ("sso.login_recorded", 1 | 2) => Ok(LoginEvent::Recorded(EventDecodeError::parse(
                event_type, payload,
            )?)),
            _ => Err(EventDecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("this ID token (or its nonce) was already used")]
    Replayed,
}

/// The replay keys still remembered, with when each may be forgotten. Keys are forgotten when a
/// later login's decision time passes them (evolve only reads events, so every replica forgets
/// alike): the guard holds the keys of tokens not yet expired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoLogins {
    pub seen: BTreeMap<String, i64>,
    /// Expiry (unix seconds) → keys, to forget in order.
    pub by_expiry: BTreeMap<i64, Vec<String>>,
    pub logins: u64,
}

impl Aggregate for SsoLogins {
    type Command = LoginRecorded;
    type Event = LoginEvent;
    type Error = LoginError;

    fn decide(
        &self,
        login: &LoginRecorded,
        now: OffsetDateTime,
    ) -> Result<Vec<LoginEvent>, LoginError> {
        if self
            .seen
            .get(&login.replay_key)
            .is_some_and(|until| *until >= now.unix_timestamp())
        {
            return Err(LoginError::Replayed);
        }
        Ok(vec![LoginEvent::Recorded(login.clone())])
    }

    fn evolve(&mut self, event: &LoginEvent) {
        let LoginEvent::Recorded(e) = event;
        // Forget what expired before this login was decided (less the longest skew).
        let horizon = e.at.unix_timestamp() - i64::from(MAX_SKEW_SECONDS);
        let keep = self.by_expiry.split_off(&horizon);
        for key in std::mem::replace(&mut self.by_expiry, keep)
            .into_values()
            .flatten()
        {
            self.seen.remove(&key);
        }
        let until = e.replay_until.unix_timestamp();
        self.seen.insert(e.replay_key.clone(), until);
        self.by_expiry
            .entry(until)
            .or_default()
            .push(e.replay_key.clone());
        self.logins += 1;
    }
}

/// The longest ID-token lifetime accepted (`exp - iat`, or `exp - now`): one day. It bounds how
/// long a replay key is remembered, and so the replay guard's size.
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 86_400;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{given, test_now};

    fn rule(group: &str, grant: &str, priority: i32) -> MappingRule {
        MappingRule {
            group: group.into(),
            grant: Grant::parse(grant).unwrap(),
            priority,
        }
    }

    fn mapping(rules: Vec<MappingRule>, default_role: Option<TenantRole>) -> Mapping {
        Mapping {
            rules,
            default_role,
        }
    }

    #[test]
    fn the_highest_priority_matching_rule_wins_and_ties_go_to_the_first_listed() {
        let m = mapping(
            vec![
                rule("eng", "analyst", 10),
                rule("admins", "admin", 50),
                rule("eng-leads", "admin", 10),
                rule("contractors", "deny", 100),
            ],
            Some(TenantRole::Viewer),
        );
        let role = |groups: &[&str]| m.evaluate(groups);
        assert_eq!(
            role(&["eng", "admins"]),
            Outcome::Role {
                role: TenantRole::Admin,
                group: Some("admins".into())
            }
        );
        assert_eq!(
            role(&["eng-leads", "eng"]).role(),
            Some(TenantRole::Analyst),
            "equal priority: the rule listed first"
        );
        assert_eq!(
            role(&["admins", "contractors"]),
            Outcome::Denied {
                group: Some("contractors".into())
            }
        );
        assert_eq!(
            role(&["sales"]),
            Outcome::Role {
                role: TenantRole::Viewer,
                group: None
            }
        );
        assert_eq!(role(&[]).role(), Some(TenantRole::Viewer));
        assert_eq!(
            role(&["ENG"]).role(),
            Some(TenantRole::Viewer),
            "exact match"
        );
        let strict = mapping(vec![rule("eng", "analyst", 1)], None);
        assert_eq!(strict.evaluate(&["sales"]), Outcome::Denied { group: None });
    }

    #[test]
    fn mappings_are_checked_as_commands() {
        let ok = mapping(vec![rule("a", "admin", 1)], None);
        assert_eq!(ok.validate(TenantRole::Admin), Ok(()));
        let owners = mapping(vec![rule("a", "owner", 1)], None);
        assert_eq!(
            owners.validate(TenantRole::Admin),
            Err(MappingError::OnlyOwnersGrantOwner)
        );
        assert_eq!(owners.validate(TenantRole::Owner), Ok(()));
        assert_eq!(
            mapping(vec![], Some(TenantRole::Owner)).validate(TenantRole::Admin),
            Err(MappingError::OnlyOwnersGrantOwner)
        );
        assert_eq!(
            mapping(vec![rule(" ", "viewer", 1)], None).validate(TenantRole::Owner),
            Err(MappingError::Group(0))
        );
        assert_eq!(
            mapping(vec![rule("a", "viewer", 1), rule("a", "admin", 1)], None)
                .validate(TenantRole::Owner),
            Err(MappingError::Duplicate(1))
        );
        assert_eq!(Grant::parse("root"), None);
    }

    #[test]
    fn the_preview_lists_who_gains_or_loses_which_role() {
        let current = mapping(vec![rule("eng", "analyst", 1)], Some(TenantRole::Viewer));
        let proposed = mapping(
            vec![rule("eng", "admin", 1), rule("contractors", "deny", 9)],
            Some(TenantRole::Viewer),
        );
        let user = |email: &str, role: Option<TenantRole>, groups: &[&str]| KnownUser {
            user_id: None,
            email: email.into(),
            role,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let changes = preview(
            &current,
            &proposed,
            [
                user("zoe@x.io", Some(TenantRole::Analyst), &["eng"]),
                user("amy@x.io", Some(TenantRole::Viewer), &["sales"]),
                user(
                    "cid@x.io",
                    Some(TenantRole::Analyst),
                    &["eng", "contractors"],
                ),
                user("new@x.io", None, &["eng"]),
            ],
        );
        let lines: Vec<_> = changes
            .iter()
            .map(|c| (c.email.as_str(), c.from, c.to, c.by_group.as_deref()))
            .collect();
        assert_eq!(
            lines,
            vec![
                (
                    "cid@x.io",
                    Some(TenantRole::Analyst),
                    None,
                    Some("contractors")
                ),
                (
                    "new@x.io",
                    Some(TenantRole::Analyst),
                    Some(TenantRole::Admin),
                    Some("eng")
                ),
                (
                    "zoe@x.io",
                    Some(TenantRole::Analyst),
                    Some(TenantRole::Admin),
                    Some("eng")
                ),
            ],
            "amy keeps viewer and is left out; sorted by email"
        );
    }

    fn settings() -> SsoSettings {
        SsoSettings {
            issuer: "https://idp.example.com".into(),
            audience: "tenantry".into(),
            jwks: JwksSource::Inline("{\"keys\":[]}".into()),
            algorithms: vec![SsoAlg::RS256],
            groups_claim: "groups".into(),
            clock_skew_seconds: 60,
        }
    }

    #[test]
    fn settings_are_validated_and_recorded() {
        let s = settings();
        let state = given::<SsoConfig>([])
            .when(ConfigCommand::SetSettings(s.clone()))
            .then([ConfigEvent::SettingsSet(SettingsSet {
                settings: s.clone(),
            })]);
        assert_eq!(state.settings, Some(s.clone()));
        given::<SsoConfig>([ConfigEvent::SettingsSet(SettingsSet {
            settings: s.clone(),
        })])
        .when(ConfigCommand::SetSettings(s.clone()))
        .then([]);
        for (bad, err) in [
            (
                SsoSettings {
                    algorithms: vec![],
                    ..s.clone()
                },
                SettingsError::NoAlgorithm,
            ),
            (
                SsoSettings {
                    clock_skew_seconds: 301,
                    ..s.clone()
                },
                SettingsError::Skew,
            ),
            (
                SsoSettings {
                    issuer: " ".into(),
                    ..s.clone()
                },
                SettingsError::Issuer,
            ),
        ] {
            given::<SsoConfig>([])
                .when(ConfigCommand::SetSettings(bad))
                .then_err(ConfigError::Settings(err));
        }
    }

    #[test]
    fn the_scim_token_is_created_then_rotated() {
        let set = |n: u128| ConfigCommand::SetScimToken {
            token_id: Uuid::from_u128(n),
            token_sha256: format!("{n:064x}"),
        };
        let first = ConfigEvent::ScimTokenSet(ScimTokenSet {
            token_id: Uuid::from_u128(1),
            token_sha256: format!("{:064x}", 1),
            reason: "created".into(),
        });
        given::<SsoConfig>([]).when(set(1)).then([first.clone()]);
        let state = given::<SsoConfig>([first])
            .when(set(2))
            .then([ConfigEvent::ScimTokenSet(ScimTokenSet {
                token_id: Uuid::from_u128(2),
                token_sha256: format!("{:064x}", 2),
                reason: "rotated".into(),
            })]);
        assert_eq!(state.scim_token.unwrap().0, Uuid::from_u128(2));
    }

    fn login(key: &str, until: OffsetDateTime) -> LoginRecorded {
        LoginRecorded {
            subject: "sub-1".into(),
            email: "ada@example.com".into(),
            groups: vec!["eng".into()],
            role: TenantRole::Analyst,
            by_group: Some("eng".into()),
            replay_key: key.into(),
            replay_until: until,
            at: until - time::Duration::minutes(5),
            user_id: Some(UserId::from_uuid(Uuid::from_u128(9))),
        }
    }

    #[test]
    fn a_replay_key_is_refused_until_its_token_expires_and_forgotten_after() {
        let soon = test_now() + time::Duration::minutes(5);
        let first = LoginEvent::Recorded(login("k1", soon));
        given::<SsoLogins>([])
            .when(login("k1", soon))
            .then([first.clone()]);
        given::<SsoLogins>([first.clone()])
            .when(login("k1", soon))
            .then_err(LoginError::Replayed);
        // A login two days later forgets k1 (its window is long over).
        let later = soon + time::Duration::days(2);
        let state = given::<SsoLogins>([first, LoginEvent::Recorded(login("k2", later))])
            .when(login("k3", later))
            .then([LoginEvent::Recorded(login("k3", later))]);
        assert!(!state.seen.contains_key("k1"));
        assert!(state.seen.contains_key("k2") && state.seen.contains_key("k3"));
    }

    #[test]
    fn every_sso_event_type_round_trips_and_is_catalogued() {
        let events = [
            ConfigEvent::SettingsSet(SettingsSet {
                settings: settings(),
            }),
            ConfigEvent::MappingSaved(MappingSaved {
                mapping: mapping(vec![rule("g", "deny", 3)], None),
                reason: Some("tighten".into()),
            }),
            ConfigEvent::ScimTokenSet(ScimTokenSet {
                token_id: Uuid::from_u128(4),
                token_sha256: "ab".into(),
                reason: "created".into(),
            }),
        ];
        for e in &events {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            let back = ConfigEvent::from_stored(e.event_type(), 1, &bytes).unwrap();
            assert_eq!(&back, e);
        }
        assert_eq!(events.len(), ConfigEvent::ALL_EVENT_TYPES.len());
        let l = LoginEvent::Recorded(login("k", test_now()));
        let bytes = serde_json::to_vec(&l.to_payload()).unwrap();
        assert_eq!(
            LoginEvent::from_stored("sso.login_recorded", 2, &bytes).unwrap(),
            l
        );
        // A v1 payload (no `user_id`) still reads, with no member named.
        let mut v1 = l.to_payload();
        v1.as_object_mut().unwrap().remove("user_id");
        let LoginEvent::Recorded(old) =
            LoginEvent::from_stored("sso.login_recorded", 1, &serde_json::to_vec(&v1).unwrap())
                .unwrap();
        assert_eq!(old.user_id, None);
    }
}
