//! The persisted layout of a projection's state: a small header (magic, which projection, which
//! layout version) and a body of LEB128 varints, length-prefixed strings and raw UUIDs. Values whose
//! shape the domain owns (a scheduled plan change, an uploaded dataset) are kept as their JSON, so a
//! change there makes an old state unreadable (and rebuilt) instead of misread.
//!
//! Only a cache of the log: a state that does not decode is ignored and the projection is rebuilt
//! from position 1, never half-loaded.

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use uuid::Uuid;

const MAGIC: &[u8; 4] = b"TNPS";

/// Why persisted bytes were not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("not a projection state (bad magic)")]
    Magic,
    #[error("state of {found:?} layout v{found_layout}, expected {expected:?} v{expected_layout}")]
    Layout {
        found: String,
        found_layout: u16,
        expected: &'static str,
        expected_layout: u16,
    },
    #[error("truncated state")]
    Truncated,
    #[error("malformed state: {0}")]
    Malformed(String),
}

/// Builds the bytes of one state.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A state of projection `kind` in layout `layout`.
    pub fn new(kind: &str, layout: u16) -> Self {
        Self::with_capacity(kind, layout, 1 << 12)
    }

    /// The same, for a small value (a row kept in the store, ADR 039).
    pub fn with_capacity(kind: &str, layout: u16, capacity: usize) -> Self {
        let mut w = Self {
            buf: Vec::with_capacity(capacity),
        };
        w.buf.extend_from_slice(MAGIC);
        w.str(kind);
        w.u64(u64::from(layout));
        w
    }

    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn usize(&mut self, v: usize) {
        self.u64(v as u64);
    }

    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    pub fn str(&mut self, s: &str) {
        self.usize(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub fn uuid(&mut self, id: &Uuid) {
        self.buf.extend_from_slice(id.as_bytes());
    }

    /// A timestamp as seconds and nanoseconds since the epoch.
    pub fn time(&mut self, t: OffsetDateTime) {
        self.i64(t.unix_timestamp());
        self.u64(u64::from(t.nanosecond()));
    }

    /// Bytes of a length both sides know (a hash), without a length prefix.
    pub fn fixed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A domain value, as its JSON.
    pub fn json<T: Serialize>(&mut self, v: &T) {
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        self.usize(bytes.len());
        self.buf.extend_from_slice(&bytes);
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads the bytes of one state, refusing anything it does not expect.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Check the header: the state must be of projection `kind` in layout `layout`.
    pub fn new(bytes: &'a [u8], kind: &'static str, layout: u16) -> Result<Self, CodecError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(CodecError::Magic)?;
        let mut r = Self { bytes: rest };
        let found = r.str()?;
        let found_layout = r.u64()?;
        if found != kind || found_layout != u64::from(layout) {
            return Err(CodecError::Layout {
                found,
                found_layout: u16::try_from(found_layout).unwrap_or(u16::MAX),
                expected: kind,
                expected_layout: layout,
            });
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let [b] = self.take(1)? else {
                return Err(CodecError::Truncated);
            };
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Malformed("varint too long".into()))
    }

    /// A count or length, bounded by what is left (so a corrupt length cannot allocate wildly).
    pub fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        if n > self.bytes.len() as u64 {
            return Err(CodecError::Truncated);
        }
        Ok(n as usize)
    }

    pub fn i64(&mut self) -> Result<i64, CodecError> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.take(1)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(CodecError::Malformed("bad bool".into())),
        }
    }

    pub fn str(&mut self) -> Result<String, CodecError> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| CodecError::Malformed(e.to_string()))
    }

    pub fn uuid(&mut self) -> Result<Uuid, CodecError> {
        let bytes = self.take(16)?;
        Uuid::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
    }

    pub fn time(&mut self) -> Result<OffsetDateTime, CodecError> {
        let secs = self.i64()?;
        let nanos = u32::try_from(self.u64()?).map_err(|e| CodecError::Malformed(e.to_string()))?;
        OffsetDateTime::from_unix_timestamp(secs)
            .and_then(|t| t.replace_nanosecond(nanos))
            .map_err(|e| CodecError::Malformed(e.to_string()))
    }

    /// `N` bytes written by [`Writer::fixed`].
    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("took N bytes"))
    }

    pub fn json<T: DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
    }

    /// Every byte must have been read.
    pub fn end(self) -> Result<(), CodecError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Malformed(format!(
                "{} trailing bytes",
                self.bytes.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_771_234_567_123_456_000).unwrap();
        let mut w = Writer::new("audit", 1);
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            w.u64(v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            w.i64(v);
        }
        w.str("héllo");
        w.uuid(&Uuid::from_u128(7));
        w.time(t);
        w.bool(true);
        w.json(&vec!["a", "b"]);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes, "audit", 1).unwrap();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(r.u64().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(r.i64().unwrap(), v);
        }
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.uuid().unwrap(), Uuid::from_u128(7));
        assert_eq!(r.time().unwrap(), t);
        assert!(r.bool().unwrap());
        assert_eq!(r.json::<Vec<String>>().unwrap(), vec!["a", "b"]);
        r.end().unwrap();
    }

    #[test]
    fn another_projection_or_layout_version_is_refused() {
        let bytes = Writer::new("audit", 1).finish();
        assert!(matches!(
            Reader::new(&bytes, "audit", 2),
            Err(CodecError::Layout { .. })
        ));
        assert!(matches!(
            Reader::new(&bytes, "identity", 1),
            Err(CodecError::Layout { .. })
        ));
        assert_eq!(
            Reader::new(b"{\"json\":1}", "audit", 1).unwrap_err(),
            CodecError::Magic
        );
    }

    #[test]
    fn truncated_or_oversized_lengths_are_refused_without_allocating() {
        let mut w = Writer::new("audit", 1);
        w.u64(u64::MAX / 2);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes, "audit", 1).unwrap();
        assert_eq!(r.len(), Err(CodecError::Truncated));
        let mut w = Writer::new("audit", 1);
        w.str("abcdef");
        let bytes = w.finish();
        let mut r = Reader::new(&bytes[..bytes.len() - 2], "audit", 1).unwrap();
        assert_eq!(r.str(), Err(CodecError::Truncated));
    }
}
