//! The proofs `audit` makes equal the published RFC 6962/9162 vectors (transparency-dev's test
//! data, copied into fixtures/vectors/rfc9162) for the eight reference leaves those vectors are built from.

use std::path::Path;

use audit::{base64, consistency_proof, inclusion_proof, leaf_hash, root};
use serde_json::Value;

fn reference_leaves() -> Vec<audit::Hash> {
    let data: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    data.iter().map(|d| leaf_hash(d)).collect()
}

fn happy(kind: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/vectors/rfc9162")
        .join(kind);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path().join("happy-path.json");
        if p.exists() {
            out.push(serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap());
        }
    }
    assert!(!out.is_empty());
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn inclusion_proofs_equal_the_published_ones() {
    let leaves = reference_leaves();
    for v in happy("inclusion") {
        let (i, n) = (
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
        );
        if n > 8 {
            continue;
        }
        assert_eq!(
            base64(&root(&leaves, n).unwrap()),
            v["root"].as_str().unwrap()
        );
        let got: Vec<String> = inclusion_proof(&leaves, i, n)
            .unwrap()
            .iter()
            .map(|h| base64(h))
            .collect();
        assert_eq!(got, strings(&v["proof"]), "leaf {i} of {n}");
    }
}

#[test]
fn consistency_proofs_equal_the_published_ones() {
    let leaves = reference_leaves();
    for v in happy("consistency") {
        let (a, b) = (v["size1"].as_u64().unwrap(), v["size2"].as_u64().unwrap());
        if b > 8 || a == 0 {
            continue;
        }
        assert_eq!(
            base64(&root(&leaves, b).unwrap()),
            v["root2"].as_str().unwrap()
        );
        let got: Vec<String> = consistency_proof(&leaves, a, b)
            .unwrap()
            .iter()
            .map(|h| base64(h))
            .collect();
        assert_eq!(got, strings(&v["proof"]), "{a} -> {b}");
    }
}
