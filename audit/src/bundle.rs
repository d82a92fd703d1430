//! The audit bundle (docs/audit-bundle.md, ADR 020): a `.tar.gz` with a signed manifest, the
//! checkpoint, a tenant's events of a time range as stored, the proofs that the range is complete
//! and in the checkpoint's tree, and the retention evidence. [`BundleWriter`] streams one to any
//! `Write`, checking everything it is given against the tree before it signs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom, Write};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::checkpoint::{SignedCheckpoint, key_id, origin};
use crate::encoding::{base64, hex, rfc3339_micros};
use crate::hash::{Hash, sha256};
use crate::keys::public_key_pem;
use crate::leaf::{LeafError, LeafHeader};
use crate::proof::{
    LeafSource, ProofError, compact_range, consistency_proof, inclusion_proof, root,
};
use crate::retention::{ERASURE_EVENT_TYPE, Erasure, POLICY_EVENT_TYPE, RetentionPolicy};

/// The `format` member of every manifest.
pub const FORMAT: &str = "tenantry-audit-bundle";
/// The manifest's `format_version` this writer produces.
pub const FORMAT_VERSION: u32 = 1;

/// The bundle's file paths.
pub mod paths {
    pub const MANIFEST: &str = "manifest.json";
    pub const MANIFEST_SIG: &str = "manifest.json.sig";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const EVENTS: &str = "events.jsonl";
    pub const RANGE_PROOF: &str = "proofs/range.json";
    pub const CONSISTENCY: &str = "proofs/consistency.json";
    pub const POLICY: &str = "retention/policy.json";
    pub const ERASURES: &str = "retention/erasures.jsonl";
    pub const EXPORT_KEY: &str = "keys/export.pem";
    pub const LOG_KEY: &str = "keys/log.pem";
    pub const VERIFY: &str = "VERIFY.md";
}

/// One stored event: its header and its payload's stored bytes (`None` when the payload was
/// replaced by a tombstone that kept its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub header: LeafHeader,
    pub payload: Option<Vec<u8>>,
}

/// The keys a bundle is made with: the export key signs the manifest; the log key's public half
/// and name identify the checkpoint's signer.
#[derive(Debug)]
pub struct BundleKeys<'a> {
    pub export: &'a SigningKey,
    pub log_name: &'a str,
    pub log_public: VerifyingKey,
}

/// Everything a bundle says besides the range's events.
#[derive(Debug)]
pub struct BundleSpec<'a, L: LeafSource + ?Sized> {
    pub bundle_id: String,
    pub created_at_micros: i64,
    pub tenant: String,
    pub previous_bundle_id: Option<String>,
    /// The range `[from, to)` of `recorded_at`.
    pub from_micros: i64,
    pub to_micros: i64,
    /// The tenant sequences of the range's first and last events.
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// The newest signed checkpoint; the bundle proves against its tree.
    pub checkpoint: &'a SignedCheckpoint,
    /// The tenant tree's leaf hashes, at least the checkpoint's size of them.
    pub leaves: &'a L,
    /// The events at `first_sequence - 1` and `last_sequence + 1` when they are in the tree.
    pub before: Option<LeafHeader>,
    pub after: Option<LeafHeader>,
    /// The tenant's retention policy event in force, if any.
    pub policy: Option<StoredEvent>,
    /// Every `erasure.applied` event that erased an event of the range.
    pub erasures: Vec<StoredEvent>,
    /// Sizes of earlier published checkpoints to prove consistency from (e.g. the previous
    /// bundle's), so a holder of one can detect a forked log.
    pub known_sizes: Vec<u64>,
    pub keys: BundleKeys<'a>,
}

/// Why a bundle was not written. Everything but `Io` and `Source` means the inputs do not agree
/// with the tree, a bug upstream that a signed bundle must never hide.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the events failed: {0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error("writing the bundle failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Leaf(#[from] LeafError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("inconsistent bundle input: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> BundleError {
    BundleError::Invalid(msg.into())
}

/// What a written bundle holds, for the caller's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSummary {
    pub event_count: u64,
    pub tree_size: u64,
    pub manifest_sha256: Hash,
    pub events_bytes: u64,
}

// ---- the format's JSON shapes -------------------------------------------------------------------

#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    format_version: u32,
    bundle_id: &'a str,
    created_at: String,
    tenant: &'a str,
    previous_bundle_id: Option<&'a str>,
    range: RangeJson,
    event_count: u64,
    tree: TreeJson,
    keys: KeysJson<'a>,
    retention: RetentionSummary,
    files: Vec<FileJson>,
}

#[derive(Serialize)]
struct RangeJson {
    from: String,
    to: String,
    first_sequence: u64,
    last_sequence: u64,
}

#[derive(Serialize)]
struct TreeJson {
    size: u64,
    root: String,
    checkpoint_sha256: String,
}

#[derive(Serialize)]
struct KeysJson<'a> {
    export: ExportKeyJson,
    log: LogKeyJson<'a>,
}

#[derive(Serialize)]
struct ExportKeyJson {
    file: &'static str,
    public_key: String,
}

#[derive(Serialize)]
struct LogKeyJson<'a> {
    file: &'static str,
    name: &'a str,
    key_id: String,
    public_key: String,
}

#[derive(Serialize, Default)]
struct RetentionSummary {
    as_of: String,
    rules: u64,
    events_in_scope: u64,
    events_past_window: u64,
    erased_events: u64,
    erasures: u64,
}

#[derive(Serialize)]
struct FileJson {
    path: &'static str,
    sha256: String,
    bytes: u64,
}

/// An event line of `events.jsonl`, and (with `inclusion`) a proven leaf elsewhere.
#[derive(Serialize)]
struct LeafJson<'a> {
    sequence: u64,
    global_position: u64,
    occurred_at: String,
    recorded_at: String,
    event_type: &'a str,
    schema_version: u16,
    stream: &'a str,
    payload_sha256: String,
    /// The stored payload itself when it is one line of JSON without surrounding whitespace
    /// (what the store writes), so `jq .payload` reads it.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    /// Otherwise the stored text as a JSON string. Neither: no payload (a boundary leaf, or a
    /// tombstone).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inclusion: Option<Vec<String>>,
}

/// How a payload is spelled in JSON: raw when that keeps its exact bytes, else as a string.
fn payload_json(text: Option<&str>) -> (Option<&RawValue>, Option<&str>) {
    let Some(text) = text else {
        return (None, None);
    };
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) if raw.get().len() == text.len() && !text.contains(['\n', '\r']) => {
            (Some(raw), None)
        }
        _ => (None, Some(text)),
    }
}

fn leaf_json<'a>(
    h: &'a LeafHeader,
    payload: Option<&'a str>,
    inclusion: Option<&[Hash]>,
) -> LeafJson<'a> {
    let (payload, payload_text) = payload_json(payload);
    LeafJson {
        sequence: h.sequence,
        global_position: h.global_position,
        occurred_at: rfc3339_micros(h.occurred_at_micros),
        recorded_at: rfc3339_micros(h.recorded_at_micros),
        event_type: &h.event_type,
        schema_version: h.schema_version,
        stream: &h.stream,
        payload_sha256: hex(&h.payload_sha256),
        payload,
        payload_text,
        inclusion: inclusion.map(b64_list),
    }
}

fn b64_list(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| base64(h)).collect()
}

#[derive(Serialize)]
struct RangeProofJson<'a> {
    tree_size: u64,
    first_sequence: u64,
    last_sequence: u64,
    left: Vec<String>,
    consistency: Vec<String>,
    before: Option<LeafJson<'a>>,
    after: Option<LeafJson<'a>>,
}

#[derive(Serialize)]
struct ConsistencyJson {
    tree_size: u64,
    from: Vec<KnownProofJson>,
}

#[derive(Serialize)]
struct KnownProofJson {
    size: u64,
    proof: Vec<String>,
}

#[derive(Serialize)]
struct PolicyFileJson<'a> {
    as_of: String,
    policy: Option<LeafJson<'a>>,
}

// ---- the writer ---------------------------------------------------------------------------------

/// Streams one bundle. The events are read once; `events.jsonl` goes to the caller's spool (a
/// temporary file for large ranges) because a tar entry's size precedes its bytes.
#[derive(Debug)]
pub struct BundleWriter<'a, L: LeafSource + ?Sized> {
    spec: BundleSpec<'a, L>,
    level: u32,
}

impl<'a, L: LeafSource + ?Sized> BundleWriter<'a, L> {
    pub fn new(spec: BundleSpec<'a, L>) -> Self {
        BundleWriter { spec, level: 1 }
    }

    /// The gzip level, 0..=9 (default 1: bundles are mostly JSON, and level 1 keeps a million
    /// events within the time budget).
    pub fn compression(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// Writes the bundle to `out`, using `spool` (rewound and overwritten) for `events.jsonl`.
    pub fn write<I, E, S, W>(
        self,
        events: I,
        spool: &mut S,
        out: W,
    ) -> Result<BundleSummary, BundleError>
    where
        I: IntoIterator<Item = Result<StoredEvent, E>>,
        E: std::error::Error + Send + Sync + 'static,
        S: Read + Write + Seek,
        W: Write,
    {
        let spec = &self.spec;
        let n = spec.checkpoint.checkpoint.size;
        let (first, last) = (spec.first_sequence, spec.last_sequence);
        self.check_spec()?;

        let policy = match &spec.policy {
            Some(p) => Some(parse_payload::<RetentionPolicy>(p, POLICY_EVENT_TYPE)?),
            None => None,
        };
        let mut erased: BTreeMap<u64, &StoredEvent> = BTreeMap::new();
        for e in &spec.erasures {
            let er = parse_payload::<Erasure>(e, ERASURE_EVENT_TYPE)?;
            for s in er.sequences {
                erased.insert(s, e);
            }
        }
        let as_of = spec.created_at_micros;
        let mut summary = RetentionSummary {
            as_of: rfc3339_micros(as_of),
            rules: policy.as_ref().map_or(0, |p| p.rules.len() as u64),
            erasures: spec.erasures.len() as u64,
            ..RetentionSummary::default()
        };

        // events.jsonl, checked against the tree leaf by leaf.
        spool.seek(SeekFrom::Start(0))?;
        let mut ev = HashingWriter::new(io::BufWriter::with_capacity(1 << 16, &mut *spool));
        let mut expected = first;
        let mut prev = spec
            .before
            .as_ref()
            .map(|b| (b.recorded_at_micros, b.global_position));
        let mut leaf_buf = Vec::with_capacity(256);
        let mut line = Vec::with_capacity(1024);
        for item in events {
            let event = item.map_err(|e| BundleError::Source(Box::new(e)))?;
            let h = &event.header;
            if h.sequence != expected || h.sequence > last {
                return Err(invalid(format!(
                    "expected event {expected}, got {}",
                    h.sequence
                )));
            }
            if h.recorded_at_micros < spec.from_micros || h.recorded_at_micros >= spec.to_micros {
                return Err(invalid(format!(
                    "event {} was recorded outside the range",
                    h.sequence
                )));
            }
            if let Some((t, pos)) = prev
                && (h.recorded_at_micros < t || h.global_position <= pos)
            {
                return Err(invalid(format!(
                    "event {} goes back in time or position",
                    h.sequence
                )));
            }
            prev = Some((h.recorded_at_micros, h.global_position));
            let text = match &event.payload {
                Some(p) => {
                    if sha256(p) != h.payload_sha256 {
                        return Err(invalid(format!(
                            "event {}'s payload does not match its hash",
                            h.sequence
                        )));
                    }
                    Some(std::str::from_utf8(p).map_err(|_| {
                        invalid(format!("event {}'s payload is not UTF-8", h.sequence))
                    })?)
                }
                None => {
                    if !erased.contains_key(&h.sequence) {
                        return Err(invalid(format!(
                            "event {} has no payload and no erasure",
                            h.sequence
                        )));
                    }
                    None
                }
            };
            leaf_buf.clear();
            h.encode_into(&mut leaf_buf)?;
            if crate::hash::leaf_hash(&leaf_buf) != spec.leaves.leaf(h.sequence) {
                return Err(invalid(format!(
                    "event {} does not match its leaf in the tree",
                    h.sequence
                )));
            }
            if let Some(p) = &policy {
                for rule in p
                    .rules
                    .iter()
                    .filter(|r| r.event_types.contains(&h.event_type))
                {
                    summary.events_in_scope += 1;
                    if h.occurred_at_micros.saturating_add(rule.keep_micros()) <= as_of {
                        summary.events_past_window += 1;
                    }
                }
            }
            if erased.contains_key(&h.sequence) {
                summary.erased_events += 1;
            }
            line.clear();
            serde_json::to_writer(&mut line, &leaf_json(h, text, None))
                .map_err(io::Error::other)?;
            line.push(b'\n');
            ev.write_all(&line)?;
            expected += 1;
        }
        if expected != last + 1 {
            return Err(invalid(format!(
                "events end at {expected}, the range at {}",
                last + 1
            )));
        }
        let (events_sha, events_bytes, buf) = ev.finish();
        buf.into_inner().map_err(|e| e.into_error())?.flush()?;
        let event_count = last - first + 1;

        // Proofs.
        let left = compact_range(spec.leaves, first)?;
        let consistency = consistency_proof(spec.leaves, last + 1, n)?;
        let before_proof = spec
            .before
            .as_ref()
            .map(|b| inclusion_proof(spec.leaves, b.sequence, n))
            .transpose()?;
        let after_proof = spec
            .after
            .as_ref()
            .map(|a| inclusion_proof(spec.leaves, a.sequence, n))
            .transpose()?;
        let range_json = RangeProofJson {
            tree_size: n,
            first_sequence: first,
            last_sequence: last,
            left: b64_list(left.roots()),
            consistency: b64_list(&consistency),
            before: spec
                .before
                .as_ref()
                .map(|b| leaf_json(b, None, before_proof.as_deref())),
            after: spec
                .after
                .as_ref()
                .map(|a| leaf_json(a, None, after_proof.as_deref())),
        };
        let mut known = BTreeSet::new();
        for &m in &spec.known_sizes {
            if m == 0 || m > n {
                return Err(invalid(format!(
                    "known checkpoint size {m} is not in 1..={n}"
                )));
            }
            known.insert(m);
        }
        let consistency_json = ConsistencyJson {
            tree_size: n,
            from: known
                .into_iter()
                .map(|m| {
                    Ok(KnownProofJson {
                        size: m,
                        proof: b64_list(&consistency_proof(spec.leaves, m, n)?),
                    })
                })
                .collect::<Result<_, ProofError>>()?,
        };
        let policy_json = PolicyFileJson {
            as_of: rfc3339_micros(as_of),
            policy: spec.policy.as_ref().map(|p| self.proven(p)).transpose()?,
        };
        let mut erasures_text = Vec::new();
        for e in &spec.erasures {
            serde_json::to_writer(&mut erasures_text, &self.proven(e)?)
                .map_err(io::Error::other)?;
            erasures_text.push(b'\n');
        }

        let small: Vec<(&'static str, Vec<u8>)> = vec![
            (paths::CHECKPOINT, spec.checkpoint.note.clone().into_bytes()),
            (paths::RANGE_PROOF, to_json(&range_json)?),
            (paths::CONSISTENCY, to_json(&consistency_json)?),
            (paths::POLICY, to_json(&policy_json)?),
            (paths::ERASURES, erasures_text),
            (
                paths::EXPORT_KEY,
                public_key_pem(&spec.keys.export.verifying_key()).into_bytes(),
            ),
            (
                paths::LOG_KEY,
                public_key_pem(&spec.keys.log_public).into_bytes(),
            ),
            (paths::VERIFY, verify_md(spec).into_bytes()),
        ];
        let mut files: Vec<FileJson> = small
            .iter()
            .map(|(p, b)| FileJson {
                path: p,
                sha256: hex(&sha256(b)),
                bytes: b.len() as u64,
            })
            .collect();
        files.push(FileJson {
            path: paths::EVENTS,
            sha256: hex(&events_sha),
            bytes: events_bytes,
        });

        let manifest = Manifest {
            format: FORMAT,
            format_version: FORMAT_VERSION,
            bundle_id: &spec.bundle_id,
            created_at: rfc3339_micros(spec.created_at_micros),
            tenant: &spec.tenant,
            previous_bundle_id: spec.previous_bundle_id.as_deref(),
            range: RangeJson {
                from: rfc3339_micros(spec.from_micros),
                to: rfc3339_micros(spec.to_micros),
                first_sequence: first,
                last_sequence: last,
            },
            event_count,
            tree: TreeJson {
                size: n,
                root: base64(&spec.checkpoint.checkpoint.root),
                checkpoint_sha256: hex(&sha256(spec.checkpoint.note.as_bytes())),
            },
            keys: KeysJson {
                export: ExportKeyJson {
                    file: paths::EXPORT_KEY,
                    public_key: base64(spec.keys.export.verifying_key().as_bytes()),
                },
                log: LogKeyJson {
                    file: paths::LOG_KEY,
                    name: spec.keys.log_name,
                    key_id: hex(&key_id(spec.keys.log_name, &spec.keys.log_public)),
                    public_key: base64(spec.keys.log_public.as_bytes()),
                },
            },
            retention: summary,
            files,
        };
        let mut manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        manifest_bytes.push(b'\n');
        let signature = spec.keys.export.sign(&manifest_bytes).to_bytes();

        // The archive: small files first, the events last, streamed from the spool.
        let mtime = u64::try_from(spec.created_at_micros.div_euclid(1_000_000)).unwrap_or(0);
        let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::new(self.level)));
        append(
            &mut tar,
            paths::MANIFEST,
            mtime,
            &manifest_bytes[..],
            manifest_bytes.len() as u64,
        )?;
        append(&mut tar, paths::MANIFEST_SIG, mtime, &signature[..], 64)?;
        for (path, bytes) in &small {
            append(&mut tar, path, mtime, &bytes[..], bytes.len() as u64)?;
        }
        spool.seek(SeekFrom::Start(0))?;
        append(
            &mut tar,
            paths::EVENTS,
            mtime,
            io::BufReader::with_capacity(1 << 16, spool.take(events_bytes)),
            events_bytes,
        )?;
        tar.into_inner()?.finish()?.flush()?;

        Ok(BundleSummary {
            event_count,
            tree_size: n,
            manifest_sha256: sha256(&manifest_bytes),
            events_bytes,
        })
    }

    /// Checks the inputs that are not streamed against the checkpoint's tree.
    fn check_spec(&self) -> Result<(), BundleError> {
        let spec = &self.spec;
        let cp = &spec.checkpoint.checkpoint;
        let n = cp.size;
        let (first, last) = (spec.first_sequence, spec.last_sequence);
        if cp.origin
            != origin(spec.keys.log_name, &spec.tenant).map_err(|e| invalid(e.to_string()))?
        {
            return Err(invalid(format!(
                "checkpoint origin {:?} is not this tenant's",
                cp.origin
            )));
        }
        if root(spec.leaves, n)? != cp.root {
            return Err(invalid("the leaves do not make the checkpoint's root"));
        }
        if first > last || last >= n {
            return Err(invalid(format!(
                "range {first}..={last} is empty or not inside the tree of size {n}"
            )));
        }
        if spec.from_micros >= spec.to_micros {
            return Err(invalid("the time range is empty"));
        }
        match (&spec.before, first) {
            (None, 0) => {}
            (Some(b), f) if f > 0 && b.sequence == f - 1 => {
                if b.leaf_hash()? != spec.leaves.leaf(b.sequence) {
                    return Err(invalid(
                        "the event before the range does not match its leaf",
                    ));
                }
                if b.recorded_at_micros >= spec.from_micros {
                    return Err(invalid("the event before the range was recorded inside it"));
                }
            }
            _ => {
                return Err(invalid(
                    "the event before the range is missing or not the one just before it",
                ));
            }
        }
        match &spec.after {
            None if last + 1 == n => {}
            Some(a) if a.sequence == last + 1 && a.sequence < n => {
                if a.leaf_hash()? != spec.leaves.leaf(a.sequence) {
                    return Err(invalid("the event after the range does not match its leaf"));
                }
                if a.recorded_at_micros < spec.to_micros {
                    return Err(invalid("the event after the range was recorded inside it"));
                }
            }
            _ => {
                return Err(invalid(
                    "the event after the range is missing or not the one just after it",
                ));
            }
        }
        Ok(())
    }

    /// A policy or erasure event with its payload and its inclusion proof.
    fn proven<'e>(&self, e: &'e StoredEvent) -> Result<LeafJson<'e>, BundleError> {
        let spec = &self.spec;
        let h = &e.header;
        let n = spec.checkpoint.checkpoint.size;
        if h.sequence >= n || h.leaf_hash()? != spec.leaves.leaf(h.sequence) {
            return Err(invalid(format!(
                "{} event {} is not in the checkpoint's tree",
                h.event_type, h.sequence
            )));
        }
        let payload = e
            .payload
            .as_deref()
            .ok_or_else(|| invalid(format!("event {} has no payload", h.sequence)))?;
        let text = std::str::from_utf8(payload).map_err(|_| invalid("payload is not UTF-8"))?;
        let proof = inclusion_proof(spec.leaves, h.sequence, n)?;
        Ok(leaf_json(h, Some(text), Some(&proof)))
    }
}

fn parse_payload<T: serde::de::DeserializeOwned>(
    e: &StoredEvent,
    ty: &str,
) -> Result<T, BundleError> {
    if e.header.event_type != ty {
        return Err(invalid(format!(
            "event {} is a {}, not a {ty}",
            e.header.sequence, e.header.event_type
        )));
    }
    let p = e
        .payload
        .as_deref()
        .ok_or_else(|| invalid(format!("{ty} event {} has no payload", e.header.sequence)))?;
    if sha256(p) != e.header.payload_sha256 {
        return Err(invalid(format!(
            "{ty} event {}'s payload does not match its hash",
            e.header.sequence
        )));
    }
    serde_json::from_slice(p)
        .map_err(|err| invalid(format!("{ty} event {}: {err}", e.header.sequence)))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, BundleError> {
    let mut b = serde_json::to_vec_pretty(v).map_err(io::Error::other)?;
    b.push(b'\n');
    Ok(b)
}

fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mtime: u64,
    data: R,
    size: u64,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (Hash, u64, W) {
        (self.hasher.finalize().into(), self.bytes, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn verify_md<L: LeafSource + ?Sized>(spec: &BundleSpec<'_, L>) -> String {
    format!(
        r#"# Verifying this audit bundle

Bundle `{id}` holds tenant `{tenant}`'s events recorded from {from} to {to} (excluded),
tenant sequences {first} to {last}, proven against the signed checkpoint of the tenant's tree at
size {size}. The format is described in Tenantry's `docs/audit-bundle.md`.

Obtain Tenantry's public keys from a source you trust (`GET /v1/audit/keys`, or your records);
the copies in `keys/` only say which keys the bundle claims.

## 1. The manifest signature, with OpenSSL

`manifest.json.sig` is the raw 64-byte Ed25519 signature over the exact bytes of `manifest.json`,
made with the export key:

```sh
tar xzf bundle.tar.gz
openssl pkeyutl -verify -pubin -inkey export.pem -rawin -in manifest.json -sigfile manifest.json.sig
```

(`export.pem` is your trusted copy of the export key; `keys/export.pem` is the bundle's.) OpenSSL
prints `Signature Verified Successfully`.

## 2. The files

`manifest.json` lists every other file with its SHA-256 and size:

```sh
sha256sum events.jsonl checkpoint proofs/*.json retention/* keys/*.pem VERIFY.md
```

## 3. Everything else, with `tenantry-verify`

```sh
tenantry-verify bundle.tar.gz --key export.pem --key log.pem --tenant {tenant}
```

It checks the signatures (Ed25519, strict), every file, every event against its leaf, that the
events are exactly the tree's leaves {first} to {last} (the leaves just before and after are
outside the time range and proven in the tree), that the range is in the checkpoint's tree, and the
retention evidence, and prints one `PASS` or `FAIL` line per check. Add
`--known-checkpoint FILE` with a checkpoint you saw earlier to detect a forked log.
"#,
        id = spec.bundle_id,
        tenant = spec.tenant,
        from = rfc3339_micros(spec.from_micros),
        to = rfc3339_micros(spec.to_micros),
        first = spec.first_sequence,
        last = spec.last_sequence,
        size = spec.checkpoint.checkpoint.size,
    )
}
