//! Builds real bundles with `audit::BundleWriter` and takes them apart again, for the tamper matrix
//! and the command-line tests.

#![allow(dead_code)]

use std::io::{Cursor, Read};

use audit::{
    BundleKeys, BundleSpec, BundleWriter, Checkpoint, LeafHeader, LogKey, SigningKey, StoredEvent,
    origin, public_key_pem, root,
};
use ed25519_dalek::Signer;

pub const TENANT: &str = "6f1c0b3e-0000-4000-8000-000000000001";
pub const LOG_NAME: &str = "tenantry.test/audit";
pub const DAY: i64 = 86_400_000_000;
pub const BASE: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

pub fn export_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}
pub fn log_signing_key() -> SigningKey {
    SigningKey::from_bytes(&[22; 32])
}
pub fn log_key() -> LogKey {
    LogKey::new(LOG_NAME, log_signing_key()).unwrap()
}
pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[33; 32])
}

/// How the tenant's history is made.
#[derive(Clone, Debug)]
pub struct Params {
    /// Leaves in the tree (the checkpoint's size).
    pub total: u64,
    /// Member events past the window hold their email in plaintext.
    pub plaintext: bool,
    /// The rule the erasure names.
    pub erasure_rule: &'static str,
    /// The erasure also erases event 26, which is inside its window.
    pub erase_inside_window: bool,
    /// The sequences the erasure names instead of the default ones.
    pub erasure_sequences: Option<&'static str>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            total: 40,
            plaintext: false,
            erasure_rule: "members",
            erase_inside_window: false,
            erasure_sequences: None,
        }
    }
}

/// One event a day from BASE: 0 is the policy, every fifth from 1 a member, 38 an erasure of the
/// members past their 30-day window.
pub fn history(p: &Params, total: u64) -> Vec<StoredEvent> {
    (0..total)
        .map(|i| {
            let t = BASE + i as i64 * DAY;
            let (ty, payload) = match i {
                0 => (
                    "retention.policy_set",
                    r#"{"rules":[{"name":"members","event_types":["tenant.member_added"],"fields":["/email"],"keep_days":30}]}"#
                        .to_string(),
                ),
                38 => {
                    let seqs = match p.erasure_sequences {
                        Some(s) => s,
                        None if p.erase_inside_window => "[1,6,26]",
                        None => "[1,6]",
                    };
                    ("erasure.applied", format!(r#"{{"rule":"{}","sequences":{seqs}}}"#, p.erasure_rule))
                }
                i if i % 5 == 1 => {
                    let email = if p.plaintext && i == 6 {
                        r#""ann@example.com""#.to_string()
                    } else {
                        format!(r#"{{"$sealed":"k{i}:c2VhbGVk"}}"#)
                    };
                    ("tenant.member_added", format!(r#"{{"email":{email},"role":"analyst","n":{i}}}"#))
                }
                // A payload appended pretty-printed is kept as it was: the bundle spells it as a string.
                4 => ("dataset.uploaded", "{\n  \"dataset\": \"d4\"\n}".to_string()),
                _ => ("dataset.uploaded", format!(r#"{{"dataset":"d{i}","rows":{}}}"#, i * 10)),
            };
            let header = LeafHeader::new(i, 1000 + 3 * i, t - 1000, t, ty, 1, format!("tenant-{TENANT}"), payload.as_bytes());
            StoredEvent { header, payload: Some(payload.into_bytes()) }
        })
        .collect()
}

pub fn leaves(events: &[StoredEvent]) -> Vec<audit::Hash> {
    events
        .iter()
        .map(|e| e.header.leaf_hash().unwrap())
        .collect()
}

/// A signed checkpoint of the first `size` leaves.
pub fn checkpoint(leaves: &[audit::Hash], size: u64) -> audit::SignedCheckpoint {
    log_key().sign(Checkpoint {
        origin: origin(LOG_NAME, TENANT).unwrap(),
        size,
        root: root(leaves, size).unwrap(),
    })
}

/// The range of days 3..30: sequences 3..=29, with 2 and 30 as boundaries.
pub fn build(p: &Params) -> Vec<u8> {
    let events = history(p, p.total);
    let leaves = leaves(&events);
    let cp = checkpoint(&leaves, p.total);
    let (first, last) = (3u64, 29u64);
    let spec = BundleSpec {
        bundle_id: "b-0001".into(),
        created_at_micros: BASE + 40 * DAY,
        tenant: TENANT.into(),
        previous_bundle_id: Some("b-0000".into()),
        from_micros: BASE + 3 * DAY,
        to_micros: BASE + 30 * DAY,
        first_sequence: first,
        last_sequence: last,
        checkpoint: &cp,
        leaves: &leaves,
        before: Some(events[2].header.clone()),
        after: Some(events[30].header.clone()),
        policy: Some(events[0].clone()),
        erasures: vec![events[38].clone()],
        known_sizes: vec![20],
        keys: BundleKeys {
            export: &export_key(),
            log_name: LOG_NAME,
            log_public: log_signing_key().verifying_key(),
        },
    };
    let mut out = Vec::new();
    let range: Vec<Result<StoredEvent, std::io::Error>> = events[first as usize..=last as usize]
        .iter()
        .cloned()
        .map(Ok)
        .collect();
    BundleWriter::new(spec)
        .write(range, &mut Cursor::new(Vec::new()), &mut out)
        .unwrap();
    out
}

pub fn trusted() -> Vec<audit::VerifyingKey> {
    vec![
        export_key().verifying_key(),
        log_signing_key().verifying_key(),
    ]
}

pub fn pem_of(key: &SigningKey) -> String {
    public_key_pem(&key.verifying_key())
}

/// A bundle taken apart: its entries in order.
#[derive(Clone)]
pub struct Unpacked {
    pub entries: Vec<(String, Vec<u8>)>,
}

impl Unpacked {
    pub fn of(bundle: &[u8]) -> Self {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
        let mut entries = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_str().unwrap().to_string();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            entries.push((path, b));
        }
        Unpacked { entries }
    }

    pub fn get(&self, path: &str) -> &[u8] {
        &self
            .entries
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .1
    }

    pub fn get_mut(&mut self, path: &str) -> &mut Vec<u8> {
        &mut self
            .entries
            .iter_mut()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .1
    }

    pub fn text(&self, path: &str) -> String {
        String::from_utf8(self.get(path).to_vec()).unwrap()
    }

    pub fn set_text(&mut self, path: &str, text: String) {
        *self.get_mut(path) = text.into_bytes();
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(self.get(path)).unwrap()
    }

    pub fn set_json(&mut self, path: &str, v: &serde_json::Value) {
        *self.get_mut(path) = serde_json::to_vec_pretty(v).unwrap();
    }

    pub fn remove(&mut self, path: &str) {
        self.entries.retain(|(p, _)| p != path);
    }

    /// Updates the manifest's file list to the current bytes, edits it, and signs it with `key`
    /// (what a server holding the export key, but not able to forge the log, could do).
    pub fn resign_with(&mut self, key: &SigningKey, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut m = self.json("manifest.json");
        let files: Vec<serde_json::Value> = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let path = f["path"].as_str().unwrap();
                match self.entries.iter().find(|(p, _)| p == path) {
                    Some((_, b)) => serde_json::json!({
                        "path": path, "sha256": audit::hex(&audit::sha256(b)), "bytes": b.len()
                    }),
                    None => f.clone(),
                }
            })
            .collect();
        m["files"] = files.into();
        if let Some(cp) = self.entries.iter().find(|(p, _)| p == "checkpoint") {
            m["tree"]["checkpoint_sha256"] = audit::hex(&audit::sha256(&cp.1)).into();
        }
        edit(&mut m);
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        self.resign_raw(key, bytes);
    }

    pub fn resign(&mut self, edit: impl FnOnce(&mut serde_json::Value)) {
        self.resign_with(&export_key(), edit)
    }

    pub fn resign_raw(&mut self, key: &SigningKey, manifest: Vec<u8>) {
        let sig = key.sign(&manifest).to_bytes().to_vec();
        *self.get_mut("manifest.json") = manifest;
        *self.get_mut("manifest.json.sig") = sig;
    }

    pub fn pack(&self) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, bytes) in &self.entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, &bytes[..]).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }
}
