//! Roots and proofs over a tree's leaf hashes, by the recursive definitions of RFC 9162 §2.1.1
//! (MTH), §2.1.3.1 (PATH) and §2.1.4.1 (SUBPROOF). Each proof reads every leaf under the tree
//! once (O(n) hashing); a [`LeafSource`] may answer perfect subtrees from a cache to do better.

use crate::compact::CompactRange;
use crate::hash::{EMPTY_ROOT, Hash, node_hash};

/// Where proofs read a tree's leaf hashes from.
pub trait LeafSource {
    /// How many leaf hashes are available (leaves `0..len`).
    fn len(&self) -> u64;

    /// Whether there are no leaves.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hash at `index` (< `len()`).
    fn leaf(&self, index: u64) -> Hash;

    /// The root of the perfect subtree `[start, start + 2^height)` when the source has it cached;
    /// `None` makes the caller hash the leaves.
    fn perfect_subtree(&self, _start: u64, _height: u32) -> Option<Hash> {
        None
    }
}

impl LeafSource for [Hash] {
    fn len(&self) -> u64 {
        <[Hash]>::len(self) as u64
    }
    fn leaf(&self, index: u64) -> Hash {
        self[index as usize]
    }
}

impl LeafSource for Vec<Hash> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn leaf(&self, index: u64) -> Hash {
        self[index as usize]
    }
}

/// Why a root or proof cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("tree size {size} is larger than the {available} leaves available")]
    NotEnoughLeaves { size: u64, available: u64 },
    #[error("leaf index {index} is not inside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("no consistency proof from size {old} to size {new} (needs 0 < old <= new)")]
    BadSizes { old: u64, new: u64 },
}

/// The root of the tree made of the first `size` leaves.
pub fn root<S: LeafSource + ?Sized>(src: &S, size: u64) -> Result<Hash, ProofError> {
    check_size(src, size)?;
    Ok(subtree_root(src, 0, size))
}

/// The inclusion proof (audit path) of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<S: LeafSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    check_size(src, size)?;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof);
    Ok(proof)
}

/// The consistency proof from the tree of the first `old` leaves to the tree of the first `new`.
/// Empty when `old == new`.
pub fn consistency_proof<S: LeafSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    check_size(src, new)?;
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    let mut proof = Vec::new();
    if old < new {
        subproof(src, old, 0, new, true, &mut proof);
    }
    Ok(proof)
}

/// The compact range of `[0, size)`: the perfect subtree roots a verifier starts from to recompute
/// a root from the leaves after `size`.
pub fn compact_range<S: LeafSource + ?Sized>(
    src: &S,
    size: u64,
) -> Result<CompactRange, ProofError> {
    check_size(src, size)?;
    let mut roots = Vec::new();
    let mut start = 0;
    for bit in (0..64).rev() {
        let width = 1u64 << bit;
        if size & width != 0 {
            roots.push(subtree_root(src, start, start + width));
            start += width;
        }
    }
    Ok(CompactRange::from_parts(size, roots).expect("one root per set bit"))
}

fn check_size<S: LeafSource + ?Sized>(src: &S, size: u64) -> Result<(), ProofError> {
    if size > src.len() {
        return Err(ProofError::NotEnoughLeaves {
            size,
            available: src.len(),
        });
    }
    Ok(())
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of the leaves `[lo, hi)`.
fn subtree_root<S: LeafSource + ?Sized>(src: &S, lo: u64, hi: u64) -> Hash {
    let n = hi - lo;
    if n == 0 {
        return EMPTY_ROOT;
    }
    if n.is_power_of_two() {
        if let Some(h) = src.perfect_subtree(lo, n.trailing_zeros()) {
            return h;
        }
        if n > 1 {
            let k = n / 2;
            return node_hash(
                &subtree_root(src, lo, lo + k),
                &subtree_root(src, lo + k, hi),
            );
        }
        return src.leaf(lo);
    }
    let k = split(n);
    node_hash(
        &subtree_root(src, lo, lo + k),
        &subtree_root(src, lo + k, hi),
    )
}

/// PATH(m, D[lo:hi]) with `m` relative to the whole tree.
fn path<S: LeafSource + ?Sized>(src: &S, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < lo + k {
        path(src, m, lo, lo + k, out);
        out.push(subtree_root(src, lo + k, hi));
    } else {
        path(src, m, lo + k, hi, out);
        out.push(subtree_root(src, lo, lo + k));
    }
}

/// SUBPROOF(m, D[lo:hi], b) with `m` counted from `lo`.
fn subproof<S: LeafSource + ?Sized>(
    src: &S,
    m: u64,
    lo: u64,
    hi: u64,
    b: bool,
    out: &mut Vec<Hash>,
) {
    let n = hi - lo;
    if m == n {
        if !b {
            out.push(subtree_root(src, lo, hi));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, lo, lo + k, b, out);
        out.push(subtree_root(src, lo + k, hi));
    } else {
        subproof(src, m - k, lo + k, hi, false, out);
        out.push(subtree_root(src, lo, lo + k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn compact_range_root_equals_recursive_root_for_every_size() {
        let all = leaves(70);
        let mut c = CompactRange::new();
        assert_eq!(root(&all, 0).unwrap(), c.root());
        for (i, l) in all.iter().enumerate() {
            c.push(*l);
            assert_eq!(
                c.root(),
                root(&all, i as u64 + 1).unwrap(),
                "size {}",
                i + 1
            );
            assert_eq!(compact_range(&all, i as u64 + 1).unwrap(), c);
        }
    }

    #[test]
    fn proofs_refuse_impossible_requests() {
        let all = leaves(4);
        assert_eq!(
            inclusion_proof(&all, 4, 4),
            Err(ProofError::IndexOutOfRange { index: 4, size: 4 })
        );
        assert_eq!(
            root(&all, 5),
            Err(ProofError::NotEnoughLeaves {
                size: 5,
                available: 4
            })
        );
        assert_eq!(
            consistency_proof(&all, 0, 3),
            Err(ProofError::BadSizes { old: 0, new: 3 })
        );
        assert_eq!(
            consistency_proof(&all, 3, 2),
            Err(ProofError::BadSizes { old: 3, new: 2 })
        );
        assert_eq!(consistency_proof(&all, 3, 3), Ok(vec![]));
    }
}
