//! The pure core of Tenantry's audit log (ADR 020): RFC 9162 leaves and trees per tenant, the
//! compact range a store keeps to append in O(log n), roots and proofs, C2SP signed checkpoints,
//! and the audit bundle writer. No IO but the `Read`/`Write` it is handed, no clock, no async.
//!
//! What a store does with it, per tenant:
//! - on each append: `header.leaf_hash()` then [`CompactRange::push`]; persist
//!   [`CompactRange::to_bytes`] (and the leaf hash, for proofs) in the same transaction;
//! - for a checkpoint: [`CompactRange::root`] and [`LogKey::sign`];
//! - for proofs: [`inclusion_proof`], [`consistency_proof`] over the stored leaf hashes;
//! - for a bundle: [`BundleWriter`].

mod bundle;
mod checkpoint;
mod compact;
mod encoding;
mod hash;
mod keys;
mod leaf;
mod proof;
mod retention;

pub use bundle::{
    BundleError, BundleKeys, BundleSpec, BundleSummary, BundleWriter, FORMAT, FORMAT_VERSION,
    StoredEvent, paths,
};
pub use checkpoint::{Checkpoint, LogKey, NameError, SignedCheckpoint, key_id, origin};
pub use compact::{CompactRange, StateError};
pub use encoding::{base64, hex, rfc3339_micros};
pub use hash::{EMPTY_ROOT, Hash, leaf_hash, node_hash, sha256};
pub use keys::{ED25519_SPKI_PREFIX, public_key_pem};
pub use leaf::{LEAF_VERSION, LeafError, LeafHeader};
pub use proof::{LeafSource, ProofError, compact_range, consistency_proof, inclusion_proof, root};
pub use retention::{
    ERASURE_EVENT_TYPE, Erasure, POLICY_EVENT_TYPE, RetentionPolicy, RetentionRule, SEALED_MEMBER,
};

/// Re-exported so callers name the same key types this crate signs with.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
