//! Ed25519 public keys in PEM (SubjectPublicKeyInfo, RFC 8410), as `openssl` writes them.

use ed25519_dalek::VerifyingKey;

use crate::encoding::base64;

const PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Reads one `-----BEGIN PUBLIC KEY-----` block holding an Ed25519 key.
pub fn public_key(pem: &[u8]) -> Result<VerifyingKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the key file is not UTF-8".to_string())?;
    let body = text
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("not a PEM public key (-----BEGIN PUBLIC KEY-----)")?;
    let b64: String = body.split(['\n', '\r']).map(str::trim).collect();
    let der = base64(&b64).ok_or("the PEM body is not base64")?;
    if der.len() != 44 || der[..12] != PREFIX {
        return Err("not an Ed25519 SubjectPublicKeyInfo".into());
    }
    let raw: [u8; 32] = der[12..].try_into().expect("32 bytes");
    VerifyingKey::from_bytes(&raw).map_err(|_| "not a valid Ed25519 point".to_string())
}
