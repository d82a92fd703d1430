//! Signed checkpoints: a tenant tree's size and root as a C2SP tlog-checkpoint, signed as a C2SP
//! signed note with an Ed25519 log key.
//!
//! ```text
//! tenantry.example/audit/6f1c…        origin: the log key's name, "/", the tenant id
//! 1042                                 tree size, decimal
//! 3q2+7w…=                             root, base64
//!
//! — tenantry.example/audit base64(key id (4 bytes) || Ed25519 signature (64 bytes))
//! ```

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::encoding::base64;
use crate::hash::{Hash, sha256};

/// The signed-note signature type byte of Ed25519.
const ED25519_TYPE: u8 = 0x01;

/// A tree head: what a checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log identity: `{log key name}/{tenant id}`, see [`origin`].
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// A checkpoint with its signed-note text, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The whole note: body, blank line, signature line.
    pub note: String,
}

/// Why a key name or origin is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("key name or origin {0:?} is empty or holds whitespace, '+' or a control character")]
    Invalid(String),
}

/// The origin line of a tenant's tree: `{log_name}/{tenant}`.
pub fn origin(log_name: &str, tenant: &str) -> Result<String, NameError> {
    let o = format!("{log_name}/{tenant}");
    check_name(&o)?;
    check_name(log_name)?;
    Ok(o)
}

fn check_name(s: &str) -> Result<(), NameError> {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err(NameError::Invalid(s.to_string()));
    }
    Ok(())
}

/// The Ed25519 key that signs checkpoints, with the name its signature lines carry.
#[derive(Debug)]
pub struct LogKey {
    name: String,
    key: SigningKey,
}

impl LogKey {
    /// A log key named `name` (a schema-less URL, e.g. `tenantry.example/audit`).
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, NameError> {
        let name = name.into();
        check_name(&name)?;
        Ok(LogKey { name, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signed-note key id: `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.verifying_key())
    }

    /// The C2SP verifier key string `name+hex(key id)+base64(0x01 || public key)`, what
    /// `GET /v1/audit/keys` can publish beside the PEM.
    pub fn verifier_key(&self) -> String {
        let mut k = vec![ED25519_TYPE];
        k.extend_from_slice(self.verifying_key().as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            crate::encoding::hex(&self.key_id()),
            base64(&k)
        )
    }

    /// Signs `checkpoint` as a note.
    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let body = checkpoint.body();
        let sig = self.key.sign(body.as_bytes());
        let mut blob = self.key_id().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        let note = format!("{body}\n\u{2014} {} {}\n", self.name, base64(&blob));
        SignedCheckpoint { checkpoint, note }
    }
}

/// The signed-note key id of an Ed25519 key.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut data = Vec::with_capacity(name.len() + 34);
    data.extend_from_slice(name.as_bytes());
    data.push(b'\n');
    data.push(ED25519_TYPE);
    data.extend_from_slice(key.as_bytes());
    let h = sha256(&data);
    [h[0], h[1], h[2], h[3]]
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, base64(&self.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_has_the_c2sp_shape() {
        let key = LogKey::new("tenantry.test/audit", SigningKey::from_bytes(&[7; 32])).unwrap();
        let cp = Checkpoint {
            origin: origin("tenantry.test/audit", "t1").unwrap(),
            size: 3,
            root: [0; 32],
        };
        let signed = key.sign(cp);
        let (body, sigs) = signed.note.split_once("\n\n").unwrap();
        assert_eq!(format!("{body}\n"), signed.checkpoint.body());
        assert!(sigs.starts_with("\u{2014} tenantry.test/audit "));
        assert!(sigs.ends_with('\n'));
        assert!(LogKey::new("has space", SigningKey::from_bytes(&[7; 32])).is_err());
        assert!(origin("a", "b+c").is_err());
    }
}
