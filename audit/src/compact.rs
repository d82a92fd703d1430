//! The incremental tree a store keeps per tenant: a compact range over `[0, size)`, the roots of
//! the perfect subtrees that the binary decomposition of `size` gives, largest (leftmost) first.
//! Appending a leaf merges at most log2(size) pairs; the state is at most 64 hashes.

use crate::hash::{EMPTY_ROOT, Hash, node_hash};

/// The compact range `[0, size)` of a tree: enough to append and to compute the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    roots: Vec<Hash>,
}

/// The serialised state's version byte.
const STATE_VERSION: u8 = 1;

/// Why a persisted compact range cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("compact range state has version {0}, expected 1")]
    Version(u8),
    #[error("compact range state is {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("compact range of size {size} needs {want} roots, got {got}")]
    Roots { size: u64, want: usize, got: usize },
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        CompactRange::default()
    }

    /// A range from its parts; `roots` must have one hash per set bit of `size`, largest first.
    pub fn from_parts(size: u64, roots: Vec<Hash>) -> Result<Self, StateError> {
        let want = size.count_ones() as usize;
        if roots.len() != want {
            return Err(StateError::Roots {
                size,
                want,
                got: roots.len(),
            });
        }
        Ok(CompactRange { size, roots })
    }

    /// The number of leaves so far; the next leaf's index.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtree roots, largest first.
    pub fn roots(&self) -> &[Hash] {
        &self.roots
    }

    /// Appends one leaf hash (see [`crate::LeafHeader::leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Each trailing one bit of the old size is a perfect subtree of equal height to merge with.
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.roots.pop().expect("one root per set bit");
            node = node_hash(&left, &node);
            s >>= 1;
        }
        self.roots.push(node);
        self.size += 1;
    }

    /// The tree's root (RFC 9162 MTH): the roots folded from the right.
    pub fn root(&self) -> Hash {
        let mut it = self.roots.iter().rev();
        let Some(last) = it.next() else {
            return EMPTY_ROOT;
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The persisted form: version byte, size as u64 big-endian, then the roots.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + 32 * self.roots.len());
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        for r in &self.roots {
            out.extend_from_slice(r);
        }
        out
    }

    /// Reads back [`CompactRange::to_bytes`], refusing anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(StateError::Length { got: 0, want: 9 });
        };
        if version != STATE_VERSION {
            return Err(StateError::Version(version));
        }
        if rest.len() < 8 {
            return Err(StateError::Length {
                got: bytes.len(),
                want: 9,
            });
        }
        let size = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let want = 9 + 32 * size.count_ones() as usize;
        if bytes.len() != want {
            return Err(StateError::Length {
                got: bytes.len(),
                want,
            });
        }
        let roots = rest[8..]
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        CompactRange::from_parts(size, roots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    #[test]
    fn state_round_trips_and_refuses_garbage() {
        let mut c = CompactRange::new();
        for i in 0..13u8 {
            c.push(leaf_hash(&[i]));
            let back = CompactRange::from_bytes(&c.to_bytes()).unwrap();
            assert_eq!(back, c);
        }
        let bytes = c.to_bytes();
        assert!(CompactRange::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(CompactRange::from_bytes(&v2), Err(StateError::Version(2)));
        assert!(CompactRange::from_bytes(&[]).is_err());
    }

    #[test]
    fn empty_range_has_the_empty_root() {
        assert_eq!(CompactRange::new().root(), EMPTY_ROOT);
    }
}
