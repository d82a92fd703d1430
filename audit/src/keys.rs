//! Public keys as PEM: SubjectPublicKeyInfo (RFC 8410), the form `openssl pkeyutl -pubin` reads.

use ed25519_dalek::VerifyingKey;

use crate::encoding::base64;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// `-----BEGIN PUBLIC KEY-----` PEM of an Ed25519 public key.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64(&der)
    )
}
