//! RFC 9162 §2.1.1 hashing: the domain-separated leaf and interior-node hashes every tree in this
//! crate is made of.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node or a tree root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of no bytes.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Plain SHA-256, used for payloads, files and key ids.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// `SHA-256(0x00 || data)`: the hash of a leaf whose entry is `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(sha256(b""), EMPTY_ROOT);
    }
}
