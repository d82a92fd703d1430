//! What an idempotency record keeps of a response, so that a retry under the same
//! `Idempotency-Key` gets the first answer back whole: status, body and the headers the handler
//! set (`Location`, `Link`, `RateLimit*`, `Tenantry-Quota-State` …).
//!
//! A bearer token in the body (sign-up, a new member) is shown once and never stored in clear:
//! it is sealed with ChaCha20-Poly1305 under a key derived from the platform secret (kept in the
//! store, never in a record), bound to the record's scope and key, and put back on replay. A
//! retry of a sign-up whose answer was lost therefore still gets the token; the sealed token
//! lives as long as the record, and expired records are deleted (`Store::idempotency_purge`).
//!
//! The stored body is framed as `MAGIC`, a little-endian `u32` length, a JSON header of that
//! length (`{"headers": [[name, value]…], "sealed_token": hex?}`), then the response body.
//! Records written before this format (no `MAGIC`) replay as before, without headers.

use crate::http::Reply;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderName;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use store::idempotency::StoredResponse;

const MAGIC: &[u8] = b"TNTRY-REPLY-2\n";

/// The key that seals tokens kept for replay.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

impl SealKey {
    /// Derived from the platform secret, for this one purpose.
    pub fn derive(platform_secret: &[u8]) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"tenantry/idempotency-token-seal/v1\0");
        h.update(platform_secret);
        Self(h.finalize().into())
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Header {
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_token: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What to keep of `reply`, answered under `aad` (the record's scope and key).
pub fn keep(reply: &Reply, key: &SealKey, aad: &str) -> StoredResponse {
    let mut header = Header {
        headers: reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.clone()))
            .collect(),
        sealed_token: None,
    };
    let mut body = reply.body.clone();
    if let Ok(serde_json::Value::Object(mut map)) =
        serde_json::from_slice::<serde_json::Value>(&reply.body)
        && let Some(serde_json::Value::String(token)) = map.get("token")
    {
        // 96 random bits: the first six bytes of two version-4 UUIDs are all random (the OS's
        // randomness, through `getrandom`); a nonce never repeats under one key in practice.
        let mut nonce = [0u8; 12];
        nonce[..6].copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..6]);
        nonce[6..].copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..6]);
        let sealed = key.cipher().encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: token.as_bytes(),
                aad: aad.as_bytes(),
            },
        );
        if let Ok(sealed) = sealed {
            let mut kept = nonce.to_vec();
            kept.extend_from_slice(&sealed);
            header.sealed_token = Some(hex(&kept));
        }
        // Whatever happens, the clear token is not stored.
        map.insert("token".into(), serde_json::Value::Null);
        body = serde_json::to_vec(&map).unwrap_or_default();
    }
    let header = serde_json::to_vec(&header).expect("the header serializes");
    let mut framed = Vec::with_capacity(MAGIC.len() + 4 + header.len() + body.len());
    framed.extend_from_slice(MAGIC);
    framed.extend_from_slice(&(header.len() as u32).to_le_bytes());
    framed.extend_from_slice(&header);
    framed.extend_from_slice(&body);
    StoredResponse {
        status: reply.status.as_u16(),
        content_type: reply.content_type.clone(),
        body: framed,
    }
}

/// The reply to answer a retry with.
pub fn replay(stored: StoredResponse, key: &SealKey, aad: &str) -> Reply {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let (header, body) = match unframe(&stored.body) {
        Some((header, body)) => (header, body.to_vec()),
        None => (Header::default(), stored.body),
    };
    let mut body = body;
    if let Some(sealed) = header.sealed_token.as_deref() {
        let token = unhex(sealed).filter(|b| b.len() > 12).and_then(|b| {
            let (nonce, sealed) = b.split_at(12);
            key.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: aad.as_bytes(),
                    },
                )
                .ok()
                .and_then(|t| String::from_utf8(t).ok())
        });
        if let Ok(serde_json::Value::Object(mut map)) =
            serde_json::from_slice::<serde_json::Value>(&body)
        {
            match token {
                Some(t) => {
                    map.insert("token".into(), serde_json::Value::String(t));
                }
                // The platform secret changed: say the token was issued without repeating it.
                None => {
                    map.insert("token_redacted".into(), serde_json::Value::Bool(true));
                }
            }
            body = serde_json::to_vec(&map).unwrap_or(body);
        }
    }
    let mut headers: Vec<(HeaderName, String)> = header
        .headers
        .into_iter()
        .filter_map(|(n, v)| Some((HeaderName::try_from(n).ok()?, v)))
        .collect();
    headers.push((
        HeaderName::from_static("idempotency-replayed"),
        "true".into(),
    ));
    Reply {
        status,
        content_type: stored.content_type,
        body,
        headers,
    }
}

fn unframe(bytes: &[u8]) -> Option<(Header, &[u8])> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(rest.get(4..4 + len)?).ok()?;
    Some((header, rest.get(4 + len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header;

    fn reply(body: serde_json::Value) -> Reply {
        Reply::json(StatusCode::CREATED, &body)
            .header(header::LOCATION, "/v1/members/1")
            .header(
                HeaderName::from_static("ratelimit"),
                "limit=10, remaining=9",
            )
    }

    #[test]
    fn a_replay_has_the_first_status_headers_and_token_and_the_store_never_sees_the_token() {
        let key = SealKey::derive(b"platform secret");
        let first = reply(serde_json::json!({"user_id": "u1", "token": "tnt_secret_value"}));
        let kept = keep(&first, &key, "tenant-1 POST user:1 key-1");
        assert!(
            !kept.body.windows(16).any(|w| w == b"tnt_secret_value"),
            "the clear token is not stored"
        );
        let again = replay(kept, &key, "tenant-1 POST user:1 key-1");
        assert_eq!(again.status, StatusCode::CREATED);
        let body: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
        assert_eq!(body["token"], "tnt_secret_value");
        assert_eq!(body["user_id"], "u1");
        let names: Vec<&str> = again.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["location", "ratelimit", "idempotency-replayed"]);
    }

    #[test]
    fn a_token_sealed_for_another_record_or_key_is_not_revealed() {
        let key = SealKey::derive(b"platform secret");
        let kept = keep(
            &reply(serde_json::json!({"token": "tnt_secret_value"})),
            &key,
            "record A",
        );
        for (k, aad) in [
            (SealKey::derive(b"another secret"), "record A"),
            (key, "record B"),
        ] {
            let body: serde_json::Value =
                serde_json::from_slice(&replay(kept.clone(), &k, aad).body).unwrap();
            assert_eq!(body["token"], serde_json::Value::Null);
            assert_eq!(body["token_redacted"], true);
        }
    }

    #[test]
    fn records_of_the_old_format_replay_their_body() {
        let key = SealKey::derive(b"s");
        let old = StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            body: br#"{"ok":true}"#.to_vec(),
        };
        let again = replay(old, &key, "x");
        assert_eq!(again.body, br#"{"ok":true}"#);
        assert_eq!(again.headers.len(), 1);
    }
}
