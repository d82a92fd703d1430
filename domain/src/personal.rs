//! Personal data in events: the one table of which payload fields hold personal data (emails,
//! person names, free text) per event type, and whose they are (the subject). The store seals
//! these fields at write time with a per-subject key and unseals them on read (crypto-shredding,
//! ADR 032); erasing the key erases the plaintext for good while the stored bytes, and so every
//! hash of the audit tree, stay as they were.
//!
//! Pure data: no crypto here (that is the store's), only what is personal and whose.

/// A sealed payload is stored under the schema version `SEALED_VERSION_BASE + v`, where `v` is
/// the version of the plaintext payload it seals. Readers unseal it back to version `v`: an event
/// type keeps its own version numbers for plaintext changes, and a sealed version can never
/// collide with one of them (the domain's versions stay far below).
pub const SEALED_VERSION_BASE: u16 = 0x8000;

/// What an erased personal field reads as, once its key is gone (projections, answers, exports).
pub const ERASED: &str = "[erased]";

/// The reason of an erasure made at a subject's request (the right to erasure), inside any
/// retention window. A policy rule cannot have this name (it starts with `$`).
pub const SUBJECT_REQUEST: &str = "$subject-request";

/// Whose personal data an event's fields are: the subject whose key seals them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The user whose id is the string at this JSON pointer of the payload (`user:<id>`).
    UserAt(&'static str),
    /// The invitee of the invite whose id is at this pointer (`invite:<id>`): not a user yet.
    InviteAt(&'static str),
    /// The event's actor (`user:<id>` for a member's own action).
    Actor,
    /// The SCIM user whose SCIM id is at this pointer (`scim-user:<id>`): one subject across
    /// the member ids the user is linked to over time (ADR 037). A member's erasure erases the
    /// SCIM users linked to them.
    ScimUserAt(&'static str),
}

/// One row of the table: an event type's personal fields (JSON pointers) and their subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersonalFields {
    pub event_type: &'static str,
    pub subject: Subject,
    pub fields: &'static [&'static str],
}

/// Every event type that carries personal data. A new event type with an email, a person's name
/// or free text gets its row here; the store then seals it, whatever aggregate produces it.
pub const TABLE: &[PersonalFields] = &[
    PersonalFields {
        event_type: "member.added",
        subject: Subject::UserAt("/user_id"),
        fields: &["/email", "/name"],
    },
    PersonalFields {
        event_type: "feedback.submitted",
        subject: Subject::Actor,
        fields: &["/message"],
    },
    PersonalFields {
        event_type: "invite.created",
        subject: Subject::InviteAt("/invite_id"),
        fields: &["/email", "/name"],
    },
    PersonalFields {
        event_type: "sign_in.code_requested",
        subject: Subject::UserAt("/user_id"),
        fields: &["/email"],
    },
    // SSO and SCIM (ADR 037): a login is the member's (v2 names them); a SCIM user's attributes
    // are the SCIM user's. Group names and ids, roles and replay keys are not personal.
    PersonalFields {
        event_type: "sso.login_recorded",
        subject: Subject::UserAt("/user_id"),
        fields: &["/subject", "/email"],
    },
    PersonalFields {
        event_type: "scim.user_provisioned",
        subject: Subject::ScimUserAt("/scim_id"),
        fields: SCIM_USER_FIELDS,
    },
    PersonalFields {
        event_type: "scim.user_updated",
        subject: Subject::ScimUserAt("/scim_id"),
        fields: SCIM_USER_FIELDS,
    },
    PersonalFields {
        event_type: "scim.user_deleted",
        subject: Subject::ScimUserAt("/scim_id"),
        fields: &["/user_name"],
    },
];

/// The personal attributes of a SCIM user as its events carry them.
const SCIM_USER_FIELDS: &[&str] = &[
    "/user_name",
    "/external_id",
    "/given_name",
    "/family_name",
    "/display_name",
    "/email",
];

/// The personal fields of `event_type`, if it has any.
pub fn fields_of(event_type: &str) -> Option<&'static PersonalFields> {
    TABLE.iter().find(|r| r.event_type == event_type)
}

/// Whether a stored schema version is a sealed one.
pub fn is_sealed_version(schema_version: u16) -> bool {
    schema_version >= SEALED_VERSION_BASE
}

/// The subject of a user id, as keys are looked up and erased by it.
pub fn user_subject(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The subject of a SCIM user (by its SCIM id).
pub fn scim_user_subject(scim_id: &str) -> String {
    format!("scim-user:{scim_id}")
}

/// The subject of an event with `payload` made by `actor`, when its row names one that is there.
pub fn subject_of(
    row: &PersonalFields,
    payload: &serde_json::Value,
    actor: &str,
) -> Option<String> {
    match row.subject {
        Subject::UserAt(pointer) => payload.pointer(pointer)?.as_str().map(user_subject),
        Subject::InviteAt(pointer) => payload
            .pointer(pointer)?
            .as_str()
            .map(|id| format!("invite:{id}")),
        Subject::Actor => (!actor.is_empty()).then(|| actor.to_owned()),
        Subject::ScimUserAt(pointer) => payload.pointer(pointer)?.as_str().map(scim_user_subject),
    }
}

/// What a sealed field reads as where no key is at hand (a replay from a bundle).
pub const SEALED: &str = "[sealed]";

/// A sealed payload as a reader without keys decodes it: the plaintext schema version, each
/// sealed personal field replaced by [`SEALED`]. `None` when the payload is not sealed.
pub fn without_keys(
    event_type: &str,
    schema_version: u16,
    payload: &[u8],
) -> Option<(u16, Vec<u8>)> {
    if !is_sealed_version(schema_version) {
        return None;
    }
    let row = fields_of(event_type)?;
    let mut value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    for f in row.fields {
        if let Some(slot) = value.pointer_mut(f)
            && slot.as_object().is_some_and(|o| o.contains_key("$sealed"))
        {
            *slot = serde_json::Value::String(SEALED.to_owned());
        }
    }
    Some((
        schema_version - SEALED_VERSION_BASE,
        serde_json::to_vec(&value).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_names_a_type_the_domain_produces_below_the_sealed_versions() {
        let all = crate::all_event_types();
        for row in TABLE {
            let (_, v) = all
                .iter()
                .find(|(t, _)| *t == row.event_type)
                .unwrap_or_else(|| panic!("{} is not produced by the domain", row.event_type));
            assert!(!is_sealed_version(*v), "{} v{v} collides", row.event_type);
            assert!(!row.fields.is_empty());
            for f in row.fields {
                assert!(f.starts_with('/'), "{f} is not a JSON pointer");
            }
        }
        let mut types: Vec<_> = TABLE.iter().map(|r| r.event_type).collect();
        types.dedup();
        assert_eq!(types.len(), TABLE.len(), "one row per event type");
    }

    #[test]
    fn the_subject_is_the_user_named_or_the_actor() {
        let member = fields_of("member.added").unwrap();
        let payload = serde_json::json!({"user_id": "u-1", "email": "a@b.c"});
        assert_eq!(
            subject_of(member, &payload, "user:x").as_deref(),
            Some("user:u-1")
        );
        let feedback = fields_of("feedback.submitted").unwrap();
        assert_eq!(
            subject_of(feedback, &payload, "user:x").as_deref(),
            Some("user:x")
        );
        assert_eq!(subject_of(member, &serde_json::json!({}), "user:x"), None);
        let scim = fields_of("scim.user_updated").unwrap();
        let payload = serde_json::json!({"scim_id": "s-1", "user_id": "u-1", "user_name": "a"});
        assert_eq!(
            subject_of(scim, &payload, "scim").as_deref(),
            Some("scim-user:s-1"),
            "a SCIM user's events are the SCIM user's, whatever member they are linked to"
        );
        let login = fields_of("sso.login_recorded").unwrap();
        assert_eq!(
            subject_of(login, &payload, "sso").as_deref(),
            Some("user:u-1")
        );
        assert!(fields_of("flag.set").is_none());
    }

    #[test]
    fn a_sealed_payload_reads_without_keys_as_sealed_fields() {
        let payload = br#"{"email":{"$sealed":"AAAA","kid":"k"},"name":{"$sealed":"AAAA","kid":"k"},"role":"viewer","user_id":"u"}"#;
        let (v, p) = without_keys("member.added", SEALED_VERSION_BASE + 1, payload).unwrap();
        assert_eq!(v, 1);
        let p: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(p["email"], SEALED);
        assert_eq!(p["role"], "viewer");
        assert!(without_keys("member.added", 1, payload).is_none());
    }
}
