//! Bearer tokens: random, shown once, stored only as their SHA-256.

use sha2::{Digest, Sha256};

/// A new token: `tnt_` and 64 hex characters carrying 244 random bits (two version-4 UUIDs from
/// the operating system's generator).
pub fn generate() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("tnt_{}{}", a.simple(), b.simple())
}

/// Lower-case hex SHA-256 of `text`.
pub fn sha256_hex(text: &[u8]) -> String {
    sha256_hex_of([text])
}

/// The SHA-256 of the parts one after the other, in lower-case hex, without joining them first.
pub fn sha256_hex_of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// HMAC-SHA256 (RFC 2104) of `parts` one after the other under `key`: the secrets the outbox
/// delivers (invite links, sign-in codes) are derived with it from ids the log keeps, so that
/// the log never holds them (ADR 030).
pub fn hmac_sha256<'a>(key: &[u8], parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equal in time independent of where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a presented token has the shape of ours (cheap rejection of garbage).
pub fn well_formed(token: &str) -> bool {
    token.len() == 68
        && token.starts_with("tnt_")
        && token[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_well_formed_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert!(!well_formed("tnt_XYZ"));
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", [b"what do ya want ".as_slice(), b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
