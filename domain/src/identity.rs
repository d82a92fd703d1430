//! Identity values: emails, person names, roles, feature flags and issued tokens.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

/// An email address, lower-cased: `local@domain.tld`, at most 254 bytes, no spaces or controls.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Email(String);

/// History is read leniently: a stored email decodes as it was written, even if today's rule
/// (`Email::parse`, applied to every command) would refuse it.
impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEmail(&'static str);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(InvalidEmail("email is empty"));
        }
        if s.len() > 254 {
            return Err(InvalidEmail("email is longer than 254 bytes"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEmail("email contains spaces or control characters"));
        }
        let (local, domain) = s.rsplit_once('@').ok_or(InvalidEmail("email has no @"))?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(InvalidEmail("email has an invalid local part"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let valid_label = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(valid_label) {
            return Err(InvalidEmail("email has an invalid domain"));
        }
        Ok(Self(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidEmail;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's display name: 1 to 200 characters, no control or invisible formatting characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct PersonName(String);

/// Read leniently, like [`Email`]: validation belongs to commands.
impl<'de> Deserialize<'de> for PersonName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, crate::tenant::TenantNameError> {
        crate::tenant::parse_display_text(raw, 200).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PersonName {
    type Error = crate::tenant::TenantNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PersonName> for String {
    fn from(value: PersonName) -> Self {
        value.0
    }
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!(
                        "unknown {}: {other:?} (expected one of: {})",
                        stringify!($name),
                        [$($text),*].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// A role inside one tenant (SPEC §2).
    TenantRole {
        Owner = "owner",
        Admin = "admin",
        Analyst = "analyst",
        Viewer = "viewer",
        Billing = "billing",
        Compliance = "compliance",
    }
);

string_enum!(
    /// A platform (operator) role, across tenants (SPEC §2).
    PlatformRole {
        Support = "support",
        Pm = "pm",
        Ops = "ops",
        Finance = "finance",
    }
);

string_enum!(
    /// A feature flag (SPEC §2). Defaults come from settings; tenants get overrides.
    Flag {
        FeedbackMvp = "feedbackMVP",
        PlansQuotasV1 = "plansQuotasV1",
        BillingActiveV1 = "billingActiveV1",
        InviteSsoV1 = "inviteSsoV1",
        FirstSuccessV11 = "firstSuccessV11",
        AuditV12 = "auditV12",
        InsightsV11 = "insightsV11",
        ReliabilitySoak20 = "reliabilitySoak20",
        RedactionPresetBuilder = "redactionPresetBuilder",
    }
);

string_enum!(
    /// How a token came to be (`token.issued` v2): `legacy` for tokens of v1 events, which did
    /// not say.
    TokenKind {
        SignUp = "sign_up",
        MemberAdded = "member_added",
        SignIn = "sign_in",
        Rotation = "rotation",
        Reissue = "reissue",
        Invite = "invite",
        Sso = "sso",
        Scim = "scim",
        Legacy = "legacy",
    }
);

/// A bearer token as the log knows it: never the token, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token_id: Uuid,
    /// Lower-case hex SHA-256 of the token.
    pub token_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_parsed_and_lower_cased() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            "ada@example..com",
            "ada\n@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
        assert!(Email::parse("ünïcode@exämple.de").is_ok());
    }

    #[test]
    fn roles_and_flags_round_trip_their_names() {
        for r in TenantRole::ALL {
            assert_eq!(r.as_str().parse::<TenantRole>().unwrap(), *r);
        }
        for f in Flag::ALL {
            assert_eq!(f.as_str().parse::<Flag>().unwrap(), *f);
        }
        assert!(
            "root"
                .parse::<TenantRole>()
                .unwrap_err()
                .contains("owner, admin")
        );
    }
}
