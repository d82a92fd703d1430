//! The checks, in the order they print. Every check reports PASS or FAIL with its reason; a check
//! whose inputs could not be read fails too ("not checked: …"), so nothing passes by omission.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;

use ed25519_dalek::{Signature, VerifyingKey};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use crate::encoding::{base64, base64_hash, hex_hash, timestamp};
use crate::format::{self as f, Header};
use crate::merkle::{Frontier, Hash, verify_consistency, verify_inclusion};
use crate::{note, pem};

/// What the person verifying trusts and asks.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Trusted public keys (export and log); none means only the bundle's own keys are used and
    /// the `trust` check fails.
    pub keys: Vec<VerifyingKey>,
    pub tenant: Option<String>,
    /// The range the verifier asked for, microseconds; the bundle's must cover it.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// A signed checkpoint seen earlier (its note text).
    pub known_checkpoint: Option<Vec<u8>>,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub result: Result<(), String>,
}

/// Every check, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.result.is_ok())
    }

    /// The first failure's reason of check `name`, if it failed.
    pub fn failure(&self, name: &str) -> Option<&str> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.result.as_ref().err().map(String::as_str))
    }

    fn add(&mut self, name: &'static str, result: Result<(), String>) {
        self.checks.push(Check { name, result });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            match &c.result {
                Ok(()) => writeln!(out, "PASS {}", c.name)?,
                Err(e) => writeln!(out, "FAIL {}: {e}", c.name)?,
            }
        }
        Ok(())
    }
}

const MAX_SMALL_FILE: u64 = 64 << 20;

/// What the small files say, parsed, before any trust is placed in it.
struct Ctx {
    manifest: f::Manifest,
    range: f::RangeProof,
    left: Vec<Hash>,
    from: i64,
    to: i64,
    as_of: i64,
    rules: Vec<f::Rule>,
    /// Erased sequence -> (erasure's occurred_at, rule name, erasure's sequence).
    erased: HashMap<u64, (i64, std::sync::Arc<str>, u64)>,
    erasure_sequences: BTreeSet<u64>,
    before: Option<(i64, u64)>,
}

impl Ctx {
    fn build(small: &BTreeMap<String, Vec<u8>>) -> Result<Ctx, String> {
        let manifest = parse_manifest(small.get(f::MANIFEST).ok_or("manifest.json is missing")?)?;
        if manifest.range.first_sequence > manifest.range.last_sequence
            || manifest.range.last_sequence >= u64::MAX / 2
        {
            return Err("the manifest's range holds no event".into());
        }
        let range: f::RangeProof = strict_json(
            small
                .get(f::RANGE_PROOF)
                .ok_or("proofs/range.json is missing")?,
            f::RANGE_PROOF,
        )?;
        let left = f::hashes(&range.left, "left")?;
        let policy: f::PolicyFile = strict_json(
            small
                .get(f::POLICY)
                .ok_or("retention/policy.json is missing")?,
            f::POLICY,
        )?;
        let rules = match &policy.policy {
            Some(p) => {
                let text = p.payload()?.ok_or("the policy event has no payload")?;
                serde_json::from_str::<f::Policy>(text)
                    .map_err(|e| format!("the policy payload: {e}"))?
                    .rules
            }
            None => Vec::new(),
        };
        let mut erased = HashMap::new();
        let mut erasure_sequences = BTreeSet::new();
        for (i, line) in lines(
            small
                .get(f::ERASURES)
                .ok_or("retention/erasures.jsonl is missing")?,
        )?
        .into_iter()
        .enumerate()
        {
            let leaf: f::ProvenLeaf = strict_json(line, f::ERASURES)
                .map_err(|e| format!("erasure line {}: {e}", i + 1))?;
            let h = Header::of_proven(&leaf)?;
            let text = leaf.payload()?.ok_or("an erasure has no payload")?;
            let er: f::Erasure = serde_json::from_str(text)
                .map_err(|e| format!("erasure {}: {e}", leaf.sequence))?;
            erasure_sequences.insert(leaf.sequence);
            // One shared rule name per erasure, not one copy per erased event.
            let rule: std::sync::Arc<str> = er.rule.into();
            erased.reserve(er.sequences.len());
            for s in er.sequences {
                erased.insert(s, (h.occurred_at, rule.clone(), leaf.sequence));
            }
        }
        let before = match &range.before {
            Some(b) => {
                let h = Header::of_proven(b)?;
                Some((h.recorded_at, h.global_position))
            }
            None => None,
        };
        Ok(Ctx {
            from: timestamp(&manifest.range.from).ok_or("bad range.from")?,
            to: timestamp(&manifest.range.to).ok_or("bad range.to")?,
            as_of: timestamp(&policy.as_of).ok_or("bad retention as_of")?,
            manifest,
            range,
            left,
            rules,
            erased,
            erasure_sequences,
            before,
        })
    }
}

/// What reading `events.jsonl` found.
#[derive(Default)]
struct Scan {
    sha256: Hash,
    bytes: u64,
    count: u64,
    events: Option<String>,
    time: Option<String>,
    retention: Option<String>,
    root: Option<(u64, Hash)>,
    last: Option<(i64, u64)>,
    erasures_in_range: Vec<u64>,
    in_scope: u64,
    past_window: u64,
    erased: u64,
    unchecked: Option<String>,
}

fn scan_events<R: Read>(mut r: R, ctx: Result<&Ctx, &String>) -> Scan {
    let mut scan = Scan::default();
    let mut frontier = match ctx {
        Ok(c) => match Frontier::new(c.manifest.range.first_sequence, &c.left) {
            Ok(fr) => Some(fr),
            Err(e) => {
                scan.unchecked = Some(e);
                None
            }
        },
        Err(e) => {
            scan.unchecked = Some(e.clone());
            None
        }
    };
    let mut prev = ctx.ok().and_then(|c| c.before);
    // The file's SHA-256 is taken on another thread, chunk by chunk, while lines are checked here.
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(8);
    let sha = std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(&chunk[..]);
            }
            <[u8; 32]>::from(h.finalize())
        });
        let mut carry: Vec<u8> = Vec::new();
        let mut on_line = |line: &[u8], scan: &mut Scan| {
            scan.count += 1;
            let (Ok(c), Some(fr)) = (ctx, frontier.as_mut()) else {
                return;
            };
            if scan.events.is_some() {
                return;
            }
            if let Err(e) = check_event(line, scan.count, c, fr, &mut prev, scan) {
                scan.events = Some(e);
            }
        };
        loop {
            let mut chunk = vec![0u8; 1 << 18];
            let mut filled = 0;
            while filled < chunk.len() {
                match r.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        scan.events
                            .get_or_insert(format!("reading events.jsonl failed: {e}"));
                        break;
                    }
                }
            }
            if filled == 0 {
                break;
            }
            chunk.truncate(filled);
            scan.bytes += filled as u64;
            let chunk = std::sync::Arc::new(chunk);
            let _ = tx.send(chunk.clone());
            let mut rest = &chunk[..];
            if !carry.is_empty() {
                match memchr_nl(rest) {
                    Some(i) => {
                        carry.extend_from_slice(&rest[..=i]);
                        rest = &rest[i + 1..];
                        let line = std::mem::take(&mut carry);
                        on_line(&line, &mut scan);
                    }
                    None => {
                        carry.extend_from_slice(rest);
                        continue;
                    }
                }
            }
            while let Some(i) = memchr_nl(rest) {
                on_line(&rest[..=i], &mut scan);
                rest = &rest[i + 1..];
            }
            carry.extend_from_slice(rest);
        }
        if !carry.is_empty() {
            on_line(&carry, &mut scan);
        }
        drop(tx);
        hasher.join().expect("the hashing thread does not panic")
    });
    scan.sha256 = sha;
    scan.last = prev;
    if let Some(fr) = frontier {
        scan.root = Some((fr.size(), fr.root()));
    }
    scan
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

fn check_event(
    line: &[u8],
    n: u64,
    c: &Ctx,
    fr: &mut Frontier,
    prev: &mut Option<(i64, u64)>,
    scan: &mut Scan,
) -> Result<(), String> {
    let body = line
        .strip_suffix(b"\n")
        .ok_or_else(|| format!("line {n} does not end with a newline (truncated?)"))?;
    let text = std::str::from_utf8(body).map_err(|_| format!("line {n} is not UTF-8"))?;
    let ev: f::EventLine = serde_json::from_str(text).map_err(|e| format!("line {n}: {e}"))?;
    let h = Header::of_line(&ev).map_err(|e| format!("line {n}: {e}"))?;
    let want = c.manifest.range.first_sequence + (n - 1);
    if h.sequence != want {
        return Err(format!(
            "line {n} holds sequence {}, expected {want} (events missing, added or out of order)",
            h.sequence
        ));
    }
    let payload = ev.payload().map_err(|e| format!("line {n}: {e}"))?;
    match payload {
        Some(p) => {
            let d: Hash = Sha256::digest(p.as_bytes()).into();
            if d != h.payload_sha256 {
                return Err(format!(
                    "event {}: payload does not match payload_sha256",
                    h.sequence
                ));
            }
        }
        None => {
            if !c.erased.contains_key(&h.sequence) {
                return Err(format!(
                    "event {} has no payload and no erasure",
                    h.sequence
                ));
            }
        }
    }
    fr.push(h.leaf_hash()?);
    if scan.time.is_none() {
        if let Some((t, pos)) = *prev {
            if h.recorded_at < t {
                scan.time = Some(format!(
                    "event {} was recorded before the event preceding it",
                    h.sequence
                ));
            } else if h.global_position <= pos {
                scan.time = Some(format!(
                    "event {}'s global position does not increase",
                    h.sequence
                ));
            }
        }
        if h.recorded_at < c.from || h.recorded_at >= c.to {
            scan.time.get_or_insert(format!(
                "event {} was recorded outside the range",
                h.sequence
            ));
        }
    }
    *prev = Some((h.recorded_at, h.global_position));
    if h.event_type == f::ERASURE_EVENT_TYPE {
        scan.erasures_in_range.push(h.sequence);
    }
    retention_of_event(&h, payload, c, scan);
    Ok(())
}

/// The retention proof for one event: past its window it must be erased, by an erasure made under
/// a rule that covers it and not before its window ended, and hold no plaintext personal field.
/// On every event's path: no allocation unless the event is in a rule's scope, and its payload
/// is parsed once, only when a window has passed, and shallowly where the fields are top-level.
fn retention_of_event(h: &Header<'_>, payload: Option<&str>, c: &Ctx, scan: &mut Scan) {
    let erasure = c.erased.get(&h.sequence);
    let covers = |r: &&f::Rule| r.event_types.iter().any(|t| t == h.event_type);
    if erasure.is_some() {
        scan.erased += 1;
    }
    let mut fail = |msg: String| {
        scan.retention.get_or_insert(msg);
    };
    if let Some((at, rule, by)) = erasure
        && &**rule == f::SUBJECT_REQUEST
    {
        // A subject's own request is no retention rule: it may fall inside a window, but it
        // must come after the event and erase what crypto-shredding can erase, sealed fields.
        if *at < h.occurred_at {
            fail(format!(
                "erasure {by} erased event {} before it happened",
                h.sequence
            ));
        }
        if let Some(text) = payload
            && !holds_sealed(text)
        {
            fail(format!(
                "erasure {by} erased event {} at a subject's request, but it holds no sealed personal data",
                h.sequence
            ));
        }
    } else if let Some((at, rule, by)) = erasure {
        match c.rules.iter().filter(covers).find(|r| *r.name == **rule) {
            None => fail(format!(
                "erasure {by} erased event {} without a policy reason (rule {rule:?} does not cover it)",
                h.sequence
            )),
            Some(r) => {
                if h.occurred_at.saturating_add(keep(r)) > *at {
                    fail(format!(
                        "erasure {by} erased event {} inside its retention window",
                        h.sequence
                    ));
                }
            }
        }
    }
    let mut parsed: Option<Result<Fields<'_>, ()>> = None;
    for r in c.rules.iter().filter(covers) {
        scan.in_scope += 1;
        if h.occurred_at.saturating_add(keep(r)) > c.as_of {
            continue;
        }
        scan.past_window += 1;
        if erasure.is_none() {
            fail(format!(
                "event {} is past rule {:?}'s window and was not erased",
                h.sequence, r.name
            ));
        }
        let Some(text) = payload else { continue };
        let fields = parsed.get_or_insert_with(|| Fields::parse(text));
        let Ok(fields) = fields else {
            fail(format!("event {}'s payload is not JSON", h.sequence));
            continue;
        };
        for field in &r.fields {
            if !fields.erased_or_sealed(field) {
                fail(format!(
                    "event {} holds plaintext {field} past rule {:?}'s window",
                    h.sequence, r.name
                ));
            }
        }
    }
}

/// A payload's members, read once for its personal fields: top-level members borrowed as raw
/// text (no tree is built), the whole value only when a rule names a nested pointer.
struct Fields<'a> {
    text: &'a str,
    top: Option<Members<'a>>,
}

/// An object's members in order, keys borrowed where they hold no escape, values as raw text: no
/// hashing, one allocation. A key given twice reads as its last value, as a JSON value would.
struct Members<'a>(Vec<(Key<'a>, &'a serde_json::value::RawValue)>);

struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(8);
                while let Some(entry) = m.next_entry()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    fn get(&self, key: &str) -> Option<&'a serde_json::value::RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.0 == key)
            .map(|(_, v)| *v)
    }
}

/// The one member a sealed value must have; its other members are not read.
#[derive(serde::Deserialize)]
struct SealedProbe {
    #[serde(rename = "$sealed")]
    sealed: Option<serde::de::IgnoredAny>,
}

impl<'a> Fields<'a> {
    fn parse(text: &'a str) -> Result<Self, ()> {
        // A payload that is not an object has no members: every pointer is absent.
        let top = match text.trim_start().as_bytes().first() {
            Some(b'{') => Some(serde_json::from_str(text).map_err(|_| ())?),
            _ => {
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| ())?;
                None
            }
        };
        Ok(Fields { text, top })
    }

    /// Whether the member at `pointer` is absent, `null`, or a sealed value.
    fn erased_or_sealed(&self, pointer: &str) -> bool {
        let simple = pointer
            .strip_prefix('/')
            .filter(|k| !k.contains('/') && !k.contains('~'));
        let (Some(key), Some(top)) = (simple, &self.top) else {
            // A nested pointer (or none into a non-object): the whole value, as before.
            let value: serde_json::Value =
                serde_json::from_str(self.text).unwrap_or(serde_json::Value::Null);
            return match value.pointer(pointer) {
                None | Some(serde_json::Value::Null) => true,
                Some(serde_json::Value::Object(o)) => o.contains_key(f::SEALED_MEMBER),
                Some(_) => false,
            };
        };
        let Some(raw) = top.get(key) else {
            return true;
        };
        let v = raw.get();
        if v == "null" {
            return true;
        }
        v.starts_with('{')
            && serde_json::from_str::<SealedProbe>(v).is_ok_and(|p| p.sealed.is_some())
    }
}

/// Whether a payload holds a sealed value (an object with a `$sealed` member) at its top level.
fn holds_sealed(text: &str) -> bool {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    o.values().any(|v| {
        v.as_object()
            .is_some_and(|m| m.contains_key(f::SEALED_MEMBER))
    })
}

fn keep(r: &f::Rule) -> i64 {
    i64::from(r.keep_days) * 86_400_000_000
}

/// Reads the archive and runs every check. Decompression runs on its own thread, overlapped
/// with parsing and hashing.
pub fn verify<R: Read + Send>(bundle: R, opts: &Options) -> Report {
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(16);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut gz = GzDecoder::new(bundle);
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let mut filled = 0;
                let res = loop {
                    match gz.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let done = filled == 0 || res.is_err();
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return;
                }
                if let Err(e) = res {
                    let _ = tx.send(Err(e));
                }
                if done {
                    return;
                }
            }
        });
        verify_tar(
            ChannelReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
            },
            opts,
        )
    })
}

/// The decompressed stream, chunk by chunk from the decompressing thread.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn verify_tar<R: Read>(tar_stream: R, opts: &Options) -> Report {
    let mut report = Report::default();
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive_err: Option<String> = None;
    let mut seen = BTreeSet::new();
    let mut scan: Option<Scan> = None;
    let mut buffered: Option<Vec<u8>> = None;
    let mut ctx: Option<Result<Ctx, String>> = None;

    let mut archive = tar::Archive::new(tar_stream);
    match archive.entries() {
        Err(e) => archive_err = Some(format!("not a tar.gz archive: {e}")),
        Ok(entries) => {
            for entry in entries {
                let mut entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        archive_err = Some(format!("the archive is corrupt: {e}"));
                        break;
                    }
                };
                let path = match std::str::from_utf8(&entry.path_bytes()) {
                    Ok(p) => p.to_string(),
                    Err(_) => {
                        archive_err.get_or_insert("an entry's name is not UTF-8".into());
                        continue;
                    }
                };
                if entry.header().entry_type() != tar::EntryType::Regular {
                    archive_err.get_or_insert(format!("entry {path:?} is not a regular file"));
                    continue;
                }
                if !seen.insert(path.clone()) {
                    archive_err.get_or_insert(format!("entry {path:?} appears twice"));
                    continue;
                }
                if path == f::EVENTS {
                    let ready = [f::MANIFEST, f::RANGE_PROOF, f::POLICY, f::ERASURES]
                        .iter()
                        .all(|p| small.contains_key(*p));
                    if ready {
                        let c = ctx.get_or_insert_with(|| Ctx::build(&small));
                        scan = Some(scan_events(&mut entry, c.as_ref()));
                    } else {
                        let mut buf = Vec::new();
                        if let Err(e) = entry.read_to_end(&mut buf) {
                            archive_err.get_or_insert(format!("reading {path}: {e}"));
                        }
                        buffered = Some(buf);
                    }
                    continue;
                }
                let mut buf = Vec::new();
                match (&mut entry).take(MAX_SMALL_FILE + 1).read_to_end(&mut buf) {
                    Ok(_) if buf.len() as u64 > MAX_SMALL_FILE => {
                        archive_err.get_or_insert(format!("entry {path:?} is larger than 64 MiB"));
                    }
                    Ok(_) => {
                        small.insert(path, buf);
                    }
                    Err(e) => {
                        archive_err.get_or_insert(format!("reading {path}: {e}"));
                    }
                }
            }
        }
    }
    let ctx = ctx.unwrap_or_else(|| Ctx::build(&small));
    if let Some(buf) = buffered {
        scan = Some(scan_events(&buf[..], ctx.as_ref()));
    }
    report.add("archive", archive_err.map_or(Ok(()), Err));

    // The keys: the trusted ones, or the bundle's own when none were given.
    let bundled_export = small.get(f::EXPORT_KEY).map(|p| pem::public_key(p));
    let bundled_log = small.get(f::LOG_KEY).map(|p| pem::public_key(p));
    let trusted: Vec<VerifyingKey> = if opts.keys.is_empty() {
        [&bundled_export, &bundled_log]
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_ref().ok().copied())
            .collect()
    } else {
        opts.keys.clone()
    };

    let manifest_bytes = small.get(f::MANIFEST);
    let parsed = manifest_bytes.map(|b| parse_manifest(b));
    // Each signature is checked only with the trusted key of its role, as the manifest declares it.
    let of_role = |declared: Option<&str>| -> Vec<VerifyingKey> {
        match declared {
            Some(b64) => trusted
                .iter()
                .filter(|k| base64(b64).as_deref() == Some(k.as_bytes()))
                .copied()
                .collect(),
            None => trusted.clone(),
        }
    };
    let declared = parsed.as_ref().and_then(|p| p.as_ref().ok());
    let export_keys = of_role(declared.map(|m| m.keys.export.public_key.as_str()));
    let log_keys = of_role(declared.map(|m| m.keys.log.public_key.as_str()));
    report.add("manifest-signature", (|| {
        let m = manifest_bytes.ok_or("manifest.json is missing")?;
        let sig = small.get(f::MANIFEST_SIG).ok_or("manifest.json.sig is missing")?;
        let sig: [u8; 64] = sig[..].try_into().map_err(|_| format!("manifest.json.sig is {} bytes, not 64", sig.len()))?;
        let sig = Signature::from_bytes(&sig);
        if export_keys.iter().any(|k| k.verify_strict(m, &sig).is_ok()) {
            Ok(())
        } else {
            Err("no trusted key verifies the manifest's signature (wrong key, or the manifest or signature was changed)".into())
        }
    })());

    let manifest = match &ctx {
        Ok(c) => Ok(&c.manifest),
        Err(e) => match manifest_bytes.map(|b| parse_manifest(b)) {
            None => Err("manifest.json is missing".to_string()),
            Some(Err(me)) => Err(me),
            Some(Ok(_)) => Err(e.clone()),
        },
    };
    report.add(
        "manifest",
        match (&manifest, &parsed) {
            (Ok(m), _) => check_manifest(m),
            (Err(_), Some(Ok(m))) => check_manifest(m),
            (Err(e), _) => Err(e.clone()),
        },
    );
    let Ok(c) = &ctx else {
        let err = ctx.as_ref().err().expect("failed");
        let why = format!("not checked: {err}");
        // With a readable manifest, what failed is another file the checks need.
        report.add(
            "files",
            Err(if matches!(parsed, Some(Ok(_))) {
                err.clone()
            } else {
                why.clone()
            }),
        );
        for name in [
            "keys",
            "tenant",
            "checkpoint-signature",
            "checkpoint",
            "events",
            "time-order",
            "range-proof",
            "boundaries",
            "retention",
        ] {
            report.add(name, Err(why.clone()));
        }
        report.add("trust", trust(opts));
        return report;
    };
    let m = &c.manifest;
    let scan = scan.unwrap_or_default();

    report.add(
        "keys",
        (|| {
            let export = bundled_export
                .clone()
                .ok_or("keys/export.pem is missing")??;
            let log = bundled_log.clone().ok_or("keys/log.pem is missing")??;
            if base64(&m.keys.export.public_key).as_deref() != Some(export.as_bytes()) {
                return Err("keys/export.pem is not the manifest's export key".into());
            }
            if base64(&m.keys.log.public_key).as_deref() != Some(log.as_bytes()) {
                return Err("keys/log.pem is not the manifest's log key".into());
            }
            let kid: String = note::key_id(&m.keys.log.name, &log)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if kid != m.keys.log.key_id {
                return Err(format!(
                    "the log key's id is {kid}, the manifest says {}",
                    m.keys.log.key_id
                ));
            }
            if m.keys.export.file != f::EXPORT_KEY || m.keys.log.file != f::LOG_KEY {
                return Err("the manifest names unexpected key files".into());
            }
            if export == log {
                return Err("the export key and the log key are the same key".into());
            }
            for (role, k) in [("export", &export), ("log", &log)] {
                if !trusted.contains(k) {
                    return Err(format!(
                        "the {role} key {} is not a trusted key",
                        base64_of(k.as_bytes())
                    ));
                }
            }
            Ok(())
        })(),
    );

    report.add(
        "files",
        (|| {
            let mut listed = BTreeSet::new();
            for file in &m.files {
                if !listed.insert(file.path.as_str()) {
                    return Err(format!("{} is listed twice", file.path));
                }
                let want =
                    hex_hash(&file.sha256).ok_or_else(|| format!("{}: bad sha256", file.path))?;
                let (got, bytes) = if file.path == f::EVENTS {
                    if !seen.contains(f::EVENTS) {
                        return Err("events.jsonl is missing".into());
                    }
                    (scan.sha256, scan.bytes)
                } else {
                    let b = small
                        .get(&file.path)
                        .ok_or_else(|| format!("{} is missing", file.path))?;
                    (Sha256::digest(b).into(), b.len() as u64)
                };
                if bytes != file.bytes {
                    return Err(format!(
                        "{} is {bytes} bytes, the manifest says {}",
                        file.path, file.bytes
                    ));
                }
                if got != want {
                    return Err(format!(
                        "{}'s SHA-256 differs from the manifest's",
                        file.path
                    ));
                }
            }
            for p in f::LISTED {
                if !listed.contains(p) {
                    return Err(format!("the manifest does not list {p}"));
                }
            }
            for p in &seen {
                if !listed.contains(p.as_str()) && p != f::MANIFEST && p != f::MANIFEST_SIG {
                    return Err(format!("{p} is in the archive but not in the manifest"));
                }
            }
            if listed.len() != f::LISTED.len() {
                return Err("the manifest lists files the format does not have".into());
            }
            Ok(())
        })(),
    );

    let cp_bytes = small.get(f::CHECKPOINT);
    let cp_body = cp_bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.rfind("\n\n").map(|i| &t[..i + 1]));
    let checkpoint = cp_body
        .ok_or_else(|| "the checkpoint is missing or unreadable".to_string())
        .and_then(note::parse_body);

    report.add(
        "tenant",
        (|| {
            if let Some(t) = &opts.tenant
                && *t != m.tenant
            {
                return Err(format!("the bundle is tenant {}'s, not {t}'s", m.tenant));
            }
            let cp = checkpoint
                .as_ref()
                .map_err(|e| format!("not checked: {e}"))?;
            if cp.origin != format!("{}/{}", m.keys.log.name, m.tenant) {
                return Err(format!(
                    "the checkpoint's origin {} is not tenant {}'s tree",
                    cp.origin, m.tenant
                ));
            }
            Ok(())
        })(),
    );

    report.add(
        "checkpoint-signature",
        (|| {
            let b = cp_bytes.ok_or("the checkpoint is missing")?;
            note::verify(b, &m.keys.log.name, &log_keys).map(|_| ())
        })(),
    );

    let cp = checkpoint.clone();
    report.add(
        "checkpoint",
        (|| {
            let cp = cp.map_err(|e| format!("not checked: {e}"))?;
            let b = cp_bytes.expect("parsed");
            if Some(Sha256::digest(b).into()) != hex_hash(&m.tree.checkpoint_sha256) {
                return Err(
                    "the checkpoint's SHA-256 differs from the manifest's tree.checkpoint_sha256"
                        .into(),
                );
            }
            if cp.size != m.tree.size || Some(cp.root) != base64_hash(&m.tree.root) {
                return Err(format!(
                    "the checkpoint (size {}) and the manifest's tree (size {}) differ",
                    cp.size, m.tree.size
                ));
            }
            if c.range.tree_size != cp.size
                || c.range.first_sequence != m.range.first_sequence
                || c.range.last_sequence != m.range.last_sequence
            {
                return Err("proofs/range.json is for another tree or range".into());
            }
            if m.range.last_sequence >= cp.size {
                return Err("the range ends outside the checkpoint's tree".into());
            }
            Ok(())
        })(),
    );

    report.add(
        "events",
        (|| {
            if let Some(e) = &scan.unchecked {
                return Err(format!("not checked: {e}"));
            }
            if !seen.contains(f::EVENTS) {
                return Err("events.jsonl is missing".into());
            }
            if let Some(e) = &scan.events {
                return Err(e.clone());
            }
            let want = m.range.last_sequence - m.range.first_sequence + 1;
            if scan.count != want || m.event_count != want {
                return Err(format!(
                    "{} events, the range {}..={} needs {want} (manifest says {})",
                    scan.count, m.range.first_sequence, m.range.last_sequence, m.event_count
                ));
            }
            Ok(())
        })(),
    );

    report.add("time-order", scan.time.clone().map_or(Ok(()), Err));

    let root = checkpoint
        .as_ref()
        .map(|cp| (cp.size, cp.root))
        .map_err(|e| format!("not checked: {e}"));
    report.add(
        "range-proof",
        (|| {
            let (size, root) = root.clone()?;
            let (got, computed) = scan.root.ok_or("not checked: events unreadable")?;
            if got != m.range.last_sequence + 1 {
                return Err(format!(
                    "the events end the tree at size {got}, not {}",
                    m.range.last_sequence + 1
                ));
            }
            let proof = f::hashes(&c.range.consistency, "consistency")?;
            verify_consistency(got, size, &proof, &computed, &root)
                .map_err(|e| format!("the range is not in the checkpoint's tree: {e}"))
        })(),
    );

    report.add(
        "boundaries",
        (|| {
            let (size, root) = root.clone()?;
            let (first, last) = (m.range.first_sequence, m.range.last_sequence);
            match (&c.range.before, first) {
                (None, 0) => {}
                (None, _) => {
                    return Err(format!(
                        "the event before the range (sequence {}) is not proven",
                        first - 1
                    ));
                }
                (Some(_), 0) => return Err("an event before sequence 0 is claimed".into()),
                (Some(b), _) => {
                    let h = Header::of_proven(b)?;
                    if h.sequence != first - 1 || b.payload()?.is_some() {
                        return Err(format!(
                            "the leaf before the range is sequence {}, not {}",
                            h.sequence,
                            first - 1
                        ));
                    }
                    if h.recorded_at >= c.from {
                        return Err(format!(
                            "the event before the range (sequence {}) was recorded inside it",
                            h.sequence
                        ));
                    }
                    verify_inclusion(
                        h.sequence,
                        size,
                        &h.leaf_hash()?,
                        &f::hashes(&b.inclusion, "before.inclusion")?,
                        &root,
                    )
                    .map_err(|e| format!("the event before the range: {e}"))?;
                }
            }
            match &c.range.after {
                None if last + 1 == size => {}
                None => {
                    return Err(format!(
                        "the event after the range (sequence {}) is not proven",
                        last + 1
                    ));
                }
                Some(a) => {
                    let h = Header::of_proven(a)?;
                    if h.sequence != last + 1 || a.payload()?.is_some() || h.sequence >= size {
                        return Err(format!(
                            "the leaf after the range is sequence {}, not {}",
                            h.sequence,
                            last + 1
                        ));
                    }
                    if h.recorded_at < c.to {
                        return Err(format!(
                            "the event after the range (sequence {}) was recorded inside it",
                            h.sequence
                        ));
                    }
                    if let Some((t, pos)) = scan.last
                        && (h.recorded_at < t || h.global_position <= pos)
                    {
                        return Err(
                            "the event after the range goes back in time or position".into()
                        );
                    }
                    verify_inclusion(
                        h.sequence,
                        size,
                        &h.leaf_hash()?,
                        &f::hashes(&a.inclusion, "after.inclusion")?,
                        &root,
                    )
                    .map_err(|e| format!("the event after the range: {e}"))?;
                }
            }
            Ok(())
        })(),
    );

    report.add("retention", (|| {
        let (size, root) = root.clone()?;
        let policy: f::PolicyFile = strict_json(small.get(f::POLICY).ok_or("retention/policy.json is missing")?, f::POLICY)?;
        if policy.as_of != m.retention.as_of || policy.as_of != m.created_at {
            return Err("the retention as_of is not the bundle's created_at".into());
        }
        if let Some(p) = &policy.policy {
            prove_leaf(p, f::POLICY_EVENT_TYPE, size, &root).map_err(|e| format!("the policy: {e}"))?;
        }
        for line in lines(small.get(f::ERASURES).ok_or("retention/erasures.jsonl is missing")?)? {
            let leaf: f::ProvenLeaf = strict_json(line, f::ERASURES)?;
            prove_leaf(&leaf, f::ERASURE_EVENT_TYPE, size, &root).map_err(|e| format!("erasure {}: {e}", leaf.sequence))?;
            let er: f::Erasure = serde_json::from_str(leaf.payload()?.unwrap_or("")).map_err(|e| e.to_string())?;
            if er.rule != f::SUBJECT_REQUEST && !c.rules.iter().any(|r| r.name == er.rule) {
                return Err(format!("erasure {} has no policy reason: rule {:?} is not in the policy", leaf.sequence, er.rule));
            }
        }
        if let Some(e) = &scan.retention {
            return Err(e.clone());
        }
        if let Some(s) = scan.erasures_in_range.iter().find(|s| !c.erasure_sequences.contains(s)) {
            return Err(format!("the erasure at sequence {s} is not in retention/erasures.jsonl"));
        }
        let summary = f::RetentionSummary {
            as_of: policy.as_of.clone(),
            rules: c.rules.len() as u64,
            events_in_scope: scan.in_scope,
            events_past_window: scan.past_window,
            erased_events: scan.erased,
            erasures: c.erasure_sequences.len() as u64,
        };
        if summary != m.retention {
            return Err(format!("the manifest's retention summary differs from the bundle's evidence ({summary:?})"));
        }
        Ok(())
    })());

    if opts.from.is_some() || opts.to.is_some() {
        report.add(
            "requested-range",
            (|| {
                if let Some(from) = opts.from
                    && from < c.from
                {
                    return Err(format!(
                        "the bundle starts at {}, after the requested start",
                        m.range.from
                    ));
                }
                if let Some(to) = opts.to
                    && to > c.to
                {
                    return Err(format!(
                        "the bundle ends at {}, before the requested end",
                        m.range.to
                    ));
                }
                Ok(())
            })(),
        );
    }

    if let Some(known) = &opts.known_checkpoint {
        report.add("known-checkpoint", (|| {
            let k = note::verify(known, &m.keys.log.name, &log_keys).map_err(|e| format!("the known checkpoint: {e}"))?;
            let cp = checkpoint.as_ref().map_err(|e| format!("not checked: {e}"))?;
            if k.origin != cp.origin {
                return Err(format!("the known checkpoint is of {}, not {}", k.origin, cp.origin));
            }
            if k.size > cp.size {
                return Err(format!("stale checkpoint: the bundle's tree (size {}) is older than the known one (size {})", cp.size, k.size));
            }
            if k.size == cp.size {
                return if k.root == cp.root { Ok(()) } else { Err(format!("forked log: two roots for size {}", k.size)) };
            }
            let cons: f::ConsistencyFile = strict_json(
                small.get(f::CONSISTENCY).ok_or("proofs/consistency.json is missing")?,
                f::CONSISTENCY,
            )?;
            if cons.tree_size != cp.size {
                return Err("proofs/consistency.json is for another tree size".into());
            }
            let p = cons.from.iter().find(|p| p.size == k.size).ok_or_else(|| format!("no consistency proof from the known size {}", k.size))?;
            verify_consistency(k.size, cp.size, &f::hashes(&p.proof, "proof")?, &k.root, &cp.root)
                .map_err(|e| format!("forked log: the known checkpoint is not a prefix of the bundle's: {e}"))
        })());
    }

    report.add("trust", trust(opts));
    report
}

fn trust(opts: &Options) -> Result<(), String> {
    if opts.keys.is_empty() {
        Err(
            "no --key given: signatures were checked only against the keys inside the bundle"
                .into(),
        )
    } else {
        Ok(())
    }
}

fn base64_of(b: &[u8]) -> String {
    const B: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            s.push(if i <= c.len() {
                B[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    s
}

/// A policy or erasure leaf: the right type, its payload matching its hash, in the tree.
fn prove_leaf(leaf: &f::ProvenLeaf, ty: &str, size: u64, root: &Hash) -> Result<(), String> {
    let h = Header::of_proven(leaf)?;
    if h.event_type != ty {
        return Err(format!(
            "event {} is a {}, not a {ty}",
            h.sequence, h.event_type
        ));
    }
    let p = leaf.payload()?.ok_or("no payload")?;
    if <[u8; 32]>::from(Sha256::digest(p.as_bytes())) != h.payload_sha256 {
        return Err("the payload does not match payload_sha256".into());
    }
    verify_inclusion(
        h.sequence,
        size,
        &h.leaf_hash()?,
        &f::hashes(&leaf.inclusion, "inclusion")?,
        root,
    )
}

fn parse_manifest(bytes: &[u8]) -> Result<f::Manifest, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "manifest.json is not UTF-8".to_string())?;
    let head: f::ManifestHead =
        serde_json::from_str(text).map_err(|e| format!("manifest.json: {e}"))?;
    if head.format != f::FORMAT {
        return Err(format!("unknown bundle format {:?}", head.format));
    }
    if head.format_version != f::FORMAT_VERSION {
        return Err(format!(
            "unknown format version {} (this verifier reads {})",
            head.format_version,
            f::FORMAT_VERSION
        ));
    }
    serde_json::from_str(text).map_err(|e| format!("manifest.json: {e}"))
}

fn check_manifest(m: &f::Manifest) -> Result<(), String> {
    if m.format != f::FORMAT || m.format_version != f::FORMAT_VERSION {
        return Err("unknown format or version".into());
    }
    if m.previous_bundle_id.as_deref() == Some("") {
        return Err("previous_bundle_id is empty".into());
    }
    for (what, t) in [
        ("created_at", &m.created_at),
        ("range.from", &m.range.from),
        ("range.to", &m.range.to),
        ("retention.as_of", &m.retention.as_of),
    ] {
        timestamp(t).ok_or_else(|| format!("{what} {t:?} is not a timestamp"))?;
    }
    if timestamp(&m.range.from) >= timestamp(&m.range.to) {
        return Err("the time range is empty".into());
    }
    if m.range.first_sequence > m.range.last_sequence {
        return Err("the range holds no event".into());
    }
    if m.bundle_id.is_empty() || m.tenant.is_empty() {
        return Err("bundle_id or tenant is empty".into());
    }
    base64_hash(&m.tree.root).ok_or("tree.root is not a base64 32-byte hash")?;
    Ok(())
}

fn strict_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))?;
    serde_json::from_str(text).map_err(|e| format!("{what}: {e}"))
}

/// The lines of a JSON Lines file, each ending in a newline.
fn lines(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or("a JSON Lines file does not end with a newline")?;
    Ok(body.split(|&b| b == b'\n').collect())
}

#[cfg(test)]
mod fields_tests {
    use super::Fields;

    /// The shallow reading answers what a whole `serde_json::Value` would.
    #[test]
    fn personal_fields_read_shallowly_as_the_whole_value_would() {
        let cases = [
            (r#"{"email":{"$sealed":"x","kid":"k"}}"#, "/email", true),
            (r#"{"email":"ann@example.com"}"#, "/email", false),
            (r#"{"email":null}"#, "/email", true),
            (r#"{"role":"analyst"}"#, "/email", true),
            (r#"{"email":{"kid":"k"}}"#, "/email", false),
            (r#"{"\u0065mail":"ann@example.com"}"#, "/email", false),
            (r#"{"email":{"\u0024sealed":"x"}}"#, "/email", true),
            (
                r#"{"email":{"$sealed":"x"},"email":"ann"}"#,
                "/email",
                false,
            ),
            (r#"{"a":{"b":"plain"}}"#, "/a/b", false),
            (r#"{"a":{"b":{"$sealed":"x"}}}"#, "/a/b", true),
            (r#"["x"]"#, "/0", false),
            (r#""text""#, "/email", true),
        ];
        for (payload, pointer, ok) in cases {
            let f = Fields::parse(payload).unwrap();
            assert_eq!(f.erased_or_sealed(pointer), ok, "{payload} {pointer}");
        }
        assert!(Fields::parse("{not json").is_err());
    }
}
