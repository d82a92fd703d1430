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
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
