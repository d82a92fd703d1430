//! The leaf of a tenant's audit tree: a fixed binary header that commits to one stored event
//! (ADR 020). The payload enters only through its SHA-256, so erasing personal data never changes a
//! leaf, a root or a proof.
//!
//! Layout (all integers big-endian), version 1:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | leaf format version, `0x01` |
//! | 8 | tenant sequence (u64) = the leaf's index in the tenant's tree, from 0 |
//! | 8 | global position (u64) in the store's log |
//! | 8 | `occurred_at` (i64, microseconds since the Unix epoch, UTC) |
//! | 8 | `recorded_at` (i64, microseconds since the Unix epoch, UTC) |
//! | 2 + n | event type: u16 length, then UTF-8 bytes |
//! | 2 | schema version (u16) of the payload |
//! | 2 + n | stream id: u16 length, then UTF-8 bytes |
//! | 32 | SHA-256 of the payload's stored bytes |
//!
//! The leaf hash is `SHA-256(0x00 || layout)`.

use crate::hash::{Hash, leaf_hash, sha256};

/// The leaf format version written in the first byte.
pub const LEAF_VERSION: u8 = 1;

/// The header fields of one stored event, exactly what its leaf commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafHeader {
    /// The event's index in its tenant's tree (the tenant sequence, from 0).
    pub sequence: u64,
    /// The event's position in the store's global log.
    pub global_position: u64,
    /// Business time, microseconds since the Unix epoch.
    pub occurred_at_micros: i64,
    /// Commit time, microseconds since the Unix epoch.
    pub recorded_at_micros: i64,
    pub event_type: String,
    pub schema_version: u16,
    pub stream: String,
    /// SHA-256 of the payload bytes exactly as stored.
    pub payload_sha256: Hash,
}

/// Why a header cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    /// A text field is longer than a u16 length prefix can say.
    #[error("{field} is {len} bytes, more than 65535")]
    TooLong { field: &'static str, len: usize },
}

impl LeafHeader {
    /// A header for the payload `payload` (its SHA-256 is computed here).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sequence: u64,
        global_position: u64,
        occurred_at_micros: i64,
        recorded_at_micros: i64,
        event_type: impl Into<String>,
        schema_version: u16,
        stream: impl Into<String>,
        payload: &[u8],
    ) -> Self {
        LeafHeader {
            sequence,
            global_position,
            occurred_at_micros,
            recorded_at_micros,
            event_type: event_type.into(),
            schema_version,
            stream: stream.into(),
            payload_sha256: sha256(payload),
        }
    }

    /// The leaf's data, the bytes the leaf hash is taken over.
    pub fn encode(&self) -> Result<Vec<u8>, LeafError> {
        let mut out = Vec::with_capacity(71 + self.event_type.len() + self.stream.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the leaf's data to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), LeafError> {
        let ty = len16("event_type", &self.event_type)?;
        let stream = len16("stream", &self.stream)?;
        out.push(LEAF_VERSION);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.global_position.to_be_bytes());
        out.extend_from_slice(&self.occurred_at_micros.to_be_bytes());
        out.extend_from_slice(&self.recorded_at_micros.to_be_bytes());
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(&self.payload_sha256);
        Ok(())
    }

    /// `SHA-256(0x00 || encode())`: what the store appends to the tenant's compact range.
    pub fn leaf_hash(&self) -> Result<Hash, LeafError> {
        let mut buf = Vec::with_capacity(128);
        self.encode_into(&mut buf)?;
        Ok(leaf_hash(&buf))
    }
}

fn len16(field: &'static str, s: &str) -> Result<u16, LeafError> {
    u16::try_from(s.len()).map_err(|_| LeafError::TooLong {
        field,
        len: s.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::hex;

    #[test]
    fn layout_is_fixed_and_documented() {
        let h = LeafHeader::new(1, 2, 3, 4, "a.b", 5, "s", b"{}");
        let data = h.encode().unwrap();
        let mut want = vec![1u8];
        for n in [1u64, 2, 3, 4] {
            want.extend_from_slice(&n.to_be_bytes());
        }
        want.extend_from_slice(&[0, 3, b'a', b'.', b'b', 0, 5, 0, 1, b's']);
        want.extend_from_slice(&sha256(b"{}"));
        assert_eq!(data, want);
        // A fixed leaf hash: changing the layout is a new leaf version, never an edit.
        assert_eq!(hex(&h.leaf_hash().unwrap()), hex(&leaf_hash(&want)),);
    }

    #[test]
    fn text_longer_than_a_u16_is_refused() {
        let h = LeafHeader::new(0, 0, 0, 0, "x".repeat(70_000), 1, "s", b"");
        assert_eq!(
            h.encode(),
            Err(LeafError::TooLong {
                field: "event_type",
                len: 70_000
            })
        );
    }
}
