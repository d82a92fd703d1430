//! The audit log's use cases (issue 12, ADR 020, ADR 023): the keyring (a log key that signs
//! checkpoints and a separate export key that signs bundle manifests, kept as platform blobs and
//! announced by `audit.key_activated` events), key rotation, the signed checkpoint of a tenant's
//! tree, and audit bundles streamed to a temporary file with `audit::BundleWriter`.
//!
//! The tree itself is the `AuditTree` projection; a bundle re-reads the range's events raw (no
//! upcasting: the bytes hashed are the bytes stored) and refuses to sign if any of them does not
//! give the leaf the tree holds.

use crate::{App, Ctx, Error};
use audit::{
    BundleKeys, BundleSpec, BundleWriter, Checkpoint, LeafHeader, LogKey, SignedCheckpoint,
    SigningKey, StoredEvent, VerifyingKey,
};
use commands::ExecuteError;
use domain::TenantId;
use domain::audit::{
    AuditCommand, AuditError, AuditLog, BUNDLES_STREAM, BundleExported, CheckpointSigned,
    KEYS_STREAM, KeyActivated, KeyKind, RETENTION_STREAM, RetentionPolicySet, checkpoints_stream,
};
use projections::{TreeView, leaf_header};
use std::io::{Seek, SeekFrom, Write};
use store::Envelope;
use time::OffsetDateTime;

/// The log key's name: the first part of every checkpoint's origin (`{name}/{tenant id}`) and the
/// name on its signature line. Kept across rotations; the key id tells keys apart.
pub const LOG_NAME: &str = "tenantry.dev/audit";
/// The export key's display name (a manifest's signature is raw: it carries no name).
pub const EXPORT_NAME: &str = "tenantry.dev/audit-export";

/// A tenant's checkpoint is recorded once its tree grew by this many events…
pub const CHECKPOINT_EVERY_EVENTS: u64 = 1_000;
/// …or, when it grew less, this long after the last one.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// How often the recorder looks at the trees.
const CHECKPOINT_TICK: std::time::Duration = std::time::Duration::from_secs(10);

/// How many earlier bundles' tree sizes a bundle proves consistency from.
const KNOWN_SIZES: usize = 16;
/// The name of the tree's projection (`projections::AuditTree`).
const TREE: &str = "audit_tree";
/// Events read from the store per round trip while a bundle is written.
const READ_CHUNK: usize = 4_096;

/// A public key of the keyring, as `GET /v1/audit/keys` shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub kind: KeyKind,
    pub generation: u32,
    pub name: String,
    pub key_id: String,
    /// The 32-byte public key, base64.
    pub public_key: String,
    /// SubjectPublicKeyInfo PEM (what `openssl pkeyutl -pubin` and `tenantry-verify --key` read).
    pub pem: String,
    /// The C2SP signed-note verifier key `name+keyid+base64(0x01 || key)` (log keys only).
    pub vkey: Option<String>,
    /// Whether this is the key of its kind in force (the others were rotated out).
    pub current: bool,
}

/// A tenant's signed checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub tenant: TenantId,
    pub origin: String,
    pub size: u64,
    /// The root, base64.
    pub root: String,
    /// The whole C2SP signed note.
    pub note: String,
    pub key_id: String,
}

/// A written bundle: an unnamed temporary file (gone when closed), rewound, and what it holds.
#[derive(Debug)]
pub struct Bundle {
    pub file: std::fs::File,
    pub bytes: u64,
    pub bundle_id: String,
    pub event_count: u64,
    pub tree_size: u64,
    pub manifest_sha256: String,
    /// The position of the `audit.bundle_exported` event that records it.
    pub position: u64,
}

fn audit_error(e: ExecuteError<AuditError>) -> Error {
    match e {
        ExecuteError::Domain(AuditError::InvalidPolicy(problems)) => Error::Validation(problems),
        ExecuteError::Domain(d) => Error::Conflict {
            slug: "audit-conflict",
            detail: d.to_string(),
        },
        ExecuteError::Store(s) => Error::Store(s),
        ExecuteError::Decode(d) => {
            tracing::error!(error = %d, "stored audit event cannot be decoded");
            Error::Decode(d.to_string())
        }
        ExecuteError::TooManyConflicts { .. } => Error::Busy,
    }
}

fn internal(what: impl std::fmt::Display) -> Error {
    tracing::error!(error = %what, "audit");
    Error::Internal(what.to_string())
}

/// The platform blob that keeps a key's 32-byte Ed25519 seed.
fn blob_id(kind: KeyKind, generation: u32) -> String {
    format!("audit-key-{}-{generation}", kind.as_str())
}

fn name_of(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Log => LOG_NAME,
        KeyKind::Export => EXPORT_NAME,
    }
}

fn key_id_of(kind: KeyKind, public: &VerifyingKey) -> String {
    match kind {
        KeyKind::Log => audit::hex(&audit::key_id(LOG_NAME, public)),
        KeyKind::Export => audit::hex(&audit::sha256(public.as_bytes())[..4]),
    }
}

fn info(k: &KeyActivated, current: bool) -> Result<KeyInfo, Error> {
    let public = decode_public(&k.public_key)?;
    let vkey = (k.kind == KeyKind::Log).then(|| {
        let mut raw = vec![0x01];
        raw.extend_from_slice(public.as_bytes());
        format!("{}+{}+{}", k.name, k.key_id, audit::base64(&raw))
    });
    Ok(KeyInfo {
        kind: k.kind,
        generation: k.generation,
        name: k.name.clone(),
        key_id: k.key_id.clone(),
        public_key: k.public_key.clone(),
        pem: audit::public_key_pem(&public),
        vkey,
        current,
    })
}

fn decode_public(b64: &str) -> Result<VerifyingKey, Error> {
    let bytes = base64_decode(b64).ok_or_else(|| internal("a keyring public key is not base64"))?;
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| internal("a keyring public key is not 32 bytes"))?;
    VerifyingKey::from_bytes(&raw).map_err(internal)
}

/// Standard padded base64, the one spelling `audit::base64` writes.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    (audit::base64(&out) == s).then_some(out)
}

/// The keyring as the log has it, with a first log key and a first export key made if the log
/// has none yet (the first instance to ask writes them; the others find them).
async fn keyring(app: &App, ctx: &Ctx) -> Result<AuditLog, Error> {
    let (mut state, _) = app
        .audit_log
        .load(TenantId::PLATFORM, KEYS_STREAM)
        .await
        .map_err(audit_error)?;
    for kind in KeyKind::ALL {
        if state.current(kind).is_none() {
            activate(app, ctx, kind, 1).await?;
            state = app
                .audit_log
                .load(TenantId::PLATFORM, KEYS_STREAM)
                .await
                .map_err(audit_error)?
                .0;
        }
    }
    Ok(state)
}

/// Make (or find) the key of `kind` at `generation` and put it in force. The seed is a platform
/// blob written only if absent, so concurrent activations of one generation agree on the key;
/// the loser of the event's append finds the winner's event, which names the same key.
async fn activate(
    app: &App,
    ctx: &Ctx,
    kind: KeyKind,
    generation: u32,
) -> Result<(KeyActivated, u64), Error> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(internal)?;
    let stored = app
        .store
        .put_blob_if_absent(
            TenantId::PLATFORM,
            &blob_id(kind, generation),
            seed.to_vec(),
        )
        .await?;
    let key = signing_key_from(&stored)?;
    let public = key.verifying_key();
    let event = KeyActivated {
        kind,
        generation,
        name: name_of(kind).to_owned(),
        key_id: key_id_of(kind, &public),
        public_key: audit::base64(public.as_bytes()),
    };
    let meta = store::Metadata {
        event_id_seed: None,
        ..ctx.meta.clone()
    };
    match app
        .audit_log
        .execute(
            TenantId::PLATFORM,
            KEYS_STREAM,
            &AuditCommand::ActivateKey(event.clone()),
            &meta,
            ctx.now,
        )
        .await
    {
        Ok(done) => {
            let position = app.settled(&done.appended).await;
            Ok((event, position))
        }
        Err(ExecuteError::Domain(AuditError::NotNextGeneration { current, .. }))
            if current >= generation =>
        {
            let (state, _) = app
                .audit_log
                .load(TenantId::PLATFORM, KEYS_STREAM)
                .await
                .map_err(audit_error)?;
            let theirs = state
                .keys
                .iter()
                .find(|k| k.kind == kind && k.generation == generation)
                .cloned()
                .ok_or_else(|| internal("a key generation vanished from the keyring"))?;
            if theirs.public_key != event.public_key {
                return Err(internal(format!(
                    "the keyring's {kind:?} key {generation} is not the one in its blob"
                )));
            }
            Ok((theirs, 0))
        }
        Err(e) => Err(audit_error(e)),
    }
}

fn signing_key_from(seed: &[u8]) -> Result<SigningKey, Error> {
    let raw: [u8; 32] = seed
        .try_into()
        .map_err(|_| internal("an audit key blob is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(&raw))
}

/// The private half of a keyring key, checked against the public key its event announced.
async fn signing_key(app: &App, k: &KeyActivated) -> Result<SigningKey, Error> {
    let seed = app
        .store
        .get_blob(TenantId::PLATFORM, &blob_id(k.kind, k.generation))
        .await?
        .ok_or_else(|| internal(format!("the {:?} key {} is missing", k.kind, k.generation)))?;
    let key = signing_key_from(&seed)?;
    if audit::base64(key.verifying_key().as_bytes()) != k.public_key {
        return Err(internal(format!(
            "the {:?} key {}'s blob does not match its public key",
            k.kind, k.generation
        )));
    }
    Ok(key)
}

/// Every key of the keyring, the rotated ones included, current ones marked.
pub async fn keys(app: &App, ctx: &Ctx) -> Result<Vec<KeyInfo>, Error> {
    let state = keyring(app, ctx).await?;
    state
        .keys
        .iter()
        .map(|k| {
            info(
                k,
                state.current(k.kind).map(|c| c.generation) == Some(k.generation),
            )
        })
        .collect()
}

/// Rotate the key of `kind`: a new generation is made and put in force; the old public key
/// stays in the keyring, and what it signed still verifies against it.
pub async fn rotate_key(app: &App, ctx: &Ctx, kind: KeyKind) -> Result<(KeyInfo, u64), Error> {
    let state = keyring(app, ctx).await?;
    // Concurrent rotations of one generation agree on its key (the blob is written if absent) and
    // the loser of the append answers with the winner's key: one rotation, never two keys
    // announced for one generation or a blob that no longer matches its event.
    let (event, position) = activate(app, ctx, kind, state.generation(kind) + 1).await?;
    Ok((info(&event, true)?, position))
}

/// Wait (bounded) until this instance's tree has every event committed so far: a checkpoint or a
/// bundle signs the tree as of the request, never an older one.
pub(crate) async fn current_tree(app: &App) -> Result<(), Error> {
    let head = app.store.head().await?;
    // Only the tree matters here: another read model stopped or late must not stop the audit.
    if !app
        .projections
        .catch_up_one(TREE, app.config.read_wait)
        .await
    {
        if let Some(u) = app.projections.stopped(TREE) {
            return Err(internal(format!(
                "the audit tree stopped at position {} ({}): {}",
                u.position, u.event_type, u.reason
            )));
        }
        return Err(Error::NotCaughtUp { position: head });
    }
    Ok(())
}

fn sign(
    log: &LogKey,
    tenant: TenantId,
    size: u64,
    root: audit::Hash,
) -> Result<SignedCheckpoint, Error> {
    let origin = audit::origin(LOG_NAME, &tenant.as_uuid().to_string()).map_err(internal)?;
    Ok(log.sign(Checkpoint { origin, size, root }))
}

async fn log_key(app: &App, ring: &AuditLog) -> Result<LogKey, Error> {
    let k = ring
        .current(KeyKind::Log)
        .ok_or_else(|| internal("no log key"))?;
    LogKey::new(LOG_NAME, signing_key(app, k).await?).map_err(internal)
}

/// The signed checkpoint of `tenant`'s tree as of now. A checkpoint handed out is recorded too
/// (`audit.checkpoint_signed`, unless that size is recorded already), so that the tenant's next
/// bundles prove consistency from it and whoever keeps it can detect a forked log.
pub async fn checkpoint(app: &App, ctx: &Ctx, tenant: TenantId) -> Result<CheckpointInfo, Error> {
    let ring = keyring(app, ctx).await?;
    let log = log_key(app, &ring).await?;
    current_tree(app).await?;
    let (size, root) = app.audit_tree.head(tenant);
    let signed = sign(&log, tenant, size, root)?;
    if size > 0 {
        let event = CheckpointSigned {
            tenant_id: tenant,
            size,
            root: audit::base64(&root),
            key_id: audit::hex(&log.key_id()),
            note: signed.note.clone(),
        };
        match app
            .audit_log
            .execute(
                TenantId::PLATFORM,
                &checkpoints_stream(tenant),
                &AuditCommand::RecordCheckpoint(event),
                &ctx.meta,
                ctx.now,
            )
            .await
        {
            Ok(done) => {
                app.committed(&done.appended);
            }
            Err(ExecuteError::Domain(AuditError::CheckpointNotNewer { .. })) => {}
            Err(e) => return Err(audit_error(e)),
        }
    }
    Ok(CheckpointInfo {
        tenant,
        origin: signed.checkpoint.origin.clone(),
        size,
        root: audit::base64(&root),
        note: signed.note,
        key_id: audit::hex(&log.key_id()),
    })
}

/// Sign and record `tenant`'s checkpoint if its tree grew enough since the last recorded one
/// (`last`: its size and when it was recorded, `None` when this process has not looked yet).
/// Answers the last recorded checkpoint's size and time as they are now, for the next call.
pub async fn record_checkpoint(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    size: u64,
    last: Option<(u64, std::time::Instant)>,
) -> Result<(u64, std::time::Instant), Error> {
    let stream = checkpoints_stream(tenant);
    let (recorded_size, since) = match last {
        Some(l) => l,
        None => {
            let (state, _) = app
                .audit_log
                .load(TenantId::PLATFORM, &stream)
                .await
                .map_err(audit_error)?;
            // What was recorded before this process started counts as recorded just now: the
            // time rule then waits a full period after a restart.
            (
                state.checkpoint_sizes.last().copied().unwrap_or(0),
                std::time::Instant::now(),
            )
        }
    };
    let grown = size.saturating_sub(recorded_size);
    let due =
        grown >= CHECKPOINT_EVERY_EVENTS || (grown > 0 && since.elapsed() >= CHECKPOINT_EVERY);
    if !due {
        return Ok((recorded_size, since));
    }
    let ring = keyring(app, ctx).await?;
    let log = log_key(app, &ring).await?;
    // The size asked for may be behind the tree now: sign what the tree holds.
    let (size, root) = app.audit_tree.head(tenant);
    let signed = sign(&log, tenant, size, root)?;
    let event = CheckpointSigned {
        tenant_id: tenant,
        size,
        root: audit::base64(&root),
        key_id: audit::hex(&log.key_id()),
        note: signed.note,
    };
    match app
        .audit_log
        .execute(
            TenantId::PLATFORM,
            &stream,
            &AuditCommand::RecordCheckpoint(event),
            &ctx.meta,
            ctx.now,
        )
        .await
    {
        Ok(done) => {
            app.committed(&done.appended);
            Ok((size, std::time::Instant::now()))
        }
        // Another instance recorded this size (or a later one) first.
        Err(ExecuteError::Domain(AuditError::CheckpointNotNewer { recorded, .. })) => {
            Ok((recorded, std::time::Instant::now()))
        }
        Err(e) => Err(audit_error(e)),
    }
}

/// Record checkpoints on a timer for as long as `app` lives: every tenant whose tree grew by
/// [`CHECKPOINT_EVERY_EVENTS`], or grew at all in [`CHECKPOINT_EVERY`]. The platform tenant's
/// own tree is left out: it holds the recorded checkpoints, so recording it would never end.
pub fn start_checkpoint_recorder(app: &std::sync::Arc<App>) {
    let weak = std::sync::Arc::downgrade(app);
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<TenantId, (u64, std::time::Instant)> =
            std::collections::HashMap::new();
        loop {
            tokio::time::sleep(CHECKPOINT_TICK).await;
            let Some(app) = weak.upgrade() else { return };
            for (tenant, size) in app.audit_tree.sizes() {
                if tenant == TenantId::PLATFORM {
                    continue;
                }
                let ctx = app.ctx(store::Metadata::actor("system:audit-checkpoints"));
                match record_checkpoint(&app, &ctx, tenant, size, last.get(&tenant).copied()).await
                {
                    Ok(now) => {
                        last.insert(tenant, now);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        tenant = %tenant.as_uuid(),
                        "checkpoint not recorded"
                    ),
                }
            }
        }
    });
}

/// `tenant` as it was at `at` (every event recorded at or before it), rebuilt from the log's raw
/// events by the same fold `tenantry-verify replay` runs over a bundle (`domain::replay`). Each
/// event read is checked against its leaf in the tree first.
pub async fn state_at(
    app: &App,
    tenant: TenantId,
    at: OffsetDateTime,
) -> Result<domain::replay::TenantState, Error> {
    let at_us = micros(at);
    current_tree(app).await?;
    let view = app.audit_tree.view(&app.store, tenant).await?;
    let end = view.first_at_or_after(at_us.saturating_add(1));
    let raw = app.store.raw();
    let mut replay = domain::replay::Replay::new();
    let mut sequence = 0u64;
    while sequence < end {
        let upto = (sequence + READ_CHUNK as u64).min(end);
        let positions = view.positions[sequence as usize..upto as usize].to_vec();
        let events = raw.read_positions(positions).await?;
        if events.len() as u64 != upto - sequence {
            return Err(internal("events of the tenant are missing from the log"));
        }
        for (e, s) in events.iter().zip(sequence..) {
            stored_event(e, tenant, s, &view).map_err(internal)?;
            replay
                .apply(
                    s,
                    &e.stream_id,
                    &e.event_type,
                    e.schema_version,
                    e.payload.as_bytes(),
                )
                .map_err(|err| Error::Decode(err.to_string()))?;
        }
        sequence = upto;
    }
    Ok(replay.state(&tenant.as_uuid().to_string(), at_us))
}

/// Set `tenant`'s retention policy (the whole policy; the last one set is in force). Answers the
/// position written (0 when it equals the policy in force).
pub async fn set_retention(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    policy: RetentionPolicySet,
) -> Result<u64, Error> {
    let done = app
        .audit_log
        .execute(
            tenant,
            RETENTION_STREAM,
            &AuditCommand::SetRetention(policy),
            &ctx.meta,
            ctx.now,
        )
        .await
        .map_err(audit_error)?;
    Ok(app.settled(&done.appended).await)
}

/// The tenant's last `retention.policy_set` inside the tree of `view`, read raw and checked
/// against its leaf: what a bundle proves its retention with.
async fn policy_in_tree(
    raw: &store::Store,
    tenant: TenantId,
    view: &TreeView,
) -> Result<Option<StoredEvent>, Error> {
    let events = raw
        .read_stream(tenant, RETENTION_STREAM, 1, usize::MAX)
        .await?;
    let Some(e) = events
        .iter()
        .rev()
        .filter(|e| e.event_type == audit::POLICY_EVENT_TYPE)
        .find(|e| view.positions.binary_search(&e.global_position).is_ok())
    else {
        return Ok(None);
    };
    let sequence = view
        .positions
        .binary_search(&e.global_position)
        .expect("found above") as u64;
    let header = stored_event(e, tenant, sequence, view).map_err(internal)?;
    Ok(Some(StoredEvent {
        header,
        payload: Some(e.payload.as_bytes().to_vec()),
    }))
}

/// The tenant's `erasure.applied` events inside the tree of `view` that erased an event of
/// `first..=last` or are themselves in it, read raw and checked against their leaves: the
/// erasures a bundle of that range proves its retention with.
async fn erasures_in_tree(
    raw: &store::Store,
    tenant: TenantId,
    view: &TreeView,
    first: u64,
    last: u64,
) -> Result<Vec<StoredEvent>, Error> {
    let events = raw
        .read_stream(tenant, domain::audit::ERASURES_STREAM, 1, usize::MAX)
        .await?;
    let mut out = Vec::new();
    for e in events
        .iter()
        .filter(|e| e.event_type == audit::ERASURE_EVENT_TYPE)
    {
        let Ok(sequence) = view.positions.binary_search(&e.global_position) else {
            continue;
        };
        let sequence = sequence as u64;
        let erasure: audit::Erasure = serde_json::from_str(e.payload.as_str()).map_err(internal)?;
        let own = (first..=last).contains(&sequence);
        if own || erasure.sequences.iter().any(|s| (first..=last).contains(s)) {
            let header = stored_event(e, tenant, sequence, view).map_err(internal)?;
            out.push(StoredEvent {
                header,
                payload: Some(e.payload.as_bytes().to_vec()),
            });
        }
    }
    Ok(out)
}

/// Why reading the range's events for a bundle stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReadError(String);

/// `e`, read raw, as the leaf at `sequence` of `view`: its leaf hash must be the tree's.
fn stored_event(
    e: &Envelope,
    tenant: TenantId,
    sequence: u64,
    view: &TreeView,
) -> Result<LeafHeader, ReadError> {
    let i = sequence as usize;
    if e.tenant_id != tenant || e.global_position != view.positions[i] {
        return Err(ReadError(format!(
            "the log's event at position {} is not leaf {sequence} of the tree",
            e.global_position
        )));
    }
    let header = leaf_header(e, sequence);
    let hash = header
        .leaf_hash()
        .map_err(|err| ReadError(err.to_string()))?;
    if hash != view.leaves[i] {
        return Err(ReadError(format!(
            "the event at position {} does not hash to the tree's leaf {sequence}",
            e.global_position
        )));
    }
    Ok(header)
}

/// Read the leaves at `sequences` (a few, for the boundaries) raw.
async fn headers_at(
    raw: &store::Store,
    tenant: TenantId,
    view: &TreeView,
    sequences: &[u64],
) -> Result<Vec<LeafHeader>, Error> {
    let positions: Vec<u64> = sequences
        .iter()
        .map(|s| view.positions[*s as usize])
        .collect();
    let events = raw.read_positions(positions).await?;
    if events.len() != sequences.len() {
        return Err(internal("a boundary event is missing from the log"));
    }
    sequences
        .iter()
        .zip(&events)
        .map(|(s, e)| stored_event(e, tenant, *s, view).map_err(internal))
        .collect()
}

/// Write the audit bundle of `tenant`'s events recorded in `[from, to)`, proven against a
/// checkpoint signed now, into an unnamed temporary file; record it as `audit.bundle_exported`.
pub async fn bundle(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Bundle, Error> {
    let (from_us, to_us) = (micros(from), micros(to));
    if from_us >= to_us {
        return Err(Error::field("to", "must be after `from`"));
    }
    let ring = keyring(app, ctx).await?;
    let log = log_key(app, &ring).await?;
    let export_info = ring
        .current(KeyKind::Export)
        .ok_or_else(|| internal("no export key"))?;
    let export = signing_key(app, export_info).await?;
    current_tree(app).await?;
    let view = app.audit_tree.view(&app.store, tenant).await?;
    let first = view.first_at_or_after(from_us);
    let end = view.first_at_or_after(to_us);
    if first >= end {
        return Err(Error::field(
            "to",
            "no event of the tenant was recorded in [from, to); empty ranges are not bundled",
        ));
    }
    let last = end - 1;
    let checkpoint = sign(&log, tenant, view.size, view.root)?;
    // The audit read never upcasts: a handle on the same store without upcasters.
    let raw = app.store.raw();
    let before = match first {
        0 => None,
        s => headers_at(&raw, tenant, &view, &[s - 1]).await?.pop(),
    };
    let after = match end < view.size {
        true => headers_at(&raw, tenant, &view, &[end]).await?.pop(),
        false => None,
    };
    let (history, _) = app
        .audit_log
        .load(tenant, BUNDLES_STREAM)
        .await
        .map_err(audit_error)?;
    let (recorded, _) = app
        .audit_log
        .load(TenantId::PLATFORM, &checkpoints_stream(tenant))
        .await
        .map_err(audit_error)?;
    let policy = policy_in_tree(&raw, tenant, &view).await?;
    let erasures = erasures_in_tree(&raw, tenant, &view, first, last).await?;
    let previous_bundle_id = history.bundles.last().map(|b| b.bundle_id.clone());
    // Consistency from the last bundles' trees and the last recorded checkpoints: whoever holds
    // one of them can check this bundle's tree extends it.
    let mut known_sizes: Vec<u64> = history
        .bundles
        .iter()
        .rev()
        .map(|b| b.tree_size)
        .take(KNOWN_SIZES)
        .chain(recorded.checkpoint_sizes.iter().copied())
        .filter(|s| *s > 0 && *s <= view.size)
        .collect();
    known_sizes.sort_unstable();
    known_sizes.dedup();
    let bundle_id = format!("b-{}", ctx.new_id("audit-bundle"));

    // The range's events: read in chunks by an async task, consumed by the blocking writer.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Result<StoredEvent, ReadError>>>(4);
    let reader = {
        let view = view.clone();
        let raw = raw.clone();
        tokio::spawn(async move {
            let mut sequence = first;
            while sequence <= last {
                let upto = (sequence + READ_CHUNK as u64 - 1).min(last);
                let positions = view.positions[sequence as usize..=upto as usize].to_vec();
                let chunk = match raw.read_positions(positions).await {
                    Ok(events) if events.len() as u64 == upto - sequence + 1 => events
                        .into_iter()
                        .zip(sequence..)
                        .map(|(e, s)| {
                            stored_event(&e, tenant, s, &view).map(|header| StoredEvent {
                                header,
                                payload: Some(e.payload.as_bytes().to_vec()),
                            })
                        })
                        .collect(),
                    Ok(_) => vec![Err(ReadError("events of the range are missing".into()))],
                    Err(e) => vec![Err(ReadError(e.to_string()))],
                };
                let failed = chunk.iter().any(Result::is_err);
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
                sequence = upto + 1;
            }
        })
    };
    let spec_id = bundle_id.clone();
    let created_at_micros = micros(ctx.now);
    let tenant_text = tenant.as_uuid().to_string();
    let log_public = log.verifying_key();
    let written = tokio::task::spawn_blocking(move || {
        let spec = BundleSpec {
            bundle_id: spec_id,
            created_at_micros,
            tenant: tenant_text,
            previous_bundle_id,
            from_micros: from_us,
            to_micros: to_us,
            first_sequence: first,
            last_sequence: last,
            checkpoint: &checkpoint,
            leaves: &view.leaves,
            before,
            after,
            policy,
            erasures,
            known_sizes,
            keys: BundleKeys {
                export: &export,
                log_name: LOG_NAME,
                log_public,
            },
        };
        let events = std::iter::from_fn(move || rx.blocking_recv()).flatten();
        let mut spool = tempfile::tempfile()?;
        let mut file = tempfile::tempfile()?;
        let summary = {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            let summary = BundleWriter::new(spec).write(events, &mut spool, &mut out)?;
            out.flush()?;
            summary
        };
        let bytes = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        Ok::<_, audit::BundleError>((file, bytes, summary, checkpoint))
    })
    .await
    .map_err(internal)?;
    reader.abort();
    let (file, bytes, summary, checkpoint) = written.map_err(internal)?;
    let record = BundleExported {
        bundle_id: bundle_id.clone(),
        from: audit::rfc3339_micros(from_us),
        to: audit::rfc3339_micros(to_us),
        first_sequence: first,
        last_sequence: last,
        tree_size: summary.tree_size,
        root: audit::base64(&checkpoint.checkpoint.root),
        manifest_sha256: audit::hex(&summary.manifest_sha256),
    };
    let done = app
        .audit_log
        .execute(
            tenant,
            BUNDLES_STREAM,
            &AuditCommand::RecordBundle(record),
            &ctx.meta,
            ctx.now,
        )
        .await
        .map_err(audit_error)?;
    let position = app.committed(&done.appended);
    Ok(Bundle {
        file,
        bytes,
        bundle_id,
        event_count: summary.event_count,
        tree_size: summary.tree_size,
        manifest_sha256: audit::hex(&summary.manifest_sha256),
        position,
    })
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decoding_accepts_only_the_canonical_spelling() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).collect();
            assert_eq!(base64_decode(&audit::base64(&data)), Some(data));
        }
        assert_eq!(base64_decode("AB=="), None, "non-zero padding bits");
        assert_eq!(base64_decode("A"), None);
        assert_eq!(base64_decode("!!!!"), None);
    }
}
