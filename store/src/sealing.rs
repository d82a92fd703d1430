//! Crypto-shredding (ADR 032): the personal fields of an event (`domain::personal::TABLE`) are
//! sealed at append with a key of their subject, kept in the store's `subject_keys` table (never
//! in an event), and unsealed on read. Erasing a key makes its fields read as
//! [`domain::personal::ERASED`] for good, while the stored bytes, and so every audit hash, stay.
//!
//! Key granularity: one key per tenant, subject, UTC day of `occurred_at` and event type (and a
//! generation, when a key of that day was erased and the subject writes again). Every event under
//! one key is of one type, so of one retention window, and its retention erasure never reaches an
//! event inside its window; a subject's erasure destroys all of the subject's keys.
//!
//! A sealed field is `{"$sealed": base64(nonce || ciphertext), "kid": key id}`: ChaCha20-Poly1305
//! with the event id and the field's JSON pointer as associated data (a sealed value moved to
//! another event or field does not open). The nonce is derived from the key, the event id, the
//! pointer and the plaintext, so sealing is deterministic: an append retried with the same event
//! ids writes the same bytes and the store's idempotent replay still recognises it.

use crate::envelope::{AppendRequest, Envelope, RawJson};
use crate::error::{Result, StoreError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use domain::TenantId;
use domain::personal::{self, ERASED, SEALED_VERSION_BASE};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The member of a sealed field's object that names its key.
pub const KEY_MEMBER: &str = "kid";

/// How long a key (or the fact that it was erased) is trusted from the cache. Another instance
/// that erases a key reaches this one's cache at most this late.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 100_000;

/// What the backends do with subject keys (all tenant-scoped).
#[derive(Clone, Debug)]
pub(crate) enum KeyOp {
    /// Insert each key unless one of its id exists; answer what is stored (`None`: erased).
    GetOrCreate { tenant: TenantId, keys: Vec<NewKey> },
    /// The stored keys of these ids (absent ids are left out; `None`: erased).
    Get { tenant: TenantId, ids: Vec<String> },
    /// The ids of the subject's keys not yet erased.
    OfSubject { tenant: TenantId, subject: String },
    /// Destroy these keys (their secret is overwritten with NULL). Answers how many were live.
    Erase { tenant: TenantId, ids: Vec<String> },
    /// Delete a stream's snapshots: they hold decoded state, personal fields in plaintext.
    DropSnapshots { tenant: TenantId, stream: String },
}

#[derive(Clone, Debug)]
pub(crate) struct NewKey {
    pub id: String,
    pub subject: String,
    pub day: String,
    pub event_type: String,
    pub secret: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum KeyAnswer {
    Keys(Vec<(String, Option<Vec<u8>>)>),
    Ids(Vec<String>),
    Count(u64),
}

type Secret = [u8; 32];
/// Whose key: (subject, UTC day, event type).
type KeyOf = (String, String, String);
/// An event to seal: its index, its payload, its present personal fields, its key.
type ToSeal = (usize, serde_json::Value, Vec<&'static str>, KeyOf);
/// A cached key (`None`: erased) and when it was read.
type Cached = (Option<Secret>, Instant);

/// The key cache of one store handle (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct Sealer {
    cache: Mutex<HashMap<(TenantId, String), Cached>>,
}

impl Sealer {
    fn cached(&self, tenant: TenantId, id: &str) -> Option<Option<Secret>> {
        let cache = self.cache.lock().expect("key cache");
        cache
            .get(&(tenant, id.to_owned()))
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(k, _)| *k)
    }

    fn remember(&self, tenant: TenantId, id: String, key: Option<Secret>) {
        let mut cache = self.cache.lock().expect("key cache");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert((tenant, id), (key, Instant::now()));
    }

    /// Forget keys (after they were erased here).
    pub(crate) fn forget(&self, tenant: TenantId, ids: &[String]) {
        let mut cache = self.cache.lock().expect("key cache");
        for id in ids {
            cache.remove(&(tenant, id.clone()));
        }
    }
}

fn secret_of(bytes: Option<Vec<u8>>) -> Result<Option<Secret>> {
    bytes
        .map(|b| {
            b.try_into()
                .map_err(|_| StoreError::Backend("a subject key is not 32 bytes".into()))
        })
        .transpose()
}

/// The id of the key of `subject`'s events of `event_type` on `day`, generation `generation`.
fn key_id(tenant: TenantId, subject: &str, day: &str, event_type: &str, generation: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"tenantry/subject-key/v1\0");
    h.update(tenant.as_uuid().as_bytes());
    for part in [subject, day, event_type] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(generation.to_be_bytes());
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn aad(event_id: &uuid::Uuid, pointer: &str) -> Vec<u8> {
    let mut a = b"tenantry/seal/v1\0".to_vec();
    a.extend_from_slice(event_id.as_bytes());
    a.extend_from_slice(pointer.as_bytes());
    a
}

/// Seal one field's JSON text.
fn seal_value(key: &Secret, event_id: &uuid::Uuid, pointer: &str, plain: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"tenantry/seal-nonce/v1\0");
    h.update(key);
    h.update(event_id.as_bytes());
    h.update(pointer.as_bytes());
    h.update([0]);
    h.update(plain);
    let digest = h.finalize();
    let nonce = Nonce::from_slice(&digest[..12]);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let sealed = cipher
        .encrypt(
            nonce,
            Payload {
                msg: plain,
                aad: &aad(event_id, pointer),
            },
        )
        .expect("sealing in memory cannot fail");
    let mut out = digest[..12].to_vec();
    out.extend_from_slice(&sealed);
    base64(&out)
}

/// Open one sealed field; `None` when it does not open (wrong key, event or field).
pub fn open_value(
    key: &[u8; 32],
    event_id: &uuid::Uuid,
    pointer: &str,
    sealed: &str,
) -> Option<Vec<u8>> {
    let raw = unbase64(sealed)?;
    if raw.len() < 12 + 16 {
        return None;
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(
            Nonce::from_slice(&raw[..12]),
            Payload {
                msg: &raw[12..],
                aad: &aad(event_id, pointer),
            },
        )
        .ok()
}

/// The key id and sealed text of a sealed field's value.
pub fn sealed_parts(value: &serde_json::Value) -> Option<(&str, &str)> {
    let o = value.as_object()?;
    Some((o.get(KEY_MEMBER)?.as_str()?, o.get("$sealed")?.as_str()?))
}

/// The key ids a stored (sealed) payload names, by field.
pub fn key_ids_of(event_type: &str, schema_version: u16, payload: &RawJson) -> Vec<String> {
    if !personal::is_sealed_version(schema_version) {
        return Vec::new();
    }
    let Some(row) = personal::fields_of(event_type) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(payload.as_str()) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = row
        .fields
        .iter()
        .filter_map(|f| sealed_parts(value.pointer(f)?).map(|(k, _)| k.to_owned()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn utc_day(t: time::OffsetDateTime) -> String {
    let d = t.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

impl crate::Store {
    /// Seal the personal fields of `request`'s events (those of `domain::personal::TABLE` not
    /// sealed yet), making their subjects' keys where needed. Keys are durable before the
    /// append is queued.
    pub(crate) async fn seal(&self, mut request: AppendRequest) -> Result<AppendRequest> {
        if !request
            .events
            .iter()
            .any(|e| personal::fields_of(&e.event_type).is_some())
        {
            return Ok(request);
        }
        let tenant = request.tenant_id;
        let now = crate::envelope::now_micros();
        // First the events to seal and their keys' (subject, day, type); then every key the
        // append needs, resolved at once (one store round trip for those not cached: a CSV of
        // 10,000 invites is 10,000 subjects); then the sealing.
        let mut todo: Vec<ToSeal> = Vec::new();
        for (i, e) in request.events.iter().enumerate() {
            let Some(row) = personal::fields_of(&e.event_type) else {
                continue;
            };
            if personal::is_sealed_version(e.schema_version) {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(e.payload.as_str())
                .map_err(|err| StoreError::InvalidAppend(err.to_string()))?;
            let present: Vec<&'static str> = row
                .fields
                .iter()
                .copied()
                .filter(|f| value.pointer(f).is_some_and(|v| !v.is_null()))
                .collect();
            if present.is_empty() {
                continue;
            }
            let actor = &e.metadata.as_ref().unwrap_or(&request.metadata).actor;
            let subject = personal::subject_of(row, &value, actor)
                .unwrap_or_else(|| format!("event:{}", e.event_id));
            let day = utc_day(e.occurred_at.unwrap_or(now));
            todo.push((i, value, present, (subject, day, e.event_type.clone())));
        }
        let mut wanted: Vec<KeyOf> = todo.iter().map(|t| t.3.clone()).collect();
        wanted.sort();
        wanted.dedup();
        let keys = self.live_keys(tenant, wanted).await?;
        for (i, mut value, present, which) in todo {
            let e = &mut request.events[i];
            let (id, key) = keys.get(&which).expect("every wanted key is resolved");
            for f in present {
                let slot = value.pointer_mut(f).expect("present above");
                let plain = serde_json::to_vec(slot).expect("a JSON value serializes");
                let sealed = seal_value(key, &e.event_id, f, &plain);
                *slot = serde_json::json!({ "$sealed": sealed, KEY_MEMBER: id });
            }
            e.payload = RawJson::from_value(&value);
            e.schema_version = e
                .schema_version
                .checked_add(SEALED_VERSION_BASE)
                .ok_or_else(|| {
                    StoreError::InvalidAppend(format!(
                        "{} v{} cannot be sealed",
                        e.event_type, e.schema_version
                    ))
                })?;
        }
        Ok(request)
    }

    /// The live key of each (subject, day, event type): the first generation not erased, made
    /// where missing. Keys not cached are read or made in one store operation per generation.
    async fn live_keys(
        &self,
        tenant: TenantId,
        wanted: Vec<KeyOf>,
    ) -> Result<HashMap<KeyOf, (String, Secret)>> {
        let mut out = HashMap::with_capacity(wanted.len());
        let mut pending: Vec<(KeyOf, u32)> = wanted.into_iter().map(|w| (w, 0)).collect();
        while !pending.is_empty() {
            let mut ask = Vec::new();
            let mut next = Vec::new();
            for (w, generation) in pending {
                if generation >= 1_000 {
                    return Err(StoreError::Backend(format!(
                        "every key of {} on {} was erased",
                        w.0, w.1
                    )));
                }
                let id = key_id(tenant, &w.0, &w.1, &w.2, generation);
                match self.sealer.cached(tenant, &id) {
                    Some(Some(k)) => {
                        out.insert(w, (id, k));
                    }
                    Some(None) => next.push((w, generation + 1)),
                    None => ask.push((w, generation, id)),
                }
            }
            if !ask.is_empty() {
                let mut keys = Vec::with_capacity(ask.len());
                for (w, _, id) in &ask {
                    let mut secret = vec![0u8; 32];
                    getrandom::getrandom(&mut secret).map_err(StoreError::backend)?;
                    keys.push(NewKey {
                        id: id.clone(),
                        subject: w.0.clone(),
                        day: w.1.clone(),
                        event_type: w.2.clone(),
                        secret,
                    });
                }
                let KeyAnswer::Keys(rows) =
                    self.key_op(KeyOp::GetOrCreate { tenant, keys }).await?
                else {
                    return Err(StoreError::Backend("unexpected key answer".into()));
                };
                let mut stored: HashMap<String, Option<Secret>> = HashMap::new();
                for (id, secret) in rows {
                    stored.insert(id, secret_of(secret)?);
                }
                for (w, generation, id) in ask {
                    let secret = *stored
                        .get(&id)
                        .ok_or_else(|| StoreError::Backend(format!("the key {id} was not kept")))?;
                    self.sealer.remember(tenant, id.clone(), secret);
                    match secret {
                        Some(k) => {
                            out.insert(w, (id, k));
                        }
                        None => next.push((w, generation + 1)),
                    }
                }
            }
            pending = next;
        }
        Ok(out)
    }

    /// Unseal the sealed payloads of `events` (back to their plaintext schema version); an
    /// erased field reads as [`ERASED`]. A sealed field whose key is missing, or that does not
    /// open with its key, fails the read: it is never shown as erased by mistake.
    pub(crate) async fn unseal(&self, mut events: Vec<Envelope>) -> Result<Vec<Envelope>> {
        if !events
            .iter()
            .any(|e| personal::is_sealed_version(e.schema_version))
        {
            return Ok(events);
        }
        // The keys the batch needs that the cache does not hold, per tenant.
        // Known keys (`None`: erased), from the cache or the store.
        let mut known: HashMap<(TenantId, String), Option<Secret>> = HashMap::new();
        let mut missing: HashMap<TenantId, Vec<String>> = HashMap::new();
        // Each sealed payload is parsed once, here, and opened below.
        let mut parsed: Vec<Option<serde_json::Value>> = Vec::with_capacity(events.len());
        for e in &events {
            let row = personal::fields_of(&e.event_type);
            let (true, Some(row)) = (personal::is_sealed_version(e.schema_version), row) else {
                parsed.push(None);
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(e.payload.as_str())
                .map_err(|err| StoreError::Backend(err.to_string()))?;
            let ids: Vec<String> = row
                .fields
                .iter()
                .filter_map(|f| sealed_parts(value.pointer(f)?).map(|(k, _)| k.to_owned()))
                .collect();
            parsed.push(Some(value));
            for id in ids {
                let k = (e.tenant_id, id);
                if known.contains_key(&k) {
                    continue;
                }
                match self.sealer.cached(k.0, &k.1) {
                    Some(secret) => {
                        known.insert(k, secret);
                    }
                    None => missing.entry(k.0).or_default().push(k.1),
                }
            }
        }
        for (tenant, mut ids) in missing {
            ids.sort();
            ids.dedup();
            let answer = self.key_op(KeyOp::Get { tenant, ids }).await?;
            let KeyAnswer::Keys(rows) = answer else {
                return Err(StoreError::Backend("unexpected key answer".into()));
            };
            for (id, secret) in rows {
                let secret = secret_of(secret)?;
                self.sealer.remember(tenant, id.clone(), secret);
                known.insert((tenant, id), secret);
            }
        }
        for (e, value) in events.iter_mut().zip(parsed) {
            if !personal::is_sealed_version(e.schema_version) {
                continue;
            }
            let (Some(row), Some(mut value)) = (personal::fields_of(&e.event_type), value) else {
                return Err(StoreError::Backend(format!(
                    "{} v{} at position {} is sealed but has no personal fields",
                    e.event_type, e.schema_version, e.global_position
                )));
            };
            for f in row.fields {
                let Some(slot) = value.pointer_mut(f) else {
                    continue;
                };
                let Some((id, sealed)) = sealed_parts(slot) else {
                    continue;
                };
                let k = (e.tenant_id, id.to_owned());
                // Not found in the store: a key that never existed is no erasure.
                let Some(key) = known.get(&k).copied() else {
                    return Err(StoreError::Backend(format!(
                        "the key of {}{f} at position {} is missing",
                        e.event_type, e.global_position
                    )));
                };
                *slot = match key {
                    None => serde_json::Value::String(ERASED.to_owned()),
                    Some(key) => {
                        let plain = open_value(&key, &e.event_id, f, sealed).ok_or_else(|| {
                            StoreError::Backend(format!(
                                "{}{f} at position {} does not open with its key",
                                e.event_type, e.global_position
                            ))
                        })?;
                        serde_json::from_slice(&plain)
                            .map_err(|err| StoreError::Backend(err.to_string()))?
                    }
                };
            }
            e.payload = RawJson::from_value(&value);
            e.schema_version -= SEALED_VERSION_BASE;
        }
        Ok(events)
    }

    /// The ids of `subject`'s keys in `tenant` that are not erased yet.
    pub async fn subject_key_ids(&self, tenant: TenantId, subject: &str) -> Result<Vec<String>> {
        match self
            .key_op(KeyOp::OfSubject {
                tenant,
                subject: subject.to_owned(),
            })
            .await?
        {
            KeyAnswer::Ids(ids) => Ok(ids),
            _ => Err(StoreError::Backend("unexpected key answer".into())),
        }
    }

    /// Destroy subject keys for good (crypto-shredding): the fields they sealed read as erased
    /// from now on, on this instance at once and on others within the key cache's 30 seconds.
    /// Erasing an erased or unknown key does nothing. Answers how many keys were live.
    pub async fn erase_subject_keys(&self, tenant: TenantId, ids: Vec<String>) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let answer = self
            .key_op(KeyOp::Erase {
                tenant,
                ids: ids.clone(),
            })
            .await;
        self.sealer.forget(tenant, &ids);
        match answer? {
            KeyAnswer::Count(n) => Ok(n),
            _ => Err(StoreError::Backend("unexpected key answer".into())),
        }
    }

    /// Delete every snapshot of a stream (after an erasure: a snapshot is decoded state, so it
    /// holds the plaintext the erasure destroyed; the stream reloads from its events).
    pub async fn drop_snapshots(&self, tenant: TenantId, stream: &str) -> Result<()> {
        self.key_op(KeyOp::DropSnapshots {
            tenant,
            stream: stream.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// The stored secret of a subject key (`None` when erased or unknown), bypassing the cache:
    /// for tests and tools that check a key is really gone.
    pub async fn subject_key(&self, tenant: TenantId, id: &str) -> Result<Option<[u8; 32]>> {
        match self
            .key_op(KeyOp::Get {
                tenant,
                ids: vec![id.to_owned()],
            })
            .await?
        {
            KeyAnswer::Keys(rows) => Ok(rows
                .into_iter()
                .next()
                .and_then(|(_, k)| k)
                .map(|k| k.try_into().unwrap_or([0; 32]))),
            _ => Err(StoreError::Backend("unexpected key answer".into())),
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &c in chunk {
            n <<= 6;
            if c == b'=' {
                pad += 1;
            } else {
                n |= ALPHABET.iter().position(|a| *a == c)? as u32;
            }
        }
        if pad > 2 {
            return None;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).collect();
            assert_eq!(unbase64(&base64(&data)), Some(data));
        }
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_event_and_field() {
        let key = [7u8; 32];
        let id = uuid::Uuid::from_u128(1);
        let sealed = seal_value(&key, &id, "/email", br#""a@b.c""#);
        assert_eq!(
            seal_value(&key, &id, "/email", br#""a@b.c""#),
            sealed,
            "deterministic"
        );
        assert_eq!(
            open_value(&key, &id, "/email", &sealed).unwrap(),
            br#""a@b.c""#
        );
        assert!(open_value(&[8u8; 32], &id, "/email", &sealed).is_none());
        assert!(open_value(&key, &uuid::Uuid::from_u128(2), "/email", &sealed).is_none());
        assert!(open_value(&key, &id, "/name", &sealed).is_none());
    }
}
