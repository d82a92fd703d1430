//! Every RFC 9162 inclusion and consistency vector in `fixtures/vectors/rfc9162` (copied unchanged from `shared/vectors`; transparency-dev's
//! test data): the valid ones verify, the invalid ones are rejected.

use std::path::{Path, PathBuf};

use serde_json::Value;
use verifier::merkle::{verify_consistency, verify_inclusion};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/vectors/rfc9162")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Decodes base64 with a reference decoder independent of the verifier's own (lenient: the
/// vectors' "don't care" roots are short, and that is the verifier's business to refuse).
fn b64(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap_or("");
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {s}"),
        };
        bits = (bits << 6) | u32::from(d);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn proof(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| a.iter().map(b64).collect())
        .unwrap_or_default()
}

fn check(kind: &str, run: impl Fn(&Value) -> Result<(), String>) -> usize {
    let all = files(&vectors_dir().join(kind));
    assert!(!all.is_empty(), "no {kind} vectors found");
    let mut wrong = Vec::new();
    for path in &all {
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let want_err = v["wantErr"].as_bool().unwrap();
        let got = run(&v);
        if got.is_err() != want_err {
            wrong.push(format!(
                "{}: wantErr {want_err}, got {got:?}",
                path.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} {kind} vectors wrong:\n{}",
        wrong.len(),
        all.len(),
        wrong.join("\n")
    );
    all.len()
}

#[test]
fn every_inclusion_vector_verifies_or_is_rejected_as_it_should() {
    let n = check("inclusion", |v| {
        verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &b64(&v["leafHash"]),
            &proof(&v["proof"]),
            &b64(&v["root"]),
        )
    });
    assert!(n > 50, "only {n} inclusion vectors");
}

#[test]
fn every_consistency_vector_verifies_or_is_rejected_as_it_should() {
    let n = check("consistency", |v| {
        verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &proof(&v["proof"]),
            &b64(&v["root1"]),
            &b64(&v["root2"]),
        )
    });
    assert!(n > 50, "only {n} consistency vectors");
}
