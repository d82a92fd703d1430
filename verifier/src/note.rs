//! C2SP signed notes carrying tlog checkpoints: parse strictly, verify Ed25519 signatures of known
//! keys with `verify_strict`.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::encoding::{base64, base64_hash};
use crate::merkle::Hash;

/// A checkpoint's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// The signed-note key id of an Ed25519 key: `SHA-256(name || 0x0A || 0x01 || key)[:4]`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, 0x01]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Parses `note` and checks it is signed by `name` with one of `keys`. Signatures of other keys
/// are ignored (C2SP); a signature by a known key that fails rejects the note.
pub fn verify(note: &[u8], name: &str, keys: &[VerifyingKey]) -> Result<Checkpoint, String> {
    let text = std::str::from_utf8(note).map_err(|_| "the note is not UTF-8".to_string())?;
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("the note holds a control character".into());
    }
    let split = text
        .rfind("\n\n")
        .ok_or("the note has no blank line before its signatures")?;
    let (body, sigs) = (&text[..split + 1], &text[split + 2..]);
    if !sigs.ends_with('\n') || sigs.len() < 2 {
        return Err("the note's signature lines do not end with a newline".into());
    }
    let checkpoint = parse_body(body)?;
    let known: Vec<([u8; 4], &VerifyingKey)> = keys.iter().map(|k| (key_id(name, k), k)).collect();
    let mut verified = 0;
    let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
    if lines.len() > 16 {
        return Err("the note has more than 16 signatures".into());
    }
    for line in lines {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| format!("bad signature line {line:?}"))?;
        let (signer, b64) = rest
            .split_once(' ')
            .ok_or_else(|| format!("bad signature line {line:?}"))?;
        let blob = base64(b64).ok_or_else(|| format!("signature of {signer} is not base64"))?;
        if blob.len() < 4 {
            return Err(format!("signature of {signer} is too short"));
        }
        if signer != name {
            continue;
        }
        let id: [u8; 4] = blob[..4].try_into().expect("4 bytes");
        for (kid, key) in known.iter().filter(|(kid, _)| *kid == id) {
            let _ = kid;
            let sig: [u8; 64] = blob[4..]
                .try_into()
                .map_err(|_| format!("signature of {signer} is not 64 bytes"))?;
            key.verify_strict(body.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| {
                    format!(
                        "signature of {signer} (key id {}) does not verify",
                        hex4(&id)
                    )
                })?;
            verified += 1;
        }
    }
    if verified == 0 {
        return Err(format!("no signature by a trusted key named {name}"));
    }
    Ok(checkpoint)
}

fn hex4(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// `origin\nsize\nbase64(root)\n`, nothing more (extension lines are refused).
pub fn parse_body(body: &str) -> Result<Checkpoint, String> {
    let lines: Vec<&str> = body
        .strip_suffix('\n')
        .ok_or("the checkpoint body does not end with a newline")?
        .split('\n')
        .collect();
    if lines.len() != 3 {
        return Err(format!(
            "the checkpoint body has {} lines, expected 3",
            lines.len()
        ));
    }
    let origin = lines[0];
    if origin.is_empty() || origin.chars().any(char::is_whitespace) {
        return Err("the checkpoint origin is empty or holds whitespace".into());
    }
    let size_text = lines[1];
    if size_text.is_empty()
        || !size_text.bytes().all(|b| b.is_ascii_digit())
        || (size_text.len() > 1 && size_text.starts_with('0'))
    {
        return Err(format!(
            "the checkpoint size {size_text:?} is not a decimal number"
        ));
    }
    let size = size_text
        .parse()
        .map_err(|_| format!("the checkpoint size {size_text:?} is too large"))?;
    let root = base64_hash(lines[2]).ok_or("the checkpoint root is not a base64 32-byte hash")?;
    Ok(Checkpoint {
        origin: origin.to_string(),
        size,
        root,
    })
}
