//! RFC 9162 proof verification, written from §2.1.3.2 and §2.1.4.2 and independent of the code
//! that makes the proofs. Hashes that are not 32 bytes are refused, never truncated or padded.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// SHA-256 of no bytes: the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn as_hash(b: &[u8], what: &str) -> Result<Hash, String> {
    b.try_into()
        .map_err(|_| format!("{what} is {} bytes, not 32", b.len()))
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with root `root`.
pub fn verify_inclusion<P: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[P],
    root: &[u8],
) -> Result<(), String> {
    if index >= size {
        return Err(format!(
            "leaf index {index} is not inside a tree of size {size}"
        ));
    }
    let leaf = as_hash(leaf, "leaf hash")?;
    let root = as_hash(root, "root")?;
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for (i, p) in proof.iter().enumerate() {
        let p = as_hash(p.as_ref(), &format!("proof element {i}"))?;
        if snode == 0 {
            return Err(format!(
                "inclusion proof has {} elements, too many",
                proof.len()
            ));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(&p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, &p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(format!(
            "inclusion proof has {} elements, too few",
            proof.len()
        ));
    }
    if r != root {
        return Err("inclusion proof does not lead to the root".into());
    }
    Ok(())
}

/// Checks that the tree of `size1` leaves with root `root1` is a prefix of the tree of `size2`
/// leaves with root `root2`.
pub fn verify_consistency<P: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    proof: &[P],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), String> {
    if size1 > size2 {
        return Err(format!("size {size1} is larger than size {size2}"));
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err("equal sizes need an empty proof".into());
        }
        if root1 != root2 {
            return Err("equal sizes but different roots".into());
        }
        if size1 == 0 && root1 != empty_root() {
            return Err("an empty tree's root must be SHA-256 of nothing".into());
        }
        return Ok(());
    }
    if size1 == 0 {
        return Err("a consistency proof from the empty tree proves nothing".into());
    }
    if proof.is_empty() {
        return Err("consistency proof is empty".into());
    }
    let root1 = as_hash(root1, "first root")?;
    let root2 = as_hash(root2, "second root")?;
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(root1);
    }
    for (i, p) in proof.iter().enumerate() {
        path.push(as_hash(p.as_ref(), &format!("proof element {i}"))?);
    }
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err("consistency proof is too long".into());
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err("consistency proof is too short".into());
    }
    if fr != root1 {
        return Err("consistency proof does not lead to the first root".into());
    }
    if sr != root2 {
        return Err("consistency proof does not lead to the second root".into());
    }
    Ok(())
}

/// The right edge of a tree being rebuilt from a prefix's perfect subtrees and the leaves after
/// them: a stack of (leaf count, hash), merged whenever the two on top are equal in size.
#[derive(Debug)]
pub struct Frontier {
    nodes: Vec<(u64, Hash)>,
    size: u64,
}

impl Frontier {
    /// Starts from the perfect subtrees of `[0, size)` (largest first, one per set bit of `size`).
    pub fn new(size: u64, left: &[Hash]) -> Result<Self, String> {
        let mut nodes = Vec::with_capacity(64);
        let mut rest = size;
        for h in left {
            if rest == 0 {
                return Err(format!(
                    "{} left subtrees given for a prefix of size {size}",
                    left.len()
                ));
            }
            let width = 1u64 << (63 - rest.leading_zeros());
            nodes.push((width, *h));
            rest -= width;
        }
        if rest != 0 {
            return Err(format!(
                "{} left subtrees given for a prefix of size {size}",
                left.len()
            ));
        }
        Ok(Frontier { nodes, size })
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (1u64, leaf);
        while let Some(&(w, h)) = self.nodes.last() {
            if w != cur.0 {
                break;
            }
            self.nodes.pop();
            cur = (w * 2, node_hash(&h, &cur.1));
        }
        self.nodes.push(cur);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree `[0, size)`.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(&(_, last)) => it.fold(last, |acc, (_, h)| node_hash(h, &acc)),
        }
    }
}
